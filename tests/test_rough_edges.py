"""Issue 16 item 6: the rough edges a new user hits, each replayed and fixed.

Each test runs the real command against the throwaway servers and asserts both
the effect wanted (one clear line, the right exit code) and the absence of the
wrong one (no traceback, no raw driver error, nothing written).
"""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from pipeline_helpers import REPO, PipelineThread, cdc, write_pipeline

from cdc.devservers import free_port
from cdc.errors import RuleError
from cdc.rules.parse import parse_rule

SRC = "CREATE TABLE items (id INT PRIMARY KEY, name VARCHAR(50) NOT NULL)"
TGT = {"postgresql": "CREATE TABLE t_items (id integer PRIMARY KEY, name text NOT NULL)",
       "mysql": "CREATE TABLE t_items (id int PRIMARY KEY, name varchar(50) NOT NULL)"}
RULE = "INSERT INTO t_items (id, name) SELECT i.id, i.name FROM items AS i"


def error_lines(p: subprocess.CompletedProcess[str]) -> list[str]:
    assert "Traceback" not in p.stderr, p.stderr
    # INFO lines are the daemon's log (`run` names the pipeline lock it holds
    # before it builds the plan); the error is what is left.
    return [ln for ln in p.stderr.splitlines()
            if ln.strip() and not re.search(r"(^|\s)INFO cdc\.", ln)]


# --- a. lag / status / dlq before `cdc setup` -----------------------------------------------

@pytest.mark.parametrize("target_kind", ["postgresql", "mysql"])
def test_commands_before_setup_say_run_setup(tmp_path: Path, target_kind: str,
                                             make_mysql_db: Any, make_pg_db: Any) -> None:
    src = make_mysql_db()
    tgt = make_pg_db() if target_kind == "postgresql" else make_mysql_db()
    src.execute(SRC)
    tgt.execute(TGT[target_kind])
    cfg = write_pipeline(tmp_path, src.url, tgt.url, {"items": RULE})
    for args in (["lag"], ["lag", "--json"], ["lag", "--max-seconds", "10"], ["status"],
                 ["dlq", "list"], ["dlq", "show", "1"], ["dlq", "drop", "--all"],
                 ["dlq", "retry", "--all"], ["snapshot"], ["verify"], ["run"]):
        p = cdc(*args, "-c", str(cfg), check=False)
        lines = error_lines(p)
        assert p.returncode == 2, (args, p.returncode, p.stderr)
        assert len(lines) == 1, (args, p.stderr)
        assert lines[0] == (f"cdc: error: pipeline p is not set up on the target (no cdc "
                            f"bookkeeping); run `cdc setup -c {cfg}`"), (args, lines)
        assert "does not exist" not in p.stderr and "doesn't exist" not in p.stderr
        assert p.stdout == ""
    # Asking wrote nothing.
    if target_kind == "postgresql":
        assert tgt.query("SELECT count(*) FROM pg_namespace WHERE nspname = 'cdc'") == [(0,)]
    else:
        assert tgt.query("SELECT count(*) FROM information_schema.TABLES WHERE "
                         "TABLE_SCHEMA = DATABASE() AND TABLE_NAME LIKE 'cdc%%'") == [(0,)]
    # After setup the same commands answer.
    cdc("setup", "-c", str(cfg))
    assert cdc("dlq", "list", "-c", str(cfg)).stdout.strip() == "no dead letters"
    assert "p: " in cdc("lag", "-c", str(cfg)).stdout


# --- b. a source table without a primary key ------------------------------------------------

NOKEY = "items.sql:1: source table 'items' has no primary key"
NOKEY_FIX = "fix: ALTER TABLE `items` ADD PRIMARY KEY (…); or a UNIQUE key on NOT NULL columns"


def refused_for_no_key(cfg: Path, *commands: str) -> None:
    for command in commands:
        p = cdc(command, "-c", str(cfg), check=False, timeout=60)
        lines = error_lines(p)
        assert p.returncode == 2, (command, p.returncode, p.stderr)
        # `check` adds its count of problems.
        assert lines[1:] == (["1 problem(s) found"] if command == "check" else []), lines
        assert NOKEY in lines[0] and NOKEY_FIX in lines[0], (command, lines)
    doctor = cdc("doctor", "-c", str(cfg), check=False)
    assert doctor.returncode == 1
    assert "Traceback" not in doctor.stdout + doctor.stderr
    assert f"FAIL rules: {cfg.parent}/rules/{NOKEY}" in doctor.stdout, doctor.stdout
    assert NOKEY_FIX in doctor.stdout


def test_table_without_key_is_refused_by_every_command(tmp_path: Path, mysql_db: Any,
                                                       pg_db: Any) -> None:
    mysql_db.execute("CREATE TABLE items (id INT, name VARCHAR(50) NOT NULL, UNIQUE (id))")
    mysql_db.execute("INSERT INTO items VALUES (1, 'a'), (2, 'b'), (NULL, 'c')")
    pg_db.execute(TGT["postgresql"])
    cfg = write_pipeline(tmp_path, mysql_db.url, pg_db.url, {"items": RULE + "\n"})
    # A unique key on a nullable column does not tell rows apart.
    refused_for_no_key(cfg, "check", "setup")
    assert pg_db.query("SELECT count(*) FROM pg_namespace WHERE nspname = 'cdc'") == [(0,)]
    # Set up while the table had a key, then the key went away.
    mysql_db.execute("DELETE FROM items WHERE id IS NULL")
    mysql_db.execute("ALTER TABLE items MODIFY id INT NOT NULL, ADD PRIMARY KEY (id)")
    cdc("setup", "-c", str(cfg))
    offset = pg_db.query("SELECT position FROM cdc.offsets")
    mysql_db.execute("ALTER TABLE items DROP PRIMARY KEY, DROP KEY id")
    mysql_db.execute("INSERT INTO items VALUES (1, 'again')")
    refused_for_no_key(cfg, "check", "setup", "snapshot", "verify", "run")
    # Nothing copied, nothing moved.
    assert pg_db.query("SELECT count(*) FROM t_items") == [(0,)]
    assert pg_db.query("SELECT position FROM cdc.offsets") == offset
    assert pg_db.query("SELECT count(*) FROM cdc.snapshot_tables") == [(0,)]


def test_unique_not_null_key_is_enough(tmp_path: Path, mysql_db: Any, pg_db: Any) -> None:
    """A unique key on NOT NULL columns identifies a row as well as a primary key:
    snapshot, verify and streaming all work with it."""
    mysql_db.execute("CREATE TABLE items (id INT NOT NULL, name VARCHAR(50) NOT NULL,"
                     " note VARCHAR(10), UNIQUE KEY maybe (note), UNIQUE KEY u_id (id))")
    mysql_db.execute("INSERT INTO items VALUES " + ", ".join(f"({i}, 'n{i}', NULL)"
                                                             for i in range(1, 251)))
    pg_db.execute(TGT["postgresql"])
    cfg = write_pipeline(tmp_path, mysql_db.url, pg_db.url, {"items": RULE},
                         extra="snapshot:\n  chunk_rows: 100\n")
    cdc("check", "-c", str(cfg))
    cdc("setup", "-c", str(cfg))
    cdc("snapshot", "-c", str(cfg))
    assert pg_db.query("SELECT count(*), min(id), max(id) FROM t_items") == [(250, 1, 250)]
    with PipelineThread(cfg) as p:
        mysql_db.execute("UPDATE items SET name = 'x' WHERE id = 7")
        mysql_db.execute("DELETE FROM items WHERE id = 8")
        p.wait_caught_up()
    assert pg_db.query("SELECT name FROM t_items WHERE id IN (7, 8)") == [("x",)]
    v = cdc("verify", "-c", str(cfg))
    assert v.stdout.startswith("ok ") and "249 expected, 0 missing, 0 different, 0 extra" \
        in v.stdout, v.stdout


# --- c. doctor --print-grants for a fresh user and an existing cdc schema -------------------

PLACEHOLDER = "CHANGE-ME"


def follow_printed_sql(grants: str, passwords: dict[str, str], mysql_exec: Any,
                       pg_exec: Any) -> None:
    """Run the printed SQL as a DBA would: each statement on its server (the
    `-- source:` / `-- target:` headers say which), the commented CREATE USER
    lines with a real password instead of the placeholder."""
    server = None
    for line in grants.splitlines():
        if line.startswith(("-- source: ", "-- target: ")):
            server = line.split(": ", 1)[1].split("://", 1)[0]
            continue
        if line.startswith("-- CREATE "):
            if PLACEHOLDER in line:
                user = next(u for u in passwords if u in line)
                line = line.replace(PLACEHOLDER, passwords[user])
            line = line[3:]
        elif line.startswith("--") or not line.strip():
            continue
        stmt = line.split(";  --")[0]
        (mysql_exec if server == "mysql" else pg_exec)(stmt)


def test_print_grants_make_a_fresh_user_pass_doctor(tmp_path: Path, mysql_db: Any, pg_db: Any,
                                                    mariadb_server: Any,
                                                    pg_server: Any) -> None:
    """An earlier `cdc setup` as the superuser left a cdc schema the new
    least-privilege user does not own; the printed SQL covers it."""
    mysql_db.execute(SRC)
    pg_db.execute(TGT["postgresql"])
    cfg = write_pipeline(tmp_path, mysql_db.url, pg_db.url, {"items": RULE})
    cdc("setup", "-c", str(cfg))
    suffix = mysql_db.name[-6:]
    my_user, pg_user = f"er_{suffix}", f"ew_{suffix}"
    src = mariadb_server.url(mysql_db.name, my_user, "pw1")
    tgt = pg_server.url(pg_db.name, pg_user, "pw2")
    (tmp_path / "least").mkdir()
    cfg = write_pipeline(tmp_path / "least", src, tgt, {"items": RULE})
    grants = cdc("doctor", "-c", str(cfg), "--print-grants").stdout
    assert f"-- CREATE USER '{my_user}'@'%' IDENTIFIED BY '{PLACEHOLDER}';" in grants
    assert f"-- CREATE ROLE \"{pg_user}\" LOGIN PASSWORD '{PLACEHOLDER}';" in grants
    assert f'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA "cdc" TO ' \
           f'"{pg_user}";' in grants
    # What the grants printed before covered: not the existing cdc schema.
    on_cdc = [ln for ln in grants.splitlines() if 'SCHEMA "cdc" TO' in ln]
    assert len(on_cdc) == 3
    older = "\n".join(ln for ln in grants.splitlines() if ln not in on_cdc)
    follow_printed_sql(older, {my_user: "pw1", pg_user: "pw2"}, mariadb_server.execute,
                       pg_db.execute)
    doctor = cdc("doctor", "-c", str(cfg), check=False)
    assert doctor.returncode == 1
    assert "FAIL bookkeeping privileges: schema cdc (owner " in doctor.stdout, doctor.stdout
    # The fix is the SQL itself, not a pointer back to --print-grants.
    assert "--print-grants" not in doctor.stdout
    fix = doctor.stdout.split("FAIL bookkeeping privileges")[1]
    assert all(ln.split("  --")[0] in fix for ln in on_cdc), doctor.stdout
    # Some of the privileges are not all of them.
    pg_db.execute(f'GRANT USAGE ON SCHEMA cdc TO "{pg_user}"')
    pg_db.execute(f'GRANT SELECT ON ALL TABLES IN SCHEMA cdc TO "{pg_user}"')
    doctor = cdc("doctor", "-c", str(cfg), check=False)
    assert doctor.returncode == 1
    assert "FAIL bookkeeping privileges: schema cdc (owner " in doctor.stdout, doctor.stdout
    assert "no SELECT, INSERT, UPDATE, DELETE on cdc.dead_letters, " in doctor.stdout
    follow_printed_sql("-- target: postgresql://\n" + "\n".join(on_cdc), {}, None,
                       pg_db.execute)
    assert pg_db.query("SELECT rolsuper FROM pg_roles WHERE rolname = %s", (pg_user,)) == \
        [(False,)]
    doctor = cdc("doctor", "-c", str(cfg), check=False)
    assert doctor.returncode == 0, doctor.stdout
    assert "FAIL" not in doctor.stdout
    # And the user really runs the pipeline in the schema it does not own.
    cdc("setup", "-c", str(cfg))
    with PipelineThread(cfg) as p:
        mysql_db.execute("INSERT INTO items VALUES (1, 'least')")
        p.wait_caught_up()
    assert pg_db.query("SELECT id, name FROM t_items") == [(1, "least")]
    assert pg_db.query("SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'cdc'"
                       ) != [(pg_user,)]


def test_print_grants_pg_source_mysql_target(tmp_path: Path, make_pg_db: Any,
                                             make_mysql_db: Any, mariadb_server: Any,
                                             pg_server: Any) -> None:
    """The other two dialects: a replication role on a PostgreSQL source (and
    the publication its tables' owner makes), a MySQL writer."""
    src, tgt = make_pg_db(), make_mysql_db()
    src.execute("CREATE TABLE items (id integer PRIMARY KEY, name text NOT NULL)")
    tgt.execute(TGT["mysql"])
    suffix = src.name[-6:]
    rd, wr = f"pr_{suffix}", f"mw_{suffix}"
    cfg = write_pipeline(tmp_path, pg_server.url(src.name, rd, "pw1"),
                         mariadb_server.url(tgt.name, wr, "pw2"), {"items": RULE},
                         name=f"g_{src.name}")
    grants = cdc("doctor", "-c", str(cfg), "--print-grants").stdout
    assert f"-- CREATE ROLE \"{rd}\" LOGIN REPLICATION PASSWORD '{PLACEHOLDER}';" in grants
    assert f"-- CREATE USER '{wr}'@'%' IDENTIFIED BY '{PLACEHOLDER}';" in grants
    follow_printed_sql(grants, {rd: "pw1", wr: "pw2"}, mariadb_server.execute, src.execute)
    try:
        doctor = cdc("doctor", "-c", str(cfg), check=False)
        fails = [ln for ln in doctor.stdout.splitlines() if ln.startswith("FAIL")]
        # Only what `cdc setup` makes is missing.
        assert [ln.split(":")[0] for ln in fails] == ["FAIL replication slot",
                                                      "FAIL bookkeeping schema"], doctor.stdout
        cdc("setup", "-c", str(cfg))
        doctor = cdc("doctor", "-c", str(cfg), check=False)
        assert doctor.returncode == 0, doctor.stdout
        with PipelineThread(cfg) as p:
            src.execute("INSERT INTO items VALUES (1, 'least')")
            p.wait_caught_up()
        assert tgt.query("SELECT id, name FROM t_items") == [(1, "least")]
    finally:
        cdc("teardown", "-c", str(cfg), "--yes", check=False)


# --- d. parse errors ------------------------------------------------------------------------

@pytest.mark.parametrize("dialect", ["mysql", "postgres"])
@pytest.mark.parametrize("text,where,what", [
    ("INSERT INTO t (id, name)\nSELECT c.id, TRIM(c.name\nFROM customers AS c\nWHERE c.x = 1",
     2, "unbalanced parenthesis: the '(' at line 2, column 18 is never closed"),
    ("INSERT INTO t (id, name)\nSELECT c.id,\n  CONCAT(c.a, LPAD(c.b, 3, '0')\nFROM customers c",
     3, "unbalanced parenthesis: the '(' at line 3, column 9 is never closed"),
    ("INSERT INTO t (id, name)\nSELECT c.id, c.name)\nFROM customers AS c",
     2, "unbalanced parenthesis: the ')' at line 2, column 20 closes nothing"),
    ("INSERT INTO t (id, name)\nSELECT c.id, c.name\nFROM customers AS c\nWHERE c.x = = 1",
     4, "unexpected '=' after '='"),
    ("INSERT INTO t (id, name)\nSELECT c.id, c.name\nFROM customers AS c\nWHERE c.x >\n AND c.y",
     5, "unexpected 'AND' after '>'"),
    ("INSERT INTO t (id, name)\nSELECT c.id, c.name\nFROM customers AS c\nWHERE c.x = 1 AND",
     4, "'AND' has nothing on its right"),
    ("INSERT INTO t (id, name)\nSELECT c.id, c.name\nFROM customers AS c\nWHERE = 1",
     4, "'=' has nothing on its left"),
    ("INSERT INTO t (id, name)\nSELECT c.id, c.name +\nFROM customers AS c",
     3, "'+' has nothing on its right near 'FROM'"),
])
def test_parse_errors_say_what_is_wrong(text: str, where: int, what: str, dialect: str) -> None:
    with pytest.raises(RuleError) as e:
        parse_rule("r", "rules/r.sql", text, dialect)
    msg = str(e.value)
    assert msg.startswith(f"rules/r.sql:{where}: syntax error: {what}"), msg
    assert "class" not in msg and "sqlglot" not in msg and "has no FROM" not in msg, msg


def test_parse_error_through_the_cli(tmp_path: Path, mysql_db: Any, pg_db: Any) -> None:
    mysql_db.execute(SRC)
    pg_db.execute(TGT["postgresql"])
    cfg = write_pipeline(tmp_path, mysql_db.url, pg_db.url, {
        "items": "INSERT INTO t_items (id, name)\nSELECT i.id, TRIM(i.name\nFROM items AS i"})
    p = cdc("check", "-c", str(cfg), check=False)
    assert p.returncode == 2
    assert error_lines(p) == [f"cdc: error: {tmp_path}/rules/items.sql:2: syntax error: "
                              "unbalanced parenthesis: the '(' at line 2, column 18 is never "
                              "closed"]


# --- e. verify shows progress ---------------------------------------------------------------

def _verify_pipeline(tmp_path: Path, mysql_db: Any, pg_db: Any) -> Path:
    mysql_db.execute(SRC)
    mysql_db.execute("INSERT INTO items VALUES " + ", ".join(f"({i}, 'n{i}')"
                                                             for i in range(1, 1001)))
    pg_db.execute(TGT["postgresql"])
    cfg = write_pipeline(tmp_path, mysql_db.url, pg_db.url, {"items": RULE},
                         extra="snapshot:\n  chunk_rows: 100\n")
    cdc("setup", "-c", str(cfg))
    cdc("snapshot", "-c", str(cfg))
    return cfg


def test_verify_progress(tmp_path: Path, mysql_db: Any, pg_db: Any) -> None:
    cfg = _verify_pipeline(tmp_path, mysql_db, pg_db)
    # Not a terminal (a log, CI): the first chunk at once, then every 10 s, and the end.
    p = cdc("verify", "-c", str(cfg))
    assert p.stdout.startswith("ok       items: items -> t_items: 1000 expected, 0 missing")
    lines = error_lines(p)
    assert lines[0].startswith("verify items: comparing, 100 "), lines
    assert re.match(r"verify items: done, 1,000 (of ~[\d,]+ )?rows", lines[-1]), lines
    assert all(ln.startswith("verify items: ") for ln in lines), lines
    # On a terminal: redrawn after every chunk.
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "cdc", "verify", "-c", str(cfg)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    seen = b""
    while True:
        ready, _, _ = select.select([master], [], [], 60)
        assert ready, seen
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the child closed its end
            break
        if not chunk:
            break
        seen += chunk
    out, _ = proc.communicate(timeout=60)
    os.close(master)
    assert proc.returncode == 0 and out.startswith(b"ok ")
    text = seen.decode()
    counts = [int(n.replace(",", "")) for n in re.findall(r"items: comparing, ([\d,]+) ", text)]
    assert counts == list(range(100, 1001, 100)), text
    assert "items: done, 1,000 " in text


# --- f. and g. log timestamps; SIGTERM while retrying ---------------------------------------

def _run_retrying(cfg: Path, log: Path, env: dict[str, str] | None = None) -> tuple[int, str]:
    """`cdc run` against a target nobody listens on: it retries until SIGTERM."""
    with open(log, "wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "cdc", "run", "-c", str(cfg)],
                                stdout=fh, stderr=fh, cwd=REPO,
                                env=dict(os.environ, **(env or {})))
    deadline = time.monotonic() + 60
    while "retrying with backoff" not in log.read_text() and time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=30), log.read_text()


def _down_target_pipeline(tmp_path: Path, mysql_db: Any) -> Path:
    mysql_db.execute(SRC)
    down = f"postgresql://nobody@127.0.0.1:{free_port()}/nothing"
    return write_pipeline(tmp_path, mysql_db.url, down, {"items": RULE})


def test_sigterm_while_retrying_exits_0_with_timestamps(tmp_path: Path, mysql_db: Any) -> None:
    cfg = _down_target_pipeline(tmp_path, mysql_db)
    code, text = _run_retrying(cfg, tmp_path / "run.log")
    assert code == 0, text
    assert "Traceback" not in text
    retry = next(ln for ln in text.splitlines() if "retrying with backoff" in ln)
    # Not under journald: each line starts with its date and time.
    assert retry[:4].isdigit() and retry[4] == "-" and retry[10] == " " and retry[13] == ":", \
        retry
    readme = (REPO / "README.md").read_text()
    assert "4 interrupted while retrying" not in readme
    assert "| 4 | a snapshot interrupted" in readme


def test_no_timestamps_under_journald(tmp_path: Path, mysql_db: Any) -> None:
    """systemd sets JOURNAL_STREAM to the device:inode of the stream it reads;
    journald stamps each line itself."""
    cfg = _down_target_pipeline(tmp_path, mysql_db)
    log = tmp_path / "run.log"
    log.write_bytes(b"")
    st = os.stat(log)
    code, text = _run_retrying(cfg, log, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
    assert code == 0, text
    retry = next(ln for ln in text.splitlines() if "retrying with backoff" in ln)
    assert retry.startswith("WARNING cdc"), retry
    # A JOURNAL_STREAM inherited by a process whose stderr goes elsewhere still gets them.
    code, text = _run_retrying(cfg, tmp_path / "other.log", {"JOURNAL_STREAM": "1:2"})
    retry = next(ln for ln in text.splitlines() if "retrying with backoff" in ln)
    assert retry[:4].isdigit(), retry


# --- h. the demo's closing hint -------------------------------------------------------------

def test_demo_hint_matches_what_is_still_running() -> None:
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import demo
    finally:
        sys.path.remove(str(REPO / "scripts"))
    stopped = demo.closing_hint(keep=False)
    assert "--keep" in stopped and "servers are stopped" in stopped
    kept = demo.closing_hint(keep=True)
    assert "source .cdc-demo/env.sh && cdc lag" in kept
