"""Training methods: the component interface (:mod:`.base`), the registry (:mod:`.registry`)
and the built-in components, each registered by its module on import.

``SAM`` and ``RWP`` are also plain optimizer wrappers for a user's own loop (``first_step`` /
``second_step`` / ``step(closure)``, davda54/sam style).
"""
from __future__ import annotations

from ._wrapper import disable_running_stats, enable_running_stats, frozen_running_stats, unwrap
from .adversarial import FGSMExamples
from .base import Closure, Component, Method, StepContext, task_loss, plain_update
from .baselines import CutMix, Cutout, GaussianExamples, InputNoise, Mixup
from .dipnet import DIPNet, NoiseLayers
from .icp import ICP
from .neftune import NEFTune
from .registry import ERM, METHODS, build_method, register_component
from .rwp import RWP, ARWPMethod, MARWPMethod, MRWPMethod, RWPMethod, parallel_mrwp_update
from .sam import SAM, ASAMMethod, SAMMethod, sam_update

__all__ = [
    "ARWPMethod",
    "ASAMMethod",
    "Closure",
    "Component",
    "CutMix",
    "Cutout",
    "DIPNet",
    "ERM",
    "FGSMExamples",
    "GaussianExamples",
    "ICP",
    "InputNoise",
    "MARWPMethod",
    "METHODS",
    "MRWPMethod",
    "Method",
    "Mixup",
    "NEFTune",
    "NoiseLayers",
    "RWP",
    "RWPMethod",
    "SAM",
    "SAMMethod",
    "StepContext",
    "build_method",
    "task_loss",
    "disable_running_stats",
    "enable_running_stats",
    "frozen_running_stats",
    "parallel_mrwp_update",
    "plain_update",
    "register_component",
    "sam_update",
    "unwrap",
]
