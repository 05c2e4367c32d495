"""MODEL_SPEC.md's arithmetic and conditions, with numbers worked out by hand."""

from __future__ import annotations

import textwrap

import pytest

from leadscore import parse_model, score_lead
from leadscore.spec.conditions import compile_condition, parse_number
from leadscore.spec.schema import ProfileRuleSpec

AS_OF = "2026-06-30T00:00:00Z"


def ev(kind: str, days_ago: float, **fields: str) -> dict[str, object]:
    from datetime import datetime, timedelta

    ts = datetime(2026, 6, 30) - timedelta(days=days_ago)
    return {"type": kind, "ts": ts.isoformat(), **fields}


def model(body: str) -> object:
    return parse_model("version: 1\nname: t\n" + textwrap.dedent(body))


def test_diminishing_decay_and_rule_cap() -> None:
    """3 page views 30, 10 and 0 days old; 10 pts, diminishing 0.5, half-life 10 days.

    Oldest first: 10 * 1 * 0.5^3 = 1.25; 10 * 0.5 * 0.5^1 = 2.5; 10 * 0.25 * 1 = 2.5.
    Sum 6.25; max_points 6 clips it to 6.
    """
    m = model(
        """
        activity:
          - {id: pv, event: page_view, points: 10, diminishing: 0.5, half_life_days: 10,
             max_points: 6}
        """
    )
    r = score_lead(m, {}, [ev("page_view", 0), ev("page_view", 30), ev("page_view", 10)], AS_OF)
    (rule,) = r.rules
    assert [e.points for e in rule.events] == [1.25, 2.5, 2.5]
    assert rule.raw == 6.25 and rule.points == 6 and rule.clipped == "max_points"
    assert r.score == 6


def test_frequency_window_and_future_events() -> None:
    """once: only the newest (5 days, not the 1-day-in-the-future one) counts: 10 * 0.5^(5/5)=5.
    once_per_item: items are compared after trimming, so 'a' and ' a' are one item, 'A' is
    another, and blank and missing items are one item together: 3 items * 4 = 12.
    window 7: events aged 7 days exactly are outside: 2 of 3 count: 2 * 1 = 2.
    """
    m = model(
        """
        activity:
          - {id: once, event: demo, points: 10, frequency: once, half_life_days: 5}
          - {id: items, event: webinar, points: 4, frequency: once_per_item}
          - {id: recent, event: open, points: 1, window_days: 7}
        """
    )
    events = [
        ev("demo", 20),
        ev("demo", 5),
        ev("demo", -1),
        ev("webinar", 9, item="a"),
        ev("webinar", 2, item=" a"),
        ev("webinar", 3, item="A"),
        ev("webinar", 4, item=""),
        ev("webinar", 6),
        ev("open", 7),
        ev("open", 6.99),
        ev("open", 0),
    ]
    r = score_lead(m, {}, events, AS_OF)
    assert r.contributions == {"once": 5.0, "items": 12.0, "recent": 2.0}


def test_inactivity_groups_weights_and_model_clip() -> None:
    """fit: 30 + 20 = 50, group max 40, weight 0.5 -> 20. engagement: no event newer than 10 days
    -> -15; group min -10 -> -10. total 10; model min 12 -> 12. Grade from fit 20: B (>= 20)."""
    m = model(
        """
        groups:
          fit: {max: 40, weight: 0.5}
          engagement: {min: -10}
        profile:
          - {id: a, if: {field: t, contains: vp}, points: 30}
          - {id: b, if: {field: n, between: [1, 10]}, stars: 2}
        inactivity:
          - {id: quiet, no_activity_days: 10, points: -15}
        min: 12
        grades: {A: 30, B: 20}
        bands: {cold: -.inf, warm: 12}
        mql: warm
        priority: {B: {warm: B2}}
        """
    )
    r = score_lead(m, {"t": " VP ", "n": "1e1"}, [ev("open", 10)], AS_OF)
    assert (r.fit, r.engagement, r.raw_total, r.score) == (20.0, -10.0, 10.0, 12.0)
    assert (r.grade, r.band, r.mql, r.priority) == ("B", "warm", True, "B2")
    assert r.total_clipped == "min"
    assert score_lead(m, {}, [ev("open", 9.5)], AS_OF).engagement == 0.0


@pytest.mark.parametrize(
    ("condition", "value", "expected"),
    [
        ({"field": "f", "eq": 200}, "200.0", True),  # both numbers: compared as numbers
        ({"field": "f", "eq": "VP Sales"}, "  vp sales ", True),
        ({"field": "f", "ne": "x"}, None, False),  # missing: false for everything...
        ({"field": "f", "missing": True}, " ", True),  # ...but `missing`
        ({"field": "f", "in": "Software; Financial Services"}, "financial services", True),
        ({"field": "f", "not_in": ["a", "b"]}, "c", True),
        ({"field": "f", "contains": ["vp", "head of"]}, "Head Of Sales", True),
        ({"field": "f", "not_contains": "vp"}, "CEO", True),
        ({"field": "f", "starts_with": "/pricing"}, "/Pricing/enterprise", True),
        ({"field": "f", "ends_with": ".edu"}, "a@uni.EDU ", True),
        ({"field": "f", "matches": r"^c[a-z]o$"}, "CFO", True),
        ({"field": "f", "gt": 5}, "abc", False),  # not a number: false (and a warning)
        ({"field": "f", "between": [200, 5000]}, "1,200", False),
        ({"field": "f", "between": [200, 5000]}, " 1e3 ", True),
        ({"field": "f", "lte": 0.5}, ".5", True),
        ({"field": "f", "exists": True}, "x", True),
    ],
)
def test_operators(condition: dict[str, object], value: str | None, expected: bool) -> None:
    spec = ProfileRuleSpec.model_validate({"id": "r", "if": condition, "points": 1})
    assert compile_condition(spec.if_)({"f": value}) is expected


def test_combinators_and_numbers() -> None:
    spec = ProfileRuleSpec.model_validate(
        {
            "id": "r",
            "points": 1,
            "if": {
                "all": [
                    {"any": [{"field": "a", "eq": 1}, {"field": "b", "eq": 1}]},
                    {"not": {"field": "c", "exists": True}},
                ]
            },
        }
    )
    pred = compile_condition(spec.if_)
    assert (
        pred({"a": "1", "c": ""})
        and not pred({"a": "2", "b": "0"})
        and not pred({"b": "1", "c": "x"})
    )
    assert [parse_number(t) for t in ["1e6", " -2.5 ", "+7", "5.", "n/a", "1,2", "", "inf"]] == [
        1e6,
        -2.5,
        7.0,
        5.0,
        None,
        None,
        None,
        None,
    ]


def test_explanation_adds_up() -> None:
    from leadscore import load_model
    from tests.conftest import MODELS

    m = load_model(MODELS / "b2b-default.yaml")
    events = [ev("page_view", d, url=u) for d, u in [(1, "/pricing"), (3, "/"), (40, "/careers")]]
    events += [ev("demo_request", 2), ev("email_open", 5, item="c1")]
    r = score_lead(m, {"job_title": "VP Sales", "industry": "Software"}, events, AS_OF)
    for rule in r.rules:
        if rule.events:
            assert sum(e.points for e in rule.events) == pytest.approx(rule.raw, abs=1e-12)
    for g in r.groups:
        assert sum(c.points for c in r.rules if c.group == g.group_id) == pytest.approx(g.raw)
    assert sum(g.points for g in r.groups) == pytest.approx(r.raw_total)
    assert r.fit + r.engagement == pytest.approx(r.score)


def test_long_event_lists_are_elided_with_their_subtotal() -> None:
    from leadscore import explanation_text

    m = model("activity:\n  - {id: pv, event: page_view, points: 1, diminishing: 0.5}\n")
    r = score_lead(m, {"lead_id": "L1"}, [ev("page_view", d) for d in range(30)], AS_OF)
    text = explanation_text(m, r)
    assert text.startswith("Lead L1 - model t")
    assert text.count(" page_view: ") == 10
    # events 6..25 (k = 6..25) are worth 0.5^5 + ... + 0.5^24
    hidden = sum(0.5**k for k in range(5, 25))
    assert f"... 20 more counted events worth {hidden:.4f}" in text


def test_example_events_are_read_like_any_events() -> None:
    """An example's event type and fields get the same trimming as real events."""
    from leadscore import run_examples

    m = parse_model(
        "version: 1\nname: t\nactivity: [{id: pv, event: page_view, points: 5}]\n"
        "examples:\n  - name: spaced\n    as_of: 2026-06-30T00:00:00Z\n"
        "    events: [{type: ' page_view ', days_ago: 1}]\n    expect: {score: 5}\n"
    )
    assert [o.problems for o in run_examples(m)] == [()]


def test_as_row_has_the_batch_columns_in_order() -> None:
    from leadscore.engine.batch import output_columns

    m = model("activity:\n  - {id: pv, event: page_view, points: 2}\n")
    row = score_lead(m, {"lead_id": "L1"}, [ev("page_view", 1)], AS_OF).as_row()
    assert list(row) == output_columns(m)
    assert (row["lead_id"], row["score"], row["rule:pv"], row["group:engagement"]) == (
        "L1",
        2.0,
        2.0,
        2.0,
    )


def test_events_in_any_order_score_alike() -> None:
    """The evaluator sorts a lead's events itself; oldest-first input (as the store hands it
    over) skips the sort and must give the same result, explanation included."""
    import random

    m = model(
        """
        activity:
          - {id: pv, event: page_view, points: 3, diminishing: 0.7, half_life_days: 20}
          - {id: once, event: demo, points: 10, frequency: once}
          - {id: items, event: webinar, points: 4, frequency: once_per_item, window_days: 40}
        inactivity:
          - {id: quiet, no_activity_days: 5, points: -5}
        """
    )
    kinds = ["page_view", "demo", "webinar", "email_open"]
    events = [ev(kinds[i % 4], i * 1.5, item=f"w{i % 3}", event_id=f"e{i}") for i in range(1, 30)]
    in_order = sorted(events, key=lambda e: str(e["ts"]))
    shuffled = list(events)
    random.Random(7).shuffle(shuffled)
    results = [score_lead(m, {}, evs, AS_OF) for evs in (in_order, shuffled, events)]
    assert results[0] == results[1] == results[2]
    assert [e.event_id for e in results[0].rules[0].events][:2] == ["e28", "e24"]


def test_profile_results_kept_between_calls_follow_the_fields(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With ``profiles`` (a dict the caller keeps), the profile rules' results are kept by the
    values of the fields they read: a lead scored again gets the same contributions and
    warnings, a changed field gets its own, a field no rule reads shares them, long values
    are not kept, and starting over past the bound changes nothing."""
    import leadscore.engine.lead as lead_module

    m = model(
        """
        profile:
          - {id: vp, if: {field: title, contains: vp}, points: 10}
          - {id: big, if: {field: employees, gt: 100}, points: 5}
          - {id: us, if: {field: country, eq: US}, points: 3}
        """
    )
    memo: lead_module.ProfileMemo = {}

    def score(lead: dict[str, object]) -> object:
        kept = score_lead(m, lead, (), AS_OF, explain=False, profiles=memo)
        plain = score_lead(m, lead, (), AS_OF, explain=False)
        assert (kept.score, kept.warnings, kept.rules) == (plain.score, plain.warnings, plain.rules)
        return kept

    vp = {"title": "VP Sales", "employees": "lots", "country": "US", "other": "x"}
    first = score(vp)
    assert (first.score, first.warnings) == (
        13.0,
        ("rule big: lead field 'employees': 'lots' is not a number",),
    )
    assert len(memo) == 1
    again = score({**vp, "other": "y"})  # a field no rule reads: the same entry
    assert (again.score, again.warnings, again.rules) == (first.score, first.warnings, first.rules)
    assert len(memo) == 1
    assert score({**vp, "country": "DE"}).score == 10.0
    assert score({**vp, "employees": 500}).warnings == ()
    assert score({**vp, "employees": 500}).score == 18.0
    assert score({**vp, "title": None}).score == 3.0
    assert len(memo) == 4
    assert score({**vp, "title": "VP " + "x" * lead_module.PROFILE_MEMO_CHARS}).score == 13.0
    assert len(memo) == 4  # too long to keep: evaluated each time
    monkeypatch.setattr(lead_module, "PROFILE_MEMO", 2)
    for title, points in [("VP", 13.0), ("CTO", 3.0), ("vp eng", 13.0), ("CTO", 3.0)] * 2:
        assert score({**vp, "title": title}).score == points
    assert len(memo) <= 2
