"""API keys with scopes. A key reads ``lsk_<id>_<secret>``; only a hash of the secret is kept,
so a lost key cannot be shown again, only revoked and replaced."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from leadscore.errors import NotFound, UsageError
from leadscore.store.schema import ID, api_keys

__all__ = [
    "SCOPES",
    "ApiKey",
    "create_key",
    "list_keys",
    "revoke_key",
    "touch_key",
    "verify_key",
]

# ingest: write leads and events only; read: read leads, scores, models; admin: everything
SCOPES = ("ingest", "read", "admin")
PREFIX = "lsk_"


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    scopes: frozenset[str]
    created_us: int
    revoked_us: int | None
    last_used_us: int | None

    def allows(self, scope: str) -> bool:
        return "admin" in self.scopes or scope in self.scopes

    def summary(self) -> dict[str, object]:
        return {
            "id": self.id,
            "name": self.name,
            "scopes": sorted(self.scopes),
            "created_us": self.created_us,
            "revoked_us": self.revoked_us,
            "last_used_us": self.last_used_us,
        }


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _key(row: sa.RowMapping) -> ApiKey:
    return ApiKey(
        row["id"],
        row["name"],
        frozenset(row["scopes"].split()),
        row["created_us"],
        row["revoked_us"],
        row["last_used_us"],
    )


def create_key(conn: Connection, name: str, scopes: list[str], now_us: int) -> tuple[ApiKey, str]:
    """A new key; returns it and its full text (shown once)."""
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown or not scopes:
        raise UsageError(
            f"unknown scope {', '.join(map(repr, unknown))}; scopes are {', '.join(SCOPES)}"
            if unknown
            else f"a key needs at least one scope ({', '.join(SCOPES)})"
        )
    if not name.strip():
        raise UsageError("a key needs a name (who or what uses it)")
    if len(name) > ID:
        raise UsageError(f"a key's name has at most {ID} characters, not {len(name):,}")
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(24)
    conn.execute(
        api_keys.insert().values(
            id=key_id,
            name=name.strip(),
            secret_hash=_hash(secret),
            scopes=" ".join(sorted(set(scopes))),
            created_us=now_us,
        )
    )
    row = conn.execute(sa.select(api_keys).where(api_keys.c.id == key_id)).mappings().one()
    return _key(row), f"{PREFIX}{key_id}_{secret}"


def verify_key(conn: Connection, text: str) -> ApiKey | None:
    """The key ``text`` stands for, or None when it is malformed, unknown, wrong or revoked."""
    if not text.startswith(PREFIX):
        return None
    key_id, _, secret = text[len(PREFIX) :].partition("_")
    if not key_id or not secret:
        return None
    row = conn.execute(sa.select(api_keys).where(api_keys.c.id == key_id)).mappings().first()
    if row is None or row["revoked_us"] is not None:
        return None
    if not hmac.compare_digest(row["secret_hash"], _hash(secret)):
        return None
    return _key(row)


def touch_key(conn: Connection, key_id: str, now_us: int) -> None:
    """Note when a key was last used (servers do it when they verify a key, at most every
    30 seconds per key)."""
    conn.execute(api_keys.update().where(api_keys.c.id == key_id).values(last_used_us=now_us))


def list_keys(conn: Connection) -> list[ApiKey]:
    rows = conn.execute(sa.select(api_keys).order_by(api_keys.c.created_us)).mappings()
    return [_key(r) for r in rows]


def revoke_key(conn: Connection, key_id: str, now_us: int) -> ApiKey:
    key_id = key_id.removeprefix(PREFIX).split("_")[0]
    done = conn.execute(
        api_keys.update()
        .where(api_keys.c.id == key_id, api_keys.c.revoked_us.is_(None))
        .values(revoked_us=now_us)
    )
    row = conn.execute(sa.select(api_keys).where(api_keys.c.id == key_id)).mappings().first()
    if row is None:
        raise NotFound(f"no API key {key_id!r}")
    if not done.rowcount:
        raise UsageError(f"API key {key_id!r} was already revoked")
    return _key(row)
