"""Fréchet distance: agreement with pytorch-fid's published formula and torchmetrics' FID math."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from scipy import linalg

from metrics.functional.frechet import (feature_statistics, frechet_distance, frechet_distance_from_features,
                                        frechet_distance_infinity, frechet_distance_infinity_fit)


def pytorch_fid_reference(mu1, sigma1, mu2, sigma2, eps=1e-6):
    """pytorch-fid's ``calculate_frechet_distance`` (mseitzer/pytorch-fid, Dougal Sutherland's stable
    version), re-implemented from the published formula: sqrtm of sigma1·sigma2, an ``eps`` offset
    on the diagonals when the result is not finite, imaginary part discarded."""
    diff = mu1 - mu2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        covmean = linalg.sqrtm(sigma1.dot(sigma2))
        if not np.isfinite(covmean).all():
            offset = np.eye(sigma1.shape[0]) * eps
            covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        assert np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3)
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def torchmetrics_reference(mu1, sigma1, mu2, sigma2):
    from torchmetrics.image.fid import _compute_fid

    t = lambda a: torch.from_numpy(np.asarray(a, dtype=np.float64))  # noqa: E731
    return float(_compute_fid(t(mu1), t(sigma1), t(mu2), t(sigma2)))


def _features(n, d, seed, shift=0.0, scale=1.0):
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(d, d)) / np.sqrt(d)  # correlated features
    return (rng.normal(size=(n, d)) @ mix) * scale + shift


def test_feature_statistics_matches_numpy():
    x = _features(40, 8, 0)
    mu, sigma = feature_statistics(x)
    np.testing.assert_allclose(mu, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(x, rowvar=False, ddof=1), rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("n,d", [(200, 64), (50, 128)])
def test_matches_pytorch_fid_and_torchmetrics(n, d):
    x = _features(n, d, 1)
    y = _features(n, d, 2, shift=0.1, scale=1.3)
    s1, s2 = feature_statistics(x), feature_statistics(y)
    ours = frechet_distance(*s1, *s2)
    ref_pf = pytorch_fid_reference(s1[0], s1[1], s2[0], s2[1])
    ref_tm = torchmetrics_reference(s1[0], s1[1], s2[0], s2[1])
    assert np.isfinite(ours)
    assert abs(ours - ref_pf) / ref_pf < 1e-6
    assert abs(ours - ref_tm) / ref_tm < 1e-6
    for method in ("gram", "covariance", "auto"):
        v = frechet_distance_from_features(x, y, method=method)
        assert abs(v - ours) / ours < 1e-9, method


def test_rank_deficient_is_stable():
    # N=50 < dim=128: both covariances have rank 49; the two exact routes agree to rounding
    x = _features(50, 128, 3)
    y = _features(50, 128, 4)
    a = frechet_distance_from_features(x, y, method="covariance")
    b = frechet_distance_from_features(x, y, method="gram")
    assert np.isfinite(a) and a > 0
    assert abs(a - b) / b < 1e-12
    # one set with a single distinct row repeated: covariance exactly zero
    z = np.repeat(x[:1], 10, axis=0)
    v = frechet_distance_from_features(z, y)
    mu_y, s_y = feature_statistics(y)
    expected = float(((x[0] - mu_y) ** 2).sum() + np.trace(s_y))
    assert v == pytest.approx(expected, rel=1e-10)


def test_identical_sets_are_zero():
    x = _features(100, 32, 5)
    scale = np.trace(feature_statistics(x)[1])
    assert abs(frechet_distance_from_features(x, x, method="covariance")) < 1e-9 * scale
    assert abs(frechet_distance_from_features(x, x, method="gram")) < 1e-9 * scale
    # row order does not matter
    perm = np.random.default_rng(0).permutation(100)
    assert frechet_distance_from_features(x[perm], x) == pytest.approx(0.0, abs=1e-9 * scale)


def test_shift_and_scale_response():
    x = _features(120, 16, 6)
    mu, sigma = feature_statistics(x)
    direction = np.ones(16) / 4.0
    shifts = [0.0, 0.5, 1.0, 2.0, 4.0]
    fds = [frechet_distance_from_features(x, x + s * direction) for s in shifts]
    # a pure shift c moves only the mean term: FD = |c|^2 exactly
    np.testing.assert_allclose(fds, [s * s * direction @ direction for s in shifts], atol=1e-9)
    assert np.all(np.diff(fds) > 0)
    # y = s x: S2 = s^2 S1, (S1 S2)^(1/2) = s S1, so FD = (1 - s)^2 (|mu|^2 + tr S1)
    scales = [1.0, 1.2, 1.5, 2.0, 3.0]
    fds = [frechet_distance_from_features(x, s * x) for s in scales]
    expected = [(1 - s) ** 2 * (mu @ mu + np.trace(sigma)) for s in scales]
    np.testing.assert_allclose(fds, expected, rtol=1e-8, atol=1e-9)
    assert np.all(np.diff(fds) > 0)


def test_fd_infinity_recovers_intercept():
    rng = np.random.default_rng(7)
    d = 16
    delta = np.full(d, 0.25)
    true_fd = float(delta @ delta)  # both N(., I): FD = |delta|^2 = 1.0
    y = rng.normal(size=(20000, d))  # large fixed reference: negligible bias of its own
    x = rng.normal(size=(3000, d)) + delta
    fit = frechet_distance_infinity_fit(x, y, n_points=15, min_n=100, seed=0, n_repeats=3)
    fd_small = frechet_distance_from_features(x[:100], y)
    assert fit.slope > 0  # FD(N) is biased upwards at small N ...
    assert fd_small - true_fd > 0.5
    assert abs(fit.intercept - true_fd) < 0.05  # ... and the intercept removes the bias
    assert fit.sizes[0] == 100 and fit.sizes[-1] == 3000
    # same seed, same number; the wrapper returns the intercept
    assert frechet_distance_infinity(x, y, n_points=15, min_n=100, seed=0, n_repeats=3) == fit.intercept


def test_fd_infinity_on_exact_model():
    # the least-squares step: FD values that follow a + b/N exactly give back a and b
    x = _features(500, 4, 8)
    y = _features(500, 4, 9)
    fit = frechet_distance_infinity_fit(x, y, n_points=10, min_n=50, seed=1)
    sizes = np.asarray(fit.sizes, dtype=float)
    design = np.stack([np.ones_like(sizes), 1 / sizes], 1)
    a, b = np.linalg.lstsq(design, np.asarray(fit.values), rcond=None)[0]
    assert fit.intercept == pytest.approx(a) and fit.slope == pytest.approx(b)


def test_bad_inputs():
    with pytest.raises(ValueError, match="dimensions differ"):
        frechet_distance_from_features(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance_from_features(np.zeros((1, 3)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance_from_features(np.full((5, 3), np.nan), np.zeros((5, 3)))
