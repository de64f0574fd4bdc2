"""KID: unbiased polynomial-kernel MMD² on extractor features (Bińkowski et al. 2018)."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from metrics.base import EvalSets, FeatureMetric, MetricResult
from metrics.functional.bootstrap import BC, Interval, bootstrap_ci_two_sample
from metrics.functional.kernel import kid, mmd2_from_kernel_indices, polynomial_kernel

__all__ = ["KID"]


KERNEL_CI_RESAMPLING = ("full-set unbiased MMD², generated and reference resampled independently "
                        "(copies of one item never paired)")


def kernel_bootstrap_ci(x: np.ndarray, y: np.ndarray, kernel, *, n_boot: int, seed: int,
                        estimate: float | None = None) -> Interval:
    """Two-sample bootstrap CI of the unbiased MMD² for a kernel ``kernel(a, b)``.

    The kernel matrices are computed once; each resample is an index operation, and copies of the
    same item are not paired with each other (see :func:`mmd2_from_kernel_indices`). With
    ``estimate`` (the reported value): the bias-corrected percentile interval (BC, Efron 1987)
    containing it; without: the percentile interval.
    """
    kxx, kyy, kxy = kernel(x, x), kernel(y, y), kernel(x, y)
    return bootstrap_ci_two_sample(lambda a, b: mmd2_from_kernel_indices(kxx, kyy, kxy, a, b), x.shape[0],
                                   y.shape[0], n_boot=n_boot, seed=seed, estimate=estimate)


class KID(FeatureMetric):
    """Kernel Inception Distance on 3D features (lower is better; ≈ 0, possibly negative, for a match).

    * value: mean over ``n_subsets`` random subsets of the unbiased MMD² with the kernel
      ``(x·y/F + 1)^3`` (torch-fidelity convention); floor: the same for floor vs reference.
    * CI (value and floor): two-sample bootstrap of the full-set unbiased MMD² (pairs of bootstrap
      copies of one item excluded), bias-corrected percentile interval (BC, Efron 1987) around the
      value, extended to contain it. The subset std (torch-fidelity's ``kid_std``) is in
      ``details["subset_std"]``; it is not a CI of the mean and is 0 when a subset holds a whole set.

    Args:
        extractor: feature extractor name.
        subset_size: items per subset (clipped to the set sizes; the used size is in details).
        n_subsets: number of subsets.
        n_boot: bootstrap resamples.
    """

    name: ClassVar[str] = "kid"
    higher_is_better: ClassVar[bool] = False
    description: ClassVar[str] = "Kernel distance (unbiased polynomial MMD², KID) of extractor features"

    def __init__(self, *, extractor: str = "deepbet", subset_size: int = 1000, n_subsets: int = 100,
                 n_boot: int = 200):
        self.extractor = str(extractor)
        self.subset_size = int(subset_size)
        self.n_subsets = int(n_subsets)
        self.n_boot = int(n_boot)

    def config(self) -> dict:
        return {"extractor": self.extractor, "subset_size": self.subset_size, "n_subsets": self.n_subsets,
                "n_boot": self.n_boot, "kernel": "polynomial degree=3 gamma=1/F coef0=1",
                "ci": f"{BC}; {KERNEL_CI_RESAMPLING}, 95%"}

    def compute(self, sets: EvalSets, *, seed: int) -> MetricResult:
        g, r, f, dim = self.feature_sets(sets, "generated", "reference", "floor")
        res = kid(g, r, subset_size=self.subset_size, n_subsets=self.n_subsets, seed=seed)
        fres = kid(f, r, subset_size=self.subset_size, n_subsets=self.n_subsets, seed=seed)
        ci = kernel_bootstrap_ci(g, r, polynomial_kernel, n_boot=self.n_boot, seed=seed, estimate=res.mean)
        fci = kernel_bootstrap_ci(f, r, polynomial_kernel, n_boot=self.n_boot, seed=seed, estimate=fres.mean)
        details = {"extractor": self.extractor, "feature_dim": dim, "subset_size": res.subset_size,
                   "n_subsets": self.n_subsets, "subset_std": res.std, "floor_subset_std": fres.std,
                   "n_reference": int(r.shape[0]), "n_floor": int(f.shape[0]), **ci.details(KERNEL_CI_RESAMPLING)}
        return MetricResult(value=res.mean, higher_is_better=False, n=int(g.shape[0]), ci_low=ci.low,
                            ci_high=ci.high, floor=fres.mean, floor_ci=list(fci), warnings=[], details=details)
