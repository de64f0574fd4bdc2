"""2.5D slice features of two published protocols (``docs/protocols.md``).

A 2.5D FID treats every selected 2D slice of every volume as one sample, per plane. To fit the runner's
one-vector-per-volume feature cache, these extractors return, per volume, the slice features laid out
plane by plane (in :data:`metrics.functional.protocols.SLICE_PROTOCOLS` order) and slice by slice
(``n_slices x feature_dim`` each); the ``fid_2p5d`` metric cuts them back with
:func:`metrics.functional.protocols.slice_layout`.

* :class:`Vlm3dSqueezeNet25D` (``vlm3d-squeezenet-2.5d``), the VLM3D 2026 MRI scorer
  (``mr_challenges/mrgen_evaluation/fid_2p5d.py``): every 4th slice (0, 4, 8, ...) along axis 2 (XY),
  1 (XZ) and 0 (YZ); each slice clipped/scaled to its own 0.5-99.5 percentiles, resized to 224x224
  (bilinear, ``align_corners=False``), repeated to 3 channels, **no** ImageNet mean/std; torchvision
  ``squeezenet1_1`` ImageNet ``features``, global average pool -> 512.
* :class:`MaisiRadImageNet25D` (``maisi-radimagenet-2.5d``), MAISI's ``compute_fid_2-5d_ct.py``:
  trilinear resampling to 1 mm, the centre 40 % of slices of each axis (XY along z, YZ along x, ZX along
  y), the slices of one plane min-max scaled together to [0, 1], ImageNet means (0.406, 0.456, 0.485)
  subtracted per channel (BGR order, the same grey image in each), RadImageNet ResNet-50 ``layer4``
  averaged spatially -> 2048. Not reproduced (CT-specific): padding/cropping to ``target_shape`` with
  -1000 HU and the [-1000, 1000] window (the identity on [0, 1] intensities).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from metrics.features.base import check_volumes, resample_isotropic
from metrics.features.nets2d import RadImageNetResNet50, SqueezeNet11
from metrics.features.pinned import PinnedWeights, check_pinned, load_exact, read_state_dict
from metrics.features.protocol_medicalnet import PinnedExtractor
from metrics.functional.protocols import SLICE_PROTOCOLS, percentile_scale, slice_layout

__all__ = ["SQUEEZENET11", "RADIMAGENET_R50", "Slice25DExtractor", "Vlm3dSqueezeNet25D", "MaisiRadImageNet25D"]

SQUEEZENET11 = PinnedWeights(
    filename="squeezenet1_1-b8a52dc0.pth",
    source="https://download.pytorch.org/models/squeezenet1_1-b8a52dc0.pth (torchvision SqueezeNet1_1_Weights."
           "IMAGENET1K_V1)",
    sha256="b8a52dc049b60e4b6ab68ad0df457362afab8b6304b2febdc1650a5dab4d7e7b",
    note="full value quoted by public code next to the torchvision URL; its first 8 hex digits are torchvision's "
         "own hash prefix in the file name; not re-hashed by us")
RADIMAGENET_R50 = PinnedWeights(
    filename="RadImageNet-ResNet50_notop.pth",
    source="torch.hub Warvito/radimagenet-models, model radimagenet_resnet50 (Google Drive file id "
           "1VOWHgOq0rm7OkE_JxlWXhMAH4CvcXUHT; torch.hub saves it under ~/.cache/torch/hub/checkpoints/)",
    sha256=None,
    note="neither Warvito/radimagenet-models nor Project-MONAI/tutorials publishes a sha256 of the file")


class Slice25DExtractor(PinnedExtractor):
    """Per-volume slice features of a 2D network, laid out plane by plane (see the module docstring)."""

    protocol: str = ""
    version = "1"

    def __init__(self, *, weights: str | None = None, sha256: str | None = None, verify: bool = True,
                 device: str = "cpu", batch_size: int = 32):
        super().__init__(device=device, batch_size=batch_size)
        path = self._locate(weights)
        self.weights_sha256, self.weights_status = check_pinned(self.pin, path, sha256=sha256, verify=verify)
        self.net = self.build_net()
        load_exact(self.net, read_state_dict(path, self.name), path, f"{self.name} ({type(self.net).__name__})")
        self.net = self.net.to(self.device).eval()
        self.spec = SLICE_PROTOCOLS[self.protocol]
        self.feature_dim = self.spec["feature_dim"]
        self.dim = 0  # set per grid by __call__: sum over planes of n_slices * feature_dim

    @classmethod
    def build_net(cls) -> torch.nn.Module:
        raise NotImplementedError

    def _modules_to_eval(self):
        return [self.net]

    def plane_images(self, volume: np.ndarray, axis: int, idx: list[int]) -> torch.Tensor:
        """``(n_slices, 3, h, w)`` network inputs of the slices ``idx`` along ``axis``."""
        raise NotImplementedError

    def _embed(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, volumes: np.ndarray, voxel_size: float, progress=None) -> np.ndarray:
        arr = check_volumes(volumes, voxel_size, who=self.name)
        layout = slice_layout(self.protocol, arr.shape[2:], voxel_size)
        self.dim = sum(len(v) for v in layout.values()) * self.feature_dim
        out = np.empty((arr.shape[0], self.dim), dtype=np.float64)
        self.net.eval()
        with torch.no_grad():
            for i in range(arr.shape[0]):
                vol = resample_isotropic(torch.from_numpy(arr[i:i + 1]), voxel_size, self.spec["spacing_mm"])
                vol = vol[0, 0].numpy()
                parts = []
                for plane, axis in self.spec["planes"].items():
                    images = self.plane_images(vol, axis, layout[plane])
                    for s in range(0, images.shape[0], self.batch_size):
                        parts.append(self._embed(images[s:s + self.batch_size].to(self.device)).double().cpu())
                out[i] = torch.cat(parts).numpy().reshape(-1)
                if progress is not None:
                    progress(i + 1, arr.shape[0])
        return out

    def fingerprint(self) -> dict:
        return {"name": self.name, "version": self.version, "dim": "sum over planes of n_slices x feature_dim",
                "feature_dim": self.feature_dim, **self._pinned_fingerprint(), "protocol": self.protocol,
                "slices": {k: v for k, v in self.spec.items() if k != "feature_dim"},
                "architecture": type(self.net).__name__, "preprocessing": self.preprocessing}


class Vlm3dSqueezeNet25D(Slice25DExtractor):
    """VLM3D's FID-2.5D slice features (SqueezeNet 1.1, ImageNet), every 4th slice of each plane.

    Args:
        weights: the file or a folder holding ``squeezenet1_1-b8a52dc0.pth`` (default ``$BRAINGENBENCH_WEIGHTS``).
        sha256: overrides the pinned hash. verify: ``False`` skips the hash check (recorded "unverified").
        batch_size: slices per forward pass.
    """

    name = "vlm3d-squeezenet-2.5d"
    pin = SQUEEZENET11
    protocol = "vlm3d"
    preprocessing = ("per slice: clip to its 0.5-99.5 percentiles, scale to [0, 1] (float32), bilinear resize to "
                     "224x224 (align_corners=False), grey repeated to 3 channels, no ImageNet normalisation")

    @classmethod
    def build_net(cls) -> torch.nn.Module:
        return SqueezeNet11()

    def plane_images(self, volume: np.ndarray, axis: int, idx: list[int]) -> torch.Tensor:
        sl = np.stack([percentile_scale(np.take(volume, j, axis=axis)) for j in idx])
        t = F.interpolate(torch.from_numpy(sl)[:, None], size=(224, 224), mode="bilinear", align_corners=False)
        return t.repeat(1, 3, 1, 1)

    def _embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.net.features_pooled(images)


class MaisiRadImageNet25D(Slice25DExtractor):
    """MAISI's 2.5D FID slice features (RadImageNet ResNet-50), centre 40 % of each axis at 1 mm.

    Args: as :class:`Vlm3dSqueezeNet25D`, for ``RadImageNet-ResNet50_notop.pth`` (no published sha256: pass
    ``sha256=`` or ``verify=False``).
    """

    name = "maisi-radimagenet-2.5d"
    pin = RADIMAGENET_R50
    protocol = "maisi"
    preprocessing = ("trilinear resample to 1 mm; per plane, the selected slices min-max scaled together to [0, 1] "
                     "(+1e-10), minus (0.406, 0.456, 0.485) per channel; no target_shape pad/crop, no CT window")

    @classmethod
    def build_net(cls) -> torch.nn.Module:
        return RadImageNetResNet50()

    def plane_images(self, volume: np.ndarray, axis: int, idx: list[int]) -> torch.Tensor:
        sl = torch.from_numpy(np.stack([np.take(volume, j, axis=axis) for j in idx]).astype(np.float32))
        sl = (sl - sl.min()) / (sl.max() - sl.min() + 1e-10)
        images = sl[:, None].repeat(1, 3, 1, 1)
        return images - torch.tensor([0.406, 0.456, 0.485]).view(1, 3, 1, 1)

    def _embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images).mean(dim=(2, 3))
