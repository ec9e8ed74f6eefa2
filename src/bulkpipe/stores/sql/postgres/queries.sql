-- The queries of PostgresStore, each under a `-- name: NAME --` header. {prefix} is the
-- validated table prefix; every value is a %(name)s parameter.
--
-- Almost every store call is ONE statement (data-modifying CTEs), so it costs one round trip
-- and runs atomically in autocommit mode. Rows are locked job first, then batches in batch
-- order, so concurrent calls cannot deadlock. Lease expiry is compared with now(), the
-- database clock that every worker shares.

-- name: meta_table --
-- Read from pg_class, not with to_regclass(): under the migration lock this must see tables
-- that another process has just committed, and to_regclass() may answer from a stale cache.
SELECT
    EXISTS (SELECT 1 FROM pg_class WHERE relname = '{prefix}meta'
            AND relnamespace = current_schema()::regnamespace),
    EXISTS (SELECT 1 FROM pg_class WHERE relname = '{prefix}jobs'
            AND relnamespace = current_schema()::regnamespace)

-- name: schema_version --
SELECT value FROM {prefix}meta WHERE key = 'schema_version'

-- name: set_schema_version --
INSERT INTO {prefix}meta (key, value) VALUES ('schema_version', %(version)s::text)
ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value

-- name: durable_commit --
-- Store connections commit asynchronously (synchronous_commit = off); a write that must be
-- on disk before it returns (a seal, a job's end) restores the server's setting for its
-- transaction, and its flush also flushes every commit before it.
SET LOCAL synchronous_commit TO DEFAULT

-- name: migration_lock --
-- Held until the migrating transaction ends; other processes opening the store wait here.
SELECT pg_advisory_xact_lock(
    hashtextextended('bulkpipe schema ' || coalesce(current_schema(), '') || '.{prefix}', 0)
)

-- name: create_job --
INSERT INTO {prefix}jobs (
    id, type, options, priority, retry_of, owner, source, params, created_at, last_request,
    submit_expires_at, idempotency_key
)
VALUES (
    %(id)s, %(type)s, %(options)s::jsonb, %(priority)s, %(retry_of)s, %(owner)s, %(source)s,
    %(params)s::jsonb, %(created_at)s, %(request)s,
    now() + make_interval(secs => %(submit_lease)s::float8), %(idempotency_key)s
)
ON CONFLICT (id) DO NOTHING
RETURNING seq

-- name: job_state --
SELECT seq, status, sealed, next_batch, last_request FROM {prefix}jobs WHERE id = %(id)s

-- name: add_batches --
-- Appends batches in order, each as one add_batch would: locks the job row, keeps the items
-- that are new to the job (the first of repeated ids), and numbers on from next_batch only
-- the batches that keep an item (an all-repeat batch makes none). `groups` is each item's
-- batch within the call. Returns the ids stored. `prev` is the submitter's previous write to
-- the job: if the database no longer has it (the server lost its last asynchronous commits in
-- a crash), nothing is written. last_request records this write as `request:first batch_no`,
-- so that a retry after a lost answer can find what its first attempt stored.
WITH job AS (
    SELECT seq, next_batch FROM {prefix}jobs
    WHERE id = %(id)s AND NOT sealed AND status IN ('pending', 'processing')
      AND (%(prev)s::text IS NULL OR last_request = %(prev)s::text)
    FOR UPDATE
), given AS (
    SELECT * FROM unnest(%(ids)b::text[], %(payloads)b::text[], %(groups)b::int[])
        WITH ORDINALITY AS t (item_id, payload, grp, pos)
), fresh AS (
    -- Under the job's row lock no other add can insert into this job, so this check holds;
    -- ON CONFLICT below stays as a guard.
    SELECT DISTINCT ON (g.item_id) g.item_id, g.payload, g.grp, g.pos
    FROM job, given AS g
    WHERE NOT EXISTS (
        SELECT 1 FROM {prefix}items AS i WHERE i.job = job.seq AND i.item_id = g.item_id
    )
    ORDER BY g.item_id, g.pos
), added AS (
    INSERT INTO {prefix}items AS i (job, item_id, batch_no, pos, payload)
    SELECT job.seq, f.item_id, job.next_batch + dense_rank() OVER (ORDER BY f.grp) - 1, f.pos,
        f.payload
    FROM job, fresh AS f
    ON CONFLICT (job, item_id) DO NOTHING
    RETURNING i.item_id, i.batch_no
), counted AS (
    SELECT count(*) AS n, count(DISTINCT batch_no) AS batches, max(batch_no) AS last
    FROM added
), batch AS (
    INSERT INTO {prefix}batches (job, batch_no, size)
    SELECT job.seq, added.batch_no, count(*) FROM job, added GROUP BY job.seq, added.batch_no
)
UPDATE {prefix}jobs AS j
SET next_batch = counted.last + 1,
    total = j.total + counted.n,
    open_batches = j.open_batches + counted.batches,
    last_request = %(request)s || ':' || job.next_batch
FROM job, counted
WHERE j.seq = job.seq AND counted.n > 0
RETURNING counted.n, (SELECT array_agg(item_id) FROM added), j.last_request

-- name: batch_item_ids --
-- The items of a job's batches from :batch_no on.
SELECT item_id FROM {prefix}items WHERE job = %(job)s AND batch_no >= %(batch_no)s

-- name: add_errors --
UPDATE {prefix}jobs AS j
SET errors = j.errors || (
        SELECT coalesce(jsonb_agg(e.value ORDER BY e.n), '[]')
        FROM jsonb_array_elements(%(errors)s::jsonb) WITH ORDINALITY AS e (value, n)
        WHERE e.n <= %(max_errors)s - jsonb_array_length(j.errors)
    ),
    error_count = j.error_count + %(count)s,
    rejected = j.rejected + %(rejected)s,
    last_request = %(request)s
WHERE j.id = %(id)s AND j.status IN ('pending', 'processing')
  AND (%(prev)s::text IS NULL OR j.last_request = %(prev)s::text)
RETURNING j.seq

-- name: seal_job --
UPDATE {prefix}jobs SET sealed = true, submit_expires_at = NULL
WHERE id = %(id)s AND (%(prev)s::text IS NULL OR last_request = %(prev)s::text)
RETURNING status, sealed, total, succeeded, failed, open_batches, abandoned

-- name: progress --
SELECT status, sealed, total, succeeded, failed, open_batches, abandoned FROM {prefix}jobs
WHERE id = %(id)s

-- name: claim_any --
-- The first claimable batch of the highest-priority, oldest live job: a pending batch in
-- batch order, else a leased one whose lease has expired. SKIP LOCKED lets workers claim at
-- the same time without waiting on (or taking) each other's batches.
WITH pick AS (
    SELECT j.seq, b.batch_no
    FROM {prefix}jobs AS j
    CROSS JOIN LATERAL (
        SELECT b.batch_no FROM {prefix}batches AS b
        WHERE b.job = j.seq AND b.state < 2 AND (b.state = 0 OR b.expires_at <= now())
        ORDER BY b.state, b.batch_no
        LIMIT 1
        FOR UPDATE SKIP LOCKED
    ) AS b
    WHERE j.status IN ('pending', 'processing')
      AND (%(types)s::text[] IS NULL OR j.type = ANY (%(types)s::text[]))
      AND j.id <> ALL (%(exclude)s::text[])
    ORDER BY j.priority DESC, j.seq
    LIMIT 1
), leased AS (
    UPDATE {prefix}batches AS b
    SET state = 1,
        token = nextval('{prefix}tokens'),
        owner = %(owner)s,
        expires_at = now() + make_interval(secs => %(lease)s::float8),
        claims = b.claims + 1
    FROM pick
    WHERE b.job = pick.seq AND b.batch_no = pick.batch_no
    RETURNING b.job, b.batch_no, b.token, b.claims
), started AS (
    UPDATE {prefix}jobs AS j
    SET status = 'processing', started_at = coalesce(j.started_at, extract(epoch FROM now()))
    FROM leased
    WHERE j.seq = leased.job AND j.status = 'pending'
)
SELECT j.id, j.type, j.options::text, j.priority, leased.batch_no, leased.token, leased.claims,
    items.ids, items.payloads
FROM leased
JOIN {prefix}jobs AS j ON j.seq = leased.job
CROSS JOIN LATERAL (
    -- A first claim has no outcomes yet; a later one skips the items that have one.
    SELECT array_agg(i.item_id ORDER BY i.pos) AS ids,
        array_agg(i.payload ORDER BY i.pos) AS payloads
    FROM {prefix}items AS i
    WHERE i.job = leased.job AND i.batch_no = leased.batch_no
      AND (leased.claims = 1 OR NOT EXISTS (
          SELECT 1 FROM {prefix}outcomes AS o WHERE o.job = i.job AND o.item_id = i.item_id
      ))
) AS items

-- name: claim_job --
-- claim_any for one given job.
WITH pick AS (
    SELECT j.seq, b.batch_no
    FROM {prefix}jobs AS j
    CROSS JOIN LATERAL (
        SELECT b.batch_no FROM {prefix}batches AS b
        WHERE b.job = j.seq AND b.state < 2 AND (b.state = 0 OR b.expires_at <= now())
        ORDER BY b.state, b.batch_no
        LIMIT 1
        FOR UPDATE SKIP LOCKED
    ) AS b
    WHERE j.id = %(id)s AND j.status IN ('pending', 'processing')
), leased AS (
    UPDATE {prefix}batches AS b
    SET state = 1,
        token = nextval('{prefix}tokens'),
        owner = %(owner)s,
        expires_at = now() + make_interval(secs => %(lease)s::float8),
        claims = b.claims + 1
    FROM pick
    WHERE b.job = pick.seq AND b.batch_no = pick.batch_no
    RETURNING b.job, b.batch_no, b.token, b.claims
), started AS (
    UPDATE {prefix}jobs AS j
    SET status = 'processing', started_at = coalesce(j.started_at, extract(epoch FROM now()))
    FROM leased
    WHERE j.seq = leased.job AND j.status = 'pending'
)
SELECT j.id, j.type, j.options::text, j.priority, leased.batch_no, leased.token, leased.claims,
    items.ids, items.payloads
FROM leased
JOIN {prefix}jobs AS j ON j.seq = leased.job
CROSS JOIN LATERAL (
    SELECT array_agg(i.item_id ORDER BY i.pos) AS ids,
        array_agg(i.payload ORDER BY i.pos) AS payloads
    FROM {prefix}items AS i
    WHERE i.job = leased.job AND i.batch_no = leased.batch_no
      AND (leased.claims = 1 OR NOT EXISTS (
          SELECT 1 FROM {prefix}outcomes AS o WHERE o.job = i.job AND o.item_id = i.item_id
      ))
) AS items

-- name: record --
-- One report per (batch_no, token, done); outcomes flattened with their report's number (not
-- the batch's: one call may carry a stale and a current report of one batch). Locks the
-- live job, then the batches whose lease the reports still hold (a replay may also find its
-- own done batch), stores the outcomes of those batches that are new (an item keeps its first
-- final outcome), adds them to their batch's `recorded`, and counts only the rows actually
-- stored, in the same statement. Outcome ids (the read cursor) count up per job under the
-- job's row lock, so they follow commit order. Returns no row when the job is missing or
-- terminal.
--
-- A done report closes its batch only if the batch's outcomes then cover every item
-- (recorded = size), proved in this statement. Every CTE reads the tables as they were before
-- the statement, so that is `recorded` before plus the rows stored now. A done report that
-- finds its batch short (an earlier write was acknowledged, then lost when the server crashed:
-- commits are asynchronous) puts the batch back to pending instead, to be claimed again for
-- its items without an outcome; those come back in the last column, with how many are short.
WITH job AS (
    SELECT seq, next_outcome FROM {prefix}jobs
    WHERE id = %(id)s AND status IN ('pending', 'processing')
    FOR UPDATE
), report AS (
    SELECT * FROM unnest(%(batch_nos)b::int[], %(tokens)b::bigint[], %(done)b::boolean[])
        WITH ORDINALITY AS r (batch_no, token, done, n)
), held AS (
    SELECT b.batch_no, b.token, b.state, b.size, b.recorded, r.done, r.n
    FROM job
    JOIN {prefix}batches AS b ON b.job = job.seq
    JOIN report AS r ON r.batch_no = b.batch_no AND r.token = b.token
    WHERE b.state = 1 OR (%(replay)s AND b.state = 2 AND r.done)
    ORDER BY b.batch_no
    FOR UPDATE OF b
), stored AS (
    INSERT INTO {prefix}outcomes AS o (
        id, job, item_id, ok, result, error, error_type, attempts, started_at, finished_at
    )
    SELECT job.next_outcome + t.n, job.seq, t.item_id, t.ok, t.result, t.error, t.error_type,
        t.attempts, t.started_at, t.finished_at
    FROM job, unnest(
        %(o_report)b::int[], %(o_item)b::text[], %(o_ok)b::boolean[], %(o_result)b::text[],
        %(o_error)b::text[], %(o_type)b::text[], %(o_attempts)b::int[],
        %(o_started)b::float8[], %(o_finished)b::float8[]
    ) WITH ORDINALITY
        AS t (report, item_id, ok, result, error, error_type, attempts, started_at, finished_at,
              n)
    WHERE t.report IN (SELECT n FROM held)  -- by report: a stale token's rows never pass
    ON CONFLICT (job, item_id) DO NOTHING
    RETURNING o.id, o.item_id, o.ok, o.error, o.error_type, o.attempts, o.finished_at
), tally AS (
    -- The outcomes stored now, by batch. A stored row's id - next_outcome is its position in
    -- the outcome arrays, which gives its report and so its batch (no join: a join of stored
    -- with the input is planned as a nested loop, quadratic in the rows of a call).
    SELECT
        (%(batch_nos)b::int[])[(%(o_report)b::int[])[(s.id - job.next_outcome)::int]]
            AS batch_no,
        count(*) AS n
    FROM job, stored AS s
    GROUP BY 1
), batch AS (
    SELECT h.batch_no, bool_or(h.done AND h.state = 1) AS closing, max(h.size) AS size,
        max(h.recorded) + coalesce(max(t.n), 0) AS recorded
    FROM held AS h
    LEFT JOIN tally AS t ON t.batch_no = h.batch_no
    GROUP BY h.batch_no
), changed AS (
    UPDATE {prefix}batches AS b
    SET recorded = batch.recorded,
        state = CASE
            WHEN NOT batch.closing THEN b.state
            WHEN batch.recorded >= batch.size THEN 2
            ELSE 0
        END,
        owner = CASE WHEN batch.closing THEN NULL ELSE b.owner END,
        expires_at = CASE WHEN batch.closing THEN NULL ELSE b.expires_at END
    FROM job, batch
    WHERE b.job = job.seq AND b.batch_no = batch.batch_no
      AND (batch.closing OR batch.recorded <> b.recorded)
    RETURNING b.batch_no, b.state, batch.closing, batch.size - batch.recorded AS short
), counted AS (
    SELECT count(*) FILTER (WHERE ok) AS ok, count(*) FILTER (WHERE NOT ok) AS bad FROM stored
)
UPDATE {prefix}jobs AS j
SET next_outcome = j.next_outcome + %(o_count)s,
    succeeded = j.succeeded + counted.ok,
    failed = j.failed + counted.bad,
    error_count = j.error_count + counted.bad,
    open_batches = j.open_batches - (SELECT count(*) FROM changed WHERE closing AND state = 2),
    errors = CASE WHEN counted.bad = 0 THEN j.errors ELSE j.errors || (
        SELECT coalesce(jsonb_agg(jsonb_build_object(
            'item_id', s.item_id,
            'error', coalesce(s.error, ''),
            'error_type', coalesce(s.error_type, 'Error'),
            'at', s.finished_at,
            'retry_count', greatest(0, s.attempts - 1)
        ) ORDER BY s.id), '[]')
        FROM (SELECT *, row_number() OVER (ORDER BY id) AS n FROM stored WHERE NOT ok) AS s
        WHERE s.n <= %(max_errors)s - jsonb_array_length(j.errors)
    ) END,
    updated_at = extract(epoch FROM now())
FROM job, counted
WHERE j.seq = job.seq
RETURNING j.status, j.sealed, j.total, j.succeeded, j.failed, j.open_batches,
    ARRAY(SELECT ARRAY[batch_no, token] FROM held),
    ARRAY(SELECT ARRAY[batch_no, short] FROM changed WHERE closing AND state = 0), j.abandoned

-- name: renew_leases --
-- Extends the leases still held on live jobs; returns every lease given, with its job's
-- status (NULL: no such job) and whether it was renewed.
WITH lease AS (
    SELECT * FROM unnest(%(job_ids)b::text[], %(batch_nos)b::int[], %(tokens)b::bigint[])
        WITH ORDINALITY AS l (job_id, batch_no, token, n)
), held AS (
    SELECT b.job, b.batch_no
    FROM lease
    JOIN {prefix}jobs AS j ON j.id = lease.job_id AND j.status IN ('pending', 'processing')
    JOIN {prefix}batches AS b
        ON b.job = j.seq AND b.batch_no = lease.batch_no AND b.token = lease.token
    WHERE b.state = 1
    ORDER BY b.job, b.batch_no
    FOR UPDATE OF b
), renewed AS (
    UPDATE {prefix}batches AS b
    SET expires_at = now() + make_interval(secs => %(lease)s::float8)
    FROM held
    WHERE b.job = held.job AND b.batch_no = held.batch_no
    RETURNING b.job, b.batch_no, b.token
)
SELECT lease.job_id, lease.batch_no, lease.token, j.status,
    EXISTS (
        SELECT 1 FROM renewed
        WHERE renewed.job = j.seq AND renewed.batch_no = lease.batch_no
          AND renewed.token = lease.token
    )
FROM lease
LEFT JOIN {prefix}jobs AS j ON j.id = lease.job_id
ORDER BY lease.n

-- name: release --
WITH lease AS (
    SELECT * FROM unnest(%(job_ids)b::text[], %(batch_nos)b::int[], %(tokens)b::bigint[])
        AS l (job_id, batch_no, token)
), held AS (
    SELECT b.job, b.batch_no
    FROM lease
    JOIN {prefix}jobs AS j ON j.id = lease.job_id
    JOIN {prefix}batches AS b
        ON b.job = j.seq AND b.batch_no = lease.batch_no AND b.token = lease.token
    WHERE b.state = 1
    ORDER BY b.job, b.batch_no
    FOR UPDATE OF b
)
-- The claim is given back (a graceful release is not a crash; see JobOptions.max_claims),
-- except the first: a claim counted 1 is taken to have no outcomes yet (claim_any).
UPDATE {prefix}batches AS b
SET state = 0, owner = NULL, expires_at = NULL, claims = greatest(b.claims - 1, 1)
FROM held
WHERE b.job = held.job AND b.batch_no = held.batch_no

-- name: finish_job --
UPDATE {prefix}jobs AS j
SET status = %(status)s,
    completed_at = extract(epoch FROM now()),
    updated_at = extract(epoch FROM now()),
    started_at = coalesce(j.started_at, extract(epoch FROM now())),
    errors = CASE
        WHEN %(error)s::jsonb IS NULL OR jsonb_array_length(j.errors) >= %(max_errors)s
        THEN j.errors
        ELSE j.errors || jsonb_build_array(%(error)s::jsonb)
    END,
    error_count = j.error_count + (%(error)s::jsonb IS NOT NULL)::int
WHERE j.id = %(id)s AND j.status IN ('pending', 'processing')
  -- A job completes only once every item is in and has its outcome, every batch closed
  -- (the rule of bulkpipe.stores._finish.may_complete, checked here in the same step).
  AND (%(status)s::text <> 'completed'
       OR (j.sealed AND j.open_batches = 0 AND j.succeeded + j.failed = j.total))
RETURNING j.seq

-- name: get_job --
SELECT seq, id, type, status, options::text, priority, retry_of, owner, source, params,
    sealed, total, succeeded, failed, rejected, error_count, created_at, started_at,
    updated_at, completed_at, errors, idempotency_key
FROM {prefix}jobs
WHERE id = %(id)s

-- name: list_jobs --
SELECT seq, id, type, status, options::text, priority, retry_of, owner, source, params,
    sealed, total, succeeded, failed, rejected, error_count, created_at, started_at,
    updated_at, completed_at, errors, idempotency_key
FROM {prefix}jobs
WHERE (%(status)s::text IS NULL OR status = %(status)s::text)
  AND (%(owner)s::text IS NULL OR owner = %(owner)s::text)
ORDER BY seq DESC
LIMIT %(limit)s OFFSET %(offset)s

-- name: outcomes --
-- A page of outcomes after the cursor; one row of NULLs when the job has none, and no
-- row at all when there is no such job. With a byte budget (NULL: none), the page ends before
-- the row that would bring the running sum of sizes (UTF-8 bytes of item id, result and error)
-- over it, keeping at least the first row. The sizes come from octet_length, which reads a
-- TOASTed value's header, not the value, so the rows left out are never loaded. `fetched` is
-- how many rows the page could have held (up to limit), to tell whether more follow.
SELECT o.id AS seq, o.item_id, o.ok, o.result, o.error, o.error_type, o.attempts,
    o.started_at, o.finished_at, p.fetched
FROM {prefix}jobs AS j
LEFT JOIN LATERAL (
    SELECT s.id, count(*) OVER () AS fetched, row_number() OVER w AS n,
        sum(s.size) OVER w AS running
    FROM (
        SELECT o.id, octet_length(o.item_id) + coalesce(octet_length(o.result), 0)
            + coalesce(octet_length(o.error), 0) AS size
        FROM {prefix}outcomes AS o
        WHERE o.job = j.seq AND o.id > %(after)s AND (%(ok)s::boolean IS NULL OR o.ok = %(ok)s)
        ORDER BY o.id
        LIMIT %(limit)s
    ) AS s
    WINDOW w AS (ORDER BY s.id ROWS UNBOUNDED PRECEDING)
) AS p ON true
LEFT JOIN {prefix}outcomes AS o ON o.job = j.seq AND o.id = p.id
WHERE j.id = %(id)s
    AND (p.n IS NULL OR p.n = 1 OR %(budget)s::bigint IS NULL OR p.running <= %(budget)s)
ORDER BY p.id

-- name: failed_items --
-- The items whose outcome failed, in the same shape as the outcomes query.
SELECT f.id AS seq, f.item_id, f.payload
FROM {prefix}jobs AS j
LEFT JOIN LATERAL (
    SELECT o.id, i.item_id, i.payload
    FROM {prefix}outcomes AS o
    JOIN {prefix}items AS i ON i.job = o.job AND i.item_id = o.item_id
    WHERE o.job = j.seq AND o.id > %(after)s AND NOT o.ok
    ORDER BY o.id
    LIMIT %(limit)s
) AS f ON true
WHERE j.id = %(id)s
ORDER BY f.id

-- == housekeeping: delete and prune jobs, named locks, unfinished items ==
-- Each statement runs alone, in autocommit (see stores/_sqlhousekeeping.py): a chunk of a
-- delete is one short transaction that locks only the deleted job's rows, so claims of other
-- jobs never wait for it. Child rows go before the job row.

-- name: delete_outcomes_chunk --
DELETE FROM {prefix}outcomes
WHERE job = %(job)s
  AND id IN (SELECT id FROM {prefix}outcomes WHERE job = %(job)s LIMIT %(chunk)s)

-- name: delete_items_chunk --
DELETE FROM {prefix}items
WHERE job = %(job)s
  AND item_id IN (SELECT item_id FROM {prefix}items WHERE job = %(job)s LIMIT %(chunk)s)

-- name: delete_batches_chunk --
DELETE FROM {prefix}batches
WHERE job = %(job)s
  AND batch_no IN (SELECT batch_no FROM {prefix}batches WHERE job = %(job)s LIMIT %(chunk)s)

-- name: delete_job_row --
DELETE FROM {prefix}jobs
WHERE seq = %(job)s AND status IN ('completed', 'failed', 'cancelled')

-- name: ended_jobs --
-- The first condition repeats the jobs_ended index's, so that the index is used.
SELECT id FROM {prefix}jobs
WHERE status IN ('completed', 'failed', 'cancelled')
  AND status IN (SELECT jsonb_array_elements_text(%(statuses)s::jsonb))
  AND completed_at < %(before)s
ORDER BY completed_at
LIMIT %(limit)s

-- name: try_lock --
-- Taken when free, expired (by the database clock), or already the holder's (then extended);
-- no row when not.
INSERT INTO {prefix}locks AS l (name, holder, expires_at)
VALUES (%(name)s, %(holder)s, now() + make_interval(secs => %(seconds)s))
ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at
WHERE l.holder = EXCLUDED.holder OR l.expires_at <= now()
RETURNING l.holder

-- name: unlock --
DELETE FROM {prefix}locks WHERE name = %(name)s AND holder = %(holder)s

-- name: unfinished_items --
-- The items without an outcome or with a failed one, in item order (batch, then position);
-- the cursor is batch_no * 2^32 + pos (pos counts from 1, so no item's cursor is 0).
SELECT (i.batch_no::bigint << 32) | i.pos AS seq, i.item_id, i.payload
FROM {prefix}items AS i
LEFT JOIN {prefix}outcomes AS o ON o.job = i.job AND o.item_id = i.item_id
WHERE i.job = %(job)s
  AND i.batch_no >= (%(after)s::bigint >> 32)
  AND ((i.batch_no::bigint << 32) | i.pos) > %(after)s
  AND (o.ok IS NULL OR NOT o.ok)
ORDER BY i.batch_no, i.pos
LIMIT %(limit)s

-- == submit leases and idempotency keys =================================================

-- name: job_by_idempotency_key --
-- The job of one owner (NULL: no owner) with an idempotency key, if any.
SELECT id FROM {prefix}jobs
WHERE idempotency_key = %(idempotency_key)s AND owner IS NOT DISTINCT FROM %(owner)s::text

-- name: renew_submit --
-- Extends the submit lease of an unsealed live job that has one, by the database clock.
UPDATE {prefix}jobs SET submit_expires_at = now() + make_interval(secs => %(lease)s::float8)
WHERE id = %(id)s AND NOT sealed AND status IN ('pending', 'processing')
    AND submit_expires_at IS NOT NULL

-- name: abandon_expired_submits --
-- Seals the unsealed live jobs whose submit lease has expired (by the database clock), oldest
-- expiry first, marking them abandoned. SKIP LOCKED: a job another call is writing to (its
-- submitter adding items, a worker recording) is left for the next sweep. Not a durable
-- commit: should the server lose it in a crash, the job is simply found again.
UPDATE {prefix}jobs AS j SET sealed = true, abandoned = true, submit_expires_at = NULL
WHERE j.seq IN (
    SELECT seq FROM {prefix}jobs
    WHERE NOT sealed AND status IN ('pending', 'processing') AND submit_expires_at <= now()
    ORDER BY submit_expires_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
RETURNING j.id, j.status, j.sealed, j.total, j.succeeded, j.failed, j.open_batches, j.abandoned
-- == worker registry ==
-- Workers register themselves (stores/_workers.py); started_at and last_seen are seconds since
-- the epoch, and a registration is live while expires_at is ahead of the database clock.

-- name: register_worker --
INSERT INTO {prefix}workers
    (id, host, pid, processors, started_at, last_seen, expires_at, in_flight)
VALUES (%(id)s, %(host)s, %(pid)s, %(processors)s::jsonb, %(started_at)s, %(last_seen)s,
    now() + make_interval(secs => %(ttl)s), %(in_flight)s)
ON CONFLICT (id) DO UPDATE SET
    host = excluded.host, pid = excluded.pid, processors = excluded.processors,
    started_at = excluded.started_at, last_seen = excluded.last_seen,
    expires_at = excluded.expires_at, in_flight = excluded.in_flight

-- name: worker_seen --
UPDATE {prefix}workers SET last_seen = extract(epoch FROM now()),
    expires_at = now() + make_interval(secs => %(ttl)s), in_flight = %(in_flight)s
WHERE id = %(id)s
RETURNING id

-- name: unregister_worker --
DELETE FROM {prefix}workers WHERE id = %(id)s

-- name: list_workers --
SELECT id, host, pid, processors, started_at, last_seen, in_flight,
    expires_at > now() AS live,
    expires_at < now() - make_interval(secs => %(forget)s) AS stale
FROM {prefix}workers
ORDER BY started_at, id

-- name: forget_workers --
DELETE FROM {prefix}workers WHERE expires_at < now() - make_interval(secs => %(forget)s)
