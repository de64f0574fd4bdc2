"""pyradiomics features against direct extractor calls, FRD behaviour, effect sizes, the Radiomics
metric, and (when installed) FRD against the frd-score package's own normalisation + distance."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from metrics.base import EvalSets
from metrics.functional.radiomics import (DEFAULT_FEATURE_CLASSES, RadiomicsConfig, Standardiser, cohens_d, frd,
                                          radiomics_feature_matrix, radiomics_features, top_effects)
from metrics.features.radiomics import RadiomicsExtractor
from metrics.radiomics import Radiomics

SHAPE = (20, 22, 24)


def brain(seed, shape=SHAPE):
    rng = np.random.default_rng(seed)
    v = gaussian_filter(rng.random(shape), 1.5)
    v = (v - v.min()) / (v.max() - v.min())
    return (0.2 + 0.6 * v).astype(np.float32)


def ellipsoid(shape=SHAPE, r=0.85):
    g = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    return sum(x ** 2 for x in g) < r ** 2


@pytest.fixture(scope="module")
def ref_set():
    vols = np.stack([brain(s) for s in range(10)])
    names, feats = radiomics_feature_matrix(vols, ellipsoid(), 3.0, workers=1)
    return vols, names, feats


def test_features_match_direct_pyradiomics():
    import SimpleITK as sitk
    from radiomics import featureextractor

    v, m = brain(0), ellipsoid()
    ours = radiomics_features(v, m, (3.0, 2.0, 1.5), RadiomicsConfig())
    img = sitk.GetImageFromArray(v)
    img.SetSpacing((1.5, 2.0, 3.0))  # SimpleITK order is (x, y, z) = reversed numpy axes
    msk = sitk.GetImageFromArray(m.astype(np.uint8))
    msk.CopyInformation(img)
    ex = featureextractor.RadiomicsFeatureExtractor(binWidth=1 / 64)
    ex.disableAllFeatures()
    for c in DEFAULT_FEATURE_CLASSES:
        ex.enableFeatureClassByName(c)
    direct = {k[len("original_"):]: float(x) for k, x in ex.execute(img, msk).items()
              if k.startswith("original_")}
    assert len(ours) == len(direct) == 93
    assert list(ours) == list(direct)
    for k in direct:
        assert ours[k] == pytest.approx(direct[k], rel=1e-6, abs=1e-12), k


def test_parallel_equals_serial(ref_set):
    vols, names, feats = ref_set
    n2, f2 = radiomics_feature_matrix(vols[:4, None], ellipsoid(), 3.0, workers=2)
    assert n2 == names
    assert np.allclose(f2, feats[:4], rtol=1e-12, atol=0)


def test_frd_zero_for_identical_and_grows_with_noise(ref_set):
    vols, _, feats = ref_set
    assert abs(frd(feats, feats)) < 1e-8
    rng = np.random.default_rng(1)
    vals = []
    for level in (0.01, 0.03, 0.1):
        noisy = np.clip(vols + level * rng.standard_normal(vols.shape), 0, 1)
        _, g = radiomics_feature_matrix(noisy, ellipsoid(), 3.0, workers=1)
        vals.append(frd(g, feats))
    assert 0 < vals[0] < vals[1] < vals[2]


def test_effect_sizes_rank_the_perturbed_property(ref_set):
    vols, names, feats = ref_set
    _, shifted = radiomics_feature_matrix(vols + 0.05, ellipsoid(), 3.0, workers=1)
    d = cohens_d(shifted, feats)
    top = [t["feature"] for t in top_effects(d, names, 10)]
    assert top[0].startswith("firstorder_")
    assert "firstorder_Mean" in top
    rng = np.random.default_rng(2)
    _, noisy = radiomics_feature_matrix(np.clip(vols + 0.1 * rng.standard_normal(vols.shape), 0, 1), ellipsoid(),
                                        3.0, workers=1)
    dn = cohens_d(noisy, feats)
    top_n = [t["feature"] for t in top_effects(dn, names, 10)]
    assert {"glcm_Contrast", "ngtdm_Coarseness"} & set(top_n)
    assert "firstorder_Mean" not in top_n  # zero-mean noise leaves the mean alone
    assert abs(dn[names.index("firstorder_Mean")]) < 1.0


def test_cohens_d_and_standardiser():
    rng = np.random.default_rng(3)
    a, b = rng.normal(1.0, 2.0, (30, 3)), rng.normal(0.0, 1.0, (20, 3))
    a[:, 2] = b[0, 2] = 5.0
    b[:, 2] = 5.0
    d = cohens_d(a, b)
    sp = np.sqrt((29 * a[:, 0].var(ddof=1) + 19 * b[:, 0].var(ddof=1)) / 48)
    assert d[0] == pytest.approx((a[:, 0].mean() - b[:, 0].mean()) / sp, rel=1e-12)
    assert d[2] == 0.0
    st = Standardiser.fit(b, a)
    assert st.keep.tolist() == [True, True, False]
    z = st(b)
    assert np.allclose(z.mean(0), 0, atol=1e-12) and np.allclose(z.std(0), 1)


def test_radiomics_metric(ref_set):
    vols, names, feats = ref_set
    rng = np.random.default_rng(4)
    gen = np.clip(vols[:6] + 0.05 * rng.standard_normal(vols[:6].shape), 0, 1)[:, None]
    ref, flo = vols[:6, None], vols[4:10, None]
    ex = RadiomicsExtractor(workers=2, brain_mask=ellipsoid())
    arrays = {"generated": gen, "reference": ref, "floor": flo}
    sets = EvalSets(generated=gen, reference=ref, floor=flo, brain_mask=ellipsoid(),
                    features=lambda e, s: ex(arrays[s], 3.0), voxel_size=3.0,
                    feature_names=lambda e: ex.feature_names)
    r = Radiomics(n_boot=50).compute(sets, seed=0)
    assert ex.feature_names == list(names)  # the names the metric reports are the columns' names
    st = Standardiser.fit(feats[:6], feats[4:10])
    assert r.floor == pytest.approx(frd(feats[4:10], feats[:6], standardiser=st), rel=1e-6)
    assert r.value > r.floor > 0 and r.higher_is_better is False and r.n == 6
    assert np.isfinite(r.ci_low) and r.ci_low <= r.ci_high
    assert len(r.details["top_effects"]) == 10 and r.details["n_features"] <= 93
    assert any("rank-deficient" in w for w in r.warnings)  # N=6 < features
    assert ex.fingerprint()["bin_width"] == pytest.approx(1 / 64) and len(ex.fingerprint()["mask"]) == 64


def test_frd_matches_frd_score_package():
    """Our FRD (z-score by the reference, drop constant features, Fréchet distance) against frd-score's
    own z-score normalisation and Fréchet distance (`norm_ref="d1"`, v1 z-score, [0, 1] range)."""
    frd_mod = pytest.importorskip("frd_score.frd")
    rng = np.random.default_rng(5)
    ref = rng.normal(size=(40, 12)) @ rng.normal(size=(12, 12))
    gen = ref[:35] * 1.1 + rng.normal(0.2, 0.5, size=(35, 12))
    ref[:, 3] = 7.0  # constant in the reference: both drop it
    keep = np.ones(12, bool)
    keep[3] = False
    zs = [frd_mod.z_score_normalize(x[:, keep], new_min=0, new_max=1, base_distribution=ref[:, keep])
          for x in (gen, ref)]
    theirs = frd_mod.calculate_frechet_distance(zs[0].mean(0), np.cov(zs[0], rowvar=False),
                                                zs[1].mean(0), np.cov(zs[1], rowvar=False))
    assert frd(gen, ref) == pytest.approx(theirs, rel=1e-6)
