"""Table shapes read from a live database (information_schema / pg_catalog).

Rule checking, staging-table creation and snapshots all need to know a table's
columns, their declared types and its primary key; this module reads them and
nothing else.  Functions take an open DB-API connection and do plain queries.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from typing import Any

from cdc import names


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    # Declared type as the server prints it, lower case: MySQL's COLUMN_TYPE
    # ("int(10) unsigned", "decimal(12,2)", "enum('a','b')"), PostgreSQL's
    # format_type() ("numeric(12,2)", "timestamp with time zone", "text[]").
    type: str
    nullable: bool
    # MySQL DATA_TYPE ("int", "decimal") / PostgreSQL typname ("int4", "_text").
    base_type: str = ""
    type_oid: int = 0


@dataclass(frozen=True, slots=True)
class TableSchema:
    schema: str
    name: str
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...]
    # PostgreSQL only: 'd' default, 'f' full, 'i' index, 'n' nothing.
    replica_identity: str = "d"
    # Every unique index's columns, the primary key's included; read for MySQL
    # targets only (cdc.rules.compile: an upsert that another unique key could
    # redirect to a different row must not be ON DUPLICATE KEY UPDATE).
    unique_keys: tuple[tuple[str, ...], ...] = ()
    # PostgreSQL REPLICA IDENTITY USING INDEX: that index's columns.
    identity_index: tuple[str, ...] = ()
    # Without a primary key: a unique key on NOT NULL columns (read only then).
    unique_not_null: tuple[str, ...] = ()

    @property
    def row_key(self) -> tuple[str, ...]:
        """The columns that tell the table's rows apart: the primary key, or
        else a unique key on NOT NULL columns; empty when the table has
        neither.  Snapshot chunks, verify and dead-letter re-reads go by it."""
        return self.primary_key or self.unique_not_null

    @property
    def identity_columns(self) -> tuple[str, ...]:
        """The columns a PostgreSQL delete or key change carries in its old image."""
        if self.replica_identity == "f":
            return tuple(self.column_names)
        if self.replica_identity == "i":
            return self.identity_index
        if self.replica_identity == "n":
            return ()
        return self.primary_key

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> Column | None:
        for c in self.columns:
            if c.name == name:
                return c
        lowered = name.lower()
        for c in self.columns:
            if c.name.lower() == lowered:
                return c
        return None


def schema_to_json(t: TableSchema) -> str:
    """A table shape as the bookkeeping keeps it (cdc.source_schemas)."""
    return json.dumps(asdict(t), separators=(",", ":"))


def schema_from_json(text: str) -> TableSchema:
    d = json.loads(text)
    return TableSchema(
        schema=d["schema"], name=d["name"],
        columns=tuple(Column(**c) for c in d["columns"]),
        primary_key=tuple(d["primary_key"]), replica_identity=d.get("replica_identity", "d"),
        unique_keys=tuple(tuple(k) for k in d.get("unique_keys", ())),
        identity_index=tuple(d.get("identity_index", ())))


def split_name(name: str, default_schema: str) -> tuple[str, str]:
    """(schema, table) of a table name's text (cdc.names): ``s.t``, ``"a.b"``, ``t``."""
    return names.split(name, default_schema)


def mysql_table(conn: Any, database: str, name: str) -> TableSchema | None:
    schema, table = split_name(name, database)
    with conn.cursor() as cur:
        cur.execute(
            "SELECT COLUMN_NAME, COLUMN_TYPE, IS_NULLABLE, DATA_TYPE"
            " FROM information_schema.COLUMNS"
            " WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s ORDER BY ORDINAL_POSITION",
            (schema, table),
        )
        rows = cur.fetchall()
        if not rows:
            return None
        cols = tuple(
            Column(_s(r[0]), _s(r[1]).lower(), _s(r[2]) == "YES", _s(r[3]).lower())
            for r in rows
        )
        # MariaDB's JSON is LONGTEXT plus CHECK (json_valid(col)); treat it as JSON
        # so it stages as jsonb, like MySQL's native JSON type.
        json_cols: set[str] = set()
        try:
            cur.execute("SELECT CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS"
                        " WHERE CONSTRAINT_SCHEMA = %s AND TABLE_NAME = %s", (schema, table))
            for (clause,) in cur.fetchall():
                m = re.fullmatch(r"\s*json_valid\(`((?:[^`]|``)+)`\)\s*", _s(clause))
                if m:
                    json_cols.add(m.group(1).replace("``", "`"))
        except Exception:  # MySQL < 8.0.16 has no CHECK_CONSTRAINTS view
            json_cols = set()
        if json_cols:
            cols = tuple(Column(c.name, "json", c.nullable, "json") if c.name in json_cols
                         and c.base_type == "longtext" else c for c in cols)
        cur.execute(
            "SELECT COLUMN_NAME FROM information_schema.KEY_COLUMN_USAGE"
            " WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s AND CONSTRAINT_NAME = 'PRIMARY'"
            " ORDER BY ORDINAL_POSITION",
            (schema, table),
        )
        pk = tuple(_s(r[0]) for r in cur.fetchall())
        unique: tuple[str, ...] = ()
        if not pk:
            # A prefix index (SUB_PART) or a functional one (no COLUMN_NAME)
            # does not make the columns' values unique.
            cur.execute(
                "SELECT s.INDEX_NAME, s.COLUMN_NAME, c.IS_NULLABLE, s.SUB_PART"
                " FROM information_schema.STATISTICS s LEFT JOIN information_schema.COLUMNS c"
                " ON c.TABLE_SCHEMA = s.TABLE_SCHEMA AND c.TABLE_NAME = s.TABLE_NAME"
                " AND c.COLUMN_NAME = s.COLUMN_NAME"
                " WHERE s.TABLE_SCHEMA = %s AND s.TABLE_NAME = %s AND s.NON_UNIQUE = 0"
                " ORDER BY s.INDEX_NAME, s.SEQ_IN_INDEX",
                (schema, table),
            )
            keys: dict[str, list[str | None]] = {}
            for idx, col, nullable, sub_part in cur.fetchall():
                ok = col is not None and _s(nullable) == "NO" and sub_part is None
                keys.setdefault(_s(idx), []).append(_s(col) if ok else None)
            unique = _smallest_key(keys.values())
    return TableSchema(schema, table, cols, pk, unique_not_null=unique)


def _smallest_key(keys: Any) -> tuple[str, ...]:
    """The unique key with the fewest columns, all usable (None marks one that is not)."""
    usable = [tuple(k) for k in keys if k and all(c is not None for c in k)]
    return min(usable, key=len) if usable else ()


def mysql_unique_keys(conn: Any, database: str, name: str) -> list[tuple[str, ...]]:
    schema, table = split_name(name, database)
    with conn.cursor() as cur:
        cur.execute(
            "SELECT INDEX_NAME, COLUMN_NAME FROM information_schema.STATISTICS"
            " WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s AND NON_UNIQUE = 0"
            " ORDER BY INDEX_NAME, SEQ_IN_INDEX",
            (schema, table),
        )
        keys: dict[str, list[str]] = {}
        for idx, col in cur.fetchall():
            keys.setdefault(_s(idx), []).append(_s(col))
    return [tuple(v) for v in keys.values()]


def pg_table(conn: Any, name: str, default_schema: str = "public") -> TableSchema | None:
    schema, table = split_name(name, default_schema)
    cur = conn.execute(
        "SELECT c.oid, c.relreplident, c.relkind FROM pg_class c"
        " JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')",
        (schema, table),
    )
    row = cur.fetchone()
    if row is None:
        return None
    oid, ident, relkind = row
    ident = _s(ident)
    if _s(relkind) == "p" and conn.info.server_version >= 120000:  # pg_partition_tree
        ident = _partitioned_identity(conn, oid, ident)
    cols = tuple(
        Column(r[0], r[1], not r[2], r[3], r[4])
        for r in conn.execute(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull, t.typname,"
            " a.atttypid::int"
            " FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid"
            " WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            (oid,),
        ).fetchall()
    )
    pk = tuple(
        r[0]
        for r in conn.execute(
            "SELECT a.attname FROM pg_index i"
            " JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) ON true"
            " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum"
            " WHERE i.indrelid = %s AND i.indisprimary ORDER BY k.ord",
            (oid,),
        ).fetchall()
    )
    identity_index: tuple[str, ...] = ()
    if _s(ident) == "i":
        identity_index = tuple(
            r[0]
            for r in conn.execute(
                "SELECT a.attname FROM pg_index i"
                " JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) ON true"
                " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum"
                " WHERE i.indrelid = %s AND i.indisreplident ORDER BY k.ord",
                (oid,),
            ).fetchall()
        )
    unique: tuple[str, ...] = ()
    if not pk:
        if identity_index:  # unique, not partial, NOT NULL: PostgreSQL demands it
            unique = identity_index
        else:
            notnull = {c.name for c in cols if not c.nullable}
            keys: dict[int, list[str | None]] = {}
            for idx, attname in conn.execute(
                    "SELECT i.indexrelid::int, a.attname FROM pg_index i"
                    " JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) ON true"
                    " LEFT JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum"
                    " WHERE i.indrelid = %s AND i.indisunique AND i.indpred IS NULL"
                    " ORDER BY i.indexrelid, k.ord", (oid,)).fetchall():
                # An expression's attnum is 0: no attribute, not usable.
                keys.setdefault(idx, []).append(
                    attname if attname is not None and attname in notnull else None)
            unique = _smallest_key(keys.values())
    return TableSchema(schema, table, cols, pk, _s(ident), identity_index=identity_index,
                       unique_not_null=unique)


def _partitioned_identity(conn: Any, oid: int, own: str) -> str:
    """The replica identity a partitioned table's changes actually carry.

    PostgreSQL logs each change with the identity of the partition holding the
    row; the root's own setting does not propagate.  FULL only when every
    partition has it; otherwise what the weakest partition gives.
    """
    leaves = [_s(r[0]) for r in conn.execute(
        "SELECT c.relreplident FROM pg_partition_tree(%s::oid::regclass) p"
        " JOIN pg_class c ON c.oid = p.relid WHERE p.isleaf", (oid,)).fetchall()]
    if not leaves or own == "f":
        # FULL on the root is the DBA's stated intent: `cdc setup` gives its
        # partitions the same, and doctor and the stream's preflight refuse a
        # partition that lacks it, so no delete is silently key-only.
        return own
    if all(x == "f" for x in leaves):
        return "f"
    if "n" in leaves:
        return "n"
    return "d"


def pg_unique_keys(conn: Any, name: str, default_schema: str = "public") -> list[tuple[str, ...]]:
    schema, table = split_name(name, default_schema)
    rows = conn.execute(
        "SELECT i.indexrelid, a.attname FROM pg_index i"
        " JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace"
        " JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) ON true"
        " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum"
        " WHERE n.nspname = %s AND c.relname = %s AND i.indisunique AND i.indpred IS NULL"
        " ORDER BY i.indexrelid, k.ord",
        (schema, table),
    ).fetchall()
    keys: dict[int, list[str]] = {}
    for idx, col in rows:
        keys.setdefault(idx, []).append(col)
    return [tuple(v) for v in keys.values()]


def _s(v: Any) -> str:
    if isinstance(v, bytes | bytearray):
        return v.decode()
    return str(v)
