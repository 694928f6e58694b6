"""Partitioned source tables stream like plain ones: PostgreSQL declarative
partitioning (changes published under the root's name, rows moving between
partitions) and MariaDB's PARTITION BY RANGE / HASH."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pipeline_helpers import PipelineThread, cdc, write_pipeline

from cdc.config import load
from cdc.snapshot import estimate_rows
from cdc.sources import open_source

PG_SRC = """
CREATE TABLE orders (id integer NOT NULL, region text NOT NULL, amount numeric(10,2) NOT NULL,
                     note text, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
CREATE TABLE orders_eu PARTITION OF orders FOR VALUES IN ('eu');
CREATE TABLE orders_us PARTITION OF orders FOR VALUES IN ('us');
CREATE TABLE orders_other PARTITION OF orders DEFAULT;
"""
TGT = {
    "postgresql": "CREATE TABLE t_orders (id integer PRIMARY KEY, region text NOT NULL,"
                  " amount numeric(10,2) NOT NULL, note text)",
    "mysql": "CREATE TABLE t_orders (id int PRIMARY KEY, region varchar(10) NOT NULL,"
             " amount decimal(10,2) NOT NULL, note varchar(100)) DEFAULT CHARSET=utf8mb4",
}
RULE = ("INSERT INTO t_orders (id, region, amount, note)\n"
        "SELECT o.id, o.region, o.amount, o.note FROM orders AS o")
QUERY = "SELECT id, region, amount, note FROM {} ORDER BY id"


def _teardown(cfg: Path) -> None:
    from cdc.sources.postgres import PostgresSource

    c = load(cfg)
    PostgresSource(c.source.libpq(), slot=c.slot, publication=c.publication,
                   tables=["orders"]).teardown()


def _caught_up(p: PipelineThread) -> None:
    p.wait_caught_up()
    time.sleep(0.3)
    p.wait_caught_up()


@pytest.fixture(params=["postgresql", "mysql"], ids=lambda k: f"pg-to-{k}")
def pg_partitioned(request: Any, tmp_path: Path, make_pg_db: Any,
                   make_mysql_db: Any) -> Iterator[tuple[Any, Any, Path]]:
    src = make_pg_db()
    tgt = make_pg_db() if request.param == "postgresql" else make_mysql_db()
    src.execute(PG_SRC)
    tgt.execute(TGT[request.param])
    cfg = write_pipeline(tmp_path, src.url, tgt.url, {"orders": RULE}, name=f"part_{src.name}")
    try:
        yield src, tgt, cfg
    finally:
        _teardown(cfg)


def test_pg_partitioned_source_snapshot_and_stream(pg_partitioned: tuple[Any, Any, Path]) -> None:
    src, tgt, cfg = pg_partitioned
    src.execute("INSERT INTO orders VALUES (1, 'eu', 10, 'a'), (2, 'us', 20, 'b'),"
                " (3, 'asia', 30, 'c'), (4, 'eu', 40, 'd')")
    cdc("check", "-c", str(cfg))
    cdc("setup", "-c", str(cfg))
    # The publication names the root and publishes through it.
    assert src.query("SELECT pubviaroot FROM pg_publication") == [(True,)]
    assert src.query("SELECT tablename FROM pg_publication_tables") == [("orders",)]
    src.execute("ANALYZE orders")
    c = load(cfg)
    source = open_source(c, ["orders"])
    try:
        assert estimate_rows(c, source, "orders") == 4  # the partitions' rows
    finally:
        source.close()
    cdc("snapshot", "-c", str(cfg))
    assert tgt.query(QUERY.format("t_orders")) == src.query(QUERY.format("orders"))
    assert len(tgt.query(QUERY.format("t_orders"))) == 4  # every partition was read
    with PipelineThread(cfg) as p:
        src.execute("INSERT INTO orders VALUES (5, 'us', 50, 'e'), (6, 'eu', 60, NULL),"
                    " (7, 'africa', 70, 'g')")
        src.execute("UPDATE orders SET amount = 11 WHERE id = 1")
        # Moves the row from orders_eu to orders_us: must arrive as an update.
        src.execute("UPDATE orders SET region = 'us', note = 'moved' WHERE id = 4")
        # And from the DEFAULT partition into a listed one.
        src.execute("UPDATE orders SET region = 'eu' WHERE id = 3")
        src.execute("DELETE FROM orders WHERE id = 2")
        src.execute("DELETE FROM orders_other WHERE id = 7")  # through the partition itself
        _caught_up(p)
    rows = tgt.query(QUERY.format("t_orders"))
    assert [tuple(str(v) if v is not None else None for v in r) for r in rows] == [
        ("1", "eu", "11.00", "a"), ("3", "eu", "30.00", "c"), ("4", "us", "40.00", "moved"),
        ("5", "us", "50.00", "e"), ("6", "eu", "60.00", None)]
    assert rows == src.query(QUERY.format("orders"))
    assert cdc("dlq", "list", "-c", str(cfg)).stdout.count("orders") == 0


def test_pg_partitioned_replica_identity_full(tmp_path: Path, make_pg_db: Any) -> None:
    """A partitioned table without a primary key: REPLICA IDENTITY FULL on the
    root does not reach its partitions (PostgreSQL 15), so `cdc setup` sets it
    on each partition, and `cdc doctor` reports a partition that lacks it.
    (A unique key on NOT NULL columns stands in for the primary key: without
    any, every command refuses the table, tests/test_rough_edges.py.)"""
    src, tgt = make_pg_db(), make_pg_db()
    src.execute("""
        CREATE TABLE orders (id integer NOT NULL, region text NOT NULL,
                             amount numeric(10,2) NOT NULL, note text,
                             UNIQUE (id, region)) PARTITION BY LIST (region);
        CREATE TABLE orders_eu PARTITION OF orders FOR VALUES IN ('eu');
        CREATE TABLE orders_us PARTITION OF orders FOR VALUES IN ('us');
        ALTER TABLE orders REPLICA IDENTITY FULL;
    """)
    tgt.execute(TGT["postgresql"])
    cfg = write_pipeline(tmp_path, src.url, tgt.url, {"orders": RULE}, name=f"part_{src.name}")
    try:
        cdc("setup", "-c", str(cfg))
        assert sorted(src.query("SELECT relname, relreplident FROM pg_class"
                                " WHERE relname LIKE 'orders%' AND relkind IN ('r', 'p')")) == [
            ("orders", "f"), ("orders_eu", "f"), ("orders_us", "f")]
        src.execute("CREATE TABLE orders_asia PARTITION OF orders FOR VALUES IN ('asia')")
        doctor = cdc("doctor", "-c", str(cfg), check=False)
        assert doctor.returncode != 0
        assert "orders_asia" in doctor.stdout + doctor.stderr
        assert "REPLICA IDENTITY FULL" in doctor.stdout + doctor.stderr
        cdc("setup", "-c", str(cfg))
        with PipelineThread(cfg) as p:
            src.execute("INSERT INTO orders VALUES (1, 'eu', 10, 'a'), (2, 'us', 20, 'b'),"
                        " (3, 'asia', 30, 'c')")
            src.execute("UPDATE orders SET region = 'asia' WHERE id = 1")
            src.execute("DELETE FROM orders WHERE id = 3")
            src.execute("UPDATE orders SET note = 'x' WHERE id = 2")
            _caught_up(p)
        assert tgt.query(QUERY.format("t_orders")) == src.query(QUERY.format("orders"))
        assert [r[0] for r in tgt.query(QUERY.format("t_orders"))] == [1, 2]
    finally:
        _teardown(cfg)


def test_publication_of_an_older_cdc_is_fixed_by_setup(tmp_path: Path, make_pg_db: Any) -> None:
    """A publication made without publish_via_partition_root: doctor says so, setup fixes it."""
    src, tgt = make_pg_db(), make_pg_db()
    src.execute(PG_SRC)
    tgt.execute(TGT["postgresql"])
    cfg = write_pipeline(tmp_path, src.url, tgt.url, {"orders": RULE}, name=f"part_{src.name}")
    c = load(cfg)
    try:
        cdc("setup", "-c", str(cfg))
        src.execute(f'ALTER PUBLICATION "{c.publication}" SET (publish_via_partition_root = false)')
        doctor = cdc("doctor", "-c", str(cfg), check=False)
        assert doctor.returncode != 0
        assert "FAIL publish_via_partition_root" in doctor.stdout
        # The root is in the publication: only the option is wrong, and doctor says just that.
        assert "ok   publication has orders" in doctor.stdout
        run = cdc("run", "-c", str(cfg), check=False, timeout=60)
        assert run.returncode != 0 and "publish_via_partition_root" in run.stderr
        cdc("setup", "-c", str(cfg))
        assert src.query("SELECT pubviaroot FROM pg_publication") == [(True,)]
        with PipelineThread(cfg) as p:
            src.execute("INSERT INTO orders VALUES (1, 'eu', 10, 'a'), (2, 'us', 20, 'b')")
            _caught_up(p)
        assert tgt.query(QUERY.format("t_orders")) == src.query(QUERY.format("orders"))
    finally:
        _teardown(cfg)


@pytest.mark.parametrize("partitioning", [
    "PARTITION BY RANGE (id) (PARTITION p0 VALUES LESS THAN (10),"
    " PARTITION p1 VALUES LESS THAN (100), PARTITION p2 VALUES LESS THAN MAXVALUE)",
    "PARTITION BY HASH (id) PARTITIONS 4",
], ids=["range", "hash"])
def test_mariadb_partitioned_source_to_pg(tmp_path: Path, mysql_db: Any, pg_db: Any,
                                          partitioning: str) -> None:
    mysql_db.execute("CREATE TABLE orders (id INT NOT NULL PRIMARY KEY, region VARCHAR(10) NOT NULL,"
                     " amount DECIMAL(10,2) NOT NULL, note VARCHAR(100)) DEFAULT CHARSET=utf8mb4 "
                     + partitioning)
    pg_db.execute(TGT["postgresql"])
    mysql_db.execute("INSERT INTO orders VALUES (1, 'eu', 10, 'a'), (50, 'us', 20, 'b'),"
                     " (500, 'asia', 30, 'c')")
    cfg = write_pipeline(tmp_path, mysql_db.url, pg_db.url, {"orders": RULE})
    cdc("check", "-c", str(cfg))
    cdc("setup", "-c", str(cfg))
    cdc("snapshot", "-c", str(cfg))
    with PipelineThread(cfg) as p:
        mysql_db.execute("INSERT INTO orders VALUES (2, 'eu', 1, NULL), (60, 'us', 2, 'x'),"
                         " (600, 'eu', 3, 'y')")
        mysql_db.execute("UPDATE orders SET id = 70, note = 'moved' WHERE id = 1")  # p0 -> p1
        mysql_db.execute("UPDATE orders SET amount = 99 WHERE id = 500")
        mysql_db.execute("DELETE FROM orders WHERE id IN (50, 600)")
        _caught_up(p)
    rows = pg_db.query(QUERY.format("t_orders"))
    assert [r[0] for r in rows] == [2, 60, 70, 500]
    assert [tuple(r) for r in rows] == [tuple(r) for r in mysql_db.query(QUERY.format("orders"))]


def test_root_and_its_partition_both_read_is_refused(tmp_path: Path, make_pg_db: Any) -> None:
    """The partition's changes would arrive under the root only: refuse, don't lose them."""
    src, tgt = make_pg_db(), make_pg_db()
    src.execute(PG_SRC)
    tgt.execute(TGT["postgresql"] + "; CREATE TABLE t_eu (id integer PRIMARY KEY)")
    cfg = write_pipeline(tmp_path, src.url, tgt.url, {
        "orders": RULE, "eu": "INSERT INTO t_eu (id) SELECT e.id FROM orders_eu AS e"},
        name=f"part_{src.name}")
    try:
        setup = cdc("setup", "-c", str(cfg), check=False)
        assert setup.returncode != 0
        assert "orders and its partition orders_eu" in setup.stderr + setup.stdout
        assert src.query("SELECT count(*) FROM pg_publication") == [(0,)]
    finally:
        _teardown(cfg)
