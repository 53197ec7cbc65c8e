"""The smoothed network of a DIPNet: ``p_bar(x) = mean_k softmax(f(x; eps_k))`` over k noise samples.

DIPNet's theory speaks of the expected output under the learned input distributions; the
deterministic eval-mode net is what ships. :func:`smoothed` wraps a model so that every
instrument can measure the smoothed one too: its forward returns ``log p_bar(x)``, so softmax of
the output is ``p_bar`` and cross-entropy on it is the smoothed net's loss. The noise of each call
is drawn from a fixed seed (common random numbers), so the wrapper is a deterministic function
of ``x``, which power iterations and finite differences need. The draws a point gets depend on
the batch it is in (its position and the batch size), as in any Monte Carlo estimate.
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn

from ..errors import ConfigError
from ..projection import is_noise_layer, sampling
from ._checks import positive_int


class SmoothedModel(nn.Module):
    """``log mean_k softmax(model(x; noise_k))`` with the noise layers sampling, the rest in eval
    (:func:`dipnet.projection.sampling`: no buffer of the model changes)."""

    def __init__(self, model: nn.Module, samples: int = 16, seed: int = 0,
                 noise_modules: Iterable[nn.Module] | Callable[[nn.Module], bool] | None = None) -> None:
        super().__init__()
        self.model = model
        self.samples = positive_int(samples, "samples")
        self.seed = seed
        if noise_modules is None or callable(noise_modules):
            pred = noise_modules or is_noise_layer
            found = [m for m in model.modules() if pred(m)]
        else:
            found = list(noise_modules)
        if not found:
            raise ConfigError(
                "the model has no noise layers (DIPNet projections) to smooth over; measure it directly, "
                "or pass noise_modules= the noise layers to sample (see dipnet.projection.noise)"
            )
        self._noise = found

    def extra_repr(self) -> str:
        return f"samples={self.samples}, seed={self.seed}, noise_modules={len(self._noise)}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with sampling(self.model, self._noise), \
                torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
            torch.manual_seed(self.seed)
            xr = x.repeat(self.samples, *([1] * (x.ndim - 1)))
            logits = self.model(xr)
        probs = torch.softmax(logits, dim=-1).view(self.samples, x.shape[0], -1).mean(0)
        return probs.clamp_min(1e-30).log()


def smoothed(model: nn.Module, samples: int = 16, seed: int = 0,
             noise_modules: Iterable[nn.Module] | Callable[[nn.Module], bool] | None = None) -> SmoothedModel:
    """Wrap a DIPNet so instruments measure its smoothed prediction (k noise samples, one batched forward)."""
    return SmoothedModel(model, samples, seed, noise_modules)
