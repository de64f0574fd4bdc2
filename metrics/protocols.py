"""Metric families of published evaluation protocols (``docs/protocols.md``).

* :class:`Vlm3dPaired` (``vlm3d_paired``): the VLM3D 2026 MRI scorer's per-pair MSE / PSNR / SSIM after
  0.5-99.5 percentile scaling of each volume (:func:`metrics.functional.protocols.vlm3d_paired`), averaged
  over pairs; floor: the same for the matched real floor subject.
* :class:`Fid2p5d` (``fid_2p5d``): FID per plane over the slice features of a 2.5D extractor
  (``vlm3d-squeezenet-2.5d`` or ``maisi-radimagenet-2.5d``; every slice one sample) and their average over
  the planes (VLM3D: ``FID_2p5D_Avg``; MAISI: "average FID"). Fréchet distance of the mean and ddof-1
  covariance, as both scripts compute it.
* :class:`MedmetricMMD` (``mmd_medmetric``): medmetric 0.1.1's default MMD
  (:func:`metrics.functional.protocols.medmetric_mmd`) of generated vs reference features.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from metrics.base import EvalSets, FeatureMetric, Input, Metric, MetricResult, get_features
from metrics.functional.bootstrap import mean_ci
from metrics.functional.frechet import frechet_distance_from_features
from metrics.functional.protocols import MEDMETRIC_SIGMA_RATIOS, SLICE_PROTOCOLS, medmetric_mmd, slice_layout, vlm3d_paired

__all__ = ["Vlm3dPaired", "Fid2p5d", "MedmetricMMD", "split_slice_features"]


def _paired_rows(generated: np.ndarray, reference: np.ndarray, floor: np.ndarray) -> dict[str, np.ndarray]:
    rows: dict[str, list[float]] = {k: [] for k in ("MSE", "PSNR", "SSIM", "floor_MSE", "floor_PSNR", "floor_SSIM")}
    for g, r, f in zip(generated[:, 0], reference[:, 0], floor[:, 0]):
        for prefix, x in (("", g), ("floor_", f)):
            for k, v in vlm3d_paired(r, x).items():
                rows[prefix + k].append(v)
    return {k: np.asarray(v, dtype=np.float64) for k, v in rows.items()}


class Vlm3dPaired(Metric):
    """VLM3D's paired MSE (lower), PSNR and SSIM (higher), each the mean over prompts."""

    name = "vlm3d_paired"
    higher_is_better = True
    inputs = frozenset({Input.PAIRED_REFERENCE})
    description = "VLM3D 2026 MRI scorer: percentile-scaled paired MSE / PSNR / SSIM against the prompt's real volume"
    HIGHER: ClassVar[dict[str, bool]] = {"MSE": False, "PSNR": True, "SSIM": True}

    def config(self) -> dict:
        return {"scaling": "each volume clipped to its 0.5-99.5 percentiles, scaled to [0, 1] (float32)",
                "ssim": "scikit-image default: 7-voxel box window, sample covariance, K1 0.01, K2 0.03, valid region",
                "psnr_data_range": 1.0, "aggregation": "mean over pairs", "protocol": "vlm3d-mri"}

    def compute(self, sets: EvalSets, *, seed: int) -> dict[str, MetricResult]:
        rows = sets.map(_paired_rows, "generated", "reference", "floor")
        out = {}
        for k, higher in self.HIGHER.items():
            vals, fvals = rows[k], rows["floor_" + k]
            ok, fok = np.isfinite(vals), np.isfinite(fvals)
            value, floor = float(np.mean(vals[ok])), float(np.mean(fvals[fok]))
            ci = mean_ci(vals[ok], seed=seed, estimate=value)
            out[k.lower()] = MetricResult(
                value=value, higher_is_better=higher, n=int(ok.sum()), ci_low=ci.low, ci_high=ci.high, floor=floor,
                floor_ci=list(mean_ci(fvals[fok], seed=seed, estimate=floor)),
                details={"per_sample": [float(v) for v in vals], **self.config()})
        return out


def split_slice_features(feats: np.ndarray, protocol: str, shape, voxel_size: float) -> dict[str, np.ndarray]:
    """``(N, sum_p n_p * F)`` per-volume features -> ``plane -> (N * n_p, F)`` slice samples."""
    layout = slice_layout(protocol, shape, voxel_size)
    fdim = SLICE_PROTOCOLS[protocol]["feature_dim"]
    widths = [len(layout[p]) * fdim for p in layout]
    if feats.shape[1] != sum(widths):
        raise ValueError(f"fid_2p5d: features have {feats.shape[1]} columns, but protocol {protocol!r} on a grid "
                         f"{tuple(shape)} at {voxel_size} mm lays out {sum(widths)}; use the protocol's extractor")
    out, start = {}, 0
    for plane, w in zip(layout, widths):
        out[plane] = feats[:, start:start + w].reshape(-1, fdim)
        start += w
    return out


class Fid2p5d(FeatureMetric):
    """2.5D FID: Fréchet distance per plane over slice features, and its mean over the planes (lower).

    Args:
        extractor: ``vlm3d-squeezenet-2.5d`` or ``maisi-radimagenet-2.5d``.
    """

    name = "fid_2p5d"
    higher_is_better = False
    description = "2.5D FID: per-plane Fréchet distance over 2D slice features, averaged over the three planes"
    PROTOCOL_OF: ClassVar[dict[str, str]] = {"vlm3d-squeezenet-2.5d": "vlm3d", "maisi-radimagenet-2.5d": "maisi"}

    def __init__(self, *, extractor: str = "vlm3d-squeezenet-2.5d"):
        if extractor not in self.PROTOCOL_OF:
            raise ValueError(f"fid_2p5d: extractor must be one of {sorted(self.PROTOCOL_OF)}, got {extractor!r}")
        self.extractor = extractor
        self.protocol = self.PROTOCOL_OF[extractor]

    def config(self) -> dict:
        return {"extractor": self.extractor, "slices": self.protocol, "aggregation": "mean of the per-plane FIDs",
                "covariance": "ddof 1", "samples": "every selected slice of every volume"}

    def compute(self, sets: EvalSets, *, seed: int) -> dict[str, MetricResult]:
        shape = np.asarray(sets.brain_mask).shape
        per = {}
        for name in ("generated", "reference", "floor"):
            per[name] = split_slice_features(get_features(sets, self.extractor, name), self.protocol, shape,
                                             sets.voxel_size)
        out = {}
        vals, floors = [], []
        for plane in per["generated"]:
            g, r, f = per["generated"][plane], per["reference"][plane], per["floor"][plane]
            v, fl = frechet_distance_from_features(g, r), frechet_distance_from_features(f, r)
            vals.append(v)
            floors.append(fl)
            out[plane] = MetricResult(value=v, higher_is_better=False, n=int(g.shape[0]), floor=fl,
                                      details={"n_slices": int(g.shape[0]), **self.config()})
        out["avg"] = MetricResult(value=float(np.mean(vals)), higher_is_better=False, n=len(vals),
                                  floor=float(np.mean(floors)), details={"planes": list(per["generated"]),
                                                                         **self.config()})
        return out




class MedmetricMMD(FeatureMetric):
    """medmetric's default MMD (sigma bank around the pooled lower-median distance, unbiased, sqrt) (lower).

    Args:
        extractor: the feature extractor (the protocol uses ``medmetric-medicalnet-r50``).
    """

    name = "mmd_medmetric"
    higher_is_better = False
    description = "medmetric 0.1.1 MMD: unbiased, Gaussian sigma bank x(1/8..8) around the pooled median distance"

    def __init__(self, *, extractor: str = "medmetric-medicalnet-r50"):
        self.extractor = str(extractor)

    def config(self) -> dict:
        return {"extractor": self.extractor, "sigma0": "lower median of pooled [generated; reference] distances",
                "sigma_ratios": list(MEDMETRIC_SIGMA_RATIOS), "estimator": "unbiased MMD^2, clamped at 0, sqrt",
                "protocol": "medmetric"}

    def compute(self, sets: EvalSets, *, seed: int) -> MetricResult:
        g, r, f, _ = self.feature_sets(sets, "generated", "reference", "floor")
        return MetricResult(value=medmetric_mmd(g, r), higher_is_better=False, n=int(g.shape[0]),
                            floor=medmetric_mmd(f, r), details=self.config())
