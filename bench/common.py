"""Shared bits for benchmarks: throwaway servers and a tiny timer."""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from cdc.devservers import MariaDBServer, PostgresServer


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
