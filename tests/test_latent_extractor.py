"""`ldm3d-latent`: a pinned ldm3d autoencoder's latent space as a cached feature extractor."""

import numpy as np

from bench.registry import extractors
from generators.ldm3d.checkpoint import LATENT_YARDSTICK, SHIPPED, read_metadata


def test_ldm3d_latent_extractor_is_deterministic_and_batch_invariant():
    ex = extractors.get("ldm3d-latent")(batch_size=2)
    vols = np.random.default_rng(0).random((3, 1, 48, 64, 56)).astype(np.float32)
    a = ex(vols, 3.0)
    b = extractors.get("ldm3d-latent")(batch_size=3)(vols[::-1].copy(), 3.0)[::-1]
    assert a.shape == (3, ex.dim) and np.isfinite(a).all()
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    fp = ex.fingerprint()
    assert fp["checkpoint"] == str(LATENT_YARDSTICK) != str(SHIPPED)  # a new ldm3d release keeps the yardstick
    assert fp["encoder"] == "ldm3d-latent:61197d7e8fb61799f7632ce190a79d060cbdfa11b69a80fb91a5a09fa29bb3e4:pool3x4x4"
    assert read_metadata(LATENT_YARDSTICK)["config"]["autoencoder"]["latent_channels"] * 48 == ex.dim


def test_volumes_on_another_grid_are_resampled_onto_the_model_grid():
    """A 2 mm suite uses the same latent yardstick: the same phantom subject synthesised natively at 2 mm
    and at 3 mm lands at (nearly) the same point, much closer than to any other subject."""
    from cohorts.phantom import synthesize

    ex = extractors.get("ldm3d-latent")(batch_size=3)
    idx = [1, 2, 3]
    v3 = np.stack([synthesize(0, i, "3mm").image[None] for i in idx]).astype(np.float32)
    v2 = np.stack([synthesize(0, i, "2mm").image[None] for i in idx]).astype(np.float32)
    f3, f2 = ex(v3, 3.0), ex(v2, 2.0)
    assert f2.shape == f3.shape == (3, ex.dim) and np.isfinite(f2).all()
    d = np.linalg.norm(f2[:, None] - f3[None], axis=-1)  # (2 mm subject, 3 mm subject)
    same, other = np.diag(d), d[~np.eye(3, dtype=bool)].reshape(3, 2).min(1)
    assert (same < 0.5 * other).all(), d
    assert "resampled" in ex.fingerprint()["preprocessing"]
