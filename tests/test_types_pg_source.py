"""Golden values with a PostgreSQL source, to PostgreSQL and to MySQL, through
snapshot and stream (same values twice: row 1 snapshotted, row 2 streamed)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from pipeline_helpers import PipelineThread, cdc, write_pipeline

from cdc.config import load

SRC_DDL = """CREATE TYPE mood AS ENUM ('sad', 'happy');
CREATE TABLE vals (id integer PRIMARY KEY, n numeric, np numeric(12,4), r real, d double precision,
  b boolean, t text, vc varchar(10), by bytea, dt date, ts timestamp(6), tz timestamptz,
  tm time, iv interval, u uuid, j json, jb jsonb, arr integer[], ip inet, m mood,
  ci cidr, ch char(3), ttz timetz, bt bit(8))"""
LITERALS = ("'NaN', 1234.5678, 1.5, 'Infinity', true, '中文 😀', 'x', '\\x00ff', '2024-02-29',"
            " '2024-02-29 23:59:59.999999', '2024-01-01 12:00:00+05', '23:59:59', '-1 day 02:03:04',"
            " 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{\"a\": 1}', '{\"b\": [1, 2]}', '{1,2,3}',"
            " '10.0.0.1/32', 'happy', '10.1.0.0/16', 'ab', '12:34:56+05', B'10100101'")
COLS = "n, np, r, d, b, t, vc, by, dt, ts, tz, tm, iv, u, j, jb, arr, ip, m, ci, ch, ttz, bt"

TGT = {
    "postgresql": """CREATE TABLE t_vals (id integer PRIMARY KEY, n numeric, np numeric(12,4),
      r real, d double precision, b boolean, t text, vc varchar(10), by bytea, dt date,
      ts timestamp(6), tz timestamptz, tm time, iv interval, u uuid, j json, jb jsonb,
      arr integer[], ip inet, m text, ci cidr, ch char(3), ttz timetz, bt bit(8))""",
    # What MySQL can hold: the non-finite numbers go to a separate test.
    "mysql": """CREATE TABLE t_vals (id int PRIMARY KEY, n varchar(100), np decimal(12,4),
      r float, d double, b tinyint(1), t text, vc varchar(10), `by` blob, dt date,
      ts datetime(6), tz timestamp NULL, tm time(6), iv varchar(64), u char(36), j json,
      jb json, arr json, ip varchar(64), m varchar(10), ci varchar(64),
      ch char(3), ttz varchar(32), bt varchar(8)) DEFAULT CHARSET=utf8mb4""",
}


@pytest.mark.parametrize("target_kind", ["postgresql", "mysql"])
def test_pg_source_values(tmp_path: Path, make_pg_db: Any, make_mysql_db: Any,
                          target_kind: str) -> None:
    src = make_pg_db()
    tgt = make_pg_db() if target_kind == "postgresql" else make_mysql_db()
    src.execute(SRC_DDL)
    tgt.execute(TGT[target_kind])
    cols = COLS.replace("by,", "`by`,") if target_kind == "mysql" else COLS
    rule = f"INSERT INTO t_vals (id, {COLS.replace('by,', 'by,')}) SELECT v.id, " + ", ".join(
        f"v.{c.strip()}" for c in COLS.split(",")) + " FROM vals AS v"
    if target_kind == "mysql":
        src.execute("UPDATE vals SET d = 0 WHERE false")  # (table exists before setup)
        lits = LITERALS.replace("'Infinity'", "2.5")
    else:
        lits = LITERALS
    _ = cols
    cfg = write_pipeline(tmp_path, src.url, tgt.url, {"vals": rule}, name=f"ty_{src.name}")
    src.execute(f"INSERT INTO vals (id, {COLS}) VALUES (1, {lits})")
    try:
        cdc("setup", "-c", str(cfg))
        cdc("snapshot", "-c", str(cfg))
        with PipelineThread(cfg) as p:
            src.execute(f"INSERT INTO vals (id, {COLS}) VALUES (2, {lits})")
            p.wait_caught_up()
            time.sleep(0.5)  # the test server commits asynchronously (WAL flushed later)
            p.wait_caught_up()
        q = "SELECT * FROM t_vals ORDER BY id"
        rows = tgt.query(q)
        dls = tgt.query("SELECT error FROM cdc_dead_letters") if target_kind == "mysql" else []
        assert [r[0] for r in rows] == [1, 2], dls
        # (NaN != NaN, so compare the printed forms.)
        assert [repr(v) for v in rows[0][1:]] == [repr(v) for v in rows[1][1:]], \
            "snapshot and stream must agree"
        got = dict(zip(["id", *[c.strip() for c in COLS.split(",")]], rows[0], strict=True))
        if target_kind == "postgresql":
            assert str(got["n"]) == "NaN" and got["d"] == float("inf")
            assert got["by"] == b"\x00\xff" and got["arr"] == [1, 2, 3]
            assert got["tz"].isoformat() == "2024-01-01T07:00:00+00:00"
            assert got["m"] == "happy" and str(got["iv"]) == "-1 day, 2:03:04"
            assert str(got["ci"]) == "10.1.0.0/16" and str(got["ttz"]) == "12:34:56+05:00"
            assert got["ch"] == "ab " and got["bt"] == "10100101"
        else:
            assert got["n"] == "NaN" and float(got["d"]) == 2.5
            assert bytes(got["by"]) == b"\x00\xff" and got["b"] == 1
            assert str(got["tz"]) == "2024-01-01 07:00:00"
            assert got["u"] == "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11" and got["m"] == "happy"
            assert got["ci"] == "10.1.0.0/16" and got["ttz"] == "12:34:56+05:00"
            assert got["ch"] in ("ab", "ab ")  # MySQL CHAR strips trailing spaces on read
            assert got["bt"] == "10100101"
        assert got["t"] == "中文 😀"
    finally:
        from cdc.sources.postgres import PostgresSource

        c = load(cfg)
        PostgresSource(c.source.libpq(), slot=c.slot, publication=c.publication,
                       tables=["vals"]).teardown()


def test_infinity_into_mysql_is_a_dead_letter(tmp_path: Path, make_pg_db: Any,
                                              make_mysql_db: Any) -> None:
    src, tgt = make_pg_db(), make_mysql_db()
    src.execute("CREATE TABLE f (id integer PRIMARY KEY, d double precision)")
    tgt.execute("CREATE TABLE t_f (id int PRIMARY KEY, d double)")
    cfg = write_pipeline(tmp_path, src.url, tgt.url, {
        "f": "INSERT INTO t_f (id, d) SELECT x.id, x.d FROM f AS x"}, name=f"inf_{src.name}")
    try:
        cdc("setup", "-c", str(cfg))
        with PipelineThread(cfg) as p:
            src.execute("INSERT INTO f VALUES (1, 1.5), (2, 'Infinity'), (3, 'NaN'), (4, -2)")
            p.wait_caught_up()
            time.sleep(0.5)
            p.wait_caught_up()
        assert tgt.query("SELECT id, d FROM t_f ORDER BY id") == [(1, 1.5), (4, -2.0)]
        assert tgt.query("SELECT COUNT(*) FROM cdc_dead_letters") == [(2,)]
    finally:
        from cdc.sources.postgres import PostgresSource

        c = load(cfg)
        PostgresSource(c.source.libpq(), slot=c.slot, publication=c.publication,
                       tables=["f"]).teardown()
