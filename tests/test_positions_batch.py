"""Positions and batch layout: pure values, no servers."""

from __future__ import annotations

from cdc.batch import Batch, stage_rows
from cdc.events import RowChange, Transaction
from cdc.positions import BinlogPosition, Lsn, decode_position


def test_position_round_trip_and_order() -> None:
    b = BinlogPosition("mysql-bin.000012", 4711)
    assert decode_position(b.encode()) == b
    assert BinlogPosition("mysql-bin.000009", 99999).sort_key() < b.sort_key()
    lsn = Lsn.parse("16/B374D848")
    assert str(lsn) == "16/B374D848"
    assert decode_position(lsn.encode()) == lsn
    assert Lsn.parse("0/10") < Lsn.parse("1/0")


def test_stage_rows_orders_old_before_new() -> None:
    changes = [
        RowChange("t", "I", None, {"id": 1, "v": "a"}),
        RowChange("t", "U", {"id": 1, "v": "a"}, {"id": 2, "v": "b"}),
        RowChange("t", "D", {"id": 2, "v": "b"}, None, partial_before=True),
    ]
    rows = stage_rows(changes, ["id", "v"], [None, str.upper])
    assert rows == [
        (1, "A", 3, "N", False),
        (1, "A", 4, "O", False),
        (2, "B", 5, "N", False),
        (2, "B", 6, "O", True),
    ]
    seqs = [r[2] for r in rows]
    assert seqs == sorted(seqs)


def test_batch_keeps_transactions_whole() -> None:
    b = Batch()
    b.add(Transaction([RowChange("a", "I", None, {"x": 1})] * 3, BinlogPosition("f.1", 10)))
    b.add(Transaction([RowChange("b", "I", None, {"x": 1})], BinlogPosition("f.1", 20)))
    assert b.rows == 4 and len(b) == 2
    assert b.position == BinlogPosition("f.1", 20)
    assert {k: len(v) for k, v in b.changes_by_table().items()} == {"a": 3, "b": 1}


def test_decoder_wire_format_round_trips() -> None:
    from cdc.reader import pack, unpack

    tx = Transaction([
        RowChange("t", "I", None, {"a": 1, "b": "中文"}),
        RowChange("t", "U", {"a": 1, "b": "x"}, {"a": 3, "b": None}),
        RowChange("u", "D", {"x": 1}, None, partial_before=True),
        RowChange("t", "I", None, {"a": 1}),  # a narrower image (after a DDL)
        RowChange("t", "U", {"a": 1}, {"a": 3, "b": 4}, partial_before=True),
    ], BinlogPosition("f.000001", 5), heartbeat=False)
    assert unpack(pack(tx)) == tx


def test_mysql_staging_literals_match_pymysql() -> None:
    """The MySQL target builds its multi-row INSERT text itself for speed; every
    value must come out exactly as pymysql's own escaping writes it."""
    import datetime as dt
    from decimal import Decimal

    import pymysql.converters as conv

    from cdc.targets.mysql import _literal

    values = ["", "plain", "quote ' and \" and \\ back", "nl\n cr\r nul\0 ctrl-z\x1a",
              "王小明 😀 é", "%s %(x)s {}", 0, -1, 2**63, -(2**63), None, True, False,
              Decimal("1.50"), Decimal("-0E-30"), Decimal("1E+5"),
              Decimal("12345678901234567890123456789012345.123456789012345678901234567890"),
              1.5, -2.25e-300, b"\x00\xff'\\", dt.date(2024, 2, 29),
              dt.datetime(2024, 2, 29, 23, 59, 59, 999999), dt.datetime(1000, 1, 1),
              dt.timedelta(hours=-838, minutes=-59), dt.time(12, 34, 56, 789)]

    def literal(v: object) -> str:
        return str(conv.escape_item(v, "utf8mb4"))

    for v in values:
        assert _literal(v, literal) == literal(v), repr(v)
