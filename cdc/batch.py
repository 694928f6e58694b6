"""Group transactions into batches and lay them out as staging rows.

Pure code: no I/O.  A batch holds whole source transactions, in source order;
each change becomes one or two staging rows (an old image ``O`` and/or a new
image ``N``) numbered in source order, which is what the rule SQL sorts by.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cdc.events import UNCHANGED, RowChange, TextRows, Transaction
from cdc.positions import Position

Converter = Callable[[Any], Any]


@dataclass(slots=True)
class Batch:
    transactions: list[Transaction] = field(default_factory=list)
    rows: int = 0

    def add(self, tx: Transaction) -> None:
        self.transactions.append(tx)
        self.rows += tx.size

    @property
    def position(self) -> Position:
        return self.transactions[-1].position

    @property
    def commit_time(self) -> datetime | None:
        for tx in reversed(self.transactions):
            if tx.commit_time is not None:
                return tx.commit_time
        return None

    @property
    def data_transactions(self) -> int:
        """Source transactions that changed rows (heartbeats only move the position)."""
        return sum(1 for tx in self.transactions if not tx.heartbeat)

    @property
    def has_truncate(self) -> bool:
        """A source TRUNCATE is among the changes (its place in the order matters)."""
        return any(tx.extra.get("truncate") for tx in self.transactions)

    def changes_by_table(self) -> dict[str, list[RowChange]]:
        out: dict[str, list[RowChange]] = {}
        for tx in self.transactions:
            for ch in tx.materialize():
                out.setdefault(ch.table, []).append(ch)
        return out

    def text_by_table(self) -> dict[str, list[TextRows]] | None:
        """The batch's changes by table while every one is still COPY text
        (cdc.events.TextRows), in source order; None as soon as one is not."""
        out: dict[str, list[TextRows]] = {}
        for tx in self.transactions:
            if tx.changes:
                return None
            for t in tx.text or ():
                out.setdefault(t.table, []).append(t)
        return out

    def counts_by_table(self) -> dict[tuple[str, str], int]:
        """(table, op) -> changes, without turning COPY text into rows."""
        out: dict[tuple[str, str], int] = {}
        for tx in self.transactions:
            for t in tx.text or ():
                for op in "IUD":
                    n = t.ops.count(op.encode())
                    if n:
                        out[(t.table, op)] = out.get((t.table, op), 0) + n
            for ch in tx.changes:
                out[(ch.table, ch.op)] = out.get((ch.table, ch.op), 0) + 1
        return out

    def __len__(self) -> int:
        return len(self.transactions)


def stage_rows(changes: Sequence[RowChange], columns: Sequence[str],
               converters: Sequence[Converter | None] | None = None,
               start_seq: int = 0) -> list[tuple[Any, ...]]:
    """Staging rows for one source table: column values, then seq, kind, partial.

    Old images get even sequence numbers and new images the following odd one,
    so within one change the new image always wins.
    """
    out: list[tuple[Any, ...]] = []
    conv = list(converters) if converters else [None] * len(columns)
    active = [(i, c) for i, c in enumerate(conv) if c is not None]
    seq = start_seq

    getter = operator.itemgetter(*columns) if len(columns) > 1 else None

    def image(values: dict[str, Any]) -> list[Any]:
        if getter is not None:
            try:
                row = list(getter(values))  # C speed; a partial image falls back
            except KeyError:
                row = [values.get(c) for c in columns]
        else:
            row = [values.get(c) for c in columns]
        for i, fn in active:
            v = row[i]
            if v is not None and v is not UNCHANGED:
                row[i] = fn(v)
        return row

    for ch in changes:
        seq += 2
        if ch.before is not None:
            out.append((*image(ch.before), seq, "O", ch.partial_before))
        if ch.after is not None:
            out.append((*image(ch.after), seq + 1, "N", False))
    return out
