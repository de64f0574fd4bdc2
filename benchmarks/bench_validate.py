"""Wall time of the metric report card on the quick suite (every corruption, 3 levels, every metric).

    pytest benchmarks/bench_validate.py -o python_files='bench_*.py' --benchmark-only

Target (2 cores): ``python -m bench validate --suite quick`` in <= 15 min in the state a user is in
after ``make run SUITE=quick``: the quick cohort built and the real volumes' features cached, the
corrupted volumes' features not. The benchmark uses a home of its own (the cohort linked in), warms it
with one untimed ``template`` run, then times the report card. The report lands in
``benchmarks/results/validation-quick.json``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bench.runner import RunConfig, run
from bench.validate import ValidateConfig, validate

RESULTS = Path(__file__).parent / "results"
TARGET_S = 15 * 60


@pytest.fixture(scope="module")
def warm_home(bench_home):
    run(RunConfig(generator="template", suite="quick", out=bench_home / "runs", quiet=True))  # real sets' features
    return bench_home


def test_validate_quick(benchmark, warm_home):
    out = warm_home / "card"

    def go():
        return validate(ValidateConfig(suite="quick", out=out, quiet=True, resume=False))

    path = benchmark.pedantic(go, rounds=1, iterations=1)
    rep = json.loads(path.read_text())
    seconds = benchmark.stats.stats.max
    benchmark.extra_info.update({"seconds": round(seconds, 1), "runs": sum(len(v) for v in rep["runs"].values()),
                                 "target_s": TARGET_S})
    RESULTS.mkdir(exist_ok=True)
    shutil.copy(path, RESULTS / "validation-quick.json")
    assert seconds <= TARGET_S, f"validate --suite quick took {seconds:.0f} s (target {TARGET_S} s)"
