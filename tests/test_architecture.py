"""The house: imports point one way (cli -> experiments -> engine -> methods -> robust/measure ->
projection/models -> data -> base) with no cycle, read from the source with ``ast``; no source
file grows past ~400 lines without saying why."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "dipnet"

# Higher layers may import lower ones, never the reverse; modules of one rank do not import each other.
LAYERS = {
    "_version": 0, "errors": 0, "schema": 1, "registry": 1, "compiling": 1, "noise_table": 2,
    "data": 3,
    "models": 4, "projection": 4,
    "measure": 5, "robust": 5,
    "methods": 6,
    "engine": 7,
    "experiments": 8,
    "llm": 8.5,
    "integrations": 9,
    "cli": 10,
    "__init__": 11, "__main__": 11,
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every dipnet module ``path`` imports, anywhere in the file (function bodies included)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    here = _module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "dipnet"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] != "dipnet":
                continue
            found.add(mod)
            for alias in node.names:  # "from . import x" names a submodule
                if (SRC.parent / (mod.replace(".", "/") + f"/{alias.name}.py")).exists() or \
                        (SRC.parent / (mod.replace(".", "/") + f"/{alias.name}")).is_dir():
                    found.add(f"{mod}.{alias.name}")
    return found


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _graph() -> dict[str, set[str]]:
    return {_module_name(p): _imports(p) for p in SRC.rglob("*.py")}


def test_every_top_level_module_has_a_layer():
    tops = {_top(m) for m in _graph()}
    assert tops <= set(LAYERS), f"give these a layer in LAYERS (and docs/architecture.md): {tops - set(LAYERS)}"


def test_imports_point_down_the_layers():
    wrong = []
    for module, imported in _graph().items():
        src = _top(module)
        for target in imported:
            dst = _top(target)
            if dst != src and LAYERS[dst] >= LAYERS[src]:
                wrong.append(f"{module} -> {target} ({src} layer {LAYERS[src]} -> {dst} layer {LAYERS[dst]})")
    assert not wrong, "imports against the layering:\n" + "\n".join(sorted(wrong))


def test_no_import_cycle():
    graph = _graph()
    known = set(graph)
    edges = {m: {t for t in deps if t in known and t != m} for m, deps in graph.items()}
    # a submodule's import of its own package's __init__ is how Python loads it, not a cycle we wrote
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if node.startswith(nxt + "."):
                continue
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_oracle_sees_a_planted_upward_import(tmp_path, monkeypatch):
    """The walker itself: a data module importing the engine is caught."""
    fake = tmp_path / "dipnet" / "data"
    fake.mkdir(parents=True)
    (tmp_path / "dipnet" / "__init__.py").write_text("")
    (fake / "__init__.py").write_text("")
    (fake / "bad.py").write_text("def f():\n    from ..engine import train\n")
    monkeypatch.setattr(__import__(__name__), "SRC", tmp_path / "dipnet")
    assert "dipnet.engine" in _imports(fake / "bad.py")
    with pytest.raises(AssertionError, match="dipnet.data.bad -> dipnet.engine"):
        test_imports_point_down_the_layers()


LONG_FILE = 400


def test_no_long_source_file_without_a_reason():
    """A file over ~400 lines says why in its module docstring ("Long because ...")."""
    long = []
    for p in SRC.rglob("*.py"):
        lines = p.read_text(encoding="utf-8").count("\n")
        doc = ast.get_docstring(ast.parse(p.read_text(encoding="utf-8"))) or ""
        if lines > LONG_FILE and "Long because" not in doc:
            long.append(f"{p.relative_to(SRC)} ({lines} lines)")
    assert not long, "split these or give the reason in the docstring: " + ", ".join(long)


def test_the_documented_way_to_add_a_method_works():
    """docs/architecture.md's example component, as written, registers and trains."""
    import re

    import torch

    from dipnet.methods import StepContext, build_method, registry

    text = (SRC.parents[1] / "docs" / "architecture.md").read_text(encoding="utf-8")
    code = re.findall(r"```python\n(.*?)```", text, flags=re.S)[0]
    code = code.replace("from ..schema", "from dipnet.schema").replace("from .base", "from dipnet.methods.base") \
               .replace("from .registry", "from dipnet.methods.registry")
    import sys
    import types

    module = types.ModuleType("docs_architecture_example")
    sys.modules[module.__name__] = module
    try:
        exec(compile(code, "docs/architecture.md", "exec"), module.__dict__)
        method = build_method("label-smoothing", {"eps": "0.2"})
        model = torch.nn.Linear(4, 3)
        opt = method.build_optimizer(model, torch.optim.SGD, lr=0.1)
        x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
        with torch.no_grad():  # oracle: the smoothed targets written out, before the step
            logp = model(x).log_softmax(-1)
            target = torch.full((8, 3), 0.2 / 3).scatter_(1, y[:, None], 1 - 0.2 + 0.2 / 3)
            expected = float(-(target * logp).sum(1).mean())
        ctx = StepContext()
        loss = method.step(model, opt, x, y, ctx)
        assert ctx.example_grads == 8 and abs(loss - expected) < 1e-6
        with pytest.raises(Exception, match="label-smoothing.eps must be"):
            build_method("label-smoothing", {"eps": 1.0})
    finally:
        if "label-smoothing" in registry.METHODS:
            registry.METHODS.remove("label-smoothing")
        sys.modules.pop(module.__name__, None)


def test_the_engine_uses_no_projection_internals():
    """DIPNet plugs into the engine as a method component: the engine imports nothing of
    ``dipnet.projection`` (its parameter groups, prior and metrics come through the Method)."""
    offenders = {m: sorted(i for i in imps if i.startswith("dipnet.projection"))
                 for m, imps in _graph().items() if m.startswith("dipnet.engine")}
    assert not {m: i for m, i in offenders.items() if i}


def _loops(path: Path) -> list[str]:
    """Calls of an optimizer's ``step``/``backward`` in a file: what a training loop of its own does."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [f"{path.name}:{n.lineno}" for n in ast.walk(tree)
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
            and n.func.attr in ("backward", "zero_grad") and not path.name.startswith("_")]


def test_llm_runs_no_loop_of_its_own():
    """Fine-tuning is a task on the engine's one loop: nothing in ``dipnet.llm`` calls backward or
    zero_grad (the step is Method.step, the loop engine.core.Loop)."""
    found = [hit for p in sorted((SRC / "llm").rglob("*.py")) for hit in _loops(p)]
    assert not found


def test_the_loop_oracle_sees_a_planted_step(tmp_path):
    planted = tmp_path / "runner.py"
    planted.write_text("def f(loss, opt):\n    opt.zero_grad()\n    loss.backward()\n")
    assert _loops(planted) == ["runner.py:2", "runner.py:3"]
