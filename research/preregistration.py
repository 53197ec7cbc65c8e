"""A pre-registered study's file is committed before its runs. For a suite export whose header
declares hypotheses, git history must hold the suite file, with exactly those hypotheses, in the
last commit that changed it before the export's first commit (before HEAD while the export is not
committed yet). :func:`preregistered` checks one export; ``research/evidence.py check`` runs it
on every committed export, and says so when the folder is not a git checkout.
"""
from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from dipnet.errors import ConfigError, DataError
from dipnet.experiments.hypotheses import Hypothesis, from_meta
from dipnet.experiments.suite_checks import load_toml


class _NoGit(Exception):
    pass


def _git(root: Path, *args: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise _NoGit(f"git did not run ({exc})") from None


def _checkout(root: Path) -> str | None:
    """Why ``root`` cannot be checked (None: it is the top of a git checkout with its full history)."""
    try:
        top = _git(root, "rev-parse", "--show-toplevel")
        if top.returncode != 0 or Path(top.stdout.strip()).resolve() != root.resolve():
            return f"{root} is not the top of a git checkout"
        if _git(root, "rev-parse", "--is-shallow-repository").stdout.strip() == "true":
            return f"{root} is a shallow clone (its history is incomplete)"
    except _NoGit as exc:
        return str(exc)
    return None


def suite_path(root: Path, meta: dict[str, Any]) -> Path | None:
    """The suite file an export's header names (``source``), relative to ``root``; a shipped
    suite (``dipnet/suites/NAME.toml``) lives under ``src/``."""
    source = Path(str(meta.get("source") or ""))
    if not str(source) or str(source) == "<suite>":
        return None
    if source.is_absolute():
        try:
            source = source.resolve().relative_to(root.resolve())
        except ValueError:
            return None
    for candidate in (source, Path("src") / source):
        if (root / candidate).is_file():
            return candidate
    return None


def declared(text: str, where: str) -> list[dict[str, Any]]:
    """The hypotheses a suite file's text declares, normalized as an export's header holds them."""
    raw = load_toml(text, where).get("hypotheses") or []
    try:
        return [Hypothesis(**table).to_dict() for table in raw]
    except (ConfigError, TypeError) as exc:
        raise DataError(f"{where}: its [[hypotheses]] do not parse ({exc})") from None


def preregistered(root: str | Path, export: str | Path, header: dict[str, Any]) -> tuple[str | None, str | None]:
    """(problem, note) for the export at ``export`` whose first line is ``header``: a problem when
    its hypotheses were not in the suite file's history before the export's first commit; a note
    when that cannot be checked here (no git checkout). Both None when it holds or nothing is declared."""
    root = Path(root)
    meta = header.get("meta") or {}
    hypotheses = [h.to_dict() for h in from_meta(meta)]
    if not hypotheses:
        return None, None
    rel_export = Path(export).resolve().relative_to(root.resolve())
    why = _checkout(root)
    if why:
        return None, f"{rel_export}: not checked that its hypotheses were committed before its runs: {why}"
    suite = suite_path(root, meta)
    if suite is None:
        return (f"{rel_export}: its suite file {meta.get('source')!r} is not in the repository; commit the study "
                "file (with its [[hypotheses]]) before its runs"), None
    first = _git(root, "log", "--reverse", "--format=%H", "--", str(rel_export)).stdout.split()
    if first and _git(root, "rev-parse", "--verify", "--quiet", f"{first[0]}^").returncode != 0:
        return f"{rel_export} was committed in the repository's first commit, before any study file", None
    base, when = (f"{first[0]}^", f"before its first commit {first[0][:10]}") if first else ("HEAD", "at HEAD")
    commits = _git(root, "log", "--format=%H", base, "--", str(suite)).stdout.split()
    if not commits:
        return (f"{rel_export}: {suite} was not committed {when}; a pre-registered study's file is committed "
                "before its runs"), None
    shown = _git(root, "show", f"{commits[0]}:{suite.as_posix()}")
    try:
        before = declared(shown.stdout, f"{suite} at {commits[0][:10]}")
    except (ConfigError, DataError) as exc:
        return f"{rel_export}: {exc}", None
    if before != hypotheses:
        return (f"{rel_export}: its hypotheses differ from those {suite} held {when} (commit {commits[0][:10]}): "
                "a pre-registered study's hypotheses are fixed before its runs; declare a new study instead"), None
    return None, None
