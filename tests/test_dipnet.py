"""The dipnet / noise-layers method components through build_method and the engine."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from dipnet.engine import TrainConfig, load_run, train
from dipnet.methods import StepContext, build_method
from dipnet.methods import Component
from dipnet.errors import ConfigError
from dipnet.projection import projections


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 3))


def test_build_method_routes_hyperparameters_and_projects():
    method = build_method("dipnet", {"sigma": "0.2", "trajectories": "3", "alpha": 0.01, "beta": 0.02})
    comp = method.components[0]
    assert (comp.sigma, comp.trajectories, comp.alpha, comp.beta) == (0.2, 3, 0.01, 0.02)
    model = method.transform_model(_mlp())
    assert [n for n, _ in projections(model)] == ["1", "3"]
    assert all(p.learnable and torch.allclose(p.sigma, torch.tensor(0.2)) for _, p in projections(model))


def test_loss_counts_m_times_batch_and_logs_parts():
    torch.manual_seed(0)
    method = build_method("dipnet", {"trajectories": 4, "stability": 0.1, "alpha": 1e-3, "beta": 1e-3, "sigma": 0.1})
    model = method.transform_model(_mlp())
    ctx = StepContext()
    x, y = torch.randn(5, 10), torch.randint(0, 3, (5,))
    loss = method.loss(model, x, y, ctx)
    assert ctx.example_grads == 20 and loss.ndim == 0
    assert {"dip_stability", "dip_prior"} <= set(ctx.logs)
    # the prior is the direct sum over the 10 + 16 per-feature variances at sigma = 0.1
    lam = 0.1**2
    assert ctx.logs["dip_prior"] == pytest.approx(26 * (1e-3 * lam - 1e-3 * torch.log(torch.tensor(lam)).item()), rel=1e-5)


def test_speed_options_reach_every_projection():
    default = build_method("dipnet").transform_model(_mlp())
    assert all((p.noise, p.input_grad_fraction) == ("auto", None) for _, p in projections(default))
    exact = build_method("dipnet", {"noise": "fresh", "input_grad_fraction": "1"}).transform_model(_mlp())
    assert all((p.noise, p.input_grad_fraction) == ("fresh", 1.0) for _, p in projections(exact))


def test_noise_layers_is_fixed_and_has_no_prior():
    method = build_method("noise-layers", {"sigma": 0.3})
    model = method.transform_model(_mlp())
    assert list(p for n, p in model.named_parameters() if "dipnet" in n) == []
    assert all(not p.learnable for _, p in projections(model))
    with pytest.raises(ConfigError, match="fixed sigma"):
        build_method("noise-layers", {"alpha": 0.1})


@pytest.mark.parametrize("update", ["", "+sam"])
def test_sigma_lr_scales_the_sigmas_step_and_zero_freezes_them(update):
    """SGD without momentum: a parameter's first step is -lr * grad, so the sigmas' step under
    sigma_lr = s is s times their step under sigma_lr = 1 (same seed, same gradient), the weights'
    the same; under a schedule the sigmas' learning rate stays s times the weights'."""
    def first_step(sigma_lr: float) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.optim.Optimizer]:
        torch.manual_seed(0)
        method = build_method("dipnet" + update, {"dipnet.sigma_lr": sigma_lr, "dipnet.noise": "fresh"})
        model = method.transform_model(_mlp())
        opt = method.build_optimizer(model, torch.optim.SGD, lr=0.1)
        before = [p.detach().clone() for p in model.parameters()]
        method.step(model, opt, torch.randn(8, 10), torch.randint(0, 3, (8,)), StepContext(batch_size=8))
        steps = [p.detach() - b for p, b in zip(model.parameters(), before)]
        sig = [s for (n, _), s in zip(model.named_parameters(), steps) if "sigma" in n]
        return sig, [s for (n, _), s in zip(model.named_parameters(), steps) if "sigma" not in n], opt
    sig1, w1, _ = first_step(1.0)
    sig3, w3, opt = first_step(3.0)
    sig0, w0, _ = first_step(0.0)
    assert len(sig1) == 2 and all(s.abs().max() > 0 for s in sig1)
    for a, b in zip(sig1, sig3):
        torch.testing.assert_close(b, 3 * a)
    assert all(torch.equal(s, torch.zeros_like(s)) for s in sig0)
    for a, b, c in zip(w1, w3, w0):
        torch.testing.assert_close(b, a)
        torch.testing.assert_close(c, a)
    base = getattr(opt, "base_optimizer", opt)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(base, T_max=10)
    for _ in range(4):
        base.step()
        sched.step()
    lrs = sorted(g["lr"] for g in base.param_groups)
    assert lrs[-1] == pytest.approx(3 * lrs[0]) and lrs[0] < 0.1


def test_sigma_lr_holds_through_the_engines_schedule(tmp_path):
    """The engine sets every group's learning rate from the schedule at each step: the sigmas'
    group keeps its multiple (sigma_lr = 0: sigma never moves through a whole cosine run; 3: its
    learning rate ends three times the weights'), and a multiple changes what is learned."""
    from dipnet.engine import Trainer

    def run(sigma_lr: float, out: str) -> Trainer:
        cfg = TrainConfig(data="synthetic", model="mlp", method="dipnet", epochs=2, batch_size=64, lr=1e-2, seed=0,
                          schedule="cosine", out=str(tmp_path / out), progress="none",
                          method_params={"sigma_lr": sigma_lr, "noise": "fresh"})
        trainer = Trainer(cfg)
        trainer.fit()
        return trainer

    frozen, base, fast = run(0.0, "a"), run(1.0, "b"), run(3.0, "c")
    start = torch.log(torch.tensor(frozen.method.components[0].sigma))
    assert all(torch.equal(p.log_sigma, torch.full_like(p.log_sigma, start)) for _, p in projections(frozen.model))
    assert any(not torch.allclose(p.log_sigma, torch.full_like(p.log_sigma, start)) for _, p in projections(base.model))
    lrs = sorted(g["lr"] for g in fast.optimizer.param_groups)
    assert lrs[-1] == pytest.approx(3 * lrs[0]) and 0 < lrs[0] < 1e-2
    assert not all(torch.equal(p.log_sigma, q.log_sigma)
                   for (_, p), (_, q) in zip(projections(base.model), projections(fast.model)))


def test_sigma_lr_is_refused_where_it_cannot_apply():
    with pytest.raises(ConfigError, match="sigma_lr does not apply"):
        build_method("noise-layers", {"sigma_lr": 2.0})
    with pytest.raises(ConfigError, match="sigma_lr must be"):
        build_method("dipnet", {"sigma_lr": -1})
    pytest.importorskip("transformers")
    from dipnet.integrations.hf import DIPNetCallback
    with pytest.raises(ConfigError, match="use MethodTrainer"):
        DIPNetCallback(sigma_lr=2.0)
    method = build_method("dipnet", {"sigma_lr": 2.0})
    with pytest.raises(ConfigError, match="pass lr="):
        method.build_optimizer(method.transform_model(_mlp()), torch.optim.SGD)


@pytest.mark.parametrize("params,match", [
    ({"sigma": 0}, "sigma must be"),
    ({"trajectories": 0}, "trajectories must be"),
    ({"alpha": -1}, "alpha must be"),
    ({"beta": -0.5}, "beta must be"),
    ({"scale": "log"}, "scale must be"),
    ({"granularity": "x"}, "granularity must be"),
    ({"noise": "uniform"}, "noise must be"),
    ({"input_grad_fraction": 0}, "input_grad_fraction must be"),
    ({"input_grad_fraction": 1.5}, "input_grad_fraction must be"),
])
def test_bad_hyperparameters(params, match):
    with pytest.raises(ConfigError, match=match):
        build_method("dipnet", params)


def test_composes_with_an_update_method_and_rejects_a_second_loss():
    from dipnet.methods import Method
    from dipnet.methods.dipnet import DIPNet

    class _Update(Component):
        name = "test-update"
        slots = frozenset({"update"})

        def update(self, model, optimizer, closure, ctx):
            optimizer.zero_grad(set_to_none=True)
            closure()
            optimizer.step()
            return True

    method = Method([DIPNet(sigma=0.1), _Update()])  # slots "model"+"loss" and "update" do not clash
    assert method.name == "dipnet+test-update"
    with pytest.raises(ConfigError, match="both set the loss"):
        build_method("dipnet+noise-layers", {"dipnet.sigma": 0.1})


def _toy():
    from dipnet.data import Dataset, DatasetInfo

    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 10, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    info = DatasetInfo("toy", (10,), 3, ("a", "b", "c"), (-10.0, 10.0))
    return Dataset(x[:200], y[:200], x[200:], y[200:], info)


def test_engine_run_records_sigma_and_reloads(tmp_path):
    ds = _toy()
    cfg = TrainConfig(data="toy", method="dipnet", epochs=3, batch_size=50, lr=1e-2, seed=0,
                      out=str(tmp_path / "r"), progress="none",
                      method_params={"trajectories": 2, "sigma": 0.1, "alpha": 1e-3, "beta": 1e-3})
    result = train(cfg, dataset=ds, model=lambda info: _mlp())
    assert result.final["example_grads"] == 3 * 200 * 2
    sig = result.history[-1]["method"]["sigma"]
    assert set(sig) == {"1", "3"} and all(v > 0 for v in sig.values())
    assert result.history[-1]["method"]["sigma"] != result.history[0]["method"]["sigma"] or len(result.history) == 1
    loaded = load_run(tmp_path / "r", dataset=ds, model=lambda info: _mlp())
    x = ds.x_test
    with torch.no_grad():
        assert torch.equal(loaded.model(x), result.model.eval()(x))


def test_train_config_on_synthetic_records_sigma_per_epoch(tmp_path):
    cfg = TrainConfig(data="synthetic", model="mlp", method="dipnet", epochs=2, batch_size=64, lr=1e-2, seed=0,
                      out=str(tmp_path / "s"), progress="none",
                      method_params={"sigma": 0.2, "trajectories": 2, "alpha": 1e-2, "beta": 1e-3})
    result = train(cfg)
    assert len(result.history) == 2
    names = [n for n, _ in projections(result.model)]
    for epoch in result.history:
        sig = epoch["method"]["sigma"]
        assert list(sig) == names and all(v > 0 for v in sig.values())
        assert min(sig.values()) <= epoch["method"]["sigma_mean"] <= max(sig.values())
    # every example of every epoch was evaluated in 2 trajectories
    n_train = len(load_run(tmp_path / "s").dataset.y_train)
    assert result.final["example_grads"] == 2 * 2 * n_train


@pytest.mark.parametrize("update", ["sam", "mrwp"])
def test_dipnet_composes_with_registered_update_methods(tmp_path, update):
    from dipnet.methods import METHODS

    if update not in METHODS:
        pytest.skip(f"{update} is not registered")
    cfg = TrainConfig(data="synthetic", model="mlp", method=f"dipnet+{update}", epochs=1, batch_size=64, lr=1e-2,
                      seed=0, out=str(tmp_path / update), progress="none",
                      method_params={"dipnet.sigma": 0.1, "trajectories": 2})
    result = train(cfg)
    assert result.history[-1]["method"]["sigma"] and projections(result.model)
    assert result.final["example_grads"] > 0


@pytest.mark.parametrize("batchnorm", ["pooled", "per-trajectory"])
def test_batchnorm_statistics_pooled_or_per_trajectory(batchnorm):
    """pooled: one forward of the m x B stacked batch; per-trajectory: m forwards of B rows, as m
    separate samples would be (second implementation: the model called by hand, same noise seed)."""
    import copy

    import torch.nn.functional as F
    from torch import nn

    from dipnet.projection import DIPNetLoss, project

    torch.manual_seed(0)
    model = project(nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)), sigma=0.3)
    twin = copy.deepcopy(model)
    x, y = torch.randn(5, 6), torch.randint(0, 3, (5,))
    loss_fn = DIPNetLoss(trajectories=3, prior=(0.0, 0.0), batchnorm=batchnorm)
    torch.manual_seed(1)
    loss = loss_fn(model, x, y)
    torch.manual_seed(1)
    logits = twin(x.repeat(3, 1)) if batchnorm == "pooled" else torch.cat([twin(x) for _ in range(3)])
    torch.testing.assert_close(loss, F.cross_entropy(logits, y.repeat(3)), rtol=0, atol=0)
    bn, bn_twin = model[1], twin[1]
    assert torch.equal(bn.running_mean, bn_twin.running_mean) and torch.equal(bn.running_var, bn_twin.running_var)
    assert int(bn.num_batches_tracked) == (1 if batchnorm == "pooled" else 3)


def test_per_trajectory_is_the_pooled_path_without_batchnorm():
    from torch import nn

    from dipnet.projection import DIPNetLoss, project

    torch.manual_seed(0)
    model = project(nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)), sigma=0.3)
    x, y = torch.randn(5, 6), torch.randint(0, 3, (5,))
    losses = []
    for mode in ("pooled", "per-trajectory"):
        torch.manual_seed(1)
        losses.append(DIPNetLoss(trajectories=2, batchnorm=mode)(model, x, y))
    assert torch.equal(*losses)
