"""Prompt conformance: predictor ceilings on held-out phantom data, ceiling/chance behaviour, caching."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cohorts.atlas import load_priors
from cohorts.captions import parse_caption
from cohorts.grid import GRIDS
from cohorts.phantom import PhantomCohort
from metrics.base import EvalSets
from metrics.conformance import Conformance, predictor_cache_dir
from metrics.functional.conformance import (MEASUREMENTS, ConformanceError, ConformancePredictors, fit_logistic,
                                            fit_ridge, measure, predict_logistic, predict_ridge, pv_fractions,
                                            targets_from_attributes)

GRID = GRIDS["3mm"]
N = 80  # 52 train / 8 val / 20 test; the same cohort is used by tests/test_baselines.py


def atlas_extra(home=None) -> dict:
    """What the runner puts in ``sets.atlas``."""
    pri = load_priors(GRID.voxel_size, GRID.shape, GRID.affine, home=home)
    return {"gm": pri.gm, "wm": pri.wm, "csf": pri.csf, "ventricles": pri.structure_mask("lateral_ventricles"),
            "labels": pri.labels, "voxel_volume_ml": GRID.voxel_volume_ml}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    home = tmp_path_factory.getbasetemp() / "bgb_home"
    cohort = PhantomCohort.get("3mm", home=home, n_subjects=N, seed=0, workers=2, quiet=True)
    train = cohort.split("train")
    held = sorted(cohort.split("test") + cohort.split("val"), key=lambda s: s.subject_id)  # 28 held-out
    return {"cohort": cohort, "train": train, "held": held, "train_vols": cohort.load_volumes(train),
            "held_vols": cohort.load_volumes(held), "atlas": atlas_extra(home),
            "mask": cohort.brain_mask()}


def make_sets(data, generated: np.ndarray, **extra) -> EvalSets:
    held = data["held"]
    ex = {"atlas": data["atlas"], "train_attributes": [s.attributes() for s in data["train"]],
          "cohort_hash": data["cohort"].content_hash} | extra
    return EvalSets(generated=generated, reference=data["held_vols"], floor=data["held_vols"],
                    brain_mask=data["mask"], features=lambda e, s: None, train=data["train_vols"],
                    attributes=[parse_caption(s.caption) for s in held], voxel_size=GRID.voxel_size, **ex)


@pytest.fixture(scope="module")
def at_ceiling(data):
    return Conformance().compute(make_sets(data, data["held_vols"]), seed=0)


# ------------------------------------------------------------------------------------- functional
def test_pv_fractions_split_linearly_between_bracketing_means():
    f = pv_fractions(np.array([0.0, 0.25, 0.5, 0.75, 1.2, -1.0]), (0.0, 0.5, 0.3, 1.0))  # bg, csf, gm, wm
    # sorted means: bg 0, gm 0.3, csf 0.5, wm 1.0
    np.testing.assert_allclose(f.sum(1), 1.0)
    np.testing.assert_allclose(f[0], [1, 0, 0, 0])
    np.testing.assert_allclose(f[1], [1 - 0.25 / 0.3, 0, 0.25 / 0.3, 0])
    np.testing.assert_allclose(f[2], [0, 1, 0, 0])
    np.testing.assert_allclose(f[3], [0, 0.5, 0, 0.5])
    np.testing.assert_allclose(f[4], [0, 0, 0, 1])  # beyond the brightest mean
    np.testing.assert_allclose(f[5], [1, 0, 0, 0])


def test_ridge_recovers_a_linear_map_and_picks_small_alpha():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 3)) * [1, 10, 100]
    y = 2.0 * x[:, 0] - 0.3 * x[:, 1] + 0.01 * x[:, 2] + 5 + rng.normal(0, 0.01, 60)
    m = fit_ridge(x, y)
    np.testing.assert_allclose(predict_ridge(m, x), y, atol=0.05)
    assert m["alpha"] <= 0.1 and m["loo_rmse"] < 0.05
    noise = fit_ridge(x, rng.normal(size=60))  # pure noise: heavy shrinkage
    assert noise["alpha"] >= 10


def test_logistic_separates_and_roundtrips_json():
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(0, 1, (30, 2)), rng.normal(5, 1, (30, 2)), rng.normal([0, 8], 1, (30, 2))])
    y = ["a"] * 30 + ["b"] * 30 + ["c"] * 30
    m = fit_logistic(x, y)
    assert m["train_accuracy"] == 1.0
    assert list(predict_logistic(json.loads(json.dumps(m)), np.array([[0, 0], [5, 5], [0, 8]]))) == ["a", "b", "c"]


def test_targets_from_attributes():
    t = targets_from_attributes([{"modality": "T1", "sex": "F", "age": 40.0,
                                  "volumes": {"hippocampus_left": 4.0, "hippocampus_right": 4.5, "gm": 600.0}},
                                 {"modality": None, "sex": None, "volumes": {"hippocampus_left": 4.0}}])
    assert list(t["modality"]) == ["T1", None]
    np.testing.assert_array_equal(t["sex"], [1.0, np.nan])
    np.testing.assert_array_equal(t["hippocampus"], [8.5, np.nan])
    np.testing.assert_array_equal(t["gm"], [600.0, np.nan])
    assert np.isnan(t["lateral_ventricles"]).all()


# ------------------------------------------------------------------------------------- ceilings
def test_predictor_ceilings_on_held_out_real_data(at_ceiling):
    """The predictors, fitted on 52 training volumes, on 28 held-out real volumes (the floor)."""
    floor = {k: r.floor for k, r in at_ceiling.items()}
    assert floor["modality_accuracy"] >= 0.95
    assert floor["sex_accuracy"] >= 0.85  # head size differs by sex in the phantom
    assert floor["age_r"] >= 0.75 and floor["age_mae"] <= 10.0
    assert floor["lateral_ventricles_r"] >= 0.9
    for k in ("gm", "wm", "icv"):
        assert floor[f"{k}_r"] >= 0.9, (k, floor[f"{k}_r"])
    assert floor["csf_r"] >= 0.75 and floor["hippocampus_r"] >= 0.6
    # MAE well below chance (mean |requested_i - requested_j|)
    for k in ("age", "lateral_ventricles", "gm", "wm", "icv"):
        r = at_ceiling[f"{k}_mae"]
        assert r.floor < 0.5 * r.details["chance"], (k, r.floor, r.details["chance"])


def test_reference_volumes_score_at_ceiling(at_ceiling):
    for key, r in at_ceiling.items():
        assert r.value == pytest.approx(r.floor), key
        assert r.ci_low <= r.value + 1e-9 and r.value <= r.ci_high + 1e-9, key
        assert r.n == 28 or key.startswith(("hippocampus",)) and r.n <= 28


def test_details_carry_requested_and_measured(at_ceiling, data):
    d = at_ceiling["age_r"].details
    assert d["requested"] == [s.age for s in data["held"]]
    assert len(d["measured"]) == 28 and d["measured"] == d["floor_measured"]
    v = at_ceiling["lateral_ventricles_r"].details
    np.testing.assert_allclose(v["requested"], [s.volumes["lateral_ventricles"] for s in data["held"]], atol=0.051)
    assert v["unit"] == "mL"
    m = at_ceiling["modality_accuracy"].details
    assert m["requested_labels"] == [s.modality for s in data["held"]]
    assert "requested" not in m  # categorical: no scatter plot
    assert d["predictor"]["n_train"] == 52


def test_shuffled_references_score_near_chance(data, at_ceiling):
    """Real volumes of the wrong subjects (a random derangement): every correlation collapses, MAEs
    approach chance, modality accuracy drops to about chance."""
    held = data["held"]
    cycle = np.random.default_rng(0).permutation(len(held))
    perm = np.empty(len(held), int)
    perm[cycle] = np.roll(cycle, 1)  # one random cycle: no subject stays in place
    assert (perm != np.arange(len(held))).all()
    res = Conformance().compute(make_sets(data, data["held_vols"][perm]), seed=0)
    mods = [s.modality for s in held]
    expected_mod = np.mean([mods[i] == mods[j] for i, j in enumerate(perm)])
    assert res["modality_accuracy"].value == pytest.approx(expected_mod) and expected_mod < 0.5
    for k in ("age", "lateral_ventricles", "gm", "icv"):
        r = res[f"{k}_r"]
        assert abs(r.value) < 0.45, (k, r.value)
        assert r.floor - r.value > 0.4, (k, r.value, r.floor)
        mae = res[f"{k}_mae"]
        assert mae.value > 0.6 * mae.details["chance"], (k, mae.value, mae.details["chance"])


def test_predictors_are_cached_by_content(data, at_ceiling):
    sets = make_sets(data, data["held_vols"][:3].copy())
    sets.attributes = sets.attributes[:3]
    metric = Conformance()
    pred, info = metric.predictors(sets)
    assert info["from_cache"] is True and info["cache_path"].startswith(str(predictor_cache_dir()))
    key = info["cache_key"]
    # same content, other cohort hash -> other key (refit); no cohort hash -> key from the volume bytes
    _, info2 = metric.predictors(make_sets(data, data["held_vols"], cohort_hash="other"))
    assert info2["cache_key"] != key and info2["from_cache"] is False
    no_hash = make_sets(data, data["held_vols"])
    no_hash.cohort_hash = None
    _, info3 = metric.predictors(no_hash)
    assert info3["cache_key"] not in (key, info2["cache_key"])
    again = ConformancePredictors.from_json(pred.to_json())
    m = measure(data["held_vols"][:4], metric.regions(sets))
    for k, v in pred.predict(m).items():
        assert list(v) == list(again.predict(m)[k]), k


def test_missing_inputs_name_the_fix(data):
    sets = make_sets(data, data["held_vols"])
    sets.atlas = None
    with pytest.raises(ConformanceError, match=r"sets.atlas"):
        Conformance().compute(sets, seed=0)
    sets = make_sets(data, data["held_vols"])
    sets.train = None
    with pytest.raises(ConformanceError, match="train_attributes"):
        Conformance().compute(sets, seed=0)
    with pytest.raises(ValueError, match="unknown structure"):
        Conformance(structures=("amygdala",))


def test_measurement_columns(data):
    from metrics.functional.conformance import atlas_regions

    m = measure(data["held_vols"][:2], atlas_regions(data["atlas"]))
    assert m.shape == (2, len(MEASUREMENTS))
    icv = m[:, MEASUREMENTS.index("icv")]
    truth = np.array([s.volumes["icv"] for s in data["held"][:2]])
    assert np.all(np.abs(icv - truth) / truth < 0.15)
