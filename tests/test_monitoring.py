"""Prometheus monitoring: the heartbeat metric, and that every metric the shipped alert
rules and Grafana dashboard query is one a running pipeline exports."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from pipeline_helpers import REPO, cdc, wait_caught_up, write_pipeline
from prometheus_client import generate_latest

from cdc.config import load
from cdc.devservers import free_port
from cdc.metrics import Metrics
from cdc.service import Service

ALERTS = REPO / "deploy" / "prometheus" / "cdc-alerts.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "cdc-dashboard.json"
METRIC = re.compile(r"\bcdc_[a-z_]+")
SAMPLE = re.compile(r"^(cdc_[a-z_]+)(\{[^}]*\})? (\S+)$", re.M)


def alert_expressions() -> dict[str, str]:
    doc = yaml.safe_load(ALERTS.read_text())
    return {r["alert"]: r["expr"] for g in doc["groups"] for r in g["rules"]}


def dashboard_expressions() -> dict[str, list[str]]:
    doc = json.loads(DASHBOARD.read_text())
    out = {p["title"]: [t["expr"] for t in p["targets"]] for p in doc["panels"]}
    for v in doc["templating"]["list"]:
        if v["type"] == "query":
            out[f"variable {v['name']}"] = [v["definition"]]
    return out


def samples(body: str) -> dict[str, list[tuple[str, float]]]:
    out: dict[str, list[tuple[str, float]]] = {}
    for name, labels, value in SAMPLE.findall(body):
        out.setdefault(name, []).append((labels, float(value)))
    return out


def scrape(port: int) -> str:
    try:
        body: str = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2
                                           ).read().decode()
        return body
    except OSError:
        return ""


def scrape_until(port: int, done: Any, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    body = ""
    while time.monotonic() < deadline:
        body = scrape(port)
        if body and done(samples(body)):
            return body
        time.sleep(0.3)
    raise AssertionError(f"/metrics never got there:\n{body}")


def heartbeat(s: dict[str, list[tuple[str, float]]]) -> float | None:
    got = s.get("cdc_heartbeat_timestamp_seconds")
    return got[0][1] if got else None


def test_a_new_daemon_exports_not_streaming_and_zero_errors(tmp_path: Path) -> None:
    """Before the first connection: cdc_up 0 (not absent), both error series at 0
    (an alert's increase() must see the first error), and no heartbeat yet."""
    m = Metrics("p")
    s = samples(generate_latest(m.registry).decode())
    assert s["cdc_up"] == [('{pipeline="p"}', 0.0)]
    assert sorted(s["cdc_errors_total"]) == [('{kind="terminal",pipeline="p"}', 0.0),
                                             ('{kind="transient",pipeline="p"}', 0.0)]
    assert "cdc_heartbeat_timestamp_seconds" not in s
    # The service layer sets the heartbeat with each status tick of the loop.
    cfg = write_pipeline(tmp_path, "mysql://u:p@127.0.0.1:1/db", "postgresql://u@127.0.0.1:1/db",
                         {"r": "INSERT INTO t (a) SELECT s.a FROM s"})
    service = Service(load(cfg), m, env={})
    t0 = time.time()
    service.tick({"dead_letters": 2, "paused_rules": 1})
    s = samples(generate_latest(m.registry).decode())
    hb = heartbeat(s)
    assert hb is not None and hb >= int(t0)
    assert s["cdc_dead_letters"] == [('{pipeline="p"}', 2.0)]
    assert s["cdc_paused_rules"] == [('{pipeline="p"}', 1.0)]


def test_every_alert_and_panel_reads_an_exported_metric(tmp_path: Path, pg_db: Any,
                                                        make_pg_db: Any) -> None:
    """A PostgreSQL source (so the slot's WAL gauge exists too) streaming into
    PostgreSQL, metrics on a free port: the heartbeat is exported and moves, and
    each metric the alert rules and the dashboard name is in /metrics."""
    target = make_pg_db()
    pg_db.execute("CREATE TABLE items (id integer PRIMARY KEY, name text NOT NULL)")
    target.execute("CREATE TABLE t_items (id integer PRIMARY KEY, name text NOT NULL)")
    port = free_port()
    cfg = write_pipeline(tmp_path, pg_db.url, target.url,
                         {"items": "INSERT INTO t_items (id, name) SELECT i.id, i.name "
                                   "FROM items AS i"},
                         name=f"mon_{pg_db.name}",
                         extra=f"metrics:\n  address: 127.0.0.1:{port}\n")
    cdc("setup", "-c", str(cfg))
    proc = subprocess.Popen([sys.executable, "-m", "cdc", "run", "-c", str(cfg)], cwd=REPO,
                            stderr=subprocess.DEVNULL)
    try:
        pg_db.execute("INSERT INTO items VALUES (1, 'a'), (2, 'b')")
        wait_caught_up(load(cfg))
        body = scrape_until(port, lambda s: heartbeat(s) is not None
                            and "cdc_dead_letters" in s and "cdc_slot_retained_wal_bytes" in s)
        first = heartbeat(samples(body))
        assert first is not None
        moved = scrape_until(port, lambda s: (heartbeat(s) or 0) > first)
        assert (heartbeat(samples(moved)) or 0) > first
        assert samples(moved)["cdc_up"] == [(f'{{pipeline="mon_{pg_db.name}"}}', 1.0)]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        cdc("teardown", "-c", str(cfg), "--yes", check=False)
    exported = set(samples(moved))
    alerts = alert_expressions()
    panels = dashboard_expressions()
    for where, exprs in [*((f"alert {a}", [e]) for a, e in alerts.items()),
                         *((f"panel {p}", es) for p, es in panels.items())]:
        names = {n for e in exprs for n in METRIC.findall(e)}
        assert names, f"{where} queries no cdc metric: {exprs}"
        missing = names - exported
        assert not missing, f"{where} queries {sorted(missing)}, not in /metrics"
    # What the operations issue asks to watch is there.
    alert_metrics = {n for e in alerts.values() for n in METRIC.findall(e)}
    assert {"cdc_heartbeat_timestamp_seconds", "cdc_up", "cdc_seconds_behind",
            "cdc_dead_letters", "cdc_paused_rules"} <= alert_metrics
    panel_metrics = {n for es in panels.values() for e in es for n in METRIC.findall(e)}
    assert {"cdc_seconds_behind", "cdc_rows_applied_total", "cdc_dead_letters",
            "cdc_paused_rules", "cdc_heartbeat_timestamp_seconds"} <= panel_metrics


def test_a_daemon_that_cannot_connect_is_not_up(tmp_path: Path, mysql_db: Any) -> None:
    """The target is unreachable from the start: /metrics says not streaming,
    counts the transient errors, and has no heartbeat that could look fresh."""
    port, dead = free_port(), free_port()
    mysql_db.execute("CREATE TABLE items (id INT PRIMARY KEY)")
    cfg = write_pipeline(tmp_path, mysql_db.url, f"postgresql://cdc@127.0.0.1:{dead}/crm",
                         {"items": "INSERT INTO t_items (id) SELECT i.id FROM items AS i"},
                         extra=f"metrics:\n  address: 127.0.0.1:{port}\n")
    proc = subprocess.Popen([sys.executable, "-m", "cdc", "run", "-c", str(cfg)], cwd=REPO,
                            stderr=subprocess.DEVNULL)
    try:
        body = scrape_until(port, lambda s: any(
            'kind="transient"' in labels and v >= 1 for labels, v in
            s.get("cdc_errors_total", [])))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    s = samples(body)
    assert s["cdc_up"] == [('{pipeline="p"}', 0.0)]
    assert "cdc_heartbeat_timestamp_seconds" not in s
    assert ('{kind="terminal",pipeline="p"}', 0.0) in s["cdc_errors_total"]
    # The alert that fires for it names this very series.
    assert "cdc_up == 0" in alert_expressions()["CdcDown"]


def test_alert_rules_and_dashboard_are_well_formed() -> None:
    """What Prometheus and Grafana need of each entry (no server needed)."""
    doc = yaml.safe_load(ALERTS.read_text())
    rules = [r for g in doc["groups"] for r in g["rules"]]
    assert len({r["alert"] for r in rules}) == len(rules)
    for r in rules:
        assert r["expr"].strip() and r["labels"]["severity"] in ("warning", "critical"), r
        assert r["annotations"]["summary"], r
        assert r["expr"].count("(") == r["expr"].count(")"), r
    dash = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dash["panels"]]
    assert len(set(ids)) == len(ids) and dash["uid"]
    names = {v["name"] for v in dash["templating"]["list"]}
    for p in dash["panels"]:
        assert p["type"] in ("stat", "timeseries") and p["title"], p
        assert set(p["gridPos"]) == {"h", "w", "x", "y"} and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        for t in p["targets"]:
            assert t["expr"].count("(") == t["expr"].count(")"), t
            # Every $variable a query uses is defined.
            assert set(re.findall(r"\$(\w+)", t["expr"])) <= names, t
