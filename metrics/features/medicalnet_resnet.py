"""The MedicalNet (Med3D) 3D ResNet backbone, rebuilt as Tencent's ``models/resnet.py`` defines it so
that the official state dicts load strictly (part of :mod:`metrics.features.medicalnet`, which
describes the architecture): layouts per depth, the released shortcut types, the blocks and
:class:`MedicalNetResNet`."""

from __future__ import annotations

import torch
from torch import nn

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
