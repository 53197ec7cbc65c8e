"""Checks of the fused projection kernels (dipnet.projection.fused) under Triton's interpreter on
CPU tensors. Run by tests/test_fused.py in a fresh process with TRITON_INTERPRET=1 (Triton reads
it when it is imported); prints one JSON object, check name -> "ok" or the failure.

Oracles: ``torch.addcmul`` and ``(g * eps).sum_to_size`` with the draw's values materialized by
the separate normal kernel; the library's eager path fed the same values (a second
implementation of the whole training step); moments and correlations of N(0, 1) draws."""
from __future__ import annotations

import json
import math
import sys
import traceback

import torch
import torch.nn.functional as F
from torch import nn

from dipnet.noise_table import Draw
from dipnet.projection import DIPNetLoss, fused, project
from dipnet.projection.regenerate import sample

CHECKS = {}
DEVICE = torch.device("cpu")  # benchmarks/gpu_check.py sets "cuda" and runs the same checks compiled


def check(fn):
    CHECKS[fn.__name__] = fn
    return fn


def _kernel_draw(x: torch.Tensor) -> Draw:
    eps, draw = fused.draw_like(x, "fresh")
    assert eps is None and draw.kernel, "the fused path did not apply to a fresh draw under the interpreter"
    return draw


@check
def layouts():
    """Forward, sigma's and x's gradients and the rebuild, for every sigma layout."""
    cases = [((4, 3, 5, 5), (3, 1, 1)), ((6, 7), (7,)), ((6, 7), ()), ((2, 5, 8), (8,)), ((3, 4, 9), (4, 1)),
             ((5000,), ()), ((3, 130), (130,)), ((2, 3, 4), (1, 3, 1)),
             ((4, 3, 2), (3, 2))]  # the last: no per-dimension layout, the materialized fallback
    torch.manual_seed(0)
    for xs, ss in cases:
        x = torch.randn(xs, device=DEVICE, requires_grad=True)
        s = (torch.rand(ss, device=DEVICE) + 0.5).requires_grad_()
        draw = _kernel_draw(x)
        u = sample(x, s, None, draw)
        eps = fused.normal(draw)
        assert torch.allclose(u, torch.addcmul(x, s, eps), rtol=0, atol=1e-6), (xs, ss, "forward")
        assert torch.equal(fused.sample(x.detach(), s.detach(), draw), u.detach()), (xs, ss, "rebuild")
        g = torch.randn_like(u)
        u.backward(g)
        assert torch.equal(x.grad, g), (xs, ss, "x grad")
        expected = (g * eps).sum_to_size(s.shape)
        assert torch.allclose(s.grad, expected, rtol=1e-5, atol=1e-5), (xs, ss, s.grad, expected)


@check
def half_precision_input():
    """A bfloat16 input with a float32 sigma gives autograd's dtypes: u in float32 (type promotion,
    as torch.addcmul), sigma's gradient in float32, x's in bfloat16."""
    torch.manual_seed(1)
    x = torch.randn(8, 6, dtype=torch.bfloat16, device=DEVICE, requires_grad=True)
    s = torch.full((6,), 0.3, device=DEVICE, requires_grad=True)
    draw = _kernel_draw(x)
    u = sample(x, s, None, draw)
    assert u.dtype == torch.float32
    eps = fused.normal(Draw(None, draw.seed, None, x.shape, x.device, torch.float32, kernel=True))
    assert torch.allclose(u, x.detach().float() + s.detach() * eps, atol=1e-6)
    u.sum().backward()
    assert s.grad.dtype == torch.float32 and x.grad.dtype == torch.bfloat16
    assert torch.allclose(s.grad, eps.sum(0), rtol=1e-5, atol=1e-5)


@check
def saves_nothing():
    """The fused sample keeps no tensor for backward: only the seed."""
    x = torch.randn(16, 9, device=DEVICE, requires_grad=True)
    s = torch.full((9,), 0.2, device=DEVICE, requires_grad=True)
    packed = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: packed.append(t) or t, lambda t: t):
        sample(x, s, None, _kernel_draw(x))
    assert packed == [], [t.shape for t in packed]


@check
def statistics():
    """The kernel's values are N(0, 1): moments within 5 standard errors, no correlation between
    neighbours or between two draws."""
    n = 40_000
    x = torch.zeros(n, device=DEVICE)
    a, b = fused.normal(_kernel_draw(x)), fused.normal(_kernel_draw(x))
    se = 5 / math.sqrt(n)
    assert abs(a.mean()) < se and abs(a.var() - 1) < 5 * math.sqrt(2 / n), (a.mean(), a.var())
    assert abs((a * b).mean()) < se and abs((a[1:] * a[:-1]).mean()) < se
    assert abs((a ** 3).mean()) < 5 * math.sqrt(15 / n) and abs((a ** 4).mean() - 3) < 5 * math.sqrt(96 / n)


@check
def seeded():
    """torch.manual_seed reproduces the draws; another seed changes them."""
    x = torch.randn(5, 4, device=DEVICE)
    s = torch.full((4,), 0.5, device=DEVICE)
    outs = []
    for seed in (3, 3, 4):
        torch.manual_seed(seed)
        outs.append(fused.sample(x, s, _kernel_draw(x)))
    assert torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], outs[2])


def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 5), nn.Tanh(), nn.Linear(5, 3))


def _eager_replay(x: torch.Tensor, source: str = "auto"):
    """What the fused path draws (the same seed from the same generator), materialized and handed
    to the eager path as kept values."""
    if not fused.applies(x, source):
        return _original(x, source)
    seed = int(torch.randint(0, fused._SEEDS, ()))
    eps = fused.normal(Draw(None, seed, None, x.shape, x.device, x.dtype, kernel=True))
    return eps, Draw(None, None, eps, x.shape, x.device, x.dtype)


_original = fused.draw_like


def _step(net: nn.Module, x: torch.Tensor, y: torch.Tensor, m: int, replay: bool):
    fused.draw_like = _eager_replay if replay else _original
    try:
        net.zero_grad(set_to_none=True)
        torch.manual_seed(11)
        loss = DIPNetLoss(trajectories=m)(net, x, y)
        loss.backward()
    finally:
        fused.draw_like = _original
    return loss.detach(), {k: p.grad.clone() for k, p in net.named_parameters()}


@check
def training_step_equals_the_eager_path():
    """A projected conv net's DIPNet loss and every gradient (weights and sigmas, the raw input's
    from its window) with the kernels equal the eager path's with the same noise values: relative
    and absolute scale, m = 1 and 2, regenerating or keeping u, the exact and the windowed
    raw-input gradient."""
    torch.manual_seed(0)
    x, y = torch.randn(6, 3, 6, 6, device=DEVICE), torch.randint(0, 3, (6,), device=DEVICE)
    for settings in ({}, {"scale": "absolute"}, {"regenerate": False}, {"input_grad_fraction": 0.5},
                     {"granularity": "layer"}):
        for m in (1, 2):
            torch.manual_seed(0)
            net = project(_net(), noise="fresh", **settings).to(DEVICE).train()
            ref = project(_net(), noise="fresh", **settings).to(DEVICE).train()
            ref.load_state_dict(net.state_dict())
            (la, ga), (lb, gb) = _step(net, x, y, m, False), _step(ref, x, y, m, True)
            assert torch.allclose(la, lb, rtol=1e-6, atol=1e-6), (settings, m, la, lb)
            for k in ga:
                assert torch.allclose(ga[k], gb[k], rtol=1e-4, atol=1e-6), (settings, m, k, (ga[k] - gb[k]).abs().max())


@check
def not_under_torch_func():
    """Inside torch.func transforms the eager path runs (a custom kernel has no batching rule)."""
    x = torch.randn(4, 3, device=DEVICE)
    seen = []

    def f(v):
        seen.append(fused.applies(v, "fresh"))
        return v.sum()

    torch.func.grad(f)(x)
    assert seen == [False] and fused.applies(x, "fresh")


def main() -> None:
    results = {}
    names = sys.argv[1:] or list(CHECKS)
    for name in names:
        try:
            CHECKS[name]()
            results[name] = "ok"
        except Exception:  # noqa: BLE001 - reported to the test
            results[name] = traceback.format_exc()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
