"""Reading leads (one, a filtered page, a history) and sales' feedback on them.

Times in responses are ISO 8601 UTC text; every ``*_us`` value of the store is renamed
(``created_us`` -> ``created_at``, ``as_of_us`` -> ``as_of``, ``ts_us`` -> ``ts``).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from leadscore.engine.timeutil import from_micros
from leadscore.service.auth import require
from leadscore.service.state import ServiceState
from leadscore.store import DISPOSITIONS, LeadQuery
from leadscore.store.keys import ApiKey
from leadscore.store.lifecycle import record_disposition, set_stage
from leadscore.store.queries import lead_view, list_leads, score_history_of

__all__ = ["iso_times", "router"]

router = APIRouter()

RESERVED_QUERY = {
    "sheet",
    "band",
    "grade",
    "stage",
    "owner",
    "mql",
    "min_score",
    "max_score",
    "q",
    "sort",
    "limit",
    "cursor",
    "explain",
}


def _time_key(key: str) -> str:
    base = key[: -len("_us")]
    return base if base in ("as_of", "ts", "at") else f"{base}_at"


def iso_times(value: Any) -> Any:
    """Store values as JSON for people: microsecond instants become ISO 8601 text."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if isinstance(k, str) and k.endswith("_us") and (v is None or isinstance(v, int)):
                out[_time_key(k)] = None if v is None else _iso(v)
            else:
                out[k] = iso_times(v)
        return out
    if isinstance(value, list):
        return [iso_times(v) for v in value]
    return value


def _iso(us: int) -> str:
    return from_micros(us).isoformat().replace("+00:00", "Z")


def _state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.leadscore
    return state


def _split(values: list[str]) -> list[str]:
    return [v.strip() for value in values for v in value.split(",") if v.strip()]


@router.get("/api/v1/leads", tags=["leads"])
async def get_leads(
    request: Request,
    sheet: str | None = Query(None, description="score sheet (default: the first active)"),
    band: list[str] = Query([], description="band(s), repeated or comma-separated"),
    grade: list[str] = Query([]),
    stage: list[str] = Query([]),
    owner: str | None = None,
    mql: bool | None = None,
    min_score: float | None = None,
    max_score: float | None = None,
    q: str | None = Query(None, max_length=200, description="text in the id or profile"),
    sort: str = Query("-score", description="score, fit, engagement, lead_id, updated, created"),
    limit: int = Query(50, ge=1, le=1000),
    cursor: str | None = None,
    _: ApiKey = Depends(require("read")),
) -> dict[str, Any]:
    """Leads matching the filters, sorted, one page at a time (``next_cursor`` gives the next
    page). Any other query parameter filters a profile field by equality: ``?country=US``."""
    state = _state(request)
    fields = {k: v for k, v in request.query_params.items() if k not in RESERVED_QUERY}
    query = LeadQuery(
        sheet=sheet,
        band=_split(band),
        grade=_split(grade),
        stage=_split(stage),
        owner=owner,
        mql=mql,
        min_score=min_score,
        max_score=max_score,
        fields=fields,
        search=q,
        sort=sort,
        limit=limit,
        cursor=cursor,
    )

    def run() -> dict[str, Any]:
        with state.store.db.read() as conn:
            sheets = [s.name for s in state.store.sheets(conn)]
            page = list_leads(conn, query, sheets)
        return {"sheet": page.sheet, "items": page.items, "next_cursor": page.next_cursor}

    return iso_times(await run_in_threadpool(run))  # type: ignore[no-any-return]


@router.get("/api/v1/leads/{lead_id:path}/history", tags=["leads"])
async def get_history(
    request: Request,
    lead_id: str,
    sheet: str | None = None,
    limit: int = Query(100, ge=1, le=1000),
    _: ApiKey = Depends(require("read")),
) -> dict[str, Any]:
    """The lead's score changes, newest first, each with its reason (event, profile, decay,
    model change, manual) and model version."""
    state = _state(request)

    def run() -> list[dict[str, Any]]:
        with state.store.db.read() as conn:
            return score_history_of(conn, lead_id, sheet, limit)

    return {"lead_id": lead_id, "items": iso_times(await run_in_threadpool(run))}


class DispositionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    disposition: str = Field(description=", ".join(DISPOSITIONS))
    reason: str | None = Field(None, max_length=2000)
    amount: float | None = Field(None, allow_inf_nan=False)


@router.post("/api/v1/leads/{lead_id:path}/disposition", tags=["leads"])
async def post_disposition(
    request: Request,
    lead_id: str,
    body: DispositionIn,
    key: ApiKey = Depends(require("ingest")),
) -> dict[str, Any]:
    """Sales' verdict: accept (stage sql), reject with a reason (disqualified), recycle to
    nurturing, won (customer) or lost. Accept, reject, won and lost are recorded as outcomes."""
    state = _state(request)

    def run() -> dict[str, Any]:
        with state.store.db.write() as conn:
            return record_disposition(
                conn,
                lead_id,
                body.disposition.strip().lower(),
                state.store.clock(),
                reason=body.reason,
                amount=body.amount,
                actor=key.name,
            )

    return await run_in_threadpool(run)


class StageIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    stage: str
    reason: str | None = Field(None, max_length=2000)


@router.post("/api/v1/leads/{lead_id:path}/stage", tags=["leads"])
async def post_stage(
    request: Request, lead_id: str, body: StageIn, key: ApiKey = Depends(require("ingest"))
) -> dict[str, Any]:
    """Move a lead to a lifecycle stage (recorded with its time, reason and key name)."""
    state = _state(request)

    def run() -> bool:
        with state.store.db.write() as conn:
            return set_stage(
                conn, lead_id, body.stage, state.store.clock(), reason=body.reason, actor=key.name
            )

    changed = await run_in_threadpool(run)
    return {"lead_id": lead_id, "stage": body.stage.strip().lower(), "changed": changed}


@router.post("/api/v1/leads/{lead_id:path}/rescore", tags=["leads"])
async def post_rescore_lead(
    request: Request, lead_id: str, _: ApiKey = Depends(require("admin"))
) -> dict[str, Any]:
    """Rescore one lead now on every sheet; a change is recorded with reason ``manual``."""
    state = _state(request)

    def run() -> dict[str, Any]:
        with state.store.db.write() as conn:
            lead_view(conn, lead_id)  # NotFound for an unknown lead
            changes = state.store.rescore_leads(conn, [lead_id], "manual", state.store.clock())
            view = lead_view(conn, lead_id)
        return {"changed": sum(c.recorded for c in changes), "scores": view["scores"]}

    return iso_times(await run_in_threadpool(run))  # type: ignore[no-any-return]


# Last: a lead id may contain "/", so this route would also match the ones above.
@router.get("/api/v1/leads/{lead_id:path}", tags=["leads"])
async def get_lead(
    request: Request,
    lead_id: str,
    explain: bool = Query(True, description="include each sheet's full explanation"),
    _: ApiKey = Depends(require("read")),
) -> dict[str, Any]:
    """A lead: profile, stage, owner and, per score sheet, score, fit, engagement, grade,
    band, MQL flag, priority and the explanation of every point."""
    state = _state(request)

    def run() -> dict[str, Any]:
        with state.store.db.read() as conn:
            view = lead_view(conn, lead_id)
            if explain:
                for sheet, score in view["scores"].items():
                    score["explanation"] = state.store.explain(conn, lead_id, sheet).to_dict()
        return view

    return iso_times(await run_in_threadpool(run))  # type: ignore[no-any-return]
