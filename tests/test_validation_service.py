"""Validation over HTTP, on SQLite and PostgreSQL: outcomes posted as a CSV file, the report of
the active model over the store, and a draft's backtest next to the active version.

The data is the ten-lead set of tests/test_validation.py, so the report's figures are the
ones worked out there by hand.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import httpx
import pytest

from leadscore.errors import NotFound
from leadscore.store import Store
from leadscore.store.keys import create_key
from leadscore.store.validation import store_report
from tests.conftest import Clock
from tests.test_validation import (
    AS_OF,
    DEMO_DAYS,
    MODEL_YAML,
    OUTCOMES,
    TITLES,
    day,
)

Serve = Callable[..., httpx.Client]
YAML = {"content-type": "application/yaml"}
CSV = {"content-type": "text/csv"}


def outcomes_csv() -> str:
    return "lead_id,outcome,ts\n" + "".join(
        f"{lead},{o},{day(d).isoformat()}\n" for lead, o, d in OUTCOMES
    )


def seed(client: httpx.Client) -> None:
    r = client.post("/api/v1/models", content=MODEL_YAML, headers=YAML)
    assert r.status_code in (200, 201), r.text
    assert client.post("/api/v1/models/hand/publish").status_code == 200
    r = client.post(
        "/api/v1/leads",
        json=[{"lead_id": f"L{i}", "title": t} for i, t in enumerate(TITLES, start=1)],
    )
    assert r.status_code == 200, r.text
    r = client.post(
        "/api/v1/events",
        json=[
            {"lead_id": lead, "type": "demo", "ts": day(-d).isoformat()}
            for lead, d in DEMO_DAYS.items()
        ],
    )
    assert r.status_code == 200, r.text


def test_outcomes_as_csv(serve: Serve) -> None:
    client = serve(no_auth=True)
    seed(client)
    r = client.post("/api/v1/outcomes?filename=crm.csv", content=outcomes_csv(), headers=CSV)
    assert r.status_code == 200, r.text
    assert r.json() == {
        "received": 7,
        "added": 7,
        "repeated": 0,
        "outcomes_for_unknown_leads": 1,  # X9
        "errors": [],
        "warnings": [],
    }
    again = client.post("/api/v1/outcomes", content=outcomes_csv(), headers=CSV).json()
    assert (again["added"], again["repeated"]) == (0, 7)
    bad = "lead_id,outcome,ts\nL1,won,2026-07-01\nL2,,2026-07-01\nL3,won,someday\n"
    r = client.post("/api/v1/outcomes?filename=C:\\exports\\crm", content=bad, headers=CSV)
    assert r.status_code == 422
    text = r.text
    assert "crm.csv: column 'outcome': 1 line has no outcome: line 3" in text
    assert "line 4 ('someday')" in text
    stored = client.get("/api/v1/validation?as_of=2026-06-30").json()["stored_outcomes"]
    assert {o["outcome"]: o["count"] for o in stored} == {"won": 5, "opportunity": 1, "lost": 1}
    # a value too long to keep: named by file, row and column, the upload not repeated
    long_id = "Z" * 300
    r = client.post(
        "/api/v1/outcomes?filename=crm.csv",
        content=f"lead_id,outcome,ts\n{long_id},won,2026-01-08T00:00:00Z\n",
        headers=CSV,
    )
    assert r.status_code == 422 and long_id not in r.text
    error = r.json()["error"]
    assert error["message"] == (
        "the file has 1 problem; nothing was stored: "
        "crm.csv: line 2: column 'lead_id': longer than 200 characters"
    )
    crm = "lead_id,outcome,ts\nL1,Closed Won,2026-07-01\n"
    warnings = client.post("/api/v1/outcomes", content=crm, headers=CSV).json()["warnings"]
    assert len(warnings) == 1 and "'closed won' (1)" in warnings[0]


def test_report_of_the_active_model(serve: Serve) -> None:
    client = serve(no_auth=True)
    seed(client)
    client.post("/api/v1/outcomes", content=outcomes_csv(), headers=CSV)
    r = client.get(
        "/api/v1/validation",
        params={"sheet": "hand", "as_of": AS_OF.isoformat(), "target_precision": 0.5},
    )
    assert r.status_code == 200, r.text
    report = r.json()
    assert report["sheet"] == "hand" and "hand" in report["sheets"]
    assert (report["leads"], report["conversions"]) == (10, 3)
    assert report["roc_auc"]["value"] == pytest.approx(13.5 / 21)
    assert report["mql"]["precision"] == 0.5
    assert report["suggested_threshold"]["precision"]["threshold"] == 40
    assert {b["band"]: b["conversions"] for b in report["bands"]} == {
        "hot": 1,
        "warm": 1,
        "cold": 1,
    }
    for query, message in (
        ("horizon=soon", "horizon: 'soon' is not a duration"),
        ("as_of=yesterday", "as_of:"),
        ("target_precision=2", "target_precision"),
        ("sheet=other", "no active sheet 'other'"),
    ):
        r = client.get(f"/api/v1/validation?{query}")
        assert r.status_code in (404, 422) and message in r.text, query


def test_backtest_of_a_draft_next_to_the_active_model(serve: Serve) -> None:
    client = serve(no_auth=True)
    seed(client)
    client.post("/api/v1/outcomes", content=outcomes_csv(), headers=CSV)
    draft = MODEL_YAML.replace("mql: hot", "mql: warm")
    start = (AS_OF - timedelta(days=28)).isoformat()
    r = client.post(
        "/api/v1/models/backtest",
        params={"from": start, "to": AS_OF.isoformat(), "every": "7d"},
        content=draft,
        headers=YAML,
    )
    assert r.status_code == 200, r.text
    result = r.json()
    assert result["cutoffs"] == 5
    active, challenger = result["models"]
    assert active["label"] == "active (version 1)" and challenger["label"] == "draft"
    assert (active["model_version"], challenger["model_version"]) == (1, None)
    # hot from 60: L1 and L2 at day -7 (a demo), L11 at day 0 (a demo at -2, won at -5)
    assert [p["new_mqls"] for p in active["periods"]] == [0, 0, 2, 1]
    assert (active["converted"], active["conversions"], active["caught"]) == (2, 1, 1)
    # warm from 30: six leads are MQL from the start; L5 joins at day -7 and converts too late
    assert challenger["mql_at_start"] == 6
    assert (challenger["new_mqls"], challenger["converted"], challenger["missed"]) == (1, 0, 0)
    # a lead's first touch is its first event of any type, also one no rule reads (the store
    # gives the backtest only the types the models read): L1's email, 60 days before its
    # MQL cut-off at day -7, makes its time to MQL 53 days
    before = active["speed"]
    email = {"lead_id": "L1", "type": "email_send", "ts": day(-60).isoformat()}
    assert client.post("/api/v1/events", json=email).status_code == 200
    r = client.post(
        "/api/v1/models/backtest",
        params={"from": start, "to": AS_OF.isoformat(), "every": "7d"},
        content=draft,
        headers=YAML,
    )
    after = r.json()["models"][0]["speed"]  # 0, 0, 2 days before; 0, 2, 53 after
    assert before == {"leads": 3, "median_days": 0.0, "p25_days": 0.0, "p75_days": 1.0}
    assert after == {"leads": 3, "median_days": 2.0, "p25_days": 1.0, "p75_days": 27.5}
    bad = client.post(
        "/api/v1/models/backtest", content="version: 1\nname: x\nbands: 3\n", headers=YAML
    )
    assert bad.status_code == 422 and bad.json()["error"]["details"][0]["line"] == 3
    r = client.post("/api/v1/models/backtest?every=0d", content=draft, headers=YAML)
    assert r.status_code == 422 and "every" in r.text
    # a year is not seconds after 1970; RFC 3339's lower-case t and z are times
    r = client.post("/api/v1/models/backtest?from=2026", content=draft, headers=YAML)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["message"].startswith("from: '2026' is not a time: give a date")
    lower = {"from": start.lower().replace("+00:00", "z"), "to": "2026-06-30t12:00:00z"}
    r = client.post("/api/v1/models/backtest", params=lower, content=draft, headers=YAML)
    assert r.status_code == 200 and r.json()["cutoffs"] == 5, r.text


def test_no_published_model(store: Store) -> None:
    with pytest.raises(NotFound, match="no model is published"):
        store_report(store)


def test_validation_scopes(serve: Serve, store: Store) -> None:
    client = serve()
    with store.db.write() as conn:
        _, read_key = create_key(conn, "reader", ["read"], store.clock())
        _, ingest_key = create_key(conn, "pipeline", ["ingest"], store.clock())
    auth = {"authorization": f"Bearer {read_key}"}
    r = client.post("/api/v1/outcomes", content=outcomes_csv(), headers={**CSV, **auth})
    assert r.status_code == 403
    ok = {"authorization": f"Bearer {ingest_key}"}
    r = client.post("/api/v1/outcomes", content=outcomes_csv(), headers={**CSV, **ok})
    assert r.status_code == 200
    r = client.post("/api/v1/models/backtest", content=MODEL_YAML, headers={**YAML, **auth})
    assert r.status_code == 403


def test_drift_of_the_stored_scores(serve: Serve, store: Store, clock: Clock) -> None:
    """Thirty days before the clock no lead had its demo; now three are hot (the bands of
    tests/test_validation.py::test_drift_of_bands_between_two_dates)."""
    client = serve(no_auth=True)
    seed(client)
    clock.now = int(AS_OF.timestamp() * 1_000_000)
    r = client.get("/api/v1/validation", params={"sheet": "hand", "as_of": AS_OF.isoformat()})
    band = r.json()["drift"]["columns"]["band"]
    assert [b["baseline_leads"] for b in band["bins"]] == [0, 6, 5]
    assert [b["current_leads"] for b in band["bins"]] == [3, 4, 4]
    assert r.json()["drift"]["days"] == 30
    assert r.json()["drift"]["model_version"] == r.json()["model_version"] == 1
    # the stored version, not the file format's `version: 1`
    client.post("/api/v1/models", content=MODEL_YAML + "# v2\n", headers=YAML)
    assert client.post("/api/v1/models/hand/publish").status_code == 200
    again = client.get("/api/v1/validation", params={"sheet": "hand"}).json()
    assert again["drift"]["model_version"] == again["model_version"] == 2
    off = client.get("/api/v1/validation", params={"sheet": "hand", "drift_days": 0}).json()
    assert "drift" not in off
    bad = client.get("/api/v1/validation", params={"drift_days": -1})
    assert bad.status_code == 422 and "drift_days" in bad.text


def test_impossible_values_are_refused_not_crashed_on(serve: Serve) -> None:
    client = serve(no_auth=True)
    seed(client)
    far = {"lead_id": "L2", "outcome": "lost", "ts": "9999-12-31T23:59:59-12:00"}
    r = client.post("/api/v1/outcomes", json=far)
    assert r.status_code == 422 and "out of range" in r.text
    csv = f"lead_id,outcome,ts,amount\nL1,won,2026-07-01,inf\n{'x' * 201},won,2026-07-01,\n"
    r = client.post("/api/v1/outcomes", content=csv, headers=CSV)
    assert r.status_code == 422
    message = r.json()["error"]["message"]
    assert "nothing was stored" in message and "not a finite number" in message
    assert "--skip-bad-rows" not in r.text
    for query in ("capacity=inf", "horizon=inf", "as_of=0001-01-01T00:00:00%2B01:00"):
        r = client.get(f"/api/v1/validation?sheet=hand&{query}")
        assert r.status_code in (400, 422), (query, r.text)
    r = client.post("/api/v1/models/backtest?to=0001-01-02", content=MODEL_YAML, headers=YAML)
    assert r.status_code in (400, 422) and "falls outside" in r.text
    assert client.get("/api/v1/validation?sheet=hand").status_code == 200


def test_import_outcomes_command_skips_bad_rows(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from leadscore.cli import app

    db = tmp_path / "s.db"
    f = tmp_path / "crm.csv"
    f.write_text("id,outcome,ts\nL1,won,2026-07-01\nL2,won,someday\n")
    runner = CliRunner()
    args = ["import", "outcomes", str(f), "--db", str(db), "--lead-id-column", "id"]
    r = runner.invoke(app, args)
    assert r.exit_code == 1 and "line 3 ('someday')" in r.stderr
    r = runner.invoke(app, [*args, "--skip-bad-rows"])
    assert r.exit_code == 0, r.stderr
    assert "skipped 1 line" in r.stderr + r.stdout
