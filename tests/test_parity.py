"""The two evaluators agree to 1e-9 on random models, leads and events (ARCHITECTURE.md #1).

Hypothesis builds models with every rule kind, option, operator, cap, weight, decay, window and
frequency, count and trend rules, negative points included, and messy leads and events (blank
and non-numeric values, mixed case, stray spaces, events in the future and exactly on window
edges, missing items).
"""

from __future__ import annotations

import math
from typing import Any

import ibis
import pyarrow as pa
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from leadscore import parse_model, score_lead, score_leads
from leadscore.engine.batch import plan_for
from leadscore.engine.lead import Event, _column, _text_filtered
from leadscore.engine.timeutil import MICROS_PER_DAY, from_micros
from leadscore.scoring import iter_lead_events, prepare, score_run
from leadscore.spec.conditions import OPERATORS, FieldCondition, compile_condition, text_filter

AS_OF = "2026-06-30T12:00:00Z"
T_US = 1782820800 * 1_000_000  # 2026-06-30T12:00:00Z

LEAD_FIELDS = ["title", "industry", "employees"]
EVENT_TYPES = ["page_view", "email_open", "demo_request"]
TEXTS = [
    "",
    " ",
    "VP Sales",
    " vp ",
    "Chief",
    "software",
    "Software ",
    "abc",
    "n/a",
    "x;y",
    "İzmir",
    "ΟΔΟΣ",
    "Straße",
    "\u00a0vp",
    "\tvp\x0b",
]
NUMBERS = ["200", " 200 ", "1e3", "199.5", "-5", "0", "5000", "+7", ".5", "1,200"]
VALUES = st.one_of(st.none(), st.sampled_from(TEXTS + NUMBERS))
URLS = st.one_of(
    st.none(), st.sampled_from(["/pricing", "/Pricing/x", "/careers", "/", "10", "3.5"])
)
ITEMS = st.one_of(st.none(), st.sampled_from(["", " ", "a", "A", " a", "b", "w1"]))
# Ages in days: exact window edges, fractional, and the future (negative).
AGES = st.one_of(
    st.sampled_from([0, 1, 7, 14, 30, 45, 60, 90, -1, -0.5]),
    st.floats(min_value=-2, max_value=400, allow_nan=False),
)
POINTS = st.one_of(st.integers(-50, 60), st.floats(-50, 60, allow_nan=False)).map(float)
SMALL_POSITIVE = st.sampled_from([1, 7, 14, 30, 45, 60, 90, 0.5, 2.5])


def operand_for(op: str) -> st.SearchStrategy[Any]:
    if op in ("gt", "gte", "lt", "lte"):
        return st.sampled_from([0, 5, 199.5, 200, 1000, -10])
    if op == "between":
        return st.sampled_from([[0, 200], [200, 5000], [-10, 0.5], [5, 5]])
    if op in ("exists", "missing"):
        return st.booleans()
    if op == "matches":
        return st.sampled_from(["^vp", r"\d+", "soft|chief", "^$", "A.C"])
    if op in ("eq", "ne"):
        return st.sampled_from(["vp sales", "200", 200, 1000.0, "software", "İzmir", "οδος", ""])
    scalar = st.sampled_from(["vp", "Soft", "200", "c", "/pricing", "1", "x", "İZ", "σ"])  # noqa: RUF001
    return st.one_of(
        scalar,
        st.lists(scalar, min_size=1, max_size=3),
        st.just("software; Chief ;200"),
    )


OPS = list(OPERATORS)


def field_condition(fields: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    return st.tuples(st.sampled_from(fields), st.sampled_from(OPS)).flatmap(
        lambda fo: operand_for(fo[1]).map(lambda v: {"field": fo[0], fo[1]: v})
    )


def condition(fields: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    return st.recursive(
        field_condition(fields),
        lambda inner: st.one_of(
            st.lists(inner, min_size=1, max_size=3).map(lambda c: {"all": c}),
            st.lists(inner, min_size=1, max_size=3).map(lambda c: {"any": c}),
            inner.map(lambda c: {"not": c}),
        ),
        max_leaves=4,
    )


@st.composite
def models(draw: st.DrawFn) -> dict[str, Any]:
    n_profile_groups = draw(st.integers(1, 2))
    n_activity_groups = draw(st.integers(1, 2))
    groups: dict[str, Any] = {}
    for kind, n in (("profile", n_profile_groups), ("activity", n_activity_groups)):
        for i in range(n):
            g: dict[str, Any] = {"kind": kind}
            low = draw(st.one_of(st.none(), st.sampled_from([-50.0, -10.0, 0.0])))
            high = draw(st.one_of(st.none(), st.sampled_from([10.0, 40.0, 100.0])))
            if low is not None:
                g["min"] = low
            if high is not None:
                g["max"] = high
            if draw(st.booleans()):
                g["weight"] = draw(st.sampled_from([0.0, 0.5, 1.5, 2.0]))
            groups[f"{kind[0]}{i}"] = g
    pgroups = [k for k, v in groups.items() if v["kind"] == "profile"]
    agroups = [k for k, v in groups.items() if v["kind"] == "activity"]
    profile = []
    for i in range(draw(st.integers(0, 3))):
        rule: dict[str, Any] = {
            "id": f"p{i}",
            "group": draw(st.sampled_from(pgroups)),
            "if": draw(condition(LEAD_FIELDS)),
        }
        if draw(st.booleans()):
            rule["points"] = draw(POINTS)
        else:
            rule["stars"] = draw(st.integers(1, 5))
        profile.append(rule)
    activity = []
    for i in range(draw(st.integers(0, 4))):
        types = draw(st.lists(st.sampled_from(EVENT_TYPES), min_size=1, max_size=2, unique=True))
        rule = {
            "id": f"a{i}",
            "group": draw(st.sampled_from(agroups)),
            "event": types[0] if len(types) == 1 else types,
            "points": draw(POINTS),
            "frequency": draw(st.sampled_from(["every", "once", "once_per_item"])),
        }
        if draw(st.booleans()):
            rule["where"] = draw(condition(["url", "item", "type"]))
        if draw(st.booleans()):
            rule["diminishing"] = draw(st.sampled_from([0.5, 0.7, 0.9, 1.0]))
        if draw(st.booleans()):
            rule["half_life_days"] = draw(SMALL_POSITIVE)
        if draw(st.booleans()):
            rule["window_days"] = draw(SMALL_POSITIVE)
        if draw(st.booleans()):
            rule["max_points"] = draw(st.sampled_from([5.0, 20.0, 50.0]))
        if draw(st.booleans()):
            rule["min_points"] = draw(st.sampled_from([-30.0, -5.0, 0.0]))
        form = draw(st.sampled_from(["points", "points", "count", "trend"]))
        if form != "points":  # points once, on the number of matching events
            rule.pop("diminishing", None)
            rule.pop("half_life_days", None)
        if form == "count":
            tests = draw(
                st.dictionaries(
                    st.sampled_from(["gte", "gt", "lte", "lt", "eq"]),
                    st.integers(1, 4),
                    min_size=1,
                    max_size=2,
                )
            )
            if draw(st.booleans()) and "lt" not in tests:
                tests[draw(st.sampled_from(["lte", "eq", "gte"]))] = 0
            rule["count"] = tests
        elif form == "trend":
            rule.pop("window_days", None)
            rule.pop("frequency", None)
            rule["trend"] = {
                "recent_days": draw(st.sampled_from([1, 7, 14, 0.5])),
                "baseline_days": draw(st.sampled_from([7, 30, 60, 2.5])),
                "ratio": draw(st.sampled_from([0.5, 1, 2, 3.5])),
            }
            if draw(st.booleans()):
                rule["trend"]["min_recent"] = draw(st.integers(1, 3))
        activity.append(rule)
    inactivity = []
    for i in range(draw(st.integers(0, 2))):
        rule = {
            "id": f"q{i}",
            "group": draw(st.sampled_from(agroups)),
            "no_activity_days": draw(SMALL_POSITIVE),
            "points": draw(POINTS),
        }
        if draw(st.booleans()):
            rule["event"] = draw(
                st.lists(st.sampled_from(EVENT_TYPES), min_size=1, max_size=2, unique=True)
            )
        inactivity.append(rule)
    model: dict[str, Any] = {
        "version": 1,
        "name": "random",
        "points_per_star": draw(st.sampled_from([1, 10, 2.5])),
        "groups": groups,
        "profile": profile,
        "activity": activity,
        "inactivity": inactivity,
        "grades": {"A": 60.0, "B": 30.0, "C": 0.0},
        "bands": {"cold": -math.inf, "warm": 10.0, "hot": 40.0},
        "mql": draw(st.sampled_from(["hot", "warm", 25, 0])),
        "priority": {"A": {"hot": "A1", "warm": "A2"}, "F": {"cold": "F3"}},
    }
    if draw(st.booleans()):
        model["min"], model["max"] = -20.0, draw(st.sampled_from([50.0, 120.0]))
    return model


@st.composite
def datasets(draw: st.DrawFn) -> tuple[pa.Table, pa.Table]:
    n = draw(st.integers(1, 6))
    leads = {"lead_id": [f"L{i}" for i in range(n)]}
    for f in LEAD_FIELDS:
        leads[f] = [draw(VALUES) for _ in range(n)]
    rows = draw(
        st.lists(
            st.tuples(
                st.integers(0, n),  # n = a lead not in the leads table
                st.sampled_from([*EVENT_TYPES, "other"]),
                AGES,
                ITEMS,
                URLS,
            ),
            max_size=25,
        )
    )
    events = {
        "lead_id": [f"L{r[0]}" for r in rows],
        "type": [r[1] for r in rows],
        "ts": [from_micros(T_US - round(r[2] * MICROS_PER_DAY)) for r in rows],
        "item": [r[3] for r in rows],
        "url": [r[4] for r in rows],
    }
    lead_table = pa.table({k: pa.array(v, pa.string()) for k, v in leads.items()})
    event_table = pa.table(
        {
            **{k: pa.array(v, pa.string()) for k, v in events.items() if k != "ts"},
            "ts": pa.array(events["ts"], pa.timestamp("us", tz="UTC")),
        }
    )
    return lead_table, event_table


def close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-9 * max(1.0, abs(a), abs(b))


def near(value: float, thresholds: list[float]) -> bool:
    return any(abs(value - t) <= 1e-9 * max(1.0, abs(t)) for t in thresholds if math.isfinite(t))


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(raw=models(), data=datasets())
def test_batch_equals_per_lead(raw: dict[str, Any], data: tuple[pa.Table, pa.Table]) -> None:
    model = parse_model(yaml.safe_dump(raw, sort_keys=False))
    prepared = prepare(*data)
    batch = {r["lead_id"]: r for r in score_run(model, prepared, AS_OF).table.to_pylist()}
    assert len(batch) == prepared.leads.num_rows  # every lead, with or without events
    # the same plan bound to Ibis tables on their own backend gives the same table
    con = ibis.duckdb.connect()
    bound = score_leads(
        model, con.create_table("l", prepared.leads), con.create_table("e", prepared.events), AS_OF
    )
    for row in bound.to_pylist():
        assert all(
            close(v, batch[row["lead_id"]][k])
            if isinstance(v, float)
            else v == batch[row["lead_id"]][k]
            for k, v in row.items()
        ), row
    grade_cuts = [t for _, t in model.grades]
    band_cuts = [t for _, t in model.bands] + [model.mql_threshold or 0.0]
    for lead, events in iter_lead_events(prepared):
        one = score_lead(model, lead, events, AS_OF)
        fast = score_lead(model, lead, events, AS_OF, explain=False)
        assert (fast.contributions, fast.score) == (one.contributions, one.score)
        row = batch[lead["lead_id"]]
        for rule_id, points in one.contributions.items():
            assert close(points, row[f"rule:{rule_id}"]), (rule_id, points, row)
        for group_id, points in one.group_points.items():
            assert close(points, row[f"group:{group_id}"]), (group_id, points, row)
        assert close(one.score, row["score"])
        assert close(one.fit, row["fit"])
        assert close(one.engagement, row["engagement"])
        if not near(one.fit, grade_cuts):
            assert one.grade == row["grade"]
        if not near(one.score, band_cuts):
            assert one.band == row["band"]
            assert one.mql == row["mql"]
            if not near(one.fit, grade_cuts):
                assert one.priority == row["priority"]


def test_parity_strategy_reaches_every_frequency() -> None:
    """Guard the generator itself: it must produce each rule option the test relies on."""
    seen: set[str] = set()

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(models())
    def collect(raw: dict[str, Any]) -> None:
        for r in raw["activity"]:
            seen.add(r.get("frequency", "every"))
            keys = ("diminishing", "half_life_days", "window_days", "count", "trend")
            seen.update(k for k in keys if k in r)
        if raw["inactivity"]:
            seen.add("inactivity")

    collect()
    assert {"every", "once", "once_per_item", "diminishing", "half_life_days"} <= seen
    assert {"count", "trend"} <= seen


def test_long_decimal_points_times_weight_stay_double() -> None:
    """Found by the property test: bare float literals made DuckDB use DECIMAL arithmetic,
    and 50.068425977431076 * 2.0 overflowed DECIMAL(18)."""
    model = parse_model(
        "version: 1\nname: r\ngroups: {a1: {kind: activity, weight: 2.0}}\n"
        "inactivity: [{id: q0, group: a1, no_activity_days: 1, points: 50.068425977431076}]\n"
    )
    leads = pa.table({"lead_id": ["L0"]})
    table = score_run(model, prepare(leads), AS_OF).table
    expected = score_lead(model, {"lead_id": "L0"}, [], AS_OF).score
    assert table.column("score").to_pylist() == [expected] == [100.13685195486215]


def test_operators_without_presence_tests_still_miss_blank_values() -> None:
    """The batch SQL drops presence tests where operands are non-empty; `eq: ''` keeps one."""
    model = parse_model(
        "version: 1\nname: e\nprofile:\n  - {id: p, if: {field: f, eq: ''}, points: 5}\n"
        "  - {id: q, if: {field: f, starts_with: ab}, points: 1}\n"
        "  - {id: r, if: {field: f, ends_with: yz}, points: 2}\n"
        "  - {id: s, if: {field: f, between: [0, 9]}, points: 4}\n"
    )
    leads = pa.table(
        {"lead_id": ["a", "b", "c", "d", "e"], "f": [" ", None, " abc xyz ", "ab", "7"]}
    )
    batch = score_run(model, prepare(leads), AS_OF).table.column("score").to_pylist()
    per_lead = [score_lead(model, r, [], AS_OF).score for r in leads.to_pylist()]
    assert batch == per_lead == [0.0, 0.0, 3.0, 1.0, 4.0]


TEXT_OPS = st.sampled_from(["contains", "starts_with", "ends_with", "eq", "in", "not_contains"])


@settings(max_examples=1500, deadline=None)
@given(
    cond=TEXT_OPS.flatmap(lambda op: operand_for(op).map(lambda v: {"field": "url", op: v})),
    values=st.lists(URLS | VALUES, min_size=1, max_size=6),
)
def test_text_filters_mean_what_the_predicates_mean(
    cond: dict[str, Any], values: list[str | None]
) -> None:
    """The per-lead evaluator filters a column of normalised values with a `where`'s
    TextFilter when it has one; it must keep exactly the events the predicate keeps."""
    parsed = FieldCondition.model_validate(cond)
    tf = text_filter(parsed)
    if tf is None:
        assert parsed.operator not in ("contains", "starts_with", "ends_with")
        return
    pred = compile_condition(parsed)
    events = [Event("page_view", 0, None, None, {"url": v}) for v in values]
    kept = _text_filtered(tf, events, _column(events, "url"))
    assert kept == [e for e in events if pred(e.fields)]


def test_text_filters_cover_the_common_where_conditions() -> None:
    def tf(cond: dict[str, Any]) -> Any:
        return text_filter(FieldCondition.model_validate(cond))

    assert tf({"field": "url", "contains": "/Pricing "}).needles == ("/pricing",)
    assert tf({"field": "form", "in": "Contact; Demo"}).options == {"contact", "demo"}
    assert tf({"field": "form", "eq": " "}).options == frozenset()  # matches nothing
    assert tf({"field": "n", "in": ["a", "5"]}) is None  # a number compares as a number
    assert tf({"field": "url", "not_contains": "x"}) is None


def test_a_models_plan_is_compiled_once_for_its_content() -> None:
    """The service scores the same few models again and again: the same content (from any
    file or request) gets the same compiled plan, a changed model a new one."""
    text = """
version: 1
name: cached
profile: [{id: ceo, if: {field: title, matches: '\\bceo\\b'}, points: 10}]
bands: {cold: -.inf, hot: 10}
"""
    first, again = parse_model(text, source="a.yaml"), parse_model(text, source="b.yaml")
    changed = parse_model(text.replace("points: 10", "points: 11"))
    assert plan_for(first) is plan_for(again)
    assert plan_for(changed) is not plan_for(first)
    # the plan's SQL, with its Python function for `matches`, on a connection of its own
    leads = pa.table({"lead_id": ["a", "b"], "title": ["CEO", "Chief"]})
    events = pa.table(
        {
            "lead_id": pa.array([], pa.string()),
            "type": pa.array([], pa.string()),
            "ts": pa.array([], pa.timestamp("us", "UTC")),
        }
    )
    for _ in range(2):
        run = score_run(first, prepare(leads, events), AS_OF).table
        assert run.column("score").to_pylist() == [10.0, 0.0]
    # infinities are content too: no MQL, everyone an MQL, nobody an MQL
    for mql, every in (("", False), ("mql: -.inf", True), ("mql: .inf", False)):
        run = score_run(parse_model(text + mql), prepare(leads, events), AS_OF).table
        assert run.column("mql").to_pylist() == [every, every], mql


def test_a_group_of_thousands_of_rules_scores_alike_in_both_evaluators() -> None:
    """A fitted or generated model may hold thousands of rules in one group: the batch
    evaluator adds them without one expression nested as deep (a RecursionError at about
    1,000 before), and agrees with the per-lead evaluator."""
    n = 1_200
    rules = "".join(
        f"  - {{id: r{i}, if: {{field: employees, gte: {i}}}, points: {1 + i % 7 / 10}}}\n"
        for i in range(n)
    )
    model = parse_model(f"version: 1\nname: many\nprofile:\n{rules}bands: {{cold: -.inf}}\n")
    employees = {"a": "0", "b": "1234", "c": "99999"}
    leads = pa.table({"lead_id": list(employees), "employees": list(employees.values())})
    table = score_leads(model, leads, as_of="2026-06-30T00:00:00Z")
    for row in table.to_pylist():
        lead = {"lead_id": row["lead_id"], "employees": employees[row["lead_id"]]}
        one = score_lead(model, lead, [], as_of="2026-06-30T00:00:00Z", explain=False)
        assert math.isclose(row["score"], one.score, rel_tol=1e-9, abs_tol=1e-9), row["lead_id"]
    every = sum(1 + i % 7 / 10 for i in range(n))
    assert math.isclose(table.column("score").to_pylist()[2], every, rel_tol=1e-9)


CASED = """
version: 1
name: cased
groups:
  Fit: {kind: profile}
  fit: {kind: profile, weight: 2}
  web: {kind: activity}
profile:
  - {id: North, group: Fit, if: {field: Region, eq: north}, points: 10}
  - {id: north, group: fit, if: {field: region, eq: north}, points: 3}
  - {id: ID, group: fit, if: {field: LEAD_ID, eq: x}, points: 100}
  - {id: cafe, group: fit, if: {field: Café, eq: "yes"}, points: 1}
activity:
  - {id: Pv, group: web, event: page_view, where: {field: Item, eq: a}, points: 7}
  - {id: pv, group: web, event: page_view, where: {field: item, eq: a}, points: 2}
  - {id: kind, group: web, event: page_view, where: {field: TYPE, eq: demo}, points: 40}
bands: {cold: -.inf}
"""


def test_names_differing_only_in_case_stay_apart_in_the_batch_evaluator() -> None:
    """DuckDB matches names ignoring case, even quoted: the batch evaluator read `region` as
    `Region` (and crashed on rules `North`/`north`). Worked out:
    L1: Region north -> North 10 (group Fit); region south; LEAD_ID y (not the id); Café yes
      (café no) -> cafe 1, group fit 1 * 2 = 2; its view has item a (pv 2), Item b and TYPE
      demo (kind 40): score 10 + 2 + 42 = 54.
    L2: region north -> north 3, * 2 = 6; Café missing; its view has Item a (Pv 7), item b,
      TYPE view: score 6 + 7 = 13.
    """
    leads = pa.table(
        {
            "lead_id": ["L1", "L2"],
            "Region": ["north", "south"],
            "region": ["south", "north"],
            "LEAD_ID": ["y", "y"],
            "Café": ["yes", None],
            "café": ["no", "yes"],
        }
    )
    events = pa.table(
        {
            "lead_id": ["L1", "L2"],
            "type": ["page_view", "page_view"],
            "ts": ["2026-06-01T00:00:00Z"] * 2,
            "item": ["a", "b"],
            "Item": ["b", "a"],
            "TYPE": ["demo", "view"],
        }
    )
    model = parse_model(CASED)
    prepared = prepare(leads, events)
    batch = {r["lead_id"]: r for r in score_run(model, prepared, AS_OF).table.to_pylist()}
    assert batch["L1"]["score"] == 54.0
    assert (batch["L1"]["rule:North"], batch["L1"]["rule:north"]) == (10.0, 0.0)
    assert (batch["L1"]["group:Fit"], batch["L1"]["group:fit"]) == (10.0, 2.0)
    assert (batch["L1"]["rule:Pv"], batch["L1"]["rule:pv"], batch["L1"]["rule:kind"]) == (
        0.0,
        2.0,
        40.0,
    )
    assert batch["L2"]["score"] == 13.0
    assert (batch["L2"]["rule:North"], batch["L2"]["rule:north"]) == (0.0, 3.0)
    assert (batch["L2"]["rule:Pv"], batch["L2"]["rule:pv"]) == (7.0, 0.0)
    for lead, lead_events in iter_lead_events(prepared):
        one = score_lead(model, lead, lead_events, as_of=AS_OF)
        assert one.score == batch[lead["lead_id"]]["score"], lead["lead_id"]
