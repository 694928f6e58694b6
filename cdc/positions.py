"""Source log positions as small immutable values.

They are stored as text in the bookkeeping table (``Position.encode``) so one
column serves both source kinds, and compared only within one source kind.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias


@dataclass(frozen=True, order=True, slots=True)
class BinlogPosition:
    """A MySQL/MariaDB binlog coordinate: the resume point *after* a transaction."""

    file: str
    pos: int

    def encode(self) -> str:
        return f"binlog:{self.file}:{self.pos}"

    def __str__(self) -> str:
        return f"{self.file}:{self.pos}"

    def sort_key(self) -> tuple[int, int]:
        # mysql-bin.000012 -> 12; files sort by sequence number, not by name.
        seq = self.file.rsplit(".", 1)[-1]
        return (int(seq) if seq.isdigit() else 0, self.pos)


@dataclass(frozen=True, order=True, slots=True)
class Lsn:
    """A PostgreSQL WAL location (64-bit)."""

    value: int

    @classmethod
    def parse(cls, text: str) -> Lsn:
        hi, lo = text.split("/")
        return cls((int(hi, 16) << 32) | int(lo, 16))

    def encode(self) -> str:
        return f"lsn:{self}"

    def __str__(self) -> str:
        return f"{self.value >> 32:X}/{self.value & 0xFFFFFFFF:X}"

    def sort_key(self) -> tuple[int, int]:
        return (0, self.value)


Position: TypeAlias = BinlogPosition | Lsn


def decode_position(text: str) -> Position:
    kind, _, rest = text.partition(":")
    if kind == "binlog":
        file, _, pos = rest.rpartition(":")
        return BinlogPosition(file, int(pos))
    if kind == "lsn":
        return Lsn.parse(rest)
    raise ValueError(f"not a stored position: {text!r}")
