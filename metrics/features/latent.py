"""Features from an encoder callable handed in by the runner (e.g. ``ldm3d-latent``).

``metrics`` never imports a generator; when a metric needs a generator's latent space (for example the
ldm3d autoencoder's posterior mean), the runner wraps the encode function in a
:class:`CallableExtractor` and passes it on like any other extractor. The wrapper batches, pools and
fingerprints; the callable must be deterministic (use the posterior mean, not a sample).
"""

from __future__ import annotations

import json
from typing import Any, Callable

import numpy as np
import torch

from metrics.features.base import FeatureExtractor, check_volumes

__all__ = ["CallableExtractor"]

_POOLINGS = ("flatten", "mean", "mean+std")


class CallableExtractor(FeatureExtractor):
    """Wrap ``fn`` (an encoder) as a :class:`~metrics.features.base.FeatureExtractor`.

    ``fn`` receives a float32 CPU tensor ``(B, 1, D, H, W)`` in [0, 1] (under ``torch.no_grad()``) and
    returns a tensor or array ``(B, C, d, h, w)`` (or ``(B, F)``); if it returns a tuple or list (such as
    ``(mean, sigma)``), the first element is used.

    Args:
        name: extractor name recorded in results (e.g. ``"ldm3d-latent"``).
        fn: the encoder callable.
        dim: expected feature dimension after pooling (checked on every call).
        fingerprint: JSON-serialisable description of everything that changes the numbers (checkpoint
            sha256, which output is used, input scaling ...); merged into :meth:`fingerprint`.
        pooling: ``"flatten"`` (the whole latent, ``C*d*h*w``), ``"mean"`` (``C``) or ``"mean+std"``
            (``2C``) over the spatial axes.
        batch_size: volumes per call of ``fn``; ``fn`` must treat samples independently.
    """

    version = "1"

    def __init__(self, *, name: str, fn: Callable[[torch.Tensor], Any], dim: int, fingerprint: dict,
                 pooling: str = "flatten", batch_size: int = 4):
        if not callable(fn):
            raise TypeError(f"{name}: fn must be callable, got {type(fn).__name__}")
        if pooling not in _POOLINGS:
            raise ValueError(f"{name}: pooling must be one of {_POOLINGS}, got {pooling!r}")
        if int(dim) < 1 or int(batch_size) < 1:
            raise ValueError(f"{name}: dim and batch_size must be >= 1, got dim={dim}, batch_size={batch_size}")
        try:
            json.dumps(fingerprint, sort_keys=True)
        except TypeError as exc:
            raise TypeError(f"{name}: fingerprint must be JSON-serialisable (str/number/list/dict): {exc}") from exc
        self.name = name
        self.fn = fn
        self.dim = int(dim)
        self.pooling = pooling
        self.batch_size = int(batch_size)
        self._fingerprint = dict(fingerprint)

    def _pool(self, z: np.ndarray) -> np.ndarray:
        if z.ndim < 2:
            raise ValueError(f"{self.name}: encoder returned shape {z.shape}; expected (B, C, ...) ")
        if self.pooling == "flatten" or z.ndim == 2:
            return z.reshape(z.shape[0], -1)
        flat = z.reshape(z.shape[0], z.shape[1], -1)
        if self.pooling == "mean":
            return flat.mean(-1)
        return np.concatenate([flat.mean(-1), flat.std(-1)], axis=1)

    def __call__(self, volumes: np.ndarray, voxel_size: float) -> np.ndarray:
        arr = check_volumes(volumes, voxel_size, who=self.name)
        out = []
        with torch.no_grad():
            for start in range(0, arr.shape[0], self.batch_size):
                z = self.fn(torch.from_numpy(arr[start:start + self.batch_size]))
                if isinstance(z, (tuple, list)):
                    z = z[0]
                if isinstance(z, torch.Tensor):
                    z = z.detach().cpu().double().numpy()
                feats = self._pool(np.asarray(z, dtype=np.float64))
                if feats.shape != (min(self.batch_size, arr.shape[0] - start), self.dim):
                    raise ValueError(f"{self.name}: pooled features have shape {feats.shape}, expected "
                                     f"(batch, {self.dim}); pass dim={feats.shape[1]} or change pooling")
                out.append(feats)
        return np.concatenate(out, axis=0) if out else np.zeros((0, self.dim))

    def fingerprint(self) -> dict:
        fp = {"weights_sha256": None, "preprocessing": "none (volumes passed to the callable as given)",
              "input_size": "grid as given"}
        fp.update(self._fingerprint)
        fp.update({"name": self.name, "version": self.version, "dim": self.dim, "pooling": self.pooling,
                   "wrapper": "metrics.features.latent.CallableExtractor"})
        return fp
