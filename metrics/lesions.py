"""Lesion and deep grey-matter conformance: does a generated volume have the white-matter lesions and the
thalamus / caudate its prompt asked for?

Prompts such as "FLAIR brain MRI of a 34-year-old woman with 12 white-matter lesions (7 periventricular,
3 juxtacortical, 2 deep white-matter), total lesion volume 8.4 mL ... thalamus 19.8 mL" state lesion
counts, classes and volume (:func:`cohorts.captions.parse_lesions`) and deep grey-matter volumes. The
lesions of each generated volume are segmented by the shipped network (:mod:`metrics.lesionseg`) and
measured (:mod:`metrics.functional.lesions`); the deep grey matter by atlas-guided partial volumes.

Sub-results (suite key ``lesion_conformance``), each with a paired bootstrap CI over prompts and the
same measurement of the caption's own real volume as the floor (the measurement's ceiling):

- ``count_r`` / ``count_mae``: requested vs measured number of lesions;
- ``volume_r`` / ``volume_mae``: requested vs measured total lesion volume (mL);
- ``location_accuracy``: per prompt with lesions, the overlap of the requested and measured class
  mixes, ``sum_c min(p_c, q_c)`` over the shares of periventricular / juxtacortical / deep /
  infratentorial lesions (1: the same mix; 0 when no lesion was found);
- ``thalamus_r`` / ``_mae``, ``caudate_r`` / ``_mae``: requested volume (mL) vs the volume predicted
  from atlas-guided grey-matter partial volumes by a per-modality ridge fitted on the reference's
  training split (:func:`~metrics.functional.lesions.deep_grey_features`; as the ``conformance``
  metric's structure volumes are).

Lesion results use the prompts of FLAIR, T2 and PD volumes only: on T1, lesions are near-isointense to
white matter and the segmentation does not claim to see them (validation in ``docs/cohorts.md``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from metrics.base import EvalSets, Input, Metric, MetricResult
from metrics.conformance import score_continuous, score_mean
from metrics.functional.conformance import fit_ridge, predict_ridge
from metrics.functional.lesions import (ZONES, DeepGreyRegions, deep_grey_features, deep_grey_regions,
                                        lesion_summary, zone_shares)

__all__ = ["LESION_MODALITIES", "LesionConformance", "LesionMeasurer"]

#: modalities on which lesions are measured
LESION_MODALITIES = ("FLAIR", "T2", "PD")


class LesionMeasurer:
    """The segmentation network and the atlas regions, applied shard by shard in this process.

    Args:
        weights: lesion-segmentation weights (default: the shipped ones, sha256-checked).
    """

    def __init__(self, weights: str | Path | None = None):
        self.weights = None if weights is None else str(weights)
        self._net = None
        self._feature_regions: tuple[int, list[DeepGreyRegions]] | None = None

    def net(self):
        if self._net is None:
            from metrics.lesionseg import load_lesion_net

            self._net = load_lesion_net(self.weights) if self.weights else load_lesion_net()
        return self._net[0]

    def info(self) -> dict:
        self.net()
        from metrics.lesionseg import WEIGHTS

        return {"weights": self.weights or str(WEIGHTS.name), "trained": {k: self._net[1].get(k) for k in
                                                                          ("trained_on", "steps", "date")}}

    def regions(self, atlas: dict) -> DeepGreyRegions:
        """The regions of :func:`deep_grey_volumes` (the structures dilated by one voxel)."""
        return self.feature_regions(atlas)[1]

    def feature_regions(self, atlas: dict) -> list[DeepGreyRegions]:
        """The regions of :func:`deep_grey_features` (dilations 0, 1, 2)."""
        if self._feature_regions is None or self._feature_regions[0] != id(atlas):
            self._feature_regions = (id(atlas), [deep_grey_regions(atlas, dilate=d) for d in (0, 1, 2)])
        return self._feature_regions[1]

    def fractions(self, volumes: np.ndarray, modalities: list[str | None], atlas: dict) -> np.ndarray:
        """Lesion fractions ``(n, D, H, W)``; zeros for volumes whose modality has no visible lesions."""
        from metrics.lesionseg import segment

        vols = np.asarray(volumes, np.float32)[:, 0]
        out = np.zeros(vols.shape, np.float32)
        ok = [i for i, m in enumerate(modalities) if m in LESION_MODALITIES]
        if ok:
            out[ok] = segment(self.net(), vols[ok], [modalities[i] for i in ok], atlas)
        return out

    def chunks(self, sets: EvalSets, name: str):
        """``(indices, volumes)`` of the named set, one shard at a time."""
        vs = sets.volume_set(name)
        for k in range(vs.n_shards):
            start, stop = vs.bounds(k)
            yield np.arange(start, stop), vs.shard(k)


def need_lesion_atlas(sets: EvalSets, who: str) -> dict:
    if sets.atlas is None or "lesion_zones" not in sets.atlas:
        raise ValueError(f"{who} needs sets.atlas with lesion_zones, thalamus and caudate "
                         "(cohorts.atlas.atlas_on_grid; the runner provides it)")
    return sets.atlas


class LesionConformance(Metric):
    """Lesion count, volume and location, and thalamus / caudate volume, requested vs measured.

    Args:
        weights: lesion-segmentation weights (default: the shipped ones).
        n_boot: bootstrap resamples for the CIs.
    """

    name = "lesion_conformance"
    axis = "conformance"
    higher_is_better = True
    inputs = frozenset({Input.ATLAS, Input.TRAIN})
    description = "lesion count / volume / location and deep grey-matter volume, requested vs measured"
    #: deep grey-matter structures scored (volumes stated in the captions)
    STRUCTURES = ("thalamus", "caudate")

    def __init__(self, *, weights: str | None = None, n_boot: int = 1000):
        self.measurer = LesionMeasurer(weights)
        self.n_boot = int(n_boot)

    def config(self) -> dict:
        return {"segmentation": "metrics.lesionseg (3D U-Net; fraction > 0.5, 6-connected components)",
                "weights": self.measurer.weights or "shipped", "lesion_modalities": list(LESION_MODALITIES),
                "location_classes": list(ZONES), "n_boot": self.n_boot,
                "floor": "the same measurement of the caption's own real volume"}

    def measure(self, sets: EvalSets, name: str) -> tuple[list[dict], np.ndarray]:
        """Per volume of the named set: its lesion summary and deep grey-matter features."""
        atlas = need_lesion_atlas(sets, self.name)
        regions = self.measurer.feature_regions(atlas)
        mods = [a.get("modality") for a in sets.attributes]
        summaries, feats = [], []
        for idx, vols in self.measurer.chunks(sets, name):
            fr = self.measurer.fractions(vols, [mods[i] for i in idx], atlas)
            summaries += [lesion_summary(f, atlas["lesion_zones"], atlas["voxel_volume_ml"]) for f in fr]
            feats.append(deep_grey_features(vols, regions))
        return summaries, np.concatenate(feats)

    def deep_grey_models(self, sets: EvalSets) -> dict:
        """Per modality (and pooled, ``None``) ridge models of the training split's true thalamus and
        caudate volumes on :func:`deep_grey_features`."""
        if sets.train is None or sets.train_attributes is None:
            raise ValueError("lesion_conformance needs the training split (sets.train, sets.train_attributes) "
                             "for its deep grey-matter volume models; the metric declares Input.TRAIN")
        regions = self.measurer.feature_regions(need_lesion_atlas(sets, self.name))
        x = np.concatenate([deep_grey_features(vols, regions) for _, vols in self.measurer.chunks(sets, "train")])
        mods = np.array([a.get("modality") for a in sets.train_attributes], dtype=object)
        models: dict = {}
        for structure in self.STRUCTURES:
            y = np.array([(a.get("volumes") or {}).get(structure, np.nan) for a in sets.train_attributes], float)
            ok = np.isfinite(y)
            if ok.sum() < 8:
                continue
            models[structure] = {None: fit_ridge(x[ok], y[ok])}
            for m in set(mods[ok]):
                sel = ok & (mods == m)
                if sel.sum() >= 8:
                    models[structure][m] = fit_ridge(x[sel], y[sel])
        return models

    @staticmethod
    def predict_grey(models: dict, structure: str, features: np.ndarray, modalities: list) -> np.ndarray:
        per = models[structure]
        return np.array([predict_ridge(per.get(m, per[None]), f[None])[0] for f, m in zip(features, modalities)])

    def compute(self, sets: EvalSets, *, seed: int) -> dict[str, MetricResult]:
        if len(sets.attributes) != sets.n:
            raise ValueError(f"{sets.n} generated volumes but {len(sets.attributes)} prompt attribute records")
        gen, gen_grey = self.measure(sets, "generated")
        ref, ref_grey = self.measure(sets, "reference")
        models = self.deep_grey_models(sets)
        mods = [a.get("modality") for a in sets.attributes]
        details = {"segmentation": self.measurer.info()}
        out: dict[str, MetricResult] = {}
        les = [a.get("lesions") or {} for a in sets.attributes]
        use = [i for i, a in enumerate(sets.attributes) if les[i] and a.get("modality") in LESION_MODALITIES]
        for key, unit, col in (("count", "lesions", "count"), ("volume", "mL", "volume_ml")):
            req = np.array([les[i].get(key, 0.0 if les[i].get("count") == 0 else np.nan) for i in use], float)
            out.update(score_continuous(key, req, np.array([gen[i][col] for i in use], float),
                                        np.array([ref[i][col] for i in use], float), unit=unit, n_boot=self.n_boot,
                                        seed=seed, details=details))
        with_classes = [i for i in use if zone_shares(les[i]) is not None]
        if with_classes:
            def agreement(summary: dict, i: int) -> float:
                q = zone_shares(summary)
                return 0.0 if q is None else float(np.minimum(zone_shares(les[i]), q).sum())

            out["location_accuracy"] = score_mean(
                [agreement(gen[i], i) for i in with_classes], [agreement(ref[i], i) for i in with_classes],
                higher_is_better=True, n_boot=self.n_boot, seed=seed,
                details={"definition": "sum over classes of min(requested share, measured share); 0 without "
                                       "measured lesions", "classes": list(ZONES), **details})
        for structure in models:
            req = np.array([(a.get("volumes") or {}).get(structure, np.nan) for a in sets.attributes], float)
            out.update(score_continuous(
                structure, req, self.predict_grey(models, structure, gen_grey, mods),
                self.predict_grey(models, structure, ref_grey, mods), unit="mL", n_boot=self.n_boot, seed=seed,
                details={"measured": "per-modality ridge on atlas-guided grey-matter partial volumes, fitted on "
                                     "the training split"}))
        if not out:
            raise ValueError("no prompt states lesions (on FLAIR, T2 or PD) or a thalamus / caudate volume: "
                             "lesion conformance has nothing to score (suites of phantom-ms captions do)")
        return out
