"""Models by name: ``build_model("mlp", info)``. See :mod:`dipnet.models.registry`."""
from .registry import build_model, list_models, register_model

__all__ = ["build_model", "list_models", "register_model"]
