"""A served web interface on a seeded store, for the UI tests (HTTP and browser)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from leadscore.cli.demo_server import load_demo_store
from leadscore.sample import write_sample
from leadscore.service import Settings
from leadscore.store import EventInput, LeadInput, Store, open_store
from leadscore.ui import create_app
from tests.conftest import RunningServer

EVIL = "<script>alert(1)</script>"
EVIL_URL = "javascript:alert(1)//<img src=x onerror=alert(2)>"


def seed(directory: Path, leads: int = 400, events: int = 20000) -> Store:
    """A SQLite store with generated leads whose last days of events arrived as if streamed,
    plus one lead whose name and event carry markup."""
    store = open_store(str(directory / "ui.db"), durable=False)
    store.ensure_a_model()
    files = write_sample(directory, leads, events, datetime.now(UTC), seed=11, progress=False)
    load_demo_store(store, files.leads, files.events, outcomes_file=files.outcomes, replay_days=5)
    store.upsert_leads(
        [
            LeadInput(
                "evil-1",
                email="evil@example.com",
                fields={"first_name": EVIL, "company": EVIL, "job_title": "VP Sales"},
            )
        ]
    )
    store.ingest_events(
        [
            EventInput(
                "page_view",
                store.clock() - 60_000_000,
                "evil-1",
                properties={"url": EVIL_URL, "note": EVIL},
            )
        ]
    )
    return store


@contextlib.contextmanager
def running_site(directory: Path, **settings: object) -> Iterator[tuple[str, Store]]:
    store = seed(directory)
    settings.setdefault("no_auth", True)
    settings.setdefault("rescore_interval", 0)
    settings.setdefault("deliver_interval", 0)
    app = create_app(Settings(**settings), store=store)  # type: ignore[arg-type]
    with RunningServer(app) as server:
        yield server.url, store
    store.db.dispose()
