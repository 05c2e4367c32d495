"""Ingest in two transactions with the scoring in between (leadscore.store.deferred), as the
ingest process and the scoring process of ``leadscore serve`` run it on SQLite: here the two
are two stores on one file in this process. Whatever comes between the two transactions
(another writer, a model published, the process ending), the scores written are exactly what
the per-lead evaluator gives for the stored profile and events."""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterator
from multiprocessing import Pipe
from pathlib import Path
from typing import Any

import pytest

from leadscore.service import writer as writer_module
from leadscore.store import EventInput, LeadInput, Store
from leadscore.store.db import open_database, start_journal
from leadscore.store.deferred import (
    ALONE_EVENTS,
    SCORED_TO,
    STORED_TO,
    Earlier,
    Scored,
    ScoreJob,
    Stored,
    score_job,
    settle,
    store_and_score,
    write_scored,
    write_scored_and_store,
)
from leadscore.store.deferred import store_events as store_events_of
from leadscore.store.eventcache import Preloader
from leadscore.store.keeper import event_types
from leadscore.store.leads import lead_events, upsert_leads
from leadscore.store.queries import lead_view
from tests.conftest import Clock
from tests.test_event_cache import DAY, snapshot, view
from tests.test_store_scoring import ALT, RT, assert_matches_per_lead, publish


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'store.db'}"


@pytest.fixture
def writer(url: str, clock: Clock) -> Iterator[Store]:
    """The ingest process's store: it keeps no events (the scoring process does)."""
    s = Store(open_database(url), clock=clock, cached_events=0)
    yield s
    s.db.dispose()


@pytest.fixture
def scorer(url: str, clock: Clock) -> Iterator[Store]:
    """The scoring process's store."""
    s = Store(open_database(url), clock=clock)
    yield s
    s.db.dispose()


@pytest.fixture
def other(url: str, clock: Clock) -> Iterator[Store]:
    """Another writer on the same file (the HTTP process, the command line)."""
    s = Store(open_database(url), clock=clock)
    yield s
    s.db.dispose()


class Pipeline:
    """The two transactions and the scoring in between, one batch at a time or overlapped."""

    def __init__(self, writer: Store, scorer: Store) -> None:
        self.writer, self.scorer = writer, scorer
        self.seq = 0
        self.used: list[bool] = []

    def store(self, items: list[EventInput]) -> Stored:
        return store_events_of(self.writer, items)

    def finish(self, stored: Stored) -> None:
        if not stored.leads:  # nothing to rescore: answered at once
            return
        self.seq += 1
        scored = score_job(self.scorer, stored.job(self.seq))
        self.used.append(write_scored(self.writer, stored, scored))

    def ingest(self, items: list[EventInput]) -> Stored:
        stored = self.store(items)
        self.finish(stored)
        return stored


def test_batches_scored_elsewhere_equal_the_per_lead_evaluator(
    writer: Store, scorer: Store, clock: Clock
) -> None:
    publish(writer, RT)
    publish(writer, ALT)
    rng = random.Random(7)
    leads = [f"L{i}" for i in range(12)]
    p = Pipeline(writer, scorer)
    urls = ["/pricing", "/blog", "/careers", "/demo"]
    for n in range(25):
        clock.advance(seconds=rng.randint(1, 3600))
        batch = [
            view(clock, rng.choice(leads), rng.choice(urls), rng.choice([0, 0, 0, 2, 40]))
            for _ in range(rng.randint(1, 8))
        ]
        if n % 5 == 4:  # a retry: acknowledged, not counted twice
            batch = [view(clock, "L0", "/pricing", message_id="again")] * 2
        stored = p.ingest(batch)
        assert stored.leads == sorted({e.lead_id or "" for e in batch}) or n > 4
        assert_matches_per_lead(writer, stored.leads, clock.now)
    assert p.used and all(p.used)
    assert scorer.event_cache.unchecked > 0
    assert writer.event_cache.cached_events == 0


def test_the_scoring_stores_cache_grows_with_the_writers_journal(
    writer: Store, scorer: Store, other: Store, clock: Clock
) -> None:
    publish(writer, RT)
    p = Pipeline(writer, scorer)
    cache = scorer.event_cache
    p.ingest([view(clock, "L1", "/pricing", 3)])
    assert (cache.misses, cache.unchecked) == (1, 0)
    for _ in range(3):
        clock.advance(seconds=60)
        p.ingest([view(clock, "L1", "/pricing")])
    # kept, and grown by the events each batch's journal said, without asking the database
    assert (cache.misses, cache.unchecked) == (1, 3)
    other.upsert_leads([LeadInput("L2")])  # another writer: the database is asked again
    clock.advance(seconds=60)
    p.ingest([view(clock, "L1", "/pricing")])
    assert (cache.misses, cache.unchecked, cache.extended) == (1, 3, 1)
    assert p.used == [True] * 5
    assert_matches_per_lead(writer, ["L1"], clock.now)


def test_batches_overlapped_the_later_events_already_seen_are_counted_once(
    writer: Store, scorer: Store, clock: Clock
) -> None:
    publish(writer, RT)
    p = Pipeline(writer, scorer)
    p.ingest([view(clock, "L1", "/pricing", 3)])
    clock.advance(seconds=10)
    first = p.store([view(clock, "L1", "/pricing"), view(clock, "L2", "/demo")])
    clock.advance(seconds=10)
    # stored before the first batch is scored: the scoring of the first reads it too
    second = p.store([view(clock, "L1", "/pricing"), view(clock, "L2", "/blog")])
    p.finish(first)
    p.finish(second)
    assert p.used == [True, True, True]
    assert_matches_per_lead(writer, ["L1", "L2"], second.now_us)
    # the scoring store's kept list holds each event once
    types = event_types(scorer.sheets())
    with scorer.db.read() as conn:
        for lead_id in ("L1", "L2"):
            want = lead_events(conn, lead_id, second.now_us, types)
            assert snapshot(scorer.event_cache._entries[lead_id].events) == snapshot(want)


def test_another_writer_in_between_makes_the_writer_rescore(
    writer: Store, scorer: Store, other: Store, clock: Clock
) -> None:
    publish(writer, RT)
    p = Pipeline(writer, scorer)
    p.ingest([view(clock, "L1", "/pricing")])
    clock.advance(seconds=10)
    stored = p.store([view(clock, "L1", "/pricing")])
    scored = score_job(scorer, stored.job(99))
    # the profile changes after the scores were computed, before they are written
    other.upsert_leads([LeadInput("L1", fields={"title": "VP Marketing", "country": "US"})])
    assert write_scored(writer, stored, scored) is False
    assert_matches_per_lead(writer, ["L1"], stored.now_us)


def test_a_model_published_in_between_makes_the_writer_rescore(
    writer: Store, scorer: Store, other: Store, clock: Clock
) -> None:
    publish(writer, RT)
    p = Pipeline(writer, scorer)
    stored = p.store([view(clock, "L1", "/pricing")])
    scored = score_job(scorer, stored.job(1))
    publish(other, RT.replace("points: 16", "points: 17"))
    assert write_scored(writer, stored, scored) is False
    assert_matches_per_lead(writer, ["L1"], stored.now_us)
    (version,) = {s.version.id for s in writer.sheets()}
    assert version not in scored.versions


def test_without_scores_from_elsewhere_the_writer_rescores(
    writer: Store, scorer: Store, clock: Clock
) -> None:
    publish(writer, RT)
    stored = store_events_of(writer, [view(clock, "L1", "/pricing"), view(clock, "L2", "/demo")])
    assert write_scored(writer, stored, None) is False
    assert_matches_per_lead(writer, ["L1", "L2"], stored.now_us)


def test_a_batch_stored_and_never_scored_is_rescored_at_the_next_start(
    writer: Store, url: str, clock: Clock
) -> None:
    publish(writer, RT)
    Pipeline(writer, writer).ingest([view(clock, "L0", "/pricing")])  # scored: settled
    clock.advance(seconds=10)
    stored = store_events_of(writer, [view(clock, "L1", "/pricing"), view(clock, "L2", "/demo")])
    assert stored.leads == ["L1", "L2"]
    writer.db.dispose()  # the process ends before writing their scores
    clock.advance(seconds=10)
    again = Store(open_database(url), clock=clock, cached_events=0)
    try:
        with again.db.read() as conn:
            assert not conn.exec_driver_sql(
                "SELECT count(*) FROM scores WHERE lead_id IN ('L1', 'L2')"
            ).scalar_one()
        assert settle(again) == 2
        assert_matches_per_lead(again, ["L1", "L2"], clock.now)
        assert settle(again) == 0  # nothing left
        with again.db.read() as conn:
            counters = dict(conn.exec_driver_sql("SELECT name, value FROM counters").all())
        assert counters[STORED_TO] == counters[SCORED_TO] == stored.newest_id
    finally:
        again.db.dispose()


def test_a_large_batch_goes_in_parts_each_with_its_leads_share_of_the_journal(
    writer: Store, clock: Clock
) -> None:
    publish(writer, RT)
    leads = [f"P{i:02d}" for i in range(10)]
    stored = store_events_of(writer, [view(clock, lid, "/pricing") for lid in leads * 2])
    assert stored.leads == leads and len(stored.outcomes) == 20
    assert stored.parts(7) == [stored]  # at most one and a half parts: whole
    parts = stored.parts(3)  # four parts of two or three leads, in order
    assert [p.leads for p in parts] == [leads[0:2], leads[2:5], leads[5:7], leads[7:10]]
    assert [p.final for p in parts] == [False, False, False, True]
    assert [len(p.outcomes) for p in parts] == [0, 0, 0, 20]
    for p in parts:
        assert set(p.added) == set(p.leads) and all(len(p.added[lid]) == 2 for lid in p.leads)
        assert (p.epoch, p.newest_id, p.now_us) == (stored.epoch, stored.newest_id, stored.now_us)
    # a journal's lead outside the batch (not expected) is not lost: it goes with the first
    odd = Stored(
        [], leads, stored.now_us, stored.epoch, stored.newest_id, {"X": []}, frozenset("Y")
    )
    first = odd.parts(3)[0]
    assert "X" in first.added and "Y" in first.dirty


def test_a_batch_written_in_parts_counts_as_scored_only_with_its_last(
    writer: Store, scorer: Store, url: str, clock: Clock
) -> None:
    """Each part is scored by the scoring process and written in a transaction of its own;
    should the process end after the first, the next start rescores the batch's leads."""
    publish(writer, RT)
    leads = [f"P{i}" for i in range(6)]
    p = Pipeline(writer, scorer)
    p.ingest([view(clock, lid, "/blog", 2) for lid in leads])
    clock.advance(seconds=60)
    stored = store_events_of(writer, [view(clock, lid, "/pricing") for lid in leads])
    first, _ = stored.parts(3)  # the last part is never written
    p.seq += 1
    assert write_scored(writer, first, score_job(scorer, first.job(p.seq)))
    assert_matches_per_lead(writer, first.leads, clock.now)
    with writer.db.read() as conn:
        counters = dict(conn.exec_driver_sql("SELECT name, value FROM counters").all())
    assert counters[SCORED_TO] < counters[STORED_TO] == stored.newest_id
    writer.db.dispose()  # the process ends before writing the last part
    again = Store(open_database(url), clock=clock, cached_events=0)
    try:
        assert settle(again) == len(leads)
        assert_matches_per_lead(again, leads, clock.now)
    finally:
        again.db.dispose()
    # and written whole, part after part, the batch is scored as the per-lead evaluator
    clock.advance(seconds=60)
    with_parts = Store(open_database(url), clock=clock, cached_events=0)
    try:
        for url_ in ["/demo", "/pricing"]:
            before = scorer.event_cache.unchecked
            stored = store_events_of(with_parts, [view(clock, lid, url_) for lid in leads])
            for part in stored.parts(2):
                p.seq += 1
                assert write_scored(with_parts, part, score_job(scorer, part.job(p.seq)))
            assert_matches_per_lead(with_parts, leads, clock.now)
            clock.advance(seconds=60)
        # the second batch: every kept list (checked in the first, after another writer's
        # commit) grown by its part's journal, without asking the database
        assert scorer.event_cache.unchecked - before == len(leads)
        assert settle(with_parts) == 0
    finally:
        with_parts.db.dispose()


class _InThisThread:
    """The ingest process's link to the scoring process, scoring here: each job when its
    answer is asked for (its pipe is never readable, so the loop waits for nothing)."""

    def __init__(self, scorer: Store, log: list[tuple[str, str]]) -> None:
        self.scorer, self.log = scorer, log
        self.alive = True
        self.stats: dict[str, int] = {}
        self.jobs: deque[ScoreJob] = deque()
        self.pipe, self._other = Pipe()

    def send(self, job: ScoreJob) -> None:
        self.jobs.append(job)
        self.log.append(("sent", job.leads[0].split("-")[0]))

    def receive(self, seq: int) -> Scored | None:
        job = self.jobs.popleft()
        assert job.seq == seq
        return score_job(self.scorer, job)

    def stop(self) -> None:
        self.alive = False


class _Answers:
    def __init__(self, log: list[tuple[str, str]]) -> None:
        self.log = log

    def send(self, message: Any) -> None:
        self.log.append(("answered", message[0][0][0]))


def test_batches_in_parts_keep_at_most_max_in_flight_batches_unanswered(
    writer: Store, scorer: Store, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Eight requests waiting, each stored in parts: writing a part that is not its batch's
    last answers nothing, so it may not make room for another batch to be stored (found by a
    review: each such part stored one more, all eight in flight at once)."""
    monkeypatch.setattr(writer_module, "PART_LEADS", 4)  # 20 leads a batch: 5 parts
    publish(writer, RT)
    log: list[tuple[str, str]] = []
    jobs_out, jobs_in = Pipe()
    requests = [[view(clock, f"B{r}-{i:02d}", "/pricing") for i in range(20)] for r in range(8)]
    for r, items in enumerate(requests):  # all waiting before the loop starts
        jobs_out.send((f"B{r}", items))
    jobs_out.send(None)
    link = _InThisThread(scorer, log)
    state = writer_module._State()
    writer_module._write_loop(writer, link, jobs_in, _Answers(log), 20, 0, state, 0)
    outstanding, worst, started = 0, 0, set()
    for kind, batch in log:
        if kind == "sent" and batch not in started:
            started.add(batch)
            outstanding += 1
        elif kind == "answered":
            outstanding -= 1
        worst = max(worst, outstanding)
    assert [b for k, b in log if k == "answered"] == [f"B{r}" for r in range(8)]
    assert len([k for k, _ in log if k == "sent"]) == 8 * 5
    assert worst <= writer_module.MAX_IN_FLIGHT
    assert_matches_per_lead(
        writer, [e.lead_id or "" for items in requests for e in items], clock.now
    )


def test_a_store_that_never_deferred_has_nothing_to_settle(writer: Store, clock: Clock) -> None:
    publish(writer, RT)
    writer.ingest_events([view(clock, "L1", "/pricing")])
    assert settle(writer) == 0


def test_repeats_and_anonymous_events_leave_nothing_to_score(
    writer: Store, scorer: Store, clock: Clock
) -> None:
    publish(writer, RT)
    Pipeline(writer, scorer).ingest([view(clock, "L1", "/pricing", message_id="m1")])
    stored = store_events_of(
        writer,
        [
            view(clock, "L1", "/pricing", message_id="m1"),
            EventInput("page_view", clock.now - DAY, None, anonymous_id="a1"),
        ],
    )
    assert [o.status for o in stored.outcomes] == ["duplicate", "anonymous"]
    assert stored.leads == []
    assert settle(writer) == 0


def test_events_the_scoring_store_was_not_told_of_end_its_trust(
    writer: Store, scorer: Store, clock: Clock
) -> None:
    """The ingest process stores a batch in one transaction itself (its two-transaction store
    failed, or the scoring process failed a batch): it ends its epoch, so the scoring store
    checks what it kept against the database."""
    publish(writer, RT)
    p = Pipeline(writer, scorer)
    p.ingest([view(clock, "L1", "/pricing")])
    clock.advance(seconds=60)
    writer.ingest_events([view(clock, "L1", "/pricing")])
    writer.db.end_epoch()
    clock.advance(seconds=60)
    p.ingest([view(clock, "L1", "/pricing")])
    assert p.used == [True, True]
    assert_matches_per_lead(writer, ["L1"], clock.now)


def test_one_transaction_writes_a_batchs_scores_and_stores_the_next(
    writer: Store, scorer: Store, clock: Clock
) -> None:
    publish(writer, RT)
    p = Pipeline(writer, scorer)
    first = p.store([view(clock, "L1", "/pricing"), view(clock, "L2", "/demo")])
    scored = score_job(scorer, first.job(1))
    clock.advance(seconds=30)
    used, second = write_scored_and_store(
        writer, first, scored, [view(clock, "L1", "/pricing"), view(clock, "L3", "/blog")]
    )
    assert used and second.leads == ["L1", "L3"]
    assert second.epoch == first.epoch  # the journal went on: the scoring store trusts it
    assert_matches_per_lead(writer, ["L2"], first.now_us)
    p.finish(second)
    assert p.used == [True]
    assert_matches_per_lead(writer, ["L1", "L3"], clock.now)
    assert settle(writer) == 0


def test_batches_written_alone_reach_the_scoring_stores_lists_with_the_next_job(
    writer: Store, scorer: Store, other: Store, clock: Clock
) -> None:
    """Small batches the ingest process stores and scores itself (store_and_score): their
    journals, sent with the next job, grow the scoring store's kept lists (those of the job's
    leads and of others) so that it goes on trusting them; a lead's events changed otherwise
    (dirty), and any other writer's commit, make it read again."""
    publish(writer, RT)
    p = Pipeline(writer, scorer)
    cache = scorer.event_cache
    p.ingest([view(clock, lid, "/pricing", 3) for lid in ("L1", "L2", "L3")])
    earlier = []
    for n in range(3):
        clock.advance(seconds=60)
        alone = store_and_score(writer, [view(clock, "L1", f"/pricing/{n}")])
        assert alone.leads == ["L1"]
        assert_matches_per_lead(writer, ["L1"], clock.now)  # scored in its transaction
        journal = alone.earlier()
        assert journal is not None
        earlier.append(journal)
    clock.advance(seconds=60)
    stored = p.store([view(clock, "L2", "/blog")])  # not L1: its list grows all the same
    before = (cache.misses, cache.extended, cache.unchecked)
    p.seq += 1
    assert write_scored(writer, stored, score_job(scorer, stored.job(p.seq, earlier)))
    assert (cache.misses, cache.extended, cache.unchecked) == (before[0], before[1], before[2] + 1)
    types = event_types(scorer.sheets())
    with scorer.db.read() as conn:
        for lead_id in ("L1", "L2", "L3"):
            want = lead_events(conn, lead_id, clock.now, types)
            assert snapshot(cache._entries[lead_id].events) == snapshot(want), lead_id
    clock.advance(seconds=60)
    p.ingest([view(clock, "L1", "/pricing")])
    assert cache.misses == before[0] and cache.unchecked == before[2] + 2  # trusted
    assert_matches_per_lead(writer, ["L2"], stored.now_us)
    assert_matches_per_lead(writer, ["L1"], clock.now)
    # a lead changed otherwise (dirty) in a transaction written alone: its kept list and its
    # kept profile are dropped when that journal comes with the next job
    assert "L3" in cache._entries and "L3" in scorer.profile_cache._kept
    clock.advance(seconds=60)
    nxt = p.store([view(clock, "L2", "/pricing")])
    p.seq += 1
    changed = Earlier(nxt.epoch or 0, {}, frozenset({"L3"}))
    assert write_scored(writer, nxt, score_job(scorer, nxt.job(p.seq, [changed])))
    assert "L3" not in cache._entries and "L3" not in scorer.profile_cache._kept
    # a journal of an older epoch is not sent
    other.upsert_leads([LeadInput("L9")])
    clock.advance(seconds=60)
    old = store_and_score(writer, [view(clock, "L1", "/pricing")]).earlier()
    assert old is not None and old.epoch != stored.epoch
    clock.advance(seconds=60)
    later = p.store([view(clock, "L1", "/pricing")])
    assert later.job(1, [journal, old]).earlier == (old,)
    p.finish(later)
    assert_matches_per_lead(writer, ["L1"], clock.now)


def test_lists_read_ahead_in_the_writers_epoch_are_trusted_and_take_its_journals_once(
    writer: Store, scorer: Store, other: Store, clock: Clock
) -> None:
    """The scoring process reads leads' events ahead between jobs, stamped with the writer's
    epoch as last heard (leadscore.service.scoring): the next job of that epoch uses them
    without asking the database, whether its snapshot came before or after the commits whose
    journals reach it with the job (events already read ahead are not added twice); once the
    epoch has ended, they are checked against the database first."""
    publish(writer, RT)
    p = Pipeline(writer, scorer)
    for i in range(6):
        p.ingest([view(clock, f"L{i}", "/pricing", 3)])
        clock.advance(seconds=10)
    scorer.event_cache.clear()  # as after a start
    cache = scorer.event_cache
    heard = writer.db.epoch  # as the ingest process sends it with "open"
    clock.advance(seconds=60)
    # committed before the read-ahead: its journal reaches the scorer with the next job
    alone = store_and_score(writer, [view(clock, "L1", "/blog"), view(clock, "L2", "/demo")])
    assert alone.scored and alone.epoch == heard
    journal = alone.earlier()
    assert journal is not None
    preloader = Preloader(cache, scan=2, leads=2)
    while scorer.preload_step(preloader, heard):
        pass
    assert cache.preloaded == 6
    clock.advance(seconds=60)
    # committed after it: its events are new to the lists read ahead
    stored = p.store([view(clock, f"L{i}", "/pricing") for i in range(4)])
    assert stored.epoch == heard
    before = (cache.misses, cache.extended, cache.hits, cache.unchecked)
    p.seq += 1
    assert write_scored(writer, stored, score_job(scorer, stored.job(p.seq, [journal])))
    assert (cache.misses, cache.extended, cache.hits) == before[:3]
    assert cache.unchecked == before[3] + 4
    assert_matches_per_lead(writer, stored.leads, stored.now_us)
    types = event_types(scorer.sheets())

    def assert_kept_once(lead_ids: list[str]) -> None:
        with scorer.db.read() as conn:
            for lead_id in lead_ids:
                want = lead_events(conn, lead_id, clock.now, types)
                assert snapshot(cache._entries[lead_id].events) == snapshot(want), lead_id

    assert_kept_once([f"L{i}" for i in range(6)])
    # read ahead after a commit of the same epoch whose journal comes with the job
    clock.advance(seconds=60)
    later = p.store([view(clock, "L4", "/pricing"), view(clock, "L5", "/blog")])
    cache.clear()
    preloader = Preloader(cache, scan=2, leads=2)
    while scorer.preload_step(preloader, stored.epoch):
        pass
    before = (cache.misses, cache.extended, cache.hits, cache.unchecked)
    p.finish(later)
    assert (cache.misses, cache.extended, cache.hits) == before[:3]
    assert cache.unchecked == before[3] + 2
    assert_kept_once(["L4", "L5"])
    assert_matches_per_lead(writer, ["L4", "L5"], later.now_us)
    # the epoch heard has ended (another writer): what is read ahead in it is checked
    heard = writer.db.epoch
    other.ingest_events([view(clock, "L3", "/demo")])
    cache.clear()
    preloader = Preloader(cache, scan=2, leads=2)
    while scorer.preload_step(preloader, heard):
        pass
    other.ingest_events([view(clock, "L3", "/blog", 0.5)])  # after the read-ahead too
    clock.advance(seconds=60)
    last = p.store([view(clock, "L3", "/pricing")])
    assert last.epoch != heard
    before = (cache.misses, cache.extended, cache.hits, cache.unchecked)
    p.finish(last)
    # checked against the database (and read again: the newer commit's event is older)
    assert (cache.misses, cache.unchecked) == (before[0] + 1, before[3])
    assert p.used[-1]
    assert_kept_once(["L3"])
    assert_matches_per_lead(writer, ["L3"], last.now_us)


def test_a_small_batch_for_a_long_history_is_left_to_the_scoring_process(
    writer: Store, scorer: Store, clock: Clock
) -> None:
    """store_and_score reads its leads' events from the database: past ALONE_EVENTS events in
    all it only stores them (as store_events), and the scoring process scores them."""
    publish(writer, RT)
    p = Pipeline(writer, scorer)
    p.ingest([view(clock, "L1", f"/blog/{i}", 1 + i / 1000) for i in range(ALONE_EVENTS)])
    clock.advance(seconds=60)
    short = store_and_score(writer, [view(clock, "L2", "/pricing"), view(clock, "L3", "/blog")])
    assert short.scored and short.leads == ["L2", "L3"]
    assert_matches_per_lead(writer, ["L2", "L3"], clock.now)
    clock.advance(seconds=60)
    long = store_and_score(writer, [view(clock, "L1", "/pricing")])
    assert not long.scored and long.leads == ["L1"]
    assert long.earlier() is not None  # not sent by the writer: this job carries the events
    p.finish(long)
    assert p.used[-1]
    assert_matches_per_lead(writer, ["L1"], clock.now)
    assert settle(writer) == 0  # the counters agree


def test_scores_cross_the_pipe_whole() -> None:
    """A scoring process's answer is pickled to the ingest process: every field of every new
    score arrives (NewScore pickles as the tuple of its fields)."""
    import dataclasses
    import pickle

    from leadscore.store.deferred import Scored
    from leadscore.store.scores import NewScore

    values = {f.name: f"v{i}" for i, f in enumerate(dataclasses.fields(NewScore))}
    values["groups"] = {"fit": 1.5}
    sent = Scored(7, (3,), [NewScore(**values)])
    got = pickle.loads(pickle.dumps(sent, pickle.HIGHEST_PROTOCOL))
    assert got == sent
    assert {f.name: getattr(got.scores[0], f.name) for f in dataclasses.fields(NewScore)} == values


def test_a_job_the_scoring_process_fails_leaves_it_nothing_kept_to_trust(
    url: str, writer: Store, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real scoring process (forked, its scoring made to fail once): a job that fails may
    not have taken its journal in, and the next job of the same epoch may be on its way
    already; the process drops every list it kept, and scores correctly after."""
    import multiprocessing

    from leadscore.service import scoring

    publish(writer, RT)
    real = scoring.score_job

    def flaky(store: Store, job: ScoreJob) -> Scored:
        if job.seq == 2:
            raise RuntimeError("made to fail")
        return real(store, job)

    monkeypatch.setattr(scoring, "score_job", flaky)
    ctx = multiprocessing.get_context("fork")
    mine, theirs = ctx.Pipe()
    proc = ctx.Process(target=scoring.scoring_process, args=(theirs, url, False, 10_000))
    proc.start()
    link = scoring.ScorerLink(mine)
    try:
        assert link.start(writer.db.epoch)
        first = store_events_of(writer, [view(clock, "L1", "/pricing", 2)])
        link.send(first.job(1))
        assert write_scored(writer, first, link.receive(1))
        assert link.stats["leads"] == 1
        clock.advance(seconds=60)
        second = store_events_of(writer, [view(clock, "L1", "/pricing")])
        link.send(second.job(2))
        assert link.receive(2) is None and link.alive
        assert link.stats["leads"] == 0  # nothing kept to trust
        writer.db.end_epoch()  # as the ingest process does when a job fails
        assert not write_scored(writer, second, None)  # rescored here
        clock.advance(seconds=60)
        third = store_events_of(writer, [view(clock, "L1", "/pricing")])
        link.send(third.job(3))
        assert write_scored(writer, third, link.receive(3))
        assert_matches_per_lead(writer, ["L1"], third.now_us)
    finally:
        link.stop()
        proc.join(timeout=30)


def test_the_scoring_store_keeps_profiles_through_the_writers_epoch_only(
    writer: Store, scorer: Store, other: Store, clock: Clock
) -> None:
    """The profile fields a job reads are kept for the writer's epoch: the next jobs of that
    epoch use them; a profile another process changes (a new epoch for the writer) is read
    again, and the scores follow it."""
    publish(writer, RT)
    writer.upsert_leads([LeadInput("L1", fields={"title": "Analyst", "employees": 50})])
    p = Pipeline(writer, scorer)
    cache = scorer.profile_cache
    p.ingest([view(clock, "L1", "/pricing")])
    assert (cache.hits, cache.misses) == (0, 1)
    for _ in range(2):
        clock.advance(seconds=60)
        p.ingest([view(clock, "L1", "/pricing")])
    assert (cache.hits, cache.misses) == (2, 1)
    other.upsert_leads([LeadInput("L1", fields={"title": "VP Sales", "employees": 5000})])
    for _ in range(2):
        clock.advance(seconds=60)
        p.ingest([view(clock, "L1", "/pricing")])
        assert_matches_per_lead(writer, ["L1"], clock.now)
    assert (cache.hits, cache.misses) == (3, 2)
    assert p.used == [True] * 5
    with writer.db.read() as conn:
        assert lead_view(conn, "L1")["scores"]["rt"]["fit"] == 40  # the new title and size


def test_a_profile_changed_in_a_journaled_transaction_is_read_again(
    other: Store, clock: Clock
) -> None:
    """A store that rescores in its own transactions (no scoring process) keeps profiles
    through its epoch; a profile a journaled transaction changes (as a merge does) is read
    again, and outside a journaled transaction nothing is kept."""
    store = other
    publish(store, RT)
    store.upsert_leads([LeadInput("L1", fields={"title": "Analyst"})])
    cache = store.profile_cache
    store.ingest_events([view(clock, "L1", "/pricing")])
    clock.advance(seconds=60)
    store.ingest_events([view(clock, "L1", "/pricing")])
    assert (cache.hits, cache.misses, len(cache)) == (1, 1, 1)
    clock.advance(seconds=60)
    with store.db.write() as conn:
        start_journal(conn)
        upsert_leads(conn, [LeadInput("L1", fields={"title": "VP Sales"})], clock.now)
        store.rescore_leads(conn, ["L1"], "profile", clock.now)
    assert (cache.hits, cache.misses) == (1, 2)
    assert_matches_per_lead(store, ["L1"], clock.now)
    clock.advance(seconds=60)
    store.ingest_events([view(clock, "L1", "/pricing")])
    assert (cache.hits, cache.misses) == (2, 2)  # the new profile, kept in the same epoch
    assert_matches_per_lead(store, ["L1"], clock.now)
    store.upsert_leads([LeadInput("L1", fields={"title": "Intern"})])  # read, not kept
    assert (cache.hits, cache.misses) == (2, 2)
    assert_matches_per_lead(store, ["L1"], clock.now)
    clock.advance(seconds=60)
    store.ingest_events([view(clock, "L1", "/pricing")])  # a new epoch: read again
    assert (cache.hits, cache.misses) == (2, 3)
    assert_matches_per_lead(store, ["L1"], clock.now)
