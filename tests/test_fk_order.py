"""Source order across tables where the target has foreign keys (ape-dts's
foreign_key_test): a valid source history never becomes dead letters, whatever
order the batch's tables are applied in by default."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pipeline_helpers import PipelineThread, cdc, write_pipeline

from cdc.batch import Batch
from cdc.config import load
from cdc.events import RowChange, Transaction

SRC_DDL = {
    "mysql": ["CREATE TABLE parent (id INT PRIMARY KEY, name VARCHAR(40) NOT NULL)",
              "CREATE TABLE child (id INT PRIMARY KEY, parent_id INT NOT NULL,"
              " v VARCHAR(40) NOT NULL)"],
    "postgresql": ["CREATE TABLE parent (id integer PRIMARY KEY, name text NOT NULL)",
                   "CREATE TABLE child (id integer PRIMARY KEY, parent_id integer NOT NULL,"
                   " v text NOT NULL)"],
}
TGT_DDL = {
    "postgresql": ["CREATE TABLE t_parent (id integer PRIMARY KEY, name text NOT NULL)",
                   "CREATE TABLE t_child (id integer PRIMARY KEY, parent_id integer NOT NULL"
                   " REFERENCES t_parent (id), v text NOT NULL)"],
    "mysql": ["CREATE TABLE t_parent (id int PRIMARY KEY, name varchar(40) NOT NULL)"
              " ENGINE=InnoDB",
              "CREATE TABLE t_child (id int PRIMARY KEY, parent_id int NOT NULL,"
              " v varchar(40) NOT NULL, FOREIGN KEY (parent_id) REFERENCES t_parent (id))"
              " ENGINE=InnoDB"],
}
# "child" sorts before "parent": by default its stage is applied first.
RULES = {
    "child": "INSERT INTO t_child (id, parent_id, v) SELECT c.id, c.parent_id, c.v"
             " FROM child AS c",
    "parent": "INSERT INTO t_parent (id, name) SELECT p.id, p.name FROM parent AS p",
}
DIRECTIONS = [("mysql", "postgresql"), ("postgresql", "mysql"), ("postgresql", "postgresql")]


def state(db: Any, prefix: str = "") -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    parents = sorted((int(i), n) for i, n in db.query(f"SELECT id, name FROM {prefix}parent"))
    children = sorted((int(i), int(p), v) for i, p, v in
                      db.query(f"SELECT id, parent_id, v FROM {prefix}child"))
    return parents, children


def dead_letters(tgt: Any) -> list[tuple[Any, ...]]:
    table = "cdc.dead_letters" if tgt.kind == "postgresql" else "cdc_dead_letters"
    return tgt.query(f"SELECT source_table, operation, error FROM {table}")  # noqa: S608


@pytest.fixture(params=DIRECTIONS, ids=lambda d: f"{d[0]}-to-{d[1]}")
def direction(request: Any, tmp_path: Path, make_mysql_db: Any,
              make_pg_db: Any) -> Iterator[tuple[Any, Any, Path]]:
    s_kind, t_kind = request.param
    src = make_mysql_db() if s_kind == "mysql" else make_pg_db()
    tgt = make_mysql_db() if t_kind == "mysql" else make_pg_db()
    for ddl in SRC_DDL[s_kind]:
        src.execute(ddl)
    for ddl in TGT_DDL[t_kind]:
        tgt.execute(ddl)
    cfg = write_pipeline(tmp_path, src.url, tgt.url, RULES, name=f"fk_{src.name}")
    cdc("check", "-c", str(cfg))
    cdc("setup", "-c", str(cfg))
    yield src, tgt, cfg
    if s_kind == "postgresql":
        from cdc.sources.postgres import PostgresSource

        c = load(cfg)
        PostgresSource(c.source.libpq(), slot=c.slot, publication=c.publication,
                       tables=["child", "parent"]).teardown()


def _tx(src: Any, statements: list[str]) -> None:
    """Statements as one source transaction."""
    src.execute("BEGIN; " + "; ".join(statements) + "; COMMIT")


def _prefill(src: Any, cfg: Path) -> None:
    _tx(src, ["INSERT INTO parent VALUES " + ", ".join(f"({i}, 'p{i}')" for i in range(1, 6))])
    _tx(src, ["INSERT INTO child VALUES " + ", ".join(
        f"({i}, {(i - 1) // 3 + 1}, 'c{i}')" for i in range(1, 16))])
    with PipelineThread(cfg) as p:
        p.wait_caught_up()


class _BacklogPipeline(PipelineThread):
    """Before its first batch the pipeline waits a moment, so the reader has
    queued the whole backlog and the first batch likely holds all of it (the
    repro; the assertions hold however it is batched)."""

    def _main(self) -> None:
        from cdc.pipeline import Hooks, run

        try:
            run(self.config, self.stop, Hooks(ready=lambda: time.sleep(2)))
        except BaseException as e:  # surfaced by join()
            self.error = e


def _run_backlog(cfg: Path) -> None:
    """Apply what the source wrote while no pipeline ran (one backlog)."""
    with _BacklogPipeline(cfg) as p:
        p.wait_caught_up()


def test_parent_then_child_inserts(direction: tuple[Any, Any, Path]) -> None:
    src, tgt, cfg = direction
    _prefill(src, cfg)
    _tx(src, ["INSERT INTO parent VALUES (10, 'p10'), (11, 'p11')"])
    _tx(src, ["INSERT INTO child VALUES (100, 10, 'a'), (101, 11, 'b'), (102, 1, 'c')"])
    _run_backlog(cfg)
    assert dead_letters(tgt) == []
    assert state(tgt, "t_") == state(src)
    assert (100, 10, "a") in state(tgt, "t_")[1]


def test_child_then_parent_deletes_in_separate_transactions(
        direction: tuple[Any, Any, Path]) -> None:
    src, tgt, cfg = direction
    _prefill(src, cfg)
    _tx(src, ["DELETE FROM child WHERE parent_id IN (1, 2)"])
    _tx(src, ["DELETE FROM parent WHERE id IN (1, 2)"])
    _tx(src, ["DELETE FROM child WHERE parent_id = 3"])
    _tx(src, ["DELETE FROM parent WHERE id = 3"])
    _run_backlog(cfg)
    assert dead_letters(tgt) == []
    assert state(tgt, "t_") == state(src)
    assert [i for i, _ in state(tgt, "t_")[0]] == [4, 5]


def test_delete_and_reinsert_parent_with_children(direction: tuple[Any, Any, Path]) -> None:
    src, tgt, cfg = direction
    _prefill(src, cfg)
    _tx(src, ["DELETE FROM child WHERE parent_id = 1", "DELETE FROM parent WHERE id = 1"])
    _tx(src, ["INSERT INTO parent VALUES (1, 'reborn')",
              "INSERT INTO child VALUES (1, 1, 'again'), (50, 1, 'new')"])
    _run_backlog(cfg)
    assert dead_letters(tgt) == []
    assert state(tgt, "t_") == state(src)
    assert (1, "reborn") in state(tgt, "t_")[0]


def test_deletes_and_inserts_that_no_table_order_satisfies(
        direction: tuple[Any, Any, Path]) -> None:
    """Parents deleted after their children and new parents inserted before
    their children, in one backlog: neither table goes first for both."""
    src, tgt, cfg = direction
    _prefill(src, cfg)
    _tx(src, ["DELETE FROM child WHERE parent_id = 2"])
    _tx(src, ["DELETE FROM parent WHERE id = 2"])
    _tx(src, ["INSERT INTO parent VALUES (20, 'p20')"])
    _tx(src, ["INSERT INTO child VALUES (200, 20, 'x')", "UPDATE child SET parent_id = 20"
              " WHERE id = 13"])
    _tx(src, ["DELETE FROM child WHERE parent_id = 5", "DELETE FROM parent WHERE id = 5"])
    _run_backlog(cfg)
    assert dead_letters(tgt) == []
    assert state(tgt, "t_") == state(src)


@pytest.fixture
def target_plan(direction: tuple[Any, Any, Path]) -> Iterator[tuple[Any, Any, Any, Any]]:
    """The pipeline's target and plan, to apply hand-made batches directly:
    one batch exactly as given, so the fallback path surely runs."""
    from cdc.plan import attach_converters, build_plan
    from cdc.sources import open_source
    from cdc.targets import open_target

    src, tgt, cfg = direction
    config = load(cfg)
    target = open_target(config)
    source = open_source(config, ["child", "parent"])
    try:
        plan = build_plan(config, source, target)
        attach_converters(plan, config)
        yield tgt, target, plan, target.load_offset()
    finally:
        source.close()
        target.close()


def _batch(position: Any, *txs: list[RowChange]) -> Batch:
    b = Batch()
    for changes in txs:
        b.add(Transaction(list(changes), position))
    return b


def _ins(table: str, **row: Any) -> RowChange:
    return RowChange(table, "I", None, row)


def _del(table: str, **row: Any) -> RowChange:
    return RowChange(table, "D", row, None)


def test_one_batch_falls_back_to_source_order(target_plan: tuple[Any, Any, Any, Any],
                                              caplog: pytest.LogCaptureFixture) -> None:
    from cdc.positions import BinlogPosition, Lsn

    tgt, target, plan, offset = target_plan
    position = offset[0] if offset else (
        Lsn.parse("0/1") if target.config.source.kind == "postgresql" else
        BinlogPosition("mysql-bin.000001", 4))
    convs = plan.converters
    target.apply(_batch(position, [_ins("parent", id=1, name="p1"), _ins("parent", id=2,
                                                                          name="p2")],
                        [_ins("child", id=1, parent_id=1, v="a"),
                         _ins("child", id=2, parent_id=2, v="b")]),
                 plan.stages, plan.by_table, convs)
    assert state(tgt, "t_") == ([(1, "p1"), (2, "p2")], [(1, 1, "a"), (2, 2, "b")])
    caplog.set_level(logging.INFO, logger="cdc")
    # Child 1 and parent 1 go, parent 3 and its child come: no table order works.
    target.apply(_batch(position, [_del("child", id=1, parent_id=1, v="a")],
                        [_del("parent", id=1, name="p1")],
                        [_ins("parent", id=3, name="p3")],
                        [_ins("child", id=3, parent_id=3, v="c")]),
                 plan.stages, plan.by_table, convs)
    assert any("in source order" in r.getMessage() for r in caplog.records)
    assert dead_letters(tgt) == []
    assert state(tgt, "t_") == ([(2, "p2"), (3, "p3")], [(2, 2, "b"), (3, 3, "c")])
    # A child whose parent the source never had stays a dead letter, alone:
    # the rest of the batch applies, in source order.
    target.apply(_batch(position, [_del("child", id=2, parent_id=2, v="b")],
                        [_del("parent", id=2, name="p2")],
                        [_ins("child", id=9, parent_id=99, v="orphan")],
                        [_ins("parent", id=4, name="p4")]),
                 plan.stages, plan.by_table, convs)
    letters = dead_letters(tgt)
    assert [(t, op) for t, op, _ in letters] == [("child", "I")], letters
    assert state(tgt, "t_") == ([(3, "p3"), (4, "p4")], [(3, 3, "c")])


def test_truncate_of_parent_and_child_empties_children_first(
        direction: tuple[Any, Any, Path]) -> None:
    """One source statement truncates both tables (PostgreSQL sends them in one
    message, MySQL as two statements); the target's foreign key needs the
    children emptied first, then fresh rows of both arrive in order."""
    src, tgt, cfg = direction
    _prefill(src, cfg)
    if src.kind == "postgresql":
        _tx(src, ["TRUNCATE parent, child"])
    else:
        src.execute("TRUNCATE TABLE child")
        src.execute("TRUNCATE TABLE parent")
    _tx(src, ["INSERT INTO parent VALUES (7, 'p7')", "INSERT INTO child VALUES (70, 7, 'z')"])
    _run_backlog(cfg)
    assert dead_letters(tgt) == []
    assert state(tgt, "t_") == state(src) == ([(7, "p7")], [(70, 7, "z")])


def test_new_orders_around_a_purge_apply_by_stretch(
        target_plan: tuple[Any, Any, Any, Any]) -> None:
    """New parents with children, a purge of old ones (children, then
    parents), more new ones: no single table order suits the batch, but
    each of the three stretches has one."""
    from cdc.positions import BinlogPosition, Lsn
    from cdc.targets.steps import _links, runs, segments

    tgt, target, plan, offset = target_plan
    position = offset[0] if offset else (
        Lsn.parse("0/1") if target.config.source.kind == "postgresql" else
        BinlogPosition("mysql-bin.000001", 4))

    def new(k: int) -> list[RowChange]:
        return [_ins("parent", id=k, name=f"p{k}"),
                *(_ins("child", id=k * 10 + j, parent_id=k, v="x") for j in range(2))]

    target.apply(_batch(position, *(new(k) for k in range(1, 4))), plan.stages,
                 plan.by_table, plan.converters)
    purge = [*(_del("child", id=k * 10 + j, parent_id=k, v="x") for k in (1, 2)
               for j in range(2)), _del("parent", id=1, name="p1"),
             _del("parent", id=2, name="p2")]
    batch = _batch(position, *(new(k) for k in range(4, 10)), purge,
                   *(new(k) for k in range(10, 16)))
    # The first apply read the target's foreign keys.
    links = _links(list(plan.stages.values()), plan.by_table, target._fks)
    assert links == {("child", "parent")}
    parts = segments(batch, links)
    assert [len(p) for p in parts] == [6, 1, 6]
    assert sum(len(p.changes_by_table()) for p in parts) < len(runs(batch))
    target.apply(batch, plan.stages, plan.by_table, plan.converters)
    assert dead_letters(tgt) == []
    parents, children = state(tgt, "t_")
    assert [i for i, _ in parents] == list(range(3, 16))
    assert len(children) == 2 * 13 and {p for _, p, _ in children} == set(range(3, 16))


def test_runs_keep_source_order_and_truncates_apart() -> None:
    from cdc.events import truncate_change
    from cdc.positions import Lsn
    from cdc.targets.steps import runs

    p = Lsn.parse("0/1")
    a1, a2, b1, a3 = (_ins("a", id=1), _ins("a", id=2), _ins("b", id=1), _ins("a", id=3))
    t = truncate_change("a")
    got = runs(_batch(p, [a1], [a2, b1], [t, a3], [_ins("a", id=4)]))
    assert [(name, [ch.op for ch in chs]) for name, chs in got] == [
        ("a", ["I", "I"]), ("b", ["I"]), ("a", ["T"]), ("a", ["I", "I"])]
    assert got[0][1] == [a1, a2] and got[3][1][0] is a3


def test_toposort_follows_edges_and_survives_cycles() -> None:
    from cdc.targets.steps import _toposort

    assert _toposort(["c", "p", "x"], {("p", "c")}) == ["p", "c", "x"]
    assert _toposort(["a", "b"], {("a", "b"), ("b", "a")}) == ["a", "b"]


def test_truncates_in_one_batch_empty_children_first(
        target_plan: tuple[Any, Any, Any, Any]) -> None:
    """Two truncates in a row (MySQL writes one per transaction), the parent's
    first: in one batch the target's children still go first."""
    from cdc.events import truncate_change
    from cdc.positions import BinlogPosition, Lsn

    tgt, target, plan, offset = target_plan
    position = offset[0] if offset else (
        Lsn.parse("0/1") if target.config.source.kind == "postgresql" else
        BinlogPosition("mysql-bin.000001", 4))
    target.apply(_batch(position, [_ins("parent", id=1, name="p1")],
                        [_ins("child", id=1, parent_id=1, v="a")]),
                 plan.stages, plan.by_table, plan.converters)
    batch = _batch(position, [_ins("parent", id=2, name="p2")], [truncate_change("parent")],
                   [truncate_change("child")], [_ins("parent", id=3, name="p3")])
    for tx in batch.transactions[1:3]:
        tx.extra["truncate"] = True
    target.apply(batch, plan.stages, plan.by_table, plan.converters)
    assert dead_letters(tgt) == []
    assert state(tgt, "t_") == ([(3, "p3")], [])
