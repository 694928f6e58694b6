"""PostgreSQL logical replication as the source, end to end (PostgreSQL target)."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import pytest
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


NOTES_TARGET = {
    "postgresql": "CREATE TABLE t_notes (id integer PRIMARY KEY, body text,"
                  " n integer NOT NULL CHECK (n < 1000), doc_len integer)",
    "mysql": "CREATE TABLE t_notes (id int PRIMARY KEY, body text,"
             " n int NOT NULL CHECK (n < 1000), doc_len int) DEFAULT CHARSET=utf8mb4",
}


@pytest.mark.parametrize("target_kind", ["postgresql", "mysql"])
def test_rows_as_copy_text_escapes_mixes_and_dead_letters(
        tmp_path: Path, make_pg_db: Any, make_mysql_db: Any, target_kind: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows of plain types travel from the decoder as the walsender's COPY
    text (cdc.events.TextRows), into PostgreSQL as COPY and into MySQL as
    VALUES made from it.  Values either would misread, a transaction that
    switches to values half way (an unchanged TOAST value), and a row the
    target refuses (isolated as a dead letter) must all come out right."""
    from cdc.targets import mysql as mysql_target

    converted: list[int] = []
    to_values = mysql_target.copy_to_values

    def counting(data: bytes, seq: int) -> tuple[list[bytes], int]:
        converted.append(data.count(b"\n"))
        return to_values(data, seq)

    monkeypatch.setattr(mysql_target, "copy_to_values", counting)
    src = make_pg_db()
    tgt = make_pg_db() if target_kind == "postgresql" else make_mysql_db()
    src.execute("CREATE TABLE notes (id integer PRIMARY KEY, body text, n integer NOT NULL,"
                " doc text)")
    tgt.execute(NOTES_TARGET[target_kind])
    rule = ("INSERT INTO t_notes (id, body, n, doc_len)\n"
            "SELECT o.id, o.body, o.n, length(o.doc) FROM notes AS o")
    cfg = write_pipeline(tmp_path, src.url, tgt.url, {"notes": rule}, name=f"pg_{src.name}",
                         extra="dead_letters:\n  retry_seconds: 3600\n")
    cdc("setup", "-c", str(cfg))
    bodies = ["tab\there", "line\nbreak\r\nend", "back\\slash\\", "\\N", None,
              "\u00e9t\u00e9 \u4e2d\u6587 \U0001f600", "", "it's \"quoted\"", "\\'", "'\\N'"]
    try:
        with PipelineThread(cfg) as p:
            with src.connect() as c, c.transaction():
                for i, body in enumerate(bodies, start=1):
                    c.execute("INSERT INTO notes VALUES (%s, %s, %s, NULL)", (i, body, i))
            src.execute("UPDATE notes SET doc = (SELECT string_agg(md5(random()::text || x::text),"
                        " '') FROM generate_series(1, 400) x) WHERE id = 1")
            p.wait_caught_up()
            with src.connect() as c, c.transaction():
                c.execute("INSERT INTO notes VALUES (20, 'before', 1, NULL)")
                c.execute("UPDATE notes SET body = 'after toast' WHERE id = 1")  # doc: 'u'
                c.execute("INSERT INTO notes VALUES (21, E'x\\ty', 1, NULL)")
                c.execute("UPDATE notes SET body = E'b\\\\c\\nd' WHERE id = 2")
                c.execute("DELETE FROM notes WHERE id = 20")
            with src.connect() as c, c.transaction():
                c.execute("INSERT INTO notes VALUES (30, 'refused', 5000, NULL)")
                c.execute("INSERT INTO notes VALUES (31, E'ok\\\\', 1, NULL)")
                c.execute("UPDATE notes SET id = 33, body = E'moved\\t' WHERE id = 3")
            p.wait_caught_up()
            # A column the staging table does not have: those rows take the
            # value path, which leaves the new column out.
            src.execute("ALTER TABLE notes ADD COLUMN extra text")
            src.execute("INSERT INTO notes VALUES (40, 'after alter', 4, NULL, 'x'),"
                        " (41, E'tab\\there', 4, NULL, NULL)")
            src.execute("UPDATE notes SET body = 'altered', extra = 'y' WHERE id = 4")
            p.wait_caught_up()
        got = tgt.query("SELECT id, body, n, doc_len FROM t_notes ORDER BY id")
        want = src.query("SELECT id, body, n, length(doc) FROM notes WHERE id <> 30 ORDER BY id")
        assert got == want
        assert got[0] == (1, "after toast", 1, 12800), "an unchanged TOAST value must survive"
        letters = tgt.query("SELECT row_data FROM cdc.dead_letters" if target_kind == "postgresql"
                            else "SELECT row_data FROM cdc_dead_letters")
        ids = [(r[0] if isinstance(r[0], dict) else json.loads(r[0]))["after"]["id"]
               for r in letters]
        assert ids == ["30"], letters
        if target_kind == "mysql":
            assert sum(converted) >= len(bodies), "rows must have travelled as text"
    finally:
        teardown(cfg)
