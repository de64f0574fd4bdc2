"""Caption-matched SSIM: each generated volume against the real volume whose caption was its prompt.

SSIM (Wang et al. 2004, IEEE TIP 13(4)) with a Gaussian window (sigma 1.5, 11 voxels), data range
1 (volumes are normalised to ``[0, 1]``), averaged over the valid region (border of 5 voxels
cropped — the scikit-image/MONAI convention) and, by default, over the brain mask only, so that the
empty background does not inflate the score.

Volumes are read one shard at a time: :func:`paired_ssim_rows` runs on aligned shards of the
generated, reference and floor sets (:meth:`~metrics.base.EvalSets.map`) and returns per-volume
values; the mean and its bootstrap CI are computed from those: the bias-corrected percentile
interval (BC, Efron 1987) of the mean over prompts, which contains the value; the floor's interval
(``floor_ci``) is computed the same way from the floor's per-volume values.
"""

from __future__ import annotations

from functools import partial

import numpy as np

from metrics.base import EvalSets, Input, Metric, MetricResult, log
from metrics.functional.bootstrap import BC, mean_ci
from metrics.functional.ssim import ssim3d


def paired_ssim_rows(generated: np.ndarray, reference: np.ndarray, floor: np.ndarray, *, mask: np.ndarray | None,
                     data_range: float, sigma: float, kernel_size: int) -> dict[str, np.ndarray]:
    """Per-volume SSIM of one shard: generated vs reference and floor vs reference, plus the
    generated intensity range.

    Args:
        generated: ``(n, 1, D, H, W)`` shard of the generated set.
        reference: the aligned shard of the reference set.
        floor: the aligned shard of the floor set.
        mask: ``(D, H, W)`` bool averaging mask, or None for the whole cropped volume.
        data_range: intensity range of the volumes.
        sigma: Gaussian window standard deviation (voxels).
        kernel_size: odd window size (voxels).

    Returns:
        ``{"ssim", "floor_ssim", "min", "max"}``, each ``(n,)``.
    """
    flat = generated.reshape(generated.shape[0], -1)
    ssim = ssim3d(generated, reference, data_range=data_range, sigma=sigma, kernel_size=kernel_size, mask=mask)
    floor_ssim = ssim3d(floor, reference, data_range=data_range, sigma=sigma, kernel_size=kernel_size, mask=mask)
    return {"ssim": ssim, "floor_ssim": floor_ssim, "min": flat.min(axis=1), "max": flat.max(axis=1)}


class PairedSSIM(Metric):
    """Mean 3D SSIM of generated[i] vs reference[i] (higher is better); floor = floor[i] vs reference[i].

    Args:
        sigma: Gaussian window standard deviation (voxels).
        kernel_size: odd window size (voxels).
        data_range: intensity range of the volumes.
        in_mask: average the SSIM map over ``sets.brain_mask`` (True) or the whole cropped volume.
    """

    name = "ssim"
    higher_is_better = True
    inputs = frozenset({Input.PAIRED_REFERENCE})
    description = "3D SSIM of each sample against its caption-matched real volume (Wang et al. 2004)"

    def __init__(self, *, sigma: float = 1.5, kernel_size: int = 11, data_range: float = 1.0,
                 in_mask: bool = True):
        self.sigma = float(sigma)
        self.kernel_size = int(kernel_size)
        self.data_range = float(data_range)
        self.in_mask = bool(in_mask)

    def config(self) -> dict:
        return {"window": "gaussian", "sigma": self.sigma, "kernel_size": self.kernel_size,
                "data_range": self.data_range, "in_mask": self.in_mask, "border": "cropped (valid region)",
                "k1": 0.01, "k2": 0.03, "ci": f"{BC} of the mean over prompts, 95%"}

    def compute(self, sets: EvalSets, *, seed: int) -> MetricResult:
        if sets.generated.shape != sets.reference.shape:
            raise ValueError(f"generated {sets.generated.shape} and reference {sets.reference.shape} volumes "
                             "differ in shape; generate on the suite grid")
        mask = np.asarray(sets.brain_mask, dtype=bool) if self.in_mask else None
        rows = sets.map(partial(paired_ssim_rows, mask=mask, data_range=self.data_range, sigma=self.sigma,
                                kernel_size=self.kernel_size), "generated", "reference", "floor")
        warnings: list[str] = []
        lo, hi = float(np.min(rows["min"])), float(np.max(rows["max"]))
        if lo < -1e-3 or hi > self.data_range + 1e-3:
            msg = (f"ssim: generated intensities span [{lo:.3g}, {hi:.3g}], outside the data range "
                   f"[0, {self.data_range}] assumed by the SSIM constants")
            log.warning(msg)
            warnings.append(msg)
        vals, floor_vals = rows["ssim"], rows["floor_ssim"]
        ok, fok = np.isfinite(vals), np.isfinite(floor_vals)
        value, floor = float(np.mean(vals[ok])), float(np.mean(floor_vals[fok]))
        ci = mean_ci(vals[ok], seed=seed, estimate=value)
        fci = mean_ci(floor_vals[fok], seed=seed, estimate=floor)
        return MetricResult(
            value=value, higher_is_better=True, n=int(ok.sum()), ci_low=ci.low, ci_high=ci.high,
            floor=floor, floor_ci=list(fci), warnings=warnings,
            details={"per_sample": [float(v) for v in vals], "floor_per_sample": [float(v) for v in floor_vals],
                     **self.config(), **ci.details("prompts resampled")})
