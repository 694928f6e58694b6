"""Dead letters: changes that could not be applied, kept with their reason.

Pure helpers shared by the targets (which write them inside the batch's
transaction) and the CLI (which lists, retries and drops them).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from cdc.events import UNCHANGED, RowChange, ZeroDate, is_zero_date_text

# Data problems, not rule bugs: SQLSTATE classes 22 (data exception) and 23
# (integrity constraint violation), and errors raised by triggers.  MySQL error
# numbers with the same meaning.
PG_ROW_ERROR_CLASSES = ("22", "23")
PG_ROW_ERROR_CODES = {"P0001"}
MYSQL_ROW_ERRORS = {
    1048,  # column cannot be null
    1062,  # duplicate entry
    1216, 1217, 1451, 1452,  # foreign key
    1264,  # out of range
    1265,  # data truncated
    1292,  # incorrect datetime / truncated incorrect value
    1366,  # incorrect integer/string value
    1367,  # illegal value for the type (e.g. 'inf' into DOUBLE)
    1406,  # data too long
    1365,  # division by 0
    3819,  # check constraint violated (MySQL 8)
    4025,  # check constraint violated (MariaDB)
    1644,  # SIGNAL from a trigger
}


def pg_is_row_error(sqlstate: str | None) -> bool:
    if not sqlstate:
        return False
    return sqlstate[:2] in PG_ROW_ERROR_CLASSES or sqlstate in PG_ROW_ERROR_CODES


def _jsonable(v: Any) -> Any:
    if v is UNCHANGED:
        return {"$unchanged": True}
    if isinstance(v, Decimal):
        return {"$decimal": str(v)}
    if isinstance(v, datetime):
        return {"$datetime": v.isoformat()}
    if isinstance(v, date):
        return {"$date": v.isoformat()}
    if isinstance(v, time):
        return {"$time": v.isoformat()}
    if isinstance(v, timedelta):
        return {"$interval_seconds": v.total_seconds()}
    if isinstance(v, bytes | bytearray | memoryview):
        return {"$base64": base64.b64encode(bytes(v)).decode()}
    if isinstance(v, set | frozenset):
        return sorted(v)
    if isinstance(v, dict | list | str | int | float | bool) or v is None:
        return v
    return str(v)


def image_to_json(image: dict[str, Any] | None) -> dict[str, Any] | None:
    if image is None:
        return None
    return {k: _jsonable(v) for k, v in image.items()}


def _from_json(v: Any) -> Any:
    if isinstance(v, dict) and len(v) == 1:
        (k, x), = v.items()
        if k == "$decimal":
            return Decimal(x)
        if k == "$datetime":
            return datetime.fromisoformat(x)
        if k == "$date":
            return date.fromisoformat(x)
        if k == "$time":
            return time.fromisoformat(x)
        if k == "$interval_seconds":
            return timedelta(seconds=x)
        if k == "$base64":
            return base64.b64decode(x)
        if k == "$unchanged":
            return UNCHANGED
    return v


def image_from_json(image: dict[str, Any] | None) -> dict[str, Any] | None:
    if image is None:
        return None
    return {k: _from_json(v) for k, v in image.items()}


def change_to_json(ch: RowChange) -> str:
    return json.dumps({"before": image_to_json(ch.before), "after": image_to_json(ch.after),
                       "partial_before": ch.partial_before}, ensure_ascii=False)


def change_from_json(table: str, op: str, data: str | dict[str, Any]) -> RowChange:
    d = json.loads(data) if isinstance(data, str) else data
    return RowChange(table, op, image_from_json(d.get("before")),  # type: ignore[arg-type]
                     image_from_json(d.get("after")), bool(d.get("partial_before")))


@dataclass(slots=True)
class DeadLetter:
    """One change that failed, as the target will store it."""

    rule: str
    change: RowChange
    position: str | None
    error: str
    existing_id: int | None = None  # set when a retry fails again


def one_line(text: str) -> str:
    return " ".join(text.split())[:2000]


_DATE_BASES = ("date", "datetime", "timestamp")


def zero_date_letters(changes: list[RowChange], stage: Any, rule: str, positions: Any,
                      existing: dict[int, int]) -> tuple[list[RowChange], list[DeadLetter]]:
    """``types.zero_dates: dead_letter``: a change whose new image holds a zero
    date goes to the dead-letter table with the reason; the others go on.

    Only the new image counts: an old image's zero date is staged as NULL, so
    an update that repairs the date (or a delete) is never held back.
    """
    cols = [c.name for c in stage.source.columns if c.base_type in _DATE_BASES]
    if not cols:
        return changes, []
    keep: list[RowChange] = []
    dead: list[DeadLetter] = []
    for ch in changes:
        bad = None
        if ch.after is not None:
            bad = next((c for c in cols if _zero(ch.after.get(c))), None)
        if bad is not None:
            assert ch.after is not None
            dead.append(DeadLetter(
                rule, ch, positions.get(id(ch)),
                f"zero date {str(ch.after[bad])!r} in column {bad} (types.zero_dates: "
                "dead_letter); fix the row in the source, then `cdc dlq retry`",
                existing.get(id(ch))))
            continue
        if ch.before is not None:
            for c in cols:
                if _zero(ch.before.get(c)):
                    ch.before[c] = None
        keep.append(ch)
    return keep, dead


def _zero(v: Any) -> bool:
    return isinstance(v, ZeroDate) or (isinstance(v, str | bytes) and is_zero_date_text(v))
