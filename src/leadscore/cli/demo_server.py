"""``leadscore demo --serve``: the service on generated data, with a live stream of events.

It builds a fresh SQLite store (``leadscore-demo.db``) from the seeded generator with events up
to now, starts the service without keys on 127.0.0.1, and keeps sending a few events a second
through the store, printing each lead that becomes hot, until Ctrl-C.
"""

from __future__ import annotations

import contextlib
import random
import tempfile
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from leadscore.cli.service import Bar, check_port_free
from leadscore.engine.timeutil import now_micros
from leadscore.sample import write_sample
from leadscore.store import EventInput, Store, open_store
from leadscore.store.bulk import import_events, import_leads, import_outcomes
from leadscore.store.keeper import ChangeListener, Progress
from leadscore.store.overview import DAY_US
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


REPLAY_DAYS = 3  # the demo's last days of events arrive as if streamed: scores have a history
OUTCOME_SHIFT_DAYS = 120  # the sample's outcomes come after its last day: moved into the past


def load_demo_store(
    store: Store,
    leads_file: Path,
    events_file: Path,
    *,
    outcomes_file: Path | None = None,
    replay_days: int = REPLAY_DAYS,
    progress: Progress | None = None,
) -> None:
    """Load generated leads and events into ``store`` as if the service had been running:
    events older than ``replay_days`` are imported in bulk (scored as of then), the rest arrive
    hour by hour through real-time ingest with the store's clock at that hour, and every lead
    is rescored once a simulated day (decay), so the history, the sparklines and the MQLs per
    day show what a live store would have recorded. Then every lead is brought up to now.

    The sample's outcomes (``outcomes_file``) follow its last day; they are stored moved
    :data:`OUTCOME_SHIFT_DAYS` back, so that they have happened and the Validation page has
    something to compare with."""
    real_clock = store.clock
    now = real_clock()
    start = now - replay_days * DAY_US
    table = pq.read_table(events_file)
    ts = pc.cast(table.column("ts"), pa.int64())
    recent = pc.greater_equal(ts, start)
    try:
        store.clock = lambda: start
        import_leads(store, leads_file, progress=progress)
        import_events(store, table.filter(pc.invert(recent)), progress=progress)
        later = table.filter(recent).sort_by("ts")
        rows = later.to_pylist()
        hour = 3_600_000_000
        done = 0
        for t in range(start, now, hour):
            batch: list[EventInput] = []
            last = t + hour >= now  # the last hour also takes any event stamped at `now`
            while done < len(rows) and (last or _micros(rows[done]["ts"]) < t + hour):
                r = rows[done]
                props = {"url": r["url"]} if r.get("url") else {}
                batch.append(
                    EventInput(
                        r["type"],
                        _micros(r["ts"]),
                        r["lead_id"],
                        item=r.get("item"),
                        properties=props,
                        message_id=r.get("event_id"),
                    )
                )
                done += 1
            store.clock = partial(min, t + hour, now)
            if batch:
                store.ingest_events(batch)
            if (t + hour - start) % DAY_US == 0 and t + hour < now:
                # the server's scheduled rescoring, once a simulated day: decay shows as
                # it happens, not as one drop at the end
                store.rescore_all("decay", as_of_us=t + hour)
            if progress:
                progress("replaying the last days", done, len(rows))
    finally:
        store.clock = real_clock
    store.rescore_all("decay", progress=progress)
    if outcomes_file is not None:
        outcomes = pq.read_table(outcomes_file)
        moved = pc.subtract(outcomes.column("ts"), pa.scalar(timedelta(days=OUTCOME_SHIFT_DAYS)))
        where = outcomes.schema.get_field_index("ts")
        import_outcomes(store, outcomes.set_column(where, "ts", moved), progress=progress)


def _micros(value: datetime) -> int:
    return (
        int(value.timestamp() * 1_000_000)
        if value.tzinfo
        else int(value.replace(tzinfo=UTC).timestamp() * 1_000_000)
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

    from leadscore.service import Settings
    from leadscore.service.http import BoundedHttpTools
    from leadscore.service.serving import Server
    from leadscore.ui import create_app

    check_port_free("127.0.0.1", port)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    store = open_store(db, durable=False)
    store.ensure_a_model()
    with tempfile.TemporaryDirectory(prefix="leadscore-demo-") as tmp:
        files = write_sample(Path(tmp), n_leads, n_events, datetime.now(UTC), seed=seed)
        with Bar() as bar:
            load_demo_store(
                store, files.leads, files.events, outcomes_file=files.outcomes, progress=bar
            )
    with store.db.read() as conn:
        lead_ids = [str(i) for (i,) in conn.execute(sa.select(leads.c.lead_id))]
    store.listener = _announce(say, store.listener)
    app = create_app(Settings(db=str(db), no_auth=True, rescore_interval=600), store=store)
    server = Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", http=BoundedHttpTools)
    )
    stop = threading.Event()
    streamer = threading.Thread(
        target=_stream, args=(store, lead_ids, stop, rate), name="demo-stream", daemon=True
    )
    url = f"http://127.0.0.1:{port}"
    say(f"\nleadscore is serving {n_leads:,} leads at {url}")
    say(f"  open {url}/ in a browser: leads, overview, model editor (API docs: {url}/docs)")
    say(f"  validation:  {url}/validation (sample outcomes, dated in the last 120 days)")
    say(f"  hot leads:   curl '{url}/api/v1/leads?band=hot&limit=5'")
    if lead_ids:
        say(f"  one lead:    curl '{url}/api/v1/leads/{lead_ids[0]}'")
    say(f"streaming {rate:g} events a second; leads that turn hot are listed below. Ctrl-C stops.")
    streamer.start()
    try:
        # Ctrl-C is how the demo is stopped: uvicorn shuts down, then raises the signal again
        with contextlib.suppress(KeyboardInterrupt):
            server.run()
    finally:
        stop.set()
        streamer.join(timeout=5)
        store.db.dispose()
