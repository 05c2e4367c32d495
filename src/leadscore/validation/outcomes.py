"""What counts as a conversion, and when each lead first converted."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from leadscore.engine.timeutil import MAX_US, MIN_US, parse_instant
from leadscore.errors import UsageError

__all__ = [
    "DEFAULT_CONVERSION",
    "NEVER",
    "Conversion",
    "check_instant",
    "conversion_times",
    "created_at",
    "created_by",
    "created_note",
    "created_times",
    "leads_counted",
    "parse_conversion",
    "parse_days",
    "unknown_leads",
]

NEVER = np.iinfo(np.int64).max  # the conversion time of a lead that never converted
MICROS_PER_DAY = 86_400_000_000
MAX_DAYS = 36_500  # the longest horizon or step: a hundred years

I64 = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Conversion:
    """A conversion: one of ``outcomes`` recorded within ``horizon_days`` of the reference
    time (for a backtest: of the cut-off at which the lead became MQL)."""

    outcomes: tuple[str, ...] = ("won", "opportunity")
    horizon_days: float = 90.0

    def __post_init__(self) -> None:
        if not self.outcomes:
            raise UsageError("a conversion needs at least one outcome (such as won)")
        if not 0 < self.horizon_days <= MAX_DAYS:
            raise UsageError(
                f"the horizon must be longer than 0 days and at most {MAX_DAYS:,}, "
                f"not {self.horizon_days}"
            )

    @property
    def horizon_us(self) -> int:
        return round(self.horizon_days * MICROS_PER_DAY)

    def describe(self) -> str:
        names = " or ".join(self.outcomes)
        return f"{names} within {self.horizon_days:g} days"


DEFAULT_CONVERSION = Conversion()


def parse_days(text: str, what: str) -> float:
    """``'90d'``, ``'2w'``, ``'12h'`` or a plain number of days, as days."""
    raw = text.strip().lower()
    units = {"d": 1.0, "w": 7.0, "h": 1 / 24}
    factor = 1.0
    if raw and raw[-1] in units:
        factor = units[raw[-1]]
        raw = raw[:-1]
    try:
        days = float(raw) * factor
    except ValueError:
        raise UsageError(f"{what}: {text!r} is not a duration (such as 90d, 2w or 12h)") from None
    if not days > 0:
        raise UsageError(f"{what}: {text!r} must be longer than zero")
    if not days <= MAX_DAYS:  # also infinity and NaN
        raise UsageError(f"{what}: {text!r} is longer than {MAX_DAYS:,} days")
    return days


def parse_conversion(
    outcomes: str, horizon: str = "90d", what: tuple[str, str] = ("--conversion", "--horizon")
) -> Conversion:
    """The conversion named by comma-separated outcomes (``won,opportunity``) and a horizon
    (``90d``); ``what`` names the two options in messages."""
    names = tuple(dict.fromkeys(p.strip().lower() for p in outcomes.split(",") if p.strip()))
    if not names:
        raise UsageError(f"{what[0]}: name at least one outcome, such as won,opportunity")
    return Conversion(names, parse_days(horizon, what[1]))


def check_instant(micros: int, what: str) -> int:
    """``micros`` if it is a time a date can show (the years 1 to 9999), else a UsageError
    naming ``what`` (a reference time moved back by a horizon can fall out)."""
    if not MIN_US <= micros <= MAX_US:
        raise UsageError(f"{what} falls outside the years 1 to 9999")
    return micros


def conversion_times(
    outcomes: pa.Table, lead_ids: pa.Array | pa.ChunkedArray, conversion: Conversion
) -> I64:
    """For each of ``lead_ids``, the time (epoch microseconds) of its first conversion
    outcome, or :data:`NEVER`. ``outcomes`` as :func:`leadscore.inputs.normalize_outcomes`
    makes them."""
    wanted = pa.array([o.lower() for o in conversion.outcomes], pa.string())
    conv = outcomes.filter(pc.is_in(outcomes.column("outcome"), value_set=wanted))
    out = np.full(len(lead_ids), NEVER, dtype=np.int64)
    if conv.num_rows == 0:
        return out
    ts = conv.column("ts").cast(pa.int64())
    first = (
        pa.table({"lead_id": conv.column("lead_id"), "ts": ts})
        .group_by("lead_id")
        .aggregate([("ts", "min")])
    )
    where = pc.index_in(lead_ids, value_set=first.column("lead_id").combine_chunks())
    found = pc.is_valid(where).to_numpy(zero_copy_only=False)
    times = first.column("ts_min").to_numpy()
    idx = where.fill_null(0).to_numpy(zero_copy_only=False)
    out[found] = times[idx[found]]
    return out


def created_times(leads: pa.Table, column: str) -> tuple[I64, int]:
    """Each lead's creation time (epoch microseconds) from the leads' ``column`` (ISO 8601 or
    epoch seconds), in the leads' order, and how many leads have none that can be read: they
    get :data:`NEVER` (no population holds them). A UsageError names a column the leads do
    not have (``--created-column``)."""
    if column not in leads.column_names:
        known = ", ".join(repr(c) for c in leads.column_names)
        raise UsageError(f"--created-column: the leads have no column {column!r} ({known})")
    out = np.full(leads.num_rows, NEVER, dtype=np.int64)
    unread = 0
    for i, value in enumerate(leads.column(column).to_pylist()):
        try:
            out[i] = parse_instant(value)
        except (ValueError, TypeError, OverflowError):
            unread += 1
    return out, unread


def created_at(scores: pa.Table, leads: pa.Table, created: I64) -> I64:
    """The creation time of each row of ``scores`` (a scoring run's table, by ``lead_id``):
    ``created`` is in the order of ``leads``, as :func:`created_times` gives it
    (:data:`NEVER` for a lead not among them)."""
    where = pc.index_in(
        scores.column("lead_id"), value_set=leads.column("lead_id").combine_chunks()
    )
    idx = where.fill_null(0).to_numpy(zero_copy_only=False)
    found = pc.is_valid(where).to_numpy(zero_copy_only=False)
    return np.where(found, created[idx], NEVER)


def created_by(scores: pa.Table, leads: pa.Table, created: I64, cut_us: int) -> pa.Table:
    """The rows of ``scores`` of the leads created at or before ``cut_us`` (see
    :func:`created_at`), in their order."""
    return scores.filter(pa.array(created_at(scores, leads, created) <= cut_us, pa.bool_()))


def leads_counted(n: int) -> str:
    """``1 lead``, ``2 leads``: for the notes of the reports."""
    return f"{n:,} lead" if n == 1 else f"{n:,} leads"


def created_note(unread: int, column: str) -> list[str]:
    """The note for leads left out because their creation time cannot be read."""
    if not unread:
        return []
    has, are = ("has", "is") if unread == 1 else ("have", "are")
    return [f"{leads_counted(unread)} {has} no readable {column!r} and {are} left out"]


def unknown_leads(outcomes: pa.Table, lead_ids: pa.Array | pa.ChunkedArray) -> int:
    """How many outcome rows name a lead that is not among ``lead_ids``."""
    if outcomes.num_rows == 0:
        return 0
    ids = lead_ids.combine_chunks() if isinstance(lead_ids, pa.ChunkedArray) else lead_ids
    known = pc.is_in(outcomes.column("lead_id"), value_set=ids)
    return int(outcomes.num_rows - int(pc.sum(known.cast(pa.int64())).as_py() or 0))
