-- The SQL of SQLiteStore, one statement per `-- name: NAME --` header (see stores/_sql.py).
-- {prefix} is the validated table prefix; every value is a parameter. Times are seconds since
-- the epoch. Jobs are referred to by their integer seq inside the database.

-- == connection and transactions ==============================================================

-- name: journal_wal --
PRAGMA journal_mode = WAL

-- name: synchronous_normal --
PRAGMA synchronous = NORMAL

-- name: begin_write --
-- Takes the write lock at once (waiting up to busy_timeout), so a transaction never has to
-- upgrade a read lock, which SQLite cannot do under contention.
BEGIN IMMEDIATE

-- name: begin_read --
BEGIN DEFERRED

-- name: commit --
COMMIT

-- name: rollback --
ROLLBACK

-- == schema ===================================================================================

-- name: meta_exists --
SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = '{prefix}meta'

-- name: schema_version --
SELECT value FROM {prefix}meta WHERE key = 'schema_version'

-- name: set_schema_version --
INSERT INTO {prefix}meta (key, value) VALUES ('schema_version', :version)
ON CONFLICT (key) DO UPDATE SET value = excluded.value

-- name: check_writable --
-- A write that changes nothing, so that opening a read-only file fails at once.
UPDATE {prefix}meta SET value = value WHERE key = 'schema_version'

-- name: schema_objects --
SELECT type, name, tbl_name, sql FROM sqlite_master
WHERE tbl_name IN (SELECT value FROM json_each(:tables))
ORDER BY name

-- name: next_token --
UPDATE {prefix}meta SET value = value + 1 WHERE key = 'last_token' RETURNING value

-- == submission ===============================================================================

-- name: insert_job --
INSERT INTO {prefix}jobs (
    id, type, status, options, priority, retry_of, owner, source, params, created_at,
    submit_expires_at, idempotency_key
) VALUES (
    :id, :type, 'pending', :options, :priority, :retry_of, :owner, :source, :params, :created_at,
    :now + :submit_lease, :idempotency_key
)

-- name: job_state --
-- The same shape as PostgreSQL's (bulkpipe.stores._rows.JobState); SQLite keeps no last_request.
SELECT seq, status, sealed, next_batch, NULL AS last_request FROM {prefix}jobs WHERE id = :id

-- name: last_item --
SELECT coalesce(max(seq), 0) FROM {prefix}items

-- name: insert_items --
-- executemany: (job, item_id, batch_no, payload). A repeated id is skipped, not an error.
INSERT INTO {prefix}items (job, item_id, batch_no, payload) VALUES (?, ?, ?, ?)
ON CONFLICT (job, item_id) DO NOTHING

-- name: item_ids_after --
SELECT item_id FROM {prefix}items WHERE seq > :after

-- name: insert_batch --
INSERT INTO {prefix}batches (job, batch_no, state, size, first_item, last_item)
VALUES (:job, :batch_no, 'pending', :size, :first_item, :last_item)

-- name: count_batches --
UPDATE {prefix}jobs
SET total = total + :size, open_batches = open_batches + :batches,
    next_batch = next_batch + :batches
WHERE seq = :job

-- name: count_errors --
UPDATE {prefix}jobs
SET error_count = error_count + :errors, rejected = rejected + :rejected
WHERE seq = :job

-- name: kept_errors --
SELECT count(*) FROM {prefix}errors WHERE job = :job

-- name: insert_error --
-- executemany: (job, item_id, error, error_type, timestamp, retry_count)
INSERT INTO {prefix}errors (job, item_id, error, error_type, timestamp, retry_count)
VALUES (?, ?, ?, ?, ?, ?)

-- name: seal_job --
UPDATE {prefix}jobs SET sealed = 1, submit_expires_at = NULL WHERE seq = :job

-- name: progress --
SELECT status, sealed, total, succeeded, failed, open_batches, abandoned FROM {prefix}jobs
WHERE id = :id

-- name: progress_by_seq --
SELECT status, sealed, total, succeeded, failed, open_batches, abandoned FROM {prefix}jobs
WHERE seq = :job

-- == claiming =================================================================================

-- name: next_job --
-- The highest-priority, then oldest, active job with a batch to claim. :types is a JSON array
-- of processor names or NULL (any); :exclude a JSON array of job ids.
SELECT j.seq FROM {prefix}jobs AS j
WHERE j.status IN ('pending', 'processing')
    AND (:types IS NULL OR j.type IN (SELECT value FROM json_each(:types)))
    AND j.id NOT IN (SELECT value FROM json_each(:exclude))
    AND (
        EXISTS (
            SELECT 1 FROM {prefix}batches AS b WHERE b.job = j.seq AND b.state = 'pending'
        )
        OR EXISTS (
            SELECT 1 FROM {prefix}batches AS b INDEXED BY {prefix}batches_queue
            WHERE b.job = j.seq AND b.state = 'leased' AND b.expires_at <= :now
        )
    )
ORDER BY j.priority DESC, j.seq
LIMIT 1

-- name: job_spec --
SELECT seq, id, type, status, options, priority FROM {prefix}jobs WHERE seq = :job

-- name: job_spec_by_id --
SELECT seq, id, type, status, options, priority FROM {prefix}jobs WHERE id = :id

-- name: pending_batch --
SELECT batch_no FROM {prefix}batches
WHERE job = :job AND state = 'pending'
ORDER BY batch_no
LIMIT 1

-- name: expired_batch --
-- INDEXED BY: a job has few leased batches but may have thousands of done ones.
SELECT batch_no FROM {prefix}batches INDEXED BY {prefix}batches_queue
WHERE job = :job AND state = 'leased' AND expires_at <= :now
ORDER BY batch_no
LIMIT 1

-- name: lease_batch --
UPDATE {prefix}batches
SET state = 'leased', token = :token, owner = :owner, expires_at = :expires_at,
    claims = claims + 1
WHERE job = :job AND batch_no = :batch_no
RETURNING claims, recorded, first_item, last_item

-- name: start_job --
UPDATE {prefix}jobs SET status = 'processing', started_at = :now
WHERE seq = :job AND status = 'pending'

-- name: batch_items --
SELECT item_id, payload FROM {prefix}items
WHERE seq > :first_item AND seq <= :last_item
ORDER BY seq

-- name: batch_items_unfinished --
-- The items of a batch that has some outcomes already (it was claimed before).
SELECT i.item_id, i.payload FROM {prefix}items AS i
WHERE i.seq > :first_item AND i.seq <= :last_item
    AND NOT EXISTS (
        SELECT 1 FROM {prefix}outcomes AS o WHERE o.job = i.job AND o.item_id = i.item_id
    )
ORDER BY i.seq

-- == recording ================================================================================

-- name: batch_lease --
SELECT state, token, size, recorded FROM {prefix}batches WHERE job = :job AND batch_no = :batch_no

-- name: last_outcome --
SELECT coalesce(max(seq), 0) FROM {prefix}outcomes

-- name: insert_outcomes --
-- executemany: (job, item_id, ok, result, error, error_type, attempts, started_at,
-- finished_at). An item that already has an outcome keeps it.
INSERT INTO {prefix}outcomes (
    job, item_id, ok, result, error, error_type, attempts, started_at, finished_at
) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (job, item_id) DO NOTHING

-- name: failed_since --
-- How many of the outcomes stored after :after (in this transaction) are failures.
SELECT count(*) FROM {prefix}outcomes WHERE seq > :after AND ok = 0

-- name: errors_from_outcomes --
-- The failed outcomes stored after :after become job errors, up to :room of them (the same
-- fields as bulkpipe._snapshot.errors_from_rows).
INSERT INTO {prefix}errors (job, item_id, error, error_type, timestamp, retry_count)
SELECT job, item_id, coalesce(error, ''), coalesce(error_type, 'Error'), finished_at,
    max(attempts - 1, 0)
FROM {prefix}outcomes
WHERE seq > :after AND ok = 0
ORDER BY seq
LIMIT :room

-- name: count_recorded --
UPDATE {prefix}batches SET recorded = recorded + :stored WHERE job = :job AND batch_no = :batch_no

-- name: finish_batch --
UPDATE {prefix}batches SET state = 'done', owner = NULL, expires_at = NULL
WHERE job = :job AND batch_no = :batch_no

-- name: count_outcomes --
UPDATE {prefix}jobs
SET succeeded = succeeded + :succeeded, failed = failed + :failed,
    error_count = error_count + :failed, open_batches = open_batches - :done,
    updated_at = :now
WHERE seq = :job
RETURNING status, sealed, total, succeeded, failed, open_batches, abandoned

-- == leases ===================================================================================

-- name: job_status --
SELECT seq, status FROM {prefix}jobs WHERE id = :id

-- name: renew_lease --
UPDATE {prefix}batches SET expires_at = :expires_at
WHERE job = :job AND batch_no = :batch_no AND token = :token AND state = 'leased'

-- name: release_lease --
-- Pending again: claimable at once, in batch order with the other pending batches. The claim
-- is given back (a graceful release is not a crash; see JobOptions.max_claims), except the first.
UPDATE {prefix}batches
SET state = 'pending', owner = NULL, expires_at = NULL, claims = max(claims - 1, 1)
WHERE job = :job AND batch_no = :batch_no AND token = :token AND state = 'leased'

-- name: finish_job --
UPDATE {prefix}jobs
SET status = :status, completed_at = :now, updated_at = :now,
    started_at = coalesce(started_at, :now), error_count = error_count + :errors
WHERE seq = :job AND status IN ('pending', 'processing')
  -- A job completes only once every item is in and has its outcome, every batch closed
  -- (the rule of bulkpipe.stores._finish.may_complete, checked here in the same step).
  AND (:status <> 'completed' OR (sealed AND open_batches = 0 AND succeeded + failed = total))

-- == reading ==================================================================================

-- name: job_row --
-- The errors column is PostgreSQL's; SQLite reads a job's errors apart (job_errors).
SELECT seq, id, type, status, options, priority, retry_of, owner, source, params, sealed, total,
    succeeded, failed, rejected, error_count, created_at, started_at, updated_at, completed_at,
    NULL AS errors, idempotency_key
FROM {prefix}jobs
WHERE id = :id

-- name: job_errors --
SELECT item_id, error, error_type, timestamp, retry_count FROM {prefix}errors
WHERE job = :job
ORDER BY seq
LIMIT :limit

-- name: list_jobs --
-- The errors column is PostgreSQL's; SQLite reads a job's errors apart (job_errors).
SELECT seq, id, type, status, options, priority, retry_of, owner, source, params, sealed, total,
    succeeded, failed, rejected, error_count, created_at, started_at, updated_at, completed_at,
    NULL AS errors, idempotency_key
FROM {prefix}jobs
WHERE (:status IS NULL OR status = :status) AND (:owner IS NULL OR owner = :owner)
ORDER BY seq DESC
LIMIT :limit OFFSET :offset

-- name: outcomes_all --
-- A page of outcomes after :after, up to :through (NULL: no bound) and :limit rows.
SELECT seq, item_id, ok, result, error, error_type, attempts, started_at, finished_at
FROM {prefix}outcomes
WHERE job = :job AND seq > :after AND seq <= coalesce(:through, seq)
ORDER BY seq
LIMIT :limit

-- name: outcomes_failed --
SELECT seq, item_id, ok, result, error, error_type, attempts, started_at, finished_at
FROM {prefix}outcomes
WHERE job = :job AND ok = 0 AND seq > :after AND seq <= coalesce(:through, seq)
ORDER BY seq
LIMIT :limit

-- name: outcomes_succeeded --
SELECT seq, item_id, ok, result, error, error_type, attempts, started_at, finished_at
FROM {prefix}outcomes
WHERE job = :job AND ok = 1 AND seq > :after AND seq <= coalesce(:through, seq)
ORDER BY seq
LIMIT :limit

-- name: outcome_sizes --
-- The bytes each outcome after :after counts against a page's byte budget (UTF-8 of item id,
-- result and error; CAST AS BLOB, since length() of TEXT counts characters), in order. The
-- store steps through these only until the budget is spent; :ok NULL means every outcome.
SELECT seq, length(CAST(item_id AS BLOB)) + coalesce(length(CAST(result AS BLOB)), 0)
    + coalesce(length(CAST(error AS BLOB)), 0)
FROM {prefix}outcomes
WHERE job = :job AND seq > :after AND ok = coalesce(:ok, ok)
ORDER BY seq
LIMIT :limit

-- name: failed_items --
SELECT o.seq, i.item_id, i.payload
FROM {prefix}outcomes AS o
JOIN {prefix}items AS i ON i.job = o.job AND i.item_id = o.item_id
WHERE o.job = :job AND o.ok = 0 AND o.seq > :after
ORDER BY o.seq
LIMIT :limit

-- == housekeeping: delete and prune jobs, named locks, unfinished items ==
-- Each statement runs alone, in autocommit (see stores/_sqlhousekeeping.py): a chunk of a
-- delete is one short write transaction. Child rows go before the job row they refer to.

-- name: delete_outcomes_chunk --
DELETE FROM {prefix}outcomes
WHERE seq IN (SELECT seq FROM {prefix}outcomes WHERE job = :job LIMIT :chunk)

-- name: delete_items_chunk --
DELETE FROM {prefix}items
WHERE seq IN (SELECT seq FROM {prefix}items WHERE job = :job LIMIT :chunk)

-- name: delete_errors_chunk --
DELETE FROM {prefix}errors
WHERE seq IN (SELECT seq FROM {prefix}errors WHERE job = :job LIMIT :chunk)

-- name: delete_batches_chunk --
DELETE FROM {prefix}batches
WHERE job = :job
  AND batch_no IN (SELECT batch_no FROM {prefix}batches WHERE job = :job LIMIT :chunk)

-- name: delete_job_row --
DELETE FROM {prefix}jobs
WHERE seq = :job AND status IN ('completed', 'failed', 'cancelled')

-- name: ended_jobs --
-- The first condition repeats the jobs_ended index's, so that the index is used.
SELECT id FROM {prefix}jobs
WHERE status IN ('completed', 'failed', 'cancelled')
  AND status IN (SELECT value FROM json_each(:statuses))
  AND completed_at < :before
ORDER BY completed_at
LIMIT :limit

-- name: try_lock --
-- Taken when free, expired, or already the holder's (then extended); no row when not.
INSERT INTO {prefix}locks (name, holder, expires_at) VALUES (:name, :holder, :now + :seconds)
ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at
WHERE {prefix}locks.holder = excluded.holder OR {prefix}locks.expires_at <= :now
RETURNING holder

-- name: unlock --
DELETE FROM {prefix}locks WHERE name = :name AND holder = :holder

-- name: unfinished_items --
-- The items without an outcome or with a failed one, in item order; the cursor is the item's
-- seq, and the scan stays within the job's item range (its batches' first_item..last_item).
SELECT i.seq, i.item_id, i.payload
FROM {prefix}items AS i
LEFT JOIN {prefix}outcomes AS o ON o.job = i.job AND o.item_id = i.item_id
WHERE i.job = :job
  AND i.seq > max(:after, (SELECT coalesce(min(first_item), 0) FROM {prefix}batches
                           WHERE job = :job))
  AND i.seq <= (SELECT coalesce(max(last_item), 0) FROM {prefix}batches WHERE job = :job)
  AND (o.ok IS NULL OR o.ok = 0)
ORDER BY i.seq
LIMIT :limit

-- == submit leases and idempotency keys =================================================

-- name: job_by_idempotency_key --
-- The job of one owner (NULL: no owner) with an idempotency key, if any.
SELECT id FROM {prefix}jobs
WHERE idempotency_key = :idempotency_key AND owner IS :owner

-- name: renew_submit --
-- Extends the submit lease of an unsealed live job that has one; :now is time.time().
UPDATE {prefix}jobs SET submit_expires_at = :now + :lease
WHERE id = :id AND NOT sealed AND status IN ('pending', 'processing')
    AND submit_expires_at IS NOT NULL

-- name: abandon_expired_submits --
-- Seals the unsealed live jobs whose submit lease has expired, oldest expiry first, marking
-- them abandoned; one statement, so it is atomic without a transaction of its own.
UPDATE {prefix}jobs SET sealed = 1, abandoned = 1, submit_expires_at = NULL
WHERE seq IN (
    SELECT seq FROM {prefix}jobs
    WHERE NOT sealed AND status IN ('pending', 'processing') AND submit_expires_at <= :now
    ORDER BY submit_expires_at
    LIMIT :limit
)
RETURNING id, status, sealed, total, succeeded, failed, open_batches, abandoned
-- == worker registry ==
-- Workers register themselves (stores/_workers.py); times are seconds since the epoch, and a
-- registration is live while expires_at is ahead of now (the machine's clock: one file is
-- shared by the processes of one machine only).

-- name: register_worker --
INSERT INTO {prefix}workers
    (id, host, pid, processors, started_at, last_seen, expires_at, in_flight)
VALUES (:id, :host, :pid, :processors, :started_at, :last_seen, :now + :ttl, :in_flight)
ON CONFLICT (id) DO UPDATE SET
    host = excluded.host, pid = excluded.pid, processors = excluded.processors,
    started_at = excluded.started_at, last_seen = excluded.last_seen,
    expires_at = excluded.expires_at, in_flight = excluded.in_flight

-- name: worker_seen --
UPDATE {prefix}workers SET last_seen = :now, expires_at = :now + :ttl, in_flight = :in_flight
WHERE id = :id
RETURNING id

-- name: unregister_worker --
DELETE FROM {prefix}workers WHERE id = :id

-- name: list_workers --
SELECT id, host, pid, processors, started_at, last_seen, in_flight,
    expires_at > :now AS live, expires_at < :now - :forget AS stale
FROM {prefix}workers
ORDER BY started_at, id

-- name: forget_workers --
DELETE FROM {prefix}workers WHERE expires_at < :now - :forget
