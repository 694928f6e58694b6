"""Read rule files and check their shape, without any database.

A rule is ``INSERT INTO target [(cols)] SELECT … FROM source [AS a]
[[LEFT] JOIN lookup …] [WHERE …]``.  Anything that would need more than one
source row to compute one target row (aggregates, window functions, DISTINCT,
GROUP BY, LIMIT, derived tables) cannot run per change, so it is refused here
with the file and line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import sqlglot
from sqlglot import exp
from sqlglot.dialects.dialect import Dialect
from sqlglot.errors import ParseError, TokenError
from sqlglot.tokens import Token, TokenType

from cdc import names
from cdc.errors import RuleError

DIALECTS = {"mysql": "mysql", "mariadb": "mysql", "postgresql": "postgres", "postgres": "postgres"}


def sqlglot_dialect(kind: str) -> str:
    try:
        return DIALECTS[kind.lower()]
    except KeyError:
        raise RuleError(f"unknown SQL dialect {kind!r}; use mysql or postgresql") from None


@dataclass(frozen=True, slots=True)
class TableRef:
    name: str  # cdc.names text: "t", "s.t", '"a.b"' (built from the parsed parts)
    alias: str  # the alias, or the bare table name when none was given
    line: int
    join_kind: str = ""  # "", "LEFT", "INNER" for joins

    @property
    def schema(self) -> str | None:
        """The schema the rule names, or None (the connection's default)."""
        return names.schema_of(self.name)

    @property
    def table(self) -> str:
        return names.table_of(self.name)


@dataclass(slots=True)
class Rule:
    name: str
    file: str
    text: str
    dialect: str  # sqlglot dialect of the rule text
    tree: exp.Insert
    target: TableRef
    target_columns: list[str] | None
    select: exp.Select
    source: TableRef
    lookups: list[TableRef] = field(default_factory=list)
    line: int = 1

    def error(self, message: str, node: exp.Expr | None = None, *,
              fix: str | None = None) -> RuleError:
        return RuleError(message, file=self.file, line=line_of(node) or self.line, fix=fix)


def line_of(node: exp.Expr | None) -> int | None:
    if node is None:
        return None
    for n in node.walk():
        line = n.meta.get("line") if isinstance(n, exp.Expr) else None
        if line:
            return int(line)
    return None


def table_name(t: exp.Table, fold: bool = False) -> str:
    """The table's name text (cdc.names) from the parsed parts, never from a
    dotted string: ``"a.b"`` stays one table, ``s."t.b"`` is table ``t.b`` in
    ``s``.  A catalog (database) part, which PostgreSQL allows, is dropped.
    With ``fold`` (a table in PostgreSQL), unquoted parts are folded to lower
    case as PostgreSQL does, and schema ``public`` is left out as PostgreSQL's
    relation names leave it out: ``public.Orders`` is ``orders``."""
    def part(i: exp.Identifier) -> str:
        if fold and not i.quoted:
            return i.name.lower()
        return i.name

    db = t.args.get("db")
    this = t.this
    name = part(this) if isinstance(this, exp.Identifier) else t.name
    schema = part(db) if isinstance(db, exp.Identifier) else None
    if fold and schema == "public":
        schema = None
    return names.qualified(schema, name)


def load_rules(directory: Path, default_dialect: str,
               dialect_overrides: dict[str, str] | None = None) -> list[Rule]:
    """Parse every ``*.sql`` file in ``directory`` (sorted by name)."""
    if not directory.is_dir():
        raise RuleError(f"rules directory {directory} does not exist")
    files = sorted(directory.glob("*.sql"))
    if not files:
        raise RuleError(f"rules directory {directory} holds no *.sql files")
    overrides = dialect_overrides or {}
    rules = []
    seen: dict[str, str] = {}
    for f in files:
        name = f.stem
        if name in seen:
            raise RuleError(f"two rule files named {name!r}", file=str(f))
        seen[name] = str(f)
        dialect = overrides.get(name) or default_dialect
        try:
            text = f.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise RuleError(f"not UTF-8 text ({e.reason})", file=str(f)) from None
        rules.append(parse_rule(name, str(f), text, sqlglot_dialect(dialect)))
    return rules


def parse_rule(name: str, file: str, text: str, dialect: str) -> Rule:
    def fail(message: str, node: exp.Expr | None = None, line: int | None = None) -> RuleError:
        return RuleError(message, file=file, line=line or line_of(node) or 1)

    try:
        _check_tokens(text, dialect)
        statements = [s for s in sqlglot.parse(text, read=dialect) if s is not None]
    except _TokenProblem as e:
        raise fail(f"syntax error: {e}", line=e.line) from None
    except ParseError as e:
        first = e.errors[0] if e.errors else {}
        desc = _describe(str(first.get("description") or e), first.get("highlight"))
        raise fail(f"syntax error: {desc}", line=first.get("line")) from None
    except TokenError as e:
        raise fail(f"syntax error: {e}") from None
    if not statements:
        raise fail("the file holds no SQL statement")
    if len(statements) > 1:
        raise fail("a rule file holds exactly one statement; found "
                   f"{len(statements)} (split them into separate files)",
                   statements[1])
    tree = statements[0]
    if not isinstance(tree, exp.Insert):
        raise fail(f"a rule is INSERT INTO target … SELECT … FROM source; found {tree.key.upper()}",
                   tree)
    if tree.args.get("with") or tree.find(exp.With):
        raise fail("WITH (common table expressions) is not supported in rules", tree.find(exp.With))
    for unsupported in ("conflict", "returning", "overwrite", "where"):
        if tree.args.get(unsupported):
            raise fail(f"the rule's INSERT must be plain: remove its {unsupported.upper()} clause "
                       "(cdc writes the upsert itself)", tree.args[unsupported]
                       if isinstance(tree.args[unsupported], exp.Expr) else None)
    target_node = tree.this
    columns: list[str] | None = None
    if isinstance(target_node, exp.Schema):
        columns = [c.name for c in target_node.expressions]
        target_node = target_node.this
    if not isinstance(target_node, exp.Table):
        raise fail("INSERT INTO must name a target table", tree)
    target = TableRef(table_name(target_node), target_node.name, line_of(target_node) or 1)

    select = tree.expression
    if isinstance(select, exp.Subquery):
        select = select.unnest()
    if isinstance(select, exp.SetOperation):
        raise fail(f"{select.key.upper()} is not supported: write one rule file per SELECT", select)
    if not isinstance(select, exp.Select):
        raise fail("a rule is INSERT INTO target … SELECT … FROM source (VALUES is not a rule)",
                   select)

    for key, what in (("group", "GROUP BY"), ("having", "HAVING"), ("distinct", "DISTINCT"),
                      ("limit", "LIMIT"), ("offset", "OFFSET"), ("order", "ORDER BY"),
                      ("qualify", "QUALIFY")):
        node = select.args.get(key)
        if node:
            raise fail(f"{what} is not supported in rules: each source row maps to at most "
                       "one target row", node if isinstance(node, exp.Expr) else None)
    for agg in select.find_all(exp.AggFunc):
        if _inside_subquery(agg, select):
            continue
        raise fail(f"aggregate {agg.sql(dialect=dialect)} is not supported in rules: each source "
                   "row maps to at most one target row", agg)
    window = select.find(exp.Window)
    if window is not None:
        raise fail("window functions are not supported in rules", window)

    from_ = select.args.get("from") or select.args.get("from_")
    if from_ is None:
        raise fail("the SELECT has no FROM: name the source table", select)
    src = from_.this
    if not isinstance(src, exp.Table):
        raise fail("FROM must name the source table directly (no subquery or function)", src)
    if len(from_.expressions or []) > 0:
        raise fail("FROM a, b (comma joins) is not supported: use JOIN … ON", from_)
    # The source table lives in the database whose dialect the rule is written
    # in: a PostgreSQL rule's `FROM Orders` reads `orders`, as PostgreSQL would.
    # Target and lookup names are kept as written: the target may be MySQL,
    # whose names are case-sensitive.
    source = TableRef(table_name(src, fold=dialect == "postgres"), src.alias_or_name, line_of(src) or 1)

    lookups = []
    for j in select.args.get("joins") or []:
        t = j.this
        if not isinstance(t, exp.Table):
            raise fail("JOIN must name a target-side lookup table (no subquery)", t)
        side = (j.side or "").upper()
        kind = (j.kind or "").upper()
        if side in ("RIGHT", "FULL") or kind == "CROSS":
            raise fail(f"{side or kind} JOIN is not supported: the source table must be the "
                       "preserved side (use JOIN or LEFT JOIN)", j)
        if j.args.get("on") is None and not j.args.get("using"):
            raise fail("JOIN needs an ON or USING condition", j)
        lookups.append(TableRef(table_name(t), t.alias_or_name, line_of(t) or 1, side or "INNER"))

    aliases = [source.alias.lower()] + [lk.alias.lower() for lk in lookups]
    if len(set(aliases)) != len(aliases):
        raise fail("two tables in the rule share one name or alias: give each an alias", select)
    if columns is not None and len(columns) != len(select.expressions):
        raise fail(f"INSERT names {len(columns)} columns but SELECT yields "
                   f"{len(select.expressions)} values", select)
    if columns is None:
        for proj in select.expressions:
            if isinstance(proj, exp.Star) or (
                    isinstance(proj, exp.Column) and isinstance(proj.this, exp.Star)):
                raise fail("SELECT * is not supported in rules: list the columns", proj)
            if not proj.alias_or_name or (not isinstance(proj, exp.Alias | exp.Column)):
                raise fail(f"without a column list, each value needs AS target_column: "
                           f"{proj.sql(dialect=dialect)}", proj)
    else:
        for proj in select.expressions:
            if isinstance(proj, exp.Star) or (
                    isinstance(proj, exp.Column) and isinstance(proj.this, exp.Star)):
                raise fail("SELECT * is not supported in rules: list the columns", proj)
    return Rule(name=name, file=file, text=text, dialect=dialect, tree=tree, target=target,
                target_columns=columns, select=select, source=source, lookups=lookups,
                line=line_of(tree) or 1)


class _TokenProblem(Exception):
    def __init__(self, message: str, line: int) -> None:
        super().__init__(message)
        self.line = line


# Operators that need a value on each side: two in a row (`= =`, `> AND`) are
# always a typo, and the parser would name its internal class for it.
_BINARY = {TokenType.EQ, TokenType.NEQ, TokenType.GT, TokenType.GTE, TokenType.LT,
           TokenType.LTE, TokenType.NULLSAFE_EQ, TokenType.AND, TokenType.OR}


def _check_tokens(text: str, dialect: str) -> None:
    """Problems the parser reports badly, found on the tokens first.

    An unclosed parenthesis lets the parser read on: ``TRIM(c.name FROM t``
    is valid TRIM syntax, and the rule then "has no FROM".  Counting
    parentheses on tokens (strings and comments are single tokens) names the
    one that is never closed instead.
    """
    opened: list[Token] = []
    prev: Token | None = None
    for tok in Dialect.get_or_raise(dialect).tokenize(text):
        if tok.token_type == TokenType.L_PAREN:
            opened.append(tok)
        elif tok.token_type == TokenType.R_PAREN:
            if not opened:
                raise _TokenProblem(f"unbalanced parenthesis: the ')' at line {tok.line}, "
                                    f"column {tok.col} closes nothing", tok.line)
            opened.pop()
        if prev is not None and prev.token_type in _BINARY and tok.token_type in _BINARY:
            raise _TokenProblem(f"unexpected {tok.text!r} after {prev.text!r}", tok.line)
        prev = tok
    if opened:
        tok = opened[-1]
        raise _TokenProblem(f"unbalanced parenthesis: the '(' at line {tok.line}, column "
                            f"{tok.col} is never closed", tok.line)


_CLASS = re.compile(r"<class '(?:[\w]+\.)*(\w+)'>")
_MISSING = re.compile(r"Required keyword: '(\w+)' missing for <class '(?:[\w]+\.)*(\w+)'>")


def _operator(class_name: str) -> str:
    """How SQL spells a sqlglot expression class: ``EQ`` is ``=``, ``And`` is ``AND``."""
    cls = getattr(exp, class_name, None)
    if isinstance(cls, type) and issubclass(cls, exp.Binary):
        text = cls(this=exp.column("a"), expression=exp.column("b")).sql()
        if text.startswith("a ") and text.endswith(" b"):
            return text[2:-2]
    return class_name.upper()


def _describe(desc: str, highlight: object) -> str:
    """The parser's message in the rule writer's words: no internal class names."""
    desc = desc.split("<Token")[0].strip()
    m = _MISSING.match(desc)
    if m:
        side = {"this": "left", "expression": "right"}.get(m.group(1))
        op = _operator(m.group(2))
        desc = (f"{op!r} has nothing on its {side}" if side else
                f"incomplete {op} (its {m.group(1)} is missing)")
    desc = _CLASS.sub(lambda c: _operator(c.group(1)), desc)
    if highlight:
        desc += f" near {highlight!r}"
    return desc


def _inside_subquery(node: exp.Expr, top: exp.Select) -> bool:
    parent = node.parent
    while parent is not None and parent is not top:
        if isinstance(parent, exp.Subquery | exp.Select):
            return True
        parent = parent.parent
    return False
