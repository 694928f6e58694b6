"""What every source produces and every target consumes.

Sources turn their log into ``Transaction`` objects; nothing downstream knows
whether a change came from a binlog or from pgoutput.  Row images are dicts of
column name -> Python value (``int``, ``Decimal``, ``str``, ``bytes``,
``datetime``...), already converted from the wire format.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from cdc.positions import Position

Op = Literal["I", "U", "D"]


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


@dataclass(slots=True)
class Transaction:
    """A committed source transaction; batches never split one.

    ``position`` is where streaming resumes after this transaction has been
    applied.  ``commit_time`` is the source commit time (UTC) when known.
    """

    changes: list[RowChange]
    position: Position
    commit_time: datetime | None = None
    # Heartbeats and idle keepalives move the position without changing rows.
    heartbeat: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
