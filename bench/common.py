"""Shared bits for benchmarks: throwaway servers and a tiny timer."""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from cdc.devservers import MariaDBServer, PostgresServer


@contextlib.contextmanager
def second_postgres(first: PostgresServer) -> Iterator[PostgresServer]:
    """Another PostgreSQL server beside ``first`` (a target apart from the source)."""
    pg = PostgresServer(Path(first.basedir) / "second")
    pg.basedir.mkdir(mode=0o755)
    pg.start(die_with_parent=True)
    try:
        yield pg
    finally:
        pg.stop()


@contextlib.contextmanager
def servers() -> Iterator[tuple[MariaDBServer, PostgresServer]]:
    with tempfile.TemporaryDirectory(prefix="cdc-bench-") as d:
        base = Path(d)
        base.chmod(0o755)
        my = MariaDBServer(base)
        pg = PostgresServer(base)
        my.start(die_with_parent=True)
        pg.start(die_with_parent=True)
        try:
            yield my, pg
        finally:
            my.stop()
            pg.stop()


class Timer:
    def __enter__(self) -> Timer:
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.t0


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_snapshot() -> dict[int, tuple[str, float]]:
    """pid -> (kind, CPU seconds so far) for every process on the box.

    Kinds group what a benchmark wants to see: this script and its decoder
    child, PostgreSQL's walsender and other backends, mariadbd.
    """
    out: dict[int, tuple[str, float]] = {}
    me = os.getpid()
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
            cmd = Path(f"/proc/{d}/cmdline").read_bytes().replace(b"\0", b" ").decode(
                errors="replace")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        secs = (int(fields[11]) + int(fields[12])) / _TICK
        pid = int(d)
        if pid == me:
            kind = "python (main)"
        elif "multiprocessing" in cmd and "python" in cmd:
            kind = "python (decoder)"
        elif cmd.startswith("postgres: walsender"):
            kind = "postgres walsender"
        elif cmd.startswith("postgres:"):
            kind = "postgres backends"
        elif "mariadbd" in cmd or "mysqld" in cmd:
            kind = "mariadbd"
        else:
            continue
        out[pid] = (kind, secs)
    return out


def cpu_report(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]
               ) -> str:
    """CPU seconds per kind between two snapshots (processes that ended are missed)."""
    used: dict[str, float] = {}
    for pid, (kind, secs) in after.items():
        used[kind] = used.get(kind, 0.0) + secs - before.get(pid, (kind, 0.0))[1]
    return ", ".join(f"{k} {v:.1f}s" for k, v in sorted(used.items()) if v >= 0.05)
