"""MS-like pathology for the ``phantom-ms`` cohort: white-matter lesions and deep grey-matter atrophy.

Everything is drawn in template (MNI) millimetres (the class masks that accept a centre are looked up on
the working grid, so a subject's lesions barely depend on its grid); :func:`rasterise` puts them on a
working grid, and the renderer
(:func:`cohorts.phantom_render.synthesize`) warps them with the subject's own deformation.

**Lesions** (``Lesion``) are ellipsoids of lesion tissue that replaces white matter, in four classes
of the McDonald criteria's topography (Thompson et al. 2018, Lancet Neurol 17:162):

- ``periventricular``: white matter 1.5-8 mm from the lateral ventricles, the long axis along the
  distance gradient, i.e. perpendicular to the ventricular wall (Dawson's fingers);
- ``juxtacortical``: cerebral white matter within 3 mm of the cortex;
- ``deep``: cerebral white matter more than 10 mm from the ventricles and 5 mm from the cortex;
- ``infratentorial``: brainstem and cerebellar white matter.

Lesion tissue has prolonged T1 and T2 (hyperintense on FLAIR, T2 and PD; hypointense on T1); about
a quarter of lesions are chronic "black holes" with a much longer T1 (strongly hypointense on T1).
Counts, class shares and sizes are chosen to cover what relapsing-remitting MS cohorts show (tens
of lesions of 0.05-5 mL, total loads of 0-30 mL, periventricular lesions the most frequent and the
largest); a share of subjects are healthy controls with no lesions. They are a model, not a fit.

**Deep grey-matter atrophy** (thalamus, caudate) is a shrink flow like the hippocampal one of the
plain phantom, with a peak boundary displacement that grows with the square root of the total lesion
volume: deep grey-matter loss correlates with lesion load in MS (e.g. Houtchens et al. 2007,
Neurology 69:1213 for the thalamus).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from cohorts import atlas
from cohorts.grid import Grid, get_grid

__all__ = ["LESION_CLASSES", "LESION_TISSUE_3T", "BLACK_HOLE_T1", "Lesion", "Pathology", "Change",
           "activity", "evolve", "NEW_PER_YEAR",
           "MSWorkspace", "ms_workspace", "sample_pathology", "rasterise"]

LESION_CLASSES = atlas.LESION_ZONES
#: lesion tissue at 3 T (T1 ms, T2 ms, PD): between white matter (830, 80, 0.69) and CSF
LESION_TISSUE_3T = (1150.0, 170.0, 0.80)
#: T1 (ms) of a chronic "black hole"
BLACK_HOLE_T1 = 2000.0

_HEALTHY_SHARE = 0.2
_MEAN_COUNT = 14.0  # lesions per MS subject (negative binomial, dispersion _COUNT_SHAPE)
_COUNT_SHAPE = 2.0
_MAX_COUNT = 45
_CLASS_SHARE = (0.45, 0.2, 0.25, 0.1)  # periventricular, juxtacortical, deep, infratentorial
_MEDIAN_ML = {"periventricular": 0.5, "juxtacortical": 0.2, "deep": 0.3, "infratentorial": 0.2}
_SIZE_SIGMA = 0.8  # lognormal sigma of a lesion's volume
_ML_RANGE = (0.06, 5.0)
_BLACK_HOLE_SHARE = 0.25
_GAP_MM = 5.0  # minimum gap between two lesions' bounding spheres (separate connected components)
# deep grey-matter atrophy: peak boundary displacement (mm) at a total lesion volume of 10 mL
_THAL_MM_AT_10ML = 0.35
_CAUD_MM_AT_10ML = 0.2


@dataclass
class Lesion:
    """One lesion in template space: an ellipsoid with its own relaxation times."""

    kind: str  # one of LESION_CLASSES
    centre_mm: list[float]
    axes_mm: list[float]  # semi-axes, along the columns of ``rotation``
    rotation: list[list[float]]
    t1: float
    t2: float
    pd: float

    @property
    def nominal_ml(self) -> float:
        a, b, c = self.axes_mm
        return 4.0 / 3.0 * math.pi * a * b * c / 1000.0


@dataclass
class Pathology:
    """A subject's pathology: its lesions and the deep grey-matter shrink (peak mm)."""

    ms: bool
    lesions: list[Lesion] = field(default_factory=list)
    thalamus_mm: float = 0.0
    caudate_mm: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Pathology":
        return cls(bool(d["ms"]), [Lesion(**x) for x in d.get("lesions", [])], float(d.get("thalamus_mm", 0.0)),
                   float(d.get("caudate_mm", 0.0)))

    def counts(self) -> dict[str, int]:
        out = {k: 0 for k in LESION_CLASSES}
        for les in self.lesions:
            out[les.kind] += 1
        return out


# ------------------------------------------------------------------------------------ workspace
@dataclass
class MSWorkspace:
    """Per-grid template-space fields for pathology (working grid of :mod:`cohorts.phantom_render`)."""

    wvs: float
    waffine: np.ndarray
    class_masks: dict[str, np.ndarray]  # bool, where a lesion centre of each class may fall
    away_from_ventricles: np.ndarray  # (3, *wshape) unit gradient of the ventricle distance
    thal_grad: np.ndarray  # (3, *wshape) unit-peak displacement towards the thalami
    caud_grad: np.ndarray
    flow_support: np.ndarray  # bool: where thal_grad or caud_grad can be non-zero (corner support)
    wm: np.ndarray  # the template's white-matter probability (a lesion is the part of its ellipsoid in WM)


@lru_cache(maxsize=2)
def _ms_workspace(grid_name: str, home: str) -> MSWorkspace:
    from cohorts.phantom_render import _corner_support, _unit_gradient, workspace

    ws = workspace(grid_name, home)
    pri, wvs = ws.priors, ws.wvs
    vent = np.isin(pri.labels, tuple(atlas.STRUCTURE_LABELS["lateral_ventricles"]))
    d_vent = ndi.distance_transform_edt(~vent) * wvs
    cortex = (pri.gm > 0.5) & (pri.labels >= 100)  # Neuromorphometrics cortical labels are >= 100
    d_ctx = ndi.distance_transform_edt(~cortex) * wvs
    cwm = np.isin(pri.labels, atlas.CEREBRAL_WM_IDS) & (pri.wm > 0.6)
    masks = {
        "periventricular": cwm & (d_vent >= 1.5) & (d_vent <= 8.0),
        "juxtacortical": cwm & (d_ctx <= 3.0) & (d_vent > 10.0),
        "deep": cwm & (d_vent > 10.0) & (d_ctx > 5.0),
        "infratentorial": np.isin(pri.labels, atlas.INFRATENTORIAL_IDS) & (pri.wm > 0.6),
    }
    g = np.stack(np.gradient(ndi.gaussian_filter(d_vent.astype(np.float32), 1.0)), 0)
    away = (g / np.maximum(np.sqrt((g**2).sum(0)), 1e-6)).astype(np.float32)
    thal = pri.structure_mask("thalamus")
    caud = pri.structure_mask("caudate")
    thal_grad = _unit_gradient(thal, 2.0, wvs)
    caud_grad = _unit_gradient(caud, 2.0, wvs)
    support = _corner_support((thal_grad != 0).any(0) | (caud_grad != 0).any(0))
    for a in (*masks.values(), away, thal_grad, caud_grad, support):
        a.setflags(write=False)
    return MSWorkspace(wvs, ws.waffine, masks, away, thal_grad, caud_grad, support, pri.wm)


def ms_workspace(grid: str | Grid = "3mm", home: str | Path | None = None) -> MSWorkspace:
    """Per-process pathology fields of a grid, cached."""
    return _ms_workspace(get_grid(grid).name, str(atlas.braingenbench_home(home)))


# ------------------------------------------------------------------------------------ sampling
def _to_voxel(mws: MSWorkspace, mm: np.ndarray) -> np.ndarray:
    inv = np.linalg.inv(mws.waffine)
    return np.rint(mm @ inv[:3, :3].T + inv[:3, 3]).astype(np.intp)


def _inside(mws: MSWorkspace, mask: np.ndarray, mm: np.ndarray) -> np.ndarray:
    v = _to_voxel(mws, mm)
    ok = np.all((v >= 0) & (v < np.array(mask.shape)), axis=1)
    out = np.zeros(len(mm), dtype=bool)
    out[ok] = mask[tuple(v[ok].T)]
    return out


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    return q * np.sign(np.diag(r))


def _frame(axis: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A rotation whose first column is ``axis``."""
    a = axis / max(float(np.linalg.norm(axis)), 1e-9)
    t = rng.standard_normal(3)
    t -= a * float(t @ a)
    t /= max(float(np.linalg.norm(t)), 1e-9)
    return np.stack([a, t, np.cross(a, t)], 1)


def sample_pathology(rng: np.random.Generator, mws: MSWorkspace) -> Pathology:
    """Draw a subject's pathology (healthy with probability 0.2).

    Lesion centres are drawn uniformly in the bounding box of their class's mask and accepted inside
    the mask and at least ``_GAP_MM`` (surface to surface, bounding spheres) from every earlier lesion.
    """
    if rng.random() < _HEALTHY_SHARE:
        return Pathology(ms=False)
    n = int(min(_MAX_COUNT, max(1, rng.negative_binomial(_COUNT_SHAPE, _COUNT_SHAPE / (_COUNT_SHAPE + _MEAN_COUNT)))))
    kinds = rng.choice(len(LESION_CLASSES), size=n, p=_CLASS_SHARE)
    placed: list[Lesion] = []
    for k in sorted(kinds.tolist()):
        kind = LESION_CLASSES[k]
        ml = float(np.clip(_MEDIAN_ML[kind] * rng.lognormal(0.0, _SIZE_SIGMA), *_ML_RANGE))
        les = _place(rng, mws, kind, ml, placed)
        if les is not None:
            placed.append(les)
    total = sum(les.nominal_ml for les in placed)
    load = math.sqrt(total / 10.0)
    return Pathology(True, placed, float(_THAL_MM_AT_10ML * load * rng.lognormal(0.0, 0.2)),
                     float(_CAUD_MM_AT_10ML * load * rng.lognormal(0.0, 0.2)))


def _place(rng: np.random.Generator, mws: MSWorkspace, kind: str, ml: float, placed: list[Lesion]) -> Lesion | None:
    mask = mws.class_masks[kind]
    idx = np.argwhere(mask)
    lo = mws.waffine[:3, :3] @ idx.min(0) + mws.waffine[:3, 3]
    hi = mws.waffine[:3, :3] @ idx.max(0) + mws.waffine[:3, 3]
    r = (3.0 * ml * 1000.0 / (4.0 * math.pi)) ** (1.0 / 3.0)  # radius of the sphere of that volume
    if kind == "periventricular":
        ratios = np.array([1.8, 1.0, 1.0]) * rng.uniform(0.9, 1.1, 3)
    else:
        ratios = rng.uniform(1.0, 1.5, 3)
    axes = r * ratios / float(np.prod(ratios)) ** (1.0 / 3.0)
    t1 = BLACK_HOLE_T1 if rng.random() < _BLACK_HOLE_SHARE else LESION_TISSUE_3T[0]
    t1, t2, pd = t1 * rng.lognormal(0.0, 0.08), LESION_TISSUE_3T[1] * rng.lognormal(0.0, 0.1), \
        LESION_TISSUE_3T[2] * rng.lognormal(0.0, 0.03)
    for _ in range(20):
        cand = rng.uniform(lo, hi, (256, 3))
        cand = cand[_inside(mws, mask, cand)]
        for c in cand:
            if all(np.linalg.norm(c - np.asarray(o.centre_mm)) > axes.max() + max(o.axes_mm) + _GAP_MM for o in placed):
                if kind == "periventricular":
                    v = _to_voxel(mws, c[None])[0]
                    rot = _frame(mws.away_from_ventricles[(slice(None), *v)].astype(float), rng)
                else:
                    rot = _random_rotation(rng)
                return Lesion(kind, c.tolist(), axes.tolist(), rot.tolist(), float(t1), float(t2), float(pd))
    return None  # no room left: the subject has one lesion fewer


# ------------------------------------------------------------------------------------ rendering
def rasterise(pathology: Pathology, mws: MSWorkspace, shape: tuple[int, int, int]) -> np.ndarray:
    """Lesion ids (int16, 0 = none, k + 1 = ``pathology.lesions[k]``) on the template working grid.

    A lesion is the connected part of its ellipsoid, in white matter, that holds its centre: one lesion
    stays one connected component even where its ellipsoid crosses a sulcus or a ventricle's edge."""
    ids = np.zeros(shape, dtype=np.int16)
    inv = np.linalg.inv(mws.waffine)
    for k, les in enumerate(pathology.lesions):
        c = np.asarray(les.centre_mm)
        rad = max(les.axes_mm) / mws.wvs + 1.0
        cv = inv[:3, :3] @ c + inv[:3, 3]
        lo = np.maximum(np.floor(cv - rad).astype(int), 0)
        hi = np.minimum(np.ceil(cv + rad).astype(int) + 1, shape)
        if np.any(hi <= lo):
            continue
        grid = np.indices(tuple(hi - lo), dtype=np.float64).reshape(3, -1) + lo[:, None]
        world = mws.waffine[:3, :3] @ grid + mws.waffine[:3, 3:4]
        local = np.asarray(les.rotation).T @ (world - c[:, None])
        inside = (((local / np.asarray(les.axes_mm)[:, None]) ** 2).sum(0) <= 1.0).reshape(tuple(hi - lo))
        inside &= mws.wm[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] > 0.05
        parts, n = ndi.label(inside)
        if n > 1:
            sizes = np.bincount(parts.ravel())
            sizes[0] = 0
            centre = tuple(np.clip(np.rint(cv).astype(int) - lo, 0, np.array(inside.shape) - 1))
            keep = parts[centre] if parts[centre] > 0 else int(sizes.argmax())
            inside = parts == keep
        box = ids[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        box[inside & (box == 0)] = k + 1
    return ids


# ------------------------------------------------------------------------------------ evolution
#: new lesions per year of an MS subject: lognormal around this median (disease activity)
NEW_PER_YEAR = 1.0
_ENLARGE_PER_YEAR = 0.1  # chance per lesion and year to enlarge
_ENLARGE_FACTOR = (1.4, 2.2)  # volume factor of an enlarging lesion
_ENLARGE_GAP_MM = 2.0  # an enlarging lesion keeps this gap (bounding spheres) to every other lesion
# deep grey-matter atrophy per year of an MS subject (peak mm; ~1 % of the thalamus per year)
_THAL_MM_PER_YEAR = 0.04
_CAUD_MM_PER_YEAR = 0.025


@dataclass
class Change:
    """What happened to a subject's pathology between two sessions."""

    new: int = 0  # lesions that appeared
    enlarging: int = 0  # lesions that grew


def activity(rng: np.random.Generator, pathology: Pathology) -> float:
    """A subject's disease activity: new lesions per year (0 for a healthy control)."""
    return float(NEW_PER_YEAR * rng.lognormal(0.0, 0.8)) if pathology.ms else 0.0


def evolve(pathology: Pathology, rng: np.random.Generator, mws: MSWorkspace, years: float,
           new_per_year: float) -> tuple[Pathology, Change]:
    """The pathology ``years`` later: Poisson(``new_per_year * years``) new lesions placed like the
    baseline's, each lesion enlarging with probability ``1 - (1 - 0.1)^years`` (volume x1.4-2.2, when it
    keeps a 2 mm gap), and the deep grey-matter shrink grown by ~1 %/year. Existing lesions keep their
    index (the rasterised id of lesion k stays k + 1), so lesion-wise change can be followed."""
    if not pathology.ms:
        return Pathology(ms=False), Change()
    lesions = [Lesion(**asdict(les)) for les in pathology.lesions]
    change = Change()
    p_enlarge = 1.0 - (1.0 - _ENLARGE_PER_YEAR) ** years
    for k, les in enumerate(lesions):
        if rng.random() >= p_enlarge:
            continue
        grown = [a * rng.uniform(*_ENLARGE_FACTOR) ** (1.0 / 3.0) for a in les.axes_mm]
        c = np.asarray(les.centre_mm)
        if all(np.linalg.norm(c - np.asarray(o.centre_mm)) > max(grown) + max(o.axes_mm) + _ENLARGE_GAP_MM
               for j, o in enumerate(lesions) if j != k):
            les.axes_mm = grown
            change.enlarging += 1
    for _ in range(int(rng.poisson(new_per_year * years))):
        k = int(rng.choice(len(LESION_CLASSES), p=_CLASS_SHARE))
        kind = LESION_CLASSES[k]
        ml = float(np.clip(_MEDIAN_ML[kind] * rng.lognormal(0.0, _SIZE_SIGMA), *_ML_RANGE))
        les = _place(rng, mws, kind, ml, lesions)
        if les is not None:
            lesions.append(les)
            change.new += 1
    grow = years * rng.lognormal(0.0, 0.3)
    return Pathology(True, lesions, pathology.thalamus_mm + _THAL_MM_PER_YEAR * grow,
                     pathology.caudate_mm + _CAUD_MM_PER_YEAR * grow), change
