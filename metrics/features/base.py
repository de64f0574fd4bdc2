"""The feature-extractor contract shared by every 3D extractor.

An extractor maps a batch of volumes ``(N, 1, D, H, W)`` float32 in ``[0, 1]`` (atlas space, isotropic
voxels of ``voxel_size`` mm) to an ``(N, dim)`` float64 feature matrix. Extractors are deterministic
and batch-size invariant: a volume's features depend only on that volume (and the extractor's
fingerprint), never on its neighbours in the batch or on the batch size. The runner keys its
content-addressed feature cache on :meth:`FeatureExtractor.fingerprint`, so the fingerprint must hold
everything that changes the numbers (weights hash, preprocessing, input-size policy, pooling).

Constructors take explicit keyword-only arguments (no ``**kwargs``) so that a typo in a suite file is
an error, not a silently ignored option.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any, Callable

import numpy as np
import torch

from core.io import sha256_file

log = logging.getLogger("braingenbench.metrics.features")

__all__ = ["FeatureExtractor", "TorchFeatureExtractor", "check_volumes", "sha256_file", "resample_isotropic",
           "resample_centred", "pad_to_multiple", "pool_features", "volume_seed"]


def volume_seed(volume: np.ndarray) -> int:
    """A 63-bit seed derived from a volume's bytes (float32, C order).

    Used wherever preprocessing needs randomness (e.g. MedicalNet's background noise): the result is
    deterministic and independent of the order or batch in which volumes are processed.
    """
    data = np.ascontiguousarray(volume, dtype=np.float32)
    digest = hashlib.sha256(str(data.shape).encode() + data.tobytes()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def check_volumes(volumes: np.ndarray, voxel_size: float, *, who: str) -> np.ndarray:
    """Validate ``(N, 1, D, H, W)`` input and return it as C-contiguous float32.

    Raises:
        ValueError: wrong rank/channels, non-finite values or a non-positive voxel size; the message
            says what was received and what is expected.
    """
    arr = np.asarray(volumes)
    if arr.ndim != 5 or arr.shape[1] != 1:
        raise ValueError(f"{who}: expected volumes shaped (N, 1, D, H, W), got {arr.shape}; add the channel "
                         "axis with volumes[:, None] if you have (N, D, H, W)")
    if not np.isfinite(voxel_size) or voxel_size <= 0:
        raise ValueError(f"{who}: voxel_size must be a positive number of mm, got {voxel_size!r}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if arr.size and not np.isfinite(arr).all():
        raise ValueError(f"{who}: volumes contain NaN or inf; clean them (np.nan_to_num) before feature extraction")
    return arr


def resample_isotropic(x: torch.Tensor, voxel_size: float, spacing_mm: float | None) -> torch.Tensor:
    """Trilinearly resample ``(B, C, D, H, W)`` from ``voxel_size`` to ``spacing_mm`` (same field of view).

    The output side is ``round(side * voxel_size / spacing_mm)``. ``spacing_mm=None`` or equal spacing
    returns ``x`` unchanged.
    """
    if spacing_mm is None or abs(spacing_mm - voxel_size) < 1e-9:
        return x
    size = [max(1, int(round(s * voxel_size / spacing_mm))) for s in x.shape[2:]]
    return torch.nn.functional.interpolate(x, size=size, mode="trilinear", align_corners=False)


def resample_centred(x: torch.Tensor, voxel_size: float, target_voxel_size: float,
                     target_shape: tuple[int, int, int] | list[int]) -> torch.Tensor:
    """Resample ``(B, C, D, H, W)`` onto another isotropic grid with the same centre.

    Every atlas grid of the benchmark (:mod:`cohorts.grid`) is centred on the same point, so voxel
    ``i`` of the target grid sits at source coordinate ``(i - (n_t - 1) / 2) * t / s + (n_s - 1) / 2``
    (``s``, ``t``: source and target voxel sizes). Values are interpolated trilinearly; points outside
    the source are 0 (background). When the target is coarser (``t > s``), the source is first smoothed
    by a Gaussian of ``sigma = sqrt((t/s)^2 - 1) / (2 sqrt(2 ln 2))`` source voxels, which widens a
    one-voxel point spread (FWHM) to one target voxel, so that downsampling does not alias.

    Args:
        x: volumes ``(B, C, D, H, W)``.
        voxel_size: source voxel size (mm).
        target_voxel_size: target voxel size (mm).
        target_shape: target ``(D, H, W)``.

    Returns:
        ``(B, C, *target_shape)`` in ``x``'s dtype.
    """
    target_shape = tuple(int(n) for n in target_shape)
    if len(target_shape) != 3 or min(target_shape) < 1:
        raise ValueError(f"resample_centred: target_shape must be 3 positive sides, got {target_shape}")
    if voxel_size <= 0 or target_voxel_size <= 0:
        raise ValueError(f"resample_centred: voxel sizes must be > 0, got {voxel_size} and {target_voxel_size}")
    ratio = float(target_voxel_size) / float(voxel_size)
    if abs(ratio - 1.0) < 1e-9 and tuple(x.shape[2:]) == target_shape:
        return x
    dtype = x.dtype
    x = x.float()
    if ratio > 1.0:
        sigma = float(np.sqrt(ratio**2 - 1.0) / (2.0 * np.sqrt(2.0 * np.log(2.0))))
        radius = max(1, int(np.ceil(3.0 * sigma)))
        from metrics.functional.ssim import window_1d

        k = window_1d(2 * radius + 1, sigma).float()
        b, c = x.shape[:2]
        y = x.reshape(b * c, 1, *x.shape[2:])
        for axis in range(3):
            shape = [1, 1, 1, 1, 1]
            shape[2 + axis] = k.numel()
            pad = [0, 0, 0, 0, 0, 0]
            pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = radius
            y = torch.nn.functional.conv3d(torch.nn.functional.pad(y, pad), k.view(shape))
        x = y.reshape(b, c, *x.shape[2:])
    # normalised sampling coordinates (align_corners=True: -1 and 1 are the centres of the end voxels)
    axes = []
    for n_s, n_t in zip(x.shape[2:], target_shape):
        j = (torch.arange(n_t, dtype=torch.float64) - (n_t - 1) / 2.0) * ratio + (n_s - 1) / 2.0
        axes.append((2.0 * j / max(n_s - 1, 1) - 1.0).float())
    gd, gh, gw = torch.meshgrid(*axes, indexing="ij")
    grid = torch.stack([gw, gh, gd], dim=-1).unsqueeze(0).expand(x.shape[0], *target_shape, 3)
    out = torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return out.to(dtype)


def pad_to_multiple(x: torch.Tensor, multiple: int, value: float | torch.Tensor = 0.0) -> torch.Tensor:
    """Pad the last three axes of ``(B, C, D, H, W)`` symmetrically (extra voxel at the end) up to a
    multiple of ``multiple``. ``value`` may be a per-sample tensor of shape (B,)."""
    pads = []
    for s in reversed(x.shape[2:]):
        extra = (-s) % multiple
        pads += [extra // 2, extra - extra // 2]
    if not any(pads):
        return x
    if isinstance(value, torch.Tensor):
        out = torch.nn.functional.pad(x, pads, value=0.0)
        mask = torch.nn.functional.pad(torch.zeros_like(x[:1, :1]), pads, value=1.0).bool()
        return torch.where(mask, value.view(-1, 1, 1, 1, 1).to(x.dtype), out)
    return torch.nn.functional.pad(x, pads, value=float(value))


def pool_features(z: torch.Tensor, pooling: str) -> torch.Tensor:
    """Global pooling of ``(B, C, ...)`` activations: ``"mean"`` -> ``(B, C)``; ``"mean+std"`` -> ``(B, 2C)``."""
    z = z.flatten(2)
    if pooling == "mean":
        return z.mean(-1)
    return torch.cat([z.mean(-1), z.std(-1, unbiased=False)], dim=1)


class FeatureExtractor:
    """Base class: volumes in, one feature vector per volume out.

    Subclasses set ``name`` and ``dim`` and implement :meth:`__call__` and :meth:`fingerprint`.

    Attributes:
        name: registry name (e.g. ``"deepbet"``).
        dim: feature dimension F of the ``(N, F)`` output.
        version: bumped whenever the implementation changes the numbers (it is in the fingerprint).
    """

    name: str = "extractor"
    dim: int = 0
    version: str = "1"

    def __call__(self, volumes: np.ndarray, voxel_size: float) -> np.ndarray:
        """Extract features.

        Args:
            volumes: ``(N, 1, D, H, W)`` float32 in ``[0, 1]``.
            voxel_size: isotropic voxel size in mm.

        Returns:
            ``(N, dim)`` float64.
        """
        raise NotImplementedError

    def fingerprint(self) -> dict[str, Any]:
        """Everything that changes the numbers: name, version, weights sha256, preprocessing, input-size
        policy, pooling. JSON-serialisable; the runner hashes it into cache keys and stores it in records."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim})"


class TorchFeatureExtractor(FeatureExtractor):
    """A :class:`FeatureExtractor` backed by a torch network, processed in batches.

    Subclasses implement :meth:`_features` mapping one float32 batch tensor ``(B, 1, D, H, W)`` (on
    ``self.device``) to ``(B, dim)``. This class validates the input, batches it, runs under
    ``torch.no_grad()`` with the network in eval mode, and returns float64. Per-volume preprocessing must
    not mix information across the batch (no batch statistics), which makes the result batch-size and
    order invariant up to floating-point reassociation inside the convolution kernels (~1e-6 relative).
    """

    def __init__(self, *, device: str | torch.device = "cpu", batch_size: int = 4):
        if int(batch_size) < 1:
            raise ValueError(f"{type(self).__name__}: batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device)
        self.batch_size = int(batch_size)

    def _features(self, batch: torch.Tensor, voxel_size: float) -> torch.Tensor:
        raise NotImplementedError

    def _modules_to_eval(self) -> list[torch.nn.Module]:
        return []

    def __call__(self, volumes: np.ndarray, voxel_size: float,
                 progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        arr = check_volumes(volumes, voxel_size, who=self.name)
        for m in self._modules_to_eval():
            m.eval()
        out = np.empty((arr.shape[0], self.dim), dtype=np.float64)
        with torch.no_grad():
            for start in range(0, arr.shape[0], self.batch_size):
                batch = torch.from_numpy(arr[start:start + self.batch_size]).to(self.device)
                feats = self._features(batch, float(voxel_size))
                if tuple(feats.shape) != (batch.shape[0], self.dim):
                    raise RuntimeError(f"{self.name}: produced features of shape {tuple(feats.shape)}, "
                                       f"expected {(batch.shape[0], self.dim)} (this is a bug)")
                out[start:start + batch.shape[0]] = feats.detach().cpu().double().numpy()
                if progress is not None:
                    progress(min(start + self.batch_size, arr.shape[0]), arr.shape[0])
        if not np.isfinite(out).all():
            log.warning("%s: some features are not finite; check the input volumes", self.name)
        return out
