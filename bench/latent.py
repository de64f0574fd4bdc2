"""The ``ldm3d-latent`` feature space, wired by bench (the only package that may join a generator's
encoder to the metrics): the ldm3d autoencoder's posterior mean, average-pooled and flattened."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from metrics.features.latent import CallableExtractor


class Ldm3dLatentExtractor(CallableExtractor):
    """Features = the shipped (or given) ldm3d autoencoder's scaled posterior mean, pooled.

    Args:
        checkpoint: ldm3d checkpoint (safetensors); default: the shipped phantom model.
        device: torch device.
        batch_size: volumes per encoder call.
    """

    def __init__(self, *, checkpoint: str = "", device: str = "cpu", batch_size: int = 8):
        from generators.ldm3d.generator import SHIPPED, make_latent_encoder

        path = Path(checkpoint) if checkpoint else SHIPPED
        fn, dim, fp = make_latent_encoder(path, device=device)

        def encode(x: torch.Tensor) -> np.ndarray:
            return fn(np.asarray(x, dtype=np.float32))

        super().__init__(name="ldm3d-latent", fn=encode, dim=dim, pooling="flatten", batch_size=batch_size,
                         fingerprint={"encoder": fp, "checkpoint": str(path),
                                      "preprocessing": "volumes as given ([0, 1]); posterior mean, no sampling"})
