"""Triggers: stored definitions and the engine that fires them inside the scoring transaction.

The file format and its checks are in :mod:`leadscore.store.trigger_config` (re-exported
here). Wiring, for the service::

    store = open_store(url)
    TriggerEngine.attach(store)          # store.listener = TriggerEngine(store.model_by_id)
    sheets = {s.name: s.model for s in store.sheets()}   # checks band and grade names
    with store.db.write() as conn:
        save_triggers(conn, load_triggers("triggers.yaml", sheets=sheets), store.clock())

From then on every score change that :class:`~leadscore.store.keeper.Store` makes is shown to
the engine in the transaction that makes it. For each enabled trigger watching the change's
sheet and reason whose ``when`` transition happened, the engine records a ``trigger_firings``
row and runs the actions in order, in that same transaction: so a firing, its stage change, its
owner and its webhook (an ``outbox`` row, delivered by :mod:`leadscore.store.outbox`) are
committed together with the score, or not at all. A crossing fires once: a lead that stays hot
produces no more transitions into hot; one that drops out and comes back fires again.

A failing firing (say, a model version that cannot be loaded) is rolled back to a savepoint
and recorded with its error; the score change and the other firings still commit, because an
acknowledged event must never be lost to a trigger.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from pydantic import ValidationError
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from leadscore.engine.lead import score_lead
from leadscore.engine.result import ScoreResult
from leadscore.engine.timeutil import from_micros
from leadscore.errors import NotFound, UsageError
from leadscore.spec import Model, to_text
from leadscore.store.db import TRIGGER_ROWS, journaled_epoch, kept_for_transaction
from leadscore.store.leads import lead_events, lead_records
from leadscore.store.lifecycle import set_stage
from leadscore.store.schema import counters, leads, outbox, scores, trigger_firings, triggers
from leadscore.store.scores import ScoreChange
from leadscore.store.trigger_config import (
    DEFAULT_REASONS,
    STORED,
    WHEN_KINDS,
    AssignOwnerSpec,
    TriggerSpec,
    WebhookSpec,
    WhenSpec,
    load_triggers,
    parse_triggers,
)
from leadscore.store.webhooks import encode_body, firing_payload, shown_url

if TYPE_CHECKING:
    from leadscore.store.keeper import Store

__all__ = [
    "DEFAULT_REASONS",
    "FUNNEL",
    "WHEN_KINDS",
    "StoredTrigger",
    "Transition",
    "TriggerEngine",
    "TriggerSpec",
    "detect_transition",
    "firings",
    "inserted_id",
    "list_triggers",
    "load_triggers",
    "next_counter",
    "parse_triggers",
    "save_triggers",
    "set_trigger_enabled",
]

log = logging.getLogger(__name__)

ModelForVersion = Callable[[Connection, int], Model]

# The funnel's order. A trigger moves a lead forward along it, never back: a score that dips
# must not turn a customer back into an MQL. Disqualified and customer are sales' verdicts,
# which no trigger overrides; a recycled lead may move anywhere.
FUNNEL = ("subscriber", "lead", "mql", "sql", "opportunity", "customer")
_FINAL = ("disqualified", "customer")


# --- stored definitions -----------------------------------------------------------------------


@dataclass(frozen=True)
class StoredTrigger:
    spec: TriggerSpec
    enabled: bool
    updated_us: int

    @property
    def id(self) -> str:
        return self.spec.id

    def summary(self) -> dict[str, Any]:
        """JSON data for the API: the definition with secrets masked."""
        return {
            "id": self.id,
            "enabled": self.enabled,
            "updated_us": self.updated_us,
            "definition": self.spec.redacted(),
        }


def save_triggers(conn: Connection, specs: Sequence[TriggerSpec], now_us: int) -> None:
    """Replace every stored trigger with ``specs`` (firings and round-robin positions stay)."""
    ids = [s.id for s in specs]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise UsageError(f"duplicate trigger id {', '.join(map(repr, duplicates))}")
    conn.execute(triggers.delete())
    if specs:
        conn.execute(
            triggers.insert(),
            [
                {
                    "id": s.id,
                    "definition": s.definition(),
                    "enabled": s.enabled,
                    "updated_us": now_us,
                }
                for s in specs
            ],
        )


def list_triggers(conn: Connection) -> list[StoredTrigger]:
    """Every stored trigger, by id (the order in which they fire)."""
    rows = conn.execute(sa.select(triggers).order_by(triggers.c.id)).mappings()
    return [
        StoredTrigger(
            TriggerSpec.model_validate(r["definition"], context=STORED),
            bool(r["enabled"]),
            r["updated_us"],
        )
        for r in rows
    ]


def set_trigger_enabled(
    conn: Connection, trigger_id: str, enabled: bool, now_us: int
) -> StoredTrigger:
    """Switch one trigger on or off (:class:`NotFound` if there is none with this id)."""
    row = conn.execute(sa.select(triggers.c.definition).where(triggers.c.id == trigger_id)).first()
    if row is None:
        raise NotFound(f"no trigger {trigger_id!r}")
    definition = {**row[0], "enabled": enabled}
    conn.execute(
        triggers.update()
        .where(triggers.c.id == trigger_id)
        .values(definition=definition, enabled=enabled, updated_us=now_us)
    )
    return StoredTrigger(TriggerSpec.model_validate(definition, context=STORED), enabled, now_us)


def firings(
    conn: Connection,
    *,
    lead_id: str | None = None,
    trigger_id: str | None = None,
    limit: int = 100,
    before_id: int | None = None,
) -> list[dict[str, Any]]:
    """Recorded firings, newest first (``before_id`` pages on), webhook URLs masked (firings
    recorded before URLs were masked when written kept them whole)."""
    q = sa.select(trigger_firings).order_by(trigger_firings.c.id.desc()).limit(limit)
    if lead_id is not None:
        q = q.where(trigger_firings.c.lead_id == lead_id)
    if trigger_id is not None:
        q = q.where(trigger_firings.c.trigger_id == trigger_id)
    if before_id is not None:
        q = q.where(trigger_firings.c.id < before_id)
    return [_masked(dict(r)) for r in conn.execute(q).mappings()]


def _masked(firing: dict[str, Any]) -> dict[str, Any]:
    detail = firing.get("detail")
    if isinstance(detail, dict) and isinstance(detail.get("actions"), list):
        actions = [
            {**a, "url": shown_url(a["url"])} if isinstance(a, dict) and "url" in a else a
            for a in detail["actions"]
        ]
        firing["detail"] = {**detail, "actions": actions}
    return firing


def _rotation(trigger: TriggerSpec, index: int, spec: AssignOwnerSpec) -> str:
    """The counter that holds a round-robin action's position (its pool's, if shared)."""
    return f"round_robin:{spec.pool or f'{trigger.id}:{index}'}"


def _rotations(trigger: TriggerSpec) -> list[str]:
    """The counters of a trigger's round-robin actions."""
    return [
        _rotation(trigger, index, a.assign_owner)
        for index, a in enumerate(trigger.actions)
        if a.assign_owner is not None and a.assign_owner.round_robin is not None
    ]


def lock_counters(conn: Connection, names: Iterable[str]) -> None:
    """PostgreSQL: lock the named counters until the transaction ends, in name order, as
    every writer that takes more than one does: one statement that inserts each missing one
    (at 0) or updates it to its own value, row after row in that order (each row locked
    before the next is tried; inserting the missing ones first and then locking all would
    hold a new row while waiting for an older one)."""
    wanted = sorted(set(names))
    if not wanted:
        return
    conn.execute(
        postgresql.insert(counters)
        .values([{"name": name, "value": 0} for name in wanted])
        .on_conflict_do_update(index_elements=[counters.c.name], set_={"value": counters.c.value})
    )


def next_counter(conn: Connection, name: str) -> int:
    """Add one to the named counter (created at 0) and return the new value, atomically: two
    processes never get the same value."""
    if conn.dialect.name == "postgresql":
        pg = postgresql.insert(counters).values(name=name, value=1)
        pg = pg.on_conflict_do_update(
            index_elements=[counters.c.name], set_={"value": counters.c.value + 1}
        )
        return int(conn.execute(pg.returning(counters.c.value)).scalar_one())
    lite = sqlite.insert(counters).values(name=name, value=1)
    lite = lite.on_conflict_do_update(
        index_elements=[counters.c.name], set_={"value": counters.c.value + 1}
    )
    return int(conn.execute(lite.returning(counters.c.value)).scalar_one())


# --- transitions ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Transition:
    """What happened to a lead's score that a ``when`` asked about."""

    kind: str
    value: str | float | bool
    before: Any
    after: Any
    text: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "value": self.value,
            "from": self.before,
            "to": self.after,
            "text": self.text,
        }


def detect_transition(when: WhenSpec, c: ScoreChange) -> Transition | None:
    """The transition ``when`` asks about if ``c`` made it, else None.

    A first score (``c.old_score is None``) comes from no band, no grade, not MQL and minus
    infinity points: entering a band, a grade, MQL or crossing a number can fire on it;
    leaving, dropping and grade changes cannot.
    """
    kind, value = when.kind, when.value
    if kind == "enters_band" and c.old_band != value and c.new_band == value:
        return Transition(kind, value, c.old_band, c.new_band, f"entered band {value}")
    if kind == "leaves_band" and not c.is_first and c.old_band == value != c.new_band:
        return Transition(kind, value, c.old_band, c.new_band, f"left band {value}")
    if kind == "becomes_mql" and not c.old_mql and c.new_mql:
        return Transition(kind, value, bool(c.old_mql), True, "became an MQL")
    if kind == "stops_being_mql" and c.old_mql and not c.new_mql:
        return Transition(kind, value, True, False, "stopped being an MQL")
    if kind == "grade_changes" and not c.is_first and c.old_grade != c.new_grade:
        text = f"changed grade from {c.old_grade or '-'} to {c.new_grade or '-'}"
        return Transition(kind, value, c.old_grade, c.new_grade, text)
    if kind == "enters_grade" and c.old_grade != value and c.new_grade == value:
        return Transition(kind, value, c.old_grade, c.new_grade, f"entered grade {value}")
    if kind == "crosses":
        n = float(value)
        old = float("-inf") if c.old_score is None else c.old_score
        if old < n <= c.new_score:
            return Transition(kind, n, c.old_score, c.new_score, f"crossed {n:g} points")
    if kind == "drops_below" and c.old_score is not None:
        n = float(value)
        if c.new_score < n <= c.old_score:
            return Transition(kind, n, c.old_score, c.new_score, f"dropped below {n:g} points")
    return None


# --- the engine -------------------------------------------------------------------------------


class TriggerEngine:
    """The :class:`~leadscore.store.keeper.ChangeListener` that fires stored triggers.

    Parameters
    ----------
    model_for_version:
        ``(conn, model_version_id) -> Model``; :meth:`Store.model_by_id` (which caches).
        Webhook bodies explain the score with the model version that computed it.

    Use :meth:`attach` to make a store call it.
    """

    def __init__(self, model_for_version: ModelForVersion) -> None:
        self.model_for_version = model_for_version
        self._cache: tuple[list[tuple[str, Any]], list[TriggerSpec]] = ([], [])
        self._epoch: int | None = None  # the journaled cache epoch they were read in

    @classmethod
    def attach(cls, store: Store) -> TriggerEngine:
        """A new engine, installed as ``store.listener``."""
        engine = cls(store.model_by_id)
        store.listener = engine
        return engine

    def __call__(
        self, conn: Connection, changes: Sequence[ScoreChange], now_us: int, fire: bool
    ) -> None:
        if not fire or not changes:
            return
        enabled = self.triggers(conn)
        if not enabled:
            return
        due = []
        for change in changes:
            for trigger in enabled:
                if trigger.sheet is not None and trigger.sheet != change.sheet:
                    continue
                if change.reason not in trigger.reasons:
                    continue
                transition = detect_transition(trigger.when, change)
                if transition is not None:
                    due.append((trigger, change, transition))
        if due and conn.dialect.name == "postgresql":
            # Round-robin positions are rows locked until the transaction ends: taken here in
            # name order, so that two writers firing two rotations at once (two servers, or
            # two ingest processes) cannot each hold one and wait for the other's.
            rotations = {name for t, _, _ in due for name in _rotations(t)}
            if rotations:
                try:  # as a firing's, a failure here must not lose the score change
                    with conn.begin_nested():
                        lock_counters(conn, rotations)
                except Exception:
                    log.exception("locking round-robin positions failed; firing all the same")
        for trigger, change, transition in due:
            self.fire(conn, trigger, change, transition, now_us)

    def triggers(self, conn: Connection) -> list[TriggerSpec]:
        """The enabled triggers, by id (parsed again only when a definition changed; not
        read again in a journaled transaction of the cache epoch they were read in)."""
        epoch = journaled_epoch(conn)
        if epoch is not None and epoch == self._epoch:
            return self._cache[1]
        rows = kept_for_transaction(conn, TRIGGER_ROWS)  # read with the sheets (PostgreSQL)
        if rows is None:
            rows = [
                (str(i), d)
                for i, d in conn.execute(
                    sa.select(triggers.c.id, triggers.c.definition)
                    .where(triggers.c.enabled.is_(True))
                    .order_by(triggers.c.id)
                )
            ]
        if rows != self._cache[0]:
            parsed = []
            for trigger_id, definition in rows:
                try:
                    parsed.append(TriggerSpec.model_validate(definition, context=STORED))
                except ValidationError as e:  # stored by an older or newer version: skip, loudly
                    log.warning("trigger %s is not valid and was skipped: %s", trigger_id, e)
            self._cache = (rows, parsed)
        self._epoch = epoch  # once the cache holds what was read
        return self._cache[1]

    def fire(
        self,
        conn: Connection,
        trigger: TriggerSpec,
        change: ScoreChange,
        transition: Transition,
        now_us: int,
    ) -> int:
        """Record one firing and run its actions; the firing's id."""
        detail: dict[str, Any] = {
            "transition": transition.to_dict(),
            "change": {
                "old_score": change.old_score,
                "new_score": change.new_score,
                "old_band": change.old_band,
                "new_band": change.new_band,
                "old_grade": change.old_grade,
                "new_grade": change.new_grade,
                "old_mql": change.old_mql,
                "new_mql": change.new_mql,
                "model_version_id": change.model_version_id,
            },
            "actions": [],
        }
        row = {
            "trigger_id": trigger.id,
            "lead_id": change.lead_id,
            "sheet": change.sheet,
            "fired_us": now_us,
            "reason": change.reason,
            "detail": detail,
        }
        try:
            with conn.begin_nested():
                firing_id = inserted_id(conn.execute(trigger_firings.insert().values(row)))
                explained: list[tuple[Model, ScoreResult]] = []
                for index, action in enumerate(trigger.actions):
                    if action.set_stage is not None:
                        done = self._set_stage(
                            conn, trigger, action.set_stage, change, transition, now_us
                        )
                    elif action.assign_owner is not None:
                        done = self._assign_owner(
                            conn, trigger, index, action.assign_owner, change, now_us
                        )
                    else:
                        assert action.webhook is not None
                        done = self._webhook(
                            conn,
                            trigger,
                            action.webhook,
                            change,
                            transition,
                            now_us,
                            firing_id,
                            explained,
                        )
                    detail["actions"].append(done)
                conn.execute(
                    trigger_firings.update()
                    .where(trigger_firings.c.id == firing_id)
                    .values(detail=detail)
                )
                return firing_id
        except Exception as e:  # an acknowledged score change must not be lost to a trigger
            log.exception("trigger %s failed for lead %s", trigger.id, change.lead_id)
            detail["actions"] = []
            detail["error"] = f"{type(e).__name__}: {e}"
            return inserted_id(conn.execute(trigger_firings.insert().values(row)))

    # --- actions ------------------------------------------------------------------------------

    def _set_stage(
        self,
        conn: Connection,
        trigger: TriggerSpec,
        stage: str,
        change: ScoreChange,
        transition: Transition,
        now_us: int,
    ) -> dict[str, Any]:
        current = conn.execute(
            sa.select(leads.c.stage).where(leads.c.lead_id == change.lead_id)
        ).scalar_one()
        done: dict[str, Any] = {"action": "set_stage", "stage": stage, "from": current}
        if current in _FINAL and current != stage:
            return {**done, "changed": False, "note": f"kept: {current} is final for triggers"}
        if current in FUNNEL and stage in FUNNEL and FUNNEL.index(stage) < FUNNEL.index(current):
            return {**done, "changed": False, "note": f"kept: {current} is further along"}
        reason = f"trigger {trigger.id}: {transition.text} on {change.sheet}"
        changed = set_stage(conn, change.lead_id, stage, now_us, reason=reason, actor=trigger.id)
        return {**done, "changed": changed}

    def _assign_owner(
        self,
        conn: Connection,
        trigger: TriggerSpec,
        index: int,
        spec: AssignOwnerSpec,
        change: ScoreChange,
        now_us: int,
    ) -> dict[str, Any]:
        lead = conn.execute(
            sa.select(leads.c.owner, leads.c.profile).where(leads.c.lead_id == change.lead_id)
        ).one()
        done: dict[str, Any] = {"action": "assign_owner", "previous": lead.owner}
        if lead.owner and not spec.reassign:
            return {**done, "owner": lead.owner, "changed": False, "note": "kept: already owned"}
        owner: str | None
        if spec.round_robin is not None:
            # The position lives in the database, so it survives restarts and every process
            # (and every engine instance) continues the same rotation.
            n = next_counter(conn, _rotation(trigger, index, spec))
            owner = spec.round_robin[(n - 1) % len(spec.round_robin)]
            done["how"] = f"round robin, turn {n}"
        else:
            assert spec.by_field is not None
            value = to_text(dict(lead.profile).get(spec.by_field))
            owner = _lookup(spec.map or {}, value)
            how = f"{spec.by_field} = {value!r}"
            if owner is None:
                owner = spec.default
                how += " (not in the map: default)"
            done["how"] = how
            if owner is None:
                return {**done, "owner": lead.owner, "changed": False, "note": "no owner matched"}
        if owner != lead.owner:
            conn.execute(
                leads.update()
                .where(leads.c.lead_id == change.lead_id)
                .values(owner=owner, updated_us=now_us)
            )
        return {**done, "owner": owner, "changed": owner != lead.owner}

    def _webhook(
        self,
        conn: Connection,
        trigger: TriggerSpec,
        spec: WebhookSpec,
        change: ScoreChange,
        transition: Transition,
        now_us: int,
        firing_id: int,
        explained: list[tuple[Model, ScoreResult]],
    ) -> dict[str, Any]:
        lead = (
            conn.execute(sa.select(leads).where(leads.c.lead_id == change.lead_id)).mappings().one()
        )
        score = (
            conn.execute(
                sa.select(scores).where(
                    scores.c.lead_id == change.lead_id, scores.c.sheet == change.sheet
                )
            )
            .mappings()
            .one()
        )
        if not explained:  # once per firing, however many webhooks it has
            explained.append(self._explain(conn, change.lead_id, score))
        model, result = explained[0]
        payload = firing_payload(
            trigger_id=trigger.id,
            fired_us=now_us,
            reason=change.reason,
            transition=transition.to_dict(),
            lead=dict(lead),
            sheet=change.sheet,
            score=dict(score),
            previous={
                "score": change.old_score,
                "band": change.old_band,
                "grade": change.old_grade,
                "mql": change.old_mql,
            },
            model=model,
            explanation=result,
        )
        outbox_id = inserted_id(
            conn.execute(
                outbox.insert().values(
                    firing_id=firing_id,
                    url=spec.url,
                    body=encode_body(payload, spec.format),
                    secret=spec.secret,
                    status="pending",
                    attempts=0,
                    next_attempt_us=now_us,
                    created_us=now_us,
                )
            )
        )
        return {
            "action": "webhook",
            "url": shown_url(spec.url),
            "format": spec.format,
            "outbox_id": outbox_id,
        }

    def _explain(
        self, conn: Connection, lead_id: str, score: sa.RowMapping
    ) -> tuple[Model, ScoreResult]:
        model = self.model_for_version(conn, int(score["model_version_id"]))
        as_of_us = int(score["as_of_us"])
        record = lead_records(conn, [lead_id])[lead_id]
        events = lead_events(conn, lead_id, as_of_us)
        return model, score_lead(model, record, events, from_micros(as_of_us))


def inserted_id(result: sa.CursorResult[Any]) -> int:
    """The primary key of the row an INSERT made (RETURNING on PostgreSQL, rowid on SQLite)."""
    key = result.inserted_primary_key
    assert key is not None
    return int(key[0])


def _lookup(table: dict[str, str], value: str | None) -> str | None:
    """``table[value]``, else a match ignoring case and surrounding spaces (country codes and
    region names arrive in every spelling)."""
    if value is None:
        return None
    if value in table:
        return table[value]
    wanted = value.strip().casefold()
    for key, owner in table.items():
        if key.strip().casefold() == wanted:
            return owner
    return None
