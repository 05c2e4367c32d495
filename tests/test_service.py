"""The HTTP service on a real socket, on SQLite and PostgreSQL: ingest, reads, models, keys,
limits and the error envelope."""

from __future__ import annotations

import base64
import json
import re
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from leadscore.engine.timeutil import iso_utc
from leadscore.store import Store
from leadscore.store.bulk import import_leads
from leadscore.store.db import database_url, open_database
from leadscore.store.keys import create_key
from tests.conftest import Clock

Serve = Callable[..., httpx.Client]
DAY = 86_400_000_000
VP = {"lead_id": "L1", "email": "ann@acme.com", "job_title": "VP Sales", "country": "US"}


def _key(store: Store, *scopes: str) -> str:
    with store.db.write() as conn:
        return create_key(conn, "test", list(scopes), store.clock())[1]


JSON_TYPE = {"Content-Type": "application/json"}


def _envelope(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code
    return body["error"]


def test_event_is_scored_before_the_response(serve: Serve) -> None:
    """b2b-default. Fit: exec-title 25 + sell-to-country 10 = 35 (grade B). Before any event,
    gone-quiet -15: score 20, cold. After a demo request now: demo 50, gone-quiet 0:
    engagement 50, score 85 -> hot, MQL, priority B1."""
    api = serve(no_auth=True)
    assert api.post("/api/v1/leads", json=VP).json()["created"] == 1
    first = api.get("/api/v1/leads/L1").json()["scores"]["b2b-default"]
    assert (first["score"], first["band"]) == (20.0, "cold")
    r = api.post("/api/v1/events", json={"lead_id": "L1", "type": "demo_request"})
    assert r.json()["accepted"] == 1
    lead = api.get("/api/v1/leads/L1").json()
    s = lead["scores"]["b2b-default"]
    assert (s["score"], s["fit"], s["engagement"]) == (85.0, 35.0, 50.0)
    assert (s["grade"], s["band"], s["mql"], s["priority"]) == ("B", "hot", True, "B1")
    assert s["explanation"]["score"] == 85.0
    assert s["as_of"] == "2026-06-30T12:00:00Z"
    history = api.get("/api/v1/leads/L1/history").json()["items"]
    assert [(h["reason"], h["old_score"], h["new_score"], h["new_band"]) for h in history] == [
        ("event", 20.0, 85.0, "hot"),
        ("profile", None, 20.0, "cold"),
    ]


def test_health_shows_how_rescoring_used_the_event_cache(serve: Serve, store: Store) -> None:
    """The first rescoring of a lead reads it in full; the next, after one more event, reads
    only that event (PostgreSQL), or nothing at all (SQLite, where the ingest writer knows
    that no one else has written: "unchecked")."""
    api = serve(no_auth=True)
    api.post("/api/v1/events", json={"lead_id": "L1", "type": "demo_request"})
    api.post("/api/v1/events", json={"lead_id": "L1", "type": "webinar_attended"})
    cache = api.get("/api/v1/health").json()["event_cache"]
    sqlite = store.db.is_sqlite
    assert {k: cache[k] for k in ("leads", "size", "hits", "extended", "misses", "unchecked")} == {
        "leads": 1,
        "size": 2,
        "hits": 0,
        "extended": 0 if sqlite else 1,
        "misses": 1,
        "unchecked": 1 if sqlite else 0,
    }
    assert cache["limit"] == 1_000_000


def test_batch_reports_bad_items_by_index_and_keeps_the_good(serve: Serve) -> None:
    api = serve(no_auth=True)
    r = api.post(
        "/api/v1/events",
        json=[
            {"lead_id": "L1", "type": "form_submit", "event_id": "a"},
            {"lead_id": "L1"},
            {"type": "form_submit"},
            {"lead_id": "L1", "type": "form_submit", "ts": "not a time"},
            {"lead_id": "L1", "type": "form_submit", "event_id": "a"},
        ],
    )
    body = r.json()
    assert r.status_code == 200
    assert [i["status"] for i in body["items"]] == ["accepted", "duplicate"]
    assert [i["index"] for i in body["items"]] == [0, 4]
    assert [e["index"] for e in body["errors"]] == [1, 2, 3]
    # the counts add up to what was received
    assert (body["received"], body["accepted"], body["duplicate"], body["error"]) == (5, 1, 1, 3)
    assert "type" in body["errors"][0]["message"]
    assert "lead_id" in body["errors"][1]["message"]
    assert body["errors"][2]["message"].startswith("ts: not a time: 'not a time'")
    # form-submit 10, counted once though sent twice
    assert api.get("/api/v1/leads/L1").json()["scores"]["b2b-default"]["engagement"] == 10.0


def test_all_bad_items_is_a_422_envelope(serve: Serve) -> None:
    api = serve(no_auth=True)
    err = _envelope(api.post("/api/v1/events", json=[{"x": 1}, {"y": 2}]), 422, "invalid")
    assert [d["index"] for d in err["details"]] == [0, 1]


def test_limits_and_malformed_bodies(serve: Serve) -> None:
    api = serve(no_auth=True, max_body_bytes=2000, max_batch=3)
    _envelope(api.post("/api/v1/events", content=b"{nope"), 400, "bad_request")
    big = [{"lead_id": "L1", "type": "x", "pad": "y" * 500} for _ in range(5)]
    _envelope(api.post("/api/v1/events", json=big), 413, "payload_too_large")
    many = [{"lead_id": "L1", "type": "x"} for _ in range(4)]
    _envelope(api.post("/api/v1/events", json=many), 413, "payload_too_large")
    r = api.post("/api/v1/events", content=b"a=1", headers={"content-type": "text/csv"})
    _envelope(r, 415, "unsupported_media_type")
    long_type = {"lead_id": "L1", "type": "t" * 201}
    err = _envelope(api.post("/api/v1/events", json=long_type), 422, "invalid")
    assert "200" in err["message"]
    _envelope(api.get("/api/v1/leads/none"), 404, "not_found")
    _envelope(api.get("/api/v1/leads", params={"sort": "colour"}), 400, "bad_request")
    _envelope(api.get("/api/v1/leads", params={"limit": 0}), 422, "invalid")
    _envelope(api.get("/api/v1/nothing-here"), 404, "not_found")
    # JSON sent as text/plain or with no type is read on every route, not only the ingest
    # ones; a form (curl -d's default type) is a 415 that says what to send
    api.post("/api/v1/leads", json={"lead_id": "L1"})
    body = b'{"disposition": "recycle"}'
    for headers in ({"content-type": "text/plain"}, {}):
        r = api.post("/api/v1/leads/L1/disposition", content=body, headers=headers)
        assert r.status_code == 200 and r.json()["stage"] == "recycled", (headers, r.text)
    form = {"content-type": "application/x-www-form-urlencoded"}
    r = api.post("/api/v1/leads/L1/disposition", content=body, headers=form)
    err = _envelope(r, 415, "unsupported_media_type")
    assert err["message"].startswith("send JSON (Content-Type: application/json)")


def test_properties_over_the_limit_are_refused_per_item(serve: Serve) -> None:
    """The properties' size is that of their JSON (non-ASCII escaped, as json.dumps writes
    it), checked exactly whenever a quick bound does not clear them."""
    api = serve(no_auth=True, max_properties_bytes=100)
    items = [
        {"lead_id": "L1", "type": "x", "note": "a" * 80},  # 92 bytes as JSON
        {"lead_id": "L1", "type": "x", "note": "a" * 40},  # bound 538, JSON 52
        {"lead_id": "L1", "type": "x", "note": "é" * 20},  # JSON 132 (\u00e9)
        {"lead_id": "L1", "type": "x", "nested": {"k": "a" * 120}},
    ]
    body = api.post("/api/v1/events", json=items).json()
    assert [i["index"] for i in body["items"]] == [0, 1]
    assert [e["index"] for e in body["errors"]] == [2, 3]
    assert body["errors"][0]["message"] == "the properties take more than 100 bytes as JSON"


def test_json_bound_is_never_below_the_json() -> None:
    import json
    import random

    from leadscore.service.payloads import _json_bound

    rng = random.Random(0)
    chars = 'az09 "\\\x00\x1f\u2028é😀'
    text = lambda n: "".join(rng.choice(chars) for _ in range(n))  # noqa: E731
    for _ in range(3000):
        value = {
            text(rng.randint(0, 6)): rng.choice(
                [
                    None,
                    True,
                    10**15 - 1,
                    -(10**15) + 1,
                    1e-300 / 3,
                    -1 / 3,
                    float("-inf"),
                    float("nan"),
                    text(rng.randint(0, 20)),
                ]
            )
            for _ in range(rng.randint(0, 5))
        }
        assert _json_bound(value) >= len(json.dumps(value)), value
    assert _json_bound({"k": [1]}) == _json_bound({"k": 10**15}) == float("inf")


def test_keys_and_scopes(serve: Serve, store: Store) -> None:
    api = serve()
    ingest, read = _key(store, "ingest"), _key(store, "read")
    err = _envelope(api.get("/api/v1/leads"), 401, "unauthorized")
    assert "leadscore keys create" in err["message"]
    bad = {"Authorization": "Bearer lsk_nope_nope"}
    _envelope(api.get("/api/v1/leads", headers=bad), 401, "unauthorized")
    as_ingest = {"Authorization": f"Bearer {ingest}"}
    assert api.post("/api/v1/leads", json=VP, headers=as_ingest).status_code == 200
    _envelope(api.get("/api/v1/leads/L1", headers=as_ingest), 403, "forbidden")
    as_read = {"Authorization": f"Bearer {read}"}
    assert api.get("/api/v1/leads/L1", headers=as_read).status_code == 200
    # a key that may only ingest (it may sit in a web form) cannot tell whether an email is
    # a known lead, nor learn a lead's id: created and updated are both "stored"
    known = {"email": "ANN@acme.com", "job_title": "CTO"}
    for new in ({"email": "kim@acme.com"}, known):
        r = api.post("/api/v1/leads", json=new, headers=as_ingest).json()
        assert (r["stored"], r["items"]) == (1, [{"index": 0, "status": "stored"}]), r
    r = api.post("/api/v1/events", json={**known, "type": "x", "event_id": "e1"}, headers=as_ingest)
    assert r.json()["items"] == [{"index": 0, "status": "stored"}]  # not accepted/anonymous
    r = api.post("/api/v1/events", json={**known, "type": "x", "event_id": "e1"}, headers=as_ingest)
    assert r.json()["items"] == [{"index": 0, "status": "stored"}]  # nor duplicate
    # a lead's routes do not name the lead a merged id became
    api.post("/api/v1/events", json={"email": "kim@corp.com", "type": "x"}, headers=as_ingest)
    admin = {"Authorization": f"Bearer {_key(store, 'admin')}"}
    api.post("/api/v1/leads", json={"lead_id": "CRM-42", "email": "kim@corp.com"}, headers=admin)
    r = api.post("/api/v1/leads/kim@corp.com/stage", json={"stage": "sql"}, headers=admin)
    assert "it was merged into 'CRM-42'" in _envelope(r, 404, "not_found")["message"]
    r = api.post("/api/v1/leads/kim@corp.com/stage", json={"stage": "sql"}, headers=as_ingest)
    assert _envelope(r, 404, "not_found")["message"] == "no lead 'kim@corp.com'"
    r = api.post(
        "/api/v1/outcomes", json={"lead_id": "L9", "outcome": "won", "ts": 0}, headers=as_ingest
    ).json()
    assert r == {"received": 1, "added": 1, "repeated": 0, "errors": []}
    crm = {"Authorization": f"Bearer {_key(store, 'ingest', 'read')}"}
    r = api.post("/api/v1/leads", json=known, headers=crm).json()
    assert r["items"] == [{"index": 0, "status": "updated", "lead_id": "L1"}]
    r = api.post("/api/v1/outcomes", json={"lead_id": "L8", "outcome": "won", "ts": 0}, headers=crm)
    assert r.json()["outcomes_for_unknown_leads"] == 1
    _envelope(api.post("/api/v1/events", json={}, headers=as_read), 403, "forbidden")
    _envelope(api.post("/api/v1/models", content="x", headers=as_ingest), 403, "forbidden")
    # Segment senders pass the write key as the Basic user name
    basic = {"Authorization": "Basic " + base64.b64encode(f"{ingest}:".encode()).decode()}
    r = api.post("/v1/track", json={"userId": "L1", "event": "demo_request"}, headers=basic)
    assert r.json()["success"] is True and r.json()["items"] == [{"index": 0, "status": "stored"}]
    r = api.post("/v1/identify", json={"userId": "L1", "traits": {"a": 1}}, headers=basic)
    assert r.json()["items"] == [{"index": 0, "status": "stored"}]
    # a body over the limit is refused before the key is looked at, on every route (routes
    # reading a body into a model read it whole before), sent whole or in chunks
    huge = b"[" + b" " * 2_000_000 + b"]"
    for path in ("/api/v1/keys", "/api/v1/segments/x", "/api/v1/events"):
        _envelope(api.post(path, content=huge), 413, "payload_too_large")
    chunks = iter([b"[", b" " * 1_500_000, b"]"])
    assert api.post("/api/v1/keys", content=chunks).status_code == 413
    # the outcomes upload takes a file over the usual limit
    csv_file = b"lead_id,outcome,ts\n" + b"L1,won,2026-07-01\n" * 70_000
    headers = {**as_ingest, "content-type": "text/csv"}
    r = api.post("/api/v1/outcomes", content=csv_file, headers=headers)
    assert len(csv_file) > 1_000_000 and r.status_code == 200, r.text[:200]
    # without a key it is refused before it is read (the key is checked first)
    r = api.post("/api/v1/outcomes", content=csv_file, headers={"content-type": "text/csv"})
    _envelope(r, 401, "unauthorized")


def test_segment_calls(serve: Serve) -> None:
    """An anonymous visitor views pricing (page_view: pricing-page 15 + page-views 3), is
    identified, then requests a demo (50) sent twice with one messageId: engagement 68."""
    api = serve(no_auth=True)
    r = api.post("/v1/page", json={"anonymousId": "anon-1", "properties": {"url": "/pricing"}})
    assert r.json()["items"][0]["status"] == "anonymous"
    r = api.post(
        "/v1/identify",
        json={
            "userId": "u1",
            "anonymousId": "anon-1",
            "traits": {"email": "Kim@Acme.com", "job_title": "CTO", "address": {"country": "US"}},
        },
    )
    assert r.json()["created"] == 1
    track = {"userId": "u1", "event": "demo_request", "messageId": "m-1"}
    batch = {"batch": [{**track, "type": "track"}, {**track, "type": "track"}]}
    r = api.post("/v1/batch", json=batch)
    assert [i["status"] for i in r.json()["items"]] == ["accepted", "duplicate"]
    lead = api.get("/api/v1/leads/u1").json()
    assert lead["email"] == "kim@acme.com"
    assert lead["profile"]["address.country"] == "US"
    assert lead["scores"]["b2b-default"]["engagement"] == 68.0
    r = api.post("/v1/alias", json={"previousId": "anon-2", "userId": "u1"})
    assert r.status_code == 200
    r = api.post("/v1/track", json={"anonymousId": "anon-2", "event": "form_submit"})
    assert r.json()["items"][0]["lead_id"] == "u1"
    err = _envelope(api.post("/v1/track", json={"event": "x"}), 422, "invalid")
    assert "userId" in err["message"]


def test_a_segment_alias_of_an_identified_lead_merges_the_two(serve: Serve) -> None:
    """u7 was identified (a CTO in the US, kim@acme.com) and requested a demo; the CRM knows
    the same person as crm-7 (no events yet). An alias with previousId u7 and userId crm-7
    merges u7 into crm-7: crm-7 has the events, the profile and so u7's score (the same
    profile and events at the same time), its item says what was merged, u7's addresses
    answer that it was merged, and what is sent for u7 afterwards goes to crm-7."""
    api = serve(no_auth=True)
    traits = {"email": "kim@acme.com", "job_title": "CTO", "country": "US"}
    api.post("/v1/identify", json={"userId": "u7", "traits": traits})
    api.post("/v1/track", json={"userId": "u7", "event": "demo_request"})
    api.post("/v1/identify", json={"userId": "crm-7", "traits": {"plan": "pro"}})
    before = api.get("/api/v1/leads/u7").json()["scores"]["b2b-default"]["score"]
    r = api.post("/v1/alias", json={"previousId": "u7", "userId": "crm-7"})
    assert r.json()["items"] == [
        {"index": 0, "status": "updated", "lead_id": "crm-7", "merged": "u7"}
    ]
    lead = api.get("/api/v1/leads/crm-7?detail=true").json()
    assert lead["scores"]["b2b-default"]["score"] == before > 0
    assert (lead["email"], lead["profile"]["job_title"], lead["profile"]["plan"]) == (
        "kim@acme.com",
        "CTO",
        "pro",
    )
    assert [e["type"] for e in lead["events"]] == ["demo_request"]
    err = _envelope(api.get("/api/v1/leads/u7"), 404, "not_found")
    assert err["message"] == "no lead 'u7': it was merged into 'crm-7'"
    r = api.post("/v1/track", json={"userId": "u7", "event": "webinar_attended"})
    assert r.json()["items"][0]["lead_id"] == "crm-7"


def test_an_email_is_one_whichever_way_its_accents_are_written(
    serve: Serve, store: Store, tmp_path: Path
) -> None:
    """`josé@acme.com` with its `é` as one character (NFC) or as `e` and a combining accent
    (NFD), in any case and with spaces around it, is one email, whichever way it comes in: an
    event by email makes the lead keyed by the composed form, the other form's events and
    upsert find it, a CRM file's import claims it for CRM-1 (merging it), and Segment's
    identify and later events find CRM-1. One lead in the end, with the composed email."""
    api = serve(no_auth=True)
    composed, decomposed = "Jos\u00e9@Acme.com", "Jose\u0301@acme.COM"
    key = "jos\u00e9@acme.com"

    def lead_of(r: httpx.Response) -> str:
        assert r.status_code == 200, r.text
        return str(r.json()["items"][0]["lead_id"])

    assert lead_of(api.post("/api/v1/events", json={"email": decomposed, "type": "x"})) == key
    assert lead_of(api.post("/api/v1/events", json={"email": composed, "type": "x"})) == key
    r = api.post("/api/v1/leads", json={"email": f" {decomposed} ", "job_title": "CTO"})
    assert r.json()["items"] == [{"index": 0, "status": "updated", "lead_id": key}]
    crm = tmp_path / "crm.csv"
    crm.write_text(f"lead_id,email\nCRM-1,{decomposed.upper()}\n", encoding="utf-8")
    assert import_leads(store, crm).stored == 1
    r = api.post("/v1/identify", json={"userId": "CRM-1", "traits": {"email": composed}})
    assert r.json()["items"] == [{"index": 0, "status": "updated", "lead_id": "CRM-1"}]
    assert lead_of(api.post("/api/v1/events", json={"email": decomposed, "type": "x"})) == "CRM-1"
    leads = api.get("/api/v1/leads").json()["items"]
    assert [lead["lead_id"] for lead in leads] == ["CRM-1"]
    lead = api.get("/api/v1/leads/CRM-1?detail=true").json()
    assert (lead["email"], lead["profile"]["email"], lead["events_total"]) == (key, key, 3)


def test_a_sender_clock_running_ahead_does_not_hide_its_events(
    serve: Serve, store: Store, clock: Clock
) -> None:
    """A demo request stamped a minute ahead of the server's clock (the sender's clock runs
    fast) counts at once, stored as now; one stamped a day ahead counts from its time on.
    Segment's sentAt corrects a sender's clock as Segment does: the event's time less how
    far the sender's clock was ahead when it sent the message (sentAt less the time received),
    sentAt on the message or on the batch."""
    api = serve(no_auth=True)
    now = clock.now
    api.post(
        "/api/v1/events",
        json={"lead_id": "F1", "type": "demo_request", "ts": iso_utc(now + 60_000_000)},
    )
    assert api.get("/api/v1/leads/F1").json()["scores"]["b2b-default"]["engagement"] == 50.0
    api.post(
        "/api/v1/events", json={"lead_id": "F2", "type": "demo_request", "ts": iso_utc(now + DAY)}
    )
    assert api.get("/api/v1/leads/F2").json()["scores"]["b2b-default"]["engagement"] < 50.0
    ahead = 3_600_000_000  # the sender's clock runs an hour fast
    track = {"type": "track", "userId": "S1", "event": "demo_request", "messageId": "s1"}
    api.post(
        "/v1/track",
        json={
            **track,
            "timestamp": iso_utc(now + ahead - 7_000_000),
            "sentAt": iso_utc(now + ahead),
        },
    )
    batch = [
        {**track, "userId": "S2", "messageId": "s2", "timestamp": iso_utc(now + ahead - 9_000_000)},
        # RudderStack's senders give originalTimestamp, not timestamp
        {**track, "userId": "S3", "messageId": "s3", "originalTimestamp": iso_utc(now + ahead)},
        # a forward (Segment's own webhook) says when it was received, and its timestamp is
        # corrected already: it happened 10 s ago by the forwarder's clock (2 s before it was
        # sent, by a sender's clock 5 s fast)
        {
            **track,
            **{"userId": "S4", "messageId": "s4", "timestamp": iso_utc(now - 10_000_000)},
            **{"originalTimestamp": iso_utc(now - 5_000_000)},
            **{"sentAt": iso_utc(now - 3_000_000), "receivedAt": iso_utc(now - 8_000_000)},
        },
        # a forward with only the sender's times is corrected against receivedAt
        {
            **track,
            **{"userId": "S7", "messageId": "s7", "originalTimestamp": iso_utc(now - 5_000_000)},
            **{"sentAt": iso_utc(now - 3_000_000), "receivedAt": iso_utc(now - 8_000_000)},
        },
        # a replay of an archive: sent a month ago, its own time stands
        {
            **track,
            **{"userId": "S5", "messageId": "s5", "timestamp": iso_utc(now - 30 * DAY)},
            "sentAt": iso_utc(now - 30 * DAY + 1_000_000),
        },
        # an unreadable sentAt corrects nothing
        {**track, "userId": "S6", "messageId": "s6", "timestamp": iso_utc(now), "sentAt": "soon"},
    ]
    api.post("/v1/batch", json={"batch": batch, "sentAt": iso_utc(now + ahead)})
    with store.db.read() as conn:
        stamps = dict(conn.exec_driver_sql("SELECT lead_id, ts_us FROM events").all())
    assert stamps == {
        "F1": now,
        "F2": now + DAY,
        "S1": now - 7_000_000,
        "S2": now - 9_000_000,
        "S3": now,
        "S4": now - 10_000_000,
        "S7": now - 10_000_000,
        "S5": now - 30 * DAY,
        "S6": now,
    }


def test_gzip_bodies_are_read_and_bounded_when_inflated(serve: Serve) -> None:
    """Segment's and RudderStack's senders may gzip their bodies; the limit counts what the
    body inflates to (a few kilobytes of zeros inflating to megabytes are refused)."""
    import gzip
    import json as json_

    api = serve(no_auth=True)
    batch = {"batch": [{"type": "track", "userId": "Z1", "event": "demo_request"}]}
    zipped = {**JSON_TYPE, "Content-Encoding": "gzip"}
    r = api.post("/v1/batch", content=gzip.compress(json_.dumps(batch).encode()), headers=zipped)
    assert r.status_code == 200 and r.json()["accepted"] == 1, r.text
    events = [{"lead_id": "Z2", "type": "x"}]
    r = api.post(
        "/api/v1/events", content=gzip.compress(json_.dumps(events).encode()), headers=zipped
    )
    assert r.status_code == 200 and r.json()["accepted"] == 1, r.text
    bomb = gzip.compress(b"[" + b" " * 20_000_000 + b"]")
    assert len(bomb) < 100_000
    _envelope(api.post("/api/v1/events", content=bomb, headers=zipped), 413, "payload_too_large")
    err = _envelope(api.post("/v1/batch", content=b"not gzip", headers=zipped), 400, "bad_request")
    assert "not valid gzip" in err["message"]
    cut = gzip.compress(json_.dumps(batch).encode())[:-12]
    err = _envelope(api.post("/v1/batch", content=cut, headers=zipped), 400, "bad_request")
    assert err["message"] == "the gzip body is cut short"
    # gzip members one after another are one body; other bytes after the gzip data are not
    halves = json_.dumps(batch).encode()
    two = gzip.compress(halves[:20]) + gzip.compress(halves[20:])
    r = api.post("/v1/batch", content=two, headers=zipped)
    assert r.status_code == 200 and r.json()["accepted"] == 1, r.text
    tail = gzip.compress(halves) + b"GARBAGE"
    err = _envelope(api.post("/v1/batch", content=tail, headers=zipped), 400, "bad_request")
    assert err["message"] == "the body holds bytes after its gzip data"
    # the outcomes upload, whose limit is larger, streams to its route (read after the key's
    # check): not gzip there
    csv_zipped = {"Content-Type": "text/csv", "Content-Encoding": "gzip"}
    r = api.post(
        "/api/v1/outcomes", content=gzip.compress(b"lead_id,outcome,ts\n"), headers=csv_zipped
    )
    assert _envelope(r, 415, "unsupported_media_type")["message"].endswith("send the body as is")
    brotli = {**JSON_TYPE, "Content-Encoding": "br"}
    err = _envelope(
        api.post("/v1/batch", content=b"x", headers=brotli), 415, "unsupported_media_type"
    )
    assert "'br' is not taken" in err["message"]


def test_segment_senders_of_every_kind_reach_it(serve: Serve, store: Store) -> None:
    """Segment's browser library posts from the site's pages (any origin: CORS) to short
    paths with the write key in the body; analytics-ruby posts batches to /v1/import. A
    browser's own credentials (a Basic header it resends) still cannot write cross-site."""
    api = serve()
    key = _key(store, "ingest")
    site = {"Origin": "https://www.example.com", "Sec-Fetch-Site": "cross-site"}
    r = api.options("/v1/t", headers={**site, "Access-Control-Request-Method": "POST"})
    assert r.status_code == 204 and r.headers["access-control-allow-origin"] == "*"
    track = {"userId": "W1", "event": "demo_request", "writeKey": key}
    r = api.post("/v1/t", content=json.dumps(track), headers={**site, "Content-Type": "text/plain"})
    assert r.status_code == 200 and r.json()["stored"] == 1, r.text
    assert r.headers["access-control-allow-origin"] == "*"
    r = api.post("/v1/t", json={**track, "writeKey": "lsk_nope_nope"}, headers=site)
    _envelope(r, 401, "unauthorized")
    basic = {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}
    r = api.post("/v1/t", json={"userId": "W1", "event": "x"}, headers={**site, **basic})
    _envelope(r, 403, "forbidden")
    # what no key looks like is refused as unknown, without a lookup; every 401 challenges
    for body in (b"[" * 100_000, json.dumps({"writeKey": "lsk_a\u0000b_x"}).encode()):
        r = api.post("/v1/t", content=body, headers=JSON_TYPE)
        assert r.status_code in (400, 401), r.text  # not a 500
    r = api.post("/v1/t", json={"writeKey": "lsk_nope_nope", "userId": "W1", "event": "x"})
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Basic")
    batch = {"batch": [{"type": "identify", "userId": "W2", "traits": {"a": 1}}]}
    r = api.post("/v1/import", json=batch, headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200 and r.json()["stored"] == 1, r.text
    with store.db.read() as conn:
        stored = conn.exec_driver_sql("SELECT lead_id, properties FROM events").all()
    assert [r[0] for r in stored] == ["W1"] and "lsk_" not in str(stored)  # no key kept


def test_segment_reserved_traits_are_the_profile_fields_models_read(serve: Serve) -> None:
    """A standard identify (title, company.industry, company.employee_count, address.country)
    scores as the same person sent with flat fields; traits in the context count too."""
    api = serve(no_auth=True)
    reserved = {
        "title": "CEO",
        "email": "ceo@bigco.com",
        "company": {"name": "BigCo", "industry": "Software", "employee_count": 1200},
        "address": {"country": "US"},
    }
    flat = {"job_title": "CEO", "company": "BigCo", "industry": "Software", "employees": 1200}
    api.post("/v1/identify", json={"userId": "R1", "traits": reserved})
    api.post("/v1/identify", json={"userId": "R2", "context": {"traits": reserved}})
    api.post("/api/v1/leads", json={"lead_id": "R3", **flat, "country": "US"})
    scores = [api.get(f"/api/v1/leads/R{i}").json()["scores"]["b2b-default"] for i in (1, 2, 3)]
    assert [(s["fit"], s["grade"]) for s in scores] == [(scores[2]["fit"], scores[2]["grade"])] * 3
    assert scores[2]["fit"] >= 50
    lead = api.get("/api/v1/leads/R1").json()
    assert lead["email"] == "ceo@bigco.com" and lead["profile"]["title"] == "CEO"
    # a field the message gives itself is kept
    api.post(
        "/v1/identify", json={"userId": "R4", "traits": {"title": "CEO", "job_title": "Intern"}}
    )
    assert api.get("/api/v1/leads/R4").json()["profile"]["job_title"] == "Intern"


def test_identifies_in_a_batch_are_taken_in_order(serve: Serve) -> None:
    """Identifies in a row are stored together (1,000 took 7 s one by one), in the batch's
    order with the events between them: the last word on a field wins."""
    api = serve(no_auth=True)
    batch = [
        {"type": "identify", "userId": "B1", "traits": {"plan": "free"}},
        {"type": "identify", "userId": "B1", "traits": {"plan": "pro", "email": "b1@x.com"}},
        {"type": "track", "userId": "B1", "event": "demo_request"},
        {"type": "identify", "userId": "B1", "traits": {"plan": "enterprise"}},
        {"type": "identify", "userId": "B2"},
        {"type": "identify", "anonymousId": "a-9", "userId": "B2", "traits": {"x": 1}},
    ]
    r = api.post("/v1/batch", json={"batch": batch})
    assert r.status_code == 200 and r.json()["errors"] == [], r.text
    assert [i["index"] for i in r.json()["items"]] == list(range(6))
    b1 = api.get("/api/v1/leads/B1").json()
    assert (b1["profile"]["plan"], b1["email"]) == ("enterprise", "b1@x.com")
    assert b1["scores"]["b2b-default"]["engagement"] == 50.0
    assert api.get("/api/v1/leads/B2").json()["profile"]["x"] == 1


def test_segment_messages_as_senders_write_them(serve: Serve) -> None:
    """Numbers as ids are their text, null objects are empty ones, an empty userId beside an
    anonymousId is an anonymous message: Segment's senders write all of these."""
    api = serve(no_auth=True)
    r = api.post(
        "/v1/batch",
        json={
            "batch": [
                {"type": "track", "userId": 12345, "event": "demo_request", "properties": None},
                {"type": "identify", "userId": 12345, "traits": None, "context": None},
                {"type": "track", "userId": "", "anonymousId": 77, "event": "webinar_attended"},
            ]
        },
    )
    assert r.status_code == 200 and r.json()["errors"] == [], r.text
    assert [i["lead_id"] for i in r.json()["items"]][:2] == ["12345", "12345"]
    assert api.get("/api/v1/leads/12345").json()["scores"]["b2b-default"]["engagement"] == 50.0


def test_segment_routes_say_what_a_call_is_and_nested_values_stay_json(serve: Serve) -> None:
    """A ``type`` in the body of /v1/identify, /v1/track or /v1/page does not make it another
    call (Segment's endpoints decide); a list as a track's item is refused as the native API
    refuses it; objects inside a trait's list are kept as JSON text."""
    api = serve(no_auth=True)
    r = api.post(
        "/v1/identify",
        json={"userId": "SEG7", "type": "track", "event": "demo_request", "traits": {"k": "v"}},
    )
    assert r.status_code == 200 and r.json()["created"] == 1, r.text
    lead = api.get("/api/v1/leads/SEG7").json()
    assert lead["profile"]["k"] == "v"
    assert lead["scores"]["b2b-default"]["engagement"] == -15.0  # gone quiet: no event stored
    r = api.post("/v1/track", json={"userId": "SEG7", "type": "identify", "event": "demo_request"})
    assert [i["status"] for i in r.json()["items"]] == ["accepted"]
    r = api.post("/v1/page", json={"userId": "SEG7", "type": "alias", "previousId": "a-1"})
    assert [i["status"] for i in r.json()["items"]] == ["accepted"]
    scores = api.get("/api/v1/leads/SEG7").json()["scores"]["b2b-default"]
    assert scores["engagement"] >= 50  # the demo request and the page view
    r = api.post(
        "/v1/track",
        json={"userId": "SEG9", "event": "x", "messageId": "i-1", "properties": {"item": ["x"]}},
    )
    assert [i["status"] for i in r.json()["items"]] == ["accepted"]  # kept as a property
    (event,) = api.get("/api/v1/leads/SEG9", params={"detail": "true"}).json()["events"]
    assert event["item"] is None and event["properties"]["item"] == ["x"]
    traits = {"n": [{"a": 1}, "b", 2], "c": [{"city": "Zürich"}]}
    r = api.post("/v1/identify", json={"userId": "SEG8", "traits": traits})
    assert r.status_code == 200
    profile = api.get("/api/v1/leads/SEG8").json()["profile"]
    assert profile["n"] == '{"a": 1}, b, 2' and profile["c"] == '{"city": "Zürich"}'


def test_what_cannot_be_stored_as_an_id_is_refused_by_item(serve: Serve) -> None:
    """An email becomes the id of a lead known by it alone; one longer than an id can be
    (200) is an error of its item (PostgreSQL failed the request, SQLite kept a longer id).
    A model whose name is longer than the store keeps is refused with a model error."""
    api = serve(no_auth=True)
    email = "a" * 250 + "@x.com"
    r = api.post(
        "/api/v1/events",
        json=[{"email": email, "type": "x"}, {"lead_id": "E1", "email": email, "type": "x"}],
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["accepted"] == 1 and [e["index"] for e in body["errors"]] == [0]
    assert "an email longer than 200 characters cannot be a new lead's id" in str(body["errors"])
    # the long email now names E1, which events and upserts by it find
    r = api.post("/api/v1/leads", json={"email": email.upper(), "job_title": "VP"})
    assert r.json()["items"][0]["lead_id"] == "E1"
    r = api.post("/api/v1/leads", json={"email": "b" + email, "job_title": "VP"})
    assert "cannot be a new lead's id" in _envelope(r, 422, "invalid")["message"]
    name = "n" * 300
    r = api.post(
        "/api/v1/models",
        content=f"version: 1\nname: {name}\nbands: {{cold: 0}}\n",
        headers={"Content-Type": "application/yaml"},
    )
    err = _envelope(r, 422, "invalid_model")
    assert "the store keeps names of at most 200 characters" in str(err)
    assert err["details"][0]["line"] == 2
    # the editor's check says so too (it said valid, and posting failed)
    checked = api.post(
        "/api/v1/models/check",
        content=f"version: 1\nname: {name}\nbands: {{cold: 0}}\n",
        headers={"Content-Type": "application/yaml"},
    ).json()
    assert not checked["valid"] and checked["errors"][0]["line"] == 2


def test_profile_fields_whose_names_hold_quotes_filter_the_list(serve: Serve) -> None:
    """SQLite's JSON paths cannot name a key with a double quote in it (a 500 before); both
    stores find the lead by such a field, true/false spelt as the evaluators spell them."""
    api = serve(no_auth=True)
    api.post("/api/v1/leads", json=[{"lead_id": "Q1", 'we"ird': "v", 'is"ok': True, "a\\b": 1}])
    api.post("/api/v1/leads", json=[{"lead_id": "Q2", 'we"ird': "w", 'is"ok': False}])
    for query, expected in (
        ('we"ird=v', ["Q1"]),
        ('is"ok=true', ["Q1"]),
        ('is"ok=false', ["Q2"]),
        ("a\\b=1", ["Q1"]),
    ):
        name, value = query.split("=")
        r = api.get("/api/v1/leads", params={name: value, "sort": "lead_id"})
        assert r.status_code == 200, r.text
        assert [i["lead_id"] for i in r.json()["items"]] == expected, query


def test_lead_list_filters_and_pages(serve: Serve) -> None:
    api = serve(no_auth=True)
    leads = [
        {"lead_id": f"L{i:02}", "job_title": "VP" if i % 3 == 0 else "Analyst", "country": c}
        for i, c in enumerate(["US", "DE", "US", "FR", "US", "US", "DE"])
    ]
    api.post("/api/v1/leads", json=leads)
    api.post("/api/v1/events", json={"lead_id": "L05", "type": "demo_request"})
    us = api.get("/api/v1/leads", params={"country": "US", "sort": "lead_id"}).json()
    assert [i["lead_id"] for i in us["items"]] == ["L00", "L02", "L04", "L05"]
    hot = api.get("/api/v1/leads", params={"band": "hot"}).json()["items"]
    assert [i["lead_id"] for i in hot] == []
    top = api.get("/api/v1/leads", params={"sort": "-score", "limit": 1}).json()
    assert top["items"][0]["lead_id"] == "L05"
    seen: list[str] = []
    params: dict[str, Any] = {"sort": "-score", "limit": 2}
    while True:
        page = api.get("/api/v1/leads", params=params).json()
        seen += [i["lead_id"] for i in page["items"]]
        if not page["next_cursor"]:
            break
        params["cursor"] = page["next_cursor"]
    assert sorted(seen) == [f"L{i:02}" for i in range(7)]
    assert len(seen) == 7
    # one "-" only; stages are a fixed list, in any case
    err = _envelope(api.get("/api/v1/leads", params={"sort": "--score"}), 400, "bad_request")
    assert "cannot sort by '--score'" in err["message"]
    err = _envelope(api.get("/api/v1/leads", params={"stage": "nope"}), 400, "bad_request")
    assert "unknown stage 'nope'; stages are subscriber, lead" in err["message"]
    assert len(api.get("/api/v1/leads", params={"stage": "LEAD"}).json()["items"]) == 7
    # bands and grades as the sheet's model names them, in any case; - for none
    assert [i["lead_id"] for i in api.get("/api/v1/leads?band=HOT,Cold").json()["items"]] == [
        i["lead_id"] for i in api.get("/api/v1/leads?band=hot,cold").json()["items"]
    ]
    err = _envelope(api.get("/api/v1/leads", params={"band": "purple"}), 400, "bad_request")
    assert err["message"] == (
        "unknown band 'purple' on this sheet: bands are hot, warm, cold (- for none)"
    )
    err = _envelope(api.get("/api/v1/leads.csv", params={"grade": "Z"}), 400, "bad_request")
    assert "unknown grade 'Z' on this sheet: grades are A, B, C, D, F" in err["message"]
    assert api.get("/api/v1/leads", params={"grade": "-"}).json()["items"] == []


def test_owner_names_are_kept_without_spaces_around(serve: Serve) -> None:
    """An owner typed with a stray space is the same owner in the lead and in the filter;
    an empty owner clears it."""
    api = serve(no_auth=True)
    api.post("/api/v1/leads", json=[{"lead_id": "L1", "owner": " Ann "}, {"lead_id": "L2"}])
    assert api.get("/api/v1/leads/L1").json()["owner"] == "Ann"
    listed = api.get("/api/v1/leads", params={"owner": "Ann "}).json()["items"]
    assert [i["lead_id"] for i in listed] == ["L1"]
    api.post("/api/v1/leads", json={"lead_id": "L1", "owner": "  "})
    assert api.get("/api/v1/leads/L1").json()["owner"] is None


def test_a_lead_is_erased_with_everything_recorded_about_it(serve: Serve, store: Store) -> None:
    """DELETE /api/v1/leads/ID (admin) removes the lead, its events (also those it sent while
    anonymous), scores, history, outcomes, stage changes, firings and webhook calls; the other
    leads keep theirs."""
    from leadscore.store.triggers import parse_triggers, save_triggers

    api = serve(no_auth=True)
    hook = "{webhook: {url: 'http://127.0.0.1:9/h'}}"
    triggers = f"triggers:\n  - {{id: t, when: {{crosses: 30}}, actions: [{hook}]}}\n"
    with store.db.write() as conn:
        save_triggers(conn, parse_triggers(triggers), store.clock())
    api.post("/v1/track", json={"anonymousId": "anon-1", "event": "page_view"})
    api.post("/v1/identify", json={"userId": "E1", "anonymousId": "anon-1"})
    api.post("/api/v1/leads", json=[{"lead_id": "E1", "email": "e1@x.com"}, {"lead_id": "E2"}])
    for lead in ("E1", "E2"):
        api.post("/api/v1/events", json={"lead_id": lead, "type": "demo_request"})
        api.post(f"/api/v1/leads/{lead}/disposition", json={"disposition": "won"})
    r = api.delete("/api/v1/leads/E1")
    assert r.status_code == 200, r.text
    deleted = r.json()["deleted"]
    assert (deleted["leads"], deleted["events"], deleted["trigger firings"]) == (1, 2, 1)
    assert deleted["webhook calls"] == 1 and deleted["outcomes"] == 1
    _envelope(api.get("/api/v1/leads/E1"), 404, "not_found")
    _envelope(api.delete("/api/v1/leads/E1"), 404, "not_found")
    with store.db.read() as conn:
        for table in (
            "events",
            "scores",
            "score_history",
            "outcomes",
            "stage_changes",
            "trigger_firings",
            "aliases",
        ):
            left = conn.exec_driver_sql(f"SELECT count(*) FROM {table} WHERE lead_id = 'E1'")
            assert left.scalar_one() == 0, table
        assert conn.exec_driver_sql("SELECT count(*) FROM outbox").scalar_one() == 1  # E2's
    assert api.get("/api/v1/leads/E2").json()["scores"]["b2b-default"]["engagement"] == 50.0
    # anonymous events that arrive later under the erased id's alias make no ghost of it
    api.post("/v1/track", json={"anonymousId": "anon-1", "event": "page_view"})
    _envelope(api.get("/api/v1/leads/E1"), 404, "not_found")
    # the id used again is a new lead: no cache of the server remembers the old one's events
    for lead in ("E1", "E3"):
        api.post("/api/v1/events", json={"lead_id": lead, "type": "webinar_attended"})
    again, fresh = (
        api.get(f"/api/v1/leads/{i}").json()["scores"]["b2b-default"] for i in ("E1", "E3")
    )
    assert again["engagement"] == fresh["engagement"] < 50.0


def test_a_store_out_of_reach_is_a_503_with_the_reason(serve: Serve, store: Store) -> None:
    """PostgreSQL refusing connections: ingest and reads answer 503 with the reason and a
    Retry-After (a sender's cue to send again), not a 500 that drops the connection; so does
    the health page, asked first, while the server holds a connection it used a moment ago
    (closed by the database since); once it is back, so is the service."""
    if store.db.is_sqlite:
        pytest.skip("PostgreSQL's connections are cut here (SQLite has none)")
    import sqlalchemy as sa

    from tests.conftest import PG_SERVER

    api = serve(no_auth=True)
    assert api.post("/api/v1/events", json={"lead_id": "D1", "type": "x"}).status_code == 200
    name = store.db.engine.url.database
    admin = sa.create_engine(database_url(PG_SERVER), isolation_level="AUTOCOMMIT")
    cut = (
        f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false',
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        f"WHERE datname = '{name}' AND pid <> pg_backend_pid()",
    )
    try:
        with admin.connect() as conn:
            for statement in cut:
                conn.exec_driver_sql(statement)
            gone = f"SELECT count(*) FROM pg_stat_activity WHERE datname = '{name}'"
            for _ in range(100):  # the sessions end a moment after they are told to
                if conn.exec_driver_sql(gone).scalar_one() == 0:
                    break
                time.sleep(0.05)
        for request in (
            lambda: api.get("/api/v1/health"),  # not "ok" on a connection of before
            lambda: api.post("/api/v1/events", json={"lead_id": "D1", "type": "y"}),
            lambda: api.get("/api/v1/leads/D1"),
        ):
            r = request()
            err = _envelope(r, 503, "unavailable")
            assert err["message"].startswith("the store cannot be reached or written now: ")
            assert r.headers["retry-after"] == "5"
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        admin.dispose()
    assert api.post("/api/v1/events", json={"lead_id": "D1", "type": "y"}).status_code == 200
    assert api.get("/api/v1/health").json()["status"] == "ok"


def test_the_health_page_says_a_sqlite_file_is_gone_or_unreadable(
    serve: Serve, store: Store, tmp_path: Path
) -> None:
    """The server's connections keep reading a SQLite file deleted, moved or replaced since
    they opened it, but nothing started from now on would (an ingest process, a command):
    the health page looks at the file at its path, and answers 503 with the reason while it
    is gone or another file, and ok once it is back."""
    if not store.db.is_sqlite:
        pytest.skip("a SQLite store's file")
    api = serve(no_auth=True)
    assert api.post("/api/v1/events", json={"lead_id": "H1", "type": "x"}).status_code == 200
    assert api.get("/api/v1/health").json()["status"] == "ok"
    path = Path(str(store.db.engine.url.database))
    aside = tmp_path / "aside.db"
    path.rename(aside)
    try:
        r = api.get("/api/v1/health")
        err = _envelope(r, 503, "unavailable")
        assert err["message"] == f"the store's file {path} is not there (deleted or moved?)"
        assert r.headers["retry-after"] == "5"
        path.write_bytes(b"")  # as a new connection would make it: an empty store
        err = _envelope(api.get("/api/v1/health"), 503, "unavailable")
        assert err["message"] == (
            f"the store's file {path} is not the file opened at the start (moved or deleted, "
            "and another put in its place): restart to use it"
        )
    finally:
        aside.replace(path)
    assert api.get("/api/v1/health").json()["status"] == "ok"


def test_a_sqlite_file_that_is_no_database_fails_the_check(tmp_path: Path) -> None:
    """The health page's check reads the store's file itself: written over with something
    that is not a database, it fails with SQLite's words for it."""
    db = open_database(tmp_path / "s.db")
    try:
        db.check()
        db.dispose()  # its pages all in the file (no write-ahead log left to read them from)
        (tmp_path / "s.db").write_bytes(b"not a database at all" * 500)
        with pytest.raises(sqlite3.DatabaseError, match="file is not a database"):
            db.check()
    finally:
        db.dispose()


def test_models_post_publish_and_rescore(serve: Serve, clock: Clock) -> None:
    api = serve(no_auth=True)
    api.post("/api/v1/leads", json=VP)
    bad = (
        "version: 1\nname: mini\nprofile:\n"
        "  - {id: vp, if: {field: job_title, contains: vp}, pts: 5}\n"
    )
    err = _envelope(
        api.post("/api/v1/models", content=bad, headers={"content-type": "application/yaml"}),
        422,
        "invalid_model",
    )
    assert err["details"][0]["line"] == 4
    good = bad.replace("pts: 5", "points: 5")
    r = api.post("/api/v1/models", content=good, headers={"content-type": "application/yaml"})
    assert (r.status_code, r.json()["version"], r.json()["status"]) == (201, 1, "draft")
    again = api.post("/api/v1/models", content=good, headers={"content-type": "application/yaml"})
    assert (again.status_code, again.json()["created"]) == (200, False)
    r = api.post("/api/v1/models/mini/publish").json()
    assert r["published"]["status"] == "published"
    assert r["rescore"]["changed"] == 1
    lead = api.get("/api/v1/leads/L1").json()
    assert lead["scores"]["mini"]["score"] == 5.0
    history = api.get("/api/v1/leads/L1/history", params={"sheet": "mini"}).json()["items"]
    assert [(h["reason"], h["new_score"]) for h in history] == [("model change", 5.0)]
    err = _envelope(api.get("/api/v1/leads/L1/history?sheet=maxi"), 404, "not_found")
    assert err["message"] == "no score sheet 'maxi' (no model of that name was ever stored)"
    assert api.get("/api/v1/models/mini/yaml").text == good
    sheets = {m["name"]: m["active"] for m in api.get("/api/v1/models").json()["items"]}
    assert sheets == {"b2b-default": 1, "mini": 1}
    _envelope(api.post("/api/v1/models/nope/publish"), 404, "not_found")
    clock.advance(days=61)  # gone-quiet: 61 days without activity -> -15 on b2b-default
    r = api.post("/api/v1/rescore").json()
    assert r["reason"] == "decay"


def test_disposition_stage_and_outcomes(serve: Serve) -> None:
    api = serve(no_auth=True)
    api.post("/api/v1/leads", json=VP)
    err = _envelope(
        api.post("/api/v1/leads/L1/disposition", json={"disposition": "reject"}), 400, "bad_request"
    )
    assert "reason" in err["message"]
    r = api.post("/api/v1/leads/L1/disposition", json={"disposition": "accept"}).json()
    assert (r["stage"], r["outcome"]) == ("sql", "sql")
    lead = api.get("/api/v1/leads/L1").json()
    assert lead["stage"] == "sql"
    assert [(c["from_stage"], c["to_stage"]) for c in lead["stage_changes"]] == [("lead", "sql")]
    r = api.post(
        "/api/v1/outcomes",
        json=[
            {"lead_id": "L1", "outcome": "won", "ts": "2026-07-01", "amount": 1200},
            {"lead_id": "L1", "outcome": "won", "ts": "2026-07-01", "amount": 1200},
        ],
    ).json()
    assert (r["added"], r["repeated"]) == (1, 1)
    # ids trimmed as an import's are; a blank id or outcome is refused by item, as in a CSV
    r = api.post(
        "/api/v1/outcomes",
        json=[
            {"lead_id": " L1 ", "outcome": "Lost ", "ts": "2026-07-02"},
            {"lead_id": " ", "outcome": "won", "ts": "2026-07-02"},
            {"lead_id": "L1", "outcome": " ", "ts": "2026-07-02"},
        ],
    ).json()
    assert (r["added"], r["outcomes_for_unknown_leads"]) == (1, 0)
    assert [(e["index"], e["fields"][0]["loc"]) for e in r["errors"]] == [
        (1, "lead_id"),
        (2, "outcome"),
    ]


def test_openapi_is_published(serve: Serve) -> None:
    api = serve(no_auth=True)
    spec = api.get("/openapi.json").json()
    for path in ("/api/v1/events", "/api/v1/leads", "/v1/track", "/v1/batch", "/api/v1/models"):
        assert path in spec["paths"]
    page = api.get("/docs")
    assert page.status_code == 200
    # the web pages' protections: no site frames it, only its own scripts run (its inline
    # one by hash; the browser test runs the page under this policy)
    assert page.headers["x-frame-options"] == "DENY"
    policy = page.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in policy and "'unsafe-inline'" not in policy.split(";")[1]
    assert len(re.findall(r"'sha256-[A-Za-z0-9+/=]{44}'", policy)) == 1
    # Swagger UI comes from the server itself, not a CDN (the machine may have no internet)
    loaded = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert loaded and all(url.startswith("/docs/assets/") for url in loaded), loaded
    assert "https://" not in page.text.replace("https://swagger.io", "")
    for url in loaded:
        asset = api.get(url)
        assert asset.status_code == 200 and len(asset.content) > 100, url
    assert api.get("/redoc").status_code == 404  # ReDoc loads from a CDN: not offered


@pytest.mark.parametrize("path", ["/v1/track", "/v1/identify", "/v1/batch"])
def test_segment_rejects_non_objects(serve: Serve, path: str) -> None:
    api = serve(no_auth=True)
    r = api.post(path, json=[1, 2])
    assert r.status_code in (400, 422)
    assert set(r.json()) == {"error"}


def test_bodies_the_store_cannot_keep_are_refused(serve: Serve) -> None:
    api = serve(no_auth=True)
    nan = b'[{"lead_id": "L1", "type": "x", "n": NaN}]'
    err = _envelope(api.post("/api/v1/events", content=nan), 400, "bad_request")
    assert "NaN" in err["message"]
    nul = {"lead_id": "L1", "type": "x", "s": "a\u0000b"}
    err = _envelope(api.post("/api/v1/events", json=nul), 400, "bad_request")
    assert "body.s" in err["message"]
    deep: Any = "x"
    for _ in range(40):
        deep = {"a": deep}
    r = api.post("/api/v1/events", json={"lead_id": "L1", "type": "x", "p": deep})
    _envelope(r, 400, "bad_request")
    err = _envelope(
        api.post("/api/v1/events", json={"lead_id": "L1", "type": "x", "ts": True}), 422, "invalid"
    )
    r = api.post(
        "/api/v1/outcomes", json={"lead_id": "L1", "outcome": "won", "ts": 1, "amount": "Infinity"}
    )
    _envelope(r, 422, "invalid")
    _envelope(api.get("/api/v1/firings", params={"before_id": 10**30}), 422, "invalid")
    # numbers beyond a float (read as infinity) and lone surrogate halves: refused whole,
    # wherever they are, and nothing of the request stored
    huge = b'[{"lead_id": "OK1", "type": "x"}, {"lead_id": "L2", "type": "x", "v": 1e999}]'
    err = _envelope(api.post("/api/v1/events", content=huge), 400, "bad_request")
    assert err["message"] == "body[1].v: the number is too large (at most about 1.8e308)"
    huge = b'{"lead_id": "L2", "x": -1e999}'
    _envelope(api.post("/api/v1/leads", content=huge), 400, "bad_request")
    huge = b'{"userId": "L2", "traits": {"x": 1e999}}'
    _envelope(api.post("/v1/identify", content=huge), 400, "bad_request")
    lone = b'{"lead_id": "L2", "type": "x", "p": "a\\ud800"}'
    err = _envelope(api.post("/api/v1/events", content=lone), 400, "bad_request")
    assert "body.p" in err["message"] and "surrogate" in err["message"]
    lone = b'{"lead_id": "L2", "\\udfff": "x"}'
    _envelope(api.post("/api/v1/leads", content=lone), 400, "bad_request")
    pair = {"lead_id": "L3", "type": "x", "p": "\U0001f600"}  # a whole pair is a character
    assert api.post("/api/v1/events", json=pair).status_code == 200
    assert api.get("/api/v1/leads/OK1").status_code == 404
    assert api.get("/api/v1/leads/L2").status_code == 404
    # NUL in URLs, whatever the route, and in the bodies FastAPI reads
    for url in (
        "/api/v1/leads/a%00b",
        "/api/v1/leads/L3/history?sheet=%00",
        "/api/v1/leads?q=%00",
        "/api/v1/leads?%00=x",
        "/api/v1/firings?lead_id=x%00",
    ):
        err = _envelope(api.get(url), 400, "bad_request")
        assert "NUL" in err["message"], url
    r = api.post("/api/v1/leads/L3/stage", json={"stage": "lead", "reason": "a\u0000b"})
    assert "NUL" in _envelope(r, 422, "invalid")["details"][0]["message"]
    lone = b'{"disposition": "reject", "reason": "\\ud800"}'
    r = api.post("/api/v1/leads/L3/disposition", content=lone, headers=JSON_TYPE)
    _envelope(r, 422, "invalid")
    r = api.post("/api/v1/keys", json={"name": "a\u0000b", "scopes": ["read"]})
    _envelope(r, 422, "invalid")
    # a body that is not JSON: 400 on every route, also those FastAPI reads
    for path in ("/api/v1/leads/L3/stage", "/api/v1/keys", "/api/v1/events"):
        r = api.post(path, content=b"{bad", headers=JSON_TYPE)
        assert _envelope(r, 400, "bad_request")["message"].startswith(
            "the body is not valid JSON"
        ), path


def test_lead_ids_with_slashes_and_manual_rescore(serve: Serve) -> None:
    api = serve(no_auth=True)
    api.post("/api/v1/leads", json={"lead_id": "acme/emea 7", "job_title": "VP", "country": "US"})
    lead = api.get("/api/v1/leads/acme%2Femea%207").json()
    assert lead["lead_id"] == "acme/emea 7"
    assert api.get("/api/v1/leads/acme/emea 7/history").json()["items"][0]["reason"] == "profile"
    r = api.post("/api/v1/leads/acme/emea 7/rescore").json()
    assert r["changed"] == 0 and r["scores"]["b2b-default"]["score"] == 20.0
    assert api.post("/v1/screen", json={"userId": "acme/emea 7", "name": "Home"}).status_code == 200
    # ids are trimmed of ASCII whitespace, as imports trim them; a no-break space is the id's
    r = api.post("/api/v1/leads", json=[{"lead_id": " T1\t"}, {"lead_id": "T1\u00a0"}])
    assert [i["lead_id"] for i in r.json()["items"]] == ["T1", "T1\u00a0"]
    # an id with a line break in it is reached too
    api.post("/api/v1/leads", json={"lead_id": "a\nb"})
    assert api.get("/api/v1/leads/a%0Ab").json()["lead_id"] == "a\nb"
    # an escaped slash is the id's own: R/history is not the history of R
    api.post("/api/v1/leads", json=[{"lead_id": "R"}, {"lead_id": "R/history"}])
    assert api.get("/api/v1/leads/R%2Fhistory").json()["lead_id"] == "R/history"
    assert api.get("/api/v1/leads/R%2fhistory/history").json()["lead_id"] == "R/history"
    assert api.get("/api/v1/leads/R/history").json()["lead_id"] == "R"
    r = api.post("/api/v1/leads/S%2Frescore")  # no lead S/rescore (and no POST to a lead)
    assert r.status_code in (404, 405) and "no lead 'S'" not in r.text
    api.post("/api/v1/leads", json={"lead_id": "S/rescore"})
    r = api.post("/api/v1/leads/S%2Frescore/rescore")
    assert r.status_code == 200 and "b2b-default" in r.json()["scores"], r.text
    r = api.post("/api/v1/leads/S%2Frescore/stage", json={"stage": "sql"})
    assert r.status_code == 200, r.text
    assert api.get("/api/v1/leads/S%2Frescore").json()["stage"] == "sql"
    assert api.post("/v1/group", json={"userId": "u", "groupId": "g"}).json()["ignored"] == 1


def test_local_mode_refuses_other_hosts_and_web_pages(serve: Serve) -> None:
    api = serve(no_auth=True)
    r = api.get("/api/v1/leads", headers={"Host": "evil.example"})
    _envelope(r, 400, "bad_request")
    r = api.post(
        "/api/v1/events",
        json={"lead_id": "L1", "type": "x"},
        headers={"Origin": "https://evil.example"},
    )
    _envelope(r, 403, "forbidden")
    # this server's own pages may write; another server's on this machine may not (a page of
    # a development server on another port is "same-site" to the browser)
    own = f"http://{api.base_url.netloc.decode()}"
    event = {"lead_id": "L1", "type": "x"}
    assert api.post("/api/v1/events", json=event, headers={"Origin": own}).status_code == 200
    for headers in (
        {"Origin": "http://localhost:1"},
        {"Origin": "null"},  # a sandboxed frame or a file on disk
        {"Sec-Fetch-Site": "same-site"},
    ):
        r = api.post("/api/v1/events", json=event, headers=headers)
        err = _envelope(r, 403, "forbidden")
        assert "only this server's own pages may write" in err["message"], headers
    assert api.get("/api/v1/leads", headers={"Origin": "http://localhost:1"}).status_code == 200
    assert api.post("/api/v1/events", json=event).status_code == 200  # curl, scripts


def test_a_key_records_when_it_was_last_used(serve: Serve, store: Store, clock: Clock) -> None:
    from leadscore.store.keys import list_keys

    api = serve()
    key = _key(store, "read")
    api.get("/api/v1/leads", headers={"Authorization": f"Bearer {key}"})
    with store.db.read() as conn:
        (k,) = list_keys(conn)
    assert k.last_used_us == clock.now


def test_with_keys_a_web_page_of_another_site_cannot_write_with_a_browsers_key(
    serve: Serve, store: Store
) -> None:
    """A browser signed in to the web interface resends its key (HTTP Basic) by itself."""
    import base64

    api = serve()
    key = _key(store, "ingest", "read")
    basic = {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}
    event = {"lead_id": "L1", "type": "x"}
    evil = {"Origin": "https://evil.example"}
    _envelope(api.post("/api/v1/events", json=event, headers={**basic, **evil}), 403, "forbidden")
    fetch = {"Sec-Fetch-Site": "cross-site"}
    _envelope(api.post("/api/v1/events", json=event, headers={**basic, **fetch}), 403, "forbidden")
    own = {"Origin": str(api.base_url).rstrip("/")}
    assert api.post("/api/v1/events", json=event, headers={**basic, **own}).status_code == 200
    bearer = {"Authorization": f"Bearer {key}", **evil}
    assert api.post("/api/v1/events", json=event, headers=bearer).status_code == 200
    assert api.get("/api/v1/leads/L1", headers={**basic, **evil}).status_code == 200  # reads
