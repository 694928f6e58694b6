"""The daemon's loop: read transactions beside (``cdc.reader``), batch and apply here.

Decoding (CPU in Python) and applying (mostly waiting on the target) overlap;
a bounded queue between them keeps memory flat when the target is slower.
Offsets are committed with the data, so a crash at any instant replays from
the last commit and the rules' upserts make the replay harmless.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cdc import dlq, pause
from cdc.batch import Batch
from cdc.config import Config
from cdc.errors import CdcError, TerminalError, TransientError
from cdc.events import Transaction
from cdc.plan import Plan, attach_converters, build_plan
from cdc.reader import END, ProcessReader, ThreadReader, tune_gc
from cdc.sources import open_source
from cdc.targets import open_target
from cdc.targets.lock import PipelineLock
from cdc.toast import fill_unchanged

log = logging.getLogger("cdc.pipeline")



@dataclass
class Hooks:
    """Callbacks for the service layer (systemd notify, metrics); all optional."""

    ready: Callable[[], None] | None = None
    status: Callable[[str], None] | None = None
    batch: Callable[[Batch, float, int], None] | None = None
    watchdog: Callable[[], None] | None = None
    error: Callable[[CdcError], None] | None = None
    # Every few seconds: dead_letters, seconds_behind, slot_retained_wal_bytes.
    tick: Callable[[dict[str, Any]], None] | None = None
    # Before a wait that may rightly block for up to N seconds (0: it ended);
    # the watchdog keeps pinging meanwhile (cdc.service).
    busy: Callable[[float], None] | None = None

    @contextlib.contextmanager
    def waiting(self, seconds: float, what: str | None = None) -> Iterator[None]:
        """A wait that is not a hang: tell systemd what it is, keep the watchdog fed."""
        if what and self.status:
            self.status(what)
        if self.busy:
            self.busy(seconds)
        try:
            yield
        finally:
            if self.busy:
                self.busy(0)


def run(config: Config, stop: threading.Event, hooks: Hooks | None = None,
        reload: threading.Event | None = None) -> None:
    """Run until ``stop`` is set; retry transient failures with backoff and jitter.

    One log line per incident (and a reminder every tenth attempt), not one per
    attempt: a DBA reading the journal should see what happened, not noise.

    Setting ``reload`` (SIGHUP) re-reads the config file and rules; a new set
    that fails validation against the live schemas is logged and ignored, and
    the running one carries on.  A valid one takes over after the current batch.
    """
    hooks = hooks or Hooks()
    reload = reload or threading.Event()
    state = {"delay": config.retry_initial_seconds, "since": 0.0, "attempts": 0}

    def recovered() -> None:
        if state["attempts"]:
            log.warning("recovered after %d attempts (%.0fs)", state["attempts"],
                        time.monotonic() - state["since"])
        state.update(delay=config.retry_initial_seconds, since=0.0, attempts=0)

    # One daemon per pipeline: held from the first connection to the exit,
    # taken again by each reconnect (cdc.targets.lock).
    lock = PipelineLock(config)
    try:
        _supervise(config, stop, hooks, reload, lock, state, recovered)
    finally:
        lock.release()


def _supervise(config: Config, stop: threading.Event, hooks: Hooks, reload: threading.Event,
               lock: PipelineLock, state: dict[str, float], recovered: Callable[[], None]
               ) -> None:
    while not stop.is_set():
        try:
            runner = Runner(config, stop, hooks, on_streaming=recovered, reload=reload,
                            lock=lock)
            runner.run()
            if runner.reloaded is not None:
                config = runner.reloaded
                log.info("reloaded %s: %d rule files", config.path,
                         len(list(config.rules_dir.glob("*.sql"))))
                continue
            return
        except TransientError as e:
            if hooks.error:
                hooks.error(e)
            state["attempts"] += 1
            if state["attempts"] == 1:
                state["since"] = time.monotonic()
                log.warning("transient failure, retrying with backoff: %s", e)
            elif state["attempts"] % 10 == 0:
                log.warning("still failing after %d attempts (%.0fs): %s", state["attempts"],
                            time.monotonic() - state["since"], e)
            wait = state["delay"] * (0.5 + random.random())
            # Waiting out an outage is not a hang: the watchdog keeps hearing
            # from us, and systemctl status says what we wait for.
            with hooks.waiting(wait + 2 * config.connect_timeout + 5,
                               f"retrying in {wait:.1f} s (attempt {state['attempts']}): {e}"):
                _record_failing(config, lock, e)
                stop.wait(wait)
            state["delay"] = min(state["delay"] * 2, config.retry_max_seconds)


# One wait (a batch, a drain of parked changes, a reload's validation) longer
# than this is taken for a hang: the watchdog pings stop and systemd restarts us.
BUSY_SECONDS = 600.0

# The daemon's heartbeat: it rewrites its status row this often while it runs.
# `cdc lag` calls a status older than HEARTBEAT_STALE_SECONDS stale.
STATUS_SECONDS = 5.0
HEARTBEAT_STALE_SECONDS = 30.0


def _record_failing(config: Config, lock: PipelineLock, e: CdcError) -> None:
    """Best effort: `cdc lag` shows 'failing' and why while we retry.

    Only while this daemon holds the pipeline: the status row is the holder's
    (a daemon that lost the lock must not overwrite who holds it now)."""
    try:
        if not lock.held:
            return
        lock.check()
        target = open_target(config)
        try:
            target.write_status("failing", message=str(e)[:500])
        finally:
            target.close()
    except (CdcError, Exception):  # the target may be what is down
        pass


def _noop() -> None:
    pass


def _where(url: Any) -> str:
    kind = "PostgreSQL" if url.kind == "postgresql" else "MySQL"
    return f"{kind} {url.host}:{url.port}" if url.host_given else f"{kind} (local socket)"


class Runner:
    """One connected run: from connecting to a clean stop or an error."""

    def __init__(self, config: Config, stop: threading.Event, hooks: Hooks,
                 on_streaming: Callable[[], None] = _noop,
                 reload: threading.Event | None = None,
                 lock: PipelineLock | None = None) -> None:
        self.config = config
        self.lock = lock or PipelineLock(config)
        self.stop = stop
        self.hooks = hooks
        self.on_streaming = on_streaming
        self.reader: Any = None
        self.wal_warned = 0.0
        self.reload = reload or threading.Event()
        self.reloaded: Config | None = None
        self.guard = pause.Guard(config, Plan([], {}, {}), [])

    def _try_reload(self) -> bool:
        """Validate the config file and rules as they are now; True to switch."""
        from cdc.config import load

        self.reload.clear()
        log.info("reload requested: validating %s", self.config.path)
        try:
            new = load(self.config.path)
            if new.pipeline != self.config.pipeline or new.source != self.config.source \
                    or new.target != self.config.target:
                raise TerminalError("a reload may change rules and options, not the pipeline "
                                    "name or the databases; restart the service for that")
            from cdc.plan import parse_rules

            rules = parse_rules(new)
            source = open_source(new, sorted({r.source.name for r in rules}))
            target = open_target(new)
            try:
                # A paused table's rule may still read a vanished column: the
                # table then stays paused, the rest of the reload applies.
                paused = {p["table"] for p in target.paused_tables()}
                # A table still bound as it was before an ALTER (the stream has
                # not reached it yet) is validated the same way.
                shapes = pause.earlier_shapes(new, rules, source, target, paused)
                plan = build_plan(new, source, target, rules, tolerate=paused, shapes=shapes)
                for c in plan.rules:
                    target.check_rules(list(plan.stages.values()), [c])
            finally:
                source.close()
                target.close()
        except CdcError as e:
            log.error("reload rejected, the running rules stay: %s", e)
            if self.hooks.ready:
                self.hooks.ready()  # ends systemd's RELOADING state
            return False
        self.reloaded = new
        return True

    def run(self) -> None:
        cfg = self.config
        target = open_target(cfg)
        source = None
        try:
            with self.hooks.waiting(BUSY_SECONDS, f"starting: connecting to {_where(cfg.target)}"
                                    f" (target) and {_where(cfg.source)} (source)"):
                source, plan, start = self._start(target)
            self._loop(source, target, plan, start)
        finally:
            if source is not None:
                source.close()
            target.close()

    def _start(self, target: Any) -> tuple[Any, Plan, Any]:
        """Connect, check the bookkeeping, plan the rules, drain parked changes."""
        cfg = self.config
        source = None
        try:
            target.require_schema()
            # Before the source: a second daemon must not touch the binlog
            # connection (same server_id) or the slot of the first one.
            self.lock.acquire(target)
            from cdc.plan import parse_rules

            rules = parse_rules(cfg)
            tables = sorted({r.source.name for r in rules})
            source = open_source(cfg, tables)
            paused = target.paused_tables()
            offset = target.load_offset()
            # A column dropped or renamed while cdc was down (or behind): pause
            # that table, not the pipeline.  Not for a pipeline that never ran,
            # where it is more likely a typo (and `cdc check` says so).
            held = {p["table"] for p in paused}
            shapes = {} if offset is None else pause.earlier_shapes(
                cfg, rules, source, target, held)
            fresh = {} if offset is None else pause.startup_pauses(
                cfg, rules, source, held | set(shapes))
            plan = build_plan(cfg, source, target, rules, tolerate=held | set(fresh),
                              shapes=shapes)
            if fresh and offset is not None:
                pause.pause_at_startup(cfg, target, rules, plan, fresh, offset[0].encode())
                paused = target.paused_tables()
            # The shapes these rules are bound against, for the next start.
            target.save_source_schemas({name: st.source for name, st in plan.stages.items()})
            attach_converters(plan, cfg)
            self.guard = pause.Guard(cfg, plan, paused)
            if offset is None:
                start = source.current_position() if cfg.source.kind == "mysql" else None
                log.warning("no saved position for pipeline %s: starting at the source's "
                            "current position %s (run `cdc snapshot` to copy existing rows)",
                            cfg.pipeline, start if start is not None else "of the slot")
                if start is not None:
                    target.save_offset(start, only_if_missing=True)
            else:
                start = offset[0]
            if hasattr(source, "preflight"):
                source.preflight(start)
            if self.guard.paused:
                # Parked changes come before the stream from the offset on.
                pause.drain(cfg, source, target, plan, self.guard, self.hooks.watchdog)
            tune_gc()
        except BaseException:
            if source is not None:
                source.close()
            raise
        return source, plan, start

    def _loop(self, source: Any, target: Any, plan: Plan, start: Any) -> None:
        cfg = self.config
        reader = self._make_reader(source, start)
        self.reader = reader
        reader.start()
        log.info("streaming pipeline %s from %s (%d rules over %s)", cfg.pipeline,
                 start if start is not None else "the slot's position", len(plan.rules),
                 ", ".join(plan.source_tables))
        with self.hooks.waiting(2 * cfg.connect_timeout + 30):
            target.write_status("streaming", message=None)
        if self.hooks.ready:
            self.hooks.ready()
        self.on_streaming()
        last_status = 0.0
        last_dlq = time.monotonic()
        rows_window: list[tuple[float, int]] = []
        pending_error: BaseException | None = None
        try:
            while not self.stop.is_set():
                if self.reload.is_set():
                    with self.hooks.waiting(BUSY_SECONDS, "reloading: validating the rules"):
                        switch = self._try_reload()
                    if switch:
                        break
                batch, pending_error, ended = self._collect()
                if batch.transactions:
                    with self.hooks.waiting(BUSY_SECONDS):
                        self._apply(source, target, plan, reader, batch, rows_window)
                if pending_error is not None:
                    raise pending_error
                if ended:
                    log.info("the source stream ended")
                    break
                now = time.monotonic()
                if now - last_dlq >= cfg.dlq_retry_seconds:
                    last_dlq = now
                    with self.hooks.waiting(BUSY_SECONDS):
                        dlq.retry(cfg, source, target, self.guard.live_plan(), due_only=True)
                if self.hooks.watchdog:
                    self.hooks.watchdog()
                if now - last_status >= STATUS_SECONDS:
                    last_status = now
                    rows_window = [(t, n) for t, n in rows_window if now - t <= 60]
                    rate = sum(n for _, n in rows_window) / 60.0
                    with self.hooks.waiting(2 * cfg.connect_timeout + 30):
                        self.lock.check()
                        try:
                            pos = source.current_position()
                        except CdcError:
                            pos = None
                        target.write_status("streaming", source_position=pos,
                                            rows_per_second=rate)
                        self._tick(source, target)
                    if self.hooks.status:
                        self.hooks.status(f"streaming at {batch.position if batch.transactions else start}, "
                                          f"{rate:.0f} rows/s")
        finally:
            with self.hooks.waiting(60, "stopping: closing the source stream"
                                    if self.stop.is_set() else None):
                reader.stop()
        if self.stop.is_set() and self.reloaded is None:
            try:
                target.write_status("stopped")
            except CdcError:
                pass
            log.info("stopped cleanly")

    def _apply(self, source: Any, target: Any, plan: Plan, reader: Any, batch: Batch,
               rows_window: list[tuple[float, int]]) -> None:
        cfg = self.config
        parking = self.guard.filter(batch)
        if cfg.source.kind == "postgresql":
            fill_unchanged(batch, plan, cfg, source)
        last = batch.transactions[-1]
        if last.heartbeat and last.commit_time is None:
            # Idle is not lag: nothing was pending at this moment.
            last.commit_time = datetime.now(UTC)
        t0 = time.perf_counter()
        # Text values (PostgreSQL -> PostgreSQL) need no conversion.
        staged = target.apply(batch, plan.stages, plan.by_table,
                              {} if getattr(source, "text_values", False) else plan.converters,
                              park=parking.writer(target) if parking else None)
        elapsed = time.perf_counter() - t0
        if hasattr(reader, "ack"):
            reader.ack(batch.position)
        else:
            source.ack(batch.position)
        rows_window.append((time.monotonic(), batch.rows))
        if self.hooks.batch:
            self.hooks.batch(batch, elapsed, staged)
        if batch.rows:
            log.debug("applied %d transactions, %d changes in %.3fs up to %s",
                      len(batch), batch.rows, elapsed, batch.position)

    def _tick(self, source: Any, target: Any) -> None:
        """Facts for metrics, and the WAL retention guard for a PostgreSQL slot."""
        facts: dict[str, Any] = {"paused_rules": self.guard.paused_rules}
        try:
            st = target.read_status()
            facts["dead_letters"] = int(st.get("dead_letters") or 0)
            ct, now = st.get("source_commit_time"), st.get("now")
            if ct is not None and now is not None:
                facts["seconds_behind"] = max(0.0, (now - ct).total_seconds())
            if hasattr(source, "slot_info"):
                retained = source.slot_info().get("retained_wal_bytes")
                facts["slot_retained_wal_bytes"] = retained
                limit = self.config.wal_warn_bytes
                now_m = time.monotonic()
                if retained is not None and retained > limit and now_m - self.wal_warned > 600:
                    self.wal_warned = now_m
                    log.warning("replication slot %s retains %d MB of WAL (warning above %d MB):"
                                " the source keeps it until cdc catches up; if this pipeline is"
                                " gone for good, drop the slot with `cdc teardown`",
                                self.config.slot, retained // 2**20, limit // 2**20)
        except CdcError as e:
            log.debug("status facts unavailable: %s", e)
        if self.hooks.tick:
            self.hooks.tick(facts)

    def _make_reader(self, source: Any, start: Any) -> Any:
        if self.config.decoder_process and hasattr(source, "factory"):
            return ProcessReader(source.factory(), start, self.config.queue_transactions)
        return ThreadReader(source, start, self.config.queue_transactions)

    def _collect(self) -> tuple[Batch, BaseException | None, bool]:
        """Take whole transactions off the queue: as many as are ready, up to
        ``batch.max_rows``.  When the queue is empty the batch goes at once, so
        latency stays low when idle and batches grow by themselves under load."""
        batch = Batch()
        cfg = self.config
        deadline = time.monotonic() + cfg.batch_max_seconds
        try:
            item = self.reader.get(timeout=0.5)
        except queue.Empty:
            return batch, None, False
        while True:
            if isinstance(item, str) and item == END:
                return batch, None, True
            if isinstance(item, BaseException):
                return batch, item, False
            tx: Transaction = item
            batch.add(tx)
            if batch.rows >= cfg.batch_max_rows or time.monotonic() >= deadline:
                return batch, None, False
            try:
                item = self.reader.get_nowait()
            except queue.Empty:
                return batch, None, False


__all__ = ["Hooks", "Runner", "TerminalError", "run"]
