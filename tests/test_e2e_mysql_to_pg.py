"""The spine end to end: MariaDB binlog -> rules -> PostgreSQL, real servers."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pipeline_helpers import (
    DaemonProcess,
    PipelineThread,
    cdc,
    mysql_tx,
    normalize,
    own_tracebacks,
    wait_caught_up,
    write_pipeline,
)

from cdc.config import load

ITEMS_MYSQL = """
CREATE TABLE items (
    id INT NOT NULL PRIMARY KEY,
    name VARCHAR(100) NOT NULL,
    qty INT NOT NULL,
    price DECIMAL(10,2) NOT NULL,
    active TINYINT NOT NULL DEFAULT 1,
    grp INT NULL
) DEFAULT CHARSET=utf8mb4
"""
ITEMS_PG = """
CREATE TABLE t_items (item_key text PRIMARY KEY, name text NOT NULL, qty integer NOT NULL,
                      total numeric(14,2) NOT NULL)
"""
ITEMS_RULE = """
INSERT INTO t_items (item_key, name, qty, total)
SELECT CONCAT('K', CAST(i.id AS CHAR)), UPPER(i.name), i.qty, i.qty * i.price
FROM items AS i
WHERE i.active = 1;
"""
# The same SELECT, run on the source, is what the target must hold.
ITEMS_EXPECTED = ("SELECT CONCAT('K', CAST(i.id AS CHAR)), UPPER(i.name), i.qty, i.qty * i.price "
                  "FROM items AS i WHERE i.active = 1")
ITEMS_TARGET = "SELECT item_key, name, qty, total FROM t_items"


def items_pipeline(tmp_path: Path, mysql_db: Any, pg_db: Any, extra: str = "") -> Path:
    mysql_db.execute(ITEMS_MYSQL)
    pg_db.execute(ITEMS_PG)
    cfg = write_pipeline(tmp_path, mysql_db.url, pg_db.url, {"items": ITEMS_RULE}, extra)
    cdc("setup", "-c", str(cfg))
    return cfg


def assert_items_equal(mysql_db: Any, pg_db: Any) -> None:
    expected = normalize(mysql_db.query(ITEMS_EXPECTED))
    actual = normalize(pg_db.query(ITEMS_TARGET))
    assert actual == expected


def test_insert_update_delete_key_change_filter(tmp_path: Path, mysql_db: Any, pg_db: Any) -> None:
    cfg = items_pipeline(tmp_path, mysql_db, pg_db)
    with PipelineThread(cfg) as p:
        mysql_db.execute("INSERT INTO items VALUES (1,'apple',3,1.50,1,NULL),(2,'pear',1,2.00,1,NULL),"
                         "(3,'plum',7,0.30,0,NULL)")
        p.wait_caught_up()
        assert normalize(pg_db.query(ITEMS_TARGET)) == normalize(
            [("K1", "APPLE", 3, "4.5"), ("K2", "PEAR", 1, "2")])
        mysql_db.execute("UPDATE items SET qty = 10 WHERE id = 1")  # update
        mysql_db.execute("UPDATE items SET id = 20 WHERE id = 2")  # key change moves the row
        mysql_db.execute("UPDATE items SET active = 1 WHERE id = 3")  # enters the filter
        mysql_db.execute("DELETE FROM items WHERE id = 1")  # delete
        p.wait_caught_up()
        assert normalize(pg_db.query(ITEMS_TARGET)) == normalize(
            [("K20", "PEAR", 1, "2"), ("K3", "PLUM", 7, "2.1")])
        mysql_db.execute("UPDATE items SET active = 0 WHERE id = 20")  # leaves the filter
        p.wait_caught_up()
        assert normalize(pg_db.query(ITEMS_TARGET)) == normalize([("K3", "PLUM", 7, "2.1")])
        assert_items_equal(mysql_db, pg_db)


def test_collapse_within_one_batch(tmp_path: Path, mysql_db: Any, pg_db: Any) -> None:
    """Many changes to one key in one source transaction become its last image."""
    cfg = items_pipeline(tmp_path, mysql_db, pg_db)
    stmts = ["INSERT INTO items VALUES (1,'a',1,1.00,1,NULL)"]
    stmts += [f"UPDATE items SET qty = {n} WHERE id = 1" for n in range(2, 60)]
    stmts += ["UPDATE items SET id = 2 WHERE id = 1", "UPDATE items SET id = 3 WHERE id = 2",
              "INSERT INTO items VALUES (1,'again',5,1.00,1,NULL)",
              "INSERT INTO items VALUES (9,'gone',1,1.00,1,NULL)", "DELETE FROM items WHERE id = 9"]
    mysql_tx(mysql_db.url, stmts)
    with PipelineThread(cfg) as p:
        p.wait_caught_up()
    assert normalize(pg_db.query(ITEMS_TARGET)) == normalize(
        [("K3", "A", 59, "59"), ("K1", "AGAIN", 5, "5")])
    assert_items_equal(mysql_db, pg_db)
    # It was one source transaction, so it was one offset step.
    assert pg_db.query("SELECT transactions FROM cdc.offsets")[0][0] == 1


def test_fan_in_resolves_in_source_order(tmp_path: Path, mysql_db: Any, pg_db: Any) -> None:
    """Two source rows mapping to one target key: the later change wins."""
    mysql_db.execute(ITEMS_MYSQL)
    pg_db.execute("CREATE TABLE t_groups (grp integer PRIMARY KEY, last_name text)")
    rule = """INSERT INTO t_groups (grp, last_name)
              SELECT i.grp, i.name FROM items AS i WHERE i.grp IS NOT NULL"""
    cfg = write_pipeline(tmp_path, mysql_db.url, pg_db.url, {"groups": rule})
    cdc("setup", "-c", str(cfg))
    with PipelineThread(cfg) as p:
        mysql_tx(mysql_db.url, ["INSERT INTO items VALUES (1,'first',1,1,1,7)",
                                "INSERT INTO items VALUES (2,'second',1,1,1,7)",
                                "UPDATE items SET name = 'first-again' WHERE id = 1"])
        p.wait_caught_up()
        assert pg_db.query("SELECT grp, last_name FROM t_groups") == [(7, "first-again")]
        mysql_db.execute("UPDATE items SET name = 'second-later' WHERE id = 2")
        p.wait_caught_up()
        assert pg_db.query("SELECT grp, last_name FROM t_groups") == [(7, "second-later")]


def test_lookup_join_on_target_table(tmp_path: Path, mysql_db: Any, pg_db: Any) -> None:
    mysql_db.execute(ITEMS_MYSQL)
    pg_db.execute("CREATE TABLE grp_names (grp integer PRIMARY KEY, label text NOT NULL)")
    pg_db.execute("INSERT INTO grp_names VALUES (1, 'fruit'), (2, 'veg')")
    pg_db.execute("CREATE TABLE t_labeled (id integer PRIMARY KEY, label text NOT NULL)")
    rule = """INSERT INTO t_labeled (id, label)
              SELECT i.id, COALESCE(g.label, 'unknown') FROM items AS i
              LEFT JOIN grp_names AS g ON g.grp = i.grp"""
    cfg = write_pipeline(tmp_path, mysql_db.url, pg_db.url, {"labeled": rule})
    cdc("setup", "-c", str(cfg))
    with PipelineThread(cfg) as p:
        mysql_db.execute("INSERT INTO items VALUES (1,'a',1,1,1,1),(2,'b',1,1,1,2),(3,'c',1,1,1,5)")
        p.wait_caught_up()
    assert sorted(pg_db.query("SELECT id, label FROM t_labeled")) == [
        (1, "fruit"), (2, "veg"), (3, "unknown")]


def test_reader_never_sees_half_a_transaction(tmp_path: Path, mysql_db: Any, pg_db: Any) -> None:
    """Transfers between accounts keep the total; a target reader must never see
    a different total (half of a source transaction applied)."""
    mysql_db.execute("CREATE TABLE accounts (id INT PRIMARY KEY, balance INT NOT NULL)")
    pg_db.execute("CREATE TABLE t_accounts (id integer PRIMARY KEY, balance integer NOT NULL)")
    rule = "INSERT INTO t_accounts (id, balance) SELECT a.id, a.balance FROM accounts AS a"
    cfg = write_pipeline(tmp_path, mysql_db.url, pg_db.url, {"accounts": rule},
                         extra="batch:\n  max_rows: 7\n")
    cdc("setup", "-c", str(cfg))
    n, total = 20, 20 * 100
    mysql_db.execute("INSERT INTO accounts VALUES " + ",".join(f"({i},100)" for i in range(n)))
    seen: set[tuple[int, int]] = set()
    stop = threading.Event()

    def reader() -> None:
        with psycopg.connect(pg_db.url, autocommit=True) as conn:
            while not stop.is_set():
                row = conn.execute("SELECT count(*), coalesce(sum(balance), 0) FROM t_accounts"
                                   ).fetchone()
                assert row is not None
                seen.add((int(row[0]), int(row[1])))

    rnd = random.Random(7)
    t = threading.Thread(target=reader, daemon=True)
    with PipelineThread(cfg) as p:
        t.start()
        for _ in range(300):
            a, b = rnd.sample(range(n), 2)
            amount = rnd.randint(1, 50)
            mysql_tx(mysql_db.url, [
                f"UPDATE accounts SET balance = balance - {amount} WHERE id = {a}",
                f"UPDATE accounts SET balance = balance + {amount} WHERE id = {b}"])
        p.wait_caught_up()
        time.sleep(0.2)
        stop.set()
        t.join()
    assert len(seen) > 1, "the reader saw too little to mean anything"
    assert seen <= {(0, 0), (n, total)}, f"a reader saw a half-applied transaction: {seen}"
    assert normalize(pg_db.query("SELECT id, balance FROM t_accounts")) == normalize(
        mysql_db.query("SELECT id, balance FROM accounts"))


def _workload(mysql_db: Any, rnd: random.Random, steps: int, next_id: list[int]) -> None:
    for _ in range(steps):
        live = [r[0] for r in mysql_db.query("SELECT id FROM items ORDER BY id")]
        stmts = []
        for _ in range(rnd.randint(1, 6)):
            op = rnd.random()
            if op < 0.4 or not live:
                next_id[0] += 1
                stmts.append(f"INSERT INTO items VALUES ({next_id[0]}, 'n{next_id[0]}', "
                             f"{rnd.randint(0, 9)}, {rnd.randint(1, 999)}.25, {rnd.randint(0, 1)}, NULL)")
                live.append(next_id[0])
            elif op < 0.75:
                stmts.append(f"UPDATE items SET qty = qty + 1, active = {rnd.randint(0, 1)} "
                             f"WHERE id = {rnd.choice(live)}")
            elif op < 0.9:
                victim = rnd.choice(live)
                live.remove(victim)
                stmts.append(f"DELETE FROM items WHERE id = {victim}")
            else:
                old = rnd.choice(live)
                next_id[0] += 1
                live.remove(old)
                live.append(next_id[0])
                stmts.append(f"UPDATE items SET id = {next_id[0]} WHERE id = {old}")
        mysql_tx(mysql_db.url, stmts)


@pytest.mark.slow
def test_kill_9_and_restart_loses_nothing(tmp_path: Path, mysql_db: Any, pg_db: Any) -> None:
    """kill -9 `cdc run` between batches and in the middle of them, restart each
    time: the target ends equal to the source, nothing lost, nothing twice."""
    cfg = items_pipeline(tmp_path, mysql_db, pg_db, extra="batch:\n  max_rows: 200\n")
    log = tmp_path / "run.log"
    rnd = random.Random(42)
    next_id = [0]
    # A backlog so the daemon is busy applying when it is killed.
    _workload(mysql_db, rnd, 400, next_id)
    daemon = DaemonProcess(cfg, log)
    kills = 0
    for _ in range(8):
        daemon.start()
        time.sleep(rnd.uniform(0.3, 1.5))
        _workload(mysql_db, rnd, 40, next_id)
        daemon.kill9()
        kills += 1
    daemon.start()
    try:
        wait_caught_up(load(cfg), timeout=120)
    finally:
        assert daemon.terminate() == 0, log.read_text()[-3000:]
    assert kills == 8
    assert_items_equal(mysql_db, pg_db)
    # Every source transaction that touched items was applied exactly once.
    assert own_tracebacks(log.read_text()) == []


def test_sigterm_commits_and_exits_zero(tmp_path: Path, mysql_db: Any, pg_db: Any) -> None:
    cfg = items_pipeline(tmp_path, mysql_db, pg_db)
    daemon = DaemonProcess(cfg, tmp_path / "run.log")
    daemon.start()
    mysql_db.execute("INSERT INTO items VALUES (1,'x',1,1,1,NULL)")
    wait_caught_up(load(cfg), timeout=60)
    assert daemon.terminate() == 0
    assert "stopped cleanly" in (tmp_path / "run.log").read_text()
    assert_items_equal(mysql_db, pg_db)
    lag = cdc("lag", "-c", str(cfg), "--json")
    import json

    report = json.loads(lag.stdout)
    for key in ("pipeline", "state", "seconds_behind", "source_position", "applied_position",
                "dead_letters"):
        assert key in report
    assert report["state"] == "stopped"


def test_sighup_reload_keeps_old_rules_when_new_ones_are_broken(tmp_path: Path, mysql_db: Any,
                                                                pg_db: Any) -> None:
    import signal as sig

    cfg = items_pipeline(tmp_path, mysql_db, pg_db)
    log = tmp_path / "run.log"
    daemon = DaemonProcess(cfg, log)
    daemon.start()
    try:
        mysql_db.execute("INSERT INTO items VALUES (1,'a',1,1,1,NULL)")
        wait_caught_up(load(cfg), timeout=60)
        rule = tmp_path / "rules" / "items.sql"
        good = rule.read_text()
        rule.write_text(good.replace("i.qty,", "i.qtty,"))  # broken: no such column
        assert daemon.proc is not None
        daemon.proc.send_signal(sig.SIGHUP)
        deadline = time.monotonic() + 30
        while "reload rejected" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "reload rejected, the running rules stay" in log.read_text()
        assert "no column 'qtty'" in log.read_text()
        mysql_db.execute("INSERT INTO items VALUES (2,'b',1,1,1,NULL)")
        wait_caught_up(load(cfg), timeout=60)
        assert_items_equal(mysql_db, pg_db)
        # A good new rule set takes over.
        rule.write_text(good.replace("UPPER(i.name)", "LOWER(i.name)"))
        daemon.proc.send_signal(sig.SIGHUP)
        while "reloaded" not in log.read_text() and time.monotonic() < deadline + 30:
            time.sleep(0.1)
        mysql_db.execute("INSERT INTO items VALUES (3,'MiXeD',1,1,1,NULL)")
        wait_caught_up(load(cfg), timeout=60)
        assert pg_db.query("SELECT name FROM t_items WHERE item_key = 'K3'") == [("mixed",)]
    finally:
        assert daemon.terminate() == 0, log.read_text()[-2000:]
