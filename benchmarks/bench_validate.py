"""Wall time of the metric report card on the quick suite (every corruption, 3 levels, every metric).

    pytest benchmarks/bench_validate.py -o python_files='bench_*.py' --benchmark-only

Target (2 cores): ``python -m bench validate --suite quick`` in <= 15 min, the quick cohort built and
the reference features in the cache (the state after ``make run SUITE=quick``). The report lands in
``benchmarks/results/validation-quick.json`` so the README's report-card table can be checked against it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from bench.validate import ValidateConfig, validate

RESULTS = Path(__file__).parent / "results"
TARGET_S = 15 * 60


def test_validate_quick(benchmark, tmp_path):
    def go():
        return validate(ValidateConfig(suite="quick", out=tmp_path / "card", quiet=True, resume=False))

    path = benchmark.pedantic(go, rounds=1, iterations=1)
    rep = json.loads(path.read_text())
    seconds = benchmark.stats.stats.max
    benchmark.extra_info.update({"seconds": round(seconds, 1), "runs": sum(len(v) for v in rep["runs"].values()),
                                 "target_s": TARGET_S})
    RESULTS.mkdir(exist_ok=True)
    shutil.copy(path, RESULTS / "validation-quick.json")
    assert seconds <= TARGET_S, f"validate --suite quick took {seconds:.0f} s (target {TARGET_S} s)"
