"""A source TRUNCATE empties the rule's target table at its place in source
order (rule_options.NAME.on_truncate: truncate, the default), or is logged and
ignored (ignore); where several rules write one target table, every command
that would run them demands the choice."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pipeline_helpers import DaemonProcess, PipelineThread, cdc, wait_caught_up, write_pipeline

from cdc.config import load

SRC_DDL = {
    "mysql": "CREATE TABLE stage (id INT PRIMARY KEY, v VARCHAR(40) NOT NULL)",
    "postgresql": "CREATE TABLE stage (id integer PRIMARY KEY, v text NOT NULL)",
}
TGT_DDL = {
    "postgresql": "CREATE TABLE t_stage (id integer PRIMARY KEY, v text NOT NULL)",
    "mysql": "CREATE TABLE t_stage (id int PRIMARY KEY, v varchar(60) NOT NULL)",
}
RULE = "INSERT INTO t_stage (id, v) SELECT s.id, UPPER(s.v) FROM stage AS s"
DIRECTIONS = [("mysql", "postgresql"), ("postgresql", "mysql"), ("postgresql", "postgresql")]


def _ids(lo: int, hi: int) -> str:
    return ", ".join(f"({i}, 'v{i}')" for i in range(lo, hi))


def expected(src: Any) -> list[tuple[int, str]]:
    return sorted((int(i), v.upper()) for i, v in src.query("SELECT id, v FROM stage"))


def actual(tgt: Any) -> list[tuple[int, str]]:
    return sorted((int(i), v) for i, v in tgt.query("SELECT id, v FROM t_stage"))


def dead_letters(tgt: Any) -> int:
    table = "cdc.dead_letters" if tgt.kind == "postgresql" else "cdc_dead_letters"
    return int(tgt.scalar(f"SELECT count(*) FROM {table}"))  # noqa: S608 - constant


def _teardown(cfg: Path, s_kind: str, tables: list[str]) -> None:
    if s_kind != "postgresql":
        return
    cdc("teardown", "-c", str(cfg), "--yes", check=False)
    from cdc.sources.postgres import PostgresSource

    c = load(cfg)
    PostgresSource(c.source.libpq(), slot=c.slot, publication=c.publication,
                   tables=tables).teardown()


def _setup(tmp_path: Path, s_kind: str, t_kind: str, make_mysql_db: Any, make_pg_db: Any,
           extra: str = "") -> tuple[Any, Any, Path]:
    src = make_mysql_db() if s_kind == "mysql" else make_pg_db()
    tgt = make_mysql_db() if t_kind == "mysql" else make_pg_db()
    src.execute(SRC_DDL[s_kind])
    tgt.execute(TGT_DDL[t_kind])
    cfg = write_pipeline(tmp_path, src.url, tgt.url, {"stage": RULE}, name=f"tr_{src.name}",
                         extra=extra)
    cdc("check", "-c", str(cfg))
    cdc("setup", "-c", str(cfg))
    return src, tgt, cfg


class _BacklogPipeline(PipelineThread):
    """Waits a moment before its first batch, so the reader has queued the
    whole backlog and the first batch likely holds all of it (the
    assertions hold however it is batched)."""

    def _main(self) -> None:
        from cdc.pipeline import Hooks, run

        try:
            run(self.config, self.stop, Hooks(ready=lambda: time.sleep(2)))
        except BaseException as e:  # surfaced by join()
            self.error = e


@pytest.fixture(params=DIRECTIONS, ids=lambda d: f"{d[0]}-to-{d[1]}")
def direction(request: Any, tmp_path: Path, make_mysql_db: Any,
              make_pg_db: Any) -> Iterator[tuple[Any, Any, Path]]:
    s_kind, t_kind = request.param
    src, tgt, cfg = _setup(tmp_path, s_kind, t_kind, make_mysql_db, make_pg_db)
    yield src, tgt, cfg
    _teardown(cfg, s_kind, ["stage"])


def test_truncate_in_its_own_transaction(direction: tuple[Any, Any, Path]) -> None:
    """The issue's repro: 100 rows stream, TRUNCATE, 20 fresh rows."""
    src, tgt, cfg = direction
    with PipelineThread(cfg) as p:
        src.execute(f"INSERT INTO stage VALUES {_ids(1, 101)}")
        p.wait_caught_up()
        assert len(actual(tgt)) == 100
        src.execute("TRUNCATE stage")
        src.execute(f"INSERT INTO stage VALUES {_ids(1001, 1021)}")
        p.wait_caught_up()
    assert actual(tgt) == expected(src)
    assert [i for i, _ in actual(tgt)] == list(range(1001, 1021))
    assert dead_letters(tgt) == 0


def test_truncate_among_changes_of_one_batch(direction: tuple[Any, Any, Path]) -> None:
    """Everything is written before the pipeline runs, so it reads it as one
    backlog: rows before the truncate (in its transaction too, on PostgreSQL)
    go, rows after it stay, and an update after it applies to the new row."""
    src, tgt, cfg = direction
    src.execute(f"INSERT INTO stage VALUES {_ids(1, 101)}")
    src.execute("UPDATE stage SET v = 'changed' WHERE id <= 10")
    if src.kind == "postgresql":
        src.execute(f"BEGIN; INSERT INTO stage VALUES {_ids(200, 205)}; TRUNCATE stage;"
                    f" INSERT INTO stage VALUES {_ids(300, 303)}, (5, 'again'); COMMIT")
    else:
        # TRUNCATE commits implicitly on MySQL: three transactions in the binlog.
        src.execute(f"INSERT INTO stage VALUES {_ids(200, 205)}")
        src.execute("TRUNCATE TABLE stage")
        src.execute(f"INSERT INTO stage VALUES {_ids(300, 303)}, (5, 'again')")
    src.execute("UPDATE stage SET v = 'later' WHERE id = 300")
    src.execute(f"INSERT INTO stage VALUES {_ids(400, 420)}")
    with _BacklogPipeline(cfg) as p:
        p.wait_caught_up()
    assert actual(tgt) == expected(src)
    assert len(actual(tgt)) == 24 and (300, "LATER") in actual(tgt)
    assert (5, "AGAIN") in actual(tgt)
    assert dead_letters(tgt) == 0


@pytest.mark.parametrize("kinds", [("mysql", "postgresql"), ("postgresql", "mysql")],
                         ids=lambda d: f"{d[0]}-to-{d[1]}")
def test_on_truncate_ignore_keeps_rows_and_logs_once(
        kinds: tuple[str, str], tmp_path: Path, make_mysql_db: Any, make_pg_db: Any,
        caplog: pytest.LogCaptureFixture) -> None:
    src, tgt, cfg = _setup(tmp_path, *kinds, make_mysql_db, make_pg_db,
                           extra="rule_options:\n  stage:\n    on_truncate: ignore\n")
    try:
        caplog.set_level(logging.WARNING, logger="cdc")
        with PipelineThread(cfg) as p:
            src.execute(f"INSERT INTO stage VALUES {_ids(1, 11)}")
            p.wait_caught_up()
            src.execute("TRUNCATE TABLE stage")
            src.execute(f"INSERT INTO stage VALUES {_ids(20, 22)}")
            p.wait_caught_up()
    finally:
        _teardown(cfg, kinds[0], ["stage"])
    assert [i for i, _ in actual(tgt)] == [*range(1, 11), 20, 21]
    lines = [r.getMessage() for r in caplog.records if "on_truncate: ignore" in r.getMessage()]
    assert len(lines) == 1, lines
    assert "rule stage" in lines[0] and "t_stage" in lines[0]
    assert all(r.levelno == logging.WARNING for r in caplog.records
               if "on_truncate: ignore" in r.getMessage())


def test_two_rules_on_one_target_table_need_a_choice(tmp_path: Path, mysql_db: Any,
                                                     pg_db: Any) -> None:
    mysql_db.execute(SRC_DDL["mysql"])
    mysql_db.execute("CREATE TABLE stage2 (id INT PRIMARY KEY, v VARCHAR(40) NOT NULL)")
    pg_db.execute(TGT_DDL["postgresql"])
    rules = {"stage": RULE,
             "stage2": "INSERT INTO t_stage (id, v) SELECT s.id + 100000, s.v FROM stage2 AS s"}
    both = ("rule_options:\n  stage:\n    on_truncate: truncate\n"
            "  stage2:\n    on_truncate: ignore\n")
    cfg = write_pipeline(tmp_path, mysql_db.url, pg_db.url, rules, extra=both)
    cdc("check", "-c", str(cfg))
    cdc("setup", "-c", str(cfg))
    # One rule without a choice: every command that would run the rules refuses.
    cfg = write_pipeline(tmp_path, mysql_db.url, pg_db.url, rules,
                         extra="rule_options:\n  stage:\n    on_truncate: truncate\n")
    for command in ("check", "setup", "run", "snapshot"):
        p = cdc(command, "-c", str(cfg), check=False, timeout=60)
        assert p.returncode != 0, (command, p.stdout, p.stderr)
        err = [ln for ln in p.stderr.splitlines() if "on_truncate" in ln]
        assert len(err) == 1, (command, p.stderr)
        assert "stage, stage2" in err[0] and "t_stage" in err[0] and "for stage2" in err[0]
    assert pg_db.scalar("SELECT count(*) FROM t_stage") == 0  # nothing ran


def test_unknown_on_truncate_value_is_an_error(tmp_path: Path, mysql_db: Any,
                                               pg_db: Any) -> None:
    mysql_db.execute(SRC_DDL["mysql"])
    pg_db.execute(TGT_DDL["postgresql"])
    cfg = write_pipeline(tmp_path, mysql_db.url, pg_db.url, {"stage": RULE},
                         extra="rule_options:\n  stage:\n    on_truncate: empty\n")
    p = cdc("check", "-c", str(cfg), check=False)
    assert p.returncode != 0
    assert "rule_options.stage.on_truncate must be one of truncate, ignore" in p.stderr


@pytest.mark.parametrize("kinds", [("mysql", "postgresql"), ("postgresql", "mysql")],
                         ids=lambda d: f"{d[0]}-to-{d[1]}")
def test_kill_9_replay_never_truncates_again(kinds: tuple[str, str], tmp_path: Path,
                                             make_mysql_db: Any, make_pg_db: Any) -> None:
    """Cycles of inserts, a truncate and more inserts, with kill -9 at random
    moments: after the restart the target equals the source, so a replayed
    stretch never empties rows that came after its truncate."""
    src, tgt, cfg = _setup(tmp_path, *kinds, make_mysql_db, make_pg_db,
                           extra="batch:\n  max_rows: 40\n")
    rnd = random.Random(13)
    daemon = DaemonProcess(cfg, tmp_path / "run.log")
    next_id = 1
    try:
        for cycle in range(4):
            daemon.start()
            for _ in range(3):
                src.execute(f"INSERT INTO stage VALUES {_ids(next_id, next_id + 30)}")
                next_id += 30
                if cycle % 2 == 0:
                    src.execute("TRUNCATE TABLE stage")
                src.execute(f"INSERT INTO stage VALUES {_ids(next_id, next_id + 7)}")
                next_id += 7
            time.sleep(rnd.uniform(0.1, 0.9))
            daemon.kill9()
        daemon.start()
        try:
            wait_caught_up(load(cfg), timeout=120)
        finally:
            assert daemon.terminate() == 0, (tmp_path / "run.log").read_text()[-3000:]
        # The last cycle had no truncate: the rows of the truncating cycles'
        # tails and all of the last two cycles must be there.
        assert actual(tgt) == expected(src)
        assert len(actual(tgt)) == 7 + 3 * 37
        assert dead_letters(tgt) == 0
    finally:
        _teardown(cfg, kinds[0], ["stage"])


def test_binlog_statements_that_truncate(caplog: pytest.LogCaptureFixture) -> None:
    from cdc.sources.mysql import truncate_targets

    assert truncate_targets("TRUNCATE stage", "shop", "shop") == ["stage"]
    assert truncate_targets("truncate table `shop`.`st 1`", "other", "shop") == ["st 1"]
    assert truncate_targets("/* app */ TRUNCATE TABLE stage", "shop", "shop") == ["stage"]
    assert truncate_targets("TRUNCATE TABLE other.stage", "shop", "shop") == []
    assert truncate_targets("ALTER TABLE stage ADD COLUMN truncate_me int", "shop", "shop") == []
    assert truncate_targets("DELETE FROM stage", "shop", "shop") == []
    caplog.set_level(logging.WARNING, logger="cdc")
    assert truncate_targets("ALTER TABLE stage TRUNCATE PARTITION p0", "shop", "shop",
                            {"stage"}) == []
    assert truncate_targets("ALTER TABLE shop.x TRUNCATE PARTITION p0", "a", "shop",
                            {"stage"}) == []
    warned = [r.getMessage() for r in caplog.records if r.name.startswith("cdc")]
    assert len(warned) == 1 and "stage" in warned[0] and "not mirrored" in warned[0]
