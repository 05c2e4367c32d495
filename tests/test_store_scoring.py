"""The store's scoring on SQLite and PostgreSQL: real-time rescoring and its history, the batch
``rescore_all`` (decay, windows, inactivity, parity with the per-lead evaluator, leads rescored
while it runs), several sheets, and concurrent ingest."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterable
from typing import Any

import pytest
import sqlalchemy as sa

from leadscore import score_lead
from leadscore.engine.timeutil import from_micros
from leadscore.store import EventInput, LeadInput, Store
from leadscore.store.db import open_database
from leadscore.store.leads import insert_events, lead_events, lead_records, lock_leads
from leadscore.store.queries import lead_view, score_history_of
from leadscore.store.schema import scores
from leadscore.store.scores import HISTORY_MIN_DELTA
from leadscore.store.versions import ModelVersion
from tests.conftest import Clock, sent_statements, watching

DAY = 86_400_000_000
SECOND = 1_000_000

# Fit capped at 40; engagement floored at -20. Grades from fit, bands from the score.
RT = """
version: 1
name: rt
groups:
  fit: {kind: profile, max: 40}
  engagement: {kind: activity, min: -20}
profile:
  - {id: vp, group: fit, if: {field: title, contains: vp}, points: 30}
  - {id: big, group: fit, if: {field: employees, gte: 1000}, points: 20}
activity:
  - {id: demo, group: engagement, event: demo_request, points: 40, frequency: once}
  - id: pricing
    group: engagement
    event: page_view
    where: {field: url, contains: /pricing}
    points: 16
    half_life_days: 10
inactivity:
  - {id: quiet, group: engagement, no_activity_days: 30, points: -10}
grades: {A: 40, B: 20}
bands: {cold: -.inf, warm: 30, hot: 60}
mql: hot
priority:
  A: {hot: A1, warm: A2, cold: A3}
  B: {hot: B1, warm: B2, cold: B3}
"""

# A second sheet scored beside RT: no profile rules, no inactivity.
ALT = """
version: 1
name: alt
activity:
  - {id: demo, event: demo_request, points: 100, frequency: once}
  - {id: pages, event: page_view, points: 5, diminishing: 0.5}
bands: {cold: -.inf, hot: 50}
mql: hot
"""

# Decay (half-life 10 days), a 7-day window and a 14-day inactivity rule on listed types.
DW = """
version: 1
name: dw
activity:
  - id: pricing
    event: page_view
    where: {field: url, contains: /pricing}
    points: 20
    half_life_days: 10
  - {id: opens, event: email_open, points: 5, window_days: 7}
inactivity:
  - {id: quiet, no_activity_days: 14, event: [page_view, email_open], points: -15}
bands: {cold: -.inf, warm: 10, hot: 25}
mql: hot
"""

# Profile values of every JSON type, nested event properties (`a.b` fields), numeric
# operators on event properties, a weighted group, any-type and listed-type inactivity.
PARITY = """
version: 1
name: parity
groups:
  fit: {kind: profile, max: 50}
  engagement: {kind: activity, max: 80, min: -30, weight: 0.5}
profile:
  - {id: size, group: fit, if: {field: employees, between: [200, 5000]}, points: 20}
  - {id: revenue, group: fit, if: {field: revenue, gt: 1.5}, points: 10}
  - {id: customer, group: fit, if: {field: is_customer, eq: "true"}, points: -15}
  - {id: berlin, group: fit, if: {field: address, contains: berlin}, points: 7}
activity:
  - id: pricing
    group: engagement
    event: page_view
    where: {field: context.page.path, starts_with: /pricing}
    points: 12
    half_life_days: 7
  - id: big-order
    group: engagement
    event: order
    where: {all: [{field: amount, gte: 100}, {field: meta.paid, eq: "true"}]}
    points: 30
    frequency: once_per_item
  - {id: pages, group: engagement, event: page_view, points: 4, diminishing: 0.5, window_days: 14}
  - {id: opens, group: engagement, event: email_open, points: 3, window_days: 30, max_points: 9}
inactivity:
  - {id: quiet, group: engagement, no_activity_days: 21, event: [page_view, order], points: -20}
  - {id: silent, group: engagement, no_activity_days: 60, points: -5}
grades: {A: 30, B: 10, C: 0}
bands: {cold: -.inf, warm: 15, hot: 40}
mql: warm
priority:
  A: {hot: A1, warm: A2}
"""

# One point per page view, no decay: every rescoring of a new view changes the score by >= 1.
COUNTER = """
version: 1
name: counter
activity:
  - {id: views, event: page_view, points: 1}
bands: {cold: -.inf, hot: 10}
mql: hot
"""


def publish(store: Store, yaml_text: str) -> None:
    version = store.add_model(yaml_text)
    store.publish(version.name, version.version)


def current(store: Store, lead_id: str, sheet: str) -> dict[str, Any]:
    with store.db.read() as conn:
        score: dict[str, Any] = lead_view(conn, lead_id)["scores"][sheet]
        return score


def history(store: Store, lead_id: str, sheet: str | None = None) -> list[tuple[Any, ...]]:
    """(reason, old_score, new_score) per history row, newest first."""
    with store.db.read() as conn:
        rows = score_history_of(conn, lead_id, sheet, limit=1000)
    return [(r["reason"], r["old_score"], r["new_score"]) for r in rows]


def close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-9


def assert_matches_per_lead(store: Store, lead_ids: Iterable[str], as_of_us: int) -> None:
    """Every stored score equals the per-lead evaluator on the lead's stored profile and all its
    stored events (future ones included: the evaluator must leave them out) as of
    ``as_of_us``, to 1e-9."""
    ids = list(lead_ids)
    models = {s.name: s.model for s in store.sheets()}
    with store.db.read() as conn:
        records = lead_records(conn, ids)
        for lead_id in ids:
            evs = lead_events(conn, lead_id)
            stored = lead_view(conn, lead_id)["scores"]
            assert set(stored) == set(models), lead_id
            for name, model in models.items():
                r = score_lead(model, records[lead_id], evs, from_micros(as_of_us), explain=False)
                s = stored[name]
                where = f"{lead_id!r} on {name}"
                assert s["as_of_us"] == as_of_us, where
                assert close(s["score"], r.score), (where, s["score"], r.score)
                assert close(s["fit"], r.fit), (where, s["fit"], r.fit)
                assert close(s["engagement"], r.engagement), (where, s["engagement"], r.engagement)
                assert (s["grade"], s["band"], s["mql"], s["priority"]) == (
                    r.grade,
                    r.band,
                    r.mql,
                    r.priority,
                ), where
                assert s["groups"].keys() == {g.group_id for g in r.groups}, where
                for g in r.groups:
                    assert close(s["groups"][g.group_id], g.points), (where, g.group_id)


# --- real-time rescoring ------------------------------------------------------------------------


def test_events_and_profile_updates_rescore_and_append_history(store: Store, clock: Clock) -> None:
    """Model RT, everything at T0 unless said:

    1. profile {title: VP Sales}: fit vp 30 (grade B: 20 <= 30 < 40); no events, so quiet -10:
       score 20, cold, priority B3. History: profile None -> 20.
    2. demo_request a day ago: demo 40, quiet 0: engagement 40, score 70, hot, MQL, B1.
    3. profile employees 5000: big 20, fit 50 clipped to 40 (grade A): score 80, A1.
    4. a /pricing view now: pricing 16 (age 0): 96.
    5. a minute later an email_open (no rule reads it): pricing decays to
       16 * 0.5^((1/1440)/10), 0.00077 less: under HISTORY_MIN_DELTA with the same band, grade
       and MQL flag, so the current score moves and the history does not.
    6. ten days and a minute after the view, rescore_all: pricing 16 * 0.5^(1 + 1/14400)
       = 7.99962, score 87.99962 (still hot): history decay, from the silently updated
       95.99923, not from the 96 the history last recorded.
    """
    publish(store, RT)
    t0 = clock.now
    store.upsert_leads([LeadInput("L1", fields={"title": "VP Sales"})])
    s = current(store, "L1", "rt")
    assert (s["score"], s["fit"], s["engagement"]) == (20.0, 30.0, -10.0)
    assert (s["grade"], s["band"], s["mql"], s["priority"]) == ("B", "cold", False, "B3")

    store.ingest_events([EventInput("demo_request", t0 - DAY, "L1", message_id="d1")])
    s = current(store, "L1", "rt")
    assert (s["score"], s["band"], s["mql"], s["priority"]) == (70.0, "hot", True, "B1")

    store.upsert_leads([LeadInput("L1", fields={"employees": 5000})])
    s = current(store, "L1", "rt")
    assert (s["score"], s["fit"], s["grade"], s["priority"]) == (80.0, 40.0, "A", "A1")

    store.ingest_events([EventInput("page_view", t0, "L1", properties={"url": "/pricing"})])
    assert current(store, "L1", "rt")["score"] == 96.0

    with store.db.read() as conn:
        rows = score_history_of(conn, "L1")
    assert [
        (
            r["reason"],
            r["old_score"],
            r["new_score"],
            r["old_band"],
            r["new_band"],
            r["old_grade"],
            r["new_grade"],
            r["old_mql"],
            r["new_mql"],
            r["sheet"],
            r["as_of_us"],
        )
        for r in rows
    ] == [
        ("event", 80.0, 96.0, "hot", "hot", "A", "A", True, True, "rt", t0),
        ("profile", 70.0, 80.0, "hot", "hot", "B", "A", True, True, "rt", t0),
        ("event", 20.0, 70.0, "cold", "hot", "B", "B", False, True, "rt", t0),
        ("profile", None, 20.0, None, "cold", None, "B", None, False, "rt", t0),
    ]

    clock.advance(seconds=60)
    store.ingest_events([EventInput("email_open", clock.now, "L1")])
    minute_later = 80 + 16 * 0.5 ** ((60 * SECOND / DAY) / 10)
    assert 0 < 96 - minute_later < HISTORY_MIN_DELTA
    s = current(store, "L1", "rt")
    assert close(s["score"], minute_later)
    assert s["as_of_us"] == clock.now
    assert len(history(store, "L1")) == 4

    clock.advance(days=10)
    report = store.rescore_all()
    assert (report.reason, report.leads, report.changed, report.skipped) == ("decay", 1, 1, 0)
    decayed = 80 + 16 * 0.5 ** (((10 * DAY + 60 * SECOND) / DAY) / 10)
    reason, old, new = history(store, "L1")[0]
    assert reason == "decay"
    assert close(old, minute_later) and close(new, decayed)
    assert round(decayed, 4) == 87.9996
    assert_matches_per_lead(store, ["L1"], clock.now)


def test_one_transaction_updates_each_lead_with_what_changed_for_it(
    store: Store, clock: Clock
) -> None:
    """Three VP leads with an email open (score 30, warm). One ingest rescores L1 (a view:
    score and engagement move, band and grade stay), L2 (a demo: also band, MQL flag and
    priority) and L3 (another open, which no rule reads: only the time of the score). Each
    lead's row ends equal to the per-lead evaluator. On SQLite the UPDATEs set the columns
    that changed, not fit or grade, whose indexes would be rewritten for nothing; on
    PostgreSQL, which leaves the indexes alone when a value stays the same, one UPDATE sets
    every column of each row."""
    publish(store, RT)
    t0 = clock.now
    store.upsert_leads([LeadInput(f"L{i}", fields={"title": "VP Sales"}) for i in (1, 2, 3)])
    store.ingest_events([EventInput("email_open", t0, f"L{i}") for i in (1, 2, 3)])
    clock.advance(seconds=60)
    sets: list[str] = []

    with sent_statements(store) as sent:
        store.ingest_events(
            [
                EventInput("page_view", t0, "L1", properties={"url": "/pricing"}),
                EventInput("demo_request", t0, "L2"),
                EventInput("email_open", t0, "L3"),
            ]
        )
    for statement in sent:
        if statement.lstrip().upper().startswith("UPDATE SCORES"):
            sets.append(statement.split("SET", 1)[1].split("WHERE", 1)[0])
    assert_matches_per_lead(store, ["L1", "L2", "L3"], clock.now)
    assert [round(current(store, f"L{i}", "rt")["score"], 2) for i in (1, 2, 3)] == [46, 70, 30]
    assert [current(store, f"L{i}", "rt")["band"] for i in (1, 2, 3)] == ["warm", "hot", "warm"]
    columns = [{c.split("=")[0].strip() for c in s.split(",")} for s in sets]
    if not store.db.is_sqlite:
        assert len(sets) == 1 and {"fit", "grade", "band", "score", "groups"} <= columns[0]
        return
    assert len(sets) == 3  # one statement per set of changed columns
    assert {"as_of_us", "updated_us"} == set.intersection(*columns)
    assert all("fit" not in c and "grade" not in c for c in columns), sets
    assert {"score", "engagement", "groups"} <= set.union(*columns)
    assert any({"band", "mql", "priority"} <= c for c in columns), sets


def test_two_sheets_are_scored_side_by_side(store: Store, clock: Clock) -> None:
    """RT and ALT both active; lead M1 (title VP) then a demo, a /pricing and a /blog view now:

    rt:  profile: fit 30, quiet -10 = 20; events: 30 + demo 40 + pricing 16 = 86 (hot).
    alt: profile: 0 (cold); events: demo 100 + pages 5 + 5 * 0.5 = 107.5 (hot).
    Ten days later rescore_all: rt's pricing halves (78); alt has no decay, so only rt records
    a change.
    """
    publish(store, RT)
    publish(store, ALT)
    t0 = clock.now
    store.upsert_leads([LeadInput("M1", fields={"title": "VP Marketing"})])
    store.ingest_events(
        [
            EventInput("demo_request", t0, "M1"),
            EventInput("page_view", t0 - SECOND, "M1", properties={"url": "/blog"}),
            EventInput("page_view", t0, "M1", properties={"url": "/pricing"}),
        ]
    )
    assert current(store, "M1", "rt")["score"] == 86.0
    assert current(store, "M1", "alt")["score"] == 107.5
    assert history(store, "M1", "rt") == [("event", 20.0, 86.0), ("profile", None, 20.0)]
    assert history(store, "M1", "alt") == [("event", 0.0, 107.5), ("profile", None, 0.0)]
    assert len(history(store, "M1")) == 4

    clock.advance(days=10)
    report = store.rescore_all()
    assert (report.leads, report.changed, report.per_sheet) == (1, 1, {"rt": 1})
    reason, old, new = history(store, "M1", "rt")[0]
    assert (reason, old, new) == ("decay", 86.0, 78.0)
    assert history(store, "M1", "alt")[0] == ("event", 0.0, 107.5)
    assert_matches_per_lead(store, ["M1"], clock.now)


def test_a_model_another_process_publishes_scores_the_next_event(
    store: Store, clock: Clock, db_url: str
) -> None:
    """Two stores on one database, as the server and its ingest process are. The other has
    just read the active sheets (RT, its demo worth 40) when this one publishes RT with the
    demo worth 45; the other's next event scores with the new version (30 + 45 - 0 = 75 as
    VP + demo), although its cached sheets are younger than SHEETS_TTL."""
    publish(store, RT)
    other = Store(open_database(db_url), clock=clock)
    try:
        assert [s.version.version for s in other.sheets()] == [1]
        store.upsert_leads([LeadInput("P1", fields={"title": "VP Sales"})])
        publish(store, RT.replace("points: 40, frequency: once", "points: 45, frequency: once"))
        other.ingest_events([EventInput("demo_request", clock.now, "P1")])
        with store.db.read() as conn:
            row = conn.execute(
                sa.select(scores.c.score, scores.c.model_version_id).where(scores.c.lead_id == "P1")
            ).one()
        assert row.score == 75.0
        assert row.model_version_id == store.sheets()[0].version.id
    finally:
        other.db.dispose()


def test_a_score_written_with_the_replaced_model_during_a_publish_is_rescored(
    store: Store, clock: Clock, db_url: str
) -> None:
    """While the publish of RT with the demo worth 45 rescores every lead, another process
    that read the active versions just before the publish committed (PostgreSQL's read
    committed allows it) rescores R1 with version 1 (VP 30 + demo 40 = 70). The batch must
    not keep that row as "rescored meanwhile": R1 ends on version 2 with 30 + 45 = 75, a
    change the publish counts."""
    publish(store, RT)
    store.upsert_leads([LeadInput("R1", fields={"title": "VP Sales"})])
    store.ingest_events([EventInput("demo_request", clock.now, "R1")])
    other = Store(open_database(db_url), clock=clock)
    stale = other.sheets()
    other.sheets = lambda conn=None, *, check=False: stale  # type: ignore[method-assign]
    draft = store.add_model(
        RT.replace("points: 40, frequency: once", "points: 45, frequency: once")
    )

    def meanwhile(what: str, done: int, total: int) -> None:
        if what == "scoring" and done == 0:
            clock.advance(seconds=1)
            with other.db.write() as conn:
                other.rescore_leads(conn, ["R1"], "event", clock.now)

    try:
        report = store.publish(draft.name, draft.version, progress=meanwhile)
        with store.db.read() as conn:
            row = conn.execute(
                sa.select(scores.c.score, scores.c.model_version_id).where(scores.c.lead_id == "R1")
            ).one()
    finally:
        other.db.dispose()
    assert row.model_version_id == store.sheets()[0].version.id
    assert row.score == 75.0
    assert (report.leads, report.changed, report.skipped) == (1, 1, 0)


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_an_event_committed_while_ingest_waits_for_the_lead_counts_in_its_score(
    store: Store, clock: Clock, db_url: str
) -> None:
    """Two writers at once on PostgreSQL (two ingest processes): this one reads the clock
    (T) and waits for L1's lock, held by the other, which stores a demo request stamped T + 1 s
    and commits. Scored as of T, L1 would lose that demo (and its score would go back in
    time); scored as of the clock once the lock is this one's, both events count."""
    publish(store, RT)
    store.upsert_leads([LeadInput("L1", fields={"title": "VP Sales"})])
    other = Store(open_database(db_url), clock=clock)
    holding, waiting = threading.Event(), threading.Event()

    def hold_then_write_here() -> None:
        with other.db.write() as conn:
            lock_leads(conn, ["L1"])
            holding.set()
            waiting.wait(10)
            time.sleep(0.3)
            clock.advance(seconds=1)
            now = clock.now
            _, touched = insert_events(
                conn, [EventInput("demo_request", now, "L1", message_id="other")], now
            )
            other.rescore_leads(conn, touched, "event", now)

    thread = threading.Thread(target=hold_then_write_here)
    try:
        thread.start()
        assert holding.wait(10)
        waiting.set()
        store.ingest_events([EventInput("page_view", clock.now, "L1", message_id="mine")])
        thread.join(10)
        with store.db.read() as conn:
            row = conn.execute(
                sa.select(scores.c.score, scores.c.as_of_us).where(scores.c.lead_id == "L1")
            ).one()
            events = lead_events(conn, "L1", None)
    finally:
        thread.join(10)
        other.db.dispose()
    assert {e.event_id for e in events} >= {"mine", "other"}
    assert row.as_of_us == clock.now  # not T
    assert row.score == 70.0  # VP 30 + demo 40


def test_future_events_count_from_their_time_on(store: Store, clock: Clock) -> None:
    """RT: a demo request stamped two days ahead does not exist yet: F1 scores quiet -10 only
    (no visible event: inactive). Two days later rescore_all sees it: demo 40, quiet 0 (an
    event at exactly T is inside the 30 days): 40, warm."""
    publish(store, RT)
    t0 = clock.now
    out = store.ingest_events([EventInput("demo_request", t0 + 2 * DAY, "F1")])
    assert out[0].status == "accepted"
    s = current(store, "F1", "rt")
    assert (s["score"], s["band"], s["grade"]) == (-10.0, "cold", "F")
    assert_matches_per_lead(store, ["F1"], t0)

    clock.advance(days=1)
    store.rescore_all()
    assert current(store, "F1", "rt")["score"] == -10.0
    assert history(store, "F1") == [("event", None, -10.0)]

    clock.advance(days=1)
    report = store.rescore_all()
    assert report.changed == 1
    assert history(store, "F1")[0] == ("decay", -10.0, 40.0)
    assert current(store, "F1", "rt")["band"] == "warm"
    assert_matches_per_lead(store, ["F1"], clock.now)


# --- rescore_all --------------------------------------------------------------------------------


def test_rescore_all_records_decay_windows_and_inactivity(store: Store, clock: Clock) -> None:
    """DW. D1 views /pricing and opens an email at T0: 20 + 5 = 25, hot (MQL).
    D2 has no events: quiet -15, cold.

    +10 days: pricing 20 * 0.5 = 10; the open is outside the 7-day window; the last activity
    (10 days) is inside 14 days: 10, warm, no longer an MQL. D2 stays -15: no history.
    +20 days: pricing 5; quiet -15 (no activity for 20 days): -10, cold.
    A minute later: pricing moves by 5 * (1 - 0.5^(1/14400)) ~ 0.00024: no history.
    """
    publish(store, DW)
    t0 = clock.now
    store.upsert_leads([LeadInput("D2")])
    store.ingest_events(
        [
            EventInput("page_view", t0, "D1", properties={"url": "/pricing"}),
            EventInput("email_open", t0, "D1", item="cmp-1"),
        ]
    )
    assert current(store, "D1", "dw")["score"] == 25.0
    assert current(store, "D2", "dw")["score"] == -15.0

    clock.advance(days=10)
    report = store.rescore_all()
    assert (report.leads, report.changed, report.skipped) == (2, 1, 0)
    with store.db.read() as conn:
        newest = score_history_of(conn, "D1")[0]
    assert (newest["reason"], newest["old_score"], newest["new_score"]) == ("decay", 25.0, 10.0)
    assert (newest["old_band"], newest["new_band"]) == ("hot", "warm")
    assert (newest["old_mql"], newest["new_mql"]) == (True, False)
    assert newest["as_of_us"] == clock.now
    assert history(store, "D2") == [("profile", None, -15.0)]
    assert_matches_per_lead(store, ["D1", "D2"], clock.now)

    clock.advance(days=10)
    report = store.rescore_all()
    assert report.changed == 1
    assert history(store, "D1")[0] == ("decay", 10.0, -10.0)
    assert current(store, "D1", "dw")["band"] == "cold"
    assert_matches_per_lead(store, ["D1", "D2"], clock.now)

    clock.advance(seconds=60)
    report = store.rescore_all()
    assert report.changed == 0
    assert len(history(store, "D1")) == 3
    assert current(store, "D1", "dw")["as_of_us"] == clock.now
    assert_matches_per_lead(store, ["D1", "D2"], clock.now)


def _parity_events(rng: random.Random, lead_id: str, t0: int) -> list[EventInput]:
    out = []
    for n in range(rng.randrange(0, 9)):
        etype = rng.choice(["page_view", "page_view", "order", "email_open", "webinar"])
        ts = t0 - rng.randrange(0, 40 * DAY) + (rng.randrange(0, 10 * DAY) if n == 0 else 0)
        props: dict[str, Any] = {}
        if etype == "page_view":
            path = rng.choice(["/pricing", "/pricing/teams", "/blog", " /pricing", "/docs"])
            props = {"context": {"page": {"path": path, "depth": rng.randrange(1, 4)}}}
        elif etype == "order":
            props = {
                "amount": rng.choice([50, 99.5, 100, 250.75, "120", "n/a", 1e3]),
                "meta": {"paid": rng.choice([True, False, "true", None])},
            }
        item = rng.choice([None, "o1", "o2", " o1"]) if etype == "order" else None
        out.append(EventInput(etype, ts, lead_id, item=item, properties=props))
    return out


def test_rescore_all_equals_the_per_lead_evaluator(store: Store, clock: Clock) -> None:
    """PARITY, scored by the batch as of A = T0 + 7 days.

    P1, profile {employees: 1200 (a number), revenue: 2.25, is_customer: false (a boolean),
    address: {city: Berlin} (an object)}: size 20 + revenue 10 + berlin 7 = fit 37 (grade A);
    customer is "false", not "true".
    Its events (ages as of A):
      page views: /pricing/teams at 7 days (context.page.path), /docs at 10, /blog at 17:
        pricing 12 * 0.5^(7/7) = 6; pages (14-day window) 4 + 4 * 0.5 = 6
      orders: o1 at 8 days (250, paid) and at 12 (120, paid): once per item: 30;
        o2 (99.5, paid) and o3 (500, not paid) do not match
      four opens at 8-11 days: 4 * 3 = 12, capped at 9
      quiet and silent: active.
    engagement (51 inside [-30, 80]) * 0.5 = 25.5; score 62.5: hot, MQL (warm or above), A1.
    P2, profile {employees: "300" (text), revenue: 1, is_customer: true}, no events:
      size 20 - customer 15 = fit 5 (grade C); quiet -20 + silent -5 = -25, * 0.5 = -12.5;
      score -7.5, cold, no priority (no C row).
    Twenty random leads (numbers, booleans, objects, text that is not a number, padded values,
    nested properties, future events) must agree with the per-lead evaluator to 1e-9.
    """
    publish(store, PARITY)
    t0 = clock.now
    rng = random.Random(20260630)
    profiles = [
        LeadInput(
            "P1",
            fields={
                "employees": 1200,
                "revenue": 2.25,
                "is_customer": False,
                "address": {"city": "Berlin"},
            },
        ),
        LeadInput("P2", fields={"employees": "300", "revenue": 1, "is_customer": True}),
    ]
    for i in range(20):
        fields: dict[str, Any] = {
            "employees": rng.choice([150, 200, 1200.0, "4999", " 300 ", "many", 5000.5, None]),
            "revenue": rng.choice([1.5, 1.5000001, 2, "3", True, None]),
            "is_customer": rng.choice([True, False, "true", "TRUE", None]),
            "address": rng.choice([{"city": "Berlin"}, "Berlin, DE", ["berlin"], None]),
        }
        profiles.append(LeadInput(f"R{i:02d}", fields=fields))
    store.upsert_leads(profiles)
    p1 = [
        EventInput(
            "page_view",
            t0,
            "P1",
            properties={"context": {"page": {"path": "/pricing/teams"}}},
        ),
        EventInput(
            "page_view", t0 - 3 * DAY, "P1", properties={"context": {"page": {"path": "/docs"}}}
        ),
        EventInput(
            "page_view", t0 - 10 * DAY, "P1", properties={"context": {"page": {"path": "/blog"}}}
        ),
        EventInput(
            "order", t0 - DAY, "P1", item="o1", properties={"amount": 250, "meta": {"paid": True}}
        ),
        EventInput(
            "order",
            t0 - 5 * DAY,
            "P1",
            item="o1",
            properties={"amount": 120, "meta": {"paid": True}},
        ),
        EventInput(
            "order",
            t0 - 2 * DAY,
            "P1",
            item="o2",
            properties={"amount": 99.5, "meta": {"paid": True}},
        ),
        EventInput(
            "order", t0 - DAY, "P1", item="o3", properties={"amount": 500, "meta": {"paid": False}}
        ),
    ] + [EventInput("email_open", t0 - d * DAY, "P1") for d in (1, 2, 3, 4)]
    randoms = [e for i in range(20) for e in _parity_events(rng, f"R{i:02d}", t0)]
    store.ingest_events(p1 + randoms)

    clock.advance(days=7)
    report = store.rescore_all()
    assert (report.leads, report.skipped) == (22, 0)
    p1_score = current(store, "P1", "parity")
    assert (p1_score["fit"], p1_score["engagement"], p1_score["score"]) == (37.0, 25.5, 62.5)
    assert p1_score["groups"] == {"fit": 37.0, "engagement": 25.5}
    assert (p1_score["grade"], p1_score["band"], p1_score["mql"], p1_score["priority"]) == (
        "A",
        "hot",
        True,
        "A1",
    )
    p2_score = current(store, "P2", "parity")
    assert (p2_score["fit"], p2_score["engagement"], p2_score["score"]) == (5.0, -12.5, -7.5)
    assert (p2_score["grade"], p2_score["band"], p2_score["priority"]) == ("C", "cold", None)
    assert_matches_per_lead(store, [p.lead_id or "" for p in profiles], clock.now)


def test_rescore_all_keeps_lead_ids_exactly_as_stored(store: Store, clock: Clock) -> None:
    """'L1' and ' L1' are two leads of the store: the batch must score each under its own id
    (not trim one onto the other). DW, a day later: L1 pricing 20 * 0.5^(1/10) = 18.66;
    ' L1' an open 5."""
    publish(store, DW)
    store.ingest_events(
        [
            EventInput("page_view", clock.now, "L1", properties={"url": "/pricing"}),
            EventInput("email_open", clock.now, " L1"),
        ]
    )
    clock.advance(days=1)
    report = store.rescore_all()
    assert report.leads == 2
    assert current(store, " L1", "dw")["score"] == 5.0
    assert close(current(store, "L1", "dw")["score"], 20 * 0.5**0.1)
    with store.db.read() as conn:
        ids = sorted(i for (i,) in conn.execute(sa.select(scores.c.lead_id)))
    assert ids == [" L1", "L1"]
    assert_matches_per_lead(store, ["L1", " L1"], clock.now)


def test_rescore_all_tells_fields_apart_by_case(store: Store, clock: Clock) -> None:
    """Profiles with `Region` and `region`, events with `item` and a property `Item`: the
    batch (DuckDB, which matches names ignoring case) scores what the per-lead evaluator does.
    A day later: C1 Region north 10 + a view of item a 2 = 12; C2 region north 3 + a view
    whose Item is a 7 = 10."""
    publish(
        store,
        """
version: 1
name: cased
profile:
  - {id: North, if: {field: Region, eq: north}, points: 10}
  - {id: north, if: {field: region, eq: north}, points: 3}
activity:
  - {id: Pv, event: page_view, where: {field: Item, eq: a}, points: 7}
  - {id: pv, event: page_view, where: {field: item, eq: a}, points: 2}
""",
    )
    store.upsert_leads(
        [
            LeadInput("C1", fields={"Region": "north", "region": "south"}),
            LeadInput("C2", fields={"Region": "south", "region": "north"}),
        ]
    )
    store.ingest_events(
        [
            EventInput("page_view", clock.now, "C1", item="a", properties={"Item": "b"}),
            EventInput("page_view", clock.now, "C2", item="b", properties={"Item": "a"}),
        ]
    )
    clock.advance(days=1)
    store.rescore_all()
    assert current(store, "C1", "cased")["score"] == 12.0
    assert current(store, "C2", "cased")["score"] == 10.0
    assert_matches_per_lead(store, ["C1", "C2"], clock.now)


def test_rescore_all_reads_the_leads_in_parts(store: Store, clock: Clock) -> None:
    """A full rescoring reads and scores ``part`` leads at a time, in lead id order (ids
    whose order differs between byte and collation order included), each part as of when it
    is read: every lead rescored once. Leads created meanwhile are rescored when their ids
    come after the parts done (one before them was scored when created); an event stored
    meanwhile for a lead of a later part is not left out (it would be, scored as of the
    start: DW, z@x.com's open a second after it). The progress counts leads."""
    publish(store, DW)
    ids = ["a", "B", "L10", "L2", " L1", "L1", "é", "z@x.com", "Z"]
    store.ingest_events(
        [EventInput("page_view", clock.now, i, properties={"url": "/pricing"}) for i in ids]
        + [EventInput("email_open", clock.now - DAY, i) for i in ids[::2]]
    )
    clock.advance(days=3)
    start = clock.now
    seen: dict[str, tuple[int, int]] = {}
    parts = 0

    def progress(what: str, done: int, total: int) -> None:
        nonlocal parts
        seen[what] = (done, total)
        if what == "writing scores":
            parts += 1
            if parts == 1:  # ids before and after the parts done; an open for z@x.com
                clock.advance(seconds=1)
                store.ingest_events(
                    [EventInput("email_open", clock.now, i) for i in ("0", "z@x.com", "zz", "zzz")]
                )

    report = store.rescore_all(progress=progress, part=2)
    assert report.leads == len(ids) + 2  # not "0"
    assert parts == 6
    # counted against the 9 leads there were at the start, then the 11 done
    assert seen == {
        "reading leads and events": (11, 11),
        "scoring": (11, 11),
        "writing scores": (11, 11),
    }
    for lid in [*ids, "0", "zz", "zzz"]:
        as_of = current(store, lid, "dw")["as_of_us"]
        assert as_of in (start, start + SECOND), lid
        assert_matches_per_lead(store, [lid], as_of)
    assert current(store, "z@x.com", "dw")["as_of_us"] == start + SECOND
    assert close(
        current(store, "z@x.com", "dw")["score"], 20 * 0.5 ** ((3 * DAY + SECOND) / DAY / 10) + 5
    )


def six_pricing_views_and_a_draft(store: Store, clock: Clock) -> tuple[list[str], ModelVersion]:
    """DW published; L0 to L5 view /pricing now; a day later, a draft of DW with the pricing
    view worth 30 (not 20). The leads' ids and the draft."""
    publish(store, DW)
    ids = [f"L{i}" for i in range(6)]
    store.ingest_events(
        [EventInput("page_view", clock.now, i, properties={"url": "/pricing"}) for i in ids]
    )
    clock.advance(days=1)
    return ids, store.add_model(DW.replace("points: 20", "points: 30"))


def test_a_publish_during_a_rescoring_in_parts_is_not_undone(store: Store, clock: Clock) -> None:
    """DW is published anew (pricing worth 30) after the first part of a rescoring in parts
    of 2 was written; its own rescoring writes every lead's score with it. The parts after
    that must leave the sheet alone: written with the replaced model, the new scores would
    look like the run's own (they were there before the part was read) and be overwritten."""
    ids, draft = six_pricing_views_and_a_draft(store, clock)
    parts = 0

    def progress(what: str, done: int, total: int) -> None:
        nonlocal parts
        if what == "writing scores":
            parts += 1
            if parts == 1:
                store.publish(draft.name, draft.version)

    report = store.rescore_all(progress=progress, part=2)
    assert report.leads == 2
    new = store.sheets()[0].version.id
    with store.db.read() as conn:
        versions = dict(conn.execute(sa.select(scores.c.lead_id, scores.c.model_version_id)).all())
    assert versions == dict.fromkeys(ids, new)
    assert_matches_per_lead(store, ids, clock.now)
    assert close(current(store, "L5", "dw")["score"], 30 * 0.5**0.1)


def test_a_publish_while_a_scheduled_rescoring_writes_counts_every_change(
    store: Store, clock: Clock
) -> None:
    """DW; six leads viewed /pricing (20 points, half-life 10 days). A day later a scheduled
    rescoring has read and scored every lead with version 1 when DW is published anew
    (pricing worth 30); the publish reads and scores them too, and only then does the
    scheduled run write. It must not write version 1's scores over a sheet published since
    it began (the publish would find them "rescored meanwhile" and redo them uncounted:
    `changed: 0`). So the publish reports six changes, none kept, and each lead's newest
    history row is the model change 20 -> 30 * 0.5^0.1 (no decay row of version 1 is written
    after the publish began)."""
    ids, draft = six_pricing_views_and_a_draft(store, clock)
    scheduled_scored, publish_scored, scheduled_done = (threading.Event() for _ in range(3))
    reports: list[Any] = []

    def scheduled_waits(what: str, done: int, total: int) -> None:
        if what == "scoring" and done:
            scheduled_scored.set()
            assert publish_scored.wait(20)

    def scheduled() -> None:
        try:
            reports.append(store.rescore_all("decay", progress=scheduled_waits))
        finally:
            scheduled_done.set()

    def publish_waits(what: str, done: int, total: int) -> None:
        if what == "scoring" and done:
            publish_scored.set()
            assert scheduled_done.wait(20)

    running = threading.Thread(target=scheduled)
    running.start()
    try:
        assert scheduled_scored.wait(20)
        report = store.publish(draft.name, draft.version, progress=publish_waits)
    finally:
        publish_scored.set()
        running.join(20)
    assert (report.leads, report.changed, report.skipped, report.per_sheet) == (6, 6, 0, {"dw": 6})
    assert [(r.leads, r.changed) for r in reports] == [(6, 0)]
    for i in ids:
        (reason, old, new), *_ = history(store, i)
        assert reason == "model change"
        assert old == 20.0 and close(new, 30 * 0.5**0.1)
    assert_matches_per_lead(store, ids, clock.now)


def test_a_publish_whose_rescoring_stops_is_finished_by_the_next_rescoring(
    store: Store, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DW published anew (pricing worth 30); its rescoring (in parts of 2) fails after the
    first part. The error says the version is active and what that leaves: 4 of 6 leads keep
    the replaced version's scores. The next (decay) rescoring brings them over, recorded as
    model change (as the publish would have), so that the triggers on decay do not fire on a
    re-baseline."""
    ids, draft = six_pricing_views_and_a_draft(store, clock)
    old = store.sheets()[0].version.id
    whole = store.rescore_all
    monkeypatch.setattr(store, "rescore_all", lambda *a, **k: whole(*a, **k, part=2))
    parts = 0

    def failing(what: str, done: int, total: int) -> None:
        nonlocal parts
        if what == "writing scores" and done:
            parts += 1
            if parts == 1:
                raise sa.exc.OperationalError("UPDATE", {}, Exception("database or disk is full"))

    with pytest.raises(sa.exc.OperationalError) as raised:
        store.publish(draft.name, draft.version, progress=failing)
    assert raised.value.__notes__ == [
        "dw version 2 is active, but its rescoring stopped part way: the leads it did not reach "
        "keep their scores of the version before until the next rescoring of every lead "
        "(`leadscore rescore`, POST /api/v1/rescore, the server's schedule, or its start with "
        "the schedule on) brings them over, recorded as model change"
    ]
    new = store.sheets()[0].version.id
    assert new != old
    assert store.replaced_scores() == store.replaced_scores("dw") == 4
    assert store.replaced_scores("other") == 0
    with store.db.read() as conn:
        versions = dict(conn.execute(sa.select(scores.c.lead_id, scores.c.model_version_id)).all())
    assert versions == {"L0": new, "L1": new} | dict.fromkeys(ids[2:], old)

    changes: list[Any] = []
    store.listener = lambda conn, c, now, fire: changes.extend(c)
    report = store.rescore_all("profile")  # as an import's rescoring: any reason alike
    assert (report.leads, report.changed) == (6, 4)
    assert {(c.lead_id, c.reason) for c in changes} == {(i, "model change") for i in ids[2:]}
    assert store.replaced_scores() == 0
    for i in ids:
        assert history(store, i)[0][0] == "model change"
    assert_matches_per_lead(store, ids, clock.now)
    assert close(current(store, "L5", "dw")["score"], 30 * 0.5**0.1)


@pytest.mark.parametrize("n", [2, 3])
def test_rescore_all_reads_a_store_of_one_part_whole(store: Store, clock: Clock, n: int) -> None:
    """Up to ``part`` leads (here 3): read in one go, in the tables' order (no range of lead
    ids); one more, in parts of lead id ranges."""
    publish(store, DW)
    ids = [f"L{i}" for i in range(n + 1)]
    store.ingest_events([EventInput("email_open", clock.now, i) for i in ids])
    clock.advance(days=1)
    with sent_statements(store) as sent:
        report = store.rescore_all(part=3)
    assert report.leads == n + 1
    reads = [q for q in sent if "FROM events" in q and "properties" in q]
    assert len(reads) == (1 if n + 1 <= 3 else 2)
    assert all(("lead_id <=" in q) == (n + 1 > 3) for q in reads), reads
    assert_matches_per_lead(store, ids, clock.now)


def test_rescore_all_skips_leads_rescored_in_real_time_after_it_started(
    store: Store, clock: Clock
) -> None:
    """DW; S1 and S2 view /pricing at T0. Ten days later rescore_all starts; after it has read
    every lead (the "scoring" step), one second later, S2 opens an email and is rescored in
    real time: pricing 20 * 0.5^((10 days + 1 s)/10 days) + open 5 ~ 15.0. The batch's value
    for S2 (10, as of the start) is older and must not overwrite it; S1 gets the batch's 10."""
    publish(store, DW)
    t0 = clock.now
    store.ingest_events(
        [
            EventInput("page_view", t0, "S1", properties={"url": "/pricing"}),
            EventInput("page_view", t0, "S2", properties={"url": "/pricing"}),
        ]
    )
    clock.advance(days=10)
    start = clock.now
    steps: list[str] = []

    def progress(what: str, done: int, total: int) -> None:
        steps.append(what)
        if what == "scoring" and done:  # the leads read and scored, not written
            clock.advance(seconds=1)
            store.ingest_events([EventInput("email_open", clock.now, "S2", message_id="o")])

    report = store.rescore_all(progress=progress)
    assert "scoring" in steps
    assert (report.leads, report.changed, report.skipped) == (2, 1, 1)
    assert history(store, "S1")[0] == ("decay", 20.0, 10.0)
    assert current(store, "S1", "dw")["as_of_us"] == start
    reason, old, new = history(store, "S2")[0]
    assert (reason, old) == ("event", 20.0)
    assert close(new, 20 * 0.5 ** ((10 * DAY + SECOND) / DAY / 10) + 5)
    assert current(store, "S2", "dw")["as_of_us"] == start + SECOND
    assert_matches_per_lead(store, ["S1"], start)
    assert_matches_per_lead(store, ["S2"], start + SECOND)


def test_real_time_rescoring_during_the_batch_write_is_not_overwritten(
    store: Store, clock: Clock
) -> None:
    """DW; W1 viewed /pricing at T0. Ten days later rescore_all computes 10 for W1; just as it
    is about to write, another request stores an email open for W1 (+5). Whichever commits
    first, the lead must end with the score of all its events (15), never the batch's 10
    written over the real-time 15 (on PostgreSQL the request waits for the batch's row lock;
    on SQLite for the write lock)."""
    publish(store, DW)
    store.ingest_events([EventInput("page_view", clock.now, "W1", properties={"url": "/pricing"})])
    clock.advance(days=10)
    main = threading.get_ident()
    armed = [True]
    workers: list[threading.Thread] = []
    errors: list[BaseException] = []

    def late_open() -> None:
        try:
            store.ingest_events([EventInput("email_open", clock.now, "W1", message_id="late")])
        except BaseException as e:  # reported below, in the test's thread
            errors.append(e)

    def before_sending(statements: list[str]) -> None:
        updates = any(s.startswith("UPDATE scores") for s in statements)
        if armed[0] and threading.get_ident() == main and updates:
            armed[0] = False
            worker = threading.Thread(target=late_open)
            worker.start()
            workers.append(worker)
            worker.join(timeout=0.3)  # long enough to finish unless something makes it wait

    with watching(store, before_sending):
        store.rescore_all()
    assert len(workers) == 1
    workers[0].join()
    assert not errors
    assert current(store, "W1", "dw")["score"] == 15.0
    assert history(store, "W1")[:2] == [("event", 10.0, 15.0), ("decay", 20.0, 10.0)]
    assert_matches_per_lead(store, ["W1"], clock.now)


# --- concurrency --------------------------------------------------------------------------------


def _run_threads(count: int, work: Any) -> None:
    barrier = threading.Barrier(count)
    errors: list[BaseException] = []

    def run(k: int) -> None:
        barrier.wait()
        try:
            work(k)
        except BaseException as e:  # reported below, in the test's thread
            errors.append(e)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def test_concurrent_events_for_one_new_lead(store: Store, clock: Clock) -> None:
    """COUNTER; 6 threads send 5 page views each, one request per view, all at once, for a lead
    that does not exist yet. Every view is accepted; each rescoring sees every committed view
    plus its own, so the n-th history row goes from n - 1 to n: 30 rows chaining None, 1, ...,
    30, and the current score is a fresh rescoring's 30."""
    publish(store, COUNTER)
    threads, per_thread = 6, 5

    def work(k: int) -> None:
        for j in range(per_thread):
            ts = clock.now - (k * per_thread + j) * SECOND
            out = store.ingest_events([EventInput("page_view", ts, "C1", message_id=f"{k}-{j}")])
            assert [o.status for o in out] == ["accepted"]

    _run_threads(threads, work)
    total = threads * per_thread
    assert current(store, "C1", "counter")["score"] == float(total)
    rows = list(reversed(history(store, "C1")))
    assert [r[0] for r in rows] == ["event"] * total
    assert [r[2] for r in rows] == [float(n) for n in range(1, total + 1)]
    assert [r[1] for r in rows] == [None] + [r[2] for r in rows[:-1]]
    assert_matches_per_lead(store, ["C1"], clock.now)


def test_concurrent_profile_updates_of_one_lead_lose_no_field(store: Store, clock: Clock) -> None:
    """4 threads each merge 5 different fields into the same lead, one upsert per field: the
    profile ends with all 20 (a merge that read the profile before another committed would
    drop that one's field)."""
    publish(store, COUNTER)
    store.upsert_leads([LeadInput("U1", fields={"base": 1})])

    def work(k: int) -> None:
        for j in range(5):
            out = store.upsert_leads([LeadInput("U1", fields={f"f{k}_{j}": j})])
            assert [o.status for o in out] == ["updated"]

    _run_threads(4, work)
    with store.db.read() as conn:
        profile = lead_view(conn, "U1")["profile"]
    assert profile == {"base": 1, **{f"f{k}_{j}": j for k in range(4) for j in range(5)}}
