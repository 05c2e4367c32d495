"""The triggers file: what to do when a lead's score crosses a line, and how it is checked.

::

    version: 1                          # optional
    triggers:
      - id: hot-to-sales
        description: Hot leads go to sales  # optional
        sheet: b2b-default              # optional; default: every sheet
        when: {enters_band: hot}        # exactly one kind, see below
        reasons: [event, profile, decay, manual]  # optional; this is the default
        enabled: true                   # optional
        actions:                        # run in this order
          - webhook: {url: "https://hooks.example/x", secret: "s3cret", format: json}
          - set_stage: mql
          - assign_owner: {round_robin: [alice, bob]}
          - assign_owner: {by_field: country, map: {US: alice, DE: bob}, default: carol}

``when`` kinds, each a transition from the score before a change to the score after it (a
lead's first score comes from "nothing": no band, no grade, not MQL, minus infinity points):

============================  ============================================================
``enters_band: hot``          the band was not ``hot`` and now is
``leaves_band: hot``          the band was ``hot`` and now is not (never on a first score)
``becomes_mql: true``         was not an MQL, now is
``stops_being_mql: true``     was an MQL, now is not
``grade_changes: true``       the grade differs from the previous score's (not on a first score)
``enters_grade: A``           the grade was not ``A`` and now is
``crosses: 50``               old < 50 <= new
``drops_below: 50``           new < 50 <= old (never on a first score)
============================  ============================================================

``reasons`` are the change reasons that may fire the trigger: ``event``, ``profile``, ``decay``,
``model change``, ``manual``; by default all but ``model change`` (publishing a new model
rescores everyone, and a new model should not page sales for every lead it moves).

``assign_owner`` keeps an owner a lead already has unless ``reassign: true``. Round robin
rotates per trigger action; ``pool: NAME`` shares one rotation between actions.

Call :func:`parse_triggers` (text) or :func:`load_triggers` (a file): every problem is raised
at once as a :class:`~leadscore.errors.ConfigError` of ``file:line: path: message`` issues.
Given the active sheets' models, sheet, band and grade names are checked too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from leadscore.errors import ConfigError, ModelIssue
from leadscore.spec import Model
from leadscore.spec.conditions import Number
from leadscore.spec.loading import validate_yaml
from leadscore.spec.model import FALLBACK_GRADE, Loc
from leadscore.spec.schema import ID_PATTERN
from leadscore.store.leads import STAGES
from leadscore.store.schema import ID
from leadscore.store.webhooks import MASK, Format, check_webhook_url, shown_url

__all__ = [
    "DEFAULT_REASONS",
    "WHEN_KINDS",
    "ActionSpec",
    "AssignOwnerSpec",
    "Reason",
    "TriggerSpec",
    "TriggersFileSpec",
    "WebhookSpec",
    "WhenSpec",
    "load_triggers",
    "parse_triggers",
]

Reason = Literal["event", "profile", "decay", "model change", "manual"]
DEFAULT_REASONS: tuple[Reason, ...] = ("event", "profile", "decay", "manual")
WHEN_KINDS = (
    "enters_band",
    "leaves_band",
    "becomes_mql",
    "stops_being_mql",
    "grade_changes",
    "enters_grade",
    "crosses",
    "drops_below",
)
ACTION_KINDS = ("webhook", "set_stage", "assign_owner")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _exactly_one(obj: BaseModel, names: Sequence[str], what: str) -> None:
    given = [n for n in names if getattr(obj, n) is not None]
    if len(given) != 1:
        got = "none" if not given else " and ".join(given)
        raise ValueError(f"{what} needs exactly one of {', '.join(names)}; got {got}")


STORED = {"stored": True}  # the validation context of a trigger read back from the store


def _stored(info: ValidationInfo) -> bool:
    """Whether a trigger is read back from the store (``STORED``): what it was checked
    against when it was saved stands, so that a stricter check of a later version does not
    make a store's triggers unreadable (they are replaced only by a new file)."""
    return bool(info.context and info.context.get("stored"))


class WebhookSpec(_Strict):
    """POST the firing to ``url`` (through the outbox), signed with ``secret`` if given."""

    url: str
    secret: str | None = Field(default=None, min_length=1, max_length=200)
    format: Format = "json"

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str, info: ValidationInfo) -> str:
        if _stored(info):  # checked when it was saved, perhaps by an older, laxer check
            return value
        return check_webhook_url(value)


class AssignOwnerSpec(_Strict):
    """Give the lead an owner: in turn from ``round_robin``, or by a profile field's value."""

    round_robin: list[str] | None = Field(default=None, min_length=1)
    pool: str | None = Field(default=None, pattern=ID_PATTERN)
    by_field: str | None = Field(default=None, min_length=1)
    map: dict[str, str] | None = None
    default: str | None = None
    reassign: bool = False

    @field_validator("round_robin", "map", "default")
    @classmethod
    def _owners_named(cls, value: Any, info: ValidationInfo) -> Any:
        """An owner is a name, kept without the spaces around it (`" Ann"` is Ann): not
        empty, at most 200 characters (a trigger stored before this was checked is read as
        it is)."""
        if _stored(info) or value is None:
            return value

        def named(name: str) -> str:
            name = name.strip()
            if not name:
                raise ValueError("an owner's name may not be empty")
            if len(name) > ID:
                raise ValueError(f"an owner's name has at most {ID} characters, got {len(name)}")
            return name

        if isinstance(value, dict):
            return {key: named(name) for key, name in value.items()}
        if isinstance(value, list):
            return [named(name) for name in value]
        return named(value)

    @model_validator(mode="after")
    def _one_way(self) -> AssignOwnerSpec:
        _exactly_one(self, ("round_robin", "by_field"), "assign_owner")
        if self.by_field is not None and not self.map and self.default is None:
            raise ValueError("by_field needs a map (value: owner), a default, or both")
        if self.round_robin is not None and (self.map is not None or self.default is not None):
            raise ValueError("map and default go with by_field, not with round_robin")
        if self.by_field is not None and self.pool is not None:
            raise ValueError("pool goes with round_robin, not with by_field")
        return self


class ActionSpec(_Strict):
    """One action: exactly one of ``webhook``, ``set_stage``, ``assign_owner``."""

    webhook: WebhookSpec | None = None
    set_stage: str | None = None
    assign_owner: AssignOwnerSpec | None = None

    @field_validator("set_stage")
    @classmethod
    def _known_stage(cls, value: str | None) -> str | None:
        if value is None:
            return None
        stage = value.strip().lower()
        if stage not in STAGES:
            raise ValueError(f"unknown stage {value!r}; stages are {', '.join(STAGES)}")
        return stage

    @model_validator(mode="after")
    def _one_action(self) -> ActionSpec:
        _exactly_one(self, ACTION_KINDS, "an action")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ACTION_KINDS if getattr(self, k) is not None)


class WhenSpec(_Strict):
    """The transition that fires a trigger: exactly one of :data:`WHEN_KINDS`."""

    enters_band: str | None = Field(default=None, min_length=1)
    leaves_band: str | None = Field(default=None, min_length=1)
    becomes_mql: Literal[True] | None = None
    stops_being_mql: Literal[True] | None = None
    grade_changes: Literal[True] | None = None
    enters_grade: str | None = Field(default=None, min_length=1)
    crosses: Number | None = None
    drops_below: Number | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> WhenSpec:
        _exactly_one(self, WHEN_KINDS, "when")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in WHEN_KINDS if getattr(self, k) is not None)

    @property
    def value(self) -> str | float | bool:
        value: str | float | bool = getattr(self, self.kind)
        return value


class TriggerSpec(_Strict):
    """One trigger: when a score change on ``sheet`` matches ``when``, run ``actions``."""

    id: str = Field(pattern=ID_PATTERN, max_length=200)
    description: str | None = None
    sheet: str | None = Field(default=None, pattern=ID_PATTERN)
    when: WhenSpec
    reasons: list[Reason] = Field(default_factory=lambda: list(DEFAULT_REASONS), min_length=1)
    enabled: bool = True
    actions: list[ActionSpec] = Field(min_length=1)

    def definition(self) -> dict[str, Any]:
        """Plain JSON data that :meth:`model_validate` reads back (as stored in the database)."""
        return self.model_dump(mode="json", exclude_none=True)

    def redacted(self) -> dict[str, Any]:
        """:meth:`definition` with webhook secrets and the credentials in webhook URLs masked
        (:func:`~leadscore.store.webhooks.shown_url`), for showing in an API or the UI."""
        data = self.definition()
        for action in data["actions"]:
            if "webhook" in action:
                hook = action["webhook"]
                hook["url"] = shown_url(hook["url"])
                if "secret" in hook:
                    hook["secret"] = MASK
        return data


class TriggersFileSpec(_Strict):
    version: Literal[1] = 1
    # required: a file that says nothing (empty, comments only) drops no trigger by mistake;
    # `triggers: []` removes them all on purpose
    triggers: list[TriggerSpec]


_KNOWN_KEYS = sorted(
    {
        f.alias or n
        for cls in (
            TriggersFileSpec,
            TriggerSpec,
            WhenSpec,
            ActionSpec,
            WebhookSpec,
            AssignOwnerSpec,
        )
        for n, f in cls.model_fields.items()
    }
)


def parse_triggers(
    text: str, source: str = "<triggers>", *, sheets: Mapping[str, Model] | None = None
) -> list[TriggerSpec]:
    """Validate a triggers file's text; its triggers in file order.

    Parameters
    ----------
    text:
        The YAML text.
    source:
        The file name used in messages.
    sheets:
        The active sheets' models by name: when given, a trigger's ``sheet`` must be one of
        them and its band and grade names must exist on the sheets it watches.

    Raises :class:`~leadscore.errors.ConfigError` listing every problem found.
    """
    spec = validate_yaml(
        text,
        source,
        TriggersFileSpec,
        error=ConfigError,
        what="a triggers file",
        known_keys=_KNOWN_KEYS,
        semantic=lambda raw, spec: _semantic_issues(raw, spec, sheets),
        reword=_on_hint,
    )
    return spec.triggers


def load_triggers(
    path: str | Path, *, sheets: Mapping[str, Model] | None = None
) -> list[TriggerSpec]:
    """Load and validate a triggers file (see :func:`parse_triggers`)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([ModelIssue(str(p), None, "", "no such file")]) from None
    except IsADirectoryError:
        raise ConfigError([ModelIssue(str(p), None, "", "is a directory, not a file")]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([ModelIssue(str(p), None, "", f"not UTF-8 text: {exc}")]) from None
    return parse_triggers(text, source=str(p), sheets=sheets)


def _on_hint(issue: ModelIssue) -> ModelIssue:
    # YAML 1.1 reads a bare `on:` key as true, the usual spelling elsewhere (GitHub Actions).
    if issue.path.endswith("].on") and "true/false" in issue.message:
        message = "YAML reads the key 'on' as true/false: name it 'reasons'"
        return ModelIssue(issue.file, issue.line, issue.path[:-3] + ".reasons", message)
    return issue


def _semantic_issues(
    raw: Mapping[str, Any], spec: TriggersFileSpec | None, sheets: Mapping[str, Model] | None
) -> list[tuple[Loc, str]]:
    """Duplicate ids (checked on the raw data, so reported alongside schema errors) and, given
    the sheets, names that no watched sheet has."""
    issues: list[tuple[Loc, str]] = []
    items = raw.get("triggers")
    if isinstance(items, list):
        seen: dict[str, int] = {}
        for i, item in enumerate(items):
            tid = item.get("id") if isinstance(item, dict) else None
            if isinstance(tid, str) and tid in seen:
                issues.append(
                    (("triggers", i, "id"), f"duplicate id {tid!r} (see item {seen[tid]})")
                )
            elif isinstance(tid, str):
                seen[tid] = i
    if spec is None or sheets is None:
        return issues
    for i, t in enumerate(spec.triggers):
        if t.sheet is not None and t.sheet not in sheets:
            known = ", ".join(sorted(sheets)) or "none"
            issues.append((("triggers", i, "sheet"), f"no sheet {t.sheet!r}; sheets are {known}"))
            continue
        watched = [sheets[t.sheet]] if t.sheet is not None else list(sheets.values())
        if not watched:
            continue
        kind, value = t.when.kind, t.when.value
        loc: Loc = ("triggers", i, "when", kind)
        where = f"sheet {t.sheet}" if t.sheet else "any sheet"
        if kind in ("enters_band", "leaves_band"):
            names = sorted({b for m in watched for b, _ in m.bands})
            if value not in names:
                issues.append((loc, f"no band {value!r} on {where}; bands are {_list(names)}"))
        elif kind == "enters_grade":
            names = sorted({g for m in watched if m.grades for g in _grades(m)})
            if value not in names:
                issues.append((loc, f"no grade {value!r} on {where}; grades are {_list(names)}"))
        elif kind in ("becomes_mql", "stops_being_mql") and all(m.mql is None for m in watched):
            issues.append((loc, f"{where} has no mql threshold, so no lead is ever an MQL"))
    return issues


def _grades(model: Model) -> list[str]:
    return [g for g, _ in model.grades] + [FALLBACK_GRADE]


def _list(names: Sequence[str]) -> str:
    return ", ".join(names) if names else "none"
