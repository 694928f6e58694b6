"""Table names as one unambiguous text, and back.

Rules, events, the plan, bookkeeping rows and messages all key a table by one
string.  It is the name as a rule would write it, ``orders`` or
``sales.orders``, except that a part holding a ``.`` or a ``"`` (or nothing,
or edge spaces) is double-quoted SQL-style: the table ``a.b`` is ``"a.b"``,
the table ``b`` in schema ``a`` is ``a.b``.  So every name a database allows
survives the round trip (schema, table) -> text -> (schema, table), and the
common spellings stay exactly what they were.

The schema is omitted when it is the connection's default (PostgreSQL
``public``; for MySQL the URL's database, by whoever builds the name).
"""

from __future__ import annotations


def _needs_quotes(part: str) -> bool:
    return not part or "." in part or '"' in part or part != part.strip()


def quote_part(part: str) -> str:
    if _needs_quotes(part):
        return '"' + part.replace('"', '""') + '"'
    return part


def qualified(schema: str | None, name: str) -> str:
    """The text for table ``name`` in ``schema`` (None: the default schema)."""
    if schema is None:
        return quote_part(name)
    return f"{quote_part(schema)}.{quote_part(name)}"


def parts(text: str) -> list[str]:
    """The parts of a name's text: ``s."a.b"`` -> ``["s", "a.b"]``.

    A text that is not well formed (an unbalanced quote, as a user may type
    after ``--table``) is taken as one bare name rather than refused.
    """
    out: list[str] = []
    i, n = 0, len(text)
    while True:
        if text.startswith('"', i):
            buf: list[str] = []
            j = i + 1
            while True:
                k = text.find('"', j)
                if k < 0:
                    return [text]
                if text.startswith('""', k):
                    buf.append(text[j:k] + '"')
                    j = k + 2
                    continue
                buf.append(text[j:k])
                i = k + 1
                break
            out.append("".join(buf))
            if i == n:
                return out
            if text[i] != ".":
                return [text]
            i += 1
        else:
            k = text.find(".", i)
            if k < 0:
                out.append(text[i:])
                return out
            out.append(text[i:k])
            i = k + 1


def split(text: str, default_schema: str) -> tuple[str, str]:
    """(schema, table) of a name's text; a catalog (database) part is dropped."""
    p = parts(text)
    if len(p) == 1:
        return default_schema, p[0]
    return p[-2], p[-1]


def schema_of(text: str) -> str | None:
    """The schema a name's text gives, or None when it gives none."""
    p = parts(text)
    return p[-2] if len(p) > 1 else None


def table_of(text: str) -> str:
    return parts(text)[-1]


def canonical(text: str) -> str:
    """The one text for a name however it was spelled (``"orders"`` -> ``orders``)."""
    p = parts(text)
    return qualified(p[-2] if len(p) > 1 else None, p[-1])


def resolve(given: str, known: list[str]) -> str | None:
    """Which of ``known`` a user means by ``given`` (``--table T``).

    Exactly as cdc writes it, or any SQL spelling of it (``"orders"``), or the
    plain unquoted text (``a.b`` for the table ``"a.b"``) when that is unique.
    """
    if given in known:
        return given
    c = canonical(given)
    if c in known:
        return c
    plain = [k for k in known if ".".join(parts(k)) == given]
    return plain[0] if len(plain) == 1 else None
