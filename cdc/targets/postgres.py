"""PostgreSQL target: COPY into staging, rule SQL, offset, one commit."""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import psycopg
from psycopg import errors as pgerr
from psycopg import sql
from psycopg.types.json import Jsonb

from cdc import bookkeeping, catalog
from cdc.batch import Batch, Converter, stage_rows
from cdc.catalog import TableSchema
from cdc.config import Config, DatabaseUrl
from cdc.errors import ConnectionLost, RuleError, TargetError, TerminalError, TransientError
from cdc.positions import Position, decode_position
from cdc.rules.compile import CompiledRule, StageTable

log = logging.getLogger("cdc.target.postgres")

_TRANSIENT = (pgerr.SerializationFailure, pgerr.DeadlockDetected, pgerr.LockNotAvailable,
              pgerr.AdminShutdown, pgerr.CrashShutdown, pgerr.CannotConnectNow,
              pgerr.QueryCanceled)


def classify(e: BaseException, url: DatabaseUrl, what: str = "target") -> Exception:
    where = f"PostgreSQL {what} {url.host}:{url.port}"
    if isinstance(e, pgerr.InvalidPassword | pgerr.InvalidAuthorizationSpecification):
        return TerminalError(f"{where}: authentication failed for user {url.user!r}",
                             fix="check the user and password in the config URL")
    if isinstance(e, pgerr.InvalidCatalogName):
        return TerminalError(f"{where}: database {url.database!r} does not exist",
                             fix="create it or fix the database name at the end of the URL")
    if isinstance(e, _TRANSIENT):
        return TransientError(f"{where}: {type(e).__name__}: {str(e).strip()}")
    if isinstance(e, psycopg.OperationalError):
        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "password authentication failed" in text or "no password supplied" in text:
            return TerminalError(f"{where}: authentication failed for user {url.user!r}",
                                 fix="check the user and password in the config URL")
        if "does not exist" in text and "database" in text:
            return TerminalError(f"{where}: {text}")
        return ConnectionLost(f"{where}: {text}")
    if isinstance(e, pgerr.InsufficientPrivilege):
        return TerminalError(f"{where}: {str(e).strip()}",
                             fix="run `cdc doctor --print-grants` for the GRANTs it needs")
    return TargetError(f"{where}: {str(e).strip()}")


def connect(url: DatabaseUrl, *, timeout: float = 10.0, autocommit: bool = False,
            what: str = "target", **kw: Any) -> psycopg.Connection[Any]:
    try:
        conn = psycopg.connect(url.libpq(), autocommit=autocommit, connect_timeout=int(timeout),
                               application_name="cdc", **kw)
    except psycopg.Error as e:
        raise classify(e, url, what) from None
    return conn


def _jsonb(v: Any) -> Any:
    if isinstance(v, dict | list):
        return Jsonb(v)
    if isinstance(v, bytes):
        return Jsonb(json.loads(v))
    return v


def _set_text(v: Any) -> Any:
    if isinstance(v, set | frozenset):
        return ",".join(sorted(v))
    return v


def _bits(v: Any) -> Any:
    if isinstance(v, bytes):
        return int.from_bytes(v, "big")
    if isinstance(v, str):
        return int(v, 2)
    return v


def converters(stage: StageTable) -> list[Converter | None]:
    out: list[Converter | None] = []
    for col, t in zip(stage.source.columns, stage.types, strict=True):
        if t == "jsonb":
            out.append(_jsonb)
        elif col.base_type == "set":
            out.append(_set_text)
        elif col.base_type == "bit":
            out.append(_bits)
        else:
            out.append(None)
    return out


class PostgresTarget:
    kind = "postgresql"

    def __init__(self, config: Config) -> None:
        self.config = config
        self.url = config.target
        self.pipeline = config.pipeline
        self._conn: psycopg.Connection[Any] | None = None
        self._prepared: set[str] = set()

    # --- connection and catalog ---------------------------------------------
    def conn(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = connect(self.url, timeout=self.config.connect_timeout)
            # Values are exchanged in UTC; wall-clock types are untouched by this.
            self._conn.execute("SET TimeZone = 'UTC'")
            self._conn.commit()
            self._prepared.clear()
        return self._conn

    def close(self) -> None:
        if self._conn is not None and not self._conn.closed:
            self._conn.close()
        self._conn = None

    def table(self, name: str) -> TableSchema | None:
        conn = self.conn()
        try:
            return catalog.pg_table(conn, name)
        finally:
            conn.rollback()

    def unique_keys(self, name: str) -> list[tuple[str, ...]]:
        conn = self.conn()
        try:
            return catalog.pg_unique_keys(conn, name)
        finally:
            conn.rollback()

    # --- bookkeeping --------------------------------------------------------
    def schema_version(self) -> int:
        conn = self.conn()
        try:
            row = conn.execute(
                "SELECT to_regclass('cdc.schema_version') IS NOT NULL").fetchone()
            if not row or not row[0]:
                return 0
            got = conn.execute("SELECT max(version) FROM cdc.schema_version").fetchone()
            return int(got[0] or 0) if got else 0
        finally:
            conn.rollback()

    def migrate(self) -> int:
        """Bring the bookkeeping schema up to date; returns the version reached."""
        conn = self.conn()
        current = self.schema_version()
        bookkeeping.check_version(current, "postgresql")
        try:
            with conn.transaction():
                conn.execute("CREATE SCHEMA IF NOT EXISTS cdc")
                conn.execute("CREATE TABLE IF NOT EXISTS cdc.schema_version ("
                             "version integer PRIMARY KEY, applied_at timestamptz NOT NULL "
                             "DEFAULT now())")
                # Two setups racing must not both migrate.
                conn.execute("LOCK TABLE cdc.schema_version IN EXCLUSIVE MODE")
                row = conn.execute("SELECT coalesce(max(version), 0) FROM cdc.schema_version"
                                   ).fetchone()
                current = int(row[0]) if row else 0
                for version, path in bookkeeping.migrations("postgresql"):
                    if version <= current:
                        continue
                    for stmt in bookkeeping.split_statements(path.read_text()):
                        conn.execute(stmt.encode())
                    conn.execute("INSERT INTO cdc.schema_version (version) VALUES (%s)",
                                 (version,))
                    current = version
        except psycopg.Error as e:
            raise classify(e, self.url) from None
        return current

    def require_schema(self) -> None:
        v = self.schema_version()
        bookkeeping.check_version(v, "postgresql")
        if v < bookkeeping.latest_version("postgresql"):
            raise TerminalError(f"the target's cdc bookkeeping schema is at version {v}, "
                                f"this cdc needs {bookkeeping.latest_version('postgresql')}",
                                fix="run `cdc setup`")

    def load_offset(self) -> tuple[Position, datetime | None] | None:
        conn = self.conn()
        try:
            row = conn.execute("SELECT position, source_commit_time FROM cdc.offsets "
                               "WHERE pipeline = %s", (self.pipeline,)).fetchone()
        finally:
            conn.rollback()
        if row is None:
            return None
        return decode_position(row[0]), row[1]

    def save_offset(self, position: Position, commit_time: datetime | None = None,
                    *, only_if_missing: bool = False) -> None:
        conn = self.conn()
        with conn.transaction():
            self._write_offset(conn, position, commit_time, 0, 0, only_if_missing)

    def _write_offset(self, conn: psycopg.Connection[Any], position: Position,
                      commit_time: datetime | None, txs: int, rows: int,
                      only_if_missing: bool = False) -> None:
        if only_if_missing:
            conn.execute("INSERT INTO cdc.offsets (pipeline, position, source_commit_time) "
                         "VALUES (%s, %s, %s) ON CONFLICT (pipeline) DO NOTHING",
                         (self.pipeline, position.encode(), commit_time))
            return
        conn.execute(
            "INSERT INTO cdc.offsets AS o (pipeline, position, source_commit_time, applied_at,"
            " transactions, rows_applied) VALUES (%s, %s, %s, now(), %s, %s)"
            " ON CONFLICT (pipeline) DO UPDATE SET position = EXCLUDED.position,"
            " source_commit_time = coalesce(EXCLUDED.source_commit_time, o.source_commit_time),"
            " applied_at = now(), transactions = o.transactions + EXCLUDED.transactions,"
            " rows_applied = o.rows_applied + EXCLUDED.rows_applied",
            (self.pipeline, position.encode(), commit_time, txs, rows))

    def write_status(self, state: str, *, source_position: Position | None = None,
                     rows_per_second: float | None = None, message: str | None = None) -> None:
        conn = self.conn()
        with conn.transaction():
            conn.execute(
                "INSERT INTO cdc.status AS s (pipeline, state, source_position, source_seen_at,"
                " rows_per_second, message, pid, host, updated_at)"
                " VALUES (%s, %s, %s, CASE WHEN %s::text IS NULL THEN NULL ELSE now() END,"
                " %s, %s, %s, %s, now())"
                " ON CONFLICT (pipeline) DO UPDATE SET state = EXCLUDED.state,"
                " source_position = coalesce(EXCLUDED.source_position, s.source_position),"
                " source_seen_at = coalesce(EXCLUDED.source_seen_at, s.source_seen_at),"
                " rows_per_second = coalesce(EXCLUDED.rows_per_second, s.rows_per_second),"
                " message = EXCLUDED.message, pid = EXCLUDED.pid, host = EXCLUDED.host,"
                " updated_at = now()",
                (self.pipeline, state, source_position.encode() if source_position else None,
                 source_position.encode() if source_position else None, rows_per_second,
                 message, os.getpid(), socket.gethostname()))

    def read_status(self) -> dict[str, Any]:
        conn = self.conn()
        try:
            cur = conn.execute(
                "SELECT o.position, o.source_commit_time, o.applied_at, o.transactions,"
                " o.rows_applied, s.state, s.source_position, s.source_seen_at,"
                " s.rows_per_second, s.message, s.updated_at, s.pid,"
                " (SELECT count(*) FROM cdc.dead_letters d WHERE d.pipeline = %s),"
                " now()"
                " FROM (SELECT %s::text AS pipeline) p"
                " LEFT JOIN cdc.offsets o ON o.pipeline = p.pipeline"
                " LEFT JOIN cdc.status s ON s.pipeline = p.pipeline",
                (self.pipeline, self.pipeline))
            row = cur.fetchone()
            names = [d.name for d in cur.description or []]
        finally:
            conn.rollback()
        return dict(zip(["position", "source_commit_time", "applied_at", "transactions",
                         "rows_applied", "state", "source_position", "source_seen_at",
                         "rows_per_second", "message", "updated_at", "pid", "dead_letters",
                         "now"], row or [None] * len(names), strict=False))

    # --- applying -------------------------------------------------------------
    def _prepare(self, conn: psycopg.Connection[Any], stages: Sequence[StageTable],
                 rules: Sequence[CompiledRule]) -> None:
        for st in stages:
            if st.name not in self._prepared:
                conn.execute(st.create.encode())
                self._prepared.add(st.name)
        for r in rules:
            if r.result_name not in self._prepared:
                try:
                    conn.execute(r.create_result.encode())
                except psycopg.Error as e:
                    raise _rule_error(r, e) from None
                self._prepared.add(r.result_name)

    def check_rules(self, stages: Sequence[StageTable], rules: Sequence[CompiledRule]) -> None:
        """Run every statement against empty staging tables, then roll back.

        PostgreSQL resolves types when it plans a statement, so ``LPAD(integer,
        …)`` or ``text`` into a ``date`` column fails here and not at 3 a.m.
        """
        conn = self.conn()
        self._prepared.clear()
        try:
            for st in stages:
                conn.execute(st.create.encode())
            for r in rules:
                conn.execute("SAVEPOINT cdc_check")
                try:
                    conn.execute(r.create_result.encode())
                    for stmt in r.statements():
                        conn.execute(stmt.encode())
                except psycopg.Error as e:
                    conn.execute("ROLLBACK TO SAVEPOINT cdc_check")
                    raise _rule_error(r, e) from None
        finally:
            conn.rollback()
            # Temp tables created inside the rolled-back transaction are gone.
            self._prepared.clear()

    def apply(self, batch: Batch, stages: dict[str, StageTable],
              rules: dict[str, list[CompiledRule]],
              convs: dict[str, list[Converter | None]],
              record: Callable[[Any], None] | None = None) -> int:
        """Apply one batch and its offset in one transaction; returns staged rows.

        ``record``, when given, is called with the open connection inside the
        transaction *instead of* writing the streaming offset: the snapshot uses
        it to commit its chunk progress atomically with the chunk's rows.
        """
        conn = self.conn()
        staged = 0
        try:
            with conn.transaction():
                by_table = batch.changes_by_table()
                active = [st for name, st in stages.items() if name in by_table]
                self._prepare(conn, active,
                              [r for st in active for r in rules.get(st.source_name, [])])
                seq = 0
                for st in active:
                    changes = by_table[st.source_name]
                    rows = stage_rows(changes, st.columns, convs.get(st.source_name), seq)
                    seq += 2 * len(changes) + 2
                    staged += len(rows)
                    cols = sql.SQL(", ").join(
                        [sql.Identifier(c) for c in st.columns]
                        + [sql.Identifier("_cdc_seq"), sql.Identifier("_cdc_kind"),
                           sql.Identifier("_cdc_partial")])
                    with conn.cursor() as cur:
                        with cur.copy(sql.SQL("COPY {} ({}) FROM STDIN").format(
                                sql.Identifier(st.name), cols)) as cp:
                            for row in rows:
                                cp.write_row(row)
                        for r in rules.get(st.source_name, []):
                            for stmt in r.statements():
                                try:
                                    cur.execute(stmt.encode())
                                except psycopg.Error as e:
                                    if isinstance(e, psycopg.OperationalError | _TRANSIENT):
                                        raise
                                    raise _rule_error(r, e) from None
                if record is not None:
                    record(conn)
                else:
                    self._write_offset(conn, batch.position, batch.commit_time,
                                       batch.data_transactions,
                                       batch.rows)
        except psycopg.Error as e:
            self._after_error()
            raise classify(e, self.url) from None
        except BaseException:
            self._after_error()
            raise
        return staged

    def _after_error(self) -> None:
        if self._conn is not None and self._conn.closed:
            self._conn = None
            self._prepared.clear()


def _rule_error(rule: CompiledRule, e: psycopg.Error) -> RuleError:
    diag = e.diag
    text = (diag.message_primary or str(e)).strip()
    if diag.message_hint:
        text += f" (hint: {diag.message_hint})"
    return RuleError(f"on the target: {text}", file=rule.bound.rule.file,
                     line=rule.bound.rule.line)
