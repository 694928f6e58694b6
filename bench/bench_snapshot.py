"""Snapshot benchmark, MySQL -> PostgreSQL, beside two peers on the same table.

    python bench/bench_snapshot.py [--rows 1000000]

1. raw COPY: pymysql reads the rows, psycopg COPYs them into a PostgreSQL table
   (the baseline: no transformation, no bookkeeping);
2. pgloader (Debian package) copying the same table;
3. `cdc snapshot` through a rule with a few transformations.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import psycopg  # noqa: E402
import pymysql  # noqa: E402
from common import Timer, servers  # noqa: E402

SOURCE_DDL = """CREATE TABLE orders (
  id INT NOT NULL PRIMARY KEY, customer_id INT NOT NULL, amount DECIMAL(12,2) NOT NULL,
  status TINYINT NOT NULL, created DATETIME NOT NULL, note VARCHAR(64) NULL)"""
FILL = """INSERT INTO orders SELECT seq, seq % 5000, (seq % 997) + 0.5, seq % 3,
  '2024-01-01 00:00:00' + INTERVAL (seq % 100000) MINUTE, CONCAT('note ', seq)
  FROM seq_1_to_{n}"""
TARGET_DDL = """CREATE TABLE crm_orders (order_ref text PRIMARY KEY, customer_no text NOT NULL,
  amount numeric(12,2) NOT NULL, status text NOT NULL, created timestamp NOT NULL, note text)"""
RAW_DDL = """CREATE TABLE raw_orders (id integer PRIMARY KEY, customer_id integer NOT NULL,
  amount numeric(12,2) NOT NULL, status smallint NOT NULL, created timestamp NOT NULL, note text)"""
RULE = """INSERT INTO crm_orders (order_ref, customer_no, amount, status, created, note)
SELECT CONCAT('SO-', CAST(o.id AS CHAR)), CONCAT('C', LPAD(CAST(o.customer_id AS CHAR), 8, '0')),
       o.amount, CASE o.status WHEN 1 THEN 'paid' WHEN 2 THEN 'shipped' ELSE 'new' END,
       o.created, o.note
FROM orders AS o"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    args = ap.parse_args()
    n = args.rows
    with servers() as (my, pg):
        my.create_database("shop")
        pg.create_database("crm")
        conn = pymysql.connect(host=my.host, port=my.port, user="root", password=my.password,
                               database="shop", autocommit=True)
        with conn.cursor() as cur:
            cur.execute(SOURCE_DDL)
            cur.execute(FILL.format(n=n))
        print(f"source table: {n:,} rows")

        # 1. raw COPY
        with psycopg.connect(pg.url("crm"), autocommit=True) as c:
            c.execute(RAW_DDL)
        with Timer() as t_raw:
            with psycopg.connect(pg.url("crm")) as c, c.cursor() as pcur, \
                    pcur.copy("COPY raw_orders FROM STDIN") as cp:
                rc = pymysql.connect(host=my.host, port=my.port, user="root",
                                     password=my.password, database="shop",
                                     cursorclass=pymysql.cursors.SSCursor)
                with rc.cursor() as cur:
                    cur.execute("SELECT * FROM orders ORDER BY id")
                    for row in cur:
                        cp.write_row(row)
                rc.close()
        raw_rate = n / t_raw.seconds

        # 2. pgloader
        pgl_rate = None
        if shutil.which("pgloader"):
            pg.create_database("pgl")
            with Timer() as t_pgl:
                p = subprocess.run(["pgloader", "--quiet", my.url("shop"), pg.url("pgl")],
                                   capture_output=True, text=True)
            if p.returncode != 0:
                print("pgloader failed:", p.stdout[-2000:], p.stderr[-2000:])
            else:
                with psycopg.connect(pg.url("pgl")) as c:
                    got = c.execute("SELECT count(*) FROM shop.orders").fetchone()
                assert got is not None and got[0] == n, got
                pgl_rate = n / t_pgl.seconds

        # 3. cdc snapshot
        work = Path(my.basedir) / "pipeline"
        (work / "rules").mkdir(parents=True)
        (work / "rules" / "orders.sql").write_text(RULE)
        (work / "p.yaml").write_text(
            f"pipeline: bench\nsource:\n  url: {my.url('shop')}\n"
            f"target:\n  url: {pg.url('crm')}\nrules: rules/\n")
        with psycopg.connect(pg.url("crm"), autocommit=True) as c:
            c.execute(TARGET_DDL)
        cdc = [sys.executable, "-m", "cdc"]
        subprocess.run([*cdc, "setup", "-c", str(work / "p.yaml")], check=True,
                       capture_output=True)
        with Timer() as t_cdc:
            p = subprocess.run([*cdc, "snapshot", "-c", str(work / "p.yaml")],
                               capture_output=True, text=True)
        if p.returncode != 0:
            sys.exit(f"cdc snapshot failed: {p.stderr}")
        with psycopg.connect(pg.url("crm")) as c:
            got = c.execute("SELECT count(*) FROM crm_orders").fetchone()
        assert got is not None and got[0] == n, got
        cdc_rate = n / t_cdc.seconds

        print(f"raw COPY (pymysql -> COPY):  {raw_rate:10,.0f} rows/s")
        if pgl_rate:
            print(f"pgloader:                    {pgl_rate:10,.0f} rows/s")
        print(f"cdc snapshot:                {cdc_rate:10,.0f} rows/s")
        print(f"ratio cdc / raw COPY:        {cdc_rate / raw_rate:10.2f}  (goal >= 0.5)")
        if pgl_rate:
            print(f"ratio cdc / pgloader:        {cdc_rate / pgl_rate:10.2f}  (goal >= 1.0)")


if __name__ == "__main__":
    main()
