"""A second, brute-force implementation of the validation figures (docs/validation.md).

Random leads, events and outcomes (seeded); every lead is scored with the per-lead evaluator
(``score_lead``) and the figures are worked out with plain loops straight from the definitions
in docs/validation.md, then compared with ``report_from_inputs`` and ``run_backtest`` (which
use the batch evaluator and numpy). Counts must agree exactly, floats to 1e-9.
"""

from __future__ import annotations

import random
import statistics
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pytest

from leadscore import Model, parse_model, prepare, score_lead
from leadscore.inputs import normalize_outcomes
from leadscore.validation import Conversion
from leadscore.validation.backtest import run_backtest
from leadscore.validation.report import report_from_inputs

RULES = """\
groups:
  fit: {kind: profile}
  engagement: {kind: activity, max: 80}
profile:
  - {id: vp, if: {field: title, eq: vp}, points: 20}
  - {id: student, if: {field: title, eq: student}, points: -15}
  - {id: software, if: {field: industry, eq: software}, points: 10}
activity:
  - {id: demo, event: demo, points: 30, frequency: once}
  - {id: visit, event: visit, points: 5, frequency: once_per_item, window_days: 30}
  - {id: email, event: email, points: 4, diminishing: 0.5, half_life_days: 20}
inactivity:
  - {id: quiet, no_activity_days: 30, points: -10}
grades: {A: 20, B: 0}
bands: {cold: -.inf, warm: 20, hot: 40}
"""
CHAMPION = parse_model("version: 1\nname: champion\n" + RULES + "mql: hot\n")
CHALLENGER = parse_model("version: 1\nname: challenger\n" + RULES + "mql: 25\n")
RULE_IDS = ["vp", "student", "software", "demo", "visit", "email", "quiet"]

DAY = timedelta(days=1)
DAY_US = 86_400_000_000
D0 = datetime(2026, 1, 1, tzinfo=UTC)
AS_OF = D0 + 90 * DAY
HORIZON_DAYS = 30
HORIZON = HORIZON_DAYS * DAY
CUTS = [D0 + (60 + 7 * k) * DAY for k in range(5)]
CONVERSIONS = ("won", "opportunity")
SEEDS = [1, 2, 3, 17, 2026]


def us(t: datetime) -> int:
    return int(t.timestamp()) * 1_000_000 + t.microsecond


def make_data(seed: int) -> tuple[list[dict], dict[str, list[dict]], list[tuple]]:
    """Leads, each lead's events, outcome rows ``(lead_id, outcome, ts)``."""
    rng = random.Random(seed)
    ids = [f"L{i:03d}" for i in range(rng.randint(40, 80))]
    rng.shuffle(ids)  # the table's order is not the lead ids' order
    leads = [
        {
            "lead_id": i,
            "title": rng.choice(["vp", "vp", "manager", "student", None]),
            "industry": rng.choice(["software", "retail", None]),
        }
        for i in ids
    ]
    # times exactly on a boundary, to pin down "at or before" and "after"
    edges = [AS_OF, *CUTS]
    events: dict[str, list[dict]] = {}
    for i in ids:
        events[i] = []
        if rng.random() < 0.2:
            continue  # no events at all
        for _ in range(rng.randint(1, 10)):
            low, high = (50, 95) if rng.random() < 0.5 else (0, 120)  # busier near the cuts
            ts = D0 + timedelta(seconds=rng.randrange(low * 86_400, high * 86_400))
            if rng.random() < 0.05:
                ts = rng.choice(edges)
            kind = rng.choice(["demo", "visit", "visit", "email", "email", "newsletter"])
            item = rng.choice(["/pricing", "/docs", "/blog"]) if kind == "visit" else None
            events[i].append({"type": kind, "ts": ts, "item": item})
    outcome_edges = [*edges, AS_OF + HORIZON, *(c + HORIZON for c in CUTS)]
    outcomes: list[tuple] = []
    for i in ids:
        if rng.random() < 0.35:
            continue
        for _ in range(rng.randint(1, 2)):
            ts = D0 + timedelta(seconds=rng.randrange(45 * 86_400, 150 * 86_400))
            if rng.random() < 0.1:
                ts = rng.choice(outcome_edges)
            name = rng.choice(["won", "Won", "opportunity", "lost", "sql"])
            outcomes.append((i, name, ts))
    pinned = [AS_OF, AS_OF + HORIZON, CUTS[0], CUTS[1], CUTS[3], CUTS[2] + HORIZON]
    for lead_id, ts in zip(rng.sample(ids, len(pinned)), pinned, strict=True):
        outcomes.append((lead_id, "won", ts))  # conversions right on a boundary
    outcomes.append(("X999", "won", AS_OF + 3 * DAY))  # a lead that is not ours
    rng.shuffle(outcomes)
    return leads, events, outcomes


def first_conversion(outcomes: list[tuple]) -> dict[str, datetime]:
    """Each lead's first conversion outcome (won or opportunity, any time)."""
    first: dict[str, datetime] = {}
    for lead_id, name, ts in outcomes:
        if name.lower() in CONVERSIONS and (lead_id not in first or ts < first[lead_id]):
            first[lead_id] = ts
    return first


def inputs(leads: list[dict], events: dict[str, list[dict]], outcomes: list[tuple]) -> tuple:
    rows = [(i, e) for i, evs in events.items() for e in evs]
    ts_type = pa.timestamp("us", tz="UTC")
    event_table = pa.table(
        {
            "lead_id": pa.array([i for i, _ in rows], pa.string()),
            "type": pa.array([e["type"] for _, e in rows], pa.string()),
            "ts": pa.array([e["ts"] for _, e in rows], ts_type),
            "item": pa.array([e["item"] for _, e in rows], pa.string()),
        }
    )
    lead_table = pa.table({k: pa.array([x[k] for x in leads], pa.string()) for k in leads[0]})
    outcome_table = pa.table(
        {
            "lead_id": [o[0] for o in outcomes],
            "outcome": [o[1] for o in outcomes],
            "ts": pa.array([o[2] for o in outcomes], ts_type),
        }
    )
    return prepare(lead_table, event_table), normalize_outcomes(outcome_table)


def close(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return abs(a - b) <= 1e-9


def brute_auc(pos: list[float], neg: list[float]) -> float | None:
    if not pos or not neg:
        return None
    wins = 0.0
    for p in pos:
        for q in neg:
            wins += 1.0 if p > q else 0.5 if p == q else 0.0
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", SEEDS)
def test_report_matches_brute_force(seed: int) -> None:
    leads, events, outcomes = make_data(seed)
    prepared, outcome_table = inputs(leads, events, outcomes)
    got = report_from_inputs(
        CHAMPION, prepared, outcome_table, us(AS_OF), Conversion(CONVERSIONS, HORIZON_DAYS)
    )
    first = first_conversion(outcomes)
    known = {x["lead_id"] for x in leads}
    cohort = []  # (lead id, ScoreResult, converted)
    before = 0
    for lead in leads:
        t = first.get(lead["lead_id"])
        if t is not None and t <= AS_OF:
            before += 1
            continue
        result = score_lead(CHAMPION, lead, events[lead["lead_id"]], as_of=AS_OF)
        converted = t is not None and AS_OF < t <= AS_OF + HORIZON
        cohort.append((lead["lead_id"], result, converted))
    n = len(cohort)
    total = sum(c for _, _, c in cohort)
    where = f"seed {seed}"
    assert got["scored"] == len(leads), where
    assert got["converted_before"] == before, where
    assert got["outcomes_for_unknown_leads"] == sum(o[0] not in known for o in outcomes), where
    assert (got["leads"], got["conversions"]) == (n, total), where

    bands = {b: [0, 0] for b in ("hot", "warm", "cold")}
    grades = {g: [0, 0] for g in ("A", "B")}
    for _, r, c in cohort:
        for table, key in ((bands, r.band), (grades, r.grade)):
            cell = table.setdefault(key, [0, 0])
            cell[0] += 1
            cell[1] += int(c)
    assert [b["band"] for b in got["bands"]] == ["hot", "warm", "cold"], where
    assert {b["band"]: [b["leads"], b["conversions"]] for b in got["bands"]} == bands, where
    assert {g["grade"]: [g["leads"], g["conversions"]] for g in got["grades"]} == grades, where

    mqls = [c for _, r, c in cohort if r.mql]
    assert (got["mql"]["mqls"], got["mql"]["converted"]) == (len(mqls), sum(mqls)), where

    pos = [r.score for _, r, c in cohort if c]
    neg = [r.score for _, r, c in cohort if not c]
    auc = brute_auc(pos, neg)
    assert close(got["roc_auc"]["value"], auc), f"{where}: AUC {got['roc_auc']['value']} != {auc}"

    ranked = sorted(cohort, key=lambda x: (-x[1].score, x[0]))
    want_deciles = []
    for k in range(10):
        part = ranked[k * n // 10 : (k + 1) * n // 10]
        want_deciles.append((len(part), sum(c for _, _, c in part), part[0][1].score))
    got_deciles = [(d["leads"], d["conversions"], d["max_score"]) for d in got["deciles"]]
    assert [g[:2] for g in got_deciles] == [w[:2] for w in want_deciles], where
    assert all(close(g[2], w[2]) for g, w in zip(got_deciles, want_deciles, strict=True)), where

    rules = {r["rule"]: r for r in got["rules"]}
    assert list(rules) == RULE_IDS, where
    for rule_id in RULE_IDS:
        fired = [(c, p) for _, r, c in cohort for p in [r.contributions[rule_id]] if p != 0]
        row = rules[rule_id]
        want = (len(fired), sum(c for c, _ in fired))
        assert (row["fired"], row["fired_conversions"]) == want, f"{where}: rule {rule_id}"
        mean = statistics.fmean(p for _, p in fired) if fired else None
        assert close(row["mean_points"], mean), f"{where}: rule {rule_id} mean points"

    days = [(first[i] - AS_OF) / DAY for i, _, c in cohort if c]
    median = statistics.median(days) if days else None
    assert close(got["time_to_conversion"]["all"]["median_days"], median), where


def brute_backtest(
    model: Model, leads: list[dict], events: dict[str, list[dict]], first: dict[str, datetime]
) -> dict:
    """The backtest's figures for one model, from docs/validation.md."""
    periods = [dict.fromkeys(("new", "converted", "conversions", "caught"), 0) for _ in CUTS[1:]]
    at_start = 0
    speed: list[float] = []
    for lead in leads:
        lead_id = lead["lead_id"]
        t = first.get(lead_id)
        if t is not None and t <= CUTS[0]:
            continue  # left out
        mql = [score_lead(model, lead, events[lead_id], as_of=c).mql for c in CUTS]
        k = mql.index(True) if True in mql else None  # the first cut-off at which it is MQL
        if k == 0:
            at_start += 1
        elif k is not None and (t is None or t > CUTS[k - 1]):
            periods[k - 1]["new"] += 1
            if t is not None and t <= CUTS[k] + HORIZON:
                periods[k - 1]["converted"] += 1
            touches = [e["ts"] for e in events[lead_id] if e["ts"] <= CUTS[k]]
            if touches:
                speed.append((CUTS[k] - min(touches)) / DAY)
        if t is not None and CUTS[0] < t <= CUTS[-1]:
            m = next(j for j, c in enumerate(CUTS) if c >= t)  # the cut-off at or after it
            periods[m - 1]["conversions"] += 1
            periods[m - 1]["caught"] += any(mql[: m + 1])
    return {
        "mql_at_start": at_start,
        "periods": [
            (
                p["new"],
                p["converted"],
                p["conversions"],
                p["caught"],
                p["conversions"] - p["caught"],
            )
            for p in periods
        ],
        "median_days": statistics.median(speed) if speed else None,
        "speed_leads": len(speed),
    }


@pytest.mark.parametrize("seed", SEEDS)
def test_backtest_matches_brute_force(seed: int) -> None:
    leads, events, outcomes = make_data(seed)
    prepared, outcome_table = inputs(leads, events, outcomes)
    got = run_backtest(
        [CHAMPION, CHALLENGER],
        prepared,
        outcome_table,
        us(CUTS[0]),
        us(CUTS[-1]),
        7 * DAY_US,
        Conversion(CONVERSIONS, HORIZON_DAYS),
    )
    first = first_conversion(outcomes)
    assert got["cutoffs"] == len(CUTS) and got["leads"] == len(leads)
    assert got["left_out"] == sum(t <= CUTS[0] for i, t in first.items() if i.startswith("L"))
    for model, summary in zip([CHAMPION, CHALLENGER], got["models"], strict=True):
        where = f"seed {seed}, {model.name}"
        want = brute_backtest(model, leads, events, first)
        assert summary["mql_at_start"] == want["mql_at_start"], where
        periods = [
            (p["new_mqls"], p["converted"], p["conversions"], p["caught"], p["missed"])
            for p in summary["periods"]
        ]
        assert periods == want["periods"], f"{where}: (new, converted, conv, caught, missed)"
        totals = [sum(col) for col in zip(*want["periods"], strict=True)]
        assert [
            summary[k] for k in ("new_mqls", "converted", "conversions", "caught", "missed")
        ] == totals, where
        assert summary["speed"]["leads"] == want["speed_leads"], where
        assert close(summary["speed"]["median_days"], want["median_days"]), where
