"""Seeded percentile bootstrap confidence intervals (Efron & Tibshirani 1993).

One-sample / paired: resample the indices of ``n`` paired items with replacement.
Two-sample: resample each set independently (e.g. generated and reference features for FID).
"""

from __future__ import annotations

from typing import Callable

import numpy as np


def bootstrap_ci(stat: Callable[[np.ndarray], float], n: int, *, n_boot: int = 200, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile CI of ``stat(idx)`` over ``n_boot`` resamples ``idx`` of ``range(n)``.

    Args:
        stat: statistic of an index array (length ``n``, drawn with replacement).
        n: number of items.
        n_boot: resamples.
        seed: RNG seed; the same seed gives the same interval.
        level: coverage, e.g. 0.95.
    """
    if n < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    vals = np.array([stat(rng.integers(0, n, n)) for _ in range(n_boot)], dtype=np.float64)
    vals = vals[np.isfinite(vals)]
    if vals.size == 0:
        return float("nan"), float("nan")
    a = (1.0 - level) / 2.0
    return float(np.quantile(vals, a)), float(np.quantile(vals, 1.0 - a))


def bootstrap_ci_two_sample(stat: Callable[[np.ndarray, np.ndarray], float], n_a: int, n_b: int, *,
                            n_boot: int = 200, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile CI of ``stat(idx_a, idx_b)`` with both sets resampled independently."""
    if n_a < 2 or n_b < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    vals = np.array([stat(rng.integers(0, n_a, n_a), rng.integers(0, n_b, n_b)) for _ in range(n_boot)],
                    dtype=np.float64)
    vals = vals[np.isfinite(vals)]
    if vals.size == 0:
        return float("nan"), float("nan")
    a = (1.0 - level) / 2.0
    return float(np.quantile(vals, a)), float(np.quantile(vals, 1.0 - a))


def mean_ci(values: np.ndarray, *, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Bootstrap CI of the mean of per-item values (vectorised)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, (n_boot, v.size))].mean(axis=1)
    a = (1.0 - level) / 2.0
    return float(np.quantile(means, a)), float(np.quantile(means, 1.0 - a))
