-- r2migrate state schema, version 1. {schema} is replaced by the quoted schema name.
-- Mirrors the original system's file_migration_batches / file_migration_records, one row per
-- object key per batch, plus an append-only event history and the inventory snapshots.

CREATE TABLE {schema}.inventory_runs (
    run_id          bigserial PRIMARY KEY,
    created_at      timestamptz NOT NULL DEFAULT now(),
    media_root      text NOT NULL,
    references_used text[] NOT NULL,
    location        text NOT NULL DEFAULT '',
    summary         jsonb NOT NULL DEFAULT '{}'::jsonb
);

CREATE TABLE {schema}.inventory_files (
    run_id          bigint NOT NULL REFERENCES {schema}.inventory_runs(run_id) ON DELETE CASCADE,
    file_id         text NOT NULL,           -- '<table>.<column>:<row id>', or 'orphan:<name>'
    source_ref      text,                    -- '<table>.<column>' (NULL for orphans)
    source_id       text,                    -- the row's primary key as text
    relative_path   text,                    -- the stored Django name, exact spelling
    object_key      text,
    size_bytes      bigint,
    mtime_ns        bigint,
    content_type    text,
    content_encoding text,
    problems        text[] NOT NULL DEFAULT '{}',
    PRIMARY KEY (run_id, file_id)
);

CREATE TABLE {schema}.batches (
    batch_id        text PRIMARY KEY,
    status          text NOT NULL DEFAULT 'planned'
                    CHECK (status IN ('planned','running','completed','partial','failed','rolled_back')),
    dry_run         boolean NOT NULL DEFAULT false,
    batch_size      integer NOT NULL,
    total_files     integer NOT NULL DEFAULT 0,
    uploaded_files  integer NOT NULL DEFAULT 0,
    verified_files  integer NOT NULL DEFAULT 0,
    failed_files    integer NOT NULL DEFAULT 0,
    skipped_files   integer NOT NULL DEFAULT 0,
    conflict_files  integer NOT NULL DEFAULT 0,
    total_bytes     bigint NOT NULL DEFAULT 0,
    uploaded_bytes  bigint NOT NULL DEFAULT 0,
    bucket_name     text NOT NULL,
    location        text NOT NULL DEFAULT '',
    settings        jsonb NOT NULL DEFAULT '{}'::jsonb,   -- redacted settings used
    created_at      timestamptz NOT NULL DEFAULT now(),
    started_at      timestamptz,
    completed_at    timestamptz,
    last_error      text
);

CREATE TABLE {schema}.files (
    id              bigserial PRIMARY KEY,
    batch_id        text NOT NULL REFERENCES {schema}.batches(batch_id) ON DELETE CASCADE,
    file_id         text NOT NULL,
    source_refs     jsonb NOT NULL DEFAULT '[]'::jsonb,  -- every source row pointing at this name
    relative_path   text NOT NULL,
    object_key      text NOT NULL,
    size_bytes      bigint NOT NULL,
    mtime_ns        bigint,
    content_type    text NOT NULL,
    content_encoding text,
    source_sha256   text,
    object_sha256   text,
    etag            text,
    part_size_bytes bigint,                               -- NULL = single PUT
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending','uploading','uploaded','verified','failed',
                                      'conflict','skipped','rolled_back')),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz,
    lease_owner     text,
    lease_expires_at timestamptz,
    error_code      text,
    error_message   text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    uploaded_at     timestamptz,
    verified_at     timestamptz,
    UNIQUE (batch_id, file_id)
);
CREATE INDEX files_batch_status ON {schema}.files (batch_id, status);
-- A key belongs to at most one live batch: planning twice never queues the same upload twice.
CREATE UNIQUE INDEX files_live_key ON {schema}.files (object_key) WHERE status <> 'rolled_back';

CREATE TABLE {schema}.events (
    id              bigserial PRIMARY KEY,
    at              timestamptz NOT NULL DEFAULT clock_timestamp(),
    batch_id        text,
    file_row_id     bigint,
    kind            text NOT NULL,      -- attempt, resolve, batch, verify, rollback
    outcome         text NOT NULL,
    detail          jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX events_batch ON {schema}.events (batch_id, at);
