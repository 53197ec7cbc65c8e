"""dipnet: Distributional Input Projection Networks, the methods they compete with, and the
instruments that show why a network generalizes.

The DIPNet API lives at the top level (``dipnet.project``, ``dipnet.DIPNetLoss``, ...); the
rest is in subpackages, layered (docs/architecture.md): ``dipnet.data``, ``dipnet.models``,
``dipnet.projection``, ``dipnet.measure``, ``dipnet.robust``, ``dipnet.methods``,
``dipnet.engine``, ``dipnet.experiments``, ``dipnet.llm`` (LLM fine-tuning; its dependencies
are the ``[llm]`` extra, imported on use), ``dipnet.integrations.hf`` (imported on its own) and
the ``dipnet`` command line.
"""
from __future__ import annotations

from ._version import __version__

from . import data, engine, experiments, llm, measure, methods, models, projection, robust
from .compiling import compile_model
from .data import DATASETS, Dataset, DatasetInfo, load_dataset
from .engine import TrainConfig, load_run, train
from .errors import ConfigError, DataError, DipnetError, NonFiniteLossError
from .experiments import load_suite, run_suite, write_report
from .measure import (
    input_curvature,
    jacobian_norm,
    lipschitz_bounds,
    loss_landscape,
    measure_model,
    region_transitions,
    sharpness,
    smoothed,
)
from .methods import ICP, METHODS, RWP, SAM, Component, Method, StepContext, build_method, register_component
from .models import MODELS, build_model
from .projection import (
    DIPNetLoss,
    GaussianProjection,
    gaussian_projection,
    is_projected,
    noise_layers,
    predict,
    project,
    projections,
    sampling,
    sigma_stats,
    strip,
)
from .robust import FGSM, PGD, corrupt, evaluate_robustness

__all__ = [
    "compile_model",
    "__version__",
    "Component",
    "ConfigError",
    "DATASETS",
    "DIPNetLoss",
    "DataError",
    "Dataset",
    "DatasetInfo",
    "DipnetError",
    "FGSM",
    "GaussianProjection",
    "ICP",
    "METHODS",
    "MODELS",
    "Method",
    "NonFiniteLossError",
    "PGD",
    "RWP",
    "SAM",
    "StepContext",
    "TrainConfig",
    "build_method",
    "build_model",
    "corrupt",
    "data",
    "engine",
    "evaluate_robustness",
    "experiments",
    "gaussian_projection",
    "input_curvature",
    "is_projected",
    "jacobian_norm",
    "lipschitz_bounds",
    "llm",
    "load_dataset",
    "load_run",
    "load_suite",
    "loss_landscape",
    "measure",
    "measure_model",
    "methods",
    "models",
    "noise_layers",
    "predict",
    "project",
    "projection",
    "projections",
    "region_transitions",
    "register_component",
    "robust",
    "run_suite",
    "sampling",
    "sharpness",
    "sigma_stats",
    "smoothed",
    "strip",
    "train",
    "write_report",
]
