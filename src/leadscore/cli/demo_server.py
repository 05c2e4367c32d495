"""``leadscore demo --serve``: the service on generated data, with a live stream of events.

It builds a fresh SQLite store (``leadscore-demo.db``) from the seeded generator with events up
to now, starts the service without keys on 127.0.0.1, and keeps sending a few events a second
through the store, printing each lead that becomes hot, until Ctrl-C.
"""

from __future__ import annotations

import random
import tempfile
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from leadscore.cli.service import Bar, check_port_free
from leadscore.engine.timeutil import now_micros
from leadscore.sample import write_sample
from leadscore.store import EventInput, Store, open_store
from leadscore.store.bulk import import_events, import_leads
from leadscore.store.keeper import ChangeListener
from leadscore.store.schema import leads
from leadscore.store.scores import ScoreChange

Say = Callable[[str], None]

__all__ = ["run_demo_server"]

# (event type, properties, weight): mostly reading and email, now and then a hand-raiser
STREAM: tuple[tuple[str, dict[str, str], int], ...] = (
    ("page_view", {"url": "/pricing"}, 20),
    ("page_view", {"url": "/product/features"}, 25),
    ("page_view", {"url": "/blog/lead-scoring-101"}, 20),
    ("page_view", {"url": "/careers"}, 3),
    ("email_open", {}, 20),
    ("email_click", {}, 8),
    ("form_submit", {}, 4),
    ("webinar_attended", {"item": "wb-live"}, 3),
    ("demo_request", {}, 1),
    ("trial_signup", {}, 1),
)


def _announce(say: Say, then: ChangeListener | None) -> ChangeListener:
    def listener(conn: Connection, changes: Sequence[ScoreChange], now_us: int, fire: bool) -> None:
        for c in changes:
            if c.new_band == "hot" and c.old_band not in (None, "hot"):
                say(f"  {c.lead_id} is hot on {c.sheet}: {c.old_score:.1f} -> {c.new_score:.1f}")
        if then is not None:
            then(conn, changes, now_us, fire)

    return listener


def _stream(store: Store, lead_ids: list[str], stop: threading.Event, rate: float) -> None:
    rng = random.Random(7)
    weights = [w for _, _, w in STREAM]
    # a small set of leads gets most of the attention, as in real traffic
    active = rng.sample(lead_ids, min(300, len(lead_ids)))
    n = 0
    while not stop.wait(1.0 / rate):
        etype, props, _ = rng.choices(STREAM, weights)[0]
        props = dict(props)
        item = props.pop("item", None)
        n += 1
        store.ingest_events(
            [
                EventInput(
                    etype,
                    now_micros(),
                    rng.choice(active),
                    item=item if item is None else f"{item}-{n % 5}",
                    properties=props,
                    message_id=f"demo-{now_micros()}-{n}",
                )
            ]
        )


def run_demo_server(
    db: Path,
    port: int,
    n_leads: int,
    n_events: int,
    seed: int,
    rate: float,
    say: Say,
) -> None:
    """Build the demo store, serve it and stream events until interrupted."""
    import uvicorn

    from leadscore.service import Settings, create_app

    check_port_free("127.0.0.1", port)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    store = open_store(db, durable=False)
    store.ensure_a_model()
    with tempfile.TemporaryDirectory(prefix="leadscore-demo-") as tmp:
        files = write_sample(Path(tmp), n_leads, n_events, datetime.now(UTC), seed=seed)
        with Bar() as bar:
            import_leads(store, files.leads, progress=bar)
            import_events(store, files.events, progress=bar)
    with store.db.read() as conn:
        lead_ids = [str(i) for (i,) in conn.execute(sa.select(leads.c.lead_id))]
    store.listener = _announce(say, store.listener)
    app = create_app(Settings(db=str(db), no_auth=True, rescore_interval=600), store=store)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    stop = threading.Event()
    streamer = threading.Thread(
        target=_stream, args=(store, lead_ids, stop, rate), name="demo-stream", daemon=True
    )
    url = f"http://127.0.0.1:{port}"
    say(f"\nleadscore is serving {n_leads:,} leads at {url}  (API docs: {url}/docs)")
    say(f"  hot leads:   curl '{url}/api/v1/leads?band=hot&limit=5'")
    if lead_ids:
        say(f"  one lead:    curl '{url}/api/v1/leads/{lead_ids[0]}'")
    say(f"streaming {rate:g} events a second; leads that turn hot are listed below. Ctrl-C stops.")
    streamer.start()
    try:
        server.run()
    finally:
        stop.set()
        streamer.join(timeout=5)
        store.db.dispose()
