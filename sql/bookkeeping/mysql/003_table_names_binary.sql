-- cdc bookkeeping, version 3 (MySQL/MariaDB target): source table names compare
-- byte for byte.  MySQL/MariaDB table names are case-sensitive on Linux and
-- never accent-blind, but utf8mb4's default collation is both: `Orders`,
-- `orders` and `ordérs` shared one snapshot-progress row.
ALTER TABLE cdc_snapshot_tables
    MODIFY table_name varchar(190) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL;
ALTER TABLE cdc_dead_letters
    MODIFY source_table varchar(190) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL;
ALTER TABLE cdc_paused
    MODIFY source_table varchar(190) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL;
ALTER TABLE cdc_parked_changes
    MODIFY source_table varchar(190) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL;
