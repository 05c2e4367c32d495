"""Reading leads (one, a filtered page, a history) and sales' feedback on them.

Times in responses are ISO 8601 UTC text; every ``*_us`` value of the store is renamed
(``created_us`` -> ``created_at``, ``as_of_us`` -> ``as_of``, ``ts_us`` -> ``ts``).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import iterate_in_threadpool, run_in_threadpool
from fastapi.responses import StreamingResponse
from pydantic import Field
from starlette.convertors import Convertor, register_url_convertor
from starlette.datastructures import QueryParams

from leadscore.engine.timeutil import iso_utc
from leadscore.errors import NotFound, UsageError
from leadscore.service.auth import require
from leadscore.service.payloads import Body
from leadscore.service.state import ServiceState
from leadscore.store import DISPOSITIONS, LeadQuery, Store
from leadscore.store.keeper import Sheet
from leadscore.store.keys import ApiKey
from leadscore.store.lifecycle import erase_lead, record_disposition, set_stage
from leadscore.store.queries import (
    LIST_PARAMETERS,
    MAX_LIMIT,
    last_activity,
    lead_view,
    list_leads,
    outcomes_of,
    recent_events,
    score_history_of,
    sparklines,
)

__all__ = ["iso_times", "lead_data", "lead_query", "leads_csv", "leads_data", "router"]

DETAIL_HISTORY = 500  # score changes on a lead's page
DETAIL_EVENTS = 200  # events on a lead's page


class LeadIdConvertor(Convertor[str]):
    """A lead id in a path: a slash that the URL escaped is one of the id's characters, not
    a step of the route (see :func:`leadscore.service.app._nul_refusal`)."""

    regex = r"[\s\S]+"  # any character, a line break too

    def convert(self, value: str) -> str:
        return value.replace("\x00", "/")

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("lead", LeadIdConvertor())

router = APIRouter()

RESERVED_QUERY = LIST_PARAMETERS  # any other query parameter filters a profile field


def _time_key(key: str) -> str:
    base = key[: -len("_us")]
    return base if base in ("as_of", "ts", "at") else f"{base}_at"


def iso_times(value: Any) -> Any:
    """Store values as JSON for people: microsecond instants become ISO 8601 text."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if isinstance(k, str) and k.endswith("_us") and (v is None or isinstance(v, int)):
                out[_time_key(k)] = None if v is None else iso_utc(v)
            else:
                out[k] = iso_times(v)
        return out
    if isinstance(value, list):
        return [iso_times(v) for v in value]
    return value


def _state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.leadscore
    return state


def _split(values: list[str]) -> list[str]:
    return [v.strip() for value in values for v in value.split(",") if v.strip()]


def lead_query(params: Mapping[str, str] | QueryParams) -> LeadQuery:
    """A lead list's filters from URL query parameters (the API's, a page's or a segment's):
    the named ones, and any other as a profile field that must equal the value."""
    multi = params.getlist if isinstance(params, QueryParams) else lambda k: [params.get(k, "")]

    def number(name: str) -> float | None:
        text = params.get(name)
        if text is None or text.strip() == "":
            return None
        try:
            value = float(text)
        except ValueError:
            raise UsageError(f"{name} must be a number, got {text!r}") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise UsageError(f"{name} must be a finite number, got {text!r}")
        return value

    mql_text = (params.get("mql") or "").strip().lower()
    if mql_text not in ("", "true", "false", "1", "0", "yes", "no"):
        raise UsageError(f"mql must be true or false, got {params.get('mql')!r}")
    limit_text = params.get("limit") or "50"
    if not limit_text.isdigit():
        raise UsageError(f"limit must be a whole number, got {limit_text!r}")
    return LeadQuery(
        sheet=params.get("sheet") or None,
        band=_split(multi("band")),
        grade=_split(multi("grade")),
        stage=_split(multi("stage")),
        owner=params.get("owner", "").strip() or None,
        mql=None if mql_text == "" else mql_text in ("true", "1", "yes"),
        min_score=number("min_score"),
        max_score=number("max_score"),
        fields={k: v for k, v in params.items() if k not in RESERVED_QUERY and v != ""},
        search=(params.get("q") or "").strip()[:200] or None,
        sort=params.get("sort") or "-score",
        limit=int(limit_text),
        cursor=params.get("cursor") or None,
    )


def sheet_labels(sheets: Sequence[Sheet]) -> dict[str, tuple[Sequence[str], Sequence[str]]]:
    """Each sheet's band and grade names, for the lead list's filters."""
    return {s.name: (s.model.band_names, s.model.grade_names) for s in sheets}


def leads_data(store: Store, query: LeadQuery, spark_days: int = 0) -> dict[str, Any]:
    """One page of a lead list: the leads with their score on the sheet, the time of their
    last event and, with ``spark_days``, their score over that many days (``spark``)."""
    with store.db.read() as conn:
        sheets = store.sheets(conn)
        page = list_leads(conn, query, [s.name for s in sheets], sheet_labels(sheets))
        ids = [item["lead_id"] for item in page.items]
        activity = last_activity(conn, ids)
        lines: dict[str, list[tuple[int, float]]] = {}
        now = store.clock()
        since = now - spark_days * 86_400_000_000
        if spark_days and page.sheet is not None:
            lines = sparklines(conn, ids, page.sheet, since, now)
    for item in page.items:
        item["last_activity_us"] = activity.get(item["lead_id"])
        if spark_days and page.sheet is not None:
            points = lines.get(item["lead_id"])
            if points is None:  # no change in the window: the current score all along
                points = [(since, item["score"]), (now, item["score"])]
            item["spark"] = [{"at_us": t, "score": v} for t, v in points]
    return {
        "sheet": page.sheet,
        "sheets": [s.name for s in sheets],
        "items": page.items,
        "next_cursor": page.next_cursor,
    }


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
    spark: int = Query(0, ge=0, le=365, description="add each lead's score over N days"),
    _: ApiKey = Depends(require("read")),
) -> dict[str, Any]:
    """Leads matching the filters, sorted, one page at a time (``next_cursor`` gives the next
    page). Any other query parameter filters a profile field by equality: ``?country=US``.
    This is the data of the web interface's lead list."""
    state = _state(request)
    query = lead_query(request.query_params)
    data = await run_in_threadpool(leads_data, state.store, query, spark)
    return iso_times(data)  # type: ignore[no-any-return]


CSV_COLUMNS = (
    "lead_id",
    "email",
    "stage",
    "owner",
    "score",
    "fit",
    "engagement",
    "grade",
    "band",
    "mql",
    "priority",
)


def leads_csv(store: Store, query: LeadQuery) -> Iterator[str]:
    """Every lead matching ``query`` (not only one page) as CSV text, in pages of 1,000:
    the score columns, then one column per profile field seen in the matching leads."""
    query = replace(query, limit=MAX_LIMIT, cursor=None)
    fields: dict[str, None] = {}
    cursor: str | None = None
    while True:  # first pass: the profile fields, for the header
        page = leads_data(store, replace(query, cursor=cursor))
        for item in page["items"]:
            fields.update(dict.fromkeys(item["profile"]))
        cursor = page["next_cursor"]
        if cursor is None:
            break
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    extra = [f for f in fields if f not in CSV_COLUMNS]
    writer.writerow([*CSV_COLUMNS, "last_activity", *map(_csv_value, extra)])  # names too
    while True:
        page = leads_data(store, replace(query, cursor=cursor))
        for item in page["items"]:
            profile = item["profile"]
            activity = item["last_activity_us"]
            writer.writerow(
                [
                    *(_csv_value(item.get(c)) for c in CSV_COLUMNS),
                    iso_utc(activity) if activity is not None else "",
                    *(_csv_value(profile.get(f)) for f in extra),
                ]
            )
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        cursor = page["next_cursor"]
        if cursor is None:
            return


def _csv_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        # a spreadsheet would run a cell starting with = + - @ as a formula
        return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


@router.get("/api/v1/leads.csv", tags=["leads"], response_class=StreamingResponse)
async def get_leads_csv(
    request: Request, _: ApiKey = Depends(require("read"))
) -> StreamingResponse:
    """Every lead matching the same filters as ``GET /api/v1/leads`` (all pages) as CSV."""
    state = _state(request)
    query = lead_query(request.query_params)
    await run_in_threadpool(list_check, state.store, query)  # bad filters: an error, not a file
    return StreamingResponse(
        iterate_in_threadpool(leads_csv(state.store, query)),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="leads.csv"'},
    )


def list_check(store: Store, query: LeadQuery) -> None:
    with store.db.read() as conn:
        sheets = store.sheets(conn)
        list_leads(conn, replace(query, limit=1), [s.name for s in sheets], sheet_labels(sheets))


@router.get("/api/v1/leads/{lead_id:lead}/history", tags=["leads"])
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


class DispositionIn(Body):
    disposition: str = Field(description=", ".join(DISPOSITIONS))
    reason: str | None = Field(None, max_length=2000)
    amount: float | None = Field(None, allow_inf_nan=False)


@router.post("/api/v1/leads/{lead_id:lead}/disposition", tags=["leads"])
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
        with state.store.db.write() as conn, _unnamed(lead_id, key):
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


@contextmanager
def _unnamed(lead_id: str, key: ApiKey) -> Iterator[None]:
    """For a key that may not read (an ingest key, perhaps in a web form), "no lead" names no
    other lead: not the one a merged id became (its CRM id, say)."""
    try:
        yield
    except NotFound:
        if key.allows("read"):
            raise
        raise NotFound(f"no lead {lead_id!r}") from None


class StageIn(Body):
    stage: str
    reason: str | None = Field(None, max_length=2000)


@router.post("/api/v1/leads/{lead_id:lead}/stage", tags=["leads"])
async def post_stage(
    request: Request, lead_id: str, body: StageIn, key: ApiKey = Depends(require("ingest"))
) -> dict[str, Any]:
    """Move a lead to a lifecycle stage (recorded with its time, reason and key name)."""
    state = _state(request)

    def run() -> bool:
        with state.store.db.write() as conn, _unnamed(lead_id, key):
            return set_stage(
                conn, lead_id, body.stage, state.store.clock(), reason=body.reason, actor=key.name
            )

    changed = await run_in_threadpool(run)
    return {"lead_id": lead_id, "stage": body.stage.strip().lower(), "changed": changed}


@router.delete("/api/v1/leads/{lead_id:lead}", tags=["leads"])
async def delete_lead(
    request: Request, lead_id: str, _: ApiKey = Depends(require("admin"))
) -> dict[str, Any]:
    """Erase a lead and everything recorded about it (a person's request to be forgotten):
    events, scores and history, outcomes, stage changes, trigger firings and their webhook
    calls, anonymous and merged ids. The answer counts what went of each."""
    state = _state(request)

    def run() -> dict[str, int]:
        with state.store.db.write() as conn:
            return erase_lead(conn, lead_id)

    return {"lead_id": lead_id, "deleted": await run_in_threadpool(run)}


@router.post("/api/v1/leads/{lead_id:lead}/rescore", tags=["leads"])
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


def lead_data(
    store: Store, lead_id: str, explain: bool = True, detail: bool = False
) -> dict[str, Any]:
    """A lead: profile, stage, owner, stage changes and, per sheet, the score with its
    explanation; with ``detail`` also its score history (every sheet, newest first), its
    newest events and its outcomes: the data of the web interface's lead page."""
    with store.db.read() as conn:
        view = lead_view(conn, lead_id)
        if explain:
            for sheet, score in view["scores"].items():
                score["explanation"] = store.explain(conn, lead_id, sheet).to_dict()
        if detail:
            view["history"] = score_history_of(conn, lead_id, None, DETAIL_HISTORY)
            view["events_total"], view["events"] = recent_events(conn, lead_id, DETAIL_EVENTS)
            view["outcomes"] = outcomes_of(conn, lead_id)
            view["sheets"] = [s.name for s in store.sheets(conn)]
    return view


# Last: a lead id may contain "/", so this route would also match the ones above.
@router.get("/api/v1/leads/{lead_id:lead}", tags=["leads"])
async def get_lead(
    request: Request,
    lead_id: str,
    explain: bool = Query(True, description="include each sheet's full explanation"),
    detail: bool = Query(
        False, description="include the score history, the newest events and the outcomes"
    ),
    _: ApiKey = Depends(require("read")),
) -> dict[str, Any]:
    """A lead: profile, stage, owner and, per score sheet, score, fit, engagement, grade,
    band, MQL flag, priority and the explanation of every point. With ``detail=true``, the
    data of the lead's page in the web interface."""
    state = _state(request)
    data = await run_in_threadpool(lead_data, state.store, lead_id, explain, detail)
    return iso_times(data)  # type: ignore[no-any-return]
