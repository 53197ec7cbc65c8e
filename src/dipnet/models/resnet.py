"""CIFAR-style residual networks (He et al., "Deep Residual Learning", CVPR 2016).

ResNet-20: the paper's CIFAR-10 net (Sec. 4.2): 3x3 conv, 3 stages of n = 3 basic blocks with
16/32/64 channels, global average pool, Linear; option-A (parameter-free) shortcuts; 0.27M
parameters. ResNet-18: the usual CIFAR variant of the ImageNet ResNet-18 (3x3 stem, no max-pool,
stages of 2 blocks with 64/128/256/512 channels, 1x1-conv + BN projection shortcuts); 11.17M.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..data.base import DatasetInfo
from ..errors import ConfigError
from ._common import MAX_LAYERS, as_image, check_choice, check_int, check_int_seq, image_shape, zoo_model

SHORTCUTS = ("A", "B")


class PadShortcut(nn.Module):
    """Option-A shortcut: subsample by ``stride`` and zero-pad the new channels (no parameters)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        extra = self.out_channels - self.in_channels
        return F.pad(x, (0, 0, 0, 0, extra // 2, extra - extra // 2))

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, stride={self.stride}"


class BasicBlock(nn.Module):
    """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))`` with 3x3 convolutions."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, shortcut: str = "B") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.act2 = nn.ReLU()
        if stride == 1 and in_channels == out_channels:
            self.shortcut: nn.Module = nn.Identity()
        elif shortcut == "A":
            self.shortcut = PadShortcut(in_channels, out_channels, stride)
        else:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act2(out + self.shortcut(x))


class ResNet(nn.Module):
    """3x3 stem conv + BN + ReLU, stages of :class:`BasicBlock` (the first block of every stage
    after the first has stride 2), global average pool, Linear head.

    Accepts ``(B, C, H, W)`` or the same inputs flattened. Convolutions use He (fan-out) init.
    """

    def __init__(
        self,
        image_shape: Sequence[int],
        num_classes: int,
        blocks: Sequence[int] = (3, 3, 3),
        widths: Sequence[int] = (16, 32, 64),
        shortcut: str = "A",
    ) -> None:
        super().__init__()
        if len(image_shape) != 3:
            raise ConfigError(f"ResNet: image_shape must be (C, H, W), got {tuple(image_shape)}")
        c, h, w = (check_int("ResNet", "image_shape", s) for s in image_shape)
        self.image_shape = (c, h, w)
        num_classes = check_int("ResNet", "num_classes", num_classes)
        blocks = check_int_seq("ResNet", "blocks", blocks, maximum=MAX_LAYERS)
        widths = check_int_seq("ResNet", "widths", widths)
        shortcut = check_choice("ResNet", "shortcut", shortcut, SHORTCUTS)
        if len(blocks) != len(widths):
            raise ConfigError(f"ResNet: blocks {blocks} and widths {widths} must have the same length (one per stage)")
        self.conv1 = nn.Conv2d(self.image_shape[0], widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.act1 = nn.ReLU()
        stages = []
        in_ch = widths[0]
        for i, (n, width) in enumerate(zip(blocks, widths)):
            layers = [BasicBlock(in_ch, width, 1 if i == 0 else 2, shortcut)]
            layers += [BasicBlock(width, width, 1, shortcut) for _ in range(n - 1)]
            stages.append(nn.Sequential(*layers))
            in_ch = width
        self.layers = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(in_ch, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act1(self.bn1(self.conv1(as_image(x, self.image_shape))))
        h = self.layers(h)
        return self.fc(self.flatten(self.pool(h)))


def _scaled(base: tuple[int, ...], width: int) -> tuple[int, ...]:
    return tuple(width * b // base[0] for b in base)


# He et al. 2016 sec. 4.2 with a cosine schedule: SGD 0.1, momentum 0.9, weight decay 5e-4, batch 128
CIFAR_RECIPE = {"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "schedule": "cosine",
                "batch_size": 128, "epochs": 200}


@zoo_model("resnet20", "CIFAR ResNet-20 (He et al. 2016): 3 stages x 3 basic blocks, 16/32/64 channels, BatchNorm",
           recipe=CIFAR_RECIPE)
def resnet20(info: DatasetInfo, width: int = 16, shortcut: str = "A") -> ResNet:
    """``width`` is the first stage's channel count (later stages double it); shortcut A or B."""
    width = check_int("resnet20", "width", width)
    return ResNet(image_shape("resnet20", info.input_shape), info.num_classes, (3, 3, 3), _scaled((16, 32, 64), width), shortcut)


@zoo_model("resnet18", "ResNet-18, CIFAR variant: 3x3 stem, no max-pool, 4 stages x 2 blocks, 64-512 channels, BatchNorm",
           recipe=CIFAR_RECIPE)
def resnet18(info: DatasetInfo, width: int = 64, shortcut: str = "B") -> ResNet:
    width = check_int("resnet18", "width", width)
    return ResNet(
        image_shape("resnet18", info.input_shape), info.num_classes, (2, 2, 2, 2), _scaled((64, 128, 256, 512), width), shortcut
    )
