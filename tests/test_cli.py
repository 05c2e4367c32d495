"""The command line as a user runs it: exit codes, messages, outputs."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from leadscore.cli import app
from tests.conftest import MODELS

runner = CliRunner()
AS_OF = "2026-06-30T12:00:00Z"


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_version() -> None:
    import leadscore

    code, out, _ = run("--version")
    assert (code, out.strip()) == (0, f"leadscore {leadscore.__version__}")


def test_validate_ok_and_invalid(tmp_path: Path) -> None:
    code, out, _ = run("validate", str(MODELS / "b2b-default.yaml"))
    assert code == 0 and "ok:" in out and "sheet b2b-default" in out
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nname: x\nactivity:\n  - {id: a, event: e, points: 1, hl: 3}\n")
    code, _, err = run("validate", str(bad))
    assert code == 1
    assert f"{bad}:4: activity[0].hl: unknown key 'hl'" in err


def test_score_writes_every_format(conformance: Path, tmp_path: Path) -> None:
    args = [
        "score",
        str(conformance / "model.yaml"),
        "--leads",
        str(conformance / "leads.csv"),
        "--events",
        str(conformance / "events.csv"),
        "--as-of",
        AS_OF,
    ]
    code, _, err = run(*args, "--output", str(tmp_path / "out.csv"))
    assert code == 0, err
    assert "28 value(s) are not numbers" in err
    rows = list(csv.DictReader((tmp_path / "out.csv").open()))
    assert len(rows) == 300
    assert list(rows[0])[:8] == [
        "lead_id",
        "score",
        "fit",
        "engagement",
        "grade",
        "band",
        "mql",
        "priority",
    ]
    assert {"group:fit", "rule:webinar"} <= set(rows[0])
    code, _, _ = run(*args, "--output", str(tmp_path / "out.json"))
    data = json.loads((tmp_path / "out.json").read_text())
    assert code == 0 and len(data) == 300 and data[0]["lead_id"] == "L00000"
    code, _, _ = run(*args, "--output", str(tmp_path / "out.parquet"))
    import pyarrow.parquet as pq

    assert code == 0 and pq.read_table(tmp_path / "out.parquet").num_rows == 300
    # a name whose format cannot be told is refused before any work, rather than given CSV
    code, _, err = run(*args, "--output", str(tmp_path / "out.xlsx"))
    assert code == 2 and "--output out.xlsx: the format cannot be told from .xlsx" in err
    assert not (tmp_path / "out.xlsx").exists()
    code, _, err = run(*args, "--output", str(tmp_path / "out.xlsx"), "--format", "csv")
    assert code == 0 and (tmp_path / "out.xlsx").read_text().startswith("lead_id,")


def test_score_table_and_sheets(conformance: Path, tmp_path: Path) -> None:
    sheets = tmp_path / "sheets"
    sheets.mkdir()
    (sheets / "a.yaml").write_text((conformance / "model.yaml").read_text())
    (sheets / "b.yaml").write_text(
        (conformance / "model.yaml").read_text().replace("name: b2b-default", "name: other")
    )
    args = [
        "score",
        str(sheets),
        "--leads",
        str(conformance / "leads.csv"),
        "--events",
        str(conformance / "events.csv"),
        "--as-of",
        AS_OF,
    ]
    code, out, _ = run(*args, "--format", "csv")
    header = out.splitlines()[0].split(",")
    assert code == 0
    assert header[:3] == ["lead_id", "b2b-default.score", "b2b-default.fit"]
    assert "other.rule:webinar" in header
    code, out, _ = run(*args, "--top", "3")
    assert code == 0 and "Top leads - sheet other" in out and "300 leads; bands:" in out
    # the bands in the model's order, highest first, whatever their counts
    assert re.search(r"300 leads; bands: hot: [\d,]+, warm: [\d,]+, cold: [\d,]+; MQLs", out)


def test_explain_text_and_json(conformance: Path) -> None:
    args = [
        "explain",
        str(conformance / "model.yaml"),
        "L00179",
        "--leads",
        str(conformance / "leads.csv"),
        "--events",
        str(conformance / "events.csv"),
        "--as-of",
        AS_OF,
    ]
    code, out, _ = run(*args)
    assert code == 0
    assert "Score 63.77 = fit 45.00 + engagement 18.77" in out
    assert "#2 2026-06-16 12:00 page_view: 15.00 x 1.0000 x decay 0.7236" in out
    code, out, _ = run(*args, "--json")
    data = json.loads(out)
    assert code == 0 and data["priority"] == "B1" and len(data["rules"]) == 11
    code, _, err = run(*args[:2], "NOPE", *args[3:])
    assert code == 2 and "lead 'NOPE' is not in the leads input" in err


def test_bad_input_is_a_message_not_a_traceback(tmp_path: Path) -> None:
    leads = tmp_path / "leads.csv"
    leads.write_text("id,x\n1,2\n")
    code, _, err = run("score", str(MODELS / "b2b-default.yaml"), "--leads", str(leads))
    assert code == 1
    assert "Error: the input cannot be used:" in err and "no lead id column" in err
    assert "Traceback" not in err
    code, _, err = run(
        "score",
        str(MODELS / "b2b-default.yaml"),
        "--leads",
        str(leads),
        "--lead-id-column",
        "id",
        "--as-of",
        "tomorrow",
    )
    assert code == 2 and "--as-of: not a time: 'tomorrow'" in err
    # a year alone would be read as seconds after 1970: refused, as by the commands of outcomes
    scored = ("score", str(MODELS / "b2b-default.yaml"), "--leads", str(leads))
    code, _, err = run(*scored, "--lead-id-column", "id", "--as-of", "2026")
    assert code == 2 and "--as-of: '2026' is not a time" in err
    assert "such as 2026-01-01 or 2026-01-01T12:00:00Z" in err
    outcomes = tmp_path / "outcomes.csv"
    outcomes.write_text("id,outcome,ts\n1,won,2026-01-05\n")
    code, _, err = run(
        "report",
        *scored[1:],
        "--lead-id-column",
        "id",
        "--outcomes",
        str(outcomes),
        "--as-of",
        "26",
    )
    assert code == 2 and "--as-of: '26' is not a time" in err and "2026-06-30" in err
    code, _, err = run(*scored, "--lead-id-column", "id", "--as-of", "20260630")
    assert code == 2 and "such as 2026-06-30 or 2026-06-30T12:00:00Z" in err
    code, _, err = run(*scored, "--lead-id-column", "id", "--as-of", "1767225600")
    assert code == 0, err  # epoch seconds: 2026-01-01


def test_test_schema_and_init(tmp_path: Path) -> None:
    code, out, _ = run("test", str(MODELS))
    assert code == 0 and "passed, 0 failed" in out
    failing = tmp_path / "m.yaml"
    failing.write_text(
        "version: 1\nname: m\nprofile: [{id: a, if: {field: t, eq: x}, points: 5}]\n"
        "examples:\n  - {name: wrong, as_of: 2026-01-01T00:00:00Z, lead: {t: x}, "
        "expect: {score: 6}}\n"
    )
    code, out, _ = run("test", str(failing))
    assert code == 1 and "FAIL m: wrong" in out and "score: expected 6, got 5" in out
    code, out, _ = run("schema")
    assert code == 0 and json.loads(out)["title"] == "leadscore model, version 1"
    code, out, _ = run("init", str(tmp_path / "starter"), "--leads", "50")
    assert code == 0
    code, out, _ = run(
        "score",
        str(tmp_path / "starter" / "model.yaml"),
        "--leads",
        str(tmp_path / "starter" / "leads.csv"),
        "--events",
        str(tmp_path / "starter" / "events.csv"),
        "--as-of",
        AS_OF,
    )
    assert code == 0 and "50 leads; bands:" in out
    starter = tmp_path / "starter"
    code, out, err = run(
        "report",
        *(str(starter / "model.yaml"), "--leads", str(starter / "leads.csv")),
        *("--events", str(starter / "events.csv"), "--outcomes", str(starter / "outcomes.csv")),
        *("--as-of", AS_OF),
    )
    assert code == 0 and "Validation of b2b-default" in out, err
    code, _, err = run("init", str(tmp_path / "starter"))
    assert code == 2 and "use --force" in err


@pytest.mark.slow
def test_demo_runs_as_installed_script() -> None:
    exe = Path(sys.executable).with_name("leadscore")
    proc = subprocess.run(
        [str(exe), "demo", "--leads", "2000", "--events", "40000"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Top leads - default B2B model" in proc.stdout
    assert "How the top lead earned its score:" in proc.stdout


def test_help_lists_every_command() -> None:
    code, out, _ = run("--help")
    assert code == 0
    for command in ("validate", "score", "explain", "test", "schema", "init", "demo"):
        assert command in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["score", str(MODELS), "--leads", "x.csv", "--format", "parquet"], "needs --output"),
        (["score", str(MODELS), "--leads", "x.csv", "--top", "0"], "Invalid value for '--top'"),
        (["demo", "--leads", "0"], "Invalid value for '--leads'"),
    ],
)
def test_wrong_calls_exit_2_before_any_work(args: list[str], message: str) -> None:
    code, _, err = run(*args)
    assert code == 2 and message in err


def test_init_onto_a_file(tmp_path: Path) -> None:
    target = tmp_path / "leads.csv"
    target.write_text("x")
    code, _, err = run("init", str(target))
    assert code == 2 and "exists and is not a directory" in err


def test_no_help_text_holds_brackets() -> None:
    """Help is drawn with rich, whose markup takes `[default: 2]` for a tag and drops it."""
    from typer.main import get_command

    found: list[str] = []

    def walk(command: Any, path: str) -> None:
        for param in getattr(command, "params", []):
            if "[" in (getattr(param, "help", None) or ""):
                found.append(f"{path} {param.name}")
        if "[" in (command.help or ""):
            found.append(path)
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, f"{path} {name}")

    walk(get_command(app), "leadscore")
    assert found == []


def test_what_ctrl_c_breaks_on_its_way_out_is_an_interruption(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Ctrl-C during a publish or rescore can surface as the error it caused (a connection
    closed under a statement, DuckDB's interrupted query): "interrupted", exit 130, no
    traceback."""
    import typer

    from leadscore.cli import _edge

    def closed() -> None:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise RuntimeError("This Connection is closed") from None

    def duckdb() -> None:
        raise RuntimeError("INTERRUPT Error: Query interrupted")

    for broken in (closed, duckdb):
        with pytest.raises(typer.Exit) as e:
            _edge(broken)()
        assert e.value.exit_code == 130
        assert capsys.readouterr().err.strip() == "interrupted"
    with pytest.raises(RuntimeError):  # any other error is not hidden
        _edge(lambda: (_ for _ in ()).throw(RuntimeError("a bug")))()
