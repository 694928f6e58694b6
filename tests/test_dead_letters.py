"""Bad rows go to the dead-letter table with their reason; the rest applies."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from pipeline_helpers import PipelineThread, cdc, mysql_tx, write_pipeline

SRC = """CREATE TABLE items (id INT PRIMARY KEY, name VARCHAR(50) NULL, qty INT NOT NULL,
         price DECIMAL(10,2) NOT NULL) DEFAULT CHARSET=utf8mb4"""
TGT = """CREATE TABLE t_items (id integer PRIMARY KEY, name text NOT NULL,
         qty integer NOT NULL CHECK (qty > 0), price numeric(10,2))"""
RULE = "INSERT INTO t_items (id, name, qty, price) SELECT i.id, i.name, i.qty, i.price FROM items AS i"


def test_bad_rows_are_isolated_and_retried(tmp_path: Path, mysql_db: Any, pg_db: Any) -> None:
    mysql_db.execute(SRC)
    pg_db.execute(TGT)
    cfg = write_pipeline(tmp_path, mysql_db.url, pg_db.url, {"items": RULE},
                         extra="dead_letters:\n  retry_seconds: 3600\n")
    cdc("setup", "-c", str(cfg))
    rows = [f"({i}, 'n{i}', {i % 7 + 1}, 1.00)" for i in range(1, 101)]
    rows[9] = "(10, NULL, 3, 1.00)"  # NOT NULL violation in the target
    rows[49] = "(50, 'n50', 0, 1.00)"  # CHECK violation
    with PipelineThread(cfg) as p:
        mysql_tx(mysql_db.url, [f"INSERT INTO items VALUES {', '.join(rows)}"])
        mysql_db.execute("UPDATE items SET qty = -1 WHERE id = 70")  # a later bad update
        mysql_db.execute("UPDATE items SET qty = 5 WHERE id = 71")
        p.wait_caught_up()
    got = {r[0] for r in pg_db.query("SELECT id FROM t_items")}
    assert got == set(range(1, 101)) - {10, 50}, "clean rows around the bad ones must arrive"
    # id 70 keeps its last good image; the bad update is a dead letter.
    assert pg_db.query("SELECT qty FROM t_items WHERE id = 70") == [(70 % 7 + 1,)]
    assert pg_db.query("SELECT qty FROM t_items WHERE id = 71") == [(5,)]
    listing = json.loads(cdc("dlq", "list", "-c", str(cfg), "--json").stdout)
    by_id = {json.loads(json.dumps(r["row_data"]))["after"]["id"]: r for r in listing}
    assert set(by_id) == {10, 50, 70}
    assert "null value in column \"name\"" in by_id[10]["error"]
    assert "check constraint" in by_id[50]["error"]
    assert by_id[70]["operation"] == "U" and by_id[70]["position"].startswith("binlog:")
    assert all(r["rule"] == "items" and r["source_table"] == "items" for r in listing)
    lag = json.loads(cdc("lag", "-c", str(cfg), "--json").stdout)
    assert lag["dead_letters"] == 3

    # Fix the causes: the source rows for 10 and 70, the target constraint for 50.
    mysql_db.execute("UPDATE items SET name = 'fixed' WHERE id = 10")
    mysql_db.execute("UPDATE items SET qty = 9 WHERE id = 70")
    pg_db.execute("ALTER TABLE t_items DROP CONSTRAINT t_items_qty_check")
    out = cdc("dlq", "retry", "-c", str(cfg), "--all")
    assert "retried 3: 3 applied, 0 still failing" in out.stdout
    assert json.loads(cdc("dlq", "list", "-c", str(cfg), "--json").stdout) == []
    assert pg_db.query("SELECT name FROM t_items WHERE id = 10") == [("fixed",)]
    assert pg_db.query("SELECT qty FROM t_items WHERE id = 50") == [(0,)]
    assert pg_db.query("SELECT qty FROM t_items WHERE id = 70") == [(9,)]


def test_validation_conditions(tmp_path: Path, mysql_db: Any, pg_db: Any) -> None:
    mysql_db.execute(SRC)
    pg_db.execute("CREATE TABLE t_items (id integer PRIMARY KEY, name text, qty integer,"
                  " price numeric(10,2))")
    cfg = write_pipeline(tmp_path, mysql_db.url, pg_db.url, {"items": RULE}, extra=(
        "rule_options:\n  items:\n    validate:\n      - price > 0\n      - name IS NOT NULL\n"))
    cdc("setup", "-c", str(cfg))
    with PipelineThread(cfg) as p:
        mysql_db.execute("INSERT INTO items VALUES (1, 'ok', 1, 2.50), (2, 'free', 1, 0.00),"
                         " (3, NULL, 1, 1.00)")
        p.wait_caught_up()
    assert pg_db.query("SELECT id FROM t_items") == [(1,)]
    listing = json.loads(cdc("dlq", "list", "-c", str(cfg), "--json").stdout)
    errors = sorted(r["error"] for r in listing)
    assert errors == ["validation failed: name IS NOT NULL", "validation failed: price > 0"]
    shown = cdc("dlq", "show", "-c", str(cfg), str(listing[0]["id"])).stdout
    assert "row_data:" in shown and "error: validation failed" in shown
    assert "dropped 2" in cdc("dlq", "drop", "-c", str(cfg), "--all").stdout


def test_order_before_customer_succeeds_on_automatic_retry(tmp_path: Path, mysql_db: Any,
                                                           pg_db: Any) -> None:
    mysql_db.execute("CREATE TABLE customers (id INT PRIMARY KEY, name VARCHAR(50) NOT NULL)")
    mysql_db.execute("CREATE TABLE orders (id INT PRIMARY KEY, customer_id INT NOT NULL)")
    pg_db.execute("CREATE TABLE c (id integer PRIMARY KEY, name text NOT NULL)")
    pg_db.execute("CREATE TABLE o (id integer PRIMARY KEY, customer_id integer NOT NULL"
                  " REFERENCES c (id))")
    cfg = write_pipeline(tmp_path, mysql_db.url, pg_db.url, {
        "a_orders": "INSERT INTO o (id, customer_id) SELECT x.id, x.customer_id FROM orders AS x",
        "b_customers": "INSERT INTO c (id, name) SELECT x.id, x.name FROM customers AS x"},
        extra="dead_letters:\n  retry_seconds: 0.5\n")
    cdc("setup", "-c", str(cfg))
    with PipelineThread(cfg) as p:
        mysql_db.execute("INSERT INTO orders VALUES (1, 7)")  # customer 7 does not exist yet
        p.wait_caught_up()
        assert pg_db.query("SELECT count(*) FROM cdc.dead_letters") == [(1,)]
        mysql_db.execute("INSERT INTO customers VALUES (7, 'late')")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and pg_db.query("SELECT count(*) FROM o") != [(1,)]:
            time.sleep(0.2)
    assert pg_db.query("SELECT id, customer_id FROM o") == [(1, 7)]
    assert pg_db.query("SELECT count(*) FROM cdc.dead_letters") == [(0,)]
