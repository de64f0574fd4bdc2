"""MedicalNet (Med3D) 3D ResNet features, loaded from the official Tencent checkpoints.

Chen, Ma and Zheng 2019, "Med3D: Transfer Learning for 3D Medical Image Analysis" (arXiv 1904.00625),
released 3D ResNets pretrained on 8 (``resnet_{d}.pth``) and later 23 (``resnet_{d}_23dataset.pth``)
segmentation datasets. Their pooled last-stage activations are the usual "FID for 3D medical images"
features (e.g. Pinaya et al. 2022). We rebuild the backbone exactly as Tencent's ``models/resnet.py``
defines it so that the released state dicts load strictly:

- ``conv1`` 7^3 stride 2 padding 3 (no bias), ``bn1``, ReLU, max-pool 3 stride 2 padding 1;
- ``layer1`` stride 1, ``layer2`` stride 2, ``layer3`` stride 1 dilation 2, ``layer4`` stride 1
  dilation 4 (every block of a layer, including the first, uses the layer's dilation): output stride 8;
- shortcut type ``A`` (parameter-free: stride-s 1^3 average pool + zero-padded channels) for depths 18
  and 34, type ``B`` (1^3 conv without bias + BatchNorm) for 10 and 50;
- ``BasicBlock`` (two 3^3 convs) for 10/18/34 -> 512 channels, ``Bottleneck`` (1^3, 3^3, 1^3,
  expansion 4) for 50 -> 2048 channels;
- no segmentation head (``conv_seg``): the released files hold the backbone only.

MONAI's ``resnet10/18/34/50`` load the same state dicts (shortcut B/A/A/B, ``bias_downsample``
False/True/True/False) but use no dilation and a stride-2 ``layer3``/``layer4``: activations differ, so
FIDs from MONAI's and this loader are not comparable.

Features are the global average pool of ``layer4``. Input: the volume on the suite grid (or resampled to
``spacing_mm``), normalised as in MedicalNet's data code (z-score with the mean/std of voxels > 0,
background voxels replaced by N(0, 1) noise, here seeded from the volume's bytes so that it is
deterministic and order independent) or by a plain whole-volume z-score.

Layout: the backbone is in :mod:`metrics.features.medicalnet_resnet`, finding/checking/loading the
checkpoints in :mod:`metrics.features.medicalnet_weights`; this module holds the normalisation and
the extractors and re-exports the rest.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from metrics.features.base import TorchFeatureExtractor, resample_isotropic, volume_seed
from metrics.features.medicalnet_resnet import (_LAYOUTS, _SHORTCUT, SUPPORTED_DEPTHS, MedicalNetResNet, _BasicBlock,
                                                _Bottleneck, _conv3, _ShortcutA)
from metrics.features.medicalnet_weights import (KNOWN_SHA256, WEIGHTS_ENV, WeightsMismatchError, _infer_layout,
                                                 _parse_expected, _read_state_dict, hf_repo, load_medicalnet_weights,
                                                 medicalnet_weights_path, official_filename, sha256_matches)

log = logging.getLogger("braingenbench.metrics.features")

__all__ = [
    "MedicalNetResNet", "MedicalNetExtractor", "MedicalNet10", "MedicalNet18", "MedicalNet34", "MedicalNet50",
    "load_medicalnet_weights", "medicalnet_weights_path", "medicalnet_normalize", "KNOWN_SHA256",
    "WEIGHTS_ENV", "WeightsMismatchError",
]
# also importable from here, as before the backbone and the checkpoint code moved to their own modules
__all__ += [
    "SUPPORTED_DEPTHS", "official_filename", "hf_repo", "sha256_matches", "_LAYOUTS", "_SHORTCUT", "_conv3",
    "_ShortcutA", "_BasicBlock", "_Bottleneck", "_parse_expected", "_infer_layout", "_read_state_dict",
]


class _RandomWeights:
    """Sentinel for :meth:`MedicalNetExtractor.random` (not constructible from a suite file)."""

    def __init__(self, seed: int):
        self.seed = int(seed)


# ------------------------------------------------------------------------------------- normalisation
def medicalnet_normalize(volume: np.ndarray, mode: str = "medicalnet", *, seed: int | None = None) -> np.ndarray:
    """Intensity normalisation of one volume ``(D, H, W)``.

    ``"medicalnet"``: as MedicalNet's data code - z-score with the mean/std of voxels > 0, then voxels
    == 0 (background) replaced by N(0, 1) noise drawn from ``np.random.default_rng(seed)``.
    ``"zscore"``: whole-volume z-score, no noise.
    Degenerate volumes (no foreground or zero spread) are only centred and a warning is logged.
    """
    v = np.asarray(volume, dtype=np.float64)
    if mode == "zscore":
        std = v.std()
        if std <= 1e-12:
            log.warning("medicalnet: constant volume; z-score leaves it at 0")
            return np.zeros_like(v, dtype=np.float32)
        return ((v - v.mean()) / std).astype(np.float32)
    if mode != "medicalnet":
        raise ValueError(f"normalization must be 'medicalnet' or 'zscore', got {mode!r}")
    fg = v > 0
    if fg.sum() < 2 or v[fg].std() <= 1e-12:
        log.warning("medicalnet: volume has fewer than 2 foreground voxels or no spread; only centring it")
        out = v - (v[fg].mean() if fg.any() else 0.0)
    else:
        out = (v - v[fg].mean()) / v[fg].std()
    bg = v == 0
    if bg.any():
        rng = np.random.default_rng(seed)
        out[bg] = rng.standard_normal(v.shape)[bg]
    return out.astype(np.float32)


# ----------------------------------------------------------------------------------------- extractor
class MedicalNetExtractor(TorchFeatureExtractor):
    """Global-average-pooled ``layer4`` features of a MedicalNet 3D ResNet (Chen et al. 2019).

    Input size: by default the suite grid as given (``spacing_mm=None``: 48x64x56 at 3 mm gives a
    6x8x7 ``layer4`` map, 72x96x80 at 2 mm gives 9x12x10). MedicalNet's own 56x448x448 resize is far too
    slow on CPU and stretches anatomy anisotropically. ``spacing_mm`` resamples (trilinear) to that
    isotropic voxel size first. Normalisation happens after resampling, as in MedicalNet's data code.

    Args:
        depth: 10, 18, 34 or 50.
        weights: checkpoint file or directory holding the official names; default ``$BRAINGENBENCH_WEIGHTS``.
        variant: ``"23dataset"`` (default, as MONAI/medmetric) or ``"original"`` (8 datasets); selects the
            file name looked for.
        device: torch device.
        batch_size: volumes per forward pass (no effect on the numbers: BatchNorm uses running statistics).
        normalization: ``"medicalnet"`` or ``"zscore"`` (see :func:`medicalnet_normalize`).
        spacing_mm: ``None`` (grid as given) or an isotropic voxel size to resample to.
        verify: a hash mismatch is an error; ``False`` logs a warning and records ``"unverified"``.
        expected_sha256: overrides the built-in table (full hex or ``prefix...suffix``).

    Raises:
        FileNotFoundError: weights absent (names the file, the Hugging Face repo and where to put it).
        WeightsMismatchError: wrong hash (with ``verify=True``) or a checkpoint of another depth.
    """

    name = "medicalnet"
    version = "1"

    def __init__(self, *, depth: int = 50, weights: str | None = None, variant: str = "23dataset",
                 device: str = "cpu", batch_size: int = 2, normalization: str = "medicalnet",
                 spacing_mm: float | None = None, verify: bool = True, expected_sha256: str | None = None):
        super().__init__(device=device, batch_size=batch_size)
        depth = int(depth)
        if depth not in SUPPORTED_DEPTHS:
            raise ValueError(f"MedicalNet depth must be one of {SUPPORTED_DEPTHS}, got {depth}")
        if normalization not in ("medicalnet", "zscore"):
            raise ValueError(f"normalization must be 'medicalnet' or 'zscore', got {normalization!r}")
        if spacing_mm is not None and not 0.5 <= float(spacing_mm) <= 8.0:
            raise ValueError(f"spacing_mm must be None or 0.5-8 mm, got {spacing_mm}")
        self.depth = depth
        self.name = f"medicalnet-r{depth}"
        self.normalization = normalization
        self.spacing_mm = None if spacing_mm is None else float(spacing_mm)
        # the random init (overwritten by the weights) must not consume the caller's global torch RNG
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(weights.seed if isinstance(weights, _RandomWeights) else 0)
            self.model = MedicalNetResNet(depth)
        self.dim = self.model.out_channels
        self._weights_label = "random init"
        self.weights_sha256: str | None = None
        self.weights_status = "random"
        if isinstance(weights, _RandomWeights):  # tests and benchmarks only, see random()
            self._weights_label = f"random init, torch seed {weights.seed}"
            self.model = self.model.to(self.device).eval()
            return
        path = medicalnet_weights_path(depth, variant, weights)
        expected = expected_sha256 or KNOWN_SHA256.get(path.name)
        info = load_medicalnet_weights(self.model, path, expected if verify else None)
        if expected is None:
            status = "unpinned"
            log.warning("medicalnet: no known sha256 for %s; loaded it unverified (its sha256 %s is recorded in "
                        "the fingerprint)", path.name, info["sha256"])
        elif not sha256_matches(info["sha256"], expected):  # only reachable with verify=False
            status = "unverified"
            log.warning("medicalnet: %s has sha256 %s, expected %s; continuing because verify=False "
                        "(recorded as 'unverified')", path, info["sha256"], expected)
        else:
            status = "verified" if len(_parse_expected(expected)[0]) == 64 else "verified-prefix-suffix"
        self.weights_sha256 = info["sha256"]
        self.weights_status = status
        self._weights_label = path.name
        self.model = self.model.to(self.device).eval()

    @classmethod
    def random(cls, depth: int, *, seed: int = 0, device: str = "cpu", batch_size: int = 2,
               normalization: str = "medicalnet", spacing_mm: float | None = None) -> "MedicalNetExtractor":
        """An extractor with Tencent's random initialisation (seeded): for tests and speed benchmarks only."""
        return MedicalNetExtractor(depth=depth, weights=_RandomWeights(seed),  # type: ignore[arg-type]
                                   device=device, batch_size=batch_size, normalization=normalization,
                                   spacing_mm=spacing_mm)

    def _modules_to_eval(self):
        return [self.model]

    def preprocess(self, batch: torch.Tensor, voxel_size: float) -> torch.Tensor:
        """``(B, 1, D, H, W)`` in [0, 1] -> normalised network input (noise seeded per input volume)."""
        seeds = [volume_seed(v) for v in batch.cpu().numpy()]
        x = resample_isotropic(batch.float(), voxel_size, self.spacing_mm)
        arr = x[:, 0].cpu().numpy()
        normed = np.stack([medicalnet_normalize(a, self.normalization, seed=s) for a, s in zip(arr, seeds)])
        return torch.from_numpy(normed)[:, None].to(self.device)

    def _features(self, batch: torch.Tensor, voxel_size: float) -> torch.Tensor:
        return self.model.features(self.preprocess(batch, voxel_size))

    def fingerprint(self) -> dict:
        return {
            "name": self.name,
            "version": self.version,
            "dim": self.dim,
            "weights": self._weights_label,
            "weights_sha256": self.weights_sha256,
            "weights_status": self.weights_status,
            "architecture": (f"MedicalNet 3D ResNet-{self.depth} (Chen et al. 2019), shortcut "
                             f"{self.model.shortcut_type}, layer3/4 dilation 2/4, output stride 8"),
            "layer": "layer4, global average pool",
            "normalization": self.normalization,
            "preprocessing": ("trilinear resample to spacing_mm (if set); "
                              + ("z-score with mean/std of voxels > 0, voxels == 0 replaced by N(0,1) noise seeded "
                                 "from sha256 of the input volume's float32 bytes"
                                 if self.normalization == "medicalnet" else "whole-volume z-score")),
            "spacing_mm": self.spacing_mm,
            "input_size": "grid as given" if self.spacing_mm is None else
                          f"round(grid side * voxel_size / {self.spacing_mm}), no padding",
        }


def _fixed_depth(depth: int):
    class _MedicalNetD(MedicalNetExtractor):
        __doc__ = (f"MedicalNet ResNet-{depth} features ({512 if depth < 50 else 2048}-d); "
                   "same arguments as :class:`MedicalNetExtractor` without ``depth``.")

        def __init__(self, *, weights: str | None = None, variant: str = "23dataset", device: str = "cpu",
                     batch_size: int = 2, normalization: str = "medicalnet", spacing_mm: float | None = None,
                     verify: bool = True, expected_sha256: str | None = None):
            super().__init__(depth=depth, weights=weights, variant=variant, device=device, batch_size=batch_size,
                             normalization=normalization, spacing_mm=spacing_mm, verify=verify,
                             expected_sha256=expected_sha256)

    _MedicalNetD.__name__ = _MedicalNetD.__qualname__ = f"MedicalNet{depth}"
    return _MedicalNetD


MedicalNet10 = _fixed_depth(10)
MedicalNet18 = _fixed_depth(18)
MedicalNet34 = _fixed_depth(34)
MedicalNet50 = _fixed_depth(50)
