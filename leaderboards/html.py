"""Static, self-contained HTML site: an index with one leaderboard per set of comparable runs (same
suite and version, number of prompts, reference cohort and grid), one provenance page per run and,
when a metric validation report is given, ``validation.html`` (the metric report cards).

Report-generation runs (task ``report``: captioners describing real volumes) get their own section
of the index, after the generator leaderboards, and run pages that show each report beside its volume
and true caption (:mod:`leaderboards.reports`).

Each leaderboard leads with its headline metrics per axis (value, CI and ``×floor``, marked when the
run is outside the real-vs-real floor or, suspiciously, better than real data); the full metric
table and the charts of the other metrics are one click away (``<details>``).

Pages use inline CSS and interactive plotly charts drawn by one shared ``assets/plotly.min.js``
(written once per site from the plotly wheel, referenced with a relative ``<script src>``); figure
data travel in ``<script type="application/json">`` elements. Pages link relatively and work from
``file://`` with no network. Templates are rendered with jinja2 autoescape
on, so every record-supplied string (generator names, args, prompts, warnings) is escaped.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any, Iterable

import jinja2

from .artefacts import RunArtefacts, collect
from .charts import PLOTLY_ASSET, figure_json, table_figures, write_plotly_js
from . import verdicts
from .records import (
    MISSING,
    REPORT_TASK,
    REPORT_VERSUS_MARK,
    REPORT_VERSUS_TEXT,
    VERSUS_TEXT,
    Table,
    build_tables,
    fmt_number,
    format_args,
    metric_sort_key,
    reference_of,
    task_of,
    to_float,
)
from .validation import VALIDATION_PAGE, as_validation, blind_text, validation_matrix

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
    env.globals["REPORT_VERSUS_MARK"] = REPORT_VERSUS_MARK
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
    versus_text = REPORT_VERSUS_TEXT if task_of(record) == REPORT_TASK else VERSUS_TEXT
    for key in sorted(metrics, key=lambda k: metric_sort_key(
            k, metrics[k].get("family") if isinstance(metrics[k], dict) else None)):
        entry = metrics[key] if isinstance(metrics[key], dict) else {}
        details = entry.get("details") if isinstance(entry.get("details"), dict) else {}
        details_text = _pretty(details) if details else ""
        if len(details_text) > _MAX_DETAILS_CHARS:
            details_text = details_text[:_MAX_DETAILS_CHARS] + "\n… (truncated)"
        d = verdicts.direction(entry)
        ratio = verdicts.ratio_to_floor(entry)
        versus = verdicts.versus_floor(entry)
        out.append({
            "key": key,
            "value": fmt_number(to_float(entry.get("value"))),
            "ci": (f"[{fmt_number(to_float(entry.get('ci_low')))}, "
                   f"{fmt_number(to_float(entry.get('ci_high')))}]"
                   if to_float(entry.get("ci_low")) is not None
                   and to_float(entry.get("ci_high")) is not None else MISSING),
            "floor": fmt_number(to_float(entry.get("floor"))),
            "n": entry.get("n") if entry.get("n") is not None else MISSING,
            "arrow": {"higher": "↑", "lower": "↓", "target": "target: real"}.get(d or "", ""),
            "ratio": "" if ratio is None else f"×{fmt_number(ratio, 3)}",
            "versus": versus or "",
            "versus_title": versus_text.get(versus or "", ""),
            "warnings": [str(w) for w in (entry.get("warnings") or [])],
            "error": details.get("error"),
            "description": entry.get("description") or "",
            "config": entry.get("config"),
            "details": details_text,
        })
    return out


def _table_anchor(i: int) -> str:
    return f"table-{i + 1}"


def _hashes(info: Any, prefix: str = "", depth: int = 0) -> list[tuple[str, str]]:
    """``(key path, value)`` of hash-like entries (``*sha256*``, ``*hash*``) in generator info."""
    out: list[tuple[str, str]] = []
    if not isinstance(info, dict) or depth > 2:
        return out
    for k, v in info.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out += _hashes(v, name + ".", depth + 1)
        elif isinstance(v, str) and re.search(r"sha256|hash|checksum", str(k), re.I):
            out.append((name, v))
    return out


def _provenance(rec: dict) -> list[tuple[str, str]]:
    """Key facts for the provenance summary of a run page (all plain strings, escaped later)."""
    gen = rec.get("generator") if isinstance(rec.get("generator"), dict) else {}
    ref = reference_of(rec)
    env = rec.get("environment") if isinstance(rec.get("environment"), dict) else {}
    report = task_of(rec) == REPORT_TASK
    rows = [("Captioner" if report else "Generator", f"{gen.get('name')} {format_args(gen.get('args') or {})}".strip()),
            ("Role", verdicts.role(rec))]
    if report:  # a captioner writes text about real volumes: there is nothing to memorise
        rows.append(("Task", "report generation (volume → text)"))
    else:
        gate, reason = verdicts.memorisation_gate(rec)
        rows.append(("Memorisation gate", {True: "passed", False: "FAILED (never starred)",
                                           None: "not measured"}[gate] + f": {reason}"))
    rows.append(("Volumes described (N)" if report else "Prompts (N)", str(verdicts.n_of(rec))))
    hashes = _hashes(gen.get("info"))
    rows += [(f"Checkpoint {k}", v) for k, v in hashes] or [("Checkpoint hash", "none recorded")]
    rows.append(("Reference cohort", f"{ref.get('name')} — content hash {ref.get('content_hash') or 'unknown'}"))
    rows.append(("Seed", str(rec.get("seed"))))
    exs = rec.get("extractors") if isinstance(rec.get("extractors"), dict) else {}
    for name, fp in sorted(exs.items()):
        if isinstance(fp, dict):
            status = f" ({fp['weights_status']})" if fp.get("weights_status") else ""
            rows.append((f"Extractor {name}", f"version {fp.get('version', '?')}, weights sha256 "
                                              f"{fp.get('weights_sha256') or 'none'}{status}"))
    git = env.get("git_revision")
    if git:
        rows.append(("Code", f"git {git}" + (" (uncommitted changes)" if env.get("git_dirty") else "")))
    pk = env.get("packages") if isinstance(env.get("packages"), dict) else {}
    main = [f"{k} {pk[k]}" for k in ("braingenbench", "torch", "numpy", "monai") if k in pk]
    if env.get("python") or main:
        rows.append(("Versions", ", ".join(([f"python {env.get('python')}"] if env.get("python") else []) + main)))
    timings = rec.get("timings") if isinstance(rec.get("timings"), dict) else {}
    if to_float(timings.get("total")) is not None:
        rows.append(("Total time", f"{to_float(timings['total']):.1f} s"))
    return rows


def _figures(anchor: str, table: Table, columns, offset: int = 0) -> list[dict]:
    return [{"id": f"{anchor}-chart-{offset + j + 1}", "json": figure_json(f)}
            for j, f in enumerate(table_figures(table, columns))]


def write_site(records: Iterable[dict], out_dir: str | Path,
               run_dirs: dict[int, Path] | None = None,
               validation: dict | str | Path | None = None) -> Path:
    """Write ``index.html``, ``runs/<run_id>.html`` (+ ``runs/<run_id>/*.png``),
    ``assets/plotly.min.js`` and, with a validation report, ``validation.html``.

    Args:
        records: Run records (as from :func:`leaderboards.records.load_records`).
        out_dir: Output directory (created if needed).
        run_dirs: ``id(record)`` to its run folder, for the samples, cohort images and explain
            maps shown on run pages; runs without one get pages from the record alone.
        validation: The metric validation report (the parsed ``validation.json`` written by
            ``python -m bench validate``, or its path), or None. When given, each headline metric
            says what its report card misses ("blind to: ..."), and ``validation.html`` (linked from
            the index) shows the whole matrix.

    Returns:
        Path of the written ``index.html``.
    """
    records = list(records)
    run_dirs = run_dirs or {}
    validation = as_validation(validation)
    out_dir = Path(out_dir)
    runs_out = out_dir / "runs"
    runs_out.mkdir(parents=True, exist_ok=True)
    write_plotly_js(out_dir)
    env = _environment()
    pages = _page_names(records)
    tables: list[Table] = build_tables(records)

    items = []
    for i, t in enumerate(tables):  # build_tables puts report tables (captioners) last
        anchor = _table_anchor(i)
        head_cols = [c for _, c in t.headline_columns]
        other_cols = [c for c in t.columns if c not in head_cols]
        head_figs = _figures(anchor, t, head_cols)
        items.append({"t": t, "anchor": anchor, "headline_figures": head_figs,
                      "other_figures": _figures(anchor, t, other_cols, len(head_figs)),
                      "blind": {c.key: blind_text(validation, c.key) for c in head_cols}})
    validation_path = out_dir / VALIDATION_PAGE
    if validation is not None:
        html = env.get_template("validation.html").render(v=validation_matrix(validation), plotly_src=None)
        validation_path.write_text(html, encoding="utf-8")
    elif validation_path.is_file():  # stale page of an earlier build with a report
        validation_path.unlink()
    index = env.get_template("index.html").render(
        tables=[it for it in items if not it["t"].is_report],
        report_tables=[it for it in items if it["t"].is_report],
        pages=pages,
        n_runs=len(records),
        any_synthetic=any(t.synthetic for t in tables),
        n_tables=len(tables),
        plotly_src=PLOTLY_ASSET,
        validation_page=VALIDATION_PAGE if validation is not None else None,
        id=id,
    )
    index_path = out_dir / "index.html"
    index_path.write_text(index, encoding="utf-8")
    run_tpl = env.get_template("run.html")
    for rec in records:
        page = pages[id(rec)]
        asset_dir = runs_out / page
        if asset_dir.is_dir():  # stale PNGs of an earlier build
            for old in asset_dir.glob("*.png"):
                old.unlink()
        try:
            art = collect(rec, run_dirs.get(id(rec)), asset_dir, page)
        except Exception as e:  # noqa: BLE001 - one odd run folder must not break the site
            logger.warning("run page artefacts of %s failed: %s: %s", rec["run_id"], type(e).__name__, e)
            art = RunArtefacts(missing=[f"artefacts failed: {type(e).__name__}: {e}"])
        prompts = rec.get("prompts") if isinstance(rec.get("prompts"), list) else []
        html = run_tpl.render(
            r=rec,
            is_report=task_of(rec) == REPORT_TASK,
            n_reports=len(rec["reports"]) if isinstance(rec.get("reports"), list) else 0,
            ref=reference_of(rec),
            metrics=_metric_rows(rec),
            prompts=prompts[:MAX_PROMPTS],
            n_prompts=len(prompts),
            provenance=_provenance(rec),
            art=art,
            figures=[dict(f, json=figure_json(f["fig"])) for f in art.figures],
            plotly_src="../" + PLOTLY_ASSET,
        )
        (runs_out / f"{page}.html").write_text(html, encoding="utf-8")
    return index_path
