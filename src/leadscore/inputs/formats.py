"""Input files: their formats, and reading one whole (CSV, Parquet, JSON lines or a JSON array).

CSV values stay text; JSON values become text (an object or a list as its JSON, read back by
:func:`json_value`). Problems name the file and the line. :mod:`leadscore.inputs.batches`
reads a file in batches instead, from disk, gzip or standard input.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterable
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
    "NamedData",
    "csv_text",
    "json_value",
    "read_data",
    "read_table",
    "table_format",
]

FORMATS = {
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
}
SHOWN = 5  # rows listed per problem before "and N more"


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
            header = next(csv.reader(io.StringIO(text, newline="")), None)
            options = _csv_options(source.name, header)
            try:
                return pa_csv.read_csv(io.BytesIO(text.encode("utf-8")), convert_options=options)
            except pa.ArrowInvalid as exc:
                _uneven_lines(source.name, io.StringIO(text, newline=""), exc)
                raise
        if kind == "parquet":
            return pq.read_table(io.BytesIO(source.data))
        return _jsonl_table(source.name, source.data.decode("utf-8-sig"))
    except InputError:
        raise
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError([InputProblem(source.name, f"cannot read as {kind}: {exc}")]) from None


def _row_lines(
    chunks: Iterable[bytes], text: Callable[[], Iterable[str]], kind: str, rows: int
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
        reader = csv.reader(text())
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


def _read_csv(p: Path) -> pa.Table:
    # utf-8-sig: a byte-order mark is not part of the first column's name (Arrow drops it too)
    with p.open(encoding="utf-8-sig", newline="") as fh:
        header = next(csv.reader(fh), None)
    try:
        return pa_csv.read_csv(p, convert_options=_csv_options(str(p), header))
    except pa.ArrowInvalid as exc:
        with p.open(encoding="utf-8-sig", errors="replace", newline="") as fh:
            _uneven_lines(str(p), fh, exc)
        raise


def _uneven_lines(name: str, text: Iterable[str], exc: pa.ArrowInvalid) -> None:
    """Arrow refused a CSV file for a line with more or fewer values than the header names
    (it says which text, not which line): raise the lines that have, up to :data:`SHOWN`,
    by number. Returns when that was not the refusal, or no such line is found."""
    if "Expected" not in str(exc) or "columns, got" not in str(exc):
        return
    reader = csv.reader(text)
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
        hint = "A value holding a comma needs double quotes around it."
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


def csv_text(table: pa.Table) -> str:
    """A table as CSV text, quoting only where needed (used by the command line)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(table.column_names)
    for batch in table.to_batches(max_chunksize=50_000):
        columns = [c.to_pylist() for c in batch.columns]
        writer.writerows(zip(*columns, strict=True))
    return buf.getvalue()
