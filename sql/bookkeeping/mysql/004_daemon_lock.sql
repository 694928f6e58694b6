-- cdc bookkeeping, version 4 (MySQL/MariaDB target): who runs the pipeline.
-- `cdc run` holds a GET_LOCK per pipeline (one daemon per pipeline,
-- cdc/targets/lock.py); when it takes the lock it writes its pid and host into
-- its status row and the time here, so a second daemon can say who holds the
-- pipeline and since when.
ALTER TABLE cdc_status ADD COLUMN started_at datetime(6) NULL;
