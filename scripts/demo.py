"""The demo: a legacy shop on MariaDB feeding a CRM on PostgreSQL, on throwaway
local servers.  Every step runs the real `cdc` command and shows it.

    python3 scripts/demo.py [--keep]     # --keep leaves the servers running
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
import pymysql  # noqa: E402

from cdc.devservers import MariaDBServer, PostgresServer  # noqa: E402

DEMO_DIR = ROOT / ".cdc-demo"
CONFIG = ROOT / "examples" / "shop_to_crm.yaml"


def say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m" if sys.stdout.isatty() else f"\n== {text}", flush=True)


def cdc(*args: str, env: dict[str, str], check: bool = True) -> None:
    print("$ cdc " + " ".join(shlex.quote(a) for a in args), flush=True)
    p = subprocess.run([sys.executable, "-m", "cdc", *args], env=env, cwd=ROOT)
    if check and p.returncode != 0:
        sys.exit(f"demo: `cdc {args[0]}` failed with exit code {p.returncode}")


def show(pg_url: str) -> None:
    with psycopg.connect(pg_url) as c:
        for table, order in (("crm_customer", "customer_no"), ("crm_order", "order_ref")):
            cur = c.execute(f"SELECT * FROM {table} ORDER BY {order}")  # noqa: S608 - fixed names
            names = [d.name for d in cur.description or []]
            rows = cur.fetchall()
            print(f"-- {table} ({len(rows)} rows)")
            print("   " + " | ".join(names))
            for r in rows:
                print("   " + " | ".join("" if v is None else str(v) for v in r))


def source_sql(my: MariaDBServer, statements: list[str]) -> None:
    conn = pymysql.connect(host=my.host, port=my.port, user="root", password=my.password,
                           database="shop", charset="utf8mb4", autocommit=False)
    with conn.cursor() as cur:
        for s in statements:
            print(f"   shop> {s};")
            cur.execute(s)
    conn.commit()
    conn.close()


def closing_hint(keep: bool) -> str:
    """The last line: only suggest `cdc lag` while its servers still run."""
    if keep:
        return "Try it yourself:  source .cdc-demo/env.sh && cdc lag"
    return ("The demo's servers are stopped now. To try cdc yourself on them, run the demo "
            "with --keep (scripts/demo.sh --keep), then: source .cdc-demo/env.sh && cdc lag")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--keep", action="store_true", help="leave the demo servers running")
    args = ap.parse_args()

    say("starting throwaway MariaDB and PostgreSQL servers in .cdc-demo/")
    DEMO_DIR.mkdir(exist_ok=True)
    my = MariaDBServer(DEMO_DIR)
    pg = PostgresServer(DEMO_DIR)
    my.start()
    pg.start()
    print(f"MariaDB on 127.0.0.1:{my.port}, PostgreSQL on 127.0.0.1:{pg.port}")
    daemon: subprocess.Popen[bytes] | None = None
    try:
        say("loading the demo schemas: sql/demo/shop_mysql.sql and sql/demo/crm_postgres.sql")
        my.drop_database("shop")
        my.create_database("shop")
        pg.drop_database("crm")
        pg.create_database("crm")
        with pymysql.connect(host=my.host, port=my.port, user="root", password=my.password,
                             database="shop", charset="utf8mb4", autocommit=True) as conn:
            with conn.cursor() as cur:
                for stmt in (ROOT / "sql/demo/shop_mysql.sql").read_text().split(";\n"):
                    code = [ln for ln in stmt.splitlines() if not ln.strip().startswith("--")]
                    if "".join(code).strip():
                        cur.execute(stmt)
        with psycopg.connect(pg.url("crm"), autocommit=True) as c:
            c.execute((ROOT / "sql/demo/crm_postgres.sql").read_text().encode())

        env = dict(os.environ, SHOP_URL=my.url("shop"), CRM_URL=pg.url("crm"),
                   CDC_CONFIG=str(CONFIG))
        (DEMO_DIR / "env.sh").write_text(
            f"export SHOP_URL={shlex.quote(env['SHOP_URL'])}\n"
            f"export CRM_URL={shlex.quote(env['CRM_URL'])}\n"
            f"export CDC_CONFIG={shlex.quote(str(CONFIG))}\n")

        say("checking the rules against the live schemas (examples/shop_to_crm.yaml)")
        cdc("check", "--show-sql", env=env)
        say("setting up bookkeeping in the CRM")
        cdc("setup", env=env)
        say("copying the rows that exist already (snapshot)")
        cdc("snapshot", env=env)
        show(pg.url("crm"))

        say("streaming: `cdc run` in the background")
        log = open(DEMO_DIR / "run.log", "wb")  # noqa: SIM115 - owned by the child
        print("$ cdc run   (log in .cdc-demo/run.log)")
        daemon = subprocess.Popen([sys.executable, "-m", "cdc", "run"], env=env, cwd=ROOT,
                                  stdout=log, stderr=log)
        time.sleep(2)
        say("live changes in the shop")
        source_sql(my, [
            "INSERT INTO customers (first_name, last_name, email, phone, industry) "
            "VALUES ('芳', '陈', ' Fang.Chen@Example.CN', '(021) 6123-4567', '')",
            "UPDATE orders SET status_code = 1 WHERE order_no = 1002",           # paid: enters
            "UPDATE orders SET status_code = 9 WHERE order_no = 1001",           # cancelled: leaves
            "UPDATE customers SET status = 'blocked' WHERE id = 3",              # blocked: leaves
            "INSERT INTO orders (customer_id, amount, currency, status_code, ordered_at) "
            "VALUES (2, 88.80, 'cny', 1, '2024-06-01 08:30:00.250')",
        ])
        time.sleep(3)
        show(pg.url("crm"))
        say("how far behind is the CRM?")
        cdc("lag", env=env)
        cdc("lag", "--json", env=env)
        say("stopping `cdc run` with SIGTERM (finishes its batch, commits, exits 0)")
        daemon.send_signal(signal.SIGTERM)
        code = daemon.wait(timeout=30)
        daemon = None
        print(f"cdc run exited with {code}")
        print("\n" + closing_hint(args.keep))
    finally:
        if daemon is not None:
            daemon.kill()
        if args.keep:
            print(f"servers left running; stop them with: python3 -m cdc.devservers down "
                  f"--dir {DEMO_DIR}")
        else:
            my.stop()
            pg.stop()


if __name__ == "__main__":
    main()
