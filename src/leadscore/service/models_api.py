"""Models and rescoring: post a model file as a draft, publish a version, rescore on demand.

And the model editor's tools, none of which stores anything: check a model file as it is typed,
preview what publishing a draft would do to every lead, score a hypothetical lead, and diff two
stored versions.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    WithJsonSchema,
    model_validator,
)

from leadscore.engine.explain import explanation_text
from leadscore.engine.lead import Event, score_lead
from leadscore.engine.timeutil import MICROS_PER_DAY, from_micros, parse_instant
from leadscore.errors import LeadscoreError, ModelError, ModelIssue
from leadscore.service.auth import require
from leadscore.service.errors import ApiError, from_leadscore, loc_text
from leadscore.service.payloads import Scalar, read_json
from leadscore.service.rescoring import Stopped
from leadscore.service.state import ServiceState
from leadscore.service.views import iso_times
from leadscore.spec import Model, parse_model
from leadscore.spec.conditions import to_text
from leadscore.store import RescoreReport
from leadscore.store.keys import ApiKey
from leadscore.store.leads import event_fields
from leadscore.store.versions import get_version, list_versions, unstorable_name
from leadscore.store.whatif import model_diff, preview_model

__all__ = ["router"]

log = logging.getLogger("leadscore.service")

router = APIRouter()

YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml", "text/plain")


# Model files come back from a request's body under this name (`model.yaml:4: ...`).
SOURCE = "model.yaml"
YAML_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/yaml": {"schema": {"type": "string"}}},
    }
}


def _state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.leadscore
    return state


async def _model_text(request: Request, state: ServiceState) -> str:
    """The model file sent as the request's body (YAML, or JSON, which is YAML too)."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind and kind not in (*YAML_TYPES, "application/json"):
        raise ApiError(415, f"send the model file as application/yaml, not {kind}")
    body = await request.body()  # bounded before the route (app.BodyLimit)
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "the model file is not UTF-8 text") from None


def _parse(text: str) -> Model:
    """The model in a request (:class:`ModelError` -> 422 with every problem and its line)."""
    if not text.strip():
        raise ModelError([ModelIssue(SOURCE, 1, "", "the model is empty: send the model file")])
    return parse_model(text, source=SOURCE)


# Declared before /api/v1/models/{name}...: "check" and "preview" are not model names here.


@router.post("/api/v1/models/check", tags=["models"], openapi_extra=YAML_BODY)
async def check_model(request: Request, _: ApiKey = Depends(require("read"))) -> dict[str, Any]:
    """Validate a model file (the YAML as the body) without storing it: ``valid``, and either
    its name, rule count and groups, or every problem with its line (still a 200: for an
    editor checking as the user types)."""
    state = _state(request)
    text = await _model_text(request, state)
    try:
        model = await run_in_threadpool(_parse, text)
        issue = unstorable_name(model, text)  # as posting it would answer
        if issue is not None:
            raise ModelError([issue])
    except ModelError as e:
        return {"valid": False, "errors": from_leadscore(e).details}
    return {
        "valid": True,
        "name": model.name,
        "rules": len(model.rules),
        "groups": [{"id": g.id, "kind": g.kind, "rules": len(g.rules)} for g in model.groups],
        "bands": [name for name, _ in model.bands],
        "grades": [name for name, _ in model.grades],
        "errors": [],
    }


@router.post("/api/v1/models/preview", tags=["models"], openapi_extra=YAML_BODY)
async def preview(request: Request, _: ApiKey = Depends(require("admin"))) -> dict[str, Any]:
    """Score every stored lead with a draft model (the YAML as the body; stored or not) as of
    now, and compare with the current scores on the sheet of the same name: MQLs and leads
    per band before and after, the band moves, and the leads whose score moves most. Stores
    nothing."""
    state = _state(request)
    text = await _model_text(request, state)

    def run() -> dict[str, Any]:
        model = _parse(text)
        out = preview_model(state.store, model, text).to_dict()
        # Not iso_times over it all: a band may be named like a time (`new_us`).
        as_of = iso_times({"as_of_us": out["as_of_us"]})["as_of"]
        return {("as_of" if k == "as_of_us" else k): v for k, v in out.items()} | {"as_of": as_of}

    return await run_in_threadpool(run)


@router.post(
    "/api/v1/models",
    tags=["models"],
    status_code=201,
    openapi_extra=YAML_BODY,
)
async def post_model(request: Request, _: ApiKey = Depends(require("admin"))) -> JSONResponse:
    """Validate a model file (the YAML as the body) and store it as a new draft version of the
    sheet named in it. Errors come back with their lines. Posting the newest version's exact
    text again creates nothing (200)."""
    state = _state(request)
    text = await _model_text(request, state)

    def run() -> tuple[dict[str, Any], bool]:
        with state.store.db.read() as conn:
            before = len(list_versions(conn))
        version = state.store.add_model(text, source=SOURCE)
        with state.store.db.read() as conn:
            created = len(list_versions(conn)) > before
        return version.summary(), created

    summary, created = await run_in_threadpool(run)
    return JSONResponse(
        {"created": created, **iso_times(summary)}, status_code=201 if created else 200
    )


@router.get("/api/v1/models", tags=["models"])
async def get_models(request: Request, _: ApiKey = Depends(require("read"))) -> dict[str, Any]:
    """Every score sheet with its versions (draft, published, retired)."""
    state = _state(request)

    def run() -> dict[str, Any]:
        with state.store.db.read() as conn:
            versions = list_versions(conn)
        sheets: dict[str, dict[str, Any]] = {}
        for v in versions:
            entry = sheets.setdefault(v.name, {"name": v.name, "active": None, "versions": []})
            entry["versions"].append(v.summary())
            if v.status == "published":
                entry["active"] = v.version
        return {"items": list(sheets.values())}

    return iso_times(await run_in_threadpool(run))  # type: ignore[no-any-return]


@router.get("/api/v1/models/{name}", tags=["models"])
async def get_model(
    request: Request,
    name: str,
    version: int | None = Query(None, ge=1, le=2**31 - 1, description="default: the published one"),
    _: ApiKey = Depends(require("read")),
) -> dict[str, Any]:
    """One version of a model with its YAML text."""
    state = _state(request)

    def run() -> dict[str, Any]:
        with state.store.db.read() as conn:
            v = get_version(conn, name, version)
        return {**v.summary(), "yaml": v.yaml}

    return iso_times(await run_in_threadpool(run))  # type: ignore[no-any-return]


@router.get("/api/v1/models/{name}/diff", tags=["models"])
async def diff_model(
    request: Request,
    name: str,
    from_version: int | None = Query(
        None,
        alias="from",
        ge=1,
        le=2**31 - 1,
        description="default: the published version if older than `to`, else the one before",
    ),
    to_version: int | None = Query(
        None, alias="to", ge=1, le=2**31 - 1, description="default: the newest version"
    ),
    _: ApiKey = Depends(require("read")),
) -> dict[str, Any]:
    """The unified diff between two stored versions of a model file, with the number of lines
    added and removed (``from`` is null when there is no older version: all lines added)."""
    state = _state(request)

    def run() -> dict[str, Any]:
        with state.store.db.read() as conn:
            return model_diff(conn, name, from_version, to_version).to_dict()

    return await run_in_threadpool(run)


@router.get("/api/v1/models/{name}/yaml", tags=["models"], response_class=PlainTextResponse)
async def get_model_yaml(
    request: Request,
    name: str,
    version: int | None = Query(None, ge=1, le=2**31 - 1),
    _: ApiKey = Depends(require("read")),
) -> PlainTextResponse:
    """The model file itself, as stored."""
    state = _state(request)

    def run() -> str:
        with state.store.db.read() as conn:
            return get_version(conn, name, version).yaml

    return PlainTextResponse(await run_in_threadpool(run), media_type="application/yaml")


@router.post("/api/v1/models/{name}/publish", tags=["models"])
async def publish_model(
    request: Request,
    name: str,
    version: int | None = Query(
        None, ge=1, le=2**31 - 1, description="default: the newest version"
    ),
    fire_triggers: bool = Query(
        False, description="let score changes from the new model fire triggers"
    ),
    _: ApiKey = Depends(require("admin")),
) -> dict[str, Any]:
    """Make a version the active one and rescore every lead with it from its events; each
    change is recorded with reason ``model change``. Triggers do not fire unless asked."""
    state = _state(request)
    try:
        report = await _whole_store(
            lambda: state.rescorer.publish(name, version, fire_triggers=fire_triggers)
        )
    except ApiError:
        raise  # the server stops (503)
    except Exception as e:
        if isinstance(e, LeadscoreError) and not getattr(e, "__notes__", None):
            raise  # no such model or version, ...: nothing changed (Store.publish's note else)
        # the rescoring failed (the version is active from its start) or its process died
        log.error("publishing %s failed", name, exc_info=e)
        left = await run_in_threadpool(state.store.replaced_scores, name)
        said = str(e).strip().splitlines()  # a database error's first line, not its SQL
        first = said[0].removeprefix("publish failed: ") if said else type(e).__name__
        message = f"publishing {name} failed: {first}"
        notes = getattr(e, "__notes__", None)
        if not left and notes:  # it stopped after the last lead: the version is active
            message += ". " + notes[0]
        if left:
            message += (
                f". The new version is active, but {left:,} lead"
                f"{' keeps its score' if left == 1 else 's keep their scores'} of the version "
                "before until the next rescoring (POST /api/v1/rescore, the schedule, or the "
                "server's start) brings them over, recorded as model change"
            )
        raise ApiError(500, message) from None
    with state.store.db.read() as conn:
        active = get_version(conn, name)
    return iso_times({"published": active.summary(), "rescore": asdict(report)})  # type: ignore[no-any-return]


@router.post("/api/v1/rescore", tags=["models"])
async def rescore(
    request: Request,
    fire_triggers: bool = True,
    _: ApiKey = Depends(require("admin")),
) -> dict[str, Any]:
    """Bring every lead's score up to now (decay, windows, inactivity) with the batch
    evaluator; changes are recorded with reason ``decay``."""
    state = _state(request)
    report = await _whole_store(
        lambda: state.rescorer.rescore("decay", fire_triggers=fire_triggers)
    )
    return iso_times(asdict(report))  # type: ignore[no-any-return]


async def _whole_store(run: Callable[[], RescoreReport]) -> RescoreReport:
    """A rescoring of every lead (in a process of its own: leadscore.service.rescoring),
    off the event loop; 503 when the server stops meanwhile."""
    try:
        return await run_in_threadpool(run)
    except Stopped:
        raise ApiError(
            503,
            "the server is stopping: the rescoring was ended (what it wrote stays; the next "
            "rescoring does the rest)",
        ) from None


# --- scoring a hypothetical lead ----------------------------------------------------------------

MAX_EVENTS = 1000  # events of one hypothetical lead
MAX_DAYS_AGO = 36_525.0  # a hundred years
_MIN_US = parse_instant("0001-01-02T00:00:00Z")  # a day of margin for time zones
_MAX_US = parse_instant("9999-12-30T00:00:00Z")


def _instant(value: Any) -> int | None:
    """ISO 8601 text or an epoch number, as microseconds (``true`` is not a time)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"must be ISO 8601 text or epoch seconds, got {value!r}")
    us = parse_instant(value)
    if not _MIN_US <= us <= _MAX_US:
        raise ValueError(f"not a time: {value!r} (out of range)")
    return us


Instant = Annotated[
    int | None,
    BeforeValidator(_instant),
    WithJsonSchema(
        {
            "anyOf": [{"type": "string", "format": "date-time"}, {"type": "number"}],
            "description": "ISO 8601 or epoch seconds (milliseconds, ...)",
        }
    ),
]
Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]


def _scalar(value: Any) -> Any:
    # Before the union: one error at the field, not one per member of the union.
    if isinstance(value, (dict, list)):
        raise ValueError("must be text, a number, true/false or null")
    return value


ProfileValue = Annotated[Scalar, BeforeValidator(_scalar)]
Item = Annotated[
    Annotated[str, StringConstraints(max_length=2000)] | int | float | None,
    BeforeValidator(_scalar),
]


class HypotheticalEvent(BaseModel):
    """An event of the hypothetical lead, at ``ts`` or ``days_ago`` days before ``as_of``
    (neither: at ``as_of``). Fields other than these are properties, as for posted events."""

    model_config = ConfigDict(extra="allow")
    type: Name
    ts: Instant = None
    days_ago: float | None = Field(None, ge=0, le=MAX_DAYS_AGO, allow_inf_nan=False)
    item: Item = None
    properties: dict[str, Any] = Field(default_factory=dict)
    event_id: Name | None = None

    @model_validator(mode="after")
    def _one_time(self) -> HypotheticalEvent:
        if self.ts is not None and self.days_ago is not None:
            raise ValueError("give `ts` or `days_ago`, not both")
        return self


class ScoreIn(BaseModel):
    """A hypothetical lead to score with an active sheet or with a model file's text."""

    model_config = ConfigDict(extra="forbid")
    sheet: Name | None = Field(None, description="an active sheet (default: the first active)")
    yaml: str | None = Field(None, description="a model file's text, instead of a sheet")
    lead: dict[Annotated[str, StringConstraints(max_length=200)], ProfileValue] = Field(
        default_factory=dict, description="profile fields"
    )
    events: list[HypotheticalEvent] = Field(default_factory=list, max_length=MAX_EVENTS)
    as_of: Instant = Field(None, description="the instant of evaluation (default: now)")


def _invalid(e: ValidationError) -> ApiError:
    """A 422 naming every bad field (``events[2].ts``), the first one in the message."""
    details = []
    for err in e.errors():
        message = str(err.get("msg", "")).removeprefix("Value error, ")
        details.append({"loc": loc_text(err.get("loc", ())) or "body", "message": message})
    first = details[0]
    more = f" (and {len(details) - 1} more)" if len(details) > 1 else ""
    return ApiError(422, f"{first['loc']}: {first['message']}{more}", details=details)


def _field_error(loc: str, message: str) -> ApiError:
    return ApiError(422, f"{loc}: {message}", details=[{"loc": loc, "message": message}])


@router.post(
    "/api/v1/score",
    tags=["models"],
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": ScoreIn.model_json_schema()}},
        }
    },
)
async def score_hypothetical(
    request: Request, key: ApiKey = Depends(require("read"))
) -> dict[str, Any]:
    """Score a lead that is not stored ("a VP in the US who viewed pricing twice") with the
    per-lead evaluator: its profile fields and events in the body, scored with an active
    sheet (scope ``read``) or a model file's text (``admin``, as previews of drafts are: a
    model's regular expressions run in the server, and one can be made to run for hours).
    The answer has the score, band, grade, MQL flag and the explanation of every point, as a
    stored lead's does. Stores nothing."""
    state = _state(request)
    data = await read_json(request, state.settings)
    try:
        body = ScoreIn.model_validate(data)
    except ValidationError as e:
        raise _invalid(e) from None
    if body.sheet is not None and body.yaml is not None:
        raise _field_error("yaml", "give `sheet` or `yaml`, not both")
    if body.yaml is not None and not key.allows("admin"):
        raise ApiError(
            403,
            f"the key {key.name!r} has scopes {', '.join(sorted(key.scopes))}; scoring with "
            "a model file's text (`yaml`) needs 'admin' (with 'read': an active `sheet`)",
        )
    as_of_us = state.store.clock() if body.as_of is None else body.as_of
    events: list[Event] = []
    for i, ev in enumerate(body.events):
        if ev.ts is not None:
            ts_us = ev.ts
        elif ev.days_ago is not None:
            ts_us = as_of_us - round(ev.days_ago * MICROS_PER_DAY)
            if ts_us < _MIN_US:
                raise _field_error(f"events[{i}].days_ago", "goes back too far in time")
        else:
            ts_us = as_of_us
        # The fields a stored event with these properties would have.
        props = {**ev.properties, **(ev.model_extra or {})}
        item = to_text(ev.item)
        events.append(Event(ev.type, ts_us, item, ev.event_id, event_fields(ev.type, item, props)))

    def run() -> dict[str, Any]:
        version: int | None = None
        if body.yaml is not None:
            model = _parse(body.yaml)
        else:
            sheets = state.store.sheets()
            sheet = next((s for s in sheets if body.sheet in (None, s.name)), None)
            if sheet is None:
                active = ", ".join(s.name for s in sheets) or "none: send `yaml`"
                what = f"no active score sheet {body.sheet!r}" if body.sheet else "no active sheet"
                raise _field_error("sheet", f"{what} (active: {active})")
            model, version = sheet.model, sheet.version.version
        result = score_lead(model, dict(body.lead), events, from_micros(as_of_us))
        explanation = result.to_dict()
        return {
            "sheet": model.name,
            "version": version,
            "as_of": explanation["as_of"],
            "score": result.score,
            "fit": result.fit,
            "engagement": result.engagement,
            "grade": result.grade,
            "band": result.band,
            "mql": result.mql,
            "priority": result.priority,
            "groups": result.group_points,
            "explanation": explanation,
            "explanation_text": explanation_text(model, result),
        }

    return await run_in_threadpool(run)
