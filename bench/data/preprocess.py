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
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np
from scipy import ndimage as ndi

from bench.data import atlas
from bench.data.grid import Grid, _make

logger = logging.getLogger(__name__)

PREPROCESS_VERSION = "1.0"
SKULL_STRIP_METHODS = ("deepbet", "threshold", "none")
#: QC thresholds (see :func:`qc_metrics`; calibrated on the test fixtures: correct registrations
#: NCC 0.77-0.90, Dice 0.95-0.99; upside-down scan NCC 0.61; noise volume NCC 0.46).
QC_NCC_MIN = 0.7
QC_DICE_MIN = 0.8
#: plausible intracranial volume (mL) of a child or adult head: outside it brain extraction failed
QC_BRAIN_ML = (500.0, 3000.0)
BSPLINE_SPACING_MM = 20.0
AFFINE_SAMPLING, AFFINE_ITERATIONS = 0.1, 100
BSPLINE_SAMPLING, BSPLINE_ITERATIONS = 0.1, 30
DEMONS_ITERATIONS, DEMONS_SMOOTHING_MM = 50, 4.5
#: ventricle labels are grown by this many native voxels before summing the CSF posterior
VENTRICLE_REACH_VOXELS = 1.05
REGISTRATION_MIN_VOXEL_MM = 2.0


class PreprocessError(RuntimeError):
    """A step that cannot run on this input; the message names the file, the problem and the fix."""

    def __init__(self, message: str, step: str = ""):
        super().__init__(message)
        self.step = step


# ------------------------------------------------------------------------------------ io
def load_image(path: str | Path):
    """Load a NIfTI or Analyze image as a 3D float32 ``Nifti1Image``.

    Args:
        path: ``.nii``, ``.nii.gz``, ``.hdr`` or ``.img`` (Analyze pairs: either file of the pair).

    Returns:
        ``(image, reliable_orientation)``: the image (4D with one volume squeezed, the first volume
        of a 4D series otherwise) and whether its header carries a trustworthy orientation (NIfTI
        with a qform/sform code > 0; Analyze never does).

    Raises:
        PreprocessError: missing, unreadable, truncated, empty or non-3D data.
    """
    import nibabel as nib

    path = Path(path)
    if path.suffix == ".img" and path.with_suffix(".hdr").exists():
        path = path.with_suffix(".hdr")
    if not path.exists():
        raise PreprocessError(f"{path}: file not found; check the download is complete", "load")
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as e:  # nibabel/zlib/EOF errors for corrupt or truncated files
        raise PreprocessError(f"{path}: cannot read the image ({type(e).__name__}: {e}); the file is corrupt "
                              "or truncated — download/extract it again, or delete it to skip this scan",
                              "load") from e
    if data.ndim == 4:
        if data.shape[3] > 1:
            logger.warning("%s: 4D image with %d volumes; using the first", path, data.shape[3])
        data = data[..., 0]
    if data.ndim != 3 or min(data.shape) < 2:
        raise PreprocessError(f"{path}: expected a 3D volume, got shape {data.shape}; pass a structural scan",
                              "load")
    if not np.isfinite(data).all():
        data = np.nan_to_num(data, nan=0.0, posinf=0.0, neginf=0.0)
    if float(data.max()) <= float(data.min()):
        raise PreprocessError(f"{path}: the image is constant ({float(data.min()):g} everywhere); the file is "
                              "empty or damaged — download it again", "load")
    reliable = isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)) and (
        int(img.header["qform_code"]) > 0 or int(img.header["sform_code"]) > 0)
    out = nib.Nifti1Image(data, img.affine)
    return out, reliable


def reorient_to_ras(img):
    """Reorient to the closest canonical (RAS+) voxel order with ``nibabel.as_closest_canonical``."""
    import nibabel as nib

    if not isinstance(img, nib.Nifti1Image):
        img = nib.Nifti1Image(np.asarray(img.dataobj, np.float32), img.affine)
    can = nib.as_closest_canonical(img)
    return nib.Nifti1Image(np.asarray(can.dataobj, np.float32), can.affine)


def voxel_sizes(affine: np.ndarray) -> np.ndarray:
    return np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(0))


# ------------------------------------------------------------------------------------ templates
def registration_grid(grid: Grid) -> Grid:
    """The grid registration runs on: the output grid, but no finer than 2 mm."""
    if grid.voxel_size >= REGISTRATION_MIN_VOXEL_MM:
        return grid
    return _make(REGISTRATION_MIN_VOXEL_MM, f"{REGISTRATION_MIN_VOXEL_MM:g}mm")


def grid_priors(grid: Grid) -> atlas.Priors:
    return atlas.load_priors(grid.voxel_size, tuple(grid.shape), grid.affine)


def label_priors(grid: Grid) -> atlas.Priors:
    """Priors used for label propagation: half the output voxel size for >= 2 mm grids (1.5 mm for
    3 mm), 1 mm otherwise — the phantom's working grid, so their disk cache is shared."""
    from bench.data.phantom import working_grid

    vs, shape, aff = working_grid(grid)
    return atlas.load_priors(vs, shape, aff)


@lru_cache(maxsize=8)
def _template_cached(modality: str, name: str, vs: float, shape: tuple, aff_key: tuple) -> np.ndarray:
    affine = np.asarray(aff_key, float).reshape(4, 4)
    pri = atlas.load_priors(vs, shape, affine)
    if modality == "T1":
        files = atlas.source_files()
        t1, t1_aff = atlas._load_nifti(files["t1"], np.float32)
        tpl = atlas.resample(t1, t1_aff, shape, affine, 1) * pri.brain
    else:
        from bench.data.phantom import SEQUENCES, TISSUE_3T, signal

        seq = SEQUENCES[modality]
        s = {k: float(signal(modality, *TISSUE_3T[k], seq["TR"], seq["TE"], seq.get("TI"))) for k in TISSUE_3T}
        tpl = pri.csf * s["csf"] + pri.gm * s["gm"] + pri.wm * s["wm"]
    tpl = np.asarray(tpl, np.float32)
    hi = float(np.percentile(tpl[pri.brain > 0.5], 99.5))
    tpl = np.clip(tpl / max(hi, 1e-12), 0, 1).astype(np.float32)
    tpl.setflags(write=False)
    return tpl


def modality_template(modality: str, grid: Grid) -> np.ndarray:
    """Brain-only, contrast-matched template on ``grid`` in [0, 1].

    T1: the ICBM152 2009 T1 template times the brain mask. T2/PD/FLAIR: the ICBM152 GM/WM/CSF
    priors rendered with the phantom's nominal 3 T signal equations (no such templates ship offline).
    """
    modality = modality if modality in ("T1", "T2", "PD", "FLAIR") else "T1"
    return _template_cached(modality, grid.name, float(grid.voxel_size), tuple(grid.shape),
                            tuple(float(v) for v in grid.affine.ravel()))


# ------------------------------------------------------------------------------------ sitk helpers
def to_sitk(data: np.ndarray, affine: np.ndarray):
    """SimpleITK image with the same world coordinates as (data, affine) (index (i,j,k) = data[i,j,k])."""
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(data).transpose(2, 1, 0)))
    vs = voxel_sizes(affine)
    direction = np.asarray(affine, float)[:3, :3] / vs
    u, _, vt = np.linalg.svd(direction)  # nearest orthonormal matrix (tolerates tiny shears)
    img.SetSpacing([float(v) for v in vs])
    img.SetOrigin([float(v) for v in np.asarray(affine, float)[:3, 3]])
    img.SetDirection([float(v) for v in (u @ vt).ravel()])
    return img


def from_sitk(img) -> np.ndarray:
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(img).transpose(2, 1, 0)


def _world(shape, affine) -> np.ndarray:
    """World coordinates (3, N) of every voxel centre."""
    idx = np.indices(shape, dtype=np.float32).reshape(3, -1)
    a = np.asarray(affine, np.float64)
    return a[:3, :3].astype(np.float32) @ idx + a[:3, 3:4].astype(np.float32)


def _sample(data: np.ndarray, affine: np.ndarray, points: np.ndarray, order: int, cval: float = 0.0,
            mode: str = "constant") -> np.ndarray:
    """Sample ``data`` (voxel→world ``affine``) at world ``points`` (3, N)."""
    inv = np.linalg.inv(np.asarray(affine, np.float64))
    vox = inv[:3, :3].astype(np.float32) @ points + inv[:3, 3:4].astype(np.float32)
    out = np.float32 if order > 0 else data.dtype
    return ndi.map_coordinates(data, vox, order=order, mode=mode, cval=cval, prefilter=False, output=out)


# ------------------------------------------------------------------------------------ masks
def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of a 1-D sample."""
    v = np.asarray(values, np.float64).ravel()
    hist, edges = np.histogram(v, bins=bins)
    centres = 0.5 * (edges[1:] + edges[:-1])
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mu0 = m0 / np.maximum(w0, 1)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(centres[int(np.argmax(between[:-1]))])


def _ball(radius_vox: np.ndarray) -> np.ndarray:
    r = np.maximum(np.round(radius_vox).astype(int), 0)
    grids = np.ogrid[tuple(slice(-k, k + 1) for k in r)]
    d = sum((g / max(k, 0.5)) ** 2 for g, k in zip(grids, r))
    return d <= 1.0


def largest_component(mask: np.ndarray) -> np.ndarray:
    lab, n = ndi.label(mask)
    if n <= 1:
        return mask.astype(bool)
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return lab == int(np.argmax(sizes))


def head_mask(data: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Foreground (head) mask: smoothed intensity above half the Otsu threshold, largest component, filled."""
    vs = voxel_sizes(affine)
    sm = ndi.gaussian_filter(data.astype(np.float32), 1.5 / vs)
    fg = sm[sm > np.percentile(sm, 2)]
    t = 0.5 * otsu_threshold(fg)
    m = largest_component(sm > t)
    return ndi.binary_fill_holes(m)


def threshold_brain_mask(data: np.ndarray, affine: np.ndarray, erode_mm: float = 5.0) -> np.ndarray:
    """Crude brain extraction without a model: head mask, erosion by ``erode_mm`` (cuts the thin
    skull/scalp bridges), largest component, dilation back, hole filling."""
    vs = voxel_sizes(affine)
    sm = ndi.gaussian_filter(data.astype(np.float32), 1.0 / vs)
    fg = sm > 0.5 * otsu_threshold(sm[sm > np.percentile(sm, 2)])
    ball = _ball(erode_mm / vs)
    core = ndi.binary_erosion(fg, ball)
    if not core.any():
        core = fg
    core = largest_component(core)
    brain = ndi.binary_dilation(core, ball) & fg
    # close the dark sulcal CSF at the surface (without reaching past the eroded core's reach)
    close = _ball(4.0 / vs)
    brain = ndi.binary_closing(np.pad(brain, 8), close)[8:-8, 8:-8, 8:-8] & ndi.binary_dilation(core, _ball((erode_mm + 2) / vs))
    return ndi.binary_fill_holes(brain)


@lru_cache(maxsize=1)
def _deepbet_model():
    try:
        from deepbet.bet import BrainExtraction
    except ImportError as e:
        raise PreprocessError("deepbet is not installed; install it with `pip install --no-deps deepbet==1.0.2` "
                              "(plus connected-components-3d and fill-voids), or pass --skull-strip threshold",
                              "skull_strip") from e
    return BrainExtraction(no_gpu=True)


def deepbet_brain_mask(img) -> np.ndarray:
    """deepbet's T1w brain mask (threshold 0.5, largest component, voids filled) on ``img``'s voxels."""
    import nibabel as nib

    bet = _deepbet_model()
    can = reorient_to_ras(img)
    _, mask_img, _ = bet.run(nib.Nifti1Image(np.asarray(can.dataobj, np.float32), can.affine))
    return np.asarray(mask_img.dataobj) > 0


def resample_mask(mask: np.ndarray, src_affine: np.ndarray, shape, dst_affine: np.ndarray) -> np.ndarray:
    """A mask moved onto another voxel grid through world coordinates (linear, > 0.5)."""
    pts = _world(shape, dst_affine)
    return (_sample(mask.astype(np.float32), src_affine, pts, 1) > 0.5).reshape(shape)


def skull_strip(img, method: str = "threshold", *, fallback_mask: tuple[np.ndarray, np.ndarray] | None = None,
                modality: str = "T1") -> tuple[np.ndarray, str]:
    """Brain mask of a RAS+ image.

    Args:
        img: RAS+ ``Nifti1Image`` (bias-corrected).
        method: ``deepbet`` | ``threshold`` | ``none``.
        fallback_mask: ``(mask, affine)`` of the same subject's T1 mask, used for non-T1 modalities
            with ``deepbet``.
        modality: T1, T2, PD or FLAIR.

    Returns:
        ``(mask, how)`` with ``how`` naming what was actually done.
    """
    if method not in SKULL_STRIP_METHODS:
        raise ValueError(f"unknown skull-strip method {method!r}; choose one of {SKULL_STRIP_METHODS}")
    data = np.asarray(img.dataobj, np.float32)
    if method == "none":
        return head_mask(data, img.affine), "none (head mask)"
    if method == "deepbet":
        if modality == "T1":
            return deepbet_brain_mask(img), "deepbet"
        if fallback_mask is not None:
            m = resample_mask(fallback_mask[0], fallback_mask[1], data.shape, img.affine)
            if m.sum() > 100:
                return m, "T1 deepbet mask of the same subject"
        return threshold_brain_mask(data, img.affine), f"threshold (no T1 mask for {modality})"
    return threshold_brain_mask(data, img.affine), "threshold"


# ------------------------------------------------------------------------------------ bias field
def n4_bias_correction(img, mask: np.ndarray | None = None, *, shrink_to_mm: float = 4.0,
                       iterations: tuple[int, ...] = (30, 20), spline_distance_mm: float = 100.0):
    """N4 bias-field correction (SimpleITK), fitted on a shrunk copy for speed.

    Args:
        img: RAS+ ``Nifti1Image``.
        mask: where to fit (default: :func:`head_mask`).
        shrink_to_mm: the fit runs on voxels of about this size.
        iterations: iterations per fitting level.
        spline_distance_mm: B-spline control-point spacing of the bias field.

    Returns:
        ``(corrected Nifti1Image, bias field ndarray)`` with ``data = corrected * bias``.
    """
    import nibabel as nib
    import SimpleITK as sitk

    data = np.asarray(img.dataobj, np.float32)
    if mask is None:
        mask = head_mask(data, img.affine)
    lo = float(data[mask].min()) if mask.any() else 0.0
    pos = np.maximum(data - min(lo, 0.0), 0) + 1e-3  # N4 fits log intensities: keep them positive
    image = to_sitk(pos, img.affine)
    mimg = to_sitk(mask.astype(np.uint8), img.affine)
    vs = voxel_sizes(img.affine)
    shrink = [max(1, int(round(shrink_to_mm / v))) for v in vs]
    small = sitk.Shrink(image, shrink)
    msmall = sitk.Shrink(mimg, shrink)
    f = sitk.N4BiasFieldCorrectionImageFilter()
    f.SetMaximumNumberOfIterations(list(iterations))
    f.SetConvergenceThreshold(1e-3)
    extent = np.array(small.GetSize()) * np.array(small.GetSpacing())
    f.SetNumberOfControlPoints([int(max(4, np.ceil(e / spline_distance_mm) + 3)) for e in extent])
    f.Execute(small, msmall)
    log_bias = from_sitk(f.GetLogBiasFieldAsImage(image)).astype(np.float32)
    bias = np.exp(log_bias)
    corrected = (data / bias).astype(np.float32)
    return nib.Nifti1Image(corrected, img.affine), bias


# ------------------------------------------------------------------------------------ orientation
def _proper_rotations() -> list[tuple[tuple[int, int, int], tuple[int, int, int]]]:
    import itertools

    out = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1, -1), repeat=3):
            m = np.zeros((3, 3))
            for r, (c, s) in enumerate(zip(perm, signs)):
                m[r, c] = s
            if np.linalg.det(m) > 0:
                out.append((perm, signs))
    return out


def _apply_axes(data: np.ndarray, perm, signs) -> np.ndarray:
    d = np.transpose(data, perm)
    for ax, s in enumerate(signs):
        if s < 0:
            d = np.flip(d, ax)
    return np.ascontiguousarray(d)


def ncc(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Normalised cross-correlation of two arrays (inside ``mask`` when given)."""
    if mask is not None:
        a, b = a[mask], b[mask]
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    a, b = a - a.mean(), b - b.mean()
    den = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else 0.0


def search_orientation(img, modality: str = "T1", mask: np.ndarray | None = None):
    """Fix mislabelled voxel axes (Analyze headers): the best of the 24 proper axis rotations.

    Each candidate is centred on the template's brain centroid and compared at 6 mm with the
    contrast-matched template (NCC); no candidate mirrors the image.

    Args:
        img: RAS+ ``Nifti1Image`` as read.
        modality: selects the template contrast.
        mask: head/brain mask (default :func:`threshold_brain_mask`).

    Returns:
        ``(img, info)``: the re-oriented image (same voxel values, permuted) and
        ``{"perm", "signs", "ncc", "ncc_header"}``.
    """
    import nibabel as nib

    data = np.asarray(img.dataobj, np.float32)
    if mask is None:
        mask = threshold_brain_mask(data, img.affine)
    coarse = _make(6.0, "6mm")
    tpl = modality_template(modality, coarse)
    pri = grid_priors(coarse)
    tmask = pri.brain > 0.5
    t_centre = (coarse.affine[:3, :3] @ np.argwhere(tmask).mean(0) + coarse.affine[:3, 3])
    vs = voxel_sizes(img.affine)
    pts = _world(coarse.shape, coarse.affine)
    masked = np.where(mask, data, 0).astype(np.float32)
    best = None
    results = []
    for perm, signs in _proper_rotations():
        d = _apply_axes(masked, perm, signs)
        m = _apply_axes(mask.astype(np.uint8), perm, signs)
        nvs = vs[list(perm)]
        aff = np.diag([*nvs, 1.0])
        c = np.argwhere(m > 0).mean(0) if m.any() else (np.array(d.shape) - 1) / 2
        aff[:3, 3] = t_centre - nvs * c
        sm = ndi.gaussian_filter(d, np.maximum(2.5 / nvs, 0.1))
        s = _sample(sm, aff, pts, 1).reshape(coarse.shape)
        score = ncc(s, tpl, tmask)
        results.append(score)
        if best is None or score > best[0]:
            best = (score, perm, signs)
    score, perm, signs = best
    header_score = results[0]  # identity is the first proper rotation enumerated
    if tuple(perm) == (0, 1, 2) and tuple(signs) == (1, 1, 1):
        return img, {"perm": list(perm), "signs": list(signs), "ncc": score, "ncc_header": header_score}
    d = _apply_axes(data, perm, signs)
    nvs = vs[list(perm)]
    aff = np.diag([*nvs, 1.0])
    old_centre = img.affine[:3, :3] @ ((np.array(data.shape) - 1) / 2) + img.affine[:3, 3]
    aff[:3, 3] = old_centre - nvs * (np.array(d.shape) - 1) / 2
    logger.info("orientation search: voxel axes permuted %s with signs %s (NCC %.3f vs %.3f as read)",
                perm, signs, score, header_score)
    return nib.Nifti1Image(d, aff), {"perm": list(perm), "signs": list(signs), "ncc": score,
                                      "ncc_header": header_score}


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


VENTRICLE_KEYS = ("lateral_ventricles", "third_ventricle", "fourth_ventricle")


def _grown_ventricles(labels: np.ndarray, vs: np.ndarray, reach_mm: float):
    code = np.zeros(labels.shape, np.int8)
    for c, key in enumerate(VENTRICLE_KEYS, start=1):
        code[np.isin(labels, list(atlas.STRUCTURE_LABELS[key]))] = c
    if not code.any():
        return code, None, code
    dist, (ii, jj, kk) = ndi.distance_transform_edt(code == 0, sampling=vs, return_indices=True)
    nearest = code[ii, jj, kk]
    return np.where(dist <= reach_mm, nearest, 0).astype(np.int8), dist, nearest


def ventricle_csf_fraction(data: np.ndarray, labels: np.ndarray, voxel_mm: np.ndarray,
                           reach_mm: float | None = None, min_contrast: float = 3.0) -> np.ndarray | None:
    """CSF fraction of the voxels in and around the propagated ventricles, by two-compartment unmixing.

    ``f = clip((I - I_tissue) / (I_csf - I_tissue), 0, 1)`` with ``I_csf`` the median intensity of the
    lateral-ventricle core (labels eroded by one voxel) and ``I_tissue`` the median of a two-voxel ring
    around each ventricle. Contrast-agnostic (CSF may be brighter or darker than tissue) and aware of
    partial volumes, so the registration need not follow the ventricle wall exactly.

    Returns:
        The fraction map (0 outside the grown ventricles), or None when CSF does not stand out from
        the surrounding tissue by ``min_contrast`` noise SDs (e.g. PD-weighted scans).
    """
    vs = np.asarray(voxel_mm, float)
    reach_mm = VENTRICLE_REACH_VOXELS * float(vs.max()) if reach_mm is None else reach_mm
    grown, dist, nearest = _grown_ventricles(labels, vs, reach_mm)
    if dist is None:
        return None
    lat = np.isin(labels, list(atlas.STRUCTURE_LABELS["lateral_ventricles"]))
    core = ndi.binary_erosion(lat)
    if core.sum() < 10:
        return None
    i_csf = float(np.median(data[core]))
    ring = (dist > reach_mm) & (dist <= reach_mm + 2.0 * float(vs.max()))
    frac = np.zeros(data.shape, np.float32)
    lat_ring = data[ring & (nearest == 1)]
    if lat_ring.size < 10:
        return None
    noise = 1.4826 * float(np.median(np.abs(lat_ring - np.median(lat_ring)))) + 1e-6
    if abs(i_csf - float(np.median(lat_ring))) < min_contrast * noise:
        return None
    for c in range(1, len(VENTRICLE_KEYS) + 1):
        r = data[ring & (nearest == c)]
        i_t = float(np.median(r)) if r.size >= 5 else float(np.median(lat_ring))
        sel = grown == c
        frac[sel] = np.clip((data[sel] - i_t) / (i_csf - i_t), 0.0, 1.0)
    return frac


def structure_volumes(labels: np.ndarray, voxel_ml: float, csf: np.ndarray | None = None,
                      voxel_mm: np.ndarray | None = None, reach_mm: float | None = None) -> dict[str, float]:
    """mL of each canonical structure in :data:`bench.data.atlas.STRUCTURE_LABELS`.

    Grey-matter structures: label voxel counts. Ventricles, when a CSF fraction/probability map
    ``csf`` is given (:func:`ventricle_csf_fraction`): the propagated ventricle labels are grown by
    ``reach_mm`` (default: one native voxel, :data:`VENTRICLE_REACH_VOXELS` x the largest voxel side;
    each new voxel joins its nearest ventricle) and ``csf`` is summed over that region.
    """
    counts = np.bincount(np.clip(labels.ravel().astype(np.int64), 0, None))
    out = {}
    for key, ids in atlas.STRUCTURE_LABELS.items():
        n = sum(int(counts[i]) for i in ids if i < counts.size)
        out[key] = round(n * voxel_ml, 3)
    if csf is not None:
        vs = np.ones(3) if voxel_mm is None else np.asarray(voxel_mm, float)
        reach_mm = VENTRICLE_REACH_VOXELS * float(vs.max()) if reach_mm is None else reach_mm
        grown, _, _ = _grown_ventricles(labels, vs, reach_mm)
        for c, key in enumerate(VENTRICLE_KEYS, start=1):
            out[key] = round(float(csf[grown == c].sum(dtype=np.float64)) * voxel_ml, 3)
    return out


def segment_tissues(data: np.ndarray, mask: np.ndarray, priors: dict[str, np.ndarray], *,
                    iterations: int = 20, floor: float = 0.05) -> dict[str, np.ndarray]:
    """CSF/GM/WM posteriors inside ``mask`` by EM on a Gaussian mixture with spatial priors.

    Args:
        data: intensities (bias-corrected).
        mask: brain mask (bool), same shape.
        priors: ``{"csf", "gm", "wm"}`` propagated prior probabilities, same shape.
        iterations: EM iterations.
        floor: prior probability floor per class (lets the data override a misaligned prior).

    Returns:
        ``{"csf", "gm", "wm"}`` posteriors (float32, 0 outside the mask) and ``"stats"``: class means and
        SDs (intensities / 99.5th percentile) and the CSF-GM separation ``|mu_csf - mu_gm| / sd``.
    """
    keys = ("csf", "gm", "wm")
    x = data[mask].astype(np.float64)
    if x.size < 10:
        raise PreprocessError("brain mask has fewer than 10 voxels; brain extraction failed", "tissue")
    scale = float(np.percentile(x, 99.5)) or 1.0
    x = x / scale
    p = np.stack([priors[k][mask] for k in keys]).astype(np.float64) + floor
    p /= p.sum(0, keepdims=True)
    r = p.copy()
    mu = (r * x).sum(1) / r.sum(1)
    var = (r * (x - mu[:, None]) ** 2).sum(1) / r.sum(1) + 1e-4
    for _ in range(iterations):
        lik = np.exp(-0.5 * (x - mu[:, None]) ** 2 / var[:, None]) / np.sqrt(var[:, None])
        r = p * lik + 1e-300
        r /= r.sum(0, keepdims=True)
        w = r.sum(1) + 1e-12
        mu = (r * x).sum(1) / w
        var = (r * (x - mu[:, None]) ** 2).sum(1) / w + 1e-4
    out = {}
    for i, k in enumerate(keys):
        a = np.zeros(data.shape, np.float32)
        a[mask] = r[i]
        out[k] = a
    sd = np.sqrt(var)
    out["stats"] = {"mean": [round(float(m), 4) for m in mu], "sd": [round(float(v), 4) for v in sd],
                    "csf_gm_separation": round(float(abs(mu[0] - mu[1]) / np.sqrt(0.5 * (var[0] + var[1]))), 3)}
    return out


# ------------------------------------------------------------------------------------ atlas space
def grid_to_native_points(reg: Registration, grid: Grid) -> np.ndarray:
    return reg.atlas_to_native(_world(grid.shape, grid.affine))


def warp_to_grid(data: np.ndarray, affine: np.ndarray, reg: Registration, grid: Grid, order: int = 1,
                 points: np.ndarray | None = None) -> np.ndarray:
    """Native array → atlas grid (``order`` 1 linear, 0 nearest)."""
    pts = grid_to_native_points(reg, grid) if points is None else points
    return _sample(data, affine, pts, order).reshape(grid.shape)


def normalise_intensity(data: np.ndarray, mask: np.ndarray, percentile: float = 99.5) -> np.ndarray:
    """Divide by the ``percentile`` inside ``mask``, clip to [0, 1], zero outside the mask."""
    if not mask.any():
        raise PreprocessError("empty brain mask in atlas space; registration or brain extraction failed",
                              "normalise")
    hi = float(np.percentile(data[mask], percentile))
    out = np.clip(data / max(hi, 1e-12), 0.0, 1.0)
    out[~mask] = 0.0
    return out.astype(np.float32)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    s = int(a.sum()) + int(b.sum())
    return 2.0 * int((a & b).sum()) / s if s else 0.0


def qc_metrics(image_grid: np.ndarray, template: np.ndarray, atlas_mask: np.ndarray,
               propagated_brain: np.ndarray, extracted_brain: np.ndarray, brain_ml: float | None = None) -> dict:
    """Registration QC: NCC with the template (atlas space, atlas brain mask) and Dice of the propagated
    atlas brain mask vs the extracted mask (native space). Pass: NCC >= QC_NCC_MIN, Dice >= QC_DICE_MIN
    and, when ``brain_ml`` (the extracted brain/ICV volume) is given, a plausible head size
    (:data:`QC_BRAIN_ML`)."""
    n = ncc(image_grid, template, atlas_mask)
    d = dice(propagated_brain, extracted_brain)
    ok = n >= QC_NCC_MIN and d >= QC_DICE_MIN
    if brain_ml is not None:
        ok = ok and QC_BRAIN_ML[0] <= brain_ml <= QC_BRAIN_ML[1]
    return {"qc_ncc": round(n, 4), "qc_dice": round(d, 4), "qc_pass": bool(ok)}


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
