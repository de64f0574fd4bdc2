"""Nearest-neighbour distances between feature sets.

The building block of PRDC (Naeem et al. 2020, "Reliable Fidelity and Diversity Metrics for
Generative Models", ICML) and of the memorisation checks (Meehan et al. 2020, "A Non-Parametric Test
to Detect Data-Copying in Generative Models", AISTATS). Distances are Euclidean, computed in float64.

Every k-NN statistic compares distances with each other (a neighbour inside a ball of radius
``r_i`` or not), so a distance must not depend on *where* it is computed: :func:`pairwise_distances`
is the one distance routine, and it computes ``d(a, b)`` from the difference vector of the two rows
alone (elementwise subtraction and squaring, then numpy's fixed-order pairwise sum along the
feature axis, then ``sqrt``). No BLAS call is involved, so ``d(a, b)`` depends only on the bytes of
rows ``a`` and ``b``: it is bit-identical whichever sets the rows sit in, on whichever processor
(OpenBLAS picks a different matrix kernel per CPU, and the Gram expansion ``|a|² + |b|² - 2 a·b``
rounds differently in each, which flipped ties at a ball's radius); ``d(a, a) == 0`` and
``d(a, b) == d(b, a)`` exactly.
"""

from __future__ import annotations

import numpy as np

__all__ = ["as_features", "pairwise_distances", "nearest_neighbours", "kth_nn_distance"]

#: Scratch memory per tile of difference vectors (bytes): small enough to stay in cache.
TILE_BYTES = 1 << 21


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


def pairwise_distances(x, y=None) -> np.ndarray:
    """Euclidean distances between every row of ``x`` and every row of ``y`` (default ``y = x``).

    ``d(a, b) = sqrt(sum((a - b)²))`` in float64 from the difference vector (see the module
    docstring): exact to float rounding, bit-identical for the same pair of rows wherever and on
    whatever processor it is computed, 0 for identical rows. Work is tiled (``TILE_BYTES`` of
    difference vectors at a time), so memory stays ``O(N M)`` for the result; with ``y`` omitted only
    one triangle is computed and mirrored. Costs ``3 N M F`` elementwise operations: about 1 s for
    ``N = M = 1000, F = 512`` on one core.

    Args:
        x: ``(N, F)`` features.
        y: ``(M, F)`` features; None (or ``x`` itself) for the distances within ``x``.

    Returns:
        ``(N, M)`` float64 distances.
    """
    same = y is None or y is x
    x = np.ascontiguousarray(as_features(x, "x"))
    y = x if same else np.ascontiguousarray(as_features(y, "y"))
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"feature dimensions differ: {x.shape[1]} vs {y.shape[1]}; use the same extractor")
    n, m, f = x.shape[0], y.shape[0], x.shape[1]
    out = np.empty((n, m), dtype=np.float64)
    if n == 0 or m == 0:
        return out
    # tile of tx rows of x by ty rows of y: (tx, ty, f) difference vectors
    elems = max(1, TILE_BYTES // (8 * max(f, 1)))
    tx = max(1, min(n, int(np.sqrt(elems))))
    ty = max(1, min(m, elems // tx))
    if same:
        ty = tx  # square tiles, so the diagonal tiles are the only ones computed in full
    buf = np.empty((tx, ty, f), dtype=np.float64)
    for s in range(0, n, tx):
        xs = x[s:s + tx]
        for u in range(s if same else 0, m, ty):
            ys = y[u:u + ty]
            d = buf[:xs.shape[0], :ys.shape[0]]
            np.subtract(xs[:, None, :], ys[None, :, :], out=d)
            np.square(d, out=d)
            np.sum(d, axis=-1, out=out[s:s + tx, u:u + ty])  # pairwise sum along the contiguous feature axis
            if same and u != s:
                out[u:u + ty, s:s + tx] = out[s:s + tx, u:u + ty].T  # d(b, a) == d(a, b) exactly
    return np.sqrt(out, out=out)


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
        sorted nearest first; equal distances are ordered by index, so ties are decided the same
        everywhere. Distances come from :func:`pairwise_distances`.
    """
    q = as_features(query, "query")
    r = as_features(ref, "ref")
    m = r.shape[0]
    if exclude_self and q.shape[0] != m:
        raise ValueError(f"exclude_self=True needs query and ref to be the same set; got {q.shape[0]} and {m} rows")
    limit = m - 1 if exclude_self else m
    if not 1 <= k <= limit:
        raise ValueError(f"k={k} must be between 1 and {limit} (the number of candidate neighbours)")
    d = pairwise_distances(q) if exclude_self and q is r else pairwise_distances(q, r)
    if exclude_self:
        np.fill_diagonal(d, np.inf)
    if k == 1:
        idx = d.argmin(axis=1)  # first minimum: the lowest index among ties
        return d[np.arange(d.shape[0]), idx], idx
    idx = np.argsort(d, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d, idx, axis=1), idx


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
    d = pairwise_distances(x)
    return _kth_from_matrix(d, k, exclude_diagonal=True)


def _kth_from_matrix(d: np.ndarray, k: int, *, exclude_diagonal: bool) -> np.ndarray:
    n = d.shape[1] - (1 if exclude_diagonal else 0)
    if not 1 <= k <= n:
        raise ValueError(f"k={k} must be between 1 and {n} (set size minus one); use a smaller k or more samples")
    d = d.copy()
    if exclude_diagonal:
        np.fill_diagonal(d, np.inf)
    return np.partition(d, k - 1, axis=1)[:, k - 1]
