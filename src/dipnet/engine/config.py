"""What defines a training run: :class:`TrainConfig`, its fields' limits stated once (:mod:`dipnet.schema`)."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Mapping, TypeVar, get_args

from ..errors import ConfigError
from ..schema import Validated, check_type, param

Optimizer = Literal["sgd", "adamw", "adam"]
Schedule = Literal["constant", "cosine", "step"]
ProgressMode = Literal["auto", "rich", "plain", "none"]
LogKind = Literal["tensorboard", "mlflow"]  # run logs (dipnet.engine.logs)
OPTIMIZERS: tuple[str, ...] = get_args(Optimizer)
SCHEDULES: tuple[str, ...] = get_args(Schedule)
PROGRESS_MODES: tuple[str, ...] = get_args(ProgressMode)
LOG_KINDS: tuple[str, ...] = get_args(LogKind)
LOG_TO_DOC = "run logs: tensorboard (<out>/tensorboard), mlflow (<out>/mlflow.db)"
FLOAT32_MAX = 3.4028234663852886e38  # optimizers turn the learning rate into a float32 scalar
# Fields that do not change the numbers a run produces: a resume may differ in these.
NON_IDENTITY = ("out", "progress", "threads", "log_to")


class RunConfig(Validated):
    """What a run's config offers a :class:`~dipnet.engine.RunDirectory`: revalidation, JSON
    round trips, and its identity (the fields a resume must match: all but ``non_identity``)."""

    non_identity: ClassVar[tuple[str, ...]] = NON_IDENTITY
    what: ClassVar[str] = "training"

    def validate(self: C) -> C:
        """Check the fields again (after changing one in place); returns ``self``."""
        self.__post_init__()
        return self

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls: type[C], d: dict[str, Any]) -> C:
        check_type(d, Mapping, f"{cls.__name__}.from_dict's argument", "pass a dict of its fields")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown {cls.what} option(s) {', '.join(unknown)}; allowed: {', '.join(sorted(known))}")
        return cls(**d)

    def identity(self) -> dict[str, Any]:
        """The fields that determine the run's numbers (JSON-normalized): what a resume must match."""
        d = self.to_dict()
        for k in self.non_identity:
            d.pop(k, None)
        return json.loads(json.dumps(d))


C = TypeVar("C", bound=RunConfig)


@dataclass
class TrainConfig(RunConfig):
    """Everything that defines a training run (``method_params`` go to the method's components)."""

    data: str = param("mnist1d", doc="dataset name (see `dipnet datasets`)")
    model: str = param("mlp", doc="model name (see `dipnet models`)")
    method: str = param("erm", doc="method spec, e.g. erm, dipnet, sam, dipnet+mrwp (see `dipnet methods`)")
    epochs: int = param(10, ge=1, le=100_000, doc="passes over the training set")
    batch_size: int = param(128, ge=1, doc="examples per step")
    seed: int = param(0, ge=0, le=2**63 - 1, doc="seeds initialization, data order and noise")
    optimizer: Optimizer = param("adamw", doc="base optimizer")
    lr: float = param(1e-3, gt=0, lt=FLOAT32_MAX, doc="peak learning rate")
    momentum: float = param(0.9, ge=0, doc="SGD momentum")
    weight_decay: float = param(0.0, ge=0, doc="decoupled (AdamW) or L2 (SGD) weight decay on weight matrices")
    schedule: Schedule = param("cosine", doc="learning-rate schedule after warm-up")
    warmup_epochs: float = param(0.0, ge=0, doc="linear warm-up length, in epochs")
    milestones: tuple[float, ...] = param((0.5, 0.75), gt=0, le=1, doc="step schedule: fractions of training")
    gamma: float = param(0.1, gt=0, doc="step schedule: factor at each milestone")
    grad_clip: float | None = param(None, gt=0, doc="clip the global gradient norm to this value")
    out: str | None = param(None, doc="run directory (checkpoints, record, weights)")
    data_kwargs: dict[str, Any] = param(default_factory=dict, doc="dataset options")
    model_kwargs: dict[str, Any] = param(default_factory=dict, doc="model options")
    method_params: dict[str, Any] = param(default_factory=dict, doc="method hyperparameters")
    eval_batch_size: int = param(1000, ge=1, doc="batch size of evaluation")
    train_eval_max: int = param(10000, ge=1, doc="training examples evaluated each epoch")
    device: str = param("cpu", doc="cpu, cuda, cuda:N or auto")
    compile: bool = param(False, doc="train through torch.compile (inductor); the first step compiles (compile_s)")
    progress: ProgressMode = param("auto", doc="progress display")
    threads: int | None = param(None, ge=1, doc="torch threads while training (none: the idle physical cores, "
                                "shared among the run's processes; engine/threads.py)")
    log_to: tuple[LogKind, ...] = param((), doc=LOG_TO_DOC)

    def _check(self) -> None:
        if self.warmup_epochs >= self.epochs:
            raise ConfigError(f"warmup_epochs ({self.warmup_epochs}) must be shorter than epochs ({self.epochs})")

