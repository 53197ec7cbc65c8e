"""Models by name: ``build_model("mlp", info)``. See :mod:`dipnet.models.registry`.

Every model is a plain ``nn.Module``; activations are modules (one instance per use) and every
weight layer is an ``nn.Linear``/``nn.Conv1d``/``nn.Conv2d``, so hooks can find them.
"""
from ._common import ACTIVATIONS, compatible_models
from .cnn import ConvBlock, SmallCNN
from .mlp import MLP, MLPBlock
from .mnist1d import MNIST1DCNN, MNIST1DMLP
from .registry import MODELS, ModelEntry, build_model, model_recipe, register_model
from .resnet import BasicBlock, PadShortcut, ResNet
from .vit import Attention, Block, Mlp, PatchEmbed, VisionTransformer

__all__ = [
    "ACTIVATIONS",
    "Attention",
    "BasicBlock",
    "Block",
    "ConvBlock",
    "MLP",
    "MLPBlock",
    "MNIST1DCNN",
    "MNIST1DMLP",
    "MODELS",
    "Mlp",
    "ModelEntry",
    "PadShortcut",
    "PatchEmbed",
    "ResNet",
    "SmallCNN",
    "VisionTransformer",
    "build_model",
    "compatible_models",
    "model_recipe",
    "register_model",
]
