"""Killing the server with SIGKILL in the middle of an ingest burst loses no acknowledged event
and no pending webhook.

The server runs as a real process (``leadscore serve``) on SQLite and on PostgreSQL; clients post
batches with unique event ids and keep the ids the server acknowledged; the process is killed
with SIGKILL while requests are in flight; afterwards every acknowledged id is in the store and,
once the server has started again, every stored lead's score equals a fresh rescoring of its
events.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from leadscore.service.writer import SPLIT_ABOVE
from leadscore.store import Store, open_database
from leadscore.store.schema import events, outbox, trigger_firings
from tests.webhook_receiver import Receiver, free_port

pytestmark = pytest.mark.slow

LEADSCORE = str(Path(sys.executable).parent / "leadscore")


_started: list[subprocess.Popen[bytes]] = []


@pytest.fixture(autouse=True)
def _no_server_left() -> Iterator[None]:
    """Whatever a test leaves running (a failed assertion) is killed with its process group."""
    yield
    while _started:
        proc = _started.pop()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def start_server(db_url: str, port: int, cwd: Path, *extra: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [
            LEADSCORE,
            "serve",
            "--db",
            db_url,
            "--port",
            str(port),
            "--no-auth",
            "--rescore-every",
            "0",
            *extra,
        ],
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group, with its ingest process
    )
    _started.append(proc)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"server exited: {proc.stderr.read().decode() if proc.stderr else ''}"
            )
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/v1/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("server did not start")


def burst(url: str, worker: int, acked: list[str], stop: threading.Event) -> None:
    """Post batches until stopped (or the server dies); keep what was acked. Even workers
    send 20 events a batch, odd ones more than SPLIT_ABOVE (on PostgreSQL shared out among
    the ingest processes)."""
    n = 0
    size = SPLIT_ABOVE + 16 if worker % 2 else 20
    with httpx.Client(base_url=url, timeout=10) as client:
        while not stop.is_set():
            batch = [
                {
                    "lead_id": f"L{(n + i) % 50}",
                    "type": "page_view",
                    "url": "/pricing",
                    "event_id": f"w{worker}-{n + i}",
                }
                for i in range(size)
            ]
            n += size
            try:
                r = client.post("/api/v1/events", json=batch)
            except httpx.TimeoutException:
                continue  # slow (a loaded machine, a restarting ingest process): not acked
            except httpx.HTTPError:
                return  # the server is gone: this batch was never acknowledged
            if r.status_code == 200:
                acked.extend(
                    batch[i["index"]]["event_id"]
                    for i in r.json()["items"]
                    if i["status"] in ("accepted", "duplicate")
                )


def _catches_sigterm(pid: int) -> bool:
    """Whether the process handles SIGTERM itself (/proc/PID/status, SigCgt)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signal.SIGTERM - 1) & 1)
    return False


def ingest_processes_of(server: int) -> list[int]:
    """The pids of the server's ingest processes: children started by multiprocessing's
    spawn (one on SQLite, two on PostgreSQL) that handle SIGTERM (to end between
    transactions). Its other children: multiprocessing's resource tracker, and on SQLite the
    scoring process, which leaves SIGTERM to the default."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == server and b"spawn_main" in cmdline:
            with contextlib.suppress(OSError):
                if _catches_sigterm(int(entry.name)):
                    found.append(int(entry.name))
    assert found, f"the server {server} has no ingest process"
    return sorted(found)


def gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def burst_then_kill(proc: subprocess.Popen[bytes], port: int, victim: str = "server") -> list[str]:
    """Four clients post batches; once 400 events are acknowledged, SIGKILL the server (with
    ``victim="both"``, its whole process group: the ingest process too, as when a container
    is killed) while requests are in flight. With ``victim="ingest"`` only the ingest process is
    killed: the server starts another, and the clients go on until 400 more are acknowledged.
    Returns the acknowledged event ids."""
    acked: list[str] = []
    stop = threading.Event()
    workers = [
        threading.Thread(target=burst, args=(f"http://127.0.0.1:{port}", w, acked, stop))
        for w in range(4)
    ]
    ingest = ingest_processes_of(proc.pid)
    for w in workers:
        w.start()
    deadline = time.monotonic() + 30
    while len(acked) < 400 and time.monotonic() < deadline:
        time.sleep(0.05)
    if victim == "server":
        os.kill(proc.pid, signal.SIGKILL)
    elif victim == "both":
        os.killpg(proc.pid, signal.SIGKILL)
    else:
        os.kill(ingest[0], signal.SIGKILL)
    if victim == "ingest":
        before = len(acked)
        deadline = time.monotonic() + 60
        while len(acked) < before + 400 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(acked) >= before + 400, "no events were acknowledged after the restart"
        replacement = ingest_processes_of(proc.pid)
        while len(replacement) < len(ingest) and time.monotonic() < deadline:
            time.sleep(0.1)  # with two (PostgreSQL) the other took the events meanwhile
            replacement = ingest_processes_of(proc.pid)
        assert ingest[0] not in replacement and len(replacement) == len(ingest)
        stop.set()
        proc.terminate()
        ingest = replacement  # those that must end with the server
    proc.wait(timeout=30)
    stop.set()
    for w in workers:
        w.join(timeout=15)
    # no ingest process outlives the server: each ends once its pipe closes
    for pid in ingest:
        assert gone_within(pid, 30), "an ingest process outlived the server"
    return acked


@pytest.mark.parametrize("victim", ["server", "both", "ingest"])
def test_sigkill_mid_burst_loses_no_acknowledged_event(
    db_url: str, tmp_path: Path, victim: str
) -> None:
    port = free_port()
    proc = start_server(db_url, port, tmp_path)
    acked = burst_then_kill(proc, port, victim)
    assert len(acked) >= 400, "the burst did not get going"

    store = Store(open_database(db_url))
    try:
        with store.db.read() as conn:
            stored = {m for (m,) in conn.execute(sa.select(events.c.message_id))}
        lost = set(acked) - stored
        assert not lost, f"{len(lost)} acknowledged events are missing, e.g. {sorted(lost)[:5]}"
    finally:
        store.db.dispose()
    # the server starts again on the same store (its ingest process rescores, before it
    # answers anything, the leads of events stored and not yet rescored when it was killed:
    # SQLite's scoring process, docs/operations.md)
    again = start_server(db_url, port, tmp_path)
    try:
        r = httpx.get(f"http://127.0.0.1:{port}/api/v1/leads/L1", timeout=10)
        assert r.status_code == 200
    finally:
        again.terminate()
        again.wait(timeout=10)
    store = Store(open_database(db_url))
    try:
        # the stored scores are what the events give: rescoring changes nothing
        report = store.rescore_all("decay", as_of_us=None)
        assert (report.leads, report.changed) == (50, 0)
    finally:
        store.db.dispose()


MODEL = """version: 1
name: views
activity:
  - {id: view, event: page_view, points: 10}
bands: {cold: -.inf, hot: 30}
mql: hot
"""


def test_sigkill_keeps_every_pending_webhook(db_url: str, tmp_path: Path) -> None:
    """Each of the 50 leads turns hot at its third page view (10 points each, hot from 30):
    a trigger fires and writes a webhook call to the outbox in the same transaction. The
    receiver is down during the burst, so the calls stay pending; after SIGKILL and a
    restart with the receiver up, every firing's call arrives."""
    receiver = Receiver()  # not started: connections are refused
    (tmp_path / "model.yaml").write_text(MODEL)
    (tmp_path / "triggers.yaml").write_text(
        "triggers:\n  - id: hot\n    when: {enters_band: hot}\n"
        f"    actions: [{{webhook: {{url: '{receiver.url}', secret: k}}}}]\n"
    )
    # a delivery the kill interrupts is retried when its lease (timeout + 10 s) runs out
    flags = ("--model", "model.yaml", "--triggers", "triggers.yaml")
    flags += ("--webhook-retry", "0.2", "--webhook-timeout", "1")
    port = free_port()
    proc = start_server(db_url, port, tmp_path, *flags)
    assert len(burst_then_kill(proc, port)) >= 400

    db = open_database(db_url)
    with db.read() as conn:
        fired = {i for (i,) in conn.execute(sa.select(trigger_firings.c.id))}
        queued = {f: st for f, st in conn.execute(sa.select(outbox.c.firing_id, outbox.c.status))}
    db.dispose()
    assert len(fired) == 50
    assert set(queued) == fired  # every firing has its webhook call, none went out yet
    assert set(queued.values()) == {"pending"}

    receiver.start()
    again = start_server(db_url, port, tmp_path, *flags)
    try:
        deadline = time.monotonic() + 60
        while len({r.headers["X-Leadscore-Delivery"] for r in receiver.requests}) < 50:
            assert time.monotonic() < deadline, f"{len(receiver.requests)} of 50 arrived"
            time.sleep(0.1)
    finally:
        again.terminate()
        again.wait(timeout=10)
        receiver.stop()
    db = open_database(db_url)
    with db.read() as conn:
        statuses = {s for (s,) in conn.execute(sa.select(outbox.c.status))}
    db.dispose()
    assert statuses == {"delivered"}


def test_serve_refuses_a_request_with_oversized_headers(tmp_path: Path) -> None:
    """`leadscore serve` parses HTTP with httptools under a bound on request heads
    (leadscore.service.http; httptools alone reads any size into memory): 2 MB of headers get
    no answer but an error or a closed connection, and the server serves on."""
    port = free_port()
    proc = start_server(f"sqlite:///{tmp_path / 'store.db'}", port, tmp_path)
    try:
        head = b"GET /api/v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        filler = b"".join(b"X-Filler-%d: %s\r\n" % (i, b"x" * 1000) for i in range(2000))
        answer = b""
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            try:
                s.sendall(head + filler + b"\r\n")
                answer = s.recv(4096)
            except OSError:  # reset while sending: refused
                pass
        assert not answer.startswith(b"HTTP/1.1 200"), answer[:200]
        assert httpx.get(f"http://127.0.0.1:{port}/api/v1/health", timeout=5).status_code == 200
    finally:
        proc.kill()
        proc.wait(timeout=30)


def test_ctrl_c_stops_the_demo_as_it_should_be_stopped(tmp_path: Path) -> None:
    """Ctrl-C (SIGINT) is how `leadscore demo --serve` (make demo) is stopped: it shuts down
    and exits 0, with no "interrupted" (uvicorn raises the signal again once it is down)."""
    port = free_port()
    proc = subprocess.Popen(
        [
            *(LEADSCORE, "demo", "--serve", "--port", str(port)),
            *("--leads", "300", "--events", "3000", "--db", str(tmp_path / "demo.db")),
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    _started.append(proc)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/v1/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()
    assert "is serving 300 leads" in out.decode() and "interrupted" not in err.decode()
