"""The numbers of the overview: how a sheet's leads are spread over scores, bands and grades,
how many became MQL each day, and who turned hot lately. Aggregates run in the database."""

from __future__ import annotations

import math
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from leadscore.spec import Model
from leadscore.store.schema import leads, score_history, scores

__all__ = ["DAY_US", "histogram_width", "sheet_overview"]

DAY_US = 86_400_000_000
NICE_WIDTHS = (1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000)


def histogram_width(low: float, high: float, bins: int = 20) -> float:
    """A round bin width that spreads ``low..high`` over about ``bins`` bins."""
    span = max(high - low, 1.0)
    for width in NICE_WIDTHS:
        if span / width <= bins:
            return float(width)
    return float(10 ** math.ceil(math.log10(span / bins)))


def _counts(conn: Connection, sheet: str, *columns: sa.ColumnElement[Any]) -> list[tuple[Any, ...]]:
    return [
        tuple(r)
        for r in conn.execute(
            sa.select(*columns, sa.func.count()).where(scores.c.sheet == sheet).group_by(*columns)
        )
    ]


def sheet_overview(
    conn: Connection, sheet: str, model: Model, now_us: int, days: int = 30
) -> dict[str, Any]:
    """Counts of one sheet: leads, MQLs, per band, per grade, grade x band, a score
    histogram, MQLs per day over ``days`` days and the leads that turned hot in 24 hours."""
    band_order = [name for name, _ in model.bands]
    grade_order = [name for name, _ in model.grades]
    top_band = band_order[-1] if band_order else None

    # one walk of the index (sheet, band, grade, mql): no table read, no sort
    by_band = {b: 0 for b in band_order}
    by_grade = {g: 0 for g in grade_order}
    matrix: dict[str, dict[str, int]] = {g: {b: 0 for b in band_order} for g in grade_order}
    total = mqls = 0
    for band, grade, mql, n in _counts(conn, sheet, scores.c.band, scores.c.grade, scores.c.mql):
        g, b = grade or "-", band or "-"  # "-": below the lowest band or grade
        by_band[b] = by_band.get(b, 0) + n
        by_grade[g] = by_grade.get(g, 0) + n
        matrix.setdefault(g, {})[b] = matrix.get(g, {}).get(b, 0) + n
        total += n
        mqls += n if mql else 0
    for row in matrix.values():  # every cell, also the empty ones
        for b in by_band:
            row.setdefault(b, 0)
    # each a seek at one end of the index (sheet, score)
    low = conn.execute(
        sa.select(sa.func.min(scores.c.score)).where(scores.c.sheet == sheet)
    ).scalar()
    high = conn.execute(
        sa.select(sa.func.max(scores.c.score)).where(scores.c.sheet == sheet)
    ).scalar()

    histogram: dict[str, Any] = {"width": 0.0, "bins": []}
    if total and low is not None and high is not None:
        width = histogram_width(float(low), float(high))
        first = math.floor(float(low) / width)
        last = math.floor(float(high) / width)
        counts = {}
        for b in range(first, last + 1):  # a range of the index (sheet, score) each: no sort
            in_bin = sa.and_(
                scores.c.sheet == sheet,
                scores.c.score >= b * width,
                scores.c.score < (b + 1) * width,
            )
            counts[b] = int(conn.execute(sa.select(sa.func.count()).where(in_bin)).scalar_one())
        histogram = {
            "width": width,
            "bins": [
                {"from": b * width, "to": (b + 1) * width, "leads": counts.get(b, 0)}
                for b in range(first, last + 1)
            ],
        }

    # MQLs per day: the changes that made a lead an MQL, by the day they were recorded
    today = now_us // DAY_US
    since = (today - days + 1) * DAY_US
    day = score_history.c.recorded_us // DAY_US  # integer division on both databases
    became = sa.and_(
        score_history.c.sheet == sheet,
        score_history.c.new_mql.is_(True),
        sa.or_(score_history.c.old_mql.is_(None), score_history.c.old_mql.is_(False)),
        score_history.c.recorded_us >= since,
    )
    per_day = {
        int(d): int(n)
        for d, n in conn.execute(sa.select(day, sa.func.count()).where(became).group_by(day))
    }
    mqls_per_day = [
        {"day_us": d * DAY_US, "mqls": per_day.get(d, 0)}
        for d in range(today - days + 1, today + 1)
    ]

    hot: list[dict[str, Any]] = []
    hot_count = 0
    if top_band is not None:
        crossed = sa.and_(
            score_history.c.sheet == sheet,
            score_history.c.new_band == top_band,
            sa.or_(score_history.c.old_band.is_(None), score_history.c.old_band != top_band),
            score_history.c.recorded_us >= now_us - DAY_US,
        )
        hot_count = conn.execute(
            sa.select(sa.func.count(sa.distinct(score_history.c.lead_id))).where(crossed)
        ).scalar_one()
        rows = conn.execute(
            sa.select(
                score_history.c.lead_id,
                score_history.c.recorded_us,
                score_history.c.old_score,
                score_history.c.new_score,
                score_history.c.old_band,
                score_history.c.reason,
                leads.c.email,
                leads.c.profile,
                leads.c.owner,
            )
            .join(leads, leads.c.lead_id == score_history.c.lead_id)
            .where(crossed)
            .order_by(score_history.c.id.desc())
            .limit(50)
        ).mappings()
        hot = [dict(r) for r in rows]
    return {
        "sheet": sheet,
        "leads": int(total),
        "mqls": int(mqls),
        "top_band": top_band,
        "in_top_band": by_band.get(top_band, 0) if top_band else 0,
        "bands": [{"band": b, "leads": n} for b, n in by_band.items()],
        "grades": [{"grade": g, "leads": n} for g, n in by_grade.items()],
        "matrix": {"grades": list(matrix), "bands": list(by_band), "counts": matrix},
        "histogram": histogram,
        "mqls_per_day": mqls_per_day,
        "turned_hot_24h": {"leads": int(hot_count), "latest": hot},
    }
