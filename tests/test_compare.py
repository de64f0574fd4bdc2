"""Tests for ``bench.compare`` / ``python -m bench compare`` on synthetic run folders."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pytest

from bench import cli
from bench.compare import (
    BETTER,
    RULE_FD,
    RULE_INDEPENDENT,
    RULE_PER_SAMPLE,
    SAME,
    TOL_FLOOR,
    TOL_NONE,
    TOL_SUITE,
    WORSE,
    CompareError,
    bootstrap_p,
    compare,
    holm,
    independent_ci,
    normal_p,
    to_json,
    to_markdown,
)
from metrics.functional.frechet import frechet_distance_from_features

ROOT = Path(__file__).resolve().parents[1]
N, F = 40, 8
HASH = "c0ffee" * 10
AXES = ("realism", "diversity", "conformance", "privacy")


def _ref_features(n: int = N) -> np.ndarray:
    return np.random.default_rng(1000).normal(size=(n, F))


def _noise_metrics(n: int, seed: int, k: int, shift: dict[int, float]) -> dict[str, dict]:
    """``k`` per-prompt metrics ``m00..``: a prompt effect shared by every run (the same prompts) plus
    per-run sampling noise (the generator's seed); the floor is real-vs-real per-prompt values with the
    same spread, and ``floor_ci`` its bootstrap interval."""
    out = {}
    for j in range(k):
        prompt_effect = np.random.default_rng([77, j]).normal(0, 0.1, n)
        floor_vals = 0.6 + prompt_effect + np.random.default_rng([78, j]).normal(0, 0.03, n)
        fb = floor_vals[np.random.default_rng(j).integers(0, n, (1000, n))].mean(axis=1)
        per = 0.5 + prompt_effect + np.random.default_rng([seed, j]).normal(0, 0.02, n) + shift.get(j, 0.0)
        v = float(per.mean())
        hib = j % 2 == 0
        out[f"m{j:02d}"] = {
            "value": v, "ci_low": v - 0.03, "ci_high": v + 0.03, "n": n, "higher_is_better": hib,
            "direction": "higher" if hib else "lower", "axis": AXES[j % 4], "family": f"m{j:02d}",
            "floor": float(floor_vals.mean()),
            "floor_ci": [float(np.quantile(fb, 0.025)), float(np.quantile(fb, 0.975))],
            "details": {"per_sample": [float(x) for x in per]},
        }
    return out


def make_run(runs: Path, run_id: str, *, seed: int, shift: float = 0.0, ssim: float = 0.7,
             ssim_per_sample: np.ndarray | None = None, suite: str = "quick", prompts_seed: int = 0,
             tolerances: dict | None = None, with_features: bool = True, n: int = N, extra: int = 0,
             extra_shift: dict[int, float] | None = None, headline: dict | None = None,
             ssim_floor_ci: list[float] | None = None) -> Path:
    """A run folder with record.json and deepbet features: FD from features, SSIM per prompt, and
    ``extra`` noise-only per-prompt metrics (:func:`_noise_metrics`)."""
    rng = np.random.default_rng(seed)
    ref = _ref_features(n)
    gen = rng.normal(size=(n, F)) + shift
    fd = frechet_distance_from_features(gen, ref)
    per = ssim_per_sample if ssim_per_sample is not None else ssim + rng.normal(0, 0.05, n)
    ids = [f"phantom-{i:04d}" for i in np.random.default_rng(prompts_seed).permutation(200)[:n]]
    suite_d = {"name": suite, "version": 1, "grid": {"name": "3mm", "voxel_size": 3.0, "shape": [48, 64, 56]},
               "n_prompts": n, "seed": 0}
    if tolerances is not None:
        suite_d["metrics"] = [{"key": k, "name": k, "args": {}, "tolerance": v} for k, v in tolerances.items()]
    if headline is not None:
        suite_d["headline"] = headline
    ssim_entry = {"value": float(np.mean(per)), "ci_low": float(np.mean(per)) - 0.02,
                  "ci_high": float(np.mean(per)) + 0.02, "n": n, "higher_is_better": True,
                  "family": "ssim", "details": {"per_sample": [float(v) for v in per]}}
    if ssim_floor_ci is not None:
        ssim_entry |= {"floor": float(np.mean(ssim_floor_ci)), "floor_ci": ssim_floor_ci}
    rec = {
        "schema_version": 1, "run_id": run_id, "created": "2026-11-22T08:00:00+00:00", "status": "complete",
        "generator": {"name": "ldm3d", "args": {"checkpoint": f"ckpt-{run_id}.safetensors"},
                      "info": {"checkpoint_sha256": f"{seed:064x}"}},
        "suite": suite_d,
        "reference": {"name": "phantom", "content_hash": HASH, "synthetic": True},
        "seed": seed,
        "metrics": {
            "fid-deepbet": {"value": fd, "ci_low": 0.7 * fd, "ci_high": 1.3 * fd, "n": n,
                            "higher_is_better": False, "family": "fid",
                            "details": {"extractor": "deepbet"}},
            "ssim": ssim_entry,
            **_noise_metrics(n, seed, extra, extra_shift or {}),
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


def make_record(runs: Path, run_id: str, metrics: dict[str, dict], *, n: int = 20, tolerances: dict | None = None,
                headline: dict | None = None, prompts_seed: int = 0) -> Path:
    """A record.json without features or per-prompt values (the independent-CI rule)."""
    suite_d = {"name": "quick", "version": 1, "grid": {"name": "3mm"}, "n_prompts": n,
               "metrics": [{"key": k, "name": k, "args": {}, "tolerance": (tolerances or {}).get(k)}
                           for k in metrics]}
    if headline is not None:
        suite_d["headline"] = headline
    rec = {"schema_version": 1, "run_id": run_id, "created": "2026-11-22T08:00:00+00:00", "status": "complete",
           "generator": {"name": "ldm3d", "args": {}, "info": {}}, "suite": suite_d, "seed": 0,
           "reference": {"name": "phantom", "content_hash": HASH, "synthetic": True}, "metrics": metrics,
           "prompts": [{"subject_id": f"s{prompts_seed}-{i}", "text": f"caption {i}"} for i in range(n)]}
    d = runs / run_id
    d.mkdir(parents=True)
    (d / "record.json").write_text(json.dumps(rec), encoding="utf-8")
    return d


def _entry(value: float, se: float, direction: str = "higher", axis: str = "realism", **kw) -> dict:
    return {"value": value, "ci_low": value - 1.959963984540054 * se, "ci_high": value + 1.959963984540054 * se,
            "n": 20, "direction": direction, "higher_is_better": direction == "higher", "axis": axis, **kw}


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench", "--quiet", "compare", *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)


def _main(capsys, *args) -> tuple[int, str, str]:
    rc = cli.main(["--quiet", "compare", *map(str, args)])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _by_key(c):
    return {m.key: m for m in c.metrics}


# ------------------------------------------------------------------------------ per-metric rules
def test_same_generator_different_seeds_no_change(tmp_path):
    base = make_run(tmp_path, "base", seed=1)
    head = make_run(tmp_path, "head", seed=2)
    c = compare(base, head)
    m = _by_key(c)
    assert c.paired
    assert m["fid-deepbet"].rule == RULE_FD and m["ssim"].rule == RULE_PER_SAMPLE
    assert m["fid-deepbet"].verdict == SAME and m["ssim"].verdict == SAME
    for d in m.values():
        assert d.ci_low < 0 < d.ci_high and d.p_value > 0.05
    assert not c.regressions


def test_clearly_worse_head_fails_on_regression(tmp_path):
    base = make_run(tmp_path, "base", seed=1)
    head = make_run(tmp_path, "head", seed=2, shift=1.5, ssim=0.5)
    m = _by_key(compare(base, head / "record.json"))
    assert m["fid-deepbet"].verdict == WORSE and m["fid-deepbet"].delta > 0
    assert m["ssim"].verdict == WORSE and m["ssim"].ci_high < 0 and m["ssim"].holm_reject
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
    assert "realism: better (1 of 1 headline metrics improved significantly" in md  # fid-deepbet is the default
    assert _cli(base, head, "--fail-on-regression").returncode == 0


def test_tolerance_suppresses_tiny_significant_change(tmp_path):
    per = 0.7 + np.random.default_rng(5).normal(0, 0.05, N)
    base = make_run(tmp_path, "base", seed=1, ssim_per_sample=per)
    head = make_run(tmp_path, "head", seed=1, ssim_per_sample=per + 0.01, tolerances={"ssim": 0.02})
    m = _by_key(compare(base, head))["ssim"]
    assert m.ci_low > 0 and m.holm_reject  # a constant shift: significant ...
    assert m.tolerance == 0.02 and m.tolerance_source == TOL_SUITE
    assert m.verdict == SAME and "tolerance" in m.note  # ... but below tolerance
    head0 = make_run(tmp_path, "head0", seed=1, ssim_per_sample=per + 0.01, tolerances={"ssim": 0.0})
    assert _by_key(compare(base, head0))["ssim"].verdict == BETTER


def test_tolerance_from_floor_interval_when_suite_gives_none(tmp_path):
    per = 0.7 + np.random.default_rng(5).normal(0, 0.05, N)
    base = make_run(tmp_path, "base", seed=1, ssim_per_sample=per, ssim_floor_ci=[0.60, 0.70])
    small = make_run(tmp_path, "small", seed=1, ssim_per_sample=per + 0.03, ssim_floor_ci=[0.61, 0.69])
    c = compare(base, small)
    m = _by_key(c)["ssim"]
    # the larger half-width of the two floors' intervals, (0.70 - 0.60) / 2
    assert m.tolerance == pytest.approx(0.05) and m.tolerance_source == TOL_FLOOR
    assert m.holm_reject and m.verdict == SAME and "tolerance" in m.note  # within what real data moves by
    assert _by_key(c)["fid-deepbet"].tolerance_source == TOL_NONE  # no floor interval, no suite tolerance: 0
    md = to_markdown(c)
    assert "| 0.05 (floor CI) |" in md and "floor's bootstrap interval" in md
    out = json.loads(to_json(c))
    assert {m["key"]: m["tolerance_source"] for m in out["metrics"]} == {"fid-deepbet": TOL_NONE, "ssim": TOL_FLOOR}
    big = make_run(tmp_path, "big", seed=1, ssim_per_sample=per + 0.08, ssim_floor_ci=[0.61, 0.69])
    assert _by_key(compare(base, big))["ssim"].verdict == BETTER
    # an explicit suite tolerance wins over the floor's, 0 included
    forced0 = make_run(tmp_path, "forced0", seed=1, ssim_per_sample=per + 0.03, ssim_floor_ci=[0.61, 0.69],
                       tolerances={"ssim": 0.0})
    m0 = _by_key(compare(base, forced0))["ssim"]
    assert (m0.tolerance, m0.tolerance_source, m0.verdict) == (0.0, TOL_SUITE, BETTER)
    # older records keep the floor interval in details.floor_ci
    rec = json.loads((small / "record.json").read_text())
    rec["metrics"]["ssim"]["details"]["floor_ci"] = rec["metrics"]["ssim"].pop("floor_ci")
    (small / "record.json").write_text(json.dumps(rec))
    assert _by_key(compare(base, small))["ssim"].tolerance == pytest.approx(0.05)


def test_rule_reported_in_json_and_unpaired_fallback(tmp_path):
    base = make_run(tmp_path, "base", seed=1)
    head = make_run(tmp_path, "head", seed=2)
    proc = _cli(base, head, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["paired_prompts"] is True
    assert {m["key"]: m["rule"] for m in out["metrics"]} == {"fid-deepbet": RULE_FD, "ssim": RULE_PER_SAMPLE}
    assert set(out["rules"]) == {RULE_FD, RULE_PER_SAMPLE} and "tolerance" in out["verdict_rule"]
    assert out["correction"]["method"] == "holm-bonferroni" and out["correction"]["alpha"] == 0.05
    assert out["correction"]["family_size"] == 2 and "Holm" in out["verdict_rule"]
    assert out["overridden"] == [] and set(out["axes"]) == set(AXES)  # a generator's four axes, measured or not
    # different prompts -> independence approximation from the recorded CIs
    other = make_run(tmp_path, "other", seed=2, prompts_seed=7)
    c = compare(base, other)
    assert not c.paired and {m.rule for m in c.metrics} == {RULE_INDEPENDENT}
    # same prompts but no saved features -> FD falls back too, with a note
    nofeat = make_run(tmp_path, "nofeat", seed=2, with_features=False)
    m = _by_key(compare(base, nofeat))["fid-deepbet"]
    assert m.rule == RULE_INDEPENDENT and "features" in m.note


def test_same_prompts_in_another_order_are_paired(tmp_path):
    base = make_run(tmp_path, "base", seed=1)
    head = make_run(tmp_path, "head", seed=2)
    rec = json.loads((head / "record.json").read_text())
    order = np.random.default_rng(3).permutation(N)
    rec["prompts"] = [rec["prompts"][i] for i in order]
    for key in ("ssim",):
        rec["metrics"][key]["details"]["per_sample"] = [rec["metrics"][key]["details"]["per_sample"][i] for i in order]
    (head / "record.json").write_text(json.dumps(rec))
    for which in ("generated", "reference"):
        p = head / "features" / "deepbet" / f"{which}.npy"
        np.save(p, np.load(p)[order])
    reordered = _by_key(compare(base, head))
    assert reordered["ssim"].rule == RULE_PER_SAMPLE and reordered["fid-deepbet"].rule == RULE_FD
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    plain = _by_key(compare(base, make_run(fresh, "head", seed=2)))
    for k in ("ssim", "fid-deepbet"):  # the same pairs, so the same interval
        assert reordered[k].ci_low == pytest.approx(plain[k].ci_low) and reordered[k].p_value == pytest.approx(
            plain[k].p_value)


def test_independent_ci_formula():
    lo, hi = independent_ci(1.0, {"ci_low": 0.0, "ci_high": 2 * 1.959963984540054},
                            {"ci_low": 0.0, "ci_high": 2 * 1.959963984540054})
    assert np.isclose(hi - 1.0, 1.959963984540054 * np.sqrt(2)) and np.isclose(1.0 - lo, hi - 1.0)


# ------------------------------------------------------------------------------- refusal, --force
def test_incompatible_records_refused(tmp_path):
    base = make_run(tmp_path, "base", seed=1)
    head = make_run(tmp_path, "head", seed=2, suite="full")
    with pytest.raises(CompareError, match="suite differs: quick v1 vs full v1") as e:
        compare(base, head)
    assert e.value.differences == ["suite differs: quick v1 vs full v1"]
    proc = _cli(base, head)
    assert proc.returncode == 2 and "error: suite differs" in proc.stderr and "--force" in proc.stderr
    forced = _cli(base, head, "--force")
    assert forced.returncode == 0 and "suite differs: quick v1 vs full v1" in forced.stdout
    assert _cli(base, tmp_path / "missing").returncode == 2


def test_different_n_refused_with_one_error_line_per_difference(tmp_path, capsys):
    base = make_run(tmp_path, "base", seed=1, n=8)
    head = make_run(tmp_path, "head", seed=2, n=16)
    rc, out, err = _main(capsys, base, head)
    assert rc == 2 and out == ""
    assert "error: N differs: 8 vs 16" in err.splitlines()
    assert "--force" in err
    # every difference gets its own error line
    other = make_run(tmp_path, "other", seed=2, n=16, suite="full")
    rc, _, err = _main(capsys, base, other)
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert rc == 2 and errors == ["error: suite differs: quick v1 vs full v1", "error: N differs: 8 vs 16"]
    # and the gate does not turn a refusal into a pass
    rc, _, _ = _main(capsys, base, head, "--fail-on-regression")
    assert rc == 2


def test_force_compares_and_names_what_was_overridden(tmp_path, capsys):
    base = make_run(tmp_path, "base", seed=1, n=8)
    head = make_run(tmp_path, "head", seed=2, n=16)
    rc, out, err = _main(capsys, base, head, "--force")
    assert rc == 0 and "warning: --force: N differs: 8 vs 16" in err
    top = out.split("| metric |")[0]  # before the table, at the top
    assert "compared anyway because of `--force`" in top and "N differs: 8 vs 16" in top
    rc, out, _ = _main(capsys, base, head, "--force", "--format", "json")
    rep = json.loads(out)
    assert rc == 0 and rep["overridden"] == ["N differs: 8 vs 16"] and rep["forced"] is True
    assert rep["paired_prompts"] is False and {m["rule"] for m in rep["metrics"]} == {RULE_INDEPENDENT}


# ---------------------------------------------------------------- family-wise correction, noise
def test_holm_hand_computed_example():
    # m = 4, α = 0.05: p_(1) = 0.01 ≤ 0.05/4 = 0.0125 -> reject; p_(2) = 0.02 > 0.05/3 = 0.0167 -> stop.
    reject, adjusted = holm([0.01, 0.02, 0.03, 0.5], 0.05)
    assert reject == [True, False, False, False]
    # adjusted: 4·0.01 = 0.04; max(0.04, 3·0.02) = 0.06; max(0.06, 2·0.03) = 0.06; max(0.06, 1·0.5) = 0.5
    assert adjusted == pytest.approx([0.04, 0.06, 0.06, 0.5])
    # input order does not matter; None is not in the family (m stays 4)
    reject, adjusted = holm([0.5, None, 0.03, 0.01, 0.02], 0.05)
    assert reject == [False, False, False, True, False] and adjusted[1] is None
    assert [adjusted[i] for i in (0, 2, 3, 4)] == pytest.approx([0.5, 0.06, 0.04, 0.06])
    # 0.001 ≤ 0.05/3, 0.01 ≤ 0.05/2, 0.04 ≤ 0.05/1: all rejected (uncorrected Bonferroni would keep only 2)
    assert holm([0.04, 0.001, 0.01], 0.05)[0] == [True, True, True]
    assert holm([], 0.05) == ([], [])


def test_p_value_formulas():
    # B = 4 bootstrap deltas: 1 is ≤ 0, 3 are ≥ 0 -> p = 2·min(1 + 1, 3 + 1)/(4 + 1) = 0.8 (needs ≥ 10 values)
    assert bootstrap_p(np.array([1.0, 2.0, 3.0, -1.0] * 3)) == pytest.approx(2 * (3 + 1) / 13)
    assert bootstrap_p(np.ones(999)) == pytest.approx(2 / 1000)  # never 0: the +1 correction
    assert bootstrap_p(np.ones(5)) is None
    assert normal_p(1.959963984540054, 1.0) == pytest.approx(0.05)
    assert normal_p(0.0, 0.0) == 1.0 and normal_p(1.0, 0.0) == 0.0


def test_compare_applies_holm_across_metrics(tmp_path):
    """Four metrics with raw p = 0.01, 0.02, 0.03, 0.5 (independent rule, tolerance 0): before the
    correction three are 'significant'; Holm keeps only the first (hand-computed above)."""
    se = 0.01
    base, head = {}, {}
    for i, p in enumerate([0.01, 0.02, 0.03, 0.5]):
        delta = NormalDist().inv_cdf(1 - p / 2) * se * np.sqrt(2)
        base[f"k{i}"] = _entry(0.5, se)
        head[f"k{i}"] = _entry(0.5 + delta, se)
    tol = {k: 0.0 for k in base}
    b = make_record(tmp_path, "base", base, tolerances=tol)
    h = make_record(tmp_path, "head", head, tolerances=tol)
    c = compare(b, h)
    m = _by_key(c)
    assert [m[f"k{i}"].p_value for i in range(4)] == pytest.approx([0.01, 0.02, 0.03, 0.5])
    assert [m[f"k{i}"].p_holm for i in range(4)] == pytest.approx([0.04, 0.06, 0.06, 0.5])
    assert [m[f"k{i}"].verdict for i in range(4)] == [BETTER, SAME, SAME, SAME]
    assert all(m[f"k{i}"].ci_low > 0 for i in range(3))  # the uncorrected CIs exclude 0 for three of them
    assert "not significant after Holm" in m["k1"].note
    assert c.family_size == 4 and "Holm–Bonferroni across 4 metrics, family-wise α = 0.05" in to_markdown(c)


def test_noise_between_seeds_gives_no_significant_change(tmp_path, capsys):
    """Two seeds of one generator on the same prompts: 32 metrics differ only by sampling noise."""
    base = make_run(tmp_path, "base", seed=1, extra=30)
    head = make_run(tmp_path, "head", seed=2, extra=30)
    c = compare(base, head)
    assert c.paired and c.family_size == 32 and c.n_boot >= 4 * 32 / 0.05
    assert {m.rule for m in c.metrics} == {RULE_PER_SAMPLE, RULE_FD}
    assert {m.verdict for m in c.metrics} == {SAME}
    assert {m.tolerance_source for m in c.metrics if m.key.startswith("m")} == {TOL_FLOOR}
    assert all(a.verdict == SAME for a in c.axes)
    rc, out, err = _main(capsys, base, head, "--fail-on-regression")
    assert rc == 0, err
    for axis in AXES:
        assert f"{axis}: no significant change" in out
    # without tolerances the correction alone keeps the gate quiet: some raw p-values fall below 0.05
    # by chance among 32 metrics (what an uncorrected gate fires on), none survives Holm
    tol0 = {k: 0.0 for k in json.loads((head / "record.json").read_text())["metrics"]}
    head0 = make_run(tmp_path / "t0", "head", seed=2, extra=30, tolerances=tol0)
    c0 = compare(base, head0)
    assert any(m.p_value < 0.05 for m in c0.metrics)
    assert not any(m.holm_reject for m in c0.metrics) and {m.verdict for m in c0.metrics} == {SAME}


def test_large_regression_on_one_metric_is_reported(tmp_path, capsys):
    base = make_run(tmp_path, "base", seed=1, extra=30, headline={"realism": ["m04", "m08", "m12"]})
    # m04 is higher-is-better, realism axis: a drop of 0.2 (the floor interval's half-width is ~0.03)
    head = make_run(tmp_path, "head", seed=2, extra=30, extra_shift={4: -0.2},
                    headline={"realism": ["m04", "m08", "m12"]})
    c = compare(base, head)
    m = _by_key(c)
    assert m["m04"].verdict == WORSE and m["m04"].holm_reject and abs(m["m04"].delta) > m["m04"].tolerance
    assert [x.key for x in c.regressions] == ["m04"]
    realism = next(a for a in c.axes if a.axis == "realism")
    assert realism.verdict == WORSE and realism.headline == ["m04", "m08", "m12"]
    assert realism.text.startswith("realism: worse (1 of 3 headline metrics significantly worse: m04")
    rc, out, err = _main(capsys, base, head, "--fail-on-regression")
    assert rc == 1 and "regression: m04" in err
    assert "realism: worse (1 of 3 headline metrics significantly worse: m04" in out
    assert "diversity: no significant change" in out
    assert out.index("realism: worse") < out.index("| metric |")  # the axis lines lead the report


def test_axis_summary_lines(tmp_path):
    se = 0.001
    metrics_b = {k: _entry(0.5, se, axis=a) for k, a in
                 (("a", "realism"), ("b", "realism"), ("c", "realism"), ("d", "realism"), ("p", "privacy"))}
    metrics_h = dict(metrics_b)
    metrics_h |= {"a": _entry(0.6, se), "b": _entry(0.6, se), "d": _entry(0.4, se)}
    headline = {"realism": ["a", "b", "c"]}
    b = make_record(tmp_path, "base", metrics_b, headline=headline)
    h = make_record(tmp_path, "head", metrics_h, headline=headline)
    axes = {a.axis: a for a in compare(b, h).axes}
    assert axes["realism"].text == ("realism: better (2 of 3 headline metrics improved significantly; "
                                    "other metrics (1): 1 worse (d))")
    assert axes["realism"].better == ["a", "b"] and axes["realism"].worse == ["d"]
    assert axes["privacy"].text == ("privacy: no significant change (0 of 1 metrics changed significantly; "
                                    "no headline metric)")
    assert axes["diversity"].verdict == "not measured"


def test_target_metric_compares_distance_to_floor(tmp_path):
    se = 0.002
    def div(v):
        return _entry(v, se, direction="target", axis="diversity", floor=0.30, floor_ci=[0.29, 0.31])

    b = make_record(tmp_path, "base", {"ms_ssim_diversity": div(0.25)})  # 0.05 from real data
    closer = make_record(tmp_path, "closer", {"ms_ssim_diversity": div(0.32)})  # 0.02 away: better
    beyond = make_record(tmp_path, "beyond", {"ms_ssim_diversity": div(0.40)})  # value up, but 0.10 away: worse
    m = _by_key(compare(b, closer))["ms_ssim_diversity"]
    assert m.direction == "target" and m.value_delta == pytest.approx(0.07)
    assert m.delta == pytest.approx(-0.03) and (m.base_distance, m.head_distance) == pytest.approx((0.05, 0.02))
    assert m.tolerance == pytest.approx(0.01) and m.tolerance_source == TOL_FLOOR and m.verdict == BETTER
    m = _by_key(compare(b, beyond))["ms_ssim_diversity"]
    assert m.delta == pytest.approx(0.05) and m.verdict == WORSE
    assert "◎" in to_markdown(compare(b, beyond))


def test_deterministic(tmp_path):
    base = make_run(tmp_path, "base", seed=1)
    head = make_run(tmp_path, "head", seed=2, shift=0.3)
    assert to_markdown(compare(base, head)) == to_markdown(compare(base, head))


# ------------------------------------------------------------------------------------ end to end
TINY_SUITE = """
name: tiny
version: 1
description: a tiny suite for tests
reference: {name: phantom, args: {n_subjects: 48, seed: 3}}
grid: 3mm
n_prompts: 12
seed: 0
metrics:
  - {name: fid, args: {extractor: deepbet}}
  - {name: ssim}
"""


@pytest.mark.slow
def test_end_to_end_two_seeds_of_one_generator(tmp_path, capsys):
    """`bench run` twice (template generator, seeds 0 and 1; the same suite as test_runner_e2e, so the
    phantom cohort is shared within a session), then compare: no significant change, gate passes."""
    from bench.runner import RunConfig, run

    suite = tmp_path / "tiny.yaml"
    suite.write_text(TINY_SUITE)
    a, b = (run(RunConfig(generator="template", suite=suite, out=tmp_path / "runs", seed=s, quiet=True,
                          device="cpu")) for s in (0, 1))
    c = compare(a.parent, b.parent)
    assert {m.key for m in c.metrics} == {"fid-deepbet", "ssim"}
    assert {m.verdict for m in c.metrics} == {SAME}, to_markdown(c)
    assert all(m.p_value is not None for m in c.metrics)
    rc, out, err = _main(capsys, a.parent, b.parent, "--fail-on-regression")
    assert rc == 0, err
    assert "realism: no significant change" in out
