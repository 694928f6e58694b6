"""Bad input: one clear line naming the cause, a non-zero exit, nothing written."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline_helpers import cdc, write_pipeline

SRC = "CREATE TABLE items (id INT PRIMARY KEY, name VARCHAR(50) NOT NULL, qty INT NOT NULL)"
TGT = "CREATE TABLE t_items (id integer PRIMARY KEY, name text NOT NULL)"
GOOD = "INSERT INTO t_items (id, name) SELECT i.id, i.name FROM items AS i"


def one_error_line(p: Any) -> str:
    assert p.returncode != 0
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert "Traceback" not in p.stderr, p.stderr
    errors = [ln for ln in lines if "error" in ln.lower() or "problem" in ln.lower()]
    assert errors, p.stderr
    return p.stderr


def nothing_written(pg_db: Any) -> None:
    assert pg_db.query("SELECT count(*) FROM pg_namespace WHERE nspname = 'cdc'") == [(0,)]


def setup_fails(tmp_path: Path, mysql_db: Any, pg_db: Any, rule: str) -> str:
    cfg = write_pipeline(tmp_path, mysql_db.url, pg_db.url, {"items": rule})
    p = cdc("setup", "-c", str(cfg), check=False)
    out = one_error_line(p)
    nothing_written(pg_db)
    c = cdc("check", "-c", str(cfg), check=False)
    assert c.returncode == 2, c.stderr
    return out + c.stderr


def test_malformed_rule(tmp_path: Path, mysql_db: Any, pg_db: Any) -> None:
    mysql_db.execute(SRC)
    pg_db.execute(TGT)
    out = setup_fails(tmp_path, mysql_db, pg_db, "INSERT INTO t_items (id, name)\nSELEC i.id FROM")
    assert "items.sql:2: syntax error" in out


def test_missing_column_and_table(tmp_path: Path, mysql_db: Any, pg_db: Any) -> None:
    mysql_db.execute(SRC)
    pg_db.execute(TGT)
    out = setup_fails(tmp_path, mysql_db, pg_db,
                      "INSERT INTO t_items (id, name)\nSELECT i.id, i.nam FROM items AS i")
    assert "items.sql:2: source table 'items' has no column 'nam' (did you mean 'name'?)" in out
    out = setup_fails(tmp_path, mysql_db, pg_db,
                      "INSERT INTO t_itemz (id, name)\nSELECT i.id, i.name FROM items AS i")
    assert "target table 't_itemz' does not exist in the target database" in out


def test_two_source_tables(tmp_path: Path, mysql_db: Any, pg_db: Any) -> None:
    mysql_db.execute(SRC)
    mysql_db.execute("CREATE TABLE other (id INT PRIMARY KEY, x INT)")
    pg_db.execute(TGT)
    out = setup_fails(tmp_path, mysql_db, pg_db, "INSERT INTO t_items (id, name)\n"
                      "SELECT i.id, i.name FROM items AS i\nJOIN other AS o ON o.id = i.id")
    assert "items.sql:3: the rule joins 'other', a second source table" in out


def test_type_error_surfaces_at_check(tmp_path: Path, mysql_db: Any, pg_db: Any) -> None:
    """Compiled on the target: text into an integer column fails at check time."""
    mysql_db.execute(SRC)
    pg_db.execute("CREATE TABLE t_items (id integer PRIMARY KEY, name integer NOT NULL)")
    cfg = write_pipeline(tmp_path, mysql_db.url, pg_db.url, {
        "items": "INSERT INTO t_items (id, name) SELECT i.id, i.name FROM items AS i"})
    p = cdc("check", "-c", str(cfg), check=False)
    assert p.returncode == 2
    assert "items.sql:1: on the target: column \"name\" is of type integer" in p.stderr


def test_check_show_sql(tmp_path: Path, mysql_db: Any, pg_db: Any) -> None:
    mysql_db.execute(SRC)
    pg_db.execute(TGT)
    cfg = write_pipeline(tmp_path, mysql_db.url, pg_db.url, {"items": GOOD})
    p = cdc("check", "-c", str(cfg), "--show-sql")
    assert "ok  items: items -> t_items (key: id)" in p.stdout
    assert 'ON CONFLICT ("id") DO UPDATE SET "name" = EXCLUDED."name"' in p.stdout
    # Every statement a rule may run is shown, the inserts-only forms included.
    assert "-- rule items: instead of the three above when the staged rows are all new" \
        in p.stdout
    assert "-- rule items: a snapshot chunk while the target holds none of its rows yet" \
        in p.stdout
    assert p.stdout.count('INSERT INTO "t_items"') == 3, p.stdout
    nothing_written(pg_db)


def test_unreachable_and_wrong_password(tmp_path: Path, mysql_db: Any, pg_db: Any,
                                        pg_server: Any, mariadb_server: Any) -> None:
    mysql_db.execute(SRC)
    pg_db.execute(TGT)
    bad_pw = pg_server.url(pg_db.name, "postgres", "wrong")
    cfg = write_pipeline(tmp_path, mysql_db.url, bad_pw, {"items": GOOD})
    p = cdc("check", "-c", str(cfg), check=False)
    assert "authentication failed for user 'postgres'" in one_error_line(p)
    cfg = write_pipeline(tmp_path, mariadb_server.url(mysql_db.name, "root", "wrong"), pg_db.url,
                         {"items": GOOD})
    p = cdc("setup", "-c", str(cfg), check=False)
    assert "access denied for user 'root'" in one_error_line(p)
    cfg = write_pipeline(tmp_path, "mysql://u:p@127.0.0.1:1/x", pg_db.url, {"items": GOOD})
    p = cdc("check", "-c", str(cfg), check=False)
    assert "MySQL 127.0.0.1:1: cannot connect" in one_error_line(p)
    nothing_written(pg_db)


def test_source_without_row_binlog(tmp_path: Path, mysql_db: Any, pg_db: Any,
                                   mariadb_server: Any) -> None:
    mysql_db.execute(SRC)
    pg_db.execute(TGT)
    cfg = write_pipeline(tmp_path, mysql_db.url, pg_db.url, {"items": GOOD})
    mariadb_server.execute("SET GLOBAL binlog_format = 'STATEMENT'")
    try:
        p = cdc("setup", "-c", str(cfg), check=False)
    finally:
        mariadb_server.execute("SET GLOBAL binlog_format = 'ROW'")
    assert "binlog_format=STATEMENT, not ROW" in one_error_line(p)
    nothing_written(pg_db)


def test_unknown_config_key(tmp_path: Path, mysql_db: Any, pg_db: Any) -> None:
    cfg = write_pipeline(tmp_path, mysql_db.url, pg_db.url, {"items": GOOD},
                         extra="batch:\n  max_rowz: 5\n")
    p = cdc("run", "-c", str(cfg), check=False)
    assert p.returncode == 2
    assert "unknown key 'batch.max_rowz' (did you mean 'batch.max_rows'?)" in p.stderr
