"""`cdc verify`: compare the source, mapped through the rules, with the target.

For each rule the whole source table is read in key order (the snapshot's
chunk reader), staged and mapped by the rule's own SQL exactly as streaming
does, and collected in a temporary table on the target.  Then, by target key:

* missing   -- the rule yields the row, the target lacks it;
* different -- both have it, some column differs (NULL-safe comparison);
* extra     -- the target has a key the rule no longer yields (only counted
  when no other rule writes the same target table).

``repair`` upserts the missing and different rows and deletes the extra ones,
in one target transaction per rule.  A running `cdc run` is paused (shared
lock on the offset row, as for snapshot chunks) while the comparison and the
repair are taken, so they see a consistent point of the stream.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from cdc.config import Config
from cdc.events import RowChange
from cdc.plan import attach_converters, build_plan, chosen_tables, parse_rules
from cdc.rules.compile import CompiledRule, ident, table_sql, target_dialect
from cdc.snapshot import ChunkReader, ProgressCallback, TableProgress, estimate_rows
from cdc.sources import open_source
from cdc.targets import open_target

log = logging.getLogger("cdc.verify")


@dataclass(slots=True)
class RuleReport:
    rule: str
    source_table: str
    target_table: str
    expected: int = 0
    missing: int = 0
    different: int = 0
    extra: int | None = 0
    samples: list[str] = field(default_factory=list)
    repaired: bool = False

    @property
    def ok(self) -> bool:
        return not (self.missing or self.different or self.extra)


def verify(config: Config, tables: list[str] | None = None, repair: bool = False,
           chunk_rows: int | None = None,
           progress: ProgressCallback | None = None) -> list[RuleReport]:
    """``progress`` is called after each chunk with the rows compared so far
    (per rule: a table read by two rules is read twice), and once at the end."""
    rules = parse_rules(config)
    source = open_source(config, sorted({r.source.name for r in rules}))
    target = open_target(config)
    reports: list[RuleReport] = []
    try:
        target.require_schema()
        plan = build_plan(config, source, target, rules)
        attach_converters(plan, config)
        chosen = chosen_tables(plan, tables)
        writers: dict[str, int] = {}
        for c in plan.rules:
            writers[c.bound.rule.target.name] = writers.get(c.bound.rule.target.name, 0) + 1
        for t in chosen:
            several = len(plan.by_table[t]) > 1
            for c in plan.by_table[t]:
                prog = TableProgress(f"{t} (rule {c.name})" if several else t,
                                     rows_estimated=estimate_rows(config, source, t))
                reports.append(_verify_rule(config, target, plan, c, repair,
                                            writers[c.bound.rule.target.name] == 1,
                                            chunk_rows or config.snapshot_chunk_rows,
                                            prog, progress))
    finally:
        source.close()
        target.close()
    return reports


def _verify_rule(config: Config, target: Any, plan: Any, c: CompiledRule, repair: bool,
                 sole_writer: bool, chunk_rows: int, prog: TableProgress,
                 progress: ProgressCallback | None) -> RuleReport:
    d = target_dialect(config.target.kind)
    q = lambda n: ident(n, d)  # noqa: E731
    stage = c.stage
    table = stage.source_name
    rep = RuleReport(c.name, table, c.bound.rule.target.name)
    exp_name = f"_cdc_verify_{c.result_name}"
    cols = [q(x) for x in c.bound.columns]
    keys = [q(k) for k in c.bound.key]
    tgt = table_sql(c.bound.rule.target.name, d)
    reader = ChunkReader(config, table, stage.columns, list(stage.source.row_key),
                         None, chunk_rows)
    try:
        with target.transaction() as conn:
            target.lock_offset_shared(conn)
            _exec(conn, f"DROP TEMPORARY TABLE IF EXISTS {q(exp_name)}" if d == "mysql"
                  else f"DROP TABLE IF EXISTS pg_temp.{q(exp_name)}")
            # Same shape as the rule's result table, kept across chunks.
            target.prepare_tables(conn, [stage], [c])
            _exec(conn, f"CREATE TEMPORARY TABLE {q(exp_name)} AS SELECT * FROM "
                        f"{q(c.result_name)} WHERE 1 = 0")
            last = None
            while True:
                chunk = reader.read(last)
                rows = chunk.rows
                if not rows:
                    break
                changes = [RowChange(table, "I", None, dict(zip(stage.columns, r, strict=True)))
                           for r in rows]
                # Stage and map only: the rule's fill, never its delete/upsert.
                target.stage_only(conn, stage, changes, plan.converters.get(table))
                _exec(conn, f"DELETE FROM {q(c.result_name)}")
                _exec(conn, c.fill)
                _exec(conn, f"INSERT INTO {q(exp_name)} SELECT * FROM {q(c.result_name)}")
                last = chunk.last_key
                prog.rows_done += len(rows)
                prog.chunks_done += 1
                if progress:
                    progress(prog)
                if len(rows) < chunk_rows:
                    break
            match = " AND ".join(f"t.{k} = e.{k}" for k in keys)
            differs = " OR ".join(
                (f"NOT (t.{x} <=> e.{x})" if d == "mysql" else f"t.{x} IS DISTINCT FROM e.{x}")
                for x in cols if x not in keys) or "FALSE"
            rep.expected = _scalar(conn, f"SELECT COUNT(*) FROM {q(exp_name)}")
            rep.missing = _scalar(conn, f"SELECT COUNT(*) FROM {q(exp_name)} AS e WHERE NOT "
                                        f"EXISTS (SELECT 1 FROM {tgt} AS t WHERE {match})")
            rep.different = _scalar(conn, f"SELECT COUNT(*) FROM {q(exp_name)} AS e JOIN {tgt} "
                                          f"AS t ON {match} WHERE {differs}")
            if sole_writer:
                rep.extra = _scalar(conn, f"SELECT COUNT(*) FROM {tgt} AS t WHERE NOT EXISTS "
                                          f"(SELECT 1 FROM {q(exp_name)} AS e WHERE {match})")
            else:
                rep.extra = None
            key_list = ", ".join(f"e.{k}" for k in keys)
            rep.samples = [" / ".join(str(v) for v in r) for r in _rows(
                conn, f"SELECT {key_list} FROM {q(exp_name)} AS e WHERE NOT EXISTS (SELECT 1 "
                      f"FROM {tgt} AS t WHERE {match}) LIMIT 5")]
            if repair and not rep.ok:
                if rep.extra:
                    _exec(conn, f"DELETE FROM {tgt} WHERE ({', '.join(keys)}) NOT IN (SELECT "
                                f"{', '.join(keys)} FROM {q(exp_name)})" if d == "postgres" else
                          f"DELETE t FROM {tgt} AS t LEFT JOIN {q(exp_name)} AS e ON {match} "
                          f"WHERE e.{keys[0]} IS NULL")
                # The rule's own upsert, fed from the collected rows.
                _exec(conn, f"DELETE FROM {q(c.result_name)}")
                _exec(conn, f"INSERT INTO {q(c.result_name)} SELECT * FROM {q(exp_name)}")
                for stmt in (c.update, c.upsert):
                    if stmt:
                        _exec(conn, stmt)
                rep.repaired = True
            _exec(conn, f"DROP TEMPORARY TABLE IF EXISTS {q(exp_name)}" if d == "mysql"
                  else f"DROP TABLE IF EXISTS pg_temp.{q(exp_name)}")
    finally:
        reader.close()
    prog.finished = time.monotonic()
    if progress:
        progress(prog)
    return rep


def _exec(conn: Any, query: str) -> Any:
    return conn.execute(query.encode() if hasattr(conn, "pgconn") else query)


def _rows(conn: Any, query: str) -> list[tuple[Any, ...]]:
    return list(_exec(conn, query).fetchall())


def _scalar(conn: Any, query: str) -> int:
    row = _exec(conn, query).fetchone()
    return int(row[0]) if row else 0
