"""Precision, recall, density and coverage (Naeem et al. 2020, "Reliable Fidelity and Diversity
Metrics for Generative Models", ICML), as in their reference code (clovaai/generative-evaluation-prdc).

With ``r_i`` the distance from real item ``i`` to its ``k``-th nearest other real item (and ``f_j``
likewise among fakes), ``B(c, r)`` the open ball (strict ``<``)::

    precision = 1/M Σ_j 1[∃ i: Y_j ∈ B(X_i, r_i)]          (Kynkäänniemi et al. 2019)
    recall    = 1/N Σ_i 1[∃ j: X_i ∈ B(Y_j, f_j)]          (Kynkäänniemi et al. 2019)
    density   = 1/(kM) Σ_j Σ_i 1[Y_j ∈ B(X_i, r_i)]
    coverage  = 1/N Σ_i 1[min_j |X_i - Y_j| < r_i]

Precision/density measure fidelity, recall/coverage diversity; all are higher-is-better, density is
unbounded (≈ 1 when the distributions match).

Every comparison ``d < r`` is decided on distances from :func:`metrics.functional.neighbours.pairwise_distances`,
whose ``d(a, b)`` depends only on the two rows: a real and a fake copy of the same point have
bit-identical distances to everything, so ties at a ball's radius are decided the same whatever the
processor. Identical real and fake sets give precision = recall = coverage = 1 (as long as no item
has ``k`` exact duplicates, which would make its radius 0) and density
``1/(kN) Σ_i #{j: d_ij < r_i}``, which is exactly 1 when no item has a tie at its ``k``-th distance
(with ties the strict ball holds fewer than ``k`` points).
"""

from __future__ import annotations

import numpy as np

from metrics.functional.neighbours import as_features, pairwise_distances

__all__ = ["prdc", "prdc_from_distances", "PRDC_KEYS"]

PRDC_KEYS = ("precision", "recall", "density", "coverage")


def _radii(d: np.ndarray, idx: np.ndarray, k: int) -> np.ndarray:
    sub = d[np.ix_(idx, idx)]
    sub = np.where(idx[:, None] == idx[None, :], np.inf, sub)  # exclude self (and its bootstrap copies)
    if k > sub.shape[1] - 1:
        raise ValueError(f"PRDC: k={k} needs at least k+1={k + 1} items per set, got {sub.shape[1]}")
    return np.partition(sub, k - 1, axis=1)[:, k - 1]


def prdc_from_distances(d_rr: np.ndarray, d_ff: np.ndarray, d_rf: np.ndarray, *, k: int = 5,
                        idx_real: np.ndarray | None = None, idx_fake: np.ndarray | None = None) -> dict[str, float]:
    """PRDC from precomputed distance matrices, optionally on resampled index multisets.

    Args:
        d_rr: ``(N, N)`` real-real distances.
        d_ff: ``(M, M)`` fake-fake distances.
        d_rf: ``(N, M)`` real-fake distances.
        k: neighbour rank of the radii.
        idx_real: indices into the real set (may repeat: a bootstrap resample); default all.
        idx_fake: indices into the fake set; default all.

    A copy of an item never counts as its own neighbour when radii are computed, so bootstrap
    duplicates do not shrink the balls to zero.
    """
    ir = np.arange(d_rr.shape[0]) if idx_real is None else np.asarray(idx_real)
    jf = np.arange(d_ff.shape[0]) if idx_fake is None else np.asarray(idx_fake)
    r_real = _radii(d_rr, ir, k)
    r_fake = _radii(d_ff, jf, k)
    d = d_rf[np.ix_(ir, jf)]
    inside_real = d < r_real[:, None]  # (N, M): fake j inside the ball of real i
    return {
        "precision": float(inside_real.any(axis=0).mean()),
        "recall": float((d < r_fake[None, :]).any(axis=1).mean()),
        "density": float(inside_real.sum(axis=0).mean() / k),
        "coverage": float((d.min(axis=1) < r_real).mean()),
    }


def prdc(real, fake, *, k: int = 5) -> dict[str, float]:
    """Precision, recall, density and coverage of ``fake`` against ``real`` features.

    Args:
        real: ``(N, F)`` real (reference) features.
        fake: ``(M, F)`` generated features.
        k: nearest-neighbour rank of the ball radii (Naeem et al. use 5).

    Returns:
        ``{"precision", "recall", "density", "coverage"}`` floats.
    """
    real = as_features(real, "real")
    fake = as_features(fake, "fake")
    return prdc_from_distances(pairwise_distances(real), pairwise_distances(fake), pairwise_distances(real, fake), k=k)
