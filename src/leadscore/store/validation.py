"""Validation over the store: the report and backtests of :mod:`leadscore.validation` run on the
stored leads, events and outcomes (nothing is written).

- :func:`store_report`: the validation report of a sheet's active model;
- :func:`store_backtest`: a draft model replayed at cut-offs next to the active version of its
  sheet (the model editor's champion/challenger check);
- :func:`outcome_counts`: what outcomes the store holds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyarrow as pa
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from leadscore.engine.timeutil import iso_utc
from leadscore.errors import NotFound, UsageError
from leadscore.scoring import PreparedInputs
from leadscore.spec import Model
from leadscore.store.keeper import Sheet, Store, _export
from leadscore.store.schema import events, outcomes
from leadscore.store.versions import ModelVersion
from leadscore.validation.backtest import run_backtest
from leadscore.validation.drift import drift
from leadscore.validation.outcomes import MICROS_PER_DAY, Conversion
from leadscore.validation.report import default_as_of, report_from_inputs

__all__ = ["export_outcomes", "outcome_counts", "store_backtest", "store_report"]

TS = pa.timestamp("us", tz="UTC")


def export_outcomes(conn: Connection) -> pa.Table:
    """Every stored outcome as the table :func:`leadscore.inputs.normalize_outcomes` makes."""
    cols: dict[str, list[Any]] = {"lead_id": [], "outcome": [], "ts": [], "amount": []}
    q = sa.select(outcomes.c.lead_id, outcomes.c.outcome, outcomes.c.ts_us, outcomes.c.amount)
    for lead_id, outcome, ts_us, amount in conn.execute(q):
        cols["lead_id"].append(lead_id)
        cols["outcome"].append(outcome)
        cols["ts"].append(ts_us)
        cols["amount"].append(amount)
    return pa.table(
        {
            "lead_id": pa.array(cols["lead_id"], pa.string()),
            "outcome": pa.array(cols["outcome"], pa.string()),
            "ts": pa.array(cols["ts"], pa.int64()).cast(TS),
            "amount": pa.array(cols["amount"], pa.float64()),
        }
    )


def outcome_counts(conn: Connection) -> list[dict[str, Any]]:
    """Per outcome: how many are stored, and the first and last time."""
    q = (
        sa.select(
            outcomes.c.outcome,
            sa.func.count(),
            sa.func.min(outcomes.c.ts_us),
            sa.func.max(outcomes.c.ts_us),
        )
        .group_by(outcomes.c.outcome)
        .order_by(sa.func.count().desc(), outcomes.c.outcome)
    )
    return [
        {
            "outcome": name,
            "count": int(n),
            "first": iso_utc(int(first)),
            "last": iso_utc(int(last)),
        }
        for name, n, first, last in conn.execute(q)
    ]


def _active(store: Store, conn: Connection, name: str | None) -> Sheet:
    sheets = store.sheets(conn)
    if not sheets:
        raise NotFound("no model is published yet: publish one to validate it")
    if name is None:
        return sheets[0]
    for sheet in sheets:
        if sheet.name == name:
            return sheet
    known = ", ".join(s.name for s in sheets)
    raise NotFound(f"no active sheet {name!r} (active: {known})")


def store_report(
    store: Store,
    sheet: str | None = None,
    as_of_us: int | None = None,
    conversion: Conversion = Conversion(),
    *,
    target_precision: float | None = None,
    capacity_per_week: float | None = None,
    drift_days: float | None = None,
) -> dict[str, Any]:
    """The validation report of a sheet's active model (default: the first sheet) over the
    stored leads, events and outcomes, as of ``as_of_us`` (default: the latest outcome minus
    the horizon, not after the latest event; without outcomes, now minus the horizon).

    With ``drift_days``, ``drift`` holds the population stability index of the scores between
    that many days ago and now (:func:`leadscore.validation.drift.drift`)."""
    with store.db.read() as conn:
        active = _active(store, conn, sheet)
        prepared = PreparedInputs(*_export(conn, [active]))
        stored = export_outcomes(conn)
    if as_of_us is None:
        found = default_as_of(stored, conversion, prepared.events)
        as_of_us = found if found is not None else store.clock() - conversion.horizon_us
    report = report_from_inputs(
        active.model,
        prepared,
        stored,
        as_of_us,
        conversion,
        target_precision=target_precision,
        capacity_per_week=capacity_per_week,
    )
    report["sheet"] = active.name
    report["model_version"] = active.version.version
    if drift_days is not None:
        now = store.clock()
        report["drift"] = drift(
            active.model, prepared, now - round(drift_days * MICROS_PER_DAY), now
        )
        report["drift"]["days"] = drift_days
        report["drift"]["model_version"] = active.version.version  # the stored version
    if stored.num_rows == 0:
        report["notes"].append(
            "no outcomes are stored yet: import them (leadscore import outcomes, POST "
            "/api/v1/outcomes, or the Validation page) or record verdicts on lead pages"
        )
    return report


def store_backtest(
    store: Store,
    draft: Model,
    yaml_text: str,
    start_us: int | None = None,
    end_us: int | None = None,
    every_us: int = 7 * MICROS_PER_DAY,
    conversion: Conversion = Conversion(),
    *,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Replay the stored history at cut-offs for the active version of the draft's sheet (if
    there is one) and the draft, side by side. Default cut-offs: 12 steps up to now."""
    end = store.clock() if end_us is None else end_us
    start = end - 12 * every_us if start_us is None else start_us
    sheet = Sheet(ModelVersion(0, draft.name, 0, yaml_text, "draft", end, None), draft)
    with store.db.read() as conn:
        active = next((s for s in store.sheets(conn) if s.name == draft.name), None)
        sheets = [sheet] if active is None else [active, sheet]
        prepared = PreparedInputs(*_export(conn, sheets))
        stored = export_outcomes(conn)
        # the export holds the event types the models read; a lead's first touch is its
        # first event of any type, as a backtest of files counts it
        touch = dict(
            conn.execute(
                sa.select(events.c.lead_id, sa.func.min(events.c.ts_us)).group_by(events.c.lead_id)
            ).all()
        )
    if prepared.leads.num_rows == 0:
        raise UsageError("the store holds no leads to replay")
    result = run_backtest(
        [s.model for s in sheets],
        prepared,
        stored,
        start,
        end,
        every_us,
        conversion,
        progress=progress,
        first_touch=touch,
    )
    labels = ["draft"]
    if active is not None:
        labels.insert(0, f"active (version {active.version.version})")
    for summary, label, sheet in zip(result["models"], labels, sheets, strict=True):
        summary["label"] = label
        # the stored version (the file's `version` is its format's); a draft has none
        summary["model_version"] = sheet.version.version if sheet.version.id else None
    if active is None:
        result["notes"].append(f"no active version of {draft.name!r}: the draft is shown alone")
    if stored.num_rows == 0:
        result["notes"].append("no outcomes are stored: conversions cannot be judged")
    return result
