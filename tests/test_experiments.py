"""Comparison suites, run store, statistics and reports.

Oracles: grid sizes counted by hand; Student-t quantiles and p-values from closed forms (df = 1,
2) and tables; Wilcoxon p-values by enumerating every sign pattern with itertools and from
published exact tables; the store checked after SIGKILL of a real `run_suite` subprocess; report
numbers recomputed with numpy from the stored finals.
"""
from __future__ import annotations

import html.parser
import itertools
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from dipnet.data import DATASETS, Dataset, DatasetInfo, register_dataset
from dipnet.methods import Component, register_component
from dipnet.errors import ConfigError
from dipnet.experiments import (
    RunStore,
    load_suite,
    paired_compare,
    paired_t_test,
    parse_suite,
    run_suite,
    summarize,
    t_quantile,
    task_tables,
    effect_size,
    holm,
    resolvable_difference,
    sign_flip_test,
    write_report,
)
from dipnet.experiments import register_measure, probe_cost
from dipnet.experiments.store import owner_id
from dipnet.experiments import run_key
from dipnet.models import MODELS, register_model

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent


# ---------------------------------------------------------------- fakes (importable by workers)


def fake_train(config: dict, run_dir: str) -> dict:
    """Deterministic stand-in for the engine: logs start/end lines, sleeps DIPNET_FAKE_DELAY s."""
    key = run_key(config)
    log = os.environ.get("DIPNET_FAKE_LOG")
    if log:
        with open(log, "a") as f:
            f.write(f"start {key} {os.getpid()}\n")
    time.sleep(float(os.environ.get("DIPNET_FAKE_DELAY", "0")))
    if config["method"] == "fake-fail":
        raise RuntimeError("fake failure for testing")
    rng = random.Random(f"{config['method']}|{config['lr']}|{config['seed']}|{config['model']}")
    acc = 0.6 + (0.05 if config["lr"] > 0.005 else 0.0) + rng.uniform(-0.02, 0.02)
    history = [{"epoch": e, "test_acc": acc * (e + 1) / 3, "train_loss": 1.0 / (e + 1),
                "method": {"sigma": [0.1 * (e + 1), 0.05]} if config["method"] == "fake-b" else {}} for e in range(3)]
    final = {"test_acc": acc, "test_loss": 1.0 - acc, "train_acc": acc + 0.1, "train_loss": 0.2, "gap": 0.1,
             "example_grads": 1000 * config["epochs"], "wall_s": 0.01}
    if log:
        with open(log, "a") as f:
            f.write(f"end {key} {os.getpid()}\n")
    return {"final": final, "history": history}


FAKE_SUITE = """
name = "fake"
seeds = [0, 1, 2]
baseline = "base"

[train]
epochs = 2
lr = 1e-3

[tasks.t1]
data = "d"
model = "m"

[methods.base]
method = "fake-a"

[methods.fast]
method = "fake-b"
lr = 1e-2
"""


def fake_suite(text: str = FAKE_SUITE):
    return parse_suite(text, "fake.toml", check_names=False)


def log_lines(path: Path) -> list[tuple[str, str]]:
    if not path.exists():
        return []
    return [tuple(line.split()[:2]) for line in path.read_text().splitlines() if line.strip()]


# ---------------------------------------------------------------- suites


GRID_SUITE = """
name = "grid"
seeds = 3
[train]
epochs = 4
lr = 0.01
[tasks.a]
data = ["d1", "d2"]
model = ["m1", "m2"]
batch_size = 32
[tasks.b]
data = "d3"
model = "m3"
epochs = 7
[methods.erm]
[methods.sam]
params = { rho = 0.05 }
sweep = { rho = [0.02, 0.1] }
lr = 0.02
[methods.dip]
method = "dipnet+mrwp"
params = { "dipnet.sigma" = 0.1 }
"""


def test_suite_expands_the_full_grid():
    suite = parse_suite(GRID_SUITE, "grid.toml", check_names=False)
    runs = suite.expand()
    # tasks: a -> 2 data x 2 models = 4, b -> 1; methods: erm, sam x 2 sweep values, dip = 4; seeds 3
    assert len(runs) == 5 * 4 * 3 == 60
    assert len({r.key for r in runs}) == 60
    assert suite.seeds == [0, 1, 2]
    assert {r.task for r in runs} == {"a:d1-m1", "a:d1-m2", "a:d2-m1", "a:d2-m2", "b"}
    assert {r.method for r in runs} == {"erm", "sam(rho=0.02)", "sam(rho=0.1)", "dip"}
    one = next(r for r in runs if r.task == "a:d2-m1" and r.method == "sam(rho=0.1)" and r.seed == 2)
    c = one.config
    assert (c["data"], c["model"], c["method"], c["seed"]) == ("d2", "m1", "sam", 2)
    assert c["method_params"] == {"rho": 0.1}  # sweep overrides params
    assert (c["lr"], c["batch_size"], c["epochs"]) == (0.02, 32, 4)  # method > task > [train]
    b = next(r for r in runs if r.task == "b" and r.method == "dip")
    assert (b.config["epochs"], b.config["method"], b.config["method_params"]) == (7, "dipnet+mrwp", {"dipnet.sigma": 0.1})
    assert suite.baseline == "erm"  # the first method by default


def test_task_compose_adds_components_to_every_method():
    text = GRID_SUITE.replace('model = "m3"', 'model = "m3"\ncompose = "fgsm-examples"\ncompose_params = { "fgsm-examples.eps" = 0.2 }')
    runs = parse_suite(text, "grid.toml", check_names=False).expand()
    specs = {(r.task, r.method): (r.config["method"], r.config["method_params"]) for r in runs}
    assert specs[("b", "erm")] == ("fgsm-examples", {"fgsm-examples.eps": 0.2})
    assert specs[("b", "dip")] == ("fgsm-examples+dipnet+mrwp", {"fgsm-examples.eps": 0.2, "dipnet.sigma": 0.1})
    assert specs[("a:d1-m1", "erm")] == ("erm", {})


def test_shipped_paper_suite_expands():
    suite = load_suite("dipnet-paper", check_names=False)
    runs = suite.expand()
    assert len(runs) == 3 * 7 * 3 * 3 and suite.baseline == "standard"  # tasks x methods x tuning grid x seeds
    assert {r.config["method"] for r in runs if r.method.startswith("standard(")} == {"erm", "gaussian-examples", "fgsm-examples"}


def test_run_keys_are_stable_hashes_of_the_config():
    a = fake_suite().expand()
    b = fake_suite(FAKE_SUITE.replace('name = "fake"', 'name = "fake"\n# a comment')).expand()
    assert [r.key for r in a] == [r.key for r in b]
    changed = fake_suite(FAKE_SUITE.replace("epochs = 2", "epochs = 3")).expand()
    assert not {r.key for r in a} & {r.key for r in changed}


def test_equal_compute_budget_scales_epochs_by_cost():
    text = GRID_SUITE.replace('name = "grid"', 'name = "grid"\nbudget = "example_grads"')
    text = text.replace("[methods.erm]", "[methods.erm]\ncost = 1").replace("sweep = { rho = [0.02, 0.1] }", "cost = 2")
    suite = parse_suite(text, "grid.toml", check_names=False)
    runs = suite.expand(cost_fn=lambda cfg: 4.0)  # dip: probed cost 4x
    epochs = {(r.task, r.method): r.config["epochs"] for r in runs}
    assert epochs[("b", "erm")] == 7 and epochs[("b", "sam")] == round(7 / 2) and epochs[("b", "dip")] == 2
    assert epochs[("a:d1-m1", "sam")] == 2 and epochs[("a:d1-m1", "dip")] == 1


@pytest.mark.parametrize(
    "edit, needle",
    [
        (lambda t: t.replace("[train]", "[train\n"), "invalid TOML"),
        (lambda t: t + "\nunknown_top = 1\n", "unknown_top: unknown key"),
        (lambda t: t.replace("epochs = 2", "epochs = 0"), "train.epochs must be an integer in [1, 100000]"),
        (lambda t: t.replace("epochs = 2", "epochs = 2\nlearning_rate = 1"), "train.learning_rate: unknown key"),
        (lambda t: t.replace("lr = 1e-2", "lr = -1.0"), "methods.fast.lr must be a number in (0, 3.40282e+38)"),
        (lambda t: t.replace("seeds = [0, 1, 2]", "seeds = [0, 0]"), "seeds: repeats a seed"),
        (lambda t: t.replace("seeds = [0, 1, 2]", 'seeds = ["a"]'), "seeds: must be a non-empty list"),
        (lambda t: t.replace('baseline = "base"', 'baseline = "nope"'), "baseline: 'nope' is not one of"),
        (lambda t: t.replace('baseline = "base"', 'budget = "flops"'), "budget: must be one of"),
        (lambda t: t.replace('model = "m"', ""), "tasks.t1.model: is missing"),
        (lambda t: t.replace('method = "fake-b"', 'method = "fake-b"\ncosts = 2'), "methods.fast.costs: unknown key"),
        (lambda t: t.replace('method = "fake-b"', "method = 3"), "methods.fast.method: must be a method spec"),
        (lambda t: t.replace('method = "fake-b"', 'method = "fake-b"\nsweep = { rho = 1 }'), "methods.fast.sweep"),
        (lambda t: t.replace("epochs = 2", 'epochs = 2\noptimizer = "lbfgs"'), "train.optimizer must be one of sgd, adamw, adam, not 'lbfgs'"),
        (lambda t: t.replace('method = "fake-b"\nlr = 1e-2', 'method = "fake-a"\nlr = 1e-3'),
         "identical configs"),
        (lambda t: t + '\nmeasure = ["no-such-instrument"]\n', "unknown key"),
    ],
)
def test_suite_errors_name_the_file_and_key(tmp_path, edit, needle):
    path = tmp_path / "bad_suite.toml"
    text = edit(FAKE_SUITE)
    if "measure =" in text:  # top-level keys must come before the first table in TOML
        text = 'measure = ["no-such-instrument"]\n' + text.replace('\nmeasure = ["no-such-instrument"]\n', "")
        needle = "measure: unknown instrument 'no-such-instrument'"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_suite(path, check_names=False).expand()
    msg = str(err.value)
    assert str(path) in msg and needle in msg, msg
    if needle == "invalid TOML":
        assert "line" in msg


def test_suite_checks_method_names_and_hyperparameters(tmp_path):
    real = FAKE_SUITE.replace('data = "d"', 'data = "test-exp-toy"').replace('model = "m"', 'model = "test-exp-mlp"')
    path = tmp_path / "s.toml"
    path.write_text(real.replace('method = "fake-a"', 'method = "erm"'))
    with pytest.raises(ConfigError, match=r"s\.toml: methods\.fast: unknown method 'fake-b'"):
        load_suite(path)
    path.write_text(real.replace('"fake-a"', '"erm"\nparams = { rho = 1 }').replace('"fake-b"', '"erm"\nweight_decay = 0.1'))
    with pytest.raises(ConfigError, match=r"methods\.base: .*has no hyperparameter 'rho'"):
        load_suite(path)
    path.write_text(FAKE_SUITE.replace('"fake-a"', '"erm"').replace('"fake-b"', '"erm"\nweight_decay = 0.1'))
    with pytest.raises(ConfigError, match=r"tasks\.t1\.data: unknown dataset 'd'"):
        load_suite(path)
    path.write_text(real.replace('model = "test-exp-mlp"', 'model = "nope"'))
    with pytest.raises(ConfigError, match=r"tasks\.t1\.model: unknown model 'nope'"):
        load_suite(path)
    with pytest.raises(ConfigError, match="no suite file 'no/such.toml'; .*shipped suite: .*default"):
        load_suite("no/such.toml")


def test_default_suite_ships_with_the_package():
    suite = load_suite("default", check_names=False)
    assert suite.name == "default" and suite.baseline == "erm" and suite.seeds == [0, 1, 2]
    groups = list(dict.fromkeys(m.group for m in suite.methods))
    assert groups == ["erm", "dipnet", "sam", "mrwp", "input-noise"]
    # equal tuning: each method tries exactly the grid its own class declares (ERM: weight decay)
    from dipnet.experiments.budget import ERM_TUNE
    from dipnet.methods import METHODS
    for group in groups:
        grid = ERM_TUNE if group == "erm" else METHODS.get(group).tune
        (knob, values), = grid.items()
        assert [m.choice for m in suite.methods if m.group == group] == [{knob: v} for v in values]
    runs = suite.expand()
    assert len(runs) == 2 * 5 * 3 * 3
    assert {r.config["data"] for r in runs} == {"mnist1d"}


# ---------------------------------------------------------------- store


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_store_round_trip_claim_and_recovery(tmp_path):
    specs = fake_suite().expand()
    path = tmp_path / "runs.sqlite"
    with RunStore(path) as store:
        assert store.add(specs) == 6 and store.add(specs) == 0
        assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        k0, k1, k2 = specs[0].key, specs[1].key, specs[2].key
        assert store.claim(k0) and not store.claim(k0)
        store.finish(k0, {"final": {"test_acc": 0.5}, "history": [{"epoch": 0}], "seed": 0})
        assert store.claim(k1)
        store.fail(k1, "RuntimeError: boom")
        host = owner_id().rsplit(":", 1)[0]
        assert store.claim(k2, owner=f"{host}:{_dead_pid()}")
    with RunStore(path) as store:  # reopened: everything persisted
        r0 = store.get(k0)
        assert r0.status == "done" and r0.final == {"test_acc": 0.5} and r0.spec == specs[0] and r0.attempts == 1
        assert store.get(k1).status == "failed" and store.get(k1).error == "RuntimeError: boom"
        assert store.counts() == {"pending": 3, "running": 1, "done": 1, "failed": 1}
        assert store.recover() == [k2]
        assert store.get(k2).status == "pending"
        assert store.claim(k2, owner=f"{host}:{os.getppid()}")  # a live process that is not us
        with pytest.raises(ConfigError, match="is in use"):
            store.recover()


def test_store_rejects_a_file_that_is_not_a_store(tmp_path):
    bad = tmp_path / "x.sqlite"
    bad.write_bytes(b"not a database at all" * 100)
    with pytest.raises(Exception, match="not a dipnet run store"):
        RunStore(bad)
    with pytest.raises(ConfigError, match="no run store"):
        write_report(tmp_path / "missing.sqlite", tmp_path / "rep")


# ---------------------------------------------------------------- running suites


def test_run_suite_records_failures_and_resumes_without_retraining(tmp_path, monkeypatch):
    log = tmp_path / "log.txt"
    monkeypatch.setenv("DIPNET_FAKE_LOG", str(log))
    text = FAKE_SUITE + '\n[methods.broken]\nmethod = "fake-fail"\n'
    store = tmp_path / "runs.sqlite"
    out = run_suite(fake_suite(text), store, train_fn=fake_train, allow_failures=True)
    assert (out.total, out.done, out.failed, out.skipped) == (9, 6, 3, 0)
    with RunStore(store) as s:
        failed = s.runs(status="failed")
        assert len(failed) == 3 and all("RuntimeError: fake failure for testing" in r.error for r in failed)
        assert all("in fake_train" in r.results["traceback"] for r in failed)
        done = s.runs(status="done")
        assert all(r.results["seed"] == r.seed and len(r.history) == 3 and "versions" in r.results["env"] for r in done)
    starts = len([x for x in log_lines(log) if x[0] == "start"])
    assert starts == 9
    renamed = text.replace('name = "fake"', 'name = "renamed"').replace("[methods.fast]", "[methods.quick]")
    again = run_suite(fake_suite(renamed), store, train_fn=fake_train, retry_failed=False)
    assert (again.done, again.failed, again.skipped) == (0, 0, 9)  # labels are not part of a run's identity
    with RunStore(store) as s:
        assert {r.suite for r in s.runs()} == {"renamed"} and "quick" in {r.method for r in s.runs()}
    assert len([x for x in log_lines(log) if x[0] == "start"]) == starts
    retry = run_suite(fake_suite(text), store, train_fn=fake_train, allow_failures=True)  # failed runs retried by default
    assert (retry.done, retry.failed, retry.skipped) == (0, 3, 6)
    fresh = run_suite(fake_suite(text), store, train_fn=fake_train, resume=False, allow_failures=True)
    assert (fresh.done, fresh.failed, fresh.skipped) == (6, 3, 0)


WORKER_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from test_experiments import fake_suite, fake_train
from dipnet.experiments import run_suite

if __name__ == "__main__":
    text = open(sys.argv[2]).read()
    out = run_suite(fake_suite(text), sys.argv[1], train_fn=fake_train, workers=2, threads=1)
    print("finished", out.done, out.failed, out.skipped, flush=True)
"""


@pytest.mark.slow
def test_killed_suite_resumes_without_losing_or_repeating_runs(tmp_path, monkeypatch):
    """SIGKILL a real `run_suite` with 2 worker processes mid-way, then resume."""
    n_seeds = 8
    text = FAKE_SUITE.replace("seeds = [0, 1, 2]", f"seeds = {n_seeds}")
    suite_file, store, log = tmp_path / "suite.toml", tmp_path / "runs.sqlite", tmp_path / "log.txt"
    suite_file.write_text(text)
    script = tmp_path / "worker.py"
    script.write_text(WORKER_SCRIPT.format(tests=str(TESTS)))
    env = {**os.environ, "DIPNET_FAKE_LOG": str(log), "DIPNET_FAKE_DELAY": "0.4",
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(script), str(store), str(suite_file)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 90
    done_before: set[str] = set()
    while time.monotonic() < deadline:
        time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()
        if store.exists():
            with RunStore(store) as s:
                done_before = {r.key for r in s.runs(status="done")}
            if len(done_before) >= 4:
                break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(1.0)  # workers die with their parent (PR_SET_PDEATHSIG) and write nothing more
    lines_after_kill = log_lines(log)
    time.sleep(1.0)
    assert log_lines(log) == lines_after_kill, "an orphaned worker kept training after the kill"
    with RunStore(store) as s:
        done_before = {r.key for r in s.runs(status="done")}
        counts = s.counts()
    total = 2 * n_seeds
    assert 4 <= len(done_before) < total and counts["done"] + counts["pending"] + counts["running"] == total

    monkeypatch.setenv("DIPNET_FAKE_LOG", str(log))
    out = run_suite(fake_suite(text), store, train_fn=fake_train)  # resume in-process, no delay needed
    assert out.skipped == len(done_before) and out.done == total - len(done_before) and out.failed == 0
    with RunStore(store) as s:
        records = s.runs()
    keys = [r.key for r in records]
    assert len(keys) == len(set(keys)) == total
    assert {r.key for r in records} == {r.key for r in fake_suite(text).expand()}
    assert all(r.status == "done" and r.results["final"]["test_acc"] > 0 for r in records)
    events = log_lines(log)
    ends = [k for e, k in events if e == "end"]
    resumed = events[len(lines_after_kill):]
    assert not {k for e, k in resumed} & done_before, "a run done before the kill was trained again"
    assert set(ends) == set(keys)
    assert all(ends.count(k) <= 2 for k in keys)  # at most the runs in flight ran twice
    assert sum(ends.count(k) - 1 for k in keys) <= 2


# ---------------------------------------------------------------- statistics


def test_t_quantiles_match_closed_forms_and_tables():
    q = 0.975
    assert t_quantile(q, 1) == pytest.approx(math.tan(math.pi * (q - 0.5)), rel=1e-9)  # Cauchy
    assert t_quantile(q, 2) == pytest.approx((2 * q - 1) / math.sqrt(2 * q * (1 - q)), rel=1e-9)
    assert t_quantile(q, 2) == pytest.approx(4.303, abs=5e-4)
    assert t_quantile(q, 4) == pytest.approx(2.776, abs=5e-4)
    assert t_quantile(q, 9) == pytest.approx(2.262, abs=5e-4)
    assert t_quantile(q, 10**6) == pytest.approx(1.95996, abs=1e-4)


def test_summary_interval_is_the_student_t_interval():
    s = summarize([1.0, 2.0, 3.0, 4.0, 5.0])
    assert (s.n, s.mean) == (5, 3.0)
    assert s.std == pytest.approx(math.sqrt(2.5))
    assert s.half_width == pytest.approx(2.7764451 * math.sqrt(2.5) / math.sqrt(5), rel=1e-6)
    three = summarize([0.70, 0.72, 0.71])
    assert three.half_width == pytest.approx(4.3026527 * 0.01 / math.sqrt(3), rel=1e-6)
    assert summarize([0.5]).n == 1 and math.isnan(summarize([0.5]).half_width)
    assert summarize([float("nan"), 1.0, 3.0]).mean == 2.0  # non-finite values dropped
    # coverage: 95% intervals over 2000 normal samples of size 4 cover the mean 95 ± 1.5% of the time
    rng = np.random.default_rng(0)
    intervals = [summarize(rng.normal(1.0, 2.0, 4)) for _ in range(2000)]
    cover = np.mean([s.low <= 1.0 <= s.high for s in intervals])
    assert abs(cover - 0.95) < 0.015


def test_paired_t_test_p_values_match_closed_forms():
    d = [0.03, 0.01, 0.02]  # df = 2: P(|T| > t) = 1 - t / sqrt(2 + t^2)
    t, p = paired_t_test(d)
    t_ref = np.mean(d) / (np.std(d, ddof=1) / math.sqrt(3))
    assert t == pytest.approx(t_ref) and p == pytest.approx(1 - t_ref / math.sqrt(2 + t_ref**2), rel=1e-9)
    t, p = paired_t_test([0.5, -0.1])  # df = 1: P(|T| > t) = 1 - 2 atan(t) / pi
    assert p == pytest.approx(1 - 2 * math.atan(abs(t)) / math.pi, rel=1e-9)
    assert paired_t_test([0.1, 0.1, 0.1]) == (math.inf, 0.0)
    assert paired_t_test([0.0, 0.0]) == (0.0, 1.0)


def brute_force_sign_flip(d: list[float]) -> float:
    """Two-sided exact p by enumeration: share of sign patterns whose |sum| reaches the observed one."""
    obs = abs(sum(d))
    flips = [abs(sum(s * abs(x) for s, x in zip(signs, d))) for signs in itertools.product((1, -1), repeat=len(d))]
    return sum(f >= obs - 1e-12 for f in flips) / len(flips)


@pytest.mark.parametrize("seed", range(8))
def test_sign_flip_p_matches_enumeration(seed):
    rng = random.Random(seed)
    d = [round(rng.gauss(0.3, 1.0), 2) for _ in range(rng.randint(2, 10))]
    assert sign_flip_test(d) == pytest.approx(brute_force_sign_flip(d), abs=1e-12)


def test_sign_flip_floor_with_few_seeds():
    assert sign_flip_test([0.01, 0.02, 0.03]) == pytest.approx(2 / 8)
    assert sign_flip_test([0.01, 0.02, 0.03, 0.04, 0.05]) == pytest.approx(2 / 32)


def test_holm_matches_statsmodels():
    multipletests = pytest.importorskip("statsmodels.stats.multitest").multipletests
    rng = np.random.default_rng(0)
    for _ in range(20):
        p = list(rng.uniform(0, 0.2, size=rng.integers(1, 15)))
        expected = multipletests(p, alpha=0.05, method="holm")[1]
        assert holm(p) == pytest.approx(list(expected), abs=1e-12)
    assert math.isnan(holm([0.01, math.nan, 0.04])[1]) and holm([0.01, math.nan, 0.04])[2] == pytest.approx(0.04)


def test_effect_size_and_resolvable_difference_by_hand():
    d = [0.02, 0.04, 0.03, 0.05]
    assert effect_size(d) == pytest.approx(np.mean(d) / np.std(d, ddof=1))
    from scipy import stats

    assert resolvable_difference(0.02, 5) == pytest.approx(stats.t.ppf(0.975, 4) * 0.02 / math.sqrt(5))
    assert math.isnan(resolvable_difference(0.02, 1))


def test_holm_makes_the_verdict():
    """A difference whose own interval excludes 0 is within noise once many comparisons share the
    alpha: the verdict uses the Holm-adjusted p-value."""
    base = {0: 0.70, 1: 0.72, 2: 0.71, 3: 0.69, 4: 0.70}
    edge = paired_compare({0: 0.715, 1: 0.735, 2: 0.72, 3: 0.70, 4: 0.705}, base)
    assert edge.t_p < 0.05 and edge.verdict in ("better",)
    from dipnet.experiments import adjust

    adjusted = adjust([edge] + [paired_compare({k: v + 0.001 * (k - 2) for k, v in base.items()}, base)] * 19)
    assert adjusted[0].holm_p > 0.05 and adjusted[0].verdict == "within noise"


def test_paired_compare_flags_noise():
    base = {0: 0.70, 1: 0.72, 2: 0.71}
    clear = paired_compare({0: 0.75, 1: 0.78, 2: 0.76}, base)
    assert clear.diff.mean == pytest.approx(0.0533333333) and clear.verdict == "better" and not clear.within_noise
    noisy = paired_compare({0: 0.73, 1: 0.70, 2: 0.72}, base)
    assert noisy.verdict == "within noise"
    assert paired_compare({0: 0.7, 5: 0.8}, base).n == 1  # only seed 0 is shared


# ---------------------------------------------------------------- report


class _TagChecker(html.parser.HTMLParser):
    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.attrs: list[tuple[str, str]] = []

    def handle_starttag(self, tag, attrs):
        self.attrs += [(k, v or "") for k, v in attrs]
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"unbalanced </{tag}> (open: {self.stack[-3:]})"
        self.stack.pop()


def test_report_is_self_contained_and_carries_the_stored_numbers(tmp_path):
    store = tmp_path / "runs.sqlite"
    text = FAKE_SUITE + '\n[methods.broken]\nmethod = "fake-fail"\n'
    run_suite(fake_suite(text), store, train_fn=fake_train, allow_failures=True)
    with RunStore(store) as s:  # add an instrument measure to one run by hand, as an instrument would
        r = s.runs(status="done")[0]
        s.finish(r.key, {**r.results, "measures": {"robust": {"acc_vs_eps": {"0.0": 0.6, "0.1": 0.4}, "jac": 2.5}}})
        finals = {(r.method, r.seed): r.final for r in s.runs(status="done")}
    files = write_report(store, tmp_path / "report")
    page = files.html.read_text()
    md = files.markdown.read_text()
    checker = _TagChecker()
    checker.feed(page)
    assert checker.stack == []
    assert all(v.startswith("data:image/png;base64,") for k, v in checker.attrs if k in ("src", "href"))
    assert "http://" not in page and "https://" not in page and "<script" not in page
    assert page.count("<img") >= 3 and len(files.figures) >= 3 and all(f.exists() for f in files.figures)
    for method in ("base", "fast"):
        acc = np.array([finals[(method, s)]["test_acc"] for s in range(3)]) * 100
        half = 4.302652729911275 * acc.std(ddof=1) / math.sqrt(3)
        cell = f"{acc.mean():.2f} ± {half:.2f}"
        assert cell in page and cell in md, cell
    d = np.array([finals[("fast", s)]["test_acc"] - finals[("base", s)]["test_acc"] for s in range(3)]) * 100
    assert f"{d.mean():+.2f}" in page
    assert "fake failure for testing" in page and "Failed runs" in md
    assert 'baseline = "base"' in md and "acc_vs_eps" in md and "robust.jac vs gap" in md
    assert "torch" in page  # environment section
    assert any("learned_sigma" in f.name for f in files.figures)
    assert "Learned noise std per layer" in md and "| fast | 0.300 ± 0.000 | 0.050 ± 0.000 |" in md


def test_suites_sharing_runs_and_edited_suites_report_only_their_current_runs(tmp_path):
    """Two suites holding the same config share one run; a suite edited after it ran reports only
    the runs it holds now (the superseded ones stay stored, outside it)."""
    store = tmp_path / "runs.sqlite"
    run_suite(fake_suite(), store, train_fn=fake_train)
    other = FAKE_SUITE.replace('name = "fake"', 'name = "other"')
    assert run_suite(fake_suite(other), store, train_fn=fake_train).skipped == 6  # same configs: shared
    edited = FAKE_SUITE.replace("lr = 1e-2", "lr = 2e-2")
    assert run_suite(fake_suite(edited), store, train_fn=fake_train).done == 3  # 'fast' retrained
    with RunStore(store) as s:
        assert s.suites() == ["fake", "other"] and len(s.runs()) == 9
        fake, oth = s.runs(suite="fake"), s.runs(suite="other")
        assert len(fake) == 6 and len(oth) == 6
        assert {r.spec.config["lr"] for r in fake if r.method == "fast"} == {2e-2}
        assert {r.spec.config["lr"] for r in oth if r.method == "fast"} == {1e-2}
        assert {r.suite for r in fake} == {"fake"} and {r.suite for r in oth} == {"other"}
    tables = {(t.suite, t.task): t for t in task_tables(RunStore(store))}
    assert all(len(t.runs["fast"]) == 3 and len(t.runs["base"]) == 3 for t in tables.values())


# ---------------------------------------------------------------- end to end with the engine


def _toy(seed: int = 0) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(240, 6, generator=g)
    y = (x[:, :3].sum(1) > 0).long() + (x[:, 3] > 0.8).long()
    info = DatasetInfo("test-exp-toy", (6,), 3, ("a", "b", "c"), (-10.0, 10.0))
    return Dataset(x[:160], y[:160], x[160:], y[160:], info)


if "test-exp-toy" not in DATASETS:
    register_dataset("test-exp-toy", "test only: 6-d Gaussian inputs, 3 classes")(_toy)
if "test-exp-mlp" not in MODELS:
    register_model("test-exp-mlp", "test only")(lambda info, width=16: nn.Sequential(
        nn.Linear(info.input_shape[0], width), nn.ReLU(), nn.Linear(width, info.num_classes)))


@register_component
@dataclass
class _ExpNoise(Component):
    name = "test-exp-noise"
    slots = frozenset({"batch"})
    description = "test only: Gaussian input noise"
    sigma: float = 0.1

    def transform_batch(self, model, x, y, ctx):
        return x + self.sigma * torch.randn_like(x), y


E2E_SUITE = """
name = "e2e"
seeds = [0, 1]
[train]
epochs = 2
batch_size = 32
lr = 0.01
[tasks.toy]
data = "test-exp-toy"
model = "test-exp-mlp"
model_kwargs = { width = 8 }
[methods.erm]
[methods.noise]
method = "test-exp-noise"
params = { sigma = 0.2 }
"""


def test_cli_compare_and_report_with_the_real_engine(tmp_path, capsys):
    from dipnet.cli import main

    suite = tmp_path / "e2e.toml"
    suite.write_text(E2E_SUITE)
    store, rep = tmp_path / "runs.sqlite", tmp_path / "rep"
    assert main(["compare", str(suite), "--store", str(store), "--report", str(rep)]) == 0
    out = capsys.readouterr().out
    assert "4 trained, 0 failed, 0 kept" in out and "e2e / toy" in out and str(rep / "report.html") in out
    with RunStore(store) as s:
        runs = s.runs()
    assert len(runs) == 4 and all(r.status == "done" for r in runs)
    for r in runs:  # results come from the engine's own run record
        record = json.loads((Path(r.results["run_dir"]) / "run.json").read_text())
        assert record["final"]["test_acc"] == r.final["test_acc"] and len(r.history) == 2
        assert r.final["example_grads"] == 2 * (160 - 20)  # the validation split holds 1/8 of 160
    assert main(["compare", str(suite), "--store", str(store)]) == 2
    assert "pass --resume" in capsys.readouterr().err
    assert main(["compare", str(suite), "--store", str(store), "--resume"]) == 0
    assert "0 trained, 0 failed, 4 kept" in capsys.readouterr().out
    sibling = tmp_path / "sibling.toml"  # another suite holding the same configs reuses them, no flag needed
    sibling.write_text(E2E_SUITE.replace('name = "e2e"', 'name = "sibling"'))
    assert main(["compare", str(sibling), "--store", str(store)]) == 0
    assert "0 trained, 0 failed, 4 kept" in capsys.readouterr().out
    assert main(["report", str(store), "-o", str(tmp_path / "rep2")]) == 0
    assert (tmp_path / "rep2" / "report.html").exists()
    assert main(["compare", str(tmp_path / "nope.toml")]) == 2
    assert "no suite file" in capsys.readouterr().err


@register_measure("test-exp-count")
def _count_measure(result, spec):
    return {"n_history": len(result["history"]), "seed_twice": 2 * spec.seed}


def test_measure_hook_stores_instrument_results(tmp_path):
    text = 'measure = ["test-exp-count"]\n' + FAKE_SUITE
    out = run_suite(fake_suite(text), tmp_path / "runs.sqlite", train_fn=fake_train, workers=1)
    assert out.done == 6
    with RunStore(tmp_path / "runs.sqlite") as s:
        for r in s.runs():
            assert r.results["measures"] == {"test-exp-count": {"n_history": 3, "seed_twice": 2 * r.seed}}


@register_component
@dataclass
class _ExpTwice(Component):
    """Test only: a loss that costs two example-gradients per example (as SAM does)."""

    name = "test-exp-twice"
    slots = frozenset({"loss"})
    description = "test only"

    def loss(self, model, x, y, ctx):
        ctx.count(2 * x.shape[0])
        return nn.functional.cross_entropy(model(x), y)


def test_probe_cost_reads_the_example_gradient_count():
    cfg = {"data": "test-exp-toy", "model": "test-exp-mlp", "batch_size": 32, "method_params": {}}
    assert probe_cost({**cfg, "method": "erm"}) == 1.0
    assert probe_cost({**cfg, "method": "test-exp-twice"}) == 2.0
    assert probe_cost({**cfg, "method": "test-exp-noise+test-exp-twice", "method_params": {"sigma": 0.3}}) == 2.0


SYNTHETIC_SUITE = """
name = "synthetic-e2e"
seeds = [0, 1]
[train]
epochs = 2
batch_size = 64
lr = 0.01
[tasks.teacher]
data = "synthetic"
model = "mlp"
data_kwargs = { n_train = 256, n_test = 128 }
[methods.erm]
[methods.gauss]
method = "gaussian-examples"
params = { sigma = 0.1 }
"""


@pytest.mark.slow
def test_real_engine_on_synthetic_data_in_two_worker_processes(tmp_path):
    """Built-in dataset, model and methods through spawned workers; resume trains nothing."""
    import dipnet.data  # noqa: F401
    import dipnet.methods  # noqa: F401
    from dipnet.methods import METHODS

    if "synthetic" not in DATASETS or "mlp" not in MODELS or "gaussian-examples" not in METHODS:
        pytest.skip("needs the synthetic dataset, the mlp model and the gaussian-examples method")
    suite = parse_suite(SYNTHETIC_SUITE, "synthetic.toml")
    store = tmp_path / "runs.sqlite"
    out = run_suite(suite, store, workers=2, threads=1)
    assert (out.done, out.failed) == (4, 0)
    with RunStore(store) as s:
        runs = s.runs()
    assert {r.results["worker_pid"] for r in runs} != {os.getpid()}  # trained in the workers
    for r in runs:
        record = json.loads((Path(r.results["run_dir"]) / "run.json").read_text())
        assert record["final"]["test_acc"] == r.final["test_acc"] and record["config"]["seed"] == r.seed
        assert record["config"]["method"] == r.spec.config["method"]
    again = run_suite(suite, store, workers=2)
    assert (again.done, again.skipped) == (0, 4)


def test_store_written_before_suite_members_existed_reads_by_its_labels(tmp_path):
    import sqlite3

    store = tmp_path / "runs.sqlite"
    run_suite(fake_suite(), store, train_fn=fake_train)
    con = sqlite3.connect(store)
    con.execute("DROP TABLE members")
    con.commit()
    con.close()
    with RunStore(store) as s:
        assert s.suites() == ["fake"] and len(s.runs(suite="fake")) == 6


def test_run_key_covers_the_methods_resolved_defaults(monkeypatch):
    """A run is identified by every hyperparameter its method trains with, defaults included, so
    a library default that changes gives a new run instead of reusing a stale result."""
    import dipnet.experiments.suite as suite_mod
    from dipnet.projection import DEFAULT_PRIOR, ProjectionConfig

    text = FAKE_SUITE.replace('method = "fake-a"', 'method = "dipnet"')
    runs = fake_suite(text).expand()
    dip = [r for r in runs if r.method == "base"]
    assert dip[0].resolved["dipnet"]["alpha"] == DEFAULT_PRIOR[0] and dip[0].resolved["dipnet"]["sigma"] == ProjectionConfig().sigma
    assert all(r.resolved == {} for r in runs if r.method == "fast")  # unregistered test double
    real = suite_mod.resolved_hyperparameters
    monkeypatch.setattr(suite_mod, "resolved_hyperparameters",
                        lambda m, p: {"dipnet": {**real(m, p)["dipnet"], "alpha": 0.0}} if m == "dipnet" else real(m, p))
    moved = fake_suite(text).expand()
    assert [r.key for r in moved if r.method == "fast"] == [r.key for r in runs if r.method == "fast"]
    assert not {r.key for r in moved if r.method == "base"} & {r.key for r in dip}


# ---------------------------------------------------------------- choosing on validation


def selection_train(config: dict, run_dir: str) -> dict:
    """A stand-in whose validation and test accuracies disagree on the best sweep value:
    validation peaks at rho = 0.05, test at rho = 0.1."""
    rho = (config.get("method_params") or {}).get("rho")
    val = {0.02: 0.70, 0.05: 0.80, 0.1: 0.75}.get(rho, 0.72) + 0.001 * config["seed"]
    test = {0.02: 0.60, 0.05: 0.65, 0.1: 0.90}.get(rho, 0.62) + 0.002 * config["seed"]
    final = {"val_acc": val, "test_acc": test, "test_loss": 1 - test, "train_acc": 1.0, "train_loss": 0.0,
             "gap": 1 - test, "example_grads": 10, "wall_s": 0.0}
    return {"final": final, "history": []}


SELECTION_SUITE = """
name = "selection"
seeds = [0, 1, 2]
[tasks.t]
data = "synthetic"
model = "mlp"
[methods.erm]
[methods.sam]
sweep = { rho = [0.02, 0.05, 0.1] }
"""


def test_a_sweep_is_won_on_validation_and_reported_on_test(tmp_path):
    from dipnet.experiments.tables import task_tables

    suite = parse_suite(SELECTION_SUITE, "selection.toml")
    run_suite(suite, tmp_path / "s.sqlite", train_fn=selection_train)
    with RunStore(tmp_path / "s.sqlite") as store:
        (table,) = task_tables(store, "selection")
    rows = {r.method: r for r in table.rows}
    assert set(rows) == {"erm", "sam [rho=0.05]"}  # the best validation mean, not the best test one (0.1)
    chosen = rows["sam [rho=0.05]"]
    assert chosen.metrics["test_acc"].mean == pytest.approx(0.65 + 0.002)  # its own test runs, mean over seeds
    assert chosen.metrics["val_acc"].mean == pytest.approx(0.80 + 0.001)
    assert chosen.vs_baseline.diff.mean == pytest.approx(0.65 - 0.62)
    sweep = {label: (val.mean, test.mean, pick) for label, val, test, pick in table.sweeps["sam"]}
    assert sweep["sam(rho=0.1)"][1] > sweep["sam(rho=0.05)"][1] and sweep["sam(rho=0.05)"][2]


def test_a_configuration_with_failed_runs_is_passed_over(tmp_path):
    """rho = 0.05 has the best validation mean on its finished seeds, but diverged on seed 1: the
    choice falls to the best configuration without failures (0.1), and the sweep table says why."""
    from dipnet.errors import DivergenceError
    from dipnet.experiments.tables import sweep_cells, task_tables

    def diverging(config: dict, run_dir: str) -> dict:
        if (config.get("method_params") or {}).get("rho") == 0.05 and config["seed"] == 1:
            raise DivergenceError("the loss diverged at step 3")
        return selection_train(config, run_dir)

    suite = parse_suite(SELECTION_SUITE, "selection.toml")
    run_suite(suite, tmp_path / "s.sqlite", train_fn=diverging, allow_failures=True)
    with RunStore(tmp_path / "s.sqlite") as store:
        (table,) = task_tables(store, "selection")
    assert {r.method for r in table.rows} == {"erm", "sam [rho=0.1]"}
    _, cells = sweep_cells(table)
    assert [c[4] for c in cells if c[1] == "sam(rho=0.05)"] == ["excluded: 1 of 3 runs failed"]


def test_equal_tuning_gives_every_method_its_grid():
    from dipnet.experiments.budget import ERM_TUNE
    from dipnet.methods import METHODS

    suite = parse_suite(SELECTION_SUITE.replace("[methods.sam]\nsweep = { rho = [0.02, 0.05, 0.1] }",
                                                "[methods.sam]\n[methods.noise]\nmethod = \"input-noise\"\n"
                                                "params = { sigma = 0.3 }\n[methods.rwp]")
                        .replace('name = "selection"', 'name = "tuned"\ntune = true'), "tuned.toml")
    groups = suite.groups()
    assert len(groups["erm"]) == len(ERM_TUNE["weight_decay"]) and len(groups["sam"]) == 3 and len(groups["rwp"]) == 3
    assert groups["noise"] == ["noise"]  # its knob is set by hand: not tuned
    wd = sorted(m.overrides["weight_decay"] for m in suite.methods if m.group == "erm")
    assert wd == sorted(ERM_TUNE["weight_decay"])
    rhos = sorted(m.params["rho"] for m in suite.methods if m.group == "sam")
    assert rhos == sorted(METHODS.get("sam").tune["rho"])
