"""Turning profile columns into bins a scoring rule can name.

Numeric columns (at least 95% of their values numbers, read as the evaluators read them) are
cut at quantiles, small bins merged into their neighbours, and, where the conversion rate
rises or falls with the value across the bins (Spearman |rho| >= 0.6), adjacent bins that go
against that direction merged until the rates are monotone. Text columns keep each value with
enough support (compared as the evaluators compare: trimmed, case ignored); rarer values fall
together with the bin of the lowest conversion rate, which gets no rule. Missing values (blank,
or a marker such as ``NA`` or ``?``: :mod:`leadscore.predictive.reading`) get a bin of their
own when there are enough of them. Columns of dates and of ids are left out, with the reason.
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass, field
from decimal import ROUND_FLOOR, Decimal
from typing import Any

import numpy as np
import numpy.typing as npt

from leadscore.predictive.reading import (
    NUMERIC_SHARE,
    date_example,
    eq_key,
    id_named,
    missing_markers,
)
from leadscore.spec.conditions import WHITESPACE, fold, parse_number

__all__ = ["Bin", "Feature", "bin_column", "eq_key", "missing_bin"]

Bools = npt.NDArray[np.bool_]
F64 = npt.NDArray[np.float64]
ID_SHARE = 0.9  # distinct values among a column's numbers that make it look like ids


@dataclass
class Bin:
    """One bin of a column: the rows it holds and the condition that selects them."""

    label: str
    condition: dict[str, Any]
    mask: Bools
    rows: int = 0
    conversions: int = 0

    @property
    def rate(self) -> float:
        return self.conversions / self.rows if self.rows else 0.0


@dataclass
class Feature:
    """A column's bins; ``reference`` (the lowest rate) gets no rule (0 points)."""

    column: str
    kind: str  # numeric | text
    bins: list[Bin] = field(default_factory=list)
    reference: int = 0
    monotone: str | None = None  # rising | falling | None
    span: tuple[float, float] | None = None  # a numeric column's lowest and highest value


def _texts(values: list[Any]) -> tuple[list[str | None], list[str], Counter[str]]:
    """Each value trimmed, None where missing (blank, or a missing marker); the markers read
    as missing (as written, the commonest first); the other values' counts."""
    out: list[str | None] = []
    for v in values:
        text = None if v is None else str(v).strip(WHITESPACE)
        out.append(text or None)
    counts = Counter(t for t in out if t is not None)
    markers = missing_markers(counts)
    order = sorted(markers, key=lambda m: (-counts[m], m))
    if markers:
        out = [None if t in markers else t for t in out]
        for m in markers:
            del counts[m]
    return out, order, counts


def missing_bin(column: str, markers: list[str], mask: Bools) -> Bin:
    """The bin of a column's missing values: blank, or one of ``markers`` (as `in` compares
    them: case ignored)."""
    blank: dict[str, Any] = {"field": column, "missing": True}
    folded = list(dict.fromkeys(fold(m) for m in markers))
    if not folded:
        return Bin("missing", blank, mask)
    written = [next(m for m in markers if fold(m) == f) for f in folded]
    label = f"missing ({', '.join(written)})"
    return Bin(label, {"any": [blank, {"field": column, "in": written}]}, mask)


def _fmt(x: float) -> float | int:
    """An edge as written in the model: whole numbers as such, others exactly (a float's
    shortest text reads back as the same float)."""
    return int(x) if float(x).is_integer() and abs(x) < 1e16 else float(x)


def _shortest(low: float, high: float) -> float:
    """The number with the fewest digits in (low, high]: an edge people can read that splits
    the data exactly where ``high`` does when no value lies between ``low`` and ``high``."""
    top = Decimal(repr(float(high)))
    first = -top.adjusted() - 1  # from a step ten times the number's leading digit down
    for places in range(first, first + 19):
        step = Decimal(1).scaleb(-places)
        x = float((top / step).to_integral_value(rounding=ROUND_FLOOR) * step)
        if x > low:
            return x
    return float(high)


def _edges(values: F64, max_bins: int, counts: bool) -> F64:
    """Where to cut a column's values: quantiles, with a value that holds a bin's share of the
    rows on its own (0 in a mostly-zero column) in a bin of its own; each edge moved to the
    shortest number that cuts the values at the same place."""
    values = values[np.isfinite(values)]  # an infinite value has no quantile
    if not values.size:
        return np.array([], dtype=np.float64)
    distinct, freq = np.unique(values, return_counts=True)
    if counts:  # event counts: none apart, then quantiles of the others
        heavy = distinct[:1] if distinct[0] == 0 else distinct[:0]
    else:
        heavy = distinct[freq >= len(values) / max_bins]
    light = values[~np.isin(values, heavy)]
    parts = max(2, max_bins - len(heavy))
    wanted = [np.quantile(light, np.arange(1, parts) / parts)] if light.size else []
    for v in heavy:  # a bin from v up to the next value
        above = distinct[distinct > v]
        wanted.append(np.array([v, *above[:1]]))
    raw = np.unique(np.concatenate([np.array([], dtype=np.float64), *wanted]))
    raw = raw[(raw > distinct[0]) & (raw <= distinct[-1])]
    out = []
    for e in raw:
        at = int(np.searchsorted(distinct, e))  # distinct[at] is the first value >= e
        out.append(_shortest(distinct[at - 1], distinct[at]))
    return np.unique(np.array(out, dtype=np.float64))


def _numeric_bins(
    column: str,
    numbers: F64,
    present: Bools,
    y: Bools,
    max_bins: int,
    min_rows: int,
    counts: bool = False,
) -> tuple[list[Bin], str | None]:
    values = numbers[present]
    edges = _edges(values, max_bins, counts)
    # bins [e(i-1), e(i)): first below e1, last from ek up
    cuts = list(edges)

    def masks(cut_list: list[float]) -> list[Bools]:
        out = []
        bounds = [-np.inf, *cut_list, np.inf]
        for lo, hi in itertools.pairwise(bounds):
            out.append(present & (numbers >= lo) & ((numbers < hi) | (hi == np.inf)))
        return out

    def stats(cut_list: list[float]) -> tuple[list[int], list[float]]:
        ms = masks(cut_list)
        rows = [int(m.sum()) for m in ms]
        rates = [float(y[m].mean()) if r else 0.0 for m, r in zip(ms, rows, strict=True)]
        return rows, rates

    # small bins join the neighbour with the closer rate
    while cuts:
        rows, rates = stats(cuts)
        small = [i for i, r in enumerate(rows) if r < min_rows]
        if not small:
            break
        i = small[0]
        if i == 0:
            cuts.pop(0)
        elif i == len(rows) - 1:
            cuts.pop()
        else:
            left = abs(rates[i] - rates[i - 1])
            right = abs(rates[i] - rates[i + 1])
            cuts.pop(i - 1 if left <= right else i)
    direction: str | None = None
    if len(cuts) >= 2:
        rows, rates = stats(cuts)
        rank = np.argsort(np.argsort(rates)).astype(float)
        order = np.arange(len(rates), dtype=float)
        rho = float(np.corrcoef(order, rank)[0, 1]) if np.std(rank) > 0 else 0.0
        if abs(rho) >= 0.6:
            direction = "rising" if rho > 0 else "falling"
            sign = 1 if rho > 0 else -1
            while cuts:
                rows, rates = stats(cuts)
                bad = [i for i in range(len(rates) - 1) if sign * (rates[i + 1] - rates[i]) < 0]
                if not bad:
                    break
                cuts.pop(bad[0])  # merge bins bad[0] and bad[0] + 1
    bounds = [None, *cuts, None]
    bins = []
    for lo, hi in itertools.pairwise(bounds):
        if lo is None and hi is None:  # one bin: the numbers, not any text
            finite = values[np.isfinite(values)]
            lo = float(finite.min()) if finite.size else -np.inf
            cond: dict[str, Any] = {"field": column, "gte": _fmt(lo)}
            label = f"{_fmt(lo)} or more"
        elif lo is None:
            cond = {"field": column, "lt": _fmt(hi)}
            label = f"below {_fmt(hi)}"
        elif hi is None:
            cond = {"field": column, "gte": _fmt(lo)}
            label = f"{_fmt(lo)} or more"
        else:
            cond = {"all": [{"field": column, "gte": _fmt(lo)}, {"field": column, "lt": _fmt(hi)}]}
            label = f"{_fmt(lo)} to under {_fmt(hi)}"
        low = -np.inf if lo is None else lo
        mask = present & (numbers >= low) & (True if hi is None else numbers < hi)
        bins.append(Bin(label, cond, mask))
    return bins, direction


def bin_column(
    column: str,
    values: list[Any],
    y: Bools,
    *,
    max_bins: int = 6,
    min_rows: int = 30,
    counts: bool = False,
) -> Feature | str:
    """The bins of one column, or why it cannot be used (a sentence). Missing values (blank,
    or a missing marker such as ``NA``) get a bin of their own when ``min_rows`` rows or more
    have one, activity counts (``counts``) aside."""
    texts, markers, counted = _texts(values)
    n = len(texts)
    present = np.array([t is not None for t in texts])
    if present.sum() < min_rows:
        return f"almost always empty ({int(present.sum())} of {n} rows have a value)"
    absent = ~present
    blank = None if counts or absent.sum() < min_rows else missing_bin(column, markers, absent)
    read: dict[str | None, float] = {None: np.nan}
    for t in counted:  # each distinct value read once
        number = parse_number(t)
        read[t] = np.nan if number is None else number
    numbers = np.array([read[t] for t in texts], dtype=np.float64)
    numeric_rows = ~np.isnan(numbers)
    numeric = numeric_rows.sum() >= NUMERIC_SHARE * present.sum() and numeric_rows.sum() >= min_rows
    if not numeric and not counts:
        day = date_example(counted)
        if day is not None:
            return (
                f"holds dates (such as {day!r}): a rule per day would say nothing of new "
                "leads (a date can be the --time-column, to measure on the most recent leads)"
            )
    if numeric and not counts:
        seen = np.unique(numbers[numeric_rows])
        whole = bool(np.all(seen == np.round(seen)))
        many = seen.size >= max(100, ID_SHARE * numeric_rows.sum())
        # ids count up (row numbers) or are named so; amounts are spread out and repeat
        dense = seen.size >= 0.5 * (seen[-1] - seen[0] + 1)
        if whole and many and (dense or id_named(column)):
            return (
                f"looks like an identifier ({seen.size:,} different whole numbers in "
                f"{int(numeric_rows.sum()):,} rows)"
            )
        if whole and id_named(column):
            numeric = False  # ids name things, they do not measure: each its own value
    if numeric:
        if np.unique(numbers[numeric_rows]).size < 2 and blank is None:
            return "has one value only"
        bins, direction = _numeric_bins(
            column, numbers, numeric_rows, y, max_bins, min_rows, counts
        )
        seen = numbers[numeric_rows]
        span = (float(seen.min()), float(seen.max()))
        feature = Feature(column, "numeric", bins, monotone=direction, span=span)
    else:
        # grouped as `eq` compares: numbers as numbers (1 = 01 = 1.0), texts folded
        # (each distinct text read once, in the order of the rows: a value is shown as first
        # written)
        key_of = {t: eq_key(t) for t in counted}
        distinct: dict[str, int] = {}
        shown: dict[str, str] = {}
        for t, count in counted.items():
            distinct[key_of[t]] = distinct.get(key_of[t], 0) + count
            shown.setdefault(key_of[t], t)
        if len(distinct) < (1 if blank is not None else 2):
            return "has one value only"
        if len(distinct) > max(100, 0.5 * n):
            return f"looks like an identifier ({len(distinct):,} different values)"
        position = {k: i for i, k in enumerate(distinct)}
        codes = np.array([-1 if t is None else position[key_of[t]] for t in texts], dtype=np.int64)
        bins = []
        for k, count in sorted(distinct.items(), key=lambda kv: -kv[1]):
            if count < min_rows:
                continue
            condition = {"field": column, "eq": shown[k]}
            bins.append(Bin(f"= {shown[k]}", condition, codes == position[k]))
        if not bins and blank is None:
            return f"no value is common enough (each in fewer than {min_rows} rows)"
        feature = Feature(column, "text", bins)
    if blank is not None:
        feature.bins.append(blank)
    for b in feature.bins:
        b.rows = int(b.mask.sum())
        b.conversions = int(y[b.mask].sum())
    covered = np.zeros(n, dtype=bool)
    for b in feature.bins:
        covered |= b.mask
    rest = ~covered
    # the reference: the lowest rate among the bins and the rows no bin holds
    rates = [b.rate for b in feature.bins]
    feature.reference = int(np.argmin(rates))
    if rest.sum() >= min_rows and float(y[rest].mean()) < min(rates):
        feature.reference = -1  # the rows without a bin are the reference: every bin scores
    if len(feature.bins) == 1 and feature.reference == 0:
        return "its one common value holds almost every row"
    return feature
