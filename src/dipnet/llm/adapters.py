"""What fine-tuning changes, saved and loaded on its own: the LoRA adapters and DIPNet's sigmas.

- :func:`save_adapters` writes PEFT's format, ``adapter_config.json`` + ``adapter_model.safetensors``
  (peft's own state-dict helper, peft's key names), so ``PeftModel.from_pretrained(base, folder)``
  loads it, and DIPNet's state beside them in ``dipnet_sigmas.safetensors``.
- :func:`save_sigmas` / :func:`load_sigmas`: that file alone, each projection's ``log_sigma`` and
  running input RMS named by the layer it feeds in the base model (peft's ``base_model.model.``
  prefix dropped), so a projected base model and its ``PeftModel`` read the same file. Loading
  refuses a file whose names or shapes differ from the model's projections.
- :func:`save_sigmas_with_model`: ``model.save_pretrained`` (what ``Trainer.save_model`` and its
  checkpoints call) then also writes the sigmas, and ``model.load_adapter`` (what the ``Trainer``
  resumes with) reads them; the Hugging Face callback installs it.

Tensors are written atomically with their SHA-256 in the file's metadata, verified on load.
:class:`TrainableState` (every trainable tensor by its name in the model) is what a run
directory's checkpoint holds.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..engine.checkpoint import atomic_write_json, load_weights, save_weights
from ..errors import ConfigError, DataError
from ..projection import GaussianProjection, projections
from ._hf import require

__all__ = ["ADAPTER_CONFIG", "ADAPTER_WEIGHTS", "SIGMAS_FILE", "TrainableState", "load_adapters", "load_sigmas",
           "save_adapters", "save_sigmas", "save_sigmas_with_model", "sigma_state", "trainable_state"]

ADAPTER_CONFIG = "adapter_config.json"  # peft's CONFIG_NAME
ADAPTER_WEIGHTS = "adapter_model.safetensors"  # peft's SAFETENSORS_WEIGHTS_NAME
SIGMAS_FILE = "dipnet_sigmas.safetensors"
PEFT_PREFIX = "base_model.model."
_CONFIG_VOLATILE = ("inference_mode", "base_model_name_or_path", "revision", "peft_version")


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Trainable parameters and projection buffers, by their names in ``model``."""
    state = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    for name, module in model.named_modules():
        if isinstance(module, GaussianProjection):
            state.update({n: b.detach() for n, b in module.named_buffers(prefix=name)})
    return state


def _check_fits(found: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], where: str, fix: str) -> None:
    """One line when ``found`` and ``expected`` differ in names or shapes."""
    missing, unexpected = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    shapes = sorted(n for n in set(found) & set(expected) if found[n].shape != expected[n].shape)
    if missing or unexpected or shapes:
        other = (f"; {len(shapes)} of another shape, e.g. {shapes[0]} {tuple(found[shapes[0]].shape)} here "
                 f"{tuple(expected[shapes[0]].shape)}" if shapes else "")
        raise DataError(f"{where} does not fit this model ({len(missing)} missing, e.g. {missing[:2]}; "
                        f"{len(unexpected)} unexpected, e.g. {unexpected[:2]}{other}): {fix}")


def load_trainable_state(model: nn.Module, state: dict[str, torch.Tensor], where: str = "the state") -> None:
    """Copy ``state`` into ``model``; every key must exist with its shape and every trainable tensor be given."""
    _check_fits(state, trainable_state(model), where, "load it into the same model, LoRA settings and placement")
    model.load_state_dict(state, strict=False)


class TrainableState:
    """The ``state_dict``/``load_state_dict`` view of a model's trainable part (what a run
    directory checkpoints for fine-tuning)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def state_dict(self) -> dict[str, torch.Tensor]:
        return trainable_state(self.model)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        load_trainable_state(self.model, state, "the checkpoint")


# ---------------------------------------------------------------- DIPNet's sigmas


def _base_name(model: nn.Module, name: str) -> str:
    return name[len(PEFT_PREFIX):] if hasattr(model, "peft_config") and name.startswith(PEFT_PREFIX) else name


def _projection_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Each projection's own parameters and buffers (not detached), by base-model layer name."""
    out = {}
    for layer, proj in projections(model):
        own = [*proj.named_parameters(recurse=False), *proj.named_buffers(recurse=False)]
        out.update({f"{_base_name(model, layer)}.{n}": t for n, t in own})
    return out


def sigma_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """DIPNet's learned state: every projection's ``log_sigma`` and running input RMS."""
    return {n: t.detach() for n, t in _projection_tensors(model).items()}


def _sigma_file(folder: str | Path) -> Path:
    path = Path(folder)
    return path if path.suffix == ".safetensors" else path / SIGMAS_FILE


def save_sigmas(model: nn.Module, folder: str | Path) -> Path:
    """Write ``dipnet_sigmas.safetensors`` into ``folder`` (atomically, checksummed); returns its path."""
    state = sigma_state(model)
    if not state:
        raise ConfigError("the model has no DIPNet projections, so there are no sigmas to save")
    path = _sigma_file(folder)
    save_weights(path, state, {"format": "dipnet-sigmas-1"})
    return path


def load_sigmas(model: nn.Module, folder: str | Path) -> nn.Module:
    """Restore the sigmas :func:`save_sigmas` wrote into ``folder`` (or the file itself) into a model
    projected as it was when saved (``dipnet.project`` with the same targets and settings, after
    LoRA when the targets are ``"lora"``); returns ``model``."""
    path = _sigma_file(folder)
    if not path.is_file():
        raise DataError(f"no DIPNet sigmas at {path}: pass the folder that save_model/save_pretrained wrote")
    state = load_weights(path)
    own = _projection_tensors(model)
    if not own:
        raise DataError(f"{path} does not fit this model: it holds DIPNet sigmas and the model has no projections; "
                        "call dipnet.project(model, ...) as at training first")
    _check_fits(state, own, str(path), "project the model as it was when saved (same targets and settings)")
    with torch.no_grad():
        for name, tensor in own.items():
            tensor.copy_(state[name])
    return model


class _WithSigmas:
    """``model.save_pretrained`` / ``model.load_adapter`` that also write / read DIPNet's sigmas in
    the folder: an instance attribute over the class's method (copied and pickled with the model)."""

    def __init__(self, model: nn.Module, method: str) -> None:
        self.model, self.method = model, method

    def __call__(self, folder: str | Path, *args: Any, **kwargs: Any) -> Any:
        out = getattr(type(self.model), self.method)(self.model, folder, *args, **kwargs)
        if projections(self.model):
            if self.method == "save_pretrained" and kwargs.get("is_main_process", True):
                save_sigmas(self.model, folder)
            elif self.method == "load_adapter" and (Path(folder) / SIGMAS_FILE).is_file():
                load_sigmas(self.model, folder)
        return out


def save_sigmas_with_model(model: nn.Module) -> nn.Module:
    """Make ``model.save_pretrained(folder)`` also write ``dipnet_sigmas.safetensors`` there (so do
    ``Trainer.save_model`` and the Trainer's checkpoints) and ``model.load_adapter(folder, ...)``
    (the Trainer's resume) read it back; returns ``model``."""
    for method in ("save_pretrained", "load_adapter"):
        if callable(getattr(type(model), method, None)):
            model.__dict__[method] = _WithSigmas(model, method)
    return model


# ---------------------------------------------------------------- adapters in PEFT's format


def _peft_model(model: nn.Module) -> Any:
    peft = require("peft")
    if not isinstance(model, peft.PeftModel):
        raise ConfigError(f"adapters are saved from and loaded into a peft PeftModel, not a {type(model).__name__}: "
                          "wrap the model with LoRA first (dipnet.llm.prepare_model or peft.get_peft_model)")
    return peft


def _adapter_config(model: nn.Module) -> dict[str, Any]:
    """The active adapter's config as peft's ``save_pretrained`` writes it."""
    peft_model: Any = model  # a peft PeftModel (checked by the caller): its adapter attributes are peft's
    config = copy.deepcopy(peft_model.peft_config[peft_model.active_adapter])
    config.inference_mode = True
    if config.base_model_name_or_path is None:
        config.base_model_name_or_path = peft_model.base_model.model.__dict__.get("name_or_path") or None
    return {k: sorted(v) if isinstance(v, set) else v for k, v in config.to_dict().items()}


def save_adapters(model: nn.Module, folder: str | Path) -> Path:
    """Write the LoRA adapters of ``model`` (a ``PeftModel``) into ``folder`` in PEFT's format, and
    DIPNet's sigmas beside them when it is projected; returns ``folder``."""
    peft = _peft_model(model)
    folder = Path(folder)
    state = peft.get_peft_model_state_dict(model, adapter_name=model.active_adapter)
    save_weights(folder / ADAPTER_WEIGHTS, state, {"format": "pt"})
    atomic_write_json(folder / ADAPTER_CONFIG, _adapter_config(model))
    if projections(model):
        save_sigmas(model, folder)
    return folder


def load_adapters(model: nn.Module, folder: str | Path) -> nn.Module:
    """Load what :func:`save_adapters` wrote into a ``PeftModel`` built the same way (same base,
    LoRA settings and DIPNet placement); returns ``model``. Without dipnet:
    ``PeftModel.from_pretrained(base, folder)``, then ``project`` and :func:`load_sigmas`."""
    peft = _peft_model(model)
    folder = Path(folder)
    try:
        saved = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"no {ADAPTER_CONFIG} in {folder}: not a folder of adapters") from None
    except ValueError as exc:
        raise DataError(f"{folder / ADAPTER_CONFIG} is not JSON ({exc})") from None
    now = json.loads(json.dumps(_adapter_config(model)))
    differ = sorted(k for k in set(saved) | set(now) if k not in _CONFIG_VOLATILE and saved.get(k) != now.get(k))
    if differ:
        raise DataError(f"the adapters in {folder} were trained with other LoRA settings (differ in: "
                        f"{', '.join(differ)}); build the model with the same ones")
    state = load_weights(folder / ADAPTER_WEIGHTS)
    _check_fits(state, peft.get_peft_model_state_dict(model, adapter_name=model.active_adapter),
                str(folder / ADAPTER_WEIGHTS), "build the model with the same base and LoRA settings")
    sigmas = folder / SIGMAS_FILE
    if projections(model) and not sigmas.is_file():
        raise DataError(f"{folder} holds no {SIGMAS_FILE} but this model has DIPNet projections: load into the "
                        "model without them, as it was trained")
    if sigmas.is_file():
        load_sigmas(model, folder)
    peft.set_peft_model_state_dict(model, state, adapter_name=model.active_adapter)
    return model
