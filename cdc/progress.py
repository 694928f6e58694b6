"""Progress of snapshot and verify for people: redrawn lines on a terminal,
periodic lines otherwise (journald, CI), and a summary at the end.  Only the
CLI uses it."""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO

from cdc.snapshot import TableProgress


def _fmt_seconds(s: float) -> str:
    s = int(s)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def describe(p: TableProgress, verb: str = "copying") -> str:
    rate = p.rows_done / p.seconds if p.seconds > 0 else 0.0
    if p.rows_estimated:
        pct = min(100.0, 100.0 * p.rows_done / p.rows_estimated)
        total = f"{p.rows_done:,} of ~{p.rows_estimated:,} rows ({pct:5.1f}%)"
    else:
        total = f"{p.rows_done:,} rows"
    eta = ""
    if p.finished is None and p.rows_estimated and rate > 0 and p.rows_done < p.rows_estimated:
        eta = f", ETA {_fmt_seconds((p.rows_estimated - p.rows_done) / rate)}"
    state = "done" if p.finished is not None else verb
    return f"{p.table}: {state}, {total}, {rate:,.0f} rows/s{eta}"


class Display:
    def __init__(self, out: TextIO | None = None, interval: float = 10.0,
                 label: str = "snapshot", verb: str = "copying") -> None:
        self.out = out or sys.stderr
        self.label = label
        self.verb = verb
        self.tty = self.out.isatty()
        self.interval = interval
        self.lines: dict[str, str] = {}
        self.last_log = 0.0
        self.lock = threading.Lock()
        self.drawn = 0

    def update(self, p: TableProgress) -> None:
        with self.lock:
            self.lines[p.table] = describe(p, self.verb)
            if self.tty:
                if self.drawn:
                    self.out.write(f"\x1b[{self.drawn}F")
                for line in self.lines.values():
                    self.out.write("\x1b[2K" + line + "\n")
                self.drawn = len(self.lines)
                self.out.flush()
            else:
                now = time.monotonic()
                if p.finished is not None or now - self.last_log >= self.interval:
                    self.last_log = now
                    self.out.write(f"{self.label} {self.lines[p.table]}\n")
                    self.out.flush()

    def summary(self, results: list[TableProgress], seconds: float) -> str:
        rows = sum(r.rows_done for r in results if not r.skipped)
        lines = ["snapshot summary:"]
        for r in results:
            if r.skipped:
                lines.append(f"  {r.table}: skipped, already done ({r.rows_done:,} rows)")
            else:
                rate = r.rows_done / r.seconds if r.seconds > 0 else 0.0
                lines.append(f"  {r.table}: {r.rows_done:,} rows in {r.seconds:.1f}s "
                             f"({rate:,.0f} rows/s, {r.path}){' (resumed)' if r.resumed else ''}")
        total_rate = rows / seconds if seconds > 0 else 0.0
        lines.append(f"  total: {rows:,} rows in {seconds:.1f}s ({total_rate:,.0f} rows/s)")
        return "\n".join(lines)
