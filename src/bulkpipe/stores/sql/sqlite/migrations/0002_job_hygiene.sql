-- Version 2: job hygiene. A job being submitted holds a submit lease that its submitter
-- renews (a job whose lease expires is sealed as it stands and marked abandoned); a job may
-- carry an idempotency key, unique per owner; workers register themselves; named locks let
-- one worker at a time run store-wide chores (retention). Times are seconds since the epoch.
ALTER TABLE {prefix}jobs ADD COLUMN submit_expires_at REAL;
ALTER TABLE {prefix}jobs ADD COLUMN abandoned INTEGER NOT NULL DEFAULT 0;
ALTER TABLE {prefix}jobs ADD COLUMN idempotency_key TEXT;

-- Live unsealed jobs written before submit leases: their submitters (if any still run) do not
-- renew, so give them a while to finish and then let workers end them as abandoned.
UPDATE {prefix}jobs SET submit_expires_at = CAST(strftime('%s', 'now') AS REAL) + 600
WHERE NOT sealed AND status IN ('pending', 'processing');

-- The submits a worker may find abandoned.
CREATE INDEX {prefix}jobs_submitting ON {prefix}jobs (submit_expires_at)
    WHERE NOT sealed AND status IN ('pending', 'processing');

-- One job per (owner, key); a NULL owner is its own owner, distinct from every string.
CREATE UNIQUE INDEX {prefix}jobs_idempotency
    ON {prefix}jobs ((owner IS NULL), ifnull(owner, ''), idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- Terminal jobs by when they ended, for pruning.
CREATE INDEX {prefix}jobs_ended ON {prefix}jobs (completed_at)
    WHERE status IN ('completed', 'failed', 'cancelled');

-- Workers that registered; one is live while its expires_at is ahead of now.
CREATE TABLE {prefix}workers (
    id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    processors TEXT NOT NULL,        -- the processor names it serves, a JSON array
    started_at REAL NOT NULL,
    last_seen REAL NOT NULL,
    expires_at REAL NOT NULL,
    in_flight INTEGER NOT NULL DEFAULT 0
);

-- Named locks with an expiry, for chores that one process at a time should do.
CREATE TABLE {prefix}locks (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires_at REAL NOT NULL
);
