"""The model editor's tools over HTTP, on SQLite and PostgreSQL: check a model file, preview a
draft against the stored leads, score a hypothetical lead, diff two stored versions. None of
them stores anything."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from leadscore import parse_model, score_lead
from leadscore.store import Store
from leadscore.store.keys import create_key
from leadscore.store.schema import events, leads, model_versions, score_history, scores
from leadscore.store.whatif import preview_model
from tests.conftest import MODELS, Clock

Serve = Callable[..., httpx.Client]
YAML = {"content-type": "application/yaml"}

# Fit: vp 20 + us 10. Engagement: pricing 15 per view, demo 30 once. No decay: the numbers
# below do not depend on when the events happened.
MINI = """\
version: 1
name: mini
profile:
  - {id: vp, if: {field: job_title, contains: vp}, points: 20}
  - {id: us, if: {field: country, eq: US}, points: 10}
activity:
  - {id: pricing, event: page_view, where: {field: url, contains: /pricing}, points: 15}
  - {id: demo, event: demo_request, points: 30, frequency: once}
grades: {A: 30, B: 10}
bands: {cold: 0, warm: 30, hot: 50}
mql: hot
"""
# The same with the pricing rule worth double.
MINI_DOUBLE = MINI.replace("points: 15}", "points: 30}")

PRICING = {"type": "page_view", "url": "https://x.example/pricing"}
LEADS = [
    {"lead_id": "L1", "job_title": "VP Sales", "country": "US", "name": "Ann Lee"},
    {
        "lead_id": "L2",
        "email": "bo@acme.com",
        "job_title": "Analyst",
        "country": "US",
        "first_name": "Bo",
        "last_name": "Chan",
        "company": "Acme",
    },
    {"lead_id": "L3", "job_title": "VP Ops", "country": "DE"},
    {"lead_id": "L4", "job_title": "Student", "country": "FR"},
    {"lead_id": "L5", "job_title": "VP IT", "country": "US"},
]
EVENTS = [
    {**PRICING, "lead_id": "L1"},
    {**PRICING, "lead_id": "L2"},
    {**PRICING, "lead_id": "L2"},
    {"type": "demo_request", "lead_id": "L3"},
    {"type": "demo_request", "lead_id": "L5"},
    {**PRICING, "lead_id": "L5"},
]


def _key(store: Store, *scopes: str) -> str:
    with store.db.write() as conn:
        return create_key(conn, "test", list(scopes), store.clock())[1]


def _error(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    return body["error"]


def _with_mini(api: httpx.Client) -> None:
    """Publish MINI and store the five leads and their events."""
    assert api.post("/api/v1/models", content=MINI, headers=YAML).status_code == 201
    assert api.post("/api/v1/models/mini/publish").status_code == 200
    assert api.post("/api/v1/leads", json=LEADS).json()["created"] == 5
    assert api.post("/api/v1/events", json=EVENTS).json()["accepted"] == 6


def _counts(store: Store) -> dict[str, int]:
    with store.db.read() as conn:
        return {
            t.name: int(conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one())
            for t in (leads, events, model_versions, scores, score_history)
        }


# --- check ------------------------------------------------------------------------------------


def test_check_a_valid_model_stores_nothing(serve: Serve, store: Store) -> None:
    api = serve(no_auth=True)
    before = _counts(store)
    r = api.post("/api/v1/models/check", content=MINI, headers=YAML)
    assert r.status_code == 200
    assert r.json() == {
        "valid": True,
        "name": "mini",
        "rules": 4,
        "groups": [
            {"id": "fit", "kind": "profile", "rules": 2},
            {"id": "engagement", "kind": "activity", "rules": 2},
        ],
        "bands": ["cold", "warm", "hot"],
        "grades": ["A", "B"],
        "errors": [],
    }
    assert _counts(store) == before
    assert [m["name"] for m in api.get("/api/v1/models").json()["items"]] == ["b2b-default"]


def test_check_reports_every_problem_with_its_line(serve: Serve, store: Store) -> None:
    """Two problems, on lines 4 and 7, both reported, as a 200."""
    api = serve(no_auth=True)
    bad = MINI.replace("points: 20}", "pts: 20}").replace(
        "points: 15}", "points: 15, half_life_days: -3}"
    )
    r = api.post("/api/v1/models/check", content=bad, headers=YAML)
    assert r.status_code == 200
    body = r.json()
    assert body["valid"] is False and set(body) == {"valid", "errors"}
    assert [(e["line"], e["path"]) for e in body["errors"]] == [
        (4, "profile[0].pts"),
        (7, "activity[0].half_life_days"),
    ]
    assert "did you mean 'points'" in body["errors"][0]["message"]
    assert body["errors"][1]["text"] == (
        "model.yaml:7: activity[0].half_life_days: must be > 0, got -3"
    )
    assert _counts(store)["model_versions"] == 1  # b2b-default only


def test_check_empty_and_unreadable_bodies(serve: Serve) -> None:
    api = serve(no_auth=True)
    for empty in ("", "  \n\n"):
        body = api.post("/api/v1/models/check", content=empty, headers=YAML).json()
        assert body["valid"] is False
        assert [e["message"] for e in body["errors"]] == ["the model is empty: send the model file"]
    syntax = api.post("/api/v1/models/check", content="version: [1\n", headers=YAML).json()
    assert syntax["valid"] is False and "not valid YAML" in syntax["errors"][0]["message"]
    r = api.post("/api/v1/models/check", content=MINI, headers={"content-type": "text/csv"})
    _error(r, 415, "unsupported_media_type")
    r = api.post("/api/v1/models/check", content=b"name: \xff", headers=YAML)
    _error(r, 400, "bad_request")


def test_scopes(serve: Serve, store: Store) -> None:
    """check, score with an active sheet and diff need `read`; preview scores every lead and
    scoring with a model's text runs its regular expressions: `admin`."""
    api = serve()
    read = {"Authorization": f"Bearer {_key(store, 'read')}"}
    admin = {"Authorization": f"Bearer {_key(store, 'admin')}"}
    r = api.post("/api/v1/models/check", content=MINI, headers={**YAML, **read})
    assert r.json()["valid"] is True
    _error(api.post("/api/v1/models/check", content=MINI, headers=YAML), 401, "unauthorized")
    r = api.post("/api/v1/models/preview", content=MINI, headers={**YAML, **read})
    _error(r, 403, "forbidden")
    r = api.post("/api/v1/models/preview", content=MINI, headers={**YAML, **admin})
    assert r.status_code == 200
    assert api.post("/api/v1/score", json={}, headers=read).status_code == 200
    text = MINI.decode() if isinstance(MINI, bytes) else MINI
    err = _error(api.post("/api/v1/score", json={"yaml": text}, headers=read), 403, "forbidden")
    assert "scoring with a model file's text (`yaml`) needs 'admin'" in err["message"]
    r = api.post("/api/v1/score", json={"yaml": text}, headers=admin)
    assert r.status_code == 200 and r.json()["version"] is None
    assert api.get("/api/v1/models/b2b-default/diff", headers=read).status_code == 200
    paths = api.get("/openapi.json").json()["paths"]
    for path in ("/api/v1/models/check", "/api/v1/models/preview", "/api/v1/score"):
        assert "post" in paths[path]
    assert "get" in paths["/api/v1/models/{name}/diff"]


# --- preview ----------------------------------------------------------------------------------


def test_preview_of_a_doubled_rule_moves_exactly_the_pricing_viewers(
    serve: Serve, store: Store
) -> None:
    """Stored (MINI): L1 fit 30 + 1 view 15 = 45 warm A; L2 10 + 2 views 30 = 40 warm B;
    L3 20 + demo 30 = 50 hot B (MQL); L4 0 cold F; L5 30 + demo 30 + 1 view 15 = 75 hot A (MQL).

    Pricing doubled: L1 60 hot (+15), L2 70 hot (+30), L5 90 hot (+15); L3 and L4 unchanged.
    MQLs 2 -> 4; two leads move warm -> hot; no grade changes (fit is untouched).
    """
    api = serve(no_auth=True)
    _with_mini(api)
    with store.db.read() as conn:
        mqls = conn.execute(
            sa.select(sa.func.count()).where(scores.c.sheet == "mini", scores.c.mql.is_(True))
        ).scalar_one()
    before = _counts(store)
    r = api.post("/api/v1/models/preview", content=MINI_DOUBLE, headers=YAML)
    assert r.status_code == 200, r.text
    p = r.json()
    assert _counts(store) == before  # nothing stored, nothing rescored
    assert p["mql_before"] == mqls == 2
    assert {k: p[k] for k in p if k != "movers"} == {
        "sheet": "mini",
        "as_of": "2026-06-30T12:00:00Z",
        "leads": 5,
        "compared_with": {"version": 1},
        "mql_before": 2,
        "mql_after": 4,
        "band_before": {"cold": 1, "warm": 2, "hot": 2},
        "band_after": {"cold": 1, "warm": 0, "hot": 4},
        "band_changes": 2,
        "band_moves": [{"from": "warm", "to": "hot", "leads": 2}],
        "grade_changes": 0,
        "score_changes": 3,
    }
    movers = [
        (
            m["lead_id"],
            m["old_score"],
            m["new_score"],
            m["delta"],
            m["old_band"],
            m["new_band"],
            m["old_mql"],
            m["new_mql"],
        )
        for m in p["movers"]
    ]
    assert movers == [
        ("L2", 40.0, 70.0, 30.0, "warm", "hot", False, True),
        ("L1", 45.0, 60.0, 15.0, "warm", "hot", False, True),  # ties: by lead id
        ("L5", 75.0, 90.0, 15.0, "hot", "hot", True, True),
    ]
    who = {m["lead_id"]: (m["email"], m["name"], m["company"]) for m in p["movers"]}
    assert who == {
        "L1": (None, "Ann Lee", None),
        "L2": ("bo@acme.com", "Bo Chan", "Acme"),
        "L5": (None, None, None),
    }

    # What the preview said is what publishing the draft does.
    assert api.post("/api/v1/models", content=MINI_DOUBLE, headers=YAML).status_code == 201
    assert api.post("/api/v1/models/mini/publish").status_code == 200
    with store.db.read() as conn:
        moved = conn.execute(
            sa.select(score_history.c.lead_id).where(
                score_history.c.reason == "model change",
                score_history.c.new_score != score_history.c.old_score,
            )
        )
        assert sorted(lead_id for (lead_id,) in moved) == ["L1", "L2", "L5"]
        q = sa.select(scores.c.lead_id, scores.c.score).where(scores.c.sheet == "mini")
        now = {lead_id: score for lead_id, score in conn.execute(q)}
    assert now == {"L1": 60.0, "L2": 70.0, "L3": 50.0, "L4": 0.0, "L5": 90.0}


@pytest.mark.parametrize("part", [1, 2, 4])
def test_preview_read_in_parts_equals_the_whole(serve: Serve, store: Store, part: int) -> None:
    """The preview reads and scores the leads ``part`` at a time (as a full rescoring does):
    the same figures and movers whatever the part's size."""
    _with_mini(serve(no_auth=True))
    model = parse_model(MINI_DOUBLE)
    whole = preview_model(store, model, MINI_DOUBLE).to_dict()
    assert (whole["leads"], whole["score_changes"], len(whole["movers"])) == (5, 3, 3)
    assert preview_model(store, model, MINI_DOUBLE, part=part).to_dict() == whole


def test_preview_of_the_active_model_changes_nothing(serve: Serve, clock: Clock) -> None:
    """The same text as the active version, a day later: no decay in MINI, so no change."""
    api = serve(no_auth=True)
    _with_mini(api)
    clock.advance(days=1)
    p = api.post("/api/v1/models/preview", content=MINI, headers=YAML).json()
    assert p["as_of"] == "2026-07-01T12:00:00Z"
    assert (p["band_changes"], p["grade_changes"], p["score_changes"]) == (0, 0, 0)
    assert p["band_moves"] == [] and p["movers"] == []
    assert p["band_before"] == p["band_after"] == {"cold": 1, "warm": 2, "hot": 2}


def test_preview_names_leads_below_the_lowest_band(serve: Serve) -> None:
    """MINI plus 'quiet: -5 without activity in 30 days': only L4 (no events) is quiet and
    drops from 0 (cold) to -5, below the lowest band."""
    api = serve(no_auth=True)
    _with_mini(api)
    quiet = MINI + "inactivity:\n  - {id: quiet, no_activity_days: 30, points: -5}\n"
    p = api.post("/api/v1/models/preview", content=quiet, headers=YAML).json()
    assert list(p["band_after"].items()) == [("cold", 0), ("warm", 2), ("hot", 2), ("(none)", 1)]
    assert p["band_moves"] == [{"from": "cold", "to": "(none)", "leads": 1}]
    assert (p["band_changes"], p["score_changes"], p["mql_after"]) == (1, 1, 2)
    (m,) = p["movers"]
    assert (m["lead_id"], m["old_score"], m["new_score"], m["delta"]) == ("L4", 0.0, -5.0, -5.0)
    assert (m["old_band"], m["new_band"], m["old_grade"], m["new_grade"]) == (
        "cold",
        None,
        "F",
        "F",
    )


def test_preview_of_a_new_sheet_has_nothing_before(serve: Serve, store: Store) -> None:
    """A sheet not published yet: only the after side. Bands in the model's order, and the
    leads below the lowest band (L4 scores -5) counted apart."""
    api = serve(no_auth=True)
    _with_mini(api)
    new = (
        MINI.replace("name: mini", "name: fresh")
        .replace("bands: {cold: 0, warm: 30, hot: 50}", "bands: {low: 0, high: 40}")
        .replace("mql: hot", "mql: high")
        + "inactivity:\n  - {id: quiet, no_activity_days: 30, points: -5}\n"
    )
    p = api.post("/api/v1/models/preview", content=new, headers=YAML).json()
    assert p["sheet"] == "fresh" and p["compared_with"] is None
    assert p["mql_before"] is None and p["band_before"] is None and p["band_changes"] is None
    assert p["grade_changes"] is None and p["band_moves"] == [] and p["movers"] == []
    # L1 45, L2 40, L3 50, L5 75: high; L4 0 - 5 = -5: below the lowest band
    assert list(p["band_after"].items()) == [("low", 0), ("high", 4), ("(none)", 1)]
    assert p["mql_after"] == 4
    assert [m["name"] for m in api.get("/api/v1/models").json()["items"]] == [
        "b2b-default",
        "mini",
    ]


def test_preview_of_an_invalid_model_is_a_422_with_lines(serve: Serve) -> None:
    api = serve(no_auth=True)
    bad = MINI.replace("mql: hot", "mql: boiling")
    err = _error(
        api.post("/api/v1/models/preview", content=bad, headers=YAML), 422, "invalid_model"
    )
    assert [(d["line"], d["path"]) for d in err["details"]] == [(11, "mql")]
    err = _error(api.post("/api/v1/models/preview", content="", headers=YAML), 422, "invalid_model")
    assert err["details"][0]["message"] == "the model is empty: send the model file"


def test_preview_of_an_empty_store(serve: Serve) -> None:
    api = serve(no_auth=True)
    p = api.post("/api/v1/models/preview", content=MINI, headers=YAML).json()
    assert (p["leads"], p["mql_after"], p["movers"]) == (0, 0, [])
    assert p["band_after"] == {"cold": 0, "warm": 0, "hot": 0}


# --- score ------------------------------------------------------------------------------------


def _adds_up(e: dict[str, Any]) -> None:
    """The explanation's parts add up to its score (engine/result.py)."""
    for rule in e["rules"]:
        if rule["events"]:
            assert rule["raw"] == pytest.approx(sum(ev["points"] for ev in rule["events"]))
    for group in e["groups"]:
        rules = [r["points"] for r in e["rules"] if r["group"] == group["group_id"]]
        assert group["raw"] == pytest.approx(sum(rules))
        assert group["points"] == pytest.approx(group["clipped_value"] * group["weight"])
    assert e["raw_total"] == pytest.approx(sum(g["points"] for g in e["groups"]))
    if e["total_clipped"] is None:
        assert e["score"] == pytest.approx(e["raw_total"])


def test_score_a_hypothetical_lead_like_score_lead(serve: Serve, store: Store) -> None:
    """A VP in the US who viewed pricing 10 and 40 days ago, on the shipped b2b-default model
    (pricing decays with a half-life): the same numbers as score_lead on the same inputs."""
    api = serve(no_auth=True)
    before = _counts(store)
    lead = {"job_title": "VP Marketing", "country": "US", "employees": 800}
    r = api.post(
        "/api/v1/score",
        json={
            "lead": lead,
            "events": [
                {"type": "page_view", "days_ago": 10, "properties": {"url": "/pricing"}},
                {"type": "page_view", "ts": "2026-05-21T12:00:00Z", "url": "/pricing"},
            ],
        },
    )
    assert r.status_code == 200, r.text
    got = r.json()
    assert _counts(store) == before
    model = parse_model((MODELS / "b2b-default.yaml").read_text())
    want = score_lead(
        model,
        lead,
        [
            {"type": "page_view", "ts": "2026-06-20T12:00:00Z", "url": "/pricing"},
            {"type": "page_view", "ts": "2026-05-21T12:00:00Z", "url": "/pricing"},
        ],
        as_of="2026-06-30T12:00:00Z",
    )
    assert (got["sheet"], got["version"], got["as_of"]) == (
        "b2b-default",
        1,
        "2026-06-30T12:00:00Z",
    )
    assert got["explanation"] == want.to_dict()
    assert (got["score"], got["band"], got["grade"], got["mql"]) == (
        want.score,
        want.band,
        want.grade,
        want.mql,
    )
    assert got["groups"] == want.group_points
    pricing = next(r for r in got["explanation"]["rules"] if r["rule_id"] == "pricing-page")
    assert [round(e["age_days"], 6) for e in pricing["events"]] == [40.0, 10.0]
    assert pricing["events"][1]["decay"] < 1.0  # it does decay: the check above means something
    _adds_up(got["explanation"])
    assert "Score " in got["explanation_text"]


def test_score_with_a_model_text_and_an_as_of(serve: Serve) -> None:
    """MINI_DOUBLE, as of 2026-01-01: VP in the US (30), two pricing views (2 x 30), one of
    them after the as-of instant (does not exist then): 60, hot, MQL, grade A."""
    api = serve(no_auth=True)
    body = {
        "yaml": MINI_DOUBLE,
        "lead": {"job_title": "vp sales", "country": "us"},
        "events": [
            {**PRICING, "ts": "2025-12-01T00:00:00Z", "item": 7},
            {**PRICING, "ts": "2026-02-01T00:00:00Z"},
        ],
        "as_of": "2026-01-01T00:00:00Z",
    }
    got = api.post("/api/v1/score", json=body).json()
    assert (got["sheet"], got["version"], got["as_of"]) == ("mini", None, "2026-01-01T00:00:00Z")
    assert (got["score"], got["fit"], got["engagement"]) == (60.0, 30.0, 30.0)
    assert (got["grade"], got["band"], got["mql"]) == ("A", "hot", True)
    (counted,) = next(r for r in got["explanation"]["rules"] if r["rule_id"] == "pricing")["events"]
    assert counted["item"] == "7"
    _adds_up(got["explanation"])


def test_score_defaults_to_the_first_active_sheet_and_names_one(serve: Serve) -> None:
    api = serve(no_auth=True)
    _with_mini(api)
    assert api.post("/api/v1/score", json={}).json()["sheet"] == "b2b-default"
    got = api.post("/api/v1/score", json={"sheet": "mini", "lead": LEADS[0]}).json()
    assert (got["sheet"], got["version"], got["score"]) == ("mini", 1, 30.0)


BAD_SCORE_BODIES: list[tuple[Any, str]] = [  # (body, the field the 422 names)
    ({"events": [PRICING, PRICING, {"type": "x", "ts": "last tuesday"}]}, "events[2].ts"),
    ({"events": [{"type": "x", "ts": True}]}, "events[0].ts"),
    ({"events": [{"type": "x", "ts": "0001-01-01T00:00:00+14:00"}]}, "events[0].ts"),
    ({"events": [{"type": "x", "days_ago": -1}]}, "events[0].days_ago"),
    ({"events": [{"type": "x", "days_ago": 1e300}]}, "events[0].days_ago"),
    ({"events": [{"type": "x"}, {"type": "x", "ts": 0, "days_ago": 1}]}, "events[1]"),
    ({"events": [{"ts": 0}]}, "events[0].type"),
    ({"events": [{"type": "x", "properties": [1]}]}, "events[0].properties"),
    ({"events": [{"type": "x", "item": {"id": 1}}]}, "events[0].item"),
    ({"events": [{"type": "x"}] * 1001}, "events"),
    ({"lead": {"address": {"city": "Oslo"}}}, "lead.address"),
    ({"as_of": "soon"}, "as_of"),
    ({"colour": "red"}, "colour"),
    ({"sheet": "nope"}, "sheet"),
    ({"sheet": "b2b-default", "yaml": MINI}, "yaml"),
    ({"as_of": "0001-01-01T12:00:00Z", "events": [{"type": "x", "days_ago": 1}]}, "as_of"),
    ([1, 2], "body"),
]


def test_score_bad_input_names_the_field(serve: Serve) -> None:
    api = serve(no_auth=True)  # one server for every case: each is one request
    for body, loc in BAD_SCORE_BODIES:
        err = _error(api.post("/api/v1/score", json=body), 422, "invalid")
        assert err["message"].startswith(f"{loc}: "), (body, err["message"])
        assert err["details"][0]["loc"] == loc, body


def test_score_days_ago_too_far_back(serve: Serve) -> None:
    api = serve(no_auth=True)
    body = {"as_of": "0001-02-01T00:00:00Z", "events": [{"type": "x", "days_ago": 40}]}
    err = _error(api.post("/api/v1/score", json=body), 422, "invalid")
    assert err["details"] == [{"loc": "events[0].days_ago", "message": "goes back too far in time"}]


def test_score_with_a_bad_model_or_body(serve: Serve) -> None:
    api = serve(no_auth=True)
    bad = MINI.replace("points: 30,", "points: thirty,")
    err = _error(api.post("/api/v1/score", json={"yaml": bad}), 422, "invalid_model")
    assert [(d["line"], d["path"]) for d in err["details"]] == [(8, "activity[1].points")]
    _error(api.post("/api/v1/score", content=b"{nope"), 400, "bad_request")
    _error(api.post("/api/v1/score", content=b'{"as_of": NaN}'), 400, "bad_request")


# --- diff -------------------------------------------------------------------------------------

V1 = "---\nversion: 1\nname: d\nprofile:\n  - {id: a, if: {field: x, eq: 1}, points: 5}\n"
# v2: the document marker goes (its diff line reads "----"), points change, a rule is added
V2 = (
    "version: 1\nname: d\nprofile:\n  - {id: a, if: {field: x, eq: 1}, points: 7}\n"
    "  - {id: b, if: {field: y, eq: 2}, points: 3}\n"
)
# v3: one line more, no newline at the end
V3 = V2 + "bands: {cold: 0, hot: 10}"


def test_diff_counts_lines(serve: Serve) -> None:
    api = serve(no_auth=True)
    for text in (V1, V2, V3):
        assert api.post("/api/v1/models", content=text, headers=YAML).status_code == 201
    # v1 only is published: the default compares the newest (v3) with it
    assert api.post("/api/v1/models/d/publish", params={"version": 1}).status_code == 200
    d = api.get("/api/v1/models/d/diff").json()
    assert (d["name"], d["from"], d["to"]) == ("d", 1, 3)
    assert (d["added"], d["removed"]) == (3, 2)
    assert d["diff"].splitlines()[:2] == ["--- d v1", "+++ d v3"]
    assert "\n----\n" in d["diff"] and "\n+bands: {cold: 0, hot: 10}\n" in d["diff"]
    d = api.get("/api/v1/models/d/diff", params={"from": 2, "to": 3}).json()
    assert (d["from"], d["to"], d["added"], d["removed"]) == (2, 3, 1, 0)
    # to = v1 (the published one): nothing older, every line added
    d = api.get("/api/v1/models/d/diff", params={"to": 1}).json()
    assert (d["from"], d["to"], d["added"], d["removed"]) == (None, 1, 5, 0)
    # to = v2 with v1 published: from v1
    d = api.get("/api/v1/models/d/diff", params={"to": 2}).json()
    assert (d["from"], d["added"], d["removed"]) == (1, 2, 2)
    same = api.get("/api/v1/models/d/diff", params={"from": 3, "to": 3}).json()
    assert (same["diff"], same["added"], same["removed"]) == ("", 0, 0)


def test_diff_defaults_to_the_version_before_when_the_newest_is_published(serve: Serve) -> None:
    api = serve(no_auth=True)
    for text in (V1, V2):
        api.post("/api/v1/models", content=text, headers=YAML)
    api.post("/api/v1/models/d/publish")  # v2, the newest
    d = api.get("/api/v1/models/d/diff").json()
    assert (d["from"], d["to"], d["added"], d["removed"]) == (1, 2, 2, 2)


def test_diff_of_unknown_models_and_versions(serve: Serve) -> None:
    api = serve(no_auth=True)
    _error(api.get("/api/v1/models/nope/diff"), 404, "not_found")
    _error(api.get("/api/v1/models/b2b-default/diff", params={"to": 9}), 404, "not_found")
    _error(api.get("/api/v1/models/b2b-default/diff", params={"from": 9}), 404, "not_found")
    _error(api.get("/api/v1/models/b2b-default/diff", params={"from": 0}), 422, "invalid")
