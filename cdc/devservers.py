"""Throwaway local database servers for tests, benchmarks and the demo.

``PostgresServer`` and ``MariaDBServer`` each run a private server process on a
free loopback port, with a data directory under ``basedir``::

    with PostgresServer(Path("/tmp/x")) as pg:
        pg.create_database("shop")
        print(pg.url("shop"))        # postgresql://postgres:...@127.0.0.1:PORT/shop

PostgreSQL refuses to run as root and MariaDB refuses to without ``--user``, so
when this runs as root both servers run as the unprivileged OS user ``cdctest``
(created on first use). That user must be able to reach ``basedir``; when a
parent directory is closed to it (``/root``, pytest's ``/tmp/pytest-of-root``),
the data lives in ``/tmp/cdc-devservers-<hash>/`` instead and ``basedir`` only
keeps the state files.

Time zones: PostgreSQL takes any zone it knows (``Asia/Shanghai``, ``UTC``,
``+05:00`` in POSIX sense). MariaDB takes offsets (``+05:00``) directly via
``--default-time-zone``; for a named zone (``Asia/Shanghai``) the zone tables are
loaded from ``/usr/share/zoneinfo`` (Debian package ``tzdata``) and the zone is
set with ``SET GLOBAL time_zone`` once the server is up, since the server would
refuse to start with a named default zone before the tables exist.

Command line (servers outlive the command; pids and ports are recorded in DIR)::

    python -m cdc.devservers up --dir DIR     # prints `export CDC_DEV_..._URL=...`
    python -m cdc.devservers down --dir DIR
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import hashlib
import json
import os
import pwd
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

__all__ = [
    "DevServer",
    "DevServerError",
    "MariaDBServer",
    "PostgresServer",
    "free_port",
    "main",
]

SERVER_OS_USER = "cdctest"
HOST = "127.0.0.1"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]{0,62}$")
_BIND_ERRORS = (
    "could not bind",
    "address already in use",
    "can't start server: bind on tcp/ip port",
    "do you already have another server running",
)
# Unix socket paths are limited to 108 bytes (including the terminating NUL).
_SOCKET_PATH_MAX = 100


class DevServerError(RuntimeError):
    """A throwaway server failed to start, stop or answer."""


def free_port(host: str = HOST) -> int:
    """A currently free TCP port on ``host`` (bind to port 0 and let the kernel pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _quote_ident(name: str) -> str:
    if not _IDENT.match(name):
        raise ValueError(f"not a plain identifier: {name!r}")
    return name


# --------------------------------------------------------------------------- OS helpers


def _ensure_os_user(name: str = SERVER_OS_USER) -> pwd.struct_passwd:
    """The unprivileged account the servers run as; created if missing (root only)."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    proc = subprocess.run(
        [
            useradd,
            "--system",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
            "--user-group",
            name,
        ],
        capture_output=True,
        text=True,
    )
    try:
        return pwd.getpwnam(name)  # exists now, whether we or a concurrent process made it
    except KeyError:
        raise DevServerError(
            f"could not create OS user {name!r}: {proc.stderr.strip() or proc.returncode}"
        ) from None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def _cmdline(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline")
            .read_bytes()
            .replace(b"\0", b" ")
            .decode("utf-8", "replace")
        )
    except OSError:
        return ""


_libc: Any = None


def _die_with_parent(sig: int) -> Callable[[], None]:
    """A ``preexec_fn`` asking the kernel to send ``sig`` when our process exits."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    libc = _libc
    parent = os.getpid()

    def preexec() -> None:
        libc.prctl(1, sig, 0, 0, 0)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


def _clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin") + ":/usr/sbin:/sbin",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "HOME": "/tmp",
    }
    if "TZ" in os.environ:
        env["TZ"] = os.environ["TZ"]
    env.update(extra or {})
    return env


def _collect_orphaned_run_dirs() -> None:
    """Delete /tmp/cdc-devservers-* dirs whose basedir is gone and no process uses."""
    for root in Path(tempfile.gettempdir()).glob("cdc-devservers-*"):
        try:
            owner = (root / "owner").read_text().strip()
        except OSError:
            continue
        if not owner or Path(owner).exists():
            continue
        needle = str(root) + "/"
        if any(
            needle in _cmdline(int(p.name)) for p in Path("/proc").iterdir() if p.name.isdigit()
        ):
            continue
        shutil.rmtree(root, ignore_errors=True)


# --------------------------------------------------------------------------- base class


class DevServer:
    """Common machinery: run dir, OS user, process start/stop, state file, readiness."""

    kind = ""  # "postgres" / "mariadb"
    scheme = ""
    superuser = ""
    default_dbname = ""
    stop_signal = signal.SIGTERM
    parent_death_signal = signal.SIGTERM

    def __init__(
        self, basedir: Path | str, *, port: int | None = None, timezone: str | None = None
    ) -> None:
        self.basedir = Path(basedir).absolute()
        self.host = HOST
        self.port: int = port or 0
        self.timezone = timezone
        self._fixed_port = port is not None
        self.state_dir = self.basedir / self.kind
        self.run_dir = self.state_dir  # may move under /tmp if not reachable; see _prepare
        self.log_path = self.state_dir / "server.log"
        self.pid: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._uid: int | None = None
        self._gid: int | None = None
        self._password: str | None = None

    # ---- public API

    @property
    def password(self) -> str:
        if self._password is None:
            pw_file = self.state_dir / "password"
            if pw_file.exists():
                self._password = pw_file.read_text().strip()
            else:
                self.state_dir.mkdir(parents=True, exist_ok=True)
                self._password = secrets.token_hex(12)
                fd = os.open(pw_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "w") as f:
                    f.write(self._password + "\n")
        return self._password

    @property
    def data_dir(self) -> Path:
        return self.run_dir / "data"

    def url(
        self, dbname: str | None = None, user: str | None = None, password: str | None = None
    ) -> str:
        """``scheme://user:password@127.0.0.1:PORT/dbname``; default user is the superuser."""
        if dbname is None:
            dbname = self.default_dbname
        if user is None:
            user, password = self.superuser, self.password if password is None else password
        auth = quote(user, safe="")
        if password is not None:
            auth += ":" + quote(password, safe="")
        return f"{self.scheme}://{auth}@{self.host}:{self.port}/{quote(dbname, safe='')}"

    def start(self, *, die_with_parent: bool = False) -> DevServer:
        """Start the server, or adopt one already running from the same ``basedir``.

        With ``die_with_parent`` the kernel stops the server when this process exits,
        even on SIGKILL (used by the test suite so crashed runs leave nothing behind).
        Linux ties this to the calling *thread*: call it from a thread that outlives
        the server (the main thread), not from a short-lived worker thread.
        """
        self._prepare()
        if self._adopt_running():
            return self
        self._kill_leftovers()
        attempts = 1 if self._fixed_port else 4
        for attempt in range(attempts):
            if not self._fixed_port:
                self.port = free_port(self.host)
            try:
                self._start_once(die_with_parent)
                return self
            except DevServerError as e:
                bind_problem = any(s in str(e).lower() for s in _BIND_ERRORS)
                if attempt + 1 < attempts and bind_problem:
                    continue
                raise
        raise AssertionError("unreachable")

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop the server (graceful, then SIGKILL to its whole process group)."""
        self._load_run_dir()
        pid = self.pid or self._state_pid()
        if pid is not None and self._is_ours(pid):
            self._terminate(pid, timeout)
        self._kill_leftovers()
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(1)
            self._proc = None
        self.pid = None
        with contextlib.suppress(FileNotFoundError):
            (self.state_dir / "state.json").unlink()

    def purge(self) -> None:
        """Stop the server and delete its data, logs and state."""
        self.stop()
        fallback = self._fallback_run_dir()
        for path in (self.run_dir, self.state_dir, fallback):
            shutil.rmtree(path, ignore_errors=True)
        with contextlib.suppress(OSError):
            fallback.parent.rmdir()  # only once empty

    def is_running(self) -> bool:
        self._load_run_dir()
        pid = self.pid or self._state_pid()
        return pid is not None and self._is_ours(pid)

    def __enter__(self) -> DevServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def execute(
        self,
        sql: str,
        params: Sequence[Any] | dict[str, Any] | None = None,
        *,
        dbname: str | None = None,
    ) -> list[tuple[Any, ...]]:
        """Run ``sql`` as the superuser (autocommit); the rows it returns, if any."""
        raise NotImplementedError

    def connect(self, dbname: str | None = None, **kwargs: Any) -> Any:
        """A new superuser DB-API connection (autocommit); the caller closes it."""
        raise NotImplementedError

    def create_database(self, name: str) -> None:
        raise NotImplementedError

    def drop_database(self, name: str) -> None:
        raise NotImplementedError

    # ---- hooks

    def _initialized(self) -> bool:
        raise NotImplementedError

    def _initialize(self) -> None:
        raise NotImplementedError

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _ping(self) -> None:
        """Raise unless the server accepts a superuser connection over TCP."""
        raise NotImplementedError

    def _after_start(self) -> None:
        pass

    # ---- machinery

    def _prepare(self) -> None:
        self.basedir.mkdir(parents=True, exist_ok=True)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            user = _ensure_os_user()
            self._uid, self._gid = user.pw_uid, user.pw_gid
            _collect_orphaned_run_dirs()
            if not self._reachable(self.state_dir):
                # e.g. a fresh tempfile.mkdtemp() (0700): let others traverse (not list) it
                st = self.basedir.stat()
                if st.st_uid == os.geteuid() and not st.st_mode & 0o001:
                    os.chmod(self.basedir, (st.st_mode & 0o7777) | 0o001)
            if not self._reachable(self.state_dir):
                # a parent is closed (/root, /tmp/pytest-of-root): keep the data in /tmp
                self.run_dir = self._fallback_run_dir()
                root = self.run_dir.parent
                root.mkdir(mode=0o755, exist_ok=True)
                os.chmod(root, 0o755)
                (root / "owner").write_text(str(self.basedir) + "\n")
                self.run_dir.mkdir(exist_ok=True)
                if not self._reachable(self.run_dir):
                    raise DevServerError(f"{self.run_dir} is not reachable by {SERVER_OS_USER}")
            os.chown(self.run_dir, self._uid, self._gid)
            os.chmod(self.run_dir, 0o755)
        self.password  # noqa: B018 - create the password file now

    def _fallback_run_dir(self) -> Path:
        """Where the data goes when the server user cannot enter ``basedir``."""
        digest = hashlib.sha1(str(self.basedir).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"cdc-devservers-{digest}" / self.kind

    def _reachable(self, path: Path) -> bool:
        """Can the server's OS user enter ``path``?"""
        if self._uid is None:
            return True
        try:
            os.chown(path, self._uid, self._gid or -1)
        except OSError:
            return False
        proc = subprocess.run(
            ["/bin/sh", "-c", 'cd "$1"', "sh", str(path)],
            user=self._uid,
            group=self._gid,
            extra_groups=[],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd="/",
        )
        return proc.returncode == 0

    def _run_as_server_user(
        self, cmd: list[str], *, what: str, env: dict[str, str] | None = None
    ) -> None:
        proc = subprocess.run(
            cmd,
            user=self._uid,
            group=self._gid,
            extra_groups=[] if self._uid is not None else None,
            cwd=self.run_dir,
            env=_clean_env(env),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise DevServerError(
                f"{what} failed (exit {proc.returncode}): {shlex.join(cmd)}\n"
                f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
            )

    def _chown(self, path: Path) -> None:
        if self._uid is not None:
            os.chown(path, self._uid, self._gid or -1)

    def _start_once(self, die_with_parent: bool) -> None:
        if not self._initialized():
            self._initialize()
        cmd = self._command()
        log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== {time.strftime('%F %T')} starting: {shlex.join(cmd)}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.run_dir,
                env=_clean_env(),
                start_new_session=True,
                user=self._uid,
                group=self._gid,
                extra_groups=[] if self._uid is not None else None,
                preexec_fn=_die_with_parent(self.parent_death_signal) if die_with_parent else None,
            )
        self.pid = self._proc.pid
        try:
            self._wait_ready(log_offset)
            self._after_start()
        except BaseException:
            self.stop(timeout=5)
            raise
        self._write_state()

    def _wait_ready(self, log_offset: int) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        last_error: Exception | None = None
        delay = 0.02
        while True:
            assert self._proc is not None
            code = self._proc.poll()
            if code is not None:
                raise DevServerError(
                    f"{self.kind} exited with code {code} during startup "
                    f"(port {self.port}); log {self.log_path}:\n{self._log_tail(log_offset)}"
                )
            try:
                self._ping()
                return
            except Exception as e:  # noqa: BLE001 - any failure means "not yet"
                last_error = e
            if time.monotonic() > deadline:
                raise DevServerError(
                    f"{self.kind} did not accept connections on {self.host}:{self.port} "
                    f"within {START_TIMEOUT:.0f}s (last error: {last_error}); "
                    f"log {self.log_path}:\n{self._log_tail(log_offset)}"
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 0.25)

    def _log_tail(self, offset: int = 0, limit: int = 8000) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                data = f.read()
        except OSError as e:
            return f"(no log: {e})"
        return data[-limit:].decode("utf-8", "replace")

    def _write_state(self) -> None:
        state = {
            "pid": self.pid,
            "port": self.port,
            "host": self.host,
            "data_dir": str(self.data_dir),
            "run_dir": str(self.run_dir),
            "timezone": self.timezone,
        }
        tmp = self.state_dir / "state.json.tmp"
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        tmp.replace(self.state_dir / "state.json")

    def _read_state(self) -> dict[str, Any] | None:
        try:
            return dict(json.loads((self.state_dir / "state.json").read_text()))
        except (OSError, ValueError):
            return None

    def _load_run_dir(self) -> None:
        """Before start(): take the run dir recorded by whoever started the server."""
        if self.pid is None:
            state = self._read_state()
            if state and isinstance(state.get("run_dir"), str):
                self.run_dir = Path(state["run_dir"])

    def _state_pid(self) -> int | None:
        state = self._read_state()
        if state and isinstance(state.get("pid"), int):
            return int(state["pid"])
        return None

    def _is_ours(self, pid: int) -> bool:
        return _pid_alive(pid) and str(self.data_dir) in _cmdline(pid)

    def _adopt_running(self) -> bool:
        state = self._read_state()
        if not state:
            return False
        pid = state.get("pid")
        if not isinstance(pid, int) or not self._is_ours(pid):
            return False
        if self._fixed_port and state.get("port") != self.port:
            return False
        if state.get("timezone") != self.timezone:
            return False
        self.pid, self.port = pid, int(state["port"])
        try:
            self._ping()
        except Exception:  # noqa: BLE001 - alive but not answering: replace it
            self._terminate(pid, 5)
            self.pid = None
            return False
        return True

    def _terminate(self, pid: int, timeout: float) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, self.stop_signal)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.pid == pid:
                if self._proc.poll() is not None:
                    break
            elif not _pid_alive(pid):
                break
            time.sleep(0.02)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        # The server runs in its own session, so its process group is its children.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)

    def _kill_leftovers(self) -> None:
        """Kill any process still holding this data directory (crashed earlier runs)."""
        for pid in self._leftover_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        for pid in self._leftover_pids():
            deadline = time.monotonic() + 5
            while _pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.02)

    def _leftover_pids(self) -> list[int]:
        needle = str(self.data_dir)
        me = os.getpid()
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) != me:
                pid = int(entry.name)
                cmd = _cmdline(pid)
                if needle in cmd and self._looks_like_server(cmd) and _pid_alive(pid):
                    pids.append(pid)
        return pids

    def _looks_like_server(self, cmdline: str) -> bool:
        raise NotImplementedError


# --------------------------------------------------------------------------- PostgreSQL


def _pg_bindir() -> Path:
    env = os.environ.get("CDC_PG_BINDIR")
    if env:
        return Path(env)
    candidates = sorted(
        (p for p in Path("/usr/lib/postgresql").glob("*/bin") if (p / "postgres").exists()),
        key=lambda p: float(p.parent.name) if p.parent.name.replace(".", "").isdigit() else 0,
    )
    preferred = Path("/usr/lib/postgresql/15/bin")
    if (preferred / "postgres").exists():
        return preferred
    if candidates:
        return candidates[-1]
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True).stdout
        if out.strip() and (Path(out.strip()) / "postgres").exists():
            return Path(out.strip())
    found = shutil.which("postgres")
    if found:
        return Path(os.path.realpath(found)).parent
    raise DevServerError("PostgreSQL server binaries not found (apt-get install postgresql)")


class PostgresServer(DevServer):
    """A private PostgreSQL cluster with ``wal_level=logical``; superuser ``postgres``."""

    kind = "postgres"
    scheme = "postgresql"
    superuser = "postgres"
    default_dbname = "postgres"
    stop_signal = signal.SIGINT  # "fast" shutdown
    parent_death_signal = signal.SIGQUIT  # "immediate" shutdown

    def __init__(
        self, basedir: Path | str, *, port: int | None = None, timezone: str | None = None
    ) -> None:
        super().__init__(basedir, port=port, timezone=timezone)
        self.bindir = _pg_bindir()

    def _initialized(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    def _initialize(self) -> None:
        if self.data_dir.exists():
            shutil.rmtree(self.data_dir)
        pwfile = self.run_dir / ".pwfile"
        pwfile.write_text(self.password + "\n")
        self._chown(pwfile)
        os.chmod(pwfile, 0o600)
        try:
            self._run_as_server_user(
                [
                    str(self.bindir / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    self.superuser,
                    f"--pwfile={pwfile}",
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    "--encoding=UTF8",
                    "--locale=C",
                    "--no-sync",
                    "--no-instructions",
                ],
                what="initdb",
            )
        finally:
            pwfile.unlink(missing_ok=True)
        (self.data_dir / "pg_hba.conf").write_text(
            "# written by cdc.devservers\n"
            "local   all          all                     trust\n"
            "local   replication  all                     trust\n"
            "host    all          all   127.0.0.1/32      scram-sha-256\n"
            "host    replication  all   127.0.0.1/32      scram-sha-256\n"
            "host    all          all   ::1/128           scram-sha-256\n"
            "host    replication  all   ::1/128           scram-sha-256\n"
        )
        self._chown(self.data_dir / "pg_hba.conf")

    def _settings(self) -> dict[str, str]:
        socket_dir = str(self.data_dir)
        if len(socket_dir) + len("/.s.PGSQL.65535") > _SOCKET_PATH_MAX:
            socket_dir = ""  # too long for a unix socket; TCP only
        settings = {
            "listen_addresses": self.host,
            "port": str(self.port),
            "unix_socket_directories": socket_dir,
            "wal_level": "logical",
            "max_replication_slots": "20",
            "max_wal_senders": "20",
            "max_connections": "200",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "logging_collector": "off",
            "log_min_messages": "warning",
            "log_line_prefix": "%m [%p] ",
        }
        if self.timezone:
            settings["timezone"] = self.timezone
        return settings

    def _command(self) -> list[str]:
        cmd = [str(self.bindir / "postgres"), "-D", str(self.data_dir)]
        for key, value in self._settings().items():
            cmd += ["-c", f"{key}={value}"]
        return cmd

    def _looks_like_server(self, cmdline: str) -> bool:
        return "postgres" in cmdline and " -D " in cmdline

    def connect(self, dbname: str | None = None, **kwargs: Any) -> Any:
        """A psycopg connection as the superuser (autocommit unless told otherwise)."""
        import psycopg

        kwargs.setdefault("autocommit", True)
        kwargs.setdefault("connect_timeout", 10)
        return psycopg.connect(
            host=self.host,
            port=self.port,
            user=self.superuser,
            password=self.password,
            dbname=dbname or self.default_dbname,
            **kwargs,
        )

    def _ping(self) -> None:
        with self.connect(connect_timeout=2) as conn:
            conn.execute("SELECT 1")

    def execute(
        self,
        sql: str,
        params: Sequence[Any] | dict[str, Any] | None = None,
        *,
        dbname: str | None = None,
    ) -> list[tuple[Any, ...]]:
        with self.connect(dbname) as conn, conn.cursor() as cur:
            cur.execute(sql, params)
            return list(cur.fetchall()) if cur.description else []

    def create_database(self, name: str) -> None:
        self.execute(f'CREATE DATABASE "{_quote_ident(name)}"')

    def drop_database(self, name: str) -> None:
        """Drop ``name`` even if sessions or logical replication slots still use it."""
        _quote_ident(name)
        deadline = time.monotonic() + 10
        while True:
            rows = self.execute(
                "SELECT slot_name, active_pid FROM pg_replication_slots WHERE database = %s",
                (name,),
            )
            if not rows:
                break
            for slot, active_pid in rows:
                try:
                    if active_pid:
                        self.execute("SELECT pg_terminate_backend(%s)", (active_pid,))
                    self.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
                except Exception:  # noqa: BLE001 - slot still busy; retry below
                    if time.monotonic() > deadline:
                        raise
            time.sleep(0.05)
        self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --------------------------------------------------------------------------- MariaDB


def _find_binary(
    *names: str, dirs: Sequence[str] = ("/usr/sbin", "/usr/bin", "/usr/libexec", "/usr/local/bin")
) -> str:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
        for d in dirs:
            if os.access(os.path.join(d, name), os.X_OK):
                return os.path.join(d, name)
    raise DevServerError(f"none of {', '.join(names)} found (apt-get install mariadb-server)")


_OFFSET_TZ = re.compile(r"^(SYSTEM|[+-]\d{1,2}:\d{2})$", re.IGNORECASE)


class MariaDBServer(DevServer):
    """A private MariaDB server with binlog ROW/FULL; superuser ``root``."""

    kind = "mariadb"
    scheme = "mysql"
    superuser = "root"
    default_dbname = ""
    stop_signal = signal.SIGTERM
    parent_death_signal = signal.SIGKILL

    def __init__(
        self, basedir: Path | str, *, port: int | None = None, timezone: str | None = None
    ) -> None:
        super().__init__(basedir, port=port, timezone=timezone)
        self.mariadbd = _find_binary("mariadbd", "mysqld")
        self.install_db = _find_binary("mariadb-install-db", "mysql_install_db")

    @property
    def socket_path(self) -> Path:
        path = self.run_dir / "mysqld.sock"
        if len(str(path)) > _SOCKET_PATH_MAX:
            digest = hashlib.sha1(str(path).encode()).hexdigest()[:12]
            path = Path(tempfile.gettempdir()) / f"cdc-mariadb-{digest}.sock"
        return path

    def _initialized(self) -> bool:
        return (self.data_dir / "mysql" / "global_priv.MAI").exists() or (
            self.data_dir / "mysql" / "user.frm"
        ).exists()

    def _initialize(self) -> None:
        if self.data_dir.exists():
            shutil.rmtree(self.data_dir)
        self.data_dir.mkdir(mode=0o750)
        self._chown(self.data_dir)
        pw = self.password.replace("\\", "\\\\").replace("'", "\\'")
        statements = [
            "FLUSH PRIVILEGES",  # bootstrap mode starts without the grant tables loaded
            "DELETE FROM mysql.global_priv"
            " WHERE User = '' OR Host NOT IN ('localhost', '127.0.0.1', '::1')",
            "DELETE FROM mysql.proxies_priv WHERE Host NOT IN ('localhost', '127.0.0.1', '::1')",
            "FLUSH PRIVILEGES",
        ]
        for host in ("localhost", "127.0.0.1", "::1"):
            statements += [
                f"CREATE OR REPLACE USER 'root'@'{host}' IDENTIFIED BY '{pw}'",
                f"GRANT ALL PRIVILEGES ON *.* TO 'root'@'{host}' WITH GRANT OPTION",
            ]
        statements.append("FLUSH PRIVILEGES")
        extra = self.run_dir / ".init.sql"
        extra.write_text("".join(f"{stmt};\n" for stmt in statements))
        self._chown(extra)
        try:
            self._run_as_server_user(
                [
                    self.install_db,
                    "--no-defaults",
                    f"--datadir={self.data_dir}",
                    "--auth-root-authentication-method=normal",
                    "--skip-test-db",
                    "--skip-name-resolve",
                    f"--extra-file={extra}",
                ],
                what="mariadb-install-db",
            )
        finally:
            extra.unlink(missing_ok=True)

    def _named_timezone(self) -> bool:
        return bool(self.timezone) and not _OFFSET_TZ.match(self.timezone or "")

    def _command(self) -> list[str]:
        sock = self.socket_path
        with contextlib.suppress(FileNotFoundError):
            sock.unlink()
        cmd = [
            self.mariadbd,
            "--no-defaults",
            f"--datadir={self.data_dir}",
            f"--port={self.port}",
            f"--bind-address={self.host}",
            f"--socket={sock}",
            f"--pid-file={self.run_dir / 'mariadbd.pid'}",
            "--log-bin=mysql-bin",
            "--binlog-format=ROW",
            "--binlog-row-image=FULL",
            "--binlog-row-metadata=FULL",
            "--server-id=1",
            "--skip-name-resolve",
            "--innodb-flush-log-at-trx-commit=2",
            "--sync-binlog=0",
            "--character-set-server=utf8mb4",
            "--collation-server=utf8mb4_general_ci",
            "--local-infile=1",
            "--max-connections=500",
            "--performance-schema=OFF",
            "--innodb-buffer-pool-size=64M",
            "--innodb-doublewrite=0",
            "--innodb-buffer-pool-dump-at-shutdown=0",
            "--innodb-buffer-pool-load-at-startup=0",
        ]
        if self.timezone and not self._named_timezone():
            cmd.append(f"--default-time-zone={self.timezone}")
        return cmd

    def _looks_like_server(self, cmdline: str) -> bool:
        return "mariadbd" in cmdline or "mysqld" in cmdline

    def _after_start(self) -> None:
        if self._named_timezone():
            assert self.timezone is not None
            if not self.execute(
                "SELECT 1 FROM mysql.time_zone_name WHERE Name = %s", (self.timezone,)
            ):
                self.load_time_zones(self.timezone)
            self.execute("SET GLOBAL time_zone = %s", (self.timezone,))

    def load_time_zones(self, *names: str) -> None:
        """Load zones from /usr/share/zoneinfo into the mysql.time_zone* tables.

        With ``names`` only those zones (fast); without, every zone (a few seconds).
        """
        zoneinfo = Path("/usr/share/zoneinfo")
        if not zoneinfo.is_dir():
            raise DevServerError("/usr/share/zoneinfo is missing (apt-get install tzdata)")
        tool = _find_binary("mariadb-tzinfo-to-sql", "mysql_tzinfo_to_sql")
        jobs: list[list[str]] = []
        for name in names:
            path = (zoneinfo / name).resolve()
            if not path.is_file() or zoneinfo.resolve() not in path.parents:
                raise DevServerError(f"unknown time zone {name!r} (not in {zoneinfo})")
            jobs.append([tool, str(path), name])
        if not names:
            jobs.append([tool, str(zoneinfo)])
        for cmd in jobs:
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise DevServerError(f"{shlex.join(cmd)} failed: {proc.stderr[-2000:]}")
            conn = self.connect("mysql")
            try:
                with conn.cursor() as cur:
                    cur.execute(proc.stdout)
                    while cur.nextset():
                        pass
            finally:
                conn.close()

    def connect(self, dbname: str | None = None, **kwargs: Any) -> Any:
        """A pymysql connection as root (autocommit, multi-statement enabled)."""
        import pymysql
        from pymysql.constants import CLIENT

        kwargs.setdefault("autocommit", True)
        kwargs.setdefault("connect_timeout", 10)
        kwargs.setdefault("charset", "utf8mb4")
        kwargs.setdefault("client_flag", CLIENT.MULTI_STATEMENTS)
        return pymysql.connect(
            host=self.host,
            port=self.port,
            user=self.superuser,
            password=self.password,
            database=dbname or None,
            **kwargs,
        )

    def _ping(self) -> None:
        conn = self.connect(connect_timeout=2, read_timeout=2, write_timeout=2)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
        finally:
            conn.close()

    def execute(
        self,
        sql: str,
        params: Sequence[Any] | dict[str, Any] | None = None,
        *,
        dbname: str | None = None,
    ) -> list[tuple[Any, ...]]:
        conn = self.connect(dbname)
        try:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                rows = list(cur.fetchall()) if cur.description else []
                while cur.nextset():
                    pass
                return rows
        finally:
            conn.close()

    def create_database(self, name: str) -> None:
        self.execute(f"CREATE DATABASE `{_quote_ident(name)}` CHARACTER SET utf8mb4")

    def drop_database(self, name: str) -> None:
        """Drop ``name``, first killing sessions that use it (they would block the drop)."""
        _quote_ident(name)
        for (conn_id,) in self.execute(
            "SELECT id FROM information_schema.processlist WHERE db = %s AND id <> CONNECTION_ID()",
            (name,),
        ):
            with contextlib.suppress(Exception):
                self.execute(f"KILL {int(conn_id)}")
        self.execute(f"DROP DATABASE IF EXISTS `{name}`")


# --------------------------------------------------------------------------- CLI


def _servers(directory: Path, args: argparse.Namespace | None = None) -> list[DevServer]:
    mysql_tz = getattr(args, "mysql_timezone", None)
    pg_tz = getattr(args, "pg_timezone", None)
    return [MariaDBServer(directory, timezone=mysql_tz), PostgresServer(directory, timezone=pg_tz)]


def _env_lines(mysql: DevServer, pg: DevServer) -> list[str]:
    return [
        f"export CDC_DEV_MYSQL_URL={shlex.quote(mysql.url(''))}",
        f"export CDC_DEV_PG_URL={shlex.quote(pg.url('postgres'))}",
    ]


def _cmd_up(args: argparse.Namespace) -> int:
    directory = Path(args.dir).absolute()
    directory.mkdir(parents=True, exist_ok=True)
    servers = _servers(directory, args)
    for server in servers:
        t0 = time.monotonic()
        adopted = server.is_running()
        server.start()
        verb = "running" if adopted else f"started in {time.monotonic() - t0:.1f}s"
        print(
            f"# {server.kind} {verb} on {server.host}:{server.port} (pid {server.pid})",
            file=sys.stderr,
        )
    mysql, pg = servers
    lines = _env_lines(mysql, pg)
    (directory / "env.sh").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    directory = Path(args.dir).absolute()
    for server in _servers(directory):
        was_running = server.is_running()
        server.stop()
        print(f"# {server.kind} {'stopped' if was_running else 'was not running'}", file=sys.stderr)
        if args.purge:
            server.purge()
    with contextlib.suppress(FileNotFoundError):
        (directory / "env.sh").unlink()
    return 0


def _cmd_env(args: argparse.Namespace) -> int:
    mysql, pg = _servers(Path(args.dir).absolute())
    for server in (mysql, pg):
        server._prepare()
        if not server._adopt_running():
            print(f"{server.kind} is not running; run `up` first", file=sys.stderr)
            return 1
    print("\n".join(_env_lines(mysql, pg)))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cdc.devservers",
        description="Throwaway MariaDB + PostgreSQL servers for tests and the demo.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start both servers (or reuse running ones); print exports")
    up.add_argument("--dir", required=True, help="directory for data, logs and pids")
    up.add_argument("--mysql-timezone", help="MariaDB default time zone (e.g. +00:00)")
    up.add_argument("--pg-timezone", help="PostgreSQL timezone setting (e.g. UTC)")
    up.set_defaults(func=_cmd_up)
    down = sub.add_parser("down", help="stop both servers")
    down.add_argument("--dir", required=True)
    down.add_argument("--purge", action="store_true", help="also delete data and logs")
    down.set_defaults(func=_cmd_down)
    env = sub.add_parser("env", help="print the export lines for running servers")
    env.add_argument("--dir", required=True)
    env.set_defaults(func=_cmd_env)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except DevServerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
