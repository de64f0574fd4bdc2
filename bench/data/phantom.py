"""The embedded default reference cohort ``phantom``: SYNTHETIC brain MRI built offline from priors.

No real multi-subject MRI can be shipped, so each subject is synthesised from the ICBM152 2009
tissue maps (nilearn) and the Neuromorphometrics labels (deepmriprep), see :mod:`bench.data.atlas`:

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
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from bench.data import atlas
from bench.data.grid import Grid, get_grid
from bench.data.subject import MODALITIES, STRUCTURES, Cohort, Subject, save_nifti

logger = logging.getLogger(__name__)

BUILDER_VERSION = "phantom-1.0"
SYNTHETIC_LABEL = "SYNTHETIC phantom — not real MRI"
DATASET = "phantom"

# Tissue parameters at 3 T: (T1 ms, T2 ms, proton density).
TISSUE_3T: dict[str, tuple[float, float, float]] = {
    "wm": (830.0, 80.0, 0.69),
    "gm": (1330.0, 110.0, 0.80),
    "csf": (4000.0, 2000.0, 1.00),
}
# Nominal sequences; sites scale them.  kind "se" = spin echo, "ir" = inversion recovery.
SEQUENCES: dict[str, dict] = {
    "T1": {"kind": "se", "TR": 500.0, "TE": 10.0},
    "T2": {"kind": "se", "TR": 5000.0, "TE": 100.0},
    "PD": {"kind": "se", "TR": 6000.0, "TE": 15.0},
    "FLAIR": {"kind": "ir", "TR": 9000.0, "TE": 120.0, "TI": 2500.0},
}


@dataclass(frozen=True)
class Site:
    """A synthetic scanner: multiplicative jitters of sequence and tissue parameters, noise, bias."""

    name: str
    t1_scale: float  # GM/WM T1 (shorter at lower field)
    t2_scale: float
    tr_scale: float
    te_scale: float
    ti_offset: float  # ms added to FLAIR TI
    noise: tuple[float, float]  # Rician sigma as a fraction of the mean GM/WM signal
    bias: tuple[float, float]  # peak bias-field amplitude range


SITES: tuple[Site, ...] = (
    Site("synth-3T-A", 1.00, 1.00, 1.00, 1.00, 0.0, (0.010, 0.020), (0.10, 0.15)),
    Site("synth-3T-B", 1.04, 0.97, 1.10, 0.95, 100.0, (0.015, 0.025), (0.12, 0.20)),
    Site("synth-1.5T-C", 0.85, 1.05, 0.95, 1.05, -100.0, (0.020, 0.030), (0.10, 0.18)),
    Site("synth-3T-D", 0.97, 1.02, 1.05, 1.00, 200.0, (0.010, 0.020), (0.15, 0.20)),
)

_STRUCTURE_KEYS = tuple(atlas.STRUCTURE_LABELS)
_SVF_BOX = ((-100.0, 100.0), (-140.0, 100.0), (-100.0, 110.0))  # MNI mm, fixed for every grid
_SVF_SPACING = 10.0  # mm
_SS_STEPS = 6  # scaling-and-squaring steps
# Atrophy calibration (see tests): peak boundary displacement in mm at age 85 for the average subject.
_VENT_MM_AT_85 = 3.5
_HIPPO_MM_AT_85 = 0.8
_GM_LOSS_AT_85 = 0.14  # fraction of GM turned into CSF at age 85
_ATROPHY_STEPS = 4


def signal(modality: str, t1, t2, pd, tr: float, te: float, ti: float | None = None):
    """MR signal for tissue parameters (ms) under a sequence.

    Spin echo: ``PD (1 - exp(-TR/T1)) exp(-TE/T2)``.  Inversion recovery (FLAIR):
    ``PD |1 - 2 exp(-TI/T1) + exp(-TR/T1)| exp(-TE/T2)``.
    """
    t1, t2, pd = np.asarray(t1, float), np.asarray(t2, float), np.asarray(pd, float)
    if SEQUENCES[modality]["kind"] == "ir":
        return pd * np.abs(1 - 2 * np.exp(-ti / t1) + np.exp(-tr / t1)) * np.exp(-te / t2)
    return pd * (1 - np.exp(-tr / t1)) * np.exp(-te / t2)


# ------------------------------------------------------------------------------------ parameters
@dataclass
class SubjectParams:
    """Every random choice made for one subject (stored in its metadata JSON)."""

    index: int
    subject_id: str
    age: float
    sex: str
    modality: str
    site: str
    scale: float
    rotation_deg: list[float]
    translation_mm: list[float]
    svf_amplitude_mm: float
    vent_mm: float
    hippo_mm: float
    gm_loss: float
    tissue: dict[str, list[float]]  # name -> [T1, T2, PD]
    sequence: dict[str, float]  # TR, TE (, TI)
    noise_frac: float
    bias_amplitude: float
    bias_coeffs: list[float]
    svf_seed: int
    noise_seed: int


def subject_id(index: int) -> str:
    return f"phantom-{index:04d}"


def modality_for(seed: int, index: int) -> str:
    """Balanced modalities: each block of 4 consecutive indices holds each modality once, shuffled."""
    perm = np.random.default_rng([seed, index // len(MODALITIES), 0x6D6F64]).permutation(len(MODALITIES))
    return MODALITIES[int(perm[index % len(MODALITIES)])]


def sample_params(seed: int, index: int) -> SubjectParams:
    """Draw all random choices for subject ``index`` from ``default_rng([seed, index])``."""
    rng = np.random.default_rng([seed, index])
    age = float(rng.integers(20, 91))
    sex = "F" if rng.random() < 0.5 else "M"
    site = SITES[int(rng.integers(len(SITES)))]
    scale = float(rng.uniform(0.94, 0.98) if sex == "F" else rng.uniform(0.985, 1.035))
    rotation = np.clip(rng.normal(0.0, 2.0, 3), -5, 5)
    translation = np.clip(rng.normal(0.0, 1.5, 3), -4, 4)
    svf_amp = float(rng.uniform(2.0, 4.5))
    t = max(age - 20.0, 0.0) / 65.0
    vent_mm = float(_VENT_MM_AT_85 * t**1.5 * rng.lognormal(0.0, 0.25))
    hippo_mm = float(_HIPPO_MM_AT_85 * t**1.5 * rng.lognormal(0.0, 0.25))
    gm_loss = float(np.clip(_GM_LOSS_AT_85 * t * rng.lognormal(0.0, 0.2) + rng.normal(0, 0.01), 0, 0.4))
    tissue = {}
    for name, (t1, t2, pd) in TISSUE_3T.items():
        s1 = site.t1_scale if name != "csf" else 1.0
        j = rng.normal(0.0, 0.02, 3)
        tissue[name] = [t1 * s1 * (1 + j[0]), t2 * site.t2_scale * (1 + j[1]), pd * (1 + 0.5 * j[2])]
    modality = modality_for(seed, index)
    seq = dict(SEQUENCES[modality])
    seq.pop("kind")
    jt = rng.normal(0.0, 0.03, 3)
    if modality == "T2":
        seq["TR"] = float(rng.uniform(4000.0, 6000.0))
    seq["TR"] = float(seq["TR"] * site.tr_scale * (1 + jt[0]))
    seq["TE"] = float(seq["TE"] * site.te_scale * (1 + jt[1]))
    if "TI" in seq:
        seq["TI"] = float(seq["TI"] + site.ti_offset + 100.0 * jt[2])
    noise_frac = float(rng.uniform(*site.noise))
    bias_amp = float(rng.uniform(*site.bias))
    bias_coeffs = rng.normal(0.0, 1.0, 9).tolist()
    svf_seed, noise_seed = (int(x) for x in rng.integers(0, 2**31 - 1, 2))
    return SubjectParams(index, subject_id(index), age, sex, modality, site.name, scale,
                         rotation.tolist(), translation.tolist(), svf_amp, vent_mm, hippo_mm, gm_loss,
                         tissue, seq, noise_frac, bias_amp, bias_coeffs, svf_seed, noise_seed)


# ------------------------------------------------------------------------------------ workspace
def working_factor(grid: Grid) -> int:
    """Output voxels are ``factor``^3 blocks of working voxels (2 for >= 2 mm grids, else 1)."""
    return 2 if grid.voxel_size >= 2.0 else 1


def working_grid(grid: Grid) -> tuple[float, tuple[int, int, int], np.ndarray]:
    """(voxel size, shape, affine) of the working grid aligned so that blocks average to ``grid``."""
    f = working_factor(grid)
    vs = grid.voxel_size / f
    shape = tuple(int(s * f) for s in grid.shape)
    aff = np.diag([vs, vs, vs, 1.0])
    aff[:3, 3] = grid.affine[:3, 3] - (grid.voxel_size - vs) / 2.0
    return vs, shape, aff  # type: ignore[return-value]


def block_mean(a: np.ndarray, f: int) -> np.ndarray:
    """Average non-overlapping f^3 blocks (partial volumes)."""
    if f == 1:
        return a
    x, y, z = (s // f for s in a.shape)
    return a.reshape(x, f, y, f, z, f).mean(axis=(1, 3, 5), dtype=np.float32)


@dataclass
class _Workspace:
    grid: Grid
    factor: int
    wvs: float
    wshape: tuple[int, int, int]
    waffine: np.ndarray
    priors: atlas.Priors
    centre: np.ndarray  # brain centroid (MNI mm)
    vent_grad: np.ndarray  # (3, *wshape) unit-peak displacement (mm) towards the ventricles
    hippo_grad: np.ndarray  # (3, *wshape) unit-peak displacement towards the hippocampi
    thin_w: np.ndarray  # (wshape) weight of GM next to sulcal CSF, in [0, 1]
    thin_k: float  # sum(gm) / sum(thin_w * gm)
    out_world: np.ndarray  # (3, *out_shape) MNI mm of output voxel centres
    brain_out: np.ndarray  # atlas brain mask on the output grid (bool)
    label_lut: np.ndarray  # label id -> structure index (0 = none, k+1 = _STRUCTURE_KEYS[k])


def _unit_gradient(mask: np.ndarray, sigma_mm: float, vs: float) -> np.ndarray:
    sm = ndi.gaussian_filter(mask.astype(np.float32), sigma_mm / vs)
    g = np.stack(np.gradient(sm), 0).astype(np.float32)
    norm = float(np.sqrt((g**2).sum(0)).max())
    return g / max(norm, 1e-12)


@lru_cache(maxsize=2)
def _workspace(grid_name: str, home: str) -> _Workspace:
    grid = get_grid(grid_name)
    f = working_factor(grid)
    wvs, wshape, waffine = working_grid(grid)
    pri = atlas.load_priors(wvs, wshape, waffine, home=home)
    idx = np.argwhere(pri.brain > 0.5).mean(0)
    centre = (waffine[:3, :3] @ idx + waffine[:3, 3]).astype(np.float64)
    vent = np.isin(pri.labels, atlas.VENTRICLE_IDS)
    hippo = pri.structure_mask("hippocampus_left") | pri.structure_mask("hippocampus_right")
    vent_grad = _unit_gradient(vent, 3.0, wvs)
    hippo_grad = _unit_gradient(hippo, 2.0, wvs)
    csf_ext = np.where(vent, 0.0, pri.csf).astype(np.float32)
    near = ndi.gaussian_filter(csf_ext, 1.5 / wvs)
    ref = float(np.percentile(near[pri.gm > 0.2], 95)) if (pri.gm > 0.2).any() else 1.0
    thin_w = np.clip(near / max(ref, 1e-6), 0.0, 1.0).astype(np.float32)
    thin_k = float(pri.gm.sum() / max(float((thin_w * pri.gm).sum()), 1e-6))
    oi = np.indices(grid.shape, dtype=np.float64).reshape(3, -1)
    out_world = (grid.affine[:3, :3] @ oi + grid.affine[:3, 3:4]).reshape(3, *grid.shape).astype(np.float32)
    brain_out = block_mean(pri.brain, f) > 0.5
    lut = np.zeros(int(pri.labels.max()) + 1, dtype=np.int16)
    for k, key in enumerate(_STRUCTURE_KEYS):
        for i in atlas.STRUCTURE_LABELS[key]:
            if i < lut.size:
                lut[i] = k + 1
    for a in (vent_grad, hippo_grad, thin_w):
        a.setflags(write=False)
    return _Workspace(grid, f, wvs, wshape, waffine, pri, centre, vent_grad, hippo_grad, thin_w, thin_k,
                      out_world, brain_out, lut)


def workspace(grid: str | Grid = "3mm", home: str | Path | None = None) -> _Workspace:
    """Per-process precomputation for a grid (priors + atrophy fields), cached."""
    return _workspace(get_grid(grid).name, str(atlas.braingenbench_home(home)))


# ------------------------------------------------------------------------------------ synthesis
def _rotation(deg) -> np.ndarray:
    ax, ay, az = np.deg2rad(np.asarray(deg, float))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _svf_displacement(p: SubjectParams) -> np.ndarray:
    """Displacement (3, *svf_shape) in mm on the fixed SVF grid: exp of a smooth velocity field."""
    shape = tuple(int(round((hi - lo) / _SVF_SPACING)) + 1 for lo, hi in _SVF_BOX)
    rng = np.random.default_rng(p.svf_seed)
    v = ndi.gaussian_filter(rng.standard_normal((3, *shape)).astype(np.float32), (0, 1.5, 1.5, 1.5))
    v *= p.svf_amplitude_mm / max(float(np.sqrt((v**2).sum(0)).max()), 1e-6)
    d = v / 2.0**_SS_STEPS
    grid = np.indices(shape, dtype=np.float32)
    for _ in range(_SS_STEPS):  # d <- d + d o (id + d)
        coords = grid + d / _SVF_SPACING
        d = d + np.stack([ndi.map_coordinates(d[c], coords, order=1, mode="nearest") for c in range(3)])
    return d


def _sample_field(field_: np.ndarray, vox: np.ndarray) -> np.ndarray:
    return np.stack([ndi.map_coordinates(field_[c], vox, order=1, mode="nearest", prefilter=False,
                                         output=np.float32) for c in range(3)])


def _upsample2(a: np.ndarray) -> np.ndarray:
    """Linear 2x upsampling along the last three axes; new samples at -1/4 and +1/4 of a voxel."""
    for ax in (-3, -2, -1):
        n = a.shape[ax]
        lo = np.concatenate([np.take(a, [0], ax) * 2 - np.take(a, [min(1, n - 1)], ax),
                             np.take(a, range(n - 1), ax)], ax)
        hi = np.concatenate([np.take(a, range(1, n), ax),
                             np.take(a, [n - 1], ax) * 2 - np.take(a, [max(n - 2, 0)], ax)], ax)
        even, odd = 0.75 * a + 0.25 * lo, 0.75 * a + 0.25 * hi
        shape = list(a.shape)
        shape[ax] = 2 * n
        out = np.empty(shape, dtype=np.float32)
        sl_e = [slice(None)] * a.ndim
        sl_o = [slice(None)] * a.ndim
        sl_e[ax], sl_o[ax] = slice(0, None, 2), slice(1, None, 2)
        out[tuple(sl_e)], out[tuple(sl_o)] = even, odd
        a = out
    return a


@dataclass
class SynthResult:
    """One synthesised subject on the output grid."""

    params: SubjectParams
    image: np.ndarray  # float32 [0, 1], zero outside the subject's brain
    labels: np.ndarray  # uint8 tissue labels 0 bg / 1 CSF / 2 GM / 3 WM
    tissue: dict[str, np.ndarray]  # output-grid probabilities (partial volumes)
    volumes: dict[str, float]  # mL, keys from STRUCTURES
    seconds: float = 0.0


def synthesize(seed: int, index: int, grid: str | Grid = "3mm", home: str | Path | None = None,
               params: SubjectParams | None = None) -> SynthResult:
    """Synthesise subject ``index`` of the phantom with ``seed`` on ``grid`` (nothing is written).

    Args:
        seed: cohort seed.
        index: subject index (its randomness is ``default_rng([seed, index])``).
        grid: output grid name or :class:`Grid`.
        home: cache root for the priors.
        params: override the sampled parameters (tests use this to vary one factor).
    """
    t0 = time.perf_counter()
    ws = workspace(grid, home)
    g = ws.grid
    p = params if params is not None else sample_params(seed, index)
    pri = ws.priors

    # subject space x -> template space: q = c + R^T (x - c - t) / s, then SVF, then atrophy
    rot = _rotation(p.rotation_deg)
    lin = rot.T / p.scale
    off = ws.centre - lin @ (ws.centre + np.asarray(p.translation_mm))
    X = ws.out_world.reshape(3, -1)
    q = lin.astype(np.float32) @ X + off.astype(np.float32)[:, None]
    svf = _svf_displacement(p)
    svf_vox = (q - np.array([lo for lo, _ in _SVF_BOX], np.float32)[:, None]) / _SVF_SPACING
    r = q + _sample_field(svf, svf_vox)
    winv = np.linalg.inv(ws.waffine)
    r_vox = winv[:3, :3].astype(np.float32) @ r + winv[:3, 3:4].astype(np.float32)
    # atrophy: flow along vent_mm * grad(V) - hippo_mm * grad(H) (forward Euler, _ATROPHY_STEPS
    # steps); small steps keep every step invertible where a single jump x + a grad(V) would fold.
    if p.vent_mm > 0 or p.hippo_mm > 0:
        vel = ws.vent_grad * np.float32(p.vent_mm / (_ATROPHY_STEPS * ws.wvs))
        vel -= ws.hippo_grad * np.float32(p.hippo_mm / (_ATROPHY_STEPS * ws.wvs))  # working vox / step
        start = r_vox.copy()
        for _ in range(_ATROPHY_STEPS):
            r_vox += _sample_field(vel, r_vox)
        atro_vox = r_vox - start
    else:
        atro_vox = 0.0
    disp_vox = (r - q) / ws.wvs + atro_vox  # nonlinear part, in working voxels
    disp_vox = disp_vox.reshape(3, *g.shape).astype(np.float32)
    if ws.factor == 2:
        disp_vox = _upsample2(disp_vox)
    # exact affine part on the working grid: template voxel = winv (off + lin (A_w idx))
    m = winv[:3, :3] @ lin @ ws.waffine[:3, :3]
    b = winv[:3, :3] @ (lin @ ws.waffine[:3, 3] + off) + winv[:3, 3]
    ii, jj, kk = (np.arange(n, dtype=np.float32) for n in ws.wshape)
    coords = disp_vox
    for c in range(3):
        coords[c] += (m[c, 0] * ii)[:, None, None] + (m[c, 1] * jj)[None, :, None] \
            + (m[c, 2] * kk)[None, None, :] + np.float32(b[c])

    # cortical thinning in template space, then warp
    loss = np.minimum(np.float32(p.gm_loss * ws.thin_k) * ws.thin_w, np.float32(0.9)) * pri.gm
    maps = {"gm": pri.gm - loss, "wm": pri.wm, "csf": pri.csf + loss}

    def warp(a, order):
        return ndi.map_coordinates(a, coords, order=order, mode="constant", cval=0, prefilter=False,
                                   output=np.float32 if order else a.dtype)

    tis_w = {k: warp(v, 1) for k, v in maps.items()}
    lab_w = warp(pri.labels, 0)

    vox_ml = ws.wvs**3 / 1000.0
    counts = np.bincount(ws.label_lut[np.clip(lab_w, 0, ws.label_lut.size - 1)].ravel(),
                         minlength=len(_STRUCTURE_KEYS) + 1)
    volumes = {key: round(float(counts[k + 1]) * vox_ml, 3) for k, key in enumerate(_STRUCTURE_KEYS)}
    for k in ("gm", "wm", "csf"):
        volumes[k] = round(float(tis_w[k].sum(dtype=np.float64)) * vox_ml, 3)
    volumes["icv"] = round(volumes["gm"] + volumes["wm"] + volumes["csf"], 3)
    volumes = {k: volumes[k] for k in STRUCTURES}

    # output grid: partial volumes, labels, rendering
    tis = {k: block_mean(v, ws.factor) for k, v in tis_w.items()}
    total = tis["csf"] + tis["gm"] + tis["wm"]
    brain = total > 0.5
    stack = np.stack([tis["csf"], tis["gm"], tis["wm"]], 0)
    labels = np.where(brain, stack.argmax(0) + 1, 0).astype(np.uint8)

    seq = p.sequence
    s_t = {k: float(signal(p.modality, *p.tissue[k], seq["TR"], seq["TE"], seq.get("TI"))) for k in tis}
    img = tis["csf"] * np.float32(s_t["csf"]) + tis["gm"] * np.float32(s_t["gm"]) \
        + tis["wm"] * np.float32(s_t["wm"])
    # bias: 1 + amp * f / max|f| over the brain, f = quadratic polynomial in normalised MNI coords
    u = ws.out_world / np.array([90.0, 110.0, 90.0], np.float32)[:, None, None, None]
    basis = [u[0], u[1], u[2], u[0] * u[1], u[0] * u[2], u[1] * u[2], u[0]**2 - 0.3, u[1]**2 - 0.3,
             u[2]**2 - 0.3]
    fb = sum(np.float32(c) * bf for c, bf in zip(p.bias_coeffs, basis))
    peak = float(np.abs(fb[brain]).max()) if brain.any() else 1.0
    img = img * (1.0 + np.float32(p.bias_amplitude / max(peak, 1e-6)) * fb)
    sigma = np.float32(p.noise_frac * 0.5 * (s_t["gm"] + s_t["wm"]))
    nrng = np.random.default_rng(p.noise_seed)
    n1 = nrng.standard_normal(img.shape, dtype=np.float32)
    n2 = nrng.standard_normal(img.shape, dtype=np.float32)
    img = np.sqrt((img + sigma * n1) ** 2 + (sigma * n2) ** 2)
    img[~brain] = 0.0
    hi = float(np.percentile(img[brain], 99.5)) if brain.any() else 1.0
    img = np.clip(img / max(hi, 1e-12), 0.0, 1.0).astype(np.float32)
    return SynthResult(p, img, labels, tis, volumes, time.perf_counter() - t0)


# ------------------------------------------------------------------------------------ building
def builder_hash() -> str:
    """Short hash of the builder version and the prior source files (part of cache names)."""
    return hashlib.sha256(f"{BUILDER_VERSION}|{atlas.source_hash()}".encode()).hexdigest()[:10]


def _subject_spec(grid: Grid, seed: int, index: int) -> str:
    return hashlib.sha256(json.dumps([BUILDER_VERSION, atlas.source_hash(), grid.to_dict(), seed, index])
                          .encode()).hexdigest()[:16]


def _meta_path(out: Path, sid: str) -> Path:
    return out / "images" / f"{sid}.json"


def _load_done(out: Path, grid: Grid, seed: int, index: int) -> dict | None:
    sid = subject_id(index)
    mp = _meta_path(out, sid)
    img, lab = out / "images" / f"{sid}.nii.gz", out / "labels" / f"{sid}.nii.gz"
    if not (mp.exists() and img.exists() and lab.exists()):
        return None
    try:
        meta = json.loads(mp.read_text())
    except (OSError, ValueError):
        return None
    return meta if meta.get("spec") == _subject_spec(grid, seed, index) else None


def _build_one(task: tuple[str, str, int, int, str]) -> dict:
    """Worker: synthesise and write one subject, return its metadata (module level: picklable)."""
    out_s, grid_name, seed, index, home = task
    out, grid = Path(out_s), get_grid(grid_name)
    res = synthesize(seed, index, grid, home)
    p = res.params
    save_nifti(out / "images" / f"{p.subject_id}.nii.gz", res.image, grid, np.float32)
    save_nifti(out / "labels" / f"{p.subject_id}.nii.gz", res.labels, grid, np.uint8)
    meta = {"spec": _subject_spec(grid, seed, index), "builder_version": BUILDER_VERSION,
            "subject_id": p.subject_id, "index": index, "age": p.age, "sex": p.sex,
            "modality": p.modality, "site": p.site, "volumes": res.volumes,
            "params": asdict(p), "seconds": round(res.seconds, 4)}
    mp = _meta_path(out, p.subject_id)
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
    #: indices synthesised by the most recent :meth:`build` in this process (the rest were reused).
    last_built: list[int] = []

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
        from bench.data.captions import compute_percentiles, make_caption

        if n_subjects < 1:
            raise ValueError(f"n_subjects must be >= 1, got {n_subjects}")
        g = get_grid(grid)
        out = Path(out)
        (out / "images").mkdir(parents=True, exist_ok=True)
        (out / "labels").mkdir(parents=True, exist_ok=True)
        home_s = str(atlas.braingenbench_home(home))
        ws = workspace(g, home_s)  # priors cache on disk before any worker starts
        save_nifti(out / "brain_mask.nii.gz", ws.brain_out, g, np.uint8)

        metas: dict[int, dict] = {}
        todo = []
        for i in range(n_subjects):
            m = _load_done(out, g, seed, i)
            if m is None:
                todo.append(i)
            else:
                metas[i] = m
        if metas:
            logger.info("%s: reusing %d finished subject(s), building %d", out, len(metas), len(todo))
        tasks = [(str(out), g.name, seed, i, home_s) for i in todo]
        t0 = time.perf_counter()
        bar = None
        if not quiet and tasks:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(tasks), desc=f"phantom {g.name}", unit="subject")
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
        subjects = []
        for i in range(n_subjects):
            m = metas[i]
            sid = m["subject_id"]
            subjects.append(Subject(
                subject_id=sid, split=splits[i], modality=m["modality"],
                image=out / "images" / f"{sid}.nii.gz", labels=out / "labels" / f"{sid}.nii.gz",
                age=float(m["age"]), sex=m["sex"], site=m["site"], volumes=dict(m["volumes"]),
                dataset=DATASET, synthetic=True))
        compute_percentiles(subjects)
        for s in subjects:
            s.caption = make_caption(s)
        meta = {
            "synthetic": True, "label": SYNTHETIC_LABEL, "dataset": DATASET, "seed": seed,
            "n_subjects": n_subjects, "builder_version": BUILDER_VERSION, "builder_hash": builder_hash(),
            "priors_source_hash": atlas.source_hash(),
            "attribution": dict(atlas.ATTRIBUTION),
            "licence_note": ("derived from the Neuromorphometrics atlas (CC BY-NC): non-commercial use; "
                             "attribute ICBM152 2009 and Neuromorphometrics"),
            "working_voxel_size_mm": ws.wvs, "volume_units": "mL in MNI (atlas) space",
            "sites": [asdict(s) for s in SITES], "sequences": SEQUENCES,
            "tissue_parameters_3T": TISSUE_3T,
        }
        cohort = Cohort(DATASET, out, g, subjects, meta)
        cohort.save()
        return cohort

    @classmethod
    def cohort_dir(cls, grid: str | Grid = "3mm", *, home: str | Path | None = None, n_subjects: int = 400,
                   seed: int = 0) -> Path:
        """Where :meth:`get` keeps this cohort."""
        g = get_grid(grid)
        return (atlas.braingenbench_home(home) / "cohorts"
                / f"phantom-{g.name}-n{n_subjects}-s{seed}-{builder_hash()}")

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
