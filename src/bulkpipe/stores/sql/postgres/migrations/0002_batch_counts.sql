-- Version 2: each batch counts its items (size) and the outcomes stored for them (recorded),
-- so that the statement that closes a batch can prove that every item has an outcome.
-- Applied under an advisory lock, in one transaction, by PostgresStore.open().
ALTER TABLE {prefix}batches
    ADD COLUMN size integer NOT NULL DEFAULT 0,
    ADD COLUMN recorded integer NOT NULL DEFAULT 0;

-- Backfill from the rows the store already has.
UPDATE {prefix}batches AS b
SET size = c.size, recorded = c.recorded
FROM (
    SELECT i.job, i.batch_no, count(*) AS size, count(o.item_id) AS recorded
    FROM {prefix}items AS i
    LEFT JOIN {prefix}outcomes AS o ON o.job = i.job AND o.item_id = i.item_id
    GROUP BY i.job, i.batch_no
) AS c
WHERE b.job = c.job AND b.batch_no = c.batch_no;

-- A store written before this version may hold done batches with items lacking an outcome
-- (outcomes lost in a server crash): put those of live jobs back to pending, to be run again.
WITH reopened AS (
    UPDATE {prefix}batches AS b
    SET state = 0, owner = NULL, expires_at = NULL
    FROM {prefix}jobs AS j
    WHERE j.seq = b.job AND j.status IN ('pending', 'processing')
      AND b.state = 2 AND b.recorded < b.size
    RETURNING b.job
)
UPDATE {prefix}jobs AS j
SET open_batches = j.open_batches + r.n
FROM (SELECT job, count(*) AS n FROM reopened GROUP BY job) AS r
WHERE j.seq = r.job;
