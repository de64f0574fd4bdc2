"""3D structural similarity: SSIM (Wang et al. 2004) and multi-scale SSIM (Wang et al. 2003).

References:
    Wang, Bovik, Sheikh & Simoncelli (2004), "Image quality assessment: from error visibility to
    structural similarity", IEEE TIP 13(4).
    Wang, Simoncelli & Bovik (2003), "Multiscale structural similarity for image quality
    assessment", Asilomar Conference on Signals, Systems and Computers.

Conventions (they change the number, so they are explicit and recorded):

* Window: separable Gaussian (``sigma`` 1.5, ``kernel_size`` 11 by default, weights normalised to
  sum 1) or a uniform box. Local statistics use population (biased) moments, as in the paper.
* Border: with ``crop_border=True`` (default) the window is applied in "valid" mode, i.e. the SSIM
  map is averaged only where the whole window lies inside the volume (a border of
  ``kernel_size // 2`` voxels is dropped). This reproduces scikit-image
  (``gaussian_weights=True, sigma=1.5, use_sample_covariance=False``) and MONAI ``SSIMMetric``
  exactly. ``crop_border=False`` reflect-pads the volume (``numpy``/``torch`` "reflect", no edge
  repeat) and averages the full-size map, which reproduces torchmetrics' SSIM; it is not the
  default because the mirrored border inflates agreement.
* Computation is float64 (separable filtering as banded matrix products, which on CPU is faster
  than ``conv3d`` with a 1-D kernel and keeps the E[x^2] - E[x]^2 moments exact enough).

Inputs are ``(N, 1, D, H, W)`` batches or single ``(D, H, W)`` volumes, numpy or torch. Values are
returned per volume as a float64 numpy array of shape ``(N,)``.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger("braingenbench.metrics.ssim")

#: Wang et al. (2003) weights of the five scales, finest first.
STANDARD_MS_SSIM_WEIGHTS: tuple[float, ...] = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
#: Smallest window the automatic MS-SSIM configuration may shrink to.
MIN_MS_SSIM_KERNEL = 5
_DEFAULT_KERNEL = 11
_DEFAULT_SIGMA = 1.5
# Volumes per chunk are chosen so that one chunk holds about this many voxels per map.
_CHUNK_VOXELS = 2_000_000


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------

def _as_batch(v, name: str) -> torch.Tensor:
    """``(D, H, W)`` or ``(N, 1, D, H, W)`` numpy/torch -> float64 torch ``(N, 1, D, H, W)``."""
    t = torch.as_tensor(np.asarray(v) if not isinstance(v, torch.Tensor) else v)
    t = t.detach().to("cpu", torch.float64)
    if t.ndim == 3:
        t = t[None, None]
    elif t.ndim != 5 or t.shape[1] != 1:
        raise ValueError(f"{name}: expected a (D, H, W) volume or an (N, 1, D, H, W) batch, got shape "
                         f"{tuple(t.shape)}; add the channel axis with x[:, None] if it is missing")
    return t


def window_1d(kernel_size: int, sigma: float = _DEFAULT_SIGMA, kernel: str = "gaussian") -> torch.Tensor:
    """Normalised 1-D window (float64) of odd length ``kernel_size``.

    The Gaussian taps are ``exp(-d^2 / (2 sigma^2))`` at integer offsets ``d`` in
    ``[-(k-1)/2, (k-1)/2]`` (the sampled Gaussian of scikit-image/MONAI/torchmetrics); the 3-D
    window is the outer product of three of them.
    """
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be an odd positive integer, got {kernel_size}")
    if kernel == "gaussian":
        if sigma <= 0:
            raise ValueError(f"sigma must be positive, got {sigma}")
        d = torch.arange(kernel_size, dtype=torch.float64) - (kernel_size - 1) / 2
        w = torch.exp(-0.5 * (d / sigma) ** 2)
    elif kernel == "uniform":
        w = torch.ones(kernel_size, dtype=torch.float64)
    else:
        raise ValueError(f"kernel must be 'gaussian' or 'uniform', got {kernel!r}")
    return w / w.sum()


def _filter_matrix(length: int, w: torch.Tensor, crop_border: bool) -> torch.Tensor:
    """Matrix ``M`` such that ``M @ v`` filters a line ``v`` of ``length`` samples with window ``w``.

    ``crop_border=True``: valid outputs only, shape ``(length - k + 1, length)``.
    ``crop_border=False``: reflect padding folded into the matrix, shape ``(length, length)``.
    """
    k = w.numel()
    p = (k - 1) // 2
    if crop_border:
        if length < k:
            raise ValueError(f"volume side {length} is smaller than the SSIM window {k}; "
                             "use a smaller kernel_size")
        m = torch.zeros(length - k + 1, length, dtype=torch.float64)
        for o in range(length - k + 1):
            m[o, o:o + k] = w
        return m
    if length <= p:
        raise ValueError(f"volume side {length} is too small to reflect-pad by {p}; use a smaller kernel_size")
    m = torch.zeros(length, length, dtype=torch.float64)
    for o in range(length):
        for t in range(k):
            i = o - p + t
            if i < 0:
                i = -i
            elif i >= length:
                i = 2 * (length - 1) - i
            m[o, i] += w[t]
    return m


def _separable_filter(v: torch.Tensor, mats: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Filter ``(B, D, H, W)`` along the three axes with the per-axis matrices."""
    md, mh, mw = mats
    b = v.shape[0]
    y = v @ mw.T                                    # (B, D, H, W')
    y = torch.matmul(mh, y)                         # (B, D, H', W')
    d_out, h_out, w_out = md.shape[0], y.shape[2], y.shape[3]
    y = torch.matmul(md, y.reshape(b, y.shape[1], h_out * w_out))
    return y.reshape(b, d_out, h_out, w_out)


def _ssim_cs_maps(x: torch.Tensor, y: torch.Tensor, mats, c1: float, c2: float
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """SSIM and contrast-structure maps of ``(B, D, H, W)`` float64 batches."""
    b = x.shape[0]
    stacked = torch.empty((5 * b, *x.shape[1:]), dtype=torch.float64)
    stacked[:b] = x
    stacked[b:2 * b] = y
    torch.mul(x, x, out=stacked[2 * b:3 * b])
    torch.mul(y, y, out=stacked[3 * b:4 * b])
    torch.mul(x, y, out=stacked[4 * b:])
    f = _separable_filter(stacked, mats)
    mu_x, mu_y, e_xx, e_yy, e_xy = f.split(b)
    mu_xy = mu_x * mu_y
    mu_sq = mu_x.square_().add_(mu_y.square_())           # mu_x^2 + mu_y^2 (mu_x, mu_y consumed)
    # cs = (2 cov + C2) / (var_x + var_y + C2), cov = E[xy] - mu_x mu_y
    cs = e_xy.sub_(mu_xy).mul_(2.0).add_(c2).div_(e_xx.add_(e_yy).sub_(mu_sq).add_(c2))
    lum = mu_xy.mul_(2.0).add_(c1).div_(mu_sq.add_(c1))
    return lum.mul_(cs), cs


def _chunks(n: int, voxels: int):
    step = max(1, _CHUNK_VOXELS // max(voxels, 1))
    for s in range(0, n, step):
        yield slice(s, min(n, s + step))


# ----------------------------------------------------------------------------------------------
# SSIM
# ----------------------------------------------------------------------------------------------

def ssim3d(x, y, *, data_range: float = 1.0, kernel: str = "gaussian", sigma: float = _DEFAULT_SIGMA,
           kernel_size: int = _DEFAULT_KERNEL, k1: float = 0.01, k2: float = 0.03, mask=None,
           crop_border: bool = True, return_map: bool = False):
    """Per-volume 3D SSIM (Wang et al. 2004) with a separable window.

    ``SSIM = l * cs`` with ``l = (2 mu_x mu_y + C1) / (mu_x^2 + mu_y^2 + C1)`` and
    ``cs = (2 sigma_xy + C2) / (sigma_x^2 + sigma_y^2 + C2)``, ``C1 = (k1 L)^2``, ``C2 = (k2 L)^2``,
    local moments under the window, averaged over the map.

    Args:
        x: ``(N, 1, D, H, W)`` batch or ``(D, H, W)`` volume (numpy or torch).
        y: same shape as ``x``.
        data_range: ``L``, the dynamic range of the intensities (1.0 for ``[0, 1]`` volumes).
        kernel: ``"gaussian"`` or ``"uniform"``.
        sigma: Gaussian standard deviation in voxels (ignored for ``"uniform"``).
        kernel_size: odd window length in voxels (11 with ``sigma=1.5``: the 3.5-sigma truncation
            scikit-image uses).
        k1: luminance constant.
        k2: contrast constant.
        mask: optional boolean brain mask, ``(D, H, W)`` shared or ``(N, [1,] D, H, W)`` per volume;
            the value is then the mean of the SSIM map over the mask voxels that survive the
            border crop (window centres inside the mask; the window itself may reach outside).
        crop_border: ``True``: valid region only (scikit-image/MONAI); ``False``: reflect padding
            and full map (torchmetrics).
        return_map: also return the SSIM map.

    Returns:
        ``(N,)`` float64 numpy array, or ``(values, ssim_map)`` with the map as a float64 torch
        tensor ``(N, 1, D', H', W')`` (``D' = D - kernel_size + 1`` when cropping).
    """
    xt, yt = _as_batch(x, "x"), _as_batch(y, "y")
    if xt.shape != yt.shape:
        raise ValueError(f"x and y must have the same shape, got {tuple(xt.shape)} and {tuple(yt.shape)}")
    n, _, d, h, w = xt.shape
    win = window_1d(kernel_size, sigma, kernel)
    mats = tuple(_filter_matrix(s, win, crop_border) for s in (d, h, w))
    p = (kernel_size - 1) // 2 if crop_border else 0

    m = None
    if mask is not None:
        m = torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask).bool()
        if m.ndim == 5:
            m = m[:, 0]
        if m.ndim == 3:
            m = m[None]
        if m.ndim != 4 or tuple(m.shape[1:]) != (d, h, w) or m.shape[0] not in (1, n):
            raise ValueError(f"mask must be (D, H, W) or (N, [1,] D, H, W) matching the volumes "
                             f"{(n, d, h, w)}, got {tuple(m.shape)}")
        if p:
            m = m[:, p:d - p, p:h - p, p:w - p]

    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    values = np.empty(n, dtype=np.float64)
    maps = []
    for sl in _chunks(n, d * h * w):
        smap, _ = _ssim_cs_maps(xt[sl, 0], yt[sl, 0], mats, c1, c2)
        if m is None:
            values[sl] = smap.flatten(1).mean(1).numpy()
        else:
            mm = m if m.shape[0] == 1 else m[sl]
            mm = mm.expand_as(smap)
            cnt = mm.flatten(1).sum(1)
            tot = (smap * mm).flatten(1).sum(1)
            vals = (tot / cnt.clamp(min=1)).numpy()
            vals[(cnt == 0).numpy()] = np.nan
            values[sl] = vals
        if return_map:
            maps.append(smap[:, None])
    if np.isnan(values).any():
        log.warning("ssim3d: %d volume(s) have no mask voxel left after cropping the %d-voxel border; "
                    "their SSIM is NaN", int(np.isnan(values).sum()), p)
    if return_map:
        return values, torch.cat(maps, 0)
    return values


# ----------------------------------------------------------------------------------------------
# MS-SSIM
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MSSSIMConfig:
    """The scales, window and weights one MS-SSIM evaluation used (goes into the record)."""

    scales: int
    kernel_size: int
    sigma: float
    weights: tuple[float, ...]
    kernel: str
    shape: tuple[int, int, int]
    coarsest_shape: tuple[int, int, int]
    reduced: bool  # True when the automatic rule departed from 5 scales / 11-voxel window

    def to_dict(self) -> dict:
        d = asdict(self)
        d["weights"] = list(self.weights)
        d["shape"] = list(self.shape)
        d["coarsest_shape"] = list(self.coarsest_shape)
        return d


class MSSSIMResult(NamedTuple):
    values: np.ndarray  # (N,) float64
    config: MSSSIMConfig


def _coarsest(shape: Sequence[int], scales: int) -> tuple[int, int, int]:
    out = [int(s) for s in shape]
    for _ in range(scales - 1):
        out = [s // 2 for s in out]   # avg_pool3d(2) floors
    return tuple(out)  # type: ignore[return-value]


def ms_ssim_config(shape: Sequence[int], *, scales: int | None = None, weights: Sequence[float] | None = None,
                   kernel_size: int | None = None, sigma: float | None = None,
                   kernel: str = "gaussian") -> MSSSIMConfig:
    """Choose the MS-SSIM scales, window and weights for a volume ``shape`` (D, H, W).

    Rule (every side at the coarsest scale must be at least the window size; the coarsest side is
    ``side // 2**(scales-1)`` because of the 2x average pooling):

    1. Default: 5 scales with the Wang et al. (2003) weights and an 11-voxel window.
    2. If the smallest side cannot hold that, shrink the window (odd sizes 9, 7, 5; never below 5).
    3. If a 5-voxel window still does not fit, drop the coarsest scales until it does and
       renormalise the remaining (finest-first) weights to sum to 1.

    What the caller fixes is honoured or refused, never changed: ``weights`` (or ``scales``) fix
    the number of scales (``scales`` alone takes the first ``scales`` standard weights,
    renormalised); ``kernel_size`` fixes the window. ``sigma`` defaults to ``1.5 * kernel_size / 11``
    so a reduced window keeps the standard window's 3.5-sigma truncation (and torchmetrics, which
    derives its window size from sigma, uses the same window).

    Raises:
        ValueError: when no admissible configuration exists for ``shape``.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3:
        raise ValueError(f"shape must be (D, H, W), got {shape}")
    smin = min(shape)
    if weights is not None:
        weights = tuple(float(w) for w in weights)
        if scales is not None and scales != len(weights):
            raise ValueError(f"scales={scales} disagrees with len(weights)={len(weights)}")
        scales = len(weights)
    if scales is not None and not 1 <= scales <= 5 and weights is None:
        raise ValueError(f"scales must be 1..5 without explicit weights, got {scales}")

    def fits(m: int, k: int) -> bool:
        return smin // 2 ** (m - 1) >= k

    kernels = [kernel_size] if kernel_size is not None else list(range(_DEFAULT_KERNEL, MIN_MS_SSIM_KERNEL - 1, -2))
    scale_opts = [scales] if scales is not None else [5, 4, 3, 2, 1]
    chosen = None
    for m in scale_opts:          # prefer more scales, then the largest window that fits
        for k in kernels:
            if fits(m, k):
                chosen = (m, k)
                break
        if chosen:
            break
    if chosen is None:
        raise ValueError(
            f"MS-SSIM: volume shape {shape} cannot hold scales={scale_opts[0] if scales else 1} with window "
            f"{kernels[-1]} (the coarsest side, smallest side // 2**(scales-1), must be >= the window); "
            "use fewer scales or a smaller kernel_size")
    m, k = chosen
    if weights is None:
        base = STANDARD_MS_SSIM_WEIGHTS[:m]
        weights = base if m == 5 else tuple(float(w) / sum(base) for w in base)
    sig = float(sigma) if sigma is not None else _DEFAULT_SIGMA * k / _DEFAULT_KERNEL
    cfg = MSSSIMConfig(scales=m, kernel_size=k, sigma=sig, weights=tuple(weights), kernel=kernel, shape=shape,
                       coarsest_shape=_coarsest(shape, m), reduced=(m != 5 or k != _DEFAULT_KERNEL))
    if cfg.reduced and scales is None and kernel_size is None:
        log.info("MS-SSIM at shape %s: %d scales, window %d (sigma %.3f), weights %s", shape, m, k, sig,
                 tuple(round(w, 4) for w in cfg.weights))
    return cfg


def ms_ssim3d(x, y, *, data_range: float = 1.0, scales: int | None = None,
              weights: Sequence[float] | None = None, kernel_size: int | None = None,
              sigma: float | None = None, kernel: str = "gaussian", k1: float = 0.01,
              k2: float = 0.03) -> MSSSIMResult:
    """Per-volume 3D multi-scale SSIM (Wang et al. 2003) for any volume size.

    ``MS-SSIM = prod_{j<M} relu(cs_j)^w_j * relu(ssim_M)^w_M``: the contrast-structure term at every
    scale and, at the coarsest scale ``M``, the full SSIM (luminance included), each averaged over
    the valid region (border cropped, as in :func:`ssim3d`), with 2x average pooling between scales.
    Negative per-volume means are clamped to 0 before the power (the ``relu`` normalisation of
    torchmetrics' ``normalize="relu"`` and of MONAI; it only matters for anti-correlated volumes,
    where a negative base would make a fractional power undefined). This equals MONAI's
    ``compute_ms_ssim``; torchmetrics differs only at the coarsest scale, whose SSIM it averages over
    the reflect-padded full map.

    Args:
        x: ``(N, 1, D, H, W)`` batch or ``(D, H, W)`` volume.
        y: same shape.
        data_range: intensity range ``L``.
        scales: number of scales (default: chosen by :func:`ms_ssim_config`).
        weights: per-scale exponents, finest first (default: Wang et al. 2003, reduced/renormalised
            by :func:`ms_ssim_config` when the volume is too small).
        kernel_size: odd window size (default: the largest of 11, 9, 7, 5 that fits).
        sigma: Gaussian sigma (default ``1.5 * kernel_size / 11``).
        kernel: ``"gaussian"`` or ``"uniform"``.
        k1: luminance constant.
        k2: contrast constant.

    Returns:
        :class:`MSSSIMResult` ``(values, config)``: ``(N,)`` float64 values and the
        :class:`MSSSIMConfig` actually used.
    """
    xt, yt = _as_batch(x, "x"), _as_batch(y, "y")
    if xt.shape != yt.shape:
        raise ValueError(f"x and y must have the same shape, got {tuple(xt.shape)} and {tuple(yt.shape)}")
    cfg = ms_ssim_config(tuple(xt.shape[2:]), scales=scales, weights=weights, kernel_size=kernel_size,
                         sigma=sigma, kernel=kernel)
    win = window_1d(cfg.kernel_size, cfg.sigma, cfg.kernel)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    w = torch.tensor(cfg.weights, dtype=torch.float64)
    n = xt.shape[0]
    values = np.empty(n, dtype=np.float64)
    mats_per_scale = []
    shp = tuple(xt.shape[2:])
    for _ in range(cfg.scales):
        mats_per_scale.append(tuple(_filter_matrix(s, win, True) for s in shp))
        shp = tuple(s // 2 for s in shp)
    for sl in _chunks(n, int(np.prod(xt.shape[2:]))):
        a, b = xt[sl], yt[sl]
        terms = []
        for j in range(cfg.scales):
            smap, cs = _ssim_cs_maps(a[:, 0], b[:, 0], mats_per_scale[j], c1, c2)
            last = j == cfg.scales - 1
            terms.append(torch.relu((smap if last else cs).flatten(1).mean(1)))
            if not last:
                a, b = F.avg_pool3d(a, 2), F.avg_pool3d(b, 2)
        stack = torch.stack(terms)                  # (M, B)
        values[sl] = torch.prod(stack ** w[:, None], dim=0).numpy()
    return MSSSIMResult(values, cfg)
