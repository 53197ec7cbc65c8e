"""Evidence that tracks the code (research/retrain.py): a committed export whose stored metrics the
current code no longer reproduces, or whose suite no longer expands to its runs, fails the check."""
from __future__ import annotations

import gzip
import inspect
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from dipnet.engine import TrainConfig
from dipnet.errors import DataError
from dipnet.experiments import parse_suite, run_suite
from dipnet.methods.dipnet import DIPNet

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "research"))  # the evidence scripts live outside the package

from evidence import _sealed, export_suite  # noqa: E402
from retrain import Export, retrain_check, sample  # noqa: E402

SUITE = """
name = "tiny"
seeds = [0, 1]
[train]
epochs = 2
batch_size = 64
lr = 1e-2
[tasks.t]
data = "synthetic"
model = "mlp"
data_kwargs = { n_train = 256, n_test = 128 }
[methods.erm]
[methods.dipnet]
sweep = { beta = [1e-4, 4e-4] }
"""


def _commit(root: Path, text: str) -> Path:
    """``root`` holding the suite file ``text`` (suite "tiny") and the export of its runs."""
    (root / "suites").mkdir()
    (root / "suites" / "tiny.toml").write_text(text)
    store = root.parent / f"{root.name}.sqlite"
    run_suite(parse_suite(text, "suites/tiny.toml"), store, threads=1)
    export_suite(store, "tiny", root / "docs" / "results" / "tiny" / "runs.jsonl.gz")
    return root


@pytest.fixture(scope="module")
def committed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository root holding the tiny suite's file and its export (6 runs, 2 methods)."""
    return _commit(tmp_path_factory.mktemp("repo"), SUITE)


@pytest.fixture
def repo(committed: Path, tmp_path: Path) -> Path:
    """A copy of the committed root, free to edit."""
    return Path(shutil.copytree(committed, tmp_path / "repo"))


def _check(root: Path) -> tuple[int, str]:
    lines: list[str] = []
    status = retrain_check(root, echo=lines.append)
    return status, "\n".join(lines)


def _export(root: Path) -> Path:
    return root / "docs" / "results" / "tiny" / "runs.jsonl.gz"


def _rewrite(root: Path, edit: Any, reseal: bool = True) -> None:
    """Apply ``edit(row)`` to every run line of the export (resealing its checksum unless not ``reseal``)."""
    path = _export(root)
    lines = gzip.open(path, "rt").read().splitlines()
    out = [lines[0]]
    for line in lines[1:]:
        row = json.loads(line)
        before = json.dumps(row, sort_keys=True)
        edit(row)
        changed = json.dumps(row, sort_keys=True) != before
        out.append(_sealed({k: v for k, v in row.items() if k != "sha256"}) if changed and reseal else json.dumps(row))
    with gzip.open(path, "wt") as fh:
        fh.write("\n".join(out) + "\n")


def _set_default(monkeypatch: pytest.MonkeyPatch, cls: type, name: str, value: Any) -> None:
    """Change the default of ``cls``'s field ``name``, as an edit of the library would."""
    with_defaults = [p.name for p in inspect.signature(cls.__init__).parameters.values() if p.default is not p.empty]
    defaults = list(cls.__init__.__defaults__)
    defaults[with_defaults.index(name)] = value
    monkeypatch.setattr(cls.__init__, "__defaults__", tuple(defaults))


def test_an_untouched_export_passes_with_one_run_per_method_and_task(repo):
    status, out = _check(repo)
    assert status == 0, out
    assert "tiny: 2 of its 6 finished runs re-trained; every stored metric matches" in out
    lines: list[str] = []
    assert retrain_check(repo, budget_s=1e-9, echo=lines.append) == 0  # a budget spent before the first run
    assert "tiny: 0 of its 6 finished runs re-trained" in lines[0] and "2 sampled run(s) not re-trained" in lines[1]


def test_an_edited_stored_metric_fails_naming_suite_run_metric_and_values(repo):
    rows = [json.loads(line) for line in gzip.open(_export(repo), "rt").read().splitlines()]
    picked = {p.key for p in sample([Export("tiny", _export(repo), rows[0]["meta"], rows[1:])])}
    target = next(r for r in rows[1:] if r["key"] in picked and r["method"] == "erm")
    stored = target["results"]["final"]["test_acc"]

    def edit(row: dict) -> None:
        if row["key"] == target["key"]:
            row["results"]["final"]["test_acc"] = stored + 0.25

    _rewrite(repo, edit)
    status, out = _check(repo)
    assert status == 1
    assert f"tiny: t / erm / seed {target['seed']} ({target['key']}): 1 stored metric(s) differ: " \
           f"final.test_acc: stored {stored + 0.25!r}, now {stored!r}" in out
    stored -= 0.5
    _rewrite(repo, edit, reseal=False)  # an edit that leaves the checksum stale is caught before any training
    with pytest.raises(DataError, match="does not match its checksum"):
        _check(repo)


def test_a_moved_training_default_fails_though_no_key_moves(repo, monkeypatch):
    _set_default(monkeypatch, TrainConfig, "warmup_epochs", 1.0)  # not a stored field: keys stay
    status, out = _check(repo)
    assert status == 1
    assert "expansion" not in out
    assert out.count("stored metric(s) differ: final.") == 2


def test_a_moved_dipnet_default_fails_in_the_expansion_and_the_retraining(repo, monkeypatch):
    stored = DIPNet().sigma
    _set_default(monkeypatch, DIPNet, "sigma", 0.3)
    status, out = _check(repo)
    assert status == 1
    assert f"expansion: 4 run(s) whose config moved (resolved.dipnet.sigma: stored {stored}, now 0.3), " \
           "first t / dipnet" in out
    assert "t / erm / seed" not in out and out.count("stored metric(s) differ") == 1


def test_known_stale_runs_are_reported_loudly_but_only_other_differences_fail(repo, monkeypatch):
    rows = [json.loads(line) for line in gzip.open(_export(repo), "rt").read().splitlines()]
    picked = sorted(p.key for p in sample([Export("tiny", _export(repo), rows[0]["meta"], rows[1:])]))
    stale = repo / "docs" / "results" / "stale.toml"
    stale.write_text(f'[tiny]\nreason = "rerun pending"\nruns = ["{picked[0]}"]\nexpansion = true\n')
    status, out = _check(repo)
    assert status == 0
    assert f"lists run {picked[0]}, which matches now: remove it" in out and "remove expansion from" in out

    def edit(row: dict) -> None:
        row["results"]["final"]["val_loss"] = -1.0

    _rewrite(repo, edit)
    status, out = _check(repo)  # the listed run's edit is known; the other sampled run's is not
    assert status == 1
    assert "!!! tiny: 2 of its 6 finished runs re-trained; KNOWN STALE (rerun pending): 1 known difference(s) " \
           "tolerated; FAILS: 1 difference(s)" in out
    assert f"tiny: known: t / " in out and f"({picked[0]}): 1 stored metric(s) differ: final.val_loss" in out
    stale.write_text(f'[tiny]\nreason = "rerun pending"\nruns = {json.dumps(picked)}\nexpansion = true\n')
    _set_default(monkeypatch, DIPNet, "sigma", 0.3)  # moves the expansion too: listed as known
    status, out = _check(repo)
    assert status == 0 and "KNOWN STALE (rerun pending): 3 known difference(s) tolerated\n" in out + "\n"


def test_the_sample_is_the_cheapest_run_of_every_method_and_task_shared_runs_once():
    def row(key: str, task: str, method: str, seed: int, grads: int) -> dict:
        return {"key": key, "task": task, "method": method, "seed": seed, "status": "done", "spec": {"config": {}},
                "results": {"final": {"example_grads": grads}, "run_wall_s": grads / 10}}

    a_rows = [row("k1", "x", "sam(rho=1)", 0, 30), row("k2", "x", "sam(rho=2)", 1, 20), row("k3", "x", "sam(rho=2)", 0, 20),
              row("k4", "y", "sam(rho=1)", 2, 10), row("k5", "x", "erm", 0, 10), row("k6", "x", "erm", 1, 10)]
    b_rows = [row("k6", "x", "erm", 1, 10), row("k7", "x", "erm", 2, 10), row("k8", "x", "erm", 0, 5)]
    a = Export("a", Path("a"), {"groups": {"sam": ["sam(rho=1)", "sam(rho=2)"]}}, a_rows)
    b = Export("b", Path("b"), {}, b_rows)
    picks = sample([a, b])
    # brute force: per (group, task) the run with the fewest example-gradients, then lowest seed
    assert {p.key: [s for s, _ in p.holders] for p in picks} == {"k3": ["a"], "k4": ["a"], "k5": ["a"], "k8": ["b"]}
    assert [p.key for p in picks] == ["k8", "k4", "k5", "k3"]  # by stored wall time, then key
    shared = Export("b", Path("b"), {}, [row("k8", "x", "erm", 0, 5), row("k5", "x", "erm", 0, 10)])
    assert {p.key: [s for s, _ in p.holders] for p in sample([a, shared])}["k5"] == ["a", "b"]  # trained once, for both


FINETUNE = """
kind = "finetune"
name = "tiny"
seeds = [0]
baseline = "sft"
[train]
model = "tiny-llama"
steps = 4
log_every = 2
train_size = 16
val_size = 2
test_size = 4
[tasks.sums]
task = "chain_sum"
task_kwargs = { min_terms = 2, max_terms = 2 }
[methods.sft]
[methods.dipnet]
"""


def test_a_finetune_suite_is_expanded_and_its_cheapest_pick_trains_its_first_period(tmp_path, monkeypatch):
    pytest.importorskip("reasoning_gym")
    pytest.importorskip("peft")
    from dipnet.llm import FinetuneConfig

    (tmp_path / "repo").mkdir()
    repo = _commit(tmp_path / "repo", FINETUNE)
    rows = [json.loads(line) for line in gzip.open(_export(repo), "rt").read().splitlines()][1:]
    assert all(len(r["results"]["history"]) == 2 for r in rows)
    status, out = _check(repo)
    assert status == 0, out
    assert "tiny: 1 of its 2 finished runs re-trained (1 of them their first periods only) (1 sampled run(s) left " \
           "out: LLM fine-tuning" in out
    lines: list[str] = []
    assert retrain_check(repo, include_finetune=True, echo=lines.append) == 0
    assert "tiny: 2 of its 2 finished runs re-trained; every stored metric matches" in lines[0]

    def edit(row: dict) -> None:
        row["results"]["history"][0]["val_loss"] += 1.0
        row["results"]["history"][1]["objective"] += 1.0

    _rewrite(repo, edit)
    status, out = _check(repo)  # the first period's row differs; the second is not trained
    assert status == 1 and "1 stored metric(s) differ in its first 1 period(s): history[0].val_loss" in out
    _set_default(monkeypatch, FinetuneConfig, "lora_r", 4)  # every run's key moves: the expansion says so
    status, out = _check(repo)
    assert status == 1 and "expansion: 2 run(s) whose config moved" in out



TWO_TASKS = """
name = "tiny"
seeds = [0]
[train]
epochs = 3
batch_size = 64
lr = 1e-2
[tasks.t]
data = "synthetic"
model = "mlp"
data_kwargs = { n_train = 128, n_test = 64 }
[tasks.u]
data = "synthetic"
model = "mlp"
data_kwargs = { n_train = 256, n_test = 64 }
[methods.erm]
[methods.dipnet]
"""


@pytest.fixture(scope="module")
def two_tasks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A committed root whose suite has two tasks: a method's second pick trains its first periods."""
    return _commit(tmp_path_factory.mktemp("repo2"), TWO_TASKS)


def test_a_methods_other_picks_train_their_first_periods_and_still_catch_edits(two_tasks, tmp_path, monkeypatch):
    repo = Path(shutil.copytree(two_tasks, tmp_path / "repo"))
    status, out = _check(repo)
    assert status == 0, out
    assert "tiny: 4 of its 4 finished runs re-trained (2 of them their first periods only); every stored metric " \
           "matches" in out
    lines: list[str] = []
    assert retrain_check(repo, full=True, echo=lines.append) == 0 and "(0 their first periods only)" in lines[-1]

    rows = [json.loads(line) for line in gzip.open(_export(repo), "rt").read().splitlines()][1:]
    short = next(r for r in rows if r["task"] == "u" and r["method"] == "erm")  # the larger task: not the cheapest
    final, second = short["results"]["final"]["test_acc"], short["results"]["history"][1]["val_loss"]

    def edit(row: dict) -> None:
        if row["key"] == short["key"]:
            row["results"]["final"]["test_acc"] = final + 0.25
            row["results"]["history"][1]["val_loss"] = second + 1.0

    _rewrite(repo, edit)
    status, out = _check(repo)
    assert status == 1, out
    assert f"u / erm / seed 0 ({short['key']}): 1 stored metric(s) differ in its first 2 period(s): " \
           f"history[1].val_loss: stored {second + 1.0!r}, now {second!r}" in out
    assert f"u / erm / seed 0 ({short['key']}): 1 stored final metric(s) differ from its stored last history row: " \
           f"final.test_acc: {final + 0.25!r}, last row {final!r}" in out
    lines = []
    assert retrain_check(repo, full=True, echo=lines.append) == 1  # trained to the end: the final metric itself
    assert f"final.test_acc: stored {final + 0.25!r}, now {final!r}" in "\n".join(lines)


def test_a_moved_training_default_fails_in_the_first_periods_too(two_tasks, tmp_path, monkeypatch):
    repo = Path(shutil.copytree(two_tasks, tmp_path / "repo"))
    _set_default(monkeypatch, TrainConfig, "warmup_epochs", 1.0)
    status, out = _check(repo)
    assert status == 1
    assert out.count("stored metric(s) differ: final.") == 2
    assert out.count("stored metric(s) differ in its first 2 period(s): history[0].") == 2
