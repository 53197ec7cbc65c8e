"""The training engine: method interface, loop, checkpoints and run directories."""
from .method import (
    Component,
    Method,
    StepContext,
    build_method,
    component_class,
    cross_entropy_loss,
    method_fields,
    method_names,
    plain_update,
    register_component,
)
from .run import LoadedRun, load_run, read_record
from .schedule import lr_at
from .trainer import RunResult, TrainConfig, evaluate, train

__all__ = [
    "Component",
    "LoadedRun",
    "Method",
    "RunResult",
    "StepContext",
    "TrainConfig",
    "build_method",
    "component_class",
    "cross_entropy_loss",
    "evaluate",
    "load_run",
    "lr_at",
    "method_fields",
    "method_names",
    "plain_update",
    "read_record",
    "register_component",
    "train",
]
