"""White-matter lesion and deep grey-matter measurements of one volume in atlas space (pure functions).

The inputs are a lesion tissue-fraction map (what :func:`metrics.lesionseg.segment` returns, or a
ground-truth map) and the atlas on the volume's grid (``sets.atlas``: ``lesion_zones``, ``thalamus``,
``caudate``, ``gm``, ``wm``, ``ventricles``, ``voxel_volume_ml``).

- A **lesion** is a connected component (6-connectivity) of ``fraction > THRESHOLD`` (0.8); the **lesion volume**
  is the sum of the fractions (mL); a lesion's **class** is the atlas lesion zone (periventricular,
  juxtacortical, deep, infratentorial; :func:`cohorts.atlas.lesion_zones`) holding most of its
  fraction.
- A **new lesion** of a follow-up is a component that touches no lesion voxel of the previous scan,
  dilated by ``margin`` voxels (a lesion that grew is an enlarging lesion, not a new one).
- **Deep grey matter**: the grey-matter partial volume (per-volume tissue means, as
  :func:`metrics.functional.conformance.measure`) summed over the atlas thalamus / caudate dilated by
  one voxel; the **brain** volume is the grey plus white partial volume over the dilated atlas brain.
  Within a subject (a follow-up against its previous scan) the change of these sums is the atrophy;
  between subjects, where the structures sit differently against the atlas, :func:`deep_grey_features`
  (the sums over the structures dilated by 0, 1 and 2 voxels, the brain volume and the tissue means)
  feed a per-modality ridge fitted on training subjects of known volume (:mod:`metrics.lesions`).

>>> import numpy as np
>>> frac = np.zeros((8, 8, 8), np.float32); frac[1:3, 1:3, 1:3] = 1.0; frac[5, 5, 5] = 0.9
>>> zones = np.ones((8, 8, 8), np.int8); zones[4:] = 3
>>> lesion_summary(frac, zones, voxel_volume_ml=0.027)
{'count': 2, 'volume_ml': 0.2403, 'periventricular': 1, 'juxtacortical': 0, 'deep': 1, 'infratentorial': 0}
>>> prev = np.zeros_like(frac); prev[1, 1, 1] = 1.0
>>> new_lesion_count(prev, frac), round(persistence(prev, frac), 2)
(1, 1.0)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage as ndi

from metrics.functional.conformance import pv_fractions
from metrics.functional.tissue import core_masks, tissue_means

__all__ = ["ZONES", "DeepGreyRegions", "change_region", "deep_grey_features", "deep_grey_regions", "deep_grey_volumes",
           "lesion_summary",
           "masked_mae", "new_lesion_count", "persistence", "zone_shares"]

#: lesion classes, in the order of the atlas zone codes 1..4
ZONES = ("periventricular", "juxtacortical", "deep", "infratentorial")
#: the lesion mask of a segmented map: ``fraction > THRESHOLD`` (:mod:`metrics.lesionseg`'s left-right
#: averaged output; the value of {0.5, 0.6, 0.65, 0.7, 0.8} with the highest Dice and lesion-wise F1 on the
#: network's own training cohort)
THRESHOLD = 0.8


def _components(frac: np.ndarray, threshold: float = THRESHOLD) -> tuple[np.ndarray, int]:
    return ndi.label(np.asarray(frac) > threshold)


def lesion_summary(frac: np.ndarray, zones: np.ndarray, voxel_volume_ml: float, threshold: float = THRESHOLD) -> dict:
    """``count``, ``volume_ml`` (sum of fractions) and the count of lesions per class (:data:`ZONES`)."""
    frac = np.asarray(frac, np.float32)
    labels, n = _components(frac, threshold)
    out = {"count": int(n), "volume_ml": round(float(frac.sum(dtype=np.float64)) * float(voxel_volume_ml), 6)}
    counts = np.zeros(len(ZONES), int)
    if n:
        idx = np.arange(1, n + 1)
        weight = np.stack([ndi.sum(frac * (zones == z + 1), labels, idx) for z in range(len(ZONES))], 1)
        best = np.where(weight.max(1) > 0, weight.argmax(1), ZONES.index("deep"))  # outside every zone: deep
        counts = np.bincount(best, minlength=len(ZONES))
    out.update({z: int(c) for z, c in zip(ZONES, counts)})
    return out


def zone_shares(summary: dict) -> np.ndarray | None:
    """The share of lesions per class (sums to 1), or None without lesions."""
    c = np.array([float(summary.get(z, 0) or 0) for z in ZONES])
    return c / c.sum() if c.sum() > 0 else None


def new_lesion_count(previous: np.ndarray, current: np.ndarray, *, margin: int = 1,
                     threshold: float = THRESHOLD) -> int:
    """Lesions of ``current`` that touch no lesion voxel of ``previous`` dilated by ``margin`` voxels."""
    labels, n = _components(current, threshold)
    if n == 0:
        return 0
    old = np.asarray(previous) > threshold
    if margin and old.any():
        old = ndi.binary_dilation(old, iterations=margin)
    touching = set(np.unique(labels[old & (labels > 0)]).tolist())
    return int(n - len(touching))


def persistence(previous: np.ndarray, current: np.ndarray, threshold: float = THRESHOLD) -> float:
    """Share of the lesion voxels of ``previous`` that are lesion in ``current`` (NaN without lesions)."""
    old = np.asarray(previous) > threshold
    if not old.any():
        return float("nan")
    return float((old & (np.asarray(current) > threshold)).sum() / old.sum())


@dataclass(frozen=True)
class DeepGreyRegions:
    """Atlas regions of the deep grey-matter measurement on one grid."""

    cores: dict
    thalamus: np.ndarray
    caudate: np.ndarray
    support: np.ndarray
    voxel_volume_ml: float


def deep_grey_regions(atlas: dict, *, dilate: int = 1, support_dilate: int = 2) -> DeepGreyRegions:
    """Regions from ``sets.atlas`` (needs ``gm``, ``wm``, ``csf``, ``ventricles``, ``thalamus``,
    ``caudate``, ``voxel_volume_ml``)."""
    missing = [k for k in ("gm", "wm", "csf", "ventricles", "thalamus", "caudate", "voxel_volume_ml") if k not in atlas]
    if missing:
        raise ValueError(f"the atlas lacks {missing}; pass cohorts.atlas.atlas_on_grid(grid) (the runner does)")
    gm, wm, csf = (np.asarray(atlas[k], np.float32) for k in ("gm", "wm", "csf"))
    grow = (lambda m: ndi.binary_dilation(np.asarray(m, bool), iterations=dilate)) if dilate else (lambda m: np.asarray(m, bool))
    return DeepGreyRegions(core_masks(gm, wm, np.asarray(atlas["ventricles"], bool)), grow(atlas["thalamus"]),
                           grow(atlas["caudate"]), ndi.binary_dilation((gm + wm + csf) > 0.5, iterations=support_dilate),
                           float(atlas["voxel_volume_ml"]))


def deep_grey_volumes(volumes: np.ndarray, regions: DeepGreyRegions, means: dict | None = None,
                      exclude: np.ndarray | None = None) -> np.ndarray:
    """``(N, 3)``: thalamus, caudate and brain (grey + white matter) volume in mL of ``(N, 1, D, H, W)``
    volumes, with each volume's own tissue means or the given ones (``{"csf"|"gm"|"wm": (N,)}``: a
    follow-up measured with its previous scan's, so that its change is not a shift of the means).
    ``exclude`` (``(N, D, H, W)`` bool) leaves voxels out of the deep grey-matter sums: the lesions of
    a follow-up and its previous scan, whose intensity lies between grey matter and CSF on T2 and FLAIR
    and would otherwise be read as grey matter gained."""
    v = np.asarray(volumes, np.float32)
    means = tissue_means(v, regions.cores) if means is None else means
    out = np.zeros((len(v), 3))
    thal, caud = regions.thalamus[regions.support], regions.caudate[regions.support]
    for i, x in enumerate(v[:, 0]):
        f = pv_fractions(x[regions.support], (0.0, *(float(means[t][i]) for t in ("csf", "gm", "wm"))))
        keep = np.ones(len(f), bool) if exclude is None else ~np.asarray(exclude[i], bool)[regions.support]
        out[i] = (f[thal & keep, 2].sum(), f[caud & keep, 2].sum(), (f[:, 2] + f[:, 3]).sum())
    return out * regions.voxel_volume_ml


#: columns of :func:`deep_grey_features`
DEEP_GREY_FEATURES = ("thalamus_d0", "caudate_d0", "thalamus_d1", "caudate_d1", "brain", "thalamus_d2", "caudate_d2",
                      "int_csf", "int_gm", "int_wm")


def deep_grey_features(volumes: np.ndarray, regions: Sequence[DeepGreyRegions]) -> np.ndarray:
    """``(N, 10)`` features of :data:`DEEP_GREY_FEATURES`; ``regions`` are :func:`deep_grey_regions` with
    ``dilate=0, 1, 2``."""
    v = np.asarray(volumes, np.float32)
    f = [deep_grey_volumes(v, r) for r in regions]
    m = tissue_means(v, regions[0].cores)
    return np.column_stack([f[0][:, :2], f[1], f[2][:, :2], m["csf"], m["gm"], m["wm"]])


def change_region(regions: DeepGreyRegions, *lesion_fractions: np.ndarray, margin: int = 1,
                  threshold: float = 0.1, with_deep_grey: bool = True) -> np.ndarray:
    """Where a follow-up may legitimately differ from its previous scan: every voxel of lesion fraction
    above ``threshold`` in any of the maps, dilated by ``margin``, and (``with_deep_grey``) the deep
    grey-matter regions."""
    les = np.zeros(regions.support.shape, bool)
    for f in lesion_fractions:
        les |= np.asarray(f) > threshold
    if margin and les.any():
        les = ndi.binary_dilation(les, iterations=margin)
    return les | regions.thalamus | regions.caudate if with_deep_grey else les


def masked_mae(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """Mean absolute intensity difference of two volumes over ``mask``."""
    m = np.asarray(mask, bool)
    return float(np.abs(np.asarray(a, np.float64)[..., m] - np.asarray(b, np.float64)[..., m]).mean()) if m.any() else float("nan")
