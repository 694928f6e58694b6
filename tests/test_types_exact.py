"""Values that must arrive exactly (issue 13, item 5), through snapshot AND stream.

- MySQL ``BINARY(n)``: the binlog leaves out trailing zero bytes; the value
  is n bytes all the same (x'00000000' is four zero bytes, not empty).
- MySQL ``SET``: the empty set ``''`` is a value, not NULL; a set prints in
  its definition order, as MySQL prints it.
- JSON scalars of every kind (string, number, true, false, null) both ways;
  a JSON ``null`` stays a JSON null, distinct from SQL NULL (docs/types.md).

Each value is written once before `cdc snapshot` (ids below 100) and once
while `cdc run` streams (ids from 100: inserts, and updates of rows that held
something else), and every target row is read back and compared exactly.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from pipeline_helpers import PipelineThread, cdc, write_pipeline

from cdc.config import load

# --- MySQL/MariaDB source ----------------------------------------------------

# (b4 BINARY(4), st SET('a','b','c'), sr SET('z','y','x'), js JSON) literals and,
# for each, the exact value expected back: bytes, text, JSON text or None.
MY_ROWS = [
    ("x'00000000'", "''", "'x,z'", "'\"s\"'"),
    ("x'41000000'", "NULL", "'z'", "'1'"),
    ("x'00410000'", "'a,c'", "''", "'true'"),
    ("NULL", "'b'", "NULL", "'false'"),
    ("x'00000041'", "'c,a,b'", "'y,x'", "'null'"),
    ("x'ffffffff'", "''", "''", "NULL"),
    ("x'00000000'", "'a'", "'x'", "'2.5'"),
    ("x'00000000'", "''", "'z'", "'{\"k\": [\"v\", null, false]}'"),
    ("x'00000000'", "''", "'z'", "'\"with \\\\\"quote\\\\\" and \\\\\\\\ and 中文\"'"),
]
MY_EXPECTED = [
    (b"\0\0\0\0", "", "z,x", '"s"'),
    (b"A\0\0\0", None, "z", "1"),
    (b"\0A\0\0", "a,c", "", "true"),
    (None, "b", None, "false"),
    (b"\0\0\0A", "a,b,c", "y,x", "null"),
    (b"\xff\xff\xff\xff", "", "", None),
    (b"\0\0\0\0", "a", "x", "2.5"),
    (b"\0\0\0\0", "", "z", '{"k": ["v", null, false]}'),
    (b"\0\0\0\0", "", "z", '"with \\"quote\\" and \\\\ and 中文"'),
]
MY_SRC = ("CREATE TABLE ex (id INT PRIMARY KEY, b4 BINARY(4) NULL, st SET('a','b','c') NULL,"
          " sr SET('z','y','x') NULL, js JSON NULL) DEFAULT CHARSET=utf8mb4")
MY_TGT = {
    # bytea and text keep exactly what arrives: a short BINARY would show.
    "postgresql": "CREATE TABLE t_ex (id integer PRIMARY KEY, b4 bytea, st text, sr text,"
                  " js jsonb)",
    "mysql": "CREATE TABLE t_ex (id INT PRIMARY KEY, b4 VARBINARY(8) NULL, st VARCHAR(20) NULL,"
             " sr VARCHAR(20) NULL, js JSON NULL) DEFAULT CHARSET=utf8mb4",
}
MY_RULE = "INSERT INTO t_ex (id, b4, st, sr, js) SELECT e.id, e.b4, e.st, e.sr, e.js FROM ex AS e"


def _canon(text: str | None) -> str | None:
    """JSON text in one spelling (PostgreSQL's jsonb and MySQL print differently);
    true stays distinct from 1."""
    return None if text is None else json.dumps(json.loads(text), sort_keys=True,
                                                 ensure_ascii=False)


def _my_read(tgt: Any) -> dict[int, tuple[Any, ...]]:
    if tgt.kind == "postgresql":
        q = "SELECT id, b4, st, sr, js::text FROM t_ex"
    else:
        q = "SELECT id, b4, st, sr, CAST(js AS CHAR) FROM t_ex"
    out = {}
    for i, b4, st, sr, js in tgt.query(q):
        out[i] = (None if b4 is None else bytes(b4), st, sr, _canon(js))
    return out


def _my_values(row: tuple[str, ...]) -> str:
    return ", ".join(row)


@pytest.mark.parametrize("target_kind", ["postgresql", "mysql"])
def test_mysql_values_exact_through_snapshot_and_stream(
        tmp_path: Path, mysql_db: Any, make_pg_db: Any, make_mysql_db: Any,
        target_kind: str) -> None:
    tgt = make_pg_db() if target_kind == "postgresql" else make_mysql_db()
    mysql_db.execute(MY_SRC)
    tgt.execute(MY_TGT[target_kind])
    cfg = write_pipeline(tmp_path, mysql_db.url, tgt.url, {"ex": MY_RULE})
    n = len(MY_ROWS)
    for i, row in enumerate(MY_ROWS):
        mysql_db.execute(f"INSERT INTO ex VALUES ({i}, {_my_values(row)})")
    # Rows the stream will update into each value (the old image differs).
    for i in range(n):
        mysql_db.execute(f"INSERT INTO ex VALUES ({200 + i}, x'01', 'b', 'y', '[0]')")
    cdc("setup", "-c", str(cfg))
    cdc("snapshot", "-c", str(cfg))
    with PipelineThread(cfg) as p:
        for i, row in enumerate(MY_ROWS):
            mysql_db.execute(f"INSERT INTO ex VALUES ({100 + i}, {_my_values(row)})")
        # Several rows in one event too (the decoder's per-event state).
        mysql_db.execute("INSERT INTO ex VALUES " + ", ".join(
            f"({300 + i}, {_my_values(row)})" for i, row in enumerate(MY_ROWS)))
        for i, (b4, st, sr, js) in enumerate(MY_ROWS):
            mysql_db.execute(f"UPDATE ex SET b4 = {b4}, st = {st}, sr = {sr}, js = {js}"
                             f" WHERE id = {200 + i}")
        p.wait_caught_up()
    got = _my_read(tgt)
    want = [(b, st, sr, _canon(js)) for b, st, sr, js in MY_EXPECTED]
    for base in (0, 100, 200, 300):
        assert [got.get(base + i) for i in range(n)] == want, (base, [got.get(base + i) for i in range(n)])
    assert len(got) == 4 * n
    dl = "cdc.dead_letters" if target_kind == "postgresql" else "cdc_dead_letters"
    assert tgt.query(f"SELECT count(*) FROM {dl}") == [(0,)]
    # Source and target agree for every row, read the same way.
    src = {i: (None if b is None else bytes(b), st, sr, _canon(js)) for i, b, st, sr, js in
           mysql_db.query("SELECT id, b4, st, sr, CAST(js AS CHAR) FROM ex")}
    assert src == got


# --- PostgreSQL source -----------------------------------------------------------

PG_JSON = ['"s"', "1", "-2.5e-3", "true", "false", "null", None, '{"a": [1, null, "x"]}',
           '"with \\"quote\\", tab\\t and \\\\ and 中文"', "[]", '""']


def _pg_lit(v: str | None) -> str:
    return "NULL" if v is None else "'" + v.replace("'", "''") + "'"


@pytest.mark.parametrize("target_kind", ["mysql", "postgresql"])
@pytest.mark.parametrize("shape", ["text", "values"])
def test_pg_json_scalars_exact_through_snapshot_and_stream(
        tmp_path: Path, make_pg_db: Any, make_mysql_db: Any, target_kind: str,
        shape: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """json and jsonb scalars into MariaDB's JSON (and PostgreSQL's), on both
    stream paths: a table of COPY-text types only ("text") and one with a
    boolean, which takes the value path ("values")."""
    from cdc.targets import mysql as mysql_target

    as_text: list[bytes] = []
    to_values = mysql_target.copy_to_values
    monkeypatch.setattr(mysql_target, "copy_to_values",
                        lambda data, seq: (as_text.append(data), to_values(data, seq))[1])
    src = make_pg_db()
    tgt = make_pg_db() if target_kind == "postgresql" else make_mysql_db()
    extra_src = ", b boolean" if shape == "values" else ""
    src.execute(f"CREATE TABLE pj (id integer PRIMARY KEY, j json, jb jsonb{extra_src})")
    if target_kind == "mysql":
        tgt.execute("CREATE TABLE t_pj (id INT PRIMARY KEY, j JSON NULL, jb JSON NULL)"
                    " DEFAULT CHARSET=utf8mb4")
        read = "SELECT id, CAST(j AS CHAR), CAST(jb AS CHAR) FROM t_pj"
    else:
        tgt.execute("CREATE TABLE t_pj (id integer PRIMARY KEY, j json, jb jsonb)")
        read = "SELECT id, j::text, jb::text FROM t_pj"
    cfg = write_pipeline(tmp_path, src.url, tgt.url, {
        "pj": "INSERT INTO t_pj (id, j, jb) SELECT p.id, p.j, p.jb FROM pj AS p"},
        name=f"pj_{src.name}")
    n = len(PG_JSON)

    def insert(conn: Any, base: int) -> None:
        for i, v in enumerate(PG_JSON):
            b = ", true" if shape == "values" else ""
            conn.execute(f"INSERT INTO pj VALUES ({base + i}, {_pg_lit(v)}, {_pg_lit(v)}{b})")

    with src.connect() as c:
        insert(c, 0)
        for i in range(n):
            b = ", false" if shape == "values" else ""
            c.execute(f"INSERT INTO pj VALUES ({200 + i}, '[0]', '[0]'{b})")
    try:
        cdc("setup", "-c", str(cfg))
        cdc("snapshot", "-c", str(cfg))
        with PipelineThread(cfg) as p:
            with src.connect() as c, c.transaction():
                insert(c, 100)
                for i, v in enumerate(PG_JSON):
                    c.execute(f"UPDATE pj SET j = {_pg_lit(v)}, jb = {_pg_lit(v)}"
                              f" WHERE id = {200 + i}")
            p.wait_caught_up()
            time.sleep(0.5)  # the test server commits asynchronously
            p.wait_caught_up()
        got = {i: (_canon(j), _canon(jb)) for i, j, jb in tgt.query(read)}
        want = [(_canon(v), _canon(v)) for v in PG_JSON]
        for base in (0, 100, 200):
            assert [got.get(base + i) for i in range(n)] == want, (base, [got.get(base + i) for i in range(n)])
        dl = "cdc.dead_letters" if target_kind == "postgresql" else "cdc_dead_letters"
        assert tgt.query(f"SELECT count(*) FROM {dl}") == [(0,)]
        # JSON null is a value; SQL NULL is none.
        null_at = PG_JSON.index("null")
        sql_null_at = PG_JSON.index(None)
        assert got[null_at] == ("null", "null") and got[sql_null_at] == (None, None)
        if target_kind == "mysql":
            assert bool(as_text) == (shape == "text"), "the stream path this case is about"
    finally:
        from cdc.sources.postgres import PostgresSource

        c = load(cfg)
        PostgresSource(c.source.libpq(), slot=c.slot, publication=c.publication,
                       tables=["pj"]).teardown()


# --- the decoder fixes, value by value (no server: MySQL 8's binary JSON) ------

def test_decoded_values_are_fixed_as_a_select_gives_them() -> None:
    from pymysqlreplication.column import Column
    from pymysqlreplication.constants import FIELD_TYPE, NONE_SOURCE

    from cdc.sources.mysql import fix_values, json_text, value_fixes

    cols = [Column(type=FIELD_TYPE.STRING, name="b", max_length=4, character_set_name="binary"),
            Column(type=FIELD_TYPE.STRING, name="c", max_length=12, character_set_name="utf8"),
            Column(type=FIELD_TYPE.SET, name="s", set_values=["z", "y", "x"]),
            Column(type=FIELD_TYPE.JSON, name="j"),
            Column(type=FIELD_TYPE.LONG, name="i")]
    fixes = value_fixes(cols)
    assert [f[0] for f in fixes] == ["b", "s", "j"]  # CHAR and INT are left alone
    rows = [
        {"values": {"b": "", "c": "", "s": None, "j": b"s", "i": 1},
         "none_sources": {"s": NONE_SOURCE.EMPTY_SET}},
        {"before_values": {"b": b"A", "c": "x", "s": None, "j": None, "i": 2},
         "before_none_sources": {"s": NONE_SOURCE.NULL, "j": NONE_SOURCE.NULL},
         "after_values": {"b": None, "c": "x", "s": {"x", "z"}, "j": True, "i": 2},
         "after_none_sources": {"b": NONE_SOURCE.NULL}},
    ]
    fix_values(fixes, rows)
    assert rows[0]["values"] == {"b": b"\0\0\0\0", "c": "", "s": "", "j": '"s"', "i": 1}
    assert rows[1]["before_values"] == {"b": b"A\0\0\0", "c": "x", "s": None, "j": None, "i": 2}
    assert rows[1]["after_values"] == {"b": None, "c": "x", "s": "z,x", "j": "true", "i": 2}
    from decimal import Decimal

    assert json_text({b"k": [1, 2.5, None, False, Decimal("1.10"), b"\xe4\xb8\xad"]}) == \
        '{"k": [1, 2.5, null, false, 1.10, "中"]}'
    assert [json_text(v) for v in (0, -3, 1e300, "", b'"')] == ["0", "-3", "1e+300", '""',
                                                                 '"\\""']
