"""cdc verify: source through the rules vs target, and --repair."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pipeline_helpers import cdc, write_pipeline

SRC = {"mysql": "CREATE TABLE items (id INT PRIMARY KEY, name VARCHAR(50) NOT NULL, qty INT)"}
TGT = {
    "postgresql": "CREATE TABLE t_items (k text PRIMARY KEY, name text, qty integer)",
    "mysql": "CREATE TABLE t_items (k varchar(20) PRIMARY KEY, name varchar(50), qty int)",
}
RULE = ("INSERT INTO t_items (k, name, qty) SELECT CONCAT('K', CAST(i.id AS CHAR)), UPPER(i.name),"
        " i.qty FROM items AS i WHERE i.qty > 0")


@pytest.mark.parametrize("target_kind", ["postgresql", "mysql"])
def test_verify_finds_and_repairs(tmp_path: Path, mysql_db: Any, make_pg_db: Any,
                                  make_mysql_db: Any, target_kind: str) -> None:
    tgt = make_pg_db() if target_kind == "postgresql" else make_mysql_db()
    mysql_db.execute(SRC["mysql"])
    tgt.execute(TGT[target_kind])
    cfg = write_pipeline(tmp_path, mysql_db.url, tgt.url, {"items": RULE},
                         extra="snapshot:\n  chunk_rows: 7\n")
    cdc("setup", "-c", str(cfg))
    mysql_db.execute("INSERT INTO items VALUES " + ", ".join(
        f"({i}, 'n{i}', {i % 3})" for i in range(1, 41)))
    cdc("snapshot", "-c", str(cfg))
    ok = json.loads(cdc("verify", "-c", str(cfg), "--json").stdout)
    assert ok[0]["ok"] and ok[0]["expected"] == 27  # qty > 0 for 27 of 40
    tgt.execute("DELETE FROM t_items WHERE k IN ('K1', 'K2')")  # missing
    tgt.execute("UPDATE t_items SET name = 'garbage' WHERE k = 'K4'")  # different
    tgt.execute("UPDATE t_items SET qty = NULL WHERE k = 'K5'")  # different (NULL-safe)
    tgt.execute("INSERT INTO t_items VALUES ('K999', 'ghost', 1)")  # extra
    bad = cdc("verify", "-c", str(cfg), check=False)
    assert bad.returncode == 1
    assert "27 expected, 2 missing, 2 different, 1 extra" in bad.stdout
    fixed = cdc("verify", "-c", str(cfg), "--repair")
    assert "repaired" in fixed.stdout
    again = json.loads(cdc("verify", "-c", str(cfg), "--json").stdout)
    assert again[0]["ok"], again
