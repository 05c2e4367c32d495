"""Ingest: the native API (``/api/v1/leads``, ``/api/v1/events``, ``/api/v1/outcomes``) and the
Segment-compatible one (``/v1/track``, ``/v1/identify``, ``/v1/page``, ``/v1/alias``,
``/v1/batch``).

Every accepted item is stored and its lead rescored before the response is sent; a bad item of
a batch is reported by its index and the others are accepted. A request whose items are all bad
gets a 422 with the envelope.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, ValidationError

from leadscore.engine.timeutil import parse_instant
from leadscore.errors import InputError
from leadscore.inputs import NamedData
from leadscore.service.auth import require
from leadscore.service.errors import ApiError
from leadscore.service.payloads import (
    Amount,
    EventIn,
    Id,
    LeadIn,
    SegmentMessage,
    Timestamp,
    check_size,
    item_error,
    read_json,
    to_event,
    to_lead,
)
from leadscore.service.state import ServiceState, Settings
from leadscore.spec.conditions import to_text
from leadscore.store import EventInput, ItemOutcome, LeadInput, OutcomeInput
from leadscore.store.bulk import ImportReport, import_outcomes
from leadscore.store.keys import ApiKey
from leadscore.store.lifecycle import add_outcomes, outcomes_for_unknown_leads

__all__ = ["router"]

router = APIRouter()


def _state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.leadscore
    return state


def _items(body: Any, key: str, max_batch: int) -> tuple[list[Any], bool]:
    """The list of items of a body that is one item, a list, or ``{key: [...]}``."""
    if isinstance(body, list):
        items, many = body, True
    elif isinstance(body, dict) and isinstance(body.get(key), list) and len(body) == 1:
        items, many = body[key], True
    elif isinstance(body, dict):
        items, many = [body], False
    else:
        raise ApiError(400, f"send one object, a list of objects, or {{{key!r}: [...]}}")
    if not items:
        raise ApiError(400, "the batch is empty")
    if len(items) > max_batch:
        raise ApiError(413, f"a batch holds at most {max_batch:,} items, got {len(items):,}")
    return items, many


def _blind(key: ApiKey) -> bool:
    """Whether answers to ``key`` must not tell what the store holds: a key that may only
    ingest (it may sit in a web page's form) learns nothing it did not send, so it cannot
    find out whether an email is a known lead, nor a lead's id."""
    return not key.allows("read")


def _result(
    outcomes: Sequence[ItemOutcome], errors: list[dict[str, Any]], total: int, blind: bool
) -> dict[str, Any]:
    """The answer to an ingest request; ``blind`` (:func:`_blind`): every item taken is
    ``stored`` (not created or updated, accepted, anonymous or duplicate), and none names the
    lead it went to."""
    errors = errors + [
        {"index": o.index, "message": o.error} for o in outcomes if o.status == "error"
    ]
    errors.sort(key=lambda e: int(e.get("index", 0)))
    if errors and all(o.status == "error" for o in outcomes):  # nothing stored
        what = "item is" if total == 1 else f"{total} items are"
        message = errors[0]["message"] if total == 1 else f"all {what} invalid"
        raise ApiError(422, message, details=errors)

    def status(o: ItemOutcome) -> str:  # blind: not whether a lead, an anonymous id's
        return "stored" if blind else o.status  # link or an event id was known already

    counts: dict[str, int] = {}
    for o in outcomes:
        if o.status != "error":  # counted below with the items refused before the store
            counts[status(o)] = counts.get(status(o), 0) + 1
    if errors:
        counts["error"] = len(errors)  # so that the counts add up to what was received
    return {
        "received": total,
        **counts,
        "items": [
            {"index": o.index, "status": status(o)}
            | ({} if blind else {"lead_id": o.lead_id})
            | ({"merged": o.merged} if o.merged and not blind else {})
            for o in sorted(outcomes, key=lambda o: o.index)
            if o.status != "error"
        ],
        "errors": errors,
    }


def _reindex(outcomes: list[ItemOutcome], positions: list[int]) -> list[ItemOutcome]:
    for o in outcomes:
        o.index = positions[o.index]
    return outcomes


LEADS_SCHEMA: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "oneOf": [
                        LeadIn.model_json_schema(),
                        {"type": "array", "items": LeadIn.model_json_schema()},
                    ]
                }
            }
        },
    }
}
EVENTS_SCHEMA: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "oneOf": [
                        EventIn.model_json_schema(),
                        {"type": "array", "items": EventIn.model_json_schema()},
                    ]
                }
            }
        },
    }
}


@router.post("/api/v1/leads", tags=["ingest"], openapi_extra=LEADS_SCHEMA)
async def post_leads(request: Request, key: ApiKey = Depends(require("ingest"))) -> dict[str, Any]:
    """Create or update leads (one, or a list), matched by ``lead_id`` or else by email.
    Other fields are profile fields; each lead is rescored at once."""
    state = _state(request)
    items, _many = _items(
        await read_json(request, state.settings), "leads", state.settings.max_batch
    )
    good: list[LeadInput] = []
    positions: list[int] = []
    errors: list[dict[str, Any]] = []
    for i, raw in enumerate(items):
        try:
            good.append(to_lead(LeadIn.model_validate(raw), state.settings))
            positions.append(i)
        except (ValidationError, ValueError) as e:
            errors.append(item_error(i, e))
    outcomes = await run_in_threadpool(state.store.upsert_leads, good) if good else []
    return _result(_reindex(outcomes, positions), errors, len(items), _blind(key))


@router.post("/api/v1/events", tags=["ingest"], openapi_extra=EVENTS_SCHEMA)
async def post_events(request: Request, key: ApiKey = Depends(require("ingest"))) -> dict[str, Any]:
    """Store events (one, or a list) and rescore their leads before answering. A repeated
    ``event_id`` is acknowledged as ``duplicate`` and not counted again."""
    state = _state(request)
    items, _many = _items(
        await read_json(request, state.settings), "events", state.settings.max_batch
    )
    now = state.store.clock()
    good: list[EventInput] = []
    positions: list[int] = []
    errors: list[dict[str, Any]] = []
    for i, raw in enumerate(items):
        try:
            good.append(to_event(EventIn.model_validate(raw), state.settings, now))
            positions.append(i)
        except (ValidationError, ValueError) as e:
            errors.append(item_error(i, e))
    outcomes = await state.writer.ingest(good) if good else []
    return _result(_reindex(outcomes, positions), errors, len(items), _blind(key))


class OutcomeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # trimmed as an import's columns are, and never empty (" " is no id and no outcome)
    lead_id: Id
    outcome: Id
    ts: Timestamp
    amount: Amount | None = None


CSV_TYPES = ("text/csv", "application/csv")


def _csv_name(name: str) -> str:
    """An upload's name as errors show it: its last part, read as CSV whatever it ends with."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1][:200] or "outcomes.csv"
    return base if base.lower().endswith(".csv") else f"{base}.csv"


@router.post("/api/v1/outcomes", tags=["ingest"])
async def post_outcomes(
    request: Request, key: ApiKey = Depends(require("ingest"))
) -> dict[str, Any]:
    """Record outcomes (``sql``, ``opportunity``, ``won``, ``lost``, ...) with their time and
    an optional amount; a repeat of (lead, outcome, time) is ignored.

    The body is JSON (one outcome or a list), or a CSV file (``Content-Type: text/csv``, a
    header line with ``lead_id``, ``outcome``, ``ts`` and optionally ``amount``; name it with
    ``?filename=``): a bad CSV line stores nothing, and the errors name each line."""
    state = _state(request)
    kind = request.headers.get("content-type", "").split(";")[0].strip()
    if kind in CSV_TYPES:
        name = request.query_params.get("filename") or "outcomes.csv"
        data = await request.body()  # up to max_upload_bytes (app.BodyLimit)

        def load() -> ImportReport:
            return import_outcomes(state.store, NamedData(_csv_name(name), data))

        try:
            report = await run_in_threadpool(load)
        except InputError as e:
            n = len(e.problems)
            raise ApiError(
                422,
                f"the file has {n} problem{'s' if n != 1 else ''}; nothing was stored: "
                + "; ".join(str(p) for p in e.problems[:3]),
                details=[{"message": str(p)} for p in e.problems],
            ) from None
        return {
            "received": report.rows,
            "added": report.stored,
            "repeated": report.repeated,
            "errors": [],
            "warnings": [w for w in report.warnings if w.startswith("outcomes named otherwise")],
        } | ({} if _blind(key) else {"outcomes_for_unknown_leads": report.unknown})
    items, _many = _items(
        await read_json(request, state.settings), "outcomes", state.settings.max_batch
    )
    good: list[OutcomeInput] = []
    errors: list[dict[str, Any]] = []
    for i, raw in enumerate(items):
        try:
            o = OutcomeIn.model_validate(raw)
            good.append(
                OutcomeInput(o.lead_id, o.outcome.strip().lower(), parse_instant(o.ts), o.amount)
            )
        except (ValidationError, ValueError) as e:
            errors.append(item_error(i, e))
    if errors and not good:
        raise ApiError(422, "no outcome is valid", details=errors)

    def write() -> tuple[int, int]:
        with state.store.db.write() as conn:
            return add_outcomes(conn, good, "api"), outcomes_for_unknown_leads(conn, good)

    added, unknown = await run_in_threadpool(write)
    return {
        "received": len(items),
        "added": added,
        "repeated": len(good) - added,
        "errors": errors,
    } | ({} if _blind(key) else {"outcomes_for_unknown_leads": unknown})


# --- Segment ------------------------------------------------------------------------------------

PAGE_TYPES = {"page": "page_view", "screen": "screen_view"}


def _segment_event(m: SegmentMessage, now_us: int, settings: Any) -> EventInput:
    kind = m.type or "track"
    props = dict(m.properties)
    if kind == "track":
        if not m.event:
            raise ValueError("a track message needs an `event`")
        etype = m.event
    else:
        etype = PAGE_TYPES[kind]
        if m.name is not None:
            props.setdefault("name", m.name)
        page = m.context.get("page")
        if isinstance(page, dict):
            for k in ("url", "path", "title", "referrer"):
                if k in page:
                    props.setdefault(k, page[k])
    item = props.pop("item", None)
    if isinstance(item, (dict, list)):  # Segment's senders name their properties as they
        props["item"] = item  # like: kept as a property, the event has no item
        item = None
    native = EventIn(
        type=etype,
        ts=m.time,
        lead_id=m.userId,
        anonymous_id=m.anonymousId,
        item=to_text(item),
        properties=props,
        event_id=m.messageId,
    )
    return to_event(native, settings, now_us, m.skew_us(now_us))


# Profile fields (as the shipped models and the sample data name them) given the value of
# Segment's reserved identify traits when a message does not give them itself: a standard
# identify ({"title": "CEO", "company": {"industry": ...}}) is scored as the flat fields would be.
SEGMENT_TRAITS = {
    "job_title": "title",
    "company": "company.name",
    "industry": "company.industry",
    "employees": "company.employee_count",
    "country": "address.country",
    "city": "address.city",
    "state": "address.state",
    "first_name": "firstName",
    "last_name": "lastName",
}


def _trait_text(value: Any) -> str:
    """One value of a trait's list: an object or a list as JSON (as written, not escaped)."""
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return str(to_text(value))


def _segment_traits(m: SegmentMessage, settings: Settings) -> LeadInput:
    fields: dict[str, Any] = {}

    def flatten(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                flatten(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(value, list):  # a list of objects or lists: as JSON, not Python's
            fields[prefix] = ", ".join(_trait_text(v) for v in value)
        else:
            fields[prefix] = value

    # an identify whose traits came in its context (as some senders put them) has them there
    traits = m.traits or m.context.get("traits") or {}
    flatten("", traits if isinstance(traits, dict) else {})
    for field, trait in SEGMENT_TRAITS.items():  # Segment's reserved traits, as models name
        if field not in fields and trait in fields:  # the fields (null removes both)
            fields[field] = fields[trait]
    for k in fields:
        if len(k) > 200:
            raise ValueError(f"trait name {k[:40]!r}... is longer than 200 characters")
    check_size(fields, "the traits", settings.max_properties_bytes)
    email = fields.pop("email", None)
    if email is not None and not isinstance(email, str):
        raise ValueError("traits.email must be text")
    return LeadInput(m.userId, email, fields)


async def _segment(
    request: Request, messages: list[Any], kind: str | None, blind: bool
) -> dict[str, Any]:
    state = _state(request)
    store = state.store
    now = store.clock()
    if all(
        isinstance(m, dict) and (kind or m.get("type") or "track") in ("track", "page", "screen")
        for m in messages
    ):  # only events (the common case): they join the other requests' events in one commit
        answer = await _segment_events(state, messages, kind, now, blind)
        return {"success": True, **answer}
    errors: list[dict[str, Any]] = []
    outcomes: list[ItemOutcome] = []
    pending: list[EventInput] = []
    positions: list[int] = []

    leads: list[LeadInput] = []  # identifies in a row without an anonymousId: one upsert
    lead_positions: list[int] = []

    def flush() -> None:
        if pending:
            done = store.ingest_events(list(pending))
            outcomes.extend(_reindex(done, list(positions)))
            pending.clear()
            positions.clear()
        if leads:
            try:
                done = store.upsert_leads(list(leads))
            except ValueError as e:  # each of them, not the message after them, is refused
                errors.extend(item_error(i, e) for i in lead_positions)
            else:
                outcomes.extend(_reindex(done, list(lead_positions)))
            finally:
                leads.clear()
                lead_positions.clear()

    def run() -> None:
        for i, raw in enumerate(messages):
            try:
                if kind is not None and isinstance(raw, dict):  # the route says what it is
                    raw = {**raw, "type": kind}
                m = SegmentMessage.model_validate(raw)
                m.check_ids()
                t = m.type or kind or "track"
                if t in ("track", "page", "screen"):
                    if leads:
                        flush()  # in order: the leads before these events
                    pending.append(_segment_event(m, now, state.settings))
                    positions.append(i)
                    continue
                if t == "identify":
                    lead = _segment_traits(m, state.settings)
                    if lead.lead_id is None and lead.email is None:
                        outcomes.append(ItemOutcome(i, "anonymous"))
                        continue
                    if m.anonymousId is None:
                        if pending:
                            flush()  # in order: the events before this lead
                        leads.append(lead)
                        lead_positions.append(i)
                        continue
                flush()
                if t == "identify":
                    outcome, _ = store.identify(lead, m.anonymousId)
                    outcome.index = i
                    outcomes.append(outcome)
                elif t == "alias":
                    assert m.userId is not None and m.previousId is not None
                    outcome = store.alias(m.userId, m.previousId)
                    outcome.index = i
                    outcomes.append(outcome)
                else:  # group: acknowledged, not used
                    outcomes.append(ItemOutcome(i, "ignored"))
            except (ValidationError, ValueError) as e:
                errors.append(item_error(i, e))
        flush()

    await run_in_threadpool(run)
    result = _result(outcomes, errors, len(messages), blind)
    return {"success": True, **result}


async def _segment_events(
    state: ServiceState, messages: list[Any], kind: str | None, now: int, blind: bool
) -> dict[str, Any]:
    good: list[EventInput] = []
    positions: list[int] = []
    errors: list[dict[str, Any]] = []
    for i, raw in enumerate(messages):
        try:
            m = SegmentMessage.model_validate({**raw, "type": kind or raw.get("type") or "track"})
            m.check_ids()
            good.append(_segment_event(m, now, state.settings))
            positions.append(i)
        except (ValidationError, ValueError) as e:
            errors.append(item_error(i, e))
    outcomes = await state.writer.ingest(good) if good else []
    return _result(_reindex(outcomes, positions), errors, len(messages), blind)


SEGMENT_CALLS = {
    "track": "Segment `track`: ``event`` is the event type, ``properties`` its fields.",
    "identify": "Segment `identify`: ``traits`` are profile fields; an ``anonymousId`` is "
    "linked to the ``userId`` and its earlier events join the lead.",
    "page": "Segment `page`: stored as a ``page_view`` event with the page's properties.",
    "screen": "Segment `screen`: stored as a ``screen_view`` event with its properties.",
    "alias": "Segment `alias`: ``previousId`` becomes the lead ``userId``: an anonymous id "
    "is linked to it, a lead stored under that id is merged into it.",
    "group": "Segment `group`: acknowledged and not used (company traits are not scored yet).",
}


def _segment_route(kind: str, doc: str) -> None:
    async def call(request: Request, key: ApiKey = Depends(require("ingest"))) -> dict[str, Any]:
        state = _state(request)
        message = await read_json(request, state.settings)
        return await _segment(request, [message], kind, _blind(key))

    call.__doc__ = doc
    router.add_api_route(
        f"/v1/{kind}", call, methods=["POST"], tags=["segment"], name=f"segment_{kind}"
    )
    # the short path Segment's browser library posts to (/v1/t: fewer ad blockers stop it)
    router.add_api_route(
        f"/v1/{kind[0]}", call, methods=["POST"], include_in_schema=False, name=f"segment_{kind[0]}"
    )


for _kind, _doc in SEGMENT_CALLS.items():
    _segment_route(_kind, _doc)


@router.post("/v1/batch", tags=["segment"])
@router.post("/v1/import", tags=["segment"], description="`batch` (analytics-ruby's default path).")
@router.post("/v1/b", include_in_schema=False)
async def segment_batch(
    request: Request, key: ApiKey = Depends(require("ingest"))
) -> dict[str, Any]:
    """Segment `batch`: ``{"batch": [messages with their "type"]}``, processed in order."""
    state = _state(request)
    body = await read_json(request, state.settings)
    if not isinstance(body, dict) or not isinstance(body.get("batch"), list):
        raise ApiError(400, 'a batch is {"batch": [message, ...]}')
    messages = body["batch"]
    sent = body.get("sentAt")
    if sent is not None:  # the batch's, for its messages without their own
        messages = [
            {"sentAt": sent, **m} if isinstance(m, dict) and "sentAt" not in m else m
            for m in messages
        ]
    if not messages:
        raise ApiError(400, "the batch is empty")
    if len(messages) > state.settings.max_batch:
        raise ApiError(413, f"a batch holds at most {state.settings.max_batch:,} messages")
    return await _segment(request, messages, None, _blind(key))
