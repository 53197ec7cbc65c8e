"""Instruments against independent oracles: closed forms, finite differences, dense Jacobians and
Hessians from torch.autograd.functional, explicit operator matrices, analytic crossing counts."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dipnet.data import Dataset, DatasetInfo
from dipnet.errors import ConfigError
from dipnet.measure import (
    activation_codes,
    circle_through,
    filter_normalized_direction,
    input_curvature,
    jacobian_norm,
    jacobian_spectral_norm,
    lipschitz_bounds,
    loss_landscape,
    measure_model,
    operator_norm,
    plot_landscape,
    region_transitions,
    sharpness,
    smoothed,
    spearman,
    spectral_norm,
    transitions_along,
)


def mlp(d=6, h=8, c=3, act=nn.Tanh, seed=0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, h), act(), nn.Linear(h, h), act(), nn.Linear(h, c)).double()


def dense_jacobians(fn, x):
    return torch.stack([torch.autograd.functional.jacobian(lambda z: fn(z.unsqueeze(0))[0], xi) for xi in x])


# ---------------------------------------------------------------- Jacobian norm (Novak et al.)

def test_linear_model_jacobian_is_weight_frobenius_norm():
    torch.manual_seed(0)
    lin = nn.Linear(7, 4).double()
    norms = jacobian_norm(lin, torch.randn(5, 7, dtype=torch.float64), output="logits")
    assert torch.allclose(norms, lin.weight.norm().expand(5), rtol=0, atol=1e-12)


@pytest.mark.parametrize("output", ["softmax", "logits"])
def test_jacobian_norm_matches_dense_autograd_and_finite_differences(output):
    model = mlp()
    x = torch.randn(6, 6, dtype=torch.float64)
    fn = (lambda z: torch.softmax(model(z), -1)) if output == "softmax" else model
    exact = dense_jacobians(fn, x).flatten(1).norm(dim=1)
    assert torch.allclose(jacobian_norm(model, x, output=output), exact, rtol=1e-10)
    eps = 1e-6  # central differences, one input coordinate at a time
    fd = torch.zeros(x.shape[0], 3, 6, dtype=torch.float64)
    with torch.no_grad():
        for i in range(6):
            e = torch.zeros(6, dtype=torch.float64)
            e[i] = eps
            fd[:, :, i] = (fn(x + e) - fn(x - e)) / (2 * eps)
    assert torch.allclose(jacobian_norm(model, x, output=output), fd.flatten(1).norm(dim=1), rtol=1e-6)


def test_jacobian_norm_of_conv_net_with_batch_chunks():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv1d(2, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 8, 4)).double()
    x = torch.randn(7, 2, 8, dtype=torch.float64)
    exact = dense_jacobians(lambda z: torch.softmax(model(z), -1), x).flatten(1).norm(dim=1)
    assert torch.allclose(jacobian_norm(model, x, chunk_size=3), exact, rtol=1e-10)


class InputSkip(nn.Module):
    """A narrowing first layer, but the input also reaches the output directly."""

    def __init__(self):
        super().__init__()
        self.a, self.act, self.b, self.skip = nn.Linear(12, 5), nn.ReLU(), nn.Linear(5, 3), nn.Linear(12, 3)

    def forward(self, x):
        return self.b(self.act(self.a(x))) + self.skip(x)


@pytest.mark.parametrize("make", [
    lambda: nn.Sequential(nn.Flatten(), nn.Linear(12, 5), nn.ReLU(), nn.Linear(5, 5), nn.ReLU(), nn.Linear(5, 3)),
    InputSkip,
])
def test_jacobian_norm_through_a_narrowing_first_layer(make):
    """The Gram route ||g W||_F = sqrt(g W W^T g^T) for a narrowing first Linear, and the fallback
    when the input has another path to the output, both against dense Jacobians."""
    torch.manual_seed(0)
    model = make().double()
    x = torch.randn(6, 12, dtype=torch.float64)
    if isinstance(model, nn.Sequential):
        x = x.view(6, 3, 4)
    exact = dense_jacobians(lambda z: torch.softmax(model(z), -1), x).flatten(1).norm(dim=1)
    assert torch.allclose(jacobian_norm(model, x, chunk_size=4), exact, rtol=1e-10)


def test_estimator_is_unbiased_for_the_squared_norm():
    """z-test per point: the mean of ||J u||^2 over S Gaussian probes vs the exact ||J||_F^2, |z| < 4."""
    model = mlp(act=nn.ReLU)
    x = torch.randn(4, 6, dtype=torch.float64)
    exact_sq = jacobian_norm(model, x).pow(2)
    S = 3000
    xr = x.repeat(S, 1)
    u = torch.randn(xr.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    _, ju = torch.func.jvp(lambda z: torch.softmax(model(z), -1), (xr,), (u,))
    per = ju.pow(2).sum(1).view(S, 4)
    z = (per.mean(0) - exact_sq) / (per.std(0) / math.sqrt(S))
    assert z.abs().max() < 4
    est = jacobian_norm(model, x, method="estimate", samples=S, chunk_size=4 * S)
    assert torch.allclose(est.pow(2), exact_sq, rtol=4 * math.sqrt(2 / S))


# ---------------------------------------------------------------- linear-region transitions

def one_hidden(d=5, h=12, act=nn.ReLU, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, h), act(), nn.Linear(h, 3)).double()


def grid_interval(phi: torch.Tensor, n: int) -> torch.Tensor:
    return torch.floor((phi % (2 * math.pi)) / (2 * math.pi / n)).long()


@pytest.mark.parametrize("act, thresholds", [(nn.ReLU, (0.0,)), (nn.Hardtanh, (-1.0, 1.0))])
def test_circle_transitions_equal_closed_form_sign_changes(act, thresholds):
    """Unit i's pre-activation on the circle is a + b cos(phi) + s sin(phi): it crosses level t at
    phi = theta +- arccos((t - a) / R); a crossing flips the code unless both fall between the same two samples."""
    model = one_hidden(act=act)
    anchors = torch.randn(3, 5, dtype=torch.float64) * 2
    n = 400
    path, length = circle_through(anchors, n)
    center = path.mean(0)
    e1 = path[0] - center
    r = e1.norm()
    e1 = e1 / r
    e2 = path[n // 4] - center
    e2 = e2 / e2.norm()
    W, bias = model[0].weight.detach(), model[0].bias.detach()
    a, b, s = W @ center + bias, r * (W @ e1), r * (W @ e2)
    R, theta = torch.sqrt(b**2 + s**2), torch.atan2(s, b)
    expected = 0
    for t in thresholds:
        for i in range(W.shape[0]):
            c = (t - a[i]) / R[i]
            if abs(c) < 1:
                z1, z2 = theta[i] + torch.arccos(c), theta[i] - torch.arccos(c)
                expected += 0 if grid_interval(z1, n) == grid_interval(z2, n) else 2
    result = region_transitions(model, anchors, points=n)
    assert int(result.flips[0]) == expected > 0
    assert math.isclose(float(result.length[0]), length) and math.isclose(length, 2 * math.pi * float(r))
    assert result.units == 12


def test_circle_passes_through_the_three_anchors():
    anchors = torch.randn(3, 9, dtype=torch.float64)
    path, _ = circle_through(anchors, 2000)
    center, radius = path.mean(0), (path[0] - path.mean(0)).norm()
    assert torch.allclose((anchors - center).norm(dim=1), radius.expand(3), rtol=1e-9)
    normal_part = anchors - center  # the anchors lie in the circle's plane
    basis = torch.linalg.qr(torch.stack([path[0] - center, path[500] - center]).T).Q
    assert torch.allclose(basis @ (basis.T @ normal_part.T), normal_part.T, atol=1e-9)


def test_line_transitions_equal_hyperplane_crossings():
    """Along x0 + t d, t in [0, 1], unit i flips where w_i^T(x0 + t d) + b_i = 0."""
    model = one_hidden(d=4, h=20, seed=2)
    x0, d = torch.randn(4, dtype=torch.float64), 6 * torch.randn(4, dtype=torch.float64)
    n = 1001
    ts = torch.linspace(0, 1, n, dtype=torch.float64)
    W, b = model[0].weight.detach(), model[0].bias.detach()
    t_cross = -(W @ x0 + b) / (W @ d)
    expected = int(((t_cross > 0) & (t_cross < 1)).sum())
    got = transitions_along(model, x0 + ts[:, None] * d, closed=False)
    assert got == expected > 0
    per_step = transitions_along(model, x0 + ts[:, None] * d, closed=False, per_step=True)
    step_of_crossing = torch.floor(t_cross[(t_cross > 0) & (t_cross < 1)] * (n - 1)).long()
    assert torch.equal(per_step, torch.bincount(step_of_crossing, minlength=n - 1))


def test_codes_read_every_call_of_a_reused_activation_and_inplace_relu():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.act = nn.Linear(3, 4), nn.Linear(4, 2), nn.ReLU(inplace=True)

        def forward(self, x):
            return self.act(self.b(self.act(self.a(x))))

    torch.manual_seed(0)
    m = Shared()
    x = torch.randn(5, 3)
    codes = activation_codes(m, x)
    h = m.a(x)
    expected = torch.cat([(h > 0), (m.b(torch.relu(h)) > 0)], 1).to(torch.int8)
    assert torch.equal(codes, expected)


# ---------------------------------------------------------------- spectral norms and Lipschitz bounds

def test_power_iteration_matches_linalg_for_linear():
    torch.manual_seed(0)
    lin = nn.Linear(30, 20).double()
    exact = float(torch.linalg.matrix_norm(lin.weight.detach(), ord=2))
    assert math.isclose(spectral_norm(lin, (1, 30), iters=500, tol=1e-12), exact, rel_tol=1e-6)


@pytest.mark.parametrize("conv, shape", [
    (lambda: nn.Conv1d(2, 3, 3, stride=2, padding=1), (1, 2, 9)),
    (lambda: nn.Conv2d(2, 3, 3, padding=1), (1, 2, 5, 5)),
])
def test_power_iteration_matches_explicit_conv_operator(conv, shape):
    torch.manual_seed(0)
    layer = conv().double()
    n = math.prod(shape)
    basis = torch.eye(n, dtype=torch.float64).view(n, *shape[1:])
    with torch.no_grad():
        matrix = (layer(basis) - layer(torch.zeros_like(basis))).flatten(1).T  # column j = A e_j
    exact = float(torch.linalg.matrix_norm(matrix, ord=2))
    kernel_norm = float(torch.linalg.matrix_norm(layer.weight.detach().flatten(1), ord=2))
    assert not math.isclose(exact, kernel_norm, rel_tol=1e-3)  # the reshaped kernel is not the operator
    assert math.isclose(spectral_norm(layer, shape, iters=1000, tol=1e-13), exact, rel_tol=1e-6)


def test_jacobian_spectral_norm_matches_dense_svd():
    model = mlp(act=nn.ReLU)
    x = torch.randn(5, 6, dtype=torch.float64)
    exact = torch.linalg.matrix_norm(dense_jacobians(model, x), ord=2)
    assert torch.allclose(jacobian_spectral_norm(model, x, iters=300), exact, rtol=1e-6)


def _operator_matrix(layer: nn.Module, shape: tuple[int, ...]) -> torch.Tensor:
    """The dense matrix of an affine layer's linear part at one input of ``shape``: column j = A e_j."""
    n = math.prod(shape)
    basis = torch.eye(n, dtype=torch.float64).view(n, *shape)
    with torch.no_grad():
        return (layer(basis) - layer(torch.zeros_like(basis))).flatten(1).T


def _spec(matrix: torch.Tensor) -> float:
    return float(torch.linalg.matrix_norm(matrix, ord=2))


def test_lipschitz_bounds_of_a_single_linear_layer_are_its_spectral_norm():
    torch.manual_seed(0)
    lin = nn.Linear(9, 5).double()
    x = torch.randn(4, 9, dtype=torch.float64)
    exact = _spec(lin.weight.detach())
    lower, upper = lipschitz_bounds(lin, x)
    # the Jacobian is W everywhere: both bounds are the constant itself
    assert math.isclose(upper, exact, rel_tol=1e-6) and math.isclose(lower, exact, rel_tol=1e-6)


@pytest.mark.parametrize("seed", range(3))
def test_lipschitz_upper_is_the_product_of_closed_form_layer_norms_and_bounds_brute_force(seed):
    """Upper bound = product of the layers' spectral norms (dense SVD of each operator, 1 for
    ReLU/Hardtanh/Flatten and for a MaxPool1d(2) whose windows do not overlap, max |gamma| /
    sqrt(var + eps) for eval BatchNorm); lower bound = the largest dense-Jacobian spectral norm over
    the points; every difference quotient lies below the upper bound."""
    torch.manual_seed(seed)
    nets = [
        nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.Hardtanh(), nn.Linear(16, 4)),
        nn.Sequential(nn.Conv1d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool1d(2), nn.BatchNorm1d(4), nn.Flatten(),
                      nn.Linear(16, 4)),
    ]
    for net in nets:
        net = net.double().eval()
        if isinstance(net[0], nn.Conv1d):
            net[3].running_var.uniform_(0.5, 2)
            with torch.no_grad():
                net[3].weight.uniform_(-2, 2)
            x = torch.randn(32, 1, 8, dtype=torch.float64)
            bn = net[3]
            bn_norm = float((bn.weight.detach() / (bn.running_var + bn.eps).sqrt()).abs().max())
            expected = [_spec(_operator_matrix(net[0], (1, 8))), 1.0, 1.0, bn_norm, 1.0, _spec(net[5].weight.detach())]
            assert math.isclose(_spec(_operator_matrix(bn, (4, 4))), bn_norm, rel_tol=1e-12)
        else:
            x = torch.randn(32, 8, dtype=torch.float64)
            expected = [_spec(net[0].weight.detach()), 1.0, _spec(net[2].weight.detach()), 1.0, _spec(net[4].weight.detach())]
        bounds = lipschitz_bounds(net, x)
        lower, upper = bounds
        assert bounds.upper_verified
        assert [v for _, v in bounds.layers] == pytest.approx(expected, rel=1e-6)
        assert math.isclose(upper, math.prod(expected), rel_tol=1e-6)
        local = torch.linalg.matrix_norm(dense_jacobians(net, x).flatten(2), ord=2)
        assert math.isclose(lower, float(local.max()), rel_tol=1e-6)
        assert float(local.max()) <= upper * (1 + 1e-9)
        x2 = x + 0.3 * torch.randn_like(x)
        with torch.no_grad():
            ratio = (net(x) - net(x2)).norm(dim=1) / (x - x2).flatten(1).norm(dim=1)
        assert float(ratio.max()) <= upper


def test_residual_model_is_not_bounded_by_the_product():
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.act, self.b = nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)

        def forward(self, x):
            return self.b(x + self.act(self.a(x)))

    x = torch.randn(3, 4)
    with pytest.raises(ConfigError, match="residual connection"):
        lipschitz_bounds(Residual(), x)
    assert not lipschitz_bounds(Residual(), x, strict=False).upper_verified


# ---------------------------------------------------------------- curvature and sharpness

def test_input_curvature_matches_dense_hessian():
    model = mlp(d=4, h=6)
    x, y = torch.randn(5, 4, dtype=torch.float64), torch.randint(0, 3, (5,))
    got = input_curvature(model, x, y, iters=300)
    for i in range(5):
        H = torch.autograd.functional.hessian(lambda z: F.cross_entropy(model(z.unsqueeze(0)), y[i:i + 1]), x[i])
        assert math.isclose(float(got[i]), float(torch.linalg.eigvalsh(H).abs().max()), rel_tol=1e-6)


def tiny_weight_problem():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    x, y = torch.randn(40, 3, dtype=torch.float64), torch.randint(0, 3, (40,))
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    flat0 = torch.cat([p.detach().flatten() for p in model.parameters()])

    def loss_of(flat):
        params, i = {}, 0
        for n, s in zip(names, shapes):
            params[n] = flat[i:i + math.prod(s)].view(s)
            i += math.prod(s)
        return F.cross_entropy(torch.func.functional_call(model, params, (x,)), y)

    H = torch.autograd.functional.hessian(loss_of, flat0)
    return model, x, y, H


def test_sharpness_eigenvalues_and_trace_match_dense_weight_hessian():
    model, x, y, H = tiny_weight_problem()
    evals = torch.linalg.eigvalsh(H)
    by_magnitude = evals[evals.abs().argsort(descending=True)]
    res = sharpness(model, F.cross_entropy, (x, y), top_k=2, iters=3000, tol=1e-12, trace_samples=400,
                    batch_size=16, seed=1)
    assert math.isclose(res.eigenvalues[0], float(by_magnitude[0]), rel_tol=1e-5)
    assert math.isclose(res.eigenvalues[1], float(by_magnitude[1]), rel_tol=1e-4)
    assert abs(res.trace - float(torch.trace(H))) < 4 * res.trace_stderr  # Hutchinson: unbiased
    assert res.seed == 1 and len(res.iterations) == 2 and res.n_examples == 40


# ---------------------------------------------------------------- loss landscape

def test_landscape_origin_is_model_loss_and_directions_are_filter_normalized(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(18, 4))
    x, y = torch.randn(50, 1, 8), torch.randint(0, 4, (50,))
    land = loss_landscape(model, F.cross_entropy, (x, y), dims=1, steps=5, span=0.5, batch_size=16)
    with torch.no_grad():
        assert math.isclose(float(land.losses[2]), float(F.cross_entropy(model(x), y)), rel_tol=1e-6)
    direction = filter_normalized_direction(model, seed=0)
    for name, p in model.named_parameters():
        d = direction[name]
        if p.ndim == 1:
            assert torch.count_nonzero(d) == 0
        else:
            assert torch.allclose(d.flatten(1).norm(dim=1), p.detach().flatten(1).norm(dim=1), rtol=1e-5)
    land2 = loss_landscape(model, None, (x, y), dims=2, steps=3)
    assert land2.losses.shape == (3, 3) and math.isclose(float(land2.losses[1, 1]), float(land.losses[2]), rel_tol=1e-6)
    for ls in (land, land2):
        png = plot_landscape(ls, tmp_path / f"l{ls.dims}.png")
        assert png.read_bytes()[:4] == b"\x89PNG"


def test_landscape_of_linear_least_squares_is_the_closed_form_quadratic():
    torch.manual_seed(0)
    lin = nn.Linear(3, 2).double()
    x, t = torch.randn(20, 3, dtype=torch.float64), torch.randn(20, 2, dtype=torch.float64)
    mse = lambda out, target: ((out - target) ** 2).sum(1).mean()
    D = filter_normalized_direction(lin, seed=5)["weight"]
    W, b = lin.weight.detach(), lin.bias.detach()
    # the label argument is passed through untouched: use it as the index of the regression target
    land = loss_landscape(lin, lambda out, idx: mse(out, t[idx]), (x, torch.arange(20)), steps=7, span=2.0, seed=5)
    for a, value in zip(land.alphas, land.losses):
        closed = (((x @ (W + a * D).T + b) - t) ** 2).sum(1).mean()
        assert math.isclose(float(value), float(closed), rel_tol=1e-10)


# ---------------------------------------------------------------- smoothed DIPNet-style nets

class Noise(nn.Module):
    """A noise layer by the dipnet.projection.noise protocol."""

    is_noise_layer = True
    sample_in_eval = False

    def __init__(self, sigma: float):
        super().__init__()
        self.sigma = sigma

    def forward(self, x):
        return x + self.sigma * torch.randn_like(x) if self.training or self.sample_in_eval else x


def test_smoothed_model_averages_probabilities_over_noise_and_is_deterministic():
    torch.manual_seed(0)
    base = nn.Sequential(Noise(0.5), nn.Linear(4, 3)).double().eval()
    x = torch.randn(6, 4, dtype=torch.float64)
    sm = smoothed(base, samples=5, seed=7)
    out = sm(x)
    torch.manual_seed(7)  # oracle: the same 5 draws, one stacked batch, probabilities averaged by hand
    noise = 0.5 * torch.randn(30, 4, dtype=torch.float64)
    probs = torch.softmax(base[1](x.repeat(5, 1) + noise), -1).view(5, 6, 3).mean(0)
    assert torch.allclose(out, probs.log(), rtol=1e-12)
    assert torch.equal(sm(x), out) and not base[0].training
    quiet = smoothed(nn.Sequential(Noise(0.0), nn.Linear(4, 3)).double(), samples=3)
    assert torch.allclose(quiet(x), torch.log_softmax(quiet.model(x), -1))
    assert jacobian_norm(sm, x).shape == (6,)
    with pytest.raises(ConfigError, match="no noise layers"):
        smoothed(nn.Linear(4, 3))


# ---------------------------------------------------------------- bad input and the suite

def test_bad_inputs_are_config_errors_with_clear_messages():
    relu_net = one_hidden()
    x = torch.randn(4, 5, dtype=torch.float64)
    with pytest.raises(ConfigError, match="piecewise-linear activation modules.*only smooth activations: Tanh"):
        region_transitions(mlp(d=5), torch.randn(3, 5, dtype=torch.float64))
    with pytest.raises(ConfigError, match="piecewise-linear"):
        activation_codes(nn.Linear(5, 2), x.float())
    with pytest.raises(ConfigError, match="points must be a positive integer"):
        region_transitions(relu_net, torch.randn(3, 5), points=0)
    with pytest.raises(ConfigError, match="collinear"):
        region_transitions(relu_net, torch.stack([x[0], 2 * x[0], 3 * x[0]]))
    with pytest.raises(ConfigError, match="samples must be a positive integer"):
        jacobian_norm(relu_net, x, method="estimate", samples=0)
    with pytest.raises(ConfigError, match="per-example shape \\(7,\\)"):
        jacobian_norm(relu_net, torch.randn(4, 7))
    with pytest.raises(ConfigError, match="batch of shape"):
        jacobian_norm(relu_net, torch.randn(5, dtype=torch.float64))
    with pytest.raises(ConfigError, match="output must be one of"):
        jacobian_norm(relu_net, x, output="probs")
    with pytest.raises(ConfigError, match="labels must be an integer tensor of shape \\(4,\\)"):
        input_curvature(relu_net, x, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ConfigError, match="dims must be 1 or 2"):
        loss_landscape(relu_net, None, (x, torch.zeros(4, dtype=torch.long)), dims=3)
    with pytest.raises(ConfigError, match="iters must be a positive integer"):
        operator_norm(lambda v: v, (3,), iters=0)


def test_measure_model_runs_every_instrument_and_restores_the_mode(tmp_path):
    torch.manual_seed(0)
    x, y = torch.randn(120, 10), torch.randint(0, 3, (120,))
    info = DatasetInfo("toy", (10,), 3, ("a", "b", "c"), (-5.0, 5.0))
    ds = Dataset(x[:80], y[:80], x[80:], y[80:], info)
    model = nn.Sequential(Noise(0.1), nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 3)).train()
    out = measure_model(model, ds, n_examples=30, smoothed_samples=3, circles=2, points=100, out_dir=tmp_path)
    json.dumps(out)
    assert model.training and all(m.training for m in model.modules())
    assert set(out) >= {"jacobian", "jacobian_smoothed", "regions", "lipschitz", "curvature", "curvature_smoothed",
                        "sharpness", "landscape"}
    assert out["lipschitz"]["upper_verified"] and out["lipschitz"]["lower"] <= out["lipschitz"]["upper"]
    assert out["lipschitz"]["upper"] == pytest.approx(_spec(model[1].weight.detach()) * _spec(model[3].weight.detach()), rel=1e-5)
    assert out["landscape"]["alphas"][10] == 0.0 and (tmp_path / "landscape.png").exists()
    with pytest.raises(ConfigError, match="unknown measure"):
        measure_model(model, ds, names="jacobian,hessian")
    with pytest.raises(ConfigError, match="n_examples must be a positive integer"):
        measure_model(model, ds, n_examples=0)


def test_spearman_against_a_hand_computed_value():
    assert spearman(torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([10.0, 30.0, 20.0, 40.0])) == pytest.approx(0.8)


def test_cli_measure_writes_json_next_to_the_run(tmp_path, capsys):
    from dipnet.cli import main
    from dipnet.data import register_dataset
    from dipnet.engine import TrainConfig, train
    from dipnet.models import register_model

    @register_dataset("measure-test-toy", "tiny Gaussian blobs for the measure CLI test")
    def _toy() -> Dataset:
        g = torch.Generator().manual_seed(0)
        y = torch.randint(0, 3, (150,), generator=g)
        x = torch.randn(150, 6, generator=g) + 2 * F.one_hot(y, 6).float()
        return Dataset(x[:100], y[:100], x[100:], y[100:], DatasetInfo("measure-test-toy", (6,), 3, ("a", "b", "c"), (-9.0, 9.0)))

    @register_model("measure-test-mlp", "tiny ReLU MLP for the measure CLI test")
    def _mlp(info, width: int = 8) -> nn.Module:
        return nn.Sequential(nn.Linear(info.input_shape[0], width), nn.ReLU(), nn.Linear(width, info.num_classes))

    run_dir = tmp_path / "run"
    train(TrainConfig(data="measure-test-toy", model="measure-test-mlp", epochs=1, batch_size=50, progress="none",
                      out=str(run_dir)))
    assert main(["measure", str(run_dir), "--n", "20", "--circles", "2", "--points", "50",
                 "--what", "jacobian,regions,lipschitz"]) == 0
    result = json.loads((run_dir / "measures.json").read_text())
    assert result["model"] == "measure-test-mlp" and result["measures"] == ["jacobian", "regions", "lipschitz"]
    assert result["lipschitz"]["lower"] <= result["lipschitz"]["upper"]
    assert "Jacobian" in capsys.readouterr().out
    assert main(["measure", str(run_dir), "--what", "bogus"]) == 2
    assert "unknown measure(s) 'bogus'; choose from: jacobian" in capsys.readouterr().err
    assert main(["measure", str(run_dir), "--n", "0"]) == 2


def test_dipnet_projected_model_is_measured_as_its_eval_net_and_smoothed():
    """Projections hang under the layers they feed; in eval mode they are the identity, so every
    deterministic measure equals that of the stripped net (dense autograd as the oracle)."""
    from dipnet.projection import project

    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.ReLU(), nn.Linear(6, 3)).double()
    x = torch.randn(5, 12, dtype=torch.float64)
    exact = dense_jacobians(lambda z: torch.softmax(net(z), -1), x).flatten(1).norm(dim=1)
    plain_bounds = lipschitz_bounds(net, x)
    y = torch.randint(0, 3, (5,))
    plain_sharp = sharpness(net, F.cross_entropy, (x, y), iters=500, tol=1e-10).top
    project(net, sigma=0.3)
    assert math.isclose(sharpness(net, F.cross_entropy, (x, y), iters=500, tol=1e-10).top, plain_sharp, rel_tol=1e-6)
    assert torch.allclose(jacobian_norm(net, x), exact, rtol=1e-10)
    bounds = lipschitz_bounds(net, x)
    assert bounds.upper_verified and math.isclose(bounds.upper, plain_bounds.upper, rel_tol=1e-9)
    sm = smoothed(net, samples=4, seed=0)
    assert torch.equal(sm(x), sm(x)) and not torch.allclose(sm(x), torch.log_softmax(net(x), -1))
