"""PostgreSQL target: COPY into staging, rule SQL, offset, one commit."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import socket
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar

import psycopg
from psycopg import errors as pgerr
from psycopg import sql

from cdc import bookkeeping, catalog
from cdc.batch import Batch, Converter, stage_rows
from cdc.catalog import TableSchema, schema_from_json, schema_to_json, split_name
from cdc.config import Config, DatabaseUrl
from cdc.deadletter import DeadLetter, change_to_json, pg_is_row_error
from cdc.errors import ConnectionLost, RuleError, TargetError, TerminalError, TransientError
from cdc.events import RowChange, TextRows
from cdc.positions import Position, decode_position
from cdc.rules.compile import KIND, PARTIAL, CompiledRule, StageTable
from cdc.targets import isolate, steps

log = logging.getLogger("cdc.target.postgres")
T = TypeVar("T")

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


def _guarded(fn: Callable[..., T]) -> Callable[..., T]:
    """Bookkeeping calls: a driver error becomes one of ours (a lost connection
    is transient) and a broken connection is dropped for the next call."""

    @functools.wraps(fn)
    def wrapper(self: PostgresTarget, *args: Any, **kwargs: Any) -> T:
        try:
            return fn(self, *args, **kwargs)
        except psycopg.Error as e:
            self._after_error()
            raise classify(e, self.url) from None

    return wrapper


class PostgresTarget:
    kind = "postgresql"

    def __init__(self, config: Config) -> None:
        self.config = config
        self.url = config.target
        self.pipeline = config.pipeline
        self._conn: psycopg.Connection[Any] | None = None
        self._prepared: set[str] = set()
        self.dead_letters: list[DeadLetter] = []
        self._upsert_chunks: dict[str, int] = {}
        self._fks: list[steps.ForeignKey] | None = None

    # --- connection and catalog ---------------------------------------------
    def conn(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = connect(self.url, timeout=self.config.connect_timeout)
            # Values are exchanged in UTC; wall-clock types are untouched by this.
            self._conn.execute("SET TimeZone = 'UTC'")
            self._conn.commit()
            self._prepared.clear()
            self._fks = None
        return self._conn

    def close(self) -> None:
        if self._conn is not None and not self._conn.closed:
            self._conn.close()
        self._conn = None

    @_guarded
    def table(self, name: str) -> TableSchema | None:
        conn = self.conn()
        try:
            return catalog.pg_table(conn, name)
        finally:
            conn.rollback()

    @_guarded
    def unique_keys(self, name: str) -> list[tuple[str, ...]]:
        conn = self.conn()
        try:
            return catalog.pg_unique_keys(conn, name)
        finally:
            conn.rollback()

    # --- bookkeeping --------------------------------------------------------
    @_guarded
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
                # CREATE SCHEMA IF NOT EXISTS needs CREATE on the database even when
                # the schema is there; a least-privilege user gets it made for them.
                row = conn.execute("SELECT to_regnamespace('cdc') IS NULL").fetchone()
                if row and row[0]:
                    conn.execute("CREATE SCHEMA cdc")
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

    @_guarded
    def require_schema(self) -> None:
        v = self.schema_version()
        bookkeeping.check_version(v, "postgresql")
        if v == 0:
            bookkeeping.require_setup(self, self.pipeline, self.config.path)
        if v < bookkeeping.latest_version("postgresql"):
            raise TerminalError(f"the target's cdc bookkeeping schema is at version {v}, "
                                f"this cdc needs {bookkeeping.latest_version('postgresql')}",
                                fix="run `cdc setup`")

    @_guarded
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

    @_guarded
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

    @_guarded
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

    @_guarded
    def claim_pipeline(self) -> None:
        """Say who runs the pipeline now (called once its lock is taken)."""
        conn = self.conn()
        with conn.transaction():
            conn.execute(
                "INSERT INTO cdc.status AS s (pipeline, state, pid, host, started_at, updated_at)"
                " VALUES (%s, 'starting', %s, %s, now(), now())"
                " ON CONFLICT (pipeline) DO UPDATE SET state = EXCLUDED.state,"
                " message = NULL, pid = EXCLUDED.pid, host = EXCLUDED.host,"
                " started_at = EXCLUDED.started_at, updated_at = EXCLUDED.updated_at",
                (self.pipeline, os.getpid(), socket.gethostname()))

    @_guarded
    def pipeline_holder(self) -> dict[str, Any]:
        """pid, host and started_at of the daemon that last claimed the pipeline."""
        conn = self.conn()
        try:
            row = conn.execute("SELECT pid, host, started_at FROM cdc.status"
                               " WHERE pipeline = %s", (self.pipeline,)).fetchone()
        finally:
            conn.rollback()
        return dict(zip(["pid", "host", "started_at"], row or (None, None, None), strict=True))

    @_guarded
    def read_status(self) -> dict[str, Any]:
        conn = self.conn()
        try:
            cur = conn.execute(
                "SELECT o.position, o.source_commit_time, o.applied_at, o.transactions,"
                " o.rows_applied, s.state, s.source_position, s.source_seen_at,"
                " s.rows_per_second, s.message, s.updated_at, s.pid, s.host,"
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
                         "rows_per_second", "message", "updated_at", "pid", "host", "dead_letters",
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

    @_guarded
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
                    for stmt in r.all_statements():
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
              record: Callable[[Any], None] | None = None,
              existing: dict[int, int] | None = None,
              park: Callable[[Any], None] | None = None,
              write_dead_letters: bool = True) -> int:
        """Apply one batch and its offset in one transaction; returns staged rows.

        ``park``, when given, is called with the open connection before the
        offset is written (cdc.pause parks a paused table's changes there).

        ``record``, when given, is called with the open connection inside the
        transaction *instead of* writing the streaming offset: the snapshot and
        dead-letter retries use it to commit their own bookkeeping atomically.
        ``existing`` maps ``id(change)`` to a dead-letter id being retried.
        ``write_dead_letters=False`` leaves the changes that failed in
        ``self.dead_letters`` only (`cdc preview` shows them and rolls back).

        A change that fails for a data reason (constraint, range, validation)
        is isolated by bisection under savepoints and written to the
        dead-letter table in this same transaction; the rest applies.
        """
        conn = self.conn()
        staged = 0
        self.dead_letters = []
        positions = _Positions(batch)
        try:
            with conn.transaction():
                if record is None:
                    # First, before touching data: a running snapshot chunk holds
                    # this row FOR SHARE while it reads and applies (cdc/snapshot.py).
                    conn.execute("SELECT 1 FROM cdc.offsets WHERE pipeline = %s FOR UPDATE",
                                 (self.pipeline,))
                # PostgreSQL -> PostgreSQL: rows that are still the walsender's
                # COPY text go to staging as they are (cdc.events.TextRows).
                text = batch.text_by_table() if not convs else None
                staged = steps.apply_batch(self, conn, batch, stages, rules, convs, positions,
                                           existing or {}, text)
                if self.dead_letters and write_dead_letters:
                    self._write_dead_letters(conn)
                if park is not None:
                    park(conn)  # a paused table's changes (cdc.pause)
                if record is not None:
                    record(conn)
                else:
                    self._write_offset(conn, batch.position, batch.commit_time,
                                       batch.data_transactions, batch.rows)
        except psycopg.Error as e:
            self._after_error()
            raise classify(e, self.url) from None
        except BaseException:
            self._after_error()
            raise
        return staged

    def _foreign_keys(self, conn: psycopg.Connection[Any]) -> list[steps.ForeignKey]:
        """(referencing, referenced) tables of every foreign key in the target
        database; read once per connection (cdc.targets.steps orders by them)."""
        if self._fks is None:
            self._fks = [((a, b), (c, d)) for a, b, c, d in conn.execute(
                "SELECT cn.nspname, c.relname, pn.nspname, p.relname FROM pg_constraint k"
                " JOIN pg_class c ON c.oid = k.conrelid"
                " JOIN pg_namespace cn ON cn.oid = c.relnamespace"
                " JOIN pg_class p ON p.oid = k.confrelid"
                " JOIN pg_namespace pn ON pn.oid = p.relnamespace"
                " WHERE k.contype = 'f'").fetchall()]
        return self._fks

    def _empty_target(self, conn: psycopg.Connection[Any], rule: CompiledRule) -> None:
        """A source TRUNCATE: DELETE, not TRUNCATE, so that other sessions are not
        locked out and a referencing foreign key is checked, not an error."""
        t = rule.bound.target
        try:
            conn.execute(sql.SQL("DELETE FROM {}").format(sql.Identifier(t.schema, t.name)))
        except psycopg.Error as e:
            if pg_is_row_error(e.sqlstate):
                raise _row_failure(rule, e) from None
            raise

    def _stage_text_and_run(self, conn: psycopg.Connection[Any], st: StageTable,
                            text: list[TextRows], table_rules: list[CompiledRule]) -> int:
        """COPY text lines into staging as they are, then the rules (for
        isolate.apply_text).  Lines end with _cdc_kind and _cdc_partial;
        _cdc_seq numbers them in COPY order (an identity column): source order."""
        copy = sql.SQL("COPY {} ({}) FROM STDIN (ENCODING 'UTF8')").format(
            sql.Identifier(st.name),
            sql.SQL(", ").join([sql.Identifier(c) for c in (*text[0].names, KIND, PARTIAL)]))
        with conn.cursor() as cur:
            self._clear_staging(cur, st, table_rules)
            try:
                with cur.copy(copy) as cp:
                    for t in text:
                        cp.write(t.data)
            except psycopg.Error as e:
                if pg_is_row_error(e.sqlstate) and table_rules:
                    raise _row_failure(table_rules[0], e) from None
                raise
            self._run_rules(cur, table_rules, new_only=all(t.inserts_only for t in text))
        return sum(t.lines for t in text)

    def _savepoint(self, conn: psycopg.Connection[Any]) -> Any:
        return conn.transaction()

    @staticmethod
    def _clear_staging(cur: psycopg.Cursor[Any], st: StageTable,
                       table_rules: list[CompiledRule]) -> None:
        # Empty unless an earlier half of a bisection left rows here (its
        # savepoint was released); a DELETE of an empty temp table is cheap.
        cur.execute(sql.SQL("DELETE FROM {}").format(sql.Identifier(st.name)))
        for r in table_rules:
            cur.execute(sql.SQL("DELETE FROM {}").format(sql.Identifier(r.result_name)))

    @staticmethod
    def _run_rules(cur: psycopg.Cursor[Any], table_rules: list[CompiledRule], *,
                   new_only: bool) -> None:
        """Each rule's statements over the staged rows.  With new images only
        (inserts), one statement does it all, as for a snapshot chunk: no result
        table to fill and read back, nothing to delete."""
        for r in table_rules:
            for stmt in [r.upsert_new_only] if new_only else r.statements():
                try:
                    cur.execute(stmt.encode())
                except psycopg.Error as e:
                    if isinstance(e, (psycopg.OperationalError, *_TRANSIENT)):
                        raise
                    if pg_is_row_error(e.sqlstate):
                        raise _row_failure(r, e) from None
                    raise _rule_error(r, e) from None

    def _stage_and_run(self, conn: psycopg.Connection[Any], st: StageTable,
                       changes: list[RowChange], table_rules: list[CompiledRule],
                       convs: list[Converter | None] | None) -> int:
        with conn.cursor() as cur:
            self._clear_staging(cur, st, table_rules)
            rows = stage_rows(changes, st.columns, convs)
            try:
                self._copy(cur, st, rows)
            except psycopg.Error as e:
                # A value the staging column cannot hold is the row's problem.
                if pg_is_row_error(e.sqlstate) and table_rules:
                    raise _row_failure(table_rules[0], e) from None
                raise
            self._run_rules(cur, table_rules,
                            new_only=all(ch.op == "I" for ch in changes))
        return len(rows)

    def apply_copy_text(self, conn: psycopg.Connection[Any], st: StageTable,
                        table_rules: list[CompiledRule], data: bytes) -> bool:
        """Stage COPY text the source rendered (cdc.sources.copytext; the
        source columns only, each line a new image) and run each rule's
        one-statement upsert for new images, under a savepoint.  False when a
        row failed for a data reason:
        everything is rolled back and the caller re-applies the rows as values,
        which isolates the bad ones into the dead-letter table."""
        try:
            self._prepare(conn, [st], table_rules)
            with conn.transaction(), conn.cursor() as cur:
                with cur.copy(self._copy_sql(st, bookkeeping=False)) as cp:
                    cp.write(data)
                for r in table_rules:
                    try:
                        self._insert_or_upsert(conn, cur, r)
                    except psycopg.Error as e:
                        if pg_is_row_error(e.sqlstate) or isinstance(
                                e, (psycopg.OperationalError, *_TRANSIENT)):
                            raise
                        raise _rule_error(r, e) from None
        except psycopg.Error as e:
            if pg_is_row_error(e.sqlstate) and not conn.broken:
                return False
            self._after_error()
            raise classify(e, self.url) from None
        return True

    def _insert_or_upsert(self, conn: psycopg.Connection[Any], cur: psycopg.Cursor[Any],
                          r: CompiledRule) -> None:
        """A plain INSERT while the target rows do not exist yet (a first
        bootstrap), the upsert once one does; both leave the same rows."""
        if self._upsert_chunks.get(r.name, 0) > 0:
            self._upsert_chunks[r.name] -= 1
        else:
            try:
                with conn.transaction():
                    cur.execute(r.insert_new_only.encode())
                return
            except pgerr.UniqueViolation:
                # Rows exist here (a resync, or the stream got there first):
                # upsert the next chunks directly, then try inserting again.
                self._upsert_chunks[r.name] = 16
        cur.execute(r.upsert_new_only.encode())

    def prepare_tables(self, conn: Any, stages: Sequence[StageTable],
                       rules: Sequence[CompiledRule]) -> None:
        self._prepare(conn, stages, rules)

    def stage_only(self, conn: Any, st: StageTable, changes: list[RowChange],
                   convs: list[Converter | None] | None) -> None:
        """Replace the staging table's rows with these changes (for `cdc verify`)."""
        with conn.cursor() as cur:
            cur.execute(sql.SQL("DELETE FROM {}").format(sql.Identifier(st.name)))
            self._copy(cur, st, stage_rows(changes, st.columns, convs))

    @staticmethod
    def _copy_sql(st: StageTable, *, bookkeeping: bool = True) -> sql.Composed:
        names = [*st.columns, "_cdc_seq", "_cdc_kind", "_cdc_partial"] if bookkeeping \
            else st.columns  # the staging table's defaults fill them in
        cols = sql.SQL(", ").join([sql.Identifier(c) for c in names])
        return sql.SQL("COPY {} ({}) FROM STDIN").format(sql.Identifier(st.name), cols)

    def _copy(self, cur: psycopg.Cursor[Any], st: StageTable, rows: list[tuple[Any, ...]]) -> None:
        with cur.copy(self._copy_sql(st)) as cp:
            for row in rows:
                cp.write_row(row)

    def _validation_failures(self, conn: psycopg.Connection[Any], st: StageTable,
                             changes: list[RowChange], table_rules: list[CompiledRule],
                             convs: list[Converter | None] | None
                             ) -> dict[int, tuple[str, str]]:
        """Batch positions of changes whose new image fails a rule's validation
        condition -> (rule, condition).  Runs in a savepoint rolled back after."""
        failed: dict[int, tuple[str, str]] = {}
        with conn.transaction(force_rollback=True):
            with conn.cursor() as cur:
                cur.execute(sql.SQL("DELETE FROM {}").format(sql.Identifier(st.name)))
                self._copy(cur, st, stage_rows(changes, st.columns, convs))
                for r in table_rules:
                    for cond, query in r.validations:
                        try:
                            for (seq,) in cur.execute(query.encode()).fetchall():
                                failed.setdefault(isolate.seq_to_index(seq), (r.name, cond))
                        except psycopg.Error as e:
                            if isinstance(e, (psycopg.OperationalError, *_TRANSIENT)):
                                raise
                            raise _rule_error(r, e) from None
        return failed

    def _write_dead_letters(self, conn: psycopg.Connection[Any]) -> None:
        for dl in self.dead_letters:
            ch = dl.change
            if dl.existing_id is not None:
                conn.execute(
                    "UPDATE cdc.dead_letters SET attempts = attempts + 1, error = %s,"
                    " last_failed_at = now(), next_retry_at = now() + make_interval("
                    "secs => %s * power(2, least(attempts, 10))) WHERE id = %s",
                    (dl.error, self.config.dlq_retry_seconds, dl.existing_id))
                continue
            conn.execute(
                "INSERT INTO cdc.dead_letters (pipeline, rule, source_table, operation,"
                " position, row_data, error, next_retry_at) VALUES (%s, %s, %s, %s, %s,"
                " %s::jsonb, %s, now() + make_interval(secs => %s))",
                (self.pipeline, dl.rule, ch.table, ch.op, dl.position, change_to_json(ch),
                 dl.error, self.config.dlq_retry_seconds))
            log.warning("dead letter: rule %s, %s %s at %s: %s", dl.rule, ch.op, ch.table,
                        dl.position, dl.error)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Any]:
        """A transaction (a savepoint when nested) on the target connection."""
        conn = self.conn()
        with conn.transaction():
            yield conn

    @_guarded
    def forget_pipeline(self) -> None:
        """Delete this pipeline's bookkeeping rows (position, status, snapshot, dead letters,
        paused tables and their parked changes)."""
        conn = self.conn()
        with conn.transaction():
            for t in ("offsets", "status", "snapshot_tables", "dead_letters", "paused",
                      "parked_changes", "source_schemas"):
                conn.execute(sql.SQL("DELETE FROM cdc.{} WHERE pipeline = %s").format(
                    sql.Identifier(t)), (self.pipeline,))

    # --- paused source tables (cdc.pause) -------------------------------------
    @_guarded
    def paused_tables(self) -> list[dict[str, Any]]:
        """This pipeline's paused source tables, with how many changes are parked."""
        conn = self.conn()
        try:
            cur = conn.execute(
                "SELECT p.source_table, p.rules, p.reason, p.since, p.since_position,"
                " count(c.seq), coalesce(max(c.seq), 0)"
                " FROM cdc.paused p LEFT JOIN cdc.parked_changes c"
                " ON c.pipeline = p.pipeline AND c.source_table = p.source_table"
                " WHERE p.pipeline = %s GROUP BY 1, 2, 3, 4, 5 ORDER BY 1", (self.pipeline,))
            rows = cur.fetchall()
        finally:
            conn.rollback()
        return [dict(zip(("table", "rules", "reason", "since", "since_position", "parked",
                          "last_seq"), r, strict=True)) for r in rows]

    def park(self, conn: psycopg.Connection[Any], paused: Sequence[tuple[str, str, str, str]],
             rows: Sequence[tuple[str, int, str, str, str]]) -> None:
        """Inside the batch's transaction: new paused tables (table, rules,
        reason, position) and parked changes (table, seq, position, op, data)."""
        for table, rules, reason, position in paused:
            conn.execute("INSERT INTO cdc.paused (pipeline, source_table, rules, reason,"
                         " since_position) VALUES (%s, %s, %s, %s, %s)"
                         " ON CONFLICT (pipeline, source_table) DO NOTHING",
                         (self.pipeline, table, rules, reason, position))
        if rows:
            with conn.cursor() as cur, cur.copy(
                    "COPY cdc.parked_changes (pipeline, source_table, seq, position, operation,"
                    " row_data) FROM STDIN") as cp:
                for r in rows:
                    cp.write_row((self.pipeline, *r))

    @_guarded
    def parked_changes(self, table: str, after_seq: int, limit: int
                       ) -> list[tuple[int, str, str, str]]:
        """(seq, position, op, data) of a paused table, in source order."""
        conn = self.conn()
        try:
            rows = conn.execute(
                "SELECT seq, position, operation, row_data FROM cdc.parked_changes"
                " WHERE pipeline = %s AND source_table = %s AND seq > %s ORDER BY seq LIMIT %s",
                (self.pipeline, table, after_seq, limit)).fetchall()
        finally:
            conn.rollback()
        return [(int(a), b, c, d) for a, b, c, d in rows]

    def unpark(self, conn: psycopg.Connection[Any], table: str, upto_seq: int,
               resume: bool) -> None:
        """Inside the transaction that applied them: forget parked changes up to
        ``upto_seq``; ``resume`` also ends the pause."""
        conn.execute("DELETE FROM cdc.parked_changes WHERE pipeline = %s AND source_table = %s"
                     " AND seq <= %s", (self.pipeline, table, upto_seq))
        if resume:
            conn.execute("DELETE FROM cdc.paused WHERE pipeline = %s AND source_table = %s",
                         (self.pipeline, table))

    @_guarded
    def set_pause_reason(self, table: str, rules: str, reason: str) -> None:
        conn = self.conn()
        with conn.transaction():
            conn.execute("UPDATE cdc.paused SET rules = %s, reason = %s WHERE pipeline = %s"
                         " AND source_table = %s", (rules, reason, self.pipeline, table))

    # --- the source shapes the rules were bound against (cdc.pause) -----------
    @_guarded
    def save_source_schemas(self, schemas: Mapping[str, TableSchema]) -> None:
        conn = self.conn()
        with conn.transaction():
            for name, t in schemas.items():
                conn.execute("INSERT INTO cdc.source_schemas (pipeline, source_table,"
                             " table_schema) VALUES (%s, %s, %s) ON CONFLICT (pipeline,"
                             " source_table) DO UPDATE SET table_schema = EXCLUDED.table_schema,"
                             " saved_at = now()", (self.pipeline, name, schema_to_json(t)))

    @_guarded
    def source_schemas(self) -> dict[str, tuple[TableSchema, datetime]]:
        conn = self.conn()
        try:
            rows = conn.execute("SELECT source_table, table_schema, saved_at FROM"
                                " cdc.source_schemas WHERE pipeline = %s",
                                (self.pipeline,)).fetchall()
        finally:
            conn.rollback()
        return {name: (schema_from_json(text), at) for name, text, at in rows}

    # --- snapshot progress ------------------------------------------------------
    def lock_offset_shared(self, conn: Any) -> None:
        conn.execute("SELECT 1 FROM cdc.offsets WHERE pipeline = %s FOR SHARE", (self.pipeline,))

    @_guarded
    def snapshot_turn(self, conn: Any, table: str, n: int) -> None:
        """Take chunk ``n``'s turn lock until this transaction ends.

        A chunk takes its own turn when it opens and its predecessor's before
        it records progress, which waits until that one has committed or
        rolled back: chunks applied side by side record their progress in key
        order.  A transaction-level advisory lock, so a crash releases it, and
        if two chunks also wait on each other's rows (rows of both mapped to
        one target row) the server detects the deadlock."""
        conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", _turn_key(self.pipeline, table, n))

    def snapshot_chunk_begin(self, conn: Any) -> None:
        """A chunk's commit need not wait for its WAL flush: a crash loses at
        most chunks whose progress rows are lost with them, and the rerun
        copies them again (docs/snapshot.md, Resume)."""
        conn.execute("SET LOCAL synchronous_commit = off")

    @_guarded
    def snapshot_state(self, table: str) -> dict[str, Any] | None:
        conn = self.conn()
        try:
            cur = conn.execute(
                "SELECT state, where_clause, last_key, rows_done, rows_estimated, chunks_done"
                " FROM cdc.snapshot_tables WHERE pipeline = %s AND table_name = %s",
                (self.pipeline, table))
            row = cur.fetchone()
            names = [d.name for d in cur.description or []]
        finally:
            conn.rollback()
        return dict(zip(names, row, strict=True)) if row else None

    @_guarded
    def snapshot_begin(self, table: str, where: str | None, estimated: int | None,
                       truncate: list[str]) -> None:
        conn = self.conn()
        with conn.transaction():
            for t in truncate:
                conn.execute(sql.SQL("DELETE FROM {}").format(
                    sql.Identifier(*split_name(t, "public"))))
            conn.execute(
                "INSERT INTO cdc.snapshot_tables AS s (pipeline, table_name, state, where_clause,"
                " last_key, rows_done, rows_estimated, chunks_done, started_at, finished_at)"
                " VALUES (%s, %s, 'copying', %s, NULL, 0, %s, 0, now(), NULL)"
                " ON CONFLICT (pipeline, table_name) DO UPDATE SET state = 'copying',"
                " where_clause = EXCLUDED.where_clause, last_key = NULL, rows_done = 0,"
                " rows_estimated = EXCLUDED.rows_estimated, chunks_done = 0,"
                " started_at = now(), finished_at = NULL",
                (self.pipeline, table, where, estimated))
            conn.execute(
                "INSERT INTO cdc.status AS s (pipeline, state, updated_at)"
                " VALUES (%s, 'snapshotting', now()) ON CONFLICT (pipeline) DO UPDATE SET"
                " state = CASE WHEN s.state = 'streaming' AND s.updated_at > now() - interval"
                " '60 seconds' THEN s.state ELSE 'snapshotting' END, updated_at = now()",
                (self.pipeline,))

    @_guarded
    def snapshot_ended(self) -> None:
        conn = self.conn()
        with conn.transaction():
            conn.execute("UPDATE cdc.status SET state = 'stopped', updated_at = now()"
                         " WHERE pipeline = %s AND state = 'snapshotting'", (self.pipeline,))

    def snapshot_chunk(self, conn: Any, table: str, last_key: str | None,
                       rows: int) -> None:
        conn.execute("UPDATE cdc.snapshot_tables SET last_key = %s, rows_done = rows_done + %s,"
                     " chunks_done = chunks_done + 1 WHERE pipeline = %s AND table_name = %s",
                     (last_key, rows, self.pipeline, table))

    def snapshot_finish(self, conn: Any, table: str) -> None:
        conn.execute("UPDATE cdc.snapshot_tables SET state = 'done', finished_at = now()"
                     " WHERE pipeline = %s AND table_name = %s", (self.pipeline, table))

    # --- dead-letter table ----------------------------------------------------
    @_guarded
    def dead_letter_rows(self, ids: list[int] | None = None, *, due_only: bool = False,
                         max_attempts: int | None = None) -> list[dict[str, Any]]:
        conn = self.conn()
        where = [sql.SQL("pipeline = %s")]
        params: list[Any] = [self.pipeline]
        if ids:
            where.append(sql.SQL("id = ANY(%s)"))
            params.append(ids)
        if due_only:
            where.append(sql.SQL("next_retry_at <= now()"))
        if max_attempts is not None:
            where.append(sql.SQL("attempts < %s"))
            params.append(max_attempts)
        try:
            cur = conn.execute(
                sql.SQL("SELECT id, rule, source_table, operation, position, row_data, error,"
                        " attempts, first_failed_at, last_failed_at, next_retry_at"
                        " FROM cdc.dead_letters WHERE {} ORDER BY id").format(
                    sql.SQL(" AND ").join(where)), params)
            names = [d.name for d in cur.description or []]
            return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
        finally:
            conn.rollback()

    @_guarded
    def drop_dead_letters(self, ids: list[int] | None) -> int:
        conn = self.conn()
        with conn.transaction():
            if ids is None:
                cur = conn.execute("DELETE FROM cdc.dead_letters WHERE pipeline = %s",
                                   (self.pipeline,))
            else:
                cur = conn.execute("DELETE FROM cdc.dead_letters WHERE pipeline = %s AND"
                                   " id = ANY(%s)", (self.pipeline, ids))
            return cur.rowcount

    def delete_dead_letters_in(self, conn: Any, ids: list[int]) -> None:
        conn.execute("DELETE FROM cdc.dead_letters WHERE pipeline = %s AND id = ANY(%s)",
                     (self.pipeline, ids))

    def _after_error(self) -> None:
        if self._conn is not None and (self._conn.closed or self._conn.broken):
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None
            self._prepared.clear()


def _turn_key(pipeline: str, table: str, n: int) -> tuple[int, int]:
    """Two int4 advisory-lock keys for a snapshot chunk's turn."""
    space = zlib.crc32(f"cdc snapshot {pipeline} {table}".encode()) - 2**31
    return space, n % 2**31


class _Positions:
    """``id(change) -> encoded position``, built only if a dead letter needs it."""

    def __init__(self, batch: Batch) -> None:
        self.batch = batch
        self.map: dict[int, str] | None = None

    def get(self, key: int) -> str | None:
        if self.map is None:
            self.map = {id(ch): tx.position.encode() for tx in self.batch.transactions
                        for ch in tx.materialize()}
        return self.map.get(key)


def _row_failure(rule: CompiledRule, e: psycopg.Error) -> isolate.RowFailure:
    return isolate.RowFailure(rule, _pg_text(e), fk=e.sqlstate == "23503")


def _pg_text(e: psycopg.Error) -> str:
    d = e.diag
    text = (d.message_primary or str(e)).strip()
    if d.message_detail:
        text += f" ({d.message_detail.strip()})"
    if d.constraint_name:
        text += f" [constraint {d.constraint_name}]"
    return text


def _rule_error(rule: CompiledRule, e: psycopg.Error) -> Exception:
    """The rule's fault, unless the connection went: a connection lost while a
    rule's statement ran is the driver error as it is, for the caller's
    classify (transient: reconnect and replay), never a terminal rule error."""
    if isinstance(e, (psycopg.OperationalError, *_TRANSIENT)):
        return e
    diag = e.diag
    text = (diag.message_primary or str(e)).strip()
    if diag.message_hint:
        text += f" (hint: {diag.message_hint})"
    return RuleError(f"on the target: {text}", file=rule.bound.rule.file,
                     line=rule.bound.rule.line)
