"""NEFTune (Jain et al., ICLR 2024, "NEFTune: Noisy Embeddings Improve Instruction Finetuning"):
uniform noise on a language model's input embeddings while training, ``alpha / sqrt(L d)`` in
magnitude (L tokens, d hidden size), none at evaluation.

The noise is transformers' own ``neftune_post_forward_hook`` (what
``TrainingArguments.neftune_noise_alpha`` installs), hooked on ``model.get_input_embeddings()``,
not a re-implementation; removed when training ends, as the Hugging Face Trainer does.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ..compiling import guard_hooks
from ..errors import ConfigError
from ..schema import param
from .base import Component
from .registry import register_component


@register_component
@dataclass
class NEFTune(Component):
    """Noisy input embeddings for fine-tuning a language model (token inputs only)."""

    name = "neftune"
    slots = frozenset({"model"})
    description = "NEFTune (Jain et al. 2024): uniform noise alpha/sqrt(L d) on the input embeddings (LMs)"
    tune = {"alpha": (1.0, 5.0, 15.0)}
    inputs = frozenset({"tokens"})

    alpha: float = param(5.0, gt=0, doc="noise alpha: uniform(-a, a), a = alpha / sqrt(L d)")
    _handle: Any = field(default=None, init=False, repr=False, compare=False)

    def transform_model(self, model: nn.Module) -> nn.Module:
        embed = getattr(model, "get_input_embeddings", lambda: None)()
        if not isinstance(embed, nn.Embedding):
            raise ConfigError(f"neftune needs a language model with input embeddings (get_input_embeddings()); "
                              f"{type(model).__name__} has none")
        try:
            hook = importlib.import_module("transformers.integrations.neftune").neftune_post_forward_hook
        except ModuleNotFoundError:
            raise ConfigError("neftune uses transformers' own hook: pip install 'dipnet[llm]'") from None
        setattr(embed, "neftune_noise_alpha", self.alpha)  # transformers' hook reads it (a float: no typed Module attribute)
        guard_hooks()
        self._handle = embed.register_forward_hook(hook)
        return model

    def on_train_end(self, model: nn.Module) -> list[str]:
        if self._handle is None:
            return []
        self._handle.remove()
        self._handle = None
        return ["neftune: training ended; the embedding noise hook is removed"]
