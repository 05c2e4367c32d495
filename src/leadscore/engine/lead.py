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
from leadscore.spec.conditions import (
    WHITESPACE,
    TextFilter,
    condition_fields,
    fold,
    parse_number,
    to_text,
)
from leadscore.spec.model import (
    COUNT_WORDS,
    ActivityRule,
    Group,
    InactivityRule,
    Model,
    ProfileRule,
)

__all__ = ["Event", "ProfileMemo", "profile_fields", "score_lead"]


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


_last_instant: tuple[datetime | None, int, datetime] = (None, 0, datetime.min)


def _instant(as_of: datetime | str | None) -> tuple[int, datetime]:
    """The as-of instant in microseconds, and as an aware datetime."""
    global _last_instant
    last = _last_instant
    if as_of is not None and as_of is last[0]:  # the same datetime for every lead of a batch
        return last[1], last[2]
    if isinstance(as_of, datetime):
        aware = as_of if as_of.tzinfo is not None else as_of.replace(tzinfo=UTC)
        t_us = to_micros(aware)
        _last_instant = (as_of, t_us, aware)
        return t_us, aware
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
    profiles: ProfileMemo | None = None,
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
    profiles:
        A dict kept by the caller between calls with the same model (empty at first): the
        profile rules' results by the values of the fields they read, so that scoring a
        lead again skips them (up to :data:`PROFILE_MEMO` entries, then it starts over).
        Worth it only where leads are scored again and again (real-time rescoring).

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
    plan = _plan_of(model)
    # Only the fields some rule reads are compared: they alone are turned into text.
    get = lead.get
    record: dict[str, str | None] = {}
    for k in plan.lead_fields:
        v = get(k)
        record[k] = v if v is None or type(v) is str else to_text(v)
    lead_id = get(lead_id_column)
    if lead_id is not None and type(lead_id) is not str:
        lead_id = to_text(lead_id)
    # Only the event types some rule reads are kept; an any-type inactivity rule needs just
    # the newest visible event of all.
    by_type: dict[str, list[Event]] = {t: [] for t in model.event_types}
    last_any = _NEVER
    get_bucket = by_type.get
    unsorted = False
    for e in events:
        ev = e if type(e) is Event else _event(e)
        ts = ev.ts_us
        if ts > t_us:
            continue
        if ts >= last_any:
            last_any = ts
        else:
            unsorted = True
        bucket = get_bucket(ev.type)
        if bucket is not None:
            bucket.append(ev)
    if unsorted:  # the store hands events over oldest first: no sorting needed then
        for bucket in by_type.values():
            if len(bucket) > 1:
                bucket.sort(key=_TS)

    # The profile rules' contributions depend on those fields alone: with ``profiles``, a lead
    # scored again (on its next event) finds them made.
    if profiles is None:
        profile = _profile(plan, record)
    else:
        key = tuple(record.values())
        known = profiles.get(key)
        if known is not None:
            profile = known
        else:
            profile = _profile(plan, record)
            if sum(len(v) for v in key if v is not None) <= PROFILE_MEMO_CHARS:
                if len(profiles) >= PROFILE_MEMO:
                    profiles.clear()
                profiles[key] = profile
    contributions = list(profile[0])
    warnings = list(profile[1])
    add = contributions.append
    # (type, field): normalised values, and the values joined by _SEP
    columns: dict[tuple[str, str], tuple[list[str], str]] = {}
    for activity, etype, idle in plan.activity:
        if idle is not None and not by_type[etype]:  # most rules, for most leads
            add(idle)
        else:
            add(_activity(activity, by_type, t_us, explain, warnings, columns))
    if plan.inactivity:
        last = None if last_any == _NEVER else last_any
        for inactivity in plan.inactivity:
            add(_inactivity(inactivity, last, by_type, t_us))

    groups: list[GroupContribution] = []
    fit = engagement = raw_total = 0.0
    for g, members in plan.groups:
        raw = 0.0
        for i in members:
            raw += contributions[i].points
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
        lead_id,
        model.name,
        as_of_dt,
        score,
        fit,
        engagement,
        grade,
        band,
        model.is_mql(score),
        model.priority_for(grade, band),
        raw_total,
        total_side,
        tuple(groups),
        tuple(contributions),
        tuple(warnings),
    )


_NEVER = -(1 << 63)  # before any event

# score_lead's ``profiles``: at most this many entries (then it starts over), and only for
# values of at most this many characters in all (longer ones are evaluated each time, so that
# the memory kept stays bounded).
PROFILE_MEMO = 50_000
PROFILE_MEMO_CHARS = 1_000
# (values of a model's lead_fields) -> the profile rules' contributions and warnings
ProfileMemo = dict[tuple[str | None, ...], tuple[tuple[RuleContribution, ...], tuple[str, ...]]]


def _profile(
    plan: _Plan, record: Mapping[str, str | None]
) -> tuple[tuple[RuleContribution, ...], tuple[str, ...]]:
    """The contributions of the profile rules to a lead with fields ``record``, and the
    warnings they raise."""
    warnings: list[str] = []
    out = []
    for rule, hit, miss in plan.profile:
        for name in rule.numeric_fields:
            _check_number(record.get(name), f"rule {rule.id}: lead field {name!r}", warnings)
        out.append(hit if rule.predicate(record) else miss)
    return tuple(out), tuple(warnings)


@dataclass(frozen=True, slots=True)
class _Plan:
    """What the evaluator needs of a model, laid out once per model: the rules of each kind
    (the model lists profile, then activity, then inactivity rules, so evaluating them in this
    order gives the results in the model's order) and each group with the positions of its
    rules in that order."""

    # each profile rule with its contribution when it holds and when it does not (results
    # share them: a contribution is not changed once made)
    profile: tuple[tuple[ProfileRule, RuleContribution, RuleContribution], ...]
    # each activity rule with its event type and, when it reads one type and is neither a
    # count nor a trend rule, its contribution for a lead with no event of that type
    activity: tuple[tuple[ActivityRule, str, RuleContribution | None], ...]
    inactivity: tuple[InactivityRule, ...]
    groups: tuple[tuple[Group, tuple[int, ...]], ...]
    lead_fields: tuple[str, ...]  # the lead fields the profile rules read


def _plan_of(model: Model) -> _Plan:
    plan = model.engine_cache.get("lead")
    if plan is None:
        profile = tuple(r for r in model.rules if type(r) is ProfileRule)
        activity = tuple(r for r in model.rules if type(r) is ActivityRule)
        inactivity = tuple(r for r in model.rules if type(r) is InactivityRule)
        ordered = (*profile, *activity, *inactivity)
        if len(ordered) != len(model.rules) or any(
            a is not b for a, b in zip(ordered, model.rules, strict=True)
        ):
            raise ValueError(f"model {model.name}: rules are not in kind order")
        position = {r.id: i for i, r in enumerate(model.rules)}
        plan = model.engine_cache["lead"] = _Plan(
            tuple(
                (
                    r,
                    RuleContribution(r.id, "profile", r.group, True, r.points, r.points, r.points),
                    RuleContribution(r.id, "profile", r.group, False, r.points, 0.0, 0.0),
                )
                for r in profile
            ),
            tuple((r, r.events[0], _idle(r)) for r in activity),
            inactivity,
            tuple((g, tuple(position[r.id] for r in g.rules)) for g in model.groups),
            tuple(dict.fromkeys(f for r in profile for f in condition_fields(r.condition))),
        )
    assert isinstance(plan, _Plan)
    return plan


def profile_fields(model: Model) -> tuple[str, ...]:
    """The lead fields :func:`score_lead` reads of ``model`` (besides the lead's id): a record
    holding only these scores the same as the whole profile."""
    return _plan_of(model).lead_fields


def _idle(rule: ActivityRule) -> RuleContribution | None:
    """The contribution of a rule for a lead without any event of the rule's one type (what
    :func:`_activity` gives then), or None when that takes more."""
    if len(rule.events) != 1 or rule.count is not None or rule.trend is not None:
        return None
    raw, side = clip(0.0, rule.min_points, rule.max_points)
    clipped = None if side is None else f"{side}_points"
    return RuleContribution(rule.id, "activity", rule.group, False, rule.points, 0.0, raw, clipped)


def _check_number(value: str | None, where: str, warnings: list[str]) -> None:
    if value is not None and value.strip(WHITESPACE) and parse_number(value) is None:
        warnings.append(f"{where}: {value!r} is not a number")


def _event(e: Event | Mapping[str, Any]) -> Event:
    return e if isinstance(e, Event) else Event.from_mapping(e)


# Joins the normalised values of a column: a needle without it that is not in the joined
# text is in none of the values.
_SEP = "\x00"


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
    columns: dict[tuple[str, str], tuple[list[str], str]],
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
        column = columns.get(key)
        if column is None:
            values = _column(candidates, tf.field)
            column = columns[key] = (values, _SEP.join(values))
        values, joined = column
        if tf.op == "contains" and all(n not in joined and _SEP not in n for n in tf.needles):
            matching = []  # no event's value holds a needle (most rules, for most leads)
        else:
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
        if d == 1.0:  # points * 1.0**k * 1.0 is points itself
            for _ in range(len(counted)):
                raw += points
        else:
            for k in range(len(counted)):
                raw += points * d**k * 1.0
    else:
        for k, e in enumerate(counted):
            raw += points * d**k * 0.5 ** ((t_us - e.ts_us) / MICROS_PER_DAY / hl)
    value, side = clip(raw, rule.min_points, rule.max_points)
    return RuleContribution(
        rule.id,
        "activity",
        rule.group,
        bool(counted),
        points,
        raw,
        value,
        None if side is None else f"{side}_points",
        tuple(detail),
        len(matching),
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
