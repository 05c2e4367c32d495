"""Commands of the service and its store: serve, import, rescore, publish, keys.

Every command takes ``--db`` (a SQLite path or a database URL; default ``./leadscore.db``,
or the ``LEADSCORE_DB`` environment variable).
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import logging
import math
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Column, Table

from leadscore.cli import _edge, app, err, out
from leadscore.cli.progress import Bar
from leadscore.engine.timeutil import from_micros
from leadscore.errors import ConfigError, ModelError, ModelIssue, NotFound, UsageError
from leadscore.spec import load_model

if TYPE_CHECKING:
    from leadscore.store import Store
    from leadscore.store.bulk import ImportReport

# The store (SQLAlchemy, Alembic) is imported inside the commands that use it, so that the
# other commands start without it.
DEFAULT_DB = "leadscore.db"  # = leadscore.store.DEFAULT_DB (a test checks)
SCOPES = ("ingest", "read", "admin")  # = leadscore.store.keys.SCOPES (a test checks)

__all__ = ["Bar", "check_port_free", "keys_app", "triggers_app"]

DbOpt = Annotated[
    str,
    typer.Option(
        "--db",
        envvar="LEADSCORE_DB",
        help="The store: a SQLite file path or a URL such as postgresql://user@host/db.",
    ),
]


def open_store(db: str) -> Store:
    """The store at ``db``, its score changes shown to the stored triggers as the server's
    are: a rescoring, import or publish from the command line fires them where it may (a
    webhook is queued in the outbox, which a running server sends within a second)."""
    from leadscore.store import open_store as open_
    from leadscore.store.triggers import TriggerEngine

    store = open_(db)
    TriggerEngine.attach(store)
    return store


def _must_exist(db: str) -> None:
    """For commands that read or change what a store holds: a SQLite file that is not there
    is a mistyped --db (or the wrong directory), not a store to create empty."""
    from leadscore.store.db import sqlite_file

    path = sqlite_file(db)
    if path is not None and not path.exists():
        raise UsageError(
            f"no store at {path}: `leadscore serve`, `import` or `publish` makes one "
            "(or give the store with --db or LEADSCORE_DB)"
        )


@contextmanager
def _opened(db: str, *, existing: bool = False) -> Iterator[Store]:
    """The store at ``db`` (with ``existing``, only one that is already there), closed when
    the block ends."""
    if existing:
        _must_exist(db)
    store = open_store(db)
    try:
        yield store
    finally:
        store.db.dispose()


def _open(db: str) -> Store:
    store = open_store(db)
    published = store.ensure_a_model()
    if published is not None:
        err.print(
            f"the store had no model: published the shipped {published.name} "
            "(replace it with `leadscore publish MODEL`)",
            markup=False,
        )
    return store


_SERVE_LOCKS: list[int] = []  # the lock files' descriptors, held while the server runs


def _one_server_per_sqlite_file(db: str) -> None:
    """On SQLite, refuse a second server on the same file (``<file>.serve-lock``, locked while
    the server runs): two would each keep caches the other's writes make stale, and score
    leads without events the other just stored. Commands (import, rescore...) may run beside
    a server; PostgreSQL takes several servers."""
    from leadscore.store.db import sqlite_file

    path = sqlite_file(db)
    if path is None:
        return
    lock = path.with_name(path.name + ".serve-lock")
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:  # a directory that is not there or not writable: the store says
        raise UsageError(f"cannot use the store {path}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        other = os.read(fd, 32).decode(errors="replace").strip()
        os.close(fd)
        raise UsageError(
            f"another `leadscore serve` uses the store {path}"
            + (f" (process {other})" if other else "")
            + ": SQLite takes one server; stop it first, or serve from PostgreSQL"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    _SERVE_LOCKS.append(fd)


def check_port_free(host: str, port: int) -> None:
    """A clear error now, rather than a server that starts loading and then cannot listen."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as e:
            raise UsageError(
                f"cannot listen on {host}:{port} ({e.strerror}): is another server running "
                "there? Choose another with --port."
            ) from None


def _when(us: int) -> str:
    return from_micros(us).strftime("%Y-%m-%d %H:%M UTC")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@app.command()
@_edge
def serve(
    db: DbOpt = DEFAULT_DB,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=1, max=65535)] = 8000,
    no_auth: Annotated[
        bool, typer.Option("--no-auth", help="Local mode without API keys (127.0.0.1 only).")
    ] = False,
    model: Annotated[
        list[Path] | None,
        typer.Option("--model", help="Model file to publish at start (repeatable)."),
    ] = None,
    triggers: Annotated[
        Path | None, typer.Option(help="Triggers file (thresholds and actions) to load at start.")
    ] = None,
    rescore_every: Annotated[
        float,
        typer.Option(help="Seconds between scheduled rescorings (decay, windows); 0: never."),
    ] = 3600.0,
    webhook_retry: Annotated[
        float,
        typer.Option(
            help="Seconds before a failed webhook is first retried; the wait doubles each "
            "time, up to an hour."
        ),
    ] = 10.0,
    webhook_timeout: Annotated[
        float, typer.Option(help="Seconds a webhook receiver has to answer.")
    ] = 10.0,
    log_level: Annotated[
        str,
        typer.Option(
            help="What the server logs (standard error): warning (problems only), info (also "
            "each request and each scheduled rescoring with its counts), or debug."
        ),
    ] = "warning",
    fast_commits: Annotated[
        bool,
        typer.Option(
            help="Do not wait for the disk on every commit (SQLite: synchronous NORMAL; "
            "PostgreSQL: synchronous_commit off): safe from a killed process, not from a power "
            "cut (nor, on PostgreSQL, a crash of the database server)."
        ),
    ] = False,
    cached_events: Annotated[
        int | None,
        typer.Option(
            min=0,
            show_default=False,
            help="Decoded events of recently rescored leads kept in memory, so that "
            "rescoring reads only their new events (default: 1,000,000; about 220 bytes "
            "each; 0: none).",
        ),
    ] = None,
    ingest_process: Annotated[
        bool,
        typer.Option(
            help="Store and rescore ingested events in a process of their own, beside the "
            "one that serves HTTP, so that the two use two cores (off: a thread of the "
            "server process)."
        ),
    ] = True,
    scoring_process: Annotated[
        bool,
        typer.Option(
            help="SQLite, with the ingest process: rescore ingested events' leads in a third "
            "process, so that storing a batch and scoring the one before use two cores "
            "(off: the ingest process does both)."
        ),
    ] = True,
    ingest_processes: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=32,
            show_default=False,
            help="PostgreSQL: ingest processes writing at once; a request of many leads is "
            "shared out among them by lead (default: 2 on PostgreSQL; 1 on SQLite, its only "
            "value).",
        ),
    ] = None,
) -> None:
    """Run the scoring service: ingest API, scores, history, models (OpenAPI at /docs)."""
    import uvicorn

    from leadscore.service.http import BoundedHttpTools
    from leadscore.service.serving import Server
    from leadscore.service.state import ENV_SETTINGS, Settings
    from leadscore.store.db import database_url

    if ingest_processes is not None and ingest_processes > 1:
        if not ingest_process:
            raise UsageError(
                f"--ingest-processes {ingest_processes} needs ingest processes: without "
                "--no-ingest-process (which writes in a thread of the server process)"
            )
        if database_url(db).startswith("sqlite"):
            raise UsageError(
                f"--ingest-processes {ingest_processes}: SQLite takes one writer at a time; "
                "more than one ingest process needs PostgreSQL (--db postgresql://...)"
            )
    if no_auth and not _loopback(host):
        raise UsageError(f"--no-auth serves without API keys: only on 127.0.0.1, not on {host}")
    for option, seconds, zero in (
        ("--rescore-every", rescore_every, True),
        ("--webhook-retry", webhook_retry, False),
        ("--webhook-timeout", webhook_timeout, False),
    ):
        if not (seconds >= 0 if zero else seconds > 0) or not math.isfinite(seconds):
            least = "0 (never) or more" if zero else "more than 0"
            raise UsageError(f"{option} takes seconds, {least}, not {seconds:g}")
    for path in model or []:
        if not path.is_file():  # as a model file that cannot be read is reported everywhere
            raise ModelError([ModelIssue(str(path), None, "", "no such file")])
    if triggers is not None and not triggers.is_file():
        raise ConfigError([ModelIssue(str(triggers), None, "", "no such file")])
    level = log_level.strip().lower()
    if level not in ("warning", "info", "debug"):
        raise UsageError(f"--log-level is warning, info or debug, not {log_level!r}")
    check_port_free(host, port)
    settings = Settings(
        db=db,
        no_auth=no_auth,
        models=[str(p) for p in model or []],
        triggers=str(triggers) if triggers else None,
        rescore_interval=rescore_every,
        retry_first_delay=webhook_retry,
        webhook_timeout=webhook_timeout,
        durable=not fast_commits,
        ingest_process=ingest_process,
        scoring_process=scoring_process,
        ingest_processes=ingest_processes or 0,
        freeze_at_start=True,
    )
    if cached_events is not None:
        settings.cached_events = cached_events
    store = open_store(db)  # create or migrate before the workers start; fail early
    try:  # the files the server would read at start, checked here: errors as validate has them
        given = {m.name: m for m in (load_model(p) for p in model or [])}
        if not given:
            store.ensure_a_model()  # as the server does at start
        if triggers:
            from leadscore.store.triggers import load_triggers

            load_triggers(triggers, sheets={**{s.name: s.model for s in store.sheets()}, **given})
    finally:
        store.db.dispose()
    _one_server_per_sqlite_file(db)  # after the checks: a refused start holds no lock
    os.environ[ENV_SETTINGS] = settings.to_env()
    err.print(
        f"leadscore starting on http://{host}:{port} "
        f"(store: {store.db.url}{'; no auth' if no_auth else ''})",
        markup=False,
    )
    ready = (
        f"leadscore serving on http://{host}:{port} (web interface: http://{host}:{port}/, "
        f"API docs: http://{host}:{port}/docs): ready"
    )

    class Announced(Server):
        """Says the service is ready once it listens (its start takes seconds: the store's
        check, the ingest and scoring processes), not before; and, stopping, what it ends and
        waits for (leadscore.service.serving)."""

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if self.started:
                err.print(ready, markup=False)

    if level != "warning":  # uvicorn logs its own; leadscore's lines go to standard error too
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger("leadscore").addHandler(handler)
        logging.getLogger("leadscore").setLevel(level.upper())
    config = uvicorn.Config(
        "leadscore.ui.app:app_from_env",
        factory=True,
        host=host,
        port=port,
        log_level=level,
        # httptools, with bounds on heads, trailers and pipelining (leadscore.service.http)
        http=BoundedHttpTools,
    )
    server = Announced(config)
    server.run()
    if not server.started:  # its start failed (the log says why): a supervisor restarts it
        raise typer.Exit(3)


def _counted(n: int, things: str) -> str:
    """``1 lead``, ``2 leads`` (``things`` in the plural)."""
    return f"{n:,} {things if n != 1 else things.removesuffix('s')}"


def _print_import(report: ImportReport) -> None:
    parts = [f"{_counted(report.stored, report.kind)} stored"]
    if report.repeated:
        parts.append(f"{report.repeated:,} already there")
    out.print(f"{_counted(report.rows, 'rows')} read: " + ", ".join(parts), markup=False)
    for w in report.warnings:
        err.print(f"warning: {w}", markup=False)
    for e in report.errors[:20]:
        err.print(f"skipped: {e}", markup=False)
    if report.rescore is not None:
        r = report.rescore
        changes = _counted(r.changed, "score changes")
        out.print(f"rescored {_counted(r.leads, 'leads')}: {changes} recorded", markup=False)


@app.command("import")
@_edge
def import_(
    kind: Annotated[str, typer.Argument(help="What the file holds: leads, events or outcomes.")],
    file: Annotated[
        Path,
        typer.Argument(
            help="CSV, Parquet, JSON lines or a JSON array, by its extension; FILE.csv.gz or "
            "FILE.jsonl.gz: gzip-compressed; -: standard input (compressed or not).",
        ),
    ],
    db: DbOpt = DEFAULT_DB,
    fmt: Annotated[
        str | None,
        typer.Option(
            "--format",
            help="The file's format, csv, jsonl or parquet (default: by its extension; for "
            "standard input or a .gz file without one, told from its first line).",
        ),
    ] = None,
    lead_id_column: Annotated[
        str, typer.Option(help="Name of the lead id column (may contain spaces).")
    ] = "lead_id",
    skip_bad_rows: Annotated[
        bool,
        typer.Option(
            help="Skip bad rows (a missing id, an unreadable time, a value the store cannot "
            "keep, an unknown stage, a line that is no row) and list them, instead of "
            "stopping at them."
        ),
    ] = False,
    fire_triggers: Annotated[
        bool, typer.Option(help="Let the score changes of this import fire triggers.")
    ] = False,
) -> None:
    """Bulk-load leads, events or outcomes into the store, then rescore (progress shown).

    The file is read and stored a batch at a time: memory stays bounded however large it
    is, and should a bad row stop the import, the rows before its batch stay stored."""
    from leadscore.inputs.batches import open_input
    from leadscore.store.bulk import ImportReport, import_events, import_leads, import_outcomes

    if kind not in ("leads", "events", "outcomes"):
        raise UsageError(f"import leads, events or outcomes, not {kind!r}")
    # a mistyped name, or an input whose format cannot be told, opens (or creates) no store
    source = open_input(file, fmt)
    try:
        store = _open(db)
    except BaseException:
        source.close()
        raise
    bar = Bar()
    report = ImportReport(kind)
    try:
        with source, bar:
            if kind == "leads":
                import_leads(
                    store,
                    source,
                    lead_id_column=lead_id_column,
                    skip_bad_rows=skip_bad_rows,
                    fire_triggers=fire_triggers,
                    progress=bar,
                    report=report,
                )
            elif kind == "events":
                import_events(
                    store,
                    source,
                    lead_id_column=lead_id_column,
                    skip_bad_rows=skip_bad_rows,
                    fire_triggers=fire_triggers,
                    progress=bar,
                    report=report,
                )
            else:
                import_outcomes(
                    store,
                    source,
                    lead_id_column=lead_id_column,
                    skip_bad_rows=skip_bad_rows,
                    progress=bar,
                    report=report,
                )
        _print_import(report)
    except BaseException as exc:
        said = _what_was_stored(report, bar.last, db, source.name)
        if said:
            exc.add_note(said)
        raise
    finally:
        store.db.dispose()


def _what_was_stored(
    report: ImportReport, last: tuple[str, int, int] | None, db: str, name: str
) -> str | None:
    """After an import stopped part way: what of the file the store now holds (it stores a
    chunk of rows per transaction, then rescores), and what to do about it."""
    if not report.done:
        return None
    what = last[0] if last is not None else f"storing {report.kind}"
    rescore = f"`leadscore rescore{'' if db == DEFAULT_DB else ' --db ' + db}`"
    of = f" of {report.total:,}" if report.total is not None else ""
    first = f"the first {report.done:,}{of} rows are stored"
    to = f"to {report.done_to} of {name}"
    if report.kind == "outcomes":  # nothing to rescore
        if report.stored_all:
            return None
        return (
            f"stopped while {what}: {first} ({to}); importing the file again stores the rest "
            "(repeats are ignored)"
        )
    if report.stored_all:
        return (
            f"stopped while {what}: every row of the file is stored; run {rescore} to bring "
            "the scores up to date"
        )
    again = (
        " Importing the file again skips the events it has stored when the file has an "
        "event_id column, and stores them twice when it has not."
        if report.kind == "events"
        else " Importing the file again is safe."
    )
    return (
        f"stopped while {what}: {first} (a whole number of chunks, {to}), not yet rescored: "
        f"run {rescore}.{again}"
    )


@app.command()
@_edge
def rescore(
    db: DbOpt = DEFAULT_DB,
    sheet: Annotated[
        list[str] | None, typer.Option("--sheet", help="Only this sheet (repeatable).")
    ] = None,
    fire_triggers: Annotated[
        bool, typer.Option(help="Let the changes fire triggers (as the scheduled rescoring does).")
    ] = True,
) -> None:
    """Bring every stored lead's score up to now (decay, windows, inactivity).

    Uses the batch evaluator; changes go to the history with reason `decay`.
    """
    _must_exist(db)
    store = _open(db)
    try:
        active = [s.name for s in store.sheets()]
        unknown = [name for name in sheet or [] if name not in active]
        if unknown:
            raise UsageError(
                f"--sheet: no active sheet {unknown[0]!r} (active: {', '.join(active)})"
            )
        with Bar() as bar:
            report = store.rescore_all(
                "decay", sheets=sheet or None, fire_triggers=fire_triggers, progress=bar
            )
        out.print(
            f"rescored {_counted(report.leads, 'leads')}: "
            f"{_counted(report.changed, 'score changes')} recorded"
            + (f", {report.skipped:,} kept (rescored live meanwhile)" if report.skipped else ""),
            markup=False,
        )
    finally:
        store.db.dispose()


@app.command()
@_edge
def publish(
    model: Annotated[Path, typer.Argument(help="The model file to publish.")],
    db: DbOpt = DEFAULT_DB,
    fire_triggers: Annotated[
        bool, typer.Option(help="Let the score changes of the new model fire triggers.")
    ] = False,
) -> None:
    """Store a model file as a new version, make it active and rescore every lead with it."""
    if not model.is_file():
        raise ModelError([ModelIssue(str(model), None, "", "no such file")])
    with _opened(db) as store:
        draft = store.add_model(model.read_text(encoding="utf-8"), str(model))
        if draft.status == "published":
            out.print(f"{draft.name} version {draft.version} is already active", markup=False)
            left = store.replaced_scores(draft.name)
            if left:  # its publish's rescoring stopped part way
                out.print(
                    f"{_counted(left, 'leads')} still {'has' if left == 1 else 'have'} a score "
                    "of a version it replaced: `leadscore rescore` brings "
                    f"{'it' if left == 1 else 'them'} over",
                    markup=False,
                )
            return
        with Bar() as bar:
            report = store.publish(
                draft.name, draft.version, fire_triggers=fire_triggers, progress=bar
            )
        out.print(
            f"published {draft.name} version {draft.version}: rescored "
            f"{_counted(report.leads, 'leads')}, "
            f"{_counted(report.changed, 'score changes')} recorded",
            markup=False,
        )


keys_app = typer.Typer(help="API keys: create, list, revoke.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


@keys_app.command("create")
@_edge
def keys_create(
    name: Annotated[str, typer.Argument(help="Who or what uses the key, e.g. website-forms.")],
    scope: Annotated[
        list[str] | None,
        typer.Option("--scope", help=f"Scope (repeatable): {', '.join(SCOPES)}. Default: ingest."),
    ] = None,
    db: DbOpt = DEFAULT_DB,
) -> None:
    """Create an API key; its full text is shown once, only a hash is stored."""
    from leadscore.store.keys import create_key

    with _opened(db) as store, store.db.write() as conn:
        key, text = create_key(conn, name, scope or ["ingest"], store.clock())
    err.print(
        f"key {key.id} for {key.name!r}, scopes: {' '.join(sorted(key.scopes))}", markup=False
    )
    err.print("store it now: it cannot be shown again", markup=False)
    out.print(text, markup=False)


@keys_app.command("list")
@_edge
def keys_list(db: DbOpt = DEFAULT_DB) -> None:
    """List API keys (never their secrets)."""
    from leadscore.store.keys import list_keys

    with _opened(db, existing=True) as store, store.db.read() as conn:
        keys = list_keys(conn)
    table = Table("name", "scopes", "created", "last used", "revoked")
    # the id whole, whatever the terminal's width: `keys revoke` takes it
    table.columns.insert(
        0, Column("id", no_wrap=True, min_width=max((len(k.id) for k in keys), default=2))
    )
    for k in keys:
        used = _when(k.last_used_us) if k.last_used_us is not None else ""
        revoked = _when(k.revoked_us) if k.revoked_us is not None else ""
        scopes = " ".join(sorted(k.scopes))
        table.add_row(k.id, escape(k.name), scopes, _when(k.created_us), used, revoked)
    out.print(table)


@keys_app.command("revoke")
@_edge
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (or its full text).")],
    db: DbOpt = DEFAULT_DB,
) -> None:
    """Revoke an API key (running servers stop accepting it within 30 seconds)."""
    from leadscore.store.keys import revoke_key

    try:
        with _opened(db, existing=True) as store, store.db.write() as conn:
            key = revoke_key(conn, key_id, store.clock())
    except NotFound as exc:  # a mistyped id: called wrongly (2), as an already revoked one
        raise UsageError(str(exc)) from None
    out.print(f"revoked key {key.id} ({key.name})", markup=False)


@app.command("delete-lead")
@_edge
def delete_lead(
    lead_id: Annotated[str, typer.Argument(help="The lead's id.")],
    db: DbOpt = DEFAULT_DB,
) -> None:
    """Erase a lead and everything recorded about it (a person's request to be forgotten):
    events, scores and history, outcomes, stage changes, trigger firings and their webhook
    calls, anonymous and merged ids."""
    from leadscore.store.lifecycle import erase_lead

    try:
        with _opened(db, existing=True) as store, store.db.write() as conn:
            counts = erase_lead(conn, lead_id)
    except NotFound as exc:  # a mistyped id: called wrongly (2)
        raise UsageError(str(exc)) from None
    gone = ", ".join(_counted(n, what) for what, n in counts.items() if n and what != "leads")
    out.print(f"deleted lead {lead_id}" + (f" with {gone}" if gone else ""), markup=False)


triggers_app = typer.Typer(help="Thresholds and actions: check, set, list.", no_args_is_help=True)
app.add_typer(triggers_app, name="triggers")


@triggers_app.command("check")
@_edge
def triggers_check(
    file: Annotated[Path, typer.Argument(help="The triggers file.")],
    db: Annotated[
        str | None,
        typer.Option(
            "--db",
            envvar="LEADSCORE_DB",
            help="Also check sheet, band and grade names against this store's models.",
        ),
    ] = None,
) -> None:
    """Check a triggers file; every problem is listed as file:line: path: message."""
    from leadscore.store.triggers import load_triggers

    sheets = None
    missing = ""
    if db is not None:
        try:
            with _opened(db, existing=True) as store:
                sheets = {s.name: s.model for s in store.sheets()}
        except UsageError:  # LEADSCORE_DB may name a store not made yet: the file is checked
            missing = f"no store at {db} yet"
    specs = load_triggers(file, sheets=sheets)
    unchecked = (
        ""
        if sheets is not None
        else f" (sheet, band and grade names not checked: {missing})"
        if missing
        else " (sheet, band and grade names not checked: give the store with --db to check them)"
    )
    out.print(f"{file}: {_counted(len(specs), 'triggers')}, valid{unchecked}", markup=False)


@triggers_app.command("set")
@_edge
def triggers_set(
    file: Annotated[Path, typer.Argument(help="The triggers file.")],
    db: DbOpt = DEFAULT_DB,
) -> None:
    """Replace the store's triggers with the file's (a running server uses them at once)."""
    from leadscore.store.triggers import load_triggers, save_triggers

    if file.is_file() and not file.read_text(encoding="utf-8", errors="replace").strip():
        raise UsageError(  # most likely a mistake, not a wish to drop every trigger
            f"{file} is empty: to remove every trigger, set a file holding `triggers: []`"
        )
    load_triggers(file)  # a file that is wrong in itself opens (or creates) no store
    store = _open(db)  # a new store gets the shipped model, as serve gives it: names to check
    try:
        specs = load_triggers(file, sheets={s.name: s.model for s in store.sheets()})
        with store.db.write() as conn:
            save_triggers(conn, specs, store.clock())
    finally:
        store.db.dispose()
    out.print(f"{_counted(len(specs), 'triggers')} set from {file}", markup=False)


@triggers_app.command("list")
@_edge
def triggers_list(db: DbOpt = DEFAULT_DB) -> None:
    """List the store's triggers (webhook secrets masked)."""
    from leadscore.store.triggers import list_triggers

    with _opened(db, existing=True) as store, store.db.read() as conn:
        stored = list_triggers(conn)
    table = Table("id", "enabled", "sheet", "when", "actions")
    for t in stored:
        d: dict[str, Any] = t.summary()["definition"]
        when = ", ".join(  # as the file says it (true, not Python's True)
            f"{k}: {json.dumps(v) if isinstance(v, bool) else v}"
            for k, v in (d.get("when") or {}).items()
            if v is not None
        )
        actions = ", ".join(next(iter(a)) for a in d.get("actions", []) if a)
        table.add_row(t.id, "yes" if t.enabled else "no", d.get("sheet") or "all", when, actions)
    out.print(table)
