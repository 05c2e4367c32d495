"""Scoring many leads: inputs in, one row per lead out, for one or several score sheets.

This is the layer that reads files (through :mod:`leadscore.inputs`) and hands the prepared
tables to the batch evaluator on an in-process DuckDB; the evaluators themselves do no I/O.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeAlias

import ibis
import ibis.expr.types as ir
import pyarrow as pa
import pyarrow.compute as pc

from leadscore.engine.batch import BatchPlan, event_column, lead_column, plan_for
from leadscore.engine.lead import Event, score_lead
from leadscore.engine.result import ScoreResult
from leadscore.engine.timeutil import from_micros, now_micros, typed_instant
from leadscore.errors import UsageError
from leadscore.inputs import LoadReport, normalize_events, normalize_leads
from leadscore.spec.conditions import NUMBER_PATTERN, WHITESPACE
from leadscore.spec.model import ActivityRule, InactivityRule, Model, ProfileRule

__all__ = [
    "PreparedInputs",
    "ScoreRun",
    "explain_lead",
    "iter_lead_events",
    "prepare",
    "register_inputs",
    "score_leads",
    "score_run",
]

Source: TypeAlias = "str | Path | pa.Table"


@dataclass
class PreparedInputs:
    """Leads and events read and normalized once, ready for either evaluator."""

    leads: pa.Table
    events: pa.Table
    report: LoadReport = field(default_factory=LoadReport)


@dataclass
class ScoreRun:
    """The result of :func:`score_run`: the table plus what the run noticed."""

    table: pa.Table
    as_of: datetime
    warnings: list[str]
    sheets: list[str]


def prepare(
    leads: Source,
    events: Source | None = None,
    *,
    lead_id_column: str = "lead_id",
    skip_bad_rows: bool = False,
) -> PreparedInputs:
    """Read and check the inputs (see :mod:`leadscore.inputs`)."""
    report = LoadReport()
    lead_table = normalize_leads(leads, lead_id_column, skip_bad_rows=skip_bad_rows, report=report)
    if events is None:
        event_table = pa.table(
            {
                "lead_id": pa.array([], pa.string()),
                "type": pa.array([], pa.string()),
                "ts": pa.array([], pa.timestamp("us", tz="UTC")),
                "item": pa.array([], pa.string()),
            }
        )
    else:
        event_table = normalize_events(
            events, lead_id_column, skip_bad_rows=skip_bad_rows, report=report
        )
    return PreparedInputs(lead_table, event_table, report)


def _as_of_micros(as_of: datetime | str | None) -> int:
    if as_of is None:
        return now_micros()
    return given_instant(as_of, "--as-of")


def given_instant(value: datetime | str, option: str) -> int:
    """An instant a person gave (``--as-of``, ``--from``...), as
    :func:`~leadscore.engine.timeutil.typed_instant` reads it; UsageError naming ``option``."""
    try:
        return typed_instant(value)
    except ValueError as exc:
        raise UsageError(f"{option}: {exc}") from None


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def register_inputs(con: Any, prepared: PreparedInputs, plans: Sequence[BatchPlan]) -> None:
    """Views named ``leads`` and ``events`` with the columns every plan reads, as text
    (named by :func:`~leadscore.engine.batch.lead_column` and ``event_column``)."""
    raw = con.con
    # registered with positional column names: DuckDB would read `region` as `Region`
    leads, events = (_positional(t) for t in (prepared.leads, prepared.events))
    raw.register("_leadscore_leads", leads)
    raw.register("_leadscore_events", events)
    lead_cols = _positions(prepared.leads)
    event_cols = _positions(prepared.events)
    lead_fields = dict.fromkeys(f for p in plans for f in p.lead_fields)
    event_fields = dict.fromkeys(f for p in plans for f in p.event_fields)
    lead_sel = [f"{lead_cols['lead_id']} AS lead_id"] + [
        f"{lead_cols.get(f, 'CAST(NULL AS VARCHAR)')} AS {_quote(lead_column(f))}"
        for f in lead_fields
    ]
    event_sel = [
        f"{event_cols['lead_id']} AS lead_id",
        f"{event_cols['type']} AS type",
        f"epoch_us({event_cols['ts']}) AS ts_us",
        f"{event_cols['item']} AS item",
    ] + [
        f"{event_cols.get(f, 'CAST(NULL AS VARCHAR)')} AS {_quote(event_column(f))}"
        for f in event_fields
    ]
    raw.execute(
        f"CREATE OR REPLACE VIEW leads AS SELECT {', '.join(lead_sel)} FROM _leadscore_leads"
    )
    raw.execute(
        f"CREATE OR REPLACE VIEW events AS SELECT {', '.join(event_sel)} FROM _leadscore_events"
    )


def _positional(table: pa.Table) -> pa.Table:
    return table.rename_columns([f"c{i}" for i in range(table.num_columns)])


def _positions(table: pa.Table) -> dict[str, str]:
    """Each column's positional name (the first of equal names, as a lookup by name reads)."""
    found: dict[str, str] = {}
    for i, name in enumerate(table.column_names):
        found.setdefault(name, f"c{i}")
    return found


def score_run(
    models: Model | Sequence[Model],
    prepared: PreparedInputs,
    as_of: datetime | str | None = None,
) -> ScoreRun:
    """Score prepared inputs with the batch evaluator; several models = several sheets.

    With one model the columns are ``lead_id, score, fit, engagement, grade, band, mql,
    priority, group:<id>..., rule:<id>...``; with several, every column but ``lead_id`` is
    prefixed with the sheet (model) name: ``<sheet>.score``.
    """
    model_list = [models] if isinstance(models, Model) else list(models)
    if not model_list:
        raise UsageError("no model to score with")
    t_us = _as_of_micros(as_of)
    plans = [plan_for(m) for m in model_list]
    con = ibis.duckdb.connect()
    try:
        register_inputs(con, prepared, plans)
        warnings = list(prepared.report.warnings)
        tables = []
        for plan in plans:
            tables.append(plan.execute(con, t_us))
        warnings += _event_notes(con, model_list, prepared.report)
    finally:
        con.disconnect()
    warnings += numeric_warnings(model_list, prepared, t_us)
    table = _sheets(model_list, [_in_input_order(t, prepared.leads) for t in tables])
    return ScoreRun(table, from_micros(t_us), warnings, [m.name for m in model_list])


def _not_numbers(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """True where a value is present but not a number (the same test as the evaluators')."""
    trimmed = pc.utf8_trim(column.cast(pa.string()), WHITESPACE)
    present = pc.not_equal(trimmed, "")
    number = pc.match_substring_regex(trimmed, f"^{NUMBER_PATTERN}$")
    return pc.and_(present, pc.invert(number)).fill_null(False)


def numeric_warnings(models: Sequence[Model], prepared: PreparedInputs, t_us: int) -> list[str]:
    """Values that numeric operators (gt, between, ...) read but that are not numbers.

    The spec makes such a test false, never an error; this names the file, column and the
    first rows so the data can be fixed.
    """
    lead_fields: dict[str, list[str]] = {}
    event_fields: dict[str, tuple[list[str], set[str]]] = {}
    for m in models:
        for r in m.rules:
            if isinstance(r, ProfileRule):
                for f in r.numeric_fields:
                    lead_fields.setdefault(f, []).append(r.id)
            elif isinstance(r, ActivityRule):
                for f in r.numeric_fields:
                    ids, types = event_fields.setdefault(f, ([], set()))
                    ids.append(r.id)
                    types.update(r.events)
    out: list[str] = []
    report = prepared.report
    leads = prepared.leads
    for f, rule_ids in lead_fields.items():
        if f in leads.column_names:
            out += _describe(
                _not_numbers(leads.column(f)), leads.column(f), f, rule_ids, report, "leads"
            )
    events = prepared.events
    if event_fields:
        visible = pc.less_equal(pc.cast(events.column("ts"), pa.int64()), t_us)
    for f, (rule_ids, types) in event_fields.items():
        if f in events.column_names:
            looked_at = pc.and_(visible, pc.is_in(events.column("type"), pa.array(sorted(types))))
            bad = pc.and_(_not_numbers(events.column(f)), looked_at)
            out += _describe(bad, events.column(f), f, rule_ids, report, "events")
    return out


def _describe(
    bad: pa.ChunkedArray,
    values: pa.ChunkedArray,
    field: str,
    rule_ids: list[str],
    report: LoadReport,
    label: str,
) -> list[str]:
    if not pc.any(bad).as_py():
        return []
    rows = pc.indices_nonzero(bad).to_pylist()
    name = report.name(label)
    shown = ", ".join(f"{report.where(label, i)} ({values[i].as_py()!r})" for i in rows[:5])
    more = f" and {len(rows) - 5} more" if len(rows) > 5 else ""
    rules = ", ".join(dict.fromkeys(rule_ids))
    return [
        f"{name}: column {field!r}: {len(rows)} value(s) are not numbers, so the numeric test "
        f"of rule(s) {rules} was false for them: {shown}{more}"
    ]


def _event_notes(con: Any, models: Sequence[Model], report: LoadReport) -> list[str]:
    notes = []
    known = sorted({t for m in models for t in m.event_types})
    raw = con.con
    rows = raw.execute(
        "SELECT type, count(*) FROM events WHERE NOT list_contains(?, type) "
        "GROUP BY type ORDER BY 2 DESC",
        [known],
    ).fetchall()
    any_type_counts = any(
        isinstance(r, InactivityRule) and r.events is None for m in models for r in m.rules
    )
    if rows and not any_type_counts:
        listed = ", ".join(f"{t} ({n})" for t, n in rows[:8])
        name = report.name("events")
        notes.append(f"{name}: column 'type': types no rule uses were ignored: {listed}")
    orphans = raw.execute(
        "SELECT count(*) FROM events e ANTI JOIN leads l USING (lead_id)"
    ).fetchall()[0][0]
    if orphans:
        name = report.name("events")
        notes.append(f"{name}: {orphans} event(s) belong to leads not in the leads input")
    return notes


def _in_input_order(result: pa.Table, leads: pa.Table) -> pa.Table:
    position = pc.index_in(result.column("lead_id"), value_set=leads.column("lead_id"))
    return result.take(pc.sort_indices(position))


def _score_ibis(
    models: Sequence[Model], leads: ir.Table, events: ir.Table | None, t_us: int
) -> pa.Table:
    if events is None:
        events = ibis.memtable(
            {"lead_id": [], "type": [], "ts": [], "item": []},
            schema={
                "lead_id": "string",
                "type": "string",
                "ts": "timestamp('UTC')",
                "item": "string",
            },
        )
    tables = []
    for model in models:
        plan = plan_for(model)
        result = plan.bind(leads, events).to_pyarrow(params={plan.as_of: t_us})
        tables.append(result.sort_by("lead_id"))
    return _sheets(models, tables)


def _sheets(models: Sequence[Model], tables: Sequence[pa.Table]) -> pa.Table:
    """One table: as is for one sheet, columns prefixed with the sheet name for several."""
    if len(models) == 1:
        return tables[0]
    joined = tables[0].select(["lead_id"])
    for model, t in zip(models, tables, strict=True):
        for name in t.column_names[1:]:
            joined = joined.append_column(f"{model.name}.{name}", t.column(name))
    return joined


def score_leads(
    models: Model | Sequence[Model],
    leads: Source | ir.Table,
    events: Source | ir.Table | None = None,
    as_of: datetime | str | None = None,
    *,
    lead_id_column: str = "lead_id",
    skip_bad_rows: bool = False,
) -> pa.Table:
    """Score every lead with the batch evaluator; one row per lead, as an Arrow table.

    ``leads`` and ``events`` are Arrow tables, CSV/Parquet/JSON-lines files, or Ibis tables
    (then the plan runs on their backend, results ordered by lead id). Leads without events
    are scored too. See :func:`score_run` for the columns and for the run's warnings.
    """
    if isinstance(leads, ir.Table):
        model_list = [models] if isinstance(models, Model) else list(models)
        if events is not None and not isinstance(events, ir.Table):
            raise UsageError("with Ibis leads, events must be an Ibis table too")
        return _score_ibis(model_list, leads, events, _as_of_micros(as_of))
    if isinstance(events, ir.Table):
        raise UsageError("with Ibis events, leads must be an Ibis table too")
    prepared = prepare(leads, events, lead_id_column=lead_id_column, skip_bad_rows=skip_bad_rows)
    return score_run(models, prepared, as_of).table


def iter_lead_events(prepared: PreparedInputs) -> Iterator[tuple[dict[str, Any], list[Event]]]:
    """Each lead's fields and events, for the per-lead evaluator (events grouped in one pass).

    The events are taken in lead order first (a stable sort: a lead's events keep their input
    order), so that each lead's :class:`Event` objects are built one after the other, as the
    store builds them when it reads a lead back: scattered across memory, they cost the
    evaluator a cache miss each.
    """
    events = prepared.events
    if events.num_rows > 1:
        events = events.take(pc.sort_indices(events, [("lead_id", "ascending")]))
    extra = [c for c in events.column_names if c not in ("lead_id", "ts")]
    by_lead: dict[str, list[Event]] = {}
    ids = events.column("lead_id").to_pylist()
    types = events.column("type").to_pylist()
    stamps = pc.cast(events.column("ts"), pa.int64()).to_pylist()
    items = events.column("item").to_pylist()
    event_ids = events.column("event_id").to_pylist() if "event_id" in events.column_names else None
    extra_values = {c: events.column(c).to_pylist() for c in extra}
    for i, lid in enumerate(ids):
        fields = {c: extra_values[c][i] for c in extra}
        by_lead.setdefault(lid, []).append(
            Event(types[i], stamps[i], items[i], event_ids[i] if event_ids else None, fields)
        )
    for lead in prepared.leads.to_pylist():
        yield lead, by_lead.get(lead["lead_id"], [])


def explain_lead(
    model: Model, prepared: PreparedInputs, lead_id: str, as_of: datetime | str | None = None
) -> ScoreResult:
    """The per-lead evaluator's full explanation for one lead of prepared inputs."""
    t_us = _as_of_micros(as_of)
    ids = prepared.leads.column("lead_id")
    mask = pc.equal(ids, lead_id)
    rows = prepared.leads.filter(mask).to_pylist()
    if not rows:
        raise UsageError(f"lead {lead_id!r} is not in the leads input")
    ev_table = prepared.events.filter(pc.equal(prepared.events.column("lead_id"), lead_id))
    sub = PreparedInputs(prepared.leads.filter(mask), ev_table)
    ((lead, events),) = list(iter_lead_events(sub))
    return score_lead(model, lead, events, from_micros(t_us))
