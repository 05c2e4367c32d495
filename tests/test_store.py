"""The store on SQLite and PostgreSQL: ingest, real-time rescoring, history, reads."""

from __future__ import annotations

import contextlib
import gc
import logging
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from leadscore.store import EventInput, LeadInput, Store
from leadscore.store import db as db_module
from leadscore.store.db import CHECKPOINT_SECONDS, WRITER_CACHE_KIB, database_url, open_database
from leadscore.store.queries import LeadQuery, lead_view, list_leads, score_history_of
from leadscore.store.schema import leads
from tests.conftest import MODELS, Clock

DAY = 86_400_000_000


def test_migrations_reach_head(store: Store) -> None:
    assert store.db.revision() == store.db.head() == "0009"


def test_event_rescores_its_lead_in_the_same_call(store: Store, clock: Clock) -> None:
    """b2b-default: exec-title 25 + sell-to-country 10 = fit 35 (grade B); a demo request 50
    and a pricing view 15 (today, no decay) plus page-views 3 = engagement 68; 103 -> hot."""
    store.ensure_published((MODELS / "b2b-default.yaml").read_text(), "b2b-default.yaml")
    store.upsert_leads(
        [LeadInput("L1", "ann@acme.com", {"job_title": "VP Sales", "country": "US"})]
    )
    out = store.ingest_events(
        [
            EventInput("demo_request", clock.now - DAY, "L1", message_id="m1"),
            EventInput(
                "page_view", clock.now, email="ANN@acme.com", properties={"url": "/pricing"}
            ),
        ]
    )
    assert [o.status for o in out] == ["accepted", "accepted"]
    with store.db.read() as conn:
        view = lead_view(conn, "L1")
        history = score_history_of(conn, "L1")
        page = list_leads(conn, LeadQuery(band=["hot"]), ["b2b-default"])
    s = view["scores"]["b2b-default"]
    assert (s["fit"], s["engagement"], s["score"]) == (35.0, 68.0, 103.0)
    assert (s["grade"], s["band"], s["mql"], s["priority"]) == ("B", "hot", True, "B1")
    assert [(h["reason"], h["old_score"], h["new_score"]) for h in history] == [
        ("event", 20.0, 103.0),
        ("profile", None, 20.0),  # fit 35, and gone-quiet -15 before any event
    ]
    assert [i["lead_id"] for i in page.items] == ["L1"]


def test_repeated_message_id_is_acknowledged_not_counted(store: Store, clock: Clock) -> None:
    store.ensure_published((MODELS / "b2b-default.yaml").read_text(), "b2b-default.yaml")
    first = store.ingest_events([EventInput("form_submit", clock.now, "L1", message_id="x")])
    again = store.ingest_events([EventInput("form_submit", clock.now, "L1", message_id="x")])
    assert [o.status for o in first] == ["accepted"]
    assert [o.status for o in again] == ["duplicate"]
    with store.db.read() as conn:
        assert lead_view(conn, "L1")["scores"]["b2b-default"]["engagement"] == 10.0


def test_a_request_of_many_events_finds_its_repeats_and_merged_leads_beyond_500(
    store: Store, clock: Clock
) -> None:
    """700 events with message ids for three leads, one of them merged away: the repeats
    among them (asked 500 at a time, with the merges; these past the first 500) are
    acknowledged, not stored again, and the merged lead's events go to the lead it became."""
    store.ensure_a_model()
    store.ingest_events([EventInput("email_open", clock.now, email="m@x.com")])
    store.upsert_leads([LeadInput("M1", "m@x.com")])  # m@x.com merged into M1
    first = [
        EventInput("page_view", clock.now, f"L{i % 2}", message_id=f"e{i}") for i in range(650)
    ]
    store.ingest_events(first)
    items = [EventInput("page_view", clock.now, "m@x.com", message_id=f"m{i}") for i in range(600)]
    items += [
        EventInput("page_view", clock.now, f"L{i % 2}", message_id=f"e{i}") for i in range(600, 700)
    ]
    out = store.ingest_events(items)
    assert {(o.status, o.lead_id) for o in out[:600]} == {("accepted", "M1")}
    assert [o.status for o in out[600:650]] == ["duplicate"] * 50
    assert {o.status for o in out[650:]} == {"accepted"}
    with store.db.read() as conn:
        counts = dict(
            conn.execute(sa.text("SELECT lead_id, count(*) FROM events GROUP BY lead_id")).all()
        )
    assert counts == {"L0": 350, "L1": 350, "M1": 601}


def test_event_properties_and_scores_round_trip_through_the_driver(
    store: Store, clock: Clock
) -> None:
    """Ingest writes events and scores through the driver itself (not SQLAlchemy's types):
    non-ASCII and nested properties come back as sent, a rule matches them, and the score's
    groups and MQL flag read back with their types."""
    from leadscore.engine.lead import Event
    from leadscore.store.db import from_driver_json
    from leadscore.store.leads import lead_events, lead_records
    from leadscore.store.scores import current_scores

    store.ensure_published(
        """
version: 1
name: cities
activity:
  - {id: zurich, event: page_view, where: {field: city, contains: zürich}, points: 60}
bands: {cold: 0, hot: 50}
mql: hot
""",
        "cities.yaml",
    )
    store.upsert_leads([LeadInput("L1", fields={"company": "Ünïcode GmbH"})])
    props = {"city": "Zürich", "tags": ["a", "ß"], "n": 3, "nested": {"k": None}}
    store.ingest_events([EventInput("page_view", clock.now, "L1", properties=props)])
    with store.db.read() as conn:
        (event,) = lead_events(conn, "L1")
        record = lead_records(conn, ["L1"])["L1"]
        row = current_scores(conn, ["L1"])[("L1", "cities")]
        raw = conn.exec_driver_sql("SELECT CAST(properties AS TEXT) FROM events").scalar_one()
    assert isinstance(event, Event) and event.fields["city"] == "Zürich"
    assert "Zürich" in raw  # stored as text, not \u-escaped (search sees it as sent)
    assert record == {"company": "Ünïcode GmbH", "lead_id": "L1"}
    assert (row["score"], row["band"], row["mql"], from_driver_json(row["groups"])) == (
        60.0,
        "hot",
        True,
        {"engagement": 60.0},
    )
    assert type(row["mql"]) is bool


@pytest.mark.parametrize("link_by", ["identify", "event", "email"])
def test_anonymous_events_join_the_lead_when_linked(
    store: Store, clock: Clock, link_by: str
) -> None:
    store.ensure_published((MODELS / "b2b-default.yaml").read_text(), "b2b-default.yaml")
    out = store.ingest_events([EventInput("demo_request", clock.now, anonymous_id="a1")])
    assert out[0].status == "anonymous"
    if link_by == "identify":
        store.identify(LeadInput("L9"), anonymous_id="a1")
    elif link_by == "event":
        store.ingest_events([EventInput("email_open", clock.now, "L9", anonymous_id="a1")])
    else:  # an event naming its lead by email: the email's lead, which L9 then claims
        store.ingest_events(
            [EventInput("email_open", clock.now, email="kim@x.io", anonymous_id="a1")]
        )
        store.upsert_leads([LeadInput("L9", "kim@x.io")])
    later = store.ingest_events([EventInput("form_submit", clock.now, anonymous_id="a1")])
    assert later[0].lead_id == "L9"
    with store.db.read() as conn:
        engagement = lead_view(conn, "L9")["scores"]["b2b-default"]["engagement"]
    # demo 50 + form 10 (+ the open 2 when an event made the link)
    assert engagement == (60.0 if link_by == "identify" else 62.0)


def test_a_request_that_names_a_lead_by_email_and_claims_the_email_makes_one_lead(
    store: Store, clock: Clock
) -> None:
    """A form's lead (email only) and the CRM's (its id and that email) in one request: one
    lead, Z1, with both items' fields, as when they come in two requests."""
    out = store.upsert_leads(
        [LeadInput(email="Z@m.io", fields={"job_title": "CEO"}), LeadInput("Z1", "z@m.io")]
    )
    assert [(o.index, o.lead_id) for o in out] == [(0, "Z1"), (1, "Z1")]
    with store.db.read() as conn:
        ids = [lid for (lid,) in conn.exec_driver_sql("SELECT lead_id FROM leads")]
        view = lead_view(conn, "Z1")
    assert ids == ["Z1"]
    assert (view["email"], view["profile"]["job_title"]) == ("z@m.io", "CEO")


def test_events_linking_an_anonymous_id_by_email_at_once_all_land(
    store: Store, clock: Clock
) -> None:
    """Four requests at once, each an event naming its lead by email and the visitor's
    anonymous id: the id is locked for the link from the start (taken shared, then upgraded,
    the requests deadlocked on PostgreSQL)."""
    store.ensure_a_model()
    failures: list[BaseException] = []

    def post(k: int, round_: int) -> None:
        try:
            store.ingest_events(
                [EventInput("page_view", clock.now, email="kim@x.io", anonymous_id=f"a{round_}")]
            )
        except BaseException as e:
            failures.append(e)

    for round_ in range(5):
        threads = [threading.Thread(target=post, args=(k, round_)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not failures, failures[:1]
    with store.db.read() as conn:
        count = conn.exec_driver_sql("SELECT count(*) FROM events WHERE lead_id = 'kim@x.io'")
        assert count.scalar() == 20


def test_an_item_refused_claims_no_email(store: Store) -> None:
    """The claim of an email by a lead id counts only when its item is stored."""
    out = store.upsert_leads(
        [LeadInput(email="z@m.io", fields={"x": "1"}), LeadInput("Z1", "z@m.io", stage="bogus")]
    )
    assert [(o.status, o.lead_id) for o in out] == [("created", "z@m.io"), ("error", "Z1")]
    with store.db.read() as conn:
        ids = [lid for (lid,) in conn.exec_driver_sql("SELECT lead_id FROM leads")]
    assert ids == ["z@m.io"]


def test_batch_rescoring_keeps_a_score_written_in_real_time_meanwhile(
    store: Store, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request that read the clock before a scheduled rescoring started, but committed
    after the rescoring read its snapshot, must keep its score: b2b-default, fit 35, demo 50
    -> 85 (hot). The batch, computed without the demo, would write 20 back."""
    import leadscore.store.keeper as keeper

    store.ensure_published((MODELS / "b2b-default.yaml").read_text(), "b2b-default.yaml")
    store.upsert_leads([LeadInput("L1", fields={"job_title": "VP Sales", "country": "US"})])
    batch_rows = keeper._batch_rows

    def late_request(*args: object, **kwargs: object) -> object:
        rows = batch_rows(*args, **kwargs)  # type: ignore[arg-type]
        clock.advance(seconds=-1)  # the request's clock reading came first
        store.ingest_events([EventInput("demo_request", clock.now, "L1")])
        clock.advance(seconds=1)
        return rows

    monkeypatch.setattr(keeper, "_batch_rows", late_request)
    report = store.rescore_all("decay")
    assert report.skipped == 1
    with store.db.read() as conn:
        s = lead_view(conn, "L1")["scores"]["b2b-default"]
    assert (s["score"], s["band"]) == (85.0, "hot")


def test_sqlite_log_is_copied_into_the_file_beside_the_writers(tmp_path: Path) -> None:
    """A write leaves its pages in the write-ahead log; the checkpoint thread copies them into
    the database file within about CHECKPOINT_SECONDS, without a writer doing it (the log is
    far below WAL_AUTOCHECKPOINT): a copy of the file alone then holds the lead. The thread
    ends with dispose."""
    path = tmp_path / "store.db"
    db = open_database(path)
    with db.write() as conn:
        conn.execute(
            leads.insert(),
            [
                {
                    "lead_id": f"L{i}",
                    "profile": {},
                    "stage": "lead",
                    "stage_us": 0,
                    "created_us": 0,
                    "updated_us": 0,
                }
                for i in range(100)
            ],
        )
    copy = tmp_path / "copy.db"
    deadline = time.monotonic() + 10 * CHECKPOINT_SECONDS + 5
    found = 0
    while time.monotonic() < deadline and not found:
        time.sleep(CHECKPOINT_SECONDS / 2)
        shutil.copyfile(path, copy)  # the file alone, not its -wal
        with closing(sqlite3.connect(copy)) as c:
            try:
                tables = {n for (n,) in c.execute("SELECT name FROM sqlite_master")}
                if "leads" in tables:
                    found = c.execute("SELECT count(*) FROM leads").fetchone()[0]
            except sqlite3.DatabaseError:  # copied while a checkpoint was writing: again
                continue
    assert found == 100
    threads = [t for t in threading.enumerate() if t.name == "leadscore-checkpoint"]
    assert threads
    db.dispose()
    assert not [t for t in threads if t.is_alive()]


def test_sqlite_log_file_shrinks_back_after_a_burst(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A burst of writes (a bulk import) grows the write-ahead log file; once checkpointed,
    the next write starts the log over and cuts the file back to JOURNAL_SIZE_LIMIT instead of
    keeping the burst's size for good."""
    monkeypatch.setattr(db_module, "JOURNAL_SIZE_LIMIT", 256 * 1024)
    path = tmp_path / "store.db"
    db = open_database(path)
    wal = tmp_path / "store.db-wal"
    try:
        with db.write() as conn:
            conn.exec_driver_sql("CREATE TABLE t (x)")
            conn.exec_driver_sql(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 4000)"
                " INSERT INTO t SELECT randomblob(1000) FROM n"
            )
        assert wal.stat().st_size > 2 * 1024 * 1024  # the burst, about 4 MB
        deadline = time.monotonic() + 10 * CHECKPOINT_SECONDS + 5
        while not db.checkpoint():  # copied into the file (the thread may be at it too)
            assert time.monotonic() < deadline
            time.sleep(CHECKPOINT_SECONDS / 2)
        with db.write() as conn:  # starts the log over
            conn.exec_driver_sql("INSERT INTO t VALUES (1)")
        assert wal.stat().st_size <= 256 * 1024
    finally:
        db.dispose()


_CLOSE_ONLY = (
    "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]);"
    " c.execute('SELECT 1 FROM t').fetchall(); c.close()"
)
_COUNT = (
    "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]);"
    " print(c.execute('SELECT count(*) FROM t').fetchone()[0])"
)


def test_sqlite_checkpoint_held_back_is_tried_again_and_keeps_the_files_locks(
    tmp_path: Path,
) -> None:
    """A reader holding an older snapshot keeps the checkpoint thread from copying the pages
    written after it: the thread tries again until the file alone holds the later rows. Its
    rounds never open the database's files themselves (closing a descriptor drops every POSIX
    lock the process holds on the file, SQLite's included): another process that opens and
    closes the database meanwhile must not take itself for the last one and delete the live
    log, whose later commits it would then never see."""
    path = tmp_path / "store.db"
    db = open_database(path)
    try:
        with db.write() as conn:
            conn.exec_driver_sql("CREATE TABLE t (x)")
            conn.exec_driver_sql("INSERT INTO t VALUES (1)")
        reader = sqlite3.connect(path, isolation_level=None)
        reader.execute("BEGIN")
        assert reader.execute("SELECT count(*) FROM t").fetchone() == (1,)
        with db.write() as conn:  # after the reader's snapshot: not to be copied while it reads
            conn.exec_driver_sql("INSERT INTO t SELECT 2 UNION ALL SELECT 3")
        time.sleep(3 * CHECKPOINT_SECONDS)  # rounds that could not copy everything
        subprocess.run([sys.executable, "-c", _CLOSE_ONLY, str(path)], check=True)
        assert Path(f"{path}-wal").exists()  # still this process's log
        reader.execute("COMMIT")
        reader.close()
        copy = tmp_path / "copy.db"
        deadline = time.monotonic() + 10 * CHECKPOINT_SECONDS + 5
        found = 0
        while found != 3:
            assert time.monotonic() < deadline
            time.sleep(CHECKPOINT_SECONDS / 2)
            shutil.copyfile(path, copy)  # the file alone, not its -wal
            # (a copy made while a checkpoint was writing may not open: again)
            with closing(sqlite3.connect(copy)) as c, contextlib.suppress(sqlite3.DatabaseError):
                found = c.execute("SELECT count(*) FROM t").fetchone()[0]
        with db.write() as conn:
            conn.exec_driver_sql("INSERT INTO t VALUES (4)")
        seen = subprocess.run(
            [sys.executable, "-c", _COUNT, str(path)], check=True, capture_output=True, text=True
        )
        assert seen.stdout.strip() == "4"
    finally:
        db.dispose()


def _checkpoint_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "leadscore-checkpoint"]


def test_a_read_transaction_sees_one_snapshot(store: Store, clock: Clock) -> None:
    """What another connection commits during a read transaction is not seen by the
    transaction's later statements (PostgreSQL's read committed, its default, would show it):
    a lead's view reads its profile, scores and history in several."""
    store.ingest_events([EventInput("page_view", clock.now, "L1")])
    count = sa.select(sa.func.count()).select_from(leads)
    with store.db.read() as conn:
        before = conn.execute(count).scalar_one()
        store.upsert_leads([LeadInput("L2", fields={"title": "VP"})])  # another connection
        assert conn.execute(count).scalar_one() == before == 1
        assert lead_view(conn, "L1")["lead_id"] == "L1"
    with store.db.read() as conn:
        assert conn.execute(count).scalar_one() == 2


def test_checkpoint_thread_ends_with_a_database_dropped_undisposed(tmp_path: Path) -> None:
    before = set(_checkpoint_threads())
    db = open_database(tmp_path / "store.db")
    with db.write() as conn:
        conn.exec_driver_sql("CREATE TABLE t (x)")
    mine = [t for t in _checkpoint_threads() if t not in before]
    assert len(mine) == 1
    time.sleep(3 * CHECKPOINT_SECONDS)  # it checkpointed and has nothing left to do
    del db, conn
    gc.collect()
    mine[0].join(timeout=10 * CHECKPOINT_SECONDS + 5)
    assert not mine[0].is_alive()


def test_in_memory_store_starts_no_checkpoint_thread(caplog: pytest.LogCaptureFixture) -> None:
    """An in-memory database has no log to copy; a checkpoint from another thread would open
    a second, empty database there, which dispose could not close."""
    before = set(_checkpoint_threads())
    db = open_database("sqlite://")
    with db.write() as conn:
        conn.exec_driver_sql("CREATE TABLE t (x)")
        conn.exec_driver_sql("INSERT INTO t VALUES (1)")
    assert [t for t in _checkpoint_threads() if t not in before] == []
    with caplog.at_level(logging.WARNING):
        db.dispose()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_sqlite_writes_go_through_one_connection_with_a_larger_page_cache(tmp_path: Path) -> None:
    """The writer's connection stays open between transactions (its pages stay cached, and
    PRAGMA data_version can tell whether anyone else wrote); readers keep SQLite's default."""
    db = open_database(tmp_path / "w.db")
    try:
        seen = set()
        for _ in range(3):
            with db.write() as conn:
                seen.add(id(conn.connection.dbapi_connection))
                assert conn.exec_driver_sql("PRAGMA cache_size").scalar_one() == -WRITER_CACHE_KIB
        assert len(seen) == 1
        with db.read() as conn:
            assert conn.exec_driver_sql("PRAGMA cache_size").scalar_one() == -2000
    finally:
        db.dispose()


def test_a_waiting_writer_gets_sqlite_s_lock_between_another_s_chunks(tmp_path: Path) -> None:
    """Two writers of one file (as two processes would be): one writes 30 chunks back to back,
    each holding the write lock 10 ms, pausing (let_others_write) in between; the other, asking
    for the lock during the third chunk, gets it at the next pause. (SQLite's own wait sleeps
    up to 100 ms between tries and missed every pause.) Its wait for good is not the rule:
    after BUSY_SECONDS it hears SQLite's error."""
    path = tmp_path / "w.db"
    chunked, waiting = open_database(path), open_database(path)
    done: list[int] = []
    got_in_after: list[int] = []
    try:
        asked = threading.Event()

        def ask() -> None:
            asked.wait()
            with waiting.write():
                got_in_after.append(len(done))

        other = threading.Thread(target=ask)
        other.start()
        for n in range(30):
            with chunked.write():
                if n == 2:
                    asked.set()
                time.sleep(0.01)
            done.append(n)
            chunked.let_others_write()
        other.join()
        # usually at the pause after the third chunk; a loaded machine may miss a few
        assert got_in_after and got_in_after[0] <= 10, got_in_after
        # the mechanism: no wait inside SQLite on the writer's connection
        with waiting.write() as conn:
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar_one() == 0
        with waiting.read() as conn:  # readers keep SQLite's wait
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar_one() == 30_000
    finally:
        chunked.dispose()
        waiting.dispose()


def test_a_writer_gives_up_after_busy_seconds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "w.db"
    holder, waiting = open_database(path), open_database(path)
    monkeypatch.setattr(db_module, "BUSY_SECONDS", 0.2)
    try:
        with holder.write():
            started = time.monotonic()
            with (
                pytest.raises(sa.exc.OperationalError, match="database is locked"),
                waiting.write(),
            ):
                pass
            assert 0.2 <= time.monotonic() - started < 5
        with waiting.write():  # and writes once the lock is free
            pass
    finally:
        holder.dispose()
        waiting.dispose()


def test_batch_rescoring_keeps_its_rows_out_of_the_collector_while_writing(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full pass of the garbage collector over the batch's rows took 0.1 s for 10,000 leads,
    inside a chunk's transaction: they are frozen (gc.freeze) while the chunks are written,
    and given back after, also when a write fails; objects frozen by someone else before
    stay frozen."""
    import leadscore.store.keeper as keeper

    store.ensure_published((MODELS / "b2b-default.yaml").read_text(), "b2b-default.yaml")
    store.upsert_leads([LeadInput(f"L{i}", fields={"job_title": "VP"}) for i in range(3)])
    write_scores = keeper.write_scores
    frozen: list[int] = []

    def watched(*args: Any, **kwargs: Any) -> Any:
        frozen.append(gc.get_freeze_count())
        return write_scores(*args, **kwargs)

    monkeypatch.setattr(keeper, "write_scores", watched)
    store.rescore_all("decay", chunk=2)
    assert len(frozen) == 2 and all(n > 0 for n in frozen)
    assert gc.get_freeze_count() == 0

    def failing(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("disk full")

    monkeypatch.setattr(keeper, "write_scores", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        store.rescore_all("decay")
    assert gc.get_freeze_count() == 0

    gc.freeze()  # the program's own
    try:
        before = gc.get_freeze_count()
        monkeypatch.setattr(keeper, "write_scores", write_scores)
        store.rescore_all("decay")
        assert gc.get_freeze_count() > before // 2  # not given back (some died meanwhile)
    finally:
        gc.unfreeze()


def test_groups_are_written_when_only_they_change(store: Store, clock: Clock) -> None:
    """An event that moves points from one group to another leaves the score, band and grade
    as they were: the stored groups change all the same (they are compared as stored)."""
    store.ensure_published(
        """
version: 1
name: two
groups:
  a: {kind: activity}
  b: {kind: activity}
activity:
  - {id: up, group: a, event: up, points: 10}
  - {id: down, group: b, event: down, points: -10}
bands: {cold: -100, hot: 50}
mql: hot
""",
        "two.yaml",
    )
    store.ingest_events([EventInput("up", clock.now, "L1")])
    with store.db.read() as conn:
        before = lead_view(conn, "L1")["scores"]["two"]
    store.ingest_events([EventInput("up", clock.now, "L1"), EventInput("down", clock.now, "L1")])
    with store.db.read() as conn:
        after = lead_view(conn, "L1")["scores"]["two"]
    assert (before["score"], before["groups"]) == (10.0, {"a": 10.0, "b": 0.0})
    assert (after["score"], after["groups"]) == (10.0, {"a": 20.0, "b": -10.0})


def test_fast_commits_do_not_wait_for_the_disk(db_url: str) -> None:
    """``durable=False`` (``leadscore serve --fast-commits``): SQLite's synchronous NORMAL
    (FULL by default), PostgreSQL's synchronous_commit off for the store's connections (the
    server's own setting by default)."""
    setting = "PRAGMA synchronous" if db_url.startswith("sqlite") else "SHOW synchronous_commit"
    seen = {}
    for durable in (True, False):
        db = open_database(db_url, durable=durable)
        try:
            with db.read() as conn:
                seen[durable] = str(conn.exec_driver_sql(setting).scalar_one())
        finally:
            db.dispose()
    if db_url.startswith("sqlite"):
        assert seen == {True: "2", False: "1"}
    else:  # the server's default, whatever it is, then off
        plain = sa.create_engine(database_url(db_url))
        with plain.connect() as conn:
            default = conn.exec_driver_sql("SHOW synchronous_commit").scalar_one()
        plain.dispose()
        assert seen == {True: default, False: "off"}


def test_rows_fetched_from_the_driver_come_with_sqlalchemys_errors(tmp_path: Path) -> None:
    """driver_rows: an error SQLite meets while stepping to a later row (here a malformed
    JSON text in the second row) comes as SQLAlchemy's, as one from running the statement."""
    db = open_database(tmp_path / "rows.db")
    try:
        with db.write() as conn:
            conn.exec_driver_sql("CREATE TABLE j (x)")
            conn.exec_driver_sql("INSERT INTO j VALUES ('[1]'), ('not json')")
        with db.read() as conn:
            assert db_module.driver_rows(conn, "SELECT json(x) FROM j LIMIT 1") == [("[1]",)]
            with pytest.raises(sa.exc.OperationalError):
                db_module.driver_rows(conn, "SELECT json(x) FROM j")
            with pytest.raises(sa.exc.OperationalError):
                db_module.driver_rows(conn, "SELECT * FROM no_such_table")
    finally:
        db.dispose()
