"""The pages. Each is rendered from the same function as its JSON twin (named in its
docstring); templates autoescape every value, so a lead named ``<script>`` shows as text."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import ChoiceLoader, Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup

import leadscore
from leadscore import charts
from leadscore.engine.timeutil import MICROS_PER_DAY, from_micros
from leadscore.errors import NotFound, UsageError
from leadscore.service.auth import require
from leadscore.service.errors import ApiError
from leadscore.service.overview import overview_data
from leadscore.service.state import ServiceState
from leadscore.service.validation_api import DRIFT_DAYS, ValidationQuery, validation_data
from leadscore.service.views import RESERVED_QUERY, lead_data, lead_query, leads_data
from leadscore.store import DISPOSITIONS, STAGES, Store
from leadscore.store.keys import ApiKey, list_keys
from leadscore.store.outbox import delivery_log
from leadscore.store.segments import get_segment, list_segments
from leadscore.store.triggers import firings, list_triggers
from leadscore.store.versions import get_version, list_versions
from leadscore.validation.html import TEMPLATES as REPORT_TEMPLATES
from leadscore.validation.html import format_filters, report_charts

__all__ = ["render", "router"]

router = APIRouter(include_in_schema=False)
READ = Depends(require("read"))
ADMIN = Depends(require("admin"))
SPARK_DAYS = 30
# Pages run only the server's own script and cannot be framed by another site (clickjacking
# of Publish or Revoke); inline style attributes are used by the charts and tables.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'; "
    "base-uri 'none'; form-action 'self'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}

TEMPLATES = Environment(
    loader=ChoiceLoader(
        [FileSystemLoader(Path(__file__).parent / "templates"), FileSystemLoader(REPORT_TEMPLATES)]
    ),
    autoescape=select_autoescape(default=True, default_for_string=True),
    trim_blocks=True,
    lstrip_blocks=True,
)


def _moment(us: int | None) -> datetime | None:
    return None if us is None else datetime.fromtimestamp(us / 1e6, tz=UTC)


def when(us: int | None) -> str:
    """An instant for people: ``2026-11-23 14:05 UTC``."""
    moment = _moment(us)
    return "" if moment is None else moment.strftime("%Y-%m-%d %H:%M UTC")


def ago(us: int | None, now_us: int) -> str:
    """How long ago: ``just now``, ``5 min ago``, ``3 h ago``, ``12 d ago``."""
    if us is None:
        return "never"
    seconds = (now_us - us) / 1e6
    if seconds < 0:
        return "in the future"
    if seconds < 60:
        return "just now"
    if seconds < 3600:
        return f"{int(seconds // 60)} min ago"
    if seconds < 86400:
        return f"{int(seconds // 3600)} h ago"
    if seconds < 86400 * 400:
        return f"{int(seconds // 86400)} d ago"
    return f"{seconds / 86400 / 365.25:.1f} y ago"


def points(value: float | None, signed: bool = False) -> str:
    """A score or a number of points: whole numbers without decimals, others with one."""
    if value is None:
        return ""
    if not math.isfinite(value):
        return str(value)
    text = f"{value:,.0f}" if abs(value - round(value)) < 0.005 else f"{value:,.2f}"
    if text in ("-0", "-0.00"):
        text = text[1:]
    return f"+{text}" if signed and value > 0 else text


def display_name(lead: dict[str, Any]) -> str:
    """A lead's name for people: its name fields, else its email, else its id."""
    profile = lead.get("profile") or {}
    name = profile.get("name") or " ".join(
        str(profile[k]) for k in ("first_name", "last_name") if profile.get(k)
    )
    return str(name or lead.get("email") or lead["lead_id"])


def lead_url(lead_id: str) -> str:
    from urllib.parse import quote

    return "/leads/" + quote(lead_id, safe="")


TEMPLATES.filters.update(when=when, points=points, name=display_name, lead_url=lead_url)
format_filters(TEMPLATES)
TEMPLATES.globals.update(version=leadscore.__version__, sparkline=charts.sparkline)


def render(
    request: Request,
    template: str,
    context: dict[str, Any],
    *,
    status_code: int = 200,
    headers: dict[str, str] | None = None,
) -> HTMLResponse:
    state: ServiceState | None = getattr(request.app.state, "leadscore", None)
    now = state.store.clock() if state is not None else 0
    page = TEMPLATES.get_template(template).render(
        request=request,
        path=request.url.path,
        now_us=now,
        ago=lambda us: ago(us, now),
        no_auth=bool(state and state.settings.no_auth),
        **context,
    )
    return HTMLResponse(page, status_code=status_code, headers={**PAGE_HEADERS, **(headers or {})})


def _state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.leadscore
    return state


# --- the lead list ----------------------------------------------------------------------------


def _filters(request: Request) -> dict[str, Any]:
    """The filters of the page's URL as the form shows them."""
    params = request.query_params
    return {
        "q": params.get("q", ""),
        "band": [v for b in params.getlist("band") for v in b.split(",") if v],
        "grade": [v for g in params.getlist("grade") for v in g.split(",") if v],
        "stage": [v for s in params.getlist("stage") for v in s.split(",") if v],
        "owner": params.get("owner", ""),
        # as the list reads it (a segment saved with mql=yes shows "MQL only")
        "mql": {"1": "true", "yes": "true", "0": "false", "no": "false"}.get(
            params.get("mql", "").lower(), params.get("mql", "").lower()
        ),
        "min_score": params.get("min_score", ""),
        "max_score": params.get("max_score", ""),
        "sort": params.get("sort", "-score"),
        "sheet": params.get("sheet", ""),
        "fields": {k: v for k, v in params.items() if k not in RESERVED_QUERY and v},
    }


def _leads_page(store: Store, request: Request) -> dict[str, Any]:
    query = lead_query(request.query_params)
    data = leads_data(store, query, SPARK_DAYS)
    with store.db.read() as conn:
        sheets = store.sheets(conn)
        segments = [seg.summary() for seg in list_segments(conn)]
    sheet = next((s for s in sheets if s.name == data["sheet"]), None)
    for item in data["items"]:
        spark = item.get("spark") or []
        item["spark_svg"] = charts.sparkline(
            [(p["at_us"], p["score"]) for p in spark], label=f"{SPARK_DAYS} days: "
        )
    filters = _filters(request)
    sort = filters["sort"]
    sort_urls = {}
    for key in ("score", "fit", "engagement", "lead_id", "updated", "created"):
        flip = key if sort == f"-{key}" else f"-{key}"
        if key == "lead_id" and sort not in ("lead_id", "-lead_id"):
            flip = key  # names read best A to Z first
        sort_urls[key] = _url_with(request, sort=flip)
    return {
        **data,
        "bands": list(sheet.model.band_names) if sheet else [],
        "grades": list(sheet.model.grade_names) if sheet else [],
        "stages": STAGES,
        "segments": segments,
        "filters": filters,
        "sort_urls": sort_urls,
        "field_urls": {f: _url_with(request, **{f: None}) for f in filters["fields"]},
        "next_url": _url_with(request, cursor=data["next_cursor"]) if data["next_cursor"] else "",
        "first_url": _url_with(request) if request.query_params.get("cursor") else "",
        "export_url": "/api/v1/leads.csv?" + _url_with(request, segment=None).partition("?")[2],
        "filter_query": _url_with(request, segment=None).partition("?")[2],
        "segment": request.query_params.get("segment", ""),
        "spark_days": SPARK_DAYS,
    }


def _url_with(request: Request, /, **changes: str | None) -> str:
    """This page's URL with some parameters changed (None: removed), on its first page."""
    params = [
        (k, v)
        for k, v in request.query_params.multi_items()
        if k not in changes and k != "cursor" and v != ""
    ]
    params += [(k, v) for k, v in changes.items() if v]
    return request.url.path + ("?" + urlencode(params) if params else "")


@router.get("/", response_class=HTMLResponse)
async def leads_page(request: Request, _: ApiKey = READ) -> Response:
    """Leads ranked by score; twin: ``GET /api/v1/leads?spark=30``."""
    state = _state(request)
    segment = request.query_params.get("segment")
    if segment and len(request.query_params) == 1:  # open a saved segment: its filters

        def find() -> str:
            with state.store.db.read() as conn:
                return get_segment(conn, segment).query

        query = await run_in_threadpool(find)
        if query:  # an empty one is the whole list: this page as it is
            target = "/?" + query + "&" + urlencode({"segment": segment})
            return RedirectResponse(target, status_code=303)
    items = request.query_params.multi_items()
    if any(v == "" or k in ("_field", "_value") for k, v in items):
        # the filter form: drop empty fields, and turn "field, value" into field=value
        params = [(k, v) for k, v in items if v != "" and k not in ("_field", "_value")]
        field = request.query_params.get("_field", "").strip()
        if field:
            if field in RESERVED_QUERY:
                raise UsageError(f"{field!r} is not a profile field; use its own filter")
            params.append((field, request.query_params.get("_value", "").strip()))
        return RedirectResponse("/?" + urlencode(params) if params else "/", status_code=303)
    data = await run_in_threadpool(_leads_page, state.store, request)
    return render(request, "leads.html", data)


# --- one lead ---------------------------------------------------------------------------------


def _lead_page(store: Store, lead_id: str) -> dict[str, Any]:
    data = lead_data(store, lead_id, explain=True, detail=True)
    now = store.clock()
    with store.db.read() as conn:
        sheets = {s.name: s for s in store.sheets(conn)}
    charts_by_sheet: dict[str, Markup] = {}
    for name in data["scores"]:
        changes = sorted((h for h in data["history"] if h["sheet"] == name), key=lambda h: h["id"])
        pts = [(int(h["as_of_us"]), float(h["new_score"]), str(h["reason"])) for h in changes]
        sheet = sheets.get(name)
        thresholds: list[tuple[str, float]] = []
        if sheet is not None:
            thresholds = [(b, v) for b, v in sheet.model.bands if v > float("-inf")]
            if sheet.model.mql_threshold is not None:
                thresholds.append(("MQL", sheet.model.mql_threshold))
        charts_by_sheet[name] = charts.step_chart(pts, until_us=now, thresholds=thresholds)
    data["history_charts"] = charts_by_sheet
    data["dispositions"] = list(DISPOSITIONS)
    data["stages"] = STAGES
    data["display_name"] = display_name(data)
    return data


@router.get("/leads/{lead_id:path}", response_class=HTMLResponse)
async def lead_page(request: Request, lead_id: str, _: ApiKey = READ) -> Response:
    """One lead; twin: ``GET /api/v1/leads/{id}?detail=true``."""
    data = await run_in_threadpool(_lead_page, _state(request).store, lead_id)
    return render(request, "lead.html", data)


# --- overview ---------------------------------------------------------------------------------

BAND_COLOURS = ("#93c5fd", "#60a5fa", "#f59e0b", "#ef4444", "#b91c1c", "#7f1d1d")


def _overview_page(store: Store, sheet: str | None) -> dict[str, Any]:
    data = overview_data(store, sheet)
    if data.get("sheet") is None:
        return data
    hist = data["histogram"]
    data["histogram_svg"] = charts.bar_chart(
        [
            (
                points(b["from"]),
                b["leads"],
                f"{points(b['from'])} to {points(b['to'])}: {b['leads']:,} leads",
            )
            for b in hist["bins"]
        ],
        x_label=f"score (points, bins of {points(hist['width'])})",
        y_label="leads",
    )
    days = data["mqls_per_day"]
    data["mqls_svg"] = charts.bar_chart(
        [
            (
                datetime.fromtimestamp(d["day_us"] / 1e6, tz=UTC).strftime("%d %b"),
                d["mqls"],
                f"{when(d['day_us'])[:10]}: {d['mqls']:,} new MQLs",
            )
            for d in days
        ],
        x_label="day (UTC)",
        y_label="new MQLs",
        colours=["#059669"] * len(days),
    )
    data["mqls_30d"] = sum(d["mqls"] for d in days)
    matrix = data["matrix"]
    data["matrix_peak"] = max(
        (n for row in matrix["counts"].values() for n in row.values()), default=0
    )
    return data


@router.get("/overview", response_class=HTMLResponse)
async def overview_page(
    request: Request, sheet: str | None = Query(None), _: ApiKey = READ
) -> Response:
    """Distribution, bands, grades, MQLs per day; twin: ``GET /api/v1/overview``."""
    data = await run_in_threadpool(_overview_page, _state(request).store, sheet)
    return render(request, "overview.html", data)


# --- the model editor -------------------------------------------------------------------------


def _model_page(store: Store, name: str | None, version: int | None) -> dict[str, Any]:
    with store.db.read() as conn:
        sheets = store.sheets(conn)
        versions = list_versions(conn)
        names = sorted({v.name for v in versions})
        if name is None:
            name = sheets[0].name if sheets else (names[0] if names else None)
        if name is None:
            return {"name": None, "names": [], "versions": [], "yaml": "", "backtest_from": ""}
        if name not in names:
            raise NotFound(f"no model {name!r} (models: {', '.join(names) or 'none'})")
        if version is None:  # the newest: a draft saved after the active version is kept
            version = max(v.version for v in versions if v.name == name)
        shown = get_version(conn, name, version)
    mine = [v.summary() for v in versions if v.name == name]
    active = next((v["version"] for v in mine if v["status"] == "published"), None)
    return {
        "name": name,
        "names": names,
        "versions": sorted(mine, key=lambda v: -int(str(v["version"]))),
        "active": active,
        "shown": shown.summary(),
        "yaml": shown.yaml,
        "backtest_from": from_micros(store.clock() - 12 * 7 * MICROS_PER_DAY).date().isoformat(),
    }


@router.get("/model", response_class=HTMLResponse)
async def model_page(
    request: Request,
    name: str | None = Query(None),
    version: int | None = Query(None, ge=1, le=2**31 - 1),
    _: ApiKey = READ,
) -> Response:
    """The model editor; twins: ``GET /api/v1/models`` and ``GET /api/v1/models/{name}``."""
    data = await run_in_threadpool(_model_page, _state(request).store, name, version)
    return render(request, "model.html", data)


# --- validation -------------------------------------------------------------------------------


def _optional_number(value: str | None, name: str) -> float | None:
    if value is None or not value.strip():
        return None
    try:
        return float(value.strip().rstrip("%")) / (100 if value.strip().endswith("%") else 1)
    except ValueError:
        raise ApiError(422, f"{name}: {value!r} is not a number") from None


def _validation_page(state: ServiceState, query: ValidationQuery) -> dict[str, Any]:
    try:
        report = validation_data(state, query)
    except NotFound as exc:
        if state.store.sheets():
            raise
        return {"r": None, "message": str(exc), "query": query}
    return {"r": report, "charts": report_charts(report), "query": query}


@router.get("/validation", response_class=HTMLResponse)
async def validation_page(
    request: Request,
    sheet: str | None = Query(None),
    as_of: str | None = Query(None),
    horizon: str = Query("90d"),
    conversion: str = Query("won,opportunity"),
    target_precision: str | None = Query(None),
    capacity: str | None = Query(None),
    drift_days: float = Query(DRIFT_DAYS),
    _: ApiKey = READ,
) -> Response:
    """How the active model's scores compare with outcomes; twin: ``GET /api/v1/validation``."""
    query = ValidationQuery(
        sheet,
        as_of,
        horizon,
        conversion,
        _optional_number(target_precision, "target precision"),
        _optional_number(capacity, "capacity"),
        drift_days,
    )
    data = await run_in_threadpool(_validation_page, _state(request), query)
    return render(request, "validation.html", data)


# --- settings ---------------------------------------------------------------------------------


def _triggers_page(store: Store) -> dict[str, Any]:
    with store.db.read() as conn:
        items = [t.summary() for t in list_triggers(conn)]
        recent = firings(conn, limit=50)
        log = delivery_log(conn, limit=50)
    return {"triggers": items, "firings": recent, "deliveries": log}


@router.get("/settings/triggers", response_class=HTMLResponse)
async def triggers_page(request: Request, _: ApiKey = ADMIN) -> Response:
    """Thresholds and actions; twins: ``/api/v1/triggers``, ``/firings``, ``/deliveries``."""
    data = await run_in_threadpool(_triggers_page, _state(request).store)
    return render(request, "triggers.html", data)


def _keys_page(store: Store) -> dict[str, Any]:
    with store.db.read() as conn:
        return {"keys": [k.summary() for k in list_keys(conn)]}


@router.get("/settings/keys", response_class=HTMLResponse)
async def keys_page(request: Request, _: ApiKey = ADMIN) -> Response:
    """API keys; twin: ``GET /api/v1/keys``."""
    data = await run_in_threadpool(_keys_page, _state(request).store)
    return render(request, "keys.html", data)
