"""Charts drawn on the server as inline SVG: no script, nothing to load, text escaped.

Each chart scales to its container (``viewBox``) and keeps its axes, tick labels and units;
every bar and point carries a ``<title>`` with its exact numbers for a pointer's hover.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime

from markupsafe import Markup, escape

__all__ = [
    "bar_chart",
    "line_chart",
    "nice_step",
    "nice_ticks",
    "sparkline",
    "standalone",
    "step_chart",
]

REASON_COLOURS = {
    "event": "#2563eb",
    "profile": "#7c3aed",
    "decay": "#9ca3af",
    "model change": "#d97706",
    "manual": "#059669",
}


def nice_step(raw: float) -> float:
    """The round step (1, 2, 2.5 or 5 times a power of ten) at least ``raw``."""
    power = 10.0 ** math.floor(math.log10(raw))
    return float(next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw))


def nice_ticks(low: float, high: float, count: int = 5, whole: bool = False) -> list[float]:
    """Round tick values covering ``low..high`` (about ``count`` of them); ``whole``: whole
    numbers only (counts)."""
    if high - low < 1e-6:
        high = low + 1.0
    raw = (high - low) / max(count, 1)
    if whole:
        raw = max(raw, 1.0)
    step = nice_step(raw)
    first = math.floor(low / step) * step
    ticks = []
    value = first
    while value <= high + step * 1e-9:
        ticks.append(round(value, 10))
        value += step
    if ticks[-1] < high:
        ticks.append(round(value, 10))
    return ticks


def _num(value: float) -> str:
    if value == int(value):
        return f"{int(value):,}"
    return f"{value:,.1f}"


def sparkline(
    points: Sequence[tuple[int, float]], *, width: int = 120, height: int = 28, label: str = ""
) -> Markup:
    """A step line of a score over time, without axes (its first and last values are in its
    title), the end marked with a dot."""
    if not points:
        return Markup("")
    t0, t1 = points[0][0], points[-1][0]
    values = [v for _, v in points]
    lo, hi = min(values), max(values)
    if hi - lo < 1e-9:
        lo, hi = lo - 1, hi + 1
    pad = 3

    def x(t: int) -> float:
        return pad + (width - 2 * pad) * ((t - t0) / (t1 - t0) if t1 > t0 else 1.0)

    def y(v: float) -> float:
        return pad + (height - 2 * pad) * (1 - (v - lo) / (hi - lo))

    d = f"M{x(points[0][0]):.1f},{y(points[0][1]):.1f}"
    prev = points[0][1]
    for t, v in points[1:]:
        d += f" H{x(t):.1f}"
        if v != prev:
            d += f" V{y(v):.1f}"
        prev = v
    end_x, end_y = x(points[-1][0]), y(points[-1][1])
    rising = values[-1] >= values[0]
    colour = "#16a34a" if rising else "#dc2626"
    title = f"{label}{_num(values[0])} → {_num(values[-1])}"
    return Markup(
        f'<svg class="spark" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'role="img" aria-label="{escape(title)}"><title>{escape(title)}</title>'
        f'<path d="{d}" fill="none" stroke="{colour}" stroke-width="1.5"/>'
        f'<circle cx="{end_x:.1f}" cy="{end_y:.1f}" r="2.2" fill="{colour}"/></svg>'
    )


def bar_chart(
    bars: Sequence[tuple[str, float, str]],
    *,
    x_label: str,
    y_label: str,
    width: int = 640,
    height: int = 240,
    colours: Sequence[str] | None = None,
    every: int = 0,
) -> Markup:
    """Vertical bars: (tick label, value, hover title) each; a y axis with round ticks.
    ``every`` labels only every n-th bar (0: as many as fit)."""
    left, right, top, bottom = 64, 12, 12, 46
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = max((v for _, v, _ in bars), default=0.0)
    ticks = nice_ticks(0, max(peak, 1.0), 4, whole=True)
    top_value = ticks[-1]
    parts = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(y_label)} by {escape(x_label)}">'
    ]
    for tick in ticks:
        ty = top + plot_h * (1 - tick / top_value)
        parts.append(
            f'<line x1="{left}" x2="{width - right}" y1="{ty:.1f}" y2="{ty:.1f}" class="grid"/>'
            f'<text x="{left - 6}" y="{ty + 4:.1f}" text-anchor="end">{_num(tick)}</text>'
        )
    n = max(len(bars), 1)
    slot = plot_w / n
    step = every or max(1, math.ceil(n / max(plot_w // 48, 1)))
    for i, (label, value, title) in enumerate(bars):
        h = plot_h * value / top_value
        bx = left + i * slot + slot * 0.1
        colour = colours[i] if colours else "#2563eb"
        parts.append(
            f'<rect x="{bx:.1f}" y="{top + plot_h - h:.1f}" width="{slot * 0.8:.1f}" '
            f'height="{max(h, 0):.1f}" fill="{colour}"><title>{escape(title)}</title></rect>'
        )
        if i % step == 0:
            parts.append(
                f'<text x="{left + i * slot + slot / 2:.1f}" y="{top + plot_h + 16}" '
                f'text-anchor="middle">{escape(label)}</text>'
            )
    parts.append(
        f'<line x1="{left}" x2="{width - right}" y1="{top + plot_h}" y2="{top + plot_h}" '
        f'class="axis"/>'
        f'<text x="{left + plot_w / 2:.1f}" y="{height - 6}" text-anchor="middle" '
        f'class="label">{escape(x_label)}</text>'
        f'<text x="12" y="{top + plot_h / 2:.1f}" text-anchor="middle" class="label" '
        f'transform="rotate(-90 12 {top + plot_h / 2:.1f})">{escape(y_label)}</text></svg>'
    )
    return Markup("".join(parts))


def _date(us: int, with_time: bool = False) -> str:
    moment = datetime.fromtimestamp(us / 1e6, tz=UTC)
    return moment.strftime("%d %b %H:%M" if with_time else "%d %b")


def step_chart(
    points: Sequence[tuple[int, float, str]],
    *,
    until_us: int,
    y_label: str = "score (points)",
    width: int = 640,
    height: int = 240,
    thresholds: Sequence[tuple[str, float]] = (),
) -> Markup:
    """A score over time: (time, new score, reason) per change, oldest first, drawn as steps
    up to ``until_us``; each change is a dot coloured by its reason. ``thresholds`` are drawn
    as dashed lines (a band's lower bound, the MQL threshold)."""
    if not points:
        return Markup("")
    left, right, top, bottom = 64, 12, 12, 46
    plot_w, plot_h = width - left - right, height - top - bottom
    t0 = points[0][0]
    t1 = max(until_us, points[-1][0], t0 + 1)
    values = [v for _, v, _ in points] + [v for _, v in thresholds]
    ticks = nice_ticks(min(0.0, min(values)), max(values), 4)
    lo, hi = ticks[0], ticks[-1]

    def x(t: int) -> float:
        return left + plot_w * (t - t0) / (t1 - t0)

    def y(v: float) -> float:
        return top + plot_h * (1 - (v - lo) / (hi - lo))

    parts = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" aria-label="score history">'
    ]
    for tick in ticks:
        parts.append(
            f'<line x1="{left}" x2="{width - right}" y1="{y(tick):.1f}" y2="{y(tick):.1f}" '
            f'class="grid"/><text x="{left - 6}" y="{y(tick) + 4:.1f}" text-anchor="end">'
            f"{_num(tick)}</text>"
        )
    # one line and one label per value: the MQL threshold is often a band's lower bound
    named: dict[float, list[str]] = {}
    for name, value in thresholds:
        if lo <= value <= hi:
            named.setdefault(value, []).append(name)
    for value, names in named.items():
        label = f"{', '.join(names)} {_num(value)}"
        parts.append(
            f'<line x1="{left}" x2="{width - right}" y1="{y(value):.1f}" y2="{y(value):.1f}" '
            f'class="threshold"/><text x="{width - right - 4}" y="{y(value) - 4:.1f}" '
            f'text-anchor="end" class="threshold-label">{escape(label)}</text>'
        )
    span_days = (t1 - t0) / 86_400e6
    stamps = [t0 + (t1 - t0) * i // 4 for i in range(5)]
    texts = [_date(t, with_time=span_days < 3) for t in stamps]
    # a short history repeats a minute: each text once, the first's and the last's kept
    shown: dict[str, int] = {}
    for i in (0, 4, 1, 2, 3):
        shown.setdefault(texts[i], i)
    for i in sorted(shown.values()):
        # the first and last labels stay inside the chart
        anchor = "start" if i == 0 else "end" if i == 4 else "middle"
        parts.append(
            f'<text x="{x(stamps[i]):.1f}" y="{top + plot_h + 16}" text-anchor="{anchor}">'
            f"{texts[i]}</text>"
        )
    d = f"M{x(points[0][0]):.1f},{y(points[0][1]):.1f}"
    for t, v, _ in points[1:]:
        d += f" H{x(t):.1f} V{y(v):.1f}"
    d += f" H{x(t1):.1f}"
    parts.append(f'<path d="{d}" fill="none" stroke="#111827" stroke-width="1.5"/>')
    for t, v, reason in points:
        colour = REASON_COLOURS.get(reason, "#111827")
        title = f"{_date(t, True)} UTC: {_num(v)} ({reason})"
        parts.append(
            f'<circle cx="{x(t):.1f}" cy="{y(v):.1f}" r="3.5" fill="{colour}">'
            f"<title>{escape(title)}</title></circle>"
        )
    parts.append(
        f'<line x1="{left}" x2="{width - right}" y1="{top + plot_h}" y2="{top + plot_h}" '
        f'class="axis"/><text x="{left + plot_w / 2:.1f}" y="{height - 6}" '
        f'text-anchor="middle" class="label">date (UTC)</text>'
        f'<text x="12" y="{top + plot_h / 2:.1f}" text-anchor="middle" class="label" '
        f'transform="rotate(-90 12 {top + plot_h / 2:.1f})">{escape(y_label)}</text></svg>'
    )
    return Markup("".join(parts))


def line_chart(
    series: Sequence[tuple[str, Sequence[tuple[float, float]], str]],
    *,
    x_label: str,
    y_label: str,
    x_range: tuple[float, float] = (0.0, 1.0),
    y_range: tuple[float, float] = (0.0, 1.0),
    percent: bool = True,
    width: int = 420,
    height: int = 320,
) -> Markup:
    """Lines through (x, y) points: (name, points, colour) each, a legend (bottom right),
    axes with round ticks (shown as percentages with ``percent``); a dashed line is named with
    a leading ``~`` (such as a random-choice diagonal)."""
    left, right, top, bottom = 56, 24, 12, 46
    plot_w, plot_h = width - left - right, height - top - bottom
    (x0, x1), (y0, y1) = x_range, y_range

    def x(v: float) -> float:
        return left + plot_w * (v - x0) / ((x1 - x0) or 1.0)

    def y(v: float) -> float:
        return top + plot_h * (1 - (v - y0) / ((y1 - y0) or 1.0))

    def label(v: float) -> str:
        return f"{v * 100:.0f}%" if percent else _num(v)

    parts = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(y_label)} by {escape(x_label)}">'
    ]
    for tick in nice_ticks(y0, y1, 4):
        if tick <= y1 + 1e-9:
            parts.append(
                f'<line x1="{left}" x2="{width - right}" y1="{y(tick):.1f}" y2="{y(tick):.1f}" '
                f'class="grid"/><text x="{left - 6}" y="{y(tick) + 4:.1f}" text-anchor="end">'
                f"{label(tick)}</text>"
            )
    for tick in nice_ticks(x0, x1, 4):
        if tick <= x1 + 1e-9:
            parts.append(
                f'<text x="{x(tick):.1f}" y="{top + plot_h + 16}" text-anchor="middle">'
                f"{label(tick)}</text>"
            )
    for i, (name, points, colour) in enumerate(series):
        if not points:
            continue
        dashed = name.startswith("~")
        shown = name.lstrip("~")
        d = " ".join(
            f"{'M' if j == 0 else 'L'}{x(px):.1f},{y(py):.1f}" for j, (px, py) in enumerate(points)
        )
        parts.append(
            f'<path d="{d}" fill="none" stroke="{colour}" stroke-width="{1 if dashed else 2}"'
            + (' stroke-dasharray="4 3"' if dashed else "")
            + f"><title>{escape(shown)}</title></path>"
        )
        # the legend sits bottom right, under the diagonal that gains and ROC curves stay above
        lx = left + plot_w * 0.45
        ly = top + plot_h - 10 - (len(series) - 1 - i) * 16
        parts.append(
            f'<line x1="{lx:.1f}" x2="{lx + 18:.1f}" y1="{ly - 4}" y2="{ly - 4}" '
            f'stroke="{colour}" stroke-width="2"'
            + (' stroke-dasharray="4 3"' if dashed else "")
            + f'/><text x="{lx + 24:.1f}" y="{ly}">{escape(shown)}</text>'
        )
    parts.append(
        f'<line x1="{left}" x2="{width - right}" y1="{top + plot_h}" y2="{top + plot_h}" '
        f'class="axis"/><line x1="{left}" x2="{left}" y1="{top}" y2="{top + plot_h}" '
        f'class="axis"/><text x="{left + plot_w / 2:.1f}" y="{height - 6}" '
        f'text-anchor="middle" class="label">{escape(x_label)}</text>'
        f'<text x="12" y="{top + plot_h / 2:.1f}" text-anchor="middle" class="label" '
        f'transform="rotate(-90 12 {top + plot_h / 2:.1f})">{escape(y_label)}</text></svg>'
    )
    return Markup("".join(parts))


SVG_STYLE = (
    "text{font:11px sans-serif;fill:#4b5563}text.label{font-size:12px;fill:#111827}"
    ".grid{stroke:#eef0f3}.axis{stroke:#9ca3af}"
    ".threshold{stroke:#ef4444;stroke-dasharray:4 3}.threshold-label{fill:#b91c1c;font-size:10px}"
)


def standalone(svg: Markup) -> str:
    """A chart as an SVG file of its own (namespace and styles inside, white background)."""
    text = str(svg)
    head, rest = text.split(">", 1)
    head = head.replace("<svg ", '<svg xmlns="http://www.w3.org/2000/svg" ', 1)
    return (
        f'{head}><style>{SVG_STYLE}</style><rect width="100%" height="100%" fill="#fff"/>{rest}\n'
    )
