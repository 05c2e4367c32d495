"""API keys on requests: ``Authorization: Bearer <key>``, or HTTP Basic with the key as the
user name (how Segment-compatible senders pass their write key).

Verified keys are cached for :data:`CACHE_SECONDS`, so a revoked key stops working within that
time in a running server.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Awaitable, Callable

from fastapi import Request
from fastapi.concurrency import run_in_threadpool

from leadscore.service.errors import ApiError
from leadscore.service.state import ServiceState
from leadscore.store.keys import ApiKey, touch_key, verify_key

__all__ = ["CACHE_SECONDS", "LOCAL_KEY", "KeyCache", "require"]

CACHE_SECONDS = 30.0
# The challenge of every 401, the API's too: a browser that was given a key for a page of the
# web interface (HTTP Basic, realm "leadscore") resends it only below that page's path, but
# answers a challenge of the same realm with it; under a Bearer challenge the buttons of a
# page opened by a link (/leads/L9) failed. Bearer keys work all the same.
BASIC_CHALLENGE = 'Basic realm="leadscore", charset="UTF-8"'
CHALLENGE = {"WWW-Authenticate": BASIC_CHALLENGE}
MAX_KEY_TEXT = 200  # a key is lsk_, 12 hex digits, _ and 43 characters: far less
LOCAL_KEY = ApiKey("local", "no-auth mode", frozenset({"admin"}), 0, None, None)


def _token(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer":
        return value or None
    if scheme.lower() == "basic":
        try:
            user = base64.b64decode(value).decode().partition(":")[0]
        except (ValueError, UnicodeDecodeError):
            return None
        return user or None
    return None


async def _write_key(request: Request) -> str | None:
    """The ``writeKey`` in a Segment call's body: how Segment's browser library sends its key
    (a body without one, or not JSON, has none: the route says what is wrong with it)."""
    if request.method != "POST":
        return None
    try:
        body = json.loads(await request.body())
    except (ValueError, RecursionError):  # not JSON, or nested too deep: the route says so
        return None
    key = body.get("writeKey") if isinstance(body, dict) else None
    return key.strip() or None if isinstance(key, str) else None


class KeyCache:
    """Verified keys by their text, each for a short time."""

    def __init__(self, ttl: float = CACHE_SECONDS) -> None:
        self.ttl = ttl
        self._keys: dict[str, tuple[float, ApiKey | None]] = {}
        self._lock = threading.Lock()

    def cached(self, text: str) -> tuple[bool, ApiKey | None]:
        """(found, key): whether ``text`` was verified lately, and what it was found to be."""
        with self._lock:
            hit = self._keys.get(text)
        if hit is not None and hit[0] > time.monotonic():
            return True, hit[1]
        return False, None

    def forget(self, key_id: str) -> None:
        """Drop a key from the cache (it was revoked here): the next use verifies it again."""
        with self._lock:
            for text in [t for t, (_, k) in self._keys.items() if k is not None and k.id == key_id]:
                del self._keys[text]

    def get(self, text: str, verify: Callable[[str], ApiKey | None]) -> ApiKey | None:
        found, key = self.cached(text)
        if found:
            return key
        now = time.monotonic()
        key = verify(text)
        with self._lock:
            if len(self._keys) > 10_000:
                self._keys.clear()
            self._keys[text] = (now + self.ttl, key)
        return key


def require(scope: str) -> Callable[[Request], Awaitable[ApiKey]]:
    """A FastAPI dependency: the request's key, which must allow ``scope``.

    It runs on the event loop; only a key not verified in the last 30 seconds costs a trip to
    the store (in a worker thread).
    """

    async def check(request: Request) -> ApiKey:
        state: ServiceState = request.app.state.leadscore
        if state.settings.no_auth:
            return LOCAL_KEY
        text = _token(request)
        if text is None and request.url.path.startswith("/v1/"):
            text = await _write_key(request)
        if text is None:
            raise ApiError(
                401,
                "an API key is required: send `Authorization: Bearer <key>` "
                "(create one with `leadscore keys create`)",
                headers=CHALLENGE,
            )

        def verify(t: str) -> ApiKey | None:
            with state.store.db.read() as conn:
                key = verify_key(conn, t)
            if key is not None:
                with state.store.db.write() as conn:
                    touch_key(conn, key.id, state.store.clock())
            return key

        if len(text) > MAX_KEY_TEXT or "\x00" in text:  # no key looks so: no lookup
            raise ApiError(401, "the API key is unknown or revoked", headers=CHALLENGE)
        found, key = state.keys.cached(text)
        if not found:
            key = await run_in_threadpool(state.keys.get, text, verify)
        if key is None:
            raise ApiError(401, "the API key is unknown or revoked", headers=CHALLENGE)
        if not key.allows(scope):
            raise ApiError(
                403,
                f"the key {key.name!r} has scopes {', '.join(sorted(key.scopes))}; "
                f"this needs {scope!r}",
            )
        return key

    return check
