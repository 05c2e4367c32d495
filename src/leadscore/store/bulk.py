"""Bulk import of leads, events and outcomes from files (CSV, Parquet, JSON lines, JSON).

Files are read and checked like the scoring inputs (:mod:`leadscore.inputs`: bad rows are
named by file, row and column, or skipped with ``skip_bad_rows``), stored in chunks, and the
leads are rescored once at the end with the batch evaluator, instead of once per row.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from leadscore.errors import InputError, InputProblem
from leadscore.inputs import (
    FORMATS,
    LoadReport,
    NamedData,
    RowNumbers,
    json_value,
    normalize_events,
    normalize_leads,
    normalize_outcomes,
)
from leadscore.store.keeper import RescoreReport, Store
from leadscore.store.leads import STAGES, EventInput, LeadInput
from leadscore.store.lifecycle import OutcomeInput, add_outcomes, outcomes_for_unknown_leads

__all__ = ["ImportReport", "import_events", "import_leads", "import_outcomes"]

Progress = Callable[[str, int, int], None]
CHUNK = 2000
LEAD_COLUMNS = ("email", "stage", "owner")
EVENT_ID_COLUMNS = ("event_id", "message_id", "messageId")


@dataclass
class ImportReport:
    kind: str
    rows: int = 0
    stored: int = 0  # new or updated rows
    repeated: int = 0  # events whose id was already stored, outcomes already recorded
    unknown: int = 0  # outcomes for leads the store does not hold (kept)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    rescore: RescoreReport | None = None


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
) -> pa.Table:
    """``table`` without rows that the store cannot keep (reported as errors naming their
    line, or skipped and listed with ``skip_bad_rows``): ids, types or items too long, text
    holding the NUL character (PostgreSQL cannot store it), and with ``stages`` a stage that
    is not one of :data:`STAGES`. ``places`` follows the rows kept."""
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
        raise InputError(problems[:20], f"{len(bad)} bad row(s); nothing was imported")
    report.errors += [str(p) for p in problems]
    keep = pa.array([i not in bad for i in range(table.num_rows)])
    places.numbers = places.numbers.filter(keep)
    return table.filter(keep)


def _chunks(n: int) -> range:
    return range(0, n, CHUNK)


def import_leads(
    store: Store,
    source: str | Path | pa.Table,
    *,
    lead_id_column: str = "lead_id",
    skip_bad_rows: bool = False,
    fire_triggers: bool = False,
    progress: Progress | None = None,
) -> ImportReport:
    """Create or update the leads of a file; every other column is a profile field."""
    load = LoadReport()
    table = normalize_leads(
        source, lead_id_column, skip_bad_rows=skip_bad_rows, report=load, label=_label(source)
    )
    report = ImportReport("leads", rows=table.num_rows, warnings=list(load.warnings))
    report.errors += [str(p) for p in load.problems]
    places = _Places.of(load, "leads", table.num_rows)  # (as normalize_leads keeps them)
    table = _within_limits(table, _label(source), skip_bad_rows, report, places, stages=True)
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
        if progress:
            progress("storing leads", min(start + CHUNK, len(rows)), len(rows))
    report.rescore = store.rescore_all("profile", fire_triggers=fire_triggers, progress=progress)
    return report


def import_events(
    store: Store,
    source: str | Path | pa.Table,
    *,
    lead_id_column: str = "lead_id",
    skip_bad_rows: bool = False,
    fire_triggers: bool = False,
    progress: Progress | None = None,
) -> ImportReport:
    """Store the events of a file (``lead_id``, ``type``, ``ts``, optional ``item`` and an
    ``event_id`` that makes a re-import idempotent; other columns are properties)."""
    load = LoadReport()
    table = normalize_events(
        source, lead_id_column, skip_bad_rows=skip_bad_rows, report=load, label=_label(source)
    )
    report = ImportReport("events", rows=table.num_rows, warnings=list(load.warnings))
    places = _Places.of(load, "events", table.num_rows)  # (as normalize_events keeps them)
    table = _within_limits(table, _label(source), skip_bad_rows, report, places)
    id_column = next((c for c in EVENT_ID_COLUMNS if c in table.column_names), None)
    if id_column is None and table.num_rows:
        report.warnings.append(
            "the file has no event_id column: importing it again would store its events a "
            "second time (an event_id, or a messageId, makes a re-import skip them)"
        )
    stamps = pc.cast(table.column("ts"), pa.int64()).to_pylist()
    rest = [c for c in table.column_names if c not in ("lead_id", "type", "ts", "item", id_column)]
    # in JSON lines an object or a list is one (as posted events keep them; a where on
    # `product.sku` reads it so), in CSV any value is text
    value = json_value if _format(source) == "jsonl" else _same
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
        if progress:
            progress("storing events", min(start + CHUNK, table.num_rows), table.num_rows)
    report.rescore = store.rescore_all("event", fire_triggers=fire_triggers, progress=progress)
    return report


def import_outcomes(
    store: Store,
    source: str | Path | pa.Table | NamedData,
    *,
    lead_id_column: str = "lead_id",
    skip_bad_rows: bool = False,
    progress: Progress | None = None,
) -> ImportReport:
    """Store outcomes: ``lead_id``, ``outcome``, ``ts`` and an optional ``amount``. A bad row
    (named by its line and column) stops the import before anything is stored, unless
    ``skip_bad_rows`` leaves it out (listed in the report's warnings)."""
    load = LoadReport()
    table = normalize_outcomes(
        source, lead_id_column, skip_bad_rows=skip_bad_rows, report=load, label=_label(source)
    )
    report = ImportReport("outcomes", rows=table.num_rows, warnings=list(load.warnings))
    table = _within_limits(
        table,
        _label(source),
        skip_bad_rows,
        report,
        _Places.of(load, _label(source), table.num_rows),
        {"lead_id": LIMITS["lead_id"], "outcome": LIMITS["type"]},
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
    others = Counter(i.outcome for i in items if i.outcome not in USUAL_OUTCOMES)
    if others:
        named = ", ".join(f"{o!r} ({n:,})" for o, n in others.most_common(5))
        more = f" and {len(others) - 5:,} more" if len(others) > 5 else ""
        report.warnings.append(
            f"outcomes named otherwise than {', '.join(USUAL_OUTCOMES)}: {named}{more}; they "
            "are kept, and count as conversions only where --conversion names them (default "
            "won,opportunity): 'closed won' from a CRM is not 'won'"
        )
    for start in _chunks(len(items)):
        with store.db.write() as conn:
            added = add_outcomes(conn, items[start : start + CHUNK], "import")
            report.unknown += outcomes_for_unknown_leads(conn, items[start : start + CHUNK])
        store.db.let_others_write()
        report.stored += added
        report.repeated += len(items[start : start + CHUNK]) - added
        if progress:
            progress("storing outcomes", min(start + CHUNK, len(items)), len(items))
    if report.unknown:
        report.warnings.append(
            f"{report.unknown:,} {'outcome names' if report.unknown == 1 else 'outcomes name'} "
            "a lead the store does not hold: kept, and "
            "counted once such a lead is stored (is the lead id spelt as the store's?)"
        )
    return report


def _format(source: str | Path | pa.Table | NamedData) -> str | None:
    """The format a file source is read in (as inputs reads it), None for a table."""
    if isinstance(source, pa.Table):
        return None
    name = source.name if isinstance(source, NamedData) else str(source)
    return FORMATS.get(Path(name).suffix.lower(), "csv")


def _same(text: str | None) -> str | None:
    return text


def _label(source: str | Path | pa.Table | NamedData) -> str:
    """How errors name ``source``: its path, an upload's name (not its bytes), or "table"."""
    if isinstance(source, NamedData):
        return source.name
    return "table" if isinstance(source, pa.Table) else str(source)
