"""FID-style Fréchet distance on 3D feature extractors (Heusel et al. 2017; Chong & Forsyth 2020).

In 3D medical imaging the "Inception" network is replaced by a 3D extractor (deepbet bottleneck,
MedicalNet, ...), so the values are only comparable at equal extractor *and* equal N (Pinaya et al.
2022 report MedicalNet FIDs of order 1e-2, not comparable with Inception FIDs).
"""

from __future__ import annotations

import logging
from typing import ClassVar

import numpy as np

from metrics.base import EvalSets, FeatureMetric, MetricResult, get_features, small_n_warning
from metrics.functional.bootstrap import bootstrap_ci_two_sample
from metrics.functional.frechet import frechet_distance_from_features, frechet_distance_infinity

log = logging.getLogger("braingenbench.metrics")

__all__ = ["FID", "get_features", "fd_bootstrap_ci"]

FD_CI_METHOD = ("two-sample percentile bootstrap (generated and reference resampled independently), "
                "shifted by the bootstrap bias estimate, clipped at 0")


def fd_bootstrap_ci(x: np.ndarray, y: np.ndarray, *, n_boot: int, seed: int) -> tuple[float, float, float]:
    """Bias-shifted two-sample percentile bootstrap CI of ``FD(x, y)``.

    Resampling with replacement duplicates items, which lowers the effective sample size and raises
    the FD by roughly its small-N bias (at N=60, F=24 the whole percentile interval lies above the
    value). The percentile interval is therefore shifted by the bootstrap bias estimate
    ``mean(FD*) - FD`` (Efron & Tibshirani 1993, ch. 10) and clipped at 0.

    Returns:
        ``(ci_low, ci_high, bias)``.
    """
    value = frechet_distance_from_features(x, y)
    boot: list[float] = []

    def stat(a: np.ndarray, b: np.ndarray) -> float:
        v = frechet_distance_from_features(x[a], y[b])
        boot.append(v)
        return v

    lo, hi = bootstrap_ci_two_sample(stat, x.shape[0], y.shape[0], n_boot=n_boot, seed=seed)
    finite = np.asarray(boot, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return lo, hi, float("nan")
    bias = float(finite.mean() - value)
    return max(lo - bias, 0.0), max(hi - bias, 0.0), bias


class FID(FeatureMetric):
    """Fréchet distance between generated and reference features (lower is better).

    * value: ``FD(generated, reference)``; floor: ``FD(floor, reference)`` (real vs real at equal N).
    * CI: seeded two-sample percentile bootstrap, generated and reference resampled independently,
      shifted by the bootstrap bias estimate (see :func:`fd_bootstrap_ci`; the raw shift is in
      ``details["bootstrap_bias"]``).
    * details: extractor, feature dimension, set sizes, floor CI, and with ``infinity=True`` the
      FD∞ (Chong & Forsyth 2020) of value and floor.
    * warnings: N below the feature dimension (rank-deficient covariances, upward bias).

    Args:
        extractor: feature extractor name (as registered with the runner).
        n_boot: bootstrap resamples for the CIs.
        infinity: also compute FD∞ (extrapolation of FD(N) = a + b/N, dgm-eval defaults).
    """

    name: ClassVar[str] = "fid"
    higher_is_better: ClassVar[bool] = False
    description: ClassVar[str] = "Fréchet distance of Gaussian fits of extractor features (FID), vs caption-matched reference"

    def __init__(self, *, extractor: str = "deepbet", n_boot: int = 200, infinity: bool = False):
        self.extractor = str(extractor)
        self.n_boot = int(n_boot)
        self.infinity = bool(infinity)

    def config(self) -> dict:
        return {"extractor": self.extractor, "n_boot": self.n_boot, "infinity": self.infinity,
                "covariance": "unbiased (ddof=1)", "ci": FD_CI_METHOD + ", 95%"}

    def compute(self, sets: EvalSets, *, seed: int) -> MetricResult:
        g, r, f, dim = self.feature_sets(sets, "generated", "reference", "floor")
        warnings = small_n_warning(min(g.shape[0], r.shape[0]), dim, f"FID[{self.extractor}]")

        value = frechet_distance_from_features(g, r)
        floor = frechet_distance_from_features(f, r)
        lo, hi, bias = fd_bootstrap_ci(g, r, n_boot=self.n_boot, seed=seed)
        flo, fhi, _ = fd_bootstrap_ci(f, r, n_boot=self.n_boot, seed=seed)
        details = {"extractor": self.extractor, "feature_dim": dim, "n_generated": int(g.shape[0]),
                   "n_reference": int(r.shape[0]), "n_floor": int(f.shape[0]), "floor_ci": [flo, fhi],
                   "bootstrap_bias": bias, "ci_method": FD_CI_METHOD}
        if self.infinity:
            try:
                details["fd_infinity"] = frechet_distance_infinity(g, r, seed=seed)
                details["floor_fd_infinity"] = frechet_distance_infinity(f, r, seed=seed)
            except ValueError as e:
                msg = f"FID[{self.extractor}]: FD-infinity not computed: {e}"
                log.warning(msg)
                warnings.append(msg)
                details["fd_infinity"] = details["floor_fd_infinity"] = None
        return MetricResult(value=value, higher_is_better=False, n=int(g.shape[0]), ci_low=lo, ci_high=hi,
                            floor=floor, warnings=warnings, details=details)
