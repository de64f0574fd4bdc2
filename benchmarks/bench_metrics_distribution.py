"""Benchmark: distribution-level metrics at N=100 (the `full` suite's size).

Run: ``pytest benchmarks/bench_metrics_distribution.py --benchmark-only``. ``BGB_BENCH_N`` changes N
(default 100). Timed: Fréchet distance at 128-d (deepbet) and 2048-d (MedicalNet-50) through the
covariance route (two ``eigh``, what statistics-only callers pay) and the feature route used by the
metrics (cross-Gram SVD when N < dim), the FID family with its 200-resample bootstrap CI at 2048-d,
and PRDC (k=5) at 2048-d, alone and as the family with bootstrap CIs.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from metrics.base import EvalSets
from metrics.fid import FID
from metrics.functional.frechet import feature_statistics, frechet_distance, frechet_distance_from_features
from metrics.functional.prdc import prdc
from metrics.prdc import PRDC

N = int(os.environ.get("BGB_BENCH_N", "100"))


def _feats(n, d, seed, shift=0.0):
    rng = np.random.default_rng(seed)
    return np.abs(rng.normal(size=(n, d))) + shift  # ReLU-pooled-like, non-negative


@pytest.fixture(scope="module", params=[128, 2048], ids=["128d", "2048d"])
def pair(request):
    d = request.param
    return _feats(N, d, 0), _feats(N, d, 1, 0.05)


def test_fd_covariance_route(benchmark, pair):
    x, y = pair
    s1, s2 = feature_statistics(x), feature_statistics(y)
    v = benchmark.pedantic(lambda: frechet_distance(*s1, *s2), rounds=3, iterations=1)
    assert v == pytest.approx(frechet_distance_from_features(x, y, method="gram"), rel=1e-8)


def test_fd_feature_route(benchmark, pair):
    x, y = pair
    v = benchmark.pedantic(lambda: frechet_distance_from_features(x, y), rounds=5, iterations=1)
    assert np.isfinite(v)


def _sets(feats):
    vol = np.zeros((N, 1, 1, 1, 1), np.float32)
    return EvalSets(generated=vol, reference=vol, floor=vol, brain_mask=np.ones((1, 1, 1), bool),
                    features=lambda _e, s: feats[s])


def test_fid_family_2048d_with_bootstrap(benchmark):
    feats = {"generated": _feats(N, 2048, 0, 0.05), "reference": _feats(N, 2048, 1), "floor": _feats(N, 2048, 2)}
    res = benchmark.pedantic(lambda: FID(extractor="x", n_boot=200).compute(_sets(feats), seed=0),
                             rounds=1, iterations=1)
    assert res.ci_low <= res.value <= res.ci_high


def test_prdc_2048d(benchmark):
    real, fake = _feats(N, 2048, 0), _feats(N, 2048, 1, 0.05)
    res = benchmark.pedantic(lambda: prdc(real, fake, k=5), rounds=5, iterations=1)
    assert 0.0 <= res["coverage"] <= 1.0


def test_prdc_family_2048d_with_bootstrap(benchmark):
    feats = {"generated": _feats(N, 2048, 0, 0.05), "reference": _feats(N, 2048, 1), "floor": _feats(N, 2048, 2)}
    out = benchmark.pedantic(lambda: PRDC(extractor="x", n_boot=200).compute(_sets(feats), seed=0),
                             rounds=1, iterations=1)
    assert set(out) == {"precision", "recall", "density", "coverage"}
