"""Every direction through the same rules, batching and exactly-once offsets:
MySQL->PostgreSQL, PostgreSQL->MySQL, PostgreSQL->PostgreSQL, MySQL->MySQL."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from pipeline_helpers import DaemonProcess, PipelineThread, cdc, wait_caught_up, write_pipeline

from cdc.config import load

SRC_DDL = {
    "mysql": "CREATE TABLE items (id INT PRIMARY KEY, name VARCHAR(50) NOT NULL,"
             " qty INT NOT NULL, price DECIMAL(10,2) NOT NULL) DEFAULT CHARSET=utf8mb4",
    "postgresql": "CREATE TABLE items (id integer PRIMARY KEY, name text NOT NULL,"
                  " qty integer NOT NULL, price numeric(10,2) NOT NULL)",
}
TGT_DDL = {
    "postgresql": "CREATE TABLE t_items (item_key text PRIMARY KEY, name text NOT NULL,"
                  " qty integer NOT NULL, total numeric(14,2) NOT NULL)",
    "mysql": "CREATE TABLE t_items (item_key varchar(32) PRIMARY KEY, name varchar(100) NOT NULL,"
             " qty int NOT NULL, total decimal(14,2) NOT NULL) DEFAULT CHARSET=utf8mb4",
}
RULE = {
    "mysql": "INSERT INTO t_items (item_key, name, qty, total)\n"
             "SELECT CONCAT('K', CAST(i.id AS CHAR)), UPPER(i.name), i.qty, i.qty * i.price\n"
             "FROM items AS i WHERE i.qty > 0",
    "postgresql": "INSERT INTO t_items (item_key, name, qty, total)\n"
                  "SELECT 'K' || CAST(i.id AS TEXT), UPPER(i.name), i.qty, i.qty * i.price\n"
                  "FROM items AS i WHERE i.qty > 0",
}
DIRECTIONS = [("mysql", "postgresql"), ("postgresql", "mysql"), ("postgresql", "postgresql"),
              ("mysql", "mysql")]


def expected(src: Any) -> list[tuple[Any, ...]]:
    rows = src.query("SELECT id, name, qty, price FROM items")
    return sorted((f"K{i}", n.upper(), q, Decimal(p) * q) for i, n, q, p in rows if q > 0)


def actual(tgt: Any) -> list[tuple[Any, ...]]:
    return sorted((k, n, q, Decimal(t)) for k, n, q, t in
                  tgt.query("SELECT item_key, name, qty, total FROM t_items"))


@pytest.fixture(params=DIRECTIONS, ids=lambda d: f"{d[0]}-to-{d[1]}")
def direction(request: Any, tmp_path: Path, make_mysql_db: Any,
              make_pg_db: Any) -> Iterator[tuple[Any, Any, Path]]:
    s_kind, t_kind = request.param
    src = make_mysql_db() if s_kind == "mysql" else make_pg_db()
    tgt = make_mysql_db() if t_kind == "mysql" else make_pg_db()
    src.execute(SRC_DDL[s_kind])
    tgt.execute(TGT_DDL[t_kind])
    cfg = write_pipeline(tmp_path, src.url, tgt.url, {"items": RULE[s_kind]},
                         name=f"d_{src.name}", extra="batch:\n  max_rows: 300\n")
    cdc("check", "-c", str(cfg))
    cdc("setup", "-c", str(cfg))
    yield src, tgt, cfg
    if s_kind == "postgresql":
        cdc("teardown", "-c", str(cfg), "--yes", check=False)
        from cdc.sources.postgres import PostgresSource

        c = load(cfg)
        PostgresSource(c.source.libpq(), slot=c.slot, publication=c.publication,
                       tables=["items"]).teardown()


def test_stream_all_operations(direction: tuple[Any, Any, Path]) -> None:
    src, tgt, cfg = direction
    with PipelineThread(cfg) as p:
        src.execute("INSERT INTO items VALUES (1, 'apple', 3, 1.50), (2, '梨', 1, 2.00),"
                    " (3, 'plum 🍑', 0, 0.30)")
        src.execute("UPDATE items SET qty = 10 WHERE id = 1")
        src.execute("UPDATE items SET id = 20 WHERE id = 2")
        src.execute("UPDATE items SET qty = 7 WHERE id = 3")
        src.execute("DELETE FROM items WHERE id = 1")
        p.wait_caught_up()
        time.sleep(0.3)
        p.wait_caught_up()
    assert actual(tgt) == expected(src) == [("K20", "梨", 1, Decimal("2.00")),
                                            ("K3", "PLUM 🍑", 7, Decimal("2.10"))]


def test_snapshot_then_kill_9_and_restart(direction: tuple[Any, Any, Path], tmp_path: Path) -> None:
    src, tgt, cfg = direction
    src.execute("INSERT INTO items VALUES " + ", ".join(
        f"({i}, 'n{i}', {i % 4}, {i % 50}.25)" for i in range(1, 1501)))
    cdc("snapshot", "-c", str(cfg))
    assert actual(tgt) == expected(src)
    rnd = random.Random(9)
    daemon = DaemonProcess(cfg, tmp_path / "run.log")
    next_id = 2000
    for _ in range(3):
        daemon.start()
        for _ in range(20):
            next_id += 10
            src.execute("INSERT INTO items VALUES " + ", ".join(
                f"({i}, 'm{i}', {i % 3}, 1.00)" for i in range(next_id - 9, next_id + 1)))
            src.execute(f"UPDATE items SET qty = qty + 1 WHERE id % 11 = {rnd.randint(0, 10)}")
            src.execute(f"DELETE FROM items WHERE id = {rnd.randint(1, next_id)}")
        time.sleep(rnd.uniform(0.2, 0.8))
        daemon.kill9()
    daemon.start()
    try:
        wait_caught_up(load(cfg), timeout=120)
        time.sleep(0.3)
        wait_caught_up(load(cfg), timeout=60)
    finally:
        assert daemon.terminate() == 0, (tmp_path / "run.log").read_text()[-3000:]
    assert actual(tgt) == expected(src)
