"""Running it as a DBA: systemd notify, metrics, unit file, doctor, grants, lag checks."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from pipeline_helpers import REPO, PipelineThread, cdc, wait_caught_up, write_pipeline

from cdc.config import load
from cdc.devservers import free_port

SRC = "CREATE TABLE items (id INT PRIMARY KEY, name VARCHAR(50) NOT NULL)"
TGT = "CREATE TABLE t_items (id integer PRIMARY KEY, name text NOT NULL)"
RULE = "INSERT INTO t_items (id, name) SELECT i.id, i.name FROM items AS i"


def pipeline(tmp_path: Path, mysql_db: Any, pg_db: Any, extra: str = "") -> Path:
    mysql_db.execute(SRC)
    pg_db.execute(TGT)
    cfg = write_pipeline(tmp_path, mysql_db.url, pg_db.url, {"items": RULE}, extra)
    cdc("setup", "-c", str(cfg))
    return cfg


def test_systemd_notify_protocol(tmp_path: Path, mysql_db: Any, pg_db: Any) -> None:
    cfg = pipeline(tmp_path, mysql_db, pg_db)
    sock_path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(sock_path)
    sock.settimeout(0.2)
    env = dict(os.environ, NOTIFY_SOCKET=sock_path, WATCHDOG_USEC="1000000")
    proc = subprocess.Popen([sys.executable, "-m", "cdc", "run", "-c", str(cfg)], cwd=REPO,
                            env=env, stderr=subprocess.PIPE)
    env["WATCHDOG_PID"] = str(proc.pid)
    messages: list[str] = []

    def drain(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                messages.append(sock.recv(4096).decode())
            except TimeoutError:
                pass

    try:
        drain(4)
        mysql_db.execute("INSERT INTO items VALUES (1, 'a')")
        drain(2)
        proc.send_signal(signal.SIGHUP)
        drain(2)
        proc.send_signal(signal.SIGTERM)
        drain(1)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        sock.close()
    text = "\n".join(messages)
    assert "READY=1" in text
    assert text.count("WATCHDOG=1") >= 3, "watchdog pings at half of WATCHDOG_USEC"
    assert "STATUS=streaming" in text
    assert "RELOADING=1" in text and text.index("RELOADING=1") < text.rindex("READY=1")
    assert "STOPPING=1" in text


def test_metrics_endpoint(tmp_path: Path, mysql_db: Any, pg_db: Any) -> None:
    port = free_port()
    cfg = pipeline(tmp_path, mysql_db, pg_db, f"metrics:\n  address: 127.0.0.1:{port}\n")
    proc = subprocess.Popen([sys.executable, "-m", "cdc", "run", "-c", str(cfg)], cwd=REPO,
                            stderr=subprocess.DEVNULL)
    try:
        mysql_db.execute("INSERT INTO items VALUES (1, 'a'), (2, 'b'), (3, 'c')")
        mysql_db.execute("UPDATE items SET name = 'x' WHERE id = 1")
        mysql_db.execute("DELETE FROM items WHERE id = 2")
        wait_caught_up(load(cfg))
        deadline = time.monotonic() + 20
        body = ""
        while time.monotonic() < deadline:
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2
                                              ).read().decode()
            except OSError:
                time.sleep(0.2)
                continue
            if "cdc_dead_letters{" in body:
                break
            time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert 'cdc_rows_applied_total{op="insert",pipeline="p",table="items"} 3.0' in body
    assert 'cdc_rows_applied_total{op="update",pipeline="p",table="items"} 1.0' in body
    assert 'cdc_rows_applied_total{op="delete",pipeline="p",table="items"} 1.0' in body
    assert 'cdc_up{pipeline="p"} 1.0' in body
    assert "cdc_apply_seconds_bucket" in body and "cdc_batch_rows_count" in body
    assert 'cdc_dead_letters{pipeline="p"} 0.0' in body
    assert "cdc_seconds_behind" in body


def test_unit_file_verifies(tmp_path: Path) -> None:
    unit = (REPO / "deploy" / "systemd" / "cdc@.service").read_text()
    exe = shutil.which("cdc") or sys.executable
    unit = unit.replace("/opt/cdc/venv/bin/cdc", exe)
    path = tmp_path / "cdc@demo.service"
    path.write_text(unit)
    p = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "Type=notify" in unit and "WatchdogSec=" in unit and "ExecReload=" in unit


def test_doctor_and_least_privilege_users(tmp_path: Path, mysql_db: Any, pg_db: Any,
                                          mariadb_server: Any, pg_server: Any) -> None:
    """The pipeline runs with exactly the GRANTs `cdc doctor --print-grants` prints."""
    mysql_db.execute(SRC)
    pg_db.execute(TGT)
    suffix = mysql_db.name[-6:]
    my_user, pg_user = f"rd_{suffix}", f"wr_{suffix}"
    mariadb_server.execute(f"CREATE USER '{my_user}'@'%' IDENTIFIED BY 'pw1'")
    mariadb_server.execute(f"CREATE USER '{my_user}'@'127.0.0.1' IDENTIFIED BY 'pw1'")
    pg_server.execute(f"CREATE ROLE {pg_user} LOGIN PASSWORD 'pw2'")
    src = mariadb_server.url(mysql_db.name, my_user, "pw1")
    tgt = pg_server.url(pg_db.name, pg_user, "pw2")
    cfg = write_pipeline(tmp_path, src, tgt, {"items": RULE}, name=f"lp_{suffix}")
    before = cdc("doctor", "-c", str(cfg), check=False)
    assert before.returncode == 1
    assert f"FAIL source connection: MySQL 127.0.0.1:{mariadb_server.port}: user '{my_user}' " \
           f"has no access to database '{mysql_db.name}'" in before.stdout
    assert f"GRANT SELECT ON `{mysql_db.name}`.* TO '{my_user}'@'%';" in before.stdout
    mariadb_server.execute(f"GRANT SELECT ON `{mysql_db.name}`.* TO '{my_user}'@'127.0.0.1'")
    before = cdc("doctor", "-c", str(cfg), check=False)
    assert "FAIL privilege REPLICATION SLAVE" in before.stdout
    assert f"fix: GRANT REPLICATION SLAVE ON *.* TO '{my_user}'@'%';" in before.stdout
    grants = cdc("doctor", "-c", str(cfg), "--print-grants").stdout
    assert f"GRANT SELECT ON `{mysql_db.name}`.* TO '{my_user}'@'%';" in grants
    for line in grants.splitlines():
        if line.startswith("--"):
            continue
        if line.startswith("GRANT REPLICATION") or line.startswith("GRANT SELECT ON `"):
            mariadb_server.execute(line)
            mariadb_server.execute(line.replace("'@'%'", "'@'127.0.0.1'"))
        elif line.startswith("GRANT CONNECT") or line.startswith("CREATE SCHEMA"):
            pg_server.execute(line.split("  --")[0], dbname=pg_db.name)
        elif line.startswith("GRANT"):
            pg_db.execute(line)
    after = cdc("doctor", "-c", str(cfg), check=False)
    assert "FAIL privilege" not in after.stdout, after.stdout
    cdc("setup", "-c", str(cfg))
    cdc("check", "-c", str(cfg))
    with PipelineThread(cfg) as p:
        mysql_db.execute("INSERT INTO items VALUES (1, 'least'), (2, 'privilege')")
        p.wait_caught_up()
    assert sorted(pg_db.query("SELECT id, name FROM t_items")) == [(1, "least"),
                                                                  (2, "privilege")]
    after = cdc("doctor", "-c", str(cfg), check=False)
    assert after.returncode == 0, after.stdout


def test_lag_max_seconds_for_monitoring(tmp_path: Path, mysql_db: Any, pg_db: Any) -> None:
    cfg = pipeline(tmp_path, mysql_db, pg_db)
    with PipelineThread(cfg) as p:
        mysql_db.execute("INSERT INTO items VALUES (1, 'a')")
        p.wait_caught_up()
        ok = cdc("lag", "-c", str(cfg), "--max-seconds", "60", check=False)
        assert ok.returncode == 0, ok.stdout + ok.stderr
    # A daemon that stopped (cleanly) replicates nothing: never green.
    stopped = cdc("lag", "-c", str(cfg), "--max-seconds", "60", check=False)
    assert stopped.returncode == 1 and "stopped" in stopped.stderr
    time.sleep(1.2)
    mysql_db.execute("INSERT INTO items VALUES (2, 'b')")  # nobody streams it
    behind = cdc("lag", "-c", str(cfg), "--max-seconds", "1", "--json", check=False)
    assert behind.returncode == 1
    report = json.loads(behind.stdout)
    assert report["state"] == "stopped" and report["caught_up"] is False
    status = cdc("status", "-c", str(cfg)).stdout
    assert "applied_position" in status and "dead_letters" in status


def test_dead_daemon_is_never_healthy(tmp_path: Path, mysql_db: Any, pg_db: Any) -> None:
    """kill -9 leaves the status row saying 'streaming'; lag must not believe it."""
    from pipeline_helpers import DaemonProcess

    cfg = pipeline(tmp_path, mysql_db, pg_db)
    d = DaemonProcess(cfg, tmp_path / "daemon.log")
    d.start()
    try:
        mysql_db.execute("INSERT INTO items VALUES (1, 'a')")
        wait_caught_up(load(cfg))
        live = json.loads(cdc("lag", "-c", str(cfg), "--json").stdout)
        assert live["state"] == "streaming" and live["pid"] == d.proc.pid  # type: ignore[union-attr]
        assert live["heartbeat_age_seconds"] is not None and live["heartbeat_age_seconds"] < 30
        assert cdc("lag", "-c", str(cfg), "--max-seconds", "10", check=False).returncode == 0
        d.kill9()
        # The source is quiet: the target is "0 s behind" forever, and the
        # status row still says streaming.
        dead = cdc("lag", "-c", str(cfg), "--max-seconds", "10", "--json", check=False)
        assert dead.returncode == 1
        report = json.loads(dead.stdout)
        assert report["state"] == "gone" and report["caught_up"] is True
        assert "not running" in dead.stderr
        assert "gone" in cdc("status", "-c", str(cfg)).stdout
    finally:
        if d.proc is not None and d.proc.poll() is None:
            d.kill9()


def test_daemon_state_from_heartbeat() -> None:
    """The rule `cdc lag` applies to the status row a daemon left behind."""
    from cdc.cli import _daemon_state

    me, here = os.getpid(), socket.gethostname()
    assert _daemon_state("streaming", 1.0, me, here) == "streaming"
    assert _daemon_state("streaming", 31.0, me, here) == "stale"
    assert _daemon_state("streaming", 31.0, 4242, "another-host") == "stale"
    assert _daemon_state("streaming", 1.0, 4242, "another-host") == "streaming"
    assert _daemon_state("failing", 90.0, me, here) == "failing"
    assert _daemon_state("stopped", 999.0, me, here) == "stopped"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert _daemon_state("streaming", 1.0, dead.pid, here) == "gone"
    assert _daemon_state("failing", 1.0, dead.pid, here) == "gone"
