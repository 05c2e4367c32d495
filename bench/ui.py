"""Benchmark: how long each page of the web interface takes with a demo-sized store.

    .venv/bin/python bench/ui.py --quick --write-docs    # 5,000 leads / 100,000 events
    .venv/bin/python bench/ui.py --write-docs            # 50,000 leads / 1,000,000 events

A SQLite store is built as ``make demo`` builds its own (:func:`load_demo_store`: events up to
now, the last day of them arriving hour by hour through real-time ingest, so there is score
history; not timed). ``leadscore serve --no-auth`` runs it in a subprocess, and each page is
fetched over HTTP on loopback, one request at a time: a warm-up, then ``--repeat`` timed
requests, of which the median and the slowest are reported, next to the page's JSON twin and
to ``GET /api/v1/health`` (the baseline of the same run: a request that touches no table).
Timed from sending the request to the last byte of the answer; the browser's own drawing is
not included. The what-if preview of a model (every lead rescored with a draft), the
Validation page, the backtest of a draft and the CSV export of a filtered list are actions,
not pages: they are timed once each and reported apart.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

from leadscore.cli.demo_server import load_demo_store
from leadscore.sample import write_sample
from leadscore.store import open_store
from record import load_average, machine, write_section

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "benchmarks.md"
TARGET_MS = 500.0
METHOD = (
    "How: the store is built as `make demo` builds its own (`load_demo_store`: events up to "
    "now, the last day of them arriving hour by hour through real-time ingest, so scores have "
    "a history; not timed). `leadscore serve --no-auth` serves it from a subprocess; each page "
    "is fetched over HTTP on loopback, one request at a time: one warm-up, then the timed "
    "requests, from sending the request to the last byte of the answer (the browser's own "
    "drawing is not included). Next to each page: its JSON twin, and the baseline of the same "
    "run, `GET /api/v1/health`, which reads no table. The what-if preview, the model check, "
    "the Validation page (the store's sample outcomes, moved into the past as `make demo` does), "
    "the backtest of a draft and the CSV exports are actions, not pages: timed once each."
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build(directory: Path, leads: int, events: int) -> Path:
    db = directory / "ui-bench.db"
    store = open_store(str(db), durable=False)
    store.ensure_a_model()
    files = write_sample(directory, leads, events, datetime.now(UTC), seed=7, progress=False)
    last = [""]

    def progress(what: str, done: int, total: int) -> None:
        if what != last[0]:
            print(f"  {what}...", file=sys.stderr, flush=True)
            last[0] = what

    load_demo_store(
        store,
        files.leads,
        files.events,
        outcomes_file=files.outcomes,
        replay_days=1,
        progress=progress,
    )
    store.db.dispose()
    return db


def build_list_only(directory: Path, n: int) -> Path:
    """A store of ``n`` leads with scores but no events, written straight into the tables
    (the lead list and the overview read only these): for the lead list at 1M leads."""
    import random

    import sqlalchemy as sa

    from leadscore.store.schema import leads, scores

    db = directory / "ui-list.db"
    store = open_store(str(db), durable=False)
    store.ensure_a_model()
    sheet = store.sheets()[0]
    model = sheet.model
    rng = random.Random(7)
    first = ("Ada", "Bob", "Chloe", "David", "Eva", "Farid", "Grace", "Hugo", "Ines", "Jon")
    last = ("Smith", "Garcia", "Müller", "Taylor", "Rossi", "Dubois", "Kowalski", "Sato")
    countries = ("US", "DE", "GB", "FR", "NL", "IN", "BR", "JP")
    now = store.clock()
    chunk = 50_000
    for start in range(0, n, chunk):
        lead_rows, score_rows = [], []
        for i in range(start, min(n, start + chunk)):
            lid = f"L{i:07d}"
            f, sn, country = rng.choice(first), rng.choice(last), rng.choice(countries)
            profile = {
                "first_name": f,
                "last_name": sn,
                "country": country,
                "company": f"{sn} & Co {i % 997}",
                "job_title": "Manager",
            }
            t = now - rng.randrange(0, 365 * 86_400_000_000)
            lead_rows.append(
                {
                    "lead_id": lid,
                    "email": f"{f}.{sn}{i}@example.com".lower(),
                    "profile": profile,
                    "stage": "lead",
                    "stage_us": t,
                    "owner": None,
                    "created_us": t,
                    "updated_us": t,
                }
            )
            fit = float(rng.choice((0, 10, 20, 30, 45, 55)))
            eng = round(max(0.0, rng.gauss(20, 30)), 2)
            score = fit + eng
            grade = next((g for g, lo in model.grades if fit >= lo), "F")
            band = [b for b, lo in model.bands if score >= lo][-1]
            score_rows.append(
                {
                    "lead_id": lid,
                    "sheet": sheet.name,
                    "model_version_id": sheet.version.id,
                    "as_of_us": now,
                    "score": score,
                    "fit": fit,
                    "engagement": eng,
                    "grade": grade,
                    "band": band,
                    "mql": band == "hot",
                    "priority": model.priority.get(grade, {}).get(band),
                    "groups": {"fit": fit, "engagement": eng},
                    "updated_us": now,
                }
            )
        with store.db.write() as conn:
            conn.execute(sa.insert(leads), lead_rows)
            conn.execute(sa.insert(scores), score_rows)
        print(f"  {min(n, start + chunk):,} leads", file=sys.stderr, flush=True)
    with store.db.write() as conn:
        conn.exec_driver_sql("ANALYZE")
    store.db.dispose()
    return db


def timed(client: httpx.Client, method: str, path: str, repeat: int, **kw: object) -> list[float]:
    out = []
    for i in range(repeat + 1):
        start = time.perf_counter()
        r = client.request(method, path, **kw)  # type: ignore[arg-type]
        elapsed = (time.perf_counter() - start) * 1000
        if r.status_code >= 400:
            raise RuntimeError(f"{method} {path}: {r.status_code} {r.text[:300]}")
        if i:  # the first one warms caches
            out.append(elapsed)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="5,000 leads / 100,000 events")
    parser.add_argument("--leads", type=int)
    parser.add_argument("--events", type=int)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument(
        "--list-only",
        type=int,
        metavar="N",
        help="only the lead list and overview, on N leads with scores and no events",
    )
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()
    leads = args.leads or (5_000 if args.quick else 50_000)
    events = args.events or (100_000 if args.quick else 1_000_000)
    load = load_average()
    with tempfile.TemporaryDirectory(prefix="leadscore-ui-bench-") as tmp:
        t0 = time.perf_counter()
        if args.list_only:
            leads, events = args.list_only, 0
            print(f"building a store of {leads:,} leads (no events)...", file=sys.stderr)
            db = build_list_only(Path(tmp), leads)
        else:
            print(f"building a store of {leads:,} leads and {events:,} events...", file=sys.stderr)
            db = build(Path(tmp), leads, events)
        print(f"  built in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        port = free_port()
        server = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "leadscore"),
                "serve",
                "--db",
                str(db),
                "--no-auth",
                "--port",
                str(port),
                "--rescore-every",
                "0",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            rows, actions = run(f"http://127.0.0.1:{port}", args.repeat, bool(args.list_only))
        finally:
            server.terminate()
            server.wait(timeout=30)
    report(rows, actions, leads, events, args, load)


def run(
    base: str, repeat: int, list_only: bool = False
) -> tuple[list[tuple[str, str, list[float], list[float]]], dict[str, float]]:
    with httpx.Client(base_url=base, timeout=120) as c:
        deadline = time.monotonic() + 60
        while True:
            try:
                if c.get("/api/v1/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.2)
        top = c.get("/api/v1/leads?limit=1").json()["items"][0]["lead_id"]
        second = c.get("/api/v1/leads?limit=50").json()["next_cursor"]
        model = c.get("/api/v1/models").json()["items"][0]["name"]
        pages = [
            ("lead list, best 50", "/", "/api/v1/leads?spark=30"),
            ("lead list, page 2", f"/?cursor={second}", f"/api/v1/leads?spark=30&cursor={second}"),
            (
                "hot, grade A, US",
                "/?band=hot&grade=A&country=US",
                "/api/v1/leads?spark=30&band=hot&grade=A&country=US",
            ),
            ("search 'smith'", "/?q=smith", "/api/v1/leads?spark=30&q=smith"),
            ("sorted by last update", "/?sort=-updated", "/api/v1/leads?spark=30&sort=-updated"),
            ("lead page (top lead)", f"/leads/{top}", f"/api/v1/leads/{top}?detail=true"),
            ("overview", "/overview", "/api/v1/overview"),
            ("model editor", "/model", f"/api/v1/models/{model}"),
            ("triggers", "/settings/triggers", "/api/v1/triggers"),
            ("API keys", "/settings/keys", "/api/v1/keys"),
        ]
        rows = [
            (
                "baseline (no table read)",
                "/api/v1/health",
                timed(c, "GET", "/api/v1/health", repeat),
                [],
            )
        ]
        if list_only:  # the lead list deep into a large store, and the overview
            cursor = second
            for _ in range(199):  # walk to page 201 (10,000 leads in)
                cursor = c.get(f"/api/v1/leads?limit=50&cursor={cursor}").json()["next_cursor"]
            pages = [p for p in pages if p[1].startswith(("/?", "/overview")) or p[1] == "/"]
            pages.insert(
                2, ("lead list, page 201", f"/?cursor={cursor}", f"/api/v1/leads?cursor={cursor}")
            )
            pages.insert(-1, ("sorted by fit", "/?sort=-fit", "/api/v1/leads?sort=-fit"))
            rare = "l0999999"  # one lead of a million
            pages.insert(-1, (f"search '{rare}'", f"/?q={rare}", f"/api/v1/leads?q={rare}"))
        for label, page, twin in pages:
            print(f"  {label}...", file=sys.stderr, flush=True)
            rows.append((label, page, timed(c, "GET", page, repeat), timed(c, "GET", twin, repeat)))
        if list_only:
            return rows, {}
        yaml = c.get(f"/api/v1/models/{model}/yaml").text
        actions = {
            "check a model (as you type)": statistics.median(
                timed(
                    c,
                    "POST",
                    "/api/v1/models/check",
                    5,
                    content=yaml,
                    headers={"Content-Type": "application/yaml"},
                )
            ),
            "what-if preview of a draft": timed(
                c,
                "POST",
                "/api/v1/models/preview",
                1,
                content=yaml.replace("hot: 75", "hot: 60"),
                headers={"Content-Type": "application/yaml"},
            )[0],
            "Validation page (report and 30-day drift)": timed(c, "GET", "/validation", 1)[0],
            "backtest of a draft beside the active model, 13 weekly cut-offs": timed(
                c,
                "POST",
                "/api/v1/models/backtest",
                1,
                content=yaml.replace("hot: 75", "hot: 60"),
                headers={"Content-Type": "application/yaml"},
            )[0],
            "CSV export of the hot leads": timed(c, "GET", "/api/v1/leads.csv?band=hot", 1)[0],
            "CSV export of every lead": timed(c, "GET", "/api/v1/leads.csv", 1)[0],
        }
    return rows, actions


def report(
    rows: list[tuple[str, str, list[float], list[float]]],
    actions: dict[str, float],
    leads: int,
    events: int,
    args: argparse.Namespace,
    load: str,
) -> None:
    base = statistics.median(rows[0][2])
    lines = [
        "| page | URL | median ms | slowest ms | x baseline | JSON twin median ms | under 500 ms |",
        "|---|---|---:|---:|---:|---:|:---:|",
    ]
    for label, url, page, twin in rows:
        med, worst = statistics.median(page), max(page)
        twin_text = f"{statistics.median(twin):.1f}" if twin else ""
        ok = "" if not twin else ("yes" if worst < TARGET_MS else "**no**")
        lines.append(
            f"| {label} | `{url}` | {med:.1f} | {worst:.1f} | {med / base:.1f} "
            f"| {twin_text} | {ok} |"
        )
    if actions:
        lines += ["", "| action | ms |", "|---|---:|"]
        lines += [f"| {k} | {v:,.0f} |" for k, v in actions.items()]
    table = "\n".join(lines)
    print(table)
    if not args.write_docs:
        return
    m = machine()
    command = "bench/ui.py" + (" --quick" if args.quick else "")
    if args.list_only:
        command += f" --list-only {args.list_only}"
    block = (
        f"<!-- ui.py {leads}x{events} begin -->\n"
        + (
            f"### {leads:,} leads, scores only (the lead list and the overview)\n\n"
            if args.list_only
            else f"### {leads:,} leads, {events:,} events\n\n"
        )
        + f"`.venv/bin/python {command} --write-docs`, {datetime.now(UTC):%Y-%m-%d}, "
        f"{m['nproc']} cores ({m['cpu']}), load average {load} at the start, "
        f"{args.repeat} timed requests per page after one warm-up.\n\n{table}\n"
        f"<!-- ui.py {leads}x{events} end -->"
    )
    write_section(
        DOCS,
        "## Web interface",
        "Each page of the web interface fetched over HTTP from `leadscore serve` on a "
        "SQLite store built like the demo's; the target is under 500 ms per page.",
        METHOD,
        "ui.py",
        f"{leads}x{events}",
        block,
        new_file="# Benchmarks\n",
    )
    print(f"wrote {DOCS}", file=sys.stderr)


if __name__ == "__main__":
    main()
