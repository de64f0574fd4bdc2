"""Spectral sharpness: the functional core against scipy's FFT and a closed form, the metric's known
responses to blur, noise and scale, and the corruption ladder that probes it."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.fft

from generators.corrupt import CORRUPTIONS, apply_corruption
from metrics.base import EvalSets
from metrics.functional.spectrum import radial_power_spectrum, spectral_distance_db, spectrum_bins
from metrics.sharpness import SpectralSharpness


def _blob_volumes(n: int, shape=(24, 28, 24), seed: int = 0) -> np.ndarray:
    """Smooth random 'anatomy' with fine texture, in [0, 1]."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    out = np.empty((n, 1, *shape), np.float32)
    for i in range(n):
        x = gaussian_filter(rng.standard_normal(shape), 1.0)
        x = (x - x.min()) / (x.max() - x.min())
        out[i, 0] = x
    return out


def test_numpy_and_scipy_fft_agree():
    v = _blob_volumes(2)
    a, ca = radial_power_spectrum(v, voxel_size=2.0, n_bins=8, fft=np.fft.fftn)
    b, cb = radial_power_spectrum(v, voxel_size=2.0, n_bins=8, fft=scipy.fft.fftn)
    np.testing.assert_allclose(a, b, atol=1e-9)
    np.testing.assert_allclose(ca, cb)
    assert ca[-1] < 0.25  # Nyquist of 2 mm voxels is 0.25 cycles/mm


def test_bins_exclude_dc_and_corners():
    idx, centres = spectrum_bins((16, 16, 16), 1.0, 4)
    assert idx[0, 0, 0] == -1  # DC
    assert idx[8, 8, 8] == -1  # |k| = sqrt(3)/2 > Nyquist
    assert idx[1, 0, 0] == 0 and idx[7, 0, 0] == 3  # 1/16 and 7/16 cycles/voxel
    assert set(np.unique(idx)) == {-1, 0, 1, 2, 3}
    np.testing.assert_allclose(centres, [0.0625, 0.1875, 0.3125, 0.4375])


def test_gaussian_transfer_function_closed_form():
    """A Gaussian filter of sigma s mm applied in k-space multiplies the power by exp(-(2 pi s f)^2):
    the dB profile drops by 10 log10(e) (2 pi s)^2 f^2, up to the normalising constant."""
    shape, h, s = (48, 48, 48), 2.0, 1.5
    rng = np.random.default_rng(1)
    white = rng.standard_normal(shape)
    k = np.meshgrid(*[np.fft.fftfreq(n, d=h) for n in shape], indexing="ij")
    f2 = sum(x * x for x in k)
    blurred = np.real(np.fft.ifftn(np.fft.fftn(white) * np.exp(-0.5 * (2 * np.pi * s) ** 2 * f2)))
    p, c = radial_power_spectrum(np.stack([white, blurred])[:, None], voxel_size=h, n_bins=16)
    diff = p[1] - p[0]
    expected = -10 * np.log10(np.e) * (2 * np.pi * s) ** 2 * c ** 2
    ok = c < 0.6 * c[-1]  # beyond that the attenuation leaves only rounding noise
    # the normalisation shifts every shell by one constant: compare after removing it
    resid = (diff - expected)[ok]
    assert np.isfinite(resid).all() and np.ptp(resid) < 0.1, resid


def test_scale_invariant_and_distance():
    v = _blob_volumes(3)
    p1, _ = radial_power_spectrum(v, voxel_size=3.0)
    p2, _ = radial_power_spectrum(0.5 * v, voxel_size=3.0)
    np.testing.assert_allclose(p1, p2, atol=1e-9)
    np.testing.assert_allclose(spectral_distance_db(p1, p1[0]), [0, *spectral_distance_db(p1[1:], p1[0])])


def _sets(gen, ref, floor, mask):
    return EvalSets(generated=gen, reference=ref, floor=floor, brain_mask=mask,
                    features=lambda e, s: None, attributes=[{"modality": "T1"}] * len(gen), voxel_size=3.0)


def test_metric_responses_blur_noise_copy():
    ref = _blob_volumes(8, seed=2)
    floor = _blob_volumes(8, seed=3)
    mask = np.ones(ref.shape[2:], bool)
    rng = np.random.default_rng(0)
    metric = SpectralSharpness(n_boot=200)
    copy = metric.compute(_sets(ref, ref, floor, mask), seed=0)
    assert copy.value < copy.floor  # the references themselves sit on the target
    blurred = np.stack([[apply_corruption(x[0], "blur", 1.0, mask=mask, rng=rng)] for x in ref])
    res = metric.compute(_sets(blurred, ref, floor, mask), seed=0)
    assert res.ci_low > res.floor_ci[1]  # detected
    assert res.details["hf_excess_db"] < -3  # blur removes high frequencies
    noisy = np.stack([[apply_corruption(x[0], "noise", 0.1, mask=mask, rng=rng)] for x in ref])
    res_n = metric.compute(_sets(noisy, ref, floor, mask), seed=0)
    assert res_n.details["hf_excess_db"] > 1 and res_n.ci_low > res_n.floor
    assert res.ci_low <= res.value <= res.ci_high


@pytest.mark.parametrize("kind", [k for k in CORRUPTIONS if k not in ("contrast_swap", "train_copy")])
def test_corruptions_grow_with_level_and_stay_in_range(kind):
    v = _blob_volumes(1, seed=4)[0, 0]
    mask = np.zeros(v.shape, bool)
    mask[3:-3, 3:-3, 3:-3] = True
    errs = []
    for level in CORRUPTIONS[kind].levels:
        out = apply_corruption(v, kind, level, mask=mask, rng=np.random.default_rng(0))
        assert out.shape == v.shape and out.dtype == np.float32
        assert out.min() >= 0 and out.max() <= 1
        errs.append(float(np.abs(out - v).mean()))
    assert errs[0] > 0
    assert errs == sorted(errs), (kind, errs)  # a ladder: each level moves the volume further


def test_corruption_is_seeded():
    v = _blob_volumes(1, seed=5)[0, 0]
    mask = np.ones(v.shape, bool)
    a = apply_corruption(v, "deformation", 2.0, mask=mask, rng=np.random.default_rng(7))
    b = apply_corruption(v, "deformation", 2.0, mask=mask, rng=np.random.default_rng(7))
    c = apply_corruption(v, "deformation", 2.0, mask=mask, rng=np.random.default_rng(8))
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 0


def test_brain_window_is_a_soft_eroded_mask():
    from metrics.functional.spectrum import brain_window

    shape = (32, 32, 32)
    zz, yy, xx = np.indices(shape)
    mask = (zz - 16) ** 2 / 144 + (yy - 16) ** 2 / 100 + (xx - 16) ** 2 / 121 <= 1
    w = brain_window(mask, erode=2, taper=1.5)
    assert w.min() >= 0 and w.max() <= 1
    assert w[16, 16, 16] > 0.999  # deep inside: untouched
    assert w[~mask].max() < 0.2  # outside the brain: nearly zero
    np.testing.assert_array_equal(brain_window(mask, erode=0, taper=0), mask.astype(float))
    with pytest.raises(ValueError, match="empty after eroding"):
        brain_window(np.zeros(shape, bool) | (zz == 3), erode=2)
