"""What a writer reads of the active models and the triggers is read once per cache epoch
(leadscore.store.db.journaled_epoch), on SQLite, where one writer can know that nothing
else has committed; a model published or a trigger saved by anyone else, or by this process
outside an ingest transaction, is used by the very next ingest. PostgreSQL reads them in every
transaction (in one statement)."""

from __future__ import annotations

from contextlib import AbstractContextManager

import sqlalchemy as sa

from leadscore.store import Store
from leadscore.store.db import open_database
from leadscore.store.schema import scores
from leadscore.store.triggers import parse_triggers, save_triggers
from tests.conftest import Clock
from tests.test_event_cache import statements
from tests.test_triggers import TINY, event, fired, profile, setup

TRIGGERS = "triggers: [{id: hot, when: {enters_band: hot}, actions: [set_stage: mql]}]"
BOTH = """
triggers:
  - {id: hot, when: {enters_band: hot}, actions: [set_stage: mql]}
  - {id: warm, when: {enters_band: warm}, actions: [set_stage: lead]}
"""


def metadata_reads(store: Store) -> AbstractContextManager[list[str]]:
    """The statements that read the active model versions or the triggers while the block
    runs."""
    return statements(store, "FROM model_versions", "FROM triggers")


def score_of(store: Store, lead_id: str) -> tuple[float, int]:
    with store.db.read() as conn:
        row = conn.execute(
            sa.select(scores.c.score, scores.c.model_version_id).where(scores.c.lead_id == lead_id)
        ).one()
    return float(row[0]), int(row[1])


def test_the_only_writer_reads_models_and_triggers_once_an_epoch(
    store: Store, clock: Clock
) -> None:
    setup(store, TRIGGERS)
    profile(store, "L1", title="VP")  # 30
    event(store, clock, "L1", "demo_request")  # 80: hot, fires
    with metadata_reads(store) as reads:
        event(store, clock, "L1", "unsubscribe")  # 30: cold
        event(store, clock, "L1", "demo_request")  # 80: hot, fires again
    # PostgreSQL: the active versions and the triggers, one statement in each transaction
    assert len(reads) == (0 if store.db.is_sqlite else 2)
    assert [f["trigger_id"] for f in fired(store)] == ["hot", "hot"]


def test_a_model_or_a_trigger_saved_elsewhere_is_used_by_the_next_ingest(
    db_url: str, store: Store, clock: Clock
) -> None:
    setup(store, TRIGGERS)
    profile(store, "L1", title="VP")
    event(store, clock, "L1", "demo_request")  # 30 + 50
    event(store, clock, "L1", "demo_request")  # 30 + 100: read within this epoch
    assert score_of(store, "L1")[0] == 130.0
    other = Store(open_database(db_url), clock=clock)  # another process, say
    try:
        new = other.ensure_published(TINY.replace("points: 50}", "points: 70}"), "tiny.yaml")
        assert new is not None
        with other.db.write() as conn:
            save_triggers(conn, parse_triggers(BOTH), clock.now)
    finally:
        other.db.dispose()
    assert score_of(store, "L1") == (170.0, new.id)  # rescored there with the new version
    event(store, clock, "L1", "unsubscribe")
    event(store, clock, "L1", "unsubscribe")  # 170 - 100 = 70: warm
    assert score_of(store, "L1") == (70.0, new.id)
    assert [f["trigger_id"] for f in fired(store)] == ["hot", "warm"]


def test_a_model_published_by_the_writer_itself_is_used_by_its_next_ingest(
    store: Store, clock: Clock
) -> None:
    setup(store, TRIGGERS)
    profile(store, "L1", title="VP")
    event(store, clock, "L1", "demo_request")
    new = store.ensure_published(TINY.replace("points: 50}", "points: 70}"), "tiny.yaml")
    assert new is not None
    with store.db.write() as conn:
        save_triggers(conn, parse_triggers(BOTH), clock.now)
    event(store, clock, "L1", "unsubscribe")  # 100 - 50: warm
    assert score_of(store, "L1") == (50.0, new.id)
    assert [f["trigger_id"] for f in fired(store)] == ["hot", "warm"]
