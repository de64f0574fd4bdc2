"""The embedded default reference cohort ``phantom``: SYNTHETIC brain MRI built offline from priors.

No real multi-subject MRI can be shipped, so each subject is synthesised from the ICBM152 2009
tissue maps (nilearn) and the Neuromorphometrics labels (deepmriprep), see :mod:`cohorts.atlas`:

1. sex-dependent head size (isotropic scale) and a small random rigid transform;
2. a random smooth diffeomorphism (stationary velocity field on a 10 mm control grid, integrated by
   scaling and squaring);
3. age-dependent atrophy: ventricle enlargement (sampling at x + a * grad(smoothed ventricle mask)),
   hippocampal shrinkage (x - b * grad(smoothed hippocampus mask)) and cortical thinning (part of the GM
   probability next to sulcal CSF becomes CSF);
4. one modality (T1, T2, PD, FLAIR) rendered from tissue probabilities with spin-echo / inversion-
   recovery signal equations and site-dependent sequence and tissue parameters;
5. a smooth multiplicative bias field, Rician noise, skull stripping and [0, 1] normalisation.

Warping happens on a working grid of half the output voxel size (same voxel size for the 1 mm grid);
probabilities are then block-averaged onto the output grid (partial volumes). Ground-truth volumes
come from the same warped maps at the working resolution. Every random choice of subject ``i`` comes
from ``np.random.default_rng([seed, i])``, so each subject is reproducible on its own.

Everything produced here is labelled synthetic (cohort.json, manifest, captions).

Layout: this module builds and caches the cohort (:class:`PhantomCohort`); the scanner physics and
random draws live in :mod:`cohorts.phantom_params`, the synthesis of one subject in
:mod:`cohorts.phantom_render` (both re-exported here).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from cohorts import atlas
from cohorts.grid import Grid, get_grid
from cohorts.phantom_params import (_GM_LOSS_AT_85, _HIPPO_MM_AT_85, _VENT_MM_AT_85, SEQUENCES, SITES, TISSUE_3T,
                                    Site, SubjectParams, modality_for, sample_params, signal, subject_id)
from cohorts.phantom_render import (_ATROPHY_STEPS, _SS_STEPS, _STRUCTURE_KEYS, _SVF_BOX, _SVF_SPACING,
                                    SynthResult, _rotation, _sample_field, _svf_displacement, _unit_gradient,
                                    _upsample2, _Workspace, _workspace, block_mean, synthesize, workspace,
                                    working_factor, working_grid)
from cohorts.subject import Cohort, Subject, save_nifti
from core.progress import Progress

#: every name importable from ``cohorts.phantom``: the cohort builder and, re-exported, the physics
#: (:mod:`cohorts.phantom_params`) and synthesis (:mod:`cohorts.phantom_render`) it is built from
__all__ = [
    "BUILDER_VERSION", "SYNTHETIC_LABEL", "DATASET", "PhantomCohort", "builder_hash", "split_assignment",
    "_subject_spec", "_meta_path", "_load_done", "_build_one", "_pool_context", "_file_lock",
    # phantom_params
    "TISSUE_3T", "SEQUENCES", "Site", "SITES", "_VENT_MM_AT_85", "_HIPPO_MM_AT_85", "_GM_LOSS_AT_85", "signal",
    "SubjectParams", "subject_id", "modality_for", "sample_params",
    # phantom_render
    "_STRUCTURE_KEYS", "_SVF_BOX", "_SVF_SPACING", "_SS_STEPS", "_ATROPHY_STEPS", "working_factor", "working_grid",
    "block_mean", "_Workspace", "_unit_gradient", "_workspace", "workspace", "_rotation", "_svf_displacement",
    "_sample_field", "_upsample2", "SynthResult", "synthesize",
]

logger = logging.getLogger(__name__)

BUILDER_VERSION = "phantom-1.0"
SYNTHETIC_LABEL = "SYNTHETIC phantom — not real MRI"
DATASET = "phantom"


# ------------------------------------------------------------------------------------ building
def builder_hash(version: str = BUILDER_VERSION) -> str:
    """Short hash of the builder version and the prior source files (part of cache names)."""
    return hashlib.sha256(f"{version}|{atlas.source_hash()}".encode()).hexdigest()[:10]


def _subject_spec(grid: Grid, seed: int, index: int, version: str = BUILDER_VERSION) -> str:
    return hashlib.sha256(json.dumps([version, atlas.source_hash(), grid.to_dict(), seed, index])
                          .encode()).hexdigest()[:16]


def _meta_path(out: Path, sid: str) -> Path:
    return out / "images" / f"{sid}.json"


def _load_done(out: Path, grid: Grid, seed: int, index: int, cls: type | None = None) -> dict | None:
    cls = cls or PhantomCohort
    sid = cls.subject_id(index)
    mp = _meta_path(out, sid)
    files = [out / d / f"{vid}.nii.gz" for vid in cls.volume_ids(index) for d in ("images", "labels", *cls.extra_maps)]
    if not (mp.exists() and all(f.exists() for f in files)):
        return None
    try:
        meta = json.loads(mp.read_text())
    except (OSError, ValueError):
        return None
    return meta if meta.get("spec") == _subject_spec(grid, seed, index, cls.builder_version) else None


def _build_one(task: tuple) -> dict:
    """Worker: synthesise and write one subject, return its metadata (module level: picklable)."""
    cls, out_s, grid_name, seed, index, home = task
    out, grid = Path(out_s), get_grid(grid_name)
    meta = {"spec": _subject_spec(grid, seed, index, cls.builder_version), "builder_version": cls.builder_version,
            "index": index, **cls.synthesize_subject(out, grid, seed, index, home)}
    mp = _meta_path(out, meta["subject_id"])
    tmp = mp.with_name(mp.name + ".tmp")
    tmp.write_text(json.dumps(meta, indent=1))
    tmp.replace(mp)
    return meta


def split_assignment(n: int, seed: int) -> list[str]:
    """Deterministic splits: test round(0.25 n), val round(0.10 n), the rest train."""
    n_test, n_val = int(math.floor(0.25 * n + 0.5)), int(math.floor(0.10 * n + 0.5))
    order = np.random.default_rng([seed, 0x5B117]).permutation(n)
    splits = ["train"] * n
    for k, i in enumerate(order):
        splits[int(i)] = "test" if k < n_test else ("val" if k < n_test + n_val else "train")
    return splits


def _pool_context():
    import multiprocessing as mp

    # fork is cheapest (workers inherit the precomputed workspace) but unsafe once torch's thread
    # pools exist in the parent; fall back to spawn then.
    if "fork" in mp.get_all_start_methods() and "torch" not in sys.modules:
        return mp.get_context("fork")
    return mp.get_context("spawn")


class PhantomCohort:
    """The embedded SYNTHETIC reference cohort (registered as cohort ``phantom``)."""

    name = DATASET
    builder_version = BUILDER_VERSION
    label = SYNTHETIC_LABEL
    #: per-subject maps written next to ``images/`` and ``labels/`` (a subclass's ground truth)
    extra_maps: tuple[str, ...] = ()
    #: indices synthesised by the most recent :meth:`build` in this process (the rest were reused).
    last_built: list[int] = []

    @staticmethod
    def subject_id(index: int) -> str:
        return subject_id(index)

    @classmethod
    def volume_ids(cls, index: int) -> list[str]:
        """The ids of the volumes subject ``index`` writes (one; a longitudinal cohort writes one per
        session)."""
        return [cls.subject_id(index)]

    @classmethod
    def synthesize_subject(cls, out: Path, grid: Grid, seed: int, index: int, home: str) -> dict:
        """Render subject ``index``, write its image and labels, return its metadata (a worker calls
        this and adds the spec; a subclass renders more, e.g. pathology)."""
        res = synthesize(seed, index, grid, home)
        p = res.params
        save_nifti(out / "images" / f"{p.subject_id}.nii.gz", res.image, grid, np.float32)
        save_nifti(out / "labels" / f"{p.subject_id}.nii.gz", res.labels, grid, np.uint8)
        return {"subject_id": p.subject_id, "age": p.age, "sex": p.sex, "modality": p.modality, "site": p.site, "volumes": res.volumes,
                "params": asdict(p), "seconds": round(res.seconds, 4)}

    @classmethod
    def subjects_from_meta(cls, out: Path, m: dict, split: str) -> list[Subject]:
        """The cohort's :class:`Subject` rows of one synthesised subject (one per volume it wrote)."""
        return [cls.subject_from_meta(out, m, split)]

    @classmethod
    def subject_from_meta(cls, out: Path, m: dict, split: str) -> Subject:
        sid = m["subject_id"]
        return Subject(subject_id=sid, split=split, modality=m["modality"],
                       image=out / "images" / f"{sid}.nii.gz", labels=out / "labels" / f"{sid}.nii.gz",
                       age=float(m["age"]), sex=m["sex"], site=m["site"], volumes=dict(m["volumes"]),
                       dataset=cls.name, synthetic=True)

    @classmethod
    def build(cls, out: str | Path, grid: str | Grid = "3mm", *, n_subjects: int = 400, seed: int = 0,
              workers: int = 2, quiet: bool = False, home: str | Path | None = None) -> Cohort:
        """Write a complete phantom cohort folder (resumable) and return it.

        Args:
            out: cohort folder (created). Subjects already present with the same spec are reused.
            grid: output grid name ("3mm", "2mm", "1mm").
            n_subjects: number of subjects.
            seed: cohort seed; subject ``i`` draws from ``default_rng([seed, i])``.
            workers: processes (1 = inline).
            quiet: no progress bar.
            home: cache root for the priors (default ``$BRAINGENBENCH_HOME``).

        Returns:
            The saved :class:`Cohort` (``manifest.csv`` + ``cohort.json`` written).
        """
        from cohorts.captions import compute_percentiles, make_caption

        if n_subjects < 1:
            raise ValueError(f"n_subjects must be >= 1, got {n_subjects}")
        g = get_grid(grid)
        out = Path(out)
        (out / "images").mkdir(parents=True, exist_ok=True)
        (out / "labels").mkdir(parents=True, exist_ok=True)
        for d in cls.extra_maps:
            (out / d).mkdir(parents=True, exist_ok=True)
        home_s = str(atlas.braingenbench_home(home))
        ws = workspace(g, home_s)  # priors cache on disk before any worker starts
        save_nifti(out / "brain_mask.nii.gz", ws.brain_out, g, np.uint8)

        metas: dict[int, dict] = {}
        todo = []
        for i in range(n_subjects):
            m = _load_done(out, g, seed, i, cls)
            if m is None:
                todo.append(i)
            else:
                metas[i] = m
        if metas:
            logger.info("%s: reusing %d finished subject(s), building %d", out, len(metas), len(todo))
        tasks = [(cls, str(out), g.name, seed, i, home_s) for i in todo]
        t0 = time.perf_counter()
        bar = Progress(f"{cls.name} {g.name}", len(tasks), unit="subject", quiet=quiet) if tasks else None
        try:
            if workers <= 1 or len(tasks) <= 1:
                for t in tasks:
                    m = _build_one(t)
                    metas[m["index"]] = m
                    if bar:
                        bar.update()
            else:
                from concurrent.futures import ProcessPoolExecutor, as_completed

                with ProcessPoolExecutor(max_workers=min(workers, len(tasks)),
                                         mp_context=_pool_context()) as ex:
                    futs = [ex.submit(_build_one, t) for t in tasks]
                    for fut in as_completed(futs):
                        m = fut.result()
                        metas[m["index"]] = m
                        if bar:
                            bar.update()
        finally:
            if bar:
                bar.close()
        if tasks:
            logger.info("%s: built %d subject(s) in %.1f s", out, len(tasks), time.perf_counter() - t0)
        cls.last_built = sorted(todo)

        splits = split_assignment(n_subjects, seed)
        subjects = [s for i in range(n_subjects) for s in cls.subjects_from_meta(out, metas[i], splits[i])]
        compute_percentiles(subjects)
        for s in subjects:
            s.caption = make_caption(s)
        meta = {
            "synthetic": True, "label": cls.label, "dataset": cls.name, "seed": seed,
            "n_subjects": n_subjects, "builder_version": cls.builder_version,
            "builder_hash": builder_hash(cls.builder_version),
            "priors_source_hash": atlas.source_hash(),
            "attribution": dict(atlas.ATTRIBUTION),
            "licence_note": ("derived from the Neuromorphometrics atlas (CC BY-NC): non-commercial use; "
                             "attribute ICBM152 2009 and Neuromorphometrics"),
            "working_voxel_size_mm": ws.wvs, "volume_units": "mL in MNI (atlas) space",
            "sites": [asdict(s) for s in SITES], "sequences": SEQUENCES,
            "tissue_parameters_3T": TISSUE_3T,
        }
        meta.update(cls.extra_meta())
        cohort = Cohort(cls.name, out, g, subjects, meta)
        cohort.save()
        return cohort

    @classmethod
    def extra_meta(cls) -> dict:
        """What a subclass adds to ``cohort.json``."""
        return {}

    @classmethod
    def cohort_dir(cls, grid: str | Grid = "3mm", *, home: str | Path | None = None, n_subjects: int = 400,
                   seed: int = 0) -> Path:
        """Where :meth:`get` keeps this cohort."""
        g = get_grid(grid)
        return (atlas.braingenbench_home(home) / "cohorts"
                / f"{cls.name}-{g.name}-n{n_subjects}-s{seed}-{builder_hash(cls.builder_version)}")

    @classmethod
    def get(cls, grid: str | Grid = "3mm", *, home: str | Path | None = None, n_subjects: int = 400,
            seed: int = 0, workers: int = 2, quiet: bool = False) -> Cohort:
        """The cached phantom cohort, built on first use (into a temp sibling, then renamed).

        An interrupted build resumes from ``<dir>.partial`` next time; a lock file serialises
        concurrent builders of the same cohort.
        """
        final = cls.cohort_dir(grid, home=home, n_subjects=n_subjects, seed=seed)
        if (final / "cohort.json").exists():
            return Cohort.load(final)
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OSError(f"{final.parent}: cannot create the cohort cache ({e}); set BRAINGENBENCH_HOME "
                          "(or pass home=) to a writable folder") from e
        with _file_lock(final.with_name(final.name + ".lock")):
            if (final / "cohort.json").exists():
                return Cohort.load(final)
            partial = final.with_name(final.name + ".partial")
            cls.build(partial, grid, n_subjects=n_subjects, seed=seed, workers=workers, quiet=quiet,
                      home=home)
            if final.exists():  # a stale, incomplete folder (no cohort.json)
                shutil.rmtree(final)
            os.replace(partial, final)
        return Cohort.load(final)


@contextlib.contextmanager
def _file_lock(path: Path):
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX: no locking
        yield
        return
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
