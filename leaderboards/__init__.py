"""Records in, pages out (HTML, markdown, CSV). Reads records only.

This package never imports ``bench``, ``generators`` or ``metrics``: its only input is the
``record.json`` files a benchmark run writes.

Example:
    >>> from leaderboards import build_site
    >>> paths = build_site("runs", "site")  # doctest: +SKIP
    >>> paths["index"]  # doctest: +SKIP
    PosixPath('site/index.html')
"""

from __future__ import annotations

import logging
from pathlib import Path

from .csv import write_csv
from .html import write_site
from .markdown import to_markdown, write_markdown
from .records import (
    Cell,
    Column,
    NoRecordsError,
    Row,
    Table,
    build_tables,
    load_records,
    load_records_with_paths,
)
from .validation import load_validation

logger = logging.getLogger(__name__)

__all__ = [
    "Cell",
    "Column",
    "NoRecordsError",
    "Row",
    "Table",
    "build_site",
    "build_tables",
    "load_records",
    "load_records_with_paths",
    "load_validation",
    "to_markdown",
    "write_csv",
    "write_markdown",
    "write_site",
]


def build_site(runs_dir: str | Path, out_dir: str | Path,
               validation: dict | str | Path | None = None) -> dict[str, Path]:
    """Build the whole leaderboard site from a runs directory.

    Writes ``out_dir/index.html`` (+ ``out_dir/runs/<run_id>.html`` with its PNGs under
    ``out_dir/runs/<run_id>/``), ``out_dir/assets/plotly.min.js``, ``out_dir/leaderboard.md``,
    ``out_dir/leaderboard.csv`` and, with a validation report, ``out_dir/validation.html``.

    Args:
        runs_dir: Directory searched recursively for ``record.json`` files.
        out_dir: Output directory (created if needed).
        validation: The metric validation report of ``python -m bench validate`` (parsed
            ``validation.json`` or its path), or None.

    Returns:
        ``{"index": ..., "markdown": ..., "csv": ..., "runs": <dir of run pages>}`` (+ ``"validation"``
        when a report was given).

    Raises:
        NoRecordsError: ``runs_dir`` holds no usable complete record (a ``FileNotFoundError``).
    """
    runs_dir, out_dir = Path(runs_dir), Path(out_dir)
    pairs = load_records_with_paths(runs_dir)
    records = [rec for _, rec in pairs]
    if not records:
        found = sorted(runs_dir.rglob("record.json")) if runs_dir.is_dir() else []
        if not runs_dir.is_dir():
            why = f"{runs_dir} does not exist or is not a directory"
        elif found:
            why = (f"no complete, readable record.json under {runs_dir} "
                   f"({len(found)} found, all skipped; see the logged warnings)")
        else:
            why = f"no record.json under {runs_dir}"
        raise NoRecordsError(f"{why}; run `python -m bench run ...` first")
    out_dir.mkdir(parents=True, exist_ok=True)
    if validation is not None and not isinstance(validation, dict):
        validation = load_validation(validation)
    tables = build_tables(records)
    for t in tables:  # one line per table (e.g. differing floors), never one per metric
        for note in t.notes:
            logger.info("%s: %s", t.title, note)
    index = write_site(records, out_dir, run_dirs={id(rec): path.parent for path, rec in pairs},
                       validation=validation)
    md = write_markdown(tables, out_dir / "leaderboard.md", validation=validation)
    csv_path = write_csv(records, out_dir / "leaderboard.csv")
    out = {"index": index, "markdown": md, "csv": csv_path, "runs": out_dir / "runs"}
    if validation is not None:
        out["validation"] = out_dir / "validation.html"
    return out
