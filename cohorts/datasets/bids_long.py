"""Sessions and white-matter lesion masks of BIDS datasets (used by :mod:`cohorts.datasets.bids`).

Why no separate ``bids-long`` dataset: the layout *is* BIDS. A dataset whose participants have two or
more ``ses-*`` folders is read as longitudinal by the ``bids`` loader itself (one cohort subject per
participant and session), so the registry, the command line and ``--reference bids`` stay as they are,
and a cross-sectional dataset (no sessions, or one each) is read exactly as before.

**Session order and months** (BIDS "Sessions file"): ``sub-XX/sub-XX_sessions.tsv`` with the columns
``session_id`` (``ses-01``) and ``acq_time`` (ISO 8601, ``2019-03-14T09:30:00``; dates shifted for
anonymisation work, since only differences count). Without an ``acq_time`` there, the earliest
``acq_time`` of the session's ``sub-XX_ses-YY_scans.tsv`` is used. Sessions are ordered by date and
``ses-00`` is the earliest; months since it are days / (365.25 / 12), to 0.1. Where any session of a
person has no readable date, that person's sessions are ordered by label (natural order) and their
months are unknown (``None``), with a note naming the file and the fix. An ``age`` column of
``sessions.tsv`` gives the age at each session.

**Lesion masks** (BIDS derivatives, "Masks" and "Segmentations"): any
``derivatives/<pipeline>/sub-XX/[ses-YY/]anat/sub-XX[_ses-YY][_space-orig][_...]_<suffix>.nii[.gz]``
whose ``label`` or ``desc`` entity is one of :data:`LESION_LABELS` (``lesion``, or ``L``, the BIDS
common label of lesion) and whose suffix is ``mask`` (binary), ``dseg`` (non-zero = lesion),
``probseg`` (>= 0.5 = lesion) or the non-standard ``roi``. Several candidates for one session: masks
without ``space`` or with ``space-orig`` first, then by suffix in that order, then by name; the others
are named in the notes. A mask must be in the voxel space of one of its session's raw images (same
shape and affine): that is checked when the dataset is read, before any image is processed, and a
mask that matches no image stops preparation with an error naming it and the fix.

**Carrying a mask** (:func:`lesion_fraction_on_grid`): the mask, box-averaged over about one grid
voxel when its voxels are finer than the grid, is sampled linearly through the same atlas -> native
transform as the image, in world coordinates: the result is the lesion fraction of every grid voxel
(float32 in [0, 1]; ``> 0.5`` is the binary mask, as in ``phantom-ms``). Every image of the session
gets it through its own registration (world coordinates are shared within a session, the same
assumption the pipeline makes for T1 brain masks). Lesion count (26-connected components) and volume
(mL) are measured on the native mask.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from cohorts.datasets import DatasetError, find_files, read_table

#: ``label``/``desc`` values that name a white-matter lesion mask (compared case-insensitively); ``L``
#: is the BIDS common image-derived label of "Lesion"
LESION_LABELS = ("lesion", "lesions", "l", "wmh")
#: lesion-mask suffixes, most preferred first (``roi`` is not a BIDS derivative suffix but is in use)
MASK_SUFFIXES = ("mask", "roi", "dseg", "probseg")
DAYS_PER_MONTH = 365.25 / 12.0
_AFFINE_TOL_MM = 1e-2
#: the image a mask was most likely drawn on comes first when its space is looked up
_REFERENCE_ORDER = ("FLAIR", "T2", "PD", "T1")
_ISO_EXAMPLE = "2019-03-14T09:30:00"


# ------------------------------------------------------------------------------------ names
def parse_name(name: str) -> tuple[dict[str, str], str] | None:
    """``sub-01_ses-02_space-orig_label-lesion_mask.nii.gz`` -> ``({"sub": "01", ...}, "mask")``; ``None``
    for a name that is not ``key-value`` pairs followed by a suffix."""
    m = re.match(r"^(.*)\.nii(?:\.gz)?$", name)
    if not m:
        return None
    *pairs, suffix = m.group(1).split("_")
    ents = {}
    for p in pairs:
        k, sep, v = p.partition("-")
        if not sep or not k or not v:
            return None
        ents[k] = v
    return (ents, suffix) if "sub" in ents else None


def natural_key(label: str) -> tuple:
    """Sort key that puts ``ses-2`` before ``ses-10``."""
    return tuple((0, int(t), "") if t.isdigit() else (1, 0, t.lower()) for t in re.findall(r"\d+|\D+", label))


# ------------------------------------------------------------------------------------ lesion masks
def find_lesion_masks(raw: Path) -> dict[tuple[str, str | None], list[Path]]:
    """Lesion masks under ``raw/derivatives``: ``(sub-XX, ses label or None)`` -> candidates, the
    preferred first (see the module docstring)."""
    root = raw / "derivatives"
    if not root.is_dir():
        return {}
    found: dict[tuple[str, str | None], list[tuple[tuple, Path]]] = {}
    for f in find_files(root, r"^sub-.*\.nii(\.gz)?$"):
        parsed = parse_name(f.name)
        if parsed is None:
            continue
        ents, suffix = parsed
        if suffix not in MASK_SUFFIXES:
            continue
        if not any(ents.get(k, "").lower() in LESION_LABELS for k in ("label", "desc")):
            continue
        rank = (ents.get("space", "orig") != "orig", MASK_SUFFIXES.index(suffix), f.name, str(f))
        found.setdefault((f"sub-{ents['sub']}", ents.get("ses")), []).append((rank, f))
    return {k: [f for _, f in sorted(v)] for k, v in found.items()}


def _header(path: Path) -> tuple[tuple[int, ...], np.ndarray]:
    import nibabel as nib

    img = nib.load(str(path))  # reads the header only
    return tuple(int(n) for n in img.shape[:3]), np.asarray(img.affine, float)


def check_mask(mask: Path, scans: dict[str, Path]) -> tuple[str | None, str | None]:
    """``(modality, None)`` of the first image (FLAIR, T2, PD, T1) whose voxel space the mask shares,
    or ``(None, error)`` naming the mask, the images and the fix."""
    try:
        shape, aff = _header(mask)
    except Exception as e:  # noqa: BLE001 - nibabel raises many types for broken files
        return None, (f"{mask}: cannot read the lesion mask ({type(e).__name__}: {e}); download it again or "
                      "remove it")
    seen, same_shape = [], False
    order = sorted(scans, key=lambda m: _REFERENCE_ORDER.index(m) if m in _REFERENCE_ORDER else len(_REFERENCE_ORDER))
    for mod in order:
        try:
            ishape, iaff = _header(scans[mod])
        except Exception:  # noqa: BLE001 - the image's own error is reported when it is prepared
            continue
        if ishape == shape and np.allclose(iaff, aff, atol=_AFFINE_TOL_MM):
            return mod, None
        seen.append(f"{scans[mod].name} {ishape}")
        same_shape |= ishape == shape
    where = "; ".join(seen) or "no readable image"
    fix = ("its shape matches but its affine (orientation/origin) does not: if it was drawn on that image's "
           "voxels, save it with the image's header (nibabel: Nifti1Image(mask, image.affine))" if same_shape else
           "resample it onto the image it was drawn on with the transform your pipeline wrote (e.g. "
           "antsApplyTransforms -n NearestNeighbor -r <image>)")
    return None, (f"{mask}: lesion mask of shape {shape} is not in the voxel space of any raw image of its "
                  f"session ({where}); a lesion mask must be in the raw image's space (BIDS space-orig): {fix}, "
                  "or remove it")


def read_lesion_mask(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The lesion mask as ``(bool array, affine)``: integer data (``mask``/``dseg``/``roi``) non-zero,
    floating-point data (``probseg``, or a binary mask stored as float) >= 0.5."""
    import nibabel as nib

    img = nib.load(str(path))
    data = np.asanyarray(img.dataobj)
    if data.ndim == 4:
        data = data[..., 0]
    data = np.nan_to_num(np.asarray(data))
    mask = data > 0 if np.issubdtype(data.dtype, np.integer) or data.dtype == bool else data >= 0.5
    return mask, np.asarray(img.affine, float)


def lesion_stats(mask: np.ndarray, affine: np.ndarray) -> dict[str, float]:
    """``{"count": 26-connected components, "volume": mL}`` of a native-space mask."""
    from scipy import ndimage as ndi

    from cohorts.preprocess import voxel_sizes

    ml = float(np.prod(voxel_sizes(affine))) / 1000.0
    _, n = ndi.label(mask, structure=np.ones((3, 3, 3), bool))
    return {"count": float(n), "volume": round(float(mask.sum()) * ml, 3)}


def lesion_fraction_on_grid(mask: np.ndarray, affine: np.ndarray, registration, grid) -> np.ndarray:
    """The native mask's lesion fraction on ``grid`` through ``registration`` (atlas -> native, the
    image's own), float32 in [0, 1]: box-averaged over about one grid voxel, then sampled linearly."""
    from scipy import ndimage as ndi

    from cohorts.preprocess import voxel_sizes, warp_to_grid

    data = mask.astype(np.float32)
    size = np.maximum(np.rint(grid.voxel_size / voxel_sizes(affine)).astype(int), 1)
    if (size > 1).any():
        data = ndi.uniform_filter(data, size=tuple(int(s) for s in size), mode="constant")
    return np.clip(warp_to_grid(data, affine, registration, grid, 1), 0.0, 1.0).astype(np.float32)


# ------------------------------------------------------------------------------------ sessions
def parse_acq_time(value) -> datetime:
    """An ISO 8601 date or date-time (BIDS ``acq_time``) as a naive UTC datetime; ``ValueError`` otherwise."""
    s = str(value).strip()
    if s in ("", "n/a", "nan", "None"):
        raise ValueError("no date")
    t = datetime.fromisoformat(s[:-1] + "+00:00" if s.endswith("Z") else s)
    return t.astimezone(timezone.utc).replace(tzinfo=None) if t.tzinfo else t


def _scans_time(raw: Path, sub: str, ses: str) -> tuple[str | None, str | None]:
    """The earliest ``acq_time`` of ``sub-XX_ses-YY_scans.tsv`` and that file's name, if any."""
    path = raw / sub / f"ses-{ses}" / f"{sub}_ses-{ses}_scans.tsv"
    if not path.exists():
        return None, None
    df = read_table(path)
    if "acq_time" not in df.columns:
        return None, str(path)
    vals = [str(v) for v in df["acq_time"] if str(v).strip() not in ("", "n/a", "nan")]
    return (min(vals) if vals else None), str(path)


def session_times(raw: Path, sub: str, sessions: list[str]) -> tuple[list[str], dict, dict, list[str]]:
    """Order, months since the earliest session and ages of a person's sessions.

    Args:
        raw: the dataset folder.
        sub: ``sub-XX``.
        sessions: the session labels that have images (``01``, not ``ses-01``).

    Returns:
        ``(ordered labels, {label: months or None}, {label: age or None}, notes)``.
    """
    path = raw / sub / f"{sub}_sessions.tsv"
    rows: dict[str, dict] = {}
    if path.exists():
        df = read_table(path)
        if "session_id" not in df.columns:
            raise DatasetError(f"{path}: no session_id column (columns: {list(df.columns)}); a BIDS sessions file "
                               "lists one session per row as session_id (ses-01) and acq_time")
        for r in df.to_dict("records"):
            label = str(r["session_id"]).strip()
            rows[label[4:] if label.startswith("ses-") else label] = r
    times, bad = {}, []
    for ses in sessions:
        value, source = rows.get(ses, {}).get("acq_time"), str(path)
        if value is None or str(value).strip() in ("", "n/a", "nan"):
            value, source = _scans_time(raw, sub, ses)
        if value is None:
            bad.append(f"ses-{ses}: no acq_time")
            continue
        try:
            times[ses] = parse_acq_time(value)
        except ValueError:
            bad.append(f"ses-{ses}: acq_time {str(value)!r} in {source} is not an ISO 8601 date")
    ages = {ses: _age(rows.get(ses, {}).get("age")) for ses in sessions}
    if bad:
        where = path if path.exists() else f"{path} (missing)"
        notes = [f"session dates unknown ({'; '.join(bad)}): sessions ordered by label, months since baseline "
                 f"not given; fix: give every session an acq_time such as {_ISO_EXAMPLE} in {where}"]
        return sorted(sessions, key=natural_key), {s: None for s in sessions}, ages, notes
    order = sorted(sessions, key=lambda s: (times[s], natural_key(s)))
    t0 = times[order[0]]
    months = {s: round((times[s] - t0).total_seconds() / 86400.0 / DAYS_PER_MONTH, 1) for s in order}
    return order, months, ages, []


def _age(v) -> float | None:
    from cohorts.datasets import parse_age

    return parse_age(v) if v is not None else None
