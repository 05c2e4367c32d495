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
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from leadscore.engine.timeutil import parse_instant
from leadscore.errors import InputError, InputProblem
from leadscore.spec.conditions import WHITESPACE, to_text

__all__ = [
    "FORMATS",
    "LoadReport",
    "NamedData",
    "RowNumbers",
    "normalize_events",
    "normalize_leads",
    "normalize_outcomes",
    "read_data",
    "read_table",
]

FORMATS = {
    ".csv": "csv",
    ".tsv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
}
SHOWN = 5  # rows listed per problem before "and N more"
TS_TYPE = pa.timestamp("us", tz="UTC")
DELIMITERS = (",", ";", "\t")  # a tie goes to the first
SNIFF_CHARS = 1 << 16  # of a CSV file's start, enough for its header and some rows


def csv_delimiter(sample: str) -> str:
    """The separator of a CSV file that starts with ``sample``: of :data:`DELIMITERS`, the one
    that splits its header into the most columns, preferring one that splits the other lines
    of the sample into as many (a ``;`` inside a value of a comma file does not); a comma when
    none splits the header (a file of one column)."""
    cut = len(sample) >= SNIFF_CHARS and "\n" in sample
    text = sample[: sample.rfind("\n") + 1] if cut else sample  # whole lines only
    best, rank = ",", (False, 1)
    for delimiter in DELIMITERS:
        try:
            records = [r for r in csv.reader(io.StringIO(text), delimiter=delimiter) if r]
        except csv.Error:
            continue
        if cut and len(records) > 1:
            records.pop()  # the last may be a value cut across lines
        if not records:
            continue
        width = len(records[0])
        even = all(len(r) == width for r in records[1:])
        if width > 1 and (even, width) > rank:
            best, rank = delimiter, (even, width)
    return best


@dataclass
class LoadReport:
    """What was dropped or noticed while reading, and where each kept row came from."""

    warnings: list[str] = field(default_factory=list)
    problems: list[InputProblem] = field(default_factory=list)  # gathered, then raised
    # per input ("leads", "events"): its name, "line" or "row", and each kept row's number
    sources: dict[str, tuple[str, str, RowNumbers]] = field(default_factory=dict)

    def name(self, label: str) -> str:
        """The file (or label) an input was read from."""
        return self.sources[label][0] if label in self.sources else label

    def where(self, label: str, index: int) -> str:
        """``'line 12'`` for the ``index``-th kept row of input ``label``."""
        if label not in self.sources:
            return f"row {index + 1}"
        _, unit, rows = self.sources[label]
        return f"{unit} {rows[index]}"


@dataclass(frozen=True)
class NamedData:
    """A file received other than from disk (an upload): its name (whose extension says the
    format, as a path's does) and its bytes."""

    name: str
    data: bytes


def read_data(source: NamedData) -> pa.Table:
    """:func:`read_table` for a file's bytes."""
    kind = FORMATS.get(Path(source.name).suffix.lower(), "csv")
    try:
        if kind == "csv":
            text = source.data.decode("utf-8-sig")
            delimiter = csv_delimiter(text[:SNIFF_CHARS])
            header = next(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter), None)
            options = _csv_options(source.name, header)
            try:
                return pa_csv.read_csv(
                    io.BytesIO(text.encode("utf-8")),
                    parse_options=pa_csv.ParseOptions(delimiter=delimiter),
                    convert_options=options,
                )
            except pa.ArrowInvalid as exc:
                _uneven_lines(source.name, io.StringIO(text, newline=""), exc, delimiter)
                raise
        if kind == "parquet":
            return pq.read_table(io.BytesIO(source.data))
        return _jsonl_table(source.name, source.data.decode("utf-8-sig"))
    except InputError:
        raise
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError([InputProblem(source.name, f"cannot read as {kind}: {exc}")]) from None


@dataclass
class _Source:
    name: str
    kind: str  # csv | jsonl | parquet | arrow
    # the line each row starts on (see _row_lines), worked out when a row is first named:
    # reading the file again costs, and most inputs have no row to name
    find_lines: Callable[[], pa.Array | None] | None = None
    _lines: list[pa.Array | None] = field(default_factory=list)

    def where(self, index: int) -> int:
        """The line (row) number shown to people for a 0-based row index."""
        if not self._lines:
            self._lines.append(self.find_lines() if self.find_lines is not None else None)
        lines = self._lines[0]
        if lines is not None:
            return int(lines[index].as_py())
        return index + 2 if self.kind == "csv" else index + 1

    @property
    def unit(self) -> str:
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


def _row_lines(
    chunks: Iterable[bytes],
    text: Callable[[], Iterable[str]],
    kind: str,
    rows: int,
    delimiter: str = ",",
) -> pa.Array | None:
    """The line each of a file's ``rows`` starts on, when that is not the row's number plus
    the header's line: blank lines (which the readers skip) or values that hold line breaks
    move the rows after them. None when each row is one line (told by counting the file's
    line breaks, ``chunks`` of its bytes; ``text`` opens it as text only when they do not
    add up), or when the rows found do not add up to ``rows`` (read otherwise than Arrow)."""
    if kind not in ("csv", "jsonl"):
        return None
    breaks = 0
    last = b"\n"
    for chunk in chunks:
        if chunk:
            breaks += chunk.count(b"\n")
            last = chunk[-1:]
    header = 1 if kind == "csv" else 0
    if breaks == rows + header - (last != b"\n"):
        return None
    starts: list[int] = []
    if kind == "csv":
        reader = csv.reader(text(), delimiter=delimiter)
        before = 0
        try:
            for record in reader:
                if record:  # a blank line: Arrow skips it
                    starts.append(before + 1)
                before = reader.line_num
        except csv.Error:
            return None
        starts = starts[1:]  # the header
    else:
        lines = text()
        first = next(iter(lines), "")
        if first.lstrip().startswith("["):  # a JSON array: rows are its items
            return None
        starts = [n for n, line in enumerate(chain([first], lines), start=1) if line.strip()]
    return pa.array(starts, pa.int64()) if len(starts) == rows else None


def table_format(path: str | Path, fmt: str | None = None) -> str:
    """The format :func:`read_table` reads ``path`` in; InputError when there is no such
    file, or it is a directory, or its format is unknown (checked before any work starts)."""
    p = Path(path)
    if not p.exists():
        raise InputError([InputProblem(str(p), "no such file")])
    if p.is_dir():
        raise InputError([InputProblem(str(p), "is a directory, not a file")])
    kind = fmt or FORMATS.get(p.suffix.lower())
    if kind is None:
        known = ", ".join(sorted(FORMATS))
        raise InputError([InputProblem(str(p), f"unknown file format {p.suffix!r} (use {known})")])
    return kind


def read_table(path: str | Path, fmt: str | None = None) -> pa.Table:
    """Read a CSV, Parquet or JSON-lines file; every CSV value stays text."""
    p = Path(path)
    kind = table_format(p, fmt)
    try:
        if kind == "csv":
            return _read_csv(p)
        if kind == "parquet":
            return pq.read_table(p)
        return _read_jsonl(p)
    except InputError:
        raise
    except UnicodeDecodeError as exc:
        with p.open("rb") as fh:
            for n, line in enumerate(fh, start=1):
                try:
                    line.decode("utf-8")
                except UnicodeDecodeError as bad:
                    byte = line[bad.start : bad.start + 1].hex()
                    problem = f"line {n} is not UTF-8 text (byte 0x{byte}): save the file as UTF-8"
                    raise InputError([InputProblem(str(p), problem)]) from None
        raise InputError([InputProblem(str(p), f"cannot read as {kind}: {exc}")]) from None
    except (pa.ArrowInvalid, OSError, ValueError) as exc:
        raise InputError([InputProblem(str(p), f"cannot read as {kind}: {exc}")]) from None


def _csv_options(name: str, header: list[str] | None) -> pa_csv.ConvertOptions:
    if not header:
        raise InputError([InputProblem(name, "the file is empty (no header line)")])
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
        raise InputError([InputProblem(name, f"duplicate column names in the header: {dupes}")])
    return pa_csv.ConvertOptions(
        column_types={h: pa.string() for h in header},
        null_values=[""],
        strings_can_be_null=True,
        quoted_strings_can_be_null=True,
    )


def _file_delimiter(p: Path) -> str:
    """:func:`csv_delimiter` of a file (its first :data:`SNIFF_CHARS` characters)."""
    with p.open(encoding="utf-8-sig", errors="replace", newline="") as fh:
        return csv_delimiter(fh.read(SNIFF_CHARS))


def _read_csv(p: Path) -> pa.Table:
    delimiter = _file_delimiter(p)
    # utf-8-sig: a byte-order mark is not part of the first column's name (Arrow drops it too)
    with p.open(encoding="utf-8-sig", newline="") as fh:
        header = next(csv.reader(fh, delimiter=delimiter), None)
    try:
        return pa_csv.read_csv(
            p,
            parse_options=pa_csv.ParseOptions(delimiter=delimiter),
            convert_options=_csv_options(str(p), header),
        )
    except pa.ArrowInvalid as exc:
        with p.open(encoding="utf-8-sig", errors="replace", newline="") as fh:
            _uneven_lines(str(p), fh, exc, delimiter)
        raise


def _uneven_lines(
    name: str, text: Iterable[str], exc: pa.ArrowInvalid, delimiter: str = ","
) -> None:
    """Arrow refused a CSV file for a line with more or fewer values than the header names
    (it says which text, not which line): raise the lines that have, up to :data:`SHOWN`,
    by number. Returns when that was not the refusal, or no such line is found."""
    if "Expected" not in str(exc) or "columns, got" not in str(exc):
        return
    reader = csv.reader(text, delimiter=delimiter)
    width: int | None = None
    problems: list[InputProblem] = []
    before = 0
    for record in reader:
        if record:  # not a blank line
            if width is None:
                width = len(record)
            elif len(record) != width:
                problems.append(
                    InputProblem(
                        name,
                        f"line {before + 1}: {len(record)} values where the header names {width}",
                    )
                )
        before = reader.line_num
    if problems:
        more = _more(len(problems))
        mark = {",": "a comma", ";": "a semicolon", "\t": "a tab"}[delimiter]
        hint = f"A value holding {mark} (the separator) needs double quotes around it."
        raise InputError(problems[:SHOWN], f"{more} {hint}" if more else hint)


def _read_jsonl(p: Path) -> pa.Table:
    return _jsonl_table(str(p), p.read_text(encoding="utf-8-sig"))


def _jsonl_table(name: str, text: str) -> pa.Table:
    """JSON lines, one object a line; a file holding one JSON array of objects is read too."""
    rows: list[dict[str, Any]] = []
    problems: list[InputProblem] = []
    if text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError([InputProblem(name, f"not JSON: {exc.msg}", row=exc.lineno)]) from None
        items = list(enumerate(data, start=1)) if isinstance(data, list) else []
        unit_row = True
    else:
        items = []
        for n, line in enumerate(text.split("\n"), start=1):  # (not at U+2028 and the like)
            if not line.strip():
                continue
            try:
                items.append((n, json.loads(line)))
            except json.JSONDecodeError as exc:
                problems.append(InputProblem(name, f"not JSON: {exc.msg}", row=n))
        unit_row = False
    for n, value in items:
        if not isinstance(value, dict):
            what = "item of the array" if unit_row else "line"
            problems.append(InputProblem(name, f"each {what} must be a JSON object", row=n))
            continue
        rows.append({k: _json_text(v) for k, v in value.items()})
    if problems:
        raise InputError(problems[:SHOWN], _more(len(problems)))
    names: dict[str, None] = {}
    for r in rows:
        names.update(dict.fromkeys(r))
    return pa.table({n: pa.array([r.get(n) for r in rows], pa.string()) for n in names})


def _json_text(value: Any) -> str | None:
    """A JSON value as the text of a column: an object or a list as its JSON (a store's import
    reads it back as the object: :func:`json_value`), anything else as text."""
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return to_text(value)


def json_value(text: str | None) -> Any:
    """A column's text from a JSON-lines file as the value it was: an object or a list read
    back (as a posted event's properties keep them), any other text as it is."""
    if text and text[0] in "{[" and text[-1] in "}]":
        try:
            return json.loads(text)
        except ValueError:
            return text
    return text


def _more(total: int) -> str | None:
    return f"({total - SHOWN} more not shown)" if total > SHOWN else None


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


def _source(source: str | Path | pa.Table | NamedData, label: str) -> tuple[pa.Table, _Source]:
    if isinstance(source, pa.Table):
        return source, _Source(label, "arrow")
    if isinstance(source, NamedData):
        kind = FORMATS.get(Path(source.name).suffix.lower(), "csv")
        table = _trimmed_names(read_data(source))
        data = source.data

        def decoded() -> Iterable[str]:
            return io.StringIO(data.decode("utf-8-sig", "replace"), newline="")

        def lines_of_data() -> pa.Array | None:
            delimiter = csv_delimiter(data.decode("utf-8-sig", "replace")[:SNIFF_CHARS])
            return _row_lines([data], decoded, kind, table.num_rows, delimiter)

        return table, _Source(source.name, kind, lines_of_data)
    p = Path(source)
    table = _trimmed_names(read_table(p))
    kind = FORMATS.get(p.suffix.lower(), "csv")
    rows = table.num_rows

    def lines_of_file() -> pa.Array | None:
        delimiter = _file_delimiter(p) if kind == "csv" else ","
        with p.open("rb") as fh, p.open(encoding="utf-8-sig", errors="replace", newline="") as tx:
            return _row_lines(
                iter(lambda: fh.read(1 << 24), b""), lambda: tx, kind, rows, delimiter
            )

    return table, _Source(str(p), kind, lines_of_file)


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
    shown = ", ".join(
        f"{src.where(i)}" + (f" ({samples[i]!r})" if samples is not None else "")
        for i in rows[:SHOWN]
    )
    more = f" and {len(rows) - SHOWN} more" if len(rows) > SHOWN else ""
    one = len(rows) == 1
    unit = src.unit if one else f"{src.unit}s"
    verbs = message.format(has="has" if one else "have", repeats="repeats" if one else "repeat")
    text = f"{len(rows)} {unit} {verbs}: {unit} {shown}{more}"
    if skip:
        report.warnings.append(f"{src.name}: column {column!r}: skipped {text}")
    else:
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
    source: str | Path | pa.Table,
    lead_id_column: str = "lead_id",
    *,
    skip_bad_rows: bool = False,
    report: LoadReport | None = None,
    label: str = "leads",
) -> pa.Table:
    """Leads as ``lead_id`` + text columns; empty and repeated ids are errors (or skipped)."""
    report = report if report is not None else LoadReport()
    table, src = _source(source, label)
    _require(table, src, lead_id_column, "lead id", "Name the id column with --lead-id-column.")
    columns = _text_columns(table, lead_id_column)
    table = pa.table(columns)
    ids = table.column("lead_id")
    trimmed = _trim(ids)
    table = table.set_column(table.column_names.index("lead_id"), "lead_id", trimmed)
    empty = pc.or_kleene(pc.is_null(trimmed), pc.equal(trimmed, "")).fill_null(True)
    drop = set(_bad_rows(empty, src, lead_id_column, "{has} no lead id", skip_bad_rows, report))
    ids_list = trimmed.to_pylist()
    seen: set[str] = set()
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
    source: str | Path | pa.Table,
    lead_id_column: str = "lead_id",
    *,
    skip_bad_rows: bool = False,
    report: LoadReport | None = None,
    label: str = "events",
) -> pa.Table:
    """Events as ``lead_id``, ``type``, ``ts`` (UTC), ``item`` + text columns."""
    report = report if report is not None else LoadReport()
    table, src = _source(source, label)
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
    source: str | Path | pa.Table | NamedData,
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
    table, src = _source(source, label)
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


def csv_text(table: pa.Table) -> str:
    """A table as CSV text, quoting only where needed (used by the command line)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(table.column_names)
    for batch in table.to_batches(max_chunksize=50_000):
        columns = [c.to_pylist() for c in batch.columns]
        writer.writerows(zip(*columns, strict=True))
    return buf.getvalue()
