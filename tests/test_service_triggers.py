"""Triggers through the running service: a lead that turns hot is sent to sales once, signed,
and again only after it cooled down and turned hot again."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from leadscore.store import Store
from leadscore.store.outbox import verify_signature
from tests.conftest import Clock
from tests.webhook_receiver import Receiver

Serve = Callable[..., httpx.Client]
YAML = {"content-type": "application/yaml"}


def triggers_file(url: str) -> str:
    return f"""
triggers:
  - id: hot-to-sales
    when: {{enters_band: hot}}
    actions:
      - set_stage: mql
      - assign_owner: {{round_robin: [alice, bob]}}
      - webhook: {{url: "{url}", secret: s3cret}}
"""


def wait_for(predicate: Callable[[], bool], seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_hot_lead_is_handed_to_sales_once(serve: Serve, store: Store, clock: Clock) -> None:
    """b2b-default. L1 (VP, US): fit 35. A demo request makes engagement 50 and the score 85:
    hot -> the trigger fires (stage mql, owner alice, one signed webhook). A second event keeps
    it hot: no new firing. 181 days later the demo request is out of its 180-day window and
    gone-quiet applies: 35 - 15 = 20, cold (rescoring, reason decay). A new demo request makes
    it hot again: a second firing, owner stays alice (an owner is kept), webhook number two."""
    receiver = Receiver().start()
    try:
        api = serve(no_auth=True, deliver_interval=0.05)
        r = api.put("/api/v1/triggers", content=triggers_file(receiver.url), headers=YAML)
        assert r.status_code == 200, r.text
        assert r.json()["items"][0]["definition"]["actions"][2]["webhook"]["secret"] == "***"
        api.post("/api/v1/leads", json={"lead_id": "L1", "job_title": "VP", "country": "US"})
        api.post("/api/v1/events", json={"lead_id": "L1", "type": "demo_request"})
        lead = api.get("/api/v1/leads/L1", params={"explain": "false"}).json()
        assert (lead["stage"], lead["owner"]) == ("mql", "alice")
        api.post("/api/v1/events", json={"lead_id": "L1", "type": "email_open"})
        wait_for(lambda: len(receiver.requests) == 1)
        hook = receiver.requests[0]
        assert verify_signature("s3cret", hook.body, hook.headers["X-Leadscore-Signature"])
        body = json.loads(hook.body)
        assert (body["trigger"], body["lead"]["lead_id"], body["score"]["band"]) == (
            "hot-to-sales",
            "L1",
            "hot",
        )
        assert body["explanation"]["score"] == body["score"]["score"] == 85.0

        clock.advance(days=181)
        assert api.post("/api/v1/rescore").json()["changed"] == 1
        cold = api.get("/api/v1/leads/L1", params={"explain": "false"}).json()
        assert (cold["scores"]["b2b-default"]["score"], cold["scores"]["b2b-default"]["band"]) == (
            20.0,
            "cold",
        )
        api.post("/api/v1/events", json={"lead_id": "L1", "type": "demo_request"})
        wait_for(lambda: len(receiver.requests) == 2)
        firings = api.get("/api/v1/firings", params={"lead_id": "L1"}).json()["items"]
        assert [f["trigger_id"] for f in firings] == ["hot-to-sales", "hot-to-sales"]

        def statuses() -> list[str]:
            return [d["status"] for d in api.get("/api/v1/deliveries").json()["items"]]

        # the receiver has the call a moment before the deliverer records its answer
        wait_for(lambda: statuses() == ["delivered", "delivered"])
        time.sleep(0.3)
        assert len(receiver.requests) == 2
        # "Send again" (the Triggers page's button) is a new delivery, with an id of its own
        # that a receiver dropping repeats by id takes, and the same signed body
        first = api.get("/api/v1/deliveries").json()["items"][-1]
        assert first["delivery_id"] == receiver.requests[0].headers["X-Leadscore-Delivery"]
        again = api.post(f"/api/v1/deliveries/{first['id']}/redeliver").json()
        assert (again["status"], again["resends"]) == ("pending", 1)
        assert again["delivery_id"] == f"{first['delivery_id']}-1"
        wait_for(lambda: len(receiver.requests) == 3)
        resent = receiver.requests[2]
        assert resent.headers["X-Leadscore-Delivery"] == again["delivery_id"]
        assert resent.body == receiver.requests[0].body
        assert verify_signature("s3cret", resent.body, resent.headers["X-Leadscore-Signature"])
    finally:
        receiver.stop()


def test_bad_triggers_file_is_rejected_with_lines(serve: Serve) -> None:
    api = serve(no_auth=True)
    text = "triggers:\n  - id: x\n    when: {enters_band: scorching}\n    actions: []\n"
    r = api.put("/api/v1/triggers", content=text, headers=YAML)
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["code"] == "invalid_configuration"
    assert all(d["line"] for d in err["details"]), err
    assert api.get("/api/v1/triggers").json()["items"] == []
    # an empty body does not drop every trigger; `triggers: []` does
    good = "triggers:\n  - id: x\n    when: {becomes_mql: true}\n    actions: [{set_stage: sql}]\n"
    assert api.put("/api/v1/triggers", content=good, headers=YAML).status_code == 200
    for empty in ("", "  \n"):
        r = api.put("/api/v1/triggers", content=empty, headers=YAML)
        assert r.status_code == 400 and "`triggers: []` removes every trigger" in r.text
    assert [t["id"] for t in api.get("/api/v1/triggers").json()["items"]] == ["x"]
    r = api.patch("/api/v1/triggers/x", json={"enabled": "no"})  # true or false, not "no"
    assert r.status_code == 422 and api.get("/api/v1/triggers").json()["items"][0]["enabled"]
    r = api.put("/api/v1/triggers", content="triggers: []\n", headers=YAML)
    assert r.status_code == 200 and r.json()["items"] == []


def test_publish_does_not_fire_triggers_unless_asked(serve: Serve) -> None:
    receiver = Receiver().start()
    try:
        api = serve(no_auth=True, deliver_interval=0.05)
        api.put("/api/v1/triggers", content=triggers_file(receiver.url), headers=YAML)
        api.post("/api/v1/leads", json={"lead_id": "L1", "job_title": "VP"})
        model = "version: 1\nname: all-hot\nbands: {cold: -.inf, hot: 0}\nmql: hot\n"
        api.post("/api/v1/models", content=model, headers=YAML)
        assert api.post("/api/v1/models/all-hot/publish").json()["rescore"]["changed"] == 1
        assert api.get("/api/v1/firings").json()["items"] == []
        model2 = model.replace("hot: 0", "hot: -1")
        api.post("/api/v1/models", content=model2, headers=YAML)
        api.post("/api/v1/models/all-hot/publish", params={"fire_triggers": "true"})
        # still hot under version 2: no crossing, so nothing fires even when allowed
        assert api.get("/api/v1/firings").json()["items"] == []
    finally:
        receiver.stop()


def test_webhook_test_button(serve: Serve) -> None:
    receiver = Receiver().start()
    try:
        api = serve(no_auth=True)
        r = api.post("/api/v1/webhooks/test", json={"url": receiver.url, "format": "slack"})
        assert r.status_code == 200, r.text
        assert r.json()["status_code"] == 200
        assert "text" in json.loads(receiver.requests[0].body)
        # a URL or secret a triggers file would refuse is refused here too
        for bad in ({"url": "http://"}, {"url": receiver.url, "secret": ""}):
            assert api.post("/api/v1/webhooks/test", json=bad).status_code == 422, bad
        assert api.post("/api/v1/webhooks/test", json={"url": "HTTP" + receiver.url[4:]}).json()[
            "ok"
        ]
    finally:
        receiver.stop()


def test_a_triggers_file_is_sent_as_yaml(serve: Serve) -> None:
    api = serve(no_auth=True)
    body = "triggers: []\n"
    r = api.put("/api/v1/triggers", content=body, headers={"content-type": "image/png"})
    assert r.status_code == 415 and "application/yaml" in r.json()["error"]["message"]
    for kind in ("application/yaml", "text/yaml", "text/plain", "application/json"):
        r = api.put("/api/v1/triggers", content=body, headers={"content-type": kind})
        assert r.status_code == 200, (kind, r.text)


def test_webhook_test_button_waits_as_long_as_a_real_call(serve: Serve) -> None:
    """A receiver slower than --webhook-timeout fails the test, as it would fail a firing."""
    receiver = Receiver().start()
    receiver.answers = [(200, 2.0)]
    try:
        api = serve(no_auth=True, webhook_timeout=0.5)
        r = api.post("/api/v1/webhooks/test", json={"url": receiver.url})
        assert r.status_code == 200, r.text
        assert not r.json()["ok"] and "timed out" in r.json()["error"], r.json()
    finally:
        receiver.stop()


def test_webhook_urls_are_shown_without_their_credentials(serve_ui: Serve) -> None:
    """A webhook URL is often a credential (a password in it, a token in its path or query):
    the API, the web page and the delivery log show it masked, and the webhook still goes to the
    whole URL."""
    receiver = Receiver().start()
    try:
        port = receiver.port
        url = f"http://bot:pw@127.0.0.1:{port}/hooks/T0001/AbCdEf0123456789xyz?token=abc"
        shown = f"http://***@127.0.0.1:{port}/hooks/***?token=***"
        api = serve_ui(no_auth=True, deliver_interval=0.05)
        r = api.put("/api/v1/triggers", content=triggers_file(url), headers=YAML)
        assert r.status_code == 200, r.text
        assert r.json()["items"][0]["definition"]["actions"][2]["webhook"]["url"] == shown
        listed = api.get("/api/v1/triggers").json()["items"][0]["definition"]["actions"][2]
        assert listed["webhook"] == {"url": shown, "secret": "***", "format": "json"}
        api.post("/api/v1/leads", json={"lead_id": "L1", "job_title": "VP", "country": "US"})
        api.post("/api/v1/events", json={"lead_id": "L1", "type": "demo_request"})
        wait_for(lambda: len(receiver.requests) == 1)
        assert receiver.requests[0].path == "/hooks/T0001/AbCdEf0123456789xyz?token=abc"
        wait_for(lambda: api.get("/api/v1/deliveries").json()["items"][0]["status"] != "pending")
        assert api.get("/api/v1/deliveries").json()["items"][0]["url"] == shown
        page = api.get("/settings/triggers").text
        assert "AbCdEf0123456789xyz" not in page and ":pw@" not in page and "token=abc" not in page
        assert shown.replace("&", "&amp;") in page
        test = api.post("/api/v1/triggers/hot-to-sales/test").json()
        assert test["items"][0]["url"] == shown
        assert json.loads(receiver.requests[-1].body)["trigger"] == "hot-to-sales"
        (firing,) = api.get("/api/v1/firings").json()["items"]
        webhooks = [a for a in firing["detail"]["actions"] if a["action"] == "webhook"]
        assert [w["url"] for w in webhooks] == [shown]
        assert "AbCdEf0123456789xyz" not in api.get("/api/v1/firings").text
        assert "AbCdEf0123456789xyz" not in api.get("/leads/L1").text
    finally:
        receiver.stop()


def test_a_start_with_a_triggers_file_says_what_it_undid(
    serve: Serve, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """--triggers makes the file the triggers at every start: a trigger switched off over the
    API since is on again, and the log says so rather than nothing."""
    path = tmp_path / "triggers.yaml"
    path.write_text(triggers_file("https://hooks.example/x"))
    api = serve(no_auth=True, triggers=str(path))
    r = api.patch("/api/v1/triggers/hot-to-sales", json={"enabled": False})
    assert r.status_code == 200, r.text
    with caplog.at_level(logging.WARNING, logger="leadscore.service"):
        again = serve(no_auth=True, triggers=str(path))
    assert again.get("/api/v1/triggers").json()["items"][0]["enabled"] is True
    assert (
        f"the triggers file {path} replaced the stored triggers: 'hot-to-sales' switched on "
        "again (leave out --triggers to keep triggers changed over the API or the web page)"
    ) in caplog.text


def test_triggers_stored_under_laxer_checks_stay_readable(
    serve: Serve, store: Store, tmp_path: Path
) -> None:
    """A trigger saved before owners needed names and URLs their stricter check is read back
    as it is: listed, switched, and replaced by a file at start, not a 500."""
    from leadscore.store.schema import triggers

    old = {
        "id": "old",
        "when": {"enters_band": "hot"},
        "actions": [
            {"assign_owner": {"round_robin": ["alice", " "]}},
            {"webhook": {"url": "https://exa mple.com/x"}},
        ],
        "enabled": True,
    }
    with store.db.write() as conn:
        conn.execute(triggers.insert().values(id="old", definition=old, enabled=True, updated_us=1))
    api = serve(no_auth=True)
    r = api.get("/api/v1/triggers")
    assert r.status_code == 200 and r.json()["items"][0]["id"] == "old"
    assert api.patch("/api/v1/triggers/old", json={"enabled": False}).status_code == 200
    path = tmp_path / "triggers.yaml"
    path.write_text(triggers_file("https://hooks.example/x"))
    again = serve(no_auth=True, triggers=str(path))
    assert [t["id"] for t in again.get("/api/v1/triggers").json()["items"]] == ["hot-to-sales"]
