"""Decoder of PostgreSQL's built-in ``pgoutput`` logical replication protocol.

Pure: bytes in, message objects out; no sockets, no connection.  Protocol
version 1 is what the source asks for; the fields version 2 adds inside
streamed (in-progress) transactions are understood too, so a server or a test
that streams large transactions does not break the decoder.

``Decoder`` adds the only state the protocol needs: the last Relation (and
Type) message per OID, which the server re-sends whenever a table's shape
changes, and the text loaders that turn column values into Python objects.

Reference: https://www.postgresql.org/docs/15/protocol-logicalrep-message-formats.html
"""

from __future__ import annotations

import operator
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from psycopg import adapt, postgres
from psycopg.adapt import AdaptersMap
from psycopg.pq import Format

from cdc import names
from cdc.errors import SourceError
from cdc.events import COPY_NULL, UNCHANGED, RowChange
from cdc.sources import pgjson

PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)

_U8 = struct.Struct(">B")
_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_I64 = struct.Struct(">q")
_BEGIN = struct.Struct(">QqI")  # final lsn, commit time, xid
_COMMIT = struct.Struct(">BQQq")  # flags, commit lsn, end lsn, commit time
_MSG_HEAD = struct.Struct(">BQ")  # flags, lsn
_REL_HEAD = struct.Struct(">I")
_COL_TAIL = struct.Struct(">Ii")  # type oid, typmod
_STREAM_START = struct.Struct(">IB")
_STREAM_COMMIT = struct.Struct(">IBQQq")
_STREAM_ABORT = struct.Struct(">II")
_TRUNC_HEAD = struct.Struct(">iB")

# Message kinds that carry a leading xid when sent inside a streamed transaction
# (protocol version 2+).
_XID_IN_STREAM = frozenset(b"RYIUDTM")


class ProtocolError(SourceError):
    """A pgoutput message could not be decoded (truncated, unknown kind...)."""


def pg_time(micros: int) -> datetime:
    """Server timestamps are microseconds since 2000-01-01 UTC."""
    return PG_EPOCH + timedelta(microseconds=micros)


# --- messages -----------------------------------------------------------------


@dataclass(slots=True)
class Begin:
    final_lsn: int
    commit_time: datetime
    xid: int


@dataclass(slots=True)
class Commit:
    flags: int
    commit_lsn: int
    end_lsn: int
    commit_time: datetime


@dataclass(slots=True)
class Origin:
    commit_lsn: int
    name: str


@dataclass(frozen=True, slots=True)
class RelationColumn:
    flags: int
    name: str
    type_oid: int
    typmod: int

    @property
    def key(self) -> bool:
        """Part of the replica identity (every column under REPLICA IDENTITY FULL)."""
        return bool(self.flags & 1)


@dataclass(slots=True)
class Relation:
    oid: int
    namespace: str
    name: str
    replica_identity: str  # 'd' default, 'n' nothing, 'f' full, 'i' index
    columns: tuple[RelationColumn, ...]
    xid: int | None = None

    @property
    def qualified_name(self) -> str:
        """The name as rules write it (cdc.names): bare in ``public``, ``schema.name``
        elsewhere, a part holding a dot or a quote double-quoted."""
        return names.qualified(None if self.namespace in ("public", "") else self.namespace,
                               self.name)


@dataclass(slots=True)
class Type:
    oid: int
    namespace: str
    name: str
    xid: int | None = None


# A decoded column value: None (SQL NULL), UNCHANGED (TOAST value not sent), or
# the raw bytes of the text/binary representation.
TupleData = tuple[Any, ...]


class TupleWithUnchanged(tuple[Any, ...]):
    """TupleData holding at least one UNCHANGED value.

    The type is the flag, so converting the common row needs no scan for it.
    """

    __slots__ = ()


@dataclass(slots=True)
class Insert:
    relation_oid: int
    new: TupleData
    xid: int | None = None


@dataclass(slots=True)
class Update:
    relation_oid: int
    new: TupleData
    # 'K': old replica identity key only (other columns NULL); 'O': whole old row
    # (REPLICA IDENTITY FULL); None: key unchanged under DEFAULT/INDEX identity.
    old_kind: str | None = None
    old: TupleData | None = None
    xid: int | None = None


@dataclass(slots=True)
class Delete:
    relation_oid: int
    old_kind: str
    old: TupleData
    xid: int | None = None


@dataclass(slots=True)
class Truncate:
    options: int
    relation_oids: tuple[int, ...]
    xid: int | None = None

    @property
    def cascade(self) -> bool:
        return bool(self.options & 1)

    @property
    def restart_identity(self) -> bool:
        return bool(self.options & 2)


@dataclass(slots=True)
class Message:
    """A logical decoding message (``pg_logical_emit_message``)."""

    transactional: bool
    lsn: int
    prefix: str
    content: bytes
    xid: int | None = None


@dataclass(slots=True)
class StreamStart:
    xid: int
    first_segment: bool


@dataclass(slots=True)
class StreamStop:
    pass


@dataclass(slots=True)
class StreamCommit:
    xid: int
    flags: int
    commit_lsn: int
    end_lsn: int
    commit_time: datetime


@dataclass(slots=True)
class StreamAbort:
    xid: int
    subxid: int


PgoutputMessage = (Begin | Commit | Origin | Relation | Type | Insert | Update | Delete | Truncate
                   | Message | StreamStart | StreamStop | StreamCommit | StreamAbort)


# --- decoding -----------------------------------------------------------------


def _cstring(buf: bytes, pos: int) -> tuple[str, int]:
    end = buf.index(b"\0", pos)
    return buf[pos:end].decode(), end + 1


def _tuple(buf: bytes, pos: int) -> tuple[TupleData, int]:
    """Read a TupleData; returns the values and the offset after them.

    This is the hot loop of the whole source: one iteration per column of every
    row, so it sticks to indexing, slicing and int.from_bytes.
    """
    ncols = (buf[pos] << 8) | buf[pos + 1]
    pos += 2
    out: list[Any] = []
    append = out.append
    from_bytes = int.from_bytes
    unchanged = False
    for _ in range(ncols):
        kind = buf[pos]
        if kind == 0x74 or kind == 0x62:  # 't' text, 'b' binary
            start = pos + 5
            pos = start + from_bytes(buf[pos + 1:start], "big")
            append(buf[start:pos])
        elif kind == 0x6E:  # 'n'
            append(None)
            pos += 1
        elif kind == 0x75:  # 'u'
            append(UNCHANGED)
            unchanged = True
            pos += 1
        else:
            raise ProtocolError(f"pgoutput: unknown tuple column kind {kind!r} at offset {pos}")
    if pos > len(buf):
        raise ProtocolError("pgoutput: tuple data runs past the end of the message")
    return (TupleWithUnchanged(out) if unchanged else tuple(out)), pos


def _copy_fields(buf: bytes, pos: int) -> tuple[list[bytes] | None, int, int]:
    """Read a TupleData as COPY text fields: (fields, offset after, NULL count).

    NULL becomes the very object ``COPY_NULL``, so escaping can tell it from a
    value that reads ``\\N``.  Fields are None when a value is UNCHANGED or
    binary: such a row takes the value path.
    """
    ncols = (buf[pos] << 8) | buf[pos + 1]
    pos += 2
    out: list[bytes] = []
    append = out.append
    length = _I32.unpack_from
    nulls = 0
    for _ in range(ncols):
        kind = buf[pos]
        if kind == 0x74:  # 't'
            start = pos + 5
            pos = start + length(buf, pos + 1)[0]
            append(buf[start:pos])
        elif kind == 0x6E:  # 'n'
            append(COPY_NULL)
            nulls += 1
            pos += 1
        elif kind == 0x75 or kind == 0x62:  # 'u' unchanged, 'b' binary
            return None, pos, 0
        else:
            raise ProtocolError(f"pgoutput: unknown tuple column kind {kind!r} at offset {pos}")
    if pos > len(buf):
        raise ProtocolError("pgoutput: tuple data runs past the end of the message")
    return out, pos, nulls


# The last fields of a staging line: _cdc_kind, _cdc_partial, and its end.
_NEW_END = b"N\tf\n"
_OLD_END = b"O\tf\n"
_OLD_KEY_END = b"O\tt\n"
# What COPY text must escape inside a value.
_SPECIAL = b"\\\t\n\r"


def _escape(field: bytes) -> bytes:
    if field is COPY_NULL:
        return field
    return (field.replace(b"\\", b"\\\\").replace(b"\t", b"\\t").replace(b"\n", b"\\n")
            .replace(b"\r", b"\\r"))


def _copy_line(fields: list[bytes], nulls: int, end: bytes) -> tuple[bytes, bool]:
    """One staging line: the fields, then ``end``; True when no field needed
    escaping.  The check counts special bytes in the joined line, in C: a
    clean line has only the tabs between fields, the tab and newline of
    ``end`` and the backslash of each NULL."""
    line = b"\t".join(fields) + b"\t" + end
    if len(line) - len(line.translate(None, _SPECIAL)) == len(fields) + 2 + nulls:
        return line, True
    return b"\t".join([*[_escape(f) for f in fields], end]), False


def decode(data: bytes | bytearray | memoryview, *, in_stream: bool = False) -> PgoutputMessage:
    """Decode one pgoutput message (the payload of one XLogData frame).

    ``in_stream`` is true between StreamStart and StreamStop (protocol 2+), where
    data messages carry a leading xid.
    """
    buf = bytes(data) if not isinstance(data, bytes) else data
    if not buf:
        raise ProtocolError("pgoutput: empty message")
    kind = buf[0]
    pos = 1
    xid: int | None = None
    try:
        if in_stream and kind in _XID_IN_STREAM:
            xid = _U32.unpack_from(buf, 1)[0]
            pos = 5
        if kind == 0x49:  # 'I'
            oid = _U32.unpack_from(buf, pos)[0]
            if buf[pos + 4] != 0x4E:
                raise ProtocolError("pgoutput: Insert without a new tuple")
            new, _ = _tuple(buf, pos + 5)
            return Insert(oid, new, xid)
        if kind == 0x55:  # 'U'
            oid = _U32.unpack_from(buf, pos)[0]
            pos += 4
            marker = buf[pos]
            old_kind: str | None = None
            old: TupleData | None = None
            if marker == 0x4B or marker == 0x4F:  # 'K' / 'O'
                old_kind = chr(marker)
                old, pos = _tuple(buf, pos + 1)
                marker = buf[pos]
            if marker != 0x4E:
                raise ProtocolError("pgoutput: Update without a new tuple")
            new, _ = _tuple(buf, pos + 1)
            return Update(oid, new, old_kind, old, xid)
        if kind == 0x44:  # 'D'
            oid = _U32.unpack_from(buf, pos)[0]
            marker = buf[pos + 4]
            if marker != 0x4B and marker != 0x4F:
                raise ProtocolError("pgoutput: Delete without an old tuple")
            old, _ = _tuple(buf, pos + 5)
            return Delete(oid, chr(marker), old, xid)
        if kind == 0x42:  # 'B'
            final_lsn, ts, bxid = _BEGIN.unpack_from(buf, 1)
            return Begin(final_lsn, pg_time(ts), bxid)
        if kind == 0x43:  # 'C'
            flags, commit_lsn, end_lsn, ts = _COMMIT.unpack_from(buf, 1)
            return Commit(flags, commit_lsn, end_lsn, pg_time(ts))
        if kind == 0x52:  # 'R'
            return _relation(buf, pos, xid)
        if kind == 0x59:  # 'Y'
            oid = _U32.unpack_from(buf, pos)[0]
            namespace, pos = _cstring(buf, pos + 4)
            name, pos = _cstring(buf, pos)
            return Type(oid, namespace, name, xid)
        if kind == 0x54:  # 'T'
            nrel, options = _TRUNC_HEAD.unpack_from(buf, pos)
            oids = struct.unpack_from(f">{nrel}I", buf, pos + 5)
            return Truncate(options, oids, xid)
        if kind == 0x4D:  # 'M'
            flags, lsn = _MSG_HEAD.unpack_from(buf, pos)
            prefix, pos = _cstring(buf, pos + 9)
            length = _I32.unpack_from(buf, pos)[0]
            content = buf[pos + 4:pos + 4 + length]
            if len(content) != length:
                raise ProtocolError("pgoutput: truncated logical message content")
            return Message(bool(flags & 1), lsn, prefix, content, xid)
        if kind == 0x4F:  # 'O'
            lsn = _U64.unpack_from(buf, 1)[0]
            name, _ = _cstring(buf, 9)
            return Origin(lsn, name)
        if kind == 0x53:  # 'S'
            sxid, first = _STREAM_START.unpack_from(buf, 1)
            return StreamStart(sxid, bool(first))
        if kind == 0x45:  # 'E'
            return StreamStop()
        if kind == 0x63:  # 'c'
            sxid, flags, commit_lsn, end_lsn, ts = _STREAM_COMMIT.unpack_from(buf, 1)
            return StreamCommit(sxid, flags, commit_lsn, end_lsn, pg_time(ts))
        if kind == 0x41:  # 'A'
            sxid, subxid = _STREAM_ABORT.unpack_from(buf, 1)
            return StreamAbort(sxid, subxid)
    except (struct.error, IndexError, ValueError, UnicodeDecodeError) as e:
        raise ProtocolError(f"pgoutput: malformed {chr(kind)!r} message: {e}") from None
    raise ProtocolError(f"pgoutput: unknown message kind {chr(kind)!r}")


def _relation(buf: bytes, pos: int, xid: int | None) -> Relation:
    oid = _REL_HEAD.unpack_from(buf, pos)[0]
    namespace, pos = _cstring(buf, pos + 4)
    name, pos = _cstring(buf, pos)
    ident = chr(buf[pos])
    ncols = _I16.unpack_from(buf, pos + 1)[0]
    pos += 3
    cols = []
    for _ in range(ncols):
        flags = buf[pos]
        cname, pos = _cstring(buf, pos + 1)
        type_oid, typmod = _COL_TAIL.unpack_from(buf, pos)
        pos += 8
        cols.append(RelationColumn(flags, cname, type_oid, typmod))
    return Relation(oid, namespace, name, ident, tuple(cols), xid)


# --- values -------------------------------------------------------------------

_TEXT_OID = postgres.types["text"].oid
TEXT_ARRAY_OID = postgres.types["text"].array_oid


@dataclass(slots=True)
class RelationInfo:
    """A Relation message plus what converting its rows needs, built once."""

    relation: Relation
    table: str
    names: tuple[str, ...]
    key_names: tuple[str, ...]
    key_index: tuple[int, ...]
    loaders: tuple[Callable[[Any], Any], ...]
    # Loads a whole tuple in C when every value is present (no UNCHANGED).
    load_row: Callable[[Sequence[Any]], tuple[Any, ...]]
    # True for each replica identity column.
    key_mask: tuple[bool, ...] = ()
    # How a key-only old image's staging line ends: partial unless every
    # column is a key (cdc.sources.pgoutput.copy_change).
    key_line_end: bytes = b"O\tt\n"
    # That whole line as a %-template over the key fields, and their getter.
    key_template: bytes = b""
    key_values: Callable[[Sequence[bytes]], Any] | None = None
    # Every column's type may travel as COPY text (Decoder's copy_types).
    copy_ok: bool = True


class Decoder:
    """Decodes a pgoutput stream and converts tuples to ``dict[column, value]``.

    Keeps the latest Relation message per OID: the server sends a new one
    before the first change after a table's columns change, and rows decoded
    afterwards use the new shape, with no restart.

    Values are converted with psycopg's text loaders, looked up by type OID
    without a connection.  The server must produce the text in the formats
    those loaders expect (DateStyle ISO, IntervalStyle postgres, bytea_output
    hex); the source sets them on its replication connection.  A type psycopg
    has no loader for (enums, domains, extension types) is kept as ``str``;
    ``alias_type`` can point such an OID at a known loader.  A value the loader
    rejects (``'infinity'`` timestamps, years past 9999) is kept as its text, so
    one odd value reaches the target (and its dead-letter table) instead of
    stopping the stream.
    """

    def __init__(self, adapters: AdaptersMap | None = None, *, text_values: bool = False,
                 copy_types: frozenset[int] | None = None) -> None:
        # JSON stays its text (cdc.sources.pgjson: a scalar or a JSON null survives).
        self._adapters = adapters if adapters is not None else pgjson.adapters()
        # Keep every value as the server's text (see ``text_values`` in
        # cdc.sources.postgres): nothing to convert when the target parses it back.
        self._text_values = text_values
        # Type OIDs whose rows ``copy_change`` may keep as text; None: all.
        self._copy_types = copy_types
        self._relations: dict[int, RelationInfo] = {}
        self._types: dict[int, Type] = {}
        self._aliases: dict[int, int] = {}
        self._in_stream = False

    # --- stream ---------------------------------------------------------------
    def decode(self, data: bytes | bytearray | memoryview) -> PgoutputMessage:
        """Decode one message and keep the relation/type catalog up to date."""
        msg = decode(data, in_stream=self._in_stream)
        cls = type(msg)
        if cls is Insert or cls is Update or cls is Delete:  # the common case first
            return msg
        if isinstance(msg, Relation):
            self._relations[msg.oid] = self._build(msg)
        elif isinstance(msg, Type):
            self._types[msg.oid] = msg
        elif isinstance(msg, StreamStart):
            self._in_stream = True
        elif isinstance(msg, StreamStop):
            self._in_stream = False
        return msg

    def relation(self, oid: int) -> RelationInfo:
        try:
            return self._relations[oid]
        except KeyError:
            raise ProtocolError(f"pgoutput: change for relation OID {oid} before its Relation "
                                "message") from None

    def type(self, oid: int) -> Type | None:
        return self._types.get(oid)

    def alias_type(self, oid: int, as_oid: int) -> None:
        """Load values of type ``oid`` as if they were ``as_oid`` (e.g. a domain as its base)."""
        self._aliases[oid] = as_oid
        for roid, info in list(self._relations.items()):
            if any(c.type_oid == oid for c in info.relation.columns):
                self._relations[roid] = self._build(info.relation)

    def has_loader(self, oid: int) -> bool:
        """Whether values of type ``oid`` convert to something better than str."""
        return (self._text_values or oid in self._aliases
                or self._adapters.get_loader(oid, Format.TEXT) is not None)

    def unknown_type_oids(self, relation: Relation) -> list[int]:
        """OIDs of ``relation``'s columns that would be kept as str for lack of a loader."""
        return [c.type_oid for c in relation.columns if not self.has_loader(c.type_oid)]

    # --- values ---------------------------------------------------------------
    def row(self, info: RelationInfo, values: TupleData) -> dict[str, Any]:
        """Convert a tuple of ``info``'s relation to column name -> Python value.

        Expects text-format values (the source never asks for ``binary``);
        None and UNCHANGED pass through as they are.
        """
        if len(values) != len(info.names):
            raise ProtocolError(
                f"pgoutput: {info.table} row has {len(values)} columns, its Relation message "
                f"{len(info.names)}")
        if type(values) is tuple:  # not TupleWithUnchanged
            try:
                # Lengths were checked above; a strict= keyword costs ~50% here.
                return dict(zip(info.names, info.load_row(values)))  # noqa: B905
            except Exception:  # one bad value: retried column by column below
                pass
        return dict(zip(info.names, [_load_one(load, v) for load, v in
                                     zip(info.loaders, values, strict=False)], strict=False))

    def row_change(self, info: RelationInfo, msg: Insert | Update | Delete) -> RowChange:
        """The ``RowChange`` for one data message of ``info``'s table.

        ``before`` is the whole old row only under REPLICA IDENTITY FULL; else
        it holds the replica identity columns (from the old key tuple when the
        key changed, from the new row when it did not) and ``partial_before``
        says so.
        """
        if type(msg) is Insert:
            return RowChange(info.table, "I", None, self.row(info, msg.new))
        if isinstance(msg, Update):
            after = self.row(info, msg.new)
            if msg.old_kind == "O" and msg.old is not None:
                return RowChange(info.table, "U", self.row(info, msg.old), after,
                                 partial_before=type(msg.old) is not tuple)
            if msg.old_kind == "K" and msg.old is not None:
                before = self.key_row(info, msg.old)
            else:
                before = {k: after[k] for k in info.key_names}
            return RowChange(info.table, "U", before, after,
                             partial_before=len(before) != len(info.names))
        if isinstance(msg, Delete):
            if msg.old_kind == "O":
                return RowChange(info.table, "D", self.row(info, msg.old), None,
                                 partial_before=type(msg.old) is not tuple)
            before = self.key_row(info, msg.old)
            return RowChange(info.table, "D", before, None,
                             partial_before=len(before) != len(info.names))
        raise TypeError(f"not a row change message: {msg!r}")

    def values(self, info: RelationInfo, values: TupleData) -> tuple[Any, ...]:
        """Like ``row`` without the dict: the values in ``info.names`` order."""
        if len(values) != len(info.names):
            raise ProtocolError(
                f"pgoutput: {info.table} row has {len(values)} columns, its Relation message "
                f"{len(info.names)}")
        if type(values) is tuple:
            try:
                return tuple(info.load_row(values))
            except Exception:  # one bad value: retried column by column below
                pass
        return tuple([_load_one(load, v) for load, v in
                      zip(info.loaders, values, strict=False)])

    def packed_change(self, info: RelationInfo, msg: Insert | Update | Delete
                      ) -> tuple[str, str, Any, Any, bool]:
        """``row_change`` in the decoder process's wire form (cdc.reader.pack):
        (table, op, before, after, partial_before), full images as value tuples
        in ``info.names`` order and a key-only before image as a dict.  Skips
        building dicts that would only be taken apart again for pickling."""
        if type(msg) is Insert:
            return (info.table, "I", None, self.values(info, msg.new), False)
        if isinstance(msg, Update):
            after = self.values(info, msg.new)
            if msg.old_kind == "O" and msg.old is not None:
                return (info.table, "U", self.values(info, msg.old), after,
                        type(msg.old) is not tuple)
            if msg.old_kind == "K" and msg.old is not None:
                before = self.key_row(info, msg.old)
            else:
                before = {info.names[i]: after[i] for i in info.key_index}
            return (info.table, "U", before, after, len(before) != len(info.names))
        if isinstance(msg, Delete):
            if msg.old_kind == "O":
                return (info.table, "D", self.values(info, msg.old), None,
                        type(msg.old) is not tuple)
            before = self.key_row(info, msg.old)
            return (info.table, "D", before, None, len(before) != len(info.names))
        raise TypeError(f"not a row change message: {msg!r}")

    def copy_change(self, buf: bytes, pos: int = 0
                    ) -> tuple[RelationInfo, int, bytes] | None:
        """An Insert, Update or Delete message as staging lines of COPY text:
        (relation, op byte, lines); the values stay the walsender's text.

        Each line is the columns in the relation's order, then ``_cdc_kind``
        and ``_cdc_partial`` (cdc.events.TextRows reads them back).  Old images
        follow ``row_change``: the whole old row under REPLICA IDENTITY FULL,
        else the key columns only (from the key tuple when the key changed,
        from the new row when it did not).  None for anything else (other
        messages, streamed transactions, UNCHANGED or binary values), which
        then goes through ``decode``.

        The hot path of a PostgreSQL-to-PostgreSQL pipeline: one call per row.
        """
        kind = buf[pos]
        if (kind != 0x49 and kind != 0x55 and kind != 0x44) or self._in_stream:
            return None
        try:
            info = self._relations.get(_U32.unpack_from(buf, pos + 1)[0])
            if info is None or not info.copy_ok:
                return None  # decode() says what is wrong, or takes the values
            ncols = len(info.names)
            marker = buf[pos + 5]
            if kind == 0x49:  # 'I'
                if marker != 0x4E:
                    return None
                new, _, nulls = _copy_fields(buf, pos + 6)
                if new is None or len(new) != ncols:
                    return None
                return info, kind, _copy_line(new, nulls, _NEW_END)[0]
            if kind == 0x44:  # 'D'
                old, _, nulls = _copy_fields(buf, pos + 6)
                if old is None or len(old) != ncols:
                    return None
                if marker == 0x4F:
                    return info, kind, _copy_line(old, nulls, _OLD_END)[0]
                if marker == 0x4B:
                    return info, kind, _copy_line(old, nulls, info.key_line_end)[0]
                return None
            pos += 6
            old_line = b""
            if marker == 0x4B or marker == 0x4F:  # 'K' / 'O'
                old, pos, nulls = _copy_fields(buf, pos)
                if old is None or len(old) != ncols:
                    return None
                old_line = _copy_line(old, nulls, _OLD_END if marker == 0x4F
                                      else info.key_line_end)[0]
                marker = buf[pos]
                pos += 1
            if marker != 0x4E:
                return None
            new, _, nulls = _copy_fields(buf, pos)
            if new is None or len(new) != ncols:
                return None
            line, clean = _copy_line(new, nulls, _NEW_END)
            if not old_line:
                if clean and info.key_values is not None:
                    old_line = info.key_template % info.key_values(new)
                else:
                    keys = [f if k else COPY_NULL for f, k in zip(new, info.key_mask, strict=True)]
                    old_line = b"\t".join([*(keys if clean else [_escape(f) for f in keys]),
                                            info.key_line_end])
            return info, kind, old_line + line
        except (struct.error, IndexError):
            return None  # malformed: decode() raises the ProtocolError

    def key_row(self, info: RelationInfo, values: TupleData) -> dict[str, Any]:
        """Only the replica identity columns of a tuple (a 'K' old tuple, or a new image)."""
        if len(values) != len(info.names):
            raise ProtocolError(
                f"pgoutput: {info.table} row has {len(values)} columns, its Relation message "
                f"{len(info.names)}")
        return {info.names[i]: _load_one(info.loaders[i], values[i]) for i in info.key_index}

    def _build(self, rel: Relation) -> RelationInfo:
        if self._text_values:
            oids = [_TEXT_OID] * len(rel.columns)
        else:
            oids = [self._aliases.get(c.type_oid, c.type_oid) for c in rel.columns]
            oids = [oid if self._adapters.get_loader(oid, Format.TEXT) is not None
                    else _TEXT_OID for oid in oids]
        # An AdaptersMap is itself an adaptation context (no connection).
        tx = adapt.Transformer(self._adapters)
        loaders = tuple(tx.get_loader(oid, Format.TEXT).load for oid in oids)
        row_tx = adapt.Transformer(self._adapters)
        row_tx.set_loader_types(oids, Format.TEXT)
        key_index = tuple(i for i, c in enumerate(rel.columns) if c.key)
        key_end = _OLD_END if len(key_index) == len(rel.columns) else _OLD_KEY_END
        return RelationInfo(
            relation=rel,
            table=rel.qualified_name,
            names=tuple(c.name for c in rel.columns),
            key_names=tuple(rel.columns[i].name for i in key_index),
            key_index=key_index,
            loaders=loaders,
            load_row=row_tx.load_sequence,
            key_mask=tuple(c.key for c in rel.columns),
            key_line_end=key_end,
            key_template=b"\t".join([*(b"%s" if c.key else COPY_NULL for c in rel.columns),
                                      key_end]),
            key_values=operator.itemgetter(*key_index) if key_index else None,
            copy_ok=self._copy_types is None or all(
                c.type_oid in self._copy_types for c in rel.columns),
        )


def _load_one(load: Callable[[Any], Any], value: Any) -> Any:
    if value is None or value is UNCHANGED:
        return value
    try:
        return load(value)
    except Exception:
        return bytes(value).decode("utf-8", "replace")
