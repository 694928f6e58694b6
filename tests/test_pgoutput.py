"""The pgoutput decoder on payloads captured from PostgreSQL 15.

The fixtures under tests/fixtures/pgoutput/ were produced by capture.py there:
``<scenario>.txt`` holds one message per line (``lsn``, ``xid`` and hex payload
as pg_logical_slot_peek_binary_changes returned them), ``<scenario>.json`` the
OIDs, xids and commit timestamps the server reported independently.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import math
import struct
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from cdc.events import UNCHANGED
from cdc.positions import Lsn
from cdc.sources import pgoutput
from cdc.sources.pgoutput import (
    Begin,
    Commit,
    Decoder,
    Delete,
    Insert,
    Message,
    Origin,
    ProtocolError,
    Relation,
    RelationColumn,
    StreamCommit,
    StreamStart,
    StreamStop,
    Truncate,
    Type,
    Update,
)

FIXTURES = Path(__file__).parent / "fixtures" / "pgoutput"


def load(name: str) -> tuple[list[tuple[Lsn, int, bytes]], dict[str, Any]]:
    rows = []
    for line in (FIXTURES / f"{name}.txt").read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        lsn, xid, payload = line.split("\t")
        rows.append((Lsn.parse(lsn), int(xid), bytes.fromhex(payload)))
    meta = json.loads((FIXTURES / f"{name}.json").read_text())
    return rows, meta


def decode_all(name: str) -> tuple[Decoder, list[Any], list[tuple[Lsn, int, bytes]],
                                   dict[str, Any]]:
    rows, meta = load(name)
    dec = Decoder()
    return dec, [dec.decode(payload) for _, _, payload in rows], rows, meta


def commit_time(meta: dict[str, Any], name: str) -> datetime:
    return datetime.fromisoformat(meta["commit_times"][name])


def assert_transaction_frame(msgs: list[Any], rows: list[tuple[Lsn, int, bytes]],
                             meta: dict[str, Any], xact: str) -> None:
    """Begin and Commit of the transaction named ``xact`` agree with each other and the server."""
    xid = meta["xids"][xact]
    idx = [i for i, (_, x, _) in enumerate(rows) if x == xid]
    begin, commit = msgs[idx[0]], msgs[idx[-1]]
    assert isinstance(begin, Begin) and isinstance(commit, Commit)
    assert begin.xid == xid
    assert begin.commit_time == commit.commit_time == commit_time(meta, xact)
    assert begin.commit_time.tzinfo is not None
    assert begin.final_lsn == commit.commit_lsn
    assert commit.end_lsn > commit.commit_lsn
    # The SQL interface reports the end of the commit record as the Commit's lsn.
    assert Lsn(commit.end_lsn) == rows[idx[-1]][0]
    assert commit.flags == 0


# --- the typed table ------------------------------------------------------------


def test_types_begin_type_relation_commit() -> None:
    dec, msgs, rows, meta = decode_all("types")
    kinds = [type(m).__name__ for m in msgs]
    assert kinds == ["Begin", "Type", "Relation", "Insert", "Insert", "Commit",
                     "Begin", "Update", "Commit", "Begin", "Update", "Commit",
                     "Begin", "Delete", "Commit"]
    for xact in ("insert", "update", "update_key", "delete"):
        assert_transaction_frame(msgs, rows, meta, xact)

    assert msgs[1] == Type(meta["type_oids"]["mood"], "public", "mood")
    rel = msgs[2]
    assert isinstance(rel, Relation)
    assert rel.oid == meta["oids"]["typed"]
    assert (rel.namespace, rel.name, rel.replica_identity) == ("public", "typed", "d")
    assert rel.qualified_name == "typed"
    assert [c.name for c in rel.columns] == [
        "id", "name", "amount", "nan", "created", "born", "at", "data", "tags", "ids", "uid",
        "raw", "dur", "mood", "f", "flag", "big", "ip", "t", "nothing"]
    assert [c.type_oid for c in rel.columns] == [
        23, 25, 1700, 1700, 1184, 1082, 1114, 3802, 1009, 1007, 2950, 17, 1186,
        meta["type_oids"]["mood"], 701, 16, 20, 869, 1083, 25]
    assert [c.key for c in rel.columns] == [True] + [False] * 19
    # numeric(12,2): ((12 << 16) | 2) + VARHDRSZ
    assert rel.columns[2] == RelationColumn(0, "amount", 1700, (12 << 16 | 2) + 4)
    assert rel.columns[1].typmod == -1
    assert dec.type(meta["type_oids"]["mood"]) == msgs[1]


def test_types_raw_tuple_text() -> None:
    _, msgs, _, meta = decode_all("types")
    ins = msgs[3]
    assert isinstance(ins, Insert)
    assert ins.relation_oid == meta["oids"]["typed"] and ins.xid is None
    # The peek session ran with TimeZone Asia/Kolkata: text carries that offset.
    assert ins.new == (
        b"1", 'Zo\u00eb "q"\ttab'.encode(), b"1234.50", b"NaN",
        b"2024-02-29 18:44:15.123456+05:30", b"2024-02-29", b"1999-12-31 23:59:59",
        b'{"a": [1, 2.5, null], "b": "x"}', b'{a,NULL,"b c"}', b"{1,2,3}",
        b"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", b"\\x00ff10", b"1 day 02:03:04.5", b"happy",
        b"Infinity", b"t", b"9223372036854775807", b"10.1.2.3", b"12:34:56", None)


def test_types_values_converted() -> None:
    dec, msgs, _, meta = decode_all("types")
    info = dec.relation(meta["oids"]["typed"])
    assert info.table == "typed" and info.key_names == ("id",)
    row1 = dec.row(info, msgs[3].new)
    assert row1 == {
        "id": 1,
        "name": 'Zo\u00eb "q"\ttab',
        "amount": Decimal("1234.50"),
        "nan": row1["nan"],
        "created": datetime(2024, 2, 29, 13, 14, 15, 123456, tzinfo=UTC),
        "born": date(2024, 2, 29),
        "at": datetime(1999, 12, 31, 23, 59, 59),
        "data": '{"a": [1, 2.5, null], "b": "x"}',  # JSON stays its text (cdc.sources.pgjson)
        "tags": ["a", None, "b c"],
        "ids": [1, 2, 3],
        "uid": UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
        "raw": b"\x00\xff\x10",
        "dur": timedelta(days=1, hours=2, minutes=3, seconds=4.5),
        "mood": "happy",  # an enum: no loader for its OID, kept as text
        "f": math.inf,
        "flag": True,
        "big": 9223372036854775807,
        "ip": ipaddress.ip_address("10.1.2.3"),
        "t": time(12, 34, 56),
        "nothing": None,
    }
    assert isinstance(row1["nan"], Decimal) and row1["nan"].is_nan()
    assert row1["created"].tzinfo is not None and row1["created"].utcoffset() == timedelta(0)
    assert type(row1["raw"]) is bytes

    row2 = dec.row(info, msgs[4].new)
    assert row2["amount"] == Decimal("-0.01")
    assert row2["nan"] == Decimal("-1E-20")
    # Values psycopg cannot represent stay as their text rather than stop the stream.
    assert row2["created"] == "infinity" and row2["born"] == "-infinity"
    assert row2["at"] == datetime(2000, 1, 1)
    assert row2["tags"] == [] and row2["ids"] is None and row2["raw"] == b""
    assert row2["dur"] == timedelta(days=-90)
    assert math.isnan(row2["f"]) and row2["flag"] is False
    assert row2["ip"] == ipaddress.ip_address("::1") and row2["t"] == time(0, 0)


def test_update_with_default_identity_has_no_old_tuple() -> None:
    dec, msgs, _, meta = decode_all("types")
    upd = msgs[7]
    assert isinstance(upd, Update)
    assert upd.old_kind is None and upd.old is None
    info = dec.relation(upd.relation_oid)
    after = dec.row(info, upd.new)
    assert (after["id"], after["name"], after["amount"]) == (1, "renamed", Decimal("7.00"))
    assert dec.key_row(info, upd.new) == {"id": 1}


def test_update_of_key_and_delete_send_key_tuple() -> None:
    dec, msgs, _, _ = decode_all("types")
    upd, dele = msgs[10], msgs[13]
    assert isinstance(upd, Update) and isinstance(dele, Delete)
    assert upd.old_kind == "K"
    assert upd.old == (b"2",) + (None,) * 19  # non-key columns are sent as NULL
    info = dec.relation(upd.relation_oid)
    assert dec.key_row(info, upd.old) == {"id": 2}
    assert dec.row(info, upd.new)["id"] == 3
    assert dele.old_kind == "K" and dele.old == (b"3",) + (None,) * 19
    assert dec.key_row(info, dele.old) == {"id": 3}


# --- replica identity ------------------------------------------------------------


def test_replica_identity_full_vs_default() -> None:
    dec, msgs, rows, meta = decode_all("full")
    assert [type(m).__name__ for m in msgs] == [
        "Begin", "Relation", "Update", "Relation", "Update", "Update", "Delete", "Delete",
        "Commit"]
    assert_transaction_frame(msgs, rows, meta, "changes")
    full, default = msgs[1], msgs[3]
    assert (full.oid, full.replica_identity) == (meta["oids"]["full_t"], "f")
    assert all(c.key for c in full.columns)  # FULL marks every column
    assert (default.oid, default.replica_identity) == (meta["oids"]["default_t"], "d")
    assert [c.key for c in default.columns] == [True, True, False]

    u1, u2, u3, d1, d2 = msgs[2], msgs[4], msgs[5], msgs[6], msgs[7]
    assert (u1.old_kind, u1.old, u1.new) == ("O", (b"1", b"one", b"10"), (b"1", b"one", b"11"))
    assert (u2.old_kind, u2.old, u2.new) == (None, None, (b"1", b"x", b"11"))
    assert (u3.old_kind, u3.old, u3.new) == ("O", (b"1", b"one", b"11"), (b"1", None, b"11"))
    assert (d1.old_kind, d1.old) == ("O", (b"1", None, b"11"))
    assert (d2.old_kind, d2.old) == ("K", (b"1", b"x", None))
    finfo, dinfo = dec.relation(full.oid), dec.relation(default.oid)
    assert dec.row(finfo, u1.old) == {"id": 1, "v": "one", "n": 10}
    assert dec.key_row(dinfo, u2.new) == {"a": 1, "b": "x"}
    assert dec.key_row(dinfo, d2.old) == {"a": 1, "b": "x"}


# --- TOAST -------------------------------------------------------------------------


def test_unchanged_toast_value() -> None:
    dec, msgs, rows, meta = decode_all("toast")
    for xact in ("update_other", "update_big"):
        assert_transaction_frame(msgs, rows, meta, xact)
    ins, upd, upd_big = msgs[2], msgs[5], msgs[8]
    info = dec.relation(meta["oids"]["toasty"])
    inserted = dec.row(info, ins.new)
    assert hashlib.sha256(inserted["big"].encode()).hexdigest() == meta["toast_value_sha"]
    assert len(inserted["big"]) == 10_000
    assert upd.new == (b"1", UNCHANGED, b"2")
    assert dec.row(info, upd.new) == {"id": 1, "big": UNCHANGED, "n": 2}
    assert dec.row(info, upd_big.new) == {"id": 1, "big": "small", "n": 2}


# --- a table altered between transactions -------------------------------------------


def test_relation_changed_mid_stream() -> None:
    dec = Decoder()
    rows, meta = load("altered")
    oid = meta["oids"]["shape"]
    converted = []
    relations = []
    for _, _, payload in rows:
        msg = dec.decode(payload)
        if isinstance(msg, Relation):
            relations.append([(c.name, c.type_oid) for c in msg.columns])
        if isinstance(msg, Insert | Update):
            # Rows are converted as they arrive, each with the shape current then.
            converted.append(dec.row(dec.relation(msg.relation_oid), msg.new))
    assert relations == [[("id", 23), ("a", 25)], [("id", 23), ("b", 1700)],
                         [("id", 23), ("b", 25)]]
    assert converted == [{"id": 1, "a": "x"}, {"id": 2, "b": Decimal("2.25")},
                         {"id": 2, "b": "text now"}]
    assert dec.relation(oid).names == ("id", "b")


# --- truncate, messages, origin ---------------------------------------------------------


def test_truncate() -> None:
    _, msgs, rows, meta = decode_all("truncate")
    for xact in ("both", "cascade", "schema"):
        assert_transaction_frame(msgs, rows, meta, xact)
    truncs = [m for m in msgs if isinstance(m, Truncate)]
    a, b, c = meta["oids"]["tr_a"], meta["oids"]["tr_b"], meta["oids"]["other.tr_c"]
    assert truncs == [Truncate(2, (a, b)), Truncate(1, (a, b)), Truncate(0, (c,))]
    assert truncs[0].restart_identity and not truncs[0].cascade
    assert truncs[1].cascade and not truncs[1].restart_identity
    rel_c = [m for m in msgs if isinstance(m, Relation) and m.oid == c][0]
    assert (rel_c.namespace, rel_c.qualified_name) == ("other", "other.tr_c")


def test_logical_messages() -> None:
    _, msgs, rows, meta = decode_all("message")
    assert_transaction_frame(msgs, rows, meta, "transactional")
    m1, m2, loose = msgs[3], msgs[4], msgs[6]
    assert m1 == Message(True, rows[3][0].value, "cdc_heartbeat", b"2024-01-01 00:00:00+00")
    assert m2 == Message(True, rows[4][0].value, "bin", b"\x00\xff")
    assert loose == Message(False, Lsn.parse(meta["nontransactional_lsn"]).value, "loose",
                            b"not in a transaction")
    assert rows[6][1] == 0  # outside any transaction


def test_origin() -> None:
    _, msgs, rows, meta = decode_all("origin")
    assert [type(m).__name__ for m in msgs] == ["Begin", "Origin", "Relation", "Insert",
                                                 "Commit"]
    assert_transaction_frame(msgs, rows, meta, "with_origin")
    assert msgs[1] == Origin(0xABCDEF, "upstream_a")
    assert msgs[0].commit_time == datetime(2023, 5, 6, 7, 8, 9, tzinfo=UTC)


def test_binary_tuple_values_are_raw_bytes() -> None:
    _, msgs, _, meta = decode_all("binary")
    ins = msgs[2]
    assert isinstance(ins, Insert) and ins.relation_oid == meta["oids"]["bin"]
    assert ins.new == (struct.pack(">i", 258), b"hi", None)


# --- protocol version 2: a streamed in-progress transaction ------------------------------


def test_streamed_transaction_v2() -> None:
    dec, msgs, rows, meta = decode_all("stream")
    xid = meta["xids"]["big"]
    starts = [m for m in msgs if isinstance(m, StreamStart)]
    assert starts[0] == StreamStart(xid, True)
    assert all(s == StreamStart(xid, False) for s in starts[1:]) and len(starts) >= 2
    assert sum(isinstance(m, StreamStop) for m in msgs) == len(starts)
    inserts = [m for m in msgs if isinstance(m, Insert)]
    assert all(m.xid == xid for m in inserts)
    info = dec.relation(meta["oids"]["streamed"])
    assert info.relation.xid == xid
    assert [dec.row(info, m.new)["id"] for m in inserts] == list(range(1, 801))
    end = msgs[-1]
    assert isinstance(end, StreamCommit)
    assert (end.xid, end.flags) == (xid, 0)
    assert end.commit_time == commit_time(meta, "big")
    assert Lsn(end.end_lsn) == rows[-1][0]


# --- hand-built messages and malformed input ----------------------------------------------


def _relation_bytes(oid: int, cols: list[tuple[int, str, int]]) -> bytes:
    out = b"R" + struct.pack(">I", oid) + b"s\0t\0" + b"d" + struct.pack(">h", len(cols))
    for flags, name, type_oid in cols:
        out += bytes([flags]) + name.encode() + b"\0" + struct.pack(">Ii", type_oid, -1)
    return out


def _insert_bytes(oid: int, values: list[bytes | None]) -> bytes:
    out = b"I" + struct.pack(">I", oid) + b"N" + struct.pack(">h", len(values))
    for v in values:
        out += b"n" if v is None else b"t" + struct.pack(">i", len(v)) + v
    return out


def test_alias_type_for_unknown_oid() -> None:
    dec = Decoder()
    rel = dec.decode(_relation_bytes(5, [(1, "id", 23), (0, "d", 99999)]))
    assert isinstance(rel, Relation) and rel.qualified_name == "s.t"
    assert dec.unknown_type_oids(rel) == [99999]
    ins = dec.decode(_insert_bytes(5, [b"1", b"42"]))
    assert dec.row(dec.relation(5), ins.new) == {"id": 1, "d": "42"}
    dec.alias_type(99999, 23)  # e.g. a domain over integer
    assert dec.unknown_type_oids(rel) == []
    assert dec.row(dec.relation(5), ins.new) == {"id": 1, "d": 42}


def test_memoryview_input() -> None:
    payload = _insert_bytes(7, [b"x", None])
    msg = pgoutput.decode(memoryview(payload))
    assert msg == Insert(7, (b"x", None))


@pytest.mark.parametrize("payload", [
    b"",
    b"Z\x00",
    b"B\x00\x00",
    b"I\x00\x00\x00\x05N\x00\x01t\x00\x00\x00\x09ab",  # value runs past the end
    b"I\x00\x00\x00\x05N\x00\x01x",  # unknown column kind
    b"U\x00\x00\x00\x05Q",
    b"D\x00\x00\x00\x05N\x00\x00",
    b"R\x00\x00\x00\x05nonul",
])
def test_malformed_messages_raise(payload: bytes) -> None:
    with pytest.raises(ProtocolError):
        pgoutput.decode(payload)


def test_change_before_relation_and_column_mismatch() -> None:
    dec = Decoder()
    with pytest.raises(ProtocolError, match="before its Relation"):
        dec.relation(5)
    dec.decode(_relation_bytes(5, [(1, "id", 23)]))
    with pytest.raises(ProtocolError, match="columns"):
        dec.row(dec.relation(5), (b"1", b"2"))


def test_row_changes_and_before_images() -> None:
    dec, msgs, _, _ = decode_all("types")
    changes = [dec.row_change(dec.relation(m.relation_oid), m) for m in msgs
               if isinstance(m, Insert | Update | Delete)]
    assert [(c.table, c.op, c.before, c.partial_before) for c in changes] == [
        ("typed", "I", None, False), ("typed", "I", None, False),
        ("typed", "U", {"id": 1}, True),  # key unchanged: taken from the new row
        ("typed", "U", {"id": 2}, True),  # key changed: the old key tuple
        ("typed", "D", {"id": 3}, True)]
    assert changes[2].after is not None and changes[2].after["name"] == "renamed"
    assert changes[4].after is None

    dec, msgs, _, _ = decode_all("full")
    changes = [dec.row_change(dec.relation(m.relation_oid), m) for m in msgs
               if isinstance(m, Insert | Update | Delete)]
    assert [(c.table, c.op, c.before, c.partial_before) for c in changes] == [
        ("full_t", "U", {"id": 1, "v": "one", "n": 10}, False),
        ("default_t", "U", {"a": 1, "b": "x"}, True),
        ("full_t", "U", {"id": 1, "v": "one", "n": 11}, False),
        ("full_t", "D", {"id": 1, "v": None, "n": 11}, False),
        ("default_t", "D", {"a": 1, "b": "x"}, True)]

    dec, msgs, _, _ = decode_all("toast")
    upd = dec.row_change(dec.relation(msgs[5].relation_oid), msgs[5])
    assert (upd.before, upd.after, upd.partial_before) == (
        {"id": 1}, {"id": 1, "big": UNCHANGED, "n": 2}, True)
    assert type(msgs[5].new) is pgoutput.TupleWithUnchanged


@pytest.mark.parametrize("name", ["types", "full", "toast"])
def test_packed_changes_unpack_to_the_same_row_changes(name: str) -> None:
    """The decoder process skips RowChange objects (packed_change); after the
    pipe they must be exactly the changes row_change builds."""
    from cdc.events import Transaction
    from cdc.reader import unpack

    dec, msgs, _, _ = decode_all(name)
    rows = [m for m in msgs if isinstance(m, Insert | Update | Delete)]
    expected = [dec.row_change(dec.relation(m.relation_oid), m) for m in rows]
    cols: dict[str, tuple[str, ...]] = {}
    packed = []
    for m in rows:
        info = dec.relation(m.relation_oid)
        names = cols.setdefault(info.table, info.names)
        packed.append((*dec.packed_change(info, m), None if names == info.names else info.names))
    got = unpack((Lsn(1), None, False, {}, cols, packed))
    assert isinstance(got, Transaction)
    assert repr(got.changes) == repr(expected)  # repr: Decimal('NaN') != itself


# --- COPY text form (PostgreSQL -> PostgreSQL) ----------------------------------


def _text_rows(dec: Decoder, payload: bytes) -> Any:
    from cdc.events import TextRows

    got = dec.copy_change(payload)
    if got is None:
        return None
    info, op, data = got
    return TextRows(info.table, info.names, info.key_index, bytes([op]), data)


@pytest.mark.parametrize("name", ["types", "full", "toast"])
def test_copy_text_reads_back_as_the_same_row_changes(name: str) -> None:
    """Changes that travel as COPY text must read back exactly as the value
    path decodes them; only a row with an unchanged TOAST value stays out."""
    rows, _ = load(name)
    values, text = Decoder(text_values=True), Decoder(text_values=True)
    checked = kept_out = 0
    for _, _, payload in rows:
        msg = values.decode(payload)
        t = _text_rows(text, payload)
        if t is None:
            text.decode(payload)
            if isinstance(msg, Insert | Update | Delete):
                assert type(msg.new if not isinstance(msg, Delete) else msg.old) is \
                    pgoutput.TupleWithUnchanged
                kept_out += 1
            continue
        assert isinstance(msg, Insert | Update | Delete)
        expected = values.row_change(values.relation(msg.relation_oid), msg)
        assert repr(t.changes()) == repr([expected])
        assert t.lines == (2 if isinstance(msg, Update) else 1)
        checked += 1
    assert (checked, kept_out) == {"types": (5, 0), "full": (5, 0), "toast": (2, 1)}[name]


def test_copy_text_escapes_what_copy_would_misread() -> None:
    dec = Decoder(text_values=True)
    dec.decode(_relation_bytes(5, [(1, "id", 23), (0, "a", 25), (0, "b", 25)]))
    odd = [b"tab\there", b"line\nbreak\r", b"back\\slash", b"\\N", b"", None, "\u00e9\u4e2d".encode()]
    for v in odd:
        got = dec.copy_change(_insert_bytes(5, [b"1", v, b"plain"]))
        assert got is not None
        _, op, line = got
        assert op == ord("I")
        fields = line.rstrip(b"\n").split(b"\t")
        assert len(fields) == 5 and fields[3:] == [b"N", b"f"], line
        assert b"\n" not in line[:-1] and b"\r" not in line
        t = _text_rows(dec, _insert_bytes(5, [b"1", v, b"plain"]))
        after = t.changes()[0].after
        assert after == {"id": "1", "a": None if v is None else v.decode(), "b": "plain"}
    # Escaping is the exception: a clean line is recognised as one.
    assert pgoutput._copy_line([b"1", pgoutput.COPY_NULL, b"x y"], 1, b"N\tf\n") == (
        b"1\t\\N\tx y\tN\tf\n", True)
    assert pgoutput._copy_line([b"1", b"\\N", b"x"], 0, b"N\tf\n")[1] is False
    # A real NULL and the two characters \N are different lines.
    null = dec.copy_change(_insert_bytes(5, [b"1", None, b"x"]))
    text = dec.copy_change(_insert_bytes(5, [b"1", b"\\N", b"x"]))
    assert null is not None and text is not None
    assert null[2] == b"1\t\\N\tx\tN\tf\n" and text[2] == b"1\t\\\\N\tx\tN\tf\n"


def test_copy_text_update_without_old_tuple_keeps_key_columns() -> None:
    dec = Decoder(text_values=True)
    dec.decode(_relation_bytes(5, [(1, "id", 23), (0, "a", 25)]))
    upd = b"U" + _insert_bytes(5, [b"7", b"x\ty"])[1:]
    got = dec.copy_change(upd)
    assert got is not None
    assert got[2] == b"7\t\\N\tO\tt\n7\tx\\ty\tN\tf\n"
    # A key of two columns, not leading; with and without escaping.
    dec.decode(_relation_bytes(8, [(0, "x", 25), (1, "a", 23), (0, "y", 25), (1, "b", 25)]))
    for k, escaped in ((b"k", b"k"), (b"k\\", b"k\\\\")):
        got = dec.copy_change(b"U" + _insert_bytes(8, [b"%s", b"1", None, k])[1:])
        assert got is not None
        assert got[2] == (b"\\N\t1\t\\N\t" + escaped + b"\tO\tt\n"
                          b"%s\t1\t\\N\t" + escaped + b"\tN\tf\n")
    # Binary values are not text: such a row takes the value path.
    binary = _insert_bytes(5, [b"7", b"x"]).replace(b"t\0\0\0\x01x", b"b\0\0\0\x01x")
    assert dec.copy_change(binary) is None
    assert dec.copy_change(_relation_bytes(6, [(1, "id", 23)])) is None


def test_text_transactions_materialize_in_source_order() -> None:
    from cdc.batch import Batch
    from cdc.events import RowChange, TextRows, Transaction

    dec = Decoder(text_values=True)
    dec.decode(_relation_bytes(5, [(1, "id", 23), (0, "a", 25)]))
    got = dec.copy_change(_insert_bytes(5, [b"1", b"x"]))
    assert got is not None
    text = TextRows("t", ("id", "a"), (0,), b"I", got[2])
    later = RowChange("t", "D", {"id": "1"}, None, True)
    tx = Transaction([later], Lsn(1), text=[text])
    pure = Transaction([], Lsn(2), text=[TextRows("t", ("id", "a"), (0,), b"I", got[2])])
    b = Batch()
    b.add(pure)
    assert b.rows == 1 and b.text_by_table() == {"t": pure.text}
    b.add(tx)
    assert b.rows == 3
    assert b.text_by_table() is None, "a batch with value changes is not all text"
    assert b.counts_by_table() == {("t", "I"): 2, ("t", "D"): 1}
    ops = [(c.op, c.after) for c in b.changes_by_table()["t"]]
    assert ops == [("I", {"id": "1", "a": "x"}), ("I", {"id": "1", "a": "x"}), ("D", None)]
    assert tx.text is None and tx.changes[-1] is later
