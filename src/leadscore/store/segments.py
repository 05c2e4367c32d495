"""Segments: saved, named lead lists. A segment is a name plus the URL query string of a lead
list's filters and sort (``band=hot&grade=A,B&country=US&sort=-score``), so the web interface
can show the list again with one click. (Not to be confused with Segment, the tracking service
whose calls :mod:`leadscore.service.ingest` accepts.)

A query is checked when it is saved: it must parse as a query string, and the lead list's own
parameters must hold values the list accepts. Any other name is a profile field filter
(``country=US``), as in the lead list. The page position (``cursor``, ``limit``) and a
``segment`` parameter are dropped: a segment is a list, not a page of one, and does not name
another segment. So are parameters with an empty value (``min_score=``, as a web form sends
an empty field): the web pages read them as "any", where the JSON API refuses some of them.
"""

from __future__ import annotations

import math
import unicodedata
from dataclasses import dataclass
from urllib.parse import parse_qsl

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from leadscore.errors import NotFound, UsageError
from leadscore.spec import parse_model
from leadscore.store.leads import STAGES
from leadscore.store.queries import LIST_PARAMETERS, SORTS, spelt_label
from leadscore.store.schema import ID, TEXT_FIELD, segments
from leadscore.store.versions import active_versions

__all__ = [
    "LIST_PARAMETERS",
    "MAX_NAME",
    "MAX_QUERY",
    "Segment",
    "check_name",
    "check_query",
    "delete_segment",
    "get_segment",
    "list_segments",
    "save_segment",
]

DROPPED = frozenset({"cursor", "limit", "segment"})
REPEATABLE = frozenset({"band", "grade", "stage"})  # the others take one value
MQL_VALUES = ("true", "false", "1", "0", "yes", "no")
MAX_NAME = 100
MAX_QUERY = TEXT_FIELD  # characters, once the dropped parameters are gone
MAX_SEARCH = 200  # the lead list's longest `q`
MAX_SPARK_DAYS = 365  # the lead list's longest `spark`


@dataclass(frozen=True)
class Segment:
    name: str
    query: str
    description: str | None
    created_us: int
    updated_us: int

    def summary(self) -> dict[str, object]:
        return {
            "name": self.name,
            "query": self.query,
            "description": self.description,
            "created_us": self.created_us,
            "updated_us": self.updated_us,
        }


def _has_control(text: str) -> bool:
    return any(unicodedata.category(c) == "Cc" for c in text)


def check_name(name: str) -> str:
    """``name`` when it can name a segment: 1 to 100 characters, not blank, without spaces
    around it or control characters; else a UsageError saying why."""
    if not name.strip():
        raise UsageError("a segment needs a name (1 to 100 characters, not blank)")
    if len(name) > MAX_NAME:
        raise UsageError(
            f"a segment name has at most {MAX_NAME} characters, got {len(name)}: {name[:40]!r}..."
        )
    if name != name.strip():
        raise UsageError(f"a segment name must not start or end with a space: {name!r}")
    if _has_control(name):
        raise UsageError(f"a segment name must not hold control characters: {name!r}")
    return name


def _check_value(key: str, value: str) -> None:
    """A lead list parameter's value, as the list would accept it."""
    if key == "sort" and value.removeprefix("-") not in SORTS:  # one "-" only, as the list
        raise UsageError(
            f"the query's sort={value!r} is not a sort of the lead list; "
            f"use one of {', '.join(SORTS)} (- for descending)"
        )
    if key == "stage":  # empty parts are dropped, as the list drops them
        unknown = [v for v in value.split(",") if v.strip() and v.strip().lower() not in STAGES]
        if unknown:
            raise UsageError(
                f"the query's stage={unknown[0]!r} is not a stage; stages are {', '.join(STAGES)}"
            )
    if key == "mql" and value.lower() not in MQL_VALUES:
        raise UsageError(f"the query's mql={value!r} must be true or false")
    if key in ("min_score", "max_score"):
        try:
            number = float(value)
        except ValueError:
            raise UsageError(f"the query's {key}={value!r} must be a number") from None
        if not math.isfinite(number):
            raise UsageError(f"the query's {key}={value!r} must be a finite number")
    if key == "q" and len(value) > MAX_SEARCH:
        raise UsageError(f"the query's q has at most {MAX_SEARCH} characters, got {len(value)}")
    if key == "spark" and not (
        value.isascii() and value.isdecimal() and int(value) <= MAX_SPARK_DAYS
    ):
        raise UsageError(
            f"the query's spark={value!r} must be a whole number of days, 0 to {MAX_SPARK_DAYS}"
        )
    if key in ("sheet", "owner") and len(value) > ID:
        raise UsageError(f"the query's {key} has at most {ID} characters, got {len(value)}")


def check_query(query: str) -> str:
    """The query string to keep for a segment: ``query`` without a leading ``?``, without
    the dropped parameters (``cursor``, ``limit``, ``segment``) and those with an empty value,
    each kept parameter exactly as written. A UsageError names the first problem.

    >>> check_query("?band=hot&grade=A,B&country=US&sort=-score&cursor=WzEsIkwxIl0&limit=50")
    'band=hot&grade=A,B&country=US&sort=-score'
    """
    text = query.strip().removeprefix("?")
    if len(text) > 4 * MAX_QUERY:
        raise UsageError(f"the query has at most {MAX_QUERY} characters, got {len(text)}")
    try:
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=True, errors="strict")
    except ValueError as e:  # also UnicodeDecodeError: %-escapes that are not UTF-8
        raise UsageError(f"the query {text[:80]!r} is not a URL query string: {e}") from None
    pieces = text.split("&") if text else []
    if len(pieces) != len(pairs):  # pragma: no cover - strict parsing splits on "&" alone
        raise UsageError(f"the query {text[:80]!r} is not a URL query string")
    kept: list[str] = []
    seen: set[str] = set()
    for piece, (key, value) in zip(pieces, pairs, strict=True):
        if not key.strip():
            raise UsageError(f"the query has a parameter without a name: {piece!r}")
        if _has_control(key) or _has_control(value):
            raise UsageError(f"the query's {key!r} holds a control character")
        if key in DROPPED or value == "":  # an empty value means "any" in the lead list
            continue
        if key in LIST_PARAMETERS:
            if key in seen and key not in REPEATABLE:
                raise UsageError(f"the query gives {key} more than once")
            _check_value(key, value)
        elif len(key) > ID:
            raise UsageError(f"the query's field name {key[:40]!r}... is too long (max {ID})")
        seen.add(key)
        kept.append(piece)
    out = "&".join(kept)
    if len(out) > MAX_QUERY:
        raise UsageError(f"the query has at most {MAX_QUERY} characters, got {len(out)}")
    return out


def _check_description(description: str | None) -> str | None:
    if description is None or not description.strip():
        return None
    if len(description) > TEXT_FIELD:
        raise UsageError(
            f"a segment description has at most {TEXT_FIELD} characters, got {len(description)}"
        )
    if "\x00" in description:
        raise UsageError("a segment description must not hold the NUL character")
    return description


def _segment(row: sa.RowMapping) -> Segment:
    return Segment(
        row["name"], row["query"], row["description"], row["created_us"], row["updated_us"]
    )


def list_segments(conn: Connection) -> list[Segment]:
    """Every segment, by name."""
    rows = conn.execute(sa.select(segments).order_by(segments.c.name)).mappings()
    return [_segment(r) for r in rows]


def get_segment(conn: Connection, name: str) -> Segment:
    row = conn.execute(sa.select(segments).where(segments.c.name == name)).mappings().first()
    if row is None:
        raise NotFound(f"no segment {name!r}")
    return _segment(row)


def save_segment(
    conn: Connection, name: str, query: str, now_us: int, description: str | None = None
) -> tuple[Segment, bool]:
    """Create the segment ``name``, or replace its query and description (keeping when it was
    created). Returns the segment as stored and whether it is new."""
    name = check_name(name)
    text = check_query(query)
    params = parse_qsl(text)
    sheet = dict(params).get("sheet")
    versions = {v.name: v for v in active_versions(conn)}
    if sheet is not None and sheet not in versions:  # opened, the list would answer 404
        raise UsageError(
            f"the query's sheet={sheet!r} is no active score sheet "
            f"(active: {', '.join(versions) or 'none'})"
        )
    # bands and grades as the list takes them: the sheet's model's (in any case), - for none
    chosen = versions.get(sheet) if sheet is not None else next(iter(versions.values()), None)
    if chosen is not None:
        model = parse_model(chosen.yaml, chosen.name)
        for key, names in (("band", model.band_names), ("grade", model.grade_names)):
            for value in (v.strip() for k, vs in params if k == key for v in vs.split(",")):
                if value and value != "-" and spelt_label(value, names) is None:
                    listed = ", ".join(names) or f"it has no {key}s"
                    raise UsageError(
                        f"the query's {key}={value!r} is not a {key} of sheet {chosen.name!r}: "
                        f"{listed} (- for none)"
                    )
    values = {"query": text, "description": _check_description(description), "updated_us": now_us}
    existed = conn.execute(sa.select(segments.c.id).where(segments.c.name == name)).first()
    insert = (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(segments)
    # an upsert: two requests creating one name at once both succeed, the later one winning
    conn.execute(
        insert.values(name=name, created_us=now_us, **values).on_conflict_do_update(
            index_elements=[segments.c.name], set_=values
        )
    )
    return get_segment(conn, name), existed is None


def delete_segment(conn: Connection, name: str) -> Segment:
    """Delete the segment ``name``; returns what it was."""
    segment = get_segment(conn, name)
    conn.execute(segments.delete().where(segments.c.name == name))
    return segment
