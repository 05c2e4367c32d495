"""The import rule of ARCHITECTURE.md and the curated public API."""

from __future__ import annotations

import ast
from pathlib import Path

import leadscore

SRC = Path(leadscore.__file__).resolve().parent

# module (or package) -> leadscore modules it must never import
FORBIDDEN = {
    "spec": ("engine", "scoring", "inputs", "cli", "sample", "examples", "store", "service", "ui"),
    "engine": ("scoring", "inputs", "cli", "sample", "store", "service", "ui"),
    "inputs": ("scoring", "cli", "store", "service", "ui"),
    "scoring": ("cli", "service", "ui"),
    "examples": ("scoring", "inputs", "cli", "service", "ui"),
    "store": ("cli", "service", "ui"),
    "service": ("cli", "ui"),
    "ui": ("cli",),
    "charts": ("spec", "engine", "scoring", "inputs", "cli", "store", "service", "ui"),
    "validation": ("cli", "sample", "store", "service", "ui", "predictive"),
    "predictive": ("cli", "sample", "store", "service", "ui"),
}
WEB_OR_ML = ("fastapi", "starlette", "sklearn", "uvicorn")


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_import_rule() -> None:
    problems = []
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC).with_suffix("")
        top = rel.parts[0]
        for name in imports_of(path):
            parts = name.split(".")
            if parts[0] == "leadscore" and len(parts) > 1:
                if parts[1] in FORBIDDEN.get(top, ()):
                    problems.append(f"{rel} imports {name}")
                if parts[1] == "cli" and top != "cli":
                    problems.append(f"{rel} imports the CLI")
            if (
                parts[0] == "leadscore"
                and parts[1:2] == ["service"]
                and top not in ("service", "ui", "cli")
            ):
                problems.append(f"{rel} imports the service (only the UI and CLI build on it)")
            if parts[0] == "leadscore" and parts[1:2] == ["ui"] and top not in ("ui", "cli"):
                problems.append(f"{rel} imports the web interface (only the CLI may start it)")
            if parts[0] in WEB_OR_ML and top in (
                "spec",
                "engine",
                "inputs",
                "scoring",
                "store",
                "validation",
                "charts",
            ):
                problems.append(f"{rel} imports {name}")
    assert problems == []


def test_public_api_is_curated() -> None:
    assert sorted(leadscore.__all__) == leadscore.__all__ or set(leadscore.__all__)
    for name in leadscore.__all__:
        assert hasattr(leadscore, name), name
    public = {n for n in dir(leadscore) if not n.startswith("_")}
    modules = {
        "cli",
        "engine",
        "errors",
        "examples",
        "inputs",
        "scoring",
        "spec",
        "sample",
        "store",
        "service",
        "ui",
        "charts",
        "validation",
        "predictive",
    }
    assert public - modules == set(leadscore.__all__) - {"__version__"}


def test_cli_constants_match_the_store() -> None:
    """The CLI repeats two store constants so that it starts without importing the store."""
    from leadscore.cli import service as cli_service
    from leadscore.store import DEFAULT_DB
    from leadscore.store.keys import SCOPES

    assert (cli_service.DEFAULT_DB, cli_service.SCOPES) == (DEFAULT_DB, SCOPES)
