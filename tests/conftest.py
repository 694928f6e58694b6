"""Shared fixtures: one throwaway MariaDB and one PostgreSQL per test session.

Fixtures
--------
``mariadb_server`` / ``pg_server`` (session)
    ``cdc.devservers.MariaDBServer`` / ``PostgresServer``, started on free loopback
    ports. ``.url(db)``, ``.execute(sql, params, dbname=...)``, ``.connect(db)``,
    ``.create_database(name)``, ``.drop_database(name)``, ``.host``, ``.port``.
``mysql_db`` / ``pg_db`` (function)
    A fresh database ``t_<hex>`` on that server, dropped afterwards:
    ``.name``, ``.url`` (superuser), ``.execute(sql, params=None) -> rowcount``,
    ``.query(sql, params=None) -> list[tuple]``, ``.scalar(sql, params=None)``,
    ``.connect()`` (new autocommit connection), ``.server``.
``make_mysql_db`` / ``make_pg_db`` (function)
    Factories for more such databases in one test (all dropped afterwards).

A server that cannot start fails the tests that need it, with its log; database
tests are never skipped. ``CDC_TEST_KEEP_SERVERS=1`` keeps the servers (in
/tmp/cdc-test-servers) running after the session and reuses them next time;
stop them with ``python -m cdc.devservers down --dir /tmp/cdc-test-servers``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from dbhelpers import MySQLDatabase, PostgresDatabase, ScratchDatabase, create_scratch_database

from cdc.devservers import DevServer, MariaDBServer, PostgresServer

S = TypeVar("S", bound=DevServer)

KEEP_SERVERS = os.environ.get("CDC_TEST_KEEP_SERVERS", "") not in ("", "0", "false", "no")
KEPT_SERVERS_DIR = Path(tempfile.gettempdir()) / "cdc-test-servers"


def pytest_addoption(parser: pytest.Parser) -> None:
    # tests/test_differential.py: how many seeded workloads, which seeds, which op families.
    group = parser.getgroup("differential", "randomized differential test")
    group.addoption("--seeds", type=int, default=None, metavar="N",
                    help="run seeds 1..N per direction (default: the fixed CI seeds)")
    group.addoption("--seed", type=int, action="append", default=[], metavar="S",
                    help="run this seed (repeatable), e.g. to replay a failure")
    group.addoption("--families", default=None, metavar="F,F",
                    help="op families to enable in every direction, or 'all' "
                         "(default: the CI list per direction in test_differential.py)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: a long-running test (deselect with -m 'not slow')")


@pytest.fixture(scope="session")
def servers_dir() -> Iterator[Path]:
    """Base directory for the session's servers (reachable by the server OS user)."""
    if KEEP_SERVERS:
        KEPT_SERVERS_DIR.mkdir(mode=0o755, exist_ok=True)
        yield KEPT_SERVERS_DIR
        return
    path = Path(tempfile.mkdtemp(prefix="cdc-test-servers-"))
    path.chmod(0o755)  # the servers run as an unprivileged user when we are root
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _run_server(server: S) -> Iterator[S]:
    # Tied to this process unless kept: a killed test run leaves no servers behind.
    server.start(die_with_parent=not KEEP_SERVERS)
    try:
        yield server
    finally:
        if KEEP_SERVERS:
            print(f"\nkeeping {server.kind} at {server.url()} ({server.basedir})")
        else:
            server.stop()


@pytest.fixture(scope="session")
def mariadb_server(servers_dir: Path) -> Iterator[MariaDBServer]:
    yield from _run_server(MariaDBServer(servers_dir))


@pytest.fixture(scope="session")
def pg_server(servers_dir: Path) -> Iterator[PostgresServer]:
    yield from _run_server(PostgresServer(servers_dir))


def _factory(server: DevServer) -> Iterator[Callable[[], ScratchDatabase]]:
    made: list[ScratchDatabase] = []

    def make() -> ScratchDatabase:
        db = create_scratch_database(server)
        made.append(db)
        return db

    yield make
    errors = []
    for db in reversed(made):
        try:
            db.drop()
        except Exception as e:  # drop the others anyway
            errors.append(e)
    if errors:
        raise errors[0]


@pytest.fixture
def make_mysql_db(mariadb_server: MariaDBServer) -> Iterator[Callable[[], ScratchDatabase]]:
    yield from _factory(mariadb_server)


@pytest.fixture
def make_pg_db(pg_server: PostgresServer) -> Iterator[Callable[[], ScratchDatabase]]:
    yield from _factory(pg_server)


@pytest.fixture
def mysql_db(make_mysql_db: Callable[[], ScratchDatabase]) -> MySQLDatabase:
    db = make_mysql_db()
    assert isinstance(db, MySQLDatabase)
    return db


@pytest.fixture
def pg_db(make_pg_db: Callable[[], ScratchDatabase]) -> PostgresDatabase:
    db = make_pg_db()
    assert isinstance(db, PostgresDatabase)
    return db
