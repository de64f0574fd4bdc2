"""Histogram distances against scipy, their known responses, and the HistogramDistance metric."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter
from scipy.spatial.distance import jensenshannon
from scipy.stats import ks_2samp, wasserstein_distance

from metrics.base import EvalSets
from metrics.functional.histogram import (bin_edges, consensus_labels, histogram_distances, js_divergence,
                                          ks_hist, ks_values, tissue_masks, volume_histograms,
                                          wasserstein1_hist, wasserstein1_values)
from metrics.histogram import HistogramDistance


@pytest.fixture(scope="module")
def samples():
    rng = np.random.default_rng(0)
    return rng.beta(2, 5, 3000), rng.beta(2.6, 5, 2000)


def test_w1_and_ks_on_values_match_scipy(samples):
    u, v = samples
    assert wasserstein1_values(u, v) == pytest.approx(wasserstein_distance(u, v), rel=1e-12)
    assert ks_values(u, v) == pytest.approx(ks_2samp(u, v).statistic, abs=1e-12)
    # ties and unequal sizes
    a, b = np.round(u[:500], 2), np.round(v[:321], 2)
    assert wasserstein1_values(a, b) == pytest.approx(wasserstein_distance(a, b), rel=1e-12)
    assert ks_values(a, b) == pytest.approx(ks_2samp(a, b).statistic, abs=1e-12)


def test_histogram_distances_match_scipy(samples):
    u, v = samples
    hu = volume_histograms(u.reshape(3, 10, 10, 10)).sum(0)
    hv = volume_histograms(v.reshape(2, 10, 10, 10)).sum(0)
    e = bin_edges(128)
    c = 0.5 * (e[1:] + e[:-1])
    assert wasserstein1_hist(hu, hv) == pytest.approx(wasserstein_distance(c, c, hu, hv), rel=1e-10)
    assert js_divergence(hu, hv) == pytest.approx(jensenshannon(hu, hv, base=2) ** 2, rel=1e-10)
    bu, bv = np.minimum(np.floor(u * 128), 127), np.minimum(np.floor(v * 128), 127)
    assert ks_hist(hu, hv) == pytest.approx(ks_2samp(bu, bv).statistic, abs=1e-12)
    # binning error of W1 is below one bin width
    assert abs(wasserstein1_hist(hu, hv) - wasserstein_distance(u, v)) < 1 / 128
    d = histogram_distances(hu, hu)
    assert d == {"w1": 0.0, "js": 0.0, "ks": 0.0}


def test_volume_histograms_counts_and_clipping():
    rng = np.random.default_rng(1)
    vols = rng.uniform(-0.1, 1.1, (3, 1, 8, 9, 10))
    mask = rng.random((8, 9, 10)) > 0.5
    h = volume_histograms(vols, mask, bins=16)
    for i in range(3):
        ref, _ = np.histogram(np.clip(vols[i, 0][mask], 0, 1 - 1e-12), bins=16, range=(0, 1))
        assert np.array_equal(h[i], ref)
    assert h.sum() == 3 * mask.sum()
    per = np.stack([mask, ~mask, mask])
    assert volume_histograms(vols, per, bins=16)[1].sum() == (~mask).sum()


def _brain(shape, seed):
    rng = np.random.default_rng(seed)
    v = gaussian_filter(rng.random(shape), 1.5)
    v = (v - v.min()) / (v.max() - v.min())
    return (0.2 + 0.6 * v).astype(np.float32)


@pytest.mark.parametrize("kind", ["noise", "shift"])
def test_distances_grow_monotonically(kind):
    base = np.stack([_brain((16, 16, 16), s) for s in range(4)])
    rng = np.random.default_rng(2)
    hb = volume_histograms(base).sum(0)
    prev = {"w1": 0.0, "js": 0.0, "ks": 0.0}
    for level in (0.02, 0.06, 0.15):
        pert = base + (level * rng.standard_normal(base.shape) if kind == "noise" else level)
        d = histogram_distances(volume_histograms(np.clip(pert, 0, 1)).sum(0), hb)
        for k in prev:
            assert d[k] > prev[k], (kind, level, k)
        prev = d


def test_tissue_masks_and_consensus():
    labs = np.zeros((3, 4, 4, 4), np.uint8)
    labs[:, :2] = 2
    labs[:, 2:] = 3
    labs[0, 3] = 1  # one subject disagrees: the majority wins
    cons = consensus_labels(labs)
    assert (cons[:2] == 2).all() and (cons[2:] == 3).all()
    brain = np.ones((4, 4, 4), bool)
    brain[0] = False
    tm = tissue_masks(labs, brain, names={2: "gm", 3: "wm"})
    assert list(tm) == ["gm", "wm"] and tm["gm"].sum() == 16 and tm["wm"].sum() == 32


def _sets(gen, ref, flo, mask, attrs=None, extra=None):
    return EvalSets(generated=gen, reference=ref, floor=flo, brain_mask=mask, features=lambda e, s: None,
                    attributes=attrs or [], voxel_size=3.0, **(extra or {}))


def test_histogram_metric_values_floor_ci_and_tissues():
    shape = (16, 18, 20)
    ref = np.stack([_brain(shape, s) for s in range(6)])[:, None]
    flo = np.stack([_brain(shape, 100 + s) for s in range(6)])[:, None]
    rng = np.random.default_rng(3)
    gen = np.clip(ref + 0.1 * rng.standard_normal(ref.shape), 0, 1).astype(np.float32)
    mask = np.zeros(shape, bool)
    mask[2:-2, 2:-2, 2:-2] = True
    labels = np.where(ref[:, 0] > 0.5, 3, 2).astype(np.uint8)
    labels[:, :2] = 0
    res = HistogramDistance(n_boot=100).compute(_sets(gen, ref, flo, mask, extra={"reference_labels": labels}),
                                                seed=0)
    assert set(res) == {"w1", "js", "ks"}
    hg = volume_histograms(gen, mask).sum(0)
    hr = volume_histograms(ref, mask).sum(0)
    hf = volume_histograms(flo, mask).sum(0)
    expect, expect_floor = histogram_distances(hg, hr), histogram_distances(hf, hr)
    for k, r in res.items():
        assert r.value == pytest.approx(expect[k], rel=1e-12)
        assert r.floor == pytest.approx(expect_floor[k], rel=1e-12)
        assert r.higher_is_better is False and r.ci_low <= r.ci_high
        assert r.value > r.floor
        assert set(r.details["per_tissue"]) == {"gm", "wm"}
    # identical sets -> 0
    same = HistogramDistance(n_boot=20).compute(_sets(ref, ref, ref, mask), seed=0)
    assert all(r.value == 0.0 for r in same.values())
    assert "per_tissue_note" in same["w1"].details


def test_histogram_metric_pairs_within_modality():
    """Generated T2-looking volumes for T1 prompts and vice versa: pooled over modalities the
    histograms agree, per modality they do not — the metric must see the swap."""
    shape = (12, 12, 12)
    t1 = [_brain(shape, s) * 0.5 for s in range(2)]
    t2 = [0.5 + _brain(shape, 10 + s) * 0.5 for s in range(2)]
    ref = np.stack(t1 + t2)[:, None]
    gen = np.stack(t2 + t1)[:, None]
    attrs = [{"modality": "T1"}] * 2 + [{"modality": "T2"}] * 2
    mask = np.ones(shape, bool)
    per_mod = HistogramDistance(n_boot=10).compute(_sets(gen, ref, ref, mask, attrs), seed=0)
    pooled = HistogramDistance(n_boot=10).compute(_sets(gen, ref, ref, mask), seed=0)
    assert pooled["ks"].value == pytest.approx(0.0, abs=1e-12)
    assert per_mod["ks"].value > 0.9
    assert set(per_mod["w1"].details["per_modality"]) == {"t1", "t2"}
