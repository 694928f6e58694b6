#!/usr/bin/env bash
# Install what is missing (scripts/setup.sh: Debian packages and the project venv),
# then lint, type-check and run the tests with the venv's Python.
#   scripts/test.sh [pytest args...]     e.g. scripts/test.sh tests/test_devservers.py -x
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${CDC_VENV:-$ROOT/.venv}"

bash scripts/setup.sh
# The tests run the CLI as `sys.executable -m cdc`: this venv's cdc, never another on PATH.
PY="$VENV/bin/python"

failed=()
echo "[test] ruff check cdc tests bench"
"$PY" -m ruff check cdc tests bench || failed+=(ruff)
echo "[test] mypy cdc"
"$PY" -m mypy cdc || failed+=(mypy)
echo "[test] pytest -q $*"
"$PY" -m pytest -q "$@" || failed+=(pytest)

if [ "${#failed[@]}" -gt 0 ]; then
    echo "[test] FAILED: ${failed[*]}"
    exit 1
fi
echo "[test] all passed"
