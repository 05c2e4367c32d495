"""The resolved scoring model that both evaluators read.

:func:`resolve` turns a validated :class:`~leadscore.spec.schema.ModelSpec` into a
:class:`Model`: stars become points, implicit groups (``fit`` for profile rules, ``engagement``
for activity and inactivity rules) are created, each group knows its kind and rules in file
order, and grades and bands are sorted for lookup. :func:`semantic_issues` finds the problems a
per-field schema cannot see (duplicate ids, unknown groups, unordered tables, ...).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from leadscore.spec.conditions import (
    Condition,
    Predicate,
    TextFilter,
    compile_condition,
    numeric_fields,
    text_filter,
)
from leadscore.spec.schema import ExampleSpec, ModelSpec

__all__ = [
    "FALLBACK_GRADE",
    "NOT_EVENT_FIELDS",
    "ActivityRule",
    "Group",
    "InactivityRule",
    "Model",
    "ProfileRule",
    "Rule",
    "resolve",
    "semantic_issues",
]

FALLBACK_GRADE = "F"
# Event columns a `where` cannot read: the lead id and the time are not event fields (windows
# and decay are how time counts), and names starting with "_" are the evaluators' own.
NOT_EVENT_FIELDS = ("lead_id", "ts", "ts_us")
DEFAULT_GROUP = {"profile": "fit", "activity": "engagement", "inactivity": "engagement"}
RULE_LISTS = ("profile", "activity", "inactivity")
Kind = Literal["profile", "activity"]


@dataclass(frozen=True)
class ProfileRule:
    id: str
    group: str
    points: float
    condition: Condition
    description: str | None = None
    predicate: Predicate = field(init=False, repr=False, compare=False)
    numeric_fields: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "predicate", compile_condition(self.condition))
        object.__setattr__(self, "numeric_fields", tuple(numeric_fields(self.condition)))

    kind = "profile"


# the comparison of each count test; they work on numbers and on SQL (Ibis) expressions alike
COUNT_TESTS: dict[str, Callable[[Any, Any], Any]] = {
    "gte": operator.ge,
    "gt": operator.gt,
    "lte": operator.le,
    "lt": operator.lt,
    "eq": operator.eq,
}
COUNT_WORDS = {
    "gte": "at least",
    "gt": "more than",
    "lte": "at most",
    "lt": "fewer than",
    "eq": "exactly",
}


@dataclass(frozen=True)
class Trend:
    """A trend rule's test: ``recent * baseline_days >= ratio * baseline * recent_days`` and
    ``recent >= min_recent``, where ``recent`` counts the matching events with age below
    ``recent_days`` and ``baseline`` those with age from ``recent_days`` up to (not including)
    ``until_days = recent_days + baseline_days``."""

    recent_days: float
    baseline_days: float
    ratio: float
    min_recent: int

    @property
    def until_days(self) -> float:
        return self.recent_days + self.baseline_days

    def holds(self, recent: int, baseline: int) -> bool:
        return (
            recent >= self.min_recent
            and recent * self.baseline_days >= self.ratio * baseline * self.recent_days
        )


@dataclass(frozen=True)
class ActivityRule:
    id: str
    group: str
    points: float
    events: tuple[str, ...]
    where: Condition | None = None
    frequency: Literal["every", "once", "once_per_item"] = "every"
    diminishing: float = 1.0
    half_life_days: float | None = None
    window_days: float | None = None
    min_points: float | None = None
    max_points: float | None = None
    description: str | None = None
    count: tuple[tuple[str, int], ...] | None = None  # ((operator, number), ...): all hold
    trend: Trend | None = None
    predicate: Predicate | None = field(init=False, repr=False, compare=False)
    # the `where` as one test over a column of normalised values, when it is that simple
    text_filter: TextFilter | None = field(init=False, repr=False, compare=False)
    numeric_fields: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def count_holds(self, n: int) -> bool:
        """Whether ``n`` counted events satisfy the rule's ``count`` (all its tests)."""
        return all(COUNT_TESTS[op](n, value) for op, value in self.count or ())

    def __post_init__(self) -> None:
        pred = None if self.where is None else compile_condition(self.where)
        object.__setattr__(self, "predicate", pred)
        object.__setattr__(self, "text_filter", text_filter(self.where))
        nums = () if self.where is None else tuple(numeric_fields(self.where))
        object.__setattr__(self, "numeric_fields", nums)

    kind = "activity"


@dataclass(frozen=True)
class InactivityRule:
    id: str
    group: str
    points: float
    no_activity_days: float
    events: tuple[str, ...] | None = None
    description: str | None = None

    kind = "inactivity"


Rule = ProfileRule | ActivityRule | InactivityRule


@dataclass(frozen=True)
class Group:
    id: str
    kind: Kind
    rules: tuple[Rule, ...]
    min: float | None = None
    max: float | None = None
    weight: float = 1.0
    description: str | None = None


@dataclass(frozen=True)
class Model:
    """A scoring model ready to evaluate. Build one with :func:`leadscore.load_model`."""

    name: str
    groups: tuple[Group, ...]
    rules: tuple[Rule, ...]  # file order: profile, then activity, then inactivity
    grades: tuple[tuple[str, float], ...]  # best first: (name, threshold), thresholds falling
    bands: tuple[tuple[str, float], ...]  # lowest first: (name, lower bound), bounds rising
    mql: str | float | None
    mql_threshold: float | None
    priority: Mapping[str, Mapping[str, str]]
    min: float | None
    max: float | None
    description: str | None
    examples: tuple[ExampleSpec, ...]
    spec: ModelSpec
    source: str = "<model>"
    fingerprint: str = ""
    version: int = 1

    def rule(self, rule_id: str) -> Rule:
        for r in self.rules:
            if r.id == rule_id:
                return r
        raise KeyError(rule_id)

    # Event types any activity rule reads (inactivity rules with a list included); computed
    # once, as the per-lead evaluator asks for it on every call.
    event_types: frozenset[str] = field(init=False, repr=False, compare=False)
    # What an evaluator derives from the model once and keeps (keyed by evaluator).
    engine_cache: dict[str, Any] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )

    def __post_init__(self) -> None:
        names: set[str] = set()
        for r in self.rules:
            events = r.events if isinstance(r, (ActivityRule, InactivityRule)) else None
            names.update(events or ())
        object.__setattr__(self, "event_types", frozenset(names))

    @property
    def grade_names(self) -> tuple[str, ...]:
        """Every grade a lead can get, best first: the model's and, below them, F (none for
        a model without grades)."""
        names = tuple(name for name, _ in self.grades)
        return names if not names or FALLBACK_GRADE in names else (*names, FALLBACK_GRADE)

    @property
    def band_names(self) -> tuple[str, ...]:
        """The model's bands, highest first."""
        return tuple(name for name, _ in reversed(self.bands))

    def grade_for(self, fit: float) -> str | None:
        if not self.grades:
            return None
        for name, threshold in self.grades:
            if threshold <= fit:
                return name
        return FALLBACK_GRADE

    def band_for(self, total: float) -> str | None:
        found = None
        for name, lower in self.bands:
            if lower <= total:
                found = name
        return found

    def is_mql(self, total: float) -> bool:
        return self.mql_threshold is not None and total >= self.mql_threshold

    def probability(self, score: float) -> float | None:
        """The chance to convert that the model's ``calibration`` gives ``score`` (None
        without one)."""
        cal = self.spec.calibration
        if cal is None:
            return None
        exponent = (cal.even_odds_score - score) / cal.points_to_double_odds
        if exponent > 1000:  # the chance is 0 to every digit shown (and 2.0 ** 1100 overflows)
            return 0.0
        return float(1.0 / (1.0 + 2.0**exponent))

    def priority_for(self, grade: str | None, band: str | None) -> str | None:
        if grade is None or band is None:
            return None
        return self.priority.get(grade, {}).get(band)


def _names(value: str | list[str] | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    items = [value] if isinstance(value, str) else value
    return tuple(dict.fromkeys(v.strip() for v in items))


def resolve(spec: ModelSpec, source: str = "<model>", fingerprint: str = "") -> Model:
    """Build the evaluable model from a spec that passed :func:`semantic_issues`."""
    per_star = spec.points_per_star
    rules: list[Rule] = []
    for p in spec.profile:
        pts = p.points if p.points is not None else (p.stars or 0) * per_star
        group = p.group or DEFAULT_GROUP["profile"]
        rules.append(ProfileRule(p.id, group, pts, p.if_, p.description))
    for a in spec.activity:
        pts = a.points if a.points is not None else (a.stars or 0) * per_star
        events = _names(a.event)
        assert events is not None
        rules.append(
            ActivityRule(
                id=a.id,
                group=a.group or DEFAULT_GROUP["activity"],
                points=pts,
                events=events,
                where=a.where,
                frequency=a.frequency,
                diminishing=a.diminishing,
                half_life_days=a.half_life_days,
                window_days=a.window_days,
                min_points=a.min_points,
                max_points=a.max_points,
                description=a.description,
                count=None
                if a.count is None
                else tuple((k, v) for k, v in a.count.model_dump().items() if v is not None),
                trend=None
                if a.trend is None
                else Trend(
                    a.trend.recent_days, a.trend.baseline_days, a.trend.ratio, a.trend.min_recent
                ),
            )
        )
    for i in spec.inactivity:
        pts = i.points if i.points is not None else (i.stars or 0) * per_star
        rules.append(
            InactivityRule(
                id=i.id,
                group=i.group or DEFAULT_GROUP["inactivity"],
                points=pts,
                no_activity_days=i.no_activity_days,
                events=_names(i.event),
                description=i.description,
            )
        )

    order = list(spec.groups)
    for r in rules:
        if r.group not in order:
            order.append(r.group)
    groups: list[Group] = []
    for gid in order:
        members = tuple(r for r in rules if r.group == gid)
        declared = spec.groups.get(gid)
        kind: Kind
        if declared is not None and declared.kind is not None:
            kind = declared.kind
        elif members:
            kind = "profile" if members[0].kind == "profile" else "activity"
        else:
            kind = "profile" if gid == "fit" else "activity"
        groups.append(
            Group(
                id=gid,
                kind=kind,
                rules=members,
                min=declared.min if declared else None,
                max=declared.max if declared else None,
                weight=declared.weight if declared else 1.0,
                description=declared.description if declared else None,
            )
        )

    grades = tuple(sorted((spec.grades or {}).items(), key=lambda kv: -kv[1]))
    bands = tuple(sorted((spec.bands or {}).items(), key=lambda kv: kv[1]))
    threshold: float | None
    if spec.mql is None:
        threshold = None
    elif isinstance(spec.mql, str):
        threshold = dict(bands)[spec.mql]
    else:
        threshold = float(spec.mql)
    return Model(
        name=spec.name,
        groups=tuple(groups),
        rules=tuple(rules),
        grades=grades,
        bands=bands,
        mql=spec.mql,
        mql_threshold=threshold,
        priority=spec.priority or {},
        min=spec.min,
        max=spec.max,
        description=spec.description,
        examples=tuple(spec.examples),
        spec=spec,
        source=source,
        fingerprint=fingerprint,
    )


Loc = tuple[str | int, ...]


def semantic_issues(raw: Any) -> list[tuple[Loc, str]]:
    """Cross-field problems in raw model data, read defensively (the data may be invalid)."""
    issues: list[tuple[Loc, str]] = []
    if not isinstance(raw, Mapping):
        return issues
    groups_raw = raw.get("groups")
    groups: Mapping[str, Any] = groups_raw if isinstance(groups_raw, Mapping) else {}

    seen: dict[str, Loc] = {}
    group_kinds: dict[str, tuple[str, Loc]] = {}
    for group_id, g in groups.items():
        if isinstance(g, Mapping) and g.get("kind") in ("profile", "activity"):
            group_kinds[str(group_id)] = (str(g["kind"]), ("groups", group_id, "kind"))
    rule_ids: set[str] = set()
    for list_name in RULE_LISTS:
        items = raw.get(list_name)
        if not isinstance(items, list):
            continue
        kind = "profile" if list_name == "profile" else "activity"
        for i, item in enumerate(items):
            if not isinstance(item, Mapping):
                continue
            rid = item.get("id")
            if isinstance(rid, str):
                rule_ids.add(rid)
                if rid in seen:
                    first = fmt_loc(seen[rid])
                    issues.append(((list_name, i, "id"), f"duplicate rule id {rid!r} ({first})"))
                else:
                    seen[rid] = (list_name, i, "id")
            if list_name == "activity":
                for where_loc, name in _condition_fields_raw(
                    item.get("where"), (list_name, i, "where")
                ):
                    if name in NOT_EVENT_FIELDS or name.startswith("_"):
                        issues.append(
                            (
                                where_loc,
                                f"`where` cannot read {name!r}: the lead id and the time are "
                                "not event fields (use window_days or half_life_days for time), "
                                "and names starting with '_' are reserved",
                            )
                        )
            gid: Any = item.get("group")
            loc: Loc = (list_name, i, "group")
            if gid is None:
                gid, loc = DEFAULT_GROUP[list_name], (list_name, i)
            elif not isinstance(gid, str):
                continue
            elif gid not in groups and gid not in ("fit", "engagement"):
                known = ", ".join(sorted({*map(str, groups), "fit", "engagement"}))
                issues.append((loc, f"unknown group {gid!r} (declared: {known})"))
                continue
            if gid in group_kinds and group_kinds[gid][0] != kind:
                other, where = group_kinds[gid]
                if where[-1] == "kind":
                    why = f"is declared `kind: {other}` ({fmt_loc(where)})"
                else:
                    why = f"holds {other} rules ({fmt_loc(where)})"
                issues.append(
                    (
                        loc,
                        f"group {gid!r} {why}, so this {list_name} rule cannot join it "
                        "(a group holds profile rules or activity/inactivity rules, never both)",
                    )
                )
            elif gid not in group_kinds:
                group_kinds[gid] = (kind, loc)

    grades = raw.get("grades")
    if isinstance(grades, Mapping):
        _ordered_table(grades, "grades", falling=True, issues=issues)
        if FALLBACK_GRADE in grades:
            issues.append(
                (("grades", FALLBACK_GRADE), f"{FALLBACK_GRADE!r} is the grade below the lowest")
            )
    bands = raw.get("bands")
    band_names = set(map(str, bands)) if isinstance(bands, Mapping) else set()
    if isinstance(bands, Mapping):
        _ordered_table(bands, "bands", falling=False, issues=issues)
    mql = raw.get("mql")
    if isinstance(mql, str) and mql not in band_names:
        known = ", ".join(sorted(band_names)) or "no bands are defined"
        issues.append((("mql",), f"unknown band {mql!r} ({known})"))
    priority = raw.get("priority")
    if isinstance(priority, Mapping):
        grade_names = {*map(str, grades), FALLBACK_GRADE} if isinstance(grades, Mapping) else set()
        for grade, row in priority.items():
            if str(grade) not in grade_names:
                issues.append((("priority", grade), f"unknown grade {grade!r}"))
            if isinstance(row, Mapping):
                for band in row:
                    if str(band) not in band_names:
                        issues.append((("priority", grade, band), f"unknown band {band!r}"))

    examples = raw.get("examples")
    group_ids = {*map(str, groups), *group_kinds}
    if isinstance(examples, list):
        names: set[str] = set()
        for i, ex in enumerate(examples):
            if not isinstance(ex, Mapping):
                continue
            example_name: Any = ex.get("name")
            if isinstance(example_name, str):
                if example_name in names:
                    issues.append(
                        (("examples", i, "name"), f"duplicate example name {example_name!r}")
                    )
                names.add(example_name)
            expect = ex.get("expect")
            if not isinstance(expect, Mapping):
                continue
            # an expected label the model cannot give: the example could never pass
            every_grade = (
                {*map(str, grades), FALLBACK_GRADE} if isinstance(grades, Mapping) else set()
            )
            for key, labels, what in (
                ("band", band_names, "band"),
                ("grade", every_grade, "grade"),
            ):
                value = expect.get(key)
                if isinstance(value, str) and value not in labels:
                    listed = ", ".join(sorted(labels)) or f"the model has no {what}s"
                    issues.append(
                        (("examples", i, "expect", key), f"unknown {what} {value!r} ({listed})")
                    )
            if isinstance(expect.get("priority"), str) and not isinstance(priority, Mapping):
                issues.append(
                    (("examples", i, "expect", "priority"), "the model has no priority matrix")
                )
            for key, known_ids, what in (
                ("rules", rule_ids, "rule"),
                ("groups", group_ids, "group"),
            ):
                table = expect.get(key)
                if isinstance(table, Mapping):
                    for k in table:
                        if str(k) not in known_ids:
                            issues.append(
                                (("examples", i, "expect", key, k), f"unknown {what} {k!r}")
                            )
    return issues


def _condition_fields_raw(cond: Any, loc: Loc) -> list[tuple[Loc, str]]:
    """(location, field name) of every field condition in raw condition data."""
    if not isinstance(cond, Mapping):
        return []
    out: list[tuple[Loc, str]] = []
    if isinstance(cond.get("field"), str):
        out.append(((*loc, "field"), cond["field"]))
    for key in ("all", "any"):
        if isinstance(cond.get(key), list):
            for n, c in enumerate(cond[key]):
                out += _condition_fields_raw(c, (*loc, key, n))
    if "not" in cond:
        out += _condition_fields_raw(cond["not"], (*loc, "not"))
    return out


def _ordered_table(
    table: Mapping[Any, Any], name: str, *, falling: bool, issues: list[tuple[Loc, str]]
) -> None:
    prev: tuple[Any, float] | None = None
    for key, value in table.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        if math.isnan(value):
            continue
        if prev is not None:
            ok = value < prev[1] if falling else value > prev[1]
            if not ok:
                order = (
                    "best to worst, thresholds falling"
                    if falling
                    else "lowest first, bounds rising"
                )
                issues.append(
                    (
                        (name, key),
                        f"{name} must be listed {order}: {key} ({value:g}) after "
                        f"{prev[0]} ({prev[1]:g})",
                    )
                )
        prev = (key, float(value))


def fmt_loc(loc: Loc) -> str:
    """A location as people read it: ``activity[2].half_life_days``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out
