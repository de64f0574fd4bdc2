"""Weight-free parts of published evaluation protocols (see ``docs/protocols.md``).

VLM3D 2026 MRI report-to-volume scorer (``forithmus/VLM3D-Dockers``, ``mr_challenges/mrgen_evaluation``):

* :func:`percentile_scale`: each volume (and, for the FID features, each 2D slice) clipped to its own
  0.5-99.5 percentile range and scaled to [0, 1] in float32; a range below 1e-6 gives zeros.
* :func:`vlm3d_paired`: MSE, PSNR (``data_range`` 1) and 3D SSIM of one scaled pair. The SSIM is
  scikit-image's ``structural_similarity`` default: 7-voxel box window, sample covariances
  (``N / (N - 1)``), ``K1 = 0.01``, ``K2 = 0.03``, the map averaged over the valid region (a border of 3
  voxels dropped). Written here from the formula, not by calling scikit-image (the tests compare).
* :func:`every_kth_slices`: the slices of each plane the FID-2.5D uses: indices ``0, k, 2k, ...`` along
  axis 2 (XY), 1 (XZ) and 0 (YZ), ``k = 4``.
* :func:`mean_rank`: the leaderboard aggregation, the mean over metrics of each entry's rank (ties share
  the average rank).

MAISI 2.5D FID (``Project-MONAI/tutorials``, ``generation/maisi/scripts/compute_fid_2-5d_ct.py``):

* :func:`centre_slices`: the centre fraction of each axis, ``int((1 - r) / 2 * n) : int((1 + r) / 2 * n)``.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

__all__ = ["percentile_scale", "vlm3d_paired", "ssim_skimage_default", "every_kth_slices", "centre_slices",
           "plane_slices", "slice_layout", "SLICE_PROTOCOLS", "mean_rank", "medmetric_mmd", "MEDMETRIC_SIGMA_RATIOS", "VLM3D_PLANE_AXES", "MAISI_PLANE_AXES"]

#: VLM3D's planes and the volume axis each one is cut along (``np.take(volume, i, axis)``).
VLM3D_PLANE_AXES: dict[str, int] = {"XY": 2, "XZ": 1, "YZ": 0}
#: MAISI's planes, in its order: XY slices along the last axis, YZ along the first, ZX along the second.
MAISI_PLANE_AXES: dict[str, int] = {"XY": 2, "YZ": 0, "ZX": 1}


def percentile_scale(volume, lo_q: float = 0.5, hi_q: float = 99.5) -> np.ndarray:
    """Clip to the ``[lo_q, hi_q]`` percentiles of ``volume`` itself and scale to [0, 1] (float32).

    A range (``hi - lo``) under 1e-6 returns zeros, as the VLM3D scorer does.
    """
    v = np.asarray(volume, dtype=np.float32)
    lo, hi = np.percentile(v, lo_q), np.percentile(v, hi_q)
    if hi - lo < 1e-6:
        return np.zeros_like(v)
    return np.clip((v - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def _box_mean_valid(v: np.ndarray, k: int) -> np.ndarray:
    """Mean over every ``k``-wide box that lies inside ``v`` (valid mode, all axes), float64."""
    out = np.asarray(v, dtype=np.float64)
    for axis in range(out.ndim):
        c = np.cumsum(out, axis=axis)
        zero = np.zeros_like(np.take(c, [0], axis=axis))
        c = np.concatenate([zero, c], axis=axis)
        n = out.shape[axis]
        out = (np.take(c, range(k, n + 1), axis=axis) - np.take(c, range(0, n - k + 1), axis=axis)) / k
    return out


def ssim_skimage_default(x, y, *, data_range: float = 1.0, win_size: int = 7, k1: float = 0.01,
                         k2: float = 0.03) -> float:
    """SSIM with scikit-image's defaults (box window, sample covariance, valid-region mean), any dimension."""
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"ssim: shapes differ, {a.shape} vs {b.shape}")
    if min(a.shape) < win_size:
        raise ValueError(f"ssim: every side must be >= win_size {win_size}, got shape {a.shape}")
    n_win = win_size ** a.ndim
    cov_norm = n_win / (n_win - 1)
    ux, uy = _box_mean_valid(a, win_size), _box_mean_valid(b, win_size)
    vx = cov_norm * (_box_mean_valid(a * a, win_size) - ux * ux)
    vy = cov_norm * (_box_mean_valid(b * b, win_size) - uy * uy)
    vxy = cov_norm * (_box_mean_valid(a * b, win_size) - ux * uy)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux ** 2 + uy ** 2 + c1) * (vx + vy + c2))
    return float(s.mean())


def vlm3d_paired(real, fake) -> dict[str, float]:
    """VLM3D's per-pair MSE, PSNR (dB) and SSIM after :func:`percentile_scale` of each volume.

    Shapes must match (the scorer's linear-zoom fallback for mismatched shapes is not reproduced).
    """
    r, f = np.asarray(real), np.asarray(fake)
    if r.shape != f.shape:
        raise ValueError(f"vlm3d_paired: shapes differ ({r.shape} vs {f.shape}); resample the generated volume "
                         "onto the reference grid first")
    rn, fn = percentile_scale(r).astype(np.float64), percentile_scale(f).astype(np.float64)
    mse = float(np.mean((rn - fn) ** 2))
    psnr = math.inf if mse == 0 else float(10.0 * np.log10(1.0 / mse))
    return {"MSE": mse, "PSNR": psnr, "SSIM": ssim_skimage_default(rn, fn, data_range=1.0)}


def every_kth_slices(n: int, k: int = 4) -> list[int]:
    """Slice indices ``0, k, 2k, ... < n`` (VLM3D: ``k = 4``)."""
    if k < 1:
        raise ValueError(f"every_kth_slices: k must be >= 1, got {k}")
    return list(range(0, int(n), int(k)))


def centre_slices(n: int, ratio: float = 0.4, step: int = 1) -> list[int]:
    """MAISI's centre-slice rule: ``range(int((1 - ratio) / 2 * n), int((1 + ratio) / 2 * n), step)``."""
    if not 0 < ratio <= 1:
        raise ValueError(f"centre_slices: ratio must be in (0, 1], got {ratio}")
    return list(range(int((1.0 - ratio) / 2.0 * n), int((1.0 + ratio) / 2.0 * n), int(step)))


def plane_slices(shape: Sequence[int], rule: str, *, planes: Mapping[str, int], k: int = 4,
                 ratio: float = 0.4) -> dict[str, list[int]]:
    """Per plane, the slice indices along its axis: ``rule`` is ``"every_kth"`` or ``"centre"``."""
    if rule == "every_kth":
        return {p: every_kth_slices(shape[a], k) for p, a in planes.items()}
    if rule == "centre":
        return {p: centre_slices(shape[a], ratio) for p, a in planes.items()}
    raise ValueError(f"slice rule must be 'every_kth' or 'centre', got {rule!r}")


def mean_rank(scores: Mapping[str, Mapping[str, float]], higher_is_better: Mapping[str, bool]) -> dict[str, float]:
    """Mean over metrics of each entry's rank (1 = best; ties get the average of their ranks).

    Args:
        scores: ``entry -> {metric -> value}``; every entry must have every metric of ``higher_is_better``.
        higher_is_better: ``metric -> direction`` (VLM3D: SSIM and PSNR higher, MSE and FID-2.5D lower).
    """
    entries = sorted(scores)
    ranks = {e: [] for e in entries}
    for metric, higher in higher_is_better.items():
        vals = np.array([float(scores[e][metric]) for e in entries])
        key = -vals if higher else vals
        order = np.argsort(key, kind="stable")
        r = np.empty(len(entries))
        r[order] = np.arange(1, len(entries) + 1, dtype=float)
        for v in np.unique(key):  # average ranks over ties
            tie = key == v
            r[tie] = r[tie].mean()
        for e, ri in zip(entries, r):
            ranks[e].append(float(ri))
    return {e: float(np.mean(rs)) for e, rs in ranks.items()}


#: The slice sampling of each published 2.5D FID: planes (name -> volume axis), selection rule and its
#: parameter, the isotropic spacing the volume is resampled to first (None: as given) and the per-slice
#: feature width. Shared by the extractors (which lay out features plane by plane, slice by slice) and
#: the ``fid_2p5d`` metric (which cuts them back into per-plane slice sets).
SLICE_PROTOCOLS: dict[str, dict] = {
    "vlm3d": {"planes": VLM3D_PLANE_AXES, "rule": "every_kth", "k": 4, "ratio": 1.0, "spacing_mm": None,
              "feature_dim": 512},
    "maisi": {"planes": MAISI_PLANE_AXES, "rule": "centre", "k": 1, "ratio": 0.4, "spacing_mm": 1.0,
              "feature_dim": 2048},
}


def slice_layout(protocol: str, shape: Sequence[int], voxel_size: float) -> dict[str, list[int]]:
    """Per plane, the slice indices ``protocol`` takes of a volume of ``shape`` at ``voxel_size`` mm (after its
    resampling: each side becomes ``round(side * voxel_size / spacing_mm)``)."""
    p = SLICE_PROTOCOLS[protocol]
    if p["spacing_mm"] is not None:
        shape = [max(1, int(round(s * voxel_size / p["spacing_mm"]))) for s in shape]
    return plane_slices(shape, p["rule"], planes=p["planes"], k=p["k"], ratio=p["ratio"])


#: medmetric 0.1.1's default bandwidth bank: the median-heuristic sigma times these ratios, equal weights.
MEDMETRIC_SIGMA_RATIOS: tuple[float, ...] = (1 / 8, 1 / 4, 1 / 2, 1.0, 2.0, 4.0, 8.0)


def medmetric_mmd(fake, real, *, ratios: Sequence[float] = MEDMETRIC_SIGMA_RATIOS, squared: bool = False) -> float:
    """medmetric 0.1.1's default ``MMD()(fake, real)``: unbiased MMD² of an equal-weight mixture of Gaussian
    kernels ``exp(-d² / (2 sigma_l²))``, ``sigma_l = sigma0 * ratio_l``, ``sigma0`` the *lower* median (torch's
    ``median`` of an even count) of the pairwise Euclidean distances of the pooled set ``[fake; real]``; clamped at
    0 and square-rooted (``squared=False``)."""
    x, y = np.asarray(fake, dtype=np.float64), np.asarray(real, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1] or min(len(x), len(y)) < 2:
        raise ValueError(f"medmetric_mmd: need (m, F) and (n, F) features with m, n >= 2, got {x.shape}, {y.shape}")
    z = np.concatenate([x, y])

    def sqdist(a, b):
        return np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T, 0.0)

    iu = np.triu_indices(len(z), k=1)
    d = np.sort(np.sqrt(sqdist(z, z)[iu]))
    sigma0 = max(float(d[(len(d) - 1) // 2]), 1e-12)
    sig2 = 2.0 * (sigma0 * np.asarray(ratios, dtype=np.float64)) ** 2

    def gram(a, b):
        return np.mean(np.exp(-sqdist(a, b)[None] / sig2[:, None, None]), axis=0)

    kxx, kyy, kxy = gram(x, x), gram(y, y), gram(x, y)
    m, n = len(x), len(y)
    mmd2 = ((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
            - 2.0 * kxy.mean())
    mmd2 = max(float(mmd2), 0.0)
    return mmd2 if squared else float(np.sqrt(mmd2))
