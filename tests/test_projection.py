"""DIPNet projection: statistics, gradients and the loss against closed forms and naive loops."""
from __future__ import annotations

import copy
import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dipnet.data import DatasetInfo
from dipnet.errors import ConfigError
from dipnet.models import build_model
import dipnet.projection._fast as projection_module
from dipnet import noise_table
from dipnet.projection import (
    DIPNetLoss,
    GaussianProjection,
    gaussian_projection,
    predict,
    project,
    projections,
    sampling,
    strip,
)

MNIST1D = DatasetInfo("mnist1d", (40,), 10, tuple("0123456789"), (-5.0, 5.0))


def test_pure_function_eval_is_identity_and_train_adds_noise():
    x = torch.randn(4, 3)
    assert gaussian_projection(x, 0.5, training=False) is x
    torch.manual_seed(1)
    out = gaussian_projection(x, torch.tensor(0.5))
    torch.manual_seed(1)
    assert torch.allclose(out, x + 0.5 * torch.randn_like(x))


@pytest.mark.parametrize("feature_dim,shape", [(-1, (4000, 3)), (1, (400, 3, 10))])
def test_noise_statistics_match_sigma(feature_dim, shape):
    """Per-feature sample mean and std of u - x match (0, sigma_j); n=4000 draws per feature,
    tolerance 5 standard errors (mean: 5 sigma/sqrt(n); std: 5 sigma/sqrt(2n))."""
    torch.manual_seed(0)
    proj = GaussianProjection(3, 1.0, feature_dim=feature_dim, scale="absolute")
    with torch.no_grad():
        proj.log_sigma.copy_(torch.tensor([0.1, 1.0, 3.0]).log())
    x = torch.randn(shape)
    noise = (proj(x) - x).detach().movedim(feature_dim, -1).reshape(-1, 3)
    n = noise.shape[0]
    sigma = torch.tensor([0.1, 1.0, 3.0])
    assert (noise.mean(0).abs() < 5 * sigma / math.sqrt(n)).all()
    assert ((noise.std(0) - sigma).abs() < 5 * sigma / math.sqrt(2 * n)).all()
    # noise is independent of the input: correlation across features near 0
    corr = torch.corrcoef(noise.T)
    assert (corr - torch.eye(3)).abs().max() < 5 / math.sqrt(n)


def test_eval_is_deterministic_and_reproducible_under_seed():
    net = project(build_model("mnist1d-mlp", MNIST1D), sigma=0.3, scale="absolute")
    x = torch.randn(8, 40)
    net.eval()
    assert torch.equal(net(x), net(x))
    net.train()
    torch.manual_seed(3)
    a = net(x)
    torch.manual_seed(3)
    b = net(x)
    assert torch.equal(a, b) and not torch.equal(a, net(x))


def test_reparameterization_gradient_matches_closed_form():
    """Quadratic model f(u) = ||u||^2 with u = x + sigma*eps: E f = ||x||^2 + d*sigma^2, so
    dE/dlog_sigma = 2 d sigma^2; the Monte Carlo gradient over 20000 draws agrees to 3%."""
    torch.manual_seed(0)
    d, n, sigma = 5, 20000, 0.7
    proj = GaussianProjection(0, sigma, scale="absolute")
    x = torch.randn(1, d).expand(n, d)
    proj(x).pow(2).sum(1).mean().backward()
    expected = 2 * d * sigma**2
    assert abs(proj.log_sigma.grad.item() - expected) / expected < 0.03


def test_gradient_matches_finite_differences_of_expected_loss():
    """Tiny linear model + CE under common random numbers: the autograd gradient w.r.t. each
    per-feature log_sigma equals central finite differences of the same sampled loss."""
    torch.manual_seed(0)
    net = project(nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)), sigma=0.3,
                  input_grad_fraction=1.0, scale="absolute").double()
    x, y = torch.randn(64, 3, dtype=torch.float64), torch.randint(0, 2, (64,))

    def loss() -> torch.Tensor:
        torch.manual_seed(11)
        return F.cross_entropy(net(x), y)

    loss().backward()
    for _, p in projections(net):
        for j in range(p.log_sigma.numel()):
            h = 1e-5
            with torch.no_grad():
                p.log_sigma[j] += h
                up = loss().item()
                p.log_sigma[j] -= 2 * h
                down = loss().item()
                p.log_sigma[j] += h
            assert abs((up - down) / (2 * h) - p.log_sigma.grad[j].item()) < 1e-6


def _naive_loss(net, x, y, m, stability, alpha, beta):
    """Same draws as the batched version: one forward of the repeated batch, then the terms by loops."""
    xr = torch.cat([x] * m)
    logits = net(xr)
    per_t = [F.cross_entropy(logits[t * len(x):(t + 1) * len(x)], y) for t in range(m)]
    probs = [logits[t * len(x):(t + 1) * len(x)].softmax(-1) for t in range(m)]
    mean_p = sum(probs) / m
    stab = sum(((p - mean_p) ** 2).sum(1).mean() for p in probs) / m
    prior = 0.0
    for _, proj in projections(net):
        for lam in (proj.sigma**2).reshape(-1):
            prior = prior + alpha * lam - beta * torch.log(lam)
    return sum(per_t) / m + stability * stab + prior


@pytest.mark.parametrize("m", [1, 3])
def test_loss_equals_naive_terms(m):
    torch.manual_seed(0)
    net = project(build_model("mnist1d-cnn", MNIST1D), sigma=0.2, scale="absolute")
    with torch.no_grad():
        for _, p in projections(net):
            p.log_sigma.uniform_(-3, 0)
    x, y = torch.randn(6, 40), torch.randint(0, 10, (6,))
    dl = DIPNetLoss(trajectories=m, stability=0.5, prior=(0.01, 0.002))
    torch.manual_seed(5)
    got = dl(net, x, y)
    torch.manual_seed(5)
    want = _naive_loss(net, x, y, m, 0.5, 0.01, 0.002)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)
    assert set(dl.parts) == ({"loss", "stability", "prior"} if m > 1 else {"loss", "prior"})


def test_trajectories_are_independent_draws():
    """m trajectories of one example through a projected identity give m different samples whose
    mean is the per-trajectory loss mean (loop over m single-trajectory calls, same RNG stream)."""
    net = project(nn.Sequential(nn.Linear(2, 2)), sigma=1.0, noise="fresh", scale="absolute")
    x, y = torch.randn(3, 2), torch.tensor([0, 1, 0])
    torch.manual_seed(2)
    batched = DIPNetLoss(trajectories=4, prior=(0.0, 0.0))(net, x, y)
    torch.manual_seed(2)
    noise = torch.randn(12, 2)  # the draws the batched forward consumes, in order
    singles = [F.cross_entropy(net[0].__class__.forward(net[0], x + noise[3 * t:3 * t + 3]), y) for t in range(4)]
    assert torch.allclose(batched, torch.stack(singles).mean(), atol=1e-6)
    assert len({round(s.item(), 6) for s in singles}) == 4


def test_predict_modes():
    net = project(build_model("mnist1d-mlp", MNIST1D), sigma=0.5, scale="absolute")
    net.train()
    x = torch.randn(5, 40)
    p0 = predict(net, x)
    assert net.training  # flags restored
    plain = strip(copy.deepcopy(net)).eval()
    assert torch.equal(p0, plain(x).softmax(-1))  # samples=0: the deterministic net without noise
    torch.manual_seed(0)
    pk = predict(net, x, samples=8)
    assert net.training and torch.allclose(pk.sum(1), torch.ones(5)) and not torch.allclose(pk, p0, atol=1e-3)


def _linear_projected(noise: str) -> nn.Module:
    net = project(nn.Sequential(nn.Linear(3, 2)), sigma=1.2, scale="absolute", noise=noise)
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[0.0, 0.0, 0.0], [1.5, -2.0, 1.0]]))
        net[0].bias.copy_(torch.tensor([0.0, 0.25]))
    return net


def test_predict_with_samples_averages_softmax_over_hand_drawn_input_noise():
    """k passes of one projected Linear layer: p = mean_k softmax(W (x + sigma eps_k) + b), with the
    eps drawn here from the same RNG stream (fresh noise, one (k*B, d) draw, pass-major)."""
    net = _linear_projected("fresh")
    W, b = net[0].weight.detach(), net[0].bias.detach()
    x = torch.tensor([[0.5, -0.2, 0.1], [-1.0, 0.3, 0.8], [0.0, 0.0, 0.0], [2.0, 1.0, -1.0]])
    torch.manual_seed(5)
    pk = predict(net, x, samples=6)
    torch.manual_seed(5)
    eps = torch.randn(6, 4, 3)
    hand = torch.zeros(4, 2)
    for k in range(6):
        for i in range(4):
            z = W @ (x[i] + 1.2 * eps[k, i]) + b
            hand[i] += torch.exp(z - z.max()) / torch.exp(z - z.max()).sum() / 6
    assert torch.allclose(pk, hand, atol=1e-6)


@pytest.mark.parametrize("noise", ["fresh", "table"])
def test_predict_with_samples_converges_to_the_gaussian_expectation(noise):
    """Two classes: p_1 = sigmoid(z_1 - z_0) with z_1 - z_0 ~ N(mu, s^2), mu = (w_1 - w_0) x + b_1 - b_0,
    s = sigma ||w_1 - w_0||. Its expectation and variance by Gauss-Hermite quadrature; the k-sample
    mean lies within 5 standard errors. The softmax of the mean logit, sigmoid(mu), does not
    (s = 3.2 pulls the expectation well toward 1/2)."""
    from numpy.polynomial.hermite_e import hermegauss

    net = _linear_projected(noise)
    x = torch.tensor([[0.5, -0.2, 0.1], [-1.0, 0.3, 0.8], [0.0, 0.0, 0.0], [1.0, -0.5, 0.5], [0.4, -0.6, 0.3]])
    d = torch.tensor([1.5, -2.0, 1.0], dtype=torch.float64)
    mu = x.double() @ d + 0.25
    s = 1.2 * float(d.norm())
    nodes, weights = (torch.from_numpy(a) for a in hermegauss(80))
    weights = weights / math.sqrt(2 * math.pi)
    f = torch.sigmoid(mu[:, None] + s * nodes[None])
    mean, var = (f * weights).sum(1), (f * f * weights).sum(1) - (f * weights).sum(1) ** 2
    k = 4000
    torch.manual_seed(1)
    p1 = predict(net, x, samples=k)[:, 1].double()
    se = (var / k).sqrt()
    assert ((p1 - mean).abs() < 5 * se).all(), ((p1 - mean) / se).tolist()
    assert ((torch.sigmoid(mu) - mean).abs() > 20 * se).sum() == 4


def _custom_model() -> nn.Module:
    class Custom(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(1, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)
            self.heads = nn.ModuleDict({"a": nn.Linear(64, 8), "b": nn.Linear(8, 3)})

        def forward(self, x):
            h = F.relu(self.bn(self.stem(x))).flatten(1)
            return self.heads["b"](F.relu(self.heads["a"](h)))

    return Custom()


@pytest.mark.parametrize("name,expected", [
    ("mnist1d-mlp", ["linear1", "linear2", "linear3"]),
    ("mnist1d-cnn", ["conv1", "conv2", "conv3", "linear"]),
    ("custom", ["stem", "heads.a", "heads.b"]),
])
def test_projections_sit_at_every_layer_input(name, expected):
    net = _custom_model() if name == "custom" else build_model(name, MNIST1D)
    project(net, sigma=0.1, scale="absolute")
    assert [n for n, _ in projections(net)] == expected
    seen = []
    for n, p in projections(net):
        p.register_forward_hook(lambda mod, inp, out, n=n: seen.append(n))
    net.train()
    net(torch.randn(2, 1, 4, 4) if name == "custom" else torch.randn(2, 40))
    assert sorted(seen) == sorted(expected)


def test_include_exclude_project_input_and_blocks():
    net = project(build_model("mnist1d-cnn", MNIST1D), exclude=[nn.Linear], project_input=False, scale="absolute")
    assert [n for n, _ in projections(net)] == ["conv2", "conv3"]
    net = project(build_model("mnist1d-cnn", MNIST1D), include="conv*", granularity="layer", scale="absolute")
    assert [n for n, _ in projections(net)] == ["conv1", "conv2", "conv3"]
    assert all(p.log_sigma.ndim == 0 for _, p in projections(net))
    vit = build_model("vit", DatasetInfo("d", (1, 8, 8), 10, tuple("0123456789"), (0.0, 1.0)), patch=2)
    project(vit, targets="blocks", scale="absolute")
    names = [n for n, _ in projections(vit)]
    assert names and all(n.endswith((".attn", ".mlp")) for n in names)
    vit.train()
    assert vit(torch.rand(3, 1, 8, 8)).shape == (3, 10)


def test_strip_state_dict_deepcopy_and_second_project():
    torch.manual_seed(0)
    net = project(build_model("mnist1d-cnn", MNIST1D), sigma=0.2, scale="relative")
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    net.train()
    DIPNetLoss(trajectories=2)(net, torch.randn(8, 40), torch.randint(0, 10, (8,))).backward()
    opt.step()  # sigma moved: the optimizer sees the projection parameters
    assert any(n.endswith("dipnet_projection.log_sigma") for n, _ in net.named_parameters())
    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    buf.seek(0)
    twin = project(build_model("mnist1d-cnn", MNIST1D), sigma=0.2, scale="relative")
    twin.load_state_dict(torch.load(buf, weights_only=True))
    x = torch.randn(16, 40)
    net.eval(), twin.eval()
    assert torch.equal(net(x), twin(x))
    clone = copy.deepcopy(net)
    clone.train()
    torch.manual_seed(1)
    a = clone(x)
    torch.manual_seed(1)
    net.train()
    assert torch.equal(a, net(x))
    net.eval()
    plain = strip(copy.deepcopy(net))
    assert projections(plain) == [] and not any("dipnet" in k for k in plain.state_dict())
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in plain.modules())
    plain.train()  # no projection left: even train mode is the deterministic function
    assert torch.equal(plain(x), net(x))
    with pytest.raises(ConfigError, match="already has DIPNet projections"):
        project(net, scale="absolute")


def test_three_line_user_loop_reduces_loss():
    """README usage on a tiny synthetic problem: a few hundred steps lower the loss."""
    torch.manual_seed(0)
    x = torch.randn(256, 10)
    y = (x[:, 0] + x[:, 1] > 0).long()
    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 2))
    model = project(model, sigma=0.1, scale="absolute")
    dip_loss = DIPNetLoss(trajectories=2, prior=(1e-4, 1e-4))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = None
    for _ in range(200):
        loss = dip_loss(model, x, y)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert dip_loss.parts["loss"].item() < 0.5 * first
    assert (predict(model, x).argmax(1) == y).float().mean() > 0.9


@pytest.mark.parametrize("call,match", [
    (lambda: project(nn.Sequential(nn.ReLU()), scale="absolute"), "no layers to project"),
    (lambda: project(nn.Linear(2, 2), sigma=0.0, scale="absolute"), "sigma must be"),
    (lambda: project(nn.Linear(2, 2), sigma=-1.0, scale="absolute"), "sigma must be"),
    (lambda: project(nn.Linear(2, 2), scale="log"), "scale must be"),
    (lambda: project(nn.Linear(2, 2), granularity="x", scale="absolute"), "granularity must be"),
    (lambda: project(nn.Linear(2, 2), targets=(), scale="absolute"), "targets must be"),
    (lambda: project(nn.Linear(2, 2), include="nothing*", scale="absolute"), "left no layer"),
    (lambda: DIPNetLoss(trajectories=0), "trajectories must be"),
    (lambda: DIPNetLoss(prior=(-1.0, 0.0)), "alpha must be"),
        (lambda: DIPNetLoss(prior=0.1), "pair"),
    (lambda: DIPNetLoss(stability=-0.1), "stability"),
    (lambda: predict(nn.Linear(2, 2), torch.randn(1, 2), samples=2), "projected model"),
])
def test_bad_arguments(call, match):
    with pytest.raises(ConfigError, match=match):
        call()


def test_forward_that_rejects_repeated_batch():
    class FixedBatch(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(2, 2)

        def forward(self, x):
            return self.fc(x).view(4, 2)

    net = project(FixedBatch(), scale="absolute")
    with pytest.raises(ConfigError, match="repeated batch"):
        DIPNetLoss(trajectories=2)(net, torch.randn(4, 2), torch.zeros(4, dtype=torch.long))


def test_gradient_matches_closed_form_expected_squared_loss():
    """Linear model f(u) = w.u + b, squared loss: E_eps (w.(x + sigma*eps) + b - y)^2 =
    (w.x + b - y)^2 + sum_j w_j^2 sigma_j^2, so dE/dlog sigma_j = 2 w_j^2 sigma_j^2. The Monte
    Carlo gradient over n = 40000 draws agrees within 5 of its own standard errors (from 8
    independent chunks) and within 5% of the largest component."""
    torch.manual_seed(0)
    d, n = 4, 40000
    lin = nn.Linear(d, 1).double()
    project(lin, sigma=0.5, scale="absolute")
    proj = projections(lin)[0][1]
    with torch.no_grad():
        proj.log_sigma.copy_(torch.tensor([0.2, 0.5, 1.0, 1.5], dtype=torch.float64).log())
        lin.weight.copy_(torch.tensor([[0.5, -1.0, 0.8, 0.3]]))
    x = torch.randn(1, d, dtype=torch.float64).expand(n, d)
    y = torch.tensor(0.3, dtype=torch.float64)
    per_example = (lin(x).squeeze(1) - y).pow(2)
    grads = torch.stack([torch.autograd.grad(per_example[i::8].mean(), proj.log_sigma, retain_graph=True)[0]
                         for i in range(8)])  # 8 independent chunks give the standard error
    w, sigma = lin.weight.detach()[0], proj.sigma.detach()
    expected = 2 * w**2 * sigma**2
    se = grads.std(0) / math.sqrt(8)
    assert ((grads.mean(0) - expected).abs() < 5 * se + 1e-9).all()
    assert ((grads.mean(0) - expected).abs() < 0.05 * expected.max()).all()


def test_relative_scale_noise_is_sigma_times_input_rms():
    """scale='relative': std of the added noise = sigma * RMS of the first training batch (5 s.e.)."""
    torch.manual_seed(0)
    proj = GaussianProjection(0, 0.2, scale="relative")
    x = 3.0 * torch.randn(5000, 4)
    noise = (proj(x) - x).detach().reshape(-1)
    want = 0.2 * x.pow(2).mean().sqrt()
    assert abs(noise.std() - want) < 5 * want / math.sqrt(2 * noise.numel())
    assert torch.allclose(proj.effective_sigma(), want)


def test_projections_before_every_linear_and_conv_of_the_vit():
    vit = build_model("vit", DatasetInfo("d", (1, 8, 8), 10, tuple("0123456789"), (0.0, 1.0)), patch=2)
    targeted = [n for n, m in vit.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    project(vit, sigma=0.05, scale="absolute")
    assert [n for n, _ in projections(vit)] == targeted and len(targeted) > 4
    seen = []
    for n, p in projections(vit):
        p.register_forward_hook(lambda mod, inp, out, n=n: seen.append(n))
    vit.train()
    vit(torch.rand(2, 1, 8, 8)).sum().backward()
    assert sorted(seen) == sorted(targeted)
    assert all(p.log_sigma.grad is not None for _, p in projections(vit))


class _HFAttention(nn.Module):
    """Hugging Face style: the block is called with ``hidden_states=`` as a keyword."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.q_proj, self.o_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, hidden_states, attention_mask=None):
        return self.o_proj(torch.tanh(self.q_proj(hidden_states)))


class _HFMLP(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.up_proj, self.down_proj = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)

    def forward(self, x):
        return self.down_proj(F.gelu(self.up_proj(x)))


class _HFDecoderLayer(nn.Module):
    def __init__(self, dim: int = 6) -> None:
        super().__init__()
        self.input_layernorm, self.post_attention_layernorm = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.self_attn, self.mlp = _HFAttention(dim), _HFMLP(dim)

    def forward(self, hidden_states, attention_mask=None):
        h = hidden_states + self.self_attn(hidden_states=self.input_layernorm(hidden_states), attention_mask=None)
        return h + self.mlp(self.post_attention_layernorm(h))


def test_blocks_placement_on_hugging_face_style_layers_with_keyword_inputs():
    torch.manual_seed(0)
    net = nn.Sequential(_HFDecoderLayer(), _HFDecoderLayer(), nn.Linear(6, 3))
    x = torch.randn(4, 5, 6)
    net.eval()
    ref = net(x)
    project(net, sigma=0.3, targets="blocks", scale="absolute")
    assert [n for n, _ in projections(net)] == ["0.self_attn", "0.mlp", "1.self_attn", "1.mlp"]
    assert all(p.features == 6 for _, p in projections(net))
    seen = []
    for n, p in projections(net):
        p.register_forward_hook(lambda mod, inp, out, n=n: seen.append(n))
    net.train()
    assert not torch.allclose(net(x), ref)  # the keyword input of self_attn is projected too
    assert sorted(seen) == sorted(n for n, _ in projections(net))
    net.eval()
    assert torch.equal(net(x), ref)
    strip(net)
    assert not any(m._forward_pre_hooks_with_kwargs for m in net.modules())
    net.train()
    assert torch.equal(net(x), ref)


def test_docs_user_loop_example_runs_verbatim(monkeypatch):
    """The first Python block of docs/dipnet.md, executed as written."""
    import re
    from pathlib import Path

    import dipnet
    from dipnet import projection

    for name in ("project", "DIPNetLoss", "predict", "strip", "projections", "GaussianProjection"):
        if not hasattr(dipnet, name):  # until dipnet/__init__.py exports them
            monkeypatch.setattr(dipnet, name, getattr(projection, name), raising=False)
    doc = Path(__file__).resolve().parents[1] / "docs" / "dipnet.md"
    code = re.findall(r"```python\n(.*?)```", doc.read_text(), flags=re.S)[0]
    scope: dict = {}
    torch.manual_seed(0)
    exec(compile(code, str(doc), "exec"), scope)
    plain, x, probs = scope["plain"], scope["x"], scope["probs"]
    assert projections(plain) == [] and torch.allclose(probs.sum(1), torch.ones(len(x)))


def _window_models():
    """(name, model builder, input) of layers the window estimate covers: Linear on 2-D and 3-D
    inputs, Conv1d, Conv2d with stride + circular padding, Conv2d with padding='same'."""
    return [
        ("linear", lambda: nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)), (12, 6)),
        ("linear-3d", lambda: nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)), (12, 4, 6)),
        ("conv1d", lambda: nn.Sequential(nn.Conv1d(2, 3, 3, padding=1), nn.Tanh(), nn.Conv1d(3, 3, 3)), (12, 2, 9)),
        ("conv2d-circular", lambda: nn.Sequential(nn.Conv2d(2, 3, 3, stride=2, padding=1, padding_mode="circular"),
                                                  nn.Tanh(), nn.Conv2d(3, 3, 2)), (12, 2, 7, 7)),
        ("conv2d-same", lambda: nn.Sequential(nn.Conv2d(2, 3, 3, padding="same"), nn.Tanh(), nn.Conv2d(3, 3, 2)),
         (12, 2, 6, 6)),
    ]


@pytest.mark.parametrize("granularity,scale", [("feature", "absolute"), ("layer", "relative")])
@pytest.mark.parametrize("name,build,shape", _window_models(), ids=[m[0] for m in _window_models()])
def test_window_estimate_of_the_input_sigma_gradient_averages_to_the_exact_one(
        name, build, shape, granularity, scale, monkeypatch):
    """input_grad_fraction = 1/4 on N = 12 rows: a window of k = 3 rows scaled by N/k. Over all N
    window starts (same noise: table draws under one seed) the estimates average to the exact
    autograd gradient (input_grad_fraction=1), since every row lies in exactly k windows; weight
    and later-layer sigma gradients equal the exact ones for every start."""
    torch.manual_seed(0)
    base = build().double()
    x = torch.randn(shape, dtype=torch.float64)
    y = torch.randn(shape[0], dtype=torch.float64)

    def grads(fraction: float) -> dict[str, torch.Tensor]:
        net = project(copy.deepcopy(base), sigma=0.4, granularity=granularity, scale=scale, noise="table",
                      input_grad_fraction=fraction)
        torch.manual_seed(5)
        out = net(x)
        (out.flatten(1).sum(1) * y).pow(2).mean().backward()
        return {k: p.grad.clone() for k, p in net.named_parameters()}

    exact = grads(1.0)
    first = "0.dipnet_projection.log_sigma"
    starts = []
    for start in range(shape[0]):
        monkeypatch.setattr(projection_module, "window_start", lambda n, start=start: start)
        g = grads(0.25)
        for k in exact:
            if k != first:
                assert torch.allclose(g[k], exact[k], rtol=1e-10, atol=1e-12), (k, start)
        starts.append(g[first])
    assert not torch.allclose(starts[0], exact[first])  # one window alone is an estimate
    assert torch.allclose(torch.stack(starts).mean(0), exact[first], rtol=1e-9, atol=1e-12)


def test_window_estimate_is_off_where_it_does_not_apply():
    """Inputs that need their own gradient, no_grad, fixed sigma, fraction 1 and unbatched conv
    inputs take the exact path (no output hook pending); custom Linear forwards get no output hook."""
    net = project(nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2)), sigma=0.3, scale="absolute")
    proj = projections(net)[0][1]
    net.train()
    x = torch.randn(16, 4, requires_grad=True)
    net(x).sum().backward()
    assert x.grad is not None and proj.log_sigma.grad is not None
    with torch.no_grad():
        net(torch.randn(16, 4))
    assert proj._pending is None

    class Scaled(nn.Linear):
        def forward(self, x):
            return 2 * super().forward(x)

    custom = project(nn.Sequential(Scaled(4, 3)), sigma=0.3, scale="absolute").train()
    assert type(custom(torch.randn(16, 4)).grad_fn).__name__ == "MulBackward0"  # not wrapped in the estimate
    conv = project(nn.Conv1d(2, 2, 3), sigma=0.3, scale="absolute")
    conv.train()
    out = conv(torch.randn(2, 9))  # unbatched: dimension 0 is the channel
    assert conv.dipnet_projection._pending is None and out.shape == (2, 7)


@pytest.mark.parametrize("noise", ["fresh", "table"])
def test_noise_sources_are_standard_normal(noise):
    """One draw of 200k values: mean 0 and variance 1 within 5 standard errors, the empirical CDF
    within the Kolmogorov-Smirnov 0.1% critical value of N(0, 1), lag-1 correlation ~ 0."""
    torch.manual_seed(0)
    n = 200_000
    z = noise_table.standard_normal((n,), source=noise).double()
    assert abs(z.mean()) < 5 / math.sqrt(n) and abs(z.var() - 1) < 5 * math.sqrt(2 / n)
    cdf = 0.5 * (1 + torch.special.erf(z.sort().values / math.sqrt(2)))
    ks = (cdf - torch.arange(1, n + 1, dtype=torch.float64) / n).abs().max()
    assert ks < 1.95 / math.sqrt(n)
    assert abs(torch.corrcoef(torch.stack([z[:-1], z[1:]]))[0, 1]) < 5 / math.sqrt(n)


def test_noise_table_windows_are_seeded_and_large_draws_are_several_windows():
    """A table draw is the window at the offset torch's global generator picks (seeded runs repeat
    it; two draws differ); the table is the fixed-seed randn block; a draw over half the table is
    consecutive windows of half the table (the last shorter), each at its own offset drawn in
    turn, and draw_like's Draw makes both again bit for bit."""
    table = torch.randn(noise_table.TABLE_SIZE, generator=torch.Generator().manual_seed(noise_table._TABLE_SEED))
    torch.manual_seed(3)
    a = noise_table.standard_normal((50, 7))
    torch.manual_seed(3)
    offset = int(torch.randint(0, noise_table.TABLE_SIZE - 350 + 1, ()))
    assert torch.equal(a.reshape(-1), table[offset:offset + 350])
    assert not torch.equal(a, noise_table.standard_normal((50, 7)))
    half = noise_table.TABLE_SIZE // 2
    n = 2 * half + 1000
    torch.manual_seed(4)
    b = noise_table.standard_normal((n,))
    torch.manual_seed(4)
    pieces = []
    for k in (half, half, 1000):
        o = int(torch.randint(0, noise_table.TABLE_SIZE - k + 1, ()))
        pieces.append(table[o:o + k])
    assert torch.equal(b, torch.cat(pieces))
    for shape in ((50, 7), (n,)):
        torch.manual_seed(5)
        values, draw = noise_table.draw_like(torch.empty(shape))
        assert torch.equal(noise_table.redraw(draw), values)
    with pytest.raises(ConfigError, match="noise must be"):
        noise_table.standard_normal((3,), source="uniform")


@pytest.mark.parametrize("source", ["auto", "table", "fresh"])
@pytest.mark.parametrize("shape, dtype", [((50, 7), torch.float32), ((3, 4, 5), torch.float64),
                                          ((noise_table.TABLE_SIZE // 2 + 1,), torch.float32)])
def test_noise_like_a_tensor_is_the_same_draw_as_by_shape(source, shape, dtype):
    """draw_like (the projections' hot path) draws exactly what standard_normal draws for the
    tensor's shape, device and dtype under the same seed, the table's windows and the fresh
    fallback alike; an unknown source is the same clear error."""
    x = torch.empty(shape, dtype=dtype)
    torch.manual_seed(11)
    a, _ = noise_table.draw_like(x, source)
    torch.manual_seed(11)
    b = noise_table.standard_normal(shape, device=x.device, dtype=dtype, source=source)
    assert a.shape == x.shape and a.dtype == dtype and torch.equal(a, b)
    with pytest.raises(ConfigError, match="noise must be"):
        noise_table.draw_like(x, "uniform")


def test_variance_prior_gradient_matches_closed_form():
    """d/dl of alpha * exp(2 l) - beta * 2 l is 2 alpha sigma^2 - 2 beta, for per-feature and
    shared sigmas alike (the prior sums over every learnable projection)."""
    net = project(nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2)), sigma=0.3, scale="absolute")
    project(shared := nn.Sequential(nn.Linear(2, 2)), sigma=0.7, granularity="layer", scale="absolute")
    for model in (net, shared):
        loss = DIPNetLoss(prior=(0.02, 0.005))
        with torch.no_grad():
            for _, p in projections(model):
                p.log_sigma.uniform_(-2.0, 0.5)
        loss.prior(model).backward()
        for _, p in projections(model):
            sigma = p.log_sigma.detach().exp()
            assert torch.allclose(p.log_sigma.grad, 2 * 0.02 * sigma**2 - 2 * 0.005, atol=1e-7)


def test_auto_defaults_on_a_cpu_draw_from_the_table_and_window_the_input_gradient():
    """noise="auto" on a CPU: the projected input is x + sigma * (the table window at the offset the
    seeded generator picks); input_grad_fraction=None: the raw-input layer's output hook gets a
    pending window estimate (1/8 of the rows), and sigma still receives a gradient."""
    net = project(nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2)), sigma=0.3, scale="absolute")
    proj = net[0].dipnet_projection
    seen, pending, grad_fns = [], [], []

    def look(mod, args):
        seen.append(args[0].detach())
        pending.append(proj._pending)

    net[0].register_forward_pre_hook(look)
    net[1].register_forward_pre_hook(lambda mod, args: grad_fns.append(type(args[0].grad_fn).__name__))
    net.train()
    x = torch.randn(16, 4)
    torch.manual_seed(0)
    net(x).sum().backward()
    table = torch.randn(noise_table.TABLE_SIZE, generator=torch.Generator().manual_seed(noise_table._TABLE_SEED))
    torch.manual_seed(0)
    offset = int(torch.randint(0, noise_table.TABLE_SIZE - 64 + 1, ()))
    assert torch.allclose(seen[0], x + 0.3 * table[offset:offset + 64].view(16, 4))
    assert pending[0] is not None and pending[0][3] == 2  # ceil(16 / 8) rows
    assert grad_fns == ["SubsampledSigmaGradBackward"] and proj._pending is None  # consumed by the post-hook
    assert proj.log_sigma.grad is not None and proj.log_sigma.grad.abs().sum() > 0


def test_a_forward_that_raises_leaves_nothing_active_behind():
    """A layer that raises still runs the projection's post-hook: no saved-tensor hook stays
    pushed and no window estimate pending, so the next forward (or strip) starts clean."""
    top = torch._C._autograd._top_saved_tensors_default_hooks
    for then_strip in (False, True):
        net = project(nn.Sequential(nn.Linear(4, 3)), sigma=0.3, scale="absolute")
        net.train()

        def broken(x):
            raise RuntimeError("boom")

        net[0].forward = broken
        with pytest.raises(RuntimeError, match="boom"):
            net(torch.randn(16, 4))
        proj = net[0].dipnet_projection
        assert top(False) is None and proj._pending is None and proj._regen is None
        del net[0].forward
        if then_strip:
            strip(net)
            assert not net[0]._forward_hooks and not net[0]._forward_pre_hooks
        else:
            net(torch.randn(16, 4)).sum().backward()
            assert top(False) is None and proj.log_sigma.grad is not None


def _bench_module(name: str):
    """A module of benchmarks/ (which imports its siblings), loaded for a test."""
    import importlib.util
    import sys
    from pathlib import Path

    bench_dir = Path(__file__).resolve().parents[1] / "benchmarks"
    sys.path.insert(0, str(bench_dir))
    try:
        spec = importlib.util.spec_from_file_location(f"{name}_under_test", bench_dir / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(bench_dir))
    return module


def test_the_benchmarks_hand_written_step_is_the_librarys_step():
    """benchmarks/bench_dipnet.py times the default m=1 loss written out op by op as a lower bound
    for the library's step; it must compute the same loss and gradients, bit for bit."""
    bench = _bench_module("bench_dipnet")
    torch.manual_seed(0)
    net = project(bench._mnist_mlp(), sigma=0.1, scale="absolute").train()
    x, y = torch.rand(32, 1, 28, 28), torch.randint(0, 10, (32,))
    results = []
    for loss_fn in (bench._hand_written(net, x, y, bench.HAND_WRITTEN["dipnet m=1, + prior (= the default loss)"]), lambda: DIPNetLoss()(net, x, y)):
        net.zero_grad(set_to_none=True)
        torch.manual_seed(7)
        loss = loss_fn()
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in net.parameters()]))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert torch.equal(loss_a, loss_b)
    assert all(torch.equal(a, b) for a, b in zip(grads_a, grads_b))


@pytest.mark.parametrize("name", ["resnet20", "vit"])
def test_the_benchmarks_hand_written_floor_is_the_librarys_step(name):
    """benchmarks/bench_projection.py times the hidden layers' projections written into each
    layer's forward (no hooks, autograd's backward) as the floor for the library with the same
    settings; both must give the same loss, gradients and running RMS, bit for bit."""
    from dipnet.data import DatasetInfo
    from dipnet.models import build_model

    bench = _bench_module("bench_projection")
    info = DatasetInfo("c", (3, 32, 32), 10, tuple("0123456789"), (0.0, 1.0))
    torch.manual_seed(0)
    net = project(build_model(name, info), **bench.FLOOR).train()
    floor = bench.hand_written_floor(net)
    assert not any(m._forward_pre_hooks for m in floor.modules())
    x, y = torch.rand(4, 3, 32, 32), torch.randint(0, 10, (4,))
    results = []
    for model, loss_fn in ((net, lambda: DIPNetLoss(prior=(0.0, 0.0))(net, x, y)), (floor, lambda: F.cross_entropy(floor(x), y))):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(7)
        for _ in range(2):  # the second step sees the running RMS the first one set
            loss = loss_fn()
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()],
                        [b.clone() for n, b in model.named_buffers() if n.endswith("running_rms")]))
    (loss_a, grads_a, rms_a), (loss_b, grads_b, rms_b) = results
    assert torch.equal(loss_a, loss_b)
    assert len(grads_a) == len(grads_b) and all(torch.equal(a, b) for a, b in zip(grads_a, grads_b))
    assert len(rms_a) == len(rms_b) > 0 and all(torch.equal(a, b) for a, b in zip(rms_a, rms_b))


@pytest.mark.parametrize("build", [
    lambda: nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)),
    lambda: nn.Sequential(nn.Conv1d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(16, 3)),
])
def test_hooks_on_a_projection_run_and_do_not_change_the_result(build):
    """Without hooks of its own a projection is applied without Module.__call__ (speed); with a
    forward hook on it, the module call runs the hook. Same seed, same outputs and gradients."""
    torch.manual_seed(0)
    net = project(build(), sigma=0.2, scale="absolute").train()
    x = torch.randn(16, 6) if isinstance(net[0], nn.Linear) else torch.randn(16, 2, 6)
    results, seen = [], []
    for hooked in (False, True):
        handles = [p.register_forward_hook(lambda mod, args, out: seen.append(out.shape)) for _, p in projections(net)] if hooked else []
        net.zero_grad(set_to_none=True)
        torch.manual_seed(1)
        out = net(x)
        out.square().sum().backward()
        results.append((out.detach(), [p.grad.clone() for p in net.parameters()]))
        for h in handles:
            h.remove()
    assert len(seen) == 2
    assert torch.equal(results[0][0], results[1][0])
    assert all(torch.equal(a, b) for a, b in zip(results[0][1], results[1][1]))


def test_running_rms_follows_its_definition_in_train_mode_only():
    """Relative scale: the first training batch sets the running RMS to sqrt(mean x^2) of the
    layer's input (computed here in float64), later batches move it by the momentum, eval and
    sampling leave it alone, and a loaded zero restarts it from the next batch."""
    torch.manual_seed(0)
    net = project(nn.Sequential(nn.Linear(6, 4)), sigma=0.2, scale="relative", rms_momentum=0.3).train()
    proj = projections(net)[0][1]
    xs = [torch.randn(8, 6) * s for s in (1.0, 3.0, 0.5)]

    def rms(x: torch.Tensor) -> float:
        return x.double().pow(2).mean().sqrt().item()

    expected = rms(xs[0])
    net(xs[0])
    assert math.isclose(proj.running_rms.item(), expected, rel_tol=1e-6)
    for x in xs[1:]:
        net(x)
        expected += 0.3 * (rms(x) - expected)
        assert math.isclose(proj.running_rms.item(), expected, rel_tol=1e-6)
    net.eval()
    net(xs[1] * 10)
    with sampling(net):
        net(xs[1] * 10)
    assert math.isclose(proj.running_rms.item(), expected, rel_tol=1e-6)
    net.load_state_dict({**net.state_dict(), "0.dipnet_projection.running_rms": torch.zeros(())})
    net.train()(xs[2])
    assert math.isclose(proj.running_rms.item(), rms(xs[2]), rel_tol=1e-6)
