"""Every code block of README.md and docs/*.md runs as written, in order, in a temporary copy of
the repository (issue 26): what a new user following the docs does.

The blocks run in one fresh Python process (this file run as a script), with the copy as the
current folder, in the order README.md, then docs/*.md by name; the Python blocks of one page
share a namespace and run as ``__main__``. A block whose first line is a comment naming a file
(``# my_suite.toml``, ``# src/dipnet/methods/label_smoothing.py``) is that file: it is written
there (a module under src/ is then imported). Each ``dipnet ...`` command of a bash block runs
in-process and must exit 0; a command that cannot run here is listed in SKIP with the reason.
Other languages (toml without a file name, plain text) are not code to run.
"""
from __future__ import annotations

import importlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
FILE_COMMENT = re.compile(r"#\s*([\w./-]+\.(?:py|toml))\s*(?::.*)?$")
LONG_SUITE = "a comparison suite of many runs of many epochs: tens of minutes to hours on 2 cores"
# (page, start of the command) -> why it does not run here
SKIP = {
    ("README.md", "make demo"): "creates .venv and runs the 90-run default suite: about half an hour on 2 cores",
    ("README.md", "make test"): "the whole test suite, this test included",
    ("README.md", "dipnet compare default"): LONG_SUITE,
    ("README.md", "dipnet report --store runs.sqlite"): "reads the store of the default suite above, which does not run here",
    ("README.md", "dipnet finetune --model smollm2-135m"): "200 SmolLM2-135M steps take minutes on a CPU "
                                                           "(tests/test_llm.py fine-tunes SmolLM2, marked slow)",
    ("RESULTS.md", "dipnet compare suites/NAME.toml"): "a template: NAME stands for one of suites/*.toml",
    ("RESULTS.md", "PYTHONPATH=src python research/evidence.py export"): "a template: NAME stands for one of suites/*.toml",
    ("RESULTS.md", "make docs"): "rewrites the docs from the committed exports (make docs-check tests it)",
    ("studies.md", "dipnet compare suites/perturbation-study.toml"): LONG_SUITE,
    ("studies.md", "dipnet compare suites/sigma-study.toml"): LONG_SUITE,
    ("studies.md", "dipnet compare suites/sigma-lr.toml"): LONG_SUITE,
    ("studies.md", "dipnet compare suites/sigma-fixed.toml"): LONG_SUITE,
    ("studies.md", "PYTHONPATH=src python research/evidence.py export"): "exports the store of the suite above",
    ("dipnet.md", "dipnet compare suites/dipnet-defaults.toml"): LONG_SUITE + "; it also needs MNIST in ../shared/data",
    ("dipnet.md", "PYTHONPATH=src python research/evidence.py export"): "exports the store of the suite above",
    ("experiments.md", "dipnet compare default"): LONG_SUITE,
    ("llm.md", "pip install"): "installs packages (this environment has them)",
    ("llm.md", "dipnet finetune --model smollm2-135m"): "200 SmolLM2-135M steps take minutes on a CPU",
    ("llm.md", "dipnet finetune ..."): "'...' stands for the options of the lines above",
    ("llm.md", "dipnet compare llm"): LONG_SUITE,
    ("llm.md", "dipnet compare suites/llm-study.toml"): LONG_SUITE,
    ("llm.md", "PYTHONPATH=src python research/evidence.py export"): "exports the store of the suite above",
    ("measure.md", "dipnet compare suites/measures.toml"): LONG_SUITE,
    ("measure.md", "PYTHONPATH=src python research/evidence.py export"): "exports the store of the suite above",
    ("methods.md", "dipnet compare suites/comparison.toml"): LONG_SUITE,
    ("methods.md", "PYTHONPATH=src python research/evidence.py export"): "exports the store of the suite above",
    ("methods.md", "dipnet report --store runs/comparison.sqlite"): "reads the store of the suite above",
    ("scale.md", "dipnet train --data mnist1d --model mnist1d-cnn --method dipnet --nproc 2"):
        "starts 2 torchrun processes (tests/test_distributed.py trains with 2)",
    ("scale.md", "dipnet train --data cifar10"): "needs 4 CUDA GPUs and CIFAR-10",
    ("scale.md", "torchrun"): "needs GPUs (and a second node)",
    ("scale.md", "dipnet compare default"): LONG_SUITE + " (tests/test_ray.py runs a small suite on Ray)",
    ("scale.md", "ray start"): "starts a Ray cluster",
}


def pages(root: Path = ROOT) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def blocks(page: Path) -> list[tuple[int, str, str]]:
    """(line, language, code) of each fenced block of ``page``."""
    text = page.read_text(encoding="utf-8")
    return [(text[:m.start()].count("\n") + 1, m.group(1), m.group(2)) for m in BLOCK.finditer(text)]


def commands(code: str) -> list[list[str]]:
    """The commands of a bash block: continuations joined, comments dropped, one per line or ``;``."""
    out: list[list[str]] = []
    for line in code.replace("\\\n", " ").splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";")
        lexer.whitespace_split, lexer.commenters = True, "#"
        current: list[str] = []
        for token in [*lexer, ";"]:
            if token != ";":
                current.append(token)
            elif current:
                out.append(current)
                current = []
    return out


def skip_reason(page: str, argv: list[str]) -> str | None:
    text = " ".join(argv)
    return next((why for (where, start), why in SKIP.items() if where == page and text.startswith(start)), None)


def _named_file(code: str) -> str | None:
    first = code.splitlines()[0] if code.strip() else ""
    found = FILE_COMMENT.match(first)
    return found.group(1) if found else None


def run_all(copy: Path, only: list[str] = ()) -> list[dict]:
    """Run every block of the copy's pages (or of the pages named in ``only``) in order; one
    result per block or command."""
    from dipnet.cli import main

    results: list[dict] = []
    for page in [p for p in pages(copy) if not only or p.name in only]:
        scope: dict = {"__name__": "__main__"}
        for line, lang, code in blocks(page):
            where = {"page": page.name, "line": line, "lang": lang}
            named = _named_file(code)
            t0 = time.perf_counter()
            try:
                if named and lang in ("python", "toml"):
                    (copy / named).parent.mkdir(parents=True, exist_ok=True)
                    (copy / named).write_text(code, encoding="utf-8")
                    if named.startswith("src/") and named.endswith(".py"):
                        importlib.import_module(named[4:-3].replace("/", "."))
                    results.append({**where, "status": "ok", "what": f"wrote {named}"})
                elif lang == "python":
                    exec(compile(code, f"{page.name}:{line}", "exec"), scope)
                    results.append({**where, "status": "ok", "seconds": time.perf_counter() - t0})
                elif lang == "bash":
                    for argv in commands(code):
                        why = skip_reason(page.name, argv)
                        entry = {**where, "command": " ".join(argv)}
                        if why:
                            results.append({**entry, "status": "skipped", "reason": why})
                            continue
                        if argv[0] != "dipnet":
                            results.append({**entry, "status": "failed", "error": "not a dipnet command and not in SKIP"})
                            continue
                        t1 = time.perf_counter()
                        try:
                            code_ = main(argv[1:])
                        except SystemExit as exc:
                            code_ = exc.code
                        results.append({**entry, "status": "ok" if code_ == 0 else "failed", "exit": code_,
                                        "seconds": time.perf_counter() - t1})
            except BaseException as exc:  # noqa: BLE001 - a failing block is the finding
                results.append({**where, "status": "failed", "error": f"{type(exc).__name__}: {exc}",
                                "traceback": traceback.format_exc()[-3000:]})
    return results


def test_every_code_block_of_the_docs_runs_as_written(tmp_path):
    copy = tmp_path / "repo"
    shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns(".git", "__pycache__", ".pytest_cache", "runs", "*.sqlite*",
                                                              "report", "tests", "benchmarks", ".venv"))
    out = tmp_path / "results.json"
    env = {**os.environ, "PYTHONPATH": str(copy / "src"), "MPLBACKEND": "Agg", "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, __file__, str(copy), str(out)], cwd=copy, env=env, capture_output=True,
                          text=True, timeout=600)
    assert out.exists(), proc.stderr[-4000:]
    results = json.loads(out.read_text())
    failed = [r for r in results if r["status"] == "failed"]
    assert not failed, "\n\n".join(f"{r['page']}:{r['line']} {r.get('command', '')}\n{r.get('traceback') or r.get('error') or r}"
                                   for r in failed)
    python = [(page.name, line) for page in pages() for line, lang, _ in blocks(page) if lang == "python"]
    assert [(r["page"], r["line"]) for r in results if r["lang"] == "python"] == python  # every one ran, in order
    assert len([r for r in results if r["status"] == "ok" and "command" in r]) >= 8
    used = {(r["page"], start) for r in results if r["status"] == "skipped"
            for (page, start) in SKIP if page == r["page"] and r["command"].startswith(start)}
    assert used == set(SKIP), f"SKIP entries that match no command any more: {set(SKIP) - used}"


if __name__ == "__main__":
    import torch

    torch.set_num_threads(1)
    Path(sys.argv[2]).write_text(json.dumps(run_all(Path(sys.argv[1]), sys.argv[3:]), indent=1))
