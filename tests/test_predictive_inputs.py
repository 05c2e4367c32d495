"""`leadscore fit` on messy exports: separators, missing markers, numbers written for people,
dates, ids, targets in their common spellings, small holdouts and many columns."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from leadscore import InputError, parse_model, run_examples
from leadscore.cli import app
from leadscore.errors import UsageError
from leadscore.inputs import (
    NamedData,
    csv_delimiter,
    normalize_events,
    normalize_leads,
    read_table,
)
from leadscore.predictive import ScorecardClassifier
from leadscore.predictive.binning import Feature, bin_column
from leadscore.predictive.fit import fit_scorecard
from leadscore.predictive.reading import NumberFormat, id_named, missing_markers, number_format
from leadscore.predictive.scorecard import PAIR_COLUMNS, strongest_columns
from leadscore.spec.conditions import compile_condition
from leadscore.spec.schema import ProfileRuleSpec

BANK = (
    Path(__file__).resolve().parents[2] / "shared/data/uci_bank_marketing/bank-additional-full.csv"
)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def matches(condition: dict[str, object], value: str | None) -> bool:
    """Whether the evaluators' meaning of ``condition`` holds for a lead whose field
    ``x`` is ``value``."""
    rule = ProfileRuleSpec.model_validate({"id": "r", "if": condition, "points": 1})
    return compile_condition(rule.if_)({"x": value})


# --- separators ------------------------------------------------------------------------------


def test_semicolon_and_tab_files_read_as_comma_ones(tmp_path: Path) -> None:
    rows = [["lead_id", "job title", "amount"], ["L1", "VP, Sales", "1.5"], ["L2", "CEO", "3"]]
    comma = 'lead_id,job title,amount\nL1,"VP, Sales",1.5\nL2,CEO,3\n'
    expected = normalize_leads(write(tmp_path / "c.csv", comma))
    assert expected.to_pylist() == [dict(zip(rows[0], r, strict=True)) for r in rows[1:]]
    semicolon = '"lead_id";"job title";"amount"\n"L1";"VP, Sales";1.5\n"L2";"CEO";3\n'  # bank's
    tab = "lead_id\tjob title\tamount\nL1\tVP, Sales\t1.5\nL2\tCEO\t3\n"
    for source in (
        write(tmp_path / "s.csv", semicolon),
        write(tmp_path / "t.csv", tab),
        write(tmp_path / "t.tsv", tab),
        NamedData("upload.csv", semicolon.encode()),
    ):
        assert normalize_leads(source).equals(expected), source
    # a comma file whose values hold semicolons stays a comma file; one column is one column
    lists = "lead_id,tags\nL1,a;b;c\nL2,d;e;f\n"
    assert normalize_leads(write(tmp_path / "l.csv", lists)).column("tags")[0].as_py() == "a;b;c"
    assert csv_delimiter("lead_id\nL1\n") == ","
    assert csv_delimiter('lead_id;"a,b"\nL1;x\n') == ";"


def test_a_semicolon_file_names_its_bad_lines(tmp_path: Path) -> None:
    """The lines of a `;` file are counted with its separator: a value over two lines and a
    line with a value too many are named by their line."""
    events = 'lead_id;type;ts;note\nA;view;2026-01-01;"two\nlines; here"\nB;view;soon;x\n'
    with pytest.raises(InputError) as info:
        normalize_events(write(tmp_path / "e.csv", events))
    assert "line 4 ('soon')" in str(info.value)
    with pytest.raises(InputError) as info:
        normalize_leads(write(tmp_path / "l.csv", "lead_id;a\nL1;x\nL2;y;z\n"))
    assert "line 3: 3 values where the header names 2" in str(info.value)
    assert "A value holding a semicolon (the separator) needs double quotes" in str(info.value)


@pytest.mark.skipif(not BANK.exists(), reason="the shared data is not there")
def test_the_bank_file_reads_as_its_columns() -> None:
    table = read_table(BANK)
    assert table.num_rows == 41_188 and table.num_columns == 21
    assert table.column("job")[0].as_py() == "housemaid" and table.column_names[-1] == "y"


# --- missing markers -------------------------------------------------------------------------


def test_missing_markers_are_missing_values_with_a_bin_of_their_own() -> None:
    """400 numbers and 200 missing ones, written five ways: the column is a column of
    numbers (a third not numbers made it text before), and the 200 get their own bin, whose
    condition the evaluators find true of every marker and of a blank, and of nothing else."""
    numbers = [str(10 + i % 80) for i in range(400)]
    missing = ["NA"] * 80 + ["?"] * 50 + ["null"] * 30 + ["-"] * 20 + [""] * 10 + ["None"] * 10
    y = np.array([i % 3 == 0 for i in range(400)] + [i % 2 == 0 for i in range(200)])
    feature = bin_column("x", numbers + missing, y)
    assert isinstance(feature, Feature) and feature.kind == "numeric"
    last = feature.bins[-1]
    assert last.label == "missing (NA, ?, null, -, None)"
    assert last.rows == 200 and last.conversions == 100 and last.mask[400:].all()
    for value in ("NA", " na ", "NULL", "?", "-", None, "  ", "None"):
        assert matches(last.condition, value), value
    for value in ("12", "unknown", "N.A."):
        assert not matches(last.condition, value), value
    assert all(not b.mask[400:].any() for b in feature.bins[:-1])  # no number bin holds them


def test_which_values_are_missing_markers() -> None:
    assert missing_markers(["NA", "n/a", "#N/A", "NULL", "NaN", "?", "-", "--", "None"]) == {
        "NA",
        "n/a",
        "#N/A",
        "NULL",
        "NaN",
        "?",
        "-",
        "--",
        "None",
    }
    assert missing_markers(["none", "unknown", "0", "N.A."]) == set()  # answers, not blanks
    assert missing_markers(["None", "none", "some"]) == set()  # `in` would not tell them apart
    assert missing_markers(["NA", "EMEA", "APAC", "LATAM"]) == set()  # North America
    assert missing_markers(["NA", "yes", "no"]) == {"NA"}


def test_the_fit_says_how_many_values_it_read_as_missing() -> None:
    n = 600
    rng = np.random.default_rng(2)
    y = rng.random(n) < 0.3
    income = [("NA" if i % 5 == 0 else "?") if i % 4 == 0 else str(20 + i % 50) for i in range(n)]
    leads = pa.table(
        {
            "lead_id": [f"L{i}" for i in range(n)],
            "income": income,
            "plan": [["free", "pro", "n/a"][i % 3] for i in range(n)],
            "region": [["NA", "EMEA", "APAC"][i % 3] for i in range(n)],  # codes: NA a value
        }
    )
    notes = fit_scorecard(leads, y, interactions=0).notes
    said = [n for n in notes if n.startswith("values read as missing")]
    # income: 150 (i % 4 == 0), 30 of them NA (i % 20 == 0) and 120 '?'; plan: 200 'n/a'
    assert said == [
        "values read as missing (as a blank is), by column: 'income' 150 (?, NA); 'plan' 200 (n/a)"
    ]


# --- numbers written for people --------------------------------------------------------------


def amounts(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    value = np.round(rng.gamma(2.0, 1500.0, n), 2)
    return value, rng.random(n) < np.where(value > 3000, 0.35, 0.08)


def german(v: float) -> str:
    """``1.234,50``."""
    return f"{v:,.2f}".replace(",", "_").replace(".", ",").replace("_", ".")


def test_numbers_written_for_people_are_read_as_numbers(tmp_path: Path) -> None:
    """`$1,234.50`, `12%` and `1.234,50 €` columns are binned as numbers; the rules compare
    numbers, the examples hold them written plainly (so `leadscore test` passes), and the
    fitted classifier scores the columns as written."""
    n = 1500
    value, y = amounts(n, 1)
    share = np.arange(n) % 100
    leads = pa.table(
        {
            "lead_id": [f"L{i}" for i in range(n)],
            "revenue": [f"${v:,.2f}" for v in value],
            "share": [f"{s}%" for s in share],
            "umsatz": [german(v) + " €" for v in value],
        }
    )
    result = fit_scorecard(leads, y, interactions=0, seed=1)
    formats = result.card.number_formats
    assert sorted(formats) == ["revenue", "share", "umsatz"]
    assert formats["share"].plain("12%") == "12"
    assert formats["umsatz"].plain("1.234,50 €") == "1234.5"
    for rule in result.card.fitted_.rules:
        parts = rule.condition.get("all", [rule.condition])
        assert all(set(p) - {"field"} <= {"lt", "gte"} for p in parts), rule.condition
    assert any(r.column == "revenue" and r.points >= 10 for r in result.card.fitted_.rules)
    assert any(
        note.startswith("'revenue' read as numbers ('$") and "need 'revenue' written so" in note
        for note in result.notes
    ), result.notes
    assert "# Columns read as numbers written for people" in result.yaml
    model = parse_model(result.yaml)
    assert all(o.passed for o in run_examples(model))
    example = model.examples[0].lead
    assert "$" not in str(example.get("revenue", "")) and "%" not in str(example.get("share", ""))
    # the classifier reads the columns as written, as the fit did
    plain = {"lead_id": leads.column("lead_id").to_pylist(), "revenue": [f"{v}" for v in value]}
    raw = {"lead_id": plain["lead_id"], "revenue": leads.column("revenue").to_pylist()}
    card = ScorecardClassifier(interactions=0).fit(raw, y)
    assert np.array_equal(card.score_rows(raw), card.score_rows(plain))
    assert card.score_rows(raw).std() > 0


def test_a_column_that_reads_as_numbers_only_in_part_stays_text() -> None:
    assert number_format({"$3": 90, "call us": 10}) is None  # 90%: not the whole column
    assert number_format({"12": 50, "7.5": 50}) is None  # plain numbers: nothing to read
    assert number_format({"1,5": 30, "2,25": 30, "x": 40}) is None
    fmt = number_format({"1,200": 10, "1.5": 10})
    assert isinstance(fmt, NumberFormat) and fmt.plain("1,200") == "1200"
    # `1.200 €` alone could be either; `2,5 €` says the comma is the decimal mark
    fmt = number_format({"1.200 €": 10, "2,5 €": 10})
    assert fmt is not None and fmt.plain("1.200 €") == "1200" and fmt.plain("2,5 €") == "2.5"
    assert fmt.plain("NA") == "NA" and fmt.plain(None) is None


# --- dates and ids ---------------------------------------------------------------------------


def test_dates_are_left_out_not_made_a_rule_per_day() -> None:
    """Ten days of 60 leads each made ten `eq` rules, one per day; a date column is left out,
    whatever way it writes its dates."""
    n = 600
    y = np.array([i % 4 == 0 for i in range(n)])
    for day in (
        lambda d: f"2026-03-{d:02d}",
        lambda d: f"{d:02d}/03/2026",
        lambda d: f"{d} Mar 2026",
        lambda d: f"2026-03-{d:02d}T09:{d:02d}:00Z",
    ):
        values = [day(1 + i % 10) for i in range(n)]
        why = bin_column("signed up", values, y)
        assert isinstance(why, str) and why.startswith(f"holds dates (such as {day(1)!r})"), why
    months = bin_column("month", [["2026-01", "2026-02"][i % 2] for i in range(n)], y)
    assert isinstance(months, Feature)  # a month is a category, not a day


def test_id_like_columns_are_left_out() -> None:
    n = 400
    rng = np.random.default_rng(3)
    y = rng.random(n) < 0.3
    rows = bin_column("customer number", [str(1000 + i) for i in range(n)], y)
    assert rows == "looks like an identifier (400 different whole numbers in 400 rows)"
    sparse_ids = [str(v) for v in rng.choice(10**9, n, replace=False)]
    assert "identifier" in str(bin_column("Account ID", sparse_ids, y))
    # the same numbers under another name could be amounts: binned
    amount = bin_column("amount", sparse_ids, y)
    assert isinstance(amount, Feature) and amount.kind == "numeric"
    # ids of a few things are categories: each its own value, not cut at quantiles
    campaign = bin_column("campaign_id", [str(7 + 5 * (i % 4)) for i in range(n)], y)
    assert isinstance(campaign, Feature) and campaign.kind == "text"
    assert sorted(b.condition.get("eq", "") for b in campaign.bins) == ["12", "17", "22", "7"]
    assert [id_named(c) for c in ("lead_id", "customerId", "CustomerID", "uuid", "ID")] == [
        True
    ] * 5
    assert [id_named(c) for c in ("paid", "PAID", "valid", "Android")] == [False] * 4


# --- targets ---------------------------------------------------------------------------------


def region_leads(target: list[str]) -> pa.Table:
    n = len(target)
    region = [["a", "b"][i % 2] for i in range(n)]
    return pa.table({"lead_id": [f"L{i}" for i in range(n)], "region": region, "won": target})


@pytest.mark.parametrize(
    ("yes", "no"),
    [("1.0", "0.0"), ("t", "f"), ("TRUE", "False"), ("Yes", " n "), ("1", "no")],
)
def test_targets_in_their_common_spellings(yes: str, no: str) -> None:
    y = np.array([i % 3 == 0 for i in range(600)])
    target = [yes if v else no for v in y]
    result = fit_scorecard(region_leads(target), target_column="won", interactions=0)
    assert result.metrics["train"]["conversions"] + result.metrics["holdout"]["conversions"] == 200


def test_an_ambiguous_target_names_its_values_and_missing_ones_leave_the_fit() -> None:
    stages = ["won"] * 150 + ["lost"] * 300 + ["open"] * 50 + ["Lost "] * 20
    with pytest.raises(UsageError) as info:
        fit_scorecard(region_leads(stages), target_column="won")
    assert str(info.value) == (
        "--target 'won': its values are not yes/no, true/false, t/f, y/n or 1/0 (found: lost "
        "(320), won (150), open (50)): name the converted value with --positive"
    )
    result = fit_scorecard(region_leads(stages), target_column="won", positive=" WON")
    assert result.metrics["train"]["conversions"] + result.metrics["holdout"]["conversions"] == 150
    # --positive 1 is the 1.0 of the file, as `eq` compares
    ones = ["1.0" if i % 3 == 0 else "0.0" for i in range(600)]
    got = fit_scorecard(region_leads(ones), target_column="won", positive="1", interactions=0)
    assert got.metrics["train"]["conversions"] + got.metrics["holdout"]["conversions"] == 200
    with pytest.raises(UsageError, match=r"no lead has it in 'won' \(its values: 0.0 \(400\), 1.0"):
        fit_scorecard(region_leads(ones), target_column="won", positive="2")
    marked = [("NA" if i % 10 == 0 else "?") if i % 5 == 0 else v for i, v in enumerate(ones)]
    notes = fit_scorecard(region_leads(marked), target_column="won", interactions=0).notes
    assert "120 leads have no value in 'won': left out of the fit" in notes
    with pytest.raises(UsageError) as info:
        fit_scorecard(region_leads(["NA", "?", ""] * 200), target_column="won")
    assert str(info.value) == (
        "--target 'won': no lead has a value in it (each is blank or a missing marker such as '?')"
    )


# --- the command -----------------------------------------------------------------------------


def test_the_command_reads_a_messy_semicolon_export(tmp_path: Path) -> None:
    """A `;` export with NA, `$1,234.50` amounts, a date and a row number: each read as a
    person would, said on the terminal, and the written model passes its examples."""
    n = 1200
    value, y = amounts(n, 4)
    lines = ["lead_id;amount;signed up;row;industry;converted"]
    for i in range(n):
        amount = "NA" if i % 10 == 0 else f"${value[i]:,.2f}"
        industry = ["software", "retail", "null"][i % 3]
        lines.append(f"L{i};{amount};2026-02-{1 + i % 28:02d};{i};{industry};{int(y[i])}.0")
    path = write(tmp_path / "export.csv", "\n".join(lines) + "\n")
    out = tmp_path / "m.yaml"
    r = CliRunner().invoke(
        app, ["fit", "--leads", str(path), "--target", "converted", "-o", str(out)]
    )
    assert r.exit_code == 0, r.stderr
    err = " ".join(r.stderr.split())
    said = "values read as missing (as a blank is), by column: 'amount' 120 (NA); 'industry'"
    assert f"{said} 400 (null)" in err
    assert "'amount' read as numbers ('$" in err
    assert "not used: signed up: holds dates (such as '2026-02-01')" in err
    assert "not used: row: looks like an identifier" in err
    text = out.read_text()
    assert "{field: amount, gte:" in text or "{field: amount, lt:" in text
    assert CliRunner().invoke(app, ["test", str(out)]).exit_code == 0


def test_the_command_shows_input_warnings_and_a_small_holdout(tmp_path: Path) -> None:
    """Rows skipped with --skip-bad-rows are said; a holdout of 100 leads with 6 conversions
    is said to be too small to trust its figures."""
    n = 1000
    y = [i % 50 in (0, 7, 13) for i in range(n)]  # 60 conversions, 6 in every 100 leads
    lines = ["lead_id,plan,seq,converted"] + [
        f"L{i},{['free', 'pro'][i % 2]},{i},{'yes' if v else 'no'}" for i, v in enumerate(y)
    ]
    lines.insert(5, "L1,pro,1,no")  # a repeated id: line 6
    path = write(tmp_path / "leads.csv", "\n".join(lines) + "\n")
    args = ["fit", "--leads", str(path), "--target", "converted", "--skip-bad-rows"]
    r = CliRunner().invoke(app, [*args, "--test-fraction", "0.1", "--time-column", "seq"])
    assert r.exit_code == 0, r.stderr
    err = " ".join(r.stderr.split())
    assert (
        "warning: "
        + str(path)
        + ": column 'lead_id': skipped 1 line repeats an earlier lead id: line 6"
        in err
    )
    said = "warning: the holdout has only 6 conversions (of 100 leads): its figures are rough;"
    assert f"{said} its ROC AUC could be off by " in err
    empty = write(tmp_path / "empty.csv", "lead_id;converted\n")
    r = CliRunner().invoke(app, ["fit", "--leads", str(empty), "--target", "converted"])
    assert r.exit_code == 2 and f"--leads {empty}: no leads to fit on" in r.stderr


# --- the pair search -------------------------------------------------------------------------


def wide(n: int, columns: int, seed: int) -> tuple[dict[str, list[str]], np.ndarray]:
    """Five columns that matter (``a`` and ``b`` together more than apart), the others noise."""
    rng = np.random.default_rng(seed)
    X: dict[str, list[str]] = {"lead_id": [f"L{i}" for i in range(n)]}
    logit = np.full(n, -2.2)
    flags = []
    for k in range(columns):
        v = rng.random(n) < 0.5
        X[f"c{k:02d}"] = ["yes" if f else "no" for f in v]
        if k < 5:
            logit += 0.6 * v
            flags.append(v)
    logit += 1.5 * (flags[0] & flags[1])
    return X, rng.random(n) < 1 / (1 + np.exp(-logit))


def test_the_pair_search_looks_among_the_strongest_columns_only() -> None:
    """30 columns made 435 pairs to test; the 20 strongest alone make 190, and the pair that
    converts together is among them."""
    X, y = wide(6000, 30, seed=5)
    features = [
        f for k, v in X.items() if k != "lead_id" and isinstance(f := bin_column(k, v, y), Feature)
    ]
    top = [features[i].column for i in strongest_columns(features, y, 5)]
    assert top == ["c00", "c01", "c02", "c03", "c04"]
    said: list[str] = []
    card = ScorecardClassifier().fit(X, y, progress=said.append)
    assert PAIR_COLUMNS == 20
    assert "testing 190 pairs of columns (the 20 strongest of 30)" in said
    pairs = {r.fields for r in card.fitted_.rules if len(r.fields) == 2}
    assert pairs == {("c00", "c01")}
