"""Bootstrap target tables from a full read of the source, then hand over.

Algorithm (docs/snapshot.md has the argument in full):

* The pipeline's offset row in the target is the hand-over point.  For a new
  pipeline it is created *before* the first chunk at the source's current
  position (MySQL) or the slot's position (PostgreSQL), so streaming later
  replays everything that happened during the copy.
* Each table is read in primary-key order by keyset pagination, one chunk per
  target transaction.  That transaction first takes a SHARE lock on the
  pipeline's offset row, *then* reads the chunk from the source, applies it
  through the same staging tables and rule SQL as streaming, and records the
  chunk's progress.  `cdc run` takes the same row FOR UPDATE at the start of
  each batch, so while a chunk is read and applied no batch commits: every
  change the stream applies after the chunk is newer than the chunk's read,
  every change applied before it is older.  Upserts are idempotent, so
  replaying older changes over newer rows only delays convergence; the last
  change of each row is always applied last.  Nothing is lost.
* Progress (last key, rows, chunks) commits with each chunk: a killed snapshot
  resumes after the last committed chunk.

No source locks are taken: each chunk is a plain short read.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import queue
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import sqlglot
from sqlglot.errors import ParseError, TokenError

from cdc import names
from cdc.batch import Batch
from cdc.catalog import split_name
from cdc.config import Config
from cdc.deadletter import image_from_json, image_to_json
from cdc.errors import CdcError, ConfigError, TerminalError, TransientError
from cdc.events import RowChange, Transaction
from cdc.plan import Plan, attach_converters, build_plan, parse_rules
from cdc.positions import BinlogPosition, Position
from cdc.rules.compile import ident, table_sql
from cdc.rules.parse import sqlglot_dialect
from cdc.sources import copytext, open_source
from cdc.targets import open_target

log = logging.getLogger("cdc.snapshot")


@dataclass(slots=True)
class TableProgress:
    table: str
    rows_done: int = 0
    rows_estimated: int | None = None
    chunks_done: int = 0
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None
    resumed: bool = False
    skipped: bool = False
    # How rows travelled: "source text" (cdc.sources.copytext) or "values".
    path: str = "values"

    @property
    def seconds(self) -> float:
        return (self.finished or time.monotonic()) - self.started


ProgressCallback = Callable[[TableProgress], None]


def _check_where(where: str | None, dialect: str) -> None:
    if not where:
        return
    try:
        sqlglot.parse_one(f"SELECT 1 WHERE {where}", read=dialect)
    except (ParseError, TokenError) as e:
        raise ConfigError(f"--where {where!r} is not a valid condition: "
                          f"{str(e).splitlines()[0]}") from None


@dataclass(slots=True)
class Chunk:
    """One keyset chunk as read: value rows, or COPY text the source rendered."""

    count: int
    # The highest key the chunk covers; None when it runs to the table's end.
    last_key: tuple[Any, ...] | None
    # No rows lie beyond this chunk (when it was read).
    final: bool
    rows: list[tuple[Any, ...]] = field(default_factory=list)
    text: bytes | None = None


class ChunkReader:
    """Keyset pagination over one source table, on its own connection.

    With ``text=True`` and a type set that allows it (cdc.sources.copytext),
    the source server renders each row as a COPY text line for a PostgreSQL
    target, and hands a whole chunk over as one value: Python only passes the
    bytes on.  Such a chunk is the key range up to the ``chunk_rows``-th key
    after the last one, found first by an index-only read.
    """

    def __init__(self, config: Config, table: str, columns: list[str],
                 pk: list[str], where: str | None, chunk_rows: int,
                 line_sql: str | None = None, costly_sql: str | None = None,
                 read_only: bool = False) -> None:
        self.config = config
        # `cdc preview`: a --where that calls a writing function fails instead.
        self.read_only = read_only
        self.kind = config.source.kind
        d = sqlglot_dialect(self.kind)
        cols = ", ".join(ident(c, d) for c in columns)
        keys = ", ".join(ident(c, d) for c in pk)
        marks = ", ".join(["%s"] * len(pk))
        cond = f"({where})" if where else "1 = 1"
        tref = table_sql(table, d) if self.kind == "mysql" else _pg_table(table)
        order = f"ORDER BY {keys}"
        limit = f"LIMIT {int(chunk_rows)}"
        after = f"({keys}) > ({marks})"
        upto = f"({keys}) <= ({marks})"

        def select(what: str, *conds: str, lim: str = limit, by: str = order) -> str:
            where_sql = " AND ".join((cond, *conds))
            return f"SELECT {what} FROM {tref} WHERE {where_sql} {by} {lim}"  # noqa: S608

        def bounded(what: str, a: bool, u: bool, by: str = order) -> str:
            return select(what, *((after,) if a else ()), *((upto,) if u else ()), lim="",
                          by=by)

        self.sql: dict[Any, str] = {
            (False, False): select(cols),
            (False, True): select(cols, after),
        }
        # A re-read of exactly the key range a text chunk covered.
        for a in (False, True):
            for u in (False, True):
                self.sql[("range", a, u)] = bounded(cols, a, u)
        self.line_sql = line_sql
        if line_sql is not None:
            block = (copytext.mysql_block(line_sql, keys, costly_sql) if self.kind == "mysql"
                     else copytext.postgres_block(line_sql, keys))
            for a in (False, True):
                # The chunk_rows-th key after the last one: where this chunk ends.
                self.sql[("edge", a)] = select(
                    keys, *((after,) if a else ()),
                    lim=f"LIMIT 1 OFFSET {int(chunk_rows) - 1}")
                for u in (False, True):
                    self.sql[("block", a, u)] = bounded(block, a, u, by="")
                    self.sql[("lines", a, u)] = bounded(line_sql, a, u)
        self.columns = columns
        self.pk_index = [columns.index(c) for c in pk]
        self.chunk_rows = chunk_rows
        self._conn: Any = None
        # Chunks are read on one thread; a refused chunk's re-read comes from
        # the thread that applied it.
        self._lock = threading.Lock()
        self._told_costly = False

    def _connection(self) -> Any:
        if self._conn is None:
            if self.kind == "mysql":
                from cdc.sources.mysql import connect

                self._conn = connect(self.config.source, timeout=self.config.connect_timeout)
                with self._conn.cursor() as cur:
                    # Whole chunks as one value (copytext.mysql_block); the
                    # server still cuts at max_allowed_packet, which
                    # copytext.whole notices.
                    cur.execute("SET SESSION group_concat_max_len = 4294967295")
                    if self.read_only:
                        cur.execute("SET SESSION TRANSACTION READ ONLY")
            else:
                import psycopg

                from cdc.sources import pgjson

                self._conn = psycopg.connect(self.config.source.libpq(), autocommit=True)
                pgjson.register(self._conn.adapters)  # as the stream loads JSON
                # ::text output follows these; pin them (cdc.sources.copytext).
                self._conn.execute("SET TimeZone = 'UTC'")
                self._conn.execute("SET DateStyle = 'ISO, MDY'")
                self._conn.execute("SET IntervalStyle = 'postgres'")
                self._conn.execute("SET extra_float_digits = 1")
                if self.read_only:
                    self._conn.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
        return self._conn

    def _fetch(self, query: str, params: list[Any] | None) -> list[tuple[Any, ...]]:
        with self._lock:
            conn = self._connection()
            if self.kind == "mysql":
                with conn.cursor() as cur:
                    cur.execute(query, params or None)
                    return list(cur.fetchall())
            return conn.execute(query.encode(), params or None).fetchall()

    def _fetch_block(self, query: str, params: list[Any]) -> tuple[bytes | None, int, int]:
        """(text, rows, costly rows left out of the text)"""
        if self.kind == "mysql":
            data, count, costly = self._fetch(query, params)[0]
            return data, int(count), int(costly)
        import psycopg

        try:
            data, count, costly = self._fetch(query, params)[0]
        except psycopg.errors.ProgramLimitExceeded:
            return None, -1, 0  # over 1 GB of text in one chunk: read it line by line
        return (bytes(data) if data is not None else None), int(count), int(costly)

    def read(self, last_key: tuple[Any, ...] | None, *, text: bool = False) -> Chunk:
        if text and self.line_sql is not None:
            return self._read_text(last_key)
        params = list(last_key) if last_key is not None else None
        rows = self._fetch(self.sql[(False, last_key is not None)], params)
        return Chunk(len(rows), self.key_of(rows[-1]) if rows else None,
                     len(rows) < self.chunk_rows, rows=rows)

    def _read_text(self, last_key: tuple[Any, ...] | None) -> Chunk:
        a = last_key is not None
        after = list(last_key or ())
        edge = self._fetch(self.sql[("edge", a)], after)
        upto = tuple(edge[0]) if edge else None
        params = [*after, *(upto or ())]
        data, count, costly = self._fetch_block(self.sql[("block", a, upto is not None)],
                                                params)
        if count == 0:
            return Chunk(0, upto, upto is None, text=b"")
        if costly:
            # Long strings (copytext.LONG_STRING): this chunk travels as values.
            if not self._told_costly:
                self._told_costly = True
                log.info("rows with strings over %d bytes are read value by value",
                         copytext.LONG_STRING)
            return self.read_range(last_key, upto)
        if not copytext.whole(data, count):
            # Too big for one value on this server: the same range, a row each.
            rows = self._fetch(self.sql[("lines", a, upto is not None)], params)
            log.info("a chunk of %d rows is larger than the source hands over in one value; "
                     "read row by row", len(rows))
            data, count = "\n".join(r[0] for r in rows).encode(), len(rows)
            if count == 0:
                return Chunk(0, upto, upto is None, text=b"")
        assert data is not None
        return Chunk(count, upto, upto is None, text=data + b"\n")

    def read_range(self, last_key: tuple[Any, ...] | None,
                   upto: tuple[Any, ...] | None) -> Chunk:
        """The value rows of exactly the key range (last_key, upto]."""
        params = [*(last_key or ()), *(upto or ())]
        rows = self._fetch(self.sql[("range", last_key is not None, upto is not None)], params)
        return Chunk(len(rows), upto, upto is None, rows=rows)

    def key_of(self, row: tuple[Any, ...]) -> tuple[Any, ...]:
        return tuple(row[i] for i in self.pk_index)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _pg_table(name: str) -> str:
    schema, table = split_name(name, "public")
    return f"{ident(schema, 'postgres')}.{ident(table, 'postgres')}"


def estimate_rows(config: Config, source: Any, table: str) -> int | None:
    try:
        if config.source.kind == "mysql":
            with source.conn().cursor() as cur:
                cur.execute("SELECT TABLE_ROWS FROM information_schema.TABLES"
                            " WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s",
                            split_name(table, config.source.database))
                row = cur.fetchone()
                return int(row[0]) if row and row[0] is not None else None
        # A partitioned table holds no rows itself: count its partitions' (a
        # plain table is its own one leaf).
        rows = source._query("SELECT sum(GREATEST(l.reltuples, 0))::bigint FROM pg_class c"
                             " JOIN pg_namespace n ON n.oid = c.relnamespace"
                             " JOIN LATERAL pg_partition_tree(c.oid) p ON p.isleaf"
                             " JOIN pg_class l ON l.oid = p.relid"
                             " WHERE n.nspname = %s AND c.relname = %s",
                             split_name(table, "public"))
        return max(0, int(rows[0][0])) if rows and rows[0][0] is not None else None
    except (CdcError, Exception):  # an estimate is a nicety, never a failure
        return None


class Snapshot:
    def __init__(self, config: Config, *, tables: list[str] | None = None,
                 where: str | None = None, truncate: bool = False, force: bool = False,
                 workers: int | None = None, chunk_rows: int | None = None,
                 progress: ProgressCallback | None = None,
                 stop: threading.Event | None = None) -> None:
        self.config = config
        self.tables = tables
        self.where = where
        self.truncate = truncate
        self.force = force
        self.workers = workers or config.snapshot_workers
        self.chunk_rows = chunk_rows or config.snapshot_chunk_rows
        self.progress = progress or (lambda p: None)
        self.stop = stop or threading.Event()
        # The key of each table's last committed chunk in this run.
        self._last_committed: dict[str, tuple[Any, ...]] = {}

    def run(self) -> list[TableProgress]:
        cfg = self.config
        _check_where(self.where, sqlglot_dialect(cfg.source.kind))
        rules = parse_rules(cfg)
        source = open_source(cfg, sorted({r.source.name for r in rules}))
        target = open_target(cfg)
        try:
            target.require_schema()
            plan = build_plan(cfg, source, target, rules)
            attach_converters(plan, cfg)
            chosen = self._choose_tables(plan)
            for t in chosen:
                self._check_truncate(plan, t)
            self._ensure_offset(source, target)
            jobs = [self._prepare_table(target, source, plan, t) for t in chosen]
        finally:
            source.close()
            target.close()
        results: list[TableProgress] = []
        todo = [j for j in jobs if not j[1].skipped]
        results.extend(j[1] for j in jobs if j[1].skipped)
        # `workers` target connections apply chunks at once: one table each
        # when there are many tables, several chunks of one table when fewer.
        tables_at_once = max(1, min(self.workers, len(todo) or 1))
        depth = max(1, self.workers // tables_at_once)
        if cfg.target.kind != "postgresql":
            # Chunks keep their commit order through PostgreSQL advisory locks
            # (snapshot_turn_*); a MySQL target applies one chunk at a time.
            depth = 1
        with ThreadPoolExecutor(max_workers=tables_at_once) as pool:
            for res in pool.map(lambda j: self._copy_table(plan, j[0], j[1], j[2], depth), todo):
                results.append(res)
        if not self.stop.is_set():
            target = open_target(cfg)
            try:
                target.snapshot_ended()
            finally:
                target.close()
        return results

    # --- preparation ----------------------------------------------------------
    def _choose_tables(self, plan: Plan) -> list[str]:
        if not self.tables:
            return list(plan.stages)
        out = []
        for given in self.tables:
            t = names.resolve(given, list(plan.stages))
            if t is None:
                raise ConfigError(f"--table {given!r}: no rule reads it (rules read: "
                                  f"{', '.join(plan.stages)})")
            out.append(t)
        return out

    def _check_truncate(self, plan: Plan, table: str) -> None:
        if not self.truncate:
            return
        mine = {r.bound.rule.target.name for r in plan.by_table[table]}
        for other, rules in plan.by_table.items():
            if other != table and mine & {r.bound.rule.target.name for r in rules}:
                raise ConfigError(f"--truncate: a target table of {table!r} is also written "
                                  f"by rules reading {other!r}; truncating would remove their "
                                  "rows too")

    def _ensure_offset(self, source: Any, target: Any) -> None:
        """A new pipeline gets its streaming start *before* any row is read."""
        if target.load_offset() is not None:
            return
        pos: Position
        if self.config.source.kind == "mysql":
            pos = source.current_position()
        else:
            info = source.slot_info()
            if not info.get("exists"):
                raise TerminalError(f"replication slot {self.config.slot!r} does not exist",
                                    fix="run `cdc setup` first")
            pos = info["confirmed_flush_lsn"]
        target.save_offset(pos, only_if_missing=True)
        log.info("streaming will start at %s, before the snapshot's first read", pos)

    def _prepare_table(self, target: Any, source: Any, plan: Plan,
                       table: str) -> tuple[str, TableProgress, tuple[Any, ...] | None]:
        state = target.snapshot_state(table)
        prog = TableProgress(table)
        explicit = bool(self.tables)
        if state and state["state"] == "done" and not (self.force or explicit):
            prog.skipped = True
            prog.rows_done = state["rows_done"]
            log.info("%s: already snapshotted (use --force or --table to copy again)", table)
            return table, prog, None
        if state and state["state"] == "copying" and not self.force and \
                (state["where_clause"] or None) == (self.where or None):
            prog.resumed = True
            prog.rows_done = state["rows_done"]
            prog.chunks_done = state["chunks_done"]
            prog.rows_estimated = state["rows_estimated"]
            key = image_from_json(json.loads(state["last_key"])) if state["last_key"] else None
            last = tuple(key[c] for c in plan.stages[table].source.row_key) if key else None
            log.info("%s: resuming after %d rows in %d chunks", table, prog.rows_done,
                     prog.chunks_done)
            return table, prog, last
        prog.rows_estimated = estimate_rows(self.config, source, table)
        targets = sorted({r.bound.rule.target.name for r in plan.by_table[table]})
        target.snapshot_begin(table, self.where, prog.rows_estimated,
                              truncate=targets if self.truncate else [])
        return table, prog, None

    # --- copying --------------------------------------------------------------
    def _text_line(self, plan: Plan, table: str) -> str | None:
        """The source-rendered COPY line for this table, when it can take that path."""
        if self.config.target.kind != "postgresql" or not self.config.snapshot_source_text:
            return None
        if any(r.validations for r in plan.by_table[table]):
            return None  # validation conditions look at values one change at a time
        stage = plan.stages[table]
        if self.config.source.kind == "mysql":
            return copytext.mysql_line(stage.source.columns, self.config.zero_dates)
        return copytext.postgres_line(stage.source.columns, stage.types)

    def _open_chunk(self, target: Any, reader: ChunkReader, last: tuple[Any, ...] | None,
                    table: str = "", n: int | None = None) -> _OpenChunk:
        """Begin a chunk's target transaction, lock, then read from the source.

        Runs on the read-ahead thread while the previous chunk applies.  Its
        SHARE lock is compatible with the previous chunk's, and the stream's
        FOR UPDATE waits for both, so every chunk is still read and applied
        under its own lock (see the module docstring).
        """
        stack = contextlib.ExitStack()
        try:
            conn = stack.enter_context(target.transaction())
            target.snapshot_chunk_begin(conn)
            target.lock_offset_shared(conn)
            if n is not None:
                target.snapshot_turn(conn, table, n)
            chunk = reader.read(last, text=reader.line_sql is not None)
        except BaseException:
            stack.close()
            raise
        return _OpenChunk(target, conn, stack, last, chunk, n)

    def _copy_table(self, plan: Plan, table: str, prog: TableProgress,
                    last: tuple[Any, ...] | None, depth: int = 1) -> TableProgress:
        cfg = self.config
        stage = plan.stages[table]
        pk = list(stage.source.row_key)
        line = self._text_line(plan, table)
        costly = copytext.mysql_costly(stage.source.columns) \
            if line is not None and cfg.source.kind == "mysql" else None
        reader = ChunkReader(cfg, table, stage.columns, pk, self.where, self.chunk_rows,
                             line, costly)
        prog.path = "source text" if reader.line_sql is not None else "values"
        try:
            while True:
                try:
                    self._copy_chunks(plan, table, prog, reader, last, depth)
                    return prog
                except TransientError as e:
                    # Chunks applied side by side can deadlock when rules map
                    # rows of two chunks to one target row; the server picks a
                    # victim.  Everything after the last commit was rolled
                    # back: go on from there one chunk at a time.
                    if depth == 1:
                        raise
                    log.info("%s: %s; continuing one chunk at a time", table, e)
                    depth = 1
                    last = self._last_committed.get(table, last)
        finally:
            reader.close()

    def _copy_chunks(self, plan: Plan, table: str, prog: TableProgress, reader: ChunkReader,
                     last: tuple[Any, ...] | None, depth: int) -> None:
        """Read chunks in key order on one thread, apply up to ``depth`` of
        them at once on their own target connections, commit them in key order.

        Every chunk is still read and applied inside its own transaction under
        its own FOR SHARE lock (module docstring).  A chunk's progress row is
        written inside its transaction, after chunk k-1's; a later chunk waits
        on that row until the earlier one commits, and is rolled back if the
        earlier one fails, so the recorded key never passes a hole.
        """
        cfg = self.config
        # depth connections applying, one more reading ahead.
        targets = [open_target(cfg) for _ in range(depth + 1)]
        free: queue.Queue[Any] = queue.Queue()
        for t in targets:
            free.put(t)
        opened: queue.Queue[_OpenChunk | BaseException | None] = queue.Queue()
        quit_reading = threading.Event()

        def read_loop(key: tuple[Any, ...] | None) -> None:
            n = 0
            try:
                while not quit_reading.is_set():
                    t = free.get()
                    if t is None or quit_reading.is_set():
                        break
                    oc = self._open_chunk(t, reader, key, table, n if depth > 1 else None)
                    n += 1
                    opened.put(oc)
                    if oc.chunk.final or self.stop.is_set():
                        break
                    key = oc.chunk.last_key
            except BaseException as e:  # handed to the committing thread
                opened.put(e)
            opened.put(None)

        pending: collections.deque[tuple[_OpenChunk, Future[None]]] = collections.deque()
        reading = threading.Thread(target=read_loop, args=(last,),
                                   name=f"snapshot-read-{table}", daemon=True)
        appliers = ThreadPoolExecutor(max_workers=depth,
                                      thread_name_prefix=f"snapshot-apply-{table}")
        try:
            reading.start()
            more = True
            while True:
                while more and len(pending) < depth:
                    item = opened.get()
                    if item is None:
                        more = False
                    elif isinstance(item, BaseException):
                        more = False
                        raise item
                    else:
                        pending.append((item, appliers.submit(
                            self._apply_chunk, plan, table, reader, item)))
                if not pending:
                    break
                current, fut = pending.popleft()
                try:
                    fut.result()
                except BaseException:
                    current.stack.__exit__(*sys.exc_info())
                    raise
                current.stack.close()  # commit
                free.put(current.target)
                chunk = current.chunk
                if chunk.count:
                    prog.rows_done += chunk.count
                    prog.chunks_done += 1
                if chunk.last_key is not None:
                    self._last_committed[table] = chunk.last_key
                if chunk.final:
                    prog.finished = time.monotonic()
                self.progress(prog)
        finally:
            quit_reading.set()
            free.put(None)
            # Chunks read or applying and never committed: roll them back,
            # each after its apply has finished with the connection.
            for oc, f in pending:
                with contextlib.suppress(BaseException):
                    f.result()
                with contextlib.suppress(BaseException):
                    oc.stack.__exit__(RuntimeError, RuntimeError("abandoned"), None)
            reading.join()
            while not opened.empty():
                item = opened.get()
                if isinstance(item, _OpenChunk):
                    with contextlib.suppress(BaseException):
                        item.stack.__exit__(RuntimeError, RuntimeError("abandoned"), None)
            appliers.shutdown(wait=True)
            for t in targets:
                with contextlib.suppress(BaseException):
                    t.close()

    def _apply_chunk(self, plan: Plan, table: str, reader: ChunkReader,
                     current: _OpenChunk) -> None:
        target, conn, chunk = current.target, current.conn, current.chunk
        stage = plan.stages[table]

        def my_turn(c: Any) -> None:
            if current.n:  # after the previous chunk's commit, in key order
                target.snapshot_turn(c, table, current.n - 1)

        if chunk.count == 0:
            if chunk.final:
                my_turn(conn)
                target.snapshot_finish(conn, table)
            return
        pk = list(stage.source.row_key)
        # A final text chunk runs to the table's end; its rows are counted but
        # the table is done, so no key is needed to resume it.
        key = chunk.last_key or current.last
        key_json = json.dumps(image_to_json(dict(zip(pk, key, strict=True)))) \
            if key is not None else None
        if chunk.text is not None:
            if target.apply_copy_text(conn, stage, plan.by_table[table], chunk.text):
                my_turn(conn)
                target.snapshot_chunk(conn, table, key_json, chunk.count)
                if chunk.final:
                    target.snapshot_finish(conn, table)
                return
            # A row the target refused: read the same key range as values and
            # let the ordinary path isolate it into the dead-letter table.
            log.info("%s: the target refused a row of the chunk after %s; re-reading it "
                     "value by value to set that row aside", table, current.last)
            chunk = reader.read_range(current.last, chunk.last_key)
        changes = [RowChange(table, "I", None, dict(zip(stage.columns, r, strict=True)))
                   for r in chunk.rows]
        batch = Batch()
        batch.add(Transaction(changes, BinlogPosition("", 0)))

        def record(c: Any) -> None:
            my_turn(c)
            target.snapshot_chunk(c, table, key_json, chunk.count)
            if current.chunk.final:
                target.snapshot_finish(c, table)

        target.apply(batch, {table: stage}, {table: plan.by_table[table]}, plan.converters,
                     record=record)


@dataclass(slots=True)
class _OpenChunk:
    target: Any
    conn: Any
    stack: contextlib.ExitStack
    last: tuple[Any, ...] | None  # the key the chunk was read after
    chunk: Chunk
    # Its place among chunks applied side by side (None: one at a time).
    n: int | None = None


def snapshot(config: Config, **kw: Any) -> list[TableProgress]:
    return Snapshot(config, **kw).run()
