"""Contrast-matched templates and the grids registration and label propagation run on (part of
:mod:`cohorts.preprocess`): :func:`registration_grid`, :func:`grid_priors`, :func:`label_priors`,
:func:`modality_template`."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from cohorts import atlas
from cohorts.grid import Grid, _make

REGISTRATION_MIN_VOXEL_MM = 2.0


def registration_grid(grid: Grid) -> Grid:
    """The grid registration runs on: the output grid, but no finer than 2 mm."""
    if grid.voxel_size >= REGISTRATION_MIN_VOXEL_MM:
        return grid
    return _make(REGISTRATION_MIN_VOXEL_MM, f"{REGISTRATION_MIN_VOXEL_MM:g}mm")


def grid_priors(grid: Grid) -> atlas.Priors:
    return atlas.load_priors(grid.voxel_size, tuple(grid.shape), grid.affine)


def label_priors(grid: Grid) -> atlas.Priors:
    """Priors used for label propagation: half the output voxel size for >= 2 mm grids (1.5 mm for
    3 mm), 1 mm otherwise — the phantom's working grid, so their disk cache is shared."""
    from cohorts.phantom import working_grid

    vs, shape, aff = working_grid(grid)
    return atlas.load_priors(vs, shape, aff)


@lru_cache(maxsize=8)
def _template_cached(modality: str, name: str, vs: float, shape: tuple, aff_key: tuple) -> np.ndarray:
    affine = np.asarray(aff_key, float).reshape(4, 4)
    pri = atlas.load_priors(vs, shape, affine)
    if modality == "T1":
        files = atlas.source_files()
        t1, t1_aff = atlas._load_nifti(files["t1"], np.float32)
        tpl = atlas.resample(t1, t1_aff, shape, affine, 1) * pri.brain
    else:
        from cohorts.phantom import SEQUENCES, TISSUE_3T, signal

        seq = SEQUENCES[modality]
        s = {k: float(signal(modality, *TISSUE_3T[k], seq["TR"], seq["TE"], seq.get("TI"))) for k in TISSUE_3T}
        tpl = pri.csf * s["csf"] + pri.gm * s["gm"] + pri.wm * s["wm"]
    tpl = np.asarray(tpl, np.float32)
    hi = float(np.percentile(tpl[pri.brain > 0.5], 99.5))
    tpl = np.clip(tpl / max(hi, 1e-12), 0, 1).astype(np.float32)
    tpl.setflags(write=False)
    return tpl


def modality_template(modality: str, grid: Grid) -> np.ndarray:
    """Brain-only, contrast-matched template on ``grid`` in [0, 1].

    T1: the ICBM152 2009 T1 template times the brain mask. T2/PD/FLAIR: the ICBM152 GM/WM/CSF
    priors rendered with the phantom's nominal 3 T signal equations (no such templates ship offline).
    """
    modality = modality if modality in ("T1", "T2", "PD", "FLAIR") else "T1"
    return _template_cached(modality, grid.name, float(grid.voxel_size), tuple(grid.shape),
                            tuple(float(v) for v in grid.affine.ravel()))
