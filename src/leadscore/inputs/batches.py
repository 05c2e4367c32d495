"""Reading an input file in batches of rows, so that a file larger than memory is read with
memory bounded by a batch: CSV and JSON lines a block of text at a time (cut where a row
ends), Parquet a row batch at a time. Text is read from a file, gzip-compressed or not, or
from standard input, whose format may be told from its first line (:func:`open_input`).

Each :class:`Batch` knows the line (or row) each of its rows has in the file, as
:mod:`leadscore.inputs.formats` does for a whole file: blank lines and values that hold line
breaks move the rows after them. CSV text is parsed by Arrow; only a block whose rows do not
each take one line (a quoted line break, a blank line) or that Arrow refuses is read again by
Python's ``csv`` module, which finds where its rows start and end. Lines that are not rows
(JSON that does not parse or holds no object, CSV with more or fewer values than the header
names) are kept in :attr:`Batch.bad`, for the caller to refuse or, asked to, skip.
"""

from __future__ import annotations

import csv
import gzip
import io
import sys
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from leadscore.errors import InputError, InputProblem, UsageError
from leadscore.inputs.formats import (
    DELIMITERS,
    FORMATS,
    SNIFF_CHARS,
    JsonRows,
    NamedData,
    _csv_options,
    csv_delimiter,
    json_lines,
    read_json,
    refuse_lines,
    separator_hint,
    table_format,
)

__all__ = ["BATCH_BYTES", "BATCH_ROWS", "STDIN", "Batch", "InputFile", "open_input"]

# CSV and JSON lines are read this much text at a time (about 45,000 events of a usual file);
# JSON lines at most BATCH_ROWS lines, Parquet BATCH_ROWS rows, at a time.
BATCH_BYTES = 4 << 20
BATCH_ROWS = 50_000
BOM = b"\xef\xbb\xbf"


@dataclass
class Batch:
    """Rows of an input read together, and how people find them in it."""

    name: str  # the input, as messages name it
    kind: str  # csv | jsonl | parquet | arrow
    table: pa.Table  # as read: CSV and JSON values as text, Parquet's as typed
    # the number of the first row when each row is one line (see lines)
    first: int
    # each row's line, when the rows do not each take one line (found when a row is named)
    lines: Callable[[], pa.Array | None] | None = None
    unit: str = "line"  # what the numbers count: line, row (Parquet), item (a JSON array)
    # lines that are not rows, with why: JSON holding no object, CSV of another width
    bad: list[tuple[int, str]] = field(default_factory=list)
    # what the lines in `bad` have, for a message about them: "{holds} no JSON object"
    bad_message: str = ""
    delimiter: str = ","  # a CSV file's separator

    def refuse(self) -> None:
        """Raise the lines that are not rows (the first of them), if there are any."""
        hint = separator_hint(self.delimiter) + " " if self.kind == "csv" else ""
        refuse_lines(self.name, self.unit, self.bad, hint)

    @classmethod
    def of_json(cls, name: str, rows: JsonRows) -> Batch:
        """The batch of what :func:`~leadscore.inputs.formats.json_lines` (or
        :func:`~leadscore.inputs.formats.read_json`) read."""
        lines = pa.array(rows.numbers, pa.int64())
        first = rows.numbers[0] if rows.numbers else 1
        return cls(
            name,
            "jsonl",
            rows.table,
            first,
            lambda: lines,
            rows.unit,
            rows.bad,
            "{holds} no JSON object",
        )


class _Counted(io.RawIOBase):
    """A binary stream that counts the bytes read from it (of a gzip file, the compressed
    bytes: how far into the file the reading is)."""

    def __init__(self, raw: IO[bytes], closes: bool = True) -> None:
        self.raw = raw
        self.closes = closes  # closing this closes raw (not standard input: not ours)
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.raw.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        self.count += n
        return n

    def close(self) -> None:
        if self.closes:
            self.raw.close()
        super().close()


class _Replayed(io.RawIOBase):
    """``head`` (bytes already read from ``rest``, to tell its format), then ``rest``."""

    def __init__(self, head: bytes, rest: Stream) -> None:
        self.head = head
        self.rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.head:
            n = min(len(buffer), len(self.head))
            buffer[:n] = self.head[:n]
            self.head = self.head[n:]
            return n
        data = self.rest.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self.rest.close()
        super().close()


Stream = io.BufferedReader | gzip.GzipFile
GZIP = b"\x1f\x8b"


class InputFile:
    """An input to read in :meth:`batches` (see :func:`open_input`): a file (plain or
    gzip-compressed), standard input, or data in memory (read as one batch)."""

    def __init__(
        self,
        name: str,
        kind: str | None,
        *,
        path: Path | None = None,
        stream: IO[bytes] | None = None,
        gzipped: bool = False,
        data: bytes | None = None,
        table: pa.Table | None = None,
        block: int | None = None,
        rows: int | None = None,
    ) -> None:
        """``kind`` None: told from the first bytes (:meth:`sniff`)."""
        self.name = name
        self.kind = kind
        self.gzipped = gzipped
        self.block = block or BATCH_BYTES  # bytes of text read at a time
        self.rows = rows or BATCH_ROWS  # Parquet rows, JSON lines, at most, at a time
        self.at_end = False  # the last batch has been read
        self._table = table
        self._parquet: pq.ParquetFile | None = None
        self._counted: _Counted | None = None
        self._reader: Stream | None = None
        self._size: int | None = None  # bytes of the input as stored (None: not known)
        self._rows_read = 0
        if data is not None:  # in memory: one batch, checked whole before anything is stored
            self.block = len(data) + 1
            self.rows = 1 << 62
            self._size = len(data)
            self._open(io.BytesIO(data))
        elif path is not None and kind == "parquet":
            try:
                self._parquet = pq.ParquetFile(path)
            except (pa.ArrowInvalid, OSError) as exc:
                raise InputError([InputProblem(name, f"cannot read as parquet: {exc}")]) from None
        elif path is not None:
            self._size = path.stat().st_size
            self._open(path.open("rb"))
        elif stream is not None:
            self._open(stream, closes=False)

    def _open(self, raw: IO[bytes], closes: bool = True) -> None:
        self._counted = _Counted(raw, closes)
        self._reader = io.BufferedReader(self._counted, buffer_size=1 << 16)
        if self.gzipped:
            self._reader = gzip.GzipFile(fileobj=self._reader, mode="rb")

    def sniff(self, formats: str) -> None:
        """Tell the format from the first bytes (a JSON object or array: JSON lines; a line
        holding a comma, a semicolon or a tab: CSV), and gzip-compressed text from its first
        two; InputError when it cannot be told (``formats`` names the option that says it)."""
        assert self._reader is not None
        head = _head(self._reader)
        if not self.gzipped and head.startswith(GZIP):
            self.gzipped = True
            self._reader = gzip.GzipFile(fileobj=self._replayed(head), mode="rb")
            try:
                head = _head(self._reader)
            except (OSError, EOFError, zlib.error) as exc:
                raise InputError([InputProblem(self.name, f"cannot read as gzip: {exc}")]) from None
        if self.kind is None:
            self.kind = _format_of(self.name, head, formats)
        self._reader = self._replayed(head)

    def _replayed(self, head: bytes) -> io.BufferedReader:
        assert self._reader is not None
        return io.BufferedReader(_Replayed(head, self._reader), buffer_size=1 << 16)

    def __enter__(self) -> InputFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
        if self._parquet is not None:
            self._parquet.close()

    def fraction(self) -> float | None:
        """How much of the input has been read (0 to 1); None when that is not known."""
        if self.at_end:
            return 1.0
        if self._parquet is not None:
            total = self._parquet.metadata.num_rows
            return self._rows_read / total if total else None
        if self._counted is not None and self._size:
            return min(self._counted.count / self._size, 1.0)
        return None

    def batches(self) -> Iterator[Batch]:
        """The input's rows, a batch at a time (at least one batch, maybe empty, so that
        its columns can be checked)."""
        if self._table is not None:
            self.at_end = True
            yield Batch(self.name, "arrow", self._table, 1, unit="row")
            return
        if self._parquet is not None:
            yield from self._parquet_batches(self._parquet)
            return
        assert self._reader is not None
        try:
            if self.kind == "csv":
                yield from _CsvBatches(self, self._reader).batches()
            else:
                yield from self._json_batches(self._reader)
        except (OSError, EOFError, zlib.error) as exc:  # a gzip file cut short, a pipe broken
            how = " as gzip" if self.gzipped else ""
            raise InputError([InputProblem(self.name, f"cannot read{how}: {exc}")]) from None

    def _parquet_batches(self, parquet: pq.ParquetFile) -> Iterator[Batch]:
        total = parquet.metadata.num_rows
        try:
            if not total:
                self.at_end = True
                yield Batch(self.name, "parquet", parquet.schema_arrow.empty_table(), 1, unit="row")
                return
            for record_batch in parquet.iter_batches(batch_size=self.rows):
                first = self._rows_read + 1
                self._rows_read += record_batch.num_rows
                self.at_end = self._rows_read >= total
                table = pa.Table.from_batches([record_batch])
                yield Batch(self.name, "parquet", table, first, unit="row")
        except (pa.ArrowInvalid, OSError) as exc:
            raise InputError([InputProblem(self.name, f"cannot read as parquet: {exc}")]) from None

    def _json_batches(self, stream: Stream) -> Iterator[Batch]:
        """JSON lines, :attr:`rows` lines or :attr:`block` bytes at a time; a file holding one
        JSON array (its first character a ``[``) is read whole, as one batch."""
        if stream.peek(len(BOM)).startswith(BOM):
            stream.read(len(BOM))
        if stream.peek(1 << 16).lstrip().startswith(b"["):
            data = stream.read()
            self.at_end = True
            yield Batch.of_json(self.name, read_json(self.name, _decoded(self.name, data, 1)))
            return
        n = 0  # the lines read
        while True:
            numbered: list[tuple[int, str]] = []
            undecoded: list[tuple[int, str]] = []
            size = 0
            for raw in stream:
                n += 1
                size += len(raw)
                try:
                    numbered.append((n, raw.decode("utf-8")))
                except UnicodeDecodeError as exc:
                    undecoded.append((n, _not_utf8(raw, exc)))
                if len(numbered) >= self.rows or size >= self.block:
                    break
            else:
                self.at_end = True
            rows = json_lines(numbered)
            rows.bad = sorted(rows.bad + undecoded)
            if rows.numbers or rows.bad or n == 0 or self.at_end:
                yield Batch.of_json(self.name, rows)
            if self.at_end:
                return


def _not_utf8(line: bytes, exc: UnicodeDecodeError) -> str:
    byte = line[exc.start : exc.start + 1].hex()
    return f"not UTF-8 text (byte 0x{byte}): save the file as UTF-8"


def _decoded(name: str, data: bytes, first_line: int) -> str:
    """``data`` (from line ``first_line`` of the input on) as text; InputError naming the first
    line that is not UTF-8."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = first_line + data.count(b"\n", 0, exc.start)
        start = data.rfind(b"\n", 0, exc.start) + 1
        problem = f"line {line} is {_not_utf8(data[start:], _shifted(exc, start))}"
        raise InputError([InputProblem(name, problem)]) from None


def _shifted(exc: UnicodeDecodeError, by: int) -> UnicodeDecodeError:
    return UnicodeDecodeError(exc.encoding, exc.object, exc.start - by, exc.end - by, exc.reason)


class _CsvBatches:
    """A CSV input in batches: its text read :attr:`InputFile.block` bytes at a time, each
    block cut after its last line break and parsed by Arrow; a block whose rows do not each
    take one line is parsed by ``csv`` to find where its rows start and end (a value in
    quotes may hold line breaks, even across the cut)."""

    def __init__(self, source: InputFile, stream: Stream) -> None:
        self.source = source
        self.name = source.name
        self.stream = stream
        self.eof = False
        self.header: list[str] = []
        self.options: pa_csv.ConvertOptions | None = None
        self.delimiter = ","  # found from the first lines (csv_delimiter)

    def _read(self, pending: bytes) -> bytes:
        chunk = self.stream.read(self.source.block)
        if not chunk:
            self.eof = True
        return pending + chunk

    def batches(self) -> Iterator[Batch]:
        pending = b""
        while len(pending) < len(BOM) and not self.eof:
            pending = self._read(pending)
        if pending.startswith(BOM):  # not part of the first column's name
            pending = pending[len(BOM) :]
        while len(pending) < SNIFF_CHARS and not self.eof:
            pending = self._read(pending)
        self.delimiter = csv_delimiter(pending[:SNIFF_CHARS].decode("utf-8", "replace"))
        pending, line = self._header(pending)
        yielded = need_more = False
        while True:
            while not self.eof and (
                need_more or len(pending) < self.source.block or b"\n" not in pending
            ):
                pending = self._read(pending)
                need_more = False
            if self.eof:
                piece, pending = pending, b""
            else:
                cut = pending.rfind(b"\n") + 1
                piece, pending = pending[:cut], pending[cut:]
            parsed = self._parse(piece, line)
            if parsed is None:  # one row, not yet whole: read on
                pending = piece + pending
                need_more = True
                continue
            batch, lines, rest = parsed
            pending = rest + pending
            line += lines
            done = self.eof and not pending
            self.source.at_end = done
            if batch.table.num_rows or batch.bad or (done and not yielded):
                yield batch
                yielded = True
            if done:
                return

    def _header(self, pending: bytes) -> tuple[bytes, int]:
        """The header (read from the first line, or lines when a quoted name holds a line
        break): the text after it, and the line the rows start on."""
        end = 0
        while True:
            nl = pending.find(b"\n", end)
            if nl < 0 and not self.eof:
                pending = self._read(pending)
                continue
            end = len(pending) if nl < 0 else nl + 1
            text = _decoded(self.name, pending[:end], 1)
            try:
                records = list(
                    csv.reader(
                        io.StringIO(text, newline="\n"), delimiter=self.delimiter, strict=True
                    )
                )
            except csv.Error:
                if end < len(pending) or not self.eof:
                    continue  # a quoted name goes on on the next line
                records = list(
                    csv.reader(io.StringIO(text, newline="\n"), delimiter=self.delimiter)
                )
            header = records[0] if records else None
            self.options = _csv_options(self.name, header)
            assert header is not None
            self.header = header
            return pending[end:], 1 + pending.count(b"\n", 0, end)

    def _arrow(self, piece: bytes) -> pa.Table:
        read = pa_csv.ReadOptions(column_names=self.header, use_threads=False)
        parse = pa_csv.ParseOptions(newlines_in_values=True, delimiter=self.delimiter)
        return pa_csv.read_csv(
            io.BytesIO(piece), read_options=read, parse_options=parse, convert_options=self.options
        )

    def _empty(self) -> pa.Table:
        return pa.table({h: pa.array([], pa.string()) for h in self.header})

    def _parse(self, piece: bytes, line: int) -> tuple[Batch, int, bytes] | None:
        """The rows of ``piece`` (text from line ``line`` on, cut after a line break unless
        at the end of the input), how many lines they take and the text left for the next
        batch; None when the piece holds no whole row yet."""
        breaks = piece.count(b"\n")
        lines = breaks + (1 if piece and not piece.endswith(b"\n") else 0)
        if not piece.strip(b"\r\n"):
            return (
                Batch(self.name, "csv", self._empty(), line, delimiter=self.delimiter),
                breaks,
                b"",
            )
        try:
            table = self._arrow(piece)
        except pa.ArrowInvalid:
            table = None
        if table is not None and table.num_rows == lines and self._ends_a_row(piece):
            batch = Batch(self.name, "csv", table, line, delimiter=self.delimiter)
            return batch, breaks, b""  # each row one line
        return self._parse_exactly(piece, line)

    def _ends_a_row(self, piece: bytes) -> bool:
        """Whether ``piece`` ends where a row ends, not inside a quoted value that goes on
        after the cut (its rows each one line: Arrow counted as many as there are lines, of
        which only the last can hold a quote left open)."""
        if self.eof:
            return True
        last = piece[piece.rfind(b"\n", 0, len(piece) - 1) + 1 :]
        if b'"' not in last:
            return True
        try:  # a value left open: "unexpected end of data" (Arrow reads quotes as csv does)
            last_text = io.StringIO(last.decode("utf-8", "replace"), newline="")
            list(csv.reader(last_text, delimiter=self.delimiter, strict=True))
        except csv.Error:
            return False
        return True

    def _parse_exactly(self, piece: bytes, line: int) -> tuple[Batch, int, bytes] | None:
        """:meth:`_parse` for a piece whose rows do not each take one line: ``csv`` finds
        where each row starts and ends; rows of another width than the header's go to
        :attr:`Batch.bad`; Arrow parses the others."""
        text = _decoded(self.name, piece, line)
        reader = csv.reader(io.StringIO(text, newline="\n"), delimiter=self.delimiter)
        records: list[tuple[int, int, int]] = []  # first line, line after it (0-based), width
        before = 0
        try:
            for record in reader:
                if record:  # not a blank line
                    records.append((before, reader.line_num, len(record)))
                before = reader.line_num
        except csv.Error as exc:
            where = f"line {line + before}"
            raise InputError(
                [InputProblem(self.name, f"{where}: cannot read as csv: {exc}")]
            ) from None
        if not self.eof:  # the last row may go on after the cut
            if len(records) < 2:
                return None
            records.pop()
        raw = piece.split(b"\n")
        used = records[-1][1] if records else len(raw)
        rest = b"\n".join(raw[used:])
        width = len(self.header)
        good = [r for r in records if r[2] == width]
        bad = [
            (line + s, f"{w} values where the header names {width}")
            for s, _, w in records
            if w != width
        ]
        rows_text = b"".join(b"\n".join(raw[s:e]) + b"\n" for s, e, _ in good)
        try:
            table = self._arrow(rows_text) if good else self._empty()
        except pa.ArrowInvalid as exc:
            last = line + (records[-1][1] if records else 0) - 1
            problem = f"lines {line}-{last}: cannot read as csv: {exc}"
            raise InputError([InputProblem(self.name, problem)]) from None
        if table.num_rows != len(good):
            last = line + used - 1
            problem = (
                f"lines {line}-{last}: cannot read as csv (Arrow reads {table.num_rows} rows "
                f"where Python's csv reads {len(good)})"
            )
            raise InputError([InputProblem(self.name, problem)])
        starts = pa.array([line + s for s, _, _ in good], pa.int64())
        batch = Batch(
            self.name,
            "csv",
            table,
            line,
            lambda: starts,
            bad=bad,
            bad_message="{has} more or fewer values than the header names",
            delimiter=self.delimiter,
        )
        return batch, used if records else piece.count(b"\n"), rest


def _head(stream: Stream) -> bytes:
    """The first bytes of ``stream`` (up to 64 KiB, fewer at its end), consumed."""
    head = b""
    while len(head) < 1 << 16:
        data = stream.read((1 << 16) - len(head))
        if not data:
            break
        head += data
    return head


def _format_of(name: str, head: bytes, formats: str) -> str:
    """The format of an input that starts with ``head``; InputError when it cannot be told."""
    text = head.removeprefix(BOM).lstrip()
    if not text:
        raise InputError([InputProblem(name, "is empty")])
    if text[:1] in (b"{", b"["):
        return "jsonl"
    if text.startswith(b"PAR1"):
        raise InputError(
            [InputProblem(name, "is Parquet, which is read from a file's end: give its path")]
        )
    line = text.split(b"\n", 1)[0].decode("utf-8", "replace").strip()
    if any(separator in line for separator in DELIMITERS):  # (the CSV reader finds which)
        return "csv"
    shown = line if len(line) <= 40 else line[:40] + "..."
    raise InputError(
        [InputProblem(name, f"cannot tell its format from its first line ({shown!r})")],
        f"Give it with {formats}.",
    )


FORMAT_NAMES = ("csv", "jsonl", "parquet")
STDIN = "-"  # a file name that means standard input


def open_input(
    source: str | Path | NamedData | pa.Table,
    fmt: str | None = None,
    *,
    stdin: IO[bytes] | None = None,
    block: int | None = None,
) -> InputFile:
    """An input to read in batches: a file's path (CSV, Parquet, JSON lines or a JSON array,
    by its extension or ``fmt``; ``.gz`` after the extension: gzip-compressed), ``-`` for
    standard input (``stdin``, by default the process's; its format ``fmt`` or told from its
    first bytes, gzip-compressed or not), an upload's bytes (:class:`NamedData`) or an Arrow
    table (the last two read as one batch). InputError when the file is not there, or is a
    directory, or its format is unknown (UsageError for a ``fmt`` that is no format)."""
    if fmt is not None and fmt not in FORMAT_NAMES:
        raise UsageError(f"--format is {', '.join(FORMAT_NAMES)}, not {fmt!r}")
    if isinstance(source, pa.Table):
        return InputFile("table", "arrow", table=source)
    if isinstance(source, NamedData):
        kind = fmt or FORMATS.get(Path(source.name).suffix.lower(), "csv")
        if kind == "parquet":
            try:
                table = pq.read_table(io.BytesIO(source.data))
            except (pa.ArrowInvalid, OSError) as exc:
                raise InputError(
                    [InputProblem(source.name, f"cannot read as parquet: {exc}")]
                ) from None
            return InputFile(source.name, "parquet", table=table)
        return InputFile(source.name, kind, data=source.data)
    formats = "--format csv or --format jsonl"
    if str(source) == STDIN:
        stream = stdin if stdin is not None else sys.stdin.buffer
        if stream.isatty():
            raise UsageError(
                "- reads the file from standard input, which is a terminal here: pipe or "
                "redirect the file into it (leadscore import events - < events.csv)"
            )
        if fmt == "parquet":
            raise UsageError("Parquet is read from a file's end, not from standard input")
        opened = InputFile("<stdin>", fmt, stream=stream, block=block)
        opened.sniff(formats)
        return opened
    path = Path(source)
    if path.suffix.lower() != ".gz":
        return InputFile(str(path), table_format(path, fmt), path=path, block=block)
    table_format(path, "csv")  # a file that is not there, or a directory
    inner = Path(path.stem).suffix.lower()  # events.csv.gz: .csv
    inner_kind = fmt or FORMATS.get(inner)
    if inner_kind is None and inner:
        known = ", ".join(f"{e}.gz" for e in sorted(FORMATS))
        problem = f"unknown file format {inner!r} inside .gz (use {known})"
        raise InputError([InputProblem(str(path), problem)])
    if inner_kind == "parquet":
        problem = "Parquet compresses its own columns: give the .parquet file, not gzipped"
        raise InputError([InputProblem(str(path), problem)])
    with path.open("rb") as fh:
        if fh.read(2) != GZIP:
            problem = "is not gzip-compressed (its name ends in .gz)"
            raise InputError([InputProblem(str(path), problem)])
    opened = InputFile(str(path), inner_kind, path=path, gzipped=True, block=block)
    if inner_kind is None:
        opened.sniff(f"{formats}, or name it FILE.csv.gz or FILE.jsonl.gz")
    return opened
