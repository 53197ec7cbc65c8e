"""DIPNet in a Hugging Face ``Trainer``: a callback, and a ``Trainer`` subclass for m > 1.

``Trainer(model=model, args=args, train_dataset=ds, callbacks=[DIPNetCallback()])`` is DIPNet
(Hao et al., arXiv 2506.04690) with its defaults for language models: the callback

- projects the model in ``on_init_end`` (before the trainer builds its optimizer, so the sigmas
  are in it), by default before the attention and MLP sub-blocks of every decoder layer with a
  relative per-feature sigma (``targets="lora"``: at the inputs of peft's LoRA layers; see
  :mod:`dipnet.projection.hf`);
- takes the sigmas out of any weight-decay group in ``on_train_begin`` (the prior is their
  regularizer; the trainer's own grouping would decay them);
- adds the variance prior as its exact gradient ``2 alpha sigma^2 - 2 beta`` in
  ``on_pre_optimizer_step`` (callbacks cannot change the loss; after the trainer's clipping,
  which therefore acts on the data gradient, as in ``dipnet finetune``);
- writes the sigmas' statistics into each log record (:func:`dipnet.projection.sigma_stats`,
  the one definition: ``sigma_mean/min/max`` in input units, ``sigma_relative_*`` relative);
- makes ``model.save_pretrained`` (so ``trainer.save_model(folder)`` and the trainer's
  checkpoints) write the learned sigmas beside the adapters, ``dipnet_sigmas.safetensors``, and
  ``model.load_adapter`` (the trainer's resume) read them back; after loading the adapters
  elsewhere, ``project`` the model as at training and call :func:`load_sigmas` (folder);
- at the end of training leaves the model deterministic, as the trainer's own NEFTune does:
  eval mode, no projection hooks (``model.train()`` turns the noise back on), and logs one line
  saying so (logger ``dipnet.integrations.hf``, level WARNING).

m > 1 trajectories change the loss, which a callback cannot: :class:`DIPNetTrainer` repeats
every tensor of the batch (input ids, attention mask, labels) m times in ``compute_loss``, so
the model's own loss is the mean over the m trajectories. Under ``torchrun`` (DDP) each process
projects its own replica identically; the sigmas' gradients are averaged with the rest.
NEFTune is the trainer's own ``neftune_noise_alpha``.
"""
from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from ..llm._hf import require

require("transformers")
from transformers import Trainer, TrainerCallback  # noqa: E402

from ..errors import ConfigError  # noqa: E402
from ..llm.adapters import load_sigmas, save_sigmas, save_sigmas_with_model  # noqa: E402
from .hf_trainer import MethodTrainer  # noqa: E402
from ..schema import Limits, check  # noqa: E402
from ..methods import DIPNet, build_method  # noqa: E402
from ..projection import LLM_PRIOR, LLM_SIGMA, is_projected, repeat_batch  # noqa: E402

__all__ = ["DIPNetCallback", "DIPNetTrainer", "MethodTrainer", "load_sigmas", "save_sigmas"]

logger = logging.getLogger(__name__)


class DIPNetCallback(TrainerCallback):
    """DIPNet for a Hugging Face ``Trainer`` (see the module docstring): a thin adapter over the
    ``dipnet`` method component (:class:`dipnet.methods.DIPNet`), which owns the placement, the
    sigmas' parameter group, the prior's gradient, the logged statistics and the end of training.

    ``targets``: ``"decoder"`` (default) or ``"lora"``; ``sigma``: initial relative sigma;
    ``prior``: the variance prior (alpha, beta), ``(0, 0)`` for none; ``include``/``exclude``:
    :func:`dipnet.project`'s filters; ``settings``: any other hyperparameter of the ``dipnet``
    method (``scale``, ``noise``, ``granularity``, ...), checked by its schema.
    """

    def __init__(self, *, targets: str = "decoder", sigma: float = LLM_SIGMA,
                 prior: tuple[float, float] = LLM_PRIOR, include: Any = None, exclude: Any = None,
                 **settings: Any) -> None:
        try:
            alpha, beta = prior
        except (TypeError, ValueError):
            raise ConfigError(f"prior must be a pair (alpha, beta), not {prior!r}") from None
        dipnet = build_method("dipnet", {"targets": targets, "scale": "relative", "sigma": sigma, "alpha": alpha,
                                         "beta": beta, **settings}).components[0]
        assert isinstance(dipnet, DIPNet)
        if dipnet.sigma_lr != 1.0:
            raise ConfigError("DIPNetCallback trains the sigmas at the Trainer's learning rate, so sigma_lr does not "
                              "apply; use MethodTrainer (dipnet.integrations.hf_trainer), which builds the sigmas' group")
        self.dipnet, self.include, self.exclude = dipnet, include, exclude

    def on_init_end(self, args: Any, state: Any, control: Any, model: nn.Module | None = None, **kwargs: Any) -> None:
        if model is None:
            raise ConfigError("DIPNetCallback needs the Trainer's model at construction (model_init is not supported)")
        if not is_projected(model):
            self.dipnet.transform_model(model, include=self.include, exclude=self.exclude)
        save_sigmas_with_model(model)

    def on_train_begin(self, args: Any, state: Any, control: Any, model: nn.Module | None = None,
                       optimizer: Any = None, **kwargs: Any) -> None:
        """Move the sigmas out of the trainer's weight-decay groups (the prior regularizes them)."""
        if optimizer is None or model is None:
            return
        sigmas = {id(p) for p in self.dipnet.fixed_parameters(model)}
        seen: set[int] = set()
        moved: list[torch.Tensor] = []
        for group in optimizer.param_groups:
            seen |= {id(p) for p in group["params"]}
            if group.get("weight_decay", 0.0):
                keep = [p for p in group["params"] if id(p) not in sigmas]
                moved += [p for p in group["params"] if id(p) in sigmas]
                group["params"] = keep
        if sigmas - seen:
            raise ConfigError("the Trainer's optimizer does not hold DIPNet's sigmas; pass DIPNetCallback in "
                              "Trainer(callbacks=[...]) so it projects before the optimizer is built")
        if moved:
            free = next((g for g in optimizer.param_groups if not g.get("weight_decay", 0.0)), None)
            if free is None:
                optimizer.add_param_group({"params": moved, "weight_decay": 0.0})
            else:
                free["params"].extend(moved)

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, model: nn.Module | None = None,
                              **kwargs: Any) -> None:
        if model is not None:
            self.dipnet.add_prior_grad(model)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None,
               model: nn.Module | None = None, **kwargs: Any) -> None:
        if model is None or logs is None:
            return
        extra = {k: v for k, v in self.dipnet.epoch_metrics(model).items() if k != "sigma"}
        logs.update(extra)
        if extra and state.log_history:
            state.log_history[-1].update(extra)

    def on_train_end(self, args: Any, state: Any, control: Any, model: nn.Module | None = None,
                     **kwargs: Any) -> None:
        if model is None:
            return
        for line in self.dipnet.on_train_end(model):
            if state.is_world_process_zero:
                logger.warning(line + "; model.train() turns the noise back on")


class DIPNetTrainer(Trainer):
    """A ``Trainer`` that trains DIPNet with ``trajectories`` (m) noise draws per example in one
    forward; adds a :class:`DIPNetCallback` (with ``dipnet`` settings) unless one is given."""

    def __init__(self, *args: Any, trajectories: int = 1, dipnet: dict[str, Any] | None = None, **kwargs: Any) -> None:
        self.trajectories = check(trajectories, int, "trajectories", Limits(ge=1))
        callbacks = list(kwargs.pop("callbacks", None) or [])
        if not any(isinstance(c, DIPNetCallback) for c in callbacks):
            callbacks.insert(0, DIPNetCallback(**(dipnet or {})))
        elif dipnet:
            raise ConfigError("give DIPNet's settings either in dipnet= or to the DIPNetCallback passed in callbacks")
        kwargs["callbacks"] = callbacks
        super().__init__(*args, **kwargs)

    def compute_loss(self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        m = self.trajectories
        if m > 1 and model.training:
            inputs = repeat_batch(inputs, m)
            if num_items_in_batch is not None:
                num_items_in_batch = num_items_in_batch * m
        return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
