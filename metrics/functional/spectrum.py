"""Radially averaged 3D power spectra: how much fine structure a volume has, at each spatial frequency.

Loss of high-frequency structure (sulci, the cortical ribbon, the edges of deep grey nuclei) is the
first thing a reader sees in a synthetic brain, and it is exactly what an over-compressing
autoencoder or a smoothing generator removes. Feature-space distances (FID on a segmentation
network's bottleneck) can be blind to it. The power spectrum measures it directly, in physical units
(cycles/mm) — the classic image-statistics tool (van der Schaaf & van Hateren 1996, "Modelling the
power spectra of natural images"; Durall et al. 2020 use the same azimuthal average to expose the
spectral deficits of generative models).

Definitions, for a volume ``v`` with brain mask ``m`` and voxel size ``h`` mm:

* ``w`` = the brain mask eroded by ``erode`` voxels and smoothed by a Gaussian of ``taper`` voxels: a
  soft window, so that the brain's outline (a sharp step from tissue to zero) does not flood every
  frequency shell with the spectrum of its own edge and hide the anatomy inside;
* ``u = (v - mean_w(v)) · w`` — the brain, centred, tapered to zero outside;
* ``P(k) = |FFT(u)(k)|²`` on the grid of frequencies ``k`` (cycles/mm);
* the radial profile averages ``P`` over shells ``|k| ∈ [f_b, f_{b+1})``, ``n_bins`` equal shells from
  0 to the Nyquist frequency ``1/(2h)``, the DC term left out;
* the profile is divided by its sum (the spectrum's *shape*: a global intensity scale does not change
  it) and expressed in decibels, ``10·log10``.

A Gaussian blur of standard deviation ``σ`` mm multiplies ``P`` by ``exp(-(2π σ |k|)²)``: the profile
then drops by ``-10·log10(e)·(2π σ f)²`` dB at frequency ``f`` (up to the renormalisation), the
closed form the tests check.
"""

from __future__ import annotations

import numpy as np

__all__ = ["radial_power_spectrum", "spectrum_bins", "spectral_distance_db", "brain_window"]


def brain_window(mask: np.ndarray, *, erode: int = 2, taper: float = 1.5) -> np.ndarray:
    """The soft analysis window: ``mask`` eroded by ``erode`` voxels, smoothed by a Gaussian of
    ``taper`` voxels (float64 in [0, 1]). ``taper=0`` gives the hard (eroded) mask."""
    from scipy.ndimage import binary_erosion, gaussian_filter

    m = np.asarray(mask, bool)
    if erode > 0:
        m = binary_erosion(m, iterations=int(erode))
    if not m.any():
        raise ValueError(f"spectrum: the brain mask is empty after eroding it by {erode} voxels")
    w = m.astype(np.float64)
    return gaussian_filter(w, taper) if taper > 0 else w


def spectrum_bins(shape: tuple[int, ...], voxel_size: float, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """``(bin index of every FFT coefficient (-1 = excluded), bin centres in cycles/mm)``.

    Coefficients beyond the Nyquist sphere (the corners of the cube) and the DC term are excluded.
    """
    if n_bins < 2:
        raise ValueError(f"spectrum: n_bins must be >= 2, got {n_bins}")
    if voxel_size <= 0:
        raise ValueError(f"spectrum: voxel_size must be > 0 mm, got {voxel_size}")
    freqs = np.meshgrid(*[np.fft.fftfreq(s, d=voxel_size) for s in shape], indexing="ij")
    radius = np.sqrt(sum(f * f for f in freqs))
    nyquist = 0.5 / voxel_size
    edges = np.linspace(0.0, nyquist, n_bins + 1)
    idx = np.digitize(radius, edges) - 1
    idx[(radius == 0) | (radius >= nyquist)] = -1
    return idx, 0.5 * (edges[:-1] + edges[1:])


def radial_power_spectrum(volumes: np.ndarray, mask: np.ndarray | None = None, *, voxel_size: float = 1.0,
                          n_bins: int = 16, erode: int = 2, taper: float = 1.5,
                          fft=np.fft.fftn) -> tuple[np.ndarray, np.ndarray]:
    """Normalised radial power spectra in dB.

    Args:
        volumes: ``(N, 1, D, H, W)`` (or ``(N, D, H, W)``) volumes.
        mask: ``(D, H, W)`` bool brain mask (default: every voxel, no window).
        erode, taper: the soft window made from ``mask`` (:func:`brain_window`).
        voxel_size: isotropic voxel size in mm.
        n_bins: equal-width frequency shells between 0 and Nyquist.
        fft: the n-dimensional FFT to use (``numpy.fft.fftn`` or ``scipy.fft.fftn``; the tests check
            that both agree).

    Returns:
        ``(profiles (N, n_bins) in dB, bin centres (n_bins,) in cycles/mm)``. A shell without any
        coefficient (possible for tiny grids) is NaN.
    """
    v = np.asarray(volumes, dtype=np.float64)
    if v.ndim == 5:
        if v.shape[1] != 1:
            raise ValueError(f"spectrum: expected one channel, got shape {v.shape}")
        v = v[:, 0]
    if v.ndim != 4:
        raise ValueError(f"spectrum: volumes must be (N, 1, D, H, W) or (N, D, H, W), got {v.shape}")
    shape = v.shape[1:]
    if mask is None:
        w = np.ones(shape)
    else:
        m = np.asarray(mask, bool)
        if m.shape != shape:
            raise ValueError(f"spectrum: mask shape {m.shape} does not match the volumes' {shape}")
        if not m.any():
            raise ValueError("spectrum: the brain mask is empty")
        w = brain_window(m, erode=erode, taper=taper)
    idx, centres = spectrum_bins(shape, voxel_size, n_bins)
    keep = idx >= 0
    counts = np.bincount(idx[keep], minlength=n_bins).astype(np.float64)
    out = np.empty((v.shape[0], n_bins))
    for i, x in enumerate(v):
        u = (x - (x * w).sum() / w.sum()) * w
        p = np.abs(fft(u)) ** 2
        prof = np.bincount(idx[keep], weights=p[keep], minlength=n_bins)
        with np.errstate(invalid="ignore", divide="ignore"):
            prof = prof / counts
            total = np.nansum(prof)
            out[i] = 10.0 * np.log10(np.maximum(prof / total, 1e-30)) if total > 0 else np.nan
    out[:, counts == 0] = np.nan
    return out, centres


def spectral_distance_db(profiles: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Mean absolute difference in dB between each profile and a target profile (shells with a NaN
    on either side left out): ``(N,)``."""
    p = np.asarray(profiles, np.float64)
    t = np.asarray(target, np.float64)
    if p.shape[-1] != t.shape[-1]:
        raise ValueError(f"spectrum: profiles have {p.shape[-1]} shells, the target {t.shape[-1]}")
    return np.nanmean(np.abs(p - t), axis=-1)
