-- cdc bookkeeping, version 3 (PostgreSQL target): who runs the pipeline.
-- `cdc run` holds a session advisory lock per pipeline in the target (one
-- daemon per pipeline, cdc/targets/lock.py); when it takes the lock it writes
-- its pid and host into its status row and the time here, so a second daemon
-- can say who holds the pipeline and since when.
ALTER TABLE cdc.status ADD COLUMN IF NOT EXISTS started_at timestamptz;
