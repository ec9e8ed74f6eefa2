-- The current SQLite schema of bulkpipe, for reading and for the test that rebuilds it from the
-- migrations (tests/test_sqlite_store.py compares the two). Stores create and upgrade their
-- schema only through migrations/NNNN_*.sql; a change here needs a new migration.
--
-- Other tables refer to a job by its integer `seq` (creation order), not its 32-character id,
-- which keeps the item and outcome rows and their indexes small.

-- Key/value settings: 'schema_version' (the last migration applied) and 'last_token' (the
-- fencing-token counter; every claim takes the next value).
CREATE TABLE {prefix}meta (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);

-- One row per job; the counts change in the same transaction as the rows they count.
-- The last line holds the columns that version 2 added, as SQLite writes an added column:
-- submit_expires_at (the submit lease, NULL once sealed), abandoned (sealed because that lease
-- expired: the job ends failed once its stored items have run) and idempotency_key.
CREATE TABLE {prefix}jobs (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    type TEXT NOT NULL,
    status TEXT NOT NULL,            -- pending, processing, completed, failed, cancelled
    options TEXT NOT NULL,           -- JobOptions as JSON
    priority INTEGER NOT NULL,
    retry_of TEXT,
    owner TEXT,                      -- an owner or tenant tag, or NULL
    source TEXT,
    params TEXT,                     -- JSON, or NULL
    sealed INTEGER NOT NULL DEFAULT 0,
    total INTEGER NOT NULL DEFAULT 0,
    succeeded INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    rejected INTEGER NOT NULL DEFAULT 0,
    open_batches INTEGER NOT NULL DEFAULT 0,
    next_batch INTEGER NOT NULL DEFAULT 0,
    error_count INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,        -- seconds since the epoch, as every time here
    started_at REAL,
    updated_at REAL,
    completed_at REAL
, submit_expires_at REAL, abandoned INTEGER NOT NULL DEFAULT 0, idempotency_key TEXT);

-- The jobs a worker may claim from, in claim order.
CREATE INDEX {prefix}jobs_active ON {prefix}jobs (priority DESC, seq)
    WHERE status IN ('pending', 'processing');

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

-- One row per batch. A batch's items are the item rows with first_item < seq <= last_item
-- (they are inserted by one statement under the write lock, so their seqs are consecutive).
CREATE TABLE {prefix}batches (
    job INTEGER NOT NULL REFERENCES {prefix}jobs (seq),
    batch_no INTEGER NOT NULL,
    state TEXT NOT NULL,             -- pending, leased, done
    token INTEGER NOT NULL DEFAULT 0,
    owner TEXT,
    expires_at REAL,
    claims INTEGER NOT NULL DEFAULT 0,
    size INTEGER NOT NULL,
    recorded INTEGER NOT NULL DEFAULT 0,  -- items of the batch with a final outcome
    first_item INTEGER NOT NULL,
    last_item INTEGER NOT NULL,
    PRIMARY KEY (job, batch_no)
) WITHOUT ROWID;

-- Per job and state, in batch order (the primary key is part of every index entry).
CREATE INDEX {prefix}batches_queue ON {prefix}batches (job, state);

CREATE TABLE {prefix}items (
    seq INTEGER PRIMARY KEY,
    job INTEGER NOT NULL REFERENCES {prefix}jobs (seq),
    item_id TEXT NOT NULL,
    batch_no INTEGER NOT NULL,
    payload TEXT NOT NULL,           -- the item as JSON
    UNIQUE (job, item_id)
);

-- Final outcomes, one per item; seq is the recording order and the read cursor.
CREATE TABLE {prefix}outcomes (
    seq INTEGER PRIMARY KEY,
    job INTEGER NOT NULL REFERENCES {prefix}jobs (seq),
    item_id TEXT NOT NULL,
    ok INTEGER NOT NULL,
    result TEXT,                     -- JSON, when ok
    error TEXT,
    error_type TEXT,
    attempts INTEGER NOT NULL,
    started_at REAL NOT NULL,
    finished_at REAL NOT NULL,
    UNIQUE (job, item_id)
);

CREATE INDEX {prefix}outcomes_job ON {prefix}outcomes (job);

CREATE INDEX {prefix}outcomes_failed ON {prefix}outcomes (job) WHERE ok = 0;

-- The first errors of each job (at most MAX_ERRORS are kept; jobs.error_count counts all).
CREATE TABLE {prefix}errors (
    seq INTEGER PRIMARY KEY,
    job INTEGER NOT NULL REFERENCES {prefix}jobs (seq),
    item_id TEXT,
    error TEXT NOT NULL,
    error_type TEXT NOT NULL,
    timestamp REAL NOT NULL,
    retry_count INTEGER NOT NULL
);

CREATE INDEX {prefix}errors_job ON {prefix}errors (job);

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
