"""Commands that compare scores with outcomes: report, backtest, drift."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import pyarrow as pa
import pyarrow.compute as pc
import typer
from rich.table import Table

from leadscore.cli import (
    AsOfOpt,
    EventsOpt,
    IdOpt,
    LeadsOpt,
    SkipOpt,
    _edge,
    _Quiet,
    app,
    err,
    out,
)
from leadscore.cli.service import Bar
from leadscore.engine.timeutil import iso_utc
from leadscore.errors import UsageError
from leadscore.inputs import LoadReport, normalize_outcomes
from leadscore.scoring import given_instant, prepare
from leadscore.spec import load_model
from leadscore.validation.backtest import run_backtest
from leadscore.validation.drift import drift as drift_report
from leadscore.validation.html import num, pct, render_html
from leadscore.validation.outcomes import parse_conversion, parse_days
from leadscore.validation.report import default_as_of, report_from_inputs

__all__ = ["load_outcomes"]

OutcomesOpt = Annotated[
    Path,
    typer.Option(
        "--outcomes",
        help="Outcomes file (lead_id, outcome, ts, optional amount): CSV, Parquet or JSON lines.",
    ),
]
HorizonOpt = Annotated[
    str,
    typer.Option("--horizon", help="How long after scoring a conversion still counts (90d, 12w)."),
]
ConversionOpt = Annotated[
    str,
    typer.Option("--conversion", help="The outcomes that count as a conversion, comma-separated."),
]
CreatedOpt = Annotated[
    str | None,
    typer.Option(
        "--created-column",
        help="A leads column with each lead's creation time: a lead counts from then on.",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print every figure as JSON.")]
HtmlOpt = Annotated[
    Path | None, typer.Option("--html", help="Also write a self-contained HTML report here.")
]


def _span(days: float) -> str:
    """A step between cut-offs as a person would say it: 7 days, 1 day, 6 hours."""
    if days >= 1 or days == 0:
        return f"{num(days)} day{'s' if days != 1 else ''}"
    hours = days * 24
    if hours >= 1:
        return f"{num(hours)} hour{'s' if hours != 1 else ''}"
    minutes = hours * 60
    return f"{num(minutes)} minute{'s' if minutes != 1 else ''}"


def _table(title: str, columns: list[str], rows: list[list[str]]) -> Table:
    table = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
    for i, c in enumerate(columns):
        if i == 0:
            table.add_column(c, overflow="fold")
        else:
            table.add_column(c, justify="right")
    for row in rows:
        table.add_row(*row)
    return table


def print_report(r: dict[str, Any]) -> None:
    """The report as text tables."""
    conv = r["conversion"]
    out.print(
        f"Validation of {r['model']} (version {r['model_version']}) as of {r['as_of']}: "
        f"{num(r['leads'])} leads, {num(r['conversions'])} converted ({pct(r['rate'], 2)}); "
        f"a conversion is {' or '.join(conv['outcomes'])} within {num(conv['horizon_days'])} days.",
        markup=False,
    )
    for note in r["notes"]:
        out.print(f"note: {note}", markup=False)
    auc = r["roc_auc"]["value"]
    m = r["mql"]
    out.print(
        f"ROC AUC {'-' if auc is None else f'{auc:.3f}'}; at the MQL threshold "
        f"({num(m['threshold'])}): {num(m['mqls'])} MQLs, {num(m['converted'])} converted, "
        f"precision {pct(m['precision'])}, recall {pct(m['recall'])}; median "
        f"{num(r['time_to_conversion']['mql']['median_days'])} days from the reference time "
        "to an MQL's conversion.",
        markup=False,
    )
    out.print()
    cells = ["leads", "conversions", "rate"]
    out.print(
        _table(
            "By band",
            ["band", "from", "leads", "converted", "rate"],
            [[b["band"], num(b["lower"]), *_counts(b, cells)] for b in r["bands"]],
        )
    )
    out.print(
        _table(
            "By grade",
            ["grade", "leads", "converted", "rate"],
            [[g["grade"], *_counts(g, cells)] for g in r["grades"]],
        )
    )
    bands = [b["band"] for b in r["bands"]]
    lookup = {(c["grade"], c["band"]): c for c in r["cells"]}
    out.print(
        _table(
            "Grade x band: rate (converted/leads)",
            ["grade", *bands],
            [
                [g["grade"]]
                + [
                    f"{pct(c['rate'])} ({c['conversions']}/{c['leads']})"
                    if (c := lookup.get((g["grade"], b)))
                    else "-"
                    for b in bands
                ]
                for g in r["grades"]
            ],
        )
    )
    out.print(
        _table(
            "By score decile (1 = highest scores)",
            ["decile", "scores", "leads", "converted", "rate", "lift", "gains"],
            [
                [
                    str(d["decile"]),
                    f"{num(d['min_score'])} to {num(d['max_score'])}",
                    *_counts(d, cells),
                    num(d["lift"], 2),
                    pct(d["gains"]),
                ]
                for d in r["deciles"]
            ],
        )
    )
    out.print(
        _table(
            "Calibration: conversion by score range",
            ["points", "leads", "converted", "rate"],
            [
                [f"{num(c['low'])} to {num(c['high'])}", *_counts(c, cells)]
                for c in r["calibration"]
            ],
        )
    )
    out.print(
        _table(
            "Rules: conversion of the leads each rule gave points to, against the rest",
            ["rule", "group", "fired", "their rate", "others", "lift", "mean points"],
            [
                [
                    x["rule"],
                    x["group"] or "",
                    num(x["fired"]),
                    pct(x["fired_rate"]),
                    pct(x["not_fired_rate"]),
                    num(x["lift"], 2),
                    num(x["mean_points"]),
                ]
                for x in r["rules"]
            ],
        )
    )
    for kind, s in r["suggested_threshold"].items():
        goal = (
            f"a precision of {pct(s['target_precision'], 0)}"
            if kind == "precision"
            else f"at most {num(s['capacity_per_week'])} new MQLs a week"
        )
        if s["threshold"] is None:
            out.print(f"Suggested threshold for {goal}: none: {s['reason']}", markup=False)
            continue
        extra = (
            f"; {num(s['mqls_per_week'])} new MQLs a week over the last {num(s['weeks'])} weeks"
            if "mqls_per_week" in s
            else ""
        )
        out.print(
            f"Suggested threshold for {goal}: {num(s['threshold'], 2)} points "
            f"({num(s['leads'])} leads at or above, {num(s['conversions'])} converted: precision "
            f"{pct(s['precision'])}, recall {pct(s['recall'])}{extra})."
            + (f" {s['note']}." if s.get("note") else ""),
            markup=False,
        )


def _counts(row: dict[str, Any], keys: list[str]) -> list[str]:
    return [num(row[keys[0]]), num(row[keys[1]]), pct(row[keys[2]])]


def load_outcomes(path: Path, lead_id_column: str, skip_bad_rows: bool) -> tuple[Any, list[str]]:
    report = LoadReport()
    table = normalize_outcomes(path, lead_id_column, skip_bad_rows=skip_bad_rows, report=report)
    return table, report.warnings


@app.command()
@_edge
def report(
    model: Annotated[Path, typer.Argument(help="The model file.")],
    leads: LeadsOpt,
    outcomes: OutcomesOpt,
    events: EventsOpt = None,
    as_of: AsOfOpt = None,
    horizon: HorizonOpt = "90d",
    conversion: ConversionOpt = "won,opportunity",
    target_precision: Annotated[
        float | None,
        typer.Option(
            "--target-precision",
            min=0.0,
            max=1.0,
            help="Suggest a threshold for this precision (0.3 = 30%).",
        ),
    ] = None,
    capacity: Annotated[
        float | None,
        typer.Option(
            "--capacity", min=0.0, help="Suggest a threshold for at most this many new MQLs a week."
        ),
    ] = None,
    created_column: CreatedOpt = None,
    as_json: JsonOpt = False,
    html: HtmlOpt = None,
    lead_id_column: IdOpt = "lead_id",
    skip_bad_rows: SkipOpt = False,
) -> None:
    """How leads scored at a reference time went on to convert: by band, grade, decile and rule.

    Without --as-of the reference time is the latest outcome's time minus the horizon (the
    latest time whose whole horizon the outcomes cover), or the latest event if that is earlier.
    """
    m = load_model(model)
    conv = parse_conversion(conversion, horizon)
    if html is not None and (html.is_dir() or not html.parent.is_dir()):
        where = "is a directory" if html.is_dir() else f"has no directory {html.parent}"
        raise UsageError(f"--html: {html} {where}")
    with err.status("reading inputs...") if err.is_terminal else _Quiet():
        prepared = prepare(
            leads, events, lead_id_column=lead_id_column, skip_bad_rows=skip_bad_rows
        )
        table, warnings = load_outcomes(outcomes, lead_id_column, skip_bad_rows)
    for w in warnings:
        err.print(f"warning: {w}", markup=False)
    if as_of is not None:
        t_us = given_instant(as_of, "--as-of")
    else:
        found = default_as_of(table, conv, prepared.events)
        if found is None:
            raise UsageError(f"{outcomes}: no outcomes, so no reference time: pass --as-of")
        t_us = found
        err.print(
            f"as of {iso_utc(t_us)} (the latest outcome minus the horizon, or "
            "the latest event if earlier; set it with --as-of)",
            markup=False,
        )
    with err.status("scoring and comparing...") if err.is_terminal else _Quiet():
        result = report_from_inputs(
            m,
            prepared,
            table,
            t_us,
            conv,
            target_precision=target_precision,
            capacity_per_week=capacity,
            created_column=created_column,
        )
    if html is not None:
        try:
            html.write_text(render_html(result), encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"--html: cannot write {html}: {exc.strerror or exc}") from None
        err.print(f"wrote the HTML report to {html}", markup=False)
    if as_json:
        sys.stdout.write(json.dumps(result, indent=1, allow_nan=False) + "\n")
    else:
        print_report(result)


def print_backtest(r: dict[str, Any]) -> None:
    """A backtest as text: a summary per model side by side, then every period."""
    conv = r["conversion"]
    models = r["models"]
    out.print(
        f"Backtest from {r['from']} to {r['to']}: {r['cutoffs']} cut-offs every "
        f"{_span(r['every_days'])}, {num(r['leads'])} leads; a conversion is "
        f"{' or '.join(conv['outcomes'])} within {num(conv['horizon_days'])} days of becoming MQL.",
        markup=False,
    )
    for note in r["notes"]:
        out.print(f"note: {note}", markup=False)
    names = [f"{m['model']} v{m['model_version']}" for m in models]

    def speed(m: dict[str, Any]) -> str:
        s = m["speed"]
        if s["median_days"] is None:
            return "-"
        return f"{num(s['median_days'])} ({num(s['p25_days'])}-{num(s['p75_days'])})"

    rows = [
        ["MQL threshold", *[num(m["mql_threshold"]) for m in models]],
        ["MQL at the start", *[num(m["mql_at_start"]) for m in models]],
        ["new MQLs", *[num(m["new_mqls"]) for m in models]],
        ["new MQLs a week", *[num(m["mqls_per_week"]) for m in models]],
        ["converted in the horizon", *[num(m["converted"]) for m in models]],
        ["MQL to conversion", *[pct(m["rate"]) for m in models]],
        ["  periods with whole horizon", *[pct(m["rate_complete_periods"]) for m in models]],
        ["conversions in the window", *[num(m["conversions"]) for m in models]],
        ["  caught (MQL first)", *[num(m["caught"]) for m in models]],
        [
            "  missed (never MQL)",
            *[f"{num(m['missed'])} ({pct(m['missed_share'])})" for m in models],
        ],
        ["days first touch to MQL", *[speed(m) for m in models]],
    ]
    out.print()
    out.print(_table("Summary", ["", *names], rows))
    columns = ["cut-off"]
    for name in names:
        prefix = f"{name}: " if len(names) > 1 else ""
        columns += [f"{prefix}new MQLs", "converted", "rate", "missed"]
    columns.append("conversions")
    period_rows = []
    for i, p in enumerate(models[0]["periods"]):
        row = [p["cutoff"][:10] + ("" if p["horizon_complete"] else " *")]
        for m in models:
            q = m["periods"][i]
            row += [num(q["new_mqls"]), num(q["converted"]), pct(q["rate"]), num(q["missed"])]
        row.append(num(p["conversions"]))
        period_rows.append(row)
    out.print(
        _table("Per period (* = the horizon runs past the last outcome)", columns, period_rows)
    )


@app.command()
@_edge
def backtest(
    models: Annotated[
        list[Path], typer.Argument(help="One model file, or two: champion and challenger.")
    ],
    leads: LeadsOpt,
    outcomes: OutcomesOpt,
    events: EventsOpt = None,
    start: Annotated[
        str | None,
        typer.Option("--from", help="The first cut-off (ISO 8601). Default: 26 steps before --to."),
    ] = None,
    end: Annotated[
        str | None,
        typer.Option("--to", help="The last cut-off (ISO 8601). Default: the latest event."),
    ] = None,
    every: Annotated[
        str, typer.Option("--every", help="Time between cut-offs (7d, 1w, 12h).")
    ] = "7d",
    horizon: HorizonOpt = "90d",
    conversion: ConversionOpt = "won,opportunity",
    created_column: CreatedOpt = None,
    as_json: JsonOpt = False,
    lead_id_column: IdOpt = "lead_id",
    skip_bad_rows: SkipOpt = False,
) -> None:
    """Replay history: at each cut-off score every lead with the events known then, and see
    which leads became MQL, whether they converted, and which conversions were missed."""
    if not 1 <= len(models) <= 2:
        raise UsageError("give one model, or two (champion and challenger)")
    loaded = [load_model(p) for p in models]
    conv = parse_conversion(conversion, horizon)
    step_us = round(parse_days(every, "--every") * 86_400_000_000)
    with err.status("reading inputs...") if err.is_terminal else _Quiet():
        prepared = prepare(
            leads, events, lead_id_column=lead_id_column, skip_bad_rows=skip_bad_rows
        )
        table, warnings = load_outcomes(outcomes, lead_id_column, skip_bad_rows)
    for w in [*prepared.report.warnings, *warnings]:
        err.print(f"warning: {w}", markup=False)
    if end is not None:
        end_us = given_instant(end, "--to")
    elif prepared.events.num_rows:
        end_us = int(pc.max(prepared.events.column("ts").cast(pa.int64())).as_py())
    else:
        raise UsageError("without events there is no latest event: pass --to")
    start_us = given_instant(start, "--from") if start is not None else end_us - 26 * step_us
    with Bar() as bar:
        result = run_backtest(
            loaded,
            prepared,
            table,
            start_us,
            end_us,
            step_us,
            conv,
            progress=bar,
            created_column=created_column,
        )
    if as_json:
        sys.stdout.write(json.dumps(result, indent=1, allow_nan=False) + "\n")
    else:
        print_backtest(result)


def print_drift(r: dict[str, Any]) -> None:
    """Drift as text: PSI per column, then the score's bins."""
    out.print(
        f"Drift of {r['model']} (version {r['model_version']}) from {r['from']} "
        f"({num(r['baseline_leads'])} leads) to {r['to']} ({num(r['current_leads'])} leads).",
        markup=False,
    )
    for note in r["notes"]:
        out.print(f"note: {note}", markup=False)
    rows = []
    for name, c in r["columns"].items():
        value = c["value"]
        means = (
            f"{num(c['baseline_mean'])} -> {num(c['current_mean'])}" if "baseline_mean" in c else ""
        )
        rows.append(
            [
                name,
                "-" if value is None else f"{value:.3f}",
                c.get("verdict") or c.get("reason", ""),
                means,
            ]
        )
    out.print(
        _table("Population stability index (PSI)", ["column", "PSI", "reading", "mean"], rows)
    )
    bins = r["columns"]["score"]["bins"]

    def edge(low: float | None, high: float | None) -> str:
        if low is None:
            return f"below {num(high, 2)}"
        if high is None:
            return f"{num(low, 2)} and above"
        return f"{num(low, 2)} to {num(high, 2)}"

    out.print(
        _table(
            "Score bins (cut at the baseline's deciles)",
            ["score", "baseline", "current", "PSI part"],
            [
                [
                    edge(b["from"], b["to"]),
                    pct(b["baseline_share"]),
                    pct(b["current_share"]),
                    f"{b['psi']:.4f}",
                ]
                for b in bins
            ],
        )
    )


@app.command()
@_edge
def drift(
    model: Annotated[Path, typer.Argument(help="The model file.")],
    leads: LeadsOpt,
    start: Annotated[str, typer.Option("--from", help="The baseline date (ISO 8601).")],
    end: Annotated[str, typer.Option("--to", help="The date to compare with it (ISO 8601).")],
    events: EventsOpt = None,
    bins: Annotated[
        int, typer.Option("--bins", min=2, max=100, help="Bins of a numeric column.")
    ] = 10,
    created_column: CreatedOpt = None,
    as_json: JsonOpt = False,
    lead_id_column: IdOpt = "lead_id",
    skip_bad_rows: SkipOpt = False,
) -> None:
    """Has the score distribution moved between two dates? PSI per score, group, band, grade."""
    m = load_model(model)
    base_us, current_us = given_instant(start, "--from"), given_instant(end, "--to")
    with err.status("reading inputs...") if err.is_terminal else _Quiet():
        prepared = prepare(
            leads, events, lead_id_column=lead_id_column, skip_bad_rows=skip_bad_rows
        )
    with err.status("scoring at both dates...") if err.is_terminal else _Quiet():
        result = drift_report(
            m, prepared, base_us, current_us, bins=bins, created_column=created_column
        )
    if as_json:
        sys.stdout.write(json.dumps(result, indent=1, allow_nan=False) + "\n")
    else:
        print_drift(result)
