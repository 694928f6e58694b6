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
    from psycopg import postgres

    from cdc.sources.postgres import PostgresSource
    from cdc.typemap import PG_TEXT_FOR_MYSQL

    to_pg = config.target.kind == "postgresql"
    return PostgresSource(config.source.libpq(), slot=config.slot,
                          publication=config.publication, tables=tables,
                          heartbeat_seconds=config.heartbeat_seconds, text_values=to_pg,
                          copy_types=None if to_pg else frozenset(
                              postgres.types[t].oid for t in PG_TEXT_FOR_MYSQL))
