"""Helpers for end-to-end tests: write a pipeline, run it, wait, compare."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

from cdc.config import Config, load
from cdc.pipeline import run

REPO = Path(__file__).resolve().parent.parent


def write_pipeline(tmp: Path, source_url: str, target_url: str, rules: dict[str, str],
                   extra: str = "", name: str = "p") -> Path:
    rules_dir = tmp / "rules"
    rules_dir.mkdir(exist_ok=True)
    for f in rules_dir.glob("*.sql"):
        f.unlink()
    for rule_name, text in rules.items():
        (rules_dir / f"{rule_name}.sql").write_text(textwrap.dedent(text))
    cfg = tmp / "pipeline.yaml"
    cfg.write_text(textwrap.dedent(f"""\
        pipeline: {name}
        source:
          url: {source_url}
          heartbeat_seconds: 0.2
        target:
          url: {target_url}
        rules: rules/
        retry:
          initial_seconds: 0.2
          max_seconds: 1
        """) + textwrap.dedent(extra))
    return cfg


def cdc(*args: str, check: bool = True, env: dict[str, str] | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    full_env = dict(os.environ)
    full_env.update(env or {})
    p = subprocess.run([sys.executable, "-m", "cdc", *args], capture_output=True, text=True,
                       timeout=timeout, env=full_env, cwd=REPO)
    if check and p.returncode != 0:
        raise AssertionError(f"cdc {' '.join(args)} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
    return p


class PipelineThread:
    """`cdc run` in-process, in a thread, for tests that need to watch it."""

    def __init__(self, cfg_path: Path) -> None:
        self.config: Config = load(cfg_path)
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        try:
            run(self.config, self.stop)
        except BaseException as e:  # surfaced by join()
            self.error = e

    def __enter__(self) -> PipelineThread:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.join()

    def join(self) -> None:
        self.stop.set()
        self.thread.join(timeout=30)
        assert not self.thread.is_alive(), "pipeline did not stop within 30 s"
        if self.error is not None:
            raise self.error

    def wait_caught_up(self, timeout: float = 60) -> None:
        wait_caught_up(self.config, timeout, lambda: self.error)


def _pos(text: str | None) -> tuple[int, int] | None:
    from cdc.positions import BinlogPosition, Lsn

    if not text:
        return None
    if "/" in text:
        return Lsn.parse(text).sort_key()
    file, _, pos = text.rpartition(":")
    return BinlogPosition(file, int(pos)).sort_key()


def wait_caught_up(config: Config, timeout: float = 60,
                   failed: Any = lambda: None) -> dict[str, Any]:
    """Wait until everything the source had committed when called is applied.

    The source position is taken once: with source and target on one server
    (MySQL->MySQL) the target's own commits move the source's binlog forever.
    """
    from cdc.cli import lag_report

    deadline = time.monotonic() + timeout
    last: dict[str, Any] = lag_report(config)
    goal = _pos(last.get("source_position"))
    if config.source.kind == "postgresql" and goal is not None:
        # The test server commits asynchronously: the source position (WAL
        # written) can still be short of a commit just made; wait for the
        # WAL inserted, which the walsender sends once it is flushed.
        import psycopg

        with psycopg.connect(config.source.libpq(), autocommit=True) as c:
            row = c.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()
        inserted = _pos(row[0] if row else None)
        if inserted is not None:
            goal = max(goal, inserted)
    while time.monotonic() < deadline:
        err = failed()
        if err is not None:
            raise err
        applied = _pos(last.get("applied_position"))
        if goal is not None and applied is not None and applied >= goal:
            return last
        time.sleep(0.1)
        last = lag_report(config)
    raise AssertionError(f"pipeline did not catch up within {timeout}s: {last}")


class DaemonProcess:
    """`python -m cdc run` as a child process (for kill -9 tests)."""

    def __init__(self, cfg_path: Path, log: Path, env: dict[str, str] | None = None) -> None:
        self.cfg_path = cfg_path
        self.log = log
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.streams_before = 0

    def _streams(self) -> int:
        return self.log.read_text(errors="replace").count("streaming pipeline") \
            if self.log.exists() else 0

    def start(self) -> None:
        self.streams_before = self._streams()
        fh = open(self.log, "ab")  # noqa: SIM115 - kept open for the child's lifetime
        self.proc = subprocess.Popen([sys.executable, "-m", "cdc", "run", "-c",
                                      str(self.cfg_path)], stdout=fh, stderr=fh, cwd=REPO,
                                     env=self.env)
        fh.close()

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def terminate(self) -> int:
        """SIGTERM once the daemon is past startup (it logged "streaming
        pipeline"): during Python's own startup SIGTERM still has its default
        action, exit -15, which is not what these tests look at."""
        assert self.proc is not None
        deadline = time.monotonic() + 60
        while self.proc.poll() is None and self._streams() <= self.streams_before \
                and time.monotonic() < deadline:
            time.sleep(0.1)
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=30)


def normalize(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Compare values across drivers: Decimal/str/int forms of the same value."""
    from decimal import Decimal

    def norm(v: Any) -> Any:
        if isinstance(v, Decimal):
            return format(v.normalize(), "f")
        if isinstance(v, int) and not isinstance(v, bool):
            return str(v)
        if isinstance(v, bytes):
            return v.decode()
        return v

    return sorted((tuple(norm(v) for v in r) for r in rows), key=repr)


def mysql_tx(url: str, statements: list[str]) -> None:
    """Run statements as ONE source transaction."""
    import pymysql

    from cdc.config import DatabaseUrl

    u = DatabaseUrl.parse(url)
    conn = pymysql.connect(host=u.host, port=u.port, user=u.user, password=u.password,
                           database=u.database, charset="utf8mb4", autocommit=False)
    try:
        with conn.cursor() as cur:
            for s in statements:
                cur.execute(s)
        conn.commit()
    finally:
        conn.close()


def own_tracebacks(log_text: str) -> list[str]:
    """Tracebacks in a daemon log that come from cdc, not counting one kind
    that is not ours: a decoder process still being spawned (multiprocessing's
    bootstrap reading its start-up data) when kill -9 took its parent, which
    ends in EOFError before any cdc code runs."""
    out = []
    for block in log_text.split("Traceback (most recent call last):")[1:]:
        head = block[:1500]
        if "multiprocessing/spawn.py" in head and "EOFError: Ran out of input" in head:
            continue
        out.append(block[:1500])
    return out
