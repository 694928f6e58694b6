"""Schema changes on the source that a rule cannot follow: pause, park, resume.

Both sources deliver column names with every change (pgoutput's Relation
message, MariaDB's table map with ``binlog_row_metadata=FULL``), so a change
whose image lacks a column that a rule *reads* shows the moment a column was
dropped or renamed.  Guessing NULL there would write wrong rows that fixing
the rule later cannot repair; instead, under ``schema_changes: pause`` (the
default), that source table is paused:

* from that change on, its changes are taken out of each batch and parked in
  the target's bookkeeping (``cdc.parked_changes``, with a ``cdc.paused`` row)
  inside the batch's own transaction, beside the offset: a kill -9 loses
  nothing and parks nothing twice;
* every other table keeps streaming;
* when the rule is fixed and the pipeline reloads (SIGHUP or a restart), the
  parked changes run through the new rules in source order, each chunk in one
  transaction that also deletes what it applied; then the stream goes on.

``schema_changes: lenient`` (per pipeline or per rule) keeps the old
behaviour, NULL for a vanished column, and says so once per table.

Only columns a rule reads count (select list, WHERE, joins, ``validate``):
dropping a column no rule reads, or adding one, changes nothing.  A key-only
old image (PostgreSQL REPLICA IDENTITY DEFAULT) legitimately lacks the other
columns and is not judged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlglot
from sqlglot import exp

from cdc.batch import Batch
from cdc.catalog import TableSchema
from cdc.config import Config
from cdc.deadletter import change_from_json, change_to_json
from cdc.events import RowChange, Transaction
from cdc.plan import Plan
from cdc.positions import decode_position
from cdc.rules.bind import in_subquery
from cdc.rules.compile import CompiledRule
from cdc.rules.parse import Rule

log = logging.getLogger("cdc.pause")


def read_columns(rule: CompiledRule) -> frozenset[str]:
    """The source columns ``rule`` reads, spelled as the source catalog does."""
    b = rule.bound
    source = b.source
    alias = b.rule.source.alias.lower()
    sel = b.rule.select
    out: set[str] = set()
    every = frozenset(source.column_names)
    if any(isinstance(e, exp.Star) for e in sel.expressions):
        return every
    for col in sel.find_all(exp.Column):
        qual = col.table.lower()
        if qual and qual != alias:
            continue  # a lookup's column
        if isinstance(col.this, exp.Star):
            return every
        # An unqualified name inside a subquery belongs to the subquery's tables.
        if not qual and in_subquery(col, sel):
            continue
        c = source.column(col.name)
        if c is not None:
            out.add(c.name)
    for cond in b.options.validate:
        try:
            tree = sqlglot.parse_one(cond, read=b.rule.dialect)
        except sqlglot.errors.SqlglotError:
            continue  # compile_rule has refused it already
        for col in tree.find_all(exp.Column):
            c = source.column(col.name)
            if c is not None:
                out.add(c.name)
    return frozenset(out)


def vanished_columns(config: Config, rule: Rule, source: TableSchema | None) -> list[str]:
    """Source columns ``rule`` names that ``source`` (the catalog now) lacks:
    qualified with the rule's alias, in ``validate``, or unqualified in a rule
    without lookups (elsewhere an unqualified name may be a lookup's)."""
    if source is None:
        return []  # the table itself is gone: not a column change
    alias = rule.source.alias.lower()
    names: set[str] = set()
    for col in rule.select.find_all(exp.Column):
        if isinstance(col.this, exp.Star):
            continue
        qual = col.table.lower()
        if qual == alias or (not qual and not rule.lookups
                             and not in_subquery(col, rule.select)):
            names.add(col.name)
    for cond in config.options_for(rule.name).validate:
        try:
            names |= {c.name for c in sqlglot.parse_one(cond, read=rule.dialect
                                                        ).find_all(exp.Column)}
        except sqlglot.errors.SqlglotError:
            pass
    return sorted(n for n in names if source.column(n) is None)


def startup_pauses(config: Config, rules: list[Rule], source: Any,
                   paused: Collection[str]) -> dict[str, str]:
    """Source tables to pause as the daemon starts: a rule (``schema_changes:
    pause``) names a column the source table no longer has, dropped or renamed
    while cdc was stopped or behind.  The stream still holds that table's
    changes from before; they are parked like any others."""
    out: dict[str, str] = {}
    for r in rules:
        table = r.source.name
        if table in paused or table in out or config.schema_changes_for(r.name) != "pause":
            continue
        gone = vanished_columns(config, r, source.table(table))
        if gone:
            out[table] = (f"rule {r.name} reads column(s) {', '.join(gone)} of source table "
                          f"{table}, which it no longer has (dropped or renamed while cdc was "
                          "stopped or behind)")
    return out


def earlier_shapes(config: Config, rules: list[Rule], source: Any, target: Any,
                   paused: Collection[str]) -> dict[str, TableSchema]:
    """Source tables to bind as the running rules last saw them, not as the
    catalog has them now: a column a rule reads was dropped or renamed while
    cdc was stopped or behind, and the shape saved at the last start still has
    it.  The stream from the offset holds the changes made before the ALTER;
    they carry the column and apply through the rule as it was.  The first
    change without it pauses the table (``Guard``), at its own position.
    Without a saved shape, ``startup_pauses`` pauses at the offset instead."""
    saved = target.source_schemas()
    out: dict[str, TableSchema] = {}
    for table in sorted({r.source.name for r in rules} - set(paused)):
        mine = [r for r in rules if r.source.name == table]
        now = source.table(table)
        if table not in saved or not any(vanished_columns(config, r, now) for r in mine):
            continue
        shape, at = saved[table]
        if any(vanished_columns(config, r, shape) for r in mine):
            continue
        gone = sorted({c for r in mine for c in vanished_columns(config, r, now)})
        out[table] = shape
        log.warning("source table %s no longer has column(s) %s that its rules read; its "
                    "changes from before that ALTER apply as the table was when cdc last "
                    "started (%s), and the table pauses at the first change without them",
                    table, ", ".join(gone), at)
    return out


def pause_at_startup(config: Config, target: Any, rules: list[Rule], plan: Plan,
                     pauses: dict[str, str], position: str) -> None:
    """Record the ``startup_pauses`` whose rules indeed did not bind."""
    for table, what in sorted(pauses.items()):
        if table not in plan.unbound:
            continue
        names = ",".join(r.name for r in rules if r.source.name == table)
        with target.transaction() as handle:
            target.park(handle, [(table, names, f"{what}, from {position}", position)], [])
        log.warning("schema change: %s: source table %s is PAUSED (rules %s); its changes are "
                    "parked in the target until the rule is fixed and reloaded (SIGHUP or "
                    "restart); every other table keeps streaming", what, table, names)


@dataclass(slots=True)
class _Needs:
    """What the rules of one source table read, by their schema_changes mode."""

    rules: list[tuple[str, frozenset[str], str]]  # (rule, columns, pause | lenient)
    pause: frozenset[str]  # read by at least one rule that pauses
    lenient: frozenset[str]  # read only by lenient rules
    staged: frozenset[str]  # the staging columns (the source's, when the plan was built)
    read: frozenset[str] = frozenset()  # pause | lenient

    def __post_init__(self) -> None:
        self.read = self.pause | self.lenient


def needs_of(config: Config, plan: Plan) -> dict[str, _Needs]:
    out: dict[str, _Needs] = {}
    for table, rules in plan.by_table.items():
        per = [(r.name, read_columns(r), config.schema_changes_for(r.name)) for r in rules]
        pause = frozenset().union(*[c for _, c, m in per if m == "pause"])
        every = frozenset().union(*[c for _, c, _ in per])
        out[table] = _Needs(per, pause, every - pause,
                            frozenset(plan.stages[table].columns))
    return out


def lacking(ch: RowChange, cols: frozenset[str]) -> Collection[str] | None:
    """The column names of ``ch``'s new image (else its full old image) when
    it lacks some of ``cols``; None when it has them all, or is key-only.
    (Both images of one change have the same shape: one is enough.)"""
    image = ch.after
    if image is None:
        if ch.partial_before:
            return None
        image = ch.before
    if image is None or image.keys() >= cols:
        return None
    return image.keys()


@dataclass(slots=True)
class PausedTable:
    table: str
    rules: str  # every rule reading the table, comma-separated
    reason: str
    since: datetime | None
    parked: int
    last_seq: int


@dataclass(slots=True)
class Parking:
    """What one batch parks, written by the target inside the batch's transaction."""

    paused: list[tuple[str, str, str, str]] = field(default_factory=list)
    rows: list[tuple[str, int, str, str, str]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.paused or self.rows)

    def writer(self, target: Any) -> Callable[[Any], None]:
        def write(handle: Any) -> None:
            target.park(handle, self.paused, self.rows)
        return write


class Guard:
    """Decides, change by change, what streams and what is parked."""

    def __init__(self, config: Config, plan: Plan, paused: list[dict[str, Any]]) -> None:
        self.config = config
        self.plan = plan
        self.needs = needs_of(config, plan)
        self.paused: dict[str, PausedTable] = {
            p["table"]: PausedTable(p["table"], p["rules"], p["reason"], p["since"],
                                    int(p["parked"]), int(p["last_seq"])) for p in paused}
        self.lenient_logged: set[str] = set()

    @property
    def paused_rules(self) -> int:
        return sum(len(p.rules.split(",")) for p in self.paused.values())

    def live_plan(self) -> Plan:
        """``plan`` without the paused tables (dead-letter retries must not
        re-read a source row whose columns the rule can no longer find)."""
        p = self.plan
        if not self.paused:
            return p
        return Plan(rules=[r for r in p.rules if r.stage.source_name not in self.paused],
                    stages={k: v for k, v in p.stages.items() if k not in self.paused},
                    by_table={k: v for k, v in p.by_table.items() if k not in self.paused},
                    converters=p.converters, unbound=p.unbound)

    # --- streaming ---------------------------------------------------------------
    def filter(self, batch: Batch) -> Parking:
        """Take the paused tables' changes out of ``batch`` (in place), pausing
        a table at the first change its rules cannot read; returns what to park."""
        parking = Parking()
        if not self.paused and not self.needs:
            return parking
        removed = 0
        for tx in batch.transactions:
            if tx.heartbeat:
                continue
            pos = tx.position.encode()
            for table, columns in (tx.extra.get("relations") or {}).items():
                needs = self.needs.get(table)
                if needs is not None and table not in self.paused:
                    # The whole transaction's changes of the table are parked:
                    # a few before an ALTER in the same transaction may be too.
                    self._judge_types(table, needs, columns, pos, parking)
            for table, columns in (tx.extra.get("retyped") or {}).items():
                needs = self.needs.get(table)
                if needs is not None and table not in self.paused:
                    self._judge_retyped(table, needs, columns, pos, parking)
            if tx.text:
                keep_text = []
                for t in tx.text:
                    if t.table not in self.paused:
                        needs = self.needs.get(t.table)
                        # One relation shape for the whole segment: its names
                        # say it, whatever its images hold.
                        if needs is None or not self._judge(
                                t.table, needs, set(t.names), pos, parking):
                            keep_text.append(t)
                            continue
                    for ch in t.changes():
                        self._park(ch, pos, parking)
                        removed += 1
                tx.text = keep_text or None
            if tx.changes and (self.paused or not self._all_readable(tx.changes)):
                keep: list[RowChange] = []
                for ch in tx.changes:
                    table = ch.table
                    if table not in self.paused:
                        needs = self.needs.get(table)
                        got = None if needs is None else lacking(ch, needs.read)
                        if got is None or needs is None or not self._judge(
                                table, needs, got, pos, parking):
                            keep.append(ch)
                            continue
                    self._park(ch, pos, parking)
                    removed += 1
                if len(keep) != len(tx.changes):
                    tx.changes = keep
        batch.rows -= removed
        return parking

    def _all_readable(self, changes: list[RowChange]) -> bool:
        """The common case, quickly: every change carries what its rules read."""
        # ~0.3 µs a change: ``lacking`` inlined, the last table's needs kept
        # (a source event holds rows of one table).
        table, read = None, None
        for ch in changes:
            if ch.table is not table:
                table = ch.table
                needs = self.needs.get(table)
                read = None if needs is None else needs.read
            if read is None:
                continue
            image = ch.after
            if image is None:
                if ch.partial_before:
                    continue
                image = ch.before
            if image is not None and not image.keys() >= read:
                return False
        return True

    def _judge(self, table: str, needs: _Needs, names: Collection[str], position: str,
               parking: Parking) -> bool:
        """Given the column names a change of ``table`` carries: True when it
        pauses the table (the caller then parks it); logs a lenient NULL once."""
        missing = set(needs.read - set(names))
        if not missing:
            return False
        blocking = missing & needs.pause
        culprit = next(r for r, cols, m in needs.rules if cols & missing
                       and (m == "pause" or not blocking))
        new = sorted(set(names) - needs.staged)
        what = (f"rule {culprit} reads column(s) {', '.join(sorted(missing))} of source "
                f"table {table}, which its changes no longer carry (dropped or renamed"
                + (f"; the source now has {', '.join(new)}" if new else "") + ")")
        return self._pause(table, needs, what, bool(blocking), position, parking)

    def _judge_types(self, table: str, needs: _Needs, columns: tuple[tuple[str, int], ...],
                     position: str, parking: Parking) -> bool:
        """A PostgreSQL Relation message's (name, type OID) pairs: True when a
        column a rule reads changed type since the plan was built.

        Conservative: any other type OID pauses, even a widening the staging
        might hold; a reload rebuilds the staging from the new type.  (A
        changed length or precision alone keeps the OID and is not caught
        here: a value that no longer fits becomes a dead letter.)
        """
        stage = self.plan.stages.get(table)
        if stage is None:
            return False
        was = {c.name: c for c in stage.source.columns}
        changed = [(n, was[n], oid) for n, oid in columns
                   if n in needs.read and n in was and was[n].type_oid
                   and was[n].type_oid != oid]
        if not changed:
            return False
        blocking = any(n in needs.pause for n, _, _ in changed)
        names = {n for n, _, _ in changed}
        culprit = next(r for r, cols, m in needs.rules if cols & names
                       and (m == "pause" or not blocking))
        what = (f"rule {culprit} reads column(s) of source table {table} whose type changed: "
                + ", ".join(f"{n} {c.type} -> {_type_name(oid)}" for n, c, oid in changed))
        return self._pause(table, needs, what, blocking, position, parking)

    def _judge_retyped(self, table: str, needs: _Needs,
                       columns: tuple[tuple[str, str, str], ...], position: str,
                       parking: Parking) -> bool:
        """A MySQL source's (name, old type, new type) of columns whose binlog
        type changed in this session: pause when a rule reads one (the same
        conservative rule as for PostgreSQL)."""
        changed = [(n, a, b) for n, a, b in columns if n in needs.read]
        if not changed:
            return False
        blocking = any(n in needs.pause for n, _, _ in changed)
        names = {n for n, _, _ in changed}
        culprit = next(r for r, cols, m in needs.rules if cols & names
                       and (m == "pause" or not blocking))
        what = (f"rule {culprit} reads column(s) of source table {table} whose type changed: "
                + ", ".join(f"{n} {a} -> {b}" for n, a, b in changed))
        return self._pause(table, needs, what, blocking, position, parking)

    def _pause(self, table: str, needs: _Needs, what: str, blocking: bool, position: str,
               parking: Parking) -> bool:
        if not blocking:
            if table not in self.lenient_logged:
                self.lenient_logged.add(table)
                log.warning("schema change: %s; schema_changes: lenient streams on (a "
                            "vanished column reads as NULL)", what)
            return False
        reason = f"{what}, from {position}"
        rules = ",".join(r for r, _, _ in needs.rules)
        self.paused[table] = PausedTable(table, rules, reason, None, 0, 0)
        parking.paused.append((table, rules, reason, position))
        log.warning("schema change: %s: source table %s is PAUSED (rules %s); its changes are "
                    "parked in the target until the rule is fixed and reloaded (SIGHUP or "
                    "restart); every other table keeps streaming", what, table, rules)
        return True

    def _park(self, ch: RowChange, position: str, parking: Parking) -> None:
        p = self.paused[ch.table]
        p.last_seq += 1
        p.parked += 1
        parking.rows.append((ch.table, p.last_seq, position, ch.op, encode_change(ch)))


# Parked changes use the dead letters' JSON form, plus a tag for MySQL SET
# values, which that form turns into lists (the targets stage a set and a list
# differently; a dead letter is retried from the source row, a parked change
# is applied as it is).
_SET = "$set"


def encode_change(ch: RowChange) -> str:
    def image(values: dict[str, Any] | None) -> dict[str, Any] | None:
        if values is None or not any(isinstance(v, set | frozenset) for v in values.values()):
            return values
        return {k: {_SET: sorted(v)} if isinstance(v, set | frozenset) else v
                for k, v in values.items()}

    return change_to_json(RowChange(ch.table, ch.op, image(ch.before), image(ch.after),
                                    ch.partial_before))


def decode_change(table: str, op: str, data: str) -> RowChange:
    ch = change_from_json(table, op, data)
    for values in (ch.before, ch.after):
        if values is None:
            continue
        for k, v in values.items():
            if isinstance(v, dict) and len(v) == 1 and _SET in v:
                values[k] = set(v[_SET])
    return ch


def drain(config: Config, source: Any, target: Any, plan: Plan, guard: Guard,
          on_chunk: Callable[[], None] | None = None) -> None:
    """Apply the parked changes of every paused table the plan can now read,
    in source order, then end its pause.  A table whose rules still fail to
    bind, or whose parked changes lack a column the rules read, stays paused."""
    from cdc.toast import fill_unchanged

    for table, p in sorted(guard.paused.items()):
        if table in plan.unbound:
            log.warning("source table %s stays paused (%d changes parked since %s): %s",
                        table, p.parked, p.since, plan.unbound[table])
            continue
        needs = guard.needs.get(table)
        if needs is None:
            # The rule was removed or disabled: nothing wants these changes.
            with target.transaction() as handle:
                target.unpark(handle, table, p.last_seq, True)
            del guard.paused[table]
            log.warning("source table %s was paused but no rule reads it any more: its %d "
                        "parked changes are discarded", table, p.parked)
            continue
        convs = {} if getattr(source, "text_values", False) else plan.converters
        applied = 0
        after = 0
        while True:
            rows = target.parked_changes(table, after, config.batch_max_rows)
            changes: list[tuple[int, str, RowChange]] = [
                (seq, pos, decode_change(table, op, data)) for seq, pos, op, data in rows]
            stuck = None
            for i, (_, _, ch) in enumerate(changes):
                got = lacking(ch, needs.pause)
                if got is not None:
                    stuck = (i, needs.pause - set(got))
                    changes = changes[:i]
                    break
            done = stuck is None and len(rows) < config.batch_max_rows
            if changes or done:
                batch = Batch()
                for _seq, pos, ch in changes:
                    if not batch.transactions or batch.transactions[-1].position.encode() != pos:
                        batch.add(Transaction([], decode_position(pos)))
                    batch.transactions[-1].changes.append(ch)
                    batch.rows += 1
                upto = changes[-1][0] if changes else after

                def record(handle: Any, table: str = table, upto: int = upto,
                           done: bool = done) -> None:
                    target.unpark(handle, table, upto, done)

                if batch.transactions:
                    if config.source.kind == "postgresql":
                        fill_unchanged(batch, plan, config, source)
                    target.apply(batch, plan.stages, plan.by_table, convs, record=record)
                else:
                    with target.transaction() as handle:
                        record(handle)
                applied += len(changes)
                after = upto
                if on_chunk is not None:
                    on_chunk()  # e.g. the systemd watchdog: a long backlog is not a hang
            if stuck is not None:
                i, missing = stuck
                reason = (f"after the reload, parked change {applied + 1} still lacks "
                          f"column(s) {', '.join(sorted(missing))} that the rules read")
                target.set_pause_reason(table, p.rules, reason)
                p.reason, p.parked = reason, p.parked - applied
                log.warning("source table %s stays paused: %s (%d parked changes applied "
                            "first; fix the rule, or set schema_changes: lenient to write "
                            "NULL for them)", table, reason, applied)
                break
            if done:
                del guard.paused[table]
                log.warning("source table %s resumed: %d parked changes applied through the "
                            "reloaded rules", table, applied)
                break


def _type_name(oid: int) -> str:
    from psycopg.postgres import types

    info = types.get(oid)
    return info.name if info is not None else f"type OID {oid}"
