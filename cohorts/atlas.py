"""Anatomical priors shipped inside installed packages, resampled onto a working grid.

Sources (all offline, inside wheels):

- ICBM152 2009 (nonlinear symmetric, "09a") T1 template, grey- and white-matter probability maps and
  brain mask from nilearn (``nilearn/datasets/data``), 1 mm, shape (197, 233, 189). No CSF map is
  shipped, so CSF = clip(brain_mask - gm - wm, 0, 1) inside the mask.
- The Neuromorphometrics label atlas (CC BY-NC; "Maximum probability tissue labels derived from the
  MICCAI 2012 Grand Challenge and Workshop on Multi-Atlas Labeling", data by Neuromorphometrics, Inc.)
  from deepmriprep's templates (``neuromorphometrics.nii.gz`` + ``;``-separated
  ``neuromorphometrics.csv``), 1 mm, shape (161, 197, 161).

:func:`load_priors` returns them on any RAS+ grid (trilinear for probabilities, nearest for labels),
cached in-process and on disk under ``$BRAINGENBENCH_HOME/priors/`` (default
``~/.cache/braingenbench``) keyed by the grid and a hash of the source files.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from core.io import atomic_save_npz

logger = logging.getLogger(__name__)

PRIORS_VERSION = "1"  # bump when the derivation of the cached arrays changes

# Canonical structure key -> {Neuromorphometrics ROIid: expected ROIname}. Names are checked against
# the shipped CSV at load time (see :func:`check_label_names`).
STRUCTURE_LABELS: dict[str, dict[int, str]] = {
    "lateral_ventricles": {51: "Right Lateral Ventricle", 52: "Left Lateral Ventricle",
                           49: "Right Inf Lat Vent", 50: "Left Inf Lat Vent"},
    "third_ventricle": {4: "3rd Ventricle"},
    "fourth_ventricle": {11: "4th Ventricle"},
    "hippocampus_left": {48: "Left Hippocampus"},
    "hippocampus_right": {47: "Right Hippocampus"},
    "thalamus": {59: "Right Thalamus Proper", 60: "Left Thalamus Proper"},
    "caudate": {36: "Right Caudate", 37: "Left Caudate"},
    "putamen": {57: "Right Putamen", 58: "Left Putamen"},
}
#: Label ids of all ventricles (lateral, inferior lateral, third, fourth): pure CSF in the priors.
VENTRICLE_IDS: tuple[int, ...] = (4, 11, 49, 50, 51, 52)
#: Cerebral white matter (right, left) and the infratentorial structures (brainstem, cerebellar white
#: matter): where white-matter lesions of each topographic class lie.
CEREBRAL_WM_IDS: tuple[int, ...] = (44, 45)
INFRATENTORIAL_IDS: tuple[int, ...] = (35, 40, 41)
#: Lesion zones of :func:`lesion_zones`, in the order of their codes 1..4 (0: elsewhere).
LESION_ZONES = ("periventricular", "juxtacortical", "deep", "infratentorial")

ATTRIBUTION = {
    "icbm152_2009": ("ICBM 2009a nonlinear symmetric template (Fonov et al. 2011, NeuroImage 54:313; "
                     "Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre, Montreal "
                     "Neurological Institute, McGill University), as shipped by nilearn"),
    "neuromorphometrics": ("Neuromorphometrics label atlas: maximum probability tissue labels derived "
                           "from the MICCAI 2012 Grand Challenge and Workshop on Multi-Atlas Labeling; "
                           "data provided by Neuromorphometrics, Inc. under academic subscription; "
                           "licence CC BY-NC; as shipped in deepmriprep's templates"),
}


class AtlasError(RuntimeError):
    """A prior file that is missing or not what we expect; the message names the file and the fix."""


@dataclass(frozen=True)
class Priors:
    """Anatomical priors on one grid (all arrays shape ``shape``, RAS+ voxel order).

    Attributes:
        gm, wm, csf: tissue probabilities, float32 in [0, 1] (ventricles are pure CSF).
        brain: brain mask (float32, 0/1 on the source grid; fractional after trilinear resampling).
        labels: Neuromorphometrics label ids (int16, 0 = unlabelled).
        affine: voxel-to-MNI-mm affine of the grid.
        source_hash: short hash of the source files the priors come from.
    """

    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    brain: np.ndarray
    labels: np.ndarray
    affine: np.ndarray
    source_hash: str

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.gm.shape)  # type: ignore[return-value]

    def structure_mask(self, key: str) -> np.ndarray:
        """Boolean mask of a canonical structure (key of :data:`STRUCTURE_LABELS`)."""
        return np.isin(self.labels, list(STRUCTURE_LABELS[key]))


# ------------------------------------------------------------------------------------ source files
def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        fix = ("pip install nilearn" if name == "nilearn" else "pip install --no-deps deepmriprep")
        raise AtlasError(f"package {name!r} is not installed; it ships the anatomical priors. Fix: {fix}")
    return Path(list(spec.submodule_search_locations)[0])


def source_files() -> dict[str, Path]:
    """Paths of every file the priors derive from (nothing is imported)."""
    nl = _package_dir("nilearn") / "datasets" / "data"
    dm = _package_dir("deepmriprep") / "data" / "templates"
    files = {
        "t1": nl / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
        "gm": nl / "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
        "wm": nl / "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
        "labels": dm / "neuromorphometrics.nii.gz",
        "label_names": dm / "neuromorphometrics.csv",
    }
    for key, p in files.items():
        if not p.exists():
            raise AtlasError(f"{p}: prior file ({key}) not found; reinstall the package that ships it "
                             "(pip install --force-reinstall nilearn, or pip install --no-deps "
                             "--force-reinstall deepmriprep)")
    return files


@lru_cache(maxsize=1)
def source_hash() -> str:
    """sha256 (first 16 hex) over the names and bytes of :func:`source_files` plus PRIORS_VERSION."""
    h = hashlib.sha256(PRIORS_VERSION.encode())
    for key, p in sorted(source_files().items()):
        h.update(key.encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def read_label_names(path: str | Path | None = None) -> dict[int, str]:
    """ROIid -> ROIname from the ``;``-separated Neuromorphometrics CSV."""
    import pandas as pd

    path = Path(path) if path is not None else source_files()["label_names"]
    try:
        df = pd.read_csv(path, sep=";")
    except Exception as e:
        raise AtlasError(f"{path}: cannot read the label table ({e}); reinstall deepmriprep "
                         "(pip install --no-deps --force-reinstall deepmriprep)") from e
    if not {"ROIid", "ROIname"} <= set(df.columns):
        raise AtlasError(f"{path}: expected ';'-separated columns ROIid and ROIname, got {list(df.columns)}; "
                         "reinstall deepmriprep (pip install --no-deps --force-reinstall deepmriprep)")
    return {int(i): str(n).strip() for i, n in zip(df["ROIid"], df["ROIname"])}


def check_label_names(names: dict[int, str], path: str | Path = "neuromorphometrics.csv") -> None:
    """Raise :class:`AtlasError` unless every id in :data:`STRUCTURE_LABELS` has the expected name."""
    bad = [(i, want, names.get(i)) for group in STRUCTURE_LABELS.values() for i, want in group.items()
           if names.get(i, "").lower() != want.lower()]
    if bad:
        desc = "; ".join(f"id {i}: expected {w!r}, found {f!r}" for i, w, f in bad)
        raise AtlasError(f"{path}: label ids do not name the expected structures ({desc}); the atlas "
                         "version changed — update STRUCTURE_LABELS in cohorts/atlas.py")


# ------------------------------------------------------------------------------------ resampling
def _world_to_voxel(target_affine: np.ndarray, shape: tuple[int, int, int],
                    source_affine: np.ndarray) -> np.ndarray:
    """Source-voxel coordinates (3, *shape) of every target voxel centre."""
    m = np.linalg.inv(source_affine) @ target_affine
    idx = np.indices(shape, dtype=np.float32).reshape(3, -1)
    coords = m[:3, :3].astype(np.float32) @ idx + m[:3, 3:4].astype(np.float32)
    return coords.reshape(3, *shape)


def resample(data: np.ndarray, source_affine: np.ndarray, shape: tuple[int, int, int],
             affine: np.ndarray, order: int) -> np.ndarray:
    """Resample ``data`` (on ``source_affine``) onto (``shape``, ``affine``); 0 outside."""
    coords = _world_to_voxel(np.asarray(affine, float), tuple(shape), np.asarray(source_affine, float))
    out_dtype = np.float32 if order > 0 else data.dtype
    return ndi.map_coordinates(data, coords, order=order, mode="constant", cval=0, prefilter=False,
                               output=out_dtype)


def _load_nifti(path: Path, dtype) -> tuple[np.ndarray, np.ndarray]:
    import nibabel as nib

    try:
        img = nib.load(str(path))
        return np.asarray(img.dataobj, dtype=dtype), img.affine
    except Exception as e:
        raise AtlasError(f"{path}: cannot read ({e}); reinstall the package that ships it") from e


def _compute_priors(voxel_size_mm: float, shape: tuple[int, int, int], affine: np.ndarray) -> dict:
    files = source_files()
    names = read_label_names(files["label_names"])
    check_label_names(names, files["label_names"])

    from nilearn import datasets as nds  # imported here: slow, and only needed on a cache miss

    def arr(img):
        return np.asarray(img.get_fdata(dtype=np.float32), dtype=np.float32), img.affine

    try:
        gm, gm_aff = arr(nds.load_mni152_gm_template(resolution=1))
        wm, wm_aff = arr(nds.load_mni152_wm_template(resolution=1))
        brain, br_aff = arr(nds.load_mni152_brain_mask(resolution=1))
    except Exception as e:
        raise AtlasError(f"{files['t1']}: nilearn cannot load the ICBM152 2009 templates ({e}); "
                         "reinstall nilearn (pip install --force-reinstall nilearn)") from e
    if not (np.allclose(br_aff, gm_aff) and np.allclose(br_aff, wm_aff)) or brain.shape != gm.shape:
        raise AtlasError(f"{files['gm']}: not on the same grid as {files['t1']}; reinstall nilearn")
    gm, wm = gm * brain, wm * brain
    t1_aff = br_aff
    labels, lab_aff = _load_nifti(files["labels"], np.int16)

    out = {
        "gm": resample(gm, gm_aff, shape, affine, 1),
        "wm": resample(wm, wm_aff, shape, affine, 1),
        "brain": resample(brain, t1_aff, shape, affine, 1),
        "labels": resample(labels, lab_aff, shape, affine, 0).astype(np.int16),
    }
    csf = np.clip(out["brain"] - out["gm"] - out["wm"], 0.0, 1.0)
    vent = np.isin(out["labels"], VENTRICLE_IDS)
    out["gm"][vent] = 0.0
    out["wm"][vent] = 0.0
    csf[vent] = 1.0
    out["brain"][vent] = 1.0
    out["csf"] = csf.astype(np.float32)
    return out


def braingenbench_home(home: str | Path | None = None) -> Path:
    """The cache root: ``home`` or ``$BRAINGENBENCH_HOME`` or ``~/.cache/braingenbench``."""
    from core.io import home as default_home

    return Path(home).expanduser() if home is not None else default_home()


def _grid_key(voxel_size_mm: float, shape, affine) -> str:
    h = hashlib.sha256(np.round(np.asarray(affine, np.float64), 6).tobytes())
    h.update(np.asarray(shape, np.int64).tobytes())
    return f"{float(voxel_size_mm):g}mm-{'x'.join(map(str, shape))}-{h.hexdigest()[:10]}"


@lru_cache(maxsize=8)
def _load_priors_cached(voxel_size_mm: float, shape: tuple[int, int, int], affine_key: tuple,
                        home: str) -> Priors:
    affine = np.asarray(affine_key, dtype=np.float64).reshape(4, 4)
    src = source_hash()
    path = Path(home) / "priors" / f"priors-{_grid_key(voxel_size_mm, shape, affine)}-{src}.npz"
    arrays = None
    if path.exists():
        try:
            with np.load(path) as z:
                arrays = {k: z[k] for k in ("gm", "wm", "csf", "brain", "labels")}
            if any(a.shape != tuple(shape) for a in arrays.values()):
                raise ValueError("shape mismatch")
        except Exception as e:
            logger.warning("%s: unreadable priors cache (%s); recomputing it", path, e)
            arrays = None
    if arrays is None:
        arrays = _compute_priors(voxel_size_mm, shape, affine)
        try:
            atomic_save_npz(path, **arrays)
        except OSError as e:
            logger.warning("%s: cannot write priors cache (%s); set BRAINGENBENCH_HOME to a writable "
                           "folder to avoid recomputing", path, e)
    for a in arrays.values():
        a.setflags(write=False)
    return Priors(gm=arrays["gm"].astype(np.float32, copy=False), wm=arrays["wm"].astype(np.float32, copy=False),
                  csf=arrays["csf"].astype(np.float32, copy=False),
                  brain=arrays["brain"].astype(np.float32, copy=False),
                  labels=arrays["labels"].astype(np.int16, copy=False), affine=affine, source_hash=src)


def load_priors(voxel_size_mm: float, shape: tuple[int, int, int], affine: np.ndarray,
                home: str | Path | None = None) -> Priors:
    """ICBM152 2009 tissue priors and Neuromorphometrics labels on a working grid.

    Args:
        voxel_size_mm: voxel size of the grid (used in the cache key and file name).
        shape: grid shape (x, y, z).
        affine: 4x4 voxel-to-MNI-mm affine (RAS+).
        home: cache root; default ``$BRAINGENBENCH_HOME`` or ``~/.cache/braingenbench``.

    Returns:
        :class:`Priors` with read-only arrays (cached in-process; copy before modifying).

    Raises:
        AtlasError: a source file is missing/unreadable or its labels are not the expected ones.
    """
    aff = tuple(float(v) for v in np.asarray(affine, np.float64).ravel())
    if len(aff) != 16:
        raise ValueError(f"affine must be 4x4, got {np.shape(affine)}")
    return _load_priors_cached(float(voxel_size_mm), tuple(int(s) for s in shape), aff,
                               str(braingenbench_home(home)))


def lesion_zones(labels: np.ndarray, gm: np.ndarray, voxel_size_mm: float, *, periventricular_mm: float = 9.0,
                 juxtacortical_mm: float = 4.0) -> np.ndarray:
    """The topographic class of a white-matter lesion found at each voxel (int8: 1 periventricular,
    2 juxtacortical, 3 deep white matter, 4 infratentorial, 0 elsewhere; names in :data:`LESION_ZONES`).

    A partition of the brain, as the McDonald criteria's classes are read on an image: infratentorial in
    the brainstem and cerebellum (labels :data:`INFRATENTORIAL_IDS`); elsewhere periventricular within
    ``periventricular_mm`` of a lateral ventricle, else juxtacortical within ``juxtacortical_mm`` of the
    cortex (grey matter of a cortical label, ids >= 100), else deep. The thresholds lie between the
    ``phantom-ms`` builder's placement zones (periventricular 1.5-8 mm, juxtacortical <= 3 mm, deep
    > 10 mm from the ventricles and > 5 mm from the cortex), so a phantom lesion falls in its own zone
    up to the subject's warp."""
    labels = np.asarray(labels)
    vent = np.isin(labels, tuple(STRUCTURE_LABELS["lateral_ventricles"]))
    d_vent = ndi.distance_transform_edt(~vent) * voxel_size_mm
    cortex = (np.asarray(gm) > 0.5) & (labels >= 100)
    d_ctx = ndi.distance_transform_edt(~cortex) * voxel_size_mm
    zones = np.zeros(labels.shape, np.int8)
    brain = labels > 0
    zones[brain] = 3
    zones[brain & (d_ctx <= juxtacortical_mm)] = 2
    zones[brain & (d_vent <= periventricular_mm)] = 1
    zones[np.isin(labels, INFRATENTORIAL_IDS)] = 4
    return zones


def atlas_on_grid(grid) -> dict:
    """ICBM152 tissue priors and Neuromorphometrics labels on ``grid`` (a :class:`cohorts.grid.Grid`),
    as the atlas-guided metrics take them: ``gm``, ``wm``, ``csf``, ``labels``, ``ventricles``,
    ``thalamus``, ``caudate`` (bool masks), ``lesion_zones`` (:func:`lesion_zones`) and
    ``voxel_volume_ml``."""
    pri = load_priors(grid.voxel_size, grid.shape, grid.affine)
    return {"gm": pri.gm, "wm": pri.wm, "csf": pri.csf, "labels": pri.labels,
            "ventricles": pri.structure_mask("lateral_ventricles"), "thalamus": pri.structure_mask("thalamus"),
            "caudate": pri.structure_mask("caudate"), "lesion_zones": lesion_zones(pri.labels, pri.gm, grid.voxel_size),
            "voxel_volume_ml": grid.voxel_volume_ml}
