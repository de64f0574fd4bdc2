"""Scale: wall time and peak memory of the full metric set against N, grid and executor.

    make bench                                              # everything in benchmarks/
    pytest benchmarks/bench_scale.py -o python_files='bench_*.py' --benchmark-only
    python benchmarks/bench_scale.py 3mm:100 3mm:400 2mm:100 --executor local   # a plain table

Each configuration is one ``python -m bench run --generator template`` in a fresh subprocess (cold
feature cache, its own ``$BRAINGENBENCH_HOME`` sharing the built cohorts), on a suite with the
full suite's metric list, grid ``GRID`` and ``N`` prompts (the phantom cohort is sized max(400, 4 N) so
that its test split holds N subjects; it is built once into the user's cache, which takes a while at 2 mm).
Peak memory is the highest summed resident set of the run's process tree (driver, and Ray's
raylet, object store and workers with ``--executor ray``), sampled every 0.1 s. ``template``
generates in milliseconds, so the time is the suite's own. Results are appended to
``benchmarks/results/scale.jsonl``.

Expectation (issue 8): peak memory roughly flat in N (volumes stream through shards of 8);
wall time linear in N; the Ray executor's overhead is cluster start-up plus per-task scheduling.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "scale.jsonl"
SUITE = """name: scale-{grid}-n{n}
include: full
version: 1
description: the full suite's metrics at {grid} with {n} prompts (benchmarks/bench_scale.py)
reference: {{name: phantom, args: {{n_subjects: {n_subjects}, seed: 0}}}}
grid: {grid}
n_prompts: {n}
seed: 0
"""


def n_subjects_for(n: int) -> int:
    """Phantom cohort size whose test split (25 %) holds ``n`` prompts (at least the embedded 400)."""
    return max(400, 4 * n)


def suite_yaml(grid: str, n: int) -> str:
    """The full suite (``include: full``: its metrics and headline) at ``grid`` with ``n`` prompts."""
    return SUITE.format(grid=grid, n=n, n_subjects=n_subjects_for(n))


def _tree_rss(pid: int) -> int:
    import psutil

    try:
        p = psutil.Process(pid)
        procs = [p, *p.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for q in procs:
        try:
            total += q.memory_info().rss
        except psutil.Error:
            pass
    return total


def run_measured(cmd: list[str], *, env: dict, cwd: Path) -> tuple[float, int]:
    """Run ``cmd``; its wall seconds and the peak summed RSS (bytes) of its process tree, sampled every
    0.1 s. A non-zero exit raises with the end of its stderr."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = [0]

    def sample():
        while proc.poll() is None:
            peak[0] = max(peak[0], _tree_rss(proc.pid))
            time.sleep(0.1)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    th.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err[-3000:]}")
    return wall, peak[0]


def complete_record(runs: Path, label: str) -> dict:
    """The one record under ``runs``; raises when a metric failed: a metric that did not do its work
    would make the row under-state time and memory."""
    rec = json.loads(next(runs.glob("*/record.json")).read_text())
    failed = sorted(k for k, v in rec["metrics"].items() if v.get("value") is None)
    if failed:
        errors = {k: rec["metrics"][k].get("details", {}).get("error") for k in failed}
        raise RuntimeError(f"{label}: metrics failed, no row recorded: {errors}")
    return rec


def measure(grid: str, n: int, executor: str = "local", workdir: Path | None = None, heap: str = "trim") -> dict:
    """Run the configuration in a subprocess; wall seconds, peak tree RSS (MiB) and the record's timings.
    ``heap``: the run's ``--heap`` policy (bench.memory)."""
    own = workdir is None  # a folder made here (feature cache, samples) is removed afterwards
    workdir = Path(workdir or tempfile.mkdtemp(prefix=f"bgb-scale-{grid}-{n}-"))
    try:
        return _measure(grid, n, executor, workdir, heap)
    finally:
        if own:
            shutil.rmtree(workdir, ignore_errors=True)


def _measure(grid: str, n: int, executor: str, workdir: Path, heap: str) -> dict:
    from core.io import home

    bench_home = workdir / "home"
    (bench_home / "cohorts").mkdir(parents=True, exist_ok=True)
    shared = home() / "cohorts"
    shared.mkdir(parents=True, exist_ok=True)
    suite = workdir / f"scale-{grid}-{n}.yaml"
    suite.write_text(suite_yaml(grid, n))
    # build (or find) the cohort in the user's cache first: not part of the measurement
    subprocess.run([sys.executable, "-m", "bench", "--quiet", "cohort", "build", "phantom", "--grid", grid,
                    "--n-subjects", str(n_subjects_for(n))], check=True, cwd=ROOT)
    for c in shared.iterdir():
        if c.is_dir() and not (bench_home / "cohorts" / c.name).exists():
            os.symlink(c, bench_home / "cohorts" / c.name)
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}  # the run's --heap decides
    env["BRAINGENBENCH_HOME"] = str(bench_home)
    cmd = [sys.executable, "-m", "bench", "--quiet", "run", "--generator", "template", "--suite", str(suite),
           "--out", str(workdir / "runs"), "--executor", executor, "--heap", heap]
    wall, peak = run_measured(cmd, env=env, cwd=ROOT)
    rec = complete_record(workdir / "runs", f"{grid}:{n}")
    row = {"grid": grid, "n": n, "executor": executor, "heap": heap, "wall_s": round(wall, 1),
           "peak_rss_mib": round(peak / 2**20, 1), "timings": rec["timings"], "n_metrics": len(rec["metrics"]),
           "cpus": os.cpu_count(), "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(RESULTS, "a") as f:
        f.write(json.dumps(row) + "\n")
    return row


CONFIGS = [("3mm", 25, "local", "trim"), ("3mm", 50, "local", "trim"), ("3mm", 100, "local", "trim"),
           ("3mm", 400, "local", "trim"), ("2mm", 100, "local", "trim"), ("2mm", 400, "local", "trim"),
           ("2mm", 100, "local", "bounded"), ("2mm", 400, "local", "bounded"), ("3mm", 100, "ray", "trim")]


@pytest.mark.parametrize("grid,n,executor,heap", CONFIGS, ids=[f"{g}-n{n}-{e}-{h}" for g, n, e, h in CONFIGS])
def test_scale(benchmark, tmp_path, grid, n, executor, heap):
    row = benchmark.pedantic(lambda: measure(grid, n, executor, tmp_path, heap), rounds=1, iterations=1)
    benchmark.extra_info.update(row)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("configs", nargs="+", help="GRID:N, e.g. 3mm:100")
    ap.add_argument("--executor", default="local", choices=["local", "ray"])
    ap.add_argument("--heap", default="trim", choices=["trim", "bounded"], help="the runs' --heap policy")
    args = ap.parse_args(argv)
    print(f"{'grid':>5} {'N':>5} {'executor':>8} {'heap':>7} {'wall s':>8} {'peak MiB':>9}  stages (s)")
    for c in args.configs:
        grid, n = c.split(":")
        r = measure(grid, int(n), args.executor, heap=args.heap)
        stages = ", ".join(f"{k} {v:.0f}" for k, v in r["timings"].items() if k != "total")
        print(f"{grid:>5} {n:>5} {args.executor:>8} {args.heap:>7} {r['wall_s']:>8.1f} {r['peak_rss_mib']:>9.1f}  {stages}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
