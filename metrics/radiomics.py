"""Radiomics realism: the Fréchet Radiomics Distance (FRD, Osuala et al.) on pyradiomics features.

Per volume, pyradiomics (van Griethuysen et al. 2017) — the ``radiomics`` extractor, cached by content
by the runner — extracts the texture and first-order features
of :class:`metrics.functional.radiomics.RadiomicsConfig` inside the atlas brain mask, on SimpleITK
images with the grid's voxel spacing, in parallel worker processes. All features are z-scored with
the mean/std of the reference set (FRD's first-set normalisation), features constant in the
reference are dropped, and the value is the Fréchet distance between the generated and reference
sets (lower is better); the floor is FRD(floor, reference) under the same standardisation.

The CI is a two-sample bootstrap over volumes (generated and reference resampled independently)
with the standardisation held fixed at the full reference set; FD from resampled sets (duplicated
rows) is biased upwards, so, exactly as for FID (:func:`metrics.fid.fd_bootstrap_ci`), the interval
is the bias-corrected percentile interval (BC, Efron 1987) of the resamples shifted by the bootstrap
bias estimate, extended to contain the value. The floor's interval (``floor_ci``) is the same with
the floor set in place of the generated set.

The details list per-feature Cohen's d (generated vs reference) and the ten features with the
largest |d|: they say *which* property of the images is off (noise -> first-order entropy, GLCM
contrast; blur -> GLCM correlation, ...).

"""

from __future__ import annotations


from metrics.base import EvalSets, Metric, MetricResult, small_n_warning
from metrics.fid import FD_CI_METHOD, FD_CI_RESAMPLING, fd_bootstrap_ci
from metrics.functional.frechet import frechet_distance_from_features
from metrics.functional.radiomics import Standardiser, cohens_d, top_effects


class Radiomics(Metric):
    """FRD between generated and reference pyradiomics features (lower is better).

    The features come from the ``radiomics`` extractor through the runner's content-addressed cache
    (its configuration — feature classes, bin width, resampling — is set with ``--extractor-args``
    and recorded in the record's extractor fingerprint).

    Args:
        extractor: the registered radiomics extractor.
        n_boot: bootstrap resamples for the CI.
    """

    name = "radiomics"
    higher_is_better = False
    description = "Fréchet Radiomics Distance on pyradiomics features in the brain mask (Osuala et al.)"

    def __init__(self, *, extractor: str = "radiomics", n_boot: int = 200):
        self.extractor = extractor
        self.n_boot = int(n_boot)

    def extractors(self) -> list[str]:
        return [self.extractor]

    def config(self) -> dict:
        return {"extractor": self.extractor, "normalisation": "z-score by reference mean/std (ddof=0)",
                "n_boot": self.n_boot, "ci": FD_CI_METHOD + ", 95%"}

    def compute(self, sets: EvalSets, *, seed: int) -> MetricResult:
        gen, ref, flo = (sets.features(self.extractor, w) for w in ("generated", "reference", "floor"))
        names = (sets.feature_names(self.extractor) if sets.feature_names else None) or \
            [f"feature_{i}" for i in range(gen.shape[1])]
        st = Standardiser.fit(ref, gen, flo)
        kept = [nm for nm, k in zip(names, st.keep) if k]
        dropped = [nm for nm, k in zip(names, st.keep) if not k]
        if not kept:
            raise ValueError("radiomics: every feature is constant or non-finite in the reference set")
        zg, zr, zf = st(gen), st(ref), st(flo)
        value = frechet_distance_from_features(zg, zr)
        floor = frechet_distance_from_features(zf, zr)
        ci = fd_bootstrap_ci(zg, zr, n_boot=self.n_boot, seed=seed, estimate=value)
        fci = fd_bootstrap_ci(zf, zr, n_boot=self.n_boot, seed=seed, estimate=floor)
        d = cohens_d(gen[:, st.keep], ref[:, st.keep])
        warnings = small_n_warning(min(zg.shape[0], zr.shape[0]), len(kept), "radiomics FRD")
        return MetricResult(
            value=float(value), higher_is_better=False, n=int(gen.shape[0]), ci_low=ci.low, ci_high=ci.high,
            floor=float(floor), floor_ci=list(fci), warnings=warnings,
            details={**self.config(), "voxel_size": sets.voxel_size, "n_features": len(kept),
                     **ci.details(FD_CI_RESAMPLING),
                     "dropped_features": dropped, "top_effects": top_effects(d, kept, 10),
                     "cohens_d": {nm: float(x) for nm, x in zip(kept, d)}})
