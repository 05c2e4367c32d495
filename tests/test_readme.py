"""The README's commands and code run as written (executable docs)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from leadscore.cli import app
from tests.conftest import ROOT

README = (ROOT / "README.md").read_text()


def test_readme_opens_with_the_two_setup_commands() -> None:
    first_block = re.search(r"```sh\n(.*?)```", README, re.S)
    assert first_block is not None
    commands = [line.split("#")[0].strip() for line in first_block.group(1).splitlines()]
    assert commands == ["make demo", "make test"]


def test_library_snippet_runs_in_an_init_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    result = CliRunner().invoke(app, ["init", str(tmp_path), "--leads", "40"])
    assert result.exit_code == 0, result.stderr
    snippet = re.search(r"## As a library.*?```python\n(.*?)```", README, re.S)
    assert snippet is not None
    monkeypatch.chdir(tmp_path)
    scope: dict[str, object] = {}
    exec(compile(snippet.group(1), "README.md", "exec"), scope)
    out = capsys.readouterr().out
    assert "Score " in out and "Grade " in out
    table = scope["table"]
    assert table.num_rows == 40  # type: ignore[attr-defined]
    assert os.path.exists(tmp_path / "model.yaml")


def test_cli_commands_in_the_readme_exist() -> None:
    documented = README.split("## Not there yet")[0]  # what is not built is named after it
    names = set(re.findall(r"`leadscore ([\w-]+)", documented))
    assert names >= {"validate", "score", "explain", "test", "schema", "init", "demo"}
    for name in names:
        assert CliRunner().invoke(app, [name, "--help"]).exit_code == 0, name
