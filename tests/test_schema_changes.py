"""Schema changes on the source while streaming (cdc.pause).

A column a rule reads is dropped or renamed: that rule's source table pauses
(its changes parked in the target, no NULL written), the other tables keep
streaming, a kill -9 loses and duplicates nothing, and fixing the rule then
SIGHUP applies the parked changes in order.  Unread columns do not pause;
``schema_changes: lenient`` writes NULL as before.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pipeline_helpers import DaemonProcess, PipelineThread, cdc, wait_caught_up, write_pipeline

from cdc.catalog import Column, TableSchema
from cdc.config import Config, RuleOptions, load
from cdc.pause import Guard, read_columns
from cdc.rules.bind import bind
from cdc.rules.compile import compile_rule, stage_table
from cdc.rules.parse import parse_rule

SRC_DDL = {
    "mysql": ["CREATE TABLE u (id INT PRIMARY KEY, v INT, note VARCHAR(40), spare INT)",
              "CREATE TABLE other (id INT PRIMARY KEY, x INT NOT NULL)"],
    "postgresql": ["CREATE TABLE u (id integer PRIMARY KEY, v integer, note text, spare integer)",
                   "CREATE TABLE other (id integer PRIMARY KEY, x integer NOT NULL)"],
}
TGT_DDL = {
    "postgresql": ["CREATE TABLE t_u (id integer PRIMARY KEY, v2 integer, note text)",
                   "CREATE TABLE t_other (id integer PRIMARY KEY, x integer NOT NULL)"],
    "mysql": ["CREATE TABLE t_u (id INT PRIMARY KEY, v2 INT, note VARCHAR(40))",
              "CREATE TABLE t_other (id INT PRIMARY KEY, x INT NOT NULL)"],
}
U_RULE = "INSERT INTO t_u (id, v2, note)\nSELECT u.id, u.{col} * 2, u.note FROM u AS u\n"
OTHER_RULE = "INSERT INTO t_other (id, x) SELECT o.id, o.x FROM other AS o\n"
DIRECTIONS = [("mysql", "postgresql"), ("postgresql", "postgresql"), ("postgresql", "mysql")]


def _compiled(sql: str, options: RuleOptions | None = None) -> Any:
    src = TableSchema("db", "u", tuple(Column(c, "int", True, "int") for c in
                                       ("id", "v", "note", "spare", "k")), ("id",))
    tgt = TableSchema("db", "t_u", tuple(Column(c, "int", True, "int") for c in
                                         ("id", "v2", "note")), ("id",))
    look = TableSchema("db", "look", (Column("k", "int", True, "int"),
                                      Column("label", "int", True, "int")), ("k",))
    rule = parse_rule("u_rule", "u_rule.sql", sql, "mysql")
    bound = bind(rule, src, tgt, {"look": look}, options or RuleOptions(), lambda n: n == "u")
    return compile_rule(bound, stage_table(src, "u", 0, "mysql", "postgresql"), 0,
                        "postgresql")


def test_read_columns_are_what_the_rule_reads() -> None:
    c = _compiled("INSERT INTO t_u (id, v2, note) SELECT u.id, l.label, (SELECT max(x.label) "
                  "FROM look AS x WHERE x.k = u.spare) FROM u AS u LEFT JOIN look AS l "
                  "ON l.k = u.k WHERE note > 0",
                  RuleOptions(validate=("v IS NOT NULL",)))
    # select list, a correlated subquery, the join, WHERE and validate; not the lookups'.
    assert read_columns(c) == {"id", "spare", "k", "note", "v"}
    assert read_columns(_compiled("INSERT INTO t_u (id, v2, note) SELECT u.id, 1, 2 FROM u AS u")
                        ) == {"id"}


def test_guard_parks_from_the_first_change_without_the_column() -> None:
    from cdc.batch import Batch
    from cdc.config import DatabaseUrl
    from cdc.events import RowChange, Transaction
    from cdc.plan import Plan
    from cdc.positions import BinlogPosition

    c = _compiled("INSERT INTO t_u (id, v2, note) SELECT u.id, u.v, u.note FROM u AS u")
    url = DatabaseUrl.parse("mysql://x@h/db")
    cfg = Config(path=Path("p.yaml"), pipeline="p", source=url, target=url, rules_dir=Path("r"))
    plan = Plan(rules=[c], stages={"u": c.stage}, by_table={"u": [c]})
    guard = Guard(cfg, plan, [])
    old = {"id": 1, "v": 1, "note": 1, "spare": 1, "k": 1}
    new = {"id": 1, "note": 2, "spare": 1, "k": 1}  # v dropped
    key_only = {"id": 1}
    batch = Batch()
    for i, ch in enumerate([RowChange("u", "U", old, old), RowChange("x", "I", None, {"a": 1}),
                            RowChange("u", "D", key_only, None, partial_before=True),
                            RowChange("u", "U", new, new), RowChange("u", "I", None, old)]):
        batch.add(Transaction([ch], BinlogPosition("b.1", 100 + i)))
    parking = guard.filter(batch)
    kept = [(ch.table, ch.op) for tx in batch.transactions for ch in tx.changes]
    # The key-only delete is not judged; from the first image without v on,
    # every change of u is parked, in order, even one that has v again.
    assert kept == [("u", "U"), ("x", "I"), ("u", "D")]
    assert batch.rows == 3
    assert [(t, seq, op) for t, seq, _, op, _ in parking.rows] == [("u", 1, "U"), ("u", 2, "I")]
    assert [(t, r) for t, r, _, _ in parking.paused] == [("u", "u_rule")]
    assert "rule u_rule reads column(s) v" in parking.paused[0][2]
    assert guard.paused_rules == 1 and "u" not in guard.live_plan().stages


def _teardown(cfg: Path) -> None:
    from cdc.sources.postgres import PostgresSource

    c = load(cfg)
    if c.source.kind == "postgresql":
        PostgresSource(c.source.libpq(), slot=c.slot, publication=c.publication,
                       tables=["u", "other"]).teardown()


@pytest.fixture(params=DIRECTIONS, ids=lambda d: f"{d[0]}-to-{d[1]}")
def pipe(request: Any, tmp_path: Path, make_mysql_db: Any,
         make_pg_db: Any) -> Iterator[tuple[Any, Any, Path]]:
    s_kind, t_kind = request.param
    src = make_mysql_db() if s_kind == "mysql" else make_pg_db()
    tgt = make_mysql_db() if t_kind == "mysql" else make_pg_db()
    for s in SRC_DDL[s_kind]:
        src.execute(s)
    for s in TGT_DDL[t_kind]:
        tgt.execute(s)
    cfg = write_pipeline(tmp_path, src.url, tgt.url,
                         {"u_rule": U_RULE.format(col="v"), "other_rule": OTHER_RULE},
                         name=f"sc_{src.name}")
    cdc("setup", "-c", str(cfg))
    try:
        yield src, tgt, cfg
    finally:
        _teardown(cfg)


def lag(cfg: Path) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(cdc("lag", "-c", str(cfg), "--json").stdout)
    return out


def target_u(tgt: Any) -> list[tuple[Any, ...]]:
    return sorted((int(i), None if v is None else int(v), n)
                  for i, v, n in tgt.query("SELECT id, v2, note FROM t_u"))


def target_other(tgt: Any) -> list[tuple[int, int]]:
    return sorted((int(i), int(x)) for i, x in tgt.query("SELECT id, x FROM t_other"))


def source_other(src: Any) -> list[tuple[int, int]]:
    return sorted((int(i), int(x)) for i, x in src.query("SELECT id, x FROM other"))


def wait_for(what: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


@pytest.mark.parametrize("change", ["drop", "rename"])
def test_read_column_vanishes_pauses_parks_and_resumes(pipe: tuple[Any, Any, Path],
                                                       tmp_path: Path, change: str) -> None:
    src, tgt, cfg = pipe
    log = tmp_path / "run.log"
    daemon = DaemonProcess(cfg, log)
    daemon.start()
    try:
        src.execute("INSERT INTO u (id, v, note) VALUES " + ", ".join(
            f"({i}, {i}, 'n{i}')" for i in range(1, 21)))
        src.execute("INSERT INTO other VALUES (1, 1), (2, 2)")
        wait_caught_up(load(cfg))
        before = target_u(tgt)
        assert before == [(i, 2 * i, f"n{i}") for i in range(1, 21)]

        if change == "drop":
            src.execute("ALTER TABLE u DROP COLUMN v")
            src.execute("UPDATE u SET note = concat(note, '!') WHERE id <= 10")
            src.execute("INSERT INTO u (id, note) VALUES (21, 'n21')")
        else:
            src.execute("ALTER TABLE u RENAME COLUMN v TO w")
            src.execute("UPDATE u SET w = w + 100, note = concat(note, '!') WHERE id <= 10")
            src.execute("INSERT INTO u (id, w, note) VALUES (21, 21, 'n21')")
        src.execute("DELETE FROM u WHERE id = 20")
        src.execute("INSERT INTO other VALUES (3, 3)")
        wait_caught_up(load(cfg))
        # The other table streams; the paused one is untouched: no NULL, no delete.
        assert target_other(tgt) == source_other(src) == [(1, 1), (2, 2), (3, 3)]
        assert target_u(tgt) == before
        report = lag(cfg)
        assert [(p["rule"], p["table"], p["parked"]) for p in report["paused"]] == [
            ("u_rule", "u", 12)]
        assert "column(s) v" in report["paused"][0]["reason"]
        assert report["paused"][0]["since"]
        text = log.read_text()
        assert "WARNING" in text and "rule u_rule reads column(s) v" in text
        assert "PAUSED" in text
        status = cdc("status", "-c", str(cfg)).stdout
        assert "rule u_rule (source table u)" in status and "12 changes parked" in status

        # kill -9 while paused, more changes, restart with the rule still broken.
        daemon.kill9()
        src.execute("UPDATE u SET note = concat(note, '?') WHERE id BETWEEN 11 AND 13")
        src.execute("INSERT INTO other VALUES (4, 4)")
        daemon.start()
        wait_for(lambda: "streaming pipeline" in log.read_text().split("stays paused")[-1])
        wait_caught_up(load(cfg))
        assert target_other(tgt) == source_other(src)
        assert target_u(tgt) == before
        report = lag(cfg)
        assert [p["parked"] for p in report["paused"]] == [15], "parked once each"
        assert "stays paused" in log.read_text()

        # A reload whose rule still reads a vanished column: still paused.
        rule_file = tmp_path / "rules" / "u_rule.sql"
        rule_file.write_text(U_RULE.format(col="nope"))
        stays = log.read_text().count("stays paused")
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: log.read_text().count("stays paused") > stays)
        assert "no column 'nope'" in log.read_text().split("reload requested")[-1]
        wait_caught_up(load(cfg))
        assert [p["parked"] for p in lag(cfg)["paused"]] == [15]
        assert target_u(tgt) == before

        # Fix the rule, reload: the parked changes apply in order, then the stream.
        fixed = "-1" if change == "drop" else "u.w * 2"
        (tmp_path / "rules" / "u_rule.sql").write_text(
            "INSERT INTO t_u (id, v2, note)\nSELECT u.id, " + fixed + ", u.note FROM u AS u\n")
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "source table u resumed" in log.read_text())
        src.execute("UPDATE u SET note = 'last' WHERE id = 1")
        wait_caught_up(load(cfg))
        assert lag(cfg)["paused"] == []
        col = "-1" if change == "drop" else "w * 2"
        expect = sorted((int(i), int(v), n) for i, v, n in
                        src.query(f"SELECT id, {col}, note FROM u"))  # noqa: S608
        got = target_u(tgt)
        # Rows changed since the pause are what the new rule makes of them; the
        # others keep what the old rule made (until `cdc snapshot --table u`).
        touched = set(range(1, 14)) | {21}
        assert [r for r in got if r[0] in touched] == [r for r in expect if r[0] in touched]
        assert [r for r in got if r[0] not in touched] == [r for r in before
                                                           if r[0] not in touched | {20}]
        if change == "rename":
            assert got == expect
        assert (1, expect[0][1], "last") in got and not any(r[0] == 20 for r in got)
        if change == "rename":
            # Order held: the update after the rename (+100) came through.
            assert (5, 210, "n5!") in got
        assert tgt.query("SELECT count(*) FROM " + (
            "cdc.parked_changes" if load(cfg).target.kind == "postgresql"
            else "cdc_parked_changes"))[0][0] == 0
    finally:
        assert daemon.terminate() == 0, log.read_text()[-3000:]


def test_unread_column_dropped_does_not_pause(pipe: tuple[Any, Any, Path]) -> None:
    src, tgt, cfg = pipe
    with PipelineThread(cfg) as p:
        src.execute("INSERT INTO u (id, v, note, spare) VALUES (1, 1, 'a', 5), (2, 2, 'b', 6)")
        p.wait_caught_up()
        src.execute("ALTER TABLE u DROP COLUMN spare")
        src.execute("UPDATE u SET v = 10 WHERE id = 1")
        src.execute("ALTER TABLE u ADD COLUMN extra integer")
        src.execute("INSERT INTO u (id, v, note, extra) VALUES (3, 3, 'c', 9)")
        p.wait_caught_up()
    assert target_u(tgt) == [(1, 20, "a"), (2, 4, "b"), (3, 6, "c")]
    assert lag(cfg)["paused"] == []


@pytest.mark.parametrize("where", ["pipeline", "rule"])
def test_lenient_writes_null(tmp_path: Path, make_pg_db: Any, where: str,
                             caplog: pytest.LogCaptureFixture) -> None:
    src, tgt = make_pg_db(), make_pg_db()
    for s in SRC_DDL["postgresql"]:
        src.execute(s)
    for s in TGT_DDL["postgresql"]:
        tgt.execute(s)
    extra = ("schema_changes: lenient\n" if where == "pipeline"
             else "rule_options:\n  u_rule:\n    schema_changes: lenient\n")
    cfg = write_pipeline(tmp_path, src.url, tgt.url,
                         {"u_rule": U_RULE.format(col="v"), "other_rule": OTHER_RULE},
                         name=f"len_{src.name}", extra=extra)
    cdc("setup", "-c", str(cfg))
    try:
        with PipelineThread(cfg) as p:
            src.execute("INSERT INTO u (id, v, note) VALUES (1, 1, 'a'), (2, 2, 'b')")
            p.wait_caught_up()
            src.execute("ALTER TABLE u DROP COLUMN v")
            src.execute("UPDATE u SET note = 'A' WHERE id = 1")
            src.execute("INSERT INTO other VALUES (1, 1)")
            p.wait_caught_up()
            src.execute("UPDATE u SET note = 'B' WHERE id = 2")
            p.wait_caught_up()
        assert target_u(tgt) == [(1, None, "A"), (2, None, "B")]
        said = [r for r in caplog.records if "lenient streams on" in r.getMessage()]
        assert len(said) == 1 and said[0].levelname == "WARNING"
        assert "rule u_rule reads column(s) v" in said[0].getMessage()
        assert target_other(tgt) == [(1, 1)]
        assert lag(cfg)["paused"] == []
    finally:
        _teardown(cfg)


@pytest.mark.parametrize("kinds", [("postgresql", "postgresql"), ("postgresql", "mysql"),
                                   ("mysql", "postgresql")], ids=lambda d: f"{d[0]}-to-{d[1]}")
def test_type_change_of_read_column_pauses_until_reload(tmp_path: Path, make_pg_db: Any,
                                                        make_mysql_db: Any,
                                                        kinds: tuple[str, str]) -> None:
    """PostgreSQL's Relation message carries type OIDs, MariaDB's table map
    binlog types: a read column changing type pauses (conservatively, even a
    widening); a reload rebuilds the staging from the new type and the parked
    changes apply."""
    s_kind, t_kind = kinds
    src = make_pg_db() if s_kind == "postgresql" else make_mysql_db()
    tgt = make_pg_db() if t_kind == "postgresql" else make_mysql_db()
    for s in SRC_DDL[s_kind]:
        src.execute(s)
    for s in TGT_DDL[t_kind]:
        tgt.execute(s)
    cfg = write_pipeline(tmp_path, src.url, tgt.url,
                         {"u_rule": U_RULE.format(col="v"), "other_rule": OTHER_RULE},
                         name=f"ty_{src.name}")
    cdc("setup", "-c", str(cfg))
    log = tmp_path / "run.log"
    daemon = DaemonProcess(cfg, log)
    daemon.start()
    try:
        src.execute("INSERT INTO u (id, v, note) VALUES (1, 1, 'a'), (2, 2, 'b')")
        wait_caught_up(load(cfg))
        src.execute("ALTER TABLE u ALTER COLUMN v TYPE bigint" if s_kind == "postgresql"
                    else "ALTER TABLE u MODIFY v BIGINT")
        src.execute("UPDATE u SET v = 1000000 WHERE id = 1")
        src.execute("INSERT INTO other VALUES (1, 1)")
        wait_caught_up(load(cfg))
        assert target_other(tgt) == [(1, 1)]
        assert target_u(tgt) == [(1, 2, "a"), (2, 4, "b")]
        report = lag(cfg)
        assert [(p["rule"], p["parked"]) for p in report["paused"]] == [("u_rule", 1)]
        assert ("v integer -> int8" if s_kind == "postgresql" else "v long -> longlong"
                ) in report["paused"][0]["reason"]
        # The same rule, reloaded: planned against bigint now.
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "source table u resumed" in log.read_text())
        src.execute("UPDATE u SET v = 7 WHERE id = 2")
        wait_caught_up(load(cfg))
        assert target_u(tgt) == [(1, 2000000, "a"), (2, 14, "b")]
        assert lag(cfg)["paused"] == []
    finally:
        assert daemon.terminate() == 0, log.read_text()[-3000:]
        _teardown(cfg)


def test_paused_rule_metric_and_lag_check(tmp_path: Path, mysql_db: Any, pg_db: Any) -> None:
    import urllib.request

    from cdc.devservers import free_port

    for s in SRC_DDL["mysql"]:
        mysql_db.execute(s)
    for s in TGT_DDL["postgresql"]:
        pg_db.execute(s)
    port = free_port()
    cfg = write_pipeline(tmp_path, mysql_db.url, pg_db.url,
                         {"u_rule": U_RULE.format(col="v"), "other_rule": OTHER_RULE},
                         extra=f"metrics:\n  address: 127.0.0.1:{port}\n")
    cdc("setup", "-c", str(cfg))
    log = tmp_path / "run.log"
    daemon = DaemonProcess(cfg, log)
    daemon.start()

    def metric() -> str:
        try:
            body: str = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2
                                               ).read().decode()
        except OSError:
            return ""
        return next((ln for ln in body.splitlines() if ln.startswith("cdc_paused_rules{")), "")

    try:
        mysql_db.execute("INSERT INTO u (id, v, note) VALUES (1, 1, 'a')")
        wait_caught_up(load(cfg))
        wait_for(lambda: metric() == 'cdc_paused_rules{pipeline="p"} 0.0')
        assert cdc("lag", "-c", str(cfg), "--max-seconds", "3600").returncode == 0
        mysql_db.execute("ALTER TABLE u DROP COLUMN v")
        mysql_db.execute("UPDATE u SET note = 'b' WHERE id = 1")
        wait_caught_up(load(cfg))
        wait_for(lambda: metric() == 'cdc_paused_rules{pipeline="p"} 1.0')
        check = cdc("lag", "-c", str(cfg), "--max-seconds", "3600", check=False)
        assert check.returncode == 1 and "PAUSED rule u_rule" in check.stdout
        assert pg_db.query("SELECT id, v2, note FROM t_u") == [(1, 2, "a")]
    finally:
        assert daemon.terminate() == 0, log.read_text()[-3000:]


def test_parked_form_keeps_values() -> None:
    from datetime import UTC, date, datetime, timedelta
    from decimal import Decimal

    from cdc.events import UNCHANGED, RowChange
    from cdc.pause import decode_change, encode_change

    after = {"id": 1, "d": Decimal("1.50"), "nan": Decimal("NaN"), "f": float("inf"),
             "b": b"\x00\x00", "s": {"a", "b"}, "e": set(), "t": datetime(2024, 1, 2, tzinfo=UTC),
             "day": date(2024, 2, 29), "dur": timedelta(hours=-1, seconds=3),
             "j": {"k": [1, "x"]}, "arr": ["a", None], "u": UNCHANGED, "n": None, "txt": "Zoë"}
    ch = RowChange("u", "U", {"id": 1}, after, True)
    back = decode_change("u", "U", encode_change(ch))
    assert back.before == {"id": 1} and back.partial_before
    assert back.after is not None
    nan = back.after.pop("nan")
    assert isinstance(nan, Decimal) and nan.is_nan()
    assert back.after == {k: v for k, v in after.items() if k != "nan"}


def test_schema_changes_config(tmp_path: Path) -> None:
    from cdc.errors import ConfigError

    base = ("pipeline: p\nsource: {url: 'mysql://u@h/s'}\ntarget: {url: 'postgresql://u@h/t'}\n"
            "rules: r/\n")
    p = tmp_path / "p.yaml"
    p.write_text(base)
    c = load(p)
    assert c.schema_changes == "pause" and c.schema_changes_for("any") == "pause"
    p.write_text(base + "schema_changes: lenient\nrule_options:\n  a:\n    schema_changes: pause\n")
    c = load(p)
    assert c.schema_changes_for("a") == "pause" and c.schema_changes_for("b") == "lenient"
    p.write_text(base + "schema_changes: ignore\n")
    with pytest.raises(ConfigError, match="schema_changes must be 'pause'"):
        load(p)
    p.write_text(base + "rule_options:\n  a:\n    schema_changes: nulls\n")
    with pytest.raises(ConfigError, match=r"rule_options.a.schema_changes must be one of pause"):
        load(p)


def test_kill_9_while_draining_applies_each_parked_change_once(tmp_path: Path, mysql_db: Any,
                                                               pg_db: Any) -> None:
    """Parked changes drain in chunks, each with the deletion of what it
    applied: a kill -9 in the middle leaves the rest parked, in order."""
    for s in SRC_DDL["mysql"]:
        mysql_db.execute(s)
    for s in TGT_DDL["postgresql"]:
        pg_db.execute(s)
    # A counter in the target shows how often each row was written.
    pg_db.execute("ALTER TABLE t_u ADD COLUMN writes integer NOT NULL DEFAULT 0")
    pg_db.execute("CREATE FUNCTION count_writes() RETURNS trigger LANGUAGE plpgsql AS $$ "
                  "BEGIN NEW.writes := coalesce(OLD.writes, 0) + 1; RETURN NEW; END $$")
    pg_db.execute("CREATE TRIGGER w BEFORE INSERT OR UPDATE ON t_u FOR EACH ROW "
                  "EXECUTE FUNCTION count_writes()")
    cfg = write_pipeline(tmp_path, mysql_db.url, pg_db.url,
                         {"u_rule": U_RULE.format(col="v"), "other_rule": OTHER_RULE},
                         extra="batch:\n  max_rows: 100\n")
    cdc("setup", "-c", str(cfg))
    log = tmp_path / "run.log"
    daemon = DaemonProcess(cfg, log)
    daemon.start()
    try:
        mysql_db.execute("INSERT INTO u (id, v, note) VALUES (0, 0, 'x')")
        wait_caught_up(load(cfg))
        mysql_db.execute("ALTER TABLE u RENAME COLUMN v TO w")
        # 1500 inserts, one change (and so one write) per row.
        for start in range(1, 1501, 100):
            mysql_db.execute("INSERT INTO u (id, w, note) VALUES " + ", ".join(
                f"({i}, {i}, 'n{i}')" for i in range(start, start + 100)))
        wait_caught_up(load(cfg))
        assert [p["parked"] for p in lag(cfg)["paused"]] == [1500]
        (tmp_path / "rules" / "u_rule.sql").write_text(U_RULE.format(col="w"))
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: (pg_db.query("SELECT count(*) FROM t_u")[0][0] > 1
                          or "resumed" in log.read_text()), timeout=60)
        daemon.kill9()
        left = pg_db.query("SELECT count(*) FROM cdc.parked_changes")[0][0]
        applied = pg_db.query("SELECT count(*) FROM t_u")[0][0] - 1
        assert left + applied == 1500, "a chunk applies and unparks in one transaction"
        daemon.start()
        wait_for(lambda: "source table u resumed" in log.read_text())
        wait_caught_up(load(cfg))
    finally:
        assert daemon.terminate() == 0, log.read_text()[-3000:]
    assert pg_db.query("SELECT count(*), min(writes), max(writes) FROM t_u WHERE id > 0") == [
        (1500, 1, 1)]
    assert pg_db.query("SELECT count(*) FROM cdc.parked_changes") == [(0,)]
    assert lag(cfg)["paused"] == []


@pytest.mark.parametrize("saved", [True, False], ids=["shape-saved", "no-saved-shape"])
@pytest.mark.parametrize("pipe", DIRECTIONS[:2], indirect=True,
                         ids=lambda d: f"{d[0]}-to-{d[1]}")
def test_column_dropped_while_cdc_was_stopped(pipe: tuple[Any, Any, Path],
                                              tmp_path: Path, saved: bool) -> None:
    """The rule no longer binds against today's catalog.  With the shape the
    last start saved (the normal case), the changes made before the DROP apply
    through the rule as it was and the table pauses at the first change
    without the column; the differential test once found them parked and later
    applied through the fixed rule, which wrote the wrong value.  Without a
    saved shape (a column dropped before this version's first start), the
    table starts paused and its changes from before the drop are parked too.
    The other table streams either way."""
    src, tgt, cfg = pipe
    log = tmp_path / "run.log"
    daemon = DaemonProcess(cfg, log)
    daemon.start()
    src.execute("INSERT INTO u (id, v, note) VALUES " + ", ".join(
        f"({i}, {i}, 'n{i}')" for i in range(1, 11)))
    wait_caught_up(load(cfg))
    assert daemon.terminate() == 0
    before = target_u(tgt)
    if not saved:
        tgt.execute("DELETE FROM " + ("cdc.source_schemas" if tgt.kind == "postgresql"
                                      else "cdc_source_schemas"))
    src.execute("UPDATE u SET v = v + 1, note = 'pre' WHERE id <= 5")
    src.execute("ALTER TABLE u DROP COLUMN v")
    src.execute("UPDATE u SET note = 'post' WHERE id BETWEEN 4 AND 8")
    src.execute("INSERT INTO other VALUES (1, 1)")
    daemon.start()
    try:
        wait_for(lambda: log.read_text().count("streaming pipeline") == 2)
        wait_caught_up(load(cfg))
        assert target_other(tgt) == [(1, 1)]
        pre = {i: (i, (i + 1) * 2, "pre") for i in range(1, 6)}
        if saved:
            assert target_u(tgt) == sorted(pre.get(r[0], r) for r in before)
        else:
            assert target_u(tgt) == before
        report = lag(cfg)
        assert [(p["rule"], p["parked"]) for p in report["paused"]] == [
            ("u_rule", 5 if saved else 10)]
        assert ("no longer carry" if saved else "while cdc was stopped or behind") \
            in report["paused"][0]["reason"]
        (tmp_path / "rules" / "u_rule.sql").write_text(
            "INSERT INTO t_u (id, v2, note)\nSELECT u.id, -1, u.note FROM u AS u\n")
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "source table u resumed" in log.read_text())
        wait_caught_up(load(cfg))
    finally:
        assert daemon.terminate() == 0, log.read_text()[-3000:]
    notes = {int(i): n for i, n in src.query("SELECT id, note FROM u")}
    fixed = range(4, 9) if saved else range(1, 9)
    want = [(i, -1, notes[i]) if i in fixed else pre[i] if saved and i in pre else r
            for i, r in ((r[0], r) for r in before)]
    assert target_u(tgt) == sorted(want)
    assert lag(cfg)["paused"] == []


def test_mysql_table_map_type_changes_are_noted() -> None:
    from types import SimpleNamespace

    from pymysqlreplication.constants import FIELD_TYPE

    from cdc.sources.mysql import MySQLSource

    src = MySQLSource.__new__(MySQLSource)
    src._shapes = {}
    retyped: dict[str, Any] = {}

    def cols(*spec: tuple[str, int, bool]) -> list[Any]:
        return [SimpleNamespace(name=n, type=t, unsigned=u) for n, t, u in spec]

    src._note_shape("u", cols(("id", FIELD_TYPE.LONG, False), ("v", FIELD_TYPE.LONG, False)),
                    retyped)
    src._note_shape("u", cols(("id", FIELD_TYPE.LONG, False), ("v", FIELD_TYPE.LONG, False),
                              ("new", FIELD_TYPE.BLOB, False)), retyped)
    assert retyped == {}, "an added column is no type change"
    src._note_shape("u", cols(("id", FIELD_TYPE.LONG, True), ("v", FIELD_TYPE.VARCHAR, False)),
                    retyped)
    assert retyped == {"u": (("id", "long", "long unsigned"), ("v", "long", "varchar"))}
