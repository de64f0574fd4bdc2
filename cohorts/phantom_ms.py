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

from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from cohorts.grid import Grid
from cohorts.phantom import PhantomCohort
from cohorts.phantom_lesions import LESION_CLASSES, Change, Pathology, activity, evolve, ms_workspace, sample_pathology
from cohorts.phantom_params import sample_params
from cohorts.phantom_render import synthesize
from cohorts.subject import Subject, save_nifti

__all__ = ["PhantomMSCohort", "PhantomMSLongCohort", "MS_STREAM", "ms_params", "ms_pathology", "ms_sessions",
           "Session", "ATROPHY_KEYS"]

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
        return _render_volume(out, grid, seed, index, home, p, path)

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


def _render_volume(out: Path, grid: Grid, seed: int, index: int, home: str, p, path: Pathology) -> dict:
    """Render one volume of a phantom-ms subject, write its image, labels and lesion map, and return
    its metadata (volumes, lesions, % of deep grey matter lost to the disease)."""
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
    return {"subject_id": sid, "age": p.age, "sex": p.sex, "modality": p.modality, "site": p.site,
            "volumes": res.volumes, "lesions": lesions, "lesion_volumes": res.lesion_volumes, "atrophy": atrophy,
            "params": asdict(p), "pathology": path.to_dict(), "seconds": round(seconds, 4)}


# ------------------------------------------------------------------------------------ longitudinal
#: follow-up intervals are drawn uniformly in this range (months)
INTERVAL_MONTHS = (6, 18)
# healthy ageing per year, added to the phantom's age-dependent atrophy parameters; MS subjects
# lose grey matter ~4x faster (whole-brain atrophy ~0.5-1 %/year in MS against ~0.2-0.3 %/year)
_VENT_MM_PER_YEAR = 0.05
_GM_LOSS_PER_YEAR = 0.002
_MS_GM_FACTOR = 4.0


class Session:
    """One session of a longitudinal subject: when, its parameters and pathology, what changed."""

    def __init__(self, months: float, params, pathology: Pathology, change: Change):
        self.months, self.params, self.pathology, self.change = months, params, pathology, change


def ms_sessions(seed: int, index: int, grid: str | Grid, n_sessions: int, home: str | Path | None = None) -> list[Session]:
    """Baseline and follow-ups of ``phantom-ms`` subject ``index``: the baseline is the cross-sectional
    cohort's subject; each follow-up comes 6-18 months after the previous one, with the same anatomy and
    scanner (new noise), new and enlarging lesions at the subject's activity, deep grey-matter atrophy
    growing ~1 %/year, and ageing (ventricles, grey matter; faster in MS)."""
    p0 = ms_params(seed, index)
    path = ms_pathology(seed, index, grid, home)
    rng = np.random.default_rng([seed, index, *MS_STREAM, 2])
    rate = activity(rng, path)
    mws = ms_workspace(grid, home)
    gm_rate = _GM_LOSS_PER_YEAR * (_MS_GM_FACTOR if path.ms else 1.0)
    out = [Session(0.0, replace(p0, subject_id=PhantomMSLongCohort.volume_id(index, 0)), path, Change())]
    months = 0.0
    for k in range(1, n_sessions):
        step = float(rng.integers(INTERVAL_MONTHS[0], INTERVAL_MONTHS[1] + 1))
        months += step
        path, change = evolve(path, rng, mws, step / 12.0, rate)
        years = months / 12.0
        p = replace(p0, subject_id=PhantomMSLongCohort.volume_id(index, k), age=p0.age + years,
                    vent_mm=p0.vent_mm + _VENT_MM_PER_YEAR * years, gm_loss=p0.gm_loss + gm_rate * years,
                    noise_seed=int(rng.integers(0, 2**31 - 1)))
        out.append(Session(months, p, path, change))
    return out


class PhantomMSLongCohort(PhantomMSCohort):
    """SYNTHETIC longitudinal phantom-ms (cohort ``phantom-ms-long``): each subject is a baseline (the
    ``phantom-ms`` subject of the same index, byte for byte) and two follow-ups.

    Each volume is a row of the manifest (``<subject>_ses-0k``) with ``sequence`` (the subject),
    ``session``, ``months`` since the baseline and ``changes`` since the previous session:
    ``new_lesions``, ``enlarging_lesions``, ``lesion_volume_ml`` (change in mL), ``thalamus_pct``,
    ``caudate_pct`` and ``brain_pct`` (GM + WM + lesion volume change, %). Splits are by subject.
    """

    name = "phantom-ms-long"
    builder_version = "phantom-ms-long-1.1"  # bump when a subject's bytes or caption change (1.1: lesion-volume change in captions)
    label = "SYNTHETIC phantom-ms-long (MS-like lesions, 3 sessions) — not real MRI"
    n_sessions = 3

    @staticmethod
    def volume_id(index: int, session: int) -> str:
        return f"{PhantomMSCohort.subject_id(index)}_ses-{session:02d}"

    @classmethod
    def volume_ids(cls, index: int) -> list[str]:
        return [cls.volume_id(index, k) for k in range(cls.n_sessions)]

    @classmethod
    def synthesize_subject(cls, out: Path, grid: Grid, seed: int, index: int, home: str) -> dict:
        vols, prev = [], None
        for k, ses in enumerate(ms_sessions(seed, index, grid, cls.n_sessions, home)):
            m = _render_volume(out, grid, seed, index, home, ses.params, ses.pathology)
            m.update(session=f"ses-{k:02d}", months=ses.months, changes=_changes(prev, m, ses.change))
            vols.append(m)
            prev = m
        return {"subject_id": cls.subject_id(index), "sessions": vols,
                "seconds": round(sum(v["seconds"] for v in vols), 4)}

    @classmethod
    def subjects_from_meta(cls, out: Path, m: dict, split: str) -> list[Subject]:
        rows = []
        for v in m["sessions"]:
            s = cls.subject_from_meta(out, v, split)
            s.sequence, s.session, s.months = m["subject_id"], v["session"], float(v["months"])
            s.changes = {k: float(x) for k, x in v["changes"].items()}
            rows.append(s)
        return rows


def _changes(prev: dict | None, cur: dict, change: Change) -> dict:
    """What changed since the previous session (empty for the baseline)."""
    if prev is None:
        return {}

    def brain(m):
        return m["volumes"]["gm"] + m["volumes"]["wm"] + m["lesions"]["volume"]

    def pct(a, b):
        return round(100.0 * (b / a - 1.0), 2)

    return {"new_lesions": change.new, "enlarging_lesions": change.enlarging,
            "lesion_volume_ml": round(cur["lesions"]["volume"] - prev["lesions"]["volume"], 3),
            "thalamus_pct": pct(prev["volumes"]["thalamus"], cur["volumes"]["thalamus"]),
            "caudate_pct": pct(prev["volumes"]["caudate"], cur["volumes"]["caudate"]),
            "brain_pct": pct(brain(prev), brain(cur))}
