"""systemd integration without extra dependencies.

``sd_notify`` is one datagram to ``$NOTIFY_SOCKET``; writing it here keeps the
daemon free of libsystemd.

The watchdog ping (``WATCHDOG=1``) goes out from a small thread at a quarter of
the interval systemd asked for (``$WATCHDOG_USEC``), but only while the daemon
shows it is alive: the main thread checks in (``watchdog()``) every time its
loop turns, and before a wait that may block it for long, correctly (a
connection attempt, a retry backoff, a big batch, draining parked changes), it
says how long that may take (``busy(seconds)``).  A main thread stuck anywhere
else stops the pings within half the interval, and systemd restarts it.
Until ``READY=1`` the pings also extend systemd's start timeout
(``EXTEND_TIMEOUT_USEC``): a database down at startup is waited for, not fatal.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
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
            # Never block on it: a receiver that does not read must not stall
            # the daemon (a signal handler sends STOPPING=1 from the main thread).
            s.send(message.encode(), socket.MSG_DONTWAIT)
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


# Without a watchdog, the start timeout is still extended in steps of this
# (times four) while the daemon waits for its databases before READY=1.
NO_WATCHDOG_WINDOW = 10.0


class Service:
    """Wires the pipeline's hooks to systemd and to the metrics."""

    def __init__(self, config: Config, metrics: Any | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.config = config
        self.metrics = metrics
        self.env = env
        self.interval = watchdog_interval(env)
        self.ready_sent = False
        # Written by the main thread, read by the pinger: plain floats, whole.
        self.alive_at = time.monotonic()
        self.busy_until = 0.0
        self._stopped = threading.Event()
        self._pinger: threading.Thread | None = None

    def hooks(self) -> Hooks:
        return Hooks(ready=self.ready, status=self.status, batch=self.batch,
                     watchdog=self.watchdog, error=self.error, tick=self.tick, busy=self.busy)

    def start(self) -> None:
        """Start the pinger when under systemd: WATCHDOG=1 if it wants pings,
        and EXTEND_TIMEOUT_USEC until READY=1 in any case."""
        source: Mapping[str, str] = os.environ if self.env is None else self.env
        if self._pinger is not None or not source.get("NOTIFY_SOCKET"):
            return
        self.alive_at = time.monotonic()
        self._pinger = threading.Thread(target=self._ping_main, name="cdc-watchdog",
                                        daemon=True)
        self._pinger.start()

    def close(self) -> None:
        self._stopped.set()
        if self._pinger is not None:
            self._pinger.join(timeout=5)

    def _window(self) -> float:
        """How long the main thread may go without checking in."""
        return self.interval if self.interval is not None else NO_WATCHDOG_WINDOW

    def _ping_main(self) -> None:
        period = self._window() / 2
        self._ping()
        while not self._stopped.wait(period):
            if self.interval is None and self.ready_sent:
                return  # only the start timeout needed us
            self._ping()

    def _ping(self) -> None:
        now = time.monotonic()
        if now - self.alive_at > self._window() and now > self.busy_until:
            return  # the main thread is stuck: let systemd see it
        parts = []
        if self.interval is not None:
            parts.append("WATCHDOG=1")
        if not self.ready_sent:
            # Starting (maybe waiting for a database): keep systemd's start
            # timeout ahead of us as long as we are alive.
            parts.append(f"EXTEND_TIMEOUT_USEC={int(self._window() * 4 * 1_000_000)}")
        if parts:
            notify("\n".join(parts), self.env)

    def ready(self) -> None:
        # Also after a reload (RELOADING=1 wants a READY=1 to end it).
        notify("READY=1\nSTATUS=streaming", self.env)
        self.ready_sent = True
        self.watchdog()
        if self.metrics:
            self.metrics.up(True)
            self.metrics.heartbeat()

    def status(self, text: str) -> None:
        notify(f"STATUS={text[:200]}", self.env)

    def watchdog(self) -> None:
        """The main thread is alive (called each time its loop turns)."""
        self.alive_at = time.monotonic()

    def busy(self, seconds: float) -> None:
        """The main thread may now block for up to ``seconds`` on a wait that is
        not a hang (0: that wait is over)."""
        now = time.monotonic()
        self.alive_at = now
        self.busy_until = now + seconds if seconds > 0 else 0.0

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
