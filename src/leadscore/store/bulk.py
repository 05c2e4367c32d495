"""Bulk import of leads, events and outcomes from files (CSV, Parquet, JSON lines, JSON).

A file is read in batches (:mod:`leadscore.inputs.batches`: a few megabytes of text, or
50,000 rows, at a time), so that memory is bounded by a batch whatever the file's size. Each
batch is checked like the scoring inputs (:mod:`leadscore.inputs`: bad rows are named by
file, line and column, or skipped with ``skip_bad_rows``) and stored in chunks, each chunk in
a transaction of its own; the leads are rescored once at the end with the batch evaluator,
instead of once per row. A bad row stops the import at its batch: what the batches before it
stored stays stored, and the report handed in says how far the import got
(:attr:`ImportReport.done`), so that a caller can tell its user.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

import pyarrow as pa
import pyarrow.compute as pc

from leadscore.errors import InputError, InputProblem
from leadscore.inputs import (
    LoadReport,
    NamedData,
    RowNumbers,
    json_value,
    normalize_events,
    normalize_leads,
    normalize_outcomes,
)
from leadscore.inputs.batches import Batch, InputFile, open_input
from leadscore.store.keeper import RescoreReport, Store
from leadscore.store.leads import STAGES, EventInput, LeadInput
from leadscore.store.lifecycle import OutcomeInput, add_outcomes, outcomes_for_unknown_leads

__all__ = ["ImportReport", "Source", "import_events", "import_leads", "import_outcomes"]

Progress = Callable[[str, int, int], None]
# A file's path (or an input opened by leadscore.inputs.batches.open_input), an upload, a table
Source: TypeAlias = str | Path | pa.Table | NamedData | InputFile
CHUNK = 2000
LEAD_COLUMNS = ("email", "stage", "owner")
EVENT_ID_COLUMNS = ("event_id", "message_id", "messageId")


@dataclass
class ImportReport:
    """What an import did; kept current as it goes (pass one in to know how far an import
    that stopped part way got)."""

    kind: str
    rows: int = 0  # rows read (not those the reading's checks skipped)
    stored: int = 0  # new or updated rows
    repeated: int = 0  # events whose id was already stored, outcomes already recorded
    unknown: int = 0  # outcomes for leads the store does not hold (kept)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    rescore: RescoreReport | None = None
    done: int = 0  # rows of the file dealt with (stored, repeated or skipped), chunks committed
    done_to: str = ""  # where the last of them is in the file: "line 4001"
    total: int | None = None  # the file's rows, once every one is read
    stored_all: bool = False  # every row of the file is dealt with; the rescoring is left


class _Run:
    """An import's input read in batches, its progress told as chunks are committed."""

    def __init__(
        self, source: Source, report: ImportReport, progress: Progress | None, what: str
    ) -> None:
        self.input = source if isinstance(source, InputFile) else open_input(source)
        self.own = not isinstance(source, InputFile)  # opened here: closed here
        self.label = _label(source)
        self.report = report
        self.progress = progress
        self.what = what
        self.before = 0  # rows of the batches before the current one

    def batches(self) -> Iterator[Batch]:
        try:
            for batch in self.input.batches():
                yield batch
                self.before = self.report.done = self.report.rows  # skipped rows included
            self.report.stored_all = True
        finally:
            if self.own:
                self.input.close()

    def read(self, rows: int) -> None:
        """A batch of ``rows`` rows is read (and checked)."""
        self.report.rows += rows
        if self.input.at_end:
            self.report.total = self.report.rows

    def stored(self, done: int, last: str) -> None:
        """The first ``done`` rows of the current batch are committed, the last at ``last``."""
        self.report.done = self.before + done
        self.report.done_to = last
        if self.progress:
            self.progress(self.what, self.report.done, self.expected())

    def expected(self) -> int:
        """The rows of the file: exact once every one is read, else estimated from how much
        of it is read (-1: not known, reading from a pipe)."""
        rows = self.report.rows
        if self.report.total is not None:
            return self.report.total
        fraction = self.input.fraction()
        return max(rows + 1, round(rows / fraction)) if fraction else -1  # (not yet done)


# The outcomes leadscore itself records or counts by default (dispositions, --conversion)
USUAL_OUTCOMES = ("sql", "opportunity", "won", "lost", "rejected")
# What the API refuses, refused here too: the store keeps ids, types and items this long.
LIMITS = {"lead_id": 200, "type": 200, "item": 2000, "email": 320, "owner": 200}


@dataclass
class _Places:
    """How people find an input's rows: the unit (``line`` of a CSV or JSON-lines file,
    ``row`` otherwise) and each row's number, kept in step with the rows left out."""

    unit: str
    numbers: RowNumbers

    @classmethod
    def of(cls, load: LoadReport, label: str, rows: int) -> _Places:
        if label in load.sources:
            _, unit, numbers = load.sources[label]
            return cls(unit, numbers)
        return cls("row", RowNumbers.plain(rows))

    def __call__(self, index: int) -> str:
        return f"{self.unit} {self.numbers[index]}"


def _within_limits(
    table: pa.Table,
    label: str,
    skip_bad_rows: bool,
    report: ImportReport,
    places: _Places,
    limits: dict[str, int] = LIMITS,
    stages: bool = False,
    earlier: int = 0,
) -> pa.Table:
    """``table`` without rows that the store cannot keep (reported as errors naming their
    line, or skipped and listed with ``skip_bad_rows``): ids, types or items too long, text
    holding the NUL character (PostgreSQL cannot store it), and with ``stages`` a stage that
    is not one of :data:`STAGES`. ``places`` follows the rows kept; ``earlier``: rows of the
    input already imported."""
    for name in table.column_names:
        if "\x00" in name:
            raise InputError(
                [InputProblem(label, f"a column's name holds the NUL character: {name!r}")]
            )
    bad: dict[int, str] = {}
    for column, limit in limits.items():
        if column not in table.column_names:
            continue
        for i, v in enumerate(table.column(column).to_pylist()):
            if v is not None and i not in bad and len(v) > limit:
                bad[i] = f"column {column!r}: longer than {limit} characters"
    for column in table.column_names:
        values = table.column(column)
        if not pa.types.is_string(values.type) and not pa.types.is_large_string(values.type):
            continue
        nul = pc.fill_null(pc.match_substring(values, "\x00"), False)
        if pc.any(nul).as_py():
            for i in pc.indices_nonzero(nul).to_pylist():
                bad.setdefault(i, f"column {column!r}: holds the NUL character")
    if stages and "stage" in table.column_names:
        for i, v in enumerate(table.column("stage").to_pylist()):
            if v is not None and v.strip().lower() not in STAGES and i not in bad:
                bad[i] = f"column 'stage': unknown stage {v!r}; stages are {', '.join(STAGES)}"
    if not bad:
        return table
    problems = [InputProblem(label, f"{places(i)}: {msg}") for i, msg in sorted(bad.items())]
    if not skip_bad_rows:
        imported = "" if earlier else "; nothing was imported"
        raise InputError(problems[:20], f"{len(bad)} bad row(s){imported}")
    report.errors += [str(p) for p in problems]
    keep = pa.array([i not in bad for i in range(table.num_rows)])
    places.numbers = places.numbers.filter(keep)
    return table.filter(keep)


def _chunks(n: int) -> range:
    return range(0, n, CHUNK)


def import_leads(
    store: Store,
    source: Source,
    *,
    lead_id_column: str = "lead_id",
    skip_bad_rows: bool = False,
    fire_triggers: bool = False,
    progress: Progress | None = None,
    report: ImportReport | None = None,
) -> ImportReport:
    """Create or update the leads of a file; every other column is a profile field. The ids
    of the file are kept while it is read (a repeated id is a bad row): some 100 bytes a
    lead."""
    report = report if report is not None else ImportReport("leads")
    load = LoadReport()
    run = _Run(source, report, progress, "storing leads")
    seen: set[str] = set()
    for batch in run.batches():
        table = normalize_leads(
            batch,
            lead_id_column,
            skip_bad_rows=skip_bad_rows,
            report=load,
            label=run.label,
            seen=seen,
        )
        places = _Places.of(load, "leads", table.num_rows)  # (as normalize_leads keeps them)
        run.read(table.num_rows)
        table = _within_limits(
            table, run.label, skip_bad_rows, report, places, stages=True, earlier=report.done
        )
        rows = table.to_pylist()
        for start in _chunks(len(rows)):
            items = []
            for row in rows[start : start + CHUNK]:
                lead_id, email = row.pop("lead_id"), row.pop("email", None)
                stage, owner = row.pop("stage", None), row.pop("owner", None)
                fields = {k: v for k, v in row.items() if v is not None}
                stage = None if stage is None else stage.strip().lower()
                items.append(LeadInput(lead_id, email, fields, stage, owner))
            outcomes = store.upsert_leads(items, rescore=False)
            store.db.let_others_write()
            report.stored += sum(o.status != "error" for o in outcomes)
            report.errors += [
                f"{places(start + o.index)}: {o.error}" for o in outcomes if o.status == "error"
            ]
            run.stored(start + len(items), places(start + len(items) - 1))
    report.warnings = list(load.warnings)
    report.rescore = store.rescore_all("profile", fire_triggers=fire_triggers, progress=progress)
    return report


def import_events(
    store: Store,
    source: Source,
    *,
    lead_id_column: str = "lead_id",
    skip_bad_rows: bool = False,
    fire_triggers: bool = False,
    progress: Progress | None = None,
    report: ImportReport | None = None,
) -> ImportReport:
    """Store the events of a file (``lead_id``, ``type``, ``ts``, optional ``item`` and an
    ``event_id`` that makes a re-import idempotent; other columns are properties)."""
    report = report if report is not None else ImportReport("events")
    load = LoadReport()
    run = _Run(source, report, progress, "storing events")
    without_ids = False
    for batch in run.batches():
        table = normalize_events(
            batch, lead_id_column, skip_bad_rows=skip_bad_rows, report=load, label=run.label
        )
        places = _Places.of(load, "events", table.num_rows)  # (as normalize_events keeps them)
        run.read(table.num_rows)
        table = _within_limits(table, run.label, skip_bad_rows, report, places, earlier=report.done)
        id_column = next((c for c in EVENT_ID_COLUMNS if c in table.column_names), None)
        without_ids = without_ids or (id_column is None and table.num_rows > 0)
        stamps = pc.cast(table.column("ts"), pa.int64()).to_pylist()
        rest = [
            c for c in table.column_names if c not in ("lead_id", "type", "ts", "item", id_column)
        ]
        # in JSON lines an object or a list is one (as posted events keep them; a where on
        # `product.sku` reads it so), in CSV any value is text
        value = json_value if batch.kind == "jsonl" else _same
        for start in _chunks(table.num_rows):
            part = table.slice(start, CHUNK)
            cols: dict[str, list[Any]] = {c: part.column(c).to_pylist() for c in part.column_names}
            items = [
                EventInput(
                    type=cols["type"][i],
                    ts_us=stamps[start + i],
                    lead_id=cols["lead_id"][i],
                    item=cols["item"][i],
                    properties={c: value(cols[c][i]) for c in rest if cols[c][i] is not None},
                    message_id=cols[id_column][i] if id_column else None,
                )
                for i in range(part.num_rows)
            ]
            outcomes = store.ingest_events(items, rescore=False)
            store.db.let_others_write()
            report.stored += sum(o.status in ("accepted", "anonymous") for o in outcomes)
            report.repeated += sum(o.status == "duplicate" for o in outcomes)
            run.stored(start + part.num_rows, places(start + part.num_rows - 1))
    report.warnings = list(load.warnings)
    if without_ids:
        report.warnings.append(
            "the file has no event_id column: importing it again would store its events a "
            "second time (an event_id, or a messageId, makes a re-import skip them)"
        )
    report.rescore = store.rescore_all("event", fire_triggers=fire_triggers, progress=progress)
    return report


def import_outcomes(
    store: Store,
    source: Source,
    *,
    lead_id_column: str = "lead_id",
    skip_bad_rows: bool = False,
    progress: Progress | None = None,
    report: ImportReport | None = None,
) -> ImportReport:
    """Store outcomes: ``lead_id``, ``outcome``, ``ts`` and an optional ``amount``. A bad row
    (named by its line and column) stops the import before anything of its batch is stored
    (an upload or a table is one batch), unless ``skip_bad_rows`` leaves it out (listed in
    the report's warnings)."""
    report = report if report is not None else ImportReport("outcomes")
    load = LoadReport()
    run = _Run(source, report, progress, "storing outcomes")
    others: Counter[str] = Counter()
    for batch in run.batches():
        table = normalize_outcomes(
            batch, lead_id_column, skip_bad_rows=skip_bad_rows, report=load, label=run.label
        )
        run.read(table.num_rows)
        places = _Places.of(load, run.label, table.num_rows)
        table = _within_limits(
            table,
            run.label,
            skip_bad_rows,
            report,
            places,
            {"lead_id": LIMITS["lead_id"], "outcome": LIMITS["type"]},
            earlier=report.done,
        )
        items = [
            OutcomeInput(lead_id, outcome, ts_us, amount)
            for lead_id, outcome, ts_us, amount in zip(
                table.column("lead_id").to_pylist(),
                table.column("outcome").to_pylist(),
                table.column("ts").cast(pa.int64()).to_pylist(),
                table.column("amount").to_pylist(),
                strict=True,
            )
        ]
        others.update(i.outcome for i in items if i.outcome not in USUAL_OUTCOMES)
        for start in _chunks(len(items)):
            chunk = items[start : start + CHUNK]
            with store.db.write() as conn:
                added = add_outcomes(conn, chunk, "import")
                report.unknown += outcomes_for_unknown_leads(conn, chunk)
            store.db.let_others_write()
            report.stored += added
            report.repeated += len(chunk) - added
            run.stored(start + len(chunk), places(start + len(chunk) - 1))
    report.warnings = list(load.warnings)
    if others:
        named = ", ".join(f"{o!r} ({n:,})" for o, n in others.most_common(5))
        more = f" and {len(others) - 5:,} more" if len(others) > 5 else ""
        report.warnings.append(
            f"outcomes named otherwise than {', '.join(USUAL_OUTCOMES)}: {named}{more}; they "
            "are kept, and count as conversions only where --conversion names them (default "
            "won,opportunity): 'closed won' from a CRM is not 'won'"
        )
    if report.unknown:
        report.warnings.append(
            f"{report.unknown:,} {'outcome names' if report.unknown == 1 else 'outcomes name'} "
            "a lead the store does not hold: kept, and "
            "counted once such a lead is stored (is the lead id spelt as the store's?)"
        )
    return report


def _same(text: str | None) -> str | None:
    return text


def _label(source: Source) -> str:
    """How errors name ``source``: its path, an upload's name (not its bytes), or "table"."""
    if isinstance(source, (NamedData, InputFile)):
        return source.name
    return "table" if isinstance(source, pa.Table) else str(source)
