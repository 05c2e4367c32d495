"""Webhook delivery on SQLite and PostgreSQL against a real local HTTP receiver.

Retry times are exact with ``jitter=0``: after the n-th failure the next attempt is due
``first_delay_s * 2 ** (n - 1)`` seconds later, capped at ``max_delay_s``. With the policy below
(first 10 s, cap 25 s): 10 s, 20 s, 25 s, 25 s, ...
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
import sqlalchemy as sa

from leadscore.errors import NotFound
from leadscore.store import Store, open_database
from leadscore.store.outbox import (
    INTERRUPTED,
    Attempt,
    Deliverer,
    RetryPolicy,
    delivery_log,
    outbox_entry,
    redeliver,
    send_test,
    sign,
    verify_signature,
)
from leadscore.store.schema import outbox
from leadscore.store.webhooks import shown_url, without_url_secrets
from tests.conftest import Clock
from tests.webhook_receiver import Receiver, free_port

SECOND = 1_000_000
POLICY = RetryPolicy(timeout_s=0.3, max_attempts=4, first_delay_s=10, max_delay_s=25, jitter=0)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    try:
        yield r
    finally:
        r.stop()


@pytest.fixture
def deliverer(store: Store, clock: Clock) -> Iterator[Deliverer]:
    with Deliverer(store.db, clock=clock, policy=POLICY) as d:
        yield d


def queue(store: Store, url: str, body: str = '{"n":1}', secret: str | None = None) -> int:
    with store.db.write() as conn:
        result = conn.execute(
            outbox.insert().values(
                url=url,
                body=body,
                secret=secret,
                status="pending",
                attempts=0,
                next_attempt_us=store.clock(),
                created_us=store.clock(),
            )
        )
        assert result.inserted_primary_key is not None
        return int(result.inserted_primary_key[0])


def entry(store: Store, outbox_id: int) -> dict[str, Any]:
    with store.db.read() as conn:
        return outbox_entry(conn, outbox_id)


def test_delivered_with_headers_and_signature(
    store: Store, clock: Clock, receiver: Receiver, deliverer: Deliverer
) -> None:
    body = '{"lead":"Zoë","score":80.5}'
    signed = queue(store, receiver.url, body, secret="s3cret")
    plain = queue(store, receiver.url)
    assert deliverer.deliver_due() == 2
    assert deliverer.deliver_due() == 0
    first, second = receiver.requests
    assert first.body == body.encode()
    assert first.headers["Content-Type"] == "application/json"
    # its id and creation time: a rebuilt store (ids from 1 again) does not repeat old ids
    assert first.headers["X-Leadscore-Delivery"] == f"{signed}-{entry(store, signed)['created_us']}"
    assert first.headers["X-Leadscore-Timestamp"] == str(clock.now // SECOND)
    assert first.headers["X-Leadscore-Signature"] == sign("s3cret", body.encode())
    assert verify_signature("s3cret", first.body, first.headers["X-Leadscore-Signature"])
    assert not verify_signature("wrong", first.body, first.headers["X-Leadscore-Signature"])
    assert not verify_signature("s3cret", first.body + b" ", first.headers["X-Leadscore-Signature"])
    assert "X-Leadscore-Signature" not in second.headers
    assert not verify_signature("s3cret", second.body, None)
    e = entry(store, plain)
    assert (e["status"], e["attempts"], e["delivered_us"]) == ("delivered", 1, clock.now)
    assert [(a["status_code"], a["error"]) for a in e["attempts_log"]] == [(200, None)]


def test_signature_is_hmac_sha256_hex() -> None:
    """Worked by hand with Python's hmac: HMAC-SHA256(key=b"key", msg=b"The quick brown fox
    jumps over the lazy dog") is the well-known test vector f7bc83f4...d8."""
    assert sign("key", b"The quick brown fox jumps over the lazy dog") == (
        "sha256=f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"
    )


def test_retries_with_backoff_after_500_then_delivers(
    store: Store,
    clock: Clock,
    receiver: Receiver,
    deliverer: Deliverer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """500, 500, then 200: due again after 10 s, then after 20 s; nothing is sent early.
    Each failed attempt is logged."""
    receiver.answer(500, times=2)
    oid = queue(store, receiver.url)
    start = clock.now
    with caplog.at_level(logging.WARNING, logger="leadscore.store.outbox"):
        assert deliverer.deliver_due() == 1
    (record,) = caplog.records
    assert record.getMessage() == (
        f"webhook {oid} to {shown_url(receiver.url)}, attempt 1 of 4 failed: "
        "HTTP 500: receiver says no; retried in 10 s"
    )
    e = entry(store, oid)
    assert (e["status"], e["attempts"], e["next_attempt_us"]) == ("pending", 1, start + 10 * SECOND)
    assert e["last_error"] == "HTTP 500: receiver says no"
    clock.advance(seconds=9.9)
    assert deliverer.deliver_due() == 0
    clock.advance(seconds=0.1)
    assert deliverer.deliver_due() == 1
    assert entry(store, oid)["next_attempt_us"] == clock.now + 20 * SECOND
    clock.advance(seconds=20)
    assert deliverer.deliver_due() == 1
    e = entry(store, oid)
    assert (e["status"], e["attempts"], e["last_error"]) == ("delivered", 3, None)
    assert [a["status_code"] for a in e["attempts_log"]] == [500, 500, 200]
    assert len(receiver.requests) == 3
    assert len({r.headers["X-Leadscore-Delivery"] for r in receiver.requests}) == 1


def test_timeout_is_a_failed_attempt(
    store: Store, clock: Clock, receiver: Receiver, deliverer: Deliverer
) -> None:
    """The receiver sleeps 1 s; the timeout is 0.3 s."""
    receiver.answer(200, delay_s=1.0)
    oid = queue(store, receiver.url)
    assert deliverer.deliver_due() == 1
    e = entry(store, oid)
    (attempt,) = e["attempts_log"]
    assert (attempt["status_code"], attempt["error"]) == (None, "timed out after 0.3 s")
    assert 250 <= attempt["duration_ms"] < 1000
    assert (e["status"], e["last_error"]) == ("pending", "timed out after 0.3 s")
    clock.advance(seconds=10)
    assert deliverer.deliver_due() == 1
    assert entry(store, oid)["status"] == "delivered"


def test_receiver_down_then_up(store: Store, clock: Clock, deliverer: Deliverer) -> None:
    """Nothing listens on the port: connection refused, retried; once a receiver listens
    there and 10 s have passed, it is delivered."""
    down = Receiver(free_port())
    oid = queue(store, down.url)
    assert deliverer.deliver_due() == 1
    e = entry(store, oid)
    assert e["status"] == "pending"
    assert e["attempts_log"][0]["status_code"] is None
    assert e["attempts_log"][0]["error"].startswith("ConnectError")
    down.start()
    try:
        clock.advance(seconds=10)
        assert deliverer.deliver_due() == 1
    finally:
        down.stop()
    assert entry(store, oid)["status"] == "delivered"
    assert len(down.requests) == 1


def test_dead_after_max_attempts_and_redelivered_by_hand(
    store: Store, clock: Clock, receiver: Receiver, deliverer: Deliverer
) -> None:
    """max_attempts 4: failures at t = 0, 10, 30 (10 + 20) and 55 (30 + 25, capped) s; the
    fourth makes the row dead, and no later pass touches it. ``redeliver`` queues it again."""
    receiver.default = 503
    oid = queue(store, receiver.url)
    start = clock.now
    due = []
    for _ in range(4):
        assert deliverer.deliver_due() == 1
        due.append(entry(store, oid)["next_attempt_us"] - start)
        clock.now = start + due[-1]
    e = entry(store, oid)
    assert (e["status"], e["attempts"]) == ("dead", 4)
    assert due == [10 * SECOND, 30 * SECOND, 55 * SECOND, 55 * SECOND]  # dead: stays put
    clock.advance(days=1)
    assert deliverer.deliver_due() == 0
    receiver.default = 200
    with store.db.write() as conn:
        redeliver(conn, oid, clock.now)
    assert deliverer.deliver_due() == 1
    e = entry(store, oid)
    assert (e["status"], e["attempts"], e["resends"]) == ("delivered", 1, 1)
    assert [a["status_code"] for a in e["attempts_log"]] == [503, 503, 503, 503, 200]


def test_a_call_sent_again_by_hand_is_a_new_delivery(
    store: Store, clock: Clock, receiver: Receiver, deliverer: Deliverer
) -> None:
    """A call's retries keep its delivery id, so that a receiver drops repeats by it. Sent
    again by hand once it gave up, or once delivered, it is a new delivery, which such a
    receiver must take: `-1`, then `-2` after the id (each kept across that re-send's own
    retries), as the delivery log shows. A call still pending, sent again, is the same
    delivery, tried now."""
    receiver.answer(503, times=5)
    oid = queue(store, receiver.url)
    first = f"{oid}-{entry(store, oid)['created_us']}"
    for _ in range(4):  # 503 until it is dead
        deliverer.deliver_due()
        clock.now = entry(store, oid)["next_attempt_us"]
    assert entry(store, oid)["status"] == "dead"
    with store.db.write() as conn:
        redeliver(conn, oid, clock.now)
    deliverer.deliver_due()  # 503: retried under the same new id
    clock.now = entry(store, oid)["next_attempt_us"]
    deliverer.deliver_due()  # 200
    with store.db.write() as conn:
        redeliver(conn, oid, clock.now)  # delivered: sent again all the same
    deliverer.deliver_due()
    sent = [r.headers["X-Leadscore-Delivery"] for r in receiver.requests]
    assert sent == [first] * 4 + [f"{first}-1"] * 2 + [f"{first}-2"]
    e = entry(store, oid)
    assert (e["status"], e["resends"], e["delivery_id"]) == ("delivered", 2, f"{first}-2")
    receiver.answer(503)
    with store.db.write() as conn:
        redeliver(conn, oid, clock.now)
    deliverer.deliver_due()  # 503: pending, to be retried
    with store.db.write() as conn:
        redeliver(conn, oid, clock.now)  # pending: the same delivery, now
    deliverer.deliver_due()
    assert [r.headers["X-Leadscore-Delivery"] for r in receiver.requests[7:]] == [f"{first}-3"] * 2
    assert entry(store, oid)["resends"] == 3


def test_backoff_schedule_and_jitter() -> None:
    """Default policy: 10 s doubling (10, 20, 40, ..., 2560 after the 9th failure), capped at
    3600 s from the 10th (10 * 2**9 = 5120 > 3600). Jitter shortens by at most 10 %."""
    p = RetryPolicy()
    assert [p.delay_us(n) // SECOND for n in range(1, 12)] == [
        10, 20, 40, 80, 160, 320, 640, 1280, 2560, 3600, 3600,
    ]  # fmt: skip
    assert p.delay_us(1, rand=0.5) == 9_500_000
    assert 9 * SECOND < p.delay_us(1, rand=0.999999) < 10 * SECOND
    assert p.lease_us == 20 * SECOND  # timeout 10 s + 10 s


def test_an_expired_lease_is_delivered_again(
    store: Store, clock: Clock, receiver: Receiver, deliverer: Deliverer
) -> None:
    """A process claims a row and dies before posting. Until the lease (0.3 + 10 s) ends no
    one else takes the row; then it is delivered, and the log shows the lost attempt."""
    oid = queue(store, receiver.url)
    claim = deliverer.claim()
    assert claim is not None and claim.outbox_id == oid and claim.attempt == 1
    assert deliverer.deliver_due() == 0  # held by the "dead" process
    clock.advance(seconds=10.2)
    assert deliverer.deliver_due() == 0
    clock.advance(seconds=0.1)
    assert deliverer.deliver_due() == 1
    e = entry(store, oid)
    assert (e["status"], e["attempts"]) == ("delivered", 2)
    assert [(a["status_code"], a["error"]) for a in e["attempts_log"]] == [
        (None, INTERRUPTED),
        (200, None),
    ]
    assert len(receiver.requests) == 1


def test_a_late_result_does_not_undo_a_newer_claim(
    store: Store, clock: Clock, receiver: Receiver, deliverer: Deliverer
) -> None:
    """A first claim outlives its lease; a second claim delivers. The first then reports a
    failure: it is logged, but the row stays delivered."""
    oid = queue(store, receiver.url)
    stale = deliverer.claim()
    assert stale is not None
    clock.advance(seconds=61)
    assert deliverer.deliver_due() == 1
    status = deliverer.record(stale, Attempt(False, 500, "HTTP 500", 1.0))
    assert status == "delivered"
    assert [a["status_code"] for a in entry(store, oid)["attempts_log"]] == [500, 200]


def test_concurrent_deliverers_send_each_row_once(
    store: Store, clock: Clock, receiver: Receiver, db_url: str
) -> None:
    """Two deliverers on their own connections (as two processes would be), three threads
    each, 30 rows: every row is sent exactly once."""
    ids = [queue(store, receiver.url, json.dumps({"n": i})) for i in range(30)]
    other_db = open_database(db_url, migrate=False)
    counts: list[int] = []
    # six sends at once on a slow machine may take longer than POLICY's 0.3 s: such an attempt
    # counts as failed (the row stays pending) although the receiver got it
    patient = replace(POLICY, timeout_s=30.0)
    try:
        with (
            Deliverer(store.db, clock=clock, policy=patient) as a,
            Deliverer(other_db, clock=clock, policy=patient) as b,
        ):
            threads = [
                threading.Thread(target=lambda d=d: counts.append(d.deliver_due(workers=3)))
                for d in (a, b)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
    finally:
        other_db.dispose()
    assert sum(counts) == 30
    sent = sorted(int(r.headers["X-Leadscore-Delivery"].split("-")[0]) for r in receiver.requests)
    assert sent == ids
    with store.db.read() as conn:
        statuses = conn.execute(
            sa.select(outbox.c.status, sa.func.count()).group_by(outbox.c.status)
        )
        assert dict(statuses.all()) == {"delivered": 30}


def test_delivery_log(store: Store, clock: Clock, receiver: Receiver, deliverer: Deliverer) -> None:
    receiver.answer(500)
    a = queue(store, receiver.url, secret="x")
    b = queue(store, receiver.url)
    deliverer.deliver_due()
    with store.db.read() as conn:
        everything = delivery_log(conn)
        pending = delivery_log(conn, status="pending")
        older = delivery_log(conn, before_id=b)
    assert [r["id"] for r in everything] == [b, a]  # newest first
    assert [r["id"] for r in pending] == [a]
    assert [r["id"] for r in older] == [a]
    row = everything[1]
    assert "secret" not in row and row["signed"] is True
    assert (row["trigger_id"], row["lead_id"], row["firing_id"]) == (None, None, None)
    assert [(x["status_code"], x["at_us"]) for x in row["attempts_log"]] == [(500, clock.now)]
    with store.db.read() as conn, pytest.raises(NotFound):
        outbox_entry(conn, 999)


def test_run_forever_delivers_in_the_background(
    store: Store, clock: Clock, receiver: Receiver, deliverer: Deliverer
) -> None:
    stop = threading.Event()
    worker = threading.Thread(target=deliverer.run_forever, args=(stop, 0.02), daemon=True)
    worker.start()
    try:
        oid = queue(store, receiver.url)
        receiver.wait_for(1)
    finally:
        stop.set()
        worker.join(timeout=5)
    assert not worker.is_alive()
    assert entry(store, oid)["status"] == "delivered"


@pytest.mark.parametrize("fmt", ["json", "slack"])
def test_send_test(receiver: Receiver, clock: Clock, fmt: str) -> None:
    result = send_test(receiver.url, "s3cret", fmt, timeout_s=2, now_us=clock.now)  # type: ignore[arg-type]
    assert result.ok and result.status_code == 200
    (req,) = receiver.requests
    assert re.fullmatch("test-[0-9a-f]{16}", req.headers["X-Leadscore-Delivery"])
    assert verify_signature("s3cret", req.body, req.headers["X-Leadscore-Signature"])
    body = json.loads(req.body)
    if fmt == "json":
        assert body["lead"]["lead_id"] == "sample-lead"
        assert body["score"]["band"] == "hot"
    else:
        assert body["text"].startswith("Lead ann@example.com entered band hot")
        assert [b["type"] for b in body["blocks"]] == ["section", "section", "context"]


def test_send_test_to_a_receiver_that_is_down() -> None:
    result = send_test(f"http://127.0.0.1:{free_port()}/x", timeout_s=1)
    assert not result.ok
    assert result.status_code is None and result.error is not None
    # a host name no resolver takes is a failed attempt too, not an error of the server
    result = send_test("http://xn--ls8h.invalid/x", timeout_s=1)
    assert not result.ok and result.error is not None


def test_a_receiver_repeating_the_url_does_not_put_its_secrets_on_show() -> None:
    """Express answers 404 "Cannot POST /hook/SECRETPATH?token=SECRETQ"."""
    url = "http://bot:pa55@127.0.0.1:9/hook/SECRETPATH?token=SECRETQ"
    said = f"HTTP 404: Cannot POST /hook/SECRETPATH?token=SECRETQ (at {url}; user bot, pa55)"
    shown = without_url_secrets(said, url)
    for secret in ("SECRETPATH", "SECRETQ", "pa55"):
        assert secret not in shown, shown
    assert "http://***@127.0.0.1:9/hook/***?token=***" in shown


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://hooks.example.com", "https://hooks.example.com"),
        ("https://hooks.example.com/", "https://hooks.example.com/"),
        ("https://hooks.example.com/leads", "https://hooks.example.com/***"),
        ("http://127.0.0.1:8080/hook/", "http://127.0.0.1:8080/***"),
        ("https://webhook.site/0b6e1f2a-5a6b/", "https://webhook.site/***"),
        ("https://h.example//", "https://h.example//"),
        (
            "https://hooks.slack.com/services/T0001/B0002/AbCdEf0123456789xyzQ",
            "https://hooks.slack.com/services/***",
        ),
        (
            "https://discord.com/api/webhooks/1234567/Ab-cD.eF_gh",
            "https://discord.com/api/***",
        ),
        ("https://hooks.zapier.com/hooks/catch/123/ab1cd/", "https://hooks.zapier.com/hooks/***"),
        ("https://user:secret@h.example/x", "https://***@h.example/***"),
        ("https://tok3n@h.example/x", "https://***@h.example/***"),
        ("https://:secret@h.example/", "https://***@h.example/"),
        ("https://h.example/x/y?key=abc&empty=", "https://h.example/x/***?key=***&empty=***"),
        ("https://h.example/?abcdef0123&a=1", "https://h.example/?***&a=***"),
        ("https://[::1]:9/x/y#frag", "https://[::1]:9/x/***"),
        ("https://h.example:bad/x", "***"),
    ],
)
def test_shown_url_masks_what_is_likely_a_credential(url: str, shown: str) -> None:
    assert shown_url(url) == shown


def test_a_store_out_of_reach_does_not_make_the_delivery_thread_spin(
    store: Store, clock: Clock, deliverer: Deliverer, caplog: pytest.LogCaptureFixture
) -> None:
    """Every claim fails (the database refuses connections): a pass with several senders
    raises that error once, rather than counting the senders that died of it as deliveries
    (which had the loop start the next pass at once, hundreds a second, a traceback each);
    the loop waits its interval between passes and logs the error once."""
    claims: list[float] = []

    def refused() -> None:
        claims.append(time.monotonic())
        raise sa.exc.OperationalError("SELECT", {}, Exception("connection refused"))

    deliverer.claim = refused  # type: ignore[method-assign]
    with pytest.raises(sa.exc.OperationalError):
        deliverer.deliver_due(workers=4)
    claims.clear()
    stop = threading.Event()
    running = threading.Thread(target=deliverer.run_forever, args=(stop, 0.2), daemon=True)
    with caplog.at_level(logging.ERROR, logger="leadscore.store.outbox"):
        running.start()
        time.sleep(1.0)
        stop.set()
        running.join(5)
    assert 2 <= len(claims) <= 4 * 7  # a pass or so each 0.2 s, up to 4 senders each
    failures = [r for r in caplog.records if "delivery pass failed" in r.getMessage()]
    assert len(failures) == 1
