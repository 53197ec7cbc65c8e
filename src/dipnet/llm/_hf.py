"""The optional dependencies of the LLM path, imported on use: one line with the install
command when one is missing. Nothing here changes the process's environment: Hugging Face is
kept offline by the loaders' arguments (``local_files_only=True``), not by ``HF_HUB_OFFLINE``."""
from __future__ import annotations

import importlib
from types import ModuleType

from ..errors import ConfigError

INSTALL_LLM = "pip install 'dipnet[llm]' (under your torch pin: -c constraints.txt)"
_PACKAGES = {"transformers": "transformers", "peft": "peft", "gguf": "gguf", "accelerate": "accelerate",
             "reasoning_gym": "reasoning-gym"}


def require(module: str) -> ModuleType:
    """Import ``module`` (one of the ``[llm]`` extra's) or raise a one-line ConfigError saying how to install it."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.split(".")[0] != module.split(".")[0]:
            raise
        raise ConfigError(f"the LLM path needs {_PACKAGES.get(module, module)}: {INSTALL_LLM}") from None
