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
