"""Instruments that show why a network generalizes: input-output Jacobian norms and linear-region
transitions (Novak et al. 2018), Lipschitz bounds, input curvature, weight-space sharpness and
loss landscapes (Li et al. 2018); each also on a DIPNet's smoothed net via :func:`smoothed`."""
from .curvature import input_curvature
from .jacobian import input_jacobian, jacobian_norm
from .landscape import Landscape, filter_normalized_direction, loss_landscape, plot_landscape
from .lipschitz import (
    LipschitzBounds,
    jacobian_spectral_norm,
    layer_lipschitz_constants,
    lipschitz_bounds,
    operator_norm,
    spectral_norm,
)
from .regions import (
    RegionTransitions,
    activation_codes,
    circle_through,
    draw_anchors,
    random_anchors,
    region_transitions,
    transitions_along,
)
from .sharpness import HessianOperator, Sharpness, sharpness
from .smoothing import SmoothedModel, smoothed
from .all_instruments import MEASURES, measure_model, spearman

__all__ = [
    "HessianOperator",
    "Landscape",
    "LipschitzBounds",
    "MEASURES",
    "RegionTransitions",
    "Sharpness",
    "SmoothedModel",
    "activation_codes",
    "circle_through",
    "draw_anchors",
    "filter_normalized_direction",
    "input_curvature",
    "input_jacobian",
    "jacobian_norm",
    "jacobian_spectral_norm",
    "layer_lipschitz_constants",
    "lipschitz_bounds",
    "loss_landscape",
    "measure_model",
    "operator_norm",
    "plot_landscape",
    "random_anchors",
    "region_transitions",
    "sharpness",
    "smoothed",
    "spearman",
    "spectral_norm",
    "transitions_along",
]
