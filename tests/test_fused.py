"""The fused projection kernels (dipnet.projection.fused). CI has no GPU: the kernels run under
Triton's interpreter on CPU tensors, in a fresh process with TRITON_INTERPRET=1 (Triton reads it
when imported), through the checks in tests/_fused_checks.py; on a GPU,
benchmarks/gpu_check.py runs them compiled. Skipped where Triton is not installed."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dipnet.noise_table import draw_like as table_or_fresh
from dipnet.projection import fused

CHECKS = Path(__file__).with_name("_fused_checks.py")
NAMES = re.findall(r"^@check\ndef (\w+)", CHECKS.read_text(), re.M)  # every check in the file


def _interpreter_unusable() -> str | None:
    """Why Triton's interpreter cannot run the kernels here, or None."""
    try:
        import numpy
        import triton
    except ImportError:
        return "triton is not installed (make test installs it: the [fused] extra)"
    version = tuple(int(p) for p in re.findall(r"\d+", triton.__version__)[:2])
    if version < (3, 7) and tuple(int(p) for p in numpy.__version__.split(".")[:2]) >= (2, 4):
        return (f"Triton {triton.__version__}'s interpreter cannot run loops with runtime bounds under "
                f"NumPy {numpy.__version__} (an interpreter issue, fixed in Triton 3.7)")
    return None


@pytest.fixture(scope="module")
def interpreted():
    why = _interpreter_unusable()
    if why:
        pytest.skip(why)
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, str(CHECKS), *NAMES], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", NAMES)
def test_fused_kernels_under_the_interpreter(interpreted, name):
    assert interpreted[name] == "ok", interpreted[name]


def test_cpu_tensors_take_the_eager_path_without_the_interpreter(monkeypatch):
    """On a CPU the fused path is only for the interpreter: every source draws eagerly as before."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x = torch.randn(4, 5)
    for source in ("auto", "table", "fresh"):
        assert not fused.applies(x, source)
        torch.manual_seed(0)
        eps, draw = fused.draw_like(x, source)
        torch.manual_seed(0)
        ref, ref_draw = table_or_fresh(x, source)
        assert not draw.kernel and torch.equal(eps, ref) and draw.offsets == ref_draw.offsets


def test_disabled_and_unsupported_inputs_take_the_eager_path(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    x = torch.randn(4, 3, 5, 5)
    monkeypatch.setattr(fused, "enabled", False)
    assert not fused.applies(x, "fresh")
    monkeypatch.setattr(fused, "enabled", True)
    assert not fused.applies(x.to(memory_format=torch.channels_last), "fresh")
    assert not fused.applies(x.double(), "fresh")
    assert not fused.applies(x, "table") and not fused.applies(x, "auto")
