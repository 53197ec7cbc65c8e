"""dipnet: Distributional Input Projection Networks, the methods they compete with, and the
instruments that show why a network generalizes."""
from __future__ import annotations

__version__ = "0.1.0"

from .data import Dataset, DatasetInfo, list_datasets, load_dataset
from .engine import Component, Method, StepContext, build_method, method_names, register_component
from .errors import ConfigError, DataError, DipnetError, NonFiniteLossError
from .models import build_model, list_models

__all__ = [
    "__version__",
    "Component",
    "ConfigError",
    "DataError",
    "Dataset",
    "DatasetInfo",
    "DipnetError",
    "Method",
    "NonFiniteLossError",
    "StepContext",
    "build_method",
    "build_model",
    "list_datasets",
    "list_models",
    "load_dataset",
    "method_names",
    "register_component",
]
