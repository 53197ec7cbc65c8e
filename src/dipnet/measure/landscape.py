"""Loss landscapes along filter-normalized random directions (Li et al., NeurIPS 2018, Sec. 4).

A direction ``d ~ N(0, I)`` of the weights' shape is rescaled filter by filter,
``d_i <- d_i / ||d_i|| * ||theta_i||`` (a filter: one output unit's row of a Linear weight or one
output channel of a convolution kernel); 1-D parameters (biases, norm scales) get a zero
direction. The loss is evaluated at ``theta + a d1 (+ b d2)`` on a grid, in eval mode.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ..errors import ConfigError
from ._checks import check_inputs, check_labels, chunks, eval_mode, positive_float, positive_int

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def filter_normalized_direction(model: nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random direction per named parameter, each filter scaled to the norm of the weight's filter."""
    gen = torch.Generator().manual_seed(seed)
    direction = {}
    for name, p in model.named_parameters():
        if p.ndim <= 1:
            direction[name] = torch.zeros_like(p)
            continue
        d = torch.randn(p.shape, generator=gen).to(dtype=p.dtype, device=p.device)
        d_norm = d.flatten(1).norm(dim=1).clamp_min(1e-30)
        p_norm = p.detach().flatten(1).norm(dim=1)
        direction[name] = d * (p_norm / d_norm).view(-1, *([1] * (p.ndim - 1)))
    return direction


@dataclass
class Landscape:
    """Loss values on a grid: ``losses[i]`` (1-D) or ``losses[i, j]`` at ``alphas[i]``, ``betas[j]``."""

    alphas: torch.Tensor
    betas: torch.Tensor | None
    losses: torch.Tensor
    seed: int

    @property
    def dims(self) -> int:
        return 1 if self.betas is None else 2

    def to_dict(self) -> dict:
        return {"dims": self.dims, "alphas": self.alphas.tolist(),
                "betas": None if self.betas is None else self.betas.tolist(),
                "losses": self.losses.tolist(), "seed": self.seed}


def _mean_loss(model: nn.Module, params: dict[str, torch.Tensor], loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor,
               batch_size: int) -> float:
    total = 0.0
    for s in chunks(x.shape[0], batch_size):
        total += float(loss_fn(functional_call(model, params, (x[s],)), y[s])) * (s.stop - s.start)
    return total / x.shape[0]


@torch.no_grad()
def loss_landscape(
    model: nn.Module,
    loss_fn: LossFn | None,
    data: Sequence[torch.Tensor],
    dims: int = 1,
    steps: int = 21,
    span: float = 1.0,
    seed: int = 0,
    batch_size: int = 1000,
) -> Landscape:
    """Mean ``loss_fn(model(x), y)`` over ``data=(x, y)`` at ``theta + a d1 (+ b d2)`` for a, b on
    ``steps`` equally spaced values in ``[-span, span]``; directions filter-normalized (Li et al. 2018)."""
    if dims not in (1, 2):
        raise ConfigError(f"dims must be 1 or 2, not {dims!r}")
    positive_int(steps, "steps")
    positive_float(span, "span")
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise ConfigError("data must be a pair (x, y) of tensors")
    x = check_inputs(model, data[0])
    y = check_labels(data[1], x.shape[0]).to(x.device)
    loss_fn = loss_fn or F.cross_entropy
    weights = {k: v.detach() for k, v in model.named_parameters()}
    buffers = dict(model.named_buffers())
    d1 = filter_normalized_direction(model, seed)
    d2 = filter_normalized_direction(model, seed + 1) if dims == 2 else None
    # symmetric grid with an exact 0 in the middle when steps is odd
    alphas = span * (2 * torch.arange(steps, dtype=torch.float64) - (steps - 1)) / max(steps - 1, 1)
    betas = alphas.clone() if dims == 2 else None
    with eval_mode(model):
        def at(a: float, b: float) -> float:
            params = {k: w + a * d1[k] + (b * d2[k] if d2 is not None else 0) for k, w in weights.items()}
            return _mean_loss(model, {**params, **buffers}, loss_fn, x, y, batch_size)

        if betas is None:
            losses = torch.tensor([at(float(a), 0.0) for a in alphas], dtype=torch.float64)
        else:
            losses = torch.tensor([[at(float(a), float(b)) for b in betas] for a in alphas], dtype=torch.float64)
    return Landscape(alphas, betas, losses, seed)


def plot_landscape(landscape: Landscape, path: str | Path, title: str | None = None) -> Path:
    """A line plot (1-D) or a contour plot (2-D) of the landscape, written as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    if landscape.betas is None:
        ax.plot(landscape.alphas.numpy(), landscape.losses.numpy())
        ax.set_xlabel("step along filter-normalized direction")
        ax.set_ylabel("loss")
    else:
        cs = ax.contour(landscape.alphas.numpy(), landscape.betas.numpy(), landscape.losses.T.numpy(), levels=20)
        ax.clabel(cs, fontsize=6)
        ax.set_xlabel("direction 1")
        ax.set_ylabel("direction 2")
    ax.set_title(title or "loss landscape (Li et al. 2018)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
