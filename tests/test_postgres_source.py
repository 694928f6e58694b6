"""PostgresSource against a real PostgreSQL 15 (the session's throwaway server)."""

from __future__ import annotations

import queue
import random
import string
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from dbhelpers import PostgresDatabase

from cdc.errors import ConnectionLost, SourceError
from cdc.events import UNCHANGED, Transaction
from cdc.positions import Lsn
from cdc.sources import postgres as pgsource
from cdc.sources.postgres import PostgresSource


class Streamer:
    """Runs ``source.stream`` in a thread, like the pipeline's reader does."""

    def __init__(self, source: PostgresSource, start: Lsn | None = None) -> None:
        self.source = source
        self.q: queue.Queue[Transaction | BaseException] = queue.Queue()
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(start,), daemon=True)
        self.thread.start()

    def _run(self, start: Lsn | None) -> None:
        try:
            for txn in self.source.stream(start, self.stop):
                self.q.put(txn)
        except BaseException as e:  # handed to the test thread
            self.error = e
            self.q.put(e)

    def get(self, timeout: float = 10.0, heartbeats: bool = False) -> Transaction:
        """The next transaction (skipping heartbeats unless asked for)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("no transaction arrived in time")
            try:
                item = self.q.get(timeout=left)
            except queue.Empty:
                raise AssertionError("no transaction arrived in time") from None
            if isinstance(item, BaseException):
                raise item
            if item.heartbeat and not heartbeats:
                continue
            return item

    def nothing_more(self, wait: float = 1.0) -> None:
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                item = self.q.get(timeout=0.1)
            except queue.Empty:
                continue
            if isinstance(item, BaseException):
                raise item
            assert item.heartbeat and not item.changes, f"unexpected {item}"

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        assert not self.thread.is_alive()


@pytest.fixture
def make_source(pg_db: PostgresDatabase) -> Iterator[Any]:
    made: list[PostgresSource] = []

    def make(tables: list[str], *, url: str | None = None, slot: str = "cdc_test",
             publication: str = "cdc_test", **kw: Any) -> PostgresSource:
        kw.setdefault("heartbeat_seconds", 60.0)
        kw.setdefault("status_interval", 1.0)
        src = PostgresSource(url or pg_db.url, slot=slot, publication=publication,
                             tables=tables, **kw)
        made.append(src)
        return src

    yield make
    for src in made:
        src.close()


@pytest.fixture
def streams() -> Iterator[list[Streamer]]:
    running: list[Streamer] = []
    yield running
    for s in running:
        s.stop.set()
    for s in running:
        s.thread.join(10)


def start(streams: list[Streamer], source: PostgresSource, at: Lsn | None = None) -> Streamer:
    s = Streamer(source, at)
    streams.append(s)
    return s


def published(pg_db: PostgresDatabase, pub: str = "cdc_test") -> set[str]:
    return {f"{s}.{t}" for s, t in pg_db.query(
        "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s", (pub,))}


def sync_commit(pg_db: PostgresDatabase, sql: str, params: Any = None) -> None:
    # The test server runs synchronous_commit=off; decoding reads only flushed WAL.
    pg_db.execute("SET synchronous_commit = on")
    pg_db.execute(sql, params)


# --- setup / teardown ---------------------------------------------------------------------


def test_setup_idempotent_and_publication_follows_tables(pg_db: PostgresDatabase,
                                                         make_source: Any) -> None:
    pg_db.execute("CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY);"
                  " CREATE SCHEMA sch; CREATE TABLE sch.c (id int PRIMARY KEY)")
    src = make_source(["a"])
    src.setup()
    src.setup()
    assert published(pg_db) == {"public.a"}
    info = src.slot_info()
    assert info["exists"] and info["plugin"] == "pgoutput" and not info["active"]
    assert isinstance(info["confirmed_flush_lsn"], Lsn)
    assert isinstance(info["restart_lsn"], Lsn) and info["retained_wal_bytes"] >= 0

    src2 = make_source(["a", "sch.c", "public.b"])
    assert src2.tables == ["a", "sch.c", "b"]
    src2.setup()
    assert published(pg_db) == {"public.a", "sch.c", "public.b"}
    assert src2.slot_info()["confirmed_flush_lsn"] == info["confirmed_flush_lsn"]  # same slot

    make_source(["b"]).setup()
    assert published(pg_db) == {"public.b"}

    src.teardown()
    assert not src.slot_info()["exists"]
    assert pg_db.query("SELECT 1 FROM pg_publication WHERE pubname = 'cdc_test'") == []
    src.teardown()  # nothing left to drop: fine


def test_table_and_positions(pg_db: PostgresDatabase, make_source: Any) -> None:
    pg_db.execute("CREATE TABLE a (id int PRIMARY KEY, v numeric(10,2) NOT NULL)")
    src = make_source(["a"])
    schema = src.table("a")
    assert schema is not None and schema.primary_key == ("id",)
    assert [c.type for c in schema.columns] == ["integer", "numeric(10,2)"]
    assert src.table("missing") is None
    p1 = src.current_position()
    sync_commit(pg_db, "INSERT INTO a VALUES (1, 2)")
    assert src.current_position() > p1 > Lsn(0)
    assert src.slot_info() == {"exists": False, "slot": "cdc_test"}


def test_setup_refuses_missing_or_keyless_tables(pg_db: PostgresDatabase,
                                                 make_source: Any) -> None:
    pg_db.execute("CREATE TABLE nokey (v text)")
    with pytest.raises(SourceError) as e:
        make_source(["nope"]).setup()
    assert "does not exist" in str(e.value)
    with pytest.raises(SourceError) as e:
        make_source(["nokey"]).setup()
    assert e.value.fix is not None and "ALTER TABLE nokey REPLICA IDENTITY FULL" in e.value.fix
    pg_db.execute("ALTER TABLE nokey REPLICA IDENTITY FULL")
    make_source(["nokey"]).setup()


# --- streaming values ----------------------------------------------------------------------


def test_insert_update_delete_truncate(pg_db: PostgresDatabase, make_source: Any,
                                       streams: list[Streamer]) -> None:
    pg_db.execute("""
        CREATE TYPE mood AS ENUM ('sad', 'happy');
        CREATE DOMAIN posint AS int CHECK (VALUE > 0);
        CREATE SCHEMA sales;
        CREATE TABLE sales.orders (
            id bigint PRIMARY KEY, customer text, amount numeric(12,2), nan numeric,
            placed timestamptz, day date, data jsonb, tags text[], uid uuid, raw bytea,
            mood mood, moods mood[], qty posint);
        CREATE TABLE ignored (id int PRIMARY KEY)""")
    src = make_source(["sales.orders"])
    src.setup()
    s = start(streams, src)
    sync_commit(pg_db, """
        SET TimeZone = 'America/New_York';
        INSERT INTO ignored VALUES (1);
        INSERT INTO sales.orders VALUES (1, 'Zoë', 12.50, 'NaN', '2024-03-01 10:00:00+01',
            '2024-02-29', '{"k": [1, "x"]}', '{a,"b c",NULL}',
            'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '\\x00ff', 'happy', '{sad,happy}', 7)""")
    t1 = s.get()
    assert len(t1.changes) == 1  # the row of the unpublished table is not there
    ch = t1.changes[0]
    assert (ch.table, ch.op, ch.before, ch.partial_before) == ("sales.orders", "I", None, False)
    assert ch.after == {
        "id": 1, "customer": "Zoë", "amount": Decimal("12.50"), "nan": ch.after["nan"],
        "placed": datetime(2024, 3, 1, 9, 0, tzinfo=UTC),
        "day": datetime(2024, 2, 29).date(), "data": '{"k": [1, "x"]}',  # JSON text
        "tags": ["a", "b c", None], "uid": UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
        "raw": b"\x00\xff", "mood": "happy", "moods": ["sad", "happy"], "qty": 7}
    assert ch.after["nan"].is_nan()
    assert ch.after["placed"].tzinfo is not None
    assert isinstance(t1.position, Lsn) and t1.commit_time is not None
    assert t1.commit_time.tzinfo is not None
    assert abs((datetime.now(UTC) - t1.commit_time).total_seconds()) < 60
    assert not t1.heartbeat and t1.extra == {"unchanged": False}

    sync_commit(pg_db, "UPDATE sales.orders SET amount = 13, customer = NULL WHERE id = 1;"
                       " UPDATE sales.orders SET id = 2 WHERE id = 1")
    t2 = s.get()
    assert t2.position > t1.position
    u1, u2 = t2.changes
    assert (u1.op, u1.before, u1.partial_before) == ("U", {"id": 1}, True)
    assert (u1.after["amount"], u1.after["customer"]) == (Decimal("13.00"), None)
    assert (u2.op, u2.before, u2.partial_before, u2.after["id"]) == ("U", {"id": 1}, True, 2)

    sync_commit(pg_db, "DELETE FROM sales.orders")
    t3 = s.get()
    assert [(c.op, c.before, c.after, c.partial_before) for c in t3.changes] == [
        ("D", {"id": 2}, None, True)]

    sync_commit(pg_db, "INSERT INTO sales.orders (id) VALUES (5); TRUNCATE sales.orders")
    t4 = s.get()
    # The truncate is an event in source order, after the insert before it.
    assert [(c.table, c.op, c.after and c.after["id"]) for c in t4.changes] == [
        ("sales.orders", "I", 5), ("sales.orders", "T", None)]
    assert t4.changes[1].before is None
    assert t4.extra == {"truncate": True, "unchanged": False}
    s.close()


def test_toast_unchanged_and_replica_identity(pg_db: PostgresDatabase, make_source: Any,
                                              streams: list[Streamer]) -> None:
    pg_db.execute("CREATE TABLE doc (id int PRIMARY KEY, body text, n int);"
                  " CREATE TABLE audit (id int PRIMARY KEY, body text, n int);"
                  " ALTER TABLE audit REPLICA IDENTITY FULL")
    src = make_source(["doc", "audit"])
    src.setup()
    s = start(streams, src)
    rnd = random.Random(7)
    big = "".join(rnd.choice(string.ascii_letters + string.digits) for _ in range(20_000))
    sync_commit(pg_db, "INSERT INTO doc VALUES (1, %s, 1); INSERT INTO audit VALUES (1, %s, 1)"
                .replace("%s", "'" + big + "'"))
    ins = s.get()
    assert [c.after["body"] for c in ins.changes if c.after] == [big, big]

    assert ins.extra["unchanged"] is False
    sync_commit(pg_db, "UPDATE doc SET n = 2; UPDATE audit SET n = 2")
    upd = s.get()
    assert upd.extra["unchanged"] is True  # cdc.toast scans this transaction
    doc, audit = upd.changes
    # DEFAULT identity: no old tuple; before is the key from the new image.
    assert doc.after == {"id": 1, "body": UNCHANGED, "n": 2}
    assert (doc.before, doc.partial_before) == ({"id": 1}, True)
    # FULL identity: the whole old row, TOAST values included (flattened by the server).
    assert audit.before == {"id": 1, "body": big, "n": 1}
    assert audit.partial_before is False
    assert audit.after == {"id": 1, "body": UNCHANGED, "n": 2}

    sync_commit(pg_db, "DELETE FROM doc; DELETE FROM audit")
    d_doc, d_audit = s.get().changes
    assert (d_doc.before, d_doc.partial_before) == ({"id": 1}, True)
    assert (d_audit.before, d_audit.partial_before) == ({"id": 1, "body": big, "n": 2}, False)
    s.close()


def test_relation_altered_while_streaming(pg_db: PostgresDatabase, make_source: Any,
                                          streams: list[Streamer]) -> None:
    pg_db.execute("CREATE TABLE shape (id int PRIMARY KEY, a text)")
    src = make_source(["shape"])
    src.setup()
    s = start(streams, src)
    sync_commit(pg_db, "INSERT INTO shape VALUES (1, 'x')")
    assert s.get().changes[0].after == {"id": 1, "a": "x"}
    sync_commit(pg_db, "ALTER TABLE shape ADD COLUMN b numeric DEFAULT 1.5")
    sync_commit(pg_db, "INSERT INTO shape VALUES (2, 'y', 2.25); UPDATE shape SET a = 'z'"
                       " WHERE id = 1")
    changes = s.get().changes
    assert [c.after for c in changes] == [{"id": 2, "a": "y", "b": Decimal("2.25")},
                                         {"id": 1, "a": "z", "b": Decimal("1.5")}]
    sync_commit(pg_db, "ALTER TABLE shape DROP COLUMN a; INSERT INTO shape VALUES (3, 0)")
    assert s.get().changes[0].after == {"id": 3, "b": Decimal("0")}
    s.close()


# --- stop, ack, heartbeats, restart ---------------------------------------------------------


def test_stop_event_is_honoured_quickly(pg_db: PostgresDatabase, make_source: Any,
                                        streams: list[Streamer]) -> None:
    pg_db.execute("CREATE TABLE a (id int PRIMARY KEY)")
    src = make_source(["a"])
    src.setup()
    s = start(streams, src)
    sync_commit(pg_db, "INSERT INTO a VALUES (1)")
    s.get()
    t0 = time.monotonic()
    s.stop.set()
    s.thread.join(5)
    assert not s.thread.is_alive() and s.error is None
    assert time.monotonic() - t0 < 1.0
    # The replication connection is gone, so the slot is free again.
    deadline = time.monotonic() + 5
    while src.slot_info()["active"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not src.slot_info()["active"]


def wait_flushed(src: PostgresSource, at_least: Lsn, timeout: float = 10.0) -> Lsn:
    deadline = time.monotonic() + timeout
    while True:
        flushed = src.slot_info()["confirmed_flush_lsn"]
        if flushed >= at_least or time.monotonic() > deadline:
            return flushed
        time.sleep(0.05)


def test_ack_advances_confirmed_flush_and_no_more(pg_db: PostgresDatabase, make_source: Any,
                                                 streams: list[Streamer]) -> None:
    pg_db.execute("CREATE TABLE a (id int PRIMARY KEY)")
    src = make_source(["a"], status_interval=0.3)
    src.setup()
    before = src.slot_info()["confirmed_flush_lsn"]
    s = start(streams, src)
    sync_commit(pg_db, "INSERT INTO a VALUES (1)")
    t1 = s.get()
    sync_commit(pg_db, "INSERT INTO a VALUES (2)")
    t2 = s.get()
    time.sleep(1.0)  # several status updates, none may report unacked positions
    assert src.slot_info()["confirmed_flush_lsn"] == before
    src.ack(t1.position)
    assert wait_flushed(src, t1.position) == t1.position
    time.sleep(0.7)
    assert src.slot_info()["confirmed_flush_lsn"] == t1.position
    src.ack(t2.position)
    src.ack(t1.position)  # an older ack never moves it back
    assert wait_flushed(src, t2.position) == t2.position
    s.close()


def test_idle_source_advances_slot_with_heartbeats(pg_db: PostgresDatabase, make_source: Any,
                                                   streams: list[Streamer]) -> None:
    pg_db.execute("CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE other (id int)")
    src = make_source(["a"], heartbeat_seconds=0.2, status_interval=5.0)
    src.setup()
    s = start(streams, src)
    # Traffic only in a table outside the publication: WAL grows, nothing to deliver.
    for _ in range(3):
        sync_commit(pg_db, "INSERT INTO other SELECT generate_series(1, 1000)")
    target = src.current_position()
    deadline = time.monotonic() + 15
    last = Lsn(0)
    while last < target and time.monotonic() < deadline:
        hb = s.get(timeout=5, heartbeats=True)
        assert hb.heartbeat and hb.changes == [] and hb.position >= last
        last = hb.position
        src.ack(hb.position)  # as the pipeline does once the target committed it
    assert last >= target
    assert wait_flushed(src, target) >= target
    assert src.slot_info()["retained_wal_bytes"] is not None

    # An explicit heartbeat message arrives as a heartbeat transaction with a commit time.
    src.emit_heartbeat()
    sync_commit(pg_db, "SELECT 1")
    deadline = time.monotonic() + 10
    while True:
        hb = s.get(timeout=5, heartbeats=True)
        if hb.commit_time is not None:
            break
        assert time.monotonic() < deadline
    assert hb.heartbeat and hb.changes == [] and hb.position > last
    s.close()


def test_restart_from_committed_position_does_not_redeliver(
        pg_db: PostgresDatabase, make_source: Any, streams: list[Streamer]) -> None:
    pg_db.execute("CREATE TABLE a (id int PRIMARY KEY)")
    src = make_source(["a"])
    src.setup()
    s = start(streams, src)
    sync_commit(pg_db, "INSERT INTO a VALUES (1)")
    t1 = s.get()
    sync_commit(pg_db, "INSERT INTO a VALUES (2)")
    t2 = s.get()
    src.ack(t1.position)
    wait_flushed(src, t1.position)
    s.close()
    sync_commit(pg_db, "INSERT INTO a VALUES (3)")

    # Resume at the acked position: 1 is not sent again, 2 (unacked) is.
    s2 = start(streams, src, t1.position)
    assert [c.after for c in s2.get().changes] == [{"id": 2}]
    assert [c.after for c in s2.get().changes] == [{"id": 3}]
    s2.close()

    # Resume at a committed but not yet acked position: nothing before it either.
    s3 = start(streams, src, t2.position)
    assert [c.after for c in s3.get().changes] == [{"id": 3}]
    s3.nothing_more(0.5)
    s3.close()

    # Behind the slot: those changes are gone, say so instead of skipping silently.
    src.ack(t2.position)
    s4 = start(streams, src, t2.position)
    s4.get()
    s4.close()
    assert wait_flushed(src, t2.position) == t2.position
    with pytest.raises(SourceError) as e:
        start(streams, src, t1.position).get()
    assert e.value.fix is not None and "cdc snapshot" in e.value.fix


# --- errors ---------------------------------------------------------------------------------


@pytest.fixture
def role(pg_db: PostgresDatabase) -> Iterator[tuple[str, str]]:
    name = f"r_{pg_db.name}"
    pg_db.execute(f"CREATE ROLE {name} LOGIN PASSWORD 'secret'")
    pg_db.execute(f"GRANT ALL ON SCHEMA public TO {name}; GRANT CREATE ON DATABASE"
                  f" {pg_db.name} TO {name}")
    yield name, pg_db.server.url(pg_db.name, user=name, password="secret")
    pg_db.execute(f"DROP OWNED BY {name}; DROP ROLE {name}")


def test_role_without_replication(pg_db: PostgresDatabase, make_source: Any,
                                  role: tuple[str, str]) -> None:
    name, url = role
    pg_db.execute(f"CREATE TABLE a (id int PRIMARY KEY); ALTER TABLE a OWNER TO {name}")
    src = make_source(["a"], url=url)
    for call in (src.setup, lambda: next(iter(src.stream(None, threading.Event())))):
        with pytest.raises(SourceError) as e:
            call()
        assert e.value.fix == f"ALTER ROLE {name} REPLICATION;"
    pg_db.execute(f"ALTER ROLE {name} REPLICATION")
    src.setup()
    src.teardown()


def test_authentication_failure(pg_db: PostgresDatabase, make_source: Any,
                                role: tuple[str, str]) -> None:
    name, url = role
    src = make_source(["a"], url=url.replace(":secret@", ":wrong@"))
    with pytest.raises(SourceError) as e:
        src.current_position()
    assert "authentication failed" in str(e.value) and e.value.fix is not None
    assert not e.value.transient


def test_unreachable_server_is_transient(make_source: Any) -> None:
    src = make_source(["a"], url="postgresql://u:p@127.0.0.1:1/db?connect_timeout=2")
    with pytest.raises(ConnectionLost) as e:
        src.current_position()
    assert e.value.transient


def test_slot_used_by_another_pipeline(pg_db: PostgresDatabase, make_source: Any,
                                       streams: list[Streamer],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pgsource, "_SLOT_BUSY_WAIT", 0.5)
    pg_db.execute("CREATE TABLE a (id int PRIMARY KEY)")
    first = make_source(["a"])
    first.setup()
    s = start(streams, first)
    deadline = time.monotonic() + 5
    while not first.slot_info()["active"] and time.monotonic() < deadline:
        time.sleep(0.05)
    second = make_source(["a"], publication="other_pub")
    with pytest.raises(SourceError) as e:
        second.setup()  # creates its publication; the slot is there: fine so far
        next(iter(second.stream(None, threading.Event())))
    assert "in use" in str(e.value) and e.value.fix is not None and "slot" in e.value.fix
    s.close()


def test_slot_with_another_plugin(pg_db: PostgresDatabase, make_source: Any) -> None:
    pg_db.execute("CREATE TABLE a (id int PRIMARY KEY)")
    pg_db.execute("SELECT pg_create_logical_replication_slot('cdc_test', 'test_decoding')")
    with pytest.raises(SourceError) as e:
        make_source(["a"]).setup()
    assert "test_decoding" in str(e.value) and e.value.fix is not None


def test_publication_missing_a_table(pg_db: PostgresDatabase, make_source: Any) -> None:
    pg_db.execute("CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY)")
    make_source(["a"]).setup()
    src = make_source(["a", "b"])
    with pytest.raises(SourceError) as e:
        next(iter(src.stream(None, threading.Event())))
    assert e.value.fix == "ALTER PUBLICATION cdc_test ADD TABLE b; (or run `cdc setup`)"
    pg_db.execute("DROP PUBLICATION cdc_test")
    with pytest.raises(SourceError) as e:
        next(iter(src.stream(None, threading.Event())))
    assert e.value.fix == "run `cdc setup`"


def test_no_free_replication_slot(pg_db: PostgresDatabase, make_source: Any) -> None:
    pg_db.execute("CREATE TABLE a (id int PRIMARY KEY)")
    limit = int(pg_db.scalar("SHOW max_replication_slots"))
    used = int(pg_db.scalar("SELECT count(*) FROM pg_replication_slots"))
    fillers = [f"fill_{pg_db.name}_{i}" for i in range(limit - used)]
    try:
        for name in fillers:
            pg_db.execute("SELECT pg_create_physical_replication_slot(%s)", (name,))
        with pytest.raises(SourceError) as e:
            make_source(["a"]).setup()
        assert "max_replication_slots" in str(e.value) + str(e.value.fix)
    finally:
        for name in fillers:
            pg_db.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
                          " WHERE slot_name = %s", (name,))


def test_wal_level_not_logical(tmp_path: Path, pg_db: PostgresDatabase) -> None:
    """A source server without wal_level=logical (its own throwaway server):
    `cdc setup` says so in one line, with the fix, and changes nothing."""
    from pipeline_helpers import cdc, write_pipeline

    from cdc.devservers import PostgresServer

    class ReplicaOnly(PostgresServer):
        def _settings(self) -> dict[str, str]:
            return {**super()._settings(), "wal_level": "replica"}

    base = tmp_path / "replica-only"
    base.mkdir()
    base.chmod(0o755)
    server = ReplicaOnly(base)
    server.start(die_with_parent=True)
    try:
        server.create_database("erp")
        with server.connect("erp") as c:
            c.execute("CREATE TABLE a (id int PRIMARY KEY)")
        cfg = write_pipeline(tmp_path, server.url("erp"), pg_db.url,
                             {"a": "INSERT INTO t_a (id) SELECT x.id FROM a AS x"})
        pg_db.execute("CREATE TABLE t_a (id int PRIMARY KEY)")
        p = cdc("setup", "-c", str(cfg), check=False)
        assert p.returncode != 0
        lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1, p.stderr
        assert "wal_level=replica" in lines[0]
        assert "ALTER SYSTEM SET wal_level = logical; then restart PostgreSQL" in lines[0]
        with server.connect("erp") as c:
            assert c.execute("SELECT count(*) FROM pg_replication_slots").fetchone() == (0,)
    finally:
        server.stop()


def test_connection_lost_while_streaming(pg_db: PostgresDatabase, make_source: Any,
                                         streams: list[Streamer]) -> None:
    pg_db.execute("CREATE TABLE a (id int PRIMARY KEY)")
    src = make_source(["a"])
    src.setup()
    s = start(streams, src)
    sync_commit(pg_db, "INSERT INTO a VALUES (1)")
    s.get()
    pg_db.execute("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots"
                  " WHERE slot_name = 'cdc_test'")
    with pytest.raises(ConnectionLost):
        s.get(timeout=10)
    s.thread.join(5)
    assert isinstance(s.error, ConnectionLost) and s.error.transient



def test_renamed_source_table_stops_the_stream(pg_db: PostgresDatabase, make_source: Any,
                                               streams: list[Streamer]) -> None:
    pg_db.execute("CREATE TABLE a (id int PRIMARY KEY)")
    src = make_source(["a"])
    src.setup()
    s = start(streams, src)
    sync_commit(pg_db, "INSERT INTO a VALUES (1)")
    s.get()
    sync_commit(pg_db, "ALTER TABLE a RENAME TO b; INSERT INTO b VALUES (2)")
    with pytest.raises(SourceError) as e:
        s.get()
    assert "renamed to b" in str(e.value) and e.value.fix is not None


def test_replication_origin_is_reported(pg_db: PostgresDatabase, make_source: Any,
                                        streams: list[Streamer]) -> None:
    pg_db.execute("CREATE TABLE a (id int PRIMARY KEY)")
    src = make_source(["a"])
    src.setup()
    s = start(streams, src)
    name = f"o_{pg_db.name}"
    with pg_db.connect() as c:
        c.execute("SET synchronous_commit = on")
        c.execute("SELECT pg_replication_origin_create(%s)", (name,))
        try:
            c.execute("SELECT pg_replication_origin_session_setup(%s)", (name,))
            c.execute("INSERT INTO a VALUES (1)")
            c.execute("SELECT pg_replication_origin_session_reset()")
            c.execute("INSERT INTO a VALUES (2)")
        finally:
            c.execute("SELECT pg_replication_origin_drop(%s)", (name,))
    t1, t2 = s.get(), s.get()
    assert t1.extra == {"origin": name, "unchanged": False} and t2.extra == {"unchanged": False}
    s.close()


def test_copy_text_stream_in_runs_acks_and_stops(pg_db: PostgresDatabase, make_source: Any,
                                                 streams: list[Streamer]) -> None:
    """With text values (a PostgreSQL target) rows arrive as COPY text, read a
    run at a time (PostgresSource._stream's inner loop): whole transactions in
    order, acks reported only when given, and stop seen promptly even during
    a long backlog."""
    pg_db.execute("CREATE TABLE a (id int PRIMARY KEY, v text)")
    src = make_source(["a"], text_values=True, status_interval=0.2)
    src.setup()
    before = src.slot_info()["confirmed_flush_lsn"]
    s = start(streams, src)
    sync_commit(pg_db, "INSERT INTO a SELECT g, 'v' || g FROM generate_series(1, 20000) g")
    for i in range(5):
        sync_commit(pg_db, "UPDATE a SET v = %s WHERE id = %s", (f"u{i}\t", i + 1))
    txs = [s.get(timeout=30) for _ in range(6)]
    assert all(t.text is not None and not t.changes for t in txs)
    first = txs[0].materialize()
    assert [c.after["id"] for c in first if c.after] == [str(i) for i in range(1, 20001)]
    assert [(c.op, c.after) for t in txs[1:] for c in t.materialize()] == [
        ("U", {"id": str(i + 1), "v": f"u{i}\t"}) for i in range(5)]
    time.sleep(0.6)
    assert src.slot_info()["confirmed_flush_lsn"] == before, "nothing acked, nothing reported"
    src.ack(txs[-1].position)
    assert wait_flushed(src, txs[-1].position) == txs[-1].position
    # A backlog the stream is still reading when asked to stop.
    sync_commit(pg_db, "INSERT INTO a SELECT g, 'w' FROM generate_series(20001, 120000) g")
    s.get(timeout=30)
    sync_commit(pg_db, "INSERT INTO a SELECT g, 'x' FROM generate_series(120001, 320000) g")
    t0 = time.monotonic()
    s.stop.set()
    s.thread.join(10)
    assert not s.thread.is_alive() and s.error is None
    assert time.monotonic() - t0 < 5.0
