from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
CONFORMANCE = SHARED / "conformance"
MODELS = ROOT / "src" / "leadscore" / "models"


@pytest.fixture(scope="session")
def conformance() -> Path:
    if not (CONFORMANCE / "expected.csv").exists():
        pytest.skip(f"conformance vectors not found at {CONFORMANCE}")
    return CONFORMANCE
