"""Sources: read a database's change log and yield ``cdc.events.Transaction``."""

from __future__ import annotations

from typing import Any

from cdc.config import Config, derived_server_id


def open_source(config: Config, tables: list[str]) -> Any:
    if config.source.kind == "mysql":
        from cdc.sources.mysql import MySQLSource

        return MySQLSource(config.source, server_id=config.server_id or derived_server_id(
            config.pipeline), tables=tables, heartbeat_seconds=config.heartbeat_seconds,
            connect_timeout=config.connect_timeout, zero_dates=config.zero_dates)
    from cdc.sources.postgres import PostgresSource

    return PostgresSource(config.source.libpq(), slot=config.slot,
                          publication=config.publication, tables=tables,
                          heartbeat_seconds=config.heartbeat_seconds,
                          text_values=config.target.kind == "postgresql")
