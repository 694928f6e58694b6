#!/usr/bin/env bash
# Install what is missing, then run the demo pipeline on throwaway local servers.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
exec "${PYTHON:-python3}" scripts/demo.py "$@"
