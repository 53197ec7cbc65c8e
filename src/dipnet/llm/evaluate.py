"""Evaluating a fine-tuned causal LM: greedy decoding in batches with the KV cache, exact match
of the final answer by reasoning-gym's own scorer, and the teacher-forced answer loss.

DIPNet predicts deterministically by default (eval mode: every projection passes its mean, the
paper's Algorithm 3). ``samples=k`` is the paper's alternative (its Figure 2): k stochastic
passes whose next-token probabilities are averaged before the greedy choice. The k copies of
each question decode side by side in one batch (each with its own noise and KV cache), and a
logits processor replaces every copy's scores by the mean of the k softmaxes, so all copies pick
the same token and stay aligned: ``predict(model, x, samples=k)`` one token at a time.
"""
from __future__ import annotations

import time
from typing import Any, Sequence

import torch
from torch import nn

from ..projection import DIPNetLoss, causal_lm_loss, noise_layers, repeat_batch, sampling
from ..errors import ConfigError
from .tasks import Example, TaskData, answer_width, collate, extract_answer

__all__ = ["answer_loss", "exact_match", "generate"]


class _MeanOfTrajectories:
    """Logits processor: the k stacked copies of a batch all get log(mean_k softmax)."""

    def __init__(self, k: int) -> None:
        self.k = k

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        probs = scores.float().softmax(-1).view(self.k, -1, scores.shape[-1]).mean(0)
        return probs.log().repeat(self.k, 1).to(scores.dtype)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def generate(model: nn.Module, tokenizer: Any, examples: Sequence[Example], *, max_new_tokens: int = 16,
             batch_size: int = 50, samples: int = 0) -> list[str]:
    """Greedy completions of the examples' prompts (special tokens dropped), in batches, with
    the KV cache; ``samples=k`` decodes from the mean of k sampled passes (projected models)."""
    from transformers import LogitsProcessorList

    if samples and not noise_layers(model):
        raise ConfigError("samples > 0 needs a DIPNet-projected model; use samples=0")
    device, pad = _device(model), tokenizer.pad_token_id
    out: list[str] = []
    for i in range(0, len(examples), batch_size):
        chunk = examples[i:i + batch_size]
        batch, _ = collate(chunk, pad, with_answer=False)
        batch = {k: v.to(device) for k, v in batch.items() if k != "position_ids"}
        kwargs: dict[str, Any] = dict(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, use_cache=True,
                                      pad_token_id=pad, eos_token_id=tokenizer.eos_token_id)
        if samples:
            batch = repeat_batch(batch, samples)
            kwargs["logits_processor"] = LogitsProcessorList([_MeanOfTrajectories(samples)])
        with sampling(model, layers=None if samples else ()):
            ids = model.generate(**batch, **kwargs)  # type: ignore[operator]  # an HF model's method; nn.Module types attributes as Tensor | Module
        new = ids[:len(chunk), batch["input_ids"].shape[1]:]
        out += tokenizer.batch_decode(new, skip_special_tokens=True)
    return out


def exact_match(model: nn.Module, tokenizer: Any, examples: Sequence[Example], task: TaskData, *,
                max_new_tokens: int = 16, batch_size: int = 50, samples: int = 0) -> dict[str, Any]:
    """Fraction of questions whose extracted final answer reasoning-gym scores 1.0, the mean
    score (partial credit included), and the decoding speed."""
    if not examples:
        raise ConfigError("there are no questions to evaluate")
    t0 = time.perf_counter()
    texts = generate(model, tokenizer, examples, max_new_tokens=max_new_tokens, batch_size=batch_size, samples=samples)
    seconds = time.perf_counter() - t0
    scores = [task.score(extract_answer(t), e.item) for t, e in zip(texts, examples)]
    return {"exact_match": sum(s == 1.0 for s in scores) / len(scores), "mean_score": sum(scores) / len(scores),
            "n": len(scores), "items_per_s": len(scores) / seconds, "seconds": seconds, "samples": samples,
            "completions": texts[:5]}


@torch.no_grad()
def answer_loss(model: nn.Module, examples: Sequence[Example], pad_id: int, batch_size: int = 50) -> float:
    """Mean cross-entropy on the answer tokens with teacher forcing, in eval mode (deterministic)."""
    device, total, tokens = _device(model), 0.0, 0
    loss = DIPNetLoss(causal_lm_loss, prior=(0.0, 0.0))
    with sampling(model, layers=()):
        for i in range(0, len(examples), batch_size):
            chunk = examples[i:i + batch_size]
            batch, labels = collate(chunk, pad_id)
            inputs: dict[str, Any] = {k: v.to(device) for k, v in batch.items()}
            inputs["logits_to_keep"] = answer_width(chunk)
            n = sum(len(e.answer) for e in chunk)
            total += float(loss(model, inputs, labels.to(device))) * n
            tokens += n
    return total / max(tokens, 1)
