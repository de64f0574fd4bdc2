"""Registration to the contrast-matched template and atlas propagation (part of
:mod:`cohorts.preprocess`): :class:`Registration` (atlas -> native mapping and its inverse),
:func:`register_to_template` (affine + demons or B-spline), :func:`crop_box`, :func:`propagate_atlas`."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cohorts import atlas
from cohorts.grid import Grid
from cohorts.preprocess.images import _sample, _world, to_sitk, voxel_sizes
from cohorts.preprocess.templates import modality_template, registration_grid

BSPLINE_SPACING_MM = 20.0
AFFINE_SAMPLING, AFFINE_ITERATIONS = 0.1, 100
BSPLINE_SAMPLING, BSPLINE_ITERATIONS = 0.1, 30
DEMONS_ITERATIONS, DEMONS_SMOOTHING_MM = 50, 4.5


# ------------------------------------------------------------------------------------ registration
@dataclass
class Registration:
    """atlas → native mapping ``x = A (y + u(y))``.

    Attributes:
        affine: 4x4, atlas world (mm) → native world (mm).
        disp: (3, *shape) displacement ``u`` in mm on the registration grid (atlas space).
        grid: the registration grid.
        metric: final mutual-information value of each stage.
    """

    affine: np.ndarray
    disp: np.ndarray
    grid: Grid
    metric: dict = field(default_factory=dict)
    _inv_disp: np.ndarray | None = None

    def displacement_at(self, points: np.ndarray) -> np.ndarray:
        """u at atlas points (3, N) (linear; nearest edge value outside the grid)."""
        return np.stack([_sample(self.disp[c], self.grid.affine, points, 1, mode="nearest") for c in range(3)])

    def atlas_to_native(self, points: np.ndarray) -> np.ndarray:
        y = points + self.displacement_at(points)
        a = self.affine.astype(np.float32)
        return a[:3, :3] @ y + a[:3, 3:4]

    @property
    def inverse_disp(self) -> np.ndarray:
        """u⁻¹ on the registration grid by fixed-point iteration ``v ← -u(z + v)``."""
        if self._inv_disp is None:
            z = _world(self.grid.shape, self.grid.affine)
            v = np.zeros_like(z)
            for _ in range(25):
                v = -self.displacement_at(z + v)
            self._inv_disp = v.reshape(3, *self.grid.shape).astype(np.float32)
        return self._inv_disp

    def native_to_atlas(self, points: np.ndarray) -> np.ndarray:
        inv = np.linalg.inv(self.affine).astype(np.float32)
        z = inv[:3, :3] @ points + inv[:3, 3:4]
        iv = self.inverse_disp
        return z + np.stack([_sample(iv[c], self.grid.affine, z, 1, mode="nearest") for c in range(3)])

    def inverse_consistency_mm(self) -> float:
        """Mean |T⁻¹(T(y)) - y| over the grid (mm): how well the inverse is resolved."""
        z = _world(self.grid.shape, self.grid.affine)[:, ::97]
        back = self.native_to_atlas(self.atlas_to_native(z))
        return float(np.sqrt(((back - z) ** 2).sum(0)).mean())


def _affine_to_matrix(tx) -> np.ndarray:
    m = np.array(tx.GetMatrix(), float).reshape(3, 3)
    c = np.array(tx.GetCenter(), float)
    t = np.array(tx.GetTranslation(), float)
    out = np.eye(4)
    out[:3, :3] = m
    out[:3, 3] = c + t - m @ c
    return out


def _demons_stage(fixed, moving, affine_tx, tpl: np.ndarray, rgrid: Grid):
    """Diffeomorphic demons between the template and the affinely resampled, histogram-matched image."""
    import SimpleITK as sitk

    warped = sitk.Resample(moving, fixed, affine_tx, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    matched = sitk.HistogramMatching(warped, fixed, numberOfHistogramLevels=128, numberOfMatchPoints=15,
                                     thresholdAtMeanIntensity=True)
    demons = sitk.DiffeomorphicDemonsRegistrationFilter()
    demons.SetNumberOfIterations(DEMONS_ITERATIONS)
    demons.SetStandardDeviations(DEMONS_SMOOTHING_MM / rgrid.voxel_size)
    demons.SetMaximumUpdateStepLength(2.0)
    demons.SetUseGradientType(demons.Symmetric)
    # coarse-to-fine: half resolution first, its field upsampled as the initial field
    half = sitk.Shrink(fixed, [2, 2, 2])
    mhalf = sitk.Resample(matched, half, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    f0 = demons.Execute(sitk.SmoothingRecursiveGaussian(half, rgrid.voxel_size),
                        sitk.SmoothingRecursiveGaussian(mhalf, rgrid.voxel_size))
    f0 = sitk.Resample(f0, fixed, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkVectorFloat64)
    field_img = demons.Execute(fixed, matched, f0)
    rmse = float(demons.GetRMSChange())
    disp = sitk.GetArrayFromImage(field_img).transpose(3, 2, 1, 0).astype(np.float32)
    return disp, rmse


def _bspline_stage(fixed, moving, affine_tx, spacing_mm: float, rgrid: Grid, seed: int):
    """Cubic B-spline FFD by Mattes MI (multi-modal, but ~100x slower than demons on 2 cores)."""
    import SimpleITK as sitk

    extent = np.array(rgrid.shape) * rgrid.voxel_size
    mesh = [max(2, int(round(e / spacing_mm))) for e in extent]
    bsp = sitk.BSplineTransformInitializer(fixed, mesh, order=3)
    reg2 = sitk.ImageRegistrationMethod()
    reg2.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    reg2.SetMetricSamplingStrategy(reg2.RANDOM)
    reg2.SetMetricSamplingPercentage(BSPLINE_SAMPLING, seed)
    reg2.SetInterpolator(sitk.sitkLinear)
    reg2.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=1e-5, numberOfIterations=BSPLINE_ITERATIONS,
                              maximumNumberOfCorrections=5, maximumNumberOfFunctionEvaluations=2 * BSPLINE_ITERATIONS,
                              costFunctionConvergenceFactor=1e7)
    reg2.SetShrinkFactorsPerLevel([2, 1])
    reg2.SetSmoothingSigmasPerLevel([1.0, 0.0])
    reg2.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    reg2.SetMovingInitialTransform(affine_tx)
    reg2.SetInitialTransform(bsp, inPlace=True)
    reg2.Execute(fixed, moving)
    field_img = sitk.TransformToDisplacementField(bsp, sitk.sitkVectorFloat64, fixed.GetSize(), fixed.GetOrigin(),
                                                  fixed.GetSpacing(), fixed.GetDirection())
    return sitk.GetArrayFromImage(field_img).transpose(3, 2, 1, 0).astype(np.float32), float(reg2.GetMetricValue())


def register_to_template(img, mask: np.ndarray, modality: str, grid: Grid, *, deformable: bool | str = "demons",
                         bspline_spacing_mm: float = BSPLINE_SPACING_MM, seed: int = 0) -> Registration:
    """Register a brain-extracted native image to the contrast-matched template.

    Args:
        img: RAS+ bias-corrected ``Nifti1Image``.
        mask: its brain mask.
        modality: T1, T2, PD or FLAIR (selects the template).
        grid: output grid (registration runs on :func:`registration_grid` of it).
        deformable: ``demons`` (default), ``bspline`` or ``none`` (affine only).
        bspline_spacing_mm: control-point spacing of the B-spline.
        seed: sampling seed of the MI metric (deterministic results).

    Returns:
        :class:`Registration` (atlas → native).
    """
    import SimpleITK as sitk

    rgrid = registration_grid(grid)
    tpl = modality_template(modality, rgrid)
    fixed = to_sitk(tpl, rgrid.affine)
    data = np.asarray(img.dataobj, np.float32)
    brain = np.where(mask, data, 0).astype(np.float32)
    hi = float(np.percentile(brain[mask], 99.5)) if mask.any() else 1.0
    brain = np.clip(brain / max(hi, 1e-12), 0, 1.2)
    moving = to_sitk(brain, img.affine)
    # bring the moving image to ~the registration voxel size (speed), smoothing first
    vs = voxel_sizes(img.affine)
    target = float(rgrid.voxel_size)
    if vs.min() < 0.75 * target:
        sig = [max(0.0, 0.5 * np.sqrt(max(target**2 - v**2, 0))) for v in vs]
        sm = sitk.SmoothingRecursiveGaussian(moving, sig)
        size = [int(np.ceil(n * v / target)) for n, v in zip(moving.GetSize(), vs)]
        moving = sitk.Resample(sm, size, sitk.Transform(), sitk.sitkLinear, moving.GetOrigin(),
                               [target] * 3, moving.GetDirection(), 0.0, sitk.sitkFloat32)
    fixed = sitk.Cast(fixed, sitk.sitkFloat32)
    moving = sitk.Cast(moving, sitk.sitkFloat32)

    init = sitk.CenteredTransformInitializer(fixed, moving, sitk.AffineTransform(3),
                                             sitk.CenteredTransformInitializerFilter.MOMENTS)
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(AFFINE_SAMPLING, seed)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-3, numberOfIterations=AFFINE_ITERATIONS,
                                                 relaxationFactor=0.6, gradientMagnitudeTolerance=1e-6)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([2, 1])
    reg.SetSmoothingSigmasPerLevel([1.0, 0.0])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    reg.SetInitialTransform(init, inPlace=True)
    reg.Execute(fixed, moving)
    metric = {"affine_mi": float(reg.GetMetricValue())}
    aff = _affine_to_matrix(init)

    disp = np.zeros((3, *rgrid.shape), np.float32)
    if deformable in (True, "demons"):
        disp, metric["demons_rmse"] = _demons_stage(fixed, moving, init, tpl, rgrid)
    elif deformable == "bspline":
        disp, metric["bspline_mi"] = _bspline_stage(fixed, moving, init, bspline_spacing_mm, rgrid, seed)
    elif deformable not in (False, None, "none", "affine"):
        raise ValueError(f"unknown deformable stage {deformable!r}; choose demons, bspline or none")
    return Registration(aff, disp, rgrid, metric)


# ------------------------------------------------------------------------------------ propagation
def crop_box(mask: np.ndarray, affine: np.ndarray, margin_mm: float = 30.0) -> tuple[slice, slice, slice]:
    """Bounding box of ``mask`` grown by ``margin_mm`` (all of the image when the mask is empty)."""
    if not mask.any():
        return tuple(slice(0, n) for n in mask.shape)  # type: ignore[return-value]
    idx = np.argwhere(mask)
    m = np.ceil(margin_mm / voxel_sizes(affine)).astype(int)
    lo = np.maximum(idx.min(0) - m, 0)
    hi = np.minimum(idx.max(0) + m + 1, mask.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))  # type: ignore[return-value]


def propagate_atlas(reg: Registration, shape, affine: np.ndarray, priors: atlas.Priors,
                    box: tuple[slice, slice, slice] | None = None) -> dict[str, np.ndarray]:
    """Atlas labels and tissue priors pulled into native voxels through the inverse transform.

    Args:
        reg: atlas → native registration.
        shape, affine: the native voxel grid.
        priors: atlas priors (labels nearest, probabilities linear).
        box: native sub-box to evaluate (default: everything).

    Returns:
        ``{"labels": int16, "gm", "wm", "csf", "brain": float32}`` on the box.
    """
    box = box or tuple(slice(0, n) for n in shape)
    sub_shape = tuple(s.stop - s.start for s in box)
    sub_aff = np.asarray(affine, float).copy()
    sub_aff[:3, 3] = affine[:3, :3] @ np.array([s.start for s in box]) + affine[:3, 3]
    pts = reg.native_to_atlas(_world(sub_shape, sub_aff))
    out = {"labels": _sample(priors.labels, priors.affine, pts, 0).reshape(sub_shape)}
    for k in ("gm", "wm", "csf", "brain"):
        out[k] = _sample(getattr(priors, k), priors.affine, pts, 1).reshape(sub_shape)
    return out
