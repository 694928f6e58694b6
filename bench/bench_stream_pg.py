"""Streaming benchmark with a PostgreSQL source (logical replication, pgoutput).

    python bench/bench_stream_pg.py --target postgresql   # goal: >= 0.6x raw COPY->staging->upsert
    python bench/bench_stream_pg.py --target mysql        # goal: >= 0.7x raw MariaDB staging->upsert

The baseline is the raw target-side work for the same row images, measured in
the same run: rows loaded into a staging table and upserted with hand-written SQL
(COPY on PostgreSQL, multi-row INSERT on MariaDB), no decoding at all.

Source and target are separate servers, as in production: on one PostgreSQL
server the source's walsender would also read all the WAL the target writes.
Both still share this machine's cores.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import psycopg  # noqa: E402
import pymysql  # noqa: E402
from common import Timer, cpu_report, cpu_snapshot, second_postgres, servers  # noqa: E402

from cdc.config import load  # noqa: E402
from cdc.pipeline import run  # noqa: E402
from cdc.positions import Lsn  # noqa: E402
from cdc.targets import open_target  # noqa: E402

SOURCE_DDL = """CREATE TABLE orders (id integer PRIMARY KEY, customer_id integer NOT NULL,
  amount numeric(12,2) NOT NULL, status smallint NOT NULL, created timestamp(3) NOT NULL,
  note text)"""
TARGET_DDL = {
    "postgresql": """CREATE TABLE crm_orders (order_ref text PRIMARY KEY, customer_no text NOT NULL,
      amount numeric(12,2) NOT NULL, status text NOT NULL, day date NOT NULL, note text)""",
    "mysql": """CREATE TABLE crm_orders (order_ref varchar(32) PRIMARY KEY,
      customer_no varchar(32) NOT NULL, amount decimal(12,2) NOT NULL, status varchar(16) NOT NULL,
      day date NOT NULL, note text)""",
}
RULE = """INSERT INTO crm_orders (order_ref, customer_no, amount, status, day, note)
SELECT 'SO-' || o.id::text, 'C' || lpad(o.customer_id::text, 8, '0'), o.amount,
       CASE o.status WHEN 1 THEN 'paid' WHEN 2 THEN 'shipped' ELSE 'new' END,
       CAST(o.created AS date), upper(o.note)
FROM orders AS o WHERE o.status <> 9"""
RAW_PG = """INSERT INTO crm_orders (order_ref, customer_no, amount, status, day, note)
SELECT 'SO-' || s.id::text, 'C' || lpad(s.customer_id::text, 8, '0'), s.amount,
       CASE s.status WHEN 1 THEN 'paid' WHEN 2 THEN 'shipped' ELSE 'new' END,
       s.created::date, upper(s.note)
FROM (SELECT DISTINCT ON (id) * FROM stage ORDER BY id, seq DESC) s WHERE s.status <> 9
ON CONFLICT (order_ref) DO UPDATE SET customer_no = EXCLUDED.customer_no,
  amount = EXCLUDED.amount, status = EXCLUDED.status, day = EXCLUDED.day, note = EXCLUDED.note"""
RAW_MY = """INSERT INTO crm_orders (order_ref, customer_no, amount, status, day, note)
SELECT CONCAT('SO-', s.id), CONCAT('C', LPAD(s.customer_id, 8, '0')), s.amount,
       CASE s.status WHEN 1 THEN 'paid' WHEN 2 THEN 'shipped' ELSE 'new' END,
       DATE(s.created), UPPER(s.note)
FROM (SELECT s.*, ROW_NUMBER() OVER (PARTITION BY id ORDER BY seq DESC) rn FROM stage s) s
WHERE s.rn = 1 AND s.status <> 9
ON DUPLICATE KEY UPDATE customer_no = VALUES(customer_no), amount = VALUES(amount),
  status = VALUES(status), day = VALUES(day), note = VALUES(note)"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", choices=["postgresql", "mysql"], default="postgresql")
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--updates", type=int, default=100_000)
    args = ap.parse_args()
    with servers() as (my, pg), contextlib.ExitStack() as stack:
        pg.create_database("erp")
        if args.target == "mysql":
            my.create_database("crm")
            target_url = my.url("crm")
        else:
            tpg = stack.enter_context(second_postgres(pg))
            tpg.create_database("crm")
            target_url = tpg.url("crm")
        with psycopg.connect(pg.url("erp"), autocommit=True) as c:
            c.execute(SOURCE_DDL)
        work = Path(pg.basedir) / "pipeline"
        (work / "rules").mkdir(parents=True)
        (work / "rules" / "orders.sql").write_text(RULE)
        (work / "p.yaml").write_text(
            f"pipeline: benchpg\nsource:\n  url: {pg.url('erp')}\n  heartbeat_seconds: 0.5\n"
            f"target:\n  url: {target_url}\nrules: rules/\n")
        if args.target == "mysql":
            conn = pymysql.connect(host=my.host, port=my.port, user="root", password=my.password,
                                   database="crm", autocommit=True)
            with conn.cursor() as cur:
                cur.execute(TARGET_DDL["mysql"])
        else:
            with psycopg.connect(target_url, autocommit=True) as c:
                c.execute(TARGET_DDL["postgresql"])
        import subprocess

        subprocess.run([sys.executable, "-m", "cdc", "setup", "-c", str(work / "p.yaml")],
                       check=True, capture_output=True)
        with psycopg.connect(pg.url("erp"), autocommit=True) as c:
            for lo in range(0, args.rows, 10_000):
                c.execute("INSERT INTO orders SELECT g, g %% 5000, (g %% 997) + 0.5, g %% 3,"
                          " timestamp '2024-05-01 10:00' + g * interval '1 second', 'note ' || g"
                          " FROM generate_series(%s::int, %s::int) g",
                          (lo, min(lo + 10_000, args.rows) - 1))
            for lo in range(0, args.updates, 1000):
                c.execute("UPDATE orders SET amount = amount + 1, status = 1"
                          " WHERE id >= %s AND id < %s", (lo, lo + 1000))
            row = c.execute("SELECT pg_current_wal_lsn()::text").fetchone()
            assert row is not None
            end = Lsn.parse(row[0])
            images = c.execute("SELECT * FROM orders ORDER BY id").fetchall()
            # Both timed phases start from a quiet server: no autovacuum or
            # checkpoint catching up on the writes above.
            c.execute("VACUUM ANALYZE orders")
            c.execute("CHECKPOINT")
        changes = args.rows + args.updates
        # Same number of row images as the stream carries: inserts, then updates.
        staged = images[: args.rows] + images[: args.updates]

        # Baseline: raw staging + upsert of the same images.
        if args.target == "postgresql":
            with psycopg.connect(target_url) as c:
                c.execute("CREATE TEMP TABLE stage (id int, customer_id int, amount numeric(12,2),"
                          " status smallint, created timestamp(3), note text, seq bigint)"
                          " ON COMMIT DELETE ROWS")
                c.commit()
                cpu0 = cpu_snapshot()
                with Timer() as t_raw:
                    for lo in range(0, len(staged), 20_000):
                        with c.cursor() as cur:
                            with cur.copy("COPY stage FROM STDIN") as cp:
                                for seq, r in enumerate(staged[lo:lo + 20_000]):
                                    cp.write_row((*r, seq))
                            cur.execute(RAW_PG)
                        c.commit()
                raw_cpu = cpu_report(cpu0, cpu_snapshot())
                c.execute("TRUNCATE crm_orders")
                c.commit()
        else:
            conn = pymysql.connect(host=my.host, port=my.port, user="root", password=my.password,
                                   database="crm", autocommit=False)
            with conn.cursor() as cur:
                cur.execute("CREATE TEMPORARY TABLE stage (id int, customer_id int,"
                            " amount decimal(12,2), status smallint, created datetime(3),"
                            " note text, seq bigint)")
                cpu0 = cpu_snapshot()
                with Timer() as t_raw:
                    for lo in range(0, len(staged), 20_000):
                        cur.execute("DELETE FROM stage")
                        part = [(*r, lo + i) for i, r in enumerate(staged[lo:lo + 20_000])]
                        for j in range(0, len(part), 2000):
                            cur.executemany("INSERT INTO stage VALUES (%s,%s,%s,%s,%s,%s,%s)",
                                            part[j:j + 2000])
                        cur.execute(RAW_MY)
                        conn.commit()
                raw_cpu = cpu_report(cpu0, cpu_snapshot())
                cur.execute("DELETE FROM crm_orders")
                conn.commit()
            conn.close()
        raw_rate = changes / t_raw.seconds

        if args.target == "postgresql":
            with psycopg.connect(target_url, autocommit=True) as c:
                c.execute("VACUUM ANALYZE crm_orders")
                c.execute("CHECKPOINT")
        cfg = load(work / "p.yaml")
        target = open_target(cfg)
        stop = threading.Event()
        th = threading.Thread(target=run, args=(cfg, stop), daemon=True)
        cpu0 = cpu_snapshot()
        with Timer() as t_cdc:
            th.start()
            while True:
                off = target.load_offset()
                if off is not None and off[0].sort_key() >= end.sort_key():
                    break
                time.sleep(0.05)
        cdc_cpu = cpu_report(cpu0, cpu_snapshot())
        stop.set()
        th.join()
        target.close()
        cdc_rate = changes / t_cdc.seconds
        subprocess.run([sys.executable, "-m", "cdc", "teardown", "-c", str(work / "p.yaml"),
                        "--yes"], capture_output=True)
        goal = 0.6 if args.target == "postgresql" else 0.7
        print(f"PostgreSQL -> {args.target}: {changes} row changes")
        print(f"raw staging->upsert:  {raw_rate:10,.0f} rows/s")
        print(f"cdc end to end:       {cdc_rate:10,.0f} rows/s")
        print(f"ratio cdc / raw:      {cdc_rate / raw_rate:10.2f}  (goal >= {goal})")
        print(f"CPU, raw:  {raw_cpu}")
        print(f"CPU, cdc:  {cdc_cpu}")


if __name__ == "__main__":
    main()
