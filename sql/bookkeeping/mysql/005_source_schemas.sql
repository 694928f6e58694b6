-- cdc bookkeeping, version 5 (MySQL/MariaDB target): the source table shapes
-- the running rules were bound against.  See the PostgreSQL version (004).
CREATE TABLE IF NOT EXISTS cdc_source_schemas (
    pipeline            varchar(190) NOT NULL,
    source_table        varchar(190) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    table_schema        longtext NOT NULL,
    saved_at            datetime(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    PRIMARY KEY (pipeline, source_table)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
