"""Type hints are checked: mypy passes over src/ with pyproject.toml's [tool.mypy] settings, and
every ``type: ignore`` left in the source names its error code and says why on the same line."""
from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "dipnet"

IGNORE = re.compile(r"#\s*type:\s*ignore")
# "# type: ignore[code, code]  # the reason", the reason at least a few words long
EXPLAINED = re.compile(r"#\s*type:\s*ignore\[[a-z][a-z-]*(?:,\s*[a-z][a-z-]*)*\]\s+#\s*\S.{9,}$")


def unexplained(line: str) -> bool:
    """Whether ``line`` holds a ``type: ignore`` without an error code and a reason after it."""
    found = IGNORE.search(line)
    return found is not None and not EXPLAINED.search(line[found.start():])


@pytest.mark.parametrize("line, bad", [
    ("x = f()  # type: ignore", True),
    ("x = f()  #type:ignore", True),
    ("x = f()  # type: ignore[attr-defined]", True),
    ("x = f()  # type: ignore[attr-defined]  #", True),
    ("x = f()  # type: ignore[attr-defined]  # ok", True),
    ("x = f()  # type: ignore  # a reason but no code", True),
    ("x = f()  # type: ignore[]  # an empty code list", True),
    ("x = f()  # type: ignore[attr-defined]  # BatchNorm gets a private attribute", False),
    ("x = f()  # type: ignore[call-arg, misc]  # two codes, one reason for both", False),
    ("x = f()  # a comment without the marker", False),
])
def test_the_ignore_rule_itself(line: str, bad: bool) -> None:
    assert unexplained(line) is bad


def test_every_type_ignore_names_its_code_and_reason() -> None:
    offenders = [f"{path.relative_to(ROOT)}:{i}: {line.strip()}"
                 for path in sorted(SRC.rglob("*.py"))
                 for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
                 if unexplained(line)]
    assert not offenders, ("write '# type: ignore[code]  # why' (or fix the type):\n" + "\n".join(offenders))


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("mypy") is None,
                    reason="mypy is not installed (pip install -e '.[test]')")
def test_mypy_passes_on_src() -> None:
    # the incremental cache lives in the checkout's .mypy_cache (git-ignored): warm runs take seconds
    proc = subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(ROOT / ".mypy_cache")],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, "mypy found errors:\n" + "\n".join(out.splitlines()[-60:])
    assert "Success: no issues found" in out, out
