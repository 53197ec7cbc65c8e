"""CLI: one-line errors with what is allowed (no tracebacks), help everywhere, a real train/eval."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from dipnet.cli import COMMANDS, build_parser
from dipnet.cli._common import parse_assignments, parse_method_options, parse_value
from dipnet.errors import ConfigError

from clirun import run_cli


def test_every_subcommand_has_help(capsys):
    parser = build_parser()
    names = parser._subparsers._group_actions[0].choices
    assert {"train", "eval", "datasets", "models", "methods", "demo"} <= set(names)
    for name in names:
        assert name in COMMANDS
        code, out, _ = run_cli(capsys, name, "--help")
        assert code == 0 and "usage: dipnet " + name in out


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["train", "--data", "no-such-data"], "unknown dataset 'no-such-data'; choose one of"),
        (["train", "--method", "no-such-method"], "unknown method 'no-such-method'; choose one of"),
        (["train", "--epochs", "0"], "epochs must be an integer in [1, 100000]"),
        (["train", "--rho", "0.1"], "has no hyperparameter 'rho'"),
        (["train", "--lr"], "expected one argument"),
        (["train", "--data-arg", "seed"], "--data-arg expects KEY=VALUE"),
        (["eval", "/no/such/run"], "not a dipnet run directory"),
    ],
)
def test_bad_input_gets_one_line_without_traceback(capsys, argv, needle):
    code, out, err = run_cli(capsys, *argv)
    assert code == 2
    assert needle in err
    assert "Traceback" not in err
    assert len([line for line in err.splitlines() if line.startswith("dipnet")]) == 1


def test_parsers_for_values_and_hyperparameters():
    assert parse_value("3") == 3 and parse_value("0.5") == 0.5 and parse_value("true") is True
    assert parse_value("none") is None and parse_value("64,64") == [64, 64] and parse_value("relu") == "relu"
    assert parse_assignments(["width=64", "act-fn=relu"], "--x") == {"width": 64, "act_fn": "relu"}
    # method options stay raw strings: each component's schema coerces them
    assert parse_method_options(["--sigma", "0.1", "--sam.rho=0.05"]) == {"sigma": "0.1", "sam.rho": "0.05"}
    with pytest.raises(ConfigError, match="needs a value"):
        parse_method_options(["--sigma"])
    with pytest.raises(ConfigError, match="unexpected argument"):
        parse_method_options(["sigma"])


def test_console_script_reports_errors_as_one_line():
    exe = os.path.join(os.path.dirname(sys.executable), "dipnet")
    if not os.path.exists(exe):
        pytest.skip("console script not installed in this environment")
    proc = subprocess.run([exe, "train", "--model", "no-such-model", "--data", "synthetic"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "unknown" in proc.stderr


def test_train_then_eval_round_trip(capsys, tmp_path):
    out = tmp_path / "run"
    code, stdout, err = run_cli(
        capsys, "train", "--data", "synthetic", "--model", "mlp", "--epochs", "2", "--batch-size", "64",
        "--lr", "0.01", "--out", str(out), "--progress", "plain",
    )
    assert code == 0, err
    assert "epoch   2/2" in stdout and "final  test acc" in stdout
    record = json.loads((out / "run.json").read_text())
    code, stdout, err = run_cli(capsys, "eval", str(out), "--json")
    assert code == 0, err
    assert json.loads(stdout)["test_acc"] == pytest.approx(record["final"]["test_acc"])


def _train_record(capsys, tmp_path, *extra: str) -> dict:
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", "--data", "synthetic", "--model", "mlp", "--epochs", "1",
                           "--batch-size", "64", "--out", str(out), "--progress", "none", *extra)
    assert code == 0, err
    return json.loads((out / "run.json").read_text())


@pytest.mark.parametrize("extra, component, field, value", [
    (["--method", "input-noise", "--input-noise.sigma", "0.3"], "input-noise", "sigma", 0.3),
    (["--method", "mrwp", "--mrwp.sigma-schedule=cosine"], "mrwp", "sigma_schedule", "cosine"),
    (["--train-perturbation", "gaussian", "--method", "input-noise", "--gaussian-examples.sigma", "0.2",
      "--input-noise.sigma", "0.05"], "gaussian-examples", "sigma", 0.2),
    (["--method", "icp", "--layers", "blocks.0.act,blocks.1.act", "--epochs", "2"], "icp", "layers", ["blocks.0.act", "blocks.1.act"]),
    (["--method", "icp", "--icp.warmup", "0.5", "--epochs", "4"], "icp", "warmup", 0.5),
])
def test_hyphenated_components_and_list_values_reach_the_method(capsys, tmp_path, extra, component, field, value):
    record = _train_record(capsys, tmp_path, *extra)
    assert record["method"]["hyperparameters"][component][field] == value


def test_trainer_option_wins_its_bare_name_and_no_abbreviation_is_taken(capsys, tmp_path):
    record = _train_record(capsys, tmp_path, "--method", "icp", "--warmup-epochs", "0", "--epochs", "2")
    assert record["config"]["warmup_epochs"] == 0 and record["method"]["hyperparameters"]["icp"]["warmup"] == 0.25
    code, _, err = run_cli(capsys, "train", "--data", "synthetic", "--method", "icp", "--warmup", "0.5", "--mom", "0.5",
                           "--out", str(tmp_path / "r2"), "--progress", "none", "--epochs", "1")
    assert code == 2 and "no hyperparameter 'mom'" in err  # --mom is not --momentum


def test_icp_layers_from_a_suite_file(tmp_path):
    from dipnet.experiments import parse_suite

    suite = parse_suite('[tasks.t]\ndata = "synthetic"\nmodel = "mlp"\n[methods.icp]\n'
                        'params = { layers = ["blocks.0.act", "blocks.1.act"] }\n', "s.toml")
    assert suite.expand()[0].resolved["icp"]["layers"] == ["blocks.0.act", "blocks.1.act"]


def test_wrong_icp_layer_is_reported_before_the_first_step(capsys, tmp_path, monkeypatch):
    from dipnet.methods import Method

    steps = []
    monkeypatch.setattr(Method, "step", lambda self, *a, **k: steps.append(1))
    code, _, err = run_cli(capsys, "train", "--data", "synthetic", "--method", "icp", "--layers", "blocks.0.act,nope",
                           "--out", str(tmp_path / "r"), "--progress", "none")
    assert code == 2 and "icp.layers: the model has no module named 'nope'" in err and not steps
    assert not (tmp_path / "r").exists()


def _documented_flags() -> set[str]:
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    texts = [p.read_text(encoding="utf-8") for p in [root / "README.md", *sorted((root / "docs").glob("*.md"))]]
    flags = set()
    for text in texts:
        for line in text.splitlines():
            if "dipnet " in line or line.lstrip().startswith("--") or "`--" in line:
                flags |= set(re.findall(r"(?<![\w-])--[a-z][a-z0-9.-]*[a-z0-9]", line))
    return flags


# flags of other programs that the docs quote (pip, torchrun), and the placeholder for a method option
FOREIGN_FLAGS = {"--no-deps", "--standalone", "--nproc-per-node", "--upgrade", "--name", "--component.field",
                 "--nnodes", "--node-rank", "--rdzv-backend", "--rdzv-endpoint"}


def _script_flags() -> set[str]:
    """Options of the repository's own scripts (benchmarks, research scripts), read from their source."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    flags = set()
    for p in [*root.glob("benchmarks/*.py"), *root.glob("docs/*.py"), *root.glob("research/*.py")]:
        flags |= set(re.findall(r"add_argument\(\s*\"(--[a-z][a-z0-9-]*)\"", p.read_text(encoding="utf-8")))
    return flags


def test_every_flag_in_the_docs_exists():
    """A flag quoted in README.md or docs/*.md is accepted by some dipnet parser, or is a method
    hyperparameter (``--field`` or ``--component.field``)."""
    import dataclasses

    from dipnet.methods import METHODS

    parser = build_parser()
    accepted = {s for a in parser._actions for s in a.option_strings}
    for sub in parser._subparsers._group_actions[0].choices.values():
        accepted |= {s for a in sub._actions for s in a.option_strings}
    for name in METHODS.names():
        if name == "erm":
            continue
        for f in dataclasses.fields(METHODS.get(name)):
            for form in (f.name, f.name.replace("_", "-")):
                accepted |= {f"--{form}", f"--{name}.{form}"}
    missing = sorted(_documented_flags() - accepted - FOREIGN_FLAGS - _script_flags())
    assert not missing, f"documented flags that no dipnet parser accepts: {missing}"


def test_demo_hands_compare_every_option_compare_has(capsys, monkeypatch, tmp_path):
    """`dipnet demo` is `dipnet compare default --resume ...`: compare.run gets a namespace with
    every option of compare's own parser (a hand-built one missed options added later)."""
    from dipnet.cli import compare

    seen = []
    monkeypatch.setattr(compare, "run", lambda ns: seen.append(ns) or 0)
    code, _, err = run_cli(capsys, "demo", "--store", str(tmp_path / "d.sqlite"), "--report", str(tmp_path / "r"),
                           "--threads", "1")
    assert code == 0, err
    reference = build_parser().parse_args(["compare", "default"])
    (ns,) = seen
    assert set(vars(reference)) - {"command"} <= set(vars(ns))
    assert (ns.suite, ns.resume, ns.fresh, ns.executor, ns.threads) == ("default", True, False, "local", "1")
    assert ns.store == str(tmp_path / "d.sqlite") and ns.report == str(tmp_path / "r")
