"""The handcrafted CNNs of the seed work: ``cnn5``, ``cnn8`` and ``cnn13`` (built through
:func:`lungxray.models.architectures.create_model`, like every architecture).

=========  ====================================================================================================
``cnn5``   5 x [conv (32-64-128-256-512 filters, kernels 5,5,3,3,3) -> BN -> ReLU -> 2x2 max-pool] -> global
           average pool -> dropout(drop_rate) -> linear
``cnn8``   *plain* (no batch norm) 8-layer CNN, read as **6 conv + 2 dense** layers: [conv32, conv32, pool, conv64,
           conv64, pool, conv128, conv128, pool] (3x3, ReLU) -> global average pool -> Linear(128, 256) -> ReLU ->
           dropout(drop_rate or 0.5) -> Linear(256, classes)
``cnn13``  VGG-like 13-layer CNN, read as **10 conv + 3 dense** layers: 5 blocks of 2 x [conv3x3 -> BN -> ReLU]
           (32, 64, 128, 256, 512 filters), each block followed by 2x2 max-pool and Dropout(0.25) -> global average
           pool -> Linear(512, 256) -> ReLU -> dropout -> Linear(256, 128) -> ReLU -> dropout -> Linear(128, classes)
           (dense dropout = drop_rate or 0.5)
=========  ====================================================================================================

They pool globally before their dense layers, so any input of at least ``describe(name)['min_input']`` pixels works.
Each keeps timm's interface (``forward_features``, ``forward_head``, ``get_classifier``, ``reset_classifier``,
``num_features``), so heads and freezing work on them as on the timm models. Outputs are logits.
"""

from __future__ import annotations

import torch
from torch import nn


class HandcraftedCNN(nn.Module):
    """features -> global average pool -> pre_logits (dense layers but the last) -> classifier."""

    def __init__(self, features: nn.Sequential, pre_logits: nn.Module, num_features: int, num_classes: int,
                 drop_rate: float):
        super().__init__()
        self.features = features
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.pre_logits = pre_logits
        self.drop = nn.Dropout(drop_rate)
        self.num_features = num_features
        self.num_classes = num_classes
        self.classifier: nn.Module = nn.Linear(num_features, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.pre_logits(torch.flatten(self.global_pool(x), 1))
        x = self.drop(x)
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.classifier = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()


def _conv(cin: int, cout: int, k: int, bn: bool) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, padding=k // 2, bias=not bn)]
    if bn:
        layers.append(nn.BatchNorm2d(cout))
    layers.append(nn.ReLU(inplace=True))
    return layers


def cnn5(num_classes: int, in_chans: int, drop_rate: float) -> HandcraftedCNN:
    layers: list[nn.Module] = []
    cin = in_chans
    for cout, k in zip((32, 64, 128, 256, 512), (5, 5, 3, 3, 3)):
        layers += _conv(cin, cout, k, bn=True) + [nn.MaxPool2d(2)]
        cin = cout
    return HandcraftedCNN(nn.Sequential(*layers), nn.Identity(), 512, num_classes, drop_rate)


def cnn8(num_classes: int, in_chans: int, drop_rate: float) -> HandcraftedCNN:
    layers: list[nn.Module] = []
    cin = in_chans
    for cout in (32, 64, 128):
        layers += _conv(cin, cout, 3, bn=False) + _conv(cout, cout, 3, bn=False) + [nn.MaxPool2d(2)]
        cin = cout
    pre_logits = nn.Sequential(nn.Linear(128, 256), nn.ReLU(inplace=True))
    return HandcraftedCNN(nn.Sequential(*layers), pre_logits, 256, num_classes, drop_rate or 0.5)


def cnn13(num_classes: int, in_chans: int, drop_rate: float) -> HandcraftedCNN:
    layers: list[nn.Module] = []
    cin = in_chans
    for cout in (32, 64, 128, 256, 512):
        layers += _conv(cin, cout, 3, bn=True) + _conv(cout, cout, 3, bn=True) + [nn.MaxPool2d(2), nn.Dropout(0.25)]
        cin = cout
    p = drop_rate or 0.5
    pre_logits = nn.Sequential(nn.Linear(512, 256), nn.ReLU(inplace=True), nn.Dropout(p),
                               nn.Linear(256, 128), nn.ReLU(inplace=True))
    return HandcraftedCNN(nn.Sequential(*layers), pre_logits, 128, num_classes, p)
