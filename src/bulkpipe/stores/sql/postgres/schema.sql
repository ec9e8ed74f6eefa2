-- The current PostgreSQL schema of a bulkpipe store, with the table prefix written {prefix}.
-- Stores create and upgrade their schema only through migrations/NNNN_*.sql; this file is
-- what they build (tests/test_postgres_store.py compares the two catalogs), so a change here
-- needs a new migration.
--
-- Other tables refer to a job by its integer `seq` (creation order), not its 32-character id,
-- which keeps the item and outcome rows and their indexes small. Ids are COLLATE "C" (byte
-- order), cheaper to compare and index than a linguistic collation. Times shown to users are
-- epoch seconds (double precision); lease expiry is a timestamptz compared with the database
-- clock, the one clock that workers on several machines share.

-- Key/value settings: 'schema_version' (the last migration applied).
CREATE TABLE {prefix}meta (
    key text PRIMARY KEY,
    value text NOT NULL
);

-- Fencing tokens: strictly increasing across every process that uses the store.
CREATE SEQUENCE {prefix}tokens;

-- One row per job; the counts change in the same transaction as the rows they count.
CREATE TABLE {prefix}jobs (
    seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id text COLLATE "C" NOT NULL UNIQUE,
    type text NOT NULL,
    status text NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'processing', 'completed', 'failed', 'cancelled')),
    options jsonb NOT NULL,
    priority integer NOT NULL DEFAULT 0,
    retry_of text,
    owner text,                              -- an owner or tenant tag, or NULL
    source text,
    params jsonb,
    sealed boolean NOT NULL DEFAULT false,
    next_batch integer NOT NULL DEFAULT 0,
    next_outcome bigint NOT NULL DEFAULT 0,  -- outcome ids of the job so far
    total bigint NOT NULL DEFAULT 0,
    succeeded bigint NOT NULL DEFAULT 0,
    failed bigint NOT NULL DEFAULT 0,
    rejected bigint NOT NULL DEFAULT 0,
    open_batches integer NOT NULL DEFAULT 0, -- batches not done: pending or leased
    error_count bigint NOT NULL DEFAULT 0,
    errors jsonb NOT NULL DEFAULT '[]',      -- the first errors (MAX_ERRORS at most)
    last_request text,                       -- the last submit-side write, to spot a retry
    created_at double precision NOT NULL,
    started_at double precision,
    updated_at double precision,
    completed_at double precision,
    submit_expires_at timestamptz,           -- the submit lease; NULL once sealed
    abandoned boolean NOT NULL DEFAULT false, -- sealed because the submit lease expired
    idempotency_key text                     -- unique per owner, or NULL
);

-- The jobs a worker may claim from, in claim order.
CREATE INDEX {prefix}jobs_active ON {prefix}jobs (priority DESC, seq)
    WHERE status IN ('pending', 'processing');
CREATE INDEX {prefix}jobs_status ON {prefix}jobs (status, seq);
CREATE INDEX {prefix}jobs_owner ON {prefix}jobs (owner, seq);

-- The submits a worker may find abandoned.
CREATE INDEX {prefix}jobs_submitting ON {prefix}jobs (submit_expires_at)
    WHERE NOT sealed AND status IN ('pending', 'processing');

-- One job per (owner, key); a NULL owner is its own owner, distinct from every string.
CREATE UNIQUE INDEX {prefix}jobs_idempotency
    ON {prefix}jobs ((owner IS NULL), COALESCE(owner, ''), idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- Terminal jobs by when they ended, for pruning.
CREATE INDEX {prefix}jobs_ended ON {prefix}jobs (completed_at)
    WHERE status IN ('completed', 'failed', 'cancelled');

-- One row per batch; state 0 pending, 1 leased, 2 done (only once recorded = size).
CREATE TABLE {prefix}batches (
    job bigint NOT NULL,
    batch_no integer NOT NULL,
    state smallint NOT NULL DEFAULT 0 CHECK (state IN (0, 1, 2)),
    token bigint NOT NULL DEFAULT 0,
    owner text,                              -- the worker holding the lease
    expires_at timestamptz,
    claims integer NOT NULL DEFAULT 0,
    size integer NOT NULL DEFAULT 0,         -- its items
    recorded integer NOT NULL DEFAULT 0,     -- outcomes stored for its items
    PRIMARY KEY (job, batch_no)
);

-- The batches a claim may take: pending ones, and leased ones whose lease may have expired.
CREATE INDEX {prefix}batches_open ON {prefix}batches (job, state, batch_no) WHERE state < 2;

-- payload is the item's JSON as text: cheaper to write than jsonb, and it goes back to the
-- worker as text anyway.
CREATE TABLE {prefix}items (
    job bigint NOT NULL,
    item_id text COLLATE "C" NOT NULL,
    batch_no integer NOT NULL,
    pos integer NOT NULL,                    -- order within the batch
    payload text NOT NULL,
    PRIMARY KEY (job, item_id)
);

CREATE INDEX {prefix}items_batch ON {prefix}items (job, batch_no);

-- Final outcomes, one per item; id (per job) is the recording order and the read cursor.
CREATE TABLE {prefix}outcomes (
    id bigint NOT NULL,
    job bigint NOT NULL,
    item_id text COLLATE "C" NOT NULL,
    ok boolean NOT NULL,
    result text,                             -- JSON, when ok
    error text,
    error_type text,
    attempts integer NOT NULL,
    started_at double precision NOT NULL,
    finished_at double precision NOT NULL,
    PRIMARY KEY (job, id),
    UNIQUE (job, item_id)
);

-- Workers that registered; one is live while its expires_at (the database clock) is ahead.
CREATE TABLE {prefix}workers (
    id text COLLATE "C" PRIMARY KEY,
    host text NOT NULL,
    pid integer NOT NULL,
    processors jsonb NOT NULL,               -- the processor names it serves, a JSON array
    started_at double precision NOT NULL,
    last_seen double precision NOT NULL,
    expires_at timestamptz NOT NULL,
    in_flight integer NOT NULL DEFAULT 0
);

-- Named locks with an expiry, for chores that one process at a time should do.
CREATE TABLE {prefix}locks (
    name text COLLATE "C" PRIMARY KEY,
    holder text NOT NULL,
    expires_at timestamptz NOT NULL
);

INSERT INTO {prefix}meta (key, value) VALUES ('schema_version', '3');
