"""CLI: one-line errors with what is allowed (no tracebacks), help everywhere, a real train/eval."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from dipnet.cli import COMMANDS, build_parser, main
from dipnet.cli._common import parse_assignments, parse_method_options, parse_value
from dipnet.errors import ConfigError


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse --help / usage errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


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
        (["train", "--epochs", "0"], "epochs must be an integer >= 1"),
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
