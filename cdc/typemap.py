"""Which column type a staging table uses for each source column.

The staging table lives in the *target* database and holds source rows as they
were, so rules see the source's values with the closest target type that loses
nothing.  ``docs/types.md`` is the table a DBA reads; this is the code behind it.
"""

from __future__ import annotations

import re

from cdc.catalog import Column
from cdc.errors import TerminalError

_PARAMS = re.compile(r"\(([^)]*)\)")


class UnsupportedType(TerminalError):
    pass


def staging_type(col: Column, source_kind: str, target_kind: str) -> str:
    if source_kind == "mysql" and target_kind == "postgresql":
        return _mysql_to_pg(col)
    if source_kind == "mysql" and target_kind == "mysql":
        return _mysql_to_mysql(col)
    if source_kind == "postgresql" and target_kind == "postgresql":
        return _pg_to_pg(col)
    if source_kind == "postgresql" and target_kind == "mysql":
        return _pg_to_mysql(col)
    raise ValueError(f"no type mapping from {source_kind} to {target_kind}")


def _params(t: str) -> list[str]:
    m = _PARAMS.search(t)
    return [p.strip() for p in m.group(1).split(",")] if m else []


def _mysql_to_pg(col: Column) -> str:
    t = col.type
    base = col.base_type or t.split("(")[0].split()[0]
    unsigned = "unsigned" in t
    if base == "tinyint":
        return "smallint"
    if base == "smallint":
        return "integer" if unsigned else "smallint"
    if base == "mediumint":
        return "integer"
    if base in ("int", "integer"):
        return "bigint" if unsigned else "integer"
    if base == "bigint":
        return "numeric(20,0)" if unsigned else "bigint"
    if base in ("decimal", "numeric"):
        p = _params(t)
        return f"numeric({p[0]},{p[1] if len(p) > 1 else 0})" if p else "numeric"
    if base == "float":
        return "real"
    if base in ("double", "real"):
        return "double precision"
    if base == "bit":
        # BIT(64) with the top bit set exceeds bigint.
        p = _params(t)
        return "numeric(20,0)" if p and int(p[0]) > 63 else "bigint"
    if base == "year":
        return "smallint"
    if base == "date":
        return "date"
    if base == "datetime":
        p = _params(t)
        return f"timestamp({p[0]})" if p else "timestamp(0)"
    if base == "timestamp":
        p = _params(t)
        return f"timestamptz({p[0]})" if p else "timestamptz(0)"
    if base == "time":
        # MySQL TIME spans -838:59:59..838:59:59; PostgreSQL time cannot.
        return "interval"
    if base in ("char", "varchar", "tinytext", "text", "mediumtext", "longtext", "enum", "set"):
        return "text"
    if base in ("binary", "varbinary", "tinyblob", "blob", "mediumblob", "longblob"):
        return "bytea"
    if base == "json":
        return "jsonb"
    raise UnsupportedType(
        f"column {col.name!r} has type {t!r}, which cdc cannot carry to PostgreSQL",
        fix="leave the column out of the rules' source table or convert it in the source")


def _mysql_to_mysql(col: Column) -> str:
    base = col.base_type
    if base in ("geometry", "point", "linestring", "polygon", "multipoint", "multilinestring",
                "multipolygon", "geometrycollection"):
        raise UnsupportedType(f"column {col.name!r} has spatial type {col.type!r}, "
                              "which cdc does not carry")
    return col.type


def _pg_to_pg(col: Column) -> str:
    if col.type_oid >= 16384:
        # User-defined types (enums, domains, composites) may not exist in the
        # target database; their text form survives the trip.
        return "text"
    return col.type


def _pg_to_mysql(col: Column) -> str:
    t = col.type
    base = col.base_type
    if t.endswith("[]"):
        return "json"
    simple = {
        "int2": "smallint", "int4": "int", "int8": "bigint", "float4": "float",
        "float8": "double", "bool": "tinyint(1)", "text": "longtext", "bytea": "longblob",
        "date": "date", "uuid": "char(36)", "json": "json", "jsonb": "json",
        "inet": "varchar(64)", "cidr": "varchar(64)", "interval": "varchar(64)",
        "time": "time(6)", "timetz": "varchar(32)", "money": "decimal(20,2)",
        "oid": "bigint", "xml": "longtext",
    }
    if base in simple:
        return simple[base]
    if base == "numeric":
        p = _params(t)
        if p:
            return f"decimal({p[0]},{p[1] if len(p) > 1 else 0})"
        # Unconstrained numeric has no MySQL equivalent; text keeps every digit.
        return "varchar(1000)"
    if base in ("varchar", "bpchar"):
        p = _params(t)
        n = int(p[0]) if p else 0
        return f"varchar({n})" if 0 < n <= 16000 else "longtext"
    if base == "timestamp":
        return "datetime(6)"
    if base == "timestamptz":
        # An instant; staged in UTC (the target session runs in UTC).
        return "datetime(6)"
    if col.type_oid >= 16384:
        return "longtext"
    return "longtext"


# PostgreSQL types whose text (as the walsender writes it: DateStyle ISO) a
# MySQL/MariaDB staging column of the type above reads as the very value the
# converters would write.  Rows of tables made only of these travel from the
# decoder to a MySQL target as text (cdc.events.TextRows); anything else
# (bool's 't', bytea's hex, timestamptz's offset, intervals, floats) goes
# through Python values.  json/jsonb text is JSON a MySQL JSON column reads
# as the same value, scalars and null included (the value path keeps that
# text too: cdc.sources.pgjson).  A value the
# column rejects (numeric NaN, a BC date) fails the row either way and ends
# as the same dead letter.
PG_TEXT_FOR_MYSQL = frozenset({"int2", "int4", "int8", "oid", "text", "varchar", "bpchar",
                               "date", "timestamp", "numeric", "uuid", "json", "jsonb"})
