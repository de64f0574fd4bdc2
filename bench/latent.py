"""The ``ldm3d-latent`` feature space, wired by bench (the only package that may join a generator's
encoder to the metrics): an ldm3d autoencoder's posterior mean, average-pooled and flattened.

The default autoencoder is a pinned yardstick (``generators.ldm3d.checkpoint.LATENT_YARDSTICK``), not
the shipped generator, so that a new ldm3d release does not move every run's latent numbers.
The autoencoder only encodes volumes on the grid it was trained on (the yardstick: 3 mm). Volumes
on another atlas grid (a 2 mm or 1 mm suite) are first resampled onto the model's grid with
:func:`~metrics.features.base.resample_centred` (every benchmark grid shares its centre), so the
latent space stays one fixed yardstick whatever the suite's grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from metrics.features.base import check_volumes, resample_centred
from metrics.features.latent import CallableExtractor


class Ldm3dLatentExtractor(CallableExtractor):
    """Features = the yardstick (or a given) ldm3d autoencoder's scaled posterior mean, pooled.

    Args:
        checkpoint: ldm3d checkpoint (safetensors); default: the pinned yardstick.
        device: torch device.
        batch_size: volumes per encoder call.
    """

    def __init__(self, *, checkpoint: str = "", device: str = "cpu", batch_size: int = 8):
        from cohorts.grid import get_grid
        from generators.ldm3d.checkpoint import LATENT_YARDSTICK, read_metadata
        from generators.ldm3d.generator import make_latent_encoder

        path = Path(checkpoint) if checkpoint else LATENT_YARDSTICK
        fn, dim, fp = make_latent_encoder(path, device=device)
        meta = read_metadata(path)
        self.model_grid = get_grid(meta["config"]["grid"])
        if tuple(meta["grid_shape"]) != tuple(self.model_grid.shape):
            raise ValueError(f"{path}: grid_shape {meta['grid_shape']} is not the shape of grid "
                             f"{self.model_grid.name!r} {self.model_grid.shape}; the checkpoint is inconsistent")

        def encode(x: torch.Tensor) -> np.ndarray:
            return fn(np.asarray(x, dtype=np.float32))

        super().__init__(name="ldm3d-latent", fn=encode, dim=dim, pooling="flatten", batch_size=batch_size,
                         fingerprint={"encoder": fp, "checkpoint": str(path),
                                      "preprocessing": f"volumes in [0, 1], resampled (centred, trilinear, Gaussian "
                                                       f"anti-aliasing) to the model's {self.model_grid.name} grid "
                                                       "when on another grid; posterior mean, no sampling"})

    def __call__(self, volumes: np.ndarray, voxel_size: float) -> np.ndarray:
        arr = check_volumes(volumes, voxel_size, who=self.name)
        g = self.model_grid
        if tuple(arr.shape[2:]) != tuple(g.shape) or abs(float(voxel_size) - g.voxel_size) > 1e-9:
            arr = resample_centred(torch.from_numpy(arr), float(voxel_size), g.voxel_size, g.shape).numpy()
        return super().__call__(arr, g.voxel_size)
