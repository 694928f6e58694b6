"""Command line: the only place that prints and chooses exit codes.

Exit codes: 0 ok (also `run` stopped by SIGTERM/SIGINT, even while it was
retrying a transient failure: that is a clean stop), 1 a check failed / behind,
2 usage or configuration error (or the pipeline not set up), 3 a terminal
runtime error, 4 a snapshot interrupted by a signal (run it again to resume),
5 another daemon already runs the pipeline (`cdc run`).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from datetime import UTC, datetime
from typing import Any, NoReturn

import click

from cdc import __version__
from cdc.config import Config, ConfigError, load
from cdc.errors import CdcError, RuleError, TransientError

log = logging.getLogger("cdc")

CONFIG_HELP = "Pipeline YAML file (or set CDC_CONFIG)."


def _under_journald() -> bool:
    """Is stderr the stream systemd connected to the journal?

    systemd sets JOURNAL_STREAM to that stream's ``device:inode``; a child
    whose stderr was redirected elsewhere inherits the variable, so it is
    compared with stderr itself (as sd_journal_stream_fd(3) advises).
    """
    value = os.environ.get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    try:
        st = os.fstat(sys.stderr.fileno())
        return (st.st_dev, st.st_ino) == (int(dev), int(ino))
    except (ValueError, OSError, AttributeError):
        return False


def _setup_logging(verbose: int) -> None:
    level = logging.DEBUG if verbose > 0 else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    # One event a line.  journald stamps each line itself; anywhere else (a
    # terminal, a log file, a container's log) the line must carry its time.
    fmt = "%(levelname)s %(name)s: %(message)s"
    if not _under_journald():
        fmt = "%(asctime)s " + fmt
    handler.setFormatter(logging.Formatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("pymysqlreplication", "psycopg", "sqlglot"):
        logging.getLogger(noisy).setLevel(logging.WARNING if verbose < 2 else logging.DEBUG)


def _fail(e: BaseException, code: int = 3) -> NoReturn:
    from cdc.bookkeeping import NotSetUp

    if isinstance(e, ConfigError | RuleError | NotSetUp):
        code = 2
    click.echo(f"cdc: error: {e}", err=True)
    sys.exit(code)


def _config(path: str) -> Config:
    try:
        return load(path)
    except CdcError as e:
        _fail(e, 2)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="cdc")
@click.option("-v", "--verbose", count=True, help="More log detail (-vv for driver logs).")
@click.pass_context
def cli(ctx: click.Context, verbose: int) -> None:
    """Change-data-capture between MySQL/MariaDB and PostgreSQL through SQL rules.

    A pipeline is one YAML file naming a source, a target and a directory of
    rules (one INSERT … SELECT per .sql file). Typical first use:

    \b
      cdc check -c pipeline.yaml --show-sql   # validate rules against live schemas
      cdc setup -c pipeline.yaml              # bookkeeping tables (and slot for PostgreSQL)
      cdc snapshot -c pipeline.yaml           # copy existing rows, then
      cdc run -c pipeline.yaml                # stream changes (foreground; systemd-friendly)
      cdc lag -c pipeline.yaml                # how far behind
    """
    _setup_logging(verbose)


config_option = click.option("-c", "--config", "config_path", envvar="CDC_CONFIG",
                             required=True, type=click.Path(dir_okay=False), help=CONFIG_HELP)


def _open(cfg: Config) -> tuple[Any, Any]:
    from cdc.plan import parse_rules
    from cdc.sources import open_source
    from cdc.targets import open_target

    rules = parse_rules(cfg)
    tables = sorted({r.source.name for r in rules})
    return open_source(cfg, tables), open_target(cfg)


@cli.command()
@config_option
def setup(config_path: str) -> None:
    """Create bookkeeping tables in the target (and the slot and publication for a
    PostgreSQL source), and record where streaming starts. Safe to run again."""
    cfg = _config(config_path)
    try:
        from cdc.plan import build_plan, parse_rules

        source, target = _open(cfg)
        try:
            # Validate everything before writing anything: a bad rule or a
            # source without ROW binlog must leave the target untouched.
            rules = parse_rules(cfg)
            if cfg.source.kind == "mysql":
                source.check_binlog()
            target_version = target.schema_version()
            from cdc import bookkeeping

            bookkeeping.check_version(target_version, cfg.target.kind)
            build_plan(cfg, source, target, rules)
            version = target.migrate()
            click.echo(f"bookkeeping schema at version {version} in {cfg.target.redacted()}")
            if cfg.source.kind == "postgresql":
                source.setup()
                click.echo(f"slot {cfg.slot!r} and publication {cfg.publication!r} ready "
                           f"for {', '.join(sorted({r.source.name for r in rules}))}")
            offset = target.load_offset()
            if offset is None and cfg.source.kind == "mysql":
                pos = source.current_position()
                target.save_offset(pos, only_if_missing=True)
                click.echo(f"streaming will start at {pos} (changes from now on); run "
                           "`cdc snapshot` to copy the rows that exist already")
            elif offset is not None:
                click.echo(f"pipeline {cfg.pipeline} resumes at {offset[0]}")
        finally:
            source.close()
            target.close()
    except CdcError as e:
        _fail(e)


@cli.command()
@config_option
@click.option("--show-sql", is_flag=True, help="Print the SQL each rule runs on the target.")
def check(config_path: str, show_sql: bool) -> None:
    """Validate the config and every rule against the live schemas, and compile
    each rule on the target inside a rolled-back transaction."""
    cfg = _config(config_path)
    from cdc.plan import build_plan, parse_rules

    try:
        rules = parse_rules(cfg)
    except CdcError as e:
        _fail(e, 2)
    try:
        source, target = _open(cfg)
    except CdcError as e:
        _fail(e)
    problems = 0
    try:
        # Reach both databases once first: an unreachable server or a wrong
        # password is one line, not one line per rule.
        try:
            source.table(rules[0].source.name)
            target.schema_version()
        except CdcError as e:
            _fail(e)
        plans = []
        for r in rules:
            try:
                plans.append(build_plan(cfg, source, target, [r]))
            except CdcError as e:
                problems += 1
                click.echo(f"{e}", err=True)
        for plan in plans:
            for c in plan.rules:
                try:
                    target.check_rules(list(plan.stages.values()), [c])
                except CdcError as e:
                    problems += 1
                    click.echo(f"{e}", err=True)
                    continue
                click.echo(f"ok  {c.name}: {c.bound.rule.source.name} -> "
                           f"{c.bound.rule.target.name} (key: {', '.join(c.bound.key)})")
                if show_sql:
                    click.echo(f"-- staging table for {c.stage.source_name}\n{c.stage.create};")
                    click.echo(f"-- rule {c.name}: keep the last image per target key\n{c.fill};")
                    if c.delete:
                        click.echo(f"-- rule {c.name}: rows whose last image is a deletion\n"
                                   f"{c.delete};")
                    if c.update:
                        click.echo(f"-- rule {c.name}: update rows by the rule's key (other "
                                   f"unique keys must not pick the row)\n{c.update};")
                    click.echo(f"-- rule {c.name}: upsert\n{c.upsert};")
                    click.echo(f"-- rule {c.name}: instead of the three above when the staged "
                               f"rows are all new images (a batch of inserts, a snapshot "
                               f"chunk)\n" + "".join(f"{s};\n" for s in
                                                      c.new_only_statements()).rstrip("\n"))
                    if c.insert_new_only:
                        click.echo(f"-- rule {c.name}: a snapshot chunk while the target holds "
                                   f"none of its rows yet (on a unique violation: the one "
                                   f"above)\n{c.insert_new_only};")
                    click.echo()
    finally:
        source.close()
        target.close()
    if problems:
        click.echo(f"{problems} problem(s) found", err=True)
        sys.exit(2)


@cli.command()
@config_option
@click.option("--table", "tables", multiple=True, metavar="T",
              help="Only the rules reading this source table (repeatable).")
@click.option("--rule", "rules", multiple=True, metavar="NAME",
              help="Only this rule (repeatable).")
@click.option("--limit", default=10, show_default=True, metavar="N",
              help="Source rows sampled per table, in key order.")
@click.option("--where", metavar="COND",
              help="Sample only rows matching this condition, in the source's SQL "
                   "(one boolean expression, e.g. \"status = 'paid' AND id > 1000\"); "
                   "it applies to every sampled table, so name one with --table.")
@click.option("--json", "as_json", is_flag=True, help="One JSON array, for scripts.")
def preview(config_path: str, tables: tuple[str, ...], rules: tuple[str, ...], limit: int,
            where: str | None, as_json: bool) -> None:
    """Run the rules on sampled live source rows, writing nothing.

    Each sampled source row is shown beside the target row it becomes (insert,
    update or unchanged), or why it would become none: a dead letter (the
    validation or target constraint it fails) or filtered out (the rule's WHERE,
    or the lookup join that finds no row). Everything runs inside one target
    transaction that is rolled back; the source is read on a read-only session.
    """
    from cdc import preview as pv

    cfg = _config(config_path)
    try:
        reports = pv.preview(cfg, list(tables) or None, list(rules) or None, where, limit)
    except CdcError as e:
        _fail(e)
    if as_json:
        click.echo(json.dumps(pv.jsonable(reports), ensure_ascii=False, default=str))
    else:
        click.echo(pv.as_text(reports))


@cli.command()
@config_option
def run(config_path: str) -> None:
    """Stream changes, transform them by the rules and apply them (foreground).

    SIGTERM or SIGINT finishes the current batch, commits it and exits 0.
    SIGHUP re-reads the config and rules; a new set that fails validation is
    logged and the running one carries on.
    Transient failures (lost connections, restarts, deadlocks) are retried with
    backoff; terminal ones (bad password, purged binlog, broken rule) exit 3.
    Only one daemon runs a pipeline (a lock in the target): a second one exits
    5 at once, naming the pid and host of the first.
    """
    from cdc.pipeline import run as run_pipeline
    from cdc.service import Service
    from cdc.targets.lock import PipelineLocked

    cfg = _config(config_path)
    stop = threading.Event()
    reload = threading.Event()
    metrics = None
    if cfg.metrics_address:
        from cdc.metrics import Metrics

        metrics = Metrics(cfg.pipeline)
        try:
            metrics.serve(cfg.metrics_address)
        except OSError as e:
            _fail(ConfigError(f"metrics.address {cfg.metrics_address}: cannot listen: "
                              f"{e.strerror}"))
    service = Service(cfg, metrics)

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("received %s: finishing the current batch", signal.Signals(signum).name)
        service.stopping()
        stop.set()

    def on_hup(_signum: int, _frame: Any) -> None:
        service.reloading()
        reload.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_hup)
    service.start()
    try:
        run_pipeline(cfg, stop, service.hooks(), reload)
    except TransientError as e:
        _fail(e, 4)
    except PipelineLocked as e:
        _fail(e, 5)
    except CdcError as e:
        _fail(e)
    finally:
        service.close()


@cli.command()
@config_option
@click.option("--table", "tables", multiple=True, metavar="T",
              help="Only this source table (repeatable). Copies it again even if done.")
@click.option("--where", metavar="COND",
              help="Only rows matching this condition, in the source's SQL "
                   "(e.g. \"created_at > NOW() - INTERVAL 3 MONTH\").")
@click.option("--truncate", is_flag=True,
              help="Empty the rules' target tables first (a resync that also drops rows the "
                   "source no longer has).")
@click.option("--force", is_flag=True, help="Start over instead of resuming; copy done tables.")
@click.option("--workers", type=int, default=None,
              help="Target connections applying chunks at once: tables in parallel, or "
                   "several chunks of one table into PostgreSQL (default: snapshot.workers).")
@click.option("--chunk-rows", type=int, default=None, help="Rows per chunk (one transaction).")
def snapshot(config_path: str, tables: tuple[str, ...], where: str | None, truncate: bool,
             force: bool, workers: int | None, chunk_rows: int | None) -> None:
    """Copy the rows that exist in the source through the rules, then hand over
    to streaming with nothing lost.

    Reads each table in primary-key chunks without locking the source; each
    chunk commits with its progress, so after an interruption the same command
    resumes where it stopped. `cdc run` may keep streaming meanwhile (a resync
    of one table while the others stream): it pauses for the instant a chunk is
    read and applied. See docs/snapshot.md.
    """
    from cdc.progress import Display
    from cdc.snapshot import Snapshot

    cfg = _config(config_path)
    display = Display()
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("received %s: stopping after the current chunk", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    t0 = time.monotonic()
    try:
        results = Snapshot(cfg, tables=list(tables) or None, where=where, truncate=truncate,
                           force=force, workers=workers, chunk_rows=chunk_rows,
                           progress=display.update, stop=stop).run()
    except CdcError as e:
        _fail(e)
    click.echo(display.summary(results, time.monotonic() - t0))
    if stop.is_set():
        click.echo("interrupted: run the same command again to resume", err=True)
        sys.exit(4)


def _daemon_state(state: str, heartbeat_age: float | None, pid: int | None,
                  host: str | None) -> str:
    """The state a daemon last wrote, unless it can no longer be true.

    A daemon killed with -9, or one that exited on an error, cannot say so: its
    row keeps its last word.  On the daemon's own host a pid that no longer
    exists is `gone`; anywhere, a heartbeat older than
    HEARTBEAT_STALE_SECONDS makes `streaming` or `snapshotting` `stale`.
    """
    import socket

    from cdc.pipeline import HEARTBEAT_STALE_SECONDS

    if state not in ("streaming", "snapshotting", "failing"):
        return state
    if pid and host == socket.gethostname():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return "gone"
        except PermissionError:
            pass  # alive, someone else's
    if state != "failing" and heartbeat_age is not None and \
            heartbeat_age > HEARTBEAT_STALE_SECONDS:
        return "stale"
    return state


def lag_report(cfg: Config) -> dict[str, Any]:
    """The facts `cdc lag` prints, as a dict (also used by tests and metrics)."""
    from cdc.bookkeeping import require_setup
    from cdc.positions import decode_position
    from cdc.targets import open_target

    target = open_target(cfg)
    try:
        require_setup(target, cfg.pipeline, cfg.path)
        st = target.read_status()
        try:
            paused = target.paused_tables()
        except CdcError:  # bookkeeping older than paused tables: `cdc setup` says so
            paused = []
    finally:
        target.close()
    source_pos = None
    source_error = None
    try:
        from cdc.plan import parse_rules
        from cdc.sources import open_source

        src = open_source(cfg, sorted({r.source.name for r in parse_rules(cfg)}))
        try:
            source_pos = src.current_position()
        finally:
            src.close()
    except CdcError as e:
        source_error = str(e)
    applied = decode_position(st["position"]) if st.get("position") else None
    now = st.get("now") or datetime.now(UTC)
    commit_time = st.get("source_commit_time")
    caught_up = applied is not None and source_pos is not None and \
        applied.sort_key() >= source_pos.sort_key()
    if applied is None:
        seconds = None
    elif caught_up:
        seconds = 0.0
    elif commit_time is not None:
        seconds = max(0.0, (now - commit_time).total_seconds())
    else:
        seconds = None
    bytes_behind = None
    if applied is not None and source_pos is not None:
        a, b = applied.sort_key(), source_pos.sort_key()
        if a[0] == b[0]:  # same binlog file, or both LSNs
            bytes_behind = max(0, b[1] - a[1])
    state = st.get("state") or ("never started" if applied is None else "stopped")
    updated = st.get("updated_at")
    heartbeat_age = None if updated is None else max(0.0, (now - updated).total_seconds())
    state = _daemon_state(state, heartbeat_age, st.get("pid"), st.get("host"))
    report = {
        "pipeline": cfg.pipeline,
        "state": state,
        "seconds_behind": None if seconds is None else round(seconds, 3),
        "caught_up": caught_up,
        "bytes_behind": bytes_behind,
        "source_position": str(source_pos) if source_pos is not None else None,
        "applied_position": str(applied) if applied is not None else None,
        "last_applied_commit_time": commit_time.isoformat() if commit_time else None,
        "applied_at": st["applied_at"].isoformat() if st.get("applied_at") else None,
        "transactions_applied": st.get("transactions") or 0,
        "rows_applied": st.get("rows_applied") or 0,
        "rows_per_second": st.get("rows_per_second"),
        "dead_letters": int(st.get("dead_letters") or 0),
        "message": st.get("message"),
        "heartbeat_age_seconds": None if heartbeat_age is None else round(heartbeat_age, 1),
        "pid": st.get("pid"),
        "host": st.get("host"),
        # Rules whose source table a schema change paused (cdc.pause).
        "paused": [{"rule": rule, "table": p["table"], "reason": p["reason"],
                    "since": p["since"].isoformat() if p.get("since") else None,
                    "parked": int(p["parked"])}
                   for p in paused for rule in p["rules"].split(",")],
    }
    if source_error:
        report["source_error"] = source_error
    return report


@cli.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object, for scripts.")
@click.option("--watch", is_flag=True, help="Refresh every --interval seconds until Ctrl-C.")
@click.option("--interval", default=2.0, show_default=True, help="Seconds between refreshes.")
@click.option("--max-seconds", type=float, default=None,
              help="A monitoring check (Nagios/Zabbix): exit 1, with the reason on stderr, "
                   "unless the daemon is streaming, alive (fresh heartbeat), has no paused "
                   "rule and is at most this many seconds behind.")
def lag(config_path: str, as_json: bool, watch: bool, interval: float,
        max_seconds: float | None) -> None:
    """How far the target is behind the source."""
    cfg = _config(config_path)
    limit = max_seconds if max_seconds is not None else cfg.lag_max_seconds
    while True:
        try:
            r = lag_report(cfg)
        except CdcError as e:
            _fail(e)
        if as_json:
            click.echo(json.dumps(r, default=str))
        else:
            sb = r["seconds_behind"]
            click.echo(f"{r['pipeline']}: {r['state']}, "
                       f"{'unknown' if sb is None else f'{sb:.1f}s'} behind, "
                       f"applied {r['applied_position']} of {r['source_position']}, "
                       f"{r['rows_applied']} rows applied, {r['dead_letters']} dead letters")
            for p in r["paused"]:
                click.echo(f"  PAUSED rule {p['rule']} (source table {p['table']}) since "
                           f"{p['since']}, {p['parked']} changes parked: {p['reason']}")
        if not watch:
            break
        time.sleep(interval)
    if limit is not None:
        # A monitoring check: green only for a live daemon that streams and is
        # not behind.  A quiet source leaves seconds_behind at 0 whatever the
        # daemon's fate, so the state decides first.
        why = healthy_problem(r, limit)
        if why:
            click.echo(f"{r['pipeline']}: CRITICAL: {why}", err=True)
            sys.exit(1)


def healthy_problem(r: dict[str, Any], limit: float) -> str | None:
    """Why a lag report is not healthy for a `--max-seconds` check, or None."""
    state = r["state"]
    if state != "streaming":
        detail = {"gone": f"the daemon (pid {r.get('pid')} on {r.get('host')}) is not running",
                  "stale": f"no heartbeat for {r.get('heartbeat_age_seconds')} s",
                  "failing": f"failing: {r.get('message')}"}.get(state, f"state {state!r}")
        return detail
    if r.get("paused"):
        return f"{len(r['paused'])} paused rule(s)"
    sb = r["seconds_behind"]
    if sb is None:
        return "lag unknown"
    if sb > limit:
        return f"{sb:.1f} s behind (limit {limit:g} s)"
    return None


@cli.command()
@config_option
@click.option("--print-grants", is_flag=True,
              help="Print least-privilege GRANT statements for the source and target users.")
@click.option("--json", "as_json", is_flag=True, help="JSON output.")
def doctor(config_path: str, print_grants: bool, as_json: bool) -> None:
    """Check every prerequisite of the pipeline and print the exact fix for each
    failure: binlog settings, wal_level, slots, privileges, publication,
    replica identity, target privileges, bookkeeping version, rules.

    Exit 1 when a check fails (warnings do not fail it).
    """
    from cdc import doctor as doc

    cfg = _config(config_path)
    if print_grants:
        from cdc.plan import parse_rules

        try:
            rules = parse_rules(cfg)
        except CdcError as e:
            _fail(e, 2)
        click.echo(doc.print_grants(
            cfg, sorted({r.source.name for r in rules}), sorted({r.target.name for r in rules}),
            sorted({lk.name for r in rules for lk in r.lookups})))
        return
    checks = doc.run_checks(cfg)
    failed = [c for c in checks if not c.ok and not c.warning]
    if as_json:
        click.echo(json.dumps([{"check": c.name, "ok": c.ok, "warning": c.warning,
                                "detail": c.detail, "fix": c.fix} for c in checks],
                              ensure_ascii=False))
    else:
        for c in checks:
            mark = "ok  " if c.ok else ("warn" if c.warning else "FAIL")
            click.echo(f"{mark} {c.name}: {c.detail}")
            if not c.ok and c.fix:
                click.echo("     fix: " + c.fix.replace("\n", "\n          "))
        click.echo(f"{len(checks) - len(failed)} of {len(checks)} checks passed"
                   + (f"; {len(failed)} failed" if failed else ""))
    if failed:
        sys.exit(1)


@cli.command()
@config_option
@click.option("--yes", is_flag=True, help="Really drop them (otherwise only say what would go).")
@click.option("--drop-bookkeeping", is_flag=True,
              help="Also delete this pipeline's rows from the target's bookkeeping tables.")
def teardown(config_path: str, yes: bool, drop_bookkeeping: bool) -> None:
    """Remove what `cdc setup` created on the source: the replication slot and the
    publication of a PostgreSQL source (a forgotten slot makes the source keep
    WAL forever). A MySQL source needs nothing removed."""
    cfg = _config(config_path)
    what = []
    if cfg.source.kind == "postgresql":
        what.append(f"replication slot {cfg.slot!r} and publication {cfg.publication!r} on "
                    f"{cfg.source.redacted()}")
    if drop_bookkeeping:
        what.append(f"bookkeeping rows of pipeline {cfg.pipeline!r} in {cfg.target.redacted()}")
    if not what:
        click.echo("nothing to remove: a MySQL source keeps no state for cdc "
                   "(use --drop-bookkeeping to forget the pipeline's position)")
        return
    if not yes:
        click.echo("would drop: " + "; ".join(what) + " (add --yes to do it)")
        return
    try:
        if cfg.source.kind == "postgresql":
            from cdc.sources.postgres import PostgresSource

            src = PostgresSource(cfg.source.libpq(), slot=cfg.slot, publication=cfg.publication,
                                 tables=[])
            try:
                src.teardown()
            finally:
                src.close()
        if drop_bookkeeping:
            from cdc.targets import open_target

            target = open_target(cfg)
            try:
                target.forget_pipeline()
            finally:
                target.close()
    except CdcError as e:
        _fail(e)
    click.echo("dropped: " + "; ".join(what))


@cli.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
def status(config_path: str, as_json: bool) -> None:
    """Everything `cdc lag` knows, one field a line (or JSON)."""
    cfg = _config(config_path)
    try:
        r = lag_report(cfg)
    except CdcError as e:
        _fail(e)
    if as_json:
        click.echo(json.dumps(r, default=str))
        return
    for k, v in r.items():
        if k == "paused":
            click.echo(f"{k:>26}: {len(v) or ''}")
            for p in v:
                click.echo(f"{'':>28}rule {p['rule']} (source table {p['table']}) since "
                           f"{p['since']}, {p['parked']} changes parked: {p['reason']}")
            continue
        click.echo(f"{k:>26}: {'' if v is None else v}")


@cli.command()
@config_option
@click.option("--table", "tables", multiple=True, metavar="T",
              help="Only the rules reading this source table (repeatable).")
@click.option("--repair", is_flag=True,
              help="Upsert missing and different rows, delete extra ones.")
@click.option("--json", "as_json", is_flag=True, help="JSON output.")
def verify(config_path: str, tables: tuple[str, ...], repair: bool, as_json: bool) -> None:
    """Compare the source, mapped through the rules, with the target.

    Reads each source table in key order, maps it with the rule's own SQL on
    the target and compares by target key: rows missing from the target, rows
    that differ, and target rows the rules no longer produce (counted only when
    one rule alone writes the table). Exit 1 when anything differs (and was not
    repaired). A running `cdc run` pauses while each rule's comparison is taken.
    Rows compared so far go to stderr: redrawn on a terminal, else every 10 s.
    """
    from cdc.progress import Display
    from cdc.verify import verify as run_verify

    cfg = _config(config_path)
    # A big table takes minutes: say how far the comparison is, on stderr.
    display = Display(label="verify", verb="comparing")
    try:
        reports = run_verify(cfg, list(tables) or None, repair, progress=display.update)
    except CdcError as e:
        _fail(e)
    if as_json:
        click.echo(json.dumps([{"rule": r.rule, "source_table": r.source_table,
                                "target_table": r.target_table, "expected": r.expected,
                                "missing": r.missing, "different": r.different,
                                "extra": r.extra, "ok": r.ok, "repaired": r.repaired,
                                "sample_missing_keys": r.samples} for r in reports],
                              default=str))
    else:
        for r in reports:
            extra = "n/a (several rules write it)" if r.extra is None else str(r.extra)
            state = "ok" if r.ok else ("repaired" if r.repaired else "DIFFERS")
            click.echo(f"{state:<8} {r.rule}: {r.source_table} -> {r.target_table}: "
                       f"{r.expected} expected, {r.missing} missing, {r.different} different, "
                       f"{extra} extra" + (f" (missing e.g. {', '.join(r.samples)})"
                                           if r.samples and not r.repaired else ""))
    if any(not r.ok and not r.repaired for r in reports):
        sys.exit(1)


@cli.group()
def dlq() -> None:
    """The dead-letter table: changes that could not be applied, with why.

    \b
      cdc dlq list              # id, rule, table, attempts, error
      cdc dlq show ID           # the source row images and the full error
      cdc dlq retry ID… | --all # re-read the source rows now and apply them
      cdc dlq drop ID… | --all  # forget them (the target keeps what it has)

    The daemon retries dead letters by itself with backoff
    (dead_letters.retry_seconds, doubling) up to dead_letters.max_attempts
    times; after that they wait for one of these commands.
    """


def _dlq_target(cfg: Config) -> Any:
    from cdc.bookkeeping import require_setup
    from cdc.targets import open_target

    target = open_target(cfg)
    try:
        require_setup(target, cfg.pipeline, cfg.path)
    except CdcError:
        target.close()
        raise
    return target


def _jsonable_row(r: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in r.items():
        if isinstance(v, datetime):
            out[k] = v.isoformat()
        elif k == "row_data" and isinstance(v, str):
            out[k] = json.loads(v)
        else:
            out[k] = v
    return out


@dlq.command("list")
@config_option
@click.option("--json", "as_json", is_flag=True, help="One JSON array.")
def dlq_list(config_path: str, as_json: bool) -> None:
    """List dead letters, oldest first."""
    cfg = _config(config_path)
    try:
        target = _dlq_target(cfg)
        rows = target.dead_letter_rows()
        target.close()
    except CdcError as e:
        _fail(e)
    if as_json:
        click.echo(json.dumps([_jsonable_row(r) for r in rows], ensure_ascii=False, default=str))
        return
    if not rows:
        click.echo("no dead letters")
        return
    click.echo(f"{'id':>6}  {'rule':<16} {'table':<16} op {'tries':>5}  error")
    for r in rows:
        click.echo(f"{r['id']:>6}  {r['rule']:<16} {r['source_table']:<16} {r['operation']:<2} "
                   f"{r['attempts']:>5}  {r['error'][:100]}")


@dlq.command("show")
@config_option
@click.argument("dl_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="JSON output.")
def dlq_show(config_path: str, dl_id: int, as_json: bool) -> None:
    """Show one dead letter in full."""
    cfg = _config(config_path)
    try:
        target = _dlq_target(cfg)
        rows = target.dead_letter_rows([dl_id])
        target.close()
    except CdcError as e:
        _fail(e)
    if not rows:
        click.echo(f"cdc: error: no dead letter {dl_id} for pipeline {cfg.pipeline}", err=True)
        sys.exit(1)
    r = _jsonable_row(rows[0])
    if as_json:
        click.echo(json.dumps(r, ensure_ascii=False, default=str))
        return
    for k, v in r.items():
        if k == "row_data":
            v = json.dumps(v, ensure_ascii=False, indent=2, default=str)
        click.echo(f"{k}: {v}")


@dlq.command("retry")
@config_option
@click.argument("ids", type=int, nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Retry every dead letter of the pipeline.")
@click.option("--json", "as_json", is_flag=True, help="JSON output.")
def dlq_retry(config_path: str, ids: tuple[int, ...], all_: bool, as_json: bool) -> None:
    """Re-read the source rows of dead letters and apply them now.

    Those that apply are removed; those that fail again stay, with the new
    error and one more attempt counted. Exit 1 when any still fails.
    """
    if not ids and not all_:
        raise click.UsageError("name dead-letter IDs or use --all")
    from cdc import dlq as dlq_mod
    from cdc.plan import attach_converters, build_plan

    cfg = _config(config_path)
    try:
        source, target = _open(cfg)
        try:
            from cdc.bookkeeping import require_setup

            require_setup(target, cfg.pipeline, cfg.path)
            plan = build_plan(cfg, source, target)
            attach_converters(plan, cfg)
            res = dlq_mod.retry(cfg, source, target, plan, None if all_ else list(ids))
        finally:
            source.close()
            target.close()
    except CdcError as e:
        _fail(e)
    if as_json:
        click.echo(json.dumps({"tried": res.tried, "applied": res.applied, "failed": res.failed,
                               "skipped": res.skipped}))
    else:
        click.echo(f"retried {res.tried}: {res.applied} applied, {res.failed} still failing"
                   + (f", {res.skipped} skipped (no rule reads their table)"
                      if res.skipped else ""))
    if res.failed:
        sys.exit(1)


@dlq.command("drop")
@config_option
@click.argument("ids", type=int, nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Drop every dead letter of the pipeline.")
def dlq_drop(config_path: str, ids: tuple[int, ...], all_: bool) -> None:
    """Delete dead letters (the target is not changed)."""
    if not ids and not all_:
        raise click.UsageError("name dead-letter IDs or use --all")
    cfg = _config(config_path)
    try:
        target = _dlq_target(cfg)
        n = target.drop_dead_letters(None if all_ else list(ids))
        target.close()
    except CdcError as e:
        _fail(e)
    click.echo(f"dropped {n} dead letter(s)")


def main() -> None:
    cli(prog_name="cdc")


if __name__ == "__main__":
    main()
