"""Spectral sharpness: does a generated brain have the fine structure of a real one?

Per volume, the normalised radial power spectrum inside a soft window made from the atlas brain mask
(:func:`metrics.functional.spectrum.radial_power_spectrum`, in dB); the target is the mean spectrum
of the reference volumes **of the same modality** (contrast changes the spectrum's shape, so a T1 is
compared with T1s). The value is the mean over generated volumes of the mean absolute dB difference
to that target over the **high-frequency shells** (from ``hf_from`` × Nyquist up: at 3 mm, detail
finer than about 12 mm — sulci, the cortical ribbon, the edges of deep nuclei); the floor is the same
for the matched real floor set. Lower is better.

It sees what a reader sees first and what feature distances can miss: blur and k-space low-pass
(high frequencies missing: negative ``hf_excess_db``), noise and ghosting (too much high frequency:
positive). By construction it is blind to a global intensity scale, and nearly blind to a shift
(the mean inside the window is removed) and to smooth bias fields (lowest shells only). The report
card (``python -m bench validate``) measures what it detects.
"""

from __future__ import annotations

from functools import partial
from typing import ClassVar

import numpy as np

from metrics.base import EvalSets, Metric, MetricResult
from metrics.functional.bootstrap import mean_ci
from metrics.functional.spectrum import radial_power_spectrum, spectral_distance_db

__all__ = ["SpectralSharpness"]


class SpectralSharpness(Metric):
    """Mean |dB| distance, over the high-frequency shells, between each volume's radial power spectrum
    and the same-modality reference mean spectrum, inside the brain (lower is better; floor = the
    matched real set).

    Args:
        n_bins: frequency shells between 0 and Nyquist.
        hf_from: the distance uses the shells at or above this fraction of Nyquist (also the band of the
            signed ``hf_excess_db`` in the details: negative = blurrier than real, positive = noisier).
        erode, taper: the soft brain window (voxels; :func:`metrics.functional.spectrum.brain_window`).
        n_boot: bootstrap resamples of the CI.
    """

    name: ClassVar[str] = "sharpness"
    higher_is_better: ClassVar[bool] = False
    axis: ClassVar[str] = "realism"
    description: ClassVar[str] = ("radial power-spectrum distance (dB) to same-modality real volumes inside the "
                                  "brain mask: blur, low-pass and noise")

    def __init__(self, *, n_bins: int = 16, hf_from: float = 0.5, erode: int = 2, taper: float = 1.5,
                 n_boot: int = 1000):
        if n_bins < 4:
            raise ValueError(f"sharpness: n_bins must be >= 4, got {n_bins}")
        if not 0.0 < hf_from < 1.0:
            raise ValueError(f"sharpness: hf_from must be in (0, 1), got {hf_from}")
        if erode < 0 or taper < 0:
            raise ValueError(f"sharpness: erode and taper must be >= 0, got {erode} and {taper}")
        self.n_bins, self.hf_from, self.n_boot = int(n_bins), float(hf_from), int(n_boot)
        self.erode, self.taper = int(erode), float(taper)

    def config(self) -> dict:
        return {"n_bins": self.n_bins, "hf_from": self.hf_from, "erode": self.erode, "taper": self.taper,
                "n_boot": self.n_boot,
                "spectrum": "|FFT((v - mean_w v) * w)|^2, w = eroded brain mask smoothed by a Gaussian; "
                            "shell-averaged, normalised to sum 1, dB",
                "target": "mean reference spectrum of the same modality",
                "value": "mean over volumes of the mean |dB difference| over shells >= hf_from * Nyquist"}

    def _modalities(self, sets: EvalSets, n: int) -> list[str]:
        attrs = sets.attributes if len(sets.attributes) == n else [{}] * n
        return [str((a or {}).get("modality") or "any").lower() for a in attrs]

    def compute(self, sets: EvalSets, *, seed: int) -> MetricResult:
        fn = partial(radial_power_spectrum, mask=np.asarray(sets.brain_mask, bool), voxel_size=sets.voxel_size,
                     n_bins=self.n_bins, erode=self.erode, taper=self.taper)
        (p_g, centres), (p_r, _), (p_f, _) = (sets.map(_profiles_only(fn), s) for s in ("generated", "reference",
                                                                                      "floor"))
        shells = np.isfinite(p_r).any(axis=0)  # tiny grids have shells with no coefficient: left out
        centres, p_g, p_r, p_f = centres[0][shells], p_g[:, shells], p_r[:, shells], p_f[:, shells]
        mods = self._modalities(sets, len(p_g))
        targets = {m: np.nanmean(p_r[[i for i, x in enumerate(mods) if x == m]], axis=0) for m in set(mods)}
        t = np.stack([targets[m] for m in mods])
        hf = centres >= self.hf_from * (0.5 / sets.voxel_size)
        if not hf.any():
            raise ValueError(f"sharpness: no frequency shell at or above hf_from={self.hf_from} of Nyquist")
        d_g, d_f = spectral_distance_db(p_g[:, hf], t[:, hf]), spectral_distance_db(p_f[:, hf], t[:, hf])
        value, floor = float(np.mean(d_g)), float(np.mean(d_f))
        ci = mean_ci(d_g, n_boot=self.n_boot, seed=seed, estimate=value)
        fci = mean_ci(d_f, n_boot=self.n_boot, seed=seed, estimate=floor)
        details = {
            "hf_excess_db": float(np.nanmean((p_g - t)[:, hf])),
            "floor_hf_excess_db": float(np.nanmean((p_f - t)[:, hf])),
            "per_sample": [float(x) for x in d_g],
            "frequencies_cycles_per_mm": [float(c) for c in centres],
            "mean_profile_db": {"generated": _list(np.nanmean(p_g, 0)), "reference": _list(np.nanmean(p_r, 0)),
                                "floor": _list(np.nanmean(p_f, 0))},
            **ci.details("generated volumes resampled"), **self.config()}
        return MetricResult(value=value, higher_is_better=False, n=int(len(d_g)), ci_low=ci[0], ci_high=ci[1],
                            floor=floor, floor_ci=list(fci), details=details)


class _profiles_only:
    """Picklable per-shard function: ``(profiles, bin centres repeated per volume)`` (per-volume rows, so
    shards concatenate)."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, shard: np.ndarray):
        p, c = self.fn(shard)
        return p, np.broadcast_to(c, p.shape).copy()


def _list(a: np.ndarray) -> list[float | None]:
    return [None if not np.isfinite(x) else float(x) for x in a]
