"""Multi-layer perceptron with a choice of activation and optional residual blocks."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..data.base import DatasetInfo
from ..errors import ConfigError
from ._common import MAX_LAYERS, check_bool, check_int, check_int_seq, flat_features, make_activation, zoo_model


class MLPBlock(nn.Module):
    """``h = act(fc(x))``, or ``x + act(fc(x))`` when ``residual`` (He et al. 2016, Eq. 1)."""

    def __init__(self, in_features: int, out_features: int, activation: str = "relu", residual: bool = False) -> None:
        super().__init__()
        if residual and in_features != out_features:
            raise ValueError("a residual block needs in_features == out_features")
        self.fc = nn.Linear(in_features, out_features)
        self.act = make_activation(activation, "MLPBlock")
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.fc(x))
        return x + h if self.residual else h

    def extra_repr(self) -> str:
        return f"residual={self.residual}"


class MLP(nn.Module):
    """Flatten, hidden ``widths`` (each Linear + activation), then a Linear head.

    With ``residual=True`` every hidden block whose input and output widths match adds its input
    (the first block maps ``in_features`` to ``widths[0]`` and is residual only if they are equal).
    ``widths=()`` gives multinomial logistic regression.
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        widths: Sequence[int] = (256, 256),
        activation: str = "relu",
        residual: bool = False,
    ) -> None:
        super().__init__()
        in_features = check_int("MLP", "in_features", in_features)
        num_classes = check_int("MLP", "num_classes", num_classes)
        widths = check_int_seq("MLP", "widths", widths, allow_empty=True)
        residual = check_bool("MLP", "residual", residual)
        make_activation(activation, "MLP")
        self.in_features, self.num_classes, self.widths = in_features, num_classes, widths
        self.flatten = nn.Flatten()
        dims = (in_features, *widths)
        self.blocks = nn.ModuleList(
            MLPBlock(d_in, d_out, activation, residual and d_in == d_out) for d_in, d_out in zip(dims[:-1], dims[1:])
        )
        self.head = nn.Linear(dims[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.flatten(x)
        for block in self.blocks:
            h = block(h)
        return self.head(h)


@zoo_model("mlp", "MLP on flattened inputs: widths (or width x depth), activation, optional residual blocks",
           recipe={"optimizer": "adamw", "lr": 1e-2, "schedule": "cosine", "batch_size": 100, "epochs": 8})
def mlp(
    info: DatasetInfo,
    widths: Sequence[int] | int | None = None,
    width: int | None = None,
    depth: int | None = None,
    activation: str = "relu",
    residual: bool = False,
) -> MLP:
    """Default ``widths=(256, 256)``; ``width``/``depth`` give ``depth`` hidden layers of ``width``."""
    if widths is not None and (width is not None or depth is not None):
        raise ConfigError("model 'mlp': give either widths=... or width=/depth=, not both")
    if widths is None:
        w = 256 if width is None else check_int("MLP", "width", width)
        d = 2 if depth is None else check_int("MLP", "depth", depth, minimum=0, maximum=MAX_LAYERS)
        widths = (w,) * d
    else:
        widths = check_int_seq("MLP", "widths", widths, allow_empty=True)
    return MLP(flat_features(info.input_shape), info.num_classes, widths, activation, residual)
