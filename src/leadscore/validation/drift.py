"""Score drift: has the population of scores moved between two dates?

The population stability index (PSI) compares the share of leads in each bin at a baseline
date (``expected``) with the share at a later date (``actual``):

    PSI = sum over bins of (actual - expected) * ln(actual / expected)

Numeric columns (the score, fit, engagement and each group) are cut at the baseline's deciles
(repeated edges merged, so heavy ties make fewer bins); bands and grades are their own bins.
A share of zero counts as 0.0001 so that the logarithm exists. Reading, as is customary:
under 0.1 stable, 0.1 to 0.25 a moderate shift, 0.25 or more a shift worth acting on.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from leadscore.engine.timeutil import from_micros, iso_utc
from leadscore.errors import UsageError
from leadscore.scoring import PreparedInputs, score_run
from leadscore.spec.model import Model
from leadscore.validation.outcomes import (
    check_instant,
    created_by,
    created_note,
    created_times,
)

__all__ = [
    "FLOOR",
    "categorical_psi",
    "drift",
    "drift_between",
    "numeric_psi",
    "verdict",
]

F64 = npt.NDArray[np.float64]
FLOOR = 1e-4


def verdict(value: float) -> str:
    if value < 0.1:
        return "stable"
    if value < 0.25:
        return "moderate shift"
    return "significant shift"


def _psi(expected: F64, actual: F64) -> tuple[float, F64]:
    e = np.maximum(expected, FLOOR)
    a = np.maximum(actual, FLOOR)
    parts = (a - e) * np.log(a / e)
    return float(parts.sum()), parts


def numeric_psi(baseline: F64, current: F64, bins: int = 10) -> dict[str, Any]:
    """PSI of ``current`` against ``baseline``, cut at the baseline's quantiles."""
    if len(baseline) == 0 or len(current) == 0:
        return {"value": None, "reason": "no leads at one of the dates", "bins": []}
    edges = np.unique(np.quantile(baseline, np.arange(1, bins) / bins))
    e_counts = np.bincount(np.searchsorted(edges, baseline, side="right"), minlength=len(edges) + 1)
    a_counts = np.bincount(np.searchsorted(edges, current, side="right"), minlength=len(edges) + 1)
    expected = e_counts / len(baseline)
    actual = a_counts / len(current)
    value, parts = _psi(expected, actual)
    lows = [None, *edges.tolist()]
    highs = [*edges.tolist(), None]
    rows = [
        {
            "from": lows[i],
            "to": highs[i],
            "baseline_leads": int(e_counts[i]),
            "current_leads": int(a_counts[i]),
            "baseline_share": float(expected[i]),
            "current_share": float(actual[i]),
            "psi": float(parts[i]),
        }
        for i in range(len(parts))
    ]
    return {"value": value, "verdict": verdict(value), "bins": rows}


def categorical_psi(baseline: list[str], current: list[str], order: list[str]) -> dict[str, Any]:
    """PSI over categories (bands, grades), listed in ``order`` then any others."""
    if not baseline or not current:
        return {"value": None, "reason": "no leads at one of the dates", "bins": []}
    names = list(dict.fromkeys([*order, *sorted(set(baseline) | set(current))]))
    names = [n for n in names if n in baseline or n in current]
    e_counts = np.array([baseline.count(n) for n in names], dtype=np.float64)
    a_counts = np.array([current.count(n) for n in names], dtype=np.float64)
    value, parts = _psi(e_counts / len(baseline), a_counts / len(current))
    rows = [
        {
            "value": n,
            "baseline_leads": int(e_counts[i]),
            "current_leads": int(a_counts[i]),
            "baseline_share": float(e_counts[i] / len(baseline)),
            "current_share": float(a_counts[i] / len(current)),
            "psi": float(parts[i]),
        }
        for i, n in enumerate(names)
    ]
    return {"value": value, "verdict": verdict(value), "bins": rows}


def _floats(table: pa.Table, column: str) -> F64:
    return np.asarray(table.column(column).to_numpy(zero_copy_only=False), dtype=np.float64)


def _labels(table: pa.Table, column: str) -> list[str]:
    return ["(none)" if v is None else str(v) for v in table.column(column).to_pylist()]


def drift_between(
    model: Model, base: pa.Table, current: pa.Table, bins: int = 10
) -> dict[str, Any]:
    """PSI of every score column of ``current`` against ``base`` (two batch results)."""
    numeric = ["score", "fit", "engagement", *[f"group:{g.id}" for g in model.groups]]
    columns: dict[str, Any] = {}
    for name in numeric:
        b, c = _floats(base, name), _floats(current, name)
        result = numeric_psi(b, c, bins)
        result["baseline_mean"] = float(b.mean()) if len(b) else None
        result["current_mean"] = float(c.mean()) if len(c) else None
        columns[name] = result
    bands = [name for name, _ in reversed(model.bands)]
    columns["band"] = categorical_psi(_labels(base, "band"), _labels(current, "band"), bands)
    grades = [name for name, _ in model.grades]
    columns["grade"] = categorical_psi(_labels(base, "grade"), _labels(current, "grade"), grades)
    return columns


def drift(
    model: Model,
    prepared: PreparedInputs,
    base_us: int,
    current_us: int,
    *,
    bins: int = 10,
    created_column: str | None = None,
) -> dict[str, Any]:
    """Score ``prepared`` at both dates and compare: a JSON-ready dictionary.

    With ``created_column`` (a time column of the leads), a lead belongs to a date's
    population only once it was created; without it every lead belongs to both.
    """
    check_instant(base_us, "the baseline date")
    check_instant(current_us, "the date to compare")
    if current_us <= base_us:
        raise UsageError("--to must be after --from")
    if bins < 2:
        raise UsageError("--bins must be at least 2")
    base = score_run(model, prepared, from_micros(base_us))
    current = score_run(model, prepared, from_micros(current_us))
    notes = list(base.warnings)
    base_t, current_t = base.table, current.table
    if created_column is not None:
        created, unread = created_times(prepared.leads, created_column)
        base_t = created_by(base_t, prepared.leads, created, base_us)
        current_t = created_by(current_t, prepared.leads, created, current_us)
        notes += created_note(unread, created_column)
    columns = drift_between(model, base_t, current_t, bins)
    return {
        "model": model.name,
        "model_version": model.version,
        "from": iso_utc(base_us),
        "to": iso_utc(current_us),
        "baseline_leads": base_t.num_rows,
        "current_leads": current_t.num_rows,
        "columns": columns,
        "notes": notes,
    }
