#!/usr/bin/env bash
# Install cdc as a systemd service on Debian 12 (as root, from a clone of the repository):
#   deploy/install-service.sh              # venv /opt/cdc/venv, /etc/cdc, user cdc, the unit
#   deploy/install-service.sh --root DIR   # the same, every path under DIR (tests, staging)
# Then per pipeline (docs/operations.md): /etc/cdc/NAME.yaml, NAME.env, rules/NAME/, and
#   cdc-env NAME check ; cdc-env NAME setup ; systemctl enable --now cdc@NAME
# Idempotent; run it again to upgrade (it reinstalls the package into the same venv).
#
# cdc goes into its own venv, never into the system Python (Debian's python3 is
# "externally managed", PEP 668).  Paths, each overridable from the environment:
#   PREFIX=/opt/cdc            the venv ($PREFIX/venv) and the cdc-env wrapper ($PREFIX/bin)
#   CONFDIR=/etc/cdc           NAME.yaml, NAME.env, NAME.monitor.env, rules/
#   UNITDIR=/etc/systemd/system
#   DOCDIR=/usr/share/doc/cdc
#   BINDIR=/usr/local/bin      symlinks `cdc` and `cdc-env` for root's PATH
#   CDC_USER=cdc               runs the service; created as a system user when missing
#                              (with --root too: give an existing user to avoid that)
#   PYTHON=python3             the interpreter the venv is made from (>= 3.11)
# The unit and cdc-env are written with the paths above, so an install under
# --root DIR is complete and usable where it lies (its unit verifies, its cdc runs).
set -euo pipefail
SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ "$(id -u)" -ne 0 ]; then
    echo "install-service.sh: run as root (it chowns /etc/cdc to root:cdc and may add a user)" >&2
    exit 2
fi

root=""
while [ $# -gt 0 ]; do
    case "$1" in
        --root) root="${2:?--root needs a directory}"; shift 2 ;;
        --root=*) root="${1#--root=}"; shift ;;
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        *) echo "install-service.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
    esac
done
if [ -n "$root" ]; then
    mkdir -p "$root"
    root="$(cd "$root" && pwd)"
fi
PREFIX="${PREFIX:-$root/opt/cdc}"
CONFDIR="${CONFDIR:-$root/etc/cdc}"
UNITDIR="${UNITDIR:-$root/etc/systemd/system}"
DOCDIR="${DOCDIR:-$root/usr/share/doc/cdc}"
BINDIR="${BINDIR:-$root/usr/local/bin}"
CDC_USER="${CDC_USER:-cdc}"
PYTHON="${PYTHON:-python3}"
VENV="$PREFIX/venv"

log() { printf '[install-service] %s\n' "$*"; }
for p in "$PREFIX" "$CONFDIR" "$UNITDIR" "$DOCDIR" "$BINDIR"; do
    case "$p" in
        /*) ;;
        *) echo "install-service.sh: $p: paths must be absolute" >&2; exit 2 ;;
    esac
    # They are pasted into the unit and a shell script: keep them plain.
    case "$p" in
        *[!A-Za-z0-9/._+-]*) echo "install-service.sh: $p: only letters, digits and /._+- please" >&2; exit 2 ;;
    esac
done

case "$CDC_USER" in
    ""|[!a-z_]*|*[!a-z0-9_-]*) echo "install-service.sh: CDC_USER=$CDC_USER: not a plain user name" >&2; exit 2 ;;
esac

# ---- the service user --------------------------------------------------------
if ! id "$CDC_USER" >/dev/null 2>&1; then
    log "adding system user $CDC_USER"
    useradd --system --home-dir /var/lib/cdc --create-home --shell /usr/sbin/nologin "$CDC_USER"
fi
CDC_GROUP="$(id -gn "$CDC_USER")"

# ---- the venv ----------------------------------------------------------------
apt_install() {
    log "installing $*"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
command -v "$PYTHON" >/dev/null 2>&1 || apt_install python3 python3-venv
"$PYTHON" - <<'PY'
import sys
if sys.version_info < (3, 11):
    sys.exit(f"install-service.sh: need Python >= 3.11, {sys.executable} is {sys.version.split()[0]}")
PY
# Debian ships venv's pip bootstrap separately.
"$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1 || apt_install python3-venv
if [ -e "$VENV" ] && ! "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then
    # Half made (python3-venv was missing) or its interpreter is gone: start again.
    if [ ! -f "$VENV/pyvenv.cfg" ]; then
        echo "install-service.sh: $VENV exists and is not a venv; move it away" >&2
        exit 2
    fi
    log "removing the broken venv $VENV"
    rm -rf "$VENV"
fi
if [ ! -x "$VENV/bin/python" ]; then
    log "creating the venv $VENV"
    install -d -m 0755 "$PREFIX"
    "$PYTHON" -m venv "$VENV"
fi
# From a copy of the sources: a build writes build/ and *.egg-info/, which do
# not belong in the clone (it may be read-only, or someone else's).
build="$(mktemp -d)"
trap 'rm -rf "$build"' EXIT
mkdir "$build/src"
tar -C "$SRC" --exclude=./.git --exclude=./.venv --exclude=./build --exclude='*.egg-info' \
    --exclude=__pycache__ --exclude=./.cdc-demo -cf - . | tar -C "$build/src" -xf -
log "installing cdc into $VENV"
pip=("$VENV/bin/python" -m pip --quiet --disable-pip-version-check)
"${pip[@]}" wheel --no-deps --wheel-dir "$build/dist" "$build/src"
wheel=("$build"/dist/cdc-*.whl)
"${pip[@]}" install "${wheel[0]}"
# Again with --force-reinstall --no-deps: an upgrade that kept the version
# number still replaces the code; the dependencies already there are kept.
"${pip[@]}" install --force-reinstall --no-deps "${wheel[0]}"
"$VENV/bin/cdc" --help >/dev/null

# ---- cdc-env: manual commands with the pipeline's environment -----------------
install -d -m 0755 "$PREFIX/bin" "$BINDIR"
cat >"$PREFIX/bin/cdc-env.new" <<EOF
#!/bin/sh
# cdc-env [--monitor] NAME COMMAND [ARGS...]: run \`cdc COMMAND ARGS\` for pipeline NAME
# the way its service runs: config $CONFDIR/NAME.yaml (CDC_CONFIG), the variables of
# $CONFDIR/NAME.env loaded, and as root dropped to user $CDC_USER (setpriv; no sudo needed).
# --monitor loads $CONFDIR/NAME.monitor.env instead (read-only database users, for
# \`cdc lag\`/\`cdc status\` from a monitoring agent; it runs as whoever calls it).
# Written by deploy/install-service.sh.
set -eu
env_suffix=env
if [ "\${1:-}" = --monitor ]; then env_suffix=monitor.env; shift; fi
if [ \$# -lt 2 ]; then
    echo "usage: cdc-env [--monitor] NAME COMMAND [ARGS...]   (pipelines: $CONFDIR/NAME.yaml)" >&2
    exit 2
fi
name=\$1; shift
case "\$name" in
    */*|.*) echo "cdc-env: \$name: a pipeline name, not a path" >&2; exit 2 ;;
esac
config="$CONFDIR/\$name.yaml"
envfile="$CONFDIR/\$name.\$env_suffix"
if [ ! -r "\$envfile" ]; then
    echo "cdc-env: cannot read \$envfile (run as root, or for --monitor as a member of group $CDC_GROUP)" >&2
    exit 2
fi
# NAME='value' lines, read the same way systemd's EnvironmentFile= reads them.
set -a
. "\$envfile"
set +a
CDC_CONFIG=\$config
export CDC_CONFIG
if [ "\$(id -u)" -eq 0 ] && [ "\$env_suffix" = env ] && [ "$CDC_USER" != root ]; then
    # runuser -u $CDC_USER would do, but stays behind as cdc's parent: setpriv (util-linux
    # too) execs cdc in place, so signals reach cdc and its exit code is the command's,
    # as under systemd (SIGTERM to \`cdc-env NAME run\` finishes the batch and exits 0).
    HOME=\$(getent passwd "$CDC_USER" | cut -d: -f6)
    USER=$CDC_USER
    LOGNAME=$CDC_USER
    export HOME USER LOGNAME
    exec setpriv --reuid="$CDC_USER" --regid="$CDC_GROUP" --init-groups -- "$VENV/bin/cdc" "\$@"
fi
exec "$VENV/bin/cdc" "\$@"
EOF
chmod 0755 "$PREFIX/bin/cdc-env.new"
mv -f "$PREFIX/bin/cdc-env.new" "$PREFIX/bin/cdc-env"
ln -sfn "$VENV/bin/cdc" "$BINDIR/cdc"
ln -sfn "$PREFIX/bin/cdc-env" "$BINDIR/cdc-env"

# ---- configuration directory, unit, docs -------------------------------------
install -d -m 0750 -o root -g "$CDC_GROUP" "$CONFDIR"
install -d -m 0750 -o root -g "$CDC_GROUP" "$CONFDIR/rules"
install -d -m 0755 "$UNITDIR" "$DOCDIR"
sed -e "s|/opt/cdc/venv|$VENV|g" \
    -e "s|/etc/cdc|$CONFDIR|g" \
    -e "s|/usr/share/doc/cdc|$DOCDIR|g" \
    -e "s|^User=cdc$|User=$CDC_USER|" \
    -e "s|^Group=cdc$|Group=$CDC_GROUP|" \
    "$SRC/deploy/systemd/cdc@.service" >"$UNITDIR/cdc@.service.new"
chmod 0644 "$UNITDIR/cdc@.service.new"
mv -f "$UNITDIR/cdc@.service.new" "$UNITDIR/cdc@.service"
install -m 0644 "$SRC/docs/operations.md" "$DOCDIR/operations.md"
install -d -m 0755 "$DOCDIR/example"
install -m 0644 "$SRC"/deploy/example/* "$DOCDIR/example/"

if [ -z "$root" ] && command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
fi
log "installed: $VENV/bin/cdc, $PREFIX/bin/cdc-env, $UNITDIR/cdc@.service"
log "next: a pipeline in $CONFDIR/NAME.yaml + NAME.env (examples in $DOCDIR/example), then"
log "      cdc-env NAME check; cdc-env NAME setup; systemctl enable --now cdc@NAME"
