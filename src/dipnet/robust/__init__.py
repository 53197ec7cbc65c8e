"""Robustness of a trained model: FGSM and PGD attacks (L-inf and L2, bounded inputs, EOT for
stochastic models), common corruptions for images and 1-D signals, MNIST-1D shifted test sets,
and :func:`evaluate_robustness` that runs them all."""
from .attacks import FGSM, PGD, Attack, attack_mode, fgsm, input_gradient, per_example_loss, pgd
from .corruptions import corrupt, input_layout, list_corruptions
from .evaluate import DEFAULT_EPS_FRACTIONS, accuracy, evaluate_robustness, plot_robustness, predict_classes
from .shift import shifted_sets

__all__ = [
    "Attack",
    "DEFAULT_EPS_FRACTIONS",
    "FGSM",
    "PGD",
    "accuracy",
    "attack_mode",
    "corrupt",
    "evaluate_robustness",
    "fgsm",
    "input_gradient",
    "input_layout",
    "list_corruptions",
    "per_example_loss",
    "pgd",
    "plot_robustness",
    "predict_classes",
    "shifted_sets",
]
