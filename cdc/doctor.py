"""Preflight checks (`cdc doctor`) and least-privilege GRANTs (`--print-grants`).

Each check says what it looked at and, when it fails, the exact SQL or config
line that fixes it.  Checks only read; nothing here changes a database.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cdc import bookkeeping
from cdc.catalog import split_name
from cdc.config import Config, derived_server_id
from cdc.errors import CdcError
from cdc.rules.compile import ident


@dataclass(slots=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str | None = None
    warning: bool = False  # a failed warning does not fail the doctor


def _q(name: str, kind: str) -> str:
    return ident(name, "mysql" if kind == "mysql" else "postgres")


def _mysql_account(user: str) -> str:
    return f"'{user.replace(chr(39), chr(39) * 2)}'@'%'"


# Printed in place of a password: never a real one, and easy to search for.
PASSWORD_PLACEHOLDER = "CHANGE-ME"


def _create_user(kind: str, user: str, replication: bool = False) -> list[str]:
    """The CREATE USER line, commented: the user may exist already, and the
    password is the DBA's to choose (the URL in the config must match)."""
    if kind == "mysql":
        return [f"-- CREATE USER {_mysql_account(user)} IDENTIFIED BY '{PASSWORD_PLACEHOLDER}';"
                "  -- a new user: uncomment, choose the password"]
    return [f"-- CREATE ROLE {_q(user, 'postgresql')} LOGIN{' REPLICATION' if replication else ''}"
            f" PASSWORD '{PASSWORD_PLACEHOLDER}';  -- a new user: uncomment, choose the password"]


def print_grants(config: Config, tables: list[str], targets: list[str],
                 lookups: list[str]) -> str:
    """Least-privilege GRANT statements for the configured users."""
    s, t = config.source, config.target
    out = [f"-- source: {s.redacted()}"]
    out += _create_user(s.kind, s.user, replication=True)
    if s.kind == "mysql":
        acct = _mysql_account(s.user)
        out += [f"GRANT REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO {acct};",
                "-- (MariaDB >= 10.5 calls REPLICATION CLIENT 'BINLOG MONITOR'; both spellings work)",
                f"GRANT SELECT ON {_q(s.database, 'mysql')}.* TO {acct};"]
    else:
        role = _q(s.user, "postgresql")
        out += [f"ALTER ROLE {role} REPLICATION;",
                f"GRANT CONNECT ON DATABASE {_q(s.database, 'postgresql')} TO {role};"]
        schemas = sorted({split_name(x, "public")[0] for x in tables})
        out += [f"GRANT USAGE ON SCHEMA {_q(sc, 'postgresql')} TO {role};" for sc in schemas]
        if tables:
            out.append(f"GRANT SELECT ON {', '.join(_pg_name(x) for x in tables)} TO {role};")
        out += ["-- `cdc setup` creates the publication when the role owns the tables; else "
                "their owner runs once:",
                f"-- CREATE PUBLICATION {_q(config.publication, 'pg')} "
                f"FOR TABLE {', '.join(_pg_name(x) for x in tables)} "
                "WITH (publish_via_partition_root = true);  -- PostgreSQL < 13: no WITH"]
    out.append(f"-- target: {t.redacted()}")
    out += _create_user(t.kind, t.user)
    if t.kind == "mysql":
        # The cdc_* bookkeeping tables live in the target database itself:
        # the grants on its tables cover them, existing or not.
        acct = _mysql_account(t.user)
        out += [f"GRANT SELECT, INSERT, UPDATE, DELETE, CREATE TEMPORARY TABLES ON "
                f"{_q(t.database, 'mysql')}.* TO {acct};",
                "-- once, for the cdc_* bookkeeping tables created by `cdc setup`:",
                f"GRANT CREATE, ALTER, INDEX ON {_q(t.database, 'mysql')}.* TO {acct};"]
    else:
        role = _q(t.user, "postgresql")
        out += [f"GRANT CONNECT, TEMPORARY ON DATABASE {_q(t.database, 'postgresql')} TO {role};",
                f"CREATE SCHEMA IF NOT EXISTS {_q('cdc', 'postgresql')} AUTHORIZATION {role};"
                "  -- bookkeeping",
                "-- a cdc schema made earlier by another user (its owner keeps it; run these "
                "again after that user's `cdc setup`):"]
        out += pg_bookkeeping_grants(role)
        schemas = sorted({split_name(x, "public")[0] for x in targets + lookups})
        out += [f"GRANT USAGE ON SCHEMA {_q(sc, 'postgresql')} TO {role};" for sc in schemas]
        if targets:
            out.append(f"GRANT SELECT, INSERT, UPDATE, DELETE ON "
                       f"{', '.join(_pg_name(x) for x in targets)} TO {role};")
        if lookups:
            out.append(f"GRANT SELECT ON {', '.join(_pg_name(x) for x in lookups)} TO {role};")
    return "\n".join(out)


def _pg_name(name: str) -> str:
    schema, table = split_name(name, "public")
    return f"{_q(schema, 'postgresql')}.{_q(table, 'postgresql')}"


def _grants_text(rows: list[tuple[Any, ...]]) -> str:
    return " ".join(str(r[0]) for r in rows).upper()


def run_checks(config: Config) -> list[Check]:
    from cdc.plan import build_plan, parse_rules
    from cdc.sources import open_source
    from cdc.targets import open_target

    checks: list[Check] = []

    def attempt(name: str, fn: Callable[[], Check | list[Check] | None]) -> None:
        try:
            got = fn()
        except CdcError as e:
            checks.append(Check(name, False, e.message, e.fix))
            return
        if isinstance(got, Check):
            checks.append(got)
        elif got:
            checks.extend(got)

    try:
        rules = parse_rules(config)
    except CdcError as e:
        return [Check("rules", False, str(e))]
    checks.append(Check("rules", True, f"{len(rules)} rule file(s) parse"))
    tables = sorted({r.source.name for r in rules})
    source = open_source(config, tables)
    target = open_target(config)
    try:
        if config.source.kind == "mysql":
            attempt("source connection", lambda: _mysql_connect(source))
            if checks[-1].ok:
                checks.extend(_mysql_source_checks(config, source, tables))
        else:
            attempt("source connection", lambda: _pg_connect(source))
            if checks[-1].ok:
                checks.extend(_pg_source_checks(config, source, tables))
        attempt("target connection", lambda: _target_connect(config, target))
        if checks[-1].ok and config.target.kind == "postgresql":
            # Before reading the schema version: a cdc schema this user may not
            # use would fail that read with "run doctor --print-grants".
            attempt("bookkeeping privileges", lambda: _pg_bookkeeping_access(config, target))
        if checks[-1].ok:
            v = target.schema_version()
            latest = bookkeeping.latest_version(config.target.kind)
            checks.append(Check("bookkeeping schema", v == latest,
                                f"version {v}, this cdc uses {latest}",
                                None if v == latest else "cdc setup -c " + str(config.path)))
            checks.extend(_target_privileges(config, target, rules))

            def compile_rules() -> list[Check]:
                plan = build_plan(config, source, target, rules)
                out = []
                for c in plan.rules:
                    try:
                        target.check_rules(list(plan.stages.values()), [c])
                        out.append(Check(f"rule {c.name}", True,
                                         f"{c.bound.rule.source.name} -> {c.bound.rule.target.name}"
                                         " compiles on the target"))
                    except CdcError as e:
                        out.append(Check(f"rule {c.name}", False, str(e), e.fix))
                return out

            attempt("rules", compile_rules)
    finally:
        source.close()
        target.close()
    return checks


def _mysql_connect(source: Any) -> Check:
    v = source.variables()
    return Check("source connection", True, f"MySQL/MariaDB {v.get('version', '?')}")


def _mysql_source_checks(config: Config, source: Any, tables: list[str]) -> list[Check]:
    v = source.variables()
    out = []
    out.append(Check("binlog enabled", v.get("log_bin", "").upper() == "ON",
                     f"log_bin={v.get('log_bin')}",
                     "[mysqld] log_bin = mysql-bin  (server config; restart)"))
    fmt = v.get("binlog_format", "").upper()
    out.append(Check("binlog_format", fmt == "ROW", f"binlog_format={fmt}",
                     "SET GLOBAL binlog_format = 'ROW';  and binlog_format = ROW in the server "
                     "config"))
    img = v.get("binlog_row_image", "FULL").upper()
    out.append(Check("binlog_row_image", img == "FULL", f"binlog_row_image={img}",
                     "SET GLOBAL binlog_row_image = 'FULL';  and in the server config"))
    meta = v.get("binlog_row_metadata")
    if meta is None:
        out.append(Check("binlog_row_metadata", False,
                         "not supported by this server: column names come from "
                         "information_schema, which is wrong for rows written before a DDL",
                         "upgrade to MariaDB >= 10.5 or MySQL >= 8.0.14", warning=True))
    else:
        out.append(Check("binlog_row_metadata", meta.upper() == "FULL",
                         f"binlog_row_metadata={meta}",
                         "SET GLOBAL binlog_row_metadata = 'FULL';  and in the server config"))
    secs = v.get("binlog_expire_logs_seconds")
    days = v.get("expire_logs_days")
    retention = int(secs) if secs and secs.isdigit() and int(secs) > 0 else (
        int(float(days)) * 86400 if days and float(days) > 0 else 0)
    out.append(Check("binlog retention", retention == 0 or retention >= 3 * 86400,
                     "binlogs kept forever" if retention == 0 else
                     f"binlogs kept {retention / 86400:.1f} days",
                     "SET GLOBAL binlog_expire_logs_seconds = 604800;  (7 days: time to fix an "
                     "outage before cdc's position is purged)", warning=True))
    mine = config.server_id or derived_server_id(config.pipeline)
    server = int(v.get("server_id", "0") or 0)
    replicas: list[int] = []
    try:
        with source.conn().cursor() as cur:
            cur.execute("SHOW SLAVE HOSTS")
            replicas = [int(r[0]) for r in cur.fetchall()]
    except Exception:  # needs REPLICATION SLAVE ADMIN on some versions; not essential
        replicas = []
    clash = mine == server or mine in replicas
    out.append(Check("server_id", not clash, f"cdc connects as replica server_id {mine}; "
                     f"source server_id {server}",
                     f"source:\n  server_id: {mine + 1}   # in {config.path}, unique among "
                     "replicas"))
    with source.conn().cursor() as cur:
        cur.execute("SHOW GRANTS")
        grants = _grants_text(cur.fetchall())
    allp = "ALL PRIVILEGES ON *.*" in grants
    acct = _mysql_account(config.source.user)
    out.append(Check("privilege REPLICATION SLAVE", allp or "REPLICATION SLAVE" in grants,
                     "needed to read the binlog",
                     f"GRANT REPLICATION SLAVE ON *.* TO {acct};"))
    out.append(Check("privilege REPLICATION CLIENT",
                     allp or "REPLICATION CLIENT" in grants or "BINLOG MONITOR" in grants
                     or "SUPER" in grants, "needed for SHOW MASTER STATUS",
                     f"GRANT REPLICATION CLIENT ON *.* TO {acct};"))
    db = config.source.database
    sel = allp or bool(re.search(r"GRANT [^;]*\b(SELECT|ALL PRIVILEGES)\b[^;]* ON (\*\.\*|`?"
                                 + re.escape(db.upper()) + r"`?\.\*)", grants))
    out.append(Check("privilege SELECT", sel, f"needed on {db} for snapshots and checks",
                     f"GRANT SELECT ON {_q(db, 'mysql')}.* TO {acct};"))
    for t in tables:
        exists = source.table(t) is not None
        out.append(Check(f"source table {t}", exists, "exists" if exists else "missing",
                         None if exists else f"check the FROM of the rules reading {t}"))
    return out


def _pg_connect(source: Any) -> Check:
    rows = source._query("SELECT version()")
    return Check("source connection", True, str(rows[0][0]).split(",")[0])


def _pg_setting(source: Any, name: str) -> str:
    return str(source._query("SELECT setting FROM pg_settings WHERE name = %s", (name,))[0][0])


def _pg_source_checks(config: Config, source: Any, tables: list[str]) -> list[Check]:
    out = []
    wal = _pg_setting(source, "wal_level")
    out.append(Check("wal_level", wal == "logical", f"wal_level={wal}",
                     "ALTER SYSTEM SET wal_level = logical;  then restart PostgreSQL"))
    slots = int(_pg_setting(source, "max_replication_slots"))
    used = int(source._query("SELECT count(*) FROM pg_replication_slots")[0][0])
    info = source.slot_info()
    free_ok = info.get("exists") or used < slots
    out.append(Check("replication slots", bool(free_ok), f"{used} of {slots} in use",
                     f"ALTER SYSTEM SET max_replication_slots = {slots + 4};  then restart"))
    senders = int(_pg_setting(source, "max_wal_senders"))
    active = int(source._query("SELECT count(*) FROM pg_stat_replication")[0][0])
    out.append(Check("wal senders", active < senders, f"{active} of {senders} in use",
                     f"ALTER SYSTEM SET max_wal_senders = {senders + 4};  then restart"))
    rep = source._query("SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname ="
                        " current_user")
    role = _q(config.source.user, "postgresql")
    out.append(Check("privilege REPLICATION", bool(rep and rep[0][0]),
                     "needed for logical replication", f"ALTER ROLE {role} REPLICATION;"))
    out.append(Check("replication slot", bool(info.get("exists")),
                     f"slot {config.slot} " + ("exists" if info.get("exists") else "missing"),
                     f"cdc setup -c {config.path}"))
    if info.get("exists") and info.get("retained_wal_bytes") is not None:
        mb = info["retained_wal_bytes"] // 2**20
        out.append(Check("WAL retained by the slot", info["retained_wal_bytes"] <=
                         config.wal_warn_bytes, f"{mb} MB",
                         "start `cdc run`, or drop the slot of a pipeline that is gone: "
                         f"cdc teardown -c {config.path} --yes", warning=True))
    published = set(source.published_tables())
    partitioned = source.partitioned_tables()
    if partitioned:
        via_root = source.publishes_via_root()
        out.append(Check("publish_via_partition_root", via_root is not False,
                         f"publication {config.publication} "
                         + ("publishes partitions under their root" if via_root else
                            "missing" if via_root is None else
                            "publishes partitions under their own names, which no rule reads")
                         + f" ({', '.join(partitioned)} partitioned)",
                         f"ALTER PUBLICATION {_q(config.publication, 'pg')} SET "
                         f"(publish_via_partition_root = true);  (or cdc setup -c {config.path})"))
    for root, leaf, fix, _full in source.partition_identity_problems():
        out.append(Check(f"replica identity {leaf}", False,
                         f"partition of {root}: its updates and deletes do not carry the old "
                         "row its root's replica identity promises",
                         f"{fix}  (or cdc setup -c {config.path})"))
    for t in tables:
        shape = source.table(t)
        if shape is None:
            out.append(Check(f"source table {t}", False, "missing",
                             f"check the FROM of the rules reading {t}"))
            continue
        out.append(Check(f"publication has {t}", t in published,
                         f"publication {config.publication}",
                         f"ALTER PUBLICATION {_q(config.publication, 'pg')} ADD TABLE "
                         f"{_pg_name(t)};  (or cdc setup)"))
        ident_ok = bool(shape.primary_key) or shape.replica_identity == "f"
        out.append(Check(f"replica identity {t}", ident_ok,
                         "primary key" if shape.primary_key else
                         f"replica identity '{shape.replica_identity}'",
                         f"ALTER TABLE {_pg_name(t)} REPLICA IDENTITY FULL;"))
    return out


def _target_connect(config: Config, target: Any) -> Check:
    conn = target.conn()
    if config.target.kind == "postgresql":
        v = conn.info.server_version
        version = f"PostgreSQL {v // 10000}.{v % 10000}"
    else:
        version = f"MySQL/MariaDB {conn.get_server_info()}"
    return Check("target connection", True, f"{config.target.redacted()} ({version})")


def pg_bookkeeping_grants(role: str) -> list[str]:
    """What a user needs on a cdc schema someone else made (and owns)."""
    cdc = _q("cdc", "postgresql")
    return [f"GRANT USAGE, CREATE ON SCHEMA {cdc} TO {role};",
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {cdc} TO {role};",
            f"GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA {cdc} TO {role};"]


def _pg_bookkeeping_access(config: Config, target: Any) -> Check:
    conn = target.conn()
    try:
        row = conn.execute(
            # A list of privileges asks whether *any* is held: ask for each.
            "SELECT n.nspowner::regrole::text, has_schema_privilege(n.oid, 'USAGE')"
            " AND has_schema_privilege(n.oid, 'CREATE'),"
            " (SELECT string_agg(c.relname, ', ' ORDER BY c.relname) FROM pg_class c"
            "  WHERE c.relnamespace = n.oid AND c.relkind IN ('r', 'p') AND NOT ("
            "  has_table_privilege(c.oid, 'SELECT') AND has_table_privilege(c.oid, 'INSERT')"
            "  AND has_table_privilege(c.oid, 'UPDATE') AND has_table_privilege(c.oid, 'DELETE')))"
            " FROM pg_namespace n WHERE n.nspname = 'cdc'").fetchone()
    finally:
        conn.rollback()
    if row is None:
        return Check("bookkeeping privileges", True, "no cdc schema yet: `cdc setup` makes it")
    owner, schema_ok, lacking = row
    ok = bool(schema_ok) and not lacking
    what = (f"schema cdc (owner {owner})" + ("" if schema_ok else ": no USAGE, CREATE")
            + (f"; no SELECT, INSERT, UPDATE, DELETE on cdc.{lacking}" if lacking else ""))
    return Check("bookkeeping privileges", ok, what,
                 None if ok else "\n".join(pg_bookkeeping_grants(
                     _q(config.target.user, "postgresql"))))


def _target_privileges(config: Config, target: Any, rules: list[Any]) -> list[Check]:
    out = []
    tables = sorted({r.target.name for r in rules})
    if config.target.kind == "postgresql":
        conn = target.conn()
        try:
            temp = conn.execute("SELECT has_database_privilege(current_database(), 'TEMP')"
                                ).fetchone()
            role = _q(config.target.user, "postgresql")
            out.append(Check("privilege TEMPORARY", bool(temp and temp[0]),
                             "staging tables are temporary",
                             f"GRANT TEMPORARY ON DATABASE {_q(config.target.database, 'pg')} "
                             f"TO {role};"))
            for t in tables:
                # A list of privileges would ask whether *any* is held.
                got = conn.execute(
                    "SELECT to_regclass(%s) IS NOT NULL AND has_table_privilege(%s, 'SELECT')"
                    " AND has_table_privilege(%s, 'INSERT') AND has_table_privilege(%s, 'UPDATE')"
                    " AND has_table_privilege(%s, 'DELETE')", (_pg_name(t),) * 5).fetchone()
                out.append(Check(f"privileges on {t}", bool(got and got[0]),
                                 "SELECT, INSERT, UPDATE, DELETE",
                                 f"GRANT SELECT, INSERT, UPDATE, DELETE ON {_pg_name(t)} TO "
                                 f"{role};"))
        finally:
            conn.rollback()
    else:
        rows = target._query("SHOW GRANTS")
        grants = _grants_text(rows)
        allp = "ALL PRIVILEGES" in grants
        acct = _mysql_account(config.target.user)
        for p in ("SELECT", "INSERT", "UPDATE", "DELETE", "CREATE TEMPORARY TABLES"):
            out.append(Check(f"privilege {p}", allp or p in grants, f"on {config.target.database}",
                             f"GRANT {p} ON {_q(config.target.database, 'mysql')}.* TO {acct};"))
    return out
