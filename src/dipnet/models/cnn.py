"""A small 2-D CNN: blocks of 3x3 Conv2d + ReLU + 2x2 max-pool, then a Linear head."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..data.base import DatasetInfo
from ..errors import ConfigError
from ._common import as_image, check_int, check_int_seq, image_shape, zoo_model


class ConvBlock(nn.Module):
    """``pool(relu(conv3x3(x)))``, halving height and width."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.act = nn.ReLU()
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.act(self.conv(x)))


class SmallCNN(nn.Module):
    """``len(channels)`` conv blocks, optionally a hidden Linear + ReLU, then a Linear head.

    Accepts ``(B, C, H, W)`` or the same inputs flattened to ``(B, C*H*W)``.
    """

    def __init__(
        self,
        image_shape: Sequence[int],
        num_classes: int,
        channels: Sequence[int] = (32, 64),
        hidden: int = 0,
    ) -> None:
        super().__init__()
        if len(image_shape) != 3:
            raise ConfigError(f"SmallCNN: image_shape must be (C, H, W), got {tuple(image_shape)}")
        c, h, w = (check_int("SmallCNN", "image_shape", s) for s in image_shape)
        num_classes = check_int("SmallCNN", "num_classes", num_classes)
        channels = check_int_seq("SmallCNN", "channels", channels)
        hidden = check_int("SmallCNN", "hidden", hidden, minimum=0)
        out_h, out_w = h >> len(channels), w >> len(channels)
        if out_h < 1 or out_w < 1:
            raise ConfigError(
                f"SmallCNN: {len(channels)} pooling blocks shrink a {h}x{w} image to nothing; "
                f"use at most {min(h, w).bit_length() - 1} entries in channels"
            )
        self.image_shape = (c, h, w)
        dims = (c, *channels)
        self.features = nn.Sequential(*(ConvBlock(a, b) for a, b in zip(dims[:-1], dims[1:])))
        self.flatten = nn.Flatten()
        features = channels[-1] * out_h * out_w
        if hidden:
            self.fc = nn.Linear(features, hidden)
            self.act = nn.ReLU()
            features = hidden
        self.head = nn.Linear(features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.flatten(self.features(as_image(x, self.image_shape)))
        if hasattr(self, "fc"):
            h = self.act(self.fc(h))
        return self.head(h)


@zoo_model("cnn2d", "small 2-D CNN: (conv3x3 + ReLU + maxpool) x len(channels), Linear head; images or square flat inputs",
           recipe={"optimizer": "adamw", "lr": 1e-3, "schedule": "cosine", "batch_size": 128, "epochs": 10})
def cnn2d(info: DatasetInfo, channels: Sequence[int] | int = (32, 64), hidden: int = 0) -> SmallCNN:
    return SmallCNN(image_shape("cnn2d", info.input_shape), info.num_classes, check_int_seq("cnn2d", "channels", channels), hidden)
