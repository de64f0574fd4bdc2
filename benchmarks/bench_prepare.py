"""Benchmark: `cohort prepare` per subject on the 2 mm grid (IXI-like T1 scans at ~1 mm).

Run: ``pytest benchmarks/bench_prepare.py --benchmark-only``. ``BGB_BENCH_N`` (default 2) subjects
are written as IXI files (``IXI-T1/IXI0xx-Guys-....-T1.nii.gz``, 1.0 x 1.0 x 1.2 mm voxels, 190 x 230 x
167 — the size of a real IXI T1) and prepared with ``BGB_BENCH_SKULL`` (default ``deepbet``, the CLI
default) and ``BGB_BENCH_WORKERS`` processes (default 1). Fixture writing and the priors caches are
not timed. ``extra_info.seconds_per_subject`` is the figure to quote.
"""

from __future__ import annotations

import os

from cohorts import preprocess
from cohorts.grid import get_grid
from cohorts.prepare import prepare_cohort
from tests import dataset_fixtures as F

N = int(os.environ.get("BGB_BENCH_N", "2"))
SKULL = os.environ.get("BGB_BENCH_SKULL", "deepbet")
WORKERS = int(os.environ.get("BGB_BENCH_WORKERS", "1"))


def test_prepare_ixi_t1_2mm(benchmark, tmp_path):
    raw = tmp_path / "raw"
    for i in range(N):
        scan = F.native_scan(i, "T1", layout="PIL", voxel_mm=(1.0, 1.0, 1.2))
        F.save_nifti(scan, raw / "IXI-T1" / f"IXI{i + 2:03d}-Guys-{1000 + i:04d}-T1.nii.gz")
    g = get_grid("2mm")
    preprocess.label_priors(g)  # priors caches, not timed
    preprocess.modality_template("T1", g)
    runs = iter(range(10**6))

    def setup():
        return (tmp_path / f"out-{next(runs)}",), {}

    def prepare(out):
        return prepare_cohort("ixi", raw, out, grid="2mm", skull_strip=SKULL, workers=WORKERS, quiet=True)

    cohort = benchmark.pedantic(prepare, setup=setup, rounds=1, iterations=1)
    assert len(cohort.subjects) == N
    benchmark.extra_info.update({"n_subjects": N, "skull_strip": SKULL, "workers": WORKERS, "grid": "2mm",
                                 "seconds_per_subject": benchmark.stats.stats.mean / N})
