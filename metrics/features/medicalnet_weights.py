"""Finding, checking and loading the official MedicalNet checkpoints (part of
:mod:`metrics.features.medicalnet`): ``$BRAINGENBENCH_WEIGHTS``, the full sha256 pins of every official
file (a user's own pin may be ``prefix...suffix``), and a strict backbone-only state-dict load whose
errors name the network the file belongs to."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Sequence

import torch

from metrics.features.base import sha256_file
from metrics.features.medicalnet_resnet import _LAYOUTS, MedicalNetResNet

WEIGHTS_ENV = "BRAINGENBENCH_WEIGHTS"

# sha256 of the official files (Hugging Face ``TencentMedicalNet/MedicalNet-Resnet{depth}``, revision
# main), as pinned in medmetric 0.1.1's manifest (``medmetric/weights/medicalnet.yaml``, MIT). A file of
# another name loads with a warning and is recorded as "unpinned"; ``verify=False`` skips the check.
KNOWN_SHA256: dict[str, str] = {
    "resnet_10.pth": "2824951eaef30e115929b89bec72342380b08d14792bda1449974ac849e497c0",
    "resnet_10_23dataset.pth": "afa8055f3e47f4a18239495d92a7abc587902c69c31c743de2b2784653b72605",
    "resnet_18.pth": "38b3a17444c5c18a795355a868e6a2d9ce9318054067f5373d337f55c0f61da3",
    "resnet_18_23dataset.pth": "61224f9317fcce873366deb3703183e92cc47325b726b69691b33536244e10f4",
    "resnet_34.pth": "977a1be79298602fa35980de9c03789229ad36087fb1f4d9bde468aec653c658",
    "resnet_34_23dataset.pth": "3ea7188e396774e4ef95b66e5e90a78273bb33f6e58d3d717bf24f5f1aaeaa28",
    "resnet_50.pth": "5b6189cafbee2f5604a7279b62bc163365aa6a86a377e1dc260a14275cacbd84",
    "resnet_50_23dataset.pth": "ff48a62219073fb977fd3f4ddfb8dc1367f0ec156c8d6f6c37e205bd683a246e",
    "resnet_101.pth": "a26bbcf9b2ad35f048b0fa317234c003f171a4d719760e5c4aff9f793654ebcf",
    "resnet_152.pth": "e96c459f5317ef2cbb898c91575402da2c78b31a31f55c5d28943683fe0626da",
    "resnet_200.pth": "df58525b0276117169782617a379480d2cbc75230e84e152c603bf22a1fabfa8",
}


class WeightsMismatchError(ValueError):
    """A checkpoint that does not fit the model (wrong depth, shortcut or file) or fails its hash check."""


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
    load_exact(model, state, path, f"MedicalNet resnet_{model.depth} (shortcut {model.shortcut_type})",
               diagnosis=f"this looks like {_infer_layout(list(state))}, not resnet_{model.depth}",
               advice="Use the extractor whose depth matches the file (medicalnet-r10/-r18/-r34/-r50) or point "
                      "weights= at the right file.")
    return {"path": str(path), "sha256": digest, "n_tensors": len(state)}


def load_exact(model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path, who: str, *,
               diagnosis: str = "", advice: str = "") -> int:
    """``model.load_state_dict(state, strict=True)`` after listing, in one message, every key that is
    missing, unexpected or of another shape (missing ``num_batches_tracked`` buffers are allowed);
    returns the number of tensors loaded.

    Raises:
        WeightsMismatchError: "<file> does not fit <who>: <diagnosis>. N missing ... <advice>".
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        def show(items: list[str]) -> str:
            return ", ".join(items[:6]) + (f" ... (+{len(items) - 6} more)" if len(items) > 6 else "")

        parts = [f"{path.name} does not fit {who}" + (f": {diagnosis}." if diagnosis else ".")]
        for what, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatches:", shapes)):
            if items:
                parts.append(f"{len(items)} {what} {show(items)}.")
        if advice:
            parts.append(advice)
        raise WeightsMismatchError(" ".join(parts))
    for k, v in own.items():  # files saved without num_batches_tracked
        state.setdefault(k, v)
    model.load_state_dict(state, strict=True)
    return len(state)
