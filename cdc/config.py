"""The pipeline YAML file: load, expand ``${VAR}``, validate, freeze.

Every problem is reported as one ``ConfigError`` naming the file, the line and
the key, with the nearest valid key when the name looks like a typo.  The result
is a frozen object passed down explicitly; nothing reads the environment later.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import yaml

from cdc.errors import ConfigError

# The allowed keys and their value kinds.  A dict value is a nested section;
# a tuple is a set of allowed scalar types.
_STR = (str,)
_INT = (int,)
_NUM = (int, float)
_BOOL = (bool,)

_RULE_OPTIONS: dict[str, Any] = {
    "key": (list, str),
    "on_delete": _STR,
    "on_truncate": _STR,
    "soft_delete_column": _STR,
    "dialect": _STR,
    "validate": (list, str),
    "enabled": _BOOL,
    "schema_changes": _STR,
}

SCHEMA: dict[str, Any] = {
    "pipeline": _STR,
    "schema_changes": _STR,
    "source": {
        "url": _STR,
        "server_id": _INT,
        "slot": _STR,
        "publication": _STR,
        "heartbeat_seconds": _NUM,
        "connect_timeout": _NUM,
        "wal_warn_mb": _NUM,
    },
    "target": {
        "url": _STR,
        "schema": _STR,
        "connect_timeout": _NUM,
    },
    "rules": _STR,
    "rule_options": {"*": _RULE_OPTIONS},
    "batch": {
        "max_rows": _INT,
        "max_seconds": _NUM,
        "queue_transactions": _INT,
        "decoder_process": _BOOL,
    },
    "snapshot": {
        "chunk_rows": _INT,
        "workers": _INT,
        "source_text": _BOOL,
    },
    "retry": {
        "initial_seconds": _NUM,
        "max_seconds": _NUM,
    },
    "dead_letters": {
        "max_attempts": _INT,
        "retry_seconds": _NUM,
    },
    "metrics": {
        "address": _STR,
    },
    "types": {
        "zero_dates": _STR,
        "out_of_range": _STR,
    },
    "lag": {
        "max_seconds": _NUM,
    },
}

REQUIRED = ("pipeline", "source.url", "target.url", "rules")
ON_DELETE = ("delete", "ignore", "soft")
ON_TRUNCATE = ("truncate", "ignore")
# What a source schema change that a rule cannot follow does (cdc.pause).
SCHEMA_CHANGES = ("pause", "lenient")


@dataclass(frozen=True, slots=True)
class DatabaseUrl:
    """A parsed ``mysql://`` or ``postgresql://`` URL."""

    kind: str  # "mysql" or "postgresql"
    host: str
    port: int
    user: str
    password: str
    database: str
    raw: str
    params: dict[str, str] = field(default_factory=dict)
    host_given: bool = True  # False: the URL names no host (PostgreSQL: the Unix socket)

    @classmethod
    def parse(cls, url: str, *, where: str = "url") -> DatabaseUrl:
        """``scheme://[user[:password]@]host[:port]/database[?k=v&…]``.

        Parts are percent-decoded (``%40`` for ``@``, ``%20`` for a space).  A
        password from ``${VAR}`` rarely is encoded, so the user part ends at the
        *last* ``@`` and may hold ``@ : / # ?`` as they are; a database name
        holding ``@``, ``/``, ``?`` or ``#`` must be percent-encoded.
        """
        m = re.fullmatch(r"([A-Za-z][A-Za-z0-9+.-]*)://(.*)", url, re.S)
        scheme = m.group(1).lower() if m else urlsplit(url).scheme.lower()
        if scheme in ("mysql", "mariadb", "mysql+pymysql"):
            kind, default_port = "mysql", 3306
        elif scheme in ("postgresql", "postgres", "pg"):
            kind, default_port = "postgresql", 5432
        else:
            raise ConfigError(
                f"{where}: unsupported scheme {urlsplit(url).scheme!r}; use mysql:// or "
                "postgresql://"
            )
        assert m is not None
        rest = m.group(2)
        userinfo, at, hostpart = rest.rpartition("@")
        if not at:
            userinfo, hostpart = "", rest
        user, colon, password = userinfo.partition(":")
        hostport, slash, tail = hostpart.partition("/")
        if not slash:
            hostport, _, tail = hostpart.partition("?")
            tail = "?" + tail if _ else ""
        path, _, query = tail.partition("?")
        path = path.split("#", 1)[0]
        query = query.split("#", 1)[0]
        host, port_text = hostport, ""
        if hostport.startswith("["):  # [IPv6]:port
            close = hostport.find("]")
            host, port_text = hostport[1:close], hostport[close + 1:].lstrip(":")
        elif ":" in hostport:
            host, _, port_text = hostport.rpartition(":")
        database = unquote(path)
        if not database:
            raise ConfigError(f"{where}: the URL names no database (…/DBNAME at the end)")
        params = {}
        for item in filter(None, query.split("&")):
            k, _, v = item.partition("=")
            params[unquote(k)] = unquote(v)
        try:
            port = int(port_text) if port_text else default_port
            if not 0 < port < 65536:
                raise ValueError(f"Port out of range 1-65535: {port}")
        except ValueError as e:
            raise ConfigError(f"{where}: bad port: {e}") from None
        return cls(
            kind=kind,
            host=unquote(host) or "localhost",
            port=port,
            user=unquote(user),
            password=unquote(password) if colon else "",
            database=database,
            raw=url,
            params=params,
            host_given=bool(host),
        )

    def redacted(self) -> str:
        return f"{self.kind}://{self.user}@{self.host}:{self.port}/{self.database}"

    def libpq(self) -> str:
        """A libpq connection string with the parts as parsed (never the raw URL:
        libpq would split a password holding ``@`` or ``/`` elsewhere)."""
        if self.kind != "postgresql":
            raise ValueError("not a PostgreSQL URL")
        import psycopg
        from psycopg.conninfo import make_conninfo

        parts: dict[str, Any] = {"port": self.port, "dbname": self.database}
        if self.host_given:  # else libpq's default: the Unix socket (or ?host=…)
            parts["host"] = self.host
        if self.user:
            parts["user"] = self.user
        if self.password:
            parts["password"] = self.password
        try:
            return make_conninfo("", **{**self.params, **parts})
        except psycopg.ProgrammingError as e:
            raise ConfigError(f"{self.redacted()}: {e}") from None


@dataclass(frozen=True, slots=True)
class RuleOptions:
    key: tuple[str, ...] | None = None
    on_delete: str = "delete"
    soft_delete_column: str | None = None
    dialect: str | None = None
    validate: tuple[str, ...] = ()
    enabled: bool = True
    # None: not set; a source TRUNCATE empties the target table (cdc.plan
    # refuses that default where several rules write one target table).
    on_truncate: str | None = None
    # None: the pipeline's ``schema_changes`` (Config.schema_changes_for).
    schema_changes: str | None = None


@dataclass(frozen=True, slots=True)
class Config:
    path: Path
    pipeline: str
    source: DatabaseUrl
    target: DatabaseUrl
    rules_dir: Path
    server_id: int = 0  # 0: derived from the pipeline name
    slot: str = ""
    publication: str = ""
    heartbeat_seconds: float = 10.0
    connect_timeout: float = 10.0
    wal_warn_bytes: int = 1024 * 2**20
    target_schema: str = ""
    rule_options: dict[str, RuleOptions] = field(default_factory=dict)
    batch_max_rows: int = 20000
    batch_max_seconds: float = 1.0
    queue_transactions: int = 2000
    decoder_process: bool = True
    snapshot_chunk_rows: int = 20000
    snapshot_workers: int = 2
    # Let the source server render rows as COPY text (cdc.sources.copytext).
    snapshot_source_text: bool = True
    retry_initial_seconds: float = 1.0
    retry_max_seconds: float = 60.0
    dlq_max_attempts: int = 5
    dlq_retry_seconds: float = 30.0
    metrics_address: str | None = None
    zero_dates: str = "null"
    out_of_range: str = "dead_letter"
    lag_max_seconds: float | None = None
    schema_changes: str = "pause"

    def options_for(self, rule_name: str) -> RuleOptions:
        return self.rule_options.get(rule_name, RuleOptions())

    def schema_changes_for(self, rule_name: str) -> str:
        """``pause`` or ``lenient`` for this rule: its own option, else the pipeline's."""
        return self.options_for(rule_name).schema_changes or self.schema_changes


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(text: str, env: dict[str, str], *, where: str) -> str:
    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        raise ConfigError(f"{where}: environment variable {name} is not set")

    return _VAR.sub(sub, text)


def load(path: str | os.PathLike[str], env: dict[str, str] | None = None) -> Config:
    """Read and validate one pipeline file."""
    p = Path(path)
    env = dict(os.environ) if env is None else env
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such config file") from None
    except OSError as e:
        raise ConfigError(f"{p}: cannot read: {e.strerror}") from None
    try:
        node = yaml.compose(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{p}{line}: invalid YAML: {problem}") from None
    if node is None or not isinstance(node, yaml.MappingNode):
        raise ConfigError(f"{p}: expected a mapping of keys (pipeline, source, target, rules)")
    data = _walk(node, SCHEMA, p, "", env)
    for dotted in REQUIRED:
        cur: Any = data
        for part in dotted.split("."):
            cur = cur.get(part) if isinstance(cur, dict) else None
        if cur in (None, ""):
            raise ConfigError(f"{p}: missing required key {dotted!r}")
    return _build(p, data)


def _walk(node: yaml.MappingNode, schema: dict[str, Any], path: Path, prefix: str,
          env: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for knode, vnode in node.value:
        key = knode.value
        line = knode.start_mark.line + 1
        dotted = f"{prefix}{key}"
        where = f"{path}:{line}"
        if key in schema:
            spec = schema[key]
        elif "*" in schema:
            spec = schema["*"]
        else:
            candidates = [f"{prefix}{k}" for k in schema]
            near = difflib.get_close_matches(dotted, candidates, n=1, cutoff=0.6)
            hint = f" (did you mean {near[0]!r}?)" if near else (
                f" (valid keys: {', '.join(sorted(schema))})")
            raise ConfigError(f"{where}: unknown key {dotted!r}{hint}")
        if key in out:
            raise ConfigError(f"{where}: key {dotted!r} appears twice")
        if isinstance(spec, dict):
            if isinstance(vnode, yaml.ScalarNode) and vnode.value in ("", "~", "null"):
                out[key] = {}
                continue
            if not isinstance(vnode, yaml.MappingNode):
                raise ConfigError(f"{where}: {dotted!r} must be a mapping")
            out[key] = _walk(vnode, spec, path, dotted + ".", env)
        else:
            out[key] = _scalar(vnode, spec, where, dotted, env)
    return out


def _scalar(vnode: yaml.Node, types: tuple[type, ...], where: str, dotted: str,
            env: dict[str, str]) -> Any:
    if isinstance(vnode, yaml.SequenceNode) and list in types:
        return [_scalar(v, (str,), where, dotted, env) for v in vnode.value]
    if not isinstance(vnode, yaml.ScalarNode):
        raise ConfigError(f"{where}: {dotted!r} must be a single value")
    value = yaml.safe_load(yaml.serialize(vnode))
    if isinstance(value, str):
        value = expand_env(value, env, where=where)
        if str not in types:
            try:
                value = yaml.safe_load(value)
            except yaml.YAMLError:
                pass
    if list in types and isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if bool in types and not isinstance(value, bool):
        raise ConfigError(f"{where}: {dotted!r} must be true or false, not {value!r}")
    if bool not in types and isinstance(value, bool):
        raise ConfigError(f"{where}: {dotted!r} must be {_kind(types)}, not {value!r}")
    if not isinstance(value, types):
        raise ConfigError(f"{where}: {dotted!r} must be {_kind(types)}, not {value!r}")
    return value


def _kind(types: tuple[type, ...]) -> str:
    if float in types:
        return "a number"
    if int in types:
        return "an integer"
    return "text"


def _positive(p: Path, name: str, value: float) -> float:
    if value <= 0:
        raise ConfigError(f"{p}: {name!r} must be greater than zero, not {value}")
    return value


def _build(p: Path, d: dict[str, Any]) -> Config:
    source = DatabaseUrl.parse(d["source"]["url"], where=f"{p}: source.url")
    target = DatabaseUrl.parse(d["target"]["url"], where=f"{p}: target.url")
    name = d["pipeline"]
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}", name):
        raise ConfigError(
            f"{p}: pipeline name {name!r} may hold only letters, digits, '_', '-', '.'")
    rules_dir = (p.parent / d["rules"]).resolve()
    options: dict[str, RuleOptions] = {}
    for rule, o in d.get("rule_options", {}).items():
        on_delete = o.get("on_delete", "delete")
        if on_delete not in ON_DELETE:
            raise ConfigError(
                f"{p}: rule_options.{rule}.on_delete must be one of {', '.join(ON_DELETE)}")
        if on_delete == "soft" and not o.get("soft_delete_column"):
            raise ConfigError(
                f"{p}: rule_options.{rule}: on_delete: soft needs soft_delete_column")
        on_truncate = o.get("on_truncate")
        if on_truncate is not None and on_truncate not in ON_TRUNCATE:
            raise ConfigError(
                f"{p}: rule_options.{rule}.on_truncate must be one of {', '.join(ON_TRUNCATE)}")
        key = o.get("key")
        validate = o.get("validate", [])
        changes = o.get("schema_changes")
        if changes is not None and changes not in SCHEMA_CHANGES:
            raise ConfigError(f"{p}: rule_options.{rule}.schema_changes must be one of "
                              f"{', '.join(SCHEMA_CHANGES)}, not {changes!r}")
        options[rule] = RuleOptions(
            key=tuple(key) if key else None,
            on_delete=on_delete,
            soft_delete_column=o.get("soft_delete_column"),
            dialect=o.get("dialect"),
            validate=tuple([validate] if isinstance(validate, str) else validate),
            enabled=o.get("enabled", True),
            on_truncate=on_truncate,
            schema_changes=changes,
        )
    s, t, b = d["source"], d["target"], d.get("batch", {})
    snap, retry, dlq = d.get("snapshot", {}), d.get("retry", {}), d.get("dead_letters", {})
    types = d.get("types", {})
    if types.get("zero_dates", "null") not in ("null", "dead_letter"):
        raise ConfigError(f"{p}: types.zero_dates must be 'null' (store NULL) or "
                          "'dead_letter' (set the row aside with the reason)")
    if types.get("out_of_range", "dead_letter") not in ("dead_letter",):
        raise ConfigError(f"{p}: types.out_of_range must be 'dead_letter'")
    if d.get("schema_changes", "pause") not in SCHEMA_CHANGES:
        raise ConfigError(f"{p}: schema_changes must be 'pause' (park a table's changes until "
                          "its rule is fixed) or 'lenient' (write NULL for a vanished column)")
    safe = re.sub(r"[^a-z0-9_]", "_", name.lower())
    return Config(
        path=p,
        pipeline=name,
        source=source,
        target=target,
        rules_dir=rules_dir,
        server_id=s.get("server_id", 0),
        slot=s.get("slot", f"cdc_{safe}"),
        publication=s.get("publication", f"cdc_{safe}"),
        heartbeat_seconds=_positive(p, "source.heartbeat_seconds", s.get("heartbeat_seconds", 10.0)),
        connect_timeout=float(s.get("connect_timeout", t.get("connect_timeout", 10.0))),
        wal_warn_bytes=int(_positive(p, "source.wal_warn_mb", s.get("wal_warn_mb", 1024)) * 2**20),
        target_schema=t.get("schema", ""),
        rule_options=options,
        batch_max_rows=int(_positive(p, "batch.max_rows", b.get("max_rows", 20000))),
        batch_max_seconds=_positive(p, "batch.max_seconds", b.get("max_seconds", 1.0)),
        queue_transactions=int(_positive(p, "batch.queue_transactions",
                                         b.get("queue_transactions", 2000))),
        decoder_process=b.get("decoder_process", True),
        snapshot_chunk_rows=int(_positive(p, "snapshot.chunk_rows", snap.get("chunk_rows", 20000))),
        snapshot_workers=int(_positive(p, "snapshot.workers", snap.get("workers", 2))),
        snapshot_source_text=bool(snap.get("source_text", True)),
        retry_initial_seconds=retry.get("initial_seconds", 1.0),
        retry_max_seconds=retry.get("max_seconds", 60.0),
        dlq_max_attempts=dlq.get("max_attempts", 5),
        dlq_retry_seconds=dlq.get("retry_seconds", 30.0),
        metrics_address=d.get("metrics", {}).get("address"),
        zero_dates=types.get("zero_dates", "null"),
        out_of_range=types.get("out_of_range", "dead_letter"),
        lag_max_seconds=d.get("lag", {}).get("max_seconds"),
        schema_changes=d.get("schema_changes", "pause"),
    )


def derived_server_id(pipeline: str) -> int:
    """A stable replica server_id from the pipeline name, away from small ids DBAs use."""
    import zlib

    return 1_000_000 + zlib.crc32(pipeline.encode()) % 1_000_000_000
