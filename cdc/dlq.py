"""Retrying dead letters: re-read the source row as it is now, apply it again.

A dead letter is retried from the *current* source row, not from the image
that failed: by the time the missing customer exists, the order may have
changed again, and replaying the old image would put stale data over newer.
If the source row is gone, the retry deletes its target row.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from cdc.batch import Batch
from cdc.catalog import split_name
from cdc.config import Config
from cdc.deadletter import change_from_json
from cdc.events import RowChange, Transaction
from cdc.plan import Plan
from cdc.positions import BinlogPosition
from cdc.rules.compile import ident, table_sql

log = logging.getLogger("cdc.dlq")


@dataclass(slots=True)
class RetryResult:
    tried: int = 0
    applied: int = 0
    failed: int = 0
    skipped: int = 0  # tables no rule reads any more


def fetch_current(config: Config, source: Any, table: str, pk: list[str],
                  keys: list[tuple[Any, ...]]) -> dict[tuple[Any, ...], dict[str, Any]]:
    """The source rows with these primary keys, as they are now."""
    if not keys:
        return {}
    if config.source.kind == "mysql":
        conn = source.conn()
        d = "mysql"
        cols = ", ".join(ident(c, d) for c in pk)
        one = "(" + ", ".join(["%s"] * len(pk)) + ")"
        query = (f"SELECT * FROM {table_sql(table, d)} WHERE ({cols}) IN "  # noqa: S608 - quoted
                 f"({', '.join([one] * len(keys))})")
        with conn.cursor() as cur:
            cur.execute(query, [v for k in keys for v in k])
            names = [c[0] for c in cur.description or []]
            rows = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    else:
        import psycopg
        from psycopg import sql

        tref = sql.Identifier(*split_name(table, "public"))
        what: sql.Composable = sql.SQL("*")
        from cdc.sources import pgjson

        with psycopg.connect(config.source.libpq(), autocommit=True) as conn:
            pgjson.register(conn.adapters)  # as the stream loads JSON
            conn.execute("SET TimeZone = 'UTC'")
            if getattr(source, "text_values", False):
                # The stream's images hold the walsender's text; so must these
                # (keys included, or they would not match).
                from cdc.sources.postgres import TEXT_SESSION

                for stmt in TEXT_SESSION:
                    conn.execute(stmt)
                schema_ = source.table(table)
                what = sql.SQL(", ").join(
                    sql.SQL("{}::text AS {}").format(sql.Identifier(c), sql.Identifier(c))
                    for c in schema_.column_names)
            # The key as text too: a dead letter's image holds COPY text when the
            # stream carried it so (cdc.events.TextRows), values otherwise; a
            # key that matched neither would read as "the row is gone" and the
            # retry would delete instead of apply.
            text_keys = [f"_cdc_key_{i}" for i in range(len(pk))]
            what = sql.SQL(", ").join([what, *(
                sql.SQL("{}::text AS {}").format(sql.Identifier(c), sql.Identifier(k))
                for c, k in zip(pk, text_keys, strict=True))])
            q = sql.SQL("SELECT {} FROM {} WHERE ({}) IN ({})").format(
                what, tref, sql.SQL(", ").join(sql.Identifier(c) for c in pk),
                sql.SQL(", ").join(sql.SQL("({})").format(
                    sql.SQL(", ").join(sql.Placeholder() * len(pk))) for _ in keys))
            cur = conn.execute(q, [v for k in keys for v in k])
            fetched = [c.name for c in cur.description or []]
            out: dict[tuple[Any, ...], dict[str, Any]] = {}
            for r in cur.fetchall():
                row = dict(zip(fetched, r, strict=True))
                as_text = tuple(row.pop(k) for k in text_keys)
                out[tuple(row[c] for c in pk)] = row
                out.setdefault(as_text, row)
            return out
    return {tuple(r[c] for c in pk): r for r in rows}


def retry(config: Config, source: Any, target: Any, plan: Plan, ids: list[int] | None = None,
          *, due_only: bool = False) -> RetryResult:
    rows = target.dead_letter_rows(ids, due_only=due_only,
                                   max_attempts=config.dlq_max_attempts if due_only else None)
    result = RetryResult()
    if not rows:
        return result
    changes: list[RowChange] = []
    existing: dict[int, int] = {}
    by_table: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_table.setdefault(r["source_table"], []).append(r)
    for table, dls in by_table.items():
        stage = plan.stages.get(table)
        if stage is None:
            result.skipped += len(dls)
            continue
        pk = list(stage.source.row_key)
        parsed = []
        for dl in dls:
            ch = change_from_json(table, dl["operation"], dl["row_data"])
            image = ch.after or ch.before or {}
            parsed.append((dl, ch, tuple(image.get(c) for c in pk)))
        current = fetch_current(config, source, table, pk, list({k for _, _, k in parsed}))
        for dl, ch, key in parsed:
            now = current.get(key)
            if now is not None:
                new = RowChange(table, "U" if ch.before is not None else "I", ch.before, now,
                                ch.partial_before)
            else:
                new = RowChange(table, "D", ch.before or ch.after, None, ch.partial_before)
            changes.append(new)
            existing[id(new)] = int(dl["id"])
    if not changes:
        return result
    result.tried = len(changes)
    batch = Batch()
    # The position is not used: `record` replaces the offset write.
    batch.add(Transaction(changes, BinlogPosition("", 0)))

    def record(conn: Any) -> None:
        still = {dl.existing_id for dl in target.dead_letters}
        done = [i for i in existing.values() if i not in still]
        if done:
            target.delete_dead_letters_in(conn, done)

    target.apply(batch, plan.stages, plan.by_table, plan.converters, record=record,
                 existing=existing)
    result.failed = len(target.dead_letters)
    result.applied = result.tried - result.failed
    if result.tried:
        log.info("dead-letter retry: %d applied, %d still failing", result.applied,
                 result.failed)
    return result
