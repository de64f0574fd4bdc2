"""Atlas-guided tissue measurements on volumes in atlas space.

Generated volumes come without segmentations, but they live in atlas space: the atlas says where
deep white matter, cortical grey matter and the ventricles are. Mean intensities in conservative
("core") atlas regions give a volume's tissue contrast, from which the modality follows (T1: WM > GM >
CSF; T2: CSF > GM > WM; PD: GM > WM with weak contrast; FLAIR: CSF darkest). Inside a dilated
ventricle region, voxels closer to the CSF mean than to the parenchyma means measure the ventricular
CSF volume — what a prompt asking for large ventricles should change.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

TISSUES = ("csf", "gm", "wm")

# Expected ordering (brightest first) per modality; PD checks only GM > WM (its CSF/GM order depends on TR).
EXPECTED_ORDER = {"T1": ("wm", "gm", "csf"), "T2": ("csf", "gm", "wm"), "FLAIR": None, "PD": None}
T2_PD_RATIO = 2.0  # CSF/WM intensity ratio separating T2 (~3.5 on the phantom) from PD (~1.35)


def core_masks(gm: np.ndarray, wm: np.ndarray, ventricles: np.ndarray, *, threshold: float = 0.9,
               erode: int = 1) -> dict[str, np.ndarray]:
    """Conservative tissue regions from atlas priors on the grid.

    Args:
        gm, wm: atlas tissue probabilities (D, H, W).
        ventricles: atlas lateral-ventricle mask (D, H, W) bool.
        threshold: minimum probability for GM/WM core voxels (GM uses ``threshold - 0.2``: cortex is thin).
        erode: erosion iterations for the WM and ventricle cores (robust to small deformations).
    """
    wm_core = ndimage.binary_erosion(wm >= threshold, iterations=erode)
    gm_core = gm >= threshold - 0.2
    csf_core = ndimage.binary_erosion(np.asarray(ventricles, bool), iterations=erode)
    if not csf_core.any():
        csf_core = np.asarray(ventricles, bool)
    return {"csf": csf_core, "gm": gm_core, "wm": wm_core}


def tissue_means(volumes: np.ndarray, masks: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Median intensity per tissue region for each volume: ``{tissue: (N,)}`` (medians resist
    partial-volume outliers)."""
    v = np.asarray(volumes, dtype=np.float32)
    if v.ndim == 3:
        v = v[None, None]
    v = v[:, 0]
    return {t: np.array([float(np.median(x[m])) for x in v]) for t, m in masks.items()}


def contrast_matches(means: dict[str, float], modality: str, *, margin: float = 0.0) -> bool:
    """Whether one volume's tissue means have the contrast order of ``modality``.

    T1: WM > GM > CSF; T2: CSF > GM > WM with CSF/WM >= :data:`T2_PD_RATIO`; FLAIR: CSF below GM and
    WM; PD: GM > WM with CSF/WM below that ratio. ``margin`` is the minimum gap between consecutive
    tissues (intensity units).
    """
    m = {k: float(v) for k, v in means.items()}
    mod = modality.upper()
    strong_csf = m["csf"] >= T2_PD_RATIO * max(m["wm"], 1e-6)
    if mod in ("T1", "T2"):
        a, b, c = EXPECTED_ORDER[mod]
        ordered = m[a] > m[b] + margin and m[b] > m[c] + margin
        return ordered and (strong_csf if mod == "T2" else True)
    if mod == "FLAIR":
        return m["csf"] + margin < m["gm"] and m["csf"] + margin < m["wm"]
    if mod == "PD":
        return m["gm"] > m["wm"] + margin and not strong_csf
    raise ValueError(f"unknown modality {modality!r}; expected T1, T2, PD or FLAIR")


def classify_modality(means: dict[str, float]) -> str:
    """The modality whose contrast the tissue means have (T1, T2, FLAIR, PD; "unknown" when none)."""
    for mod in ("T1", "T2", "FLAIR", "PD"):
        if contrast_matches(means, mod):
            return mod
    return "unknown"


def ventricular_csf_ml(volumes: np.ndarray, ventricles: np.ndarray, masks: dict[str, np.ndarray],
                       voxel_volume_ml: float, *, dilate: int = 3) -> np.ndarray:
    """Ventricular CSF volume (mL) per volume: voxels in the dilated atlas ventricle region whose
    intensity is closer to that volume's CSF mean than to its GM and WM means.

    Args:
        volumes: (N, 1, D, H, W).
        ventricles: atlas lateral-ventricle mask (D, H, W).
        masks: core tissue masks (:func:`core_masks`), used for the per-volume tissue means.
        voxel_volume_ml: grid voxel volume.
        dilate: dilation (voxels) of the ventricle region, room for larger ventricles.
    """
    roi = ndimage.binary_dilation(np.asarray(ventricles, bool), iterations=dilate)
    means = tissue_means(volumes, masks)
    v = np.asarray(volumes, dtype=np.float32)[:, 0]
    out = np.empty(v.shape[0])
    for i, x in enumerate(v):
        vals = x[roi]
        centres = np.array([means["csf"][i], means["gm"][i], means["wm"][i]])
        nearest = np.argmin(np.abs(vals[:, None] - centres[None]), axis=1)
        out[i] = float((nearest == 0).sum()) * voxel_volume_ml
    return out
