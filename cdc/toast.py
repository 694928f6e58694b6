"""Fill PostgreSQL's unchanged TOAST values before a batch is staged.

pgoutput does not resend a large value that an UPDATE left alone; it sends a
marker (``UNCHANGED``).  Writing NULL there would silently destroy data, so
each marker is replaced, in order of preference, by:

1. the same column of the change's own before image (REPLICA IDENTITY FULL);
2. the same column of an earlier image of the same row in this batch;
3. the row as the source holds it now, read by primary key.

(3) can be newer than the change being applied; the later change that made it
newer is still in the stream and is applied next, so the target ends equal.
"""

from __future__ import annotations

from typing import Any

from cdc.batch import Batch
from cdc.config import Config
from cdc.events import UNCHANGED, RowChange
from cdc.plan import Plan


def has_unchanged(image: dict[str, Any] | None) -> bool:
    # ``in`` on dict values compares in C (UNCHANGED equals only itself).
    return image is not None and UNCHANGED in image.values()


def fill_unchanged(batch: Batch, plan: Plan, config: Config, source: Any) -> int:
    """Replace every UNCHANGED in ``batch``; returns how many rows needed the source."""
    latest: dict[tuple[str, tuple[Any, ...]], dict[str, Any]] = {}
    missing: list[tuple[RowChange, dict[str, Any], tuple[Any, ...]]] = []
    # The source says per transaction whether any value was left out; only
    # transactions it did not vouch for are scanned (one cheap pass).
    if not any(has_unchanged(ch.after) or has_unchanged(ch.before)
               for tx in batch.transactions if tx.extra.get("unchanged") is not False
               for ch in tx.changes):
        return 0
    for tx in batch.transactions:
        # Earlier images of a row may still be COPY text (cdc.events.TextRows).
        for ch in tx.materialize():
            stage = plan.stages.get(ch.table)
            if stage is None:
                continue
            pk = stage.source.row_key
            for image in (ch.before, ch.after):
                if not has_unchanged(image):
                    continue
                assert image is not None
                key = tuple(image.get(c) for c in pk)
                earlier = latest.get((ch.table, key))
                for col, v in list(image.items()):
                    if v is not UNCHANGED:
                        continue
                    if ch.before is not None and image is ch.after and \
                            ch.before.get(col, UNCHANGED) is not UNCHANGED:
                        image[col] = ch.before[col]
                    elif earlier is not None and earlier.get(col, UNCHANGED) is not UNCHANGED:
                        image[col] = earlier[col]
                if has_unchanged(image):
                    missing.append((ch, image, key))
            if ch.after is not None:
                key = tuple(ch.after.get(c) for c in pk)
                latest[(ch.table, key)] = ch.after
    if not missing:
        return 0
    from cdc.dlq import fetch_current

    by_table: dict[str, list[tuple[RowChange, dict[str, Any], tuple[Any, ...]]]] = {}
    for item in missing:
        by_table.setdefault(item[0].table, []).append(item)
    for table, items in by_table.items():
        pk_cols = list(plan.stages[table].source.row_key)
        current = fetch_current(config, source, table, pk_cols,
                                list({k for _, _, k in items}))
        for _, image, key in items:
            row = current.get(key)
            for col, v in list(image.items()):
                if v is UNCHANGED:
                    # Gone from the source: a later delete in the stream removes
                    # the target row; NULL is never written for a live value.
                    image[col] = row.get(col) if row is not None else None
    return len(missing)
