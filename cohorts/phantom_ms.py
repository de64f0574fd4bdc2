"""The SYNTHETIC cohort ``phantom-ms``: the phantom with MS-like white-matter lesions and deep
grey-matter atrophy, with ground-truth lesion maps.

Same builder, grids, scanner physics and determinism as :mod:`cohorts.phantom`; each subject also
draws a :class:`~cohorts.phantom_lesions.Pathology` (20 % are healthy controls). Ages are 18-65, the
age range of MS cohorts. Per subject the cohort writes, next to ``images/`` and ``labels/``:

- ``images/<id>.nii.gz``: as the phantom's, but the brain's 99.5th intensity percentile maps to 0.7
  (:data:`HEADROOM`), not 1, so hyperintense lesions keep their contrast instead of being clipped;
- ``lesions/<id>.nii.gz``: the lesion tissue fraction of every voxel (float32 partial volumes in
  [0, 1]; ``> 0.5`` is the binary mask);
- in the manifest: the lesion count per location class, the total count and the total lesion volume
  (mL of lesion tissue, measured after the subject's own warp), and the thalamic and caudate volume
  lost to disease in % (the same subject rendered without the pathology is the reference).

Captions say all of it in words (:func:`cohorts.captions.make_caption`), and
:func:`cohorts.captions.parse_caption` reads it back.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np

from cohorts.grid import Grid
from cohorts.phantom import PhantomCohort, _subject_spec
from cohorts.phantom_lesions import LESION_CLASSES, Pathology, ms_workspace, sample_pathology
from cohorts.phantom_params import sample_params
from cohorts.phantom_render import synthesize
from cohorts.subject import Subject, save_nifti

__all__ = ["PhantomMSCohort", "MS_STREAM", "ms_params", "ms_pathology", "ATROPHY_KEYS"]

#: extra seed word of the phantom-ms subjects (they are not the phantom's subjects)
MS_STREAM = (0x4D53,)
ATROPHY_KEYS = ("thalamus", "caudate")
#: the brain's 99.5th intensity percentile maps to 0.7, so hyperintense lesions (FLAIR lesions are ~1.6x
#: grey matter) are not clipped at 1 as the phantom's normalisation would clip them
HEADROOM = 0.7


def ms_params(seed: int, index: int):
    """The scanner/anatomy parameters of ``phantom-ms`` subject ``index``."""
    return sample_params(seed, index, stream=MS_STREAM, ages=(18, 65), sid=PhantomMSCohort.subject_id(index))


def ms_pathology(seed: int, index: int, grid: str | Grid, home: str | Path | None = None) -> Pathology:
    """The pathology of ``phantom-ms`` subject ``index`` (grid-independent, in template mm)."""
    return sample_pathology(np.random.default_rng([seed, index, *MS_STREAM, 1]), ms_workspace(grid, home))


class PhantomMSCohort(PhantomCohort):
    """SYNTHETIC phantom with MS-like lesions and deep grey-matter atrophy (cohort ``phantom-ms``)."""

    name = "phantom-ms"
    builder_version = "phantom-ms-1.0"  # bump when a subject's bytes change
    label = "SYNTHETIC phantom-ms (MS-like lesions) — not real MRI"
    extra_maps = ("lesions",)

    @staticmethod
    def subject_id(index: int) -> str:
        return f"phantom-ms-{index:04d}"

    @classmethod
    def synthesize_subject(cls, out: Path, grid: Grid, seed: int, index: int, home: str) -> dict:
        p = ms_params(seed, index)
        path = ms_pathology(seed, index, grid, home)
        res = synthesize(seed, index, grid, home, params=p, pathology=path, headroom=HEADROOM)
        sid = p.subject_id
        save_nifti(out / "images" / f"{sid}.nii.gz", res.image, grid, np.float32)
        save_nifti(out / "labels" / f"{sid}.nii.gz", res.labels, grid, np.uint8)
        save_nifti(out / "lesions" / f"{sid}.nii.gz", res.tissue["lesion"], grid, np.float32)
        atrophy = {k: 0.0 for k in ATROPHY_KEYS}
        seconds = res.seconds
        if path.thalamus_mm > 0 or path.caudate_mm > 0:  # the same subject without the disease
            ref = synthesize(seed, index, grid, home, params=p)
            atrophy = {k: round(100.0 * (1.0 - res.volumes[k] / ref.volumes[k]), 2) for k in ATROPHY_KEYS}
            seconds += ref.seconds
        kept = [(les, v) for les, v in zip(path.lesions, res.lesion_volumes) if v > 0]
        lesions = {k: sum(1 for les, _ in kept if les.kind == k) for k in LESION_CLASSES}
        lesions.update(count=len(kept), volume=round(sum(v for _, v in kept), 3))
        return {"spec": _subject_spec(grid, seed, index, cls.builder_version),
                "builder_version": cls.builder_version, "subject_id": sid, "index": index, "age": p.age,
                "sex": p.sex, "modality": p.modality, "site": p.site, "volumes": res.volumes,
                "lesions": lesions, "lesion_volumes": res.lesion_volumes, "atrophy": atrophy,
                "params": asdict(p), "pathology": path.to_dict(), "seconds": round(seconds, 4)}

    @classmethod
    def subject_from_meta(cls, out: Path, m: dict, split: str) -> Subject:
        s = super().subject_from_meta(out, m, split)
        s.lesions = {k: float(v) for k, v in m["lesions"].items()}
        s.atrophy = {k: float(v) for k, v in m["atrophy"].items()}
        s.lesion_mask = out / "lesions" / f"{s.subject_id}.nii.gz"
        return s

    @classmethod
    def extra_meta(cls) -> dict:
        from cohorts import phantom_lesions as pl

        return {"pathology_model": {
            "classes": list(LESION_CLASSES), "healthy_share": pl._HEALTHY_SHARE, "mean_count": pl._MEAN_COUNT,
            "class_share": list(pl._CLASS_SHARE), "median_ml": pl._MEDIAN_ML, "lesion_tissue_3T": pl.LESION_TISSUE_3T,
            "black_hole_t1": pl.BLACK_HOLE_T1, "black_hole_share": pl._BLACK_HOLE_SHARE,
            "thalamus_mm_at_10ml": pl._THAL_MM_AT_10ML, "caudate_mm_at_10ml": pl._CAUD_MM_AT_10ML,
            "lesion_maps": "lesions/<id>.nii.gz: lesion tissue fraction (float32); > 0.5 is the mask"}}
