"""Targets: apply batches through compiled rules, with the offset, in one transaction."""

from __future__ import annotations

from cdc.config import Config


def open_target(config: Config):  # type: ignore[no-untyped-def]
    if config.target.kind == "postgresql":
        from cdc.targets.postgres import PostgresTarget

        return PostgresTarget(config)
    from cdc.targets.mysql import MySQLTarget  # type: ignore[import-not-found,unused-ignore]

    return MySQLTarget(config)
