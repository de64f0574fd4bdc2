"""`ldm3d-latent`: the shipped autoencoder's latent space as a cached feature extractor."""

import numpy as np

from bench.registry import extractors
from generators.ldm3d.generator import SHIPPED


def test_ldm3d_latent_extractor_is_deterministic_and_batch_invariant():
    ex = extractors.get("ldm3d-latent")(batch_size=2)
    vols = np.random.default_rng(0).random((3, 1, 48, 64, 56)).astype(np.float32)
    a = ex(vols, 3.0)
    b = extractors.get("ldm3d-latent")(batch_size=3)(vols[::-1].copy(), 3.0)[::-1]
    assert a.shape == (3, ex.dim) and np.isfinite(a).all()
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    fp = ex.fingerprint()
    assert str(SHIPPED) in fp["checkpoint"] or fp["checkpoint"].endswith(".safetensors")
    assert fp["encoder"].startswith("ldm3d-latent:") and len(fp["encoder"].split(":")[1]) == 64
