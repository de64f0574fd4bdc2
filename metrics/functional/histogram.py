"""Intensity histograms inside a brain mask and distances between intensity distributions.

Distances (all symmetric, 0 for identical distributions):

* Wasserstein-1 (earth mover's) distance: ``integral |F_p(t) - F_q(t)| dt`` (Vallender 1974);
  on histograms the mass of a bin sits at its centre, which equals
  ``scipy.stats.wasserstein_distance(centres, centres, p, q)``.
* Jensen-Shannon divergence, base 2 (Lin 1991): ``JS = (KL(p||m) + KL(q||m)) / 2``, ``m = (p + q) / 2``,
  in ``[0, 1]``; equals ``scipy.spatial.distance.jensenshannon(p, q, base=2) ** 2``.
* Kolmogorov-Smirnov statistic: ``sup_t |F_p(t) - F_q(t)|``; on values it equals
  ``scipy.stats.ks_2samp(u, v).statistic``, on histograms it is the KS statistic of the binned values.

Intensities are expected in ``[0, 1]``; values outside the histogram range are clipped into the
first/last bin (so every in-mask voxel counts).
"""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import numpy as np

DEFAULT_BINS = 128


def bin_edges(bins: int = DEFAULT_BINS, value_range: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """``bins + 1`` equally spaced edges over ``value_range``."""
    return np.linspace(value_range[0], value_range[1], bins + 1)


def _volumes(v) -> np.ndarray:
    a = np.asarray(v)
    if a.ndim == 3:
        a = a[None]
    elif a.ndim == 5:
        if a.shape[1] != 1:
            raise ValueError(f"expected one channel, got shape {a.shape}")
        a = a[:, 0]
    elif a.ndim != 4:
        raise ValueError(f"expected (D, H, W), (N, D, H, W) or (N, 1, D, H, W) volumes, got shape {a.shape}")
    return a


def volume_histograms(volumes, mask=None, *, bins: int = DEFAULT_BINS,
                      value_range: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """Per-volume voxel counts of the in-mask intensities.

    Args:
        volumes: ``(N, 1, D, H, W)``, ``(N, D, H, W)`` or one ``(D, H, W)`` volume.
        mask: boolean ``(D, H, W)`` mask shared by all volumes, ``(N, [1,] D, H, W)`` per volume, or
            ``None`` for all voxels.
        bins: number of equal-width bins over ``value_range``.
        value_range: histogram range; values outside are clipped into the edge bins.

    Returns:
        ``(N, bins)`` float64 counts (not normalised, so histograms of several volumes add up).
    """
    vols = _volumes(volumes)
    n = vols.shape[0]
    m = None if mask is None else np.asarray(mask, dtype=bool)
    if m is not None and m.ndim == 5:
        m = m[:, 0]
    lo, hi = value_range
    out = np.zeros((n, bins), dtype=np.float64)
    for i in range(n):
        mi = m if m is None or m.ndim == 3 else m[i]
        vals = vols[i][mi] if mi is not None else vols[i].ravel()
        idx = np.floor((np.asarray(vals, dtype=np.float64) - lo) / (hi - lo) * bins).astype(np.int64)
        np.clip(idx, 0, bins - 1, out=idx)
        out[i] = np.bincount(idx, minlength=bins)
    return out


def _normalise(h: np.ndarray) -> np.ndarray:
    h = np.asarray(h, dtype=np.float64)
    s = h.sum()
    if not s > 0:
        raise ValueError("empty histogram (no voxel inside the mask?)")
    return h / s


def wasserstein1_hist(p, q, *, edges: np.ndarray | None = None) -> float:
    """Wasserstein-1 distance between two histograms on the same bins (mass at bin centres).

    Args:
        p: counts or probabilities, ``(bins,)``.
        q: same bins.
        edges: bin edges (``bins + 1``); default equal bins over ``[0, 1]``.
    """
    p, q = _normalise(p), _normalise(q)
    if edges is None:
        edges = bin_edges(p.size)
    centres = 0.5 * (edges[:-1] + edges[1:])
    # between consecutive centres the CDF difference is constant
    diff = np.abs(np.cumsum(p - q))[:-1]
    return float(np.sum(diff * np.diff(centres)))


def wasserstein1_values(u, v) -> float:
    """Wasserstein-1 distance between two empirical samples (``integral |F_u - F_v|``)."""
    u = np.sort(np.asarray(u, dtype=np.float64).ravel())
    v = np.sort(np.asarray(v, dtype=np.float64).ravel())
    allv = np.concatenate([u, v])
    allv.sort(kind="mergesort")
    delta = np.diff(allv)
    fu = np.searchsorted(u, allv[:-1], side="right") / u.size
    fv = np.searchsorted(v, allv[:-1], side="right") / v.size
    return float(np.sum(np.abs(fu - fv) * delta))


def js_divergence(p, q, *, base: float = 2.0) -> float:
    """Jensen-Shannon divergence of two histograms (``0 log 0 = 0``); in ``[0, 1]`` for base 2."""
    p, q = _normalise(p), _normalise(q)
    m = 0.5 * (p + q)

    def kl(a: np.ndarray) -> float:
        nz = a > 0
        return float(np.sum(a[nz] * np.log(a[nz] / m[nz])))

    return max(0.0, 0.5 * (kl(p) + kl(q)) / np.log(base))


def ks_hist(p, q) -> float:
    """Kolmogorov-Smirnov statistic between two histograms on the same bins."""
    p, q = _normalise(p), _normalise(q)
    return float(np.max(np.abs(np.cumsum(p - q))))


def ks_values(u, v) -> float:
    """Two-sample Kolmogorov-Smirnov statistic ``sup |F_u - F_v|`` of two samples."""
    u = np.sort(np.asarray(u, dtype=np.float64).ravel())
    v = np.sort(np.asarray(v, dtype=np.float64).ravel())
    allv = np.concatenate([u, v])
    fu = np.searchsorted(u, allv, side="right") / u.size
    fv = np.searchsorted(v, allv, side="right") / v.size
    return float(np.max(np.abs(fu - fv)))


def histogram_distances(p, q, *, edges: np.ndarray | None = None) -> dict[str, float]:
    """``{"w1", "js", "ks"}`` between two histograms on the same bins."""
    return {"w1": wasserstein1_hist(p, q, edges=edges), "js": js_divergence(p, q), "ks": ks_hist(p, q)}


def pooled_distances(hists_a: np.ndarray, hists_b: np.ndarray, *, edges: np.ndarray | None = None,
                     idx_a: np.ndarray | None = None, idx_b: np.ndarray | None = None) -> dict[str, float]:
    """Distances between the pooled (summed) per-volume histograms of two sets.

    ``idx_a``/``idx_b`` select (with repetition, for the bootstrap) which volumes are pooled.
    """
    a = hists_a if idx_a is None else hists_a[idx_a]
    b = hists_b if idx_b is None else hists_b[idx_b]
    return histogram_distances(a.sum(0), b.sum(0), edges=edges)


def tissue_masks(labels, brain_mask=None, *, names: Mapping[int, str] | None = None,
                 ignore: Sequence[int] = (0,)) -> dict[str, np.ndarray]:
    """Boolean masks per tissue from an integer label map (label 0 = background is skipped).

    Args:
        labels: ``(D, H, W)`` integer label map (e.g. a consensus map from
            :func:`consensus_labels`), or ``(N, [1,] D, H, W)`` per-subject maps, which are reduced
            to their voxel-wise majority label (a consensus atlas) so that every set is masked
            identically.
        brain_mask: optional ``(D, H, W)`` mask intersected with each tissue.
        names: label -> tissue name (default ``"label_<k>"``).
        ignore: labels to skip.

    Returns:
        ``{name: (D, H, W) bool}`` in label order.
    """
    lab = consensus_labels(labels)
    out: dict[str, np.ndarray] = {}
    for k in np.unique(lab):
        if int(k) in set(int(i) for i in ignore):
            continue
        m = lab == k
        if brain_mask is not None:
            m &= np.asarray(brain_mask, dtype=bool)
        if m.any():
            out[(names or {}).get(int(k), f"label_{int(k)}")] = m
    return out


def consensus_labels(labels: np.ndarray | Iterable[np.ndarray]) -> np.ndarray:
    """Voxel-wise majority label of per-subject label maps, computed one map at a time.

    Per label value a ``(D, H, W)`` vote count is accumulated, so memory is (number of distinct
    labels) x (D, H, W) whatever the number of subjects — the runner calls it with a generator that
    loads one subject's labels at a time. Ties go to the smallest label value.

    Args:
        labels: an iterable of per-subject ``(D, H, W)`` (or ``(1, D, H, W)``) integer label maps
            (e.g. a generator), or an ``(N, [1,] D, H, W)`` array of them. A ``(D, H, W)`` array is
            already a consensus map and is returned as is (as int64).

    Returns:
        ``(D, H, W)`` int64 map of the most frequent label at each voxel.

    Raises:
        ValueError: no map, or maps of different or unsupported shapes.
    """
    if isinstance(labels, (list, tuple)):
        labels = np.asarray(labels)
    if isinstance(labels, np.ndarray):
        if labels.ndim == 3:
            return labels.astype(np.int64)
        if labels.ndim not in (4, 5) or (labels.ndim == 5 and labels.shape[1] != 1):
            raise ValueError(f"labels must be (D, H, W) or (N, [1,] D, H, W), got shape {labels.shape}")
    counts: dict[int, np.ndarray] = {}
    shape = None
    for i, item in enumerate(labels):
        lab = np.asarray(item)
        if lab.ndim == 4 and lab.shape[0] == 1:
            lab = lab[0]
        if lab.ndim != 3:
            raise ValueError(f"label map {i} has shape {lab.shape}; expected (D, H, W) or (1, D, H, W)")
        if shape is None:
            shape = lab.shape
        elif lab.shape != shape:
            raise ValueError(f"label map {i} has shape {lab.shape}, the first had {shape}")
        lab = lab.astype(np.int64)
        for v in np.unique(lab):
            c = counts.get(int(v))
            if c is None:
                c = counts[int(v)] = np.zeros(shape, dtype=np.int32)
            c += lab == v
    if shape is None:
        raise ValueError("consensus_labels: no label map given")
    values = np.array(sorted(counts), dtype=np.int64)
    # np.argmax returns the first maximum: with ascending values, ties go to the smallest label.
    return values[np.argmax(np.stack([counts[int(v)] for v in values]), axis=0)]
