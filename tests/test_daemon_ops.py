"""The daemon as systemd runs it: a rejected reload never stalls it, the
watchdog hears from it during every wait, and only one daemon runs a pipeline."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pipeline_helpers import REPO, DaemonProcess, cdc, wait_caught_up, write_pipeline
from proxy import Proxy

from cdc.config import load

SRC_DDL = {
    "mysql": "CREATE TABLE items (id INT PRIMARY KEY, name VARCHAR(50) NOT NULL)",
    "postgresql": "CREATE TABLE items (id integer PRIMARY KEY, name text NOT NULL)",
}
TGT_DDL = {
    "postgresql": "CREATE TABLE t_items (id integer PRIMARY KEY, name text NOT NULL)",
    "mysql": "CREATE TABLE t_items (id int PRIMARY KEY, name varchar(100) NOT NULL)",
}
RULE = "INSERT INTO t_items (id, name)\nSELECT i.id, UPPER(i.name)\nFROM items AS i\n"
DIRECTIONS = [("mysql", "postgresql"), ("postgresql", "mysql"), ("postgresql", "postgresql"),
              ("mysql", "mysql")]


def _teardown(cfg: Path) -> None:
    from cdc.sources.postgres import PostgresSource

    c = load(cfg)
    PostgresSource(c.source.libpq(), slot=c.slot, publication=c.publication,
                   tables=["items"]).teardown()


@pytest.fixture(params=DIRECTIONS, ids=lambda d: f"{d[0]}-to-{d[1]}")
def direction(request: Any, tmp_path: Path, make_mysql_db: Any,
              make_pg_db: Any) -> Iterator[tuple[Any, Any, Path]]:
    s_kind, t_kind = request.param
    src = make_mysql_db() if s_kind == "mysql" else make_pg_db()
    tgt = make_mysql_db() if t_kind == "mysql" else make_pg_db()
    src.execute(SRC_DDL[s_kind])
    tgt.execute(TGT_DDL[t_kind])
    cfg = write_pipeline(tmp_path, src.url, tgt.url, {"items": RULE}, name=f"d_{src.name}")
    cdc("setup", "-c", str(cfg))
    yield src, tgt, cfg
    if s_kind == "postgresql":
        _teardown(cfg)


def _wait_log(log: Path, text: str, after: int = 0, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text(errors="replace")[after:]:
        assert time.monotonic() < deadline, f"no {text!r} in the log:\n{log.read_text()[-3000:]}"
        time.sleep(0.1)


def _wait_rows(db: Any, sql: str, want: list[tuple[Any, ...]], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    got = db.query(sql)
    while sorted(got) != sorted(want):
        assert time.monotonic() < deadline, f"{sql}: {got} != {want}"
        time.sleep(0.1)
        got = db.query(sql)


class NotifySocket:
    """A fake systemd: a unix datagram socket recording what the daemon says."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="cdc-notify-")  # short: sun_path is 108 bytes
        self.path = os.path.join(self.dir, "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, str]] = []
        self.lock = threading.Lock()
        self.running = True
        self.deaf = threading.Event()
        self.thread = threading.Thread(target=self._main, daemon=True)
        self.thread.start()

    def _main(self) -> None:
        while self.running:
            if self.deaf.is_set():  # a receiver that reads nothing: its queue fills
                time.sleep(0.05)
                continue
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            with self.lock:
                self.messages.append((time.monotonic(), data.decode()))

    def env(self, watchdog_usec: int) -> dict[str, str]:
        env = dict(os.environ, NOTIFY_SOCKET=self.path, WATCHDOG_USEC=str(watchdog_usec))
        env.pop("WATCHDOG_PID", None)
        return env

    def texts(self) -> list[str]:
        with self.lock:
            return [m for _, m in self.messages]

    def wait_for(self, text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in m for m in self.texts()):
            assert time.monotonic() < deadline, f"no {text!r} from the daemon: {self.texts()}"
            time.sleep(0.1)

    def ping_gaps(self) -> list[float]:
        with self.lock:
            times = [t for t, m in self.messages if "WATCHDOG=1" in m.splitlines()]
        return [b - a for a, b in zip(times, times[1:], strict=False)]

    def close(self) -> None:
        self.running = False
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.mark.parametrize("bad", ["source_column", "target_column"])
def test_rejected_reload_keeps_streaming_and_stops(direction: tuple[Any, Any, Path],
                                                   tmp_path: Path, bad: str) -> None:
    """Replay of issue 16 item 2: a rule naming a missing column, SIGHUP; the old
    rules must keep applying, a fixed rule must take over, SIGTERM must exit 0
    with STOPPING=1.  As in the report, the notify socket's reader stops
    reading for a while (systemd busy, or a test harness): its queue fills
    (net.unix.max_dgram_qlen is 10 by default), which must cost datagrams, never
    a stalled daemon."""
    src, tgt, cfg = direction
    log = tmp_path / "run.log"
    notify = NotifySocket()
    daemon = DaemonProcess(cfg, log, env=notify.env(500_000))
    daemon.start()
    try:
        _wait_log(log, "streaming pipeline")
        notify.wait_for("READY=1")
        notify.deaf.set()
        src.execute("INSERT INTO items VALUES (1, 'a')")
        _wait_rows(tgt, "SELECT id, name FROM t_items", [(1, "A")])
        rule = tmp_path / "rules" / "items.sql"
        rule.write_text({"source_column": RULE.replace("i.name)", "i.nope)"),
                         "target_column": RULE.replace("(id, name)", "(id, nope)")}[bad])
        assert daemon.proc is not None
        mark = len(log.read_text())
        daemon.proc.send_signal(signal.SIGHUP)
        _wait_log(log, "reload rejected, the running rules stay", mark)
        src.execute("INSERT INTO items VALUES (2, 'b')")
        _wait_rows(tgt, "SELECT id, name FROM t_items", [(1, "A"), (2, "B")])
        # The fixed rule takes over.
        rule.write_text(RULE.replace("UPPER(i.name)", "LOWER(i.name)"))
        mark = len(log.read_text())
        daemon.proc.send_signal(signal.SIGHUP)
        _wait_log(log, "reloaded ", mark)
        src.execute("INSERT INTO items VALUES (3, 'MiXeD')")
        _wait_rows(tgt, "SELECT id, name FROM t_items", [(1, "A"), (2, "B"), (3, "mixed")])
        wait_caught_up(load(cfg))
        # Listening again: the queued datagrams (at most 10), then new ones.
        notify.deaf.clear()
        before = len(notify.texts())
        deadline = time.monotonic() + 30
        while len(notify.texts()) < before + 12:
            assert time.monotonic() < deadline, notify.texts()[before:]
            time.sleep(0.05)
        before = len(notify.texts())
    finally:
        try:
            code = daemon.terminate()
        finally:
            if daemon.proc is not None and daemon.proc.poll() is None:
                daemon.proc.kill()
            time.sleep(0.5)
            notify.close()
    assert code == 0, log.read_text()[-3000:]
    assert any("STOPPING=1" in m for m in notify.texts()[before:]), notify.texts()[before:]
    text = log.read_text()
    assert "stopped cleanly" in text
    assert "Traceback" not in text
    # Nothing applied twice, nothing extra.
    assert sorted(tgt.query("SELECT id, name FROM t_items")) == [(1, "A"), (2, "B"), (3, "mixed")]


def _start_daemon(cfg: Path, log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with open(log, "ab") as fh:
        return subprocess.Popen([sys.executable, "-m", "cdc", "run", "-c", str(cfg)],
                                stdout=fh, stderr=fh, cwd=REPO, env=env)


def _sigterm(proc: subprocess.Popen[bytes], log: Path, notify: NotifySocket | None = None) -> int:
    if notify is not None:
        notify.wait_for("READY=1")  # a handler is installed by then
    else:
        _wait_log(log, "streaming pipeline")
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"no exit 60 s after SIGTERM:\n{log.read_text()[-3000:]}") from None


@pytest.mark.parametrize("target_kind", ["postgresql", "mysql"])
def test_watchdog_pings_while_the_target_is_down_at_startup(
        tmp_path: Path, mysql_db: Any, make_mysql_db: Any, pg_db: Any, target_kind: str) -> None:
    """Replay of issue 16 item 3: a target that is down at startup (first a port
    that accepts and then says nothing, so each connection attempt blocks for
    its whole timeout; then nothing listening at all), then back.  The watchdog
    must hear from the daemon all along, STATUS must say what it waits for, and
    READY=1 must come once the target is back."""
    tgt = pg_db if target_kind == "postgresql" else make_mysql_db()
    mysql_db.execute(SRC_DDL["mysql"])
    tgt.execute(TGT_DDL[target_kind])
    cfg = write_pipeline(tmp_path, mysql_db.url, tgt.url, {"items": RULE})
    cdc("setup", "-c", str(cfg))
    # The same target behind a port that is down for now.
    silent = socket.create_server(("127.0.0.1", 0))  # accepts, never answers
    port = silent.getsockname()[1]
    real_port = tgt.server.port
    down_url = tgt.url.replace(f":{real_port}/", f":{port}/")
    assert down_url != tgt.url
    cfg.write_text(cfg.read_text().replace(f"  url: {tgt.url}\n",
                                           f"  url: {down_url}\n  connect_timeout: 3\n"))
    notify = NotifySocket()
    log = tmp_path / "run.log"
    usec = 2_000_000
    proc = _start_daemon(cfg, log, notify.env(usec))
    proxy = None
    try:
        deadline = time.monotonic() + 60
        while not any("retrying" in m for m in notify.texts()):
            assert time.monotonic() < deadline, notify.texts()
            assert proc.poll() is None, log.read_text()
            time.sleep(0.1)
        time.sleep(4)  # a few blocked attempts
        silent.close()
        time.sleep(3)  # a few refused ones
        assert not any("READY=1" in m for m in notify.texts()), "READY before the target is up"
        status = [m for m in notify.texts() if m.startswith("STATUS=")]
        assert any(f"127.0.0.1:{port}" in m and "retrying in" in m for m in status), status
        assert any("connecting to" in m and f"127.0.0.1:{port}" in m for m in status), status
        # systemd's start timeout is extended while we wait.
        assert any("EXTEND_TIMEOUT_USEC=" in m for m in notify.texts())
        proxy = Proxy(real_port, listen_port=port)
        notify.wait_for("READY=1")
        mysql_db.execute("INSERT INTO items VALUES (1, 'a')")
        _wait_rows(tgt, "SELECT id, name FROM t_items", [(1, "A")])
        assert _sigterm(proc, log, notify) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proxy is not None:
            proxy.stop()
        notify.close()
    gaps = notify.ping_gaps()
    assert len(gaps) >= 10, notify.texts()
    assert max(gaps) < usec / 1_000_000 / 2, (max(gaps), notify.texts())
    assert any("STOPPING=1" in m for m in notify.texts())
    assert tgt.query("SELECT id, name FROM t_items") == [(1, "A")]


def _report(cfg: Path) -> dict[str, Any]:
    return json.loads(cdc("lag", "-c", str(cfg), "--json").stdout)


@pytest.fixture(params=[("mysql", "postgresql"), ("postgresql", "mysql")],
                ids=lambda d: f"{d[0]}-to-{d[1]}")
def two_way(request: Any, tmp_path: Path, make_mysql_db: Any,
            make_pg_db: Any) -> Iterator[tuple[Any, Any, Path]]:
    """A PostgreSQL target and a MySQL one (the lock is the target's)."""
    s_kind, t_kind = request.param
    src = make_mysql_db() if s_kind == "mysql" else make_pg_db()
    tgt = make_mysql_db() if t_kind == "mysql" else make_pg_db()
    src.execute(SRC_DDL[s_kind])
    tgt.execute(TGT_DDL[t_kind])
    cfg = write_pipeline(tmp_path, src.url, tgt.url, {"items": RULE}, name=f"d_{src.name}")
    cdc("setup", "-c", str(cfg))
    yield src, tgt, cfg
    if s_kind == "postgresql":
        _teardown(cfg)


def test_second_daemon_refuses_and_takes_over_after_kill_9(two_way: tuple[Any, Any, Path],
                                                           tmp_path: Path) -> None:
    """Replay of issue 16 item 4: a second `cdc run` on the same pipeline."""
    src, tgt, cfg = two_way
    a = DaemonProcess(cfg, tmp_path / "a.log")
    a.start()
    b: DaemonProcess | None = None
    try:
        _wait_log(a.log, "streaming pipeline")
        assert a.proc is not None
        second = cdc("run", "-c", str(cfg), check=False, timeout=120)
        assert second.returncode == 5, second.stderr
        assert f"is already run by pid {a.proc.pid} on {socket.gethostname()} since " \
            in second.stderr, second.stderr
        assert second.stderr.count("\n") == 1, second.stderr  # one line, no traceback
        # The first one goes on as if nothing happened, and still says it is it.
        src.execute("INSERT INTO items VALUES (1, 'a')")
        _wait_rows(tgt, "SELECT id, name FROM t_items", [(1, "A")])
        assert a.proc.poll() is None
        report = _report(cfg)
        assert report["pid"] == a.proc.pid and report["state"] == "streaming", report
        a.kill9()
        src.execute("INSERT INTO items VALUES (2, 'b')")
        b = DaemonProcess(cfg, tmp_path / "b.log")
        b.start()
        _wait_log(b.log, "streaming pipeline")
        src.execute("INSERT INTO items VALUES (3, 'c')")
        _wait_rows(tgt, "SELECT id, name FROM t_items", [(1, "A"), (2, "B"), (3, "C")])
        assert b.proc is not None
        wait_caught_up(load(cfg))
        assert _report(cfg)["pid"] == b.proc.pid
    finally:
        if a.proc is not None and a.proc.poll() is None:
            a.kill9()
        if b is not None:
            assert b.terminate() == 0, b.log.read_text()[-3000:]
    assert "already run by" not in (tmp_path / "a.log").read_text()
    assert sorted(tgt.query("SELECT id, name FROM t_items")) == [(1, "A"), (2, "B"), (3, "C")]


@pytest.mark.parametrize("target_kind", ["postgresql", "mysql"])
def test_lock_is_taken_again_after_a_reconnect(tmp_path: Path, mysql_db: Any, make_mysql_db: Any,
                                               pg_db: Any, target_kind: str) -> None:
    """A reaches its target through a proxy.  Cut: A reconnects and holds the
    pipeline again (B still refused).  Target unreachable for A: B takes the
    pipeline; when A gets through again it finds B there and stops, exit 5."""
    tgt = pg_db if target_kind == "postgresql" else make_mysql_db()
    mysql_db.execute(SRC_DDL["mysql"])
    tgt.execute(TGT_DDL[target_kind])
    real_port = tgt.server.port
    proxy = Proxy(real_port)
    port = proxy.port
    via_proxy = tgt.url.replace(f":{real_port}/", f":{port}/")
    cfg_a = write_pipeline(tmp_path, mysql_db.url, via_proxy, {"items": RULE})
    (tmp_path / "b").mkdir()
    cfg_b = write_pipeline(tmp_path / "b", mysql_db.url, tgt.url, {"items": RULE})
    cdc("setup", "-c", str(cfg_b))
    a = DaemonProcess(cfg_a, tmp_path / "a.log")
    a.start()
    b: DaemonProcess | None = None
    try:
        _wait_log(a.log, "streaming pipeline")
        assert a.proc is not None
        proxy.cut()
        _wait_log(a.log, "recovered after")
        assert a.log.read_text().count("holding pipeline") == 2, a.log.read_text()
        second = cdc("run", "-c", str(cfg_b), check=False, timeout=120)
        assert second.returncode == 5, second.stderr
        assert f"pid {a.proc.pid} " in second.stderr
        src_rows = [(1, "A")]
        mysql_db.execute("INSERT INTO items VALUES (1, 'a')")
        _wait_rows(tgt, "SELECT id, name FROM t_items", src_rows)
        # A loses its target for a while; B starts meanwhile and takes over.
        proxy.stop()
        b = DaemonProcess(cfg_b, tmp_path / "b.log")
        b.start()
        _wait_log(b.log, "streaming pipeline")
        assert b.proc is not None
        proxy = Proxy(real_port, listen_port=port)
        assert a.proc.wait(timeout=120) == 5, a.log.read_text()[-3000:]
        assert f"is already run by pid {b.proc.pid} " in a.log.read_text()
        mysql_db.execute("INSERT INTO items VALUES (2, 'b')")
        _wait_rows(tgt, "SELECT id, name FROM t_items", [(1, "A"), (2, "B")])
        assert _report(cfg_b)["pid"] == b.proc.pid
    finally:
        proxy.stop()
        if a.proc is not None and a.proc.poll() is None:
            a.kill9()
        if b is not None:
            assert b.terminate() == 0, b.log.read_text()[-3000:]
    assert sorted(tgt.query("SELECT id, name FROM t_items")) == [(1, "A"), (2, "B")]


def test_watchdog_stops_pinging_a_stuck_main_thread() -> None:
    """The pinger is no blanket: it pings while the main thread checks in or
    announced a rightful wait, and stops when it does neither (a hang), so
    systemd still restarts a daemon that is really stuck."""
    from cdc.service import Service

    notify = NotifySocket()
    try:
        service = Service(None, env=notify.env(1_000_000))  # type: ignore[arg-type]
        assert service.interval == 0.5
        service.start()
        end = time.monotonic() + 1.5
        while time.monotonic() < end:  # a turning loop
            service.watchdog()
            time.sleep(0.05)
        last_alive = time.monotonic()
        time.sleep(2.0)  # stuck: no check-in
        with service_waiting(service, 2.0):  # a rightful wait (a batch, a backoff)
            busy_from = time.monotonic()
            time.sleep(2.0)
        service.close()
        with notify.lock:
            pings = [t for t, m in notify.messages if m.startswith("WATCHDOG=1")]
    finally:
        notify.close()
    assert any(t < last_alive for t in pings)
    stuck = [t for t in pings if last_alive + 0.5 + 0.3 < t < busy_from]
    assert stuck == [], "pings went on for a main thread that stopped checking in"
    assert len([t for t in pings if t > busy_from]) >= 3, "no pings during a rightful wait"


@contextlib.contextmanager
def service_waiting(service: Any, seconds: float) -> Iterator[None]:
    from cdc.pipeline import Hooks

    with Hooks(busy=service.busy).waiting(seconds):
        yield


def test_watchdog_pings_while_a_batch_waits_on_the_target(tmp_path: Path, mysql_db: Any,
                                                          pg_db: Any) -> None:
    """A batch blocked on a row lock in the target (a DBA's open transaction) is
    a rightful wait: the watchdog keeps hearing from the daemon; the row
    applies once the lock goes."""
    mysql_db.execute(SRC_DDL["mysql"])
    pg_db.execute(TGT_DDL["postgresql"])
    pg_db.execute("INSERT INTO t_items VALUES (1, 'old')")
    cfg = write_pipeline(tmp_path, mysql_db.url, pg_db.url, {"items": RULE})
    cdc("setup", "-c", str(cfg))
    notify = NotifySocket()
    usec = 2_000_000
    log = tmp_path / "run.log"
    proc = _start_daemon(cfg, log, notify.env(usec))
    blocker = pg_db.connect()
    try:
        notify.wait_for("READY=1")
        blocker.autocommit = False
        blocker.execute("SELECT * FROM t_items WHERE id = 1 FOR UPDATE")
        mysql_db.execute("INSERT INTO items VALUES (1, 'new')")
        # Wait until the daemon's statement is seen waiting on our lock.
        deadline = time.monotonic() + 60
        while not pg_db.query("SELECT 1 FROM pg_stat_activity WHERE application_name = 'cdc'"
                              " AND wait_event_type = 'Lock' AND datname = current_database()"):
            assert time.monotonic() < deadline, "the daemon never waited on the row lock"
            time.sleep(0.1)
        waiting_from = time.monotonic()
        time.sleep(3 * usec / 1_000_000)  # longer than the whole watchdog interval
        blocker.rollback()
        _wait_rows(pg_db, "SELECT id, name FROM t_items", [(1, "NEW")])
        assert _sigterm(proc, log, notify) == 0, log.read_text()[-3000:]
    finally:
        blocker.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        notify.close()
    with notify.lock:
        pings = [t for t, m in notify.messages if "WATCHDOG=1" in m.splitlines()]
    during = [t for t in pings if t > waiting_from]
    assert len(during) >= 6, "no pings while the batch waited"
    gaps = notify.ping_gaps()
    assert max(gaps) < usec / 1_000_000 / 2, max(gaps)


def test_start_timeout_is_extended_without_a_watchdog() -> None:
    """No WatchdogSec: no WATCHDOG=1, but a start that waits for a database
    still extends systemd's start timeout until READY=1."""
    from cdc.service import Service

    notify = NotifySocket()
    try:
        env = notify.env(1)
        del env["WATCHDOG_USEC"]
        service = Service(None, env=env)  # type: ignore[arg-type]
        assert service.interval is None
        service.start()
        notify.wait_for("EXTEND_TIMEOUT_USEC=40000000")
        service.ready()
        notify.wait_for("READY=1")
        service.close()
        time.sleep(0.2)
        texts = notify.texts()
    finally:
        notify.close()
    assert not any("WATCHDOG=1" in m for m in texts), texts
    assert not any("EXTEND_TIMEOUT_USEC" in m for m in texts[texts.index(
        next(m for m in texts if "READY=1" in m)):]), texts
