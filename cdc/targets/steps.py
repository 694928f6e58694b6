"""Apply one batch in an order the target accepts: by table, or in source order.

Both targets apply a batch the same way (only their primitives differ), so the
orchestration lives here:

1. **By table** (the fast path): each source table's changes are staged once
   and run through its rules (cdc.targets.isolate).  Where the target tables
   the rules write have foreign keys between them, the tables go in the order
   the graph asks for: a parent whose rows the batch deletes after its
   children, otherwise before them.
2. **By stretch**: when a foreign key refuses that, the batch is rolled back
   to a savepoint and cut into stretches of whole transactions that one table
   order suits (``segments``; e.g. new orders, then a purge of old ones, then
   new orders), each applied as in 1 under its own savepoint.
3. **In source order** (runs): consecutive changes of one source table form a
   run, and the runs apply one after the other, each staged and run through
   the rules as in 1.  A stretch a foreign key still refuses takes this path,
   and so do transactions holding a source TRUNCATE (a step at its exact place
   among the runs; the transactions between them go by table as in 1).  Only
   a violation that remains here becomes a dead letter.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Protocol

from cdc.batch import Batch, Converter
from cdc.errors import TargetError
from cdc.events import RowChange, TextRows
from cdc.rules.compile import CompiledRule, StageTable
from cdc.targets import isolate

log = logging.getLogger("cdc.target")

TableName = tuple[str, str]  # (schema, table) as the target's catalog spells them
ForeignKey = tuple[TableName, TableName]  # (referencing, referenced)


class Target(isolate.Primitives, Protocol):
    def _prepare(self, handle: Any, stages: Sequence[StageTable],
                 rules: Sequence[CompiledRule]) -> None: ...

    def _foreign_keys(self, handle: Any) -> list[ForeignKey]: ...

    def _empty_target(self, handle: Any, rule: CompiledRule) -> None: ...


def target_of(rule: CompiledRule) -> TableName:
    t = rule.bound.target
    return (t.schema, t.name)


def apply_batch(t: Target, handle: Any, batch: Batch, stages: dict[str, StageTable],
                rules: dict[str, list[CompiledRule]],
                convs: dict[str, list[Converter | None]],
                positions: isolate.Positions, existing: dict[int, int],
                text: dict[str, list[TextRows]] | None) -> int:
    """Apply the batch's changes inside the open transaction ``handle``
    (dead letters go to ``t.dead_letters``); returns the rows staged.
    ``text``: the batch's changes by table while still COPY text, if so."""
    if batch.has_truncate:
        # Transactions holding a truncate go in runs (it is a step at its exact
        # place); the stretches between them by table, as any batch.
        staged = 0
        for part in _split_at_truncates(batch):
            if part.has_truncate:
                staged += _apply_runs(t, handle, part, stages, rules, convs, positions,
                                      existing)
            else:
                staged += apply_batch(t, handle, part, stages, rules, convs, positions,
                                      existing, None)
        return staged
    by_table: dict[str, Any] = text if text is not None else batch.changes_by_table()
    active = [st for name, st in stages.items() if name in by_table]
    t._prepare(handle, active, [r for st in active for r in rules.get(st.source_name, [])])
    order, linked = _table_order(t, handle, active, rules, by_table)
    if not linked:
        return _apply_tables(t, handle, order, by_table, text is not None, rules, convs,
                             positions, existing, escalate=False)
    mark = len(t.dead_letters)
    try:
        with t._savepoint(handle):
            return _apply_tables(t, handle, order, by_table, text is not None, rules, convs,
                                 positions, existing, escalate=True)
    except isolate.OrderFailure as e:
        # Rolled back: letters set aside in the attempt are no longer true.
        del t.dead_letters[mark:]
        log.info("a foreign key refused the batch applied by table (%s); applying it in "
                 "source order", e)
    parts = segments(batch, _links(active, rules, t._foreign_keys(handle)))
    # Each table of a stretch costs about what one run costs: take the fewer.
    if sum(len(p.changes_by_table()) for p in parts) >= len(runs(batch)):
        return _apply_runs(t, handle, batch, stages, rules, convs, positions, existing)
    staged = 0
    for part in parts:
        staged += _apply_segment(t, handle, part, stages, rules, convs, positions, existing)
    return staged


def _split_at_truncates(batch: Batch) -> list[Batch]:
    """Consecutive transactions with truncates together (MySQL binlogs one
    TRUNCATE per transaction; _apply_runs orders adjacent ones by the foreign
    keys), and the stretches between them."""
    out: list[Batch] = []
    for tx in batch.transactions:
        t = bool(tx.extra.get("truncate"))
        if not out or t != out[-1].has_truncate:
            out.append(Batch())
        out[-1].add(tx)
    return out


def segments(batch: Batch, links: set[tuple[str, str]]) -> list[Batch]:
    """The batch cut into stretches of whole transactions that one table order
    likely suits: a stretch ends before a transaction that would give a parent
    table both deletes and other changes while its child table has changes
    other than deletes (neither children-first nor parents-first works then).
    ``links``: (child, parent) source tables."""
    out: list[Batch] = []
    deletes: set[str] = set()
    others: set[str] = set()
    for tx in batch.transactions:
        d = {ch.table for ch in tx.materialize() if ch.op == "D"}
        o = {ch.table for ch in tx.changes if ch.op != "D"}
        nd, no = deletes | d, others | o
        if out and not any(p in nd and p in no and c in no for c, p in links):
            deletes, others = nd, no
        else:
            out.append(Batch())
            deletes, others = d, o
        out[-1].add(tx)
    return out


def _apply_segment(t: Target, handle: Any, part: Batch, stages: dict[str, StageTable],
                   rules: dict[str, list[CompiledRule]],
                   convs: dict[str, list[Converter | None]],
                   positions: isolate.Positions, existing: dict[int, int]) -> int:
    """One stretch by table in foreign-key order; in exact source order (runs)
    if a foreign key still refuses it."""
    by_table = part.changes_by_table()
    active = [st for name, st in stages.items() if name in by_table]
    order, _ = _table_order(t, handle, active, rules, by_table)
    mark = len(t.dead_letters)
    try:
        with t._savepoint(handle):
            return _apply_tables(t, handle, order, by_table, False, rules, convs, positions,
                                 existing, escalate=len(order) > 1)
    except isolate.OrderFailure:
        del t.dead_letters[mark:]
    return _apply_runs(t, handle, part, stages, rules, convs, positions, existing)


def _apply_tables(t: Target, handle: Any, order: list[StageTable], by_table: dict[str, Any],
                  as_text: bool, rules: dict[str, list[CompiledRule]],
                  convs: dict[str, list[Converter | None]], positions: isolate.Positions,
                  existing: dict[int, int], *, escalate: bool) -> int:
    staged = 0
    for st in order:
        table_rules = rules.get(st.source_name, [])
        conv = convs.get(st.source_name)
        if as_text:
            staged += isolate.apply_text(t, handle, st, by_table[st.source_name], table_rules,
                                         conv, positions, existing, escalate_fk=escalate)
        else:
            staged += isolate.apply_table(t, handle, st, by_table[st.source_name],
                                          table_rules, conv, positions, existing,
                                          escalate_fk=escalate)
    return staged


def runs(batch: Batch) -> list[tuple[str, list[RowChange]]]:
    """The batch as steps in source order: (table, consecutive changes of it);
    a truncate is a step of its own (one change, op ``T``)."""
    out: list[tuple[str, list[RowChange]]] = []
    for tx in batch.transactions:
        for ch in tx.materialize():
            if ch.op != "T" and out and out[-1][0] == ch.table and out[-1][1][-1].op != "T":
                out[-1][1].append(ch)
            else:
                out.append((ch.table, [ch]))
    return out


def _apply_runs(t: Target, handle: Any, batch: Batch, stages: dict[str, StageTable],
                rules: dict[str, list[CompiledRule]],
                convs: dict[str, list[Converter | None]],
                positions: isolate.Positions, existing: dict[int, int]) -> int:
    steps = [(name, changes) for name, changes in runs(batch) if name in stages]
    active = [st for name, st in stages.items() if any(n == name for n, _ in steps)]
    t._prepare(handle, active, [r for st in active for r in rules.get(st.source_name, [])])
    staged = 0
    i = 0
    while i < len(steps):
        name, changes = steps[i]
        if changes[0].op == "T":
            # One source statement may truncate several tables (PostgreSQL):
            # empty their targets together, children first.
            j = i
            while j < len(steps) and steps[j][1][0].op == "T":
                j += 1
            _truncate(t, handle, [n for n, _ in steps[i:j]], rules)
            i = j
            continue
        st = stages[name]
        staged += isolate.apply_table(t, handle, st, changes, rules.get(name, []),
                                      convs.get(name), positions, existing)
        i += 1
    return staged


def _truncate(t: Target, handle: Any, tables: list[str],
              rules: dict[str, list[CompiledRule]]) -> None:
    cfg = t.config
    empty: dict[TableName, CompiledRule] = {}
    for name in dict.fromkeys(tables):
        for r in rules.get(name, []):
            if (cfg.options_for(r.name).on_truncate or "truncate") == "ignore":
                tt = r.bound.target
                log.warning("rule %s: source table %s was truncated; target table %s.%s "
                            "keeps its rows (on_truncate: ignore)", r.name, name, tt.schema,
                            tt.name)
            else:
                empty.setdefault(target_of(r), r)
    if not empty:
        return
    fks = t._foreign_keys(handle)
    for key in _children_first(list(empty), fks):
        r = empty[key]
        try:
            with t._savepoint(handle):
                t._empty_target(handle, r)
        except isolate.RowFailure as f:
            raise TargetError(
                f"rule {r.name}: cannot empty target table {key[0]}.{key[1]} for a source "
                f"TRUNCATE: {f.text}",
                fix=f"empty the referencing rows in the target first, or set "
                    f"rule_options.{r.name}.on_truncate: ignore") from None


def _children_first(tables: list[TableName], fks: list[ForeignKey]) -> list[TableName]:
    before = {(c, p) for c, p in fks if c != p and c in tables and p in tables}
    return _toposort(tables, before)


def _toposort(items: list[Any], before: set[tuple[Any, Any]]) -> list[Any]:
    """``items`` so that a goes before b for each (a, b) in ``before`` where the
    graph allows; otherwise (a cycle) in their given order."""
    out: list[Any] = []
    left = list(items)
    while left:
        for x in left:
            if not any(b == x and a in left for a, b in before):
                break
        else:
            x = left[0]  # a cycle: the given order decides
        out.append(x)
        left.remove(x)
    return out


def _table_order(t: Target, handle: Any, active: list[StageTable],
                 rules: dict[str, list[CompiledRule]], by_table: dict[str, Any]
                 ) -> tuple[list[StageTable], bool]:
    """The stages in foreign-key order, and whether any key links two of them."""
    if len(active) < 2:
        return active, False
    fks = t._foreign_keys(handle)
    if not fks:
        return active, False
    links = _links(active, rules, fks)
    if not links:
        return active, False
    removing = {p for _, p in links if _removes(by_table[p])}
    before = {(c, p) if p in removing else (p, c) for c, p in links}
    names = _toposort([st.source_name for st in active], before)
    by_name = {st.source_name: st for st in active}
    return [by_name[n] for n in names], True


def _links(active: list[StageTable], rules: dict[str, list[CompiledRule]],
           fks: list[ForeignKey]) -> set[tuple[str, str]]:
    """(child, parent) pairs of source tables whose rules' target tables a
    foreign key links."""
    targets = {st.source_name: {target_of(r) for r in rules.get(st.source_name, [])}
               for st in active}
    links: set[tuple[str, str]] = set()
    for child, parent in fks:
        for c, ct in targets.items():
            if child not in ct:
                continue
            for p, pt in targets.items():
                if p != c and parent in pt:
                    links.add((c, p))
    return links


def _removes(changes: list[Any]) -> bool:
    """The table's changes include deletes (COPY text or values)."""
    if changes and isinstance(changes[0], TextRows):
        return any(b"D" in x.ops for x in changes)
    return any(ch.op == "D" for ch in changes)
