"""Precision / recall / density / coverage on extractor features (Naeem et al. 2020)."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from metrics.base import EvalSets, FeatureMetric, MetricResult
from metrics.functional.bootstrap import BC_SHIFTED, bootstrap_ci_two_sample
from metrics.functional.neighbours import pairwise_distances
from metrics.functional.prdc import PRDC_KEYS, prdc_from_distances

__all__ = ["PRDC"]


def _prdc_with_ci(real: np.ndarray, fake: np.ndarray, *, k: int, n_boot: int, seed: int,
                  d_rr: np.ndarray | None = None):
    """PRDC values and per-key bootstrap CIs (real and fake resampled independently).

    A resample holds about 63 % distinct items, so its k-NN balls and hence its PRDC are shifted
    (at N=300 every resample's precision can lie below the value); the interval is therefore the
    bias-corrected percentile interval (BC) of the resamples shifted by the bootstrap bias, extended
    to contain the value (:func:`metrics.functional.bootstrap.bootstrap_interval`) and cut to the
    statistic's range ([0, 1]; density >= 0).

    The four statistics of one resample are computed together and cached, so the four
    :func:`bootstrap_ci_two_sample` calls (same seed, hence same resamples) cost one pass.
    ``d_rr``: the real-real distances, when already computed.
    """
    d_rr = pairwise_distances(real) if d_rr is None else d_rr
    d_ff, d_rf = pairwise_distances(fake), pairwise_distances(real, fake)
    values = prdc_from_distances(d_rr, d_ff, d_rf, k=k)
    cache: dict[bytes, dict[str, float]] = {}

    def stats(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
        key = a.tobytes() + b"|" + b.tobytes()
        if key not in cache:
            cache[key] = prdc_from_distances(d_rr, d_ff, d_rf, k=k, idx_real=a, idx_fake=b)
        return cache[key]

    cis = {name: bootstrap_ci_two_sample(lambda a, b, name=name: stats(a, b)[name], real.shape[0], fake.shape[0],
                                         n_boot=n_boot, seed=seed, estimate=values[name], shift_bias=True
                                         ).clipped(0.0, None if name == "density" else 1.0) for name in PRDC_KEYS}
    return values, cis


class PRDC(FeatureMetric):
    """Precision, recall, density and coverage of generated vs reference features (higher is better).

    Returns four results keyed ``"precision"``, ``"recall"``, ``"density"``, ``"coverage"``; each
    floor is the same statistic with the floor set in place of the generated set. CIs (value and
    floor, ``floor_ci``): two-sample bootstrap, bias-corrected percentile interval (BC, Efron 1987)
    of the resamples shifted by the bootstrap bias, extended to contain the estimate; k-NN radii
    never count a bootstrap copy of an item as its neighbour.

    Args:
        extractor: feature extractor name.
        k: nearest-neighbour rank of the ball radii (Naeem et al. 2020 use 5).
        n_boot: bootstrap resamples.
    """

    sub_axes: ClassVar[dict[str, str]] = {"recall": "diversity", "coverage": "diversity"}
    name: ClassVar[str] = "prdc"
    higher_is_better: ClassVar[bool] = True
    description: ClassVar[str] = "Precision/recall/density/coverage (k-NN manifolds) of extractor features"

    def __init__(self, *, extractor: str = "deepbet", k: int = 5, n_boot: int = 200):
        self.extractor = str(extractor)
        self.k = int(k)
        self.n_boot = int(n_boot)

    def config(self) -> dict:
        return {"extractor": self.extractor, "k": self.k, "n_boot": self.n_boot, "distance": "euclidean",
                "ci": f"{BC_SHIFTED}; two-sample, 95%"}

    def compute(self, sets: EvalSets, *, seed: int) -> dict[str, MetricResult]:
        g, r, f, dim = self.feature_sets(sets, "generated", "reference", "floor")
        d_rr = pairwise_distances(r)  # shared by value and floor
        vals, cis = _prdc_with_ci(r, g, k=self.k, n_boot=self.n_boot, seed=seed, d_rr=d_rr)
        fvals, fcis = _prdc_with_ci(r, f, k=self.k, n_boot=self.n_boot, seed=seed, d_rr=d_rr)
        out = {}
        for key in PRDC_KEYS:
            out[key] = MetricResult(
                value=vals[key], higher_is_better=True, n=int(g.shape[0]), ci_low=cis[key][0], ci_high=cis[key][1],
                floor=fvals[key], floor_ci=list(fcis[key]), warnings=[],
                details={"extractor": self.extractor, "feature_dim": dim, "k": self.k,
                         "n_reference": int(r.shape[0]), "n_floor": int(f.shape[0]),
                         **cis[key].details("reference and generated resampled independently")})
        return out
