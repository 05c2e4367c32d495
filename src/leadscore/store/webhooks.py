"""What a webhook says: the JSON body of a trigger firing, its Slack form, and a sample.

The JSON body (``format: json``) reads::

    {"trigger": "hot-to-sales", "fired_at": "2026-06-30T12:00:00Z", "reason": "event",
     "transition": {"kind": "enters_band", "value": "hot", "text": "entered band hot"},
     "lead": {"lead_id", "email", "stage", "owner", "profile"},
     "sheet": "b2b-default",
     "score": {"score", "fit", "engagement", "grade", "band", "mql", "priority",
               "previous_score", "previous_band", "previous_grade", "previous_mql"},
     "explanation": {... ScoreResult.to_dict(): groups, rules, counted events ...,
                     "text": the same as plain text}}

``format: slack`` turns that into a message for a Slack incoming webhook: ``{"text": ...,
"blocks": [...]}`` with the lead, the score and its top reasons. Bodies are encoded once, by
:func:`encode_body`, and the outbox sends (and signs) exactly those bytes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import cache
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from leadscore.engine.explain import explanation_text
from leadscore.engine.lead import score_lead
from leadscore.engine.result import ScoreResult
from leadscore.engine.timeutil import from_micros, iso_utc
from leadscore.spec import Model, parse_model

__all__ = [
    "FORMATS",
    "MASK",
    "MAX_URL",
    "Format",
    "check_webhook_url",
    "encode_body",
    "firing_payload",
    "sample_payload",
    "shown_url",
    "slack_message",
    "top_reasons",
    "without_url_secrets",
]

Format = Literal["json", "slack"]
FORMATS: tuple[Format, ...] = ("json", "slack")

MASK = "***"


def shown_url(url: str) -> str:
    """``url`` as it may be shown in the API, the web pages and the logs: the scheme, the host
    and port and the path's first segment (when more of the path follows it), the rest of the
    path, any user name and password and every query value replaced by ``***``. A webhook's
    URL is often its credential (whoever has a Slack incoming-webhook URL can post to the
    channel; Discord, Zapier and Teams put a token in the path too, in any shape), so, like
    webhook secrets, it is only written, never read back whole. (A token in the host name, as
    some services give out, is shown.)

    >>> shown_url("https://bot:pw@hooks.slack.com/services/T0001/B0002/AbCdEf0123456789xyz?x=1")
    'https://***@hooks.slack.com/services/***?x=***'
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return MASK
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    netloc = host if port is None else f"{host}:{port}"
    if parts.username is not None or parts.password is not None:
        netloc = f"{MASK}@{netloc}"
    segments = parts.path.split("/")[1:] if parts.path.startswith("/") else []
    if len(segments) > 1 and any(segments[1:]):
        path = f"/{segments[0]}/{MASK}"  # /services/***: what kind of hook, not which one
    elif any(segments):
        path = f"/{MASK}"  # a lone segment may be the token itself
    else:
        path = parts.path
    # each query value masked; a parameter without a value may be the token itself
    query = "&".join(
        f"{key}={MASK}" if sep else MASK
        for key, sep, _ in (p.partition("=") for p in parts.query.split("&") if p)
    )
    return urlunsplit((parts.scheme, netloc, path, query, ""))


def without_url_secrets(text: str, url: str) -> str:
    """``text`` (an error, a receiver's answer) with the parts of ``url`` that
    :func:`shown_url` hides written as it shows them: a receiver that repeats the path it was
    sent to ("Cannot POST /hooks/T0001/...") must not put the token back on show."""
    try:
        parts = urlsplit(url)
        secrets = [url, parts.username, parts.password]
    except ValueError:
        return text.replace(url, MASK)
    segments = parts.path.split("/")[1:] if parts.path.startswith("/") else []
    hidden_path = "/".join(segments[1:]) if len(segments) > 1 else "/".join(segments)
    if hidden_path:
        secrets.append(hidden_path)
    for piece in parts.query.split("&"):
        key, sep, value = piece.partition("=")
        secrets.append(value if sep else key)
    out = text.replace(url, shown_url(url))
    for secret in sorted({s for s in secrets[1:] if s and len(s) >= 3}, key=len, reverse=True):
        out = out.replace(secret, MASK)
    return out


TOP_REASONS = 5


def firing_payload(
    *,
    trigger_id: str,
    fired_us: int,
    reason: str,
    transition: Mapping[str, Any],
    lead: Mapping[str, Any],
    sheet: str,
    score: Mapping[str, Any],
    previous: Mapping[str, Any],
    model: Model,
    explanation: ScoreResult,
) -> dict[str, Any]:
    """The JSON body of one firing.

    ``lead`` is the lead's row (``lead_id, email, stage, owner, profile``), ``score`` its current
    score row on ``sheet``, ``previous`` the ``score, band, grade, mql`` before the change (None
    values on a first score), ``explanation`` the per-lead evaluator's result for that score.
    """
    explained = explanation.to_dict()
    explained["text"] = explanation_text(model, explanation)
    return {
        "trigger": trigger_id,
        "fired_at": iso_utc(fired_us),
        "reason": reason,
        "transition": dict(transition),
        "lead": {
            "lead_id": lead["lead_id"],
            "email": lead["email"],
            "stage": lead["stage"],
            "owner": lead["owner"],
            "profile": dict(lead["profile"]),
        },
        "sheet": sheet,
        "score": {
            "score": score["score"],
            "fit": score["fit"],
            "engagement": score["engagement"],
            "grade": score["grade"],
            "band": score["band"],
            "mql": bool(score["mql"]),
            "priority": score["priority"],
            "previous_score": previous.get("score"),
            "previous_band": previous.get("band"),
            "previous_grade": previous.get("grade"),
            "previous_mql": previous.get("mql"),
        },
        "explanation": explained,
    }


def top_reasons(explanation: Mapping[str, Any], n: int = TOP_REASONS) -> list[tuple[str, float]]:
    """The rules that moved the score most (largest points either way), as (rule id, points)."""
    rules = [
        (str(r["rule_id"]), float(r["points"]))
        for r in explanation.get("rules", ())
        if float(r["points"]) != 0.0
    ]
    rules.sort(key=lambda r: (-abs(r[1]), r[0]))
    return rules[:n]


MAX_URL = 2000


def check_webhook_url(value: str) -> str:
    """A webhook's URL as sent (stripped), or ValueError saying what is wrong with it: an
    http:// or https:// URL (in any case) with a host, a port from 1 to 65535 if given, and
    neither spaces nor control characters. The error shows the URL as :func:`shown_url`
    does (it is often a credential)."""
    url = value.strip()
    if len(url) > MAX_URL:
        raise ValueError(f"a URL has at most {MAX_URL:,} characters, got {len(url):,}")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"must be an http:// or https:// URL, got {shown_url(url)!r}")
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        raise ValueError(
            "a URL may not hold spaces or control characters (a space is %20), got "
            f"{shown_url(url)!r}"
        )
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:
        raise ValueError("the port must be a number from 1 to 65535")
    return url


def _slack_escape(text: str) -> str:
    # Slack's mrkdwn gives &, < and > a meaning; everything else is literal.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _num(x: Any) -> str:
    return "-" if x is None else f"{round(float(x), 2):g}"


def slack_message(payload: Mapping[str, Any]) -> dict[str, Any]:
    """A Slack incoming-webhook message (``text`` plus ``blocks``) summarising a firing body.
    Every value is escaped, in the notification's ``text`` as in the blocks: a lead's email or
    id comes from whoever filled in a form, and ``<!channel>`` there must not ping anyone."""
    e = _slack_escape
    lead = payload["lead"]
    score = payload["score"]
    who = e(str(lead.get("email") or lead["lead_id"]))
    what = e(payload.get("transition", {}).get("text") or "changed")
    sheet = e(str(payload["sheet"]))
    band, grade = e(score["band"] or "-"), e(score["grade"] or "-")
    headline = (
        f"Lead {who} {what} on {sheet}: score {_num(score['score'])} (band {band}, grade {grade})"
    )
    was = (
        "first score"
        if score.get("previous_score") is None
        else f"was {_num(score['previous_score'])}, band {e(score.get('previous_band') or '-')}"
    )
    summary = (
        f"*{e(str(payload['trigger']))}*: lead *{who}* "
        f"(`{e(str(lead['lead_id']))}`) {what}\n"
        f"Score *{_num(score['score'])}* ({was}) = fit {_num(score['fit'])} + engagement "
        f"{_num(score['engagement'])}; band *{band}*, grade "
        f"*{grade}*, priority {e(score['priority'] or '-')}, "
        f"MQL {'yes' if score['mql'] else 'no'}"
    )
    reasons = top_reasons(payload.get("explanation", {}))
    reason_lines = [f"• {_slack_escape(rule)}: {round(points, 2):+g}" for rule, points in reasons]
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": summary}},
    ]
    if reason_lines:
        blocks.append(
            {
                "type": "section",
                "text": {"type": "mrkdwn", "text": "*Top reasons*\n" + "\n".join(reason_lines)},
            }
        )
    blocks.append(
        {
            "type": "context",
            "elements": [
                {
                    "type": "mrkdwn",
                    "text": f"sheet {sheet} · reason "
                    f"{payload['reason']} · fired {payload['fired_at']}",
                }
            ],
        }
    )
    return {"text": headline, "blocks": blocks}


def encode_body(payload: Mapping[str, Any], format: Format = "json") -> str:
    """The exact text sent (and signed) for ``payload`` in ``format``."""
    data = slack_message(payload) if format == "slack" else payload
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


_SAMPLE_MODEL = """
version: 1
name: sample
profile:
  - {id: exec-title, if: {field: job_title, contains: [vp, chief]}, points: 25}
  - {id: target-industry, if: {field: industry, in: [Software, SaaS]}, points: 20}
activity:
  - {id: demo-request, event: demo_request, points: 50, frequency: once}
  - {id: pricing-page, event: page_view, where: {field: url, contains: /pricing}, points: 15,
     half_life_days: 30}
grades: {A: 40, B: 20, C: 0}
bands: {cold: -.inf, warm: 40, hot: 75}
mql: hot
"""


@cache
def _sample_model() -> Model:
    return parse_model(_SAMPLE_MODEL, source="<sample>")


def sample_payload(now_us: int, trigger_id: str = "test") -> dict[str, Any]:
    """A realistic body for a made-up lead (what a "send test" button sends)."""
    model = _sample_model()
    profile = {"email": "ann@example.com", "job_title": "VP Sales", "industry": "Software"}
    day = 86_400_000_000
    events = [
        {"type": "demo_request", "ts": now_us - day},
        {"type": "page_view", "ts": now_us - 2 * day, "url": "/pricing"},
    ]
    result = score_lead(model, {**profile, "lead_id": "sample-lead"}, events, from_micros(now_us))
    return firing_payload(
        trigger_id=trigger_id,
        fired_us=now_us,
        reason="event",
        transition={"kind": "enters_band", "value": "hot", "text": "entered band hot"},
        lead={
            "lead_id": "sample-lead",
            "email": "ann@example.com",
            "stage": "lead",
            "owner": None,
            "profile": profile,
        },
        sheet=model.name,
        score={
            "score": result.score,
            "fit": result.fit,
            "engagement": result.engagement,
            "grade": result.grade,
            "band": result.band,
            "mql": result.mql,
            "priority": result.priority,
        },
        previous={"score": 45.0, "band": "warm", "grade": "A", "mql": False},
        model=model,
        explanation=result,
    )
