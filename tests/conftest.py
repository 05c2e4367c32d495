from __future__ import annotations

import contextlib
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from leadscore.engine.timeutil import parse_instant
from leadscore.store import Store, database_url, open_database, schema
from tests.webhook_receiver import free_port

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
CONFORMANCE = SHARED / "conformance"
MODELS = ROOT / "src" / "leadscore" / "models"


@pytest.fixture(scope="session")
def conformance() -> Path:
    if not (CONFORMANCE / "expected.csv").exists():
        pytest.skip(f"conformance vectors not found at {CONFORMANCE}")
    return CONFORMANCE


# --- stores: every store test runs on SQLite and on the real PostgreSQL -------------------------

PG_SERVER = os.environ.get("LEADSCORE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
# The names of the databases the tests make on that server begin with this (developers sharing
# one server each take a prefix of their own)
PG_PREFIX = os.environ.get("LEADSCORE_TEST_PG_PREFIX", "leadscore")


def _pg_reachable() -> str | None:
    """None when the PostgreSQL test server answers, else why not."""
    try:
        engine = sa.create_engine(database_url(PG_SERVER))
        with engine.connect():
            pass
        engine.dispose()
    except Exception as e:
        return f"PostgreSQL is not reachable at {PG_SERVER}: {type(e).__name__}"
    return None


def skip_or_fail(reason: str) -> None:
    """Skip a test that needs something absent; under CI that is a failure instead."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: this must not be skipped)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, migrated once, dropped at the end."""
    why = _pg_reachable()
    if why:
        skip_or_fail(why)
    name = f"{PG_PREFIX}_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = sa.create_engine(database_url(PG_SERVER), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = PG_SERVER.rsplit("/", 1)[0] + f"/{name}"
    open_database(url).dispose()
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


class Clock:
    """A settable clock for stores under test (microseconds since the epoch)."""

    def __init__(self, start: str = "2026-06-30T12:00:00Z") -> None:
        self.now = parse_instant(start)

    def __call__(self) -> int:
        return self.now

    def advance(self, days: float = 0, seconds: float = 0) -> None:
        self.now += round(days * 86_400_000_000 + seconds * 1_000_000)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty, migrated store's URL: a SQLite file, or the session's PostgreSQL database
    with every table emptied."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    url: str = request.getfixturevalue("pg_database")
    db = open_database(url, migrate=False)
    with db.engine.begin() as conn:
        names = ", ".join(f'"{t.name}"' for t in schema.metadata.sorted_tables)
        conn.exec_driver_sql(f"TRUNCATE {names} RESTART IDENTITY CASCADE")
    db.dispose()
    return url


@pytest.fixture
def store(db_url: str, clock: Clock) -> Iterator[Store]:
    """A store on ``db_url`` with the settable ``clock``."""
    s = Store(open_database(db_url), clock=clock)
    try:
        yield s
    finally:
        s.db.dispose()


# --- the service on a real socket ---------------------------------------------------------------


@contextlib.contextmanager
def watching(store: Store, see: Callable[[list[str]], None]) -> Iterator[None]:
    """``see(statements)`` before each round trip of the store to its database while the
    block runs: one statement through SQLAlchemy (or an executemany), or several sent
    together on PostgreSQL (leadscore.store.db.send_together and what uses it)."""
    from leadscore.store import db as dbmod

    def listen(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        see([statement])

    real = dbmod._together

    def together(conn: Any, todo: Any) -> list[list[Any]]:
        see([sql for sql, *_ in todo])
        return real(conn, todo)

    sa.event.listen(store.db.engine, "before_cursor_execute", listen)
    dbmod._together = together  # type: ignore[assignment]
    try:
        yield
    finally:
        dbmod._together = real  # type: ignore[assignment]
        sa.event.remove(store.db.engine, "before_cursor_execute", listen)


@contextlib.contextmanager
def sent_statements(store: Store, *, round_trips: bool = False) -> Iterator[list[str]]:
    """Every statement the store sends while the block runs (see :func:`watching`); with
    ``round_trips``, one entry per round trip, whitespace collapsed, statements sent
    together as ``TOGETHER: first ; second ; ...``."""
    seen: list[str] = []

    def see(statements: list[str]) -> None:
        if not round_trips:
            seen.extend(statements)
            return
        texts = [" ".join(s.split()) for s in statements]
        seen.append(texts[0] if len(texts) == 1 else "TOGETHER: " + " ; ".join(texts))

    with watching(store, see):
        yield seen


class RunningServer:
    """A uvicorn server in a thread, serving ``app`` on a free loopback port."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> RunningServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def _serving(store: Store, create: Callable[..., Any]) -> Iterator[Callable[..., httpx.Client]]:
    from leadscore.service import Settings

    stack = contextlib.ExitStack()

    def start(**settings: Any) -> httpx.Client:
        settings.setdefault("rescore_interval", 0)
        settings.setdefault("deliver_interval", 0)
        app = create(Settings(**settings), store=store)
        running = stack.enter_context(RunningServer(app))
        return stack.enter_context(httpx.Client(base_url=running.url, timeout=30))

    with stack:
        yield start


@pytest.fixture
def serve(store: Store) -> Iterator[Callable[..., httpx.Client]]:
    """Start the service on the test ``store``: ``serve(no_auth=True, ...)`` gives a client
    (settings as keyword arguments; scheduled work is off unless asked for)."""
    from leadscore.service import create_app

    yield from _serving(store, create_app)


@pytest.fixture
def serve_ui(store: Store) -> Iterator[Callable[..., httpx.Client]]:
    """As ``serve``, with the web interface."""
    from leadscore.ui import create_app

    yield from _serving(store, create_app)
