#!/usr/bin/env bash
# Install what the test suite, benchmarks and demo need on Debian 12 (run as root):
# the Debian packages, then a project-local venv (.venv) holding `pip install -e '.[dev]'`.
# Idempotent: installs only what is missing. The database servers are NOT used as
# system services; tests start throwaway ones (cdc/devservers.py). Nothing goes
# into the machine's Python (Debian's is "externally managed", PEP 668).
#   PYTHON=python3      the interpreter the venv is made from (>= 3.11)
#   CDC_VENV=.venv      where the venv goes; scripts/test.sh and demo.sh use the same
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
VENV="${CDC_VENV:-$ROOT/.venv}"

log() { printf '[setup] %s\n' "$*"; }
have() { command -v "$1" >/dev/null 2>&1; }

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    if have sudo; then SUDO=(sudo); else log "warning: not root and no sudo; cannot install OS packages"; fi
fi

# ---- OS packages -------------------------------------------------------------
pg_server_present() {
    local d
    for d in /usr/lib/postgresql/*/bin; do
        [ -x "$d/postgres" ] && [ -x "$d/initdb" ] && return 0
    done
    return 1
}

missing=()
{ [ -x /usr/sbin/mariadbd ] || have mariadbd; } && have mariadb-install-db || missing+=(mariadb-server)
{ have mariadb && { have mariadb-tzinfo-to-sql || have mysql_tzinfo_to_sql; }; } || missing+=(mariadb-client)
pg_server_present || missing+=(postgresql)
have psql || missing+=(postgresql-client)
have pgloader || missing+=(pgloader)
have systemd-analyze || missing+=(systemd)
[ -d /usr/share/zoneinfo ] || missing+=(tzdata)
have useradd || missing+=(passwd)
# Debian's own python3 too: tests/test_install.py makes the service venv from it.
{ have "$PYTHON" && [ -x /usr/bin/python3 ]; } || missing+=(python3 python3-venv)
# venv's pip bootstrap is a separate Debian package, for the interpreter the venv
# is made from and for Debian's own (deploy/install-service.sh, tests/test_install.py).
if have "$PYTHON" && ! "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1; then missing+=(python3-venv)
elif [ -x /usr/bin/python3 ] && ! /usr/bin/python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then missing+=(python3-venv); fi

if [ "${#missing[@]}" -gt 0 ]; then
    log "installing OS packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    "${SUDO[@]}" apt-get update -qq
    "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
    log "OS packages: all present"
fi

"$PYTHON" - <<'PY'
import sys
if sys.version_info < (3, 11):
    sys.exit(f"[setup] need Python >= 3.11, {sys.executable} is {sys.version.split()[0]}")
PY

# ---- the venv, and the package in it with the dev extra --------------------------
if [ -e "$VENV" ] && ! "$VENV/bin/python" -c 'import sys; assert sys.version_info >= (3, 11); import pip' >/dev/null 2>&1; then
    # Half made (python3-venv was missing), or its interpreter is gone or too old: start again.
    if [ ! -f "$VENV/pyvenv.cfg" ]; then
        log "error: $VENV exists and is not a venv; move it away or set CDC_VENV"
        exit 1
    fi
    log "recreating the broken venv $VENV"
    rm -rf "$VENV"
fi
if [ ! -x "$VENV/bin/python" ]; then
    log "creating the venv $VENV ($("$PYTHON" -c 'import sys; print(sys.executable)'))"
    "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
stamp="$VENV/.cdc-setup-stamp"
want="$(printf '%s|%s' "$ROOT" "$(sha1sum pyproject.toml | cut -c1-40)")"
installed_here() {
    # cdc importable from this checkout, and the dev tools present.  Run from /:
    # here the checkout itself is on sys.path and would hide an install that
    # points at another clone.
    (cd / && "$PY" - "$ROOT") <<'PY' >/dev/null 2>&1
import importlib.util, os, sys
spec = importlib.util.find_spec("cdc")
assert spec and spec.origin and os.path.realpath(spec.origin).startswith(os.path.realpath(sys.argv[1]) + os.sep)
for mod in ("pytest", "ruff", "mypy", "psycopg", "pymysql", "pymysqlreplication", "sqlglot"):
    assert importlib.util.find_spec(mod), mod
from importlib.metadata import version
version("cdc")
PY
}
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && installed_here; then
    log "python package: cdc[dev] already installed (editable) in $VENV"
else
    log "pip install -e '.[dev]' into $VENV"
    "$PY" -m pip install --quiet --disable-pip-version-check -e "$ROOT[dev]"
    printf '%s\n' "$want" >"$stamp"
fi
log "done: $PY (cdc: $VENV/bin/cdc)"
