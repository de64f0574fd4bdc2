"""``measure-and-describe``: what the atlas-guided measurements say, written out by the caption grammar.

The interpretable baseline of the ``report`` task. For each volume:

1. the prompt-conformance measurements (:func:`metrics.functional.conformance.measure`: tissue
   contrast and partial-volume structure volumes inside atlas regions) and the predictors fitted on
   the reference cohort's **training split** (modality; per modality age, sex, lateral ventricles,
   hippocampus, GM, WM, CSF, intracranial volume) — the same predictors ``conformance`` uses;
2. on a cohort whose subjects record white-matter lesions (``phantom-ms``), the lesion segmentation
   (:class:`metrics.lesions.LesionMeasurer`): lesion count per location class and total volume;
3. the structures the measurements do not cover one by one (left and right hippocampus, third and
   fourth ventricle, thalamus, caudate, putamen): ridge regressions from the same six measured
   volumes, fitted per modality on the training split (:data:`PREDICTED_STRUCTURES`) — estimates
   from the image's anatomy, not a cohort average;
4. a :class:`~cohorts.subject.Subject` with those values (percentiles against the training subjects)
   turned into text by :func:`cohorts.captions.make_caption`, so every number in the report can be
   traced to a measurement of this volume.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np

from captioners.base import CaptionerContext, read_in_chunks
from cohorts.captions import make_caption, percentile_rank
from cohorts.subject import Subject
from core.io import atomic_write_text, home_cache

log = logging.getLogger("braingenbench.captioners")

__all__ = ["MeasureAndDescribe", "MeasuredPredictors", "PREDICTED_STRUCTURES"]

#: structures predicted by ridge regression from the measured volumes (see the module docstring)
PREDICTED_STRUCTURES = ("hippocampus_left", "hippocampus_right", "third_ventricle", "fourth_ventricle", "thalamus",
                        "caudate", "putamen")
_MEASURED = ("lateral_ventricles", "gm", "wm", "csf", "icv")
_MIN_PER_MODALITY = 12


def fit_structure_models(measurements: np.ndarray, attributes: list[dict]) -> dict[str, dict[str, dict]]:
    """``{modality or "pooled": {structure: ridge model}}`` for :data:`PREDICTED_STRUCTURES`."""
    from metrics.functional.conformance import fit_ridge, volume_features

    feats = volume_features(np.asarray(measurements, np.float64))
    mods = np.array([a.get("modality") for a in attributes], dtype=object)
    groups = {"pooled": np.ones(len(mods), bool)}
    groups |= {str(m): mods == m for m in sorted(set(mods) - {None}) if (mods == m).sum() >= _MIN_PER_MODALITY}
    out: dict[str, dict[str, dict]] = {}
    for g, sel in groups.items():
        out[g] = {}
        for k in PREDICTED_STRUCTURES:
            y = np.array([(a.get("volumes") or {}).get(k, np.nan) for a in attributes], float)
            ok = sel & np.isfinite(y)
            if ok.sum() >= 5:
                out[g][k] = fit_ridge(feats[ok], y[ok])
    return out


class MeasuredPredictors:
    """The conformance measurements' atlas regions and the predictors fitted on ``ctx``'s training split
    (cached as JSON under the context's cache folder, keyed on the cohort's content and the atlas)."""

    def __init__(self, ctx: CaptionerContext):
        from cohorts.atlas import atlas_on_grid
        from metrics.functional.conformance import PREDICTOR_VERSION, ConformancePredictors, atlas_regions

        self.atlas = atlas_on_grid(ctx.grid)
        self.regions = atlas_regions(self.atlas)
        self.train = sorted(ctx.cohort.split("train"), key=lambda s: s.subject_id)
        if len(self.train) < 8:
            raise ValueError(f"cohort {ctx.cohort.name!r} ({ctx.cohort.root}) has {len(self.train)} training subjects; "
                             "fitting the measurement predictors needs at least 8")
        key = hashlib.sha256(json.dumps({"version": PREDICTOR_VERSION, "cohort": ctx.cohort.content_hash,
                                         "atlas": self.regions.fingerprint, "grid": ctx.grid.name}).encode()).hexdigest()
        path = Path(ctx.cache_dir or home_cache("captioners")) / "measure-and-describe" / f"{key[:32]}.json"
        self.cache_path = path
        if path.exists():
            try:
                saved = json.loads(path.read_text())
                self.predictors = ConformancePredictors.from_json(saved["predictors"])
                self.structures = saved["structures"]
                return
            except (OSError, ValueError, KeyError) as e:
                log.warning("%s: unusable cached predictors (%s); refitting", path, e)
        meas = self.measure_subjects(ctx, self.train)
        attrs = [s.attributes() for s in self.train]
        self.predictors = ConformancePredictors.fit(meas, attrs, meta={"cohort_hash": ctx.cohort.content_hash})
        self.structures = fit_structure_models(meas, attrs)
        try:
            atomic_write_text(path, json.dumps({"predictors": self.predictors.to_json(), "structures": self.structures}))
        except OSError as e:
            log.warning("%s: cannot cache the fitted predictors (%s)", path, e)

    def measure(self, volumes: np.ndarray) -> np.ndarray:
        from metrics.functional.conformance import measure

        return measure(np.asarray(volumes, np.float32), self.regions)

    def measure_subjects(self, ctx: CaptionerContext, subjects) -> np.ndarray:
        return read_in_chunks(ctx.cohort, subjects, self.measure)

    def predict(self, volumes: np.ndarray) -> dict[str, np.ndarray]:
        """Predicted attributes (:meth:`ConformancePredictors.predict`) plus each of
        :data:`PREDICTED_STRUCTURES`, with the models of the predicted modality."""
        from metrics.functional.conformance import predict_ridge, volume_features

        m = self.measure(volumes)
        out = self.predictors.predict(m)
        feats = volume_features(m)
        for k in PREDICTED_STRUCTURES:
            out[k] = np.full(len(m), np.nan)
            for i, mod in enumerate(out["modality"]):
                model = self.structures.get(str(mod), {}).get(k) or self.structures["pooled"].get(k)
                if model is not None:
                    out[k][i] = float(predict_ridge(model, feats[i:i + 1])[0])
        return out


class MeasureAndDescribe:
    """Measured attributes written out by the caption grammar (see the module docstring).

    Args:
        context: runner context (the train split fits the predictors and gives the percentiles).
        lesions: ``auto`` (segment lesions when the cohort's subjects record lesions), ``on`` or ``off``.
        lesion_weights: lesion-segmentation weights (default: the shipped ones, sha256-checked).
    """

    name = "measure-and-describe"

    def __init__(self, context: CaptionerContext, *, lesions: str = "auto", lesion_weights: str = ""):
        if lesions not in ("auto", "on", "off"):
            raise ValueError(f"measure-and-describe: lesions must be auto, on or off, got {lesions!r}")
        self.ctx = context
        self.models = MeasuredPredictors(context)
        train = self.models.train
        self.with_lesions = lesions == "on" or (lesions == "auto" and any(s.lesions for s in train))
        self.synthetic = bool(context.cohort.synthetic)
        self.reference_volumes = {k: [s.volumes[k] for s in train if k in s.volumes]
                                  for k in (*_MEASURED, *PREDICTED_STRUCTURES)}
        self.lesion_measurer = None
        if self.with_lesions:
            from metrics.lesions import LesionMeasurer

            self.lesion_measurer = LesionMeasurer(lesion_weights or None)

    def subjects(self, volumes: np.ndarray) -> list[Subject]:
        """The measured attributes of each volume as a :class:`Subject` (its caption is the report)."""
        pred = self.models.predict(volumes)
        lesions = self.lesions(volumes, [str(m) for m in pred["modality"]]) if self.with_lesions else None
        out = []
        for i in range(len(volumes)):
            vols = {k: float(pred[k][i]) for k in (*_MEASURED, *PREDICTED_STRUCTURES)}
            vols = {k: max(v, 0.0) for k, v in vols.items() if np.isfinite(v) and self.reference_volumes.get(k)}
            pct = {k: percentile_rank(v, self.reference_volumes[k]) for k, v in vols.items()
                   if self.reference_volumes.get(k)}
            sex = None if not np.isfinite(pred["sex"][i]) else ("F" if pred["sex"][i] >= 0.5 else "M")
            age = float(pred["age"][i]) if np.isfinite(pred["age"][i]) else None
            out.append(Subject(subject_id=f"item-{i}", split="", modality=str(pred["modality"][i]), image=Path(""),
                               age=None if age is None else max(age, 0.0), sex=sex, volumes=vols, percentiles=pct,
                               synthetic=self.synthetic, lesions=lesions[i] if lesions else {}))
        return out

    def lesions(self, volumes: np.ndarray, modalities: list[str]) -> list[dict]:
        from metrics.functional.lesions import ZONES, lesion_summary

        atlas = self.models.atlas
        frac = self.lesion_measurer.fractions(volumes, modalities, atlas)
        out = []
        for f in frac:
            s = lesion_summary(f, atlas["lesion_zones"], atlas["voxel_volume_ml"])
            out.append({"count": float(s["count"]), "volume": float(s["volume_ml"]), **{z: float(s[z]) for z in ZONES}})
        return out

    def describe(self, volumes: np.ndarray, *, seed: int) -> list[str]:
        return [make_caption(s) for s in self.subjects(volumes)]

    def info(self) -> dict:
        pred = self.models.predictors
        out = {"role": "baseline", "description": "atlas-guided measurements and predictors (fitted on the train split) "
                                                  "written out by the caption grammar",
               "n_train": len(self.models.train), "predictor_cache": str(self.models.cache_path),
               "modality_train_accuracy": pred.modality.get("train_accuracy"), "lesions": self.with_lesions}
        if self.lesion_measurer is not None:
            out["lesion_segmentation"] = self.lesion_measurer.info()
        return out
