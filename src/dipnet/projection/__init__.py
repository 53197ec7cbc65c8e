"""DIPNet: a learnable Gaussian in front of every layer, trained on samples, deterministic at eval.

Three lines in a user's loop::

    dipnet.project(model, sigma=0.1)                       # before building the optimizer
    dip_loss = dipnet.DIPNetLoss(trajectories=4)
    loss = dip_loss(model, x, y); loss.backward()

``layer``: the layer and its pure function; ``insert``: :func:`project` / :func:`strip`;
``loss``: the objective and :func:`predict`; ``noise``: the noise-layer protocol; ``_fast``:
the private speed path behind them.
"""
from ._fast import AUTO_INPUT_GRAD_FRACTION
from .insert import (DEFAULT_TARGETS, PlacementConfig, is_projected, project, projection_parameters, projections,
                     sigma_summary, strip)
from .layer import GaussianProjection, ProjectionConfig, gaussian_projection
from .loss import DEFAULT_PRIOR, DIPNetLoss, LossConfig, predict
from .noise import is_noise_layer, noise_layers, sampling

__all__ = [
    "AUTO_INPUT_GRAD_FRACTION",
    "DEFAULT_PRIOR",
    "DEFAULT_TARGETS",
    "DIPNetLoss",
    "GaussianProjection",
    "LossConfig",
    "PlacementConfig",
    "ProjectionConfig",
    "gaussian_projection",
    "is_noise_layer",
    "is_projected",
    "noise_layers",
    "predict",
    "project",
    "projection_parameters",
    "projections",
    "sampling",
    "sigma_summary",
    "strip",
]
