"""The web interface over HTTP, on SQLite and PostgreSQL: pages and their JSON twins agree,
values are escaped, keys are asked for, the filter form and segments lead to the right list."""

from __future__ import annotations

import base64
import csv
import io
from collections.abc import Callable

import httpx

from leadscore.store import EventInput, LeadInput, Store
from leadscore.store.keys import create_key
from leadscore.ui.pages import points
from tests.conftest import Clock

DAY = 86_400_000_000
EVIL = "<script>alert(1)</script>"


def _seed(store: Store, clock: Clock) -> None:
    store.ensure_a_model()
    store.upsert_leads(
        [
            LeadInput(
                "L1",
                email="ada@big.com",
                fields={
                    "first_name": "Ada",
                    "job_title": "VP Sales",
                    "country": "US",
                    "employees": 500,
                    "industry": "Software",
                },
            ),
            LeadInput(
                "L2",
                email="bob@small.com",
                fields={"first_name": "Bob", "country": "DE", "job_title": "Engineer"},
            ),
            LeadInput(
                "L3",
                email="eve@x.com",
                fields={"first_name": EVIL, "country": "US", "company": "=HYPERLINK(1)"},
            ),
        ]
    )
    clock.advance(seconds=3600)
    for n in range(12):
        store.ingest_events(
            [EventInput("page_view", clock.now - n * 1000, "L1", properties={"url": "/pricing"})]
        )
    store.ingest_events([EventInput("demo_request", clock.now, "L1")])
    store.ingest_events([EventInput("page_view", clock.now, "L3", properties={"url": EVIL})])


def test_pages_render_and_agree_with_their_twins(
    store: Store, clock: Clock, serve_ui: Callable[..., httpx.Client]
) -> None:
    _seed(store, clock)
    c = serve_ui(no_auth=True)
    for path in ("/", "/overview", "/model", "/settings/triggers", "/settings/keys", "/leads/L1"):
        r = c.get(path)
        assert r.status_code == 200, (path, r.text[:300])
        assert r.headers["content-type"].startswith("text/html")
        assert "http://" not in r.text.replace(str(c.base_url), "")  # nothing from outside
    twin = c.get("/api/v1/overview").json()
    page = c.get("/overview").text
    assert twin["leads"] == 3
    hot = c.get("/api/v1/leads?band=hot").json()["items"]
    assert twin["in_top_band"] == len(hot) == 1 and hot[0]["lead_id"] == "L1"
    assert f'data-testid="in-top-band">{twin["in_top_band"]}<' in page
    assert f'data-testid="mqls">{twin["mqls"]}<' in page
    assert twin["turned_hot_24h"]["leads"] == 1
    assert twin["turned_hot_24h"]["latest"][0]["lead_id"] == "L1"
    assert sum(b["leads"] for b in twin["bands"]) == 3
    assert sum(b["leads"] for b in twin["histogram"]["bins"]) == 3
    assert sum(d["mqls"] for d in twin["mqls_per_day"]) == 1
    matrix = twin["matrix"]["counts"]
    assert sum(n for row in matrix.values() for n in row.values()) == 3
    # the list page shows the twin's leads in the twin's order, with a 30-day sparkline
    items = c.get("/api/v1/leads?spark=30").json()["items"]
    listing = c.get("/").text
    positions = [listing.index(f'href="/leads/{i["lead_id"]}"') for i in items]
    assert positions == sorted(positions)
    assert listing.count('class="spark"') == 3
    assert items[0]["spark"][-1]["score"] == items[0]["score"]
    lead = c.get("/api/v1/leads/L1?detail=true").json()
    assert lead["events_total"] == 13 and len(lead["history"]) >= 2
    shown = points(lead["scores"]["b2b-default"]["score"])
    assert f'data-sheet="b2b-default">{shown}<' in c.get("/leads/L1").text


def test_lead_data_is_escaped(
    store: Store, clock: Clock, serve_ui: Callable[..., httpx.Client]
) -> None:
    _seed(store, clock)
    c = serve_ui(no_auth=True)
    for path in ("/leads/L3", "/?q=eve", "/"):
        text = c.get(path).text
        assert EVIL not in text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text


def test_pages_ask_for_a_key_and_respect_scopes(
    store: Store, clock: Clock, serve_ui: Callable[..., httpx.Client]
) -> None:
    _seed(store, clock)
    with store.db.write() as conn:
        _, reader = create_key(conn, "sales", ["read"], clock.now)
        _, admin = create_key(conn, "ops", ["admin"], clock.now)
    c = serve_ui()
    r = c.get("/")
    assert r.status_code == 401 and r.headers["content-type"].startswith("text/html")
    assert r.headers["www-authenticate"].startswith("Basic")
    assert "API key" in r.text
    assert c.get("/api/v1/leads").headers["content-type"].startswith("application/json")

    def basic(key: str) -> dict[str, str]:
        return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}

    assert c.get("/", headers=basic(reader)).status_code == 200
    assert c.get("/leads/L1", headers=basic(reader)).status_code == 200
    refused = c.get("/settings/keys", headers=basic(reader))
    assert refused.status_code == 403 and "admin" in refused.text
    assert c.get("/settings/keys", headers=basic(admin)).status_code == 200


def test_filter_form_segments_and_errors(
    store: Store, clock: Clock, serve_ui: Callable[..., httpx.Client]
) -> None:
    _seed(store, clock)
    c = serve_ui(no_auth=True)
    r = c.get("/?q=&band=hot&owner=&_field=country&_value=US", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/?band=hot&country=US"
    r = c.get("/?_field=sort&_value=x", follow_redirects=False)
    assert r.status_code == 400 and "not a profile field" in r.text
    assert c.put(
        "/api/v1/segments/US%20hot", json={"query": "band=hot&country=US"}
    ).status_code in (200, 201)
    r = c.get("/?segment=US%20hot", follow_redirects=False)
    assert r.status_code == 303
    assert r.headers["location"] == "/?band=hot&country=US&segment=US+hot"
    page = c.get(r.headers["location"]).text
    assert 'href="/leads/L1"' in page and 'href="/leads/L2"' not in page
    assert c.get("/?segment=nope").status_code == 404
    missing = c.get("/leads/nobody")
    assert missing.status_code == 404 and "no lead" in missing.text
    assert c.get("/?min_score=abc").status_code == 400
    assert c.get("/overview?sheet=nope").status_code == 404


def test_csv_export_has_every_matching_lead_and_no_formulas(
    store: Store, clock: Clock, serve_ui: Callable[..., httpx.Client]
) -> None:
    _seed(store, clock)
    c = serve_ui(no_auth=True)
    r = c.get("/api/v1/leads.csv?country=US&limit=1")  # limit is a page size: all come out
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert sorted(row["lead_id"] for row in rows) == ["L1", "L3"]
    l3 = next(row for row in rows if row["lead_id"] == "L3")
    assert l3["company"] == "'=HYPERLINK(1)"
    assert l3["first_name"] == EVIL
    assert c.get("/api/v1/leads.csv?sort=nope").status_code == 400
    # a profile field's name is a column's header: no formula there either
    c.post("/api/v1/leads", json={"lead_id": "L9", "=cmd|x!A1": "v"})
    header = c.get("/api/v1/leads.csv").text.splitlines()[0].split(",")
    assert "'=cmd|x!A1" in header and "=cmd|x!A1" not in header


def test_overview_counts_worked_out_by_hand(
    store: Store, clock: Clock, serve_ui: Callable[..., httpx.Client]
) -> None:
    """Three leads become MQL (demo requests): two on one day, one two days later; one lead
    never does. The default model's hot band (and MQL) starts at 75 points."""
    store.ensure_a_model()
    fit = {"job_title": "VP Sales", "country": "US", "employees": 500, "industry": "Software"}
    store.upsert_leads([LeadInput(f"M{i}", fields=fit) for i in range(4)])
    clock.advance(seconds=3600)
    store.ingest_events([EventInput("demo_request", clock.now, "M0")])
    clock.advance(seconds=600)
    store.ingest_events([EventInput("demo_request", clock.now, "M1")])
    clock.advance(days=2)
    store.ingest_events([EventInput("demo_request", clock.now, "M2")])
    c = serve_ui(no_auth=True)
    twin = c.get("/api/v1/overview?days=5").json()
    per_day = [d["mqls"] for d in twin["mqls_per_day"]]
    assert per_day == [0, 0, 2, 0, 1]
    assert twin["mqls"] == 3 and twin["in_top_band"] == 3 and twin["leads"] == 4
    assert twin["turned_hot_24h"]["leads"] == 1  # only M2 within the last 24 hours
    scores = sorted(i["score"] for i in c.get("/api/v1/leads").json()["items"])
    width = twin["histogram"]["width"]
    for b in twin["histogram"]["bins"]:
        assert b["leads"] == sum(b["from"] <= s < b["to"] for s in scores)
    assert sum(b["leads"] for b in twin["histogram"]["bins"]) == 4
    assert width > 0
    grades = {g["grade"]: g["leads"] for g in twin["grades"]}
    assert grades["A"] == 4
    assert twin["matrix"]["counts"]["A"]["hot"] == 3


NARROW = """version: 1
name: narrow
profile:
  - {id: vp, if: {field: job_title, contains: VP}, points: 60}
grades: {A: 50, B: 10}
bands: {warm: 10, hot: 50}
"""


def test_pages_hold_up_at_the_edges(
    store: Store, clock: Clock, serve_ui: Callable[..., httpx.Client]
) -> None:
    """A model whose lowest band starts above some scores (leads with no band), an empty
    saved segment, a profile field named like a parameter of the code, bad addresses."""
    _seed(store, clock)
    store.publish(store.add_model(NARROW, "narrow.yaml").name)
    c = serve_ui(no_auth=True)
    page = c.get("/overview?sheet=narrow")
    assert page.status_code == 200, page.text[:500]
    twin = c.get("/api/v1/overview?sheet=narrow").json()
    assert {b["band"]: b["leads"] for b in twin["bands"]} == {"warm": 0, "hot": 1, "-": 2}
    assert twin["matrix"]["counts"]["A"] == {"warm": 0, "hot": 1, "-": 0}
    # each cell of the matrix links to its leads, "-" (no band) included
    for grade, row in twin["matrix"]["counts"].items():
        for band, n in row.items():
            link = f"/?sheet=narrow&grade={grade}&band={band}"
            if n:
                assert link in page.text
            listed = c.get(f"/api/v1/leads?sheet=narrow&grade={grade}&band={band}").json()
            assert len(listed["items"]) == n, (grade, band)
    assert c.put("/api/v1/segments/all", json={"query": ""}).status_code in (200, 201)
    r = c.get("/?segment=all", follow_redirects=False)
    assert r.status_code == 200 and "Leads" in r.text  # the whole list, not a redirect loop
    assert c.get("/?request=x").status_code == 200
    for path, status in (("/nowhere", 404), ("/model?version=abc", 422), ("/leads/", 404)):
        r = c.get(path)
        assert r.status_code == status, (path, r.status_code)
        assert r.headers["content-type"].startswith("text/html"), path
    assert c.get("/api/v1/nowhere").headers["content-type"].startswith("application/json")
    headers = c.get("/").headers
    assert "script-src 'self'" in headers["content-security-policy"]
    assert headers["x-frame-options"] == "DENY"
    assert "onchange=" not in c.get("/overview").text  # no inline script under that policy


def test_charts_survive_degenerate_data() -> None:
    from leadscore.charts import bar_chart, nice_ticks, sparkline, step_chart

    assert nice_ticks(0, 1e-11) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert nice_ticks(0, 1, 4, whole=True) == [0.0, 1.0]
    assert nice_ticks(0, 7, 4, whole=True) == [0.0, 2.0, 4.0, 6.0, 8.0]
    assert "<rect" in bar_chart([("a", 0, "a"), ("b", 0, "b")], x_label="x", y_label="y")
    assert "<circle" in step_chart([(1, 1e-11, "decay")], until_us=1)
    # thresholds of one value share a line and a label; a history of one minute shows its
    # time once; the last date ends at the chart's right edge
    chart = step_chart(
        [(0, 10.0, "event")], until_us=60_000_000, thresholds=[("hot", 75), ("MQL", 75)]
    )
    assert chart.count('class="threshold"') == 1 and ">hot, MQL 75<" in chart
    assert chart.count(">01 Jan 00:00<") == 1
    assert 'text-anchor="end">01 Jan 00:01<' in chart
    assert "<path" in sparkline([(5, 3.0)])
    assert "&lt;b&gt;" in bar_chart([("<b>", 1, "<b>")], x_label="<b>", y_label="y")


def test_the_model_page_opens_the_newest_version(
    store: Store, clock: Clock, serve_ui: Callable[..., httpx.Client]
) -> None:
    store.publish(store.add_model(NARROW, "narrow.yaml").name)
    clock.advance(seconds=1)
    store.add_model(NARROW.replace("points: 60", "points: 70"), "narrow.yaml")  # a draft
    c = serve_ui(no_auth=True)
    page = c.get("/model?name=narrow").text
    assert "Showing version 2 (draft" in page and "points: 70" in page
    assert "the active version is" in page and 'version=1">1</a>' in page
    assert "points: 60" in c.get("/model?name=narrow&version=1").text


def test_validation_page_agrees_with_its_twin(
    store: Store, clock: Clock, serve_ui: Callable[..., httpx.Client]
) -> None:
    """The Validation page shows the report of GET /api/v1/validation: the ten leads of
    tests/test_validation.py, whose figures were worked out by hand."""
    from tests.test_validation import AS_OF
    from tests.test_validation_service import CSV, outcomes_csv, seed

    c = serve_ui(no_auth=True)
    seed(c)
    c.post("/api/v1/outcomes", content=outcomes_csv(), headers=CSV)
    query = {"sheet": "hand", "as_of": AS_OF.isoformat(), "target_precision": "0.5"}
    twin = c.get("/api/v1/validation", params=query).json()
    page = c.get("/validation", params=query)
    assert page.status_code == 200, page.text
    html = page.text
    assert 'aria-current="page">Validation' in html
    assert f"{twin['roc_auc']['value']:.3f}" == "0.643" and "<b>0.643</b>" in html
    assert "1 of 2 MQLs converted" in html  # precision 50%
    assert "<td>hot</td><td>60</td><td>2</td><td>1</td><td>50.0%</td>" in html
    assert "<b>40 points</b>" in html  # the threshold for a precision of 50%
    assert '<td>won</td><td class="num">5</td>' in html  # the stored outcomes
    assert 'id="outcomes-form"' in html and "<svg" in html
    psi = twin["drift"]["columns"]["score"]["value"]
    assert 'id="report-drift"' in html and f"<td>score</td><td>{psi:.3f}</td>" in html
    bad = c.get("/validation", params={"horizon": "soon"})
    assert bad.status_code == 422 and "text/html" in bad.headers["content-type"]
    assert "horizon: &#39;soon&#39; is not a duration" in bad.text
    bad = c.get("/validation", params={"target_precision": "a lot"})
    assert bad.status_code == 422 and "target precision" in bad.text
    percent = c.get("/validation", params={**query, "target_precision": "50%"})
    assert "<b>40 points</b>" in percent.text


def test_triggers_page_says_when_as_the_file_does(
    store: Store, clock: Clock, serve_ui: Callable[..., httpx.Client]
) -> None:
    """`becomes_mql: true` reads "becomes MQL", not "becomes mql True"."""
    from leadscore.store.triggers import parse_triggers, save_triggers

    _seed(store, clock)
    text = (
        "triggers:\n"
        "  - {id: a, when: {becomes_mql: true}, actions: [set_stage: sql]}\n"
        "  - {id: b, when: {enters_band: hot}, actions: [set_stage: sql]}\n"
    )
    with store.db.write() as conn:
        save_triggers(conn, parse_triggers(text), clock.now)
    page = serve_ui(no_auth=True).get("/settings/triggers").text
    assert "<td>becomes MQL</td>" in page and "enters band <b>hot</b>" in page
    assert "True" not in page
