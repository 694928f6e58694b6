"""The throwaway servers the rest of the suite relies on (cdc.devservers + fixtures)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pymysql
import pytest
from dbhelpers import ScratchDatabase

from cdc.devservers import MariaDBServer, PostgresServer, _pid_alive

REPO = Path(__file__).resolve().parents[1]


def _mysql_connect(url: str) -> Any:
    u = urlsplit(url)
    return pymysql.connect(
        host=u.hostname,
        port=u.port or 3306,
        user=u.username,
        password=u.password or "",
        database=u.path.lstrip("/") or None,
        autocommit=True,
    )


def test_mariadb_binlog_settings(mariadb_server: MariaDBServer) -> None:
    rows = mariadb_server.execute(
        "SELECT @@log_bin, @@binlog_format, @@binlog_row_image, @@binlog_row_metadata,"
        " @@server_id, @@character_set_server, @@bind_address"
    )
    assert rows == [(1, "ROW", "FULL", "FULL", 1, "utf8mb4", "127.0.0.1")]
    assert mariadb_server.host == "127.0.0.1" and mariadb_server.port > 0
    # The superuser URL works from an ordinary client over TCP, with its password.
    conn = _mysql_connect(mariadb_server.url(""))
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW VARIABLES LIKE 'log_bin'")
            assert cur.fetchall() == (("log_bin", "ON"),)
            cur.execute("SHOW MASTER STATUS")
            status = cur.fetchone()
            assert status is not None and status[0].startswith("mysql-bin.")
    finally:
        conn.close()
    bad = mariadb_server.url("", password="wrong")
    with pytest.raises(pymysql.err.OperationalError):
        _mysql_connect(bad)


def test_postgres_logical_settings(pg_server: PostgresServer) -> None:
    settings = dict(
        pg_server.execute(
            "SELECT name, setting FROM pg_settings WHERE name IN"
            " ('wal_level', 'max_replication_slots', 'max_wal_senders', 'fsync', 'listen_addresses')"
        )
    )
    assert settings == {
        "wal_level": "logical",
        "max_replication_slots": "20",
        "max_wal_senders": "20",
        "fsync": "off",
        "listen_addresses": "127.0.0.1",
    }
    with psycopg.connect(pg_server.url("postgres")) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("postgres",)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(pg_server.url("postgres", password="wrong"), connect_timeout=5)


def test_pg_replication_connection_and_slot_cleanup(
    pg_server: PostgresServer, pg_db: ScratchDatabase
) -> None:
    # A walsender connection over TCP with the password (pg_hba "host replication").
    with psycopg.connect(pg_db.url, replication="database", autocommit=True) as conn:
        conn.execute("IDENTIFY_SYSTEM")
    pg_db.execute("CREATE TABLE t (id int PRIMARY KEY)")
    pg_db.execute("SELECT pg_create_logical_replication_slot('t_slot', 'pgoutput')")
    # drop_database copes with slots left on the database (a plain DROP would fail).
    pg_db.drop()
    assert (
        pg_server.execute("SELECT slot_name FROM pg_replication_slots WHERE slot_name = 't_slot'")
        == []
    )
    assert not pg_server.execute("SELECT 1 FROM pg_database WHERE datname = %s", (pg_db.name,))
    pg_server.create_database(pg_db.name)  # so the fixture's teardown has something to drop


def test_fresh_databases_are_isolated(
    mysql_db: ScratchDatabase,
    pg_db: ScratchDatabase,
    make_mysql_db: Callable[[], ScratchDatabase],
    make_pg_db: Callable[[], ScratchDatabase],
) -> None:
    for db, make in ((mysql_db, make_mysql_db), (pg_db, make_pg_db)):
        other = make()
        assert other.name != db.name and other.name.startswith("t_")
        assert db.url.endswith("/" + db.name)
        db.execute(
            "CREATE TABLE t (id int PRIMARY KEY, v varchar(10));"
            " INSERT INTO t VALUES (1, 'a'), (2, 'b')"
        )
        assert db.execute("UPDATE t SET v = %s WHERE id = %s", ("z", 2)) == 1
        assert db.query("SELECT id, v FROM t ORDER BY id") == [(1, "a"), (2, "z")]
        assert db.scalar("SELECT count(*) FROM t") == 2
        other.execute("CREATE TABLE t (id int PRIMARY KEY)")
        assert other.query("SELECT count(*) FROM t") == [(0,)]


def test_mysql_db_url_and_drop(
    mariadb_server: MariaDBServer, make_mysql_db: Callable[[], ScratchDatabase]
) -> None:
    db = make_mysql_db()
    conn = _mysql_connect(db.url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT DATABASE()")
            assert cur.fetchone() == (db.name,)
        # drop_database does not hang on sessions still using the database
        db.drop()
    finally:
        conn.close()
    assert not mariadb_server.execute("SHOW DATABASES LIKE %s", (db.name,))
    mariadb_server.create_database(db.name)  # for the fixture's teardown


def test_timezone_argument(servers_dir: Path) -> None:
    base = servers_dir / "tz"  # reachable by the servers' OS user (unlike tmp_path)
    with MariaDBServer(base / "offset", timezone="+05:00") as my:
        tz, now, utc = my.execute("SELECT @@time_zone, NOW(), UTC_TIMESTAMP()")[0]
        assert tz == "+05:00"
        assert abs((now - utc) - timedelta(hours=5)) < timedelta(seconds=5)
    with MariaDBServer(base / "named", timezone="Asia/Shanghai") as my:
        assert my.execute("SELECT @@global.time_zone, @@session.time_zone")[0] == (
            "Asia/Shanghai",
            "Asia/Shanghai",
        )
        now, utc = my.execute("SELECT NOW(), UTC_TIMESTAMP()")[0]
        assert abs((now - utc) - timedelta(hours=8)) < timedelta(seconds=5)
    with PostgresServer(base / "pg", timezone="Asia/Shanghai") as pg:
        assert pg.execute("SHOW timezone") == [("Asia/Shanghai",)]
        assert pg.execute("SELECT extract(timezone FROM now())::int") == [(8 * 3600,)]
    assert not my.is_running() and not pg.is_running()


def test_cli_up_reuse_down(tmp_path: Path) -> None:
    # tmp_path sits under a root-only directory: exercises the /tmp fallback when root.
    directory = tmp_path / "dev"
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cdc.devservers", *args, "--dir", str(directory)],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )

    try:
        up = cli("up")
        assert up.returncode == 0, up.stderr
        exports = dict(
            line.removeprefix("export ").split("=", 1) for line in up.stdout.splitlines()
        )
        assert set(exports) == {"CDC_DEV_MYSQL_URL", "CDC_DEV_PG_URL"}
        assert exports["CDC_DEV_MYSQL_URL"].startswith("mysql://root:")
        assert exports["CDC_DEV_MYSQL_URL"].endswith("/")
        assert exports["CDC_DEV_PG_URL"].startswith("postgresql://postgres:")
        assert exports["CDC_DEV_PG_URL"].endswith("/postgres")
        assert (directory / "env.sh").read_text() == up.stdout
        pids = {
            k: json.loads((directory / k / "state.json").read_text())["pid"]
            for k in ("mariadb", "postgres")
        }
        # the servers outlived the command
        with psycopg.connect(exports["CDC_DEV_PG_URL"]) as conn:
            assert conn.execute("SHOW wal_level").fetchone() == ("logical",)
        _mysql_connect(exports["CDC_DEV_MYSQL_URL"]).close()

        again = cli("up")
        assert again.returncode == 0, again.stderr
        assert again.stdout == up.stdout and "running" in again.stderr
        assert pids == {
            k: json.loads((directory / k / "state.json").read_text())["pid"]
            for k in ("mariadb", "postgres")
        }

        down = cli("down")
        assert down.returncode == 0, down.stderr
        assert not any(_pid_alive(pid) for pid in pids.values())
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(exports["CDC_DEV_PG_URL"], connect_timeout=2)
    finally:
        cli("down", "--purge")
