"""Issue 26, second hardening round: every size a user can type is bounded before work starts,
silently wrong settings are refused, the public API checks its arguments' types, and suites fail
loudly. Each case of the issue is a test; the oracles are hand counts, brute force over the
schedule, the data generator itself and the bytes of the store."""
from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from clirun import cli
from dipnet import DIPNetLoss, Dataset, TrainConfig, load_dataset, load_run, predict, project, strip, train
from dipnet.errors import ConfigError, DataError, DipnetError, SuiteError
from dipnet.experiments import RunStore, load_suite, parse_suite, run_suite
from dipnet.experiments.suite import LARGE_SUITE
from dipnet.experiments.suite_checks import MAX_RUNS, MAX_TOML_DEPTH, toml_depth
from dipnet.methods.icp import ICP, icp_alpha
from dipnet.projection.loss import stacked_bytes

TASK = '[tasks.t]\ndata = "synthetic"\nmodel = "mlp"\n'
FAST = ["--data", "synthetic", "--model", "mlp", "--progress", "none", "--threads", "1"]


def one_line(code_err: tuple[int, str], needle: str, code: int = 2) -> str:
    got, err = code_err
    assert got == code and needle in err and len(err.splitlines()) == 1, (got, err)
    return err


# ---------------------------------------------------------------- sizes


@pytest.mark.parametrize("value", ["1e12", "1000000000000", "1e300"])
def test_suite_epochs_past_the_bound_are_refused_as_floats_and_ints(tmp_path, capsys, value):
    path = tmp_path / "s.toml"
    path.write_text(f"[train]\nepochs = {value}\n{TASK}[methods.erm]\n")
    one_line(cli(capsys, "compare", str(path), "--store", str(tmp_path / "s.sqlite")),
             "train.epochs must be an integer in [1, 100000]")
    assert not (tmp_path / "s.sqlite").exists()


def test_a_huge_sweep_is_counted_never_expanded(monkeypatch):
    import dipnet.experiments.suite as suite_module

    def expanded(*args):
        raise AssertionError("the sweep was expanded")

    monkeypatch.setattr(suite_module.itertools, "product", expanded)
    keys = ", ".join(f"k{i} = [{', '.join(map(str, range(50)))}]" for i in range(20))
    with pytest.raises(ConfigError) as err:
        parse_suite(f"{TASK}[methods.erm]\n[methods.sam]\nsweep = {{ {keys} }}\n", "big.toml")
    assert f"{50 ** 20 + 1:,} runs" in str(err.value) and f"at most {MAX_RUNS:,}" in str(err.value)


def test_the_large_suite_rule_counts_tasks_methods_and_seeds():
    """2 data x 3 models (6 tasks) x (1 + 4 x 3 sweep) method configurations x 13 seeds = 1014 runs."""
    text = ('seeds = 13\n[tasks.t]\ndata = ["synthetic", "mnist1d"]\nmodel = ["mlp", "mnist1d-mlp", "mnist1d-cnn"]\n'
            "[methods.erm]\n[methods.sam]\nsweep = { rho = [0.01, 0.02, 0.03, 0.04], lr = [1e-3, 2e-3, 1e-3] }\n")
    assert 6 * 13 * 13 > LARGE_SUITE
    with pytest.raises(ConfigError, match=f"{6 * 13 * 13:,} runs .6 tasks x 13 method configurations x 13 seeds"):
        parse_suite(text, check_names=False)
    with pytest.raises(ConfigError, match="identical configs"):  # allowed past the count, then checked as usual
        parse_suite(text, check_names=False, max_runs=MAX_RUNS).expand()


def _depth(value) -> int:
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    return 0


def _toml_value(value) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"k{i} = {_toml_value(v)}" for i, v in enumerate(value.values())) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return value


def test_toml_depth_reads_the_nesting_without_parsing_and_skips_strings():
    import tomllib

    rng = np.random.default_rng(26)
    strings = ['"a.b[c{d"', "'x]]].'", '"""multi\n[[[.line"""', "'''[{.'''", "1.5", "2", '"# not a comment ["']
    for _ in range(200):
        def make(level: int):
            if level > 6 or rng.random() < 0.3:
                return strings[rng.integers(len(strings))]
            items = [make(level + 1) for _ in range(rng.integers(0, 3))]
            return {f"k{i}": v for i, v in enumerate(items)} if rng.random() < 0.5 else items
        value = {"x": make(0)}
        text = f"x = {_toml_value(value['x'])}  # trailing [[[\n"
        parsed = tomllib.loads(text)
        assert toml_depth(text) == _depth(parsed) - 1, text  # the top-level table is no nesting
    assert toml_depth("[tasks.mlp]\nlr = 1e-2\n") == 2 and toml_depth("a.b.c = 1.5\n") == 2


@pytest.mark.parametrize("text", ["x = " + "[" * 3000 + "]" * 3000, "x = " + "{a = " * 3000 + "1" + "}" * 3000,
                                  "x" + ".x" * 100_000 + " = 1"])
def test_deep_toml_is_refused_before_the_reader_recurses(text):
    with pytest.raises(ConfigError, match=f"more than {MAX_TOML_DEPTH} deep"):
        parse_suite(text + "\n" + TASK + "[methods.erm]\n")


def test_a_suite_file_past_the_size_bound_is_not_read(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(TASK + "[methods.erm]\n" + "# padding\n" * 200_000)
    with pytest.raises(ConfigError, match="a suite file has at most"):
        load_suite(path)


def _memory(monkeypatch, free: int) -> None:
    monkeypatch.setattr("dipnet.schema.available_memory", lambda device=None: free)


def test_stacked_trajectories_are_estimated_from_the_batch_and_the_model(monkeypatch):
    """Linear(5, 7), ReLU, Linear(7, 3) on 4 rows: activations (7 + 7 + 3) x 4 bytes per row; m
    copies of the 4 x 5 batch, and twice the activations of their m x 4 rows."""
    model = project(nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3)))
    x, y, m = torch.randn(4, 5), torch.zeros(4, dtype=torch.long), 1000
    need = m * (4 * 5 * 4 + 2 * 4 * (7 + 7 + 3) * 4)
    assert stacked_bytes(model, x, m) == need
    _memory(monkeypatch, need - 1)
    with pytest.raises(ConfigError, match=r"1000 trajectories of a batch of 4 needs about .* GiB"):
        DIPNetLoss(trajectories=m)(model, x, y)
    _memory(monkeypatch, need)
    assert torch.isfinite(DIPNetLoss(trajectories=m)(model, x, y))


def test_train_with_absurd_trajectories_is_refused_with_the_estimate(capsys, tmp_path):
    one_line(cli(capsys, "train", *FAST, "--method", "dipnet", "--trajectories", "100000000", "--epochs", "1",
                 "--out", str(tmp_path / "r")), "GiB, more than the")


def test_the_estimate_leaves_the_random_state_and_the_buffers_alone():
    model = project(nn.Sequential(nn.Linear(5, 7), nn.BatchNorm1d(7), nn.ReLU(), nn.Linear(7, 3)))
    x = torch.randn(8, 5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(3)
    stacked_bytes(model, x, 4)
    after_rng = torch.rand(3)
    torch.manual_seed(3)
    assert torch.equal(torch.rand(3), after_rng) and model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# ---------------------------------------------------------------- fine-tuning sizes


@pytest.fixture
def llm():
    pytest.importorskip("transformers")
    pytest.importorskip("peft")
    return pytest.importorskip("reasoning_gym")


def test_finetune_steps_past_the_bound_are_refused(llm, capsys, tmp_path):
    one_line(cli(capsys, "finetune", "--model", "tiny-llama", "--steps", "1000000000000", "--out", str(tmp_path / "r")),
             "steps must be an integer in [1, 1000000]")
    assert not (tmp_path / "r").exists()


def test_question_generation_is_estimated_before_it_runs(llm, monkeypatch, capsys, tmp_path):
    """A clock that advances 1 s per reading: the first 64 draws take 1 s, so drawing the rest is
    estimated at (draws needed) / 64 s, the draws needed scaled by the repeats among those 64
    (counted here from the generator itself)."""
    import dipnet.llm.tasks as tasks

    ticks = iter(range(10**6))
    monkeypatch.setattr(tasks, "time", types.SimpleNamespace(perf_counter=lambda: float(next(ticks))))
    data = llm.create_dataset("chain_sum", size=64, seed=0)
    distinct = len({data[i]["question"] for i in range(64)})
    wanted = 100_000 + 100 + 500
    expected = min(tasks.MAX_DRAW_FACTOR * wanted, 64 * wanted / distinct) / 64
    err = one_line(cli(capsys, "finetune", "--model", "tiny-llama", "--train-size", "100000", "--out", str(tmp_path / "r")),
                   f"would take about {expected:,.0f} s on this machine")
    assert "drawing 100,600 distinct questions" in err and not (tmp_path / "r").exists()


def test_tokenizing_is_estimated_too(llm, monkeypatch):
    import dipnet.llm.tasks as tasks
    from dipnet.llm import encode, load_llm

    _, tok = load_llm("tiny-llama")
    items = [{"question": f"{i} + 1 = ?", "answer": str(i + 1)} for i in range(5000)]
    ticks = iter(range(10**6))
    monkeypatch.setattr(tasks, "time", types.SimpleNamespace(perf_counter=lambda: float(next(ticks))))
    with pytest.raises(ConfigError, match=f"tokenizing 5,000 questions would take about {5000 / 64:,.0f} s"):
        encode(tok, items, system=None, worked_solution=False, context=256, new_tokens=4, task="t")


def test_finetune_trajectories_are_estimated_from_the_batch_and_the_model(llm, capsys, tmp_path):
    one_line(cli(capsys, "finetune", "--model", "tiny-llama", "--method", "dipnet", "--trajectories", "100000000",
                 "--train-size", "40", "--val-size", "4", "--test-size", "8", "--steps", "1", "--progress", "none",
                 "--out", str(tmp_path / "r")), "GiB, more than the")


# ---------------------------------------------------------------- silently wrong


def test_icp_refusal_matches_a_brute_force_of_its_schedule():
    """Refused exactly when a(e) = 1 for every epoch e; the epochs it asks for are the fewest
    that make ICP act (brute force over the schedule)."""
    for warmup in (0.0, 0.25, 0.5, 0.75, 0.9):
        icp = ICP(warmup=warmup)
        for epochs in range(1, 41):
            no_op = all(icp_alpha(e, epochs, icp.warmup_epochs(epochs)) >= 1.0 for e in range(epochs))
            if not no_op:
                icp.check_epochs(epochs)
                continue
            with pytest.raises(ConfigError, match="the run would be ERM") as err:
                icp.check_epochs(epochs)
            fewest = next(e for e in range(2, 10**4)
                          if any(icp_alpha(k, e, icp.warmup_epochs(e)) < 1.0 for k in range(e)))
            assert f"at least {fewest} epochs" in str(err.value)


def test_icp_for_one_epoch_is_refused_before_the_run_folder_exists(capsys, tmp_path):
    one_line(cli(capsys, "train", *FAST, "--method", "icp", "--epochs", "1", "--out", str(tmp_path / "r")),
             "every epoch trains with cross-entropy only")
    assert not (tmp_path / "r").exists()
    with pytest.raises(ConfigError, match="would be ERM"):
        train(TrainConfig(data="synthetic", method="icp", epochs=1, progress="none"))


@pytest.mark.parametrize("argv", [["train", *FAST, "--out", ""], ["report", "--out", " "], ["eval", ""],
                                  ["measure", "x", "--out", ""], ["robust", "x", "--out", ""], ["compare", ""],
                                  ["compare", "default", "--store", ""], ["finetune", "--out", ""]])
def test_an_empty_path_is_a_usage_error_not_a_default_folder(capsys, tmp_path, monkeypatch, argv):
    monkeypatch.chdir(tmp_path)
    one_line(cli(capsys, *argv), "is empty; give a path")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("edit, needle", [
    ('seeds = [0, "1"]\n', "seeds: must be a non-empty list"),
    ('[train]\nepochs = "3"\n', "train.epochs must be an integer"),
    ('[train]\nlr = "0.1"\n', "a quoted string"),
    ('[train]\ngrad_clip = "1"\n', "a quoted string"),
])
def test_toml_strings_are_not_read_as_numbers(edit, needle):
    with pytest.raises(ConfigError, match=needle):
        parse_suite(edit + TASK + "[methods.erm]\n")


def test_toml_strings_in_method_params_and_sweeps_are_refused_too():
    with pytest.raises(ConfigError, match="sam.rho must be a positive number, not '0.1'"):
        parse_suite(TASK + '[methods.sam]\nparams = { rho = "0.1" }\n')
    with pytest.raises(ConfigError, match="a quoted string"):
        parse_suite(TASK + '[methods.sam]\nsweep = { lr = ["0.1", "0.2"] }\n')
    suite = parse_suite('seeds = [0, 1]\n[train]\ngrad_clip = "none"\n' + TASK + "[methods.erm]\n")  # TOML has no null
    assert suite.seeds == [0, 1] and suite.train.get("grad_clip", None) is None
    assert TrainConfig(epochs="3").epochs == 3  # the command line's strings are still read


def test_dipnet_loss_on_an_unprojected_model_warns_once():
    model, x, y = nn.Linear(4, 3), torch.randn(8, 4), torch.zeros(8, dtype=torch.long)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loss = DIPNetLoss()
        a, b = loss(model, x, y), loss(model, x, y)
        DIPNetLoss(prior=(0.0, 0.0))(model, x, y)  # plain cross-entropy on purpose (the SFT path): no warning
        DIPNetLoss()(project(nn.Linear(4, 3)), x, y)
    assert [str(w.message) for w in caught] == [
        "DIPNetLoss: the model has no DIPNet projections, so the loss is plain cross-entropy "
        "(identical trajectories, no prior); call dipnet.project(model) first"]
    assert torch.equal(a, torch.nn.functional.cross_entropy(model(x), y)) and torch.equal(a, b)


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_non_finite_inputs_stop_the_run_with_the_split_and_the_first_index(split):
    ds = load_dataset("synthetic")
    rng = np.random.default_rng(0)
    x = {"train": ds.x_train, "val": ds.x_val, "test": ds.x_test}[split].clone()
    rows = np.sort(rng.choice(x.shape[0], 3, replace=False))
    x[rows[0], 1], x[rows[1], 0], x[rows[2], 2] = float("nan"), float("inf"), -float("inf")
    splits = {"x_train": ds.x_train, "x_val": ds.x_val, "x_test": ds.x_test, f"x_{split}": x}
    with pytest.raises(DataError, match=f"{split} input {rows[0]} is not finite .NaN or inf., and 3 of {x.shape[0]}"):
        Dataset(splits["x_train"], ds.y_train, splits["x_test"], ds.y_test, ds.info, splits["x_val"], ds.y_val)
    getattr(ds, f"x_{split}")[rows[0], 0] = float("nan")  # changed after the Dataset was built
    with pytest.raises(DataError, match=f"{split} input {rows[0]} is not finite"):
        train(TrainConfig(data="synthetic", epochs=1, progress="none"), dataset=ds)


# ---------------------------------------------------------------- API types


@pytest.mark.parametrize("call, needle", [
    (lambda: train({"data": "synthetic"}), "the training config must be a TrainConfig, not dict"),
    (lambda: train(TrainConfig(data="synthetic"), dataset="mnist1d"), "dataset must be a Dataset or None, not str"),
    (lambda: train(TrainConfig(data="synthetic"), model="mlp"), "model must be an nn.Module or a function or None"),
    (lambda: TrainConfig(epochs=[3]), "epochs must be an integer"),
    (lambda: TrainConfig(data=5), "data must be a string, not 5"),
    (lambda: TrainConfig.from_dict(5), "from_dict's argument must be a Mapping"),
    (lambda: project("x"), "project's model must be an nn.Module, not str"),
    (lambda: project(nn.Linear(2, 2), config={"sigma": 0.1}), "project's config must be a PlacementConfig"),
    (lambda: strip("x"), "strip's model must be an nn.Module, not str 'x'"),
    (lambda: DIPNetLoss(criterion="ce"), "DIPNetLoss's criterion must be a function"),
    (lambda: DIPNetLoss()("model", torch.zeros(2, 2), torch.zeros(2).long()), "DIPNetLoss's model must be an nn.Module"),
    (lambda: DIPNetLoss()(nn.Linear(2, 2), [[1.0, 2.0]], torch.zeros(1).long()), "DIPNetLoss's inputs x must be"),
    (lambda: DIPNetLoss()(nn.Linear(2, 2), torch.zeros(1, 2), [0]), "DIPNetLoss's targets y must be a torch.Tensor"),
    (lambda: predict("m", torch.zeros(2, 2)), "predict's model must be an nn.Module"),
    (lambda: predict(nn.Linear(2, 2), [[1.0, 2.0]]), "predict's inputs x must be a torch.Tensor"),
    (lambda: load_run(5), "run_dir must be a str or a PathLike, not int 5"),
    (lambda: Dataset([1], [1], [1], [1], load_dataset("synthetic").info), "x_train must be a torch.Tensor"),
])
def test_the_public_api_checks_its_arguments_types(call, needle):
    with pytest.raises(DipnetError) as err:
        call()
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_the_finetune_entry_points_check_their_arguments_types(llm):
    from dipnet.llm import FinetuneConfig, Finetuner, finetune

    for call, needle in [(lambda: finetune({"model": "tiny-llama"}), "the fine-tuning config must be a FinetuneConfig"),
                         (lambda: Finetuner(FinetuneConfig(model="tiny-llama"), model="x"), "model must be an nn.Module or None"),
                         (lambda: FinetuneConfig(steps="x"), "steps must be an integer"),
                         (lambda: FinetuneConfig(lora_targets=5), "lora_targets must be a list of names")]:
        with pytest.raises(DipnetError, match=needle):
            call()


# ---------------------------------------------------------------- suites


def _failing_suite() -> str:
    return 'name = "f"\n[train]\nepochs = 1\n' + TASK + "[methods.erm]\n[methods.icp]\n"


def test_a_suite_with_a_failed_run_raises_unless_told_and_the_cli_exits_non_zero(tmp_path, capsys):
    suite = parse_suite(_failing_suite(), "f.toml")
    with pytest.raises(SuiteError, match=r"suite 'f': 1 of 2 runs failed .first: t icp seed 0: ConfigError: icp:") as err:
        run_suite(suite, tmp_path / "a.sqlite")
    assert (err.value.outcome.done, err.value.outcome.failed) == (1, 1)
    outcome = run_suite(suite, tmp_path / "b.sqlite", allow_failures=True)
    assert (outcome.done, outcome.failed) == (1, 1)
    with RunStore(tmp_path / "a.sqlite") as store:
        assert sorted(r.status for r in store.runs()) == ["done", "failed"]
    path = tmp_path / "f.toml"
    path.write_text(_failing_suite())
    code, err = cli(capsys, "compare", str(path), "--store", str(tmp_path / "c.sqlite"), "--quiet")
    assert code == 1


def test_a_suite_checks_every_task_s_data_before_its_first_run(tmp_path):
    text = (TASK + f'[tasks.m]\ndata = "mnist"\nmodel = "mlp"\ndata_kwargs = {{ root = "{tmp_path / "no-mnist"}" }}\n'
            "[methods.erm]\n")
    with pytest.raises(DataError, match="task 'm' .checked before the suite's first run.: data folder"):
        run_suite(parse_suite(text, "m.toml"), tmp_path / "s.sqlite")
    with RunStore(tmp_path / "s.sqlite") as store:
        assert {r.status for r in store.runs()} == {"pending"}  # the synthetic task did not train first
    assert not any((tmp_path / "s.sqlite.d").glob("*/run.json"))


def test_a_shipped_suite_that_needs_mnist_stops_at_once_without_it(tmp_path, monkeypatch):
    from dipnet.data import _util

    monkeypatch.setenv("DIPNET_DATA", str(tmp_path / "nothing"))
    monkeypatch.setattr(_util, "SHARED_DATA", tmp_path / "no-shared")  # as on a fresh clone without ../shared
    monkeypatch.chdir(tmp_path)
    suite = load_suite(Path(__file__).resolve().parents[1] / "suites" / "dipnet-defaults.toml")
    with pytest.raises(DataError, match="task 'mnist-mlp'"):
        run_suite(suite, tmp_path / "s.sqlite", cost_fn=lambda cfg: 1.0)
    with RunStore(tmp_path / "s.sqlite") as store:
        assert {r.status for r in store.runs()} == {"pending"}


def test_the_old_unguarded_docs_script_now_fails_loudly(tmp_path):
    """docs/experiments.md's run_suite(workers=2) block without its __main__ guard: the workers
    cannot start, every run fails, and the script exits non-zero (it exited 0)."""
    (tmp_path / "s.toml").write_text('name = "u"\nseeds = [0, 1]\n[train]\nepochs = 1\n' + TASK + "[methods.erm]\n")
    (tmp_path / "run.py").write_text('from dipnet.experiments import load_suite, run_suite\n'
                                     'outcome = run_suite(load_suite("s.toml"), "api.sqlite", workers=2, resume=True)\n')
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "run.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "SuiteError: suite 'u': 2 of 2 runs failed" in proc.stderr
    assert "__main__" in proc.stderr  # the error names the guard
