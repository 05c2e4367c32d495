"""The model file's schema (MODEL_SPEC.md, version 1) as strict pydantic models.

These classes describe the file exactly as written; :mod:`leadscore.spec.model` turns a valid
file into the resolved :class:`~leadscore.spec.model.Model` that evaluators use. Unknown keys are
errors everywhere except inside an example's events, whose extra keys are event fields.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AllowInfNan,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from leadscore.spec.conditions import Condition, Number, not_true_or_false

__all__ = [
    "ID_PATTERN",
    "ActivityRuleSpec",
    "ExampleEventSpec",
    "ExampleExpectSpec",
    "ExampleSpec",
    "GroupSpec",
    "InactivityRuleSpec",
    "ModelSpec",
    "ProfileRuleSpec",
]

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$"
Scalar = str | int | float | bool


class _Strict(BaseModel):
    # No NaN or infinity anywhere but in grade and band thresholds (ModelSpec says where).
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_true_for_a_number(cls, value: Any, info: ValidationInfo) -> Any:
        """``points: yes`` is YAML's true, which pydantic would take as 1: a number is asked
        for, not true/false (fields that take true/false are left alone)."""
        if isinstance(value, bool) and info.field_name is not None:
            annotation = str(cls.model_fields[info.field_name].annotation)
            if ("float" in annotation or "int" in annotation) and "bool" not in annotation:
                raise ValueError("a number is needed here, not true/false")
        return value


# A threshold may be infinite (`cold: -.inf`), never NaN.
Threshold = Annotated[float, AllowInfNan(True), BeforeValidator(not_true_or_false)]


def _check_range(low: float | None, high: float | None, what: str) -> None:
    if low is not None and high is not None and low > high:
        raise ValueError(f"{what}: min ({low:g}) is above max ({high:g})")


class GroupSpec(_Strict):
    """A scoring group: its rules' sum is clipped to [min, max], then multiplied by weight."""

    kind: Literal["profile", "activity"] | None = None
    description: str | None = None
    min: float | None = None
    max: float | None = None
    weight: float = Field(default=1.0, ge=0)

    @model_validator(mode="after")
    def _range(self) -> GroupSpec:
        _check_range(self.min, self.max, "group")
        return self


class _RuleSpec(_Strict):
    id: str = Field(pattern=ID_PATTERN)
    description: str | None = None
    group: str | None = Field(default=None, pattern=ID_PATTERN)
    points: float | None = None
    stars: int | None = Field(default=None, ge=1, le=5)

    @model_validator(mode="after")
    def _points_or_stars(self) -> _RuleSpec:
        if (self.points is None) == (self.stars is None):
            raise ValueError("needs exactly one of `points` or `stars`")
        return self


class ProfileRuleSpec(_RuleSpec):
    """Adds its points once when its condition holds on the lead's fields."""

    if_: Condition = Field(alias="if")


def _event_names(value: str | list[str]) -> str | list[str]:
    names = [value] if isinstance(value, str) else value
    if not names:
        raise ValueError("must name at least one event type")
    if any(not n.strip() for n in names):
        raise ValueError("event type names must not be empty")
    return value


class CountSpec(_Strict):
    """How many counted events a count rule needs: any of gte, gt, lte, lt, eq, all must hold."""

    gte: int | None = Field(default=None, ge=0)
    gt: int | None = Field(default=None, ge=0)
    lte: int | None = Field(default=None, ge=0)
    lt: int | None = Field(default=None, ge=1)
    eq: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _some(self) -> CountSpec:
        if all(v is None for v in (self.gte, self.gt, self.lte, self.lt, self.eq)):
            raise ValueError("needs at least one of gte, gt, lte, lt, eq (such as {gte: 3})")
        return self


class TrendSpec(_Strict):
    """More matching events lately than before: the count of the last ``recent_days`` is at
    least ``ratio`` times the rate of the ``baseline_days`` before them, and at least
    ``min_recent``."""

    recent_days: float = Field(gt=0)
    baseline_days: float = Field(gt=0)
    ratio: float = Field(default=2.0, gt=0)
    min_recent: int = Field(default=1, ge=1)


class ActivityRuleSpec(_RuleSpec):
    """Points for matching events, with frequency, diminishing returns, decay, window, caps;
    or, with ``count`` or ``trend``, points once when the number of matching events says so."""

    event: str | list[str]
    where: Condition | None = None
    frequency: Literal["every", "once", "once_per_item"] = "every"
    diminishing: float = Field(default=1.0, gt=0, le=1)
    half_life_days: float | None = Field(default=None, gt=0)
    window_days: float | None = Field(default=None, gt=0)
    min_points: float | None = None
    max_points: float | None = None
    count: CountSpec | None = None
    trend: TrendSpec | None = None

    _events = field_validator("event")(_event_names)

    @model_validator(mode="after")
    def _range(self) -> ActivityRuleSpec:
        _check_range(self.min_points, self.max_points, "rule")
        if self.count is not None and self.trend is not None:
            raise ValueError("a rule has `count` or `trend`, not both")
        kind = "count" if self.count is not None else "trend" if self.trend is not None else None
        if kind is not None and (self.diminishing != 1.0 or self.half_life_days is not None):
            raise ValueError(
                f"a `{kind}` rule gives its points once: `diminishing` and "
                "`half_life_days` do not apply"
            )
        if self.trend is not None:
            if self.window_days is not None:
                raise ValueError("a `trend` rule sets its own windows: drop `window_days`")
            if self.frequency != "every":
                raise ValueError("a `trend` rule counts every matching event: drop `frequency`")
        return self


class InactivityRuleSpec(_RuleSpec):
    """Adds its points when no event (of the listed types, or any) is newer than the window."""

    no_activity_days: float = Field(gt=0)
    event: str | list[str] | None = None

    @field_validator("event")
    @classmethod
    def _events(cls, value: str | list[str] | None) -> str | list[str] | None:
        return None if value is None else _event_names(value)


class ExampleEventSpec(BaseModel):
    """An event of an example: ``type`` and ``ts`` or ``days_ago``; other keys are its fields."""

    model_config = ConfigDict(extra="allow", frozen=True)

    type: str = Field(min_length=1)
    ts: datetime | None = None
    days_ago: float | None = Field(default=None, ge=0)  # before as_of (a later event is none)
    item: Scalar | None = None

    @model_validator(mode="after")
    def _when(self) -> ExampleEventSpec:
        if (self.ts is None) == (self.days_ago is None):
            raise ValueError("needs exactly one of `ts` or `days_ago`")
        return self

    def fields(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class ExampleExpectSpec(_Strict):
    score: float | None = None
    fit: float | None = None
    engagement: float | None = None
    grade: str | None = None
    band: str | None = None
    mql: bool | None = None
    priority: str | None = None
    rules: dict[str, Number] | None = None
    groups: dict[str, Number] | None = None


class ExampleSpec(_Strict):
    """A model test: given this lead and these events as of a time, expect these results."""

    name: str = Field(min_length=1)
    as_of: datetime
    lead: dict[str, Scalar | None] = Field(default_factory=dict)
    events: list[ExampleEventSpec] = Field(default_factory=list)
    expect: ExampleExpectSpec
    tolerance: float = Field(default=0.01, ge=0)


class CalibrationSpec(_Strict):
    """What a score means as a chance to convert, on the logistic scale of a scorecard: the
    chance is ``1 / (1 + 2 ** ((even_odds_score - score) / points_to_double_odds))``, as
    fitted from outcomes by ``leadscore fit``."""

    points_to_double_odds: float = Field(gt=0)
    even_odds_score: float
    fitted_on: str | None = None  # what it was fitted on, for people (leads, conversions)


class ModelSpec(_Strict):
    """A scoring model file, version 1."""

    version: Literal[1]
    name: str = Field(pattern=ID_PATTERN)
    description: str | None = None
    points_per_star: float = Field(default=10.0, gt=0)
    groups: dict[str, GroupSpec] = Field(default_factory=dict)
    profile: list[ProfileRuleSpec] = Field(default_factory=list)
    activity: list[ActivityRuleSpec] = Field(default_factory=list)
    inactivity: list[InactivityRuleSpec] = Field(default_factory=list)
    grades: dict[str, Threshold] | None = None
    bands: dict[str, Threshold] | None = None
    mql: str | Threshold | None = None
    priority: dict[str, dict[str, str]] | None = None
    min: float | None = None
    max: float | None = None
    calibration: CalibrationSpec | None = None
    examples: list[ExampleSpec] = Field(default_factory=list)

    @field_validator("grades", "bands", mode="after")
    @classmethod
    def _no_nan(cls, table: dict[str, float] | None) -> dict[str, float] | None:
        for name, value in (table or {}).items():
            if math.isnan(value):
                raise ValueError(f"{name}: must be a number or -.inf, not NaN")
        return table

    @field_validator("mql", mode="after")
    @classmethod
    def _mql_number(cls, value: str | float | None) -> str | float | None:
        if isinstance(value, float) and math.isnan(value):
            raise ValueError("must be a band name or a number, not NaN")
        return value

    @model_validator(mode="after")
    def _range(self) -> ModelSpec:
        _check_range(self.min, self.max, "model")
        return self
