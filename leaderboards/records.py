"""Loading run records and turning them into a renderer-neutral table model.

This module reads ``record.json`` files only; it never imports ``bench``, ``generators`` or
``metrics``. Every renderer (HTML, markdown, CSV) works from the plain data built here, so the
decisions about grouping, labelling, floors and "best" live in one place.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

logger = logging.getLogger(__name__)

#: Record schema versions this package knows how to read.
SUPPORTED_SCHEMA_VERSIONS = frozenset({1})

#: Label of the real-vs-real row.
FLOOR_LABEL = "real vs real (floor)"

#: Placeholder shown for a missing, failed or non-finite value.
MISSING = "—"

# Stable preferred column order: a metric key (or its family, or the part before "/") matching an
# entry here sorts by that entry's position; everything else follows alphabetically.
PREFERRED_ORDER = (
    "fid",
    "kid",
    "mmd",
    "ssim",
    "ms_ssim",
    "ms-ssim",
    "precision",
    "recall",
    "density",
    "coverage",
    "prdc",
    "histogram",
    "radiomics",
    "volumes",
    "nn",
    "memorization",
    "conditioning",
)

#: Order of the sub-results of one metric family.
SUB_ORDER = ("precision", "recall", "density", "coverage", "w1", "js", "ks", "fd", "mmd", "cosine")

_MAX_ARGS_CHARS = 48
# Relative tolerance under which per-run floors count as "the same".
_FLOOR_RTOL = 1e-6


class NoRecordsError(FileNotFoundError):
    """Raised when a runs directory holds no usable ``record.json``."""


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
    if not isinstance(record.get("run_id"), str) or not record["run_id"]:
        return "missing 'run_id'"
    gen = record.get("generator")
    if not isinstance(gen, dict) or not isinstance(gen.get("name"), str):
        return "missing 'generator.name'"
    suite = record.get("suite")
    if not isinstance(suite, dict) or not isinstance(suite.get("name"), str):
        return "missing 'suite.name'"
    if not isinstance(record.get("metrics"), dict):
        return "missing 'metrics' object"
    return None


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
    warning naming the file; records whose ``status`` is not ``"complete"`` are skipped with an
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
        if status != "complete":
            logger.info("skipping run record %s: status is %r, not 'complete'", path, status)
            continue
        records.append((path, record))
    return records


# --------------------------------------------------------------------------------------------
# small helpers shared by the renderers
# --------------------------------------------------------------------------------------------


def to_float(value: Any) -> float | None:
    """Coerce a JSON value to a finite float, or None (null, NaN, inf, non-numeric)."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def fmt_number(value: float | None, digits: int = 4) -> str:
    """Format a number with ``digits`` significant digits; None becomes ``"—"``."""
    if value is None:
        return MISSING
    return f"{value:.{digits}g}"


def format_args(args: Any) -> str:
    """Short ``k=v, ...`` rendering of generator arguments (truncated with an ellipsis)."""
    if not args:
        return ""
    if isinstance(args, dict):
        parts = []
        for key in sorted(args):
            val = args[key]
            parts.append(f"{key}={val if isinstance(val, str) else json.dumps(val, sort_keys=True)}")
        text = ", ".join(parts)
    else:
        text = json.dumps(args, sort_keys=True)
    if len(text) > _MAX_ARGS_CHARS:
        text = text[: _MAX_ARGS_CHARS - 1] + "…"
    return text


def canonical_args(args: Any) -> str:
    """Canonical JSON of generator arguments (for grouping and CSV)."""
    return json.dumps(args if args is not None else {}, sort_keys=True, ensure_ascii=False, default=str)


def reference_of(record: dict) -> dict:
    """The record's ``reference`` object (empty dict if absent or malformed)."""
    ref = record.get("reference")
    return ref if isinstance(ref, dict) else {}


def metric_sort_key(key: str, family: str | None = None) -> tuple[int, int, str]:
    """Sort key implementing the stable preferred column order (fid first, then ssim, ...).

    Sub-results of one metric (``prdc/precision``, ``histogram/w1``) follow :data:`SUB_ORDER`.
    """
    candidates = [key, key.split("/", 1)[0]]
    if family:
        candidates.append(family)
    ranks = [PREFERRED_ORDER.index(c) for c in candidates if c in PREFERRED_ORDER]
    sub = key.rsplit("/", 1)[1] if "/" in key else ""
    sub_rank = SUB_ORDER.index(sub) if sub in SUB_ORDER else len(SUB_ORDER)
    return (min(ranks) if ranks else len(PREFERRED_ORDER), sub_rank if sub else -1, key)


# --------------------------------------------------------------------------------------------
# table model
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    """One metric column.

    Attributes:
        key: Metric key in the record (``"fid"``, ``"histogram/w1"``).
        higher_is_better: Direction, or None when the records do not say.
        description: Human description of the metric (first non-empty one seen).
        family: Metric family, if recorded.
    """

    key: str
    higher_is_better: bool | None = None
    description: str = ""
    family: str = ""

    @property
    def arrow(self) -> str:
        """``"↑"`` (higher is better), ``"↓"`` (lower is better) or ``""`` (unknown)."""
        if self.higher_is_better is None:
            return ""
        return "↑" if self.higher_is_better else "↓"

    @property
    def direction_text(self) -> str:
        """Plain-words direction for captions and tooltips."""
        if self.higher_is_better is None:
            return "direction unknown"
        return "higher is better" if self.higher_is_better else "lower is better"


@dataclass
class Cell:
    """A value with an optional confidence interval.

    Attributes:
        value: The finite value, or None when missing / failed / NaN.
        ci_low: Lower CI bound, or None.
        ci_high: Upper CI bound, or None.
        n: Sample count, or None.
        floor: Real-vs-real floor recorded with this metric, or None.
        warnings: Warnings recorded with the metric.
        error: Error message when the metric failed (``details.error``).
        is_best: Whether this is the best run value of its column.
    """

    value: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    n: int | None = None
    floor: float | None = None
    warnings: list[str] = field(default_factory=list)
    error: str | None = None
    is_best: bool = False

    @property
    def missing(self) -> bool:
        """True when there is no finite value to show."""
        return self.value is None

    @property
    def has_ci(self) -> bool:
        """True when both CI bounds are finite."""
        return self.ci_low is not None and self.ci_high is not None

    @property
    def symmetric_ci(self) -> bool:
        """True when the CI is (nearly) symmetric around the value, so ``±`` is honest."""
        if not self.has_ci or self.value is None:
            return False
        up, down = self.ci_high - self.value, self.value - self.ci_low
        half = (self.ci_high - self.ci_low) / 2
        return up >= 0 and down >= 0 and abs(up - down) <= 0.1 * half + 1e-12

    def value_text(self) -> str:
        """The value alone (``"0.012"`` or ``"—"``)."""
        return fmt_number(self.value)

    def ci_text(self) -> str:
        """The uncertainty alone: ``"± 0.0025"``, ``"[0.6, 0.9]"`` or ``""``."""
        if self.value is None or not self.has_ci:
            return ""
        if self.symmetric_ci:
            return f"± {fmt_number((self.ci_high - self.ci_low) / 2, 2)}"
        return f"[{fmt_number(self.ci_low)}, {fmt_number(self.ci_high)}]"

    def text(self) -> str:
        """``"0.012 ± 0.0025"``, ``"0.71 [0.6, 0.9]"``, ``"0.5"`` or ``"—"``."""
        if self.value is None:
            return MISSING
        if not self.has_ci:
            return fmt_number(self.value)
        if self.symmetric_ci:
            return f"{fmt_number(self.value)} ± {fmt_number((self.ci_high - self.ci_low) / 2, 2)}"
        return f"{fmt_number(self.value)} [{fmt_number(self.ci_low)}, {fmt_number(self.ci_high)}]"


@dataclass
class Row:
    """A table row: one run, or the real-vs-real floor.

    Attributes:
        label: Display label (generator name + short args, disambiguated by seed/run_id).
        kind: ``"run"`` or ``"floor"``.
        cells: Metric key to cell.
        run_id: Run id (None for the floor row).
        generator: Generator name (None for the floor row).
        args: Generator args (None for the floor row).
        seed: Seed of the run, if recorded.
        record: The source record (None for the floor row).
    """

    label: str
    kind: str
    cells: dict[str, Cell]
    run_id: str | None = None
    generator: str | None = None
    args: Any = None
    seed: Any = None
    record: dict | None = field(default=None, repr=False, compare=False)

    @property
    def is_floor(self) -> bool:
        """True for the real-vs-real row."""
        return self.kind == "floor"


@dataclass
class Table:
    """One leaderboard: all runs of one suite against one reference cohort.

    Attributes:
        suite: Suite name.
        reference: Reference cohort name.
        reference_hash: Reference content hash ("" if unknown).
        synthetic: Whether the reference is synthetic (any run says so).
        reference_label: Reference label from the record (e.g. "SYNTHETIC phantom — not real MRI").
        columns: Metric columns in display order.
        rows: Run rows (best first on the primary column) followed by the floor row, if any.
        notes: Caveats found while building (differing floors, mixed suite versions, ...).
    """

    suite: str
    reference: str
    reference_hash: str
    synthetic: bool
    reference_label: str
    columns: list[Column]
    rows: list[Row]
    notes: list[str] = field(default_factory=list)

    @property
    def title(self) -> str:
        """Human title, e.g. ``"quick · phantom (ab12cd34ef56)"``."""
        short = f" ({self.reference_hash[:12]})" if self.reference_hash else ""
        return f"{self.suite} · {self.reference}{short}"

    @property
    def run_rows(self) -> list[Row]:
        """Rows that are runs (floor excluded)."""
        return [r for r in self.rows if not r.is_floor]

    @property
    def floor_row(self) -> Row | None:
        """The real-vs-real row, if any floor was recorded."""
        return next((r for r in self.rows if r.is_floor), None)


def _cell_from_metric(entry: Any) -> Cell:
    if not isinstance(entry, dict):
        return Cell(error="metric entry is not an object")
    details = entry.get("details") if isinstance(entry.get("details"), dict) else {}
    warnings = entry.get("warnings") or []
    if not isinstance(warnings, list):
        warnings = [str(warnings)]
    n = entry.get("n")
    error = details.get("error")
    return Cell(
        value=to_float(entry.get("value")),
        ci_low=to_float(entry.get("ci_low")),
        ci_high=to_float(entry.get("ci_high")),
        n=n if isinstance(n, int) and not isinstance(n, bool) else None,
        floor=to_float(entry.get("floor")),
        warnings=[str(w) for w in warnings],
        error=str(error) if error is not None else None,
    )


def _columns(records: list[dict]) -> list[Column]:
    seen: dict[str, dict[str, Any]] = {}
    for rec in records:
        for key, entry in rec["metrics"].items():
            info = seen.setdefault(key, {"dirs": [], "description": "", "family": ""})
            if not isinstance(entry, dict):
                continue
            hib = entry.get("higher_is_better")
            if isinstance(hib, bool):
                info["dirs"].append(hib)
            if not info["description"] and isinstance(entry.get("description"), str):
                info["description"] = entry["description"]
            if not info["family"] and isinstance(entry.get("family"), str):
                info["family"] = entry["family"]
    columns = []
    for key, info in seen.items():
        dirs = info["dirs"]
        hib: bool | None = None
        if dirs:
            hib = dirs[0]
            if len(set(dirs)) > 1:
                hib = max(set(dirs), key=dirs.count)
                logger.warning(
                    "metric %r has conflicting higher_is_better across runs; using %s", key, hib
                )
        columns.append(Column(key, hib, info["description"], info["family"]))
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


def _mark_best(columns: list[Column], rows: list[Row]) -> None:
    for col in columns:
        if col.higher_is_better is None:
            continue
        vals = [r.cells[col.key].value for r in rows if r.cells[col.key].value is not None]
        if not vals:
            continue
        best = max(vals) if col.higher_is_better else min(vals)
        for r in rows:
            if r.cells[col.key].value == best:
                r.cells[col.key].is_best = True


def _floor_row(columns: list[Column], rows: list[Row], notes: list[str]) -> Row | None:
    cells: dict[str, Cell] = {}
    any_floor = False
    for col in columns:
        floors = [r.cells[col.key].floor for r in rows if r.cells[col.key].floor is not None]
        if not floors:
            cells[col.key] = Cell()
            continue
        any_floor = True
        mean = sum(floors) / len(floors)
        lo, hi = min(floors), max(floors)
        if hi - lo > _FLOOR_RTOL * max(1.0, abs(mean)):
            msg = (
                f"floor of {col.key!r} differs across runs ({fmt_number(lo)} to {fmt_number(hi)}); "
                f"showing the mean of {len(floors)}"
            )
            notes.append(msg)
            logger.warning("%s", msg)
        cells[col.key] = Cell(value=mean, n=len(floors))
    if not any_floor:
        return None
    return Row(label=FLOOR_LABEL, kind="floor", cells=cells)


def _rank_rows(columns: list[Column], rows: list[Row]) -> list[Row]:
    """Order rows best-first on the first column with a direction; missing values last."""
    primary = next((c for c in columns if c.higher_is_better is not None), None)

    def key(row: Row) -> tuple:
        if primary is None:
            return (0, 0.0, row.label, row.run_id or "")
        v = row.cells[primary.key].value
        if v is None:
            return (1, 0.0, row.label, row.run_id or "")
        return (0, -v if primary.higher_is_better else v, row.label, row.run_id or "")

    return sorted(rows, key=key)


def _build_table(records: list[dict]) -> Table:
    first_ref = reference_of(records[0])
    columns = _columns(records)
    notes: list[str] = []
    rows: list[Row] = []
    for rec in records:
        gen = rec["generator"]
        args = gen.get("args") or {}
        short = format_args(args)
        label = f"{gen['name']} ({short})" if short else gen["name"]
        cells = {c.key: _cell_from_metric(rec["metrics"].get(c.key, {})) for c in columns}
        for c in columns:  # a metric a run does not have is simply missing, not an error
            if c.key not in rec["metrics"]:
                cells[c.key] = Cell()
        rows.append(
            Row(label=label, kind="run", cells=cells, run_id=rec["run_id"], generator=gen["name"],
                args=args, seed=rec.get("seed"), record=rec)
        )
    _label_rows(rows)
    _mark_best(columns, rows)
    rows = _rank_rows(columns, rows)

    versions = sorted({str(r["suite"].get("version")) for r in records})
    if len(versions) > 1:
        notes.append(f"runs come from different suite versions ({', '.join(versions)}); "
                     "compare with care")
    grids = sorted({json.dumps(r["suite"].get("grid"), sort_keys=True) for r in records})
    if len(grids) > 1:
        notes.append("runs use different grids; compare with care")
    seeds = sorted({json.dumps(r.get("seed")) for r in records})
    floor = _floor_row(columns, rows, notes)
    if floor is not None:
        if len(seeds) > 1:
            notes.append("floors are from runs with different seeds: " + ", ".join(seeds))
        rows.append(floor)

    synthetic = any(bool(reference_of(r).get("synthetic")) for r in records)
    label = next((reference_of(r).get("label") for r in records
                  if isinstance(reference_of(r).get("label"), str)), "")
    return Table(
        suite=records[0]["suite"]["name"],
        reference=str(first_ref.get("name") or "unknown"),
        reference_hash=str(first_ref.get("content_hash") or ""),
        synthetic=synthetic,
        reference_label=label or "",
        columns=columns,
        rows=rows,
        notes=notes,
    )


def table_key(record: dict) -> tuple[str, str, str]:
    """Grouping key of a record: (suite name, reference name, reference content hash)."""
    ref = reference_of(record)
    return (record["suite"]["name"], str(ref.get("name") or "unknown"), str(ref.get("content_hash") or ""))


def build_tables(records: Iterable[dict]) -> list[Table]:
    """Group records into leaderboard tables.

    One table per (suite name, reference name + content hash). Rows are runs (best first on the
    first column with a known direction) plus a trailing ``"real vs real (floor)"`` row built from
    the recorded floors (their mean, with a note if they differ). Columns are the union of metric
    keys in a stable preferred order; the best run value per column is marked, respecting the
    metric's direction (the floor row never counts as best).

    Args:
        records: Run records as returned by :func:`load_records`.

    Returns:
        Tables sorted by suite, reference name and hash.
    """
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for rec in records:
        groups.setdefault(table_key(rec), []).append(rec)
    return [_build_table(groups[k]) for k in sorted(groups)]
