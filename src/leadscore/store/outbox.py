"""Webhook delivery from the outbox: signed, retried with backoff, every attempt logged.

A trigger's webhook is an ``outbox`` row written in the transaction that changed the score, so
it exists exactly when the change does. :class:`Deliverer` sends due rows:

1. **claim** (one short write transaction): take the oldest due ``pending`` row, skipping rows
   another process holds (``FOR UPDATE SKIP LOCKED`` on PostgreSQL; the write lock on SQLite),
   count the attempt, log it in ``deliveries`` as unfinished and push ``next_attempt_us`` out by
   a *lease*. If the process dies from here on, the row is simply due again when the lease ends
   and the log shows the attempt that never reported back;
2. **POST** the stored body, with no transaction open (a slow receiver holds no lock);
3. **record** (a second transaction): the attempt's status code or error and duration; a 2xx
   marks the row ``delivered``; anything else schedules a retry after 10 s, 20 s, 40 s, ...
   (capped at 1 h, a little shortened at random so retries of many rows spread out) until
   ``max_attempts``, after which the row is ``dead``.

Delivery is *at least once*: a receiver that answered but whose answer was lost (a timeout, a
crash before step 3) gets the body again. Each row keeps its ``X-Leadscore-Delivery`` id
across attempts, so receivers can drop repeats. A row sent again by hand (:func:`redeliver`)
after it was delivered or gave up is a new delivery, with an id of its own.

Receivers check the signature with :func:`verify_signature`::

    from leadscore.store.outbox import verify_signature

    def handle(request):                       # any web framework
        body = request.body                    # the raw bytes, before any JSON parsing
        if not verify_signature(SECRET, body, request.headers["X-Leadscore-Signature"]):
            return 401
        ...

Headers sent: ``Content-Type: application/json``, ``User-Agent: leadscore-webhooks``,
``X-Leadscore-Delivery: <outbox id>-<its creation time in µs>``, plus ``-<n>`` for its n-th
re-send by hand (:func:`delivery_id`),
``X-Leadscore-Timestamp: <unix seconds>`` and, when the trigger has a secret,
``X-Leadscore-Signature: sha256=<hex HMAC-SHA256 of the body>``.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import random
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import sqlalchemy as sa

from leadscore.engine.timeutil import now_micros
from leadscore.errors import NotFound, reason_of
from leadscore.store.db import Database
from leadscore.store.schema import deliveries, outbox, trigger_firings
from leadscore.store.triggers import inserted_id
from leadscore.store.webhooks import (
    Format,
    encode_body,
    sample_payload,
    shown_url,
    without_url_secrets,
)

__all__ = [
    "INTERRUPTED",
    "Attempt",
    "Claim",
    "Deliverer",
    "RetryPolicy",
    "delivery_log",
    "outbox_entry",
    "redeliver",
    "send_test",
    "sign",
    "verify_signature",
]

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Leadscore-Signature"
TIMESTAMP_HEADER = "X-Leadscore-Timestamp"
DELIVERY_HEADER = "X-Leadscore-Delivery"
USER_AGENT = "leadscore-webhooks"
# What an attempt's log row says until its result is recorded; if it stays, the process died.
INTERRUPTED = "no result recorded: the delivering process stopped mid-attempt"
MAX_ERROR = 500  # characters of an error or a receiver's answer kept in the log
ERROR_LOG_SECONDS = 60.0  # a delivery pass's error, logged again after this long at the soonest


def sign(secret: str, body: bytes) -> str:
    """The signature header's value for ``body``: ``sha256=<hex HMAC-SHA256>``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify_signature(secret: str, body: bytes, header: str | None) -> bool:
    """Whether ``header`` (the ``X-Leadscore-Signature`` value) signs ``body`` with ``secret``.

    ``body`` must be the raw bytes received. The comparison takes constant time.

    >>> verify_signature("s3cret", b'{"a":1}', sign("s3cret", b'{"a":1}'))
    True
    >>> verify_signature("s3cret", b'{"a":2}', sign("s3cret", b'{"a":1}'))
    False
    """
    if not header:
        return False
    return hmac.compare_digest(header.strip(), sign(secret, body))


@dataclass(frozen=True)
class RetryPolicy:
    """How long to wait for a receiver and how to retry.

    The n-th failed attempt (n from 1) waits ``min(first_delay_s * 2 ** (n - 1), max_delay_s)``
    shortened by up to ``jitter`` (a fraction) at random; after ``max_attempts`` the row is dead.
    A claim holds a row for ``lease_s`` (default: the timeout plus 10 seconds): a process
    killed mid-delivery leaves the row to be retried after that.
    """

    timeout_s: float = 10.0
    max_attempts: int = 12
    first_delay_s: float = 10.0
    max_delay_s: float = 3600.0
    jitter: float = 0.1
    lease_s: float | None = None

    def delay_us(self, attempts: int, rand: float = 0.0) -> int:
        """Microseconds to wait after the ``attempts``-th failure (``rand`` in [0, 1))."""
        delay = min(self.first_delay_s * 2.0 ** (attempts - 1), self.max_delay_s)
        return round(delay * (1.0 - self.jitter * rand) * 1_000_000)

    @property
    def lease_us(self) -> int:
        lease = self.timeout_s + 10.0 if self.lease_s is None else self.lease_s
        return round(lease * 1_000_000)


@dataclass(frozen=True)
class Claim:
    """An outbox row held by this process for one attempt."""

    outbox_id: int
    delivery_id: int
    attempt: int  # 1 for the first
    url: str
    body: str
    secret: str | None
    at_us: int
    created_us: int  # the row's: with its id and resends, the delivery id receivers see
    resends: int = 0


@dataclass(frozen=True)
class Attempt:
    """The result of one POST."""

    ok: bool
    status_code: int | None
    error: str | None
    duration_ms: float

    def summary(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "status_code": self.status_code,
            "error": self.error,
            "duration_ms": self.duration_ms,
        }


def _post(
    client: httpx.Client,
    url: str,
    body: str,
    secret: str | None,
    delivery: str,
    timestamp_s: int,
    timeout_s: float,
) -> Attempt:
    data = body.encode("utf-8")
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        DELIVERY_HEADER: delivery,
        TIMESTAMP_HEADER: str(timestamp_s),
    }
    if secret:
        headers[SIGNATURE_HEADER] = sign(secret, data)
    start = time.perf_counter()
    try:
        response = client.post(url, content=data, headers=headers, timeout=timeout_s)
    except httpx.TimeoutException:
        error = f"timed out after {timeout_s:g} s"
        return Attempt(False, None, error, (time.perf_counter() - start) * 1000)
    except Exception as e:  # refused, reset, a host name no resolver takes (idna), ...
        error = without_url_secrets(f"{type(e).__name__}: {e}", url)[:MAX_ERROR]
        return Attempt(False, None, error, (time.perf_counter() - start) * 1000)
    duration = (time.perf_counter() - start) * 1000
    if 200 <= response.status_code < 300:
        return Attempt(True, response.status_code, None, duration)
    answer = response.text.strip().replace("\n", " ")
    error = f"HTTP {response.status_code}" + (f": {answer}" if answer else "")
    return Attempt(
        False, response.status_code, without_url_secrets(error, url)[:MAX_ERROR], duration
    )


class Deliverer:
    """Sends due outbox rows; safe to run in several threads and processes at once.

    Parameters
    ----------
    db:
        The store's database (``store.db``).
    clock:
        Microseconds since the epoch (``store.clock``); schedules retries and leases.
    policy:
        Timeouts, backoff and attempt limits.
    client:
        An ``httpx.Client`` to send with (default: one of its own, closed by :meth:`close`).

    The service runs ``deliverer.run_forever(stop_event)`` in a background thread; tests call
    :meth:`deliver_due`.
    """

    def __init__(
        self,
        db: Database,
        *,
        clock: Callable[[], int] = now_micros,
        policy: RetryPolicy | None = None,
        client: httpx.Client | None = None,
    ) -> None:
        self.db = db
        self.clock = clock
        self.policy = policy or RetryPolicy()
        self._own_client = client is None
        # Redirects are not followed: a webhook URL that moved should be edited, and following
        # one would send the signed body somewhere nobody configured.
        self.client = client or httpx.Client(follow_redirects=False)
        self._random = random.Random()

    def close(self) -> None:
        if self._own_client:
            self.client.close()

    def __enter__(self) -> Deliverer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def claim(self) -> Claim | None:
        """Hold the oldest due row for one attempt (see the module's docstring), or None."""
        with self.db.write() as conn:
            now = self.clock()
            row = conn.execute(
                sa.select(
                    outbox.c.id,
                    outbox.c.url,
                    outbox.c.body,
                    outbox.c.secret,
                    outbox.c.attempts,
                    outbox.c.created_us,
                    outbox.c.resends,
                )
                .where(outbox.c.status == "pending", outbox.c.next_attempt_us <= now)
                .order_by(outbox.c.next_attempt_us, outbox.c.id)
                .limit(1)
                .with_for_update(skip_locked=True)
            ).first()
            if row is None:
                return None
            attempt = int(row.attempts) + 1
            conn.execute(
                outbox.update()
                .where(outbox.c.id == row.id)
                .values(attempts=attempt, next_attempt_us=now + self.policy.lease_us)
            )
            attempt_id = inserted_id(
                conn.execute(
                    deliveries.insert().values(
                        outbox_id=row.id, at_us=now, error=INTERRUPTED, duration_ms=0.0
                    )
                )
            )
        return Claim(
            int(row.id),
            attempt_id,
            attempt,
            row.url,
            row.body,
            row.secret,
            now,
            row.created_us,
            int(row.resends),
        )

    def attempt(self, claim: Claim) -> Attempt:
        """POST a claimed row (no database work)."""
        return _post(
            self.client,
            claim.url,
            claim.body,
            claim.secret,
            delivery_id(claim.outbox_id, claim.created_us, claim.resends),
            claim.at_us // 1_000_000,
            self.policy.timeout_s,
        )

    def record(self, claim: Claim, result: Attempt) -> str:
        """Log an attempt's result and move its row on; the row's status afterwards."""
        with self.db.write() as conn:
            now = self.clock()
            conn.execute(
                deliveries.update()
                .where(deliveries.c.id == claim.delivery_id)
                .values(
                    status_code=result.status_code,
                    error=result.error,
                    duration_ms=result.duration_ms,
                )
            )
            mine = sa.and_(outbox.c.id == claim.outbox_id, outbox.c.status == "pending")
            if result.ok:
                conn.execute(
                    outbox.update()
                    .where(mine)
                    .values(status="delivered", delivered_us=now, last_error=None)
                )
            else:
                dead = claim.attempt >= self.policy.max_attempts
                wait = self.policy.delay_us(claim.attempt, self._random.random())
                # Only while the lease is ours: had it run out and another process claimed the
                # row, that process now owns its schedule.
                conn.execute(
                    outbox.update()
                    .where(mine, outbox.c.attempts == claim.attempt)
                    .values(
                        status="dead" if dead else "pending",
                        next_attempt_us=now if dead else now + wait,
                        last_error=result.error,
                    )
                )
            status = conn.execute(
                sa.select(outbox.c.status).where(outbox.c.id == claim.outbox_id)
            ).scalar_one()
        if status == "dead":
            log.warning(
                "webhook %s to %s is dead: %s", claim.outbox_id, shown_url(claim.url), result.error
            )
        elif not result.ok:
            log.warning(
                "webhook %s to %s, attempt %d of %d failed: %s; retried in %.0f s",
                claim.outbox_id,
                shown_url(claim.url),
                claim.attempt,
                self.policy.max_attempts,
                result.error,
                wait / 1e6,
            )
        return str(status)

    def deliver_one(self) -> Attempt | None:
        """Claim, send and record one due row; None when nothing is due."""
        claim = self.claim()
        if claim is None:
            return None
        result = self.attempt(claim)
        self.record(claim, result)
        return result

    def deliver_due(self, limit: int = 100, *, workers: int = 1) -> int:
        """One pass: attempt up to ``limit`` due rows; how many attempts were made.

        With ``workers > 1`` that many threads send at once, so one slow receiver does not
        hold up the others.
        """
        if workers <= 1:
            done = 0
            while done < limit and self.deliver_one() is not None:
                done += 1
            return done
        lock = threading.Lock()
        count = [0]
        failed: list[Exception] = []

        def work() -> None:
            while True:
                with lock:
                    if count[0] >= limit or failed:
                        return
                    count[0] += 1
                try:
                    done = self.deliver_one()
                except Exception as e:  # (the database away): raised below, once
                    done = None
                    with lock:
                        failed.append(e)
                if done is None:
                    with lock:
                        count[0] -= 1
                    return

        threads = [threading.Thread(target=work, daemon=True) for _ in range(workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if failed:
            raise failed[0]
        return count[0]

    def run_forever(
        self, stop: threading.Event, interval: float = 1.0, *, workers: int = 4, batch: int = 100
    ) -> None:
        """Deliver until ``stop`` is set, sleeping ``interval`` seconds whenever nothing is due.

        Errors (the database away for a moment) are logged and retried, never raised: this is
        the body of a background thread. The same error again is logged once a minute, not at
        every pass.
        """
        logged: dict[str, float] = {}  # an error's text -> when it was last logged
        while not stop.is_set():
            try:
                done = self.deliver_due(batch, workers=workers)
            except Exception as e:
                said = reason_of(e)
                now = time.monotonic()
                if now - logged.get(said, -math.inf) >= ERROR_LOG_SECONDS:
                    logged[said] = now
                    log.exception(
                        "webhook delivery pass failed; retrying every %s s (the same error is "
                        "logged again in a minute at the soonest)",
                        interval,
                    )
                done = 0
            if done == 0:
                stop.wait(interval)


def send_test(
    url: str,
    secret: str | None = None,
    format: Format = "json",
    *,
    timeout_s: float = 10.0,
    now_us: int | None = None,
    client: httpx.Client | None = None,
    trigger_id: str = "test",
) -> Attempt:
    """POST a sample firing (a made-up lead) of ``trigger_id`` to ``url`` once, signed like a
    real one, with a delivery id of its own (``test-`` and random hex: a receiver dropping
    repeats by that id does not drop the next test).

    Nothing is stored; the result says what the receiver answered.
    """
    now = now_micros() if now_us is None else now_us
    body = encode_body(sample_payload(now, trigger_id), format)
    delivery = f"test-{secrets.token_hex(8)}"
    if client is not None:
        return _post(client, url, body, secret, delivery, now // 1_000_000, timeout_s)
    with httpx.Client(follow_redirects=False) as own:
        return _post(own, url, body, secret, delivery, now // 1_000_000, timeout_s)


def delivery_id(outbox_id: int, created_us: int, resends: int = 0) -> str:
    """The ``X-Leadscore-Delivery`` id of an outbox row: its id and creation time (in µs), the
    same on every attempt, and not that of a row of another store or of a store rebuilt (whose
    ids start again at 1); after its n-th re-send by hand (:func:`redeliver`), ``-n`` more: a
    new delivery, which a receiver that drops repeats by their id takes.

    >>> delivery_id(7, 1764547200000000), delivery_id(7, 1764547200000000, 2)
    ('7-1764547200000000', '7-1764547200000000-2')
    """
    return f"{outbox_id}-{created_us}" + (f"-{resends}" if resends else "")


# --- the delivery log -------------------------------------------------------------------------


def _entries(conn: sa.Connection, q: sa.Select[Any]) -> list[dict[str, Any]]:
    rows = [dict(r) for r in conn.execute(q).mappings()]
    ids = [r["id"] for r in rows]
    attempts: dict[int, list[dict[str, Any]]] = {i: [] for i in ids}
    if ids:
        log_rows = conn.execute(
            sa.select(deliveries)
            .where(deliveries.c.outbox_id.in_(ids))
            .order_by(deliveries.c.outbox_id, deliveries.c.id)
        ).mappings()
        for d in log_rows:
            attempts[d["outbox_id"]].append(
                {
                    "id": d["id"],
                    "at_us": d["at_us"],
                    "status_code": d["status_code"],
                    "error": d["error"],
                    "duration_ms": d["duration_ms"],
                }
            )
    for r in rows:
        r["delivery_id"] = delivery_id(r["id"], r["created_us"], r["resends"])
        r["signed"] = r.pop("secret") is not None  # the secret itself is never shown
        r["url"] = shown_url(r["url"])  # nor the whole URL (it is often a credential too)
        r["attempts_log"] = attempts[r["id"]]
    return rows


def _select() -> sa.Select[Any]:
    return sa.select(
        outbox.c.id,
        outbox.c.firing_id,
        trigger_firings.c.trigger_id,
        trigger_firings.c.lead_id,
        outbox.c.url,
        outbox.c.body,
        outbox.c.secret,
        outbox.c.status,
        outbox.c.attempts,
        outbox.c.next_attempt_us,
        outbox.c.last_error,
        outbox.c.created_us,
        outbox.c.delivered_us,
        outbox.c.resends,
    ).select_from(outbox.outerjoin(trigger_firings, outbox.c.firing_id == trigger_firings.c.id))


def delivery_log(
    conn: sa.Connection,
    *,
    status: str | None = None,
    trigger_id: str | None = None,
    lead_id: str | None = None,
    limit: int = 50,
    before_id: int | None = None,
) -> list[dict[str, Any]]:
    """Outbox rows, newest first, each with its attempts (oldest first) in ``attempts_log``.

    Each row: ``id, firing_id, trigger_id, lead_id, url, body, signed, status, attempts,
    next_attempt_us, last_error, created_us, delivered_us, resends, delivery_id,
    attempts_log``; ``before_id`` pages.
    """
    q = _select().order_by(outbox.c.id.desc()).limit(limit)
    if status is not None:
        q = q.where(outbox.c.status == status)
    if trigger_id is not None:
        q = q.where(trigger_firings.c.trigger_id == trigger_id)
    if lead_id is not None:
        q = q.where(trigger_firings.c.lead_id == lead_id)
    if before_id is not None:
        q = q.where(outbox.c.id < before_id)
    return _entries(conn, q)


def outbox_entry(conn: sa.Connection, outbox_id: int) -> dict[str, Any]:
    """One outbox row with its attempts (:class:`NotFound` if there is none)."""
    found = _entries(conn, _select().where(outbox.c.id == outbox_id))
    if not found:
        raise NotFound(f"no webhook delivery {outbox_id}")
    return found[0]


def redeliver(conn: sa.Connection, outbox_id: int, now_us: int) -> None:
    """Queue a row again now, with a fresh count of attempts (the "Send again" button; the
    earlier attempts stay in the log). A row delivered or dead is sent as a new delivery: its
    ``resends`` count grows, and with it its delivery id (:func:`delivery_id`), since a
    receiver that dropped repeats by that id would drop it (a delivered call's receiver has
    seen it). A pending row is the same delivery, tried now."""
    done = conn.execute(
        outbox.update()
        .where(outbox.c.id == outbox_id)
        .values(
            status="pending",
            attempts=0,
            next_attempt_us=now_us,
            delivered_us=None,
            resends=sa.case(
                (outbox.c.status == "pending", outbox.c.resends), else_=outbox.c.resends + 1
            ),
        )
    )
    if not done.rowcount:
        raise NotFound(f"no webhook delivery {outbox_id}")
