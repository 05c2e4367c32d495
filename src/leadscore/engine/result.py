"""What an evaluation returns: the score and the explanation of every point.

Plain slotted dataclasses (not frozen: a frozen dataclass pays for every field on
construction, and the per-lead evaluator builds a dozen of these per lead). Read them, do not
change them: the per-lead evaluator hands the same :class:`RuleContribution` object to every
result where a rule came out alike (a profile rule that held, or did not; an activity rule
without events), made once per model.

The numbers add up exactly: a rule's ``raw`` is the sum of its counted events' ``points`` (in
the listed order), its ``points`` is ``raw`` clipped to the rule's caps; a group's ``raw`` is the
sum of its rules' ``points``, clipped to the group's caps and then multiplied by its weight;
``raw_total`` is the sum of the groups' ``points`` and ``score`` is that clipped to the model's
caps.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

__all__ = [
    "CountedEvent",
    "GroupContribution",
    "RuleContribution",
    "ScoreResult",
    "clip",
]


def clip(value: float, low: float | None, high: float | None) -> tuple[float, str | None]:
    """``value`` clipped to [low, high], and which side clipped it (``"min"``/``"max"``)."""
    if high is not None and value > high:
        return high, "max"
    if low is not None and value < low:
        return low, "min"
    return value, None


@dataclass(slots=True)
class CountedEvent:
    """One event that counted for an activity rule, with every factor applied to it."""

    ts: datetime
    type: str
    item: str | None
    event_id: str | None
    k: int  # 1 for the oldest counted event, 2 for the next, ...
    base_points: float
    multiplier: float  # diminishing ** (k - 1)
    decay: float  # 0.5 ** (age_days / half_life_days), or 1
    age_days: float
    points: float  # base_points * multiplier * decay


@dataclass(slots=True)
class RuleContribution:
    rule_id: str
    kind: str  # "profile", "activity" or "inactivity"
    group: str
    matched: bool  # condition held / at least one event counted / the lead was inactive
    base_points: float
    raw: float  # before the rule's caps
    points: float  # after the rule's caps
    clipped: str | None = None  # "min_points" or "max_points" when a cap applied
    events: tuple[CountedEvent, ...] = ()
    matching_events: int = 0  # events that matched before `frequency` picked the counted ones
    note: str = ""


@dataclass(slots=True)
class GroupContribution:
    group_id: str
    kind: str
    raw: float  # sum of its rules' points
    clipped_value: float
    weight: float
    points: float  # clipped_value * weight
    clipped: str | None = None  # "min" or "max" when the group's cap applied


@dataclass(slots=True)
class ScoreResult:
    """The score of one lead under one model as of one instant, explained."""

    lead_id: str | None
    model: str
    as_of: datetime
    score: float
    fit: float
    engagement: float
    grade: str | None
    band: str | None
    mql: bool
    priority: str | None
    raw_total: float
    total_clipped: str | None
    groups: tuple[GroupContribution, ...]
    rules: tuple[RuleContribution, ...]
    warnings: tuple[str, ...] = field(default=())

    @property
    def contributions(self) -> dict[str, float]:
        """Points per rule id, after rule caps (before group caps and weights)."""
        return {r.rule_id: r.points for r in self.rules}

    @property
    def group_points(self) -> dict[str, float]:
        return {g.group_id: g.points for g in self.groups}

    def as_row(self) -> dict[str, Any]:
        """The result as one row of the batch evaluator's table (same column names)."""
        row: dict[str, Any] = {
            "lead_id": self.lead_id,
            "score": self.score,
            "fit": self.fit,
            "engagement": self.engagement,
            "grade": self.grade,
            "band": self.band,
            "mql": self.mql,
            "priority": self.priority,
        }
        row.update({f"group:{g.group_id}": g.points for g in self.groups})
        row.update({f"rule:{r.rule_id}": r.points for r in self.rules})
        return row

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON: datetimes as ISO 8601 text."""
        data = asdict(self)
        return _iso(data)  # type: ignore[no-any-return]


def _iso(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, dict):
        return {k: _iso(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_iso(v) for v in value]
    return value
