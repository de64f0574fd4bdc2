"""Sample diversity as the mean MS-SSIM between random pairs of generated volumes.

MS-SSIM (Wang et al. 2003, Asilomar) between two different samples measures how alike they are;
the mean over random pairs is the diversity measure used for 3D brain generators (Pinaya et al.
2022 report LDM 0.6555 vs real 0.6536 on 1000 pairs). Lower means more diverse, but "more diverse"
is not better without bound: the target is the real data's own value, which is the floor here.

Pairs are drawn only between volumes of the same modality when the prompt attributes give one:
a T1 and a T2 volume of the same anatomy have very different intensities, so mixing modalities
lowers MS-SSIM and makes a generator look more diverse merely because its prompt set mixes
modalities.

Volumes are loaded per pair block (:meth:`~metrics.base.EvalSets.take`): the pairs are grouped by
the shards their two volumes fall in, and a block loads only the volumes of its (at most two)
shards, so peak memory is a few shards whatever N and the number of pairs.

CI (value and floor): the bias-corrected percentile interval (BC, Efron 1987) of the mean over the
drawn pairs (pairs resampled), which contains the value; the floor's interval (``floor_ci``) is the
same over the reference pairs.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import numpy as np

from metrics.base import EvalSets, Metric, MetricResult, log
from metrics.functional.bootstrap import BC, mean_ci
from metrics.functional.ssim import ms_ssim3d


def sample_pairs(n: int, max_pairs: int, *, seed: int, groups: Sequence | None = None) -> np.ndarray:
    """Up to ``max_pairs`` distinct unordered pairs ``(i, j)``, ``i < j``, drawn without replacement.

    Args:
        n: number of items.
        max_pairs: cap; all admissible pairs are used when there are fewer.
        seed: RNG seed.
        groups: optional group key per item (e.g. modality); only pairs within a group are admissible.

    Returns:
        ``(P, 2)`` int array, sorted.
    """
    if groups is None:
        groups = [0] * n
    by_group: dict = defaultdict(list)
    for i, g in enumerate(groups):
        by_group[g].append(i)
    cand = []
    for members in by_group.values():
        m = np.asarray(members)
        if m.size >= 2:
            a, b = np.triu_indices(m.size, k=1)
            cand.append(np.stack([m[a], m[b]], axis=1))
    if not cand:
        return np.zeros((0, 2), dtype=np.int64)
    allp = np.concatenate(cand)
    if allp.shape[0] > max_pairs:
        rng = np.random.default_rng(seed)
        allp = allp[np.sort(rng.choice(allp.shape[0], size=max_pairs, replace=False))]
    return allp.astype(np.int64)


class MSSSIMDiversity(Metric):
    """Mean MS-SSIM over random same-modality pairs of generated volumes; floor = the same on the
    reference set (real diversity). ``higher_is_better`` is False, but the target is the floor.

    Args:
        max_pairs: pairs drawn per set (seeded).
        data_range: intensity range.
        scales: number of MS-SSIM scales (default: chosen from the volume size, see
            :func:`metrics.functional.ssim.ms_ssim_config`).
        kernel_size: window size (default: chosen from the volume size).
        same_modality: pair only volumes of the same modality when attributes give one.
    """

    axis = "diversity"
    name = "ms_ssim_diversity"
    higher_is_better = False
    description = "mean MS-SSIM between random pairs of samples (diversity; the real value is the target)"

    def __init__(self, *, max_pairs: int = 200, data_range: float = 1.0, scales: int | None = None,
                 kernel_size: int | None = None, same_modality: bool = True):
        if max_pairs < 1:
            raise ValueError(f"max_pairs must be >= 1, got {max_pairs}")
        self.max_pairs = int(max_pairs)
        self.data_range = float(data_range)
        self.scales = scales
        self.kernel_size = kernel_size
        self.same_modality = bool(same_modality)

    def config(self) -> dict:
        return {"max_pairs": self.max_pairs, "data_range": self.data_range, "scales": self.scales,
                "kernel_size": self.kernel_size, "same_modality": self.same_modality, "pooling": "avg 2x",
                "negative_cs": "clamped to 0 (relu)", "ci": f"{BC} of the mean over pairs, 95%"}

    def _groups(self, sets: EvalSets, n: int):
        if not self.same_modality or len(sets.attributes) != n:
            return None
        mods = [(a or {}).get("modality") for a in sets.attributes]
        if any(m is None for m in mods):
            return None
        return [str(m).lower() for m in mods]

    def _pair_values(self, sets: EvalSets, name: str, pairs: np.ndarray):
        """MS-SSIM of every pair of volumes of set ``name``, in the order of ``pairs``, and the config used.

        Pairs are processed by shard block (the shards of their first and second volume, in this order
        since ``i < j``); a block loads only its volumes, one shard per :meth:`EvalSets.take`.
        """
        shard = sets.volume_set(name).shard_size
        vals = np.empty(pairs.shape[0], dtype=np.float64)
        cfg = None
        blocks = pairs // shard
        for block in np.unique(blocks, axis=0):
            sel = np.flatnonzero((blocks == block).all(axis=1))
            if block[0] == block[1]:                # both volumes in one shard: one load
                idx = np.unique(pairs[sel])
                va = vb = sets.take(name, idx)
                pos_a, pos_b = np.searchsorted(idx, pairs[sel, 0]), np.searchsorted(idx, pairs[sel, 1])
            else:
                idx_a, idx_b = np.unique(pairs[sel, 0]), np.unique(pairs[sel, 1])
                va, vb = sets.take(name, idx_a), sets.take(name, idx_b)
                pos_a, pos_b = np.searchsorted(idx_a, pairs[sel, 0]), np.searchsorted(idx_b, pairs[sel, 1])
            for s in range(0, sel.size, 16):        # bounded memory: 16 pairs at a time
                vals[sel[s:s + 16]], cfg = ms_ssim3d(va[pos_a[s:s + 16]], vb[pos_b[s:s + 16]],
                                                     data_range=self.data_range, scales=self.scales,
                                                     kernel_size=self.kernel_size)
            del va, vb
        return vals, cfg

    def compute(self, sets: EvalSets, *, seed: int) -> MetricResult:
        n = sets.n
        groups = self._groups(sets, n)
        warnings: list[str] = []
        # Pairs of generated i, j and of reference i, j share the prompt modalities: same pair set.
        pairs = sample_pairs(n, self.max_pairs, seed=seed, groups=groups)
        if pairs.shape[0] == 0:
            raise ValueError(f"ms_ssim_diversity: no pair of same-modality volumes among {n} prompts; "
                             "use more prompts per modality or same_modality=False")
        gen_vals, cfg = self._pair_values(sets, "generated", pairs)
        ref_vals, _ = self._pair_values(sets, "reference", pairs)
        if cfg.reduced and self.scales is None and self.kernel_size is None:
            msg = (f"ms_ssim_diversity: volume shape {cfg.shape} is below the size of the standard 5-scale, "
                   f"11-voxel MS-SSIM; used {cfg.scales} scales, window {cfg.kernel_size}, weights "
                   f"{[round(w, 4) for w in cfg.weights]} (not comparable with values at other sizes)")
            log.info(msg)
            warnings.append(msg)
        g, r = float(gen_vals.mean()), float(ref_vals.mean())
        ci = mean_ci(gen_vals, seed=seed, estimate=g)
        fci = mean_ci(ref_vals, seed=seed, estimate=r)
        return MetricResult(
            value=g, higher_is_better=False, direction="target", n=int(pairs.shape[0]), ci_low=ci.low,
            ci_high=ci.high, floor=r, floor_ci=list(fci), warnings=warnings,
            details={"generated": g, "reference": r, "difference": g - r, "n_pairs": int(pairs.shape[0]),
                     "pairing": "same modality" if groups is not None else "any",
                     "ms_ssim_config": cfg.to_dict(), **self.config(), **ci.details("pairs resampled"),
                     "note": "lower = more diverse; the target is the reference (real) value"})
