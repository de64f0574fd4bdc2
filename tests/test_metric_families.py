"""Distribution-level metric families through EvalSets with a fake (dict lookup) feature function."""

from __future__ import annotations

import json

import numpy as np
import pytest

from metrics.base import EvalSets, Metric, MetricResult
from metrics.fid import FID
from metrics.functional.frechet import frechet_distance_from_features, frechet_distance_infinity
from metrics.functional.kernel import gaussian_mmd2, kid, median_heuristic_bandwidth
from metrics.functional.prdc import prdc
from metrics.kid import KID
from metrics.latent import LatentSimilarity
from metrics.memorization import Memorization, mann_whitney_z
from metrics.prdc import PRDC

N_BOOT = 40


def make_sets(feats: dict[str, np.ndarray], extractor: str = "fake") -> EvalSets:
    def features(name: str, set_name: str) -> np.ndarray:
        if name != extractor:
            raise KeyError(f"unknown extractor {name}")
        return feats[set_name]  # KeyError for a missing set, like a runner without that split

    n = feats["generated"].shape[0]
    vol = np.zeros((n, 1, 2, 2, 2), np.float32)
    return EvalSets(generated=vol, reference=vol, floor=vol, brain_mask=np.ones((2, 2, 2), bool), features=features)


@pytest.fixture(scope="module")
def feats():
    rng = np.random.default_rng(0)
    d = 24
    mix = rng.normal(size=(d, d)) / np.sqrt(d)
    real = lambda n: rng.normal(size=(n, d)) @ mix  # noqa: E731
    return {"generated": real(60) * 1.15 + 0.2, "reference": real(60), "floor": real(60), "train": real(300),
            "held_out": real(60)}  # another independent real sample, not in train


def _check_result(res: MetricResult, higher: bool, n: int):
    assert res.higher_is_better is higher and res.n == n
    assert res.ci_low <= res.value <= res.ci_high
    json.dumps(res.to_dict())  # record-ready


def test_fid_equals_functional_core(feats):
    sets = make_sets(feats)
    m = FID(extractor="fake", n_boot=N_BOOT, infinity=True)
    assert isinstance(m, Metric) and m.extractors() == ["fake"] and m.name == "fid"
    res = m.compute(sets, seed=3)
    assert res.value == pytest.approx(frechet_distance_from_features(feats["generated"], feats["reference"]), rel=1e-12)
    assert res.floor == pytest.approx(frechet_distance_from_features(feats["floor"], feats["reference"]), rel=1e-12)
    assert res.floor < res.value
    _check_result(res, False, 60)
    assert res.details["feature_dim"] == 24 and res.details["n_reference"] == 60
    assert res.details["fd_infinity"] == pytest.approx(
        frechet_distance_infinity(feats["generated"], feats["reference"], seed=3), rel=1e-12)
    assert res.warnings == []  # N=60 >= dim=24
    # determinism and order invariance
    again = m.compute(sets, seed=3)
    assert again.to_dict() == res.to_dict()
    perm = np.random.default_rng(1).permutation(60)
    shuffled = make_sets({k: (v[perm] if k in ("generated", "reference") else v) for k, v in feats.items()})
    assert m.compute(shuffled, seed=3).value == pytest.approx(res.value, rel=1e-9)  # rounding of sum order only
    # the bias-shifted CI is on the scale of the value; the raw bootstrap mean sits above it (small-N bias)
    assert res.details["bootstrap_bias"] > 0


def test_fid_small_n_warns(feats, caplog):
    small = {k: v[:10] for k, v in feats.items()}
    with caplog.at_level("WARNING", logger="braingenbench.metrics"):
        res = FID(extractor="fake", n_boot=10).compute(make_sets(small), seed=0)
    assert res.warnings and "below the feature dimension" in res.warnings[0]
    assert "below the feature dimension" in caplog.text


def test_kid_equals_functional_core(feats):
    sets = make_sets(feats)
    res = KID(extractor="fake", subset_size=40, n_subsets=20, n_boot=N_BOOT).compute(sets, seed=2)
    ref = kid(feats["generated"], feats["reference"], subset_size=40, n_subsets=20, seed=2)
    assert res.value == pytest.approx(ref.mean, rel=1e-12)
    assert res.details["subset_std"] == pytest.approx(ref.std, rel=1e-12) and res.details["subset_size"] == 40
    assert res.floor == pytest.approx(kid(feats["floor"], feats["reference"], subset_size=40, n_subsets=20,
                                          seed=2).mean, rel=1e-12)
    _check_result(res, False, 60)
    assert res.floor < res.value


def test_prdc_results(feats):
    sets = make_sets(feats)
    out = PRDC(extractor="fake", k=5, n_boot=N_BOOT).compute(sets, seed=4)
    assert set(out) == {"precision", "recall", "density", "coverage"}
    ref = prdc(feats["reference"], feats["generated"], k=5)
    fref = prdc(feats["reference"], feats["floor"], k=5)
    for key, res in out.items():
        assert res.value == pytest.approx(ref[key], abs=1e-12)
        assert res.floor == pytest.approx(fref[key], abs=1e-12)
        _check_result(res, True, 60)
    again = PRDC(extractor="fake", k=5, n_boot=N_BOOT).compute(sets, seed=4)
    assert {k: v.to_dict() for k, v in again.items()} == {k: v.to_dict() for k, v in out.items()}


def test_memorization_detects_copies(feats):
    rng = np.random.default_rng(5)
    train = feats["train"]
    picked = rng.choice(len(train), 60, replace=False)
    copies = train[picked] + rng.normal(size=(60, train.shape[1])) * 1e-4
    m = Memorization(extractor="fake", quantile=0.05, n_boot=N_BOOT)
    res = m.compute(make_sets({**feats, "generated": copies}), seed=0)
    assert res.value == 1.0 and res.details["copy_fraction"] == 1.0
    assert res.details["nearest_train_index"] == picked.tolist()
    assert max(res.details["nearest_train_distance"]) < 1e-2
    assert res.details["c_t_zscore"] < -5
    assert res.warnings and "near-exact copies" in res.warnings[-1]
    # the floor (cross-fitted halves of the held-out reference) sits near the nominal 5 %
    assert res.floor <= 0.15 and res.details["floor_copy_fraction"] == 0.0
    _check_result(res, False, 60)


def test_memorization_held_out_real_is_low(feats):
    # a "generator" that returns fresh real samples of the training distribution
    res = Memorization(extractor="fake", n_boot=N_BOOT).compute(
        make_sets({**feats, "generated": feats["held_out"]}), seed=0)
    assert res.value <= 0.15
    assert abs(res.value - res.floor) <= 0.15
    assert res.details["copy_fraction"] == 0.0
    d_g = np.asarray(res.details["nearest_train_distance"])
    tau = res.details["threshold"]
    assert res.value == pytest.approx(np.mean(d_g < tau))
    # Z_U against scipy's Mann-Whitney U
    from scipy.stats import mannwhitneyu

    d_f = np.sort(np.linalg.norm(feats["reference"][:, None] - feats["train"][None], axis=-1).min(1))
    assert tau == pytest.approx(np.quantile(d_f, 0.05), rel=1e-9)
    u = mannwhitneyu(d_g, d_f).statistic
    z = (u - 60 * 60 / 2) / np.sqrt(60 * 60 * 121 / 12)
    assert mann_whitney_z(d_g, d_f) == pytest.approx(z, rel=1e-9)


def test_memorization_refuses_reference_inside_train(feats):
    sets = make_sets({**feats, "reference": feats["train"][:60]})
    with pytest.raises(ValueError, match="reference volumes are themselves in the training set"):
        Memorization(extractor="fake").compute(sets, seed=0)


def test_memorization_needs_train(feats):
    no_train = {k: v for k, v in feats.items() if k != "train"}
    with pytest.raises(ValueError, match="'train' set"):
        Memorization(extractor="fake").compute(make_sets(no_train), seed=0)


def test_latent_similarity(feats):
    sets = make_sets(feats, extractor="lat")
    out = LatentSimilarity(extractor="lat", n_boot=N_BOOT).compute(sets, seed=1)
    assert set(out) == {"fd", "mmd", "cosine"}
    g, r, f = feats["generated"], feats["reference"], feats["floor"]
    assert out["fd"].value == pytest.approx(frechet_distance_from_features(g, r), rel=1e-12)
    bw = median_heuristic_bandwidth(r)
    assert out["mmd"].details["bandwidth"] == pytest.approx(bw)
    assert out["mmd"].value == pytest.approx(gaussian_mmd2(g, r, bandwidth=bw), rel=1e-12)
    assert out["mmd"].floor == pytest.approx(gaussian_mmd2(f, r, bandwidth=bw), rel=1e-12)
    cos = (g * r).sum(1) / np.linalg.norm(g, axis=1) / np.linalg.norm(r, axis=1)
    assert out["cosine"].value == pytest.approx(cos.mean(), rel=1e-12)
    assert out["cosine"].higher_is_better and not out["fd"].higher_is_better
    emb = out["fd"].details["embedding"]
    assert np.asarray(emb["generated"]).shape == (60, 2) and np.asarray(emb["reference"]).shape == (60, 2)
    # PCA coordinates: same pairwise geometry as an independent SVD projection, up to sign
    z = np.concatenate([g, r])
    zc = z - z.mean(0)
    proj = zc @ np.linalg.svd(zc, full_matrices=False)[2][:2].T
    ours = np.concatenate([emb["generated"], emb["reference"]])
    np.testing.assert_allclose(np.abs(ours), np.abs(proj), rtol=1e-8, atol=1e-10)
    for res in out.values():
        _check_result(res, res.higher_is_better, 60)
