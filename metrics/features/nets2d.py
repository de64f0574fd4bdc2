"""2D backbones of published 2.5D FIDs, in plain torch, with the published state-dict layouts.

* :class:`SqueezeNet11`: torchvision's ``squeezenet1_1`` (Iandola et al. 2016, v1.1): ``features.0`` conv
  3->64 3x3 stride 2, ReLU, max-pool 3/2 (ceil mode), Fire modules at ``features.3, 4, 6, 7, 9, 10, 11,
  12`` (each ``squeeze``, ``expand1x1``, ``expand3x3`` with bias), max-pools at 5 and 8; ``classifier.1``
  conv 512->1000 1x1. Keys and shapes equal those of ``squeezenet1_1-b8a52dc0.pth`` (52 tensors), so the
  ImageNet file loads strictly. :meth:`SqueezeNet11.features_pooled` is the 512-d global average of
  ``features`` (what the VLM3D scorer uses; the classifier is unused).
* :class:`RadImageNetResNet50`: the Keras ResNet-50 of RadImageNet (Mei et al. 2022) as converted to
  PyTorch by ``Warvito/radimagenet-models`` (the ``torch.hub`` model MAISI loads): every conv has a bias,
  the stride of a stage sits on the first 1x1 conv of its first bottleneck (Keras), BatchNorm eps
  1.001e-5, ``downsample.0`` conv + ``downsample.1`` BatchNorm, no classifier (``_notop``). Its output is
  the ``layer4`` map (2048 channels); MAISI averages it spatially.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["SqueezeNet11", "RadImageNetResNet50"]


class _Fire(nn.Module):
    def __init__(self, inplanes: int, squeeze: int, expand1x1: int, expand3x3: int):
        super().__init__()
        self.squeeze = nn.Conv2d(inplanes, squeeze, kernel_size=1)
        self.squeeze_activation = nn.ReLU(inplace=True)
        self.expand1x1 = nn.Conv2d(squeeze, expand1x1, kernel_size=1)
        self.expand1x1_activation = nn.ReLU(inplace=True)
        self.expand3x3 = nn.Conv2d(squeeze, expand3x3, kernel_size=3, padding=1)
        self.expand3x3_activation = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.squeeze_activation(self.squeeze(x))
        return torch.cat([self.expand1x1_activation(self.expand1x1(x)),
                          self.expand3x3_activation(self.expand3x3(x))], 1)


class SqueezeNet11(nn.Module):
    """SqueezeNet 1.1 in torchvision's layout (``features.*``, ``classifier.1.*``)."""

    out_channels = 512

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        pool = dict(kernel_size=3, stride=2, ceil_mode=True)
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=3, stride=2), nn.ReLU(inplace=True), nn.MaxPool2d(**pool),
            _Fire(64, 16, 64, 64), _Fire(128, 16, 64, 64), nn.MaxPool2d(**pool),
            _Fire(128, 32, 128, 128), _Fire(256, 32, 128, 128), nn.MaxPool2d(**pool),
            _Fire(256, 48, 192, 192), _Fire(384, 48, 192, 192), _Fire(384, 64, 256, 256), _Fire(512, 64, 256, 256),
        )
        self.classifier = nn.Sequential(nn.Dropout(p=0.5), nn.Conv2d(512, num_classes, kernel_size=1),
                                        nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d((1, 1)))

    def features_pooled(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` -> ``(B, 512)``: global average of ``features``."""
        return self.features(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.classifier(self.features(x)), 1)


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=1.001e-5)


class _KerasBottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, stride=stride, bias=True)
        self.bn1 = _bn(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, padding=1, bias=True)
        self.bn2 = _bn(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, kernel_size=1, bias=True)
        self.bn3 = _bn(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class RadImageNetResNet50(nn.Module):
    """RadImageNet ResNet-50 (Keras layout converted to PyTorch), ``layer4`` map as output."""

    out_channels = 2048

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=True)
        self.bn1 = _bn(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        inplanes = 64
        for i, (planes, blocks, stride) in enumerate(((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)), start=1):
            down = nn.Sequential(nn.Conv2d(inplanes, planes * 4, kernel_size=1, stride=stride, bias=True),
                                 _bn(planes * 4))
            layers = [_KerasBottleneck(inplanes, planes, stride, down)]
            inplanes = planes * 4
            layers += [_KerasBottleneck(inplanes, planes) for _ in range(1, blocks)]
            setattr(self, f"layer{i}", nn.Sequential(*layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))
