"""PostgreSQL logical replication source: pgoutput over a replication connection.

``setup`` makes the publication (exactly the tables the rules read) and the
logical slot; ``stream`` reads the slot with ``START_REPLICATION`` on a
``replication=database`` psycopg connection, decodes the frames with
``cdc.sources.pgoutput`` and yields one ``Transaction`` per source transaction.
The slot is acknowledged (standby status update) only with positions that
``ack`` was given, i.e. that the target has committed, so a crash anywhere
replays from the target's offset and nothing is lost.

``stream`` runs in the reader thread and owns the replication connection; every
other method uses a separate control connection guarded by a lock.
"""

from __future__ import annotations

import functools
import logging
import re
import selectors
import struct
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
from psycopg import errors as pgerr
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.pq import DiagnosticField, ExecStatus

from cdc import catalog, names
from cdc.catalog import TableSchema, split_name
from cdc.errors import CdcError, ConnectionLost, SourceError
from cdc.events import TextRows, Transaction, truncate_change
from cdc.positions import Lsn
from cdc.sources.pgoutput import (
    TEXT_ARRAY_OID,
    Begin,
    Commit,
    Decoder,
    Delete,
    Insert,
    Message,
    Origin,
    ProtocolError,
    Relation,
    RelationInfo,
    StreamAbort,
    StreamCommit,
    StreamStart,
    StreamStop,
    Truncate,
    TupleWithUnchanged,
    Update,
)

log = logging.getLogger("cdc.source.postgres")

HEARTBEAT_PREFIX = "cdc_heartbeat"

# The walsender formats values with its session settings; the decoder's psycopg
# loaders expect exactly these, whatever the server's postgresql.conf says.
_SESSION_OPTIONS = ("-c DateStyle=ISO -c IntervalStyle=postgres -c TimeZone=UTC"
                    " -c extra_float_digits=3 -c bytea_output=hex -c client_encoding=UTF8")

# The same settings for an ordinary session whose ::text output must equal the
# walsender's (reading a row again to fill unchanged TOAST values).
TEXT_SESSION = ("SET DateStyle = ISO", "SET IntervalStyle = postgres", "SET TimeZone = 'UTC'",
                "SET extra_float_digits = 3", "SET bytea_output = hex")

_SLOT_NAME = re.compile(r"^[a-z0-9_]{1,63}$")
_XLOGDATA = struct.Struct(">QQq")  # wal start, wal end, server clock
_KEEPALIVE = struct.Struct(">QqB")  # wal end, server clock, reply requested
_STATUS = struct.Struct(">cQQQqB")  # 'r', write, flush, apply, clock, reply requested
_PG_EPOCH_UNIX = 946_684_800  # 2000-01-01 in Unix time

# How long the read loop may block on the socket: bounds how late ``stop`` is seen.
_POLL_SECONDS = 0.25
# A new ack is reported at most this often while transactions keep arriving.
_ACK_MIN_INTERVAL = 0.5
# A slot our own previous stream used stays "active" for a moment after we
# disconnect; wait this long before calling it someone else's.
_SLOT_BUSY_WAIT = 5.0

_AUTH_FIX = "check the user and password in the source URL, and pg_hba.conf on the source"


def _pg_clock() -> int:
    return int((time.time() - _PG_EPOCH_UNIX) * 1_000_000)


class PostgresSource:
    kind = "postgresql"

    def __init__(self, url: str, *, slot: str, publication: str, tables: Sequence[str],
                 heartbeat_seconds: float = 10.0, status_interval: float = 10.0,
                 text_values: bool = False, copy_types: frozenset[int] | None = None,
                 packed: bool = False) -> None:
        if not _SLOT_NAME.match(slot):
            raise SourceError(f"invalid replication slot name {slot!r}",
                              fix="use lower case letters, digits and underscores (max 63)")
        self.url = url
        self.slot = slot
        self.publication = publication
        self.tables = [_display(*split_name(t, "public")) for t in tables]
        self.heartbeat_seconds = heartbeat_seconds
        self.status_interval = status_interval
        # Row values stay the walsender's text instead of becoming Python
        # values: a PostgreSQL target's COPY parses exactly that text back into
        # the same type (staging columns have the source's types), so decoding
        # and re-encoding every value would only cost time.
        self.text_values = text_values
        # Rows travel as COPY text (cdc.events.TextRows) when every column's
        # type is in ``copy_types`` (a MySQL target: cdc.typemap.PG_TEXT_FOR_MYSQL),
        # or always with text values (a PostgreSQL target).
        self.copy_types = copy_types
        self.copy_text = text_values or copy_types is not None
        # In the decoder process: yield transactions already packed for the
        # pipe (cdc.reader.pack), skipping per-row dicts and RowChange objects.
        self.packed = packed
        self._conn: psycopg.Connection[Any] | None = None
        self._lock = threading.RLock()
        self._ack_lock = threading.Lock()
        self._acked: Lsn | None = None
        params = conninfo_to_dict(url)
        self._where = f"PostgreSQL {params.get('host', 'localhost')}:{params.get('port', 5432)}"
        self._user = str(params.get("user") or "")
        self._options = " ".join(x for x in (str(params.get("options") or ""),
                                             _SESSION_OPTIONS) if x)

    # --- connections --------------------------------------------------------------
    def _connect(self, **extra: Any) -> psycopg.Connection[Any]:
        try:
            return psycopg.connect(self.url, autocommit=True, options=self._options, **extra)
        except psycopg.Error as e:
            raise self._connect_error(e) from None

    def _connect_error(self, e: psycopg.Error) -> CdcError:
        # Connection-time failures carry no SQLSTATE in libpq, so there is no
        # class to map by; the server's (English) FATAL text is all there is.
        text = str(e)
        where = f"{self._where}: cannot connect"
        if e.sqlstate:
            err = self._sql_error(e, "connect")
            if err is not None:
                return err
        if ("password authentication failed" in text or "no pg_hba.conf entry" in text
                or ("role \"" in text and "does not exist" in text)
                or "no password supplied" in text or "password is required" in text):
            return SourceError(f"{where}: authentication failed for user {self._user!r}",
                               fix=_AUTH_FIX)
        if "database \"" in text and "does not exist" in text:
            return SourceError(f"{where}: {_first_line(text)}",
                               fix="fix the database name at the end of the source URL")
        if "must be superuser or replication role" in text:
            return self._no_replication_role()
        if "exceeds max_wal_senders" in text:
            return SourceError(f"{where}: all WAL senders are busy (max_wal_senders)",
                               fix="ALTER SYSTEM SET max_wal_senders = 20; and restart, or "
                                   "stop unused replication connections")
        return ConnectionLost(f"{where}: {_first_line(text)}")

    def _sql_error(self, e: psycopg.Error, doing: str) -> CdcError | None:
        """Map a server error by class/SQLSTATE; None when it has no special meaning."""
        state = e.sqlstate or ""
        msg = _first_line(str(e))
        if isinstance(e, pgerr.InvalidAuthorizationSpecification | pgerr.InvalidPassword):
            return SourceError(f"{self._where}: authentication failed for user {self._user!r}",
                               fix=_AUTH_FIX)
        if isinstance(e, pgerr.InvalidCatalogName):
            return SourceError(f"{self._where}: {msg}",
                               fix="fix the database name at the end of the source URL")
        if state.startswith(("08", "57P")) or isinstance(e, pgerr.CannotConnectNow):
            return ConnectionLost(f"{self._where}: connection lost while {doing}: {msg}")
        if isinstance(e, pgerr.ConfigurationLimitExceeded):
            return SourceError(
                f"{self._where}: cannot create replication slot {self.slot!r}: all replication "
                "slots are in use (max_replication_slots)",
                fix="drop unused slots (SELECT pg_drop_replication_slot(name) FROM "
                    "pg_replication_slots WHERE NOT active), or ALTER SYSTEM SET "
                    "max_replication_slots = 20; and restart")
        if isinstance(e, pgerr.TooManyConnections):
            return ConnectionLost(f"{self._where}: too many connections: {msg}")
        if isinstance(e, pgerr.ObjectInUse):
            return self._slot_in_use(None)
        if isinstance(e, pgerr.OperationalError) and not state:
            return ConnectionLost(f"{self._where}: connection lost while {doing}: {msg}")
        return None

    def conn(self) -> psycopg.Connection[Any]:
        """The control connection (autocommit), opened on first use."""
        if self._conn is None or self._conn.closed:
            self._conn = self._connect()
        return self._conn

    def _query(self, query: Any, params: Sequence[Any] | None = None, *,
               doing: str = "querying the source") -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                cur = self.conn().execute(query, params)
                return cur.fetchall() if cur.description else []
            except psycopg.Error as e:
                err = self._sql_error(e, doing)
                if isinstance(err, ConnectionLost):
                    self._drop_conn()
                if err is not None:
                    raise err from None
                raise SourceError(f"{self._where}: {doing}: {_first_line(str(e))}") from None

    def _drop_conn(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg.Error:
                pass
        self._conn = None

    def close(self) -> None:
        """Close the control connection; a running ``stream`` closes its own when stopped."""
        with self._lock:
            self._drop_conn()

    # --- catalog and positions -----------------------------------------------------
    def table(self, name: str) -> TableSchema | None:
        with self._lock:
            try:
                return catalog.pg_table(self.conn(), name)
            except psycopg.Error as e:
                err = self._sql_error(e, f"reading table {name}")
                if isinstance(err, ConnectionLost):
                    self._drop_conn()
                raise (err or SourceError(f"{self._where}: {_first_line(str(e))}")) from None

    def table_exists(self, name: str) -> bool:
        return self.table(name) is not None

    def current_position(self) -> Lsn:
        rows = self._query("SELECT pg_current_wal_lsn()::text")
        return Lsn.parse(rows[0][0])

    def slot_info(self) -> dict[str, Any]:
        """The slot as the server sees it; ``{"exists": False}`` when there is none."""
        rows = self._query(
            "SELECT plugin, slot_type, database, active, active_pid,"
            " confirmed_flush_lsn::text, restart_lsn::text,"
            " pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint, wal_status"
            " FROM pg_replication_slots WHERE slot_name = %s", (self.slot,))
        if not rows:
            return {"exists": False, "slot": self.slot}
        plugin, slot_type, database, active, pid, flushed, restart, retained, wal_status = rows[0]
        return {
            "exists": True,
            "slot": self.slot,
            "plugin": plugin,
            "slot_type": slot_type,
            "database": database,
            "active": bool(active),
            "active_pid": pid,
            "confirmed_flush_lsn": Lsn.parse(flushed) if flushed else None,
            "restart_lsn": Lsn.parse(restart) if restart else None,
            "retained_wal_bytes": int(retained) if retained is not None else None,
            "wal_status": wal_status,
        }

    def emit_heartbeat(self) -> None:
        """Write a tiny transactional WAL record that the stream sees as a heartbeat.

        It gives an idle source a commit to report, so the slot (and lag facts)
        move even when none of the published tables change.
        """
        self._query("SELECT pg_logical_emit_message(true, %s, now()::text)", (HEARTBEAT_PREFIX,),
                    doing="emitting a heartbeat")

    # --- setup / teardown -------------------------------------------------------------
    def check_server(self) -> None:
        """wal_level, slots and the REPLICATION attribute, each with its fix."""
        rows = self._query(
            "SELECT current_setting('wal_level'), current_setting('max_replication_slots')::int,"
            " current_user, r.rolsuper OR r.rolreplication OR EXISTS (SELECT 1 FROM pg_roles g"
            "  WHERE g.rolname = 'rds_replication' AND pg_has_role(r.oid, g.oid, 'MEMBER'))"
            " FROM pg_roles r WHERE r.rolname = current_user")
        wal_level, max_slots, user, can_replicate = rows[0]
        if wal_level != "logical":
            raise SourceError(
                f"{self._where} has wal_level={wal_level}; logical replication needs logical",
                fix="ALTER SYSTEM SET wal_level = logical; then restart PostgreSQL")
        if max_slots == 0:
            raise SourceError(f"{self._where} has max_replication_slots=0",
                              fix="ALTER SYSTEM SET max_replication_slots = 10; then restart "
                                  "PostgreSQL")
        if not can_replicate:
            self._user = user
            raise self._no_replication_role()

    def _no_replication_role(self) -> SourceError:
        user = self._user or "<user>"
        return SourceError(f"{self._where}: role {user!r} may not use replication "
                           "(it lacks the REPLICATION attribute)",
                           fix=f"ALTER ROLE {_quote_ident(user)} REPLICATION;")

    def setup(self) -> None:
        """Create or update the publication and create the slot; safe to run again."""
        with self._lock:
            self.check_server()
            self._setup_publication()
            self._setup_slot()

    def _setup_publication(self) -> None:
        want = self._table_oids()
        pub = self._query("SELECT puballtables, pubinsert AND pubupdate AND pubdelete"
                          " AND pubtruncate FROM pg_publication WHERE pubname = %s",
                          (self.publication,))
        name = sql.Identifier(self.publication)
        idents = sql.SQL(", ").join(sql.Identifier(*split_name(t, "public")) for t in want)
        doing = f"creating publication {self.publication}"
        self._align_partition_identity()
        # Changes to a partition then arrive under the root's name (and relation
        # OID), which is the table the rules read; without it they would come as
        # the partitions' own names and match no rule.
        via_root = self._has_via_root()
        try:
            if not pub:
                stmt = sql.SQL("CREATE PUBLICATION {}").format(name)
                if want:
                    stmt = sql.SQL("{} FOR TABLE {}").format(stmt, idents)
                if via_root:
                    stmt = sql.SQL("{} WITH (publish_via_partition_root = true)").format(stmt)
                self._ddl(stmt, doing)
                log.info("created publication %s for %s", self.publication, ", ".join(want))
                return
            all_tables, all_ops = pub[0]
            if not all_ops:
                self._ddl(sql.SQL("ALTER PUBLICATION {} SET (publish = "
                                  "'insert, update, delete, truncate')").format(name), doing)
            if via_root and not self.publishes_via_root():
                self._ddl(sql.SQL("ALTER PUBLICATION {} SET (publish_via_partition_root = true)"
                                  ).format(name), doing)
                log.info("publication %s now publishes partitions' changes under their root "
                         "table", self.publication)
            if all_tables:
                log.info("publication %s is FOR ALL TABLES; leaving its tables as they are",
                         self.publication)
                return
            have = set(self.published_tables())
            if have == set(want):
                return
            if want:
                self._ddl(sql.SQL("ALTER PUBLICATION {} SET TABLE {}").format(name, idents),
                          doing)
            else:
                drop = sql.SQL(", ").join(sql.Identifier(*split_name(t, "public")) for t in have)
                self._ddl(sql.SQL("ALTER PUBLICATION {} DROP TABLE {}").format(name, drop), doing)
            log.info("publication %s now covers %s (was %s)", self.publication,
                     ", ".join(want) or "no tables", ", ".join(sorted(have)) or "no tables")
        except psycopg.errors.DuplicateObject:
            # Another `cdc setup` made it meanwhile; converge on the next run.
            return

    def _has_via_root(self) -> bool:
        """Whether the server has ``publish_via_partition_root`` (PostgreSQL >= 13)."""
        return int(self._query("SELECT current_setting('server_version_num')::int")[0][0]) >= 130000

    def publishes_via_root(self) -> bool | None:
        """The publication's ``publish_via_partition_root``; None when it does not exist."""
        if not self._has_via_root():
            return False
        rows = self._query("SELECT pubviaroot FROM pg_publication WHERE pubname = %s",
                           (self.publication,))
        return bool(rows[0][0]) if rows else None

    def partitioned_tables(self) -> list[str]:
        """The configured tables that are partitioned (relkind 'p')."""
        out = []
        for t in self.tables:
            schema, name = split_name(t, "public")
            if self._query("SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                           " WHERE n.nspname = %s AND c.relname = %s AND c.relkind = 'p'",
                           (schema, name)):
                out.append(t)
        return out

    def partition_identity_problems(self) -> list[tuple[str, str, str, bool]]:
        """Partitions whose replica identity does not give what their root promises.

        PostgreSQL logs an update or delete with the identity of the partition
        the row is in, and ``ALTER TABLE root REPLICA IDENTITY FULL`` does not
        reach the partitions (nor partitions attached later).  So a root with
        FULL needs FULL on every partition, and every partition needs some
        identity, or its updates fail on the source.  Returns (root, partition,
        fix, whether the root is FULL) for each.
        """
        out: list[tuple[str, str, str, bool]] = []
        if not self._has_via_root():
            return out  # before PostgreSQL 13 a partitioned table cannot be published
        for t in self.tables:
            schema, name = split_name(t, "public")
            rows = self._query(
                "SELECT c.relreplident, l.relreplident, ln.nspname, l.relname,"
                " EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = l.oid"
                "  AND (i.indisprimary OR i.indisreplident))"
                " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " JOIN LATERAL pg_partition_tree(c.oid) p ON p.isleaf"
                " JOIN pg_class l ON l.oid = p.relid JOIN pg_namespace ln ON ln.oid = l.relnamespace"
                " WHERE n.nspname = %s AND c.relname = %s AND c.relkind = 'p'"
                " ORDER BY ln.nspname, l.relname", (schema, name))
            for root_ident, leaf_ident, leaf_schema, leaf, has_key in rows:
                root_ident, leaf_ident = _text(root_ident), _text(leaf_ident)
                if leaf_ident == "f":
                    continue
                if root_ident == "f" or leaf_ident == "n" or (leaf_ident == "d" and not has_key):
                    out.append((t, _display(leaf_schema, leaf),
                                f"ALTER TABLE {_quote_qualified(leaf_schema, leaf)} "
                                "REPLICA IDENTITY FULL;", root_ident == "f"))
        return out

    def _align_partition_identity(self) -> None:
        """Give each partition of a REPLICA IDENTITY FULL root the same identity."""
        for root, leaf, _fix, root_full in self.partition_identity_problems():
            if not root_full:
                continue  # no identity to copy: the DBA chooses one (doctor says how)
            leaf_schema, leaf_name = split_name(leaf, "public")
            self._ddl(sql.SQL("ALTER TABLE {} REPLICA IDENTITY FULL").format(
                sql.Identifier(leaf_schema, leaf_name)), f"setting the replica identity of {leaf}")
            log.info("partition %s of %s now has REPLICA IDENTITY FULL, like its root", leaf, root)

    def _ddl(self, stmt: sql.Composed, doing: str) -> None:
        with self._lock:
            try:
                self.conn().execute(stmt)
            except psycopg.errors.InsufficientPrivilege:
                raise SourceError(
                    f"{self._where}: permission denied {doing}",
                    fix=f"run `cdc setup` as the owner of the tables (or a superuser), or have "
                        f"a DBA run: {stmt.as_string(self.conn())}") from None
            except psycopg.errors.DuplicateObject:
                raise
            except psycopg.Error as e:
                err = self._sql_error(e, doing)
                raise (err or SourceError(f"{self._where}: {doing}: "
                                          f"{_first_line(str(e))}")) from None

    def _table_oids(self) -> dict[str, int]:
        """The configured tables (in order) with their OIDs; each must exist and be publishable."""
        out: dict[str, int] = {}
        for t in self.tables:
            schema, name = split_name(t, "public")
            rows = self._query(
                "SELECT c.oid::int, c.relreplident, EXISTS (SELECT 1 FROM pg_index i"
                " WHERE i.indrelid = c.oid AND (i.indisprimary OR i.indisreplident))"
                " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')",
                (schema, name))
            if not rows:
                raise SourceError(f"{self._where}: table {t} does not exist on the source",
                                  fix="create it, or remove the rules that read it")
            oid, ident, has_key = rows[0]
            ident = _text(ident)
            if ident == "n" or (ident == "d" and not has_key):
                # Publishing it would make every UPDATE/DELETE on it fail on the source.
                raise SourceError(
                    f"{self._where}: table {t} has no primary key or replica identity, so "
                    "its updates and deletes cannot be replicated",
                    fix=f"ALTER TABLE {_quote_qualified(schema, name)} REPLICA IDENTITY FULL; "
                        "(or add a primary key)")
            out[t] = oid
        self._check_no_partition_of_another(out)
        return out

    def _check_no_partition_of_another(self, tables: dict[str, int]) -> None:
        """A partition and its root both read: PostgreSQL would publish the
        partition's changes under the root only, and the partition's rules would
        never see them."""
        if len(tables) < 2 or not self._has_via_root():
            return
        by_oid = {oid: t for t, oid in tables.items()}
        for t, oid in tables.items():
            rows = self._query("SELECT relid::int FROM pg_partition_ancestors(%s::oid::regclass)"
                               " WHERE relid <> %s::oid::regclass", (oid, oid))
            for (ancestor,) in rows:
                if ancestor in by_oid:
                    raise SourceError(
                        f"{self._where}: the rules read both {by_oid[ancestor]} and its "
                        f"partition {t}; PostgreSQL publishes the partition's changes under "
                        f"{by_oid[ancestor]} only, so the rules reading {t} would miss them",
                        fix=f"read {by_oid[ancestor]} (with a WHERE on the partition key) "
                            f"instead of {t}, or the partitions alone")

    def published_tables(self) -> list[str]:
        """The tables the publication holds: those pg_publication_tables lists
        (partitions instead of their root without publish_via_partition_root)
        and those added to it by name (a partitioned root, whatever the option)."""
        rows = self._query(
            "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s"
            " UNION SELECT n.nspname, c.relname FROM pg_publication p"
            " JOIN pg_publication_rel r ON r.prpubid = p.oid JOIN pg_class c ON c.oid = r.prrelid"
            " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE p.pubname = %s",
            (self.publication, self.publication))
        return sorted(_display(s, t) for s, t in rows)

    def _setup_slot(self) -> None:
        info = self.slot_info()
        if info["exists"]:
            self._check_slot(info)
            return
        try:
            with self._lock:
                self.conn().execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')",
                                    (self.slot,))
            log.info("created logical replication slot %s (pgoutput)", self.slot)
        except psycopg.errors.DuplicateObject:
            self._check_slot(self.slot_info())
        except psycopg.errors.InsufficientPrivilege:
            raise self._no_replication_role() from None
        except psycopg.Error as e:
            err = self._sql_error(e, f"creating replication slot {self.slot}")
            raise (err or SourceError(
                f"{self._where}: cannot create replication slot {self.slot!r}: "
                f"{_first_line(str(e))}")) from None

    def _check_slot(self, info: dict[str, Any]) -> None:
        db = self._query("SELECT current_database()")[0][0]
        if info["slot_type"] != "logical" or info["plugin"] != "pgoutput":
            kind = info["plugin"] or info["slot_type"]
            raise SourceError(
                f"{self._where}: replication slot {self.slot!r} already exists for {kind}, "
                "not pgoutput",
                fix=f"set another `slot:` in the pipeline config, or drop it if unused: "
                    f"SELECT pg_drop_replication_slot('{self.slot}');")
        if info["database"] != db:
            raise SourceError(
                f"{self._where}: replication slot {self.slot!r} belongs to database "
                f"{info['database']!r}, not {db!r}",
                fix="set another `slot:` in the pipeline config (one slot per pipeline)")

    def _slot_in_use(self, pid: int | None) -> SourceError:
        by = f" by process {pid}" if pid else ""
        return SourceError(
            f"{self._where}: replication slot {self.slot!r} is in use{by}; another pipeline or "
            "client streams from it",
            fix="stop the other consumer, or give this pipeline its own `slot:` in the config")

    def teardown(self) -> None:
        """Drop the slot and the publication (the source then retains no WAL for us)."""
        with self._lock:
            info = self.slot_info()
            if info["exists"]:
                if info["active"]:
                    raise self._slot_in_use(info["active_pid"])
                self._query("SELECT pg_drop_replication_slot(%s)", (self.slot,),
                            doing=f"dropping replication slot {self.slot}")
                log.info("dropped replication slot %s", self.slot)
            self._query(sql.SQL("DROP PUBLICATION IF EXISTS {}").format(
                sql.Identifier(self.publication)), doing="dropping the publication")

    # --- streaming ----------------------------------------------------------------------
    def factory(self) -> functools.partial[PostgresSource]:
        """A picklable recipe for an identical source (built in the decoder process)."""
        return functools.partial(PostgresSource, self.url, slot=self.slot,
                                 publication=self.publication, tables=self.tables,
                                 heartbeat_seconds=self.heartbeat_seconds,
                                 status_interval=self.status_interval,
                                 text_values=self.text_values, copy_types=self.copy_types,
                                 packed=True)

    def ack(self, position: Lsn) -> None:
        """Record that the target committed everything up to ``position`` (any thread).

        The stream reports it to the server with its next status update; only
        then may the server recycle the WAL before it.
        """
        with self._ack_lock:
            if self._acked is None or position > self._acked:
                self._acked = position

    def _acked_value(self) -> int:
        # Polled on every idle turn of the read loop: one attribute read is
        # atomic, no lock needed (``ack`` holds it only to compare-and-set).
        acked = self._acked
        return acked.value if acked is not None else 0

    def preflight(self, start: Lsn | None) -> Lsn:
        """Check everything ``stream`` needs; returns where the slot will resume."""
        self.check_server()
        info = self.slot_info()
        if not info["exists"]:
            raise SourceError(f"{self._where}: replication slot {self.slot!r} does not exist",
                              fix="run `cdc setup`")
        self._check_slot(info)
        deadline = time.monotonic() + _SLOT_BUSY_WAIT
        while info["active"] and time.monotonic() < deadline:
            time.sleep(0.1)
            info = self.slot_info()
        if info["active"]:
            raise self._slot_in_use(info["active_pid"])
        pub = self._query("SELECT puballtables FROM pg_publication WHERE pubname = %s",
                          (self.publication,))
        if not pub:
            raise SourceError(f"{self._where}: publication {self.publication!r} does not exist",
                              fix="run `cdc setup`")
        partitioned = self.partitioned_tables()
        if partitioned and not self.publishes_via_root():
            # The partitions' changes would arrive under their own names and
            # match no rule: stop rather than stream past them.
            raise SourceError(
                f"{self._where}: publication {self.publication!r} publishes the partitions of "
                f"{', '.join(partitioned)} under their own names "
                "(publish_via_partition_root is off)",
                fix=f"ALTER PUBLICATION {_quote_ident(self.publication)} SET "
                    "(publish_via_partition_root = true); (or run `cdc setup`)")
        for root, leaf, fix, _full in self.partition_identity_problems():
            log.warning("partition %s of %s lacks the replica identity its updates and deletes "
                        "need; fix: %s (or run `cdc setup`)", leaf, root, fix)
        if not pub[0][0]:
            have = set(self.published_tables())
            missing = [t for t in self.tables if t not in have]
            if missing:
                tables = ", ".join(_quote_qualified(*split_name(t, "public")) for t in missing)
                raise SourceError(
                    f"{self._where}: publication {self.publication!r} does not include "
                    f"{', '.join(missing)}, which the rules read",
                    fix=f"ALTER PUBLICATION {_quote_ident(self.publication)} ADD TABLE "
                        f"{tables}; (or run `cdc setup`)")
        flushed: Lsn | None = info["confirmed_flush_lsn"]
        if start is not None and flushed is not None and start < flushed:
            raise SourceError(
                f"{self._where}: the target's position {start} is behind replication slot "
                f"{self.slot!r} ({flushed}); the changes in between are no longer available",
                fix="run `cdc snapshot` to re-bootstrap the target")
        if start is not None:
            return start
        return flushed or Lsn(0)

    def stream(self, start: Lsn | None, stop: threading.Event) -> Iterator[Transaction]:
        """Yield committed transactions after ``start`` until ``stop`` is set.

        ``start`` is the position of the last transaction the target committed
        (None: where the slot stands).  Raises ``ConnectionLost`` when the
        connection breaks; the supervisor resumes from the target's offset.
        """
        resume = self.preflight(start)
        oids = {oid: name for name, oid in self._table_oids().items()}
        repl = self._connect(replication="database")
        try:
            yield from self._stream(repl, start, resume, stop, oids)
        finally:
            try:
                repl.close()
            except psycopg.Error:
                pass

    def _start(self, repl: psycopg.Connection[Any], start: Lsn | None) -> None:
        options = sql.SQL("proto_version '1', publication_names {}, messages 'true'").format(
            sql.Literal(sql.Identifier(self.publication).as_string(repl)))
        stmt = sql.SQL("START_REPLICATION SLOT {} LOGICAL {} ({})").format(
            sql.Identifier(self.slot), sql.SQL(str(start or Lsn(0))), options)
        deadline = time.monotonic() + _SLOT_BUSY_WAIT
        while True:
            try:
                repl.execute(stmt)
                return
            except psycopg.errors.ObjectInUse:
                if time.monotonic() >= deadline:
                    raise self._slot_in_use(None) from None
                time.sleep(0.1)
            except psycopg.errors.UndefinedObject:
                raise SourceError(
                    f"{self._where}: replication slot {self.slot!r} does not exist",
                    fix="run `cdc setup`") from None
            except psycopg.errors.InsufficientPrivilege:
                raise self._no_replication_role() from None
            except psycopg.Error as e:
                err = self._sql_error(e, "starting replication")
                raise (err or SourceError(f"{self._where}: cannot start replication: "
                                          f"{_first_line(str(e))}")) from None

    def _stream(self, repl: psycopg.Connection[Any], start: Lsn | None, resume: Lsn,
                stop: threading.Event, oids: dict[int, str]) -> Iterator[Transaction]:
        self._start(repl, start)
        log.info("streaming slot %s from %s", self.slot, resume)
        pgconn = repl.pgconn
        decoder = Decoder(text_values=self.text_values,
                          copy_types=None if self.text_values else self.copy_types)
        tables = set(self.tables)
        sel = selectors.DefaultSelector()
        sel.register(pgconn.socket, selectors.EVENT_READ)

        changes: list[Any] | None = None  # None: no transaction open
        packed_cols: dict[str, tuple[str, ...]] | None = None
        # Text values: changes become COPY text lines at once (Decoder.copy_change),
        # per relation shape, until one needs the value path (an UNCHANGED TOAST
        # value); later changes of that transaction take it too, so each
        # table's text lines still come before its value changes.
        segs: list[tuple[RelationInfo, bytearray, list[bytes]]] = []
        seg: tuple[RelationInfo, bytearray, list[bytes]] | None = None
        text_ok = False
        unchanged = False  # a TOAST value was left out ('u') in this transaction
        truncated = False
        heartbeat_msg = False
        origin: str | None = None
        # Column names and type OIDs of the Relation messages of this
        # transaction (cdc.pause compares them with the plan's).
        relations: dict[str, tuple[tuple[str, int], ...]] = {}
        shapes: dict[int, tuple[tuple[str, int], ...]] = {}
        last_pos = resume.value  # highest safe resume point seen
        server_end = 0  # sentPtr from the latest keepalive
        last_yield = time.monotonic()
        last_status = 0.0
        sent_ack = -1
        probe_every = min(self.status_interval, max(self.heartbeat_seconds, _ACK_MIN_INTERVAL))

        pending: tuple[int, Any] | None = None  # a frame read ahead, handled next

        def read() -> tuple[int, Any]:
            try:
                return pgconn.get_copy_data(1)
            except psycopg.OperationalError as e:
                raise ConnectionLost(f"{self._where}: replication connection lost: "
                                     f"{_first_line(str(e))}") from None

        def send_status(now: float) -> None:
            nonlocal last_status, sent_ack
            # Never more than the target has committed: the server may discard
            # WAL before the flush position we report.
            lsn = self._acked_value()
            try:
                pgconn.put_copy_data(_STATUS.pack(b"r", lsn, lsn, lsn, _pg_clock(), 0))
                pgconn.flush()
            except psycopg.OperationalError as e:
                raise ConnectionLost(f"{self._where}: replication connection lost: "
                                     f"{_first_line(str(e))}") from None
            last_status, sent_ack = now, lsn

        try:
            while not stop.is_set():
                if pending is not None:
                    (n, frame), pending = pending, None
                else:
                    n, frame = read()
                now = time.monotonic()
                if n == 0:
                    idle_due = changes is None and now - last_yield >= self.heartbeat_seconds
                    if (now - last_status >= self.status_interval
                            or (self._acked_value() != sent_ack
                                and now - last_status >= _ACK_MIN_INTERVAL)
                            or (idle_due and now - last_status >= probe_every)):
                        send_status(now)
                    if idle_due:
                        # Idle or only unpublished traffic: still hand out a position
                        # so the target can ack it and the slot moves on.
                        last_pos = max(last_pos, server_end)
                        last_yield = now
                        yield Transaction([], Lsn(last_pos), None, heartbeat=True)
                        continue
                    sel.select(_POLL_SECONDS)
                    try:
                        pgconn.consume_input()
                    except psycopg.OperationalError as e:
                        raise ConnectionLost(f"{self._where}: replication connection lost: "
                                             f"{_first_line(str(e))}") from None
                    continue
                if n < 0:
                    raise self._copy_ended(repl)
                kind = frame[0]
                if kind == 0x6B:  # 'k' keepalive
                    wal_end, _clock, reply = _KEEPALIVE.unpack_from(frame, 1)
                    server_end = max(server_end, wal_end)
                    if reply:
                        send_status(now)
                    continue
                if kind != 0x77:  # 'w' XLogData
                    continue
                if text_ok:
                    buf = bytes(frame)
                    got = decoder.copy_change(buf, 25)
                    if got is not None:
                        # Under load row changes come in runs: take the whole run
                        # here, without the loop's per-message checks (stop, clock,
                        # status); they run again at the next other message, at
                        # the latest the transaction's Commit, which goes back
                        # through the loop as ``pending``.
                        while True:
                            info, op, lines = got
                            if info.table in tables:
                                # A new segment whenever the table changes keeps
                                # source order across tables (cdc.targets.steps).
                                if seg is None or seg[0] is not info:
                                    seg = (info, bytearray(), [])
                                    segs.append(seg)
                                seg[1].append(op)
                                seg[2].append(lines)
                            n, frame = read()
                            if n > 0 and frame[0] == 0x77:
                                buf = bytes(frame)
                                got = decoder.copy_change(buf, 25)
                                if got is not None:
                                    continue
                            pending = (n, frame)
                            break
                        continue
                    msg = decoder.decode(buf[25:])
                    if isinstance(msg, Insert | Update | Delete):
                        text_ok = False
                else:
                    msg = decoder.decode(frame[25:])
                if isinstance(msg, Insert | Update | Delete):
                    info = decoder.relation(msg.relation_oid)
                    if changes is None:
                        raise ProtocolError("pgoutput: row change outside a transaction")
                    if info.table in tables:
                        if not unchanged and (type(msg) is not Insert and (
                                type(getattr(msg, "old", None)) is TupleWithUnchanged
                                or type(getattr(msg, "new", None)) is TupleWithUnchanged)):
                            unchanged = True
                        if packed_cols is None:
                            changes.append(decoder.row_change(info, msg))
                        else:
                            names = packed_cols.setdefault(info.table, info.names)
                            changes.append((*decoder.packed_change(info, msg),
                                            None if names is info.names or names == info.names
                                            else info.names))
                elif isinstance(msg, Begin):
                    changes, truncated, heartbeat_msg, origin = [], False, False, None
                    relations = {}
                    packed_cols = {} if self.packed else None
                    unchanged = False
                    segs, seg, text_ok = [], None, self.copy_text
                elif isinstance(msg, Commit):
                    last_pos = max(last_pos, msg.end_lsn)
                    text = [(i.table, i.names, i.key_index, bytes(ops), b"".join(lines))
                            for i, ops, lines in segs] if segs else None
                    segs, seg, text_ok = [], None, False
                    if changes or text:
                        # Lets cdc.toast skip scanning every row of this transaction.
                        extra: dict[str, Any] = {"unchanged": unchanged}
                        if truncated:
                            extra["truncate"] = True  # cdc.batch.Batch.has_truncate
                        if relations:
                            extra["relations"] = relations
                        if origin is not None:
                            extra["origin"] = origin
                        last_yield = now
                        if packed_cols is not None:
                            # Already in cdc.reader.pack's form (decoder process).
                            yield (Lsn(msg.end_lsn), msg.commit_time, False,  # type: ignore[misc]
                                   extra, packed_cols, changes or [], text)
                        else:
                            yield Transaction(changes or [], Lsn(msg.end_lsn), msg.commit_time,
                                              extra=extra, text=None if text is None else
                                              [TextRows(*t) for t in text])
                    elif heartbeat_msg or now - last_yield >= self.heartbeat_seconds:
                        last_yield = now
                        yield Transaction([], Lsn(msg.end_lsn), msg.commit_time,
                                          heartbeat=True)
                    changes = None
                elif isinstance(msg, Relation):
                    was = oids.get(msg.oid)
                    if was is not None and was != msg.qualified_name:
                        # Its changes would no longer match any rule: stop, don't drop them.
                        raise SourceError(
                            f"{self._where}: source table {was} was renamed to "
                            f"{msg.qualified_name}",
                            fix="rename it back, or update the rules and the config, then "
                                "run `cdc setup`")
                    self._resolve_types(decoder, msg)
                    shape = tuple((c.name, c.type_oid) for c in msg.columns)
                    if msg.qualified_name in tables and shapes.get(msg.oid, shape) != shape:
                        # Changed since this session's first one (which the
                        # plan, built from the catalog at start, already knows).
                        relations[msg.qualified_name] = shape
                    shapes[msg.oid] = shape
                elif isinstance(msg, Origin):
                    # Set when the writer used a replication origin (e.g. the
                    # reverse pipeline): lets a bidirectional setup skip its echoes.
                    origin = msg.name
                elif isinstance(msg, Truncate):
                    if changes is None:
                        raise ProtocolError("pgoutput: truncate outside a transaction")
                    for oid in msg.relation_oids:
                        name = decoder.relation(oid).table
                        if name in tables:
                            # An event in source order: what follows it in this
                            # transaction takes the value path, after the text.
                            text_ok, truncated = False, True
                            changes.append((name, "T", None, None, False, None)
                                           if packed_cols is not None
                                           else truncate_change(name))
                elif isinstance(msg, Message):
                    if msg.prefix == HEARTBEAT_PREFIX and msg.transactional:
                        heartbeat_msg = True
                elif isinstance(msg, StreamStart | StreamStop | StreamCommit | StreamAbort):
                    raise ProtocolError("pgoutput: streamed transaction received although "
                                        "streaming was not requested")
                # Type messages need no action: the decoder keeps them.
                if (now - last_status >= self.status_interval
                        or (self._acked_value() != sent_ack
                            and now - last_status >= _ACK_MIN_INTERVAL)):
                    send_status(now)
            # A clean stop: report the latest ack before hanging up.
            if self._acked_value() != sent_ack:
                send_status(time.monotonic())
        finally:
            sel.close()

    def _copy_ended(self, repl: psycopg.Connection[Any]) -> CdcError:
        """The server ended the COPY: fetch its reason."""
        pgconn = repl.pgconn
        res = pgconn.get_result()
        while res is not None and res.status == ExecStatus.COPY_BOTH:
            res = pgconn.get_result()
        if res is not None and res.status == ExecStatus.FATAL_ERROR:
            state = (res.error_field(DiagnosticField.SQLSTATE) or b"").decode()
            text = (res.error_message or b"").decode("utf-8", "replace").strip()
            cls = pgerr.lookup(state) if state else psycopg.OperationalError
            err = self._sql_error(cls(text), "streaming")
            if err is not None:
                return err
            if issubclass(cls, pgerr.UndefinedObject):
                return SourceError(f"{self._where}: streaming stopped: {_first_line(text)}",
                                   fix="run `cdc setup` (publication or slot missing)")
            return SourceError(f"{self._where}: streaming stopped: {_first_line(text)}")
        return ConnectionLost(f"{self._where}: the server ended replication "
                              f"({pgconn.get_error_message() or 'no reason given'})")

    def _resolve_types(self, decoder: Decoder, rel: Relation) -> None:
        """Point domains at their base type and arrays of enums at text[]."""
        unknown = decoder.unknown_type_oids(rel)
        if not unknown:
            return
        rows = self._query(
            "WITH RECURSIVE base(oid, cur, depth) AS ("
            "  SELECT t.oid, t.oid, 0 FROM pg_type t WHERE t.oid = ANY(%s)"
            "  UNION ALL SELECT b.oid, t.typbasetype, b.depth + 1 FROM base b"
            "  JOIN pg_type t ON t.oid = b.cur WHERE t.typtype = 'd' AND b.depth < 10)"
            " SELECT DISTINCT ON (b.oid) b.oid::int, t.oid::int, t.typcategory, t.typelem::int,"
            "  e.typbasetype::int, be.typarray::int"
            " FROM base b JOIN pg_type t ON t.oid = b.cur"
            " LEFT JOIN pg_type e ON e.oid = t.typelem"
            " LEFT JOIN pg_type be ON be.oid = e.typbasetype"
            " ORDER BY b.oid, b.depth DESC", (unknown,), doing="reading column types")
        for oid, base, category, elem, elem_base, elem_base_array in rows:
            if _text(category) == "A" and elem:
                if elem_base and elem_base_array:
                    decoder.alias_type(oid, elem_base_array)  # array of a domain
                elif not decoder.has_loader(elem):
                    decoder.alias_type(oid, TEXT_ARRAY_OID)  # array of enums etc.: list of str
                else:
                    decoder.alias_type(oid, base)
            elif base != oid:
                decoder.alias_type(oid, base)



def _display(schema: str, name: str) -> str:
    return names.qualified(None if schema == "public" else schema, name)


def _quote_ident(name: str) -> str:
    if re.fullmatch(r"[a-z_][a-z0-9_$]*", name):
        return name
    return '"' + name.replace('"', '""') + '"'


def _quote_qualified(schema: str, name: str) -> str:
    if schema == "public":
        return _quote_ident(name)
    return f"{_quote_ident(schema)}.{_quote_ident(name)}"


def _text(v: Any) -> str:
    # "char" columns (relreplident, typcategory) arrive as bytes or str by driver version.
    return v.decode() if isinstance(v, bytes | bytearray) else str(v)


def _first_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[0] if lines else text
