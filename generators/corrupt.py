"""`corrupt`: the caption-matched held-out real volume of each prompt, with one corruption applied.

This is the probe of the metric report card (``python -m bench validate``): scored through the same
runner path as any generator, a ladder of seeded corruptions of real volumes shows what each metric
detects, from which level, and what it misses. Level 0 is the clean copy; levels 1-3 grow in
severity. Every corruption keeps intensities in [0, 1].

| kind | what | levels 1 / 2 / 3 |
|---|---|---|
| ``noise`` | additive Gaussian noise in the brain | σ 0.02 / 0.05 / 0.1 |
| ``rician`` | magnitude of complex Gaussian noise (the MRI noise model) | σ 0.02 / 0.05 / 0.1 |
| ``blur`` | isotropic Gaussian blur | σ 0.5 / 1 / 2 voxels |
| ``lowpass`` | k-space truncation to a sphere ("blob", Gibbs ringing) | 60 / 40 / 25 % of Nyquist |
| ``bias`` | smooth multiplicative bias field | ±10 / 20 / 40 % |
| ``shift`` | intensity offset in the brain | +0.02 / 0.05 / 0.1 |
| ``scale`` | intensity gain | ×0.9 / 0.8 / 0.6 |
| ``ghosting`` | phase error on every other phase-encoding line (N/2 ghost) | 0.1 / 0.2 / 0.4 rad·π |
| ``thick_slices`` | axial slices averaged in blocks and re-expanded | 2 / 3 / 4 slices |
| ``deformation`` | smooth random displacement (σ 2 voxels) | max 1 / 2 / 4 voxels |
| ``contrast_swap`` | a held-out volume of another modality in place of the requested one | 25 / 50 / 100 % |
| ``train_copy`` | the most similar training subject (same modality, sex, closest age) copied | 25 / 50 / 100 % |
"""

from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np

from core.ladder import Corruption, check_corruption
from generators.base import GenerationOutput, GeneratorContext, Prompt, seed_for

__all__ = ["CORRUPTIONS", "Corruption", "CorruptGenerator", "apply_corruption", "check_kind"]


CORRUPTIONS: dict[str, Corruption] = {c.kind: c for c in (
    Corruption("noise", (0.02, 0.05, 0.1), "sigma (intensity)", "additive Gaussian noise in the brain"),
    Corruption("rician", (0.02, 0.05, 0.1), "sigma (intensity)", "Rician (magnitude) noise in the brain"),
    Corruption("blur", (0.5, 1.0, 2.0), "sigma (voxels)", "isotropic Gaussian blur"),
    Corruption("lowpass", (0.6, 0.4, 0.25), "cut-off (fraction of Nyquist)", "k-space truncation (blob)"),
    Corruption("bias", (0.1, 0.2, 0.4), "amplitude (fraction)", "smooth multiplicative bias field"),
    Corruption("shift", (0.02, 0.05, 0.1), "offset (intensity)", "intensity shift in the brain"),
    Corruption("scale", (0.9, 0.8, 0.6), "gain", "intensity scale"),
    Corruption("ghosting", (0.1, 0.2, 0.4), "phase error (x pi rad)", "k-space ghosting (N/2 ghost)"),
    Corruption("thick_slices", (2, 3, 4), "slices averaged", "thick axial slices (down-up sampling)"),
    Corruption("deformation", (1.0, 2.0, 4.0), "max displacement (voxels)", "smooth random deformation"),
    Corruption("contrast_swap", (0.25, 0.5, 1.0), "share of volumes", "a volume of another modality"),
    Corruption("train_copy", (0.25, 0.5, 1.0), "share of volumes", "copies of training subjects"),
)}


def check_kind(kind: str) -> str:
    """``kind`` when it names a corruption, else an error with a suggestion."""
    return check_corruption(kind, CORRUPTIONS)


def _smooth_field(shape, rng: np.random.Generator, sigma: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    f = gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return f / max(float(np.abs(f).max()), 1e-12)


def _kspace_radius(shape) -> np.ndarray:
    """|k| as a fraction of Nyquist (0.5 cycles/voxel) on the FFT grid."""
    k = np.meshgrid(*[np.fft.fftfreq(s) for s in shape], indexing="ij")
    return np.sqrt(sum(x * x for x in k)) / 0.5


def apply_corruption(v: np.ndarray, kind: str, level: float, *, mask: np.ndarray,
                     rng: np.random.Generator) -> np.ndarray:
    """One intensity/geometry corruption of a ``(D, H, W)`` volume in [0, 1] (kinds that swap whole
    volumes, ``contrast_swap`` and ``train_copy``, are applied by the generator)."""
    from scipy import ndimage

    v = np.asarray(v, np.float64)
    m = np.asarray(mask, bool)
    if kind == "noise":
        out = np.where(m, v + level * rng.standard_normal(v.shape), v)
    elif kind == "rician":
        out = np.where(m, np.hypot(v + level * rng.standard_normal(v.shape), level * rng.standard_normal(v.shape)), v)
    elif kind == "blur":
        out = ndimage.gaussian_filter(v, level, mode="constant")
    elif kind == "lowpass":
        out = np.real(np.fft.ifftn(np.fft.fftn(v) * (_kspace_radius(v.shape) <= level)))
    elif kind == "bias":
        # a smooth field (correlation length ~ a third of the field of view), peak amplitude ``level``
        out = v * (1.0 + level * _smooth_field(v.shape, rng, sigma=min(v.shape) / 6.0))
    elif kind == "shift":
        out = np.where(m, v + level, v)
    elif kind == "scale":
        out = v * level
    elif kind == "ghosting":
        k = np.fft.fft(v, axis=1)
        k[:, 1::2, :] *= np.exp(1j * np.pi * level)
        out = np.abs(np.fft.ifft(k, axis=1))
    elif kind == "thick_slices":
        f = int(level)
        n = v.shape[2]
        out = np.empty_like(v)
        for start in range(0, n, f):
            out[:, :, start:start + f] = v[:, :, start:start + f].mean(axis=2, keepdims=True)
    elif kind == "deformation":
        disp = np.stack([_smooth_field(v.shape, rng, sigma=2.0) for _ in range(3)])
        norm = float(np.sqrt((disp ** 2).sum(0)).max())
        disp *= level / max(norm, 1e-12)
        grid = np.indices(v.shape, dtype=np.float64) + disp
        out = ndimage.map_coordinates(v, grid, order=1, mode="constant")
    else:
        raise ValueError(f"corrupt: unknown corruption {kind!r}; choose from {sorted(CORRUPTIONS)}")
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _uniform(text: str, seed: int) -> float:
    """A stable number in [0, 1) from a subject id and a seed (which volumes a share-corruption hits)."""
    h = hashlib.sha256(f"{seed}:{text}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2.0 ** 64


class CorruptGenerator:
    """Returns each prompt's caption-matched held-out real volume with corruption ``kind`` at
    ``level`` (0 = the clean copy, 1-3 = the ladder in :data:`CORRUPTIONS`).

    Args:
        context: runner context (prompts must carry the reference subject id: suite prompts do).
        kind: one of :data:`CORRUPTIONS`.
        level: 0, 1, 2 or 3.
    """

    name = "corrupt"

    def __init__(self, context: GeneratorContext, *, kind: str = "noise", level: int = 2):
        check_kind(kind)
        if level not in (0, 1, 2, 3):
            raise ValueError(f"corrupt: level must be 0 (clean), 1, 2 or 3; got {level}")
        self.ctx, self.kind, self.level = context, kind, int(level)
        self.amount = 0.0 if level == 0 else float(CORRUPTIONS[kind].levels[level - 1])
        self.mask = context.cohort.brain_mask()

    def _subject(self, p: Prompt):
        if not p.subject_id:
            raise ValueError("corrupt: the prompt has no reference subject id; use the suite's own prompts")
        return self.ctx.cohort.by_id(p.subject_id)

    def _swap_pool(self, split: str, subject, same_modality: bool):
        pool = [s for s in self.ctx.cohort.split(split) if s.subject_id != subject.subject_id
                and (s.modality == subject.modality) == same_modality]
        if not pool:
            raise ValueError(f"corrupt: no {split} subject to swap in for {subject.subject_id}")

        def score(s):
            gap = abs((s.age or 0) - (subject.age or 0))
            return (s.sex != subject.sex, gap, s.subject_id)

        return min(pool, key=score)

    def generate(self, prompts: Sequence[Prompt], *, seed: int) -> GenerationOutput:
        out = np.empty((len(prompts), 1, *self.ctx.grid.shape), dtype=np.float32)
        for i, p in enumerate(prompts):
            s = self._subject(p)
            hit = _uniform(s.subject_id, seed) < self.amount
            if self.kind == "contrast_swap" and hit:
                s = self._swap_pool("test", s, same_modality=False)
            elif self.kind == "train_copy" and hit:
                s = self._swap_pool("train", s, same_modality=True)
            v = self.ctx.cohort.load_volume(s).astype(np.float32)
            if self.level and self.kind not in ("contrast_swap", "train_copy"):
                rng = np.random.default_rng([seed_for(seed, i), 0xC0])
                v = apply_corruption(v, self.kind, self.amount, mask=self.mask, rng=rng)
            out[i, 0] = np.clip(v, 0.0, 1.0)
        return GenerationOutput(out)

    def info(self) -> dict:
        c = CORRUPTIONS[self.kind]
        return {"role": "oracle", "description": f"held-out real volumes, {c.description}", "kind": self.kind,
                "level": self.level, "amount": self.amount, "unit": c.unit}
