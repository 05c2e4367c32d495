"""Models and rescoring: post a model file as a draft, publish a version, rescore on demand."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, PlainTextResponse

from leadscore.service.auth import require
from leadscore.service.errors import ApiError
from leadscore.service.state import ServiceState
from leadscore.service.views import iso_times
from leadscore.store.keys import ApiKey
from leadscore.store.versions import get_version, list_versions

__all__ = ["router"]

router = APIRouter()

YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml", "text/plain")


def _state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.leadscore
    return state


@router.post(
    "/api/v1/models",
    tags=["models"],
    status_code=201,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/yaml": {"schema": {"type": "string"}}},
        }
    },
)
async def post_model(request: Request, _: ApiKey = Depends(require("admin"))) -> JSONResponse:
    """Validate a model file (the YAML as the body) and store it as a new draft version of the
    sheet named in it. Errors come back with their lines. Posting the newest version's exact
    text again creates nothing (200)."""
    state = _state(request)
    kind = request.headers.get("content-type", "").split(";")[0].strip()
    if kind and kind not in (*YAML_TYPES, "application/json"):
        raise ApiError(415, f"send the model file as application/yaml, not {kind}")
    body = await request.body()
    if len(body) > state.settings.max_body_bytes:
        raise ApiError(413, f"the model is larger than {state.settings.max_body_bytes:,} bytes")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "the model file is not UTF-8 text") from None

    def run() -> tuple[dict[str, Any], bool]:
        with state.store.db.read() as conn:
            before = len(list_versions(conn))
        version = state.store.add_model(text, source="model.yaml")
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
    report = await run_in_threadpool(
        lambda: state.store.publish(name, version, fire_triggers=fire_triggers)
    )
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
    report = await run_in_threadpool(
        lambda: state.store.rescore_all("decay", fire_triggers=fire_triggers)
    )
    return iso_times(asdict(report))  # type: ignore[no-any-return]
