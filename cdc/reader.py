"""Run a source's ``stream()`` beside the applier: in a thread, or in a process.

mysql-replication decodes rows in pure Python at one core's worth of CPU.  In a
thread it shares the GIL with the applier and the two take turns; in a child
process decode and apply truly overlap (bench/bench_stream.py measures both).
The child only decodes; positions and acknowledgements stay in the parent.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import multiprocessing as mp
import os
import pickle
import queue
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from cdc.errors import ConnectionLost, TerminalError
from cdc.events import RowChange, TextRows, Transaction

log = logging.getLogger("cdc.reader")

END = "__cdc_end_of_stream__"


class ThreadReader:
    """``source.stream`` in a daemon thread, items in a bounded queue."""

    def __init__(self, source: Any, start: Any, maxsize: int) -> None:
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=maxsize)
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._main, args=(source, start),
                                       name="cdc-reader", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _main(self, source: Any, start: Any) -> None:
        try:
            for tx in source.stream(start, self.stop_event):
                if not self._put(tx):
                    return
        except BaseException as e:  # handed to the applier, which decides
            self._put(e)
            return
        self._put(END)

    def _put(self, item: Any) -> bool:
        while not self.stop_event.is_set():
            try:
                self.queue.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def get(self, timeout: float) -> Any:
        return self.queue.get(timeout=timeout)

    def get_nowait(self) -> Any:
        return self.queue.get_nowait()

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(timeout=10)


def tune_gc() -> None:
    """Make the cyclic garbage collector rare in a streaming process.

    Every row allocates a few dicts and tuples and keeps them alive for a
    batch, so with the default thresholds (700 allocations) the collector
    walks hundreds of thousands of live, acyclic objects again and again:
    measured at ~20% of the decoder's time (bench/bench_stream_pg.py).
    Objects from startup (modules, config, plan) are frozen out of its view;
    real cycles (tracebacks, generators) are still collected, just less often.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)


def _die_with_parent(parent: int | None = None) -> None:
    # If the daemon is killed -9 the decoder must not live on, holding a binlog
    # connection or the replication slot.
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass
    # The parent may have died while this process was starting, before the
    # line above: then nobody would ever kill us.
    if parent is not None and os.getppid() != parent:
        os._exit(1)


def pack(tx: Transaction) -> tuple[Any, ...]:
    """A Transaction as plain tuples: pickling dataclasses and per-row dict keys
    cost the decoder process ~10% of its time; column names go once per table.
    Everything per row here runs at C speed (dict views, tuple compares)."""
    cols: dict[str, tuple[str, ...]] = {}
    rows: list[tuple[Any, ...]] = []
    for ch in tx.changes:
        if ch.op == "T":  # a truncate has no images (cdc.events.truncate_change)
            rows.append((ch.table, "T", None, None, False, None))
            continue
        img = ch.after if ch.after is not None else ch.before
        names = tuple(img) if img is not None else ()
        known = cols.setdefault(ch.table, names)
        own = None if known == names else names
        before: Any = ch.before
        if before is not None:
            # A partial before image (key columns only) keeps its own keys.
            before = tuple(before.values()) if tuple(before) == names else dict(before)
        after = tuple(ch.after.values()) if ch.after is not None else None
        rows.append((ch.table, ch.op, before, after, ch.partial_before, own))
    text = [(t.table, t.names, t.key_index, t.ops, t.data) for t in tx.text] if tx.text else None
    return (tx.position, tx.commit_time, tx.heartbeat, tx.extra, cols, rows, text)


def unpack(packed: tuple[Any, ...]) -> Transaction:
    position, commit_time, heartbeat, extra, cols, rows, *more = packed
    # A PostgreSQL source may add changes still in COPY text form.
    text = [TextRows(*t) for t in more[0]] if more and more[0] else None
    changes = []
    for table, op, before, after, partial, own in rows:
        names = own or cols.get(table, ())

        def image(v: Any, names: tuple[str, ...] = names) -> dict[str, Any] | None:
            if v is None or isinstance(v, dict):
                return v
            return dict(zip(names, v, strict=True))

        changes.append(RowChange(table, op, image(before), image(after), partial))
    return Transaction(changes, position, commit_time, heartbeat, extra, text)


def _forward_acks(source: Any, acked: Any, stop: Any) -> None:
    """In the decoder process: pass the parent's committed position to the
    source, which reports it to the server (PostgreSQL standby status)."""
    from cdc.positions import Lsn

    last = 0
    while not stop.wait(0.2):
        value = acked.value
        if value and value != last:
            last = value
            source.ack(Lsn(value))


def _child(factory: Callable[[], Any], start: Any, q: Any, stop: Any,
           acked: Any = None, parent: int | None = None) -> None:
    _die_with_parent(parent)
    # The parent owns shutdown: SIGTERM to the whole unit (systemd's default
    # KillMode) must not kill the decoder before the parent's last commit.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=logging.WARNING)
    tune_gc()
    source = None
    try:
        source = factory()
        if acked is not None:
            threading.Thread(target=_forward_acks, args=(source, acked, stop),
                             name="cdc-acks", daemon=True).start()
        for tx in source.stream(start, stop):
            while not stop.is_set():
                try:
                    # A source may hand over transactions already packed.
                    q.put(tx if isinstance(tx, tuple) else pack(tx), timeout=0.2)
                    break
                except queue.Full:
                    continue
            if stop.is_set():
                return
        q.put(END)
    except BaseException as e:
        try:
            pickle.dumps(e)
            q.put(e)
        except Exception:
            q.put(TerminalError(f"decoder failed: {type(e).__name__}: {e}"))
    finally:
        if source is not None:
            source.close()


def _unpacked(item: Any) -> Any:
    return unpack(item) if isinstance(item, tuple) else item


class SharedFlag:
    """A stop flag shared with the decoder process, without locks.

    multiprocessing.Event is built on a lock; a decoder that dies while one of
    its threads holds it leaves the parent hanging in ``set()`` forever.  One
    shared byte, read and written whole, cannot be left half-taken.
    """

    def __init__(self, ctx: Any) -> None:
        self.value = ctx.Value("b", 0, lock=False)

    def set(self) -> None:
        self.value.value = 1

    def is_set(self) -> bool:
        return bool(self.value.value)

    def wait(self, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while not self.is_set():
            left = end - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(0.05, left))
        return True


class ProcessReader:
    """``source.stream`` in a child process; ``factory`` builds the source there."""

    def __init__(self, factory: Callable[[], Any], start: Any, maxsize: int) -> None:
        ctx = mp.get_context("spawn")
        self.queue: Any = ctx.Queue(maxsize=maxsize)
        self.stop_event = SharedFlag(ctx)
        # Only LSNs (PostgreSQL) need acknowledging; binlog positions do not.
        self.acked = ctx.Value("Q", 0, lock=False)
        self.proc = ctx.Process(target=_child, args=(factory, start, self.queue,
                                                     self.stop_event, self.acked, os.getpid()),
                                name="cdc-decoder", daemon=True)
        self._local: queue.Queue[Any] = queue.Queue(maxsize=max(1, maxsize // 4))
        self._pump_stop = threading.Event()
        self._pump = threading.Thread(target=self._pump_main, name="cdc-unpack", daemon=True)

    def start(self) -> None:
        self.proc.start()
        self._pump.start()

    def _pump_main(self) -> None:
        """Unpickle and unpack in this thread: the main thread would otherwise
        do it between batches; here it overlaps the target's statements (the
        main thread waits on the database with the GIL released)."""
        while not self._pump_stop.is_set():
            try:
                item = self.queue.get(timeout=0.2)
            except queue.Empty:
                continue
            except (EOFError, OSError, ValueError):  # closed while stopping
                return
            item = _unpacked(item)
            while not self._pump_stop.is_set():
                try:
                    self._local.put(item, timeout=0.2)
                    break
                except queue.Full:
                    continue

    def get(self, timeout: float) -> Any:
        try:
            return self._local.get(timeout=timeout)
        except queue.Empty:
            if not self.proc.is_alive():
                try:  # what it sent before exiting may still be on its way
                    return self._local.get(timeout=1.0)
                except queue.Empty:
                    pass
                raise ConnectionLost(f"the decoder process exited (code {self.proc.exitcode}); "
                                     "restarting from the last committed position") from None
            raise

    def get_nowait(self) -> Any:
        return self._local.get_nowait()

    def ack(self, position: Any) -> None:
        value = getattr(position, "value", None)
        if isinstance(value, int):
            self.acked.value = value

    def stop(self) -> None:
        self.stop_event.set()
        self._pump_stop.set()
        if self._pump.is_alive():
            self._pump.join(timeout=5)
        self.proc.join(timeout=5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(timeout=5)
        self.queue.cancel_join_thread()
        self.queue.close()
