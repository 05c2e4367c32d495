"""``leadscore fit``: learn a model's points from the team's own conversions."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from leadscore.cli import IdOpt, SkipOpt, _edge, _Quiet, app, err
from leadscore.errors import UsageError
from leadscore.scoring import given_instant, prepare
from leadscore.validation.outcomes import parse_conversion

__all__ = ["fit"]


@app.command()
@_edge
def fit(
    leads: Annotated[Path, typer.Option("--leads", help="Leads file: CSV, Parquet or JSON lines.")],
    target: Annotated[
        str | None, typer.Option("--target", help="The leads column that says who converted.")
    ] = None,
    positive: Annotated[
        str | None,
        typer.Option("--positive", help="The target's converted value (default: yes/true/1)."),
    ] = None,
    outcomes: Annotated[
        Path | None,
        typer.Option("--outcomes", help="Or an outcomes file: a lead converted if it has one."),
    ] = None,
    events: Annotated[
        Path | None,
        typer.Option("--events", help="Events: fit count rules per event type (7, 30, 90 days)."),
    ] = None,
    as_of: Annotated[
        str | None,
        typer.Option("--as-of", help="Count events up to this time (default: the latest event)."),
    ] = None,
    conversion: Annotated[
        str, typer.Option("--conversion", help="With --outcomes: the outcomes that count.")
    ] = "won,opportunity",
    exclude: Annotated[
        list[str] | None, typer.Option("--exclude", help="A column not to use (repeatable).")
    ] = None,
    time_column: Annotated[
        str | None,
        typer.Option("--time-column", help="Measure on the most recent leads by this column."),
    ] = None,
    test_fraction: Annotated[
        float, typer.Option("--test-fraction", min=0.01, max=0.9, help="The share kept apart.")
    ] = 0.2,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the random holdout.", min=0)] = 0,
    pdo: Annotated[
        float, typer.Option("--points-to-double-odds", min=0.1, help="The points scale.")
    ] = 10.0,
    interactions: Annotated[
        int,
        typer.Option(
            "--interactions", min=0, help="Pairs of columns that may get joint rules (0: none)."
        ),
    ] = 10,
    max_bins: Annotated[
        int,
        typer.Option(
            "--max-bins",
            min=2,
            max=50,
            help="Quantile bins per number column (a value held by 1/N of the leads: its own).",
        ),
    ] = 6,
    name: Annotated[str, typer.Option("--name", help="The fitted model's name.")] = "fitted",
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write the model file here.")
    ] = None,
    lead_id_column: IdOpt = "lead_id",
    skip_bad_rows: SkipOpt = False,
) -> None:
    """Fit a scorecard: integer points for binned profile columns (and, with --events, count
    rules per event type), as an editable model file, with holdout figures (ROC AUC, top-decile
    lift, calibration error)."""
    try:
        from leadscore.predictive.fit import fit_scorecard
    except ImportError:
        raise UsageError("fitting needs scikit-learn: pip install 'leadscore[predict]'") from None
    if (target is None) == (outcomes is None):
        raise UsageError("say who converted: --target COLUMN or --outcomes FILE (one of them)")
    if output is not None and (output.is_dir() or not output.parent.is_dir()):
        raise UsageError(f"--output: cannot write {output}")
    for given, option in ((leads, "--leads"), (events, "--events"), (outcomes, "--outcomes")):
        if output is not None and given is not None and output.resolve() == given.resolve():
            raise UsageError(f"--output {output} is the {option} file: it would be overwritten")
    with err.status("reading inputs...") if err.is_terminal else _Quiet() as live:

        def say(text: str) -> None:
            if live is not None:
                live.update(text + "...")

        prepared = prepare(
            leads, events, lead_id_column=lead_id_column, skip_bad_rows=skip_bad_rows
        )
        for w in prepared.report.warnings:  # rows skipped (--skip-bad-rows)
            err.print(f"warning: {w}", markup=False)
        if not prepared.leads.num_rows:
            raise UsageError(f"--leads {leads}: no leads to fit on (the file holds none)")
        as_of_us = None if as_of is None else given_instant(as_of, "--as-of")
        y = None
        if outcomes is not None:
            from leadscore.cli.validation import load_outcomes
            from leadscore.validation.outcomes import NEVER, conversion_times

            table, warnings = load_outcomes(outcomes, lead_id_column, skip_bad_rows)
            for w in warnings:
                err.print(f"warning: {w}", markup=False)
            conv = parse_conversion(conversion)  # ever: conversion_times ignores the horizon
            ids = prepared.leads.column("lead_id").combine_chunks()
            y = conversion_times(table, ids, conv) != NEVER
            if not y.any():  # say why, rather than "too few conversions to fit: 0"
                raise UsageError(_no_conversion(table, ids, conv.outcomes, conversion))
        result = fit_scorecard(
            prepared.leads,
            None if y is None else np.asarray(y),
            events=prepared.events if events is not None else None,
            as_of_us=as_of_us,
            target_column=target,
            positive=positive,
            exclude=tuple(exclude or ()),
            time_column=time_column,
            test_fraction=test_fraction,
            seed=seed,
            name=name,
            points_to_double_odds=pdo,
            interactions=interactions,
            max_bins=max_bins,
            progress=say,
        )
    m = result.metrics
    for note in [*result.notes, *m["warnings"]]:
        err.print(f"warning: {note}", markup=False)
    for column, why in m["dropped"].items():
        err.print(f"not used: {column}: {why}", markup=False)
    h, t = m["holdout"], m["train"]

    def fmt(v: float | None, spec: str) -> str:
        return "-" if v is None else format(v, spec)

    err.print(
        f"fitted {m['rules']} rules on {t['leads']:,} leads ({t['conversions']:,} converted; "
        f"ROC AUC {fmt(t['roc_auc'], '.3f')} there)",
        markup=False,
    )
    err.print(
        f"holdout ({h['leads']:,} leads, {h['conversions']:,} converted): ROC AUC "
        f"{fmt(h['roc_auc'], '.3f')}, top-decile lift {fmt(h['top_decile_lift'], '.2f')}, "
        f"calibration error {fmt(h['calibration_error'], '.3f')}",
        markup=False,
    )
    if output is None:
        sys.stdout.write(result.yaml)
    else:
        output.write_text(result.yaml, encoding="utf-8")
        err.print(f"wrote {output}; check it with: leadscore test {output}", markup=False)


def _no_conversion(table: Any, ids: Any, wanted: Any, conversion: str) -> str:
    """Why no lead converted by the outcomes: no outcome names a lead of the file, or none is
    one of the --conversion outcomes."""
    lead_ids = set(ids.to_pylist())
    named = [i for i in table.column("lead_id").to_pylist() if i in lead_ids]
    if not named:
        theirs = next(iter(table.column("lead_id").to_pylist()), None)
        ours = next(iter(lead_ids), None)
        return (
            f"--outcomes: no outcome names a lead of the leads file (outcomes name leads such as "
            f"{theirs!r}, the leads file's ids look like {ours!r}): are the ids the same?"
        )
    kinds = ", ".join(sorted({str(o) for o in table.column("outcome").to_pylist()})[:8])
    return (
        f"--conversion {conversion!r}: no outcome of the leads is one of "
        f"{', '.join(sorted(wanted))} (their outcomes: {kinds})"
    )
