"""Request bodies: the native format and the Segment HTTP tracking spec, item by item.

A batch is validated one item at a time so that a bad item is reported by its index while the
good ones are accepted.
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any, Literal

from fastapi import Request
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    StrictStr,
    StringConstraints,
    ValidationError,
    field_validator,
)

from leadscore.engine.timeutil import parse_instant
from leadscore.service.errors import ApiError, loc_text
from leadscore.service.state import Settings
from leadscore.spec.conditions import WHITESPACE, text_problem, to_text
from leadscore.store import EventInput, LeadInput

__all__ = [
    "Amount",
    "Body",
    "EventIn",
    "LeadIn",
    "Scalar",
    "SegmentMessage",
    "item_error",
    "read_json",
    "text_problem",
    "to_event",
    "to_lead",
]

# Trimmed of the whitespace imports trim (ASCII's, as every comparison does), not of all of
# Unicode's: "L1" plus a no-break space is the same lead however it arrives.
Id = Annotated[
    str,
    BeforeValidator(lambda v: v.strip(WHITESPACE) if isinstance(v, str) else v),
    StringConstraints(min_length=1, max_length=200),
]
Scalar = str | int | float | bool | None
# strict: `true` is not the time 1 second after 1970
Timestamp = StrictStr | StrictInt | Annotated[StrictFloat, Field(allow_inf_nan=False)]
Amount = Annotated[float, Field(allow_inf_nan=False)]


async def read_json(request: Request, settings: Settings) -> Any:
    """The request's JSON body (its size was bounded before the route: app.BodyLimit)."""
    body = await request.body()
    kind = request.headers.get("content-type", "application/json").split(";")[0].strip()
    if kind not in ("application/json", "text/plain", ""):
        raise ApiError(415, f"send JSON (Content-Type: application/json), not {kind}")
    try:
        data = json.loads(body, parse_constant=_no_constant)
    except RecursionError:
        raise ApiError(400, f"the body nests deeper than {MAX_DEPTH} levels") from None
    except ValueError as e:
        raise ApiError(400, f"the body is not valid JSON: {e}") from None
    check_json(data)
    return data


MAX_DEPTH = 32  # objects and lists inside each other


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def check_json(value: Any, depth: int = 0, where: str = "body") -> None:
    """Refuse what JSON parsers accept but the store cannot keep: NUL characters (PostgreSQL
    text cannot hold them), halves of UTF-16 surrogate pairs written alone (``"\\ud800"``:
    no UTF-8 text), numbers too large for a float (``1e999``, read as infinity) and nesting
    deeper than :data:`MAX_DEPTH`."""
    if depth > MAX_DEPTH:
        raise ApiError(400, f"the body nests deeper than {MAX_DEPTH} levels")
    if isinstance(value, str):
        problem = text_problem(value)
        if problem:
            raise ApiError(400, f"{where}: {problem}")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ApiError(400, f"{where}: the number is too large (at most about 1.8e308)")
    elif isinstance(value, dict):
        for k, v in value.items():
            problem = text_problem(k)
            if problem:
                raise ApiError(400, f"{where}: a field name: {problem}")
            check_json(v, depth + 1, f"{where}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            check_json(v, depth + 1, f"{where}[{i}]")


class Body(BaseModel):
    """A JSON body that FastAPI reads for an endpoint: unknown fields refused, and no text
    that the store cannot keep (:func:`text_problem`)."""

    model_config = ConfigDict(extra="forbid")

    @field_validator("*")
    @classmethod
    def _storable(cls, value: Any) -> Any:
        texts = value if isinstance(value, list) else [value]
        for text in texts:
            if isinstance(text, str) and (problem := text_problem(text)):
                raise ValueError(problem)
        return value


def item_error(index: int | None, e: ValidationError | ValueError) -> dict[str, Any]:
    """One bad item of a batch, for the error details."""
    out: dict[str, Any] = {} if index is None else {"index": index}
    if isinstance(e, ValidationError):
        errs = e.errors()
        out["message"] = "; ".join(
            f"{loc_text(err['loc']) or 'item'}: {err['msg']}" for err in errs
        )
        out["fields"] = [{"loc": loc_text(err["loc"]), "message": err["msg"]} for err in errs]
    else:
        out["message"] = str(e)
    return out


# A time at most this far ahead of the server's clock is read as now: the sender's clock runs
# fast. Stamped later, an event counts from its time on (Store: future events), and the score
# the request answers with would leave out, say, a demo request sent from a browser whose clock
# is a minute ahead, until the lead's next event or the next rescoring.
FUTURE_SKEW_US = 5 * 60 * 1_000_000


def _timestamp(value: Timestamp | None, now_us: int, skew_us: int = 0) -> int:
    """An event's time: ``value`` (now if None), less ``skew_us`` (how far the sender's
    clock is ahead: Segment's sentAt), and now when that is ahead by less than
    :data:`FUTURE_SKEW_US`."""
    if value is None:
        return now_us
    try:
        ts = parse_instant(value) - skew_us
    except ValueError as e:  # named like the schema's errors: "ts: ..."
        raise ValueError(f"ts: {e}") from None
    return now_us if now_us < ts <= now_us + FUTURE_SKEW_US else ts


def check_size(value: dict[str, Any], what: str, limit: int) -> None:
    if _json_bound(value) > limit and len(json.dumps(value, default=str)) > limit:
        raise ValueError(f"{what} take more than {limit:,} bytes as JSON")


def _json_bound(value: dict[str, Any]) -> float:
    """At least ``len(json.dumps(value))`` for a flat object of text, booleans, nulls and
    numbers, without writing it (a character takes at most 12 in JSON: an escaped surrogate
    pair); infinite for anything else."""
    n = 2  # {}
    for k, v in value.items():
        t = type(v)
        if t is str:
            n += 12 * len(v) + 2
        elif v is None or t is bool:
            n += 5
        elif t is float or (t is int and -(10**15) < v < 10**15):
            n += 25  # repr of a float (at most 24), or of an int of 15 digits and a sign
        else:
            return float("inf")
        if type(k) is not str:
            return float("inf")
        n += 12 * len(k) + 6  # the key's quotes, ": " and ", "
    return n


class LeadIn(BaseModel):
    """A lead to create or update. Fields other than these are profile fields."""

    model_config = ConfigDict(extra="allow")
    lead_id: Id | None = None
    email: Annotated[str, StringConstraints(max_length=320)] | None = None
    stage: str | None = None
    owner: Annotated[str, StringConstraints(max_length=200)] | None = None
    fields: dict[Annotated[str, StringConstraints(max_length=200)], Scalar] = Field(
        default_factory=dict, description="profile fields (merged; null removes a field)"
    )


def to_lead(item: LeadIn, settings: Settings) -> LeadInput:
    fields = dict(item.fields)
    for k, v in (item.model_extra or {}).items():
        if len(k) > 200:
            raise ValueError(f"field name {k[:40]!r}... is longer than 200 characters")
        if isinstance(v, (dict, list)):
            raise ValueError(f"profile field {k!r} must be text, a number, true/false or null")
        fields[k] = v
    check_size(fields, "the profile fields", settings.max_properties_bytes)
    if item.lead_id is None and not (item.email and item.email.strip()):
        raise ValueError("a lead needs a lead_id or an email")
    owner = None if item.owner is None else item.owner.strip()  # "" clears the owner
    return LeadInput(item.lead_id, item.email, fields, item.stage, owner)


class EventIn(BaseModel):
    """An event of a lead (by ``lead_id``, ``email`` or ``anonymous_id``). Fields other than
    these are the event's properties."""

    model_config = ConfigDict(extra="allow")
    type: Id
    ts: Timestamp | None = Field(None, description="ISO 8601 or epoch; default: when received")
    lead_id: Id | None = None
    email: Annotated[str, StringConstraints(max_length=320)] | None = None
    anonymous_id: Id | None = None
    item: Annotated[str, StringConstraints(max_length=2000)] | int | float | None = None
    properties: dict[str, Any] = Field(default_factory=dict)
    event_id: Id | None = Field(None, description="makes retries idempotent")


def to_event(item: EventIn, settings: Settings, now_us: int, skew_us: int = 0) -> EventInput:
    props = dict(item.properties)
    props.update(item.model_extra or {})
    check_size(props, "the properties", settings.max_properties_bytes)
    if item.lead_id is None and item.email is None and item.anonymous_id is None:
        raise ValueError("an event needs a lead_id, an email or an anonymous_id")
    return EventInput(
        type=item.type,
        ts_us=_timestamp(item.ts, now_us, skew_us),
        lead_id=item.lead_id,
        email=item.email,
        anonymous_id=item.anonymous_id,
        item=to_text(item.item),
        properties=props,
        message_id=item.event_id,
    )


def _segment_id(value: Any) -> Any:
    """An id as Segment's senders write it: a number is its text (analytics libraries long
    took numbers, and raw senders still send them), and an empty id is no id."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str) and not value.strip(WHITESPACE):
        return None
    return value


SegmentId = Annotated[Id | None, BeforeValidator(_segment_id)]
# null for an object (properties, traits, context) is an empty one
SegmentObject = Annotated[dict[str, Any], BeforeValidator(lambda v: {} if v is None else v)]
# How far sentAt may be from the time received and still be read as the sender's clock
# running off: further, the message was sent long ago (a replay of an archive, a queue
# drained late, a forward) and its own time stands.
MAX_CLOCK_SKEW_US = 24 * 3600 * 1_000_000


class SegmentMessage(BaseModel):
    """A Segment HTTP tracking API message (track, identify, page, screen, alias)."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)
    type: Literal["track", "identify", "page", "screen", "alias", "group"] | None = None
    userId: SegmentId = None
    anonymousId: SegmentId = None
    previousId: SegmentId = None
    event: Id | None = None
    name: str | None = None
    properties: SegmentObject = Field(default_factory=dict)
    traits: SegmentObject = Field(default_factory=dict)
    context: SegmentObject = Field(default_factory=dict)
    timestamp: Timestamp | None = None
    originalTimestamp: Timestamp | None = None  # the sender's time when timestamp is absent
    sentAt: Timestamp | None = None  # when the sender sent it, by its own clock
    receivedAt: Timestamp | None = None  # when a forwarder (Segment itself) received it
    messageId: SegmentId = None

    @property
    def time(self) -> Timestamp | None:
        """When it happened by the sender's clock: ``timestamp``, else ``originalTimestamp``
        (what RudderStack's senders fill)."""
        return self.timestamp if self.timestamp is not None else self.originalTimestamp

    def skew_us(self, now_us: int) -> int:
        """How far the sender's clock runs ahead, as Segment corrects it: ``sentAt`` less the
        time received (``receivedAt`` when a forwarder gives it, else now). 0 without a
        time or a readable sentAt, or when they are more than a day apart
        (:data:`MAX_CLOCK_SKEW_US`: sent long ago, not a clock running off), and for a
        forwarded message's ``timestamp`` (with a ``receivedAt``: the forwarder corrected it
        already; only an ``originalTimestamp`` alone is corrected then)."""
        if self.sentAt is None or self.time is None:
            return 0
        if self.receivedAt is not None and self.timestamp is not None:
            return 0
        try:
            sent = parse_instant(self.sentAt)
            received = now_us if self.receivedAt is None else parse_instant(self.receivedAt)
        except ValueError:  # no correction, as a sender's unreadable sentAt is its own affair
            return 0
        skew = sent - received
        return skew if abs(skew) <= MAX_CLOCK_SKEW_US else 0

    def check_ids(self) -> None:
        if self.type == "alias":
            if not (self.userId and self.previousId):
                raise ValueError("an alias needs userId and previousId")
        elif not (self.userId or self.anonymousId):
            raise ValueError("a message needs a userId or an anonymousId")
