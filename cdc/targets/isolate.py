"""Apply one source table's changes, setting aside the ones that fail.

Both targets apply a table's changes the same way; only the primitives differ
(savepoints, staging, the validation query), so the orchestration lives here:

1. changes whose new row holds a zero date (``types.zero_dates: dead_letter``)
   or fails a rule's ``validate`` condition are set aside first;
2. the rest are staged and the rules run, once, under a savepoint: the path a
   healthy batch takes, with no per-row cost;
3. only if a row fails for a data reason (a constraint, a value out of range)
   is the list halved around the failure, each half under its own savepoint,
   until every failing change stands alone.  Those become dead letters, in the
   same transaction as the batch; the others apply in source order.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, Protocol

from cdc.batch import Converter
from cdc.config import Config
from cdc.deadletter import DeadLetter, one_line, zero_date_letters
from cdc.events import RowChange, TextRows
from cdc.rules.compile import CompiledRule, StageTable


class RowFailure(Exception):
    """A rule statement (or staging) failed because of a row's data."""

    def __init__(self, rule: CompiledRule, text: str, *, fk: bool = False) -> None:
        super().__init__(text)
        self.rule = rule
        self.text = text
        # A foreign-key violation: applying in source order may cure it
        # (cdc.targets.steps), so it may not be a dead letter yet.
        self.fk = fk


class OrderFailure(Exception):
    """A foreign key refused changes applied by table (cdc.targets.steps)."""

    def __init__(self, failure: RowFailure) -> None:
        super().__init__(f"rule {failure.rule.name}: {failure.text}")
        self.failure = failure


class Positions(Protocol):
    def get(self, key: int) -> str | None: ...


class Primitives(Protocol):
    """What a target provides; ``handle`` is its connection or transaction."""

    config: Config
    dead_letters: list[DeadLetter]

    def _savepoint(self, handle: Any) -> contextlib.AbstractContextManager[Any]: ...

    def _stage_and_run(self, handle: Any, st: StageTable, changes: list[RowChange],
                       table_rules: list[CompiledRule],
                       convs: list[Converter | None] | None) -> int: ...

    def _validation_failures(self, handle: Any, st: StageTable, changes: list[RowChange],
                             table_rules: list[CompiledRule],
                             convs: list[Converter | None] | None
                             ) -> dict[int, tuple[str, str]]: ...

    def _stage_text_and_run(self, handle: Any, st: StageTable, text: list[TextRows],
                            table_rules: list[CompiledRule]) -> int: ...


def apply_text(t: Primitives, handle: Any, st: StageTable, text: list[TextRows],
               table_rules: list[CompiledRule], convs: list[Converter | None] | None,
               positions: Positions, existing: dict[int, int], *,
               escalate_fk: bool = False) -> int:
    """Apply changes still in COPY text form (cdc.events.TextRows): staged as
    text, no Python value per column, under a savepoint.  When something needs
    the rows one by one (a validation, a relation shape the staging table
    lacks, a row that fails), they go back to values and ``apply_table``.
    ``escalate_fk``: see ``apply_table``."""
    names = text[0].names
    if (not any(r.validations for r in table_rules)
            and all(x.names == names for x in text) and set(names) <= set(st.columns)):
        try:
            with t._savepoint(handle):
                return t._stage_text_and_run(handle, st, text, table_rules)
        except RowFailure as f:
            if escalate_fk and f.fk:
                raise OrderFailure(f) from None
    return apply_table(t, handle, st, [ch for x in text for ch in x.changes()], table_rules,
                       convs, positions, existing, escalate_fk=escalate_fk)


def apply_table(t: Primitives, handle: Any, st: StageTable, changes: list[RowChange],
                table_rules: list[CompiledRule], convs: list[Converter | None] | None,
                positions: Positions, existing: dict[int, int], *,
                escalate_fk: bool = False) -> int:
    """Apply ``changes`` of one source table; returns the rows staged on the
    first (whole-batch) attempt, 0 when it had to isolate failures.

    ``escalate_fk``: a foreign-key violation raises ``OrderFailure`` instead
    of becoming a dead letter (the caller re-applies in source order)."""

    def letter(rule: str, ch: RowChange, error: str) -> None:
        t.dead_letters.append(DeadLetter(rule, ch, positions.get(id(ch)), error,
                                         existing.get(id(ch))))

    cfg = t.config
    if cfg.zero_dates == "dead_letter" and cfg.source.kind == "mysql" and table_rules:
        changes, dead = zero_date_letters(changes, st, table_rules[0].name, positions, existing)
        t.dead_letters.extend(dead)
    if any(r.validations for r in table_rules):
        failed = t._validation_failures(handle, st, changes, table_rules, convs)
        keep = []
        for i, ch in enumerate(changes):
            if i in failed:
                rule, cond = failed[i]
                letter(rule, ch, f"validation failed: {cond}")
            else:
                keep.append(ch)
        changes = keep

    def attempt(part: list[RowChange]) -> int:
        try:
            with t._savepoint(handle):
                return t._stage_and_run(handle, st, part, table_rules, convs)
        except RowFailure as f:
            if escalate_fk and f.fk:
                raise OrderFailure(f) from None
            raise

    try:
        return attempt(changes)
    except RowFailure:
        pass
    bisect(changes, attempt, lambda ch, f: letter(f.rule.name, ch, one_line(f.text)))
    return 0


def bisect(changes: list[RowChange], attempt: Callable[[list[RowChange]], Any],
           dead: Callable[[RowChange, RowFailure], None]) -> None:
    """Apply ``changes`` in source order, halving around failures until each
    failing change stands alone; ``dead`` receives those."""
    if len(changes) == 1:
        try:
            attempt(changes)
        except RowFailure as f:
            dead(changes[0], f)
        return
    mid = len(changes) // 2
    for half in (changes[:mid], changes[mid:]):
        try:
            attempt(half)
        except RowFailure:
            bisect(half, attempt, dead)


def seq_to_index(seq: int) -> int:
    """The position in the batch of the change a staged new image came from
    (cdc.batch.stage_rows numbers change i's images 2i+2 and 2i+3)."""
    return (int(seq) - 1) // 2 - 1
