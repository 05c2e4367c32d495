"""Reading leads and events: files or Arrow tables in, normalized Arrow tables out.

Both evaluators read what this module produces, so they see the same text for every value:

- leads: ``lead_id`` (renamed from ``lead_id_column``) and every other column as text;
- events: ``lead_id``, ``type``, ``ts`` (timestamp, UTC), ``item`` and every other column as
  text.

A CSV file's separator is found from its first lines: a comma, a semicolon (spreadsheets in
locales whose decimal mark is a comma) or a tab.

Problems name the source, the column and the rows (CSV and JSONL rows are counted as lines of
the file, the header being line 1 of a CSV). With ``skip_bad_rows`` bad rows are dropped and
reported as warnings instead.

Files are read by :mod:`leadscore.inputs.formats`.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from leadscore.engine.timeutil import parse_instant
from leadscore.errors import InputError, InputProblem
from leadscore.inputs.batches import Batch
from leadscore.inputs.formats import (
    FORMATS,
    SHOWN,
    SNIFF_CHARS,
    NamedData,
    _row_lines,
    csv_delimiter,
    csv_text,
    file_delimiter,
    json_value,
    read_data,
    read_json,
    read_json_file,
    read_table,
    table_format,
)
from leadscore.spec.conditions import WHITESPACE, to_text

__all__ = [
    "FORMATS",
    "LoadReport",
    "NamedData",
    "RowNumbers",
    "csv_delimiter",
    "csv_text",
    "json_value",
    "normalize_events",
    "normalize_leads",
    "normalize_outcomes",
    "read_data",
    "read_table",
    "table_format",
]

TS_TYPE = pa.timestamp("us", tz="UTC")


@dataclass
class LoadReport:
    """What was dropped or noticed while reading, and where each kept row came from."""

    warnings: list[str] = field(default_factory=list)
    problems: list[InputProblem] = field(default_factory=list)  # gathered, then raised
    # per input ("leads", "events"): its name, "line" or "row", and each kept row's number
    sources: dict[str, tuple[str, str, RowNumbers]] = field(default_factory=dict)
    # rows skipped for one reason, by (label, name, column, message): their warning's index in
    # `warnings`, how many, and the first SHOWN of them (an input read in batches adds up)
    _skips: dict[tuple[str, str, str | None, str], tuple[int, int, list[str]]] = field(
        default_factory=dict, repr=False
    )

    def name(self, label: str) -> str:
        """The file (or label) an input was read from."""
        return self.sources[label][0] if label in self.sources else label

    def where(self, label: str, index: int) -> str:
        """``'line 12'`` for the ``index``-th kept row of input ``label``."""
        if label not in self.sources:
            return f"row {index + 1}"
        _, unit, rows = self.sources[label]
        return f"{unit} {rows[index]}"

    def skipped(
        self,
        label: str,
        name: str,
        column: str | None,
        message: str,
        unit: str,
        rows: int,
        places: Sequence[str],
    ) -> None:
        """Note ``rows`` rows of input ``label`` (read from ``name``) left out for one reason,
        in one warning per input, column and reason however many batches they come in:
        ``message`` says what they have (its ``{has}``, ``{repeats}`` and ``{holds}`` agree
        with their number), ``places`` where the first of them are (``"12 ('x')"``)."""
        key = (label, name, column, message)
        index, count, shown = self._skips.get(key, (len(self.warnings), 0, []))
        if index == len(self.warnings):
            self.warnings.append("")
        count += rows
        shown = shown + list(places[: SHOWN - len(shown)])
        self._skips[key] = (index, count, shown)
        one = count == 1
        units = unit if one else f"{unit}s"
        verbs = message.format(
            has="has" if one else "have",
            repeats="repeats" if one else "repeat",
            holds="holds" if one else "hold",
        )
        more = f" and {count - SHOWN} more" if count > SHOWN else ""
        text = f"skipped {count} {units} {verbs}: {units} {', '.join(shown)}{more}"
        self.warnings[index] = f"{name}: column {column!r}: {text}" if column else f"{name}: {text}"


@dataclass
class _Source:
    name: str
    kind: str  # csv | jsonl | parquet | arrow
    # the line each row starts on (see _row_lines), worked out when a row is first named:
    # reading the file again costs, and most inputs have no row to name
    find_lines: Callable[[], pa.Array | None] | None = None
    # the number of the first row when each row is one line (None: 2 in a CSV file, after
    # its header, 1 otherwise), and what rows are called when not as the kind has it
    first: int | None = None
    unit_name: str | None = None
    label: str = ""  # the input's role ("leads", "events"), which a file may play twice
    _lines: list[pa.Array | None] = field(default_factory=list)

    def where(self, index: int) -> int:
        """The line (row) number shown to people for a 0-based row index."""
        if not self._lines:
            self._lines.append(self.find_lines() if self.find_lines is not None else None)
        lines = self._lines[0]
        if lines is not None:
            return int(lines[index].as_py())
        if self.first is not None:
            return self.first + index
        return index + 2 if self.kind == "csv" else index + 1

    @property
    def unit(self) -> str:
        if self.unit_name is not None:
            return self.unit_name
        return "line" if self.kind in ("csv", "jsonl") else "row"


class RowNumbers:
    """The numbers people know the kept rows of an input by (see :meth:`_Source.where`)."""

    def __init__(self, src: _Source, kept: pa.Array) -> None:
        self.src = src
        self.kept = kept  # the kept rows' 0-based indexes in the input as read

    def __getitem__(self, index: int) -> int:
        return self.src.where(int(self.kept[index].as_py()))

    def filter(self, mask: pa.Array) -> RowNumbers:
        """Those of the rows that ``mask`` keeps."""
        return RowNumbers(self.src, self.kept.filter(mask))

    @classmethod
    def plain(cls, rows: int) -> RowNumbers:
        """Rows of an input that has no lines (a table handed in): numbered 1, 2, 3..."""
        return cls(_Source("", "arrow"), pa.array(range(rows), pa.int64()))


def _as_text(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """A column as text: :func:`leadscore.spec.conditions.to_text` for every type that is not
    already text or an integer (whose Arrow cast formats the same)."""
    t = column.type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return column.cast(pa.string())
    if pa.types.is_integer(t):
        return column.cast(pa.string())
    if pa.types.is_dictionary(t):
        return _as_text(column.cast(t.value_type))
    values: list[Any] = column.to_pylist()
    texts: list[str | None] = []
    for v in values:
        if isinstance(v, (dict, list)):
            texts.append(json.dumps(v, default=str))
        else:
            texts.append(to_text(v))
    return pa.chunked_array([pa.array(texts, pa.string())])


def _trim(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """Trim the same whitespace as every comparison does (ASCII, not all of Unicode's)."""
    return pc.utf8_trim(column, WHITESPACE)


def _trimmed_names(table: pa.Table) -> pa.Table:
    """Column names without the spaces around them (`lead_id ,type` is a spreadsheet's
    header, not a column named 'lead_id '), unless that would give two columns one name."""
    names = [name.strip(WHITESPACE) for name in table.column_names]
    if names == table.column_names or len(set(names)) < len(names):
        return table
    return table.rename_columns(names)


def _source(
    source: str | Path | pa.Table | NamedData | Batch,
    label: str,
    skip_bad_rows: bool,
    report: LoadReport,
) -> tuple[pa.Table, _Source]:
    if isinstance(source, Batch):
        return _batch_source(label, source, skip_bad_rows, report)
    if isinstance(source, pa.Table):
        return source, _Source(label, "arrow", label=label)
    name = source.name if isinstance(source, NamedData) else str(source)
    kind = FORMATS.get(Path(name).suffix.lower(), "csv")
    if kind == "jsonl":
        if isinstance(source, NamedData):
            rows = read_json(name, source.data.decode("utf-8-sig", "replace"))
        else:
            table_format(source)  # a file that is not there, or a directory
            rows = read_json_file(Path(source))
        return _batch_source(label, Batch.of_json(name, rows), skip_bad_rows, report)
    if isinstance(source, NamedData):
        table = _trimmed_names(read_data(source))
        data = source.data

        def decoded() -> Iterable[str]:
            return io.StringIO(data.decode("utf-8-sig", "replace"), newline="\n")

        n = table.num_rows

        def lines_of_data() -> pa.Array | None:
            delimiter = csv_delimiter(data.decode("utf-8-sig", "replace")[:SNIFF_CHARS])
            return _row_lines([data], decoded, kind, n, delimiter)

        return table, _Source(name, kind, lines_of_data, label=label)
    p = Path(source)
    table = _trimmed_names(read_table(p))
    n = table.num_rows

    def lines_of_file() -> pa.Array | None:
        delimiter = file_delimiter(p) if kind == "csv" else ","
        with p.open("rb") as fh, p.open(encoding="utf-8-sig", errors="replace", newline="\n") as tx:
            return _row_lines(iter(lambda: fh.read(1 << 24), b""), lambda: tx, kind, n, delimiter)

    return table, _Source(name, kind, lines_of_file, label=label)


def _batch_source(
    label: str, batch: Batch, skip_bad_rows: bool, report: LoadReport
) -> tuple[pa.Table, _Source]:
    """The table of a batch; its lines that are not rows (see :attr:`Batch.bad`) are refused,
    or with ``skip_bad_rows`` left out and listed in the report's warnings."""
    if batch.bad and skip_bad_rows:
        places = [f"{n} ({why})" for n, why in batch.bad[:SHOWN]]
        report.skipped(
            label, batch.name, None, batch.bad_message, batch.unit, len(batch.bad), places
        )
    else:
        batch.refuse()
    src = _Source(batch.name, batch.kind, batch.lines, batch.first, batch.unit, label)
    return _trimmed_names(batch.table), src


def _require(table: pa.Table, src: _Source, column: str, what: str, hint: str = "") -> None:
    if column not in table.column_names:
        cols = ", ".join(repr(c) for c in table.column_names) or "none"
        raise InputError(
            [InputProblem(src.name, f"no {what} column {column!r} (columns: {cols})")],
            hint or None,
        )


def _bad_rows(
    mask: Sequence[bool] | pa.ChunkedArray | pa.Array,
    src: _Source,
    column: str,
    message: str,
    skip: bool,
    report: LoadReport,
    samples: Sequence[Any] | None = None,
) -> list[int]:
    if isinstance(mask, (pa.ChunkedArray, pa.Array)):
        if not pc.any(mask).as_py():  # the common case, without a pass in Python
            return []
        rows: list[int] = pc.indices_nonzero(mask).to_pylist()
    else:
        rows = [i for i, bad in enumerate(mask) if bad]
    if not rows:
        return rows
    if skip:
        places = [
            f"{src.where(i)}" + (f" ({samples[i]!r})" if samples is not None else "")
            for i in rows[:SHOWN]
        ]
        report.skipped(src.label, src.name, column, message, src.unit, len(rows), places)
        return rows
    shown = ", ".join(
        f"{src.where(i)}" + (f" ({samples[i]!r})" if samples is not None else "")
        for i in rows[:SHOWN]
    )
    more = f" and {len(rows) - SHOWN} more" if len(rows) > SHOWN else ""
    one = len(rows) == 1
    unit = src.unit if one else f"{src.unit}s"
    verbs = message.format(has="has" if one else "have", repeats="repeats" if one else "repeat")
    text = f"{len(rows)} {unit} {verbs}: {unit} {shown}{more}"
    report.problems.append(InputProblem(src.name, text, column=column))
    return rows


def _raise_problems(report: LoadReport) -> None:
    """Every kind of bad row found in an input, reported together."""
    if report.problems:
        problems, report.problems = report.problems, []
        raise InputError(problems, "Fix those rows, or pass --skip-bad-rows to leave them out.")


def _drop(
    table: pa.Table, rows: list[int], src: _Source, report: LoadReport, label: str
) -> pa.Table:
    """The table without ``rows``; remembers the shown row number of every kept row."""
    numbers = pa.array(range(table.num_rows), pa.int64())
    if rows:
        keep = pc.invert(pc.is_in(numbers, pa.array(rows, pa.int64())))
        table = table.filter(keep)
        numbers = numbers.filter(keep)
    report.sources[label] = (src.name, src.unit, RowNumbers(src, numbers))
    return table


def _text_columns(
    table: pa.Table, lead_id_column: str, skip: tuple[str, ...] = ()
) -> dict[str, pa.ChunkedArray]:
    """Every column as text, the id column renamed ``lead_id`` (it wins over a column that
    is already called so)."""
    columns: dict[str, pa.ChunkedArray] = {}
    for name in table.column_names:
        out = "lead_id" if name == lead_id_column else name
        if (out == "lead_id" and name != lead_id_column) or out in skip:
            continue
        columns[out] = _as_text(table.column(name))
    return columns


def normalize_leads(
    source: str | Path | pa.Table | Batch,
    lead_id_column: str = "lead_id",
    *,
    skip_bad_rows: bool = False,
    report: LoadReport | None = None,
    label: str = "leads",
    seen: set[str] | None = None,
) -> pa.Table:
    """Leads as ``lead_id`` + text columns; empty and repeated ids are errors (or skipped).
    ``seen``: the ids of the rows before these (of an input read in batches), to which theirs
    are added."""
    report = report if report is not None else LoadReport()
    table, src = _source(source, label, skip_bad_rows, report)
    _require(table, src, lead_id_column, "lead id", "Name the id column with --lead-id-column.")
    columns = _text_columns(table, lead_id_column)
    table = pa.table(columns)
    ids = table.column("lead_id")
    trimmed = _trim(ids)
    table = table.set_column(table.column_names.index("lead_id"), "lead_id", trimmed)
    empty = pc.or_kleene(pc.is_null(trimmed), pc.equal(trimmed, "")).fill_null(True)
    drop = set(_bad_rows(empty, src, lead_id_column, "{has} no lead id", skip_bad_rows, report))
    ids_list = trimmed.to_pylist()
    seen = set() if seen is None else seen
    dupes = []
    for i, v in enumerate(ids_list):
        dupes.append(i not in drop and v in seen)
        seen.add(v)
    if any(dupes):
        drop.update(
            _bad_rows(
                dupes,
                src,
                lead_id_column,
                "{repeats} an earlier lead id",
                skip_bad_rows,
                report,
                samples=ids_list,
            )
        )
    _raise_problems(report)
    return _drop(table, sorted(drop), src, report, "leads")


def normalize_events(
    source: str | Path | pa.Table | Batch,
    lead_id_column: str = "lead_id",
    *,
    skip_bad_rows: bool = False,
    report: LoadReport | None = None,
    label: str = "events",
) -> pa.Table:
    """Events as ``lead_id``, ``type``, ``ts`` (UTC), ``item`` + text columns."""
    report = report if report is not None else LoadReport()
    table, src = _source(source, label, skip_bad_rows, report)
    _require(table, src, lead_id_column, "lead id", "Name the id column with --lead-id-column.")
    _require(table, src, "type", "event type")
    _require(table, src, "ts", "timestamp")
    columns = _text_columns(table, lead_id_column, skip=("ts",))
    columns["lead_id"] = _trim(columns["lead_id"])
    columns["type"] = _trim(columns["type"])
    if "item" not in columns:
        columns["item"] = pa.chunked_array([pa.nulls(table.num_rows, pa.string())])
    ts, bad_ts = _timestamps(table.column("ts"))
    order = ["lead_id", "type", "ts", "item"]
    out_table = pa.table(
        {
            "lead_id": columns["lead_id"],
            "type": columns["type"],
            "ts": ts,
            "item": columns["item"],
            **{k: v for k, v in columns.items() if k not in order},
        }
    )
    drop: set[int] = set()
    lid = out_table.column("lead_id")
    empty = pc.or_kleene(pc.is_null(lid), pc.equal(lid, "")).fill_null(True)
    drop.update(_bad_rows(empty, src, lead_id_column, "{has} no lead id", skip_bad_rows, report))
    etype = out_table.column("type")
    empty_t = pc.or_kleene(pc.is_null(etype), pc.equal(etype, "")).fill_null(True)
    drop.update(_bad_rows(empty_t, src, "type", "{has} no event type", skip_bad_rows, report))
    if bad_ts:
        raw = table.column("ts").to_pylist()
        mask = [False] * table.num_rows
        for i in bad_ts:
            mask[i] = True
        drop.update(
            _bad_rows(
                mask,
                src,
                "ts",
                "{has} a missing or unreadable timestamp (expected ISO 8601 or epoch seconds)",
                skip_bad_rows,
                report,
                samples=raw,
            )
        )
    _raise_problems(report)
    return _drop(out_table, sorted(drop), src, report, "events")


def normalize_outcomes(
    source: str | Path | pa.Table | NamedData | Batch,
    lead_id_column: str = "lead_id",
    *,
    skip_bad_rows: bool = False,
    report: LoadReport | None = None,
    label: str = "outcomes",
) -> pa.Table:
    """Outcomes as ``lead_id``, ``outcome`` (trimmed, lower case), ``ts`` (UTC) and ``amount``
    (float, null where absent); rows without a lead id, an outcome or a readable time, or with
    an amount that is not a number, are errors (or skipped)."""
    report = report if report is not None else LoadReport()
    table, src = _source(source, label, skip_bad_rows, report)
    _require(table, src, lead_id_column, "lead id", "Name the id column with --lead-id-column.")
    _require(table, src, "outcome", "outcome", "Outcomes need lead_id, outcome and ts columns.")
    _require(table, src, "ts", "timestamp", "Outcomes need lead_id, outcome and ts columns.")
    lead_ids = _trim(_as_text(table.column(lead_id_column)))
    outcome = pc.utf8_lower(_trim(_as_text(table.column("outcome"))))
    ts, bad_ts = _timestamps(table.column("ts"))
    n = table.num_rows
    if "amount" in table.column_names:
        values: list[float | None] = []
        bad: list[bool] = []
        for text in _trim(_as_text(table.column("amount"))).to_pylist():
            try:
                number = float(text) if text else None
            except ValueError:
                number = None
            if number is not None and not math.isfinite(number):
                number = None  # inf and nan are not amounts
            values.append(number)
            bad.append(number is None and bool(text))
        amount = pa.chunked_array([pa.array(values, pa.float64())])
        bad_amount = pa.chunked_array([pa.array(bad, pa.bool_())])
    else:
        amount = pa.chunked_array([pa.nulls(n, pa.float64())])
        bad_amount = pa.chunked_array([pa.array([False] * n)])
    drop: set[int] = set()
    for column, values, what in (
        (lead_id_column, lead_ids, "{has} no lead id"),
        ("outcome", outcome, "{has} no outcome"),
    ):
        empty = pc.or_kleene(pc.is_null(values), pc.equal(values, "")).fill_null(True)
        drop.update(_bad_rows(empty, src, column, what, skip_bad_rows, report))
    if bad_ts:
        mask = [False] * n
        for i in bad_ts:
            mask[i] = True
        raw = table.column("ts").to_pylist()
        drop.update(
            _bad_rows(
                mask,
                src,
                "ts",
                "{has} a missing or unreadable time (expected ISO 8601 or epoch seconds)",
                skip_bad_rows,
                report,
                samples=raw,
            )
        )
    if "amount" in table.column_names:
        samples = table.column("amount").to_pylist() if pc.any(bad_amount).as_py() else None
        drop.update(
            _bad_rows(
                bad_amount,
                src,
                "amount",
                "{has} an amount that is not a finite number",
                skip_bad_rows,
                report,
                samples=samples,
            )
        )
    _raise_problems(report)
    out = pa.table({"lead_id": lead_ids, "outcome": outcome, "ts": ts, "amount": amount})
    return _drop(out, sorted(drop), src, report, label)


def _timestamps(column: pa.ChunkedArray) -> tuple[pa.ChunkedArray, list[int]]:
    """Timestamps as UTC microseconds, and the indexes of values that are not times."""
    t = column.type
    if pa.types.is_date(t):
        column = column.cast(pa.timestamp("us"))
        t = column.type
    if pa.types.is_timestamp(t):
        if t.tz is None:
            column = pc.assume_timezone(column, "UTC")
        cast = column.cast(TS_TYPE, safe=False)  # nanoseconds: truncated to microseconds
        nulls = [i for i, v in enumerate(pc.is_null(cast).to_pylist()) if v]
        return cast, nulls
    values = column.to_pylist()
    out: list[int | None] = []
    bad: list[int] = []
    for i, v in enumerate(values):
        try:
            out.append(parse_instant(v) if v is not None and v != "" else None)
        except (ValueError, OverflowError):
            out.append(None)
        if out[-1] is None:
            bad.append(i)
    return pa.chunked_array([pa.array(out, pa.int64()).cast(TS_TYPE)]), bad
