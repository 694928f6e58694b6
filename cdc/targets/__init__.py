"""Targets: apply batches through compiled rules, with the offset, in one transaction."""

from __future__ import annotations

from typing import Any

from cdc.config import Config


def open_target(config: Config) -> Any:
    if config.target.kind == "postgresql":
        from cdc.targets.postgres import PostgresTarget

        return PostgresTarget(config)
    from cdc.targets.mysql import MySQLTarget

    return MySQLTarget(config)
