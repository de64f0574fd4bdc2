"""The SYNTHETIC phantom cohort: format, ground truth, contrasts, determinism, effects, resume.

One 16-subject 3 mm cohort is built per session (shared with test_captions.py through a fixed
BRAINGENBENCH_HOME under pytest's session temp dir).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from cohorts import atlas
from cohorts.captions import parse_caption
from cohorts.phantom import (SEQUENCES, TISSUE_3T, PhantomCohort, sample_params, signal,
                                split_assignment, synthesize)
from cohorts.subject import MODALITIES, STRUCTURES, Cohort

N = 16


def _home(tmp_path_factory):
    return tmp_path_factory.getbasetemp() / "bgb_home"


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Cohort:
    home = _home(tmp_path_factory)
    mp = pytest.MonkeyPatch()
    mp.setenv("BRAINGENBENCH_HOME", str(home))
    try:
        yield PhantomCohort.get("3mm", home=home, n_subjects=N, seed=0, workers=1, quiet=True)
    finally:
        mp.undo()


def test_cohort_layout_and_meta(cohort):
    root = cohort.root
    assert root.name.startswith(f"phantom-3mm-n{N}-s0-")
    assert not root.with_name(root.name + ".partial").exists()
    meta = json.loads((root / "cohort.json").read_text())
    assert meta["synthetic"] is True and cohort.synthetic
    assert meta["label"] == "SYNTHETIC phantom — not real MRI"
    assert meta["seed"] == 0 and meta["n_subjects"] == N and meta["builder_version"]
    assert "nilearn" in meta["attribution"]["icbm152_2009"]
    assert "CC BY-NC" in meta["attribution"]["neuromorphometrics"]
    assert len(meta["content_hash"]) == 64
    assert cohort.brain_mask().sum() * 27 / 1000 == pytest.approx(1883, rel=0.03)
    ids = [s.subject_id for s in cohort.subjects]
    assert ids == [f"phantom-{i:04d}" for i in range(N)]
    for s in cohort.subjects:
        assert s.synthetic and s.dataset == "phantom" and s.caption.startswith("Synthetic phantom.")
        assert s.modality in MODALITIES and s.sex in ("F", "M") and 20 <= s.age <= 90
        assert set(s.volumes) == set(STRUCTURES) and set(s.percentiles) == set(STRUCTURES)
        img = cohort.load_volume(s)
        assert img.dtype == np.float32 and img.shape == cohort.grid.shape
        assert img.min() == 0.0 and img.max() == 1.0
        lab = cohort.load_labels(s)
        assert set(np.unique(lab)) == {0, 1, 2, 3}
        assert np.all(img[lab == 0] == 0)  # skull-stripped: zero outside the subject's brain
    # modalities are balanced: blocks of four hold each once
    assert sorted(s.modality for s in cohort.subjects) == sorted(MODALITIES * (N // 4))


def test_splits_deterministic():
    for n in (16, 400, 7):
        sp = split_assignment(n, 0)
        assert sp.count("test") == int(np.floor(0.25 * n + 0.5))
        assert sp.count("val") == int(np.floor(0.10 * n + 0.5))
        assert sp.count("train") == n - sp.count("test") - sp.count("val")
        assert sp == split_assignment(n, 0) and (n < 10 or sp != split_assignment(n, 1))
    assert split_assignment(400, 0).count("test") == 100 and split_assignment(400, 0).count("val") == 40


def test_cohort_splits(cohort):
    assert [len(cohort.split(k)) for k in ("train", "val", "test")] == [10, 2, 4]


def test_caption_volumes_match_ground_truth(cohort):
    for s in cohort.subjects:
        parsed = parse_caption(s.caption)
        assert parsed["synthetic"] is True
        assert parsed["modality"] == s.modality and parsed["sex"] == s.sex and parsed["age"] == s.age
        assert set(parsed["volumes"]) == set(STRUCTURES)
        for k, v in s.volumes.items():
            assert abs(parsed["volumes"][k] - v) <= 0.05 + 1e-9, (s.subject_id, k)
        assert parsed["percentiles"] == {k: s.percentiles[k] for k in
                                         ("lateral_ventricles", "third_ventricle", "fourth_ventricle",
                                          "hippocampus_left", "hippocampus_right", "thalamus",
                                          "caudate", "putamen")}


def test_volumes_match_written_files(cohort):
    """Recompute tissue volumes from the written 3 mm label files.

    Stated tolerances: ICV (brain voxels) within 1 %; hard argmax labels at 3 mm turn partial-volume
    voxels into their majority tissue, which systematically under-counts CSF (measured -28 ... -49 %)
    and over-counts GM (+16 ... +18 %) against the soft ground truth, so those are checked by
    bounds and by correlation across subjects (r > 0.9).
    """
    vox = cohort.grid.voxel_volume_ml
    rec, gt = {k: [] for k in ("csf", "gm", "wm", "icv")}, {k: [] for k in ("csf", "gm", "wm", "icv")}
    for s in cohort.subjects:
        lab = cohort.load_labels(s)
        r = {"csf": (lab == 1).sum() * vox, "gm": (lab == 2).sum() * vox, "wm": (lab == 3).sum() * vox,
             "icv": (lab > 0).sum() * vox}
        for k in rec:
            rec[k].append(r[k])
            gt[k].append(s.volumes[k])
        assert r["icv"] == pytest.approx(s.volumes["icv"], rel=0.01)
        assert r["icv"] == pytest.approx(s.volumes["gm"] + s.volumes["wm"] + s.volumes["csf"], rel=0.01)
        assert -0.6 < r["csf"] / s.volumes["csf"] - 1 < -0.15
        assert 0.05 < r["gm"] / s.volumes["gm"] - 1 < 0.3
        assert abs(r["wm"] / s.volumes["wm"] - 1) < 0.15
    for k in ("gm", "wm", "icv"):
        assert np.corrcoef(rec[k], gt[k])[0, 1] > 0.9, k


def test_ground_truth_ventricles_are_csf_in_image(cohort):
    """Structures live where the image says: ventricle volume tracks the written CSF label volume."""
    lv = [s.volumes["lateral_ventricles"] for s in cohort.subjects]
    csf = [(cohort.load_labels(s) == 1).sum() for s in cohort.subjects]
    assert np.corrcoef(lv, csf)[0, 1] > 0.5


def test_signal_equations_contrast_order():
    def s(mod, tissue):
        seq = SEQUENCES[mod]
        return float(signal(mod, *TISSUE_3T[tissue], seq["TR"], seq["TE"], seq.get("TI")))

    assert s("T1", "wm") > s("T1", "gm") > s("T1", "csf")
    assert s("T2", "csf") > s("T2", "gm") > s("T2", "wm")
    assert s("PD", "gm") > s("PD", "wm")
    assert s("FLAIR", "csf") < min(s("FLAIR", "gm"), s("FLAIR", "wm"))
    # FLAIR TI sits near the CSF null: CSF signal < 15 % of its PD
    assert s("FLAIR", "csf") < 0.15


def test_contrast_order_on_written_images(cohort):
    seen = set()
    for s in cohort.subjects:
        img, lab = cohort.load_volume(s), cohort.load_labels(s)
        csf, gm, wm = (float(img[lab == k].mean()) for k in (1, 2, 3))
        if s.modality == "T1":
            assert wm > gm > csf, s.subject_id
        elif s.modality == "T2":
            assert csf > gm > wm, s.subject_id
        elif s.modality == "PD":
            assert gm > wm, s.subject_id
        else:
            assert csf < gm and csf < wm, s.subject_id
        seen.add(s.modality)
    assert seen == set(MODALITIES)


def test_determinism_and_seed(cohort, tmp_path):
    home = cohort.root.parent.parent
    again = PhantomCohort.build(tmp_path / "again", "3mm", n_subjects=2, seed=0, workers=1, quiet=True,
                                home=home)
    for s in again.subjects:  # subject i does not depend on n_subjects
        ref = cohort.by_id(s.subject_id)
        assert s.image.read_bytes() == ref.image.read_bytes()
        assert s.labels.read_bytes() == ref.labels.read_bytes()
        assert s.volumes == ref.volumes
    other = PhantomCohort.build(tmp_path / "other", "3mm", n_subjects=1, seed=1, workers=1, quiet=True,
                                home=home)
    a, b = other.load_volume(other.subjects[0]), cohort.load_volume(cohort.subjects[0])
    assert other.subjects[0].image.read_bytes() != cohort.subjects[0].image.read_bytes()
    assert np.abs(a - b).mean() > 0.01


def test_age_effects(cohort):
    ages = np.array([s.age for s in cohort.subjects])
    assert ages.max() - ages.min() > 40
    lv = np.array([s.volumes["lateral_ventricles"] for s in cohort.subjects])
    gmf = np.array([s.volumes["gm"] / s.volumes["icv"] for s in cohort.subjects])
    hip = np.array([(s.volumes["hippocampus_left"] + s.volumes["hippocampus_right"]) / s.volumes["icv"]
                    for s in cohort.subjects])
    assert np.corrcoef(ages, lv)[0, 1] > 0.5
    assert np.corrcoef(ages, gmf)[0, 1] < -0.3
    assert np.corrcoef(ages, hip)[0, 1] < -0.3


def test_ventricles_roughly_double_20_to_85(cohort):
    """Same subject, only age changed: lateral ventricles grow ~2x from 20 to 85 y."""
    import dataclasses

    home = cohort.root.parent.parent
    p = sample_params(0, 3)
    young = dataclasses.replace(p, age=20.0, vent_mm=0.0, hippo_mm=0.0, gm_loss=0.0)
    old = dataclasses.replace(p, age=85.0, vent_mm=3.5, hippo_mm=0.8, gm_loss=0.14)
    ry, ro = synthesize(0, 3, home=home, params=young), synthesize(0, 3, home=home, params=old)
    ratio = ro.volumes["lateral_ventricles"] / ry.volumes["lateral_ventricles"]
    assert 1.6 < ratio < 2.4
    assert ro.volumes["hippocampus_left"] < 0.9 * ry.volumes["hippocampus_left"]
    assert ro.volumes["gm"] < 0.9 * ry.volumes["gm"]
    assert ro.volumes["icv"] == pytest.approx(ry.volumes["icv"], rel=0.005)  # atrophy keeps ICV
    assert ry.seconds < 5.0


def test_sex_effect_on_icv(cohort):
    icv = {sx: [s.volumes["icv"] for s in cohort.subjects if s.sex == sx] for sx in ("F", "M")}
    assert len(icv["F"]) >= 3 and len(icv["M"]) >= 3
    ratio = np.mean(icv["M"]) / np.mean(icv["F"])
    assert 1.08 < ratio < 1.25
    assert min(icv["M"]) > np.median(icv["F"])


def test_resume_rebuilds_only_missing(cohort, tmp_path):
    work = tmp_path / "copy"
    shutil.copytree(cohort.root, work)
    victim = work / "images" / "phantom-0005.nii.gz"
    original = victim.read_bytes()
    victim.unlink()
    others = {p.name: p.stat().st_mtime_ns for p in (work / "images").glob("*.nii.gz")}
    rebuilt = PhantomCohort.build(work, "3mm", n_subjects=N, seed=0, workers=1, quiet=True,
                                  home=cohort.root.parent.parent)
    assert PhantomCohort.last_built == [5]
    assert victim.read_bytes() == original
    assert {p.name: p.stat().st_mtime_ns for p in (work / "images").glob("*.nii.gz")
            if p.name != victim.name} == others
    assert rebuilt.content_hash == cohort.content_hash


def test_get_reuses_existing(cohort):
    again = PhantomCohort.get("3mm", home=cohort.root.parent.parent, n_subjects=N, seed=0, quiet=True)
    assert again.root == cohort.root and again.content_hash == cohort.content_hash


def test_atlas_names_are_verified(tmp_path):
    names = atlas.read_label_names()
    atlas.check_label_names(names)  # the shipped CSV matches
    names[51] = "Something Else"
    with pytest.raises(atlas.AtlasError, match="id 51"):
        atlas.check_label_names(names, "x.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("a;b\n1;2\n")
    with pytest.raises(atlas.AtlasError, match="bad.csv"):
        atlas.read_label_names(bad)


def test_priors_on_working_grid(cohort):
    from cohorts.phantom import working_grid

    vs, shape, aff = working_grid(cohort.grid)
    pri = atlas.load_priors(vs, shape, aff, home=cohort.root.parent.parent)
    assert vs == 1.5 and shape == (96, 128, 112)
    v = vs**3 / 1000
    assert pri.structure_mask("lateral_ventricles").sum() * v == pytest.approx(21.4, rel=0.05)
    assert pri.structure_mask("thalamus").sum() * v == pytest.approx(21.7, rel=0.05)
    vent = np.isin(pri.labels, atlas.VENTRICLE_IDS)
    assert np.all(pri.csf[vent] == 1) and np.all(pri.gm[vent] == 0)
    assert float(pri.gm[pri.structure_mask("hippocampus_left")].mean()) > 0.7
    cached = list((cohort.root.parent.parent / "priors").glob("priors-1.5mm-96x128x112-*.npz"))
    assert len(cached) == 1


@pytest.mark.parametrize("mode", ["constant", "nearest"])
def test_support_sampler_is_scipy_bit_for_bit(mode):
    """The renderer samples only where a linear/nearest sample can be non-zero; the result must equal
    scipy's ``map_coordinates`` everywhere, including samples near and beyond the grid's edges."""
    from scipy import ndimage as ndi

    from cohorts.phantom_render import _corner_support, _SupportSampler

    rng = np.random.default_rng(3)
    a = np.zeros((20, 24, 18), np.float32)
    a[4:15, 5:19, 3:12] = rng.random((11, 14, 9), dtype=np.float32)
    a[0, 10, 9] = a[19, 23, 17] = 1.0  # non-zeros on the edges
    labels = (a * 50).astype(np.int16)
    coords = (rng.random((3, 30, 20, 25)) * (np.array(a.shape) + 6)[:, None, None, None] - 3).astype(np.float32)
    coords[:, 0, 0, :3] = [[0.0, 19.0, -1.0], [0.0, 23.0, 10.0], [0.0, 17.0, 9.0]]  # on grid points/edges
    sampler = _SupportSampler(coords, _corner_support(a != 0))
    assert 0.2 < sampler.keep.mean() < 0.8  # some samples skipped, some evaluated
    for arr, order in ((a, 1), (labels, 0)):
        ref = ndi.map_coordinates(arr, coords, order=order, mode=mode, cval=0, prefilter=False,
                                  output=np.float32 if order else arr.dtype)
        got = sampler(arr, order, mode)
        assert got.dtype == ref.dtype and np.array_equal(got, ref)


def test_renderer_matches_full_grid_sampling(cohort, monkeypatch):
    """A subject rendered with support-restricted sampling is identical to one rendered with scipy
    over every voxel (the cohort's bytes do not depend on the speed-up)."""
    from cohorts import phantom_render

    home = cohort.root.parent.parent
    fast = phantom_render.synthesize(0, 1, "3mm", home)

    class Everywhere(phantom_render._SupportSampler):
        def __init__(self, coords, support):
            super().__init__(coords, np.ones_like(support))

    monkeypatch.setattr(phantom_render, "_SupportSampler", Everywhere)
    slow = phantom_render.synthesize(0, 1, "3mm", home)
    assert slow.params.vent_mm > 0  # the atrophy flow was sampled too
    assert np.array_equal(fast.image, slow.image) and np.array_equal(fast.labels, slow.labels)
    assert all(np.array_equal(fast.tissue[k], slow.tissue[k]) for k in fast.tissue)
    assert fast.volumes == slow.volumes
