"""Rewrites applied to a rule before it is printed in the target's dialect.

sqlglot transpiles most functions; these fix the places where a literal
translation would silently change a value.  Each is ``Expression -> Expression``
and says which mismatch it repairs.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlglot import exp

Rewrite = Callable[[exp.Expr], exp.Expr]


def cast_char_to_text(tree: exp.Expr) -> exp.Expr:
    """MySQL ``CAST(x AS CHAR)`` is a string of any length; PostgreSQL's ``CHAR``
    is ``char(1)`` and would keep only the first character."""

    def fix(node: exp.Expr) -> exp.Expr:
        if isinstance(node, exp.Cast | exp.TryCast):
            to = node.to
            if to.this in (exp.DataType.Type.CHAR, exp.DataType.Type.NCHAR) and not to.expressions:
                node.set("to", exp.DataType.build("TEXT"))
        return node

    return tree.transform(fix)


_UNSIGNED = {
    exp.DataType.Type.UBIGINT: "NUMERIC(20, 0)",
    exp.DataType.Type.UINT: "BIGINT",
    exp.DataType.Type.UMEDIUMINT: "INTEGER",
    exp.DataType.Type.USMALLINT: "INTEGER",
    exp.DataType.Type.UTINYINT: "SMALLINT",
}


def unsigned_casts(tree: exp.Expr) -> exp.Expr:
    """``CAST(x AS UNSIGNED)`` has no PostgreSQL spelling; widen to a signed type
    that holds every unsigned value."""

    def fix(node: exp.Expr) -> exp.Expr:
        if isinstance(node, exp.DataType) and node.this in _UNSIGNED:
            return exp.DataType.build(_UNSIGNED[node.this], dialect="postgres")
        return node

    return tree.transform(fix)


def rewrites_for(source_dialect: str, target_dialect: str) -> list[Rewrite]:
    out: list[Rewrite] = []
    if source_dialect == "mysql" and target_dialect == "postgres":
        out += [cast_char_to_text, unsigned_casts]
    return out
