"""Synthesis of one phantom subject (part of :mod:`cohorts.phantom`): the per-grid workspace (working
grid, priors, atrophy fields), the random rigid + diffeomorphic + atrophy warp, partial volumes,
contrast rendering, bias field, Rician noise and ground-truth volumes (:func:`synthesize`)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from cohorts import atlas
from cohorts.grid import Grid, get_grid
from cohorts.phantom_lesions import Pathology, ms_workspace, rasterise
from cohorts.phantom_params import SubjectParams, sample_params, signal
from cohorts.subject import STRUCTURES

_STRUCTURE_KEYS = tuple(atlas.STRUCTURE_LABELS)
_SVF_BOX = ((-100.0, 100.0), (-140.0, 100.0), (-100.0, 110.0))  # MNI mm, fixed for every grid
_SVF_SPACING = 10.0  # mm
_SS_STEPS = 6  # scaling-and-squaring steps
_ATROPHY_STEPS = 4


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
    support: np.ndarray  # (wshape) bool: a tissue/label sample whose lower corner is here may be non-zero
    vel_support: np.ndarray  # (wshape) bool: the same for the atrophy velocity (vent_grad, hippo_grad)


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
    support = _corner_support((pri.csf != 0) | (pri.gm != 0) | (pri.wm != 0) | (pri.labels != 0))
    vel_support = _corner_support((vent_grad != 0).any(0) | (hippo_grad != 0).any(0))
    for a in (vent_grad, hippo_grad, thin_w, support, vel_support):
        a.setflags(write=False)
    return _Workspace(grid, f, wvs, wshape, waffine, pri, centre, vent_grad, hippo_grad, thin_w, thin_k,
                      out_world, brain_out, lut, support, vel_support)


def _corner_support(nonzero: np.ndarray) -> np.ndarray:
    """``out[i]`` is True when any of the voxels ``i + {0, 1}^3`` is non-zero: a linear (or nearest)
    sample whose lower corner is ``floor(x) = i`` can only be non-zero there."""
    out = nonzero.copy()
    for ax in range(3):
        nxt = np.zeros_like(out)
        src = [slice(None)] * 3
        dst = [slice(None)] * 3
        src[ax], dst[ax] = slice(1, None), slice(None, -1)
        nxt[tuple(dst)] = out[tuple(src)]
        out |= nxt
    return out


class _SupportSampler:
    """``scipy.ndimage.map_coordinates`` (order 0 or 1, no prefilter) at ``coords``, evaluated only at
    the samples whose result can be non-zero; every other sample is exactly 0, as scipy would return.

    An order-0 or order-1 sample at ``x`` reads only the voxels ``floor(x) + {0, 1}^3``: a sample whose
    lower corner lies outside ``support`` (:func:`_corner_support` of the arrays' non-zeros) is 0 in any
    boundary mode. Samples near or beyond the grid's edge are always evaluated (their value depends on
    the mode). The values computed are scipy's own, sample by sample, so the result is bit-identical
    to sampling everywhere; the coordinates are converted to float64 (what scipy converts them to on
    every call) once for all the arrays sampled.
    """

    def __init__(self, coords: np.ndarray, support: np.ndarray):
        self.shape = coords.shape[1:]
        flat = coords.reshape(3, -1)
        idx = np.zeros(flat.shape[1], dtype=np.intp)
        edge = np.zeros(flat.shape[1], dtype=bool)
        for ax, n in enumerate(support.shape):
            lo = np.floor(flat[ax]).astype(np.intp)
            edge |= (lo < 0) | (lo > n - 2)
            idx = idx * n + np.clip(lo, 0, n - 1)
        self.keep = edge | support.reshape(-1)[idx]
        self.sel = flat[:, self.keep].astype(np.float64)

    def __call__(self, a: np.ndarray, order: int, mode: str = "constant") -> np.ndarray:
        out = np.zeros(self.keep.size, dtype=np.float32 if order else a.dtype)
        out[self.keep] = ndi.map_coordinates(a, self.sel, order=order, mode=mode, cval=0, prefilter=False,
                                             output=out.dtype)
        return out.reshape(self.shape)


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
    # scipy converts coordinates to float64 on every call: convert once for the three components
    vox = np.asarray(vox, dtype=np.float64)
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
    #: mL of lesion tissue per lesion of the pathology (``tissue["lesion"]`` holds the partial volumes)
    lesion_volumes: list[float] = field(default_factory=list)


def synthesize(seed: int, index: int, grid: str | Grid = "3mm", home: str | Path | None = None,
               params: SubjectParams | None = None, pathology: Pathology | None = None,
               headroom: float = 1.0) -> SynthResult:
    """Synthesise subject ``index`` of the phantom with ``seed`` on ``grid`` (nothing is written).

    Args:
        seed: cohort seed.
        index: subject index (its randomness is ``default_rng([seed, index])``).
        grid: output grid name or :class:`Grid`.
        home: cache root for the priors.
        params: override the sampled parameters (tests use this to vary one factor).
        pathology: lesions and deep grey-matter atrophy (:mod:`cohorts.phantom_lesions`; the
            ``phantom-ms`` cohort); ``None`` renders the healthy phantom.
        headroom: the brain's 99.5th intensity percentile maps to this value (1 = the phantom's
            normalisation; below 1 leaves room above normal tissue for hyperintense lesions).
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
    # Pathology adds - thalamus_mm * grad(T) - caudate_mm * grad(C).
    mws = ms_workspace(g, home) if pathology is not None else None
    deep_gm = pathology is not None and (pathology.thalamus_mm > 0 or pathology.caudate_mm > 0)
    if p.vent_mm > 0 or p.hippo_mm > 0 or deep_gm:
        vel = ws.vent_grad * np.float32(p.vent_mm / (_ATROPHY_STEPS * ws.wvs))
        vel -= ws.hippo_grad * np.float32(p.hippo_mm / (_ATROPHY_STEPS * ws.wvs))  # working vox / step
        vel_support = ws.vel_support
        if deep_gm:
            vel -= mws.thal_grad * np.float32(pathology.thalamus_mm / (_ATROPHY_STEPS * ws.wvs))
            vel -= mws.caud_grad * np.float32(pathology.caudate_mm / (_ATROPHY_STEPS * ws.wvs))
            vel_support = vel_support | mws.flow_support
        start = r_vox.copy()
        for _ in range(_ATROPHY_STEPS):  # the velocity is 0 away from the deep structures it moves
            step = _SupportSampler(r_vox, vel_support)
            r_vox += np.stack([step(vel[c], 1, "nearest") for c in range(3)])
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

    warp = _SupportSampler(coords, ws.support)  # the tissue is 0 outside the template's head
    tis_w = {k: warp(v, 1) for k, v in maps.items()}
    lab_w = warp(pri.labels, 0)
    lesion_volumes: list[float] = []
    if pathology is not None:  # lesion tissue replaces the white matter inside each lesion
        ids_w = warp(rasterise(pathology, mws, ws.wshape), 0)
        les_w = np.where(ids_w > 0, tis_w["wm"], np.float32(0))
        tis_w["wm"] = tis_w["wm"] - les_w
        tis_w["lesion"] = les_w

    vox_ml = ws.wvs**3 / 1000.0
    counts = np.bincount(ws.label_lut[np.clip(lab_w, 0, ws.label_lut.size - 1)].ravel(),
                         minlength=len(_STRUCTURE_KEYS) + 1)
    volumes = {key: round(float(counts[k + 1]) * vox_ml, 3) for k, key in enumerate(_STRUCTURE_KEYS)}
    for k in ("gm", "wm", "csf"):
        volumes[k] = round(float(tis_w[k].sum(dtype=np.float64)) * vox_ml, 3)
    volumes["icv"] = round(volumes["gm"] + volumes["wm"] + volumes["csf"], 3)
    if pathology is not None:
        per = np.bincount(ids_w.ravel(), weights=les_w.ravel(), minlength=len(pathology.lesions) + 1)
        lesion_volumes = [round(float(v) * vox_ml, 4) for v in per[1:]]
        volumes["icv"] = round(volumes["icv"] + float(les_w.sum(dtype=np.float64)) * vox_ml, 3)
    volumes = {k: volumes[k] for k in STRUCTURES}

    # output grid: partial volumes, labels, rendering
    tis = {k: block_mean(v, ws.factor) for k, v in tis_w.items()}
    wm_all = tis["wm"] + tis["lesion"] if pathology is not None else tis["wm"]  # lesions label as WM
    total = tis["csf"] + tis["gm"] + wm_all
    brain = total > 0.5
    stack = np.stack([tis["csf"], tis["gm"], wm_all], 0)
    labels = np.where(brain, stack.argmax(0) + 1, 0).astype(np.uint8)

    seq = p.sequence
    s_t = {k: float(signal(p.modality, *p.tissue[k], seq["TR"], seq["TE"], seq.get("TI"))) for k in p.tissue}
    img = tis["csf"] * np.float32(s_t["csf"]) + tis["gm"] * np.float32(s_t["gm"]) \
        + tis["wm"] * np.float32(s_t["wm"])
    if pathology is not None and pathology.lesions:  # each lesion with its own relaxation times
        s_les = np.zeros(len(pathology.lesions) + 1, np.float32)
        s_les[1:] = [signal(p.modality, les.t1, les.t2, les.pd, seq["TR"], seq["TE"], seq.get("TI"))
                     for les in pathology.lesions]
        img = img + block_mean(les_w * s_les[ids_w], ws.factor)
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
    hi = float(np.percentile(img[brain], 99.5)) / headroom if brain.any() else 1.0
    img = np.clip(img / max(hi, 1e-12), 0.0, 1.0).astype(np.float32)
    return SynthResult(p, img, labels, tis, volumes, time.perf_counter() - t0, lesion_volumes)
