"""The validation report against figures worked out by hand on ten leads.

The model: vp +40 (fit), student -10 (fit), a demo request +30 (engagement); grades A >= 40,
B >= 0, else F; bands cold, warm from 30, hot from 60; MQL = hot. The reference time is
2026-06-30; a conversion is won or opportunity within 90 days.

    lead  title    demo        score band grade  outcome              converted?
    L1    vp       -7 days       70  hot   A     won +10 d            yes
    L2    vp       -7 days       70  hot   A     -                    no
    L3    vp       -             40  warm  A     opportunity +40 d    yes
    L4    vp       -             40  warm  A     -                    no
    L5    other    -7 days       30  warm  B     won +100 d           no (after the horizon)
    L6    other    -60 days      30  warm  B     -                    no
    L7    other    -              0  cold  B     -                    no
    L8    other    -              0  cold  B     won +20 d            yes
    L9    student  -            -10  cold  F     -                    no
    L10   student  -60 days      20  cold  F     lost +5 d            no (not a conversion)
    L11   vp       -2 days       70  hot   A     won -5 d             left out (converted before)

Four weeks earlier (for the capacity): L1 and L2 had 40, L5 had 0; the rest as now.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from leadscore import parse_model, prepare
from leadscore.cli import app
from leadscore.errors import UsageError
from leadscore.inputs import normalize_outcomes
from leadscore.validation import Conversion, roc_auc
from leadscore.validation.report import (
    default_as_of,
    report_from_inputs,
    threshold_for_capacity,
)

AS_OF = datetime(2026, 6, 30, tzinfo=UTC)
AS_OF_US = int(AS_OF.timestamp() * 1_000_000)
MODEL_YAML = """\
version: 1
name: hand
groups:
  fit: {kind: profile}
  engagement: {kind: activity}
profile:
  - {id: vp, if: {field: title, eq: vp}, points: 40}
  - {id: student, if: {field: title, eq: student}, points: -10}
activity:
  - {id: demo, event: demo, points: 30}
grades: {A: 40, B: 0}
bands: {cold: -.inf, warm: 30, hot: 60}
mql: hot
"""
TITLES = ["vp"] * 4 + ["other"] * 4 + ["student"] * 2 + ["vp"]
DEMO_DAYS = {"L1": 7, "L2": 7, "L5": 7, "L6": 60, "L10": 60, "L11": 2}
OUTCOMES = [
    ("L1", "won", 10),
    ("L3", "Opportunity", 40),
    ("L5", "won", 100),
    ("L8", "won", 20),
    ("L10", "lost", 5),
    ("L11", "won", -5),
    ("X9", "won", 3),  # not a lead of ours
]


def day(offset: float) -> datetime:
    return AS_OF + timedelta(days=offset)


def leads_table() -> pa.Table:
    ids = [f"L{i}" for i in range(1, 12)]
    return pa.table({"lead_id": ids, "title": TITLES})


def leads_created(created: list[str]) -> pa.Table:
    """The leads, with a ``created`` column."""
    return leads_table().append_column("created", pa.array(created))


def events_table() -> pa.Table:
    rows = list(DEMO_DAYS.items())
    return pa.table(
        {
            "lead_id": [r[0] for r in rows],
            "type": ["demo"] * len(rows),
            "ts": pa.array([day(-d) for _, d in rows], pa.timestamp("us", tz="UTC")),
        }
    )


def outcomes_table() -> pa.Table:
    return normalize_outcomes(
        pa.table(
            {
                "lead_id": [o[0] for o in OUTCOMES],
                "outcome": [o[1] for o in OUTCOMES],
                "ts": pa.array([day(o[2]) for o in OUTCOMES], pa.timestamp("us", tz="UTC")),
            }
        )
    )


@pytest.fixture(scope="module")
def report() -> dict:
    model = parse_model(MODEL_YAML)
    prepared = prepare(leads_table(), events_table())
    return report_from_inputs(
        model,
        prepared,
        outcomes_table(),
        AS_OF_US,
        Conversion(),
        target_precision=0.5,
        capacity_per_week=1,
    )


def rows_by(report: dict, section: str, key: str) -> dict:
    return {r[key]: (r["leads"], r["conversions"], r["rate"]) for r in report[section]}


def test_cohort_counts(report: dict) -> None:
    assert report["scored"] == 11
    assert report["converted_before"] == 1  # L11
    assert report["outcomes_for_unknown_leads"] == 1  # X9
    assert (report["leads"], report["conversions"], report["rate"]) == (10, 3, 0.3)
    assert any("L" not in n and "converted at or before" in n for n in report["notes"])
    json.dumps(report, allow_nan=False)  # JSON as is: no infinities, no NaN


def test_bands_grades_and_cells(report: dict) -> None:
    assert rows_by(report, "bands", "band") == {
        "hot": (2, 1, 0.5),
        "warm": (4, 1, 0.25),
        "cold": (4, 1, 0.25),
    }
    assert [b["band"] for b in report["bands"]] == ["hot", "warm", "cold"]
    assert report["bands"][2]["lower"] is None and report["bands"][0]["lower"] == 60
    assert rows_by(report, "grades", "grade") == {
        "A": (4, 2, 0.5),
        "B": (4, 1, 0.25),
        "F": (2, 0, 0.0),
    }
    cells = {(c["grade"], c["band"]): (c["leads"], c["conversions"]) for c in report["cells"]}
    assert cells == {
        ("A", "hot"): (2, 1),
        ("A", "warm"): (2, 1),
        ("B", "warm"): (2, 0),
        ("B", "cold"): (2, 1),
        ("F", "cold"): (2, 0),
    }


def test_deciles_lift_and_gains(report: dict) -> None:
    deciles = report["deciles"]
    assert [d["conversions"] for d in deciles] == [1, 0, 1, 0, 0, 0, 0, 0, 1, 0]
    assert [d["max_score"] for d in deciles] == [70, 70, 40, 40, 30, 30, 20, 0, 0, -10]
    assert deciles[0]["lift"] == pytest.approx(1 / 0.3)
    assert deciles[1]["lift"] == 0
    assert [d["gains"] for d in deciles] == pytest.approx(
        [1 / 3, 1 / 3, 2 / 3, 2 / 3, 2 / 3, 2 / 3, 2 / 3, 2 / 3, 1, 1]
    )
    assert deciles[-1]["cumulative_leads"] == 10


def test_auc_mql_and_time_to_conversion(report: dict) -> None:
    # positives 70, 40, 0 against negatives 70, 40, 30, 30, 20, 0, -10:
    # (6.5 + 5.5 + 1.5) / (3 * 7)
    assert report["roc_auc"]["value"] == pytest.approx(13.5 / 21)
    assert report["roc_auc"]["converted"] == 3 and report["roc_auc"]["not_converted"] == 7
    assert report["roc_curve"][0] == [0.0, 0.0] and report["roc_curve"][-1] == [1.0, 1.0]
    mql = report["mql"]
    assert (mql["threshold"], mql["mqls"], mql["converted"]) == (60, 2, 1)
    assert mql["precision"] == 0.5 and mql["recall"] == pytest.approx(1 / 3)
    assert report["time_to_conversion"]["mql"]["median_days"] == pytest.approx(10)
    assert report["time_to_conversion"]["all"]["median_days"] == pytest.approx(20)


def test_calibration(report: dict) -> None:
    got = [(c["low"], c["high"], c["leads"], c["conversions"]) for c in report["calibration"]]
    assert got == [
        (-10, 0, 1, 0),
        (0, 10, 2, 1),
        (20, 30, 1, 0),
        (30, 40, 2, 0),
        (40, 50, 2, 1),
        (70, 80, 2, 1),
    ]


def test_rule_insight(report: dict) -> None:
    rules = {r["rule"]: r for r in report["rules"]}
    vp, student, demo = rules["vp"], rules["student"], rules["demo"]
    assert (vp["fired"], vp["fired_conversions"], vp["not_fired"], vp["not_fired_conversions"]) == (
        4,
        2,
        6,
        1,
    )
    assert vp["lift"] == pytest.approx(0.5 / (1 / 6)) and vp["mean_points"] == 40
    assert (student["fired"], student["fired_rate"], student["lift"]) == (2, 0.0, 0.0)
    assert student["not_fired_rate"] == pytest.approx(3 / 8) and student["mean_points"] == -10
    assert (demo["fired"], demo["fired_conversions"], demo["not_fired_conversions"]) == (5, 1, 2)
    assert demo["lift"] == pytest.approx(0.2 / 0.4) and demo["group"] == "engagement"


def test_suggested_thresholds(report: dict) -> None:
    precision = report["suggested_threshold"]["precision"]
    # at 70: 1 of 2 (50%); at 40: 2 of 4 (50%); at 30: 2 of 6: the lowest at 50% is 40
    assert (precision["threshold"], precision["leads"], precision["conversions"]) == (40, 4, 2)
    assert precision["recall"] == pytest.approx(2 / 3)
    capacity = report["suggested_threshold"]["capacity"]
    # crossings in four weeks: 70 <- L1, L2 (0.5 a week); 40: none; 30 <- L5; 20 <- L5
    assert capacity["threshold"] == 70 and capacity["mqls_per_week"] == 0.5
    assert "not the limit" in capacity["note"]


def test_threshold_for_capacity_stops_below_the_capacity() -> None:
    now = np.array([70.0, 40.0, 40.0, 10.0])
    before = np.array([0.0, 0.0, 0.0, 10.0])
    converted = np.array([True, False, True, False])
    # a week's crossings: at 70 one lead, at 40 three, at 10 three
    got = threshold_for_capacity(now, before, 1.0, 2.0, converted)
    assert (got["threshold"], got["mqls_per_week"], got["precision"]) == (70, 1, 1.0)
    got = threshold_for_capacity(now, before, 1.0, 5.0, converted)
    assert got["threshold"] == 40 and got["leads"] == 3 and got["recall"] == 1.0
    got = threshold_for_capacity(now, before, 1.0, 0.5, converted)
    assert got["threshold"] is None and "more than 0.5" in got["reason"]
    got = threshold_for_capacity(now, now, 1.0, 5.0, converted)
    assert got["threshold"] is None and "cannot size" in got["reason"]


def test_roc_auc_edges() -> None:
    assert roc_auc(np.array([1.0, 2.0]), np.array([False, True])) == 1.0
    assert roc_auc(np.array([1.0, 1.0]), np.array([False, True])) == 0.5
    assert roc_auc(np.array([1.0, 2.0]), np.array([False, False])) is None


def test_unsupported_figures_say_why() -> None:
    model = parse_model(MODEL_YAML)
    prepared = prepare(leads_table(), events_table())
    lost = normalize_outcomes(
        pa.table({"lead_id": ["L1"], "outcome": ["lost"], "ts": ["2026-07-05T00:00:00Z"]})
    )
    report = report_from_inputs(model, prepared, lost, AS_OF_US, target_precision=0.3)
    assert report["conversions"] == 0 and report["roc_auc"]["value"] is None
    assert "both converted and unconverted" in report["roc_auc"]["reason"]
    assert any("no lead converted" in n for n in report["notes"])
    assert report["suggested_threshold"]["precision"]["threshold"] is None
    assert all(d["lift"] is None for d in report["deciles"])
    json.dumps(report, allow_nan=False)


def test_default_reference_time() -> None:
    outcomes = outcomes_table()
    conv = Conversion(horizon_days=30)
    latest = AS_OF_US + 100 * 86_400_000_000
    assert default_as_of(outcomes, conv) == latest - 30 * 86_400_000_000
    events = prepare(leads_table(), events_table()).events
    assert default_as_of(outcomes, conv, events) == AS_OF_US - 2 * 86_400_000_000


# --- the command ------------------------------------------------------------------------------


def write_inputs(tmp_path: Path) -> list[str]:
    (tmp_path / "model.yaml").write_text(MODEL_YAML)
    (tmp_path / "leads.csv").write_text(
        "lead_id,title\n" + "".join(f"L{i},{t}\n" for i, t in enumerate(TITLES, start=1))
    )
    (tmp_path / "events.csv").write_text(
        "lead_id,type,ts\n"
        + "".join(f"{lead},demo,{day(-d).isoformat()}\n" for lead, d in DEMO_DAYS.items())
    )
    (tmp_path / "outcomes.csv").write_text(
        "lead_id,outcome,ts\n"
        + "".join(f"{lead},{o},{day(d).isoformat()}\n" for lead, o, d in OUTCOMES)
    )
    return [
        str(tmp_path / "model.yaml"),
        "--leads",
        str(tmp_path / "leads.csv"),
        "--events",
        str(tmp_path / "events.csv"),
        "--outcomes",
        str(tmp_path / "outcomes.csv"),
        "--as-of",
        AS_OF.isoformat(),
    ]


def test_report_and_backtest_commands_take_a_creation_column(tmp_path: Path) -> None:
    runner = CliRunner()
    args = write_inputs(tmp_path)
    (tmp_path / "leads.csv").write_text(
        "lead_id,title,created at\n"
        + "".join(
            f"L{i},{t},{'2026-07-10' if i == 10 else '2026-01-01'}\n"
            for i, t in enumerate(TITLES, start=1)
        )
    )
    result = runner.invoke(app, ["report", *args, "--created-column", "created at"])
    assert result.exit_code == 0, result.stderr
    assert "9 leads, 3 converted" in result.stdout
    assert "1 lead created after the reference time is left out" in result.stdout
    result = runner.invoke(
        app,
        [
            "backtest",
            *args[:-2],
            *("--from", "2026-05-01", "--to", "2026-06-26"),
            *("--created-column", "created at", "--json"),
        ],
    )
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["notes"][0].startswith(
        "1 lead was created after the last cut-off and takes no part"
    )


def test_report_command_tables_json_and_html(tmp_path: Path) -> None:
    runner = CliRunner()
    args = write_inputs(tmp_path)
    result = runner.invoke(app, ["report", *args, "--target-precision", "0.5"])
    assert result.exit_code == 0, result.stderr
    text = result.stdout
    assert "10 leads, 3 converted (30.00%)" in text
    assert "ROC AUC 0.643" in text
    assert "precision 50.0%, recall 33.3%" in text
    assert "Suggested threshold for a precision of 50%: 40 points" in text
    result = runner.invoke(app, ["report", *args, "--json", "--html", str(tmp_path / "r.html")])
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["roc_auc"]["value"] == pytest.approx(13.5 / 21)
    html = (tmp_path / "r.html").read_text()
    assert "<svg" in html and "AUC 0.643" in html
    assert "<script" not in html and "http://" not in html and "https://" not in html
    assert 'id="report-bands"' in html and "Validation of hand" in html


def test_report_command_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    args = write_inputs(tmp_path)
    result = runner.invoke(app, ["report", *args, "--created-column", "born"])
    assert result.exit_code == 2
    assert "--created-column: the leads have no column 'born' ('lead_id', 'title')" in result.stderr
    (tmp_path / "outcomes.csv").write_text("lead_id,outcome,ts\nL1,won,someday\n")
    result = runner.invoke(app, ["report", *args])
    assert result.exit_code == 1
    assert "outcomes.csv: column 'ts': 1 line has a missing or unreadable time" in result.stderr
    assert "line 2 ('someday')" in result.stderr
    result = runner.invoke(app, ["report", *args, "--horizon", "soon"])
    assert result.exit_code == 2 and "--horizon: 'soon' is not a duration" in result.stderr
    (tmp_path / "outcomes.csv").write_text("lead_id,outcome,ts\n")
    result = runner.invoke(app, ["report", *args[:-2]])
    assert result.exit_code == 2 and "no outcomes" in result.stderr


# --- backtest ---------------------------------------------------------------------------------
#
# Champion: demo +60, visit +20, MQL from 50. Challenger: the same rules, MQL from 20.
# Cut-offs every 7 days from day 0 to day 28 (c0..c4); a conversion counts within 30 days.
#
#   lead  events                 outcome          champion               challenger
#   A     visit -10, demo 3      won 20           new at c1, converted   MQL at the start
#   B     demo -5                won 10           MQL at the start       MQL at the start
#   C     visit 9                won 12           never: missed          new at c2, converted
#   D     demo 16                -                new at c3              new at c3
#   E     -                      won 25           missed                 missed
#   F     demo 1                 opportunity 60   new at c1, too late    new at c1, too late
#   G     demo 2                 won -3           left out (converted before c0)
#   H     visit 2, demo 26       lost 27          new at c4              new at c1

BT_RULES = """\
groups: {engagement: {kind: activity}}
activity:
  - {id: demo, event: demo, points: 60}
  - {id: visit, event: visit, points: 20}
bands: {cold: -.inf, hot: 50}
"""
CHAMPION = "version: 1\nname: champion\n" + BT_RULES + "mql: hot\n"
CHALLENGER = "version: 1\nname: challenger\n" + BT_RULES + "mql: 20\n"
D0 = datetime(2026, 1, 1, tzinfo=UTC)
BT_EVENTS = [
    ("A", "visit", -10),
    ("A", "demo", 3),
    ("B", "demo", -5),
    ("C", "visit", 9),
    ("D", "demo", 16),
    ("F", "demo", 1),
    ("G", "demo", 2),
    ("H", "visit", 2),
    ("H", "demo", 26),
]
BT_OUTCOMES = [
    ("A", "won", 20),
    ("B", "won", 10),
    ("C", "won", 12),
    ("E", "won", 25),
    ("F", "opportunity", 60),
    ("G", "won", -3),
    ("H", "lost", 27),
]
DAY_US = 86_400_000_000


def bt_inputs() -> tuple:
    leads = pa.table({"lead_id": list("ABCDEFGH")})
    ts_type = pa.timestamp("us", tz="UTC")
    events = pa.table(
        {
            "lead_id": [e[0] for e in BT_EVENTS],
            "type": [e[1] for e in BT_EVENTS],
            "ts": pa.array([D0 + timedelta(days=e[2]) for e in BT_EVENTS], ts_type),
        }
    )
    outcomes = pa.table(
        {
            "lead_id": [o[0] for o in BT_OUTCOMES],
            "outcome": [o[1] for o in BT_OUTCOMES],
            "ts": pa.array([D0 + timedelta(days=o[2]) for o in BT_OUTCOMES], ts_type),
        }
    )
    return prepare(leads, events), normalize_outcomes(outcomes)


@pytest.fixture(scope="module")
def backtest() -> dict:
    from leadscore.validation.backtest import run_backtest

    prepared, outcomes = bt_inputs()
    start = int(D0.timestamp() * 1_000_000)
    seen: list[tuple[int, int]] = []
    result = run_backtest(
        [parse_model(CHAMPION), parse_model(CHALLENGER)],
        prepared,
        outcomes,
        start,
        start + 28 * DAY_US,
        7 * DAY_US,
        Conversion(horizon_days=30),
        progress=lambda what, done, total: seen.append((done, total)),
    )
    assert seen[-1] == (10, 10) and len(seen) == 10  # 5 cut-offs x 2 models
    return result


def test_backtest_champion(backtest: dict) -> None:
    assert (backtest["cutoffs"], backtest["leads"], backtest["left_out"]) == (5, 8, 1)
    champion = backtest["models"][0]
    assert champion["model"] == "champion" and champion["mql_threshold"] == 50
    assert champion["mql_at_start"] == 1  # B
    assert [p["new_mqls"] for p in champion["periods"]] == [2, 0, 1, 1]  # A F | - | D | H
    assert [p["converted"] for p in champion["periods"]] == [1, 0, 0, 0]  # A
    assert (champion["new_mqls"], champion["converted"], champion["rate"]) == (4, 1, 0.25)
    assert champion["mqls_per_week"] == 1
    assert (champion["conversions"], champion["caught"], champion["missed"]) == (4, 2, 2)
    assert champion["missed_share"] == 0.5
    assert [(p["conversions"], p["caught"], p["missed"]) for p in champion["periods"]] == [
        (0, 0, 0),
        (2, 1, 1),  # B caught, C missed
        (1, 1, 0),  # A
        (1, 0, 1),  # E
    ]
    # first touch to MQL: A 17 days, F 6, D 5, H 26
    speed = champion["speed"]
    assert (speed["leads"], speed["median_days"]) == (4, 11.5)
    assert (speed["p25_days"], speed["p75_days"]) == (5.75, 19.25)
    assert all(p["horizon_complete"] for p in champion["periods"])


def test_backtest_challenger_side_by_side(backtest: dict) -> None:
    challenger = backtest["models"][1]
    assert challenger["mql_at_start"] == 2  # A, B
    assert [p["new_mqls"] for p in challenger["periods"]] == [2, 1, 1, 0]  # F H | C | D | -
    assert [p["converted"] for p in challenger["periods"]] == [0, 1, 0, 0]  # C
    assert (challenger["caught"], challenger["missed"]) == (3, 1)  # A B C | E
    assert challenger["speed"]["median_days"] == 5
    assert backtest["notes"] == ["1 lead converted before the first cut-off and is left out"]
    json.dumps(backtest, allow_nan=False)


def test_cutoff_errors() -> None:
    from leadscore.validation.backtest import cutoffs

    assert cutoffs(0, 14, 7) == [0, 7, 14]
    assert cutoffs(0, 13, 7) == [0, 7]
    with pytest.raises(UsageError, match="must be after --from"):
        cutoffs(10, 0, 7)
    with pytest.raises(UsageError, match="less than one step"):
        cutoffs(0, 6, 7)
    with pytest.raises(UsageError, match="at most 1000"):
        cutoffs(0, 10_000, 1)


def test_backtest_command(tmp_path: Path) -> None:
    (tmp_path / "champion.yaml").write_text(CHAMPION)
    (tmp_path / "challenger.yaml").write_text(CHALLENGER)
    (tmp_path / "leads.csv").write_text("lead_id\n" + "\n".join("ABCDEFGH") + "\n")
    (tmp_path / "events.csv").write_text(
        "lead_id,type,ts\n"
        + "".join(f"{a},{b},{(D0 + timedelta(days=d)).isoformat()}\n" for a, b, d in BT_EVENTS)
    )
    (tmp_path / "outcomes.csv").write_text(
        "lead_id,outcome,ts\n"
        + "".join(f"{a},{b},{(D0 + timedelta(days=d)).isoformat()}\n" for a, b, d in BT_OUTCOMES)
    )
    args = [
        "backtest",
        str(tmp_path / "champion.yaml"),
        str(tmp_path / "challenger.yaml"),
        "--leads",
        str(tmp_path / "leads.csv"),
        "--events",
        str(tmp_path / "events.csv"),
        "--outcomes",
        str(tmp_path / "outcomes.csv"),
        "--from",
        "2026-01-01",
        "--to",
        "2026-01-29",
        "--horizon",
        "30d",
    ]
    runner = CliRunner()
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.stderr
    assert "5 cut-offs every 7 days, 8 leads" in result.stdout
    summary = result.stdout.split("Per period")[0]
    assert "2 (50.0%)" in summary and "1 (25.0%)" in summary  # missed
    assert "11.5 (5.8-19.2)" in summary  # champion's days from first touch to MQL
    assert "backtest cut-offs" in result.stderr  # the progress bar
    result = runner.invoke(app, [*args, "--json"])
    data = json.loads(result.stdout)
    assert [m["new_mqls"] for m in data["models"]] == [4, 4]
    result = runner.invoke(app, [*args[:2], *args[3:], "--every", "40d"])
    assert result.exit_code == 2 and "less than one step" in result.stderr
    # a step under a day is told in hours (it was "every 0.0 days")
    hourly = [*args[:9], "--from", "2026-01-28", "--to", "2026-01-29", "--every", "6h"]
    result = runner.invoke(app, [*hourly, "--horizon", "30d"])
    assert result.exit_code == 0, result.stderr
    assert "5 cut-offs every 6 hours" in result.stdout


# --- drift ------------------------------------------------------------------------------------


def test_numeric_psi_by_hand() -> None:
    from leadscore.validation.drift import numeric_psi

    # baseline 1 2 3 4 cut at its median 2.5: halves; now 1 1 1 4: three quarters below
    got = numeric_psi(np.array([1.0, 2, 3, 4]), np.array([1.0, 1, 1, 4]), bins=2)
    by_hand = 0.25 * np.log(0.75 / 0.5) + (-0.25) * np.log(0.25 / 0.5)
    assert got["value"] == pytest.approx(by_hand) == pytest.approx(0.274653, abs=1e-6)
    assert got["verdict"] == "significant shift"
    assert [(b["from"], b["to"], b["current_leads"]) for b in got["bins"]] == [
        (None, 2.5, 3),
        (2.5, None, 1),
    ]
    same = numeric_psi(np.array([1.0, 2, 3, 4]), np.array([4.0, 3, 2, 1]))
    assert same["value"] == 0 and same["verdict"] == "stable"


def test_drift_of_bands_between_two_dates(tmp_path: Path) -> None:
    from leadscore.validation.drift import drift

    model = parse_model(MODEL_YAML)
    prepared = prepare(leads_table(), events_table())
    result = drift(model, prepared, AS_OF_US - 30 * DAY_US, AS_OF_US)
    band = result["columns"]["band"]
    # 30 days earlier no lead was hot (L1, L2, L11 had no demo yet): 0 / 6 / 5 of 11;
    # now hot 3, warm 4, cold 4. An empty share counts as 0.0001.
    e = [1e-4, 6 / 11, 5 / 11]
    a = [3 / 11, 4 / 11, 4 / 11]
    by_hand = sum((x - y) * np.log(x / y) for x, y in zip(a, e, strict=True))
    assert [b["value"] for b in band["bins"]] == ["hot", "warm", "cold"]
    assert [b["baseline_leads"] for b in band["bins"]] == [0, 6, 5]
    assert band["value"] == pytest.approx(by_hand)
    assert result["columns"]["fit"]["value"] == 0  # the profile did not change
    assert result["columns"]["score"]["current_mean"] == pytest.approx(
        (70 + 70 + 40 + 40 + 30 + 30 + 0 + 0 - 10 + 20 + 70) / 11
    )
    json.dumps(result, allow_nan=False)

    runner = CliRunner()
    args = write_inputs(tmp_path)[:5]
    out = runner.invoke(app, ["drift", *args, "--from", "2026-05-31", "--to", "2026-06-30"])
    assert out.exit_code == 0, out.stderr
    assert f"{by_hand:.3f}" in out.stdout and "significant shift" in out.stdout
    bad = runner.invoke(app, ["drift", *args, "--from", "2026-06-30", "--to", "2026-05-31"])
    assert bad.exit_code == 2 and "--to must be after --from" in bad.stderr


def test_report_judges_only_the_leads_created_by_the_reference_time() -> None:
    model = parse_model(MODEL_YAML)
    # L10 came in after the reference time; L11's creation cannot be read
    leads = leads_created(["2026-01-01"] * 9 + ["2026-07-10", "soon"])
    result = report_from_inputs(
        model,
        prepare(leads, events_table()),
        outcomes_table(),
        AS_OF_US,
        Conversion(),
        capacity_per_week=1,
        created_column="created",
    )
    assert result["scored"] == 9 and result["converted_before"] == 0  # L11 left out
    assert (result["leads"], result["conversions"]) == (9, 3)  # L1 L3 L8; L10 not judged
    assert result["outcomes_for_unknown_leads"] == 1  # X9 only: L10's and L11's went too
    notes = result["notes"]
    assert any(n.startswith("1 lead created after the reference time is left out") for n in notes)
    assert "1 lead has no readable 'created' and is left out" in notes
    assert result["suggested_threshold"]["capacity"]["leads"] is not None
    with pytest.raises(UsageError, match=r"--created-column: the leads have no column 'born'"):
        report_from_inputs(
            model, prepare(leads, events_table()), outcomes_table(), AS_OF_US, created_column="born"
        )


def test_a_lead_created_since_the_earlier_scores_rose_from_nothing() -> None:
    # the capacity threshold counts leads whose score rose over the four weeks: one created
    # within them rose from nothing, even if its fit alone has not changed since
    model = parse_model(MODEL_YAML)
    leads = pa.table(
        {
            "lead_id": ["OLD1", "OLD2", "NEW"],
            "title": ["vp"] * 3,
            "created": ["2026-01-01", "2026-01-01", "2026-06-20"],
        }
    )
    no_events = events_table().slice(0, 0)
    outcomes = outcomes_table().slice(0, 0)

    def capacity(created_column: str | None) -> dict:
        result = report_from_inputs(
            model,
            prepare(leads, no_events),
            outcomes,
            AS_OF_US,
            capacity_per_week=1,
            created_column=created_column,
        )
        return result["suggested_threshold"]["capacity"]

    assert "no lead's score rose" in capacity(None)["reason"]
    found = capacity("created")
    assert found["threshold"] == 40 and found["mqls_per_week"] == 0.25  # NEW, over 4 weeks


def test_backtest_takes_leads_in_from_their_creation() -> None:
    from leadscore.validation.backtest import run_backtest

    prepared, outcomes = bt_inputs()
    start = int(D0.timestamp() * 1_000_000)

    def replay(created: list[str], *models: str) -> dict:
        leads = prepared.leads.append_column("created", pa.array(created))
        return run_backtest(
            [parse_model(m) for m in models],
            prepare(leads, prepared.events),
            outcomes,
            start,
            start + 28 * DAY_US,
            7 * DAY_US,
            Conversion(horizon_days=30),
            created_column="created",
        )

    # F is created on day 10 (its demo of day 1 counts from the cut-off of day 14), H after
    # the last cut-off (it takes no part)
    created = ["2025-12-01"] * 5 + ["2026-01-11", "2025-12-01", "2026-02-01"]
    result = replay(created, CHAMPION, CHALLENGER)
    champion, challenger = result["models"]
    assert champion["mql_at_start"] == 1  # B
    assert [p["new_mqls"] for p in champion["periods"]] == [1, 1, 1, 0]  # A | F | D | -
    assert challenger["mql_at_start"] == 2  # A, B
    assert [p["new_mqls"] for p in challenger["periods"]] == [0, 2, 1, 0]  # - | C F | D | -
    assert "1 lead was created after the last cut-off and takes no part" in result["notes"]
    assert result["leads"] == 7  # H is not counted
    # a lead whose creation cannot be read is in no cut-off's population: its conversion is
    # neither caught nor missed (A's, in the champion's third period, goes)
    unread = replay(["someday", *created[1:]], CHAMPION)
    assert (champion["conversions"], champion["caught"]) == (4, 2)
    assert (unread["models"][0]["conversions"], unread["models"][0]["caught"]) == (3, 1)
    assert "1 lead has no readable 'created' and is left out" in unread["notes"]
    assert unread["leads"] == 6


def test_drift_population_by_creation_time() -> None:
    from leadscore.validation.drift import drift

    model = parse_model(MODEL_YAML)
    leads = leads_created(["2026-01-01"] * 9 + ["2026-06-15", "not a date"])
    result = drift(
        model,
        prepare(leads, events_table()),
        AS_OF_US - 30 * DAY_US,
        AS_OF_US,
        created_column="created",
    )
    assert (result["baseline_leads"], result["current_leads"]) == (9, 10)
    assert any("1 lead has no readable 'created'" in n for n in result["notes"])


# --- the worked example on real data ----------------------------------------------------------


def test_validation_example_is_current(tmp_path: Path) -> None:
    """docs/validation-example.md holds what run.py makes of the bank data today."""
    import importlib.util

    root = Path(__file__).resolve().parents[1]
    script = root / "docs" / "examples" / "bank-marketing" / "run.py"
    spec = importlib.util.spec_from_file_location("bank_example", script)
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    if not example.DATA.exists():
        pytest.skip(f"the bank marketing data is not at {example.DATA}")
    sizes = example.write_inputs(tmp_path)
    assert sizes == {"contacts": 41188, "train": 32950, "holdout": 8238}
    holdout = example.run_report(tmp_path, "holdout")
    train = example.run_report(tmp_path, "train")
    text = example.markdown(holdout, train, sizes)
    doc = (root / "docs" / "validation-example.md").read_text()
    assert text in doc, "docs/validation-example.md is stale: run run.py --write-docs"
    assert 0.6 < holdout["roc_auc"]["value"] < 0.9
    assert holdout["conversions"] == 2540  # y = yes in the last 20% of the rows


# --- bad input: messages, never tracebacks ----------------------------------------------------


def test_capacity_picks_the_lowest_fitting_threshold_from_the_busiest_up() -> None:
    # crossings a week at 10, 9, 8, 7: 1, 4, 2, 8; at most 2.5 a week: 8 (9 is over, 8 is not)
    now = np.array([10.0, 9, 9, 9, 8, 7, 7, 7, 7, 7])
    before = np.array([0.0, 8.5, 8.5, 8.5, 7.9, 0, 0, 0, 0, 0])
    got = threshold_for_capacity(now, before, 1.0, 2.5, np.zeros(10, dtype=bool))
    assert (got["threshold"], got["mqls_per_week"]) == (8, 2)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--horizon", "inf"], "--horizon: 'inf' is longer than 36,500 days"),
        (["--horizon", "1e400d"], "is longer than 36,500 days"),
        (["--capacity", "inf"], "the capacity is a number of MQLs a week"),
        (["--as-of", "9999-12-31T23:59:59-12:00"], "out of range: years 1 to 9999"),
        (["--as-of", "0001-01-02", "--capacity", "5"], "minus 4 weeks falls outside"),
        (["--html", "/nonexistent-dir/r.html"], "--html: /nonexistent-dir/r.html has no directory"),
    ],
)
def test_report_refuses_impossible_times_and_numbers(
    tmp_path: Path, extra: list[str], message: str
) -> None:
    args = write_inputs(tmp_path)
    if "--as-of" in extra:
        args = args[:-2]
    result = CliRunner().invoke(app, ["report", *args, *extra])
    assert result.exit_code in (1, 2), result.output
    assert message in result.stderr and "Traceback" not in result.output


def test_backtest_and_drift_refuse_out_of_range_dates(tmp_path: Path) -> None:
    args = write_inputs(tmp_path)
    runner = CliRunner()
    result = runner.invoke(app, ["backtest", *args[:-2], "--every", "36000d"])
    assert result.exit_code == 2 and "the first cut-off falls outside" in result.stderr
    result = runner.invoke(
        app, ["drift", *args[:5], "--from", "9999-12-31T23:59:59-12:00", "--to", "2026-06-30"]
    )
    assert result.exit_code == 2 and "out of range" in result.stderr


def test_outcome_amounts_must_be_finite(tmp_path: Path) -> None:
    bad = tmp_path / "o.csv"
    bad.write_text("lead_id,outcome,ts,amount\nL1,won,2026-07-01,inf\nL2,won,2026-07-01,nan\n")
    with pytest.raises(Exception, match="2 lines have an amount that is not a finite number"):
        normalize_outcomes(bad)
