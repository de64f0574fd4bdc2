"""Brain-MRI-pretrained features from the encoder of deepbet's brain-extraction network.

deepbet (Fisch et al. 2024, "deepbet: Fast brain extraction of T1-weighted MRI using Convolutional
Neural Networks", Computers in Biology and Medicine) ships its trained 3D network as a TorchScript file
inside its wheel, so these features need no download. The network (``LinkNet3d``, 2.13 M parameters) is
a LinkNet-style U-Net:

- ``init``: conv 7^3 stride 2 (1 -> 16) + InstanceNorm + ReLU + max-pool 3 stride 2 (stride 4)
- ``down0``: 2 residual blocks, 16 channels (stride 4)
- ``down1``/``down2``/``down3``: 2 residual blocks each, first one strided: 32/64/128 channels
  (stride 8/16/32)
- ``up0``..``up3``, ``tp_conv1``, ``conv``, ``tp_conv2``: decoder with additive skips, softmax over
  2 classes.

The traced submodules take the shared ReLU module (``conv.2``) as their first argument, which makes it
possible to run the encoder half alone: ``down3(relu, down2(relu, down1(relu, down0(relu, init(relu,
x)))))``. The bottleneck ``down3`` output has 128 channels at output stride 32; features are its global
mean (128-d) or mean and standard deviation (256-d) over space. The full network only accepts sides that
are multiples of 32 (the decoder's additive skips must line up), so inputs are padded to a multiple of
32 even though the encoder alone would accept any size.

deepbet was trained on 1 mm T1w scans: the brain bounding box (+10 % margin) is resized to 256^3 and
normalised with :func:`deepbet.utils.normalize`. We reproduce that normalisation and resample the grid
to ``spacing_mm`` (default 1.5 mm: a 3 mm 48x64x56 or 2 mm 72x96x80 grid both become 96x128x(112|107)
and are padded to 96x128x128, ~0.05 s per volume for the encoder on 2 CPU cores; at 1 mm the encoder
takes ~0.2 s).
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import numpy as np
import torch

from metrics.features.base import (TorchFeatureExtractor, pad_to_multiple, pool_features, resample_isotropic,
                                    sha256_file)

log = logging.getLogger("braingenbench.metrics.features")

__all__ = ["DeepBetExtractor", "DEEPBET_MODEL_SHA256", "deepbet_model_path"]

# sha256 of data/models/model.pt in the deepbet 1.0.2 wheel (computed here from the installed file).
DEEPBET_MODEL_SHA256 = "de8ee7c69654d0dd3935dc4a5d84571d8ecf4637a6bfc01df399c4c2bc86e0fd"
DEEPBET_VERSION = "1.0.2"
_INSTALL = f"pip install --no-deps deepbet=={DEEPBET_VERSION} connected-components-3d fill-voids"

_POOLINGS = ("mean", "mean+std")
_PAD_MULTIPLE = 32
_BOTTLENECK_CHANNELS = 128


def deepbet_model_path() -> Path:
    """Path of deepbet's segmentation network, ``deepbet.utils.DATA_PATH + "/models/model.pt"``.

    Found without importing deepbet (its import pulls in nibabel/cc3d and probes for GPUs):
    ``DATA_PATH`` is the ``data`` directory next to the ``deepbet`` package.

    Raises:
        ImportError: deepbet is not installed (with the install line).
        FileNotFoundError: the package is installed but its model file is missing.
    """
    spec = importlib.util.find_spec("deepbet")
    if spec is None or not spec.origin:
        raise ImportError(f"the 'deepbet' extractor needs the deepbet package (weights ship inside it): {_INSTALL}")
    path = Path(spec.origin).resolve().parents[1] / "data" / "models" / "model.pt"
    if not path.is_file():
        raise FileNotFoundError(f"deepbet is installed but its network {path} is missing; reinstall it: "
                                f"pip install --force-reinstall {_INSTALL}")
    return path


def _quantiles(flat: torch.Tensor, qs: tuple[float, ...]) -> torch.Tensor:
    """``torch.quantile(flat, qs)`` (linear interpolation), bit-identical, in O(n) on the CPU.

    ``torch.quantile`` sorts the whole volume (~0.1 s for 1.4 M voxels, half of the extractor's time);
    a partial sort (``numpy.partition``) finds the same order statistics, which are then interpolated
    with the same float32 ranks and ``torch.lerp`` as ``torch.quantile``.
    """
    q = torch.tensor(qs, dtype=flat.dtype, device=flat.device)
    if flat.device.type != "cpu" or flat.numel() == 0 or bool(torch.isnan(flat).any()):
        return torch.quantile(flat, q)
    ranks = q * (flat.numel() - 1)
    below, above = ranks.floor().long(), ranks.ceil().long()
    part = torch.from_numpy(np.partition(flat.detach().numpy(), sorted(set(below.tolist() + above.tolist()))))
    return torch.lerp(part[below], part[above], ranks - below)


def deepbet_normalize(x: torch.Tensor) -> torch.Tensor:
    """deepbet's intensity normalisation, per volume ``(D, H, W)``.

    Clip to the 0.5 and 99.5 percentiles, scale to [0, 1], z-score, then ``0.226 * z + 0.449`` (the
    ImageNet-like statistics deepbet trained with). Degenerate (constant) volumes map to 0.449.
    """
    low, high = _quantiles(x.reshape(-1), (0.005, 0.995))
    scale = high - low
    if float(scale) <= 1e-12:
        return torch.full_like(x, 0.449)
    y = ((x - low) / scale).clamp(0.0, 1.0)
    std = y.std()
    if float(std) <= 1e-12:
        return torch.full_like(x, 0.449)
    return 0.226 * (y - y.mean()) / std + 0.449


class DeepBetExtractor(TorchFeatureExtractor):
    """Encoder-bottleneck features of deepbet's T1w brain-extraction network (Fisch et al. 2024).

    Preprocessing per volume: trilinear resampling to ``spacing_mm`` isotropic (same field of view),
    deepbet's normalisation (:func:`deepbet_normalize`) over the resampled grid, centred padding to a
    multiple of 32 with the normalised value of background (intensity 0). The encoder output (``down3``,
    128 channels, output stride 32) is pooled over space.

    Args:
        device: torch device.
        batch_size: volumes per forward pass (does not change the numbers: InstanceNorm is per sample).
        pooling: ``"mean"`` (128-d) or ``"mean+std"`` (256-d).
        spacing_mm: isotropic voxel size the grid is resampled to before the network (1-4 mm; 1.0-2.0
            sensible).
        verify: check the model file's sha256 against :data:`DEEPBET_MODEL_SHA256`; ``False`` logs a
            warning on a mismatch and records ``"unverified"`` in the fingerprint.

    Raises:
        ImportError: deepbet is not installed.
        ValueError: the model file's hash differs (another deepbet version) and ``verify`` is true.
    """

    name = "deepbet"
    version = "1"

    def __init__(self, *, device: str = "cpu", batch_size: int = 4, pooling: str = "mean+std",
                 spacing_mm: float = 1.5, verify: bool = True):
        super().__init__(device=device, batch_size=batch_size)
        if pooling not in _POOLINGS:
            raise ValueError(f"deepbet: pooling must be one of {_POOLINGS}, got {pooling!r}")
        if not 1.0 <= float(spacing_mm) <= 4.0:
            raise ValueError(f"deepbet: spacing_mm={spacing_mm} is outside 1-4 mm; the network was trained at "
                             "~1 mm, use 1.0-2.0")
        self.pooling = pooling
        self.spacing_mm = float(spacing_mm)
        self.dim = _BOTTLENECK_CHANNELS * (2 if pooling == "mean+std" else 1)
        path = deepbet_model_path()
        self.weights_sha256 = sha256_file(path)
        self.verified = self.weights_sha256 == DEEPBET_MODEL_SHA256
        if not self.verified:
            msg = (f"deepbet network {path} has sha256 {self.weights_sha256}, expected {DEEPBET_MODEL_SHA256} "
                   f"(deepbet {DEEPBET_VERSION}); features would not be comparable with published runs")
            if verify:
                raise ValueError(msg + f"; install the pinned version ({_INSTALL}) or pass verify=False")
            log.warning(msg + "; continuing because verify=False")
        self.model_path = path
        self.net = torch.jit.load(str(path), map_location=self.device).eval()
        self._relu = getattr(self.net.conv, "2")  # the ReLU module every traced submodule takes as input
        self._stages = [self.net.init, self.net.down0, self.net.down1, self.net.down2, self.net.down3]

    def _modules_to_eval(self):
        return [self.net]

    def preprocess(self, batch: torch.Tensor, voxel_size: float) -> torch.Tensor:
        """``(B, 1, D, H, W)`` in [0, 1] -> network input (resampled, normalised, padded)."""
        x = resample_isotropic(batch.float(), voxel_size, self.spacing_mm)
        normed, backgrounds = [], []
        for v in x[:, 0]:
            n = deepbet_normalize(v)
            normed.append(n)
            # background (intensity 0) maps to the clip floor, which the minimum voxel always reaches
            backgrounds.append(n.min())
        x = torch.stack(normed)[:, None]
        return pad_to_multiple(x, _PAD_MULTIPLE, torch.stack(backgrounds))

    def bottleneck(self, x: torch.Tensor) -> torch.Tensor:
        """Run the encoder half on a preprocessed batch; returns ``(B, 128, D/32, H/32, W/32)``."""
        for stage in self._stages:
            x = stage(self._relu, x)
        return x

    def _features(self, batch: torch.Tensor, voxel_size: float) -> torch.Tensor:
        return pool_features(self.bottleneck(self.preprocess(batch, voxel_size)), self.pooling)

    def fingerprint(self) -> dict:
        return {
            "name": self.name,
            "version": self.version,
            "dim": self.dim,
            "weights": f"deepbet {DEEPBET_VERSION} data/models/model.pt (TorchScript LinkNet3d, Fisch et al. 2024)",
            "weights_sha256": self.weights_sha256,
            "weights_status": "verified" if self.verified else "unverified",
            "layer": "down3 (encoder bottleneck, 128 channels, output stride 32)",
            "pooling": self.pooling,
            "preprocessing": ("trilinear resample (align_corners=False) to spacing_mm isotropic; deepbet normalize: "
                              "clip [q0.5%, q99.5%] -> [0,1], z-score, *0.226+0.449; centred pad to a multiple "
                              "of 32 with the normalised background value"),
            "spacing_mm": self.spacing_mm,
            "input_size": "round(grid side * voxel_size / spacing_mm), padded up to a multiple of 32",
        }
