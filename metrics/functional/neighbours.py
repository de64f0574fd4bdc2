"""Nearest-neighbour distances between feature sets.

The building block of PRDC (Naeem et al. 2020, "Reliable Fidelity and Diversity Metrics for
Generative Models", ICML) and of the memorisation checks (Meehan et al. 2020, "A Non-Parametric Test
to Detect Data-Copying in Generative Models", AISTATS). Distances are Euclidean, computed in float64.
"""

from __future__ import annotations

import numpy as np

__all__ = ["as_features", "pairwise_distances", "nearest_neighbours", "kth_nn_distance"]


def as_features(x, name: str = "features") -> np.ndarray:
    """Return ``x`` as a finite float64 ``(N, F)`` matrix.

    Args:
        x: array-like (or torch tensor) of shape ``(N, F)``; a 1-D array is one feature per sample.
        name: how to call the array in error messages.

    Raises:
        ValueError: wrong shape or non-finite values.
    """
    if hasattr(x, "detach"):  # torch tensor, without importing torch
        x = x.detach().cpu().numpy()
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise ValueError(f"{name}: expected a (N, F) feature matrix, got shape {a.shape}; "
                         "flatten per-sample features first")
    if not np.isfinite(a).all():
        raise ValueError(f"{name}: contains NaN or inf; check the feature extractor output")
    return a


def pairwise_distances(x, y) -> np.ndarray:
    """Euclidean distances between every row of ``x`` and every row of ``y``.

    Uses the BLAS expansion ``|x|^2 + |y|^2 - 2 x.y`` (clipped at 0), which is fast but loses absolute
    precision of order ``sqrt(eps) * |x|`` for near-identical pairs; :func:`nearest_neighbours`
    recomputes the returned distances exactly.

    Args:
        x: ``(N, F)`` features.
        y: ``(M, F)`` features.

    Returns:
        ``(N, M)`` float64 distances.
    """
    x = as_features(x, "x")
    y = as_features(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"feature dimensions differ: {x.shape[1]} vs {y.shape[1]}; use the same extractor")
    d2 = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2.0 * (x @ y.T)
    np.maximum(d2, 0.0, out=d2)
    return np.sqrt(d2)


def nearest_neighbours(query, ref, *, k: int = 1, exclude_self: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Distance from each query row to its ``k`` nearest rows of ``ref`` (and their indices).

    Args:
        query: ``(N, F)`` features.
        ref: ``(M, F)`` features searched.
        k: number of neighbours.
        exclude_self: ``query`` and ``ref`` are the same set (same order); row ``i`` never matches
            itself (it may still match an exact duplicate at another index).

    Returns:
        ``(distances, indices)``: for ``k == 1`` arrays of shape ``(N,)``; otherwise ``(N, k)``,
        sorted nearest first. Distances are recomputed exactly as ``|q - r|`` (no cancellation).
    """
    q = as_features(query, "query")
    r = as_features(ref, "ref")
    m = r.shape[0]
    if exclude_self and q.shape[0] != m:
        raise ValueError(f"exclude_self=True needs query and ref to be the same set; got {q.shape[0]} and {m} rows")
    limit = m - 1 if exclude_self else m
    if not 1 <= k <= limit:
        raise ValueError(f"k={k} must be between 1 and {limit} (the number of candidate neighbours)")
    d = pairwise_distances(q, r)
    if exclude_self:
        np.fill_diagonal(d, np.inf)
    if k < m:
        idx = np.argpartition(d, k - 1, axis=1)[:, :k]
    else:
        idx = np.broadcast_to(np.arange(m), d.shape).copy()
    # exact distances for the candidates, then sort
    exact = np.linalg.norm(q[:, None, :] - r[idx], axis=-1)
    order = np.argsort(exact, axis=1, kind="stable")
    idx = np.take_along_axis(idx, order, axis=1)
    exact = np.take_along_axis(exact, order, axis=1)
    if k == 1:
        return exact[:, 0], idx[:, 0]
    return exact, idx


def kth_nn_distance(x, k: int) -> np.ndarray:
    """Distance from each row of ``x`` to its ``k``-th nearest other row (self excluded).

    This is the k-NN ball radius of PRDC (Naeem et al. 2020) and of improved precision/recall
    (Kynkäänniemi et al. 2019).

    Args:
        x: ``(N, F)`` features.
        k: neighbour rank, ``1 <= k < N``.

    Returns:
        ``(N,)`` radii.
    """
    d = pairwise_distances(x, x)
    return _kth_from_matrix(d, k, exclude_diagonal=True)


def _kth_from_matrix(d: np.ndarray, k: int, *, exclude_diagonal: bool) -> np.ndarray:
    n = d.shape[1] - (1 if exclude_diagonal else 0)
    if not 1 <= k <= n:
        raise ValueError(f"k={k} must be between 1 and {n} (set size minus one); use a smaller k or more samples")
    d = d.copy()
    if exclude_diagonal:
        np.fill_diagonal(d, np.inf)
    return np.partition(d, k - 1, axis=1)[:, k - 1]
