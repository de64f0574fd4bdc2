"""Kernel two-sample statistics: unbiased MMD² (Gretton et al. 2012), KID (Bińkowski et al. 2018).

Unbiased estimator for ``X`` (n items) and ``Y`` (m items) and kernel ``k``::

    MMD²_u = 1/(n(n-1)) Σ_{i≠j} k(x_i, x_j) + 1/(m(m-1)) Σ_{i≠j} k(y_i, y_j) - 2/(nm) Σ_{i,j} k(x_i, y_j)

It is zero in expectation when both sets come from the same distribution, so single estimates can
be negative. Kernels:

* polynomial (KID; Bińkowski et al. 2018, "Demystifying MMD GANs", ICLR):
  ``k(a, b) = (gamma a·b + coef0)^degree`` with ``degree=3, gamma=1/F, coef0=1``; KID is reported
  as mean and std over random subsets, as torch-fidelity and torchmetrics do.
* Gaussian: ``k(a, b) = exp(-|a - b|² / (2 s²))`` with the bandwidth ``s`` set by the median
  heuristic (Gretton et al. 2012): the median Euclidean distance between distinct items of the
  pooled set ``X ∪ Y``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from metrics.functional.neighbours import as_features, pairwise_distances

log = logging.getLogger("braingenbench.metrics")

__all__ = ["polynomial_kernel", "gaussian_kernel", "median_heuristic_bandwidth", "mmd2_unbiased_from_kernels",
           "mmd2_from_kernel_indices", "polynomial_mmd2", "gaussian_mmd2", "kid", "KIDResult"]


def _pair(x, y) -> tuple[np.ndarray, np.ndarray]:
    x = as_features(x, "x")
    y = as_features(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"feature dimensions differ: {x.shape[1]} vs {y.shape[1]}; use the same extractor")
    if x.shape[0] < 2 or y.shape[0] < 2:
        raise ValueError(f"the unbiased MMD² needs at least 2 samples per set, got {x.shape[0]} and {y.shape[0]}")
    return x, y


def polynomial_kernel(x, y, *, degree: int = 3, gamma: float | None = None, coef0: float = 1.0) -> np.ndarray:
    """``(gamma x·y + coef0)^degree`` for all row pairs; ``gamma`` defaults to ``1/F``."""
    x = as_features(x, "x")
    y = as_features(y, "y")
    if gamma is None:
        gamma = 1.0 / x.shape[1]
    return (gamma * (x @ y.T) + coef0) ** degree


def gaussian_kernel(x, y, *, bandwidth: float) -> np.ndarray:
    """``exp(-|x - y|² / (2 bandwidth²))`` for all row pairs."""
    if not bandwidth > 0:
        raise ValueError(f"bandwidth must be > 0, got {bandwidth}")
    d = pairwise_distances(x, y)
    return np.exp(-(d * d) / (2.0 * bandwidth * bandwidth))


def median_heuristic_bandwidth(x, y=None) -> float:
    """Median Euclidean distance between distinct items of the pooled set ``x ∪ y`` (or of ``x``).

    Falls back to 1.0 (with a warning) when all items coincide.
    """
    z = as_features(x, "x") if y is None else np.concatenate([as_features(x, "x"), as_features(y, "y")], axis=0)
    d = pairwise_distances(z)
    iu = np.triu_indices(z.shape[0], k=1)
    med = float(np.median(d[iu])) if iu[0].size else 0.0
    if not med > 0:
        log.warning("median heuristic: all pooled features coincide; using bandwidth 1.0")
        return 1.0
    return med


def mmd2_unbiased_from_kernels(k_xx: np.ndarray, k_yy: np.ndarray, k_xy: np.ndarray) -> float:
    """Unbiased MMD² from the kernel matrices ``K_xx`` (n×n), ``K_yy`` (m×m), ``K_xy`` (n×m)."""
    n, m = k_xx.shape[0], k_yy.shape[0]
    if n < 2 or m < 2:
        raise ValueError(f"the unbiased MMD² needs at least 2 samples per set, got {n} and {m}")
    sxx = (k_xx.sum() - np.trace(k_xx)) / (n * (n - 1))
    syy = (k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(sxx + syy - 2.0 * k_xy.mean())


def mmd2_from_kernel_indices(k_xx: np.ndarray, k_yy: np.ndarray, k_xy: np.ndarray, idx_x: np.ndarray,
                             idx_y: np.ndarray) -> float:
    """Unbiased MMD² of the multisets ``x[idx_x]`` and ``y[idx_y]`` from full kernel matrices.

    Indices may repeat (bootstrap resamples). Within-set pairs that are copies of the same item
    (``idx_x[i] == idx_x[j]``, which includes ``i == j``) are left out of the within-set means, the
    analogue of excluding the diagonal: otherwise every bootstrap duplicate would add ``k(x, x)``
    and bias the resampled MMD² upwards. With ``idx = arange`` this is
    :func:`mmd2_unbiased_from_kernels`.
    """

    def within(k: np.ndarray, idx: np.ndarray) -> float:
        sub = k[np.ix_(idx, idx)]
        keep = idx[:, None] != idx[None, :]
        cnt = int(keep.sum())
        return float(sub[keep].sum() / cnt) if cnt else float("nan")

    return within(k_xx, idx_x) + within(k_yy, idx_y) - 2.0 * float(k_xy[np.ix_(idx_x, idx_y)].mean())


def polynomial_mmd2(x, y, *, degree: int = 3, gamma: float | None = None, coef0: float = 1.0) -> float:
    """Unbiased MMD² with the KID polynomial kernel on the full sets (one estimate, no subsets)."""
    x, y = _pair(x, y)
    kw = dict(degree=degree, gamma=gamma, coef0=coef0)
    return mmd2_unbiased_from_kernels(polynomial_kernel(x, x, **kw), polynomial_kernel(y, y, **kw),
                                      polynomial_kernel(x, y, **kw))


def gaussian_mmd2(x, y, *, bandwidth: float | None = None) -> float:
    """Unbiased MMD² with a Gaussian kernel; ``bandwidth=None`` uses the median heuristic."""
    x, y = _pair(x, y)
    s = median_heuristic_bandwidth(x, y) if bandwidth is None else float(bandwidth)
    return mmd2_unbiased_from_kernels(gaussian_kernel(x, x, bandwidth=s), gaussian_kernel(y, y, bandwidth=s),
                                      gaussian_kernel(x, y, bandwidth=s))


@dataclass
class KIDResult:
    """KID over random subsets (torch-fidelity style).

    Attributes:
        mean: mean of the per-subset unbiased MMD² values (the KID).
        std: their standard deviation (ddof=0, as torch-fidelity). It measures subset-to-subset
            variability, not the uncertainty of ``mean``; it is 0 when the subsets hold whole sets.
        values: the per-subset values.
        subset_size: the subset size actually used (``min(subset_size, n, m)``).
    """

    mean: float
    std: float
    values: list[float]
    subset_size: int


def kid(x, y, *, subset_size: int = 1000, n_subsets: int = 100, degree: int = 3, gamma: float | None = None,
        coef0: float = 1.0, seed: int = 0) -> KIDResult:
    """Kernel Inception Distance (Bińkowski et al. 2018) on arbitrary features.

    Each of ``n_subsets`` rounds draws ``subset_size`` items of ``x`` and of ``y`` without
    replacement and computes the unbiased polynomial-kernel MMD²; returns their mean and std.

    Args:
        x: ``(N, F)`` features (generated).
        y: ``(M, F)`` features (reference).
        subset_size: items per subset; clipped to ``min(N, M)`` (logged).
        n_subsets: number of subsets.
        degree: polynomial degree.
        gamma: kernel scale, default ``1/F``.
        coef0: kernel offset.
        seed: RNG seed.
    """
    x, y = _pair(x, y)
    n, m = x.shape[0], y.shape[0]
    s = int(subset_size)
    if s > min(n, m):
        log.info("KID: subset_size %d exceeds the set sizes (%d, %d); using %d", s, n, m, min(n, m))
        s = min(n, m)
    if s < 2:
        raise ValueError(f"KID subset_size must be >= 2, got {subset_size}")
    kw = dict(degree=degree, gamma=gamma, coef0=coef0)
    rng = np.random.default_rng(seed)
    precompute = max(n, m) <= 5000
    if precompute:
        kxx, kyy, kxy = polynomial_kernel(x, x, **kw), polynomial_kernel(y, y, **kw), polynomial_kernel(x, y, **kw)
    vals = []
    for _ in range(int(n_subsets)):
        ix = rng.choice(n, s, replace=False)
        iy = rng.choice(m, s, replace=False)
        if precompute:
            vals.append(mmd2_unbiased_from_kernels(kxx[np.ix_(ix, ix)], kyy[np.ix_(iy, iy)], kxy[np.ix_(ix, iy)]))
        else:
            vals.append(polynomial_mmd2(x[ix], y[iy], **kw))
    v = np.asarray(vals)
    return KIDResult(float(v.mean()), float(v.std()), [float(a) for a in v], s)
