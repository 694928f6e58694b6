#!/usr/bin/env bash
# Install what is missing, then lint, type-check and run the tests.
#   scripts/test.sh [pytest args...]     e.g. scripts/test.sh tests/test_devservers.py -x
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"

bash scripts/setup.sh

failed=()
echo "[test] ruff check cdc tests bench"
"$PYTHON" -m ruff check cdc tests bench || failed+=(ruff)
echo "[test] mypy cdc"
"$PYTHON" -m mypy cdc || failed+=(mypy)
echo "[test] pytest -q $*"
"$PYTHON" -m pytest -q "$@" || failed+=(pytest)

if [ "${#failed[@]}" -gt 0 ]; then
    echo "[test] FAILED: ${failed[*]}"
    exit 1
fi
echo "[test] all passed"
