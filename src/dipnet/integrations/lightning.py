"""DIPNet, SAM and the RWP family inside PyTorch Lightning (``pip install 'dipnet[lightning]'``).

- :class:`DIPNetCallback` makes any LightningModule a DIPNet (Hao et al., arXiv 2506.04690):
  it inserts the Gaussian projections in ``setup`` (Lightning 2.x runs ``Callback.setup``
  before ``configure_optimizers``, so the optimizer gets the sigmas), adds the variance prior
  ``sum alpha lambda - beta ln lambda`` as its exact gradient in ``on_before_optimizer_step``
  (after the backward, before gradient clipping, once per optimizer step whatever the gradient
  accumulation), and logs the learned sigmas. A callback cannot change the module's loss: the
  module's own loss on the noisy forward is DIPNet's with m = 1; for m > 1 trajectories return
  :meth:`DIPNetCallback.loss` from ``training_step``.
- :func:`manual_step` runs one update of :class:`~dipnet.methods.SAM` (ASAM) or
  :class:`~dipnet.methods.RWP` (RWP, m-RWP, ARWP, m-ARWP) from a ``training_step`` under manual
  optimization (``automatic_optimization = False``), the way Lightning users run SAM, since
  Lightning ships none. It goes through Lightning's optimizer step (hooks, clipping, step
  count) and ``manual_backward``, which under Lightning's DDP strategy prepares DDP's gradient
  reduction for every backward: each pass, SAM's ascent pass too, uses the all-reduced
  gradient, as in the engine. m-RWP keeps its sequential form here (its parallel form needs
  per-rank loss weights inside DDP's reduction: train it with ``dipnet train --nproc``).

Written by hand because Lightning has no hook for a second gradient pass or for a prior that
lives outside the module's loss; everything else is Lightning's own machinery.
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..methods import RWP, SAM, DIPNet, Method, StepContext, build_method, frozen_running_stats
from ..methods._wrapper import has_batchnorm
from ..projection import is_projected

from ._stepped import SteppedOptimizer

try:
    import lightning.pytorch as pl
    from lightning.pytorch.utilities import rank_zero_info
except ImportError as exc:  # pragma: no cover - the extra is installed in CI
    raise ConfigError("dipnet.integrations.lightning needs Lightning: pip install 'dipnet[lightning]'") from exc

__all__ = ["DIPNetCallback", "MethodModule", "manual_step"]


class DIPNetCallback(pl.Callback):
    """``Trainer(callbacks=[DIPNetCallback(sigma=0.1)])``: DIPNet on the module (or on its
    attribute ``module_attr``, e.g. ``"model"``). ``settings`` are the ``dipnet`` method's
    hyperparameters (``sigma``, ``scale``, ``granularity``, ``project_input``, ``noise``,
    ``alpha``, ``beta``, ``trajectories``, ``stability``, ...), checked by its schema."""

    def __init__(self, module_attr: str | None = None, *, log_sigmas: bool = True, **settings: Any) -> None:
        super().__init__()
        method = build_method("dipnet", settings).components[0]
        assert isinstance(method, DIPNet)
        self.method, self.module_attr, self.log_sigmas = method, module_attr, log_sigmas

    def target(self, pl_module: nn.Module) -> nn.Module:
        """The network that carries the projections."""
        if self.module_attr is None:
            return pl_module
        target = getattr(pl_module, self.module_attr, None)
        if not isinstance(target, nn.Module):
            raise ConfigError(f"DIPNetCallback(module_attr={self.module_attr!r}): the LightningModule has no "
                              "such submodule")
        return target

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        target = self.target(pl_module)
        if not is_projected(target):
            self.method.transform_model(target)

    def loss(self, pl_module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """DIPNet's data term with m trajectories (and the stability term) on ``pl_module``'s
        forward; the prior comes from the callback as a gradient, so it is not in this value."""
        return self.method.without_prior()(pl_module, x, y)

    def add_prior_grad(self, pl_module: nn.Module) -> None:
        """Add the gradient of the variance prior to the sigmas' ``.grad``."""
        self.method.add_prior_grad(self.target(pl_module))

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        self.add_prior_grad(pl_module)

    def sigmas(self, pl_module: nn.Module) -> dict[str, Any]:
        """The learned sigma per projected layer (input units) with its mean, min and max."""
        return self.method.epoch_metrics(self.target(pl_module))

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.log_sigmas:
            summary = self.sigmas(pl_module)
            pl_module.log_dict({f"dipnet/{k}": summary[k] for k in ("sigma_mean", "sigma_min", "sigma_max")
                                if k in summary}, on_step=True, on_epoch=False)


def manual_step(pl_module: pl.LightningModule, loss_fn: Callable[[], torch.Tensor],
                optimizer: Any = None) -> torch.Tensor:
    """One update from ``training_step`` under manual optimization; returns the first pass's loss.

    ``loss_fn()`` computes the loss (forward included) on the step's batch; it runs once per
    gradient pass. The module's optimizer (or ``optimizer``, a LightningOptimizer) may be
    :class:`~dipnet.methods.SAM` (two passes: the gradient at ``w + e``, BatchNorm statistics
    from the first pass only), :class:`~dipnet.methods.RWP` (one pass at ``w + eps``; m-RWP's
    clean passes do not move the weights) or any torch optimizer (one plain pass).
    """
    if pl_module.automatic_optimization:
        raise ConfigError("manual_step needs manual optimization: set self.automatic_optimization = False "
                          "in the LightningModule's __init__")
    lopt = optimizer if optimizer is not None else pl_module.optimizers()
    if isinstance(lopt, (list, tuple)):
        raise ConfigError("manual_step updates one optimizer: pass optimizer= (one of self.optimizers())")
    inner = getattr(lopt, "optimizer", lopt)
    sam = isinstance(inner, SAM)
    freeze = sam and has_batchnorm(pl_module)
    passes = [0]

    def closure() -> torch.Tensor:
        later = passes[0] > 0
        passes[0] += 1
        with frozen_running_stats(pl_module) if later and freeze else contextlib.nullcontext():
            loss = loss_fn()
            pl_module.manual_backward(loss)
        return loss.detach()

    if sam:
        inner.zero_grad(set_to_none=True)
        first = closure()
        for cb in pl_module.trainer.callbacks:  # type: ignore[attr-defined]  # Lightning's CallbackConnector sets it, undeclared on Trainer
            if isinstance(cb, DIPNetCallback):  # the ascent sees the prior, as in the engine's loss
                cb.add_prior_grad(pl_module)
        lopt.step(closure=closure)
        inner.zero_grad(set_to_none=True)
        return first
    if isinstance(inner, RWP):
        return lopt.step(closure=closure, model=pl_module)
    inner.zero_grad(set_to_none=True)
    loss = lopt.step(closure=closure)
    inner.zero_grad(set_to_none=True)
    return loss


class MethodModule(pl.LightningModule):
    """Any dipnet method as a LightningModule: ``Trainer(...).fit(MethodModule(net, "dipnet+sam"), loader)``.

    Each training batch ``(x, y)`` (or a mapping with ``labels``, the rest keyword inputs) is one
    :meth:`~dipnet.methods.Method.step` - the engine's step, with Lightning's ``manual_backward``
    for every backward (so Lightning's DDP reduces each pass's gradients) - and the LightningOptimizer
    step that follows is the trainer's count, hooks and checkpoints, not a second update
    (:mod:`._stepped`). The method changes ``model`` on construction (DIPNet's projections) and the
    optimizer is ``optimizer(lr=lr, weight_decay=weight_decay)`` over the method's parameter groups.
    ``criterion``: the loss on the logits (cross-entropy; :func:`~dipnet.projection.causal_lm_loss`
    for a language model); ``bounds``: the inputs' valid range (input noise, FGSM, ICP keep to it). Logged: ``train_loss`` per step, the method's numeric metrics per epoch.
    """

    def __init__(self, model: nn.Module, method: str | Method = "erm", method_params: dict[str, Any] | None = None,
                 *, optimizer: type[torch.optim.Optimizer] = torch.optim.AdamW, lr: float = 1e-3,
                 weight_decay: float = 0.0, grad_clip: float | None = None,
                 criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
                 defaults: dict[str, dict[str, Any]] | None = None,
                 bounds: tuple[float, float] | None = None) -> None:
        super().__init__()
        self.bounds = bounds
        self.automatic_optimization = False
        self.method = build_method(method, method_params, defaults=defaults)
        self.model = self.method.transform_model(model)
        self.base, self.lr, self.weight_decay, self.grad_clip, self.criterion = \
            optimizer, lr, weight_decay, grad_clip, criterion
        self._inner: torch.optim.Optimizer | None = None

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        self._inner = self.method.build_optimizer(self.model, self.base, lr=self.lr, weight_decay=self.weight_decay)
        return SteppedOptimizer(self._inner)

    def on_train_epoch_start(self) -> None:
        if self._inner is not None:
            self.method.on_epoch_start(self.model, self._inner, self.current_epoch, self.trainer.max_epochs or 1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if isinstance(batch, dict):
            x = dict(batch)
            y = x.pop("labels")
        else:
            x, y = batch
        lopt = self.optimizers()
        if isinstance(lopt, (list, tuple)) or self._inner is None:
            raise ConfigError("MethodModule builds its own optimizer: do not override configure_optimizers")
        total = self.trainer.estimated_stepping_batches
        if not math.isfinite(total):
            raise ConfigError("MethodModule needs a known number of steps (Trainer(max_steps=...) or a dataloader with "
                              "a length): the methods' schedules follow the training progress")
        step, total = self.global_step, max(int(total), 1)
        ctx = StepContext(epoch=self.current_epoch, step=step, progress=step / total,
                          lr=self._inner.param_groups[0]["lr"], batch_size=int(y.shape[0]), criterion=self.criterion,
                          epochs=self.trainer.max_epochs or 1, bounds=self.bounds)
        value = self.method.step(self.model, self._inner, x, y, ctx, grad_clip=self.grad_clip,
                                 backward=self.manual_backward)
        lopt.step()  # the trainer's step count and hooks; the weights moved in the method's step
        self.log("train_loss", value, on_step=True, on_epoch=False, prog_bar=True)
        return torch.tensor(value)

    def on_train_epoch_end(self) -> None:
        metrics = self.method.epoch_metrics(self.model)
        numeric = {f"dipnet/{k}": float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        if numeric:
            self.log_dict(numeric, on_step=False, on_epoch=True)

    def on_train_end(self) -> None:
        for line in self.method.on_train_end(self.model):
            rank_zero_info(line)
