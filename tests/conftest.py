from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from leadscore.engine.timeutil import parse_instant
from leadscore.store import Store, database_url, open_database, schema

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
    name = f"leadscore_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
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
