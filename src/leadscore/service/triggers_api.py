"""Thresholds and actions over HTTP: the triggers file, their firings, the webhook delivery
log, re-delivery and a test send. Everything here needs the ``admin`` scope, as triggers hold
webhook secrets (shown masked)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import Field, StrictBool, field_validator

from leadscore.service.auth import require
from leadscore.service.errors import ApiError
from leadscore.service.models_api import YAML_TYPES
from leadscore.service.payloads import Body
from leadscore.service.state import ServiceState
from leadscore.service.views import iso_times
from leadscore.store.keys import ApiKey
from leadscore.store.outbox import delivery_log, outbox_entry, redeliver, send_test
from leadscore.store.triggers import (
    firings,
    list_triggers,
    parse_triggers,
    save_triggers,
    set_trigger_enabled,
)
from leadscore.store.webhooks import MAX_URL, check_webhook_url, shown_url

__all__ = ["router"]

router = APIRouter(tags=["triggers"])
ADMIN = Depends(require("admin"))


def _state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.leadscore
    return state


@router.get("/api/v1/triggers")
async def get_triggers(request: Request, _: ApiKey = ADMIN) -> dict[str, Any]:
    """Every trigger, in firing order, with webhook secrets masked."""
    state = _state(request)

    def run() -> list[dict[str, Any]]:
        with state.store.db.read() as conn:
            return [t.summary() for t in list_triggers(conn)]

    return {"items": iso_times(await run_in_threadpool(run))}


@router.put(
    "/api/v1/triggers",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/yaml": {"schema": {"type": "string"}}},
        }
    },
)
async def put_triggers(request: Request, _: ApiKey = ADMIN) -> dict[str, Any]:
    """Replace every trigger with the triggers file in the body (YAML). Errors come back all
    at once with their lines; nothing changes unless the whole file is valid."""
    state = _state(request)
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind and kind not in (*YAML_TYPES, "application/json"):  # as a model file
        raise ApiError(415, f"send the triggers file as application/yaml, not {kind}")
    body = await request.body()  # bounded before the route (app.BodyLimit)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "the triggers file is not UTF-8 text") from None
    if not text.strip():  # most likely a mistake, not a wish to drop every trigger
        raise ApiError(
            400, "the body is empty: send the triggers file (`triggers: []` removes every trigger)"
        )

    def run() -> list[dict[str, Any]]:
        sheets = {s.name: s.model for s in state.store.sheets()}
        specs = parse_triggers(text, "triggers.yaml", sheets=sheets)
        with state.store.db.write() as conn:
            save_triggers(conn, specs, state.store.clock())
            return [t.summary() for t in list_triggers(conn)]

    return {"items": iso_times(await run_in_threadpool(run))}


class EnabledIn(Body):
    enabled: StrictBool  # true or false, not "no" or 0


@router.patch("/api/v1/triggers/{trigger_id}")
async def patch_trigger(
    request: Request, trigger_id: str, body: EnabledIn, _: ApiKey = ADMIN
) -> dict[str, Any]:
    """Switch a trigger on or off."""
    state = _state(request)

    def run() -> dict[str, Any]:
        with state.store.db.write() as conn:
            t = set_trigger_enabled(conn, trigger_id, body.enabled, state.store.clock())
        return t.summary()

    return iso_times(await run_in_threadpool(run))  # type: ignore[no-any-return]


@router.get("/api/v1/firings")
async def get_firings(
    request: Request,
    lead_id: str | None = None,
    trigger_id: str | None = None,
    limit: int = Query(100, ge=1, le=1000),
    before_id: int | None = Query(
        None, ge=1, le=2**63 - 1, description="page: firings older than this id"
    ),
    _: ApiKey = ADMIN,
) -> dict[str, Any]:
    """Trigger firings, newest first, each with the transition and what its actions did."""
    state = _state(request)

    def run() -> list[dict[str, Any]]:
        with state.store.db.read() as conn:
            return firings(
                conn, lead_id=lead_id, trigger_id=trigger_id, limit=limit, before_id=before_id
            )

    return {"items": iso_times(await run_in_threadpool(run))}


@router.get("/api/v1/deliveries")
async def get_deliveries(
    request: Request,
    status: Literal["pending", "delivered", "dead"] | None = None,
    trigger_id: str | None = None,
    lead_id: str | None = None,
    limit: int = Query(50, ge=1, le=1000),
    before_id: int | None = Query(None, ge=1, le=2**63 - 1),
    _: ApiKey = ADMIN,
) -> dict[str, Any]:
    """Webhook calls (the outbox), newest first, with every attempt: when, the receiver's
    status or the error, and how long it took."""
    state = _state(request)

    def run() -> list[dict[str, Any]]:
        with state.store.db.read() as conn:
            return delivery_log(
                conn,
                status=status,
                trigger_id=trigger_id,
                lead_id=lead_id,
                limit=limit,
                before_id=before_id,
            )

    return {"items": iso_times(await run_in_threadpool(run))}


@router.post("/api/v1/deliveries/{outbox_id}/redeliver")
async def post_redeliver(
    request: Request, outbox_id: Annotated[int, Path(ge=1, le=2**63 - 1)], _: ApiKey = ADMIN
) -> dict[str, Any]:
    """Send a webhook call again (e.g. one that gave up, status ``dead``) at the next pass.
    One delivered or dead goes as a new delivery, with a new ``delivery_id`` (the
    ``X-Leadscore-Delivery`` header), which a receiver that drops repeats by id takes."""
    state = _state(request)

    def run() -> dict[str, Any]:
        with state.store.db.write() as conn:
            redeliver(conn, outbox_id, state.store.clock())
            return outbox_entry(conn, outbox_id)

    return iso_times(await run_in_threadpool(run))  # type: ignore[no-any-return]


class WebhookTestIn(Body):
    url: str = Field(max_length=MAX_URL)
    secret: str | None = Field(None, min_length=1, max_length=200)
    format: Literal["json", "slack"] = "json"

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        return check_webhook_url(value)  # as a triggers file's webhook


@router.post("/api/v1/webhooks/test")
async def post_webhook_test(
    request: Request, body: WebhookTestIn, _: ApiKey = ADMIN
) -> dict[str, Any]:
    """POST a sample firing (a made-up lead) to a URL once, signed like a real one, and say
    what the receiver answered (within the server's --webhook-timeout, as a real call).
    Nothing is stored."""
    state = _state(request)
    attempt = await run_in_threadpool(
        lambda: send_test(
            body.url, body.secret, body.format, timeout_s=state.settings.webhook_timeout
        )
    )
    return attempt.summary()


@router.post("/api/v1/triggers/{trigger_id}/test")
async def post_trigger_test(request: Request, trigger_id: str, _: ApiKey = ADMIN) -> dict[str, Any]:
    """Send a sample firing to each webhook of a trigger, signed with its stored secret, and
    say what each receiver answered (the settings page's *send test* button)."""
    state = _state(request)

    def run() -> list[dict[str, Any]]:
        with state.store.db.read() as conn:
            found = [t for t in list_triggers(conn) if t.id == trigger_id]
        if not found:
            raise ApiError(404, f"no trigger {trigger_id!r}")
        hooks = [a.webhook for a in found[0].spec.actions if a.webhook is not None]
        if not hooks:
            raise ApiError(400, f"the trigger {trigger_id!r} has no webhook action")
        return [
            {
                "url": shown_url(h.url),
                **send_test(
                    h.url,
                    h.secret,
                    h.format,
                    timeout_s=state.settings.webhook_timeout,
                    trigger_id=trigger_id,
                ).summary(),
            }
            for h in hooks
        ]

    return {"trigger_id": trigger_id, "items": await run_in_threadpool(run)}
