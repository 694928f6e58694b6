"""Turn bound rules into the SQL that applies a batch on the target.

For each source table there is one temporary *staging* table shaped like it,
plus three bookkeeping columns: ``_cdc_seq`` (source order), ``_cdc_kind``
(``O`` = an old image, ``N`` = a new image) and ``_cdc_partial`` (the old image
holds only key columns).  For each rule:

1. ``fill``: run the rule's SELECT over the staging table, keep the last row per
   target key (``ROW_NUMBER() … ORDER BY _cdc_seq DESC``) in a result table.
   An old image that matched the rule means "the target row it made must go";
   a new image that matches means "this is the row now".  Whichever comes last
   in source order wins, which gives key changes, filter exits, fan-in and
   collapse of many changes to one row their meaning in one statement.
2. ``delete``: remove (or soft-delete) target rows whose last word was an old image.
3. ``upsert``: insert-or-update target rows whose last word was a new image.

All identifiers pass through sqlglot's quoting; nothing is pasted raw.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError

from cdc import names
from cdc.catalog import Column, TableSchema
from cdc.errors import RuleError
from cdc.rules.bind import BoundRule
from cdc.rules.rewrite import rewrites_for
from cdc.typemap import staging_type

SEQ, KIND, PARTIAL, RN = "_cdc_seq", "_cdc_kind", "_cdc_partial", "_cdc_rn"


def ident(name: str, dialect: str) -> str:
    return exp.to_identifier(name, quoted=True).sql(dialect=dialect)


def table_sql(name: str, dialect: str) -> str:
    """A table name's text (cdc.names: ``t``, ``s.t``, ``"a.b"``) as quoted SQL."""
    parts = names.parts(name)[-2:]
    return ".".join(ident(p, dialect) for p in parts)


def target_dialect(kind: str) -> str:
    return "postgres" if kind == "postgresql" else "mysql"


@dataclass(slots=True)
class StageTable:
    source: TableSchema
    source_name: str  # as the rules and events name it
    name: str  # unquoted temp table name
    columns: list[str]  # source column names, in order
    types: list[str]
    create: str
    truncate: str
    dialect: str

    @property
    def quoted(self) -> str:
        return ident(self.name, self.dialect)


@dataclass(slots=True)
class CompiledRule:
    bound: BoundRule
    stage: StageTable
    result_name: str
    create_result: str
    clear_result: str
    fill: str
    delete: str | None
    upsert: str
    # (condition as written, SQL listing the _cdc_seq of new images failing it)
    validations: list[tuple[str, str]] = field(default_factory=list)
    # One statement doing fill + upsert, for staging that holds new images only
    # (snapshot chunks): no result table to write and read back, nothing to delete.
    upsert_new_only: str = ""
    # The same without a conflict clause: half the cost when no target row
    # exists yet; the caller falls back to the upsert on a unique violation.
    insert_new_only: str = ""
    # MySQL targets with unique keys besides the rule's key: the upsert is
    # "update by key" (these, run first) then "insert the missing" (upsert,
    # upsert_new_only), never ON DUPLICATE KEY UPDATE.  Empty otherwise.
    update: str = ""
    update_new_only: str = ""

    @property
    def name(self) -> str:
        return self.bound.name

    def statements(self) -> list[str]:
        return [s for s in (self.fill, self.delete, self.update, self.upsert) if s]

    def new_only_statements(self) -> list[str]:
        """What runs instead of ``statements()`` when the staged rows are all
        new images (a batch of inserts, a snapshot chunk)."""
        return [s for s in (self.update_new_only, self.upsert_new_only) if s]

    def all_statements(self) -> list[str]:
        """Every statement the rule may run on the target: a batch's three, and
        the one-statement forms for staging that holds new images only (a batch
        of inserts, a snapshot chunk).  `cdc check` compiles each of them."""
        return [*self.statements(), *self.new_only_statements(),
                *(s for s in (self.insert_new_only,) if s)]


def stage_table(source: TableSchema, source_name: str, index: int, source_kind: str,
                target_kind: str) -> StageTable:
    d = target_dialect(target_kind)
    name = f"_cdc_stage_{index}"
    cols = [c.name for c in source.columns]
    types = [staging_type(c, source_kind, target_kind) for c in source.columns]
    defs = [f"{ident(c, d)} {t}" for c, t in zip(cols, types, strict=True)]
    if d == "postgres":
        # The defaults serve COPY text that carries no sequence number: the
        # snapshot's source-rendered chunks (new images only, cdc.snapshot.ChunkReader)
        # and the stream's TextRows (kind and partial given); rows are numbered
        # in COPY order.  A cached identity costs no more than numbers sent in
        # the text (measured: about 10% of the COPY without the cache).
        defs += [f"{SEQ} bigint GENERATED BY DEFAULT AS IDENTITY (CACHE 10000)",
                 f"{KIND} char(1) NOT NULL DEFAULT 'N'",
                 f"{PARTIAL} boolean NOT NULL DEFAULT false"]
        create = (f"CREATE TEMPORARY TABLE IF NOT EXISTS {ident(name, d)} ({', '.join(defs)})"
                  " ON COMMIT DELETE ROWS")
        truncate = ""  # ON COMMIT DELETE ROWS empties it
    else:
        defs += [f"{SEQ} bigint NOT NULL", f"{KIND} char(1) NOT NULL",
                 f"{PARTIAL} tinyint(1) NOT NULL DEFAULT 0"]
        create = (f"CREATE TEMPORARY TABLE IF NOT EXISTS {ident(name, d)} ({', '.join(defs)})"
                  " CHARACTER SET utf8mb4")
        truncate = f"DELETE FROM {ident(name, d)}"
    return StageTable(source, source_name, name, cols, types, create, truncate, d)


def _staged_select(bound: BoundRule, stage: StageTable) -> exp.Select:
    """The rule's SELECT reading the staging table, every name spelled as the
    catalogs do."""
    alias = bound.rule.source.alias
    sel = bound.rule.select.copy()
    # Point FROM at the staging table, keeping the alias the rule's columns use.
    from_ = sel.args.get("from") or sel.args.get("from_")
    assert from_ is not None
    from_.set("this", exp.Table(this=exp.to_identifier(stage.name, quoted=True),
                                alias=exp.TableAlias(this=exp.to_identifier(alias, quoted=True))))
    _resolve_identifiers(sel, bound)
    return sel


def _drops_rows(join: exp.Join) -> bool:
    """An inner join: a staged row without a partner leaves the result."""
    return not join.side and (join.kind or "INNER").upper() in ("INNER", "")


def filter_probes(bound: BoundRule, stage: StageTable, target_kind: str) -> list[tuple[str, str]]:
    """Why a staged new image yields no row: (reason, SQL listing the
    ``_cdc_seq`` of the new images still in the rule's result at that step).

    The steps add the rule's inner joins one at a time, then its WHERE; a row
    present at one step and missing at the next was dropped by that join or by
    the WHERE (`cdc preview`).  Same staging, same rewrites as the rule itself.
    """
    d = target_dialect(target_kind)
    rule = bound.rule
    alias = rule.source.alias
    base = _staged_select(bound, stage)
    joins = list(base.args.get("joins") or [])
    written = list(rule.select.args.get("joins") or [])
    where = base.args.get("where")
    kind_new = exp.EQ(this=exp.column(KIND, table=alias, quoted=True),
                      expression=exp.Literal.string("N"))

    def probe(upto: int, with_where: bool) -> str:
        sel = base.copy()
        sel.set("expressions", [exp.column(SEQ, table=alias, quoted=True).as_(SEQ)])
        sel.set("distinct", exp.Distinct())
        kept = [j.copy() for i, j in enumerate(joins) if i < upto or not _drops_rows(j)]
        sel.set("joins", kept or None)
        cond = exp.and_(kind_new.copy(), exp.paren(where.this.copy())) \
            if with_where and where is not None else kind_new.copy()
        sel.set("where", exp.Where(this=cond))
        tree: exp.Expr = sel
        for rw in rewrites_for(rule.dialect, d):
            tree = rw(tree)
        return tree.sql(dialect=d)

    probes: list[tuple[str, str]] = []
    for i, (j, as_written) in enumerate(zip(joins, written, strict=True)):
        if not _drops_rows(j):
            continue
        on = as_written.args.get("on")
        table = as_written.this.sql(dialect=rule.dialect)
        probes.append((f"no row of lookup {table} matches the join"
                       + (f" ON {on.sql(dialect=rule.dialect)}" if on is not None else ""),
                       probe(i + 1, False)))
    if where is not None:
        written_where = rule.select.args["where"].this.sql(dialect=rule.dialect)
        probes.append((f"the rule's WHERE is not true for it: {written_where}",
                       probe(len(joins), True)))
    return probes


def compile_rule(bound: BoundRule, stage: StageTable, index: int, target_kind: str) -> CompiledRule:
    d = target_dialect(target_kind)
    rule = bound.rule
    alias = rule.source.alias
    sel = _staged_select(bound, stage)

    def staged(col: str) -> exp.Column:
        return exp.column(col, table=alias, quoted=True)

    projections: list[exp.Expr] = []
    for col, e in zip(bound.columns, sel.expressions, strict=True):
        e = e.unalias() if isinstance(e, exp.Alias) else e
        e = _typed_null(e.copy(), bound.target.column(col), d)
        projections.append(exp.alias_(e, exp.to_identifier(col, quoted=True)))
    projections += [staged(SEQ).as_(SEQ), staged(KIND).as_(KIND)]
    sel.set("expressions", projections)

    def dialect_sql(tree: exp.Expr) -> str:
        for rw in rewrites_for(rule.dialect, d):
            tree = rw(tree)
        return tree.sql(dialect=d)

    # Staging that holds new images only (a batch of inserts, a snapshot chunk):
    # the rule as written.
    new_sql = dialect_sql(sel.copy())
    where = sel.args.get("where")
    joins = sel.args.get("joins") or []
    if where is None and not joins:
        # Nothing can keep an image from the ranking: old images, key-only or
        # whole, name their target row through the same projections.
        select_sql = new_sql
    else:
        # An old image that holds only the replica identity (PostgreSQL's
        # REPLICA IDENTITY DEFAULT: a delete, a key change, or the key taken
        # from the new row of an update) cannot be tested against WHERE or
        # joined on other columns: NULLs there would keep the deletion from
        # ever reaching the target.  Such images take a branch of their own
        # that computes only the target key, joining just the lookups the key
        # reads (cdc.plan refuses keys that need columns outside the identity),
        # so the row they name goes regardless and the rule's WHERE and joins
        # only ever judge images that hold every column.
        partial_old = exp.and_(exp.EQ(this=staged(KIND), expression=exp.Literal.string("O")),
                               staged(PARTIAL) if d == "postgres"
                               else exp.EQ(this=staged(PARTIAL), expression=exp.Literal.number(1)))
        whole = sel.copy()
        whole_only = exp.not_(exp.paren(partial_old.copy()))
        whole.set("where", exp.Where(this=whole_only if where is None else exp.and_(
            whole_only, exp.paren(where.this.copy()))))
        keyed = sel.copy()
        keyed.set("expressions", [
            p if col in bound.key else exp.alias_(exp.null(), exp.to_identifier(col, quoted=True))
            for col, p in zip(bound.columns, keyed.expressions, strict=False)
        ] + keyed.expressions[len(bound.columns):])
        keyed.set("joins", [j for j in keyed.args.get("joins") or []
                            if isinstance(j.this, exp.Table)
                            and j.this.alias_or_name.lower() in bound.key_lookups] or None)
        keyed.set("where", exp.Where(this=partial_old))
        select_sql = f"{dialect_sql(whole)} UNION ALL {dialect_sql(keyed)}"

    res = f"_cdc_res_{index}"
    q = lambda n: ident(n, d)  # noqa: E731
    target = table_sql(rule.target.name, d)
    out_cols = [q(c) for c in bound.columns]
    key_cols = [q(k) for k in bound.key]
    all_cols = ", ".join(out_cols + [q(SEQ), q(KIND)])

    def ranked_from(selected: str) -> str:
        return (f"SELECT {all_cols} FROM (SELECT s.*, ROW_NUMBER() OVER (PARTITION BY "
                f"{', '.join('s.' + k for k in key_cols)} ORDER BY s.{q(SEQ)} DESC) AS {q(RN)} "
                f"FROM ({selected}) AS s) AS r WHERE r.{q(RN)} = 1")

    fill = f"INSERT INTO {q(res)} ({all_cols}) {ranked_from(select_sql)}"
    ranked = ranked_from(new_sql)
    if d == "postgres":
        create_result = (f"CREATE TEMPORARY TABLE IF NOT EXISTS {q(res)} ON COMMIT DELETE ROWS AS "
                         f"SELECT {all_cols} FROM ({select_sql}) AS s WITH NO DATA")
        clear_result = ""
    else:
        create_result = (f"CREATE TEMPORARY TABLE IF NOT EXISTS {q(res)} AS "
                         f"SELECT {all_cols} FROM ({select_sql}) AS s LIMIT 0")
        clear_result = f"DELETE FROM {q(res)}"

    match = " AND ".join(f"t.{k} = r.{k}" for k in key_cols)
    opts = bound.options
    soft = opts.soft_delete_column
    delete: str | None
    if opts.on_delete == "ignore":
        delete = None
    elif opts.on_delete == "soft" and soft:
        soft_col = bound.target.column(soft)
        is_bool = soft_col is not None and soft_col.base_type in ("bool", "tinyint")
        value = "TRUE" if is_bool else "CURRENT_TIMESTAMP"
        if d == "postgres":
            delete = (f"UPDATE {target} AS t SET {q(soft)} = {value} FROM {q(res)} AS r "
                      f"WHERE r.{q(KIND)} = 'O' AND {match}")
        else:
            delete = (f"UPDATE {target} AS t JOIN {q(res)} AS r ON {match} "
                      f"SET t.{q(soft)} = {value} WHERE r.{q(KIND)} = 'O'")
    elif d == "postgres":
        delete = (f"DELETE FROM {target} AS t USING {q(res)} AS r "
                  f"WHERE r.{q(KIND)} = 'O' AND {match}")
    else:
        delete = (f"DELETE t FROM {target} AS t JOIN {q(res)} AS r ON {match} "
                  f"WHERE r.{q(KIND)} = 'O'")

    update = update_new_only = ""  # MySQL, when the upsert is two statements
    insert_cols = list(out_cols)
    insert_vals = [f"r.{c}" for c in out_cols]
    updates = [c for c in out_cols if c not in key_cols]
    if soft and opts.on_delete == "soft" and soft not in bound.columns:
        # A row that comes back is no longer deleted.
        soft_col = bound.target.column(soft)
        is_bool = soft_col is not None and soft_col.base_type in ("bool", "tinyint")
        insert_cols.append(q(soft))
        insert_vals.append("FALSE" if is_bool else "NULL")
        updates.append(q(soft))
    head = (f"INSERT INTO {target} ({', '.join(insert_cols)}) SELECT {', '.join(insert_vals)} "
            f"FROM {q(res)} AS r WHERE r.{q(KIND)} = 'N'")
    direct_head = (f"INSERT INTO {target} ({', '.join(insert_cols)}) "
                   f"SELECT {', '.join(insert_vals)} FROM ({ranked}) AS r")
    if d == "postgres":
        if updates:
            sets = ", ".join(f"{c} = EXCLUDED.{c}" for c in updates)
            conflict = f" ON CONFLICT ({', '.join(key_cols)}) DO UPDATE SET {sets}"
        else:
            conflict = f" ON CONFLICT ({', '.join(key_cols)}) DO NOTHING"
        upsert = head + conflict
        upsert_new_only = direct_head + conflict
        # No ranking either: two rows for one target key fail as a unique
        # violation, and the ranked upsert then decides between them.
        insert_new_only = (f"INSERT INTO {target} ({', '.join(insert_cols)}) "
                           f"SELECT {', '.join(insert_vals)} FROM ({new_sql}) AS r "
                           f"WHERE r.{q(KIND)} = 'N'")
    else:
        # VALUES() works on MariaDB and MySQL 8 (deprecated there in favour of a
        # row alias that MariaDB does not parse).
        sets = ", ".join(f"{c} = VALUES({c})" for c in (updates or key_cols[:1]))
        upsert = f"{head} ON DUPLICATE KEY UPDATE {sets}"
        upsert_new_only = f"{direct_head} ON DUPLICATE KEY UPDATE {sets}"
        insert_new_only = ""  # InnoDB's upsert costs little more than its insert
        if _other_unique_keys(bound):
            # ON DUPLICATE KEY UPDATE takes whichever unique key clashes first
            # and would overwrite a *different* row through it.  Update by the
            # rule's key, then insert what is missing: a clash on another
            # unique key is then an error (1062) and a dead letter with it.
            values = dict(zip(insert_cols, insert_vals, strict=True))
            assign = ", ".join(f"t.{c} = {values[c]}" for c in updates)
            missing = f"NOT EXISTS (SELECT 1 FROM {target} AS t WHERE {match})"
            ins = f"INSERT INTO {target} ({', '.join(insert_cols)}) SELECT {', '.join(insert_vals)}"
            upsert = f"{ins} FROM {q(res)} AS r WHERE r.{q(KIND)} = 'N' AND {missing}"
            upsert_new_only = f"{ins} FROM ({ranked}) AS r WHERE {missing}"
            if assign:
                update = (f"UPDATE {target} AS t JOIN {q(res)} AS r ON {match} SET {assign} "
                          f"WHERE r.{q(KIND)} = 'N'")
                update_new_only = f"UPDATE {target} AS t JOIN ({ranked}) AS r ON {match} SET {assign}"
    validations = [(cond, _validation_sql(bound, stage, cond, d))
                   for cond in bound.options.validate]
    return CompiledRule(bound=bound, stage=stage, result_name=res, create_result=create_result,
                        clear_result=clear_result, fill=fill, delete=delete, upsert=upsert,
                        validations=validations, upsert_new_only=upsert_new_only,
                        insert_new_only=insert_new_only, update=update,
                        update_new_only=update_new_only)


def _other_unique_keys(bound: BoundRule) -> list[tuple[str, ...]]:
    """The target's unique keys (primary key included) other than the rule's key."""
    key = {k.lower() for k in bound.key}
    return [u for u in bound.target.unique_keys if {c.lower() for c in u} != key]


def _typed_null(e: exp.Expr, column: Column | None, d: str) -> exp.Expr:
    """A bare ``NULL`` written for a target column, cast to that column's type.

    PostgreSQL types an untyped NULL as text in the result table, which the
    upsert then cannot store in, say, an integer column; MySQL converts it.
    """
    if d != "postgres" or not isinstance(e, exp.Null) or column is None:
        return e
    try:
        return exp.cast(e, exp.DataType.build(column.type, dialect="postgres", udt=True))
    except (ParseError, TokenError, ValueError):
        return e


def _validation_sql(bound: BoundRule, stage: StageTable, condition: str, d: str) -> str:
    """``SELECT _cdc_seq`` of new images for which ``condition`` is not true.

    NULL counts as failing: ``phone IS NOT NULL``-style checks mean it.
    """
    rule = bound.rule
    where = f"rule_options.{rule.name}.validate"
    try:
        cond = sqlglot.parse_one(condition, read=rule.dialect)
    except (ParseError, TokenError) as e:
        raise RuleError(f"{where}: cannot parse {condition!r}: {str(e).splitlines()[0]}",
                        file=rule.file) from None
    alias = rule.source.alias
    for col in list(cond.find_all(exp.Column)):
        if col.table and col.table.lower() != alias.lower():
            raise RuleError(f"{where}: {condition!r} may only name columns of the source "
                            f"table {rule.source.name!r}", file=rule.file)
        c = bound.source.column(col.name)
        if c is None:
            raise RuleError(f"{where}: {condition!r}: source table {rule.source.name!r} has no "
                            f"column {col.name!r}", file=rule.file)
        col.replace(exp.column(c.name, table=alias, quoted=True))
    for rw in rewrites_for(rule.dialect, d):
        cond = rw(cond)
    q = lambda n: ident(n, d)  # noqa: E731
    return (f"SELECT {q(alias)}.{q(SEQ)} FROM {q(stage.name)} AS {q(alias)} "
            f"WHERE {q(alias)}.{q(KIND)} = 'N' AND NOT COALESCE(({cond.sql(dialect=d)}), FALSE)")


def _resolve_identifiers(sel: exp.Select, bound: BoundRule) -> None:
    """Spell every column and table exactly as the catalogs do, quoted.

    A rule written for MySQL says ``c.FirstName``; PostgreSQL would fold the
    unquoted name to ``firstname`` and miss the staging column.  Binding already
    proved each reference resolves, so rewriting to the catalog's spelling
    changes no meaning.
    """
    rule = bound.rule
    src_alias = rule.source.alias
    scopes: list[tuple[str, TableSchema]] = [(src_alias, bound.source)]
    for ref in rule.lookups:
        scopes.append((ref.alias, bound.lookups[ref.alias.lower()]))
    for join in sel.args.get("joins") or []:
        t = join.this
        if isinstance(t, exp.Table):
            shape = bound.lookups.get(t.alias_or_name.lower())
            if shape is not None:
                parts = [exp.to_identifier(shape.name, quoted=True)]
                db = t.args.get("db")
                new = exp.Table(this=parts[0],
                                db=exp.to_identifier(shape.schema, quoted=True) if db else None,
                                alias=exp.TableAlias(
                                    this=exp.to_identifier(t.alias_or_name, quoted=True)))
                join.set("this", new)
    for col in list(sel.find_all(exp.Column)):
        if isinstance(col.this, exp.Star):
            continue
        parent = col.parent
        nested = False
        while parent is not None and parent is not sel:
            if isinstance(parent, exp.Select):
                nested = True
                break
            parent = parent.parent
        if nested:
            continue
        qual = col.table.lower()
        for alias, shape in scopes:
            if qual and qual != alias.lower():
                continue
            c = shape.column(col.name)
            if c is not None:
                col.replace(exp.column(c.name, table=alias, quoted=True))
                break
