"""Rule parsing, binding and compilation, driven by fixture files.

``tests/fixtures/rules/bad/*.sql`` each start with ``-- error: TEXT``: the
error must contain TEXT (a ``:N:`` prefix pins the line).  ``good/*.sql`` list
``-- expect-sql: TEXT`` fragments the compiled PostgreSQL SQL must contain.
No database: shapes come from ``schemas.yaml``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from cdc.catalog import Column, TableSchema
from cdc.config import RuleOptions
from cdc.errors import RuleError
from cdc.rules.bind import bind
from cdc.rules.compile import compile_rule, stage_table
from cdc.rules.parse import parse_rule

FIXTURES = Path(__file__).parent / "fixtures" / "rules"


def _shapes(side: str) -> dict[str, TableSchema]:
    data = yaml.safe_load((FIXTURES / "schemas.yaml").read_text())[side]
    out = {}
    for name, t in data.items():
        cols = tuple(Column(c, typ, True, typ.split("(")[0]) for c, typ in t["columns"].items())
        out[name] = TableSchema("db", name, cols, tuple(t["pk"]))
    return out


SOURCE, TARGET = _shapes("source"), _shapes("target")


def compile_fixture(path: Path, target_kind: str = "postgresql") -> str:
    text = path.read_text()
    rule = parse_rule(path.stem, str(path), text, "mysql")
    bound = bind(rule, SOURCE.get(rule.source.name), TARGET.get(rule.target.name),
                 {ref.name: TARGET.get(ref.name) for ref in rule.lookups}, RuleOptions(),
                 lambda n: n in SOURCE)
    stage = stage_table(bound.source, rule.source.name, 0, "mysql", target_kind)
    c = compile_rule(bound, stage, 0, target_kind)
    return "\n".join([stage.create, c.create_result, c.fill, c.delete or "", c.upsert])


@pytest.mark.parametrize("path", sorted((FIXTURES / "bad").glob("*.sql")), ids=lambda p: p.stem)
def test_bad_rule_is_refused_with_file_and_line(path: Path) -> None:
    first = path.read_text().splitlines()[0]
    expected = first.removeprefix("-- error:").strip()
    line = re.match(r":(\d+): ", expected)
    if line:
        expected = expected[line.end():]
    with pytest.raises(RuleError) as e:
        compile_fixture(path)
    msg = str(e.value)
    assert msg.startswith(str(path) + ":"), msg
    if line:
        assert msg.startswith(f"{path}:{line.group(1)}: "), msg
    assert "\n" not in msg, "an error is one line"
    assert expected in msg, f"{msg!r} lacks {expected!r}"


@pytest.mark.parametrize("path", sorted((FIXTURES / "good").glob("*.sql")), ids=lambda p: p.stem)
def test_good_rule_compiles(path: Path) -> None:
    sql = compile_fixture(path)
    wanted = re.findall(r"^-- expect-sql: (.*)$", path.read_text(), re.M)
    assert wanted
    for fragment in wanted:
        assert fragment in sql, f"{fragment!r} not in:\n{sql}"
    # Also compiles for a MySQL target.
    assert "ON DUPLICATE KEY UPDATE" in compile_fixture(path, "mysql")


def test_cast_as_char_keeps_every_character() -> None:
    """MySQL CAST(x AS CHAR) must not become PostgreSQL char(1)."""
    sql = compile_fixture(FIXTURES / "good" / "quoted_identifiers.sql")
    assert "AS CHAR)" not in sql and 'CAST("c"."id" AS TEXT)' in sql


def test_injection_in_identifiers_stays_quoted() -> None:
    name = 'x"; DROP TABLE crm_customer; --'
    src = {"evil": TableSchema("db", "evil", (Column("id", "int", False, "int"),
                                              Column(name, "text", True, "text")), ("id",))}
    rule = parse_rule("evil", "evil.sql", "INSERT INTO crm_customer (customer_no, full_name) "
                      f"SELECT e.id, e.`{name.replace('`', '``')}` FROM evil AS e", "mysql")
    bound = bind(rule, src["evil"], TARGET["crm_customer"], {}, RuleOptions(), lambda n: False)
    stage = stage_table(bound.source, "evil", 0, "mysql", "postgresql")
    c = compile_rule(bound, stage, 0, "postgresql")
    assert '"x""; DROP TABLE crm_customer; --"' in stage.create
    assert '"x""; DROP TABLE crm_customer; --"' in c.fill
