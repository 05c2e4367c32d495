"""The overview of a score sheet: distribution, bands, grades, MQLs per day, new hot leads."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool

from leadscore.errors import NotFound
from leadscore.service.auth import require
from leadscore.service.state import ServiceState
from leadscore.service.views import iso_times
from leadscore.store import Store
from leadscore.store.keys import ApiKey
from leadscore.store.overview import sheet_overview

__all__ = ["overview_data", "router"]

router = APIRouter()


def overview_data(store: Store, sheet: str | None = None, days: int = 30) -> dict[str, Any]:
    """The overview of ``sheet`` (default: the first active one), with the list of sheets."""
    with store.db.read() as conn:
        sheets = store.sheets(conn)
        names = [s.name for s in sheets]
        chosen = next((s for s in sheets if s.name == sheet), None) if sheet else None
        if sheet and chosen is None:
            raise NotFound(
                f"no active score sheet {sheet!r} (active: {', '.join(names) or 'none'})"
            )
        chosen = chosen or (sheets[0] if sheets else None)
        if chosen is None:
            return {"sheet": None, "sheets": [], "leads": 0}
        data = sheet_overview(conn, chosen.name, chosen.model, store.clock(), days)
        data["sheets"] = names
        data["mql_threshold"] = chosen.model.mql_threshold
        data["model_version"] = chosen.version.version
    return data


@router.get("/api/v1/overview", tags=["leads"])
async def get_overview(
    request: Request,
    sheet: str | None = Query(None, description="score sheet (default: the first active)"),
    days: int = Query(30, ge=1, le=365, description="days of MQLs per day"),
    _: ApiKey = Depends(require("read")),
) -> dict[str, Any]:
    """How a sheet's leads are spread: score histogram, counts per band and grade, the grade x
    band matrix, MQLs per day and the leads that turned hot in the last 24 hours. The data of
    the web interface's overview."""
    state: ServiceState = request.app.state.leadscore
    data = await run_in_threadpool(overview_data, state.store, sheet, days)
    return iso_times(data)  # type: ignore[no-any-return]
