"""MedicalNet ResNet-50 extractors exactly as two published protocols use them (``docs/protocols.md``).

* :class:`HaganMedicalNet50` (``hagan-medicalnet-r50``): the HA-GAN evaluation (batmanlab/HA-GAN,
  ``evaluation/fid_score.py``; followed by WDM-3D and 3D-MedDiffusion): Tencent's *original* ResNet-50
  (``resnet_50.pth``, 8 datasets, not the 23-dataset file), shortcut B, the same dilated backbone as
  :mod:`metrics.features.medicalnet_resnet`, ``conv_seg`` replaced by a global average pool -> 2048-d.
  Input: the volume in [-1, 1] (our [0, 1] volumes mapped by ``2 x - 1``), no intensity normalisation.
* :class:`MedmetricMedicalNet50` (``medmetric-medicalnet-r50``): medmetric 0.1.1: the 23-dataset file
  (``resnet_50_23dataset.pth``), per-volume z-score, 2048-d pooled features.

Both refuse to run without the exact file; :meth:`missing_weights` tells the runner beforehand so the
metrics using them are skipped with one log line (the rest of the protocol still runs).
"""

from __future__ import annotations

import numpy as np
import torch

from metrics.features.base import TorchFeatureExtractor
from metrics.features.medicalnet import medicalnet_normalize
from metrics.features.medicalnet_resnet import MedicalNetResNet
from metrics.features.medicalnet_weights import KNOWN_SHA256, load_medicalnet_weights
from metrics.features.pinned import PinnedWeights, check_pinned, missing_message, resolve_pinned, where_looked

__all__ = ["HAGAN_RESNET50", "MEDMETRIC_RESNET50", "HaganMedicalNet50", "MedmetricMedicalNet50", "PinnedExtractor"]

HAGAN_RESNET50 = PinnedWeights(
    filename="resnet_50.pth",
    source="https://huggingface.co/TencentMedicalNet/MedicalNet-Resnet50 (resnet_50.pth; also Tencent/MedicalNet's "
           "Google Drive / Weiyun archive, pretrain/resnet_50.pth)",
    sha256=KNOWN_SHA256["resnet_50.pth"],
    note="published in medmetric 0.1.1's weights manifest (medmetric/weights/medicalnet.yaml: "
         "TencentMedicalNet/MedicalNet-Resnet50, revision main); HA-GAN itself publishes none; not re-hashed by us")
MEDMETRIC_RESNET50 = PinnedWeights(
    filename="resnet_50_23dataset.pth",
    source="https://huggingface.co/TencentMedicalNet/MedicalNet-Resnet50 (resnet_50_23dataset.pth)",
    sha256=KNOWN_SHA256["resnet_50_23dataset.pth"],
    note="published in medmetric 0.1.1's weights manifest (medmetric/weights/medicalnet.yaml: "
         "TencentMedicalNet/MedicalNet-Resnet50, revision main); not re-hashed by us")


class PinnedExtractor(TorchFeatureExtractor):
    """A torch extractor whose weights are one :class:`PinnedWeights` file (class attribute ``pin``)."""

    pin: PinnedWeights

    @classmethod
    def missing_weights(cls, weights: str | None = None, **_ignored) -> str | None:
        """``None`` when the file is there, else the message naming it, its source and where to put it."""
        if resolve_pinned(cls.pin, weights) is not None:
            return None
        return f"{cls.name}: " + missing_message(cls.pin, where_looked(cls.pin, weights))

    def _locate(self, weights: str | None):
        path = resolve_pinned(self.pin, weights)
        if path is None:
            raise FileNotFoundError(self.missing_weights(weights))
        return path

    def _pinned_fingerprint(self) -> dict:
        return {"weights": self.pin.filename, "weights_sha256": self.weights_sha256,
                "weights_status": self.weights_status, "weights_source": self.pin.source,
                "weights_expected_sha256": self.pin.sha256}


class _ProtocolMedicalNet50(PinnedExtractor):
    version = "1"
    dim = 2048

    def __init__(self, *, weights: str | None = None, sha256: str | None = None, verify: bool = True,
                 device: str = "cpu", batch_size: int = 2):
        super().__init__(device=device, batch_size=batch_size)
        path = self._locate(weights)
        self.weights_sha256, self.weights_status = check_pinned(self.pin, path, sha256=sha256, verify=verify)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.model = MedicalNetResNet(50)
        load_medicalnet_weights(self.model, path, None)  # hash checked above; strict key/shape check here
        self.model = self.model.to(self.device).eval()

    def _modules_to_eval(self):
        return [self.model]

    def preprocess(self, batch: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _features(self, batch: torch.Tensor, voxel_size: float) -> torch.Tensor:
        return self.model.features(self.preprocess(batch.float()))


class HaganMedicalNet50(_ProtocolMedicalNet50):
    """HA-GAN's FID features: MedicalNet ``resnet_50.pth``, input ``2 x - 1``, no normalisation, 2048-d.

    Args:
        weights: the file or a folder holding ``resnet_50.pth`` (default ``$BRAINGENBENCH_WEIGHTS``).
        sha256: overrides the pinned sha256 (medmetric's manifest value).
        verify: ``False`` loads any file of the right layout, recorded as ``"unverified"``.
    """

    name = "hagan-medicalnet-r50"
    pin = HAGAN_RESNET50

    def preprocess(self, batch: torch.Tensor) -> torch.Tensor:
        return batch * 2.0 - 1.0

    def fingerprint(self) -> dict:
        return {"name": self.name, "version": self.version, "dim": self.dim, **self._pinned_fingerprint(),
                "architecture": "MedicalNet 3D ResNet-50 (shortcut B, layer3/4 dilation 2/4), as HA-GAN's resnet3D",
                "layer": "layer4, global average pool", "preprocessing": "x -> 2x - 1 (HA-GAN's [-1, 1]); no "
                "intensity normalisation; grid as given (HA-GAN: 256^3 volumes)", "protocol": "hagan-fid"}


class MedmetricMedicalNet50(_ProtocolMedicalNet50):
    """medmetric's features: MedicalNet ``resnet_50_23dataset.pth``, per-volume z-score, 2048-d.

    Args: as :class:`HaganMedicalNet50`.
    """

    name = "medmetric-medicalnet-r50"
    pin = MEDMETRIC_RESNET50

    def preprocess(self, batch: torch.Tensor) -> torch.Tensor:
        arr = batch[:, 0].cpu().numpy()
        normed = np.stack([medicalnet_normalize(a, "zscore") for a in arr])
        return torch.from_numpy(normed)[:, None].to(self.device)

    def fingerprint(self) -> dict:
        return {"name": self.name, "version": self.version, "dim": self.dim, **self._pinned_fingerprint(),
                "architecture": "MedicalNet 3D ResNet-50 (shortcut B, layer3/4 dilation 2/4)",
                "layer": "layer4, global average pool", "preprocessing": "whole-volume z-score; grid as given",
                "protocol": "medmetric"}
