"""The scoring service (FastAPI): ingest, scores, history, models, triggers.

Run it with ``leadscore serve``; build it in code with :func:`create_app`.
"""

from __future__ import annotations

from leadscore.service.app import create_app
from leadscore.service.state import Settings

__all__ = ["Settings", "create_app"]
