"""Segments over HTTP: saved, named lead lists for the web interface (see
:mod:`leadscore.store.segments`). Reading needs the ``read`` scope; saving and deleting need
``admin``, because a segment is shared by everyone who uses the interface, and ``ingest`` keys
are handed to machines (web forms, tracking pipelines) that have no business changing it.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import Field

from leadscore.service.auth import require
from leadscore.service.payloads import Body
from leadscore.service.state import ServiceState
from leadscore.service.views import iso_times
from leadscore.store.keys import ApiKey
from leadscore.store.segments import (
    delete_segment,
    get_segment,
    list_segments,
    save_segment,
)

__all__ = ["router"]

router = APIRouter(tags=["segments"])
READ = Depends(require("read"))
ADMIN = Depends(require("admin"))


def _state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.leadscore
    return state


class SegmentIn(Body):
    query: str = Field(
        max_length=8000,
        description="the lead list's query string, e.g. band=hot&grade=A,B&country=US&sort=-score "
        "(cursor and limit are dropped)",
    )
    description: str | None = Field(None, max_length=2000)


@router.get("/api/v1/segments")
async def get_segments(request: Request, _: ApiKey = READ) -> dict[str, Any]:
    """Every segment, by name."""
    state = _state(request)

    def run() -> list[dict[str, object]]:
        with state.store.db.read() as conn:
            return [s.summary() for s in list_segments(conn)]

    return {"items": iso_times(await run_in_threadpool(run))}


# A segment name may hold "/": hence the path parameters. No other route is below this prefix.
@router.get("/api/v1/segments/{name:path}")
async def get_one_segment(request: Request, name: str, _: ApiKey = READ) -> dict[str, Any]:
    """One segment: its name, query, description and when it was created and last saved."""
    state = _state(request)

    def run() -> dict[str, object]:
        with state.store.db.read() as conn:
            return get_segment(conn, name).summary()

    return iso_times(await run_in_threadpool(run))  # type: ignore[no-any-return]


@router.put(
    "/api/v1/segments/{name:path}",
    responses={201: {"description": "created"}, 200: {"description": "replaced"}},
)
async def put_segment(
    request: Request, name: str, body: SegmentIn, _: ApiKey = ADMIN
) -> JSONResponse:
    """Save a segment: create it (201) or replace its query and description (200)."""
    state = _state(request)

    def run() -> tuple[dict[str, object], bool]:
        with state.store.db.write() as conn:
            segment, created = save_segment(
                conn, name, body.query, state.store.clock(), body.description
            )
        return segment.summary(), created

    summary, created = await run_in_threadpool(run)
    return JSONResponse(iso_times(summary), status_code=201 if created else 200)


@router.delete("/api/v1/segments/{name:path}")
async def delete_one_segment(request: Request, name: str, _: ApiKey = ADMIN) -> dict[str, Any]:
    """Delete a segment; the answer is the segment as it was."""
    state = _state(request)

    def run() -> dict[str, object]:
        with state.store.db.write() as conn:
            return delete_segment(conn, name).summary()

    return iso_times(await run_in_threadpool(run))  # type: ignore[no-any-return]
