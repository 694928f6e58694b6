"""python-mysql-replication's own data-type tests, replayed through cdc.

Its ``tests/test_data_type.py`` (installed with the library) holds pairs of
``create_query`` / ``insert_query`` for every column type it decodes.  Each
pair is run here on MariaDB, streamed by cdc into PostgreSQL through an
identity rule (staging types from ``cdc.typemap``), and every target value is
compared with the source row read back by SELECT.  A check written by others:
we do not choose the values.
"""

from __future__ import annotations

import ast
import json
import re
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pymysqlreplication
import pytest
from pipeline_helpers import PipelineThread, cdc, write_pipeline

from cdc import catalog
from cdc.config import DatabaseUrl
from cdc.sources.mysql import connect
from cdc.typemap import UnsupportedType, staging_type

SUITE = Path(pymysqlreplication.__file__).parent / "tests" / "test_data_type.py"


def _cases() -> list[tuple[str, str, str]]:
    tree = ast.parse(SUITE.read_text())
    out = []
    for fn in ast.walk(tree):
        if not isinstance(fn, ast.FunctionDef) or not fn.name.startswith("test_"):
            continue
        found: dict[str, str] = {}
        for node in ast.walk(fn):
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(
                    node.targets[0], ast.Name) and node.targets[0].id in ("create_query",
                                                                         "insert_query"):
                try:
                    found[node.targets[0].id] = ast.literal_eval(node.value)
                except ValueError:
                    pass
        create, insert = found.get("create_query"), found.get("insert_query")
        # The partition tests check partition metadata, not values, and their
        # tables cannot take the primary key cdc needs without changing them.
        # test_null_bitmask builds its table in a loop (its literal query is only a
        # prefix), so its table is not reproducible from the text.
        if "partition" in fn.name or fn.name == "test_null_bitmask":
            continue
        if isinstance(create, str) and isinstance(insert, str) and "CREATE TABLE test" in create:
            out.append((fn.name, create, insert))
    return out


CASES = _cases()


def _norm(v: Any) -> Any:
    if isinstance(v, datetime) and v.tzinfo is not None:
        return v.astimezone(UTC).replace(tzinfo=None)
    if isinstance(v, bytes | memoryview):
        return bytes(v)
    if isinstance(v, float):
        return round(v, 5)
    if isinstance(v, Decimal):
        return v.normalize()
    return v


def _expected(v: Any, col: Any) -> Any:
    base = col.base_type
    if isinstance(v, str) and base in ("date", "datetime", "timestamp") and (
            v[:4] == "0000" or "-00" in v[:10]):
        return None  # zero dates arrive as NULL (docs/types.md)
    if base == "bit" and isinstance(v, bytes):
        n = int.from_bytes(v, "big")
        return Decimal(n) if n > 2**63 - 1 else n
    if base == "json" and isinstance(v, str | bytes):
        return json.loads(v)
    if base == "float" and isinstance(v, float):
        return round(float(f"{v:.6g}"), 5)  # real holds ~6 significant digits
    if isinstance(v, int) and base in ("decimal",):
        return Decimal(v)
    return _norm(v)


def test_the_suite_was_found() -> None:
    assert len(CASES) >= 40, f"only {len(CASES)} cases parsed from {SUITE}"


@pytest.mark.parametrize(("name", "create", "insert"), CASES, ids=[c[0] for c in CASES])
def test_replication_suite_value(name: str, create: str, insert: str, tmp_path: Path,
                                 mysql_db: Any, pg_db: Any) -> None:
    mysql_db.execute("SET SESSION sql_mode = ''")
    mysql_db.execute(create.rstrip(";"))
    url = DatabaseUrl.parse(mysql_db.url)
    conn = connect(url)
    before = catalog.mysql_table(conn, url.database, "test")
    conn.close()
    assert before is not None
    original = ", ".join(f"`{c.name}`" for c in before.columns)
    # The suite's positional INSERTs name the original columns once ours is added.
    insert = re.sub(r"(?i)INSERT\s+INTO\s+test\s*VALUES", f"INSERT INTO test ({original}) VALUES",
                    insert)
    mysql_db.execute("ALTER TABLE test ADD COLUMN cdc_pk INT AUTO_INCREMENT PRIMARY KEY")
    conn = connect(url)
    shape = catalog.mysql_table(conn, url.database, "test")
    conn.close()
    assert shape is not None
    cols = [c for c in shape.columns if c.name != "cdc_pk"]
    try:
        types = [staging_type(c, "mysql", "postgresql") for c in cols]
    except UnsupportedType as e:
        assert "cannot carry" in str(e)  # refused loudly (spatial types)
        return
    pg_db.execute("CREATE TABLE t_test (cdc_pk integer PRIMARY KEY, " + ", ".join(
        f'"{c.name}" {t}' for c, t in zip(cols, types, strict=True)) + ")")
    names = ", ".join(f"`{c.name}`" for c in cols)
    rule = f"INSERT INTO t_test (cdc_pk, {names}) SELECT s.cdc_pk, " + ", ".join(
        f"s.`{c.name}`" for c in cols) + " FROM test AS s"
    cfg = write_pipeline(tmp_path, mysql_db.url, pg_db.url, {"test": rule})
    cdc("setup", "-c", str(cfg))
    with PipelineThread(cfg) as p:
        mysql_db.execute(f"SET SESSION sql_mode = ''; SET SESSION time_zone = '+00:00'; {insert}")
        p.wait_caught_up()
    conn = connect(url)
    with conn.cursor() as cur:
        cur.execute(f"SELECT cdc_pk, {names} FROM test ORDER BY cdc_pk")
        source = list(cur.fetchall())
    conn.close()
    target = pg_db.query(f"SELECT cdc_pk, {', '.join(f'{chr(34)}{c.name}{chr(34)}' for c in cols)}"
                         " FROM t_test ORDER BY cdc_pk")
    assert len(target) == len(source), (source, target)
    for srow, trow in zip(source, target, strict=True):
        for col, sv, tv in zip(cols, srow[1:], trow[1:], strict=True):
            want, got = _expected(sv, col), _norm(tv)
            if col.base_type in ("time",) and want is not None:
                assert got == want, f"{name}.{col.name}: {got!r} != {want!r}"
            elif col.base_type == "set" and isinstance(want, str):
                assert got == want, f"{name}.{col.name}: {got!r} != {want!r}"
            else:
                assert got == want, f"{name}.{col.name} ({col.type}): {got!r} != {want!r}"


