"""The statistics of ``bench compare``: paired and independent bootstrap intervals of a change,
bootstrap and normal p-values, and the Holm–Bonferroni step-down (see :mod:`bench.compare`)."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from leaderboards import verdicts

Z95 = 1.959963984540054
N_BOOT = 1000
SEED = 0
ALPHA = 0.05
_f = verdicts.to_float


def _percentile(vals: np.ndarray) -> tuple[float, float] | None:
    vals = vals[np.isfinite(vals)]
    if vals.size < 10:
        return None
    a = (1 - 0.95) / 2
    return float(np.quantile(vals, a)), float(np.quantile(vals, 1 - a))


def _indices(n: int, n_boot: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, (n_boot, n))


def bootstrap_p(deltas: np.ndarray) -> float | None:
    """Two-sided bootstrap p-value of "no change": ``min(1, 2·min(#{d ≤ 0} + 1, #{d ≥ 0} + 1) / (B + 1))``
    over the finite bootstrap deltas (None when fewer than 10)."""
    d = np.asarray(deltas, dtype=np.float64)
    d = d[np.isfinite(d)]
    if d.size < 10:
        return None
    k = min(int(np.sum(d <= 0)), int(np.sum(d >= 0)))
    return min(1.0, 2.0 * (k + 1) / (d.size + 1))


def normal_p(delta: float, se: float) -> float:
    """Two-sided normal p-value ``2·(1 − Φ(|delta|/se))`` (0 or 1 when ``se`` is 0)."""
    if se <= 0:
        return 1.0 if delta == 0 else 0.0
    return float(math.erfc(abs(delta) / se / math.sqrt(2.0)))


def holm(p_values: Sequence[float | None], alpha: float = ALPHA) -> tuple[list[bool], list[float | None]]:
    """Holm–Bonferroni step-down (Holm 1979) over the non-None p-values.

    Sorted ascending, ``p_(i)`` (i = 1..m) is rejected while ``p_(i) ≤ α / (m − i + 1)``; the first
    failure stops. Adjusted p-values: ``max_{j ≤ i} min(1, (m − j + 1)·p_(j))``; rejected exactly when
    the adjusted p is ≤ α.

    Returns:
        ``(reject, adjusted)`` in the input order (False / None for None inputs).
    """
    idx = [i for i, p in enumerate(p_values) if p is not None]
    m = len(idx)
    order = sorted(idx, key=lambda i: (p_values[i], i))
    reject = [False] * len(p_values)
    adjusted: list[float | None] = [None] * len(p_values)
    running, stopped = 0.0, False
    for rank, i in enumerate(order):
        p = float(p_values[i])
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
        if not stopped and p <= alpha / (m - rank):
            reject[i] = True
        else:
            stopped = True
    return reject, adjusted


def paired_mean_ci(base: np.ndarray, head: np.ndarray, *, n_boot: int = N_BOOT, seed: int = SEED
                   ) -> tuple[float, float] | None:
    """Percentile CI of ``mean(head - base)`` over prompts resampled with replacement."""
    diff = head - base
    if diff.size < 2 or not np.all(np.isfinite(diff)):
        return None
    means = diff[_indices(diff.size, n_boot, seed)].mean(axis=1)
    return _percentile(means)


def _boot_fd(gen_base: np.ndarray, gen_head: np.ndarray, ref: np.ndarray, *, n_boot: int, seed: int
             ) -> tuple[float, float, np.ndarray, np.ndarray] | None:
    """``(FD base, FD head, bootstrap FD base, bootstrap FD head)`` on the same resampled prompts."""
    from metrics.functional.frechet import frechet_distance_from_features as fd

    n = ref.shape[0]
    if n < 3 or gen_base.shape != gen_head.shape or gen_base.shape[0] != n:
        return None
    bb, bh = np.empty(n_boot), np.empty(n_boot)
    for b, idx in enumerate(_indices(n, n_boot, seed)):
        try:
            bb[b], bh[b] = fd(gen_base[idx], ref[idx]), fd(gen_head[idx], ref[idx])
        except ValueError:
            bb[b] = bh[b] = np.nan
    return fd(gen_base, ref), fd(gen_head, ref), bb, bh


def paired_fd_ci(gen_base: np.ndarray, gen_head: np.ndarray, ref: np.ndarray, *, n_boot: int = N_BOOT,
                 seed: int = SEED) -> tuple[float, float, float] | None:
    """Bias-shifted paired-bootstrap CI of ``FD(gen_head, ref) - FD(gen_base, ref)``.

    Returns:
        ``(delta on the full sets, ci_low, ci_high)`` or None when too few prompts.
    """
    res = _boot_fd(gen_base, gen_head, ref, n_boot=n_boot, seed=seed)
    if res is None:
        return None
    fb, fh, bb, bh = res
    delta, boot = fh - fb, bh - bb
    ci = _percentile(boot)
    if ci is None:
        return None
    bias = float(np.nanmean(boot) - delta)
    return float(delta), ci[0] - bias, ci[1] - bias


def independent_ci(delta: float, base: dict, head: dict) -> tuple[float, float] | None:
    """``delta ± 1.96·sqrt(se_b² + se_h²)`` with ``se = (ci_high - ci_low) / (2·1.96)``."""
    se = _independent_se(base, head)
    if se is None:
        return None
    return delta - Z95 * se, delta + Z95 * se


def _independent_se(base: dict, head: dict) -> float | None:
    ses = []
    for e in (base, head):
        lo, hi = _f(e.get("ci_low")), _f(e.get("ci_high"))
        if lo is None or hi is None or hi < lo:
            return None
        ses.append((hi - lo) / (2 * Z95))
    return math.sqrt(ses[0] ** 2 + ses[1] ** 2)
