"""The service with its web interface: what ``leadscore serve`` runs."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from leadscore.errors import LeadscoreError
from leadscore.service.app import create_app as create_service
from leadscore.service.auth import BASIC_CHALLENGE
from leadscore.service.errors import ApiError, from_leadscore, loc_text
from leadscore.service.state import Settings
from leadscore.store import Store
from leadscore.ui import pages

__all__ = ["app_from_env", "create_app"]

STATIC = Path(__file__).parent / "static"
API_PREFIXES = ("/api/", "/v1/", "/docs", "/openapi.json", "/redoc", "/static/")


def is_page(request: Request) -> bool:
    """Whether a request is for a page of the interface (and an error should be a page)."""
    return not request.url.path.startswith(API_PREFIXES)


def _error_page(request: Request, e: ApiError) -> Response:
    headers = dict(e.headers or {})
    if e.status == 401:  # the browser asks for the key (user name: the key, no password)
        headers["WWW-Authenticate"] = BASIC_CHALLENGE
    return pages.render(
        request,
        "error.html",
        {"status": e.status, "message": e.message, "details": e.details},
        status_code=e.status,
        headers=headers,
    )


def create_app(settings: Settings | None = None, store: Store | None = None) -> FastAPI:
    """The service's API plus the pages of the web interface."""
    app = create_service(settings, store)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.include_router(pages.router)

    def as_api_error(e: Exception) -> ApiError:
        if isinstance(e, ApiError):
            return e
        if isinstance(e, LeadscoreError):
            return from_leadscore(e)
        if isinstance(e, RequestValidationError):
            problems = [
                f"{loc_text(err.get('loc', ()))}: {err.get('msg', '')}" for err in e.errors()
            ]
            return ApiError(422, "the address is not valid: " + "; ".join(problems))
        if isinstance(e, StarletteHTTPException):
            return ApiError(e.status_code, str(e.detail))
        return ApiError(500, f"internal error: {type(e).__name__}")

    # Errors on a page's address are pages; on the API's, its JSON envelope as before.
    for kind in (
        ApiError,
        LeadscoreError,
        RequestValidationError,
        StarletteHTTPException,
        Exception,
    ):
        handler = app.exception_handlers[kind]

        async def on_error(request: Request, e: Exception, handler: Any = handler) -> Response:
            if is_page(request):
                return _error_page(request, as_api_error(e))
            answer = handler(request, e)
            return await answer if inspect.isawaitable(answer) else answer  # type: ignore[no-any-return]

        app.add_exception_handler(kind, on_error)
    return app


def app_from_env() -> FastAPI:
    """For uvicorn's ``--factory``: settings from the environment ``leadscore serve`` set."""
    return create_app(Settings.from_env())
