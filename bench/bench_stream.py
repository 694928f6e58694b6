"""Streaming benchmark, MySQL -> PostgreSQL, with two baselines from the same run.

    python bench/bench_stream.py [--rows 200000] [--updates 100000]

1. decode only: mysql-replication reads the binlog range and decodes every row
   (no apply) -- the ceiling for any Python binlog reader.
2. raw apply: the decoded rows COPY'd into a temp table and upserted with
   hand-written SQL -- the ceiling for the target side.
3. cdc: `cdc run` from the start position until it has applied the range.

The goal for (3) is >= 0.8x of (1): decode and apply overlapping.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import psycopg  # noqa: E402
import pymysql  # noqa: E402
from common import Timer, cpu_report, cpu_snapshot, servers  # noqa: E402
from pymysqlreplication import BinLogStreamReader  # noqa: E402
from pymysqlreplication.row_event import UpdateRowsEvent, WriteRowsEvent  # noqa: E402

from cdc.config import DatabaseUrl, load  # noqa: E402
from cdc.pipeline import run  # noqa: E402
from cdc.positions import BinlogPosition  # noqa: E402
from cdc.targets.postgres import PostgresTarget  # noqa: E402

SOURCE_DDL = """CREATE TABLE orders (
  id INT NOT NULL PRIMARY KEY, customer_id INT NOT NULL, amount DECIMAL(12,2) NOT NULL,
  status TINYINT NOT NULL, created DATETIME(3) NOT NULL, note VARCHAR(64) NULL)"""
TARGET_DDL = """CREATE TABLE crm_orders (order_ref text PRIMARY KEY, customer_no text NOT NULL,
  amount numeric(12,2) NOT NULL, status text NOT NULL, day date NOT NULL, note text)"""
RULE = """INSERT INTO crm_orders (order_ref, customer_no, amount, status, day, note)
SELECT CONCAT('SO-', CAST(o.id AS CHAR)), CONCAT('C', LPAD(CAST(o.customer_id AS CHAR), 8, '0')),
       o.amount, CASE o.status WHEN 1 THEN 'paid' WHEN 2 THEN 'shipped' ELSE 'new' END,
       DATE(o.created), UPPER(o.note)
FROM orders AS o WHERE o.status <> 9"""
RAW_UPSERT = """INSERT INTO crm_orders (order_ref, customer_no, amount, status, day, note)
SELECT 'SO-' || s.id::text, 'C' || lpad(s.customer_id::text, 8, '0'), s.amount,
       CASE s.status WHEN 1 THEN 'paid' WHEN 2 THEN 'shipped' ELSE 'new' END,
       s.created::date, upper(s.note)
FROM (SELECT DISTINCT ON (id) * FROM stage ORDER BY id, seq DESC) s WHERE s.status <> 9
ON CONFLICT (order_ref) DO UPDATE SET customer_no = EXCLUDED.customer_no,
  amount = EXCLUDED.amount, status = EXCLUDED.status, day = EXCLUDED.day, note = EXCLUDED.note"""


def master_pos(conn: pymysql.connections.Connection) -> BinlogPosition:
    with conn.cursor() as cur:
        cur.execute("SHOW MASTER STATUS")
        row = cur.fetchone()
    return BinlogPosition(row[0], int(row[1]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--updates", type=int, default=100_000)
    args = ap.parse_args()
    with servers() as (my, pg):
        my.create_database("shop")
        pg.create_database("crm")
        src = DatabaseUrl.parse(my.url("shop"))
        conn = pymysql.connect(host=src.host, port=src.port, user=src.user,
                               password=src.password, database="shop", autocommit=True)
        with conn.cursor() as cur:
            cur.execute(SOURCE_DDL)
        with psycopg.connect(pg.url("crm"), autocommit=True) as c:
            c.execute(TARGET_DDL)
        start = master_pos(conn)
        with conn.cursor() as cur:
            for lo in range(0, args.rows, 1000):
                vals = ",".join(
                    f"({i},{i % 5000},{(i % 997) + 0.5},{i % 3},'2024-05-01 10:00:00.{i % 1000:03d}',"
                    f"'note {i}')" for i in range(lo, min(lo + 1000, args.rows)))
                cur.execute(f"INSERT INTO orders VALUES {vals}")
            step = 1000
            for lo in range(0, args.updates, step):
                cur.execute(f"UPDATE orders SET amount = amount + 1, status = 1 "
                            f"WHERE id >= {lo} AND id < {lo + step}")
        end = master_pos(conn)
        changes = args.rows + args.updates
        print(f"binlog range {start} .. {end}: {changes} row changes "
              f"({args.rows} inserts, {args.updates} updates)")

        # 1. decode only
        decoded: list[tuple[object, ...]] = []
        with Timer() as t_decode:
            reader = BinLogStreamReader(
                connection_settings={"host": src.host, "port": src.port, "user": src.user,
                                     "passwd": src.password},
                server_id=990001, resume_stream=True, blocking=False, log_file=start.file,
                log_pos=start.pos, only_schemas=["shop"], only_events=[WriteRowsEvent,
                                                                      UpdateRowsEvent],
                enable_logging=False)
            n = 0
            for ev in reader:
                for r in ev.rows:
                    v = r.get("values") or r["after_values"]
                    n += 1
                    decoded.append((v["id"], v["customer_id"], v["amount"], v["status"],
                                    v["created"], v["note"]))
            reader.close()
        assert n == changes, (n, changes)
        decode_rate = changes / t_decode.seconds

        # 2. raw COPY -> staging -> upsert
        with psycopg.connect(pg.url("crm")) as c:
            c.execute("CREATE TEMP TABLE stage (id int, customer_id int, amount numeric(12,2),"
                      " status smallint, created timestamp(3), note text, seq bigint)"
                      " ON COMMIT DELETE ROWS")
            c.commit()
            with Timer() as t_raw:
                for lo in range(0, len(decoded), 20_000):
                    with c.cursor() as cur:
                        with cur.copy("COPY stage FROM STDIN") as cp:
                            for seq, row in enumerate(decoded[lo:lo + 20_000]):
                                cp.write_row((*row, seq))
                        cur.execute(RAW_UPSERT)
                    c.commit()
            c.execute("TRUNCATE crm_orders")
            c.commit()
        raw_rate = changes / t_raw.seconds

        # 3. cdc end to end
        work = Path(my.basedir) / "pipeline"
        (work / "rules").mkdir(parents=True)
        (work / "rules" / "orders.sql").write_text(RULE)
        (work / "p.yaml").write_text(
            f"pipeline: bench\nsource:\n  url: {my.url('shop')}\n  heartbeat_seconds: 0.2\n"
            f"target:\n  url: {pg.url('crm')}\nrules: rules/\n")
        cfg = load(work / "p.yaml")
        target = PostgresTarget(cfg)
        target.migrate()
        target.save_offset(start)
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
        with psycopg.connect(pg.url("crm")) as c:
            got = c.execute("SELECT count(*) FROM crm_orders").fetchone()
        assert got is not None and got[0] == args.rows, got

        print(f"decode only (mysql-replication): {decode_rate:10,.0f} rows/s")
        print(f"raw COPY->staging->upsert:       {raw_rate:10,.0f} rows/s")
        print(f"cdc end to end:                  {cdc_rate:10,.0f} rows/s")
        print(f"ratio cdc / decode-only:         {cdc_rate / decode_rate:10.2f}  (goal >= 0.8)")
        print(f"ratio cdc / raw apply:           {cdc_rate / raw_rate:10.2f}")
        print(f"CPU, cdc:  {cdc_cpu}")


if __name__ == "__main__":
    main()
