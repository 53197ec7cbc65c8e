"""Training methods that plug into :mod:`dipnet.engine` (see :mod:`dipnet.engine.method`).

Importing this package registers every built-in component (each module registers its own with
``@register_component``). ``SAM`` and ``RWP`` are also plain optimizer wrappers for a user's own
loop (``first_step`` / ``second_step`` / ``step(closure)``, davda54/sam style).
"""
from __future__ import annotations

from .adversarial import FGSMExamples, GaussianExamples
from .baselines import CutMix, Cutout, InputNoise, Mixup
from .dipnet import DIPNet, NoiseLayers
from .icp import ICP
from .rwp import RWP, ARWPMethod, MARWPMethod, MRWPMethod, RWPMethod
from .sam import SAM, ASAMMethod, SAMMethod, sam_update

__all__ = [
    "ARWPMethod",
    "ASAMMethod",
    "CutMix",
    "Cutout",
    "DIPNet",
    "FGSMExamples",
    "GaussianExamples",
    "ICP",
    "InputNoise",
    "MARWPMethod",
    "MRWPMethod",
    "Mixup",
    "NoiseLayers",
    "RWP",
    "RWPMethod",
    "SAM",
    "SAMMethod",
    "sam_update",
]
