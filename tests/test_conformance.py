"""Both evaluators reproduce ../shared/conformance/expected.csv (an independent implementation)."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import pytest

from leadscore import load_model, prepare, score_lead, score_run
from leadscore.scoring import iter_lead_events

AS_OF = "2026-06-30T12:00:00Z"


def _expected(conformance: Path) -> dict[str, dict[str, str]]:
    with (conformance / "expected.csv").open() as fh:
        return {r["lead_id"]: r for r in csv.DictReader(fh)}


def _check(expected: dict[str, str], got: dict[str, object]) -> list[str]:
    problems = []
    for key, want in expected.items():
        if key == "lead_id":
            continue
        value = got[key]
        if key in ("grade", "band", "priority"):
            ok = (want or None) == value
        elif key == "mql":
            ok = want == str(value)
        else:
            assert isinstance(value, float)
            ok = abs(float(want) - value) <= 1e-6
        if not ok:
            problems.append(f"{key}: expected {want}, got {value}")
    return problems


@pytest.fixture(scope="module")
def inputs(conformance: Path):  # type: ignore[no-untyped-def]
    model = load_model(conformance / "model.yaml")
    prepared = prepare(conformance / "leads.csv", conformance / "events.csv")
    return model, prepared, _expected(conformance)


def test_batch_evaluator_matches_vectors(inputs) -> None:  # type: ignore[no-untyped-def]
    model, prepared, expected = inputs
    rows = score_run(model, prepared, AS_OF).table.to_pylist()
    assert len(rows) == 300
    failures = {r["lead_id"]: _check(expected[r["lead_id"]], r) for r in rows}
    assert {k: v for k, v in failures.items() if v} == {}


def test_per_lead_evaluator_matches_vectors(inputs) -> None:  # type: ignore[no-untyped-def]
    model, prepared, expected = inputs
    failures = {}
    for lead, events in iter_lead_events(prepared):
        got = score_lead(model, lead, events, AS_OF).as_row()
        problems = _check(expected[lead["lead_id"]], got)
        if problems:
            failures[lead["lead_id"]] = problems
    assert failures == {}


def test_warnings_count_non_numbers(inputs) -> None:  # type: ignore[no-untyped-def]
    """leads.csv has 'abc' in `employees` 28 times: `between` is false there, and counted."""
    model, prepared, _ = inputs
    run = score_run(model, prepared, AS_OF)
    assert any(
        "leads.csv: column 'employees': 28 value(s) are not numbers, so the numeric test of "
        "rule(s) company-size was false for them: line 8 ('abc'), line 12" in w
        for w in run.warnings
    )


def test_ibis_tables_on_their_own_backend(inputs) -> None:  # type: ignore[no-untyped-def]
    """The plan bound to a user's Ibis tables gives the vector results too."""
    import ibis

    from leadscore import score_leads

    model, prepared, expected = inputs
    con = ibis.duckdb.connect()
    leads = con.create_table("crm_leads", prepared.leads)
    events = con.create_table("web_events", prepared.events)
    rows = score_leads(
        [model, dataclasses.replace(model, name="copy")], leads, events, AS_OF
    ).to_pylist()
    assert [r["lead_id"] for r in rows] == sorted(expected)
    for r in rows:
        one = {k.split(".", 1)[1]: v for k, v in r.items() if k.startswith("copy.")}
        assert _check(expected[r["lead_id"]], one) == []


def test_plan_sql_text_runs_and_agrees(inputs) -> None:  # type: ignore[no-untyped-def]
    """`BatchPlan.sql()` prints SQL that, run as text, gives the plan's own results."""
    import ibis

    from leadscore import compile_model
    from leadscore.engine.timeutil import parse_instant
    from leadscore.scoring import register_inputs

    model, prepared, _ = inputs
    plan = compile_model(model)
    t_us = parse_instant(AS_OF)
    con = ibis.duckdb.connect()
    register_inputs(con, prepared, [plan])
    direct = plan.execute(con, t_us).sort_by("lead_id")
    text = con.con.sql(plan.sql("duckdb", t_us)).to_arrow_table().sort_by("lead_id")
    assert text.to_pylist() == direct.to_pylist()
    assert "WITH" in plan.sql("postgres", t_us) or "SELECT" in plan.sql("postgres", t_us)
