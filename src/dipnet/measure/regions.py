"""Transitions between linear regions along closed trajectories (Novak et al., ICLR 2018, Sec. 4.2).

Each input is coded by the piece every hidden piecewise-linear unit is on (ReLU: off/on;
hard-tanh and ReLU6: three pieces), read by forward hooks on the activation modules. Along a
closed trajectory ``x_0 .. x_{N-1}, x_N = x_0`` the instrument counts unit flips
``sum_i ||c(x_i) - c(x_{i+1})||_1``. The trajectory is the circle through three anchor points in
the plane they span, ``x(phi) = c + r cos(phi) e1 + r sin(phi) e2``; flips are also reported per
unit of trajectory length ``2 pi r``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, overload

import torch
from torch import nn

from ..errors import ConfigError
from ._checks import check_inputs, chunks, eval_mode, positive_int

PIECEWISE_LINEAR = (nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.LeakyReLU, nn.PReLU, nn.RReLU)
_SMOOTH = (nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.ELU, nn.Softplus, nn.Mish)


def _piece(module: nn.Module, out: torch.Tensor) -> torch.Tensor:
    """Which linear piece each unit is on, read from the module's output (safe for inplace ops)."""
    if isinstance(module, nn.Hardtanh):  # includes ReLU6
        return (out > module.min_val).to(torch.int8) + (out >= module.max_val).to(torch.int8)
    return (out > 0).to(torch.int8)


class ActivationCodes:
    """Context manager collecting the on/off code of every piecewise-linear unit per forward pass."""

    def __init__(self, model: nn.Module) -> None:
        self.modules = [m for m in model.modules() if isinstance(m, PIECEWISE_LINEAR)]
        if not self.modules:
            smooth = sorted({type(m).__name__ for m in model.modules() if isinstance(m, _SMOOTH)})
            found = f" (it has only smooth activations: {', '.join(smooth)})" if smooth else ""
            raise ConfigError(
                f"region transitions need piecewise-linear activation modules (nn.ReLU, nn.Hardtanh, nn.LeakyReLU, ...) "
                f"and the model has none{found}; use activation modules, not torch.nn.functional calls"
            )
        self._parts: list[torch.Tensor] = []
        self._handles: list = []

    def _hook(self, module: nn.Module, inputs: tuple, out: torch.Tensor) -> None:
        self._parts.append(_piece(module, out).flatten(1))

    def __enter__(self) -> "ActivationCodes":
        self._handles = [m.register_forward_hook(self._hook) for m in self.modules]
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()

    def take(self) -> torch.Tensor:
        """The codes of the last forward pass(es), shape (B, units)."""
        if not self._parts:
            raise ConfigError("the model's activation modules were never called in its forward pass")
        codes = torch.cat(self._parts, dim=1)
        self._parts = []
        return codes


@torch.no_grad()
def activation_codes(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The piece index of every hidden unit at every input, shape (B, units), int8."""
    x = check_inputs(model, x)
    with eval_mode(model), ActivationCodes(model) as codes:
        model(x)
        return codes.take()


@torch.no_grad()
@overload
def transitions_along(model: nn.Module, path: torch.Tensor, closed: bool = ..., chunk_size: int = ...,
                      per_step: Literal[False] = ...) -> int: ...
@overload
def transitions_along(model: nn.Module, path: torch.Tensor, closed: bool = ..., chunk_size: int = ..., *,
                      per_step: Literal[True]) -> torch.Tensor: ...
def transitions_along(
    model: nn.Module, path: torch.Tensor, closed: bool = True, chunk_size: int = 1024, per_step: bool = False
) -> int | torch.Tensor:
    """Unit flips ``sum_i ||c(x_i) - c(x_{i+1})||_1`` along the points ``path`` (N, *input_shape);
    with ``per_step`` the flips of every step ``i -> i+1`` instead (N or N-1 of them)."""
    path = check_inputs(model, path, "path")
    positive_int(chunk_size, "chunk_size")
    steps: list[torch.Tensor] = []
    first = prev = None
    with eval_mode(model), ActivationCodes(model) as hooks:
        for s in chunks(path.shape[0], chunk_size):
            model(path[s])
            codes = hooks.take().to(torch.int16)
            if prev is not None:
                codes = torch.cat([prev, codes])
            else:
                first = codes[:1]
            steps.append((codes[1:] - codes[:-1]).abs().sum(1))
            prev = codes[-1:]
    if closed and path.shape[0] > 1 and prev is not None and first is not None:
        steps.append((prev - first).abs().sum(1))
    per = torch.cat(steps).long()
    return per if per_step else int(per.sum())


def circle_through(anchors: torch.Tensor, points: int) -> tuple[torch.Tensor, float]:
    """``points`` equally spaced points on the circle through three anchors (3, *shape), and its length."""
    shape = anchors.shape[1:]
    p1, p2, p3 = anchors.reshape(3, -1).double()
    a, b = p1 - p3, p2 - p3
    gram = torch.stack([torch.stack([a @ a, a @ b]), torch.stack([a @ b, b @ b])])
    det = gram[0, 0] * gram[1, 1] - gram[0, 1] ** 2
    if det <= 1e-12 * float(gram[0, 0] * gram[1, 1]) or gram[0, 0] == 0 or gram[1, 1] == 0:
        raise ConfigError("the three anchor points are collinear or coincide, so no circle passes through them; pick distinct points")
    coef = torch.linalg.solve(gram, torch.stack([a @ a, b @ b]) / 2)
    center = p3 + coef[0] * a + coef[1] * b
    radius = float((p3 - center).norm())
    e1 = (p3 - center) / radius
    e2 = (p1 - center) - ((p1 - center) @ e1) * e1
    e2 = e2 / e2.norm()
    phi = torch.arange(points, dtype=torch.float64) * (2 * math.pi / points)
    path = center + radius * (torch.cos(phi)[:, None] * e1 + torch.sin(phi)[:, None] * e2)
    return path.to(anchors.dtype).reshape(points, *shape), 2 * math.pi * radius


@dataclass
class RegionTransitions:
    """Unit flips along closed trajectories, one entry per trajectory."""

    flips: torch.Tensor
    length: torch.Tensor
    points: int
    units: int

    @property
    def density(self) -> torch.Tensor:
        """Flips per unit of trajectory length (transitions per unit length)."""
        return self.flips / self.length

    def to_dict(self) -> dict:
        return {
            "trajectories": int(self.flips.numel()),
            "points": self.points,
            "units": self.units,
            "flips_mean": float(self.flips.mean()),
            "length_mean": float(self.length.mean()),
            "flips_per_length_mean": float(self.density.mean()),
            "flips_per_length_std": float(self.density.std()) if self.flips.numel() > 1 else 0.0,
        }


def region_transitions(model: nn.Module, anchors: torch.Tensor, points: int = 1000) -> RegionTransitions:
    """Unit flips around the circle through each triple of anchors (Novak et al. 2018, Sec. 4.2).

    ``anchors``: (3, *input_shape) or (T, 3, *input_shape). ``points`` samples per trajectory; flips
    converge with hundreds to a thousand (counting distinct regions needs ~50x more).
    """
    positive_int(points, "points")
    if not isinstance(anchors, torch.Tensor) or anchors.ndim < 2:
        raise ConfigError("anchors must be a tensor of shape (3, *input_shape) or (T, 3, *input_shape)")
    if anchors.shape[0] == 3 and (anchors.ndim == 2 or anchors.shape[1] != 3):
        anchors = anchors.unsqueeze(0)
    if anchors.ndim < 3 or anchors.shape[1] != 3:
        raise ConfigError(f"anchors must have shape (3, *input_shape) or (T, 3, *input_shape), got {tuple(anchors.shape)}")
    flips, lengths, units = [], [], 0
    for triple in anchors:
        path, length = circle_through(triple.detach(), points)
        flips.append(transitions_along(model, path))
        lengths.append(length)
    units = activation_codes(model, anchors[0, :1]).shape[1]
    return RegionTransitions(
        torch.tensor(flips, dtype=torch.float64), torch.tensor(lengths, dtype=torch.float64), points, units
    )


def draw_anchors(
    x: torch.Tensor, y: torch.Tensor | None = None, n_trajectories: int = 8, same_class: bool = True, seed: int = 0
) -> torch.Tensor:
    """Triples of points of ``x`` (T, 3, *shape); with labels ``y`` and ``same_class`` each triple shares a class."""
    positive_int(n_trajectories, "n_trajectories")
    if x.shape[0] < 3:
        raise ConfigError(f"need at least 3 points to draw anchors, got {x.shape[0]}")
    gen = torch.Generator().manual_seed(seed)
    if y is None or not same_class:
        idx = torch.stack([torch.randperm(x.shape[0], generator=gen)[:3] for _ in range(n_trajectories)])
        return x[idx]
    classes = [c for c in torch.unique(y).tolist() if int((y == c).sum()) >= 3]
    if not classes:
        raise ConfigError("no class has 3 points to anchor a trajectory; pass more points or same_class=False")
    triples = []
    for t in range(n_trajectories):
        members = torch.nonzero(y == classes[t % len(classes)]).flatten()
        triples.append(members[torch.randperm(members.numel(), generator=gen)[:3]])
    return x[torch.stack(triples)]


def random_anchors(x: torch.Tensor, n_trajectories: int = 8, seed: int = 0) -> torch.Tensor:
    """Random triples (T, 3, *shape) drawn from a Gaussian with the per-feature mean and std of ``x``."""
    positive_int(n_trajectories, "n_trajectories")
    gen = torch.Generator().manual_seed(seed)
    mean, std = x.float().mean(0), x.float().std(0)
    noise = torch.randn((n_trajectories, 3, *x.shape[1:]), generator=gen)
    return mean + std * noise
