"""Backtests: replay history at cut-offs and see which leads a model would have handed to
sales, when, and whether they converted (one model, or two side by side).

Definitions (docs/validation.md has them with an example):

- cut-offs ``c0 < c1 < ... < cK`` every ``every`` from ``start`` up to ``end``; at each, every
  lead is scored by the batch evaluator with only the events known then (``ts <= c``);
- leads whose first conversion was at or before ``c0`` are left out; a lead MQL at ``c0`` is
  *MQL at the start* and not counted as a new MQL of any step;
- a lead becomes a *new MQL* in step k (``c(k-1)`` to ``ck``) when it is MQL at ``ck`` for the
  first time and had not converted by ``c(k-1)``; it *converted* when its first conversion is
  at most ``horizon`` after ``ck``;
- a conversion in the window (``c0`` to ``cK``) was *caught* when the lead became MQL at the
  cut-off at or after it or earlier, else *missed*;
- speed: days from the lead's first event (its first touch) to the cut-off at which it became
  MQL (so measured to the step: at most ``every`` later than the true moment).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ibis
import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from leadscore.engine.batch import plan_for
from leadscore.engine.timeutil import from_micros, iso_utc
from leadscore.errors import UsageError
from leadscore.scoring import PreparedInputs, register_inputs
from leadscore.spec.model import Model
from leadscore.validation.outcomes import (
    MICROS_PER_DAY,
    NEVER,
    Conversion,
    check_instant,
    conversion_times,
    created_note,
    created_times,
    leads_counted,
)
from leadscore.validation.report import day_quantiles, rate

__all__ = ["MAX_CUTOFFS", "cutoffs", "run_backtest"]

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
Progress = Callable[[str, int, int], None]
MAX_CUTOFFS = 1000


def cutoffs(start_us: int, end_us: int, every_us: int) -> list[int]:
    """``start, start + every, ...`` up to ``end`` (at least two of them)."""
    if every_us <= 0:
        raise UsageError("--every must be longer than zero")
    check_instant(start_us, "the first cut-off")
    check_instant(end_us, "the last cut-off")
    if end_us <= start_us:
        raise UsageError(f"--to ({iso_utc(end_us)}) must be after --from ({iso_utc(start_us)})")
    count = (end_us - start_us) // every_us + 1
    if count < 2:
        raise UsageError("--from and --to are less than one step (--every) apart")
    if count > MAX_CUTOFFS:
        raise UsageError(f"{count} cut-offs: at most {MAX_CUTOFFS}; choose a longer --every")
    return [start_us + k * every_us for k in range(count)]


def _first_touch(prepared: PreparedInputs, lead_ids: pa.Array) -> I64:
    """Each lead's first event time, or :data:`NEVER` without events."""
    out = np.full(len(lead_ids), NEVER, dtype=np.int64)
    events = prepared.events
    if events.num_rows == 0:
        return out
    first = (
        pa.table({"lead_id": events.column("lead_id"), "ts": events.column("ts").cast(pa.int64())})
        .group_by("lead_id")
        .aggregate([("ts", "min")])
    )
    where = pc.index_in(lead_ids, value_set=first.column("lead_id").combine_chunks())
    found = pc.is_valid(where).to_numpy(zero_copy_only=False)
    idx = where.fill_null(0).to_numpy(zero_copy_only=False)
    out[found] = first.column("ts_min").to_numpy()[idx[found]]
    return out


def _summary(
    model: Model,
    first_mql: I64,
    cuts: list[int],
    conv: I64,
    touch: I64,
    left_out: npt.NDArray[np.bool_],
    conversion: Conversion,
    known_until: int | None,
) -> dict[str, Any]:
    horizon = conversion.horizon_us
    periods: list[dict[str, Any]] = []
    for k in range(1, len(cuts)):
        new = first_mql == k
        hits = new & (conv <= cuts[k] + horizon)
        in_step = ~left_out & (conv > cuts[k - 1]) & (conv <= cuts[k])
        caught = in_step & (first_mql >= 0)
        periods.append(
            {
                "cutoff": iso_utc(cuts[k]),
                "new_mqls": int(new.sum()),
                "converted": int(hits.sum()),
                "rate": rate(int(hits.sum()), int(new.sum())),
                "horizon_complete": known_until is not None and cuts[k] + horizon <= known_until,
                "conversions": int(in_step.sum()),
                "caught": int(caught.sum()),
                "missed": int(in_step.sum() - caught.sum()),
            }
        )
    new_any = first_mql >= 1
    hits_any = new_any & (
        conv <= np.asarray(cuts, dtype=np.int64)[np.maximum(first_mql, 0)] + horizon
    )
    window = ~left_out & (conv > cuts[0]) & (conv <= cuts[-1])
    caught = window & (first_mql >= 0)
    mql_cut = np.asarray(cuts, dtype=np.int64)[np.maximum(first_mql, 0)]
    touched = new_any & (touch != NEVER) & (touch <= mql_cut)
    speed = ((mql_cut[touched] - touch[touched]) / MICROS_PER_DAY).astype(np.float64)
    weeks = (cuts[-1] - cuts[0]) / (7 * MICROS_PER_DAY)
    complete = [p for p in periods if p["horizon_complete"]]
    return {
        "model": model.name,
        "model_version": model.version,
        "mql_threshold": model.mql_threshold,
        "mql_at_start": int((first_mql == 0).sum()),
        "new_mqls": int(new_any.sum()),
        "mqls_per_week": int(new_any.sum()) / weeks if weeks else None,
        "converted": int(hits_any.sum()),
        "rate": rate(int(hits_any.sum()), int(new_any.sum())),
        "rate_complete_periods": rate(
            sum(p["converted"] for p in complete), sum(p["new_mqls"] for p in complete)
        ),
        "conversions": int(window.sum()),
        "caught": int(caught.sum()),
        "missed": int(window.sum() - caught.sum()),
        "missed_share": rate(int(window.sum() - caught.sum()), int(window.sum())),
        "speed": day_quantiles(speed),
        "periods": periods,
    }


def run_backtest(
    models: Sequence[Model],
    prepared: PreparedInputs,
    outcomes: pa.Table,
    start_us: int,
    end_us: int,
    every_us: int,
    conversion: Conversion = Conversion(),
    *,
    progress: Progress | None = None,
    created_column: str | None = None,
    first_touch: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """Replay ``prepared`` at every cut-off for each model (at most two); a dictionary with one
    summary per model (``models``), each with its ``periods``, JSON as is. With
    ``created_column`` (a time column of the leads), a lead takes part in the cut-offs from its
    creation on: one created later cannot have been an MQL before. ``first_touch`` gives each
    lead's first event of any type where ``prepared`` holds only the types the models read
    (the store's export)."""
    if not 1 <= len(models) <= 2:
        raise UsageError("a backtest compares one model or two (champion and challenger)")
    cuts = cutoffs(start_us, end_us, every_us)
    lead_ids = prepared.leads.column("lead_id").combine_chunks()
    n = len(lead_ids)
    conv = conversion_times(outcomes, lead_ids, conversion)
    left_out = conv <= cuts[0]
    if first_touch is None:
        touch = _first_touch(prepared, lead_ids)
    else:
        touch = np.array(
            [first_touch.get(lid, NEVER) for lid in lead_ids.to_pylist()], dtype=np.int64
        )
    created = np.full(n, np.iinfo(np.int64).min, dtype=np.int64)
    unread = 0
    if created_column is not None:
        created, unread = created_times(prepared.leads, created_column)
    # created after the last cut-off, or at no readable time: in no cut-off's population,
    # their conversions neither caught nor missed
    absent = created > cuts[-1]
    known_until = (
        int(pc.max(outcomes.column("ts").cast(pa.int64())).as_py()) if outcomes.num_rows else None
    )
    plans = [plan_for(m) for m in models]
    con = ibis.duckdb.connect()
    firsts = [np.full(n, -1, dtype=np.int64) for _ in plans]
    steps = len(plans) * len(cuts)
    done = 0
    try:
        register_inputs(con, prepared, plans)
        for k, cut in enumerate(cuts):
            eligible = (conv > (cuts[k - 1] if k else cuts[0])) & (created <= cut)
            for plan, first in zip(plans, firsts, strict=True):
                table = plan.execute(con, cut, columns=("lead_id", "mql"))
                where = pc.index_in(table.column("lead_id"), value_set=lead_ids)
                rows = where.to_numpy(zero_copy_only=False)
                mql = np.zeros(n, dtype=bool)
                mql[rows] = table.column("mql").to_numpy(zero_copy_only=False).astype(bool)
                new = mql & (first < 0) & eligible
                first[new] = k
                done += 1
                if progress is not None:
                    progress("backtest cut-offs", done, steps)
    finally:
        con.disconnect()
    notes: list[str] = []
    if int(left_out.sum()):
        early = int(left_out.sum())
        notes.append(
            f"{leads_counted(early)} converted before the first cut-off and "
            f"{'is' if early == 1 else 'are'} left out"
        )
    if created_column is not None:
        later = int((absent & (created != NEVER)).sum())
        if later:
            notes.append(
                f"{leads_counted(later)} {'was' if later == 1 else 'were'} created after the "
                f"last cut-off and take{'s' if later == 1 else ''} no part"
            )
        notes += created_note(unread, created_column)
    if known_until is None:
        notes.append("no outcomes: conversion rates cannot be judged")
    elif cuts[-1] + conversion.horizon_us > known_until:
        notes.append(
            "the outcomes end on "
            f"{from_micros(known_until).date()}: periods whose horizon runs past that are "
            "marked incomplete, their rates may be understated"
        )
    summaries = [
        _summary(m, first, cuts, conv, touch, left_out | absent, conversion, known_until)
        for m, first in zip(models, firsts, strict=True)
    ]
    if not any(s["conversions"] for s in summaries):
        notes.append("no lead converted between the first and last cut-off")
    return {
        "from": iso_utc(cuts[0]),
        "to": iso_utc(cuts[-1]),
        "every_days": every_us / MICROS_PER_DAY,
        "cutoffs": len(cuts),
        "leads": n - int(absent.sum()),
        "left_out": int(left_out.sum()),
        "conversion": {
            "outcomes": list(conversion.outcomes),
            "horizon_days": conversion.horizon_days,
        },
        "models": summaries,
        "notes": notes,
    }
