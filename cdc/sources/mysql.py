"""MySQL/MariaDB binlog source (mysql-replication).

Reads row events of one database, groups them into whole transactions and
yields each with the binlog coordinate *after* its commit, which is where a
restart resumes.  Runs in the reader thread; it never touches the target.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TypeVar

import pymysql
import sqlglot
from pymysqlreplication import BinLogStreamReader
from pymysqlreplication.constants import FIELD_TYPE, NONE_SOURCE
from pymysqlreplication.event import (
    HeartbeatLogEvent,
    QueryEvent,
    RotateEvent,
    XidEvent,
)
from pymysqlreplication.row_event import DeleteRowsEvent, UpdateRowsEvent, WriteRowsEvent
from sqlglot import exp

from cdc import catalog, names
from cdc.catalog import TableSchema
from cdc.config import DatabaseUrl
from cdc.errors import ConnectionLost, SourceError, TerminalError
from cdc.events import RowChange, Transaction, ZeroDate, truncate_change
from cdc.positions import BinlogPosition

log = logging.getLogger("cdc.source.mysql")
T = TypeVar("T")

# Error codes that mean "the connection is gone", after which reconnecting and
# resuming from the committed position is the cure.
_LOST = {2003, 2006, 2013, 2055, 1053, 1077, 1152, 1159, 1161}
_AUTH = {1045, 1044, 1698}

# mysql-replication decodes a zero or partial-zero DATE/DATETIME as None and
# says why in the row's none_sources; a zero TIMESTAMP (stored as 0) it decodes
# as the epoch, a value no real TIMESTAMP has (they start at 00:00:01 UTC).
_ZERO_REASONS = {NONE_SOURCE.OUT_OF_DATE_RANGE: "0000-00-00",
                 NONE_SOURCE.OUT_OF_DATETIME_RANGE: "0000-00-00 00:00:00",
                 NONE_SOURCE.OUT_OF_DATETIME2_RANGE: "0000-00-00 00:00:00"}
_DATE_TYPES = {FIELD_TYPE.DATE, FIELD_TYPE.NEWDATE, FIELD_TYPE.DATETIME, FIELD_TYPE.DATETIME2,
               FIELD_TYPE.TIMESTAMP, FIELD_TYPE.TIMESTAMP2}
_TIMESTAMP_TYPES = {FIELD_TYPE.TIMESTAMP, FIELD_TYPE.TIMESTAMP2}
_EPOCH = datetime(1970, 1, 1)


def pymysql_connect(**kw: Any) -> pymysql.connections.Connection:
    """``pymysql.connect`` whose ``connect_timeout`` bounds the whole handshake.

    pymysql applies it to the TCP connect only: a server (or a half-dead
    proxy) that accepts and then says nothing would hang us for ever in the
    greeting.  The read/write timeouts cover the handshake and init command,
    then go back to what the caller asked (by default none, so a long
    statement is not cut; pymysql applies them before its next read or write).
    """
    timeout = kw.get("connect_timeout") or 10
    read, write = kw.get("read_timeout"), kw.get("write_timeout")
    conn = pymysql.connect(**{**kw, "read_timeout": read or timeout,
                              "write_timeout": write or timeout})
    conn._read_timeout = read  # type: ignore[attr-defined]
    conn._write_timeout = write  # type: ignore[attr-defined]
    return conn


def connect(url: DatabaseUrl, *, database: bool = True, timeout: float = 10.0,
            **extra: Any) -> pymysql.connections.Connection:
    try:
        return pymysql_connect(
            host=url.host, port=url.port, user=url.user, password=url.password,
            database=url.database if database else None, charset="utf8mb4",
            connect_timeout=int(timeout), autocommit=True,
            # TIMESTAMP values read by SELECT must match the binlog's, which are UTC.
            init_command="SET time_zone = '+00:00'", **extra)
    except pymysql.err.OperationalError as e:
        raise classify(e, url) from None


def classify(e: Exception, url: DatabaseUrl) -> Exception:
    code = e.args[0] if e.args and isinstance(e.args[0], int) else 0
    msg = e.args[1] if len(e.args) > 1 else str(e)
    where = f"MySQL {url.host}:{url.port}"
    if code == 1044:
        return TerminalError(f"{where}: user {url.user!r} has no access to database "
                             f"{url.database!r}",
                             fix=f"GRANT SELECT ON `{url.database}`.* TO '{url.user}'@'%';  "
                                 "(cdc doctor --print-grants lists all it needs)")
    if code in _AUTH:
        return TerminalError(f"{where}: access denied for user {url.user!r}: {msg}",
                             fix="check the user and password in the config URL")
    if code == 1049:
        return TerminalError(f"{where}: unknown database {url.database!r}",
                             fix="fix the database name at the end of the URL")
    if code in _LOST or isinstance(e, ConnectionError | OSError):
        return ConnectionLost(f"{where}: cannot connect or connection lost: {msg}")
    return SourceError(f"{where}: {msg}")


def _guarded(fn: Callable[..., T]) -> Callable[..., T]:
    """Control-connection calls: a driver error becomes one of ours (a lost
    connection is transient) and the broken connection is dropped."""

    @functools.wraps(fn)
    def wrapper(self: MySQLSource, *args: Any, **kwargs: Any) -> T:
        try:
            return fn(self, *args, **kwargs)
        except (pymysql.err.MySQLError, OSError) as e:
            self.close()
            if isinstance(e, pymysql.err.InterfaceError | OSError):
                raise ConnectionLost(f"MySQL {self.url.host}:{self.url.port}: connection lost"
                                     ) from None
            raise classify(e, self.url) from None

    return wrapper


class MySQLSource:
    kind = "mysql"

    def __init__(self, url: DatabaseUrl, *, server_id: int, tables: list[str],
                 heartbeat_seconds: float = 10.0, connect_timeout: float = 10.0,
                 zero_dates: str = "null") -> None:
        self.url = url
        self.zero_dates = zero_dates
        self._date_events: dict[str, Any] = {}
        self._has_dates: dict[str, bool] = {}
        self._fixes: dict[str, list[Fix]] = {}
        # Per table, the (name, binlog type, unsigned) of its last table map.
        self._shapes: dict[str, tuple[tuple[str, int, bool], ...]] = {}
        self.server_id = server_id
        self.tables = list(tables)
        self.heartbeat_seconds = heartbeat_seconds
        self.connect_timeout = connect_timeout
        self._conn: pymysql.connections.Connection | None = None

    def factory(self) -> functools.partial[MySQLSource]:
        """A picklable recipe for an identical source (built in the decoder process)."""
        return functools.partial(MySQLSource, self.url, server_id=self.server_id,
                                 tables=self.tables, heartbeat_seconds=self.heartbeat_seconds,
                                 connect_timeout=self.connect_timeout,
                                 zero_dates=self.zero_dates)

    # --- control connection -------------------------------------------------
    def conn(self) -> pymysql.connections.Connection:
        if self._conn is None or not self._conn.open:
            self._conn = connect(self.url, timeout=self.connect_timeout)
        return self._conn

    def close(self) -> None:
        if self._conn is not None and self._conn.open:
            with contextlib.suppress(Exception):
                self._conn.close()
        self._conn = None

    def _table_keys(self) -> dict[str, str]:
        """The binlog's table names (the URL's database only) -> the names the rules use."""
        out: dict[str, str] = {}
        for t in self.tables:
            schema, table = names.split(t, self.url.database)
            if schema == self.url.database:
                out.setdefault(table, t)
        return out

    @_guarded
    def table(self, name: str) -> TableSchema | None:
        return catalog.mysql_table(self.conn(), self.url.database, name)

    def table_exists(self, name: str) -> bool:
        return self.table(name) is not None

    @_guarded
    def variables(self) -> dict[str, str]:
        with self.conn().cursor() as cur:
            cur.execute("SHOW GLOBAL VARIABLES WHERE Variable_name IN ('log_bin', 'binlog_format',"
                        " 'binlog_row_image', 'binlog_row_metadata', 'server_id', 'version',"
                        " 'expire_logs_days', 'binlog_expire_logs_seconds', 'gtid_mode')")
            return {str(k).lower(): str(v) for k, v in cur.fetchall()}

    def check_binlog(self) -> None:
        v = self.variables()
        if v.get("log_bin", "OFF").upper() != "ON":
            raise SourceError("the source has no binary log (log_bin=OFF)",
                              fix="set log_bin=mysql-bin in the server config and restart")
        if v.get("binlog_format", "").upper() != "ROW":
            raise SourceError(f"the source writes binlog_format={v.get('binlog_format')}, "
                              "not ROW", fix="SET GLOBAL binlog_format = 'ROW'; and set it in "
                                             "the server config")
        if v.get("binlog_row_image", "FULL").upper() != "FULL":
            raise SourceError(f"the source writes binlog_row_image={v.get('binlog_row_image')}, "
                              "not FULL", fix="SET GLOBAL binlog_row_image = 'FULL';")

    @_guarded
    def current_position(self) -> BinlogPosition:
        with self.conn().cursor() as cur:
            try:
                cur.execute("SHOW BINARY LOG STATUS")
            except pymysql.err.ProgrammingError:
                cur.execute("SHOW MASTER STATUS")
            except pymysql.err.OperationalError:
                cur.execute("SHOW MASTER STATUS")
            row = cur.fetchone()
        if not row:
            raise SourceError("the source has no binary log (SHOW MASTER STATUS is empty)",
                              fix="set log_bin=mysql-bin in the server config and restart")
        return BinlogPosition(str(row[0]), int(row[1]))

    @_guarded
    def first_position(self) -> BinlogPosition:
        with self.conn().cursor() as cur:
            cur.execute("SHOW BINARY LOGS")
            row = cur.fetchone()
        if not row:
            raise SourceError("the source has no binary log files",
                              fix="set log_bin=mysql-bin in the server config and restart")
        return BinlogPosition(str(row[0]), 4)

    @_guarded
    def position_available(self, pos: BinlogPosition) -> bool:
        with self.conn().cursor() as cur:
            cur.execute("SHOW BINARY LOGS")
            return any(str(r[0]) == pos.file for r in cur.fetchall())

    # --- streaming ----------------------------------------------------------
    def preflight(self, start: BinlogPosition) -> None:
        self.check_binlog()
        if not self.position_available(start):
            raise SourceError(
                f"binlog {start.file} is no longer on the source (purged); cdc cannot resume "
                f"from {start}", fix="raise binlog retention, then run `cdc snapshot` to "
                                     "re-bootstrap the target")

    def ack(self, position: BinlogPosition) -> None:
        """The binlog needs no acknowledgement; the offset in the target is the truth."""

    def stream(self, start: BinlogPosition, stop: threading.Event) -> Iterator[Transaction]:
        """Yield whole transactions from ``start`` until ``stop`` is set.

        Runs in the reader thread; call ``preflight`` first from the caller's.
        """
        connects = 0

        def wrapper(**kw: Any) -> pymysql.connections.Connection:
            # mysql-replication silently reconnects mid-transaction on a lost
            # connection; we would rather restart from the committed position.
            nonlocal connects
            if kw.get("db") != "information_schema":
                connects += 1
                if connects > 1:
                    raise ConnectionLost("binlog connection lost; resuming from the last "
                                         "committed position")
            return pymysql_connect(**kw)

        keys = self._table_keys()
        settings = {"host": self.url.host, "port": self.url.port, "user": self.url.user,
                    "passwd": self.url.password, "connect_timeout": int(self.connect_timeout)}
        stream = BinLogStreamReader(
            connection_settings=settings,
            server_id=self.server_id,
            resume_stream=True,
            blocking=True,
            log_file=start.file,
            log_pos=start.pos,
            only_schemas=[self.url.database],
            only_tables=list(keys) or None,
            only_events=[WriteRowsEvent, UpdateRowsEvent, DeleteRowsEvent, XidEvent,
                         QueryEvent, RotateEvent, HeartbeatLogEvent],
            slave_heartbeat=min(1.0, self.heartbeat_seconds),
            pymysql_wrapper=wrapper,
            enable_logging=False,
        )
        changes: list[RowChange] = []
        # Columns whose binlog type changed since this session's first table
        # map of their table (cdc.pause pauses a rule that reads one).
        retyped: dict[str, tuple[tuple[str, str, str], ...]] = {}
        self._shapes = {}
        last_yield = time.monotonic()
        try:
            while not stop.is_set():
                try:
                    ev = stream.fetchone()
                except pymysql.err.OperationalError as e:
                    raise classify(e, self.url) from None
                except (ConnectionError, OSError) as e:
                    raise ConnectionLost(f"binlog connection lost: {e}") from None
                if ev is None:
                    continue
                if isinstance(ev, WriteRowsEvent | UpdateRowsEvent | DeleteRowsEvent):
                    table = (keys.get(ev.table) if self.tables
                             else names.qualified(None, ev.table))
                    if table is None:
                        continue
                    rows = ev.rows
                    if self._date_events.get(table) is not ev.columns:
                        self._date_events[table] = ev.columns
                        self._has_dates[table] = any(c.type in _DATE_TYPES for c in ev.columns)
                        self._fixes[table] = value_fixes(ev.columns)
                        self._note_shape(table, ev.columns, retyped)
                    if self._has_dates[table]:
                        self._mark_zero_dates(ev, rows)
                    if self._fixes[table]:
                        fix_values(self._fixes[table], rows)
                    if isinstance(ev, WriteRowsEvent):
                        changes.extend(RowChange(table, "I", None, r["values"]) for r in rows)
                    elif isinstance(ev, UpdateRowsEvent):
                        changes.extend(RowChange(table, "U", r["before_values"], r["after_values"])
                                       for r in rows)
                    else:
                        changes.extend(RowChange(table, "D", r["values"], None) for r in rows)
                    continue
                commit = isinstance(ev, XidEvent) or (
                    isinstance(ev, QueryEvent) and _query_text(ev) == "COMMIT")
                if commit:
                    pos = BinlogPosition(stream.log_file, stream.log_pos)
                    when = datetime.fromtimestamp(ev.timestamp, UTC)
                    now = time.monotonic()
                    if changes:
                        yield Transaction(changes, pos, when,
                                          extra={"retyped": retyped} if retyped else {})
                        changes, retyped = [], {}
                        last_yield = now
                    elif now - last_yield >= self.heartbeat_seconds:
                        yield Transaction([], pos, when, heartbeat=True)
                        last_yield = now
                elif isinstance(ev, QueryEvent):
                    q = _query_text(ev)
                    # Bare names in the URL's database -> the names the rules use.
                    truncated = [n for n in ((keys.get(t) if self.tables
                                              else names.qualified(None, t))
                                             for t in truncated_tables(
                                                 ev, self.url.database,
                                                 set(keys) if self.tables else None))
                                 if n is not None]
                    if truncated:
                        # TRUNCATE commits implicitly: a transaction of its own,
                        # after any row changes still open before it.
                        changes.extend(truncate_change(t) for t in truncated)
                        yield Transaction(changes, BinlogPosition(stream.log_file,
                                                                  stream.log_pos),
                                          datetime.fromtimestamp(ev.timestamp, UTC),
                                          extra={"truncate": True})
                        changes = []
                        last_yield = time.monotonic()
                    elif q != "BEGIN" and not changes:
                        # DDL commits implicitly; its end is a safe resume point.
                        now = time.monotonic()
                        if now - last_yield >= self.heartbeat_seconds:
                            yield Transaction([], BinlogPosition(stream.log_file, stream.log_pos),
                                              None, heartbeat=True)
                            last_yield = now
                elif isinstance(ev, HeartbeatLogEvent):
                    now = time.monotonic()
                    if not changes and now - last_yield >= self.heartbeat_seconds:
                        # Idle: the binlog coordinate we stand at is a boundary.
                        yield Transaction([], BinlogPosition(stream.log_file, stream.log_pos),
                                          None, heartbeat=True)
                        last_yield = now
        finally:
            stream.close()


    def _note_shape(self, table: str, columns: list[Any],
                    retyped: dict[str, tuple[tuple[str, str, str], ...]]) -> None:
        """Compare a table map's column types with the session's previous one
        of the table: the plan, built from the catalog at start, knows the
        first.  Lengths and precisions are not compared, only the type and
        its signedness (an INT becoming a BIGINT or a VARCHAR)."""
        shape = tuple((c.name, c.type, bool(getattr(c, "unsigned", False))) for c in columns)
        was = self._shapes.get(table)
        self._shapes[table] = shape
        if was is None or was == shape:
            return
        old = {n: (t, u) for n, t, u in was}
        changed = tuple((n, _field_type(*old[n]), _field_type(t, u)) for n, t, u in shape
                        if n in old and old[n] != (t, u))
        if changed:
            retyped[table] = retyped.get(table, ()) + changed

    def _mark_zero_dates(self, ev: Any, rows: list[dict[str, Any]]) -> None:
        """Zero dates become None (the default) or ZeroDate markers, the same
        whatever column type held them (see _ZERO_REASONS)."""
        keep = self.zero_dates == "dead_letter"
        stamps = [c.name for c in ev.columns if c.type in _TIMESTAMP_TYPES]
        if not keep and not stamps:
            return  # None is already what the decoder gave
        for r in rows:
            for values_key, nones_key in (("values", "none_sources"),
                                          ("before_values", "before_none_sources"),
                                          ("after_values", "after_none_sources")):
                image = r.get(values_key)
                if image is None:
                    continue
                for name in stamps:
                    v = image.get(name)
                    if v is not None and v == _EPOCH:
                        image[name] = ZeroDate("0000-00-00 00:00:00") if keep else None
                if keep:
                    for name, why in (r.get(nones_key) or {}).items():
                        text = _ZERO_REASONS.get(why)
                        if text is not None:
                            image[name] = ZeroDate(text)


def truncated_tables(ev: QueryEvent, database: str,
                     tables: set[str] | None = None) -> list[str]:
    """The tables of ``database`` a binlogged ``TRUNCATE [TABLE] name`` empties
    (none for any other statement)."""
    q = ev.query
    if isinstance(q, bytes):
        q = q.decode("utf-8", "replace")
    schema = ev.schema.decode("utf-8", "replace") if isinstance(ev.schema, bytes) \
        else str(ev.schema or "")
    return truncate_targets(str(q), schema, database, tables)


def truncate_targets(statement: str, schema: str, database: str,
                     tables: set[str] | None = None) -> list[str]:
    """``statement`` parsed (sqlglot, MySQL dialect): the names of the tables
    in ``database`` it truncates; ``schema`` is the session's default one.
    ``tables``: the rules' source tables (None: all), for the warning."""
    if "truncate" not in statement.lower():
        return []  # most query events are BEGIN/COMMIT or other DDL: no parse
    part = _partition_truncate(statement, schema)
    if part is not None:
        if part[0] == database and (tables is None or part[1] in tables):
            # Its rows leave the binlog as nothing at all: say so, loudly.
            log.warning("source table %s: ALTER TABLE … TRUNCATE PARTITION is not "
                        "mirrored (the binlog holds no rows for it); run `cdc verify "
                        "--table %s --repair`", part[1], part[1])
        return []
    try:
        tree = sqlglot.parse_one(statement, read="mysql")
    except sqlglot.errors.ParseError:
        return []
    if not isinstance(tree, exp.TruncateTable):
        return []
    return [t.name for t in tree.expressions
            if isinstance(t, exp.Table) and (t.db or schema) == database]


def _partition_truncate(statement: str, schema: str) -> tuple[str, str] | None:
    """(schema, table) of ``ALTER TABLE [db.]name TRUNCATE PARTITION …``."""
    from sqlglot.tokens import TokenType

    try:
        tokens = sqlglot.tokenize(statement, read="mysql")
    except sqlglot.errors.TokenError:
        return None
    kinds = [t.token_type for t in tokens]
    if kinds[:2] != [TokenType.ALTER, TokenType.TABLE]:
        return None
    name = [t.text for t in tokens[2:] if t.token_type is not TokenType.DOT]
    rest = kinds[2:]
    for n in (1, 2):  # name, or db.name
        if rest[2 * n - 1:2 * n + 1] == [TokenType.TRUNCATE, TokenType.PARTITION]:
            return (schema, name[0]) if n == 1 else (name[0], name[1])
    return None


# --- values the decoder does not give as they are ------------------------------
#
# A SELECT (the snapshot) returns these exactly; the binlog decoder does not:
# - BINARY(n): the server leaves the trailing zero bytes out of the binlog
#   (x'41000000' arrives as b'A', x'00000000' as ''); every value is n bytes,
#   which the binlog's own column metadata gives (the declared length then).
# - SET: a Python set; the empty set arrives as None, told apart from NULL
#   only by the row's none_sources.  MySQL prints a set in definition order.
# - JSON (MySQL's binary JSON; MariaDB's JSON is text already): Python values.
Fix = tuple[str, str, Any]  # column name, what, parameter


def value_fixes(columns: list[Any]) -> list[Fix]:
    out: list[Fix] = []
    for c in columns:
        if c.type == FIELD_TYPE.STRING and getattr(c, "max_length", 0) and \
                c.character_set_name in ("binary", None):
            # (None: no binlog metadata; only bytes values are padded then.)
            out.append((c.name, "pad", (c.max_length, c.character_set_name == "binary")))
        elif c.type == FIELD_TYPE.SET and c.set_values:
            # Without the member names (no binlog_row_metadata=FULL) the
            # decoder gives None for every value; nothing to tell apart then.
            out.append((c.name, "set", tuple(c.set_values)))
        elif c.type == FIELD_TYPE.JSON:
            out.append((c.name, "json", None))
    return out


def fix_values(fixes: list[Fix], rows: list[dict[str, Any]]) -> None:
    for r in rows:
        for values_key, nones_key in (("values", "none_sources"),
                                      ("before_values", "before_none_sources"),
                                      ("after_values", "after_none_sources")):
            image = r.get(values_key)
            if image is None:
                continue
            nones = r.get(nones_key) or {}
            for name, what, param in fixes:
                v = image.get(name)
                if what == "pad":
                    n, binary = param
                    if type(v) is bytes and len(v) < n:
                        image[name] = v.ljust(n, b"\0")
                    elif binary and v == "":
                        # All zero bytes, stripped to b'', which the decoder
                        # "decodes" to '' (Python decodes no bytes to str).
                        image[name] = bytes(n)
                elif what == "set":
                    if v is None:
                        if nones.get(name) == NONE_SOURCE.EMPTY_SET:
                            image[name] = ""
                    elif isinstance(v, set | frozenset):
                        image[name] = ",".join(m for m in param if m in v)
                elif v is not None:
                    image[name] = json_text(v)


def json_text(v: Any) -> str:
    """A decoded binary JSON value as MySQL prints it: true stays true, a
    string stays a string, a DECIMAL keeps every digit.  (The decoder gives a
    JSON ``null`` as None, like SQL NULL; see docs/types.md.)"""
    if v is None:
        return "null"
    if v is True or v is False:
        return "true" if v else "false"
    if isinstance(v, int | float):
        return json.dumps(v)
    if isinstance(v, Decimal):
        return str(v)
    if isinstance(v, bytes):
        v = v.decode("utf-8", "replace")
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json_text(k)}: {json_text(x)}" for k, x in v.items()) + "}"
    if isinstance(v, list | tuple):
        return "[" + ", ".join(json_text(x) for x in v) + "]"
    return json.dumps(str(v), ensure_ascii=False)  # strings, and dates/times as MySQL quotes them


def _field_type(code: int, unsigned: bool) -> str:
    names = {v: k.lower() for k, v in vars(FIELD_TYPE).items()
             if k.isupper() and isinstance(v, int)}
    return names.get(code, f"type {code}") + (" unsigned" if unsigned else "")


def _query_text(ev: QueryEvent) -> str:
    q = ev.query
    if isinstance(q, bytes):
        q = q.decode("utf-8", "replace")
    return str(q).strip().upper()
