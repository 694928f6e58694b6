"""The independent model for tests/test_differential.py.

What the rules make of the final source state, computed in Python from the
source rows alone (never from the target), plus a readable diff of the target
against it. Kept apart from the harness so that the model is easy to read
against the rule texts it mirrors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

# The target-side lookup table, prefilled. Status 8 has no label (the rule's
# inner JOIN drops it) and status 9 is cancelled (the rule's WHERE drops it):
# both are ways for a row to leave the rule.
STATUS_LABELS: dict[int, str] = {0: "new", 1: "paid", 2: "packed", 3: "shipped",
                                 4: "delivered", 5: "returned", 6: "refunded", 7: "on hold"}
CANCELLED = 9
UNMAPPED = 8

Row = tuple[Any, ...]


def rule_sql(source_kind: str, note_expr: str) -> dict[str, str]:
    """The two rules in the source's dialect; ``note_expr`` is the orders rule's
    expression for the target's ``note`` column (it changes when DDL removes or
    renames the column it reads)."""
    text = "TEXT" if source_kind == "postgresql" else "CHAR"
    return {
        "orders": (
            "INSERT INTO crm_orders (order_no, customer_id, status_label, amount, note)\n"
            f"SELECT CONCAT('O', CAST(o.id AS {text})), o.customer_id, m.label,"
            f" o.amount * 100, {note_expr}\n"
            "FROM orders AS o JOIN crm_status_map AS m ON m.code = o.status\n"
            f"WHERE o.status <> {CANCELLED}\n"),
        "customers": (
            "INSERT INTO crm_customers (customer_no, name, city)\n"
            f"SELECT CONCAT('C', CAST(c.id AS {text})), c.name, TRIM(c.city)\n"
            "FROM customers AS c\n"),
    }


@dataclass
class NoteSource:
    """Where the orders rule takes ``note`` from, as the workload's DDL left it.

    ``column`` is the source column the current rule upper-cases. After a
    DROP of the column the rule read, rows the source has not written since the
    drop keep what the target had (``frozen``, the values at the moment of the
    drop: the rule fixed later cannot recompute them, and nothing should): a
    row counts as written when its ``rev`` (the workload's statement number,
    set by every write) is past ``frozen_before``.
    """

    column: str = "note"
    frozen: dict[int, str | None] = field(default_factory=dict)
    frozen_before: int | None = None


def upper(v: str | None) -> str | None:
    return None if v is None else v.upper()


def sql_trim(v: str | None) -> str | None:
    # SQL TRIM() removes spaces only, not other whitespace.
    return None if v is None else v.strip(" ")


def expected_orders(rows: list[dict[str, Any]], note: NoteSource) -> dict[str, Row]:
    """crm_orders by order_no: (customer_id, status_label, amount, note)."""
    out: dict[str, Row] = {}
    for r in rows:
        status = r["status"]
        if status is None or status == CANCELLED or status not in STATUS_LABELS:
            continue
        amount = None if r["amount"] is None else Decimal(r["amount"]) * 100
        if note.frozen_before is not None and r["rev"] < note.frozen_before:
            text = upper(note.frozen.get(r["id"]))
        else:
            text = upper(r.get(note.column))
        out[f"O{r['id']}"] = (r["customer_id"], STATUS_LABELS[status], amount, text)
    return out


def expected_customers(rows: list[dict[str, Any]]) -> dict[str, Row]:
    """crm_customers by customer_no: (name, city)."""
    return {f"C{r['id']}": (r["name"], sql_trim(r["city"])) for r in rows}


def norm(v: Any) -> Any:
    """One form per value across drivers (Decimal scale, int vs str)."""
    if isinstance(v, Decimal):
        return format(v.normalize(), "f") if v != 0 else "0"
    if isinstance(v, bool):
        return v
    if isinstance(v, int):
        return str(v)
    if isinstance(v, bytes):
        return v.decode()
    return v


def normalized(table: dict[str, Row]) -> dict[str, Row]:
    return {k: tuple(norm(v) for v in row) for k, row in table.items()}


def diff(name: str, expected: dict[str, Row], actual: dict[str, Row],
         limit: int = 15) -> list[str]:
    """Readable differences of one target table: missing, extra, changed rows."""
    exp, act = normalized(expected), normalized(actual)
    missing = sorted(set(exp) - set(act))
    extra = sorted(set(act) - set(exp))
    changed = sorted(k for k in set(exp) & set(act) if exp[k] != act[k])
    if not (missing or extra or changed):
        return []
    lines = [f"{name}: {len(exp)} rows expected, {len(act)} in the target; "
             f"{len(missing)} missing, {len(extra)} extra, {len(changed)} changed"]
    for label, keys in (("missing", missing), ("extra", extra)):
        for k in keys[:limit]:
            lines.append(f"  {label:8} {k}: {exp.get(k) if label == 'missing' else act[k]}")
        if len(keys) > limit:
            lines.append(f"  … {len(keys) - limit} more {label}")
    for k in changed[:limit]:
        lines.append(f"  changed  {k}: expected {exp[k]}, target {act[k]}")
    if len(changed) > limit:
        lines.append(f"  … {len(changed) - limit} more changed")
    return lines
