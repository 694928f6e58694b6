"""PostgreSQL ``json``/``jsonb`` values stay the server's JSON text.

psycopg's loaders turn JSON into Python values, which loses what a JSON value
is: the scalar ``"s"`` becomes the str ``s`` (no longer valid JSON for the
target's JSON column), ``true`` becomes ``True`` (which MySQL writes as 1), and
a JSON ``null`` becomes None, indistinguishable from SQL NULL.  Every path
that reads source rows as values (the stream's decoder, the snapshot, the
rows fetched for TOAST and dead-letter retries) loads them as ``JsonText``
instead, and the target converters write that text unchanged.
"""

from __future__ import annotations

from typing import Any

from psycopg import postgres
from psycopg.adapt import AdaptersMap, Loader


class JsonText(str):
    """A json/jsonb value as PostgreSQL printed it: JSON text, never decoded."""

    __slots__ = ()


class _JsonTextLoader(Loader):
    def load(self, data: Any) -> JsonText:
        return JsonText(bytes(data).decode("utf-8"))


def register(adapters: AdaptersMap) -> None:
    """Load json and jsonb (and their arrays' elements) as ``JsonText`` in
    ``adapters``: a connection's ``conn.adapters`` or a map of one's own."""
    for name in ("json", "jsonb"):
        adapters.register_loader(name, _JsonTextLoader)


def adapters() -> AdaptersMap:
    """A copy of psycopg's global adapters with JSON kept as text."""
    out = AdaptersMap(postgres.adapters)
    register(out)
    return out
