"""Comparison methods (SAM/ASAM, RWP family, ICP, baselines) against hand-written oracles:
closed-form perturbations, hand-computed updates, statistical noise tests, replayed RNG."""
from __future__ import annotations

import copy
import dataclasses
import itertools
import math
import re
import typing

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dipnet import noise_table
from dipnet.methods import METHODS, StepContext, build_method
from dipnet.errors import ConfigError
from dipnet.methods.baselines import Cutout
from dipnet.methods.icp import ICP, icp_alpha, layer_weights
from dipnet.methods.rwp import RWP, cosine_sigma
from dipnet.methods.sam import SAM

B, C, L, K = 32, 1, 8, 3


def toy_data(seed: int = 0, n: int = 96):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, C, L, generator=g)
    w = torch.randn(C * L, K, generator=g)
    y = (x.flatten(1) @ w - (x.flatten(1) @ w).mean(0)).argmax(1)
    return x, y


def toy_model(seed: int = 0, bn: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    layers = [nn.Flatten(), nn.Linear(C * L, 16)]
    if bn:
        layers.append(nn.BatchNorm1d(16))
    layers += [nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, K)]
    return nn.Sequential(*layers)


def train_steps(spec, params, model, x, y, steps, epochs=4, lr=0.05, ctx=None):
    method = build_method(spec, params)
    model = method.transform_model(model)
    opt = method.build_optimizer(model, torch.optim.SGD, lr=lr, momentum=0.9)
    ctx = ctx or StepContext(epochs=epochs, bounds=(0.0, 1.0))
    n = x.shape[0]
    for step in range(steps):
        ctx.epoch = min(epochs - 1, step * epochs // steps)
        ctx.step, ctx.progress = step, step / steps
        idx = torch.arange(step * B, step * B + B) % n
        ctx.batch_size = B
        method.step(model, opt, x[idx], y[idx], ctx)
    return model, ctx


def builtin_components():
    """Every component the library registers (test doubles registered by other test modules left out)."""
    return [n for n in METHODS.names() if n != "erm" and METHODS.get(n).__module__.startswith("dipnet.")
            and "features" in METHODS.get(n).inputs]  # token-only methods: tests/test_llm.py


def valid_pairs():
    """Every two-component composition the slots allow (at most one loss and one update)."""
    out = []
    for a, b in itertools.combinations(builtin_components(), 2):
        slots = [METHODS.get(a).slots, METHODS.get(b).slots]
        if not any(("loss" in s1 and "loss" in s2) or ("update" in s1 and "update" in s2) for s1, s2 in [slots]):
            out.append(f"{a}+{b}")
    return out


# settings that make a component bite within 60 steps of the toy problem
PARAMS = {"icp": {"steps": 2, "step_size": 0.05}, "input-noise": {"sigma": 0.05}, "gaussian-examples": {"sigma": 0.05},
          "arwp": {"sigma": 0.01}, "marwp": {"sigma": 0.01}}


def _params(spec):
    out = {}
    for name in spec.split("+"):
        out.update({f"{name}.{k}": v for k, v in PARAMS.get(name, {}).items()})
    return out


@pytest.mark.parametrize("spec", ["erm", *builtin_components()])
def test_method_reduces_loss(spec):
    torch.manual_seed(0)
    x, y = toy_data()
    model = toy_model()
    with torch.no_grad():
        before = F.cross_entropy(model(x), y).item()
    steps = 120 if spec in ("mrwp", "marwp") else 60  # m-RWP updates once per two batches
    model, _ = train_steps(spec, _params(spec), model, x, y, steps=steps)
    model.eval()
    with torch.no_grad():
        after = F.cross_entropy(model(x), y).item()
    assert after < 0.8 * before, (spec, before, after)


@pytest.mark.parametrize("spec", valid_pairs())
def test_every_composition_trains_and_counts(spec):
    """Each pair of components the slots allow runs four steps, stays finite and counts at least
    one example-gradient per example."""
    torch.manual_seed(0)
    x, y = toy_data()
    model, ctx = train_steps(spec, _params(spec), toy_model(), x, y, steps=4)
    assert ctx.example_grads >= 4 * B
    assert all(torch.isfinite(p).all() for p in model.parameters())


def _bad_values(cls):
    """(field, value) pairs the field's own schema must refuse: just past each limit, and a wrong type."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        lim, kind = f.metadata.get("limits"), hints[f.name]
        step = 1 if kind is int else 1e-3
        for edge, past in (("gt", 0), ("ge", -step), ("lt", 0), ("le", step)):
            bound = getattr(lim, edge, None) if lim else None
            if bound is not None:
                yield f.name, bound + past
        yield f.name, object()
        if typing.get_origin(kind) is typing.Literal:
            yield f.name, "no-such-choice"


@pytest.mark.parametrize("name", builtin_components())
def test_every_component_refuses_every_bad_value_with_the_field_named(name):
    cls = METHODS.get(name)
    cases = list(_bad_values(cls))
    assert cases, f"{name} declares no hyperparameters"
    for field, value in cases:
        with pytest.raises(ConfigError, match=rf"{re.escape(name)}\.{field} must be"):
            build_method(name, {field: value})
    with pytest.raises(ConfigError, match="has no hyperparameter"):
        build_method(name, {"no_such_field": 1})


@pytest.mark.parametrize("spec,per_step", [
    ("erm", 1), ("sam", 2), ("asam", 2), ("rwp", 1), ("arwp", 1), ("mrwp", 1), ("marwp", 1),
    ("input-noise", 1), ("mixup", 1), ("cutmix", 1), ("cutout", 1), ("mixup+sam", 2)])
def test_example_gradient_counts(spec, per_step):
    x, y = toy_data()
    _, ctx = train_steps(spec, {}, toy_model(), x, y, steps=4)
    assert ctx.example_grads == 4 * per_step * B


def test_icp_counts_warmup_and_extra_passes():
    x, y = toy_data()
    # epochs=4, warm-up W=1: epoch 0 warm-up and epoch 1 (a(W) = 1, no distillation) 1 pass
    # each; epochs 2, 3: clean pass + T input steps + target forward
    _, ctx = train_steps("icp", {"steps": 3}, toy_model(), x, y, steps=4, epochs=4)
    assert ctx.example_grads == B * (1 + 1 + 2 * (3 + 2))


# ---------------------------------------------------------------- SAM / ASAM

def _grad(model, x, y, params=None):
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    return [p.grad.detach().clone() for p in model.parameters()]


def test_sam_step_equals_hand_computation():
    x, y = toy_data()
    model = toy_model()
    ref = copy.deepcopy(model)
    rho, lr = 0.07, 0.1
    opt = SAM(model.parameters(), torch.optim.SGD, rho=rho, lr=lr, momentum=0.9)
    # hand: g, e = rho g/||g||, g' = grad at w+e, w <- w - lr g' (first momentum step = g')
    g = _grad(ref, x, y)
    norm = torch.sqrt(sum((gi**2).sum() for gi in g))
    w0 = [p.detach().clone() for p in ref.parameters()]
    with torch.no_grad():
        for p, gi in zip(ref.parameters(), g):
            p.add_(rho * gi / norm)
    g2 = _grad(ref, x, y)
    expected = [w - lr * gi for w, gi in zip(w0, g2)]

    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    opt.first_step(zero_grad=True)
    for p, w, gi in zip(model.parameters(), w0, g):
        torch.testing.assert_close(p - w, rho * gi / norm, rtol=1e-5, atol=1e-7)
    F.cross_entropy(model(x), y).backward()
    opt.second_step(zero_grad=True)
    for p, e in zip(model.parameters(), expected):
        torch.testing.assert_close(p.detach(), e, rtol=1e-5, atol=1e-6)


def test_sam_step_closure_matches_first_second_step():
    x, y = toy_data()
    m1, m2 = toy_model(), toy_model()
    o1 = SAM(m1.parameters(), torch.optim.SGD, rho=0.05, lr=0.1)
    o2 = SAM(m2.parameters(), torch.optim.SGD, rho=0.05, lr=0.1)

    def closure():
        loss = F.cross_entropy(m2(x), y)
        loss.backward()
        return loss

    F.cross_entropy(m1(x), y).backward()
    o1.first_step(zero_grad=True)
    F.cross_entropy(m1(x), y).backward()
    o1.second_step(zero_grad=True)
    closure()
    o2.step(closure)
    for a, b in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(a, b)


def test_asam_perturbation_closed_form():
    x, y = toy_data()
    model = toy_model()
    rho, eta = 0.5, 0.01
    opt = SAM(model.parameters(), torch.optim.SGD, rho=rho, adaptive=True, eta=eta, lr=0.1)
    g = _grad(model, x, y)
    w0 = [p.detach().clone() for p in model.parameters()]
    t = [w.abs() + eta for w in w0]
    norm = torch.sqrt(sum(((ti * gi) ** 2).sum() for ti, gi in zip(t, g)))
    opt.first_step()
    for p, w, ti, gi in zip(model.parameters(), w0, t, g):
        torch.testing.assert_close(p - w, rho * ti**2 * gi / norm, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("adaptive", [False, True])
def test_sam_restores_weights_exactly(adaptive):
    x, y = toy_data()
    model = toy_model()
    w0 = [p.detach().clone() for p in model.parameters()]
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.3, adaptive=adaptive, lr=0.0)
    F.cross_entropy(model(x), y).backward()
    opt.first_step(zero_grad=True)
    assert not all(torch.equal(p, w) for p, w in zip(model.parameters(), w0))
    F.cross_entropy(model(x), y).backward()
    opt.second_step()
    assert all(torch.equal(p, w) for p, w in zip(model.parameters(), w0))


def test_sam_component_bn_stats_from_first_pass_only():
    x, y = toy_data()
    model = toy_model(bn=True)
    ref = copy.deepcopy(model)
    ref.train()
    with torch.no_grad():
        ref(x[:B])
    train_steps("sam", {}, model, x[:B], y[:B], steps=1)
    bn, bn_ref = model[2], ref[2]
    assert torch.equal(bn.running_mean, bn_ref.running_mean)
    assert torch.equal(bn.running_var, bn_ref.running_var)
    assert int(bn.num_batches_tracked) == 1


# ---------------------------------------------------------------- RWP family

def test_rwp_filterwise_noise_statistics():
    torch.manual_seed(1)
    lin = nn.Linear(50, 20)
    with torch.no_grad():
        lin.weight.mul_(torch.linspace(0.2, 5.0, 20)[:, None])
        lin.bias.normal_()
    sigma = 0.03
    opt = RWP(lin.parameters(), torch.optim.SGD, sigma=sigma, lr=0.1)
    draws = 200
    w0, b0 = lin.weight.detach().clone(), lin.bias.detach().clone()
    noise_w, noise_b = [], []
    for _ in range(draws):  # the real perturbation path: perturb, read eps, restore
        opt.perturb()
        noise_w.append(lin.weight.detach() - w0)
        noise_b.append(lin.bias.detach() - b0)
        opt.restore()
    noise_w, noise_b = torch.stack(noise_w), torch.stack(noise_b)  # (draws, 20, 50), (draws, 20)
    std_rows = noise_w.permute(1, 0, 2).reshape(20, -1).std(dim=1)
    target_rows = sigma * lin.weight.detach().norm(dim=1)
    # 10,000 samples per row: relative standard error of a std ~ 1/sqrt(2 * 10^4) = 0.7%; allow 5%
    torch.testing.assert_close(std_rows, target_rows, rtol=0.05, atol=0)
    # 1-D rule: one std for the whole vector, sigma * ||b||; 4000 samples -> 1.1% s.e.
    assert abs(noise_b.std().item() / (sigma * lin.bias.norm().item()) - 1) < 0.05
    assert abs(noise_w.mean().item()) < 5 * target_rows.pow(2).mean().sqrt().item() / math.sqrt(noise_w.numel())  # zero mean, 5 s.e.


def test_rwp_noise_removed_bit_identical():
    x, y = toy_data()
    model = toy_model()
    w0 = [p.detach().clone() for p in model.parameters()]
    opt = RWP(model.parameters(), torch.optim.SGD, sigma=0.5, lr=0.1)
    opt.perturb()
    assert not any(torch.equal(p, w) for p, w in zip(model.parameters(), w0) if w.abs().sum() > 0)
    F.cross_entropy(model(x), y).backward()
    opt.restore()
    assert all(torch.equal(p, w) for p, w in zip(model.parameters(), w0))


def _hand_noise(params, sigma, seed, source="fresh"):
    """Replays the RNG (one standard-normal draw for all parameters, in order) with per-filter scales:
    ``torch.randn``, or for the noise table the window at the offset the generator picks (the table
    rebuilt here from its seed)."""
    torch.manual_seed(seed)
    n = sum(p.numel() for p in params)
    if source == "fresh":
        z = torch.randn(n)
    else:
        table = torch.randn(noise_table.TABLE_SIZE, generator=torch.Generator().manual_seed(noise_table._TABLE_SEED))
        offset = int(torch.randint(0, noise_table.TABLE_SIZE - n + 1, ()))
        z = table[offset:offset + n]
    z = z.split([p.numel() for p in params])
    out = []
    for p, zi in zip(params, z):
        norm = p.detach().reshape(p.shape[0], -1).norm(dim=1).reshape(-1, *[1] * (p.ndim - 1)) if p.ndim > 1 else p.detach().norm()
        out.append(zi.view_as(p) * sigma * norm)
    return out


@pytest.mark.parametrize("source", ["fresh", "table"])
def test_mrwp_update_equals_mixed_gradient(source):
    x, y = toy_data()
    xa, ya, xb, yb = x[:B], y[:B], x[B:2 * B], y[B:2 * B]
    model, ref = toy_model(), toy_model()
    sigma, lam, lr = 0.05, 0.3, 0.2
    opt = RWP(model.parameters(), torch.optim.SGD, sigma=sigma, mix=lam, lr=lr, noise=source)
    # hand: g0 clean on batch a, g1 at w + eps on batch b, w <- w - lr (lam g1 + (1 - lam) g0)
    w0 = [p.detach().clone() for p in ref.parameters()]
    g0 = _grad(ref, xa, ya)
    eps = _hand_noise(list(ref.parameters()), sigma, seed=123, source=source)
    with torch.no_grad():
        for p, e in zip(ref.parameters(), eps):
            p.add_(e)
    g1 = _grad(ref, xb, yb)
    expected = [w - lr * (lam * a + (1 - lam) * b) for w, a, b in zip(w0, g1, g0)]

    def closure_for(xx, yy):
        def closure():
            loss = F.cross_entropy(model(xx), yy)
            loss.backward()
            return loss.detach()
        return closure

    opt.step(closure_for(xa, ya))
    assert opt.updated is False
    assert all(torch.equal(p, w) for p, w in zip(model.parameters(), w0))
    torch.manual_seed(123)
    opt.step(closure_for(xb, yb))
    assert opt.updated is True
    for p, e in zip(model.parameters(), expected):
        torch.testing.assert_close(p.detach(), e, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("source", ["fresh", "table"])
def test_plain_rwp_update_uses_perturbed_gradient_and_clean_base_step(source):
    x, y = toy_data()
    model, ref = toy_model(), toy_model()
    sigma, lr, wd = 0.05, 0.2, 0.1
    opt = RWP(model.parameters(), torch.optim.SGD, sigma=sigma, lr=lr, weight_decay=wd, noise=source)
    w0 = [p.detach().clone() for p in ref.parameters()]
    eps = _hand_noise(list(ref.parameters()), sigma, seed=7, source=source)
    with torch.no_grad():
        for p, e in zip(ref.parameters(), eps):
            p.add_(e)
    g1 = _grad(ref, x, y)
    expected = [w - lr * (g + wd * w) for w, g in zip(w0, g1)]  # weight decay on the CLEAN weights
    torch.manual_seed(7)

    def closure():
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss.detach()

    opt.step(closure)
    for p, e in zip(model.parameters(), expected):
        torch.testing.assert_close(p.detach(), e, rtol=1e-5, atol=1e-6)


def test_arwp_accumulator_and_noise_scaling():
    x, y = toy_data()
    model = toy_model()
    eta, beta = 0.3, 0.9
    opt = RWP(model.parameters(), torch.optim.SGD, sigma=0.0, adaptive=True, eta=eta, beta=beta, lr=0.0)
    ga = _grad(model, x[:B], y[:B])
    gb = _grad(model, x[B:2 * B], y[B:2 * B])
    for xx, yy in ((x[:B], y[:B]), (x[B:2 * B], y[B:2 * B])):
        def closure(xx=xx, yy=yy):
            loss = F.cross_entropy(model(xx), yy)
            loss.backward()
            return loss.detach()
        opt.step(closure)
    for p, a, b in zip(model.parameters(), ga, gb):
        torch.testing.assert_close(opt.accumulator(p), beta * a**2 + b**2, rtol=1e-5, atol=1e-10)
    # noise std per filter: sigma ||w_j|| / sqrt(1 + eta * sum_filter F)
    lin = model[1]
    opt.set_sigma(0.02)
    idx = opt.layout.index(lin.weight)
    noise = torch.stack([opt.sample_noise()[idx] for _ in range(400)])
    fsum = opt.accumulator(lin.weight).sum(dim=1)
    target = 0.02 * lin.weight.detach().norm(dim=1) / torch.sqrt(1 + eta * fsum)
    torch.testing.assert_close(noise.permute(1, 0, 2).reshape(16, -1).std(dim=1), target, rtol=0.08, atol=0)


def _released_marwp_std(params, fisher, sigma, eta):
    """The noise std of nblt/mARWP ``train_marwp.py`` (lines 329-344), written out as released:
    F summed over ``view(sh[0], -1)`` rows, a 1-D parameter's std from its whole-vector norm."""
    out = []
    for mp, f in zip(params, fisher):
        sh = mp.shape
        sh_mul = int(np.prod(sh[1:]))
        fsum = f.view(sh[0], -1).sum(dim=1, keepdim=True).repeat(1, sh_mul).view(sh)
        if len(mp.shape) > 1:
            std = sigma * mp.view(sh[0], -1).norm(dim=1, keepdim=True).repeat(1, sh_mul).view(mp.shape)
        else:
            std = torch.full_like(mp, sigma * (mp.view(-1).norm().item() + 1e-16))
        out.append(std / torch.sqrt(1 + eta * fsum))
    return out


def test_arwp_noise_std_equals_the_released_code_on_biases_too():
    torch.manual_seed(0)
    model = toy_model(bn=True)  # Linear weights and biases, BatchNorm weight and bias: 1-D parameters
    params = list(model.parameters())
    opt = RWP(params, torch.optim.SGD, sigma=0.02, adaptive=True, eta=0.1, beta=0.99, lr=0.0)
    fisher = [torch.rand_like(p) * 50.0 for p in params]  # a large accumulator: the per-element bias case shows
    opt.F = opt.layout.flat(fisher)
    ours = [s.expand_as(p) for s, p in zip(opt.noise_std(), params)]
    released = _released_marwp_std([p.detach() for p in params], fisher, 0.02, 0.1)
    for p, a, b in zip(params, ours, released):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-12)
    bias = model[1].bias
    i = next(k for k, q in enumerate(params) if q is bias)
    assert ours[i].unique().numel() == bias.numel()  # one std per element of a bias


def test_weight_perturbation_leaves_dipnet_sigmas_alone():
    """SAM's ascent and RWP's noise move the model's own weights, never the projections' log-sigmas
    (DIPNet declares them fixed), and SAM's norm leaves their gradients out."""
    from dipnet.projection import projection_parameters

    x, y = toy_data()
    for spec in ("dipnet+sam", "dipnet+rwp", "dipnet+mrwp"):
        method = build_method(spec, {"dipnet.sigma": 0.1})
        model = method.transform_model(toy_model())
        opt = method.build_optimizer(model, torch.optim.SGD, lr=0.0)
        sigmas = projection_parameters(model)
        before = [s.detach().clone() for s in sigmas]
        own_before = [p.detach().clone() for p in model.parameters() if all(p is not s for s in sigmas)]
        seen = []

        def closure():
            seen.append([s.detach().clone() for s in sigmas])
            seen.append([p.detach().clone() for p in model.parameters() if all(p is not s for s in sigmas)])
            loss = F.cross_entropy(model(x[:B]), y[:B])
            loss.backward()
            return loss.detach()

        for _ in range(2):
            method.update(model, opt, closure, StepContext())
        for snapshot in seen[::2]:
            assert all(torch.equal(a, b) for a, b in zip(snapshot, before)), spec
        assert any(not torch.equal(a, b) for snap in seen[1::2] for a, b in zip(snap, own_before)), spec


def test_sam_norm_counts_only_the_perturbed_weights():
    from dipnet.projection import projection_parameters

    x, y = toy_data()
    model = build_method("dipnet").transform_model(toy_model())
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.1, lr=0.0, fixed=projection_parameters(model))
    F.cross_entropy(model(x), y).backward()
    own = [p for p in model.parameters() if all(p is not s for s in projection_parameters(model))]
    torch.testing.assert_close(opt.grad_norm(), torch.sqrt(sum((p.grad**2).sum() for p in own)))


def test_arwp_cosine_sigma_schedule():
    assert cosine_sigma(0.001, 0.0) == pytest.approx(0.001)
    assert cosine_sigma(0.001, 1.0) == pytest.approx(0.011)
    assert cosine_sigma(0.001, 0.5) == pytest.approx(0.006)


def test_mrwp_bn_stats_from_clean_passes_only():
    x, y = toy_data()
    model = toy_model(bn=True)
    method = build_method("mrwp", {"sigma": 0.2})
    opt = method.build_optimizer(model, torch.optim.SGD, lr=0.1)
    ctx = StepContext(batch_size=B)
    bn = model[2]
    for i, expect_update in ((0, False), (1, True)):
        before = (bn.running_mean.clone(), bn.running_var.clone(), int(bn.num_batches_tracked))
        xb, yb = x[i * B:(i + 1) * B], y[i * B:(i + 1) * B]

        def closure(xb=xb, yb=yb):
            loss = method.loss(model, xb, yb, ctx)
            loss.backward()
            return loss.detach()

        assert method.update(model, opt, closure, ctx) is expect_update
        changed = not torch.equal(bn.running_mean, before[0])
        assert changed is (not expect_update)  # clean half-step updates BN; perturbed one does not
        if expect_update:
            assert torch.equal(bn.running_var, before[1]) and int(bn.num_batches_tracked) == before[2]


@pytest.mark.parametrize("cls,kwargs", [
    (SAM, {"rho": 0.05}), (SAM, {"rho": 0.5, "adaptive": True}),
    (RWP, {"sigma": 0.05, "mix": 0.5, "adaptive": True}), (RWP, {"sigma": 0.05})])
def test_wrapper_state_dict_round_trip(cls, kwargs):
    x, y = toy_data()
    m1 = toy_model()
    o1 = cls(m1.parameters(), torch.optim.SGD, lr=0.1, momentum=0.9, **kwargs)

    def closure_for(model, i):
        def closure():
            loss = F.cross_entropy(model(x[i * B:(i + 1) * B]), y[i * B:(i + 1) * B])
            loss.backward()
            return loss.detach()
        return closure

    def one_step(model, opt, i):
        if isinstance(opt, SAM):
            opt.zero_grad()
            closure_for(model, i)()
        opt.step(closure_for(model, i))
        opt.zero_grad()

    for i in range(3):
        one_step(m1, o1, i)
    m2 = copy.deepcopy(m1)
    o2 = cls(m2.parameters(), torch.optim.SGD, lr=0.5, momentum=0.1, **kwargs)
    o2.load_state_dict(copy.deepcopy(o1.state_dict()))  # as a checkpoint file would
    assert o2.param_groups[0]["lr"] == 0.1 and o2.param_groups[0]["momentum"] == 0.9
    for i in (0, 1, 2):
        torch.manual_seed(10 + i)
        one_step(m1, o1, i)
        torch.manual_seed(10 + i)
        one_step(m2, o2, i)
    for a, b in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(a, b)


# ---------------------------------------------------------------- ICP

def _hand_icp_loss(model, x, y, steps, eta, alpha):
    lin1, lin2, lin3 = model[1], model[3], model[5]

    def feats(inp):
        h1 = torch.relu(lin1(inp.flatten(1)))
        h2 = torch.relu(lin2(h1))
        return [h1, h2], lin3(h2)

    (h1, h2), logits = feats(x)
    xi = x.clone()
    for _ in range(steps):
        xi.requires_grad_(True)
        g, = torch.autograd.grad(F.cross_entropy(feats(xi)[1], y, reduction="sum"), xi)
        xi = (xi - eta * g).detach()
    with torch.no_grad():
        (t1, t2), _ = feats(xi)
    w = [1.0, math.cos(math.pi / 4)]
    return alpha * F.cross_entropy(logits, y) + (1 - alpha) * (w[0] * F.mse_loss(h1, t1) + w[1] * F.mse_loss(h2, t2))


def test_icp_loss_equals_hand_formula():
    x, y = toy_data()
    x, y = x[:B], y[:B]
    model = toy_model()
    icp = ICP(steps=3, step_size=0.1, direction="sgd", warmup=0.2)
    ctx = StepContext(epoch=4, epochs=10)
    alpha = math.cos(math.pi * (4 - 2) / (2 * (10 - 2)))
    got = icp.loss(model, x, y, ctx)
    want = _hand_icp_loss(model, x, y, 3, 0.1, alpha)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    assert ctx.example_grads == B * (3 + 2)
    # no hooks left behind: inference is a plain forward
    assert all(not m._forward_hooks for m in model.modules())


@pytest.mark.parametrize("variant", ["sgd", "adam", "ademamix"])
def test_icp_each_input_step_lowers_the_loss(variant):
    x, y = toy_data()
    model = toy_model()
    model.train()
    losses = []
    for t in range(0, 5):
        xi = ICP(steps=t, step_size=0.02, direction=variant).constructive_input(model, x, y)
        with torch.no_grad():
            losses.append(F.cross_entropy(model(xi), y).item())
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    assert model.training


def test_icp_adam_first_step_is_signed_gradient():
    x, y = toy_data()
    model = toy_model()
    xi = ICP(steps=1, step_size=0.01, direction="adam").constructive_input(model, x, y)
    xr = x.clone().requires_grad_(True)
    g, = torch.autograd.grad(F.cross_entropy(model(xr), y, reduction="sum"), xr)
    torch.testing.assert_close(xi, x - 0.01 * g.sign(), rtol=0, atol=1e-6)


def test_icp_schedule_and_layer_weights():
    assert icp_alpha(0, 100, 25) == 1.0 and icp_alpha(24, 100, 25) == 1.0
    assert icp_alpha(25, 100, 25) == pytest.approx(1.0)
    assert icp_alpha(25 + 75 // 2, 100, 25) == pytest.approx(math.cos(math.pi * 37 / 150))
    assert layer_weights(4) == pytest.approx([1.0, math.cos(math.pi / 12), math.cos(math.pi / 6), math.cos(math.pi / 4)])
    assert layer_weights(3, "uniform") == [1.0, 1.0, 1.0]


# ---------------------------------------------------------------- baselines

def test_input_noise_std_and_bounds():
    x = torch.full((200, 1, 50), 0.5)
    ctx = StepContext(bounds=(0.0, 1.0))
    xn, _ = build_method("input-noise", {"sigma": 0.1}).transform_batch(None, x, torch.zeros(200, dtype=torch.long), ctx)
    assert abs((xn - x).std().item() - 0.1) < 0.003  # 10^4 samples: s.e. 0.0007
    xn, _ = build_method("input-noise", {"sigma": 2.0}).transform_batch(None, x, torch.zeros(200, dtype=torch.long), ctx)
    assert xn.min() >= 0 and xn.max() <= 1


def test_mixup_convex_combination_and_labels():
    x, y = toy_data()
    model = toy_model()
    method = build_method("mixup", {"alpha": 0.4})
    torch.manual_seed(5)
    xm, ym = method.transform_batch(model, x, y, StepContext())
    torch.manual_seed(5)
    g = torch._standard_gamma(torch.full((2,), 0.4))
    lam = float(g[0] / g.sum())  # Beta(0.4, 0.4) as a ratio of Gammas
    perm = torch.randperm(x.shape[0])
    torch.testing.assert_close(xm, lam * x + (1 - lam) * x[perm])
    oh = F.one_hot(y, K).float()
    torch.testing.assert_close(ym, lam * oh + (1 - lam) * oh[perm])
    torch.testing.assert_close(ym.sum(1), torch.ones(x.shape[0]))


@pytest.mark.parametrize("alpha", [0.2, 1.0])
def test_beta_draws_match_beta_moments(alpha):
    from dipnet.methods.baselines import sample_beta
    torch.manual_seed(0)
    lam = torch.tensor([sample_beta(alpha) for _ in range(4000)])
    var = 1 / (4 * (2 * alpha + 1))  # Beta(a, a): mean 1/2, variance 1 / (4 (2a + 1))
    assert abs(lam.mean().item() - 0.5) < 5 * math.sqrt(var / 4000)
    assert abs(lam.var().item() / var - 1) < 0.1


@pytest.mark.parametrize("shape", [(6, 1, 20), (6, 20), (6, 2, 10, 12)])
def test_cutmix_box_and_area_labels(shape):
    torch.manual_seed(0)
    x = torch.rand(shape) + 1.0
    y = torch.arange(6) % K
    model = toy_model()
    torch.manual_seed(3)
    xm, ym = build_method("cutmix").transform_batch(model, x, y, StepContext())
    torch.manual_seed(3)
    g = torch._standard_gamma(torch.full((2,), 1.0))
    lam = float(g[0] / g.sum())
    d = 2 if len(shape) == 4 else 1
    spatial = shape[-d:]
    box = []
    for n in spatial:
        side = int(round((math.sqrt(1 - lam) if d == 2 else 1 - lam) * n))
        c = int(torch.randint(n, (1,)))
        box.append((max(0, c - side // 2), min(n, c - side // 2 + side)))
    perm = torch.randperm(6)
    want = x.clone()
    for i in range(6):
        for pos in torch.cartesian_prod(*[torch.arange(n) for n in spatial]).reshape(-1, d).tolist():
            if all(lo <= q < hi for q, (lo, hi) in zip(pos, box)):
                want[(i, Ellipsis, *pos)] = x[(perm[i], Ellipsis, *pos)]
    assert torch.equal(xm, want)
    area = math.prod(hi - lo for lo, hi in box) / math.prod(spatial)
    oh = F.one_hot(y, K).float()
    torch.testing.assert_close(ym, (1 - area) * oh + area * oh[perm])
    torch.testing.assert_close(ym.sum(1), torch.ones(6))


@pytest.mark.parametrize("shape", [(5, 1, 8, 8), (5, 16), (5, 2, 16)])
def test_cutout_zeroes_exactly_the_stated_area(shape):
    x = torch.rand(shape) + 1.0
    cut = Cutout(size=0.5)
    torch.manual_seed(4)
    xc, _ = cut.transform_batch(None, x, torch.zeros(5, dtype=torch.long), StepContext())
    torch.manual_seed(4)
    d = 2 if len(shape) == 4 else 1
    spatial = shape[-d:]
    starts = [(torch.randint(n, (5, 1)) - int(round(0.5 * n)) // 2).flatten().tolist() for n in spatial]
    want = x.clone()
    for i in range(5):
        for pos in torch.cartesian_prod(*[torch.arange(n) for n in spatial]).reshape(-1, d).tolist():
            if all(s[i] <= q < s[i] + int(round(0.5 * n)) for q, s, n in zip(pos, starts, spatial)):
                want[(i, Ellipsis, *pos)] = 0.0
    assert torch.equal(xc, want)
    assert (xc == 0).any()


def test_cutout_fill_respects_bounds():
    x = torch.rand(4, 1, 10) + 2.0
    xc, _ = Cutout(size=0.3).transform_batch(None, x, torch.zeros(4, dtype=torch.long), StepContext(bounds=(1.0, 4.0)))
    assert xc.min() >= 1.0


# ---------------------------------------------------------------- errors and composition

@pytest.mark.parametrize("spec,params,needle", [
    ("sam", {"rho": -1}, "rho"), ("asam", {"eta": -0.1}, "eta"), ("rwp", {"sigma": -0.1}, "sigma"),
    ("mrwp", {"mix": 1.5}, "mix"), ("arwp", {"beta": 2}, "beta"), ("arwp", {"sigma_schedule": "linear"}, "sigma_schedule"),
    ("icp", {"steps": -1}, "steps"), ("icp", {"direction": "lbfgs"}, "direction"), ("icp", {"warmup": 1.0}, "warmup"),
    ("cutout", {"size": 0}, "size"), ("mixup", {"alpha": 0}, "alpha"), ("input-noise", {"sigma": float("nan")}, "sigma"),
    ("sam+mrwp", {}, "update"), ("icp+sam", {"rho": "abc"}, "rho")])
def test_bad_hyperparameters_raise_config_error(spec, params, needle):
    with pytest.raises(ConfigError, match=needle):
        build_method(spec, params)


def test_bad_shapes_and_base_optimizer():
    with pytest.raises(ConfigError, match="images"):
        build_method("cutout").transform_batch(None, torch.rand(2, 1, 2, 3, 4), torch.zeros(2, dtype=torch.long), StepContext())
    with pytest.raises(ConfigError, match="base_optimizer"):
        SAM(toy_model().parameters(), "sgd", lr=0.1)
    with pytest.raises(ConfigError, match="layers"):
        ICP(layers="nope").loss(toy_model(), *toy_data(n=4), StepContext(epoch=3, epochs=4))


def test_dipnet_composes_with_weight_perturbation():
    x, y = toy_data()
    for spec in ("dipnet+mrwp", "dipnet+sam"):
        model, ctx = train_steps(spec, {"dipnet.sigma": 0.05}, toy_model(), x, y, steps=4)
        assert ctx.example_grads == 4 * B * (2 if spec.endswith("sam") else 1)
