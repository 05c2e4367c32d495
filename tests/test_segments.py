"""Segments (saved lead lists): the checks on names and queries, the store on SQLite and
PostgreSQL, the HTTP API on a real socket, and the migration that adds the table to a store
made before segments existed."""

from __future__ import annotations

import fnmatch
import os
import tomllib
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext

from leadscore.errors import NotFound, UsageError
from leadscore.store import (
    Database,
    EventInput,
    LeadInput,
    LeadQuery,
    Store,
    database_url,
    open_database,
    schema,
)
from leadscore.store.db import MIGRATIONS
from leadscore.store.keys import create_key, list_keys
from leadscore.store.queries import list_leads
from leadscore.store.segments import (
    check_name,
    check_query,
    delete_segment,
    get_segment,
    list_segments,
    save_segment,
)
from tests.conftest import PG_PREFIX, PG_SERVER, ROOT, Clock, _pg_reachable, skip_or_fail

Serve = Callable[..., httpx.Client]


def _error(r: httpx.Response, status: int, code: str) -> str:
    assert r.status_code == status, r.text
    error: dict[str, Any] = r.json()["error"]
    assert error["code"] == code
    return str(error["message"]) + " " + " ".join(str(d) for d in error["details"])


# --- names and queries -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "query,kept",
    [
        ("band=hot&grade=A&country=US&sort=-score", "band=hot&grade=A&country=US&sort=-score"),
        ("?band=hot", "band=hot"),  # a copied "?..." is fine
        ("", ""),  # every lead
        ("band=hot&limit=50&cursor=WzEsIkwxIl0&segment=old", "band=hot"),  # the page goes
        ("grade=A,B&grade=C&stage=lead", "grade=A,B&grade=C&stage=lead"),  # repeatable
        ("q=M%C3%BCnchen&city=S%C3%A3o+Paulo", "q=M%C3%BCnchen&city=S%C3%A3o+Paulo"),  # as written
        ("mql=true&min_score=40&max_score=75.5", "mql=true&min_score=40&max_score=75.5"),
        ("min_score=&mql=&sort=&band=hot&country=&spark=", "band=hot"),  # empty: any
        ("explain=false&spark=30&owner=kim", "explain=false&spark=30&owner=kim"),
    ],
)
def test_queries_a_lead_list_accepts_are_kept(query: str, kept: str) -> None:
    assert check_query(query) == kept


@pytest.mark.parametrize(
    "query,says",
    [
        ("band", "not a URL query string"),
        ("band=hot&&grade=A", "not a URL query string"),
        ("q=%ff", "not a URL query string"),  # not UTF-8
        ("=US", "without a name"),
        ("sort=colour", "sort='colour'"),
        ("sort=--score", "sort='--score' is not a sort"),  # one "-" only, as the list
        ("stage=lead,foo", "stage='foo' is not a stage; stages are subscriber, lead"),
        ("mql=maybe", "mql='maybe' must be true or false"),
        ("mql=on", "mql='on' must be true or false"),
        ("min_score=high", "min_score='high' must be a number"),
        ("max_score=inf", "max_score='inf' must be a finite number"),
        ("min_score=+", "min_score=' ' must be a number"),
        ("sort=score&sort=-fit", "sort more than once"),
        ("spark=366", "spark='366' must be a whole number of days, 0 to 365"),
        ("q=" + "x" * 201, "q has at most 200"),
        ("country=U%00S", "control character"),
        ("f" * 201 + "=1", "too long"),
        ("&".join(f"f{i}=aaaaaaaaaaaaaaaaaaaa" for i in range(100)), "at most 2000 characters"),
    ],
)
def test_bad_queries_say_what_is_wrong(query: str, says: str) -> None:
    with pytest.raises(UsageError) as e:
        check_query(query)
    assert says in str(e.value)


@pytest.mark.parametrize(
    "name,says",
    [
        ("", "needs a name"),
        ("   ", "needs a name"),
        ("x" * 101, "at most 100 characters, got 101"),
        (" hot", "must not start or end with a space"),
        ("hot\nUS", "control characters"),
    ],
)
def test_bad_names_say_what_is_wrong(name: str, says: str) -> None:
    with pytest.raises(UsageError) as e:
        check_name(name)
    assert says in str(e.value)


def test_any_other_name_is_fine() -> None:
    for name in ("Hot US leads", "EMEA/DACH ≥ 60", "x" * 100, "a"):
        assert check_name(name) == name


# --- the store ----------------------------------------------------------------------------------


def test_a_query_naming_a_sheet_that_is_not_active_is_refused(store: Store, clock: Clock) -> None:
    """Opened, the segment would answer 404, as the lead list does for that sheet."""
    store.ensure_a_model()
    with store.db.write() as conn:
        with pytest.raises(
            UsageError, match=r"sheet='nope' is no active score sheet \(active: b2b"
        ):
            save_segment(conn, "x", "sheet=nope&band=hot", clock())
        segment, _ = save_segment(conn, "x", "sheet=b2b-default&stage=Lead,MQL", clock())
        # bands and grades as the list takes them: the sheet's, in any case, - for none
        with pytest.raises(UsageError, match="band='purple' is not a band of sheet 'b2b-default'"):
            save_segment(conn, "y", "band=hot,purple", clock())
        save_segment(conn, "y", "band=HOT,-&grade=a&stage=lead,", clock())
    assert segment.query == "sheet=b2b-default&stage=Lead,MQL"


def test_save_replace_list_and_delete(store: Store, clock: Clock) -> None:
    with store.db.write() as conn:
        hot, created = save_segment(conn, "Hot US", "band=hot&country=US&limit=10", clock())
        assert created and hot.query == "band=hot&country=US"
        _, created = save_segment(conn, "A grades", "grade=A", clock(), "  ")
        assert created
    clock.advance(seconds=90)
    with store.db.write() as conn:
        again, created = save_segment(conn, "Hot US", "band=hot&sort=lead_id", clock(), "the best")
    assert not created
    assert (again.query, again.description) == ("band=hot&sort=lead_id", "the best")
    assert again.updated_us - again.created_us == 90_000_000  # created when first saved
    with store.db.read() as conn:
        assert [(s.name, s.description) for s in list_segments(conn)] == [
            ("A grades", None),  # a blank description is none
            ("Hot US", "the best"),
        ]
        assert get_segment(conn, "Hot US") == again
    with store.db.write() as conn:
        assert delete_segment(conn, "A grades").query == "grade=A"
        with pytest.raises(NotFound, match="no segment 'A grades'"):
            delete_segment(conn, "A grades")
    with store.db.read() as conn:
        assert [s.name for s in list_segments(conn)] == ["Hot US"]


def test_a_refused_segment_leaves_the_store_as_it_was(store: Store, clock: Clock) -> None:
    with store.db.write() as conn:
        save_segment(conn, "hot", "band=hot", clock())
    with pytest.raises(UsageError, match="sort"), store.db.write() as conn:
        save_segment(conn, "hot", "sort=colour", clock())
    with pytest.raises(UsageError, match="description"), store.db.write() as conn:
        save_segment(conn, "hot", "band=hot", clock(), "x" * 2001)
    with store.db.read() as conn:
        assert [(s.name, s.query) for s in list_segments(conn)] == [("hot", "band=hot")]


# --- over HTTP ----------------------------------------------------------------------------------


def test_segments_over_http(serve: Serve, clock: Clock) -> None:
    api = serve(no_auth=True)
    assert api.get("/api/v1/segments").json() == {"items": []}
    r = api.put(
        "/api/v1/segments/EMEA/hot leads",  # a name may hold "/" and spaces
        json={"query": "?band=hot&country=DE&sort=-score&cursor=WzEsIkwxIl0&limit=50"},
    )
    assert r.status_code == 201, r.text
    assert r.json() == {
        "name": "EMEA/hot leads",
        "query": "band=hot&country=DE&sort=-score",
        "description": None,
        "created_at": "2026-06-30T12:00:00Z",
        "updated_at": "2026-06-30T12:00:00Z",
    }
    clock.advance(seconds=1)
    r = api.put(
        "/api/v1/segments/EMEA%2Fhot%20leads",
        json={"query": "band=hot&country=DE", "description": "DACH first"},
    )
    assert r.status_code == 200, r.text
    assert (r.json()["query"], r.json()["updated_at"]) == (
        "band=hot&country=DE",
        "2026-06-30T12:00:01Z",
    )
    api.put("/api/v1/segments/A grades", json={"query": "grade=A"})
    items = api.get("/api/v1/segments").json()["items"]
    assert [(s["name"], s["description"]) for s in items] == [
        ("A grades", None),
        ("EMEA/hot leads", "DACH first"),
    ]
    one = api.get("/api/v1/segments/EMEA/hot leads").json()
    assert one == items[1]
    r = api.delete("/api/v1/segments/A grades")
    assert (r.status_code, r.json()["query"]) == (200, "grade=A")
    assert "no segment 'A grades'" in _error(api.get("/api/v1/segments/A grades"), 404, "not_found")
    _error(api.delete("/api/v1/segments/A grades"), 404, "not_found")
    assert [s["name"] for s in api.get("/api/v1/segments").json()["items"]] == ["EMEA/hot leads"]


@pytest.mark.parametrize(
    "name,body,status,code,says",
    [
        ("hot", {"query": "band"}, 400, "bad_request", "'band' is not a URL query string"),
        ("hot", {"query": "sort=colour"}, 400, "bad_request", "use one of score, fit"),
        ("hot", {"query": "mql=maybe"}, 400, "bad_request", "mql='maybe'"),
        ("x" * 101, {"query": "band=hot"}, 400, "bad_request", "at most 100 characters"),
        (" hot", {"query": "band=hot"}, 400, "bad_request", "start or end with a space"),
        ("hot", {}, 422, "invalid", "body.query"),
        ("hot", {"query": "band=hot", "colour": "red"}, 422, "invalid", "body.colour"),
        ("hot", {"query": "band=hot", "description": "x" * 2001}, 422, "invalid", "body.desc"),
    ],
)
def test_bad_segments_over_http_say_what_is_wrong(
    serve: Serve, name: str, body: dict[str, Any], status: int, code: str, says: str
) -> None:
    api = serve(no_auth=True)
    r = api.put(f"/api/v1/segments/{name}", json=body)
    assert says in _error(r, status, code)
    assert api.get("/api/v1/segments").json() == {"items": []}


def test_a_saved_query_gives_the_lead_list(serve: Serve) -> None:
    """b2b-default: a VP in a sell-to country has fit 35; a demo request (50) makes 85, hot.
    L1 (US) and L2 (DE) requested demos; L3 (US) did not (20, cold)."""
    api = serve(no_auth=True)
    api.post(
        "/api/v1/leads",
        json=[
            {"lead_id": "L1", "job_title": "VP Sales", "country": "US"},
            {"lead_id": "L2", "job_title": "VP Sales", "country": "DE"},
            {"lead_id": "L3", "job_title": "VP Sales", "country": "US"},
        ],
    )
    api.post(
        "/api/v1/events",
        json=[{"lead_id": "L1", "type": "demo_request"}, {"lead_id": "L2", "type": "demo_request"}],
    )
    saved = api.put(
        "/api/v1/segments/hot US",
        json={"query": "band=hot&country=US&sort=lead_id&limit=1&min_score=&mql="},
    ).json()
    assert saved["query"] == "band=hot&country=US&sort=lead_id"
    page = api.get(f"/api/v1/leads?{saved['query']}").json()
    assert [(i["lead_id"], i["band"]) for i in page["items"]] == [("L1", "hot")]
    us = api.put("/api/v1/segments/US", json={"query": "country=US&sort=lead_id"}).json()
    assert [i["lead_id"] for i in api.get(f"/api/v1/leads?{us['query']}").json()["items"]] == [
        "L1",
        "L3",
    ]


def test_reading_needs_read_and_saving_needs_admin(serve: Serve, store: Store) -> None:
    api = serve()
    with store.db.write() as conn:
        keys = {
            scope: {"Authorization": f"Bearer {create_key(conn, scope, [scope], 0)[1]}"}
            for scope in ("ingest", "read", "admin")
        }
    put = {"query": "band=hot"}
    assert api.put("/api/v1/segments/hot", json=put, headers=keys["admin"]).status_code == 201
    assert api.get("/api/v1/segments", headers=keys["read"]).status_code == 200
    assert api.get("/api/v1/segments/hot", headers=keys["read"]).status_code == 200
    for who in ("read", "ingest"):
        msg = _error(
            api.put("/api/v1/segments/hot", json={"query": ""}, headers=keys[who]),
            403,
            "forbidden",
        )
        assert "'admin'" in msg
        _error(api.delete("/api/v1/segments/hot", headers=keys[who]), 403, "forbidden")
    _error(api.get("/api/v1/segments", headers=keys["ingest"]), 403, "forbidden")
    _error(api.get("/api/v1/segments"), 401, "unauthorized")
    assert api.delete("/api/v1/segments/hot", headers=keys["admin"]).status_code == 200


# --- the migration ------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database without any table: a new SQLite file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'old.db'}"
        return
    why = _pg_reachable()
    if why:
        skip_or_fail(why)
    name = f"{PG_PREFIX}_migrate_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = sa.create_engine(database_url(PG_SERVER), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield PG_SERVER.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def _to_revision(db: Database, revision: str, down: bool = False) -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with db.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        (command.downgrade if down else command.upgrade)(cfg, revision)


def test_migrate_adds_segments_to_a_store_made_before_them(empty_url: str) -> None:
    db = open_database(empty_url, migrate=False)
    try:
        _to_revision(db, "0001")
        assert db.revision() == "0001"
        assert "segments" not in sa.inspect(db.engine).get_table_names()
        with db.write() as conn:
            key = create_key(conn, "old", ["read"], 1)[0]
        db.migrate()  # what opening the store does
        assert db.revision() == db.head()
        with db.write() as conn:
            save_segment(conn, "hot", "band=hot", 2)
        with db.read() as conn:
            assert list_keys(conn) == [key]  # the rows of before are kept
            assert [s.query for s in list_segments(conn)] == ["band=hot"]
        _to_revision(db, "0001", down=True)
        assert db.revision() == "0001"
        assert "segments" not in sa.inspect(db.engine).get_table_names()
        with db.read() as conn:
            assert list_keys(conn) == [key]
        db.migrate()
        assert db.revision() == db.head()
    finally:
        db.dispose()


def test_the_migrations_make_exactly_the_schema(store: Store) -> None:
    with store.db.engine.connect() as conn:
        # the lead search indexes (migrations 0004 and 0007) are each database's own, not in
        # the metadata
        context = MigrationContext.configure(
            conn,
            opts={
                "compare_type": True,
                "include_name": lambda name, kind, _: (
                    not (
                        (kind == "table" and str(name).startswith("lead_search"))
                        or (kind == "index" and name == "ix_leads_search")
                    )
                ),
            },
        )
        assert compare_metadata(context, schema.metadata) == []
    assert store.db.revision() == store.db.head()


def test_every_migration_ships_in_the_package() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["leadscore"]
    package = ROOT / "src" / "leadscore"
    files = [p.relative_to(package).as_posix() for p in (MIGRATIONS / "versions").glob("*.py")]
    assert "store/migrations/versions/0002_segments.py" in files
    for name in files:
        assert any(fnmatch.fnmatch(name, p) for p in patterns), name


def test_migrate_0006_puts_the_event_ids_in_the_lead_index_on_postgresql(empty_url: str) -> None:
    def definition(db: Database) -> str:
        with db.read() as conn:
            if db.is_sqlite:
                sql = "SELECT sql FROM sqlite_master WHERE name = 'ix_events_lead_ts'"
            else:
                sql = "SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_events_lead_ts'"
            return str(conn.exec_driver_sql(sql).scalar_one())

    db = open_database(empty_url, migrate=False)
    try:
        _to_revision(db, "0005")
        before = definition(db)
        assert "INCLUDE" not in before
        db.migrate()
        after = definition(db)
        assert after == before if db.is_sqlite else after.endswith("(lead_id, ts_us) INCLUDE (id)")
        _to_revision(db, "0005", down=True)
        assert definition(db) == before
    finally:
        db.dispose()


def _search_index(db: Database) -> str | None:
    if db.is_sqlite:
        return None
    with db.read() as conn:
        sql = "SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_leads_search'"
        return conn.exec_driver_sql(sql).scalar()


def test_migrate_0007_makes_the_trigram_index_of_the_search_on_postgresql(empty_url: str) -> None:
    db = open_database(empty_url, migrate=False)
    try:
        _to_revision(db, "0006")
        assert _search_index(db) is None
        db.migrate()
        index = _search_index(db)
        if db.is_sqlite:
            assert index is None
        else:
            assert index is not None and "gin_trgm_ops" in index
            with db.read() as conn:  # the planner's statistics of the text: 1,000 leads
                q = (
                    "SELECT attstattarget FROM pg_attribute "
                    "WHERE attrelid = 'ix_leads_search'::regclass"
                )
                assert conn.exec_driver_sql(q).scalar_one() == 1000
        _to_revision(db, "0006", down=True)
        assert _search_index(db) is None
        db.migrate()
    finally:
        db.dispose()


@pytest.mark.parametrize("empty_url", ["postgresql"], indirect=True)
def test_migrate_0007_goes_on_without_the_index_where_pg_trgm_may_not_be_added(
    empty_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # a role that may make tables but not add extensions (no CREATE on the database)
    role = f"leadscore_limited_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(database_url(empty_url), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        q = "SELECT count(*) FROM pg_extension WHERE extname = 'pg_trgm'"
        if conn.exec_driver_sql(q).scalar_one():
            admin.dispose()
            pytest.skip("pg_trgm is in every new database of this server (template1)")
    # the test server trusts local connections (trust auth)
    url = sa.engine.make_url(empty_url).set(username=role).render_as_string(hide_password=False)
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE ROLE "{role}" LOGIN')
            conn.exec_driver_sql(f'GRANT CREATE ON SCHEMA public TO "{role}"')
        store = Store(open_database(url))  # migrates, as the service does on start
        try:
            assert store.db.revision() == store.db.head()
            assert _search_index(store.db) is None
            assert "could not add the pg_trgm extension" in caplog.text
            store.upsert_leads([LeadInput("T1", fields={"company": "Quartz Labs"})])
            with store.db.read() as conn:
                page = list_leads(conn, LeadQuery(search="quartz"), [])
            assert [i["lead_id"] for i in page.items] == ["T1"]  # found by reading the leads
        finally:
            store.db.dispose()
    finally:
        with admin.connect() as conn:
            q = sa.text("SELECT count(*) FROM pg_roles WHERE rolname = :role")
            if conn.execute(q, {"role": role}).scalar_one():
                conn.exec_driver_sql(f'DROP OWNED BY "{role}"')
                conn.exec_driver_sql(f'DROP ROLE "{role}"')
        admin.dispose()


def test_migrate_0008_stores_emails_in_their_composed_form(empty_url: str) -> None:
    """A store of before 0008 holds `josé@x.com` written as `e` and a combining accent: the
    email-keyed lead of that name, and L3, whose profile's email field says something else.
    The migration composes both emails (and the profile field that is the same text; not
    other fields, nor the lead's id). Then the email found either way finds the lead kept
    under its old id, and a lead id claiming it merges that lead."""
    nfd, nfc = "jose\u0301@x.com", "jos\u00e9@x.com"
    db = open_database(empty_url, migrate=False)
    try:
        _to_revision(db, "0007")
        with db.write() as conn:
            for lead_id, email, profile in (
                (nfd, nfd, {"email": nfd, "name": "Jose\u0301"}),
                ("L2", "ana@x.com", {"email": "ana@x.com"}),
                ("L3", "rene\u0301@x.com", {"email": "someone else"}),
            ):
                conn.execute(
                    schema.leads.insert().values(
                        lead_id=lead_id,
                        email=email,
                        profile=profile,
                        stage="lead",
                        stage_us=1,
                        created_us=1,
                        updated_us=1,
                    )
                )
        db.migrate()
        with db.read() as conn:
            rows = conn.execute(
                sa.select(schema.leads.c.lead_id, schema.leads.c.email, schema.leads.c.profile)
            ).all()
        assert sorted((r[0], r[1], r[2]) for r in rows) == [
            ("L2", "ana@x.com", {"email": "ana@x.com"}),
            ("L3", "ren\u00e9@x.com", {"email": "someone else"}),
            (nfd, nfc, {"email": nfc, "name": "Jose\u0301"}),
        ]
    finally:
        db.dispose()
    store = Store(open_database(empty_url))
    try:
        for email in (nfc, nfd.upper()):
            (found,) = store.ingest_events([EventInput("email_open", 2, email=email)])
            assert found.lead_id == nfd
        (claimed,) = store.upsert_leads([LeadInput("C1", email=nfd)])
        assert (claimed.status, claimed.lead_id, claimed.merged) == ("created", "C1", nfd)
        with store.db.read() as conn:
            ids = conn.execute(sa.select(schema.leads.c.lead_id)).scalars().all()
        assert sorted(ids) == ["C1", "L2", "L3"]
    finally:
        store.db.dispose()
