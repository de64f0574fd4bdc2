"""Prompt conformance: does a generated volume have the modality, sex, age and anatomy its prompt asked for?

Attribute predictors (:mod:`metrics.functional.conformance`: atlas-guided partial-volume measurements
plus per-modality ridge / logistic models) are fitted on the reference cohort's **training split**
and applied to

- the generated volumes, scored against the attributes parsed from each prompt (``value``), and
- the caption-matched **real held-out** volumes (``sets.reference``, the test subjects whose
  captions are the prompts), scored the same way (``floor``): the predictor's own accuracy on real
  data, i.e. the ceiling a perfect generator reaches.

This is how Pinaya et al. 2022 (arXiv 2209.07162) validated their conditioned brain LDM (ventricle
volume measured by SynthSeg vs the conditioning value, r = 0.972; a brain-age predictor vs the
conditioning age, r = 0.692), with predictors trained on real data.

Sub-results (suite key ``conformance``): ``modality_accuracy``, ``sex_accuracy``, ``age_mae``,
``age_r``, and per structure ``<key>_mae`` / ``<key>_r`` (lateral ventricles, hippocampi, total GM,
WM, CSF, intracranial volume). Each has a seeded paired bootstrap CI over prompts, the
bias-corrected percentile interval (BC, Efron 1987) that contains the value, and the ceiling (floor)
has its own interval (``floor_ci``) from the same resamples of the prompts, with the real held-out
volumes in place of the generated ones. The ``*_r`` results carry per-sample ``requested`` and
``measured`` arrays for the requested-vs-measured plots.

Inputs the runner provides (see :class:`~metrics.base.EvalSets`): ``sets.train`` (training volumes),
``sets.train_attributes`` (their true attributes), ``sets.atlas`` (priors on the
grid: ``gm, wm, csf, ventricles, labels, voxel_volume_ml``) and optionally
``sets.cohort_hash`` (cache key; otherwise the training volumes' bytes are hashed, one
sha256 per volume). Fitted predictors are cached as JSON under
``$BRAINGENBENCH_HOME/cache/predictors``.

The measurements are per volume, so every set (training, generated, reference) is read one shard at
a time (:meth:`~metrics.base.EvalSets.map` of :func:`~metrics.functional.conformance.measure`);
the predictors are fitted and applied on the ``(N, len(MEASUREMENTS))`` measurement rows.
"""

from __future__ import annotations

import hashlib
import json
from functools import partial
from pathlib import Path
from typing import Sequence

import numpy as np

from core.io import atomic_write_text, home
from metrics.base import EvalSets, Input, Metric, MetricResult, log
from metrics.functional.bootstrap import BC, bootstrap_ci
from metrics.functional.conformance import (MEASUREMENTS, PREDICTOR_VERSION, VOLUME_TARGETS, AtlasRegions,
                                            ConformanceError, ConformancePredictors, atlas_regions, measure,
                                            pearson_r, targets_from_attributes)


def predictor_cache_dir() -> Path:
    """``$BRAINGENBENCH_HOME/cache/predictors`` (default home ``~/.cache/braingenbench``)."""
    return home() / "cache" / "predictors"


def volume_digests(volumes: np.ndarray) -> np.ndarray:
    """sha256 of each volume's float32 bytes, ``(n, 32)`` uint8 (a per-shard function: it pickles)."""
    v = np.ascontiguousarray(volumes, dtype=np.float32)
    return np.array([np.frombuffer(hashlib.sha256(x.tobytes()).digest(), np.uint8) for x in v],
                    dtype=np.uint8).reshape(len(v), 32)


def _hash_training(sets: EvalSets) -> str:
    cohort_hash = sets.cohort_hash
    h = hashlib.sha256()
    if cohort_hash:
        h.update(f"cohort:{cohort_hash}".encode())
    else:  # content of the training volumes, read shard by shard
        h.update(f"train-volumes:float32:{sets.train.shape}".encode())
        h.update(sets.map(volume_digests, "train").tobytes())
    h.update(json.dumps(sets.train_attributes, sort_keys=True, default=str).encode())
    return h.hexdigest()


def _conformance_r(requested: np.ndarray, measured: np.ndarray) -> float:
    """Pearson r of requested vs measured; 0 (chance) when the measurement is constant (the set
    ignores the request), NaN when the requests are constant (see :func:`pearson_r`)."""
    m = np.asarray(measured, np.float64)
    if len(m) == 0 or float(np.ptp(m)) < 1e-9:  # constant measurement (std < 1e-9 up to rounding)
        return 0.0
    return pearson_r(requested, measured)


RESAMPLING = "prompts resampled (paired: requested and measured together)"


def score_mean(per_sample: np.ndarray, floor_per_sample: np.ndarray, *, higher_is_better: bool, n_boot: int,
               seed: int, details: dict | None = None, warnings: list[str] | None = None) -> MetricResult:
    """The mean of per-prompt scores with a paired bootstrap CI, and the same for the real volumes
    (``floor`` with ``floor_ci``): accuracies, shares, identity scores."""
    g, f = np.asarray(per_sample, float), np.asarray(floor_per_sample, float)
    value, floor = float(g.mean()), float(f.mean())
    vci = bootstrap_ci(lambda s: float(g[s].mean()), len(g), n_boot=n_boot, seed=seed, estimate=value)
    fci = bootstrap_ci(lambda s: float(f[s].mean()), len(f), n_boot=n_boot, seed=seed, estimate=floor)
    return MetricResult(value=value, higher_is_better=higher_is_better, n=int(len(g)), ci_low=vci.low,
                        ci_high=vci.high, floor=floor, floor_ci=list(fci), warnings=list(warnings or []),
                        details={"per_sample": g.tolist(), "floor_per_sample": f.tolist(),
                                 **vci.details(RESAMPLING), **(details or {})})


def score_continuous(name: str, requested: np.ndarray, measured: np.ndarray, floor_measured: np.ndarray, *,
                     unit: str, n_boot: int, seed: int, details: dict | None = None) -> dict[str, MetricResult]:
    """``<name>_mae`` and ``<name>_r`` of requested vs measured values (prompts where all three are
    finite; none below 3), each with a paired bootstrap CI and the real volumes' value as the floor."""
    r, g, f = (np.asarray(a, float) for a in (requested, measured, floor_measured))
    ok = np.isfinite(r) & np.isfinite(g) & np.isfinite(f)
    if ok.sum() < 3:
        return {}
    rv, gv, fv = r[ok], g[ok], f[ok]
    common = details or {}
    chance_mae = float(np.abs(rv[:, None] - rv[None, :]).sum() / max(len(rv) * (len(rv) - 1), 1))
    mae = score_mean(np.abs(gv - rv), np.abs(fv - rv), higher_is_better=False, n_boot=n_boot, seed=seed,
                     details={"unit": unit, "chance": chance_mae,
                              "chance_definition": "mean |requested_i - requested_j|, i != j", **common})
    warnings = []
    if np.std(gv) < 1e-9:  # the set ignores the request entirely: chance level
        warnings.append(f"conformance: measured {name} is constant over the generated set; r set to 0")
    r_gen, r_floor = _conformance_r(rv, gv), _conformance_r(rv, fv)
    vci = bootstrap_ci(lambda s: _conformance_r(rv[s], gv[s]), len(rv), n_boot=n_boot, seed=seed, estimate=r_gen)
    fci = bootstrap_ci(lambda s: _conformance_r(rv[s], fv[s]), len(rv), n_boot=n_boot, seed=seed, estimate=r_floor)
    corr = MetricResult(value=r_gen, higher_is_better=True, n=int(ok.sum()), ci_low=vci.low, ci_high=vci.high,
                        floor=r_floor, floor_ci=list(fci), warnings=warnings,
                        details={"unit": unit, "requested": rv.tolist(), "measured": gv.tolist(),
                                 "floor_measured": fv.tolist(), "chance": 0.0, **vci.details(RESAMPLING), **common})
    return {f"{name}_mae": mae, f"{name}_r": corr}


class Conformance(Metric):
    """Attribute predictors on generated volumes vs the attributes parsed from the prompts.

    Args:
        structures: volume targets to score (subset of ``lateral_ventricles, hippocampus, gm, wm,
            csf, icv``; "hippocampus" = left + right).
        min_per_modality: training volumes a modality needs for its own age/sex/volume models
            (otherwise the pooled models are used).
        cache: reuse fitted predictors from ``$BRAINGENBENCH_HOME/cache/predictors``.
        n_boot: bootstrap resamples for the CIs.
    """

    axis = "conformance"
    name = "conformance"
    higher_is_better = True
    inputs = frozenset({Input.TRAIN, Input.ATLAS})
    description = "prompt conformance: attribute predictors (fitted on real training data) on generated volumes"

    def __init__(self, *, structures: Sequence[str] = VOLUME_TARGETS, min_per_modality: int = 12,
                 cache: bool = True, n_boot: int = 1000):
        bad = [s for s in structures if s not in VOLUME_TARGETS]
        if bad:
            raise ValueError(f"conformance: unknown structure(s) {bad}; choose from {', '.join(VOLUME_TARGETS)}")
        self.structures = tuple(structures)
        self.min_per_modality = int(min_per_modality)
        self.cache = bool(cache)
        self.n_boot = int(n_boot)
        self._regions: tuple[int, AtlasRegions] | None = None

    def config(self) -> dict:
        return {"predictor_version": PREDICTOR_VERSION, "structures": list(self.structures),
                "min_per_modality": self.min_per_modality, "n_boot": self.n_boot,
                "measurements": list(MEASUREMENTS),
                "models": "modality: multinomial logistic on tissue contrast; per modality: ridge (LOO alpha) "
                          "for age and volumes, L2 logistic for sex, on atlas-guided partial-volume measurements",
                "ceiling": "the same predictors on the caption-matched real held-out volumes (floor)",
                "ci": f"{BC}; prompts resampled (paired), 95%"}

    # -------------------------------------------------------------- predictors
    def regions(self, sets: EvalSets) -> AtlasRegions:
        atlas = sets.atlas
        if atlas is None:
            raise ConformanceError("conformance needs sets.atlas (atlas priors on the suite grid: gm, wm, "
                                   "csf, ventricles, labels, voxel_volume_ml); the runner provides it — when calling "
                                   "the metric directly, build it from cohorts.atlas.load_priors")
        if self._regions is None or self._regions[0] != id(atlas):
            self._regions = (id(atlas), atlas_regions(atlas))
        return self._regions[1]

    def predictors(self, sets: EvalSets) -> tuple[ConformancePredictors, dict]:
        """Fitted predictors for the training data in ``sets`` (from the cache when possible)."""
        attrs = sets.train_attributes
        if sets.train is None or attrs is None:
            raise ConformanceError("conformance needs the training split: sets.train (volumes) and "
                                   "sets.train_attributes (their true attributes: modality, age, sex, "
                                   "volumes); the metric declares Input.TRAIN and the runner loads them")
        if len(attrs) != len(sets.train):
            raise ConformanceError(f"sets.train has {len(sets.train)} volumes but train_attributes has "
                                   f"{len(attrs)} records; they must be the same subjects in the same order")
        regions = self.regions(sets)
        key = hashlib.sha256(json.dumps({"version": PREDICTOR_VERSION, "train": _hash_training(sets),
                                         "atlas": regions.fingerprint, "grid": list(sets.train.shape[2:]),
                                         "min_per_modality": self.min_per_modality}).encode()).hexdigest()
        path = predictor_cache_dir() / f"{key[:32]}.json"
        info = {"cache_key": key, "cache_path": str(path), "from_cache": False}
        if self.cache and path.exists():
            try:
                pred = ConformancePredictors.from_json(path.read_text())
                info["from_cache"] = True
                return pred, info
            except (OSError, ValueError, KeyError) as e:
                log.warning("%s: unusable cached predictors (%s); refitting", path, e)
        meas = sets.map(partial(measure, regions=regions), "train")
        pred = ConformancePredictors.fit(meas, attrs, min_per_modality=self.min_per_modality,
                                         meta={"cache_key": key, "cohort_hash": sets.cohort_hash})
        if self.cache:
            try:
                atomic_write_text(path, pred.to_json())
            except OSError as e:
                log.warning("%s: cannot cache predictors (%s); set BRAINGENBENCH_HOME to a writable folder", path, e)
        return pred, info

    # -------------------------------------------------------------- scoring
    def compute(self, sets: EvalSets, *, seed: int) -> dict[str, MetricResult]:
        if len(sets.attributes) != sets.n:
            raise ConformanceError(f"{sets.n} generated volumes but {len(sets.attributes)} prompt attribute "
                                   "records; the runner must pass the parsed prompt attributes in order")
        pred, info = self.predictors(sets)
        regions = self.regions(sets)
        req = targets_from_attributes(sets.attributes)
        per_shard = partial(measure, regions=regions)
        gen = pred.predict(sets.map(per_shard, "generated"))
        ref = pred.predict(sets.map(per_shard, "reference"))
        common = {"predictor": {**info, "n_train": pred.meta.get("n_train"),
                                "n_per_modality": pred.meta.get("n_per_modality"),
                                "modality_train_accuracy": pred.modality.get("train_accuracy")},
                  "ceiling": "floor = the same predictors on the real held-out (caption-matched) volumes"}
        out: dict[str, MetricResult] = {}
        # ---- categorical: modality, sex
        for attr in ("modality", "sex"):
            r = req[attr]
            ok = np.array([x is not None and x == x for x in r])  # known requests (not None/NaN)
            if ok.sum() == 0:
                continue
            idx = np.flatnonzero(ok)
            hit_g = np.array([gen[attr][i] == r[i] for i in idx], dtype=float)
            hit_r = np.array([ref[attr][i] == r[i] for i in idx], dtype=float)
            labels = (lambda v: v) if attr == "modality" else (lambda v: {1.0: "F", 0.0: "M"}.get(v, None))
            req_l = [labels(r[i]) for i in idx]
            uniq, counts = np.unique([str(x) for x in req_l], return_counts=True)
            out[f"{attr}_accuracy"] = score_mean(
                hit_g, hit_r, higher_is_better=True, n_boot=self.n_boot, seed=seed,
                details={"requested_labels": req_l, "measured_labels": [labels(gen[attr][i]) for i in idx],
                         "floor_measured_labels": [labels(ref[attr][i]) for i in idx],
                         "chance": float(counts.max() / counts.sum()) if len(counts) else None, **common})

        # ---- continuous: age and volumes
        for attr in ("age", *self.structures):
            out.update(score_continuous(attr, req[attr], gen[attr], ref[attr], unit="years" if attr == "age" else "mL",
                                        n_boot=self.n_boot, seed=seed, details=common))
        if not out:
            raise ConformanceError("no prompt states a modality, sex, age or structure volume; conformance has "
                                   "nothing to score (check that the runner passes parsed prompt attributes)")
        return out
