"""Image-level steps of :mod:`cohorts.preprocess`: loading (NIfTI/Analyze), RAS reorientation,
SimpleITK and world-coordinate sampling helpers, brain masks and skull stripping, N4 bias-field
correction and the orientation search for headers without a reliable orientation."""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from cohorts.grid import _make
from cohorts.preprocess.templates import grid_priors, modality_template

logger = logging.getLogger("cohorts.preprocess")  # the package's logger (as before the split)

SKULL_STRIP_METHODS = ("deepbet", "threshold", "none")


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
