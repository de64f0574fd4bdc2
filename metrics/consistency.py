"""Through-plane consistency: does a volume hang together across the slices it was generated in?

A generator that makes a 3D volume slice by slice (a 2D model stacked along one axis) produces
slices that are each plausible but not coherent with their neighbours. In-plane, nothing is wrong;
across the stacking axis, adjacent slices decorrelate. This metric compares the decorrelation of
adjacent slices along the stacking axis (default: axial, the last array axis — arrays are (x, y, z)
RAS+) with that along the two in-plane axes:

    d_a = 1 - mean_k NCC(slice_k, slice_{k+1}) along axis a      (NCC over brain-mask voxels)
    S   = log( d_stack / mean(d_other axes) )                    per volume

Real volumes have some S determined by anatomy, voxel size and noise; slice-stacking raises it.
The reported value is ``|mean S(generated) - mean S(reference)|`` (lower is better), the floor the
same for the matched real set, ``|mean S(floor) - mean S(reference)|``. Inter-slice incoherence is the known failure of stacked 2D slice
generators that volumetric models and 2D-to-3D adaptations address (e.g. Zhu et al. 2023,
"Make-A-Volume", MICCAI); adjacent-slice NCC is the plain measure of it used here. The log-ratio
makes the statistic insensitive to isotropic noise, which decorrelates every axis alike.

The CI (and the floor's, ``floor_ci``) bootstraps the *signed* difference of means (generated and
reference resampled independently; floor and reference for the floor), takes its bias-corrected
percentile interval (BC, Efron 1987) and folds it to the absolute value
(:meth:`~metrics.functional.bootstrap.Interval.absolute`): the absolute difference itself is biased
upwards near 0 — its percentile interval could exclude a value of 0 — while the signed one is not.

S is per volume, so each set is read one shard at a time (:meth:`~metrics.base.EvalSets.map` of
:func:`through_plane_statistic`) and only the per-volume S and NCCs are kept.
"""

from __future__ import annotations

from functools import partial

import numpy as np

from metrics.base import EvalSets, Metric, MetricResult
from metrics.functional.bootstrap import BC, bootstrap_ci_two_sample

AXIS_NAMES = {0: "sagittal (x)", 1: "coronal (y)", 2: "axial (z)"}


def adjacent_slice_ncc(volume: np.ndarray, axis: int, mask: np.ndarray | None = None, *,
                       min_voxels: int = 50) -> float:
    """Voxel-count-weighted mean normalised cross-correlation of adjacent slices along ``axis``.

    Args:
        volume: (D, H, W).
        axis: 0, 1 or 2.
        mask: (D, H, W) bool; a pair uses the voxels inside the mask in either slice.
        min_voxels: pairs with fewer voxels are skipped.

    Returns:
        The mean NCC in [-1, 1] (NaN if no pair qualifies).
    """
    v = np.moveaxis(np.asarray(volume, np.float64), axis, 0)
    m = np.ones(v.shape, bool) if mask is None else np.moveaxis(np.asarray(mask, bool), axis, 0)
    num, den = 0.0, 0
    for k in range(v.shape[0] - 1):
        sel = m[k] | m[k + 1]
        cnt = int(sel.sum())
        if cnt < min_voxels:
            continue
        a, b = v[k][sel], v[k + 1][sel]
        a, b = a - a.mean(), b - b.mean()
        denom = np.sqrt((a * a).sum() * (b * b).sum())
        if denom < 1e-12:
            continue
        num += float((a * b).sum() / denom) * cnt
        den += cnt
    return num / den if den else float("nan")


def through_plane_statistic(volumes: np.ndarray, mask: np.ndarray | None = None, *,
                            stack_axis: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Per-volume log decorrelation ratio S and per-axis NCCs.

    Args:
        volumes: (N, 1, D, H, W).
        mask: (D, H, W) bool or None.
        stack_axis: the axis a slice generator stacks along (2 = axial).

    Returns:
        ``(S (N,), ncc (N, 3))``.
    """
    v = np.asarray(volumes, np.float32)
    if v.ndim != 5 or v.shape[1] != 1:
        raise ValueError(f"through-plane consistency: volumes must be (N, 1, D, H, W), got {v.shape}")
    ncc = np.array([[adjacent_slice_ncc(x[0], a, mask) for a in range(3)] for x in v])
    d = np.clip(1.0 - ncc, 1e-6, None)
    others = [a for a in range(3) if a != stack_axis]
    s = np.log(d[:, stack_axis] / d[:, others].mean(1))
    return s, ncc


class ThroughPlaneConsistency(Metric):
    """|mean S(generated) - mean S(real)|, S = log of adjacent-slice decorrelation along the stacking axis
    over that in-plane (lower is better; floor = the matched real set).

    Args:
        stack_axis: 0 (sagittal), 1 (coronal) or 2 (axial, default).
        in_mask: use the brain-mask voxels only (default) or whole slices.
        n_boot: bootstrap resamples.
    """

    name = "through_plane"
    higher_is_better = False
    description = "through-plane consistency: adjacent-slice decorrelation along the stacking axis vs in-plane, relative to real"

    def __init__(self, *, stack_axis: int = 2, in_mask: bool = True, n_boot: int = 500):
        if stack_axis not in (0, 1, 2):
            raise ValueError(f"through_plane: stack_axis={stack_axis}; use 0 (sagittal), 1 (coronal) or 2 (axial)")
        self.stack_axis, self.in_mask, self.n_boot = int(stack_axis), bool(in_mask), int(n_boot)

    def config(self) -> dict:
        return {"stack_axis": self.stack_axis, "stack_axis_name": AXIS_NAMES[self.stack_axis],
                "in_mask": self.in_mask, "statistic": "S = log((1 - NCC_stack) / mean(1 - NCC_in-plane))",
                "value": "|mean S(generated) - mean S(reference)|", "n_boot": self.n_boot,
                "ci": f"{BC} of the signed difference of means (two-sample), folded to |·|, 95%"}

    def compute(self, sets: EvalSets, *, seed: int) -> MetricResult:
        mask = np.asarray(sets.brain_mask, bool) if self.in_mask else None
        per_shard = partial(through_plane_statistic, mask=mask, stack_axis=self.stack_axis)
        s_g, n_g = sets.map(per_shard, "generated")
        s_r, n_r = sets.map(per_shard, "reference")
        s_f, n_f = sets.map(per_shard, "floor")
        warnings = []
        ok_g, ok_r, ok_f = np.isfinite(s_g), np.isfinite(s_r), np.isfinite(s_f)
        if not ok_g.all():
            warnings.append(f"through_plane: {int((~ok_g).sum())} generated volume(s) have no usable slice pair "
                            "(empty or constant); they are left out")
        if not ok_g.any():
            raise ValueError("through_plane: no generated volume has a usable slice pair (all empty/constant?)")
        g, r, f = s_g[ok_g], s_r[ok_r], s_f[ok_f]
        ref_mean = float(r.mean())
        signed, signed_floor = float(g.mean()) - ref_mean, float(f.mean()) - ref_mean

        def signed_ci(x: np.ndarray, estimate: float):
            return bootstrap_ci_two_sample(lambda a, b: float(x[a].mean()) - float(r[b].mean()), len(x), len(r),
                                           n_boot=self.n_boot, seed=seed, estimate=estimate).absolute()

        ci, fci = signed_ci(g, signed), signed_ci(f, signed_floor)
        axes = ["sagittal", "coronal", "axial"]
        return MetricResult(
            value=abs(signed), higher_is_better=False, n=int(ok_g.sum()), ci_low=ci.low, ci_high=ci.high,
            floor=abs(signed_floor), floor_ci=list(fci), warnings=warnings,
            details={"signed_difference": signed,
                     **ci.details("generated and reference resampled independently"),
                     "mean_S": {"generated": float(g.mean()), "reference": ref_mean, "floor": float(f.mean())},
                     "mean_adjacent_ncc": {name: {ax: float(np.nanmean(n[:, j])) for j, ax in enumerate(axes)}
                                           for name, n in (("generated", n_g), ("reference", n_r), ("floor", n_f))},
                     "per_sample_S": [float(x) for x in s_g], **self.config()})
