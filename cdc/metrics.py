"""Prometheus metrics (prometheus-client), off unless ``metrics.address`` is set.

A registry of our own, not the process-global one, so tests and embedding
never collide.  Listening beyond loopback needs the address to say so
explicitly (``0.0.0.0:9187``); the default suggestion is ``127.0.0.1:9187``.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from cdc.batch import Batch
from cdc.errors import CdcError, ConfigError

log = logging.getLogger("cdc.metrics")


def parse_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"metrics.address {address!r}: expected HOST:PORT, e.g. 127.0.0.1:9187")
    return (host.strip("[]") or "127.0.0.1"), int(port)


class Metrics:
    def __init__(self, pipeline: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.pipeline = pipeline
        self.seconds_behind = Gauge("cdc_seconds_behind",
                                    "Seconds between now and the source commit time of the last "
                                    "applied transaction (0 when caught up)", ["pipeline"],
                                    registry=r)
        self.last_applied = Gauge("cdc_last_applied_timestamp_seconds",
                                  "Source commit time of the last applied transaction",
                                  ["pipeline"], registry=r)
        self.rows = Counter("cdc_rows_applied_total", "Row changes applied",
                            ["pipeline", "table", "op"], registry=r)
        self.transactions = Counter("cdc_transactions_applied_total",
                                    "Source transactions applied", ["pipeline"], registry=r)
        self.batch_rows = Histogram("cdc_batch_rows", "Row changes per applied batch",
                                    ["pipeline"], registry=r,
                                    buckets=(1, 10, 100, 1000, 5000, 20000, 100000))
        self.apply_seconds = Histogram("cdc_apply_seconds", "Seconds to apply one batch",
                                       ["pipeline"], registry=r,
                                       buckets=(.005, .01, .05, .1, .25, .5, 1, 2.5, 5, 10, 30))
        self.errors = Counter("cdc_errors_total", "Errors by kind", ["pipeline", "kind"],
                              registry=r)
        self.dead_letters = Gauge("cdc_dead_letters", "Rows in the dead-letter table",
                                  ["pipeline"], registry=r)
        self.slot_retained = Gauge("cdc_slot_retained_wal_bytes",
                                   "WAL the PostgreSQL source's slot keeps (restart_lsn to now)",
                                   ["pipeline"], registry=r)
        self.paused_rules = Gauge("cdc_paused_rules",
                                  "Rules whose source table is paused by a schema change they "
                                  "cannot follow (its changes are parked in the target)",
                                  ["pipeline"], registry=r)
        self.up_gauge = Gauge("cdc_up", "1 while streaming, 0 while starting or failing",
                              ["pipeline"], registry=r)
        # A hung loop keeps serving /metrics (another thread) with cdc_up 1: only
        # a timestamp that stops moving shows it.  `time() - this` is its age.
        self.heartbeat_ts = Gauge("cdc_heartbeat_timestamp_seconds",
                                  "Unix time of the daemon's last heartbeat: the apply loop "
                                  "rewrote its status row (every 5 s while streaming)",
                                  ["pipeline"], registry=r)
        # Series an alert reads exist from the start: increase() misses the
        # first error of a counter that appears at 1, and "not streaming yet"
        # is 0, not absent.
        for kind in ("transient", "terminal"):
            self.errors.labels(pipeline, kind)
        self.up_gauge.labels(pipeline).set(0)

    def serve(self, address: str) -> Any:
        host, port = parse_address(address)
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        log.info("metrics on http://%s:%d/metrics", host, server.server_port)
        return server

    def up(self, value: bool) -> None:
        self.up_gauge.labels(self.pipeline).set(1 if value else 0)

    def heartbeat(self) -> None:
        self.heartbeat_ts.labels(self.pipeline).set_to_current_time()

    def batch(self, batch: Batch, seconds: float, staged: int) -> None:
        p = self.pipeline
        for (table, op), n in batch.counts_by_table().items():
            self.rows.labels(p, table, {"I": "insert", "U": "update", "D": "delete",
                                       "T": "truncate"}[op]).inc(n)
        self.transactions.labels(p).inc(batch.data_transactions)
        if batch.rows:
            self.batch_rows.labels(p).observe(batch.rows)
            self.apply_seconds.labels(p).observe(seconds)
        ct = batch.commit_time
        if ct is not None:
            self.last_applied.labels(p).set(ct.timestamp())
            behind = 0.0 if batch.transactions[-1].heartbeat else max(
                0.0, (datetime.now(UTC) - ct).total_seconds())
            self.seconds_behind.labels(p).set(behind)

    def error(self, e: CdcError) -> None:
        kind = "transient" if e.transient else "terminal"
        self.errors.labels(self.pipeline, kind).inc()

    def set_dead_letters(self, n: int) -> None:
        self.dead_letters.labels(self.pipeline).set(n)

    def set_paused_rules(self, n: int) -> None:
        self.paused_rules.labels(self.pipeline).set(n)

    def set_slot_retained(self, n: int | None) -> None:
        if n is not None:
            self.slot_retained.labels(self.pipeline).set(n)


