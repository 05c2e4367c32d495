"""Reading leads back: one lead with its scores, its history, and filtered, sorted pages."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from leadscore.errors import NotFound, UsageError
from leadscore.store.leads import STAGES, no_lead
from leadscore.store.schema import (
    ID,
    events,
    leads,
    model_versions,
    outcomes,
    score_history,
    scores,
    stage_changes,
)

__all__ = [
    "LIST_PARAMETERS",
    "SORTS",
    "LeadPage",
    "LeadQuery",
    "last_activity",
    "lead_view",
    "list_leads",
    "outcomes_of",
    "recent_events",
    "score_history_of",
    "sparklines",
]

# The lead list's own query parameters (in the API, the pages and saved segments): every
# other name filters a profile field by equality.
LIST_PARAMETERS = frozenset(
    {
        "sheet",
        "band",
        "grade",
        "stage",
        "owner",
        "mql",
        "min_score",
        "max_score",
        "q",
        "sort",
        "limit",
        "cursor",
        "explain",
        "spark",
        "segment",
        "detail",
    }
)

# sort key -> column; "-key" sorts descending
SORTS = ("score", "fit", "engagement", "lead_id", "updated", "created")
MAX_LIMIT = 1000


def _score_dict(row: sa.RowMapping) -> dict[str, Any]:
    return {
        "score": row["score"],
        "fit": row["fit"],
        "engagement": row["engagement"],
        "grade": row["grade"],
        "band": row["band"],
        "mql": bool(row["mql"]),
        "priority": row["priority"],
        "groups": row["groups"],
        "as_of_us": row["as_of_us"],
        "model_version_id": row["model_version_id"],
    }


def _lead_dict(row: sa.RowMapping) -> dict[str, Any]:
    return {
        "lead_id": row["lead_id"],
        "email": row["email"],
        "stage": row["stage"],
        "stage_us": row["stage_us"],
        "owner": row["owner"],
        "profile": row["profile"],
        "created_us": row["created_us"],
        "updated_us": row["updated_us"],
    }


def lead_view(conn: Connection, lead_id: str) -> dict[str, Any]:
    """A lead's profile, stage, owner, stage changes and current score on every sheet."""
    row = conn.execute(sa.select(leads).where(leads.c.lead_id == lead_id)).mappings().first()
    if row is None:
        raise no_lead(conn, lead_id)
    out = _lead_dict(row)
    out["scores"] = {
        r["sheet"]: _score_dict(r)
        for r in conn.execute(
            sa.select(scores).where(scores.c.lead_id == lead_id).order_by(scores.c.sheet)
        ).mappings()
    }
    out["stage_changes"] = [
        {k: r[k] for k in ("from_stage", "to_stage", "at_us", "reason", "actor")}
        for r in conn.execute(
            sa.select(stage_changes)
            .where(stage_changes.c.lead_id == lead_id)
            .order_by(stage_changes.c.id)
        ).mappings()
    ]
    return out


def score_history_of(
    conn: Connection, lead_id: str, sheet: str | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    """A lead's score changes, newest first."""
    if conn.execute(sa.select(leads.c.lead_id).where(leads.c.lead_id == lead_id)).first() is None:
        raise no_lead(conn, lead_id)
    q = sa.select(score_history).where(score_history.c.lead_id == lead_id)
    if sheet is not None:
        # a sheet no model ever named is a mistake (404, as the lead list answers it); one
        # no longer active still has its history
        known = sa.select(model_versions.c.id).where(model_versions.c.name == sheet).limit(1)
        if conn.execute(known).first() is None:
            raise NotFound(f"no score sheet {sheet!r} (no model of that name was ever stored)")
        q = q.where(score_history.c.sheet == sheet)
    q = q.order_by(score_history.c.id.desc()).limit(min(limit, MAX_LIMIT))
    return [
        {k: v for k, v in r.items() if k not in ("lead_id",)} for r in conn.execute(q).mappings()
    ]


@dataclass
class LeadQuery:
    """Filters, sort and page of a lead list. ``fields`` filter profile fields by equality."""

    sheet: str | None = None
    band: list[str] = field(default_factory=list)
    grade: list[str] = field(default_factory=list)
    stage: list[str] = field(default_factory=list)
    owner: str | None = None
    mql: bool | None = None
    min_score: float | None = None
    max_score: float | None = None
    fields: dict[str, str] = field(default_factory=dict)
    search: str | None = None
    sort: str = "-score"
    limit: int = 50
    cursor: str | None = None


@dataclass
class LeadPage:
    sheet: str | None
    items: list[dict[str, Any]]
    next_cursor: str | None


def _encode(value: Any, lead_id: str, sort: str, sheet: str | None) -> str:
    """A page's cursor: where the next page starts, in the list of this sort and sheet."""
    text = json.dumps([value, lead_id, sort, sheet])
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _decode(cursor: str, sort: str, sheet: str | None) -> tuple[Any, str]:
    """The sort value and lead id a cursor starts after, if it belongs to a list of ``sort``
    on ``sheet`` (one of another sort would start a page at a meaningless place). Cursors
    of before the sort and sheet were in them ([value, lead id]) are taken as they are."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        found = json.loads(base64.urlsafe_b64decode(padded.encode()))
        value, lead_id, *made_for = found
    except (ValueError, TypeError) as e:
        raise UsageError(f"cursor {cursor!r} is not one this server gave out") from e
    if not isinstance(lead_id, str) or len(made_for) not in (0, 2):
        raise UsageError(f"cursor {cursor!r} is not one this server gave out")
    if made_for and made_for != [sort, sheet]:
        raise UsageError(
            f"the cursor belongs to the list sorted by {made_for[0]!r} on sheet "
            f"{made_for[1]!r}, not by {sort!r} on {sheet!r}: ask for the first page again"
        )
    return value, lead_id


def _profile_text(conn: Connection, name: str) -> sa.ColumnElement[Any]:
    """A profile field as text, the same on both databases: PostgreSQL's ``->>`` (and the
    evaluators) spell JSON booleans ``true``/``false``, where SQLite's json_extract gives 1/0."""
    if conn.dialect.name != "sqlite":
        return sa.cast(leads.c.profile[name].as_string(), sa.String)
    kind: sa.ColumnElement[Any]
    if '"' in name or "\\" in name:  # keys SQLite's JSON paths cannot name (or, from 3.45,
        # read as escapes): the object's entries
        entry = sa.func.json_each(leads.c.profile).table_valued("key", "value", "type")
        found = sa.select(entry.c.value, entry.c.type).where(entry.c.key == name)
        text = sa.cast(found.with_only_columns(entry.c.value).scalar_subquery(), sa.String)
        kind = found.with_only_columns(entry.c.type).scalar_subquery()
    else:
        text = sa.cast(leads.c.profile[name].as_string(), sa.String)
        kind = sa.func.json_type(leads.c.profile, f'$."{name}"')  # the path SQLAlchemy writes
    return sa.case((kind == "true", "true"), (kind == "false", "false"), else_=text)


# SQLite only, made by migration 0004 (a full-text table and its stable keys): not in the
# metadata, which describes what both databases have.
FEW_MATCHES = 1000  # fewer matches than this: the index's list of them; more: a scan
LEAD_SEARCH = sa.table("lead_search", sa.column("rowid", sa.Integer), sa.column("text", sa.String))
LEAD_SEARCH_IDS = sa.table(
    "lead_search_ids", sa.column("id", sa.Integer), sa.column("lead_id", sa.String)
)


# PostgreSQL: what the search matches, exactly as migration 0007's trigram index
# (ix_leads_search) is made, so that the planner can use it (a test checks that it does).
# A line break between the two, which neither the id nor the profile's JSON text holds, so
# that no term matches across them.
PG_SEARCH_TEXT = sa.literal_column(
    "lower((leads.lead_id)::text || E'\\n' || (leads.profile)::text)", sa.Text
)


def _escaped(text: str) -> str:
    """``text`` matched literally by a LIKE with ESCAPE '\\'."""
    for special in ("\\", "%", "_"):
        text = text.replace(special, "\\" + special)
    return text


def _search(conn: Connection, search: str) -> sa.ColumnElement[bool]:
    """Leads whose id, email or a profile value contains ``search`` (any case, literally).

    SQLite reads its trigram index (migration 0004), which answers a LIKE of three or more
    characters without reading every lead, but only when the pattern needs no ESCAPE (text
    with ``%``, ``_`` or a backslash is matched by reading the index's rows one by one).
    PostgreSQL matches the id and the profile's JSON text (keys included). Its planner
    chooses between the trigram index of a term of three characters or more (migration 0007,
    where pg_trgm could be added; its statistics, sampled from 1,000 leads' texts, tell it
    whether few leads or many hold the term) and reading the leads in the list's order."""
    literal = not any(c in search for c in "\\%_")
    pattern = f"%{_escaped(search.lower())}%"  # the user's text is matched literally
    if conn.dialect.name == "sqlite":
        # The index's LIKE folds the case of ASCII letters only (and misses terms of one or
        # two other letters); its MATCH, a phrase of the term's trigrams, folds every letter's.
        # A term with other letters is looked up so when it has three characters or more,
        # and matched against the leads (by Python's lower()) when it is shorter.
        column = LEAD_SEARCH.c.text
        match: sa.ColumnElement[bool] | None = None
        if search.isascii():
            match = column.like(f"%{search}%") if literal else column.like(pattern, escape="\\")
        elif len(search) >= 3:
            match = column.op("MATCH")('"' + search.replace('"', '""') + '"')
        if match is not None:
            found = (
                sa.select(LEAD_SEARCH_IDS.c.lead_id)
                .join_from(
                    LEAD_SEARCH, LEAD_SEARCH_IDS, LEAD_SEARCH_IDS.c.id == LEAD_SEARCH.c.rowid
                )
                .where(match)
            )
            few = sa.select(sa.func.count()).select_from(found.limit(FEW_MATCHES).subquery())
            if conn.execute(few).scalar_one() < FEW_MATCHES:
                return leads.c.lead_id.in_(found)
        # A common term: reading the leads in the list's order finds a page of them sooner
        # than collecting every match. The same text as the index's (migration 0004).
        values = (
            sa.select(sa.func.group_concat(sa.column("value"), " "))
            .select_from(sa.func.json_each(leads.c.profile))
            .scalar_subquery()
        )
        email = sa.func.coalesce(leads.c.email, "")
        whole = leads.c.lead_id + " " + email + " " + sa.func.coalesce(values, "")
        # lower() as Python has it (SQLite's folds ASCII letters only): see leadscore.store.db
        return sa.func.leadscore_lower(whole).like(pattern, escape="\\")
    if len(search) >= 3:  # pg_trgm's index answers no shorter term
        return PG_SEARCH_TEXT.like(pattern, escape="\\")
    return sa.or_(  # the same match, in a form the index does not answer
        sa.func.lower(leads.c.lead_id).like(pattern, escape="\\"),
        sa.func.lower(sa.cast(leads.c.profile, sa.Text)).like(pattern, escape="\\"),
    )


def spelt_label(value: str, known: Sequence[str]) -> str | None:
    """A band or grade named in any case, as the model spells it in ``known`` (None if the
    model has no such name)."""
    return next((k for k in known if k.lower() == value.lower()), None)


def _labelled(
    column: sa.ColumnElement[Any], wanted: Sequence[str], known: Sequence[str] | None, what: str
) -> sa.ColumnElement[bool]:
    """The test of a band or grade filter: the names ``wanted`` (in any case, as the
    model spells them in ``known``, when given: another name is an error), ``-`` for none
    (a score below the lowest band or on a sheet without grades, as the overview shows it)."""
    names: list[str] = []
    none = False
    for value in wanted:
        value = value.strip()
        if value == "-":
            none = True
            continue
        if known is not None:
            spelt = spelt_label(value, known)
            if spelt is None:
                listed = f"{what}s are {', '.join(known)}" if known else f"it has no {what}s"
                raise UsageError(f"unknown {what} {value!r} on this sheet: {listed} (- for none)")
            value = spelt
        names.append(value)
    tests = [column.in_(names)] if names else []
    if none:
        tests.append(column.is_(None))
    return sa.or_(*tests)


def list_leads(
    conn: Connection,
    query: LeadQuery,
    sheets: Sequence[str],
    labels: Mapping[str, tuple[Sequence[str], Sequence[str]]] | None = None,
) -> LeadPage:
    """One page of leads matching ``query``, with their score on the chosen sheet. With
    ``labels`` (sheet -> its model's band and grade names), the band and grade filters take
    those names in any case and refuse others."""
    sheet = query.sheet if query.sheet is not None else (sheets[0] if sheets else None)
    if sheet is not None and sheet not in sheets:
        raise NotFound(f"no active score sheet {sheet!r} (active: {', '.join(sheets) or 'none'})")
    key = query.sort.removeprefix("-")  # one "-" only: "--score" is no sort
    if key not in SORTS:
        raise UsageError(
            f"cannot sort by {query.sort!r}; use one of {', '.join(SORTS)} (- for descending)"
        )
    if not 1 <= query.limit <= MAX_LIMIT:
        raise UsageError(f"limit must be between 1 and {MAX_LIMIT}, got {query.limit}")
    descending = query.sort.startswith("-")
    if sheet is None:
        if key in ("score", "fit", "engagement"):
            key = "lead_id"
        q = sa.select(leads)
    else:
        score_columns = [c for c in scores.c if c.name not in ("lead_id", "updated_us")]
        sheet_column: sa.ColumnElement[Any] = scores.c.sheet
        if key in ("lead_id", "updated", "created") and conn.dialect.name == "sqlite":
            # SQLite would drive the join from the scores of the sheet and sort them all;
            # hidden from its index, the sheet lets it walk the leads' index in order instead
            sheet_column = scores.c.sheet.concat("")
        q = sa.select(leads, *score_columns).join(
            scores, sa.and_(scores.c.lead_id == leads.c.lead_id, sheet_column == sheet)
        )
        bands, grades = (None, None) if labels is None else labels[sheet]
        if query.band:
            q = q.where(_labelled(scores.c.band, query.band, bands, "band"))
        if query.grade:
            q = q.where(_labelled(scores.c.grade, query.grade, grades, "grade"))
        if query.mql is not None:
            q = q.where(scores.c.mql == query.mql)
        if query.min_score is not None:
            q = q.where(scores.c.score >= query.min_score)
        if query.max_score is not None:
            q = q.where(scores.c.score <= query.max_score)
    if query.stage:
        stages = [s.strip().lower() for s in query.stage]
        unknown = [s for s in stages if s not in STAGES]
        if unknown:
            raise UsageError(f"unknown stage {unknown[0]!r}; stages are {', '.join(STAGES)}")
        q = q.where(leads.c.stage.in_(stages))
    if query.owner is not None:
        q = q.where(leads.c.owner == query.owner)
    for name, value in query.fields.items():
        if len(name) > ID:
            raise UsageError(f"field name {name[:40]!r}... is too long")
        q = q.where(_profile_text(conn, name) == value)
    if query.search:
        q = q.where(_search(conn, query.search))
    column = {
        "score": scores.c.score,
        "fit": scores.c.fit,
        "engagement": scores.c.engagement,
        "lead_id": leads.c.lead_id,
        "updated": leads.c.updated_us,
        "created": leads.c.created_us,
    }[key]
    # Ties go by lead id in the sort's direction, so that an index (value, lead id) read
    # backwards gives a descending order without sorting (a sheet's thousands of leads with
    # the same fit, say).
    # the same lead id, but the one of the sorted column's table: the index has it
    tie = scores.c.lead_id if column.table is scores else leads.c.lead_id
    if query.cursor:
        value, after = _decode(query.cursor, query.sort, sheet)
        if key != "lead_id" and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise UsageError(f"cursor {query.cursor!r} is not one this server gave out")
        if key == "lead_id":
            q = q.where(leads.c.lead_id < after if descending else leads.c.lead_id > after)
        elif descending:
            q = q.where(sa.or_(column < value, sa.and_(column == value, tie < after)))
        else:
            q = q.where(sa.or_(column > value, sa.and_(column == value, tie > after)))
    order = [column.desc() if descending else column.asc()]
    if key != "lead_id":
        order.append(tie.desc() if descending else tie.asc())
    rows = conn.execute(q.order_by(*order).limit(query.limit + 1)).mappings().all()
    items = []
    for r in rows[: query.limit]:
        item = _lead_dict(r)
        if sheet is not None:
            item["sheet"] = sheet
            item.update(_score_dict(r))
        items.append(item)
    next_cursor = None
    if len(rows) > query.limit:
        last = rows[query.limit - 1]
        sort_value = last["lead_id"] if key == "lead_id" else last[column.name]
        next_cursor = _encode(sort_value, last["lead_id"], query.sort, sheet)
    return LeadPage(sheet, items, next_cursor)


def sparklines(
    conn: Connection, lead_ids: Sequence[str], sheet: str, since_us: int, until_us: int
) -> dict[str, list[tuple[int, float]]]:
    """Each lead's score on ``sheet`` from ``since_us`` to ``until_us`` as (time, score) steps:
    the score at the start, then every recorded change (by the time it is about)."""
    if not lead_ids:
        return {}
    rows = conn.execute(
        sa.select(
            score_history.c.lead_id,
            score_history.c.as_of_us,
            score_history.c.old_score,
            score_history.c.new_score,
        )
        .where(
            score_history.c.lead_id.in_(list(lead_ids)),
            score_history.c.sheet == sheet,
            score_history.c.as_of_us >= since_us,
        )
        .order_by(score_history.c.lead_id, score_history.c.id)
    ).all()
    out: dict[str, list[tuple[int, float]]] = {}
    for lead_id, as_of_us, old, new in rows:
        points = out.get(lead_id)
        if points is None:
            points = out[lead_id] = [(since_us, float(old if old is not None else new))]
        points.append((max(int(as_of_us), since_us), float(new)))
    for points in out.values():
        points.append((until_us, points[-1][1]))
    return out


def last_activity(conn: Connection, lead_ids: Sequence[str]) -> dict[str, int]:
    """The time of each lead's newest event (leads without events are left out)."""
    if not lead_ids:
        return {}
    return {
        lead_id: int(ts)
        for lead_id, ts in conn.execute(
            sa.select(events.c.lead_id, sa.func.max(events.c.ts_us))
            .where(events.c.lead_id.in_(list(lead_ids)))
            .group_by(events.c.lead_id)
        )
    }


def recent_events(
    conn: Connection, lead_id: str, limit: int = 200
) -> tuple[int, list[dict[str, Any]]]:
    """(how many events the lead has, its newest ``limit`` events newest first)."""
    total = conn.execute(
        sa.select(sa.func.count()).select_from(events).where(events.c.lead_id == lead_id)
    ).scalar_one()
    rows = conn.execute(
        sa.select(events.c.type, events.c.ts_us, events.c.item, events.c.properties)
        .where(events.c.lead_id == lead_id)
        .order_by(events.c.ts_us.desc(), events.c.id.desc())
        .limit(limit)
    ).all()
    return int(total), [
        {"type": t, "ts_us": int(ts), "item": item, "properties": props}
        for t, ts, item, props in rows
    ]


def outcomes_of(conn: Connection, lead_id: str) -> list[dict[str, Any]]:
    """The lead's outcomes (imported, posted or recorded by a disposition), newest first."""
    return [
        dict(r)
        for r in conn.execute(
            sa.select(outcomes.c.outcome, outcomes.c.ts_us, outcomes.c.amount, outcomes.c.source)
            .where(outcomes.c.lead_id == lead_id)
            .order_by(outcomes.c.ts_us.desc(), outcomes.c.id.desc())
        ).mappings()
    ]
