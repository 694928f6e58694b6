"""Versioned bookkeeping schema in the target (files under ``sql/bookkeeping``).

Migrations are numbered SQL files applied in order; the version reached is
stored in the target.  A target whose version is newer than this program knows
is refused: an old binary must not write into a schema it does not understand.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from cdc.errors import TerminalError

# cdc/sql is a symlink to the checkout's sql/ that a wheel build follows, so an
# installed cdc (a venv under /opt/cdc) carries its migrations inside the package.
SQL_DIR = Path(__file__).resolve().parent / "sql" / "bookkeeping"


def migrations(kind: str) -> list[tuple[int, Path]]:
    folder = SQL_DIR / ("postgresql" if kind == "postgresql" else "mysql")
    out = []
    for f in sorted(folder.glob("*.sql")):
        m = re.match(r"(\d+)_", f.name)
        if m:
            out.append((int(m.group(1)), f))
    return out


def latest_version(kind: str) -> int:
    ms = migrations(kind)
    return ms[-1][0] if ms else 0


def split_statements(text: str) -> list[str]:
    """Split a migration file on ``;`` at line ends (our files keep it simple)."""
    lines = [ln for ln in text.splitlines() if not ln.strip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";\n") if s.strip().rstrip(";")]


class SchemaTooNew(TerminalError):
    pass


def check_version(found: int, kind: str) -> None:
    known = latest_version(kind)
    if found > known:
        raise SchemaTooNew(
            f"the target's cdc bookkeeping schema is version {found}, newer than this cdc "
            f"knows ({known})", fix="upgrade cdc on this host to the version that wrote it")


class NotSetUp(TerminalError):
    """The target holds no cdc bookkeeping at all: `cdc setup` never ran there."""


def require_setup(target: Any, pipeline: str, config_path: object) -> None:
    """Commands that only read bookkeeping (lag, status, dlq) would otherwise
    show the driver's "relation does not exist", three lines of it on
    PostgreSQL; before `cdc setup` the one useful thing to say is to run it."""
    if target.schema_version() == 0:
        raise NotSetUp(f"pipeline {pipeline} is not set up on the target (no cdc bookkeeping); "
                       f"run `cdc setup -c {config_path}`")
