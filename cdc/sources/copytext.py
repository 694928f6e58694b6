"""SQL that makes the *source server* render each row as one line of
PostgreSQL COPY text, for snapshots into a PostgreSQL target.

Why: decoding a million rows into Python values and encoding them again for
COPY costs about 5 µs per row in Python, which is most of a snapshot's time
(bench/bench_snapshot.py).  Both servers already speak text: MySQL can print
its values, PostgreSQL's COPY parses them, and Python only passes the lines on.

Only types whose text the two servers agree on byte for byte take this path;
a table with any other column is read the ordinary way (values through
``cdc.targets.pg_convert``).  The rendered text must equal what the ordinary
path stages — ``tests/test_snapshot_text.py`` compares the two on edge values.

Pure module: builds SQL text, no connection.
"""

from __future__ import annotations

from collections.abc import Sequence

from cdc.catalog import Column
from cdc.rules.compile import ident

# Character constants that do not depend on the session's sql_mode
# (NO_BACKSLASH_ESCAPES changes what '\\' means in a MySQL literal).
_MY_BS = "CHAR(92 USING utf8mb4)"
_MY_NULL = f"CONCAT({_MY_BS}, 'N')"
_MY_SEP = "CHAR(9 USING utf8mb4)"

_MY_INTEGERS = {"tinyint", "smallint", "mediumint", "int", "integer", "bigint", "year"}
_MY_DECIMALS = {"decimal", "numeric"}
_MY_DATES = {"date", "datetime", "timestamp"}
_MY_STRINGS = {"char", "varchar", "tinytext", "text", "mediumtext", "longtext", "enum"}


def _my_escape(expr: str) -> str:
    """COPY text escapes: backslash first, then the three control characters."""
    out = expr
    for code, letter in ((92, None), (9, "t"), (10, "n"), (13, "r")):
        repl = f"CONCAT({_MY_BS}, {_MY_BS})" if letter is None else \
            f"CONCAT({_MY_BS}, '{letter}')"
        out = f"REPLACE({out}, CHAR({code} USING utf8mb4), {repl})"
    return out


def _my_field(col: Column, zero_dates: str) -> str | None:
    q = ident(col.name, "mysql")
    base = col.base_type
    if base in _MY_INTEGERS or base in _MY_DECIMALS:
        value = q
    elif base in _MY_DATES:
        text = f"CAST({q} AS CHAR)"
        if zero_dates == "dead_letter":
            # PostgreSQL refuses the text; the chunk is then re-read as values
            # and the row goes to the dead-letter table (cdc.deadletter).
            value = text
        else:
            # Zero and partial-zero dates have no PostgreSQL value: NULL, exactly
            # as cdc.targets.pg_convert._zero_date does for the value path.
            value = (f"IF(LEFT({text}, 4) = '0000' OR LOCATE('-00', LEFT({text}, 10)) > 0,"
                     f" NULL, {text})")
    elif base in _MY_STRINGS:
        value = _my_escape(f"CONVERT({q} USING utf8mb4)")
    else:
        return None
    return f"IFNULL({value}, {_MY_NULL})"


# MariaDB's REPLACE moves the rest of the string at every match that makes it
# longer: an escaped 40 KB text with 10,000 tabs costs 0.1 s, 160 KB 1.7 s.
# Rows with a string this long are read as values instead (mysql_costly).
LONG_STRING = 8192


def mysql_costly(columns: Sequence[Column]) -> str | None:
    """A MySQL condition true for rows whose COPY line would be slow to
    render, or None when the table has no string column."""
    conds = [f"LENGTH({ident(c.name, 'mysql')}) > {LONG_STRING}"
             for c in columns if c.base_type in _MY_STRINGS]
    return f"({' OR '.join(conds)})" if conds else None


def mysql_line(columns: Sequence[Column], zero_dates: str = "null") -> str | None:
    """A MySQL expression giving the COPY text line for a row (without the
    bookkeeping columns), or None when some column's type needs the value path.

    The session must run with ``time_zone = '+00:00'`` (cdc.sources.mysql.connect
    sets it): TIMESTAMP prints in UTC and the target session parses it as UTC.
    """
    fields = []
    for col in columns:
        f = _my_field(col, zero_dates)
        if f is None:
            return None
        fields.append(f)
    return f"CONCAT_WS({_MY_SEP}, {', '.join(fields)})"


def _pg_escape(expr: str) -> str:
    out = f"replace({expr}, '\\', '\\\\')"
    for char, letter in (("\t", "t"), ("\n", "n"), ("\r", "r")):
        out = f"replace({out}, chr({ord(char)}), '\\{letter}')"
    return out


def postgres_line(columns: Sequence[Column], staging_types: Sequence[str]) -> str | None:
    """A PostgreSQL expression giving the COPY text line for a row.

    PostgreSQL's output function for a type is the inverse of its input
    function, so ``value::text`` is exactly what COPY prints and parses.  This
    holds when the staging column has the source column's type, or is text
    (user-defined types); any other staging type takes the value path.

    The reading session must pin TimeZone, DateStyle, IntervalStyle and
    extra_float_digits (cdc.snapshot does), since ::text follows them.
    Requires standard_conforming_strings = on (the default since 9.1).
    """
    fields = []
    for col, st in zip(columns, staging_types, strict=True):
        if st != col.type and st != "text":
            return None
        q = ident(col.name, "postgres")
        fields.append(f"coalesce({_pg_escape(f'{q}::text')}, '\\N')")
    return f"concat_ws(chr(9), {', '.join(fields)})"


# --- whole chunks -----------------------------------------------------------
#
# Handing a chunk over as one value instead of one result row per source row
# takes the client library's per-row work out of the way: pymysql spends about
# 4 µs decoding each row, the server about 0.3 µs more concatenating them.
# The lines hold no raw newline (COPY text escapes it), so the number of
# newlines tells whether the value is whole; a server limit that truncated it
# (group_concat_max_len, max_allowed_packet) is caught there and the caller
# reads that range line by line instead.


def mysql_block(line: str, order_by: str, costly: str | None) -> str:
    """MySQL aggregates: the lines of the selected rows in ``order_by`` order,
    joined by newlines, as bytes (utf8mb4, what every line is in); the row
    count; how many rows were left out as costly (their chunk is then read as
    values).

    GROUP_CONCAT takes only a literal SEPARATOR; a raw newline inside it means
    the same under every sql_mode (a backslash escape would not)."""
    if costly is None:
        return (f"CAST(GROUP_CONCAT({line} ORDER BY {order_by} SEPARATOR '\n') AS BINARY),"
                " COUNT(*), 0")
    return (f"CAST(GROUP_CONCAT(IF({costly}, NULL, {line}) ORDER BY {order_by}"
            f" SEPARATOR '\n') AS BINARY), COUNT(*), IFNULL(SUM({costly}), 0)")


def postgres_block(line: str, order_by: str) -> str:
    """The PostgreSQL aggregates of the same shape, the text as UTF-8 bytea
    (PostgreSQL's replace() is linear: no row is costly)."""
    return (f"convert_to(string_agg({line}, chr(10) ORDER BY {order_by}), 'UTF8'),"
            " count(*), 0")


def whole(data: bytes | None, count: int) -> bool:
    """Whether an aggregated chunk holds all ``count`` lines."""
    return data is not None and data.count(b"\n") + 1 == count
