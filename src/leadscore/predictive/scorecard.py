"""A scorecard: the points of an ordinary, editable model, fitted to a team's conversions.

:class:`ScorecardClassifier` follows scikit-learn's estimator contract (``fit``,
``predict_proba``, ``get_params``). It bins every usable profile column
(:mod:`leadscore.predictive.binning`), fits an L2-regularised logistic regression on one
indicator per bin (each column's lowest-rate bin is the reference, worth 0), looks for pairs of
profile columns whose leads convert unlike what the two columns' own points say (a score test
on the residuals) and gives the cells that stray most a rule of their own (``all`` of both
bins' conditions), refits, and turns each coefficient into whole points:
``round(coefficient x points_to_double_odds / ln 2)``. The score is the sum of a lead's
points; its chance to convert is
``1 / (1 + 2 ** ((even_odds_score - score) / points_to_double_odds))``, the model file's
``calibration``. Whole points fitted on all the rows promise more than they keep on leads the
fit did not see, so the calibration is fitted apart: its slope (points to double the odds) by
a logistic fit of the outcome on each row's score out of fold (the 5 folds of the
cross-validation, each row scored by the points fitted without it; the bins and pairs are
chosen on all rows), its even-odds score so that the mean chance over the fitting part is the
part's conversion rate (a uniform shrinkage of the points' meaning, then calibration in the
large). Scores out of fold that rank the outcome not at all, or backwards, make a point worth
about nothing (1,000 points to double the odds): every lead then gets about that rate.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
from scipy import optimize, sparse, special, stats
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.model_selection import StratifiedKFold

from leadscore.engine.timeutil import from_micros
from leadscore.errors import UsageError
from leadscore.predictive.binning import Bin, Feature, bin_column
from leadscore.predictive.reading import NumberFormat, number_format, value_counts
from leadscore.scoring import prepare, score_run
from leadscore.spec import Model, parse_model
from leadscore.validation.report import roc_auc

__all__ = [
    "MIN_CONVERSIONS",
    "TREND",
    "ActivityColumns",
    "ActivitySource",
    "Rule",
    "ScorecardClassifier",
    "activity_column",
    "scorecard_yaml",
]

Bools = npt.NDArray[np.bool_]
F64 = npt.NDArray[np.float64]
MIN_CONVERSIONS = 50  # in the part a scorecard is fitted on
LEAKAGE_AUC = 0.85  # a column that ranks the outcome this well on its own is suspect
PAIR_ALPHA = 0.01  # the chance that any pair is taken for one that adds nothing
# Pairs are looked for among this many columns at most, the strongest alone: the search costs
# a pass over the leads per pair, and 200 columns make 19,900 pairs (over an hour on 60,000
# leads, and a cell number per lead kept for each: 9 GB); 20 make 190
PAIR_COLUMNS = 20
CELL_ALPHA = 0.05  # the chance that any cell of the pairs kept is given a rule by chance
C_GRID = (0.03, 0.1, 0.3, 1.0, 3.0)  # the L2 strengths cross-validation chooses from
SOLVER = "newton-cholesky"  # for many more leads than bins: a few exact Newton steps


TREND: dict[str, float | int] = {"recent_days": 7, "baseline_days": 28, "ratio": 2, "min_recent": 2}


@dataclass(frozen=True)
class ActivitySource:
    """What an activity column counts: events of one type (those matching ``where``), over
    the last ``days``; or, with ``trend``, whether they rise (1) or not (0)."""

    event: str
    days: int | None = None
    where: dict[str, Any] | None = None
    trend: dict[str, float | int] | None = None

    @property
    def phrase(self) -> str:
        """``page_view events``, ``page_view events with url starting with /pricing``."""
        if self.where is None:
            return f"{self.event} events"
        name, where = self.where["field"], self.where
        if "starts_with" in where:
            return f"{self.event} events with {name} starting with {where['starts_with']}"
        return f"{self.event} events with {name} = {where['eq']}"

    @property
    def column(self) -> str:
        if self.trend is not None:
            return f"{self.phrase} rising"
        return f"{self.phrase} in {self.days} days"

    @property
    def slug(self) -> str:
        where = "" if self.where is None else "-" + str(list(self.where.values())[-1])
        return f"{self.event}{where}"


ActivityColumns = dict[str, ActivitySource]  # feature column -> what it counts


def activity_column(source: ActivitySource, taken: set[str] | dict[str, Any]) -> str:
    """A readable name for the column of ``source``, not in ``taken``."""
    name = source.column
    while name in taken:
        name += " (events)"
    return name


@dataclass
class Rule:
    """One fitted bin: its rule id, column, condition (or, for an activity column, the
    count rule's ``activity`` keys), points and the data behind them."""

    id: str
    column: str
    label: str
    condition: dict[str, Any]
    points: int
    coefficient: float
    rows: int
    conversions: int
    activity: dict[str, Any] | None = None
    fields: tuple[str, ...] = ()  # the lead fields its condition reads (profile rules)


@dataclass
class _Cell:
    """The leads in bin ``i`` of one column and bin ``j`` of another: a pair's cell whose
    conversions the two columns' own points do not account for."""

    first: Feature
    i: int
    second: Feature
    j: int
    mask: Bools

    @property
    def bins(self) -> tuple[Bin, Bin]:
        return self.first.bins[self.i], self.second.bins[self.j]

    @property
    def condition(self) -> dict[str, Any]:
        parts = [p for b in self.bins for p in b.condition.get("all", [b.condition])]
        return {"all": parts}

    @property
    def words(self) -> tuple[str, str]:
        a, b = self.bins
        return f"{self.first.column} {a.label} and {self.second.column}", b.label


def indicators(masks: list[Bools], n: int) -> Any:
    """One 0/1 column per mask, as a sparse matrix (CSR): a lead is in one bin of a column,
    so a design of 200 columns' bins holds about 200 ones a row in over 1,000 columns."""
    rows = [np.nonzero(m)[0] for m in masks]
    columns = [np.full(len(r), k, dtype=np.int64) for k, r in enumerate(rows)]
    empty = np.array([], dtype=np.int64)
    return sparse.csr_matrix(
        (
            np.ones(sum(len(r) for r in rows)),
            (np.concatenate([empty, *rows]), np.concatenate([empty, *columns])),
        ),
        shape=(n, len(masks)),
    )


def _bin_index(feature: Feature, n: int) -> npt.NDArray[np.int64]:
    out = np.full(n, -1, dtype=np.int64)
    for k, b in enumerate(feature.bins):
        out[b.mask] = k
    return out


@dataclass
class PairTest:
    """The score test of one pair of columns (see :func:`pair_tests`)."""

    first: int  # the columns, as positions in the features
    second: int
    log_chance: float  # ln of the chance of a statistic this large if the pair adds nothing
    dof: int
    z: F64  # each kept cell's own U / sqrt(V)
    kept: npt.NDArray[np.int64]  # the cells tested: first's bin x len(second's bins) + second's
    cell: npt.NDArray[np.int64]  # each lead's cell (-1: none)


def strongest_columns(features: list[Feature], target: Bools, count: int) -> list[int]:
    """The positions of the ``count`` columns whose bins (and the rows in none, together)
    tell converted leads apart best on their own, in their order: the smallest chance of a
    likelihood-ratio (G) statistic as large if the column said nothing."""
    if len(features) <= count:
        return list(range(len(features)))
    n, rate = len(target), float(target.mean())
    chances = []
    for f in features:
        groups = _bin_index(f, n) + 1  # 0: in no bin
        rows = np.bincount(groups, minlength=len(f.bins) + 1).astype(np.float64)
        won = np.bincount(groups, weights=target.astype(np.float64), minlength=len(f.bins) + 1)
        used = rows > 0
        rows, won = rows[used], won[used]
        lost = rows - won
        with np.errstate(divide="ignore", invalid="ignore"):
            g = 2 * float(
                np.nansum(won * np.log(won / (rows * rate)))
                + np.nansum(lost * np.log(lost / (rows * (1 - rate))))
            )
        dof = max(1, int(used.sum()) - 1)
        chances.append(float(stats.chi2.logsf(max(g, 0.0), dof)))
    ranked = np.argsort(chances, kind="stable")[:count]
    return sorted(int(i) for i in ranked)


def pair_tests(
    features: list[Feature],
    design: Any,
    probability: F64,
    target: Bools,
    min_rows: int,
    among: list[int] | None = None,
) -> list[PairTest]:
    """For each pair of columns (of those at the positions ``among``, default all), a score
    test of adding one indicator per cell of the two columns' bins (cells of at least
    ``min_rows`` leads) to the fit without pairs.

    With ``X`` that fit's design with its intercept, ``W = p(1 - p)`` and ``C`` the cells'
    indicators: ``U`` is the cells' sums of ``y - p`` less ``C'WX (X'WX)^+ X'(y - p)`` (what
    the fit's own L2 penalty leaves in its columns), ``V = C'WC - C'WX (X'WX)^+ X'WC`` their
    covariance given the fit's parameters, and ``U' V^+ U`` follows a chi-square with
    ``rank(V)`` degrees of freedom when the pair adds nothing."""
    n = len(target)
    residual = target - probability
    weight = probability * (1 - probability)
    # rows in no bin of a column (missing, rare values) share the reference's 0 in the fit;
    # where they convert otherwise, any pair with that column would show it: their own
    # indicator keeps that out of the test
    rest = [~np.any([b.mask for b in f.bins], axis=0) for f in features if f.reference != -1]
    x1 = sparse.hstack(
        [np.ones((n, 1)), sparse.csr_matrix(design), indicators([r for r in rest if r.any()], n)]
    ).tocsr()  # sparse: the cells' sums of it cost a pass over its ones, not over every entry
    inverse = np.linalg.pinv((x1.T @ x1.multiply(weight[:, None])).toarray())
    step = inverse @ (x1.T @ residual)  # from the penalised fit to where X'(y - p) is 0
    index = [_bin_index(f, n) for f in features]
    out: list[PairTest] = []
    for a, b in itertools.combinations(range(len(features)) if among is None else among, 2):
        width = len(features[b].bins)
        both = (index[a] >= 0) & (index[b] >= 0)
        cell = np.where(both, index[a] * width + index[b], -1)
        size = len(features[a].bins) * width
        rows = np.bincount(cell[both], minlength=size)
        kept = np.nonzero(rows >= min_rows)[0]
        if len(kept) < 2:
            continue
        position = np.full(size + 1, -1, dtype=np.int64)  # the last entry: no cell
        position[kept] = np.arange(len(kept))
        where = position[cell]
        inside = np.nonzero(where >= 0)[0]
        spread = sparse.csr_matrix((weight[inside], (where[inside], inside)), shape=(len(kept), n))
        cross = (spread @ x1).toarray()  # C'WX
        sums = np.bincount(where[inside], weights=residual[inside], minlength=len(kept))
        u = np.asarray(sums, dtype=np.float64) - cross @ step
        w = np.bincount(where[inside], weights=weight[inside], minlength=len(kept))
        v = np.diag(w) - cross @ inverse @ cross.T
        values, vectors = np.linalg.eigh((v + v.T) / 2)
        scale = float(w.max())  # what is left of a cell that the fit's columns already span
        usable = values > 1e-9 * scale  # is rounding noise, not information
        dof = int(usable.sum())
        if dof == 0:
            continue
        statistic = float(np.sum((vectors[:, usable].T @ u) ** 2 / values[usable]))
        own = np.diag(v)
        z = np.where(own > 1e-9 * w, u / np.sqrt(np.maximum(own, 1e-300)), 0.0)
        out.append(PairTest(a, b, float(stats.chi2.logsf(statistic, dof)), dof, z, kept, cell))
    return out


def _interaction_cells(
    features: list[Feature],
    design: Any,
    probability: F64,
    target: Bools,
    *,
    pairs: int,
    min_rows: int,
    alpha: float = PAIR_ALPHA,
    cell_alpha: float = CELL_ALPHA,
    columns: int = PAIR_COLUMNS,
) -> list[_Cell]:
    """Cells of column pairs whose leads convert unlike what the fit without pairs predicts.

    Pairs of the ``columns`` strongest columns alone (:func:`strongest_columns`) are tested.
    A pair qualifies when its :func:`pair_tests` chance is below ``alpha`` divided by the
    number of pairs tested (Bonferroni); the ``pairs`` strongest are kept, and in them each
    cell whose own ``U / sqrt(V)`` is that unlikely by chance, at ``cell_alpha`` over all the
    cells of the kept pairs (Bonferroni again: about 3.8 standard errors for 300 cells), gets a
    rule."""
    among = strongest_columns(features, target, columns)
    tests = pair_tests(features, design, probability, target, min_rows, among)
    bar = math.log(alpha / max(1, len(among) * (len(among) - 1) // 2))
    chosen = sorted((t for t in tests if t.log_chance < bar), key=lambda t: t.log_chance)
    chosen = chosen[:pairs]
    tested = sum(len(t.kept) for t in chosen)
    z_min = float(stats.norm.isf(cell_alpha / (2 * tested))) if tested else math.inf
    cells: list[_Cell] = []
    for t in chosen:
        width = len(features[t.second].bins)
        # the strongest first, no more than the test's degrees of freedom: in a 2 x 2 table
        # all four cells stray alike, and one rule says it
        strongest = np.argsort(-np.abs(t.z), kind="stable")[: t.dof]
        for k in strongest:
            if abs(t.z[k]) >= z_min:
                i, j = divmod(int(t.kept[k]), width)
                mask = t.cell == t.kept[k]
                cells.append(_Cell(features[t.first], i, features[t.second], j, mask))
    return cells


def _cross_validated(
    matrix: Any, target: Bools, factor: float, grid: tuple[float, ...] = C_GRID
) -> tuple[float, F64]:
    """The L2 strength of ``grid`` with the lowest log loss over 5 stratified folds
    (seeded), and each row's score out of fold at that strength: its whole points as the
    folds without it fitted them."""
    folds = list(StratifiedKFold(5, shuffle=True, random_state=0).split(matrix, target))
    rows = sparse.csr_matrix(matrix)  # 0/1 indicators, mostly 0
    losses = np.zeros(len(grid))
    scores = np.zeros((len(grid), len(target)))
    for train, test in folds:
        model = LogisticRegression(solver=SOLVER, max_iter=2000, warm_start=True)
        for k, c in enumerate(grid):  # each strength starts from the previous one's fit
            model.set_params(C=c).fit(rows[train], target[train])
            p = model.predict_proba(rows[test])[:, 1]
            losses[k] += log_loss(target[test], p, labels=[0, 1])
            scores[k, test] = rows[test] @ np.round(model.coef_[0] * factor)
    best = int(np.argmin(losses))
    return float(grid[best]), scores[best]


# The calibration's slope at least this (points to double the odds at most 1,000): out-of-fold
# scores that rank the outcome not at all, or backwards, say a point is worth about nothing,
# and every lead gets about the fitting part's rate.
FLAT_SLOPE = math.log(2) / 1000


def _calibration(oof: F64, scores: F64, target: Bools) -> tuple[float, float]:
    """(even-odds score, points to double the odds) for the final scores: the slope of a
    logistic fit of the outcome on the scores out of fold (how much a score difference is
    worth on leads the fit did not see; at least :data:`FLAT_SLOPE`), then the even-odds score
    that makes the mean chance on the fitting part its conversion rate."""
    slope = FLAT_SLOPE
    if np.ptp(oof) > 0:
        fit = LogisticRegression(C=1e6, solver="lbfgs", max_iter=1000)
        fit.fit(oof.reshape(-1, 1), target)
        found = float(fit.coef_[0][0])
        if math.isfinite(found):
            slope = max(found, FLAT_SLOPE)
    rate = float(target.mean())

    def gap(intercept: float) -> float:
        return float(np.mean(special.expit(intercept + slope * scores))) - rate

    low, high = -1.0, 1.0
    while gap(low) > 0:
        low *= 2
    while gap(high) < 0:
        high *= 2
    intercept = float(optimize.brentq(gap, low, high, xtol=1e-10))
    return -intercept / slope, math.log(2) / slope


def _count_rule(source: ActivitySource, condition: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """A numeric bin of an activity column as a count (or trend) rule's keys, and a label for
    people."""
    keys: dict[str, Any] = {"event": source.event}
    if source.where is not None:
        keys["where"] = source.where
    if source.trend is not None:
        keys["trend"] = source.trend
        t = source.trend
        return keys, (
            f"{source.phrase} rising: at least {t['min_recent']} in the last "
            f"{t['recent_days']} days, at {t['ratio']}x the rate of the {t['baseline_days']} "
            "days before"
        )
    tests: dict[str, int] = {}
    parts = condition.get("all", [condition])
    for part in parts:
        if "gte" in part:
            tests["gte"] = math.ceil(part["gte"])
        if "lt" in part:
            tests["lt"] = math.ceil(part["lt"])
        if part.get("exists"):
            tests["gte"] = 0
    low, high = tests.get("gte"), tests.get("lt")
    if high is not None and low is not None and high == low + 1:
        tests, words = {"eq": low}, f"exactly {low}"
    elif high is not None and low is not None:
        words = f"{low} to {high - 1}"
    elif high is not None:
        words = f"fewer than {high}"
    else:
        words = f"{low} or more"
    keys["window_days"] = int(source.days or 0)
    keys["count"] = tests
    return keys, f"{source.phrase} in {source.days} days: {words}"


@dataclass
class _Fitted:
    features: list[Feature]
    rules: list[Rule]
    intercept: float
    calibration: tuple[float, float]  # (even-odds score, points to double the odds)
    dropped: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    C: float = 1.0
    formats: dict[str, NumberFormat] = field(default_factory=dict)  # numbers read from text


def _auc(scores: F64, positive: Bools) -> float:
    value = roc_auc(scores, positive)
    return 0.5 if value is None else value


# letters that do not decompose into an ASCII letter and an accent
_SPELLED = str.maketrans(
    {
        "ß": "ss",
        "æ": "ae",
        "Æ": "AE",
        "ø": "o",
        "Ø": "O",
        "œ": "oe",
        "Œ": "OE",
        "ł": "l",
        "Ł": "L",
        "đ": "d",
        "Đ": "D",
        "þ": "th",
        "Þ": "TH",
    }
)


def _slug(text: str) -> str:
    """A rule id from text: ASCII letters and digits (accents dropped: Köln -> koln)."""
    spelled = text.translate(_SPELLED)
    ascii_text = unicodedata.normalize("NFKD", spelled).encode("ascii", "ignore").decode()
    out = "".join(c if c.isalnum() else "-" for c in ascii_text.lower()).strip("-")
    while "--" in out:
        out = out.replace("--", "-")
    return out or "x"


class ScorecardClassifier(ClassifierMixin, BaseEstimator):  # type: ignore[misc]
    """Fit integer points for binned profile columns; see the module's docstring.

    ``X`` is a mapping of column name to a list of values (an Arrow table's ``to_pydict()``,
    or a pandas DataFrame); ``y`` is 0/1.
    """

    def __init__(
        self,
        *,
        max_bins: int = 6,
        min_bin_rows: int = 30,
        C: float | None = None,
        points_to_double_odds: float = 10.0,
        exclude: tuple[str, ...] = (),
        min_conversions: int = MIN_CONVERSIONS,
        activity_columns: ActivityColumns | None = None,
        interactions: int = 10,
    ) -> None:
        self.max_bins = max_bins
        self.min_bin_rows = min_bin_rows
        self.C = C
        self.points_to_double_odds = points_to_double_odds
        self.exclude = exclude
        self.min_conversions = min_conversions
        self.activity_columns = activity_columns
        self.interactions = interactions

    @property
    def factor(self) -> float:
        return self.points_to_double_odds / math.log(2)

    def _columns(self, X: Any) -> dict[str, list[Any]]:
        if hasattr(X, "to_dict") and hasattr(X, "columns"):  # pandas
            return {str(c): list(X[c]) for c in X.columns}
        return {str(k): list(v) for k, v in dict(X).items()}

    def as_read(self, X: Any) -> dict[str, list[Any]]:
        """``X``'s columns as the fit read them: the numbers of a column written for people
        (``$1,234.50``, ``12%``: :attr:`number_formats`) written as the evaluators read
        numbers (``1234.5``, ``12``); the other values as they are."""
        columns = self._columns(X)
        formats = self.fitted_.formats if hasattr(self, "fitted_") else {}
        for name, fmt in formats.items():
            if name in columns:
                columns[name] = [fmt.plain(None if v is None else str(v)) for v in columns[name]]
        return columns

    @property
    def number_formats(self) -> dict[str, NumberFormat]:
        """The columns whose values the fit read as numbers written with thousands
        separators, percent or currency signs, and how (see :meth:`as_read`)."""
        return dict(self.fitted_.formats)

    def fit(
        self, X: Any, y: Any, progress: Callable[[str], None] | None = None
    ) -> ScorecardClassifier:
        """Fit on ``X`` and ``y``; ``progress`` hears what is being done (for a status line)."""
        say = progress or (lambda _: None)
        columns = self._columns(X)
        target = np.asarray(y).astype(bool)
        positives = int(target.sum())
        negatives = len(target) - positives
        if min(positives, negatives) < self.min_conversions:
            which = "conversions" if positives < negatives else "non-converted leads"
            raise UsageError(
                f"too few {which} to fit: {min(positives, negatives)} in the fitting part; a "
                f"scorecard needs at least {self.min_conversions} (more history, a longer "
                "horizon or a broader conversion)"
            )
        dropped: dict[str, str] = {}
        warnings: list[str] = []
        features: list[Feature] = []
        formats: dict[str, NumberFormat] = {}
        say(f"binning {len(columns):,} columns")
        for name, values in columns.items():
            if name in self.exclude or name == "lead_id":
                continue
            if name not in (self.activity_columns or {}):
                fmt = number_format(value_counts(values))
                if fmt is not None:  # 1,234.50 or 12%: numbers, for the bins and the rules
                    formats[name] = fmt
                    values = [fmt.plain(None if v is None else str(v)) for v in values]
            got = bin_column(
                name,
                values,
                target,
                max_bins=self.max_bins,
                min_rows=self.min_bin_rows,
                counts=name in (self.activity_columns or {}),
            )
            if isinstance(got, str):
                dropped[name] = got
                formats.pop(name, None)  # no rule reads it
                continue
            source = (self.activity_columns or {}).get(name)
            if source is not None and source.trend is not None:
                got.reference = 0  # a rule can say "rising", not "not rising": 0 is the base
            alone = np.zeros(len(target))
            for b in got.bins:
                alone[b.mask] = b.rate
            auc = _auc(alone, target)
            if max(auc, 1 - auc) >= LEAKAGE_AUC:
                why = (
                    "are these events from before the conversions? Events caused by one "
                    "(onboarding, a customer webinar) leak the answer; count up to an earlier "
                    "--as-of, or exclude the column with --exclude"
                    if source is not None
                    else "is it known before the outcome? A field filled in after contact "
                    "leaks the answer; exclude it with --exclude if so"
                )
                warnings.append(
                    f"column {name!r} ranks the outcome almost on its own (ROC AUC "
                    f"{max(auc, 1 - auc):.3f}): {why}"
                )
            features.append(got)
        if not features:
            why = "; ".join(f"{k}: {v}" for k, v in dropped.items())
            raise UsageError(
                "no column could be used"
                + (f": {why}" if why else ": the leads hold only the id (and the target)")
            )
        scored: list[tuple[Feature, Bin]] = [
            (f, b) for f in features for i, b in enumerate(f.bins) if i != f.reference
        ]
        matrix = indicators([b.mask for _, b in scored], len(target))
        model = LogisticRegression(
            C=1.0 if self.C is None else self.C, solver=SOLVER, max_iter=2000
        )
        model.fit(matrix, target)
        cells: list[_Cell] = []
        profile = [f for f in features if f.column not in (self.activity_columns or {})]
        if self.interactions > 0 and len(profile) >= 2:
            k = min(len(profile), PAIR_COLUMNS)
            say(
                f"testing {k * (k - 1) // 2:,} pairs of columns"
                + (f" (the {k} strongest of {len(profile)})" if k < len(profile) else "")
            )
            cells = _interaction_cells(
                profile,
                matrix,
                model.predict_proba(matrix)[:, 1],
                target,
                pairs=self.interactions,
                min_rows=self.min_bin_rows,
            )
        if cells:
            cell_columns = indicators([c.mask for c in cells], len(target))
            matrix = sparse.hstack([matrix, cell_columns]).tocsr()
        say(
            "choosing the regularisation (5-fold cross-validation)"
            if self.C is None
            else "scoring out of fold for the calibration (5-fold cross-validation)"
        )
        penalty, oof = _cross_validated(
            matrix, target, self.factor, C_GRID if self.C is None else (self.C,)
        )
        if cells or self.C is None:
            model = LogisticRegression(C=penalty, solver=SOLVER, max_iter=2000)
            model.fit(matrix, target)
        coefs = model.coef_[0]
        rules: list[Rule] = []
        used: set[str] = set()

        def unique(rule_id: str) -> str:
            while rule_id in used:
                rule_id += "-b"
            used.add(rule_id)
            return rule_id

        for (feature, b), beta in zip(scored, coefs[: len(scored)], strict=True):
            activity, label = None, b.label
            source = (self.activity_columns or {}).get(feature.column)
            if source is not None:
                activity, label = _count_rule(source, b.condition)
                rule_id = _slug(
                    f"{source.slug}-rising"
                    if source.trend is not None
                    else f"{source.slug}-{source.days}d-"
                    + "-".join(f"{k}-{v}" for k, v in activity["count"].items())
                )
            else:
                rule_id = _slug(f"{feature.column}-{b.label}")
            if activity is not None and round(beta * self.factor) == 0:
                continue  # an activity rule worth nothing would only be read
            rules.append(
                Rule(
                    unique(rule_id),
                    feature.column,
                    label,
                    b.condition,
                    round(beta * self.factor),
                    float(beta),
                    b.rows,
                    b.conversions,
                    activity,
                    () if activity else (feature.column,),
                )
            )
        for cell, beta in zip(cells, coefs[len(scored) :], strict=True):
            if round(beta * self.factor) == 0:
                continue  # a pair rule worth nothing would only be read
            head, tail = cell.words
            rules.append(
                Rule(
                    unique(_slug(f"{head} {tail}")),
                    head,
                    tail,
                    cell.condition,
                    round(beta * self.factor),
                    float(beta),
                    int(cell.mask.sum()),
                    int(target[cell.mask].sum()),
                    None,
                    (cell.first.column, cell.second.column),
                )
            )
        points = np.array([round(float(b) * self.factor) for b in coefs], dtype=np.float64)
        self.fitted_ = _Fitted(
            features,
            rules,
            float(model.intercept_[0]),
            _calibration(oof, np.asarray(matrix @ points), target),
            dropped,
            warnings,
            penalty,
            formats,
        )
        self.classes_ = np.array([0, 1])
        self.n_rows_ = len(target)
        self.n_conversions_ = positives
        return self

    @property
    def even_odds_score(self) -> float:
        """The score at which the odds are 1:1 (a 50% chance)."""
        return round(self.fitted_.calibration[0], 2)

    @property
    def calibration_points(self) -> float:
        """The score difference that doubles the odds of converting (the calibration's; the
        rules' points were made at ``points_to_double_odds``)."""
        return float(f"{self.fitted_.calibration[1]:.4g}")

    def model(self, name: str = "scorecard") -> Model:
        """The fitted points as a model (rules and calibration, no bands or examples)."""
        text = scorecard_yaml(self, name, train_scores=None, examples=[], fitted_on="-")
        return parse_model(text, source=f"{name}.yaml")

    def score_rows(
        self, X: Any, events: pa.Table | None = None, as_of_us: int | None = None
    ) -> F64:
        """Each row's score, by the batch evaluator on the fitted model (with ``events``, as
        :func:`leadscore.inputs.normalize_events` makes them, as of ``as_of_us``, when the
        model has activity rules; their ``lead_id`` is X's). ``X`` is read as the fit read its
        own (:meth:`as_read`): its numbers written as they were."""
        columns = self.as_read(X)
        n = len(next(iter(columns.values()))) if columns else 0
        ids = columns.get("lead_id") or [f"row{i}" for i in range(n)]
        table = pa.table(
            {
                "lead_id": [str(i) for i in ids],
                **{
                    k: [None if v is None else str(v) for v in values]
                    for k, values in columns.items()
                    if k != "lead_id" and k not in (self.activity_columns or {})
                },
            }
        )
        when = "2000-01-01T00:00:00Z" if as_of_us is None else from_micros(as_of_us)
        run = score_run(self.model(), prepare(table, events), when)
        return np.asarray(run.table.column("score").to_numpy(zero_copy_only=False), dtype=float)

    def probability(self, scores: F64) -> F64:
        exponent = (self.even_odds_score - scores) / self.calibration_points
        return 1.0 / (1.0 + np.power(2.0, np.minimum(exponent, 1000.0)))

    def predict_proba(self, X: Any) -> F64:
        p = self.probability(self.score_rows(X))
        return np.column_stack([1 - p, p])

    def predict(self, X: Any) -> npt.NDArray[np.int64]:
        return (self.predict_proba(X)[:, 1] >= 0.5).astype(np.int64)


# YAML refuses these raw (controls, NEL, line and paragraph separators, the BOM): escaped
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ufeff]")


def _yaml_value(value: Any) -> str:
    """A double-quoted YAML scalar (JSON's escapes are YAML's), readable letters kept."""
    text = json.dumps(value, ensure_ascii=False)
    return _UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def _mapping(values: dict[str, Any]) -> str:
    """A flow mapping with every key and text quoted."""
    items = (
        f"{_yaml_value(str(k))}: {_yaml_value(v) if isinstance(v, str) else json.dumps(v)}"
        for k, v in values.items()
    )
    return "{" + ", ".join(items) + "}"


def _comment(text: str) -> str:
    """Text safe inside a ``#`` comment line."""
    return _UNSAFE.sub("?", text)


_PLAIN = re.compile(r"[A-Za-z][A-Za-z0-9 ._/-]*")
_YAML_WORDS = {"true", "false", "yes", "no", "on", "off", "null", "y", "n", "~"}


def _flow(value: Any) -> str:
    """A condition in YAML flow style, as a person would write it: ``{field: age, lt: 31}``;
    a text is quoted only where YAML could read it otherwise."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_flow(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_flow(v) for v in value) + "]"
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, (int, float)):
        return repr(value)
    text = str(value)
    plain = _PLAIN.fullmatch(text) and text.strip() == text and text.lower() not in _YAML_WORDS
    return text if plain else _yaml_value(text)


def _condition_text(cond: dict[str, Any]) -> str:
    return _flow(cond)


def _rising(values: list[float]) -> list[int]:
    """Round thresholds, each above the one before (equal quantiles of tied scores merge)."""
    out: list[int] = []
    for v in values:
        r = round(v)
        if not out or r > out[-1]:
            out.append(r)
    return out


def _thresholds(scores: F64) -> list[str]:
    """Bands, MQL and grades at the training scores' quantiles: starting points to adjust."""
    lines = ["# Starting points, from the training scores: top 10% hot, the next 30% warm."]
    cuts = _rising([float(np.quantile(scores, q)) for q in (0.6, 0.9)])
    names = ["warm", "hot"][-len(cuts) :] if cuts else []
    bands = ", ".join(f"{n}: {c}" for n, c in zip(names, cuts, strict=True))
    lines.append("bands: {cold: -.inf" + (f", {bands}" if bands else "") + "}")
    if names:
        lines.append(f"mql: {names[-1]}")
    grade_cuts = _rising([float(np.quantile(scores, q)) for q in (0.2, 0.4, 0.6, 0.8)])
    letters = ["D", "C", "B", "A"][: len(grade_cuts)]
    pairs = list(zip(letters, grade_cuts, strict=True))[::-1]
    if pairs:
        lines.append("grades: {" + ", ".join(f"{g}: {c}" for g, c in pairs) + "}")
    return lines


def scorecard_yaml(
    card: ScorecardClassifier,
    name: str,
    *,
    train_scores: F64 | None,
    examples: list[dict[str, Any]],
    fitted_on: str,
) -> str:
    """The fitted scorecard as a model file: one profile rule per scored bin, each commented
    with its support and conversion rate; bands, grades and the MQL threshold at the training
    scores' quantiles (starting points to adjust); the calibration; generated examples."""
    f = card.fitted_
    lines = [
        "# Fitted by `leadscore fit` from the team's own conversions: edit it like any model.",
        f"# {fitted_on}",
        f"# Each rule's points are round(coefficient x {card.points_to_double_odds:g} / ln 2)"
        " of an",
        f"# L2-regularised logistic regression (C = {f.C:g}"
        + (", chosen by 5-fold cross-validation)" if card.C is None else ")")
        + " on the bins below;",
        "# a column's lowest-rate bin (and any value too rare for a bin of its own) is worth 0.",
    ]
    if f.dropped:
        lines.append("# Columns not used:")
        lines += [_comment(f"#   {col}: {why}") for col, why in f.dropped.items()]
    if f.formats:
        lines += [
            "# Columns read as numbers written for people: their rules compare numbers, which",
            "# the leads scored must hold written plainly (1234.5, not $1,234.50):",
        ]
        lines += [_comment(f"#   {col}: {fmt.shown}") for col, fmt in f.formats.items()]
    profile = [r for r in f.rules if r.activity is None]
    activity = [r for r in f.rules if r.activity is not None]
    lines += [
        "version: 1",
        f"name: {name}",
        "description: " + _yaml_value(f"scorecard fitted on {fitted_on}"),
        "",
        "groups:",
        "  fit: {kind: profile}",
    ]
    if activity:
        lines.append("  engagement: {kind: activity}")
    lines += ["", "profile:" if profile else "profile: []"]
    for k, rule in enumerate(profile):
        if len(rule.fields) == 2 and (k == 0 or len(profile[k - 1].fields) != 2):
            lines += [
                "  # Pairs: leads with both convert unlike what the two columns' own points",
                "  # say (a score test on what those points leave unexplained).",
            ]
        rate = rule.conversions / rule.rows if rule.rows else 0.0
        lines.append(
            _comment(
                f"  # {rule.column} {rule.label}: {rule.rows:,} leads, {rule.conversions:,} "
                f"converted ({rate:.1%})"
            )
        )
        lines.append(
            f"  - {{id: {rule.id}, if: {_condition_text(rule.condition)}, points: {rule.points}}}"
        )
    if activity:
        lines += ["", "activity:"]
    for rule in activity:
        rate = rule.conversions / rule.rows if rule.rows else 0.0
        keys = rule.activity or {}
        lines.append(
            _comment(
                f"  # {rule.label}: {rule.rows:,} leads, {rule.conversions:,} converted "
                f"({rate:.1%})"
            )
        )
        body = ", ".join(f"{k}: {_flow(v)}" for k, v in keys.items())
        lines.append(f"  - {{id: {rule.id}, {body}, points: {rule.points}}}")
    if train_scores is not None:
        lines += ["", *_thresholds(train_scores)]
    lines += [
        "",
        "# The score as a chance to convert: 1 / (1 + 2 ^ ((even_odds_score - score) /",
        "# points_to_double_odds)); the slope fitted on the scores out of 5-fold",
        "# cross-validation, the even-odds score so that the mean chance on the fitting part",
        "# is its conversion rate.",
        "calibration:",
        f"  points_to_double_odds: {card.calibration_points!r}",
        f"  even_odds_score: {card.even_odds_score!r}",
        "  fitted_on: " + _yaml_value(fitted_on),
    ]
    if examples:
        lines += ["", "examples:"]
    for ex in examples:
        lines.append("  - name: " + _yaml_value(ex["name"]))
        lines.append(f"    as_of: {ex['as_of']}")
        lines.append("    lead: " + _mapping(ex["lead"]))
        if ex.get("events"):
            lines.append("    events:")
            lines += ["      - " + json.dumps(e, ensure_ascii=False) for e in ex["events"]]
        lines.append(f"    expect: {{score: {ex['score']!r}}}")
    return "\n".join(lines) + "\n"
