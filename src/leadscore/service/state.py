"""The service's settings and the state its requests share (the store, the key cache)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from leadscore.store import Store
from leadscore.store.eventcache import DEFAULT_CACHED_EVENTS

if TYPE_CHECKING:
    from leadscore.service.auth import KeyCache
    from leadscore.service.rescoring import Rescorer
    from leadscore.service.writer import IngestWriter, ProcessWriter, ProcessWriterPool

__all__ = ["ENV_SETTINGS", "ServiceState", "Settings"]

ENV_SETTINGS = "LEADSCORE_SERVICE_SETTINGS"  # how `leadscore serve` hands settings to workers


@dataclass
class Settings:
    """How the service runs. Limits protect it from oversized requests."""

    db: str | None = None  # a database URL or a SQLite path (default: ./leadscore.db)
    no_auth: bool = False  # local mode: every request acts as admin (127.0.0.1 only)
    models: list[str] = field(default_factory=list)  # model files published at start
    triggers: str | None = None  # a triggers file loaded at start
    rescore_interval: float = 3600.0  # seconds between scheduled rescorings; 0: never
    deliver_interval: float = 1.0  # seconds between outbox delivery passes; 0: never
    retry_first_delay: float = 10.0  # seconds before a failed webhook's first retry (doubling)
    webhook_timeout: float = 10.0  # seconds a receiver has to answer
    # commits wait for the disk (else, --fast-commits: SQLite synchronous NORMAL, PostgreSQL
    # synchronous_commit off: safe from a killed process, not from a power cut)
    durable: bool = True
    cached_events: int = DEFAULT_CACHED_EVENTS  # decoded events kept for rescoring; 0: none
    # store and rescore ingested events in a process of their own (a file or server store,
    # opened by the service itself); else in a thread of the server process
    ingest_process: bool = True
    # how many ingest processes write at once (0: two on PostgreSQL, one on SQLite, its only
    # value as it takes one writer at a time); see leadscore.service.writer.ProcessWriterPool
    ingest_processes: int = 0
    # SQLite, with the ingest process: rescoring after ingest in a scoring process beside it
    scoring_process: bool = True
    # once started, keep the objects made so far out of the garbage collector's full passes
    # (leadscore serve: the process is the server's alone; leadscore.service.survivors)
    freeze_at_start: bool = False
    max_body_bytes: int = 1_000_000
    max_upload_bytes: int = 50_000_000  # a file posted whole (outcomes as CSV)
    max_batch: int = 1000
    max_properties_bytes: int = 32_000

    def to_env(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls) -> Settings:
        text = os.environ.get(ENV_SETTINGS)
        return cls(**json.loads(text)) if text else cls()


@dataclass
class ServiceState:
    settings: Settings
    store: Store
    keys: KeyCache
    writer: IngestWriter | ProcessWriter | ProcessWriterPool
    rescorer: Rescorer  # whole-store rescorings (in a child process for a store it opened)
