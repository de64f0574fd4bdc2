"""Static, self-contained HTML site: an index with one leaderboard per suite/reference and one
provenance page per run.

Pages use inline CSS/JS and inline SVG charts only (see :mod:`leaderboards.charts` for why not
plotly), link relatively, and work from ``file://``. Templates are rendered with jinja2 autoescape
on, so every record-supplied string (generator names, args, prompts, warnings) is escaped.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any, Iterable

import jinja2

from .charts import table_chart
from .records import (
    MISSING,
    Table,
    build_tables,
    fmt_number,
    format_args,
    metric_sort_key,
    reference_of,
    to_float,
)

logger = logging.getLogger(__name__)

_TEMPLATES = Path(__file__).parent / "templates"
#: How many prompts a run page lists.
MAX_PROMPTS = 10
_MAX_DETAILS_CHARS = 4000


def _pretty(value: Any) -> str:
    """Indented JSON for ``<pre>`` blocks (escaped later by autoescape)."""
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(_TEMPLATES)),
        autoescape=True,  # unconditional: every template here is HTML
        undefined=jinja2.ChainableUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["pretty"] = _pretty
    env.filters["compact"] = lambda v: json.dumps(v, sort_keys=True, ensure_ascii=False, default=str)
    env.filters["num"] = lambda v, digits=4: fmt_number(to_float(v), digits)
    env.filters["short_args"] = format_args
    env.globals["MISSING"] = MISSING
    return env


def _page_names(records: list[dict]) -> dict[int, str]:
    """Map ``id(record)`` to a unique, filesystem- and URL-safe page file name."""
    names: dict[int, str] = {}
    used: set[str] = set()
    for rec in records:
        base = re.sub(r"[^A-Za-z0-9._-]", "_", rec["run_id"]).lstrip(".") or "run"
        name, i = base, 1
        while name.lower() in used:
            i += 1
            name = f"{base}-{i}"
        if i > 1:
            logger.warning("duplicate run_id %r; its page is runs/%s.html", rec["run_id"], name)
        used.add(name.lower())
        names[id(rec)] = name
    return names


def _metric_rows(record: dict) -> list[dict]:
    """Flatten a record's metrics for the run page, in the preferred column order."""
    out = []
    metrics = record["metrics"]
    for key in sorted(metrics, key=lambda k: metric_sort_key(
            k, metrics[k].get("family") if isinstance(metrics[k], dict) else None)):
        entry = metrics[key] if isinstance(metrics[key], dict) else {}
        details = entry.get("details") if isinstance(entry.get("details"), dict) else {}
        details_text = _pretty(details) if details else ""
        if len(details_text) > _MAX_DETAILS_CHARS:
            details_text = details_text[:_MAX_DETAILS_CHARS] + "\n… (truncated)"
        hib = entry.get("higher_is_better")
        out.append({
            "key": key,
            "value": fmt_number(to_float(entry.get("value"))),
            "ci": (f"[{fmt_number(to_float(entry.get('ci_low')))}, "
                   f"{fmt_number(to_float(entry.get('ci_high')))}]"
                   if to_float(entry.get("ci_low")) is not None
                   and to_float(entry.get("ci_high")) is not None else MISSING),
            "floor": fmt_number(to_float(entry.get("floor"))),
            "n": entry.get("n") if entry.get("n") is not None else MISSING,
            "arrow": "" if not isinstance(hib, bool) else ("↑" if hib else "↓"),
            "warnings": [str(w) for w in (entry.get("warnings") or [])],
            "error": details.get("error"),
            "description": entry.get("description") or "",
            "config": entry.get("config"),
            "details": details_text,
        })
    return out


def _table_anchor(i: int) -> str:
    return f"table-{i + 1}"


def write_site(records: Iterable[dict], out_dir: str | Path) -> Path:
    """Write ``index.html`` and ``runs/<run_id>.html`` for a set of run records.

    Args:
        records: Run records (as from :func:`leaderboards.records.load_records`).
        out_dir: Output directory (created if needed).

    Returns:
        Path of the written ``index.html``.
    """
    records = list(records)
    out_dir = Path(out_dir)
    runs_out = out_dir / "runs"
    runs_out.mkdir(parents=True, exist_ok=True)
    env = _environment()
    pages = _page_names(records)
    tables: list[Table] = build_tables(records)

    index = env.get_template("index.html").render(
        tables=[
            {"t": t, "anchor": _table_anchor(i), "chart": table_chart(t)}
            for i, t in enumerate(tables)
        ],
        pages=pages,
        n_runs=len(records),
        any_synthetic=any(t.synthetic for t in tables),
        id=id,
    )
    index_path = out_dir / "index.html"
    index_path.write_text(index, encoding="utf-8")

    run_tpl = env.get_template("run.html")
    for rec in records:
        prompts = rec.get("prompts") if isinstance(rec.get("prompts"), list) else []
        html = run_tpl.render(
            r=rec,
            ref=reference_of(rec),
            metrics=_metric_rows(rec),
            prompts=prompts[:MAX_PROMPTS],
            n_prompts=len(prompts),
        )
        (runs_out / f"{pages[id(rec)]}.html").write_text(html, encoding="utf-8")
    return index_path
