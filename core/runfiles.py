"""The on-disk formats of run folders and cohort folders, read and written in one place.

A run folder keeps its generated volumes in ``samples/shard_XXXX.npz`` (``volumes`` float32
``(n, 1, D, H, W)``, ``subject_ids``, optionally ``latents``); a prepared cohort folder has a
``manifest.csv`` (``subject_id``, ``image`` relative to the folder, ...), NIfTI images and
``brain_mask.nii.gz``. The runner writes shards with :func:`write_shard`; the metrics' streaming
sets, the leaderboard's run pages and the model figures read them with :func:`read_shard`,
:func:`load_generated` and :class:`CohortFiles`, so nobody re-parses these files by hand.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from core.io import atomic_save_npz

__all__ = ["CohortFiles", "load_generated", "mid_slices", "read_shard", "shard_path", "write_shard"]

logger = logging.getLogger(__name__)


def shard_path(folder: str | Path, k: int) -> Path:
    """``folder/shard_XXXX.npz`` of shard ``k``."""
    return Path(folder) / f"shard_{k:04d}.npz"


def write_shard(path: str | Path, volumes: np.ndarray, subject_ids: Sequence[str],
                latents: np.ndarray | None = None) -> None:
    """Write one generation shard atomically."""
    arrays = {"volumes": np.asarray(volumes, dtype=np.float32),
              "subject_ids": np.array([str(s or "") for s in subject_ids])}
    if latents is not None:
        arrays["latents"] = np.asarray(latents)
    atomic_save_npz(path, **arrays)


def read_shard(path: str | Path, key: str = "volumes") -> np.ndarray:
    """Array ``key`` of a shard file (no pickles)."""
    with np.load(path, allow_pickle=False) as z:
        return z[key]


def load_generated(run_dir: Path, limit: int | None = None) -> tuple[np.ndarray | None, list[str]]:
    """Generated volumes and their subject ids from ``samples/shard_*.npz`` (in shard order).

    Args:
        run_dir: The run folder.
        limit: Stop after this many volumes.

    Returns:
        ``(volumes (N, D, H, W) float32 or None, subject ids)``.
    """
    vols: list[np.ndarray] = []
    ids: list[str] = []
    for shard in sorted((run_dir / "samples").glob("shard_*.npz")):
        try:
            with np.load(shard, allow_pickle=False) as z:
                v = np.asarray(z["volumes"], dtype=np.float32)
                s = [str(x) for x in z["subject_ids"]] if "subject_ids" in z.files else [""] * len(v)
        except (OSError, ValueError, KeyError) as e:
            logger.warning("skipping unreadable sample shard %s: %s", shard, e)
            continue
        if v.ndim == 5:
            v = v[:, 0]
        if v.ndim != 4:
            logger.warning("skipping sample shard %s: volumes have shape %s, expected (N, 1, D, H, W)",
                           shard, v.shape)
            continue
        vols.append(v)
        ids += s
        if limit is not None and sum(len(x) for x in vols) >= limit:
            break
    if not vols:
        return None, []
    out = np.concatenate(vols)
    if limit is not None:
        out, ids = out[:limit], ids[:limit]
    return out, ids


class CohortFiles:
    """Read-only access to a prepared cohort folder (``manifest.csv``, images, brain mask)."""

    def __init__(self, root: Path):
        self.root = root
        self.images: dict[str, Path] = {}
        with (root / "manifest.csv").open(encoding="utf-8", newline="") as fh:
            for row in csv.DictReader(fh):
                sid, img = row.get("subject_id"), row.get("image")
                if sid and img:
                    self.images[sid] = root / img

    @classmethod
    def open(cls, record: dict) -> tuple["CohortFiles | None", str]:
        """The cohort folder of a record, or None with the reason."""
        ref = record.get("reference") if isinstance(record.get("reference"), dict) else {}
        path = ref.get("path")
        if not isinstance(path, str) or not path:
            return None, "the record does not name its reference cohort folder"
        root = Path(path)
        if not (root / "manifest.csv").is_file():
            return None, f"the reference cohort folder {root} (manifest.csv) is not on this machine"
        try:
            return cls(root), ""
        except (OSError, csv.Error, UnicodeDecodeError) as e:
            return None, f"cannot read {root / 'manifest.csv'}: {e}"

    def volume(self, subject_id: str) -> np.ndarray | None:
        """The subject's image as float32 (D, H, W), or None."""
        path = self.images.get(subject_id)
        if path is None:
            return None
        # the manifest could be edited by hand: never read outside the cohort folder
        try:
            path.resolve().relative_to(self.root.resolve())
        except ValueError:
            logger.warning("cohort manifest points outside its folder (%s); ignored", path)
            return None
        return _nifti(path)

    def brain_mask(self) -> np.ndarray | None:
        """The cohort brain mask (bool, D×H×W), or None."""
        m = _nifti(self.root / "brain_mask.nii.gz")
        return None if m is None else m > 0.5


def _nifti(path: Path) -> np.ndarray | None:
    import nibabel as nib

    try:
        return np.asarray(nib.load(str(path)).dataobj, dtype=np.float32)
    except Exception as e:  # noqa: BLE001 - nibabel raises many types for missing/corrupt files
        logger.warning("cannot read %s: %s", path, e)
        return None


def mid_slices(vol: np.ndarray) -> list[np.ndarray]:
    """Axial, coronal and sagittal mid slices of a RAS+ (x, y, z) volume, oriented for display
    (superior / anterior up, the subject's right on the image's right: the neurological convention)."""
    x, y, z = (s // 2 for s in vol.shape)
    axial = np.rot90(vol[:, :, z])       # rows: anterior -> posterior
    coronal = np.rot90(vol[:, y, :])     # rows: superior -> inferior
    sagittal = np.rot90(vol[x, :, :])    # rows: superior -> inferior, anterior to the right
    return [axial, coronal, sagittal]
