"""IBSR (Internet Brain Segmentation Repository, CMA/MGH): 18 T1w scans with expert segmentations.

Download layout (NITRC, IBSR V2.0 NIfTI): ``IBSR_01/IBSR_01_ana.nii.gz`` (or ``_ana_strip`` in
``IBSR_nifti_stripped``), ``IBSR_01_seg_ana.nii.gz`` (CMA labels, FreeSurfer-style ids),
``IBSR_01_segTRI_ana.nii.gz`` (CSF/GM/WM), ``IBSR_01_ana_brainmask.nii.gz``; the course layout
``IBSR_01/IBSR_01.nii.gz`` + ``IBSR_01_seg.nii.gz`` (3 tissues) also works. No demographics file
ships with the images, so captions carry no age/sex unless a ``demographics.csv`` (``ID``, ``Age``,
``Sex``) is put in the raw folder.

The manual CMA labels give ``manual_vol_*`` columns in the manifest (lateral ventricles 4+5+43+44,
third 14, fourth 15, hippocampi 17/53, thalamus 10/49, caudate 11/50, putamen 12/51): a check of the
atlas-propagated volumes on real data.
"""

from __future__ import annotations

import re
from pathlib import Path

from cohorts.datasets import (DatasetInfo, Discovery, RawScan, RawSubject, column, find_files, parse_age,
                                 parse_sex, read_table)

INFO = DatasetInfo(
    name="ibsr", title="IBSR V2.0 (Center for Morphometric Analysis, MGH)",
    url="https://www.nitrc.org/projects/ibsr",
    licence="IBSR terms of use (free for research with acknowledgement of the CMA/MGH; check NITRC)",
    citation="Internet Brain Segmentation Repository, Center for Morphometric Analysis, MGH",
    modalities=("T1",),
    layout="IBSR_01/IBSR_01_ana.nii.gz (or _ana_strip / IBSR_01.nii.gz) + IBSR_01_seg_ana.nii.gz",
)
IMG_RE = re.compile(r"^IBSR_(\d{2})(_ana|_ana_strip|)\.nii(?:\.gz)?$", re.I)
SEG_RE = re.compile(r"^IBSR_(\d{2})_seg(_ana)?\.nii(?:\.gz)?$", re.I)
CMA_LABELS = {"lateral_ventricles": (4, 5, 43, 44), "third_ventricle": (14,), "fourth_ventricle": (15,),
              "hippocampus_left": (17,), "hippocampus_right": (53,), "thalamus": (10, 49),
              "caudate": (11, 50), "putamen": (12, 51)}
_PRIORITY = {"_ana": 0, "_ana_strip": 1, "": 2}


def manual_volumes(path: Path) -> dict[str, float]:
    """mL per canonical structure from an IBSR CMA label file (3-tissue files give nothing)."""
    import nibabel as nib
    import numpy as np

    img = nib.load(str(path))
    lab = np.asarray(img.dataobj).astype(np.int64)
    if lab.ndim == 4:
        lab = lab[..., 0]
    vox = float(np.prod(img.header.get_zooms()[:3])) / 1000.0
    if lab.max() <= 3:
        return {}
    counts = np.bincount(np.clip(lab.ravel(), 0, None))
    return {k: round(sum(int(counts[i]) for i in ids if i < counts.size) * vox, 3) for k, ids in CMA_LABELS.items()}


def discover(raw: Path, scratch: Path) -> Discovery:
    imgs: dict[str, list[tuple[int, Path]]] = {}
    segs: dict[str, Path] = {}
    for f in find_files(raw, r"^IBSR_\d{2}.*\.nii(\.gz)?$"):
        m = IMG_RE.match(f.name)
        if m:
            imgs.setdefault(m.group(1), []).append((_PRIORITY[m.group(2).lower()], f))
            continue
        m = SEG_RE.match(f.name)
        if m and (m.group(1) not in segs or m.group(2)):
            segs[m.group(1)] = f
    demo = {}
    sheet = next(iter(sorted(raw.glob("demographics.csv"))), None)
    if sheet is not None:
        df = read_table(sheet)
        idc, agec, sexc = column(df, "ID", path=sheet), column(df, "Age", path=sheet, required=False), \
            column(df, "Sex", "Gender", path=sheet, required=False)
        for r in df.to_dict("records"):
            key = re.sub(r"\D", "", str(r[idc]))[-2:].zfill(2)
            demo[key] = {"age": parse_age(r.get(agec)) if agec else None, "sex": parse_sex(r.get(sexc)) if sexc else None}
    subjects = []
    for num, files in sorted(imgs.items()):
        files.sort()
        sid = f"IBSR_{num}"
        s = RawSubject(person_id=sid, session_id=sid, scans={"T1": RawScan("T1", files[0][1], [f for _, f in files[1:]])},
                       site="CMA MGH", manual_labels=segs.get(num))
        if num in demo:
            s.age, s.sex = demo[num]["age"], demo[num]["sex"]
        if s.manual_labels is None:
            s.notes.append(f"no {sid}_seg_ana.nii.gz: no manual volumes for this subject")
        subjects.append(s)
    return Discovery(subjects, [], {"demographics": str(sheet) if sheet else None})
