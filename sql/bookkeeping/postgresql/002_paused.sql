-- cdc bookkeeping, version 2 (PostgreSQL target): paused source tables.
-- A source schema change that a rule cannot follow (a column it reads dropped,
-- renamed or retyped) pauses that rule's source table: its changes are parked
-- here, in source order, in the same transaction as the offset, until the rule
-- is fixed and reloaded (cdc/pause.py).

-- One row per paused source table.
CREATE TABLE IF NOT EXISTS cdc.paused (
    pipeline            text NOT NULL,
    source_table        text NOT NULL,
    rules               text NOT NULL,          -- the rule(s) that cannot follow, comma-separated
    reason              text NOT NULL,
    since               timestamptz NOT NULL DEFAULT now(),
    since_position      text,                   -- source position of the first parked change
    PRIMARY KEY (pipeline, source_table)
);

-- The paused tables' changes, in source order (seq) per table.
CREATE TABLE IF NOT EXISTS cdc.parked_changes (
    pipeline            text NOT NULL,
    source_table        text NOT NULL,
    seq                 bigint NOT NULL,
    position            text NOT NULL,          -- the source transaction's resume position
    operation           char(1) NOT NULL,       -- I, U, D
    row_data            text NOT NULL,          -- as cdc.deadletter.change_to_json writes it
    parked_at           timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (pipeline, source_table, seq)
);
