"""dipnet: Distributional Input Projection Networks, the methods they compete with, and the
instruments that show why a network generalizes.

The DIPNet API lives at the top level (``dipnet.project``, ``dipnet.DIPNetLoss``, ...); the
rest is in subpackages: ``dipnet.data``, ``dipnet.models``, ``dipnet.engine``,
``dipnet.methods``, ``dipnet.measure``, ``dipnet.robust``, ``dipnet.experiments``.
"""
from __future__ import annotations

__version__ = "0.1.0"

from . import data, engine, models
from .data import Dataset, DatasetInfo, list_datasets, load_dataset
from .engine import (
    Component,
    Method,
    StepContext,
    TrainConfig,
    build_method,
    load_run,
    method_names,
    register_component,
    train,
)
from .errors import ConfigError, DataError, DipnetError, NonFiniteLossError
from .models import build_model, list_models
from .projection import (
    DIPNetLoss,
    GaussianProjection,
    gaussian_projection,
    is_projected,
    predict,
    project,
    projections,
    sigma_summary,
    strip,
)

__all__ = [
    "__version__",
    "Component",
    "ConfigError",
    "DIPNetLoss",
    "DataError",
    "Dataset",
    "DatasetInfo",
    "DipnetError",
    "GaussianProjection",
    "Method",
    "NonFiniteLossError",
    "StepContext",
    "TrainConfig",
    "build_method",
    "build_model",
    "data",
    "engine",
    "gaussian_projection",
    "is_projected",
    "list_datasets",
    "list_models",
    "load_dataset",
    "load_run",
    "method_names",
    "models",
    "predict",
    "project",
    "projections",
    "register_component",
    "sigma_summary",
    "strip",
    "train",
]
