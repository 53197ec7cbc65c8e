"""The MNIST-1D reference models (Greydanus & Kobak, ICML 2024; github.com/greydanus/mnist1d)."""
from __future__ import annotations

import torch
from torch import nn

from ..data.base import DatasetInfo
from ..errors import ConfigError
from ._common import check_int, flat_features, shape_error, signal_shape, zoo_model


def conv_out_length(length: int, kernel: int, stride: int, padding: int) -> int:
    """Output length of a 1-D convolution: ``floor((L + 2p - k) / s) + 1``."""
    return (length + 2 * padding - kernel) // stride + 1


class MNIST1DMLP(nn.Module):
    """Reference residual MLP: ``h = relu(l1(x)); h = h + relu(l2(h)); out = l3(h)`` (hidden 100)."""

    def __init__(self, in_features: int = 40, num_classes: int = 10, hidden: int = 100) -> None:
        super().__init__()
        self.in_features = check_int("MNIST1DMLP", "in_features", in_features)
        num_classes = check_int("MNIST1DMLP", "num_classes", num_classes)
        hidden = check_int("MNIST1DMLP", "hidden", hidden)
        self.flatten = nn.Flatten()
        self.linear1 = nn.Linear(self.in_features, hidden)
        self.act1 = nn.ReLU()
        self.linear2 = nn.Linear(hidden, hidden)
        self.act2 = nn.ReLU()
        self.linear3 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act1(self.linear1(self.flatten(x)))
        h = h + self.act2(self.linear2(h))
        return self.linear3(h)


class MNIST1DCNN(nn.Module):
    """Reference 1-D CNN: three Conv1d + ReLU (k5 s2 p1, then k3 s2 p1 twice), flatten, Linear.

    For length 40 the feature length is 40 -> 19 -> 10 -> 5, so the head is Linear(25 * 5, 10).
    Takes ``(B, L)`` (one channel) or ``(B, C, L)``.
    """

    def __init__(self, in_length: int = 40, num_classes: int = 10, channels: int = 25, in_channels: int = 1) -> None:
        super().__init__()
        self.in_length = check_int("MNIST1DCNN", "in_length", in_length)
        self.in_channels = check_int("MNIST1DCNN", "in_channels", in_channels)
        num_classes = check_int("MNIST1DCNN", "num_classes", num_classes)
        channels = check_int("MNIST1DCNN", "channels", channels)
        length = self.in_length
        for k in (5, 3, 3):
            length = conv_out_length(length, k, 2, 1)
        if length < 1:
            raise ConfigError(f"MNIST1DCNN: inputs of length {in_length} are too short; it needs length >= 3")
        self.conv1 = nn.Conv1d(self.in_channels, channels, 5, stride=2, padding=1)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(channels, channels, 3, stride=2, padding=1)
        self.act2 = nn.ReLU()
        self.conv3 = nn.Conv1d(channels, channels, 3, stride=2, padding=1)
        self.act3 = nn.ReLU()
        self.flatten = nn.Flatten()
        self.linear = nn.Linear(channels * length, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x.reshape(x.shape[0], self.in_channels, -1)
        h = self.act1(self.conv1(x))
        h = self.act2(self.conv2(h))
        h = self.act3(self.conv3(h))
        return self.linear(self.flatten(h))


# The MNIST-1D recipe of the comparison suites (reference: Adam 1e-2, batch 100)
MNIST1D_RECIPE = {"optimizer": "adamw", "lr": 1e-2, "schedule": "cosine", "batch_size": 100, "epochs": 40}


@zoo_model("mnist1d-mlp", "MNIST-1D reference residual MLP (hidden 100), any input flattened", recipe=MNIST1D_RECIPE)
def mnist1d_mlp(info: DatasetInfo, hidden: int = 100) -> MNIST1DMLP:
    return MNIST1DMLP(flat_features(info.input_shape), info.num_classes, hidden)


@zoo_model("mnist1d-cnn", "MNIST-1D reference 1-D CNN (3 x Conv1d 25 channels, Linear 125 -> 10 for length 40)",
           recipe=MNIST1D_RECIPE)
def mnist1d_cnn(info: DatasetInfo, channels: int = 25) -> MNIST1DCNN:
    in_channels, length = signal_shape("mnist1d-cnn", info.input_shape)
    if length < 3:
        raise shape_error("mnist1d-cnn", "a 1-D signal of length >= 3", info.input_shape)
    return MNIST1DCNN(length, info.num_classes, channels, in_channels)
