"""Long-format CSV export: one row per (run, metric)."""

from __future__ import annotations

import csv as _csv  # absolute import: the stdlib module, not this one
from pathlib import Path
from typing import Iterable

from .records import canonical_args, metric_sort_key, reference_of, to_float

#: CSV header. The first twelve columns are the documented contract; ``reference_hash`` and
#: ``seed`` follow so runs against different reference snapshots / seeds stay distinguishable.
FIELDS = (
    "run_id", "suite", "reference", "generator", "args", "metric", "value", "ci_low",
    "ci_high", "floor", "n", "higher_is_better", "reference_hash", "seed",
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

    One row per run and metric. Missing / failed / NaN values are empty cells; ``args`` is the
    canonical JSON of the generator arguments; ``higher_is_better`` is ``true``/``false``/empty.
    Text cells starting with ``= + - @`` get a leading single quote (no formula injection).

    Args:
        records: Run records (as from :func:`leaderboards.records.load_records`).
        path: Destination ``.csv`` file (parent directories are created).

    Returns:
        The written path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = _csv.writer(fh)
        writer.writerow(FIELDS)
        for rec in records:
            ref = reference_of(rec)
            metrics = rec["metrics"]
            for key in sorted(metrics, key=lambda k: metric_sort_key(
                    k, metrics[k].get("family") if isinstance(metrics[k], dict) else None)):
                m = metrics[key] if isinstance(metrics[key], dict) else {}
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
                ])
    return path
