"""`template`: the mean training image of the requested modality plus noise — the floor.

Every subject looks the same (no diversity, no anatomy beyond the average), so any model worth
shipping must beat it on realism and on prompt conformance.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from generators.base import GenerationOutput, GeneratorContext, Prompt, seed_for


class TemplateGenerator:
    """Per-modality mean of the training split, plus seeded Gaussian noise inside the brain.

    Args:
        context: runner context.
        noise: standard deviation of the added Gaussian noise (intensity units, [0, 1] scale).
    """

    name = "template"

    def __init__(self, context: GeneratorContext, *, noise: float = 0.02):
        if noise < 0:
            raise ValueError(f"template: noise must be >= 0, got {noise}")
        self.ctx, self.noise = context, noise
        train = context.cohort.split("train")
        if not train:
            raise ValueError(f"template: cohort {context.cohort.name!r} has an empty train split")
        self.mask = context.cohort.brain_mask()
        sums: dict[str, np.ndarray] = {}
        counts: dict[str, int] = {}
        for s in train:
            v = context.cohort.load_volume(s).astype(np.float64)
            sums[s.modality] = sums.get(s.modality, 0) + v
            counts[s.modality] = counts.get(s.modality, 0) + 1
        self.means = {m: (sums[m] / counts[m]).astype(np.float32) for m in sums}
        self.overall = (sum(sums.values()) / sum(counts.values())).astype(np.float32)
        self.counts = counts

    def generate(self, prompts: Sequence[Prompt], *, seed: int) -> GenerationOutput:
        out = np.empty((len(prompts), 1, *self.ctx.grid.shape), dtype=np.float32)
        for i, p in enumerate(prompts):
            base = self.means.get(p.attributes.get("modality"), self.overall)
            rng = np.random.default_rng(seed_for(seed, i))
            v = base + self.noise * rng.standard_normal(base.shape).astype(np.float32)
            out[i, 0] = np.where(self.mask, np.clip(v, 0, 1), 0)
        return GenerationOutput(out)

    def info(self) -> dict:
        return {"role": "baseline", "description": "per-modality mean training image + Gaussian noise", "noise": self.noise,
                "n_train_per_modality": dict(sorted(self.counts.items()))}
