"""Tiny dependency-free SVG bar charts for the static site.

Why SVG rather than plotly: inlining plotly.js costs ~4.8 MB per page (the site must work from
``file://`` with no network), while these charts are a few kilobytes, need no JavaScript, print
well and keep every label escaped by construction. One small panel per metric: a horizontal bar
per run with its confidence interval as an error bar, and the real-vs-real floor as a dashed line.
"""

from __future__ import annotations

from markupsafe import Markup, escape

from .records import Column, Table, fmt_number

_W = 340          # panel width
_LABEL_W = 130    # left label gutter
_VALUE_W = 62     # right value gutter
_ROW_H = 18
_TOP = 26
_BOTTOM = 22
_LABEL_CHARS = 20


def _clip(text: str, n: int = _LABEL_CHARS) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _num(x: float) -> str:
    return f"{x:.1f}"


def metric_panel(table: Table, column: Column) -> Markup:
    """Render one metric of a table as a horizontal bar chart with CI error bars.

    Args:
        table: The table whose run rows are plotted.
        column: The metric column to plot.

    Returns:
        Safe SVG markup (all text escaped).
    """
    rows = table.run_rows
    floor_row = table.floor_row
    floor = floor_row.cells[column.key].value if floor_row else None
    height = _TOP + _BOTTOM + _ROW_H * max(1, len(rows))
    plot_x0, plot_x1 = _LABEL_W, _W - _VALUE_W

    points: list[float] = [0.0]
    for r in rows:
        c = r.cells[column.key]
        points += [v for v in (c.value, c.ci_low, c.ci_high) if v is not None]
    if floor is not None:
        points.append(floor)
    lo, hi = min(points), max(points)
    if hi - lo <= 0:
        hi = lo + 1.0

    def sx(v: float) -> float:
        return plot_x0 + (v - lo) / (hi - lo) * (plot_x1 - plot_x0)

    title = f"{column.key} {column.arrow}".strip()
    parts = [
        f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{height}" '
        f'viewBox="0 0 {_W} {height}" role="img" aria-label="{escape(title)} ({escape(column.direction_text)})">',
        f'<text x="4" y="15" class="ct">{escape(title)}</text>',
        f'<text x="{_W - 4}" y="15" class="cd" text-anchor="end">{escape(column.direction_text)}</text>',
    ]
    zero = sx(0.0)
    parts.append(f'<line x1="{_num(zero)}" y1="{_TOP - 4}" x2="{_num(zero)}" '
                 f'y2="{height - _BOTTOM + 2}" class="axis"/>')
    for i, r in enumerate(rows):
        c = r.cells[column.key]
        y = _TOP + i * _ROW_H
        cy = y + _ROW_H / 2
        parts.append(f'<g><title>{escape(r.label)}: {escape(c.text())}</title>')
        parts.append(f'<text x="{_LABEL_W - 6}" y="{_num(cy + 4)}" text-anchor="end" class="cl">'
                     f'{escape(_clip(r.label))}</text>')
        if c.value is None:
            parts.append(f'<text x="{_num(plot_x0 + 4)}" y="{_num(cy + 4)}" class="cm">—</text></g>')
            continue
        x0, x1 = sorted((zero, sx(c.value)))
        cls = "bar best" if c.is_best else "bar"
        parts.append(f'<rect x="{_num(x0)}" y="{_num(y + 3)}" width="{_num(max(x1 - x0, 1.0))}" '
                     f'height="{_ROW_H - 6}" class="{cls}"/>')
        if c.has_ci:
            a, b = sx(c.ci_low), sx(c.ci_high)
            parts.append(f'<path d="M{_num(a)} {_num(cy)}H{_num(b)}M{_num(a)} {_num(cy - 4)}'
                         f'V{_num(cy + 4)}M{_num(b)} {_num(cy - 4)}V{_num(cy + 4)}" class="err"/>')
        parts.append(f'<text x="{_W - 4}" y="{_num(cy + 4)}" text-anchor="end" class="cv">'
                     f'{escape(fmt_number(c.value, 3))}</text></g>')
    if floor is not None:
        fx = sx(floor)
        parts.append(f'<g><title>real vs real (floor): {escape(fmt_number(floor))}</title>'
                     f'<line x1="{_num(fx)}" y1="{_TOP - 4}" x2="{_num(fx)}" '
                     f'y2="{height - _BOTTOM + 2}" class="floor"/>'
                     f'<text x="{_num(fx)}" y="{height - 6}" text-anchor="middle" class="cf">'
                     f'floor {escape(fmt_number(floor, 3))}</text></g>')
    parts.append("</svg>")
    return Markup("".join(parts))


def table_chart(table: Table) -> Markup:
    """All metric panels of a table, one per column.

    Args:
        table: The table to chart.

    Returns:
        Safe markup containing one ``<svg>`` per metric.
    """
    return Markup("").join(metric_panel(table, col) for col in table.columns)
