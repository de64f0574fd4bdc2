"""Benchmark: build the SYNTHETIC phantom cohort (200 subjects at 3 mm, one round).

Run: ``pytest benchmarks/bench_phantom.py --benchmark-only``. ``BGB_BENCH_N`` and ``BGB_BENCH_WORKERS``
change the cohort size (default 200) and the process count (default 2). Priors are computed before
timing, into a temporary BRAINGENBENCH_HOME, so only the subject synthesis and writing are timed.
"""

from __future__ import annotations

import os

from cohorts.phantom import PhantomCohort, workspace

N = int(os.environ.get("BGB_BENCH_N", "200"))
WORKERS = int(os.environ.get("BGB_BENCH_WORKERS", "2"))


def test_build_phantom_3mm(benchmark, tmp_path):
    home = tmp_path / "home"
    workspace("3mm", home)  # priors + atrophy fields, not timed
    runs = iter(range(10**6))

    def setup():
        return (tmp_path / f"cohort-{next(runs)}",), {}

    def build(out):
        return PhantomCohort.build(out, "3mm", n_subjects=N, seed=0, workers=WORKERS, quiet=True, home=home)

    cohort = benchmark.pedantic(build, setup=setup, rounds=1, iterations=1)
    assert len(cohort.subjects) == N and cohort.synthetic
    benchmark.extra_info.update({"n_subjects": N, "workers": WORKERS,
                                 "seconds_per_subject": benchmark.stats.stats.mean / N})
