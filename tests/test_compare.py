"""Tests for ``bench.compare`` / ``python -m bench compare`` on synthetic run folders."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench.compare import (
    BETTER,
    RULE_FD,
    RULE_INDEPENDENT,
    RULE_PER_SAMPLE,
    SAME,
    WORSE,
    CompareError,
    compare,
    independent_ci,
    to_markdown,
)
from metrics.functional.frechet import frechet_distance_from_features

ROOT = Path(__file__).resolve().parents[1]
N, F = 40, 8
HASH = "c0ffee" * 10


def _ref_features() -> np.ndarray:
    return np.random.default_rng(1000).normal(size=(N, F))


def make_run(runs: Path, run_id: str, *, seed: int, shift: float = 0.0, ssim: float = 0.7,
             ssim_per_sample: np.ndarray | None = None, suite: str = "quick", prompts_seed: int = 0,
             tolerances: dict | None = None, with_features: bool = True) -> Path:
    """A run folder with record.json and deepbet features: FD from features, SSIM per prompt."""
    rng = np.random.default_rng(seed)
    ref = _ref_features()
    gen = rng.normal(size=(N, F)) + shift
    fd = frechet_distance_from_features(gen, ref)
    per = ssim_per_sample if ssim_per_sample is not None else ssim + rng.normal(0, 0.05, N)
    ids = [f"phantom-{i:04d}" for i in np.random.default_rng(prompts_seed).permutation(200)[:N]]
    suite_d = {"name": suite, "version": 1, "grid": {"name": "3mm", "voxel_size": 3.0, "shape": [48, 64, 56]},
               "n_prompts": N, "seed": 0}
    if tolerances is not None:
        suite_d["metrics"] = [{"key": k, "name": k, "args": {}, "tolerance": v} for k, v in tolerances.items()]
    rec = {
        "schema_version": 1, "run_id": run_id, "status": "complete",
        "generator": {"name": "ldm3d", "args": {"checkpoint": f"ckpt-{run_id}.safetensors"},
                      "info": {"checkpoint_sha256": f"{seed:064x}"}},
        "suite": suite_d,
        "reference": {"name": "phantom", "content_hash": HASH, "synthetic": True},
        "seed": seed,
        "metrics": {
            "fid-deepbet": {"value": fd, "ci_low": 0.7 * fd, "ci_high": 1.3 * fd, "n": N,
                            "higher_is_better": False, "family": "fid",
                            "details": {"extractor": "deepbet"}},
            "ssim": {"value": float(np.mean(per)), "ci_low": float(np.mean(per)) - 0.02,
                     "ci_high": float(np.mean(per)) + 0.02, "n": N, "higher_is_better": True,
                     "family": "ssim", "details": {"per_sample": [float(v) for v in per]}},
        },
        "prompts": [{"subject_id": s, "text": f"caption {s}"} for s in ids],
    }
    d = runs / run_id
    (d / "features" / "deepbet").mkdir(parents=True)
    if with_features:
        np.save(d / "features" / "deepbet" / "generated.npy", gen)
        np.save(d / "features" / "deepbet" / "reference.npy", ref)
    (d / "record.json").write_text(json.dumps(rec), encoding="utf-8")
    return d


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench", "--quiet", "compare", *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)


def _by_key(c):
    return {m.key: m for m in c.metrics}


def test_same_generator_different_seeds_no_change(tmp_path):
    base = make_run(tmp_path, "base", seed=1)
    head = make_run(tmp_path, "head", seed=2)
    c = compare(base, head)
    m = _by_key(c)
    assert c.paired
    assert m["fid-deepbet"].rule == RULE_FD and m["ssim"].rule == RULE_PER_SAMPLE
    assert m["fid-deepbet"].verdict == SAME and m["ssim"].verdict == SAME
    for d in m.values():
        assert d.ci_low < 0 < d.ci_high
    assert not c.regressions


def test_clearly_worse_head_fails_on_regression(tmp_path):
    base = make_run(tmp_path, "base", seed=1)
    head = make_run(tmp_path, "head", seed=2, shift=1.5, ssim=0.5)
    m = _by_key(compare(base, head / "record.json"))
    assert m["fid-deepbet"].verdict == WORSE and m["fid-deepbet"].delta > 0
    assert m["ssim"].verdict == WORSE and m["ssim"].ci_high < 0
    proc = _cli(base, head, "--fail-on-regression")
    assert proc.returncode == 1, proc.stderr
    assert "🔴 worse" in proc.stdout and "regression" in proc.stderr
    assert _cli(base, head).returncode == 0  # no gate without the flag


def test_better_head(tmp_path):
    base = make_run(tmp_path, "base", seed=1, shift=1.5, ssim=0.5)
    head = make_run(tmp_path, "head", seed=2)
    c = compare(base, head)
    assert {m.key: m.verdict for m in c.metrics} == {"fid-deepbet": BETTER, "ssim": BETTER}
    md = to_markdown(c)
    assert "🟢 better" in md and "no regression" in md and "How this is decided" in md
    assert _cli(base, head, "--fail-on-regression").returncode == 0


def test_tolerance_suppresses_tiny_significant_change(tmp_path):
    per = 0.7 + np.random.default_rng(5).normal(0, 0.05, N)
    base = make_run(tmp_path, "base", seed=1, ssim_per_sample=per)
    head = make_run(tmp_path, "head", seed=1, ssim_per_sample=per + 0.01, tolerances={"ssim": 0.02})
    m = _by_key(compare(base, head))["ssim"]
    assert m.ci_low > 0  # a constant shift: significant ...
    assert m.tolerance == 0.02 and m.verdict == SAME and "tolerance" in m.note  # ... but below tolerance
    head0 = make_run(tmp_path, "head0", seed=1, ssim_per_sample=per + 0.01, tolerances={"ssim": 0.0})
    assert _by_key(compare(base, head0))["ssim"].verdict == BETTER


def test_rule_reported_in_json_and_unpaired_fallback(tmp_path):
    base = make_run(tmp_path, "base", seed=1)
    head = make_run(tmp_path, "head", seed=2)
    proc = _cli(base, head, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["paired_prompts"] is True
    assert {m["key"]: m["rule"] for m in out["metrics"]} == {"fid-deepbet": RULE_FD, "ssim": RULE_PER_SAMPLE}
    assert set(out["rules"]) == {RULE_FD, RULE_PER_SAMPLE} and "tolerance" in out["verdict_rule"]
    # different prompts -> independence approximation from the recorded CIs
    other = make_run(tmp_path, "other", seed=2, prompts_seed=7)
    c = compare(base, other)
    assert not c.paired and {m.rule for m in c.metrics} == {RULE_INDEPENDENT}
    # same prompts but no saved features -> FD falls back too, with a note
    nofeat = make_run(tmp_path, "nofeat", seed=2, with_features=False)
    m = _by_key(compare(base, nofeat))["fid-deepbet"]
    assert m.rule == RULE_INDEPENDENT and "features" in m.note


def test_independent_ci_formula():
    lo, hi = independent_ci(1.0, {"ci_low": 0.0, "ci_high": 2 * 1.959963984540054},
                            {"ci_low": 0.0, "ci_high": 2 * 1.959963984540054})
    assert np.isclose(hi - 1.0, 1.959963984540054 * np.sqrt(2)) and np.isclose(1.0 - lo, hi - 1.0)


def test_incompatible_records_refused(tmp_path):
    base = make_run(tmp_path, "base", seed=1)
    head = make_run(tmp_path, "head", seed=2, suite="full")
    with pytest.raises(CompareError, match="different suites"):
        compare(base, head)
    proc = _cli(base, head)
    assert proc.returncode == 2 and "different suites" in proc.stderr and "--force" in proc.stderr
    forced = _cli(base, head, "--force")
    assert forced.returncode == 0 and "--force: different suites" in forced.stdout
    assert _cli(base, tmp_path / "missing").returncode == 2


def test_deterministic(tmp_path):
    base = make_run(tmp_path, "base", seed=1)
    head = make_run(tmp_path, "head", seed=2, shift=0.3)
    assert to_markdown(compare(base, head)) == to_markdown(compare(base, head))
