"""Benchmark: the batch evaluator vs hand-written DuckDB SQL, pandas and the per-lead evaluator.

    .venv/bin/python bench/batch.py --quick --write-docs    # 50,000 leads / 1,000,000 events
    .venv/bin/python bench/batch.py --write-docs            # 1,000,000 leads / 20,000,000 events

The model is the conformance model (``../shared/conformance/model.yaml``), scored as of
``leadscore.sample.DEFAULT_AS_OF`` over synthetic data from :func:`leadscore.sample.write_sample`
(generated once into ``bench/data/<leads>x<events>/``, reused afterwards). Everything runs in one
process: the inputs are read once, registered once as the ``leads``/``events`` views of one DuckDB
connection, and then

- (a) the batch evaluator (``plan.execute``),
- (b) the same model written by hand in DuckDB SQL, run on the same connection,
- (c) the same model in plain vectorised pandas,

each run once as a warm-up and then ``--repeat`` times in turn (round-robin, so background load
hits all of them alike). (d) times the per-lead evaluator over enough leads to cover about 1.5M
events. The three table results must agree (numbers to 1e-9, labels exactly) and the per-lead
results must agree with the batch's, or the script exits with status 1.

``--write-docs`` refreshes this benchmark's section of ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import gc
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import ibis
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from rich.console import Console
from rich.table import Table

import leadscore
from leadscore.sample import DEFAULT_AS_OF, write_sample
from leadscore.scoring import PreparedInputs, iter_lead_events, prepare, register_inputs
from record import load_average, machine, write_section  # bench/ is the script's directory

ROOT = Path(__file__).resolve().parents[1]
MODEL_PATH = Path(__file__).resolve().parents[1].parent / "shared/conformance/model.yaml"
DATA_DIR = ROOT / "bench" / "data"
DOCS_PATH = ROOT / "docs" / "benchmarks.md"

FULL_SIZE = (1_000_000, 20_000_000)
QUICK_SIZE = (50_000, 1_000_000)
PER_LEAD_EVENTS = 1_500_000  # events the per-lead evaluator scores per timed run
LONG_HISTORY = 100  # row (d''): leads with at least this many events
RATIO_TARGET = 1.25  # batch evaluator time / hand-written SQL time
PER_LEAD_TARGET = 1_000_000  # events/s
TOLERANCE = 1e-9  # relative to max(1, |x|)

MICROS_PER_DAY = 86_400_000_000
# MODEL_SPEC.md's whitespace and number syntax, written out here on purpose: (b) and (c) are
# implementations independent of leadscore's own.
WS = " \t\n\r\x0b\x0c"
NUMBER = r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?"
LABEL_COLUMNS = ("lead_id", "grade", "band", "mql", "priority")
SQL_COMPARED = ("batch", "batch_sql", "hand", "pandas")  # steps shown as a ratio to (b)
COLUMNS = ("Step", "Best", "Median", "Events/s", "ms/lead", "vs hand SQL", "Target")
# The rules (b) and (c) implement; they are written for this model only.
EXPECTED_RULES = (
    "exec-title",
    "target-industry",
    "company-size",
    "student",
    "pricing-page",
    "email-open",
    "webinar",
    "page-views",
    "careers-page",
    "unsubscribed",
    "gone-quiet",
)

console = Console(stderr=True)


# --- data ---------------------------------------------------------------------------------------


def ensure_data(n_leads: int, n_events: int) -> Path:
    """The sample's directory, generated unless a complete earlier one is there."""
    directory = DATA_DIR / f"{n_leads}x{n_events}"
    done = directory / ".complete"
    if done.exists() and (directory / "leads.parquet").exists():
        console.print(f"[dim]data: reusing {directory.relative_to(ROOT)}[/]")
        return directory
    console.print(f"data: generating {n_leads:,} leads / {n_events:,} events into {directory}")
    start = time.perf_counter()
    write_sample(directory, n_leads, n_events, DEFAULT_AS_OF, seed=0, progress=True)
    done.write_text("written by bench/batch.py\n")
    console.print(f"data: generated in {time.perf_counter() - start:.1f} s")
    return directory


def micros(when: datetime) -> int:
    return (when - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


# --- (b) the model written by hand in DuckDB SQL ------------------------------------------------


def hand_sql(as_of_us: int) -> str:
    """model.yaml as an expert would write it by hand over the ``leads``/``events`` views
    (whose fields ``register_inputs`` names ``"f:url"``, ...: see ``lead_column``).

    MODEL_SPEC.md, for this model: text is compared trimmed (ASCII whitespace) and lower-cased.
    A trimmed needle occurs in the trimmed text exactly when it occurs in the untrimmed text, so
    ``contains`` needs no TRIM (which is slow in DuckDB), and ``ends_with`` only an RTRIM. Page
    views need their rank in time order for ``diminishing`` (a window over page views only); the
    webinar rule has no decay or diminishing, so each lead's distinct items simply count 30 each.
    ``age < 90`` days is tested on the integer column: (T - ts) / D < 90 exactly when
    ts > T - 90 * D. Each part reads ``events`` itself, so DuckDB pushes its filters into the
    scan (one shared CTE measured slower).
    """
    t = as_of_us
    age = f"CAST({t} - ts_us AS DOUBLE) / {MICROS_PER_DAY}"
    return f"""
WITH event_totals AS (
  SELECT lead_id,
    sum(15 * pow(0.5, {age} / 30))
      FILTER (type = 'page_view' AND contains(lower("f:url"), '/pricing')) AS pricing,
    count(*) FILTER (type = 'email_open' AND ts_us > {t - 90 * MICROS_PER_DAY}) AS email_opens,
    bool_or(type = 'page_view' AND contains(lower("f:url"), '/careers')) AS careers,
    bool_or(type = 'unsubscribe') AS unsubscribed,
    max(ts_us) AS last_ts
  FROM events
  WHERE ts_us <= {t}
  GROUP BY lead_id
),
page_views AS (
  SELECT lead_id, sum(3 * pow(0.7, k)) AS page_views
  FROM (
    SELECT lead_id, row_number() OVER (PARTITION BY lead_id ORDER BY ts_us) - 1 AS k
    FROM events
    WHERE type = 'page_view' AND ts_us <= {t}
  )
  GROUP BY lead_id
),
webinars AS (
  SELECT lead_id, 30 * count(DISTINCT coalesce(trim(item, '{WS}'), '')) AS webinar
  FROM events
  WHERE type = 'webinar_attended' AND ts_us <= {t}
  GROUP BY lead_id
),
profile AS (
  SELECT lead_id,
    lower("f:job_title") AS title,
    lower(trim("f:industry", '{WS}')) AS industry,
    trim("f:employees", '{WS}') AS employees,
    lower(rtrim("f:email", '{WS}')) AS email
  FROM leads
),
rules AS (
  SELECT p.lead_id,
    CASE WHEN contains(p.title, 'vp') OR contains(p.title, 'chief')
           OR contains(p.title, 'president') OR contains(p.title, 'head of')
         THEN 25 ELSE 0 END AS r_exec,
    CASE WHEN p.industry IN ('software', 'financial services', 'healthcare')
         THEN 20 ELSE 0 END AS r_industry,
    CASE WHEN CASE WHEN regexp_full_match(p.employees, '{NUMBER}')
                   THEN TRY_CAST(p.employees AS DOUBLE) END BETWEEN 200 AND 5000
         THEN 15 ELSE 0 END AS r_size,
    CASE WHEN contains(p.title, 'student') OR suffix(p.email, '.edu')
         THEN -30 ELSE 0 END AS r_student,
    coalesce(e.pricing, 0) AS r_pricing,
    least(2 * coalesce(e.email_opens, 0), 10) AS r_email,
    coalesce(w.webinar, 0) AS r_webinar,
    coalesce(v.page_views, 0) AS r_pages,
    CASE WHEN e.careers THEN -20 ELSE 0 END AS r_careers,
    CASE WHEN e.unsubscribed THEN -40 ELSE 0 END AS r_unsub,
    CASE WHEN e.last_ts IS NULL
           OR CAST({t} - e.last_ts AS DOUBLE) / {MICROS_PER_DAY} >= 60
         THEN -15 ELSE 0 END AS r_quiet
  FROM profile p
  LEFT JOIN event_totals e USING (lead_id)
  LEFT JOIN page_views v USING (lead_id)
  LEFT JOIN webinars w USING (lead_id)
),
grouped AS (
  SELECT *,
    least(r_exec + r_industry + r_size + r_student, 100) AS g_fit,
    greatest(least(r_pricing + r_email + r_webinar + r_pages + r_careers + r_unsub + r_quiet,
                   150), -50) AS g_eng
  FROM rules
),
graded AS (
  SELECT *,
    g_fit + g_eng AS total,
    CASE WHEN g_fit >= 60 THEN 'A' WHEN g_fit >= 40 THEN 'B' WHEN g_fit >= 20 THEN 'C'
         WHEN g_fit >= 0 THEN 'D' ELSE 'F' END AS grade,
    CASE WHEN g_fit + g_eng >= 40 THEN 'hot' WHEN g_fit + g_eng >= 20 THEN 'warm'
         ELSE 'cold' END AS band
  FROM grouped
)
SELECT lead_id,
  total::DOUBLE AS score, g_fit::DOUBLE AS fit, g_eng::DOUBLE AS engagement,
  grade, band, total >= 40 AS mql,
  CASE WHEN grade IN ('A', 'B', 'C')
       THEN grade || CASE band WHEN 'hot' THEN '1' WHEN 'warm' THEN '2' ELSE '3' END
  END AS priority,
  g_fit::DOUBLE AS "group:fit", g_eng::DOUBLE AS "group:engagement",
  r_exec::DOUBLE AS "rule:exec-title", r_industry::DOUBLE AS "rule:target-industry",
  r_size::DOUBLE AS "rule:company-size", r_student::DOUBLE AS "rule:student",
  r_pricing::DOUBLE AS "rule:pricing-page", r_email::DOUBLE AS "rule:email-open",
  r_webinar::DOUBLE AS "rule:webinar", r_pages::DOUBLE AS "rule:page-views",
  r_careers::DOUBLE AS "rule:careers-page", r_unsub::DOUBLE AS "rule:unsubscribed",
  r_quiet::DOUBLE AS "rule:gone-quiet"
FROM graded
"""


# --- (c) the model in pandas --------------------------------------------------------------------


def score_pandas(leads: pd.DataFrame, events: pd.DataFrame, as_of_us: int) -> pd.DataFrame:
    """model.yaml in straightforward vectorised pandas, MODEL_SPEC.md taken literally."""
    ts = events["ts"].astype("int64")  # datetime64[us, UTC] -> microseconds
    visible = ts <= as_of_us
    ev = events.loc[visible, ["lead_id", "type", "item", "url"]]
    ev["ts_us"] = ts[visible]
    ev["age"] = (as_of_us - ev["ts_us"]) / MICROS_PER_DAY
    ids = leads["lead_id"]
    lead_index = pd.Index(ids)

    def per_lead(values: pd.Series, fill: float = 0.0) -> np.ndarray:
        return values.reindex(ids).fillna(fill).to_numpy(dtype=np.float64)

    def has(lead_ids: pd.Series) -> np.ndarray:
        return ids.isin(lead_ids.unique()).to_numpy()

    def sum_in_order(lead_ids: pd.Series, values: pd.Series) -> np.ndarray:
        # Left to right, in the rows' (time) order, like the per-lead evaluator: pandas'
        # groupby().sum() is compensated (Kahan) and can land on the other side of a threshold.
        codes = lead_index.get_indexer(lead_ids)
        known = codes >= 0  # events of leads not in the leads input score nobody
        weights = values.to_numpy(dtype=np.float64)[known]
        return np.bincount(codes[known], weights=weights, minlength=len(ids))

    pv = ev[ev["type"] == "page_view"].sort_values("ts_us", kind="stable")
    url = pv["url"].str.strip(WS).str.lower()
    pricing = url.str.contains("/pricing", regex=False, na=False)
    decayed = 15.0 * 0.5 ** (pv["age"][pricing] / 30.0)
    r_pricing = sum_in_order(pv["lead_id"][pricing], decayed)
    careers = url.str.contains("/careers", regex=False, na=False)
    r_careers = np.where(has(pv["lead_id"][careers]), -20.0, 0.0)
    k = pv.groupby("lead_id", sort=False).cumcount()
    r_pages = sum_in_order(pv["lead_id"], 3.0 * 0.7**k)

    opens = ev[(ev["type"] == "email_open") & (ev["age"] < 90.0)]
    r_email = np.minimum(2.0 * per_lead(opens.groupby("lead_id").size()), 10.0)
    webinar = ev[ev["type"] == "webinar_attended"]
    items = pd.DataFrame(
        {"lead_id": webinar["lead_id"], "item": webinar["item"].str.strip(WS).fillna("")}
    ).drop_duplicates()
    r_webinar = 30.0 * per_lead(items.groupby("lead_id").size())
    r_unsub = np.where(has(ev["lead_id"][ev["type"] == "unsubscribe"]), -40.0, 0.0)
    last = per_lead(ev.groupby("lead_id")["ts_us"].max().astype(np.float64), np.nan)
    quiet = np.isnan(last) | ((as_of_us - last) / MICROS_PER_DAY >= 60.0)
    r_quiet = np.where(quiet, -15.0, 0.0)

    title = leads["job_title"].str.strip(WS).str.lower()
    exec_title = np.zeros(len(leads), dtype=bool)
    for needle in ("vp", "chief", "president", "head of"):
        exec_title |= title.str.contains(needle, regex=False, na=False).to_numpy()
    r_exec = np.where(exec_title, 25.0, 0.0)
    industry = leads["industry"].str.strip(WS).str.lower()
    target = industry.isin(["software", "financial services", "healthcare"]).to_numpy()
    r_industry = np.where(target, 20.0, 0.0)
    employees = leads["employees"].str.strip(WS)
    number = pd.to_numeric(employees.where(employees.str.fullmatch(NUMBER, na=False)))
    r_size = np.where(number.between(200.0, 5000.0).to_numpy(), 15.0, 0.0)
    student = (
        title.str.contains("student", regex=False, na=False).to_numpy()
        | leads["email"].str.strip(WS).str.lower().str.endswith(".edu", na=False).to_numpy()
    )
    r_student = np.where(student, -30.0, 0.0)

    fit = np.minimum(r_exec + r_industry + r_size + r_student, 100.0)
    engagement = np.minimum(
        np.maximum(
            r_pricing + r_email + r_webinar + r_pages + r_careers + r_unsub + r_quiet, -50.0
        ),
        150.0,
    )
    score = fit + engagement
    grade = np.select([fit >= 60, fit >= 40, fit >= 20, fit >= 0], ["A", "B", "C", "D"], "F")
    band = np.select([score >= 40, score >= 20], ["hot", "warm"], "cold")
    digit = np.select([band == "hot", band == "warm"], ["1", "2"], "3")
    priority = np.where(np.isin(grade, ["A", "B", "C"]), np.char.add(grade, digit), None)
    columns = {
        "lead_id": ids.to_numpy(),
        "score": score,
        "fit": fit,
        "engagement": engagement,
        "grade": grade,
        "band": band,
        "mql": score >= 40,
        "priority": priority,
        "group:fit": fit,
        "group:engagement": engagement,
    }
    rules = (r_exec, r_industry, r_size, r_student, r_pricing, r_email, r_webinar, r_pages)
    rules += (r_careers, r_unsub, r_quiet)
    for rule_id, values in zip(EXPECTED_RULES, rules, strict=True):
        columns[f"rule:{rule_id}"] = values
    return pd.DataFrame(columns)


def pandas_to_arrow(frame: pd.DataFrame) -> pa.Table:
    return pa.Table.from_pandas(frame, preserve_index=False)


# --- agreement ----------------------------------------------------------------------------------


def compare(reference: pa.Table, other: pa.Table, label: str, subset: bool = False) -> list[str]:
    """How ``other`` differs from ``reference``, joined on lead_id (empty when they agree)."""
    if subset:
        keep = pc.is_in(reference.column("lead_id"), value_set=other.column("lead_id"))
        reference = reference.filter(keep)
    missing = [c for c in reference.column_names if c not in other.column_names]
    if missing:
        return [f"{label}: missing columns {missing}"]
    ref = reference.sort_by("lead_id")
    oth = other.select(reference.column_names).sort_by("lead_id")
    ref_ids = pc.cast(ref.column("lead_id"), pa.string())
    if ref.num_rows != oth.num_rows or not ref_ids.equals(
        pc.cast(oth.column("lead_id"), pa.string())
    ):
        return [f"{label}: lead ids differ ({ref.num_rows:,} vs {oth.num_rows:,} rows)"]
    ids = ref_ids.to_numpy()
    problems = []
    for name in ref.column_names[1:]:
        if name in LABEL_COLUMNS:
            x = np.array(ref.column(name).to_pylist(), dtype=object)
            y = np.array(oth.column(name).to_pylist(), dtype=object)
            bad = x != y
        else:
            x = pc.cast(ref.column(name), pa.float64()).to_numpy()
            y = pc.cast(oth.column(name), pa.float64()).to_numpy()
            bad = ~(np.abs(x - y) <= TOLERANCE * np.maximum(1.0, np.abs(x)))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            a, b = (v.item() if isinstance(v, np.generic) else v for v in (x[i], y[i]))
            problems.append(
                f"{label}: {name!r} differs for {int(bad.sum()):,} lead(s), "
                f"e.g. {ids[i]}: {a!r} vs {b!r}"
            )
    return problems


# --- timing -------------------------------------------------------------------------------------


@dataclass
class Step:
    key: str
    label: str
    run: Callable[[], Any]
    times: list[float] = field(default_factory=list)
    result: Any = None
    events: int = 0  # events processed per run, for events/s
    leads: int = 0

    @property
    def best(self) -> float:
        return min(self.times)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def rate(self) -> float:
        return self.events / self.best if self.events else 0.0

    def once(self) -> None:
        start = time.perf_counter()
        self.result = self.run()
        self.times.append(time.perf_counter() - start)


def round_robin(steps: Sequence[Step], repeat: int) -> None:
    """A warm-up run of each, then ``repeat`` rounds running each in turn."""
    for s in steps:
        with console.status(f"warm-up: {s.label}"):
            s.run()
    for r in range(repeat):
        for s in steps:
            with console.status(f"round {r + 1}/{repeat}: {s.label}"):
                s.once()
            console.print(f"[dim]round {r + 1}/{repeat}: {s.label}: {s.times[-1]:.3f} s[/]")


def per_lead_pairs(
    prepared: PreparedInputs, n_events: int, min_events: int = 0
) -> list[tuple[dict[str, Any], list[leadscore.Event]]]:
    """The first leads (input order) with at least ``min_events`` events, covering about
    ``n_events`` events, grouped up front."""
    position = pc.index_in(prepared.events.column("lead_id"), value_set=prepared.leads["lead_id"])
    position = pc.fill_null(position, -1).to_numpy()
    counts = np.bincount(position[position >= 0], minlength=prepared.leads.num_rows)
    chosen = np.flatnonzero(counts >= min_events)
    n_leads = min(int(np.searchsorted(np.cumsum(counts[chosen]), n_events)) + 1, len(chosen))
    keep = np.zeros(prepared.leads.num_rows + 1, dtype=bool)  # the last slot: unknown leads
    keep[chosen[:n_leads]] = True
    sub = PreparedInputs(
        prepared.leads.filter(pa.array(keep[:-1])), prepared.events.filter(pa.array(keep[position]))
    )
    return list(iter_lead_events(sub))


def per_lead_table(results: list[leadscore.ScoreResult]) -> pa.Table:
    rows: dict[str, list[Any]] = {}
    for r in results:
        for k, v in r.as_row().items():
            rows.setdefault(k, []).append(v)
    return pa.table(rows)


# --- report -------------------------------------------------------------------------------------


@dataclass
class Report:
    n_leads: int
    n_events: int
    repeat: int
    command: str
    date: str
    prepare_s: float
    load: str
    steps: dict[str, Step]
    problems: list[str]
    per_lead_checked: int

    def ratio(self, key: str) -> float:
        return self.steps[key].best / self.steps["hand"].best

    def rows(self) -> list[tuple[str, ...]]:
        """One row per step, in COLUMNS order."""

        def secs(t: float) -> str:
            return f"{t * 1000:.1f} ms" if t < 1 else f"{t:.2f} s"

        out = []
        for s in self.steps.values():
            rate = f"{s.rate:,.0f}" if s.events else ""
            per_lead = f"{s.best / s.leads * 1000:.3f}" if s.leads else ""
            vs = f"{self.ratio(s.key):.2f}x" if s.key in SQL_COMPARED else ""
            target = ""
            if s.key == "batch":
                met = self.ratio("batch") <= RATIO_TARGET
                target = f"<= {RATIO_TARGET}x: {'met' if met else 'MISSED'}"
            elif s.key == "per_lead":
                met = s.rate >= PER_LEAD_TARGET
                target = f">= {PER_LEAD_TARGET:,} events/s: {'met' if met else 'MISSED'}"
            out.append((s.label, secs(s.best), secs(s.median), rate, per_lead, vs, target))
        return out

    def check_line(self) -> str:
        if self.problems:
            return f"FAIL: {len(self.problems)} disagreement(s)"
        return (
            f"PASS: batch evaluator, hand-written SQL and pandas agree on all {self.n_leads:,} "
            f"leads (numbers to 1e-9 relative, grade/band/mql/priority exactly); the "
            f"per-lead evaluator agrees with the batch on its {self.per_lead_checked:,} leads"
        )


def print_report(report: Report) -> None:
    out = Console() if sys.stdout.isatty() else Console(width=130)
    table = Table(
        title=f"leadscore batch benchmark: {report.n_leads:,} leads, {report.n_events:,} events "
        f"(best and median of {report.repeat} runs)"
    )
    for name in COLUMNS:
        table.add_column(name, justify="left" if name in ("Step", "Target") else "right")
    for row in report.rows():
        style = "red" if "MISSED" in row[-1] else ("green" if "met" in row[-1] else None)
        table.add_row(*row, style=style)
    out.print(table)
    style = "bold red" if report.problems else "bold green"
    out.print(f"[{style}]CHECK {report.check_line()}[/]")
    for p in report.problems:
        out.print(f"  [red]{p}[/]")


# --- docs/benchmarks.md -------------------------------------------------------------------------

SECTION = "## Batch evaluator (bench/batch.py)"
DOC_INTRO = """# Benchmarks

Measured numbers for leadscore. Each section is written by the script named in its heading:
rerun the script (with `--write-docs`) rather than editing numbers by hand. Machines differ and
shared ones are noisy, so compare the ratios, which are measured within one run, rather than
absolute times across machines.
"""
SECTION_INTRO = """\
The batch evaluator (`plan.execute`: the model compiled to Ibis, run on DuckDB) against the same
model written by hand in DuckDB SQL and in plain pandas, plus the per-lead evaluator's
throughput. Model: `shared/conformance/model.yaml`, scored as of `leadscore.sample.DEFAULT_AS_OF`
over synthetic data from `leadscore.sample.write_sample(..., seed=0)`. Targets: the batch
evaluator within 1.25x of the hand-written SQL; the per-lead evaluator at least 1,000,000
events/s.
"""
METHOD = """\
### How the numbers were obtained

Everything runs in one Python process. The inputs are read once with
`leadscore.scoring.prepare` and registered once, with `register_inputs`, as the `leads` and
`events` views of a single `ibis.duckdb.connect()` connection; the batch evaluator and the
hand-written SQL both run on that connection (same in-memory Arrow tables, same DuckDB threads),
and pandas gets DataFrames converted from the same tables before any timing. `compile_model` is
timed on its own. Then every step runs once as a warm-up, followed by R rounds in which the
steps run one after the other, so that a burst of background load hits them all alike; the table
shows the best and the median of the R runs, and events/s is the input's events divided by
the best time. Row (a') is a diagnostic: the SQL the plan compiles to, run on the raw DuckDB
connection without Ibis (no SQL generation, no result conversion). The per-lead rows time a
plain loop of `score_lead` over the first leads of the input covering about 1.5M events (row
(d''): the first leads with at least 100 events each, covering as many where the input has
them; left out when no lead has that many), with their
events grouped into `Event` lists beforehand, one lead's after another as the store reads them
back (grouping is not timed); ms/lead is the mean. In rows (d) to (d'') each result is read
(its score) and dropped, as the service's real-time rescoring does (it stores the numbers and
moves on); row (d*) is a diagnostic: the same loop as (d) keeping every result in one list.
It is slower only through Python's cyclic garbage collector, which rescans the growing heap of
kept results (with the collector paused it times as (d)). A lead costs a fixed part (its
profile rules, one result per rule) and a part per event: (d) is mostly the first, (d'')
mostly the second. Before the numbers are written, the batch evaluator, the hand-written SQL
and pandas are joined on `lead_id` and must agree on every column (numbers to 1e-9 relative to
max(1, |x|), labels exactly), as must the per-lead evaluator's results for its leads (those of
(d*), and of an untimed run with explain=True and of one over the long histories). Machines,
and above all shared ones, are noisy: the targets are ratios measured in the same run, not
absolute times.
"""


def versions() -> str:
    return ", ".join(
        f"{name} {version}"
        for name, version in (
            ("Python", platform.python_version()),
            ("DuckDB", duckdb.__version__),
            ("Ibis", ibis.__version__),
            ("PyArrow", pa.__version__),
            ("pandas", pd.__version__),
            ("NumPy", np.__version__),
            ("leadscore", leadscore.__version__),
        )
    )


def size_name(n_leads: int, n_events: int) -> str:
    if (n_leads, n_events) == FULL_SIZE:
        return "Full size"
    if (n_leads, n_events) == QUICK_SIZE:
        return "Quick (`--quick`)"
    return "Custom size"


def markdown_block(report: Report, threads: str) -> str:
    m = machine()
    key = f"{report.n_leads}x{report.n_events}"
    lines = [
        f"<!-- bench/batch.py {key} begin -->",
        f"### {size_name(report.n_leads, report.n_events)}: {report.n_leads:,} leads, "
        f"{report.n_events:,} events",
        "",
        f"- Command: `{report.command}`",
        f"- Date: {report.date}",
        f"- Machine: {m['nproc']} CPUs ({m['cpu']}), {m['memory']} memory, {m['os']}; "
        f"DuckDB threads: {threads}; load average at the start: {report.load}",
        f"- Versions: {versions()}",
        f"- Data: {report.n_leads:,} leads, {report.n_events:,} events "
        f"(`bench/data/{key}/`, read and normalised in {report.prepare_s:.1f} s)",
        f"- Repeats: best and median of {report.repeat}, after a warm-up",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for row in report.rows():
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |")
    ratio = report.ratio("batch")
    rate = report.steps["per_lead"].rate
    typical, long = report.steps["per_lead"], report.steps.get("per_lead_long")
    long_text = (
        f"{long.rate:,.0f} events/s over leads with at least {LONG_HISTORY} events "
        f"({long.events / long.leads:.0f} per lead on average)"
        if long is not None
        else f"no lead has {LONG_HISTORY} events or more"
    )
    lines += [
        "",
        f"- Batch evaluator / hand-written SQL: **{ratio:.2f}x** (target <= {RATIO_TARGET}x: "
        f"{'met' if ratio <= RATIO_TARGET else 'missed'}); pandas / hand-written SQL: "
        f"{report.ratio('pandas'):.2f}x.",
        f"- Per-lead evaluator: **{rate:,.0f} events/s** (target >= {PER_LEAD_TARGET:,}: "
        f"{'met' if rate >= PER_LEAD_TARGET else 'missed'}) over the input's first leads, "
        f"{typical.events / typical.leads:.1f} events per lead on average; {long_text}.",
        f"- Agreement: {report.check_line()}.",
    ]
    lines += [f"  - {p}" for p in report.problems]
    lines += [f"<!-- bench/batch.py {key} end -->"]
    return "\n".join(lines)


def write_docs(report: Report, threads: str) -> None:
    block = markdown_block(report, threads)
    key = f"{report.n_leads}x{report.n_events}"
    write_section(
        DOCS_PATH, SECTION, SECTION_INTRO, METHOD, "bench/batch.py", key, block, new_file=DOC_INTRO
    )
    console.print(f"docs: wrote {DOCS_PATH.relative_to(ROOT)}")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="50,000 leads / 1,000,000 events")
    p.add_argument("--leads", type=int, help="number of leads (overrides the size)")
    p.add_argument("--events", type=int, help="number of events (overrides the size)")
    p.add_argument("--repeat", type=int, default=3, help="timed runs per step (default 3)")
    p.add_argument("--write-docs", action="store_true", help="refresh docs/benchmarks.md")
    args = p.parse_args(argv)
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    n_leads, n_events = QUICK_SIZE if args.quick else FULL_SIZE
    n_leads = args.leads if args.leads is not None else n_leads
    n_events = args.events if args.events is not None else n_events
    command = " ".join([".venv/bin/python", "bench/batch.py", *(argv or sys.argv[1:])])
    date = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    load = load_average()

    directory = ensure_data(n_leads, n_events)
    model = leadscore.load_model(MODEL_PATH)
    rule_ids = tuple(r.id for r in model.rules)
    if rule_ids != EXPECTED_RULES:
        console.print(f"[red]the hand-written versions implement {EXPECTED_RULES}, not {rule_ids}")
        return 2
    as_of_us = micros(DEFAULT_AS_OF)

    with console.status("reading inputs (leadscore.scoring.prepare)"):
        start = time.perf_counter()
        prepared = prepare(directory / "leads.parquet", directory / "events.parquet")
        prepare_s = time.perf_counter() - start
    console.print(f"inputs: {prepared.leads.num_rows:,} leads, {prepared.events.num_rows:,} events")

    compile_step = Step("compile", "compile_model", lambda: leadscore.compile_model(model))
    compile_step.run()  # warm-up: first-use imports and caches
    for _ in range(args.repeat):
        compile_step.once()
    plan = compile_step.result
    con = ibis.duckdb.connect()
    register_inputs(con, prepared, [plan])
    raw = con.con
    threads = str(raw.execute("SELECT current_setting('threads')").fetchall()[0][0])
    plan_sql = con.compile(plan.expr, params={plan.as_of: as_of_us})
    sql = hand_sql(as_of_us)
    with console.status("converting inputs to pandas (not timed)"):
        leads_df = prepared.leads.to_pandas()
        events_df = prepared.events.to_pandas()

    total = prepared.events.num_rows
    steps = [
        Step("batch", "(a) batch evaluator", lambda: plan.execute(con, as_of_us), events=total),
        Step(
            "batch_sql",
            "(a') plan's SQL, raw DuckDB",
            lambda: raw.sql(plan_sql).to_arrow_table(),
            events=total,
        ),
        Step("hand", "(b) hand-written SQL", lambda: raw.sql(sql).to_arrow_table(), events=total),
        Step(
            "pandas",
            "(c) pandas",
            lambda: score_pandas(leads_df, events_df, as_of_us),
            events=total,
        ),
    ]
    round_robin(steps, args.repeat)

    with console.status("grouping events for the per-lead evaluator (not timed)"):
        pairs = per_lead_pairs(prepared, PER_LEAD_EVENTS)
        long_pairs = per_lead_pairs(prepared, PER_LEAD_EVENTS, LONG_HISTORY)
        gc.collect()
        # The pairs stay alive through every run: keep the collector from rescanning them.
        gc.freeze()

    def per_lead(
        chosen: list[tuple[dict[str, Any], list[leadscore.Event]]], explain: bool
    ) -> float:
        """Each result read and dropped, as the service's rescoring uses them."""
        total = 0.0
        for lead, events in chosen:
            total += leadscore.score_lead(model, lead, events, DEFAULT_AS_OF, explain=explain).score
        return total

    def per_lead_kept(
        chosen: list[tuple[dict[str, Any], list[leadscore.Event]]], explain: bool
    ) -> list[leadscore.ScoreResult]:
        return [
            leadscore.score_lead(model, lead, events, DEFAULT_AS_OF, explain=explain)
            for lead, events in chosen
        ]

    per_lead_steps = [
        Step("per_lead", "(d) per-lead evaluator", lambda: per_lead(pairs, False)),
        Step("per_lead_explain", "(d') per-lead, explain=True", lambda: per_lead(pairs, True)),
    ]
    if long_pairs:
        per_lead_steps.append(
            Step(
                "per_lead_long",
                f"(d'') per-lead, leads with >= {LONG_HISTORY} events",
                lambda: per_lead(long_pairs, False),
            )
        )
    else:
        console.print(f"[yellow]no lead has {LONG_HISTORY} events or more: no row (d'')[/]")
    per_lead_steps.append(
        Step(
            "per_lead_kept", "(d*) per-lead, every result kept", lambda: per_lead_kept(pairs, False)
        )
    )
    for s, chosen in zip(
        per_lead_steps,
        (pairs, pairs, long_pairs, pairs) if long_pairs else (pairs, pairs, pairs),
        strict=True,
    ):
        s.events, s.leads = sum(len(events) for _, events in chosen), len(chosen)
    try:
        round_robin(per_lead_steps, args.repeat)
        with console.status("per-lead results for the agreement check (not timed)"):
            explained = per_lead_kept(pairs, True)
            long_results = per_lead_kept(long_pairs, False)
    finally:
        gc.unfreeze()

    with console.status("checking agreement"):
        reference = steps[0].result
        problems = compare(reference, steps[2].result, "hand-written SQL")
        problems += compare(reference, pandas_to_arrow(steps[3].result), "pandas")
        problems += compare(
            reference, per_lead_table(per_lead_steps[-1].result), "per-lead", subset=True
        )
        problems += compare(reference, per_lead_table(explained), "per-lead explain", subset=True)
        if long_pairs:
            problems += compare(
                reference, per_lead_table(long_results), "per-lead long", subset=True
            )

    by_key = {s.key: s for s in [compile_step, *steps, *per_lead_steps]}
    report = Report(
        n_leads=prepared.leads.num_rows,
        n_events=total,
        repeat=args.repeat,
        command=command,
        date=date,
        prepare_s=prepare_s,
        load=load,
        steps=by_key,
        problems=problems,
        per_lead_checked=len({lead["lead_id"] for lead, _ in [*pairs, *long_pairs]}),
    )
    print_report(report)
    if args.write_docs:
        write_docs(report, threads)
    con.disconnect()
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
