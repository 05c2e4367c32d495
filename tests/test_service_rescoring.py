"""Rescorings of the whole store in a child process (leadscore.service.rescoring): the
scheduled rescoring, ``POST /api/v1/rescore`` and publishing, for a store the service opened
itself, with the triggers and errors they have in the server's own thread."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import uvicorn

from leadscore.engine.timeutil import parse_instant
from leadscore.errors import (
    ConfigError,
    Conflict,
    InputError,
    InputProblem,
    LeadscoreError,
    ModelError,
    ModelIssue,
    NotFound,
    StoreError,
    UsageError,
)
from leadscore.service import Settings, create_app
from leadscore.service.errors import ApiError
from leadscore.service.models_api import _whole_store
from leadscore.service.rescoring import Rescorer, Stopped, _portable, child_main
from leadscore.service.serving import Server
from leadscore.store import RescoreReport, Store
from leadscore.store.db import open_database
from leadscore.store.leads import EventInput, LeadInput
from leadscore.store.triggers import firings, parse_triggers, save_triggers
from tests.conftest import Clock, RunningServer
from tests.webhook_receiver import free_port

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
    with pytest.raises(StoreError, match=r"dir.db is not there \(deleted or moved\?\)"):
        Rescorer(store, missing, durable=False, apart=True).rescore()


def sqlite_store_with_a_lead(tmp_path: Path, clock: Clock) -> tuple[Store, str]:
    url = f"sqlite:///{tmp_path / 'blocked.db'}"
    store = Store(open_database(url), clock=clock)
    store.ensure_published(MODEL, "tiny.yaml")
    store.upsert_leads([LeadInput("L1", fields={"title": "VP Sales"})])
    return store, url


def rescoring_children() -> list[multiprocessing.process.BaseProcess]:
    return [p for p in multiprocessing.active_children() if p.name.startswith("leadscore-re")]


def child_under_way(rescorer: Rescorer) -> tuple[Future[object], Any]:
    """Start a rescoring in a thread; its child once started (held up at its first write by
    the caller, who holds SQLite's write lock)."""
    pool = ThreadPoolExecutor(1)
    future: Future[object] = pool.submit(rescorer.rescore)
    pool.shutdown(wait=False)
    deadline = time.monotonic() + 30
    while not rescoring_children():
        assert time.monotonic() < deadline, "no rescoring child within 30 s"
        time.sleep(0.01)
    return future, rescoring_children()[0]


def test_stopping_the_service_ends_a_rescoring_under_way(tmp_path: Path, clock: Clock) -> None:
    store, url = sqlite_store_with_a_lead(tmp_path, clock)
    holder = open_database(url)
    stop = threading.Event()
    rescorer = Rescorer(store, url, durable=False, apart=True, stop=stop)
    try:
        with holder.write():  # the child cannot finish
            future, child = child_under_way(rescorer)
            stop.set()
            with pytest.raises(Stopped):
                future.result(timeout=30)
        assert not child.is_alive()
    finally:
        holder.dispose()
        store.db.dispose()


def test_a_child_that_dies_is_reported(tmp_path: Path, clock: Clock) -> None:
    store, url = sqlite_store_with_a_lead(tmp_path, clock)
    holder = open_database(url)
    try:
        with holder.write():
            future, child = child_under_way(Rescorer(store, url, durable=False, apart=True))
            os.kill(child.pid, signal.SIGKILL)
            with pytest.raises(StoreError, match=r"ended without finishing \(exit code -9\)"):
                future.result(timeout=30)
    finally:
        holder.dispose()
        store.db.dispose()


def test_a_child_whose_server_is_gone_ends_itself(tmp_path: Path, clock: Clock) -> None:
    """The child is told its server's pid; when its parent is another (the server was killed
    and the child handed to init), it exits at once instead of writing on."""
    store, url = sqlite_store_with_a_lead(tmp_path, clock)
    store.db.dispose()
    ctx = multiprocessing.get_context("spawn")
    receiver, sender = ctx.Pipe(duplex=False)
    not_its_parent = 1
    child = ctx.Process(target=child_main, args=(sender, url, False, "rescore", {}, not_its_parent))
    child.start()
    sender.close()
    child.join(30)
    assert child.exitcode == 1
    with pytest.raises(EOFError):  # it answered nothing
        receiver.recv()
    receiver.close()


@pytest.mark.parametrize(
    "error",
    [
        ModelError([ModelIssue("m.yaml", 3, "profile[0]", "unknown key")]),
        ConfigError([ModelIssue("t.yaml", 4, "triggers[0]", "no when")]),
        InputError([InputProblem("e.csv", "not a time", 2, "ts")], "use ISO 8601"),
        NotFound("no model 'x'"),
        Conflict("already active"),
        UsageError("no such sheet"),
        StoreError("cannot open"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_every_error_comes_back_from_the_child_as_it_was(error: LeadscoreError) -> None:
    """What the API answers depends on the error's class and fields (a ModelError is a 422
    with its lines): the child's errors reach the server whole."""
    copy = _portable(error)
    assert type(copy) is type(error)
    assert str(copy) == str(error) and copy.__dict__ == error.__dict__


def test_a_stopped_rescoring_answers_503() -> None:
    def stopped() -> RescoreReport:
        raise Stopped

    with pytest.raises(ApiError) as caught:
        asyncio.run(_whole_store(stopped))
    assert caught.value.status == 503


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
    assert rescoring_children() == []


def _full(self: Store, *args: object, **kwargs: object) -> None:
    raise sa.exc.OperationalError("UPDATE scores", {}, Exception("database or disk is full"))


def publish_stopped(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """L1 scored by tiny version 1; version 2 (the VP worth 35) published, but its rescoring
    fails before any lead is written: L1 keeps version 1's score."""
    store.ensure_published(MODEL, "tiny.yaml")
    store.upsert_leads([LeadInput("L1", fields={"title": "VP Sales"})])
    store.add_model(MODEL.replace("points: 30", "points: 35"), "tiny-2.yaml")
    with monkeypatch.context() as m:
        m.setattr(Store, "rescore_all", _full)
        with pytest.raises(sa.exc.OperationalError):
            store.publish("tiny")
    assert [s.version.version for s in store.sheets()] == [2]
    assert store.replaced_scores() == 1


def test_a_publish_that_fails_part_way_is_answered_with_what_it_left(
    serve: Any, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """POST .../publish whose rescoring fails: 500, saying the version is active and how many
    leads keep the old version's scores; POST /api/v1/rescore brings them over."""
    publish_stopped(store, monkeypatch)
    api = serve(no_auth=True)
    store.add_model(MODEL.replace("points: 30", "points: 40"), "tiny-3.yaml")
    monkeypatch.setattr(Store, "rescore_all", _full)
    r = api.post("/api/v1/models/tiny/publish")
    assert r.status_code == 500, r.text
    message = r.json()["error"]["message"]
    assert message.startswith("publishing tiny failed: (builtins.Exception) database or disk")
    assert "The new version is active, but 1 lead keeps its score of the version before" in message
    monkeypatch.undo()
    r = api.post("/api/v1/rescore")
    assert (r.status_code, r.json()["changed"]) == (200, 1)
    assert current(store)["score"] == 40.0
    history = api.get("/api/v1/leads/L1/history").json()["items"]
    assert [h["reason"] for h in history] == ["model change", "profile"]


def test_a_failed_publish_in_a_child_keeps_its_note(
    store: Store, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The child (run here, its process-wide setup left out) turns an error that does not
    pickle as it is into a RuntimeError: the note of what the publish left goes with it."""
    store.ensure_published(MODEL, "tiny.yaml")
    store.add_model(MODEL.replace("points: 30", "points: 35"), "tiny-2.yaml")
    monkeypatch.setattr(Store, "rescore_all", _full)
    monkeypatch.setattr("leadscore.service.rescoring.signal.signal", lambda *a: None)
    monkeypatch.setattr("leadscore.service.rescoring._end_with", lambda server: None)
    receiver, sender = multiprocessing.Pipe(duplex=False)
    child_main(sender, db_url, False, "publish", {"name": "tiny"}, os.getpid())
    kind, error = receiver.recv()
    assert kind == "error" and isinstance(error, RuntimeError)
    assert str(error).startswith("publish failed: OperationalError: ")
    assert error.__notes__[0].startswith("tiny version 2 is active, but its rescoring stopped")


@pytest.mark.parametrize("scheduled", [True, False])
def test_the_server_finishes_a_stopped_publish_at_start(
    store: Store,
    serve: Any,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    scheduled: bool,
) -> None:
    """Started on a store where a publish's rescoring stopped part way, the server says so in
    its log and, with its scheduled rescoring on, rescores at once (not an hour later); with
    it off (--rescore-every 0), the log says what to run."""
    publish_stopped(store, monkeypatch)
    with caplog.at_level(logging.WARNING, logger="leadscore.service"):
        serve(no_auth=True, rescore_interval=3600 if scheduled else 0)
        deadline = time.monotonic() + 30
        while scheduled and store.replaced_scores():
            assert time.monotonic() < deadline, "not rescored at start"
            time.sleep(0.05)
        while "no longer active" not in caplog.text:
            assert time.monotonic() < deadline, "nothing logged"
            time.sleep(0.05)
    if scheduled:
        assert current(store)["score"] == 35.0
        assert "1 lead has a score of a model version no longer active" in caplog.text
        assert "rescoring every lead now" in caplog.text
    else:
        assert store.replaced_scores() == 1
        assert "run `leadscore rescore` or POST /api/v1/rescore" in caplog.text


def test_the_schedule_counts_from_one_start_to_the_next(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """`--rescore-every 10` starts a rescoring every 10 s, however long each takes (one of 3 s
    is followed by a wait of 7, one of 12 s by none), and logs each run."""
    from leadscore.service import app as service_app

    now = [100.0]
    waits: list[float] = []
    took = iter([3.0, 12.0, 1.0])

    class Clockwork(threading.Event):
        def wait(self, timeout: float | None = None) -> bool:
            waits.append(round(timeout or 0.0, 6))
            now[0] += timeout or 0.0
            return len(waits) > 3  # stop after three runs

    def run() -> str:
        now[0] += next(took)
        return "done"

    monkeypatch.setattr(service_app.time, "monotonic", lambda: now[0])
    with caplog.at_level(logging.INFO, logger=service_app.log.name):
        service_app._every(10.0, Clockwork(), "rescore", run).join(5)
    assert waits == [10.0, 7.0, 0.0, 9.0]
    assert [r.getMessage() for r in caplog.records].count("rescore done in 3.0 s: done") == 1


def test_a_server_that_begins_to_stop_ends_a_rescoring_a_request_waits_for(
    tmp_path: Path, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    """Ctrl-C (here: the server told to exit, as its signal handler tells it) while a request
    waits for a rescoring of every lead in a child, and an event waits for the store: uvicorn
    would wait for both requests before the service heard of it, for as long as the
    rescoring takes (here for ever: the test holds SQLite's write lock). The service is told
    at once: the rescoring is ended (its request hears 503), the log says so and which
    request the server still waits for; that one is answered once it can be, and the server
    ends."""
    store, url = sqlite_store_with_a_lead(tmp_path, clock)
    store.db.dispose()
    settings = Settings(
        db=url, no_auth=True, rescore_interval=0, deliver_interval=0, ingest_process=False
    )
    server = Server(uvicorn.Config(create_app(settings), port=free_port(), log_level="warning"))
    serving = threading.Thread(target=server.run, daemon=True)
    serving.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and serving.is_alive(), "the server did not start"
        time.sleep(0.01)
    base = f"http://127.0.0.1:{server.config.port}"
    holder = open_database(url)
    answers: dict[str, httpx.Response] = {}

    def post(path: str, **kwargs: Any) -> None:
        answers[path] = httpx.post(base + path, timeout=60, **kwargs)

    caplog.set_level(logging.WARNING, logger="leadscore.service")
    with holder.write():  # the rescoring, and the event, cannot write
        rescoring = threading.Thread(target=post, args=("/api/v1/rescore",))
        rescoring.start()
        while not rescoring_children():
            assert time.monotonic() < deadline, "no rescoring child within 30 s"
            time.sleep(0.01)
        event = {"lead_id": "L2", "type": "demo_request"}
        sending = threading.Thread(target=post, args=("/api/v1/events",), kwargs={"json": event})
        sending.start()
        time.sleep(0.5)  # (on its way to the store)
        server.should_exit = True
        rescoring.join(15)
        assert not rescoring.is_alive(), "the rescoring's request still waits"
        r = answers["/api/v1/rescore"]
        assert r.status_code == 503 and "the server is stopping" in r.text, r.text
        said = [m for m in caplog.messages if m.startswith("stopping: ")]
        assert said == [
            "stopping: a rescoring of every lead (decay) was under way: ended; what it wrote "
            "stays, and the next rescoring brings the rest up to date",
            "stopping: waiting for 1 request under way to be answered: POST /api/v1/events "
            "(press Ctrl-C again to stop at once)",
        ]
    sending.join(30)
    serving.join(30)
    assert not serving.is_alive()
    assert answers["/api/v1/events"].status_code == 200
    assert rescoring_children() == []
    holder.dispose()


def test_a_rescoring_in_the_server_thread_ends_at_its_next_step_once_the_service_stops(
    store: Store, clock: Clock
) -> None:
    """A store handed to the service (the demo, tests) is rescored in a thread of the server,
    which no one can end from outside: it stops itself between two steps once the service
    stops. Published meanwhile, the version is active, the lead keeps its score of before."""
    hot_lead_in_2025(store, clock)
    stop = threading.Event()
    rescorer = Rescorer(store, None, durable=False, apart=False, stop=stop)
    stop.set()
    with pytest.raises(Stopped):
        rescorer.rescore("decay")
    assert current(store)["band"] == "hot"  # nothing written
    store.add_model(MODEL.replace("points: 30", "points: 35"), "tiny-2.yaml")
    with pytest.raises(Stopped):
        rescorer.publish("tiny")
    assert [s.version.version for s in store.sheets()] == [2]
    assert current(store)["score"] == 80.0  # version 1's 30 + 50
    assert rescorer.under_way() == []
