"""The noise-layer protocol: how a layer that samples noise declares itself.

A *noise layer* is a module whose class sets ``is_noise_layer = True``, that samples its noise
when ``self.training or self.sample_in_eval`` and is the identity otherwise, and that updates
its buffers (running statistics) only when ``self.training``. :class:`GaussianProjection` is one;
a user's own noisy layer becomes one by following the same three rules.

:func:`sampling` is the one place that runs a model "noise layers sample, everything else in
eval": :func:`~dipnet.projection.predict` with samples, the smoothed net of
:mod:`dipnet.measure` and the attacks' ``mode="noise"`` all use it, and none of them changes a
buffer, so evaluation leaves ``state_dict()`` bit-identical.
"""
from __future__ import annotations

import contextlib
from typing import Iterable, Iterator

from torch import nn

__all__ = ["is_noise_layer", "noise_layers", "sampling"]


def is_noise_layer(module: nn.Module) -> bool:
    return getattr(type(module), "is_noise_layer", False) is True


def noise_layers(model: nn.Module) -> list[nn.Module]:
    """The noise layers of ``model`` (itself included), in module order."""
    return [m for m in model.modules() if is_noise_layer(m)]


@contextlib.contextmanager
def sampling(model: nn.Module, layers: Iterable[nn.Module] | None = None) -> Iterator[list[nn.Module]]:
    """``model`` in eval mode with its noise layers (or ``layers``) sampling; yields those layers.
    Every module's train/eval flag and every layer's ``sample_in_eval`` are restored on exit."""
    chosen = noise_layers(model) if layers is None else list(layers)
    flags = [(m, m.training) for m in model.modules()]
    before = [(m, getattr(m, "sample_in_eval", False)) for m in chosen]
    try:
        model.eval()
        for m in chosen:  # setattr: the noise-layer protocol's flag is no attribute nn.Module declares
            m.eval()
            setattr(m, "sample_in_eval", True)
        yield chosen
    finally:
        for m, flag in before:
            setattr(m, "sample_in_eval", flag)
        for m, flag in flags:
            m.training = flag
