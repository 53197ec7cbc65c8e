"""Evaluation never changes a model (issue 16): every evaluation entry point listed in the docs
leaves ``state_dict()`` bit-identical (and the train/eval flags as they were) on a model with
relative-scale DIPNet projections (whose running RMS a train-mode pass would move), BatchNorm
(running statistics) and dropout."""
from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dipnet
from dipnet import measure, robust
from dipnet.data import Dataset, DatasetInfo
from dipnet.engine import evaluate
from dipnet.projection import predict, project

INFO = DatasetInfo("purity", (12,), 3, ("a", "b", "c"), (-4.0, 4.0))


def _model() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(12, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3))
    project(net, sigma=0.2, scale="relative")
    net.train()
    for _ in range(3):  # some training-mode passes: the running RMS and BN statistics are set
        net(torch.randn(32, 12))
    return net


def _data() -> tuple[Dataset, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x, y = (torch.rand(80, 12, generator=g) * 2 - 1), torch.randint(0, 3, (80,), generator=g)
    return Dataset(x[:40], y[:40], x[40:], y[40:], INFO), x[:20], y[:20]


ENTRY_POINTS = {
    "predict": lambda m, ds, x, y: predict(m, x),
    "predict samples": lambda m, ds, x, y: predict(m, x, samples=4),
    "engine.evaluate": lambda m, ds, x, y: evaluate(m, x, y),
    "smoothed": lambda m, ds, x, y: measure.smoothed(m, samples=3)(x),
    "jacobian_norm": lambda m, ds, x, y: measure.jacobian_norm(m, x),
    "region_transitions": lambda m, ds, x, y: measure.region_transitions(m, measure.random_anchors(x, 2), 50),
    "lipschitz_bounds": lambda m, ds, x, y: measure.lipschitz_bounds(m, x, strict=False),
    "input_curvature": lambda m, ds, x, y: measure.input_curvature(m, x, y),
    "sharpness": lambda m, ds, x, y: measure.sharpness(m, F.cross_entropy, (x, y), iters=5, trace_samples=2),
    "loss_landscape": lambda m, ds, x, y: measure.loss_landscape(m, F.cross_entropy, (x, y), steps=5),
    "measure_model": lambda m, ds, x, y: measure.measure_model(m, ds, n_examples=20, smoothed_samples=2,
                                                               circles=2, points=50),
    "fgsm eval": lambda m, ds, x, y: robust.fgsm(m, x, y, 0.1, bounds=INFO.bounds),
    "fgsm noise": lambda m, ds, x, y: robust.fgsm(m, x, y, 0.1, bounds=INFO.bounds, mode="noise", eot_samples=2),
    "pgd keep": lambda m, ds, x, y: robust.pgd(m, x, y, 0.1, steps=3, bounds=INFO.bounds, mode="keep"),
    "pgd noise": lambda m, ds, x, y: robust.pgd(m, x, y, 0.1, steps=3, bounds=INFO.bounds, mode="noise"),
    "evaluate_robustness": lambda m, ds, x, y: robust.evaluate_robustness(m, ds, n_examples=20, pgd_steps=2,
                                                                         mode="noise", eot_samples=2),
}


@pytest.mark.parametrize("name", list(ENTRY_POINTS))
def test_evaluation_leaves_the_model_bit_identical(name):
    model = _model()
    before = copy.deepcopy(model.state_dict())
    flags = [m.training for m in model.modules()]
    ds, x, y = _data()
    ENTRY_POINTS[name](model, ds, x, y)
    after = model.state_dict()
    assert before.keys() == after.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert not changed, f"{name} changed {changed}"
    assert flags == [m.training for m in model.modules()], f"{name} changed a train/eval flag"


def test_the_cli_evaluations_leave_the_run_bit_identical(tmp_path, capsys):
    from dipnet.cli import main

    run = tmp_path / "r"
    assert main(["train", "--data", "synthetic", "--model", "mlp", "--method", "dipnet", "--scale", "relative",
                 "--epochs", "1", "--out", str(run), "--progress", "none"]) == 0
    weights = (run / "model.safetensors").read_bytes()
    for argv in (["eval", str(run)], ["measure", str(run), "--n", "20", "--what", "jacobian,lipschitz", "--smoothed", "2"],
                 ["robust", str(run), "--n", "20", "--steps", "2", "--mode", "noise", "--eot", "2"]):
        assert main(argv) == 0, argv
    assert (run / "model.safetensors").read_bytes() == weights
    assert json.loads((run / "run.json").read_text())["status"] == "done"


def test_every_documented_entry_point_is_covered():
    """The list above names every evaluation function the docs tell users to call."""
    documented = {"predict", "smoothed", "jacobian_norm", "region_transitions", "lipschitz_bounds", "input_curvature",
                  "sharpness", "loss_landscape", "measure_model", "fgsm", "pgd", "evaluate_robustness", "evaluate"}
    covered = {n.split()[0].replace("engine.", "") for n in ENTRY_POINTS}
    assert documented <= covered, documented - covered
    assert all(hasattr(dipnet, n) or hasattr(measure, n) or hasattr(robust, n) for n in documented - {"evaluate"})
