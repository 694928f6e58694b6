"""A randomized differential test: seeded random workloads on a real source,
`cdc run` as a subprocess, and the target compared with an independent Python
model of what the rules make of the final source (tests/differential_model.py).

The workload is a mix of op families that can be switched on one by one:

``dml``          inserts, updates of non-key columns (one row and ``BETWEEN`` ranges),
                 status changes that stay inside the rule, transactions over both tables
``delete``       single-row, range and by-customer deletes, a customer with its orders
``pk_change``    primary-key changes: to a fresh or a reused id, range shifts, swaps
``filter_exit``  rows leaving the rule (status 9 = the ``WHERE``, status 8 = no lookup
                 row for the inner ``JOIN``) and coming back, one row and ranges
``truncate``     ``TRUNCATE`` of a source table, then fresh and reused ids
``ddl``          ADD COLUMN; RENAME or DROP of the column the orders rule reads, the rule
                 fixed afterwards and reloaded with SIGHUP; ADD + DROP of an unread column
``ddl_kill``     (with ddl) kill -9 between the schema change and the fixed rule, and a
                 restart that meets the changed schema with the old rule
``kill``         kill -9 of `cdc run` at seeded moments, writes while it is down, restart
``snapshot``     rows that predate the pipeline: `cdc snapshot` (small chunks) while the
                 source takes writes, then `cdc run` from its hand-over point

``CI_FAMILIES`` says which families run by default in each direction: the ones
the current code gets right. ``--families all`` (or a list) enables others,
``--seeds N`` runs seeds 1..N, ``--seed S`` replays one. On a mismatch the test
prints the seed, the families, the diff (missing / extra / changed rows) and
where the workload's statement log is.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from differential_model import (
    CANCELLED,
    STATUS_LABELS,
    UNMAPPED,
    NoteSource,
    Row,
    diff,
    expected_customers,
    expected_orders,
    rule_sql,
)
from pipeline_helpers import DaemonProcess, cdc, own_tracebacks, wait_caught_up, write_pipeline

from cdc.config import load

ALL_FAMILIES = ("dml", "delete", "pk_change", "filter_exit", "truncate", "ddl", "ddl_kill",
                "kill", "snapshot")


@dataclass(frozen=True)
class Direction:
    source: str              # "mysql" | "postgresql"
    target: str
    identity: str = ""       # PostgreSQL source: "" (REPLICA IDENTITY DEFAULT) or "full"

    @property
    def id(self) -> str:
        return f"{self.source}-to-{self.target}" + (f"-{self.identity}" if self.identity else "")


DIRECTIONS = [
    Direction("mysql", "postgresql"),
    Direction("postgresql", "mysql"),
    Direction("postgresql", "mysql", "full"),
    Direction("postgresql", "postgresql"),
    Direction("postgresql", "postgresql", "full"),
    Direction("mysql", "mysql"),
]

# What the current code gets right, per direction: each family joins a
# direction's list when its fix merges. A family missing here is not skipped,
# it is not part of the CI run; `--families all` shows how it fails today.
# Every family is in now: ddl and ddl_kill last, once a restart after a DROP
# applied the changes from before it through the rule as it was (the shape the
# last start saved) instead of parking them for the fixed rule.
_EVERY_IDENTITY = ("dml", "delete", "pk_change", "filter_exit", "truncate", "kill", "snapshot",
                   "ddl", "ddl_kill")
_FULL_IMAGES = _EVERY_IDENTITY
CI_FAMILIES: dict[str, tuple[str, ...]] = {
    d.id: _EVERY_IDENTITY if d.source == "postgresql" and d.identity != "full" else _FULL_IMAGES
    for d in DIRECTIONS}

# One seed per direction in CI, each a different workload and batch size
# (pipeline_extra); --seeds N runs 1..N everywhere.
CI_SEEDS: dict[str, tuple[int, ...]] = dict(zip(
    [d.id for d in DIRECTIONS], [(1,), (8,), (2,), (14,), (3,), (16,)], strict=True))

SOURCE_DDL = {
    "mysql": [
        "CREATE TABLE orders (id INT PRIMARY KEY, customer_id INT, status INT NOT NULL,"
        " amount DECIMAL(10,2), note VARCHAR(200), rev INT NOT NULL) DEFAULT CHARSET=utf8mb4",
        "CREATE TABLE customers (id INT PRIMARY KEY, name VARCHAR(100), city VARCHAR(100),"
        " rev INT NOT NULL) DEFAULT CHARSET=utf8mb4",
    ],
    "postgresql": [
        "CREATE TABLE orders (id integer PRIMARY KEY, customer_id integer,"
        " status integer NOT NULL, amount numeric(10,2), note text, rev integer NOT NULL)",
        "CREATE TABLE customers (id integer PRIMARY KEY, name text, city text,"
        " rev integer NOT NULL)",
    ],
}
TARGET_DDL = {
    "postgresql": [
        "CREATE TABLE crm_orders (order_no text PRIMARY KEY, customer_id integer,"
        " status_label text, amount numeric(14,2), note text)",
        "CREATE TABLE crm_customers (customer_no text PRIMARY KEY, name text, city text)",
        "CREATE TABLE crm_status_map (code integer PRIMARY KEY, label text NOT NULL)",
    ],
    "mysql": [
        "CREATE TABLE crm_orders (order_no VARCHAR(32) PRIMARY KEY, customer_id INT,"
        " status_label VARCHAR(50), amount DECIMAL(14,2), note VARCHAR(200))"
        " DEFAULT CHARSET=utf8mb4",
        "CREATE TABLE crm_customers (customer_no VARCHAR(32) PRIMARY KEY, name VARCHAR(100),"
        " city VARCHAR(100)) DEFAULT CHARSET=utf8mb4",
        "CREATE TABLE crm_status_map (code INT PRIMARY KEY, label VARCHAR(50) NOT NULL)"
        " DEFAULT CHARSET=utf8mb4",
    ],
}


def pipeline_extra(seed: int) -> str:
    """Batch limits drawn from the seed: tiny batches cut between source
    transactions often; large ones collapse many changes per key."""
    r = random.Random(f"batch {seed}")
    return f"batch:\n  max_rows: {r.choice([3, 40, 1000])}\n" \
           f"  max_seconds: {r.choice([0.05, 0.2, 1.0])}\n"


WORDS = ["apple", "pear", "O'Brien", "50% off", "rush", "gift wrap", "fragile", "back order",
         "call first", "leave at door", "x", "", "tab\there", "UPPER", "Mixed Case"]
NAMES = ["Ann", "Bob", "Chloé", "Dmitri", "Eve O'Neil", "Fatima", "Gus", "Hana", "Ivan"]
CITIES = ["Berlin", " Paris", "Lyon ", "  Oslo  ", "Rome", "Cairo", "Lima", None]


# ---------------------------------------------------------------- source access

class Source:
    """The workload's own connection to the source: statements as one transaction."""

    def __init__(self, db: Any) -> None:
        self.kind = db.kind
        self.conn = db.connect()

    def tx(self, statements: list[tuple[str, tuple[Any, ...] | None]]) -> None:
        if self.kind == "postgresql":
            with self.conn.transaction(), self.conn.cursor() as cur:
                for sql, params in statements:
                    cur.execute(sql, params)
            return
        self.conn.begin()
        try:
            with self.conn.cursor() as cur:
                for sql, params in statements:
                    cur.execute(sql, params)
            self.conn.commit()
        except BaseException:
            self.conn.rollback()
            raise

    def rows(self, table: str) -> list[dict[str, Any]]:
        with self.conn.cursor() as cur:
            cur.execute(f"SELECT * FROM {table}")  # the test's own fixed table names
            names = [d[0] for d in cur.description]
            return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

    def ids(self, table: str) -> list[int]:
        with self.conn.cursor() as cur:
            cur.execute(f"SELECT id FROM {table} ORDER BY id")
            return [int(r[0]) for r in cur.fetchall()]

    def close(self) -> None:
        self.conn.close()


# ---------------------------------------------------------------- the workload

Stmt = tuple[str, tuple[Any, ...] | None]


@dataclass
class Workload:
    """Seeded random ops; every write sets ``rev`` to its statement number."""

    rng: random.Random
    src: Source
    families: frozenset[str]
    log: list[str] = field(default_factory=list)
    seq: int = 0
    next_order: int = 1
    next_customer: int = 1
    note_col: str = "note"
    extra_col: bool = False
    orders: list[int] = field(default_factory=list)
    customers: list[int] = field(default_factory=list)

    def stmt(self, sql: str, *params: Any) -> Stmt:
        self.seq += 1
        return sql.replace("{rev}", str(self.seq)), params or None

    # values
    def note(self) -> str | None:
        r = self.rng
        return None if r.random() < 0.1 else " ".join(r.choice(WORDS) for _ in range(r.randint(1, 3)))

    def amount(self) -> Decimal | None:
        return None if self.rng.random() < 0.05 else Decimal(self.rng.randint(-500, 999999)) / 100

    def status(self) -> int:
        r = self.rng
        return r.choice([CANCELLED, UNMAPPED]) if r.random() < 0.15 else r.choice(list(STATUS_LABELS))

    def customer_ref(self) -> int | None:
        r = self.rng
        if r.random() < 0.05 or not self.customers:
            return None if r.random() < 0.5 else r.randint(1, self.next_customer + 5)
        return r.choice(self.customers)

    def order_id(self) -> int:
        return self.rng.choice(self.orders) if self.orders else self.rng.randint(1, self.next_order)

    def customer_id(self) -> int:
        return self.rng.choice(self.customers) if self.customers else \
            self.rng.randint(1, self.next_customer)

    def fresh_or_reused(self, table: str) -> int:
        """A free id: new, or one the table once had (a re-insert of a deleted key)."""
        used, nxt = (self.orders, self.next_order) if table == "orders" else \
            (self.customers, self.next_customer)
        if nxt > 2 and self.rng.random() < 0.3:
            taken = set(used)
            for _ in range(5):
                cand = self.rng.randint(1, nxt - 1)
                if cand not in taken:
                    return cand
        if table == "orders":
            self.next_order += 1
        else:
            self.next_customer += 1
        return nxt

    def id_range(self, ids: list[int]) -> tuple[int, int]:
        if not ids:
            return 1, 3
        a = self.rng.choice(ids)
        return a, a + self.rng.randint(1, 12)

    # statements
    def insert_orders(self, n: int, customer: int | None = None) -> Stmt:
        cols = ["id", "customer_id", "status", "amount"] + \
            ([self.note_col] if self.note_col else []) + (["extra"] if self.extra_col else [])
        values, params = [], []
        taken = set(self.orders)
        for _ in range(n):
            oid = self.fresh_or_reused("orders")
            while oid in taken:
                oid = self.fresh_or_reused("orders")
            taken.add(oid)
            row = [oid, customer if customer is not None else self.customer_ref(), self.status(),
                   self.amount()] + [self.note() for _ in cols[4:]]
            values.append("(" + ", ".join(["%s"] * len(row)) + ", {rev})")
            params.extend(row)
        return self.stmt(f"INSERT INTO orders ({', '.join(cols)}, rev) VALUES {', '.join(values)}",
                         *params)

    def insert_customers(self, n: int) -> tuple[Stmt, list[int]]:
        values, params, ids = [], [], []
        taken = set(self.customers)
        for _ in range(n):
            cid = self.fresh_or_reused("customers")
            while cid in taken:
                cid = self.fresh_or_reused("customers")
            taken.add(cid)
            ids.append(cid)
            values.append("(%s, %s, %s, {rev})")
            params.extend([cid, self.rng.choice(NAMES), self.rng.choice(CITIES)])
        return self.stmt(f"INSERT INTO customers (id, name, city, rev) VALUES {', '.join(values)}",
                         *params), ids

    def order_set_clause(self) -> tuple[str, list[Any]]:
        """SET for a non-key update of orders (always at least one value column)."""
        r = self.rng
        sets, params = [], []
        choices = ["amount", "customer_id"] + ([self.note_col] if self.note_col else []) + \
            (["extra"] if self.extra_col else [])
        for col in r.sample(choices, r.randint(1, len(choices))):
            sets.append(f"{col} = %s")
            params.append(self.amount() if col == "amount" else
                          self.customer_ref() if col == "customer_id" else self.note())
        return ", ".join(sets), params

    # ---- op families: each op is a list of statements run as one transaction

    def op_dml(self) -> list[Stmt]:
        r = self.rng
        k = r.choices(["ins_o", "upd_o", "upd_range", "relabel", "ins_c", "upd_c", "mixed"],
                      [4, 4, 2, 1, 2, 2, 2])[0]
        if k == "ins_o" or not self.orders:
            return [self.insert_orders(r.randint(1, 6))]
        if k == "upd_o":
            sets, params = self.order_set_clause()
            return [self.stmt(f"UPDATE orders SET {sets}, rev = {{rev}} WHERE id = %s",
                              *params, self.order_id())]
        if k == "upd_range":
            a, b = self.id_range(self.orders)
            return [self.stmt("UPDATE orders SET amount = amount + 1.25, rev = {rev}"
                              " WHERE id BETWEEN %s AND %s", a, b)]
        if k == "relabel":  # a different lookup row, still inside the rule
            a, b = self.id_range(self.orders)
            return [self.stmt("UPDATE orders SET status = CASE WHEN status < 7 THEN status + 1"
                              " ELSE 0 END, rev = {rev} WHERE id BETWEEN %s AND %s AND status < 8",
                              a, b)]
        if k == "ins_c" or not self.customers:
            return [self.insert_customers(r.randint(1, 3))[0]]
        if k == "upd_c":
            col = r.choice(["name", "city"])
            value = r.choice(NAMES) + r.choice(["", " Jr"]) if col == "name" else r.choice(CITIES)
            return [self.stmt(f"UPDATE customers SET {col} = %s, rev = {{rev}} WHERE id = %s",
                              value, self.customer_id())]
        # One transaction over both tables: a new customer with orders, another order changed.
        ins, ids = self.insert_customers(1)
        stmts = [ins, self.insert_orders(r.randint(1, 3), customer=ids[0])]
        sets, params = self.order_set_clause()
        stmts.append(self.stmt(f"UPDATE orders SET {sets}, rev = {{rev}} WHERE id = %s",
                               *params, self.order_id()))
        stmts.append(self.stmt("UPDATE customers SET name = CONCAT(name, '+'), rev = {rev}"
                               " WHERE id = %s", self.customer_id()))
        return stmts

    def op_delete(self) -> list[Stmt]:
        r = self.rng
        k = r.choices(["one", "range", "by_customer", "customer", "customers"], [3, 1, 1, 1, 1])[0]
        if k == "one":
            return [self.stmt("DELETE FROM orders WHERE id = %s", self.order_id())]
        if k == "range":
            a, b = self.id_range(self.orders)
            return [self.stmt("DELETE FROM orders WHERE id BETWEEN %s AND %s", a, min(b, a + 5))]
        if k == "by_customer":
            return [self.stmt("DELETE FROM orders WHERE customer_id = %s", self.customer_id())]
        if k == "customer":  # a customer and its orders, one transaction
            cid = self.customer_id()
            return [self.stmt("DELETE FROM orders WHERE customer_id = %s", cid),
                    self.stmt("DELETE FROM customers WHERE id = %s", cid)]
        a, b = self.id_range(self.customers)
        return [self.stmt("DELETE FROM customers WHERE id BETWEEN %s AND %s", a, min(b, a + 3))]

    def op_pk_change(self) -> list[Stmt]:
        r = self.rng
        k = r.choices(["move", "shift", "swap", "customer"], [3, 1, 1, 1])[0]
        if k == "move" or len(self.orders) < 2:
            new = self.fresh_or_reused("orders")
            while new in self.orders:
                new = self.fresh_or_reused("orders")
            return [self.stmt("UPDATE orders SET id = %s, rev = {rev} WHERE id = %s",
                              new, self.order_id())]
        if k == "shift":  # a range of keys moved above every key in use
            a, b = self.id_range(self.orders)
            shift = max(self.next_order, b + 1) - a
            self.next_order = b + shift + 1
            return [self.stmt("UPDATE orders SET id = id + %s, rev = {rev}"
                              " WHERE id BETWEEN %s AND %s", shift, a, b)]
        if k == "swap":  # two rows exchange keys through a temporary one, one transaction
            x, y = r.sample(self.orders, 2)
            tmp = self.next_order + 1000000
            return [self.stmt("UPDATE orders SET id = %s, rev = {rev} WHERE id = %s", tmp, x),
                    self.stmt("UPDATE orders SET id = %s, rev = {rev} WHERE id = %s", x, y),
                    self.stmt("UPDATE orders SET id = %s, rev = {rev} WHERE id = %s", y, tmp)]
        new = self.fresh_or_reused("customers")
        while new in self.customers:
            new = self.fresh_or_reused("customers")
        return [self.stmt("UPDATE customers SET id = %s, rev = {rev} WHERE id = %s",
                          new, self.customer_id())]

    def op_filter_exit(self) -> list[Stmt]:
        r = self.rng
        k = r.choices(["leave", "unmapped", "enter", "leave_range", "bounce"], [3, 1, 3, 1, 1])[0]
        if k in ("leave", "unmapped"):
            return [self.stmt("UPDATE orders SET status = %s, rev = {rev} WHERE id = %s",
                              CANCELLED if k == "leave" else UNMAPPED, self.order_id())]
        if k == "enter":
            a, b = self.id_range(self.orders)
            return [self.stmt("UPDATE orders SET status = %s, rev = {rev}"
                              " WHERE id BETWEEN %s AND %s AND status >= 8",
                              r.choice(list(STATUS_LABELS)), a, b + 10)]
        if k == "leave_range":
            a, b = self.id_range(self.orders)
            return [self.stmt("UPDATE orders SET status = %s, rev = {rev}"
                              " WHERE id BETWEEN %s AND %s", CANCELLED, a, min(b, a + 4))]
        # Out and back in (or in and out) inside one transaction.
        oid, first, then = self.order_id(), CANCELLED, r.choice(list(STATUS_LABELS))
        if r.random() < 0.5:
            first, then = then, CANCELLED
        return [self.stmt("UPDATE orders SET status = %s, rev = {rev} WHERE id = %s", first, oid),
                self.stmt("UPDATE orders SET status = %s, rev = {rev} WHERE id = %s", then, oid)]

    def op_truncate_refill(self) -> list[list[Stmt]]:
        table = self.rng.choice(["orders", "customers"])
        self.log.append(f"-- TRUNCATE {table}")
        self.seq += 1
        refill: list[Stmt] = []
        if table == "orders":
            self.orders = []
            refill.append(self.insert_orders(self.rng.randint(3, 8)))
        else:
            self.customers = []
            refill.append(self.insert_customers(self.rng.randint(2, 4))[0])
        return [[(f"TRUNCATE {table}", None)], refill]

    def random_op(self) -> list[Stmt]:
        weights = {"dml": 10, "delete": 3, "pk_change": 2, "filter_exit": 3}
        fams = [f for f in weights if f in self.families]
        fam = self.rng.choices(fams, [weights[f] for f in fams])[0]
        return {"dml": self.op_dml, "delete": self.op_delete, "pk_change": self.op_pk_change,
                "filter_exit": self.op_filter_exit}[fam]()

    def run(self, statements: list[Stmt]) -> None:
        self.log.append("BEGIN; " + " ; ".join(
            s if p is None else f"{s} -- {list(p)}" for s, p in statements) + " ; COMMIT")
        self.src.tx(statements)
        self.refresh()

    def refresh(self) -> None:
        self.orders = self.src.ids("orders")
        self.customers = self.src.ids("customers")


# ---------------------------------------------------------------- the harness

def seeds_for(config: pytest.Config, direction: Direction) -> list[int]:
    chosen = list(config.getoption("seed") or [])
    n = config.getoption("seeds")
    if n:
        chosen += list(range(1, n + 1))
    return chosen or list(CI_SEEDS[direction.id])


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "direction" in metafunc.fixturenames:
        cases = [(d, s) for d in DIRECTIONS for s in seeds_for(metafunc.config, d)]
        metafunc.parametrize(("direction", "seed"), cases,
                             ids=[f"{d.id}-seed{s}" for d, s in cases])


def families_for(config: pytest.Config, direction: Direction) -> frozenset[str]:
    opt = config.getoption("families")
    if not opt:
        return frozenset(CI_FAMILIES[direction.id])
    if opt == "all":
        return frozenset(ALL_FAMILIES)
    fams = frozenset(f.strip() for f in opt.split(",") if f.strip())
    unknown = fams - set(ALL_FAMILIES)
    if unknown:
        raise pytest.UsageError(f"--families: unknown {sorted(unknown)}; known: {ALL_FAMILIES}")
    return fams | {"dml"} | ({"ddl"} if "ddl_kill" in fams else set())


@dataclass
class Pair:
    direction: Direction
    src_db: Any
    tgt_db: Any
    cfg: Path
    tmp: Path


@pytest.fixture
def pair(direction: Direction, seed: int, tmp_path: Path, make_mysql_db: Callable[[], Any],
         make_pg_db: Callable[[], Any]) -> Iterator[Pair]:
    src = make_mysql_db() if direction.source == "mysql" else make_pg_db()
    tgt = make_mysql_db() if direction.target == "mysql" else make_pg_db()
    for ddl in SOURCE_DDL[direction.source]:
        src.execute(ddl)
    if direction.identity == "full":
        src.execute("ALTER TABLE orders REPLICA IDENTITY FULL")
        src.execute("ALTER TABLE customers REPLICA IDENTITY FULL")
    for ddl in TARGET_DDL[direction.target]:
        tgt.execute(ddl)
    for code, label in STATUS_LABELS.items():
        tgt.execute("INSERT INTO crm_status_map (code, label) VALUES (%s, %s)", (code, label))
    cfg = write_pipeline(tmp_path, src.url, tgt.url, rule_sql(direction.source, "UPPER(o.note)"),
                         extra=pipeline_extra(seed), name=f"diff_{src.name}")
    cdc("setup", "-c", str(cfg))
    try:
        yield Pair(direction, src, tgt, cfg, tmp_path)
    finally:
        if direction.source == "postgresql":  # a leftover slot pins WAL on the shared server
            from cdc.sources.postgres import PostgresSource

            c = load(cfg)
            PostgresSource(c.source.libpq(), slot=c.slot, publication=c.publication,
                           tables=["orders", "customers"]).teardown()


class Daemon:
    """`cdc run` that must not die on its own; SIGHUP waits for the reload."""

    def __init__(self, cfg: Path, log: Path) -> None:
        self.proc = DaemonProcess(cfg, log)
        self.log = log
        self.up = False

    def tail(self, n: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""

    def check_alive(self) -> None:
        p = self.proc.proc
        if self.up and p is not None and p.poll() is not None:
            raise AssertionError(f"cdc run exited {p.returncode} on its own:\n{self.tail()}")

    def start(self) -> None:
        self.proc.start()
        self.up = True

    def kill9(self) -> None:
        self.check_alive()
        self.proc.kill9()
        self.up = False

    def wait_streaming(self) -> None:
        """Until the daemon has started streaming (past its start-up checks)."""
        deadline = time.monotonic() + 60
        while self.tail(10**9).count("streaming pipeline") <= self.proc.streams_before:
            self.check_alive()
            assert time.monotonic() < deadline, f"not streaming within 60 s:\n{self.tail()}"
            time.sleep(0.05)

    def reload(self) -> None:
        import signal

        self.check_alive()
        before = self.tail(10**9).count("reloaded ")
        assert self.proc.proc is not None
        self.wait_streaming()  # a SIGHUP during Python's own startup would kill it
        self.proc.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 60
        while self.tail(10**9).count("reloaded ") <= before:
            self.check_alive()
            assert "reload rejected" not in self.tail(2000), self.tail()
            assert time.monotonic() < deadline, f"no reload within 60 s:\n{self.tail()}"
            time.sleep(0.1)

    def stop(self) -> None:
        self.check_alive()
        if self.up:
            code = self.proc.terminate()
            self.up = False
            assert code == 0, f"cdc run exited {code} on SIGTERM:\n{self.tail()}"


def caught_up(pair: Pair, daemon: Daemon, timeout: float = 120) -> dict[str, Any]:
    def failed() -> BaseException | None:
        try:
            daemon.check_alive()
        except AssertionError as e:
            return e
        return None

    wait_caught_up(load(pair.cfg), timeout, failed)
    time.sleep(0.3)
    return wait_caught_up(load(pair.cfg), timeout, failed)


def target_rows(db: Any) -> tuple[dict[str, Row], dict[str, Row]]:
    orders = {r[0]: tuple(r[1:]) for r in db.query(
        "SELECT order_no, customer_id, status_label, amount, note FROM crm_orders")}
    customers = {r[0]: tuple(r[1:]) for r in db.query(
        "SELECT customer_no, name, city FROM crm_customers")}
    return orders, customers


@dataclass
class Schedule:
    """Which op index does what besides a random op (all drawn from the seed)."""

    n_ops: int
    ddl: dict[int, str] = field(default_factory=dict)
    truncates: set[int] = field(default_factory=set)
    kills: dict[int, int] = field(default_factory=dict)   # op index -> ops while down

    @classmethod
    def draw(cls, rng: random.Random, families: frozenset[str]) -> Schedule:
        n = rng.randint(130, 180)
        s = cls(n)
        window: set[int] = set()
        if "ddl" in families:
            # The change late in the workload, so that later writes do not
            # happen to overwrite every row written between change and fix.
            add = rng.randint(n // 3, n // 2)
            scratch = rng.randint(add + 2, add + 20)
            change = n - rng.randint(18, 25)
            fix = change + rng.randint(4, 10)
            s.ddl = {add: "add_extra", scratch: "add_scratch",
                     rng.randint(scratch + 3, change - 3): "drop_scratch",
                     change: rng.choice(["rename", "drop"]), fix: "fix"}
            window = set(range(change - 1, fix + 2))
            if "ddl_kill" in families:  # kill -9 and restart before the rule is fixed
                at = rng.randint(change + 1, fix - 2)
                s.kills[at] = rng.randint(0, fix - at - 2)
        if "truncate" in families:
            s.truncates = set(rng.sample(range(10, n - 5), rng.randint(1, 2)))
        if "kill" in families:
            for i in sorted(rng.sample(range(5, n - 5), rng.randint(2, 4))):
                down = rng.randint(0, 6)
                if not window & set(range(i, i + down + 2)):
                    s.kills.setdefault(i, down)
        return s


def test_differential(pair: Pair, seed: int, request: pytest.FixtureRequest) -> None:
    direction = pair.direction
    families = families_for(request.config, direction)
    rng = random.Random(f"{seed}")
    src = Source(pair.src_db)
    wl = Workload(rng, src, families)
    sched = Schedule.draw(rng, families)
    note = NoteSource()
    daemon = Daemon(pair.cfg, pair.tmp / "run.log")
    restart_at: int | None = None
    what = f"seed {seed}, {direction.id}, families {sorted(families)}"
    statement_log = pair.tmp / "workload.sql"
    try:
        if "snapshot" in families:
            bootstrap(wl, pair)
        else:
            daemon.start()
            daemon.wait_streaming()
            # Some rows first, so that every family has something to act on.
            wl.run([wl.insert_customers(5)[0], wl.insert_orders(15)])
        if not daemon.up:
            daemon.start()
            daemon.wait_streaming()
        for i in range(sched.n_ops):
            if restart_at == i:
                daemon.start()
                restart_at = None
            if i in sched.kills and daemon.up:
                time.sleep(rng.uniform(0, 0.4))
                daemon.kill9()
                wl.log.append("-- kill -9 cdc run")
                restart_at = i + sched.kills[i] + 1
            ddl = sched.ddl.get(i)
            if ddl is not None:
                if not daemon.up:
                    daemon.start()
                    restart_at = None
                # A schema change meets a streaming daemon (a daemon starting
                # after it is checked against the changed schema: another case).
                daemon.wait_streaming()
                run_ddl(ddl, wl, note, pair, daemon)
            if i in sched.truncates:
                for statements in wl.op_truncate_refill():
                    wl.run(statements)
            wl.run(wl.random_op())
            if rng.random() < 0.1:
                time.sleep(rng.uniform(0.01, 0.15))  # let batches close at varied places
        if not daemon.up:
            daemon.start()
        status = caught_up(pair, daemon)
        final_orders, final_customers = src.rows("orders"), src.rows("customers")
        got_orders, got_customers = target_rows(pair.tgt_db)
        daemon.stop()
        verified = cdc("verify", "-c", str(pair.cfg), "--json", check=False)
    finally:
        statement_log.write_text("\n".join(wl.log) + "\n")
        if daemon.up and daemon.proc.proc is not None and daemon.proc.proc.poll() is None:
            daemon.proc.kill9()
        src.close()
    want_orders = expected_orders(final_orders, note)
    want_customers = expected_customers(final_customers)
    problems = diff("crm_orders", want_orders, got_orders) + \
        diff("crm_customers", want_customers, got_customers)
    if note.frozen_before is None:  # verify recomputes every row through today's rule
        problems += verify_disagrees(verified, {"crm_orders": (want_orders, got_orders),
                                                "crm_customers": (want_customers, got_customers)})
    if status["dead_letters"]:
        problems.append(f"{status['dead_letters']} dead letters (the workload makes none)")
    tracebacks = own_tracebacks(daemon.tail(10**9))
    if tracebacks:
        problems.append("tracebacks in the daemon's log:\n" + tracebacks[0])
    if problems:
        pytest.fail(f"{what}: the target differs from the model ({wl.seq} statements, log in"
                    f" {statement_log}; replay with --seed {seed} --families"
                    f" {','.join(sorted(families))}):\n" + "\n".join(problems), pytrace=False)


def verify_disagrees(p: Any, tables: dict[str, tuple[dict[str, Row], dict[str, Row]]]
                     ) -> list[str]:
    """`cdc verify` must count what the model counts: a divergence it does not
    see is as silent as the divergence itself."""
    import json

    from differential_model import normalized

    try:
        reports = json.loads(p.stdout)
    except ValueError:
        return [f"cdc verify --json exited {p.returncode}: {p.stdout[-2000:]}{p.stderr[-2000:]}"]
    out, equal = [], True
    for r in reports:
        exp, act = (normalized(t) for t in tables[r["target_table"]])
        want = {"expected": len(exp), "missing": len(set(exp) - set(act)),
                "different": sum(1 for k in set(exp) & set(act) if exp[k] != act[k]),
                "extra": len(set(act) - set(exp))}
        got = {k: r[k] for k in want}
        equal = equal and want["missing"] == want["different"] == want["extra"] == 0
        if got != want:
            out.append(f"cdc verify on {r['target_table']} says {got}, the model {want}")
    if (p.returncode == 0) != equal:
        out.append(f"cdc verify exited {p.returncode} where the model says "
                   f"{'equal' if equal else 'different'}")
    return out


def bootstrap(wl: Workload, pair: Pair) -> None:
    """Rows that predate the pipeline: `cdc snapshot` in small chunks while the
    source keeps taking writes, then streaming from its hand-over point."""
    import subprocess
    import sys

    from pipeline_helpers import REPO

    for _ in range(4):
        wl.run([wl.insert_customers(3)[0], wl.insert_orders(12)])
    wl.log.append("-- cdc snapshot starts")
    log = pair.tmp / "snapshot.log"
    with open(log, "wb") as fh:
        snap = subprocess.Popen([sys.executable, "-m", "cdc", "snapshot", "-c", str(pair.cfg),
                                 "--chunk-rows", "7"], stdout=fh, stderr=fh, cwd=REPO)
    # A fixed number of writes (the seed decides the workload, not the timing);
    # the ones the snapshot outlasts meet it mid-copy.
    for _ in range(wl.rng.randint(15, 30)):
        wl.run(wl.random_op())
        time.sleep(0.05)
    code = snap.wait(timeout=120)
    wl.log.append("-- cdc snapshot done")
    assert code == 0, f"cdc snapshot exited {code}:\n{log.read_text()[-3000:]}"


def run_ddl(step: str, wl: Workload, note: NoteSource, pair: Pair, daemon: Daemon) -> None:
    """One step of the DDL episode. MySQL DDL commits on its own: never in a transaction."""
    kind = pair.direction.source
    text = "text" if kind == "postgresql" else "VARCHAR(200)"
    if step == "add_extra":
        wl.run([(f"ALTER TABLE orders ADD COLUMN extra {text}", None)])
        wl.extra_col = True
    elif step == "rename":
        wl.run([("ALTER TABLE orders RENAME COLUMN note TO memo", None)])
        wl.note_col = "memo"
        wl.log.append("-- the orders rule now reads a column that is gone")
        window_writes(wl)
    elif step == "drop":
        # What the target holds for rows not written again: the note at the drop.
        note.frozen = {r["id"]: r["note"] for r in wl.src.rows("orders")}
        wl.seq += 1
        note.frozen_before = wl.seq
        wl.run([("ALTER TABLE orders DROP COLUMN note", None)])
        wl.note_col = ""
        wl.log.append("-- the orders rule now reads a column that is gone")
        window_writes(wl)
    elif step == "fix":
        # The DBA sees the change through, then fixes the rule and reloads.
        caught_up(pair, daemon)
        expr = "UPPER(o.memo)" if wl.note_col == "memo" else "UPPER(o.extra)"
        note.column = "memo" if wl.note_col == "memo" else "extra"
        rules = rule_sql(kind, expr)
        rules_dir = pair.cfg.parent / "rules"
        for name, body in rules.items():
            (rules_dir / f"{name}.sql").write_text(body)
        wl.log.append(f"-- rule fixed: note = {expr}; SIGHUP")
        daemon.reload()
    elif step == "add_scratch":
        wl.run([("ALTER TABLE orders ADD COLUMN scratch integer", None)])
    elif step == "drop_scratch":
        wl.run([("ALTER TABLE orders DROP COLUMN scratch", None)])


def window_writes(wl: Workload) -> None:
    """Writes right after a column the rule reads is gone: new rows and a range."""
    wl.run([wl.insert_orders(wl.rng.randint(4, 6))])
    a, b = wl.id_range(wl.orders)
    col = wl.note_col or "extra"
    wl.run([wl.stmt(f"UPDATE orders SET {col} = CONCAT('w ', COALESCE({col}, '')), rev = {{rev}}"
                    " WHERE id BETWEEN %s AND %s", a, b)])
