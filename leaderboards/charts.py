"""Interactive plotly charts for the static site, as plain figure dictionaries.

Figures are built here as JSON-able ``{"data": [...], "layout": {...}}`` dicts (no plotly Python
objects needed) and rendered in the page by ``Plotly.newPlot`` from one shared copy of plotly.js
written to ``SITE_DIR/assets/plotly.min.js`` (see :func:`write_plotly_js`), so each page stays
small and works from ``file://`` with no network.

Escaping: plotly renders a small HTML subset inside SVG text and decodes entities, so every
record-supplied label passes through :func:`plot_text` (``& < >`` become entities and show
literally); the figure JSON is embedded with :func:`figure_json`, which escapes ``<``, ``>`` and
``&`` so no string can close the ``<script>`` element that carries it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Sequence

from markupsafe import Markup

from .records import Column, Table, fmt_number

logger = logging.getLogger(__name__)

#: Where plotly.js goes, relative to the site root.
PLOTLY_ASSET = "assets/plotly.min.js"

_GEN = "#2f5fa7"    # generated
_REF = "#c2571a"    # reference / real
_BEST = "#4f9a58"
_BAR = "#9db4d6"
_GATED = "#d9d9d9"  # runs that may not be starred (memorisation gate)
_FLOOR = "#b5651d"
_FONT = {"family": "system-ui, -apple-system, Segoe UI, Roboto, sans-serif", "size": 11}
_LABEL_CHARS = 28


def write_plotly_js(out_dir: str | Path) -> Path:
    """Write plotly.js once to ``out_dir/assets/plotly.min.js`` (skipped when already identical).

    The bundle comes from the installed plotly wheel (``plotly.offline.get_plotlyjs``), no network.

    Args:
        out_dir: Site root.

    Returns:
        Path of the script.
    """
    from plotly.offline import get_plotlyjs

    js = get_plotlyjs()
    path = Path(out_dir) / PLOTLY_ASSET
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_file() and path.stat().st_size == len(js.encode("utf-8")):
        if path.read_text(encoding="utf-8") == js:
            return path
    tmp = path.with_suffix(".tmp")
    tmp.write_text(js, encoding="utf-8")
    tmp.replace(path)
    return path


def plot_text(text: Any, limit: int | None = None) -> str:
    """A record string made safe for plotly's pseudo-HTML text (shown literally)."""
    s = str(text)
    if limit is not None and len(s) > limit:
        s = s[: limit - 1] + "…"
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def figure_json(fig: dict) -> Markup:
    """Serialise a figure for a ``<script type="application/json">`` element (script-safe)."""
    s = json.dumps(fig, ensure_ascii=False, allow_nan=False, separators=(",", ":"), default=_default)
    s = (s.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
         .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))
    return Markup(s)


def _default(o: Any) -> Any:
    try:
        return float(o)
    except (TypeError, ValueError):
        return str(o)


def _layout(title: str, height: int, **extra: Any) -> dict:
    layout = {
        "title": {"text": title, "font": {"size": 13}, "x": 0.01, "xanchor": "left"},
        "height": height,
        "margin": {"l": 10, "r": 20, "t": 36, "b": 36},
        "font": _FONT,
        "paper_bgcolor": "#fff",
        "plot_bgcolor": "#fff",
        "showlegend": False,
    }
    layout.update(extra)
    return layout


#: Metric kinds whose value is a share or similarity in [0, 1] (matched against the key's last part,
#: its base name and the family; see :func:`metric_bounds`).
BOUNDED_KINDS = ("precision", "recall", "coverage", "ssim", "ms_ssim", "accuracy", "memorization")


def metric_bounds(key: str, family: str = "", values: Sequence[float | None] = ()) -> tuple[float, float] | None:
    """The one boundedness rule of the charts: the axis range a metric's chart is drawn on, or None
    (free range).

    A metric is bounded when its kind is one of :data:`BOUNDED_KINDS` (the sub-result after the last
    ``/``, e.g. ``prdc-deepbet/recall``, ``conformance/sex_accuracy``; the base name before ``-``, e.g.
    ``memorization-deepbet``, ``ms_ssim_diversity``; or the family) — range ``[0, 1]`` — or a
    correlation (a sub-result ending in ``_r``, e.g. ``conformance/age_r``) — range ``[-1, 1]`` —
    AND every given value (the runs' values and the floor) lies inside that range.

    Args:
        key: Metric key.
        family: Metric family, if recorded.
        values: The plotted values and the floor (None entries are ignored).

    Returns:
        ``(low, high)`` or None.
    """
    name = key.lower()
    last = name.rsplit("/", 1)[-1]
    base = name.split("/", 1)[0].split("-", 1)[0]
    fam = (family or "").lower()

    def kind(part: str) -> bool:
        return any(part == k or part.startswith(k + "_") or part.endswith("_" + k) for k in BOUNDED_KINDS)

    if "/" in name and last.endswith("_r"):
        lo, hi = -1.0, 1.0
    elif kind(last) or kind(base) or (fam in BOUNDED_KINDS or fam.startswith("ms_ssim")):
        lo, hi = 0.0, 1.0
    else:
        return None
    vals = [v for v in values if v is not None]
    if not vals or any(not (lo <= v <= hi) for v in vals):
        return None
    return (lo, hi)


def unique_labels(labels: Sequence[Any], limit: int = _LABEL_CHARS) -> list[str]:
    """Shorten labels to ``limit`` characters without ever making two of them equal (plotly merges
    bars whose category labels are equal): a clash gets a `` #2``, `` #3`` ... suffix within the limit.

    Args:
        labels: Raw labels (not yet escaped).
        limit: Maximum length.

    Returns:
        Distinct labels, same order.
    """
    def cut(s: str, n: int) -> str:
        return s if len(s) <= n else s[: max(1, n - 1)] + "…"

    out: list[str] = []
    used: set[str] = set()
    for raw in labels:
        s = cut(str(raw), limit)
        i = 1
        while s in used:
            i += 1
            suffix = f" #{i}"
            s = cut(str(raw), limit - len(suffix)) + suffix
        used.add(s)
        out.append(s)
    return out


def metric_figure(table: Table, column: Column) -> dict:
    """One metric of a leaderboard: one bar per run (unique labels, ``barmode: group``), whiskers
    from the confidence interval, the real-vs-real floor as a horizontal dashed line, and the y axis
    fixed to the metric's bounds when it has them (:func:`metric_bounds`).

    Args:
        table: The table whose run rows are plotted (in ranking order).
        column: The metric column.

    Returns:
        A plotly figure dict.
    """
    rows = [r for r in table.run_rows if r.cells[column.key].value is not None]
    labels = [plot_text(s) for s in unique_labels([r.label for r in rows])]
    cells = [r.cells[column.key] for r in rows]
    values = [c.value for c in cells]
    plus = [(c.ci_high - c.value) if c.has_ci else 0 for c in cells]
    minus = [(c.value - c.ci_low) if c.has_ci else 0 for c in cells]
    hover = [f"{plot_text(r.label)}<br>{plot_text(c.text())}"
             + (f"<br>CI [{fmt_number(c.ci_low)}, {fmt_number(c.ci_high)}]" if c.has_ci else "")
             + (f"<br>{c.ratio_text()} floor" if c.ratio_text() else "")
             + (f"<br>n={c.n}" if c.n is not None else "")
             + (f"<br>role: {plot_text(r.role)}" if r.role else "")
             + (f"<br>{plot_text(r.gate_note)}" if r.gate_note else "") for r, c in zip(rows, cells)]
    colors = [_BEST if c.is_best else (_GATED if not r.may_star else _BAR) for r, c in zip(rows, cells)]
    bar = {
        "type": "bar", "x": labels, "y": values,
        "marker": {"color": colors, "line": {"color": "#555", "width": [0 if r.may_star else 1 for r in rows]}},
        "error_y": {"type": "data", "symmetric": False, "array": plus, "arrayminus": minus,
                    "color": "#222", "thickness": 1.2, "width": 4},
        "hovertext": hover, "hoverinfo": "text", "name": plot_text(column.key),
    }
    shapes, annotations = [], []
    floor = table.floor_row.cells[column.key].value if table.floor_row else None
    if floor is not None:
        shapes.append({"type": "line", "xref": "paper", "yref": "y", "x0": 0, "x1": 1, "y0": floor, "y1": floor,
                       "line": {"color": _FLOOR, "width": 1.5, "dash": "dash"}})
        annotations.append({"xref": "paper", "yref": "y", "x": 1.0, "y": floor, "xanchor": "right",
                            "yanchor": "bottom", "text": f"floor {fmt_number(floor, 3)}", "showarrow": False,
                            "font": {"size": 10, "color": _FLOOR}})
    yaxis: dict[str, Any] = {"zeroline": True, "zerolinecolor": "#999", "gridcolor": "#eee", "automargin": True}
    bounds = metric_bounds(column.key, column.family, values + [floor])
    if bounds is not None:
        yaxis["range"] = list(bounds)
        yaxis["autorange"] = False
    title = f"<b>{plot_text(column.key)}</b> {column.arrow}"
    height = 300 if len(rows) <= 6 else 300 + 12 * (len(rows) - 6)
    layout = _layout(title, height, shapes=shapes, annotations=annotations,
                     margin={"l": 10, "r": 20, "t": 46, "b": 30},
                     xaxis={"type": "category", "automargin": True, "tickangle": -30},
                     yaxis=yaxis, barmode="group", bargap=0.35)
    return {"data": [bar], "layout": layout, "config": {"displayModeBar": False}}


def table_figures(table: Table, columns: Sequence[Column] | None = None) -> list[dict]:
    """One figure per metric column of a table (default: all columns; columns without any value are
    skipped)."""
    cols = table.columns if columns is None else columns
    return [metric_figure(table, c) for c in cols
            if any(r.cells[c.key].value is not None for r in table.run_rows)]


def histogram_figure(edges: Sequence[float], generated: Sequence[float], reference: Sequence[float],
                     title: str = "Intensity histograms inside the brain mask") -> dict:
    """Overlay of two normalised intensity histograms (step lines).

    Args:
        edges: Bin edges (``len(generated) + 1`` values).
        generated: Density of the generated volumes per bin.
        reference: Density of the reference volumes per bin.
        title: Figure title.
    """
    centres = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:])]
    def trace(y, name, color):
        return {"type": "scatter", "mode": "lines", "x": centres, "y": list(y), "name": name,
                "line": {"color": color, "shape": "hvh", "width": 1.6}, "fill": "tozeroy",
                "opacity": 0.5}
    return {"data": [trace(generated, "generated", _GEN), trace(reference, "reference (real)", _REF)],
            "layout": _layout(title, 300, showlegend=True, legend={"x": 0.99, "xanchor": "right", "y": 0.99},
                              xaxis={"title": {"text": "intensity"}, "gridcolor": "#eee"},
                              yaxis={"title": {"text": "density"}, "gridcolor": "#eee"},
                              margin={"l": 55, "r": 20, "t": 36, "b": 45})}


def effects_figure(effects: Sequence[dict], title: str) -> dict:
    """Horizontal bars of Cohen's d per feature (largest |d| on top)."""
    names = [plot_text(e["name"], 48) for e in effects]
    d = [e["d"] for e in effects]
    return {"data": [{"type": "bar", "orientation": "h", "x": d, "y": names,
                      "marker": {"color": [_GEN if v >= 0 else _REF for v in d]},
                      "hovertemplate": "%{y}: d = %{x:.3g}<extra></extra>"}],
            "layout": _layout(title, 80 + 22 * max(1, len(effects)),
                              xaxis={"title": {"text": "Cohen's d (generated − reference)"},
                                     "zeroline": True, "zerolinecolor": "#999", "gridcolor": "#eee"},
                              yaxis={"automargin": True, "autorange": "reversed"},
                              margin={"l": 10, "r": 20, "t": 36, "b": 45})}


def scatter_figure(generated: Sequence[Sequence[float]], reference: Sequence[Sequence[float]], title: str,
                   axis_titles: tuple[str, str] = ("PC 1", "PC 2"),
                   hover_generated: Sequence[str] | None = None,
                   hover_reference: Sequence[str] | None = None) -> dict:
    """2-D scatter of generated vs reference points (e.g. a latent-space embedding)."""
    def trace(pts, name, color, symbol, hover):
        t = {"type": "scatter", "mode": "markers", "x": [p[0] for p in pts], "y": [p[1] for p in pts],
             "name": name, "marker": {"color": color, "size": 8, "symbol": symbol, "opacity": 0.8,
                                      "line": {"width": 0.5, "color": "#fff"}}}
        if hover:
            t["text"] = [plot_text(h, 80) for h in hover]
            t["hovertemplate"] = "%{text}<extra>" + name + "</extra>"
        return t
    return {"data": [trace(generated, "generated", _GEN, "circle", hover_generated),
                     trace(reference, "reference (real)", _REF, "diamond", hover_reference)],
            "layout": _layout(title, 360, showlegend=True, legend={"x": 0.99, "xanchor": "right", "y": 0.99},
                              xaxis={"title": {"text": axis_titles[0]}, "gridcolor": "#eee", "zeroline": False},
                              yaxis={"title": {"text": axis_titles[1]}, "gridcolor": "#eee", "zeroline": False},
                              margin={"l": 55, "r": 20, "t": 36, "b": 45})}


def conformance_figure(requested: Sequence[float], measured: Sequence[float], title: str,
                       hover: Sequence[str] | None = None) -> dict:
    """Requested vs measured attribute values with the identity line."""
    lo = min(min(requested), min(measured))
    hi = max(max(requested), max(measured))
    pts = {"type": "scatter", "mode": "markers", "x": list(requested), "y": list(measured),
           "name": "samples", "marker": {"color": _GEN, "size": 7, "opacity": 0.8}}
    if hover:
        pts["text"] = [plot_text(h, 80) for h in hover]
        pts["hovertemplate"] = "%{text}<br>requested %{x:.4g}<br>measured %{y:.4g}<extra></extra>"
    ident = {"type": "scatter", "mode": "lines", "x": [lo, hi], "y": [lo, hi], "name": "measured = requested",
             "line": {"color": "#999", "dash": "dash", "width": 1}, "hoverinfo": "skip"}
    return {"data": [ident, pts],
            "layout": _layout(title, 320, xaxis={"title": {"text": "requested"}, "gridcolor": "#eee"},
                              yaxis={"title": {"text": "measured"}, "gridcolor": "#eee"},
                              margin={"l": 55, "r": 20, "t": 36, "b": 45})}
