"""`resample_centred`: moving volumes between the benchmark's atlas grids (all share one centre).

References: nilearn's ``resample_img`` with the grids' affines (linear interpolation) and, for the
anti-aliased downsampling, scipy's Gaussian filter before it.
"""

import numpy as np
import pytest
import torch
from scipy import ndimage

from cohorts.grid import get_grid
from metrics.features.base import resample_centred


def _nilearn_linear(vol: np.ndarray, src, dst) -> np.ndarray:
    nib = pytest.importorskip("nibabel")
    from nilearn.image import resample_img

    img = nib.Nifti1Image(vol.astype(np.float64), src.affine)
    out = resample_img(img, target_affine=dst.affine, target_shape=dst.shape, interpolation="linear",
                       force_resample=True, copy_header=True, fill_value=0.0)
    return np.asarray(out.get_fdata(), dtype=np.float64)


@pytest.fixture(scope="module")
def smooth_3mm() -> np.ndarray:
    g = get_grid("3mm")
    rng = np.random.default_rng(0)
    vol = ndimage.gaussian_filter(rng.random(g.shape), 2.0)
    return ((vol - vol.min()) / (vol.max() - vol.min())).astype(np.float32)


def test_upsampling_matches_nilearn_linear_with_the_grid_affines(smooth_3mm):
    src, dst = get_grid("3mm"), get_grid("2mm")
    out = resample_centred(torch.from_numpy(smooth_3mm)[None, None], src.voxel_size, dst.voxel_size, dst.shape)
    assert out.shape == (1, 1, *dst.shape) and out.dtype == torch.float32
    ref = _nilearn_linear(smooth_3mm, src, dst)
    # compare where the target voxel lies inside the source's voxel centres (edges differ in fill policy)
    inside = ref != 0
    inner = np.zeros(dst.shape, bool)
    inner[2:-2, 2:-2, 2:-2] = True
    np.testing.assert_allclose(out[0, 0].numpy()[inside & inner], ref[inside & inner], atol=1e-5)


def test_downsampling_is_gaussian_antialiased_then_linear(smooth_3mm):
    src, dst = get_grid("2mm"), get_grid("3mm")
    vol = resample_centred(torch.from_numpy(smooth_3mm)[None, None], 3.0, 2.0, src.shape)[0, 0].numpy()
    vol = vol + np.random.default_rng(1).normal(0, 0.05, vol.shape).astype(np.float32)  # high frequencies
    out = resample_centred(torch.from_numpy(vol)[None, None], src.voxel_size, dst.voxel_size, dst.shape)[0, 0].numpy()
    sigma = np.sqrt(1.5**2 - 1) / (2 * np.sqrt(2 * np.log(2)))
    blurred = ndimage.gaussian_filter(vol.astype(np.float64), sigma, mode="constant", truncate=4.0)
    ref = _nilearn_linear(blurred, src, dst)
    inner = np.zeros(dst.shape, bool)
    inner[2:-2, 2:-2, 2:-2] = True
    np.testing.assert_allclose(out[inner], ref[inner], atol=1e-5)
    # the anti-aliasing removes most of the added noise that plain interpolation would keep
    plain = _nilearn_linear(vol, src, dst)
    clean = _nilearn_linear(resample_centred(torch.from_numpy(smooth_3mm)[None, None], 3.0, 2.0, src.shape)[0, 0]
                            .numpy(), src, dst)
    assert np.std((out - clean)[inner]) < 0.7 * np.std((plain - clean)[inner])


def test_same_grid_is_identity_and_a_round_trip_keeps_smooth_content(smooth_3mm):
    x = torch.from_numpy(smooth_3mm)[None, None]
    assert resample_centred(x, 3.0, 3.0, x.shape[2:]) is x
    up = resample_centred(x, 3.0, 1.0, get_grid("1mm").shape)
    back = resample_centred(up, 1.0, 3.0, get_grid("3mm").shape)[0, 0].numpy()
    inner = (slice(3, -3),) * 3
    assert np.abs(back[inner] - smooth_3mm[inner]).mean() < 0.01


def test_bad_arguments_are_named():
    x = torch.zeros(1, 1, 4, 4, 4)
    with pytest.raises(ValueError, match="target_shape"):
        resample_centred(x, 1.0, 2.0, (2, 2))
    with pytest.raises(ValueError, match="voxel sizes"):
        resample_centred(x, 0.0, 2.0, (2, 2, 2))
