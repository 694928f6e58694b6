"""Python values from any source -> what psycopg COPYs correctly into a
PostgreSQL staging column.  Pure: no connection.  ``cdc.typemap`` chooses the
staging column types; this module makes each value fit its column.
"""

from __future__ import annotations

import json
from typing import Any

from psycopg.types.json import Jsonb

from cdc.batch import Converter
from cdc.rules.compile import StageTable


def _jsonb(v: Any) -> Any:
    if isinstance(v, dict | list):
        return Jsonb(v)
    if isinstance(v, bytes):
        return Jsonb(json.loads(v))
    return v


def _set_text(v: Any) -> Any:
    if isinstance(v, set | frozenset):
        return ",".join(sorted(v))
    return v


def _bits(v: Any) -> Any:
    if isinstance(v, bytes):
        return int.from_bytes(v, "big")
    if isinstance(v, str):
        return int(v, 2)
    return v


def _zero_date(v: Any) -> Any:
    """MySQL zero and partial-zero dates ('0000-00-00', '2024-00-15') have no
    PostgreSQL value.  The binlog decoder already yields None for them; a
    snapshot SELECT yields the text, so both arrive as NULL (types.zero_dates)."""
    if isinstance(v, str | bytes):
        text = v.decode() if isinstance(v, bytes) else v
        if text[:4] == "0000" or "-00" in text[:10]:
            return None
    return v


def converters(stage: StageTable, source_kind: str = "mysql") -> list[Converter | None]:
    out: list[Converter | None] = []
    mysql = source_kind == "mysql"
    for col, t in zip(stage.source.columns, stage.types, strict=True):
        if t in ("jsonb", "json"):
            out.append(_jsonb)
        # The rest are MySQL's: PostgreSQL has no zero dates, and its bit(n)
        # values are already the text a bit(n) staging column parses.
        elif mysql and col.base_type == "set":
            out.append(_set_text)
        elif mysql and col.base_type in ("date", "datetime", "timestamp"):
            out.append(_zero_date)
        elif mysql and col.base_type == "bit":
            out.append(_bits)
        else:
            out.append(None)
    return out
