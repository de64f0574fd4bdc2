"""Each preprocessing step on its own, on tiny phantom-derived scans with known geometry (3 mm grid)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from cohorts import preprocess as P
from cohorts.grid import get_grid
from tests.dataset_fixtures import LAYOUTS, native_scan, save_nifti, truncate

GRID = get_grid("3mm")


@pytest.fixture(scope="module")
def scan_ras():
    return native_scan(7, "T1", layout="RAS")


@pytest.fixture(scope="module")
def prepared(scan_ras):
    """Bias-corrected image and threshold mask of the RAS fixture."""
    img = nib.Nifti1Image(scan_ras.data, scan_ras.affine)
    corrected, bias = P.n4_bias_correction(img)
    mask = P.threshold_brain_mask(np.asarray(corrected.dataobj), corrected.affine)
    return corrected, mask


# ------------------------------------------------------------------------------------ load / orient
def test_load_image_reads_nifti_and_rejects_truncated(tmp_path, scan_ras):
    p = save_nifti(scan_ras, tmp_path / "a.nii.gz")
    img, reliable = P.load_image(p)
    assert reliable and img.shape == scan_ras.data.shape
    np.testing.assert_allclose(np.asarray(img.dataobj), scan_ras.data, atol=1.0)
    truncate(p)
    with pytest.raises(P.PreprocessError, match="corrupt or truncated") as e:
        P.load_image(p)
    assert str(p) in str(e.value) and e.value.step == "load"
    with pytest.raises(P.PreprocessError, match="not found"):
        P.load_image(tmp_path / "missing.nii.gz")


def test_load_image_analyze_has_no_reliable_orientation(tmp_path, scan_ras):
    hdr = nib.AnalyzeHeader()
    hdr.set_data_shape(scan_ras.data.shape)
    hdr.set_data_dtype(np.int16)
    nib.save(nib.AnalyzeImage(scan_ras.data.astype(np.int16), None, hdr), str(tmp_path / "x.hdr"))
    img, reliable = P.load_image(tmp_path / "x.img")  # either file of the pair
    assert not reliable and img.shape == scan_ras.data.shape


def test_constant_image_is_rejected(tmp_path):
    p = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((8, 8, 8), np.float32), np.eye(4)), str(p))
    with pytest.raises(P.PreprocessError, match="constant"):
        P.load_image(p)


@pytest.mark.parametrize("layout", ["LPS", "PIL", "ASL"])
def test_reorient_to_ras_recovers_the_voxel_order(layout, scan_ras):
    perm, signs = LAYOUTS[layout]
    s = native_scan(7, "T1", layout=layout)
    img = P.reorient_to_ras(nib.Nifti1Image(s.data, s.affine))
    assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
    np.testing.assert_array_equal(np.asarray(img.dataobj), scan_ras.data)
    np.testing.assert_allclose(img.affine, scan_ras.affine, atol=1e-6)


def test_search_orientation_undoes_a_mislabelled_axis_order(scan_ras):
    stored = P._apply_axes(scan_ras.data, (1, 2, 0), (1, 1, 1))  # sagittal-first, header says nothing
    vs = P.voxel_sizes(scan_ras.affine)[[1, 2, 0]]
    img, info = P.search_orientation(nib.Nifti1Image(stored, np.diag([*vs, 1.0])), "T1")
    np.testing.assert_array_equal(np.asarray(img.dataobj), scan_ras.data)
    assert info["ncc"] > info["ncc_header"] + 0.2
    # a correctly oriented image is left alone
    img2, info2 = P.search_orientation(nib.Nifti1Image(scan_ras.data, scan_ras.affine), "T1")
    assert info2["perm"] == [0, 1, 2] and info2["signs"] == [1, 1, 1]


# ------------------------------------------------------------------------------------ bias / brain
def test_n4_removes_a_known_bias_field(scan_ras, prepared):
    _, mask = prepared
    x = np.linspace(-1, 1, scan_ras.data.shape[0])[:, None, None]
    field = (1.0 + 0.3 * x).astype(np.float32) * np.ones_like(scan_ras.data)
    img = nib.Nifti1Image(scan_ras.data * field, scan_ras.affine)
    corrected, bias = P.n4_bias_correction(img, mask)
    est = bias[mask] / np.mean(bias[mask])
    true = field[mask] / np.mean(field[mask])
    assert np.corrcoef(est, true)[0, 1] > 0.9
    # left/right halves of the brain agree after correction, not before
    left, right = mask & (x < -0.3), mask & (x > 0.3)
    d = np.asarray(corrected.dataobj)
    before = np.median((scan_ras.data * field)[right]) / np.median((scan_ras.data * field)[left])
    after = np.median(d[right]) / np.median(d[left])
    assert before > 1.3 and abs(after - 1) < 0.1


def test_threshold_skull_strip_keeps_the_brain_and_drops_the_scalp(scan_ras, prepared):
    corrected, mask = prepared
    ml = float(np.prod(P.voxel_sizes(corrected.affine))) / 1000
    assert abs(mask.sum() * ml / scan_ras.volumes["icv"] - 1) < 0.06
    noskull = native_scan(7, "T1", layout="RAS", skull=False, noise=0.0)
    scalp = (scan_ras.data > 300) & (noskull.data < 20)  # bright shell outside the brain
    assert scalp.sum() > 1000 and (mask & scalp).sum() < 0.02 * scalp.sum()


def test_skull_strip_uses_the_t1_mask_for_other_modalities(scan_ras, prepared):
    corrected, mask = prepared
    t2 = native_scan(7, "T2", layout="LPS")
    img = P.reorient_to_ras(nib.Nifti1Image(t2.data, t2.affine))
    m, how = P.skull_strip(img, "deepbet", fallback_mask=(mask, corrected.affine), modality="T2")
    assert how.startswith("T1 deepbet mask") and P.dice(m, mask) > 0.99
    m2, how2 = P.skull_strip(img, "deepbet", fallback_mask=None, modality="T2")
    assert how2.startswith("threshold") and P.dice(m2, mask) > 0.9
    with pytest.raises(ValueError, match="unknown skull-strip"):
        P.skull_strip(img, "bet2")


# ------------------------------------------------------------------------------------ registration
def test_affine_registration_recovers_the_known_transform(prepared):
    """Same anatomy in two scanner frames: the recovered atlas→native affines differ by exactly the
    transform between the frames (rotation, scale, translation)."""
    ref = native_scan(7, "T1", layout="RAS", rotation_deg=(0, 0, 0), translation_mm=(0, 0, 0), scale=1.0)
    mov = native_scan(7, "T1", layout="RAS", rotation_deg=(6, -4, 8), translation_mm=(10, -8, 14), scale=1.08)
    affs = []
    for s in (ref, mov):
        img, _ = P.n4_bias_correction(nib.Nifti1Image(s.data, s.affine))
        m = P.threshold_brain_mask(np.asarray(img.dataobj), img.affine)
        affs.append(P.register_to_template(img, m, "T1", GRID, deformable="none").affine)
    known = np.eye(4)
    known[:3, :3] = 1.08 * _rotation((6, -4, 8))
    known[:3, 3] = (10, -8, 14)
    est = affs[1] @ np.linalg.inv(affs[0])
    assert np.abs(est[:3, :3] - known[:3, :3]).max() < 0.03
    # translation compared at the brain centre (where the image constrains it)
    c = np.array([0.0, -17.0, 5.0, 1.0])
    assert np.linalg.norm((est @ c)[:3] - (known @ c)[:3]) < 2.0


def _rotation(deg):
    from cohorts.phantom import _rotation as rot

    return rot(deg)


def test_demons_registration_improves_ncc_and_inverts(prepared):
    corrected, mask = prepared
    tpl = P.modality_template("T1", GRID)
    brain = P.grid_priors(GRID).brain > 0.5
    d = np.where(mask, np.asarray(corrected.dataobj), 0)
    scores = {}
    for how in ("none", "demons"):
        reg = P.register_to_template(corrected, mask, "T1", GRID, deformable=how)
        w = P.warp_to_grid(d, corrected.affine, reg, GRID)
        scores[how] = P.ncc(w, tpl, brain)
    assert scores["demons"] > scores["none"] + 0.02 and scores["demons"] > 0.8
    assert reg.inverse_consistency_mm() < 0.5
    assert np.abs(reg.disp).max() > 1.0  # a real deformation, not the identity


# ------------------------------------------------------------------------------------ measurements
def test_structure_volumes_counts_labels_and_grows_ventricles_into_csf():
    lab = np.zeros((20, 20, 20), np.int16)
    lab[5:10, 5:10, 5:10] = 51  # right lateral ventricle: 125 voxels
    lab[12:15, 12:15, 12:15] = 59  # right thalamus: 27 voxels
    v = P.structure_volumes(lab, 0.001)
    assert v["lateral_ventricles"] == pytest.approx(0.125) and v["thalamus"] == pytest.approx(0.027)
    csf = np.zeros(lab.shape, np.float32)
    csf[4:11, 5:10, 5:10] = 1.0  # the true ventricle is one voxel longer on both x ends
    g = P.structure_volumes(lab, 0.001, csf=csf, voxel_mm=np.ones(3))
    assert g["lateral_ventricles"] == pytest.approx(0.175)  # 7*5*5: grown by one voxel, weighted by CSF
    assert g["thalamus"] == pytest.approx(0.027)


def test_segment_tissues_recovers_classes_and_volumes():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 3, (30, 30, 30))
    means = np.array([0.2, 0.55, 0.8])  # CSF, GM, WM (T1-like)
    data = (means[truth] + rng.normal(0, 0.04, truth.shape)).astype(np.float32)
    mask = np.ones(truth.shape, bool)
    # weak, partly wrong spatial priors (as a propagated atlas gives): 0.5 on the true class for 70 %
    # of the voxels, flat elsewhere
    informed = rng.random(truth.shape) < 0.7
    priors = {k: np.where(informed, np.where(truth == i, 0.5, 0.25), 1 / 3).astype(np.float32)
              for i, k in enumerate(("csf", "gm", "wm"))}
    post = P.segment_tissues(data, mask, priors)
    stats = post.pop("stats")
    est = np.stack([post["csf"], post["gm"], post["wm"]]).argmax(0)
    assert (est == truth).mean() > 0.98
    for i, k in enumerate(("csf", "gm", "wm")):
        assert post[k].sum() == pytest.approx((truth == i).sum(), rel=0.03)
    assert stats["csf_gm_separation"] > 5


def test_normalise_intensity_and_qc_metrics():
    rng = np.random.default_rng(1)
    d = rng.uniform(0, 500, (10, 10, 10)).astype(np.float32)
    mask = np.zeros(d.shape, bool)
    mask[2:8, 2:8, 2:8] = True
    n = P.normalise_intensity(d, mask)
    assert n.min() >= 0 and n.max() <= 1 and (n[~mask] == 0).all()
    assert np.mean(n[mask] >= 1.0) == pytest.approx(0.005, abs=0.006)
    qc = P.qc_metrics(n, n, mask, mask, mask)
    assert qc == {"qc_ncc": 1.0, "qc_dice": 1.0, "qc_pass": True}
    qc = P.qc_metrics(n, rng.uniform(0, 1, d.shape), mask, mask, mask)
    assert not qc["qc_pass"] and abs(qc["qc_ncc"]) < 0.3
    with pytest.raises(P.PreprocessError, match="empty brain mask"):
        P.normalise_intensity(d, np.zeros(d.shape, bool))


def test_modality_templates_have_the_expected_contrast():
    pri = P.grid_priors(GRID)
    vent = pri.structure_mask("lateral_ventricles")
    wm = pri.wm > 0.9
    for mod, brighter in (("T1", False), ("T2", True), ("PD", True), ("FLAIR", False)):
        t = P.modality_template(mod, GRID)
        assert 0 <= t.min() and t.max() <= 1
        assert (t[vent].mean() > t[wm].mean()) == brighter, mod


def test_preprocess_image_end_to_end_recovers_volumes(tmp_path):
    s = native_scan(12, "T1", layout="PIL")
    p = save_nifti(s, tmp_path / "t1.nii.gz")
    out = P.preprocess_image(p, "T1", GRID, skull_strip_method="threshold")
    steps = [r["step"] for r in out.steps]
    assert steps == ["load", "reorient", "bias_correction", "skull_strip", "registration", "label_propagation",
                     "tissue_segmentation", "resample_to_grid", "normalise", "qc"]
    assert out.image.shape == GRID.shape and out.image.dtype == np.float32 and out.image.max() == 1.0
    assert set(np.unique(out.labels)) <= {0, 1, 2, 3}
    assert out.qc["qc_pass"]
    for key in ("lateral_ventricles", "icv"):
        assert out.volumes[key] == pytest.approx(s.volumes[key], rel=0.15), key
