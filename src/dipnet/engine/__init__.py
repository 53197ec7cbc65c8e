"""The training engine: configuration, setup, the loop, run directories and checkpoints."""
from .config import OPTIMIZERS, PROGRESS_MODES, SCHEDULES, RunConfig, TrainConfig
from .core import Callback, Control, Loop
from .logs import MLflowLog, TensorBoardLog
from .loop import RunResult, Trainer, train
from .run import LoadedRun, load_run
from .rundir import read_record
from .rundir import RunDirectory, TrainState
from .schedule import lr_at
from .setup import build_optimizer, prepare, resolve_device, seed_everything
from .task import ClassificationTask, Task, evaluate

__all__ = [
    "Callback",
    "ClassificationTask",
    "Control",
    "Loop",
    "Task",
    "LoadedRun",
    "MLflowLog",
    "OPTIMIZERS",
    "PROGRESS_MODES",
    "RunDirectory",
    "RunConfig",
    "RunResult",
    "SCHEDULES",
    "TensorBoardLog",
    "TrainConfig",
    "TrainState",
    "Trainer",
    "build_optimizer",
    "evaluate",
    "load_run",
    "lr_at",
    "prepare",
    "read_record",
    "resolve_device",
    "seed_everything",
    "train",
]
