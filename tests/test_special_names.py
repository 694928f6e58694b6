"""Any identifier a database allows, end to end through the CLI: table names
holding a dot (``a.b`` is one table, not table ``b`` in schema ``a``), ``&*@^``
and spaces; non-ASCII, quoted and mixed-case columns; schema-qualified names
whose parts hold dots; database names and passwords that need escaping in a
URL.  Snapshot, stream (insert, update, key change, delete) and verify."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from pipeline_helpers import PipelineThread, cdc, write_pipeline

from cdc import names
from cdc.config import DatabaseUrl, load
from cdc.errors import ConfigError

# Source table `a.b`; the target table `we&ird *@^ name`; a column `it's "q".x`.
COLS = ["Id", "prénom", "it's \"q\".x", "MixedCase"]
SRC_DDL = {
    "mysql": "CREATE TABLE `a.b` (`Id` INT PRIMARY KEY, `prénom` VARCHAR(50),"
             " `it's \"q\".x` VARCHAR(20), `MixedCase` INT) DEFAULT CHARSET=utf8mb4",
    "postgresql": 'CREATE TABLE "a.b" ("Id" integer PRIMARY KEY, "prénom" text,'
                  ' "it\'s ""q"".x" text, "MixedCase" integer)',
}
# A decoy: what splitting `a.b` at the dot would find, if schema `a` existed.
DECOY = {
    "mysql": None,
    "postgresql": "CREATE SCHEMA a; CREATE TABLE a.b (x integer PRIMARY KEY)",
}
# The CHECK makes a dead letter of a row with MixedCase >= 100.
TGT_DDL = {
    "mysql": "CREATE TABLE `we&ird *@^ name` (`Id` INT PRIMARY KEY, `prénom` VARCHAR(50),"
             " `it's \"q\".x` VARCHAR(20), `MixedCase` INT,"
             " CONSTRAINT `small` CHECK (`MixedCase` < 100)) DEFAULT CHARSET=utf8mb4",
    "postgresql": 'CREATE TABLE "we&ird *@^ name" ("Id" integer PRIMARY KEY, "prénom" text,'
                  ' "it\'s ""q"".x" text, "MixedCase" integer,'
                  ' CONSTRAINT small CHECK ("MixedCase" < 100))',
}
RULE = {
    "mysql": "INSERT INTO `we&ird *@^ name` (`Id`, `prénom`, `it's \"q\".x`, `MixedCase`)\n"
             "SELECT s.`Id`, COALESCE(s.`prénom`, '-'), s.`it's \"q\".x`, s.`MixedCase`\n"
             "FROM `a.b` AS s WHERE s.`MixedCase` >= 0",
    # No alias: the columns are qualified by the quoted table name itself.
    "postgresql": 'INSERT INTO "we&ird *@^ name" ("Id", "prénom", "it\'s ""q"".x", "MixedCase")\n'
                  'SELECT "a.b"."Id", COALESCE("a.b"."prénom", \'-\'), "a.b"."it\'s ""q"".x",'
                  ' "a.b"."MixedCase"\n'
                  'FROM "a.b" WHERE "a.b"."MixedCase" >= 0',
}
DIRECTIONS = [("mysql", "postgresql"), ("postgresql", "mysql"), ("postgresql", "postgresql"),
              ("mysql", "mysql")]


def q(kind: str, name: str) -> str:
    if kind == "mysql":
        return "`" + name.replace("`", "``") + "`"
    return '"' + name.replace('"', '""') + '"'


def rows(db: Any, table: str) -> list[tuple[Any, ...]]:
    cols = ", ".join(q(db.kind, c) for c in COLS)
    return sorted(tuple(r) for r in db.query(f"SELECT {cols} FROM {q(db.kind, table)}"))


def expected(src: Any) -> list[tuple[Any, ...]]:
    return sorted((i, p if p is not None else "-", x, m)
                  for i, p, x, m in rows(src, "a.b") if m is not None and m >= 0)


def drop_slot(cfg: Path) -> None:
    from cdc.sources.postgres import PostgresSource

    c = load(cfg)
    PostgresSource(c.source.libpq(), slot=c.slot, publication=c.publication,
                   tables=['"a.b"']).teardown()


@pytest.fixture(params=DIRECTIONS, ids=lambda d: f"{d[0]}-to-{d[1]}")
def direction(request: Any, tmp_path: Path, make_mysql_db: Any,
              make_pg_db: Any) -> Iterator[tuple[Any, Any, Path]]:
    s_kind, t_kind = request.param
    src = make_mysql_db() if s_kind == "mysql" else make_pg_db()
    tgt = make_mysql_db() if t_kind == "mysql" else make_pg_db()
    src.execute(SRC_DDL[s_kind])
    if DECOY[s_kind]:
        src.execute(DECOY[s_kind])
    tgt.execute(TGT_DDL[t_kind])
    cfg = write_pipeline(tmp_path, src.url, tgt.url, {"a.b": RULE[s_kind]},
                         name=f"n_{src.name}")
    try:
        yield src, tgt, cfg
    finally:
        if s_kind == "postgresql":
            drop_slot(cfg)


def test_dotted_table_name_all_directions(direction: tuple[Any, Any, Path]) -> None:
    src, tgt, cfg = direction
    ph = "%s"
    insert = (f"INSERT INTO {q(src.kind, 'a.b')} VALUES ({ph}, {ph}, {ph}, {ph})")
    for r in [(1, "zoë", "o'clock", 5), (2, "Ærøskøbing", 'say "hi"', 0),
              (3, "中文", "x`y", -1)]:
        src.execute(insert, r)
    check = cdc("check", "-c", str(cfg), "--show-sql").stdout
    assert "a.b" in check
    cdc("setup", "-c", str(cfg))
    if src.kind == "postgresql":
        # The publication holds the table "a.b", not the decoy a.b.
        assert src.query("SELECT schemaname, tablename FROM pg_publication_tables") == [
            ("public", "a.b")]
    cdc("snapshot", "-c", str(cfg), "--table", "a.b")
    assert rows(tgt, "we&ird *@^ name") == expected(src)
    assert len(expected(src)) == 2
    with PipelineThread(cfg) as p:
        src.execute(insert, (4, "prénom", "it's", 7))
        src.execute(f"UPDATE {q(src.kind, 'a.b')} SET {q(src.kind, 'prénom')} = 'éè'"
                    f" WHERE {q(src.kind, 'Id')} = 1")
        src.execute(f"UPDATE {q(src.kind, 'a.b')} SET {q(src.kind, 'Id')} = 20"
                    f" WHERE {q(src.kind, 'Id')} = 2")
        src.execute(f"UPDATE {q(src.kind, 'a.b')} SET {q(src.kind, 'MixedCase')} = -5"
                    f" WHERE {q(src.kind, 'Id')} = 4")  # leaves the filter
        src.execute(f"UPDATE {q(src.kind, 'a.b')} SET {q(src.kind, 'MixedCase')} = 3"
                    f" WHERE {q(src.kind, 'Id')} = 3")  # enters it
        src.execute(insert, (5, None, None, 1))
        src.execute(f"DELETE FROM {q(src.kind, 'a.b')} WHERE {q(src.kind, 'Id')} = 5")
        src.execute(insert, (6, "big", "x", 500))  # the target's CHECK refuses it
        p.wait_caught_up()
        time.sleep(0.3)
        p.wait_caught_up()
    got = rows(tgt, "we&ird *@^ name")
    assert got == [(1, "éè", "o'clock", 5), (3, "中文", "x`y", 3),
                   (20, "Ærøskøbing", 'say "hi"', 0)]
    dead = json.loads(cdc("dlq", "list", "-c", str(cfg), "--json").stdout)
    assert [(d["rule"], d["source_table"], d["operation"]) for d in dead] == [
        ("a.b", '"a.b"', "I")]
    # Retried from the source row as it is now, read back by its quoted name.
    src.execute(f"UPDATE {q(src.kind, 'a.b')} SET {q(src.kind, 'MixedCase')} = 50"
                f" WHERE {q(src.kind, 'Id')} = 6")
    retried = json.loads(cdc("dlq", "retry", "-c", str(cfg), "--all", "--json").stdout)
    assert retried == {"tried": 1, "applied": 1, "failed": 0, "skipped": 0}
    assert json.loads(cdc("dlq", "list", "-c", str(cfg), "--json").stdout) == []
    assert rows(tgt, "we&ird *@^ name") == expected(src) == [
        (1, "éè", "o'clock", 5), (3, "中文", "x`y", 3), (6, "big", "x", 50),
        (20, "Ærøskøbing", 'say "hi"', 0)]
    for spelling in ("a.b", '"a.b"'):
        report = json.loads(cdc("verify", "-c", str(cfg), "--json", "--table", spelling).stdout)
        assert [(r["source_table"], r["ok"], r["expected"], r["missing"], r["different"])
                for r in report] == [('"a.b"', True, 4, 0, 0)]
    tgt.execute(f"DELETE FROM {q(tgt.kind, 'we&ird *@^ name')} WHERE {q(tgt.kind, 'Id')} = 3")
    bad = cdc("verify", "-c", str(cfg), check=False)
    assert bad.returncode == 1 and "1 missing" in bad.stdout
    cdc("verify", "-c", str(cfg), "--repair")
    assert rows(tgt, "we&ird *@^ name") == expected(src)


def test_schema_qualified_names_with_dots(tmp_path: Path, make_pg_db: Any) -> None:
    """PostgreSQL -> PostgreSQL: ``"Sales.EU"."t.b"`` read, ``"x.y"."we&ird"`` written,
    and a lookup ``"x.y"."map.1"`` joined."""
    src, tgt = make_pg_db(), make_pg_db()
    src.execute('CREATE SCHEMA "Sales.EU"; CREATE TABLE "Sales.EU"."t.b"'
                ' (id integer PRIMARY KEY, code text, "Ünits" integer)')
    # Decoys for a split at the wrong dot.
    src.execute('CREATE SCHEMA "Sales"; CREATE TABLE "Sales"."EU" (id integer PRIMARY KEY)')
    tgt.execute('CREATE SCHEMA "x.y"; CREATE TABLE "x.y"."we&ird" (id integer PRIMARY KEY,'
                ' label text, units integer);'
                'CREATE TABLE "x.y"."map.1" (code text PRIMARY KEY, label text);'
                "INSERT INTO \"x.y\".\"map.1\" VALUES ('a', 'Alpha'), ('b', 'Beta')")
    rule = ('INSERT INTO "x.y"."we&ird" (id, label, units)\n'
            'SELECT s.id, m.label, s."Ünits" FROM "Sales.EU"."t.b" AS s\n'
            'LEFT JOIN "x.y"."map.1" AS m ON m.code = s.code')
    cfg = write_pipeline(tmp_path, src.url, tgt.url, {"tb": rule}, name=f"n_{src.name}")
    try:
        src.execute("""INSERT INTO "Sales.EU"."t.b" VALUES (1, 'a', 10), (2, 'b', 20)""")
        cdc("check", "-c", str(cfg))
        cdc("setup", "-c", str(cfg))
        assert src.query("SELECT schemaname, tablename FROM pg_publication_tables") == [
            ("Sales.EU", "t.b")]
        doctor = cdc("doctor", "-c", str(cfg), check=False)
        assert "publication has \"Sales.EU\".\"t.b\"" in doctor.stdout, doctor.stdout
        assert doctor.returncode == 0, doctor.stdout
        cdc("snapshot", "-c", str(cfg), "--table", "Sales.EU.t.b")
        with PipelineThread(cfg) as p:
            src.execute("""INSERT INTO "Sales.EU"."t.b" VALUES (3, 'c', 30)""")
            src.execute("""UPDATE "Sales.EU"."t.b" SET code = 'a' WHERE id = 2""")
            src.execute("""DELETE FROM "Sales.EU"."t.b" WHERE id = 1""")
            p.wait_caught_up()
            time.sleep(0.3)
            p.wait_caught_up()
        assert tgt.query('SELECT id, label, units FROM "x.y"."we&ird" ORDER BY id') == [
            (2, "Alpha", 20), (3, None, 30)]
        report = json.loads(cdc("verify", "-c", str(cfg), "--json").stdout)
        assert [(r["source_table"], r["target_table"], r["ok"]) for r in report] == [
            ('"Sales.EU"."t.b"', '"x.y".we&ird', True)]
    finally:
        c = load(cfg)
        from cdc.sources.postgres import PostgresSource

        PostgresSource(c.source.libpq(), slot=c.slot, publication=c.publication,
                       tables=['"Sales.EU"."t.b"']).teardown()


PASSWORD = "p@ss:w/rd#1?&%"


@pytest.fixture
def awkward_dbs(mariadb_server: Any, pg_server: Any) -> Iterator[tuple[str, str, Any, Any]]:
    """A database named with a space on each server, reached by a user whose
    password holds ``@ : / # ? & %``."""
    tag = uuid.uuid4().hex[:6]
    db = f"cdc test {tag}"
    user = f"u {tag}"
    pg_server.execute(f'CREATE DATABASE "{db}"')
    pg_server.execute(f"CREATE ROLE \"{user}\" LOGIN SUPERUSER PASSWORD '{PASSWORD}'")
    mariadb_server.execute(f"CREATE DATABASE `{db}` CHARACTER SET utf8mb4")
    mariadb_server.execute(f"CREATE USER '{user}'@'%' IDENTIFIED BY '{PASSWORD}'")
    mariadb_server.execute(f"GRANT ALL PRIVILEGES ON *.* TO '{user}'@'%'")
    try:
        yield db, user, mariadb_server, pg_server
    finally:
        pg_server.execute(f'DROP DATABASE "{db}" WITH (FORCE)')
        pg_server.execute(f'DROP ROLE "{user}"')
        mariadb_server.execute(f"DROP DATABASE `{db}`")
        mariadb_server.execute(f"DROP USER '{user}'@'%'")


@pytest.mark.parametrize("source_kind", ["mysql", "postgresql"])
def test_urls_with_escaped_database_and_password(tmp_path: Path, source_kind: str,
                                                 awkward_dbs: tuple[str, str, Any, Any]) -> None:
    db, user, my, pg = awkward_dbs
    enc = f"{quote(user, safe='')}:{quote(PASSWORD, safe='')}"
    my_url = f"mysql://{enc}@{my.host}:{my.port}/{quote(db, safe='')}"
    pg_url = f"postgresql://{enc}@{pg.host}:{pg.port}/{quote(db, safe='')}"
    u = DatabaseUrl.parse(pg_url)
    assert (u.user, u.password, u.database) == (user, PASSWORD, db)
    # Unencoded, as a ${VAR} expansion leaves it: the user part ends at the last @.
    raw_my = f"mysql://{user}:{PASSWORD}@{my.host}:{my.port}/{quote(db)}"
    raw_pg = f"postgresql://{user}:{PASSWORD}@{pg.host}:{pg.port}/{quote(db)}"
    raw = DatabaseUrl.parse(raw_my)
    assert (raw.user, raw.password, raw.host, raw.port, raw.database) == (
        user, PASSWORD, my.host, my.port, db)
    with my.connect(db) as c, c.cursor() as cur:
        cur.execute("CREATE TABLE `a.b` (`Id` INT PRIMARY KEY, `prénom` VARCHAR(50))"
                    " DEFAULT CHARSET=utf8mb4")
    with pg.connect(db) as c:
        c.execute('CREATE TABLE "a.b" ("Id" integer PRIMARY KEY, "prénom" text)')

    def source_sql(*stmts: str) -> None:
        if source_kind == "mysql":
            with my.connect(db) as c, c.cursor() as cur:
                for st in stmts:
                    cur.execute(st.replace('"', "`"))
        else:
            with pg.connect(db) as c:
                for st in stmts:
                    c.execute(st)

    def target_rows() -> list[tuple[Any, ...]]:
        if source_kind == "mysql":
            with pg.connect(db) as c:
                return c.execute('SELECT "Id", "prénom" FROM "a.b" ORDER BY 1').fetchall()
        with my.connect(db) as c, c.cursor() as cur:
            cur.execute("SELECT `Id`, `prénom` FROM `a.b` ORDER BY 1")
            return [tuple(r) for r in cur.fetchall()]

    source_sql("""INSERT INTO "a.b" VALUES (1, 'x')""")
    rule = 'INSERT INTO "a.b" ("Id", "prénom") SELECT s."Id", s."prénom" FROM "a.b" AS s'
    if source_kind == "mysql":
        urls, rule = (raw_my, pg_url), rule.replace('"', "`")
    else:
        urls = (raw_pg, my_url)
    # A rule file named like the table; its rule_options key is that name.
    cfg = write_pipeline(tmp_path, *urls, {"a.b & *@^": rule},
                         name=f"url_{uuid.uuid4().hex[:6]}",
                         extra='rule_options:\n  "a.b & *@^":\n    on_delete: ignore\n')
    try:
        cdc("check", "-c", str(cfg))
        cdc("setup", "-c", str(cfg))
        cdc("snapshot", "-c", str(cfg))
        with PipelineThread(cfg) as p:
            source_sql("""INSERT INTO "a.b" VALUES (2, 'é')""", """DELETE FROM "a.b" WHERE "Id" = 1""")
            p.wait_caught_up()
            time.sleep(0.3)
            p.wait_caught_up()
        # The delete was ignored, as the rule's options say.
        assert target_rows() == [(1, "x"), (2, "é")]
        report = json.loads(cdc("verify", "-c", str(cfg), "--json", check=False).stdout)
        assert [(r["rule"], r["missing"], r["different"], r["extra"]) for r in report] == [
            ("a.b & *@^", 0, 0, 1)]
        lag = json.loads(cdc("lag", "-c", str(cfg), "--json").stdout)
        assert lag["dead_letters"] == 0
    finally:
        if source_kind == "postgresql":
            cdc("teardown", "-c", str(cfg), "--yes", check=False)


@pytest.mark.parametrize(("text", "parts"), [
    ("orders", ["orders"]), ("sales.orders", ["sales", "orders"]), ('"a.b"', ["a.b"]),
    ('s."t.b"', ["s", "t.b"]), ('"x.y"."a""b"', ["x.y", 'a"b']), ("客户", ["客户"]),
    ("we&ird *@^ name", ["we&ird *@^ name"]), ('"', ['"']), ('" lead"', [" lead"]),
])
def test_name_text_round_trip(text: str, parts: list[str]) -> None:
    assert names.parts(text) == parts
    schema = parts[-2] if len(parts) > 1 else None
    assert names.parts(names.qualified(schema, parts[-1])) == parts


def test_mixed_case_names(tmp_path: Path, make_pg_db: Any) -> None:
    """PostgreSQL folds unquoted names: ``FROM MixedCase`` reads ``mixedcase``,
    ``FROM "CamelCase"`` reads ``CamelCase``; neither finds the other."""
    src, tgt = make_pg_db(), make_pg_db()
    src.execute('CREATE TABLE MixedCase (id integer PRIMARY KEY, v text);'
                'CREATE TABLE "CamelCase" (id integer PRIMARY KEY, v text);'
                'CREATE TABLE "MIXEDCASE" (id integer PRIMARY KEY, v text)')  # decoy
    tgt.execute('CREATE TABLE "Out" (src text, id integer, v text, PRIMARY KEY (src, id))')
    cfg = write_pipeline(tmp_path, src.url, tgt.url, {
        "folded": "INSERT INTO \"Out\" (src, id, v) SELECT 'm', m.id, m.v"
                  " FROM public.MixedCase AS m",
        "camel": "INSERT INTO \"Out\" (src, id, v) SELECT 'c', c.id, c.v FROM \"CamelCase\" AS c",
    }, name=f"n_{src.name}", extra="""
        rule_options:
          folded: {on_truncate: ignore}
          camel: {on_truncate: ignore}
        """)
    try:
        cdc("setup", "-c", str(cfg))
        assert sorted(src.query("SELECT tablename FROM pg_publication_tables")) == [
            ("CamelCase",), ("mixedcase",)]
        with PipelineThread(cfg) as p:
            src.execute("INSERT INTO mixedcase VALUES (1, 'a'); INSERT INTO \"CamelCase\""
                        " VALUES (1, 'b'); INSERT INTO \"MIXEDCASE\" VALUES (9, 'no')")
            src.execute("DELETE FROM \"CamelCase\"; INSERT INTO \"CamelCase\" VALUES (2, 'c')")
            p.wait_caught_up()
            time.sleep(0.3)
            p.wait_caught_up()
        assert tgt.query('SELECT src, id, v FROM "Out" ORDER BY 1, 2') == [
            ("c", 2, "c"), ("m", 1, "a")]
        assert cdc("verify", "-c", str(cfg)).returncode == 0
    finally:
        c = load(cfg)
        from cdc.sources.postgres import PostgresSource

        PostgresSource(c.source.libpq(), slot=c.slot, publication=c.publication,
                       tables=["mixedcase"]).teardown()


def test_rule_names_keep_their_parts() -> None:
    from cdc.rules.parse import parse_rule

    text = ('INSERT INTO Tgt (a) SELECT s.a FROM Sales.Orders AS s'
            ' JOIN "Map.1" AS m ON m.a = s.a JOIN x."y.z" AS n ON n.a = s.a')
    pg = parse_rule("r", "r.sql", text, "postgres")
    # The source folds as PostgreSQL folds; the target (maybe MySQL) stays as written.
    assert (pg.target.name, pg.source.name) == ("Tgt", "sales.orders")
    assert parse_rule("r", "r.sql", text.replace("Sales.", "public."), "postgres").source.name \
        == "orders"  # as pgoutput names it
    assert [lk.name for lk in pg.lookups] == ['"Map.1"', 'x."y.z"']
    assert (pg.lookups[1].schema, pg.lookups[1].table) == ("x", "y.z")
    my = parse_rule("r", "r.sql", text.replace('"', "`"), "mysql")
    assert (my.target.name, my.source.name) == ("Tgt", "Sales.Orders")
    assert [lk.name for lk in my.lookups] == ['"Map.1"', 'x."y.z"']
    assert (my.source.schema, my.source.table) == ("Sales", "Orders")


@pytest.mark.parametrize(("url", "want"), [
    ("postgresql://u:p%40ss@h:6543/db?sslmode=require",
     ("h", 6543, "u", "p@ss", "db", {"sslmode": "require"})),
    ("mysql://u:p@ss:w/rd#1?@127.0.0.1/my%20db", ("127.0.0.1", 3306, "u", "p@ss:w/rd#1?",
                                                  "my db", {})),
    ("pg://h/db", ("h", 5432, "", "", "db", {})),
    ("postgresql://u@[::1]:5433/d", ("::1", 5433, "u", "", "d", {})),
    ("mariadb://u:@h/d%2Fx", ("h", 3306, "u", "", "d/x", {})),
    ("postgresql://u@h/d?application_name=a%20b", ("h", 5432, "u", "", "d",
                                                  {"application_name": "a b"})),
])
def test_url_parts(url: str, want: tuple[Any, ...]) -> None:
    u = DatabaseUrl.parse(url)
    assert (u.host, u.port, u.user, u.password, u.database, u.params) == want


def test_libpq_gets_the_parsed_parts() -> None:
    from psycopg.conninfo import conninfo_to_dict

    u = DatabaseUrl.parse("postgresql://us er:p@ss/w#rd@h:6543/my%20db?sslmode=disable")
    assert conninfo_to_dict(u.libpq()) == {"host": "h", "port": "6543", "user": "us er",
                                          "password": "p@ss/w#rd", "dbname": "my db",
                                          "sslmode": "disable"}
    # No host: libpq's Unix socket, as a raw URL would have it.
    assert "host" not in conninfo_to_dict(DatabaseUrl.parse("postgresql:///crm").libpq())
    with pytest.raises(ConfigError, match="bad port"):
        DatabaseUrl.parse("mysql://h:99999/d")


def test_tables_differing_only_in_case_or_accents(tmp_path: Path, make_mysql_db: Any) -> None:
    """MariaDB table names are case-sensitive (and never accent-blind): `Orders`,
    `orders` and `ordérs` are three tables, each with its own snapshot progress
    in a MySQL target's bookkeeping."""
    src, tgt = make_mysql_db(), make_mysql_db()
    tables = ["Orders", "orders", "ordérs"]
    for i, t in enumerate(tables):
        src.execute(f"CREATE TABLE `{t}` (id INT PRIMARY KEY) DEFAULT CHARSET=utf8mb4")
        src.execute(f"INSERT INTO `{t}` VALUES " + ", ".join(f"({j})" for j in range(i + 1)))
        tgt.execute(f"CREATE TABLE `t{i}` (id INT PRIMARY KEY)")
    cfg = write_pipeline(tmp_path, src.url, tgt.url, {
        f"r{i}": f"INSERT INTO `t{i}` (id) SELECT s.id FROM `{t}` AS s"
        for i, t in enumerate(tables)}, name=f"n_{src.name}")
    cdc("setup", "-c", str(cfg))
    cdc("snapshot", "-c", str(cfg))
    assert [tgt.scalar(f"SELECT COUNT(*) FROM `t{i}`") for i in range(3)] == [1, 2, 3]
    assert sorted(r[0] for r in tgt.query("SELECT table_name FROM cdc_snapshot_tables")) == \
        sorted(tables)
