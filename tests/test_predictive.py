"""The fitted scorecard: its math on small hand-made data, its model file, its command."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from typer.testing import CliRunner

from leadscore import parse_model, run_examples, score_lead
from leadscore.cli import app
from leadscore.errors import UsageError
from leadscore.predictive import ScorecardClassifier
from leadscore.predictive.binning import _edges, _shortest, bin_column, eq_key
from leadscore.predictive.fit import (
    _where_key,
    activity_features,
    expected_calibration_error,
    fit_scorecard,
    top_decile_lift,
)
from leadscore.predictive.scorecard import C_GRID, pair_tests, scorecard_yaml
from leadscore.scoring import iter_lead_events, prepare


def two_groups() -> tuple[dict[str, list[str]], np.ndarray]:
    """Group a converts 1 in 5 (odds 1:4), group b 1 in 2 (odds 1:1): a log-odds gap of
    ln 4, two doublings of the odds."""
    plan = [("a", 200, 40), ("b", 200, 100)]
    region, y = [], []
    for value, n, hits in plan:
        region += [value] * n
        y += [1] * hits + [0] * (n - hits)
    return {"lead_id": [f"L{i}" for i in range(len(y))], "region": region}, np.array(y)


def test_points_from_a_known_coefficient() -> None:
    X, y = two_groups()
    card = ScorecardClassifier(C=1e6, points_to_double_odds=10).fit(X, y)
    (rule,) = card.fitted_.rules
    assert rule.column == "region" and rule.condition == {"field": "region", "eq": "b"}
    assert rule.coefficient == pytest.approx(np.log(4), abs=1e-3)
    assert rule.points == 20  # two doublings of the odds at 10 points each
    # the intercept is group a's log-odds, ln(1/4): the odds are even 20 points above a's 0
    assert -card.fitted_.intercept * card.factor == pytest.approx(20.0, abs=0.01)
    # the calibration, fitted out of fold (each fold's points are a little off), keeps the
    # mean and says a little less: 0.21 and 0.49 where the regression says 0.2 and 0.5
    assert card.even_odds_score == pytest.approx(20.0, abs=1.0)
    assert 10 < card.calibration_points < 11.5
    p = card.predict_proba(X)[:, 1]
    assert p[0] == pytest.approx(0.2, abs=0.015) and p[-1] == pytest.approx(0.5, abs=0.015)
    assert p.mean() == pytest.approx(y.mean(), abs=1e-3)  # as the file rounds it


def noisy_leads(n: int, seed: int) -> tuple[dict[str, list[str]], np.ndarray]:
    """One column that matters (odds x4 for plan "pro") and twenty that do not."""
    rng = np.random.default_rng(seed)
    plan = rng.choice(["free", "pro"], n)
    y = rng.random(n) < np.where(plan == "pro", 0.4, 0.143)
    X = {"lead_id": [f"L{i}" for i in range(n)], "plan": list(plan)}
    for k in range(20):
        X[f"noise{k}"] = [f"v{v}" for v in rng.integers(0, 6, n)]
    return X, y


def test_the_calibration_is_fitted_out_of_fold_and_keeps_the_mean() -> None:
    # unregularised on 800 leads, twenty noise columns get points that new leads do not
    # bear out: the calibration, fitted on scores out of fold, says a point is worth less
    X, y = noisy_leads(800, seed=7)
    card = ScorecardClassifier(C=1e6, interactions=0).fit(X, y)
    assert card.fitted_.calibration is not None
    assert card.calibration_points > 12  # the points were made at 10 a doubling
    p = card.predict_proba(X)[:, 1]
    assert p.mean() == pytest.approx(y.mean(), abs=1e-3)  # calibrated in the large
    text = scorecard_yaml(card, "noisy", train_scores=None, examples=[], fitted_on="test")
    assert parse_model(text).spec.calibration.points_to_double_odds == card.calibration_points
    assert "round(coefficient x 10 / ln 2)" in text and "out of 5-fold" in text
    # on new leads from the same world it errs less than the regression's own intercept and
    # scale would have (those fit the 800 leads' noise)
    X_new, y_new = noisy_leads(20_000, seed=8)
    scores = card.score_rows(X_new)
    own = 1 / (1 + 2 ** ((-card.fitted_.intercept * card.factor - scores) / 10))
    fitted = card.predict_proba(X_new)[:, 1]
    assert log_loss(y_new, fitted) < log_loss(y_new, own) - 0.01
    assert expected_calibration_error(fitted, y_new) < expected_calibration_error(own, y_new)


def test_numeric_bins_are_monotone_where_the_data_rises() -> None:
    rng = np.random.default_rng(3)
    age = rng.integers(18, 80, 3000)
    y = rng.random(3000) < (age - 10) / 200  # rises with age
    feature = bin_column("age", [str(a) for a in age], y, max_bins=6, min_rows=30)
    assert not isinstance(feature, str)
    assert feature.kind == "numeric" and feature.monotone == "rising"
    rates = [b.rate for b in feature.bins]
    assert rates == sorted(rates) and len(rates) >= 3
    assert feature.bins[0].condition["lt"] < feature.bins[-1].condition["gte"]
    masks = sum(b.mask.astype(int) for b in feature.bins)
    assert (masks == 1).all()  # every row in exactly one bin


def test_edges_are_short_numbers_that_cut_where_the_quantiles_do() -> None:
    assert _shortest(2.4, 3.7) == 3
    assert _shortest(0.0123, 0.0166) == 0.016
    assert _shortest(-5.5, -5.2) == -5.2
    assert _shortest(0.0, 0.0381) == 0.03
    rng = np.random.default_rng(4)
    values = np.round(rng.random(1000) * 100, 6)
    edges = _edges(values, 4, counts=False)
    assert all(len(str(float(e))) <= 5 for e in edges)  # 26.06, not 26.0617453
    exact = np.quantile(values, [0.25, 0.5, 0.75])
    for cut, q in zip(edges, exact, strict=True):  # no value lies between the two
        assert not ((values >= min(cut, q)) & (values < max(cut, q))).any()


def test_values_are_grouped_as_the_evaluators_compare_them() -> None:
    assert eq_key("-0") == eq_key("0") == eq_key("0.0") == eq_key(" 00 ".strip())
    assert eq_key("Ads") == eq_key("ads") != eq_key("ad")
    assert _where_key("/Docs /b", paths=True) == _where_key("/docs?x=1", paths=True) == "/docs"
    assert _where_key("/", paths=True) is None and _where_key("blog", paths=True) is None


def test_a_value_most_rows_share_gets_a_bin_of_its_own() -> None:
    rng = np.random.default_rng(5)
    n = 4000
    spend = np.where(rng.random(n) < 0.75, 0.0, np.round(rng.gamma(2.0, 20.0, n), 2))
    y = rng.random(n) < np.where(spend == 0, 0.04, 0.1 + np.minimum(spend, 100) / 200)
    feature = bin_column("spend", [str(v) for v in spend], y, max_bins=6)
    assert not isinstance(feature, str)
    first = feature.bins[0]
    assert first.rows == int((spend == 0).sum())  # the zeros alone
    assert 0 < first.condition["lt"] <= spend[spend > 0].min()
    assert len(feature.bins) >= 4  # and the others still cut at their quantiles


def interaction_data(n: int, joint: bool) -> tuple[dict[str, list[str]], np.ndarray]:
    """Two yes/no fields: with ``joint``, leads with both convert far more than either alone
    predicts (1% / 5% / 5% / 40%); without, each field doubles the odds on its own."""
    rng = np.random.default_rng(6)
    a, b = rng.random(n) < 0.5, rng.random(n) < 0.5
    if joint:
        rate = np.where(a & b, 0.40, np.where(a | b, 0.05, 0.01))
    else:
        logit = np.log(0.05 / 0.95) + np.log(2) * (a.astype(int) + b.astype(int))
        rate = 1 / (1 + np.exp(-logit))
    y = rng.random(n) < rate
    columns = {
        "lead_id": [f"L{i}" for i in range(n)],
        "trial": ["yes" if v else "no" for v in a],
        "demo": ["yes" if v else "no" for v in b],
        "noise": [str(v) for v in rng.integers(0, 4, n)],
    }
    return columns, y


def test_a_pair_that_converts_together_gets_a_rule_of_its_own() -> None:
    X, y = interaction_data(6000, joint=True)
    card = ScorecardClassifier().fit(X, y)
    pairs = [r for r in card.fitted_.rules if len(r.fields) == 2]
    assert pairs and {r.fields for r in pairs} == {("trial", "demo")}  # noise pairs with nothing
    assert all(r.condition["all"][0]["field"] == "trial" for r in pairs)
    # with the pair's rule, each of the four groups gets its own rate
    p = card.predict_proba(X)[:, 1]
    t, d = np.array(X["trial"]) == "yes", np.array(X["demo"]) == "yes"
    groups = (t & d, t & ~d, ~t & d, ~t & ~d)
    assert all(p[g].mean() / y[g].mean() == pytest.approx(1, abs=0.15) for g in groups)
    alone = ScorecardClassifier(interactions=0).fit(X, y)
    assert all(len(r.fields) == 1 for r in alone.fitted_.rules)
    q = alone.predict_proba(X)[:, 1]
    # points for each field alone cannot fit the four groups: those with neither get half
    assert q[~t & ~d].mean() / y[~t & ~d].mean() < 0.6


def test_the_pair_test_is_uniform_when_pairs_add_nothing_and_sharp_when_they_do() -> None:
    """On columns whose effects add up, the pair tests' chances are spread evenly over 0-1 (a
    5% test rejects about 5% of pairs); on a pair that converts together, the chance is tiny."""

    def chances(joint: bool, seed: int) -> list[float]:
        rng = np.random.default_rng(seed)
        n = 4000
        columns: dict[str, list[str | None]] = {}
        logit = np.full(n, -2.0)
        for c in range(4):
            v = rng.integers(0, 4, n)
            columns[f"c{c}"] = [f"v{x}" for x in v]
            logit += 0.3 * v
        # a fifth column, missing for a fifth of the leads, who convert between its values
        gone = rng.random(n) < 0.2
        v = rng.integers(0, 3, n)
        columns["c4"] = [None if g else f"v{x}" for g, x in zip(gone, v, strict=True)]
        logit += np.where(gone, 0.5, 0.4 * v)
        if joint:
            logit += 2.0 * (np.array(columns["c0"]) == "v3") * (np.array(columns["c1"]) == "v3")
        y = rng.random(n) < 1 / (1 + np.exp(-logit))
        features = [f for k, v in columns.items() if not isinstance(f := bin_column(k, v, y), str)]
        design = np.column_stack(
            [b.mask for f in features for i, b in enumerate(f.bins) if i != f.reference]
        ).astype(float)
        p = LogisticRegression(max_iter=2000).fit(design, y).predict_proba(design)[:, 1]
        return [math.exp(t.log_chance) for t in pair_tests(features, design, p, y, 30)]

    null = [c for seed in range(6) for c in chances(False, seed)]
    assert len(null) == 60
    assert 0.35 < float(np.mean(null)) < 0.65
    assert sum(c < 0.05 for c in null) <= 8  # about 3 expected
    assert sum(c < 0.5 for c in null) >= 18
    sharp = chances(True, 0)
    assert min(sharp) < 1e-4 and sorted(sharp)[1] > 0.01  # c0 x c1, and no other pair


def test_fields_that_add_up_get_no_pair_rule() -> None:
    X, y = interaction_data(6000, joint=False)
    card = ScorecardClassifier().fit(X, y)
    assert all(len(r.fields) == 1 for r in card.fitted_.rules)


def test_columns_that_cannot_be_used_say_why() -> None:
    n = 400
    y = np.array([i % 4 == 0 for i in range(n)])
    assert "identifier" in str(bin_column("email", [f"u{i}@x.com" for i in range(n)], y))
    assert bin_column("const", ["x"] * n, y) == "has one value only"
    assert "almost always empty" in str(bin_column("empty", [None] * (n - 5) + ["a"] * 5, y))


def test_a_perfectly_separable_target_is_flagged_and_a_random_one_is_not_trusted() -> None:
    n = 1000
    rng = np.random.default_rng(1)
    y = rng.random(n) < 0.3
    leads = pa.table(
        {
            "lead_id": [f"L{i}" for i in range(n)],
            "call_result": ["booked" if v else "no answer" for v in y],  # known after the fact
            "noise": [str(v) for v in rng.integers(0, 5, n)],
        }
    )
    result = fit_scorecard(leads, y, seed=2)
    assert any(
        "'call_result' ranks the outcome almost on its own" in w for w in result.metrics["warnings"]
    )
    assert result.metrics["holdout"]["roc_auc"] == 1.0
    # calibrated as well as separated: converters near 1, the others near 0
    assert result.metrics["holdout"]["calibration_error"] < 0.02
    p = result.card.predict_proba(leads.to_pydict())[:, 1]
    assert p[y].min() > 0.95 and p[~y].max() < 0.05
    noise_only = fit_scorecard(leads, y, exclude=("call_result",), seed=2)
    holdout = noise_only.metrics["holdout"]
    assert 0.4 < holdout["roc_auc"] < 0.6  # a random target: no ranking
    # and every lead near the base rate (cross-validation chose the strongest penalty)
    p = noise_only.card.predict_proba(leads.drop_columns(["call_result"]).to_pydict())[:, 1]
    assert p.max() - p.min() < 0.05 and abs(p.mean() - y.mean()) < 0.03
    assert min(C_GRID) == noise_only.card.fitted_.C


def test_too_few_conversions_are_refused_with_the_count_needed() -> None:
    X, y = two_groups()
    y[:] = 0
    y[:20] = 1
    with pytest.raises(UsageError, match=r"too few conversions to fit: 20 .* at least 50"):
        ScorecardClassifier().fit(X, y)


def test_the_fitted_file_loads_scores_alike_in_both_evaluators_and_repeats() -> None:
    rng = np.random.default_rng(5)
    n = 2000
    size = rng.integers(1, 5000, n)
    industry = rng.choice(["software", "retail", "health", "Gov"], n)
    y = rng.random(n) < 0.05 + 0.1 * (industry == "software") + size / 50000
    leads = pa.table(
        {
            "lead_id": [f"L{i}" for i in range(n)],
            "employees": [str(s) for s in size],
            "industry": list(industry),
            "created": [f"2026-01-{1 + i % 28:02d}" for i in range(n)],
        }
    )
    result = fit_scorecard(leads, y, time_column="created", name="fitted")
    model = parse_model(result.yaml)
    assert model.spec.calibration is not None and len(model.examples) == 3
    outcomes = run_examples(model)  # the per-lead evaluator against the batch's scores
    assert all(o.passed for o in outcomes), [o.failures for o in outcomes]
    assert "# industry = software:" in result.yaml and "converted (" in result.yaml
    again = fit_scorecard(leads, y, time_column="created", name="fitted")
    assert again.yaml == result.yaml  # deterministic
    assert result.metrics["holdout"]["roc_auc"] > 0.6


def test_a_holdout_unlike_the_past_is_reported() -> None:
    rng = np.random.default_rng(8)
    n = 3000
    late = np.arange(n) >= 0.8 * n
    y = rng.random(n) < np.where(late, 0.25, 0.05)
    leads = pa.table(
        {
            "lead_id": [f"L{i}" for i in range(n)],
            "created": [f"2026-{1 + i * 12 // n:02d}-01" for i in range(n)],
            "rate": [str(4.0 - i / n) for i in range(n)],  # falls with time, as rates did
            "segment": list(rng.choice(["a", "b"], n)),
        }
    )
    notes = fit_scorecard(leads, y, time_column="created").notes
    said = f"the holdout converts at {y[late].mean():.1%} against {y[~late].mean():.1%} in the"
    assert any(n.startswith(said) for n in notes), notes
    assert any("100% of the holdout's 'rate' values lie outside" in n for n in notes)
    calm = fit_scorecard(leads, rng.random(n) < 0.1, time_column="created").notes
    assert not any("converts at" in n for n in calm)


def test_metrics_by_hand() -> None:
    scores = np.arange(20, dtype=float)[::-1]
    positive = np.array([True, True] + [False] * 14 + [True, True, False, False])
    # top 10% = the two highest: both converted; overall 4 of 20
    assert top_decile_lift(scores, positive) == pytest.approx(1.0 / 0.2)
    p = np.array([0.1, 0.1, 0.9, 0.9])
    assert expected_calibration_error(p, np.array([False, True, True, True]), bins=2) == (
        pytest.approx(0.5 * 0.4 + 0.5 * 0.1)
    )


def test_fit_command(tmp_path: Path) -> None:
    X, y = two_groups()
    rows = ["lead_id,region,Subscribed?"] + [
        f"{i},{r},{'Yes' if t else 'No'}"
        for i, r, t in zip(X["lead_id"], X["region"], y, strict=True)
    ]
    (tmp_path / "leads.csv").write_text("\n".join(rows) + "\n")
    runner = CliRunner()
    out = tmp_path / "m.yaml"
    args = ["fit", "--leads", str(tmp_path / "leads.csv"), "--target", "Subscribed?"]
    r = runner.invoke(app, [*args, "--positive", "yes", "-o", str(out)])
    assert r.exit_code == 0, r.stderr
    assert "holdout (80 leads" in r.stderr and "ROC AUC" in r.stderr
    r = runner.invoke(app, ["test", str(out)])
    assert r.exit_code == 0 and "3 passed" in r.stdout
    r = runner.invoke(app, ["fit", "--leads", str(tmp_path / "leads.csv")])
    assert r.exit_code == 2 and "--target COLUMN or --outcomes FILE" in r.stderr
    r = runner.invoke(app, [*args[:3], "--target", "region"])
    assert r.exit_code == 2 and "name the converted value with --positive" in r.stderr
    r = runner.invoke(app, [*args, "--positive", "yes", "-o", str(tmp_path / "leads.csv")])
    assert r.exit_code == 2 and "is the --leads file: it would be overwritten" in r.stderr
    # a column without a name (pandas' index) is left out, not a model that cannot load
    (tmp_path / "indexed.csv").write_text(
        "\n".join(
            [",".join(["", *rows[0].split(",")])] + [f"{i},{r}" for i, r in enumerate(rows[1:])]
        )
        + "\n"
    )
    r = runner.invoke(
        app, ["fit", "--leads", str(tmp_path / "indexed.csv"), *args[3:], "--positive", "yes"]
    )
    assert r.exit_code == 0 and "1 column without a name left out" in r.stderr, r.stderr
    # one whose name differs from another's only in case is a column of its own: both
    # evaluators keep them apart
    (tmp_path / "cased.csv").write_text(
        "\n".join([rows[0] + ",Region"] + [f"{r},{r.split(',')[1]}" for r in rows[1:]]) + "\n"
    )
    cased = ["fit", "--leads", str(tmp_path / "cased.csv"), *args[3:], "--positive", "yes"]
    r = runner.invoke(app, [*cased, "-o", str(out)])
    assert r.exit_code == 0, r.stderr
    assert "only in case" not in r.stderr
    fitted = out.read_text()
    assert "field: Region" in fitted and "field: region" in fitted
    assert runner.invoke(app, ["test", str(out)]).exit_code == 0
    scored = runner.invoke(app, ["score", str(out), "--leads", str(tmp_path / "cased.csv")])
    assert scored.exit_code == 0, scored.stderr


def test_outcomes_that_convert_no_lead_say_why(tmp_path: Path) -> None:
    X, _ = two_groups()
    (tmp_path / "leads.csv").write_text(
        "lead_id,region\n"
        + "".join(f"{i},{r}\n" for i, r in zip(X["lead_id"], X["region"], strict=True))
    )
    leads = ["fit", "--leads", str(tmp_path / "leads.csv")]
    (tmp_path / "other.csv").write_text("lead_id,outcome,ts\nl0,won,2026-01-01\n")
    r = CliRunner().invoke(app, [*leads, "--outcomes", str(tmp_path / "other.csv")])
    assert r.exit_code == 2 and "no outcome names a lead of the leads file" in r.stderr, r.stderr
    assert "such as 'l0'" in r.stderr
    (tmp_path / "crm.csv").write_text("lead_id,outcome,ts\nL0,closed won,2026-01-01\n")
    r = CliRunner().invoke(app, [*leads, "--outcomes", str(tmp_path / "crm.csv")])
    assert r.exit_code == 2, r.stderr
    assert (
        "no outcome of the leads is one of opportunity, won (their outcomes: closed won)"
        in r.stderr
    )


def test_a_time_column_that_cannot_be_read_is_said() -> None:
    X, y = two_groups()
    n = len(y)
    us = [f"{1 + i % 12:02d}/15/2023" for i in range(n)]  # a US date: not read
    with pytest.raises(UsageError, match=r"--time-column 'when': no value reads as a time"):
        fit_scorecard(pa.table({**X, "when": us}), y, time_column="when")
    half = [f"2023-{1 + i % 12:02d}-15" if i % 2 else us[i] for i in range(n)]
    notes = fit_scorecard(pa.table({**X, "when": half}), y, time_column="when").notes
    assert any(
        note.startswith(f"'when' of {n // 2} leads could not be read as a time or a number")
        for note in notes
    ), notes


def test_activity_counts_become_count_rules_that_both_evaluators_score_alike() -> None:
    """Leads that asked for a demo in the last week convert far more often: the fit emits a
    count rule for it, and the generated examples (with their events) pass."""
    rng = np.random.default_rng(7)
    n = 1500
    as_of = int(np.datetime64("2026-06-30T00:00:00", "us").astype(np.int64))
    day = 86_400_000_000
    demo = rng.random(n) < 0.25
    y = rng.random(n) < np.where(demo, 0.45, 0.05)
    lead_ids = [f"L{i}" for i in range(n)]
    rows = []
    for i in range(n):
        if demo[i]:
            rows.append((lead_ids[i], "demo_request", as_of - int(rng.uniform(0.1, 6.5) * day)))
        for _ in range(int(rng.integers(0, 4))):
            rows.append((lead_ids[i], "page_view", as_of - int(rng.uniform(0.1, 80) * day)))
    events = pa.table(
        {
            "lead_id": [r[0] for r in rows],
            "type": [r[1] for r in rows],
            "ts": pa.array([r[2] for r in rows], pa.timestamp("us", tz="UTC")),
            "item": pa.nulls(len(rows), pa.string()),
        }
    )
    leads = pa.table({"lead_id": lead_ids, "country": list(rng.choice(["US", "DE"], n))})
    said: list[str] = []
    result = fit_scorecard(leads, y, events=events, as_of_us=as_of, seed=1, progress=said.append)
    assert [s.split()[0] for s in said] == ["counting", "binning", "choosing", "scoring"]
    model = parse_model(result.yaml)
    demo_rules = [r for r in model.rules if getattr(r, "events", None) == ("demo_request",)]
    assert demo_rules and max(r.points for r in demo_rules) >= 10
    assert all(r.count is not None for r in demo_rules)
    outcomes = run_examples(model)
    assert len(outcomes) == 3 and all(o.passed for o in outcomes), [o.problems for o in outcomes]
    assert result.metrics["holdout"]["roc_auc"] > 0.75
    # the target as a column with blanks: those leads leave the fit, the examples keep their
    # own leads' events
    said = ["" if i % 7 == 0 else ("yes" if v else "no") for i, v in enumerate(y)]
    with_blanks = leads.append_column("converted", pa.array(said))
    again = fit_scorecard(with_blanks, events=events, as_of_us=as_of, target_column="converted")
    assert any("have no value in 'converted'" in note for note in again.notes)
    outcomes = run_examples(parse_model(again.yaml))
    assert len(outcomes) == 3 and all(o.passed for o in outcomes), [o.problems for o in outcomes]


def test_a_page_among_page_views_and_rising_visits_get_rules_of_their_own() -> None:
    """Leads that saw the pricing pages, and leads whose visits picked up this week, convert
    more: the fit finds the URL prefix (a count rule with ``where``) and the trend, and the
    examples, whose events carry their URLs, pass in the per-lead evaluator."""
    rng = np.random.default_rng(9)
    n = 2000
    as_of = int(np.datetime64("2026-06-30T00:00:00", "us").astype(np.int64))
    day = 86_400_000_000
    pricing, rising = rng.random(n) < 0.25, rng.random(n) < 0.2
    y = rng.random(n) < 0.03 + 0.3 * pricing + 0.25 * rising
    lead_ids = [f"L{i}" for i in range(n)]
    rows = []
    for i in range(n):
        for _ in range(int(rng.integers(0, 5))):
            url = str(rng.choice(["/blog/roi", "/docs/api", "/", "/about"]))
            rows.append((lead_ids[i], url, as_of - int(rng.uniform(0.1, 80) * day)))
        if pricing[i]:  # as evaluators compare: trimmed, case ignored
            url = str(rng.choice(["/pricing", " /Pricing/enterprise"]))
            rows.append((lead_ids[i], url, as_of - int(rng.uniform(0.1, 25) * day)))
        for _ in range(3 if rising[i] else 0):
            rows.append((lead_ids[i], "/blog/roi", as_of - int(rng.uniform(0.1, 6.5) * day)))
    events = pa.table(
        {
            "lead_id": [r[0] for r in rows],
            "type": ["page_view"] * len(rows),
            "ts": pa.array([r[2] for r in rows], pa.timestamp("us", tz="UTC")),
            "item": pa.nulls(len(rows), pa.string()),
            "url": [r[1] for r in rows],
            "src": [["Ads", " ads ", "Email", "01", "1"][i % 5] for i in range(len(rows))],
            "event_id": [f"E{i}" for i in range(len(rows))],  # an identifier: no rule
        }
    )
    leads = pa.table({"lead_id": lead_ids, "country": list(rng.choice(["US", "DE"], n))})
    result = fit_scorecard(leads, y, events=events, as_of_us=as_of, seed=1)
    rules = [r for r in result.card.fitted_.rules if r.activity is not None]
    on_pricing = [
        r for r in rules if r.activity.get("where") == {"field": "url", "starts_with": "/pricing"}
    ]
    assert on_pricing and max(r.points for r in on_pricing) >= 10
    assert all(r.activity["window_days"] == 30 for r in on_pricing)
    trend = [r for r in rules if "trend" in r.activity]
    assert [r.activity["where"] for r in trend if "where" in r.activity] == []
    assert trend and trend[0].points > 0 and trend[0].label.startswith("page_view events rising")
    assert not any("event_id" in str(r.activity.get("where")) for r in rules)
    # values that compare equal are one column: Ads = " ads ", 01 = 1
    _, sources, _ = activity_features(prepare(leads, events).events, lead_ids, as_of, 30, set())
    on_src = sorted(str(s.where["eq"]) for s in sources.values() if s.where and "eq" in s.where)
    assert len(on_src) == 3 and on_src[1:] == ["Ads", "Email"] and float(on_src[0]) == 1
    # an as-of before every event: no activity column (a TypeError before)
    columns, sources, log = activity_features(
        prepare(leads, events).events, lead_ids, as_of - 400 * 86_400_000_000, 30, set()
    )
    assert columns == {} and sources == {} and log.counts({"page_view"}).sum() == 0
    model = parse_model(result.yaml)
    outcomes = run_examples(model)
    assert len(outcomes) == 3 and all(o.passed for o in outcomes), [o.problems for o in outcomes]
    assert '"url": " /Pricing/enterprise"' in result.yaml or '"url": "/pricing"' in result.yaml
    # every lead, not only the examples: the per-lead evaluator gives the batch's scores
    prepared = prepare(leads, events)
    batch = result.card.score_rows(leads.to_pydict(), prepared.events, as_of)
    pairs = iter_lead_events(prepared)
    per_lead = [score_lead(model, lead, evs, "2026-06-30T00:00:00Z").score for lead, evs in pairs]
    assert np.allclose(batch, per_lead, rtol=0, atol=1e-9)


def test_awkward_values_still_give_a_model_that_loads_and_agrees() -> None:
    """Accents, control characters, numbers written two ways, event types with ':' and a
    lead column named like a count column: the file loads and its examples pass."""
    rng = np.random.default_rng(11)
    n = 900
    city = rng.choice(["Köln", "Zürich", "a\x85b", "line\nbreak", "São Paulo"], n)
    plan = rng.choice(["1", "01", "1.0", "pro"], n)
    y = rng.random(n) < np.where(city == "Köln", 0.4, 0.1) + np.where(plan == "pro", 0.2, 0)
    lead_ids = [f"L{i}" for i in range(n)]
    as_of = int(np.datetime64("2026-06-30T00:00:00", "us").astype(np.int64))
    rows = [(lead_ids[i], "web:visit", as_of - 86_400_000_000 * (1 + i % 5)) for i in range(n)]
    events = pa.table(
        {
            "lead_id": [r[0] for r in rows],
            "type": [r[1] for r in rows],
            "ts": pa.array([r[2] for r in rows], pa.timestamp("us", tz="UTC")),
            "item": pa.nulls(n, pa.string()),
        }
    )
    leads = pa.table(
        {
            "lead_id": lead_ids,
            "Größe": list(city),
            "plan": list(plan),
            "web:visit events in 7 days": ["x"] * n,
        }
    )
    result = fit_scorecard(leads, y, events=events, as_of_us=as_of, seed=3, name="awkward")
    model = parse_model(result.yaml)
    ids = [r.id for r in model.rules]
    assert any(i.startswith("grosse-") for i in ids) and all(i.isascii() for i in ids)
    plans = [r for r in model.rules if r.id.startswith("plan-")]
    assert len(plans) == 1  # 1, 01 and 1.0 are one value to `eq`; pro is the other
    assert all(o.passed for o in run_examples(model))
    with pytest.raises(UsageError, match="a model name is letters"):
        fit_scorecard(leads, y, name="my model")
    with pytest.raises(UsageError, match="no lead has it"):
        fit_scorecard(leads, None, target_column="plan", positive="enterprise")


def test_holdout_figures_do_not_depend_on_the_order_of_the_rows() -> None:
    """A scorecard gives many leads one score: the lift counts the leads tied at the top
    tenth's cut in part, and the calibration error keeps equal predictions in one group, so a
    file sorted by the outcome gives the figures of the same file shuffled."""
    from leadscore.predictive.fit import expected_calibration_error, top_decile_lift

    rng = np.random.default_rng(3)
    scores = rng.choice([10.0, 20.0, 30.0], size=3000, p=[0.5, 0.45, 0.05])
    chance = np.where(scores > 25, 0.5, np.where(scores > 15, 0.2, 0.05))
    converted = rng.random(3000) < chance
    figures = set()
    for order in (np.argsort(converted), np.argsort(~converted), rng.permutation(3000)):
        s, c = scores[order], converted[order]
        figures.add(
            (
                round(top_decile_lift(s, c) or 0, 9),
                round(expected_calibration_error(chance[order], c) or 0, 9),
            )
        )
    assert len(figures) == 1
    # by hand: the 50 leads tied at the cut (score 5, 10 of them converted) share the 10
    # places of the top tenth of 100: 2 conversions expected there, while 15 of 100 convert
    tied = np.array([5.0] * 50 + [1.0] * 50)
    won = np.array([True] * 10 + [False] * 40 + [True] * 5 + [False] * 45)
    assert top_decile_lift(tied, won) == pytest.approx((2 / 10) / 0.15)


def test_the_chance_line_reads_well_at_the_ends() -> None:
    from leadscore.engine.explain import _chance

    assert [_chance(p) for p in (0.0, 0.004, 0.23, 0.996, 1.0)] == [
        "about 0%",
        "under 1%",
        "about 23%",
        "over 99%",
        "about 100%",
    ]
