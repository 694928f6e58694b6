"""Check a parsed rule against the live table shapes.

Input is what ``cdc.catalog`` read (no connection here).  Output is a
``BoundRule``: which target columns the rule writes, which of them form the
key, and how each one is computed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlglot import exp

from cdc.catalog import TableSchema
from cdc.config import RuleOptions
from cdc.rules.parse import Rule, table_name


@dataclass(slots=True)
class BoundRule:
    rule: Rule
    source: TableSchema
    target: TableSchema
    lookups: dict[str, TableSchema]  # alias -> shape
    columns: list[str]  # target columns written, in rule order (target spelling)
    key: list[str]  # subset of columns identifying a target row
    expressions: list[exp.Expr]  # one per column, in the rule's dialect
    options: RuleOptions
    # Source columns the target key is computed from, directly or through the
    # join conditions of the lookups it reads (for REPLICA IDENTITY checks).
    key_source_columns: set[str]
    # Aliases (lower case) of the lookups the target key reads, directly or
    # through other lookups' join conditions: a key-only old image joins these
    # and no others (cdc.rules.compile).
    key_lookups: frozenset[str] = frozenset()

    @property
    def name(self) -> str:
        return self.rule.name


def bind(rule: Rule, source: TableSchema | None, target: TableSchema | None,
         lookups: dict[str, TableSchema | None], options: RuleOptions,
         is_source_table: Callable[[str], bool],
         unique_keys: list[tuple[str, ...]] | None = None) -> BoundRule:
    if source is None:
        raise rule.error(f"source table {rule.source.name!r} does not exist in the source database",
                         None if rule.source.line is None else _at(rule.source.line))
    if target is None:
        raise rule.error(f"target table {rule.target.name!r} does not exist in the target database",
                         _at(rule.target.line))
    lookup_shapes: dict[str, TableSchema] = {}
    for ref in rule.lookups:
        shape = lookups.get(ref.name)
        if shape is None:
            if is_source_table(ref.name):
                raise rule.error(
                    f"the rule joins {ref.name!r}, a second source table: a rule reads exactly "
                    "one source table; other joined tables must be lookups in the target database",
                    _at(ref.line),
                    fix="write one rule per source table, or replicate the lookup table to the "
                        "target first and join it there")
            raise rule.error(f"lookup table {ref.name!r} does not exist in the target database",
                             _at(ref.line))
        lookup_shapes[ref.alias.lower()] = shape

    # Target columns.
    if rule.target_columns is not None:
        names = rule.target_columns
        exprs = [e.unalias() if isinstance(e, exp.Alias) else e for e in rule.select.expressions]
    else:
        names = [e.alias_or_name for e in rule.select.expressions]
        exprs = [e.unalias() if isinstance(e, exp.Alias) else e for e in rule.select.expressions]
    columns: list[str] = []
    for n, e in zip(names, rule.select.expressions, strict=True):
        col = target.column(n)
        if col is None:
            raise rule.error(f"target table {rule.target.name!r} has no column {n!r}"
                             + _near(n, target.column_names), e)
        if col.name in columns:
            raise rule.error(f"target column {col.name!r} is written twice", e)
        columns.append(col.name)

    # Column references must resolve.
    src_alias = rule.source.alias.lower()
    for c in rule.select.find_all(exp.Column):
        if isinstance(c.this, exp.Star):
            continue
        if in_subquery(c, rule.select):
            continue
        qual = c.table.lower()
        name = c.name
        if qual:
            if qual == src_alias:
                if source.column(name) is None:
                    raise rule.error(f"source table {rule.source.name!r} has no column {name!r}"
                                     + _near(name, source.column_names), c)
            elif qual in lookup_shapes:
                shape = lookup_shapes[qual]
                if shape.column(name) is None:
                    raise rule.error(f"lookup table {shape.name!r} has no column {name!r}"
                                     + _near(name, shape.column_names), c)
            else:
                raise rule.error(f"{c.sql()!r} names no table of this rule (tables: "
                                 f"{', '.join([rule.source.alias] + [x.alias for x in rule.lookups])})",
                                 c)
        else:
            found = [a for a, s in [(src_alias, source), *lookup_shapes.items()]
                     if s.column(name) is not None]
            if not found:
                # An output alias used in WHERE is not standard SQL; say what exists.
                raise rule.error(f"no table of this rule has a column {name!r}"
                                 + _near(name, source.column_names), c)
            if len(found) > 1:
                raise rule.error(f"column {name!r} is ambiguous ({', '.join(found)}): qualify it",
                                 c)

    # Subqueries may only read target tables (lookups).
    for sub in rule.select.find_all(exp.Select):
        if sub is rule.select:
            continue
        for t in sub.find_all(exp.Table):
            tname = table_name(t, fold=rule.dialect == "postgres")
            if tname.lower() == rule.source.name.lower() or (
                    tname not in lookups and is_source_table(tname)):
                raise rule.error(f"a subquery reads source table {tname!r}: rules may read only "
                                 "the changed row and target-side tables", t)

    # Key.
    if options.key:
        key = []
        for k in options.key:
            col = target.column(k)
            if col is None:
                raise rule.error(f"rule_options key column {k!r} is not a column of "
                                 f"{rule.target.name!r}")
            key.append(col.name)
        if unique_keys is not None and tuple(key) not in unique_keys and tuple(key) != tuple(
                target.primary_key) and set(key) not in [set(u) for u in unique_keys]:
            raise rule.error(f"key ({', '.join(key)}) of {rule.target.name!r} is neither its "
                             "primary key nor a unique index",
                             fix=f"CREATE UNIQUE INDEX ON {rule.target.name} ({', '.join(key)})")
    elif target.primary_key:
        key = list(target.primary_key)
    else:
        raise rule.error(f"target table {rule.target.name!r} has no primary key",
                         fix="add a primary key, or name a unique key with rule_options: "
                             f"{{{rule.name}: {{key: [col, …]}}}} in the config")
    missing = [k for k in key if k not in columns]
    if missing:
        raise rule.error(f"the rule does not write key column(s) {', '.join(missing)} of "
                         f"{rule.target.name!r}, so it cannot tell which target row a change "
                         "belongs to")
    if options.soft_delete_column and target.column(options.soft_delete_column) is None:
        raise rule.error(f"soft_delete_column {options.soft_delete_column!r} is not a column of "
                         f"{rule.target.name!r}")

    key_sources, key_lookups = _key_dependencies(
        [exprs[columns.index(k)] for k in key], rule.select, src_alias, source, lookup_shapes)

    return BoundRule(rule=rule, source=source, target=target, lookups=lookup_shapes,
                     columns=columns, key=key, expressions=exprs, options=options,
                     key_source_columns=key_sources, key_lookups=frozenset(key_lookups))


def _key_dependencies(key_exprs: list[exp.Expr], select: exp.Select, src_alias: str,
                      source: TableSchema, lookups: dict[str, TableSchema]
                      ) -> tuple[set[str], set[str]]:
    """(source columns, lookup aliases) the key expressions depend on.

    A key read through a lookup (``m.crm_id`` of ``JOIN map AS m ON m.erp_id =
    o.customer_id``) depends on the source columns of that join's condition,
    and on any lookup that condition reads in turn.
    """
    ons: dict[str, exp.Expr] = {}
    for j in select.args.get("joins") or []:
        t = j.this
        if isinstance(t, exp.Table) and t.alias_or_name.lower() in lookups:
            on = j.args.get("on")
            if on is not None:
                ons[t.alias_or_name.lower()] = on
    cols: set[str] = set()
    seen: set[str] = set()
    pending = list(key_exprs)
    while pending:
        e = pending.pop()
        for c in e.find_all(exp.Column):
            if isinstance(c.this, exp.Star):
                continue
            qual = c.table.lower()
            # Binding refused ambiguous unqualified names, so one that the
            # source table has is the source's.
            col = source.column(c.name) if not qual or qual == src_alias else None
            if col is not None:
                cols.add(col.name)
                continue
            alias = qual or next((a for a, s in lookups.items()
                                  if s.column(c.name) is not None), "")
            if alias in lookups and alias not in seen:
                seen.add(alias)
                if alias in ons:
                    pending.append(ons[alias])
    return cols, seen


def _at(line: int) -> exp.Expr:
    e = exp.Literal.number(0)
    e.meta["line"] = line
    return e


def _near(name: str, options: list[str]) -> str:
    import difflib

    near = difflib.get_close_matches(name, options, n=1)
    return f" (did you mean {near[0]!r}?)" if near else ""


def in_subquery(node: exp.Expr, top: exp.Select) -> bool:
    """Whether ``node`` sits inside a subquery of ``top`` (its names are the subquery's)."""
    parent = node.parent
    while parent is not None and parent is not top:
        if isinstance(parent, exp.Select):
            return True
        parent = parent.parent
    return False
