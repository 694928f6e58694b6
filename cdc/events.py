"""What every source produces and every target consumes.

Sources turn their log into ``Transaction`` objects; nothing downstream knows
whether a change came from a binlog or from pgoutput.  Row images are dicts of
column name -> Python value (``int``, ``Decimal``, ``str``, ``bytes``,
``datetime``...), already converted from the wire format.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from cdc.positions import Position

# "T": the source table was truncated (no images); it sits among the row
# changes at its place in source order.
Op = Literal["I", "U", "D", "T"]


class _Unchanged:
    """A PostgreSQL TOAST value that did not change and was not sent.

    It must never overwrite a target column with NULL; the target fills it from
    the row it already has.
    """

    _instance: _Unchanged | None = None

    def __new__(cls) -> _Unchanged:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED: Any = _Unchanged()


class ZeroDate(str):
    """A MySQL zero or partial-zero date (``'0000-00-00'``) that the config
    sends to the dead-letter table (``types.zero_dates: dead_letter``) instead
    of turning it into NULL.  A ``str``, so it pickles and prints as its text;
    targets set such rows aside before staging (cdc.deadletter.zero_date_letters)."""

    __slots__ = ()


def is_zero_date_text(v: Any) -> bool:
    """``'0000-00-00'``, ``'2024-00-15'``, ``'2024-05-00 10:00:00'``: what a MySQL
    SELECT returns (as text) for dates no calendar holds."""
    if isinstance(v, bytes):
        v = v.decode("ascii", "replace")
    return isinstance(v, str) and (v[:4] == "0000" or "-00" in v[:10])


@dataclass(slots=True)
class RowChange:
    """One row changed in one source table.

    ``table`` is the source table's name as the rules write it (``customers``, or
    ``schema.table`` for a PostgreSQL table outside ``public``).  ``before`` is
    the old image (updates and deletes), ``after`` the new one (inserts and
    updates).  ``before`` may hold only key columns (PostgreSQL REPLICA IDENTITY
    DEFAULT): ``partial_before`` says so.
    """

    table: str
    op: Op
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    partial_before: bool = False


def truncate_change(table: str) -> RowChange:
    """A source TRUNCATE of ``table``, as an event among the row changes."""
    return RowChange(table, "T", None, None)


# COPY text's NULL.
COPY_NULL = b"\\N"
# The only escapes Decoder.copy_change writes (and COPY requires).
_ESCAPED = re.compile(rb"\\(.)", re.DOTALL)
_UNESCAPE = {b"\\": b"\\", b"t": b"\t", b"n": b"\n", b"r": b"\r"}


class TextRows:
    """Changes of one source table that are still PostgreSQL COPY text.

    A PostgreSQL source feeding a PostgreSQL target never needs the values as
    Python objects: the walsender's text is what the target's COPY parses
    (cdc.sources.pgoutput.Decoder.copy_change writes it).  ``data`` holds the
    staging lines in source order: the columns ``names``, then ``_cdc_kind``
    and ``_cdc_partial``; ``ops`` one byte per change (``I`` one new line,
    ``U`` an old then a new line, ``D`` one old line).

    ``changes()`` parses them back into ``RowChange`` objects (values as
    ``str``), exactly what the value path would have produced, for everything
    that needs rows one by one: dead-letter isolation, validation, TOAST fill.
    """

    __slots__ = ("table", "names", "key_index", "ops", "data", "_changes")

    def __init__(self, table: str, names: tuple[str, ...], key_index: tuple[int, ...],
                 ops: bytes, data: bytes) -> None:
        self.table = table
        self.names = names
        self.key_index = key_index
        self.ops = ops
        self.data = data
        self._changes: list[RowChange] | None = None

    def __len__(self) -> int:
        return len(self.ops)

    @property
    def lines(self) -> int:
        return len(self.ops) + self.ops.count(b"U")

    @property
    def inserts_only(self) -> bool:
        """Only new images: the rules can run their one-statement form."""
        return b"U" not in self.ops and b"D" not in self.ops

    def __reduce__(self) -> Any:
        return (TextRows, (self.table, self.names, self.key_index, self.ops, self.data))

    def changes(self) -> list[RowChange]:
        """The same changes as values; built once, so the objects stay the same."""
        if self._changes is None:
            self._changes = list(self._parse())
        return self._changes

    def _parse(self) -> Any:
        names, table = self.names, self.table
        ncols = len(names)
        lines = self.data.split(b"\n")
        i = 0

        def image() -> tuple[dict[str, Any], bool]:
            nonlocal i
            fields = lines[i].split(b"\t")
            i += 1
            if len(fields) != ncols + 2:
                raise ValueError(f"COPY text line for {table} has {len(fields) - 2} columns, "
                                 f"expected {ncols}")
            values = [_copy_value(f) for f in fields[:ncols]]
            if fields[ncols + 1] == b"t":  # a key-only old image keeps only its keys
                return {names[k]: values[k] for k in self.key_index}, True
            return dict(zip(names, values, strict=True)), False

        for op in self.ops:
            if op == 0x49:  # I
                yield RowChange(table, "I", None, image()[0])
            elif op == 0x55:  # U
                before, partial = image()
                yield RowChange(table, "U", before, image()[0], partial)
            else:  # D
                before, partial = image()
                yield RowChange(table, "D", before, None, partial)


def _copy_value(field: bytes) -> str | None:
    if field == COPY_NULL:
        return None
    if b"\\" in field:
        field = _ESCAPED.sub(lambda m: _UNESCAPE.get(m.group(1), m.group(1)), field)
    # As the value path's loaders do: a server with SQL_ASCII can send bytes
    # that are not UTF-8; keep the row (and its dead letter) readable.
    return field.decode("utf-8", "replace")


@dataclass(slots=True)
class Transaction:
    """A committed source transaction; batches never split one.

    ``position`` is where streaming resumes after this transaction has been
    applied.  ``commit_time`` is the source commit time (UTC) when known.

    ``text``, when set, holds changes still in COPY text form (``TextRows``,
    PostgreSQL to PostgreSQL); they come before the ones in ``changes``.
    ``materialize`` turns them into ``RowChange`` objects in front of them.
    ``extra["truncate"]`` is true when ``changes`` holds a truncate (op ``T``).
    """

    changes: list[RowChange]
    position: Position
    commit_time: datetime | None = None
    # Heartbeats and idle keepalives move the position without changing rows.
    heartbeat: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    text: list[TextRows] | None = None

    @property
    def size(self) -> int:
        """How many row changes, whatever form they are in."""
        if self.text is None:
            return len(self.changes)
        return len(self.changes) + sum(len(t) for t in self.text)

    def materialize(self) -> list[RowChange]:
        """All changes as ``RowChange`` objects, in source order."""
        if self.text is not None:
            self.changes = [ch for t in self.text for ch in t.changes()] + self.changes
            self.text = None
        return self.changes
