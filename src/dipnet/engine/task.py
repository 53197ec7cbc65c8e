"""What a training loop trains on: a :class:`Task` says where each step's batch comes from, the
loss criterion on the model's logits, how a period is evaluated and what a finished run keeps.

:class:`ClassificationTask` is the engine's (a :class:`~dipnet.data.Dataset` of tensors, an
epoch per period, loss and accuracy on the train/val/test splits); causal-LM fine-tuning is
:class:`dipnet.llm.runner.CausalLMTask`. A task declares its ``inputs`` (``"features"`` or
``"tokens"``) so that a method that cannot apply to them is refused before training.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..data import Dataset
from ..errors import ConfigError
from .distributed import Distributed
from .setup import epoch_permutation

Criterion = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class Task:
    """The interface a :class:`~dipnet.engine.core.Loop` uses (subclasses fill it in)."""

    name: str = ""
    inputs: str = "features"
    criterion: Criterion = staticmethod(F.cross_entropy)  # a plain function as a class default
    bounds: tuple[float, float] | None = None
    total_steps: int = 1
    period_steps: int = 1
    static_shapes: bool = True  # every batch the same shape but the last: compiled without dynamic shapes

    def indices(self, step: int) -> torch.Tensor:
        """The example indices of the global batch of ``step``."""
        raise NotImplementedError

    def batch(self, idx: torch.Tensor) -> tuple[Any, torch.Tensor]:
        """Inputs (a tensor or a keyword batch) and targets of the examples ``idx``, on the device."""
        raise NotImplementedError

    def evaluate(self, model: nn.Module) -> dict[str, Any]:
        """The metrics of a period's record row."""
        return {}

    def header(self) -> dict[str, Any]:
        """What the run record says about the task (dataset, splits)."""
        return {}


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> dict[str, float]:
    """Mean cross-entropy and accuracy in eval mode (the model's mode is restored)."""
    was_training = model.training
    model.eval()
    device = next((p.device for p in model.parameters()), x.device)
    loss_sum, correct = 0.0, 0
    try:
        for i in range(0, x.shape[0], batch_size):
            xb, yb = x[i : i + batch_size].to(device), y[i : i + batch_size].to(device)
            logits = model(xb)
            loss_sum += F.cross_entropy(logits, yb, reduction="sum").item()
            correct += (logits.argmax(1) == yb).sum().item()
    finally:
        model.train(was_training)
    n = max(x.shape[0], 1)
    return {"loss": loss_sum / n, "acc": correct / n}


class ClassificationTask(Task):
    """Classification on a tensor dataset: seeded shuffling per epoch (the last batch of an epoch
    may be smaller), an epoch per period, cross-entropy, and loss/accuracy on a fixed subset of
    the training set (``train_eval_max`` examples), the validation and the test split."""

    def __init__(self, dataset: Dataset, device: torch.device, *, epochs: int, batch_size: int, seed: int,
                 eval_batch_size: int, train_eval_max: int, dist: Distributed) -> None:
        self.dataset, self.seed, self.batch_size, self.eval_batch_size, self.dist = \
            dataset, seed, batch_size, eval_batch_size, dist
        self.name, self.bounds = dataset.info.name, dataset.info.bounds
        self.x_train, self.y_train = dataset.x_train.to(device), dataset.y_train.to(device)
        self.x_test, self.y_test = dataset.x_test.to(device), dataset.y_test.to(device)
        x_val, y_val = dataset.x_val, dataset.y_val
        self.val = (x_val.to(device), y_val.to(device)) if dataset.has_val and x_val is not None and y_val is not None else None
        self.n = n = self.x_train.shape[0]
        if n == 0:
            raise ConfigError(f"dataset {self.name!r} has no training examples")
        self.device = device
        self.eval_idx = epoch_permutation(n, seed, -1)[:min(n, train_eval_max)].sort().values.to(device)
        self.period_steps = math.ceil(n / batch_size)
        self.total_steps = epochs * self.period_steps
        self._perm: tuple[int, torch.Tensor] | None = None

    def indices(self, step: int) -> torch.Tensor:
        epoch, i = divmod(step, self.period_steps)
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, epoch_permutation(self.n, self.seed, epoch).to(self.device))
        return self._perm[1][i * self.batch_size : (i + 1) * self.batch_size]

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x_train[idx], self.y_train[idx]

    def evaluate(self, model: nn.Module) -> dict[str, Any]:
        ev, bs = self.dist.evaluate, self.eval_batch_size  # distributed: evaluation split over the ranks
        tr = ev(evaluate, model, self.x_train[self.eval_idx], self.y_train[self.eval_idx], bs)
        te = ev(evaluate, model, self.x_test, self.y_test, bs)
        va = ev(evaluate, model, *self.val, bs) if self.val is not None else {"loss": None, "acc": None}
        return {"train_loss": tr["loss"], "train_acc": tr["acc"], "val_loss": va["loss"], "val_acc": va["acc"],
                "test_loss": te["loss"], "test_acc": te["acc"], "gap": tr["acc"] - te["acc"]}

    def header(self) -> dict[str, Any]:
        return {"dataset": self.dataset.info.to_dict()}
