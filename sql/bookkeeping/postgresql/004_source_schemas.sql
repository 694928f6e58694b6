-- cdc bookkeeping, version 4 (PostgreSQL target): the source table shapes the
-- running rules were bound against.  A column dropped or renamed while cdc was
-- stopped is gone from the catalog, but the stream from the saved offset still
-- holds changes made before the ALTER: the daemon binds those through the rule
-- as it was (this shape) and pauses the table at the first change without the
-- column, not at the offset (cdc/pause.py).
CREATE TABLE IF NOT EXISTS cdc.source_schemas (
    pipeline            text NOT NULL,
    source_table        text NOT NULL,
    table_schema        text NOT NULL,          -- cdc.catalog.schema_to_json
    saved_at            timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (pipeline, source_table)
);
