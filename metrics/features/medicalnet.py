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
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from metrics.features.base import TorchFeatureExtractor, resample_isotropic, sha256_file, volume_seed

log = logging.getLogger("braingenbench.metrics.features")

__all__ = [
    "MedicalNetResNet", "MedicalNetExtractor", "MedicalNet10", "MedicalNet18", "MedicalNet34", "MedicalNet50",
    "load_medicalnet_weights", "medicalnet_weights_path", "medicalnet_normalize", "KNOWN_SHA256",
    "WEIGHTS_ENV", "WeightsMismatchError",
]

WEIGHTS_ENV = "BRAINGENBENCH_WEIGHTS"

# depth -> (block type, blocks per layer), as in Tencent's models/resnet.py
_LAYOUTS: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    10: ("basic", (1, 1, 1, 1)),
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
    200: ("bottleneck", (3, 24, 36, 3)),
}
SUPPORTED_DEPTHS = (10, 18, 34, 50)
# Shortcut used by the released weights (MedicalNet README / MONAI get_medicalnet_pretrained_resnet_args).
_SHORTCUT = {10: "B", 18: "A", 34: "A", 50: "B"}

# Known sha256 of the official files. Only a prefix and a suffix are known to us so far (from
# medmetric's pins, see /work/shared/REFERENCES.md); they are checked as prefix + suffix. Public code
# quotes the full values
#   resnet_10_23dataset.pth  afa8055f3e47f4a18239495d92a7abc587902c69c31c743de2b2784653b72605
#   resnet_50_23dataset.pth  ff48a62219073fb977fd3f4ddfb8dc1367f0ec156c8d6f6c37e205bd683a246e
# (consistent with the prefixes/suffixes) but we have not hashed the files ourselves: replace an entry
# with the full 64-hex value once it has been computed from a downloaded file. Files without an entry
# load with a warning and are recorded as "unpinned".
KNOWN_SHA256: dict[str, str] = {
    "resnet_10_23dataset.pth": "afa8055f...b72605",
    "resnet_50_23dataset.pth": "ff48a622...a246e",
}


class _RandomWeights:
    """Sentinel for :meth:`MedicalNetExtractor.random` (not constructible from a suite file)."""

    def __init__(self, seed: int):
        self.seed = int(seed)


class WeightsMismatchError(ValueError):
    """A checkpoint that does not fit the model (wrong depth, shortcut or file) or fails its hash check."""


# --------------------------------------------------------------------------------------------- model
def _conv3(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Conv3d:
    return nn.Conv3d(cin, cout, kernel_size=3, stride=stride, padding=dilation, dilation=dilation, bias=False)


class _ShortcutA(nn.Module):
    """MedicalNet's type-A shortcut: subsample with a stride-s 1^3 average pool, zero-pad the channels."""

    def __init__(self, out_channels: int, stride: int):
        super().__init__()
        self.out_channels, self.stride = out_channels, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            x = nn.functional.avg_pool3d(x, kernel_size=1, stride=self.stride)
        pad = self.out_channels - x.shape[1]
        if pad > 0:
            x = torch.cat([x, x.new_zeros(x.shape[0], pad, *x.shape[2:])], dim=1)
        return x


class _BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int, dilation: int, downsample: nn.Module | None):
        super().__init__()
        self.conv1 = _conv3(cin, planes, stride, dilation)
        self.bn1 = nn.BatchNorm3d(planes)
        self.conv2 = _conv3(planes, planes, 1, dilation)
        self.bn2 = nn.BatchNorm3d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class _Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int, dilation: int, downsample: nn.Module | None):
        super().__init__()
        self.conv1 = nn.Conv3d(cin, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm3d(planes)
        self.conv2 = _conv3(planes, planes, stride, dilation)
        self.bn2 = nn.BatchNorm3d(planes)
        self.conv3 = nn.Conv3d(planes, planes * 4, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm3d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class MedicalNetResNet(nn.Module):
    """The MedicalNet 3D ResNet backbone (Chen et al. 2019), without the segmentation head.

    Args:
        depth: 10, 18, 34 or 50 (101/152/200 build too, but no official weights are handled).
        shortcut_type: ``"A"`` or ``"B"``; ``None`` picks the one of the released weights
            (A for 18/34, B for 10/50).

    ``forward`` returns the ``layer4`` feature map (output stride 8); ``features`` its global average.
    """

    def __init__(self, depth: int = 50, shortcut_type: str | None = None):
        super().__init__()
        if depth not in _LAYOUTS:
            raise ValueError(f"MedicalNet depth must be one of {sorted(_LAYOUTS)}, got {depth}")
        kind, counts = _LAYOUTS[depth]
        shortcut = shortcut_type or _SHORTCUT.get(depth, "B")
        if shortcut not in ("A", "B"):
            raise ValueError(f"shortcut_type must be 'A' or 'B', got {shortcut_type!r}")
        self.depth, self.shortcut_type = depth, shortcut
        block = _BasicBlock if kind == "basic" else _Bottleneck
        self.conv1 = nn.Conv3d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm3d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool3d(kernel_size=3, stride=2, padding=1)
        self._cin = 64
        self.layer1 = self._make_layer(block, 64, counts[0], stride=1, dilation=1)
        self.layer2 = self._make_layer(block, 128, counts[1], stride=2, dilation=1)
        self.layer3 = self._make_layer(block, 256, counts[2], stride=1, dilation=2)
        self.layer4 = self._make_layer(block, 512, counts[3], stride=1, dilation=4)
        self.out_channels = 512 * block.expansion
        for m in self.modules():  # Tencent's init: Kaiming-normal convs, BN weight 1 / bias 0
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, block, planes: int, n: int, stride: int, dilation: int) -> nn.Sequential:
        out = planes * block.expansion
        downsample = None
        if stride != 1 or self._cin != out:
            if self.shortcut_type == "A":
                downsample = _ShortcutA(out, stride)
            else:
                downsample = nn.Sequential(nn.Conv3d(self._cin, out, kernel_size=1, stride=stride, bias=False),
                                           nn.BatchNorm3d(out))
        layers = [block(self._cin, planes, stride, dilation, downsample)]
        self._cin = out
        layers += [block(out, planes, 1, dilation, None) for _ in range(1, n)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x).mean(dim=(2, 3, 4))


# ------------------------------------------------------------------------------------------- weights
def official_filename(depth: int, variant: str = "23dataset") -> str:
    """``resnet_{depth}_23dataset.pth`` or ``resnet_{depth}.pth`` (``variant="original"``)."""
    if variant not in ("23dataset", "original"):
        raise ValueError(f"MedicalNet variant must be '23dataset' or 'original', got {variant!r}")
    return f"resnet_{depth}_23dataset.pth" if variant == "23dataset" else f"resnet_{depth}.pth"


def hf_repo(depth: int) -> str:
    return f"TencentMedicalNet/MedicalNet-Resnet{depth}"


def medicalnet_weights_path(depth: int, variant: str = "23dataset", weights: str | os.PathLike | None = None) -> Path:
    """Find the checkpoint: ``weights`` (a file, or a directory holding the official file name), else
    ``$BRAINGENBENCH_WEIGHTS/<official name>``.

    Raises:
        FileNotFoundError: naming the file, the Hugging Face repository and where to put it.
    """
    fname = official_filename(depth, variant)
    env = os.environ.get(WEIGHTS_ENV)
    if weights is not None:
        p = Path(weights).expanduser()
        candidate = p / fname if p.is_dir() else p
        where = f"weights={str(weights)!r}"
    elif env:
        candidate = Path(env).expanduser() / fname
        where = f"${WEIGHTS_ENV}={env}"
    else:
        candidate, where = None, f"${WEIGHTS_ENV} is not set and no weights= path was given"
    if candidate is not None and candidate.is_file():
        return candidate
    looked = f"looked for {candidate}" if candidate is not None else "nowhere to look"
    raise FileNotFoundError(
        f"MedicalNet ResNet-{depth} weights not found ({looked}; {where}). Nothing is downloaded at run time: "
        f"download {fname} from https://huggingface.co/{hf_repo(depth)} (e.g. `huggingface-cli download "
        f"{hf_repo(depth)} {fname} --local-dir DIR`), then either set {WEIGHTS_ENV}=DIR (a directory holding "
        f"the official file names) or pass weights='DIR/{fname}' in the suite's extractor arguments."
    )


def _parse_expected(expected: str) -> tuple[str, str]:
    """``"<64 hex>"`` -> (full, ""); ``"<prefix>...<suffix>"`` (or with an ellipsis) -> (prefix, suffix)."""
    e = expected.strip().lower().replace("\u2026", "...")
    if "..." in e:
        prefix, _, suffix = e.partition("...")
        return prefix, suffix
    if not re.fullmatch(r"[0-9a-f]{64}", e):
        raise ValueError(f"expected_sha256 must be 64 hex digits or 'prefix...suffix', got {expected!r}")
    return e, ""


def sha256_matches(actual: str, expected: str) -> bool:
    """Compare a full hex digest with a full or partial (``prefix...suffix``) expected value."""
    prefix, suffix = _parse_expected(expected)
    if not suffix and len(prefix) == 64:
        return actual == prefix
    return actual.startswith(prefix) and actual.endswith(suffix)


def _infer_layout(keys: Sequence[str]) -> str:
    """Describe the network a state dict belongs to (depth, block, shortcut) from its key names."""
    blocks = []
    for i in range(1, 5):
        idx = {int(m.group(1)) for k in keys if (m := re.match(rf"layer{i}\.(\d+)\.", k))}
        blocks.append(max(idx) + 1 if idx else 0)
    kind = "bottleneck" if any(re.match(r"layer1\.0\.conv3\.", k) for k in keys) else "basic"
    shortcut = "B" if any(".downsample.0.weight" in k for k in keys) else "A"
    depth = next((d for d, (kd, c) in _LAYOUTS.items() if kd == kind and tuple(blocks) == c), None)
    what = f"resnet_{depth}" if depth else f"an unknown ResNet (blocks {blocks})"
    return f"{what} ({kind} blocks, shortcut {shortcut})"


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        payload = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, truncated files, non-tensor payloads
        raise WeightsMismatchError(f"cannot read {path} as a MedicalNet checkpoint with torch.load(weights_only=True): "
                                   f"{exc}. Re-download the file; only the official .pth files are supported") from exc
    if isinstance(payload, dict) and "state_dict" in payload:
        payload = payload["state_dict"]
    if not isinstance(payload, dict) or not all(isinstance(v, torch.Tensor) for v in payload.values()):
        raise WeightsMismatchError(f"{path} holds no state dict (expected a dict with key 'state_dict' of tensors, "
                                   "as in Tencent's official files)")
    out = {}
    for k, v in payload.items():
        k = k[len("module."):] if k.startswith("module.") else k
        if k.startswith("conv_seg."):
            continue  # segmentation head of a fine-tuned model; not part of the backbone
        out[k] = v
    return out


def load_medicalnet_weights(model: MedicalNetResNet, path: str | os.PathLike,
                            expected_sha256: str | None = None) -> dict:
    """Load an official MedicalNet checkpoint into ``model`` (strict, backbone only).

    Accepts ``resnet_{10,18,34,50}.pth`` and ``resnet_{10,18,34,50}_23dataset.pth``: ``torch.load`` with
    ``weights_only=True``, the ``state_dict`` entry, DataParallel ``module.`` prefixes stripped, any
    ``conv_seg.*`` head ignored. Missing ``num_batches_tracked`` buffers (old PyTorch files) are harmless.

    Args:
        model: the backbone to fill.
        path: checkpoint file.
        expected_sha256: full hex digest or ``"prefix...suffix"``; ``None`` skips the check.

    Returns:
        ``{"path", "sha256", "n_tensors"}``.

    Raises:
        FileNotFoundError: no such file.
        WeightsMismatchError: hash mismatch, or missing / unexpected / shape-mismatched keys (all listed in
            one message, with a guess of which network the file belongs to).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"MedicalNet checkpoint {path} does not exist")
    digest = sha256_file(path)
    if expected_sha256 is not None and not sha256_matches(digest, expected_sha256):
        raise WeightsMismatchError(
            f"{path} has sha256 {digest}, expected {expected_sha256}: the file is corrupt, truncated or not the "
            "official release. Re-download it from Hugging Face (TencentMedicalNet), or pass verify=False to use "
            "it anyway (recorded as 'unverified')")
    state = _read_state_dict(path)
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        def show(items: list[str]) -> str:
            return ", ".join(items[:6]) + (f" ... (+{len(items) - 6} more)" if len(items) > 6 else "")

        parts = [f"{path.name} does not fit MedicalNet resnet_{model.depth} (shortcut {model.shortcut_type}): "
                 f"this looks like {_infer_layout(list(state))}, not resnet_{model.depth}."]
        if missing:
            parts.append(f"missing {len(missing)} keys: {show(missing)}.")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys: {show(unexpected)}.")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches: {show(shapes)}.")
        parts.append("Use the extractor whose depth matches the file (medicalnet-r10/-r18/-r34/-r50) or point "
                     "weights= at the right file.")
        raise WeightsMismatchError(" ".join(parts))
    model.load_state_dict(state, strict=True)
    return {"path": str(path), "sha256": digest, "n_tensors": len(state)}


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
