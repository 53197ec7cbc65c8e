"""A classification run on the one loop (:mod:`dipnet.engine.core`): (dataset, model, method,
optimizer, schedule) -> a finished run, and :func:`fit_run`, which every task's run goes through.

Reproducible and resumable: seeded shuffling per epoch, learning rates as a pure function of
the step, and a :class:`~dipnet.engine.rundir.RunDirectory` that checkpoints every epoch with
the optimizer and generator states and records config, seed, versions and hardware.
Under torchrun the same loop trains data-parallel (:mod:`dipnet.engine.distributed`, the
hooks marked "distributed").
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from torch import nn

from ..data import Dataset
from ..errors import ConfigError
from ..methods import Method
from ..schema import check_type
from .config import TrainConfig
from .core import Callback, Loop, ProgressDisplay
from .distributed import Distributed
from .distributed import setup as setup_distributed
from .logs import run_logs
from .progress import Progress
from .rundir import RunDirectory, TrainState, dataset_fingerprint
from .runinfo import run_info
from .schedule import lr_at
from .setup import ModelArg, build_optimizer, prepare, resolve_device
from .task import ClassificationTask
from .threads import using as using_threads

EpochCallback = Callable[[dict[str, Any]], None]


@dataclass
class RunResult:
    """A finished run: its directory, config, history (a row per period), final metrics, the
    trained model (in eval mode), the method, and the task's data (a :class:`Dataset` for
    classification; the tokenizer rides along for fine-tuning)."""

    run_dir: Path | None
    config: Any
    history: list[dict[str, Any]]
    final: dict[str, Any]
    model: nn.Module
    method: Method
    dataset: Any = None
    tokenizer: Any = None


class _EpochCallbacks(Callback):
    """Plain functions called with each period's row (``train(..., callbacks=[fn])``)."""

    def __init__(self, fns: Sequence[EpochCallback]) -> None:
        self.fns = list(fns)

    def on_period_end(self, loop: Loop, state: TrainState, row: dict[str, Any]) -> None:
        for fn in self.fns:
            fn(row)


def as_callbacks(callbacks: Sequence[Callback | EpochCallback]) -> list[Callback]:
    """Event handlers as given, plain functions of a row wrapped as ``on_period_end`` handlers."""
    events = [cb for cb in callbacks if isinstance(cb, Callback)]
    plain = [cb for cb in callbacks if not isinstance(cb, Callback)]
    for cb in plain:
        if not callable(cb):
            raise ConfigError(f"callbacks must be dipnet.engine.Callback objects or functions of a row, not {cb!r}")
    return events + ([_EpochCallbacks(plain)] if plain else [])


def fit_run(loop: Loop, run: RunDirectory, *, label: str, progress_mode: str, overwrite: bool,
            finish: Callable[[TrainState], dict[str, Any]],
            dist: Distributed | None = None) -> tuple[TrainState, dict[str, Any]]:
    """Lock and check the run directory, resume, train with the loop's events and a progress
    display, record every change of status, then ``finish(state)`` -> the final metrics; returns
    the state and those metrics. The model is left as it predicts (the method's
    :meth:`~dipnet.methods.Method.on_train_end`)."""
    writer = dist.is_writer if dist is not None else True
    if writer:  # distributed: rank 0 alone checks, locks and clears the directory
        run.check_target(overwrite)
    with run.locked():
        if overwrite and run.path is not None and writer:
            run.clear()
        if dist is not None:
            dist.barrier()  # distributed: the others read the checkpoint after that
        state = run.resume(loop.state_module, loop.optimizer)
        if state is None:
            state = TrainState()
        else:
            run.header["run_info"]["resumed_from_epoch"] = state.epoch
        progress = Progress(progress_mode if writer else "none", label=label)
        loop.callbacks.append(ProgressDisplay(progress))
        run.record("running", state)
        try:
            try:
                with run.recording(state):
                    loop.fit(state)
            finally:
                progress.close()
            for line in loop.method.on_train_end(loop.model):
                progress.message(line)
            loop.model.eval()
            final = finish(state)
            run.record("stopped" if loop.control.should_stop else "done", state, final)
            loop.emit("on_fit_end", state, final)
        except BaseException as exc:
            loop.emit("on_exception", state, exc)
            raise
        return state, final


class Trainer:
    """One run, built and validated on construction (dataset, seeded model, method, optimizer,
    run directory), trained by :meth:`fit`: a caller can check everything before committing to it."""

    def __init__(self, cfg: TrainConfig, *, dataset: Dataset | None = None, model: ModelArg = None,
                 callbacks: Sequence[Callback | EpochCallback] = ()) -> None:
        check_type(cfg, TrainConfig, "the training config", "build one with TrainConfig(...) or TrainConfig.from_dict(d)").validate()
        self.cfg = cfg
        device = resolve_device(cfg.device)
        self.dist = setup_distributed(device)  # distributed: a world of 1 without torchrun
        self.device = device = self.dist.place(device)
        self.dataset, model, self.method = prepare(cfg, dataset, model)
        self.method.check_inputs("features")
        self.model = model.to(device)
        self.optimizer = build_optimizer(cfg, self.model, self.method)
        self.method.check_world(self.dist.world_size)  # distributed: parallel m-RWP needs an even world
        self.method.check_epochs(cfg.epochs)
        self.train_model = self.dist.wrap(self.model, device)  # distributed: DDP, or the model itself
        self.task = ClassificationTask(self.dataset, device, epochs=cfg.epochs, batch_size=cfg.batch_size,
                                       seed=cfg.seed, eval_batch_size=cfg.eval_batch_size,
                                       train_eval_max=cfg.train_eval_max, dist=self.dist)
        total, warmup = self.task.total_steps, round(cfg.warmup_epochs * self.task.period_steps)
        self.run = RunDirectory(cfg.out, cfg)
        self.run.writer, self.run.world_size = self.dist.is_writer, self.dist.world_size  # distributed
        self.loop = Loop(self.task, self.model, self.method, self.optimizer, self.run, dist=self.dist,
                         lr_at=lambda step: lr_at(step, total, cfg.lr, cfg.schedule, warmup, cfg.milestones, cfg.gamma),
                         train_model=self.train_model, grad_clip=cfg.grad_clip, seed=cfg.seed,
                         callbacks=[*as_callbacks(callbacks), *run_logs(cfg.log_to, cfg.out)], compile=cfg.compile)

    def fit(self, overwrite: bool = False) -> RunResult:
        """Train (resuming from the run directory's checkpoint if it holds one) and return the result.

        The run directory is locked while training; ``overwrite`` first deletes the files of a
        previous run there (and only those). Raises :class:`~dipnet.errors.DivergenceError`
        (:class:`~dipnet.errors.NonFiniteLossError` for NaN/inf) naming the step where the
        loss diverged (rule: ``DIVERGENCE_FACTOR``)."""
        with using_threads(self.cfg.threads, where="TrainConfig.threads"):
            return self._fit(overwrite)

    def _fit(self, overwrite: bool) -> RunResult:
        cfg, run, method = self.cfg, self.run, self.method
        if run.path is not None:
            run.fingerprint = dataset_fingerprint(self.dataset)
        run.header = {"method": {"name": method.name, "hyperparameters": method.hyperparameters()},
                      **self.task.header(), "run_info": run_info(self.device)}
        run.header["run_info"]["world_size"] = self.dist.world_size  # distributed

        def finish(state: TrainState) -> dict[str, Any]:
            run.save_final(self.model, method.name)
            return {**_final(state.history, state.example_grads), **self.loop.compile_record()}

        try:
            state, final = fit_run(self.loop, run, label=f"{method.name} {cfg.model}", progress_mode=cfg.progress,
                            overwrite=overwrite, finish=finish, dist=self.dist)
        finally:
            self.train_model = self.dist.close(self.train_model)  # distributed: leave the group this trainer joined
        return RunResult(run.path, cfg, state.history, final, self.model, method, self.dataset)


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
    callbacks: Sequence[Callback | EpochCallback] = (),
) -> RunResult:
    """Train as ``cfg`` says; with ``cfg.out`` set, checkpoint every epoch and resume from it.

    ``dataset`` and ``model`` (a module, or a factory ``info -> module`` called after seeding)
    override the registry lookups, for a user's own data or network. ``callbacks``: the loop's
    event handlers (:class:`~dipnet.engine.core.Callback`), or functions called with each epoch's
    record. Raises :class:`~dipnet.errors.DivergenceError` naming the step where the loss
    diverged (a NaN/inf loss: :class:`~dipnet.errors.NonFiniteLossError`). Torch trains on
    ``cfg.threads`` threads (the threads policy, :mod:`dipnet.engine.threads`) and is left with
    the threads it had.
    """
    return Trainer(cfg, dataset=dataset, model=model, callbacks=callbacks).fit()
