"""The decoded events kept between rescorings (leadscore.store.eventcache), on SQLite and
PostgreSQL: whatever happens to a lead's events (new ones, late ones, future-dated ones,
anonymous ones joined, a merged lead's moved over, a transaction rolled back, another process
writing), rescoring sees exactly the events a fresh read of the database gives."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import pytest

from leadscore.engine.lead import Event
from leadscore.store import EventInput, LeadInput, Store
from leadscore.store import eventcache as eventcache_module
from leadscore.store.db import ARRAYS_ABOVE, Journal, driver_rows, open_database
from leadscore.store.eventcache import EventCache, Preloader, decoded_fields
from leadscore.store.keeper import event_types
from leadscore.store.leads import _journal_events, lead_events, lead_records
from leadscore.store.queries import score_history_of
from leadscore.store.schema import events
from tests.conftest import Clock, sent_statements
from tests.test_store_scoring import ALT, DW, RT, assert_matches_per_lead, publish

DAY = 86_400_000_000


def snapshot(evs: Sequence[Event]) -> list[tuple[Any, ...]]:
    return [(e.type, e.ts_us, e.item, e.event_id, dict(e.fields)) for e in evs]


def assert_fresh(store: Store, lead_ids: list[str], until_us: int) -> None:
    """What the cache gives for ``lead_ids`` equals the database's own answer (the cache's
    counters left as they were)."""
    cache = store.event_cache
    counters = (cache.hits, cache.extended, cache.misses, cache.unchecked)
    types = event_types(store.sheets())  # what rescoring asks for
    with store.db.write() as conn:
        got = cache.events_of_leads(conn, lead_ids, until_us, types)
        cache.hits, cache.extended, cache.misses, cache.unchecked = counters
        for lead_id in lead_ids:
            want = lead_events(conn, lead_id, until_us, types)
            assert snapshot(got[lead_id]) == snapshot(want), lead_id


def view(clock: Clock, lead_id: str, url: str, days_ago: float = 0, **kw: Any) -> EventInput:
    return EventInput(
        "page_view",
        clock.now - int(days_ago * DAY),
        lead_id,
        properties={"url": url},
        **kw,
    )


def test_new_events_extend_the_cached_list(store: Store, clock: Clock) -> None:
    publish(store, RT)
    cache = store.event_cache
    store.ingest_events([view(clock, "L1", "/pricing", 3), view(clock, "L1", "/blog", 2)])
    assert (cache.misses, cache.extended, cache.hits) == (1, 0, 0)
    clock.advance(seconds=5)
    store.ingest_events([view(clock, "L1", "/pricing")])
    # extended from the database's answer, or (SQLite, the only writer) from what it wrote
    assert (cache.misses, cache.extended + cache.unchecked) == (1, 1)
    assert cache.cached_events == 3
    clock.advance(seconds=5)
    store.upsert_leads([LeadInput("L1", fields={"title": "VP"})])  # no new event: a hit
    assert cache.hits == 1
    assert_fresh(store, ["L1"], clock.now)
    assert_matches_per_lead(store, ["L1"], clock.now)


def test_a_late_event_or_events_joined_from_elsewhere_read_the_lead_again(
    store: Store, clock: Clock
) -> None:
    publish(store, RT)
    cache = store.event_cache
    store.ingest_events([view(clock, "L1", "/pricing", 1)])
    # an event dated before the newest cached one: appending would break the order
    store.ingest_events([view(clock, "L1", "/pricing", 5, message_id="late")])
    assert (cache.misses, cache.extended) == (2, 0)
    assert_fresh(store, ["L1"], clock.now)
    # anonymous events (older ids) joined to a cached lead
    store.ingest_events([view(clock, None, "/pricing", 2, anonymous_id="a1")])  # type: ignore[arg-type]
    store.identify(LeadInput("L1"), anonymous_id="a1")
    assert cache.misses == 3
    assert_fresh(store, ["L1"], clock.now)
    # an email-keyed lead's events moved to the cached lead when they merge
    store.ingest_events([EventInput("demo_request", clock.now - DAY, email="ann@x.com")])
    store.upsert_leads([LeadInput("L1", email="ann@x.com")])
    assert_fresh(store, ["L1"], clock.now)
    with store.db.read() as conn:
        assert len(lead_events(conn, "L1")) == 4
    assert_matches_per_lead(store, ["L1"], clock.now)


def test_a_cached_lead_is_checked_by_reading_only_its_own_newer_events(
    store: Store, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    publish(store, RT)
    # L1's events are older (lower ids) than all of L2's: a floor shared by both leads would
    # bring L2's old events back with its new one
    store.ingest_events([view(clock, "L1", "/blog", 3)])
    store.ingest_events([view(clock, "L2", f"/p{i}", 2, message_id=f"m{i}") for i in range(5)])
    with store.db.read() as conn:
        newest = {
            lid: max(r.id for r in conn.execute(events.select().where(events.c.lead_id == lid)))
            for lid in ("L1", "L2")
        }
    seen: list[Any] = []

    def recording(conn: Any, sql: str, params: Any = ()) -> list[Any]:
        rows = driver_rows(conn, sql, params)
        seen.extend(r for r in rows if r[0] == 1)
        return rows

    monkeypatch.setattr(eventcache_module, "driver_rows", recording)
    clock.advance(seconds=5)
    store.ingest_events([view(clock, "L1", "/pricing"), view(clock, "L2", "/pricing")])
    assert all(r[2] > newest[r[1]] for r in seen), seen
    if not store.db.is_sqlite:  # SQLite's only writer trusts its lists without asking
        assert sorted(r[1] for r in seen) == ["L1", "L2"]
    assert_fresh(store, ["L1", "L2"], clock.now)
    assert_matches_per_lead(store, ["L1", "L2"], clock.now)


def test_future_events_wait_for_their_time(store: Store, clock: Clock) -> None:
    publish(store, RT)
    store.ingest_events([view(clock, "L1", "/pricing"), view(clock, "L1", "/pricing", -2)])
    assert_fresh(store, ["L1"], clock.now)
    assert_matches_per_lead(store, ["L1"], clock.now)
    clock.advance(days=3)
    store.upsert_leads([LeadInput("L1", fields={"title": "VP"})])
    assert store.event_cache.hits == 1  # the same list, now with both events in the past
    assert_matches_per_lead(store, ["L1"], clock.now)


def test_a_rolled_back_transaction_leaves_nothing_cached(store: Store, clock: Clock) -> None:
    publish(store, RT)
    cache = store.event_cache
    store.ingest_events([view(clock, "L1", "/pricing", 1)])

    class Boom(Exception):
        pass

    with pytest.raises(Boom), store.db.write() as conn:
        from leadscore.store.leads import insert_events

        insert_events(conn, [view(clock, "L1", "/pricing", message_id="gone")], clock.now)
        store.rescore_leads(conn, ["L1"], "event", clock.now)
        assert cache.extended == 1  # no journal in this transaction: the database is asked
        raise Boom
    assert cache.cached_events == 1  # the list with the rolled-back event was not kept
    # the next event takes the rolled-back one's id on SQLite: the cache must not be fooled
    clock.advance(seconds=1)
    store.ingest_events([view(clock, "L1", "/blog")])
    assert_fresh(store, ["L1"], clock.now)
    assert_matches_per_lead(store, ["L1"], clock.now)


def test_another_process_writing_is_noticed(store: Store, clock: Clock) -> None:
    publish(store, RT)
    store.ingest_events([view(clock, "L1", "/pricing", 1)])
    other = Store(open_database(str(store.db.engine.url.render_as_string(False))), clock=clock)
    try:
        other.ingest_events([view(clock, "L1", "/pricing", message_id="elsewhere")])
    finally:
        other.db.dispose()
    clock.advance(seconds=1)
    store.upsert_leads([LeadInput("L1", fields={"title": "VP"})])
    assert store.event_cache.extended == 1
    assert_fresh(store, ["L1"], clock.now)
    assert_matches_per_lead(store, ["L1"], clock.now)


def test_a_sheet_reading_other_types_starts_over(store: Store, clock: Clock) -> None:
    publish(store, ALT)
    store.ingest_events([view(clock, "L1", "/pricing"), EventInput("email_open", clock.now, "L1")])
    assert store.event_cache.cached_events == 1  # ALT reads no email_open
    publish(store, DW)  # reads email_open: the cached lists lack them
    clock.advance(seconds=1)
    store.upsert_leads([LeadInput("L1", fields={"title": "VP"})])
    assert store.event_cache.cached_events == 2
    assert_fresh(store, ["L1"], clock.now)
    assert_matches_per_lead(store, ["L1"], clock.now)


def test_the_cache_keeps_at_most_its_size(db_url: str, clock: Clock) -> None:
    store = Store(open_database(db_url), clock=clock, cached_events=5)
    try:
        publish(store, RT)
        for i in range(6):
            store.ingest_events([view(clock, f"L{i}", "/pricing", d) for d in (1, 2)])
        assert store.event_cache.cached_events <= 5
        assert len(store.event_cache) == 2
        assert_fresh(store, [f"L{i}" for i in range(6)], clock.now)
        off = Store(open_database(db_url), clock=clock, cached_events=0)
        off.ingest_events([view(clock, "L0", "/pricing")])
        assert off.event_cache.cached_events == 0 and off.event_cache.misses == 1
        off.db.dispose()
        assert_matches_per_lead(store, [f"L{i}" for i in range(6)], clock.now)
    finally:
        store.db.dispose()


def test_decoded_fields_are_shared() -> None:
    a = decoded_fields("page_view", None, '{"url": "/a", "n": 2, "m": {"k": true}}')
    b = decoded_fields("page_view", None, '{"url": "/a", "n": 2, "m": {"k": true}}')
    assert a is b
    assert dict(a) == {
        "url": "/a",
        "n": "2",
        "m": '{"k":true}',
        "m.k": "true",
        "type": "page_view",
        "item": None,
    }
    assert decoded_fields("page_view", "x", '{"url": "/a"}') is not a
    assert EventCache(0).max_events == 0


def test_lists_read_for_other_types_are_not_kept(store: Store, clock: Clock) -> None:
    """A transaction that read a lead for some types and commits after the cache started over
    for others (a sheet was published meanwhile) must not leave its lists behind."""
    publish(store, ALT)
    store.ingest_events([view(clock, "L1", "/pricing"), EventInput("email_open", clock.now, "L1")])
    cache = store.event_cache
    cache.clear()
    with store.db.write() as conn:
        cache.events_of_leads(conn, ["L1"], clock.now, ["page_view"])
        with store.db.read() as other:  # meanwhile, rescoring for more types
            cache.events_of_leads(other, ["L1"], clock.now, ["page_view", "email_open"])
    assert len(cache) == 0
    with store.db.write() as conn:
        cache.events_of_leads(conn, ["L1"], clock.now, ["page_view", "email_open"])
    assert cache.cached_events == 2


def test_large_properties_count_for_more(db_url: str, clock: Clock) -> None:
    """An event counts against the cache's size as one plus one per 200 bytes of its
    properties, so that events with large properties cannot fill the memory."""
    store = Store(open_database(db_url), clock=clock, cached_events=30)
    try:
        publish(store, RT)
        big = {"url": "/pricing", "note": "x" * 2_000}
        store.ingest_events([EventInput("page_view", clock.now, "L1", properties=big)])
        assert 10 <= store.event_cache.cached_events <= 12
        many = {"url": "/pricing", "note": "y" * 8_000}  # more than the cache holds: not kept
        store.ingest_events([EventInput("page_view", clock.now, "L2", properties=many)])
        assert len(store.event_cache) == 1
        assert_fresh(store, ["L1", "L2"], clock.now)
        assert_matches_per_lead(store, ["L1", "L2"], clock.now)
    finally:
        store.db.dispose()


# --- a writer alone (SQLite): the cache trusts what it wrote (leadscore.store.db.Journal) ---


@contextmanager
def statements(store: Store, *needles: str) -> Iterator[list[str]]:
    """The statements holding any of ``needles`` that the store runs while the block runs
    (listed when it ends)."""
    seen: list[str] = []
    with sent_statements(store) as sent:
        yield seen
    seen.extend(s for s in sent if any(n in s for n in needles))


def event_reads(store: Store) -> AbstractContextManager[list[str]]:
    """The statements that read leads' events from the database while the block runs."""
    # IN-lists on SQLite, one array parameter on PostgreSQL (leadscore.store.db.any_of)
    return statements(store, "FROM events WHERE lead_id IN", "FROM events WHERE lead_id = ANY")


def test_the_only_writer_rescores_without_reading_the_events_again(
    store: Store, clock: Clock
) -> None:
    """SQLite: the events a transaction wrote extend the cached list, no query; PostgreSQL
    (several writers at once) asks the database every time."""
    publish(store, RT)
    cache = store.event_cache
    store.ingest_events([view(clock, "L1", "/pricing", 2), view(clock, "L2", "/blog", 1)])
    for step in range(3):
        clock.advance(seconds=1)
        with event_reads(store) as reads:
            store.ingest_events([view(clock, "L1", f"/pricing/{step}")])
        if store.db.is_sqlite:
            assert (reads, cache.unchecked, cache.extended) == ([], step + 1, 0)
        else:
            assert (len(reads), cache.unchecked, cache.extended) == (1, 0, step + 1)
    assert_fresh(store, ["L1", "L2"], clock.now)
    assert_matches_per_lead(store, ["L1"], clock.now)


def test_another_process_writing_ends_the_trust(store: Store, clock: Clock) -> None:
    publish(store, RT)
    cache = store.event_cache
    store.ingest_events([view(clock, "L1", "/pricing", 2), view(clock, "L2", "/blog", 1)])
    store.ingest_events([view(clock, "L1", "/blog")])
    other = Store(open_database(str(store.db.engine.url.render_as_string(False))), clock=clock)
    try:  # events for both leads, written behind this store's back
        other.ingest_events([view(clock, lid, "/pricing", message_id=f"x{lid}") for lid in "12"])
    finally:
        other.db.dispose()
    before = cache.unchecked
    clock.advance(seconds=1)
    with event_reads(store) as reads:
        store.ingest_events([view(clock, "L1", "/pricing", message_id="mine")])
    assert (len(reads), cache.unchecked, cache.extended) == (1, before, 1 + (before == 0))
    clock.advance(seconds=1)
    store.ingest_events([view(clock, lid, "/blog", message_id=f"y{lid}") for lid in ("L1", "L2")])
    assert_fresh(store, ["L1", "L2"], clock.now)
    assert_matches_per_lead(store, ["L1", "L2"], clock.now)


def test_long_lists_of_leads_go_as_arrays_on_postgresql(store: Store, clock: Clock) -> None:
    """A request about more than ARRAYS_ABOVE leads sends them to PostgreSQL as arrays (one
    statement text for any number: leadscore.store.db.any_of); the answers are the same as
    the IN-lists' (SQLite, and short lists everywhere): events written behind the store's back
    are read, repeats are not counted twice, every score is the per-lead evaluator's."""
    publish(store, RT)
    old = [f"L{i:02}" for i in range(ARRAYS_ABOVE + 10)]
    new = [f"N{i:02}" for i in range(ARRAYS_ABOVE + 3)]
    store.ingest_events([view(clock, lid, "/pricing", 2, message_id=f"a{lid}") for lid in old])
    other = Store(open_database(str(store.db.engine.url.render_as_string(False))), clock=clock)
    try:  # newer events for half the leads, written behind this store's back
        other.ingest_events(
            [view(clock, lid, "/blog", 1, message_id=f"b{lid}") for lid in old[::2]]
        )
    finally:
        other.db.dispose()
    clock.advance(seconds=1)
    batch = [view(clock, lid, "/pricing", message_id=f"c{lid}") for lid in old + new]
    batch.append(view(clock, old[1], "/pricing", 2, message_id=f"a{old[1]}"))  # a repeat
    cache = store.event_cache
    before = (cache.extended, cache.misses)
    with statements(store, "= ANY(", " IN (") as sent:
        outcomes = store.ingest_events(batch)
    # the known leads' lists extended by their newer events (read by the floors of each), the
    # new leads' read in full
    assert (cache.extended - before[0], cache.misses - before[1]) == (len(old), len(new))
    assert [o.status for o in outcomes].count("accepted") == len(old) + len(new)
    arrays = [s for s in sent if "= ANY(" in s]
    if store.db.is_sqlite:
        assert not arrays
    else:  # the events check (counts, newer events, new leads' rows), locks, scores, repeats
        assert any("unnest(" in s for s in arrays)
        assert any("FOR UPDATE" in s for s in arrays)
        assert any("FROM scores" in s for s in arrays)
        assert any("message_id = ANY(" in s for s in arrays)
    with store.db.read() as conn:
        assert [len(lead_events(conn, lid)) for lid in old[:3]] == [3, 2, 3]
    assert_fresh(store, old + new, clock.now)
    assert_matches_per_lead(store, old + new, clock.now)


def test_a_transaction_without_a_journal_ends_the_trust(store: Store, clock: Clock) -> None:
    """A write of this process that does not record what it changed (here: an event moved to
    another lead by hand) makes the next rescoring ask the database."""
    publish(store, RT)
    store.ingest_events([view(clock, "L1", "/pricing", 2), view(clock, "L2", "/pricing", 1)])
    store.ingest_events([view(clock, "L1", "/blog")])
    with store.db.write() as conn:
        conn.execute(
            events.update().where(events.c.lead_id == "L2").values(lead_id="L1", ts_us=clock.now)
        )
    clock.advance(seconds=1)
    with event_reads(store) as reads:
        store.ingest_events([view(clock, "L1", "/pricing")])
    assert reads  # asked (and then read L1 in full: an older event joined it)
    with store.db.read() as conn:
        assert len(lead_events(conn, "L1")) == 4
    assert_fresh(store, ["L1", "L2"], clock.now)
    assert_matches_per_lead(store, ["L1"], clock.now)


def test_anonymous_events_joined_during_ingest_are_read(store: Store, clock: Clock) -> None:
    publish(store, RT)
    store.ingest_events([view(clock, "L1", "/pricing", 2)])
    store.ingest_events([view(clock, None, "/pricing", 1, anonymous_id="a1")])  # type: ignore[arg-type]
    clock.advance(seconds=1)
    # this event links a1 to L1 in the same transaction: a1's older event joins L1
    store.ingest_events([view(clock, "L1", "/blog", anonymous_id="a1")])
    with store.db.read() as conn:
        assert len(lead_events(conn, "L1")) == 3
    assert_fresh(store, ["L1"], clock.now)
    assert_matches_per_lead(store, ["L1"], clock.now)


def test_writers_in_several_threads_keep_the_cache_current(store: Store, clock: Clock) -> None:
    publish(store, RT)
    leads = [f"L{i}" for i in range(4)]
    errors: list[BaseException] = []

    def work(n: int) -> None:
        rng = random.Random(n)
        try:
            for k in range(25):
                lead = rng.choice(leads)
                ago = rng.choice([0, 0, 0, 3])  # now and then a late event
                store.ingest_events([view(clock, lead, "/pricing", ago, message_id=f"{n}-{k}")])
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    clock.advance(seconds=1)
    store.ingest_events([view(clock, lead, "/blog", message_id=f"last-{lead}") for lead in leads])
    assert_fresh(store, leads, clock.now)
    assert_matches_per_lead(store, leads, clock.now)


def test_a_journal_without_the_ids_of_its_events_trusts_nothing() -> None:
    params = [("L1", None, "page_view", 5, None, "{}", None, 9)] * 2
    journal = Journal()
    _journal_events(journal, params, 10, 2, 12)
    assert not journal.broken
    assert [row[1] for row in journal.events["L1"]] == [11, 12]
    for inserted, after in ((1, 12), (2, 13)):  # a row left out, an id taken elsewhere
        journal = Journal()
        _journal_events(journal, params, 10, inserted, after)
        assert journal.broken and journal.events == {}


# --- profiles and scores written elsewhere between two events ------------------------------


@pytest.mark.parametrize("writer", ["another process", "this process"])
def test_a_profile_changed_elsewhere_is_read_again(store: Store, clock: Clock, writer: str) -> None:
    """RT's vp rule earns fit points: the title set between two events by another
    writer (or by this process's own upsert) counts at the next event."""
    publish(store, RT)
    store.upsert_leads([LeadInput("L1", fields={"title": "Intern"})])
    store.ingest_events([view(clock, "L1", "/pricing", 2)])
    store.ingest_events([view(clock, "L1", "/blog")])
    change = [LeadInput("L1", fields={"title": "VP Sales"})]
    if writer == "another process":
        other = Store(open_database(str(store.db.engine.url.render_as_string(False))), clock=clock)
        try:  # a profile update that this store does not rescore
            other.upsert_leads(change, rescore=False)
        finally:
            other.db.dispose()
    else:
        store.upsert_leads(change, rescore=False)
    clock.advance(seconds=1)
    store.ingest_events([view(clock, "L1", "/pricing")])
    with store.db.read() as conn:
        assert lead_records(conn, ["L1"])["L1"]["title"] == "VP Sales"
    assert_matches_per_lead(store, ["L1"], clock.now)


def test_a_score_written_elsewhere_is_the_old_score_of_the_next(store: Store, clock: Clock) -> None:
    publish(store, RT)
    store.ingest_events([view(clock, "L1", "/pricing", 2)])
    store.ingest_events([view(clock, "L1", "/blog")])
    other = Store(open_database(str(store.db.engine.url.render_as_string(False))), clock=clock)
    try:  # rescored there (a later time: a different score) behind this store's back
        clock.advance(days=3)
        other.upsert_leads([LeadInput("L1", fields={"title": "VP"})])
    finally:
        other.db.dispose()
    with store.db.read() as conn:
        there = score_history_of(conn, "L1")[0]["new_score"]
    clock.advance(seconds=1)
    store.ingest_events([view(clock, "L1", "/pricing")])
    with store.db.read() as conn:
        last = score_history_of(conn, "L1")[0]
    assert last["old_score"] == there
    assert_matches_per_lead(store, ["L1"], clock.now)


def test_events_stored_without_rescoring_end_the_trust(store: Store, clock: Clock) -> None:
    """An import stores events without rescoring (``rescore=False``): the cache never saw
    them, so the next rescoring must ask the database."""
    publish(store, RT)
    store.ingest_events([view(clock, "L1", "/pricing", 2)])
    store.ingest_events([view(clock, "L1", "/blog")])
    store.ingest_events([view(clock, "L1", "/pricing", 1, message_id="quiet")], rescore=False)
    clock.advance(seconds=1)
    with event_reads(store) as reads:
        store.ingest_events([view(clock, "L1", "/pricing")])
    assert reads
    assert_fresh(store, ["L1"], clock.now)
    assert_matches_per_lead(store, ["L1"], clock.now)


def test_a_failure_after_the_commit_ends_the_trust(
    store: Store, clock: Clock, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The cache is brought up to date after the commit; should that fail, the write still
    returns its outcomes (its events are stored: a caller told otherwise would write them
    again), it is logged, and what the cache holds is not trusted again."""
    publish(store, RT)
    store.ingest_events([view(clock, "L1", "/pricing", 2)])
    keep = EventCache._keep

    def fail(*_args: Any) -> None:
        raise MemoryError

    monkeypatch.setattr(EventCache, "_keep", fail)
    outcomes = store.ingest_events([view(clock, "L1", "/blog")])  # committed; the cache not told
    assert [o.status for o in outcomes] == ["accepted"]
    assert "updating the caches after a commit failed" in caplog.text
    monkeypatch.setattr(EventCache, "_keep", keep)
    clock.advance(seconds=1)
    with event_reads(store) as reads:
        store.ingest_events([view(clock, "L1", "/pricing")])
    assert reads
    with store.db.read() as conn:
        assert len(lead_events(conn, "L1")) == 3
    assert_fresh(store, ["L1"], clock.now)
    assert_matches_per_lead(store, ["L1"], clock.now)


def _preload_all(store: Store, preloader: Preloader) -> int:
    steps = 0
    while store.preload_step(preloader):
        steps += 1
        assert steps < 1_000
    return steps


def test_preloading_reads_the_most_recent_leads_ahead_and_rescoring_finds_them(
    db_url: str, clock: Clock
) -> None:
    """A store restarted with events in it: the preloader reads the leads whose events are
    newest first, in small steps, until the cache is filled to its share; the first
    rescoring of a preloaded lead then reads no event again (a hit), and gets exactly what a
    fresh read gives, late and future events and another writer's events included."""
    first = Store(open_database(db_url), clock=clock)
    try:
        publish(first, RT)
        for i in range(12):  # L0 oldest ... L11 newest; two events each, one future
            first.ingest_events(
                [view(clock, f"L{i}", "/pricing", 2), view(clock, f"L{i}", "/blog", -1)]
            )
            clock.advance(seconds=10)
        first.ingest_events([view(clock, None, "/x", 1, anonymous_id="anon")])  # type: ignore[arg-type]
    finally:
        first.db.dispose()
    store = Store(open_database(db_url), clock=clock, cached_events=2 * 8 + 1)
    try:
        cache = store.event_cache
        # a few leads of 2 events a step, until 15.3 of 17 are filled: 8 leads, whatever the
        # steps' sizes (they adapt to the time a step takes)
        preloader = Preloader(cache, fill=0.9, scan=7, leads=3)
        steps = _preload_all(store, preloader)
        assert steps >= 3 and preloader.done
        assert cache.preloaded == 8 and preloader.events == 16 and cache.cached_events == 16
        assert set(cache._entries) == {f"L{i}" for i in range(4, 12)}  # the newest
        assert not store.preload_step(preloader)  # done for good
        # L11: an event after its future one (extends the list); L9: a late one (read in
        # full); L10: a profile change (the list as it was)
        store.ingest_events([view(clock, "L11", "/docs", -2), view(clock, "L9", "/docs", 30)])
        store.upsert_leads([LeadInput("L10", fields={"title": "VP"})])
        assert (cache.extended, cache.misses, cache.hits) == (1, 1, 1)
        assert_fresh(store, [f"L{i}" for i in range(12)], clock.now)
        assert_matches_per_lead(store, ["L9", "L10", "L11"], clock.now)
    finally:
        store.db.dispose()


def test_preloading_keeps_what_rescoring_kept_and_stops_when_full(
    store: Store, clock: Clock
) -> None:
    publish(store, RT)
    for i in range(5):
        store.ingest_events([view(clock, f"L{i}", "/pricing", 1)])
    store.ingest_events([view(clock, "L4", "/pricing")])
    kept = store.event_cache._entries["L4"]
    preloader = Preloader(store.event_cache)
    _preload_all(store, preloader)
    assert store.event_cache._entries["L4"] is kept  # left as it was
    assert store.event_cache.preloaded == 0  # rescoring had kept every lead already
    full = Preloader(EventCache(0))
    assert full.done and not store.preload_step(full)
