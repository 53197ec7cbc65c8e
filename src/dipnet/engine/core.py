"""The one training loop: every task (image classification, causal-LM fine-tuning), every method,
one process or data-parallel, with events for what happens around the steps.

A :class:`Loop` trains a :class:`~dipnet.engine.task.Task` (where the batches come from, its
loss criterion, its evaluation) with a :class:`~dipnet.methods.Method` (:meth:`Method.step` is
the step) in steps grouped in *periods*: an epoch for classification, ``log_every`` steps for
fine-tuning. Each period ends in an evaluation whose record row goes into the history.

Events, in the spirit of the Hugging Face Trainer's callback handler: a :class:`Callback`
implements any of ``on_fit_start``, ``on_period_start``, ``on_step_end``, ``on_evaluate`` (the
period's row, which it may extend), ``on_period_end``, ``on_save`` and ``on_fit_end``, or
``on_exception`` instead of ``on_fit_end`` when the run fails; each gets the loop and its
:class:`~dipnet.engine.rundir.TrainState`. ``loop.control.stop(reason)`` ends
training after the current step (the run is then checkpointed and recorded as ``stopped``; a
rerun resumes it, inside its period if it stopped there).
The divergence watch, the progress display and run logs (:mod:`dipnet.engine.logs`) are
callbacks; checkpoints and the run record go through :class:`~dipnet.engine.rundir.RunDirectory`.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..compiling import compile_model
from ..errors import DivergenceError
from ..methods import Method, StepContext
from .distributed import Distributed
from .progress import Progress
from .rundir import RunDirectory, Stateful, TrainState
from .task import Task

# Divergence rule: a run fails when its step loss stays above DIVERGENCE_FACTOR x max(1, |L0|),
# L0 the loss of its first step (at the initial weights), for `patience` steps in a row, where
# patience is PATIENCE_STEPS, or a tenth of the run's steps when the run is short (at least 5).
DIVERGENCE_FACTOR = 100.0
PATIENCE_STEPS = 50


@dataclass
class Control:
    """What callbacks tell the loop: stop after the current step."""

    should_stop: bool = False
    reason: str = ""

    def stop(self, reason: str) -> None:
        self.should_stop, self.reason = True, reason


class Callback:
    """Base class of the loop's event handlers: every event is a no-op."""

    def on_fit_start(self, loop: Loop, state: TrainState) -> None:
        """Before the first step (after a resume: before the first step still to run)."""

    def on_period_start(self, loop: Loop, state: TrainState) -> None:
        """Before the steps of period ``state.epoch``."""

    def on_step_end(self, loop: Loop, state: TrainState, loss: float) -> None:
        """After each optimizer step (``state.step`` already counts it); ``loss``: its loss."""

    def on_evaluate(self, loop: Loop, state: TrainState, row: dict[str, Any]) -> None:
        """The period's evaluation ``row``, before it is recorded: a callback may add fields."""

    def on_period_end(self, loop: Loop, state: TrainState, row: dict[str, Any]) -> None:
        """After the period's row is in ``state.history``, before the checkpoint."""

    def on_save(self, loop: Loop, state: TrainState) -> None:
        """After a checkpoint was written."""

    def on_fit_end(self, loop: Loop, state: TrainState, final: dict[str, Any]) -> None:
        """After training and the final evaluation, before the result is returned."""

    def on_exception(self, loop: Loop, state: TrainState, exc: BaseException) -> None:
        """When training or the final evaluation raised ``exc`` (after ``run.json`` recorded the
        failure), before it propagates: the place to close files."""


class DivergenceWatch(Callback):
    """Stop a run whose loss stays far above its starting loss (rule: ``DIVERGENCE_FACTOR``)."""

    def __init__(self, total_steps: int) -> None:
        self.patience = min(PATIENCE_STEPS, max(5, total_steps // 10))

    def on_step_end(self, loop: Loop, state: TrainState, loss: float) -> None:
        if state.loss_start is None:
            state.loss_start = loss
            return
        limit = DIVERGENCE_FACTOR * max(1.0, abs(state.loss_start))
        state.steps_above = state.steps_above + 1 if loss > limit else 0
        if state.steps_above >= self.patience:
            raise DivergenceError(state.step - 1, loop.ctx.epoch, loss,
                                  detail=f", above {limit:.3g} = {DIVERGENCE_FACTOR:g} x max(1, starting loss "
                                         f"{state.loss_start:.3g}) for {self.patience} steps in a row")


class ProgressDisplay(Callback):
    """The progress bar or one plain line per period (:class:`~dipnet.engine.progress.Progress`)."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress

    def on_period_start(self, loop: Loop, state: TrainState) -> None:
        self.progress.start_epoch(state.epoch, loop.periods, loop.steps_in_period(state.epoch))

    def on_step_end(self, loop: Loop, state: TrainState, loss: float) -> None:
        self.progress.advance(loss)

    def on_period_end(self, loop: Loop, state: TrainState, row: dict[str, Any]) -> None:
        self.progress.end_epoch(row, loop.periods)


class Loop:
    """Train ``task`` with ``method`` on ``model`` (``train_model``: the same model, possibly
    wrapped for data-parallel training) and ``optimizer``; ``lr_at(step)`` is the schedule.
    Checkpoints hold ``state_module``'s state (default: the model; fine-tuning keeps only what
    trains) and come at each period's end, and every ``checkpoint_every`` steps when set.
    ``compile``: train through ``torch.compile`` (:func:`~dipnet.compiling.compile_model`; the
    compile time in :meth:`compile_record`)."""

    def __init__(self, task: Task, model: nn.Module, method: Method, optimizer: torch.optim.Optimizer,
                 run: RunDirectory, *, lr_at: Callable[[int], float], dist: Distributed,
                 train_model: nn.Module | None = None, grad_clip: float | None = None, seed: int = 0,
                 checkpoint_every: int | None = None, state_module: Stateful | None = None,
                 callbacks: Sequence[Callback] = (), compile: bool = False) -> None:
        self.task, self.model, self.method, self.optimizer, self.run = task, model, method, optimizer, run
        self.train_model = train_model if train_model is not None else model
        self.compiled = compile
        if compile:  # the training forward through torch.compile (docs/dipnet.md, "Under torch.compile")
            self.train_model = compile_model(self.train_model, dynamic=False if task.static_shapes else None)
        self.step_times: list[float] = []  # compiled: each step's seconds in this process
        self.lr_at, self.dist, self.grad_clip, self.seed = lr_at, dist, grad_clip, seed
        self.checkpoint_every = checkpoint_every
        self.state_module = state_module if state_module is not None else model  # what checkpoints hold
        self.start_step = 0
        self.total_steps, self.period = task.total_steps, task.period_steps
        self.periods = math.ceil(self.total_steps / self.period)
        self.ctx = StepContext(epochs=self.periods, bounds=task.bounds, rank=dist.rank, world_size=dist.world_size,
                               criterion=task.criterion)
        self.control = Control()
        self.callbacks: list[Callback] = [DivergenceWatch(self.total_steps), *callbacks]

    def compile_record(self) -> dict[str, Any]:
        """A compiled loop's final metrics get ``compile_s``: the seconds its steps in this process
        took over their median step (compiling is what makes a step slower than the steady one:
        the first step, and a new input shape's); an uncompiled loop's get nothing."""
        if not self.compiled:
            return {}
        times = self.step_times
        median = statistics.median(times) if times else 0.0
        return {"compile_s": sum(max(t - median, 0.0) for t in times)}

    def steps_in_period(self, period: int) -> int:
        return min(self.period, self.total_steps - period * self.period)

    def emit(self, event: str, *args: Any) -> None:
        for cb in self.callbacks:
            getattr(cb, event)(self, *args)

    def fit(self, state: TrainState) -> TrainState:
        """Train from ``state`` (a fresh or resumed one) to the last step or a stop; returns it."""
        self.ctx.example_grads, self.start_step = state.example_grads, state.step
        self.emit("on_fit_start", state)  # before the clock: opening a log store is no training time
        self._wall_before, self._t_run = state.wall_s, time.perf_counter()
        while state.step < self.total_steps and not self.control.should_stop:
            self.period_of(state)
        return state

    def _elapsed(self) -> float:
        return self._wall_before + time.perf_counter() - self._t_run

    def _save(self, state: TrainState) -> None:
        state.wall_s = self._elapsed()
        self.run.checkpoint(self.state_module, self.optimizer, state)
        self.run.record("running", state)
        self.emit("on_save", state)

    def period_of(self, state: TrainState) -> dict[str, Any] | None:
        """Train the rest of period ``state.epoch``, evaluate, and return its record row (None when
        a callback stopped training inside the period)."""
        ctx, method, task = self.ctx, self.method, self.task
        period, t_period = state.epoch, time.perf_counter()
        end = min((period + 1) * self.period, self.total_steps)
        method.on_epoch_start(self.model, self.optimizer, period, self.periods)
        self.model.train()
        self.emit("on_period_start", state)
        objective_sum, objective_n = 0.0, 0
        log_sums: dict[str, float] = {}
        grads_before, lr = ctx.example_grads, ctx.lr
        while state.step < end:
            idx = task.indices(state.step)
            lr = self.lr_at(state.step)
            if lr != ctx.lr:
                for group in self.optimizer.param_groups:
                    group["lr"] = lr * group.get("lr_scale", 1.0)
            ctx.epoch, ctx.step, ctx.progress, ctx.lr = period, state.step, state.step / self.total_steps, lr
            ctx.batch_size = int(idx.shape[0])
            idx, ctx.loss_scale = self.dist.shard(idx)  # distributed: this rank's part of the global batch
            self.dist.seed_step(self.seed, state.step)  # distributed: noise from (seed, rank, step)
            x, y = task.batch(idx)
            t_step = time.perf_counter()
            value = method.step(self.train_model, self.optimizer, x, y, ctx, grad_clip=self.grad_clip)
            if self.compiled:
                self.step_times.append(time.perf_counter() - t_step)
            value = self.dist.batch_mean(value, idx.numel() if ctx.loss_scale else 0)  # distributed: same on all ranks
            objective_sum += value * ctx.batch_size
            objective_n += ctx.batch_size
            for k, v in ctx.logs.items():
                log_sums[k] = log_sums.get(k, 0.0) + v
            ctx.logs.clear()
            state.step += 1
            self.emit("on_step_end", state, value)
            if self.checkpoint_every and state.step % self.checkpoint_every == 0 and state.step < end:
                state.example_grads = ctx.example_grads
                self._save(state)
            if self.control.should_stop:
                break
        if state.step < end:  # stopped inside the period: no row; a rerun resumes the period where it stopped
            state.example_grads = ctx.example_grads
            self._save(state)
            return None
        log_sums, grads = self.dist.reduce_epoch(log_sums, ctx.example_grads - grads_before)  # distributed
        ctx.example_grads = grads_before + grads
        train_s = time.perf_counter() - t_period
        steps = max(state.step - period * self.period, 1)
        row: dict[str, Any] = {"epoch": period, "step": state.step, "lr": lr,
                               "objective": objective_sum / max(objective_n, 1), **task.evaluate(self.model)}
        now = time.perf_counter()
        state.epoch, state.example_grads = period + 1, ctx.example_grads
        state.wall_s = self._elapsed()
        row.update({"example_grads": ctx.example_grads, "epoch_s": now - t_period, "train_s": train_s,
                    "wall_s": state.wall_s, "logs": {k: v / steps for k, v in log_sums.items()},
                    "method": method.epoch_metrics(self.model)})
        self.emit("on_evaluate", state, row)
        state.history.append(row)
        self.emit("on_period_end", state, row)
        self._save(state)
        return row
