"""PostgreSQL sources under REPLICA IDENTITY DEFAULT: deletes and filter exits.

A delete, a key change, and an update that keeps the key bring only the
primary key of the old row.  A rule whose WHERE or lookup join reads other
columns must still delete the target row such a change names (issue: 245
stale rows after a random workload of ~1,500 changes), and a rule whose target
key needs a column the old image does not carry is refused by every command
that would run it, never accepted to lose deletes.

The target is compared with a Python model of what the rule makes of the
final source rows, not with SQL on either database.
"""

from __future__ import annotations

import random
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from pipeline_helpers import PipelineThread, cdc, write_pipeline

from cdc.config import load

STATUS_MAP = {0: "new", 1: "paid", 2: "shipped", 3: "returned", 9: "cancelled"}  # no 5: a miss
SRC = ("CREATE TABLE orders (id integer PRIMARY KEY, customer integer NOT NULL,"
       " status integer NOT NULL, amount numeric(10,2) NOT NULL)")
# The bare NULL writes an integer column: it must reach the target as NULL.
RULE = """INSERT INTO crm_orders (order_no, customer, label, amount, flag)
SELECT CONCAT('O', o.id), o.customer, m.label, o.amount * 2, NULL
FROM orders AS o JOIN crm_status_map AS m ON m.code = o.status
WHERE o.status <> 9 AND o.amount > 1
"""


def target_ddl(kind: str) -> list[str]:
    text = "varchar(40)" if kind == "mysql" else "text"
    return [f"CREATE TABLE crm_status_map (code integer PRIMARY KEY, label {text} NOT NULL)",
            f"CREATE TABLE crm_orders (order_no {text} PRIMARY KEY, customer integer NOT NULL,"
            f" label {text} NOT NULL, amount numeric(12,2) NOT NULL, flag integer)"]


def model(rows: list[tuple[Any, ...]]) -> set[tuple[str, int, str, Decimal, None]]:
    """What RULE makes of the source rows, computed here."""
    out = set()
    for oid, customer, status, amount in rows:
        label = STATUS_MAP.get(status)
        if label is None or status == 9 or not amount > 1:
            continue
        out.add((f"O{oid}", int(customer), label, Decimal(amount) * 2, None))
    return out


def target_rows(tgt: Any) -> set[tuple[str, int, str, Decimal, None]]:
    return {(str(a), int(b), str(c), Decimal(d), e) for a, b, c, d, e in
            tgt.query("SELECT order_no, customer, label, amount, flag FROM crm_orders")}


def workload(src: Any, rng: random.Random, ids: list[int], steps: int) -> None:
    """Random single- and multi-row changes, some in one transaction."""
    conn = src.connect()
    try:
        next_id = max(ids, default=0) + 1
        for _ in range(steps):
            op = rng.random()
            with conn.transaction():
                for _ in range(rng.choice((1, 1, 1, 3))):
                    if op < 0.3 or len(ids) < 20:
                        conn.execute("INSERT INTO orders VALUES (%s, %s, %s, %s)",
                                     (next_id, rng.randint(1, 50), rng.choice([0, 1, 2, 3, 5, 9]),
                                      Decimal(rng.randint(0, 900)) / 4))
                        ids.append(next_id)
                        next_id += 1
                    elif op < 0.45:  # status changes: filter exits, re-entries, lookup misses
                        conn.execute("UPDATE orders SET status = %s WHERE id = %s",
                                     (rng.choice([0, 1, 2, 3, 5, 9]), rng.choice(ids)))
                    elif op < 0.55:  # an amount that may leave the filter
                        conn.execute("UPDATE orders SET amount = %s WHERE id = %s",
                                     (Decimal(rng.randint(0, 8)) / 4, rng.choice(ids)))
                    elif op < 0.75:
                        victim = rng.choice(ids)
                        conn.execute("DELETE FROM orders WHERE id = %s", (victim,))
                        ids.remove(victim)
                    elif op < 0.85:  # a key change
                        old = rng.choice(ids)
                        conn.execute("UPDATE orders SET id = %s WHERE id = %s", (next_id, old))
                        ids.remove(old)
                        ids.append(next_id)
                        next_id += 1
                    else:  # multi-row statements
                        lo = rng.choice(ids)
                        if rng.random() < 0.5:
                            conn.execute("UPDATE orders SET status = 9 WHERE id BETWEEN %s AND %s",
                                         (lo, lo + 3))
                        else:
                            gone = [r[0] for r in conn.execute(
                                "DELETE FROM orders WHERE id BETWEEN %s AND %s RETURNING id",
                                (lo, lo + 2)).fetchall()]
                            for g in gone:
                                ids.remove(g)
    finally:
        conn.close()


def setup(tmp_path: Path, src: Any, tgt: Any, kind: str) -> Path:
    src.execute(SRC)
    for ddl in target_ddl(kind):
        tgt.execute(ddl)
    for code, label in STATUS_MAP.items():
        tgt.execute(f"INSERT INTO crm_status_map VALUES ({code}, '{label}')")
    cfg = write_pipeline(tmp_path, src.url, tgt.url, {"orders": RULE}, name=f"ri_{src.name}",
                         extra="batch:\n  max_rows: 40\n")
    cdc("setup", "-c", str(cfg))
    return cfg


def teardown(cfg: Path) -> None:
    from cdc.sources.postgres import PostgresSource

    c = load(cfg)
    PostgresSource(c.source.libpq(), slot=c.slot, publication=c.publication,
                   tables=["orders"]).teardown()


@pytest.mark.parametrize("target_kind", ["postgresql", "mysql"])
@pytest.mark.parametrize("snapshot_first", [False, True], ids=["stream", "snapshot"])
def test_default_identity_deletes_and_filter_exits(tmp_path: Path, make_pg_db: Any,
                                                   make_mysql_db: Any, target_kind: str,
                                                   snapshot_first: bool) -> None:
    src = make_pg_db()
    tgt = make_pg_db() if target_kind == "postgresql" else make_mysql_db()
    cfg = setup(tmp_path, src, tgt, "mysql" if target_kind == "mysql" else "postgresql")
    assert src.scalar("SELECT relreplident FROM pg_class WHERE relname = 'orders'") == "d"
    rng = random.Random(1300 + snapshot_first)
    ids: list[int] = []
    try:
        if snapshot_first:
            workload(src, rng, ids, 150)
            cdc("snapshot", "-c", str(cfg))
            assert target_rows(tgt) == model(src.query("SELECT * FROM orders"))
        with PipelineThread(cfg) as p:
            for _ in range(4):
                workload(src, rng, ids, 120)
                p.wait_caught_up()
        final = src.query("SELECT * FROM orders")
        expected = model(final)
        got = target_rows(tgt)
        assert got - expected == set(), "stale or wrong rows left in the target"
        assert expected - got == set(), "rows missing from the target"
        # The workload really exercised what the rule filters out.
        assert len(final) > 20 and any(r[2] == 9 for r in final) and any(r[2] == 5 for r in final)
        dead = tgt.scalar("SELECT count(*) FROM " +
                          ("cdc.dead_letters" if target_kind == "postgresql"
                           else "cdc_dead_letters"))
        assert dead == 0
    finally:
        teardown(cfg)


KEY_FROM_LOOKUP = """INSERT INTO crm_orders (order_no, customer, label, amount)
SELECT m.label, o.customer, m.label, o.amount
FROM orders AS o JOIN crm_status_map AS m ON m.code = o.status
"""
KEY_FROM_COLUMN = """INSERT INTO crm_orders (order_no, customer, label, amount)
SELECT CONCAT(o.customer, '-', o.id), o.customer, 'x', o.amount FROM orders AS o
"""


@pytest.mark.parametrize("rule", [KEY_FROM_LOOKUP, KEY_FROM_COLUMN], ids=["lookup", "column"])
def test_key_outside_identity_refused_everywhere(tmp_path: Path, make_pg_db: Any,
                                                 rule: str) -> None:
    src, tgt = make_pg_db(), make_pg_db()
    src.execute(SRC)
    for ddl in target_ddl("postgresql"):
        tgt.execute(ddl)
    name = f"rk_{src.name}"
    # Set up with a rule that is fine, so that snapshot and run get as far as
    # the rule; then the DBA edits it.
    cfg = write_pipeline(tmp_path, src.url, tgt.url, {"orders": RULE.replace(
        "crm_orders", "crm_orders_ok")}, name=name)
    tgt.execute("CREATE TABLE crm_orders_ok (LIKE crm_orders)")
    tgt.execute("ALTER TABLE crm_orders_ok ADD PRIMARY KEY (order_no)")
    cdc("setup", "-c", str(cfg))
    cfg = write_pipeline(tmp_path, src.url, tgt.url, {"orders": rule}, name=name)
    try:
        for command in ("check", "doctor", "setup", "snapshot", "run"):
            p = cdc(command, "-c", str(cfg), check=False, timeout=60)
            assert p.returncode != 0, f"cdc {command} accepted a rule that loses deletes"
            assert "REPLICA IDENTITY FULL" in p.stderr + p.stdout, (command, p.stderr)
        # The fix it names works: with FULL identity the same rule is accepted.
        src.execute("ALTER TABLE orders REPLICA IDENTITY FULL")
        cdc("check", "-c", str(cfg))
    finally:
        teardown(cfg)
