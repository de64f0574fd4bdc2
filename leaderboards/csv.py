"""Long-format CSV export: one row per (run, metric), grouped like the leaderboard: per table of
comparable runs (``table``), runs in ranking order, headline metrics first."""

from __future__ import annotations

import csv as _csv  # absolute import: the stdlib module, not this one
from pathlib import Path
from typing import Iterable

from . import verdicts
from .records import build_tables, canonical_args, reference_of, to_float

#: CSV header. The first twelve columns are the documented contract; ``reference_hash`` and
#: ``seed`` follow so runs against different reference snapshots / seeds stay distinguishable;
#: then the leaderboard's model: ``table`` (title of the table of comparable runs), ``N``,
#: ``role``, ``rank`` (1 = first row of its table), ``axis`` and ``headline`` (the metric is a
#: headline metric of the table), ``direction``, ``ratio_to_floor`` (value / floor),
#: ``versus_floor`` (at floor / worse / better), ``best`` (★) and ``memorisation_gate``
#: (passed / failed / empty) with its reason.
FIELDS = (
    "run_id", "suite", "reference", "generator", "args", "metric", "value", "ci_low",
    "ci_high", "floor", "n", "higher_is_better", "reference_hash", "seed",
    "table", "N", "role", "rank", "axis", "headline", "direction", "ratio_to_floor", "versus_floor",
    "best", "memorisation_gate", "memorisation_reason",
)


#: Leading characters a spreadsheet would read as a formula (OWASP "CSV injection").
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def safe_text(value: object) -> str:
    """A text cell that a spreadsheet will not evaluate: a leading ``= + - @`` (or tab / CR) is
    prefixed with a single quote. Numeric columns are written by :func:`_num` and left as numbers.

    Args:
        value: Any value; converted with ``str``.

    Returns:
        The cell text.
    """
    s = "" if value is None else str(value)
    return "'" + s if s.startswith(_FORMULA_START) else s


def _seed(value: object) -> object:
    if value is None:
        return ""
    return value if isinstance(value, int) and not isinstance(value, bool) else safe_text(value)


def _num(value: object) -> str:
    f = to_float(value)
    return "" if f is None else repr(f)


def write_csv(records: Iterable[dict], path: str | Path) -> Path:
    """Write run records as a long-format CSV.

    One row per run and metric, grouped per table of comparable runs (same suite and version, N,
    reference and grid; the ``table`` column names it), runs in ranking order and each run's
    headline metrics first. Missing / failed / NaN values are empty cells; ``args`` is the canonical
    JSON of the generator arguments; ``higher_is_better`` is ``true``/``false``/empty. Text cells
    starting with ``= + - @`` get a leading single quote (no formula injection).

    Args:
        records: Run records (as from :func:`leaderboards.records.load_records`).
        path: Destination ``.csv`` file (parent directories are created).

    Returns:
        The written path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tables = build_tables(list(records))
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = _csv.writer(fh)
        writer.writerow(FIELDS)
        for table in tables:
            head = table.headline_columns
            head_keys = [c.key for _, c in head]
            axis_of = {c.key: axis for axis, c in head}
            order = head_keys + [c.key for c in table.columns if c.key not in head_keys]
            for rank, row in enumerate(table.run_rows, start=1):
                rec = row.record or {}
                ref = reference_of(rec)
                metrics = rec["metrics"]
                gate = {True: "passed", False: "failed"}.get(row.gate, "")
                for key in [k for k in order if k in metrics]:
                    m = metrics[key] if isinstance(metrics[key], dict) else {}
                    col = table.column(key)
                    cell = row.cells[key]
                    hib = m.get("higher_is_better")
                    n = m.get("n")
                    writer.writerow([
                        safe_text(rec["run_id"]),
                        safe_text(rec["suite"]["name"]),
                        safe_text(ref.get("name", "")),
                        safe_text(rec["generator"]["name"]),
                        safe_text(canonical_args(rec["generator"].get("args") or {})),
                        safe_text(key),
                        _num(m.get("value")),
                        _num(m.get("ci_low")),
                        _num(m.get("ci_high")),
                        _num(m.get("floor")),
                        n if isinstance(n, int) and not isinstance(n, bool) else "",
                        "" if not isinstance(hib, bool) else str(hib).lower(),
                        safe_text(ref.get("content_hash") or ""),
                        _seed(rec.get("seed")),
                        safe_text(table.title),
                        row.n if row.n is not None else "",
                        safe_text(row.role),
                        rank,
                        safe_text(axis_of.get(key) or (m.get("axis") if isinstance(m.get("axis"), str) else "")
                                  or (col.axis if col else "")),
                        "true" if key in axis_of else "false",
                        safe_text(verdicts.direction(m) or ""),
                        _num(cell.ratio),
                        safe_text(cell.versus or ""),
                        "true" if cell.is_best else "false",
                        gate,
                        safe_text(row.gate_reason),
                    ])
    return path
