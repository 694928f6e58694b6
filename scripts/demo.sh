#!/usr/bin/env bash
# Install what is missing (scripts/setup.sh: Debian packages and the project venv),
# then run the demo pipeline on throwaway local servers with the venv's Python.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
exec "${CDC_VENV:-$ROOT/.venv}/bin/python" scripts/demo.py "$@"
