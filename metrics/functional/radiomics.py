"""Radiomics features (pyradiomics) and the Fréchet Radiomics Distance.

Feature extraction uses pyradiomics (van Griethuysen et al. 2017, "Computational Radiomics System
to Decode the Radiographic Phenotype", Cancer Research 77(21)); the ``pyradiomics-bhklab`` fork
provides the same ``radiomics`` module and gives identical values. The FRD follows Osuala et al.
("Towards Learning Contrast Kinetics with Multi-Condition Latent Diffusion Models" / the
``frd-score`` package): z-score every feature with the mean and standard deviation of the first
(here: the reference) set, drop features that are constant there, and take the Fréchet distance
between Gaussian fits (Heusel et al. 2017) of the two standardised feature sets.

Choices, all in :class:`RadiomicsConfig` and recorded:

* Image type "Original" only (FRD v1 adds LoG and wavelet images: ~5x the features and the time).
* Feature classes firstorder, GLCM, GLRLM, GLSZM, GLDM, NGTDM (93 features; shape features are
  excluded: the mask is the same atlas brain mask for every volume, so they would be constant).
* Intensities stay in ``[0, 1]`` and the grey levels are fixed-width bins of ``bin_width = 1/64``
  (at most 64 grey levels over the full range, within pyradiomics' recommended 30-130; the
  equivalent of FRD's binWidth 5 on a 0-255 scale would be 1/51). A fixed bin width, not a fixed
  bin count, keeps the grey levels comparable between volumes.
* Voxel spacing = the suite grid's voxel size (it enters NGTDM/GLCM only through the distances in
  voxels, but is set correctly for any resampling); ``resample`` (mm) optionally resamples first
  (FRD's 3D config uses 2 mm); default ``None`` keeps the atlas grid.
* Feature names drop pyradiomics' ``original_`` prefix: ``firstorder_Entropy``, ``glcm_Contrast``.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from typing import Mapping, Sequence

import numpy as np

from metrics.functional.frechet import frechet_distance_from_features

log = logging.getLogger("braingenbench.metrics.radiomics")

DEFAULT_FEATURE_CLASSES: tuple[str, ...] = ("firstorder", "glcm", "glrlm", "glszm", "gldm", "ngtdm")
DEFAULT_BIN_WIDTH = 1.0 / 64.0


@dataclass(frozen=True)
class RadiomicsConfig:
    """pyradiomics settings that change the features (part of a cache key)."""

    feature_classes: tuple[str, ...] = DEFAULT_FEATURE_CLASSES
    bin_width: float = DEFAULT_BIN_WIDTH
    resample: float | None = None  # mm, isotropic; None = keep the grid

    def settings(self) -> dict:
        """Keyword settings for ``RadiomicsFeatureExtractor``."""
        s: dict = {"binWidth": float(self.bin_width), "label": 1, "additionalInfo": False}
        if self.resample is not None:
            s["resampledPixelSpacing"] = [float(self.resample)] * 3
        return s

    def to_dict(self) -> dict:
        d = asdict(self)
        d["feature_classes"] = list(self.feature_classes)
        d["image_types"] = ["Original"]
        d["pyradiomics"] = _pyradiomics_version()
        return d


def _pyradiomics_version() -> str:
    try:
        import radiomics
        return str(radiomics.__version__)
    except Exception:  # noqa: BLE001 - version is informative only
        return "unavailable"


def _as_config(config) -> RadiomicsConfig:
    if config is None:
        return RadiomicsConfig()
    if isinstance(config, RadiomicsConfig):
        return config
    if isinstance(config, Mapping):
        c = dict(config)
        if "feature_classes" in c:
            c["feature_classes"] = tuple(c["feature_classes"])
        return RadiomicsConfig(**c)
    raise TypeError(f"config must be a RadiomicsConfig or a dict, got {type(config).__name__}")


def silence_pyradiomics() -> None:
    """Keep pyradiomics' logger (INFO/WARNING per image by default) quiet."""
    logging.getLogger("radiomics").setLevel(logging.ERROR)


def _spacing_xyz(voxel_size) -> tuple[float, float, float]:
    vs = np.broadcast_to(np.asarray(voxel_size, dtype=np.float64), (3,))
    return tuple(float(v) for v in vs[::-1])  # numpy (D, H, W) order -> SimpleITK (x, y, z)


def _make_extractor(cfg: RadiomicsConfig):
    from radiomics import featureextractor

    silence_pyradiomics()
    ex = featureextractor.RadiomicsFeatureExtractor(**cfg.settings())
    ex.disableAllFeatures()
    ex.disableAllImageTypes()
    ex.enableImageTypeByName("Original")
    for c in cfg.feature_classes:
        ex.enableFeatureClassByName(c)
    return ex


_EXTRACTORS: dict[RadiomicsConfig, object] = {}


def radiomics_features(volume, mask, voxel_size, config=None) -> dict[str, float]:
    """pyradiomics features of one volume inside a mask.

    Args:
        volume: ``(D, H, W)`` (or ``(1, D, H, W)``) intensities, normally in ``[0, 1]``.
        mask: ``(D, H, W)`` boolean region (the brain mask).
        voxel_size: mm, a float or a ``(D, H, W)``-ordered triple.
        config: :class:`RadiomicsConfig` or a dict of its fields (default: the module defaults).

    Returns:
        ``{feature_name: value}`` in pyradiomics' order, e.g. ``"firstorder_Entropy"``.
    """
    import SimpleITK as sitk

    cfg = _as_config(config)
    v = np.asarray(volume, dtype=np.float32)
    if v.ndim == 4 and v.shape[0] == 1:
        v = v[0]
    m = np.asarray(mask).astype(bool)
    if v.ndim != 3 or v.shape != m.shape:
        raise ValueError(f"radiomics_features: volume {v.shape} and mask {m.shape} must be the same (D, H, W)")
    if not m.any():
        raise ValueError("radiomics_features: the mask is empty")
    img = sitk.GetImageFromArray(v)
    img.SetSpacing(_spacing_xyz(voxel_size))
    msk = sitk.GetImageFromArray(m.astype(np.uint8))
    msk.CopyInformation(img)
    ex = _EXTRACTORS.get(cfg)
    if ex is None:
        ex = _EXTRACTORS[cfg] = _make_extractor(cfg)
    silence_pyradiomics()
    res = ex.execute(img, msk)
    out = {}
    for k, val in res.items():
        if k.startswith("diagnostics_"):
            continue
        out[k[len("original_"):] if k.startswith("original_") else k] = float(val)
    return out


def _worker_init() -> None:
    silence_pyradiomics()
    try:
        import SimpleITK as sitk
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)  # one core per worker process
    except Exception:  # noqa: BLE001
        pass


def _mp_context():
    """``spawn`` (safe after torch/ITK threads have started), unless ``__main__`` cannot be re-imported
    by a spawned child (interactive session, script piped on stdin), where only ``fork`` works."""
    import os
    import sys

    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    path = getattr(main, "__file__", None)
    if spec is None and path is not None and not os.path.isfile(path) and "fork" in mp.get_all_start_methods():
        return mp.get_context("fork")
    return mp.get_context("spawn")


def _extract_one(args) -> dict[str, float]:
    volume, mask, voxel_size, cfg = args
    return radiomics_features(volume, mask, voxel_size, cfg)


def radiomics_process_pool(workers: int) -> ProcessPoolExecutor:
    """A pool of ``workers`` extraction processes, to pass to :func:`radiomics_feature_matrix` as
    ``executor`` when many sets are extracted in a row (starting the processes costs seconds)."""
    return ProcessPoolExecutor(max_workers=workers, mp_context=_mp_context(), initializer=_worker_init)


def radiomics_feature_matrix(volumes, mask, voxel_size, config=None, *, workers: int = 2,
                             executor: ProcessPoolExecutor | None = None) -> tuple[list[str], np.ndarray]:
    """Features of a set of volumes, in parallel processes.

    Args:
        volumes: ``(N, 1, D, H, W)`` or ``(N, D, H, W)``.
        mask: ``(D, H, W)`` shared mask or ``(N, [1,] D, H, W)`` per volume.
        voxel_size: mm.
        config: :class:`RadiomicsConfig` or dict.
        workers: worker processes (``spawn`` context, so it is safe after torch/ITK threads have
            started; scripts that call this need the usual ``if __name__ == "__main__":`` guard);
            ``<= 1`` runs in this process.
        executor: an open pool (:func:`radiomics_process_pool`) to run on instead of starting one.

    Returns:
        ``(names, features)`` with ``features`` ``(N, F)`` float64.
    """
    cfg = _as_config(config)
    vols = np.asarray(volumes)
    if vols.ndim == 5:
        vols = vols[:, 0]
    m = np.asarray(mask).astype(bool)
    if m.ndim == 5:
        m = m[:, 0]
    n = vols.shape[0]
    masks = [m] * n if m.ndim == 3 else list(m)
    jobs = [(vols[i], masks[i], voxel_size, cfg) for i in range(n)]
    if workers <= 1 or n <= 1:
        rows = [_extract_one(j) for j in jobs]
    elif executor is not None:
        rows = list(executor.map(_extract_one, jobs, chunksize=max(1, n // (4 * workers))))
    else:
        with ProcessPoolExecutor(max_workers=min(workers, n), mp_context=_mp_context(),
                                 initializer=_worker_init) as ex:
            rows = list(ex.map(_extract_one, jobs, chunksize=max(1, n // (4 * workers))))
    if not rows:
        return [], np.zeros((0, 0))
    names = list(rows[0])
    return names, np.array([[r[k] for k in names] for r in rows], dtype=np.float64)


# ----------------------------------------------------------------------------------------------
# FRD and effect sizes
# ----------------------------------------------------------------------------------------------

@dataclass
class Standardiser:
    """z-scoring by the reference set's mean and (population) std, keeping informative features."""

    mean: np.ndarray
    std: np.ndarray
    keep: np.ndarray  # bool (F,)

    @classmethod
    def fit(cls, reference: np.ndarray, *others: np.ndarray) -> "Standardiser":
        """Fit on ``reference``; a feature is kept when it is finite in every given set and not
        constant in the reference (std above ``1e-12`` relative to its mean)."""
        ref = np.asarray(reference, dtype=np.float64)
        mean = ref.mean(0)
        std = ref.std(0)  # ddof=0, like frd-score's np.nanstd
        keep = np.isfinite(ref).all(0) & (std > 1e-12 * np.maximum(1.0, np.abs(mean)))
        for o in others:
            keep &= np.isfinite(np.asarray(o, dtype=np.float64)).all(0)
        return cls(mean=mean, std=std, keep=keep)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        return (x[:, self.keep] - self.mean[self.keep]) / self.std[self.keep]


def frd(features_a, features_reference, *, standardiser: Standardiser | None = None) -> float:
    """Fréchet Radiomics Distance (Osuala et al.) between a feature set and the reference set.

    Args:
        features_a: ``(N, F)`` radiomics features (e.g. generated).
        features_reference: ``(M, F)`` features of the reference set; their mean/std standardise
            both sets (FRD's "first set" normalisation).
        standardiser: a fitted :class:`Standardiser` to reuse (e.g. across bootstrap resamples).

    Returns:
        The squared Fréchet distance between the standardised sets (0 for identical sets).
    """
    a = np.asarray(features_a, dtype=np.float64)
    r = np.asarray(features_reference, dtype=np.float64)
    st = standardiser or Standardiser.fit(r, a)
    if not st.keep.any():
        raise ValueError("FRD: no feature is finite and non-constant in the reference set")
    return frechet_distance_from_features(st(a), st(r))


def cohens_d(a, b) -> np.ndarray:
    """Per-feature Cohen's d of ``a`` against ``b``: ``(mean_a - mean_b) / pooled_sd``, pooled sd with
    ``n - 1`` weights (Cohen 1988). Features with zero pooled sd give 0 (equal means) or ±inf."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    na, nb = a.shape[0], b.shape[0]
    if na < 2 or nb < 2:
        raise ValueError("Cohen's d needs at least 2 samples per set")
    va, vb = a.var(0, ddof=1), b.var(0, ddof=1)
    sd = np.sqrt(((na - 1) * va + (nb - 1) * vb) / (na + nb - 2))
    diff = a.mean(0) - b.mean(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        d = diff / sd
    d[(sd == 0) & (diff == 0)] = 0.0
    return d


def top_effects(d: np.ndarray, names: Sequence[str], k: int = 10) -> list[dict]:
    """The ``k`` features with the largest ``|d|`` (finite first), as ``[{feature, d}]``."""
    d = np.asarray(d, dtype=np.float64)
    key = np.where(np.isfinite(d), np.abs(d), np.inf)
    order = np.argsort(-key, kind="stable")[:k]
    return [{"feature": names[i], "d": float(d[i])} for i in order]
