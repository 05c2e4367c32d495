"""Validation: how the active model's scores compare with stored outcomes, and a draft model's
backtest next to the active one (the model editor's champion/challenger check)."""

from __future__ import annotations

import math
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool

from leadscore.engine.timeutil import typed_instant
from leadscore.errors import UsageError
from leadscore.service.auth import require
from leadscore.service.errors import ApiError
from leadscore.service.models_api import YAML_BODY, _model_text, _parse
from leadscore.service.state import ServiceState
from leadscore.store.keys import ApiKey
from leadscore.store.validation import outcome_counts, store_backtest, store_report
from leadscore.validation.outcomes import (
    MICROS_PER_DAY,
    Conversion,
    parse_conversion,
    parse_days,
)

__all__ = ["DRIFT_DAYS", "ValidationQuery", "conversion_of", "router", "validation_data"]

router = APIRouter()
DRIFT_DAYS = 30.0  # the Validation page compares today's scores with this many days ago


def _state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.leadscore
    return state


def _instant(value: str | None, name: str) -> int | None:
    if value is None or not value.strip():
        return None
    try:
        return typed_instant(value.strip())
    except ValueError as exc:
        raise ApiError(422, f"{name}: {exc}") from None


def conversion_of(conversion: str, horizon: str) -> Conversion:
    """The conversion that ``conversion`` (outcomes, comma-separated) and ``horizon`` name."""
    try:
        return parse_conversion(conversion, horizon, ("conversion", "horizon"))
    except UsageError as exc:
        raise ApiError(422, str(exc)) from None


class ValidationQuery:
    """The validation report's parameters, from a page's or an API call's query string."""

    def __init__(
        self,
        sheet: str | None = None,
        as_of: str | None = None,
        horizon: str = "90d",
        conversion: str = "won,opportunity",
        target_precision: float | None = None,
        capacity: float | None = None,
        drift_days: float = DRIFT_DAYS,
    ) -> None:
        if not 0 <= drift_days <= 3650:
            raise ApiError(422, "drift_days: between 0 (no drift) and 3650 days")
        if target_precision is not None and not 0 < target_precision <= 1:
            raise ApiError(422, "target_precision: a share between 0 and 1, such as 0.3")
        if capacity is not None and not 0 < capacity < math.inf:
            raise ApiError(422, "capacity: a number of MQLs a week, more than 0")
        self.sheet = sheet or None
        self.as_of_us = _instant(as_of, "as_of")
        self.horizon = horizon
        self.conversion_text = conversion
        self.conversion = conversion_of(conversion, horizon)
        self.target_precision = target_precision
        self.capacity = capacity
        self.drift_days = drift_days or None


def validation_data(state: ServiceState, query: ValidationQuery) -> dict[str, Any]:
    """The report (blocking: run it in a thread) with the stored outcomes' counts."""
    report = store_report(
        state.store,
        query.sheet,
        query.as_of_us,
        query.conversion,
        target_precision=query.target_precision,
        capacity_per_week=query.capacity,
        drift_days=query.drift_days,
    )
    with state.store.db.read() as conn:
        report["stored_outcomes"] = outcome_counts(conn)
    report["sheets"] = [s.name for s in state.store.sheets()]
    return report


@router.get("/api/v1/validation", tags=["validation"])
async def get_validation(
    request: Request,
    sheet: Annotated[str | None, Query(description="A score sheet (default: the first).")] = None,
    as_of: Annotated[
        str | None,
        Query(description="Score as of this time (default: the latest outcome - the horizon)."),
    ] = None,
    horizon: Annotated[str, Query(description="How long a conversion may take: 90d, 12w.")] = "90d",
    conversion: Annotated[
        str, Query(description="The outcomes that count, comma-separated.")
    ] = "won,opportunity",
    target_precision: Annotated[
        float | None, Query(description="Suggest a threshold for this precision (0.3 = 30%).")
    ] = None,
    capacity: Annotated[
        float | None, Query(description="Suggest a threshold for at most this many MQLs a week.")
    ] = None,
    drift_days: Annotated[
        float, Query(description="Score drift between this many days ago and now; 0: none.")
    ] = DRIFT_DAYS,
    _: ApiKey = Depends(require("read")),
) -> dict[str, Any]:
    """The validation report of a sheet's active model over the stored leads, events and
    outcomes: conversion by band, grade and cell, deciles, ROC AUC, precision and recall at
    the MQL threshold, calibration, per-rule insight and suggested thresholds; and ``drift``,
    the population stability index of the scores between ``drift_days`` ago and now."""
    query = ValidationQuery(
        sheet, as_of, horizon, conversion, target_precision, capacity, drift_days
    )
    state = _state(request)
    return await run_in_threadpool(validation_data, state, query)


@router.post("/api/v1/models/backtest", tags=["models"], openapi_extra=YAML_BODY)
async def backtest_draft(
    request: Request,
    start: Annotated[
        str | None, Query(alias="from", description="The first cut-off (default: 12 steps back).")
    ] = None,
    end: Annotated[
        str | None, Query(alias="to", description="The last cut-off (default: now).")
    ] = None,
    every: Annotated[str, Query(description="Time between cut-offs: 7d, 1w, 1d.")] = "7d",
    horizon: Annotated[str, Query(description="How long a conversion may take.")] = "90d",
    conversion: Annotated[str, Query(description="The outcomes that count.")] = "won,opportunity",
    _: ApiKey = Depends(require("admin")),
) -> dict[str, Any]:
    """Replay the stored history at cut-offs with a draft model (the YAML as the body) and the
    active version of its sheet, side by side: new MQLs per period, MQL-to-conversion within
    the horizon, conversions missed, days from first touch to MQL. Stores nothing."""
    state = _state(request)
    text = await _model_text(request, state)
    conv = conversion_of(conversion, horizon)
    try:
        step = round(parse_days(every, "every") * MICROS_PER_DAY)
    except UsageError as exc:
        raise ApiError(422, str(exc)) from None
    start_us, end_us = _instant(start, "from"), _instant(end, "to")

    def run() -> dict[str, Any]:
        model = _parse(text)
        return store_backtest(state.store, model, text, start_us, end_us, step, conv)

    return await run_in_threadpool(run)
