"""Rescorings of the whole store in a child process (leadscore.service.rescoring): the
scheduled rescoring, ``POST /api/v1/rescore`` and publishing, for a store the service opened
itself, with the triggers and errors they have in the server's own thread."""

from __future__ import annotations

import multiprocessing
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from leadscore.engine.timeutil import parse_instant
from leadscore.errors import NotFound, StoreError
from leadscore.service import Settings, create_app
from leadscore.service.rescoring import Rescorer, Stopped
from leadscore.store import Store
from leadscore.store.db import open_database
from leadscore.store.leads import EventInput, LeadInput
from leadscore.store.triggers import firings, parse_triggers, save_triggers
from tests.conftest import Clock, RunningServer

# The demo request counts for 30 days: rescored today, a lead hot from one in 2025 cools.
MODEL = """
version: 1
name: tiny
profile:
  - {id: vp, if: {field: title, contains: vp}, points: 30}
activity:
  - {id: demo, event: demo_request, points: 50, window_days: 30}
bands: {cold: -.inf, warm: 40, hot: 75}
mql: hot
"""

COOLED = """
triggers:
  - id: cooled
    when: {leaves_band: hot}
    actions:
      - set_stage: recycled
"""


def hot_lead_in_2025(store: Store, clock: Clock) -> None:
    clock.now = parse_instant("2025-01-01T00:00:00Z")
    store.ensure_published(MODEL, "tiny.yaml")
    with store.db.write() as conn:
        save_triggers(conn, parse_triggers(COOLED), clock())
    store.upsert_leads([LeadInput("L1", fields={"title": "VP Sales"})])
    store.ingest_events([EventInput("demo_request", clock.now, "L1")])
    assert current(store)["band"] == "hot"


def current(store: Store) -> dict[str, Any]:
    with store.db.read() as conn:
        row = conn.exec_driver_sql(
            "SELECT score, band FROM scores WHERE lead_id = 'L1' AND sheet = 'tiny'"
        ).one()
    return {"score": row[0], "band": row[1]}


def test_a_rescoring_runs_in_a_child_with_the_triggers(
    store: Store, clock: Clock, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The child rescores as of now (its own clock): L1's demo request is out of its window,
    the lead leaves hot (history: decay) and the trigger on that sets its stage, as the
    server's own rescoring would. This process's store does none of it."""
    hot_lead_in_2025(store, clock)

    def not_here(*args: object, **kwargs: object) -> None:
        raise AssertionError("rescored in the server process")

    monkeypatch.setattr(store, "rescore_all", not_here)
    report = Rescorer(store, db_url, durable=False, apart=True).rescore("decay")
    assert (report.reason, report.leads, report.changed) == ("decay", 1, 1)
    assert current(store) == {"score": 30.0, "band": "cold"}
    with store.db.read() as conn:
        reasons = conn.exec_driver_sql(
            "SELECT reason FROM score_history WHERE lead_id = 'L1' ORDER BY id"
        ).scalars()
        assert list(reasons) == ["profile", "event", "decay"]
        assert [f["trigger_id"] for f in firings(conn, lead_id="L1")] == ["cooled"]
        stage = conn.exec_driver_sql("SELECT stage FROM leads WHERE lead_id = 'L1'").scalar()
    assert stage == "recycled"


def test_a_publish_in_a_child_is_shown_here_at_once(store: Store, db_url: str) -> None:
    store.ensure_published(MODEL, "tiny.yaml")
    store.upsert_leads([LeadInput("L1", fields={"title": "VP Sales"})])
    assert [s.version.version for s in store.sheets()] == [1]
    store.add_model(MODEL.replace("points: 30", "points: 35"), "tiny-2.yaml")
    rescorer = Rescorer(store, db_url, durable=False, apart=True)
    report = rescorer.publish("tiny")
    assert (report.reason, report.leads, report.changed) == ("model change", 1, 1)
    assert [s.version.version for s in store.sheets()] == [2]
    assert current(store)["score"] == 35.0
    # the child's errors are raised here as they are
    with pytest.raises(NotFound, match="no model 'nope'"):
        rescorer.publish("nope")


def test_a_child_that_cannot_open_the_store_says_why(store: Store, tmp_path: Path) -> None:
    missing = f"sqlite:///{tmp_path / 'no' / 'such' / 'dir.db'}"
    with pytest.raises(StoreError, match="cannot open the store"):
        Rescorer(store, missing, durable=False, apart=True).rescore()


def test_stopping_the_service_ends_a_rescoring_under_way(store: Store, db_url: str) -> None:
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    started = time.monotonic()
    with pytest.raises(Stopped):
        Rescorer(store, db_url, durable=False, apart=True).rescore(stop=stop)
    assert time.monotonic() - started < 10
    assert multiprocessing.active_children() == []


def test_the_service_rescores_apart_for_a_store_it_opened(tmp_path: Path, store: Store) -> None:
    """``leadscore serve`` (settings, no store handed in): the API's rescoring and publishing
    go through a child, errors keep their envelope; a store handed in is rescored in the
    server process's thread."""
    settings = Settings(
        db=str(tmp_path / "s.db"),
        no_auth=True,
        rescore_interval=0,
        deliver_interval=0,
        ingest_process=False,
    )
    app = create_app(settings)
    with RunningServer(app) as running, httpx.Client(base_url=running.url, timeout=60) as api:
        assert app.state.leadscore.rescorer.apart
        api.post("/api/v1/leads", json={"lead_id": "L1", "title": "VP Sales"})
        r = api.post("/api/v1/rescore")
        assert r.status_code == 200, r.text
        assert (r.json()["reason"], r.json()["leads"]) == ("decay", 1)
        r = api.post("/api/v1/models/nope/publish")
        assert r.status_code == 404, r.text
        assert r.json()["error"]["code"] == "not_found"
        model = MODEL.replace("name: tiny", "name: b2b-default")
        r = api.post("/api/v1/models", content=model, headers={"content-type": "application/yaml"})
        assert r.status_code == 201, r.text
        r = api.post("/api/v1/models/b2b-default/publish")
        assert r.status_code == 200, r.text
        assert r.json()["published"]["version"] == 2
        lead = api.get("/api/v1/leads/L1", params={"explain": "false"}).json()
        assert lead["scores"]["b2b-default"]["score"] == 30.0
    handed = create_app(Settings(no_auth=True, rescore_interval=0, deliver_interval=0), store)
    with RunningServer(handed):
        assert not handed.state.leadscore.rescorer.apart


def test_the_scheduled_rescoring_runs_apart_and_ends_with_the_service(
    tmp_path: Path, clock: Clock
) -> None:
    """A store whose scores were last brought up to date in 2025: the server's schedule
    (every 0.2 s here) rescores it in a child, and stopping the server ends the child."""
    db = tmp_path / "s.db"
    prepared = Store(open_database(f"sqlite:///{db}"), clock=clock)
    hot_lead_in_2025(prepared, clock)
    prepared.db.dispose()
    settings = Settings(
        db=str(db), no_auth=True, rescore_interval=0.2, deliver_interval=0, ingest_process=False
    )
    app = create_app(settings)
    with RunningServer(app) as running, httpx.Client(base_url=running.url) as api:

        def band() -> str:
            lead = api.get("/api/v1/leads/L1", params={"explain": "false"}).json()
            return str(lead["scores"]["tiny"]["band"])

        deadline = time.monotonic() + 60
        while band() != "cold":
            assert time.monotonic() < deadline, "no scheduled rescoring within 60 s"
            time.sleep(0.1)
        history = api.get("/api/v1/leads/L1/history").json()["items"]
        assert history[0]["reason"] == "decay"
        assert app.state.leadscore.rescorer.apart
        assert api.get("/api/v1/leads/L1").json()["stage"] == "recycled"
    assert multiprocessing.active_children() == []
