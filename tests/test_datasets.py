"""Dataset loaders and `cohort prepare` end to end on tiny fixtures that mimic each download.

Fixtures (tests/dataset_fixtures.py): phantom subjects moved into a scanner frame by a known
rotation/translation/scale (s = 1.05, so true native volumes are the phantom's times s^3), resampled to
~2.6 mm native voxels with a scalp shell, written with each dataset's real file names, folder layout
and spreadsheet columns. Everything is prepared on the 3 mm grid with ``--skull-strip threshold``.
Tolerance for recovered native volumes: ICV and lateral ventricles within 15 % (FLAIR ventricles 25 %).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from cohorts.datasets import DatasetError, get_loader
from cohorts.prepare import EXCLUDED_SPLIT, prepare_cohort, split_for
from cohorts.subject import Cohort, CohortError
from tests import dataset_fixtures as F

TOL = 0.15


def _manifest(out):
    return pd.read_csv(out / "manifest.csv", keep_default_na=False)


def _log(out):
    return [json.loads(line) for line in (out / "prepare_log.jsonl").read_text().splitlines()]


# measured on these fixtures (3 mm grid, 2.6 mm native voxels): T1 lateral ventricles +1 to +13 %,
# T2 -4 %, PD -4 %, FLAIR -21 %; ICV +2 to +6 %
VENT_TOL = {"T1": TOL, "T2": TOL, "PD": TOL, "FLAIR": 0.25}


def _check_volumes(df, truth):
    for row in df.to_dict("records"):
        if row["split"] == EXCLUDED_SPLIT:
            continue
        tv = truth[row["session_id"]]
        tv = tv[row["modality"]] if isinstance(tv, dict) else tv
        assert row["vol_icv"] == pytest.approx(tv.volumes["icv"], rel=TOL), row["subject_id"]
        assert row["vol_lateral_ventricles"] == pytest.approx(tv.volumes["lateral_ventricles"],
                                                              rel=VENT_TOL[row["modality"]]), row["subject_id"]


# ------------------------------------------------------------------------------------ IXI
@pytest.fixture(scope="module")
def ixi(tmp_path_factory):
    root = tmp_path_factory.mktemp("ixi_raw")
    truth = F.make_ixi(root, [
        {"index": 7, "ixi_id": 2, "site": "Guys", "modalities": ["T1", "T2"], "age": 76.0, "sex": "F"},
        {"index": 12, "ixi_id": 12, "site": "HH", "modalities": ["T1"], "age": 85.0, "sex": "M"},
        {"index": 3, "ixi_id": 35, "site": "IOP", "modalities": ["T1"], "age": 55.0, "sex": "M"},
    ], missing_from_sheet=(12,))
    F.truncate(root / "IXI-T1" / "IXI035-IOP-1035-T1.nii.gz")  # a broken download
    out = tmp_path_factory.mktemp("ixi_out")
    cohort = prepare_cohort("ixi", root, out, grid="3mm", skull_strip="threshold", quiet=True)
    return root, out, cohort, truth


def test_ixi_cohort_folder_manifest_and_captions(ixi):
    root, out, cohort, truth = ixi
    for name in ("cohort.json", "manifest.csv", "brain_mask.nii.gz", "prepare_log.jsonl", "failed.csv"):
        assert (out / name).exists(), name
    df = _manifest(out)
    assert sorted(df.subject_id) == ["IXI002-Guys-1002-T1", "IXI002-Guys-1002-T2", "IXI012-HH-1012-T1"]
    for col in ("qc_ncc", "qc_dice", "qc_pass", "person_id", "source_file", "vol_lateral_ventricles", "pct_icv"):
        assert col in df.columns, col
    r = df.set_index("subject_id")
    assert r.loc["IXI002-Guys-1002-T1", "caption"].startswith("T1-weighted brain MRI of a 76-year-old woman.")
    assert r.loc["IXI002-Guys-1002-T2", "caption"].startswith("T2-weighted brain MRI of a 76-year-old woman.")
    # absent from the spreadsheet: no age, no sex in the caption
    assert r.loc["IXI012-HH-1012-T1", "caption"].startswith("T1-weighted brain MRI of a subject.")
    assert r.loc["IXI012-HH-1012-T1", "age"] == "" and r.loc["IXI012-HH-1012-T1", "sex"] == ""
    assert "not in IXI.csv" in r.loc["IXI012-HH-1012-T1", "notes"]
    assert "Synthetic" not in " ".join(df.caption) and set(df.synthetic.astype(str)) == {"False"}
    assert r.loc["IXI002-Guys-1002-T1", "site"].startswith("Guys") and set(df.dataset) == {"ixi"}
    # both modalities of one person share a split (splits are by person)
    assert r.loc["IXI002-Guys-1002-T1", "split"] == r.loc["IXI002-Guys-1002-T2", "split"] \
        == split_for("ixi", "IXI002")
    assert df.qc_pass.astype(str).eq("True").all() and (df.qc_ncc.astype(float) > 0.75).all()
    _check_volumes(df, truth)
    c = Cohort.load(out)
    assert not c.synthetic and c.meta["source"]["licence"] == "CC BY-SA 3.0"
    vol = c.load_volume(c.subjects[0])
    assert vol.shape == c.grid.shape and 0 <= vol.min() and vol.max() == pytest.approx(1.0)
    assert set(np.unique(c.load_labels(c.subjects[0]))) <= {0, 1, 2, 3}


def test_ixi_bad_input_is_reported_and_the_rest_proceeds(ixi):
    root, out, cohort, truth = ixi
    failed = pd.read_csv(out / "failed.csv")
    assert len(failed) == 1
    f = failed.iloc[0]
    assert f.subject_id == "IXI035-IOP-1035-T1" and f.step == "load"
    assert "IXI035-IOP-1035-T1.nii.gz" in f.error and "corrupt or truncated" in f.error
    log = _log(out)
    notes = [x["detail"] for x in log if x["step"] == "discover"]
    assert any("no T2, PD image" in n for n in notes if "IXI012" in n or "only T1" in n)
    # every step of every prepared scan is in the log
    steps = {x["step"] for x in log if x["subject_id"] == "IXI002-Guys-1002-T2"}
    assert {"load", "reorient", "bias_correction", "skull_strip", "registration", "label_propagation",
            "tissue_segmentation", "resample_to_grid", "normalise", "qc", "total"} <= steps
    t2_strip = [x for x in log if x["subject_id"] == "IXI002-Guys-1002-T2" and x["step"] == "skull_strip"]
    assert t2_strip[0]["method"] == "threshold"


def test_ixi_prepare_resumes_without_redoing_subjects(ixi, capsys):
    from bench.cli import main

    root, out, cohort, truth = ixi
    n_reg = sum(1 for x in _log(out) if x["step"] == "registration")
    assert main(["--quiet", "cohort", "prepare", "ixi", str(root), "--out", str(out), "--skull-strip",
                 "threshold"]) == 0
    printed = capsys.readouterr().out
    assert "3 scans" in printed and "1 failed" in printed
    log = _log(out)
    assert sum(1 for x in log if x["step"] == "registration") == n_reg + 0  # nothing redone ...
    assert sum(1 for x in log if x["step"] == "resume") == 3  # ... except nothing: 3 sessions reused
    again = Cohort.load(out)
    assert again.content_hash == cohort.content_hash


def test_ixi_cohort_works_as_runner_reference(ixi):
    from cohorts.grid import get_grid
    from bench.runner import resolve_cohort

    _, out, cohort, _ = ixi
    c = resolve_cohort(str(out), get_grid("3mm"), {})
    assert c.content_hash == cohort.content_hash
    with pytest.raises(ValueError, match="prepare it with --grid 2mm"):
        resolve_cohort(str(out), get_grid("2mm"), {})


# ------------------------------------------------------------------------------------ OASIS-1
def test_oasis1_analyze_sagittal_is_reoriented_and_captioned(tmp_path):
    root = tmp_path / "raw"
    truth = F.make_oasis1(root, [{"index": 0, "oasis_id": 1, "age": 80.0, "sex": "F"}])
    out = tmp_path / "out"
    prepare_cohort("oasis1", root, out, skull_strip="threshold", quiet=True)
    df = _manifest(out)
    row = df.iloc[0]
    assert row.subject_id == "OAS1_0001_MR1-T1" and row.person_id == "OAS1_0001"
    assert row.caption.startswith("T1-weighted brain MRI of an 80-year-old woman.")
    assert str(row.qc_pass) == "True"
    orient = [x for x in _log(out) if x["step"] == "orientation_search"][0]
    assert orient["perm"] != [0, 1, 2] and orient["ncc"] > orient["ncc_header"]
    assert row.vol_icv == pytest.approx(truth["OAS1_0001_MR1"].volumes["icv"], rel=TOL)
    assert row.vol_lateral_ventricles == pytest.approx(truth["OAS1_0001_MR1"].volumes["lateral_ventricles"], rel=TOL)


# ------------------------------------------------------------------------------------ IBSR
def test_ibsr_manual_volumes_and_no_demographics(tmp_path):
    import nibabel as nib

    root = tmp_path / "raw"
    F.make_ibsr(root, [{"index": 7, "ibsr_id": 1}])
    out = tmp_path / "out"
    prepare_cohort("ibsr", root, out, skull_strip="threshold", quiet=True)
    row = _manifest(out).iloc[0]
    seg = nib.load(str(root / "IBSR_01" / "IBSR_01_seg_ana.nii.gz"))
    expect = (np.asarray(seg.dataobj) == 4).sum() * np.prod(seg.header.get_zooms()) / 1000
    assert row.manual_vol_lateral_ventricles == pytest.approx(expect, rel=1e-6)
    assert row.caption.startswith("T1-weighted brain MRI of a subject.")


# ------------------------------------------------------------------------------------ Kirby21
def test_kirby21_multimodal_with_demographics(tmp_path):
    root = tmp_path / "raw"
    truth = F.make_kirby21(root, [{"session": 1, "index": 12, "modalities": ["T1", "FLAIR"], "age": 85,
                                   "sex": "M", "subject": "113"}])
    out = tmp_path / "out"
    prepare_cohort("kirby21", root, out, skull_strip="deepbet", quiet=True, modalities=["FLAIR"])
    df = _manifest(out)  # FLAIR only: deepbet is not run on non-T1 scans; no T1 mask -> threshold
    assert list(df.subject_id) == ["KKI2009-01-FLAIR"] and df.person_id[0] == "KKI-113"
    assert df.caption[0].startswith("FLAIR brain MRI of an 85-year-old man.")
    assert df.skull_strip[0].startswith("threshold")
    _check_volumes(df, truth)


# ------------------------------------------------------------------------------------ BIDS + QC
@pytest.fixture(scope="module")
def bids(tmp_path_factory):
    root = tmp_path_factory.mktemp("bids_raw")
    truth = F.make_bids(root, [
        {"label": "01", "index": 7, "modalities": ["T1"], "age": 76, "sex": "F", "session": "01"},
        {"label": "02", "index": 12, "modalities": ["T1"], "age": 85, "sex": "M", "kind": "flipped"},
        {"label": "03", "index": 3, "modalities": ["T1"], "age": 40, "sex": "F", "kind": "noise"},
        {"label": "04", "index": 0, "modalities": ["T2"], "in_participants": False},
    ])
    out = tmp_path_factory.mktemp("bids_out")
    cohort = prepare_cohort("bids", root, out, skull_strip="threshold", quiet=True)
    return root, out, cohort, truth


def test_bids_qc_flags_misregistered_scans(bids):
    root, out, cohort, truth = bids
    df = _manifest(out).set_index("subject_id")
    good = df.loc["sub-01-T1"]
    assert str(good.qc_pass) == "True" and good.split != EXCLUDED_SPLIT
    assert good.caption.startswith("T1-weighted brain MRI of a 76-year-old woman.")
    flipped = df.loc["sub-02-T1"]
    assert str(flipped.qc_pass) == "False" and flipped.split == EXCLUDED_SPLIT
    assert float(flipped.qc_ncc) < float(good.qc_ncc) - 0.2
    failed = pd.read_csv(out / "failed.csv")
    if "sub-03-T1" in df.index:  # the noise volume is either flagged by QC ...
        assert str(df.loc["sub-03-T1"].qc_pass) == "False" and df.loc["sub-03-T1"].split == EXCLUDED_SPLIT
    else:  # ... or fails a step with a message
        assert "sub-03-T1" in set(failed.subject_id)
    assert df.loc["sub-04-T2"].caption.startswith("T2-weighted brain MRI of a subject.")
    assert "not in participants.tsv" in df.loc["sub-04-T2"].notes
    # excluded scans take no part in the percentiles, and no split but 'excluded' holds them
    assert flipped.pct_icv == ""
    assert all(s.split != EXCLUDED_SPLIT or not s.percentiles for s in cohort.subjects)
    _check_volumes(df.reset_index(), truth)


def test_empty_or_wrong_folders_give_clear_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no IXI dataset .* images found; expected IXI-T1/IXI002-Guys-0828-T1"):
        prepare_cohort("ixi", tmp_path / "empty", tmp_path / "o1", skull_strip="threshold", quiet=True)
    with pytest.raises(DatasetError, match="not a folder"):
        prepare_cohort("bids", tmp_path / "nope", tmp_path / "o2", quiet=True)
    with pytest.raises(DatasetError, match="did you mean 'oasis1'"):
        get_loader("oasis")
    from bench.cli import main

    assert main(["--quiet", "cohort", "prepare", "kirby21", str(tmp_path / "empty"), "--out",
                 str(tmp_path / "o3")]) == 2


def test_unprepared_registered_cohort_says_how_to_prepare(tmp_path, monkeypatch):
    from bench import registry

    monkeypatch.setenv("BRAINGENBENCH_HOME", str(tmp_path))
    cls = registry.cohorts.get("oasis1")
    with pytest.raises(CohortError, match="python -m bench cohort prepare oasis1 RAW_DIR --grid 3mm"):
        cls.get("3mm")


def test_spreadsheet_parsing_ixi_columns_and_duplicates(tmp_path):
    from cohorts.datasets import ixi

    pd.DataFrame({"IXI_ID": [2, 2, 12, 13], "SEX_ID (1=m, 2=f)": [2, 2, 1, 1], "AGE": ["", 35.8, 60.1, None]}) \
        .to_csv(tmp_path / "IXI.csv", index=False)
    demo, path = ixi.read_demographics(tmp_path)
    assert path.name == "IXI.csv"
    assert demo[2] == {"age": 35.8, "sex": "F"} and demo[12] == {"age": 60.1, "sex": "M"}
    assert demo[13]["age"] is None
    (tmp_path / "IXI.xls").write_bytes(b"not an excel file")
    demo2, path2 = ixi.read_demographics(tmp_path)  # an unreadable .xls falls back to the CSV export
    assert path2.name == "IXI.csv" and demo2 == demo


def test_split_rule_is_deterministic_and_near_70_10_20():
    splits = [split_for("ixi", f"IXI{i:03d}") for i in range(1000)]
    assert splits == [split_for("ixi", f"IXI{i:03d}") for i in range(1000)]
    frac = {s: splits.count(s) / 1000 for s in ("train", "val", "test")}
    assert abs(frac["train"] - 0.7) < 0.05 and abs(frac["val"] - 0.1) < 0.03 and abs(frac["test"] - 0.2) < 0.04


def test_deepbet_on_a_realistic_size_volume(tmp_path):
    """deepbet on one ~1.2 mm head (the network expects ~1 mm T1w heads); ~13 s on 2 busy cores."""
    import nibabel as nib

    from cohorts import preprocess as P

    s = F.native_scan(7, "T1", layout="LPS", voxel_mm=(1.2, 1.2, 1.2))
    img = P.reorient_to_ras(nib.Nifti1Image(s.data, s.affine))
    mask = P.deepbet_brain_mask(img)
    ml = float(np.prod(P.voxel_sizes(img.affine))) / 1000
    assert mask.sum() * ml == pytest.approx(s.volumes["icv"], rel=TOL)


def test_ixi_reads_modality_tars_in_place(tmp_path):
    import shutil
    import tarfile

    from cohorts.datasets import ixi

    raw = tmp_path / "raw"
    F.make_ixi(raw, [{"index": 1, "ixi_id": 5, "site": "IOP", "modalities": ["T1", "PD"], "age": 30.5, "sex": "F"}])
    for mod in ("T1", "PD"):
        with tarfile.open(raw / f"IXI-{mod}.tar", "w") as tf:  # the download: one tar per modality
            for f in (raw / f"IXI-{mod}").iterdir():
                tf.add(f, arcname=f.name)
        shutil.rmtree(raw / f"IXI-{mod}")
    disc = ixi.discover(raw, tmp_path / "scratch")
    (s,) = disc.subjects
    assert s.session_id == "IXI005-IOP-1005" and sorted(s.scans) == ["PD", "T1"]
    assert (s.age, s.sex, s.site) == (30.5, "F", "IOP (GE 1.5T)")
    assert s.scans["T1"].path.parent == tmp_path / "scratch" / "IXI-T1" and s.scans["T1"].path.exists()
    assert any("no T2 image" in n for n in s.notes)
