"""The metric report card: the pure report builder on hand-made records, and `bench validate` end to
end through the runner, with the quick suite's headline realism metrics on a small phantom."""

from __future__ import annotations

import json

import pytest
import yaml

from bench.suite import load_suite
from bench.validate import LEVELS, ValidateConfig, build_report, check_corruptions, summary, validate


def _rec(amount: float, entries: dict) -> dict:
    return {"suite": {"name": "s", "version": 1, "n_prompts": 8, "grid": {"name": "3mm"},
                      "headline": {"realism": ["a"]}},
            "reference": {"name": "phantom", "content_hash": "x"}, "seed": 0,
            "generator": {"name": "corrupt", "info": {"amount": amount}}, "metrics": entries}


def _e(v, lo, hi, floor=1.0, direction="lower", seconds=2.0):
    return {"value": v, "ci_low": lo, "ci_high": hi, "floor": floor, "floor_ci": [0.8, 1.2],
            "direction": direction, "seconds": seconds, "axis": "realism"}


def test_report_detection_and_monotonicity_rules():
    runs = {"blur": [(f"run{i}", _rec(a, {"a": _e(*vals), "t": _e(*tv, direction="target"),
                                          "h": _e(*hv, direction="higher")}))
                     for i, (a, vals, tv, hv) in enumerate([
                         (0.5, (0.9, 0.7, 1.1), (1.1, 0.95, 1.3), (0.9, 0.8, 1.05)),   # nothing detected
                         (1.0, (1.5, 1.1, 1.9), (0.5, 0.3, 0.7), (0.7, 0.6, 0.95)),   # a; t (below target); h
                         (2.0, (1.4, 1.2, 1.6), (0.2, 0.1, 0.3), (0.5, 0.4, 0.6))])]}  # a improves: not monotone
    rep = build_report(runs)
    a, t, h = (rep["metrics"][k]["blur"] for k in ("a", "t", "h"))
    assert a["detected_at"] == 2 and a["monotone"] is False  # 1.5 -> 1.4 got better
    assert t["detected_at"] == 2 and t["monotone"] is True  # |0.9-1|... distance to the floor grows
    assert h["detected_at"] == 2 and h["monotone"] is True
    assert a["levels"] == [0.5, 1.0, 2.0] and a["ci"][1] == [1.1, 1.9]
    assert rep["floor"]["a"] == {"value": 1.0, "ci": [0.8, 1.2], "direction": "lower", "axis": "realism",
                                 "description": ""}
    assert rep["seconds"]["a"] == 2.0 and rep["headline"] == {"realism": ["a"]}
    assert "blur" in summary(rep)


def test_unknown_corruption_is_an_error_with_a_suggestion():
    with pytest.raises(ValueError, match="did you mean 'blur'"):
        check_corruptions(["blurr"])


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """validate on a small phantom with the quick suite's headline realism metrics (same arguments)."""
    quick = load_suite("quick")
    keys = quick.headline["realism"]
    specs = [{"name": m.name, "key": m.key, "args": m.args} for m in quick.metrics if m.key in keys]
    assert len(specs) == len(keys)
    d = tmp_path_factory.mktemp("validate")
    suite = {"name": "tiny-card", "version": 1, "reference": {"name": "phantom", "args": {"n_subjects": 48, "seed": 3}},
             "grid": "3mm", "n_prompts": 12, "seed": 0, "metrics": specs, "headline": {"realism": keys}}
    (d / "suite.yaml").write_text(yaml.safe_dump(suite))
    path = validate(ValidateConfig(suite=d / "suite.yaml", out=d / "card", corruptions=("noise", "blur", "lowpass"),
                                   quiet=True))
    return json.loads(path.read_text()), keys


def test_headline_realism_metrics_see_noise_blur_lowpass(report):
    rep, keys = report
    assert set(rep["corruptions"]) == {"noise", "blur", "lowpass"}
    for key in keys:
        for kind in ("noise", "blur", "lowpass"):
            cell = rep["metrics"][key][kind]
            assert len(cell["values"]) == len(LEVELS) and cell["monotone"], (key, kind, cell)
            assert cell["detected_at"] is not None and cell["detected_at"] <= 2, (key, kind, cell)
        assert rep["seconds"][key] > 0 and rep["floor"][key]["value"] is not None
    assert rep["n"] == 12 and len(rep["runs"]["blur"]) == 3
