"""Attacks, corruptions and robustness evaluation against independent oracles: closed-form worst
cases and minimal adversarial distances of linear classifiers, hand-written gradient and
evaluation loops, exact noise statistics, and invariants (eps-ball, bounds, determinism)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from dipnet.data import Dataset, DatasetInfo
from dipnet.methods import StepContext, build_method
from dipnet.errors import ConfigError
from dipnet.robust import (
    FGSM,
    PGD,
    attack_mode,
    corrupt,
    evaluate_robustness,
    fgsm,
    input_gradient,
    list_corruptions,
    per_example_loss,
    pgd,
    shifted_sets,
)

torch.set_default_dtype(torch.float32)


def linear(d: int, c: int, seed: int = 0, dtype=torch.float64) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(d, c)).to(dtype)
    return model.eval()


def binary_margin(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For a 2-class linear model: margin m = (w_y - w_o) x + (b_y - b_o) and the direction w_y - w_o."""
    W, b = model[1].weight.detach(), model[1].bias.detach()
    sign = (1 - 2 * y).to(W.dtype)  # y=0: w0 - w1, y=1: w1 - w0
    d = sign[:, None] * (W[0] - W[1])[None]
    m = (d * x.flatten(1)).sum(1) + sign * (b[0] - b[1])
    return m, d


def ce(model, x, y):
    with torch.no_grad():
        return F.cross_entropy(model(x), y, reduction="none")


# ------------------------------------------------------------------------------- attacks


def test_fgsm_on_linear_model_is_sign_of_closed_form_gradient():
    model = linear(12, 5)
    torch.manual_seed(1)
    x, y = torch.randn(32, 12, dtype=torch.float64), torch.randint(0, 5, (32,))
    W, b = model[1].weight.detach(), model[1].bias.detach()
    p = torch.softmax(x @ W.T + b, -1)
    grad = (p - F.one_hot(y, 5).double()) @ W  # d CE / dx = W^T (p - e_y)
    eps = 0.07
    assert torch.allclose(fgsm(model, x, y, eps), x + eps * grad.sign())
    box = (-0.5, 0.5)
    xb = x.clamp(*box)
    pb = torch.softmax(xb @ W.T + b, -1)
    gb = (pb - F.one_hot(y, 5).double()) @ W
    assert torch.allclose(fgsm(model, xb, y, eps, bounds=box), (xb + eps * gb.sign()).clamp(*box))
    g_l2 = grad / grad.norm(dim=1, keepdim=True)
    assert torch.allclose(fgsm(model, x, y, eps, norm="l2"), x + eps * g_l2)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_reaches_closed_form_worst_case_of_binary_linear_model(norm):
    model = linear(10, 2)
    torch.manual_seed(2)
    x, y = torch.randn(40, 10, dtype=torch.float64), torch.randint(0, 2, (40,))
    m, d = binary_margin(model, x, y)
    eps = 0.3
    # CE = softplus(-m) is decreasing in m: the worst case minimizes the margin over the ball
    if norm == "linf":
        worst = x - eps * d.sign()
        worst_margin = m - eps * d.abs().sum(1)
    else:
        worst = x - eps * d / d.norm(dim=1, keepdim=True)
        worst_margin = m - eps * d.norm(dim=1)
    worst_loss = F.softplus(-worst_margin)
    exact = pgd(model, x, y, eps, steps=10, norm=norm, random_start=False)
    assert torch.allclose(exact, worst, atol=1e-9)
    assert torch.allclose(ce(model, exact, y), worst_loss, atol=1e-9)
    started = pgd(model, x, y, eps, steps=40, norm=norm, random_start=True, restarts=2, seed=3)
    # from a random start L-inf sign steps hit the corner exactly; L2 steps shrink the off-axis part of
    # the start geometrically but not to zero in 40 steps (measured gap ~0.3% of the loss)
    assert torch.allclose(ce(model, started, y), worst_loss, rtol=1e-3 if norm == "linf" else 1e-2, atol=1e-6)
    assert (ce(model, started, y) >= ce(model, x, y) - 1e-12).all()
    if norm == "linf":
        assert torch.allclose(fgsm(model, x, y, eps), worst, atol=1e-12)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_flips_exactly_beyond_the_minimal_adversarial_distance(norm):
    model = linear(8, 2, seed=4)
    torch.manual_seed(5)
    x = torch.randn(30, 8, dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(1)  # correctly classified points: margin > 0
    m, d = binary_margin(model, x, y)
    r = m / (d.abs().sum(1) if norm == "linf" else d.norm(dim=1))  # exact minimal distance |w^T x + b| / ||w||_dual
    for i in range(x.shape[0]):
        xi, yi = x[i:i + 1], y[i:i + 1]
        above = pgd(model, xi, yi, float(r[i]) * 1.02, steps=30, norm=norm, random_start=False)
        below = pgd(model, xi, yi, float(r[i]) * 0.98, steps=30, norm=norm, restarts=3, seed=i)
        with torch.no_grad():
            assert model(above).argmax(1).item() != yi.item()
            assert model(below).argmax(1).item() == yi.item()


def small_mlp(seed: int = 0, d: int = 6) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, 16), nn.Tanh(), nn.Linear(16, 3))


@settings(max_examples=30, deadline=None)
@given(
    eps=st.one_of(st.just(0.0), st.floats(1e-3, 2.0)),  # a subnormal eps would make alpha underflow to 0
    lo=st.floats(-2.0, 0.0),
    width=st.floats(0.05, 3.0),
    norm=st.sampled_from(["linf", "l2"]),
    steps=st.integers(1, 4),
    alpha_scale=st.floats(0.1, 3.0),
    seed=st.integers(0, 100),
)
def test_attacks_stay_inside_eps_ball_and_bounds(eps, lo, width, norm, steps, alpha_scale, seed):
    model = small_mlp(seed % 3)
    hi = lo + width
    g = torch.Generator().manual_seed(seed)
    x = lo + width * torch.rand(9, 6, generator=g)
    y = torch.randint(0, 3, (9,), generator=g)
    alpha = None if eps == 0 else alpha_scale * eps
    for adv in (pgd(model, x, y, eps, steps=steps, alpha=alpha, norm=norm, bounds=(lo, hi), seed=seed),
                fgsm(model, x, y, eps, bounds=(lo, hi), norm=norm)):
        delta = adv - x
        size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
        assert (size <= eps * (1 + 1e-5) + 1e-6).all()
        assert (adv >= lo).all() and (adv <= hi).all()


def trained_net(seed: int = 0):
    torch.manual_seed(seed)
    x = torch.randn(400, 6)
    y = (x[:, 0] + x[:, 1] * x[:, 2] > 0).long() + (x[:, 3] > 1).long()
    model = small_mlp(seed)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(150):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval(), x, y


def test_pgd_loss_at_least_fgsm_loss_at_least_clean_loss_on_average():
    model, x, y = trained_net()
    for eps in (0.05, 0.2):
        clean = ce(model, x, y).mean()
        l_fgsm = ce(model, fgsm(model, x, y, eps), y).mean()
        l_pgd = ce(model, pgd(model, x, y, eps, steps=10), y).mean()
        assert clean < l_fgsm <= l_pgd
        with torch.no_grad():
            assert (model(pgd(model, x, y, eps, steps=10)).argmax(1) == y).float().mean() <= (model(x).argmax(1) == y).float().mean()


class HiddenNoise(nn.Module):
    """A user's noise layer (dipnet.projection.noise protocol): adds N(0, s^2) when sampling."""

    is_noise_layer = True
    sample_in_eval = False

    def __init__(self, s: float) -> None:
        super().__init__()
        self.s = s

    def forward(self, h):
        return h + self.s * torch.randn_like(h) if self.training or self.sample_in_eval else h


class NoisyNet(nn.Module):
    """Adds N(0, s^2) to its hidden layer when its noise layer samples."""

    def __init__(self, s: float = 0.5) -> None:
        super().__init__()
        self.body, self.head = nn.Linear(6, 16), nn.Linear(16, 3)
        self.noise = HiddenNoise(s)

    def forward(self, x):
        return self.head(self.noise(torch.tanh(self.body(x))))


def test_eot_gradient_is_average_of_hand_loop_gradients():
    torch.manual_seed(0)
    model = NoisyNet()
    x, y = torch.randn(5, 6), torch.randint(0, 3, (5,))
    torch.manual_seed(7)
    with attack_mode(model, "noise"):
        grad, loss, _ = input_gradient(model, x, y, eot_samples=4)
    torch.manual_seed(7)
    model.noise.sample_in_eval = True
    grads = []
    for _ in range(4):
        xr = x.clone().requires_grad_(True)
        val = F.cross_entropy(model(xr), y, reduction="sum")
        grads.append(torch.autograd.grad(val, xr)[0])
    assert torch.allclose(grad, torch.stack(grads).mean(0), atol=1e-6)
    # noise samples differ, so a single sample is not the average
    assert not torch.allclose(grads[0], grads[1])


def test_eot_on_deterministic_model_equals_plain_pgd():
    model, x, y = trained_net(1)
    plain = pgd(model, x[:50], y[:50], 0.1, steps=5, seed=1)
    assert torch.equal(pgd(model, x[:50], y[:50], 0.1, steps=5, seed=1, eot_samples=1), plain)
    assert torch.allclose(pgd(model, x[:50], y[:50], 0.1, steps=5, seed=1, eot_samples=3), plain, atol=1e-6)


def test_attack_restores_modes_flags_and_statistics():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.ReLU(), nn.Linear(8, 3))
    model.train()
    model[2].eval()
    model[0].weight.requires_grad_(False)
    stats = model[1].running_mean.clone()
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    PGD(model, 0.1, steps=3)(x, y)
    FGSM(model, 0.1)(x, y)
    assert [m.training for m in model] == [True, True, False, True, True]
    assert [p.requires_grad for p in model.parameters()] == [False, True, True, True, True, True]
    assert torch.equal(model[1].running_mean, stats)  # attacked in eval mode
    assert all(p.grad is None for p in model.parameters())


def test_attack_bad_inputs_raise_config_error():
    model = small_mlp()
    x, y = torch.rand(4, 6), torch.randint(0, 3, (4,))
    bad = [
        lambda: fgsm(model, x, y, -0.1),
        lambda: fgsm(model, x, y, float("nan")),
        lambda: pgd(model, x, y, 0.1, steps=0),
        lambda: pgd(model, x, y, 0.1, norm="l1"),
        lambda: pgd(model, x, y, 0.1, alpha=0.0),
        lambda: fgsm(model, x, y.float(), 0.1),
        lambda: fgsm(model, x, y[:2], 0.1),
        lambda: fgsm(model, x[0], y, 0.1),
        lambda: fgsm(model, x + 5, y, 0.1, bounds=(0.0, 1.0)),
        lambda: fgsm(model, x, y, 0.1, bounds=(1.0, 0.0)),
        lambda: fgsm(model, x, y + 3, 0.1),
        lambda: fgsm(model, x, y, 0.1, loss="mse"),
        lambda: fgsm(model, x, y, 0.1, mode="noise"),
        lambda: pgd(model, x, y, 0.1, eot_samples=0),
        lambda: FGSM("not a model", 0.1),
    ]
    for call in bad:
        with pytest.raises(ConfigError):
            call()


def test_cw_loss_is_the_margin_computed_by_hand():
    """Carlini & Wagner (2017) eq. 6 without the clamp: max_{j != y} z_j - z_y, on logits chosen so
    that the runner-up, ties and a correctly classified true maximum all occur."""
    logits = torch.tensor([[1.0, 3.0, 2.0], [5.0, -1.0, 0.0], [0.0, 0.0, 0.0], [2.0, 2.0, 7.0], [-4.0, -3.0, -9.0]])
    y = torch.tensor([0, 0, 1, 2, 2])
    # row 0: others {3, 2} -> 3 - 1; row 1: {-1, 0} -> 0 - 5; row 2: {0, 0} -> 0 - 0; row 3: {2, 2} -> 2 - 7;
    # row 4: {-4, -3} -> -3 - (-9)
    assert per_example_loss(logits, y, "cw").tolist() == [2.0, -5.0, 0.0, -5.0, 6.0]
    assert torch.allclose(per_example_loss(logits, y, "ce"), F.cross_entropy(logits, y, reduction="none"))


def test_cw_gradient_and_pgd_reach_the_closed_form_of_a_linear_model():
    model = linear(7, 4, seed=6)
    torch.manual_seed(8)
    x, y = torch.randn(20, 7, dtype=torch.float64), torch.randint(0, 4, (20,))
    W, b = model[1].weight.detach(), model[1].bias.detach()
    z = x @ W.T + b
    runner_up = z.scatter(1, y[:, None], float("-inf")).argmax(1)
    grad, value, _ = input_gradient(model, x, y, loss="cw")
    assert torch.allclose(value, z.gather(1, runner_up[:, None])[:, 0] - z.gather(1, y[:, None])[:, 0])
    assert torch.allclose(grad, W[runner_up] - W[y])  # d(z_j - z_y)/dx = w_j - w_y
    # two classes: the margin is linear in x, so one L-inf step of size eps is the exact worst case
    model2 = linear(10, 2, seed=9)
    x2, y2 = torch.randn(30, 10, dtype=torch.float64), torch.randint(0, 2, (30,))
    m, d = binary_margin(model2, x2, y2)
    adv = pgd(model2, x2, y2, 0.2, steps=5, loss="cw", random_start=False)
    assert torch.allclose(adv, x2 - 0.2 * d.sign(), atol=1e-12)
    assert torch.allclose(per_example_loss(model2(adv).detach(), y2, "cw"), -(m - 0.2 * d.abs().sum(1)), atol=1e-9)


def test_pgd_with_cw_loss_stays_valid_on_a_trained_net():
    model, x, y = trained_net(2)
    adv = pgd(model, x[:64], y[:64], 0.2, steps=5, loss="cw", bounds=(-4.0, 4.0))
    assert ((adv - x[:64]).abs() <= 0.2 + 1e-6).all()
    with torch.no_grad():
        acc_cw = (model(adv).argmax(1) == y[:64]).float().mean()
        acc_clean = (model(x[:64]).argmax(1) == y[:64]).float().mean()
    assert acc_cw <= acc_clean


# ------------------------------------------------------------------------------- corruptions


def smooth_images(n: int, c: int, h: int, seed: int = 0) -> torch.Tensor:
    from dipnet.robust.corruptions import gaussian_blur

    g = torch.Generator().manual_seed(seed)
    x = gaussian_blur(torch.rand(n, c, h, h, generator=g), 2.0 * h / 28)
    lo, hi = x.amin((1, 2, 3), keepdim=True), x.amax((1, 2, 3), keepdim=True)
    return (x - lo) / (hi - lo)


def smooth_signals(n: int, length: int = 40, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.linspace(0, 1, length)
    return 1.5 * torch.sin(2 * math.pi * (1 + 3 * torch.rand(n, 1, generator=g)) * t + 6 * torch.rand(n, 1, generator=g))


CASES = [("gray", (1, 28, 28)), ("rgb", (3, 16, 16)), ("signal", (40,)), ("signal-ch", (1, 40))]


def case_batch(kind: str, shape: tuple[int, ...], lo: float, hi: float) -> torch.Tensor:
    if kind in ("gray", "rgb"):
        u = smooth_images(24, shape[0], shape[1])
    else:
        u = (smooth_signals(24) + 2) / 4
        u = u.reshape(24, *shape)
    return lo + (hi - lo) * u


@pytest.mark.parametrize("kind,shape", CASES)
def test_corruptions_keep_range_are_seeded_and_monotone(kind, shape):
    lo, hi = -0.42, 2.8  # standardized data: not [0, 1]
    x = case_batch(kind, shape, lo, hi)
    layout = "image" if kind in ("gray", "rgb") else "signal"
    for name in list_corruptions(layout):
        assert torch.equal(corrupt(x, name, 0, bounds=(lo, hi)), x)
        outs = [corrupt(x, name, s, seed=3, bounds=(lo, hi)) for s in range(1, 6)]
        for out in outs:
            assert out.shape == x.shape and out.dtype == x.dtype
            assert out.min() >= lo - 1e-5 and out.max() <= hi + 1e-5, name
        assert torch.equal(outs[2], corrupt(x, name, 3, seed=3, bounds=(lo, hi))), name
        dist = [float((o - x).pow(2).mean().sqrt()) for o in outs]
        assert dist[0] > 0, name
        for a, b in zip(dist, dist[1:]):
            assert b >= a * 0.97 - 1e-6, (name, dist)  # non-decreasing on average (3% slack for sampling)
        assert dist[-1] > dist[0], (name, dist)


def test_noise_corruptions_have_stated_statistics():
    from dipnet.robust.corruptions import GAUSSIAN_NOISE, IMPULSE_NOISE, SHOT_NOISE

    lo, hi = -1.0, 3.0
    x = torch.full((64, 1, 32, 32), lo + 0.5 * (hi - lo))  # mid-range: no clipping
    n = x.numel()
    for s in (1, 5):
        r = (corrupt(x, "gaussian_noise", s, seed=s, bounds=(lo, hi)) - x) / (hi - lo)
        std = GAUSSIAN_NOISE[s - 1]
        assert abs(float(r.mean())) < 4 * std / math.sqrt(n)
        assert abs(float(r.std()) / std - 1) < 4 * math.sqrt(2 / n)
        # Poisson(u c) / c: mean u, variance u / c
        r = (corrupt(x, "shot_noise", s, seed=s, bounds=(lo, hi)) - x) / (hi - lo)
        var = 0.5 / SHOT_NOISE[s - 1]
        assert abs(float(r.mean())) < 4 * math.sqrt(var / n)
        assert abs(float(r.var()) / var - 1) < 0.05
        out = corrupt(x, "impulse_noise", s, seed=s, bounds=(lo, hi))
        p = IMPULSE_NOISE[s - 1]
        frac_lo, frac_hi = float((out == lo).float().mean()), float((out == hi).float().mean())
        for f in (frac_lo, frac_hi):
            assert abs(f - p / 2) < 4 * math.sqrt(p / 2 / n)
        assert float(((out != lo) & (out != hi) & (out != x)).sum()) == 0


def test_blurs_preserve_the_mean_and_brightness_contrast_are_exact():
    from dipnet.robust.corruptions import BRIGHTNESS, CONTRAST

    x = torch.zeros(4, 1, 48, 48)  # a blob further than any kernel's reach from the border
    x[:, :, 20:28, 19:29] = torch.rand(4, 1, 8, 10, generator=torch.Generator().manual_seed(0))
    for name in ("gaussian_blur", "defocus_blur", "motion_blur", "pixelate"):
        for s in (1, 5):
            out = corrupt(x, name, s, bounds=(0.0, 1.0))
            assert torch.allclose(out.mean((1, 2, 3)), x.mean((1, 2, 3)), atol=1e-6), (name, s)
    sig = torch.zeros(3, 40)
    sig[:, 15:25] = 0.5
    assert torch.allclose(corrupt(sig, "gaussian_blur", 5, bounds=(0.0, 1.0)).mean(1), sig.mean(1), atol=1e-6)
    gray = 0.25 + 0.5 * torch.rand(4, 1, 8, 8)
    assert torch.allclose(corrupt(gray, "brightness", 2, bounds=(0.0, 1.0)), gray + BRIGHTNESS[1], atol=1e-6)
    m = gray.mean((1, 2, 3), keepdim=True)
    assert torch.allclose(corrupt(gray, "contrast", 4, bounds=(0.0, 1.0)), (gray - m) * CONTRAST[3] + m, atol=1e-6)
    rgb = torch.tensor([0.2, 0.4, 0.1]).view(1, 3, 1, 1).expand(2, 3, 4, 4)
    out = corrupt(rgb, "brightness", 5, bounds=(0.0, 1.0))
    # HSV: V 0.4 -> 0.7, hue and saturation kept, i.e. the RGB ratios kept
    assert torch.allclose(out[0, :, 0, 0], torch.tensor([0.35, 0.7, 0.175]), atol=1e-6)


def test_geometric_signal_corruptions_match_definitions():
    from dipnet.robust.corruptions import SHEAR, SHIFT

    x = torch.rand(16, 40, generator=torch.Generator().manual_seed(0))
    out = corrupt(x, "shift", 3, bounds=(-1.0, 2.0))
    k = round(SHIFT[2] * 40)
    for row, o in zip(x, out):
        assert torch.allclose(o, torch.roll(row, k), atol=1e-6) or torch.allclose(o, torch.roll(row, -k), atol=1e-6)
    out = corrupt(x, "shear", 2, bounds=(-10.0, 10.0))
    ramp = torch.linspace(-0.5, 0.5, 40) * SHEAR[1] * 20.0
    for row, o in zip(x, out):
        assert torch.allclose(o - row, ramp, atol=1e-5) or torch.allclose(o - row, -ramp, atol=1e-5)
    const = torch.full((4, 40), 0.3)
    assert torch.allclose(corrupt(const, "scale", 5, bounds=(0.0, 1.0)), const)


def test_jpeg_and_pixelate_leave_flat_images_nearly_unchanged():
    flat = torch.full((2, 3, 16, 16), 0.5)
    assert (corrupt(flat, "jpeg", 5, bounds=(0.0, 1.0)) - flat).abs().max() <= 2 / 255
    assert torch.allclose(corrupt(flat, "pixelate", 5, bounds=(0.0, 1.0)), flat, atol=1e-6)


def test_corruption_bad_inputs_raise_config_error():
    img, sig = torch.rand(2, 1, 8, 8), torch.rand(2, 40)
    for call in (
        lambda: corrupt(sig, "jpeg", 1),
        lambda: corrupt(img, "shift", 1),
        lambda: corrupt(img, "fog", 1),
        lambda: corrupt(img, "gaussian_noise", 6),
        lambda: corrupt(img, "gaussian_noise", True),
        lambda: corrupt(img, "gaussian_noise", 1.5),
        lambda: corrupt(torch.rand(2, 1, 1, 8, 8), "gaussian_noise", 1),
        lambda: corrupt(img.long(), "gaussian_noise", 1),
        lambda: corrupt(img, "gaussian_noise", 1, bounds=(1.0, 0.0)),
        lambda: corrupt(torch.rand(2, 2, 8, 8), "jpeg", 1),
    ):
        with pytest.raises(ConfigError):
            call()


# ------------------------------------------------------------------------------- evaluation


def tiny_dataset(n: int = 120, bounds=(0.0, 1.0)) -> Dataset:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 1, 6, 6, generator=g)
    y = (x.flatten(1)[:, :18].sum(1) > x.flatten(1)[:, 18:].sum(1)).long()
    info = DatasetInfo("tiny", (1, 6, 6), 2, ("a", "b"), bounds)
    return Dataset(x[: n // 2], y[: n // 2], x[n // 2:], y[n // 2:], info)


def test_evaluate_robustness_matches_hand_loop(tmp_path):
    ds = tiny_dataset()
    model = linear(36, 2, seed=3, dtype=torch.float32)
    with torch.no_grad():  # near the true rule (class 1 iff the first 18 pixels outweigh the rest), plus noise
        rule = torch.cat([torch.ones(18), -torch.ones(18)])
        model[1].weight.copy_(torch.stack([-rule, rule]) * 2 + 0.5 * model[1].weight)
    eps = [0.0, 0.02, 0.1]
    res = evaluate_robustness(model, ds, attacks=("fgsm",), eps=eps, corruptions=["gaussian_noise", "contrast"],
                              severities=(1, 3), n_examples=40, seed=5, batch_size=16, out_dir=tmp_path)
    idx = torch.randperm(60, generator=torch.Generator().manual_seed(5))[:40]
    x, y = ds.x_test[idx], ds.y_test[idx]
    W, b = model[1].weight.detach(), model[1].bias.detach()
    logits = lambda z: z.flatten(1) @ W.T + b
    acc = lambda z: float((logits(z).argmax(1) == y).float().mean())
    assert res["n_examples"] == 40 and res["clean_acc"] == pytest.approx(acc(x))
    for e, a in zip(eps, res["adversarial"]["fgsm"]["acc"]):
        g = ((torch.softmax(logits(x), 1) - F.one_hot(y, 2)) @ W).view_as(x)
        assert a == pytest.approx(acc((x + e * g.sign()).clamp(0, 1)))
    accs = res["corruptions"]["acc"]
    hand = {c: [acc(corrupt(x, c, s, seed=5 * 1000 + 10 * k + s, bounds=(0.0, 1.0))) for s in (1, 3)]
            for k, c in enumerate(["gaussian_noise", "contrast"])}
    assert accs.keys() == hand.keys()
    for c in hand:
        assert accs[c] == pytest.approx(hand[c])
    assert len({a for v in hand.values() for a in v} | {res["clean_acc"]}) > 1  # not a constant classifier
    per_sev = [(hand["gaussian_noise"][j] + hand["contrast"][j]) / 2 for j in range(2)]
    assert res["per_severity_acc"] == pytest.approx(per_sev)
    assert res["mean_corruption_acc"] == pytest.approx(sum(per_sev) / 2)
    assert "skipped" in res["shifted"]
    assert sorted(p.split("/")[-1] for p in res["plots"]) == ["robust_eps.png", "robust_severity.png"]
    assert (tmp_path / "robust_eps.png").stat().st_size > 0


def test_evaluate_robustness_defaults_and_bad_inputs():
    ds = tiny_dataset()
    model = linear(36, 2, dtype=torch.float32)
    res = evaluate_robustness(model, ds, corruptions=[], n_examples=20, shifted=False, pgd_steps=2)
    assert res["adversarial"]["pgd"]["eps_relative"] == pytest.approx([0.0, 0.01, 0.02, 0.05, 0.1])
    assert res["adversarial"]["pgd"]["acc"][0] == pytest.approx(res["clean_acc"])
    assert all(a2 <= a1 + 1e-9 for a1, a2 in zip(res["adversarial"]["pgd"]["acc"], res["adversarial"]["pgd"]["acc"][1:]))
    for kw in ({"attacks": ["cw"]}, {"eps": [-1.0]}, {"corruptions": ["shift"]}, {"severities": (0,)},
               {"n_examples": 0}, {"norm": "l1"}, {"mode": "bogus"}):
        with pytest.raises(ConfigError):
            evaluate_robustness(model, ds, **{"corruptions": [], "shifted": False, **kw})
    with pytest.raises(ConfigError):
        evaluate_robustness(model, (ds.x_test, ds.y_test))


def test_shifted_sets_are_seeded_named_and_leave_global_rng_alone():
    info = DatasetInfo("mnist1d", (40,), 10, tuple("0123456789"), None)
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    a, reason = shifted_sets(info, n=50, seed=0, severities=(3,))
    assert reason is None and np.array_equal(np.random.get_state()[1], before)
    b, _ = shifted_sets(info, n=50, seed=0, severities=(3,))
    assert set(a) == {"control", "noise@3", "shear@3", "translation@3", "scale@3"}
    for k in a:
        assert a[k][0].shape == (50, 40) and torch.equal(a[k][0], b[k][0]) and torch.equal(a[k][1], b[k][1])
        assert set(a[k][1].tolist()) <= set(range(10))
    assert not torch.equal(a["control"][0], a["shear@3"][0])
    other, why = shifted_sets(DatasetInfo("digits", (64,), 10, tuple("0123456789"), (0.0, 16.0)))
    assert other == {} and "only MNIST-1D" in why


# ------------------------------------------------------------------------------- training perturbations


def test_fgsm_examples_component_is_closed_form_fgsm_and_counts_cost():
    method = build_method("fgsm-examples", {"eps": 0.1, "fraction": 1.0})
    model = linear(12, 3, dtype=torch.float32)
    model.train()
    x, y = torch.rand(8, 12), torch.randint(0, 3, (8,))
    ctx = StepContext(bounds=(0.0, 1.0))
    xa, ya = method.transform_batch(model, x, y, ctx)
    W, b = model[1].weight.detach(), model[1].bias.detach()
    g = (torch.softmax(x @ W.T + b, 1) - F.one_hot(y, 3)) @ W
    assert torch.allclose(xa, (x + 0.1 * g.sign()).clamp(0, 1)) and torch.equal(ya, y)
    assert ctx.example_grads == 8 and model.training and all(p.grad is None for p in model.parameters())
    half = build_method("fgsm-examples", {"eps": 0.1})
    ctx = StepContext()
    xh, _ = half.transform_batch(model, x, y, ctx)
    assert ctx.example_grads == 4 and int((xh != x).any(1).sum()) == 4


def test_gaussian_examples_component_adds_noise_of_stated_std():
    method = build_method("gaussian-examples", {"sigma": 0.3})
    x = torch.zeros(200, 50)
    torch.manual_seed(0)
    xn, _ = method.transform_batch(nn.Identity(), x, torch.zeros(200, dtype=torch.long), StepContext())
    assert abs(float(xn.std()) / 0.3 - 1) < 4 * math.sqrt(2 / x.numel())
    ctx = StepContext()
    ctx.bounds = (-0.25, 0.25)  # a training loop that knows the dataset's bounds
    from_ctx, _ = build_method("gaussian-examples", {"sigma": 1.0}).transform_batch(nn.Identity(), x, None, ctx)
    assert from_ctx.min() >= -0.25 and from_ctx.max() <= 0.25 and (from_ctx.abs() == 0.25).any()
    for spec, params in (("gaussian-examples", {"sigma": -1}), ("fgsm-examples", {"eps": -0.1}),
                         ("fgsm-examples", {"fraction": 0}),
                         ("fgsm-examples", {"mode": "sideways"})):
        with pytest.raises(ConfigError):
            build_method(spec, params)


def test_training_with_fgsm_examples_and_robust_cli(tmp_path, capsys):
    import json

    from dipnet.cli import main
    from dipnet.data import register_dataset

    @register_dataset("robust-test-tiny", "tiny synthetic images for the robust CLI test")
    def _tiny() -> Dataset:
        return tiny_dataset(160)

    from dipnet.engine import TrainConfig, train

    cfg = TrainConfig(data="robust-test-tiny", model="mlp", method="fgsm-examples", epochs=2, batch_size=40,
                      data_kwargs={"val_size": 0}, method_params={"eps": 0.05}, out=str(tmp_path / "run"), progress="none")
    result = train(cfg)
    assert result.final["example_grads"] == 2 * (80 + 40)  # clean step B + FGSM half batch
    out = tmp_path / "r.json"
    rc = main(["robust", str(tmp_path / "run"), "--eps", "0,0.05", "--steps", "3", "--corruptions", "contrast",
               "--n", "30", "--out", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    assert res["method"] == "fgsm-examples" and res["adversarial"]["pgd"]["eps"] == [0.0, 0.05]
    assert "PGD" in capsys.readouterr().out
    assert main(["robust", str(tmp_path / "run"), "--n", "0"]) == 2
    assert main(["robust", str(tmp_path / "nope")]) == 2


def _nearest_class_of_the_sum() -> nn.Module:
    """A linear model on 40-sample signals whose logits are -(sum(x) - c)^2 up to a term shared by
    all classes (2c sum(x) - c^2): it predicts the class nearest to sum(x), and a circular shift
    of the signal, which keeps the sum, never changes its decision."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(40, 10))
    with torch.no_grad():
        c = torch.arange(10.0)
        model[1].weight.copy_((2 * c)[:, None].expand(10, 40))
        model[1].bias.copy_(-c * c)
    return model.eval()


def test_evaluate_robustness_reports_exact_mnist1d_shift_and_shifted_set_accuracies():
    # 40 signals with sum(x) = y + e: |e| = 0.3 for three in four (classified right), 0.7 toward the
    # middle for the rest (classified as the neighbouring class): accuracy exactly 30/40.
    g = torch.Generator().manual_seed(0)
    y = torch.arange(40) % 10
    e = torch.where(torch.arange(40) % 4 == 0, torch.where(y < 5, 0.7, -0.7), torch.where(y < 5, -0.3, 0.3))
    noise = torch.randn(40, 40, generator=g)
    x = noise - noise.mean(1, keepdim=True) + ((y + e) / 40)[:, None]
    ds = Dataset(x, y, x, y, DatasetInfo("mnist1d", (40,), 10, tuple("0123456789"), None))
    model = _nearest_class_of_the_sum()
    res = evaluate_robustness(model, ds, attacks=(), corruptions=["shift"], severities=(2, 5), n_examples=None, seed=4)
    assert res["n_examples"] == 40 and res["clean_acc"] == 0.75
    assert res["corruptions"]["acc"]["shift"] == [0.75, 0.75]
    assert res["mean_corruption_acc"] == 0.75
    hand_acc = lambda xs, ys: float(((2 * torch.arange(10.0) * xs.sum(1, keepdim=True) - torch.arange(10.0) ** 2)
                                     .argmax(1) == ys).float().mean())  # noqa: E731
    sets, reason = shifted_sets(ds.info, 40, 4)
    assert reason is None and set(res["shifted"]) == set(sets) and len(sets) == 13
    assert res["shifted"] == pytest.approx({name: hand_acc(xs, ys) for name, (xs, ys) in sets.items()}, abs=1e-6)
    assert len(set(res["shifted"].values())) > 1  # the sets are not all scored alike
    assert res["bounds"] is None


def test_shift_corruption_accuracy_is_what_the_rolled_sample_decides():
    """A model that reads only x[0] (predicts the class nearest to it). A roll by k = round(SHIFT[s-1]
    * 40) in either direction brings x[k] or x[40-k] to position 0; both hold the same value, right
    for every other signal at severity 2 (k=2) and every fourth at severity 5 (k=8)."""
    from dipnet.robust.corruptions import SHIFT

    k2, k5 = round(SHIFT[1] * 40), round(SHIFT[4] * 40)
    assert (k2, k5) == (2, 8)
    y = torch.arange(40) % 10
    right, wrong = y + 0.2, ((y + 5) % 10).float()
    x = torch.zeros(40, 40)
    x[:, 0] = right
    x[:, k2] = x[:, 40 - k2] = torch.where(torch.arange(40) % 2 == 0, right, wrong)
    x[:, k5] = x[:, 40 - k5] = torch.where(torch.arange(40) % 4 == 0, right, wrong)
    model = nn.Sequential(nn.Flatten(), nn.Linear(40, 10))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].weight[:, 0] = 2 * torch.arange(10.0)
        model[1].bias.copy_(-torch.arange(10.0) ** 2)
    ds = Dataset(x, y, x, y, DatasetInfo("signals", (40,), 10, tuple("0123456789"), None))
    res = evaluate_robustness(model.eval(), ds, attacks=(), corruptions=["shift"], severities=(2, 5), n_examples=None,
                              shifted=False)
    assert res["clean_acc"] == 1.0 and res["corruptions"]["acc"]["shift"] == [0.5, 0.25]
    assert res["per_severity_acc"] == [0.5, 0.25] and res["mean_corruption_acc"] == 0.375
