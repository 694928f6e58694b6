"""Golden values, MySQL/MariaDB -> PostgreSQL, through snapshot AND stream.

The same source values are inserted twice: row 1 before `cdc snapshot`, row 2
while `cdc run` streams.  Both target rows must equal the expected values and
each other: a value never differs by how it arrived.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from pipeline_helpers import PipelineThread, cdc, write_pipeline

COLUMNS = [
    # name, MySQL type, PostgreSQL target type, SQL literal, expected Python value in PG
    ("ti", "TINYINT", "smallint", "-128", -128),
    ("tiu", "TINYINT UNSIGNED", "smallint", "255", 255),
    ("siu", "SMALLINT UNSIGNED", "integer", "65535", 65535),
    ("mi", "MEDIUMINT", "integer", "-8388608", -8388608),
    ("iu", "INT UNSIGNED", "bigint", "4294967295", 4294967295),
    ("bi", "BIGINT", "bigint", "-9223372036854775808", -9223372036854775808),
    ("biu", "BIGINT UNSIGNED", "numeric(20,0)", "18446744073709551615",
     Decimal("18446744073709551615")),
    ("dec", "DECIMAL(65,30)", "numeric(65,30)",
     "'12345678901234567890123456789012345.123456789012345678901234567890'",
     Decimal("12345678901234567890123456789012345.123456789012345678901234567890")),
    ("dsmall", "DECIMAL(5,2)", "numeric(5,2)", "-0.05", Decimal("-0.05")),
    ("dbl", "DOUBLE", "double precision", "1.7976931348623157e308", 1.7976931348623157e308),
    ("flt", "FLOAT", "real", "0.5", 0.5),
    ("bool1", "TINYINT(1)", "smallint", "1", 1),
    ("bits", "BIT(8)", "bigint", "b'10100101'", 165),
    ("d", "DATE", "date", "'9999-12-31'", date(9999, 12, 31)),
    ("dt", "DATETIME(6)", "timestamp(6)", "'2024-02-29 23:59:59.999999'",
     datetime(2024, 2, 29, 23, 59, 59, 999999)),
    ("dt0", "DATETIME", "timestamp(0)", "'1000-01-01 00:00:00'", datetime(1000, 1, 1)),
    ("ts", "TIMESTAMP(3) NULL", "timestamptz(3)", "'2038-01-19 03:14:07.499'",
     datetime(2038, 1, 19, 3, 14, 7, 499000, tzinfo=UTC)),
    ("tneg", "TIME", "interval", "'-838:59:59'", -timedelta(hours=838, minutes=59, seconds=59)),
    ("tbig", "TIME(6)", "interval", "'100:00:00.5'", timedelta(hours=100, microseconds=500000)),
    ("yr", "YEAR", "smallint", "2155", 2155),
    ("txt", "VARCHAR(50)", "text", "'王小明 😀 \\\\ tab\\there'", "王小明 😀 \\ tab\there"),
    ("lat", "VARCHAR(20) CHARACTER SET latin1", "text", "'Müller café'", "Müller café"),
    ("bin", "VARBINARY(8)", "bytea", "x'00ff10'", b"\x00\xff\x10"),
    ("blb", "BLOB", "bytea", "x'deadbeef'", b"\xde\xad\xbe\xef"),
    ("en", "ENUM('small','large')", "text", "'large'", "large"),
    ("st", "SET('a','b','c')", "text", "'a,c'", "a,c"),
    ("js", "JSON", "jsonb", "'{\"k\": [1, 2.5, \"x\", null, true]}'",
     {"k": [1, 2.5, "x", None, True]}),
    ("nul", "INT NULL", "integer", "NULL", None),
]


def test_mysql_types_to_postgres_snapshot_and_stream(tmp_path: Path, mysql_db: Any,
                                                     pg_db: Any) -> None:
    mysql_db.execute("CREATE TABLE vals (id INT PRIMARY KEY, "
                     + ", ".join(f"`{n}` {t}" for n, t, _, _, _ in COLUMNS)
                     + ") DEFAULT CHARSET=utf8mb4")
    pg_db.execute("CREATE TABLE t_vals (id integer PRIMARY KEY, "
                  + ", ".join(f'"{n}" {t}' for n, _, t, _, _ in COLUMNS) + ")")
    names = ", ".join(f"v.`{n}`" for n, *_ in COLUMNS)
    rule = (f"INSERT INTO t_vals (id, {', '.join(n for n, *_ in COLUMNS)}) "
            f"SELECT v.id, {names} FROM vals AS v")
    cfg = write_pipeline(tmp_path, mysql_db.url, pg_db.url, {"vals": rule})
    literals = ", ".join(lit for *_, lit, _ in COLUMNS)
    mysql_db.execute(f"INSERT INTO vals VALUES (1, {literals})")
    cdc("setup", "-c", str(cfg))
    cdc("snapshot", "-c", str(cfg))
    with PipelineThread(cfg) as p:
        mysql_db.execute(f"INSERT INTO vals VALUES (2, {literals})")
        p.wait_caught_up()
    rows = {r[0]: r[1:] for r in pg_db.query(
        "SELECT id, " + ", ".join(f'"{n}"' for n, *_ in COLUMNS) + " FROM t_vals")}
    assert set(rows) == {1, 2}
    for (name, _, _, _, expected), snap, stream in zip(COLUMNS, rows[1], rows[2], strict=True):
        assert snap == stream, f"{name}: snapshot {snap!r} != stream {stream!r}"
        if isinstance(expected, dict):
            got = snap if isinstance(snap, dict) else json.loads(snap)
            assert got == expected, name
        elif isinstance(expected, float):
            assert snap == expected, f"{name}: {snap!r} != {expected!r}"
        else:
            assert snap == expected, f"{name}: {snap!r} != {expected!r}"


ZERO_ROWS = ("SET SESSION sql_mode = ''; INSERT INTO zd VALUES ({0}, '0000-00-00', "
             "'0000-00-00 00:00:00', '0000-00-00 00:00:00'), ({1}, '2024-00-15', "
             "'2024-05-00 10:00:00', '2024-01-01 00:00:01')")


def _zero_date_pipeline(tmp_path: Path, mysql_db: Any, tgt: Any, extra: str = "") -> Path:
    mysql_db.execute("SET SESSION sql_mode = ''")
    mysql_db.execute("CREATE TABLE zd (id INT PRIMARY KEY, d DATE NULL, dt DATETIME NULL,"
                     " ts TIMESTAMP NULL DEFAULT NULL)")
    if tgt.kind == "postgresql":
        tgt.execute("CREATE TABLE t_zd (id integer PRIMARY KEY, d date, dt timestamp,"
                    " ts timestamptz)")
    else:
        tgt.execute("CREATE TABLE t_zd (id int PRIMARY KEY, d date NULL, dt datetime NULL,"
                    " ts timestamp NULL DEFAULT NULL)")
    return write_pipeline(tmp_path, mysql_db.url, tgt.url, {
        "zd": "INSERT INTO t_zd (id, d, dt, ts) SELECT z.id, z.d, z.dt, z.ts FROM zd AS z"},
        extra=extra)


@pytest.mark.parametrize("target_kind", ["postgresql", "mysql"])
def test_zero_dates_become_null_both_ways(tmp_path: Path, mysql_db: Any, make_pg_db: Any,
                                          make_mysql_db: Any, target_kind: str) -> None:
    tgt = make_pg_db() if target_kind == "postgresql" else make_mysql_db()
    cfg = _zero_date_pipeline(tmp_path, mysql_db, tgt)
    mysql_db.execute(ZERO_ROWS.format(1, 2))
    cdc("setup", "-c", str(cfg))
    cdc("snapshot", "-c", str(cfg))
    with PipelineThread(cfg) as p:
        mysql_db.execute(ZERO_ROWS.format(3, 4))
        p.wait_caught_up()
    rows = sorted(tgt.query("SELECT id, d, dt, ts FROM t_zd"))
    assert [r[:3] for r in rows] == [(1, None, None), (2, None, None), (3, None, None),
                                     (4, None, None)]
    # A zero TIMESTAMP is NULL too (the binlog stores it as 0, not as the epoch),
    # and a real one is kept.
    assert rows[0][3] is None and rows[2][3] is None
    assert rows[1][3] is not None and rows[1][3] == rows[3][3]
    dl = "cdc.dead_letters" if target_kind == "postgresql" else "cdc_dead_letters"
    assert tgt.query(f"SELECT count(*) FROM {dl}") == [(0,)]


@pytest.mark.parametrize("target_kind", ["postgresql", "mysql"])
def test_zero_dates_as_dead_letters(tmp_path: Path, mysql_db: Any, make_pg_db: Any,
                                    make_mysql_db: Any, target_kind: str) -> None:
    """types.zero_dates: dead_letter: rows with a zero date are set aside with
    the reason, through snapshot and stream; the good rows and a later repair arrive."""
    tgt = make_pg_db() if target_kind == "postgresql" else make_mysql_db()
    cfg = _zero_date_pipeline(tmp_path, mysql_db, tgt, extra="types:\n  zero_dates: dead_letter\n")
    good = "INSERT INTO zd VALUES ({0}, '2024-01-02', '2024-01-02 03:04:05', NULL)"
    mysql_db.execute(ZERO_ROWS.format(1, 2))
    mysql_db.execute(good.format(5))
    cdc("setup", "-c", str(cfg))
    cdc("snapshot", "-c", str(cfg))
    with PipelineThread(cfg) as p:
        mysql_db.execute(ZERO_ROWS.format(3, 4))
        mysql_db.execute(good.format(6))
        # The old image of this update holds the zero date: it must not hold back the repair.
        mysql_db.execute("UPDATE zd SET d = '2024-03-03', dt = NULL, ts = NULL WHERE id = 3")
        p.wait_caught_up()
    assert sorted(r[0] for r in tgt.query("SELECT id FROM t_zd")) == [3, 5, 6]
    dl = "cdc.dead_letters" if target_kind == "postgresql" else "cdc_dead_letters"
    letters = tgt.query(f"SELECT error FROM {dl} ORDER BY id")
    assert len(letters) == 4, letters  # 1, 2 (snapshot); 3, 4 (stream); none for the repair
    assert all("zero date" in e and "types.zero_dates" in e for (e,) in letters), letters
    assert any("'2024-00-15'" in e for (e,) in letters), letters  # the snapshot knows the text


def test_time_zones_on_non_utc_servers(tmp_path: Path) -> None:
    """TIMESTAMP/timestamptz are instants, DATETIME/timestamp wall-clock values,
    whatever zone either server runs in."""
    import tempfile

    import psycopg
    import pymysql

    from cdc.devservers import MariaDBServer, PostgresServer

    with tempfile.TemporaryDirectory(prefix="cdc-tz-") as d:
        base = Path(d)
        base.chmod(0o755)
        my = MariaDBServer(base, timezone="+05:00")
        pg = PostgresServer(base, timezone="Asia/Shanghai")
        my.start(die_with_parent=True)
        pg.start(die_with_parent=True)
        try:
            my.create_database("src")
            pg.create_database("tgt")
            my.execute("CREATE TABLE t (id INT PRIMARY KEY, ts TIMESTAMP NULL, dt DATETIME)",
                       dbname="src")
            with psycopg.connect(pg.url("tgt"), autocommit=True) as c:
                c.execute("CREATE TABLE t_t (id integer PRIMARY KEY, ts timestamptz,"
                          " dt timestamp)")
            cfg = write_pipeline(tmp_path, my.url("src"), pg.url("tgt"), {
                "t": "INSERT INTO t_t (id, ts, dt) SELECT x.id, x.ts, x.dt FROM t AS x"})

            def insert(i: int) -> None:
                conn = pymysql.connect(host=my.host, port=my.port, user="root",
                                       password=my.password, database="src", autocommit=True)
                with conn.cursor() as cur:  # the session runs in the server's +05:00
                    cur.execute(f"INSERT INTO t VALUES ({i}, '2024-01-01 12:00:00',"
                                " '2024-01-01 12:00:00')")
                conn.close()

            insert(1)
            cdc("setup", "-c", str(cfg))
            cdc("snapshot", "-c", str(cfg))
            with PipelineThread(cfg) as p:
                insert(2)
                p.wait_caught_up()
            with psycopg.connect(pg.url("tgt")) as c:
                rows = c.execute("SELECT id, ts, dt FROM t_t ORDER BY id").fetchall()
        finally:
            my.stop()
            pg.stop()
    instant = datetime(2024, 1, 1, 7, 0, tzinfo=UTC)  # 12:00 at +05:00
    assert [(r[0], r[1], r[2]) for r in rows] == [
        (1, instant, datetime(2024, 1, 1, 12, 0)), (2, instant, datetime(2024, 1, 1, 12, 0))]


def test_mysql_to_mysql_carries_every_value_as_is(tmp_path: Path, mysql_db: Any,
                                                 make_mysql_db: Any) -> None:
    """Same types on both sides: the target row must equal the source row exactly,
    through snapshot (row 1) and stream (row 2)."""
    tgt = make_mysql_db()
    ddl = ", ".join(f"`{n}` {t}" for n, t, _, _, _ in COLUMNS)
    mysql_db.execute(f"CREATE TABLE vals (id INT PRIMARY KEY, {ddl}) DEFAULT CHARSET=utf8mb4")
    tgt.execute(f"CREATE TABLE t_vals (id INT PRIMARY KEY, {ddl}) DEFAULT CHARSET=utf8mb4")
    cols = ", ".join(f"`{n}`" for n, *_ in COLUMNS)
    rule = (f"INSERT INTO t_vals (id, {cols}) SELECT v.id, "
            + ", ".join(f"v.`{n}`" for n, *_ in COLUMNS) + " FROM vals AS v")
    cfg = write_pipeline(tmp_path, mysql_db.url, tgt.url, {"vals": rule})
    literals = ", ".join(lit for *_, lit, _ in COLUMNS)
    mysql_db.execute(f"INSERT INTO vals VALUES (1, {literals})")
    cdc("setup", "-c", str(cfg))
    cdc("snapshot", "-c", str(cfg))
    with PipelineThread(cfg) as p:
        mysql_db.execute(f"INSERT INTO vals VALUES (2, {literals})")
        p.wait_caught_up()
    q = f"SELECT id, {cols} FROM {{}} ORDER BY id"  # one server, one session time zone
    source = mysql_db.query(q.format("vals"))
    target = tgt.query(q.format("t_vals"))
    assert tgt.query("SELECT error FROM cdc_dead_letters") == []
    assert target == source
    assert len(target) == 2 and target[0][1:] == target[1][1:]
