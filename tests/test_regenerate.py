"""The noise is regenerated in backward, not saved (dipnet.projection.regenerate), and eval mode
gives the stripped net. Oracles: the saving implementation (plain ``addcmul``, the layer keeping ``u``)
for values and gradients, the draws recorded in the forward for the regenerated noise, a
byte count of what autograd keeps for the memory, and the hook dictionaries themselves."""
from __future__ import annotations

import contextlib
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dipnet.data import DatasetInfo
from dipnet.models import build_model
from dipnet.noise_table import draw_like
from dipnet.projection import DIPNetLoss, predict, project, projections, sampling, strip
from dipnet.projection import _fast, fused, regenerate

MNIST = DatasetInfo("mnist", (1, 28, 28), 10, tuple("0123456789"), (0.0, 1.0))
CIFAR = DatasetInfo("cifar10", (3, 32, 32), 10, tuple("0123456789"), (0.0, 1.0))
MODELS = {  # name -> (model, info, batch): the three models of the memory targets
    "mlp": (lambda: build_model("mlp", MNIST, widths=(512, 512)), MNIST, 32),
    "resnet20": (lambda: build_model("resnet20", CIFAR), CIFAR, 8),
    "vit": (lambda: build_model("vit", CIFAR), CIFAR, 8),
}


class _NoRecipe:
    """The saving implementation's stand-in for RegeneratedInput: the layer keeps u itself."""

    def __init__(self, *args) -> None:
        pass

    def __enter__(self) -> "_NoRecipe":
        return self

    def __exit__(self, *exc) -> None:
        pass


@contextlib.contextmanager
def saving_implementation(monkeypatch):
    """Noise and projected inputs saved for backward the plain way (autograd's addcmul)."""
    with monkeypatch.context() as mp:
        mp.setattr(_fast, "RegeneratedInput", _NoRecipe)
        mp.setattr(_fast, "sample", lambda x, sigma, eps, draw: torch.addcmul(x, sigma, eps))
        yield


def saved_bytes(fn) -> int:
    """Bytes autograd keeps for backward during ``fn``: each distinct tensor memory once (a ReLU's
    output kept by the next layer too counts once), parameters excluded. Counted by a saved-tensor
    hook, which dipnet's own hooks pass what they keep to."""
    seen: dict[tuple[int, int], int] = {}
    params: set[int] = set()

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.data_ptr() not in params:
            seen[(t.data_ptr(), t.numel() * t.element_size())] = t.numel() * t.element_size()
        return t

    def run() -> None:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn()

    return run, params, seen


def kept(fn, model: nn.Module) -> int:
    run, params, seen = saved_bytes(fn)
    params.update(p.data_ptr() for p in model.parameters())
    run()
    return sum(seen.values())


def _batch(info: DatasetInfo, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, *info.input_shape, generator=g), torch.randint(0, 10, (n,), generator=g)


def _grads(model: nn.Module, loss: torch.Tensor) -> list[torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss.backward()
    return [p.grad.clone() if p.grad is not None else None for p in model.parameters()]


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("m", [1, 3])
@pytest.mark.parametrize("opts", [{}, {"noise": "fresh", "input_grad_fraction": 1.0}, {"scale": "absolute"}],
                         ids=["default", "fresh-exact", "absolute"])
def test_gradients_equal_the_saving_implementation(monkeypatch, name, m, opts):
    """Same seed, same model: loss and every weight gradient equal bit for bit; sigma gradients
    equal up to float summation order (regenerated: dot products; saved: autograd's mul and sum)."""
    build, info, n = MODELS[name]
    torch.manual_seed(0)
    net = project(build(), sigma=0.2, **opts).train()
    with torch.no_grad():
        for _, p in projections(net):
            p.log_sigma.uniform_(-2.5, -1.0)
    x, y = _batch(info, n)
    results = []
    for saving in (False, True):
        model = copy.deepcopy(net)
        torch.manual_seed(3)
        with saving_implementation(monkeypatch) if saving else contextlib.nullcontext():
            loss = DIPNetLoss(trajectories=m)(model, x, y)
            results.append((loss.detach(), _grads(model, loss), model.state_dict()))
    (la, ga, sa), (lb, gb, sb) = results
    assert torch.equal(la, lb)
    sigmas = [k.endswith("log_sigma") for k, _ in net.named_parameters()]
    for a, b, is_sigma in zip(ga, gb, sigmas):
        assert (a is None and b is None) or (torch.allclose(a, b, rtol=1e-5, atol=1e-8) if is_sigma else torch.equal(a, b))
    assert any(sigmas)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)  # running statistics too


@pytest.mark.parametrize("noise", ["table", "fresh"])
def test_regenerated_noise_is_the_forward_noise_bit_for_bit(monkeypatch, noise):
    """Every draw the backward regenerates is, value for value, a draw the forward made; every
    projected input rebuilt for a layer's weight gradient is the one the layer saw."""
    net = project(nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3)),
                  sigma=0.3, noise=noise, input_grad_fraction=1.0).train()
    drawn, redrawn, seen, rebuilt = [], [], [], []
    real_draw, real_redraw, real_build = fused.draw_like, regenerate.redraw, regenerate._Recipe.build

    def spy_draw(x, source):
        eps, draw = real_draw(x, source)
        drawn.append(eps.clone())
        return eps, draw

    def spy_redraw(draw):
        eps = real_redraw(draw)
        redrawn.append(eps.clone())
        return eps

    def spy_build(self):
        u = real_build(self)
        rebuilt.append(u.clone())
        return u

    monkeypatch.setattr(fused, "draw_like", spy_draw)
    monkeypatch.setattr(regenerate, "redraw", spy_redraw)
    monkeypatch.setattr(regenerate._Recipe, "build", spy_build)
    for layer in (net[0], net[2], net[4]):
        layer.register_forward_hook(lambda mod, args, out: seen.append(args[0].detach().clone()))
    x = torch.randn(7, 6)
    net(x).square().sum().backward()
    assert len(drawn) == 3 and len(redrawn) >= 3 and len(rebuilt) == 3
    assert all(any(torch.equal(r, d) for d in drawn) for r in redrawn)
    assert all(any(torch.equal(r, s) for s in seen) for r in rebuilt)


@pytest.mark.parametrize("name", list(MODELS))
def test_saved_bytes_over_erm_meet_the_targets(monkeypatch, name):
    """Bytes kept for backward, DIPNet over ERM on the same model and batch: m = 1 <= 1.15x and
    m = 4 <= 4.3x (the issue's targets); the saving implementation is far above at m = 1."""
    build, info, n = MODELS[name]
    torch.manual_seed(0)
    base = build().train()
    x, y = _batch(info, n)
    erm = kept(lambda: F.cross_entropy(base(x), y), base)
    ratios = {}
    for m in (1, 4):
        net = project(copy.deepcopy(base)).train()
        ratios[m] = kept(lambda: DIPNetLoss(trajectories=m)(net, x, y), net) / erm
        with saving_implementation(monkeypatch):
            ratios[f"saving {m}"] = kept(lambda: DIPNetLoss(trajectories=m)(net, x, y), net) / erm
    assert ratios[1] <= 1.15 and ratios[4] <= 4.3, ratios
    assert ratios["saving 1"] > 1.3, ratios


@pytest.mark.parametrize("name", ["mlp", "resnet20"])
def test_regenerate_false_keeps_what_the_saving_implementation_keeps_with_the_same_gradients(monkeypatch, name):
    """``regenerate=False``: the bytes kept are the saving implementation's, and the loss and
    gradients equal the default's (weights bit for bit, sigmas to summation order)."""
    build, info, n = MODELS[name]
    torch.manual_seed(0)
    base = build().train()
    x, y = _batch(info, n)
    nets = {flag: project(copy.deepcopy(base), regenerate=flag).train() for flag in (True, False)}
    assert all(not p.regenerate for _, p in projections(nets[False])) and "regenerate=False" in repr(nets[False])
    probes = {flag: copy.deepcopy(net) for flag, net in nets.items()}  # forwards move the running RMS
    with saving_implementation(monkeypatch):
        saving = kept(lambda: DIPNetLoss(trajectories=2)(probes[True], x, y), probes[True])
    assert kept(lambda: DIPNetLoss(trajectories=2)(probes[False], x, y), probes[False]) == saving
    results = {}
    for flag, net in nets.items():
        torch.manual_seed(3)
        loss = DIPNetLoss(trajectories=2)(net, x, y)
        results[flag] = (loss.detach(), _grads(net, loss))
    assert torch.equal(results[True][0], results[False][0])
    names = [k for k, _ in nets[True].named_parameters()]
    for k, a, b in zip(names, results[True][1], results[False][1]):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-8) if k.endswith("log_sigma") else torch.equal(a, b), k


def test_other_saved_tensor_hooks_keep_working(monkeypatch):
    """A user's saved-tensor hooks (torch's save_on_cpu) and non-reentrant activation checkpointing
    around a projected model give the gradients of the plain run, and double backward through
    recipes equals double backward through the saving implementation."""
    torch.manual_seed(0)
    net = project(nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)), sigma=0.3).train()
    x = torch.randn(5, 6)

    def grads(wrap=None, create_graph=False, saving=False):
        model = copy.deepcopy(net)
        torch.manual_seed(4)
        ctx = saving_implementation(monkeypatch) if saving else contextlib.nullcontext()
        with ctx:
            if wrap == "save_on_cpu":
                with torch.autograd.graph.save_on_cpu():
                    out = model(x)
            elif wrap == "checkpoint":
                out = torch.utils.checkpoint.checkpoint(model, x, use_reentrant=False)
            else:
                out = model(x)
            gs = torch.autograd.grad(out.square().sum(), list(model.parameters()), create_graph=create_graph)
            if create_graph:
                return torch.autograd.grad(sum(g.square().sum() for g in gs), list(model.parameters()))
            return gs

    plain = grads()
    for wrap in ("save_on_cpu", "checkpoint"):
        assert all(torch.equal(a, b) for a, b in zip(plain, grads(wrap))), wrap
    second = grads(create_graph=True)
    assert all(torch.allclose(a, b, rtol=1e-6, atol=1e-7) for a, b in zip(second, grads(create_graph=True, saving=True)))


def test_an_input_changed_in_place_after_the_forward_is_a_clear_error():
    net = project(nn.Sequential(nn.Linear(4, 3)), sigma=0.3).train()
    x = torch.randn(5, 4, requires_grad=True)
    h = x * 2
    out = net(h)
    h.add_(1.0)  # the layer's input, changed after the layer used it
    with pytest.raises(RuntimeError, match="modified in place"):
        out.sum().backward()


def test_torch_func_transforms_work_on_a_sampling_model():
    """torch.func refuses saved-tensor hooks; under its transforms the projection saves the plain way."""
    torch.manual_seed(0)
    net = project(nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2)), sigma=0.3, scale="absolute")
    x = torch.randn(4)
    with sampling(net):
        jac = torch.func.jacrev(lambda v: net(v.unsqueeze(0)).squeeze(0))(x)
        grad = torch.func.grad(lambda v: net(v.unsqueeze(0)).sum())(x)
    assert jac.shape == (2, 4) and torch.isfinite(jac).all() and grad.shape == (4,)


# ---------------------------------------------------------------- eval mode: the hooks return at once


def _hooked(model: nn.Module) -> list[str]:
    return [name for name, mod in model.named_modules() if mod._forward_pre_hooks or mod._forward_hooks]


def test_eval_mode_gives_the_stripped_net_and_train_mode_samples_again():
    """A projected layer keeps its two hooks in every mode (so torch.compile's guards see the
    projection's flags, tests/test_compile.py); in eval they return at once: the outputs are the
    stripped net's bit for bit, no buffer moves, and sampling()/train() sample again. A copy's
    projections act on the copy's layers."""
    torch.manual_seed(0)
    net = project(build_model("mnist1d-mlp", DatasetInfo("mnist1d", (40,), 10, tuple("0123456789"), (-5.0, 5.0))))
    layers = sorted(name for name, _ in projections(net))
    x = torch.randn(3, 40)
    net.train()
    net(x)  # one training forward sets the running input RMS that relative sigmas scale
    net.eval()
    assert sorted(_hooked(net)) == layers
    plain = strip(copy.deepcopy(net))
    state = {k: v.clone() for k, v in net.state_dict().items()}
    assert torch.equal(net(x), plain(x)) and all(torch.equal(v, net.state_dict()[k]) for k, v in state.items())
    with sampling(net):
        assert not torch.equal(net(x), plain(x))
    assert torch.equal(net(x), plain(x))
    predict(net, x, samples=2)
    assert not net.training and torch.equal(net(x), plain(x))
    twin = copy.deepcopy(net).train()
    assert sorted(_hooked(twin)) == layers and not torch.equal(twin(x), plain(x)) and torch.equal(net(x), plain(x))
    y = torch.randint(0, 10, (3,))
    DIPNetLoss()(twin, x, y).backward()
    assert all(p.log_sigma.grad is not None for _, p in projections(twin))
    strip(twin)
    assert _hooked(twin) == []


def test_a_model_projected_in_eval_mode_starts_in_eval_mode():
    net = nn.Sequential(nn.Linear(4, 3)).eval()
    project(net)
    x = torch.randn(2, 4)
    assert torch.equal(net(x), strip(copy.deepcopy(net))(x))
    net.train()
    assert not torch.equal(net(x), strip(copy.deepcopy(net))(x))


def test_user_hooks_on_a_projected_layer_see_the_projected_input_in_any_mode_order():
    """dipnet's pre-hook runs first, before and after eval/train toggles re-install it."""
    net = project(nn.Sequential(nn.Linear(4, 3)), sigma=0.5, scale="absolute").train()
    seen = []
    net[0].register_forward_pre_hook(lambda mod, args: seen.append(args[0].clone()))
    x = torch.randn(2, 4)
    net(x)
    net.eval()
    net(x)
    net.train()
    net(x)
    assert not torch.equal(seen[0], x) and torch.equal(seen[1], x) and not torch.equal(seen[2], x)


@pytest.mark.parametrize("channels_last", [False, True])
def test_autocast_and_channels_last_give_the_gradients_of_regenerate_false(channels_last):
    """Under CPU autocast (bfloat16) a layer saves a cast copy of ``u`` (kept as is), and in
    channels_last memory the rebuilt ``u`` must take the forward's layout: gradients equal those
    of ``regenerate=False``."""
    build, info, _ = MODELS["resnet20"]
    torch.manual_seed(0)
    base = build()
    x, y = _batch(info, 8)
    if channels_last:
        base, x = base.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    grads = []
    for regenerate in (True, False):
        net = project(copy.deepcopy(base), regenerate=regenerate).train()
        torch.manual_seed(3)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = DIPNetLoss(trajectories=2)(net, x, y)
        grads.append(_grads(net, loss))
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-8) for a, b in zip(*grads))
