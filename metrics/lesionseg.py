"""White-matter lesion segmentation for lesion conformance: a small 3D U-Net trained on ``phantom-ms``.

The lesion metrics need the lesions of *generated* volumes, which come without masks. Lesions are
hyperintense on FLAIR and T2 but so is CSF, and a partial-volume voxel of CSF next to white matter has
a lesion's intensity: a threshold on intensity alone reaches a Dice of 0.67 on FLAIR and 0.24-0.37 on T2
and PD (measured on ``phantom-ms``, 3 mm). A network sees the context (where the ventricles and sulci
are) as well as the contrast.

Model (:class:`LesionNet`): a 3-level U-Net (8/16/32 channels, instance norm, LeakyReLU). Input: the
volume scaled by its brain's 99th intensity percentile, four constant channels that say the modality
(T1, T2, PD, FLAIR: what the prompt asked for) and the atlas's CSF, GM and WM priors on the grid
(volumes live in atlas space, so the priors say where white matter, sulci and ventricles are). Output:
the lesion tissue fraction of every voxel (sigmoid), averaged over the volume and its left-right
mirror image (the network trained on both). The binary mask is ``fraction > 0.8``
(:data:`metrics.functional.lesions.THRESHOLD`, chosen on the training cohort); the lesion volume is the
sum of fractions.

Weights: ``metrics/weights/lesionseg_3mm.safetensors``, trained by ``python -m bench.lesionseg_train``
on a ``phantom-ms`` cohort with seed 1 (its subjects are not those of the seed-0 cohort the suites and
the validation use); their sha256 is checked on load. Validation numbers: ``docs/cohorts.md``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from core.io import sha256_file

__all__ = ["LesionNet", "MODALITIES", "WEIGHTS", "WEIGHTS_SHA256", "load_lesion_net", "normalise", "segment"]

MODALITIES = ("T1", "T2", "PD", "FLAIR")
PRIORS = ("csf", "gm", "wm")
IN_CHANNELS = 1 + len(MODALITIES) + len(PRIORS)
WEIGHTS = Path(__file__).parent / "weights" / "lesionseg_3mm.safetensors"
WEIGHTS_SHA256 = "b2bef96a99d4fd1031c40e043013847f1baa52df598c77fb0639cb629dc16d49"
_HEADER = "lesionseg"


class _Block(nn.Sequential):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__(nn.Conv3d(cin, cout, 3, stride=stride, padding=1), nn.InstanceNorm3d(cout, affine=True),
                         nn.LeakyReLU(0.1), nn.Conv3d(cout, cout, 3, padding=1),
                         nn.InstanceNorm3d(cout, affine=True), nn.LeakyReLU(0.1))


class LesionNet(nn.Module):
    """3-level 3D U-Net: (volume, 4 modality channels, 3 atlas priors) -> lesion-fraction logit."""

    def __init__(self, width: int = 8):
        super().__init__()
        w = width
        self.width = width
        self.enc1, self.enc2, self.enc3 = _Block(IN_CHANNELS, w), _Block(w, 2 * w, 2), _Block(2 * w, 4 * w, 2)
        self.dec2, self.dec1 = _Block(6 * w, 2 * w), _Block(3 * w, w)
        self.head = nn.Conv3d(w, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up = nn.functional.interpolate
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        e3 = self.enc3(e2)
        d2 = self.dec2(torch.cat([up(e3, size=e2.shape[2:], mode="trilinear", align_corners=False), e2], 1))
        d1 = self.dec1(torch.cat([up(d2, size=e1.shape[2:], mode="trilinear", align_corners=False), e1], 1))
        return self.head(d1)


def normalise(volumes: np.ndarray, modalities: list[str], priors: dict[str, np.ndarray]) -> torch.Tensor:
    """``(N, D, H, W)`` volumes -> ``(N, 8, D, H, W)`` network input: the volume over its brain's 99th
    intensity percentile (so the tool's and the cohort's intensity scales do not matter), the modality
    one-hot as constant channels, and the atlas priors ``priors["csf"|"gm"|"wm"]`` on the same grid."""
    vols = np.asarray(volumes, dtype=np.float32)
    for k in PRIORS:
        if np.shape(priors[k]) != vols.shape[1:]:
            raise ValueError(f"lesion segmentation: prior {k!r} has shape {np.shape(priors[k])}, the volumes "
                             f"{vols.shape[1:]}; pass the atlas priors of the volumes' grid")
    out = np.zeros((len(vols), IN_CHANNELS, *vols.shape[1:]), np.float32)
    for j, k in enumerate(PRIORS):
        out[:, 1 + len(MODALITIES) + j] = priors[k]
    for i, (v, mod) in enumerate(zip(vols, modalities)):
        if mod not in MODALITIES:
            raise ValueError(f"lesion segmentation: unknown modality {mod!r}; expected one of {MODALITIES}")
        brain = v > 0
        scale = float(np.percentile(v[brain], 99)) if brain.any() else 1.0
        out[i, 0] = v / max(scale, 1e-6)
        out[i, 1 + MODALITIES.index(mod)] = 1.0
    return torch.from_numpy(out)


def load_lesion_net(path: str | Path = WEIGHTS, *, check_sha256: bool = True) -> tuple[LesionNet, dict]:
    """The network and its metadata (training provenance) from a safetensors file.

    Raises:
        FileNotFoundError: the file is missing (with how to train it).
        ValueError: the file's sha256 is not the shipped one's, or it is not a lesionseg checkpoint.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: lesion-segmentation weights not found; train them with "
                                "`python -m bench.lesionseg_train --cohort DIR --out PATH`")
    if check_sha256 and path.resolve() == WEIGHTS.resolve() and WEIGHTS_SHA256:
        got = sha256_file(path)
        if got != WEIGHTS_SHA256:
            raise ValueError(f"{path}: sha256 {got[:12]}… is not the shipped weights' {WEIGHTS_SHA256[:12]}…; "
                             "restore the file from the repository (git checkout -- metrics/weights)")
    with safe_open(str(path), framework="pt") as f:
        header = f.metadata() or {}
    if _HEADER not in header:
        raise ValueError(f"{path}: not a lesion-segmentation checkpoint (no {_HEADER!r} header)")
    meta = json.loads(header[_HEADER])
    net = LesionNet(int(meta["width"]))
    tensors = load_file(str(path))
    net.load_state_dict({k: v.float() for k, v in tensors.items()})
    return net.eval(), meta


@torch.no_grad()
def segment(net: LesionNet, volumes: np.ndarray, modalities: list[str], priors: dict[str, np.ndarray], *,
            batch_size: int = 4, mirror: bool = True) -> np.ndarray:
    """Lesion tissue fraction ``(N, D, H, W)`` float32 in [0, 1] of volumes in atlas space (3 mm grid);
    ``mirror``: the mean of the outputs for the volume and its left-right mirror image (RAS axis 0)."""
    out = []
    for i in range(0, len(volumes), batch_size):
        x = normalise(volumes[i:i + batch_size], list(modalities[i:i + batch_size]), priors)
        p = torch.sigmoid(net(x))
        if mirror:
            p = (p + torch.sigmoid(net(x.flip(2))).flip(2)) / 2
        out.append(p[:, 0].numpy())
    return np.concatenate(out) if out else np.zeros((0, *np.shape(volumes)[1:]), np.float32)
