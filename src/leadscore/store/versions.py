"""Model versions: every model file posted is kept as a numbered draft; publishing one makes it
the active version of its score sheet (the sheet is the model's ``name``)."""

from __future__ import annotations

import re
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from leadscore.errors import Conflict, ModelError, ModelIssue, NotFound
from leadscore.spec import Model, parse_model
from leadscore.store.schema import ID, model_versions

__all__ = [
    "ModelVersion",
    "active_versions",
    "add_version",
    "get_version",
    "list_versions",
    "mark_published",
    "unstorable_name",
]


@dataclass(frozen=True)
class ModelVersion:
    id: int
    name: str
    version: int
    yaml: str
    status: str  # draft, published, retired
    created_us: int
    published_us: int | None

    def model(self) -> Model:
        return parse_model(self.yaml, source=f"{self.name} v{self.version}")

    def summary(self) -> dict[str, object]:
        return {
            "id": self.id,
            "name": self.name,
            "version": self.version,
            "status": self.status,
            "created_us": self.created_us,
            "published_us": self.published_us,
        }


def _row(r: sa.Row[tuple[object, ...]]) -> ModelVersion:
    m = r._mapping
    return ModelVersion(
        int(m["id"]),
        str(m["name"]),
        int(m["version"]),
        str(m["yaml"]),
        str(m["status"]),
        int(m["created_us"]),
        None if m["published_us"] is None else int(m["published_us"]),
    )


def unstorable_name(model: Model, yaml_text: str) -> ModelIssue | None:
    """The problem of a model name the store cannot keep (the spec sets no limit; the store's
    column does), at the line of the file's top-level ``name:``; None if there is none."""
    if len(model.name) <= ID:
        return None
    line = next(
        (n for n, text in enumerate(yaml_text.splitlines(), 1) if re.match(r"name\s*:", text)),
        None,
    )
    return ModelIssue(
        model.source, line, "name", f"the store keeps names of at most {ID} characters"
    )


def add_version(conn: Connection, model: Model, yaml_text: str, now_us: int) -> ModelVersion:
    """Store ``yaml_text`` (already validated as ``model``) as the next draft of its sheet.

    Posting the same text as the newest version again stores nothing and returns that version.
    """
    issue = unstorable_name(model, yaml_text)
    if issue is not None:
        raise ModelError([issue])
    newest = conn.execute(
        sa.select(model_versions)
        .where(model_versions.c.name == model.name)
        .order_by(model_versions.c.version.desc())
        .limit(1)
    ).first()
    if newest is not None and newest._mapping["yaml"] == yaml_text:
        return _row(newest)
    number = 1 if newest is None else int(newest._mapping["version"]) + 1
    new_id = conn.execute(
        model_versions.insert().values(
            name=model.name,
            version=number,
            yaml=yaml_text,
            status="draft",
            created_us=now_us,
            published_us=None,
        )
    ).inserted_primary_key
    assert new_id is not None
    return get_version(conn, model.name, number)


def get_version(conn: Connection, name: str, version: int | None = None) -> ModelVersion:
    """A version of sheet ``name``; without ``version`` the published one, else the newest."""
    q = sa.select(model_versions).where(model_versions.c.name == name)
    if version is not None:
        q = q.where(model_versions.c.version == version)
    else:
        q = q.order_by(
            (model_versions.c.status == "published").desc(), model_versions.c.version.desc()
        )
    row = conn.execute(q.limit(1)).first()
    if row is None:
        what = f"model {name!r}" + (f" version {version}" if version is not None else "")
        raise NotFound(f"no {what} in the store")
    return _row(row)


def list_versions(conn: Connection, name: str | None = None) -> list[ModelVersion]:
    q = sa.select(model_versions).order_by(model_versions.c.name, model_versions.c.version)
    if name is not None:
        q = q.where(model_versions.c.name == name)
    return [_row(r) for r in conn.execute(q)]


def active_versions(conn: Connection) -> list[ModelVersion]:
    """The published version of every sheet, by sheet name."""
    q = (
        sa.select(model_versions)
        .where(model_versions.c.status == "published")
        .order_by(model_versions.c.name)
    )
    return [_row(r) for r in conn.execute(q)]


def mark_published(conn: Connection, version: ModelVersion, now_us: int) -> ModelVersion:
    """Make ``version`` the active one of its sheet; the previously active one is retired."""
    if version.status == "published":
        raise Conflict(f"model {version.name!r} version {version.version} is already published")
    conn.execute(
        model_versions.update()
        .where(model_versions.c.name == version.name, model_versions.c.status == "published")
        .values(status="retired")
    )
    conn.execute(
        model_versions.update()
        .where(model_versions.c.id == version.id)
        .values(status="published", published_us=now_us)
    )
    return get_version(conn, version.name, version.version)
