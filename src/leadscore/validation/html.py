"""The validation report as HTML: charts drawn as inline SVG, styles inline, no script.

:func:`render_html` writes a whole self-contained page (``leadscore report --html``);
:func:`report_charts` and the ``report_body.html`` template are shared with the web
interface's Validation page.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup

from leadscore import charts

__all__ = ["TEMPLATES", "format_filters", "render_html", "report_charts"]

TEMPLATES = Path(__file__).parent / "templates"
DASH = "\u2013"  # an en dash: no figure
BAND_COLOURS = {"hot": "#dc2626", "warm": "#f59e0b", "cold": "#60a5fa"}


def pct(value: float | None, digits: int = 1) -> str:
    """A share as a percentage; a dash when there is none."""
    return DASH if value is None else f"{value * 100:.{digits}f}%"


def num(value: float | None, digits: int = 1) -> str:
    """A number with thousands separators, whole numbers without decimals; a dash for none."""
    if value is None:
        return DASH
    if float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:,.{digits}f}"


def format_filters(env: Environment) -> None:
    """Register the ``pct`` and ``num`` filters the report templates use."""
    env.filters["pct"] = pct
    env.filters["num"] = num


def _rate_bars(rows: list[dict[str, Any]], key: str) -> list[tuple[str, float, str]]:
    return [
        (
            str(r[key]),
            (r["rate"] or 0.0) * 100,
            f"{r[key]}: {r['conversions']:,} of {r['leads']:,} converted ({pct(r['rate'])})",
        )
        for r in rows
    ]


def report_charts(report: dict[str, Any]) -> dict[str, Markup]:
    """The report's charts, by name: bands, deciles, gains, roc, calibration."""
    out: dict[str, Markup] = {}
    bands = [b for b in report["bands"] if b["leads"]]
    if bands:
        out["bands"] = charts.bar_chart(
            _rate_bars(bands, "band"),
            x_label="band",
            y_label="converted (%)",
            colours=[BAND_COLOURS.get(b["band"], "#2563eb") for b in bands],
            width=420,
        )
    deciles = report["deciles"]
    if deciles:
        out["deciles"] = charts.bar_chart(
            [
                (
                    str(d["decile"]),
                    (d["rate"] or 0.0) * 100,
                    f"decile {d['decile']} ({num(d['min_score'])} to {num(d['max_score'])} "
                    f"points): {d['conversions']:,} of {d['leads']:,} converted "
                    f"({pct(d['rate'])}, lift {num(d['lift'], 2)})",
                )
                for d in deciles
            ],
            x_label="score decile (1 = highest scores)",
            y_label="converted (%)",
            width=420,
            every=1,
        )
        if report["conversions"]:
            n = report["leads"]
            gains = [(0.0, 0.0)] + [(d["cumulative_leads"] / n, d["gains"] or 0.0) for d in deciles]
            out["gains"] = charts.line_chart(
                [("model", gains, "#2563eb"), ("~random", [(0.0, 0.0), (1.0, 1.0)], "#9ca3af")],
                x_label="leads contacted, highest scores first",
                y_label="conversions found",
            )
    if report["roc_curve"]:
        auc = report["roc_auc"]["value"]
        out["roc"] = charts.line_chart(
            [
                (f"model (AUC {auc:.3f})", [tuple(p) for p in report["roc_curve"]], "#2563eb"),
                ("~random (AUC 0.5)", [(0.0, 0.0), (1.0, 1.0)], "#9ca3af"),
            ],
            x_label="false positive rate",
            y_label="true positive rate",
        )
    calibration = report["calibration"]
    if calibration:
        out["calibration"] = charts.bar_chart(
            [
                (
                    num(c["low"]),
                    (c["rate"] or 0.0) * 100,
                    f"{num(c['low'])} to {num(c['high'])} points: {c['conversions']:,} of "
                    f"{c['leads']:,} converted ({pct(c['rate'])})",
                )
                for c in calibration
            ],
            x_label="score range (lower bound, points)",
            y_label="converted (%)",
            width=420,
        )
    return out


def render_html(report: dict[str, Any]) -> str:
    """The report as one self-contained HTML page."""
    env = Environment(
        loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(default=True)
    )
    format_filters(env)
    page = env.get_template("report.html")
    return page.render(r=report, charts=report_charts(report))
