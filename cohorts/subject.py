"""`Subject` and `Cohort`: the one data model every reference dataset goes through.

A prepared cohort on disk is a folder::

    cohort.json      name, grid, synthetic flag, seed, attribution, builder version, content hash
    manifest.csv     one row per subject (demographics, modality, structure volumes in mL, caption)
    images/<id>.nii.gz   intensity volume on the grid, RAS+, float32 in [0, 1]
    labels/<id>.nii.gz   tissue labels on the grid (0 background, 1 CSF, 2 GM, 3 WM), optional
    lesions/<id>.nii.gz  white-matter lesion mask (uint8 0/1), for cohorts with lesions (optional)

Structure-volume keys are the canonical names in :data:`STRUCTURES`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from cohorts.grid import GRIDS, Grid
from core.io import sha256_file

MODALITIES = ("T1", "T2", "PD", "FLAIR")
SPLITS = ("train", "val", "test")
TISSUE_LABELS = {"background": 0, "csf": 1, "gm": 2, "wm": 3}

# Canonical structure keys (mL) and their human names, in caption order.
STRUCTURES: dict[str, str] = {
    "lateral_ventricles": "lateral ventricles",
    "third_ventricle": "third ventricle",
    "fourth_ventricle": "fourth ventricle",
    "hippocampus_left": "left hippocampus",
    "hippocampus_right": "right hippocampus",
    "thalamus": "thalamus",
    "caudate": "caudate",
    "putamen": "putamen",
    "gm": "grey matter",
    "wm": "white matter",
    "csf": "CSF",
    "icv": "intracranial volume",
}

_BASE_COLUMNS = ["subject_id", "split", "modality", "age", "sex", "site", "dataset", "synthetic",
                 "image", "labels", "caption"]


class CohortError(ValueError):
    """A cohort folder or file that cannot be used; the message names the file and the fix."""


@dataclass
class Subject:
    subject_id: str
    split: str
    modality: str
    image: Path
    age: float | None = None
    sex: str | None = None  # "F" | "M"
    site: str | None = None
    volumes: dict[str, float] = field(default_factory=dict)  # mL, keys from STRUCTURES
    percentiles: dict[str, float] = field(default_factory=dict)  # against the cohort, 0..100
    caption: str = ""
    labels: Path | None = None
    dataset: str = ""
    synthetic: bool = False
    #: white-matter lesions: ``count``, ``volume`` (mL) and a count per location class (see
    #: :data:`cohorts.phantom_lesions.LESION_CLASSES`); empty when the cohort does not record lesions
    lesions: dict[str, float] = field(default_factory=dict)
    #: deep grey-matter atrophy: structure key -> % volume lost to disease (e.g. ``{"thalamus": 6.1}``)
    atrophy: dict[str, float] = field(default_factory=dict)
    lesion_mask: Path | None = None
    #: longitudinal data: the subject whose sessions these are (its volumes share it), this volume's
    #: session (``ses-00`` is the baseline), months since the baseline, and what changed since the
    #: previous session (``new_lesions``, ``enlarging_lesions``, ``thalamus_pct``, ``brain_pct``, ...)
    sequence: str = ""
    session: str = ""
    months: float | None = None
    changes: dict[str, float] = field(default_factory=dict)

    def attributes(self) -> dict:
        """The attributes a caption carries (what a prompt asks for)."""
        out = {"modality": self.modality, "age": self.age, "sex": self.sex, "volumes": dict(self.volumes)}
        if self.lesions:
            out["lesions"] = dict(self.lesions)
        if self.atrophy:
            out["atrophy"] = dict(self.atrophy)
        if self.session:
            out.update(sequence=self.sequence, session=self.session, months=self.months, changes=dict(self.changes))
        return out


@dataclass
class Cohort:
    """A reference cohort on a grid: subjects plus metadata, backed by a folder."""

    name: str
    root: Path
    grid: Grid
    subjects: list[Subject]
    meta: dict = field(default_factory=dict)

    # ---------------------------------------------------------------- access
    @property
    def synthetic(self) -> bool:
        return bool(self.meta.get("synthetic", False))

    def split(self, name: str) -> list[Subject]:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; choose one of {SPLITS}")
        return [s for s in self.subjects if s.split == name]

    def by_id(self, subject_id: str) -> Subject:
        for s in self.subjects:
            if s.subject_id == subject_id:
                return s
        raise KeyError(f"no subject {subject_id!r} in cohort {self.name!r} ({self.root})")

    def load_volume(self, subject: Subject) -> np.ndarray:
        """Intensity volume (D, H, W) float32 in [0, 1]."""
        return _load_nifti(subject.image, self.grid)

    def load_labels(self, subject: Subject) -> np.ndarray | None:
        if subject.labels is None:
            return None
        return _load_nifti(subject.labels, self.grid).astype(np.uint8)

    def load_volumes(self, subjects: Sequence[Subject]) -> np.ndarray:
        """Stack of volumes (N, 1, D, H, W) float32."""
        out = np.empty((len(subjects), 1, *self.grid.shape), dtype=np.float32)
        for i, s in enumerate(subjects):
            out[i, 0] = self.load_volume(s)
        return out

    def load_lesion_mask(self, subject: Subject) -> np.ndarray | None:
        """Lesion tissue fraction (D, H, W) float32 in [0, 1] (``> 0.5`` is the binary mask), or ``None``
        when the subject has no lesion map on disk."""
        if subject.lesion_mask is None:
            return None
        return _load_nifti(subject.lesion_mask, self.grid)

    def brain_mask(self) -> np.ndarray:
        """Atlas brain mask on the grid (D, H, W) bool (``brain_mask.nii.gz`` in the cohort folder)."""
        path = self.root / "brain_mask.nii.gz"
        if not path.exists():
            raise CohortError(f"{path}: missing brain mask; rebuild the cohort (python -m bench cohort build ...)")
        return _load_nifti(path, self.grid) > 0.5

    @property
    def content_hash(self) -> str:
        return str(self.meta.get("content_hash", ""))

    # ---------------------------------------------------------------- io
    def save(self) -> None:
        """Write manifest.csv and cohort.json (images are written by the builder)."""
        import pandas as pd

        rows = []
        for s in self.subjects:
            row = {"subject_id": s.subject_id, "split": s.split, "modality": s.modality, "age": s.age,
                   "sex": s.sex, "site": s.site, "dataset": s.dataset, "synthetic": s.synthetic,
                   "image": _rel(s.image, self.root), "labels": _rel(s.labels, self.root) if s.labels else "",
                   "caption": s.caption}
            if s.lesion_mask is not None:
                row["lesion_mask"] = _rel(s.lesion_mask, self.root)
            if s.session:
                row.update(sequence=s.sequence, session=s.session, months=s.months)
                row.update({f"chg_{k}": v for k, v in s.changes.items()})
            for k, v in s.volumes.items():
                row[f"vol_{k}"] = v
            for k, v in s.lesions.items():
                row[f"les_{k}"] = v
            for k, v in s.atrophy.items():
                row[f"atr_{k}"] = v
            for k, v in s.percentiles.items():
                row[f"pct_{k}"] = v
            rows.append(row)
        pd.DataFrame(rows).to_csv(self.root / "manifest.csv", index=False)
        meta = dict(self.meta)
        meta.update({"name": self.name, "grid": self.grid.to_dict(), "n_subjects": len(self.subjects)})
        meta["content_hash"] = self.compute_content_hash()
        self.meta = meta
        (self.root / "cohort.json").write_text(json.dumps(meta, indent=2, sort_keys=True))

    def compute_content_hash(self) -> str:
        """sha256 over the manifest text and every image file's bytes (order-independent of disk)."""
        h = hashlib.sha256()
        h.update((self.root / "manifest.csv").read_bytes())
        for s in sorted(self.subjects, key=lambda s: s.subject_id):
            h.update(s.subject_id.encode())
            h.update(sha256_file(s.image).encode())
        return h.hexdigest()

    @classmethod
    def load(cls, root: str | Path) -> "Cohort":
        import pandas as pd

        root = Path(root)
        meta_path, manifest = root / "cohort.json", root / "manifest.csv"
        for p in (meta_path, manifest):
            if not p.exists():
                raise CohortError(f"{p}: not found; is {root} a prepared cohort folder? "
                                  "Build one with `python -m bench cohort build phantom --out DIR`.")
        meta = json.loads(meta_path.read_text())
        g = meta["grid"]
        grid = GRIDS.get(g["name"]) or Grid(g["name"], float(g["voxel_size"]), tuple(g["shape"]))
        df = pd.read_csv(manifest, keep_default_na=False)
        missing = [c for c in ("subject_id", "split", "modality", "image", "caption") if c not in df.columns]
        if missing:
            raise CohortError(f"{manifest}: missing column(s) {missing}; re-run the cohort build/prepare step")
        subjects = [_subject_from_row(r, root) for r in df.to_dict("records")]
        return cls(meta.get("name", root.name), root, grid, subjects, meta)


def _subject_from_row(r: dict, root: Path) -> Subject:
    def opt_float(v):
        return None if v in ("", None) or (isinstance(v, float) and np.isnan(v)) else float(v)

    vols = {k[4:]: float(v) for k, v in r.items() if k.startswith("vol_") and v not in ("", None)}
    pcts = {k[4:]: float(v) for k, v in r.items() if k.startswith("pct_") and v not in ("", None)}
    lesions = {k[4:]: float(v) for k, v in r.items() if k.startswith("les_") and v not in ("", None)}
    atrophy = {k[4:]: float(v) for k, v in r.items() if k.startswith("atr_") and v not in ("", None)}
    changes = {k[4:]: float(v) for k, v in r.items() if k.startswith("chg_") and v not in ("", None)}
    return Subject(
        subject_id=str(r["subject_id"]), split=str(r["split"]), modality=str(r["modality"]),
        image=root / str(r["image"]), age=opt_float(r.get("age")),
        sex=(str(r["sex"]) or None) if r.get("sex") not in (None, "") else None,
        site=(str(r["site"]) or None) if r.get("site") not in (None, "") else None,
        volumes=vols, percentiles=pcts, caption=str(r["caption"]),
        labels=(root / str(r["labels"])) if r.get("labels") else None,
        dataset=str(r.get("dataset", "")), synthetic=str(r.get("synthetic", "")).lower() == "true",
        lesions=lesions, atrophy=atrophy, lesion_mask=(root / str(r["lesion_mask"])) if r.get("lesion_mask") else None,
        sequence=str(r.get("sequence") or ""), session=str(r.get("session") or ""), months=opt_float(r.get("months")),
        changes=changes,
    )


def _rel(p: Path | None, root: Path) -> str:
    if p is None:
        return ""
    try:
        return str(Path(p).relative_to(root))
    except ValueError:
        return str(p)


def _load_nifti(path: Path, grid: Grid) -> np.ndarray:
    import nibabel as nib

    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj, dtype=np.float32)
    except FileNotFoundError:
        raise CohortError(f"{path}: file not found; rebuild or re-prepare the cohort") from None
    except Exception as e:  # nibabel raises many types for corrupt files
        raise CohortError(f"{path}: cannot read NIfTI ({e}); delete it and rebuild the cohort") from e
    if data.shape != tuple(grid.shape):
        raise CohortError(f"{path}: shape {data.shape} does not match grid {grid.name} {grid.shape}; "
                          "resample it to the grid (python -m bench cohort prepare ...)")
    return data


def save_nifti(path: Path, data: np.ndarray, grid: Grid, dtype=np.float32) -> None:
    """Atomic NIfTI write on the grid's affine."""
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(np.asarray(data, dtype=dtype), grid.affine)
    img.header.set_xyzt_units("mm")
    tmp = path.with_name(path.name + ".tmp.nii.gz")
    nib.save(img, str(tmp))
    tmp.replace(path)


def iter_splits(subjects: Iterable[Subject]) -> dict[str, list[Subject]]:
    out: dict[str, list[Subject]] = {s: [] for s in SPLITS}
    for s in subjects:
        out.setdefault(s.split, []).append(s)
    return out
