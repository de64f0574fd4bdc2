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
from metrics.functional.bootstrap import BC_SHIFTED, Interval, bootstrap_ci_two_sample
from metrics.functional.frechet import frechet_distance_from_features, frechet_distance_infinity

log = logging.getLogger("braingenbench.metrics")

__all__ = ["FID", "get_features", "fd_bootstrap_ci"]

FD_CI_RESAMPLING = "generated and reference resampled independently; lower end clipped at 0"
FD_CI_METHOD = f"{BC_SHIFTED}; {FD_CI_RESAMPLING}"


def fd_bootstrap_ci(x: np.ndarray, y: np.ndarray, *, n_boot: int, seed: int,
                    estimate: float | None = None) -> Interval:
    """Two-sample bootstrap CI of ``FD(x, y)``: BC of the bias-shifted resamples, containing the estimate.

    Resampling with replacement duplicates items, which lowers the effective sample size and raises
    the FD by roughly its small-N bias (at N=60, F=24 the whole percentile interval lies above the
    value, so plain BC would collapse onto ``[FD, min FD*]``). The resamples are therefore shifted by
    the bootstrap bias estimate ``mean(FD*) - FD`` (Efron & Tibshirani 1993, ch. 10), the
    bias-corrected percentile interval (BC, Efron 1987) is taken of the shifted resamples and
    extended to contain ``FD`` if needed (:func:`metrics.functional.bootstrap.bootstrap_interval`),
    and the lower end is clipped at 0.

    Args:
        x, y: ``(N, F)`` and ``(M, F)`` features.
        n_boot: resamples.
        seed: RNG seed.
        estimate: ``FD(x, y)`` when already computed.

    Returns:
        The :class:`~metrics.functional.bootstrap.Interval`; its ``bias`` is the raw bootstrap bias.
    """
    value = frechet_distance_from_features(x, y) if estimate is None else float(estimate)
    ci = bootstrap_ci_two_sample(lambda a, b: frechet_distance_from_features(x[a], y[b]), x.shape[0], y.shape[0],
                                 n_boot=n_boot, seed=seed, estimate=value, shift_bias=True)
    return ci.clipped(lower=0.0)


class FID(FeatureMetric):
    """Fréchet distance between generated and reference features (lower is better).

    * value: ``FD(generated, reference)``; floor: ``FD(floor, reference)`` (real vs real at equal N).
    * CI (value and floor): seeded two-sample bootstrap, generated (floor) and reference resampled
      independently, bias-corrected percentile interval (BC) of the resamples shifted by the
      bootstrap bias, containing the value (see :func:`fd_bootstrap_ci`; the raw bias is in
      ``details["bootstrap_bias"]``).
    * details: extractor, feature dimension, set sizes, and with ``infinity=True`` the
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
        ci = fd_bootstrap_ci(g, r, n_boot=self.n_boot, seed=seed, estimate=value)
        fci = fd_bootstrap_ci(f, r, n_boot=self.n_boot, seed=seed, estimate=floor)
        details = {"extractor": self.extractor, "feature_dim": dim, "n_generated": int(g.shape[0]),
                   "n_reference": int(r.shape[0]), "n_floor": int(f.shape[0]), **ci.details(FD_CI_RESAMPLING)}
        if self.infinity:
            try:
                details["fd_infinity"] = frechet_distance_infinity(g, r, seed=seed)
                details["floor_fd_infinity"] = frechet_distance_infinity(f, r, seed=seed)
            except ValueError as e:
                msg = f"FID[{self.extractor}]: FD-infinity not computed: {e}"
                log.warning(msg)
                warnings.append(msg)
                details["fd_infinity"] = details["floor_fd_infinity"] = None
        return MetricResult(value=value, higher_is_better=False, n=int(g.shape[0]), ci_low=ci.low, ci_high=ci.high,
                            floor=floor, floor_ci=list(fci), warnings=warnings, details=details)
