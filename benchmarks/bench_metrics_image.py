"""Benchmark: image-space metrics on 100 volume pairs at 48x64x56 (the 3 mm grid size class).

Run: ``pytest benchmarks/bench_metrics_image.py --benchmark-only``. ``BGB_BENCH_N`` changes the
number of pairs (default 100), ``BGB_BENCH_WORKERS`` the radiomics processes (default 2).
Timed: per-pair SSIM in a brain mask, MS-SSIM (auto config: 4 scales, window 5), pooled in-mask
histograms + W1/JS/KS, and pyradiomics extraction (93 features) per volume.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from metrics.functional.histogram import histogram_distances, volume_histograms
from metrics.functional.radiomics import radiomics_feature_matrix, radiomics_features
from metrics.functional.ssim import ms_ssim3d, ssim3d

N = int(os.environ.get("BGB_BENCH_N", "100"))
WORKERS = int(os.environ.get("BGB_BENCH_WORKERS", "2"))
SHAPE = (48, 64, 56)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    base = gaussian_filter(rng.random((8, *SHAPE)), (0, 2, 2, 2)).astype(np.float32)
    base = (base - base.min()) / (base.max() - base.min())
    x = base[np.arange(N) % 8][:, None]
    y = np.clip(x + 0.05 * rng.standard_normal(x.shape, dtype=np.float32), 0, 1)
    g = np.meshgrid(*[np.linspace(-1, 1, s) for s in SHAPE], indexing="ij")
    mask = sum(v ** 2 for v in g) < 0.8
    return x, y, mask


def test_ssim_100_pairs(benchmark, data):
    x, y, mask = data
    vals = benchmark.pedantic(lambda: ssim3d(x, y, mask=mask), rounds=1, iterations=1)
    assert vals.shape == (N,)
    benchmark.extra_info.update({"pairs": N, "shape": SHAPE, "seconds_per_pair": benchmark.stats.stats.mean / N})


def test_ms_ssim_100_pairs(benchmark, data):
    x, y, _ = data
    res = benchmark.pedantic(lambda: ms_ssim3d(x, y), rounds=1, iterations=1)
    assert res.values.shape == (N,)
    benchmark.extra_info.update({"pairs": N, "shape": SHAPE, "config": res.config.to_dict(),
                                 "seconds_per_pair": benchmark.stats.stats.mean / N})


def test_histograms_100_pairs(benchmark, data):
    x, y, mask = data

    def run():
        hx, hy = volume_histograms(x, mask), volume_histograms(y, mask)
        return histogram_distances(hx.sum(0), hy.sum(0))

    d = benchmark.pedantic(run, rounds=1, iterations=1)
    assert set(d) == {"w1", "js", "ks"}
    benchmark.extra_info.update({"volumes": 2 * N, "bins": 128})


def test_radiomics_per_volume(benchmark, data):
    x, _, mask = data
    radiomics_features(x[0, 0], mask, 3.0)  # warm-up: imports + extractor construction
    feats = benchmark.pedantic(lambda: radiomics_features(x[1, 0], mask, 3.0), rounds=3, iterations=1)
    assert len(feats) == 93
    benchmark.extra_info.update({"shape": SHAPE, "features": len(feats)})


def test_radiomics_parallel_16_volumes(benchmark, data):
    x, _, mask = data
    n = 16
    _, f = benchmark.pedantic(lambda: radiomics_feature_matrix(x[:n], mask, 3.0, workers=WORKERS),
                              rounds=1, iterations=1)
    assert f.shape == (n, 93)
    benchmark.extra_info.update({"volumes": n, "workers": WORKERS,
                                 "seconds_per_volume": benchmark.stats.stats.mean / n})
