"""The training loop: (dataset, model, method, optimizer, schedule) -> a run directory.

The loop knows nothing about particular methods: a :class:`~dipnet.engine.method.Method` may
change the model, the batch, the loss and the update, and counts the example-gradients it
spends. Everything that makes a run reproducible and resumable lives here: seeded shuffling per
epoch, learning rates as a pure function of the step, a checkpoint after every epoch with the
optimizer and RNG states, and a run record with config, seed, versions and hardware.

Run directory layout::

    run.json                  status, config, run info, history, final metrics (JSON)
    checkpoint.safetensors    latest end-of-epoch state (weights + optimizer + RNG), for resuming
    model.safetensors         final weights (plain safetensors)
"""
from __future__ import annotations

import dataclasses
import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data import Dataset, DatasetInfo, load_dataset
from ..errors import ConfigError, NonFiniteLossError
from ..models import build_model
from .checkpoint import atomic_write_json, load_checkpoint, save_checkpoint, save_weights
from .method import Method, StepContext, build_method
from .progress import Progress
from .runinfo import run_info
from .schedule import SCHEDULES, lr_at

OPTIMIZERS = ("sgd", "adamw", "adam")
PROGRESS_MODES = ("auto", "rich", "plain", "none")
# Fields that do not change the numbers a run produces: a resume may differ in these.
_NON_IDENTITY = ("out", "progress")


@dataclass
class TrainConfig:
    """Everything that defines a training run (``method_params`` go to the method's components)."""

    data: str = "mnist1d"
    model: str = "mlp"
    method: str = "erm"
    epochs: int = 10
    batch_size: int = 128
    seed: int = 0
    optimizer: str = "adamw"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "cosine"
    warmup_epochs: float = 0.0
    milestones: tuple[float, ...] = (0.5, 0.75)
    gamma: float = 0.1
    grad_clip: float | None = None
    out: str | None = None
    data_kwargs: dict[str, Any] = field(default_factory=dict)
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    method_params: dict[str, Any] = field(default_factory=dict)
    eval_batch_size: int = 1000
    train_eval_max: int = 10000
    device: str = "cpu"
    progress: str = "auto"

    def validate(self) -> "TrainConfig":
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ConfigError(msg)

        need(isinstance(self.epochs, int) and self.epochs >= 1, f"epochs must be an integer >= 1, not {self.epochs!r}")
        need(isinstance(self.batch_size, int) and self.batch_size >= 1, f"batch_size must be an integer >= 1, not {self.batch_size!r}")
        need(isinstance(self.seed, int) and self.seed >= 0, f"seed must be an integer >= 0, not {self.seed!r}")
        need(self.optimizer in OPTIMIZERS, f"unknown optimizer {self.optimizer!r}; choose one of: {', '.join(OPTIMIZERS)}")
        need(self.schedule in SCHEDULES, f"unknown schedule {self.schedule!r}; choose one of: {', '.join(SCHEDULES)}")
        need(self.progress in PROGRESS_MODES, f"unknown progress mode {self.progress!r}; choose one of: {', '.join(PROGRESS_MODES)}")
        for name in ("lr",):
            v = getattr(self, name)
            need(isinstance(v, (int, float)) and math.isfinite(v) and v > 0, f"{name} must be a positive number, not {v!r}")
        for name in ("weight_decay", "momentum", "warmup_epochs"):
            v = getattr(self, name)
            need(isinstance(v, (int, float)) and math.isfinite(v) and v >= 0, f"{name} must be a number >= 0, not {v!r}")
        need(self.warmup_epochs < self.epochs, f"warmup_epochs ({self.warmup_epochs}) must be shorter than epochs ({self.epochs})")
        need(self.grad_clip is None or self.grad_clip > 0, f"grad_clip must be positive or None, not {self.grad_clip!r}")
        need(all(0 < m <= 1 for m in self.milestones), f"milestones are fractions of training in (0, 1], not {self.milestones!r}")
        need(self.eval_batch_size >= 1 and self.train_eval_max >= 1, "eval_batch_size and train_eval_max must be >= 1")
        for name in ("data_kwargs", "model_kwargs", "method_params"):
            need(isinstance(getattr(self, name), dict), f"{name} must be a dict")
        return self

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["milestones"] = list(self.milestones)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown training option(s) {', '.join(unknown)}; allowed: {', '.join(sorted(known))}")
        d = dict(d)
        if "milestones" in d:
            d["milestones"] = tuple(d["milestones"])
        return cls(**d)

    def identity(self) -> dict[str, Any]:
        d = self.to_dict()
        for k in _NON_IDENTITY:
            d.pop(k, None)
        return json.loads(json.dumps(d))


@dataclass
class RunResult:
    run_dir: Path | None
    config: TrainConfig
    history: list[dict[str, Any]]
    final: dict[str, Any]
    model: nn.Module
    method: Method
    dataset: Dataset


class _NonFinite(Exception):
    def __init__(self, value: float) -> None:
        self.value = value


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device cuda requested but no CUDA GPU is available; use --device cpu")
    return device


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


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on weight matrices and kernels only, not on biases, norms or 1-D scales (one
    group when there is no weight decay: each group costs the optimizer its own kernels per step)."""
    if weight_decay == 0:
        trainable = [p for p in model.parameters() if p.requires_grad]
        return [{"params": trainable, "weight_decay": 0.0}] if trainable else []
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    rest = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(cfg: TrainConfig, model: nn.Module, method: Method) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay)
    if not groups:
        raise ConfigError("the model has no trainable parameters")
    if cfg.optimizer == "sgd":
        return method.build_optimizer(groups, torch.optim.SGD, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    base = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return method.build_optimizer(groups, base, lr=cfg.lr, weight_decay=cfg.weight_decay)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % 2**63)
    return torch.randperm(n, generator=gen)


ModelArg = Union[nn.Module, Callable[[DatasetInfo], nn.Module], None]


def prepare(cfg: TrainConfig, dataset: Dataset | None = None, model: ModelArg = None) -> tuple[Dataset, nn.Module, Method]:
    """Dataset, seeded model (with the method's model transform applied) and method of a config.

    ``model`` may be a ready module or a factory ``info -> module``, called after seeding so that
    its initialization is reproducible.
    """
    cfg.validate()
    method = build_method(cfg.method, cfg.method_params)
    if dataset is None:
        dataset = load_dataset(cfg.data, **cfg.data_kwargs)
    seed_everything(cfg.seed)
    if model is None:
        model = build_model(cfg.model, dataset.info, **cfg.model_kwargs)
    elif not isinstance(model, nn.Module):
        model = model(dataset.info)
    model = method.transform_model(model)
    return dataset, model, method


def train(
    cfg: TrainConfig,
    *,
    dataset: Dataset | None = None,
    model: ModelArg = None,
    callbacks: Sequence[Callable[[dict[str, Any]], None]] = (),
) -> RunResult:
    """Train as ``cfg`` says; with ``cfg.out`` set, checkpoint every epoch and resume from it.

    ``dataset`` and ``model`` (a module, or a factory ``info -> module`` called after seeding)
    override the registry lookups, for a user's own data or network.
    Raises :class:`~dipnet.errors.NonFiniteLossError` naming the step of a NaN/inf loss.
    """
    cfg.validate()
    device = resolve_device(cfg.device)
    dataset, model, method = prepare(cfg, dataset, model)
    model.to(device)
    optimizer = build_optimizer(cfg, model, method)
    run_dir = Path(cfg.out) if cfg.out else None
    ckpt_path = run_dir / "checkpoint.safetensors" if run_dir else None
    info = run_info(device)

    x_train, y_train = dataset.x_train.to(device), dataset.y_train.to(device)
    x_test, y_test = dataset.x_test.to(device), dataset.y_test.to(device)
    n = x_train.shape[0]
    if n == 0:
        raise ConfigError(f"dataset {dataset.info.name!r} has no training examples")
    n_eval = min(n, cfg.train_eval_max)
    eval_idx = _epoch_permutation(n, cfg.seed, -1)[:n_eval].sort().values.to(device)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total_steps = cfg.epochs * steps_per_epoch
    warmup_steps = round(cfg.warmup_epochs * steps_per_epoch)

    ctx = StepContext(epochs=cfg.epochs, bounds=dataset.info.bounds)
    history: list[dict[str, Any]] = []
    start_epoch, step, wall_before = 0, 0, 0.0
    status = "running"

    if ckpt_path is not None and ckpt_path.exists():
        model_state, state = load_checkpoint(ckpt_path)
        saved = state["config"]
        if saved != cfg.identity():
            diff = sorted(k for k in set(saved) | set(cfg.identity()) if saved.get(k) != cfg.identity().get(k))
            raise ConfigError(
                f"{run_dir} holds a run with a different config (differs in: {', '.join(diff)}); "
                "choose another --out directory or delete that one"
            )
        model.load_state_dict(model_state)
        optimizer.load_state_dict(state["optimizer"])
        _set_rng_state(state["rng"])
        start_epoch, step = state["epoch"], state["step"]
        history, ctx.example_grads, wall_before = state["history"], state["example_grads"], state["wall_s"]
        info["resumed_from_epoch"] = start_epoch

    def record(status: str, final: dict[str, Any] | None = None, error: str | None = None) -> None:
        if run_dir is None:
            return
        atomic_write_json(
            run_dir / "run.json",
            {
                "status": status,
                "config": cfg.to_dict(),
                "method": {"name": method.name, "hyperparameters": method.hyperparameters()},
                "dataset": dataset.info.to_dict(),
                "run_info": info,
                "history": history,
                "final": final,
                "error": error,
            },
        )

    progress = Progress(cfg.progress, label=f"{method.name} {cfg.model}")
    params = [p for p in model.parameters() if p.requires_grad]
    t_run = time.perf_counter()
    record(status)
    try:
        for epoch in range(start_epoch, cfg.epochs):
            t_epoch = time.perf_counter()
            method.on_epoch_start(model, optimizer, epoch, cfg.epochs)
            model.train()
            perm = _epoch_permutation(n, cfg.seed, epoch).to(device)
            progress.start_epoch(epoch, cfg.epochs, steps_per_epoch)
            objective_sum, objective_n, log_sums = 0.0, 0, {}
            for i in range(steps_per_epoch):
                idx = perm[i * cfg.batch_size : (i + 1) * cfg.batch_size]
                lr = lr_at(step, total_steps, cfg.lr, cfg.schedule, warmup_steps, cfg.milestones, cfg.gamma)
                if lr != ctx.lr:
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                ctx.epoch, ctx.step, ctx.progress, ctx.lr = epoch, step, step / total_steps, lr
                ctx.batch_size = int(idx.shape[0])
                x, y = method.transform_batch(model, x_train[idx], y_train[idx], ctx)
                first: list[float] = []

                def closure() -> torch.Tensor:
                    loss = method.loss(model, x, y, ctx)
                    value = loss.item()
                    if not math.isfinite(value):
                        raise _NonFinite(value)
                    loss.backward()
                    if cfg.grad_clip is not None:
                        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                    first.append(value)
                    return loss.detach()

                try:
                    method.update(model, optimizer, closure, ctx)
                except _NonFinite as bad:
                    raise NonFiniteLossError(step, epoch, bad.value, str(ckpt_path) if ckpt_path and ckpt_path.exists() else None) from None
                if not first:
                    raise RuntimeError(f"method {method.name!r} did not evaluate the loss in its update at step {step}")
                value = first[0]
                objective_sum += value * ctx.batch_size
                objective_n += ctx.batch_size
                if ctx.logs:
                    for k, v in ctx.logs.items():
                        log_sums[k] = log_sums.get(k, 0.0) + v
                    ctx.logs.clear()
                step += 1
                progress.advance(value)

            train_s = time.perf_counter() - t_epoch
            tr = evaluate(model, x_train[eval_idx], y_train[eval_idx], cfg.eval_batch_size)
            te = evaluate(model, x_test, y_test, cfg.eval_batch_size)
            now = time.perf_counter()
            row = {
                "epoch": epoch,
                "step": step,
                "lr": lr,
                "objective": objective_sum / max(objective_n, 1),
                "train_loss": tr["loss"],
                "train_acc": tr["acc"],
                "test_loss": te["loss"],
                "test_acc": te["acc"],
                "gap": tr["acc"] - te["acc"],
                "example_grads": ctx.example_grads,
                "epoch_s": now - t_epoch,
                "train_s": train_s,
                "wall_s": wall_before + now - t_run,
                "logs": {k: v / steps_per_epoch for k, v in log_sums.items()},
                "method": method.epoch_metrics(model),
            }
            history.append(row)
            progress.end_epoch(row, cfg.epochs)
            for cb in callbacks:
                cb(row)
            if ckpt_path is not None:
                save_checkpoint(
                    ckpt_path,
                    model.state_dict(),
                    {
                        "config": cfg.identity(),
                        "epoch": epoch + 1,
                        "step": step,
                        "history": history,
                        "example_grads": ctx.example_grads,
                        "wall_s": row["wall_s"],
                        "optimizer": optimizer.state_dict(),
                        "rng": _rng_state(),
                    },
                )
                record(status)
    except NonFiniteLossError as exc:
        record("failed", error=str(exc))
        raise
    except BaseException as exc:
        record("failed" if not isinstance(exc, KeyboardInterrupt) else "interrupted", error=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        progress.close()

    model.eval()
    last = history[-1] if history else {}
    final = {
        "test_acc": last.get("test_acc"),
        "test_loss": last.get("test_loss"),
        "train_acc": last.get("train_acc"),
        "train_loss": last.get("train_loss"),
        "gap": last.get("gap"),
        "example_grads": ctx.example_grads,
        "wall_s": last.get("wall_s"),
        "epochs": len(history),
    }
    if run_dir is not None:
        save_weights(run_dir / "model.safetensors", model.state_dict(), {"format": "dipnet-weights-1", "method": method.name})
        record("done", final)
    return RunResult(run_dir, cfg, history, final, model, method, dataset)
