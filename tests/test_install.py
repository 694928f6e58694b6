"""The service install on Debian 12, replayed as docs/operations.md tells a DBA.

Two ways, both against the session's throwaway MariaDB and PostgreSQL:

- `deploy/install-service.sh --root DIR` installs everything under a temporary
  root (a venv made from Debian's /usr/bin/python3, `cdc-env`, the config
  directory, the unit), each naming the paths it was installed to, so the
  installed unit verifies and the installed cdc runs where it lies.  The
  service user is `nobody` (on every Debian, unprivileged): commands change
  user and go through the config's group permissions as they would for `cdc`,
  and no user is created.
- `test_docs_replayed_at_the_default_paths` runs the docs' own shell blocks at
  /opt/cdc and /etc/cdc with a real user `cdc`, inside a private mount
  namespace whose /etc, /opt, /usr/local, /usr/share/doc and /var/lib are
  overlays, so nothing reaches the machine.

PID 1 here is not systemd: the unit is checked with `systemd-analyze verify`,
and the daemon is started the way its ExecStart says, through `cdc-env` (same
binary, config, variables, user), not by systemctl.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pipeline_helpers import REPO

SERVICE_USER = "nobody"
SERVICE_GROUP = "nogroup"
DEB_PYTHON = "/usr/bin/python3"  # stock Debian 12's interpreter, executable by the service user
# A root shell on stock Debian: no venv, no pyenv, no SHOP_URL: nothing leaks in from the test.
BARE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "LANG": "C.UTF-8", "HOME": "/root"}
# The real locations: an install under --root must not touch them.
REAL_PATHS = ["/opt/cdc", "/etc/cdc", "/etc/systemd/system/cdc@.service",
              "/usr/local/bin/cdc-env", "/usr/share/doc/cdc"]


def docs() -> str:
    return (REPO / "docs" / "operations.md").read_text()


def machine_pip_env() -> dict[str, str]:
    # Only the install step needs the package registry, set up the machine's way.
    return {k: v for k, v in os.environ.items()
            if k.startswith("PIP_") or k.upper() in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")}


def install(root: Path) -> subprocess.CompletedProcess[str]:
    env = dict(BARE_ENV, CDC_USER=SERVICE_USER, PYTHON=DEB_PYTHON, **machine_pip_env())
    return subprocess.run(["bash", str(REPO / "deploy" / "install-service.sh"), "--root",
                           str(root)], capture_output=True, text=True, env=env, timeout=600)


def user_exists(name: str) -> bool:
    return subprocess.run(["id", name], capture_output=True).returncode == 0


def clone_build_state() -> dict[str, float]:
    """What a build in the clone would leave: build/ and *.egg-info, with mtimes."""
    paths = [REPO / "build", *REPO.glob("*.egg-info")]
    return {p.name: p.stat().st_mtime for p in paths if p.exists()}


class Installed:
    def __init__(self, root: Path, clone_before: dict[str, float]) -> None:
        self.root = root
        self.clone_before = clone_before
        self.venv = root / "opt/cdc/venv"
        self.confdir = root / "etc/cdc"
        self.unit = root / "etc/systemd/system/cdc@.service"
        self.cdc_env = root / "usr/local/bin/cdc-env"

    def run(self, *args: str, as_user: str | None = None,
            timeout: float = 180) -> subprocess.CompletedProcess[str]:
        """`cdc-env ARGS` from a bare root shell, or as `as_user` (a monitoring agent)."""
        cmd = [str(self.cdc_env), *args]
        if as_user:
            cmd = ["runuser", "-u", as_user, "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, env=BARE_ENV,
                              timeout=timeout, cwd="/")


def real_state() -> dict[str, bool]:
    """Which of the real install's paths exist, and whether user `cdc` does."""
    return {**{p: os.path.lexists(p) for p in REAL_PATHS}, "user cdc": user_exists("cdc")}


@pytest.fixture(scope="module")
def real_paths_before() -> dict[str, bool]:
    return real_state()


@pytest.fixture(scope="module")
def installed(real_paths_before: dict[str, bool]) -> Iterator[Installed]:
    assert Path(DEB_PYTHON).exists(), "Debian's python3 is missing: bash scripts/setup.sh"
    # Not tmp_path: its parents are 0700, and the service user must reach the root.
    root = Path(tempfile.mkdtemp(prefix="cdc-install-"))
    root.chmod(0o755)
    try:
        clone_before = clone_build_state()
        p = install(root)
        assert p.returncode == 0, p.stdout + p.stderr
        yield Installed(root, clone_before)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_install_into_a_root_gives_a_unit_that_verifies(
        installed: Installed, real_paths_before: dict[str, bool]) -> None:
    unit = installed.unit.read_text()
    cdc_bin = installed.venv / "bin" / "cdc"
    assert f"ExecStart={cdc_bin} run -c {installed.confdir}/%i.yaml" in unit
    assert f"EnvironmentFile=-{installed.confdir}/%i.env" in unit
    assert f"User={SERVICE_USER}\n" in unit and f"Group={SERVICE_GROUP}\n" in unit
    assert f"ReadOnlyPaths={installed.confdir}\n" in unit
    # Nothing of the defaults is left pointing outside the root.
    assert "/usr/local/bin/cdc" not in unit and "/opt/cdc/venv" not in unit.replace(
        str(installed.venv), "")
    # An instance, as systemd would load cdc@shop_to_crm.service from the template.
    instance = installed.root / "cdc@shop_to_crm.service"
    instance.write_text(unit)
    p = subprocess.run(["systemd-analyze", "verify", str(instance)], capture_output=True,
                       text=True, env=BARE_ENV)
    # `nobody` draws systemd's one warning about it; a real install runs as user cdc.
    complaints = [ln for ln in p.stderr.splitlines()
                  if ln.strip() and "Special user nobody configured" not in ln]
    assert p.returncode == 0 and not complaints, p.stderr
    # The venv is the stock interpreter's, isolated from it, and carries the migrations.
    cfg = (installed.venv / "pyvenv.cfg").read_text()
    assert "include-system-site-packages = false" in cfg
    probe = subprocess.run(
        [str(installed.venv / "bin/python"), "-c",
         "import cdc, cdc.bookkeeping as b; print(cdc.__file__); print(b.latest_version('mysql'),"
         " b.latest_version('postgresql'))"],
        capture_output=True, text=True, env=BARE_ENV, cwd="/", check=True)
    where, versions = probe.stdout.splitlines()
    assert where.startswith(str(installed.venv)), where  # not the clone's code
    assert all(int(v) >= 1 for v in versions.split())
    # The configuration directory: group-readable for the service user, no one else.
    st = installed.confdir.stat()
    assert oct(st.st_mode & 0o777) == "0o750" and st.st_uid == 0
    assert installed.confdir.group() == SERVICE_GROUP
    assert (installed.root / "usr/local/bin/cdc").resolve() == cdc_bin.resolve()
    # Nothing was installed outside the root, and no user was created.
    assert real_state() == real_paths_before
    # The build ran on a copy: the clone got no build/ or *.egg-info from it.
    assert clone_build_state() == installed.clone_before


def test_reinstall_is_an_upgrade_in_place(installed: Installed) -> None:
    before = {f: f.read_text() for f in (installed.unit, installed.root / "opt/cdc/bin/cdc-env")}
    marker = installed.venv / "bin" / "left-alone"
    marker.write_text("")
    p = install(installed.root)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "creating the venv" not in p.stdout  # the same venv, upgraded
    assert marker.exists()
    assert {f: f.read_text() for f in before} == before
    r = subprocess.run([str(installed.venv / "bin/cdc"), "--help"], capture_output=True,
                       text=True, env=BARE_ENV, cwd="/")
    assert r.returncode == 0 and "setup" in r.stdout


def config_variables(path: Path) -> set[str]:
    """The ${VAR}s a pipeline file's values use (comments aside)."""
    from cdc.config import _VAR
    code = "\n".join(ln.split("#", 1)[0] for ln in path.read_text().splitlines())
    return {m.group(1) for m in _VAR.finditer(code)}


def test_example_env_files_define_what_the_config_uses() -> None:
    example = REPO / "deploy" / "example"
    used = config_variables(example / "shop_to_crm.yaml")
    assert used == {"SHOP_URL", "CRM_URL"}
    assert used == config_variables(REPO / "examples/shop_to_crm.yaml")
    for env_file in ("shop_to_crm.env", "shop_to_crm.monitor.env"):
        lines = [ln for ln in (example / env_file).read_text().splitlines()
                 if ln.strip() and not ln.startswith("#")]
        assert {ln.split("=", 1)[0] for ln in lines} == used, env_file
        # Single-quoted: systemd's EnvironmentFile= and the shell read the same value.
        assert all(re.fullmatch(r"\w+='[^']*'", ln) for ln in lines), lines
    # Each is installed where the docs say, by the commands the docs give.
    ops = docs()
    assert "install -m 0640 -o root -g cdc deploy/example/shop_to_crm.yaml /etc/cdc/" in ops
    assert "install -m 0600 -o root -g root deploy/example/shop_to_crm.env /etc/cdc/" in ops
    assert ("install -m 0640 -o root -g cdc deploy/example/shop_to_crm.monitor.env /etc/cdc/"
            in ops)
    assert "cp -r rules/shop_to_crm /etc/cdc/rules/" in ops


ENV_GENERATOR = "/usr/lib/systemd/user-environment-generators/30-systemd-environment-d-generator"


def test_env_file_reads_alike_in_systemd_and_the_shell(tmp_path: Path) -> None:
    """The example's NAME='value' lines mean the same to systemd and to cdc-env.

    With no systemd as PID 1 here, systemd's own env-file parser (the one
    EnvironmentFile= uses) is reached through the environment.d generator; it
    also expands ${...}, which EnvironmentFile= does not, so no value has a `$`.
    """
    text = (REPO / "deploy/example/shop_to_crm.env").read_text()
    tricky = {"SHOP_URL": "mysql://cdc_reader:p@ss:w/o#rd? x@10.0.0.5:3306/shop",
              "CRM_URL": "postgresql://cdc_writer:a b=c;d\\e@10.0.0.9:5432/crm"}
    for var, value in tricky.items():
        text = re.sub(rf"^{var}='[^']*'$", lambda _m, v=var, x=value: f"{v}='{x}'", text,
                      flags=re.M)
    conf = tmp_path / "environment.d"
    conf.mkdir()
    (conf / "10-cdc.conf").write_text(text)
    p = subprocess.run([ENV_GENERATOR], capture_output=True, text=True, check=True,
                       env={"XDG_CONFIG_HOME": str(tmp_path), "HOME": "/nonexistent"})
    by_systemd = {}
    for ln in p.stdout.splitlines():
        k, v = ln.split("=", 1)
        if k in tricky:  # printed shell-quoted: "..." with \ \" \$ \` escapes
            assert v.startswith('"') and v.endswith('"'), ln
            by_systemd[k] = re.sub(r'\\(.)', r"\1", v[1:-1])
    sh = subprocess.run(["sh", "-c", 'set -a; . "$1"; set +a; printf "%s\\n" "$SHOP_URL" '
                         '"$CRM_URL"', "sh", str(conf / "10-cdc.conf")],
                        capture_output=True, text=True, check=True, env=BARE_ENV)
    by_shell = dict(zip(["SHOP_URL", "CRM_URL"], sh.stdout.splitlines(), strict=True))
    assert by_systemd == by_shell == tricky


def load_demo_schemas(mysql_db: Any, pg_db: Any) -> None:
    for stmt in (REPO / "sql/demo/shop_mysql.sql").read_text().split(";\n"):
        if any(ln.strip() and not ln.strip().startswith("--") for ln in stmt.splitlines()):
            mysql_db.execute(stmt)
    pg_db.execute((REPO / "sql/demo/crm_postgres.sql").read_text())


def put_pipeline(installed: Installed, name: str, env: dict[str, str],
                 monitor_env: dict[str, str]) -> None:
    """The per-pipeline steps of docs/operations.md, under the test root."""
    example = REPO / "deploy" / "example"
    conf = installed.confdir
    shutil.copy(example / "shop_to_crm.yaml", conf / f"{name}.yaml")
    (conf / f"{name}.yaml").chmod(0o640)
    shutil.chown(conf / f"{name}.yaml", "root", SERVICE_GROUP)
    subprocess.run(["cp", "-r", str(REPO / "rules/shop_to_crm"), str(conf / "rules") + "/"],
                   check=True)
    for suffix, values, mode, group in (("env", env, 0o600, "root"),
                                        ("monitor.env", monitor_env, 0o640, SERVICE_GROUP)):
        # The example file with its placeholders replaced, as the DBA's editor would.
        text = (example / f"shop_to_crm.{suffix}").read_text()
        for var, value in values.items():
            text, n = re.subn(rf"^{var}='[^']*'$", f"{var}='{value}'", text, flags=re.M)
            assert n == 1
        path = conf / f"{name}.{suffix}"
        path.write_text(text)
        path.chmod(mode)
        shutil.chown(path, "root", group)


def wait_for(what: str, probe: Any, timeout: float = 90) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = probe()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


def test_documented_first_start_and_monitoring(installed: Installed, mysql_db: Any,
                                               pg_db: Any, mariadb_server: Any,
                                               pg_server: Any) -> None:
    load_demo_schemas(mysql_db, pg_db)
    suffix = mysql_db.name[-6:]
    mon = f"mon_{suffix}"
    # The read-only monitoring users, with exactly the GRANTs the docs give.
    for host in ("%", "127.0.0.1"):
        mariadb_server.execute(f"CREATE USER '{mon}'@'{host}' IDENTIFIED BY 'pw_mon'")
        mariadb_server.execute(f"GRANT REPLICATION CLIENT ON *.* TO '{mon}'@'{host}'")
    pg_server.execute(f"CREATE ROLE {mon} LOGIN PASSWORD 'pw_mon'")
    assert "GRANT REPLICATION CLIENT ON *.* TO 'cdc_monitor'@'%';" in docs()
    assert "GRANT USAGE ON SCHEMA cdc TO cdc_monitor;" in docs()
    assert "GRANT SELECT ON ALL TABLES IN SCHEMA cdc TO cdc_monitor;" in docs()
    name = "shop_to_crm"
    put_pipeline(installed, name,
                 env={"SHOP_URL": mysql_db.url, "CRM_URL": pg_db.url},
                 monitor_env={"SHOP_URL": mariadb_server.url(mysql_db.name, user=mon,
                                                             password="pw_mon"),
                              "CRM_URL": pg_server.url(pg_db.name, user=mon,
                                                       password="pw_mon")})
    # The rules path of the installed config resolves to where the docs put the rules.
    from cdc.config import load
    cfg = load(installed.confdir / f"{name}.yaml", env={"SHOP_URL": mysql_db.url,
                                                        "CRM_URL": pg_db.url})
    assert cfg.rules_dir == installed.confdir / "rules" / "shop_to_crm"
    assert sorted(p.name for p in cfg.rules_dir.glob("*.sql")) == ["customers.sql", "orders.sql"]

    ops = docs()
    try:
        # First start, in the documented order, each as the service user with the env file.
        # Before `setup`, doctor fails the bookkeeping check alone, as the docs say.
        assert "cdc-env shop_to_crm doctor " in ops
        p = installed.run(name, "doctor")
        fails = [ln for ln in p.stdout.splitlines() if ln.startswith("FAIL")]
        assert p.returncode == 1 and len(fails) == 1, p.stdout + p.stderr
        assert fails[0].startswith("FAIL bookkeeping schema: version 0"), fails
        for args in (["doctor", "--print-grants"], ["check", "--show-sql"], ["setup"],
                     ["doctor"], ["snapshot"]):
            assert f"cdc-env shop_to_crm {' '.join(args)} " in ops, args
            p = installed.run(name, *args)
            assert p.returncode == 0, f"cdc-env {name} {' '.join(args)}: {p.stdout}{p.stderr}"
            if args == ["setup"]:
                assert "bookkeeping schema at version" in p.stdout
            if args == ["doctor"]:
                assert "FAIL" not in p.stdout
        assert pg_db.scalar("SELECT count(*) FROM crm_customer") > 0
        # The service's user did the work: the bookkeeping is the target user's, the
        # files cdc read are the service user's to read, and it could not read the secrets.
        assert pg_db.scalar("SELECT count(*) FROM cdc.offsets WHERE pipeline = %s", (name,)) == 1
        # The same command without the wrapper, as the docs spell it out.
        manual = (f"set -a; . {installed.confdir}/{name}.env; set +a; runuser -u {SERVICE_USER}"
                  f" -- {installed.venv}/bin/cdc check -c {installed.confdir}/{name}.yaml")
        assert ("set -a; . /etc/cdc/shop_to_crm.env; set +a; runuser -u cdc -- "
                "/opt/cdc/venv/bin/cdc check -c /etc/cdc/shop_to_crm.yaml") in ops
        p = subprocess.run(["bash", "-c", manual], capture_output=True, text=True,
                           env=BARE_ENV, cwd="/", timeout=180)
        assert p.returncode == 0, p.stdout + p.stderr

        # Before the daemon runs, the monitoring check is red, and says why.
        grant = (f"GRANT USAGE ON SCHEMA cdc TO {mon}; "
                 f"GRANT SELECT ON ALL TABLES IN SCHEMA cdc TO {mon}; "
                 f"ALTER DEFAULT PRIVILEGES FOR ROLE {pg_server.superuser} IN SCHEMA cdc "
                 f"GRANT SELECT ON TABLES TO {mon};")
        pg_db.execute(grant)
        # A table a later migration adds is readable too (ALTER DEFAULT PRIVILEGES).
        pg_db.execute("CREATE TABLE cdc.from_a_later_migration (x int)")
        with psycopg.connect(pg_server.url(pg_db.name, user=mon, password="pw_mon")) as c:
            assert c.execute("SELECT count(*) FROM cdc.from_a_later_migration").fetchone() \
                == (0,)
        pg_db.execute("DROP TABLE cdc.from_a_later_migration")
        assert "cdc-env --monitor shop_to_crm lag --max-seconds 300" in ops
        check = ("--monitor", name, "lag", "--max-seconds", "300")
        p = installed.run(*check, as_user=SERVICE_USER)
        assert p.returncode == 1 and "CRITICAL" in p.stderr, p.stdout + p.stderr
        # The monitoring agent cannot use the write secrets.
        p = installed.run(name, "lag", as_user=SERVICE_USER)
        assert p.returncode == 2 and "cannot read" in p.stderr, p.stdout + p.stderr

        # The daemon as ExecStart runs it (same binary, config, variables, user).
        daemon = subprocess.Popen([str(installed.cdc_env), name, "run"], env=BARE_ENV, cwd="/",
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            def streaming() -> bool:
                r = installed.run("--monitor", name, "lag", "--json", as_user=SERVICE_USER)
                assert daemon.poll() is None, daemon.communicate()[0]
                return r.returncode == 0 and json.loads(r.stdout)["state"] == "streaming"
            wait_for("the daemon to stream", streaming)
            mysql_db.execute("INSERT INTO customers (first_name, last_name, email, phone, "
                             "industry) VALUES ('Ada', 'Install', 'ada@example.com', '1', 'IT')")
            wait_for("the new customer in the CRM", lambda: pg_db.scalar(
                "SELECT count(*) FROM crm_customer WHERE email = 'ada@example.com'") == 1)
            p = installed.run(*check, as_user=SERVICE_USER)
            assert p.returncode == 0, p.stdout + p.stderr
            assert p.stdout.startswith(f"{name}: streaming")
            assert "cdc-env shop_to_crm lag " in ops
            p = installed.run(name, "lag")  # root, as in "First start"
            assert p.returncode == 0 and p.stdout.startswith(f"{name}: streaming"), p.stderr
            # The daemon runs as the service user, not as root.
            pid = json.loads(installed.run("--monitor", name, "lag", "--json").stdout)["pid"]
            assert Path(f"/proc/{pid}").stat().st_uid == int(
                subprocess.run(["id", "-u", SERVICE_USER], capture_output=True, text=True,
                               check=True).stdout)
        finally:
            daemon.send_signal(signal.SIGTERM)
            out = daemon.communicate(timeout=60)[0]
        # cdc-env execs cdc in place: SIGTERM reached it, and the exit code is its own.
        assert daemon.returncode == 0, out
        p = installed.run("--monitor", name, "status", as_user=SERVICE_USER)
        assert p.returncode == 0 and "stopped" in p.stdout, p.stdout + p.stderr + out
        # Read-only means read-only: the monitoring user can change nothing.
        with psycopg.connect(pg_server.url(pg_db.name, user=mon, password="pw_mon"),
                             autocommit=True) as conn, \
                pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DELETE FROM cdc.offsets")
        assert pg_db.scalar("SELECT count(*) FROM cdc.offsets WHERE pipeline = %s", (name,)) == 1
        assert pg_db.scalar(
            "SELECT count(*) FROM crm_customer WHERE email = 'ada@example.com'") == 1
    finally:
        for host in ("%", "127.0.0.1"):
            mariadb_server.execute(f"DROP USER IF EXISTS '{mon}'@'{host}'")
        pg_db.execute(f"DROP OWNED BY {mon}")
        pg_server.execute(f"DROP ROLE IF EXISTS {mon}")


def test_monitoring_grants_for_a_postgresql_source_and_a_mysql_target(
        tmp_path: Path, pg_db: Any, mysql_db: Any, pg_server: Any, mariadb_server: Any) -> None:
    """The other half of the documented monitoring GRANTs, without the install."""
    from pipeline_helpers import DaemonProcess, cdc, write_pipeline

    pg_db.execute("CREATE TABLE items (id integer PRIMARY KEY, name text NOT NULL)")
    mysql_db.execute("CREATE TABLE t_items (id int PRIMARY KEY, name varchar(50) NOT NULL)")
    rule = {"items": "INSERT INTO t_items (id, name) SELECT i.id, i.name FROM items AS i"}
    name = f"mon_{pg_db.name}"
    (tmp_path / "writer").mkdir()
    writer = write_pipeline(tmp_path / "writer", pg_db.url, mysql_db.url, rule, name=name)
    mon = f"mon_{mysql_db.name[-6:]}"
    ops = docs()
    assert "-- source PostgreSQL: pg_current_wal_lsn() needs no privilege" in ops
    assert "GRANT SELECT ON crm.* TO 'cdc_monitor'@'%';" in ops
    pg_server.execute(f"CREATE ROLE {mon} LOGIN PASSWORD 'pw_mon'")
    for host in ("%", "127.0.0.1"):
        mariadb_server.execute(f"CREATE USER '{mon}'@'{host}' IDENTIFIED BY 'pw_mon'")
        mariadb_server.execute(f"GRANT SELECT ON `{mysql_db.name}`.* TO '{mon}'@'{host}'")
    (tmp_path / "monitor").mkdir()
    monitor = write_pipeline(
        tmp_path / "monitor", pg_server.url(pg_db.name, user=mon, password="pw_mon"),
        mariadb_server.url(mysql_db.name, user=mon, password="pw_mon"), rule, name=name)
    daemon = DaemonProcess(writer, tmp_path / "run.log")
    try:
        cdc("setup", "-c", str(writer))
        p = cdc("lag", "-c", str(monitor), "--max-seconds", "300", check=False)
        assert p.returncode == 1 and "CRITICAL" in p.stderr, p.stdout + p.stderr
        daemon.start()
        pg_db.execute("INSERT INTO items VALUES (1, 'one')")
        wait_for("the row in the target", lambda: mysql_db.query("SELECT id, name FROM t_items")
                 == [(1, "one")])

        def green() -> bool:
            assert daemon.proc is not None and daemon.proc.poll() is None, \
                (tmp_path / "run.log").read_text()
            r = cdc("lag", "-c", str(monitor), "--max-seconds", "300", check=False)
            assert "source_error" not in r.stdout and "denied" not in r.stderr, r.stderr
            return r.returncode == 0
        wait_for("a green check with the read-only users", green)
        r = cdc("lag", "-c", str(monitor), "--json")
        assert json.loads(r.stdout)["source_position"] is not None
        assert daemon.terminate() == 0
        # Read only: the monitoring users can read neither the source's rows nor change
        # the target's bookkeeping.
        with psycopg.connect(pg_server.url(pg_db.name, user=mon, password="pw_mon"),
                             autocommit=True) as conn, \
                pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT * FROM items")
        import pymysql
        conn2 = pymysql.connect(host=mariadb_server.host, port=mariadb_server.port, user=mon,
                                password="pw_mon", database=mysql_db.name, autocommit=True)
        try:
            with conn2.cursor() as cur, pytest.raises(pymysql.err.OperationalError,
                                                      match="command denied"):
                cur.execute("DELETE FROM cdc_offsets")
        finally:
            conn2.close()
        assert mysql_db.scalar("SELECT count(*) FROM cdc_offsets WHERE pipeline = %s",
                               (name,)) == 1
    finally:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.proc.kill()
            daemon.proc.wait(timeout=30)
        cdc("teardown", "-c", str(writer), "--yes", check=False)
        for host in ("%", "127.0.0.1"):
            mariadb_server.execute(f"DROP USER IF EXISTS '{mon}'@'{host}'")
        pg_db.execute(f"DROP OWNED BY {mon}")
        pg_server.execute(f"DROP ROLE IF EXISTS {mon}")


def doc_blocks(lang: str) -> list[tuple[str, str]]:
    """(heading, body) of each ```lang block of docs/operations.md, in order."""
    out: list[tuple[str, str]] = []
    heading, fence, body = "", None, []
    for ln in docs().splitlines():
        if fence is None and ln.startswith("#"):
            heading = ln.lstrip("#").strip()
        elif fence is None and ln.startswith("```"):
            fence, body = ln[3:].strip(), []
        elif fence is not None and ln.startswith("```"):
            if fence == lang:
                out.append((heading, "\n".join(body)))
            fence = None
        elif fence is not None:
            body.append(ln)
    return out


def replay_line(line: str) -> str:
    """A documented shell line as the replay runs it: what needs a person or
    systemd is replaced by its effect; everything else runs as written."""
    cmd = line.split("#", 1)[0].strip() if not line.startswith("(") else line
    if m := re.fullmatch(r"editor (\S+)", cmd):
        # The DBA's edit: the example with the test servers' URLs; cp keeps mode and owner.
        return f'cp "$VALUES/$(basename {m.group(1)})" {m.group(1)}'
    if m := re.fullmatch(r"systemctl enable --now cdc@(\w+)", cmd):
        # What the unit's ExecStart does, through the same binary, config, variables, user.
        return (f'cdc-env {m.group(1)} run >"$VALUES/run.log" 2>&1 & daemon=$!; '
                f"wait_streaming {m.group(1)}")
    if re.fullmatch(r"systemctl disable --now cdc@\w+", cmd):
        return 'kill -TERM "$daemon"; wait "$daemon"'
    if cmd == "usermod -aG cdc nagios":
        return "usermod -aG cdc nobody  # the test's monitoring agent"
    if cmd.startswith("cdc-env --monitor "):
        # As the agent; a daemon just started reads "lag unknown" until its first
        # heartbeat, so the check is repeated as an agent would.
        return f"until_green runuser -u nobody -- {cmd}"
    return line


REPLAY_PRELUDE = r"""
set -euo pipefail
# Private overlays: every write below lands in a tmpfs, never on this machine
# (tmpfs: an overlay's upper layer cannot be on overlayfs, as /tmp may be).
mkdir -p "$OVERLAY"
mount -t tmpfs -o mode=0755 tmpfs "$OVERLAY"
for d in /etc /opt /usr/local /usr/share/doc /var/lib; do
    mkdir -p "$OVERLAY$d/upper" "$OVERLAY$d/work"
    mount -t overlay overlay -o "lowerdir=$d,upperdir=$OVERLAY$d/upper,workdir=$OVERLAY$d/work" "$d"
done
wait_streaming() {
    for _ in $(seq 240); do
        if cdc-env "$1" lag --json 2>/dev/null | grep -q '"state": "streaming"'; then return 0; fi
        kill -0 "$daemon" || { cat "$VALUES/run.log"; return 1; }
        sleep 0.5
    done
    cat "$VALUES/run.log"; return 1
}
until_green() {
    for _ in $(seq 120); do
        if "$@" 2>"$VALUES/check.err"; then return 0; fi
        sleep 0.5
    done
    cat "$VALUES/check.err" >&2
    runuser -u nobody -- cdc-env --monitor shop_to_crm lag --json >&2
    return 1
}
cd "$REPO"
"""


def test_docs_replayed_at_the_default_paths(tmp_path: Path, mysql_db: Any, pg_db: Any,
                                            mariadb_server: Any, pg_server: Any) -> None:
    """docs/operations.md's own commands, at /opt/cdc, /etc/cdc and with a real user
    `cdc`, in a private mount namespace whose /etc, /opt, /usr/local, /usr/share/doc
    and /var/lib are overlays: the machine itself is left as it was."""
    before = real_state()
    load_demo_schemas(mysql_db, pg_db)
    mon = f"mon_{mysql_db.name[-6:]}"
    blocks = doc_blocks("sh")
    wanted = ["Install as a service", "Commands by hand: `cdc-env`", "First start",
              "A check without write secrets", "Remove a pipeline cleanly"]
    script = [REPLAY_PRELUDE]
    for heading, body in blocks:
        if heading not in wanted or body.startswith("cdc-env shop_to_crm COMMAND"):
            continue
        if heading == "A check without write secrets":
            # The documented GRANTs (the SQL block), for this test's servers and names.
            script.append('mariadb --protocol=tcp -h "$MY_HOST" -P "$MY_PORT" -uroot '
                          '-p"$MY_PW" < "$VALUES/monitor-mysql.sql"')
            script.append('psql -q -v ON_ERROR_STOP=1 "$PG_ADMIN" -f "$VALUES/monitor-pg.sql"')
        script.append(f"# ---- {heading}")
        for ln in body.splitlines():
            if ln.split("#")[0].strip() == "cdc-env shop_to_crm doctor" and not any(
                    "doctor-before-setup" in s for s in script):
                # Documented to fail before `setup`, on the bookkeeping check alone.
                ln = ('{ cdc-env shop_to_crm doctor >"$VALUES/doctor-before-setup" '
                      '|| test $? -eq 1; }')
            script.append(replay_line(ln))
    script.append("test ! -e /etc/cdc/shop_to_crm.yaml && test ! -e /etc/cdc/rules/shop_to_crm")
    script.append('id cdc >"$VALUES/id-cdc"; id nobody >"$VALUES/id-nobody"')
    assert [h for h in wanted if not any(h == b for b, _ in blocks)] == []

    values = tmp_path / "values"
    values.mkdir()
    values.chmod(0o755)
    for name, urls in (("shop_to_crm.env", (mysql_db.url, pg_db.url)),
                       ("shop_to_crm.monitor.env",
                        (mariadb_server.url(mysql_db.name, user=mon, password="pw_mon"),
                         pg_server.url(pg_db.name, user=mon, password="pw_mon")))):
        text = (REPO / "deploy/example" / name).read_text()
        for var, url in zip(("SHOP_URL", "CRM_URL"), urls, strict=True):
            text = re.sub(rf"^{var}='[^']*'$", lambda _m, v=var, u=url: f"{v}='{u}'", text,
                          flags=re.M)
        (values / name).write_text(text)
    sql = [b for _, b in doc_blocks("sql") if "CREATE USER 'cdc_monitor'" in b][0]
    parts = dict(re.findall(r"^-- (source MariaDB/MySQL|target PostgreSQL)[^\n]*\n"
                            r"((?:(?!-- )[^\n]*\n?)*)", sql, flags=re.M))

    def named(text: str) -> str:
        return text.replace("cdc_monitor", mon).replace("'…'", "'pw_mon'").replace(
            "cdc_writer", pg_server.superuser)
    (values / "monitor-mysql.sql").write_text(named(parts["source MariaDB/MySQL"]))
    (values / "monitor-pg.sql").write_text(named(parts["target PostgreSQL"]))
    assert "GRANT REPLICATION CLIENT" in (values / "monitor-mysql.sql").read_text()
    assert "ALTER DEFAULT PRIVILEGES" in (values / "monitor-pg.sql").read_text()
    (tmp_path / "replay.sh").write_text("\n".join(script) + "\n")

    env = dict(BARE_ENV, OVERLAY=str(tmp_path / "overlay"), VALUES=str(values), REPO=str(REPO),
               MY_HOST=mariadb_server.host, MY_PORT=str(mariadb_server.port),
               MY_PW=mariadb_server.password, PG_ADMIN=pg_db.url, **machine_pip_env())
    try:
        p = subprocess.run(["unshare", "--mount", "--propagation", "private", "bash", "-x",
                            str(tmp_path / "replay.sh")], capture_output=True, text=True,
                           env=env, timeout=900)
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-6000:]
        out = p.stdout
        fails = [ln for ln in (values / "doctor-before-setup").read_text().splitlines()
                 if ln.startswith("FAIL")]
        assert len(fails) == 1 and fails[0].startswith("FAIL bookkeeping schema"), fails
        assert "bookkeeping schema at version" in out
        assert re.search(r"^shop_to_crm: streaming, 0\.0s behind", out, flags=re.M), out
        assert "CRITICAL" not in p.stderr
        # The service user existed inside only; the agent was in its group.
        assert "(cdc)" in (values / "id-cdc").read_text()
        assert "(cdc)" in (values / "id-nobody").read_text()
        assert pg_db.scalar("SELECT count(*) FROM crm_customer") > 0
        # The documented removal forgot the pipeline's bookkeeping.
        assert pg_db.scalar("SELECT count(*) FROM cdc.offsets") == 0
        assert real_state() == before
        assert "(cdc)" not in subprocess.run(["id", "nobody"], capture_output=True,
                                             text=True).stdout
    finally:
        for host in ("%",):
            mariadb_server.execute(f"DROP USER IF EXISTS '{mon}'@'{host}'")
        pg_db.execute(f"DO $$ BEGIN IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{mon}')"
                      f" THEN EXECUTE 'DROP OWNED BY {mon}'; END IF; END $$")
        pg_server.execute(f"DROP ROLE IF EXISTS {mon}")
