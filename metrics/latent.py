"""Similarity of generated and reference volumes in a latent space (e.g. the ldm3d autoencoder's).

Three results, each with the real-vs-real floor (floor set in place of the generated set), keyed
as below (the runner records them as ``<metric key>/<key>``):

* ``fd`` — Fréchet distance of the Gaussian fits (Heusel et al. 2017), lower is better;
  its ``details["embedding"]`` holds 2-D PCA coordinates of generated and reference latents.
* ``mmd`` — unbiased Gaussian-kernel MMD² (Gretton et al. 2012), lower is better. The
  bandwidth is the median heuristic on the *reference* set alone, so value, floor and every
  generator share one kernel and stay comparable.
* ``cosine`` — mean cosine similarity of each generated latent to the latent of the real
  volume whose caption prompted it (pairs i ↔ i), higher is better.

Every CI (value and floor) is a seeded bootstrap interval that contains its estimate: bias-corrected
percentile (BC, Efron 1987), of the bias-shifted resamples for the Fréchet distance (see
:func:`metrics.fid.fd_bootstrap_ci`).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from metrics.base import EvalSets, FeatureMetric, MetricResult, small_n_warning
from metrics.fid import FD_CI_RESAMPLING, fd_bootstrap_ci
from metrics.functional.bootstrap import BC, BC_SHIFTED, mean_ci
from metrics.functional.frechet import frechet_distance_from_features
from metrics.functional.kernel import gaussian_kernel, gaussian_mmd2, median_heuristic_bandwidth
from metrics.kid import KERNEL_CI_RESAMPLING, kernel_bootstrap_ci

__all__ = ["LatentSimilarity", "pca_2d", "paired_cosine"]


def paired_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of row ``i`` of ``a`` with row ``i`` of ``b`` (0 where a row is all zeros)."""
    if a.shape != b.shape:
        raise ValueError(f"paired cosine needs equally many caption-matched rows: {a.shape} vs {b.shape}")
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    den = na * nb
    return np.where(den > 0, (a * b).sum(1) / np.where(den > 0, den, 1.0), 0.0)


def pca_2d(*blocks: np.ndarray) -> tuple[list[np.ndarray], list[float]]:
    """Project the union of ``blocks`` on its first two principal components.

    Signs are fixed (largest-magnitude loading positive) so the plot is reproducible.

    Returns:
        (coordinates per block, explained variance ratio of the 2 components).
    """
    z = np.concatenate(blocks, axis=0)
    zc = z - z.mean(axis=0)
    _, s, vt = np.linalg.svd(zc, full_matrices=False)
    comps = vt[:2]
    signs = np.sign(comps[np.arange(comps.shape[0]), np.abs(comps).argmax(axis=1)])
    comps = comps * signs[:, None]
    coords = zc @ comps.T
    if coords.shape[1] < 2:
        coords = np.pad(coords, ((0, 0), (0, 2 - coords.shape[1])))
    var = s ** 2
    ratio = (var[:2] / var.sum()).tolist() if var.sum() > 0 else [0.0, 0.0]
    out, start = [], 0
    for blk in blocks:
        out.append(coords[start:start + blk.shape[0]])
        start += blk.shape[0]
    return out, [float(v) for v in ratio]


class LatentSimilarity(FeatureMetric):
    """Fréchet distance, Gaussian MMD² and paired cosine similarity in a latent feature space.

    Args:
        extractor: name of the latent "extractor" the runner provides (default the ldm3d encoder).
        n_boot: bootstrap resamples.
    """

    name: ClassVar[str] = "latent_similarity"
    higher_is_better: ClassVar[bool] = False  # per-result directions are set on each MetricResult
    description: ClassVar[str] = "Latent-space Fréchet distance, Gaussian MMD² and caption-matched cosine similarity"

    def __init__(self, *, extractor: str = "ldm3d-latent", n_boot: int = 200):
        self.extractor = str(extractor)
        self.n_boot = int(n_boot)

    def config(self) -> dict:
        return {"extractor": self.extractor, "n_boot": self.n_boot,
                "mmd_kernel": "gaussian, bandwidth = median pairwise distance of the reference set",
                "cosine": "raw latents, generated i vs reference i", "embedding": "PCA(2) of generated ∪ reference",
                "ci": f"fd: {BC_SHIFTED}, two-sample; mmd: {BC}, two-sample (copies never paired); "
                      f"cosine: {BC} of the mean over pairs; 95%"}

    def compute(self, sets: EvalSets, *, seed: int) -> dict[str, MetricResult]:
        g, r, f, dim = self.feature_sets(sets, "generated", "reference", "floor")
        n = int(g.shape[0])
        base = {"extractor": self.extractor, "feature_dim": dim, "n_reference": int(r.shape[0]),
                "n_floor": int(f.shape[0])}

        # Fréchet distance
        fd = frechet_distance_from_features(g, r)
        fd_floor = frechet_distance_from_features(f, r)
        ci = fd_bootstrap_ci(g, r, n_boot=self.n_boot, seed=seed, estimate=fd)
        fci = fd_bootstrap_ci(f, r, n_boot=self.n_boot, seed=seed, estimate=fd_floor)
        (eg, er), ratio = pca_2d(g, r)
        res_fd = MetricResult(
            value=fd, higher_is_better=False, n=n, ci_low=ci.low, ci_high=ci.high, floor=fd_floor, floor_ci=list(fci),
            warnings=small_n_warning(min(n, r.shape[0]), dim, f"latent FD[{self.extractor}]"),
            details={**base, **ci.details(FD_CI_RESAMPLING),
                     "embedding": {"generated": eg.tolist(), "reference": er.tolist(),
                                   "method": "pca", "explained_variance": ratio}})

        # Gaussian MMD², one bandwidth for value and floor
        bw = median_heuristic_bandwidth(r, None)
        mmd = gaussian_mmd2(g, r, bandwidth=bw)
        mmd_floor = gaussian_mmd2(f, r, bandwidth=bw)

        def kern(a, b):
            return gaussian_kernel(a, b, bandwidth=bw)

        mci = kernel_bootstrap_ci(g, r, kern, n_boot=self.n_boot, seed=seed, estimate=mmd)
        mfci = kernel_bootstrap_ci(f, r, kern, n_boot=self.n_boot, seed=seed, estimate=mmd_floor)
        res_mmd = MetricResult(value=mmd, higher_is_better=False, n=n, ci_low=mci.low, ci_high=mci.high,
                               floor=mmd_floor, floor_ci=list(mfci),
                               details={**base, "bandwidth": bw, **mci.details(KERNEL_CI_RESAMPLING)})

        # caption-matched cosine similarity
        cos = paired_cosine(g, r)
        cos_floor = paired_cosine(f, r)
        cos_v, cos_f = float(cos.mean()), float(cos_floor.mean())
        cci = mean_ci(cos, n_boot=max(self.n_boot, 1), seed=seed, estimate=cos_v)
        cfci = mean_ci(cos_floor, n_boot=max(self.n_boot, 1), seed=seed, estimate=cos_f)
        res_cos = MetricResult(value=cos_v, higher_is_better=True, n=n, ci_low=cci.low, ci_high=cci.high,
                               floor=cos_f, floor_ci=list(cfci),
                               details={**base, "per_sample": cos.tolist(),
                                        **cci.details("caption-matched pairs resampled")})
        return {"fd": res_fd, "mmd": res_mmd, "cosine": res_cos}
