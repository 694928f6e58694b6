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


def converters(stage: StageTable) -> list[Converter | None]:
    out: list[Converter | None] = []
    for col, t in zip(stage.source.columns, stage.types, strict=True):
        if t == "jsonb":
            out.append(_jsonb)
        elif col.base_type == "set":
            out.append(_set_text)
        elif col.base_type == "bit":
            out.append(_bits)
        else:
            out.append(None)
    return out
