"""`cdc preview`: the rules on sampled live source rows, with nothing written.

For each source table a few rows are read in key order (the snapshot's chunk
reader, on a read-only session) and, inside one target transaction that is
always rolled back:

1. staged and mapped by each rule's own ``fill`` (what streaming runs): the
   target row each source row becomes, and the target row it would replace;
2. rows the rule drops are traced through ``filter_probes`` (its inner lookup
   joins one at a time, then its WHERE) to say which one dropped them;
3. applied by the target's ``apply`` (validations, constraints, bisection of
   the failing rows), with the dead letters kept in memory instead of the
   dead-letter table and no offset written, then mapped again to read the
   target rows as they would be.

Temporary tables are dropped (MySQL's are not transactional) and the target
connection is closed, so nothing outlives the preview.  Sequences and
AUTO_INCREMENT counters a target insert draws from are not transactional in
either database: a preview may advance them (docs/rules.md).
"""

from __future__ import annotations

import contextlib
import datetime as dt
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError

from cdc.batch import Batch
from cdc.config import Config
from cdc.errors import CdcError, ConfigError, TerminalError
from cdc.events import RowChange, Transaction
from cdc.plan import Plan, attach_converters, build_plan, chosen_tables, parse_rules
from cdc.positions import BinlogPosition
from cdc.rules.compile import SEQ, CompiledRule, filter_probes, ident, table_sql, target_dialect
from cdc.rules.parse import sqlglot_dialect
from cdc.snapshot import ChunkReader
from cdc.sources import open_source
from cdc.targets import open_target
from cdc.targets.isolate import seq_to_index

OUTCOMES = ("insert", "update", "unchanged", "dead_letter", "filtered", "superseded")

# Nodes a --where may not hold anywhere: it only ever reads.
_WRITES: tuple[type[exp.Expr], ...] = (exp.DML, exp.Create, exp.Drop, exp.Alter, exp.Command,
                                       exp.Into, exp.Set, exp.Transaction, exp.Commit,
                                       exp.Rollback, exp.Use, exp.Copy, exp.LoadData)


@dataclass(slots=True)
class PreviewRow:
    """One sampled source row through one rule."""

    outcome: str  # one of OUTCOMES
    source: dict[str, Any]
    # The target row it becomes (the rule's columns); for a dead letter the
    # row it was computed to be, for a filtered row None.
    target: dict[str, Any] | None = None
    # The target row with that key before, when there was one.
    before: dict[str, Any] | None = None
    reason: str | None = None


@dataclass(slots=True)
class RulePreview:
    rule: str
    source_table: str
    target_table: str
    key: list[str]
    rows: list[PreviewRow] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {o: n for o in OUTCOMES if (n := sum(r.outcome == o for r in self.rows))}


class _RollBack(Exception):
    """Raised inside the preview's target transaction so that it rolls back."""


def check_where(where: str, source_kind: str) -> str:
    """A --where as SQL the source runs: exactly one boolean expression, that
    writes nothing, rendered back from its parse tree (comments dropped, so
    MySQL's executable ``/*! … */`` comments cannot smuggle anything in)."""
    d = sqlglot_dialect(source_kind)
    try:
        trees = sqlglot.parse(where, read=d)
    except (ParseError, TokenError) as e:
        raise ConfigError(f"--where {where!r} is not a valid condition: "
                          f"{str(e).splitlines()[0]}") from None
    if len([t for t in trees if t is not None]) != 1 or trees[0] is None:
        raise ConfigError(f"--where {where!r}: expected exactly one condition (no ';')")
    tree = trees[0]
    inner = tree.unnest() if isinstance(tree, exp.Paren) else tree
    if not isinstance(inner, exp.Predicate | exp.Connector | exp.Not | exp.Boolean
                      | exp.Column | exp.Xor):
        raise ConfigError(f"--where {where!r}: not a condition (a comparison, IN, LIKE, "
                          "IS NULL, BETWEEN, EXISTS, … joined by AND / OR / NOT)")
    bad = next((n for n in tree.walk() if isinstance(n, _WRITES)), None)
    if bad is not None:
        raise ConfigError(f"--where {where!r}: may only read "
                          f"({type(bad).__name__.upper()} is not allowed)")
    return tree.sql(dialect=d, comments=False)


def preview(config: Config, tables: list[str] | None = None, rules: list[str] | None = None,
            where: str | None = None, limit: int = 10) -> list[RulePreview]:
    if limit < 1:
        raise ConfigError("--limit must be at least 1")
    cond = check_where(where, config.source.kind) if where else None
    parsed = parse_rules(config)
    if rules:
        known = {r.name: r for r in parsed}
        missing = [n for n in rules if n not in known]
        if missing:
            raise ConfigError(f"--rule {missing[0]!r}: no such enabled rule (rules: "
                              f"{', '.join(sorted(known))})")
        parsed = [known[n] for n in dict.fromkeys(rules)]
    source = open_source(config, sorted({r.source.name for r in parsed}))
    target = open_target(config)
    try:
        plan = build_plan(config, source, target, parsed)
        attach_converters(plan, config)
    finally:
        source.close()
        target.close()
    chosen = chosen_tables(plan, tables)
    out: list[RulePreview] = []
    for t in chosen:
        out.extend(_preview_table(config, plan, t, cond, limit))
    return out


def _sample(config: Config, plan: Plan, table: str, where: str | None,
            limit: int) -> list[tuple[Any, ...]]:
    stage = plan.stages[table]
    pk = list(stage.source.primary_key)
    if not pk:
        raise TerminalError(f"source table {table!r} has no primary key: cdc samples and "
                            "replicates tables by their primary key",
                            fix=f"add a primary key to {table!r}")
    reader = ChunkReader(config, table, stage.columns, pk, where, limit, read_only=True)
    try:
        return reader.read(None).rows
    except CdcError:
        raise
    except Exception as e:  # the source's SQL error for a --where that reads badly
        text = " ".join(str(e).split())
        if where:
            raise ConfigError(f"--where {where!r} on {table}: {text}") from None
        raise TerminalError(f"reading {table}: {text}") from None
    finally:
        reader.close()


def _preview_table(config: Config, plan: Plan, table: str, where: str | None,
                   limit: int) -> list[RulePreview]:
    stage = plan.stages[table]
    rules = plan.by_table[table]
    rows = _sample(config, plan, table, where, limit)
    changes = [RowChange(table, "I", None, dict(zip(stage.columns, r, strict=True)))
               for r in rows]
    d = target_dialect(config.target.kind)
    convs = plan.converters.get(table)
    mapped: dict[str, dict[int, dict[str, Any]]] = {}
    before: dict[str, dict[int, dict[str, Any]]] = {}
    after: dict[str, dict[int, dict[str, Any]]] = {}
    kept: dict[str, list[tuple[str, set[int]]]] = {}
    letters: dict[int, tuple[str, str]] = {}
    target = open_target(config)
    try:
        try:
            with target.transaction() as conn:
                target.prepare_tables(conn, [stage], rules)
                target.stage_only(conn, stage, changes, convs)
                for c in rules:
                    mapped[c.name] = _fill(conn, c, d)
                    before[c.name] = _target_rows(conn, c, d)
                    kept[c.name] = [(why, {seq_to_index(s) for (s,) in _rows(conn, q)})
                                    for why, q in filter_probes(c.bound, stage,
                                                                config.target.kind)]
                if changes:
                    # The apply streaming runs, in a savepoint: no offset, and
                    # the dead letters stay in memory.
                    batch = Batch()
                    batch.add(Transaction(changes, BinlogPosition("", 0)))
                    target.apply(batch, {table: stage}, {table: rules}, plan.converters,
                                 record=_no_bookkeeping, write_dead_letters=False)
                    index = {id(ch): i for i, ch in enumerate(changes)}
                    for dl in target.dead_letters:
                        if id(dl.change) in index:
                            letters.setdefault(index[id(dl.change)], (dl.rule, dl.error))
                    target.stage_only(conn, stage, changes, convs)
                    for c in rules:
                        _fill(conn, c, d)
                        after[c.name] = _target_rows(conn, c, d)
                raise _RollBack
        except _RollBack:
            pass
        finally:
            if d == "mysql":
                _drop_scratch(target, [stage.name, *(c.result_name for c in rules)])
    finally:
        target.close()

    reports = []
    for c in rules:
        rep = RulePreview(c.name, table, c.bound.rule.target.name, list(c.bound.key))
        for i, ch in enumerate(changes):
            assert ch.after is not None
            row = PreviewRow("insert", dict(ch.after))
            m = mapped[c.name].get(i)
            if i in letters:
                rule, error = letters[i]
                row.outcome, row.target = "dead_letter", m
                row.before = before[c.name].get(i)
                row.reason = error if rule == c.name else f"rule {rule}: {error}"
            elif m is None:
                why = next((w for w, seqs in kept[c.name] if i not in seqs), None)
                if why is not None:
                    row.outcome, row.reason = "filtered", why
                else:
                    row.outcome = "superseded"
                    row.reason = ("a later sampled row maps to the same target key "
                                  "(the last one wins, as in a batch)")
            else:
                old, new = before[c.name].get(i), after[c.name].get(i, m)
                row.target, row.before = new, old
                row.outcome = "insert" if old is None else (
                    "unchanged" if old == new else "update")
            rep.rows.append(row)
        reports.append(rep)
    return reports


def _no_bookkeeping(_conn: Any) -> None:
    """apply's ``record``: instead of the streaming offset, nothing."""


def _fill(conn: Any, c: CompiledRule, d: str) -> dict[int, dict[str, Any]]:
    """The rule's own fill over the staged rows: batch index -> target row."""
    q = lambda n: ident(n, d)  # noqa: E731
    _exec(conn, f"DELETE FROM {q(c.result_name)}")
    _exec(conn, c.fill)
    cols = ", ".join(q(x) for x in c.bound.columns)
    return {seq_to_index(r[-1]): dict(zip(c.bound.columns, r[:-1], strict=True))
            for r in _rows(conn, f"SELECT {cols}, {q(SEQ)} FROM {q(c.result_name)}")}


def _target_rows(conn: Any, c: CompiledRule, d: str) -> dict[int, dict[str, Any]]:
    """The target rows with the keys in the rule's result table, by batch index."""
    q = lambda n: ident(n, d)  # noqa: E731
    cols = ", ".join(f"t.{q(x)}" for x in c.bound.columns)
    match = " AND ".join(f"t.{q(k)} = r.{q(k)}" for k in c.bound.key)
    tgt = table_sql(c.bound.rule.target.name, d)
    return {seq_to_index(r[0]): dict(zip(c.bound.columns, r[1:], strict=True))
            for r in _rows(conn, f"SELECT r.{q(SEQ)}, {cols} FROM {q(c.result_name)} AS r "
                                 f"JOIN {tgt} AS t ON {match}")}


def _drop_scratch(target: Any, tables: list[str]) -> None:
    with contextlib.suppress(Exception):  # best effort: closing the session drops them too
        tx = target.tx()
        for name in tables:
            tx.execute(f"DROP TEMPORARY TABLE IF EXISTS {ident(name, 'mysql')}")


def _exec(conn: Any, query: str) -> Any:
    return conn.execute(query.encode() if hasattr(conn, "pgconn") else query)


def _rows(conn: Any, query: str) -> list[tuple[Any, ...]]:
    return list(_exec(conn, query).fetchall())


# --- output ---------------------------------------------------------------------

def show(v: Any, width: int = 40) -> str:
    """A value as a DBA reads it: NULL, numbers bare, text quoted, cut at ``width``."""
    if v is None:
        text = "NULL"
    elif isinstance(v, bool | int | float | Decimal):
        text = str(v)
    elif isinstance(v, dt.datetime | dt.date | dt.time):
        text = v.isoformat(sep=" ") if isinstance(v, dt.datetime) else v.isoformat()
    elif isinstance(v, bytes | bytearray | memoryview):
        text = "x'" + bytes(v).hex() + "'"
    else:
        text = "'" + str(v).replace("'", "''") + "'"
    return text if len(text) <= width else text[:width - 1] + "…"


def jsonable(reports: list[RulePreview]) -> list[dict[str, Any]]:
    def value(v: Any) -> Any:
        if v is None or isinstance(v, bool | int | float | str):
            return v
        if isinstance(v, dt.datetime | dt.date | dt.time):
            return v.isoformat()
        if isinstance(v, bytes | bytearray | memoryview):
            return bytes(v).hex()
        return str(v)  # Decimal and the rest: their exact text

    def values(row: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if row is None else {k: value(v) for k, v in row.items()}

    return [{"rule": r.rule, "source_table": r.source_table, "target_table": r.target_table,
             "key": r.key, "counts": r.counts(),
             "rows": [{"outcome": x.outcome, "reason": x.reason, "source": values(x.source),
                       "target": values(x.target), "before": values(x.before)}
                      for x in r.rows]} for r in reports]


def as_text(reports: list[RulePreview]) -> str:
    """Each source row beside the target row it becomes, one pair a line."""
    out: list[str] = []
    for r in reports:
        counts = ", ".join(f"{n} {o.replace('_', ' ')}" for o, n in r.counts().items())
        out.append(f"rule {r.rule}: {r.source_table} -> {r.target_table} "
                   f"(key: {', '.join(r.key)}): {len(r.rows)} rows sampled"
                   + (f": {counts}" if counts else ""))
        for n, x in enumerate(r.rows, 1):
            out.append(f"  #{n} {x.outcome.replace('_', ' ').upper()}"
                       + (f": {x.reason}" if x.reason else ""))
            left = [(k, show(v)) for k, v in x.source.items()]
            right = [(k, show(v)) for k, v in (x.target or {}).items()]
            if x.outcome == "update" and x.before is not None:
                right = [(k, show(x.before.get(k)) + " -> " + v if x.before.get(k) != val
                          else v) for (k, v), val in zip(right, (x.target or {}).values(),
                                                         strict=True)]
            lw = max((len(k) for k, _ in left), default=0)
            vw = max((len(v) for _, v in left), default=0)
            rw = max((len(k) for k, _ in right), default=0)
            out.append(f"     {'source':<{lw + vw + 2}}   target")
            for i in range(max(len(left), len(right))):
                a = f"{left[i][0]:<{lw}}  {left[i][1]:<{vw}}" if i < len(left) \
                    else " " * (lw + vw + 2)
                b = f"{right[i][0]:<{rw}}  {right[i][1]}" if i < len(right) else ""
                out.append(f"     {a}   {b}".rstrip())
        out.append("")
    out.append("nothing was written: the target transaction was rolled back")
    return "\n".join(out)
