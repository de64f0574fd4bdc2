"""Memorisation (training-data copying) check in feature space.

Idea (Meehan et al. 2020, "A Non-Parametric Test to Detect Data-Copying in Generative Models",
AISTATS; as used in dgm-eval, Stein et al. 2023): a generator that copies its training data puts
samples *closer to the training set than independent real data are*. Held-out real volumes (the
reference and floor sets, which must not be in the training set) calibrate what "close" means.

Definitions, with ``d(v) = min_t |φ(v) - φ(t)|`` the distance from a volume's features to its
nearest training volume's features. The held-out real set is the **reference** (the cohort's test
split, never in training; the runner's matched "floor" subjects come from the training split and
cannot calibrate this):

* threshold ``τ = quantile_q({d(r) : r ∈ reference})`` — the distance below which only a share
  ``q`` (``quantile``, default 5 %) of held-out real volumes fall;
* **value** = share of generated volumes with ``d(g) < τ``. A generator that samples the data
  distribution without copying gives ≈ ``q`` (or less); copying drives it towards 1. Lower is better.
* **floor** = the same share for held-out real data, cross-fitted: the reference is split in two
  seeded halves, ``τ`` is set on one half and the share measured on the other (both ways, averaged):
  ≈ ``q`` up to sampling noise — the nominal rate.
* near-exact copies: share of generated volumes with ``d(g) < copy_rel_eps · median d(reference)``.
* ``c_t_zscore``: Meehan et al.'s Mann-Whitney ``Z_U`` between the ``d(g)`` and the held-out
  ``d(reference)`` distributions, in its global (single-cell) form; ``Z_U ≪ 0`` (e.g. < -3) signals
  data copying, ``Z_U ≫ 0`` under-fitting.

The CI resamples the generated and reference sets independently (the threshold moves with the
reference resample); the floor's CI resamples the reference and recomputes the cross-fitted share on
the same halves (positions). Resamples with duplicated items shift these shares (a duplicate on both
sides of a threshold), so both intervals are the bias-corrected percentile interval (BC, Efron 1987)
of the resamples shifted by the bootstrap bias, extended to contain the estimate and cut to [0, 1].
"""

from __future__ import annotations

import logging
from typing import ClassVar

import numpy as np

from metrics.base import EvalSets, FeatureMetric, Input, MetricResult
from metrics.functional.bootstrap import BC_SHIFTED, bootstrap_ci, bootstrap_ci_two_sample
from metrics.functional.neighbours import nearest_neighbours

log = logging.getLogger("braingenbench.metrics")

__all__ = ["Memorization", "mann_whitney_z"]


def mann_whitney_z(d_query: np.ndarray, d_test: np.ndarray) -> float:
    """Meehan et al. (2020) ``Z_U``: standardised Mann-Whitney U of query vs held-out distances.

    ``U = #{(i, j): d_query_i > d_test_j} + ½ #{ties}``; ``Z = (U - mn/2) / sqrt(mn(m + n + 1)/12)``.
    Negative when the query samples are closer to the training set than held-out real data.
    """
    a = np.asarray(d_query, dtype=np.float64)
    b = np.asarray(d_test, dtype=np.float64)
    m, n = a.size, b.size
    if m == 0 or n == 0:
        return float("nan")
    from scipy.stats import rankdata

    ranks = rankdata(np.concatenate([a, b]))
    u = ranks[:m].sum() - m * (m + 1) / 2.0
    return float((u - m * n / 2.0) / np.sqrt(m * n * (m + n + 1) / 12.0))


def cross_fitted_share(d_ref: np.ndarray, q: float, half_a: np.ndarray, half_b: np.ndarray) -> float:
    """The memorisation floor: the share of held-out distances of one half below the ``q``-quantile
    of the other half, both ways, averaged (≈ ``q`` for exchangeable real data)."""
    return float(np.mean([np.mean(d_ref[half_b] < np.quantile(d_ref[half_a], q)),
                          np.mean(d_ref[half_a] < np.quantile(d_ref[half_b], q))]))


class Memorization(FeatureMetric):
    """Share of generated volumes closer to a training volume than held-out real volumes are.

    See the module docstring for the exact definitions. Needs ``sets.features(extractor, "train")``.
    details: threshold, nominal rate, per-sample ``nearest_train_index`` / ``nearest_train_distance``,
    the near-copy share (and its real-data floor) and Meehan's ``Z_U`` (and its floor).

    Args:
        extractor: feature extractor name.
        quantile: nominal rate ``q``: the threshold is the ``q``-quantile of held-out NN distances.
        copy_rel_eps: a generated volume is a near-exact copy when its NN distance is below this
            fraction of the median held-out NN distance.
        n_boot: bootstrap resamples.
    """

    axis: ClassVar[str] = "privacy"
    name: ClassVar[str] = "memorization"
    higher_is_better: ClassVar[bool] = False
    inputs: ClassVar[frozenset[Input]] = frozenset({Input.TRAIN})
    description: ClassVar[str] = ("Share of generated volumes closer to a training volume than held-out "
                                  "real volumes typically are (data copying)")

    def __init__(self, *, extractor: str = "deepbet", quantile: float = 0.05, copy_rel_eps: float = 0.1,
                 n_boot: int = 200):
        if not 0.0 < quantile < 1.0:
            raise ValueError(f"quantile must be in (0, 1), got {quantile}")
        if not copy_rel_eps > 0:
            raise ValueError(f"copy_rel_eps must be > 0, got {copy_rel_eps}")
        self.extractor = str(extractor)
        self.quantile = float(quantile)
        self.copy_rel_eps = float(copy_rel_eps)
        self.n_boot = int(n_boot)

    def config(self) -> dict:
        return {"extractor": self.extractor, "quantile": self.quantile, "copy_rel_eps": self.copy_rel_eps,
                "n_boot": self.n_boot, "distance": "euclidean, nearest training sample",
                "threshold": "quantile of held-out reference NN distances",
                "ci": f"{BC_SHIFTED}; two-sample (generated and reference), 95%"}

    def compute(self, sets: EvalSets, *, seed: int) -> MetricResult:
        g, r, t, dim = self.feature_sets(sets, "generated", "reference", "train")
        q = self.quantile
        warnings: list[str] = []
        if r.shape[0] * q < 1.0:
            msg = (f"memorization: the {q:.0%} quantile of {r.shape[0]} held-out distances is an extrapolation "
                   f"below the smallest one; the threshold is coarse (use >= {int(np.ceil(1 / q))} prompts)")
            log.warning(msg)
            warnings.append(msg)

        d_g, i_g = nearest_neighbours(g, t)
        d_r, i_r = nearest_neighbours(r, t)
        if np.median(d_r) == 0:
            raise ValueError("memorization: the reference volumes are themselves in the training set "
                             "(zero distance); the held-out reference must come from another split")
        tau = float(np.quantile(d_r, q))
        value = float(np.mean(d_g < tau))
        half = np.random.default_rng([seed, 7]).permutation(r.shape[0])
        a_idx, b_idx = half[: r.shape[0] // 2], half[r.shape[0] // 2:]
        floor = cross_fitted_share(d_r, q, a_idx, b_idx)
        ci = bootstrap_ci_two_sample(lambda a, b: float(np.mean(d_g[a] < np.quantile(d_r[b], q))),
                                     g.shape[0], r.shape[0], n_boot=self.n_boot, seed=seed, estimate=value,
                                     shift_bias=True).clipped(0.0, 1.0)
        # the floor's interval: resample the reference, split the resample at the same positions
        fci = bootstrap_ci(lambda s: cross_fitted_share(d_r[s], q, a_idx, b_idx), r.shape[0], n_boot=self.n_boot,
                           seed=seed, estimate=floor, shift_bias=True).clipped(0.0, 1.0)
        median_r = float(np.median(d_r))
        copy_eps = self.copy_rel_eps * median_r
        copies = float(np.mean(d_g < copy_eps))
        if copies > 0:
            msg = (f"memorization: {copies:.1%} of generated volumes are near-exact copies of training volumes "
                   f"(feature distance < {copy_eps:.4g}); see details['nearest_train_index']")
            log.warning(msg)
            warnings.append(msg)
        details = {
            "extractor": self.extractor, "feature_dim": dim, "n_train": int(t.shape[0]),
            "nominal_rate": q, "threshold": tau,
            "nearest_train_index": [int(i) for i in i_g],
            "nearest_train_distance": [float(d) for d in d_g],
            "reference_nearest_train_index": [int(i) for i in i_r],
            "reference_nearest_train_distance": [float(d) for d in d_r],
            "median_nn_distance": {"generated": float(np.median(d_g)), "reference": median_r},
            "copy_threshold": copy_eps, "copy_fraction": copies,
            "floor_copy_fraction": float(np.mean(d_r < copy_eps)),
            "c_t_zscore": mann_whitney_z(d_g, d_r),
            "floor_c_t_zscore": mann_whitney_z(d_r[b_idx], d_r[a_idx]),
            **ci.details("generated and reference resampled independently; threshold re-estimated"),
            "floor_method": "cross-fitted halves of the held-out reference",
            "floor_ci_method": f"{fci.method}; reference resampled, halves kept at the same positions",
        }
        return MetricResult(value=value, higher_is_better=False, n=int(g.shape[0]), ci_low=ci.low, ci_high=ci.high,
                            floor=floor, floor_ci=list(fci), warnings=warnings, details=details)
