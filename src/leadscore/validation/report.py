"""The validation report: for leads scored at a reference time, what happened next.

:func:`build_report` takes the batch evaluator's table for one model (``lead_id, score, fit,
engagement, grade, band, mql, ...``, one ``rule:<id>`` column per rule) and the outcomes, and
returns a plain dictionary (JSON as is) with every figure next to the counts it comes from.
A figure the data cannot support is ``None`` with a sentence in ``notes`` saying why.

Definitions (docs/validation.md gives them with a worked example):

- the cohort is every scored lead except those that converted at or before the reference time;
- a lead *converted* when its first conversion outcome falls in ``(as_of, as_of + horizon]``;
- deciles: leads sorted by score, highest first (ties by lead id), cut into ten groups of
  ``floor(k * n / 10)`` boundaries; lift = the group's rate / the cohort's rate;
- ROC AUC: the chance that a converted lead outscores one that did not (ties count half);
- a rule *fired* for a lead when it gave it points (its contribution is not zero).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from leadscore.charts import nice_step
from leadscore.engine.timeutil import from_micros, iso_utc
from leadscore.errors import UsageError
from leadscore.scoring import PreparedInputs, score_run
from leadscore.spec.model import FALLBACK_GRADE, Model
from leadscore.validation.outcomes import (
    MICROS_PER_DAY,
    NEVER,
    Conversion,
    check_instant,
    conversion_times,
    created_at,
    created_by,
    created_note,
    created_times,
    leads_counted,
    unknown_leads,
)

__all__ = [
    "build_report",
    "day_quantiles",
    "default_as_of",
    "rate",
    "report_from_inputs",
    "roc_auc",
    "threshold_for_capacity",
    "threshold_for_precision",
]

F64 = npt.NDArray[np.float64]
Bools = npt.NDArray[np.bool_]
NO_BAND = "(no band)"
NO_GRADE = "(no grade)"


def rate(hits: int, total: int) -> float | None:
    """``hits / total``, or ``None`` when there is nothing to divide by."""
    return hits / total if total else None


def _finite(value: float | None) -> float | None:
    """JSON has no infinity: an open bound is ``None``."""
    return value if value is not None and math.isfinite(value) else None


def _cell(leads: int, conversions: int, **extra: Any) -> dict[str, Any]:
    return {**extra, "leads": leads, "conversions": conversions, "rate": rate(conversions, leads)}


def roc_auc(scores: F64, positive: Bools) -> float | None:
    """The area under the ROC curve (Mann-Whitney, ties count half); ``None`` without both
    a positive and a negative."""
    n_pos = int(positive.sum())
    n_neg = int(len(scores) - n_pos)
    if n_pos == 0 or n_neg == 0:
        return None
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    average_rank = ends - (counts - 1) / 2.0  # 1-based mid-rank of each distinct value
    rank_sum = float(average_rank[inverse][positive].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def roc_curve(scores: F64, positive: Bools, points: int = 200) -> list[list[float]]:
    """(false positive rate, true positive rate) at every distinct score, highest first,
    thinned to about ``points`` points; empty without both classes."""
    n_pos = int(positive.sum())
    n_neg = len(scores) - n_pos
    if n_pos == 0 or n_neg == 0:
        return []
    order = np.argsort(-scores, kind="stable")
    s, p = scores[order], positive[order]
    tp = np.cumsum(p)
    fp = np.cumsum(~p)
    last = np.r_[s[1:] != s[:-1], True]  # the last row of each run of equal scores
    fpr, tpr = fp[last] / n_neg, tp[last] / n_pos
    keep = np.unique(np.linspace(0, len(fpr) - 1, min(points, len(fpr))).round().astype(int))
    return [[0.0, 0.0]] + [[float(fpr[i]), float(tpr[i])] for i in keep]


def threshold_for_precision(scores: F64, converted: Bools, target: float) -> dict[str, Any]:
    """The lowest score threshold at which at least ``target`` of the leads at or above it
    converted (so the most conversions at that precision)."""
    out: dict[str, Any] = {"target_precision": target, "threshold": None}
    if len(scores) == 0 or not converted.any():
        out["reason"] = "no conversions in the horizon: no threshold reaches any precision"
        return out
    order = np.argsort(-scores, kind="stable")
    s, c = scores[order], converted[order]
    hits = np.cumsum(c)
    last = np.r_[s[1:] != s[:-1], True]
    counts = np.arange(1, len(s) + 1)[last]
    precision = hits[last] / counts
    ok = np.nonzero(precision >= target - 1e-12)[0]
    if len(ok) == 0:
        best = int(np.argmax(precision))
        out["reason"] = (
            f"no threshold reaches a precision of {target:.0%}; the best is "
            f"{precision[best]:.1%} at {s[last][best]:g} points ({int(counts[best])} leads)"
        )
        return out
    i = int(ok[-1])
    total = int(converted.sum())
    out.update(
        threshold=float(s[last][i]),
        leads=int(counts[i]),
        conversions=int(hits[last][i]),
        precision=float(precision[i]),
        recall=rate(int(hits[last][i]), total),
    )
    return out


def threshold_for_capacity(
    now: F64, before: F64, weeks: float, capacity: float, converted: Bools
) -> dict[str, Any]:
    """The lowest threshold that would have sent sales at most ``capacity`` new MQLs a week.

    A lead is a new MQL at threshold t when its score rose from below t (``before``, ``weeks``
    earlier) to t or more (``now``). The weekly number of such leads rises as t falls, then
    falls again once most leads already stood above t; only thresholds from the busiest one
    up are considered, as lower ones would hand sales every lead that is already above them.
    """
    out: dict[str, Any] = {"capacity_per_week": capacity, "weeks": weeks, "threshold": None}
    if len(now) == 0:
        out["reason"] = "no leads"
        return out
    if not (now > before).any():
        out["reason"] = (
            f"no lead's score rose in the {weeks:g} weeks before the reference time: the data "
            "cannot size a threshold to a capacity"
        )
        return out
    candidates = np.unique(now)[::-1]  # highest first
    top = -np.sort(now)[::-1]
    floor = -np.sort(np.minimum(now, before))[::-1]
    crossed = np.searchsorted(top, -candidates, side="right") - np.searchsorted(
        floor, -candidates, side="right"
    )
    flows = crossed / weeks
    busiest = int(np.argmax(flows))
    fits = np.nonzero(flows[: busiest + 1] <= capacity + 1e-12)[0]
    if not len(fits):
        out["reason"] = (
            f"even the highest score ({candidates[0]:g}) was reached by "
            f"{flows[0]:.1f} leads a week, more than {capacity:g}"
        )
        return out
    i = int(fits[-1])  # the lowest threshold, from the busiest one up, within the capacity
    if i == busiest:
        out["note"] = (
            f"no threshold sends more than {flows[busiest]:.1f} new MQLs a week (at "
            f"{candidates[busiest]:g} points): the capacity is not the limit"
        )
    chosen = float(candidates[i])
    above = now >= chosen
    total = int(converted.sum())
    hits = int(converted[above].sum())
    out.update(
        threshold=chosen,
        mqls_per_week=float(flows[i]),
        leads=int(above.sum()),
        conversions=hits,
        precision=rate(hits, int(above.sum())),
        recall=rate(hits, total),
    )
    return out


def _decile_rows(scores: F64, converted: Bools, ids: Sequence[str]) -> list[dict[str, Any]]:
    n = len(scores)
    if n == 0:
        return []
    order = sorted(range(n), key=lambda i: (-scores[i], ids[i]))
    s = scores[order]
    c = converted[order]
    total = int(c.sum())
    overall = rate(total, n)
    parts = min(10, n)
    rows = []
    seen_leads = seen_conv = 0
    for k in range(parts):
        lo, hi = k * n // parts, (k + 1) * n // parts
        leads, conv = hi - lo, int(c[lo:hi].sum())
        seen_leads += leads
        seen_conv += conv
        r = rate(conv, leads)
        rows.append(
            {
                "decile": k + 1,
                "max_score": float(s[lo]),
                "min_score": float(s[hi - 1]),
                "leads": leads,
                "conversions": conv,
                "rate": r,
                "lift": r / overall if r is not None and overall else None,
                "cumulative_leads": seen_leads,
                "cumulative_conversions": seen_conv,
                "gains": rate(seen_conv, total),
            }
        )
    return rows


def _calibration(scores: F64, converted: Bools, bins: int = 10) -> list[dict[str, Any]]:
    """Observed conversion rate per equal-width score range (round bounds)."""
    if len(scores) == 0:
        return []
    low, high = float(scores.min()), float(scores.max())
    step = nice_step((high - low) / bins if high > low else 1.0)
    start = math.floor(low / step) * step
    which = np.floor((scores - start) / step + 1e-9).astype(np.int64)
    rows = []
    for k in range(int(which.max()) + 1):
        inside = which == k
        leads = int(inside.sum())
        if leads == 0:
            continue
        rows.append(
            _cell(
                leads,
                int(converted[inside].sum()),
                low=round(start + k * step, 10),
                high=round(start + (k + 1) * step, 10),
                mean_score=float(scores[inside].mean()),
            )
        )
    return rows


def _monotone(rows: list[dict[str, Any]]) -> list[str]:
    """Where the conversion rate falls as the score rises (ranges with 30+ leads)."""
    solid = [r for r in rows if r["leads"] >= 30]
    return [
        f"{a['low']:g}-{a['high']:g} converts at {a['rate']:.1%}, "
        f"{b['low']:g}-{b['high']:g} at {b['rate']:.1%}"
        for a, b in itertools.pairwise(solid)
        if b["rate"] < a["rate"]
    ]


def day_quantiles(days: F64) -> dict[str, Any]:
    """How many durations (in days), their median and quartiles (``None`` without any)."""
    if len(days) == 0:
        return {"leads": 0, "median_days": None}
    return {
        "leads": len(days),
        "median_days": float(np.median(days)),
        "p25_days": float(np.percentile(days, 25)),
        "p75_days": float(np.percentile(days, 75)),
    }


def _text_column(table: pa.Table, name: str, missing: str) -> list[str]:
    return [missing if v is None else str(v) for v in table.column(name).to_pylist()]


def build_report(
    model: Model,
    scores: pa.Table,
    outcomes: pa.Table,
    as_of_us: int,
    conversion: Conversion = Conversion(),
    *,
    earlier: pa.Table | None = None,
    earlier_weeks: float = 4.0,
    target_precision: float | None = None,
    capacity_per_week: float | None = None,
    known_leads: pa.Array | None = None,
) -> dict[str, Any]:
    """Every figure of the validation report, as a JSON-ready dictionary.

    ``earlier`` (the same model's scores ``earlier_weeks`` before ``as_of_us``, same lead
    order) lets the report size an MQL threshold to ``capacity_per_week``. ``known_leads``:
    every lead of the input, when ``scores`` holds only some of them (an outcome of the
    others is not one of an unknown lead).
    """
    notes: list[str] = []
    ids_all = scores.column("lead_id").combine_chunks()
    conv_ts = conversion_times(outcomes, ids_all, conversion)
    before = conv_ts <= as_of_us
    keep = ~before
    horizon_end = as_of_us + conversion.horizon_us
    ids = [str(v) for v in np.asarray(ids_all.to_pylist(), dtype=object)[keep]]
    score = scores.column("score").to_numpy(zero_copy_only=False).astype(np.float64)[keep]
    mql = scores.column("mql").to_numpy(zero_copy_only=False).astype(bool)[keep]
    t_conv = conv_ts[keep]
    converted = (t_conv != NEVER) & (t_conv <= horizon_end)
    bands = [v for v, k in zip(_text_column(scores, "band", NO_BAND), keep, strict=True) if k]
    grades = [v for v, k in zip(_text_column(scores, "grade", NO_GRADE), keep, strict=True) if k]
    n, total = len(ids), int(converted.sum())
    latest = outcomes.column("ts").cast(pa.int64()).to_numpy().max() if outcomes.num_rows else None

    report: dict[str, Any] = {
        "model": model.name,
        "model_version": model.version,
        "as_of": iso_utc(as_of_us),
        "conversion": {
            "outcomes": list(conversion.outcomes),
            "horizon_days": conversion.horizon_days,
        },
        "scored": len(ids_all),
        "converted_before": int(before.sum()),
        "outcomes_for_unknown_leads": unknown_leads(
            outcomes, ids_all if known_leads is None else known_leads
        ),
        **_cell(n, total),
    }
    if int(before.sum()):
        notes.append(
            f"{int(before.sum()):,} leads converted at or before the reference time and are "
            "left out"
        )
    if report["outcomes_for_unknown_leads"]:
        notes.append(
            f"{report['outcomes_for_unknown_leads']:,} outcome rows name leads that are not among "
            "the scored leads"
        )
    if latest is not None and latest < horizon_end:
        days = (horizon_end - latest) / MICROS_PER_DAY
        notes.append(
            f"the latest outcome is {days:.0f} days before the horizon ends: conversions after "
            f"{from_micros(int(latest)).date()} are not known yet, so rates may be understated"
        )
    if n == 0:
        notes.append("no leads to report on")
    elif total == 0:
        notes.append(
            f"no lead converted ({conversion.describe()}): no rate, lift, AUC or precision can "
            "be judged"
        )

    band_order = [name for name, _ in reversed(model.bands)] + [NO_BAND]
    model_grades = [name for name, _ in model.grades]
    grade_order = list(dict.fromkeys([*model_grades, FALLBACK_GRADE, NO_GRADE]))
    b_arr, g_arr = np.asarray(bands, dtype=object), np.asarray(grades, dtype=object)
    lower = dict(model.bands)
    report["bands"] = [
        _cell(int(m.sum()), int(converted[m].sum()), band=b, lower=_finite(lower.get(b)))
        for b in band_order
        if (m := b_arr == b).any() or b in lower
    ]
    report["grades"] = [
        _cell(int(m.sum()), int(converted[m].sum()), grade=g)
        for g in grade_order
        if (m := g_arr == g).any() or g in model_grades
    ]
    report["cells"] = [
        _cell(int(m.sum()), int(converted[m].sum()), grade=g, band=b)
        for g in grade_order
        for b in band_order
        if (m := (g_arr == g) & (b_arr == b)).any()
    ]
    report["deciles"] = _decile_rows(score, converted, ids)
    auc = roc_auc(score, converted)
    report["roc_auc"] = {
        "value": auc,
        "converted": total,
        "not_converted": n - total,
    }
    if auc is None and n:
        report["roc_auc"]["reason"] = "needs both converted and unconverted leads"
    report["roc_curve"] = roc_curve(score, converted)

    mqls = int(mql.sum())
    mql_hits = int(converted[mql].sum())
    report["mql"] = {
        "threshold": model.mql_threshold,
        "mqls": mqls,
        "converted": mql_hits,
        "precision": rate(mql_hits, mqls),
        "recall": rate(mql_hits, total),
    }
    if model.mql_threshold is None:
        report["mql"]["reason"] = "the model sets no MQL threshold"
    days = (t_conv[mql & converted] - as_of_us) / MICROS_PER_DAY
    report["time_to_conversion"] = {
        "mql": day_quantiles(days.astype(np.float64)),
        "all": day_quantiles(((t_conv[converted] - as_of_us) / MICROS_PER_DAY).astype(np.float64)),
    }
    report["calibration"] = _calibration(score, converted)
    falls = _monotone(report["calibration"])
    report["calibration_falls"] = falls
    if falls:
        notes.append("the conversion rate falls as the score rises: " + "; ".join(falls))

    rules = []
    group_of = {r.id: g.id for g in model.groups for r in g.rules}
    for r in model.rules:
        column = f"rule:{r.id}"
        if column not in scores.column_names:
            continue
        points = scores.column(column).to_numpy(zero_copy_only=False).astype(np.float64)[keep]
        fired = np.abs(points) > 1e-12
        f_n, f_c = int(fired.sum()), int(converted[fired].sum())
        o_n, o_c = n - f_n, total - f_c
        f_rate, o_rate = rate(f_c, f_n), rate(o_c, o_n)
        rules.append(
            {
                "rule": r.id,
                "group": group_of.get(r.id),
                "fired": f_n,
                "fired_conversions": f_c,
                "fired_rate": f_rate,
                "not_fired": o_n,
                "not_fired_conversions": o_c,
                "not_fired_rate": o_rate,
                "lift": f_rate / o_rate if f_rate is not None and o_rate else None,
                "mean_points": float(points[fired].mean()) if f_n else None,
                "total_points": float(points.sum()),
            }
        )
    report["rules"] = rules
    if n:
        every = [str(r["rule"]) for r in rules if r["fired"] == n]
        never = [str(r["rule"]) for r in rules if r["fired"] == 0]
        if every:
            notes.append(
                "rules that gave points to every lead (no other leads to compare with): "
                + ", ".join(every)
            )
        if never:
            notes.append("rules that gave points to no lead: " + ", ".join(never))

    suggestions: dict[str, Any] = {}
    if target_precision is not None:
        suggestions["precision"] = threshold_for_precision(score, converted, target_precision)
    if capacity_per_week is not None:
        if earlier is None:
            suggestions["capacity"] = {
                "capacity_per_week": capacity_per_week,
                "threshold": None,
                "reason": "needs the scores of an earlier date",
            }
        else:
            prior = earlier.column("score").to_numpy(zero_copy_only=False).astype(np.float64)
            suggestions["capacity"] = threshold_for_capacity(
                score, prior[keep], earlier_weeks, capacity_per_week, converted
            )
    report["suggested_threshold"] = suggestions
    report["notes"] = notes
    return report


def report_from_inputs(
    model: Model,
    prepared: PreparedInputs,
    outcomes: pa.Table,
    as_of_us: int,
    conversion: Conversion = Conversion(),
    *,
    target_precision: float | None = None,
    capacity_per_week: float | None = None,
    earlier_weeks: float = 4.0,
    created_column: str | None = None,
) -> dict[str, Any]:
    """Score ``prepared`` with the batch evaluator as of ``as_of_us`` (and ``earlier_weeks``
    before, to size a threshold to a capacity) and build the report. With ``created_column``
    (a time column of the leads), only the leads created by ``as_of_us`` are judged: a lead
    created later did not exist to be scored then."""
    check_instant(as_of_us, "the reference time")
    if target_precision is not None and not 0 < target_precision <= 1:
        raise UsageError(f"the target precision is a share above 0, at most 1: {target_precision}")
    if capacity_per_week is not None and not 0 < capacity_per_week < math.inf:
        raise UsageError(f"the capacity is a number of MQLs a week above 0: {capacity_per_week}")
    run = score_run(model, prepared, from_micros(as_of_us))
    scores = run.table
    notes: list[str] = []
    if created_column is not None:
        created, unread = created_times(prepared.leads, created_column)
        scores = created_by(scores, prepared.leads, created, as_of_us)
        later = run.table.num_rows - scores.num_rows - unread
        if later:
            are, they = ("is", "it") if later == 1 else ("are", "they")
            notes.append(
                f"{leads_counted(later)} created after the reference time {are} left out "
                f"({they} did not exist to be scored then)"
            )
        notes += created_note(unread, created_column)
    earlier = None
    if capacity_per_week is not None:
        before_us = as_of_us - int(earlier_weeks * 7 * MICROS_PER_DAY)
        check_instant(before_us, f"the reference time minus {earlier_weeks:g} weeks")
        earlier = score_run(model, prepared, from_micros(before_us)).table
        if created_column is not None:
            # the same leads as ``scores``, in the same order; one created since was below
            # every threshold then (it did not exist)
            earlier = created_by(earlier, prepared.leads, created, as_of_us)
            born = created_at(earlier, prepared.leads, created)
            score = earlier.column("score").to_numpy(zero_copy_only=False).astype(np.float64)
            prior = pa.array(np.where(born > before_us, -math.inf, score))
            earlier = earlier.set_column(earlier.schema.get_field_index("score"), "score", prior)
    report = build_report(
        model,
        scores,
        outcomes,
        as_of_us,
        conversion,
        earlier=earlier,
        earlier_weeks=earlier_weeks,
        target_precision=target_precision,
        capacity_per_week=capacity_per_week,
        known_leads=None if created_column is None else run.table["lead_id"].combine_chunks(),
    )
    report["notes"] = run.warnings + notes + report["notes"]
    return report


def default_as_of(
    outcomes: pa.Table, conversion: Conversion, events: pa.Table | None = None
) -> int | None:
    """The latest reference time whose whole horizon the outcomes cover (the latest outcome's
    time minus the horizon), but not after the latest event; ``None`` without outcomes."""
    if outcomes.num_rows == 0:
        return None
    latest = int(pc.max(outcomes.column("ts").cast(pa.int64())).as_py())
    when = latest - conversion.horizon_us
    if events is not None and events.num_rows:
        last_event = int(pc.max(events.column("ts").cast(pa.int64())).as_py())
        when = min(when, last_event)
    return check_instant(when, "the latest outcome minus the horizon")
