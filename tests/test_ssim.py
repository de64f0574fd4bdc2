"""SSIM / MS-SSIM against independent implementations (scikit-image, MONAI, torchmetrics), and the
PairedSSIM / MSSSIMDiversity metric families."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from metrics.base import EvalSets
from metrics.diversity import MSSSIMDiversity, sample_pairs
from metrics.functional.ssim import STANDARD_MS_SSIM_WEIGHTS, ms_ssim3d, ms_ssim_config, ssim3d
from metrics.ssim import PairedSSIM


def smooth_volume(shape, seed=0, s=2.0):
    rng = np.random.default_rng(seed)
    v = gaussian_filter(rng.random(shape), s)
    return ((v - v.min()) / (v.max() - v.min())).astype(np.float32)


def noisy(v, sd, seed=1):
    rng = np.random.default_rng(seed)
    return np.clip(v + sd * rng.standard_normal(v.shape), 0, 1).astype(np.float32)


def ellipsoid(shape, frac=0.8):
    grids = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    return sum(g ** 2 for g in grids) / frac ** 2 < 1


@pytest.fixture(scope="module")
def pair():
    a = smooth_volume((32, 36, 40))
    return a, noisy(a, 0.1)


# ------------------------------------------------------------------------------ SSIM

def test_ssim_matches_skimage_gaussian(pair):
    from skimage.metrics import structural_similarity
    a, b = pair
    ref = structural_similarity(a.astype(np.float64), b.astype(np.float64), gaussian_weights=True, sigma=1.5,
                                use_sample_covariance=False, data_range=1.0)
    ours = ssim3d(a, b)
    assert ours.shape == (1,)
    assert abs(ours[0] - ref) < 1e-4
    assert 0.2 < ref < 0.95  # a non-trivial pair


def test_ssim_matches_skimage_uniform(pair):
    from skimage.metrics import structural_similarity
    a, b = pair
    ref = structural_similarity(a.astype(np.float64), b.astype(np.float64), win_size=7,
                                use_sample_covariance=False, data_range=1.0)
    assert abs(ssim3d(a, b, kernel="uniform", kernel_size=7)[0] - ref) < 1e-4


def test_ssim_matches_monai(pair):
    from monai.metrics import SSIMMetric
    a, b = pair
    ref = SSIMMetric(spatial_dims=3, data_range=1.0, win_size=11, kernel_sigma=1.5)(
        torch.from_numpy(a)[None, None], torch.from_numpy(b)[None, None])
    assert abs(ssim3d(a, b)[0] - float(ref)) < 1e-4


def test_ssim_vs_torchmetrics_border(pair):
    """torchmetrics averages a reflect-padded full map: equal to crop_border=False, and equal to the
    default (cropped) SSIM once both are averaged inside a mask that stays clear of the border."""
    from torchmetrics.functional.image import structural_similarity_index_measure as tm_ssim
    a, b = pair
    ta, tb = torch.from_numpy(a)[None, None].double(), torch.from_numpy(b)[None, None].double()
    full = float(tm_ssim(ta, tb, data_range=1.0, sigma=1.5, kernel_size=11))
    assert abs(ssim3d(a, b, crop_border=False)[0] - full) < 1e-6
    assert abs(ssim3d(a, b)[0] - full) > 1e-3  # the border really differs
    _, tmap = tm_ssim(ta, tb, data_range=1.0, return_full_image=True)
    mask = ellipsoid(a.shape, 0.55)  # >= 5 voxels from every face
    assert not mask[:5].any() and not mask[-5:].any()
    tm_in_mask = float(tmap[0, 0][torch.from_numpy(mask)].mean())
    assert abs(ssim3d(a, b, mask=mask)[0] - tm_in_mask) < 1e-6


def test_ssim_identical_is_one_and_noise_monotone(pair):
    a, _ = pair
    assert ssim3d(a, a)[0] == pytest.approx(1.0, abs=1e-12)
    vals = [ssim3d(a, noisy(a, sd))[0] for sd in (0.02, 0.08, 0.2)]
    assert vals[0] > vals[1] > vals[2]


def test_ssim_batch_order_and_shapes(pair):
    a, b = pair
    c = noisy(a, 0.2, seed=5)
    x = np.stack([a, a, b])[:, None]
    y = np.stack([b, c, c])[:, None]
    v = ssim3d(x, y)
    perm = [2, 0, 1]
    assert np.allclose(ssim3d(x[perm], y[perm]), v[perm], atol=1e-12)
    assert np.allclose(v, [ssim3d(x[i, 0], y[i, 0])[0] for i in range(3)], atol=1e-12)
    assert np.allclose(ssim3d(torch.from_numpy(x), torch.from_numpy(y)), v, atol=1e-12)
    vals, smap = ssim3d(x, y, return_map=True)
    assert smap.shape == (3, 1, 22, 26, 30)
    assert np.allclose(smap.flatten(1).mean(1).numpy(), vals)
    with pytest.raises(ValueError, match="channel"):
        ssim3d(x[:, 0], y[:, 0])


def test_ssim_mask_semantics(pair):
    a, b = pair
    full = np.ones(a.shape, bool)
    assert ssim3d(a, b, mask=full)[0] == pytest.approx(ssim3d(a, b)[0], abs=1e-12)
    mask = ellipsoid(a.shape, 0.7)
    _, smap = ssim3d(a, b, return_map=True)
    expect = float(smap[0, 0][torch.from_numpy(mask[5:-5, 5:-5, 5:-5])].mean())
    assert ssim3d(a, b, mask=mask)[0] == pytest.approx(expect, abs=1e-12)
    # per-volume masks
    x, y = np.stack([a, a])[:, None], np.stack([b, b])[:, None]
    m2 = np.stack([mask, full])
    v = ssim3d(x, y, mask=m2)
    assert v[0] == pytest.approx(expect, abs=1e-12) and v[1] == pytest.approx(ssim3d(a, b)[0], abs=1e-12)


# ------------------------------------------------------------------------------ MS-SSIM

def test_ms_ssim_config_rule():
    c = ms_ssim_config((48, 64, 56))
    assert (c.scales, c.kernel_size) == (4, 5)
    assert c.reduced and min(c.coarsest_shape) >= c.kernel_size
    w4 = np.array(STANDARD_MS_SSIM_WEIGHTS[:4])
    assert np.allclose(c.weights, w4 / w4.sum()) and abs(sum(c.weights) - 1) < 1e-12
    assert c.sigma == pytest.approx(1.5 * 5 / 11)
    big = ms_ssim_config((176, 176, 176))
    assert (big.scales, big.kernel_size, big.weights, big.reduced) == (5, 11, STANDARD_MS_SSIM_WEIGHTS, False)
    assert ms_ssim_config((96, 96, 96)).kernel_size == 5 and ms_ssim_config((96, 96, 96)).scales == 5
    assert ms_ssim_config((160, 160, 160)).kernel_size == 9
    assert ms_ssim_config((20, 20, 20)).scales == 3
    with pytest.raises(ValueError, match="coarsest"):
        ms_ssim_config((48, 48, 48), scales=5, kernel_size=11)
    with pytest.raises(ValueError):
        ms_ssim_config((4, 4, 4))


def test_ms_ssim_matches_monai_auto_config():
    from monai.metrics.regression import compute_ms_ssim
    a = smooth_volume((48, 64, 56), seed=3)
    x = np.stack([a, a])[:, None]
    y = np.stack([noisy(a, 0.05), noisy(a, 0.15)])[:, None]
    vals, cfg = ms_ssim3d(x, y)
    assert (cfg.scales, cfg.kernel_size) == (4, 5)
    ref = compute_ms_ssim(torch.from_numpy(x).double(), torch.from_numpy(y).double(), 3, kernel_size=cfg.kernel_size,
                          kernel_sigma=cfg.sigma, weights=cfg.weights)
    assert np.allclose(vals, ref.numpy().ravel(), atol=1e-6)
    assert vals[0] > vals[1]


@pytest.mark.parametrize("shape,scales", [((48, 48, 48), 3), ((80, 80, 80), 5)])
def test_ms_ssim_matches_torchmetrics(shape, scales):
    """torchmetrics averages the coarsest-scale SSIM over the reflect-padded map; all else is equal, so
    torchmetrics = ours * (ssim_full / ssim_valid at the coarsest scale) ** w_M, exactly."""
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure as tm_ms
    a = smooth_volume(shape, seed=4)
    b = noisy(a, 0.1)
    vals, cfg = ms_ssim3d(a, b, scales=scales, kernel_size=5)
    assert cfg.scales == scales and len(cfg.weights) == scales
    ta, tb = torch.from_numpy(a)[None, None].double(), torch.from_numpy(b)[None, None].double()
    tm = float(tm_ms(ta, tb, data_range=1.0, kernel_size=5, sigma=cfg.sigma, betas=cfg.weights, normalize="relu"))
    ca, cb = ta, tb
    for _ in range(scales - 1):
        ca, cb = F.avg_pool3d(ca, 2), F.avg_pool3d(cb, 2)
    s_valid = ssim3d(ca, cb, sigma=cfg.sigma, kernel_size=5)[0]
    s_full = ssim3d(ca, cb, sigma=cfg.sigma, kernel_size=5, crop_border=False)[0]
    assert tm == pytest.approx(vals[0] * (s_full / s_valid) ** cfg.weights[-1], rel=1e-6)
    assert abs(tm - vals[0]) < 0.05


def test_ms_ssim_identity_noise_and_small_volumes():
    a = smooth_volume((48, 64, 56), seed=7)
    res = ms_ssim3d(a, a)
    assert res.values[0] == pytest.approx(1.0, abs=1e-12)
    assert res.config.to_dict()["scales"] == 4
    v = [ms_ssim3d(a, noisy(a, sd)).values[0] for sd in (0.02, 0.08, 0.2)]
    assert v[0] > v[1] > v[2]
    tiny = smooth_volume((12, 14, 16), seed=8)
    r = ms_ssim3d(tiny, noisy(tiny, 0.1))
    assert r.config.scales == 2 and 0 < r.values[0] < 1


# ------------------------------------------------------------------------------ metric families

def _sets(gen, ref, flo, mask, attrs=None):
    return EvalSets(generated=gen, reference=ref, floor=flo, brain_mask=mask, features=lambda e, s: None,
                    attributes=attrs or [], voxel_size=3.0)


def test_paired_ssim_metric():
    shape = (24, 28, 26)
    ref = np.stack([smooth_volume(shape, seed=i) for i in range(6)])[:, None]
    gen = np.stack([noisy(r[0], 0.05, seed=10 + i) for i, r in enumerate(ref)])[:, None]
    flo = np.stack([smooth_volume(shape, seed=100 + i) for i in range(6)])[:, None]
    mask = ellipsoid(shape)
    m = PairedSSIM()
    r = m.compute(_sets(gen, ref, flo, mask), seed=0)
    expect = ssim3d(gen, ref, mask=mask)
    assert r.value == pytest.approx(expect.mean(), abs=1e-12)
    assert r.higher_is_better and r.n == 6
    assert r.ci_low <= r.value <= r.ci_high
    assert r.floor == pytest.approx(ssim3d(flo, ref, mask=mask).mean(), abs=1e-12)
    assert r.value > r.floor
    assert r.details["kernel_size"] == 11 and len(r.details["per_sample"]) == 6
    r2 = PairedSSIM(in_mask=False).compute(_sets(gen, ref, flo, mask), seed=0)
    assert r2.value == pytest.approx(ssim3d(gen, ref).mean(), abs=1e-12)


def test_sample_pairs_same_group_and_seeded():
    groups = ["t1", "t2"] * 10
    p = sample_pairs(20, 30, seed=1, groups=groups)
    assert p.shape == (30, 2) and (p[:, 0] < p[:, 1]).all()
    assert all(groups[i] == groups[j] for i, j in p)
    assert len({tuple(x) for x in p}) == 30
    assert np.array_equal(p, sample_pairs(20, 30, seed=1, groups=groups))
    assert sample_pairs(4, 100, seed=0).shape == (6, 2)


def test_ms_ssim_diversity_metric():
    shape = (24, 24, 24)
    ref = np.stack([smooth_volume(shape, seed=i) for i in range(6)])[:, None]
    base = smooth_volume(shape, seed=50)
    gen = np.stack([noisy(base, 0.01, seed=i) for i in range(6)])[:, None]  # mode collapse
    attrs = [{"modality": m} for m in ("T1", "T2", "T1", "T2", "T1", "T2")]
    r = MSSSIMDiversity(max_pairs=50).compute(_sets(gen, ref, ref, np.ones(shape, bool), attrs), seed=0)
    assert r.details["n_pairs"] == 6 and r.details["pairing"] == "same modality"
    assert r.value > 0.9 > r.floor  # collapsed samples look alike; real ones do not
    assert r.details["reference"] == r.floor and r.higher_is_better is False
    assert r.details["ms_ssim_config"]["scales"] == 3
    pairs = sample_pairs(6, 50, seed=0, groups=[a["modality"].lower() for a in attrs])
    vals, _ = ms_ssim3d(ref[pairs[:, 0]], ref[pairs[:, 1]])
    assert r.floor == pytest.approx(vals.mean(), abs=1e-12)
