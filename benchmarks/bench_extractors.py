"""Benchmark: seconds per volume of the 3D feature extractors at 48x64x56 (the 3 mm grid).

Run: ``pytest benchmarks/bench_extractors.py --benchmark-only``, or for a plain table
``PYTHONPATH=. python benchmarks/bench_extractors.py``. ``BGB_BENCH_N`` sets the number of volumes (default 8), ``BGB_BENCH_THREADS`` torch
threads (default 2). MedicalNet runs with seeded random weights (same cost as the released ones).
Each extractor is warmed up on one volume first (TorchScript profiling, allocator).
"""

from __future__ import annotations

import importlib.util
import os
import time

import numpy as np
import pytest
import torch

N = int(os.environ.get("BGB_BENCH_N", "8"))
THREADS = int(os.environ.get("BGB_BENCH_THREADS", "2"))
SHAPE = (48, 64, 56)
VOXEL = 3.0


def _volumes(n: int = N) -> np.ndarray:
    rng = np.random.default_rng(0)
    g = np.meshgrid(*[np.linspace(-1, 1, s) for s in SHAPE], indexing="ij")
    brain = (sum(v ** 2 for v in g) < 0.8).astype(np.float32)
    return np.clip(brain * (0.5 + 0.3 * rng.random((n, 1, *SHAPE), dtype=np.float32)), 0, 1)


def _build(name: str):
    if name == "random3d":
        from metrics.features.random3d import Random3DExtractor

        return Random3DExtractor()
    if name == "deepbet":
        from metrics.features.deepbet import DeepBetExtractor

        return DeepBetExtractor()
    if name.startswith("medicalnet-r"):
        from metrics.features.medicalnet import MedicalNetExtractor

        return MedicalNetExtractor.random(int(name.rsplit("r", 1)[1]), batch_size=2)
    raise ValueError(name)


CASES = ["random3d", "deepbet", "medicalnet-r10", "medicalnet-r50"]


@pytest.mark.parametrize("name", CASES)
def test_extractor_seconds_per_volume(benchmark, name):
    if name == "deepbet" and importlib.util.find_spec("deepbet") is None:
        pytest.skip("deepbet not installed")
    torch.set_num_threads(THREADS)
    ext = _build(name)
    x = _volumes()
    ext(x[:1], VOXEL)  # warm-up
    feats = benchmark.pedantic(lambda: ext(x, VOXEL), rounds=1, iterations=1)
    assert feats.shape == (N, ext.dim) and np.isfinite(feats).all()
    benchmark.extra_info.update({"volumes": N, "shape": SHAPE, "dim": ext.dim, "threads": THREADS,
                                 "seconds_per_volume": benchmark.stats.stats.mean / N})


if __name__ == "__main__":
    torch.set_num_threads(THREADS)
    x = _volumes()
    for case in CASES:
        e = _build(case)
        e(x[:1], VOXEL)
        t0 = time.perf_counter()
        e(x, VOXEL)
        print(f"{case:16s} dim {e.dim:5d}  {(time.perf_counter() - t0) / N:.3f} s/volume  ({N} volumes, {SHAPE})")
