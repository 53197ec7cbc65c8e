"""Checkpoints that load without unpickling: one safetensors file, written atomically, checksummed.

Tensors (model weights and buffers, optimizer moments, the torch RNG state) are stored as
safetensors entries; everything else (epoch, step, history, config, optimizer hyperparameters,
the numpy and Python RNG states) is JSON in the file's metadata. Nested optimizer states are
flattened by :func:`to_json_tree` / :func:`from_json_tree`, which keep int keys and tuples, so
``optimizer.load_state_dict`` gets back exactly what ``state_dict`` gave. safetensors has no
notion of nested non-tensor state, hence this small serializer. Every file carries the SHA-256
of its contents in its metadata (``sha256``), verified on load: a flipped bit is an error, not a
silently different model. Files get the mode the umask allows (``tempfile`` would leave 0600).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ..errors import DataError

_TENSOR, _TUPLE, _DICT = "__tensor__", "__tuple__", "__dict__"


def to_json_tree(obj: Any, tensors: dict[str, torch.Tensor], prefix: str) -> Any:
    """Replace every tensor in a nested structure by a reference into ``tensors``."""
    if isinstance(obj, torch.Tensor):
        key = f"{prefix}.{len(tensors)}"
        tensors[key] = obj.detach().cpu().clone().contiguous()
        return {_TENSOR: key}
    if isinstance(obj, dict):
        return {_DICT: [[to_json_tree(k, tensors, prefix), to_json_tree(v, tensors, prefix)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {_TUPLE: [to_json_tree(v, tensors, prefix) for v in obj]}
    if isinstance(obj, list):
        return [to_json_tree(v, tensors, prefix) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot checkpoint a value of type {type(obj).__name__}: {obj!r}")


def from_json_tree(tree: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(tree, dict):
        if _TENSOR in tree:
            return tensors[tree[_TENSOR]]
        if _TUPLE in tree:
            return tuple(from_json_tree(v, tensors) for v in tree[_TUPLE])
        if _DICT in tree:
            return {from_json_tree(k, tensors): from_json_tree(v, tensors) for k, v in tree[_DICT]}
    if isinstance(tree, list):
        return [from_json_tree(v, tensors) for v in tree]
    return tree


@contextlib.contextmanager
def _atomic(path: Path) -> Iterator[str]:
    """Yield a temporary file beside ``path`` to write; on success it is synced and renamed over
    ``path``, so a reader sees either the old file or the new one, never a half-written one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with _atomic(path) as tmp:
        Path(tmp).write_bytes(data)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def save_tensors_atomic(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """``safetensors.torch.save_file``, atomically."""
    with _atomic(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def content_digest(tensors: dict[str, torch.Tensor], text: str = "") -> str:
    """SHA-256 of ``text`` and of every tensor's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256(text.encode())
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"\0{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


_RESTART = "delete it (the run then restarts from its previous files, or from scratch)"


def _read(path: Path, what: str, fix: str = _RESTART) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file, its checksum verified (when it has one); an
    error names ``fix``."""
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    except FileNotFoundError:
        raise DataError(f"{what} {path} does not exist") from None
    except PermissionError:
        raise DataError(f"{what} {path} cannot be read (permission denied); make it readable") from None
    except (SafetensorError, OSError, ValueError) as exc:
        raise DataError(f"{what} {path} is damaged or not a safetensors file ({exc}); {fix}") from None
    stated = meta.get("sha256")
    if stated is not None and stated != content_digest(tensors, meta.get("state", "")):
        raise DataError(f"{what} {path} is corrupted: its contents do not match its checksum; {fix}")
    return tensors, meta


def save_checkpoint(path: Path, model_state: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
    """Model weights under ``model.*``; ``state`` (any nested tensors/JSON values) elsewhere."""
    tensors: dict[str, torch.Tensor] = {f"model.{k}": v for k, v in model_state.items()}
    text = json.dumps(to_json_tree(state, tensors, "state"))
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    save_tensors_atomic(path, tensors, {"format": "dipnet-checkpoint-1", "state": text,
                                        "sha256": content_digest(tensors, text)})


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Inverse of :func:`save_checkpoint`; a damaged or corrupted file raises :class:`DataError`."""
    path = Path(path)
    tensors, meta = _read(path, "checkpoint")
    try:
        tree = json.loads(meta["state"])
    except (KeyError, json.JSONDecodeError) as exc:
        raise DataError(f"checkpoint {path} is not a dipnet checkpoint ({exc}); delete it to start over") from None
    model_state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    return model_state, from_json_tree(tree, tensors)


def save_weights(path: Path, model_state: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Plain safetensors weights a user can load with ``safetensors.torch.load_file`` (checksummed)."""
    tensors = {k: v.detach().cpu().clone().contiguous() for k, v in model_state.items()}
    save_tensors_atomic(path, tensors, {**(metadata or {}), "sha256": content_digest(tensors)})


def load_weights(path: Path, fix: str = _RESTART) -> dict[str, torch.Tensor]:
    """Weights written by :func:`save_weights`, checksum verified (an error names ``fix``)."""
    return _read(Path(path), "weights file", fix)[0]


def rng_state() -> dict[str, Any]:
    """The torch (CPU and CUDA), numpy and Python generators' states, checkpointable."""
    np_state = np.random.get_state()
    assert isinstance(np_state, tuple), "numpy's global generator is MT19937, whose legacy state is a tuple"
    name, keys, pos, has_gauss, cached = np_state
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
