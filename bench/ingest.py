"""Benchmark: the scoring service's ingest API under load on loopback, SQLite and PostgreSQL.

    .venv/bin/python bench/ingest.py --quick --write-docs    # 10,000 leads / 200,000 events
    .venv/bin/python bench/ingest.py --write-docs            # 50,000 leads / 1,000,000 events

For each store, a store is prepared with synthetic leads and their event history
(:func:`leadscore.sample.write_sample`, as of now; not timed), ``leadscore serve --no-auth`` is
started as a subprocess on a free port with the default model (b2b-default), and a load
generator in this process drives it over HTTP/1.1 keep-alive connections on 127.0.0.1:

- baselines: ``GET`` of an unknown path (404, no database) and ``GET /api/v1/health``;
- single-event ``POST /api/v1/events`` at a fixed concurrency -> requests/s, latency;
- batched ``POST /api/v1/events`` (100 and 500 events per request over random existing
  leads) -> events/s;
- "POST to new score readable": POST one event (its ``ts`` the send time), then
  ``GET /api/v1/leads/{id}?explain=false`` until the lead's score has ``as_of >= ts``; alone
  (idle server) and as one extra connection during the single-event load;
- single-event POSTs again while one more connection POSTs ``/api/v1/rescore`` back to back
  (every lead rescored, in a child process of the server).

Runs: SQLite and PostgreSQL, each with ``--fast-commits`` and in the default (durable) mode. Each
run checks that the events stored equal the events acknowledged. The CPU used by this client,
the server, the PostgreSQL backends and everything else on the machine is reported per step.
``--profile DIR`` adds py-spy profiles of the server (after the timed steps; py-spy must be
installed: ``.venv/bin/pip install py-spy``). ``--write-docs`` refreshes this benchmark's
section of ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import platform
import random
import re
import resource
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version as dist_version
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import sqlalchemy as sa
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

import leadscore
from leadscore.inputs import normalize_events, normalize_leads
from leadscore.sample import write_sample
from leadscore.store import database_url, open_store
from leadscore.store.schema import events as events_table
from leadscore.store.schema import leads as leads_table
from record import load_average, machine, write_section  # bench/ is the script's directory

ROOT = Path(__file__).resolve().parents[1]
DOCS_PATH = ROOT / "docs" / "benchmarks.md"
LEADSCORE = Path(sys.executable).parent / "leadscore"
PY_SPY = Path(sys.executable).parent / "py-spy"

FULL_SIZE = (50_000, 1_000_000)
QUICK_SIZE = (10_000, 200_000)
FULL_SECONDS = 15.0  # timed seconds per load step
QUICK_SECONDS = 5.0
RAMP_SECONDS = 1.0  # untimed seconds at the start of each step
SINGLE_TARGET = 1_000  # requests/s, single-event
BATCH_TARGET = 10_000  # events/s, batch endpoint
P99_TARGET_MS = 50.0  # POST to new score readable
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
PG_DB = "leadscore_bench"
HOST = "127.0.0.1"
LOAD_CHUNK = 20_000
EVENT_COLUMNS = (
    "lead_id",
    "anonymous_id",
    "type",
    "ts_us",
    "item",
    "properties",
    "message_id",
    "received_us",
)
RUNS = {  # key: (label, store, --fast-commits)
    "sqlite-fast": ("SQLite, --fast-commits", "sqlite", True),
    "sqlite": ("SQLite, durable (default)", "sqlite", False),
    "postgres-fast": ("PostgreSQL, --fast-commits", "postgres", True),
    "postgres": ("PostgreSQL, durable (default)", "postgres", False),
}
COLUMNS = (
    "Run",
    "Step",
    "Conc.",
    "Timed",
    "Req/s",
    "Events/s",
    "p50 ms",
    "p95 ms",
    "p99 ms",
    "Errors",
    "CPU cl/srv/db/other",
    "Target",
)

console = Console(stderr=True)
TICK = os.sysconf("SC_CLK_TCK")


# --- CPU accounting -----------------------------------------------------------------------------


def _proc_cpu(pid: int, reaped: bool = False) -> float:
    """CPU seconds (user + system) a process has used, 0 if it is gone; with ``reaped``, those
    of its children that ended and were waited for too."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    own = int(fields[11]) + int(fields[12])
    if reaped:
        own += int(fields[13]) + int(fields[14])
    return own / TICK


def _tree_cpu(pid: int) -> float:
    """CPU seconds of a process and its descendants (the server, its ingest and scoring
    processes, and the children it starts for rescorings, also once they ended)."""
    parent: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parent[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])

    def under(p: int) -> bool:
        while p > 1:
            if p == pid:
                return True
            p = parent.get(p, 0)
        return False

    return sum(_proc_cpu(p, reaped=True) for p in parent if under(p))


def _db_backends(dbname: str | None) -> dict[int, float]:
    """CPU seconds of the PostgreSQL backends serving ``dbname`` (found by process title)."""
    if dbname is None:
        return {}
    needle = f" {dbname} ".encode()
    found: dict[int, float] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            title = Path(entry.path, "cmdline").read_bytes()
        except OSError:
            continue
        if title.startswith(b"postgres: ") and needle in title:
            found[int(entry.name)] = _proc_cpu(int(entry.name))
    return found


def _machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot."""
    parts = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (parts + [0] * 8)[:8]
    busy = user + nice + system + irq + softirq + steal
    return busy / TICK, (busy + idle + iowait) / TICK


@dataclass
class CpuSnap:
    at: float
    client: float
    server: float
    db: dict[int, float]
    busy: float

    @classmethod
    def take(cls, server_pid: int, dbname: str | None) -> CpuSnap:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return cls(
            time.perf_counter(),
            usage.ru_utime + usage.ru_stime,
            _tree_cpu(server_pid),
            _db_backends(dbname),
            _machine_busy()[0],
        )


@dataclass
class CpuShare:
    """Cores used on average over a step (2.0 = both cores of a 2-core machine)."""

    client: float
    server: float
    db: float
    other: float

    @classmethod
    def between(cls, a: CpuSnap, b: CpuSnap) -> CpuShare:
        wall = max(b.at - a.at, 1e-9)
        client = (b.client - a.client) / wall
        server = (b.server - a.server) / wall
        db = sum(v - a.db.get(pid, 0.0) for pid, v in b.db.items()) / wall
        busy = (b.busy - a.busy) / wall
        return cls(client, server, db, max(0.0, busy - client - server - db))

    def text(self) -> str:
        return f"{self.client:.2f}/{self.server:.2f}/{self.db:.2f}/{self.other:.2f}"


# --- a small HTTP/1.1 client --------------------------------------------------------------------


class HttpError(Exception):
    pass


class Http:
    """One keep-alive HTTP/1.1 connection on asyncio streams.

    A minimal client on purpose: the server and this client share two cores, and httpx costs
    several times more CPU per request than this (every response is still checked: status,
    framing, and the JSON of every POST).
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.host_header = f"Host: {HOST}:{port}\r\n".encode()

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(HOST, self.port)
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()
        self.reader = self.writer = None

    async def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        try:
            return await self._request(method, path, body)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as e:
            await self.close()
            raise HttpError(f"{method} {path}: {type(e).__name__}: {e}") from None

    async def _request(self, method: str, path: str, body: bytes | None) -> tuple[int, bytes]:
        if self.writer is None:
            await self.connect()
        assert self.reader is not None and self.writer is not None
        head = f"{method} {path} HTTP/1.1\r\n".encode() + self.host_header
        if body is not None:
            head += (
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            )
            self.writer.write(head + body)
        else:
            self.writer.write(head + b"\r\n")
        await self.writer.drain()
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        length: int | None = None
        chunked = close = False
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "transfer-encoding":
                chunked = "chunked" in value.lower()
            elif name == "connection":
                close = value.strip().lower() == "close"
        if chunked:
            data = bytearray()
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                data += await self.reader.readexactly(size + 2)
                if size == 0:
                    break
                del data[-2:]
            content = bytes(data[:-2]) if data.endswith(b"\r\n") else bytes(data)
        elif length is not None:
            content = await self.reader.readexactly(length)
        else:
            content, close = await self.reader.read(), True
        if close:
            await self.close()
        return status, content


# --- load ---------------------------------------------------------------------------------------


def iso_now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


class EventMaker:
    """Events like the sample's (type, item, url drawn from its rows) for random existing leads,
    each with a unique ``event_id`` as real senders send."""

    def __init__(self, lead_ids: list[str], templates: list[dict[str, Any]], tag: str) -> None:
        self.lead_ids = lead_ids
        self.templates = templates
        self.tag = tag
        self.n = 0
        self.rng = random.Random(tag)

    def make(self, ts: str, lead_id: str | None = None) -> dict[str, Any]:
        self.n += 1
        event = dict(self.rng.choice(self.templates))
        event["lead_id"] = lead_id or self.rng.choice(self.lead_ids)
        event["ts"] = ts
        event["event_id"] = f"{self.tag}-{self.n}"
        return event

    def body(self, n: int) -> bytes:
        ts = iso_now()
        if n == 1:
            return json.dumps(self.make(ts)).encode()
        return json.dumps([self.make(ts) for _ in range(n)]).encode()


@dataclass
class StepResult:
    run: str
    key: str
    label: str
    concurrency: int
    seconds: float
    requests: int = 0
    events: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)  # seconds, of the timed requests
    cpu: CpuShare | None = None
    target: str = ""

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    @property
    def event_rate(self) -> float:
        return self.events / self.seconds

    def pct(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) * 1000 if self.latencies else float("nan")


@dataclass
class RunTotals:
    """Across every request of a run (timed or not): what the server acknowledged."""

    accepted: int = 0
    duplicates: int = 0
    probe_gets: Counter[int] = field(default_factory=Counter)  # GETs a probe needed -> probes
    rescorings: list[tuple[float, int]] = field(default_factory=list)  # (seconds, leads)
    errors: list[str] = field(default_factory=list)

    def error(self, text: str) -> None:
        if len(self.errors) < 20:
            self.errors.append(text)


Job = Callable[[Http], Awaitable[tuple[bool, int]]]  # -> (ok, events acknowledged)


class Driver:
    """Runs the steps of one run against one server."""

    def __init__(
        self,
        port: int,
        server_pid: int,
        dbname: str | None,
        maker: EventMaker,
        sheet: str,
        totals: RunTotals,
    ) -> None:
        self.port = port
        self.server_pid = server_pid
        self.dbname = dbname
        self.maker = maker
        self.sheet = sheet
        self.totals = totals

    # jobs: one request (or POST + GETs) each; (ok, events acknowledged)

    def get(self, path: str, expect: int) -> Job:
        async def job(http: Http) -> tuple[bool, int]:
            status, content = await http.request("GET", path)
            if status != expect:
                self.totals.error(f"GET {path}: {status} {content[:200]!r}")
                return False, 0
            return True, 0

        return job

    def post(self, n: int) -> Job:
        async def job(http: Http) -> tuple[bool, int]:
            return await self._post(http, self.maker.body(n), n)

        return job

    async def _post(self, http: Http, body: bytes, n: int) -> tuple[bool, int]:
        status, content = await http.request("POST", "/api/v1/events", body)
        if status != 200:
            self.totals.error(f"POST /api/v1/events: {status} {content[:200]!r}")
            return False, 0
        answer = json.loads(content)
        accepted = int(answer.get("accepted", 0))
        self.totals.accepted += accepted
        self.totals.duplicates += int(answer.get("duplicate", 0))
        if accepted != n or answer.get("errors"):
            self.totals.error(f"POST of {n} events: {accepted} accepted, {answer.get('errors')}")
            return False, accepted
        return True, accepted

    def rescore(self) -> Job:
        """``POST /api/v1/rescore``: every lead rescored (in a child process of the server)."""

        async def job(http: Http) -> tuple[bool, int]:
            start = time.perf_counter()
            status, content = await http.request("POST", "/api/v1/rescore", b"")
            if status != 200:
                self.totals.error(f"POST /api/v1/rescore: {status} {content[:200]!r}")
                return False, 0
            leads = int(json.loads(content)["leads"])
            self.totals.rescorings.append((time.perf_counter() - start, leads))
            return True, 0

        return job

    def probe(self) -> Job:
        """POST one event, then GET the lead until its score is as of the event or later."""

        async def job(http: Http) -> tuple[bool, int]:
            ts = iso_now()
            event = self.maker.make(ts)
            ok, n = await self._post(http, json.dumps(event).encode(), 1)
            if not ok:
                return False, n
            sent = datetime.fromisoformat(ts)
            path = f"/api/v1/leads/{event['lead_id']}?explain=false"
            deadline = time.perf_counter() + 5.0
            gets = 0
            while time.perf_counter() < deadline:
                gets += 1
                status, content = await http.request("GET", path)
                if status != 200:
                    self.totals.error(f"GET {path}: {status} {content[:200]!r}")
                    return False, n
                score = json.loads(content)["scores"].get(self.sheet)
                if score is not None and datetime.fromisoformat(score["as_of"]) >= sent:
                    self.totals.probe_gets[gets] += 1
                    return True, n
            self.totals.error(f"{path}: the score did not reflect the event within 5 s")
            return False, n

        return job

    async def step(
        self,
        result: StepResult,
        job: Job,
        *,
        ramp: float,
        side: tuple[StepResult, Job] | None = None,
    ) -> None:
        """``result.concurrency`` connections each run ``job`` back to back (closed loop) for
        ``ramp`` + ``result.seconds``; requests that finish in the timed part are counted.
        ``side``: one more connection runs another job and is counted in its own result."""
        t0 = time.perf_counter() + ramp
        t1 = t0 + result.seconds
        snaps: list[CpuSnap] = []

        async def worker(res: StepResult, run: Job) -> None:
            http = Http(self.port)
            try:
                while True:
                    start = time.perf_counter()
                    if start >= t1:
                        return
                    try:
                        ok, n = await run(http)
                    except HttpError as e:
                        self.totals.error(str(e))
                        ok, n = False, 0
                    done = time.perf_counter()
                    if t0 <= done < t1:
                        if ok:
                            res.requests += 1
                            res.events += n
                            res.latencies.append(done - start)
                        else:
                            res.errors += 1
                    elif not ok:
                        res.errors += 1
            finally:
                await http.close()

        async def clock() -> None:
            await asyncio.sleep(max(0.0, t0 - time.perf_counter()))
            snaps.append(CpuSnap.take(self.server_pid, self.dbname))
            await asyncio.sleep(max(0.0, t1 - time.perf_counter()))
            snaps.append(CpuSnap.take(self.server_pid, self.dbname))

        tasks = [worker(result, job) for _ in range(result.concurrency)]
        if side is not None:
            tasks.append(worker(*side))
        await asyncio.gather(clock(), *tasks)
        share = CpuShare.between(snaps[0], snaps[1])
        result.cpu = share
        if side is not None:
            side[0].cpu = share


# --- stores -------------------------------------------------------------------------------------


@dataclass
class Prepared:
    url: str
    dbname: str | None  # PostgreSQL database name (for its backends' CPU)
    leads: int
    events: int
    seconds: float


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description:<34}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )


def _lead_rows(path: Path, now_us: int) -> list[dict[str, Any]]:
    """The leads as ``leadscore import leads`` stores them (profile: the other columns)."""
    rows = []
    for row in normalize_leads(path).to_pylist():
        lead_id = row.pop("lead_id")
        email = row.pop("email", None)
        email = email.strip().lower() or None if email else None
        profile = {k: v for k, v in row.items() if v is not None}
        if email:
            profile["email"] = email
        rows.append(
            {
                "lead_id": lead_id,
                "email": email,
                "profile": profile,
                "stage": "lead",
                "stage_us": now_us,
                "owner": None,
                "created_us": now_us,
                "updated_us": now_us,
            }
        )
    return rows


def _event_chunks(path: Path, now_us: int) -> Iterator[list[tuple[Any, ...]]]:
    """The events as ``leadscore import events`` stores them (properties: ``url``), in chunks."""
    table = normalize_events(path)
    stamps = pc.cast(table.column("ts"), pa.int64())
    for start in range(0, table.num_rows, LOAD_CHUNK):
        part = table.slice(start, LOAD_CHUNK)
        ts = stamps.slice(start, LOAD_CHUNK).to_pylist()
        cols = {c: part.column(c).to_pylist() for c in ("lead_id", "type", "item", "url")}
        ids = part.column("event_id").to_pylist()
        yield [
            (
                cols["lead_id"][i],
                None,
                cols["type"][i],
                ts[i],
                cols["item"][i],
                json.dumps(
                    {"url": cols["url"][i]} if cols["url"][i] is not None else {},
                    ensure_ascii=False,  # as the store writes JSON
                ),
                ids[i],
                now_us,
            )
            for i in range(part.num_rows)
        ]


def prepare_store(url: str, data: Path, n_events: int, dbname: str | None) -> Prepared:
    """Leads and events loaded straight into the store's tables (SQLite executemany,
    PostgreSQL COPY), then every lead scored by the store's batch rescoring. Not timed."""
    start = time.perf_counter()
    store = open_store(url, durable=False)
    store.ensure_a_model()  # publishes the shipped b2b-default model (nothing to score yet)
    now = store.clock()
    leads = _lead_rows(data / "leads.parquet", now)
    names = ", ".join(EVENT_COLUMNS)
    with _progress() as bar:
        task = bar.add_task("loading leads", total=len(leads))
        for begin in range(0, len(leads), LOAD_CHUNK):
            with store.db.write() as conn:
                conn.execute(leads_table.insert(), leads[begin : begin + LOAD_CHUNK])
            bar.advance(task, len(leads[begin : begin + LOAD_CHUNK]))
        task = bar.add_task("loading events", total=n_events)
        for rows in _event_chunks(data / "events.parquet", now):
            with store.db.write() as conn:
                if store.db.is_sqlite:
                    marks = ", ".join("?" * len(EVENT_COLUMNS))
                    conn.exec_driver_sql(f"INSERT INTO events ({names}) VALUES ({marks})", rows)
                else:
                    raw = conn.connection.driver_connection
                    assert isinstance(raw, psycopg.Connection)
                    with (
                        raw.cursor() as cur,
                        cur.copy(f"COPY events ({names}) FROM STDIN") as copy,
                    ):
                        for row in rows:
                            copy.write_row(row)
            bar.advance(task, len(rows))
    if dbname is not None:  # as autovacuum would, before the service meets the tables
        with psycopg.connect(_pg_url(dbname), autocommit=True) as pg:
            pg.execute("VACUUM ANALYZE")
    with console.status("scoring every lead (Store.rescore_all, the batch evaluator)"):
        report = store.rescore_all("event")
    with store.db.read() as conn:
        n_leads = conn.execute(sa.select(sa.func.count()).select_from(leads_table)).scalar_one()
        n_stored = conn.execute(sa.select(sa.func.count()).select_from(events_table)).scalar_one()
    store.db.dispose()
    seconds = time.perf_counter() - start
    console.print(
        f"store {store.db.url}: {n_leads:,} leads, {n_stored:,} events, "
        f"{report.leads:,} leads scored, in {seconds:.1f} s (not timed)"
    )
    return Prepared(url, dbname, int(n_leads), int(n_stored), seconds)


def _pg_url(dbname: str, admin: str = PG_ADMIN) -> str:
    return admin.rsplit("/", 1)[0] + "/" + dbname


def recreate_pg(admin: str, dbname: str) -> str:
    with psycopg.connect(admin, autocommit=True) as pg:
        pg.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        pg.execute(f'CREATE DATABASE "{dbname}"')
    return _pg_url(dbname, admin)


def copy_pg(admin: str, loaded: str, dbname: str) -> str:
    """A copy of the loaded database for one run (each run starts from the same rows). On
    PostgreSQL 15 and later copied as files, between two checkpoints (the default would
    write the copy through the log, and a checkpoint might then fall in the timed steps)."""
    with psycopg.connect(admin, autocommit=True) as pg:
        pg.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        files = " STRATEGY FILE_COPY" if pg.info.server_version >= 150000 else ""
        pg.execute(f'CREATE DATABASE "{dbname}" TEMPLATE "{loaded}"{files}')
        pg.execute("CHECKPOINT")
    return _pg_url(dbname, admin)


def drop_pg(admin: str, dbname: str) -> None:
    with psycopg.connect(admin, autocommit=True) as pg:
        pg.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')


def count_events(url: str) -> int:
    engine = sa.create_engine(database_url(url))
    try:
        with engine.connect() as conn:
            n = conn.execute(sa.select(sa.func.count()).select_from(events_table)).scalar_one()
    finally:
        engine.dispose()
    return int(n)


def copy_sqlite(source: Path, target: Path) -> None:
    with sqlite3.connect(source) as con:
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    shutil.copyfile(source, target)


# --- the server ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class Server:
    """``leadscore serve --no-auth`` as a subprocess."""

    def __init__(
        self, url: str, fast_commits: bool, log: Path, ingest_process: bool, scoring_process: bool
    ) -> None:
        self.port = free_port()
        self.command = [
            str(LEADSCORE),
            "serve",
            "--db",
            url,
            "--host",
            HOST,
            "--port",
            str(self.port),
            "--no-auth",
            "--rescore-every",
            "0",
            *(["--fast-commits"] if fast_commits else []),
            *([] if ingest_process else ["--no-ingest-process"]),
            *([] if scoring_process else ["--no-scoring-process"]),
        ]
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> dict[str, Any]:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.command, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited: see {self.log}")
            health = self.health()
            if health is not None:
                return health
            time.sleep(0.2)
        raise RuntimeError(f"the server did not answer /api/v1/health within 60 s: see {self.log}")

    def health(self) -> dict[str, Any] | None:
        """The server's /api/v1/health, or None if it does not answer it."""
        try:
            with socket.create_connection((HOST, self.port), timeout=1) as s:
                s.sendall(
                    f"GET /api/v1/health HTTP/1.1\r\nHost: {HOST}\r\n"
                    "Connection: close\r\n\r\n".encode()
                )
                data = b""
                while chunk := s.recv(65536):
                    data += chunk
            if data.startswith(b"HTTP/1.1 200"):
                return dict(json.loads(data.split(b"\r\n\r\n", 1)[1]))
        except (OSError, ValueError):
            pass
        return None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# --- one run ------------------------------------------------------------------------------------


@dataclass
class RunReport:
    key: str
    label: str
    steps: list[StepResult]
    before: int
    after: int
    totals: RunTotals
    profiles: dict[str, Path] = field(default_factory=dict)
    health: dict[str, Any] = field(default_factory=dict)  # the server's, after the steps

    @property
    def ok(self) -> bool:
        return (
            self.after - self.before == self.totals.accepted
            and not self.totals.errors
            and not self.totals.duplicates
            and not any(s.errors for s in self.steps)
        )

    def cache_line(self) -> str:
        """How rescoring came by leads' events since the server started (its event cache, from
        its health page): a lead read and decoded in full is a miss."""
        c = self.health.get("event_cache")
        if not c:
            return ""
        used = c["hits"] + c["extended"] + c["misses"] + c.get("unchecked", 0)
        if not used:
            return ""
        return (
            f"{c['misses'] / used:.0%} of {used:,} lead reads were misses (read and decoded in "
            f"full), {c.get('unchecked', 0) / used:.0%} served without a query; "
            f"{c['leads']:,} leads kept after the steps"
        )

    def check_line(self) -> str:
        stored = self.after - self.before
        verdict = "PASS" if self.ok else "FAIL"
        text = (
            f"{verdict}: {self.totals.accepted:,} events acknowledged, {stored:,} stored "
            f"({self.before:,} before, {self.after:,} after)"
        )
        gets = self.totals.probe_gets
        if gets:
            probes = sum(gets.values())
            first = gets.get(1, 0)
            text += f"; {first:,} of {probes:,} probes read the new score at the first GET" + (
                f" (at most {max(gets)} GETs)" if first < probes else ""
            )
        if self.totals.duplicates:
            text += f", {self.totals.duplicates:,} reported as duplicates"
        if self.totals.errors:
            text += f", {len(self.totals.errors)} error(s), e.g. {self.totals.errors[0]}"
        return text

    def step(self, key: str) -> StepResult:
        return next(s for s in self.steps if s.key == key)


@dataclass
class Config:
    seconds: float
    concurrency: int
    batch_concurrency: int
    batch_sizes: tuple[int, ...]
    profile_dir: Path | None
    profile_seconds: float
    ingest_process: bool = True
    scoring_process: bool = True


def run_one(
    key: str,
    prepared: Prepared,
    fast_commits: bool,
    lead_ids: list[str],
    templates: list[dict[str, Any]],
    cfg: Config,
    workdir: Path,
) -> RunReport:
    label = RUNS[key][0]
    before = count_events(prepared.url)
    server = Server(
        prepared.url,
        fast_commits,
        workdir / f"server-{key}.log",
        cfg.ingest_process,
        cfg.scoring_process,
    )
    console.print(f"[bold]{label}[/]: {' '.join(server.command[1:])}")
    try:
        health = server.start()
        sheet = health["sheets"][0]
        totals = RunTotals()
        driver = Driver(
            server.port,
            server.pid,
            prepared.dbname,
            EventMaker(lead_ids, templates, key),
            sheet,
            totals,
        )
        report = RunReport(key, label, [], before, before, totals)
        asyncio.run(_steps(driver, report, cfg))
        report.health = server.health() or {}
        if cfg.profile_dir is not None:
            asyncio.run(_profiles(driver, report, cfg, server.pid))
        report.after = count_events(prepared.url)
    finally:
        server.stop()
    style = "green" if report.ok else "red"
    console.print(f"[{style}]{label}: {report.check_line()}[/]")
    if report.cache_line():
        console.print(f"[dim]{label}: event cache: {report.cache_line()}[/]")
    return report


async def _steps(driver: Driver, report: RunReport, cfg: Config) -> None:
    run, secs, conc = report.label, cfg.seconds, cfg.concurrency

    async def step(
        result: StepResult, job: Job, side: tuple[StepResult, Job] | None = None
    ) -> None:
        with console.status(f"{run}: {result.label} ({result.seconds:.0f} s)"):
            await driver.step(result, job, ramp=RAMP_SECONDS, side=side)
        report.steps.append(result)
        if side is not None:
            report.steps.append(side[0])
        for r in [result] + ([side[0]] if side else []):
            console.print(
                f"[dim]{run}: {r.label}: {r.rate:,.0f} req/s, {r.event_rate:,.0f} events/s, "
                f"p50 {r.pct(50):.1f} ms, p99 {r.pct(99):.1f} ms, "
                f"cpu {r.cpu.text() if r.cpu else ''}"
                f"{f', {r.errors} errors' if r.errors else ''}[/]"
            )

    # warm-up (not reported): connection pool, model cache, the database's caches
    warm = StepResult(run, "warm-up", "warm-up", conc, secs / 2)
    with console.status(f"{run}: warm-up"):
        await driver.step(warm, driver.post(1), ramp=0.0)
        warm_batch = StepResult(run, "warm-up", "warm-up", cfg.batch_concurrency, secs / 4)
        await driver.step(warm_batch, driver.post(cfg.batch_sizes[0]), ramp=0.0)
    await step(
        StepResult(run, "notfound", "baseline: GET unknown path (404)", conc, secs),
        driver.get("/api/v1/no-such-path", 404),
    )
    await step(
        StepResult(run, "health", "baseline: GET /api/v1/health", conc, secs),
        driver.get("/api/v1/health", 200),
    )
    await step(
        StepResult(run, "readable_idle", "POST -> score readable, idle", 1, secs / 2),
        driver.probe(),
    )
    single = StepResult(run, "single", "POST 1 event", conc, secs)
    single.target = "req/s"
    probe = StepResult(run, "readable_load", "POST -> score readable, under load", 1, secs)
    await step(single, driver.post(1), side=(probe, driver.probe()))
    for size in cfg.batch_sizes:
        result = StepResult(run, f"batch{size}", f"POST {size} events", cfg.batch_concurrency, secs)
        await step(result, driver.post(size))
    # last: its rescorings write every lead's score (the caches of the steps above are checked
    # against the store afterwards)
    during = StepResult(run, "single_rescoring", "POST 1 event, during rescorings", conc, secs)
    rescoring = StepResult(run, "rescoring", "POST /api/v1/rescore, back to back", 1, secs)
    await step(during, driver.post(1), side=(rescoring, driver.rescore()))


async def _profiles(driver: Driver, report: RunReport, cfg: Config, pid: int) -> None:
    """py-spy on the server under the single-event and the first batch load (not timed)."""
    assert cfg.profile_dir is not None
    cfg.profile_dir.mkdir(parents=True, exist_ok=True)
    size = cfg.batch_sizes[0]
    for name, job, conc in (
        ("single", driver.post(1), cfg.concurrency),
        (f"batch{size}", driver.post(size), cfg.batch_concurrency),
    ):
        out = cfg.profile_dir / f"{report.key}-{name}.txt"
        spy = subprocess.Popen(
            [
                str(PY_SPY),
                "record",
                "--pid",
                str(pid),
                "--duration",
                str(int(cfg.profile_seconds)),
                "--rate",
                "200",
                "--format",
                "raw",
                "--nonblocking",
                "--gil",
                "--subprocesses",  # the ingest process too
                "--output",
                str(out),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        result = StepResult(report.label, f"profile-{name}", name, conc, cfg.profile_seconds + 1)
        with console.status(f"{report.label}: py-spy on {name} ({cfg.profile_seconds:.0f} s)"):
            await driver.step(result, job, ramp=0.5)
            await asyncio.to_thread(spy.wait)
        report.profiles[name] = out
        console.print(f"[dim]profile: {out} ({result.rate:,.0f} req/s while sampled)[/]")


# --- profiles -----------------------------------------------------------------------------------


ROOT_FRAMES = re.compile(
    r"\((threading|_asyncio|core|main|runners|base_events|server|_compat|events|"
    r"cli/__init__|cli/service|leadscore)\.py\)$|^<module>"
)


def profile_summary(path: Path, top: int = 30) -> list[tuple[str, float, float]]:
    """(frame, inclusive share, self share) of the most frequent frames of a py-spy raw file,
    leaving out the frames every stack has (threads, event loop, command line)."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_frame(f) for f in stack.split(";")]
        for f in set(frames):
            inclusive[f] += n
        own[frames[-1]] += n
    if not total:
        return []
    common = [(f, c) for f, c in inclusive.most_common() if not ROOT_FRAMES.search(f)]
    return [(f, c / total, own[f] / total) for f, c in common[:top]]


def _frame(text: str) -> str:
    """``func (path/to/module.py:12)`` -> ``func (module.py)``."""
    m = re.match(r"(.*) \((.*?):\d+\)$", text)
    if not m:
        return text
    name, path = m.groups()
    parts = Path(path).parts
    short = "/".join(parts[-2:]) if "leadscore" in parts else parts[-1] if parts else path
    return f"{name} ({short})"


def print_profiles(reports: Sequence[RunReport]) -> None:
    out = Console() if sys.stdout.isatty() else Console(width=140)
    for r in reports:
        for name, path in r.profiles.items():
            table = Table(title=f"py-spy: {r.label}, {name} ({path})")
            table.add_column("frame")
            table.add_column("inclusive", justify="right")
            table.add_column("self", justify="right")
            for frame, inc, own in profile_summary(path):
                table.add_row(frame, f"{inc:.1%}", f"{own:.1%}")
            out.print(table)


# --- report -------------------------------------------------------------------------------------


def _target(step: StepResult) -> str:
    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    if step.key == "single":
        return f">= {SINGLE_TARGET:,} req/s: {verdict(step.rate >= SINGLE_TARGET)}"
    if step.key.startswith("batch"):
        return f">= {BATCH_TARGET:,} events/s: {verdict(step.event_rate >= BATCH_TARGET)}"
    if step.key.startswith("readable"):
        return f"p99 < {P99_TARGET_MS:.0f} ms: {verdict(step.pct(99) < P99_TARGET_MS)}"
    return ""


def rows(reports: Sequence[RunReport]) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = []
    for r in reports:
        for s in r.steps:
            out.append(
                (
                    r.label,
                    s.label,
                    str(s.concurrency),
                    f"{s.requests:,}",
                    f"{s.rate:,.0f}",
                    f"{s.event_rate:,.0f}" if s.events and not s.key.startswith("readable") else "",
                    # "-": no timed request ended in the step (a rescoring outlasted it)
                    *(f"{s.pct(q):.1f}" if s.latencies else "-" for q in (50, 95, 99)),
                    str(s.errors),
                    s.cpu.text() if s.cpu else "",
                    _target(s),
                )
            )
    return out


def print_report(reports: Sequence[RunReport], title: str) -> None:
    out = Console() if sys.stdout.isatty() else Console(width=170)
    table = Table(title=title)
    for name in COLUMNS:
        left = name in ("Run", "Step", "Target")
        table.add_column(name, justify="left" if left else "right")
    for row in rows(reports):
        style = "red" if "MISSED" in row[-1] else ("green" if "met" in row[-1] else None)
        table.add_row(*row, style=style)
    out.print(table)
    for r in reports:
        style = "bold green" if r.ok else "bold red"
        out.print(f"[{style}]CHECK {r.label}: {r.check_line()}[/]")


def _times(x: float) -> str:
    return f"{x:.1f}x" if x < 10 else f"{x:.0f}x"


def reading(reports: Sequence[RunReport]) -> list[str]:
    """A plain reading of the figures against the targets, computed from them."""
    lines = []
    singles = [(r.step("single"), r) for r in reports]
    best, where = max(singles, key=lambda x: x[0].rate)
    rate = best.rate
    verdict = (
        f"met ({rate / SINGLE_TARGET:.2f}x the target)"
        if rate >= SINGLE_TARGET
        else f"**missed**: {rate / SINGLE_TARGET:.0%} of it, {_times(SINGLE_TARGET / rate)} short"
    )
    each = "; ".join(
        f"{r.label} {s.rate:,.0f} req/s, {s.cpu.server if s.cpu else 0:.2f} server cores "
        f"(its 404 baseline: {r.step('notfound').rate:,.0f} req/s, health: "
        f"{r.step('health').rate:,.0f} req/s)"
        for s, r in singles
    )
    lines.append(
        f"- Single-event POST, target {SINGLE_TARGET:,} requests/s: best {rate:,.0f} "
        f"({where.label}), {verdict}. {each}. The 404 baseline (HTTP and routing only, no "
        "database) is the ceiling of the server's HTTP process on this machine."
    )
    batches = [(s, r) for r in reports for s in r.steps if s.key.startswith("batch")]
    bbest, bwhere = max(batches, key=lambda x: x[0].event_rate)
    erate = bbest.event_rate
    verdict = (
        f"met ({erate / BATCH_TARGET:.2f}x the target)"
        if erate >= BATCH_TARGET
        else f"**missed**: {erate / BATCH_TARGET:.0%} of it, {_times(BATCH_TARGET / erate)} short"
    )
    each = "; ".join(
        f"{r.label} "
        + " / ".join(f"{s.event_rate:,.0f}" for s in r.steps if s.key.startswith("batch"))
        for r in reports
    )
    sizes = " / ".join(s.label.split()[1] for s in reports[0].steps if s.key.startswith("batch"))
    lines.append(
        f"- Batch POST, target {BATCH_TARGET:,} events/s: best {erate:,.0f} "
        f"({bwhere.label}, {bbest.label}), {verdict}. Events/s at {sizes} events per request: "
        f"{each}."
    )
    for key, what in (("readable_idle", "idle server"), ("readable_load", "under the load")):
        parts = []
        for r in reports:
            s = r.step(key)
            mark = "met" if s.pct(99) < P99_TARGET_MS else "**missed**"
            parts.append(f"{r.label} p50 {s.pct(50):.1f} / p99 {s.pct(99):.1f} ms ({mark})")
        lines.append(
            f"- POST to new score readable, {what}, target p99 < {P99_TARGET_MS:.0f} ms: "
            + "; ".join(parts)
            + "."
        )
    parts = []
    for r in reports:
        if not any(s.key == "single_rescoring" for s in r.steps):
            continue
        during, alone = r.step("single_rescoring"), r.step("single")
        runs = r.totals.rescorings
        spans = [f"{t:.1f}" for t in sorted(t for t, _ in runs)]
        took = (
            f"{len(runs)} rescoring{'s' if len(runs) != 1 else ''} of {runs[0][1]:,} leads, "
            + (f"{spans[0]} s" if len(set(spans)) == 1 else f"{spans[0]}-{spans[-1]} s each")
            if runs
            else "no rescoring finished"
        )
        parts.append(
            f"{r.label} {during.rate:,.0f} req/s, p50 {during.pct(50):.1f} / p99 "
            f"{during.pct(99):.1f} / max {during.pct(100):.0f} ms (without: {alone.rate:,.0f} "
            f"req/s, p99 {alone.pct(99):.1f} / max {alone.pct(100):.0f} ms; {took})"
        )
    if parts:
        lines.append(
            "- Single-event POST while every lead is rescored (`POST /api/v1/rescore` back to "
            "back on one more connection; the server rescores in a child process, writing "
            "1,000 leads per transaction): " + "; ".join(parts) + "."
        )
    by_key = {r.key: r for r in reports}
    for name, key in (("SQLite", "sqlite"), ("PostgreSQL", "postgres")):
        if key not in by_key or f"{key}-fast" not in by_key:
            continue
        durable, fast = by_key[key], by_key[f"{key}-fast"]
        a, b = durable.step("single").rate, fast.step("single").rate
        last = [s.key for s in durable.steps if s.key.startswith("batch")][-1]
        c, d = durable.step(last).event_rate, fast.step(last).event_rate
        same = abs(a / b - 1) < 0.15 and abs(c / d - 1) < 0.15
        lines.append(
            f"- {name} durable vs `--fast-commits`: {a:,.0f} vs {b:,.0f} req/s single-event, "
            f"{c:,.0f} vs {d:,.0f} events/s in the largest batches: "
            + (
                "within 15% of each other, so waiting for the disk on each commit is not "
                "what limits the service here."
                if same
                else f"durable commits change throughput by {a / b - 1:+.0%} (single) and "
                f"{c / d - 1:+.0%} (batches)."
            )
        )
    worst_other = max((s.cpu.other for r in reports for s in r.steps if s.cpu), default=0.0)
    max_client = max((s.cpu.client for r in reports for s in r.steps if s.cpu), default=0.0)
    lines.append(
        f"- The load generator used at most {max_client:.2f} cores of 2 in any step; other "
        f"processes on the machine used up to {worst_other:.2f} cores in a step."
    )
    return lines


# --- docs/benchmarks.md -------------------------------------------------------------------------

SECTION = "## Ingest (bench/ingest.py)"
SECTION_INTRO = f"""\
The scoring service under load: `leadscore serve --no-auth` (the default model b2b-default; one
uvicorn process for HTTP and its ingest processes) on a free port of 127.0.0.1, driven by a load
generator on the same machine. Every accepted event is stored and its lead rescored (per-lead
evaluator over all the lead's events) before the response. Targets
on 2 cores: at least {BATCH_TARGET:,} events/s through the batch endpoint, {SINGLE_TARGET:,}
requests/s single-event, and p99 under {P99_TARGET_MS:.0f} ms from POST to the new score readable.
"""
METHOD = f"""\
### How the ingest numbers were obtained

Synthetic leads and events (`leadscore.sample.write_sample(..., seed=0)`, as of the start of the
run, so the history is recent) are loaded straight into the store's tables (SQLite
`executemany`, PostgreSQL `COPY` then `VACUUM ANALYZE`), stored as `leadscore import` would store
them, and every lead is scored once with `Store.rescore_all`; none of this is timed. The
SQLite runs start from copies of the same file, the PostgreSQL runs from copies of the same
database (`CREATE DATABASE ... TEMPLATE`). Each run
starts `leadscore serve --db ... --no-auth --rescore-every 0 [--fast-commits]` as a subprocess
and waits for `/api/v1/health`. The server's CPU is that of its process and of its ingest
process together.

The load generator is one asyncio process with a minimal HTTP/1.1 keep-alive client (each
response's status and framing are checked and every POST's JSON is read; httpx would cost the
shared CPU several times more per request). Each step is a closed loop: N connections each send
a request as soon as the previous answer arrives, for {RAMP_SECONDS:.0f} s untimed and then the
timed seconds; requests that finish in the timed part count, latency is from sending to the
complete response. "Timed" is the number of such requests (few for big batches: read their
percentiles with that in mind). Events are drawn from the sample's rows (type, item, url) for
random existing leads, each with its `ts` (send time) and a unique `event_id`. A warm-up
(single events, then batches) precedes the steps.

"POST -> score readable" POSTs one event and then GETs `/api/v1/leads/{{id}}?explain=false`
until the lead's score has `as_of` >= the event's `ts` (the service rescores before it
acknowledges, so the first GET should see it; the check lines say how many GETs the probes
needed). It runs alone ("idle") and as one extra connection during the single-event step
("under load"), where it queues behind that load: in a closed loop at saturation a request
waits about the number of connections divided by the throughput. Its Req/s is POST + GET
pairs per second.

The last step repeats the single-event load while one more connection POSTs
`/api/v1/rescore` back to back: every lead rescored with the batch evaluator (in a child
process of the server, as the scheduled rescoring is) and written 1,000 leads per
transaction, which the ingest process waits for. The rescoring's own row counts no request
that did not finish within the timed part (`-` for its latencies when none did: a rescoring
that outlasted the step); the summary gives the duration of each.

CPU is in cores (2.00 = the whole machine), averaged over the timed part: this client
(getrusage), the server process, the PostgreSQL backends of the benchmark's database (found by
process title; SQLite runs inside the server process), and everything else on the machine
(/proc/stat minus those three). After each run the events in the store must equal the events
the server acknowledged.
"""


def versions(pg: str | None) -> str:
    def v(dist: str) -> str:
        try:
            return dist_version(dist)
        except Exception:
            return "not installed"

    parts = [
        ("Python", platform.python_version()),
        ("uvicorn", v("uvicorn")),
        ("httptools", v("httptools")),
        ("FastAPI", v("fastapi")),
        ("SQLAlchemy", v("sqlalchemy")),
        ("psycopg", v("psycopg")),
        ("SQLite", sqlite3.sqlite_version),
        ("PostgreSQL", pg or "not used"),
        ("leadscore", leadscore.__version__),
    ]
    text = ", ".join(f"{name} {ver}" for name, ver in parts)
    loop = "uvloop" if v("uvloop") != "not installed" else "asyncio"
    return (
        f"{text}; uvicorn runs on {loop} with httptools (leadscore serve asks for it, under "
        "bounds of its own: leadscore.service.http)"
    )


def source_state() -> str:
    """The commit, and a digest of the uncommitted changes under src/ if there are any."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout

    try:
        head = git("rev-parse", "--short", "HEAD").strip()
        diff = git("diff", "HEAD", "--", "src") + git(
            "ls-files", "--others", "--exclude-standard", "--", "src"
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    if not diff:
        return head
    digest = hashlib.sha1(diff.encode()).hexdigest()[:8]
    return f"{head} with uncommitted changes in src/ (diff {digest})"


def source_line(start: str, end: str) -> str:
    if start == end:
        return start
    return f"{start} at the start, {end} at the end (the code changed during the run)"


def pg_settings(url: str | None) -> str | None:
    if url is None:
        return None
    with psycopg.connect(url) as pg:
        got = {
            name: str(pg.execute(f"SHOW {name}").fetchone()[0])  # type: ignore[index]
            for name in ("server_version", "fsync", "synchronous_commit", "shared_buffers")
        }
    return (
        f"PostgreSQL {got['server_version']} (fsync {got['fsync']}, synchronous_commit "
        f"{got['synchronous_commit']}, shared_buffers {got['shared_buffers']})"
    )


@dataclass
class Meta:
    command: str
    date: str
    load: str
    n_leads: int
    n_events: int
    cfg: Config
    prepared: dict[str, Prepared]
    pg: str | None
    source: str


def size_name(n_leads: int, n_events: int) -> str:
    if (n_leads, n_events) == FULL_SIZE:
        return "Full size"
    if (n_leads, n_events) == QUICK_SIZE:
        return "Quick (`--quick`)"
    return "Custom size"


def markdown_block(reports: Sequence[RunReport], meta: Meta) -> str:
    m = machine()
    key = f"{meta.n_leads}x{meta.n_events}"
    cfg = meta.cfg
    loaded = "; ".join(
        f"{name} {p.events:,} events in {p.seconds:.0f} s" for name, p in meta.prepared.items()
    )
    pg_version = meta.pg.split(" (")[0].removeprefix("PostgreSQL ") if meta.pg else None
    lines = [
        f"<!-- bench/ingest.py {key} begin -->",
        f"### {size_name(meta.n_leads, meta.n_events)}: {meta.n_leads:,} leads, "
        f"{meta.n_events:,} events in the store",
        "",
        f"- Command: `{meta.command}`",
        f"- Date: {meta.date}; source: {meta.source}",
        f"- Machine: {m['nproc']} CPUs ({m['cpu']}), {m['memory']} memory, {m['os']}; "
        f"load average at the start: {meta.load}",
        f"- Versions: {versions(pg_version)}",
        f"- Stores: SQLite file in a temporary directory (WAL; `--fast-commits`: synchronous "
        f"NORMAL, default: FULL); {meta.pg or 'PostgreSQL not run'}"
        + (
            "; `--fast-commits`: synchronous_commit off for the server's connections"
            if meta.pg
            else ""
        )
        + f". Loaded (not timed): "
        f"{loaded}",
        f"- Steps: {cfg.seconds:.0f} s timed each (after {RAMP_SECONDS:.0f} s untimed); "
        f"{cfg.concurrency} connections for the baselines and single events (plus the probe "
        f"connection), {cfg.batch_concurrency} for batches",
        "- Server: "
        + (
            "one process, ingest in a thread of it (`--no-ingest-process`)"
            if not cfg.ingest_process
            else "an HTTP process and its ingest process (two on PostgreSQL), without a "
            "scoring process (`--no-scoring-process`)"
            if not cfg.scoring_process
            else "an HTTP process and its ingest process and a scoring process on SQLite, "
            "an HTTP process and two ingest processes on PostgreSQL (the defaults)"
        ),
        "- CPU column: cores used by the client / server (all its processes) / PostgreSQL "
        "backends / everything else on the machine",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows(reports):
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |")
    lines += ["", *reading(reports)]
    lines += [f"- Check, {r.label}: {r.check_line()}." for r in reports]
    lines += [f"- Event cache, {r.label}: {c}." for r in reports if (c := r.cache_line())]
    lines += [f"<!-- bench/ingest.py {key} end -->"]
    return "\n".join(lines)


def write_docs(reports: Sequence[RunReport], meta: Meta) -> None:
    block = markdown_block(reports, meta)
    key = f"{meta.n_leads}x{meta.n_events}"
    write_section(
        DOCS_PATH, SECTION, SECTION_INTRO, METHOD, "bench/ingest.py", key, block, new_file=""
    )
    console.print(f"docs: wrote the ingest section of {DOCS_PATH.relative_to(ROOT)}")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="10,000 leads / 200,000 events, 5 s steps")
    p.add_argument("--leads", type=int, help="number of leads (overrides the size)")
    p.add_argument("--events", type=int, help="number of events (overrides the size)")
    p.add_argument("--seconds", type=float, help="timed seconds per step (default 15; quick 5)")
    p.add_argument(
        "--concurrency", type=int, default=8, help="connections, single events (default 8)"
    )
    p.add_argument(
        "--batch-concurrency", type=int, default=2, help="connections, batches (default 2)"
    )
    p.add_argument(
        "--batch-sizes", default="100,500", help="events per batch request (default 100,500)"
    )
    p.add_argument(
        "--runs",
        default=",".join(RUNS),
        help=f"comma-separated runs (default: all of {', '.join(RUNS)})",
    )
    p.add_argument("--pg-admin", default=PG_ADMIN, help=f"PostgreSQL to connect to ({PG_ADMIN})")
    p.add_argument("--pg-db", default=PG_DB, help=f"database to (re)create there ({PG_DB})")
    p.add_argument(
        "--no-ingest-process",
        action="store_true",
        help="serve with --no-ingest-process (ingest in a thread of the HTTP process)",
    )
    p.add_argument(
        "--no-scoring-process",
        action="store_true",
        help="serve with --no-scoring-process (on SQLite, each batch scored in its "
        "transaction by the ingest process)",
    )
    p.add_argument("--profile", type=Path, help="also write py-spy profiles of the server here")
    p.add_argument("--profile-seconds", type=float, default=10.0, help="per profile (default 10)")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    p.add_argument("--write-docs", action="store_true", help="refresh docs/benchmarks.md")
    args = p.parse_args(argv)
    runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    unknown = [r for r in runs if r not in RUNS]
    if unknown or not runs:
        p.error(f"--runs takes {', '.join(RUNS)}, not {', '.join(unknown) or 'nothing'}")
    args.runs = runs
    try:
        args.batch_sizes = tuple(int(x) for x in args.batch_sizes.split(","))
    except ValueError:
        p.error("--batch-sizes takes numbers such as 100,500")
    if args.profile is not None and not PY_SPY.exists():
        p.error(f"--profile needs py-spy ({PY_SPY}): .venv/bin/pip install py-spy")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    n_leads, n_events = QUICK_SIZE if args.quick else FULL_SIZE
    n_leads = args.leads if args.leads is not None else n_leads
    n_events = args.events if args.events is not None else n_events
    seconds = args.seconds or (QUICK_SECONDS if args.quick else FULL_SECONDS)
    command = " ".join([".venv/bin/python", "bench/ingest.py", *(argv or sys.argv[1:])])
    date = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    source = source_state()
    load = load_average()
    cfg = Config(
        seconds,
        args.concurrency,
        args.batch_concurrency,
        args.batch_sizes,
        args.profile,
        args.profile_seconds,
        not args.no_ingest_process,
        not args.no_scoring_process,
    )
    workdir = Path(tempfile.mkdtemp(prefix="leadscore-ingest-"))
    console.print(f"[dim]working directory: {workdir}[/]")
    use_pg = any(RUNS[r][1] == "postgres" for r in args.runs)
    pg_copies: list[str] = []
    reports: list[RunReport] = []
    prepared: dict[str, Prepared] = {}
    pg_text: str | None = None
    try:
        with console.status(f"data: {n_leads:,} leads / {n_events:,} events, as of now"):
            write_sample(workdir / "data", n_leads, n_events, datetime.now(UTC), progress=False)
        data = workdir / "data"
        lead_ids = pq.read_table(data / "leads.parquet", columns=["lead_id"])["lead_id"]
        ids = lead_ids.to_pylist()
        sample = pq.read_table(data / "events.parquet", columns=["type", "item", "url"])
        pick = np.random.default_rng(0).choice(sample.num_rows, min(50_000, sample.num_rows))
        templates = [
            {k: v for k, v in row.items() if v is not None}
            for row in sample.take(pa.array(pick)).to_pylist()
        ]
        if any(r.startswith("sqlite") for r in args.runs):
            base = workdir / "loaded.db"
            prepared["SQLite"] = prepare_store(str(base), data, n_events, None)
        if use_pg:
            pg_url = recreate_pg(args.pg_admin, args.pg_db)
            prepared["PostgreSQL"] = prepare_store(pg_url, data, n_events, args.pg_db)
            pg_text = pg_settings(pg_url)
        for key in args.runs:
            _, kind, fast = RUNS[key]
            if kind == "sqlite":
                target = workdir / f"{key}.db"
                copy_sqlite(workdir / "loaded.db", target)
                p = prepared["SQLite"]
                store = Prepared(str(target), None, p.leads, p.events, p.seconds)
            else:
                p = prepared["PostgreSQL"]
                name = f"{args.pg_db}_{key.replace('-', '_')}"
                pg_copies.append(name)
                url = copy_pg(args.pg_admin, args.pg_db, name)
                store = Prepared(url, name, p.leads, p.events, p.seconds)
            reports.append(run_one(key, store, fast, ids, templates, cfg, workdir))
            if kind == "postgres" and not args.keep:  # its disk space back before the next
                drop_pg(args.pg_admin, pg_copies.pop())
    finally:
        if use_pg and not args.keep:
            for name in [args.pg_db, *pg_copies]:
                with contextlib.suppress(psycopg.Error):
                    drop_pg(args.pg_admin, name)
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    source = source_line(source, source_state())
    meta = Meta(command, date, load, n_leads, n_events, cfg, prepared, pg_text, source)
    print_report(
        reports,
        f"leadscore ingest benchmark: {n_leads:,} leads, {n_events:,} events in the store, "
        f"{seconds:.0f} s per step",
    )
    for line in reading(reports):
        Console(stderr=False).print(line, markup=False)
    if args.profile is not None:
        print_profiles(reports)
    if args.write_docs:
        write_docs(reports, meta)
    return 0 if all(r.ok for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
