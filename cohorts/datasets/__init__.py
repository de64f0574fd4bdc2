"""Loaders of public brain-MRI datasets, each reading the files exactly as the download unpacks.

A loader module (``ixi``, ``oasis1``, ``ibsr``, ``kirby21``, ``bids``) exposes ``INFO``
(:class:`DatasetInfo`) and ``discover(raw_dir, scratch) -> Discovery``: the scans of every
subject plus demographics and the problems met while reading names and spreadsheets. The common
pipeline (:mod:`cohorts.prepare`) does the rest.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, field
from pathlib import Path

from cohorts.subject import CohortError

DATASETS = ("ixi", "oasis1", "ibsr", "kirby21", "bids")


class DatasetError(CohortError):
    """A raw dataset folder that cannot be read; the message names the path and the fix."""


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    title: str
    url: str
    licence: str
    citation: str
    modalities: tuple[str, ...]  # what a complete subject has
    layout: str  # the expected file layout, quoted in error messages


@dataclass
class RawScan:
    """One scan: the file to use and alternatives tried in order when it cannot be read."""

    modality: str
    path: Path
    alternatives: list[Path] = field(default_factory=list)


@dataclass
class RawSubject:
    """One imaging session of one person.

    Attributes:
        person_id: the person (splits are by person, so rescans never cross splits).
        session_id: the session; cohort subject ids are ``<session_id>-<modality>``.
        scans: modality -> scan.
        manual_labels: a manual segmentation shipped with the dataset (IBSR), if any.
        notes: warnings about this subject (missing modality, not in the spreadsheet, ...).
        sequence: longitudinal data only: the person whose sessions these are ("" otherwise).
        session: longitudinal data only: this session's place in the person's sequence, ``ses-00`` =
            the earliest (the phantom-ms-long convention).
        months: months since the person's earliest session; ``None`` when the dataset gives no dates.
        lesion_mask: a white-matter lesion mask in the voxel space of one of this session's raw images
            (checked when the dataset is read); :mod:`cohorts.prepare` carries it through each image's
            registration to ``lesions/<id>.nii.gz``.
    """

    person_id: str
    session_id: str
    scans: dict[str, RawScan]
    age: float | None = None
    sex: str | None = None
    site: str | None = None
    manual_labels: Path | None = None
    notes: list[str] = field(default_factory=list)
    sequence: str = ""
    session: str = ""
    months: float | None = None
    lesion_mask: Path | None = None


@dataclass
class Discovery:
    subjects: list[RawSubject]
    problems: list[dict] = field(default_factory=list)  # {"file", "error"}: reported in failed.csv
    meta: dict = field(default_factory=dict)


def get_loader(name: str):
    """The loader module of dataset ``name``."""
    key = name.lower().replace("-", "")
    if key not in DATASETS:
        from core.names import did_you_mean

        raise DatasetError(f"unknown dataset {name!r}{did_you_mean(key, DATASETS, 2)} (available: {', '.join(DATASETS)})")
    return importlib.import_module(f"cohorts.datasets.{key}")


# ------------------------------------------------------------------------------------ shared helpers
NIFTI_RE = r"\.nii(?:\.gz)?$"


def find_files(root: Path, pattern: str) -> list[Path]:
    """Files under ``root`` (recursive, hidden folders skipped) whose name matches ``pattern``."""
    rx = re.compile(pattern, re.I)
    out = []
    for p in sorted(root.rglob("*")):
        if any(part.startswith(".") for part in p.relative_to(root).parts):
            continue
        if p.is_file() and rx.search(p.name):
            out.append(p)
    return out


def read_table(path: Path):
    """A spreadsheet as a DataFrame: .csv, .tsv, .xls (needs xlrd) or .xlsx (needs openpyxl)."""
    import pandas as pd

    suffix = path.suffix.lower()
    try:
        if suffix == ".tsv":
            return pd.read_csv(path, sep="\t")
        if suffix == ".csv":
            return pd.read_csv(path, sep=None, engine="python")
        if suffix in (".xls", ".xlsx"):
            return pd.read_excel(path, sheet_name=0)
    except ImportError as e:
        pkg = "xlrd" if suffix == ".xls" else "openpyxl"
        raise DatasetError(f"{path}: reading {suffix} files needs the {pkg} package; install it (pip install "
                           f"{pkg}) or save the sheet as CSV ({path.with_suffix('.csv').name}) in the same folder") from e
    except Exception as e:  # noqa: BLE001
        raise DatasetError(f"{path}: cannot read the spreadsheet ({type(e).__name__}: {e}); download it again "
                           "or export it as CSV") from e
    raise DatasetError(f"{path}: unsupported spreadsheet type {suffix}; use CSV, TSV, XLS or XLSX")


def column(df, *candidates: str, path: Path | None = None, required: bool = True):
    """The first column whose name matches one of ``candidates`` (case-insensitive, prefix allowed)."""
    cols = {str(c).strip().lower(): c for c in df.columns}
    for cand in candidates:
        if cand.lower() in cols:
            return cols[cand.lower()]
    for cand in candidates:
        for low, c in cols.items():
            if low.startswith(cand.lower()):
                return c
    if required:
        raise DatasetError(f"{path}: no column {' / '.join(candidates)} (columns: {list(df.columns)}); "
                           "is this the dataset's own demographics file?")
    return None


def parse_sex(v) -> str | None:
    s = str(v).strip().lower()
    if s in ("f", "female", "w", "woman", "2", "2.0"):
        return "F"
    if s in ("m", "male", "man", "1", "1.0"):
        return "M"
    return None


def parse_age(v) -> float | None:
    try:
        a = float(v)
    except (TypeError, ValueError):
        return None
    return a if a == a and 0 < a < 120 else None
