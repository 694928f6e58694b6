"""`cdc preview`: rules on sampled live rows, each source row beside the target row
it becomes or the reason it becomes none, and nothing written anywhere."""

from __future__ import annotations

import json
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from pipeline_helpers import cdc, write_pipeline

# MySQL -> PostgreSQL: a lookup join, a WHERE, a validation and a CHECK constraint.
MY_SRC = ("CREATE TABLE customers (id INT PRIMARY KEY, first_name VARCHAR(40) NOT NULL,"
          " last_name VARCHAR(40) NOT NULL, status VARCHAR(10) NOT NULL,"
          " industry VARCHAR(20) NOT NULL DEFAULT '', region_code CHAR(1) NOT NULL)"
          " DEFAULT CHARSET=utf8mb4")
PG_TGT = [
    "CREATE TABLE regions (code text PRIMARY KEY, name text NOT NULL)",
    "INSERT INTO regions VALUES ('N', 'North'), ('S', 'South')",
    "CREATE TABLE crm_customer (customer_no text PRIMARY KEY, full_name text NOT NULL"
    " CONSTRAINT short_name CHECK (length(full_name) <= 20), industry text NOT NULL,"
    " region text NOT NULL)",
    # Already replicated, with an old name: the preview says "update".
    "INSERT INTO crm_customer VALUES ('C00000002', 'Bob Old', 'Retail', 'South')",
    # Already replicated and equal: "unchanged".
    "INSERT INTO crm_customer VALUES ('C00000007', 'Gil Same', 'Other', 'North')",
]
MY_RULE = """\
INSERT INTO crm_customer (customer_no, full_name, industry, region)
SELECT CONCAT('C', LPAD(CAST(c.id AS CHAR), 8, '0')),
       TRIM(CONCAT(c.first_name, ' ', c.last_name)),
       COALESCE(NULLIF(c.industry, ''), 'Other'),
       r.name
FROM customers AS c
JOIN regions AS r ON r.code = c.region_code
WHERE c.status = 'active'
"""
MY_ROWS = [
    (1, "Ann", "Lee", "active", "Retail", "N"),  # insert
    (2, "Bob", "Stone", "active", "Retail", "S"),  # update
    (3, "Cy", "Gone", "inactive", "", "N"),  # filtered: WHERE
    (4, "Dee", "Far", "active", "", "X"),  # filtered: no region X
    (5, "Evangeline", "Montgomery-Smith", "active", "", "N"),  # dead letter: CHECK
    (6, "Fay", "Neg", "active", "", "S"),  # dead letter: validation
    (7, "Gil", "Same", "active", "", "N"),  # unchanged
]

# PostgreSQL -> MySQL: the same shapes the other way.
PG_SRC = ("CREATE TABLE orders (id integer PRIMARY KEY, customer_id integer NOT NULL,"
          " amount numeric(10,2) NOT NULL, status text NOT NULL)")
MY_TGT = [
    "CREATE TABLE cust_map (crm_id INT PRIMARY KEY, cust_no VARCHAR(12) NOT NULL)",
    "INSERT INTO cust_map VALUES (10, 'C00000010'), (11, 'C00000011')",
    "CREATE TABLE t_orders (order_no VARCHAR(12) PRIMARY KEY, cust_no VARCHAR(12) NOT NULL,"
    " amount DECIMAL(10,2) NOT NULL, CONSTRAINT positive CHECK (amount > 0))"
    " DEFAULT CHARSET=utf8mb4",
    "INSERT INTO t_orders VALUES ('O2', 'C00000011', 1.00)",
]
PG_RULE = """\
INSERT INTO t_orders (order_no, cust_no, amount)
SELECT 'O' || CAST(o.id AS TEXT), m.cust_no, o.amount
FROM orders AS o
JOIN cust_map AS m ON m.crm_id = o.customer_id
WHERE o.status = 'paid'
"""
PG_ROWS = [
    (1, 10, Decimal("12.50"), "paid"),  # insert
    (2, 11, Decimal("99.00"), "paid"),  # update
    (3, 10, Decimal("5.00"), "open"),  # filtered: WHERE
    (4, 99, Decimal("7.00"), "paid"),  # filtered: no customer 99
    (5, 10, Decimal("-3.00"), "paid"),  # dead letter: CHECK
]


def target_state(db: Any, kind: str) -> dict[str, Any]:
    """Every table of the target (bookkeeping included), row by row."""
    if kind == "postgresql":
        tables = [f"{s}.{t}" for s, t in db.query(
            "SELECT schemaname, tablename FROM pg_tables WHERE schemaname IN ('public', 'cdc')"
            " ORDER BY 1, 2")]
        quoted = [".".join(f'"{p}"' for p in t.split(".")) for t in tables]
    else:
        tables = [t for (t,) in db.query(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE()"
            " ORDER BY 1")]
        quoted = [f"`{t}`" for t in tables]
    return {t: sorted(map(repr, db.query(f"SELECT * FROM {q}")))
            for t, q in zip(tables, quoted, strict=True)}


def by_source_key(report: dict[str, Any], key: str) -> dict[Any, dict[str, Any]]:
    return {r["source"][key]: r for r in report["rows"]}


@pytest.fixture
def my_to_pg(tmp_path: Path, mysql_db: Any, pg_db: Any) -> tuple[Any, Any, Path]:
    mysql_db.execute(MY_SRC)
    for row in MY_ROWS:
        mysql_db.execute("INSERT INTO customers VALUES (%s, %s, %s, %s, %s, %s)", row)
    for stmt in PG_TGT:
        pg_db.execute(stmt)
    cfg = write_pipeline(tmp_path, mysql_db.url, pg_db.url, {"customers": MY_RULE},
                         name=f"pv_{mysql_db.name}", extra="""\
                         rule_options:
                           customers:
                             validate: ["c.last_name <> 'Neg'"]
                         """)
    cdc("setup", "-c", str(cfg))
    return mysql_db, pg_db, cfg


def test_mysql_to_pg_each_outcome_and_nothing_written(my_to_pg: tuple[Any, Any, Path]) -> None:
    src, tgt, cfg = my_to_pg
    before, src_before = target_state(tgt, "postgresql"), src.query("SELECT * FROM customers")
    out = cdc("preview", "-c", str(cfg), "--json")
    (rep,) = json.loads(out.stdout)
    assert rep["rule"] == "customers" and rep["target_table"] == "crm_customer"
    assert rep["key"] == ["customer_no"]
    rows = by_source_key(rep, "id")
    assert sorted(rows) == [1, 2, 3, 4, 5, 6, 7]
    assert rows[1]["outcome"] == "insert"
    assert rows[1]["target"] == {"customer_no": "C00000001", "full_name": "Ann Lee",
                                 "industry": "Retail", "region": "North"}
    assert rows[1]["before"] is None and rows[1]["reason"] is None
    assert rows[2]["outcome"] == "update"
    assert rows[2]["before"]["full_name"] == "Bob Old"
    assert rows[2]["target"]["full_name"] == "Bob Stone"
    assert rows[3]["outcome"] == "filtered" and rows[3]["target"] is None
    assert "WHERE" in rows[3]["reason"] and "status = 'active'" in rows[3]["reason"]
    assert rows[4]["outcome"] == "filtered"
    assert "lookup regions" in rows[4]["reason"], rows[4]["reason"]
    assert rows[5]["outcome"] == "dead_letter"
    assert "short_name" in rows[5]["reason"], rows[5]["reason"]
    assert rows[5]["target"]["full_name"] == "Evangeline Montgomery-Smith"
    assert rows[6]["outcome"] == "dead_letter"
    assert "validation failed" in rows[6]["reason"] and "Neg" in rows[6]["reason"]
    assert rows[7]["outcome"] == "unchanged"
    assert rep["counts"] == {"insert": 1, "update": 1, "unchanged": 1, "dead_letter": 2,
                             "filtered": 2}
    # Nothing written: data, bookkeeping (no dead letter, no offset moved), no tables left.
    assert target_state(tgt, "postgresql") == before
    assert tgt.scalar("SELECT count(*) FROM cdc.dead_letters") == 0
    assert tgt.scalar("SELECT count(*) FROM pg_class WHERE relname LIKE '\\_cdc%'") == 0
    assert src.query("SELECT * FROM customers") == src_before

    # The readable form names the same things, each source row beside its target row.
    text = cdc("preview", "-c", str(cfg)).stdout
    assert "rule customers: customers -> crm_customer" in text
    assert "#5 DEAD LETTER" in text and "short_name" in text
    assert "'Bob Old' -> 'Bob Stone'" in text
    # Beside: a source column and a target column on one line.
    assert re.search(r"^ +first_name +'Ann' +full_name +'Ann Lee'$", text, re.M), text
    assert re.search(r"^  #4 FILTERED: no row of lookup regions", text, re.M), text
    assert text.rstrip().endswith("rolled back")
    assert target_state(tgt, "postgresql") == before


def test_where_limit_and_rule_choose_the_sample(my_to_pg: tuple[Any, Any, Path]) -> None:
    _src, tgt, cfg = my_to_pg
    before = target_state(tgt, "postgresql")
    out = cdc("preview", "-c", str(cfg), "--json", "--where", "id >= 3 AND region_code = 'N'",
              "--limit", "2", "--rule", "customers", "--table", "customers")
    (rep,) = json.loads(out.stdout)
    assert [r["source"]["id"] for r in rep["rows"]] == [3, 5]
    # A subquery that only reads is a condition like another.
    out = cdc("preview", "-c", str(cfg), "--json", "--where",
              "id IN (SELECT id FROM customers WHERE first_name = 'Ann')")
    assert [r["source"]["id"] for r in json.loads(out.stdout)[0]["rows"]] == [1]
    assert target_state(tgt, "postgresql") == before


@pytest.mark.parametrize("where, says", [
    ("1 = 1; DELETE FROM customers", "exactly one condition"),
    ("SELECT 1", "not a condition"),
    ("id IN (1", "not a valid condition"),
    ("no_such_column = 1", "no_such_column"),
])
def test_where_that_is_not_one_condition_is_refused(my_to_pg: tuple[Any, Any, Path],
                                                    where: str, says: str) -> None:
    src, tgt, cfg = my_to_pg
    before = target_state(tgt, "postgresql")
    p = cdc("preview", "-c", str(cfg), "--where", where, check=False)
    assert p.returncode == 2, p.stderr
    assert says in p.stderr and "Traceback" not in p.stderr
    assert src.scalar("SELECT count(*) FROM customers") == len(MY_ROWS)
    assert target_state(tgt, "postgresql") == before


def test_unknown_rule_or_table_is_refused(my_to_pg: tuple[Any, Any, Path]) -> None:
    _src, _tgt, cfg = my_to_pg
    p = cdc("preview", "-c", str(cfg), "--rule", "custmers", check=False)
    assert p.returncode == 2 and "custmers" in p.stderr
    p = cdc("preview", "-c", str(cfg), "--table", "orders", check=False)
    assert p.returncode == 2 and "no rule reads it" in p.stderr


def test_pg_to_mysql_each_outcome_and_nothing_written(tmp_path: Path, pg_db: Any,
                                                      mysql_db: Any) -> None:
    pg_db.execute(PG_SRC)
    for row in PG_ROWS:
        pg_db.execute("INSERT INTO orders VALUES (%s, %s, %s, %s)", row)
    for stmt in MY_TGT:
        mysql_db.execute(stmt)
    cfg = write_pipeline(tmp_path, pg_db.url, mysql_db.url, {"orders": PG_RULE},
                         name=f"pv_{pg_db.name}")
    cdc("setup", "-c", str(cfg))
    try:
        before = target_state(mysql_db, "mysql")
        out = cdc("preview", "-c", str(cfg), "--json")
        (rep,) = json.loads(out.stdout)
        rows = by_source_key(rep, "id")
        assert rows[1]["outcome"] == "insert"
        assert rows[1]["target"] == {"order_no": "O1", "cust_no": "C00000010",
                                     "amount": "12.50"}
        assert rows[2]["outcome"] == "update"
        assert rows[2]["before"]["amount"] == "1.00" and rows[2]["target"]["amount"] == "99.00"
        assert rows[3]["outcome"] == "filtered" and "status = 'paid'" in rows[3]["reason"]
        assert rows[4]["outcome"] == "filtered" and "lookup cust_map" in rows[4]["reason"]
        assert rows[5]["outcome"] == "dead_letter" and "positive" in rows[5]["reason"], rows[5]
        # Nothing written, and no staging or result table left behind (MySQL's
        # temporary tables are not transactional).
        assert target_state(mysql_db, "mysql") == before
        assert mysql_db.scalar("SELECT count(*) FROM cdc_dead_letters") == 0
        assert mysql_db.scalar("SELECT count(*) FROM information_schema.tables WHERE "
                               "table_schema = DATABASE() AND table_name LIKE '\\_cdc\\_%'") == 0
        assert pg_db.scalar("SELECT count(*) FROM orders") == len(PG_ROWS)
    finally:
        cdc("teardown", "-c", str(cfg), "--yes", check=False)



def test_pg_source_where_that_writes_fails_on_the_read_only_session(
        tmp_path: Path, pg_db: Any, make_pg_db: Any) -> None:
    """A function call is a condition sqlglot accepts; the read-only session
    the sample is read on refuses what it would write."""
    target = make_pg_db()
    pg_db.execute(PG_SRC)
    pg_db.execute("INSERT INTO orders VALUES (1, 10, 1.00, 'paid')")
    pg_db.execute("CREATE SEQUENCE s")
    target.execute("CREATE TABLE t_orders (order_no text PRIMARY KEY, amount numeric NOT NULL)")
    target.execute("CREATE TABLE t_last (bucket text PRIMARY KEY, amount numeric NOT NULL)")
    cfg = write_pipeline(tmp_path, pg_db.url, target.url, {"orders": """\
        INSERT INTO t_orders (order_no, amount)
        SELECT 'O' || CAST(o.id AS TEXT), o.amount FROM orders AS o
        """, "buckets": """\
        INSERT INTO t_last (bucket, amount)
        SELECT 'B' || CAST(o.id / 10 AS TEXT), o.amount FROM orders AS o
        """}, name=f"pv_{pg_db.name}")
    p = cdc("preview", "-c", str(cfg), "--where", "nextval('s') > 0", check=False)
    assert p.returncode == 2 and "read-only" in p.stderr, p.stderr
    assert pg_db.scalar("SELECT last_value FROM s") == 1
    assert pg_db.scalar("SELECT is_called FROM s") is False
    # Without it, PostgreSQL to PostgreSQL previews like any other direction;
    # two rules read one table, and two rows of one target key (ids 1 and 2 in
    # bucket 0): the later wins.
    pg_db.execute("INSERT INTO orders VALUES (2, 10, 2.00, 'paid')")
    reps = {r["rule"]: r for r in json.loads(cdc("preview", "-c", str(cfg), "--json").stdout)}
    assert [(r["outcome"], r["target"]) for r in reps["orders"]["rows"]] == [
        ("insert", {"order_no": "O1", "amount": "1.00"}),
        ("insert", {"order_no": "O2", "amount": "2.00"})]
    last = reps["buckets"]["rows"]
    assert [r["outcome"] for r in last] == ["superseded", "insert"]
    assert "same target key" in last[0]["reason"]
    assert last[1]["target"] == {"bucket": "B0", "amount": "2.00"}
    assert target.scalar("SELECT count(*) FROM t_orders") == 0
    assert target.scalar("SELECT count(*) FROM t_last") == 0


def test_mysql_source_where_that_writes_fails_on_the_read_only_session(
        my_to_pg: tuple[Any, Any, Path]) -> None:
    src, tgt, cfg = my_to_pg
    src.execute("CREATE TABLE audit (n INT)")
    src.execute("CREATE FUNCTION touch() RETURNS INT MODIFIES SQL DATA DETERMINISTIC"
                " BEGIN INSERT INTO audit VALUES (1); RETURN 1; END")
    before = target_state(tgt, "postgresql")
    p = cdc("preview", "-c", str(cfg), "--where", "touch() = 1", check=False)
    assert p.returncode == 2 and "READ ONLY" in p.stderr.upper(), p.stderr
    assert src.scalar("SELECT count(*) FROM audit") == 0
    assert target_state(tgt, "postgresql") == before
