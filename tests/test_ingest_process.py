"""The ingest process (``leadscore.service.writer.ProcessWriter``): requests' events stored and
rescored by a process of its own, on SQLite files and PostgreSQL, answered only after they are
committed; its failures heard by the requests it had not answered; replaced when it ends."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from leadscore import score_lead
from leadscore.engine.timeutil import from_micros
from leadscore.errors import Conflict, InputError, InputProblem, StoreError, UsageError
from leadscore.service import Settings, create_app
from leadscore.service import writer as writer_module
from leadscore.service.app import ingest_processes
from leadscore.service.errors import ApiError
from leadscore.service.writer import (
    INLINE_EVENTS,
    SPLIT_ABOVE,
    ProcessWriter,
    ProcessWriterPool,
    _by_lead,
    _from_wire,
    _to_wire,
)
from leadscore.store import EventInput, ItemOutcome, LeadInput, Store
from leadscore.store.db import open_database
from leadscore.store.deferred import ALONE_EVENTS, store_events
from leadscore.store.leads import lead_events, lead_records
from leadscore.store.schema import events, scores
from leadscore.store.schema import events as events_table
from tests.conftest import RunningServer
from tests.test_store_scoring import ALT, publish

pytestmark = pytest.mark.slow  # each test starts a Python process


def now_us() -> int:
    return time.time_ns() // 1000


@pytest.fixture
def writer(db_url: str) -> Iterator[ProcessWriter]:
    """An ingest process on a store holding the shipped model (as the service makes sure)."""
    store = Store(open_database(db_url))
    store.ensure_a_model()
    store.db.dispose()
    w = ProcessWriter(db_url, durable=False, cached_events=10_000)
    try:
        yield w
    finally:
        w.close()


def page_views(lead_ids: list[str], prefix: str) -> list[EventInput]:
    t = now_us()
    return [
        EventInput("page_view", t, lead, properties={"url": "/pricing"}, message_id=f"{prefix}{i}")
        for i, lead in enumerate(lead_ids)
    ]


def assert_scores_exact(db_url: str, lead_ids: list[str], events: int | None = None) -> None:
    """Each lead's stored score is what the per-lead evaluator gives for its stored events as
    of the score's as-of, which none of them is after (the tests stamp events before sending
    them), and the store holds ``events`` events, if given."""
    store = Store(open_database(db_url))
    try:
        with store.db.read() as conn:
            if events is not None:
                stored = conn.execute(sa.select(sa.func.count()).select_from(events_table))
                assert stored.scalar() == events
            for sheet in store.sheets(conn):
                for lead_id in lead_ids:
                    score, as_of = conn.execute(
                        sa.select(scores.c.score, scores.c.as_of_us).where(
                            scores.c.lead_id == lead_id, scores.c.sheet == sheet.name
                        )
                    ).one()
                    record = lead_records(conn, [lead_id])[lead_id]
                    assert len(lead_events(conn, lead_id)) == len(lead_events(conn, lead_id, as_of))
                    evs = lead_events(conn, lead_id, as_of)
                    expected = score_lead(sheet.model, record, evs, from_micros(as_of))
                    assert score == pytest.approx(expected.score, abs=1e-9), lead_id
    finally:
        store.db.dispose()


def test_concurrent_requests_are_stored_and_scored_by_the_ingest_process(
    writer: ProcessWriter, db_url: str
) -> None:
    """Twenty requests at once (group commit in the other process): each hears its own
    outcomes, indexed within it; the events are stored, each lead's score is what the per-lead
    evaluator gives for its events, and a repeated event id is a duplicate."""
    assert writer.pid is not None and writer.pid != os.getpid()
    requests = [page_views([f"P{r}", f"P{r}", "SHARED"], f"r{r}-") for r in range(20)]

    async def send_all() -> list[list[tuple[int, str, str | None]]]:
        answers = await asyncio.gather(*(writer.ingest(items) for items in requests))
        return [[(o.index, o.status, o.lead_id) for o in a] for a in answers]

    answers = asyncio.run(send_all())
    for r, answer in enumerate(answers):
        assert [index for index, _, _ in answer] == [0, 1, 2]
        assert [lead for _, _, lead in answer] == [f"P{r}", f"P{r}", "SHARED"]
        assert {status for _, status, _ in answer} <= {"created", "accepted"}
    again = asyncio.run(writer.ingest(requests[3][:1]))
    assert [(o.index, o.status) for o in again] == [(0, "duplicate")]

    assert_scores_exact(db_url, ["P0", "P19", "SHARED"], events=60)
    stats = writer.cache_stats()
    # each lead read in full once, by the scoring process or (on SQLite, the first requests
    # of a small first batch, scored by the ingest process itself) by the ingest process;
    # the cache is the scoring process's, keeping the leads it read
    assert stats["misses"] >= 21 and 0 < stats["leads"] <= 21


def test_a_killed_ingest_process_fails_the_requests_it_held_and_is_replaced(
    writer: ProcessWriter, db_url: str
) -> None:
    """The ingest process is stopped (SIGSTOP) with a request sent to it, then killed: that
    request hears that its events may not be stored and should be sent again; the next
    request starts a new process, and sending the first one again stores it."""
    asyncio.run(writer.ingest(page_views(["K1"], "warm-")))
    first = writer.pid
    assert first is not None
    os.kill(first, signal.SIGSTOP)

    async def held_then_killed() -> ApiError | None:
        task = asyncio.ensure_future(writer.ingest(page_views(["K1", "K2"], "held-")))
        await asyncio.sleep(0.3)  # sent, not answered
        assert not task.done()
        os.kill(first, signal.SIGKILL)
        try:
            await asyncio.wait_for(task, 30)
        except ApiError as e:
            return e
        return None

    error = asyncio.run(held_then_killed())
    assert error is not None and error.status == 503 and "send them again" in error.message
    outcomes = asyncio.run(writer.ingest(page_views(["K1", "K2"], "held-")))
    assert [o.status for o in outcomes] == ["accepted", "accepted"]  # not duplicates
    assert writer.pid not in (None, first)
    store = Store(open_database(db_url))
    try:
        with store.db.read() as conn:
            ids = set(conn.execute(sa.select(events.c.message_id)).scalars())
        assert ids == {"warm-0", "held-0", "held-1"}
    finally:
        store.db.dispose()


def test_a_deleted_sqlite_file_is_not_made_anew_by_a_new_ingest_process(tmp_path: Path) -> None:
    """The store's file deleted under a running server, then its ingest process replaced: the
    new one refuses to create an empty store (whose writes the server would never read), and
    the request hears why."""
    db = f"sqlite:///{tmp_path / 'gone.db'}"
    open_database(db).dispose()
    w = ProcessWriter(db, durable=False, cached_events=0)
    try:
        assert asyncio.run(w.ingest(page_views(["G1"], "g-")))[0].status == "accepted"
        for name in ("gone.db", "gone.db-wal", "gone.db-shm"):
            (tmp_path / name).unlink(missing_ok=True)
        os.kill(w.pid or 0, signal.SIGKILL)
        with pytest.raises(ApiError) as e:
            for _ in range(3):  # the one held when it was killed, then the new start's
                asyncio.run(w.ingest(page_views(["G1"], "h-")))
        deadline = time.monotonic() + 30
        while "is not there" not in e.value.message and time.monotonic() < deadline:
            time.sleep(1)
            with pytest.raises(ApiError) as e:
                asyncio.run(w.ingest(page_views(["G1"], "h-")))
        assert (
            e.value.status == 503 and "gone.db is not there (deleted or moved?)" in e.value.message
        )
        assert not (tmp_path / "gone.db").exists()
    finally:
        w.close()


def test_close_lets_the_ingest_process_finish_and_exit(db_url: str) -> None:
    open_database(db_url).dispose()  # made, as the server makes it before its processes start
    w = ProcessWriter(db_url, durable=False, cached_events=0)
    pid = w.pid
    assert asyncio.run(w.ingest(page_views(["C1"], "c-")))[0].status == "accepted"
    w.close()
    with pytest.raises(ProcessLookupError):
        for _ in range(50):  # reaped by close; gone at once or within moments
            os.kill(pid or 0, 0)
            time.sleep(0.1)


def test_a_store_the_ingest_process_cannot_open_fails_at_start() -> None:
    with pytest.raises(StoreError, match="could not open the store"):
        ProcessWriter("postgresql://postgres@127.0.0.1:9/nowhere", cached_events=0)


def test_errors_cross_the_pipe_as_what_the_request_is_to_hear() -> None:
    conflict = _from_wire(_to_wire(Conflict("lead L1 changed meanwhile: send again")))
    assert isinstance(conflict, ApiError)
    assert (conflict.status, conflict.code) == (409, "conflict")
    assert conflict.message == "lead L1 changed meanwhile: send again"
    bad = InputError([InputProblem("events", "no such type", row=3)])
    heard = _from_wire(_to_wire(bad))
    assert isinstance(heard, ApiError) and heard.status == 422
    assert heard.details == [{"message": "events: row 3: no such type"}]
    other = _from_wire(_to_wire(ValueError("the events could not be stored")))
    assert type(other) is RuntimeError and str(other) == "the events could not be stored"
    assert _from_wire(_to_wire([])) == []


def test_a_transaction_that_met_a_deadlock_is_run_again() -> None:
    """On PostgreSQL two writers taking locks the other way round deadlock, and the database
    ends one transaction: it is run again (up to CONFLICT_RETRIES times); past that, or for
    any other error, the request hears it."""

    class Deadlock(Exception):
        sqlstate = "40P01"

    class Store_:
        def __init__(self, failures: int) -> None:
            self.failures = failures
            self.calls = 0

        def ingest_events(self, items: list[EventInput]) -> list[ItemOutcome]:
            self.calls += 1
            if self.calls <= self.failures:
                raise sa.exc.OperationalError("INSERT INTO events", {}, Deadlock())
            return [ItemOutcome(i, "accepted", "D1") for i in range(len(items))]

    job = page_views(["D1"], "d-")
    store = Store_(failures=writer_module.CONFLICT_RETRIES)
    (result,) = writer_module.write_jobs(store, [job])  # type: ignore[arg-type]
    assert isinstance(result, list) and [o.status for o in result] == ["accepted"]
    assert store.calls == writer_module.CONFLICT_RETRIES + 1
    store = Store_(failures=writer_module.CONFLICT_RETRIES + 1)
    (result,) = writer_module.write_jobs(store, [job])  # type: ignore[arg-type]
    assert isinstance(result, RuntimeError) and store.calls == writer_module.CONFLICT_RETRIES + 1


def test_the_service_ingests_through_the_process_for_a_store_it_opens(tmp_path: Path) -> None:
    """create_app with settings (as ``leadscore serve``): events go through the ingest
    process, the health page shows that process's event cache, and the score is readable at
    once; with ``ingest_process=False`` they go through a thread (its cache: the server's).
    On SQLite a scoring process works beside the ingest process unless ``scoring_process``
    is off."""
    db = str(tmp_path / "s.db")
    for in_process, scoring in ((True, True), (True, False), (False, True)):
        settings = Settings(
            db=db,
            no_auth=True,
            rescore_interval=0,
            deliver_interval=0,
            ingest_process=in_process,
            scoring_process=scoring,
        )
        app = create_app(settings)
        with RunningServer(app) as running, httpx.Client(base_url=running.url) as client:
            lead = f"S{int(in_process)}{int(scoring)}"
            # more events than a batch the ingest process scores alone (INLINE_EVENTS)
            r = client.post(
                "/api/v1/events",
                json=[
                    {"lead_id": lead, "type": "demo_request", "event_id": f"e-{lead}-{n}"}
                    for n in range(INLINE_EVENTS + 1)
                ],
            )
            assert r.status_code == 200, r.text
            assert client.get(f"/api/v1/leads/{lead}").json()["scores"]["b2b-default"]["score"] > 0
            writer = app.state.leadscore.writer
            assert isinstance(writer, ProcessWriter) is in_process
            if isinstance(writer, ProcessWriter):
                assert (writer._child.scorer is not None) is scoring
            health = client.get("/api/v1/health").json()
            # this lead, and those of the runs before read ahead by a new ingest process
            assert health["event_cache"]["leads"] >= 1
            assert health["event_cache"]["misses"] == 1


def test_a_store_handed_to_the_service_is_written_by_a_thread(store: Store) -> None:
    """Tests hand the service their store (with its clock): its events are written in a
    thread of this process, through that very store."""
    settings = Settings(no_auth=True, rescore_interval=0, deliver_interval=0)
    app = create_app(settings, store=store)
    with RunningServer(app) as running, httpx.Client(base_url=running.url) as client:
        state = app.state.leadscore
        assert not isinstance(state.writer, ProcessWriter) and state.writer.store is store
        r = client.post("/api/v1/events", json={"lead_id": "M1", "type": "demo_request"})
        assert r.status_code == 200, r.text


def test_leads_posted_to_the_server_are_seen_by_the_ingest_process(
    writer: ProcessWriter, db_url: str
) -> None:
    """A profile written by the server process (a lead upsert) counts in the ingest process's
    next rescoring of that lead."""
    store = Store(open_database(db_url))
    try:
        asyncio.run(writer.ingest(page_views(["U1"], "u-")))
        store.upsert_leads([LeadInput("U1", fields={"title": "VP Marketing"})])
        asyncio.run(writer.ingest(page_views(["U1"], "v-")))
        with store.db.read() as conn:
            score, as_of = conn.execute(
                sa.select(scores.c.score, scores.c.as_of_us).where(scores.c.lead_id == "U1")
            ).one()
            model = store.sheets(conn)[0].model
            record = lead_records(conn, ["U1"])["U1"]
            assert record["title"] == "VP Marketing"
            expected = score_lead(model, record, lead_events(conn, "U1", as_of), from_micros(as_of))
        assert score == pytest.approx(expected.score, abs=1e-9)
    finally:
        store.db.dispose()


def test_a_cancelled_request_does_not_stop_the_others(writer: ProcessWriter) -> None:
    """A request whose task is cancelled while the ingest process holds it (a client gone, a
    shutdown's timeout): its answer arrives to no one, and the requests after it are answered."""
    asyncio.run(writer.ingest(page_views(["X1"], "x-")))
    pid = writer.pid
    assert pid is not None

    async def cancel_one() -> list[str]:
        os.kill(pid, signal.SIGSTOP)
        try:
            task = asyncio.ensure_future(writer.ingest(page_views(["X2"], "gone-")))
            await asyncio.sleep(0.3)
            task.cancel()
        finally:
            os.kill(pid, signal.SIGCONT)
        await asyncio.sleep(0.3)
        later = await asyncio.wait_for(writer.ingest(page_views(["X3"], "later-")), 30)
        return [o.status for o in later]

    assert asyncio.run(cancel_one()) == ["accepted"]
    assert writer.pid == pid


def test_requests_larger_than_the_pipe_never_block_the_event_loop(writer: ProcessWriter) -> None:
    """The event loop writes requests to the ingest process without blocking: with the
    process stopped (SIGSTOP), requests of many megabytes in all wait for the pipe to drain
    while the loop goes on serving (a ticker keeps ticking); once the process goes on, every
    one is answered, in full."""
    asyncio.run(writer.ingest(page_views(["H0"], "h-")))
    pid = writer.pid
    assert pid is not None
    big = "x" * 1000
    requests = [
        [
            EventInput("page_view", now_us(), f"H{r}", properties={"url": "/pricing", "pad": big})
            for _ in range(1000)
        ]
        for r in range(1, 6)
    ]  # about 1 MB each pickled, the pipe holds 64 KiB

    async def held() -> tuple[float, list[list[ItemOutcome]]]:
        longest, last = 0.0, time.monotonic()

        async def ticker() -> None:
            nonlocal longest, last
            while True:
                await asyncio.sleep(0.01)
                longest, last = max(longest, time.monotonic() - last), time.monotonic()

        tick_task = asyncio.ensure_future(ticker())
        os.kill(pid, signal.SIGSTOP)
        # from a thread, so that a loop blocked on the pipe would be released too
        threading.Timer(1.5, os.kill, (pid, signal.SIGCONT)).start()
        tasks = [asyncio.ensure_future(writer.ingest(items)) for items in requests]
        await asyncio.sleep(0.5)
        assert not any(t.done() for t in tasks)
        answers = list(await asyncio.wait_for(asyncio.gather(*tasks), 120))
        tick_task.cancel()
        return longest, answers

    longest, answers = asyncio.run(held())
    assert longest < 1.0  # the loop was never held up until the process went on (1.5 s)
    for answer in answers:
        assert len(answer) == 1000 and {o.status for o in answer} == {"accepted"}
    assert writer.pid == pid


def stored_events(db_url: str, lead_id: str) -> int:
    """How many events the store holds for ``lead_id``."""
    store = Store(open_database(db_url))
    try:
        with store.db.read() as conn:
            return int(
                conn.execute(
                    sa.select(sa.func.count()).where(events_table.c.lead_id == lead_id)
                ).scalar_one()
            )
    finally:
        store.db.dispose()


def test_a_request_given_up_while_the_pipe_is_full_is_still_sent_whole(
    writer: ProcessWriter, db_url: str
) -> None:
    """A large request waits for the pipe (the ingest process stopped) and its event loop ends
    (asyncio.run over): the next request's loop writes the rest of it, so the process reads
    both whole, and both are stored."""
    asyncio.run(writer.ingest(page_views(["E0"], "e-")))
    pid = writer.pid
    assert pid is not None
    pad = "x" * 1000
    big = [
        EventInput("page_view", now_us(), "E1", properties={"pad": pad}, message_id=f"big{i}")
        for i in range(1000)
    ]

    async def give_up() -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(writer.ingest(big), 0.3)

    os.kill(pid, signal.SIGSTOP)
    try:
        asyncio.run(give_up())
    finally:
        os.kill(pid, signal.SIGCONT)
    outcomes = asyncio.run(writer.ingest(page_views(["E2"], "after-")))
    assert [o.status for o in outcomes] == ["accepted"] and writer.pid == pid
    assert stored_events(db_url, "E1") == 1000


def test_a_request_from_a_second_event_loop_goes_through_the_first(
    writer: ProcessWriter,
) -> None:
    """One event loop (in a thread of its own) does the pipe I/O; a request from another loop
    is sent and answered through it, and both loops' requests are answered."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        first = asyncio.run_coroutine_threadsafe(
            writer.ingest(page_views(["D1"], "d1-")), loop
        ).result(30)
        assert writer._child.loop is loop
        second = asyncio.run(writer.ingest(page_views(["D2"], "d2-")))
        assert writer._child.loop is loop  # still the first one's
        third = asyncio.run_coroutine_threadsafe(
            writer.ingest(page_views(["D1"], "d3-")), loop
        ).result(30)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
    assert [o.status for o in first + second + third] == ["accepted"] * 3
    # the first loop is closed: the next request's loop takes the pipes over
    assert asyncio.run(writer.ingest(page_views(["D2"], "d4-")))[0].status == "accepted"
    assert writer._child.loop is not loop


def test_a_request_waiting_on_a_loop_that_ends_is_answered_through_its_own(
    writer: ProcessWriter,
) -> None:
    """A request handed to another thread's loop (which does the pipe I/O) whose loop ends
    before the answer comes: the request's own loop takes the pipes over and reads it."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(writer.ingest(page_views(["F1"], "f1-")), loop).result(30)
    pid = writer.pid
    assert pid is not None

    async def stranded() -> list[ItemOutcome]:
        os.kill(pid, signal.SIGSTOP)
        try:
            task = asyncio.ensure_future(writer.ingest(page_views(["F2"], "f2-")))
            await asyncio.sleep(0.3)  # written by the other loop, not answered
            assert writer._child.loop is loop and not task.done()
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            loop.close()
        finally:
            os.kill(pid, signal.SIGCONT)
        return await asyncio.wait_for(task, 30)

    assert [o.status for o in asyncio.run(stranded())] == ["accepted"]


def test_a_job_handed_over_twice_is_sent_once(writer: ProcessWriter, db_url: str) -> None:
    """A job may reach the pipe by two ways (the restarting thread hands it back while a
    watching loop takes it over): it is written once, so its events (no event id here) are
    stored once."""

    async def twice() -> list[ItemOutcome]:
        job = writer_module._Job.here(
            [EventInput("page_view", now_us(), "J1", properties={"url": "/pricing"})]
        )
        writer._submit(job)
        writer._submit(job)
        return await asyncio.wait_for(job.done, 30)

    assert [o.status for o in asyncio.run(twice())] == ["accepted"]
    assert stored_events(db_url, "J1") == 1


def test_close_answers_the_requests_sent_before_it(db_url: str) -> None:
    """close() (the server's shutdown) lets the ingest process answer what it was sent; what
    it could not answer hears 503, and nothing waits forever."""
    store = Store(open_database(db_url))
    store.ensure_a_model()
    store.db.dispose()
    w = ProcessWriter(db_url, durable=False, cached_events=0)
    pid = w.pid
    assert pid is not None

    async def close_while_held() -> tuple[list[ItemOutcome], ApiError]:
        os.kill(pid, signal.SIGSTOP)
        task = asyncio.ensure_future(w.ingest(page_views(["C1", "C2"], "c-")))
        await asyncio.sleep(0.3)
        threading.Timer(0.5, os.kill, (pid, signal.SIGCONT)).start()
        w.close()  # in the loop, as the server's lifespan does
        answered = await asyncio.wait_for(task, 30)
        with pytest.raises(ApiError) as info:
            await asyncio.wait_for(w.ingest(page_views(["C3"], "late-")), 30)
        return answered, info.value

    answered, late = asyncio.run(close_while_held())
    assert [o.status for o in answered] == ["accepted", "accepted"]
    assert late.status == 503 and "stopping" in late.message


def test_sigterm_ends_an_idle_ingest_process_and_the_next_request_starts_another(
    writer: ProcessWriter,
) -> None:
    """SIGTERM (a service manager's stop; multiprocessing's at the server's exit) ends the
    ingest process between transactions, with exit code 0."""
    asyncio.run(writer.ingest(page_views(["T1"], "t-")))
    first = writer.pid
    assert first is not None
    os.kill(first, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while writer._child.process.exitcode is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert writer._child.process.exitcode == 0
    assert asyncio.run(writer.ingest(page_views(["T2"], "u-")))[0].status == "accepted"
    assert writer.pid != first


def test_requests_waiting_together_share_one_transaction(
    writer: ProcessWriter, db_url: str
) -> None:
    """Twenty requests queue while the ingest process is stopped (SIGSTOP); once it goes on
    they are written in one transaction (each lead's score carries that transaction's time)
    and each request hears its own items, indexed within it."""
    asyncio.run(writer.ingest(page_views(["G0"], "g-")))
    pid = writer.pid
    assert pid is not None
    requests = [page_views([f"G{r}a", f"G{r}b"], f"q{r}-") for r in range(1, 21)]

    async def queued() -> list[list[ItemOutcome]]:
        os.kill(pid, signal.SIGSTOP)
        try:
            tasks = [asyncio.ensure_future(writer.ingest(items)) for items in requests]
            await asyncio.sleep(0.5)  # every request sent and waiting
        finally:
            os.kill(pid, signal.SIGCONT)
        return list(await asyncio.wait_for(asyncio.gather(*tasks), 60))

    answers = asyncio.run(queued())
    for r, answer in enumerate(answers, start=1):
        assert [(o.index, o.lead_id) for o in answer] == [(0, f"G{r}a"), (1, f"G{r}b")]
    store = Store(open_database(db_url))
    try:
        with store.db.read() as conn:
            stamps = set(
                conn.execute(sa.select(scores.c.as_of_us).where(scores.c.lead_id != "G0")).scalars()
            )
    finally:
        store.db.dispose()
    assert len(stamps) == 1, f"{len(stamps)} transactions"


def test_an_ingest_process_that_cannot_start_again_is_retried_after_a_back_off(
    writer: ProcessWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ingest process ends and the store cannot be opened any more: the next request
    hears 503 from the failed start; those within the back-off hear 503 at once, with its
    Retry-After, and start nothing; once it is over (and the store is back) a start succeeds
    and the events are stored."""
    good = writer._args
    starts: list[float] = []
    real = writer_module._Child

    def counted(*args: object) -> object:
        starts.append(time.monotonic())
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(writer_module, "_Child", counted)
    monkeypatch.setattr(writer_module, "RESTART_FIRST_SECONDS", 5.0)  # ample on a slow machine
    writer._args = ("postgresql://postgres@127.0.0.1:9/nowhere", *good[1:])
    pid = writer.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    writer._child.process.join(30)  # ended (the next request finds so)

    def refused(prefix: str) -> ApiError:
        with pytest.raises(ApiError) as info:
            asyncio.run(writer.ingest(page_views(["B1"], prefix)))
        assert info.value.status == 503 and "could not open the store" in info.value.message
        return info.value

    refused("b1-")
    assert len(starts) == 1
    again = refused("b2-")  # within the back-off: nothing started
    assert len(starts) == 1
    assert again.headers is not None and 1 <= int(again.headers["Retry-After"]) <= 5
    writer._args = good
    time.sleep(max(0.0, writer._retry_at - time.monotonic()) + 0.1)
    outcomes = asyncio.run(writer.ingest(page_views(["B1"], "b3-")))
    assert [o.status for o in outcomes] == ["accepted"]
    assert len(starts) == 2 and writer.pid not in (None, pid)
    assert (writer._backoff, writer._start_error) == (0.0, "")


def test_an_ingest_process_whose_start_fails_says_why(
    writer: ProcessWriter, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ingest process ends, and its successor opens the store but fails before it is
    ready (here: a table it reads at start is gone; on a real server a disk full, the
    database going away, memory): the request hears 503 with the database's reason, not
    only that the process stopped while starting, and so do those within the back-off; the
    health page says the same. Once the table is back a start succeeds."""
    monkeypatch.setattr(writer_module, "RESTART_FIRST_SECONDS", 5.0)  # ample on a slow machine
    pid = writer.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    writer._child.process.join(30)
    db = open_database(db_url, migrate=False)
    try:
        with db.engine.begin() as conn:
            conn.exec_driver_sql("ALTER TABLE counters RENAME TO counters_away")
        try:
            for prefix in ("c1-", "c2-"):  # the failed start, then the back-off
                with pytest.raises(ApiError) as info:
                    asyncio.run(writer.ingest(page_views(["C1"], prefix)))
                assert info.value.status == 503
                message = info.value.message
                assert message.startswith("the events could not be stored: ")
                assert "counters" in message, message  # the database's own words
                assert "stopped while starting" not in message
            problem = writer.problem()
            assert problem is not None and "counters" in problem.message
        finally:
            with db.engine.begin() as conn:
                conn.exec_driver_sql("ALTER TABLE counters_away RENAME TO counters")
    finally:
        db.dispose()
    time.sleep(max(0.0, writer._retry_at - time.monotonic()) + 0.1)
    outcomes = asyncio.run(writer.ingest(page_views(["C1"], "c3-")))
    assert [o.status for o in outcomes] == ["accepted"]
    assert writer.problem() is None


def test_the_ingest_process_reads_recent_leads_events_ahead_while_idle(db_url: str) -> None:
    """Started on a SQLite store with events, the ingest process reads the leads' events into
    its cache between requests: the first event of such a lead finds its list there, current
    without asking the database again. On PostgreSQL it does not (it would save the decoding,
    not the reads)."""
    store = Store(open_database(db_url))
    try:
        store.ensure_a_model()
        store.ingest_events(page_views([f"W{i}" for i in range(30)], "before-"))
    finally:
        store.db.dispose()
    # every batch through the scoring process, which keeps the cache on SQLite
    w = ProcessWriter(db_url, durable=False, cached_events=10_000, inline_events=0)
    try:
        if not db_url.startswith("sqlite"):
            for n in range(3):
                asyncio.run(w.ingest(page_views([f"X{n}"], f"x{n}-")))
                time.sleep(0.2)
            assert w.cache_stats()["preloaded"] == 0
            return
        deadline = time.monotonic() + 60
        n = 0
        while w.cache_stats()["preloaded"] < 30:  # the stats come with each answer
            assert time.monotonic() < deadline, w.cache_stats()
            asyncio.run(w.ingest(page_views([f"X{n}"], f"x{n}-")))
            n += 1
            time.sleep(0.05)
        before = w.cache_stats()
        asyncio.run(w.ingest(page_views(["W7", "W21"], "after-")))
        stats = w.cache_stats()
        # read ahead in the writer's epoch: grown by the batch's journal without a query
        assert stats["misses"] == before["misses"]
        assert stats["unchecked"] == before["unchecked"] + 2
    finally:
        w.close()


@pytest.fixture
def through_scorer(db_url: str) -> Iterator[ProcessWriter]:
    """As ``writer``, every batch handed to the scoring process, however small."""
    store = Store(open_database(db_url))
    store.ensure_a_model()
    store.db.dispose()
    w = ProcessWriter(db_url, durable=False, cached_events=10_000, inline_events=0)
    try:
        yield w
    finally:
        w.close()


def test_a_scoring_process_scores_beside_the_ingest_process_on_sqlite(
    through_scorer: ProcessWriter, db_url: str
) -> None:
    """On SQLite the ingest process hands rescoring to a scoring process beside it (which
    keeps the event cache); killed, the ingest process goes on alone, and scores stay exact.
    On PostgreSQL there is none."""
    writer = through_scorer
    child = writer._child
    if not db_url.startswith("sqlite"):
        assert child.scorer is None
        return
    assert child.scorer is not None and child.scorer.is_alive()
    asyncio.run(writer.ingest(page_views(["S1", "S2"], "a-")))
    asyncio.run(writer.ingest(page_views(["S1"], "b-")))
    stats = writer.cache_stats()  # the scoring process's cache
    assert stats["leads"] == 2 and stats["unchecked"] >= 1
    assert_scores_exact(db_url, ["S1", "S2"])
    pid = writer.pid
    os.kill(child.scorer.pid or 0, signal.SIGKILL)
    child.scorer.join(10)
    for n in range(3):
        outcomes = asyncio.run(writer.ingest(page_views(["S1", "S3"], f"c{n}-")))
        assert [o.status for o in outcomes] in (["accepted", "created"], ["accepted", "accepted"])
    assert writer.pid == pid  # the same ingest process, on its own now
    assert writer.cache_stats()["leads"] >= 2  # its own cache
    assert_scores_exact(db_url, ["S1", "S2", "S3"], events=9)


def test_small_batches_on_a_quiet_server_are_scored_by_the_ingest_process(tmp_path: Path) -> None:
    """A batch of a few events that finds none in flight is stored and scored by the ingest
    process in one transaction. The scoring process takes those transactions' journals in with
    its next batch: the lists it keeps stay current, trusted without asking the database, and
    every score exact. (Forms: each one changes the score of b2b-default.)"""
    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = Store(open_database(url))
    store.ensure_a_model()
    store.db.dispose()

    def forms(lead_ids: list[str], prefix: str) -> list[EventInput]:
        t = now_us()
        return [
            EventInput("form_submit", t, lead, message_id=f"{prefix}{i}")
            for i, lead in enumerate(lead_ids)
        ]

    leads = [f"B{i}" for i in range(INLINE_EVENTS + 1)]
    w = ProcessWriter(url, durable=False, cached_events=10_000)
    try:
        asyncio.run(w.ingest(forms(leads, "big1-")))  # through the scoring process
        first = w.cache_stats()
        assert first["leads"] == len(leads)  # kept there (read, or read ahead first)
        for n in range(3):  # alone: the ingest process reads the two leads itself
            asyncio.run(w.ingest(forms(["B0", "B1"], f"small{n}-")))
        alone = w.cache_stats()
        assert alone["misses"] - first["misses"] == 6
        assert_scores_exact(url, leads, events=len(leads) + 6)
        asyncio.run(w.ingest(forms(leads, "big2-")))
        second = w.cache_stats()
        # every kept list grown by the journals, B0 and B1 by those of the small batches too
        assert second["unchecked"] - alone["unchecked"] == len(leads)
        assert (second["misses"], second["extended"]) == (alone["misses"], alone["extended"])
        assert_scores_exact(url, leads, events=2 * len(leads) + 6)
        # a lead with a long history: its single event is scored by the scoring process
        asyncio.run(w.ingest(forms(["H"] * ALONE_EVENTS, "long-")))
        before = w.cache_stats()
        asyncio.run(w.ingest(forms(["H"], "one-")))
        after = w.cache_stats()
        assert after["misses"] == before["misses"] and after["unchecked"] > before["unchecked"]
        assert_scores_exact(url, [*leads, "H"], events=2 * len(leads) + 6 + ALONE_EVENTS + 1)
    finally:
        w.close()


@pytest.mark.parametrize("scoring", [True, False])
def test_events_stored_but_never_scored_are_scored_when_the_ingest_process_starts(
    tmp_path: Path, scoring: bool
) -> None:
    """Events stored by the first of the two transactions, the process gone before the second
    (as after a SIGKILL between them): the next ingest process rescores their leads before it
    answers anything."""
    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = Store(open_database(url), cached_events=0)
    try:
        store.ensure_a_model()
        stored = store_events(store, page_views(["U1", "U2"], "u-"))
        assert stored.leads == ["U1", "U2"]
        with store.db.read() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(scores)).scalar() == 0
    finally:
        store.db.dispose()
    w = ProcessWriter(url, durable=False, cached_events=1_000, scoring_process=scoring)
    try:
        assert (w._child.scorer is not None) == scoring
        assert_scores_exact(url, ["U1", "U2"], events=2)
    finally:
        w.close()


def test_large_batches_in_flight_both_ways_go_through(tmp_path: Path) -> None:
    """Requests of 2,000 events for 2,000 leads each, several at once: the ingest process sends
    the next batch's jobs (in parts, about 800 KB in all) while the scoring process answers the
    last (about 450 KB, two sheets), each more than the pipe holds; neither waits for the
    other to read."""
    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = Store(open_database(url))
    store.ensure_a_model()
    publish(store, ALT)  # a second sheet: two scores a lead in each answer
    store.db.dispose()
    w = ProcessWriter(url, durable=False, cached_events=100_000)
    try:
        t = now_us()
        pad = "x" * 300
        requests = [
            [
                EventInput(
                    "page_view",
                    t,
                    f"B{r}-{i}",
                    properties={"url": "/pricing", "note": pad},
                    message_id=f"big{r}-{i}",
                )
                for i in range(2000)
            ]
            for r in range(6)
        ]

        async def send_all() -> list[list[ItemOutcome]]:
            return await asyncio.wait_for(
                asyncio.gather(*(w.ingest(items) for items in requests)), 300
            )

        answers = asyncio.run(send_all())
        assert all(len(a) == 2000 for a in answers)
        # each in parts (PART_LEADS): leads of first, middle and last parts
        leads = ["B0-0", "B0-249", "B0-250", "B3-500", "B3-1000", "B5-1749", "B5-1999"]
        assert_scores_exact(url, leads, events=12_000)
    finally:
        w.close()


# --- several ingest processes (PostgreSQL) ------------------------------------------------------


@pytest.fixture
def pool(db_url: str) -> Iterator[ProcessWriterPool]:
    store = Store(open_database(db_url))
    store.ensure_a_model()
    store.db.dispose()
    p = ProcessWriterPool(2, db_url, durable=False, cached_events=10_000)
    try:
        yield p
    finally:
        p.close()


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_two_ingest_processes_write_the_same_leads_at_once_on_postgresql(
    pool: ProcessWriterPool, db_url: str
) -> None:
    """Two ingest processes on one PostgreSQL database: small requests go to the front one
    until SPLIT_ABOVE events wait there; then a lead's single events go to its home, other
    requests to the one with fewer events waiting, so both write SHARED at once (row locks
    make one wait for the other). Every request hears its own outcomes, and every lead's
    score is what its stored events give."""
    pids = pool.pids
    assert len(set(pids)) == 2 and os.getpid() not in pids
    assert pool.writer_for(page_views(["ONE"], "x-")) is pool.writers[0]
    assert pool.writer_for(page_views(["ONE", "TWO"], "y-")) is pool.writers[0]
    homes = {pool.writers.index(pool.home(f"Q{i}")) for i in range(40)}
    assert homes == {0, 1}  # the leads are shared out
    requests = [page_views([f"P{r}", "SHARED", f"P{r}"], f"r{r}-") for r in range(30)]
    requests += [page_views([f"Q{i}"], f"q{i}-") for i in range(10)]

    async def send_all() -> tuple[list[list[ItemOutcome]], list[int]]:
        tasks = [asyncio.ensure_future(pool.ingest(items)) for items in requests]
        await asyncio.sleep(0)  # each sent to its process, none answered yet
        waiting = [w.pending_events() for w in pool.writers]
        return await asyncio.gather(*tasks), waiting

    answers, waiting = asyncio.run(send_all())
    # the front took 22 requests (66 events), the other the next 8 of SHARED, the singles
    # went to their homes
    at_home = [sum(pool.home(f"Q{i}") is w for i in range(10)) for w in pool.writers]
    assert waiting == [66 + at_home[0], 24 + at_home[1]]
    for r, answer in enumerate(answers[:30]):
        assert [(o.index, o.lead_id) for o in answer] == [(0, f"P{r}"), (1, "SHARED"), (2, f"P{r}")]
        assert {o.status for o in answer} == {"accepted"}
    assert all([o.status for o in a] == ["accepted"] for a in answers[30:])
    stats = [w.cache_stats() for w in pool.writers]
    assert all(s["misses"] > 0 for s in stats)  # both wrote
    assert pool.cache_stats()["misses"] == sum(s["misses"] for s in stats)
    again = asyncio.run(pool.ingest(requests[3][1:2]))
    assert [o.status for o in again] == ["duplicate"]
    assert_scores_exact(db_url, ["SHARED", "P0", "P29", "Q0", "Q9"], events=100)


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_large_request_is_shared_out_among_the_pool_by_lead(
    pool: ProcessWriterPool, db_url: str
) -> None:
    """A request of more than SPLIT_ABOVE events for several leads goes to both ingest
    processes at once, each its leads' share (to their home processes); the request hears
    every item's outcome at its own index, a bad item's error too."""
    leads = [f"S{i % 40}" for i in range(120)]  # 40 leads, three events each
    items = page_views(leads, "split-")
    items[7] = EventInput("page_view", items[7].ts_us, properties={}, message_id="nameless")
    shares = pool.shares(items)
    assert len(shares) == 2
    assert sorted(i for _, share in shares for i in share) == list(range(120))
    for writer, share in shares:
        named = [items[i].lead_id for i in share if items[i].lead_id is not None]
        assert {pool.home(lead) for lead in named} == {writer}
    assert len(pool.shares(items[:SPLIT_ABOVE])) == 1  # small requests stay whole

    async def send() -> tuple[list[ItemOutcome], list[int]]:
        task = asyncio.ensure_future(pool.ingest(items))
        waiting = [0, 0]
        for _ in range(5):  # until both shares are sent (neither answered yet)
            await asyncio.sleep(0)
            waiting = [w.pending_events() for w in pool.writers]
            if sum(waiting) == 120:
                break
        return await task, waiting

    outcomes, waiting = asyncio.run(send())
    assert sum(waiting) == 120 and min(waiting) > 0
    assert [o.index for o in outcomes] == list(range(120))
    assert outcomes[7].status == "error" and outcomes[7].lead_id is None
    assert all(
        o.status == "accepted" and o.lead_id == leads[o.index] for o in outcomes if o.index != 7
    )
    again = asyncio.run(pool.ingest(items))  # sent again: every event a repeat
    assert [o.status for o in again if o.index != 7] == ["duplicate"] * 119
    assert_scores_exact(db_url, ["S0", "S7", "S39"], events=119)


def test_a_request_is_grouped_by_lead_as_its_names_tell() -> None:
    """For sharing a request out: events whose names meet go together (a lead id given with
    an email joins the events of that email; an anonymous id linked to a lead id joins its
    anonymous events), each group under its first event's name; events naming nothing
    together."""

    def ev(
        lead: str | None = None, email: str | None = None, anon: str | None = None
    ) -> EventInput:
        return EventInput("page_view", 1, lead, email, anon)

    items = [
        ev("A"),
        ev(email="a@x.com"),
        ev("B"),
        ev(anon="z"),
        ev("A", "a@x.com"),
        ev(),
        ev("C", anon="z"),
        ev("B"),
        ev(email="b@x.com"),
        ev(anon="y"),
        ev(),
        ev("D", "b@x.com", "y"),
    ]
    assert _by_lead(items) == [
        ("A", [0, 1, 4]),
        ("B", [2, 7]),
        ("z", [3, 6]),
        (None, [5, 10]),
        ("b@x.com", [8, 9, 11]),
    ]
    assert _by_lead([]) == []
    # emails as the store matches them (trimmed, lower-cased; a lead first known by its
    # email has it as its id), and repeats of one message id together
    items = [
        ev("A", " Ann@X.com"),
        ev(email="ann@x.com"),
        ev("ann@x.com"),
        EventInput("page_view", 1, "B", message_id="m1"),
        EventInput("page_view", 1, "C", message_id="m1"),
        EventInput("page_view", 1, message_id="m2"),
        EventInput("page_view", 1, "D", message_id="m2"),
    ]
    assert _by_lead(items) == [("A", [0, 1, 2]), ("B", [3, 4]), ("D", [5, 6])]


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_shared_out_request_whose_share_failed(
    pool: ProcessWriterPool, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Should one process's share fail while the other is stored: when every stored event
    has a message id, the request hears the error (sent again whole, as clients do on an
    error status, the stored events are repeats); otherwise the failed share's events are
    errors by index (to be sent again) and the rest stored, so that a resend of the whole
    does not store twice the events without message ids. Should every share fail, the
    request hears the error."""

    async def refuse(_items: list[EventInput]) -> list[ItemOutcome]:
        await asyncio.sleep(0.05)  # the other share is written meanwhile
        raise ApiError(503, "the ingest process is starting")

    # every event with a message id: the error, and a resend stores the rest
    items = page_views([f"E{i}" for i in range(100)], "ids-")
    (_, stored), (broken, refused) = pool.shares(items)
    with monkeypatch.context() as patch:
        patch.setattr(broken, "ingest", refuse)
        with pytest.raises(ApiError, match="starting"):
            asyncio.run(pool.ingest(items))
    again = asyncio.run(pool.ingest(items))
    assert {again[i].status for i in stored} == {"duplicate"}
    assert {again[i].status for i in refused} == {"accepted"}
    assert_scores_exact(db_url, ["E0", "E99"], events=100)

    # some without: errors by index
    items = page_views([f"F{i}" for i in range(100)], "fail-")
    for item in items[::2]:
        item.message_id = None  # these would be stored twice by a resend
    (_, stored), (broken, refused) = pool.shares(items)
    with monkeypatch.context() as patch:
        patch.setattr(broken, "ingest", refuse)
        outcomes = asyncio.run(pool.ingest(items))
    assert [o.index for o in outcomes] == list(range(100))
    assert {outcomes[i].status for i in stored} == {"accepted"}
    assert {outcomes[i].status for i in refused} == {"error"}
    assert all(
        "not acknowledged: the ingest process is starting" in (outcomes[i].error or "")
        for i in refused
    )
    again = asyncio.run(pool.ingest([items[i] for i in refused]))  # only those sent again
    assert {o.status for o in again} == {"accepted"}
    assert_scores_exact(db_url, ["F0", "F99"], events=200)

    # every share failing: the request hears it
    monkeypatch.setattr(pool.writers[0], "ingest", refuse)
    monkeypatch.setattr(pool.writers[1], "ingest", refuse)
    with pytest.raises(ApiError, match="starting"):
        asyncio.run(pool.ingest(items))


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_failed_share_as_the_http_answer_tells_it(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the API: a failed share of a request with events without ids is answered 200,
    its events as errors by their index in the request (an invalid item before them moves
    none), the rest accepted; resending only those stores them once. Through Segment's batch,
    every event with a message id, the request hears the 503 in the error envelope, and the
    resend of the whole stores each event once."""
    settings = Settings(db=db_url, no_auth=True, rescore_interval=0, deliver_interval=0)
    app = create_app(settings)
    with RunningServer(app) as running, httpx.Client(base_url=running.url) as client:
        pool = app.state.leadscore.writer
        assert isinstance(pool, ProcessWriterPool) and len(pool.writers) == 2

        async def refuse(_items: list[EventInput]) -> list[ItemOutcome]:
            await asyncio.sleep(0.05)
            raise writer_module._unavailable("the ingest process is starting")

        leads = [f"H{i}" for i in range(100)]
        # the share of writers[1], told by the leads' homes as the pool picks them
        failing = {i for i, lead in enumerate(leads) if pool.home(lead) is pool.writers[1]}
        assert 0 < len(failing) < len(leads)
        body: list[dict[str, object]] = [{"lead_id": "H0"}]  # no type: invalid, index 0
        body += [
            {"lead_id": lead, "type": "page_view", "url": "/pricing"}
            | ({"event_id": f"h-{i}"} if i % 2 else {})
            for i, lead in enumerate(leads)
        ]
        with monkeypatch.context() as patch:
            patch.setattr(pool.writers[1], "ingest", refuse)
            r = client.post("/api/v1/events", json=body)
        assert r.status_code == 200, r.text
        answer = r.json()
        assert answer["received"] == 101
        assert answer["accepted"] == len(leads) - len(failing)
        refused = {e["index"] for e in answer["errors"]}
        assert refused == {0} | {i + 1 for i in failing}
        assert all(
            "not acknowledged: the ingest process is starting; send this event again"
            in e["message"]
            for e in answer["errors"]
            if e["index"] != 0
        )
        again = client.post("/api/v1/events", json=[body[i] for i in sorted(refused - {0})])
        assert again.status_code == 200 and again.json()["accepted"] == len(failing)
        assert_scores_exact(db_url, leads, events=len(leads))

        batch = {
            "batch": [
                {"type": "track", "userId": lead, "event": "page_view", "messageId": f"s-{i}"}
                for i, lead in enumerate(leads)
            ]
        }
        with monkeypatch.context() as patch:
            patch.setattr(pool.writers[1], "ingest", refuse)
            r = client.post("/v1/batch", json=batch)
        assert r.status_code == 503, r.text
        assert r.json()["error"]["message"] == "the ingest process is starting"
        assert r.headers["retry-after"] == "1"
        again = client.post("/v1/batch", json=batch)  # as Segment's libraries do on a 5xx
        assert again.status_code == 200, again.text
        assert again.json()["accepted"] == len(failing)
        assert again.json()["duplicate"] == len(leads) - len(failing)
        assert_scores_exact(db_url, leads, events=2 * len(leads))


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_killed_process_of_the_pool_is_replaced_and_the_other_goes_on(
    pool: ProcessWriterPool, db_url: str
) -> None:
    """The front one of two ingest processes killed: meanwhile the other takes every request
    (large ones whole), and it is started again at once, not at the next request; then the
    requests go to it again, and large ones are shared out again."""
    big = [f"K{i}" for i in range(100)]

    async def scenario() -> None:
        await pool.ingest(page_views(["FRONT"], "w0-"))
        await pool.ingest(page_views(big, "both-"))
        killed, other = pool.pids
        assert killed is not None and other is not None
        os.kill(killed, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while pool.writers[0].up and time.monotonic() < deadline:
            await asyncio.sleep(0.02)  # the loop hears the pipe close
        assert not pool.writers[0].up
        assert pool.writer_for(page_views(["FRONT"], "m")) is pool.writers[1]
        outcomes = await pool.ingest(page_views(["FRONT"], "meanwhile-"))
        assert [o.status for o in outcomes] == ["accepted"]
        whole = page_views(big, "whole-")
        assert [(w, len(share)) for w, share in pool.shares(whole)] == [(pool.writers[1], 100)]
        outcomes = await pool.ingest(whole)
        assert {o.status for o in outcomes} == {"accepted"}
        while not pool.writers[0].up and time.monotonic() < deadline + 50:
            await asyncio.sleep(0.05)  # started again by the restarting thread on its own
        assert pool.pids[0] not in (None, killed) and pool.pids[1] == other
        assert pool.writer_for(page_views(["FRONT"], "a")) is pool.writers[0]
        outcomes = await pool.ingest(page_views(["FRONT"], "after-"))
        assert [o.status for o in outcomes] == ["accepted"]
        assert len(pool.shares(page_views(big, "again-"))) == 2

    asyncio.run(scenario())
    assert_scores_exact(db_url, ["FRONT", "K0", "K99"], events=203)


def test_a_pool_needs_two_processes_and_postgresql(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="one writer at a time"):
        ProcessWriterPool(2, f"sqlite:///{tmp_path / 's.db'}", cached_events=0)
    with pytest.raises(ValueError, match="two ingest processes or more"):
        ProcessWriterPool(1, "postgresql://postgres@127.0.0.1:9/nowhere", cached_events=0)


@pytest.mark.parametrize("db_url", ["sqlite", "postgresql"], indirect=True)
def test_the_service_starts_as_many_ingest_processes_as_suit_the_store(db_url: str) -> None:
    """``leadscore serve`` starts two ingest processes on PostgreSQL and one on SQLite
    unless told otherwise (the health page says how many); on PostgreSQL as many as asked,
    on SQLite asking for more is refused."""
    pg = db_url.startswith("postgresql")
    cases = [(0, 2), (1, 1), (3, 3)] if pg else [(0, 1), (1, 1)]
    for asked, started in cases:
        settings = Settings(
            db=db_url,
            no_auth=True,
            rescore_interval=0,
            deliver_interval=0,
            ingest_processes=asked,
        )
        app = create_app(settings)
        with RunningServer(app) as running, httpx.Client(base_url=running.url) as client:
            r = client.post("/api/v1/events", json={"lead_id": f"N{asked}", "type": "demo_request"})
            assert r.status_code == 200, r.text
            health = client.get("/api/v1/health").json()
            assert health["ingest_processes"] == started
            writer = app.state.leadscore.writer
            if started > 1:
                assert isinstance(writer, ProcessWriterPool) and len(writer.writers) == started
                assert health["event_cache"]["limit"] == settings.cached_events // started * started
            else:
                assert isinstance(writer, ProcessWriter)
    if db_url.startswith("sqlite"):
        with pytest.raises(UsageError, match="SQLite takes one writer at a time"):
            ingest_processes(Settings(db=db_url, ingest_processes=2), sqlite=True)
