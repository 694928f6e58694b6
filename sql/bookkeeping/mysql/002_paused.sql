-- cdc bookkeeping, version 2 (MySQL/MariaDB target): paused source tables.
-- See the PostgreSQL version for what they hold.
CREATE TABLE IF NOT EXISTS cdc_paused (
    pipeline            varchar(190) NOT NULL,
    source_table        varchar(190) NOT NULL,
    rules               text NOT NULL,
    reason              text NOT NULL,
    since               datetime(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    since_position      varchar(512) NULL,
    PRIMARY KEY (pipeline, source_table)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE IF NOT EXISTS cdc_parked_changes (
    pipeline            varchar(190) NOT NULL,
    source_table        varchar(190) NOT NULL,
    seq                 bigint NOT NULL,
    position            varchar(512) NOT NULL,
    operation           char(1) NOT NULL,
    row_data            longtext NOT NULL,
    parked_at           datetime(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    PRIMARY KEY (pipeline, source_table, seq)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
