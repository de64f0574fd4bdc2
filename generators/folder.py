"""`folder`: samples produced elsewhere (another framework, a GPU cluster), brought into the suite.

The folder holds NIfTI files and a manifest CSV with columns ``file`` (path relative to the folder)
and ``prompt`` (the caption it was generated from) and/or ``subject_id`` (the reference subject whose
caption was used). Export the prompts of a suite with ``python -m bench prompts --suite NAME``.
Volumes not on the suite grid are resampled onto it (trilinear, with a warning); intensities outside
[0, 1] are rescaled by the 99.5th percentile (with a warning).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from generators.base import GenerationOutput, GeneratorContext, Prompt

log = logging.getLogger("braingenbench.generators.folder")


class FolderGenerator:
    """Serves pre-generated NIfTI volumes matched to prompts by ``subject_id`` or exact caption.

    Args:
        context: runner context.
        path: the folder.
        manifest: manifest file name inside the folder.
    """

    name = "folder"

    def __init__(self, context: GeneratorContext, *, path: str = "", manifest: str = "manifest.csv"):
        import pandas as pd

        if not path:
            raise ValueError("folder: give the samples folder, e.g. --generator-args path=DIR")
        self.ctx, self.root = context, Path(path)
        self.manifest = self.root / manifest
        if not self.manifest.exists():
            raise FileNotFoundError(f"{self.manifest}: manifest not found; write a CSV with columns "
                                    "file,prompt (and/or subject_id) next to the NIfTI files")
        df = pd.read_csv(self.manifest, keep_default_na=False, dtype=str)
        if "file" not in df.columns or not ({"prompt", "subject_id"} & set(df.columns)):
            raise ValueError(f"{self.manifest}: needs a 'file' column and a 'prompt' or 'subject_id' column "
                             f"(has {list(df.columns)})")
        self.rows = df.to_dict("records")
        for r in self.rows:
            if not (self.root / r["file"]).exists():
                raise FileNotFoundError(f"{self.manifest}: listed file {r['file']!r} does not exist in {self.root}")

    def _find(self, p: Prompt, used: set[int]) -> dict:
        for i, r in enumerate(self.rows):
            if i in used:
                continue
            if (p.subject_id and r.get("subject_id") == p.subject_id) or r.get("prompt", "").strip() == p.text.strip():
                used.add(i)
                return r
        raise KeyError(f"{self.manifest}: no (unused) row for prompt of subject {p.subject_id!r}: "
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
        except Exception as e:
            raise ValueError(f"{path}: cannot read NIfTI ({e}); re-export the sample") from e
        data = np.squeeze(data)
        grid = self.ctx.grid
        if data.shape != tuple(grid.shape) or not np.allclose(img.affine, grid.affine, atol=1e-3):
            log.warning("%s: shape %s / affine differ from grid %s; resampling (trilinear)", path, data.shape, grid.name)
            from nilearn.image import resample_img

            data = np.asarray(resample_img(nib.Nifti1Image(data, img.affine), target_affine=grid.affine,
                                           target_shape=grid.shape, interpolation="continuous",
                                           force_resample=True, copy_header=True).dataobj, dtype=np.float32)
        if not np.isfinite(data).all():
            raise ValueError(f"{path}: contains NaN/inf values")
        if data.min() < 0 or data.max() > 1:
            hi = float(np.percentile(data[data > 0], 99.5)) if (data > 0).any() else 1.0
            log.warning("%s: intensities %.3g..%.3g outside [0, 1]; rescaling by the 99.5th percentile %.3g",
                        path, data.min(), data.max(), hi)
            data = np.clip(data / max(hi, 1e-8), 0, 1)
        return data

    def info(self) -> dict:
        from bench.data.subject import file_sha256

        import hashlib

        files = hashlib.sha256()
        for r in self.rows:  # the samples' bytes: replacing a file starts a new run (run ids are content-keyed)
            files.update(f"{r['file']}\0{file_sha256(self.root / r['file'])}\n".encode())
        return {"role": "external", "description": "pre-generated samples from a folder", "path": str(self.root.resolve()),
                "manifest_sha256": file_sha256(self.manifest), "files_sha256": files.hexdigest(),
                "n_files": len(self.rows)}
