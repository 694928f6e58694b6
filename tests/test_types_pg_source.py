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


def test_plain_types_into_mysql_as_text_match_the_values(
        tmp_path: Path, make_pg_db: Any, make_mysql_db: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Tables made only of cdc.typemap.PG_TEXT_FOR_MYSQL types stream into MySQL
    as the walsender's text; the snapshot reads the same rows as values.  Both
    must leave identical target rows, and a value the column rejects must be
    the same dead letter."""
    from cdc.targets import mysql as mysql_target

    as_text: list[bytes] = []
    to_values = mysql_target.copy_to_values
    monkeypatch.setattr(mysql_target, "copy_to_values",
                        lambda data, seq: (as_text.append(data), to_values(data, seq))[1])
    src, tgt = make_pg_db(), make_mysql_db()
    src.execute("""CREATE TABLE plain (id integer PRIMARY KEY, s smallint, b bigint, o oid,
      t text, vc varchar(20), ch char(5), dt date, ts timestamp(6), ts0 timestamp(0),
      np numeric(14,4), n numeric, u uuid)""")
    tgt.execute("""CREATE TABLE t_plain (id int PRIMARY KEY, s smallint, b bigint, o bigint,
      t text, vc varchar(20), ch char(5), dt date, ts datetime(6), ts0 datetime,
      np decimal(14,4), n varchar(1000), u char(36)) DEFAULT CHARSET=utf8mb4""")
    cols = "s, b, o, t, vc, ch, dt, ts, ts0, np, n, u"
    rule = (f"INSERT INTO t_plain (id, {cols}) SELECT p.id, "
            + ", ".join(f"p.{c.strip()}" for c in cols.split(",")) + " FROM plain AS p")
    rows = [
        "-32768, 9223372036854775807, 4294967295, E'it''s \\\\ \"q\" \\t\\n', 'x''y', 'ab',"
        " '2024-02-29', '2024-02-29 23:59:59.000001', '1999-12-31 23:59:59', -12.5,"
        " 1234.500000000000000001, 'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11'",
        "0, -1, 0, '中文 😀', '', '', '0001-01-01', '2000-01-01 00:00:00', '2000-01-01',"
        " 0.0001, 'NaN', NULL",
        "NULL, NULL, NULL, '\\N', NULL, NULL, NULL, NULL, NULL, NULL, -0.000, NULL",
    ]
    cfg = write_pipeline(tmp_path, src.url, tgt.url, {"plain": rule}, name=f"pl_{src.name}",
                         extra="dead_letters:\n  retry_seconds: 3600\n")
    for i, r in enumerate(rows, start=1):
        src.execute(f"INSERT INTO plain (id, {cols}) VALUES ({i}, {r})")
    try:
        cdc("setup", "-c", str(cfg))
        cdc("snapshot", "-c", str(cfg))
        with PipelineThread(cfg) as p:
            with src.connect() as c, c.transaction():
                for i, r in enumerate(rows, start=101):
                    c.execute(f"INSERT INTO plain (id, {cols}) VALUES ({i}, {r})")
                # np holds at most 10 integer digits: MySQL rejects NaN and this alike.
                c.execute("UPDATE plain SET np = 'NaN' WHERE id = 102")
            p.wait_caught_up()
            time.sleep(0.5)
            p.wait_caught_up()
        got = tgt.query("SELECT * FROM t_plain ORDER BY id")
        assert [r[0] for r in got] == [1, 2, 3, 101, 102, 103]
        assert [r[1:] for r in got[:3]] == [r[1:] for r in got[3:]], \
            "snapshot (values) and stream (text) must agree"
        assert got[0][4] == "it's \\ \"q\" \t\n" and got[2][4] == "\\N" and got[2][11] == "0.000"
        letters = tgt.query("SELECT error FROM cdc_dead_letters")
        assert len(letters) == 1 and "np" in letters[0][0], letters
        assert sum(d.count(b"\n") for d in as_text) >= 3, "the stream must have sent text"
    finally:
        from cdc.sources.postgres import PostgresSource

        c = load(cfg)
        PostgresSource(c.source.libpq(), slot=c.slot, publication=c.publication,
                       tables=["plain"]).teardown()
