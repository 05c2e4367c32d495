"""Input files: their formats, and reading one whole (CSV, Parquet, JSON lines or a JSON array).

CSV values stay text; JSON values become text (an object or a list as its JSON, read back by
:func:`json_value`). Problems name the file and the line. :mod:`leadscore.inputs.batches`
reads a file in batches instead, from disk, gzip or standard input.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from leadscore.errors import InputError, InputProblem
from leadscore.spec.conditions import to_text

__all__ = [
    "FORMATS",
    "SHOWN",
    "JsonRows",
    "NamedData",
    "csv_delimiter",
    "csv_text",
    "json_lines",
    "json_objects",
    "json_value",
    "read_data",
    "read_json",
    "read_json_file",
    "read_table",
    "refuse_lines",
    "table_format",
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


def file_delimiter(p: Path) -> str:
    """:func:`csv_delimiter` of a file (its first :data:`SNIFF_CHARS` characters)."""
    with p.open(encoding="utf-8-sig", errors="replace", newline="") as fh:
        return csv_delimiter(fh.read(SNIFF_CHARS))


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
                _uneven_lines(source.name, io.StringIO(text, newline="\n"), exc, delimiter)
                raise
        if kind == "parquet":
            return pq.read_table(io.BytesIO(source.data))
        rows = read_json(source.name, source.data.decode("utf-8-sig"))
        rows.refuse(source.name)
        return rows.table
    except InputError:
        raise
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError([InputProblem(source.name, f"cannot read as {kind}: {exc}")]) from None


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
    if kind == "jsonl":
        return _read_jsonl(p)
    with _errors_named(p, kind):
        if kind == "csv":
            return _read_csv(p)
        return pq.read_table(p)


@contextmanager
def _errors_named(p: Path, kind: str) -> Iterator[None]:
    """Errors of reading ``p`` as InputError naming the file (and for text that is not UTF-8,
    the first line that is not)."""
    try:
        yield
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


def _read_csv(p: Path) -> pa.Table:
    delimiter = file_delimiter(p)
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
        with p.open(encoding="utf-8-sig", errors="replace", newline="\n") as fh:
            _uneven_lines(str(p), fh, exc, delimiter)
        raise


def separator_hint(delimiter: str) -> str:
    """What a CSV file's bad rows most likely lack."""
    mark = {",": "a comma", ";": "a semicolon", "\t": "a tab"}[delimiter]
    return f"A value holding {mark} (the separator) needs double quotes around it."


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
        hint = separator_hint(delimiter)
        raise InputError(problems[:SHOWN], f"{more} {hint}" if more else hint)


def _read_jsonl(p: Path) -> pa.Table:
    rows = read_json_file(p)
    rows.refuse(str(p))
    return rows.table


def read_json_file(p: Path) -> JsonRows:
    """The objects of a JSON-lines file (or of a file holding one JSON array)."""
    with _errors_named(p, "jsonl"):
        return read_json(str(p), p.read_text(encoding="utf-8-sig"))


@dataclass
class JsonRows:
    """The objects of JSON lines (or of a JSON array) as a table of text columns, the number
    each row has in the file (its line, or its item of an array), and the lines (items) that
    hold no JSON object, with why."""

    table: pa.Table
    unit: str  # "line", or "item" of a JSON array
    numbers: list[int]
    bad: list[tuple[int, str]]

    def refuse(self, name: str) -> None:
        """Raise the lines that hold no object (up to :data:`SHOWN`), if there are any."""
        refuse_lines(name, self.unit, self.bad)


def refuse_lines(name: str, unit: str, bad: list[tuple[int, str]], hint: str = "") -> None:
    """Raise InputError for the ``bad`` lines (rows, items) of input ``name``, each a number
    and why, up to :data:`SHOWN` of them; nothing when there is none."""
    if bad:
        problems = [InputProblem(name, f"{unit} {n}: {why}") for n, why in bad]
        more = _more(len(problems))
        hint += f"Fix those {unit}s, or pass --skip-bad-rows to leave them out."
        raise InputError(problems[:SHOWN], f"{more} {hint}" if more else hint)


def read_json(name: str, text: str) -> JsonRows:
    """:class:`JsonRows` of a JSON-lines text, one object a line; a text holding one JSON
    array of objects is read too."""
    if text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            problem = f"line {exc.lineno}: not JSON: {exc.msg} at column {exc.colno}"
            raise InputError([InputProblem(name, problem)]) from None
        return json_objects(enumerate(data, start=1), "item")
    return json_lines(enumerate(text.split("\n"), start=1))  # (not at U+2028 and the like)


def json_lines(lines: Iterable[tuple[int, str]]) -> JsonRows:
    """:class:`JsonRows` of numbered lines of text, one JSON object a line (blank lines are
    passed over)."""
    bad: list[tuple[int, str]] = []

    def values() -> Iterator[tuple[int, Any]]:
        for n, line in lines:
            if not line.strip():
                continue
            try:
                yield n, json.loads(line)
            except json.JSONDecodeError as exc:
                bad.append((n, f"not JSON: {exc.msg} at column {exc.colno}"))

    rows = json_objects(values(), "line")
    rows.bad = sorted(rows.bad + bad)
    return rows


def json_objects(values: Iterable[tuple[int, Any]], unit: str) -> JsonRows:
    """:class:`JsonRows` of numbered JSON values, each of which should be an object."""
    rows: list[dict[str, str | None]] = []
    numbers: list[int] = []
    bad: list[tuple[int, str]] = []
    what = "line" if unit == "line" else "item of the array"
    for n, value in values:
        if not isinstance(value, dict):
            bad.append((n, f"each {what} must be a JSON object"))
            continue
        rows.append({k: _json_text(v) for k, v in value.items()})
        numbers.append(n)
    names: dict[str, None] = {}
    for r in rows:
        names.update(dict.fromkeys(r))
    table = pa.table({c: pa.array([r.get(c) for r in rows], pa.string()) for c in names})
    return JsonRows(table, unit, numbers, bad)


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


def csv_text(table: pa.Table) -> str:
    """A table as CSV text, quoting only where needed (used by the command line)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(table.column_names)
    for batch in table.to_batches(max_chunksize=50_000):
        columns = [c.to_pylist() for c in batch.columns]
        writer.writerows(zip(*columns, strict=True))
    return buf.getvalue()
