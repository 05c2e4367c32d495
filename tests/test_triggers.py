"""Triggers on SQLite and PostgreSQL: transitions, reasons, actions, webhook bodies, the file.

Scores come from a tiny model whose arithmetic is easy to follow: a title containing "vp" is
worth 30 (fit, grade A from 30, else B), each demo request +50 and each unsubscribe -50
(engagement, no decay); bands cold, warm from 40, hot from 75; MQL = hot.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from leadscore.errors import ConfigError
from leadscore.spec import Model, parse_model
from leadscore.store import EventInput, LeadInput, ScoreChange, Store
from leadscore.store.db import database_url
from leadscore.store.outbox import Deliverer, RetryPolicy, verify_signature
from leadscore.store.schema import counters, leads, outbox, stage_changes, trigger_firings
from leadscore.store.scores import REASONS
from leadscore.store.trigger_config import Reason
from leadscore.store.triggers import (
    TriggerEngine,
    firings,
    list_triggers,
    load_triggers,
    parse_triggers,
    save_triggers,
    set_trigger_enabled,
)
from leadscore.store.webhooks import slack_message
from tests.conftest import Clock
from tests.webhook_receiver import Receiver

TINY = """
version: 1
name: tiny
profile:
  - {id: vp, if: {field: title, contains: vp}, points: 30}
activity:
  - {id: demo, event: demo_request, points: 50}
  - {id: unsub, event: unsubscribe, points: -50}
grades: {A: 30, B: 0}
bands: {cold: -.inf, warm: 40, hot: 75}
mql: hot
"""


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    try:
        yield r
    finally:
        r.stop()


def setup(store: Store, triggers_yaml: str, model: str = TINY) -> TriggerEngine:
    store.ensure_published(model, "tiny.yaml")
    engine = TriggerEngine.attach(store)
    with store.db.write() as conn:
        save_triggers(conn, parse_triggers(triggers_yaml), store.clock())
    return engine


def fired(store: Store, trigger_id: str | None = None) -> list[dict[str, Any]]:
    with store.db.read() as conn:
        return list(reversed(firings(conn, trigger_id=trigger_id)))


def profile(store: Store, lead_id: str, **fields: Any) -> None:
    store.upsert_leads([LeadInput(lead_id, fields=fields)])


def event(store: Store, clock: Clock, lead_id: str, etype: str) -> None:
    clock.advance(seconds=1)
    store.ingest_events([EventInput(etype, clock.now, lead_id)])


# step: what happens, and the score after it
#   0 profile VP           first score 30  cold  A  not MQL
#   1 demo                 30 -> 80        hot      MQL
#   2 demo                 80 -> 130       hot
#   3 unsubscribe         130 -> 80        hot
#   4 unsubscribe          80 -> 30        cold     not MQL
#   5 demo                 30 -> 80        hot      MQL
#   6 profile Manager      80 -> 50        warm  B  not MQL   (fit 30 -> 0)
#   7 profile VP again     50 -> 80        hot   A  MQL
def run_script(store: Store, clock: Clock) -> list[int]:
    """The number of firings after each step."""
    counts = []
    steps = [
        lambda: profile(store, "L1", title="VP Sales"),
        lambda: event(store, clock, "L1", "demo_request"),
        lambda: event(store, clock, "L1", "demo_request"),
        lambda: event(store, clock, "L1", "unsubscribe"),
        lambda: event(store, clock, "L1", "unsubscribe"),
        lambda: event(store, clock, "L1", "demo_request"),
        lambda: profile(store, "L1", title="Marketing Manager"),
        lambda: profile(store, "L1", title="VP Sales"),
    ]
    for step in steps:
        step()
        counts.append(len(fired(store)))
    return counts


WHEN_STEPS = {
    "enters_band: hot": [1, 5, 7],
    "enters_band: cold": [0, 4],  # the first score enters cold from "nothing"
    "leaves_band: hot": [4, 6],
    "becomes_mql: true": [1, 5, 7],
    "stops_being_mql: true": [4, 6],
    "grade_changes: true": [6, 7],  # a first grade is not a change
    "enters_grade: A": [0, 7],
    "crosses: 80": [1, 5, 7],  # old < 80 <= new; 130 -> 80 is not a crossing
    "crosses: 20": [0],  # from minus infinity on the first score, never again
    "drops_below: 80": [4, 6],  # new < 80 <= old: 80 -> 30 and 80 -> 50
}


def test_each_when_fires_once_per_crossing(store: Store, clock: Clock) -> None:
    """The steps of :func:`run_script` at which each kind fires (see the table above it): one
    trigger per kind, all watching the same lead."""
    items = [
        f"{{id: t{i}, when: {{{when}}}, actions: [set_stage: mql]}}"
        for i, when in enumerate(WHEN_STEPS)
    ]
    setup(store, f"triggers: [{', '.join(items)}]")
    steps: dict[str, list[int]] = {}
    counts = run_script(store, clock)
    for f in fired(store):
        # firings are numbered in order; find the step that made each
        step = next(i for i, n in enumerate(counts) if n >= f["id"])
        steps.setdefault(f["trigger_id"], []).append(step)
    expected = {f"t{i}": s for i, s in enumerate(WHEN_STEPS.values())}
    assert steps == expected
    kinds = {f["trigger_id"]: f["detail"]["transition"]["kind"] for f in fired(store)}
    assert kinds == {f"t{i}": w.split(":")[0] for i, w in enumerate(WHEN_STEPS)}


def test_reasons_filter_and_sheet_filter(store: Store, clock: Clock) -> None:
    """Only event-driven changes fire ``by-event``: steps 1 and 5 (step 7 is a profile update).
    ``other-sheet`` watches a sheet that does not exist and never fires."""
    setup(
        store,
        """
        triggers:
          - {id: by-event, when: {enters_band: hot}, reasons: [event], actions: [set_stage: mql]}
          - {id: other-sheet, sheet: nope, when: {enters_band: hot}, actions: [set_stage: mql]}
        """,
    )
    counts = run_script(store, clock)
    assert counts == [0, 1, 1, 1, 1, 2, 2, 2]
    assert {f["trigger_id"] for f in fired(store)} == {"by-event"}
    assert [f["reason"] for f in fired(store)] == ["event", "event"]


def test_reason_literal_matches_the_store() -> None:
    assert set(Reason.__args__) == set(REASONS)  # type: ignore[attr-defined]


def test_model_change_fires_only_when_asked(store: Store, clock: Clock) -> None:
    """vp 30 -> 80 makes L1 (no events) hot through a publish. Publishing with the default
    fire_triggers=False records nothing; publishing back (80 -> 30, leaves hot) and again
    (30 -> 80) with fire_triggers=True fires once, because the trigger lists "model change"."""
    setup(
        store,
        "triggers: [{id: t, when: {enters_band: hot}, reasons: [model change], "
        "actions: [set_stage: mql]}]",
    )
    profile(store, "L1", title="VP")
    store.ensure_published(TINY.replace("points: 30", "points: 80"), "tiny.yaml")
    assert fired(store) == []
    store.add_model(TINY, "tiny.yaml")
    store.publish("tiny", fire_triggers=True)
    assert fired(store) == []  # it left hot
    store.add_model(TINY.replace("points: 30", "points: 80"), "tiny.yaml")
    store.publish("tiny", fire_triggers=True)
    assert [(f["trigger_id"], f["reason"]) for f in fired(store)] == [("t", "model change")]


def test_hand_made_changes_and_fire_false(store: Store, clock: Clock) -> None:
    """The engine as a ChangeListener, called directly: ``fire=False`` records nothing; a
    change on another sheet is ignored; the matching one fires."""
    engine = setup(
        store, "triggers: [{id: t, sheet: tiny, when: {crosses: 50}, actions: [set_stage: mql]}]"
    )
    profile(store, "L1", title="nobody")

    def change(sheet: str, old: float | None, new: float) -> ScoreChange:
        return ScoreChange(
            "L1", sheet, 1, old, new, None, None, None, None, None, False, "manual", None
        )

    with store.db.write() as conn:
        engine(conn, [change("tiny", 10, 60)], clock.now, False)
        engine(conn, [change("other", 10, 60)], clock.now, True)
        engine(conn, [change("tiny", 49.99, 50)], clock.now, True)
    assert [(f["lead_id"], f["sheet"]) for f in fired(store)] == [("L1", "tiny")]


def test_disabled_trigger_does_not_fire(store: Store, clock: Clock) -> None:
    setup(store, "triggers: [{id: t, when: {enters_band: hot}, actions: [set_stage: mql]}]")
    with store.db.write() as conn:
        set_trigger_enabled(conn, "t", False, clock.now)
    profile(store, "L1", title="VP")
    event(store, clock, "L1", "demo_request")
    assert fired(store) == []
    with store.db.write() as conn:
        set_trigger_enabled(conn, "t", True, clock.now)
    event(store, clock, "L1", "unsubscribe")
    event(store, clock, "L1", "demo_request")
    assert len(fired(store)) == 1


def test_set_stage_moves_forward_only(store: Store, clock: Clock) -> None:
    """L1 (stage lead) becomes mql with the trigger as actor; L2, a customer, stays one."""
    setup(
        store, "triggers: [{id: hot-to-mql, when: {enters_band: hot}, actions: [set_stage: mql]}]"
    )
    store.upsert_leads(
        [
            LeadInput("L1", fields={"title": "VP"}),
            LeadInput("L2", fields={"title": "VP"}, stage="customer"),
        ]
    )
    event(store, clock, "L1", "demo_request")
    event(store, clock, "L2", "demo_request")
    with store.db.read() as conn:
        stages = dict(conn.execute(sa.select(leads.c.lead_id, leads.c.stage)).all())
        changes = conn.execute(
            sa.select(stage_changes.c.lead_id, stage_changes.c.to_stage, stage_changes.c.actor)
        ).all()
    assert stages == {"L1": "mql", "L2": "customer"}
    assert [tuple(c) for c in changes] == [("L1", "mql", "hot-to-mql")]
    kept = next(f for f in fired(store) if f["lead_id"] == "L2")["detail"]["actions"][0]
    assert kept["changed"] is False and "customer" in kept["note"]


def test_round_robin_continues_across_engines(store: Store, clock: Clock) -> None:
    """Four leads become MQL in turn: alice, bob, carol, then (with a fresh engine, as after a
    restart) alice again: the position is in the counters table. A lead that already has an
    owner keeps it and does not use a turn."""
    setup(
        store,
        "triggers: [{id: rr, when: {becomes_mql: true}, "
        "actions: [assign_owner: {round_robin: [alice, bob, carol]}]}]",
    )
    store.upsert_leads(
        [LeadInput(f"L{i}", fields={"title": "VP"}) for i in range(1, 5)]
        + [LeadInput("L0", fields={"title": "VP"}, owner="zoe")]
    )
    for lead_id in ("L1", "L2", "L0", "L3"):
        event(store, clock, lead_id, "demo_request")
    TriggerEngine.attach(store)
    event(store, clock, "L4", "demo_request")
    with store.db.read() as conn:
        owners = dict(conn.execute(sa.select(leads.c.lead_id, leads.c.owner)).all())
    assert owners == {"L0": "zoe", "L1": "alice", "L2": "bob", "L3": "carol", "L4": "alice"}
    hows = [f["detail"]["actions"][0].get("how") for f in fired(store)]
    assert hows == ["round robin, turn 1", "round robin, turn 2", None, "round robin, turn 3",
                    "round robin, turn 4"]  # fmt: skip


def test_assign_by_field(store: Store, clock: Clock) -> None:
    """country us -> alice (the map matches ignoring case), DE -> bob, FR -> carol (default);
    with no default, a lead in FR would keep no owner."""
    setup(
        store,
        """
        triggers:
          - id: territory
            when: {becomes_mql: true}
            actions:
              - assign_owner: {by_field: country, map: {US: alice, DE: bob}, default: carol}
        """,
    )
    store.upsert_leads(
        [
            LeadInput("L1", fields={"title": "VP", "country": "us"}),
            LeadInput("L2", fields={"title": "VP", "country": "DE"}),
            LeadInput("L3", fields={"title": "VP", "country": "FR"}),
        ]
    )
    for lead_id in ("L1", "L2", "L3"):
        event(store, clock, lead_id, "demo_request")
    with store.db.read() as conn:
        owners = dict(conn.execute(sa.select(leads.c.lead_id, leads.c.owner)).all())
    assert owners == {"L1": "alice", "L2": "bob", "L3": "carol"}
    assert (
        fired(store)[2]["detail"]["actions"][0]["how"] == "country = 'FR' (not in the map: default)"
    )


def test_webhook_body_and_signature(store: Store, clock: Clock, receiver: Receiver) -> None:
    """L1 (VP, fit 30, grade A) was 30 (cold); a demo request (+50) makes it 80: hot, MQL.
    The stage is set first, so the body already shows the lead as mql and owned by alice."""
    setup(
        store,
        f"""
        triggers:
          - id: hot-to-sales
            when: {{enters_band: hot}}
            actions:
              - set_stage: mql
              - assign_owner: {{round_robin: [alice]}}
              - webhook: {{url: "{receiver.url}", secret: s3cret}}
              - webhook: {{url: "{receiver.url}", format: slack}}
        """,
    )
    store.upsert_leads([LeadInput("L1", "ann@acme.com", {"title": "VP Sales"})])
    event(store, clock, "L1", "demo_request")
    with Deliverer(store.db, clock=clock, policy=RetryPolicy(timeout_s=2)) as deliverer:
        assert deliverer.deliver_due() == 2
    signed, slack = receiver.requests
    assert verify_signature("s3cret", signed.body, signed.headers["X-Leadscore-Signature"])
    assert "X-Leadscore-Signature" not in slack.headers
    body = json.loads(signed.body)
    assert body["trigger"] == "hot-to-sales"
    assert body["fired_at"] == "2026-06-30T12:00:01Z"
    assert body["reason"] == "event"
    assert body["transition"] == {
        "kind": "enters_band", "value": "hot", "from": "cold", "to": "hot",
        "text": "entered band hot",
    }  # fmt: skip
    assert body["lead"] == {
        "lead_id": "L1", "email": "ann@acme.com", "stage": "mql", "owner": "alice",
        "profile": {"title": "VP Sales", "email": "ann@acme.com"},
    }  # fmt: skip
    assert body["sheet"] == "tiny"
    assert body["score"] == {
        "score": 80.0, "fit": 30.0, "engagement": 50.0, "grade": "A", "band": "hot",
        "mql": True, "priority": None, "previous_score": 30.0, "previous_band": "cold",
        "previous_grade": "A", "previous_mql": False,
    }  # fmt: skip
    explanation = body["explanation"]
    assert {r["rule_id"]: r["points"] for r in explanation["rules"]} == {
        "vp": 30.0,
        "demo": 50.0,
        "unsub": 0.0,
    }
    assert explanation["score"] == 80.0
    assert "Score 80.00 = fit 30.00 + engagement 50.00" in explanation["text"]
    message = json.loads(slack.body)
    assert (
        message["text"]
        == "Lead ann@acme.com entered band hot on tiny: score 80 (band hot, grade A)"
    )
    assert "• demo: +50\n• vp: +30" in message["blocks"][1]["text"]["text"]
    with store.db.read() as conn:
        detail = fired(store)[0]["detail"]
        ids = [r[0] for r in conn.execute(sa.select(outbox.c.id).order_by(outbox.c.id))]
    assert [a["action"] for a in detail["actions"]] == [
        "set_stage",
        "assign_owner",
        "webhook",
        "webhook",
    ]
    assert [a.get("outbox_id") for a in detail["actions"][2:]] == ids


def test_a_failing_firing_is_recorded_and_the_score_kept(store: Store, clock: Clock) -> None:
    """The model cannot be loaded for the explanation: the firing is recorded with the error,
    its stage change rolled back with it, and the event and score still commit."""
    setup(
        store,
        "triggers: [{id: t, when: {enters_band: hot}, "
        "actions: [set_stage: mql, webhook: {url: 'http://127.0.0.1:9/x'}]}]",
    )

    def broken(conn: sa.Connection, version_id: int) -> Model:
        raise RuntimeError("model store unavailable")

    store.listener = TriggerEngine(broken)
    profile(store, "L1", title="VP")
    event(store, clock, "L1", "demo_request")
    (firing,) = fired(store)
    assert firing["detail"]["error"] == "RuntimeError: model store unavailable"
    with store.db.read() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(outbox)).scalar() == 0
        assert conn.execute(sa.select(leads.c.stage)).scalar() == "lead"
        assert conn.execute(sa.select(sa.func.count()).select_from(trigger_firings)).scalar() == 1
        assert store.explain(conn, "L1", "tiny").score == 80.0


def test_save_list_and_redact(store: Store, clock: Clock) -> None:
    specs = parse_triggers(
        """
        triggers:
          - id: b
            when: {crosses: 50}
            actions: [{webhook: {url: "https://hooks.example/x", secret: top}}]
          - {id: a, when: {becomes_mql: true}, enabled: false, actions: [set_stage: MQL]}
        """
    )
    with store.db.write() as conn:
        save_triggers(conn, specs, clock.now)
        save_triggers(conn, specs[:1] + specs[1:], clock.now)  # replacing is idempotent
    with store.db.read() as conn:
        stored = list_triggers(conn)
    assert [(t.id, t.enabled) for t in stored] == [("a", False), ("b", True)]
    assert stored[0].spec.actions[0].set_stage == "mql"
    assert stored[1].spec == specs[0]
    assert stored[1].summary()["definition"]["actions"][0]["webhook"]["secret"] == "***"
    assert stored[1].spec.reasons == ["event", "profile", "decay", "manual"]


BAD = """\
triggers:
  - id: hot-to-sales
    when: {enters_band: hot, crosses: 50}
    on: [event]
    actions:
      - webhook: {url: "ftp://hooks.example/x"}
      - set_stage: customerr
  - id: hot-to-sales
    when: {becomes_mql: true}
    actions:
      - assign_owner: {round_robin: []}
      - assign_owner: {by_field: country}
      - webhok: {url: "https://hooks.example/x"}
  - id: t3
    when: {crosses: fifty}
    reasons: [event, sometimes]
    actions: []
"""


def test_file_errors_are_all_reported_with_lines(tmp_path: Path) -> None:
    path = tmp_path / "triggers.yaml"
    path.write_text(BAD)
    with pytest.raises(ConfigError) as e:
        load_triggers(path)
    f = str(path)
    assert [str(i) for i in e.value.issues] == [
        f"{f}:3: triggers[0].when: when needs exactly one of enters_band, leaves_band, "
        "becomes_mql, stops_being_mql, grade_changes, enters_grade, crosses, drops_below; "
        "got enters_band and crosses",
        f"{f}:4: triggers[0].reasons: YAML reads the key 'on' as true/false: name it 'reasons'",
        f"{f}:6: triggers[0].actions[0].webhook.url: must be an http:// or https:// URL, "
        "got 'ftp://hooks.example/***'",
        f"{f}:7: triggers[0].actions[1].set_stage: unknown stage 'customerr'; stages are "
        "subscriber, lead, mql, sql, opportunity, customer, disqualified, recycled",
        f"{f}:8: triggers[1].id: duplicate id 'hot-to-sales' (see item 0)",
        f"{f}:11: triggers[1].actions[0].assign_owner.round_robin: must not be empty",
        f"{f}:12: triggers[1].actions[1].assign_owner: by_field needs a map (value: owner), "
        "a default, or both",
        f"{f}:13: triggers[1].actions[2].webhok: unknown key 'webhok' (did you mean 'webhook'?)",
        f"{f}:15: triggers[2].when.crosses: must be a number, got 'fifty'",
        f"{f}:16: triggers[2].reasons[1]: must be 'event', 'profile', 'decay', 'model change' "
        "or 'manual', got 'sometimes'",
        f"{f}:17: triggers[2].actions: must not be empty",
    ]


def test_urls_owners_and_numbers_are_checked(tmp_path: Path) -> None:
    """A URL that cannot be sent to, an owner without a name, true for a number of points."""
    path = tmp_path / "triggers.yaml"
    path.write_text(
        "triggers:\n  - id: a\n    when: {crosses: true}\n    actions:\n"
        '      - webhook: {url: "https://exa mple.com/x"}\n'
        '      - webhook: {url: "http://127.0.0.1:99999/x"}\n'
        '      - assign_owner: {round_robin: [alice, " "]}\n'
        '      - assign_owner: {by_field: country, default: ""}\n'
    )
    with pytest.raises(ConfigError) as e:
        load_triggers(path)
    f = str(path)
    assert [str(i) for i in e.value.issues] == [
        f"{f}:3: triggers[0].when.crosses: a number is needed here, not true/false",
        f"{f}:5: triggers[0].actions[0].webhook.url: a URL may not hold spaces or control "
        "characters (a space is %20), got 'https://exa mple.com/***'",
        f"{f}:6: triggers[0].actions[1].webhook.url: the port must be a number from 1 to 65535",
        f"{f}:7: triggers[0].actions[2].assign_owner.round_robin: an owner's name may not be empty",
        f"{f}:8: triggers[0].actions[3].assign_owner.default: an owner's name may not be empty",
    ]


def test_owner_names_are_kept_without_spaces_around() -> None:
    text = """\
triggers:
  - id: a
    when: {becomes_mql: true}
    actions:
      - assign_owner: {round_robin: [" alice", "bob "]}
      - assign_owner: {by_field: country, map: {DE: " Jan "}, default: " Eve"}
"""
    actions = parse_triggers(text, "t.yaml")[0].actions
    assert [a.assign_owner.round_robin for a in actions if a.assign_owner] == [
        ["alice", "bob"],
        None,
    ]
    by_field = actions[1].assign_owner
    assert by_field is not None and (by_field.map, by_field.default) == ({"DE": "Jan"}, "Eve")


def test_names_are_checked_against_the_sheets() -> None:
    text = """\
triggers:
  - {id: a, sheet: tiny, when: {enters_band: Hot}, actions: [set_stage: mql]}
  - {id: b, sheet: other, when: {enters_band: hot}, actions: [set_stage: mql]}
  - {id: c, when: {enters_grade: Z}, actions: [set_stage: mql]}
  - {id: d, when: {enters_grade: F}, actions: [set_stage: mql]}
"""
    with pytest.raises(ConfigError) as e:
        parse_triggers(text, "t.yaml", sheets={"tiny": parse_model(TINY)})
    assert [str(i) for i in e.value.issues] == [
        "t.yaml:2: triggers[0].when.enters_band: no band 'Hot' on sheet tiny; bands are cold, "
        "hot, warm",
        "t.yaml:3: triggers[1].sheet: no sheet 'other'; sheets are tiny",
        "t.yaml:4: triggers[2].when.enters_grade: no grade 'Z' on any sheet; grades are A, B, F",
    ]


def test_file_level_problems(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope.yaml: no such file"):
        load_triggers(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match=r"^t.yaml:3: not valid YAML: expected the node content"):
        parse_triggers("triggers:\n  - {id: [\n", "t.yaml")
    with pytest.raises(ConfigError, match=r"t.yaml:1: a triggers file must be a mapping"):
        parse_triggers("- a\n", "t.yaml")
    # a file that says nothing drops no trigger by mistake; `triggers: []` does on purpose
    for empty in ("", "# triggers:\n#   - id: x\n", "---\n"):
        with pytest.raises(ConfigError, match=r"t.yaml:1: the file is empty"):
            parse_triggers(empty, "t.yaml")
    with pytest.raises(ConfigError, match=r"t.yaml:1: triggers: required"):
        parse_triggers("{}\n", "t.yaml")
    assert parse_triggers("triggers: []\n") == []


def test_a_score_creeping_across_a_number_fires(store: Store, clock: Clock) -> None:
    """A demo request 50 points with a 1-day half-life decays: 50 at first, then 50 x 0.5^(t)
    for t days. Steps of 0.001 days move the score by about 0.017 then less; near 25 points (one
    half-life) each step moves it by 25 x (1 - 0.5^0.0001) = 0.0017 < 0.01: no history rows,
    but `drops_below: 25` still fires when the score creeps under 25."""
    model = (
        "version: 1\nname: creep\n"
        "activity: [{id: demo, event: demo_request, points: 50, half_life_days: 1}]\n"
    )
    setup(
        store,
        "triggers:\n  - id: under\n    when: {drops_below: 25}\n    actions: [{set_stage: mql}]\n",
        model,
    )
    store.ingest_events([EventInput("demo_request", clock.now, "L1")])
    clock.advance(days=0.9995)  # 50 x 0.5^0.9995 = 25.017: above 25
    with store.db.write() as conn:
        store.rescore_leads(conn, ["L1"], "decay", clock())
    assert fired(store, "under") == []
    history_before = _history_rows(store)
    for _ in range(10):  # 0.0001 days each: about -0.0017 points each
        clock.advance(days=0.0001)
        with store.db.write() as conn:
            store.rescore_leads(conn, ["L1"], "decay", clock())
    assert len(fired(store, "under")) == 1
    assert _history_rows(store) == history_before  # each move was under 0.01 points


def _history_rows(store: Store) -> int:
    from leadscore.store.schema import score_history

    with store.db.read() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(score_history)).scalar_one())


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_round_robin_positions_are_locked_in_name_order(
    store: Store, clock: Clock, db_url: str
) -> None:
    """A lead becoming MQL fires t1 (rotation "zeta", not made yet) then t2 (rotation
    "alpha"). Another writer holds alpha's position: this transaction waits for it before
    taking (or making) zeta's (names in order, as every writer takes them), so a writer
    holding zeta and waiting for alpha could not deadlock with it. Once alpha is let go, both
    owners are assigned in turn."""
    setup(
        store,
        "triggers:\n"
        "  - {id: t1, when: {becomes_mql: true}, actions: [{assign_owner: "
        "{round_robin: [ann, bo], pool: zeta, reassign: true}}]}\n"
        "  - {id: t2, when: {becomes_mql: true}, actions: [{assign_owner: "
        "{round_robin: [cy, di], pool: alpha, reassign: true}}]}\n",
    )
    profile(store, "L1", title="VP")
    with store.db.write() as conn:  # zeta's row is made by the first firing
        conn.execute(counters.insert().values(name="round_robin:alpha", value=0))
    engine = sa.create_engine(database_url(db_url))
    errors: list[BaseException] = []

    def demo() -> None:
        try:
            event(store, clock, "L1", "demo_request")
        except BaseException as e:
            errors.append(e)

    try:
        with engine.connect() as holder, engine.connect() as probe:
            holder.execute(
                sa.select(counters.c.value)
                .where(counters.c.name == "round_robin:alpha")
                .with_for_update()
            ).all()
            thread = threading.Thread(target=demo)
            thread.start()
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:  # until the demo's transaction waits for a lock
                waiting = probe.execute(
                    sa.text(
                        "SELECT count(*) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                    )
                ).scalar_one()
                probe.rollback()
                if waiting:
                    break
                time.sleep(0.02)
            assert waiting, "the demo's transaction never waited for alpha"
            trans = probe.begin()  # zeta's position is not held (nor made) meanwhile
            probe.execute(sa.text("SET LOCAL lock_timeout = '200ms'"))
            probe.execute(
                sa.text(
                    "INSERT INTO counters (name, value) VALUES ('round_robin:zeta', 0) "
                    "ON CONFLICT (name) DO UPDATE SET value = counters.value"
                )
            )
            trans.rollback()
            holder.rollback()
            thread.join(10)
    finally:
        engine.dispose()
    assert not errors and not thread.is_alive()
    assert [f["detail"].get("error") for f in fired(store)] == [None, None]
    with store.db.read() as conn:
        owner = conn.execute(sa.select(leads.c.owner).where(leads.c.lead_id == "L1")).scalar()
    assert owner == "cy"  # t1 gave ann, then t2 (reassign) cy


def test_a_slack_message_escapes_what_leads_send_in_its_text_too() -> None:
    """The notification text Slack shows (and parses) escapes as the blocks do: an email
    holding <!channel> pings nobody, a lead id in <...|...> is no disguised link."""
    payload = {
        "trigger": "hot",
        "sheet": "s<1>",
        "reason": "event",
        "fired_at": "2026-06-30T12:00:00Z",
        "transition": {"text": "entered band hot"},
        "lead": {"lead_id": "<https://evil.example|Click>", "email": "<!channel>@x.io"},
        "score": {
            "score": 80.0,
            "fit": 30.0,
            "engagement": 50.0,
            "grade": "A",
            "band": "hot",
            "mql": True,
            "priority": None,
            "previous_score": None,
        },
    }
    message = slack_message(payload)
    text = json.dumps(message)
    assert "<!channel>" not in text and "<https://evil" not in text
    assert message["text"] == (
        "Lead &lt;!channel&gt;@x.io entered band hot on s&lt;1&gt;: score 80 (band hot, grade A)"
    )
    assert "(`&lt;https://evil.example|Click&gt;`)" in message["blocks"][0]["text"]["text"]
