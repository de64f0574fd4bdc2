"""Reference captioners: ``nearest-caption`` (retrieval) and ``cohort-prior`` (the floor).

- ``nearest-caption``: the caption of the training volume nearest in a feature extractor's space
  (cosine of z-scored features; ``deepbet`` by default) — the report-generation counterpart of the
  ``retrieval`` generator, and what a retrieval-based report generator does (Jeong et al. 2024).
  Its words are always a real caption's; its numbers are another subject's.
- ``cohort-prior``: the modality predicted from tissue contrast, then the most typical training
  caption of that modality (the subject nearest to the modality's median attributes) for every
  volume: a report that ignores everything but the contrast.
"""

from __future__ import annotations

import numpy as np

from captioners.base import CaptionerContext, read_in_chunks
from captioners.measure import MeasuredPredictors


class NearestCaption:
    """The caption of the nearest training volume in an extractor's feature space.

    Args:
        context: runner context (the train split is the retrieval pool; ``context.extractor`` builds
            the features).
        extractor: registered feature extractor (see ``ls extractors``).
    """

    name = "nearest-caption"

    def __init__(self, context: CaptionerContext, *, extractor: str = "deepbet"):
        if context.extractor is None:
            raise ValueError("nearest-caption needs the runner's feature extractors (CaptionerContext.extractor)")
        self.ctx, self.extractor = context, extractor
        self.features = context.extractor(extractor)
        self.pool = sorted(context.cohort.split("train"), key=lambda s: s.subject_id)
        if not self.pool:
            raise ValueError(f"nearest-caption: cohort {context.cohort.name!r} has an empty train split")
        feats = read_in_chunks(context.cohort, self.pool, self.features).astype(np.float64)
        self.mean, self.std = feats.mean(0), feats.std(0) + 1e-8
        self.pool_unit = self._unit(feats)

    def _unit(self, feats: np.ndarray) -> np.ndarray:
        z = (np.asarray(feats, np.float64) - self.mean) / self.std
        return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)

    def nearest(self, volumes: np.ndarray) -> np.ndarray:
        """Index into the pool of each volume's nearest training volume."""
        return np.argmax(self._unit(self.features(volumes)) @ self.pool_unit.T, axis=1)

    def describe(self, volumes: np.ndarray, *, seed: int) -> list[str]:
        return [self.pool[j].caption for j in self.nearest(volumes)]

    def info(self) -> dict:
        return {"role": "baseline", "description": f"caption of the nearest training volume ({self.extractor} features, "
                                                   "z-scored, cosine)", "extractor": self.extractor,
                "pool_size": len(self.pool)}


def typical_subject(subjects: list) -> object:
    """The subject nearest (sum of |z|) to the median age and median structure volumes of ``subjects``."""
    keys = sorted(set.intersection(*(set(s.volumes) for s in subjects))) if subjects else []
    rows = np.array([[s.age if s.age is not None else np.nan] + [s.volumes[k] for k in keys] for s in subjects], float)
    med = np.nanmedian(rows, axis=0)
    spread = np.nanstd(rows, axis=0) + 1e-9
    dist = np.nansum(np.abs(rows - med) / spread, axis=1)
    return subjects[int(np.argmin(dist))]


class CohortPrior:
    """The most typical training caption of the predicted modality (see the module docstring).

    Args:
        context: runner context (the train split gives the typical captions and fits the modality
            classifier).
    """

    name = "cohort-prior"

    def __init__(self, context: CaptionerContext):
        self.models = MeasuredPredictors(context)
        by_mod: dict[str, list] = {}
        for s in self.models.train:
            by_mod.setdefault(s.modality, []).append(s)
        self.typical = {m: typical_subject(v) for m, v in sorted(by_mod.items())}
        self.fallback = typical_subject(self.models.train)

    def describe(self, volumes: np.ndarray, *, seed: int) -> list[str]:
        mods = self.models.predict(volumes)["modality"]
        return [self.typical.get(str(m), self.fallback).caption for m in mods]

    def info(self) -> dict:
        return {"role": "baseline", "description": "the most typical training caption of the predicted modality",
                "typical_subjects": {m: s.subject_id for m, s in self.typical.items()}}
