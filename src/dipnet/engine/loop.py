"""The training loop: (dataset, model, method, optimizer, schedule) -> a finished run.

The loop knows nothing about particular methods: each step is :meth:`Method.step`, which may
change the batch, the loss and the update, and counts the example-gradients it spends.
Reproducible and resumable: seeded shuffling per epoch, learning rates as a pure function of
the step, and a :class:`~dipnet.engine.rundir.RunDirectory` that checkpoints every epoch with
the optimizer and generator states and records config, seed, versions and hardware.
Under torchrun the same loop trains data-parallel (:mod:`dipnet.engine.distributed`, the
hooks marked "distributed" below).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..data import Dataset
from ..errors import ConfigError, DivergenceError
from ..methods import Method, StepContext
from ..schema import check_type
from .config import TrainConfig
from .distributed import setup as setup_distributed
from .progress import Progress
from .rundir import RunDirectory, TrainState, dataset_fingerprint
from .runinfo import run_info
from .schedule import lr_at
from .setup import ModelArg, build_optimizer, epoch_permutation, prepare, resolve_device

Callback = Callable[[dict[str, Any]], None]
# Divergence rule: a run fails when its step loss stays above DIVERGENCE_FACTOR x max(1, |L0|),
# L0 the loss of its first step (at the initial weights), for `patience` steps in a row, where
# patience is PATIENCE_STEPS, or a tenth of the run's steps when the run is short (at least 5).
DIVERGENCE_FACTOR = 100.0
PATIENCE_STEPS = 50


@dataclass
class RunResult:
    run_dir: Path | None
    config: TrainConfig
    history: list[dict[str, Any]]
    final: dict[str, Any]
    model: nn.Module
    method: Method
    dataset: Dataset


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


class Trainer:
    """One run, built and validated on construction (dataset, seeded model, method, optimizer,
    run directory), trained by :meth:`fit`: a caller can check everything before committing to it."""

    def __init__(self, cfg: TrainConfig, *, dataset: Dataset | None = None, model: ModelArg = None,
                 callbacks: Sequence[Callback] = ()) -> None:
        check_type(cfg, TrainConfig, "the training config", "build one with TrainConfig(...) or TrainConfig.from_dict(d)").validate()
        self.cfg, self.callbacks = cfg, list(callbacks)
        device = resolve_device(cfg.device)
        self.dist = setup_distributed(device)  # distributed: a world of 1 without torchrun
        self.device = device = self.dist.place(device)
        self.dataset, model, self.method = prepare(cfg, dataset, model)
        self.model = model.to(device)
        self.optimizer = build_optimizer(cfg, self.model, self.method)
        self.method.check_world(self.dist.world_size)  # distributed: parallel m-RWP needs an even world
        self.method.check_epochs(cfg.epochs)
        self.train_model = self.dist.wrap(self.model, device)  # distributed: DDP, or the model itself
        self.x_train, self.y_train = self.dataset.x_train.to(device), self.dataset.y_train.to(device)
        self.x_test, self.y_test = self.dataset.x_test.to(device), self.dataset.y_test.to(device)
        self.val = (self.dataset.x_val.to(device), self.dataset.y_val.to(device)) if self.dataset.has_val else None
        self.n = n = self.x_train.shape[0]
        if n == 0:
            raise ConfigError(f"dataset {self.dataset.info.name!r} has no training examples")
        self.eval_idx = epoch_permutation(n, cfg.seed, -1)[:min(n, cfg.train_eval_max)].sort().values.to(device)
        self.steps_per_epoch = math.ceil(n / cfg.batch_size)
        self.total_steps = cfg.epochs * self.steps_per_epoch
        self.warmup_steps = round(cfg.warmup_epochs * self.steps_per_epoch)
        self.ctx = StepContext(epochs=cfg.epochs, bounds=self.dataset.info.bounds,
                               rank=self.dist.rank, world_size=self.dist.world_size)
        self.patience = min(PATIENCE_STEPS, max(5, self.total_steps // 10))
        self.run = RunDirectory(cfg.out, cfg)
        self.run.writer, self.run.world_size = self.dist.is_writer, self.dist.world_size  # distributed

    def fit(self, overwrite: bool = False) -> RunResult:
        """Train (resuming from the run directory's checkpoint if it holds one) and return the result.

        The run directory is locked while training; ``overwrite`` first deletes the files of a
        previous run there (and only those). Raises :class:`~dipnet.errors.DivergenceError`
        (:class:`~dipnet.errors.NonFiniteLossError` for NaN/inf) naming the step where the
        loss diverged (rule: ``DIVERGENCE_FACTOR``)."""
        if self.run.writer:  # distributed: rank 0 alone checks, locks and clears the directory
            self.run.check_target(overwrite)
        with self.run.locked():
            if overwrite and self.run.path is not None and self.run.writer:
                self.run.clear()
            self.dist.barrier()  # distributed: the others read the checkpoint after that
            return self._fit()

    def _fit(self) -> RunResult:
        cfg, model, method, optimizer, run = self.cfg, self.model, self.method, self.optimizer, self.run
        if run.path is not None:
            run.fingerprint = dataset_fingerprint(self.dataset)
        run.header = {"method": {"name": method.name, "hyperparameters": method.hyperparameters()},
                      "dataset": self.dataset.info.to_dict(), "run_info": run_info(self.device)}
        run.header["run_info"]["world_size"] = self.dist.world_size  # distributed
        state = run.resume(model, optimizer)
        if state is None:
            state = TrainState()
        else:
            run.header["run_info"]["resumed_from_epoch"] = state.epoch
            self.ctx.example_grads = state.example_grads
        progress = Progress(cfg.progress if self.dist.is_writer else "none", label=f"{method.name} {cfg.model}")
        wall_before, t_run = state.wall_s, time.perf_counter()
        run.record("running", state)
        try:
            with run.recording(state):
                while state.epoch < cfg.epochs:
                    row = self.epoch(state, progress, wall_before, t_run)
                    progress.end_epoch(row, cfg.epochs)
                    for cb in self.callbacks:
                        cb(row)
                    run.checkpoint(model, optimizer, state)
                    run.record("running", state)
        finally:
            progress.close()
            self.train_model = self.dist.close(self.train_model)  # distributed: leave the group this trainer joined
        model.eval()
        final = _final(state.history, self.ctx.example_grads)
        run.save_final(model, method.name)
        run.record("done", state, final)
        return RunResult(run.path, cfg, state.history, final, model, method, self.dataset)

    def _watch(self, state: TrainState, value: float) -> None:
        if state.loss_start is None:
            state.loss_start = value
            return
        if _diverged(state, value, self.patience):
            limit = DIVERGENCE_FACTOR * max(1.0, abs(state.loss_start))
            raise DivergenceError(self.ctx.step, self.ctx.epoch, value,
                                  detail=f", above {limit:.3g} = {DIVERGENCE_FACTOR:g} x max(1, starting loss "
                                         f"{state.loss_start:.3g}) for {self.patience} steps in a row")

    def epoch(self, state: TrainState, progress: Progress, wall_before: float, t_run: float) -> dict[str, Any]:
        """Train one epoch (``state.epoch``), evaluate, and return its record; advances ``state``."""
        cfg, ctx, method, model, optimizer = self.cfg, self.ctx, self.method, self.model, self.optimizer
        epoch, t_epoch = state.epoch, time.perf_counter()
        method.on_epoch_start(model, optimizer, epoch, cfg.epochs)
        model.train()
        perm = epoch_permutation(self.n, cfg.seed, epoch).to(self.device)
        progress.start_epoch(epoch, cfg.epochs, self.steps_per_epoch)
        objective_sum, objective_n, log_sums = 0.0, 0, {}
        grads_before = ctx.example_grads
        lr = ctx.lr
        for i in range(self.steps_per_epoch):
            idx = perm[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            lr = lr_at(state.step, self.total_steps, cfg.lr, cfg.schedule, self.warmup_steps, cfg.milestones, cfg.gamma)
            if lr != ctx.lr:
                for group in optimizer.param_groups:
                    group["lr"] = lr
            ctx.epoch, ctx.step, ctx.progress, ctx.lr = epoch, state.step, state.step / self.total_steps, lr
            ctx.batch_size = int(idx.shape[0])
            idx, ctx.loss_scale = self.dist.shard(idx)  # distributed: this rank's part of the global batch
            self.dist.seed_step(cfg.seed, state.step)  # distributed: noise from (seed, rank, step)
            value = method.step(self.train_model, optimizer, self.x_train[idx], self.y_train[idx], ctx,
                                grad_clip=cfg.grad_clip)
            value = self.dist.batch_mean(value, idx.numel() if ctx.loss_scale else 0)  # distributed: same on all ranks
            self._watch(state, value)
            objective_sum += value * ctx.batch_size
            objective_n += ctx.batch_size
            if ctx.logs:
                for k, v in ctx.logs.items():
                    log_sums[k] = log_sums.get(k, 0.0) + v
                ctx.logs.clear()
            state.step += 1
            progress.advance(value)
        log_sums, grads = self.dist.reduce_epoch(log_sums, ctx.example_grads - grads_before)  # distributed
        ctx.example_grads = grads_before + grads
        train_s = time.perf_counter() - t_epoch
        ev = self.dist.evaluate  # distributed: evaluation split over the ranks, sums reduced
        tr = ev(evaluate, model, self.x_train[self.eval_idx], self.y_train[self.eval_idx], cfg.eval_batch_size)
        te = ev(evaluate, model, self.x_test, self.y_test, cfg.eval_batch_size)
        va = ev(evaluate, model, *self.val, cfg.eval_batch_size) if self.val is not None else {"loss": None, "acc": None}
        now = time.perf_counter()
        state.epoch, state.example_grads, state.wall_s = epoch + 1, ctx.example_grads, wall_before + now - t_run
        row = {
            "epoch": epoch, "step": state.step, "lr": lr, "objective": objective_sum / max(objective_n, 1),
            "train_loss": tr["loss"], "train_acc": tr["acc"], "val_loss": va["loss"], "val_acc": va["acc"],
            "test_loss": te["loss"], "test_acc": te["acc"],
            "gap": tr["acc"] - te["acc"], "example_grads": ctx.example_grads, "epoch_s": now - t_epoch,
            "train_s": train_s, "wall_s": state.wall_s,
            "logs": {k: v / self.steps_per_epoch for k, v in log_sums.items()},
            "method": method.epoch_metrics(model),
        }
        state.history.append(row)
        return row


def _diverged(state: TrainState, value: float, patience: int) -> bool:
    """Update the divergence watch with one step's loss; True when the run has diverged."""
    if value > DIVERGENCE_FACTOR * max(1.0, abs(state.loss_start)):
        state.steps_above += 1
    else:
        state.steps_above = 0
    return state.steps_above >= patience


def _final(history: list[dict[str, Any]], example_grads: int) -> dict[str, Any]:
    last = history[-1] if history else {}
    return {"val_acc": last.get("val_acc"), "val_loss": last.get("val_loss"),
            "test_acc": last.get("test_acc"), "test_loss": last.get("test_loss"),
            "train_acc": last.get("train_acc"), "train_loss": last.get("train_loss"), "gap": last.get("gap"),
            "example_grads": example_grads, "wall_s": last.get("wall_s"), "epochs": len(history)}


def train(
    cfg: TrainConfig,
    *,
    dataset: Dataset | None = None,
    model: ModelArg = None,
    callbacks: Sequence[Callback] = (),
) -> RunResult:
    """Train as ``cfg`` says; with ``cfg.out`` set, checkpoint every epoch and resume from it.

    ``dataset`` and ``model`` (a module, or a factory ``info -> module`` called after seeding)
    override the registry lookups, for a user's own data or network. ``callbacks`` get each
    epoch's record. Raises :class:`~dipnet.errors.DivergenceError` naming the step where the loss
    diverged (a NaN/inf loss: :class:`~dipnet.errors.NonFiniteLossError`).
    """
    return Trainer(cfg, dataset=dataset, model=model, callbacks=callbacks).fit()
