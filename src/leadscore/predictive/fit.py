"""From leads and a target to a fitted model file and honest holdout figures."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from leadscore.engine.timeutil import MICROS_PER_DAY, from_micros, parse_instant
from leadscore.errors import UsageError
from leadscore.predictive.binning import eq_key
from leadscore.predictive.reading import missing_markers, read_target, reading_notes
from leadscore.predictive.scorecard import (
    TREND,
    ActivityColumns,
    ActivitySource,
    ScorecardClassifier,
    activity_column,
    scorecard_yaml,
)
from leadscore.spec import parse_model
from leadscore.spec.conditions import (
    WHITESPACE,
    FieldCondition,
    compile_condition,
    fold,
    parse_number,
)
from leadscore.spec.schema import ID_PATTERN
from leadscore.validation.report import roc_auc

__all__ = [
    "FitResult",
    "expected_calibration_error",
    "fit_scorecard",
    "shift_notes",
    "top_decile_lift",
]

Bools = npt.NDArray[np.bool_]
F64 = npt.NDArray[np.float64]
EXAMPLE_AS_OF = "2026-01-01T00:00:00Z"
ID_RE = re.compile(ID_PATTERN)


@dataclass
class FitResult:
    yaml: str
    card: ScorecardClassifier
    metrics: dict[str, Any]
    notes: list[str] = field(default_factory=list)


def top_decile_lift(scores: F64, positive: Bools) -> float | None:
    """The conversion rate of the top 10% of scores over the overall rate. Leads tied at the
    cut count in part (each the share of the places left for them), so the figure does not
    depend on the order of the rows: a scorecard gives many leads the same score."""
    n = len(scores)
    if n < 10 or not positive.any():
        return None
    k = max(1, n // 10)
    cut = float(np.sort(scores)[::-1][k - 1])
    above = scores > cut
    at = scores == cut
    share = (k - int(above.sum())) / int(at.sum())
    converted = float(positive[above].sum()) + share * float(positive[at].sum())
    return (converted / k) / float(positive.mean())


def expected_calibration_error(p: F64, positive: Bools, bins: int = 10) -> float | None:
    """Mean |predicted - observed| over ten groups of the predictions of about equal size,
    weighted by their size. Equal predictions stay in one group (a group may be larger), so
    the figure does not depend on the order of the rows."""
    n = len(p)
    if n == 0:
        return None
    values, starts = np.unique(np.sort(p), return_index=True)
    order = np.argsort(p, kind="stable")
    ends = [*starts[1:], n]
    total = 0.0
    first = 0  # the group under way starts here (in sorted order)
    for i, end in enumerate(ends):
        # close the group once it reaches the next tenth, or at the last value
        if end >= (np.floor(first * bins / n) + 1) * n / bins or i == len(values) - 1:
            part = order[first:end]
            total += len(part) / n * abs(float(p[part].mean()) - float(positive[part].mean()))
            first = end
    return total


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}" if n == 1 else f"{n:,} {noun}s"


def _order_key(value: Any) -> float:
    """A time (ISO 8601, or epoch seconds as the evaluators read them), else a number; a value
    that is neither sorts first, into the training part."""
    if value is None or str(value).strip() == "":
        return -np.inf
    try:
        return float(parse_instant(str(value).strip()))
    except ValueError:
        number = parse_number(str(value))
        return number if number is not None else -np.inf


ACTIVITY_WINDOWS = (7, 30, 90)  # days: counts per event type over each
WHERE_WINDOW = 30  # days: counts of the events of a type with a common field value
MAX_WHERE = 6  # field values (or path prefixes) per event type, the most widespread first
EXAMPLE_EVENTS = 40  # an example lead with more events than this is not picked


@dataclass
class EventLog:
    """The events that activity columns counted (the longest window before the as-of time),
    for the examples: how many of some types each lead has, and one lead's events."""

    types: npt.NDArray[Any]
    ages: F64
    lead_index: npt.NDArray[np.int64]  # row of the lead in the leads, -1 for none
    fields: dict[str, pa.Array]  # those the conditions name
    leads: int = 0

    def keep_rows(self, rows: npt.NDArray[np.int64]) -> None:
        """Keep the leads in ``rows`` (of the leads as they were), numbered anew in that
        order; the others' events belong to no lead."""
        renumber = np.full(self.leads + 1, -1, dtype=np.int64)  # the last entry: no lead
        renumber[rows] = np.arange(len(rows))
        self.lead_index = renumber[self.lead_index]
        self.leads = len(rows)

    def counts(self, types: set[str]) -> npt.NDArray[np.int64]:
        mask = np.isin(self.types, sorted(types)) & (self.lead_index >= 0)
        return np.bincount(self.lead_index[mask], minlength=self.leads)

    def of(self, row: int, types: set[str]) -> list[dict[str, Any]]:
        """The events of the lead in row ``row`` as an example lists them."""
        out = []
        for i in np.nonzero((self.lead_index == row) & np.isin(self.types, sorted(types)))[0]:
            extra = {k: v[int(i)].as_py() for k, v in self.fields.items()}
            event = {"type": str(self.types[i]), "days_ago": float(self.ages[i])}
            out.append({**event, **{k: v for k, v in extra.items() if v is not None}})
        return out


def _where_key(text: str, paths: bool) -> str | None:
    """What a field value is grouped by: a path's first segment (``/pricing`` of
    ``/Pricing/enterprise?x=1``), else the value as ``eq`` compares it."""
    if not paths:
        return eq_key(text.strip(WHITESPACE))
    folded = fold(text.strip(WHITESPACE))
    if not folded.startswith("/"):
        return None
    head = re.split(r"[/?#]", folded[1:], maxsplit=1)[0].strip(WHITESPACE)
    return "/" + head if head else None


def _where_groups(
    of_type: Bools,
    fields: dict[str, pa.Array],
    lead_index: npt.NDArray[np.int64],
    min_leads: int,
) -> list[tuple[dict[str, Any], Bools]]:
    """The conditions on an event field that pick out a part of one type's events (``of_type``:
    those in the window) held by at least ``min_leads`` leads (and not nearly all of the type's
    events): a value (``eq``, values that compare equal taken together), or, for a field of
    paths such as URLs, the first segment as a prefix (``starts_with: /pricing``). The values
    are grouped in one pass; the chosen conditions are then evaluated as the evaluators do, on
    the distinct values, so that the counts are the rules' counts."""
    found: list[tuple[int, dict[str, Any], Bools]] = []
    total = int(of_type.sum())
    rows = np.nonzero(of_type)[0]
    owners = lead_index[rows]
    for name, column in fields.items():
        encoded = pc.dictionary_encode(column.filter(pa.array(of_type)))
        distinct = [str(v) for v in encoded.dictionary.to_pylist()]
        codes = np.asarray(encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False))
        if not distinct or len(distinct) > max(100, total // 2):
            continue  # empty, or an identifier
        paths = 2 * sum(fold(v.strip(WHITESPACE)).startswith("/") for v in distinct) >= len(
            distinct
        )
        keys: dict[str, int] = {}
        shown: dict[int, str] = {}
        key_of = np.full(len(distinct) + 1, -1, dtype=np.int64)  # the last entry: no value
        for i, v in enumerate(distinct):
            key = _where_key(v, paths) if v.strip(WHITESPACE) else None
            if key is not None:
                k = keys.setdefault(key, len(keys))
                key_of[i] = k
                shown.setdefault(k, key if paths else v.strip(WHITESPACE))
        event_key = key_of[codes]
        ok = (event_key >= 0) & (owners >= 0)
        if not ok.any():
            continue
        stride = int(owners.max()) + 1
        pairs = np.unique(event_key[ok] * stride + owners[ok])
        leads = np.bincount(pairs // stride, minlength=len(keys))
        share = np.bincount(event_key[event_key >= 0], minlength=len(keys)) / total
        ranked = [k for k in np.argsort(-leads, kind="stable") if leads[k] >= min_leads]
        for k in [k for k in ranked if share[k] < 0.9][:MAX_WHERE]:
            op = "starts_with" if paths else "eq"
            cond = {"field": name, op: shown[int(k)]}
            test = compile_condition(FieldCondition.model_validate(cond))
            hit = np.array([test({name: v}) for v in distinct] + [False])
            picked = hit[codes]  # -1 (no value) takes the last entry, False
            if picked.sum() >= 0.9 * total:
                continue
            mask = np.zeros(len(of_type), dtype=bool)
            mask[rows[picked]] = True
            found.append((int(np.unique(owners[picked & (owners >= 0)]).size), cond, mask))
    found.sort(key=lambda t: -t[0])
    return [(cond, mask) for _, cond, mask in found[:MAX_WHERE]]


def activity_features(
    events: pa.Table, lead_ids: list[str], as_of_us: int, min_leads: int, taken: set[str]
) -> tuple[dict[str, list[str]], ActivityColumns, EventLog]:
    """Per event type that at least ``min_leads`` leads have in the longest window: each
    lead's count of them in every window, whether they rise (the trend rule of
    :data:`TREND`), and the count over 30 days of those with the commonest values of the
    type's fields (:func:`_where_groups`); as text columns named by :func:`activity_column`. Also
    each lead's events of those types in the longest window, with the fields the conditions
    name."""
    longest = max(ACTIVITY_WINDOWS)
    ts = np.asarray(events.column("ts").cast(pa.int64()).to_numpy(), dtype=np.int64)
    age_all = (as_of_us - ts) / MICROS_PER_DAY
    keep = (ts <= as_of_us) & (age_all < longest)
    kept = events.filter(pa.array(keep))
    age = age_all[keep]
    types = np.asarray(kept.column("type").to_pylist(), dtype=object)
    index = {lead: i for i, lead in enumerate(lead_ids)}
    lead_index = np.array(  # int64 also when no event is left (as_of before them all)
        [index.get(x, -1) for x in kept.column("lead_id").to_pylist()], dtype=np.int64
    )
    known = lead_index >= 0
    n = len(lead_ids)
    fields = {
        name: kept.column(name).combine_chunks()
        for name in kept.column_names
        if name not in ("lead_id", "type", "ts")
    }

    def per_lead(mask: Bools) -> npt.NDArray[np.int64]:
        return np.bincount(lead_index[mask & known], minlength=n)

    columns: dict[str, list[str]] = {}
    sources: ActivityColumns = {}

    def add(source: ActivitySource, values: npt.NDArray[np.int64]) -> None:
        name = activity_column(source, taken | columns.keys())
        columns[name] = [str(int(c)) for c in values]
        sources[name] = source

    named: set[str] = set()
    chosen: list[str] = []
    for t in sorted(set(types)):
        of_type = types == t
        if np.unique(lead_index[of_type & known]).size < min_leads:
            continue
        chosen.append(t)
        for w in ACTIVITY_WINDOWS:
            add(ActivitySource(t, w), per_lead(of_type & (age < w)))
        recent = per_lead(of_type & (age < TREND["recent_days"]))
        until = TREND["recent_days"] + TREND["baseline_days"]
        baseline = per_lead(of_type & (age >= TREND["recent_days"]) & (age < until))
        rising = (recent >= TREND["min_recent"]) & (
            recent * TREND["baseline_days"] >= TREND["ratio"] * baseline * TREND["recent_days"]
        )
        if rising.sum() >= min_leads:
            add(ActivitySource(t, None, None, TREND), rising.astype(np.int64))
        in_window = of_type & (age < WHERE_WINDOW)
        for where, mask in _where_groups(in_window, fields, lead_index, min_leads):
            named.add(where["field"])
            add(ActivitySource(t, WHERE_WINDOW, where), per_lead(mask))
    named_fields = {name: fields[name] for name in sorted(named)}
    return columns, sources, EventLog(types, age, lead_index, named_fields, n)


def shift_notes(
    card: ScorecardClassifier,
    train: dict[str, list[Any]],
    test: dict[str, list[Any]],
    y_train: Bools,
    y_test: Bools,
) -> list[str]:
    """What differs between the fitting part and the holdout beyond chance: the conversion
    rate, and numeric columns whose holdout values lie outside what the fit saw (``test`` as
    the leads hold it: :meth:`ScorecardClassifier.as_read` reads its numbers as the fit did)."""
    notes = []
    test = card.as_read(test)
    a, b = float(y_train.mean()), float(y_test.mean()) if len(y_test) else 0.0
    pooled = (y_train.sum() + y_test.sum()) / (len(y_train) + len(y_test))
    se = math.sqrt(pooled * (1 - pooled) * (1 / len(y_train) + 1 / max(1, len(y_test))))
    if len(y_test) and se > 0 and abs(a - b) / se >= 4 and max(a, b) >= 1.5 * min(a, b):
        notes.append(
            f"the holdout converts at {b:.1%} against {a:.1%} in the fitting part: the "
            "conversion rate moved, and the probabilities, fitted on the earlier part, cannot "
            "follow (compare scores with recent outcomes: leadscore report)"
        )
    for f in card.fitted_.features:
        if f.span is None or f.column not in test:
            continue
        read = {t: parse_number(t) for t in {str(v) for v in test[f.column] if v is not None}}
        numbers = [x for v in test[f.column] if v is not None and (x := read[str(v)]) is not None]
        outside = sum(not f.span[0] <= v <= f.span[1] for v in numbers)
        if numbers and outside >= 0.2 * len(numbers):
            notes.append(
                f"{outside / len(numbers):.0%} of the holdout's {f.column!r} values lie outside "
                f"what the fitting part saw ({f.span[0]:g} to {f.span[1]:g}): its outermost "
                "bins stand in for them"
            )
    return notes


def fit_scorecard(
    leads: pa.Table,
    target: Bools | None = None,
    *,
    events: pa.Table | None = None,
    as_of_us: int | None = None,
    target_column: str | None = None,
    positive: str | None = None,
    exclude: tuple[str, ...] = (),
    time_column: str | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    name: str = "fitted",
    points_to_double_odds: float = 10.0,
    interactions: int = 10,
    max_bins: int = 6,
    progress: Callable[[str], None] | None = None,
) -> FitResult:
    """Fit a scorecard on leads (text columns, ``lead_id`` first, as
    :func:`leadscore.inputs.normalize_leads` makes them) and a target (an array, or the
    ``target_column`` with its ``positive`` value); keep ``test_fraction`` apart (the most
    recent by ``time_column``, else a seeded random part) to measure it honestly.
    ``interactions`` is how many pairs of columns may get rules of their own (0: none);
    ``progress`` hears what is being done (for a status line)."""
    say = progress or (lambda _: None)
    columns = leads.to_pydict()
    n = leads.num_rows
    notes: list[str] = []
    unnamed = [c for c in columns if not c.strip(WHITESPACE)]
    if unnamed:  # a spreadsheet's index column (pandas' to_csv): no rule can name it
        for c in unnamed:
            del columns[c]
        notes.append(f"{_count(len(unnamed), 'column')} without a name left out")
    log: EventLog | None = None
    sources: ActivityColumns = {}
    if not ID_RE.fullmatch(name):
        raise UsageError(
            f"--name {name!r}: a model name is letters, digits, '.', '_' and '-', starting with "
            "a letter or digit"
        )
    if events is not None and events.num_rows:
        if as_of_us is None:
            as_of_us = int(pc.max(events.column("ts").cast(pa.int64())).as_py())
        lead_ids = [str(i) for i in columns["lead_id"]]
        say(f"counting {events.num_rows:,} events per lead")
        activity, sources, log = activity_features(events, lead_ids, as_of_us, 30, set(columns))
        columns.update(activity)
        if not activity:
            notes.append("no event type is common enough (30 leads) to fit activity rules")
    if target is None:
        if target_column is None or target_column not in columns:
            known = ", ".join(repr(c) for c in columns)
            raise UsageError(f"--target: no column {target_column!r} (columns: {known})")
        values = columns[target_column]
        markers = missing_markers({str(v).strip(WHITESPACE) for v in values if v is not None})
        blank = [v is None or (t := str(v).strip(WHITESPACE)) == "" or t in markers for v in values]
        if blank and all(blank):
            such = f" or a missing marker such as {sorted(markers)[0]!r}" if markers else ""
            raise UsageError(
                f"--target {target_column!r}: no lead has a value in it (each is blank{such})"
            )
        if any(blank):
            keep = [i for i, b in enumerate(blank) if not b]
            notes.append(
                f"{sum(blank):,} leads have no value in {target_column!r}: left out of the fit"
            )
            columns = {k: [v[i] for i in keep] for k, v in columns.items()}
            n = len(keep)
            if log is not None:  # the log's rows follow the leads kept
                log.keep_rows(np.array(keep, dtype=np.int64))
        y = read_target(columns[target_column], positive, target_column)
        exclude = (*exclude, target_column)
    else:
        y = np.asarray(target, dtype=bool)
    if not 0 < test_fraction < 1:
        raise UsageError("--test-fraction: a share between 0 and 1, such as 0.2")
    missing = [c for c in exclude if c not in columns]
    if missing:
        notes.append("excluded columns that are not in the leads: " + ", ".join(missing))
    if time_column is not None:
        if time_column not in columns:
            raise UsageError(f"--time-column: no column {time_column!r}")
        if time_column == target_column:
            raise UsageError("--time-column: the target cannot also be the time")
        keys = np.array([_order_key(v) for v in columns[time_column]])
        unread = [v for v, k in zip(columns[time_column], keys, strict=True) if k == -np.inf]
        if len(unread) == n:
            shown = next((repr(v) for v in unread if v is not None and str(v).strip()), "blank")
            raise UsageError(
                f"--time-column {time_column!r}: no value reads as a time or a number (such "
                f"as {shown}): give ISO 8601 dates (2023-05-31) or epoch seconds"
            )
        if unread:
            texts = (v for v in unread if v is not None and str(v).strip())
            shown = next((f" (such as {v!r})" for v in texts), "")
            notes.append(
                f"{time_column!r} of {_count(len(unread), 'lead')} could not be read as a time "
                f"or a number{shown}: they count as the oldest, in the fitting part (ISO 8601 "
                "dates and epoch seconds are read)"
            )
        order = np.argsort(keys, kind="stable")
        exclude = (*exclude, time_column)
        split = "the most recent"
    else:
        order = np.random.default_rng(seed).permutation(n)
        split = f"a random (seed {seed})"
    cut = round(n * (1 - test_fraction))
    train_idx, test_idx = np.sort(order[:cut]), np.sort(order[cut:])

    def part(idx: npt.NDArray[np.int64]) -> dict[str, list[Any]]:
        return {k: [v[i] for i in idx] for k, v in columns.items()}

    train, test = part(train_idx), part(test_idx)
    card = ScorecardClassifier(
        exclude=exclude,
        points_to_double_odds=points_to_double_odds,
        activity_columns=sources,
        interactions=interactions,
        max_bins=max_bins,
    )
    card.fit(train, y[train_idx], progress=say)
    if not any(r.points for r in card.fitted_.rules):
        notes.append(
            "every rule rounds to 0 points: raise --points-to-double-odds to see the differences"
        )
    idle = [k for k in card.fitted_.dropped if k in sources]
    if idle:
        notes.append(
            f"{len(idle)} activity column(s) too rare or too uniform for a bin in the fitting "
            f"part, left out: {', '.join(idle[:3])}{', ...' if len(idle) > 3 else ''}"
        )
    notes += reading_notes(leads, card.number_formats, [c for c in columns if c not in exclude])
    notes += shift_notes(card, train, test, y[train_idx], y[test_idx])
    say(f"scoring {n:,} leads with the fitted model (batch evaluator)")
    scores = card.score_rows(columns, events, as_of_us)  # one run of the batch evaluator
    train_scores, test_scores = scores[train_idx], scores[test_idx]
    y_test = y[test_idx]
    fitted_on = (
        f"{len(train_idx):,} leads, {int(y[train_idx].sum()):,} converted; measured on "
        f"{split} {test_fraction:.0%} ({len(test_idx):,} leads)"
    )
    used = sorted({c for r in card.fitted_.rules for c in r.fields})
    test = card.as_read(test)  # the examples' leads hold numbers as the rules read them
    event_types = {r.activity["event"] for r in card.fitted_.rules if r.activity}
    counted = log.counts(event_types)[test_idx] if log is not None else np.zeros(len(test_idx))
    small = counted <= EXAMPLE_EVENTS
    examples = []
    if small.any():
        pool = np.nonzero(small)[0]
        ranked = pool[np.argsort(test_scores[pool], kind="stable")]
        picks = {"highest": ranked[-1], "median": ranked[len(ranked) // 2], "lowest": ranked[0]}
        example_as_of = EXAMPLE_AS_OF if as_of_us is None else from_micros(as_of_us).isoformat()
        for label, i in picks.items():
            lead_id = str(test["lead_id"][i])
            examples.append(
                {
                    "name": f"the {label} score of the holdout ({lead_id})",
                    "as_of": example_as_of.replace("+00:00", "Z"),
                    "lead": {c: test[c][i] for c in used if test[c][i] is not None},
                    "events": [] if log is None else log.of(int(test_idx[i]), event_types),
                    "score": float(test_scores[i]),
                }
            )
    text = scorecard_yaml(
        card, name, train_scores=train_scores, examples=examples, fitted_on=fitted_on
    )
    parse_model(text, source=f"{name}.yaml")  # what is written must load
    p_test = card.probability(test_scores)
    holdout = {
        "leads": len(test_idx),
        "conversions": int(y_test.sum()),
        "roc_auc": roc_auc(test_scores, y_test),
        "top_decile_lift": top_decile_lift(test_scores, y_test),
        "calibration_error": expected_calibration_error(p_test, y_test),
    }
    metrics = {
        "train": {
            "leads": len(train_idx),
            "conversions": int(y[train_idx].sum()),
            "roc_auc": roc_auc(train_scores, y[train_idx]),
        },
        "holdout": holdout,
        "rules": len(card.fitted_.rules),
        "dropped": {k: v for k, v in card.fitted_.dropped.items() if k not in sources},
        "warnings": card.fitted_.warnings,
    }
    rough = _small_holdout(holdout)
    if rough:
        notes.append(rough)
    return FitResult(text, card, metrics, notes)


SMALL_HOLDOUT = 20  # conversions (or leads not converted) under which the figures are rough


def _small_holdout(holdout: dict[str, Any]) -> str | None:
    """A warning when the holdout has too few conversions (or too few leads that did not
    convert) for its figures to say much, with how far its ROC AUC could be off by chance
    (two standard errors, Hanley and McNeil's)."""
    n, won = holdout["leads"], holdout["conversions"]
    if min(won, n - won) >= SMALL_HOLDOUT:
        return None
    auc = holdout["roc_auc"]
    spread = ""
    if auc is not None and 0 < won < n:
        q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
        variance = (
            auc * (1 - auc) + (won - 1) * (q1 - auc * auc) + (n - won - 1) * (q2 - auc * auc)
        ) / (won * (n - won))
        spread = f"; its ROC AUC could be off by {2 * math.sqrt(max(variance, 0)):.2f} by chance"
    which = _count(won, "conversion") if won < n - won else _count(n - won, "lead")
    what = "" if won < n - won else " that did not convert"
    return (
        f"the holdout has only {which}{what} (of {n:,} leads): its figures are rough{spread} "
        "(more history, or a larger --test-fraction, gives firmer ones)"
    )
