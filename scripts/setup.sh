#!/usr/bin/env bash
# Install what the test suite, benchmarks and demo need on Debian 12 (run as root).
# Idempotent: installs only what is missing. The database servers are NOT used as
# system services; tests start throwaway ones (cdc/devservers.py).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"

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
have "$PYTHON" || missing+=(python3)
if have "$PYTHON" && ! "$PYTHON" -m pip --version >/dev/null 2>&1; then missing+=(python3-pip); fi

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

# ---- the package itself, with the dev extra --------------------------------------
stamp_dir="${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/cdc-setup"
pyexe="$("$PYTHON" -c 'import sys; print(sys.executable)')"
stamp="$stamp_dir/$(printf '%s|%s' "$ROOT" "$pyexe" | sha1sum | cut -c1-16)"
want="$(sha1sum pyproject.toml | cut -c1-40)"
installed_here() {
    # cdc importable from this checkout, and the dev tools present.  Run from /:
    # here the checkout itself is on sys.path and would hide an install that
    # points at another clone (the `cdc` command would then fail elsewhere).
    (cd / && "$PYTHON" - "$ROOT") <<'PY' >/dev/null 2>&1
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
    log "python package: cdc[dev] already installed (editable)"
else
    log "pip install -e '.[dev]'"
    pip_args=(install --quiet --disable-pip-version-check --root-user-action=ignore -e "$ROOT[dev]")
    # Debian's own python3 is "externally managed" (PEP 668); this is a throwaway
    # test machine, so install into it anyway (as root: /usr/local/lib/python3.11).
    if "$PYTHON" -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")))' \
        && [ -z "${VIRTUAL_ENV:-}" ]; then
        pip_args+=(--break-system-packages)
    fi
    "$PYTHON" -m pip "${pip_args[@]}"
    mkdir -p "$stamp_dir" && printf '%s\n' "$want" >"$stamp"
fi
log "done"
