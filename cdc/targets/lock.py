"""One daemon per pipeline: a lock held in the target, on a connection of its own.

PostgreSQL: a session-level advisory lock; MySQL/MariaDB: ``GET_LOCK``.  Both
belong to the database session, so a daemon that crashes (kill -9, a host that
dies) lets go of it when its connection ends, and a second daemon on another
host is kept out as well as one on the same host.  The lock's connection does
nothing else: the data connection may come and go (a batch that fails, a
reconnect) without the lock being dropped in between.

The holder writes its pid, host and start time into its status row (the one
`cdc status` reads), so a second daemon can say who holds the pipeline.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
import time
from typing import Any

from cdc.config import Config
from cdc.errors import ConnectionLost, TerminalError

log = logging.getLogger("cdc.lock")

# A holder on this host whose process is gone is a daemon just killed: the
# server drops its session (and the lock) within moments; wait that long.
DEAD_HOLDER_WAIT_SECONDS = 15.0


class PipelineLocked(TerminalError):
    """Another daemon runs this pipeline (the CLI exits 5 on it)."""


def _pg_key(pipeline: str) -> int:
    digest = hashlib.sha256(b"cdc run\0" + pipeline.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _mysql_name(database: str, pipeline: str) -> str:
    # GET_LOCK names are server-wide and at most 64 characters: the database
    # keeps two targets on one server apart.
    digest = hashlib.sha256(f"{database}\0{pipeline}".encode()).hexdigest()
    return f"cdc_run_{digest[:48]}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class PipelineLock:
    """Take with ``acquire`` (again after any reconnect), ``check`` while running."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.url = config.target
        self._conn: Any = None
        self._claimed = False  # our pid, host and start are in the status row

    @property
    def held(self) -> bool:
        return self._conn is not None

    # --- dialects -------------------------------------------------------------
    def _connect(self) -> Any:
        if self.url.kind == "postgresql":
            from cdc.targets.postgres import connect

            # Its queries are instant: a check sent into a dead network fails
            # after connect_timeout instead of hanging (tcp_user_timeout).
            return connect(self.url, timeout=self.config.connect_timeout, autocommit=True,
                           tcp_user_timeout=int(self.config.connect_timeout * 1000))
        import pymysql

        from cdc.sources.mysql import classify
        from cdc.sources.mysql import connect as mysql_connect

        try:
            # Its queries are instant: a server that does not answer them in
            # connect_timeout is gone (and so, maybe, is the lock).
            timeout = max(1, int(self.config.connect_timeout))
            return mysql_connect(self.url, timeout=timeout, read_timeout=timeout,
                                 write_timeout=timeout)
        except pymysql.err.MySQLError as e:  # those connect() does not map itself
            raise classify(e, self.url) from None

    def _scalar(self, conn: Any, query: str, params: tuple[Any, ...]) -> Any:
        """One value from the lock connection; a failure means the lock may be gone."""
        try:
            if self.url.kind == "postgresql":
                row = conn.execute(query, params).fetchone()
            else:
                with conn.cursor() as cur:
                    cur.execute(query, params)
                    row = cur.fetchone()
        except Exception as e:  # any driver error: the session, and the lock, may be gone
            raise ConnectionLost(f"{self._where()}: the pipeline lock's connection failed: "
                                 f"{_reason(e)}") from None
        return row[0] if row else None

    def _try(self, conn: Any) -> bool:
        if self.url.kind == "postgresql":
            return bool(self._scalar(conn, "SELECT pg_try_advisory_lock(%s)",
                                     (_pg_key(self.config.pipeline),)))
        return self._scalar(conn, "SELECT GET_LOCK(%s, 0)",
                            (_mysql_name(self.url.database, self.config.pipeline),)) == 1

    def _still_ours(self, conn: Any) -> bool:
        if self.url.kind == "postgresql":
            # The lock lives as long as the session: a live session still has it.
            return self._scalar(conn, "SELECT 1", ()) == 1
        return self._scalar(conn, "SELECT IS_USED_LOCK(%s) = CONNECTION_ID()",
                            (_mysql_name(self.url.database, self.config.pipeline),)) == 1

    def _where(self) -> str:
        kind = "PostgreSQL" if self.url.kind == "postgresql" else "MySQL"
        return f"{kind} target {self.url.host}:{self.url.port}"

    # --- use ------------------------------------------------------------------------
    def acquire(self, target: Any) -> None:
        """Hold the pipeline's lock, taking it if this process does not hold it
        (first start, or its connection was lost).  Raises ``PipelineLocked``
        when another daemon holds it, ``ConnectionLost`` when the target is
        unreachable (the caller retries)."""
        if self._conn is not None:
            try:
                if self._still_ours(self._conn):
                    if not self._claimed:
                        self._claim(target)
                    return
            except ConnectionLost as e:
                log.warning("%s; taking the pipeline lock again", e)
            # A broken session is not asked to unlock: it may not answer at all.
            conn, self._conn = self._conn, None
            _close(conn)
        deadline = time.monotonic() + DEAD_HOLDER_WAIT_SECONDS
        while True:
            conn = self._connect()
            try:
                got = self._try(conn)
            except BaseException:
                _close(conn)
                raise
            if got:
                self._conn = conn
                self._claimed = False
                self._claim(target)
                return
            _close(conn)
            holder = target.pipeline_holder()
            pid, host = holder.get("pid"), holder.get("host")
            if pid and host == socket.gethostname() and time.monotonic() < deadline \
                    and (int(pid) == os.getpid() or not _alive(int(pid))):
                time.sleep(0.5)  # just killed, or our own last run: its session is ending
                continue
            raise self._refusal(holder)

    def _claim(self, target: Any) -> None:
        target.claim_pipeline()  # may fail (transient): then again on the next acquire
        self._claimed = True
        log.info("holding pipeline %s (lock in the %s)", self.config.pipeline, self._where())

    def _refusal(self, holder: dict[str, Any]) -> PipelineLocked:
        since = holder.get("started_at")
        who = "another cdc"
        if holder.get("pid"):
            who = f"pid {holder['pid']} on {holder.get('host')}"
            if since is not None:
                who += f" since {since:%Y-%m-%d %H:%M:%S} UTC"
        return PipelineLocked(
            f"pipeline {self.config.pipeline!r} is already run by {who} (it holds the "
            f"pipeline's lock in the {self._where()}); not starting a second daemon",
            fix="stop that one first (systemctl stop cdc@NAME on its host), or give this "
                "pipeline another name")

    def check(self) -> None:
        """While running: ``ConnectionLost`` if the lock may have been lost (the
        run then restarts and takes it again, or stops if another took it).
        Also keeps the lock's idle connection from timing out."""
        if self._conn is None:
            raise ConnectionLost(f"{self._where()}: the pipeline lock is not held")
        if not self._still_ours(self._conn):
            raise ConnectionLost(f"{self._where()}: the pipeline lock was lost")

    def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        # Unlock before closing: a close ends the session only some moments
        # later on the server, and a run started right after (a restart in the
        # same process) would find the lock still taken.
        with contextlib.suppress(ConnectionLost):
            if self.url.kind == "postgresql":
                self._scalar(conn, "SELECT pg_advisory_unlock(%s)",
                             (_pg_key(self.config.pipeline),))
            else:
                self._scalar(conn, "SELECT RELEASE_LOCK(%s)",
                             (_mysql_name(self.url.database, self.config.pipeline),))
        _close(conn)


def _reason(e: BaseException) -> str:
    args: tuple[Any, ...] = tuple(getattr(e, "args", ()))
    if len(args) == 2 and isinstance(args[0], int):  # pymysql: (code, message)
        return f"{args[1] or 'connection lost'} ({args[0]})"
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _close(conn: Any) -> None:
    with contextlib.suppress(Exception):
        conn.close()
