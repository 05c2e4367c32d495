"""Models and publishing, identity resolution, lifecycle and API keys in the store, on SQLite
and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection

import leadscore.store.leads as store_leads
import leadscore.store.lifecycle as lifecycle
from leadscore.errors import Conflict, ModelError, NotFound, UsageError
from leadscore.service.writer import IngestWriter
from leadscore.store import EventInput, LeadInput, OutcomeInput, Store
from leadscore.store.keys import create_key, list_keys, revoke_key, verify_key
from leadscore.store.leads import (
    IDENTITY_LOCK_SLOTS,
    _slot,
    insert_events,
    lock_identities,
    lock_leads,
    upsert_leads,
)
from leadscore.store.lifecycle import add_outcomes, record_disposition, set_stage
from leadscore.store.queries import lead_view, score_history_of
from leadscore.store.schema import (
    api_keys,
    events,
    leads,
    model_versions,
    outcomes,
    score_history,
    scores,
)
from leadscore.store.versions import list_versions
from tests.conftest import Clock
from tests.test_event_cache import statements

SECOND = 1_000_000
# What only concurrent writers show, which SQLite serialises: the `store` on PostgreSQL alone.
POSTGRESQL_ONLY = pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)

V1 = """
version: 1
name: m
profile:
  - {id: vp, if: {field: title, contains: vp}, points: 30}
activity:
  - {id: demo, event: demo_request, points: 40, frequency: once}
bands: {cold: -.inf, hot: 50}
mql: hot
"""
V2 = V1.replace("points: 40", "points: 60")


def publish(store: Store, yaml_text: str) -> None:
    version = store.add_model(yaml_text)
    store.publish(version.name, version.version)


def view(store: Store, lead_id: str) -> dict[str, Any]:
    with store.db.read() as conn:
        found: dict[str, Any] = lead_view(conn, lead_id)
        return found


def score(store: Store, lead_id: str, sheet: str = "m") -> float:
    return float(view(store, lead_id)["scores"][sheet]["score"])


def history(store: Store, lead_id: str) -> list[tuple[Any, ...]]:
    with store.db.read() as conn:
        rows = score_history_of(conn, lead_id)
    return [(r["reason"], r["old_score"], r["new_score"]) for r in rows]


def versions(store: Store) -> list[tuple[int, str]]:
    with store.db.read() as conn:
        return [(v.version, v.status) for v in list_versions(conn, "m")]


# --- models -------------------------------------------------------------------------------------


def test_publishing_a_new_version_rescores_every_lead(store: Store, clock: Clock) -> None:
    """v1: vp 30, demo 40. K1 (VP, demo) 70 hot; K2 (VP) 30; K3 0.
    v2 makes a demo worth 60: K1 90; K2 and K3 keep their scores, but every lead gets a
    `model change` history row, since the version that scored it changed. Publishing v1 again
    (a rollback) brings K1 back to 70 the same way."""
    publish(store, V1)
    store.upsert_leads(
        [LeadInput("K1", fields={"title": "VP"}), LeadInput("K2", fields={"title": "VP"})]
    )
    store.upsert_leads([LeadInput("K3")])
    store.ingest_events([EventInput("demo_request", clock.now, "K1")])
    assert [score(store, k) for k in ("K1", "K2", "K3")] == [70.0, 30.0, 0.0]

    clock.advance(seconds=1)
    draft = store.add_model(V2, "m.yaml")
    assert (draft.name, draft.version, draft.status) == ("m", 2, "draft")
    assert versions(store) == [(1, "published"), (2, "draft")]
    report = store.publish("m")
    assert (report.reason, report.leads, report.changed, report.per_sheet) == (
        "model change",
        3,
        3,
        {"m": 3},
    )
    assert versions(store) == [(1, "retired"), (2, "published")]
    assert [s.version.version for s in store.sheets()] == [2]
    assert history(store, "K1")[0] == ("model change", 70.0, 90.0)
    assert history(store, "K2")[0] == ("model change", 30.0, 30.0)
    assert history(store, "K3")[0] == ("model change", 0.0, 0.0)
    k1 = view(store, "K1")["scores"]["m"]
    assert (k1["score"], k1["model_version_id"], k1["as_of_us"]) == (90.0, draft.id, clock.now)
    store.ingest_events([EventInput("page_view", clock.now, "K2")])  # real time uses v2 too
    assert view(store, "K2")["scores"]["m"]["model_version_id"] == draft.id

    store.publish("m", 1)
    assert versions(store) == [(1, "published"), (2, "retired")]
    assert history(store, "K1")[0] == ("model change", 90.0, 70.0)


def test_unknown_active_and_invalid_models_are_errors(store: Store) -> None:
    """Publishing an unknown name or version is NotFound, the active one a Conflict; an invalid
    model reports every problem at once, each with its line, and stores nothing."""
    with pytest.raises(NotFound, match="no model 'nope'"):
        store.publish("nope")
    with pytest.raises(NotFound):
        store.publish("nope", 1)
    publish(store, V1)
    with pytest.raises(NotFound, match="no model 'm' version 7"):
        store.publish("m", 7)
    with pytest.raises(Conflict, match="already published"):
        store.publish("m", 1)
    assert versions(store) == [(1, "published")]

    bad = V1.replace("points: 30", "points: thirty").replace("mql: hot", "mql: hot\nspeed: 3")
    with pytest.raises(ModelError) as caught:
        store.add_model(bad, "m.yaml")
    issues = caught.value.issues
    assert [(i.file, i.line) for i in issues] == [("m.yaml", 5), ("m.yaml", 10)]
    assert "profile[0].points" in str(caught.value) and "speed" in str(caught.value)
    with pytest.raises(ModelError, match=r"m\.yaml:3: not valid YAML"):
        store.add_model("version: 1\nname: m\n  bad: [\n", "m.yaml")
    assert versions(store) == [(1, "published")]


def test_posting_the_same_yaml_again_creates_no_version(store: Store) -> None:
    """The newest version's exact text is that version; another text is the next version (even
    an older one's text: it becomes a new draft)."""
    first = store.ensure_published(V1, "m.yaml")
    assert first is not None and (first.version, first.status) == (1, "published")
    assert store.ensure_published(V1, "m.yaml") is None
    assert store.add_model(V1).id == first.id
    second = store.add_model(V2)
    assert store.add_model(V2).id == second.id
    assert versions(store) == [(1, "published"), (2, "draft")]
    assert store.add_model(V1).version == 3
    with store.db.read() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(model_versions)).scalar() == 3


# --- identity -----------------------------------------------------------------------------------


def test_a_lead_by_email_only_and_leads_sharing_an_email(store: Store, clock: Clock) -> None:
    """No lead_id: the lowercased, trimmed email becomes it; the email then finds that lead.
    CRMs hold duplicates: a second lead may carry an email already known; items that name only
    the email (upserts and events) go to the oldest lead with it."""
    publish(store, V1)
    (out,) = store.upsert_leads([LeadInput(email=" Ann@Acme.COM ")])
    assert (out.status, out.lead_id) == ("created", "ann@acme.com")
    (again,) = store.upsert_leads([LeadInput(email="ANN@acme.com", fields={"title": "VP"})])
    assert (again.status, again.lead_id) == ("updated", "ann@acme.com")
    lead = view(store, "ann@acme.com")
    assert (lead["email"], lead["profile"]) == (
        "ann@acme.com",
        {"email": "ann@acme.com", "title": "VP"},
    )
    assert history(store, "ann@acme.com") == [("profile", 0.0, 30.0), ("profile", None, 0.0)]

    store.upsert_leads([LeadInput("S1", "dup@x.com")])
    clock.advance(seconds=1)
    out = store.upsert_leads([LeadInput("S2", "DUP@x.com", {"title": "VP"})])
    assert [(o.status, o.lead_id) for o in out] == [("created", "S2")]
    assert view(store, "S2")["email"] == "dup@x.com"
    (by_email,) = store.upsert_leads([LeadInput(email="dup@x.com", fields={"k": 1})])
    assert by_email.lead_id == "S1"
    events = store.ingest_events([EventInput("demo_request", clock.now, email="Dup@X.com")])
    assert [(o.status, o.lead_id) for o in events] == [("accepted", "S1")]
    assert (score(store, "S1"), score(store, "S2")) == (40.0, 30.0)


def test_bad_items_are_errors_and_the_rest_of_the_batch_is_accepted(store: Store) -> None:
    publish(store, V1)
    out = store.upsert_leads(
        [
            LeadInput("B1", fields={"title": "VP"}),
            LeadInput(fields={"title": "VP"}),
            LeadInput("B2", "b2@x.com"),
            LeadInput("B3", stage="customer-ish"),
            LeadInput(email="   "),
        ]
    )
    assert [(o.index, o.status, o.lead_id) for o in out] == [
        (0, "created", "B1"),
        (1, "error", None),
        (2, "created", "B2"),
        (3, "error", "B3"),
        (4, "error", None),
    ]
    assert out[1].error == "a lead needs a lead_id or an email"
    assert out[3].error is not None and out[3].error.startswith("unknown stage 'customer-ish'")
    assert (score(store, "B1"), score(store, "B2")) == (30.0, 0.0)
    with pytest.raises(NotFound):
        view(store, "B3")
    events = store.ingest_events(
        [EventInput("demo_request", 0, "B1"), EventInput("demo_request", 0)]
    )
    assert [o.status for o in events] == ["accepted", "error"]
    assert events[1].error == "an event needs a lead_id, email or anonymous_id"


def test_profile_fields_merge_and_none_removes_one(store: Store, clock: Clock) -> None:
    """The second upsert keeps title, changes country, removes phone and adds employees; the
    third removes the title: vp's 30 points go, recorded as a profile change 30 -> 0. An
    empty owner clears the owner, a missing one keeps it; a stage given is recorded."""
    publish(store, V1)
    store.upsert_leads(
        [LeadInput("P1", owner="sam", fields={"title": "VP", "country": "US", "phone": "1"})]
    )
    store.upsert_leads(
        [LeadInput("P1", fields={"phone": None, "country": "DE", "employees": 10, "x": None})]
    )
    lead = view(store, "P1")
    assert lead["profile"] == {"title": "VP", "country": "DE", "employees": 10}
    assert lead["owner"] == "sam"
    clock.advance(seconds=1)
    store.upsert_leads([LeadInput("P1", owner="", stage=" MQL ", fields={"title": None})])
    lead = view(store, "P1")
    assert lead["profile"] == {"country": "DE", "employees": 10}
    assert (lead["owner"], lead["stage"], lead["stage_us"]) == (None, "mql", clock.now)
    assert lead["stage_changes"] == [
        {
            "from_stage": "lead",
            "to_stage": "mql",
            "at_us": clock.now,
            "reason": "lead update",
            "actor": None,
        }
    ]
    assert history(store, "P1") == [("profile", 30.0, 0.0), ("profile", None, 30.0)]


def test_an_event_by_email_creates_its_lead(store: Store, clock: Clock) -> None:
    """demo 40 for the new lead `new@x.com`; a second email-only event finds it in any case."""
    publish(store, V1)
    out = store.ingest_events([EventInput("demo_request", clock.now, email="New@X.com")])
    assert [(o.status, o.lead_id) for o in out] == [("accepted", "new@x.com")]
    lead = view(store, "new@x.com")
    assert (lead["email"], lead["profile"], lead["stage"]) == (
        "new@x.com",
        {"email": "new@x.com"},
        "lead",
    )
    assert lead["scores"]["m"]["score"] == 40.0
    again = store.ingest_events([EventInput("page_view", clock.now, email=" NEW@x.com")])
    assert again[0].lead_id == "new@x.com"
    assert history(store, "new@x.com") == [("event", None, 40.0)]


def outcome_rows(store: Store) -> list[tuple[str, str, int]]:
    with store.db.read() as conn:
        rows = conn.execute(sa.select(outcomes.c.lead_id, outcomes.c.outcome, outcomes.c.ts_us))
        return sorted((str(a), str(b), int(c)) for a, b, c in rows)


def test_an_email_keyed_lead_is_merged_into_the_lead_id_that_claims_it(
    store: Store, clock: Clock
) -> None:
    """An event by email alone creates `new@x.com` (demo 40). The CRM's upsert of C7 with that
    email takes it over: its events, outcome, stage and score history move to C7 (vp 30 + demo
    40 = 70, one chain of history), the email-keyed lead is gone, and the email finds C7."""
    publish(store, V1)
    store.ingest_events([EventInput("demo_request", clock.now - SECOND, email="New@X.com")])
    with store.db.write() as conn:
        add_outcomes(conn, [OutcomeInput("new@x.com", "sql", clock.now - SECOND)], "api")
        set_stage(conn, "new@x.com", "sql", clock.now - SECOND, reason="test")
    (out,) = store.upsert_leads([LeadInput("C7", "NEW@x.com", {"title": "VP"})])
    assert (out.status, out.lead_id, out.merged) == ("created", "C7", "new@x.com")
    lead = view(store, "C7")
    assert (lead["email"], lead["profile"], lead["stage"]) == (
        "new@x.com",
        {"email": "new@x.com", "title": "VP"},
        "sql",
    )
    assert score(store, "C7") == 70.0
    assert history(store, "C7") == [("profile", 40.0, 70.0), ("event", None, 40.0)]
    with pytest.raises(NotFound):
        view(store, "new@x.com")
    assert outcome_rows(store) == [("C7", "sql", clock.now - SECOND)]
    later = store.ingest_events([EventInput("demo_request", clock.now, email="new@x.com")])
    assert later[0].lead_id == "C7"
    (again,) = store.upsert_leads([LeadInput("C7", "new@x.com")])
    assert (again.status, again.merged) == ("updated", None)


def test_an_email_keyed_lead_merges_into_an_existing_lead(store: Store, clock: Clock) -> None:
    """L5 (vp 30) exists without an email; `e@x.com` (demo 40) was created by an event. When an
    upsert gives L5 that email, L5 takes the events (70), keeps its own profile values, gains
    the ones it lacked, and an outcome both had at the same time stays one outcome."""
    publish(store, V1)
    store.upsert_leads([LeadInput("L5", fields={"title": "VP", "region": "EU"})])
    store.ingest_events([EventInput("demo_request", clock.now - SECOND, email="e@x.com")])
    store.upsert_leads([LeadInput(email="e@x.com", fields={"region": "US", "size": "200"})])
    with store.db.write() as conn:
        won = [OutcomeInput(lid, "won", clock.now - SECOND) for lid in ("L5", "e@x.com")]
        add_outcomes(conn, won, "api")
    (out,) = store.upsert_leads([LeadInput("L5", "e@x.com")])
    assert (out.status, out.lead_id, out.merged) == ("updated", "L5", "e@x.com")
    assert score(store, "L5") == 70.0
    assert view(store, "L5")["profile"] == {
        "title": "VP",
        "region": "EU",
        "size": "200",
        "email": "e@x.com",
    }
    assert outcome_rows(store) == [("L5", "won", clock.now - SECOND)]
    with pytest.raises(NotFound):
        view(store, "e@x.com")
    assert history(store, "L5")[0] == ("profile", 30.0, 70.0)


def test_a_new_lead_claiming_two_email_keyed_leads_takes_both(store: Store, clock: Clock) -> None:
    """One batch gives the new lead N1 two emails, each with an email-keyed lead (a demo, 40,
    and an open): both merge into N1 (each item names the one its email brought), the first
    gives N1 its stage and scores, and a stage set in the same upsert is recorded."""
    publish(store, V1)
    store.ingest_events(
        [
            EventInput("demo_request", clock.now - 2 * SECOND, email="a@x.com"),
            EventInput("email_open", clock.now - SECOND, email="b@x.com"),
        ]
    )
    out = store.upsert_leads(
        [LeadInput("N1", "a@x.com", stage="sql"), LeadInput("N1", "b@x.com", {"title": "VP"})]
    )
    assert [(o.status, o.lead_id, o.merged) for o in out] == [
        ("created", "N1", "a@x.com"),
        ("created", "N1", "b@x.com"),
    ]
    assert score(store, "N1") == 70.0
    lead = view(store, "N1")
    assert [(c["from_stage"], c["to_stage"], c["reason"]) for c in lead["stage_changes"]] == [
        ("lead", "sql", "lead update")
    ]
    with store.db.read() as conn:
        owners = conn.execute(sa.select(events.c.lead_id).distinct()).scalars().all()
    assert owners == ["N1"]
    for gone in ("a@x.com", "b@x.com"):
        with pytest.raises(NotFound, match="merged into 'N1'"):
            view(store, gone)


def test_what_is_sent_for_a_merged_lead_goes_to_the_lead_it_became(
    store: Store, clock: Clock
) -> None:
    """After `m@x.com` merged into M1, an event, an upsert and an outcome naming `m@x.com` go
    to M1 (nothing re-creates the old lead); merging M1's own email-keyed successor on points
    the old id further."""
    publish(store, V1)
    store.ingest_events([EventInput("demo_request", clock.now - SECOND, email="m@x.com")])
    store.upsert_leads([LeadInput("M1", "m@x.com")])
    (ev,) = store.ingest_events([EventInput("email_open", clock.now, lead_id="m@x.com")])
    (up,) = store.upsert_leads([LeadInput("m@x.com", fields={"title": "VP"})])
    assert (ev.lead_id, up.status, up.lead_id) == ("M1", "updated", "M1")
    with store.db.write() as conn:
        add_outcomes(conn, [OutcomeInput("m@x.com", "won", clock.now)], "api")
    assert outcome_rows(store) == [("M1", "won", clock.now)]
    assert score(store, "M1") == 70.0
    with pytest.raises(NotFound, match="merged into 'M1'"):
        view(store, "m@x.com")
    # a chain: k@x.com merged into t@x.com, which is merged in turn: k@x.com finds the last
    store.ingest_events([EventInput("demo_request", clock.now, email="k@x.com")])
    store.upsert_leads([LeadInput("t@x.com", "k@x.com")])  # k@x.com -> t@x.com
    store.upsert_leads([LeadInput("t@x.com", "t@x.com")])  # t@x.com is keyed by its email now
    store.upsert_leads([LeadInput("T9", "t@x.com")])  # t@x.com -> T9
    (late,) = store.ingest_events([EventInput("page_view", clock.now, lead_id="k@x.com")])
    assert late.lead_id == "T9"
    with pytest.raises(NotFound, match="merged into 'T9'"):
        view(store, "k@x.com")


def test_a_full_rescore_racing_a_merge_scores_no_merged_lead(store: Store, clock: Clock) -> None:
    """The batch read `m@x.com` before M1 claimed it: its result is not written for the lead
    that is gone (no score row or history for a lead that does not exist)."""
    publish(store, V1)
    store.ingest_events([EventInput("demo_request", clock.now - SECOND, email="m@x.com")])
    store.upsert_leads([LeadInput("P1", fields={"title": "VP"})])

    def merge_meanwhile(stage: str, done: int, total: int) -> None:
        if stage == "scoring" and done == total:
            store.upsert_leads([LeadInput("M1", "m@x.com")])

    clock.advance(days=1)
    report = store.rescore_all("decay", progress=merge_meanwhile)
    assert report.leads == 2
    with store.db.read() as conn:
        for table in (scores, score_history):
            ids = conn.execute(sa.select(table.c.lead_id).distinct()).scalars().all()
            assert sorted(ids) == ["M1", "P1"], table.name
    assert score(store, "M1") == 40.0


def test_a_rescoring_whose_lead_was_merged_away_ends_its_progress_at_what_it_did(
    store: Store, clock: Clock
) -> None:
    """Three leads counted at the start, in parts of two; after the first part, z@x.com is
    claimed by a new lead A0, whose id comes before the parts done: the run reads two leads,
    and its progress ends at 2 of 2, not 2 of 3."""
    publish(store, V1)
    store.ingest_events([EventInput("demo_request", clock.now - SECOND, email="z@x.com")])
    store.upsert_leads([LeadInput("A1", fields={"title": "VP"}), LeadInput("B1")])
    seen: dict[str, tuple[int, int]] = {}

    def progress(what: str, done: int, total: int) -> None:
        seen[what] = (done, total)
        if what == "writing scores" and done == 2 and "A0" not in seen:
            seen["A0"] = (0, 0)
            store.upsert_leads([LeadInput("A0", "z@x.com")])

    clock.advance(days=1)
    report = store.rescore_all("decay", progress=progress, part=2)
    assert report.leads == 2
    assert {k: v for k, v in seen.items() if k != "A0"} == {
        "reading leads and events": (2, 2),
        "scoring": (2, 2),
        "writing scores": (2, 2),
    }
    assert score(store, "A0") == 40.0


def assert_waits(store: Store, *threads: threading.Thread) -> None:
    """The threads are blocked: on PostgreSQL, as many of the test database's sessions wait
    for a lock (soon); on SQLite, where writers queue for one lock, they still run after
    0.3 s."""
    if store.db.is_sqlite:
        for thread in threads:
            thread.join(0.3)
            assert thread.is_alive()
        return
    deadline = time.monotonic() + 20
    waiting = 0
    while waiting < len(threads) and time.monotonic() < deadline:
        time.sleep(0.02)
        with store.db.read() as conn:
            waiting = conn.execute(
                sa.text(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            ).scalar_one()
    assert waiting >= len(threads), f"{waiting} session(s) wait for a lock"
    assert all(thread.is_alive() for thread in threads)


@contextlib.contextmanager
def held_open(store: Store, write: Callable[[Connection], object]) -> Iterator[None]:
    """``write`` done in a transaction of another thread, not committed until the block ends."""
    done, release = threading.Event(), threading.Event()

    def run() -> None:
        with store.db.write() as conn:
            write(conn)
            done.set()
            assert release.wait(20)

    writing = threading.Thread(target=run)
    writing.start()
    try:
        assert done.wait(20)
        yield
    finally:
        release.set()
        writing.join(20)


def merge_under_way(store: Store, clock: Clock) -> contextlib.AbstractContextManager[None]:
    """An upsert merging `m@x.com` into M1, not committed until the block ends."""
    return held_open(
        store, lambda conn: upsert_leads(conn, [LeadInput("M1", "m@x.com")], clock.now)
    )


@pytest.mark.parametrize("how", ["event by email", "upsert by id", "event by id", "event by alias"])
def test_a_request_naming_a_lead_being_merged_goes_to_the_lead_it_becomes(
    store: Store, clock: Clock, how: str
) -> None:
    """While an upsert merges `m@x.com` into M1 (not yet committed), a request names
    `m@x.com` by email, by id or through an anonymous id linked to it: it waits for the merge
    and then goes to M1 (not to a lead that is gone, nor to a re-created `m@x.com`)."""
    publish(store, V1)
    store.identify(LeadInput(email="m@x.com"), anonymous_id="anon-m")
    store.ingest_events([EventInput("demo_request", clock.now - SECOND, email="m@x.com")])

    def send() -> list[Any]:
        if how == "event by email":
            return store.ingest_events([EventInput("email_open", clock.now, email="M@x.com")])
        if how == "upsert by id":
            return store.upsert_leads([LeadInput("m@x.com", fields={"title": "VP"})])
        if how == "event by id":
            return store.ingest_events([EventInput("email_open", clock.now, lead_id="m@x.com")])
        return store.ingest_events([EventInput("email_open", clock.now, anonymous_id="anon-m")])

    got: list[Any] = []
    sending = threading.Thread(target=lambda: got.extend(send()))
    with merge_under_way(store, clock):
        sending.start()
        assert_waits(store, sending)  # for the merge
    sending.join(20)
    assert [o.lead_id for o in got] == ["M1"]
    with store.db.read() as conn:
        ids = conn.execute(sa.select(leads.c.lead_id)).scalars().all()
        owners = conn.execute(sa.select(events.c.lead_id).distinct()).scalars().all()
    assert (ids, owners) == (["M1"], ["M1"])
    if how == "upsert by id":
        assert view(store, "M1")["profile"]["title"] == "VP"


@POSTGRESQL_ONLY
def test_a_batch_of_many_emails_holds_a_bounded_number_of_identity_locks(store: Store) -> None:
    """A bulk import's chunk of 20,000 new emails: PostgreSQL's shared lock table (6,400 locks
    by default, for every session at once) is not filled by one transaction."""
    emails = [f"person{i}@example.com" for i in range(20_000)]
    with store.db.write() as conn:
        lock_identities(conn, emails, ["a1", "a2"])
        held = conn.execute(
            sa.text(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                "AND pid = pg_backend_pid()"
            )
        ).scalar_one()
    assert 0 < held <= IDENTITY_LOCK_SLOTS


@POSTGRESQL_ONLY
def test_ingest_by_email_waits_only_for_writers_that_may_merge(store: Store, clock: Clock) -> None:
    """While a bulk import's chunk of 2,000 emails is being written, live events by other
    emails go through, even one whose identity lock the chunk shares (its 2,000 emails hash to
    most of the 1,024 locks); an upsert that may merge that email's lead waits for it."""
    publish(store, V1)
    chunk = [EventInput("email_open", clock.now, email=f"p{i}@x.com") for i in range(2000)]
    held = {_slot(f"email:{e.email}") for e in chunk}
    live_email = next(e for i in range(10_000) if _slot(f"email:{(e := f'live{i}@x.com')}") in held)
    with held_open(store, lambda conn: insert_events(conn, chunk, clock.now)):
        event = EventInput("demo_request", clock.now, email=live_email)
        live = threading.Thread(target=lambda: store.ingest_events([event]))
        live.start()
        live.join(20)
        assert not live.is_alive()  # through while the import's transaction is open
        claim = [LeadInput("C1", live_email)]
        merging = threading.Thread(target=lambda: store.upsert_leads(claim))
        merging.start()
        assert_waits(store, merging)  # for the import
    merging.join(20)
    assert score(store, "C1") == 40.0  # the live demo request, merged into C1


@POSTGRESQL_ONLY
def test_an_outcome_or_a_verdict_during_a_merge_follows_it(store: Store, clock: Clock) -> None:
    """An outcome for `m@x.com` recorded while the merge into M1 runs ends up on M1; a
    verdict on `m@x.com` waits for the merge and then answers that the lead is M1 now (it
    neither reports a stage change that was lost nor records one for a lead that is gone)."""
    publish(store, V1)
    store.ingest_events([EventInput("demo_request", clock.now, email="m@x.com")])
    got: list[Any] = []

    def outcome() -> None:
        with store.db.write() as conn:
            add_outcomes(conn, [OutcomeInput("m@x.com", "won", clock.now)], "api")

    def verdict() -> None:
        try:
            with store.db.write() as conn:
                record_disposition(conn, "m@x.com", "accept", clock.now)
        except NotFound as e:
            got.append(str(e))

    writers = [threading.Thread(target=outcome), threading.Thread(target=verdict)]
    with merge_under_way(store, clock):
        for w in writers:
            w.start()
        assert_waits(store, *writers)  # for the merge
    for w in writers:
        w.join(20)
    assert got == ["no lead 'm@x.com': it was merged into 'M1'"]
    assert outcome_rows(store) == [("M1", "won", clock.now)]
    lead = view(store, "M1")
    assert (lead["stage"], lead["stage_changes"]) == ("lead", [])


@POSTGRESQL_ONLY
def test_a_merge_met_late_does_not_lock_out_of_order(
    store: Store, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Events for `m@x.com` (being merged into M1) and z1: ingest waits for the merge, finds
    `m@x.com` gone and must lock M1, which sorts before z1 that it holds. Meanwhile another
    writer takes M1, then waits for z1 (as rescoring locks, in id order). Ingest starts again
    from its savepoint (letting go of z1) instead of deadlocking; both finish."""
    publish(store, V1)
    store.ingest_events([EventInput("demo_request", clock.now, email="m@x.com")])
    store.upsert_leads([LeadInput("z1")])
    met, go_on = threading.Event(), threading.Event()
    real = store_leads.merged_into
    ingesting: dict[str, int] = {}

    def merged_into(conn: Any, lead_ids: Any) -> dict[str, str]:
        found = real(conn, lead_ids)
        if found and threading.get_ident() == ingesting.get("thread"):
            met.set()  # holding z1, about to follow m@x.com to M1
            assert go_on.wait(20)
        return found

    monkeypatch.setattr(store_leads, "merged_into", merged_into)
    errors: list[BaseException] = []

    def send() -> None:
        ingesting["thread"] = threading.get_ident()
        try:
            store.ingest_events(
                [
                    EventInput("email_open", clock.now, lead_id="m@x.com"),
                    EventInput("email_open", clock.now, lead_id="z1"),
                ]
            )
        except Exception as e:
            errors.append(e)

    def rescore() -> None:
        try:
            with store.db.write() as conn:
                lock_leads(conn, ["M1", "z1"])
        except Exception as e:
            errors.append(e)

    sending = threading.Thread(target=send)
    with merge_under_way(store, clock):
        sending.start()
        assert_waits(store, sending)  # for the merge
    assert met.wait(20)
    other = threading.Thread(target=rescore)
    other.start()
    assert_waits(store, other)  # for z1, which the sender holds
    go_on.set()
    sending.join(20)
    other.join(20)
    assert errors == []
    with store.db.read() as conn:
        rows = conn.execute(sa.select(events.c.lead_id).order_by(events.c.id)).scalars().all()
    assert rows == ["M1", "M1", "z1"]


@POSTGRESQL_ONLY
def test_leads_merged_away_again_and_again_while_a_request_runs_is_a_conflict(
    store: Store, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each lead a request names merged away as soon as it is followed (a stand-in for merges
    committing again and again): after a few attempts the request is refused with a 409
    (Conflict: send it again), nothing of it stored; through the service's ingest writer too."""
    publish(store, V1)
    real = store_leads.merged_into

    def merged_into(conn: Any, lead_ids: Any) -> dict[str, str]:
        ids = list(lead_ids)  # `q+` was merged into `q++`, that one into `q+++`, ...
        return {i: i + "+" for i in ids} if any(i.endswith("+") for i in ids) else real(conn, ids)

    monkeypatch.setattr(store_leads, "merged_into", merged_into)
    with pytest.raises(Conflict, match="send it again"):
        store.ingest_events([EventInput("email_open", clock.now, lead_id="q+")])
    with pytest.raises(Conflict, match="send it again"):
        store.upsert_leads([LeadInput("q+")])
    writer = IngestWriter(store)
    try:
        with pytest.raises(Conflict):
            asyncio.run(writer.ingest([EventInput("email_open", clock.now, lead_id="q+")]))
    finally:
        writer.close()
    with store.db.read() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(leads)).scalar_one() == 0
        assert conn.execute(sa.select(sa.func.count()).select_from(events)).scalar_one() == 0


def test_an_event_creating_a_lead_with_an_email_holds_up_events_by_that_email(
    store: Store, clock: Clock
) -> None:
    """An event creates L1 with `e@x.com` (not committed yet): an event by that email alone
    waits for it and then finds L1, instead of creating an email-keyed lead beside it."""
    publish(store, V1)
    first = [EventInput("email_open", clock.now, lead_id="L1", email="e@x.com")]
    second = EventInput("demo_request", clock.now, email="e@x.com")
    got: list[Any] = []
    sending = threading.Thread(target=lambda: got.extend(store.ingest_events([second])))
    with held_open(store, lambda conn: insert_events(conn, first, clock.now)):
        sending.start()
        assert_waits(store, sending)
    sending.join(20)
    assert [o.lead_id for o in got] == ["L1"]
    with store.db.read() as conn:
        assert conn.execute(sa.select(leads.c.lead_id)).scalars().all() == ["L1"]


@POSTGRESQL_ONLY
def test_an_outcome_for_a_lead_not_stored_yet_follows_its_merge(
    store: Store, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An outcome names `n@x.com`, no lead yet. While it is being stored, an event by that
    email creates the lead and an upsert claims it for N1: the upsert waits for the outcome,
    then its merge takes the outcome along."""
    publish(store, V1)
    real = lifecycle.merged_into
    looked_up, go_on = threading.Event(), threading.Event()

    def merged_into(conn: Any, lead_ids: Any) -> dict[str, str]:
        found = real(conn, lead_ids)
        looked_up.set()  # the outcome knows where it goes, and is not stored yet
        assert go_on.wait(20)
        return found

    monkeypatch.setattr(lifecycle, "merged_into", merged_into)

    def outcome() -> None:
        with store.db.write() as conn:
            add_outcomes(conn, [OutcomeInput("n@x.com", "won", clock.now)], "api")

    storing = threading.Thread(target=outcome)
    storing.start()
    assert looked_up.wait(20)
    store.ingest_events([EventInput("demo_request", clock.now, email="n@x.com")])
    claiming = threading.Thread(target=lambda: store.upsert_leads([LeadInput("N1", "n@x.com")]))
    claiming.start()
    assert_waits(store, claiming)  # for the outcome
    go_on.set()
    storing.join(20)
    claiming.join(20)
    assert outcome_rows(store) == [("N1", "won", clock.now)]


def test_anonymous_events_join_the_lead_on_identify(store: Store, clock: Clock) -> None:
    """Two anonymous demo requests (kept without a lead) join V1 when identify links `a1`:
    vp 30 + demo 40 (once) = 70, recorded as an event change. The alias stays with V1: an
    identify of V2 with it joins nothing, and later `a1` events still go to V1."""
    publish(store, V1)
    out = store.ingest_events(
        [
            EventInput("demo_request", clock.now - SECOND, anonymous_id="a1"),
            EventInput("demo_request", clock.now, anonymous_id="a1", message_id="a1-2"),
        ]
    )
    assert [(o.status, o.lead_id) for o in out] == [("anonymous", None), ("anonymous", None)]
    outcome, joined = store.identify(LeadInput("V1", fields={"title": "VP"}), anonymous_id="a1")
    assert (outcome.status, outcome.lead_id, joined) == ("created", "V1", True)
    assert score(store, "V1") == 70.0
    assert history(store, "V1") == [("event", None, 70.0)]

    outcome, joined = store.identify(LeadInput("V2"), anonymous_id="a1")
    assert (outcome.status, joined) == ("created", False)
    later = store.ingest_events([EventInput("page_view", clock.now, anonymous_id="a1")])
    assert [(o.status, o.lead_id) for o in later] == [("accepted", "V1")]
    assert score(store, "V2") == 0.0
    _, joined = store.identify(LeadInput("V1"), anonymous_id="a1")
    assert joined is False  # nothing left to join
    _, joined = store.identify(LeadInput(email="v3@x.com"), anonymous_id="never-seen")
    assert joined is False


def test_an_alias_of_an_identified_lead_merges_it_into_the_user_id_lead(
    store: Store, clock: Clock
) -> None:
    """P1 (VP, p@x.com, an anonymous id, a demo request 40: 70, an outcome, stage sql) and U1
    (region EU, no events: 0) are one person: an alias with previousId P1 and userId U1 merges
    P1 into U1. U1 keeps its own profile values and stage, gains P1's title and email, takes
    its events (vp 30 + demo 40 = 70, an event change), anonymous id, outcome, stage change
    and history; P1 is gone, and what is sent for it later, by its id, its email or its
    anonymous id, goes to U1. The same alias again changes nothing."""
    publish(store, V1)
    store.upsert_leads([LeadInput("P1", "p@x.com", {"title": "VP", "region": "US"})])
    store.identify(LeadInput("P1"), anonymous_id="anon-p")
    store.ingest_events([EventInput("demo_request", clock.now - SECOND, "P1")])
    store.upsert_leads([LeadInput("U1", fields={"region": "EU"})])
    with store.db.write() as conn:
        add_outcomes(conn, [OutcomeInput("P1", "sql", clock.now - SECOND)], "api")
        set_stage(conn, "P1", "sql", clock.now - SECOND, reason="test")
    assert (score(store, "P1"), score(store, "U1")) == (70.0, 0.0)

    out = store.alias("U1", "P1")
    assert (out.status, out.lead_id, out.merged) == ("updated", "U1", "P1")
    lead = view(store, "U1")
    assert (lead["email"], lead["profile"], lead["stage"]) == (
        "p@x.com",
        {"region": "EU", "title": "VP", "email": "p@x.com"},
        "lead",
    )
    assert [(c["from_stage"], c["to_stage"]) for c in lead["stage_changes"]] == [("lead", "sql")]
    assert score(store, "U1") == 70.0
    assert history(store, "U1") == [  # U1's own and P1's, moved over
        ("event", 0.0, 70.0),
        ("profile", None, 0.0),
        ("event", 30.0, 70.0),
        ("profile", None, 30.0),
    ]
    assert outcome_rows(store) == [("U1", "sql", clock.now - SECOND)]
    with pytest.raises(NotFound, match="it was merged into 'U1'"):
        view(store, "P1")
    with store.db.read() as conn:
        assert conn.execute(sa.select(leads.c.lead_id)).scalars().all() == ["U1"]
        assert conn.execute(sa.select(events.c.lead_id).distinct()).scalars().all() == ["U1"]
    later = store.ingest_events(
        [
            EventInput("page_view", clock.now, lead_id="P1"),
            EventInput("page_view", clock.now, email="P@x.com"),
            EventInput("page_view", clock.now, anonymous_id="anon-p"),
        ]
    )
    assert [o.lead_id for o in later] == ["U1", "U1", "U1"]
    (up,) = store.upsert_leads([LeadInput("P1", fields={"size": "200"})])
    assert (up.status, up.lead_id) == ("updated", "U1")
    with store.db.write() as conn:
        add_outcomes(conn, [OutcomeInput("P1", "won", clock.now)], "api")
    assert ("U1", "won", clock.now) in outcome_rows(store)

    again = store.alias("U1", "P1")
    assert (again.status, again.lead_id, again.merged) == ("updated", "U1", None)
    assert score(store, "U1") == 70.0


@pytest.mark.parametrize(
    "how", ["event by email", "event by id", "event by alias", "upsert by id", "outcome by id"]
)
def test_a_request_naming_a_lead_an_alias_is_merging_goes_to_the_lead_it_becomes(
    store: Store, clock: Clock, how: str
) -> None:
    """While an alias merges P9 (p@x.com, anonymous id anon-p9) into U9 (not yet committed),
    a request names P9 by its email, its id or its anonymous id: it waits for the merge, then
    goes to U9 (not to a lead that is gone, nor to a re-created P9)."""
    publish(store, V1)
    store.identify(LeadInput("P9", "p@x.com"), anonymous_id="anon-p9")
    store.ingest_events([EventInput("demo_request", clock.now - SECOND, "P9")])
    store.upsert_leads([LeadInput("U9")])

    def send() -> list[str | None]:
        if how == "event by email":
            sent = store.ingest_events([EventInput("email_open", clock.now, email="p@x.com")])
        elif how == "event by id":
            sent = store.ingest_events([EventInput("email_open", clock.now, lead_id="P9")])
        elif how == "event by alias":
            sent = store.ingest_events(
                [EventInput("email_open", clock.now, anonymous_id="anon-p9")]
            )
        elif how == "upsert by id":
            sent = store.upsert_leads([LeadInput("P9", fields={"title": "VP"})])
        else:
            with store.db.write() as conn:
                add_outcomes(conn, [OutcomeInput("P9", "won", clock.now)], "api")
            return [row[0] for row in outcome_rows(store)]
        return [o.lead_id for o in sent]

    got: list[str | None] = []
    sending = threading.Thread(target=lambda: got.extend(send()))
    with held_open(store, lambda conn: store_leads.alias_lead(conn, "U9", "P9", clock.now)):
        sending.start()
        assert_waits(store, sending)  # for the merge
    sending.join(20)
    assert got == ["U9"]
    with store.db.read() as conn:
        ids = conn.execute(sa.select(leads.c.lead_id)).scalars().all()
        owners = conn.execute(sa.select(events.c.lead_id).distinct()).scalars().all()
    assert (ids, owners) == (["U9"], ["U9"])
    if how == "upsert by id":
        assert view(store, "U9")["profile"]["title"] == "VP"


def test_an_alias_to_a_new_user_id_takes_the_lead_over(store: Store, clock: Clock) -> None:
    """P2 is hot (VP 30 + demo 40 = 70) and owned by kim; an alias makes it N2, a user id not
    stored yet: N2 takes P2's stage, owner and scores, so its history goes on in one chain
    (no second "enters hot"), and P2's old id finds N2. An alias of an id that names no lead
    (an anonymous id) merges nothing."""
    publish(store, V1)
    store.upsert_leads([LeadInput("P2", fields={"title": "VP"}, owner="kim", stage="mql")])
    store.ingest_events([EventInput("demo_request", clock.now - SECOND, "P2")])
    before = history(store, "P2")
    out = store.alias("N2", "P2")
    assert (out.status, out.lead_id, out.merged) == ("created", "N2", "P2")
    lead = view(store, "N2")
    assert (lead["owner"], lead["stage"], score(store, "N2")) == ("kim", "mql", 70.0)
    assert history(store, "N2") == before
    with pytest.raises(NotFound, match="it was merged into 'N2'"):
        view(store, "P2")
    plain = store.alias("N3", "anon-never-a-lead")
    assert (plain.status, plain.lead_id, plain.merged) == ("created", "N3", None)
    assert score(store, "N3") == 0.0


# --- lifecycle ----------------------------------------------------------------------------------


def test_set_stage_records_every_change(store: Store, clock: Clock) -> None:
    store.upsert_leads([LeadInput("G1")])
    t0 = clock.now
    with store.db.write() as conn:
        assert set_stage(conn, "G1", " MQL ", t0, reason="score 80", actor="trigger:hot")
        assert not set_stage(conn, "G1", "mql", t0 + SECOND)  # already there: nothing recorded
        assert set_stage(conn, "G1", "sql", t0 + 2 * SECOND, actor="kim")
        with pytest.raises(UsageError, match="unknown stage 'won'"):
            set_stage(conn, "G1", "won", t0)
        with pytest.raises(NotFound):
            set_stage(conn, "nobody", "sql", t0)
    lead = view(store, "G1")
    assert (lead["stage"], lead["stage_us"], lead["updated_us"]) == (
        "sql",
        t0 + 2 * SECOND,
        t0 + 2 * SECOND,
    )
    assert lead["stage_changes"] == [
        {
            "from_stage": "lead",
            "to_stage": "mql",
            "at_us": t0,
            "reason": "score 80",
            "actor": "trigger:hot",
        },
        {
            "from_stage": "mql",
            "to_stage": "sql",
            "at_us": t0 + 2 * SECOND,
            "reason": None,
            "actor": "kim",
        },
    ]


def _outcomes(store: Store) -> list[tuple[Any, ...]]:
    with store.db.read() as conn:
        rows = conn.execute(
            sa.select(
                outcomes.c.lead_id,
                outcomes.c.outcome,
                outcomes.c.ts_us,
                outcomes.c.amount,
                outcomes.c.source,
            ).order_by(outcomes.c.lead_id, outcomes.c.outcome, outcomes.c.ts_us)
        )
        return [tuple(r) for r in rows]


def test_dispositions_set_stages_and_record_outcomes_once(store: Store, clock: Clock) -> None:
    """accept: stage sql, outcome sql; reject (only with a reason): disqualified, rejected;
    recycle: recycled, no outcome; won: customer, won with its amount; lost: disqualified,
    lost. A refused call changes nothing."""
    store.upsert_leads([LeadInput(f"D{i}") for i in range(1, 6)])
    t = clock.now
    with store.db.write() as conn:
        accepted = record_disposition(conn, "D1", "accept", t, actor="kim")
        with pytest.raises(UsageError, match="a rejection needs a reason"):
            record_disposition(conn, "D2", "reject", t)
        with pytest.raises(UsageError, match="a rejection needs a reason"):
            record_disposition(conn, "D2", "reject", t, reason="  ")
        with pytest.raises(UsageError, match="unknown disposition 'maybe'"):
            record_disposition(conn, "D2", "maybe", t)
    assert view(store, "D2")["stage"] == "lead"
    assert _outcomes(store) == [("D1", "sql", t, None, "disposition")]
    with store.db.write() as conn:
        rejected = record_disposition(conn, "D2", "reject", t, reason="no budget")
        recycled = record_disposition(conn, "D3", "recycle", t)
        won = record_disposition(conn, "D4", "won", t, amount=12_000.0)
        lost = record_disposition(conn, "D5", "lost", t, reason="chose a rival")
        with pytest.raises(NotFound):
            record_disposition(conn, "nobody", "won", t)
    assert accepted == {"lead_id": "D1", "stage": "sql", "stage_changed": True, "outcome": "sql"}
    assert rejected["stage"] == "disqualified" and rejected["outcome"] == "rejected"
    assert recycled == {
        "lead_id": "D3",
        "stage": "recycled",
        "stage_changed": True,
        "outcome": None,
    }
    assert (won["stage"], won["outcome"], lost["stage"], lost["outcome"]) == (
        "customer",
        "won",
        "disqualified",
        "lost",
    )
    assert [view(store, f"D{i}")["stage"] for i in range(1, 6)] == [
        "sql",
        "disqualified",
        "recycled",
        "customer",
        "disqualified",
    ]
    assert view(store, "D2")["stage_changes"][0]["reason"] == "reject: no budget"
    assert view(store, "D1")["stage_changes"][0]["actor"] == "kim"
    assert _outcomes(store) == [
        ("D1", "sql", t, None, "disposition"),
        ("D2", "rejected", t, None, "disposition"),
        ("D4", "won", t, 12_000.0, "disposition"),
        ("D5", "lost", t, None, "disposition"),
    ]

    # A repeat of (lead, outcome, time), in one call or a later one, is ignored; the same
    # outcome at another time is another outcome; a disposition repeated at the same instant
    # changes nothing.
    store.upsert_leads([LeadInput("O1")])
    t = clock.now
    with store.db.write() as conn:
        assert add_outcomes(conn, [], "api") == 0
        first = [
            OutcomeInput("O1", "won", t, 100.0),
            OutcomeInput("O1", "won", t, 100.0),
            OutcomeInput("O1", "converted", t),
        ]
        assert add_outcomes(conn, first, "api") == 2
        assert add_outcomes(conn, first, "api") == 0
        assert add_outcomes(conn, [OutcomeInput("O1", "won", t + SECOND, 50.0)], "import") == 1
    assert [o for o in _outcomes(store) if o[0] == "O1"] == [
        ("O1", "converted", t, None, "api"),
        ("O1", "won", t, 100.0, "api"),
        ("O1", "won", t + SECOND, 50.0, "import"),
    ]
    store.upsert_leads([LeadInput("O2")])
    with store.db.write() as conn:
        assert record_disposition(conn, "O2", "accept", t)["stage_changed"] is True
        assert record_disposition(conn, "O2", "accept", t)["stage_changed"] is False
    assert [o for o in _outcomes(store) if o[0] == "O2"] == [("O2", "sql", t, None, "disposition")]
    assert len(view(store, "O2")["stage_changes"]) == 1


# --- API keys -----------------------------------------------------------------------------------


def test_a_key_is_shown_once_only_its_hash_is_kept_and_its_scopes_hold(
    store: Store, clock: Clock
) -> None:
    with store.db.write() as conn:
        key, text = create_key(conn, " ci bot ", ["read", "ingest", "read"], clock.now)
    prefix, key_id, secret = text.split("_", 2)
    assert (prefix, key_id) == ("lsk", key.id)
    assert (key.name, key.scopes, key.created_us, key.revoked_us) == (
        "ci bot",
        frozenset({"ingest", "read"}),
        clock.now,
        None,
    )
    with store.db.read() as conn:
        row = conn.execute(sa.select(api_keys)).mappings().one()
        listed = list_keys(conn)
        assert verify_key(conn, text) == key
    assert row["secret_hash"] == hashlib.sha256(secret.encode()).hexdigest()
    assert row["scopes"] == "ingest read"
    assert not any(secret in str(v) for v in row.values())
    assert listed == [key]
    assert "secret" not in str(key.summary()) and secret not in str(key.summary())

    # admin allows everything; other scopes allow only themselves
    with store.db.write() as conn:
        ingest, _ = create_key(conn, "pipeline", ["ingest"], clock.now)
        admin, _ = create_key(conn, "ops", ["admin"], clock.now)
        with pytest.raises(UsageError, match="unknown scope 'root'"):
            create_key(conn, "x", ["read", "root"], clock.now)
        with pytest.raises(UsageError, match="at least one scope"):
            create_key(conn, "x", [], clock.now)
        with pytest.raises(UsageError, match="needs a name"):
            create_key(conn, "  ", ["read"], clock.now)
    assert [ingest.allows(s) for s in ("ingest", "read", "admin")] == [True, False, False]
    assert [admin.allows(s) for s in ("ingest", "read", "admin")] == [True, True, True]
    with store.db.read() as conn:
        assert sorted(k.name for k in list_keys(conn)) == ["ci bot", "ops", "pipeline"]


def test_verify_rejects_bad_keys_and_a_key_is_revoked_once(store: Store, clock: Clock) -> None:
    """verify: None for a wrong secret, a malformed text, an unknown id or a revoked key.
    Revoking: by id or full text, once; twice is a usage error, an unknown id NotFound."""
    with store.db.write() as conn:
        key, text = create_key(conn, "web", ["read"], clock.now)
        _, other = create_key(conn, "other", ["read"], clock.now)
    secret = text.split("_", 2)[2]
    other_secret = other.split("_", 2)[2]
    with store.db.read() as conn:
        for bad in [
            f"lsk_{key.id}_{secret[:-1]}{'A' if secret[-1] != 'A' else 'B'}",
            f"lsk_{key.id}_{other_secret}",  # another key's secret
            "",
            "lsk_",
            f"lsk_{key.id}",
            f"lsk_{key.id}_",
            f"lsk__{secret}",
            f"{key.id}_{secret}",
            f"Bearer {text}",
            f"lsk_{'0' * len(key.id)}_{secret}",  # no such key
        ]:
            assert verify_key(conn, bad) is None, bad
        assert verify_key(conn, text) is not None
    with store.db.write() as conn:
        revoked = revoke_key(conn, text, clock.now + SECOND)  # the full text names the key too
    assert (revoked.id, revoked.revoked_us) == (key.id, clock.now + SECOND)
    with store.db.read() as conn:
        assert verify_key(conn, text) is None
        assert verify_key(conn, other) is not None

    with store.db.write() as conn, pytest.raises(UsageError, match="already revoked"):
        revoke_key(conn, key.id, clock.now + 2 * SECOND)
    with store.db.write() as conn, pytest.raises(NotFound, match="no API key 'feedbeef'"):
        revoke_key(conn, "feedbeef", clock.now)
    with store.db.read() as conn:
        listed = {k.id: k.revoked_us for k in list_keys(conn)}
    assert listed == {key.id: clock.now + SECOND, other.split("_")[1]: None}


@POSTGRESQL_ONLY
def test_an_ingest_transaction_locks_its_leads_once(store: Store, clock: Clock) -> None:
    """The leads an ingest transaction locked to store its events stay locked for its
    rescoring: not asked for again. Locks taken under a savepoint that was rolled back are
    not trusted (they may be gone): asked for again."""
    publish(store, V1)
    store.ingest_events([EventInput("email_open", clock.now, lead_id="K1")])
    clock.advance(seconds=1)
    with statements(store, "FOR UPDATE") as locks:
        store.ingest_events([EventInput("email_open", clock.now, lead_id="K1")])
    assert len(locks) == 1
    with store.db.write() as conn:
        savepoint = conn.begin_nested()
        assert lock_leads(conn, ["K1"]) == {"K1"}
        savepoint.rollback()
        with statements(store, "FOR UPDATE") as again:
            assert lock_leads(conn, ["K1"]) == {"K1"}
            assert lock_leads(conn, ["K1"]) == {"K1"}
        assert len(again) == 1  # asked once after the rollback, then trusted
