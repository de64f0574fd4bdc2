"""``folder``: reports written elsewhere, read from a CSV of volume id -> report text.

The volumes of a report suite are listed by ``python -m bench prompts --suite report-quick`` (column
``subject_id``, and ``image``: the NIfTI file on the suite grid). Describe them with any model, write
``reports.csv`` with columns ``subject_id`` and ``report`` (UTF-8, one row per volume; extra rows are
ignored), and run ``python -m bench run --captioner folder --captioner-args path=reports.csv --suite ...``.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from captioners.base import CaptionerContext
from core.io import sha256_file


class FolderCaptioner:
    """Reports from a CSV (``subject_id``, ``report``), matched to the suite's volumes by subject id.

    Args:
        context: runner context (unused: the reports are read, not made).
        path: the CSV file.
        name: the name the run is shown under (default: the file's stem).
    """

    name = "folder"

    def __init__(self, context: CaptionerContext, *, path: str, name: str = ""):
        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such reports file; write a CSV with columns subject_id,report "
                                    "(the ids `python -m bench prompts --suite SUITE` lists)")
        with open(self.path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        if not rows or not {"subject_id", "report"} <= set(rows[0]):
            raise ValueError(f"{self.path}: needs the columns subject_id and report (has: "
                             f"{', '.join(rows[0]) if rows else 'no rows'})")
        self.reports = {r["subject_id"].strip(): (r["report"] or "").strip() for r in rows}
        self.display_name = name or self.path.stem

    def check_ids(self, ids: list[str]) -> None:
        """Every volume of the suite has a report (checked before anything is scored)."""
        missing = [i for i in ids if i not in self.reports]
        if missing:
            raise ValueError(f"{self.path}: no report for {len(missing)} of the suite's {len(ids)} volumes "
                             f"(first: {', '.join(missing[:3])}); list them with `python -m bench prompts --suite SUITE`")

    def describe(self, volumes: np.ndarray, *, seed: int) -> list[str]:
        raise TypeError("the folder captioner reads reports by volume id (describe_ids), not from volumes: it can "
                        "score a report suite, not describe generated volumes (roundtrip)")

    def describe_ids(self, ids: list[str]) -> list[str]:
        """The reports of the volumes ``ids`` (the runner calls this instead of :meth:`describe`)."""
        return [self.reports[i] for i in ids]

    def info(self) -> dict:
        return {"role": "external", "description": f"reports read from {self.path.name}", "path": str(self.path),
                "sha256": sha256_file(self.path), "n_reports": len(self.reports)}
