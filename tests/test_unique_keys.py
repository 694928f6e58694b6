"""MySQL targets with a unique key besides the rule's key (issue 13, item 7).

The target key alone decides which row an upsert changes.  ``INSERT … ON
DUPLICATE KEY UPDATE`` would take whichever unique key clashes first and
overwrite a *different* row through the secondary key (ape-dts's
key_changed_test lost a target row that way); cdc instead updates by the
rule's key and inserts what is missing, so a real clash is a dead letter with
the database's reason and every other row stays as it is.

Source changes are made before `cdc run` starts, so ``batch.max_rows`` decides
where the batch boundaries fall.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pipeline_helpers import PipelineThread, cdc, mysql_tx, write_pipeline

from cdc.config import load

SRC_DDL = {
    "mysql": "CREATE TABLE s (id INT PRIMARY KEY, u VARCHAR(20) NOT NULL, v INT NOT NULL,"
             " UNIQUE KEY uk (u))",
    "postgresql": "CREATE TABLE s (id integer PRIMARY KEY, u varchar(20) NOT NULL,"
                  " v integer NOT NULL, UNIQUE (u))",
}
TGT_DDL = {
    "mysql": "CREATE TABLE t (id INT PRIMARY KEY, u VARCHAR(20) NOT NULL, v INT NOT NULL,"
             " UNIQUE KEY uk (u))",
    # PostgreSQL's ON CONFLICT (key) never takes another unique key: the same
    # workloads must leave the same rows there.
    "postgresql": SRC_DDL["postgresql"].replace("TABLE s", "TABLE t"),
}
RULE = "INSERT INTO t (id, u, v) SELECT s.id, s.u, s.v FROM s AS s"


class Pipeline:
    def __init__(self, src: Any, tgt: Any, cfg: Path) -> None:
        self.src, self.tgt, self.cfg = src, tgt, cfg

    def tx(self, statements: list[str]) -> None:
        """One source transaction."""
        if self.src.kind == "mysql":
            mysql_tx(self.src.url, statements)
        else:
            with self.src.connect() as c, c.transaction():
                for s in statements:
                    c.execute(s)

    def catch_up(self) -> None:
        with PipelineThread(self.cfg) as p:
            p.wait_caught_up()
            if self.src.kind == "postgresql":
                time.sleep(0.3)  # the test server commits asynchronously
                p.wait_caught_up()

    def source_rows(self) -> list[tuple[Any, ...]]:
        return sorted(tuple(r) for r in self.src.query("SELECT id, u, v FROM s"))

    def target_rows(self) -> list[tuple[Any, ...]]:
        return sorted(tuple(r) for r in self.tgt.query("SELECT id, u, v FROM t"))

    def dead_letters(self) -> list[str]:
        table = "cdc_dead_letters" if self.tgt.kind == "mysql" else "cdc.dead_letters"
        return [e for (e,) in self.tgt.query(f"SELECT error FROM {table} ORDER BY id")]


def _pipeline(request: Any, tmp_path: Path, make_mysql_db: Any, make_pg_db: Any,
              source_kind: str, max_rows: int, src_ddl: str,
              target_kind: str = "mysql") -> Iterator[Pipeline]:
    src = make_mysql_db() if source_kind == "mysql" else make_pg_db()
    tgt = make_mysql_db() if target_kind == "mysql" else make_pg_db()
    src.execute(src_ddl)
    tgt.execute(TGT_DDL[target_kind])
    cfg = write_pipeline(tmp_path, src.url, tgt.url, {"s": RULE}, name=f"uk_{src.name}",
                         extra=f"batch:\n  max_rows: {max_rows}\n"
                               "dead_letters:\n  retry_seconds: 3600\n")
    cdc("setup", "-c", str(cfg))
    try:
        yield Pipeline(src, tgt, cfg)
    finally:
        if source_kind == "postgresql":
            from cdc.sources.postgres import PostgresSource

            c = load(cfg)
            PostgresSource(c.source.libpq(), slot=c.slot, publication=c.publication,
                           tables=["s"]).teardown()


@pytest.fixture
def pipe(request: Any, tmp_path: Path, make_mysql_db: Any, make_pg_db: Any) -> Iterator[Pipeline]:
    source_kind, max_rows, *target = request.param
    yield from _pipeline(request, tmp_path, make_mysql_db, make_pg_db, source_kind, max_rows,
                         SRC_DDL[source_kind], *target)


def _ids(p: tuple[Any, ...]) -> str:
    return f"{p[0]}-batch{p[1]}" + (f"-to-{p[2]}" if len(p) > 2 else "")


def test_tables_with_only_a_primary_key_keep_their_upsert(tmp_path: Path, mysql_db: Any,
                                                          make_mysql_db: Any) -> None:
    """The SQL for a target whose only unique key is the rule's key is what it
    always was: one INSERT … ON DUPLICATE KEY UPDATE; a second unique key turns
    it into update-by-key + insert-missing."""
    tgt = make_mysql_db()
    mysql_db.execute(SRC_DDL["mysql"])
    tgt.execute("CREATE TABLE t (id INT PRIMARY KEY, u VARCHAR(20) NOT NULL, v INT NOT NULL)")
    cfg = write_pipeline(tmp_path, mysql_db.url, tgt.url, {"s": RULE})
    out = cdc("check", "-c", str(cfg), "--show-sql").stdout
    assert out.count("ON DUPLICATE KEY UPDATE `u` = VALUES(`u`), `v` = VALUES(`v`)") == 2, out
    assert "UPDATE `t` AS t JOIN" not in out and "NOT EXISTS (SELECT 1 FROM `t`" not in out
    tgt.execute("ALTER TABLE t ADD UNIQUE KEY uk (u)")
    out = cdc("check", "-c", str(cfg), "--show-sql").stdout
    assert "ON DUPLICATE KEY" not in out, out
    assert out.count("UPDATE `t` AS t JOIN") == 2 and out.count("NOT EXISTS (SELECT 1 FROM `t`") == 2, out


SWAPS = [("mysql", 1), ("mysql", 1000), ("postgresql", 1), ("postgresql", 1000)]


@pytest.mark.parametrize("pipe", SWAPS, ids=_ids, indirect=True)
def test_key_swaps_in_the_source_arrive_intact(pipe: Pipeline) -> None:
    """Unique values and primary keys swapped validly in the source (through a
    temporary value), in one transaction and across transactions."""
    pipe.tx(["INSERT INTO s VALUES (1, 'a', 10), (2, 'b', 20), (3, 'c', 30), (4, 'd', 40)"])
    # u swapped between 1 and 2 in one transaction,
    pipe.tx(["UPDATE s SET u = 'tmp' WHERE id = 1", "UPDATE s SET u = 'a' WHERE id = 2",
             "UPDATE s SET u = 'b' WHERE id = 1"])
    # between 3 and 4 across three,
    pipe.tx(["UPDATE s SET u = 'tmp' WHERE id = 3"])
    pipe.tx(["UPDATE s SET u = 'c' WHERE id = 4"])
    pipe.tx(["UPDATE s SET u = 'd' WHERE id = 3"])
    # primary keys swapped between 1 and 3 (key_changed_test), and a freed u reused.
    pipe.tx(["UPDATE s SET id = 99 WHERE id = 1", "UPDATE s SET id = 1 WHERE id = 3",
             "UPDATE s SET id = 3 WHERE id = 99"])
    pipe.tx(["DELETE FROM s WHERE id = 4"])
    pipe.tx(["INSERT INTO s VALUES (5, 'c', 50)"])
    pipe.catch_up()
    assert pipe.source_rows() == [(1, "d", 30), (2, "a", 20), (3, "b", 10), (5, "c", 50)]
    assert pipe.target_rows() == pipe.source_rows()
    assert pipe.dead_letters() == []


def _random_workload(rnd: random.Random, n_tx: int, base: int, tag: str) -> list[list[str]]:
    """Transactions valid on a source with UNIQUE (u): swaps of u and of id
    through temporary values, key changes, reuse of freed values, updates,
    inserts, deletes.  A model of the rows keeps every statement valid.  Ids
    from ``base`` and values tagged ``tag``: workloads of several seeds can
    interleave in one table without touching each other's rows."""
    rows: dict[int, tuple[str, int]] = {base + i: (f"{tag}u{i}", i) for i in range(1, 21)}
    txs: list[list[str]] = [["INSERT INTO s VALUES " + ", ".join(
        f"({i}, '{u}', {v})" for i, (u, v) in rows.items())]]
    fresh = iter(range(base + 1000, base + 100000))
    tmp_id, tmp_u = base, f"{tag}tmp"
    for _ in range(n_tx):
        tx: list[str] = []
        for _ in range(rnd.randint(1, 4)):
            op = rnd.choice(["swap_u", "swap_u", "swap_id", "move_id", "update", "insert",
                             "delete_reuse", "delete"])
            ids = sorted(rows)
            if len(ids) < 3:
                op = "insert"
            if op == "swap_u":
                a, b = rnd.sample(ids, 2)
                ua, ub = rows[a][0], rows[b][0]
                tx += [f"UPDATE s SET u = '{tmp_u}' WHERE id = {a}",
                       f"UPDATE s SET u = '{ua}' WHERE id = {b}",
                       f"UPDATE s SET u = '{ub}' WHERE id = {a}"]
                rows[a], rows[b] = (ub, rows[a][1]), (ua, rows[b][1])
            elif op == "swap_id":
                a, b = rnd.sample(ids, 2)
                tx += [f"UPDATE s SET id = {tmp_id} WHERE id = {a}",
                       f"UPDATE s SET id = {a} WHERE id = {b}",
                       f"UPDATE s SET id = {b} WHERE id = {tmp_id}"]
                rows[a], rows[b] = rows[b], rows[a]
            elif op == "move_id":
                a, new = rnd.choice(ids), next(fresh)
                tx.append(f"UPDATE s SET id = {new} WHERE id = {a}")
                rows[new] = rows.pop(a)
            elif op == "update":
                a, v = rnd.choice(ids), rnd.randint(0, 999)
                tx.append(f"UPDATE s SET v = {v} WHERE id = {a}")
                rows[a] = (rows[a][0], v)
            elif op == "insert":
                new = next(fresh)
                tx.append(f"INSERT INTO s VALUES ({new}, '{tag}n{new}', {new % 7})")
                rows[new] = (f"{tag}n{new}", new % 7)
            elif op == "delete_reuse":
                a, new = rnd.choice(ids), next(fresh)
                tx += [f"DELETE FROM s WHERE id = {a}",
                       f"INSERT INTO s VALUES ({new}, '{rows[a][0]}', 1)"]
                rows[new] = (rows.pop(a)[0], 1)
            else:
                a = rnd.choice(ids)
                tx.append(f"DELETE FROM s WHERE id = {a}")
                del rows[a]
        txs.append(tx)
    return txs


# More seeds for a long run: CDC_TEST_SEEDS=1-200 (each adds 60 transactions).
_SEEDS = os.environ.get("CDC_TEST_SEEDS", "1-3")
SEEDS = (list(range(int(_SEEDS.split("-")[0]), int(_SEEDS.split("-")[1]) + 1))
         if "-" in _SEEDS else [int(x) for x in _SEEDS.split(",")])
RANDOM: list[tuple[Any, ...]] = [("mysql", 1), ("mysql", 7), ("mysql", 20000),
                                 ("postgresql", 3), ("mysql", 5, "postgresql")]


@pytest.mark.parametrize("pipe", RANDOM, ids=_ids, indirect=True)
def test_random_key_swaps_leave_the_source_rows(pipe: Pipeline) -> None:
    """Every seed's workload, interleaved transaction by transaction, so batches
    mix several seeds' key changes; the target must equal the source."""
    workloads = [_random_workload(random.Random(seed), 60, seed * 1_000_000, f"s{seed}")
                 for seed in SEEDS]
    for step in range(max(len(w) for w in workloads)):
        for w in workloads:
            if step < len(w):
                pipe.tx(w[step])
    pipe.catch_up()
    src = pipe.source_rows()
    assert len(src) > 10 * len(SEEDS)
    assert pipe.target_rows() == src
    assert pipe.dead_letters() == []


CLASH: list[tuple[Any, ...]] = [("mysql", 1000), ("postgresql", 1000),
                                ("mysql", 1000, "postgresql")]


@pytest.fixture
def legacy(request: Any, tmp_path: Path, make_mysql_db: Any,
           make_pg_db: Any) -> Iterator[Pipeline]:
    """A source without the target's unique key: two ids may claim one u."""
    source_kind, max_rows, *target = request.param
    ddl = SRC_DDL[source_kind].replace(", UNIQUE KEY uk (u)", "").replace(", UNIQUE (u)", "")
    yield from _pipeline(request, tmp_path, make_mysql_db, make_pg_db, source_kind, max_rows,
                         ddl, *target)


@pytest.mark.parametrize("legacy", CLASH, ids=_ids, indirect=True)
def test_a_genuine_clash_is_a_dead_letter_and_the_other_row_stays(legacy: Pipeline) -> None:
    pipe = legacy
    pipe.tx(["INSERT INTO s VALUES (1, 'a', 10), (3, 'c', 30)"])
    pipe.catch_up()
    # In one batch: id 2 claims 'a', which id 1 holds; id 3 moves to 'x' and
    # id 4 claims 'x' too; id 5 is innocent.
    pipe.tx(["INSERT INTO s VALUES (2, 'a', 20)"])
    pipe.tx(["UPDATE s SET u = 'x', v = 31 WHERE id = 3", "INSERT INTO s VALUES (4, 'x', 40)"])
    pipe.tx(["INSERT INTO s VALUES (5, 'e', 50)"])
    pipe.catch_up()
    assert pipe.target_rows() == [(1, "a", 10), (3, "x", 31), (5, "e", 50)]
    letters = pipe.dead_letters()
    assert len(letters) == 2, letters
    if pipe.tgt.kind == "mysql":
        assert all("Duplicate entry" in e for e in letters), letters
        assert any("'a'" in e for e in letters) and any("'x'" in e for e in letters), letters
    else:
        assert all("duplicate key value violates unique constraint" in e for e in letters), \
            letters
    # Resolved in the source: the rows arrive.
    pipe.tx(["UPDATE s SET u = 'b' WHERE id = 2", "UPDATE s SET u = 'y' WHERE id = 4"])
    pipe.catch_up()
    assert pipe.target_rows() == [(1, "a", 10), (2, "b", 20), (3, "x", 31), (4, "y", 40),
                                  (5, "e", 50)]


@pytest.mark.parametrize("pipe", [("mysql", 1000)], ids=_ids, indirect=True)
def test_snapshot_into_a_clashing_row_is_a_dead_letter(pipe: Pipeline) -> None:
    """A snapshot chunk (new images only, its own statements) keeps the rule
    too: the target row holding the value is not overwritten."""
    pipe.tgt.execute("INSERT INTO t VALUES (9, 'a', 0), (2, 'old', 0)")
    pipe.tx(["INSERT INTO s VALUES (1, 'a', 10), (2, 'b', 20), (3, 'c', 30)"])
    cdc("snapshot", "-c", str(pipe.cfg))
    assert pipe.target_rows() == [(2, "b", 20), (3, "c", 30), (9, "a", 0)]
    letters = pipe.dead_letters()
    assert len(letters) == 1 and "Duplicate entry 'a'" in letters[0], letters


@pytest.mark.parametrize("pipe", [("mysql", 1000)], ids=_ids, indirect=True)
def test_verify_repair_uses_the_same_upsert(pipe: Pipeline) -> None:
    import json

    pipe.tx(["INSERT INTO s VALUES (1, 'a', 10), (2, 'b', 20), (3, 'c', 30)"])
    pipe.catch_up()
    pipe.tgt.execute("DELETE FROM t WHERE id = 1")  # missing
    pipe.tgt.execute("UPDATE t SET v = 0 WHERE id = 2")  # different
    out = cdc("verify", "-c", str(pipe.cfg), "--repair")
    assert "repaired" in out.stdout
    assert pipe.target_rows() == pipe.source_rows()
    again = json.loads(cdc("verify", "-c", str(pipe.cfg), "--json").stdout)
    assert again[0]["ok"], again
