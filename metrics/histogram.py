"""Intensity-distribution realism: distances between pooled in-mask intensity histograms.

The intensities of all generated volumes inside the brain mask are pooled into one histogram
(``bins`` equal bins over ``[0, 1]``) and compared with the pooled histogram of the caption-matched
reference volumes by three distances (see :mod:`metrics.functional.histogram`): Wasserstein-1
(in intensity units), Jensen-Shannon divergence (base 2, in ``[0, 1]``) and the Kolmogorov-Smirnov
statistic. Lower is better; the floor is the same distance between an independent real set and
the reference.

Modalities: T1, T2, PD and FLAIR have different intensity distributions, so when the prompt
attributes give a modality the distances are computed per modality (generated T2 volumes against
reference T2 volumes, ...) and the reported value is the unweighted mean over the modalities
present (each modality counts once, whatever its number of prompts); per-modality values are in the
details. The bootstrap resamples volumes (prompts) within each modality, the same indices for the
generated and the reference set, and recomputes the distances from the summed per-volume
histograms. A distance between pooled histograms is biased upwards, and more so for resamples
with duplicated volumes (fewer distinct volumes: noisier histograms) — for JS the resamples often
all lie above the value — so, as for FID, the interval is the bias-corrected percentile interval
(BC, Efron 1987) of the resamples shifted by the bootstrap bias, extended to contain the value and
cut to the distance's range; the floor's interval (``floor_ci``) comes from the same resamples with
the floor set in place of the generated set.

Tissues: when ``sets.tissue_consensus`` holds the voxel-wise majority (consensus) of the
reference subjects' tissue label maps (``(D, H, W)``, 0 background, 1 CSF, 2 GM, 3 WM by the cohort
convention; names from ``sets.tissue_names`` if given) the same distances are reported per
tissue in the details. The runner builds it with
:func:`metrics.functional.histogram.consensus_labels`, one subject's labels at a time; stacked
per-subject maps in ``sets.reference_labels`` (``(N, [1,] D, H, W)``) are still accepted
and reduced the same way. One consensus map masks every set: generated volumes have no
segmentation of their own, and masking the reference with its own labels but the samples with
someone else's would blur only the samples' tissue histograms and penalise a perfect generator.

Volumes are read one shard at a time (:meth:`~metrics.base.EvalSets.map`): each shard yields its
per-volume histograms (brain mask and each tissue), and the distances, the bootstrap and the
per-modality pooling work on those ``(N, bins)`` counts only.
"""

from __future__ import annotations

from collections import defaultdict
from functools import partial

import numpy as np

from metrics.base import EvalSets, Input, Metric, MetricResult
from metrics.functional.bootstrap import BC_SHIFTED, bootstrap_interval
from metrics.functional.histogram import (bin_edges, consensus_labels, histogram_distances, tissue_masks,
                                          volume_histograms)

DISTANCES = ("w1", "js", "ks")
DEFAULT_TISSUE_NAMES = {1: "csf", 2: "gm", 3: "wm"}


def _modality_groups(sets: EvalSets) -> dict[str, np.ndarray]:
    n = sets.n
    mods = [(a or {}).get("modality") for a in sets.attributes] if len(sets.attributes) == n else []
    if not mods or any(m is None for m in mods):
        return {"all": np.arange(n)}
    groups: dict[str, list[int]] = defaultdict(list)
    for i, m in enumerate(mods):
        groups[str(m).lower()].append(i)
    return {k: np.asarray(v) for k, v in sorted(groups.items())}


def masked_histograms(volumes: np.ndarray, masks: dict[str, np.ndarray], *, bins: int) -> dict[str, np.ndarray]:
    """Per-volume histograms of one shard inside each named mask: ``{name: (n, bins)}``.

    The per-shard function of :class:`HistogramDistance` (module level, so it pickles).
    """
    return {name: volume_histograms(volumes, m, bins=bins) for name, m in masks.items()}


def _tissue_labels(sets: EvalSets) -> np.ndarray | None:
    """The consensus tissue map: ``sets.tissue_consensus``, else the majority of ``sets.reference_labels``."""
    cons = sets.tissue_consensus
    if cons is not None:
        cons = np.asarray(cons)
        if cons.ndim != 3:
            raise ValueError(f"sets.tissue_consensus must be one (D, H, W) label map, got shape {cons.shape}; "
                             "reduce per-subject maps with metrics.functional.histogram.consensus_labels")
        return cons
    labels = sets.reference_labels
    return None if labels is None else consensus_labels(labels)


def _grouped_distances(h_a: np.ndarray, h_b: np.ndarray, groups: dict[str, np.ndarray], edges: np.ndarray
                       ) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Mean over groups of the pooled-histogram distances; ``idx`` per group may repeat (bootstrap)."""
    per = {g: histogram_distances(h_a[idx].sum(0), h_b[idx].sum(0), edges=edges) for g, idx in groups.items()}
    mean = {d: float(np.mean([per[g][d] for g in per])) for d in DISTANCES}
    return mean, per


class HistogramDistance(Metric):
    """W1 / JS / KS between pooled in-mask intensity histograms of generated and reference volumes.

    Args:
        bins: equal-width bins over ``[0, 1]``.
        per_tissue: also report per-tissue distances when tissue labels are available.
        n_boot: bootstrap resamples for the CIs.
    """

    name = "histogram"
    higher_is_better = False
    description = "distances between in-mask intensity histograms (W1, Jensen-Shannon, Kolmogorov-Smirnov)"

    def __init__(self, *, bins: int = 128, per_tissue: bool = True, n_boot: int = 200):
        if bins < 2:
            raise ValueError(f"bins must be >= 2, got {bins}")
        self.bins = int(bins)
        self.per_tissue = bool(per_tissue)
        self.n_boot = int(n_boot)

    def config(self) -> dict:
        return {"bins": self.bins, "range": [0.0, 1.0], "per_tissue": self.per_tissue, "n_boot": self.n_boot,
                "pooling": "in-mask voxels of all volumes, per modality, mean over modalities",
                "js_base": 2, "ci": f"{BC_SHIFTED}; volumes resampled within each modality, 95%"}

    def compute(self, sets: EvalSets, *, seed: int) -> dict[str, MetricResult]:
        edges = bin_edges(self.bins)
        mask = np.asarray(sets.brain_mask, dtype=bool)
        groups = _modality_groups(sets)
        labels = _tissue_labels(sets) if self.per_tissue else None
        names = {**DEFAULT_TISSUE_NAMES, **dict(sets.tissue_names or {})}
        tmasks = tissue_masks(labels, mask, names=names) if labels is not None else {}
        # one pass over each set: per-volume histograms in the brain mask and in each tissue
        masks = {"brain": mask, **{f"tissue:{t}": m for t, m in tmasks.items()}}
        per_shard = partial(masked_histograms, masks=masks, bins=self.bins)
        hists = {k: sets.map(per_shard, k) for k in ("generated", "reference", "floor")}
        h = {k: v["brain"] for k, v in hists.items()}
        value, per_mod = _grouped_distances(h["generated"], h["reference"], groups, edges)
        floor, per_mod_floor = _grouped_distances(h["floor"], h["reference"], groups, edges)

        # stratified paired bootstrap over volumes; the floor on the same resamples
        rng = np.random.default_rng(seed)
        boots = {d: [] for d in DISTANCES}
        fboots = {d: [] for d in DISTANCES}
        for _ in range(self.n_boot if sets.n >= 2 else 0):
            rs = {g: idx[rng.integers(0, idx.size, idx.size)] for g, idx in groups.items()}
            b, _ = _grouped_distances(h["generated"], h["reference"], rs, edges)
            fb, _ = _grouped_distances(h["floor"], h["reference"], rs, edges)
            for d in DISTANCES:
                boots[d].append(b[d])
                fboots[d].append(fb[d])
        upper = {"w1": None, "js": 1.0, "ks": 1.0}  # the distances' ranges
        ci = {d: bootstrap_interval(boots[d], value[d], shift_bias=True).clipped(0.0, upper[d]) for d in DISTANCES}
        fci = {d: bootstrap_interval(fboots[d], floor[d], shift_bias=True).clipped(0.0, upper[d]) for d in DISTANCES}

        # per tissue
        tissue: dict[str, dict[str, dict[str, float]]] = {d: {} for d in DISTANCES}
        tissue_note = None
        if self.per_tissue and labels is None:
            tissue_note = "per-tissue distances skipped: no sets.tissue_consensus (or sets.reference_labels)"
        elif labels is not None:
            for tname, tmask in tmasks.items():
                ht = {k: v[f"tissue:{tname}"] for k, v in hists.items()}
                tv, _ = _grouped_distances(ht["generated"], ht["reference"], groups, edges)
                tf, _ = _grouped_distances(ht["floor"], ht["reference"], groups, edges)
                for d in DISTANCES:
                    tissue[d][tname] = {"value": tv[d], "floor": tf[d], "n_voxels": int(tmask.sum())}

        out: dict[str, MetricResult] = {}
        for d in DISTANCES:
            details = {**self.config(), "distance": d,
                       "per_modality": {g: {"value": per_mod[g][d], "floor": per_mod_floor[g][d],
                                            "n": int(groups[g].size)} for g in groups},
                       "n_mask_voxels": int(mask.sum()),
                       **ci[d].details("volumes resampled within each modality, the same for both sets")}
            if self.per_tissue:
                if tissue_note:
                    details["per_tissue_note"] = tissue_note
                else:
                    details["per_tissue"] = tissue[d]
                    details["tissue_masks"] = "consensus (voxel-wise majority) of the reference label maps"
            out[d] = MetricResult(value=value[d], higher_is_better=False, n=sets.n, ci_low=ci[d].low,
                                  ci_high=ci[d].high, floor=floor[d], floor_ci=list(fci[d]), details=details)
        return out
