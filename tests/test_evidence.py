"""Stored evidence: the figures README.md and docs/ quote are regenerated from the committed suite
exports, and an edited export is caught."""
from __future__ import annotations

import gzip
import json
import shutil
import sys
from pathlib import Path

import pytest

from dipnet.experiments import RunStore, parse_suite, run_suite

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "research"))  # the evidence script lives outside the package

from evidence import check, export_suite, find_fragments, import_suite  # noqa: E402


def _fake(config: dict, run_dir: str) -> dict:
    acc = 0.5 + 0.01 * config["seed"] + (0.05 if config["method"] == "input-noise" else 0.0)
    return {"final": {"val_acc": acc, "test_acc": acc, "test_loss": 0.5, "train_acc": 0.9, "train_loss": 0.1,
                      "gap": 0.4, "example_grads": 1, "wall_s": 0.0}, "history": []}


SUITE = """
name = "ev"
seeds = [0, 1, 2]
[tasks.t]
data = "synthetic"
model = "mlp"
[methods.erm]
[methods.input-noise]
"""


def test_export_import_round_trip_and_fragment_check(tmp_path):
    store = tmp_path / "a.sqlite"
    run_suite(parse_suite(SUITE, "ev.toml"), store, train_fn=_fake)
    root = tmp_path / "repo"
    export = export_suite(store, "ev", root / "docs" / "results" / "ev" / "runs.jsonl.gz")
    assert export_suite(store, "ev", tmp_path / "again.jsonl.gz").read_bytes() == export.read_bytes()  # stable bytes
    import_suite(export, tmp_path / "b.sqlite")
    with RunStore(store) as a, RunStore(tmp_path / "b.sqlite") as b:
        assert [(r.task, r.method, r.seed, r.final) for r in a.runs(suite="ev")] == \
               [(r.task, r.method, r.seed, r.final) for r in b.runs(suite="ev")]
    doc = root / "docs" / "x.md"
    doc.write_text("intro\n<!-- dipnet:begin table suite=ev task=t -->\nstale\n<!-- dipnet:end -->\nend\n")
    assert check(root) and check(root, write=True)
    text = doc.read_text()
    assert "| input-noise |" in text and "+5.00 [" in text and text.startswith("intro\n") and text.endswith("end\n")
    assert check(root) == []


def _edit_one_value(export: Path) -> None:
    lines = gzip.open(export, "rt").read().splitlines()
    for i, line in enumerate(lines[1:], 1):
        row = json.loads(line)
        if row["status"] == "done":
            row["results"]["final"]["test_acc"] += 0.1
            lines[i] = json.dumps(row, sort_keys=True)
            break
    with gzip.open(export, "wt") as fh:
        fh.write("\n".join(lines) + "\n")


def test_docs_check_passes_on_the_repository_and_fails_on_an_edited_store(tmp_path):
    fragments = [f for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
                 for f in find_fragments(doc, doc.read_text().split("\n"))]
    if not fragments:
        pytest.skip("no generated fragments in the docs yet")
    assert check(ROOT) == []
    copy = tmp_path / "repo"
    shutil.copytree(ROOT / "docs", copy / "docs")
    shutil.copy(ROOT / "README.md", copy / "README.md")
    suite = next(f.args["suite"] for f in fragments if f.kind == "table" and "pending" not in f.args)
    _edit_one_value(copy / "docs" / "results" / suite / "runs.jsonl.gz")
    assert any(suite in line or "differs" in line for line in check(copy))
