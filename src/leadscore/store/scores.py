"""Current scores (a cache) and the append-only score history.

Writing a new score for a lead compares it with the current one; any change of score, band,
grade or MQL flag appends a history row with its reason and is returned as a
:class:`ScoreChange` for the triggers to look at.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from leadscore.engine.result import ScoreResult
from leadscore.store.db import (
    Statement,
    any_of,
    driver_json,
    driver_rows,
    driver_sql,
    in_list,
    write_together,
)
from leadscore.store.schema import model_versions, score_history, scores

__all__ = [
    "HISTORY_MIN_DELTA",
    "REASONS",
    "NewScore",
    "ScoreChange",
    "current_scores",
    "current_scores_statements",
    "leads_on_replaced_versions",
    "write_scores",
]

REASONS = ("event", "profile", "decay", "model change", "manual")
# Decay moves scores a little on every rescoring; smaller moves than this (with the same band,
# grade and MQL flag) update the current score but leave no history row.
HISTORY_MIN_DELTA = 0.01


@dataclass(slots=True)
class NewScore:
    """A freshly computed score of one lead on one sheet (not to be changed once made).

    Not frozen, and pickled as the tuple of its fields: the scoring process sends hundreds
    a batch, which a frozen dataclass with slots makes several times slower to build and to
    unpickle."""

    lead_id: str
    sheet: str
    model_version_id: int
    as_of_us: int
    score: float
    fit: float
    engagement: float
    grade: str | None
    band: str | None
    mql: bool
    priority: str | None
    groups: dict[str, float]

    @classmethod
    def from_result(cls, lead_id: str, version_id: int, as_of_us: int, r: ScoreResult) -> NewScore:
        return cls(
            lead_id,
            r.model,
            version_id,
            as_of_us,
            r.score,
            r.fit,
            r.engagement,
            r.grade,
            r.band,
            r.mql,
            r.priority,
            {g.group_id: g.points for g in r.groups},
        )

    def __reduce__(self) -> tuple[type[NewScore], tuple[Any, ...]]:
        return (
            NewScore,
            (
                self.lead_id,
                self.sheet,
                self.model_version_id,
                self.as_of_us,
                self.score,
                self.fit,
                self.engagement,
                self.grade,
                self.band,
                self.mql,
                self.priority,
                self.groups,
            ),
        )

    def row(self, now_us: int) -> tuple[Any, ...]:
        """Its row of ``scores`` (the groups as JSON text, for the driver), in the table's
        order of columns."""
        values = {
            "lead_id": self.lead_id,
            "sheet": self.sheet,
            "model_version_id": self.model_version_id,
            "as_of_us": self.as_of_us,
            "score": self.score,
            "fit": self.fit,
            "engagement": self.engagement,
            "grade": self.grade,
            "band": self.band,
            "mql": self.mql,
            "priority": self.priority,
            "groups": driver_json(self.groups),
            "updated_us": now_us,
        }
        return tuple(values[name] for name in _NAMES)


@dataclass(frozen=True, slots=True)
class ScoreChange:
    """What one rescoring changed for one lead on one sheet (``old_*`` None: first score)."""

    lead_id: str
    sheet: str
    model_version_id: int
    old_score: float | None
    new_score: float
    old_band: str | None
    new_band: str | None
    old_grade: str | None
    new_grade: str | None
    old_mql: bool | None
    new_mql: bool
    reason: str
    detail: str | None
    recorded: bool = True  # False: a move under HISTORY_MIN_DELTA, not in the history

    @property
    def is_first(self) -> bool:
        return self.old_score is None


def current_scores(
    conn: Connection, lead_ids: Iterable[str], sheet: str | None = None
) -> dict[tuple[str, str], dict[str, Any]]:
    """Current score rows (column name -> value) keyed by (lead_id, sheet). ``groups`` is as
    the driver gives it (JSON text from SQLite, decoded by psycopg): write_scores compares
    the text on SQLite and does not read it on PostgreSQL."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for sql, params in current_scores_statements(conn, lead_ids, sheet):
        for values in driver_rows(conn, sql, params):
            row = dict(zip(_NAMES, values, strict=True))
            row["mql"] = bool(row["mql"])  # 0 / 1 from SQLite
            found[(row["lead_id"], row["sheet"])] = row
    return found


def leads_on_replaced_versions(conn: Connection, sheet: str | None = None) -> int:
    """How many leads have a current score (on ``sheet``, or on any sheet with an active
    model version) that another version made: what a publish whose rescoring stopped part way
    leaves (the next rescoring brings them over: :func:`write_scores`). One pass over the
    scores."""
    active = model_versions.alias("active")
    on_sheet = sa.and_(active.c.name == scores.c.sheet, active.c.status == "published")
    q = (
        sa.select(sa.func.count(sa.distinct(scores.c.lead_id)))
        .select_from(scores.join(active, on_sheet))
        .where(scores.c.model_version_id != active.c.id)
    )
    if sheet is not None:
        q = q.where(scores.c.sheet == sheet)
    return int(conn.execute(q).scalar_one())


def current_scores_statements(
    conn: Connection, lead_ids: Iterable[str], sheet: str | None = None
) -> list[Statement]:
    """The statements :func:`current_scores` runs (for :func:`~leadscore.store.db.prefetched`)."""
    ids = list(dict.fromkeys(lead_ids))
    out: list[Statement] = []
    for start in range(0, len(ids), 500):
        test, params = any_of(conn, "lead_id", ids[start : start + 500])
        sql = f"SELECT {_COLUMNS} FROM scores WHERE {test}"
        if sheet is not None:
            sql += " AND sheet = ?"
            params += (sheet,)
        out.append((driver_sql(conn, sql), params))
    return out


# the hottest statements go to the driver as they are (see leadscore.store.db.driver_sql)
_NAMES = tuple(c.name for c in scores.columns)
_COLUMNS = ", ".join(_NAMES)
# in the order write_scores gives them
_HISTORY_NAMES = (
    "lead_id",
    "sheet",
    "model_version_id",
    "as_of_us",
    "old_score",
    "new_score",
    "old_band",
    "new_band",
    "old_grade",
    "new_grade",
    "old_mql",
    "new_mql",
    "reason",
    "detail",
    "recorded_us",
)
assert set(_HISTORY_NAMES) == {c.name for c in score_history.columns} - {"id"}
_INSERT_SCORES = f"INSERT INTO scores ({_COLUMNS}) VALUES {in_list(len(_NAMES))}"
_INSERT_HISTORY = (
    f"INSERT INTO score_history ({', '.join(_HISTORY_NAMES)}) VALUES {in_list(len(_HISTORY_NAMES))}"
)


# Set on an update only when their value changed: an index over a column that the UPDATE
# sets is rewritten even for an equal value (SQLite), so leaving out the unchanged ones (fit,
# band, grade on most events) saves index pages on every commit. Every column but the key and
# the two times, which _changed_values always sets (each a NewScore field of the same name).
_VARYING = tuple(
    c.name for c in scores.columns if c.name not in ("lead_id", "sheet", "as_of_us", "updated_us")
)


def _all_values(n: NewScore, now_us: int) -> dict[str, Any]:
    """The columns of ``n``'s row to set (name -> value), all of them (PostgreSQL: an
    indexed column set to its own value does not stop an update from leaving the indexes
    alone, where the page has room), so that one statement serves every row: one round trip
    instead of one per set of changed columns."""
    values: dict[str, Any] = {"as_of_us": n.as_of_us, "updated_us": now_us}
    for column in _VARYING:
        values[column] = driver_json(n.groups) if column == "groups" else getattr(n, column)
    return values


def _changed_values(n: NewScore, old: Mapping[str, Any], now_us: int) -> dict[str, Any]:
    """The columns of ``n``'s row to set (name -> value), the two times and the changed ones
    (SQLite: ``old``'s groups are the JSON text stored, compared as text)."""
    values: dict[str, Any] = {"as_of_us": n.as_of_us, "updated_us": now_us}
    for column in _VARYING:
        value = getattr(n, column)
        if column == "groups":  # set as JSON text
            value = driver_json(value)
            if old["groups"] != value:
                values["groups"] = value
        elif old[column] != value:
            values[column] = value
    return values


def write_scores(
    conn: Connection,
    new: Sequence[NewScore],
    reason: str,
    now_us: int,
    detail: str | None = None,
    *,
    current: Mapping[tuple[str, str], Mapping[str, Any]] | None = None,
    finishing_publish: bool = False,
    reasons: Mapping[tuple[str, str], str] | None = None,
) -> list[ScoreChange]:
    """Store ``new`` as the current scores; record and return what changed.

    A score that moved by less than :data:`HISTORY_MIN_DELTA` with the same band, grade, MQL
    flag and model version updates the current row and leaves no history; it is still returned
    (with ``recorded=False``) so that a trigger on a number (``crosses: 50``) sees a score
    that creeps across it.

    With ``finishing_publish`` (a rescoring of every lead: Store.rescore_all, whatever its
    reason), a score moved to another model version is recorded as ``model change``: the
    rescoring finishes a publish that stopped part way (a killed process, a failed write), as
    that publish would have recorded it (and such a change fires only the triggers that ask
    for model changes). ``reasons`` gives some (lead, sheet) another reason than ``reason``.
    """
    assert reason in REASONS, reason
    if current is None:
        current = current_scores(conn, (n.lead_id for n in new))
    inserts: list[NewScore] = []
    updates: list[tuple[NewScore, dict[str, Any]]] = []
    history: list[tuple[Any, ...]] = []
    changes: list[ScoreChange] = []
    sqlite = conn.dialect.name == "sqlite"
    for n in new:
        old = current.get((n.lead_id, n.sheet))
        if old is None:
            inserts.append(n)
        else:
            values = _changed_values(n, old, now_us) if sqlite else _all_values(n, now_us)
            updates.append((n, values))
        same_labels = old is not None and (
            old["band"] == n.band
            and old["grade"] == n.grade
            and bool(old["mql"]) == n.mql
            and old["model_version_id"] == n.model_version_id
        )
        if old is not None and same_labels and old["score"] == n.score:
            continue
        recorded = old is None or not (
            same_labels and abs(old["score"] - n.score) < HISTORY_MIN_DELTA
        )
        why = reason if reasons is None else reasons.get((n.lead_id, n.sheet), reason)
        if finishing_publish and old is not None and old["model_version_id"] != n.model_version_id:
            why = "model change"
        change = ScoreChange(
            n.lead_id,
            n.sheet,
            n.model_version_id,
            None if old is None else float(old["score"]),
            n.score,
            None if old is None else old["band"],
            n.band,
            None if old is None else old["grade"],
            n.grade,
            None if old is None else bool(old["mql"]),
            n.mql,
            why,
            detail,
            recorded,
        )
        changes.append(change)
        if not recorded:
            continue
        history.append(
            (
                n.lead_id,
                n.sheet,
                n.model_version_id,
                n.as_of_us,
                change.old_score,
                n.score,
                change.old_band,
                n.band,
                change.old_grade,
                n.grade,
                change.old_mql,
                n.mql,
                why,
                detail,
                now_us,
            )
        )
    writes = [(driver_sql(conn, _INSERT_SCORES), [n.row(now_us) for n in inserts])]
    # one executemany per set of changed columns (on PostgreSQL, one: every column)
    shapes: dict[tuple[str, ...], list[tuple[Any, ...]]] = {}
    for n, values in updates:
        shapes.setdefault(tuple(values), []).append((*values.values(), n.lead_id, n.sheet))
    for names, rows in shapes.items():
        sets = ", ".join(f"{name} = ?" for name in names)
        sql = f"UPDATE scores SET {sets} WHERE lead_id = ? AND sheet = ?"
        writes.append((driver_sql(conn, sql), rows))
    writes.append((driver_sql(conn, _INSERT_HISTORY), history))
    write_together(conn, writes)  # on PostgreSQL in one round trip
    return changes
