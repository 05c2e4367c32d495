"""The per-lead evaluator: plain Python over one lead's events, with a full explanation.

It serves real-time rescoring and explanations; the batch evaluator
(:mod:`leadscore.engine.batch`) computes the same numbers in SQL for many leads at once.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from operator import attrgetter
from typing import Any

from leadscore.engine.result import (
    CountedEvent,
    GroupContribution,
    RuleContribution,
    ScoreResult,
    clip,
)
from leadscore.engine.timeutil import (
    MICROS_PER_DAY,
    from_micros,
    now_micros,
    parse_instant,
    to_micros,
)
from leadscore.spec.conditions import WHITESPACE, TextFilter, fold, parse_number, to_text
from leadscore.spec.model import COUNT_WORDS, ActivityRule, InactivityRule, Model, ProfileRule

__all__ = ["Event", "score_lead"]


@dataclass(frozen=True, slots=True)
class Event:
    """One event of a lead. ``fields`` holds every field a ``where`` condition can name
    (``type``, ``item`` and any extra column) as text."""

    type: str
    ts_us: int
    item: str | None = None
    event_id: str | None = None
    fields: Mapping[str, str | None] = field(default_factory=dict)

    @property
    def ts(self) -> datetime:
        return from_micros(self.ts_us)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Event:
        """An event from a dict with ``type``, ``ts`` (datetime, ISO text or epoch) and fields."""
        if "type" not in data or to_text(data["type"]) in (None, ""):
            raise ValueError("an event needs a `type`")
        if "ts" not in data or data["ts"] is None:
            raise ValueError("an event needs a `ts`")
        etype = str(to_text(data["type"])).strip(WHITESPACE)
        item = to_text(data.get("item"))
        fields = {k: to_text(v) for k, v in data.items() if k not in ("ts", "lead_id")}
        fields["type"] = etype
        fields["item"] = item
        event_id = to_text(data.get("event_id"))
        return cls(etype, parse_instant(data["ts"]), item, event_id, fields)


def _item_key(item: str | None) -> str:
    return "" if item is None else item.strip(WHITESPACE)


_TS = attrgetter("ts_us")


def _instant(as_of: datetime | str | None) -> tuple[int, datetime]:
    """The as-of instant in microseconds, and as an aware datetime."""
    if isinstance(as_of, datetime):
        aware = as_of if as_of.tzinfo is not None else as_of.replace(tzinfo=UTC)
        return to_micros(aware), aware
    t_us = now_micros() if as_of is None else parse_instant(as_of)
    return t_us, from_micros(t_us)


def score_lead(
    model: Model,
    lead: Mapping[str, Any],
    events: Iterable[Event | Mapping[str, Any]] = (),
    as_of: datetime | str | None = None,
    *,
    lead_id_column: str = "lead_id",
    explain: bool = True,
) -> ScoreResult:
    """Score one lead, explained point by point (MODEL_SPEC.md, "Arithmetic").

    Parameters
    ----------
    model:
        A model from :func:`leadscore.load_model`.
    lead:
        The lead's profile fields (any values; they are compared as text).
    events:
        :class:`Event` objects, or dicts with ``type``, ``ts`` and any fields.
    as_of:
        The instant of evaluation (default: now); events after it do not exist.
    explain:
        With ``False`` the per-event detail is left out (faster); totals are the same.

    Examples
    --------
    >>> from leadscore import parse_model, score_lead
    >>> m = parse_model('''
    ... version: 1
    ... name: tiny
    ... profile: [{id: vp, if: {field: title, contains: vp}, points: 10}]
    ... activity: [{id: demo, event: demo_request, points: 30, frequency: once}]
    ... bands: {cold: 0, hot: 40}
    ... mql: hot
    ... ''')
    >>> r = score_lead(m, {"title": "VP Sales"}, [{"type": "demo_request",
    ...                    "ts": "2026-06-01T00:00:00Z"}], as_of="2026-06-30T00:00:00Z")
    >>> (r.score, r.band, r.mql)
    (40.0, 'hot', True)
    """
    t_us, as_of_dt = _instant(as_of)
    record = {k: (v if v is None or type(v) is str else to_text(v)) for k, v in lead.items()}
    # Only the event types some rule reads are kept; an any-type inactivity rule needs just
    # the newest visible event of all.
    by_type: dict[str, list[Event]] = {t: [] for t in model.event_types}
    last_any: int | None = None
    get_bucket = by_type.get
    for e in events:
        ev = e if type(e) is Event else _event(e)
        ts = ev.ts_us
        if ts > t_us:
            continue
        if last_any is None or ts > last_any:
            last_any = ts
        bucket = get_bucket(ev.type)
        if bucket is not None:
            bucket.append(ev)
    for bucket in by_type.values():
        if len(bucket) > 1:
            bucket.sort(key=_TS)

    warnings: list[str] = []
    rule_results: dict[str, RuleContribution] = {}
    columns: dict[tuple[str, str], list[str]] = {}  # (type, field): normalised values
    for rule in model.rules:
        if type(rule) is ProfileRule:
            for name in rule.numeric_fields:
                _check_number(record.get(name), f"rule {rule.id}: lead field {name!r}", warnings)
            hit = rule.predicate(record)
            pts = rule.points if hit else 0.0
            rule_results[rule.id] = RuleContribution(
                rule.id, "profile", rule.group, hit, rule.points, pts, pts
            )
        elif type(rule) is ActivityRule:
            rule_results[rule.id] = _activity(rule, by_type, t_us, explain, warnings, columns)
        else:
            assert isinstance(rule, InactivityRule)
            rule_results[rule.id] = _inactivity(rule, last_any, by_type, t_us)

    groups: list[GroupContribution] = []
    fit = engagement = raw_total = 0.0
    for g in model.groups:
        raw = 0.0
        for r in g.rules:
            raw += rule_results[r.id].points
        value, side = clip(raw, g.min, g.max)
        pts = value * g.weight
        groups.append(GroupContribution(g.id, g.kind, raw, value, g.weight, pts, side))
        raw_total += pts
        if g.kind == "profile":
            fit += pts
        else:
            engagement += pts
    score, total_side = clip(raw_total, model.min, model.max)
    grade = model.grade_for(fit)
    band = model.band_for(score)
    return ScoreResult(
        lead_id=record.get(lead_id_column),
        model=model.name,
        as_of=as_of_dt,
        score=score,
        fit=fit,
        engagement=engagement,
        grade=grade,
        band=band,
        mql=model.is_mql(score),
        priority=model.priority_for(grade, band),
        raw_total=raw_total,
        total_clipped=total_side,
        groups=tuple(groups),
        rules=tuple(rule_results[r.id] for r in model.rules),
        warnings=tuple(warnings),
    )


def _check_number(value: str | None, where: str, warnings: list[str]) -> None:
    if value is not None and value.strip(WHITESPACE) and parse_number(value) is None:
        warnings.append(f"{where}: {value!r} is not a number")


def _event(e: Event | Mapping[str, Any]) -> Event:
    return e if isinstance(e, Event) else Event.from_mapping(e)


def _column(bucket: list[Event], name: str) -> list[str]:
    """Field ``name`` of each event trimmed and folded (``""`` when missing): what a
    :class:`TextFilter` tests, computed once per event type and field for all the rules."""
    out: list[str] = []
    add = out.append
    ws = WHITESPACE
    for e in bucket:
        v = e.fields.get(name)
        if v is None:
            add("")
        else:
            v = v.strip(ws)
            add(v.lower() if v.isascii() else fold(v))
    return out


def _text_filtered(tf: TextFilter, events: list[Event], values: list[str]) -> list[Event]:
    """The events whose normalised value passes ``tf`` (``values`` aligned with ``events``)."""
    needles = tf.needles
    if tf.op == "contains":
        if len(needles) == 1:
            needle = needles[0]
            return [e for e, v in zip(events, values, strict=True) if needle in v]
        return [e for e, v in zip(events, values, strict=True) if any(n in v for n in needles)]
    if tf.op == "starts_with":
        return [e for e, v in zip(events, values, strict=True) if v.startswith(needles)]
    if tf.op == "ends_with":
        return [e for e, v in zip(events, values, strict=True) if v.endswith(needles)]
    options = tf.options
    return [e for e, v in zip(events, values, strict=True) if v in options]


def _activity(
    rule: ActivityRule,
    by_type: Mapping[str, list[Event]],
    t_us: int,
    explain: bool,
    warnings: list[str],
    columns: dict[tuple[str, str], list[str]],
) -> RuleContribution:
    if len(rule.events) == 1:
        candidates = by_type.get(rule.events[0], [])
    else:
        candidates = sorted((e for t in rule.events for e in by_type.get(t, ())), key=_TS)
    if rule.trend is not None:
        return _trend(rule, candidates, t_us, warnings)
    if not candidates and rule.count is None:  # most rules, for most leads
        raw, side = clip(0.0, rule.min_points, rule.max_points)
        clipped = None if side is None else f"{side}_points"
        return RuleContribution(
            rule.id, "activity", rule.group, False, rule.points, 0.0, raw, clipped
        )
    window = rule.window_days
    pred = rule.predicate
    for name in rule.numeric_fields:
        for e in candidates:
            _check_number(e.fields.get(name), f"rule {rule.id}: event field {name!r}", warnings)
    start = 0
    if window is not None and candidates:
        # oldest first, so "inside the window" is False...False, True...True: bisect on it
        start = bisect_left(
            candidates, True, key=lambda e: (t_us - e.ts_us) / MICROS_PER_DAY < window
        )
    tf = rule.text_filter
    if tf is not None and len(rule.events) == 1 and candidates:
        key = (rule.events[0], tf.field)
        values = columns.get(key)
        if values is None:
            values = columns[key] = _column(candidates, tf.field)
        if start:
            candidates, values = candidates[start:], values[start:]
        matching = _text_filtered(tf, candidates, values)
    else:
        if start:
            candidates = candidates[start:]
        matching = candidates if pred is None else [e for e in candidates if pred(e.fields)]
    if rule.frequency == "every":
        counted = matching
    elif rule.frequency == "once":
        counted = matching[-1:]
    else:
        latest: dict[str, Event] = {}
        for e in matching:  # oldest first: the last one seen per item is the most recent
            latest[_item_key(e.item)] = e
        counted = sorted(latest.values(), key=lambda e: e.ts_us)
    if rule.count is not None:
        return _counted(rule, len(counted), len(matching))

    points, d, hl = rule.points, rule.diminishing, rule.half_life_days
    raw = 0.0
    detail: list[CountedEvent] = []
    if explain:
        for k, e in enumerate(counted):
            age = (t_us - e.ts_us) / MICROS_PER_DAY
            multiplier = d**k
            decay = 0.5 ** (age / hl) if hl is not None else 1.0
            value = points * multiplier * decay
            raw += value
            detail.append(
                CountedEvent(
                    e.ts, e.type, e.item, e.event_id, k + 1, points, multiplier, decay, age, value
                )
            )
    # The same arithmetic, in the same order, without the detail (the fast path).
    elif hl is None:
        for k in range(len(counted)):
            raw += points * d**k * 1.0
    else:
        for k, e in enumerate(counted):
            raw += points * d**k * 0.5 ** ((t_us - e.ts_us) / MICROS_PER_DAY / hl)
    value, side = clip(raw, rule.min_points, rule.max_points)
    return RuleContribution(
        rule_id=rule.id,
        kind="activity",
        group=rule.group,
        matched=bool(counted),
        base_points=points,
        raw=raw,
        points=value,
        clipped=None if side is None else f"{side}_points",
        events=tuple(detail),
        matching_events=len(matching),
    )


def _fires(rule: ActivityRule, fired: bool, note: str, matching: int) -> RuleContribution:
    """A count or trend rule: its points once when it fires, then its caps."""
    raw = rule.points if fired else 0.0
    value, side = clip(raw, rule.min_points, rule.max_points)
    return RuleContribution(
        rule_id=rule.id,
        kind="activity",
        group=rule.group,
        matched=fired,
        base_points=rule.points,
        raw=raw,
        points=value,
        clipped=None if side is None else f"{side}_points",
        matching_events=matching,
        note=note,
    )


def _counted(rule: ActivityRule, n: int, matching: int) -> RuleContribution:
    tests = " and ".join(f"{COUNT_WORDS[op]} {v}" for op, v in rule.count or ())
    window = f" in {rule.window_days:g} days" if rule.window_days is not None else ""
    note = f"{n} counted event{'' if n == 1 else 's'}{window}; needs {tests}"
    return _fires(rule, rule.count_holds(n), note, matching)


def _trend(
    rule: ActivityRule, candidates: list[Event], t_us: int, warnings: list[str]
) -> RuleContribution:
    trend = rule.trend
    assert trend is not None
    pred = rule.predicate
    for name in rule.numeric_fields:
        for e in candidates:
            _check_number(e.fields.get(name), f"rule {rule.id}: event field {name!r}", warnings)
    recent = baseline = 0
    until = trend.until_days
    for e in candidates:
        if pred is not None and not pred(e.fields):
            continue
        age = (t_us - e.ts_us) / MICROS_PER_DAY
        if age < trend.recent_days:
            recent += 1
        elif age < until:
            baseline += 1
    note = (
        f"{recent} in the last {trend.recent_days:g} days, {baseline} in the "
        f"{trend.baseline_days:g} days before; needs {trend.ratio:g}x the earlier rate and "
        f"at least {trend.min_recent}"
    )
    return _fires(rule, trend.holds(recent, baseline), note, recent + baseline)


def _inactivity(
    rule: InactivityRule, last_any: int | None, by_type: Mapping[str, list[Event]], t_us: int
) -> RuleContribution:
    if rule.events is None:
        last = last_any
    else:
        stamps = [by_type[t][-1].ts_us for t in rule.events if by_type.get(t)]
        last = max(stamps) if stamps else None
    inactive = last is None or (t_us - last) / MICROS_PER_DAY >= rule.no_activity_days
    pts = rule.points if inactive else 0.0
    if last is None:
        note = "no events at all"
    else:
        note = f"last event {(t_us - last) / MICROS_PER_DAY:.1f} days before as-of"
    return RuleContribution(
        rule.id, "inactivity", rule.group, inactive, rule.points, pts, pts, note=note
    )
