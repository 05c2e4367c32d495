"""PostgreSQL: what a write costs in round trips, and a pooled connection the server closed."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

import leadscore.store.leads as store_leads
from leadscore.engine.timeutil import now_micros
from leadscore.errors import StoreUnavailable
from leadscore.store import EventInput, LeadInput, Store, open_database
from leadscore.store import db as dbmod
from leadscore.store.schema import events, leads
from leadscore.store.triggers import TriggerEngine
from tests.conftest import Clock, sent_statements
from tests.test_store_scoring import assert_matches_per_lead


@pytest.fixture
def pg_store(pg_database: str, clock: Clock) -> Iterator[Store]:
    db = open_database(pg_database, migrate=False)
    with db.engine.begin() as conn:
        from leadscore.store import schema

        names = ", ".join(f'"{t.name}"' for t in schema.metadata.sorted_tables)
        conn.exec_driver_sql(f"TRUNCATE {names} RESTART IDENTITY CASCADE")
    s = Store(db, clock=clock)
    try:
        yield s
    finally:
        s.db.dispose()


def _backend_pids(store: Store) -> set[int]:
    pool = store.db.engine.pool
    assert isinstance(pool, sa.pool.QueuePool)
    with store.db.read() as conn:
        return {int(conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one())}


def test_a_connection_closed_by_the_server_is_replaced_after_idling(
    pg_store: Store, pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    (pid,) = _backend_pids(pg_store)
    admin = sa.create_engine(dbmod.database_url(pg_database), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"SELECT pg_terminate_backend({pid})")
    admin.dispose()
    monkeypatch.setattr(dbmod, "PING_AFTER_IDLE_SECONDS", 0.0)  # as if idle for long
    (again,) = _backend_pids(pg_store)  # no error: the dead connection was tried and replaced
    assert again != pid


def test_a_connection_in_recent_use_is_not_tried(
    pg_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    pings: list[Any] = []
    real = pg_store.db.engine.dialect.do_ping
    monkeypatch.setattr(pg_store.db.engine.dialect, "do_ping", lambda c: pings.append(c) or real(c))
    _backend_pids(pg_store)  # a new connection: not tried either
    _backend_pids(pg_store)
    assert pings == []
    monkeypatch.setattr(dbmod, "PING_AFTER_IDLE_SECONDS", 0.0)
    _backend_pids(pg_store)
    assert len(pings) == 1


SECOND = 1_000_000


def test_an_event_for_a_lead_that_exists_takes_three_round_trips(
    pg_store: Store, pg_database: str, clock: Clock
) -> None:
    """Besides BEGIN and COMMIT: the message ids and the merges asked in one statement;
    the leads locked under a savepoint, the events inserted, the published models and the
    enabled triggers read, then the rescoring's reads (profiles, events, current scores), all
    in one round trip; the rescoring's writes in another. The same in a process that has
    never met the lead."""
    pg_store.ensure_a_model()
    pg_store.ingest_events([EventInput("page_view", clock.now, "L1", message_id="m1")])
    other = Store(open_database(pg_database, migrate=False), clock=clock)
    TriggerEngine.attach(other)
    clock.advance(seconds=1)
    try:
        other.ingest_events([EventInput("page_view", clock.now, "L2")])  # reads the models
        with sent_statements(other, round_trips=True) as sent:
            out = other.ingest_events([EventInput("page_view", clock.now, "L1", message_id="m2")])
    finally:
        other.db.dispose()
    assert [o.status for o in out] == ["accepted"]
    assert len(sent) == 3, sent
    assert "FROM lead_merges" in sent[0] and "FROM events" in sent[0]
    together = sent[1].removeprefix("TOGETHER: ").split(" ; ")
    assert together[0] == "SAVEPOINT leadscore_existing", together
    assert together[1].startswith("SELECT lead_id FROM leads") and "FOR UPDATE" in together[1]
    assert together[2].startswith("INSERT INTO events")
    assert "FROM model_versions" in together[3] and "FROM triggers" in together[3]
    assert together[4].startswith("SELECT lead_id, profile FROM leads")
    assert "FROM events" in together[5] and "FROM scores" in together[6] and len(together) == 7
    assert sent[2].startswith("TOGETHER: UPDATE scores") and "INTO score_history" in sent[2]
    again = pg_store.ingest_events(
        [EventInput("page_view", clock.now, lead_id="L1", message_id="m2")]
    )
    assert [o.status for o in again] == ["duplicate"]
    assert_matches_per_lead(pg_store, ["L1"], clock.now)


# a second sheet reading an event type that the shipped model does not
TRADE_SHOWS = """
version: 1
name: trade-shows
activity:
  - {id: visit, event: trade_show_visit, points: 10}
bands: {cold: -.inf, hot: 50}
mql: hot
"""


def test_rows_read_with_the_locks_for_sheets_since_replaced_are_read_again(
    pg_store: Store, pg_database: str, clock: Clock
) -> None:
    """The rescoring's reads go with the locks for the sheets this process read last; another
    process publishes a model that reads another event type meanwhile: the events are read
    again (the profiles and the current scores, the same statements, are not)."""
    pg_store.ensure_a_model()
    pg_store.ingest_events([EventInput("page_view", clock.now, "L1")])
    clock.advance(seconds=1)
    other = Store(open_database(pg_database, migrate=False), clock=clock)
    try:
        other.ensure_published(TRADE_SHOWS, "trade-shows.yaml")
    finally:
        other.db.dispose()
    with sent_statements(pg_store, round_trips=True) as sent:
        pg_store.ingest_events([EventInput("demo_request", clock.now, "L1")])
    again = [s for s in sent if not s.startswith("TOGETHER") and "FROM events WHERE lead_id" in s]
    assert len(again) == 1 and not any("FROM scores WHERE" in s for s in sent[2:]), sent
    assert_matches_per_lead(pg_store, ["L1"], clock.now)


def test_a_new_lead_among_existing_ones_is_created_and_every_lead_locked_in_order(
    pg_store: Store, clock: Clock
) -> None:
    """One of the leads missing: back to the savepoint (the rows locked so far let go), then
    the way that creates the new lead and locks them all in lead id order."""
    pg_store.ensure_a_model()
    pg_store.ingest_events([EventInput("page_view", clock.now, "L3")])
    with sent_statements(pg_store, round_trips=True) as sent:
        out = pg_store.ingest_events(
            [EventInput("page_view", clock.now, lid) for lid in ("L3", "L1")]
        )
    assert [(o.status, o.lead_id) for o in out] == [("accepted", "L3"), ("accepted", "L1")]
    rollback = sent.index("ROLLBACK TO SAVEPOINT leadscore_existing")
    assert "FOR UPDATE" in sent[rollback - 1]
    after = sent[rollback + 1 :]
    assert after[0].startswith("SAVEPOINT sa_savepoint"), after
    created = next(i for i, s in enumerate(after) if s.startswith("INSERT INTO leads"))
    locked = next(i for i, s in enumerate(after) if "FOR UPDATE" in s)
    assert created < locked and after[locked].count("%(ids_") == 2, after  # both at once
    assert any(s.startswith("RELEASE SAVEPOINT sa_savepoint") for s in after[locked:])
    with pg_store.db.read() as conn:
        ids = conn.execute(sa.select(leads.c.lead_id).order_by("lead_id")).scalars().all()
    assert ids == ["L1", "L3"]


def test_a_lead_merged_away_meanwhile_sends_the_events_to_the_lead_it_became(
    pg_store: Store, pg_database: str, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process merges `m@x.com` into M1 right after this request looked for merges:
    locking finds it gone, and the request goes on with M1 (looked up once it was re-created
    under a savepoint, which is then rolled back)."""
    pg_store.ensure_a_model()
    pg_store.ingest_events([EventInput("demo_request", clock.now - SECOND, email="m@x.com")])
    other = Store(open_database(pg_database, migrate=False), clock=clock)
    real = store_leads._seen_and_moved
    calls: list[dict[str, str]] = []

    def seen_and_moved(conn: Any, message_ids: Any, lead_ids: Any) -> Any:
        found = real(conn, message_ids, lead_ids)
        calls.append(dict(found[1]))
        if len(calls) == 1:  # the merge commits just after this request looked
            other.upsert_leads([LeadInput("M1", "m@x.com")])
        return found

    monkeypatch.setattr(store_leads, "_seen_and_moved", seen_and_moved)
    try:
        out = pg_store.ingest_events([EventInput("email_open", clock.now, lead_id="m@x.com")])
    finally:
        other.db.dispose()
    assert calls == [{}]  # looked once, before the merge
    assert [(o.status, o.lead_id) for o in out] == [("accepted", "M1")]
    with pg_store.db.read() as conn:
        owners = conn.execute(sa.select(events.c.lead_id).distinct()).scalars().all()
        ids = conn.execute(sa.select(leads.c.lead_id)).scalars().all()
    assert (owners, ids) == (["M1"], ["M1"])


def _terminate(pg_database: str, pids: set[int]) -> None:
    admin = sa.create_engine(dbmod.database_url(pg_database), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        for pid in pids:
            conn.exec_driver_sql(f"SELECT pg_terminate_backend({pid})")
    admin.dispose()


def test_one_connection_found_closed_replaces_the_older_ones_too(
    pg_store: Store, pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restart closes every pooled connection: the first one tried after an idle spell
    fails its ping, and the pool replaces the others as well without trying each."""
    engine = pg_store.db.engine
    with engine.connect() as a, engine.connect() as b:  # two connections in the pool
        pids = {int(c.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()) for c in (a, b)}
    _terminate(pg_database, pids)
    pings: list[bool] = []
    real = engine.dialect.do_ping

    def do_ping(c: Any) -> bool:
        try:
            result = bool(real(c))
        except Exception:
            pings.append(False)
            raise
        pings.append(True)
        return result

    monkeypatch.setattr(engine.dialect, "do_ping", do_ping)
    monkeypatch.setattr(dbmod, "PING_AFTER_IDLE_SECONDS", 0.0)
    with engine.connect() as a, engine.connect() as b:
        now = {int(c.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()) for c in (a, b)}
    assert not now & pids
    assert pings.count(False) == 1  # the others: new connections


def test_ingest_runs_again_on_a_new_connection_when_its_own_was_closed(
    pg_store: Store, pg_database: str, clock: Clock
) -> None:
    """The database closes the connection a transaction was about to use (in use a moment
    ago: not tried first): events with message ids are written on a new one; without, the
    request hears that the store could not be reached and that the events may be stored (had
    the commit gone through, a retry without ids would store them twice)."""
    from leadscore.service.writer import write_jobs

    pg_store.ensure_a_model()
    _terminate(pg_database, _backend_pids(pg_store))
    (out,) = write_jobs(pg_store, [[EventInput("page_view", clock.now, "L1", message_id="m1")]])
    assert isinstance(out, list) and [o.status for o in out] == ["accepted"]
    _terminate(pg_database, _backend_pids(pg_store))
    (failed,) = write_jobs(pg_store, [[EventInput("page_view", clock.now, "L1")]])
    assert isinstance(failed, StoreUnavailable)
    assert "the events may or may not be stored" in str(failed)
    with pg_store.db.read() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(events)).scalar_one() == 1


def test_prefetched_rows_are_those_the_statements_read_once_each_inside_the_block(
    pg_store: Store,
) -> None:
    pg_store.upsert_leads([LeadInput("L1", fields={"title": "CTO"}), LeadInput("L2")])
    a = ("SELECT lead_id FROM leads WHERE lead_id = %s", ("L1",))
    b = ("SELECT count(*) FROM leads WHERE lead_id <> %s", ("L1",))
    with pg_store.db.write() as conn:
        with sent_statements(pg_store, round_trips=True) as sent, dbmod.prefetched(conn, [a, b]):
            assert dbmod.driver_rows(conn, *b) == [(1,)]
            conn.exec_driver_sql("DELETE FROM leads WHERE lead_id = 'L2'")
            assert dbmod.driver_rows(conn, *b) == [(0,)]  # asked again: read again
            assert dbmod.driver_rows(conn, *a) == [("L1",)]
        assert len(sent) == 3 and sent[0] == "TOGETHER: " + a[0] + " ; " + b[0], sent
        assert sent[1].startswith("DELETE") and sent[2] == b[0]
        with dbmod.prefetched(conn, [a, b]):
            pass
        with sent_statements(pg_store) as after:
            assert dbmod.driver_rows(conn, *a) == [("L1",)]
        assert after == [a[0]]  # not kept past the block: read again
    with pg_store.db.read() as conn:
        assert dbmod.driver_rows(conn, *b) == [(0,)]


def test_a_prefetched_statement_that_fails_fails_as_sqlalchemy_s_would(pg_store: Store) -> None:
    good = ("SELECT 1 WHERE 1 = %s", (1,))
    bad = ("SELECT 1 / 0 WHERE 1 = %s", (1,))
    with (
        pytest.raises(sa.exc.DBAPIError) as failed,
        pg_store.db.write() as conn,
        dbmod.prefetched(conn, [good, bad]),
    ):
        pass
    assert failed.value.orig.sqlstate == "22012"  # type: ignore[union-attr]
    assert not dbmod.connection_lost(failed.value)
    with pg_store.db.read() as conn:  # the pool's connection is usable again
        assert dbmod.driver_rows(conn, *good) == [(1,)]


def test_a_prefetch_on_a_connection_the_server_closed_reports_it_lost(
    pg_store: Store, pg_database: str
) -> None:
    reads = [("SELECT 1 WHERE 1 = %s", (1,)), ("SELECT 2 WHERE 1 = %s", (1,))]
    with pytest.raises(sa.exc.DBAPIError) as failed, pg_store.db.write() as conn:
        pid = int(conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one())
        _terminate(pg_database, {pid})
        with dbmod.prefetched(conn, reads):
            pass
    assert dbmod.connection_lost(failed.value)
    with pg_store.db.read() as conn:
        assert dbmod.driver_rows(conn, *reads[0]) == [(1,)]


def test_ingest_runs_again_when_the_connection_breaks_while_its_scores_are_written(
    pg_store: Store, pg_database: str, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database closes the connection just as the scores' writes are sent together: the
    request hears nothing of it; its transaction runs again on a new connection (the lost
    connection reported as such, not hidden behind another error on the way out)."""
    from leadscore.service.writer import write_jobs

    pg_store.ensure_a_model()
    write_jobs(pg_store, [[EventInput("page_view", clock.now, "L1", message_id="m0")]])
    real = dbmod._together
    killed: list[int] = []

    def together(conn: Any, todo: Any) -> list[list[Any]]:
        if not killed and any(sql.startswith("UPDATE scores") for sql, *_ in todo):
            killed.append(int(conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()))
            _terminate(pg_database, set(killed))
        return real(conn, todo)

    monkeypatch.setattr(dbmod, "_together", together)
    clock.advance(seconds=1)
    (out,) = write_jobs(pg_store, [[EventInput("page_view", clock.now, "L1", message_id="m1")]])
    assert killed and isinstance(out, list), out
    assert [o.status for o in out] == ["accepted"]
    with pg_store.db.read() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(events)).scalar_one() == 2
    assert_matches_per_lead(pg_store, ["L1"], clock.now)


def test_many_leads_are_locked_first_and_their_events_inserted_after(
    pg_store: Store, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Beyond AHEAD_LEADS leads, the events' insert and the reads wait for the locks (one new
    lead among many would have all of that done twice)."""
    pg_store.ensure_a_model()
    pg_store.ingest_events([EventInput("page_view", clock.now, f"L{i}") for i in range(3)])
    monkeypatch.setattr(store_leads, "AHEAD_LEADS", 2)
    with sent_statements(pg_store, round_trips=True) as sent:
        pg_store.ingest_events([EventInput("page_view", clock.now, f"L{i}") for i in range(3)])
    (locks,) = [s for s in sent if "leadscore_existing" in s]
    assert "INSERT" not in locks and "profile" not in locks, locks
    assert any(s.startswith("INSERT INTO events") for s in sent)
    assert_matches_per_lead(pg_store, ["L0", "L1", "L2"], clock.now)


def test_several_processes_ingesting_new_and_existing_leads_with_merges_lose_nothing(
    pg_store: Store, pg_database: str
) -> None:
    """Four stores (as four ingest processes would) write at once: events for a few of 40
    leads each, half of them existing, the others new (created by whichever comes first),
    and events by email whose leads one of them merges into lead ids. Every acknowledged
    event is stored once, none without its lead, no request fails (no deadlock between the
    locks of existing leads and the creation of new ones), and every score is the per-lead
    evaluator's."""
    pg_store.ensure_a_model()
    pg_store.upsert_leads([LeadInput(f"L{i:02d}") for i in range(0, 40, 2)])
    stores = [Store(open_database(pg_database, migrate=False)) for _ in range(4)]
    accepted = [0] * 4
    errors: list[BaseException] = []

    def work(k: int) -> None:
        rng = random.Random(k)
        s = stores[k]
        try:
            for n in range(60):
                if k == 3 and n % 6 == 0:  # a lead known by email, then merged into an id
                    email = f"m{rng.randrange(10)}@x.com"
                    s.ingest_events([EventInput("page_view", now_micros(), email=email)])
                    s.upsert_leads([LeadInput(f"M{rng.randrange(10)}", email)])
                    continue
                ids = sorted({f"L{rng.randrange(40):02d}" for _ in range(rng.randint(1, 6))})
                out = s.ingest_events(
                    [
                        # half of them without a message id: stored twice, they would show
                        EventInput("page_view", now_micros(), lid, message_id=f"{k}-{n}-{j}")
                        if j % 2
                        else EventInput("page_view", now_micros(), lid)
                        for j, lid in enumerate(ids)
                    ]
                )
                accepted[k] += sum(o.status == "accepted" for o in out)
        except BaseException as e:  # reported below, in the test's thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        for s in stores:
            s.db.dispose()
    assert not errors, errors
    with pg_store.db.read() as conn:
        stored = conn.exec_driver_sql(
            "SELECT count(*) FROM events WHERE lead_id LIKE 'L%%'"
        ).scalar_one()
        orphans = conn.exec_driver_sql(
            "SELECT count(*) FROM events AS e WHERE NOT EXISTS "
            "(SELECT 1 FROM leads AS l WHERE l.lead_id = e.lead_id)"
        ).scalar_one()
        as_of = dict(conn.exec_driver_sql("SELECT lead_id, as_of_us FROM scores").all())
    assert (stored, orphans) == (sum(accepted), 0)
    for lead_id, at in as_of.items():
        assert_matches_per_lead(pg_store, [lead_id], at)
