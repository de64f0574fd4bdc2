"""Follow-up baselines: ``copy-baseline`` and ``lesion-paint``.

A follow-up generator takes the previous scan of a subject and a follow-up prompt ("Follow-up at 12
months; since the previous scan: 2 new lesions, 1 enlarging lesion, lesion volume +0.6 mL, thalamus
-1.2 %, caudate -0.8 %, brain -0.4 %") and returns the follow-up scan:
``follow_up(previous, prompts, *, seed) -> GenerationOutput`` with ``previous`` ``(N, 1, D, H, W)``.

- ``copy-baseline`` returns the previous scan unchanged: identity is perfect and nothing changes, so
  its change conformance is zero — the floor every follow-up model must beat on change.
- ``lesion-paint`` edits the previous scan deterministically: the requested enlarging lesions grow
  (the largest lesions the segmentation of :mod:`metrics.lesionseg` finds, by one voxel in white
  matter), the requested new lesions are painted as partial-volume spheres in white matter (classes
  drawn with the shares of MS, 45/20/25/10 % periventricular / juxtacortical / deep / infratentorial,
  sized so that the lesion volume grows by the requested mL), with the lesion-to-white-matter intensity
  ratio of the modality measured on the training split's lesion masks; the thalamus, caudate and brain
  lose the requested % of grey matter to CSF in the partial-volume model the follow-up metrics measure
  with (atrophy ex vacuo, in the atlas's regions). A strong, simple edit that knows the anatomy from
  the atlas and nothing else; its atrophy is exact in the measurement's own terms, so its atrophy
  conformance is the measurement's ceiling, not evidence of realistic atrophy.
"""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
from scipy import ndimage as ndi

from generators.base import GenerationOutput, GeneratorContext, Prompt, seed_for
from metrics.functional.lesions import THRESHOLD

__all__ = ["CopyBaselineGenerator", "LesionPaintGenerator"]

log = logging.getLogger("braingenbench.generators")

#: lesion / normal-appearing white-matter intensity when the cohort has no lesion masks to measure it on
DEFAULT_RATIO = {"FLAIR": 1.7, "T2": 1.6, "PD": 1.15, "T1": 0.85}
_CLASS_SHARE = (0.45, 0.2, 0.25, 0.1)  # periventricular, juxtacortical, deep, infratentorial (zone codes 1..4)


class CopyBaselineGenerator:
    """The previous scan, unchanged (follow-up task only)."""

    name = "copy-baseline"

    def __init__(self, context: GeneratorContext):
        self.ctx = context

    def follow_up(self, previous: np.ndarray, prompts: Sequence[Prompt], *, seed: int) -> GenerationOutput:
        return GenerationOutput(np.clip(np.asarray(previous, np.float32), 0.0, 1.0))

    def info(self) -> dict:
        return {"role": "baseline", "description": "the previous scan unchanged: perfect identity, no change"}


class LesionPaintGenerator:
    """Deterministic edit of the previous scan: new and enlarging lesions, deep grey-matter and brain
    atrophy as the prompt states them (follow-up task only).

    Args:
        context: runner context (its cohort's train split gives the lesion contrast per modality).
        max_train: training subjects with lesion masks read to measure the contrast.
    """

    name = "lesion-paint"

    def __init__(self, context: GeneratorContext, *, max_train: int = 40):
        from cohorts.atlas import atlas_on_grid

        self.ctx = context
        self.atlas = atlas_on_grid(context.grid)
        self.vs = float(context.grid.voxel_size)
        self.wm = np.asarray(self.atlas["wm"]) > 0.6
        self.zones = np.where(self.wm, self.atlas["lesion_zones"], 0)
        self.nawm = ndi.binary_erosion(np.asarray(self.atlas["wm"]) > 0.9)
        self.ratio, self.ratio_source = self._contrast(context, int(max_train))
        from metrics.functional.lesions import deep_grey_regions

        self.grey = deep_grey_regions(self.atlas)
        self.cortex = (np.asarray(self.atlas["gm"]) > 0.3) & ~ndi.binary_dilation(self.grey.thalamus | self.grey.caudate)
        self._net = None

    # ---------------------------------------------------------------- set-up
    def _contrast(self, context: GeneratorContext, max_train: int) -> tuple[dict, dict]:
        ratios: dict[str, list[float]] = {}
        for s in [s for s in context.cohort.split("train") if s.lesion_mask][:max_train]:
            les = context.cohort.load_lesion_mask(s) > 0.9
            if les.sum() < 3:
                continue
            v = context.cohort.load_volume(s)
            ref = np.median(v[self.nawm & ~ndi.binary_dilation(les, iterations=1)])
            if ref > 0:
                ratios.setdefault(s.modality, []).append(float(v[les].mean() / ref))
        out = dict(DEFAULT_RATIO)
        source = {m: "default" for m in out}
        for m, r in ratios.items():
            out[m], source[m] = float(np.median(r)), f"median of {len(r)} training subjects"
        return out, source

    def _segment(self, volume: np.ndarray, modality: str) -> np.ndarray:
        from metrics.lesionseg import load_lesion_net, segment

        if modality not in ("FLAIR", "T2", "PD"):
            return np.zeros(volume.shape, np.float32)
        if self._net is None:
            self._net = load_lesion_net()[0]
        return segment(self._net, volume[None], [modality], self.atlas)[0]

    # ---------------------------------------------------------------- edits
    def _paint(self, v: np.ndarray, frac: np.ndarray, level: float) -> np.ndarray:
        return v * (1.0 - frac) + frac * level

    def _sphere(self, centre: np.ndarray, ml: float) -> tuple[tuple[slice, ...], np.ndarray]:
        r_mm = (3.0 * ml * 1000.0 / (4.0 * np.pi)) ** (1.0 / 3.0)
        half = int(np.ceil(r_mm / self.vs)) + 1
        lo = np.maximum(centre - half, 0)
        hi = np.minimum(centre + half + 1, self.wm.shape)
        sl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        g = np.indices(tuple(hi - lo)).astype(np.float64) + lo[:, None, None, None]
        d = np.sqrt(((g - centre[:, None, None, None]) ** 2).sum(0)) * self.vs
        return sl, np.clip((r_mm + 0.5 * self.vs - d) / self.vs, 0.0, 1.0) * self.wm[sl]

    def _new_lesions(self, v, les, n, ml, level, rng) -> float:
        added = 0.0
        for _ in range(n):
            zone = int(rng.choice(4, p=_CLASS_SHARE)) + 1
            free = (self.zones == zone) & ~ndi.binary_dilation(les > 0.3, iterations=2)
            cand = np.argwhere(free)
            if not len(cand):
                cand = np.argwhere(self.wm & ~(les > 0.3))
            c = cand[int(rng.integers(len(cand)))]
            sl, f = self._sphere(c, ml)
            f = np.maximum(f - les[sl], 0.0)
            v[sl] = self._paint(v[sl], f, level)
            les[sl] += f
            added += float(f.sum())
        return added * self.vs ** 3 / 1000.0

    def _enlarge(self, v, les, n, level) -> float:
        labels, k = ndi.label(les > THRESHOLD)
        if not k or n <= 0:
            return 0.0
        sizes = ndi.sum(les, labels, np.arange(1, k + 1))
        grow = np.zeros(les.shape, bool)
        for j in np.argsort(-sizes)[:n]:
            grow |= ndi.binary_dilation(labels == j + 1) & self.wm
        f = np.where(grow, 1.0 - les, 0.0).clip(0, 1)
        v[:] = self._paint(v, f, level)
        les += f
        return float(f.sum()) * self.vs ** 3 / 1000.0

    def _atrophy(self, v: np.ndarray, roi: np.ndarray, pct: float, of_brain: bool = False) -> np.ndarray:
        """Grey matter of ``roi`` given to its neighbour tissue so that the grey-matter partial volume of
        ``roi`` (``of_brain``: the grey plus white matter of the whole brain) changes by ``pct`` %.

        Each voxel's grey-matter fraction in the two-class partial-volume model of
        :func:`metrics.functional.lesions.deep_grey_volumes` (the volume's own tissue means) loses the
        same share to the voxel's other class (white matter, or CSF where the voxel mixes grey matter
        and CSF; pure grey matter to white matter): its intensity moves that far towards the other
        class's mean. ``of_brain``: only grey matter that borders CSF (the cortex thinning towards the
        sulci) moves, to CSF. Replacing grey matter by
        CSF in a grey/white voxel would read as grey matter *gained* on T2, PD and FLAIR (CSF is the
        brightest), so the edit keeps to the model's own mixing lines."""
        from metrics.functional.conformance import pv_fractions
        from metrics.functional.tissue import tissue_means

        if not pct:
            return v
        means = tissue_means(v[None, None], self.grey.cores)
        mc, mg, mw = (float(means[t][0]) for t in ("csf", "gm", "wm"))
        sel = roi & self.grey.support
        f = pv_fractions(v[sel], (0.0, mc, mg, mw))
        if f[:, 2].sum() <= 0:
            return v
        total = (pv_fractions(v[self.grey.support], (0.0, mc, mg, mw))[:, 2:].sum() if of_brain else f[:, 2].sum())
        to_csf = (f[:, 1] > 0) if not of_brain else (f[:, 3] == 0)
        movable = f[:, 2] * (to_csf if of_brain else 1.0)  # the brain loses cortex to CSF only
        if movable.sum() <= 0:
            return v
        share = float(np.clip(-pct / 100.0 * total / movable.sum(), -1.0, 1.0))
        out = v.copy()
        out[sel] = v[sel] + share * movable * (np.where(to_csf, mc, mw) - mg)
        return out

    # ---------------------------------------------------------------- contract
    def follow_up(self, previous: np.ndarray, prompts: Sequence[Prompt], *, seed: int) -> GenerationOutput:
        out = np.empty_like(np.asarray(previous, np.float32))
        for i, (x, p) in enumerate(zip(previous, prompts)):
            v = np.array(x[0], np.float32)
            mod = p.attributes.get("modality") or "FLAIR"
            c = p.attributes.get("changes") or {}
            rng = np.random.default_rng(seed_for(seed, i))
            nawm = np.median(v[self.nawm]) if self.nawm.any() else float(v.max())
            level = float(np.clip(self.ratio.get(mod, 1.0) * nawm, 0.0, 1.0))
            les = self._segment(v, mod)
            grown = self._enlarge(v, les, int(c.get("enlarging_lesions", 0)), level)
            n_new = int(c.get("new_lesions", 0))
            if n_new:
                want = float(c.get("lesion_volume_ml", 0.3 * n_new + grown)) - grown
                self._new_lesions(v, les, n_new, float(np.clip(want / n_new, 0.06, 5.0)), level, rng)
            for key, pct in (("thalamus", c.get("thalamus_pct")), ("caudate", c.get("caudate_pct"))):
                if pct:
                    v = self._atrophy(v, getattr(self.grey, key), float(pct))
            if c.get("brain_pct"):
                v = self._atrophy(v, self.cortex, float(c["brain_pct"]), of_brain=True)
            out[i, 0] = np.clip(v, 0.0, 1.0)
        return GenerationOutput(out)

    def info(self) -> dict:
        return {"role": "baseline", "description": "the previous scan with the requested lesions painted in and "
                "the requested atrophy applied (atlas-guided, deterministic)",
                "lesion_to_wm_ratio": {m: round(r, 3) for m, r in sorted(self.ratio.items())},
                "ratio_source": dict(sorted(self.ratio_source.items()))}
