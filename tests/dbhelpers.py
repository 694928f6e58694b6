"""Handles on the throwaway databases the test fixtures create (see conftest.py)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from cdc.devservers import DevServer, MariaDBServer, PostgresServer

Params = Sequence[Any] | dict[str, Any] | None


def unique_db_name(prefix: str = "t") -> str:
    """``t_<10 hex digits>``: valid unquoted in both MariaDB and PostgreSQL."""
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


class ScratchDatabase:
    """A fresh database on a dev server, reached as the superuser.

    ``execute`` and ``query`` share one lazily opened autocommit connection (so
    session settings such as ``SET time_zone`` persist between calls); several
    ``;``-separated statements are allowed when ``params`` is None. Placeholders
    are ``%s`` on both servers.
    """

    kind = ""  # "mysql" or "postgresql"

    def __init__(self, server: DevServer, name: str) -> None:
        self.server = server
        self.name = name
        self.url = server.url(name)
        self._conn: Any = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} on port {self.server.port}>"

    def connect(self, **kwargs: Any) -> Any:
        """A new superuser connection to this database (autocommit); caller closes it."""
        return self.server.connect(self.name, **kwargs)

    @property
    def conn(self) -> Any:
        """The shared connection used by ``execute`` / ``query``."""
        if self._conn is None:
            self._conn = self.connect()
        return self._conn

    def execute(self, sql: str, params: Params = None) -> int:
        """Run ``sql``; the number of rows affected (as the driver reports it)."""
        with self.conn.cursor() as cur:
            cur.execute(sql, params)
            count = int(cur.rowcount)
            self._drain(cur)
            return count

    def query(self, sql: str, params: Params = None) -> list[tuple[Any, ...]]:
        """Run ``sql``; the rows of its (first) result set as tuples."""
        with self.conn.cursor() as cur:
            cur.execute(sql, params)
            rows = [tuple(r) for r in cur.fetchall()] if cur.description else []
            self._drain(cur)
            return rows

    def scalar(self, sql: str, params: Params = None) -> Any:
        """The first column of the first row (None when there is no row)."""
        rows = self.query(sql, params)
        return rows[0][0] if rows else None

    def _drain(self, cur: Any) -> None:
        pass

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None

    def drop(self) -> None:
        self.close()
        self.server.drop_database(self.name)


class MySQLDatabase(ScratchDatabase):
    kind = "mysql"
    server: MariaDBServer

    def _drain(self, cur: Any) -> None:
        while cur.nextset():  # further result sets of a multi-statement string
            pass


class PostgresDatabase(ScratchDatabase):
    kind = "postgresql"
    server: PostgresServer


def create_scratch_database(server: DevServer, prefix: str = "t") -> ScratchDatabase:
    name = unique_db_name(prefix)
    server.create_database(name)
    if isinstance(server, MariaDBServer):
        return MySQLDatabase(server, name)
    return PostgresDatabase(server, name)
