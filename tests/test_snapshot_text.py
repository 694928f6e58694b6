"""The snapshot's source-rendered COPY text (cdc/sources/copytext.py) stages
exactly what the value path and the stream stage, on values chosen to break
text formats: tabs, newlines, backslashes, a literal \\N, emoji, latin1,
unsigned maxima, DECIMAL(65,30), zero dates, TIMESTAMP in UTC."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline_helpers import PipelineThread, cdc, write_pipeline

from cdc.catalog import Column
from cdc.sources import copytext

# name, MySQL type, PostgreSQL type, SQL literals (several rows per column)
COLUMNS = [
    ("ti", "TINYINT", "smallint", ["-128", "127", "0"]),
    ("tiu", "TINYINT UNSIGNED", "smallint", ["255", "0", "1"]),
    ("iu", "INT UNSIGNED", "bigint", ["4294967295", "0", "7"]),
    ("bi", "BIGINT", "bigint", ["-9223372036854775808", "9223372036854775807", "0"]),
    ("biu", "BIGINT UNSIGNED", "numeric(20,0)", ["18446744073709551615", "0", "42"]),
    ("dec", "DECIMAL(65,30)", "numeric(65,30)",
     ["'12345678901234567890123456789012345.123456789012345678901234567890'", "-0.5", "0"]),
    ("yr", "YEAR", "smallint", ["2155", "1901", "NULL"]),
    ("d", "DATE NULL", "date", ["'9999-12-31'", "'0000-00-00'", "'2024-00-15'"]),
    ("dt", "DATETIME(6) NULL", "timestamp(6)",
     ["'2024-02-29 23:59:59.999999'", "'0000-00-00 00:00:00'", "'1000-01-01 00:00:00'"]),
    ("ts", "TIMESTAMP(3) NULL", "timestamptz(3)",
     ["'2038-01-19 03:14:07.499'", "NULL", "'1970-01-01 00:00:01'"]),
    ("c", "CHAR(5)", "text", ["'ab'", "''", "NULL"]),
    ("txt", "TEXT", "text",
     ["'tab\\there\\nnew line\\r\\\\back'", "'\\\\N'", "'王小明 😀'"]),
    ("v", "VARCHAR(20) CHARACTER SET latin1", "text", ["'Müller café'", "'\\\\'", "''"]),
    ("en", "ENUM('small','large','x y')", "text", ["'large'", "'x y'", "NULL"]),
]


def _table_sql() -> str:
    return ("CREATE TABLE tv (id INT PRIMARY KEY, "
            + ", ".join(f"`{n}` {t}" for n, t, _, _ in COLUMNS) + ") DEFAULT CHARSET=utf8mb4")


def _rows(offset: int) -> str:
    k = len(COLUMNS[0][3])
    return ", ".join(
        "(" + ", ".join([str(offset + i)] + [lits[i] for _, _, _, lits in COLUMNS]) + ")"
        for i in range(k))


def test_mysql_line_covers_only_types_both_servers_print_alike() -> None:
    ok = [Column("a", "int(11)", True, "int"), Column("b", "varchar(5)", True, "varchar"),
          Column("c", "datetime(6)", True, "datetime")]
    line = copytext.mysql_line(ok)
    assert line is not None and "`a`" in line and "`c`" in line
    for base in ("float", "double", "bit", "blob", "json", "set", "time", "varbinary"):
        assert copytext.mysql_line([*ok, Column("x", base, True, base)]) is None, base


def test_postgres_line_needs_the_source_type_or_text() -> None:
    cols = [Column("a", "integer", True, "int4"), Column("e", "mood", True, "mood", 16500)]
    assert copytext.postgres_line(cols, ["integer", "text"]) is not None
    assert copytext.postgres_line(cols, ["bigint", "text"]) is None


def test_source_text_equals_values_and_stream(tmp_path: Path, mysql_db: Any,
                                              pg_db: Any) -> None:
    mysql_db.execute("SET SESSION sql_mode = ''; " + _table_sql())
    pg_db.execute("CREATE TABLE t_tv (id integer PRIMARY KEY, "
                  + ", ".join(f'"{n}" {t}' for n, _, t, _ in COLUMNS) + ")")
    names = [n for n, *_ in COLUMNS]
    rule = (f"INSERT INTO t_tv (id, {', '.join(names)}) "
            f"SELECT v.id, {', '.join('v.' + n for n in names)} FROM tv AS v")
    insert = "SET SESSION sql_mode = ''; INSERT INTO tv VALUES "
    mysql_db.execute(insert + _rows(1))
    select = "SELECT " + ", ".join(f'"{n}"' for n in names) + " FROM t_tv WHERE id = %s"
    k = len(COLUMNS[0][3])

    cfg = write_pipeline(tmp_path, mysql_db.url, pg_db.url, {"tv": rule})
    cdc("setup", "-c", str(cfg))
    first_run = cdc("snapshot", "-c", str(cfg))
    out = first_run.stdout + first_run.stderr
    text_rows = [pg_db.query(select, (i,)) for i in range(1, k + 1)]

    pg_db.execute("DELETE FROM t_tv")
    cfg = write_pipeline(tmp_path, mysql_db.url, pg_db.url, {"tv": rule},
                         extra="snapshot:\n  source_text: false\n")
    p = cdc("snapshot", "-c", str(cfg), "--force")
    value_rows = [pg_db.query(select, (i,)) for i in range(1, k + 1)]

    with PipelineThread(cfg) as pipe:
        mysql_db.execute(insert + _rows(101))
        pipe.wait_caught_up()
    stream_rows = [pg_db.query(select, (100 + i,)) for i in range(1, k + 1)]

    assert "source text" in out, out
    assert "value by value" not in out, out  # the text itself was staged, no fallback
    assert "values" in p.stdout + p.stderr
    assert all(len(r) == 1 for r in text_rows + value_rows + stream_rows)
    for i in range(k):
        for name, a, b, c in zip(names, text_rows[i][0], value_rows[i][0], stream_rows[i][0],
                                 strict=True):
            assert a == b == c, f"row {i + 1} column {name}: text {a!r}, values {b!r}, " \
                                f"stream {c!r}"
    first = dict(zip(names, text_rows[0][0], strict=True))
    assert first["txt"] == "tab\there\nnew line\r\\back"
    assert first["v"] == "Müller café"
    assert dict(zip(names, text_rows[1][0], strict=True))["txt"] == "\\N"
    second = dict(zip(names, text_rows[1][0], strict=True))
    assert second["d"] is None and second["dt"] is None and second["ts"] is None
    assert pg_db.query("SELECT count(*) FROM cdc.dead_letters") == [(0,)]


def test_a_bad_row_in_a_text_chunk_becomes_a_dead_letter(tmp_path: Path, mysql_db: Any,
                                                          pg_db: Any) -> None:
    """The target refuses one row: its chunk is re-read as values, that row
    alone is set aside, and the rest of the table arrives."""
    mysql_db.execute("CREATE TABLE items (id INT PRIMARY KEY, qty INT NOT NULL)")
    mysql_db.execute("INSERT INTO items SELECT seq, seq FROM seq_1_to_250")
    mysql_db.execute("UPDATE items SET qty = -1 WHERE id = 137")
    pg_db.execute("CREATE TABLE t_items (id integer PRIMARY KEY, qty integer CHECK (qty >= 0))")
    cfg = write_pipeline(tmp_path, mysql_db.url, pg_db.url, {
        "items": "INSERT INTO t_items (id, qty) SELECT i.id, i.qty FROM items AS i"})
    cdc("setup", "-c", str(cfg))
    p = cdc("snapshot", "-c", str(cfg), "--chunk-rows", "100")
    assert "source text" in p.stdout + p.stderr
    assert pg_db.query("SELECT count(*), sum(qty) FROM t_items") == [
        (249, sum(range(1, 251)) - 137)]
    assert pg_db.query("SELECT source_table, row_data->'after'->>'id' FROM cdc.dead_letters"
                       ) == [("items", "137")]


def _snapshot_docs(tmp_path: Path, mysql_db: Any, pg_db: Any, chunk_rows: int) -> str:
    """Copy the source table ``docs`` (id, body) as it is; check every body
    arrived byte for byte; return the snapshot's output."""
    pg_db.execute("CREATE TABLE t_docs (id integer PRIMARY KEY, body text NOT NULL)")
    cfg = write_pipeline(tmp_path, mysql_db.url, pg_db.url, {
        "docs": "INSERT INTO t_docs (id, body) SELECT d.id, d.body FROM docs AS d"})
    cdc("setup", "-c", str(cfg))
    p = cdc("snapshot", "-c", str(cfg), "--chunk-rows", str(chunk_rows))
    want = mysql_db.query("SELECT id, MD5(body), CHAR_LENGTH(body) FROM docs ORDER BY id")
    got = pg_db.query("SELECT id, md5(body), char_length(body) FROM t_docs ORDER BY id")
    assert got == [tuple(r) for r in want]
    return p.stdout + p.stderr


def test_a_chunk_larger_than_the_source_hands_over_is_read_row_by_row(
        tmp_path: Path, mysql_db: Any, pg_db: Any) -> None:
    """3,500 rows of 8 KB make a 24 MB chunk, over MariaDB's 16 MB
    max_allowed_packet: the server cuts the aggregated value, cdc notices and
    reads that range a line at a time; every byte arrives."""
    mysql_db.execute("CREATE TABLE docs (id INT PRIMARY KEY, body TEXT NOT NULL)")
    mysql_db.execute("INSERT INTO docs SELECT seq, RPAD(CONCAT(seq, '\\t\\n\\\\ é '), 8000, 'x')"
                     " FROM seq_1_to_3500")
    out = _snapshot_docs(tmp_path, mysql_db, pg_db, 3000)
    assert "source text" in out and "read row by row" in out, out[-3000:]
    assert "value by value" not in out, out[-3000:]
    assert pg_db.query("SELECT count(*) FROM t_docs") == [(3500,)]
    sample = pg_db.query("SELECT body FROM t_docs WHERE id = 77")[0][0]
    assert sample.startswith("77\t\n\\ é ") and len(sample) == 8000


def test_long_strings_take_the_value_path(tmp_path: Path, mysql_db: Any, pg_db: Any) -> None:
    """MariaDB's REPLACE is quadratic in the matches of a lengthening
    replacement; a 6 MB text full of tabs would take minutes to escape.  Rows
    with strings over copytext.LONG_STRING travel as values."""
    mysql_db.execute("CREATE TABLE docs (id INT PRIMARY KEY, body LONGTEXT NOT NULL)")
    for i in range(1, 5):
        mysql_db.execute(f"INSERT INTO docs VALUES ({i}, REPEAT(CONCAT('{i}\\t', 'é'), 1400000))")
    mysql_db.execute("INSERT INTO docs SELECT seq, CONCAT('short ', seq) FROM seq_5_to_30")
    out = _snapshot_docs(tmp_path, mysql_db, pg_db, 3)
    assert "source text" in out and "value by value" in out, out[-3000:]
    assert pg_db.query("SELECT count(*) FROM t_docs") == [(30,)]
