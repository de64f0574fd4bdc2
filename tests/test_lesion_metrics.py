"""Lesion and deep grey-matter measurements and lesion conformance, against the ``phantom-ms`` ground truth."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from cohorts.atlas import LESION_ZONES, atlas_on_grid
from cohorts.captions import parse_caption
from cohorts.grid import get_grid
from cohorts.subject import Cohort
from metrics.base import EvalSets
from metrics.functional.lesions import (ZONES, deep_grey_regions, deep_grey_volumes, lesion_summary,
                                        new_lesion_count, persistence, zone_shares)
from metrics.lesions import LesionConformance
from tests._helpers import registered_cohort

N = 40  # 14 subjects outside the train split


@pytest.fixture(scope="module")
def ms(tmp_path_factory) -> Cohort:
    yield from registered_cohort(tmp_path_factory, "phantom-ms", n_subjects=N, seed=0, workers=2)


@pytest.fixture(scope="module")
def atlas():
    return atlas_on_grid(get_grid("3mm"))


def _blob(shape, centre, r=1):
    f = np.zeros(shape, np.float32)
    x, y, z = centre
    f[x - r:x + r + 1, y - r:y + r + 1, z - r:z + r + 1] = 1.0
    return f


def test_zones_partition_the_brain_in_metric_order(atlas):
    assert ZONES == LESION_ZONES
    z = atlas["lesion_zones"]
    assert set(np.unique(z)) == {0, 1, 2, 3, 4}
    assert ((z > 0) == (atlas["labels"] > 0)).all()
    # periventricular voxels are near the ventricles, deep ones far from them
    from scipy import ndimage as ndi

    d = ndi.distance_transform_edt(~atlas["ventricles"]) * 3.0
    assert d[z == 1].max() <= 9.0 and d[z == 3].min() > 9.0


def test_summary_counts_classes_and_volume_of_known_maps(atlas):
    z = atlas["lesion_zones"]
    shape = z.shape
    # a 27-voxel lesion well inside each of two zones (the voxel whose 3x3x3 cube is all of one zone)
    centres = {}
    for code in (1, 4):
        pure = np.ones(shape, bool)
        for dx in (-1, 0, 1):
            for dy in (-1, 0, 1):
                for dz in (-1, 0, 1):
                    pure &= np.roll(z == code, (dx, dy, dz), axis=(0, 1, 2))
        centres[code] = tuple(np.argwhere(pure)[len(np.argwhere(pure)) // 2])
    frac = _blob(shape, centres[1]) + _blob(shape, centres[4]) * 0.9
    s = lesion_summary(frac, z, 0.027)
    assert s["count"] == 2 and s["periventricular"] == 1 and s["infratentorial"] == 1
    assert s["volume_ml"] == pytest.approx((27 + 27 * 0.9) * 0.027, rel=1e-6)
    assert zone_shares(s).tolist() == [0.5, 0.0, 0.0, 0.5]
    # follow-up: one lesion grows by a voxel (enlarging, not new), one appears far away
    later = frac.copy()
    later[centres[1][0] + 2, centres[1][1], centres[1][2]] = 1.0
    later += _blob(shape, (shape[0] // 2, shape[1] // 2, shape[2] - 8), 0)
    assert new_lesion_count(frac, later) == 1
    assert persistence(frac, later) == 1.0 and persistence(later, frac) < 1.0
    assert np.isnan(persistence(np.zeros(shape), later))


def test_ground_truth_masks_reproduce_the_captions(ms, atlas):
    """The measurement on the ground-truth lesion maps (every voxel with lesion tissue): counts exactly,
    volumes to rounding, classes mostly."""
    agree = []
    for s in ms.subjects:
        want = parse_caption(s.caption).get("lesions") or {}
        got = lesion_summary(ms.load_lesion_mask(s), atlas["lesion_zones"], atlas["voxel_volume_ml"], threshold=0.0)
        assert got["count"] == want.get("count", 0)
        assert got["volume_ml"] == pytest.approx(want.get("volume", 0.0), abs=0.051)
        if got["count"]:
            agree.append(float(np.minimum(zone_shares(got), zone_shares(want)).sum()))
    assert np.mean(agree) > 0.75  # the subject's warp moves some lesions across a zone border


def test_deep_grey_sums_shrink_with_the_structure(ms, atlas):
    """Within one volume, the thalamus sum falls when thalamic voxels become white matter."""
    regions = deep_grey_regions(atlas)
    s = next(x for x in ms.subjects if x.modality == "T1")
    v = ms.load_volume(s)
    wm_level = np.median(v[ndi.binary_erosion(atlas["wm"] > 0.9)])
    thin = v.copy()
    core = ndi.binary_erosion(atlas["thalamus"])
    thin[core] = wm_level  # the inner thalamus replaced by white matter
    before, after = deep_grey_volumes(np.stack([v, thin])[:, None], regions)
    replaced = core.sum() * atlas["voxel_volume_ml"]
    # at most the replaced voxels are lost, most of them (they were partly grey matter already)
    assert 0.4 * replaced < before[0] - after[0] <= replaced
    assert after[1] == pytest.approx(before[1], rel=0.01)  # the caudate untouched (the GM median moves a little)


def _sets(ms, atlas, order=None):
    test = [s for s in ms.subjects if s.split != "train"]
    train = [s for s in ms.subjects if s.split == "train"]
    vols = np.stack([ms.load_volume(s) for s in test])[:, None]
    attrs = [parse_caption(s.caption) for s in test]
    gen = vols if order is None else vols[order]
    return EvalSets(generated=gen, reference=vols, floor=vols, brain_mask=ms.brain_mask(), features=None,
                    attributes=attrs, atlas=atlas, train=np.stack([ms.load_volume(s) for s in train])[:, None],
                    train_attributes=[s.attributes() for s in train])


def test_lesion_conformance_of_real_volumes_equals_its_floor(ms, atlas):
    out = LesionConformance(n_boot=200).compute(_sets(ms, atlas), seed=0)
    assert {"count_r", "count_mae", "volume_r", "volume_mae", "location_accuracy", "thalamus_r", "thalamus_mae",
            "caudate_r", "caudate_mae"} <= set(out)
    for k, r in out.items():
        assert r.value == pytest.approx(r.floor), k
        assert r.n >= 3 and r.ci_low <= r.value <= r.ci_high, k
    assert out["volume_r"].value > 0.8 and out["count_r"].value > 0.6


def test_lesion_conformance_drops_when_volumes_ignore_the_prompt(ms, atlas):
    n = len([s for s in ms.subjects if s.split != "train"])
    shuffled = np.random.default_rng(1).permutation(n)
    real = LesionConformance(n_boot=200).compute(_sets(ms, atlas), seed=0)
    wrong = LesionConformance(n_boot=200).compute(_sets(ms, atlas, shuffled), seed=0)
    assert wrong["volume_r"].value < real["volume_r"].value - 0.4
    assert wrong["volume_mae"].value > real["volume_mae"].value
    assert wrong["volume_r"].floor == pytest.approx(real["volume_r"].floor)


@pytest.fixture(scope="module")
def ms_records(ms, tmp_path_factory):
    import json

    from bench.runner import RunConfig, run

    suite = tmp_path_factory.mktemp("suite") / "ms-tiny.yaml"
    suite.write_text("include: ms-quick\nname: ms-tiny\nreference: {name: phantom-ms, args: {n_subjects: 40, seed: 0}}\n"
                     "n_prompts: 10\nmetrics:\n  - {name: lesion_conformance, args: {n_boot: 200}}\n"
                     "headline:\n  conformance: [lesion_conformance/count_r, lesion_conformance/volume_r]\n")
    out = tmp_path_factory.mktemp("runs")
    runs = {"clean": ("corrupt", {"kind": "noise", "level": 0}), "template": ("template", {})}
    return {k: json.loads(run(RunConfig(generator=g, generator_args=a, suite=suite, out=out, quiet=True)).read_text())
            for k, (g, a) in runs.items()}


def test_ms_suite_records_lesion_conformance(ms_records):
    clean, template = ms_records["clean"]["metrics"], ms_records["template"]["metrics"]
    assert ms_records["clean"]["status"] == "complete" and ms_records["clean"]["reference"]["name"] == "phantom-ms"
    for k in ("count_r", "volume_r", "volume_mae", "thalamus_r"):
        r = clean[f"lesion_conformance/{k}"]
        assert r["value"] == pytest.approx(r["floor"]), k  # held-out real volumes score the floor
        assert r["axis"] == "conformance"
    # the mean training image has no lesions of its own: its lesion counts ignore the prompts
    assert template["lesion_conformance/count_r"]["value"] < clean["lesion_conformance/count_r"]["value"]
    assert template["lesion_conformance/volume_mae"]["value"] > clean["lesion_conformance/volume_mae"]["value"]
