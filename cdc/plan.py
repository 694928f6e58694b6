"""Load, bind and compile a pipeline's rules against the live schemas.

The result, a ``Plan``, is everything the applier needs: one staging table per
source table and the compiled rules that read it.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from cdc.batch import Converter
from cdc.catalog import TableSchema
from cdc.config import Config
from cdc.errors import ConfigError, RuleError, TerminalError
from cdc.names import resolve as resolve_name
from cdc.rules.bind import BoundRule, bind
from cdc.rules.compile import CompiledRule, StageTable, compile_rule, stage_table, table_sql
from cdc.rules.parse import Rule, load_rules
from cdc.typemap import UnsupportedType


class Catalog(Protocol):
    def table(self, name: str) -> TableSchema | None: ...


@dataclass(slots=True)
class Plan:
    rules: list[CompiledRule]
    stages: dict[str, StageTable]  # by source table name
    by_table: dict[str, list[CompiledRule]]
    converters: dict[str, list[Converter | None]] = field(default_factory=dict)
    # Paused source tables whose rules do not bind against the source as it is
    # now (build_plan's ``tolerate``): table -> why.  Their changes stay parked.
    unbound: dict[str, str] = field(default_factory=dict)

    @property
    def source_tables(self) -> list[str]:
        return list(self.stages)


def parse_rules(config: Config) -> list[Rule]:
    overrides = {name: o.dialect for name, o in config.rule_options.items() if o.dialect}
    rules = load_rules(config.rules_dir, config.source.kind, overrides)
    known = {r.name for r in rules}
    for name in config.rule_options:
        if name not in known:
            import difflib

            near = difflib.get_close_matches(name, sorted(known), n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise TerminalError(f"{config.path}: rule_options names rule {name!r}, but "
                                f"{config.rules_dir} has no {name}.sql{hint}")
    enabled = [r for r in rules if config.options_for(r.name).enabled]
    check_truncate_choice(config, enabled)
    return enabled


def check_truncate_choice(config: Config, rules: list[Rule]) -> None:
    """A source TRUNCATE empties a rule's target table by default; where several
    rules write one target table that would wipe the others' rows too, so each
    of them must say what it wants (rule_options.NAME.on_truncate)."""
    writers: dict[str, list[str]] = {}
    for r in rules:
        writers.setdefault(r.target.name, []).append(r.name)
    for table, names in writers.items():
        unset = [n for n in names if config.options_for(n).on_truncate is None]
        if len(names) > 1 and unset:
            raise ConfigError(
                f"{config.path}: rules {', '.join(names)} all write target table {table!r}; "
                f"a source TRUNCATE would empty it for all of them",
                fix=f"set rule_options.<rule>.on_truncate: truncate or ignore for "
                    f"{', '.join(unset)}")


def chosen_tables(plan: Plan, tables: Collection[str] | None) -> list[str]:
    """The source tables a ``--table`` option names (as a DBA may spell them),
    each once; every table the plan reads when none is given."""
    if not tables:
        return list(plan.stages)
    chosen = []
    for given in tables:
        t = resolve_name(given, list(plan.stages))
        if t is None:
            raise ConfigError(f"--table {given!r}: no rule reads it (rules read: "
                              f"{', '.join(plan.stages)})")
        chosen.append(t)
    return list(dict.fromkeys(chosen))


def build_plan(config: Config, source: Catalog, target: Any,
               rules: list[Rule] | None = None, tolerate: Collection[str] = (),
               shapes: Mapping[str, TableSchema] | None = None) -> Plan:
    """``tolerate``: source tables (paused ones, cdc.pause) whose rules may fail
    to bind; such a table is left out of the plan, with the reason in
    ``Plan.unbound``, instead of failing the whole plan.  ``shapes``: source
    tables to bind as they were, not as the catalog has them now
    (cdc.pause.earlier_shapes)."""
    rules = parse_rules(config) if rules is None else rules
    if not rules:
        raise TerminalError(f"{config.rules_dir}: every rule is disabled")
    source_cache: dict[str, TableSchema | None] = dict(shapes or {})
    target_cache: dict[str, TableSchema | None] = {}

    def src(name: str) -> TableSchema | None:
        if name not in source_cache:
            source_cache[name] = source.table(name)
        return source_cache[name]

    def tgt(name: str) -> TableSchema | None:
        if name not in target_cache:
            target_cache[name] = target.table(name)
        return target_cache[name]

    bound: list[BoundRule] = []
    unbound: dict[str, str] = {}
    for r in rules:
        lookups = {ref.name: tgt(ref.name) for ref in r.lookups}
        opts = config.options_for(r.name)
        uniques = target.unique_keys(r.target.name) if opts.key else None
        try:
            b = bind(r, src(r.source.name), tgt(r.target.name), lookups, opts,
                     lambda n: src(n) is not None, uniques)
            _require_row_key(b, config.source.kind)
            if config.source.kind == "postgresql":
                _require_identity(b)
        except RuleError as e:
            if r.source.name not in tolerate:
                raise
            unbound.setdefault(r.source.name, f"rule {r.name}: {e}")
            continue
        bound.append(b)
    # A paused table is paused for every rule reading it.
    bound = [b for b in bound if b.rule.source.name not in unbound]

    stages: dict[str, StageTable] = {}
    by_table: dict[str, list[CompiledRule]] = {}
    compiled: list[CompiledRule] = []
    for i, b in enumerate(bound):
        name = b.rule.source.name
        if name not in stages:
            try:
                stages[name] = stage_table(b.source, name, len(stages), config.source.kind,
                                           config.target.kind)
            except UnsupportedType as e:
                raise RuleError(f"source table {name!r}: {e.message}", file=b.rule.file,
                                line=b.rule.source.line, fix=e.fix) from None
        c = compile_rule(b, stages[name], i, config.target.kind)
        compiled.append(c)
        by_table.setdefault(name, []).append(c)
    return Plan(rules=compiled, stages=stages, by_table=by_table, unbound=unbound)


def _require_row_key(b: BoundRule, kind: str) -> None:
    """Refuse a rule whose source table has nothing that tells its rows apart.

    A snapshot reads a table in key order, chunk after chunk, and resumes after
    the last key; verify reads it the same way; a dead letter is re-read from
    the source by its key.  None of them works on a table without one, so
    every command that builds a plan refuses it here, before writing anything,
    rather than one of them failing later (or, for verify, crashing).
    """
    st = b.source
    if st.row_key:
        return
    name = _pg_name(st) if kind == "postgresql" else table_sql(b.rule.source.name, "mysql")
    raise RuleError(
        f"source table {b.rule.source.name!r} has no primary key (nor a unique key on NOT NULL "
        "columns), so its rows cannot be told apart: a snapshot could not read it in "
        "resumable chunks, verify could not compare it and a dead letter could not be re-read",
        file=b.rule.file, line=b.rule.source.line,
        fix=f"ALTER TABLE {name} ADD PRIMARY KEY (…); or a UNIQUE key on NOT NULL columns")


def _require_identity(b: BoundRule) -> None:
    """Refuse a rule whose target key a PostgreSQL delete cannot name.

    A delete or key change carries only the replica identity columns of the
    old row; a key computed from any other column would come out NULL, match
    no target row, and the target row would stay forever.  Every command that
    would run the rule builds its plan here, so none accepts it.
    """
    st = b.source
    have = {c.lower() for c in st.identity_columns}
    missing = sorted(c for c in b.key_source_columns if c.lower() not in have)
    if not missing:
        return
    kinds = {"d": "REPLICA IDENTITY DEFAULT (the primary key)", "i": "its REPLICA IDENTITY index",
             "n": "REPLICA IDENTITY NOTHING"}
    via = (f" through the lookup join(s) {', '.join(sorted(b.key_lookups))}"
           if b.key_lookups else "")
    raise RuleError(
        f"the target key ({', '.join(b.key)}) is computed{via} from {', '.join(missing)} of "
        f"{b.rule.source.name!r}, which a delete or key change does not carry under "
        f"{kinds.get(st.replica_identity, repr(st.replica_identity))}: such deletes would "
        "leave their target rows behind",
        file=b.rule.file, line=b.rule.line,
        fix=f"ALTER TABLE {_pg_name(st)} REPLICA IDENTITY FULL;, or compute "
            "the target key from the primary key only")


def _pg_name(st: TableSchema) -> str:
    from psycopg import sql

    return sql.SQL(".").join([sql.Identifier(st.schema), sql.Identifier(st.name)]).as_string(None)


def attach_converters(plan: Plan, config: Config) -> None:
    """Per-column value adapters for the target's driver (see the targets)."""
    import importlib

    module = importlib.import_module("cdc.targets.pg_convert" if config.target.kind ==
                                     "postgresql" else "cdc.targets.mysql")
    plan.converters = {n: module.converters(st, config.source.kind)
                       for n, st in plan.stages.items()}
