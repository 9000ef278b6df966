"""CIFAR ResNets of He et al. 2016 (section 4.2) with parameter-free "option A" shortcuts.

Architecture (as described in ../shared/data/SOURCES.md for the akamaster/pytorch_resnet_cifar10 weights): a 3x3
stem conv (16 channels) + BN + ReLU, three stages of ``n`` basic blocks with widths 16/32/64 and strides 1/2/2
(``n = (depth - 2) / 6``), global average pooling and a linear classifier. When a block changes shape, its
shortcut subsamples ``x[:, :, ::2, ::2]`` and zero-pads the channels, so it has no parameters. Parameter names
(``conv1, bn1, layer{1,2,3}.{i}.{conv1,bn1,conv2,bn2}, linear``) match the published checkpoints.

The models are registered with timm: ``timm.create_model("cifar_resnet56", checkpoint_path=...)``.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from timm.models import register_model
from torch import Tensor, nn


# Preprocessing of the reference training code: ToTensor, then ImageNet mean/std (not CIFAR statistics).
PRETRAINED_CFG = {
    "input_size": (3, 32, 32),
    "mean": (0.485, 0.456, 0.406),
    "std": (0.229, 0.224, 0.225),
    "crop_pct": 1.0,
    "crop_mode": "center",
    "interpolation": "bilinear",
    "num_classes": 10,
    "first_conv": "conv1",
    "classifier": "linear",
}


class PadShortcut(nn.Module):
    """Option-A shortcut: subsample by 2 and zero-pad ``pad`` channels on each side."""

    def __init__(self, pad: int) -> None:
        super().__init__()
        self.pad = pad

    def forward(self, x: Tensor) -> Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = PadShortcut(planes // 4)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-``6n+2`` for 32x32 images."""

    def __init__(self, depth: int = 20, num_classes: int = 10, in_chans: int = 3, **kwargs: object) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110); got {depth}.")
        blocks = (depth - 2) // 6
        self.num_classes = num_classes
        self.pretrained_cfg = dict(PRETRAINED_CFG, num_classes=num_classes, architecture=f"cifar_resnet{depth}")
        self.conv1 = nn.Conv2d(in_chans, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        in_planes = 16
        for index, (planes, stride) in enumerate(((16, 1), (32, 2), (64, 2)), start=1):
            layers = []
            for block in range(blocks):
                layers.append(BasicBlock(in_planes, planes, stride if block == 0 else 1))
                in_planes = planes
            setattr(self, f"layer{index}", nn.Sequential(*layers))
        self.linear = nn.Linear(64, num_classes)
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)

    def get_classifier(self) -> nn.Module:
        return self.linear


def load_cifar_checkpoint(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load a reference checkpoint (``{"state_dict": ...}`` saved from DataParallel, keys prefixed ``module.``)."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else checkpoint
    state = {key.removeprefix("module."): value for key, value in state.items()}
    model.load_state_dict(state)
    return model


def _create(depth: int, pretrained: bool = False, checkpoint_path: str | None = None, **kwargs: object) -> CifarResNet:
    if pretrained and not checkpoint_path:
        raise ValueError(
            "cifar_resnet weights are not on the Hub: pass checkpoint_path=<resnet{depth}-*.th> (e.g. from "
            "../shared/data/weights)."
        )
    kwargs.pop("pretrained_cfg", None)
    kwargs.pop("pretrained_cfg_overlay", None)
    model = CifarResNet(depth, **kwargs)  # type: ignore[arg-type]
    if checkpoint_path:
        load_cifar_checkpoint(model, checkpoint_path)
    return model


@register_model
def cifar_resnet20(pretrained: bool = False, **kwargs: object) -> CifarResNet:
    """ResNet-20 for CIFAR (0.27M parameters)."""
    return _create(20, pretrained, **kwargs)  # type: ignore[arg-type]


@register_model
def cifar_resnet32(pretrained: bool = False, **kwargs: object) -> CifarResNet:
    """ResNet-32 for CIFAR."""
    return _create(32, pretrained, **kwargs)  # type: ignore[arg-type]


@register_model
def cifar_resnet44(pretrained: bool = False, **kwargs: object) -> CifarResNet:
    """ResNet-44 for CIFAR."""
    return _create(44, pretrained, **kwargs)  # type: ignore[arg-type]


@register_model
def cifar_resnet56(pretrained: bool = False, **kwargs: object) -> CifarResNet:
    """ResNet-56 for CIFAR (0.85M parameters)."""
    return _create(56, pretrained, **kwargs)  # type: ignore[arg-type]
