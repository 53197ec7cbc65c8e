"""Where dipnet writes: never through a symbolic link, never over a file it did not write.

:func:`check_output` refuses a path that is a link, a folder, or an existing file that carries no
dipnet record; :func:`write_output` then writes atomically (a temporary file renamed over the
path), so even a link planted in between is replaced, never followed. :func:`open_no_follow`
creates a file that must not be a link (lock files).
"""
from __future__ import annotations

import errno
import json
import os
from pathlib import Path

from ..errors import ConfigError
from .checkpoint import atomic_write_bytes


def refuse_link(path: Path, fix: str = "choose another --out") -> None:
    """A symbolic link is refused: writing it would change whatever it points to."""
    if Path(path).is_symlink():
        raise ConfigError(f"{path} is a symbolic link (to {os.readlink(path)}); dipnet does not write through links: {fix}")


def check_output(path: Path, owned: bool, flag: str = "--out") -> None:
    """Refuse to write ``path`` when it is a link, not a file, or a file dipnet did not write
    (``owned`` says whether an existing one carries dipnet's record)."""
    path = Path(path)
    refuse_link(path, f"choose another {flag}")
    if not path.exists():
        return
    if not path.is_file():
        raise ConfigError(f"{path} exists and is not a file; choose another {flag}")
    if not owned:
        raise ConfigError(f"{path} exists and dipnet did not write it; dipnet will not replace it (nor will --overwrite, "
                          f"which deletes only dipnet's own files): choose another {flag}")


def write_output(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically; a link at ``path`` is replaced, its target untouched."""
    atomic_write_bytes(Path(path), data)


def json_format(path: Path) -> str | None:
    """The ``format`` field of the JSON object in ``path`` (None if it is no such file)."""
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    value = record.get("format") if isinstance(record, dict) else None
    return value if isinstance(value, str) else None


def open_no_follow(path: Path, fix: str) -> int:
    """``os.open(path, O_RDWR | O_CREAT | O_NOFOLLOW)``: a descriptor of ``path`` itself, never of a
    link's target (a link is refused, naming ``fix``)."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            refuse_link(path, fix)
        raise
