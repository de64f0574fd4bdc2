"""Follow-up generation: does a generated follow-up stay the same subject, change by what its prompt
says, and do the follow-ups of one sequence cohere over time?

A follow-up run (suite ``task: follow-up``) gives generated volume ``i`` with the volume it was made
from (``sets.previous``: the real baseline for the first follow-up of a sequence, then the generator's
own previous follow-up), the real scan of the same session (``sets.reference``) with the real scan before
it (``sets.reference_previous``), another subject's real scan of the same modality and session
(``sets.floor``) and the prompt's requested changes ("Follow-up at 12 months; since the previous scan:
2 new lesions, 1 enlarging lesion, lesion volume +0.4 mL, thalamus -1.2 %, caudate -0.8 %, brain
-0.6 %"; :func:`cohorts.captions.parse_changes`). Lesions are segmented by :mod:`metrics.lesionseg`
(FLAIR, T2 and PD), deep grey matter and brain measured as in :mod:`metrics.functional.lesions`.

Sub-results (suite key ``followup``); the floor is always the real sequence scored the same way:

- **identity** — ``identity``: ``1 - MAE(follow-up, previous) / MAE(other subject, previous)`` in the
  brain outside the regions that may change (lesions of either scan, dilated, and the deep grey
  matter): 1 = the previous scan exactly, 0 = as different as another person. A real follow-up scores
  below 1 (new noise, ageing);
- **change conformance** — ``new_lesions_r`` / ``_mae`` (requested vs measured new lesions),
  ``lesion_volume_change_r`` / ``_mae`` (mL), ``thalamus_change_r`` / ``_mae``, ``caudate_change_r`` /
  ``_mae`` and ``brain_change_r`` / ``_mae`` (% change of the measured volume, both scans measured
  with the previous scan's tissue means so that a global intensity shift is not read as atrophy): a
  generator that changes nothing measures 0 everywhere and has r = 0;
- **temporal coherence** over each whole sequence (baseline to last follow-up) —
  ``lesion_persistence`` (share of the baseline's lesion voxels still lesion at the end; lesions of MS
  do not vanish in months), ``sequence_identity`` (identity of the last follow-up to the real baseline,
  against another subject's last scan) and ``cumulative_new_lesions_r`` (the sum of the requested new
  lesions vs the new lesions measured between baseline and last follow-up).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from metrics.base import EvalSets, Input, Metric, MetricResult
from metrics.conformance import score_continuous, score_mean
from metrics.functional.lesions import (change_region, deep_grey_volumes, lesion_summary, masked_mae,
                                        new_lesion_count, persistence)
from metrics.functional.tissue import tissue_means
from metrics.lesions import LesionMeasurer, need_lesion_atlas

__all__ = ["FollowUp", "PARTS"]

PARTS = ("identity", "change", "coherence")
_CHANGES = (("thalamus", 0, "thalamus_pct"), ("caudate", 1, "caudate_pct"), ("brain", 2, "brain_pct"))


class FollowUp(Metric):
    """Identity to the previous scan, change conformance and temporal coherence of follow-ups.

    Args:
        parts: which groups to score (``identity``, ``change``, ``coherence``).
        weights: lesion-segmentation weights (default: the shipped ones).
        n_boot: bootstrap resamples for the CIs.
    """

    name = "followup"
    axis = "conformance"
    higher_is_better = True
    inputs = frozenset({Input.ATLAS, Input.FOLLOW_UP})
    description = "follow-ups: identity to the previous scan, requested vs measured change, sequence coherence"

    def __init__(self, *, parts: Sequence[str] = PARTS, weights: str | None = None, n_boot: int = 1000):
        bad = [p for p in parts if p not in PARTS]
        if bad:
            raise ValueError(f"followup: unknown part(s) {bad}; choose from {', '.join(PARTS)}")
        self.parts, self.measurer, self.n_boot = tuple(parts), LesionMeasurer(weights), int(n_boot)

    def config(self) -> dict:
        return {"parts": list(self.parts), "weights": self.measurer.weights or "shipped", "n_boot": self.n_boot,
                "identity": "1 - MAE(follow-up, previous) / MAE(other subject, previous) outside lesions (dilated "
                            "1 voxel) and the deep grey matter",
                "new_lesion": "a component of fraction > 0.5 touching no previous lesion voxel (dilated 1 voxel)",
                "floor": "the real sequence (real follow-up vs real previous scan) scored the same way"}

    # ------------------------------------------------------------------ measuring
    def _pairs(self, sets: EvalSets) -> list[dict]:
        """Per generated follow-up: what the generated and the real step measure."""
        atlas = need_lesion_atlas(sets, self.name)
        regions = self.measurer.regions(atlas)
        zones, vox = atlas["lesion_zones"], atlas["voxel_volume_ml"]
        mods = [a.get("modality") for a in sets.attributes]
        out: list[dict] = []
        names = ("generated", "previous", "reference", "reference_previous", "floor")
        chunks = [self.measurer.chunks(sets, n) for n in names]
        for parts in zip(*chunks):
            idx = parts[0][0]
            vols = {n: p[1] for n, p in zip(names, parts)}
            m = [mods[i] for i in idx]
            fr = {n: self.measurer.fractions(vols[n], m, atlas) for n in names[:4]}
            grey = {}
            for cur, prev in (("generated", "previous"), ("reference", "reference_previous")):
                means = tissue_means(vols[prev], regions.cores)  # both scans measured with the previous one's means
                lesions = np.stack([change_region(regions, a, b, with_deep_grey=False) for a, b in zip(fr[cur], fr[prev])])
                grey[cur], grey[prev] = (deep_grey_volumes(vols[n], regions, means, lesions) for n in (cur, prev))
            for j in range(len(idx)):
                row: dict = {}
                for side, (cur, prev) in (("gen", ("generated", "previous")), ("real", ("reference", "reference_previous"))):
                    mask = regions.support & ~change_region(regions, fr[cur][j], fr[prev][j])
                    d = masked_mae(vols[cur][j, 0], vols[prev][j, 0], mask)
                    d_other = masked_mae(vols["floor"][j, 0], vols[prev][j, 0], mask)
                    row[f"{side}_identity"] = 1.0 - d / d_other if d_other > 0 else np.nan
                    row[f"{side}_new"] = new_lesion_count(fr[prev][j], fr[cur][j])
                    row[f"{side}_dvol"] = (lesion_summary(fr[cur][j], zones, vox)["volume_ml"]
                                           - lesion_summary(fr[prev][j], zones, vox)["volume_ml"])
                    for key, col, _ in _CHANGES:
                        row[f"{side}_{key}"] = 100.0 * (grey[cur][j, col] / max(grey[prev][j, col], 1e-9) - 1.0)
                out.append(row)
        return out

    def _sequences(self, sets: EvalSets) -> tuple[list[int], list[int], list[str]]:
        """Item indices of each sequence's first and last follow-up, and the sequence ids."""
        items = sets.items or []
        first, last = {}, {}
        for i, it in enumerate(items):
            seq, step = it["sequence"], int(it["step"])
            if seq not in first or step < items[first[seq]]["step"]:
                first[seq] = i
            if seq not in last or step > items[last[seq]]["step"]:
                last[seq] = i
        ids = sorted(first)
        return [first[s] for s in ids], [last[s] for s in ids], ids

    def _coherence(self, sets: EvalSets, seed: int, details: dict) -> dict[str, MetricResult]:
        atlas = sets.atlas
        regions = self.measurer.regions(atlas)
        first, last, ids = self._sequences(sets)
        mods = [sets.attributes[i].get("modality") for i in last]
        requested = {}
        for i, it in enumerate(sets.items):
            n_new = (sets.attributes[i].get("changes") or {}).get("new_lesions", np.nan)
            requested[it["sequence"]] = requested.get(it["sequence"], 0.0) + float(n_new)
        rows = []
        for c in range(0, len(ids), 8):
            f_idx, l_idx = first[c:c + 8], last[c:c + 8]
            base = sets.take("reference_previous", f_idx)
            end = {n: sets.take(n, l_idx) for n in ("generated", "reference", "floor")}
            m = mods[c:c + 8]
            fr_base = self.measurer.fractions(base, m, atlas)
            fr = {n: self.measurer.fractions(end[n], m, atlas) for n in ("generated", "reference")}
            for j in range(len(f_idx)):
                row = {}
                for side, n in (("gen", "generated"), ("real", "reference")):
                    mask = regions.support & ~change_region(regions, fr_base[j], fr[n][j])
                    d_other = masked_mae(end["floor"][j, 0], base[j, 0], mask)
                    row[f"{side}_identity"] = 1.0 - masked_mae(end[n][j, 0], base[j, 0], mask) / d_other \
                        if d_other > 0 else np.nan
                    row[f"{side}_persist"] = persistence(fr_base[j], fr[n][j])
                    row[f"{side}_new"] = new_lesion_count(fr_base[j], fr[n][j])
                rows.append(row)
        col = lambda k: np.array([r[k] for r in rows], float)  # noqa: E731
        out: dict[str, MetricResult] = {}
        seq_details = {"sequences": ids, **details}
        for key, name in (("persist", "lesion_persistence"), ("identity", "sequence_identity")):
            ok = np.isfinite(col(f"gen_{key}")) & np.isfinite(col(f"real_{key}"))
            if ok.sum():
                out[name] = score_mean(col(f"gen_{key}")[ok], col(f"real_{key}")[ok], higher_is_better=True,
                                       n_boot=self.n_boot, seed=seed, details=seq_details)
        lesion_seq = np.array([m_ in ("FLAIR", "T2", "PD") for m_ in mods])
        req = np.where(lesion_seq, [requested[s] for s in ids], np.nan)
        out.update({f"cumulative_{k}": v for k, v in score_continuous(
            "new_lesions", req, col("gen_new"), col("real_new"), unit="lesions", n_boot=self.n_boot, seed=seed,
            details=seq_details).items() if k.endswith("_r")})
        return out

    # ------------------------------------------------------------------ scoring
    def compute(self, sets: EvalSets, *, seed: int) -> dict[str, MetricResult]:
        if sets.previous is None or sets.reference_previous is None or not sets.items:
            raise ValueError("followup needs a follow-up run (sets.previous, sets.reference_previous, sets.items); "
                             "use a suite with `task: follow-up` (e.g. longitudinal-quick)")
        details = {"segmentation": self.measurer.info()}
        out: dict[str, MetricResult] = {}
        if "identity" in self.parts or "change" in self.parts:
            rows = self._pairs(sets)
            col = lambda k: np.array([r[k] for r in rows], float)  # noqa: E731
            if "identity" in self.parts:
                ok = np.isfinite(col("gen_identity")) & np.isfinite(col("real_identity"))
                out["identity"] = score_mean(col("gen_identity")[ok], col("real_identity")[ok], higher_is_better=True,
                                             n_boot=self.n_boot, seed=seed, details=details)
            if "change" in self.parts:
                changes = [a.get("changes") or {} for a in sets.attributes]
                lesion_ok = np.array([a.get("modality") in ("FLAIR", "T2", "PD") for a in sets.attributes])
                req = lambda k: np.array([c.get(k, np.nan) for c in changes], float)  # noqa: E731
                out.update(score_continuous("new_lesions", np.where(lesion_ok, req("new_lesions"), np.nan),
                                            col("gen_new"), col("real_new"), unit="lesions", n_boot=self.n_boot,
                                            seed=seed, details=details))
                out.update(score_continuous("lesion_volume_change", np.where(lesion_ok, req("lesion_volume_ml"), np.nan),
                                            col("gen_dvol"), col("real_dvol"), unit="mL", n_boot=self.n_boot,
                                            seed=seed, details=details))
                for key, _, caption_key in _CHANGES:
                    out.update(score_continuous(f"{key}_change", req(caption_key), col(f"gen_{key}"),
                                                col(f"real_{key}"), unit="%", n_boot=self.n_boot, seed=seed,
                                                details=details))
        if "coherence" in self.parts:
            out.update(self._coherence(sets, seed, details))
        return out
