"""DIPNet in Hugging Face language models: where the projections go, the LLM defaults, and the
causal-LM loss on answer tokens (DIPNet, Hao et al., arXiv 2506.04690, "LLM fine-tuning").

Two placements, chosen by ``project(model, targets=...)``:

- ``"decoder"``: one projection before the attention and one before the MLP sub-block of every
  decoder layer, i.e. on the output of the norm in front of each (pre-norm transformers call
  ``attn(norm(h))`` and ``mlp(norm(h))``). Its sigma is per feature over the hidden size and
  shared across positions, as a Linear layer's input sigma is shared across the batch. Why
  there: those are the inputs of every weight matrix of the block (q/k/v read the attention
  input, gate/up the MLP input), they are normalized, so one relative sigma means the same at
  every depth, and the residual stream itself stays clean (noise on it would accumulate over
  30 layers). A decoder layer is a module with an attention child (``self_attn``,
  ``attention``, ``attn``, ``self_attention``) and an MLP child (``mlp``, ``feed_forward``,
  ``ffn``): Llama, Mistral, Qwen, Gemma, Phi-3, GPT-2, GPT-NeoX, Falcon.
- ``"lora"``: one projection at the input of every peft LoRA layer (a module with
  ``base_layer``, ``lora_A`` and ``lora_B``), which feeds both the frozen weight and the
  adapter: the noise reaches exactly the layers being trained. The three parts are never
  hooked separately (the default ``nn.Linear`` targets would reach all three).

Scale: LLM activations differ by orders of magnitude between layers (an absolute sigma of 0.05
moved SmolLM2's logits by up to 35), so these placements default to ``scale="relative"``
(sigma times a running RMS of the input) with :data:`LLM_SIGMA`; the variance prior's minimum
is moved to the same relative sigma (:data:`LLM_PRIOR`, measured: docs/llm.md, "The prior").
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ATTENTION_NAMES", "HF_TARGETS", "IGNORE_INDEX", "LLM_PRIOR", "LLM_SIGMA", "MLP_NAMES",
    "causal_lm_loss", "decoder_sublayers", "is_lora_layer", "lora_layers",
]

ATTENTION_NAMES = ("self_attn", "attention", "attn", "self_attention")
MLP_NAMES = ("mlp", "feed_forward", "ffn")
HF_TARGETS = ("decoder", "lora")
IGNORE_INDEX = -100  # Hugging Face's label for "no loss here" (prompt and padding tokens)
# The LLM default: initial relative sigma (a fraction of the sub-block input's RMS) and the
# variance prior (alpha, beta) whose minimum sqrt(beta / alpha) is that same relative sigma.
LLM_SIGMA = 0.05
LLM_PRIOR: tuple[float, float] = (0.02, 5e-5)


def _child(module: nn.Module, names: tuple[str, ...]) -> tuple[str, nn.Module] | None:
    for name in names:
        sub = module._modules.get(name)
        if isinstance(sub, nn.Module):
            return name, sub
    return None


def decoder_sublayers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``[(name, module)]`` of the attention and MLP sub-blocks of every decoder layer, in order."""
    out: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        attn, mlp = _child(module, ATTENTION_NAMES), _child(module, MLP_NAMES)
        if attn is None or mlp is None:
            continue
        prefix = f"{name}." if name else ""
        out += [(prefix + attn[0], attn[1]), (prefix + mlp[0], mlp[1])]
    return out


def is_lora_layer(module: nn.Module) -> bool:
    """A peft LoRA layer (the wrapper holding ``base_layer``, ``lora_A`` and ``lora_B``)."""
    return all(isinstance(getattr(module, a, None), nn.Module) for a in ("base_layer", "lora_A", "lora_B"))


def lora_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``[(name, module)]`` of every peft LoRA layer, outermost only."""
    return [(n, m) for n, m in model.named_modules() if is_lora_layer(m)]


def causal_lm_loss(logits: Any, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over the tokens whose label is not :data:`IGNORE_INDEX`.

    ``logits`` (N, K, V) may cover only the last K of the L label positions (a forward with
    ``logits_to_keep=K``): position t predicts label t + 1, as in Hugging Face's own loss. With
    the prompt's labels set to ``IGNORE_INDEX`` this is the loss on the answer tokens only.
    """
    logits = getattr(logits, "logits", logits)
    keep = logits.shape[1]
    target = labels[:, labels.shape[1] - keep + 1:]
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), target.reshape(-1),
                           ignore_index=IGNORE_INDEX)
