"""Instants as integer microseconds since the Unix epoch, UTC: the one clock both evaluators use.

Ages are computed from integers (``(T - ts) / 86_400_000_000``), so the per-lead evaluator and
SQL divide the same exact numbers and get the same float.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta

__all__ = [
    "MAX_US",
    "MICROS_PER_DAY",
    "MIN_US",
    "from_micros",
    "iso_utc",
    "now_micros",
    "parse_instant",
    "to_micros",
]

MICROS_PER_DAY = 86_400_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NUMERIC = re.compile(r"[+-]?[0-9]+(\.[0-9]+)?")
# Epoch numbers are told apart by size: seconds up to 1e11 (the year 5138), then milliseconds
# (JavaScript), microseconds and nanoseconds.
_UNITS = ((1e11, 1.0), (1e14, 1e-3), (1e17, 1e-6))
MIN_US = _MIN_US = -62_135_596_800_000_000  # 0001-01-01
MAX_US = _MAX_US = 253_402_300_799_999_999  # 9999-12-31


def to_micros(value: datetime) -> int:
    """Microseconds since the epoch; a naive datetime is UTC."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return (value - _EPOCH) // timedelta(microseconds=1)


def from_micros(micros: int) -> datetime:
    return _EPOCH + timedelta(microseconds=micros)


def iso_utc(micros: int) -> str:
    """An instant as ISO 8601 text in UTC, as every answer shows times: ``2026-06-30T12:00:00Z``
    (with the microseconds when there are any)."""
    return from_micros(micros).isoformat().replace("+00:00", "Z")


def now_micros() -> int:
    return to_micros(datetime.now(UTC))


def parse_instant(value: object) -> int:
    """An instant from a datetime, ISO 8601 text or an epoch number (seconds, or milliseconds,
    microseconds or nanoseconds, told apart by size).

    Times without a zone are UTC. Raises ValueError with a readable message otherwise.
    """
    if isinstance(value, datetime):
        return _in_range(to_micros(value), value)
    if isinstance(value, bool):
        raise ValueError(f"not a time: {value!r}")
    if isinstance(value, (int, float)):
        return _epoch(float(value), value)
    if isinstance(value, str):
        text = value.strip()
        if _NUMERIC.fullmatch(text):
            return _epoch(float(text), value)
        try:  # RFC 3339 allows a lower-case t and z, which fromisoformat does not
            parsed = datetime.fromisoformat(text.upper())
        except ValueError:
            raise ValueError(
                f"not a time: {value!r} (expected ISO 8601 such as 2026-06-30T12:00:00Z, "
                "or epoch seconds)"
            ) from None
        return _in_range(to_micros(parsed), value)
    raise ValueError(f"not a time: {value!r}")


def typed_instant(value: datetime | str) -> int:
    """An instant a person typed (``--as-of``, an API's ``from``...): as
    :func:`parse_instant`, but not a whole number of fewer than nine digits: ``2026`` is a
    year and ``20260630`` a date to the person who typed them, not minutes or months after
    1970-01-01 as epoch seconds (epoch seconds of this century have ten digits)."""
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        digits = value.strip()
        if len(digits) < 9:
            example = (
                f"{digits}-01-01"
                if len(digits) == 4
                else f"{digits[:4]}-{digits[4:6]}-{digits[6:]}"
                if len(digits) == 8
                else "2026-06-30"
            )
            raise ValueError(
                f"{digits!r} is not a time: give a date such as {example} or "
                f"{example}T12:00:00Z (epoch seconds have ten digits)"
            )
    return parse_instant(value)


def _in_range(micros: int, original: object) -> int:
    """``micros`` if it lies in the years 1 to 9999 in UTC (a zone can push a time out)."""
    if not _MIN_US <= micros <= _MAX_US:
        raise ValueError(f"not a time: {original!r} (out of range: years 1 to 9999, UTC)")
    return micros


def _epoch(number: float, original: object) -> int:
    if not math.isfinite(number):
        raise ValueError(f"not a time: {original!r}")
    scale = 1e-9
    for limit, unit in _UNITS:
        if abs(number) < limit:
            scale = unit
            break
    micros = round(number * scale * 1_000_000)
    if not _MIN_US <= micros <= _MAX_US:
        raise ValueError(f"not a time: {original!r} (out of range)")
    return micros
