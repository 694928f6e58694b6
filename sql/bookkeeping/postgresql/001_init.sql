-- cdc bookkeeping, version 1 (PostgreSQL target).
-- Everything cdc remembers lives here, in the target, so that data and the
-- position it came from commit in one transaction.
-- (the schema itself is created by cdc setup when missing)

-- Where each pipeline resumes: written in the same transaction as the data.
CREATE TABLE IF NOT EXISTS cdc.offsets (
    pipeline            text PRIMARY KEY,
    position            text NOT NULL,          -- binlog:FILE:POS or lsn:X/Y
    source_commit_time  timestamptz,            -- commit time of the last applied source txn
    applied_at          timestamptz NOT NULL DEFAULT now(),
    transactions        bigint NOT NULL DEFAULT 0,
    rows_applied        bigint NOT NULL DEFAULT 0
);

-- What the daemon last said about itself (for `cdc lag` and `cdc status`).
CREATE TABLE IF NOT EXISTS cdc.status (
    pipeline            text PRIMARY KEY,
    state               text NOT NULL,          -- streaming, snapshotting, stopped, failing
    source_position     text,                   -- newest position seen on the source
    source_seen_at      timestamptz,
    rows_per_second     double precision,
    message             text,
    pid                 integer,
    host                text,
    updated_at          timestamptz NOT NULL DEFAULT now()
);

-- Snapshot progress per table, so a killed snapshot resumes.
CREATE TABLE IF NOT EXISTS cdc.snapshot_tables (
    pipeline            text NOT NULL,
    table_name          text NOT NULL,
    state               text NOT NULL,          -- pending, copying, done
    where_clause        text,
    start_position      text,                   -- source position before the first chunk
    last_key            text,                   -- JSON array: key of the last copied row
    rows_done           bigint NOT NULL DEFAULT 0,
    rows_estimated      bigint,
    chunks_done         integer NOT NULL DEFAULT 0,
    started_at          timestamptz NOT NULL DEFAULT now(),
    finished_at         timestamptz,
    PRIMARY KEY (pipeline, table_name)
);

-- Rows that could not be applied, with why.  Retried, then kept for a human.
CREATE TABLE IF NOT EXISTS cdc.dead_letters (
    id                  bigserial PRIMARY KEY,
    pipeline            text NOT NULL,
    rule                text NOT NULL,
    source_table        text NOT NULL,
    operation           text NOT NULL,          -- I, U, D
    position            text,
    row_data            jsonb NOT NULL,         -- {"before": {...}, "after": {...}}
    error               text NOT NULL,
    attempts            integer NOT NULL DEFAULT 1,
    first_failed_at     timestamptz NOT NULL DEFAULT now(),
    last_failed_at      timestamptz NOT NULL DEFAULT now(),
    next_retry_at       timestamptz
);
CREATE INDEX IF NOT EXISTS dead_letters_pipeline ON cdc.dead_letters (pipeline, id);
