"""Inline SVG charts rendered on the server: hospital networks are offline, so no JS, no CDN.

Each function returns a complete ``<svg>`` element as a string; every text that comes
from data is XML-escaped here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf")
EARL_COLOURS = {"clinical": "#7f7f7f", "EARL1": "#2ca02c", "EARL2": "#1f77b4",
                "indeterminate": "#ff7f0e"}


def _svg(width: int, height: int, body: str, title: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{width}" '
            f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
            f'aria-label="{escape(title)}"><title>{escape(title)}</title>{body}</svg>')


def line_chart(series: Mapping[str, Sequence[tuple[str, float | None]]], title: str,
               width: int = 640, height: int = 220, y_max: float = 1.0,
               percent: bool = True) -> str:
    """Lines over a shared, sorted category axis (days); None values leave gaps."""
    left, right, top, bottom = 44, 130, 20, 30
    xs = sorted({x for points in series.values() for x, _ in points})
    if not xs:
        return _svg(width, 40, f'<text x="4" y="24">{escape(title)}: no data</text>', title)
    plot_w, plot_h = width - left - right, height - top - bottom
    step = plot_w / max(len(xs) - 1, 1)
    xpos = {x: left + i * step for i, x in enumerate(xs)}

    def ypos(v: float) -> float:
        return top + plot_h * (1 - min(v, y_max) / y_max)

    parts = [f'<text x="{left}" y="14" class="title">{escape(title)}</text>']
    for frac in (0, 0.25, 0.5, 0.75, 1.0):
        y = ypos(frac * y_max)
        label = f"{frac * y_max:.0%}" if percent else f"{frac * y_max:g}"
        parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" '
                     f'stroke="#ddd"/><text x="{left - 4}" y="{y + 4:.1f}" '
                     f'text-anchor="end" class="tick">{label}</text>')
    for i in sorted({0, len(xs) - 1, len(xs) // 2}):
        parts.append(f'<text x="{xpos[xs[i]]:.1f}" y="{height - 8}" text-anchor="middle" '
                     f'class="tick">{escape(xs[i])}</text>')
    for k, (name, points) in enumerate(sorted(series.items())):
        colour = PALETTE[k % len(PALETTE)]
        segments: list[list[str]] = [[]]
        for x, v in sorted(points):
            if v is None:
                segments.append([])
                continue
            segments[-1].append(f"{xpos[x]:.1f},{ypos(v):.1f}")
            parts.append(f'<circle cx="{xpos[x]:.1f}" cy="{ypos(v):.1f}" r="2.5" '
                         f'fill="{colour}"><title>{escape(name)} {escape(x)}: '
                         f'{v:.1%}</title></circle>' if percent else
                         f'<circle cx="{xpos[x]:.1f}" cy="{ypos(v):.1f}" r="2.5" '
                         f'fill="{colour}"/>')
        for seg in segments:
            if len(seg) > 1:
                parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" '
                             f'points="{" ".join(seg)}"/>')
        ly = top + 14 * k
        parts.append(f'<rect x="{width - right + 8}" y="{ly}" width="10" height="10" '
                     f'fill="{colour}"/><text x="{width - right + 22}" y="{ly + 9}" '
                     f'class="legend">{escape(name[:18])}</text>')
    return _svg(width, height, "".join(parts), title)


def stacked_bars(rows: Sequence[tuple[str, Mapping[str, int]]], order: Sequence[str],
                 title: str, colours: Mapping[str, str] = EARL_COLOURS,
                 width: int = 640) -> str:
    """One horizontal 100% bar per row, split by ``order`` (e.g. EARL classes)."""
    left, bar_h, gap, top = 150, 16, 6, 22
    height = top + len(rows) * (bar_h + gap) + 24
    plot_w = width - left - 10
    parts = [f'<text x="4" y="14" class="title">{escape(title)}</text>']
    for i, (label, counts) in enumerate(rows):
        y = top + i * (bar_h + gap)
        total = sum(counts.get(k, 0) for k in order)
        parts.append(f'<text x="{left - 6}" y="{y + 12}" text-anchor="end" class="tick">'
                     f'{escape(label[:24])}</text>')
        x = float(left)
        for key in order:
            n = counts.get(key, 0)
            if not total or not n:
                continue
            w = plot_w * n / total
            parts.append(f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{bar_h}" '
                         f'fill="{colours.get(key, "#999")}"><title>{escape(label)} '
                         f'{escape(key)}: {n} ({n / total:.1%})</title></rect>')
            x += w
        if not total:
            parts.append(f'<text x="{left + 4}" y="{y + 12}" class="tick">no data</text>')
    ly = top + len(rows) * (bar_h + gap) + 8
    for k, key in enumerate(order):
        parts.append(f'<rect x="{left + k * 110}" y="{ly}" width="10" height="10" '
                     f'fill="{colours.get(key, "#999")}"/><text x="{left + k * 110 + 14}" '
                     f'y="{ly + 9}" class="legend">{escape(key)}</text>')
    return _svg(width, height, "".join(parts), title)


def histogram(edges: Sequence[float], counts: Sequence[int], title: str, unit: str = "ml",
              width: int = 320, height: int = 160) -> str:
    """Bars of ``counts`` over bins starting at ``edges`` (the last bin open-ended)."""
    left, top, bottom = 30, 20, 28
    plot_w, plot_h = width - left - 6, height - top - bottom
    peak = max(counts) if counts else 0
    parts = [f'<text x="4" y="14" class="title">{escape(title)}</text>']
    if not peak:
        parts.append(f'<text x="{left}" y="{top + 20}" class="tick">no data</text>')
        return _svg(width, height, "".join(parts), title)
    bw = plot_w / len(counts)
    for i, n in enumerate(counts):
        h = plot_h * n / peak
        x = left + i * bw
        label = f"{edges[i]:g}-{edges[i + 1]:g}" if i + 1 < len(edges) else f">={edges[i]:g}"
        parts.append(f'<rect x="{x + 1:.1f}" y="{top + plot_h - h:.1f}" width="{bw - 2:.1f}" '
                     f'height="{h:.1f}" fill="#1f77b4"><title>{label} {unit}: {n}'
                     f'</title></rect><text x="{x + bw / 2:.1f}" y="{height - 14}" '
                     f'text-anchor="middle" class="tick">{edges[i]:g}</text>')
    parts.append(f'<text x="{left - 4}" y="{top + 8}" text-anchor="end" class="tick">{peak}'
                 f'</text><text x="{width - 6}" y="{height - 2}" text-anchor="end" '
                 f'class="tick">{unit}</text>')
    return _svg(width, height, "".join(parts), title)
