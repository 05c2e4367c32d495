"""API keys over HTTP, on a real socket, on SQLite and PostgreSQL: a key created over HTTP
works, a revoked one stops working once the server's cache forgets it, and only admin keys
may manage keys."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from leadscore.service import auth
from leadscore.store import Store
from leadscore.store.keys import create_key, list_keys, revoke_key
from tests.conftest import Clock

Serve = Callable[..., httpx.Client]


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _admin(store: Store) -> dict[str, str]:
    with store.db.write() as conn:
        return _bearer(create_key(conn, "ops", ["admin"], store.clock())[1])


def _error(r: httpx.Response, status: int, code: str) -> str:
    assert r.status_code == status, r.text
    error: dict[str, Any] = r.json()["error"]
    assert error["code"] == code
    return str(error["message"]) + " " + " ".join(str(d) for d in error["details"])


class MonotonicClock:
    """Stands in for ``time.monotonic`` in the key cache, so tests move its time by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def cache_clock(monkeypatch: pytest.MonkeyPatch) -> MonotonicClock:
    clock = MonotonicClock()
    # only the cache's module sees it: the event loop keeps the real clock
    monkeypatch.setattr(auth, "time", SimpleNamespace(monotonic=clock.monotonic))
    return clock


def test_a_key_created_over_http_works_and_stops_when_revoked(
    serve: Serve, store: Store, clock: Clock, cache_clock: MonotonicClock
) -> None:
    api = serve()
    admin = _admin(store)
    clock.advance(seconds=1)
    body = {"name": "crm-sync", "scopes": ["read", "ingest"]}
    r = api.post("/api/v1/keys", json=body, headers=admin)
    assert r.status_code == 201, r.text
    made = r.json()
    text = made.pop("key")
    assert text.startswith(f"lsk_{made['id']}_")
    assert made == {
        "id": made["id"],
        "name": "crm-sync",
        "scopes": ["ingest", "read"],
        "created_at": "2026-06-30T12:00:01Z",
        "revoked_at": None,
        "last_used_at": None,
    }

    clock.advance(seconds=5)
    assert api.get("/api/v1/leads", headers=_bearer(text)).status_code == 200
    listed = api.get("/api/v1/keys", headers=admin).json()["items"]
    assert [k["name"] for k in listed] == ["ops", "crm-sync"]
    assert listed[1]["last_used_at"] == "2026-06-30T12:00:06Z"
    assert all(set(k) == set(made) for k in listed)  # never the key, secret or hash
    secret = text.removeprefix(f"lsk_{made['id']}_")
    assert secret not in api.get("/api/v1/keys", headers=admin).text

    clock.advance(seconds=5)
    r = api.delete(f"/api/v1/keys/{made['id']}", headers=admin)
    assert r.status_code == 200, r.text
    assert (r.json()["id"], r.json()["revoked_at"]) == (made["id"], "2026-06-30T12:00:11Z")
    # the server that revoked it refuses it at once (it forgets its cached verification)
    msg = _error(api.get("/api/v1/leads", headers=_bearer(text)), 401, "unauthorized")
    assert "revoked" in msg
    listed = api.get("/api/v1/keys", headers=admin).json()["items"]
    assert [k["revoked_at"] for k in listed] == [None, "2026-06-30T12:00:11Z"]
    # a key revoked elsewhere (the CLI, another server) works here until the cache expires
    other = api.post("/api/v1/keys", json={"name": "b", "scopes": ["read"]}, headers=admin)
    other_text = other.json()["key"]
    assert api.get("/api/v1/leads", headers=_bearer(other_text)).status_code == 200
    with store.db.write() as conn:
        revoke_key(conn, other.json()["id"], clock())
    assert api.get("/api/v1/leads", headers=_bearer(other_text)).status_code == 200
    cache_clock.now += auth.CACHE_SECONDS + 0.001
    _error(api.get("/api/v1/leads", headers=_bearer(other_text)), 401, "unauthorized")


def test_revoking_twice_or_an_unknown_key(serve: Serve, store: Store) -> None:
    api = serve()
    admin = _admin(store)
    made = api.post("/api/v1/keys", json={"name": "x", "scopes": ["read"]}, headers=admin).json()
    assert api.delete(f"/api/v1/keys/{made['id']}", headers=admin).status_code == 200
    msg = _error(api.delete(f"/api/v1/keys/{made['id']}", headers=admin), 409, "conflict")
    assert "already revoked" in msg
    msg = _error(api.delete("/api/v1/keys/0123456789ab", headers=admin), 404, "not_found")
    assert "'0123456789ab'" in msg


@pytest.mark.parametrize(
    "body,status,code,says",
    [
        ({"name": "x", "scopes": ["read", "write"]}, 400, "bad_request", "unknown scope 'write'"),
        ({"name": "x", "scopes": []}, 400, "bad_request", "at least one scope"),
        ({"name": "  ", "scopes": ["read"]}, 400, "bad_request", "needs a name"),
        ({"name": "x" * 201, "scopes": ["read"]}, 422, "invalid", "body.name"),
        ({"name": "x"}, 422, "invalid", "body.scopes"),
        ({"name": "x", "scopes": "read"}, 422, "invalid", "body.scopes"),
        ({"name": "x", "scopes": ["read"], "secret": "s"}, 422, "invalid", "body.secret"),
    ],
)
def test_bad_key_requests_say_what_is_wrong(
    serve: Serve, store: Store, body: dict[str, Any], status: int, code: str, says: str
) -> None:
    api = serve()
    admin = _admin(store)
    assert says in _error(api.post("/api/v1/keys", json=body, headers=admin), status, code)
    with store.db.read() as conn:
        assert [k.name for k in list_keys(conn)] == ["ops"]  # nothing was created


def test_only_admin_keys_manage_keys(serve: Serve, store: Store) -> None:
    api = serve()
    with store.db.write() as conn:
        read = _bearer(create_key(conn, "dashboard", ["read"], store.clock())[1])
        ingest = _bearer(create_key(conn, "forms", ["ingest"], store.clock())[1])
        victim = create_key(conn, "victim", ["ingest"], store.clock())[0]
    for who in (read, ingest):
        msg = _error(api.get("/api/v1/keys", headers=who), 403, "forbidden")
        assert "'admin'" in msg
        body = {"name": "mine", "scopes": ["admin"]}
        _error(api.post("/api/v1/keys", json=body, headers=who), 403, "forbidden")
        _error(api.delete(f"/api/v1/keys/{victim.id}", headers=who), 403, "forbidden")
    _error(api.get("/api/v1/keys"), 401, "unauthorized")
    with store.db.read() as conn:
        assert {k.name: k.revoked_us for k in list_keys(conn)} == {
            "dashboard": None,
            "forms": None,
            "victim": None,
        }


def test_local_mode_manages_keys_without_one(serve: Serve) -> None:
    api = serve(no_auth=True)
    r = api.post("/api/v1/keys", json={"name": "later", "scopes": ["admin"]})
    assert r.status_code == 201
    assert [k["name"] for k in api.get("/api/v1/keys").json()["items"]] == ["later"]


def test_the_keys_api_is_in_the_openapi_description(serve: Serve) -> None:
    spec = serve(no_auth=True).get("/openapi.json").json()
    assert {"get", "post"} <= set(spec["paths"]["/api/v1/keys"])
    assert "delete" in spec["paths"]["/api/v1/keys/{key_id}"]
    scopes = spec["components"]["schemas"]["KeyIn"]["properties"]["scopes"]
    assert scopes["items"]["enum"] == ["ingest", "read", "admin"]
