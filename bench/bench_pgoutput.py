"""How fast the pgoutput decoder turns WAL payloads into row dicts.

    python bench/bench_pgoutput.py [--rows 200000] [--url postgresql://...]

Writes ``--rows`` row changes (half inserts, half updates, 1000 rows per
transaction) to a 6-column table on a throwaway server (cdc.devservers), reads
their raw pgoutput payloads once with ``pg_logical_slot_peek_binary_changes``,
then times, in this process:

* decode: ``cdc.sources.pgoutput.decode`` alone (bytes -> message objects);
* decode + values: what the streaming source does per message (Decoder, psycopg
  text loaders, before/after dicts);
* COPY text: what it does instead for a PostgreSQL target (Decoder.copy_change:
  staging lines straight from the tuple bytes, no Python value per column);
* baseline: psycopg fetching the same number of rows with ``SELECT * FROM t``
  (text format), i.e. the cost of just receiving and converting them.

The ratio says how the decoder compares with that baseline (< 1 is faster).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cdc.events import RowChange  # noqa: E402
from cdc.sources import pgoutput  # noqa: E402
from cdc.sources.pgoutput import Decoder, Delete, Insert, Update  # noqa: E402

BATCH = 1000


def prepare(url: str, rows: int) -> list[bytes]:
    with psycopg.connect(url, autocommit=True) as c:
        c.execute("SET synchronous_commit = on")
        c.execute("DROP TABLE IF EXISTS t; DROP PUBLICATION IF EXISTS bench_pub")
        c.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
                  " WHERE slot_name = 'bench_slot'")
        c.execute("CREATE TABLE t (id bigint PRIMARY KEY, name text, amount numeric(12,2),"
                  " created timestamptz, qty int, note text)")
        c.execute("CREATE PUBLICATION bench_pub FOR TABLE t")
        c.execute("SELECT pg_create_logical_replication_slot('bench_slot', 'pgoutput')")
        inserts = rows // 2
        t0 = time.perf_counter()
        for lo in range(1, inserts + 1, BATCH):
            hi = min(lo + BATCH - 1, inserts)
            c.execute("INSERT INTO t SELECT i, 'customer ' || i, i * 1.25,"
                      " '2024-01-01 00:00:00+00'::timestamptz + i * interval '1 minute',"
                      " i %% 100, md5(i::text) FROM generate_series(%s::bigint, %s) i", (lo, hi))
        for lo in range(1, rows - inserts + 1, BATCH):
            hi = min(lo + BATCH - 1, rows - inserts)
            c.execute("UPDATE t SET qty = qty + 1, amount = amount + 0.01"
                      " WHERE id BETWEEN %s AND %s", (lo, hi))
        print(f"wrote {rows} row changes in {time.perf_counter() - t0:.1f} s")
        t0 = time.perf_counter()
        payloads = [bytes(r[0]) for r in c.execute(
            "SELECT data FROM pg_logical_slot_peek_binary_changes('bench_slot', NULL, NULL,"
            " 'proto_version', '1', 'publication_names', 'bench_pub')")]
        print(f"peeked {len(payloads)} pgoutput messages ({sum(map(len, payloads)) / 1e6:.1f} MB)"
              f" in {time.perf_counter() - t0:.2f} s")
        c.execute("SELECT pg_drop_replication_slot('bench_slot')")
        return payloads


def decode_only(payloads: list[bytes]) -> int:
    decode = pgoutput.decode
    n = 0
    for p in payloads:
        msg = decode(p)
        if isinstance(msg, Insert | Update | Delete):
            n += 1
    return n


def decode_values(payloads: list[bytes]) -> int:
    dec = Decoder()
    out: list[RowChange] = []
    for p in payloads:
        msg = dec.decode(p)
        if isinstance(msg, Insert | Update | Delete):
            # What the streaming source does per data message.
            out.append(dec.row_change(dec.relation(msg.relation_oid), msg))
    return len(out)


def copy_text(payloads: list[bytes]) -> int:
    dec = Decoder(text_values=True)
    lines: list[bytes] = []
    for p in payloads:
        got = dec.copy_change(p)
        if got is None:
            dec.decode(p)
        else:
            lines.append(got[2])
    return len(lines)


def baseline(url: str, rows: int) -> tuple[int, float]:
    with psycopg.connect(url, autocommit=True) as c:
        table_rows = int(c.execute("SELECT count(*) FROM t").fetchone()[0])  # type: ignore[index]
        fetched = 0
        t0 = time.perf_counter()
        while fetched < rows:
            fetched += len(c.execute("SELECT * FROM t", binary=False).fetchall())
        return fetched, time.perf_counter() - t0 if table_rows else 0.0


def best_of(fn: Any, arg: Any, repeat: int) -> tuple[int, float]:
    best = float("inf")
    n = 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        n = fn(arg)
        best = min(best, time.perf_counter() - t0)
    return n, best


def run(url: str, rows: int, repeat: int) -> None:
    payloads = prepare(url, rows)
    n, t_dec = best_of(decode_only, payloads, repeat)
    print(f"decode only:      {n} rows in {t_dec:.3f} s = {n / t_dec:,.0f} rows/s")
    n2, t_val = best_of(decode_values, payloads, repeat)
    print(f"decode + values:  {n2} rows in {t_val:.3f} s = {n2 / t_val:,.0f} rows/s")
    n3, t_text = best_of(copy_text, payloads, repeat)
    print(f"COPY text:        {n3} rows in {t_text:.3f} s = {n3 / t_text:,.0f} rows/s")
    best = float("inf")
    fetched = 0
    for _ in range(repeat):
        fetched, t = baseline(url, n2)
        best = min(best, t)
    print(f"baseline (psycopg SELECT * FROM t, text): {fetched} rows in {best:.3f} s"
          f" = {fetched / best:,.0f} rows/s")
    per_row_dec = t_val / n2
    per_row_base = best / fetched
    print(f"ratio decode+values / baseline per row: {per_row_dec / per_row_base:.2f}")
    print(f"ratio COPY text / baseline per row:     {t_text / n3 / per_row_base:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--url", help="superuser URL of a server with wal_level=logical "
                                  "(default: a throwaway server)")
    args = ap.parse_args()
    if args.url:
        run(args.url, args.rows, args.repeat)
        return
    from cdc.devservers import PostgresServer

    with tempfile.TemporaryDirectory() as tmp:
        server = PostgresServer(Path(tmp))
        server.start()
        try:
            run(server.url("postgres"), args.rows, args.repeat)
        finally:
            server.stop()


if __name__ == "__main__":
    main()
