"""The README's two commands as a user meets them: wall time of the main job in a fresh process.

    pytest benchmarks/bench_main_job.py -o python_files='bench_*.py' --benchmark-only
    python benchmarks/bench_main_job.py            # both, as a plain table

* ``test_quick_from_empty_home``: ``make run SUITE=quick`` on a fresh machine, after the install step:
  an empty ``$BRAINGENBENCH_HOME`` and matplotlib cache, so building the 400-subject phantom (priors
  included), the feature caches and the font cache are all timed. Target (issue 17): <= 4 min on 2 cores.
* ``test_full_with_cohort_built``: ``make run`` (``ldm3d`` on the full suite, 100 prompts) with the
  cohort built but every feature cache empty. Target (issue 17): <= 8 min on 2 cores.

Each is one ``python -m bench run`` subprocess, its peak resident memory (process tree) sampled every
0.1 s. Results are appended to ``benchmarks/results/main_job.jsonl``. Nothing else may use the CPU
meanwhile: two torch jobs on 2 cores slow each other several-fold.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "main_job.jsonl"
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_scale import complete_record, run_measured  # noqa: E402  (shared with the scale benchmark)

QUICK_TARGET_S = 240
FULL_TARGET_S = 480


def main_job(suite: str, home: Path, out: Path) -> dict:
    """Time ``python -m bench run --generator ldm3d --suite SUITE`` with ``home`` as its home folder."""
    env = dict(os.environ, BRAINGENBENCH_HOME=str(home), MPLCONFIGDIR=str(home / "matplotlib"))
    cmd = [sys.executable, "-m", "bench", "--quiet", "run", "--generator", "ldm3d", "--suite", suite,
           "--out", str(out)]
    wall, peak = run_measured(cmd, env=env, cwd=ROOT)
    record = complete_record(out, suite)
    row = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "suite": suite,
           "cpus": os.cpu_count(), "wall_s": round(wall, 1), "peak_rss_mib": round(peak / 2**20),
           "timings": {k: round(v, 1) for k, v in record.get("timings", {}).items()}}
    RESULTS.parent.mkdir(exist_ok=True)
    with RESULTS.open("a") as f:
        f.write(json.dumps(row) + "\n")
    return row


def test_quick_from_empty_home(benchmark, tmp_path):
    row = benchmark.pedantic(lambda: main_job("quick", tmp_path / "home", tmp_path / "runs"), rounds=1,
                             iterations=1)
    benchmark.extra_info.update(row)
    assert row["wall_s"] <= QUICK_TARGET_S, f"target: fresh-home quick run <= {QUICK_TARGET_S} s"


def test_full_with_cohort_built(benchmark, bench_home, tmp_path):
    row = benchmark.pedantic(lambda: main_job("full", bench_home, tmp_path / "runs"), rounds=1, iterations=1)
    benchmark.extra_info.update(row)
    assert row["wall_s"] <= FULL_TARGET_S, f"target: main job with the cohort built <= {FULL_TARGET_S} s"


if __name__ == "__main__":
    from cohorts.phantom import PhantomCohort

    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        print(main_job("quick", t / "fresh-home", t / "quick"))
        cohort = PhantomCohort.get("3mm", n_subjects=400, seed=0, quiet=True)
        (t / "home" / "cohorts").mkdir(parents=True)
        os.symlink(cohort.root, t / "home" / "cohorts" / cohort.root.name)
        print(main_job("full", t / "home", t / "full"))
