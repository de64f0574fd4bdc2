"""A seeded random 3D convolutional feature extractor, for tests and smoke runs.

Random (untrained) convolutional networks are a cheap, dependency-free stand-in for a pretrained
encoder: their pooled activations still separate intensity distributions and textures, which is enough
to test the metric plumbing. Numbers obtained with it say nothing about perceptual quality.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from metrics.features.base import TorchFeatureExtractor

__all__ = ["Random3DExtractor"]


class _RandomNet(nn.Module):
    def __init__(self, dim: int, seed: int):
        super().__init__()
        widths = [1, 16, 32, dim]
        self.convs = nn.ModuleList(
            nn.Conv3d(cin, cout, kernel_size=3, stride=2, padding=1) for cin, cout in zip(widths[:-1], widths[1:])
        )
        # Initialise from numpy's seeded PCG64 (He-normal weights, small uniform biases) rather than
        # torch's global RNG: the same seed gives the same network on every torch version.
        rng = np.random.default_rng(seed)
        for conv in self.convs:
            fan_in = conv.in_channels * 27
            w = rng.normal(0.0, np.sqrt(2.0 / fan_in), size=tuple(conv.weight.shape))
            b = rng.uniform(-0.1, 0.1, size=tuple(conv.bias.shape))
            conv.weight.data = torch.from_numpy(w.astype(np.float32))
            conv.bias.data = torch.from_numpy(b.astype(np.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = torch.relu(conv(x))
        return x.mean(dim=(2, 3, 4))


class Random3DExtractor(TorchFeatureExtractor):
    """Seeded random 3D conv net: 3 stride-2 3x3x3 conv + ReLU layers (16, 32, ``dim`` channels) and a
    global average pool.

    The volume is used on its grid as given (no resampling, no intensity normalisation), so features
    depend on the grid; the cache key includes the grid.

    Args:
        dim: feature dimension (channels of the last layer).
        seed: fixes the weights (numpy PCG64 He-normal init).
        device: torch device.
        batch_size: volumes per forward pass (does not change the numbers).
    """

    name = "random3d"
    version = "1"

    def __init__(self, *, dim: int = 64, seed: int = 0, device: str = "cpu", batch_size: int = 8):
        super().__init__(device=device, batch_size=batch_size)
        if int(dim) < 1:
            raise ValueError(f"random3d: dim must be >= 1, got {dim}")
        self.dim = int(dim)
        self.seed = int(seed)
        self.net = _RandomNet(self.dim, self.seed).to(self.device).eval()

    def _modules_to_eval(self):
        return [self.net]

    def _features(self, batch: torch.Tensor, voxel_size: float) -> torch.Tensor:
        return self.net(batch)

    def fingerprint(self) -> dict:
        return {
            "name": self.name,
            "version": self.version,
            "dim": self.dim,
            "seed": self.seed,
            "weights_sha256": None,
            "weights": f"random: numpy PCG64 seed {self.seed}, He-normal conv weights, U(-0.1, 0.1) biases",
            "architecture": f"3 x [conv3d 3^3 stride 2 + ReLU] (16, 32, {self.dim}) + global mean pool",
            "preprocessing": "none (intensities used as given, [0, 1])",
            "input_size": "grid as given (no resampling)",
        }
