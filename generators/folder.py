"""`folder`: samples produced elsewhere (another framework, a GPU cluster), brought into the suite.

The folder holds NIfTI files and a manifest CSV with columns ``file`` (path relative to the folder)
and ``prompt`` (the caption it was generated from) and/or ``subject_id`` (the reference subject whose
caption was used).

* Samples made for the suite's prompts (export them with ``python -m bench prompts --suite NAME``):
  each prompt finds its row by ``subject_id`` or exact caption, and every metric runs, paired ones
  (SSIM against the caption's own volume) included.
* Samples made for prompts of your own: when the manifest has no ``subject_id`` and its captions are
  not the suite's, the run scores *your* prompts (:meth:`FolderGenerator.own_prompts`): realism against
  attribute-matched real volumes, conformance from the attributes parsed from your captions; paired
  metrics are skipped and the record says why.

``name=`` sets the name the run is shown under. Every file is checked when the generator is built (a
3-D image, or 4-D with one volume; a readable header), before any metric runs; a bad file is one
``error:`` line naming it and the fix. Volumes not on the suite grid are resampled onto it
(trilinear, with a warning); intensities outside [0, 1] are rescaled by the 99.5th percentile (with a
warning).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from core.errors import InputError
from generators.base import GenerationOutput, GeneratorContext, Prompt

log = logging.getLogger("braingenbench.generators.folder")


class FolderGenerator:
    """Serves pre-generated NIfTI volumes matched to prompts by ``subject_id`` or exact caption.

    Args:
        context: runner context.
        path: the folder.
        manifest: manifest file name inside the folder.
        name: the name the run is shown under (leaderboards, tables, the run folder); default ``folder``.
    """

    name = "folder"

    def __init__(self, context: GeneratorContext, *, path: str = "", manifest: str = "manifest.csv", name: str = ""):
        import pandas as pd

        if not path:
            raise InputError("folder: give the samples folder, e.g. --generator-args path=DIR")
        self.ctx, self.root = context, Path(path)
        self.display_name = name.strip() or None
        self.manifest = self.root / manifest
        if not self.manifest.exists():
            raise InputError(f"{self.manifest}: manifest not found; write a CSV with columns "
                             "file,prompt (and/or subject_id) next to the NIfTI files")
        df = pd.read_csv(self.manifest, keep_default_na=False, dtype=str)
        if "file" not in df.columns or not ({"prompt", "subject_id"} & set(df.columns)):
            raise InputError(f"{self.manifest}: needs a 'file' column and a 'prompt' or 'subject_id' column "
                             f"(has {list(df.columns)})")
        self.rows = df.to_dict("records")
        if not self.rows:
            raise InputError(f"{self.manifest}: no rows; list one sample per line (file,prompt)")
        for r in self.rows:
            check_sample_file(self.root / r["file"], self.manifest)

    def own_prompts(self) -> list[str] | None:
        """The manifest's captions, in order, when it names no ``subject_id`` (prompts of the user's own;
        the runner uses the suite's prompts instead when every caption is one of them); else None."""
        if any(str(r.get("subject_id", "")).strip() for r in self.rows) or \
                not all(str(r.get("prompt", "")).strip() for r in self.rows):
            return None
        return [str(r["prompt"]).strip() for r in self.rows]

    def _find(self, p: Prompt, used: set[int]) -> dict:
        if p.row is not None:  # the user's own prompts: row i of the manifest
            return self.rows[p.row]
        for i, r in enumerate(self.rows):
            if i in used:
                continue
            if (p.subject_id and r.get("subject_id") == p.subject_id) or r.get("prompt", "").strip() == p.text.strip():
                used.add(i)
                return r
        raise InputError(f"{self.manifest}: no (unused) row for prompt of subject {p.subject_id!r}: "
                         f"{p.text[:80]!r}...; add a row with this subject_id or caption")

    def generate(self, prompts: Sequence[Prompt], *, seed: int) -> GenerationOutput:
        used: set[int] = set()
        out = np.empty((len(prompts), 1, *self.ctx.grid.shape), dtype=np.float32)
        for i, p in enumerate(prompts):
            out[i, 0] = self._load(self.root / self._find(p, used)["file"])
        return GenerationOutput(out)

    def _load(self, path: Path) -> np.ndarray:
        import nibabel as nib

        try:
            img = nib.load(str(path))
            data = np.asarray(img.dataobj, dtype=np.float32)
        except Exception as e:  # noqa: BLE001 - nibabel raises many types for truncated/corrupt files
            raise InputError(f"{path}: cannot read the image data ({type(e).__name__}: {_one_line(e)}); the "
                             "file is truncated or corrupt: re-export the sample") from e
        data = data.reshape(data.shape[:3]) if data.ndim == 4 else data
        grid = self.ctx.grid
        if data.shape != tuple(grid.shape) or not np.allclose(img.affine, grid.affine, atol=1e-3):
            log.warning("%s: shape %s / affine differ from grid %s; resampling (trilinear)", path, data.shape, grid.name)
            from nilearn.image import resample_img

            data = np.asarray(resample_img(nib.Nifti1Image(data, img.affine), target_affine=grid.affine,
                                           target_shape=grid.shape, interpolation="continuous",
                                           force_resample=True, copy_header=True).dataobj, dtype=np.float32)
        if not np.isfinite(data).all():
            raise InputError(f"{path}: {int((~np.isfinite(data)).sum())} NaN/inf voxels; re-export the sample "
                             "with finite intensities")
        if data.min() < 0 or data.max() > 1:
            hi = float(np.percentile(data[data > 0], 99.5)) if (data > 0).any() else 1.0
            log.warning("%s: intensities %.3g..%.3g outside [0, 1]; rescaling by the 99.5th percentile %.3g",
                        path, data.min(), data.max(), hi)
            data = np.clip(data / max(hi, 1e-8), 0, 1)
        return data

    def info(self) -> dict:
        from core.io import sha256_file

        import hashlib

        files = hashlib.sha256()
        for r in self.rows:  # the samples' bytes: replacing a file starts a new run (run ids are content-keyed)
            files.update(f"{r['file']}\0{sha256_file(self.root / r['file'])}\n".encode())
        return {"role": "external", "name": self.display_name or "folder",
                "description": "pre-generated samples from a folder", "path": str(self.root.resolve()),
                "manifest_sha256": sha256_file(self.manifest), "files_sha256": files.hexdigest(),
                "n_files": len(self.rows)}


def check_sample_file(path: Path, manifest: Path) -> None:
    """A sample file's header: it exists, is readable as NIfTI, and holds one 3-D volume (4-D with a
    single volume is accepted). Raises :class:`InputError` naming the file and the fix."""
    import nibabel as nib

    if not path.exists():
        raise InputError(f"{manifest}: listed file {path.name!r} does not exist in {path.parent}")
    try:
        shape = tuple(nib.load(str(path)).shape)
    except Exception as e:  # noqa: BLE001 - nibabel raises many types for unreadable headers
        raise InputError(f"{path}: not a readable NIfTI image ({type(e).__name__}: {_one_line(e)}); re-export "
                         "it as .nii or .nii.gz") from e
    if len(shape) == 4 and shape[3] == 1:
        return
    if len(shape) != 3:
        raise InputError(f"{path}: a {len(shape)}-D image of shape {shape}; each sample must be one 3-D "
                         "volume (D, H, W): save one file per sample")


def _one_line(e: Exception) -> str:
    """A library's error text on one line (the CLI prints one ``error:`` line)."""
    return " ".join(str(e).split())
