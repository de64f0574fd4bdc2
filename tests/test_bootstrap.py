"""Bootstrap intervals: the BC interval against its closed form, and every metric family's interval
(and its floor's) contains its estimate, also at the edges (identical sets, copies, a difference of 0)."""

from __future__ import annotations

import json
import math
import pickle

import numpy as np
import pytest
from scipy.stats import norm

from metrics.base import EvalSets, MetricResult
from metrics.conformance import Conformance
from metrics.consistency import ThroughPlaneConsistency
from metrics.diversity import MSSSIMDiversity
from metrics.fid import FID
from metrics.functional.bootstrap import (BC, BC_SHIFTED, PERCENTILE, Interval, bootstrap_ci, bootstrap_ci_two_sample,
                                          bootstrap_interval, mean_ci)
from metrics.histogram import HistogramDistance
from metrics.kid import KID
from metrics.latent import LatentSimilarity
from metrics.memorization import Memorization
from metrics.prdc import PRDC
from metrics.radiomics import Radiomics
from metrics.ssim import PairedSSIM
from test_metric_families import make_sets as feature_sets
from test_metrics_streaming import _data as volume_data
from test_metrics_streaming import make_sets as volume_sets

N_BOOT = 60


# ------------------------------------------------------------------------------- the interval routine
def test_bc_matches_its_closed_form():
    rng = np.random.default_rng(0)
    boots = rng.gamma(2.0, 1.0, size=400)  # skewed
    est = 1.2
    ci = bootstrap_interval(boots, est, level=0.9)
    p = (np.sum(boots < est) + 0.5 * np.sum(boots == est)) / boots.size
    z0 = norm.ppf(p)
    lo, hi = np.quantile(boots, norm.cdf(2 * z0 + norm.ppf([0.05, 0.95])))
    assert ci == (pytest.approx(lo, rel=1e-12), pytest.approx(hi, rel=1e-12))
    assert ci.method == BC and ci.z0 == pytest.approx(z0) and not ci.extended
    assert ci.bias == pytest.approx(boots.mean() - est)
    # ties count half: every resample equal to the estimate gives z0 = 0 and the degenerate interval
    tie = bootstrap_interval(np.full(50, 0.7), 0.7)
    assert tie.z0 == 0.0 and tie == (0.7, 0.7)
    # no estimate: the plain percentile interval
    perc = bootstrap_interval(boots)
    assert perc.method == PERCENTILE
    np.testing.assert_allclose(perc, np.quantile(boots, [0.025, 0.975]), rtol=1e-12)


def test_bc_equals_percentile_for_a_symmetric_unbiased_statistic():
    v = np.random.default_rng(1).normal(3.0, 2.0, size=200)
    perc = mean_ci(v, n_boot=4000, seed=2)
    bc = mean_ci(v, n_boot=4000, seed=2, estimate=float(v.mean()))
    width = perc[1] - perc[0]
    assert abs(bc.z0) < 0.1 and abs(bc.bias) < 0.02 * width
    assert bc[0] == pytest.approx(perc[0], abs=0.03 * width) and bc[1] == pytest.approx(perc[1], abs=0.03 * width)
    assert bc.contains(v.mean())


def test_resamples_all_above_the_estimate_put_the_lower_end_on_it():
    boots = np.linspace(2.0, 5.0, 200)
    ci = bootstrap_interval(boots, 1.0)
    assert ci.low == 1.0 and ci.extended and ci.high >= ci.low
    ci = bootstrap_interval(-boots, -1.0)  # all below: the upper end
    assert ci.high == -1.0 and ci.extended
    # an absolute difference of two identical samples: 0, and every resample of |difference| >= 0
    x = np.random.default_rng(3).normal(size=40)
    ci = bootstrap_ci_two_sample(lambda a, b: abs(x[a].mean() - x[b].mean()), 40, 40, n_boot=300, seed=0,
                                 estimate=0.0)
    assert ci.low == 0.0 and ci.high > 0.0


def test_interval_is_a_tuple_that_says_how_it_was_made():
    ci = bootstrap_ci(lambda s: float(s.mean()), 30, n_boot=100, seed=4, estimate=14.5)
    lo, hi = ci
    assert (lo, hi) == ci and len(ci) == 2 and ci.low == lo and ci.high == hi
    assert json.loads(json.dumps(ci)) == [lo, hi]
    back = pickle.loads(pickle.dumps(ci))
    assert back == ci and back.method == ci.method and back.bias == ci.bias
    d = ci.details("items resampled")
    assert d["ci_method"] == f"{BC}; items resampled" and d["bootstrap_bias"] == ci.bias and "ci_extended" in d
    assert "bootstrap_bias" not in bootstrap_ci(lambda s: float(s.mean()), 30, n_boot=50).details()
    # too few items or no finite resample: NaN bounds
    assert all(math.isnan(v) for v in bootstrap_ci(lambda s: 1.0, 1, estimate=1.0))
    assert all(math.isnan(v) for v in bootstrap_interval([np.nan, np.inf], 0.5))


def test_absolute_and_clipped():
    def iv(lo, hi, est):
        return Interval(lo, hi, method=BC, estimate=est)

    assert iv(-0.1, 0.3, 0.05).absolute() == (0.0, 0.3)
    assert iv(0.1, 0.3, 0.2).absolute() == (0.1, 0.3)
    assert iv(-0.3, -0.1, -0.2).absolute() == (0.1, 0.3)
    a = iv(-0.3, -0.1, -0.2).absolute()
    assert a.estimate == 0.2 and a.contains(0.2) and "folded" in a.method
    assert iv(-0.5, 2.0, 0.0).clipped(lower=0.0) == (0.0, 2.0)
    assert iv(-0.5, 2.0, -0.2).clipped(lower=0.0) == (-0.2, 2.0)  # never loses its estimate


def test_fd_interval_is_bc_of_the_bias_shifted_resamples():
    from metrics.fid import fd_bootstrap_ci
    from metrics.functional.frechet import frechet_distance_from_features

    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(60, 16)) + 0.1, rng.normal(size=(60, 16))
    value = frechet_distance_from_features(x, y)
    ci = fd_bootstrap_ci(x, y, n_boot=100, seed=0)
    boots = []
    bootstrap_ci_two_sample(lambda a, b: boots.append(frechet_distance_from_features(x[a], y[b])) or 0.0, 60, 60,
                            n_boot=100, seed=0)
    boots = np.asarray(boots)
    assert (boots > value).all()  # small-N bias: plain BC would collapse onto [value, min(boots)]
    ref = bootstrap_interval(boots - (boots.mean() - value), value)
    assert ci.method == BC_SHIFTED and ci.bias == pytest.approx(boots.mean() - value)
    assert ci == (pytest.approx(max(ref[0], 0.0)), pytest.approx(ref[1])) and ci.contains(value)
    assert ci.high - ci.low > 0.5 * (np.quantile(boots, 0.975) - np.quantile(boots, 0.025))


# ----------------------------------------------------------------------------- every metric family
def _features(kind: str) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    d = 12
    mix = rng.normal(size=(d, d)) / np.sqrt(d)

    def real(n):
        return rng.normal(size=(n, d)) @ mix

    feats = {"reference": real(30), "floor": real(30), "train": real(80)}
    if kind == "shifted":
        feats["generated"] = real(30) * 1.3 + 0.4
    elif kind == "identical":  # generated = reference: PRDC 1.0, FD 0
        feats["generated"] = feats["reference"].copy()
    elif kind == "copies":  # generated = training rows: memorisation 1.0
        feats["generated"] = feats["train"][:30].copy()
    return feats


FEATURE_METRICS = {
    "fid": lambda: FID(extractor="fake", n_boot=N_BOOT),
    "kid": lambda: KID(extractor="fake", subset_size=20, n_subsets=10, n_boot=N_BOOT),
    "prdc": lambda: PRDC(extractor="fake", k=3, n_boot=N_BOOT),
    "memorization": lambda: Memorization(extractor="fake", quantile=0.1, n_boot=N_BOOT),
    "latent": lambda: LatentSimilarity(extractor="fake", n_boot=N_BOOT),
}

VOLUME_METRICS = {
    "ssim": lambda: PairedSSIM(),
    "diversity": lambda: MSSSIMDiversity(max_pairs=12, same_modality=False),
    "histogram": lambda: HistogramDistance(n_boot=N_BOOT),
    "through_plane": lambda: ThroughPlaneConsistency(n_boot=N_BOOT),
    "conformance": lambda: Conformance(cache=False, n_boot=N_BOOT),
}


def _check(results: MetricResult | dict[str, MetricResult], where: str) -> dict[str, MetricResult]:
    """Every result: value inside its CI, floor inside floor_ci, the method named, record-ready."""
    out = results if isinstance(results, dict) else {"": results}
    assert out, where
    for key, r in out.items():
        tag = f"{where}/{key}"
        assert math.isfinite(r.value), tag
        assert r.ci_low <= r.value <= r.ci_high, (tag, r.ci_low, r.value, r.ci_high)
        assert isinstance(r.floor_ci, list) and len(r.floor_ci) == 2, tag
        if r.floor is not None and math.isfinite(r.floor):
            assert r.floor_ci[0] <= r.floor <= r.floor_ci[1], (tag, r.floor_ci, r.floor)
        method = r.details.get("ci_method")
        assert isinstance(method, str) and "bootstrap" in method, (tag, method)
        if "bootstrap_bias" in r.details:
            assert math.isfinite(r.details["bootstrap_bias"]), tag
        d = json.loads(json.dumps(r.to_dict()))
        assert d["floor_ci"] == r.floor_ci, tag
    return out


@pytest.mark.parametrize("kind", ["shifted", "identical", "copies"])
@pytest.mark.parametrize("name", list(FEATURE_METRICS))
def test_feature_families_contain_their_estimates(name, kind):
    feats = _features(kind)
    if name == "memorization" and kind == "identical":
        feats = {**feats, "generated": feats["floor"]}  # the reference itself is not a generator here
    out = _check(FEATURE_METRICS[name]().compute(feature_sets(feats), seed=1), f"{name}[{kind}]")
    if name == "prdc" and kind == "identical":
        assert {k: r.value for k, r in out.items()} == {"precision": 1.0, "recall": 1.0, "density": 1.0,
                                                        "coverage": 1.0}
        assert all(r.ci_high == 1.0 for k, r in out.items() if k != "density")  # bounded share at its top
    if name == "fid" and kind == "identical":
        assert out[""].value == pytest.approx(0.0, abs=1e-9) and out[""].ci_low <= 1e-9
    if name == "memorization" and kind == "copies":
        assert out[""].value == 1.0 and out[""].ci_high == 1.0


def test_radiomics_contains_its_estimates():
    rng = np.random.default_rng(2)
    ref, flo = rng.normal(size=(12, 5)), rng.normal(size=(12, 5))
    for gen in (ref.copy(), ref * 1.5 + 0.3):
        feats = {"generated": gen, "reference": ref, "floor": flo}
        vol = np.zeros((12, 1, 2, 2, 2), np.float32)
        sets = EvalSets(generated=vol, reference=vol, floor=vol, brain_mask=np.ones((2, 2, 2), bool),
                        features=lambda e, s: feats[s], feature_names=lambda e: [f"f{i}" for i in range(5)])
        _check(Radiomics(n_boot=N_BOOT).compute(sets, seed=0), "radiomics")


@pytest.fixture(scope="module")
def vdata() -> dict:
    return volume_data(7)


@pytest.mark.parametrize("kind", ["generated", "identical"])
@pytest.mark.parametrize("name", list(VOLUME_METRICS))
def test_volume_families_contain_their_estimates(vdata, name, kind):
    d = vdata if kind == "generated" else {**vdata, "generated": vdata["reference"].copy()}
    out = _check(VOLUME_METRICS[name]().compute(volume_sets(d), seed=0), f"{name}[{kind}]")
    if kind == "identical" and name == "through_plane":  # was: value 0 with CI [0.0004, 0.038]
        assert out[""].value == 0.0 and out[""].ci_low == 0.0 < out[""].ci_high
    if kind == "identical" and name == "ssim":
        assert out[""].value == pytest.approx(1.0) and out[""].ci_high == pytest.approx(1.0)
    if kind == "identical" and name == "histogram":
        assert all(r.value == 0.0 and r.ci_low == 0.0 for r in out.values())


def test_prdc_and_fd_intervals_do_not_collapse():
    """Resamples of PRDC and FD sit far from the value (duplicated items change the k-NN balls and the
    covariances); plain BC would shrink the interval onto the value. The bias-shifted BC keeps about
    the width of the percentile interval."""
    from metrics.functional.neighbours import pairwise_distances
    from metrics.functional.prdc import prdc_from_distances

    rng = np.random.default_rng(6)
    d = 16
    mix = rng.normal(size=(d, d)) / np.sqrt(d)
    ref, gen = rng.normal(size=(200, d)) @ mix, rng.normal(size=(200, d)) @ mix * 1.2 + 0.2
    out = PRDC(extractor="fake", k=5, n_boot=100).compute(
        feature_sets({"generated": gen, "reference": ref, "floor": ref[::-1].copy()}), seed=0)
    d_rr, d_ff, d_rf = pairwise_distances(ref), pairwise_distances(gen), pairwise_distances(ref, gen)
    for key, r in out.items():
        perc = bootstrap_ci_two_sample(
            lambda a, b: prdc_from_distances(d_rr, d_ff, d_rf, k=5, idx_real=a, idx_fake=b)[key], 200, 200,
            n_boot=100, seed=0)
        assert r.ci_high - r.ci_low >= 0.6 * (perc[1] - perc[0]), (key, (r.ci_low, r.ci_high), perc)
        assert r.ci_low <= r.value <= r.ci_high and not r.details["ci_extended"], key
    fid = FID(extractor="fake", n_boot=100).compute(
        feature_sets({"generated": gen, "reference": ref, "floor": ref[::-1].copy()}), seed=0)
    assert fid.ci_low < fid.value < fid.ci_high and fid.ci_high - fid.ci_low > 0.2 * fid.value
