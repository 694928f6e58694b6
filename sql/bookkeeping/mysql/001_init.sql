-- cdc bookkeeping, version 1 (MySQL/MariaDB target).  Tables live in the
-- target database with a cdc_ prefix (a separate schema would need CREATE
-- DATABASE rights).  See the PostgreSQL version for column meanings.
CREATE TABLE IF NOT EXISTS cdc_offsets (
    pipeline            varchar(190) PRIMARY KEY,
    position            varchar(512) NOT NULL,
    source_commit_time  datetime(6) NULL,
    applied_at          datetime(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    transactions        bigint NOT NULL DEFAULT 0,
    rows_applied        bigint NOT NULL DEFAULT 0
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE IF NOT EXISTS cdc_status (
    pipeline            varchar(190) PRIMARY KEY,
    state               varchar(32) NOT NULL,
    source_position     varchar(512) NULL,
    source_seen_at      datetime(6) NULL,
    rows_per_second     double NULL,
    message             text NULL,
    pid                 int NULL,
    host                varchar(255) NULL,
    updated_at          datetime(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE IF NOT EXISTS cdc_snapshot_tables (
    pipeline            varchar(190) NOT NULL,
    table_name          varchar(190) NOT NULL,
    state               varchar(16) NOT NULL,
    where_clause        text NULL,
    start_position      varchar(512) NULL,
    last_key            text NULL,
    rows_done           bigint NOT NULL DEFAULT 0,
    rows_estimated      bigint NULL,
    chunks_done         int NOT NULL DEFAULT 0,
    started_at          datetime(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    finished_at         datetime(6) NULL,
    PRIMARY KEY (pipeline, table_name)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE IF NOT EXISTS cdc_dead_letters (
    id                  bigint AUTO_INCREMENT PRIMARY KEY,
    pipeline            varchar(190) NOT NULL,
    rule                varchar(190) NOT NULL,
    source_table        varchar(190) NOT NULL,
    operation           char(1) NOT NULL,
    position            varchar(512) NULL,
    row_data            longtext NOT NULL,
    error               text NOT NULL,
    attempts            int NOT NULL DEFAULT 1,
    first_failed_at     datetime(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    last_failed_at      datetime(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    next_retry_at       datetime(6) NULL,
    KEY dead_letters_pipeline (pipeline, id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
