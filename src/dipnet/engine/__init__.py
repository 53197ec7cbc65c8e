"""The training engine: configuration, setup, the loop, run directories and checkpoints."""
from .config import OPTIMIZERS, PROGRESS_MODES, SCHEDULES, RunConfig, TrainConfig
from .loop import RunResult, Trainer, evaluate, train
from .run import LoadedRun, load_run, read_record
from .rundir import RunDirectory, TrainState
from .schedule import lr_at
from .setup import build_optimizer, param_groups, prepare, resolve_device, seed_everything

__all__ = [
    "LoadedRun",
    "OPTIMIZERS",
    "PROGRESS_MODES",
    "RunDirectory",
    "RunConfig",
    "RunResult",
    "SCHEDULES",
    "TrainConfig",
    "TrainState",
    "Trainer",
    "build_optimizer",
    "evaluate",
    "load_run",
    "lr_at",
    "param_groups",
    "prepare",
    "read_record",
    "resolve_device",
    "seed_everything",
    "train",
]
