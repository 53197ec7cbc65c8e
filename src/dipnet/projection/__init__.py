"""DIPNet: a learnable Gaussian in front of every layer, trained on samples, deterministic at eval.

Three lines in a user's loop::

    dipnet.project(model, sigma=0.1)                       # before building the optimizer
    dip_loss = dipnet.DIPNetLoss(trajectories=4)
    loss = dip_loss(model, x, y); loss.backward()

``layer``: the layer and its pure function; ``insert``: :func:`project` / :func:`strip`;
``loss``: the objective and :func:`predict`; ``noise``: the noise-layer protocol; ``hf``: the
placements in Hugging Face language models and their defaults; ``_fast``: the private speed
path behind them.
"""
from ._fast import AUTO_INPUT_GRAD_FRACTION
from .hf import LLM_PRIOR, LLM_SIGMA, causal_lm_loss, decoder_sublayers, is_lora_layer, lora_layers
from .insert import (DEFAULT_TARGETS, PlacementConfig, is_projected, project, projection_parameters, projections,
                     sigma_stats, strip)
from .layer import GaussianProjection, ProjectionConfig, gaussian_projection
from .loss import DEFAULT_PRIOR, DIPNetLoss, LossConfig, call_model, logits_of, predict, repeat_batch
from .noise import is_noise_layer, noise_layers, sampling

__all__ = [
    "AUTO_INPUT_GRAD_FRACTION",
    "DEFAULT_PRIOR",
    "DEFAULT_TARGETS",
    "DIPNetLoss",
    "GaussianProjection",
    "LLM_PRIOR",
    "LLM_SIGMA",
    "LossConfig",
    "PlacementConfig",
    "ProjectionConfig",
    "call_model",
    "causal_lm_loss",
    "decoder_sublayers",
    "gaussian_projection",
    "is_lora_layer",
    "is_noise_layer",
    "is_projected",
    "logits_of",
    "lora_layers",
    "noise_layers",
    "predict",
    "project",
    "projection_parameters",
    "projections",
    "repeat_batch",
    "sampling",
    "sigma_stats",
    "strip",
]
