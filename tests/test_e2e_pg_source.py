"""PostgreSQL logical replication as the source, end to end (PostgreSQL target)."""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

from pipeline_helpers import (
    DaemonProcess,
    PipelineThread,
    cdc,
    normalize,
    wait_caught_up,
    write_pipeline,
)

from cdc.config import load

SRC = """CREATE TABLE items (id integer PRIMARY KEY, name text NOT NULL, qty integer NOT NULL,
         price numeric(10,2) NOT NULL, doc text)"""
TGT = """CREATE TABLE t_items (item_key text PRIMARY KEY, name text NOT NULL, qty integer NOT NULL,
         total numeric(14,2) NOT NULL, doc_len integer, doc_md5 text)"""
RULE = """INSERT INTO t_items (item_key, name, qty, total, doc_len, doc_md5)
SELECT 'K' || i.id::text, upper(i.name), i.qty, i.qty * i.price, length(i.doc), md5(i.doc)
FROM items AS i WHERE i.qty > 0"""
EXPECTED = """SELECT 'K' || i.id::text, upper(i.name), i.qty, i.qty * i.price, length(i.doc),
              md5(i.doc) FROM items AS i WHERE i.qty > 0"""
TARGET = "SELECT item_key, name, qty, total, doc_len, doc_md5 FROM t_items"


def pipeline(tmp_path: Path, src: Any, tgt: Any, name: str) -> Path:
    src.execute(SRC)
    tgt.execute(TGT)
    cfg = write_pipeline(tmp_path, src.url, tgt.url, {"items": RULE}, name=name)
    cdc("setup", "-c", str(cfg))
    return cfg


def teardown(cfg: Path) -> None:
    """Drop the slot: a leftover slot pins WAL on the shared test server."""
    from cdc.sources.postgres import PostgresSource

    c = load(cfg)
    PostgresSource(c.source.libpq(), slot=c.slot, publication=c.publication,
                   tables=["items"]).teardown()


def equal(src: Any, tgt: Any) -> None:
    assert normalize(tgt.query(TARGET)) == normalize(src.query(EXPECTED))


def test_stream_with_toast_and_key_changes(tmp_path: Path, make_pg_db: Any) -> None:
    src, tgt = make_pg_db(), make_pg_db()
    cfg = pipeline(tmp_path, src, tgt, f"pg_{src.name}")
    try:
        with PipelineThread(cfg) as p:
            src.execute("INSERT INTO items SELECT g, 'n' || g, g % 3, 1.25, NULL"
                        " FROM generate_series(1, 50) g")
            # A value large and random enough to be TOASTed out of line.
            src.execute("UPDATE items SET doc = (SELECT string_agg(md5(random()::text || x::text),"
                        " '') FROM generate_series(1, 400) x) WHERE id = 1")
            p.wait_caught_up()
            src.execute("UPDATE items SET name = 'renamed' WHERE id = 1")  # doc unchanged: 'u'
            src.execute("UPDATE items SET id = 500 WHERE id = 2")
            src.execute("DELETE FROM items WHERE id = 4")
            src.execute("UPDATE items SET qty = 0 WHERE id = 5")  # leaves the filter
            p.wait_caught_up()
            time.sleep(0.5)
            p.wait_caught_up()
        row = tgt.query("SELECT name, doc_len FROM t_items WHERE item_key = 'K1'")
        assert row == [("RENAMED", 12800)], "an unchanged TOAST value must not become NULL"
        equal(src, tgt)
    finally:
        teardown(cfg)


def test_kill_9_with_postgres_source(tmp_path: Path, make_pg_db: Any) -> None:
    src, tgt = make_pg_db(), make_pg_db()
    cfg = pipeline(tmp_path, src, tgt, f"pg_{src.name}")
    rnd = random.Random(3)
    daemon = DaemonProcess(cfg, tmp_path / "run.log")
    try:
        next_id = 0
        for _ in range(6):
            daemon.start()
            for _ in range(30):
                next_id += 20
                src.execute(f"INSERT INTO items SELECT g, 'n' || g, g % 4, 2.5, NULL FROM"
                            f" generate_series({next_id - 19}, {next_id}) g")
                src.execute(f"UPDATE items SET qty = qty + 1 WHERE id % 7 = {rnd.randint(0, 6)}")
                src.execute(f"DELETE FROM items WHERE id = {rnd.randint(1, next_id)}")
            time.sleep(rnd.uniform(0.1, 0.8))
            daemon.kill9()
        daemon.start()
        wait_caught_up(load(cfg), timeout=120)
        time.sleep(0.5)
        wait_caught_up(load(cfg), timeout=60)
        assert daemon.terminate() == 0
        equal(src, tgt)
    finally:
        teardown(cfg)
