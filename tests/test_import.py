"""`leadscore import` (and the other store commands) on SQLite and PostgreSQL."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from leadscore.cli import app
from leadscore.engine.timeutil import parse_instant
from leadscore.errors import InputError
from leadscore.inputs import LoadReport, normalize_leads
from leadscore.inputs.batches import InputFile, open_input
from leadscore.store import EventInput, open_database
from leadscore.store.keeper import Store
from leadscore.store.queries import lead_view, score_history_of

LEADS = "lead_id,email,job_title,country,stage\nL1,ann@acme.com,VP Sales,US,lead\nL2,,Analyst,DE,\n"
EVENTS = (
    "lead_id,type,ts,item,url,event_id\n"
    "L1,demo_request,2026-11-20T10:00:00Z,,,e1\n"
    "L1,page_view,2026-11-21T10:00:00Z,,/pricing,e2\n"
    "L2,email_open,2026-11-22T10:00:00Z,cmp-1,,e3\n"
)


def run(*args: str, input: str | bytes | None = None) -> tuple[int, str]:
    """The command's exit code and output; ``input``: its standard input."""
    result = CliRunner().invoke(app, list(args), input=input)
    return result.exit_code, result.stdout + result.stderr


def test_import_leads_events_outcomes_and_again(db_url: str, tmp_path: Path) -> None:
    (tmp_path / "leads.csv").write_text(LEADS)
    (tmp_path / "events.csv").write_text(EVENTS)
    (tmp_path / "outcomes.csv").write_text("lead_id,outcome,ts,amount\nL1,won,2026-11-23,1200\n")
    code, out = run("import", "leads", str(tmp_path / "leads.csv"), "--db", db_url)
    assert code == 0, out
    assert "2 rows read: 2 leads stored" in out
    assert "published the shipped b2b-default" in out
    code, out = run("import", "events", str(tmp_path / "events.csv"), "--db", db_url)
    assert code == 0, out
    assert "3 rows read: 3 events stored" in out
    code, out = run("import", "events", str(tmp_path / "events.csv"), "--db", db_url)
    assert "0 events stored, 3 already there" in out
    assert "no event_id column" not in out
    code, out = run("import", "outcomes", str(tmp_path / "outcomes.csv"), "--db", db_url)
    assert code == 0 and "1 outcome stored" in out, out
    assert "name a lead the store does not hold" not in out
    more = "lead_id,outcome,ts\nL1,lost,2026-11-23\nl2,won,2026-11-23\n"
    (tmp_path / "more.csv").write_text(more)
    code, out = run("import", "outcomes", str(tmp_path / "more.csv"), "--db", db_url)
    assert code == 0 and "2 outcomes stored" in out, out
    assert "1 outcome names a lead the store does not hold: kept" in out  # l2, not L2
    assert "outcomes named otherwise" not in out
    (tmp_path / "crm.csv").write_text("lead_id,outcome,ts\nL1,Closed Won,2026-11-24\n")
    code, out = run("import", "outcomes", str(tmp_path / "crm.csv"), "--db", db_url)
    assert code == 0 and "1 outcome stored" in out, out
    assert "outcomes named otherwise than sql, opportunity, won, lost, rejected: " in out
    assert "'closed won' (1)" in out
    store = Store(open_database(db_url))
    try:
        with store.db.read() as conn:
            view = lead_view(conn, "L1")
            history = score_history_of(conn, "L1")
    finally:
        store.db.dispose()
    assert view["email"] == "ann@acme.com"
    assert view["scores"]["b2b-default"]["mql"] is True  # a demo request and pricing: hot
    assert [h["reason"] for h in history] == ["event", "profile"]
    without_ids = tmp_path / "no-ids.csv"
    without_ids.write_text("\n".join(line.rsplit(",", 1)[0] for line in EVENTS.splitlines()) + "\n")
    code, out = run("import", "events", str(without_ids), "--db", db_url)
    assert code == 0 and "warning: the file has no event_id column: importing it again" in out


def test_import_refuses_rows_the_api_would_refuse(db_url: str, tmp_path: Path) -> None:
    bad = EVENTS + f"L1,{'t' * 201},2026-11-22T10:00:00Z,,,e4\n"
    (tmp_path / "events.csv").write_text(bad)
    code, out = run("import", "events", str(tmp_path / "events.csv"), "--db", db_url)
    assert code == 1
    assert "events.csv: line 5: column 'type': longer than 200" in out
    assert "nothing was imported" in out
    code, out = run(
        "import", "events", str(tmp_path / "events.csv"), "--db", db_url, "--skip-bad-rows"
    )
    assert code == 0, out
    assert "3 events stored" in out and "skipped:" in out
    # NUL in any column (PostgreSQL cannot keep it), found before anything is stored; the
    # line counted as the file has it (a value over two lines, a blank line)
    nul = (
        "lead_id,type,ts,note,event_id\n"
        'L7,x,2026-11-20,"two\nlines",n1\n\n'
        "L7,x,2026-11-21,a\x00b,n2\n"
    )
    (tmp_path / "nul.csv").write_text(nul)
    code, out = run("import", "events", str(tmp_path / "nul.csv"), "--db", db_url)
    assert code == 1 and "nul.csv: line 5: column 'note': holds the NUL character" in out, out
    code, out = run(
        "import", "events", str(tmp_path / "nul.csv"), "--db", db_url, "--skip-bad-rows"
    )
    assert code == 0 and "1 event stored" in out, out
    # an unknown stage is a bad row like the others: named by line, skipped on request
    leads = "lead_id,stage,note\nS1,lead,x\nS2,bogus,y\nS3,sql,z\x00\n"
    (tmp_path / "leads.csv").write_text(leads)
    code, out = run("import", "leads", str(tmp_path / "leads.csv"), "--db", db_url)
    assert code == 1 and "leads.csv: line 3: column 'stage': unknown stage 'bogus'" in out
    assert "leads.csv: line 4: column 'note': holds the NUL character" in out
    code, out = run(
        "import", "leads", str(tmp_path / "leads.csv"), "--db", db_url, "--skip-bad-rows"
    )
    assert code == 0 and "1 lead stored" in out, out


def test_import_unknown_kind_and_missing_file(tmp_path: Path) -> None:
    db = str(tmp_path / "s.db")
    code, out = run("import", "deals", "x.csv", "--db", db)
    assert code == 2 and "leads, events or outcomes" in out
    code, out = run("import", "leads", str(tmp_path / "nope.csv"), "--db", db)
    assert code == 1 and "nope.csv: no such file" in out
    code, out = run("import", "events", str(tmp_path), "--db", db)
    assert code == 1 and "is a directory, not a file" in out
    assert not Path(db).exists()  # a mistyped name creates no store (nor publishes a model)
    # a model or triggers file that is not there is an invalid input (1), as everywhere
    for args in (["publish", "nope.yaml"], ["serve", "--model", "nope.yaml"]):
        code, out = run(*args, "--db", db)
        assert (code, out.splitlines()) == (
            1,
            ["Error: the model is invalid (1 problem):", "  nope.yaml: no such file"],
        ), args
    code, out = run("serve", "--triggers", "nope.yaml", "--db", db)
    assert (code, out.strip()) == (1, "Error: nope.yaml: no such file")


def test_a_publish_that_fails_part_way_says_what_it_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rescoring of `leadscore publish` fails (the disk is full): the message says so and
    that the version is active with some leads not rescored; publishing the file again says
    how many still have the old version's scores; `leadscore rescore` brings them over."""
    db = str(tmp_path / "s.db")
    (tmp_path / "leads.csv").write_text(LEADS)
    assert run("import", "leads", str(tmp_path / "leads.csv"), "--db", db)[0] == 0
    model = tmp_path / "m.yaml"
    model.write_text("version: 1\nname: b2b-default\nbands: {cold: -.inf, hot: 10}\nmql: hot\n")

    def full(self: Store, *args: object, **kwargs: object) -> None:
        raise sa.exc.OperationalError("UPDATE", {}, Exception("database or disk is full"))

    with monkeypatch.context() as m:
        m.setattr(Store, "rescore_all", full)
        code, out = run("publish", str(model), "--db", db)
    assert code == 1
    assert "Error: the database refused: database or disk is full" in out
    assert "b2b-default version 2 is active, but its rescoring stopped part way" in out
    code, out = run("publish", str(model), "--db", db)
    assert code == 0 and "b2b-default version 2 is already active" in out
    assert "2 leads still have a score of a version it replaced: `leadscore rescore`" in out
    code, out = run("rescore", "--db", db)
    assert code == 0 and "rescored 2 leads: 2 score changes recorded" in out
    code, out = run("publish", str(model), "--db", db)
    assert code == 0 and "still" not in out
    store = Store(open_database(db))
    try:
        with store.db.read() as conn:
            reasons = [r["reason"] for r in score_history_of(conn, "L1", limit=10)]
    finally:
        store.db.dispose()
    assert reasons == ["model change", "profile"]


def commands_at(monkeypatch: pytest.MonkeyPatch, start: str) -> list[int]:
    """The store commands' clock set to ``start``: the list returned holds the time they
    read (set its item to move them on)."""
    from leadscore.cli import service as cli_service

    now = [parse_instant(start)]
    opened = cli_service.open_store

    def at_now(db: str) -> Store:
        store = opened(db)
        store.clock = lambda: now[0]
        return store

    monkeypatch.setattr(cli_service, "open_store", at_now)
    return now


def test_command_line_score_changes_fire_the_stored_triggers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`import --fire-triggers`, `publish --fire-triggers` and `rescore` fire the stored
    triggers as the server does: a stage set in the same transaction, a webhook queued in the
    outbox (sent by a running server). Without --fire-triggers an import or publish fires
    nothing."""
    now = commands_at(monkeypatch, "2026-11-22T12:00:00Z")
    db = str(tmp_path / "s.db")
    (tmp_path / "leads.csv").write_text(LEADS)
    (tmp_path / "events.csv").write_text(EVENTS)
    triggers = tmp_path / "triggers.yaml"
    triggers.write_text(
        "triggers:\n"
        "  - id: hot\n"
        "    when: {enters_band: hot}\n"
        "    reasons: [event, model change]\n"
        "    actions:\n"
        "      - set_stage: sql\n"
        '      - webhook: {url: "http://127.0.0.1:9/hook"}\n'
        "  - id: cooled\n"
        "    when: {leaves_band: hot}\n"
        "    reasons: [decay]\n"
        "    actions: [set_stage: recycled]\n"
    )
    assert run("import", "leads", str(tmp_path / "leads.csv"), "--db", db)[0] == 0
    assert run("triggers", "set", str(triggers), "--db", db)[0] == 0

    def state() -> tuple[list[str], int, str]:
        engine = sa.create_engine(f"sqlite:///{db}")
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT trigger_id FROM trigger_firings ORDER BY id"))
            firings = [r[0] for r in rows]
            queued = conn.execute(sa.text("SELECT count(*) FROM outbox")).scalar_one()
            stage = conn.execute(sa.text("SELECT stage FROM leads WHERE lead_id = 'L1'"))
            result = (firings, queued, stage.scalar_one())
        engine.dispose()
        return result

    code, out = run("import", "events", str(tmp_path / "events.csv"), "--db", db)
    assert code == 0 and state() == ([], 0, "lead"), out  # an import is a back-fill
    cold = tmp_path / "cold.yaml"  # the shipped model with hot out of reach
    cold.write_text(_SHIPPED.read_text().replace("hot: 75}", "hot: 750}"))
    assert run("publish", str(cold), "--db", db)[0] == 0  # L1 leaves hot: no --fire-triggers
    code, out = run("publish", str(_SHIPPED), "--db", db, "--fire-triggers")
    assert code == 0 and state() == (["hot"], 1, "sql"), out
    now[0] = parse_instant("2027-06-01T00:00:00Z")  # the demo request has long decayed
    code, out = run("rescore", "--db", db)
    assert code == 0 and state() == (["hot", "cooled"], 1, "recycled"), out


_SHIPPED = Path(__file__).parents[1] / "src" / "leadscore" / "models" / "b2b-default.yaml"


def test_an_empty_store_name_is_refused() -> None:
    """`--db "$UNSET"` named a store kept in memory: keys printed and imports counted, all lost."""
    for args in (["keys", "create", "x"], ["rescore"], ["serve"]):
        code, out = run(*args, "--db", " ")
        assert code == 2 and "no store given (--db or LEADSCORE_DB is empty)" in out, args


def test_triggers_set_on_a_new_store(tmp_path: Path) -> None:
    """A new store gets the shipped model first (as serve gives it), so a triggers file naming
    its sheet is set; a file wrong in itself creates no store."""
    db = tmp_path / "s.db"
    bad = tmp_path / "bad.yaml"
    bad.write_text("triggers:\n  - id: x\n    when: {nope: 1}\n    actions: [set_stage: mql]\n")
    code, out = run("triggers", "set", str(bad), "--db", str(db))
    assert code == 1 and "unknown key 'nope'" in out and not db.exists()
    good = tmp_path / "t.yaml"
    good.write_text(
        "triggers:\n  - id: hot\n    sheet: b2b-default\n    when: {enters_band: hot}\n"
        "    actions: [set_stage: mql]\n"
    )
    code, out = run("triggers", "set", str(good), "--db", str(db))
    assert code == 0 and "1 trigger set from" in out and "published the shipped" in out, out


def test_nested_json_in_an_import_is_read_as_posted_events_are(tmp_path: Path) -> None:
    """An object in a JSON-lines event gives its keys as `product.sku` fields, as the same
    event posted to the API does: a `where` on them scores the same either way."""
    db = str(tmp_path / "s.db")
    model = tmp_path / "m.yaml"
    model.write_text(
        "version: 1\nname: m\nbands: {cold: -.inf, hot: 10}\nmql: hot\nactivity:\n"
        "  - {id: sku, event: purchase, points: 10, where: {field: product.sku, eq: A}}\n"
        "  - {id: tag, event: purchase, points: 1, where: {field: tags, contains: '\"b\"'}}\n"
    )
    assert run("publish", str(model), "--db", db)[0] == 0
    (tmp_path / "e.jsonl").write_text(
        '{"lead_id": "P1", "type": "purchase", "ts": "2026-12-01T10:00:00Z",'
        ' "product": {"sku": "A"}, "tags": ["a", "b"]}\n'
    )
    code, out = run("import", "events", str(tmp_path / "e.jsonl"), "--db", db)
    assert code == 0, out
    store = Store(open_database(db))
    try:
        store.ingest_events(
            [
                EventInput(
                    "purchase",
                    parse_instant("2026-12-01T10:00:00Z"),
                    "P2",
                    properties={"product": {"sku": "A"}, "tags": ["a", "b"]},
                )
            ]
        )
        with store.db.read() as conn:
            scores = [lead_view(conn, p)["scores"]["m"]["score"] for p in ("P1", "P2")]
    finally:
        store.db.dispose()
    assert scores == [11.0, 11.0]


def test_a_second_server_on_one_sqlite_file_is_refused(tmp_path: Path) -> None:
    """Two servers on one SQLite file each trusted their caches, and scored leads without the
    events the other had just stored; the second now stops before it starts."""
    import os

    from leadscore.cli import service as cli_service

    db = str(tmp_path / "s.db")
    cli_service._one_server_per_sqlite_file(db)  # as a running server holds it
    try:
        code, out = run("serve", "--db", db, "--no-auth")
        assert code == 2, out
        assert f"another `leadscore serve` uses the store {db} (process {os.getpid()})" in out
    finally:
        os.close(cli_service._SERVE_LOCKS.pop())
    assert run("keys", "create", "k", "--db", db)[0] == 0  # commands are not servers


def test_delete_lead_from_the_command_line(tmp_path: Path) -> None:
    db = str(tmp_path / "s.db")
    (tmp_path / "leads.csv").write_text(LEADS)
    (tmp_path / "events.csv").write_text(EVENTS)
    run("import", "leads", str(tmp_path / "leads.csv"), "--db", db)
    run("import", "events", str(tmp_path / "events.csv"), "--db", db)
    code, out = run("delete-lead", "L1", "--db", db)
    assert code == 0 and out.startswith(
        "deleted lead L1 with 2 events, 1 score, 2 score changes"
    ), out
    code, out = run("delete-lead", "L1", "--db", db)
    assert code == 2 and "no lead 'L1'" in out


def test_rescore_of_an_unknown_sheet_is_refused(tmp_path: Path) -> None:
    db = str(tmp_path / "s.db")
    (tmp_path / "leads.csv").write_text(LEADS)
    assert run("import", "leads", str(tmp_path / "leads.csv"), "--db", db)[0] == 0
    code, out = run("rescore", "--db", db, "--sheet", "b2b-defualt")
    assert code == 2 and "--sheet: no active sheet 'b2b-defualt' (active: b2b-default)" in out
    code, out = run("rescore", "--db", db, "--sheet", "b2b-default")
    assert code == 0 and "rescored 2 leads" in out, out


def test_store_commands(tmp_path: Path) -> None:
    """keys, triggers, publish and rescore against one SQLite store."""
    db = str(tmp_path / "s.db")
    name = "website forms of the marketing team in europe, middle east and africa [emea]"
    code, out = run("keys", "create", name, "--scope", "ingest", "--db", db)
    assert code == 0 and "lsk_" in out and f"for {name!r}" in out
    key_id = out.split("lsk_")[1].split("_")[0]
    code, out = run("keys", "list", "--db", db)
    assert key_id in out and "website" in out and "[emea]" in out  # the id whole, however narrow
    assert run("keys", "revoke", key_id, "--db", db)[0] == 0
    code, out = run("keys", "revoke", key_id, "--db", db)
    assert code == 2 and "already revoked" in out
    code, out = run("keys", "revoke", "nope", "--db", db)
    assert code == 2 and "no API key 'nope'" in out
    assert run("keys", "create", "x", "--scope", "root", "--db", db)[0] == 2

    model = tmp_path / "m.yaml"
    model.write_text("version: 1\nname: m\nbands: {cold: -.inf, hot: 10}\nmql: hot\n")
    code, out = run("publish", str(model), "--db", db)
    assert code == 0 and "published m version 1" in out
    assert "already active" in run("publish", str(model), "--db", db)[1]
    triggers = tmp_path / "t.yaml"
    triggers.write_text(
        "triggers:\n  - id: hot\n    when: {enters_band: warm}\n    actions: [{set_stage: mql}]\n"
    )
    code, out = run("triggers", "check", str(triggers), "--db", db)
    assert code == 1 and "t.yaml:3" in out and "warm" in out
    # without a store, the names are not checked, and the answer says so
    code, out = run("triggers", "check", str(triggers))
    assert code == 0 and "1 trigger, valid (sheet, band and grade names not checked: give " in out
    # LEADSCORE_DB names the store, as for every command
    result = CliRunner().invoke(app, ["triggers", "check", str(triggers)], env={"LEADSCORE_DB": db})
    assert result.exit_code == 1 and "warm" in result.stdout + result.stderr
    code, out = run("triggers", "check", str(triggers), "--db", str(tmp_path / "none.db"))
    assert code == 0 and "names not checked: no store at" in out, out
    assert not (tmp_path / "none.db").exists()
    code, out = run("triggers", "check", str(tmp_path))
    assert code == 1 and "is a directory, not a file" in out
    triggers.write_text(
        "triggers:\n  - id: hot\n    when: {enters_band: hot}\n    actions:\n"
        f"      - webhook: {{url: 'https://x.example/h', secret: {'s3cret' * 40}}}\n"
    )
    code, out = run("triggers", "check", str(triggers))
    assert code == 1 and "secret: string should have at most 200 characters" in out
    assert "s3cret" not in out  # an error does not repeat a secret
    triggers.write_text(
        "triggers:\n  - id: hot\n    when: {enters_band: hot}\n    actions: [{set_stage: mql}]\n"
        "  - id: mql\n    when: {becomes_mql: true}\n    actions: [{set_stage: mql}]\n"
    )
    assert run("triggers", "set", str(triggers), "--db", db)[0] == 0
    code, out = run("triggers", "list", "--db", db)
    assert "enters_band: hot" in out and "becomes_mql: true" in out
    code, out = run("rescore", "--db", db)
    assert code == 0 and "rescored 0 leads" in out
    assert "0/0" in out and "0/1" not in out  # no leads: nothing left to wait for


def test_serve_refuses_a_busy_port_and_no_auth_elsewhere(tmp_path: Path) -> None:
    import socket

    db = str(tmp_path / "s.db")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        code, out = run("serve", "--db", db, "--port", port, "--no-auth")
        assert code == 2 and "Choose another with --port" in out
        code, out = run("demo", "--serve", "--port", port, "--db", str(tmp_path / "d.db"))
        assert code == 2 and "Choose another with --port" in out
    code, out = run("serve", "--db", db, "--log-level", "loud")
    assert code == 2 and "--log-level is warning, info or debug, not 'loud'" in out
    for command in ("serve", "demo"):  # not a traceback from bind()
        code, out = run(command, "--port", "99999")
        assert code == 2 and "Invalid value for '--port'" in out, out
    code, out = run("serve", "--db", db, "--host", "0.0.0.0", "--no-auth")
    assert code == 2 and "only on 127.0.0.1" in out
    # several ingest processes: PostgreSQL only, and with the ingest process
    code, out = run("serve", "--db", db, "--no-auth", "--ingest-processes", "2")
    assert code == 2 and "SQLite takes one writer at a time" in out
    pg = "postgresql://postgres@127.0.0.1:9/nowhere"
    code, out = run("serve", "--db", pg, "--ingest-processes", "2", "--no-ingest-process")
    assert code == 2 and "--no-ingest-process" in out
    # waits in seconds: a webhook retried at once forever, or given no time to answer, is
    # no setting
    for option, value, says in (
        ("--webhook-retry", "-1", "more than 0, not -1"),
        ("--webhook-timeout", "0", "more than 0, not 0"),
        ("--rescore-every", "-5", "0 (never) or more, not -5"),
    ):
        code, out = run("serve", "--db", db, "--no-auth", option, value)
        assert code == 2 and f"{option} takes seconds, {says}" in out, out
    assert not Path(db).exists()  # refused before the store was made


def test_serve_checks_its_model_and_triggers_files_before_it_starts(tmp_path: Path) -> None:
    """A broken --model or --triggers file is reported as validate reports it (exit 1),
    before the server starts, not as a traceback of the server's start-up."""
    db = str(tmp_path / "s.db")
    model = tmp_path / "pit.yaml"
    model.write_text(
        "version: 1\nname: p\nprofile:\n  - id: c\n    if: {field: country, in: [US, NO]}\n"
        "    points: 1\nbands: {cold: 0}\n"
    )
    code, out = run("serve", "--db", db, "--port", "9", "--no-auth", "--model", str(model))
    assert code == 1 and "pit.yaml:5: profile[0].if.in: YAML read a value here as false" in out
    assert "Traceback" not in out and "serving on" not in out
    triggers = tmp_path / "t.yaml"
    triggers.write_text(
        "triggers:\n  - id: x\n    sheet: nosheet\n    when: {becomes_mql: true}\n"
        "    actions: [{set_stage: sql}]\n"
    )
    code, out = run("serve", "--db", db, "--port", "9", "--no-auth", "--triggers", str(triggers))
    assert code == 1 and "t.yaml:3: triggers[0].sheet: no sheet 'nosheet'" in out
    assert "sheets are b2b-default" in out and "serving on" not in out


def test_an_import_stopped_part_way_says_what_the_store_holds(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C (here: as the second chunk's progress is shown) leaves the chunks committed
    before it; the command says how many, that they are not rescored, what a second import
    does, and exits 130 without a traceback."""
    from leadscore.cli.service import Bar

    rows = "".join(f"L{i % 50},page_view,2026-11-20T10:00:00Z\n" for i in range(5000))
    (tmp_path / "events.csv").write_text("lead_id,type,ts\n" + rows)
    shown = Bar.__call__

    def interrupted(self: Bar, what: str, done: int, total: int) -> None:
        shown(self, what, done, total)
        if what == "storing events" and done >= 4000:
            raise KeyboardInterrupt

    monkeypatch.setattr(Bar, "__call__", interrupted)
    code, out = run("import", "events", str(tmp_path / "events.csv"), "--db", db_url)
    assert code == 130 and "Traceback" not in out, out
    assert "stopped while storing events: the first 4,000 of 5,000 rows are stored" in out
    assert f"not yet rescored: run `leadscore rescore --db {db_url}`" in out
    assert "stores them twice when it has not" in out
    store = Store(open_database(db_url))
    try:
        with store.db.read() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM events").scalar_one() == 4000
    finally:
        store.db.dispose()


def test_file_and_database_errors_are_messages_not_tracebacks(tmp_path: Path) -> None:
    model = tmp_path / "m.yaml"
    model.write_text("version: 1\nname: m\nbands: {cold: 0}\n")
    leads = tmp_path / "leads.csv"
    leads.write_text("lead_id\nL1\n")
    out_file = tmp_path / "no" / "such" / "dir" / "out.csv"
    code, out = run("score", str(model), "--leads", str(leads), "-o", str(out_file))
    assert code == 1 and f"Error: {out_file}: No such file or directory" in out, out
    code, out = run("score", str(model), "--leads", str(leads), "-o", str(tmp_path))
    assert code == 1 and "Is a directory" in out, out
    code, out = run("rescore", "--db", str(leads))  # a CSV file is no SQLite database
    assert code == 1 and "Error: the database refused: file is not a database" in out, out
    code, out = run("demo", "--leads", "5", "--events", "10", "--seed", "-1")
    assert code == 2 and "--seed" in out
    db = str(tmp_path / "s.db")
    code, out = run("keys", "create", "n" * 201, "--db", db)
    assert code == 2 and "a key's name has at most 200 characters, not 201" in out
    # a mistyped store: not made empty by a command that reads or changes what one holds
    typo = tmp_path / "typo.db"
    for args in (["rescore"], ["keys", "list"], ["keys", "revoke", "x"], ["triggers", "list"]):
        code, out = run(*args, "--db", str(typo))
        assert code == 2 and f"no store at {typo}" in out, (args, out)
    assert not typo.exists()
    empty = tmp_path / "t.yaml"
    empty.write_text("\n")
    code, out = run("triggers", "set", str(empty), "--db", db)
    assert code == 2 and "to remove every trigger, set a file holding `triggers: []`" in out


def test_bad_json_lines_are_named_by_line_and_skipped_on_request(
    db_url: str, tmp_path: Path
) -> None:
    """A line that is not JSON, or not an object, stopped the import even with
    --skip-bad-rows. Without the flag the error names the file and each such line (nothing is
    stored); with it they are left out and listed, and the rows after them keep their lines."""
    jsonl = tmp_path / "e.jsonl"
    jsonl.write_text(
        '{"lead_id": "J1", "type": "demo_request", "ts": "2026-11-20", "event_id": "j1"}\n'
        '{"lead_id": "J1", "type": "page_view", "ts": 2026-11-21}\n'  # line 2: not JSON
        "\n"
        '["J2", "page_view"]\n'  # line 4: JSON, not an object
        '{"lead_id": "J2", "type": "page_view", "ts": "never", "event_id": "j2"}\n'  # line 5
        '{"lead_id": "J2", "type": "page_view", "ts": "2026-11-22T10:00:00Z", "event_id": "j3"}\n'
    )
    code, out = run("import", "events", str(jsonl), "--db", db_url)
    assert code == 1, out
    assert f"{jsonl}: line 2: not JSON: Expecting ',' delimiter at column 50" in out
    assert f"{jsonl}: line 4: each line must be a JSON object" in out
    assert "pass --skip-bad-rows to leave them out" in out
    code, out = run("import", "events", str(jsonl), "--db", db_url, "--skip-bad-rows")
    assert code == 0, out
    assert "2 rows read: 2 events stored" in out
    assert (
        f"warning: {jsonl}: skipped 2 lines hold no JSON object: lines 2 (not JSON: Expecting ',' "
        "delimiter at column 50), 4 (each line must be a JSON object)"
    ) in out
    assert f"{jsonl}: column 'ts': skipped 1 line has a missing or unreadable timestamp" in out
    assert "line 5 ('never')" in out  # counted as the file has it, the bad lines included
    store = Store(open_database(db_url))
    try:
        with store.db.read() as conn:
            ids = conn.exec_driver_sql("SELECT message_id FROM events ORDER BY 1").scalars()
            assert list(ids) == ["j1", "j3"]
    finally:
        store.db.dispose()


_VALUE = st.text(alphabet='ab ,"\n\r', max_size=6)
_RAW = st.text(alphabet='ab "', max_size=4).filter(lambda v: not v.startswith('"'))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.lists(st.tuples(st.booleans(), _VALUE, _RAW, st.booleans()), max_size=12),
    newline=st.sampled_from(["\n", "\r\n"]),
    bom=st.booleans(),
    end=st.booleans(),
    block=st.integers(1, 80),
)
def test_a_csv_read_in_batches_reads_as_read_whole(
    rows: list[tuple[bool, str, str, bool]],
    newline: str,
    bom: bool,
    end: bool,
    block: int,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Read a block of text at a time and cut after its last line break, a CSV file gives the
    rows it gives read whole, each at the line it starts on, whatever the cuts: values in
    quotes holding commas, quotes and line breaks (across a cut too), blank lines, a quote
    inside a value that does not start with one (read as text, as Arrow reads it), CRLF, a
    byte-order mark, no line break at the end."""
    lines = ["lead_id,note,raw"]
    for i, (blank_before, note, raw, quoted) in enumerate(rows):
        if blank_before:
            lines.append("")
        text = '"' + note.replace('"', '""') + '"' if quoted or note else ""
        lines.append(f"L{i},{text},{raw}")
    path = tmp_path_factory.mktemp("csv") / "leads.csv"
    body = newline.join(lines) + (newline if end else "")
    path.write_bytes(("\ufeff" if bom else "").encode() + body.encode())
    whole = LoadReport()
    try:
        table = normalize_leads(path, report=whole)
    except InputError:  # (a header alone, without a line break, is no CSV file to Arrow)
        assume(False)
    expected = [(r, whole.where("leads", i)) for i, r in enumerate(table.to_pylist())]
    got = []
    seen: set[str] = set()
    for batch in InputFile(str(path), "csv", path=path, block=block).batches():
        report = LoadReport()
        part = normalize_leads(batch, report=report, seen=seen)
        got += [(r, report.where("leads", i)) for i, r in enumerate(part.to_pylist())]
    assert got == expected


@pytest.mark.parametrize("sep", [";", "\t"])
def test_a_semicolon_or_tab_csv_reads_in_batches_as_read_whole(sep: str, tmp_path: Path) -> None:
    """A spreadsheet's export separated by semicolons (or tabs) is read in batches as it is
    read whole: its columns, a value holding a comma, and a line of the wrong width named by
    its line with the separator it lacks."""
    path = tmp_path / "leads.csv"
    rows = [f"lead_id{sep}city{sep}revenue"] + [
        f'L{i}{sep}"Paris, FR"{sep}1,{i}' for i in range(30)
    ]
    path.write_text("\n".join(rows) + "\n")
    whole = normalize_leads(path).to_pylist()
    assert whole[3] == {"lead_id": "L3", "city": "Paris, FR", "revenue": "1,3"}
    got: list[dict[str, Any]] = []
    for batch in InputFile(str(path), "csv", path=path, block=64).batches():
        got += normalize_leads(batch, seen=set()).to_pylist()
    assert got == whole
    path.write_text("\n".join([*rows[:5], f"L9{sep}x{sep}1{sep}extra", *rows[5:]]) + "\n")
    mark = "a semicolon" if sep == ";" else "a tab"
    with pytest.raises(InputError) as whole_error:
        normalize_leads(path)
    assert "line 6" in str(whole_error.value) and mark in str(whole_error.value)
    with pytest.raises(InputError) as batch_error:
        for batch in InputFile(str(path), "csv", path=path, block=64).batches():
            normalize_leads(batch, seen=set())
            batch.refuse()
    assert "line 6" in str(batch_error.value) and mark in str(batch_error.value)


def test_an_import_reads_in_batches_and_keeps_those_before_a_bad_row(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file is read a batch at a time (here 10 JSON lines) and stored in chunks (here 4
    rows), never whole; a bad row stops the import at its batch, the batches before it stay
    stored, and the command says how far it got. Importing it again with --skip-bad-rows
    stores the rest and repeats nothing."""
    from leadscore.inputs import batches
    from leadscore.store import bulk

    monkeypatch.setattr(batches, "BATCH_ROWS", 10)
    monkeypatch.setattr(bulk, "CHUNK", 4)
    read: list[int] = []
    normalize = bulk.normalize_events

    def counted(*args: Any, **kwargs: Any) -> Any:
        table = normalize(*args, **kwargs)
        read.append(table.num_rows)
        return table

    monkeypatch.setattr(bulk, "normalize_events", counted)
    lines = [
        f'{{"lead_id": "B{i % 7}", "type": "page_view", "ts": "2026-11-20T10:00:{i % 60:02}Z", '
        f'"event_id": "b{i}"}}'
        for i in range(1, 46)
    ]
    lines[34] = lines[34].replace("2026-11-20T10:00:35Z", "soon")  # line 35, of the 4th batch
    events = tmp_path / "e.jsonl"
    events.write_text("\n".join(lines) + "\n")
    code, out = run("import", "events", str(events), "--db", db_url)
    assert code == 1, out
    assert f"{events}: column 'ts': 1 line has a missing or unreadable timestamp" in out
    assert "line 35 ('soon')" in out
    assert (
        "stopped while storing events: the first 30 rows are stored (a whole number of chunks, "
        f"to line 30 of {events}), not yet rescored: run `leadscore rescore --db {db_url}`"
    ) in out
    assert read == [10, 10, 10]  # the 4th batch was refused before its rows were counted

    def stored() -> int:
        store = Store(open_database(db_url))
        try:
            with store.db.read() as conn:
                return int(conn.exec_driver_sql("SELECT count(*) FROM events").scalar_one())
        finally:
            store.db.dispose()

    assert stored() == 30
    read.clear()
    code, out = run("import", "events", str(events), "--db", db_url, "--skip-bad-rows")
    assert code == 0, out
    assert "44 rows read: 14 events stored, 30 already there" in out
    assert read == [10, 10, 10, 9, 5]
    assert stored() == 44


def test_gzip_files_and_standard_input(db_url: str, tmp_path: Path) -> None:
    """FILE.csv.gz and FILE.jsonl.gz are read by their inner extension, `-` from standard
    input (its format given with --format, or told from its first line, gzip-compressed or
    not), and their bad rows are named by line as a plain file's are."""
    import gzip

    def invoke(*args: str, stdin: bytes | None = None) -> tuple[int, str]:
        result = CliRunner().invoke(app, [*args, "--db", db_url], input=stdin)
        return result.exit_code, result.stdout + result.stderr

    (tmp_path / "leads.jsonl.gz").write_bytes(
        gzip.compress(b'{"lead_id": "G1", "job_title": "VP Sales"}\n{"lead_id": "G2"}\n')
    )
    code, out = invoke("import", "leads", str(tmp_path / "leads.jsonl.gz"))
    assert code == 0 and "2 rows read: 2 leads stored" in out, out
    (tmp_path / "events.csv.gz").write_bytes(gzip.compress(EVENTS.encode()))
    code, out = invoke("import", "events", str(tmp_path / "events.csv.gz"))
    assert code == 0 and "3 rows read: 3 events stored" in out, out
    more = "lead_id,type,ts,event_id\nG1,demo_request,2026-11-20T10:00:00Z,g1\n"
    code, out = invoke("import", "events", "-", stdin=more.encode())  # told: a comma
    assert code == 0 and "1 row read: 1 event stored" in out, out
    code, out = invoke("import", "events", "-", stdin=gzip.compress(more.encode()))
    assert code == 0 and "1 row read: 0 events stored, 1 already there" in out, out
    semicolons = "lead_id;type;ts;event_id\nG1;page_view;2026-11-22T10:00:00Z;g5\n"
    code, out = invoke("import", "events", "-", stdin=semicolons.encode())  # told: a ;
    assert code == 0 and "1 row read: 1 event stored" in out, out
    jsonl = b'{"lead_id": "G2", "type": "page_view", "ts": "2026-11-21", "event_id": "g2"}\n'
    code, out = invoke("import", "events", "-", "--format", "jsonl", stdin=jsonl)
    assert code == 0 and "1 event stored" in out, out
    (tmp_path / "dump.gz").write_bytes(gzip.compress(b"\n" + jsonl.replace(b"g2", b"g3")))
    code, out = invoke("import", "events", str(tmp_path / "dump.gz"))  # told: an object
    assert code == 0 and "1 event stored" in out, out
    (tmp_path / "bad.csv.gz").write_bytes(gzip.compress((more + "G1,,2026-11-21,g4\n").encode()))
    code, out = invoke("import", "events", str(tmp_path / "bad.csv.gz"))
    assert code == 1 and f"{tmp_path / 'bad.csv.gz'}: column 'type': 1 line has no " in out
    code, out = invoke("import", "events", "-", stdin=(more + "G1,,2026-11-21,g4\n").encode())
    assert code == 1 and "<stdin>: column 'type': 1 line has no event type: line 3" in out, out
    given = io.BytesIO(more.encode())
    with open_input("-", stdin=given) as piped:
        assert [batch.table.num_rows for batch in piped.batches()] == [1]
    assert not given.closed  # standard input is the process's, not the import's to close
    store = Store(open_database(db_url))
    try:
        with store.db.read() as conn:
            ids = conn.exec_driver_sql("SELECT message_id FROM events ORDER BY 1").scalars()
            assert list(ids) == ["e1", "e2", "e3", "g1", "g2", "g3", "g5"]
    finally:
        store.db.dispose()


def test_inputs_that_cannot_be_read_are_refused_before_the_store_is_made(
    tmp_path: Path,
) -> None:
    import gzip

    db = tmp_path / "s.db"

    def invoke(*args: str, stdin: bytes | None = None) -> tuple[int, str]:
        result = CliRunner().invoke(app, [*args, "--db", str(db)], input=stdin)
        return result.exit_code, result.stdout + result.stderr

    code, out = invoke("import", "leads", "-", stdin=b"lead_id\nL1\n")  # one column: no comma
    assert code == 1, out
    assert "<stdin>: cannot tell its format from its first line ('lead_id')" in out
    assert "Give it with --format csv or --format jsonl." in out
    assert invoke("import", "leads", "-", stdin=b"")[1].endswith("<stdin>: is empty\n")
    code, out = invoke("import", "leads", "-", "--format", "xml", stdin=b"")
    assert code == 2 and "--format is csv, jsonl, parquet, not 'xml'" in out
    (tmp_path / "l.parquet.gz").write_bytes(gzip.compress(b"PAR1"))
    code, out = invoke("import", "leads", str(tmp_path / "l.parquet.gz"))
    assert code == 1 and "Parquet compresses its own columns: give the .parquet file" in out
    (tmp_path / "l.txt.gz").write_bytes(gzip.compress(b"lead_id\nL1\n"))
    code, out = invoke("import", "leads", str(tmp_path / "l.txt.gz"))
    assert code == 1 and "unknown file format '.txt' inside .gz (use .csv.gz, " in out
    (tmp_path / "l.csv.gz").write_text("lead_id\nL1\n")
    code, out = invoke("import", "leads", str(tmp_path / "l.csv.gz"))
    assert code == 1 and "l.csv.gz: is not gzip-compressed (its name ends in .gz)" in out
    assert not db.exists()
    # cut short: found as it is read, the store made by then
    (tmp_path / "cut.csv.gz").write_bytes(gzip.compress(b"lead_id\nL1\n" * 100)[:40])
    code, out = invoke("import", "leads", str(tmp_path / "cut.csv.gz"))
    assert code == 1 and "cut.csv.gz: cannot read as gzip: Compressed file ended before" in out


def test_without_a_terminal_progress_is_a_line_every_so_often(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a log (cron, CI) a bar was drawn once, at the end: progress is now a line every
    EVERY seconds (here every call) and when a step ends; from standard input, whose size
    is not known, without a total until every row is read."""
    from leadscore.cli import progress
    from leadscore.store import bulk

    monkeypatch.setattr(bulk, "CHUNK", 2)
    monkeypatch.setattr(progress, "EVERY", 0.0)
    db = str(tmp_path / "s.db")
    (tmp_path / "events.csv").write_text(EVENTS)
    code, out = run("import", "events", str(tmp_path / "events.csv"), "--db", db)
    assert code == 0, out
    steps = ("storing events", "reading leads and events", "scoring", "writing scores")
    lines = [line.split(", ")[0] for line in out.splitlines() if line.split(":")[0] in steps]
    assert lines == [  # (each but the first with its rate once a second has gone by)
        "storing events: 2/3 (67%)",
        "storing events: 3/3 (100%)",
        "reading leads and events: 0/2 (0%)",
        "reading leads and events: 2/2 (100%)",
        "scoring: 0/2 (0%)",
        "scoring: 2/2 (100%)",
        "writing scores: 2/2 (100%)",
    ]
    assert "━" not in out
    monkeypatch.setattr(progress, "EVERY", 10.0)  # only the ends of the steps within 10 s
    code, out = run("import", "events", "-", "--db", db, "--skip-bad-rows", input=EVENTS)
    assert code == 0, out
    assert [line for line in out.splitlines() if line.startswith("storing")] == [
        "storing events: 3/3 (100%)"
    ]


def test_progress_lines_come_every_so_often_and_a_terminal_keeps_its_bar() -> None:
    from rich.console import Console

    from leadscore.cli.progress import Bar

    log = Console(file=io.StringIO(), force_terminal=False, width=200)
    now = [100.0]
    with Bar(log, clock=lambda: now[0]) as bar:
        for seconds, done, total in ((0, 1000, -1), (5, 2000, -1), (12, 3000, 9000)):
            now[0] = 100.0 + seconds
            bar("storing events", done, total)
        now[0] = 112.5
        bar("storing events", 9000, 9000)
        bar("storing events", 9000, 9000)  # (the end of a step is said once)
    assert log.file.getvalue().splitlines() == [  # type: ignore[attr-defined]
        "storing events: 3,000/9,000 (33%), 250/s, about 0:00:24 left",
        "storing events: 9,000/9,000 (100%), 720/s",
    ]
    terminal = Console(file=io.StringIO(), force_terminal=True, width=120)
    with Bar(terminal) as bar:
        bar("storing events", 3000, -1)
        bar("storing events", 9000, 9000)
    drawn = terminal.file.getvalue()  # type: ignore[attr-defined]
    assert "━" in drawn and "9,000/9,000" in drawn and "storing events:" not in drawn


def test_a_rescore_after_a_stopped_import_says_its_changes_came_from_the_events(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An import stopped part way leaves events stored and their leads not rescored; the
    `leadscore rescore` that follows recorded their changes as `decay`. Changes of leads with
    events their score does not count yet are `event` (a lead the stopped import created,
    whose first score it is, too), a lead the stopped import of leads made gets its first
    score as `profile`, and a lead that only aged is `decay`."""
    from leadscore.cli.service import Bar
    from leadscore.store import bulk

    now = commands_at(monkeypatch, "2026-11-22T12:00:00Z")
    shown = Bar.__call__

    def interrupted(self: Bar, what: str, done: int, total: int) -> None:
        shown(self, what, done, total)
        if what.startswith("storing") and done >= 2:
            raise KeyboardInterrupt

    (tmp_path / "leads.csv").write_text(LEADS)
    assert run("import", "leads", str(tmp_path / "leads.csv"), "--db", db_url)[0] == 0
    (tmp_path / "l2.csv").write_text("lead_id,type,ts,url\nL2,page_view,2026-11-20,/pricing\n")
    assert run("import", "events", str(tmp_path / "l2.csv"), "--db", db_url)[0] == 0
    now[0] = parse_instant("2026-12-20T12:00:00Z")  # L2's pricing page: half its points
    (tmp_path / "stopped.csv").write_text(
        "lead_id,type,ts,event_id\n"
        "L1,demo_request,2026-12-19,a\n"
        "L9,demo_request,2026-12-19,b\n"  # (a new lead)
        "L1,webinar_attended,2026-12-19,c\n"  # (not stored)
    )
    (tmp_path / "new.csv").write_text("lead_id,job_title\nN1,VP Sales\nN2,CEO\nN3,CTO\n")
    with monkeypatch.context() as m:
        m.setattr(bulk, "CHUNK", 2)
        m.setattr(Bar, "__call__", interrupted)
        code, out = run("import", "events", str(tmp_path / "stopped.csv"), "--db", db_url)
        assert code == 130 and "the first 2 of 3 rows are stored" in out, out
        code, out = run("import", "leads", str(tmp_path / "new.csv"), "--db", db_url)
        assert code == 130 and "the first 2 of 3 rows are stored" in out, out
    code, out = run("rescore", "--db", db_url)
    assert code == 0, out
    store = Store(open_database(db_url))
    try:
        with store.db.read() as conn:
            reasons = {
                lead: [h["reason"] for h in score_history_of(conn, lead)]
                for lead in ("L1", "L2", "L9", "N1", "N2")
            }
    finally:
        store.db.dispose()
    assert reasons == {
        "L1": ["event", "profile"],
        "L2": ["decay", "event", "profile"],
        "L9": ["event"],
        "N1": ["profile"],
        "N2": ["profile"],
    }
    # every lead has a score now: the events stored since the oldest score are looked at
    now[0] = parse_instant("2026-12-21T12:00:00Z")
    (tmp_path / "again.csv").write_text(
        "lead_id,type,ts,event_id\nL2,demo_request,2026-12-21,d\nL2,trial_signup,2026-12-21,e\n"
        "L2,webinar_attended,2026-12-21,f\n"
    )
    with monkeypatch.context() as m:
        m.setattr(bulk, "CHUNK", 2)
        m.setattr(Bar, "__call__", interrupted)
        code, out = run("import", "events", str(tmp_path / "again.csv"), "--db", db_url)
        assert code == 130, out
    assert run("rescore", "--db", db_url)[0] == 0
    store = Store(open_database(db_url))
    try:
        with store.db.read() as conn:
            reasons = {h["reason"] for h in score_history_of(conn, "L2")[:1]}
    finally:
        store.db.dispose()
    assert reasons == {"event"}
