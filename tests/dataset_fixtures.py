"""Tiny raw-dataset fixtures that mimic the public downloads' file names, layouts and spreadsheets.

Every scan is a phantom subject (:func:`cohorts.phantom.synthesize`, SYNTHETIC) moved into a
"scanner" frame by a known similarity transform (a few degrees of rotation, a translation and an
isotropic scale ``s``), resampled onto a coarse native voxel grid (stored in a non-RAS voxel order),
with a scalp shell and background noise added. Ground-truth native volumes are the phantom's
volumes times ``s**3``.
"""

from __future__ import annotations

import dataclasses
import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from cohorts import phantom
from cohorts.preprocess import _apply_axes, _sample, _world

DEFAULT_VOXEL = (2.6, 2.6, 2.8)
# voxel-axis layouts: (perm, signs) applied to the RAS-ordered array; LPS-like and a sagittal one
LAYOUTS = {"RAS": ((0, 1, 2), (1, 1, 1)), "LPS": ((0, 1, 2), (-1, -1, 1)), "PIL": ((1, 2, 0), (-1, -1, 1)),
           "ASL": ((1, 2, 0), (1, 1, -1))}


@dataclass
class FixtureScan:
    data: np.ndarray
    affine: np.ndarray
    volumes: dict[str, float]  # true native volumes (mL)
    params: phantom.SubjectParams
    lesion: np.ndarray | None = None  # native lesion mask (bool, stored layout) when rendered with a pathology


def _rotation(deg) -> np.ndarray:
    return phantom._rotation(deg)


def phantom_result(index: int, modality: str, seed: int = 0, grid: str = "3mm",
                   pathology=None) -> phantom.SynthResult:
    """Phantom subject ``index`` rendered with ``modality`` (same anatomy for every modality); with a
    :class:`~cohorts.phantom_lesions.Pathology`, its lesions too (``phantom-ms`` contrast and headroom)."""
    p = phantom.sample_params(seed, index)
    seq = dict(phantom.SEQUENCES[modality])
    seq.pop("kind")
    p = dataclasses.replace(p, modality=modality, sequence=seq)
    if pathology is not None:
        return phantom.synthesize(seed, index, grid, params=p, pathology=pathology, headroom=0.7)
    return phantom.synthesize(seed, index, grid, params=p)


def native_scan(index: int, modality: str = "T1", *, seed: int = 0, rotation_deg=(4.0, -3.0, 5.0),
                translation_mm=(6.0, -10.0, 12.0), scale: float = 1.05, voxel_mm=DEFAULT_VOXEL,
                layout: str = "LPS", skull: bool = True, noise: float = 0.01, pathology=None) -> FixtureScan:
    """One native-space scan of phantom subject ``index``.

    Args:
        index: phantom subject index.
        modality: T1, T2, PD or FLAIR.
        rotation_deg, translation_mm, scale: the atlas → scanner similarity transform.
        voxel_mm: native voxel size.
        layout: voxel-axis order of the stored array (a key of :data:`LAYOUTS`).
        skull: add a scalp shell 6-11 mm outside the brain.
        noise: background/Rician-like noise level (fraction of the brain's 99.5th percentile).
        pathology: lesions to render (:class:`~cohorts.phantom_lesions.Pathology`, template mm); the scan's
            ``lesion`` is then the native lesion mask (the phantom's lesion fraction resampled, > 0.5).
    """
    g = phantom.get_grid("3mm")
    res = phantom_result(index, modality, seed, pathology=pathology)
    m = scale * _rotation(rotation_deg)
    t = np.asarray(translation_mm, float)
    vs = np.asarray(voxel_mm, float)
    extent = np.array([190.0, 230.0, 200.0])
    shape = tuple(int(np.ceil(e / v)) for e, v in zip(extent, vs))
    aff = np.diag([*vs, 1.0])
    aff[:3, 3] = t + np.array([0.0, -17.0, 5.0]) - vs * (np.array(shape) - 1) / 2
    x = _world(shape, aff)
    minv = np.linalg.inv(m).astype(np.float32)
    y = minv @ (x - t.astype(np.float32)[:, None])
    data = _sample(res.image, g.affine, y, 1).reshape(shape)
    lesion = _sample(res.tissue["lesion"], g.affine, y, 1).reshape(shape) > 0.5 if pathology is not None else None
    rng = np.random.default_rng([seed, index, 77])
    if skull:
        brain = data > 0.02
        dist = ndi.distance_transform_edt(~brain, sampling=vs)
        shell = (dist > 6.0) & (dist <= 11.0)
        level = {"T1": 0.8, "T2": 0.45, "PD": 0.7, "FLAIR": 0.5}[modality]
        data = np.where(shell, np.float32(level), data)
        data = ndi.gaussian_filter(data, 0.5)
    if noise:
        n1 = rng.normal(0, noise, shape)
        n2 = rng.normal(0, noise, shape)
        data = np.sqrt((data + n1) ** 2 + n2**2)
    data = (data * 1000.0).astype(np.float32)  # scanner-like units
    perm, signs = LAYOUTS[layout]
    stored = _apply_axes(data, perm, signs)
    lesion = _apply_axes(lesion, perm, signs) if lesion is not None else None
    # stored index i' -> RAS index i: i[perm[r]] = i'[r] or n-1-i'[r]
    mm = np.zeros((4, 4))
    mm[3, 3] = 1
    for r, (c, s) in enumerate(zip(perm, signs)):
        mm[c, r] = s
        mm[c, 3] = 0 if s > 0 else shape[c] - 1
    vols = {k: round(v * scale**3, 3) for k, v in res.volumes.items()}
    return FixtureScan(stored, aff @ mm, vols, res.params, lesion)


def save_nifti(scan: FixtureScan, path: Path) -> Path:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(scan.data.astype(np.int16 if scan.data.max() < 32000 else np.float32), scan.affine)
    img.set_qform(scan.affine, code=1)
    img.set_sform(scan.affine, code=1)
    nib.save(img, str(path))
    return path


def truncate(path: Path, keep: float = 0.4) -> None:
    """Cut a file to ``keep`` of its bytes (a broken download)."""
    b = path.read_bytes()
    path.write_bytes(b[: int(len(b) * keep)])


# ------------------------------------------------------------------------------------ datasets
def make_ixi(root: Path, specs: list[dict], *, spreadsheet: str = "csv", missing_from_sheet=()) -> dict:
    """IXI: ``IXI-T1/IXI002-Guys-0828-T1.nii.gz`` (likewise T2, PD) + ``IXI.csv``/``IXI.xls``.

    Args:
        specs: ``{"index", "ixi_id", "site", "modalities", "age", "sex"}`` per subject.
        spreadsheet: ``csv`` (an export of IXI.xls with the same columns).
        missing_from_sheet: IXI ids left out of the spreadsheet.

    Returns:
        ``{person_id: {modality: FixtureScan}}``.
    """
    import pandas as pd

    out = {}
    rows = []
    for sp in specs:
        pid = f"IXI{sp['ixi_id']:03d}-{sp['site']}-{1000 + sp['ixi_id']:04d}"
        out[pid] = {}
        for mod in sp["modalities"]:
            scan = native_scan(sp["index"], mod, layout="PIL" if mod == "T1" else "LPS")
            save_nifti(scan, root / f"IXI-{mod}" / f"{pid}-{mod}.nii.gz")
            out[pid][mod] = scan
        if sp["ixi_id"] not in missing_from_sheet:
            rows.append({"IXI_ID": sp["ixi_id"], "SEX_ID (1=m, 2=f)": 1 if sp["sex"] == "M" else 2,
                         "HEIGHT": 170, "WEIGHT": 70, "ETHNIC_ID": 1, "MARITAL_ID": 2, "OCCUPATION_ID": 1,
                         "QUALIFICATION_ID": 5, "DOB": "1950-01-01", "DATE_AVAILABLE": 1,
                         "STUDY_DATE": "2005-11-10", "AGE": sp["age"]})
    if spreadsheet == "csv":
        pd.DataFrame(rows).to_csv(root / "IXI.csv", index=False)
    return out


def make_oasis1(root: Path, specs: list[dict]) -> dict:
    """OASIS-1: ``disc1/OAS1_0001_MR1/RAW/OAS1_0001_MR1_mpr-1_anon.hdr/.img`` (Analyze 7.5, sagittal
    voxel order, no orientation in the header) + ``oasis_cross-sectional.csv``."""
    import nibabel as nib
    import pandas as pd

    out, rows = {}, []
    for sp in specs:
        sid = f"OAS1_{sp['oasis_id']:04d}_MR1"
        scan = native_scan(sp["index"], "T1", layout="RAS", voxel_mm=(2.5, 2.5, 3.0))
        # Analyze: nibabel assumes LAS (radiological) voxel order; store a sagittal layout of it
        las = scan.data[::-1]
        stored = _apply_axes(las, (1, 2, 0), (1, 1, 1))
        vs = np.sqrt((scan.affine[:3, :3] ** 2).sum(0))[[1, 2, 0]]
        hdr = nib.AnalyzeHeader()
        hdr.set_data_shape(stored.shape)
        hdr.set_data_dtype(np.int16)
        hdr.set_zooms(tuple(float(v) for v in vs))
        raw = root / sp.get("disc", "disc1") / sid / "RAW"
        raw.mkdir(parents=True, exist_ok=True)
        nib.save(nib.AnalyzeImage(stored.astype(np.int16), None, hdr), str(raw / f"{sid}_mpr-1_anon.hdr"))
        out[sid] = scan
        rows.append({"ID": sid, "M/F": sp["sex"], "Hand": "R", "Age": sp["age"], "Educ": 3, "SES": 2,
                     "MMSE": 29, "CDR": 0, "eTIV": 1500, "nWBV": 0.75, "ASF": 1.2, "Delay": ""})
    pd.DataFrame(rows).to_csv(root / "oasis_cross-sectional.csv", index=False)
    return out


def make_ibsr(root: Path, specs: list[dict]) -> dict:
    """IBSR (NIfTI release): ``IBSR_01/IBSR_01_ana.nii.gz`` + ``IBSR_01_seg_ana.nii.gz`` (CMA labels:
    4/43 lateral ventricles, 17/53 hippocampi, ...), no spreadsheet."""
    out = {}
    for sp in specs:
        sid = f"IBSR_{sp['ibsr_id']:02d}"
        scan = native_scan(sp["index"], "T1", layout="LPS")
        save_nifti(scan, root / sid / f"{sid}_ana.nii.gz")
        seg = dataclasses.replace(scan, data=(scan.data > 100).astype(np.float32) * 4)  # a crude "manual" label
        save_nifti(seg, root / sid / f"{sid}_seg_ana.nii.gz")
        out[sid] = scan
    return out


def make_kirby21(root: Path, specs: list[dict], demographics: bool = True) -> dict:
    """Kirby21: ``KKI2009-01/KKI2009-01-MPRAGE.nii`` (+ ``-FLAIR``, ``-T2w``); optional demographics CSV."""
    import pandas as pd

    out, rows = {}, []
    names = {"T1": "MPRAGE", "FLAIR": "FLAIR", "T2": "T2w"}
    for sp in specs:
        sid = f"KKI2009-{sp['session']:02d}"
        out[sid] = {}
        for mod in sp["modalities"]:
            scan = native_scan(sp["index"], mod, layout="LPS")
            save_nifti(scan, root / sid / f"{sid}-{names[mod]}.nii")
            out[sid][mod] = scan
        rows.append({"ID": sid, "Age": sp["age"], "Sex": sp["sex"], "Subject": sp.get("subject", sid)})
    if demographics:
        pd.DataFrame(rows).to_csv(root / "Kirby21_demographics.csv", index=False)
    return out


def make_bids(root: Path, specs: list[dict]) -> dict:
    """BIDS: ``participants.tsv`` + ``sub-XX/[ses-YY/]anat/sub-XX[_ses-YY]_T1w.nii.gz`` (T2w, FLAIR, PDw)."""
    import json

    import pandas as pd

    suffix = {"T1": "T1w", "T2": "T2w", "FLAIR": "FLAIR", "PD": "PDw"}
    out, rows = {}, []
    (root / "dataset_description.json").parent.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "fixture", "BIDSVersion": "1.8.0"}))
    for sp in specs:
        sub = f"sub-{sp['label']}"
        out[sub] = {}
        ses = f"ses-{sp['session']}" if sp.get("session") else None
        anat = root / sub / (ses or "") / "anat"
        for mod in sp["modalities"]:
            kind = sp.get("kind", "ok")
            scan = native_scan(sp["index"], mod, layout="RAS")
            if kind == "flipped":  # upside down in the data, header unchanged
                scan = dataclasses.replace(scan, data=np.ascontiguousarray(scan.data[:, :, ::-1]))
            elif kind == "noise":
                rng = np.random.default_rng(5)
                scan = dataclasses.replace(scan, data=rng.uniform(0, 1000, scan.data.shape).astype(np.float32))
            name = f"{sub}{'_' + ses if ses else ''}_{suffix[mod]}.nii.gz"
            save_nifti(scan, anat / name)
            out[sub][mod] = scan
        if sp.get("in_participants", True):
            rows.append({"participant_id": sub, "age": sp.get("age", "n/a"), "sex": sp.get("sex", "n/a")})
    pd.DataFrame(rows).to_csv(root / "participants.tsv", sep="\t", index=False)
    return out


def gzip_bytes(path: Path) -> None:
    path.write_bytes(gzip.compress(path.read_bytes()))


# ------------------------------------------------------------------------------------ longitudinal BIDS
def lesion(centre_mm, radius_mm: float):
    """A spherical phantom lesion at ``centre_mm`` (template/MNI mm) of ``radius_mm``, with the
    ``phantom-ms`` lesion tissue (hyperintense on FLAIR, hypointense on T1)."""
    from cohorts.phantom_lesions import LESION_TISSUE_3T, Lesion

    return Lesion("deep", [float(c) for c in centre_mm], [float(radius_mm)] * 3, np.eye(3).tolist(), *LESION_TISSUE_3T)


def make_bids_longitudinal(root: Path, persons: list[dict], *, pipeline: str = "lesion-manual") -> dict:
    """A longitudinal BIDS dataset with lesion masks, laid out as public longitudinal MS datasets are
    once converted to BIDS::

        dataset_description.json, participants.tsv
        sub-01/sub-01_sessions.tsv                       session_id, acq_time (ISO 8601)
        sub-01/ses-01/anat/sub-01_ses-01_FLAIR.nii.gz    (+ _T1w)
        derivatives/<pipeline>/dataset_description.json  DatasetType "derivative"
        derivatives/<pipeline>/sub-01/ses-01/anat/sub-01_ses-01_space-orig_label-lesion_mask.nii.gz

    Each person is one phantom subject; each session repositions the head (its own rotation and
    translation) and renders the session's lesions; the mask is the FLAIR's native lesion map, on
    the FLAIR's voxels.

    Args:
        persons: ``{"label", "index", "age", "sex", "sessions_tsv" (default True), "sessions": [{"ses",
            "acq_time", "lesions": [:func:`lesion`], "modalities" (default ["FLAIR"]), "mask_name"
            (default the label-lesion mask name)}]}``.
        pipeline: the derivatives folder.

    Returns:
        ``{(sub-XX, ses label): {"scans": {modality: FixtureScan}, "mask": Path, "lesion_ml": native mL,
        "lesions": [Lesion]}}``.
    """
    import json

    import nibabel as nib
    import pandas as pd

    from cohorts.phantom_lesions import Pathology

    suffix = {"T1": "T1w", "T2": "T2w", "FLAIR": "FLAIR", "PD": "PDw"}
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "longitudinal fixture", "BIDSVersion": "1.8.0",
                                                                "License": "CC0"}))
    deriv = root / "derivatives" / pipeline
    deriv.mkdir(parents=True, exist_ok=True)
    (deriv / "dataset_description.json").write_text(json.dumps({
        "Name": "manual lesion masks", "BIDSVersion": "1.8.0", "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "Manual"}]}))
    out, rows = {}, []
    for p in persons:
        sub = f"sub-{p['label']}"
        rows.append({"participant_id": sub, "age": p.get("age", "n/a"), "sex": p.get("sex", "n/a")})
        ses_rows = []
        for k, sp in enumerate(p["sessions"]):
            ses = sp["ses"]
            path = Pathology(True, list(sp.get("lesions", [])))
            pose = {"rotation_deg": (4.0 + 2 * k, -3.0 - k, 5.0 + k),
                    "translation_mm": (6.0 + 3 * k, -10.0 + 2 * k, 12.0 - 2 * k)}
            scans = {}
            for mod in sp.get("modalities", ["FLAIR"]):
                layout, vox = ("RAS", DEFAULT_VOXEL) if mod == "FLAIR" else ("PIL", (2.4, 2.4, 2.4))
                scans[mod] = native_scan(p["index"], mod, layout=layout, voxel_mm=vox, pathology=path, **pose)
                save_nifti(scans[mod], root / sub / f"ses-{ses}" / "anat" / f"{sub}_ses-{ses}_{suffix[mod]}.nii.gz")
            flair = scans["FLAIR"]
            name = sp.get("mask_name", f"{sub}_ses-{ses}_space-orig_label-lesion_mask.nii.gz")
            mask_path = deriv / sub / f"ses-{ses}" / "anat" / name
            mask_path.parent.mkdir(parents=True, exist_ok=True)
            img = nib.Nifti1Image(flair.lesion.astype(np.uint8), flair.affine)
            img.set_qform(flair.affine, code=1)
            img.set_sform(flair.affine, code=1)
            nib.save(img, str(mask_path))
            voxel_ml = float(abs(np.linalg.det(flair.affine[:3, :3]))) / 1000.0
            out[(sub, ses)] = {"scans": scans, "mask": mask_path, "lesions": list(path.lesions),
                               "lesion_ml": float(flair.lesion.sum()) * voxel_ml}
            ses_rows.append({"session_id": f"ses-{ses}", "acq_time": sp.get("acq_time", "n/a")})
        if p.get("sessions_tsv", True):
            pd.DataFrame(ses_rows).to_csv(root / sub / f"{sub}_sessions.tsv", sep="\t", index=False)
    pd.DataFrame(rows).to_csv(root / "participants.tsv", sep="\t", index=False)
    return out
