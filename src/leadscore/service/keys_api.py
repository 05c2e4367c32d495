"""API keys over HTTP: list, create (the key's text is shown once), revoke. Everything here
needs the ``admin`` scope.

A revoked key stops working within :data:`~leadscore.service.auth.CACHE_SECONDS` in every
server process: each caches verified keys for that long.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import Field

from leadscore.errors import UsageError
from leadscore.service.auth import require
from leadscore.service.errors import ApiError
from leadscore.service.payloads import Body
from leadscore.service.state import ServiceState
from leadscore.service.views import iso_times
from leadscore.store.keys import SCOPES, ApiKey, create_key, list_keys, revoke_key
from leadscore.store.schema import ID

__all__ = ["router"]

router = APIRouter(tags=["keys"])
ADMIN = Depends(require("admin"))


def _state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.leadscore
    return state


class KeyIn(Body):
    name: str = Field(max_length=ID, description="who or what uses the key")
    scopes: list[str] = Field(
        max_length=len(SCOPES),
        description=f"one or more of {', '.join(SCOPES)} (admin allows everything)",
        json_schema_extra={"items": {"type": "string", "enum": list(SCOPES)}},
    )


@router.get("/api/v1/keys")
async def get_keys(request: Request, _: ApiKey = ADMIN) -> dict[str, Any]:
    """Every API key, oldest first, revoked ones included: id, name, scopes, when it was
    created, last used and revoked. Never the key's secret."""
    state = _state(request)

    def run() -> list[dict[str, object]]:
        with state.store.db.read() as conn:
            keys = list_keys(conn)
        # list_keys orders by creation time alone: ties (keys made in one microsecond, or
        # in one test clock tick) would come back in any order
        return [k.summary() for k in sorted(keys, key=lambda k: (k.created_us, k.id))]

    return {"items": iso_times(await run_in_threadpool(run))}


@router.post("/api/v1/keys", status_code=201)
async def post_key(request: Request, body: KeyIn, _: ApiKey = ADMIN) -> JSONResponse:
    """A new key. The answer's ``key`` is the key's full text: it is shown this once (only a
    hash of it is kept)."""
    state = _state(request)

    def run() -> tuple[dict[str, object], str]:
        with state.store.db.write() as conn:
            key, text = create_key(conn, body.name, body.scopes, state.store.clock())
        return key.summary(), text

    summary, text = await run_in_threadpool(run)
    return JSONResponse({"key": text, **iso_times(summary)}, status_code=201)


@router.delete("/api/v1/keys/{key_id}")
async def delete_key(request: Request, key_id: str, _: ApiKey = ADMIN) -> dict[str, Any]:
    """Revoke a key. This server refuses it at once; other servers on the same store within
    30 seconds (they cache verified keys for that long). Revoking a key twice is a conflict
    (409)."""
    state = _state(request)

    def run() -> dict[str, object]:
        with state.store.db.write() as conn:
            try:
                revoked = revoke_key(conn, key_id, state.store.clock())
            except UsageError as e:  # the store's one: already revoked
                raise ApiError(409, str(e)) from None
        state.keys.forget(revoked.id)
        return revoked.summary()

    return iso_times(await run_in_threadpool(run))  # type: ignore[no-any-return]
