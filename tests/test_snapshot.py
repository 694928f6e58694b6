"""cdc snapshot: consistent copy while the source takes writes, resume, hand-over."""

from __future__ import annotations

import json
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from pipeline_helpers import REPO, PipelineThread, cdc, mysql_tx, normalize, write_pipeline

SRC = """CREATE TABLE items (id INT NOT NULL PRIMARY KEY, name VARCHAR(50) NOT NULL,
         qty INT NOT NULL, created DATE NOT NULL) DEFAULT CHARSET=utf8mb4"""
TGT = """CREATE TABLE t_items (item_key text PRIMARY KEY, name text NOT NULL, qty integer NOT NULL,
         created date NOT NULL)"""
RULE = """INSERT INTO t_items (item_key, name, qty, created)
SELECT CONCAT('K', CAST(i.id AS CHAR)), UPPER(i.name), i.qty, i.created FROM items AS i
WHERE i.qty >= 0"""
EXPECTED = """SELECT CONCAT('K', CAST(i.id AS CHAR)), UPPER(i.name), i.qty, i.created
              FROM items AS i WHERE i.qty >= 0"""
TARGET = "SELECT item_key, name, qty, created FROM t_items"


def load_rows(mysql_db: Any, n: int, start: int = 1) -> None:
    for lo in range(start, start + n, 2000):
        hi = min(lo + 2000, start + n)
        mysql_db.execute("INSERT INTO items VALUES " + ",".join(
            f"({i}, 'n{i}', {i % 5}, DATE_ADD('2024-01-01', INTERVAL {i % 300} DAY))"
            for i in range(lo, hi)))


def setup(tmp_path: Path, mysql_db: Any, pg_db: Any, extra: str = "") -> Path:
    mysql_db.execute(SRC)
    pg_db.execute(TGT)
    cfg = write_pipeline(tmp_path, mysql_db.url, pg_db.url, {"items": RULE}, extra)
    cdc("setup", "-c", str(cfg))
    return cfg


def equal(mysql_db: Any, pg_db: Any) -> None:
    assert normalize(pg_db.query(TARGET)) == normalize(mysql_db.query(EXPECTED))


def test_snapshot_while_writing_then_stream(tmp_path: Path, mysql_db: Any, pg_db: Any) -> None:
    """Writes land in ranges already copied and not yet copied; after the
    snapshot, streaming from the hand-over point makes the target equal."""
    cfg = setup(tmp_path, mysql_db, pg_db, "snapshot:\n  chunk_rows: 500\n")
    load_rows(mysql_db, 20000)
    stop = threading.Event()
    writes = [0]

    def writer() -> None:
        rnd = random.Random(11)
        next_id = 100000
        while not stop.is_set():
            stmts = []
            for _ in range(5):
                op, i = rnd.random(), rnd.randint(1, 20000)
                if op < 0.4:
                    stmts.append(f"UPDATE items SET qty = qty + 1, name = 'w{i}' WHERE id = {i}")
                elif op < 0.6:
                    stmts.append(f"DELETE FROM items WHERE id = {i}")
                elif op < 0.8:
                    next_id += 1
                    stmts.append(f"INSERT INTO items VALUES ({next_id}, 'new', 1, '2024-02-02')")
                else:
                    stmts.append(f"UPDATE items SET id = {next_id + 50000} WHERE id = {i}")
                    next_id += 1
            mysql_tx(mysql_db.url, stmts)
            writes[0] += 1

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    try:
        out = cdc("snapshot", "-c", str(cfg)).stdout
    finally:
        stop.set()
        t.join()
    assert writes[0] > 10, "the writer must have run during the snapshot"
    # About 20,000 rows: the writer's deletes and inserts move the count.
    assert re.search(r"items: [0-9,]+ rows", out) and "total:" in out, out
    with PipelineThread(cfg) as p:
        p.wait_caught_up(timeout=120)
    equal(mysql_db, pg_db)


def test_kill_9_resumes_where_it_stopped(tmp_path: Path, mysql_db: Any, pg_db: Any) -> None:
    cfg = setup(tmp_path, mysql_db, pg_db, "snapshot:\n  chunk_rows: 200\n")
    load_rows(mysql_db, 30000)
    proc = subprocess.Popen([sys.executable, "-m", "cdc", "snapshot", "-c", str(cfg)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    chunks = 0
    while time.monotonic() < deadline:
        rows = pg_db.query("SELECT chunks_done FROM cdc.snapshot_tables") if pg_db.query(
            "SELECT to_regclass('cdc.snapshot_tables') IS NOT NULL")[0][0] else []
        chunks = rows[0][0] if rows else 0
        if chunks >= 20:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = pg_db.query("SELECT state, chunks_done, rows_done FROM cdc.snapshot_tables")[0]
    assert before[0] == "copying" and before[1] >= 20, before
    assert pg_db.query("SELECT count(*) FROM t_items")[0][0] == before[2], \
        "progress commits with the chunk's rows"
    out = cdc("snapshot", "-c", str(cfg)).stdout
    assert "(resumed)" in out
    state, chunks_after, rows_after = pg_db.query(
        "SELECT state, chunks_done, rows_done FROM cdc.snapshot_tables")[0]
    assert state == "done" and rows_after >= 24000  # qty >= 0 for every row
    assert chunks_after == 30000 // 200 + 1 or chunks_after == 30000 // 200, chunks_after
    equal(mysql_db, pg_db)
    # Done tables are skipped unless asked for.
    assert "skipped, already done" in cdc("snapshot", "-c", str(cfg)).stdout


def test_where_and_table(tmp_path: Path, mysql_db: Any, pg_db: Any) -> None:
    mysql_db.execute("CREATE TABLE other (id INT PRIMARY KEY, v INT NOT NULL)")
    pg_db.execute("CREATE TABLE t_other (id integer PRIMARY KEY, v integer NOT NULL)")
    mysql_db.execute(SRC)
    pg_db.execute(TGT)
    cfg = write_pipeline(tmp_path, mysql_db.url, pg_db.url, {
        "items": RULE, "other": "INSERT INTO t_other (id, v) SELECT o.id, o.v FROM other AS o"})
    cdc("setup", "-c", str(cfg))
    load_rows(mysql_db, 1000)
    mysql_db.execute("INSERT INTO other VALUES (1, 1), (2, 2)")
    out = cdc("snapshot", "-c", str(cfg), "--table", "items", "--where",
              "created >= '2024-06-01'").stdout
    assert "other" not in out
    assert pg_db.query("SELECT count(*) FROM t_other") == [(0,)]
    expected = mysql_db.query("SELECT count(*) FROM items WHERE created >= '2024-06-01'")[0][0]
    assert pg_db.query("SELECT count(*) FROM t_items")[0][0] == expected > 0
    assert pg_db.query("SELECT min(created) FROM t_items")[0][0].isoformat() >= "2024-06-01"
    bad = cdc("snapshot", "-c", str(cfg), "--table", "nope", check=False)
    assert bad.returncode == 2 and "--table 'nope': no rule reads it" in bad.stderr
    bad = cdc("snapshot", "-c", str(cfg), "--where", "created >=", check=False)
    assert bad.returncode == 2 and "is not a valid condition" in bad.stderr


def test_table_without_primary_key(tmp_path: Path, mysql_db: Any, pg_db: Any) -> None:
    mysql_db.execute("CREATE TABLE log (msg VARCHAR(20))")
    pg_db.execute("CREATE TABLE t_log (msg text PRIMARY KEY)")
    cfg = write_pipeline(tmp_path, mysql_db.url, pg_db.url, {
        "log": "INSERT INTO t_log (msg) SELECT l.msg FROM log AS l"})
    # Refused before anything is set up (every command: tests/test_rough_edges.py).
    p = cdc("setup", "-c", str(cfg), check=False)
    assert p.returncode == 2
    assert "source table 'log' has no primary key" in p.stderr and "ADD PRIMARY KEY" in p.stderr


@pytest.mark.slow
def test_resync_one_table_while_streaming(tmp_path: Path, mysql_db: Any, pg_db: Any) -> None:
    """The target table is damaged; resync it with --truncate while `cdc run`
    keeps streaming and the source keeps changing."""
    cfg = setup(tmp_path, mysql_db, pg_db, "snapshot:\n  chunk_rows: 300\n")
    load_rows(mysql_db, 5000)
    cdc("snapshot", "-c", str(cfg))
    with PipelineThread(cfg) as p:
        p.wait_caught_up()
        pg_db.execute("DELETE FROM t_items WHERE qty = 2")  # damage
        pg_db.execute("UPDATE t_items SET name = 'garbage' WHERE qty = 3")
        stop = threading.Event()

        def writer() -> None:
            rnd = random.Random(5)
            while not stop.is_set():
                i = rnd.randint(1, 5000)
                mysql_db.execute(f"UPDATE items SET qty = (qty + 1) % 5, name = 'r{i}' "
                                 f"WHERE id = {i}")

        t = threading.Thread(target=writer, daemon=True)
        t.start()
        try:
            cdc("snapshot", "-c", str(cfg), "--table", "items", "--truncate")
        finally:
            stop.set()
            t.join()
        p.wait_caught_up()
    equal(mysql_db, pg_db)
    lag = json.loads(cdc("lag", "-c", str(cfg), "--json").stdout)
    assert lag["caught_up"]


def test_chunks_applied_side_by_side_keep_key_order(tmp_path: Path, mysql_db: Any,
                                                     pg_db: Any) -> None:
    """Two chunks of one table are applied at once (snapshot.workers: 2) and
    commit in key order.  Here every chunk's rows map to the same seven target
    rows, so the two transactions wait on each other's rows: the later chunk
    still has the last word (or, when the server had to break a deadlock, cdc
    went on one chunk at a time), exactly as a one-at-a-time copy ends."""
    mysql_db.execute(SRC)
    load_rows(mysql_db, 6000)
    pg_db.execute("CREATE TABLE t_bucket (bucket integer PRIMARY KEY, last_id integer NOT NULL)")
    cfg = write_pipeline(tmp_path, mysql_db.url, pg_db.url, {
        "items": "INSERT INTO t_bucket (bucket, last_id) SELECT MOD(i.id, 7), i.id FROM items AS i"},
        "snapshot:\n  chunk_rows: 150\n  workers: 2\n")
    cdc("setup", "-c", str(cfg))
    out = cdc("snapshot", "-c", str(cfg)).stdout
    assert "6,000" in out, out
    assert pg_db.query("SELECT bucket, last_id FROM t_bucket ORDER BY bucket") == [
        (b, max(i for i in range(1, 6001) if i % 7 == b)) for b in range(7)]
    assert pg_db.query("SELECT state, rows_done FROM cdc.snapshot_tables") == [("done", 6000)]


def test_a_deadlock_between_side_by_side_chunks_goes_on_one_at_a_time(
        tmp_path: Path, mysql_db: Any, pg_db: Any, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """The server's deadlock victim is rolled back with every chunk after the
    last commit; the copy continues from that commit one chunk at a time."""
    from cdc import config, snapshot
    from cdc.errors import TransientError
    from cdc.targets.postgres import PostgresTarget

    cfg = setup(tmp_path, mysql_db, pg_db, "snapshot:\n  chunk_rows: 100\n  workers: 2\n")
    load_rows(mysql_db, 3000)
    real_turn = PostgresTarget.snapshot_turn
    calls = [0]

    def wait_then_deadlock(self: PostgresTarget, conn: Any, table: str, n: int) -> None:
        calls[0] += 1
        real_turn(self, conn, table, n)
        if n == 6:  # chunk 6 opening, or chunk 7 about to record: a victim mid-copy
            raise TransientError("deadlock detected (injected)")

    monkeypatch.setattr(PostgresTarget, "snapshot_turn", wait_then_deadlock)
    caplog.set_level("INFO", logger="cdc.snapshot")
    results = snapshot.snapshot(config.load(cfg))
    assert "continuing one chunk at a time" in caplog.text
    assert [(r.table, r.rows_done) for r in results] == [("items", 3000)]
    assert pg_db.query("SELECT state, rows_done FROM cdc.snapshot_tables") == [("done", 3000)]
    equal(mysql_db, pg_db)
