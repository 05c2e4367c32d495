"""docs/api.md runs as written: every ``sh`` block in order against a real server, and each
``json`` block right after a single-request ``sh`` block is that request's answer."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from leadscore.service import Settings, create_app
from leadscore.store import Store, open_database
from leadscore.store.keys import create_key
from tests.conftest import ROOT, Clock, RunningServer, skip_or_fail

DOC = ROOT / "docs" / "api.md"


def blocks() -> list[tuple[str, str]]:
    return [(m[0], m[1]) for m in _blocks()]


def _blocks() -> list[tuple[str, str, str]]:
    """(language, text, the text between this block and the previous one)."""
    found = []
    last = 0
    doc = DOC.read_text()
    for m in re.finditer(r"```(\w+)\n(.*?)```", doc, re.S):
        found.append((m.group(1), m.group(2), doc[last : m.start()]))
        last = m.end()
    return found


def test_api_examples_run_as_written(tmp_path: Path) -> None:
    if shutil.which("curl") is None:
        skip_or_fail("curl is not installed")
    clock = Clock("2026-11-23T12:00:00Z")
    store = Store(open_database(f"sqlite:///{tmp_path / 'doc.db'}"), clock=clock)
    with store.db.write() as conn:
        _, key = create_key(conn, "docs", ["admin"], clock())
    app = create_app(Settings(rescore_interval=0, deliver_interval=0), store=store)
    ran = 0
    with RunningServer(app) as server:
        env = {**os.environ, "LEADSCORE_URL": server.url, "LEADSCORE_KEY": key}
        found = _blocks()
        for i, (lang, text, _) in enumerate(found):
            if lang != "sh" or text.lstrip().startswith("export "):
                continue
            done = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", text],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert done.returncode == 0, f"block {i} failed:\n{text}\n{done.stdout}{done.stderr}"
            ran += 1
            nxt = found[i + 1] if i + 1 < len(found) else None
            if nxt and nxt[0] == "json" and not nxt[2].strip() and text.count("curl ") == 1:
                assert json.loads(done.stdout) == json.loads(nxt[1]), text
    store.db.dispose()
    assert ran >= 10


@pytest.mark.parametrize("lang,text", [b for b in blocks() if b[0] == "json"])
def test_json_examples_are_json(lang: str, text: str) -> None:
    json.loads(text)
