"""MySQL/MariaDB target: multi-row INSERT into staging, rule SQL, offset, one commit.

Mirrors ``cdc.targets.postgres`` method for method.  Differences that matter:
temporary-table DDL does not roll back and TRUNCATE commits implicitly, so
staging and result tables are emptied with DELETE at the start of each use;
the session runs with ``time_zone = '+00:00'`` (TIMESTAMP columns take UTC
values) and a strict ``sql_mode`` (a bad value is an error and a dead letter,
never a silent truncation).  MySQL 8 notes: ``VALUES(col)`` in ``ON DUPLICATE
KEY UPDATE`` is deprecated there (still accepted) but is the only spelling
MariaDB parses; ``SHOW MASTER STATUS`` is ``SHOW BINARY LOG STATUS`` from 8.4.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import json
import logging
import math
import os
import socket
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import pymysql

from cdc import bookkeeping, catalog
from cdc.batch import Batch, Converter, stage_rows
from cdc.catalog import TableSchema, schema_from_json, schema_to_json
from cdc.config import Config
from cdc.deadletter import MYSQL_ROW_ERRORS, DeadLetter, change_to_json
from cdc.errors import ConnectionLost, RuleError, TargetError, TerminalError, TransientError
from cdc.events import RowChange, TextRows, is_zero_date_text
from cdc.positions import Position, decode_position
from cdc.rules.compile import KIND, PARTIAL, SEQ, CompiledRule, StageTable, ident, table_sql
from cdc.sources.mysql import classify as classify_connect
from cdc.sources.mysql import pymysql_connect
from cdc.sources.pgjson import JsonText
from cdc.targets import isolate, steps

log = logging.getLogger("cdc.target.mysql")

_TRANSIENT_CODES = {1205, 1213, 1040, 1053, 2006, 2013, 2003, 2055, 1927}
SQL_MODE = ("STRICT_ALL_TABLES,NO_ZERO_IN_DATE,NO_ZERO_DATE,ERROR_FOR_DIVISION_BY_ZERO,"
            "NO_ENGINE_SUBSTITUTION")


def _code(e: BaseException) -> int:
    return e.args[0] if e.args and isinstance(e.args[0], int) else 0


def _client_error(code: int) -> bool:
    """The client library's own errors (CR_*: lost connection, server gone).
    Server errors are below 2000 and, on MySQL 8 and MariaDB, from 3000 up:
    MariaDB's failed CHECK constraint is 4025, a row's problem."""
    return 2000 <= code < 3000


def classify(e: BaseException, config: Config) -> Exception:
    url = config.target
    if isinstance(e, pymysql.err.InterfaceError | OSError):
        return ConnectionLost(f"MySQL target {url.host}:{url.port}: connection lost")
    code = _code(e)
    where = f"MySQL target {url.host}:{url.port}"
    msg = e.args[1] if len(e.args) > 1 else str(e)
    if code in (1045, 1044, 1698):
        return TerminalError(f"{where}: access denied for user {url.user!r}: {msg}",
                             fix="check the user and password in the config URL")
    if code in (1142, 1143, 1227):
        return TerminalError(f"{where}: {msg}",
                             fix="run `cdc doctor --print-grants` for the GRANTs it needs")
    if code in _TRANSIENT_CODES or isinstance(e, pymysql.err.OperationalError) and \
            _client_error(code):
        return ConnectionLost(f"{where}: {msg}") if _client_error(code) else TransientError(
            f"{where}: {msg}")
    return TargetError(f"{where}: {msg}")


def _json_text(v: Any) -> Any:
    """JSON text for a ``json`` staging column.  A str is JSON text already
    (MySQL's JSON as SELECT and cdc.sources.mysql give it, PostgreSQL's as
    cdc.sources.pgjson loads it); Python values (PostgreSQL arrays) are
    written as JSON, JSON text inside them as the value it is."""
    if isinstance(v, str):
        return v
    return _json_dump(v)


def _json_dump(v: Any) -> str:
    if isinstance(v, JsonText):
        return str(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_json_dump(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(str(k), ensure_ascii=False)}: {_json_dump(x)}"
                               for k, x in v.items()) + "}"
    if v is None or isinstance(v, bool | int | float | str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, Decimal) and v.is_finite():
        return str(v)
    return json.dumps(str(v), ensure_ascii=False)


def _naive_utc(v: Any) -> Any:
    if isinstance(v, datetime) and v.tzinfo is not None:
        return v.astimezone(UTC).replace(tzinfo=None)
    return v


def _plain(v: Any) -> Any:
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, uuid.UUID | ipaddress.IPv4Address | ipaddress.IPv6Address |
                  ipaddress.IPv4Network | ipaddress.IPv6Network | ipaddress.IPv4Interface |
                  ipaddress.IPv6Interface):
        return str(v)
    if isinstance(v, set | frozenset):
        return ",".join(sorted(v))
    if isinstance(v, dict | list):
        return json.dumps(v, ensure_ascii=False, default=str)
    if isinstance(v, datetime):
        return _naive_utc(v)
    if isinstance(v, time) and v.tzinfo is not None:
        # timetz stages as text; pymysql would drop the offset of a time value.
        return v.isoformat()
    if isinstance(v, Decimal) and not v.is_finite():
        return str(v)  # a text staging column keeps NaN; a numeric one rejects it loudly
    if isinstance(v, float) and not math.isfinite(v):
        # MySQL has no NaN or infinity: as text, strict mode rejects the row
        # (a dead letter with the reason) instead of storing something else.
        return str(v)
    return v


def _interval_text(v: Any) -> Any:
    if isinstance(v, timedelta):
        return str(v)
    return _plain(v)


def _finite(v: Any) -> Any:
    """PostgreSQL numbers: NaN and infinities as text, as _plain does (a
    numeric column rejects them loudly; a text one keeps them)."""
    t = type(v)
    if (t is Decimal and not v.is_finite()) or (t is float and not math.isfinite(v)):
        return str(v)
    return v


def _bits(v: Any) -> Any:
    # The binlog decoder gives BIT as a string of 0s and 1s; a SELECT gives bytes.
    if isinstance(v, str):
        return int(v, 2)
    if isinstance(v, bytes):
        return int.from_bytes(v, "big")
    return v


def _zero_to_null(v: Any) -> Any:
    return None if is_zero_date_text(v) else v


# Source types whose Python values pymysql already writes correctly: no
# per-value call for them (converters run once per value of every row).
_AS_IS = {
    "postgresql": {"int2", "int4", "int8", "oid", "text", "varchar", "bpchar", "date",
                   "timestamp"},
    "mysql": {"tinyint", "smallint", "mediumint", "int", "integer", "bigint", "decimal",
              "numeric", "float", "double", "real", "char", "varchar", "tinytext", "text",
              "mediumtext", "longtext", "enum", "binary", "varbinary", "tinyblob", "blob",
              "mediumblob", "longblob", "year", "time"},
}


def converters(stage: StageTable, source_kind: str = "mysql") -> list[Converter | None]:
    out: list[Converter | None] = []
    as_is = _AS_IS.get(source_kind, set())
    for col, t in zip(stage.source.columns, stage.types, strict=True):
        if col.base_type in as_is and t != "json":
            out.append(None)
        elif source_kind == "postgresql" and col.base_type in ("numeric", "float4", "float8") \
                and t != "json":
            out.append(_finite)
        # PostgreSQL's bit(n) arrives as its text ('1010') and stays text.
        elif col.base_type == "bit" and source_kind == "mysql":
            out.append(_bits)
        elif col.base_type in ("date", "datetime", "timestamp") and source_kind == "mysql":
            # types.zero_dates: null holds for every target; a SELECT returns
            # zero dates as text, the binlog decoder as None.
            out.append(_zero_to_null)
        elif t == "json":
            out.append(_json_text)
        elif t.startswith("datetime"):
            out.append(_naive_utc)
        elif t.startswith("varchar(64)"):
            out.append(_interval_text)
        else:
            out.append(_plain)
    return out


class _Tx:
    """Transactions on a pymysql connection, nesting as savepoints."""

    def __init__(self, conn: pymysql.connections.Connection) -> None:
        self.conn = conn
        self.depth = 0

    @contextlib.contextmanager
    def __call__(self, force_rollback: bool = False) -> Iterator[_Tx]:
        self.depth += 1
        name = f"cdc_sp_{self.depth}"
        if self.depth == 1:
            self.conn.begin()
        else:
            self.execute(f"SAVEPOINT {name}")
        try:
            yield self
        except BaseException:
            try:
                if self.depth == 1:
                    self.conn.rollback()
                else:
                    self.execute(f"ROLLBACK TO SAVEPOINT {name}")
            except pymysql.err.Error:
                pass
            raise
        else:
            if force_rollback:
                if self.depth == 1:
                    self.conn.rollback()
                else:
                    self.execute(f"ROLLBACK TO SAVEPOINT {name}")
            elif self.depth == 1:
                self.conn.commit()
            else:
                self.execute(f"RELEASE SAVEPOINT {name}")
        finally:
            self.depth -= 1

    def execute(self, query: str | bytes, params: Any = None) -> Any:
        cur = self.conn.cursor()
        # pymysql sends bytes as they are (it encodes only str); its stubs say str.
        cur.execute(query, params)  # type: ignore[arg-type]
        return cur


class MySQLTarget:
    kind = "mysql"

    def __init__(self, config: Config) -> None:
        self.config = config
        self.url = config.target
        self.pipeline = config.pipeline
        self._conn: pymysql.connections.Connection | None = None
        self._tx: _Tx | None = None
        self._prepared: set[str] = set()
        self._mariadb = False
        self.dead_letters: list[DeadLetter] = []
        self._fks: list[steps.ForeignKey] | None = None

    # --- connection and catalog ---------------------------------------------
    def conn(self) -> pymysql.connections.Connection:
        if self._conn is None or not self._conn.open:
            u = self.url
            try:
                self._conn = pymysql_connect(
                    host=u.host, port=u.port, user=u.user, password=u.password,
                    database=u.database, charset="utf8mb4", autocommit=False,
                    connect_timeout=int(self.config.connect_timeout),
                    init_command=(f"SET time_zone = '+00:00', sql_mode = '{SQL_MODE}',"
                                  " SESSION tx_isolation = 'READ-COMMITTED'"))
            except pymysql.err.MySQLError as e:
                raise classify_connect(e, u) from None
            self._tx = _Tx(self._conn)
            self._prepared.clear()
            self._fks = None
            self._mariadb = "mariadb" in str(self._conn.get_server_info()).lower()
        return self._conn

    def tx(self) -> _Tx:
        self.conn()
        assert self._tx is not None
        return self._tx

    def close(self) -> None:
        if self._conn is not None and self._conn.open:
            self._conn.close()
        self._conn = None

    def _query(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        conn = self.conn()
        try:
            with conn.cursor() as cur:
                cur.execute(query, params)
                rows = list(cur.fetchall())
            conn.rollback()
            return rows
        except pymysql.err.MySQLError as e:
            self._after_error()
            raise classify(e, self.config) from None

    def table(self, name: str) -> TableSchema | None:
        conn = self.conn()
        try:
            shape = catalog.mysql_table(conn, self.url.database, name)
            if shape is None:
                return None
            uniques = catalog.mysql_unique_keys(conn, self.url.database, name)
            return dataclasses.replace(shape, unique_keys=tuple(uniques))
        finally:
            conn.rollback()

    def unique_keys(self, name: str) -> list[tuple[str, ...]]:
        conn = self.conn()
        try:
            return catalog.mysql_unique_keys(conn, self.url.database, name)
        finally:
            conn.rollback()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Any]:
        tx = self.tx()
        try:
            with tx():
                yield tx
        except pymysql.err.MySQLError as e:
            self._after_error()
            raise classify(e, self.config) from None

    # --- bookkeeping --------------------------------------------------------
    def schema_version(self) -> int:
        rows = self._query("SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA ="
                           " DATABASE() AND TABLE_NAME = 'cdc_schema_version'")
        if not rows or not rows[0][0]:
            return 0
        got = self._query("SELECT MAX(version) FROM cdc_schema_version")
        return int(got[0][0] or 0) if got else 0

    def migrate(self) -> int:
        current = self.schema_version()
        bookkeeping.check_version(current, "mysql")
        tx = self.tx()
        try:
            tx.execute("SELECT GET_LOCK('cdc_migrate', 30)")
            try:
                tx.execute("CREATE TABLE IF NOT EXISTS cdc_schema_version (version int PRIMARY KEY,"
                           " applied_at datetime(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6))"
                           " ENGINE=InnoDB")
                current = self.schema_version()
                for version, path in bookkeeping.migrations("mysql"):
                    if version <= current:
                        continue
                    for stmt in bookkeeping.split_statements(path.read_text()):
                        tx.execute(stmt)
                    tx.execute("INSERT INTO cdc_schema_version (version) VALUES (%s)", (version,))
                    self.conn().commit()
                    current = version
            finally:
                tx.execute("SELECT RELEASE_LOCK('cdc_migrate')")
                self.conn().commit()
        except pymysql.err.MySQLError as e:
            self._after_error()
            raise classify(e, self.config) from None
        return current

    def require_schema(self) -> None:
        v = self.schema_version()
        bookkeeping.check_version(v, "mysql")
        if v == 0:
            bookkeeping.require_setup(self, self.pipeline, self.config.path)
        if v < bookkeeping.latest_version("mysql"):
            raise TerminalError(f"the target's cdc bookkeeping schema is at version {v}, "
                                f"this cdc needs {bookkeeping.latest_version('mysql')}",
                                fix="run `cdc setup`")

    def load_offset(self) -> tuple[Position, datetime | None] | None:
        rows = self._query("SELECT position, source_commit_time FROM cdc_offsets"
                           " WHERE pipeline = %s", (self.pipeline,))
        if not rows:
            return None
        return decode_position(rows[0][0]), _aware(rows[0][1])

    def save_offset(self, position: Position, commit_time: datetime | None = None,
                    *, only_if_missing: bool = False) -> None:
        with self.transaction() as tx:
            self._write_offset(tx, position, commit_time, 0, 0, only_if_missing)

    def _write_offset(self, tx: _Tx, position: Position, commit_time: datetime | None,
                      txs: int, rows: int, only_if_missing: bool = False) -> None:
        ct = _naive_utc(commit_time)
        if only_if_missing:
            tx.execute("INSERT IGNORE INTO cdc_offsets (pipeline, position, source_commit_time)"
                       " VALUES (%s, %s, %s)", (self.pipeline, position.encode(), ct))
            return
        tx.execute(
            "INSERT INTO cdc_offsets (pipeline, position, source_commit_time, applied_at,"
            " transactions, rows_applied) VALUES (%s, %s, %s, UTC_TIMESTAMP(6), %s, %s)"
            " ON DUPLICATE KEY UPDATE position = VALUES(position),"
            " source_commit_time = COALESCE(VALUES(source_commit_time), source_commit_time),"
            " applied_at = UTC_TIMESTAMP(6), transactions = transactions + VALUES(transactions),"
            " rows_applied = rows_applied + VALUES(rows_applied)",
            (self.pipeline, position.encode(), ct, txs, rows))

    def write_status(self, state: str, *, source_position: Position | None = None,
                     rows_per_second: float | None = None, message: str | None = None) -> None:
        pos = source_position.encode() if source_position else None
        with self.transaction() as tx:
            tx.execute(
                "INSERT INTO cdc_status (pipeline, state, source_position, source_seen_at,"
                " rows_per_second, message, pid, host, updated_at) VALUES (%s, %s, %s,"
                " IF(%s IS NULL, NULL, UTC_TIMESTAMP(6)), %s, %s, %s, %s, UTC_TIMESTAMP(6))"
                " ON DUPLICATE KEY UPDATE state = VALUES(state),"
                " source_position = COALESCE(VALUES(source_position), source_position),"
                " source_seen_at = COALESCE(VALUES(source_seen_at), source_seen_at),"
                " rows_per_second = COALESCE(VALUES(rows_per_second), rows_per_second),"
                " message = VALUES(message), pid = VALUES(pid), host = VALUES(host),"
                " updated_at = UTC_TIMESTAMP(6)",
                (self.pipeline, state, pos, pos, rows_per_second, message, os.getpid(),
                 socket.gethostname()))

    def claim_pipeline(self) -> None:
        """See ``PostgresTarget.claim_pipeline``."""
        with self.transaction() as tx:
            tx.execute(
                "INSERT INTO cdc_status (pipeline, state, pid, host, started_at, updated_at)"
                " VALUES (%s, 'starting', %s, %s, UTC_TIMESTAMP(6), UTC_TIMESTAMP(6))"
                " ON DUPLICATE KEY UPDATE state = VALUES(state), message = NULL,"
                " pid = VALUES(pid), host = VALUES(host), started_at = VALUES(started_at),"
                " updated_at = VALUES(updated_at)",
                (self.pipeline, os.getpid(), socket.gethostname()))

    def pipeline_holder(self) -> dict[str, Any]:
        """See ``PostgresTarget.pipeline_holder``."""
        rows = self._query("SELECT pid, host, started_at FROM cdc_status WHERE pipeline = %s",
                           (self.pipeline,))
        pid, host, since = rows[0] if rows else (None, None, None)
        return {"pid": pid, "host": host, "started_at": _aware(since)}

    def read_status(self) -> dict[str, Any]:
        rows = self._query(
            "SELECT o.position, o.source_commit_time, o.applied_at, o.transactions,"
            " o.rows_applied, s.state, s.source_position, s.source_seen_at, s.rows_per_second,"
            " s.message, s.updated_at, s.pid, s.host,"
            " (SELECT COUNT(*) FROM cdc_dead_letters d WHERE d.pipeline = %s), UTC_TIMESTAMP(6)"
            " FROM (SELECT %s AS pipeline) p"
            " LEFT JOIN cdc_offsets o ON o.pipeline = p.pipeline"
            " LEFT JOIN cdc_status s ON s.pipeline = p.pipeline", (self.pipeline, self.pipeline))
        names = ["position", "source_commit_time", "applied_at", "transactions", "rows_applied",
                 "state", "source_position", "source_seen_at", "rows_per_second", "message",
                 "updated_at", "pid", "host", "dead_letters", "now"]
        return {k: _aware(v) for k, v in zip(names, rows[0], strict=True)}

    # --- applying -------------------------------------------------------------
    def _scratch(self, create: str, name: str) -> str:
        """On MariaDB, staging and result tables use Aria: clearing one for each
        batch costs ~6 ms per 20,000 rows against ~25 ms with InnoDB and ~110 ms
        with MyISAM (TRUNCATE would be instant but commits the transaction).
        They need no transactions: every use empties them first."""
        if not self._mariadb:
            return create
        head = f"CREATE TEMPORARY TABLE IF NOT EXISTS {ident(name, 'mysql')}"
        assert create.startswith(head), create
        rest = create[len(head):]
        if rest.startswith(" ("):  # column definitions, then table options
            return f"{create} ENGINE=Aria"
        return f"{head} ENGINE=Aria{rest}"  # CREATE … AS SELECT

    def _prepare(self, tx: _Tx, stages: Sequence[StageTable],
                 rules: Sequence[CompiledRule]) -> None:
        for st in stages:
            if st.name not in self._prepared:
                tx.execute(self._scratch(st.create, st.name))
                self._prepared.add(st.name)
        for r in rules:
            if r.result_name not in self._prepared:
                try:
                    tx.execute(self._scratch(r.create_result, r.result_name))
                except pymysql.err.MySQLError as e:
                    raise _rule_error(r, e) from None
                self._prepared.add(r.result_name)

    def check_rules(self, stages: Sequence[StageTable], rules: Sequence[CompiledRule]) -> None:
        tx = self.tx()
        created: list[str] = []
        try:
            with tx(force_rollback=True):
                for st in stages:
                    tx.execute(st.create)
                    created.append(st.name)
                for r in rules:
                    try:
                        tx.execute(r.create_result)
                        created.append(r.result_name)
                        for stmt in r.all_statements():
                            tx.execute(stmt)
                        for _cond, query in r.validations:
                            tx.execute(query)
                    except pymysql.err.MySQLError as e:
                        raise _rule_error(r, e) from None
        finally:
            # Temporary-table DDL is not transactional: leave nothing behind.
            for name in created:
                with contextlib.suppress(pymysql.err.MySQLError):
                    tx.execute(f"DROP TEMPORARY TABLE IF EXISTS {ident(name, 'mysql')}")
            self._prepared.clear()

    def apply(self, batch: Batch, stages: dict[str, StageTable],
              rules: dict[str, list[CompiledRule]],
              convs: dict[str, list[Converter | None]],
              record: Callable[[Any], None] | None = None,
              existing: dict[int, int] | None = None,
              park: Callable[[Any], None] | None = None,
              write_dead_letters: bool = True) -> int:
        """See ``PostgresTarget.apply``: same contract."""
        tx = self.tx()
        staged = 0
        self.dead_letters = []
        from cdc.targets.postgres import _Positions

        positions = _Positions(batch)
        try:
            with tx():
                if record is None:
                    tx.execute("SELECT 1 FROM cdc_offsets WHERE pipeline = %s FOR UPDATE",
                               (self.pipeline,))
                # Rows the decoder kept as text (cdc.typemap.PG_TEXT_FOR_MYSQL).
                text = batch.text_by_table()
                staged = steps.apply_batch(self, tx, batch, stages, rules, convs, positions,
                                           existing or {}, text)
                if self.dead_letters and write_dead_letters:
                    self._write_dead_letters(tx)
                if park is not None:
                    park(tx)  # a paused table's changes (cdc.pause)
                if record is not None:
                    record(tx)
                else:
                    self._write_offset(tx, batch.position, batch.commit_time,
                                       batch.data_transactions, batch.rows)
        except (pymysql.err.MySQLError, OSError) as e:
            self._after_error()
            raise classify(e, self.config) from None
        except BaseException:
            self._after_error()
            raise
        return staged

    def _savepoint(self, tx: _Tx) -> Any:
        return tx()

    def _foreign_keys(self, tx: _Tx) -> list[steps.ForeignKey]:
        """(referencing, referenced) tables of the foreign keys of the target
        database; read once per connection (cdc.targets.steps orders by them)."""
        if self._fks is None:
            self._fks = [((str(a), str(b)), (str(c), str(d))) for a, b, c, d in tx.execute(
                "SELECT CONSTRAINT_SCHEMA, TABLE_NAME, UNIQUE_CONSTRAINT_SCHEMA,"
                " REFERENCED_TABLE_NAME FROM information_schema.REFERENTIAL_CONSTRAINTS"
                " WHERE CONSTRAINT_SCHEMA = DATABASE()").fetchall()]
        return self._fks

    def _empty_target(self, tx: _Tx, rule: CompiledRule) -> None:
        """A source TRUNCATE: DELETE, because TRUNCATE would commit the open
        transaction (and the offset with it) on its own."""
        t = rule.bound.target
        try:
            tx.execute(f"DELETE FROM {ident(t.schema, 'mysql')}.{ident(t.name, 'mysql')}")  # noqa: S608
        except pymysql.err.MySQLError as e:
            if _code(e) in MYSQL_ROW_ERRORS:
                raise _row_failure(rule, e) from None
            raise

    def prepare_tables(self, tx: _Tx, stages: Sequence[StageTable],
                       rules: Sequence[CompiledRule]) -> None:
        self._prepare(tx, stages, rules)

    def stage_only(self, tx: _Tx, st: StageTable, changes: list[RowChange],
                   convs: list[Converter | None] | None) -> None:
        """Replace the staging table's rows with these changes (for `cdc verify`)."""
        self._load(tx, st, stage_rows(changes, st.columns, convs))

    def _load(self, tx: _Tx, st: StageTable, rows: list[tuple[Any, ...]]) -> None:
        tx.execute(st.truncate)
        if not rows:
            return
        cols = ", ".join(ident(c, "mysql") for c in
                         [*st.columns, "_cdc_seq", "_cdc_kind", "_cdc_partial"])
        head = f"INSERT INTO {st.quoted} ({cols}) VALUES "  # noqa: S608 - quoted
        conn = self.conn()
        literal = conn.escape
        _insert_in_chunks(conn.cursor().execute, head, [
            "(" + ",".join([_literal(v, literal) for v in row]) + ")" for row in rows])

    def _stage_and_run(self, tx: _Tx, st: StageTable, changes: list[RowChange],
                       table_rules: list[CompiledRule],
                       convs: list[Converter | None] | None) -> int:
        rows = stage_rows(changes, st.columns, convs)
        try:
            self._load(tx, st, rows)
        except pymysql.err.MySQLError as e:
            # A value the staging column cannot hold is the row's problem.
            if _code(e) in MYSQL_ROW_ERRORS and table_rules:
                raise _row_failure(table_rules[0], e) from None
            raise
        self._run_rules(tx, table_rules, new_only=all(ch.op == "I" for ch in changes))
        return len(rows)

    def _stage_text_and_run(self, tx: _Tx, st: StageTable, text: list[TextRows],
                            table_rules: list[CompiledRule]) -> int:
        """Stage COPY text lines as VALUES tuples (copy_to_values: no Python
        value per column), then the rules (for isolate.apply_text)."""
        cols = ", ".join(ident(c, "mysql") for c in (*text[0].names, KIND, PARTIAL, SEQ))
        head = f"INSERT INTO {st.quoted} ({cols}) VALUES ".encode()  # noqa: S608 - quoted
        tuples: list[bytes] = []
        seq = 0
        for t in text:
            values, seq = copy_to_values(t.data, seq)
            tuples += values
        try:
            tx.execute(st.truncate)
            _insert_in_chunks(tx.execute, head, tuples)
        except pymysql.err.MySQLError as e:
            if _code(e) in MYSQL_ROW_ERRORS and table_rules:
                raise _row_failure(table_rules[0], e) from None
            raise
        self._run_rules(tx, table_rules, new_only=all(t.inserts_only for t in text))
        return seq

    @staticmethod
    def _run_rules(tx: _Tx, table_rules: list[CompiledRule], *, new_only: bool) -> None:
        """Each rule's statements over the staged rows.  New images only
        (inserts): one statement per rule, as for a snapshot chunk; no result
        table to fill and read back, nothing to delete."""
        for r in table_rules:
            if not new_only:
                tx.execute(r.clear_result)
            for stmt in r.new_only_statements() if new_only else r.statements():
                try:
                    tx.execute(stmt)
                except pymysql.err.MySQLError as e:
                    code = _code(e)
                    if code in _TRANSIENT_CODES or _client_error(code):
                        raise
                    if code in MYSQL_ROW_ERRORS:
                        raise _row_failure(r, e) from None
                    raise _rule_error(r, e) from None

    def _validation_failures(self, tx: _Tx, st: StageTable, changes: list[RowChange],
                             table_rules: list[CompiledRule],
                             convs: list[Converter | None] | None
                             ) -> dict[int, tuple[str, str]]:
        """Batch positions of changes whose new image fails a rule's validation
        condition -> (rule, condition).  Runs in a savepoint rolled back after."""
        failed: dict[int, tuple[str, str]] = {}
        rows = stage_rows(changes, st.columns, convs)
        with tx(force_rollback=True):
            self._load(tx, st, rows)
            for r in table_rules:
                for cond, query in r.validations:
                    try:
                        for (seq,) in tx.execute(query).fetchall():
                            failed.setdefault(isolate.seq_to_index(seq), (r.name, cond))
                    except pymysql.err.MySQLError as e:
                        raise _rule_error(r, e) from None
        return failed

    def _write_dead_letters(self, tx: _Tx) -> None:
        secs = self.config.dlq_retry_seconds
        for dl in self.dead_letters:
            ch = dl.change
            if dl.existing_id is not None:
                tx.execute("UPDATE cdc_dead_letters SET attempts = attempts + 1, error = %s,"
                           " last_failed_at = UTC_TIMESTAMP(6), next_retry_at = UTC_TIMESTAMP(6)"
                           " + INTERVAL %s * POW(2, LEAST(attempts, 10)) SECOND WHERE id = %s",
                           (dl.error, secs, dl.existing_id))
                continue
            tx.execute("INSERT INTO cdc_dead_letters (pipeline, rule, source_table, operation,"
                       " position, row_data, error, next_retry_at) VALUES (%s, %s, %s, %s, %s,"
                       " %s, %s, UTC_TIMESTAMP(6) + INTERVAL %s SECOND)",
                       (self.pipeline, dl.rule, ch.table, ch.op, dl.position, change_to_json(ch),
                        dl.error, secs))
            log.warning("dead letter: rule %s, %s %s at %s: %s", dl.rule, ch.op, ch.table,
                        dl.position, dl.error)

    def _after_error(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                if self._conn.open:
                    self._conn.ping(reconnect=False)
                    return
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None
            self._prepared.clear()

    # --- dead-letter table ----------------------------------------------------
    def dead_letter_rows(self, ids: list[int] | None = None, *, due_only: bool = False,
                         max_attempts: int | None = None) -> list[dict[str, Any]]:
        where = ["pipeline = %s"]
        params: list[Any] = [self.pipeline]
        if ids:
            where.append("id IN " + _marks(len(ids)))
            params += ids
        if due_only:
            where.append("next_retry_at <= UTC_TIMESTAMP(6)")
        if max_attempts is not None:
            where.append("attempts < %s")
            params.append(max_attempts)
        names = ["id", "rule", "source_table", "operation", "position", "row_data", "error",
                 "attempts", "first_failed_at", "last_failed_at", "next_retry_at"]
        rows = self._query(f"SELECT {', '.join(names)} FROM cdc_dead_letters WHERE "  # noqa: S608
                           f"{' AND '.join(where)} ORDER BY id", params)
        out = []
        for r in rows:
            d = {k: _aware(v) for k, v in zip(names, r, strict=True)}
            d["row_data"] = json.loads(d["row_data"])
            out.append(d)
        return out

    def drop_dead_letters(self, ids: list[int] | None) -> int:
        with self.transaction() as tx:
            if ids is None:
                cur = tx.execute("DELETE FROM cdc_dead_letters WHERE pipeline = %s",
                                 (self.pipeline,))
            else:
                cur = tx.execute("DELETE FROM cdc_dead_letters WHERE pipeline = %s AND id IN "  # noqa: S608
                                 + _marks(len(ids)), [self.pipeline, *ids])
            return int(cur.rowcount)

    def delete_dead_letters_in(self, tx: _Tx, ids: list[int]) -> None:
        tx.execute("DELETE FROM cdc_dead_letters WHERE pipeline = %s AND id IN "  # noqa: S608
                   + _marks(len(ids)), [self.pipeline, *ids])

    def forget_pipeline(self) -> None:
        """Delete this pipeline's bookkeeping rows (position, status, snapshot, dead letters,
        paused tables and their parked changes)."""
        with self.transaction() as tx:
            for t in ("cdc_offsets", "cdc_status", "cdc_snapshot_tables", "cdc_dead_letters",
                      "cdc_paused", "cdc_parked_changes", "cdc_source_schemas"):
                tx.execute(f"DELETE FROM {ident(t, 'mysql')} WHERE pipeline = %s",  # noqa: S608
                           (self.pipeline,))

    # --- paused source tables (cdc.pause) -------------------------------------
    def paused_tables(self) -> list[dict[str, Any]]:
        """See ``PostgresTarget.paused_tables``."""
        rows = self._query(
            "SELECT p.source_table, p.rules, p.reason, p.since, p.since_position,"
            " COUNT(c.seq), COALESCE(MAX(c.seq), 0)"
            " FROM cdc_paused p LEFT JOIN cdc_parked_changes c"
            " ON c.pipeline = p.pipeline AND c.source_table = p.source_table"
            " WHERE p.pipeline = %s GROUP BY p.source_table, p.rules, p.reason, p.since,"
            " p.since_position ORDER BY p.source_table", (self.pipeline,))
        out = []
        for r in rows:
            d = dict(zip(("table", "rules", "reason", "since", "since_position", "parked",
                          "last_seq"), r, strict=True))
            d["since"] = _aware(d["since"])
            d["parked"], d["last_seq"] = int(d["parked"]), int(d["last_seq"])
            out.append(d)
        return out

    def park(self, tx: _Tx, paused: Sequence[tuple[str, str, str, str]],
             rows: Sequence[tuple[str, int, str, str, str]]) -> None:
        """See ``PostgresTarget.park``."""
        for table, rules, reason, position in paused:
            tx.execute("INSERT INTO cdc_paused (pipeline, source_table, rules, reason,"
                       " since_position) VALUES (%s, %s, %s, %s, %s)"
                       " ON DUPLICATE KEY UPDATE source_table = source_table",
                       (self.pipeline, table, rules, reason, position))
        head = ("INSERT INTO cdc_parked_changes (pipeline, source_table, seq, position,"
                " operation, row_data) VALUES ")
        one = "(" + ", ".join(["%s"] * 6) + ")"
        part: list[Any] = []
        size = 0
        for i, r in enumerate(rows):
            part.append(r)
            size += len(r[4])
            # Well under max_allowed_packet (16 MB by default) with large rows.
            if len(part) == 500 or size > 4_000_000 or i == len(rows) - 1:
                tx.execute(head + ", ".join([one] * len(part)),
                           [v for x in part for v in (self.pipeline, *x)])
                part, size = [], 0

    def parked_changes(self, table: str, after_seq: int, limit: int
                       ) -> list[tuple[int, str, str, str]]:
        """See ``PostgresTarget.parked_changes``."""
        rows = self._query(
            "SELECT seq, position, operation, row_data FROM cdc_parked_changes"
            " WHERE pipeline = %s AND source_table = %s AND seq > %s ORDER BY seq LIMIT %s",
            (self.pipeline, table, after_seq, limit))
        return [(int(a), str(b), str(c), str(d)) for a, b, c, d in rows]

    def unpark(self, tx: _Tx, table: str, upto_seq: int, resume: bool) -> None:
        """See ``PostgresTarget.unpark``."""
        tx.execute("DELETE FROM cdc_parked_changes WHERE pipeline = %s AND source_table = %s"
                   " AND seq <= %s", (self.pipeline, table, upto_seq))
        if resume:
            tx.execute("DELETE FROM cdc_paused WHERE pipeline = %s AND source_table = %s",
                       (self.pipeline, table))

    def set_pause_reason(self, table: str, rules: str, reason: str) -> None:
        with self.transaction() as tx:
            tx.execute("UPDATE cdc_paused SET rules = %s, reason = %s WHERE pipeline = %s"
                       " AND source_table = %s", (rules, reason, self.pipeline, table))

    # --- the source shapes the rules were bound against (cdc.pause) -----------
    def save_source_schemas(self, schemas: Mapping[str, TableSchema]) -> None:
        """See ``PostgresTarget.save_source_schemas``."""
        with self.transaction() as tx:
            for name, t in schemas.items():
                tx.execute("INSERT INTO cdc_source_schemas (pipeline, source_table,"
                           " table_schema) VALUES (%s, %s, %s) ON DUPLICATE KEY UPDATE"
                           " table_schema = VALUES(table_schema), saved_at = CURRENT_TIMESTAMP(6)",
                           (self.pipeline, name, schema_to_json(t)))

    def source_schemas(self) -> dict[str, tuple[TableSchema, datetime]]:
        """See ``PostgresTarget.source_schemas``."""
        rows = self._query("SELECT source_table, table_schema, saved_at FROM cdc_source_schemas"
                           " WHERE pipeline = %s", (self.pipeline,))
        return {str(name): (schema_from_json(str(text)), _aware(at)) for name, text, at in rows}

    # --- snapshot progress ------------------------------------------------------
    def snapshot_chunk_begin(self, tx: _Tx) -> None:
        """(InnoDB's flush at commit is a server-wide setting; nothing to relax.)"""

    def lock_offset_shared(self, tx: _Tx) -> None:
        tx.execute("SELECT 1 FROM cdc_offsets WHERE pipeline = %s LOCK IN SHARE MODE",
                   (self.pipeline,))

    def snapshot_state(self, table: str) -> dict[str, Any] | None:
        names = ["state", "where_clause", "last_key", "rows_done", "rows_estimated",
                 "chunks_done"]
        rows = self._query(f"SELECT {', '.join(names)} FROM cdc_snapshot_tables"  # noqa: S608
                           " WHERE pipeline = %s AND table_name = %s", (self.pipeline, table))
        return dict(zip(names, rows[0], strict=True)) if rows else None

    def snapshot_begin(self, table: str, where: str | None, estimated: int | None,
                       truncate: list[str]) -> None:
        with self.transaction() as tx:
            for t in truncate:
                tx.execute(f"DELETE FROM {table_sql(t, 'mysql')}")  # noqa: S608 - quoted
            tx.execute(
                "INSERT INTO cdc_snapshot_tables (pipeline, table_name, state, where_clause,"
                " last_key, rows_done, rows_estimated, chunks_done, started_at, finished_at)"
                " VALUES (%s, %s, 'copying', %s, NULL, 0, %s, 0, UTC_TIMESTAMP(6), NULL)"
                " ON DUPLICATE KEY UPDATE state = 'copying', where_clause = VALUES(where_clause),"
                " last_key = NULL, rows_done = 0, rows_estimated = VALUES(rows_estimated),"
                " chunks_done = 0, started_at = UTC_TIMESTAMP(6), finished_at = NULL",
                (self.pipeline, table, where, estimated))
            tx.execute(
                "INSERT INTO cdc_status (pipeline, state, updated_at) VALUES (%s, 'snapshotting',"
                " UTC_TIMESTAMP(6)) ON DUPLICATE KEY UPDATE state = IF(state = 'streaming' AND"
                " updated_at > UTC_TIMESTAMP(6) - INTERVAL 60 SECOND, state, 'snapshotting'),"
                " updated_at = UTC_TIMESTAMP(6)", (self.pipeline,))

    def snapshot_ended(self) -> None:
        with self.transaction() as tx:
            tx.execute("UPDATE cdc_status SET state = 'stopped', updated_at = UTC_TIMESTAMP(6)"
                       " WHERE pipeline = %s AND state = 'snapshotting'", (self.pipeline,))

    def snapshot_chunk(self, tx: _Tx, table: str, last_key: str | None, rows: int) -> None:
        tx.execute("UPDATE cdc_snapshot_tables SET last_key = %s, rows_done = rows_done + %s,"
                   " chunks_done = chunks_done + 1 WHERE pipeline = %s AND table_name = %s",
                   (last_key, rows, self.pipeline, table))

    def snapshot_finish(self, tx: _Tx, table: str) -> None:
        tx.execute("UPDATE cdc_snapshot_tables SET state = 'done', finished_at = UTC_TIMESTAMP(6)"
                   " WHERE pipeline = %s AND table_name = %s", (self.pipeline, table))


# A multi-row INSERT is sent when its text passes this size, well under the
# server's max_allowed_packet (16 MB by default on MariaDB, 64 MB on MySQL 8).
_INSERT_BYTES = 2_000_000
# pymysql's string escaping (converters.escape_string), as one translate table.
_ESCAPE = str.maketrans({"\0": "\\0", "\n": "\\n", "\r": "\\r", "\x1a": "\\Z",
                         "'": "\\'", '"': '\\"', "\\": "\\\\"})


def _literal(v: Any, literal: Callable[[Any], str]) -> str:
    """A SQL literal for one staged value: the common types inline (pymysql's
    per-value dispatch costs ~0.6 µs, a third of a staged row), the rest by
    pymysql itself, so every value is escaped exactly as pymysql would."""
    t = type(v)
    if t is str:
        return "'" + v.translate(_ESCAPE) + "'"
    if t is int:
        return str(v)
    if v is None:
        return "NULL"
    if t is bool:
        return "1" if v else "0"
    if t is Decimal and v.is_finite():
        return format(v, "f")  # never exponent notation: MySQL reads that as a double
    if t is datetime and v.tzinfo is None:
        return "'" + v.isoformat(" ") + "'"
    if t is date:
        return "'" + v.isoformat() + "'"
    return literal(v)


def _insert_in_chunks(execute: Callable[[Any], Any], head: Any, tuples: list[Any]) -> None:
    """``head`` + the VALUES tuples as multi-row INSERTs of about _INSERT_BYTES
    each (str or bytes throughout)."""
    sep = "," if isinstance(head, str) else b","
    start, size = 0, 0
    for i, v in enumerate(tuples):
        size += len(v)
        if size > _INSERT_BYTES:
            execute(head + sep.join(tuples[start:i + 1]))
            start, size = i + 1, 0
    if start < len(tuples):
        execute(head + sep.join(tuples[start:]))


# A staging line's last fields (_cdc_kind, _cdc_partial) as VALUES tail.
_TAILS = {b"N\tf": b"'N',0,%d)", b"O\tf": b"'O',0,%d)", b"O\tt": b"'O',1,%d)"}


def copy_to_values(data: bytes, seq: int) -> tuple[list[bytes], int]:
    """PostgreSQL COPY text staging lines (cdc.events.TextRows) as MySQL VALUES
    tuples, numbered from ``seq + 1``; returns them and the last number.

    COPY text escapes only backslash, tab, newline and carriage return, each as
    a backslash sequence a MySQL string literal reads the same way; so a line
    becomes a tuple by escaping quotes and turning tabs into ``','``.  A field
    that is exactly ``\\N`` is NULL: after quoting it reads ``'\\N'``, which
    no value can (a value's own backslash is doubled, and a quote in it is
    preceded by a backslash).
    """
    out: list[bytes] = []
    append = out.append
    for line in data.split(b"\n")[:-1]:
        seq += 1
        body = line[:-4]
        tup = b"('" + body.replace(b"'", b"\\'").replace(b"\t", b"','") + b"'," + \
            _TAILS[line[-3:]] % seq
        if b"\\N" in body:
            tup = tup.replace(b"'\\N'", b"NULL")
        append(tup)
    return out, seq


def _marks(n: int) -> str:
    """``(%s, %s, …)``: n parameter placeholders, never values."""
    return "(" + ", ".join(["%s"] * n) + ")"


def _aware(v: Any) -> Any:
    if isinstance(v, datetime) and v.tzinfo is None:
        return v.replace(tzinfo=UTC)
    return v


_FK_ERRORS = {1216, 1217, 1451, 1452}


def _row_failure(rule: CompiledRule, e: pymysql.err.MySQLError) -> isolate.RowFailure:
    return isolate.RowFailure(rule, str(e.args[-1]), fk=_code(e) in _FK_ERRORS)


def _rule_error(rule: CompiledRule, e: pymysql.err.MySQLError) -> Exception:
    """The rule's fault, unless the connection went (see the PostgreSQL twin):
    then the driver error as it is, for classify to call transient."""
    code = _code(e)
    if isinstance(e, pymysql.err.InterfaceError) or code in _TRANSIENT_CODES \
            or _client_error(code):
        return e
    msg = e.args[1] if len(e.args) > 1 else str(e)
    return RuleError(f"on the target: {msg}", file=rule.bound.rule.file,
                     line=rule.bound.rule.line)


__all__ = ["MySQLTarget", "converters"]
