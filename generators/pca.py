"""`pca`: a conditional statistical appearance model — the classical baseline a deep generator must beat.

Per modality, the training volumes (inside the union of their brain supports) are reduced by PCA
(the appearance half of an active appearance model, Cootes, Edwards & Taylor 2001, IEEE TPAMI
23(6); shape needs no model here because every volume is already in atlas space). The PCA
coefficients are regressed on the caption attributes (z-scored age, sex, and every structure volume
the caption states) by ridge regression with the penalty chosen by exact leave-one-out error
(Hastie et al. 2009, ESL eq. 7.52). A sample is

    x = mean + (W a + b + sigma_res * z) V,      z ~ N(0, I) seeded per sample,

with ``a`` the prompt's attribute vector, ``sigma_res`` the leave-one-out residual standard deviation
of each coefficient (the variation the attributes do not explain) and ``V`` the components. It is
linear, fits in seconds, and follows age/sex/volume requests as far as a linear model of the
training set can; its samples are blurrier than real volumes (few components, Gaussian residuals).
"""

from __future__ import annotations

import logging
import math
from typing import Sequence

import numpy as np

from cohorts.subject import MODALITIES, STRUCTURES
from generators.base import GenerationOutput, GeneratorContext, Prompt, seed_for

logger = logging.getLogger(__name__)

RIDGE_ALPHAS = tuple(10.0 ** k for k in np.arange(-2, 4.01, 0.5))
POOLED = "*"


def attribute_vector(attrs: dict, stats: dict[str, tuple[float, float]]) -> np.ndarray:
    """(1 + 1 + len(STRUCTURES),) features: z-scored age, sex (+1 F / -1 M / 0 unknown), z-scored
    structure volumes (0 = the training mean when a caption does not state one)."""
    out = np.zeros(2 + len(STRUCTURES))
    age = attrs.get("age")
    if age is not None and math.isfinite(float(age)):
        out[0] = (float(age) - stats["age"][0]) / stats["age"][1]
    out[1] = {"F": 1.0, "M": -1.0}.get(attrs.get("sex"), 0.0)
    vols = attrs.get("volumes") or {}
    for j, k in enumerate(STRUCTURES):
        v = vols.get(k)
        if v is not None and math.isfinite(float(v)):
            out[2 + j] = (float(v) - stats[k][0]) / stats[k][1]
    return np.clip(out, -5, 5)


def ridge_multi(a: np.ndarray, c: np.ndarray, alphas: Sequence[float] = RIDGE_ALPHAS):
    """Multi-output ridge ``c ≈ a W + b`` with one alpha chosen by mean leave-one-out error.

    Returns ``(W, b, alpha, loo_residuals)``.
    """
    am, cm = a.mean(0), c.mean(0)
    ac, cc = a - am, c - cm
    n = len(a)
    u, s, vt = np.linalg.svd(ac, full_matrices=False)
    best = None
    for alpha in alphas:
        d = s / (s**2 + alpha)
        w = vt.T @ (d[:, None] * (u.T @ cc))
        h = (u**2 * (s**2 / (s**2 + alpha))).sum(1) + 1.0 / n
        resid = (cc - ac @ w) / np.maximum(1.0 - h, 1e-6)[:, None]
        err = float(np.mean(resid**2))
        if best is None or err < best[0] - 1e-12:
            best = (err, alpha, w, resid)
    _, alpha, w, resid = best  # type: ignore[misc]
    return w, cm - am @ w, float(alpha), resid


class PCAGenerator:
    """Conditional PCA appearance model fitted on the reference cohort's training split.

    Args:
        context: runner context (the train split is the only data used).
        n_components: PCA components per modality (capped at n_train - 1).
        noise_scale: multiplier of the residual coefficient noise (0 = the conditional mean).
    """

    name = "pca"

    def __init__(self, context: GeneratorContext, *, n_components: int = 24, noise_scale: float = 1.0):
        if n_components < 1:
            raise ValueError(f"pca: n_components must be >= 1, got {n_components}")
        if noise_scale < 0:
            raise ValueError(f"pca: noise_scale must be >= 0, got {noise_scale}")
        self.ctx, self.n_components, self.noise_scale = context, int(n_components), float(noise_scale)
        train = sorted(context.cohort.split("train"), key=lambda s: s.subject_id)
        if len(train) < 3:
            raise ValueError(f"pca: cohort {context.cohort.name!r} has {len(train)} training subjects; need >= 3")
        vols = context.cohort.load_volumes(train)[:, 0]
        self.support = (vols > 0).any(0)
        try:
            self.support |= np.asarray(context.cohort.brain_mask(), bool)
        except Exception as e:  # noqa: BLE001 - a cohort without an atlas mask: use the data's support
            logger.warning("pca: no brain mask from the cohort (%s); using the training volumes' support", e)
        x = vols[:, self.support].astype(np.float64)
        attrs = [s.attributes() for s in train]
        self.stats = self._stats(attrs)
        a = np.stack([attribute_vector(t, self.stats) for t in attrs])
        mods = np.array([s.modality for s in train])
        self.models: dict[str, dict] = {}
        for mod in (*MODALITIES, POOLED):
            sel = mods == mod if mod != POOLED else np.ones(len(train), bool)
            if sel.sum() >= 3:
                self.models[mod] = self._fit(x[sel], a[sel])
        logger.info("pca: fitted %s", {m: (v["n"], v["k"], v["alpha"]) for m, v in self.models.items()})

    @staticmethod
    def _stats(attrs: list[dict]) -> dict[str, tuple[float, float]]:
        stats = {}
        for key in ("age", *STRUCTURES):
            vals = [a.get("age") if key == "age" else (a.get("volumes") or {}).get(key) for a in attrs]
            v = np.array([float(x) for x in vals if x is not None], np.float64)
            stats[key] = (float(v.mean()), float(max(v.std(), 1e-6))) if len(v) >= 2 else (0.0, 1.0)
        return stats

    def _fit(self, x: np.ndarray, a: np.ndarray) -> dict:
        mean = x.mean(0)
        xc = x - mean
        k = int(min(self.n_components, len(x) - 1))
        u, s, vt = np.linalg.svd(xc, full_matrices=False)
        comps = vt[:k]
        coef = xc @ comps.T
        w, b, alpha, resid = ridge_multi(a, coef)
        ev = s[:k] ** 2 / max(float((s**2).sum()), 1e-12)
        fitted = a @ w + b
        r2 = 1.0 - ((coef - fitted) ** 2).sum(0) / np.maximum(((coef - coef.mean(0)) ** 2).sum(0), 1e-12)
        return {"mean": mean.astype(np.float32), "components": comps.astype(np.float32), "W": w, "b": b,
                "sigma": resid.std(0), "alpha": alpha, "n": int(len(x)), "k": k,
                "explained_variance": float(ev.sum()), "coef_r2_first5": [round(float(v), 3) for v in r2[:5]]}

    def generate(self, prompts: Sequence[Prompt], *, seed: int) -> GenerationOutput:
        """One volume per prompt; sample i uses ``seed_for(seed, i)`` (independent of batching)."""
        out = np.zeros((len(prompts), 1, *self.ctx.grid.shape), dtype=np.float32)
        for i, p in enumerate(prompts):
            attrs = p.attributes if isinstance(p, Prompt) else {}
            m = self.models.get(attrs.get("modality") or POOLED, self.models[POOLED])
            a = attribute_vector(attrs, self.stats)
            z = np.random.default_rng(seed_for(seed, i)).standard_normal(m["k"])
            c = a @ m["W"] + m["b"] + self.noise_scale * m["sigma"] * z
            vals = m["mean"] + (c @ m["components"]).astype(np.float32)
            vol = np.zeros(self.ctx.grid.shape, np.float32)
            vol[self.support] = np.clip(vals, 0.0, 1.0)
            out[i, 0] = vol
        return GenerationOutput(out)

    def info(self) -> dict:
        return {"role": "baseline", "description": "per-modality PCA appearance model; coefficients ridge-regressed on caption "
                               "attributes + seeded residual noise",
                "n_components": self.n_components, "noise_scale": self.noise_scale,
                "models": {m: {"n_train": v["n"], "components": v["k"], "ridge_alpha": v["alpha"],
                               "explained_variance": round(v["explained_variance"], 4),
                               "coef_r2_first5": v["coef_r2_first5"]} for m, v in self.models.items()},
                "attributes": ["age", "sex", *STRUCTURES]}
