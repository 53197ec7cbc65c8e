"""The README's user-loop quickstart runs as written."""
from __future__ import annotations

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_user_loop_quickstart_runs_and_strip_matches():
    code = python_blocks()[0]
    assert "dipnet.project" in code and "DIPNetLoss" in code
    scope: dict = {}
    torch.manual_seed(0)
    exec(compile(code, "README.md", "exec"), scope)
    model, plain, x = scope["model"], scope["plain"], scope["x"]
    assert not any("dipnet" in type(m).__module__ for m in plain.modules())
    with torch.no_grad():
        assert torch.equal(model(x), plain(x))
