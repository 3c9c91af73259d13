"""Small inline SVG charts for the HTML report: lines, bars and a stage flow.

Hand-written SVG rather than images: the report stays one offline file, the text stays
sharp at any zoom, and a browser test can check the layout in the DOM. Every chart is an
``<svg class="chart" data-chart=NAME>`` whose plotting area is ``<g class="plot">`` and
whose legend is ``<g class="legend">`` *above* the plotting area, never over the bars or
lines (the browser test checks that their boxes do not overlap).
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

import numpy as np

STAGE_COLOURS = {
    "Nurture": "#7fa7d6",
    "Purchase": "#1f5fa8",
    "Retention": "#3f9a5b",
    "Exit": "#d0453f",
}
PALETTE = ("#1f5fa8", "#d0453f", "#3f9a5b", "#e39b2d", "#7b4fa0", "#6b6b6b", "#2aa3a3")
FONT = "font-family:system-ui,sans-serif;font-size:11px"


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values covering [lo, hi]."""
    if not math.isfinite(lo) or not math.isfinite(hi) or hi <= lo:
        return [lo] if math.isfinite(lo) else [0.0]
    raw = (hi - lo) / n
    step = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * step:
            step *= m
            break
    first = math.floor(lo / step) * step
    return [first + i * step for i in range(int(math.ceil((hi - first) / step)) + 1)]


def _fmt(v: float, percent: bool = False) -> str:
    if percent:
        return f"{v:.0%}"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:g}"


def _legend(names: Sequence[str], colours: Sequence[str], x0: float, y: float) -> str:
    items, x = [], x0
    for name, colour in zip(names, colours, strict=True):
        items.append(
            f'<rect x="{x:.1f}" y="{y - 9:.1f}" width="10" height="10" fill="{colour}"/>'
            f'<text x="{x + 14:.1f}" y="{y:.1f}">{_esc(name)}</text>'
        )
        x += 24 + 6.5 * len(str(name))
    return f'<g class="legend">{"".join(items)}</g>'


class _Frame:
    """Pixel mapping of a plot area with a legend band above it."""

    def __init__(self, width: int, height: int, legend: bool, left: int = 56) -> None:
        self.width, self.height = width, height
        self.left, self.right = left, width - 16
        self.top = 44 if legend else 28
        self.bottom = height - 40

    def x(self, frac: float) -> float:
        return self.left + frac * (self.right - self.left)

    def y(self, frac: float) -> float:
        return self.bottom - frac * (self.bottom - self.top)


def _open(name: str, width: int, height: int, title: str) -> str:
    return (
        f'<svg class="chart" data-chart="{_esc(name)}" '
        f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="{_esc(title)}" style="{FONT}">'
        f'<text x="8" y="16" style="font-weight:600;font-size:13px">{_esc(title)}</text>'
    )


def line_chart(
    name: str,
    title: str,
    x_labels: Sequence[str],
    series: dict[str, Sequence[float]],
    colours: dict[str, str] | None = None,
    percent: bool = False,
    width: int = 700,
    height: int = 260,
    y_min: float | None = None,
) -> str:
    """Lines over categorical x values (NaN leaves a gap); legend above the plot."""
    colours = colours or {}
    names = list(series)
    cols = [colours.get(n, PALETTE[i % len(PALETTE)]) for i, n in enumerate(names)]
    values = np.array([np.asarray(series[n], dtype=float) for n in names]).reshape(len(names), -1)
    finite = values[np.isfinite(values)]
    lo = float(finite.min()) if finite.size else 0.0
    hi = float(finite.max()) if finite.size else 1.0
    lo = min(lo, 0.0) if y_min is None else y_min
    ticks = _ticks(lo, hi if hi > lo else lo + 1)
    lo, hi = ticks[0], ticks[-1]
    f = _Frame(width, height, legend=len(names) > 1)
    n = len(x_labels)
    pos = [f.x(0.5 if n == 1 else i / (n - 1)) for i in range(n)]
    out = [_open(name, width, height, title)]
    if len(names) > 1:
        out.append(_legend(names, cols, f.left, 34))
    plot = [
        f'<rect x="{f.left}" y="{f.top}" width="{f.right - f.left}" '
        f'height="{f.bottom - f.top}" fill="#fafafa" stroke="#ddd"/>'
    ]
    for t in ticks:
        y = f.y((t - lo) / (hi - lo))
        plot.append(
            f'<line x1="{f.left}" x2="{f.right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e4e4e4"/>'
            f'<text x="{f.left - 6}" y="{y + 4:.1f}" text-anchor="end">{_fmt(t, percent)}</text>'
        )
    step = max(1, math.ceil(n / 12))
    for i in range(0, n, step):
        plot.append(
            f'<text x="{pos[i]:.1f}" y="{f.bottom + 16}" text-anchor="middle">'
            f"{_esc(x_labels[i])}</text>"
        )
    for row, colour, label in zip(values, cols, names, strict=True):
        segments, current = [], []
        for x, v in zip(pos, row, strict=True):
            if math.isfinite(v):
                current.append(f"{x:.1f},{f.y((v - lo) / (hi - lo)):.1f}")
            elif current:
                segments.append(current)
                current = []
        if current:
            segments.append(current)
        for seg in segments:
            plot.append(
                f'<polyline fill="none" stroke="{colour}" stroke-width="2" '
                f'points="{" ".join(seg)}"><title>{_esc(label)}</title></polyline>'
            )
            for point in seg:
                px, py = point.split(",")
                plot.append(f'<circle cx="{px}" cy="{py}" r="2.5" fill="{colour}"/>')
    out.append(f'<g class="plot">{"".join(plot)}</g></svg>')
    return "".join(out)


def bar_chart(
    name: str,
    title: str,
    labels: Sequence[str],
    values: Sequence[float],
    colour: str = "#1f5fa8",
    colours: Sequence[str] | None = None,
    marker: tuple[float, str] | None = None,
    width: int = 700,
    height: int = 240,
    value_labels: Sequence[str] | None = None,
) -> str:
    """Vertical bars, one per label; ``marker`` = (fractional x position, text) draws a line."""
    v = np.asarray(values, dtype=float)
    ticks = _ticks(0.0, float(np.nanmax(v)) if v.size and np.nanmax(v) > 0 else 1.0)
    hi = ticks[-1]
    f = _Frame(width, height, legend=False)
    n = max(len(labels), 1)
    slot = (f.right - f.left) / n
    out = [_open(name, width, height, title)]
    plot = [
        f'<rect x="{f.left}" y="{f.top}" width="{f.right - f.left}" '
        f'height="{f.bottom - f.top}" fill="#fafafa" stroke="#ddd"/>'
    ]
    for t in ticks:
        y = f.y(t / hi)
        plot.append(
            f'<line x1="{f.left}" x2="{f.right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e4e4e4"/>'
            f'<text x="{f.left - 6}" y="{y + 4:.1f}" text-anchor="end">{_fmt(t)}</text>'
        )
    step = max(1, math.ceil(n / 14))
    for i, (label, value) in enumerate(zip(labels, v, strict=True)):
        x = f.left + i * slot + slot * 0.1
        top = f.y((value if math.isfinite(value) else 0) / hi)
        fill = colours[i] if colours else colour
        plot.append(
            f'<rect class="bar" x="{x:.1f}" y="{top:.1f}" width="{slot * 0.8:.1f}" '
            f'height="{f.bottom - top:.1f}" fill="{fill}"><title>{_esc(label)}: '
            f"{_fmt(value)}</title></rect>"
        )
        if value_labels is not None:
            plot.append(
                f'<text x="{x + slot * 0.4:.1f}" y="{top - 3:.1f}" text-anchor="middle">'
                f"{_esc(value_labels[i])}</text>"
            )
        if i % step == 0:
            plot.append(
                f'<text x="{x + slot * 0.4:.1f}" y="{f.bottom + 16}" text-anchor="middle">'
                f"{_esc(label)}</text>"
            )
    if marker is not None:
        mx = f.x(marker[0])
        plot.append(
            f'<line x1="{mx:.1f}" x2="{mx:.1f}" y1="{f.top}" y2="{f.bottom}" '
            f'stroke="#222" stroke-dasharray="4 3"/>'
            f'<text x="{mx + 4:.1f}" y="{f.top + 12}">{_esc(marker[1])}</text>'
        )
    out.append(f'<g class="plot">{"".join(plot)}</g></svg>')
    return "".join(out)


def flow_chart(
    name: str,
    title: str,
    stages: Sequence[str],
    counts: np.ndarray,
    left_label: str,
    right_label: str,
    width: int = 700,
    height: int = 360,
) -> str:
    """A two-column Sankey: ``counts[i, j]`` contacts moved from stage i to stage j.

    Stages stay in the given (quadrant) order on both sides; a band's width is its
    count, bands that keep their stage are pale so that moves stand out.
    """
    counts = np.asarray(counts, dtype=float)
    total = counts.sum()
    top, bottom, gap = 48, height - 16, 10
    usable = bottom - top - gap * (len(stages) - 1)
    scale = usable / total if total > 0 else 0.0
    x0, x1, node = 150, width - 150, 14
    out = [_open(name, width, height, title)]
    out.append(
        '<g class="legend">'
        f'<text x="{x0}" y="36" text-anchor="middle">{_esc(left_label)}</text>'
        f'<text x="{x1 + node}" y="36" text-anchor="middle">{_esc(right_label)}</text></g>'
    )
    plot = []

    def nodes(totals: np.ndarray) -> list[float]:
        ys, y = [], top
        for t in totals:
            ys.append(y)
            y += t * scale + gap
        return ys

    left_y, right_y = nodes(counts.sum(axis=1)), nodes(counts.sum(axis=0))
    out_off = list(left_y)
    in_off = list(right_y)
    for i, a in enumerate(stages):
        for j, b in enumerate(stages):
            c = counts[i, j]
            if c <= 0:
                continue
            h = c * scale
            ya, yb = out_off[i], in_off[j]
            out_off[i] += h
            in_off[j] += h
            colour = STAGE_COLOURS.get(b, "#888")
            opacity = 0.18 if i == j else 0.55
            mid = (x0 + node + x1) / 2
            path = (
                f"M{x0 + node},{ya:.1f} C{mid},{ya:.1f} {mid},{yb:.1f} {x1},{yb:.1f} "
                f"L{x1},{yb + h:.1f} C{mid},{yb + h:.1f} {mid},{ya + h:.1f} {x0 + node},"
                f"{ya + h:.1f} Z"
            )
            plot.append(
                f'<path class="band" d="{path}" fill="{colour}" fill-opacity="{opacity}">'
                f"<title>{_esc(a)} -&gt; {_esc(b)}: {c:,.0f}</title></path>"
            )
    for k, stage in enumerate(stages):
        colour = STAGE_COLOURS.get(stage, "#888")
        lt, rt = counts[k].sum(), counts[:, k].sum()
        plot.append(
            f'<rect x="{x0}" y="{left_y[k]:.1f}" width="{node}" height="{max(lt * scale, 1):.1f}" '
            f'fill="{colour}"/><text x="{x0 - 6}" y="{left_y[k] + 10:.1f}" text-anchor="end">'
            f"{_esc(stage)} {lt:,.0f}</text>"
            f'<rect x="{x1}" y="{right_y[k]:.1f}" width="{node}" height="{max(rt * scale, 1):.1f}" '
            f'fill="{colour}"/><text x="{x1 + node + 6}" y="{right_y[k] + 10:.1f}">'
            f"{_esc(stage)} {rt:,.0f}</text>"
        )
    out.append(f'<g class="plot">{"".join(plot)}</g></svg>')
    return "".join(out)
