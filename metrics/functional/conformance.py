"""Attribute predictors for prompt conformance: atlas-guided measurements + small fitted models.

A text-conditioned generator is asked for a modality, a sex, an age and structure volumes. To check
what it produced, each volume is *measured* in atlas space and the measurements are mapped to the
requested attributes by predictors fitted on real training volumes:

1. **Measurements** (:func:`measure`). Tissue intensities are the medians in conservative atlas cores
   (:mod:`metrics.functional.tissue`). Every voxel of the (dilated) atlas brain is then given
   partial-volume fractions of background / CSF / GM / WM by linear interpolation between the two
   class means that bracket its intensity — the "mixel" model of partial-volume segmentation
   (Santago & Gage 1993, IEEE TMI 12(3); Shattuck et al. 2001, NeuroImage 13(5)) with per-volume
   class means, i.e. nearest-mean classification made soft. Summing fractions gives total GM, WM,
   CSF and intracranial volume; CSF (+ background-like) fractions inside the dilated atlas lateral
   ventricles give the ventricular volume; GM fractions inside the dilated atlas hippocampi give the
   hippocampal volume.
2. **Predictors** (:class:`ConformancePredictors`), fitted on the reference cohort's training split:
   a multinomial logistic regression on tissue-contrast features for the modality; and, per modality
   (contrast changes how partial volumes bias the raw measurements), ridge regressions from the
   standardised measurements to age and to each structure volume, and an L2 logistic regression for
   sex. Ridge penalties are chosen by exact leave-one-out error (Hastie, Tibshirani & Friedman 2009,
   ESL §7.10, eq. 7.52). Raw measurements are biased at 3 mm (partial volumes, FLAIR's dark CSF);
   the per-modality linear calibration removes most of that bias, which is why it is used.

Everything is numpy/scipy; fitted predictors serialise to plain JSON (no pickle), so they can be
cached on disk content-addressed by the training data and :data:`PREDICTOR_VERSION`.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from scipy import ndimage, optimize

from metrics.functional.tissue import core_masks, tissue_means

PREDICTOR_VERSION = "conformance-1"
MODALITIES = ("T1", "T2", "PD", "FLAIR")
#: Structures the predictors measure. "hippocampus" = left + right.
VOLUME_TARGETS = ("lateral_ventricles", "hippocampus", "gm", "wm", "csf", "icv")
#: Names of the measurement columns returned by :func:`measure`.
MEASUREMENTS = ("int_csf", "int_gm", "int_wm", "lateral_ventricles", "hippocampus", "gm", "wm", "csf", "icv")
_VOLUME_COLS = slice(3, 9)
RIDGE_ALPHAS = tuple(10.0 ** k for k in np.arange(-3, 3.01, 0.5))


class ConformanceError(ValueError):
    """Inputs the conformance predictors cannot use; the message says what to provide."""


# ----------------------------------------------------------------------------------- atlas
@dataclass(frozen=True)
class AtlasRegions:
    """Atlas-derived regions on the working grid, computed once per grid.

    Attributes:
        cores: conservative CSF/GM/WM cores for the per-volume tissue means.
        support: dilated atlas brain (where partial volumes are summed).
        ventricles: dilated lateral-ventricle region.
        hippocampus: dilated hippocampus region.
        voxel_volume_ml: volume of one voxel.
        fingerprint: sha256 of the arrays above (part of predictor cache keys).
    """

    cores: dict
    support: np.ndarray
    ventricles: np.ndarray
    hippocampus: np.ndarray
    voxel_volume_ml: float
    fingerprint: str


def atlas_regions(atlas: dict, *, support_dilate: int = 2, ventricle_dilate: int = 2,
                  hippocampus_dilate: int = 1) -> AtlasRegions:
    """Regions from an atlas dict as the runner provides it in ``sets.atlas``.

    Args:
        atlas: ``{"gm", "wm", "csf"}`` tissue probabilities (D, H, W), ``"ventricles"`` (lateral
            ventricle mask), ``"labels"`` (Neuromorphometrics ids, for the hippocampi 47/48, or a
            ``"hippocampus"`` mask) and ``"voxel_volume_ml"``.
        support_dilate, ventricle_dilate, hippocampus_dilate: dilations in voxels (room for
            subjects larger than the atlas and for enlarged ventricles).

    Raises:
        ConformanceError: a key is missing.
    """
    need = ("gm", "wm", "csf", "ventricles", "voxel_volume_ml")
    missing = [k for k in need if k not in atlas]
    if "hippocampus" not in atlas and "labels" not in atlas:
        missing.append("labels (or hippocampus)")
    if missing:
        raise ConformanceError(f"sets.atlas lacks {missing}; the runner must pass the atlas priors on "
                               "the suite grid (cohorts.atlas.load_priors) as {gm, wm, csf, ventricles, labels, "
                               "voxel_volume_ml}")
    gm, wm, csf = (np.asarray(atlas[k], np.float32) for k in ("gm", "wm", "csf"))
    vent = np.asarray(atlas["ventricles"], bool)
    hippo = (np.asarray(atlas["hippocampus"], bool) if "hippocampus" in atlas
             else np.isin(np.asarray(atlas["labels"]), (47, 48)))
    brain = (gm + wm + csf) > 0.5
    support = ndimage.binary_dilation(brain, iterations=support_dilate)
    vroi = ndimage.binary_dilation(vent, iterations=ventricle_dilate)
    hroi = ndimage.binary_dilation(hippo, iterations=hippocampus_dilate)
    cores = core_masks(gm, wm, vent)
    h = hashlib.sha256(PREDICTOR_VERSION.encode())
    for a in (support, vroi, hroi, cores["csf"], cores["gm"], cores["wm"]):
        h.update(np.packbits(a).tobytes())
        h.update(str(a.shape).encode())
    h.update(f"{float(atlas['voxel_volume_ml']):.9g}".encode())
    return AtlasRegions(cores, support, vroi, hroi, float(atlas["voxel_volume_ml"]), h.hexdigest())


# ----------------------------------------------------------------------------------- measuring
def pv_fractions(values: np.ndarray, means: Sequence[float]) -> np.ndarray:
    """Partial-volume fractions (len(values), K) of K classes with intensity ``means``.

    A value between the two nearest class means (in intensity order) is split linearly between them;
    values beyond the extreme means belong wholly to the extreme class. Rows sum to 1.
    """
    m = np.asarray(means, np.float64)
    order = np.argsort(m, kind="stable")
    ms = m[order].copy()
    for i in range(1, len(ms)):  # strictly increasing for interpolation
        ms[i] = max(ms[i], ms[i - 1] + 1e-6)
    t = np.interp(np.asarray(values, np.float64), ms, np.arange(len(ms), dtype=np.float64))
    lo = np.floor(t).astype(int)
    frac = t - lo
    hi = np.minimum(lo + 1, len(ms) - 1)
    out_sorted = np.zeros((len(t), len(ms)))
    np.add.at(out_sorted, (np.arange(len(t)), lo), 1.0 - frac)
    np.add.at(out_sorted, (np.arange(len(t)), hi), frac)
    out = np.empty_like(out_sorted)
    out[:, order] = out_sorted
    return out


def measure(volumes: np.ndarray, regions: AtlasRegions) -> np.ndarray:
    """Atlas-guided measurements (N, len(MEASUREMENTS)) of volumes (N, 1, D, H, W).

    Columns: tissue intensities (median in the CSF/GM/WM cores), then volumes in mL of the lateral
    ventricles, hippocampi, total GM, WM, CSF and the intracranial volume (partial-volume sums over
    background / CSF / GM / WM with per-volume class means; background mean 0).
    """
    v = np.asarray(volumes, np.float32)
    if v.ndim != 5 or v.shape[1] != 1:
        raise ConformanceError(f"volumes must be (N, 1, D, H, W), got {v.shape}")
    if v.shape[2:] != regions.support.shape:
        raise ConformanceError(f"volumes of shape {v.shape[2:]} but atlas regions of shape "
                               f"{regions.support.shape}; pass the atlas on the suite grid")
    means = tissue_means(v, regions.cores)
    vox = regions.voxel_volume_ml
    out = np.zeros((v.shape[0], len(MEASUREMENTS)))
    sup = regions.support
    vent_in = regions.ventricles[sup]
    hip_in = regions.hippocampus[sup]
    for i, x in enumerate(v[:, 0]):
        mc, mg, mw = (float(means[t][i]) for t in ("csf", "gm", "wm"))
        f = pv_fractions(x[sup], (0.0, mc, mg, mw))  # bg, csf, gm, wm
        vent = (f[vent_in, 0] + f[vent_in, 1]).sum() * vox  # no background inside the ventricles
        hippo = f[hip_in, 2].sum() * vox
        gm, wm, csf = f[:, 2].sum() * vox, f[:, 3].sum() * vox, f[:, 1].sum() * vox
        out[i] = (mc, mg, mw, vent, hippo, gm, wm, csf, gm + wm + csf)
    return out


def targets_from_attributes(attrs: Sequence[dict]) -> dict[str, np.ndarray]:
    """Requested values per target (NaN where a prompt does not state it).

    Keys: "modality" (object array), "sex" (1.0 = F, 0.0 = M), "age" and each of
    :data:`VOLUME_TARGETS` ("hippocampus" = left + right, only when both are given).
    """
    n = len(attrs)
    out: dict[str, np.ndarray] = {"modality": np.array([a.get("modality") for a in attrs], dtype=object),
                                  "sex": np.full(n, np.nan), "age": np.full(n, np.nan)}
    for k in VOLUME_TARGETS:
        out[k] = np.full(n, np.nan)
    for i, a in enumerate(attrs):
        if a.get("sex") in ("F", "M"):
            out["sex"][i] = 1.0 if a["sex"] == "F" else 0.0
        if a.get("age") is not None:
            out["age"][i] = float(a["age"])
        vols = a.get("volumes") or {}
        for k in VOLUME_TARGETS:
            if k == "hippocampus":
                if "hippocampus_left" in vols and "hippocampus_right" in vols:
                    out[k][i] = float(vols["hippocampus_left"]) + float(vols["hippocampus_right"])
            elif k in vols and vols[k] is not None:
                out[k][i] = float(vols[k])
    return out


# ----------------------------------------------------------------------------------- models
@dataclass
class Standardiser:
    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray) -> "Standardiser":
        return cls(x.mean(0), np.maximum(x.std(0), 1e-9))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean) / self.std


def fit_ridge(x: np.ndarray, y: np.ndarray, alphas: Sequence[float] = RIDGE_ALPHAS) -> dict:
    """Ridge regression on standardised features, penalty chosen by exact leave-one-out error.

    LOO residuals of a linear smoother are ``(y - ŷ) / (1 - H_ii)`` (ESL eq. 7.52), so every alpha
    costs one SVD-based solve. The intercept is not penalised (features and target are centred).

    Returns:
        ``{"mean", "std", "coef", "intercept", "alpha", "loo_rmse"}`` (plain lists/floats).
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    st = Standardiser.fit(x)
    z = st(x)
    ym = float(y.mean())
    yc = y - ym
    n = len(y)
    u, s, vt = np.linalg.svd(z, full_matrices=False)
    best = None
    for a in alphas:
        d = s / (s**2 + a)
        coef = vt.T @ (d * (u.T @ yc))
        h = (u**2 * (s**2 / (s**2 + a))).sum(1) + 1.0 / n  # + intercept's leverage
        resid = (yc - z @ coef) / np.maximum(1.0 - h, 1e-6)
        rmse = float(np.sqrt(np.mean(resid**2)))
        if best is None or rmse < best[0] - 1e-12:
            best = (rmse, a, coef)
    rmse, a, coef = best  # type: ignore[misc]
    return {"mean": st.mean.tolist(), "std": st.std.tolist(), "coef": coef.tolist(), "intercept": ym,
            "alpha": float(a), "loo_rmse": rmse}


def predict_ridge(model: dict, x: np.ndarray) -> np.ndarray:
    z = (np.asarray(x, np.float64) - np.asarray(model["mean"])) / np.asarray(model["std"])
    return z @ np.asarray(model["coef"]) + model["intercept"]


def fit_logistic(x: np.ndarray, labels: Sequence[str], *, l2: float = 1.0) -> dict:
    """Multinomial (softmax) logistic regression with an L2 penalty, fitted by L-BFGS.

    Two classes are a special case of the same parametrisation. Deterministic (zero start).

    Returns:
        ``{"classes", "mean", "std", "W", "b", "l2", "train_accuracy"}``.
    """
    x = np.asarray(x, np.float64)
    labels = [str(v) for v in labels]
    classes = sorted(set(labels))
    if len(classes) < 2:
        return {"classes": classes, "mean": x.mean(0).tolist(), "std": np.ones(x.shape[1]).tolist(),
                "W": np.zeros((x.shape[1], 1)).tolist(), "b": [0.0], "l2": l2, "train_accuracy": 1.0}
    st = Standardiser.fit(x)
    z = st(x)
    y = np.array([classes.index(v) for v in labels])
    n, d = z.shape
    k = len(classes)
    onehot = np.eye(k)[y]

    def loss(theta):
        w = theta[: d * k].reshape(d, k)
        b = theta[d * k:]
        logits = z @ w + b
        logits -= logits.max(1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
        p = np.exp(logp)
        f = -(onehot * logp).sum() / n + 0.5 * l2 * (w**2).sum() / n
        gw = z.T @ (p - onehot) / n + l2 * w / n
        gb = (p - onehot).sum(0) / n
        return f, np.concatenate([gw.ravel(), gb])

    res = optimize.minimize(loss, np.zeros(d * k + k), jac=True, method="L-BFGS-B",
                            options={"maxiter": 500})
    w = res.x[: d * k].reshape(d, k)
    b = res.x[d * k:]
    model = {"classes": classes, "mean": st.mean.tolist(), "std": st.std.tolist(), "W": w.tolist(),
             "b": b.tolist(), "l2": l2}
    model["train_accuracy"] = float(np.mean(predict_logistic(model, x) == np.array(labels, dtype=object)))
    return model


def logistic_proba(model: dict, x: np.ndarray) -> np.ndarray:
    z = (np.asarray(x, np.float64) - np.asarray(model["mean"])) / np.asarray(model["std"])
    logits = z @ np.asarray(model["W"]) + np.asarray(model["b"])
    logits -= logits.max(1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(1, keepdims=True)


def predict_logistic(model: dict, x: np.ndarray) -> np.ndarray:
    classes = np.array(model["classes"], dtype=object)
    if len(classes) == 1:
        return np.array([classes[0]] * len(x), dtype=object)
    return classes[np.argmax(logistic_proba(model, x), 1)]


# ----------------------------------------------------------------------------------- predictors
def contrast_features(m: np.ndarray) -> np.ndarray:
    """Modality features from measurement rows: the three tissue intensities and their log ratios."""
    ic, ig, iw = (np.maximum(m[:, j], 1e-4) for j in range(3))
    return np.stack([ic, ig, iw, np.log(ic / iw), np.log(ig / iw), np.log(ic / ig)], 1)


def volume_features(m: np.ndarray) -> np.ndarray:
    """Anatomy features from measurement rows: the six measured volumes (mL)."""
    return np.asarray(m[:, _VOLUME_COLS], np.float64)


@dataclass
class ConformancePredictors:
    """Fitted attribute predictors (see the module docstring). Serialises to JSON."""

    modality: dict
    per_modality: dict[str, dict[str, Any]]
    pooled: dict[str, Any]
    meta: dict = field(default_factory=dict)

    # -------------------------------------------------------------- fitting
    @classmethod
    def fit(cls, measurements: np.ndarray, attributes: Sequence[dict], *, min_per_modality: int = 12,
            meta: dict | None = None) -> "ConformancePredictors":
        """Fit on measurements of training volumes and their true attributes.

        Args:
            measurements: (M, len(MEASUREMENTS)) from :func:`measure`.
            attributes: M attribute dicts (modality, age, sex, volumes).
            min_per_modality: below this many training volumes of a modality, its age/sex/volume models
                fall back to the pooled (all-modality) models.
            meta: provenance stored with the predictors.
        """
        m = np.asarray(measurements, np.float64)
        if len(m) != len(attributes):
            raise ConformanceError(f"{len(m)} training measurements but {len(attributes)} attribute records")
        tg = targets_from_attributes(attributes)
        mods = tg["modality"]
        ok = np.array([x in MODALITIES for x in mods])
        if ok.sum() < 4:
            raise ConformanceError("fewer than 4 training volumes with a known modality; the conformance "
                                   "predictors need the reference cohort's training split with its attributes")
        modality = fit_logistic(contrast_features(m[ok]), list(mods[ok]))
        pooled = cls._fit_group(m, tg)
        per = {}
        for mod in MODALITIES:
            sel = mods == mod
            if sel.sum() >= min_per_modality:
                per[mod] = cls._fit_group(m[sel], {k: v[sel] for k, v in tg.items()})
        return cls(modality, per, pooled, dict(meta or {}) | {"version": PREDICTOR_VERSION,
                                                              "n_train": int(len(m)),
                                                              "n_per_modality": {mod: int((mods == mod).sum())
                                                                                 for mod in MODALITIES}})

    @staticmethod
    def _fit_group(m: np.ndarray, tg: dict[str, np.ndarray]) -> dict[str, Any]:
        feats = volume_features(m)
        out: dict[str, Any] = {}
        for k in ("age", *VOLUME_TARGETS):
            y = tg[k]
            sel = np.isfinite(y)
            if sel.sum() >= 5:
                out[k] = fit_ridge(feats[sel], y[sel])
        sel = np.isfinite(tg["sex"])
        if sel.sum() >= 5 and len(set(tg["sex"][sel])) == 2:
            out["sex"] = fit_logistic(feats[sel], ["F" if s == 1.0 else "M" for s in tg["sex"][sel]])
        return out

    # -------------------------------------------------------------- predicting
    def predict(self, measurements: np.ndarray) -> dict[str, np.ndarray]:
        """Predicted attributes: "modality" (object array), "sex" (1.0 = F), "age", each volume target.

        Age, sex and volume models are those of the *predicted* modality: the image is measured as
        what it looks like, not as what was asked for.
        """
        m = np.asarray(measurements, np.float64)
        n = len(m)
        mod = predict_logistic(self.modality, contrast_features(m)) if n else np.array([], dtype=object)
        out: dict[str, np.ndarray] = {"modality": mod, "sex": np.full(n, np.nan), "age": np.full(n, np.nan)}
        for k in VOLUME_TARGETS:
            out[k] = np.full(n, np.nan)
        feats = volume_features(m)
        for i in range(n):
            group = self.per_modality.get(str(mod[i]), self.pooled)
            for k in ("age", *VOLUME_TARGETS):
                model = group.get(k) or self.pooled.get(k)
                if model is not None:
                    out[k][i] = float(predict_ridge(model, feats[i:i + 1])[0])
            sex_model = group.get("sex") or self.pooled.get("sex")
            if sex_model is not None:
                out["sex"][i] = 1.0 if predict_logistic(sex_model, feats[i:i + 1])[0] == "F" else 0.0
        return out

    # -------------------------------------------------------------- io
    def to_json(self) -> str:
        return json.dumps({"modality": self.modality, "per_modality": self.per_modality, "pooled": self.pooled,
                           "meta": self.meta}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ConformancePredictors":
        d = json.loads(text)
        if d.get("meta", {}).get("version") != PREDICTOR_VERSION:
            raise ConformanceError(f"cached predictors have version {d.get('meta', {}).get('version')!r}, "
                                   f"expected {PREDICTOR_VERSION!r}; delete the cache entry to refit")
        return cls(d["modality"], d["per_modality"], d["pooled"], d.get("meta", {}))


# ----------------------------------------------------------------------------------- scores
def pearson_r(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson's r; NaN with fewer than 3 pairs or a constant side (std < 1e-12). Written out rather
    than through ``np.corrcoef``: the bootstrap calls it thousands of times per run."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    n = len(a)
    if n < 3:
        return float("nan")
    a = a - a.mean()
    b = b - b.mean()
    saa, sbb = float(a @ a), float(b @ b)
    if saa < n * 1e-24 or sbb < n * 1e-24:  # population std < 1e-12
        return float("nan")
    return float(np.clip((a @ b) / np.sqrt(saa * sbb), -1.0, 1.0))


def safe_float(x) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None
