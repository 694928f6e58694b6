"""systemd integration without extra dependencies.

``sd_notify`` is one datagram to ``$NOTIFY_SOCKET``; writing it here keeps the
daemon free of libsystemd.  The watchdog ping goes out at half the interval
systemd asked for (``$WATCHDOG_USEC``), only while the apply loop is turning.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping
from typing import Any

from cdc.batch import Batch
from cdc.config import Config
from cdc.errors import CdcError
from cdc.pipeline import Hooks

log = logging.getLogger("cdc.service")


def notify(message: str, env: dict[str, str] | None = None) -> bool:
    """Send one sd_notify message; False (and no error) when not under systemd."""
    source: Mapping[str, str] = os.environ if env is None else env
    addr = source.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]  # abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(addr)
            s.sendall(message.encode())
        return True
    except OSError as e:
        log.debug("sd_notify failed: %s", e)
        return False


def watchdog_interval(env: dict[str, str] | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings, or None when systemd wants none."""
    source: Mapping[str, str] = os.environ if env is None else env
    usec = source.get("WATCHDOG_USEC")
    pid = source.get("WATCHDOG_PID")
    if not usec or (pid and pid.isdigit() and int(pid) != os.getpid()):
        return None
    try:
        return max(0.5, int(usec) / 1_000_000 / 2)
    except ValueError:
        return None


class Service:
    """Wires the pipeline's hooks to systemd and to the metrics."""

    def __init__(self, config: Config, metrics: Any | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.config = config
        self.metrics = metrics
        self.env = env
        self.interval = watchdog_interval(env)
        self.last_ping = 0.0
        self.ready_sent = False

    def hooks(self) -> Hooks:
        return Hooks(ready=self.ready, status=self.status, batch=self.batch,
                     watchdog=self.watchdog, error=self.error, tick=self.tick)

    def ready(self) -> None:
        # Also after a reload (RELOADING=1 wants a READY=1 to end it).
        notify("READY=1\nSTATUS=streaming", self.env)
        self.ready_sent = True
        if self.metrics:
            self.metrics.up(True)
            self.metrics.heartbeat()

    def status(self, text: str) -> None:
        notify(f"STATUS={text[:200]}", self.env)

    def watchdog(self) -> None:
        if self.interval is None:
            return
        now = time.monotonic()
        if now - self.last_ping >= self.interval:
            self.last_ping = now
            notify("WATCHDOG=1", self.env)

    def batch(self, batch: Batch, seconds: float, staged: int) -> None:
        if self.metrics:
            self.metrics.batch(batch, seconds, staged)
        self.watchdog()

    def error(self, e: CdcError) -> None:
        if self.metrics:
            self.metrics.error(e)
            self.metrics.up(False)

    def tick(self, facts: dict[str, Any]) -> None:
        if self.metrics:
            self.metrics.heartbeat()  # right after the status row was rewritten
            if "dead_letters" in facts:
                self.metrics.set_dead_letters(facts["dead_letters"])
            self.metrics.set_slot_retained(facts.get("slot_retained_wal_bytes"))
            if "paused_rules" in facts:
                self.metrics.set_paused_rules(facts["paused_rules"])
        if "seconds_behind" in facts:
            notify(f"STATUS=streaming, {facts['seconds_behind']:.0f}s behind, "
                   f"{facts.get('dead_letters', 0)} dead letters", self.env)

    def stopping(self) -> None:
        notify("STOPPING=1\nSTATUS=stopping: finishing the current batch", self.env)

    def reloading(self) -> None:
        notify("RELOADING=1", self.env)
