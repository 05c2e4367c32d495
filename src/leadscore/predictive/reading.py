"""How the fit reads a column of an export: missing markers, formatted numbers, dates and ids.

Exports write a missing value many ways, numbers with thousands separators, percent or
currency signs, dates, and ids that are numbers. The evaluators read a lead's text as it is, so
the fit decides per column, on all of its values:

- a **missing marker** (``NA``, ``N/A``, ``#N/A``, ``null``, ``NaN``, ``?``, ``-``, ``--``,
  case ignored, and ``None`` written so, in a column without ``none``, which is often an answer:
  ``budget: none``) is a missing value, except ``NA`` in a column of upper-case codes like it
  (``EMEA``, ``APAC``; ``NA`` is also Namibia);
- a column whose values read as numbers written with thousands separators, a percent sign or a
  currency sign (``1,234.56``, ``1.234,56``, ``12%``, ``$3``, ``3 €``), one way for the whole
  column, is a column of numbers (``12%`` is 12);
- a column of dates (``2026-01-05``, ``05/01/2026``, ``5 Jan 2026``, with or without a time)
  is told apart, and so is the name of an id column (``lead_id``, ``Account ID``,
  ``customerId``);
- a target column says converted in the common spellings of yes (``yes``, ``y``, ``true``,
  ``t``, ``1``, ``1.0``) and no, or as ``--positive`` names it.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from leadscore.errors import UsageError
from leadscore.spec.conditions import WHITESPACE, fold, parse_number, to_text

__all__ = [
    "NUMERIC_SHARE",
    "NumberFormat",
    "date_example",
    "eq_key",
    "id_named",
    "missing_markers",
    "number_format",
    "read_target",
    "reading_notes",
    "value_counts",
]

Bools = npt.NDArray[np.bool_]
NUMERIC_SHARE = 0.95  # of a column's values (not missing) that read as numbers, or as dates


def eq_key(text: str) -> str:
    """What a value is as `eq` compares it: a number as that number (``1`` is ``01`` and
    ``1.0``), a text trimmed and case folded."""
    number = parse_number(text)
    return f"#{number + 0.0!r}" if number is not None else "$" + fold(text)  # -0 is 0


_MARKERS = {"na", "n/a", "#n/a", "null", "nan", "?", "-", "--"}  # compared case folded
_CODE = re.compile(r"[A-Z]{2,5}")


def missing_markers(distinct: Iterable[str]) -> set[str]:
    """Which of a column's ``distinct`` values (trimmed, not blank) are missing markers."""
    values = set(distinct)
    found = {v for v in values if v.casefold() in _MARKERS}
    nones = {v for v in values if v.casefold() == "none"}
    if nones == {"None"}:  # Python's blank; `none` is an answer (no budget), and `in` would
        found.add("None")  # take it with None: a column that holds it keeps both
    if "NA" in found:
        others = [v for v in values if v not in found]
        if others and sum(bool(_CODE.fullmatch(v)) for v in others) >= 0.9 * len(others):
            found.discard("NA")  # a code among codes: North America, Namibia
    return found


def value_counts(values: Iterable[Any]) -> Counter[str]:
    """A column's values, trimmed, and how many rows hold each; blanks and missing markers
    left out."""
    counts = Counter(t for v in values if v is not None and (t := str(v).strip(WHITESPACE)))
    for marker in missing_markers(counts):
        del counts[marker]
    return counts


# --- numbers written for people --------------------------------------------------------------

_SYMBOLS = "$€£¥₹"
_CODES = "USD|EUR|GBP|CHF|JPY|CAD|AUD|NZD|INR|CNY|SEK|NOK|DKK|PLN|CZK|BRL|MXN|ZAR"
_CURRENCY = rf"(?:[{_SYMBOLS}]|(?:{_CODES})(?![A-Za-z]))"
# thousands separator, decimal mark: the first style that reads a column wins
_STYLES = (
    (",", "."),
    (".", ","),
    (" ", ","),
    (" ", "."),
    ("'", "."),
)
_SPACES = " \u00a0\u202f"  # a space, a no-break space and a narrow one separate thousands
_APOSTROPHES = "'\u2019"  # as typed, and as a word processor turns it


def _style_pattern(group: str, decimal: str) -> re.Pattern[str]:
    g = {" ": f"[{_SPACES}]", "'": f"[{_APOSTROPHES}]"}.get(group, re.escape(group))
    d = re.escape(decimal)
    digits = rf"(?:[0-9]{{1,3}}(?:(?:{g})[0-9]{{3}})+|[0-9]+)(?:{d}[0-9]+)?|{d}[0-9]+"
    sign = r"(?P<{}>[+-]?)"
    return re.compile(
        rf"{sign.format('s1')}\s*(?P<pre>{_CURRENCY})?\s*{sign.format('s2')}"
        rf"(?P<digits>{digits})\s*(?P<post>%|{_CURRENCY})?"
    )


_PATTERNS = [_style_pattern(g, d) for g, d in _STYLES]


@dataclass(frozen=True)
class NumberFormat:
    """How a column writes its numbers: its thousands separator and decimal mark, and one of
    its values as written, for the notes."""

    style: int  # index in _STYLES
    example: str

    def read(self, text: str) -> float | None:
        """The number ``text`` stands for, or None when it is not written this way."""
        m = _PATTERNS[self.style].fullmatch(text.strip(WHITESPACE))
        if m is None or (m["pre"] and m["post"]) or (m["s1"] and m["s2"]):
            return None
        group, decimal = _STYLES[self.style]
        separators = {" ": _SPACES, "'": _APOSTROPHES}.get(group, group)
        digits = m["digits"].translate(dict.fromkeys(map(ord, separators)))
        number = float(digits.replace(decimal, "."))
        return -number if "-" in (m["s1"] + m["s2"]) else number

    def plain(self, value: str | None) -> str | None:
        """``value`` written as the evaluators read a number (``1234.5``), or as it was when
        it is not a number written this way (a missing marker, a text)."""
        if value is None:
            return None
        number = self.read(value)
        return value if number is None else to_text(number)

    @property
    def shown(self) -> str:
        """``'$1,234.56' as 1234.56``."""
        return f"{self.example!r} as {self.plain(self.example)}"


def number_format(values: Mapping[str, int]) -> NumberFormat | None:
    """The way a column writes its numbers (``values``: :func:`value_counts`), when at least
    :data:`NUMERIC_SHARE` of its rows read as numbers written one way and some of them are
    not numbers as the evaluators read them (``1,234``, ``12%``); else None."""
    total = sum(values.values())
    if not total:
        return None
    formatted = [v for v in values if parse_number(v) is None]
    if not formatted:
        return None  # plain numbers (or nothing): nothing to read otherwise
    readers = [NumberFormat(style, "") for style in range(len(_STYLES))]
    reads = [{v for v in values if fmt.read(v) is not None} for fmt in readers]
    fits = [k for k, r in enumerate(reads) if sum(values[v] for v in r) >= NUMERIC_SHARE * total]
    if not fits:
        return None

    def evidence(k: int) -> int:
        """How many values style ``k`` reads that another style that fits does not (``12.5``
        for ``1,234.56`` against ``1.234,56``); ``1.200`` both read, so it tells nothing."""
        return sum(values[v] for v in reads[k] if any(v not in reads[j] for j in fits))

    best = max(fits, key=lambda k: (evidence(k), -k))  # a tie: the first style
    shown = next((v for v in formatted if v in reads[best]), None)
    return None if shown is None else NumberFormat(best, shown)


# --- dates and ids ---------------------------------------------------------------------------

_MONTH = r"(?:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*\.?"
_TIME = (
    r"(?:[T ]\s*[0-9]{1,2}:[0-9]{2}(?::[0-9]{2}(?:[.,][0-9]+)?)?\s*(?:[ap]\.?m\.?)?\s*"
    r"(?:Z|UTC|GMT|[+-][0-9]{2}:?[0-9]{2})?)?"
)
_DATE = re.compile(
    r"(?:[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}"
    r"|[0-9]{4}/[0-9]{1,2}/[0-9]{1,2}"
    r"|[0-9]{1,2}[/.-][0-9]{1,2}[/.-](?:[0-9]{4}|[0-9]{2})"
    rf"|[0-9]{{1,2}}[ -]{_MONTH}[ -]?,?\s*[0-9]{{4}}"
    rf"|{_MONTH}\s+[0-9]{{1,2}}(?:st|nd|rd|th)?,?\s+[0-9]{{4}})" + _TIME,
    re.IGNORECASE,
)


def date_example(values: Mapping[str, int]) -> str | None:
    """One of a column's values (``values``: :func:`value_counts`), when at least
    :data:`NUMERIC_SHARE` of its rows hold dates (with or without a time of day); else
    None."""
    total = sum(values.values())
    dates = [v for v in values if _DATE.fullmatch(v)]
    if total and sum(values[v] for v in dates) >= NUMERIC_SHARE * total:
        return dates[0]
    return None


_ID_NAME = re.compile(r"(?:^|[^A-Za-z0-9])[Ii][Dd]$|[a-z0-9]I[Dd]$|(?:uu|gu|UU|GU)[Ii][Dd]$")


def id_named(column: str) -> bool:
    """Whether a column's name says it holds ids: ``id``, ``lead_id``, ``Account ID``,
    ``customerId``, ``CustomerID``, ``uuid`` (not ``paid`` or ``PAID``)."""
    return bool(_ID_NAME.search(column.strip(WHITESPACE)))


# --- the target and what the fit says it read -------------------------------------------

# a target's values that say converted, or not, without --positive (compared as `eq` does:
# case and spaces ignored, numbers as numbers: 1.0 is 1)
CONVERTED = ("yes", "y", "true", "t", "1")
NOT_CONVERTED = ("no", "n", "false", "f", "0")


def _values_found(texts: list[str], limit: int = 8) -> str:
    """``won (120), lost (300), open (40)``: the commonest values first, as written."""
    counts: dict[str, int] = {}
    shown: dict[str, str] = {}
    for t in texts:
        k = eq_key(t)
        counts[k] = counts.get(k, 0) + 1
        shown.setdefault(k, t)
    ranked = sorted(counts, key=lambda k: (-counts[k], shown[k]))
    out = ", ".join(f"{shown[k]} ({counts[k]:,})" for k in ranked[:limit])
    return out + (f" and {len(ranked) - limit} more" if len(ranked) > limit else "")


def read_target(values: list[Any], positive: str | None, column: str) -> Bools:
    """Who converted, from the target column's values (none missing): those equal to
    ``positive`` (as `eq` compares), else the common spellings of yes and no."""
    texts = [str(v).strip(WHITESPACE) for v in values]
    keys = [eq_key(t) for t in texts]
    if positive is not None:
        wanted = eq_key(positive.strip(WHITESPACE))
        if wanted not in set(keys):
            raise UsageError(
                f"--positive {positive!r}: no lead has it in {column!r} (its values: "
                f"{_values_found(texts)})"
            )
        return np.array([k == wanted for k in keys])
    yes = {eq_key(t) for t in CONVERTED}
    known = yes | {eq_key(t) for t in NOT_CONVERTED}
    if set(keys) <= known:
        return np.array([k in yes for k in keys])
    raise UsageError(
        f"--target {column!r}: its values are not yes/no, true/false, t/f, y/n or 1/0 "
        f"(found: {_values_found(texts)}): name the converted value with --positive"
    )


MISSING_SHOWN = 6  # columns named in the note of values read as missing


def reading_notes(leads: pa.Table, formats: dict[str, NumberFormat], names: list[str]) -> list[str]:
    """What the fit read otherwise than as written in the columns ``names`` of the leads:
    missing markers (``NA``, ``?``) per column, and numbers written for people (``formats``,
    :attr:`ScorecardClassifier.number_formats`)."""
    found = []
    for name in names:
        if name not in leads.column_names or not pa.types.is_string(leads.schema.field(name).type):
            continue  # an activity column, or a typed one (no marker in it)
        counts = pc.value_counts(pc.utf8_trim(leads.column(name), WHITESPACE)).to_pylist()
        written = {c["values"]: c["counts"] for c in counts if c["values"]}
        markers = sorted(missing_markers(written), key=lambda m: (-written[m], m))
        if markers:
            found.append((name, sum(written[m] for m in markers), markers))
    notes = []
    if found:
        shown = "; ".join(
            f"{name!r} {total:,} ({', '.join(markers)})"
            for name, total, markers in found[:MISSING_SHOWN]
        )
        more = len(found) - MISSING_SHOWN
        notes.append(
            f"values read as missing (as a blank is), by column: {shown}"
            + (f"; and {more:,} more column{'s' if more > 1 else ''}" if more > 0 else "")
        )
    for name, fmt in formats.items():
        plain = fmt.plain(fmt.example)
        notes.append(
            f"{name!r} read as numbers ({fmt.shown}): its rules compare numbers, and a model "
            f"reads a number only written plainly ({plain}), so the leads it scores need "
            f"{name!r} written so"
        )
    return notes
