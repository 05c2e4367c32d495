"""One JSON error envelope for every error the API returns.

    {"error": {"code": "not_found", "message": "no lead 'L9'", "details": [...]}}

``code`` is stable and meant for programs; ``message`` is for people; ``details`` lists the
individual problems (a field, a line of a model file, an item of a batch) where there are some.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from leadscore.errors import (
    ConfigError,
    Conflict,
    InputError,
    LeadscoreError,
    ModelError,
    NotFound,
    StoreUnavailable,
    UsageError,
    reason_of,
)

__all__ = [
    "ApiError",
    "error_body",
    "install_error_handlers",
    "start_failure",
    "store_down",
    "unavailable",
]
log = logging.getLogger(__name__)

_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid",
    429: "too_many_requests",
    500: "internal",
    503: "unavailable",
}


class ApiError(Exception):
    """An error with its HTTP status, code, message and details."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        details: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code or _STATUS_CODES.get(status, "error")
        self.message = message
        self.details = details or []
        self.headers = headers


def error_body(
    code: str, message: str, details: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details or []}}


def _response(e: ApiError) -> JSONResponse:
    return JSONResponse(
        error_body(e.code, e.message, e.details), status_code=e.status, headers=e.headers
    )


def loc_text(loc: tuple[int | str, ...] | list[int | str]) -> str:
    """``("body", "events", 3, "type")`` -> ``body.events[3].type``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def from_leadscore(e: LeadscoreError) -> ApiError:
    if isinstance(e, StoreUnavailable):  # a sender's cue to try again
        return ApiError(503, str(e), headers={"Retry-After": "5"})
    if isinstance(e, NotFound):
        return ApiError(404, str(e))
    if isinstance(e, Conflict):
        return ApiError(409, str(e))
    if isinstance(e, (ModelError, ConfigError)):
        details = [
            {"line": i.line, "path": i.path, "message": i.message, "text": str(i)} for i in e.issues
        ]
        what = "model" if isinstance(e, ModelError) else "configuration"
        n = len(details)
        return ApiError(
            422,
            f"the {what} has {n} problem{'s' if n != 1 else ''}",
            code=f"invalid_{what}",
            details=details,
        )
    if isinstance(e, InputError):
        return ApiError(422, str(e), details=[{"message": str(p)} for p in e.problems])
    if isinstance(e, UsageError):
        return ApiError(400, str(e))
    return ApiError(500, str(e))


_LOGGED: dict[str, float] = {}  # a store's failure reason -> when it was last logged


def store_down(e: BaseException) -> bool:
    """Whether ``e`` says the database cannot be reached or written (a connection lost or
    refused, a disk full, a read-only file), not that a transaction met another (a deadlock or
    a serialization failure, SQLSTATE class 40, which is run again or reported as such)."""
    if isinstance(e, sa.exc.InterfaceError):
        return True
    if not isinstance(e, sa.exc.OperationalError):
        return False
    sqlstate = str(getattr(e.orig, "sqlstate", "") or "")
    return not sqlstate.startswith("40")


def start_failure(e: BaseException) -> str:
    """Why something failed to start, for the request that hears it: a leadscore error as it
    says it, the store out of reach as :func:`unavailable` says it, anything else with its
    type (``UndefinedTable: relation "counters" does not exist``)."""
    if isinstance(e, LeadscoreError):
        return str(e)
    if store_down(e):
        return f"the store cannot be reached or written now: {reason_of(e)}"
    orig = getattr(e, "orig", None) or e
    return f"{type(orig).__name__}: {reason_of(e)}"


def unavailable(e: BaseException) -> StoreUnavailable:
    """A database's connection or disk error as the request hears it (its first line), logged
    at most once a minute for the same reason: a store down under load failed every request
    with a traceback (155,000 lines in 13 s)."""
    reason = reason_of(e)
    now = time.monotonic()
    if now - _LOGGED.get(reason, -math.inf) >= 60:
        _LOGGED[reason] = now
        log.warning("the store cannot be reached or written: %s", reason)
    return StoreUnavailable(f"the store cannot be reached or written now: {reason}")


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, e: ApiError) -> JSONResponse:
        return _response(e)

    @app.exception_handler(LeadscoreError)
    async def leadscore_error(_: Request, e: LeadscoreError) -> JSONResponse:
        return _response(from_leadscore(e))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, e: RequestValidationError) -> JSONResponse:
        for err in e.errors():
            if err.get("type") == "json_invalid":  # as read_json answers it
                reason = (err.get("ctx") or {}).get("error")
                message = "the body is not valid JSON" + (f": {reason}" if reason else "")
                return _response(ApiError(400, message))
        details = [
            {"loc": loc_text(err.get("loc", ())), "message": err.get("msg", "")}
            for err in e.errors()
        ]
        return _response(ApiError(422, "the request is not valid", details=details))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, e: StarletteHTTPException) -> JSONResponse:
        return _response(ApiError(e.status_code, str(e.detail), headers=dict(e.headers or {})))

    @app.exception_handler(sa.exc.OperationalError)
    @app.exception_handler(sa.exc.InterfaceError)
    async def database_error(_: Request, e: Exception) -> JSONResponse:
        """The database cannot be reached or written (a server down, a disk full): a 503
        with the reason, not a 500 that closes the connection, logged once in a while."""
        if not store_down(e):
            log.error("a database error", exc_info=e)
            return _response(ApiError(500, f"internal error: {type(e).__name__}"))
        return _response(from_leadscore(unavailable(e)))

    @app.exception_handler(Exception)
    async def unexpected(_: Request, e: Exception) -> JSONResponse:  # pragma: no cover
        return _response(ApiError(500, f"internal error: {type(e).__name__}"))
