"""Loading run records and building the renderer-neutral table model (:mod:`leaderboards.table`).

This module reads ``record.json`` files only; it never imports ``bench``, ``generators`` or
``metrics``. Every renderer (HTML, markdown, CSV) works from the plain data built here, so the
decisions about grouping, labelling, floors and "best" live in one place; what a number *means*
(direction, × floor, the memorisation gate, which runs are comparable) is decided by
:mod:`leaderboards.verdicts`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Iterable

from core.record import record_problem

from . import verdicts

from .table import (FLOOR_LABEL, MISSING, PREFERRED_ORDER, REPORT_FLOOR_LABEL,  # noqa: F401  (re-exported)
                    REPORT_TASK, REPORT_VERSUS_MARK, REPORT_VERSUS_TEXT, SUB_ORDER, SUPPORTED_SCHEMA_VERSIONS,
                    VERSUS_TEXT, _FLOOR_RTOL, Cell, Column, Row, Table, canonical_args,
                    fmt_number, format_args, metric_sort_key, reference_of, to_float)

logger = logging.getLogger(__name__)

class NoRecordsError(FileNotFoundError):
    """Raised when a runs directory holds no usable ``record.json``."""


def task_of(record: dict) -> str:
    """The record's task kind (``text-to-volume`` for records written before tasks were recorded)."""
    task = record.get("task")
    return task if isinstance(task, str) and task else "text-to-volume"


# --------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------


def _validate(record: Any) -> str | None:
    """Return a reason why ``record`` cannot be used, or None when it is usable."""
    if not isinstance(record, dict):
        return "top level is not a JSON object"
    version = record.get("schema_version")
    if version not in SUPPORTED_SCHEMA_VERSIONS:
        return (
            f"unknown schema_version {version!r} (this leaderboard reads "
            f"{sorted(SUPPORTED_SCHEMA_VERSIONS)}); upgrade braingenbench or re-run the benchmark"
        )
    problem = record_problem(record)
    return None if problem is None else f"not a valid run record ({problem}; see core/record.schema.json)"


def load_records(runs_dir: str | Path) -> list[dict]:
    """Find and read every complete run record below a directory (see :func:`load_records_with_paths`).

    Args:
        runs_dir: Directory holding ``<run_id>/record.json`` files (any depth).

    Returns:
        The usable records, in a deterministic order (sorted by path).
    """
    return [rec for _, rec in load_records_with_paths(runs_dir)]


def load_records_with_paths(runs_dir: str | Path) -> list[tuple[Path, dict]]:
    """Find and read every complete run record below a directory.

    Searches ``runs_dir`` recursively for ``record.json`` files. Files that cannot be read or
    parsed, that have an unknown ``schema_version`` or lack required fields are skipped with a
    warning naming the file; records whose ``status`` is not ``"complete"`` or ``"partial"`` (some
    metrics failed: they show as missing) are skipped with an
    info message.

    Args:
        runs_dir: Directory holding ``<run_id>/record.json`` files (any depth).

    Returns:
        ``(path of record.json, record)`` pairs, in a deterministic order (sorted by path).
    """
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return []
    records: list[tuple[Path, dict]] = []
    for path in sorted(runs_dir.rglob("record.json")):
        try:
            with path.open("r", encoding="utf-8") as fh:
                record = json.load(fh)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            logger.warning("skipping unreadable run record %s: %s", path, exc)
            continue
        reason = _validate(record)
        if reason is not None:
            logger.warning("skipping run record %s: %s", path, reason)
            continue
        status = record.get("status")
        if status not in ("complete", "partial"):
            logger.info("skipping run record %s: status is %r, not 'complete' or 'partial'", path, status)
            continue
        records.append((path, record))
    return records


def _cell_from_metric(entry: Any) -> Cell:
    if not isinstance(entry, dict):
        return Cell(error="metric entry is not an object")
    details = entry.get("details") if isinstance(entry.get("details"), dict) else {}
    warnings = entry.get("warnings") or []
    if not isinstance(warnings, list):
        warnings = [str(warnings)]
    n = entry.get("n")
    error = details.get("error")
    value = to_float(entry.get("value"))
    return Cell(
        value=value,
        ci_low=to_float(entry.get("ci_low")),
        ci_high=to_float(entry.get("ci_high")),
        n=n if isinstance(n, int) and not isinstance(n, bool) else None,
        floor=to_float(entry.get("floor")),
        warnings=[str(w) for w in warnings],
        error=str(error) if error is not None else None,
        ratio=verdicts.ratio_to_floor(entry),
        versus=verdicts.versus_floor(entry),
        badness=verdicts.badness(entry) if value is not None else None,
    )


def _columns(records: list[dict]) -> list[Column]:
    seen: dict[str, dict[str, Any]] = {}
    for rec in records:
        for key, entry in rec["metrics"].items():
            info = seen.setdefault(key, {"dirs": [], "axes": [], "description": "", "family": ""})
            if not isinstance(entry, dict):
                continue
            d = verdicts.direction(entry)
            if d is not None:
                info["dirs"].append(d)
            if isinstance(entry.get("axis"), str) and entry["axis"]:
                info["axes"].append(entry["axis"])
            if not info["description"] and isinstance(entry.get("description"), str):
                info["description"] = entry["description"]
            if not info["family"] and isinstance(entry.get("family"), str):
                info["family"] = entry["family"]
    columns = []
    for key, info in seen.items():
        dirs = info["dirs"]
        d: str | None = None
        if dirs:
            d = max(dict.fromkeys(dirs), key=dirs.count)
            if len(set(dirs)) > 1:
                logger.warning("metric %r has conflicting directions across runs; using %s", key, d)
        hib = {"higher": True, "lower": False}.get(d or "")
        axis = info["axes"][0] if info["axes"] else ""
        columns.append(Column(key, hib, info["description"], info["family"], d, axis))
    columns.sort(key=lambda c: metric_sort_key(c.key, c.family))
    return columns


def _label_rows(rows: list[Row]) -> None:
    """Disambiguate labels of runs sharing generator + args (by seed, else seed + run_id)."""
    groups: dict[tuple[str, str], list[Row]] = {}
    for row in rows:
        groups.setdefault((row.generator or "", canonical_args(row.args)), []).append(row)
    for group in groups.values():
        if len(group) < 2:
            continue
        seeds = [r.seed for r in group]
        unique_seeds = len({json.dumps(s, default=str) for s in seeds}) == len(seeds)
        for row in group:
            if unique_seeds:
                suffix = f"seed {row.seed}"
            elif row.seed is None:
                suffix = str(row.run_id)
            else:
                suffix = f"seed {row.seed}, {row.run_id}"
            row.label = f"{row.label} [{suffix}]"
    # still equal (e.g. "a (k=1)" with args vs a generator literally named so): add the run id
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.label] = counts.get(row.label, 0) + 1
    for row in rows:
        if counts[row.label] > 1:
            row.label = f"{row.label} [{row.run_id}]"


def _mark_best(columns: list[Column], rows: list[Row]) -> None:
    """Star the best value per column among the runs that may be starred (:attr:`Row.may_star`),
    by :func:`leaderboards.verdicts.badness` (ties share the star)."""
    eligible = [r for r in rows if r.may_star]
    for col in columns:
        scores = [r.cells[col.key].badness for r in eligible if r.cells[col.key].badness is not None]
        if not scores:
            continue
        best = min(scores)
        tol = 1e-12 * max(1.0, abs(best))
        for r in eligible:
            b = r.cells[col.key].badness
            if b is not None and abs(b - best) <= tol:
                r.cells[col.key].is_best = True


def _floor_row(columns: list[Column], rows: list[Row], records: list[dict], notes: list[str]) -> Row | None:
    """The real-vs-real row: the mean of the runs' floors per metric, and ONE note when they differ
    (for report tables: the scores of another subject's true caption)."""
    cells: dict[str, Cell] = {}
    differ: list[str] = []
    any_floor = False
    for col in columns:
        pairs = [(r.cells[col.key].floor, r) for r in rows if r.cells[col.key].floor is not None]
        floors = [f for f, _ in pairs]
        if not floors:
            cells[col.key] = Cell()
            continue
        any_floor = True
        mean = sum(floors) / len(floors)
        lo, hi = min(floors), max(floors)
        cell = Cell(value=mean, n=len(floors))
        if hi - lo > _FLOOR_RTOL * max(1.0, abs(mean)):
            differ.append(col.key)
        else:  # one floor: show its bootstrap interval when recorded
            rec = pairs[0][1].record or {}
            ci = verdicts.floor_ci(rec.get("metrics", {}).get(col.key) or {})
            if ci is not None:
                cell.ci_low, cell.ci_high = ci
        cells[col.key] = cell
    if differ:
        seeds = sorted({json.dumps(r.get("seed")) for r in records})
        why = ("different seeds: " + ", ".join(seeds)) if len(seeds) > 1 else "same seed"
        notes.append(
            f"floors differ across runs for {len(differ)} metric{'s' if len(differ) != 1 else ''} ({why}); "
            f"the floor row shows their mean ({', '.join(differ[:4])}{', …' if len(differ) > 4 else ''})")
    if not any_floor:
        return None
    label = REPORT_FLOOR_LABEL if task_of(records[0]) == REPORT_TASK else FLOOR_LABEL
    return Row(label=label, kind="floor", cells=cells)


def _table_headline(records: list[dict], columns: list[Column]) -> dict[str, list[str]]:
    """The table's headline: the union of its records' :func:`leaderboards.verdicts.headline` (axis
    order kept); records that name none at all lead with their first column that has a direction."""
    out: dict[str, list[str]] = {}
    for rec in records:
        for axis, keys in verdicts.headline(rec).items():
            lst = out.setdefault(axis, [])
            lst += [k for k in keys if k not in lst]
    if not out:
        first = next((c for c in columns if c.direction is not None), None)
        if first is not None:
            out[first.axis if first.axis in verdicts.AXES else "realism"] = [first.key]
    return {axis: out[axis] for axis in verdicts.AXES if axis in out}


def _rank_key(columns: list[Column], headline: dict[str, list[str]]) -> str | None:
    """The ranking column: the first headline realism metric (else the first headline metric, else
    the first column with a direction)."""
    with_dir = {c.key for c in columns if c.direction is not None}
    for key in headline.get("realism", []) + [k for keys in headline.values() for k in keys]:
        if key in with_dir:
            return key
    return next((c.key for c in columns if c.direction is not None), None)


def _rank_rows(columns: list[Column], rows: list[Row], primary: str | None) -> list[Row]:
    """Order rows best-first by :func:`leaderboards.verdicts.badness` on ``primary`` (target metrics by
    their distance to the floor); runs without a value follow, ordered on the first other column."""
    fallback = next((c.key for c in columns if c.direction is not None and c.key != primary), None)

    def score(row: Row, key: str | None) -> tuple[int, float]:
        b = row.cells[key].badness if key is not None else None
        return (1, 0.0) if b is None else (0, b)

    return sorted(rows, key=lambda r: (score(r, primary), score(r, fallback), r.label, r.run_id or ""))


def _build_table(records: list[dict]) -> Table:
    first_ref = reference_of(records[0])
    columns = _columns(records)
    notes: list[str] = []
    rows: list[Row] = []
    for rec in records:
        gen = rec["generator"]
        args = gen.get("args") or {}
        short = format_args(args)
        shown = gen.get("display_name")  # e.g. the folder adapter's name=: the user's own model name
        label = str(shown) if shown else (f"{gen['name']} ({short})" if short else gen["name"])
        cells = {c.key: _cell_from_metric(rec["metrics"].get(c.key, {})) for c in columns}
        for c in columns:  # a metric a run does not have is simply missing, not an error
            if c.key not in rec["metrics"]:
                cells[c.key] = Cell()
        gate, reason = verdicts.memorisation_gate(rec)
        rows.append(
            Row(label=label, kind="run", cells=cells, run_id=rec["run_id"], generator=gen["name"],
                args=args, seed=rec.get("seed"), record=rec, role=verdicts.role(rec), gate=gate,
                gate_reason=reason, n=verdicts.n_of(rec))
        )
    _label_rows(rows)
    _mark_best(columns, rows)
    headline = _table_headline(records, columns)
    primary = _rank_key(columns, headline)
    rows = _rank_rows(columns, rows, primary)
    floor = _floor_row(columns, rows, records, notes)
    if floor is not None:
        rows.append(floor)

    synthetic = any(bool(reference_of(r).get("synthetic")) for r in records)
    label = next((reference_of(r).get("label") for r in records
                  if isinstance(reference_of(r).get("label"), str)), "")
    suite = records[0]["suite"]
    grid = suite.get("grid")
    return Table(
        suite=suite["name"],
        reference=str(first_ref.get("name") or "unknown"),
        reference_hash=str(first_ref.get("content_hash") or ""),
        synthetic=synthetic,
        reference_label=label or "",
        columns=columns,
        rows=rows,
        notes=notes,
        version=str(suite.get("version")) if suite.get("version") is not None else "",
        n=verdicts.n_of(records[0]),
        grid=str(grid.get("name") or "") if isinstance(grid, dict) else "",
        headline=headline,
        rank_key=primary,
        comparability=verdicts.comparability(records[0]),
        task=task_of(records[0]),
    )


def table_key(record: dict) -> tuple[str, ...]:
    """Grouping key of a record: the values of :func:`leaderboards.verdicts.comparability` (suite
    name and version, number of prompts, reference name and content hash, grid) and the task kind."""
    return tuple(verdicts.comparability(record).values()) + (task_of(record),)


def _table_order(record: dict) -> tuple:
    suite = record["suite"]
    n = verdicts.n_of(record)
    return (task_of(record) == REPORT_TASK, str(suite.get("name")), str(suite.get("version")),
            n if n is not None else -1,
            str(reference_of(record).get("name") or "unknown"), str(reference_of(record).get("content_hash") or ""),
            table_key(record))


def build_tables(records: Iterable[dict]) -> list[Table]:
    """Group records into leaderboard tables of comparable runs.

    One table per :func:`leaderboards.verdicts.comparability` key (suite name + version, number of
    prompts N, reference name + content hash, grid): runs scored on N=8 and N=16 prompts never share
    a ranking. Rows are runs, best first by :func:`leaderboards.verdicts.badness` on the first
    headline realism metric, plus a trailing ``"real vs real (floor)"`` row (the mean of the runs'
    floors, with one note when they differ). Columns are the union of metric keys in a stable
    preferred order; the best value per column is marked among the runs that pass the memorisation
    gate (never a memorising baseline or an oracle; the floor row never counts).

    Args:
        records: Run records as returned by :func:`load_records`.

    Report-generation records (task ``report``: captioners) never share a table with generators;
    their tables come after every generator table.

    Returns:
        Tables sorted by suite name, version, N, reference name and hash (report tables last).
    """
    groups: dict[tuple[str, ...], list[dict]] = {}
    for rec in records:
        groups.setdefault(table_key(rec), []).append(rec)
    tables = [_build_table(g) for g in sorted(groups.values(), key=lambda g: _table_order(g[0]))]
    for t in tables:
        for note in t.notes:
            logger.debug("%s: %s", t.title, note)
    return tables
