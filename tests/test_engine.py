"""Engine: schedules vs closed forms, checkpoint round trips, resume equality (in-process and
after killing a real subprocess), NaN stop, gradient clipping, run records."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from dipnet.data import Dataset, DatasetInfo
from dipnet.engine import TrainConfig, evaluate, load_run, lr_at, read_record, train
from dipnet.methods import Component, register_component
from dipnet.engine.checkpoint import from_json_tree, load_checkpoint, save_checkpoint, to_json_tree
from dipnet.methods import build_method
from dipnet.errors import ConfigError, DataError, NonFiniteLossError

ROOT = Path(__file__).resolve().parents[1]


def toy_dataset(n_train: int = 400, n_test: int = 200, d: int = 8, k: int = 3, seed: int = 0) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_train + n_test, d, generator=g)
    w = torch.randn(d, k, generator=g)
    y = (x @ w).argmax(1)
    info = DatasetInfo("toy", (d,), k, tuple(map(str, range(k))), (-10.0, 10.0))
    return Dataset(x[:n_train], y[:n_train], x[n_train:], y[n_train:], info)


def toy_model(info=None, d: int = 8, k: int = 3) -> nn.Module:
    return nn.Sequential(nn.Linear(d, 32), nn.ReLU(), nn.Linear(32, k))


@register_component
@dataclass
class _NoisyInputs(Component):
    """Test component that consumes the global RNG, so resuming must restore RNG state."""

    name = "test-noisy-inputs"
    slots = frozenset({"batch"})
    description = "test only"
    sigma: float = 0.3

    def transform_batch(self, model, x, y, ctx):
        return x + self.sigma * torch.randn_like(x), y


@register_component
@dataclass
class _NanAt(Component):
    name = "test-nan-at"
    slots = frozenset({"loss"})
    description = "test only"
    step: int = 5

    def loss(self, model, x, y, ctx):
        ctx.count(x.shape[0])
        out = nn.functional.cross_entropy(model(x), y)
        return out * float("nan") if ctx.step == self.step else out


@register_component
@dataclass
class _RecordGradNorm(Component):
    name = "test-record-grad-norm"
    slots = frozenset({"update"})
    description = "test only"

    def update(self, model, optimizer, closure, ctx):
        optimizer.zero_grad(set_to_none=True)
        closure()
        norm = torch.sqrt(sum((p.grad**2).sum() for p in model.parameters() if p.grad is not None))
        ctx.log(grad_norm=float(norm))
        _RecordGradNorm.norms.append(float(norm))
        optimizer.step()
        return True


_RecordGradNorm.norms = []


# --- schedules ------------------------------------------------------------------------------

def test_cosine_schedule_closed_form():
    total, base = 100, 0.4
    assert lr_at(0, total, base, "cosine") == pytest.approx(base)
    assert lr_at(50, total, base, "cosine") == pytest.approx(base / 2)
    for s in (10, 33, 77):
        assert lr_at(s, total, base, "cosine") == pytest.approx(base * 0.5 * (1 + math.cos(math.pi * s / total)))


def test_warmup_then_cosine_and_step_decay():
    assert [lr_at(s, 100, 1.0, "constant", warmup_steps=4) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert lr_at(10, 100, 1.0, "cosine", warmup_steps=10) == pytest.approx(1.0)
    assert lr_at(55, 100, 1.0, "cosine", warmup_steps=10) == pytest.approx(0.5)
    assert lr_at(49, 100, 1.0, "step") == 1.0
    assert lr_at(50, 100, 1.0, "step") == pytest.approx(0.1)
    assert lr_at(80, 100, 1.0, "step") == pytest.approx(0.01)
    with pytest.raises(ConfigError, match="schedule"):
        lr_at(0, 10, 1.0, "linear")


def _hand_lr(step: int) -> float:
    """Warm-up over 4 steps to 0.01, then cosine to 0 over the remaining 8 (Loshchilov & Hutter eq. 5),
    written out here rather than taken from ``lr_at``."""
    if step < 4:
        return 0.01 * (step + 1) / 4
    return 0.01 * 0.5 * (1 + math.cos(math.pi * (step - 4) / 8))


def test_trainer_applies_schedule_each_step(monkeypatch):
    """3 epochs of 4 batches, one warm-up epoch: the optimizer moves every weight by exactly
    -lr(step) * grad with lr(step) the hand-written schedule, and the epoch records carry it."""
    seen, moved = [], []

    @dataclass
    class Spy(Component):
        name = "spy"
        slots = frozenset({"batch"})

        def transform_batch(self, model, x, y, ctx):
            seen.append(ctx.lr)
            return x, y

    @dataclass
    class PlainSgdProbe(Component):
        """Measures the step size the optimizer really took: delta = -lr * grad for plain SGD."""

        name = "probe"
        slots = frozenset({"update"})

        def update(self, model, optimizer, closure, ctx):
            optimizer.zero_grad(set_to_none=True)
            closure()
            before = [(p.detach().clone(), p.grad.detach().clone()) for p in model.parameters()]
            optimizer.step()
            delta = torch.cat([(p.detach() - w).flatten() for p, (w, _) in zip(model.parameters(), before)])
            grad = torch.cat([g.flatten() for _, g in before])
            lr = float(-(delta * grad).sum() / (grad * grad).sum())  # least squares fit of delta = -lr * grad
            moved.append((lr, float((delta + lr * grad).abs().max())))
            return True

    from dipnet.methods import Method

    ds = toy_dataset(n_train=100)
    cfg = TrainConfig(epochs=3, batch_size=25, lr=0.01, schedule="cosine", warmup_epochs=1, optimizer="sgd",
                      momentum=0.0, progress="none")
    plain = train(cfg, dataset=ds, model=toy_model, callbacks=())
    assert [h["step"] for h in plain.history] == [4, 8, 12]
    assert [h["lr"] for h in plain.history] == pytest.approx([_hand_lr(3), _hand_lr(7), _hand_lr(11)], rel=1e-12)
    assert plain.final["example_grads"] == 3 * 100 and plain.final["epochs"] == 3
    from dipnet.engine import setup

    monkeypatch.setattr(setup, "build_method", lambda spec, params: Method([Spy(), PlainSgdProbe()]))
    train(cfg, dataset=ds, model=toy_model)
    expected = [_hand_lr(s) for s in range(12)]
    assert expected[:5] == pytest.approx([0.0025, 0.005, 0.0075, 0.01, 0.01]) and expected[8] == pytest.approx(0.005)
    assert seen == pytest.approx(expected, rel=1e-12)
    assert len(moved) == 12
    for (lr_taken, residual), lr in zip(moved, expected):
        assert lr_taken == pytest.approx(lr, rel=1e-4) and residual < 1e-7


# --- checkpoints ------------------------------------------------------------------------------

@pytest.mark.parametrize("opt", ["sgd", "adamw"])
def test_checkpoint_round_trip_keeps_optimizer_state_exactly(tmp_path, opt):
    torch.manual_seed(0)
    model = toy_model()
    optim = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9) if opt == "sgd" else torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.8, 0.95))
    for _ in range(3):
        optim.zero_grad()
        model(torch.randn(5, 8)).sum().backward()
        optim.step()
    state = {"optimizer": optim.state_dict(), "tuple": (1, (2.5, "x")), "ints": {3: [None, True]}}
    save_checkpoint(tmp_path / "c.safetensors", model.state_dict(), state)
    weights, back = load_checkpoint(tmp_path / "c.safetensors")
    assert back["tuple"] == (1, (2.5, "x")) and back["ints"] == {3: [None, True]}
    for k, v in model.state_dict().items():
        assert torch.equal(weights[k], v)
    ref = optim.state_dict()
    assert back["optimizer"]["param_groups"] == ref["param_groups"]
    for pid, st in ref["state"].items():
        for key, val in st.items():
            got = back["optimizer"]["state"][pid][key]
            assert torch.equal(got, val) if torch.is_tensor(val) else got == val
    optim2 = type(optim)(model.parameters(), lr=0.5)
    optim2.load_state_dict(back["optimizer"])


def test_json_tree_rejects_unknown_types():
    with pytest.raises(TypeError, match="cannot checkpoint"):
        to_json_tree({"x": object()}, {}, "s")
    assert from_json_tree(to_json_tree([1, {"a": (2,)}], {}, "s"), {}) == [1, {"a": (2,)}]


def test_damaged_checkpoint_is_a_clear_error(tmp_path):
    p = tmp_path / "checkpoint.safetensors"
    save_checkpoint(p, toy_model().state_dict(), {"epoch": 1})
    p.write_bytes(p.read_bytes()[:50])
    with pytest.raises(DataError, match="damaged"):
        load_checkpoint(p)


def test_atomic_write_keeps_old_file_when_writing_fails(tmp_path, monkeypatch):
    from dipnet.engine import checkpoint as ck

    p = tmp_path / "c.safetensors"
    save_checkpoint(p, {"w": torch.ones(2)}, {"epoch": 1})
    before = p.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ck, "save_file", boom)
    with pytest.raises(OSError):
        save_checkpoint(p, {"w": torch.zeros(2)}, {"epoch": 2})
    assert p.read_bytes() == before
    assert [f.name for f in tmp_path.iterdir()] == ["c.safetensors"]


# --- training -----------------------------------------------------------------------------------

def test_training_learns_and_records_everything(tmp_path):
    ds = toy_dataset()
    cfg = TrainConfig(data="toy", epochs=5, batch_size=32, lr=1e-2, seed=3, out=str(tmp_path / "r"), progress="none")
    result = train(cfg, dataset=ds, model=toy_model)
    hist = result.history
    assert len(hist) == 5 and hist[-1]["objective"] < hist[0]["objective"]
    assert result.final["test_acc"] > 0.8
    assert result.final["example_grads"] == 5 * 400
    ref = evaluate(result.model, ds.x_test, ds.y_test)
    assert ref["acc"] == pytest.approx(result.final["test_acc"])
    # independent recomputation of the test accuracy
    with torch.no_grad():
        acc = (result.model(ds.x_test).argmax(1) == ds.y_test).float().mean().item()
    assert acc == pytest.approx(result.final["test_acc"])
    rec = json.loads((tmp_path / "r" / "run.json").read_text())
    assert rec["status"] == "done" and rec["config"]["seed"] == 3
    assert rec["run_info"]["versions"]["torch"] and rec["run_info"]["cpu_count"] >= 1
    assert rec["dataset"]["input_shape"] == [8]
    weights = load_file(str(tmp_path / "r" / "model.safetensors"))
    for k, v in result.model.state_dict().items():
        assert torch.equal(weights[k], v)
    loaded = load_run(tmp_path / "r", dataset=ds, model=toy_model)
    assert not loaded.model.training
    assert evaluate(loaded.model, ds.x_test, ds.y_test)["acc"] == pytest.approx(result.final["test_acc"])


@pytest.mark.parametrize("method", ["test-noisy-inputs", "dipnet"])
def test_same_seed_same_weights_and_resume_equality_in_process(tmp_path, method):
    """A run stopped after epoch 2 and resumed ends bit-identical to an uninterrupted one; with
    dipnet too, whose noise-table offsets and window starts come from the saved global generator."""
    ds = toy_dataset()
    base = dict(data="toy", method=method, epochs=4, batch_size=50, lr=1e-2, seed=1, progress="none")
    full = train(TrainConfig(**base, out=str(tmp_path / "full")), dataset=ds, model=toy_model)

    class Stop(Exception):
        pass

    def stop_after_two(row):
        if row["epoch"] == 1:
            raise Stop

    with pytest.raises(Stop):
        train(TrainConfig(**base, out=str(tmp_path / "cut")), dataset=ds, model=toy_model, callbacks=[stop_after_two])
    assert json.loads((tmp_path / "cut" / "run.json").read_text())["status"] == "failed"
    resumed = train(TrainConfig(**base, out=str(tmp_path / "cut")), dataset=ds, model=toy_model)
    for k, v in full.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[k], v), k
    assert [h["test_acc"] for h in resumed.history] == [h["test_acc"] for h in full.history]
    other = train(TrainConfig(**{**base, "seed": 2}), dataset=ds, model=toy_model)
    assert not torch.equal(other.model[0].weight, full.model[0].weight)


def test_resume_with_a_different_config_is_refused(tmp_path):
    ds = toy_dataset()
    train(TrainConfig(epochs=1, out=str(tmp_path / "r"), progress="none"), dataset=ds, model=toy_model)
    with pytest.raises(ConfigError, match="different config.*epochs"):
        train(TrainConfig(epochs=2, out=str(tmp_path / "r"), progress="none"), dataset=ds, model=toy_model)


_KILL_SCRIPT = textwrap.dedent(
    """
    import sys, time, torch
    from torch import nn
    sys.path.insert(0, {tests!r})
    from test_engine import toy_dataset, toy_model
    from dipnet.engine import TrainConfig, train
    torch.set_num_threads(1)
    cfg = TrainConfig(data="toy", method="test-noisy-inputs", epochs=6, batch_size=20, lr=1e-2, seed=7,
                      optimizer="sgd", momentum=0.9, out=sys.argv[1], progress="none")
    slow = sys.argv[2] == "slow"
    train(cfg, dataset=toy_dataset(), model=toy_model, callbacks=[lambda row: time.sleep(0.4 if slow else 0)])
    """
)


def test_resume_after_killing_a_real_process_gives_identical_weights(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(_KILL_SCRIPT.format(tests=str(Path(__file__).parent)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = lambda out, mode: subprocess.Popen([sys.executable, str(script), str(out), mode], env=env)  # noqa: E731
    assert run(tmp_path / "full", "fast").wait(120) == 0

    proc = run(tmp_path / "cut", "slow")
    record = tmp_path / "cut" / "run.json"
    deadline = time.time() + 60
    while time.time() < deadline:
        if record.exists():
            try:
                if len(json.loads(record.read_text())["history"]) >= 2:
                    break
            except (json.JSONDecodeError, KeyError):
                pass
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    done = len(json.loads(record.read_text())["history"])
    assert 2 <= done < 6, "the kill must land mid-run"
    assert not (tmp_path / "cut" / "model.safetensors").exists()

    assert run(tmp_path / "cut", "fast").wait(120) == 0
    rec = json.loads(record.read_text())
    assert rec["status"] == "done" and rec["run_info"]["resumed_from_epoch"] >= 2
    a = load_file(str(tmp_path / "full" / "model.safetensors"))
    b = load_file(str(tmp_path / "cut" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_non_finite_loss_stops_with_the_step_and_keeps_the_checkpoint(tmp_path):
    ds = toy_dataset(n_train=100)
    out = tmp_path / "r"
    cfg = TrainConfig(method="test-nan-at", method_params={"step": 9}, epochs=3, batch_size=25, out=str(out), progress="none")
    with pytest.raises(NonFiniteLossError) as info:
        train(cfg, dataset=ds, model=toy_model)
    assert info.value.step == 9 and info.value.epoch == 2
    assert "step 9" in str(info.value) and str(out / "checkpoint.safetensors") in str(info.value)
    rec = json.loads((out / "run.json").read_text())
    assert rec["status"] == "failed" and "step 9" in rec["error"] and len(rec["history"]) == 2
    _, state = load_checkpoint(out / "checkpoint.safetensors")
    assert state["epoch"] == 2 and state["step"] == 8


def test_gradient_clipping_bounds_the_global_norm():
    ds = toy_dataset(n_train=100)
    _RecordGradNorm.norms.clear()
    train(TrainConfig(method="test-record-grad-norm", epochs=1, batch_size=10, lr=1.0, optimizer="sgd", grad_clip=0.05, progress="none"),
          dataset=ds, model=toy_model)
    assert len(_RecordGradNorm.norms) == 10
    assert max(_RecordGradNorm.norms) <= 0.05 + 1e-6
    _RecordGradNorm.norms.clear()
    train(TrainConfig(method="test-record-grad-norm", epochs=1, batch_size=10, lr=1e-3, progress="none"),
          dataset=ds, model=toy_model)
    assert max(_RecordGradNorm.norms) > 0.05


def test_weight_decay_only_on_weight_matrices():
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    groups = build_method("erm").param_groups(model, 0.1)
    decayed = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decayed == {id(model[0].weight), id(model[2].weight)}
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"epochs": 0}, "epochs"),
        ({"batch_size": -1}, "batch_size"),
        ({"lr": 0.0}, "lr"),
        ({"optimizer": "lion"}, "optimizer"),
        ({"schedule": "poly"}, "schedule"),
        ({"warmup_epochs": 5, "epochs": 5}, "warmup"),
        ({"grad_clip": -1.0}, "grad_clip"),
    ],
)
def test_bad_config_values_are_named(changes, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig(**changes).validate()


def test_unknown_config_keys_are_named():
    with pytest.raises(ConfigError, match="unknown training option.*epoch_count"):
        TrainConfig.from_dict({"epoch_count": 3})


class _Events:
    """Records the loop's events in order (an independent account of what the loop did)."""

    def __init__(self, stop_at: int | None = None):
        from dipnet.engine import Callback

        seen, events = self, []
        self.events = events

        class Recorder(Callback):
            def on_fit_start(self, loop, state):
                events.append(("fit_start", state.step))

            def on_period_start(self, loop, state):
                events.append(("period_start", state.epoch))

            def on_step_end(self, loop, state, loss):
                events.append(("step", state.step))
                if stop_at is not None and state.step == stop_at:
                    loop.control.stop("asked by a test")

            def on_evaluate(self, loop, state, row):
                row["extra"] = 1.5
                events.append(("evaluate", row["epoch"]))

            def on_period_end(self, loop, state, row):
                events.append(("period_end", row["epoch"]))

            def on_save(self, loop, state):
                events.append(("save", state.step))

            def on_fit_end(self, loop, state, final):
                events.append(("fit_end", final["epochs"]))

        self.callback = Recorder()


def test_the_loop_emits_its_events_in_order_and_a_callback_can_stop_it(tmp_path):
    """Two epochs of 4 steps: the events come in the documented order, a row a callback extends is
    what the history records; Control.stop ends training after the step that asked, the run is
    checkpointed and recorded as stopped, and running it again resumes there and finishes."""
    ds = toy_dataset(n_train=40, n_test=20)
    cfg = TrainConfig(epochs=2, batch_size=10, lr=1e-2, progress="none", out=str(tmp_path / "run"))
    rec = _Events()
    result = train(cfg, dataset=ds, model=toy_model, callbacks=[rec.callback])
    expected = [("fit_start", 0)]
    for epoch in range(2):
        expected += [("period_start", epoch)] + [("step", 4 * epoch + i) for i in range(1, 5)]
        expected += [("evaluate", epoch), ("period_end", epoch), ("save", 4 * epoch + 4)]
    assert rec.events == expected + [("fit_end", 2)]
    assert [row["extra"] for row in result.history] == [1.5, 1.5]

    stopped = _Events(stop_at=2)
    cfg.out = str(tmp_path / "stopped")
    first = train(cfg, dataset=ds, model=toy_model, callbacks=[stopped.callback])
    assert [e for e in stopped.events if e[0] == "step"] == [("step", 1), ("step", 2)]
    assert read_record(cfg.out)["status"] == "stopped" and first.history == []  # no row for the unfinished epoch
    again = train(cfg, dataset=ds, model=toy_model)
    assert read_record(cfg.out)["status"] == "done" and again.history[-1]["step"] == 8
