"""Bring a raw structural MRI into atlas (MNI, ICBM152 2009) space, one step per function.

The steps :func:`preprocess_image` chains (each is usable and tested on its own):

1. :func:`load_image` — NIfTI or Analyze (``.hdr``/``.img``); corrupt or truncated files raise
   :class:`PreprocessError` naming the file and the fix.
2. :func:`reorient_to_ras` — ``nibabel.as_closest_canonical`` (voxel axes ≈ R, A, S).
   :func:`search_orientation` — only for headers that carry no reliable orientation (Analyze 7.5,
   e.g. OASIS-1): tries the 24 *proper* 90° rotations of the voxel axes and keeps the one whose
   coarse image correlates best with the template. Proper rotations never mirror, so left/right is
   always the header's (nibabel's radiological LAS convention for Analyze): a mirrored brain is
   nearly symmetric and could not be told apart by image similarity anyway.
3. :func:`n4_bias_correction` — SimpleITK ``N4BiasFieldCorrectionImageFilter`` fitted on an image
   shrunk to ~4 mm voxels (speed), the log bias field then evaluated at full resolution.
4. :func:`skull_strip` — ``deepbet`` (the TorchScript 3D U-Net that ships inside the deepbet wheel,
   T1w-trained, CPU), ``threshold`` (smoothed Otsu-based head mask, erosion, largest connected
   component, dilation, hole filling — "BET-lite"), or ``none`` (everything above the background).
   deepbet is trained on T1w only: for T2/PD/FLAIR the pipeline uses the T1 mask of the same
   subject (resampled through world coordinates: same-session scans share the scanner frame) and
   falls back to ``threshold`` when the subject has no T1.
5. :func:`register_to_template` — SimpleITK. Affine by Mattes mutual information (moments
   initialisation, two resolution levels, regular-step gradient descent), then a dense
   displacement field by **diffeomorphic demons** (symmetric forces, field smoothing 4.5 mm,
   two levels) on the histogram-matched image. Why demons and not the B-spline FFD (also available,
   ``deformable="bspline"``, Mattes MI + L-BFGS-B): on 2 CPU cores the B-spline stage took ~80 s per
   scan at 3 mm against ~3 s for demons, and a dense field follows ventricle enlargement better than
   20 mm control points. Demons compares intensities, so it needs the same contrast on both sides:
   the fixed image is contrast-matched — the ICBM152 2009 T1 for T1w, and for T2/PD/FLAIR the ICBM152
   GM/WM/CSF priors rendered with the phantom's nominal signal equations
   (:func:`modality_template`) — and the moving image is histogram-matched to it first.
   Registration runs on the output grid, but no finer than 2 mm.
6. :class:`Registration` maps atlas → native as ``x = A(y + u(y))`` (``A`` affine, ``u`` the demons
   displacement in atlas space); its inverse ``y = z + u⁻¹(z)``, ``z = A⁻¹x`` uses a fixed-point
   inversion of ``u`` (``u⁻¹(z) = -u(z + u⁻¹(z))``).
7. :func:`propagate_atlas` — Neuromorphometrics labels (nearest) and ICBM tissue priors (linear)
   pulled into the *native* voxel grid through the inverse transform; :func:`structure_volumes`
   counts native voxels (mL, so volumes are the subject's own, not atlas-space ones). Ventricles
   are refined by :func:`ventricle_csf_fraction`: two-compartment (CSF/tissue) unmixing of the
   intensities in the propagated ventricles grown by one voxel, so that a registration that does not
   quite follow an enlarged ventricle still measures it (label counts when CSF has no contrast).
8. :func:`segment_tissues` — a 3-class Gaussian mixture (EM) inside the brain mask whose spatial
   prior is the propagated tissue map (SPM-style "unified" lite; works for any contrast):
   GM/WM/CSF volumes, ICV = brain-mask volume.
9. :func:`warp_to_grid` — native → atlas grid (linear for intensities, nearest/argmax for labels);
   :func:`normalise_intensity` — divide by the 99.5th percentile inside the brain, clip to [0, 1].
10. :func:`qc_metrics` — normalised cross-correlation with the contrast-matched template inside the
    atlas brain mask (atlas space) and Dice between the propagated atlas brain mask and the
    extracted mask (native space); ``qc_pass`` needs NCC >= :data:`QC_NCC_MIN` (0.7), Dice >=
    :data:`QC_DICE_MIN` (0.8) and an ICV within :data:`QC_BRAIN_ML` (500-3000 mL). On the test
    fixtures correct registrations give NCC 0.77-0.90 and Dice 0.95-0.99; an upside-down scan (header
    unchanged) 0.61, a noise volume 0.46. The NCC is computed after the deformable stage, which
    can partly "repair" a wrong affine, hence the margin above the failures rather than a low bar.

Coordinates: every array is indexed (i, j, k) with a 4x4 voxel→world affine in RAS mm (nibabel's
convention). SimpleITK images are built with the same world coordinates (ITK calls them LPS, but
only consistency matters), so transforms come out in RAS mm directly.

Layout: this package holds the chain (:class:`PreparedImage`, :class:`StepLog`,
:func:`preprocess_image`) and re-exports every step; the steps live in
:mod:`cohorts.preprocess.templates` (templates, registration grid, priors),
:mod:`cohorts.preprocess.images` (io, SimpleITK helpers, masks, bias field, orientation),
:mod:`cohorts.preprocess.registration` (registration, atlas propagation) and
:mod:`cohorts.preprocess.measure` (volumes, tissues, atlas space, QC).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from cohorts.grid import Grid
from cohorts.preprocess.images import (SKULL_STRIP_METHODS, PreprocessError, _apply_axes, _ball, _deepbet_model,
                                       _proper_rotations, _sample, _world, deepbet_brain_mask, from_sitk,
                                       head_mask, largest_component, load_image, n4_bias_correction, ncc,
                                       otsu_threshold, reorient_to_ras, resample_mask, search_orientation,
                                       skull_strip, threshold_brain_mask, to_sitk, voxel_sizes)
from cohorts.preprocess.measure import (QC_BRAIN_ML, QC_DICE_MIN, QC_NCC_MIN, VENTRICLE_KEYS, VENTRICLE_REACH_VOXELS,
                                        _grown_ventricles, dice, grid_to_native_points, normalise_intensity,
                                        qc_metrics, segment_tissues, structure_volumes, ventricle_csf_fraction,
                                        warp_to_grid)
from cohorts.preprocess.registration import (AFFINE_ITERATIONS, AFFINE_SAMPLING, BSPLINE_ITERATIONS,
                                             BSPLINE_SAMPLING, BSPLINE_SPACING_MM, DEMONS_ITERATIONS,
                                             DEMONS_SMOOTHING_MM, Registration, _affine_to_matrix, _bspline_stage,
                                             _demons_stage, crop_box, propagate_atlas, register_to_template)
from cohorts.preprocess.templates import (REGISTRATION_MIN_VOXEL_MM, _template_cached, grid_priors, label_priors,
                                          modality_template, registration_grid)

#: every name importable from ``cohorts.preprocess``: the chain, the steps and constants of the
#: submodules, and the private helpers that other code and the tests import from here
__all__ = [
    "PREPROCESS_VERSION", "PreparedImage", "StepLog", "preprocess_image",
    # images
    "SKULL_STRIP_METHODS", "PreprocessError", "load_image", "reorient_to_ras", "voxel_sizes", "to_sitk", "from_sitk",
    "_world", "_sample", "otsu_threshold", "_ball", "largest_component", "head_mask", "threshold_brain_mask",
    "_deepbet_model", "deepbet_brain_mask", "resample_mask", "skull_strip", "n4_bias_correction",
    "_proper_rotations", "_apply_axes", "ncc", "search_orientation",
    # templates
    "REGISTRATION_MIN_VOXEL_MM", "registration_grid", "grid_priors", "label_priors", "_template_cached",
    "modality_template",
    # registration
    "BSPLINE_SPACING_MM", "AFFINE_SAMPLING", "AFFINE_ITERATIONS", "BSPLINE_SAMPLING", "BSPLINE_ITERATIONS",
    "DEMONS_ITERATIONS", "DEMONS_SMOOTHING_MM", "Registration", "_affine_to_matrix", "_demons_stage",
    "_bspline_stage", "register_to_template", "crop_box", "propagate_atlas",
    # measure
    "QC_NCC_MIN", "QC_DICE_MIN", "QC_BRAIN_ML", "VENTRICLE_REACH_VOXELS", "VENTRICLE_KEYS", "_grown_ventricles",
    "ventricle_csf_fraction", "structure_volumes", "segment_tissues", "grid_to_native_points", "warp_to_grid",
    "normalise_intensity", "dice", "qc_metrics",
]

PREPROCESS_VERSION = "1.0"


# ------------------------------------------------------------------------------------ the chain
@dataclass
class PreparedImage:
    """One scan in atlas space with its native-space measurements."""

    image: np.ndarray  # grid, float32 [0, 1]
    labels: np.ndarray  # grid, uint8 tissue labels 0/1 CSF/2 GM/3 WM
    volumes: dict[str, float]  # native mL
    qc: dict
    native_mask: np.ndarray
    native_affine: np.ndarray
    steps: list[dict]


class StepLog:
    """Collects one record per step (name, seconds, details) for ``prepare_log.jsonl``."""

    def __init__(self, sink: Callable[[dict], None] | None = None):
        self.records: list[dict] = []
        self.sink = sink

    def run(self, step: str, fn: Callable, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            out = fn(*args, **kwargs)
        except PreprocessError as e:
            e.step = e.step or step
            self.add(step, time.perf_counter() - t0, status="error", error=str(e))
            raise
        except Exception as e:  # noqa: BLE001 - reported with the step name, then re-raised
            self.add(step, time.perf_counter() - t0, status="error", error=f"{type(e).__name__}: {e}")
            raise PreprocessError(f"{step} failed: {type(e).__name__}: {e}", step) from e
        self.add(step, time.perf_counter() - t0)
        return out

    def add(self, step: str, seconds: float, status: str = "ok", **details) -> None:
        rec = {"step": step, "status": status, "seconds": round(float(seconds), 3), **details}
        self.records.append(rec)
        if self.sink:
            self.sink(rec)


def preprocess_image(path: str | Path, modality: str, grid: Grid, *, skull_strip_method: str = "threshold",
                     fallback_mask: tuple[np.ndarray, np.ndarray] | None = None,
                     orientation_search: str = "auto", deformable: bool | str = "demons",
                     log: StepLog | None = None) -> PreparedImage:
    """Run every step on one scan.

    Args:
        path: raw image file.
        modality: T1, T2, PD or FLAIR.
        grid: output atlas grid.
        skull_strip_method: ``deepbet`` | ``threshold`` | ``none``.
        fallback_mask: ``(mask, affine)`` from the same subject's T1 (see :func:`skull_strip`).
        orientation_search: ``auto`` (only for headers without orientation), ``on`` or ``off``.
        deformable: ``demons`` (default), ``bspline`` or ``none``.
        log: step log.

    Returns:
        :class:`PreparedImage`.
    """
    log = log or StepLog()
    img, reliable = log.run("load", load_image, path)
    img = log.run("reorient", reorient_to_ras, img)
    log.records[-1]["orientation"] = "".join(__import__("nibabel").aff2axcodes(img.affine))
    if orientation_search == "on" or (orientation_search == "auto" and not reliable):
        img, info = log.run("orientation_search", search_orientation, img, modality)
        log.records[-1].update(info)
    img, _ = log.run("bias_correction", n4_bias_correction, img)
    mask, how = log.run("skull_strip", skull_strip, img, skull_strip_method, fallback_mask=fallback_mask,
                        modality=modality)
    native_ml = float(np.prod(voxel_sizes(img.affine))) / 1000.0
    log.records[-1].update({"method": how, "brain_ml": round(float(mask.sum()) * native_ml, 2)})
    if mask.sum() < 100:
        raise PreprocessError(f"{path}: brain extraction kept {int(mask.sum())} voxels; the image is not a "
                              "head scan or the method failed — try --skull-strip threshold/none", "skull_strip")
    reg = log.run("registration", register_to_template, img, mask, modality, grid, deformable=deformable)
    log.records[-1].update({k: round(v, 5) for k, v in reg.metric.items()})
    data = np.asarray(img.dataobj, np.float32)
    box = crop_box(mask, img.affine)
    lpri = label_priors(grid)
    prop = log.run("label_propagation", propagate_atlas, reg, data.shape, img.affine, lpri, box)
    log.records[-1]["inverse_consistency_mm"] = round(reg.inverse_consistency_mm(), 3)
    sub_mask = mask[box]
    post = log.run("tissue_segmentation", segment_tissues, data[box], sub_mask,
                   {k: prop[k] for k in ("csf", "gm", "wm")})
    stats = post.pop("stats")
    # ventricles: CSF fraction by unmixing around the propagated labels where CSF stands out from the
    # surrounding tissue; plain label counts otherwise (e.g. PD-weighted scans)
    frac = ventricle_csf_fraction(data[box], prop["labels"], voxel_sizes(img.affine))
    log.records[-1].update({**stats, "ventricles": "csf fraction" if frac is not None else "label counts"})
    vols = structure_volumes(prop["labels"], native_ml, csf=frac, voxel_mm=voxel_sizes(img.affine))
    for k in ("gm", "wm", "csf"):
        vols[k] = round(float(post[k].sum(dtype=np.float64)) * native_ml, 3)
    vols["icv"] = round(float(sub_mask.sum()) * native_ml, 3)

    def to_grid():
        pts = grid_to_native_points(reg, grid)
        img_g = warp_to_grid(np.where(mask, data, 0), img.affine, reg, grid, 1, pts)
        mask_g = warp_to_grid(mask.astype(np.float32), img.affine, reg, grid, 1, pts) > 0.5
        full = {}
        for k in ("csf", "gm", "wm"):
            a = np.zeros(data.shape, np.float32)
            a[box] = post[k]
            full[k] = warp_to_grid(a, img.affine, reg, grid, 1, pts)
        lab = np.stack([full["csf"], full["gm"], full["wm"]]).argmax(0) + 1
        lab = np.where(mask_g, lab, 0).astype(np.uint8)
        return img_g, mask_g, lab

    img_g, mask_g, lab_g = log.run("resample_to_grid", to_grid)
    out = log.run("normalise", normalise_intensity, img_g, mask_g)
    gpri = grid_priors(grid)
    qc = qc_metrics(out, modality_template(modality, grid), gpri.brain > 0.5, prop["brain"] > 0.5, sub_mask,
                    vols["icv"])
    log.add("qc", 0.0, status="ok" if qc["qc_pass"] else "flagged", **qc)
    return PreparedImage(out, lab_g, vols, qc, mask, img.affine, log.records)
