"""Faults against real servers: cut connections, restarted servers, terminal errors.

Every scenario ends with the target equal to the source through the rule, and
the daemon's log tells one line per incident.
"""

from __future__ import annotations

import random
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pymysql
import pytest
from pipeline_helpers import (
    DaemonProcess,
    cdc,
    mysql_tx,
    normalize,
    own_tracebacks,
    wait_caught_up,
    write_pipeline,
)
from proxy import Proxy

from cdc.config import load
from cdc.devservers import MariaDBServer, PostgresServer, free_port

SRC = """CREATE TABLE items (id INT NOT NULL PRIMARY KEY, name VARCHAR(50) NOT NULL,
         qty INT NOT NULL) DEFAULT CHARSET=utf8mb4"""
TGT = "CREATE TABLE t_items (k text PRIMARY KEY, name text NOT NULL, qty integer NOT NULL)"
RULE = ("INSERT INTO t_items (k, name, qty) SELECT CONCAT('K', CAST(i.id AS CHAR)), i.name, i.qty"
        " FROM items AS i WHERE i.qty > 0")
EXPECTED = "SELECT CONCAT('K', CAST(i.id AS CHAR)), i.name, i.qty FROM items AS i WHERE i.qty > 0"


class Writer:
    """A background workload: multi-row transactions of inserts, updates,
    deletes and key changes, tolerant of the source being briefly away."""

    def __init__(self, url: str, seed: int) -> None:
        self.url = url
        self.rnd = random.Random(seed)
        self.next_id = 0
        self.stop = threading.Event()
        self.done = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def step(self) -> list[str]:
        r, stmts = self.rnd, []
        base = self.next_id
        self.next_id += 20
        stmts.append("INSERT INTO items VALUES " + ", ".join(
            f"({i}, 'n{i}', {i % 4})" for i in range(base + 1, base + 21)))
        hi = max(1, self.next_id)
        stmts.append(f"UPDATE items SET qty = qty + 1, name = CONCAT(name, '+') "
                     f"WHERE id % 13 = {r.randint(0, 12)} AND id > {hi - 400}")
        stmts.append(f"DELETE FROM items WHERE id IN ({r.randint(1, hi)}, {r.randint(1, hi)})")
        old = r.randint(1, hi)
        stmts.append(f"UPDATE IGNORE items SET id = {hi + 100000 + old} WHERE id = {old}")
        return stmts

    def _run(self) -> None:
        while not self.stop.is_set():
            stmts = self.step()
            try:
                mysql_tx(self.url, stmts)
                self.done += 1
            except pymysql.err.MySQLError:
                self.next_id += 20  # the ids may or may not exist; never reuse them
                time.sleep(0.2)

    def __enter__(self) -> Writer:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.thread.join(timeout=30)


def equal(src: Any, tgt: Any) -> None:
    assert normalize(tgt.query("SELECT k, name, qty FROM t_items")) == normalize(
        src.query(EXPECTED))


def test_cut_connections_through_proxies(tmp_path: Path, mysql_db: Any, pg_db: Any,
                                         mariadb_server: Any, pg_server: Any) -> None:
    mysql_db.execute(SRC)
    pg_db.execute(TGT)
    my_proxy, pg_proxy = Proxy(mariadb_server.port), Proxy(pg_server.port)
    src_url = mysql_db.url.replace(f":{mariadb_server.port}/", f":{my_proxy.port}/")
    tgt_url = pg_db.url.replace(f":{pg_server.port}/", f":{pg_proxy.port}/")
    cfg = write_pipeline(tmp_path, src_url, tgt_url, {"items": RULE},
                         extra="batch:\n  max_rows: 500\n")
    cdc("setup", "-c", str(cfg))
    log = tmp_path / "run.log"
    daemon = DaemonProcess(cfg, log)
    daemon.start()
    try:
        with Writer(mysql_db.url, 1) as w:
            for i in range(6):
                time.sleep(1.0)
                (my_proxy if i % 2 == 0 else pg_proxy).cut()
            time.sleep(1.0)
        assert w.done > 20
        wait_caught_up(load(cfg), timeout=120)
    finally:
        assert daemon.terminate() == 0, log.read_text()[-3000:]
        my_proxy.stop()
        pg_proxy.stop()
    equal(mysql_db, pg_db)
    text = log.read_text()
    assert own_tracebacks(text) == []
    assert text.count("transient failure") >= 2, text[-3000:]
    assert "recovered after" in text


@pytest.fixture(scope="module")
def own_servers() -> Iterator[tuple[MariaDBServer, PostgresServer]]:
    """Servers this module may restart (the session's are shared by all tests)."""
    with tempfile.TemporaryDirectory(prefix="cdc-restart-") as d:
        base = Path(d)
        base.chmod(0o755)
        my = MariaDBServer(base, port=free_port())
        pg = PostgresServer(base, port=free_port())
        my.start(die_with_parent=True)
        pg.start(die_with_parent=True)
        try:
            yield my, pg
        finally:
            my.stop()
            pg.stop()


def test_source_and_target_restart_mid_stream(tmp_path: Path,
                                              own_servers: tuple[MariaDBServer, PostgresServer]
                                              ) -> None:
    my, pg = own_servers
    my.create_database("shop")
    pg.create_database("crm")
    my.execute(SRC, dbname="shop")
    with psycopg.connect(pg.url("crm"), autocommit=True) as c:
        c.execute(TGT)
    cfg = write_pipeline(tmp_path, my.url("shop"), pg.url("crm"), {"items": RULE})
    cdc("setup", "-c", str(cfg))
    log = tmp_path / "run.log"
    daemon = DaemonProcess(cfg, log)
    daemon.start()
    try:
        with Writer(my.url("shop"), 2) as w:
            time.sleep(1.5)
            my.stop()
            time.sleep(1.0)
            my.start(die_with_parent=True)
            time.sleep(2.0)
            pg.stop()
            time.sleep(1.0)
            pg.start(die_with_parent=True)
            time.sleep(2.0)
        assert w.done > 10
        wait_caught_up(load(cfg), timeout=120)
    finally:
        assert daemon.terminate() == 0, log.read_text()[-3000:]

    class Db:
        def __init__(self, url: str, kind: str) -> None:
            self.url, self.kind = url, kind

        def query(self, q: str) -> list[tuple[Any, ...]]:
            if self.kind == "pg":
                with psycopg.connect(self.url) as c:
                    return c.execute(q).fetchall()
            from cdc.config import DatabaseUrl

            u = DatabaseUrl.parse(self.url)
            conn = pymysql.connect(host=u.host, port=u.port, user=u.user, password=u.password,
                                   database=u.database)
            with conn.cursor() as cur:
                cur.execute(q)
                rows = list(cur.fetchall())
            conn.close()
            return rows

    equal(Db(my.url("shop"), "my"), Db(pg.url("crm"), "pg"))
    text = log.read_text()
    assert own_tracebacks(text) == []
    incidents = text.count("transient failure")
    assert 2 <= incidents <= 4, text[-3000:]  # one line per incident, not per attempt
    assert text.count("recovered after") == incidents


def test_terminal_errors_exit_3_with_one_line(tmp_path: Path, mysql_db: Any, pg_db: Any,
                                              mariadb_server: Any, pg_server: Any) -> None:
    mysql_db.execute(SRC)
    pg_db.execute(TGT)
    cfg = write_pipeline(tmp_path, mysql_db.url, pg_db.url, {"items": RULE})
    cdc("setup", "-c", str(cfg))

    # Wrong password: not retried forever.
    bad = write_pipeline(tmp_path / "..", mysql_db.url,
                         pg_server.url(pg_db.name, "postgres", "wrong"), {"items": RULE},
                         name="p")
    p = cdc("run", "-c", str(bad), check=False, timeout=60)
    assert p.returncode == 3 and "authentication failed" in p.stderr
    assert "Traceback" not in p.stderr

    # Bookkeeping schema newer than this cdc.
    pg_db.execute("INSERT INTO cdc.schema_version (version) VALUES (999)")
    p = cdc("run", "-c", str(cfg), check=False, timeout=60)
    assert p.returncode == 3 and "newer than this cdc knows" in p.stderr
    pg_db.execute("DELETE FROM cdc.schema_version WHERE version = 999")

    # Binlog purged past the saved position.
    old = pg_db.query("SELECT position FROM cdc.offsets")[0][0]
    conn = pymysql.connect(host="127.0.0.1", port=mariadb_server.port, user="root",
                           password=mariadb_server.password)
    with conn.cursor() as cur:
        # MariaDB keeps a binlog file until InnoDB has checkpointed its
        # transactions (binlog checkpoint events); PURGE skips it silently until then.
        deadline = time.monotonic() + 30
        while True:
            cur.execute("FLUSH BINARY LOGS")
            cur.execute("SHOW MASTER STATUS")
            newest = cur.fetchone()[0]
            cur.execute(f"PURGE BINARY LOGS TO '{newest}'")
            cur.execute("SHOW BINARY LOGS")
            if old.split(":")[1] not in [r[0] for r in cur.fetchall()]:
                break
            assert time.monotonic() < deadline, "the source never purged the old binlog"
            time.sleep(0.5)
    conn.close()
    p = cdc("run", "-c", str(cfg), check=False, timeout=60)
    assert p.returncode == 3, p.stderr
    assert "no longer on the source (purged)" in p.stderr and "cdc snapshot" in p.stderr
    assert old.split(":")[1] in p.stderr


@pytest.mark.slow
def test_kill_9_ten_times_under_load(tmp_path: Path, mysql_db: Any, pg_db: Any) -> None:
    """kill -9 `cdc run` at 12 random moments while a writer keeps committing
    multi-row transactions (inserts, updates, deletes, key changes): tens of
    thousands of row changes, and the target ends equal by key and content."""
    mysql_db.execute(SRC)
    pg_db.execute(TGT)
    cfg = write_pipeline(tmp_path, mysql_db.url, pg_db.url, {"items": RULE},
                         extra="batch:\n  max_rows: 2000\n")
    cdc("setup", "-c", str(cfg))
    log = tmp_path / "run.log"
    daemon = DaemonProcess(cfg, log)
    rnd = random.Random(1234)
    with Writer(mysql_db.url, 3) as w:
        for _ in range(12):
            daemon.start()
            time.sleep(rnd.uniform(0.4, 2.0))
            daemon.kill9()
        # Let the writer reach tens of thousands of row changes.
        while w.done < 450:
            time.sleep(0.2)
    changes = mysql_db.query("SELECT COUNT(*) FROM items")[0][0]
    daemon.start()
    try:
        wait_caught_up(load(cfg), timeout=180)
    finally:
        assert daemon.terminate() == 0, log.read_text()[-3000:]
    assert w.done * 20 >= 9000 and changes > 0  # ~55 row changes per transaction
    equal(mysql_db, pg_db)
    assert own_tracebacks(log.read_text()) == []


def test_connection_lost_inside_a_rule_is_transient_not_a_rule_error() -> None:
    """CI once saw the daemon exit 2 with "items.sql:1: on the target: consuming
    input failed: server closed the connection": a cut while a rule's statement
    ran was blamed on the rule.  Both targets hand such errors back as they are
    (their classify makes them transient); a real SQL error stays the rule's."""
    from cdc.errors import RuleError
    from cdc.targets import mysql as my_target
    from cdc.targets import postgres as pg_target

    rule: Any = type("R", (), {"bound": type("B", (), {
        "rule": type("S", (), {"file": Path("rules/items.sql"), "line": 1})()})()})()
    lost = psycopg.OperationalError("consuming input failed: server closed the connection")
    assert pg_target._rule_error(rule, lost) is lost
    bad = psycopg.errors.UndefinedColumn("column x does not exist")
    assert isinstance(pg_target._rule_error(rule, bad), RuleError)
    for err in (pymysql.err.OperationalError(2013, "Lost connection to server during query"),
                pymysql.err.OperationalError(2006, "MySQL server has gone away"),
                pymysql.err.InterfaceError(0, "")):
        assert my_target._rule_error(rule, err) is err
    syntax = pymysql.err.ProgrammingError(1064, "You have an error in your SQL syntax")
    assert isinstance(my_target._rule_error(rule, syntax), RuleError)
