"""Any dipnet method in a Hugging Face ``Trainer``: :class:`MethodTrainer`.

``MethodTrainer(model=model, args=args, train_dataset=ds, method="dipnet+sam")`` trains with the
method's own step, :meth:`~dipnet.methods.Method.step`, the one that ``dipnet train`` and ``dipnet
finetune`` run: the method changes the model on construction (DIPNet's projections, NEFTune's
hook; before the optimizer is built, so the sigmas are in it), builds the optimizer over its
parameter groups (the trainer's optimizer class and settings; DIPNet's sigmas without weight
decay, never perturbed by SAM/RWP), and takes each update itself: SAM's two passes, RWP's noise,
DIPNet's m trajectories and its prior inside the loss, clipped to ``max_grad_norm`` as in the
engine. The trainer's own ``optimizer.step()`` after it is a no-op (:mod:`._stepped`), so its
scheduler, logging, callbacks and checkpoints work as usual. At the end of training the method
leaves the model as it predicts (eval mode; NEFTune's hook removed) and says so in the log.

For a language model the loss is :func:`~dipnet.projection.causal_lm_loss` on the batch's
``labels`` (Hugging Face's own causal-LM loss), with the language-model defaults of the noise
methods (:data:`dipnet.llm.runner.LLM_METHOD_DEFAULTS`); for other models cross-entropy. The
batch's ``labels`` are the targets, its other entries the model's keyword inputs (a batch with
just ``x`` and ``labels`` calls ``model(x)``); ``bounds`` is the inputs' valid range, which
batch methods (input noise, FGSM, ICP) keep inputs within. Gradient
accumulation is refused (a method's update needs the whole batch's gradient at once).
"""
from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..llm._hf import require
from ..llm.runner import LLM_METHOD_DEFAULTS
from ..methods import Method, StepContext, build_method
from ..projection import causal_lm_loss
from ._stepped import SteppedOptimizer

require("transformers")
from transformers import Trainer, TrainerCallback  # noqa: E402

__all__ = ["MethodTrainer", "is_language_model"]

logger = logging.getLogger("dipnet")


def is_language_model(model: nn.Module) -> bool:
    """A Hugging Face causal LM (it has input embeddings and generates)."""
    return callable(getattr(model, "get_input_embeddings", None)) and callable(getattr(model, "generate", None))


class _EpochStart(TrainerCallback):
    """Tells the method each epoch's start (its schedules: ICP's warm-up)."""

    def __init__(self, trainer: "MethodTrainer") -> None:
        self.trainer = trainer

    def on_epoch_begin(self, args: Any, state: Any, control: Any, model: nn.Module | None = None, **kw: Any) -> None:
        t = self.trainer
        if model is not None and t._step_optimizer is not None:
            t.method.on_epoch_start(model, t._step_optimizer, int(state.epoch or 0), t.epochs())


class MethodTrainer(Trainer):
    """A ``Trainer`` that trains with a dipnet method (see the module docstring); ``method`` is a
    spec (``"sft"``, ``"dipnet"``, ``"sam"``, ``"dipnet+sam"``, ...) or a built
    :class:`~dipnet.methods.Method`, ``method_params`` its hyperparameters."""

    def __init__(self, model: nn.Module | None = None, args: Any = None, *, method: str | Method = "sft",
                 method_params: dict[str, Any] | None = None, bounds: tuple[float, float] | None = None,
                 **kwargs: Any) -> None:
        if model is None:
            raise ConfigError("MethodTrainer needs the model at construction (model_init is not supported)")
        lm = is_language_model(model)
        self.method = build_method(method, method_params, defaults=LLM_METHOD_DEFAULTS if lm else None)
        self.method.check_inputs("tokens" if lm else "features")
        self.net: nn.Module = self.method.transform_model(model)
        self.criterion = causal_lm_loss if lm else F.cross_entropy
        self.bounds = bounds
        self._method_logs: dict[str, float] = {}
        self._step_optimizer: torch.optim.Optimizer | None = None
        callbacks = [*(kwargs.pop("callbacks", None) or []), _EpochStart(self)]
        super().__init__(model=model, args=args, callbacks=callbacks, **kwargs)
        if self.args.gradient_accumulation_steps != 1:
            raise ConfigError("MethodTrainer updates once per batch: set gradient_accumulation_steps=1 "
                              "(raise per_device_train_batch_size instead)")

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        if self.optimizer is None:
            net: Any = self.net  # a PreTrainedModel, or any module the trainer takes
            cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(self.args, net)
            kwargs = {k: v for k, v in kwargs.items() if k != "weight_decay"}
            self._step_optimizer = self.method.build_optimizer(self.net, cls, weight_decay=self.args.weight_decay,
                                                               **kwargs)
            self.optimizer = SteppedOptimizer(self._step_optimizer)
        return self.optimizer

    def training_step(self, model: nn.Module, inputs: dict[str, Any],
                      num_items_in_batch: Any = None) -> torch.Tensor:
        if self._step_optimizer is None:
            raise ConfigError("MethodTrainer's optimizer was replaced; pass no optimizers= (the method builds its own)")
        model.train()
        inputs = dict(self._prepare_inputs(inputs))
        if "labels" not in inputs:
            raise ConfigError("MethodTrainer needs the targets in the batch's 'labels'")
        labels = inputs.pop("labels")
        if set(inputs) == {"x"}:
            inputs = inputs["x"]
        step, total = self.state.global_step, max(self.state.max_steps, 1)
        lr = self._step_optimizer.param_groups[0]["lr"]
        ctx = StepContext(epoch=int(self.state.epoch or 0), epochs=self.epochs(), step=step, progress=step / total,
                          lr=lr, batch_size=int(labels.shape[0]), criterion=self.criterion, bounds=self.bounds)
        clip = self.args.max_grad_norm if self.args.max_grad_norm and self.args.max_grad_norm > 0 else None
        value = self.method.step(model, self._step_optimizer, inputs, labels, ctx, grad_clip=clip)
        if ctx.logs:
            self._method_logs = dict(ctx.logs)
        return torch.tensor(value, device=labels.device)

    def epochs(self) -> int:
        """The run's epochs as the method's schedules count them (ICP's warm-up)."""
        return max(int(getattr(self.state, "num_train_epochs", 0) or self.args.num_train_epochs or 1), 1)

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        metrics = self.method.epoch_metrics(self.net)
        logs.update({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        logs.update(self._method_logs)
        super().log(logs, *args, **kwargs)

    def train(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().train(*args, **kwargs)
        finally:
            for line in self.method.on_train_end(self.net):
                logger.info(line)
