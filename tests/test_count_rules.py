"""Count and trend rules, worked out by hand, in both evaluators.

A count rule gives its points once when the number of its counted events (after type, window,
`where` and `frequency`) passes its test; a trend rule when the events of the last
`recent_days` reach `ratio` times the rate of the `baseline_days` before them.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa
import pytest

from leadscore import ModelError, parse_model, prepare, score_lead, score_run
from leadscore.engine.explain import explanation_text

AS_OF = datetime(2026, 6, 30, tzinfo=UTC)


def ago(days: float) -> str:
    return (AS_OF - timedelta(days=days)).isoformat()


def both(model_text: str, events: list[dict[str, Any]]) -> tuple[dict[str, float], Any]:
    """Each rule's points for lead A, from the per-lead evaluator; asserts the batch agrees."""
    model = parse_model("version: 1\nname: c\n" + model_text)
    one = score_lead(model, {"lead_id": "A"}, events, as_of=AS_OF)
    per_lead = {r.rule_id: r.points for r in one.rules}
    columns: dict[str, list[Any]] = {"lead_id": [], "type": [], "ts": [], "item": [], "url": []}
    for e in events:
        columns["lead_id"].append("A")
        for key in ("type", "ts", "item", "url"):
            columns[key].append(e.get(key))
    table = score_run(
        model, prepare(pa.table({"lead_id": ["A"]}), pa.table(columns)), AS_OF
    ).table.to_pylist()[0]
    assert {r: table[f"rule:{r}"] for r in per_lead} == per_lead
    return per_lead, one


def test_count_inside_a_window_edges_excluded() -> None:
    rule = "activity: [{id: r, event: view, window_days: 30, count: {gte: 2}, points: 12}]\n"
    views = [{"type": "view", "ts": ago(d)} for d in (29.999, 30, 10)]
    points, result = both(rule, views)
    assert points == {"r": 12.0}  # ages 29.999 and 10 are inside; 30 is not
    assert "2 counted events in 30 days; needs at least 2" in result.rules[0].note
    points, _ = both(rule, views[1:])
    assert points == {"r": 0.0}


def test_count_distinct_items_and_none() -> None:
    rule = (
        "activity: [{id: r, event: webinar, frequency: once_per_item, "
        "count: {gte: 3, lt: 4}, points: 20}]\n"
    )
    webinars = [
        {"type": "webinar", "ts": ago(d), "item": item}
        for d, item in ((5, "a"), (4, " a "), (3, "b"), (2, None), (1, ""))
    ]
    points, _ = both(rule, webinars)
    assert points == {"r": 20.0}  # items a, b and "none" (no item and an empty one: one item)
    points, _ = both(rule, [*webinars, {"type": "webinar", "ts": ago(1), "item": "c"}])
    assert points == {"r": 0.0}  # four items: not fewer than 4


def test_count_of_zero_and_once() -> None:
    quiet = "activity: [{id: r, event: view, window_days: 14, count: {eq: 0}, points: -5}]\n"
    assert both(quiet, [])[0] == {"r": -5.0}  # no events at all: zero of them
    assert both(quiet, [{"type": "view", "ts": ago(20)}])[0] == {"r": -5.0}
    assert both(quiet, [{"type": "view", "ts": ago(2)}])[0] == {"r": 0.0}
    once = "activity: [{id: r, event: view, frequency: once, count: {gte: 2}, points: 9}]\n"
    assert both(once, [{"type": "view", "ts": ago(d)} for d in (1, 2, 3)])[0] == {"r": 0.0}


def test_count_points_are_capped() -> None:
    rule = "activity: [{id: r, event: view, count: {gte: 1}, points: 30, max_points: 25}]\n"
    points, result = both(rule, [{"type": "view", "ts": ago(1)}])
    assert points == {"r": 25.0} and result.rules[0].clipped == "max_points"


def test_trend_at_exactly_the_ratio() -> None:
    rule = (
        "activity: [{id: r, event: view, where: {field: url, contains: /pricing}, "
        "trend: {recent_days: 7, baseline_days: 28, ratio: 2}, points: 15}]\n"
    )

    def views(recent: int, earlier: int, other: int = 0) -> list[dict[str, Any]]:
        rows = [{"type": "view", "ts": ago(1 + i), "url": "/pricing"} for i in range(recent)]
        rows += [{"type": "view", "ts": ago(8 + i), "url": "/pricing"} for i in range(earlier)]
        rows += [{"type": "view", "ts": ago(2), "url": "/blog"} for _ in range(other)]
        return rows

    # 2 in 7 days against 4 in the 28 before: 2 x 28 = 56 >= 2 x 4 x 7 = 56
    points, result = both(rule, views(2, 4, other=3))
    assert points == {"r": 15.0}
    assert result.rules[0].note.startswith("2 in the last 7 days, 4 in the 28 days before")
    assert both(rule, views(2, 5))[0] == {"r": 0.0}  # 56 < 70
    assert both(rule, views(1, 0))[0] == {"r": 15.0}  # anything beats nothing
    assert both(rule, views(0, 0))[0] == {"r": 0.0}  # but not nothing at all
    # the baseline window ends at 7 + 28 = 35 days: older views do not count
    old = [{"type": "view", "ts": ago(35), "url": "/pricing"}] * 9
    assert both(rule, views(1, 0) + old)[0] == {"r": 15.0}
    strict = rule.replace("ratio: 2}", "ratio: 2, min_recent: 3}")
    assert both(strict, views(2, 0))[0] == {"r": 0.0}


def test_explanation_text_names_the_count() -> None:
    rule = "activity: [{id: pricing3, event: view, window_days: 30, count: {gte: 3}, points: 12}]\n"
    model = parse_model("version: 1\nname: c\n" + rule)
    result = score_lead(model, {}, [{"type": "view", "ts": ago(1)}], as_of=AS_OF)
    text = explanation_text(model, result)
    assert "does not fire: 1 counted event in 30 days; needs at least 3 (12.00 pts once)" in text


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ("count: {gte: 2}, trend: {recent_days: 7, baseline_days: 7}", "not both"),
        ("count: {gte: 2}, half_life_days: 7", "`diminishing` and `half_life_days` do not apply"),
        ("trend: {recent_days: 7, baseline_days: 7}, window_days: 30", "drop `window_days`"),
        ("trend: {recent_days: 7, baseline_days: 7}, frequency: once", "drop `frequency`"),
        ("count: {}", "needs at least one of gte, gt, lte, lt, eq"),
        ("count: {gte: -1}", "count.gte: must be >= 0, got -1"),
        ("count: {more: 3}", "unknown key 'more'"),
        ("trend: {recent_days: 0, baseline_days: 7}", "trend.recent_days: must be > 0"),
    ],
)
def test_count_and_trend_mistakes_are_named(rule: str, message: str) -> None:
    text = f"version: 1\nname: c\nactivity:\n  - {{id: r, event: view, points: 5, {rule}}}\n"
    with pytest.raises(ModelError) as info:
        parse_model(text)
    assert message in str(info.value)
    assert ":4:" in str(info.value)  # the rule's line


def test_the_documented_rules_do_what_docs_model_md_says() -> None:
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "model.md").read_text()
    section = doc[doc.index("### Count and trend rules") :]
    block = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert block is not None
    rising = "activity:\n" + block.group(1).split("  - id: visits-rising")[1].join(
        ["  - id: visits-rising", ""]
    )
    week = [{"type": "page_view", "ts": ago(d)} for d in (1, 2)]
    month = [{"type": "page_view", "ts": ago(d)} for d in (8, 10, 20, 30, 34)]
    assert both(rising, week + month[:4])[0] == {"visits-rising": 15.0}  # 2 against 4: fires
    assert both(rising, week + month)[0] == {"visits-rising": 0.0}  # 2 against 5: does not
