"""Projected models under torch.compile (docs/dipnet.md, "Under torch.compile").

Oracles: ``fullgraph=True`` itself (it raises at any graph break), the eager model with the same
noise (inductor's ``fallback_random`` makes the compiled graph draw with torch's own generator,
and eager ``noise="fresh"`` draws the same way), the standard normal law (Kolmogorov-Smirnov,
moments, correlations) where the compiled noise is inductor's own, and the closed-form
expectation of sigma's gradient on a quadratic loss.
"""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dipnet import compile_model
from dipnet.data import DatasetInfo
from dipnet.models import MODELS, build_model, compatible_models
from dipnet.projection import DIPNetLoss, project, projections

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # dynamo's and inductor's notes
inductor_config = pytest.importorskip("torch._inductor.config")

SHAPES = [(40,), (3, 32, 32)]


def _info(shape: tuple[int, ...]) -> DatasetInfo:
    return DatasetInfo("x", shape, 10, tuple("0123456789"), None)


def _zoo() -> list[tuple[str, tuple[int, ...]]]:
    out = []
    for name in MODELS.names():
        shape = next((s for s in SHAPES if name in compatible_models(s)), None)
        if shape is not None:
            out.append((name, shape))
    return out


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch.compiler.reset()
    yield
    torch.compiler.reset()


def _noisy(model: nn.Module, x: torch.Tensor) -> bool:
    with torch.no_grad():
        return not torch.equal(model(x), model(x))


# ---------------------------------------------------------------- one graph


@pytest.mark.parametrize("name,shape", _zoo(), ids=[n for n, _ in _zoo()])
def test_every_zoo_model_projected_compiles_to_one_graph_in_train_and_eval(name, shape):
    """fullgraph=True raises at any graph break; m > 1 is the same forward on the stacked batch."""
    assert len(_zoo()) >= 7
    torch.manual_seed(0)
    model = project(build_model(name, _info(shape)))
    x, y = torch.randn(4, *shape), torch.randint(0, 10, (4,))
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    model.train()
    assert not torch.equal(compiled(x), compiled(x))
    for m in (1, 3):
        DIPNetLoss(trajectories=m)(compiled, x, y).backward()
    assert all(p.log_sigma.grad is not None for _, p in projections(model))
    model.eval()
    assert torch.equal(compiled(x), compiled(x))


def test_a_projected_tiny_llama_compiles_to_one_graph():
    pytest.importorskip("peft")
    from dipnet.llm import FinetuneConfig, collate, encode, load_llm, load_task, prepare_model
    from dipnet.llm.runner import llm_method

    task = load_task("chain_sum", 8, 1, 1, options={"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2})
    for targets in ("decoder", "lora"):  # m = 1 and 2 in training, and eval
        cfg = FinetuneConfig(model="tiny-llama", method="dipnet", method_params={"targets": targets})
        torch.manual_seed(0)
        base, tok = load_llm("tiny-llama")
        model = prepare_model(base, cfg, llm_method(cfg))
        batch, labels = collate(encode(tok, task.train[:4], system=None, worked_solution=False, context=256,
                                       new_tokens=8), tok.pad_token_id)
        compiled = torch.compile(model, fullgraph=True, backend="eager")
        torch.compiler.reset()
        model.train()
        for m in (1, 2):
            loss = DIPNetLoss(lambda logits, y: F.cross_entropy(logits[:, :-1].flatten(0, 1), y[:, 1:].flatten(),
                                                                ignore_index=-100), trajectories=m)
            loss(compiled, batch, labels).backward()
        assert all(p.log_sigma.grad is not None for _, p in projections(model)), targets
        model.eval()
        with torch.no_grad():
            assert torch.equal(compiled(**batch).logits, compiled(**batch).logits)


# ---------------------------------------------------------------- guards: the hooks a model has now


def test_compiled_code_follows_the_projections_a_model_has():
    """An unprojected model and a projected one of the same class, compiled in one process, in
    any order and any train/eval order: each runs with exactly its own hooks."""
    info = _info((40,))
    erm, first, second = (build_model("mnist1d-mlp", info) for _ in range(3))
    project(first)
    x = torch.randn(4, 40)
    plain = torch.compile(erm, backend="aot_eager")
    assert not _noisy(plain, x)
    for net in (first, second):
        compiled = torch.compile(net, backend="aot_eager")
        if net is second:
            net.eval()
            assert not _noisy(compiled, x)  # compiled in eval first ...
            project(net)  # ... and projected after compiling
            net.train()
        assert _noisy(compiled, x)
        net.eval()
        assert not _noisy(compiled, x)
        net.train()
        assert _noisy(compiled, x)
    assert not _noisy(plain, x)


# ---------------------------------------------------------------- the same numbers as eager


SMALL = {"mlp": ((1, 8, 8), {"widths": (32, 32)}), "mnist1d-cnn": ((64,), {"channels": 4})}  # shape, options


def _small(name: str = "mlp", **settings) -> tuple[nn.Module, tuple[int, ...]]:
    """A small projected zoo model in train mode, and its input shape."""
    shape, options = SMALL[name]
    torch.manual_seed(0)
    return project(build_model(name, _info(shape), **options), **settings).train(), shape


@pytest.mark.parametrize("m,name,settings", [(2, "mlp", {}), (1, "mlp", {"noise": "fresh", "input_grad_fraction": 1.0}),
                                             (1, "mnist1d-cnn", {})],
                         ids=["mlp-m2-defaults", "mlp-m1-fresh-exact", "cnn-m1-defaults"])
def test_compiled_training_equals_eager_with_the_noise_fixed(m, name, settings):
    """compile_model runs random ops through torch's kernels, in the eager order: the compiled
    step draws the eager step's table offsets, window rows (the CPU defaults) or fresh values.
    Three optimizer steps; losses, gradients (sigmas included) and every parameter and buffer
    (running RMS) agree to float rounding."""
    base, shape = _small(name, **settings)
    x, y = torch.randn(32, *shape), torch.randint(0, 10, (32,))
    results = []
    for compiled in (False, True):
        net = copy.deepcopy(base)
        model = compile_model(net) if compiled else net
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        loss_fn = DIPNetLoss(trajectories=m)
        torch.manual_seed(7)
        losses = []
        for _ in range(3):
            opt.zero_grad()
            loss = loss_fn(model, x, y)
            loss.backward()
            opt.step()
            losses.append(loss.detach())
        results.append((torch.stack(losses), [p.grad for p in net.parameters()], net.state_dict()))
    (la, ga, sa), (lb, gb, sb) = results
    assert torch.allclose(la, lb, rtol=1e-5, atol=1e-6)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(ga, gb))
    assert all(torch.allclose(sa[k], sb[k], rtol=1e-5, atol=1e-6) for k in sa)


def test_the_whole_compiled_training_step_equals_eager():
    """torch.compile of a function that computes DIPNet's loss, backward and the optimizer step."""
    base, shape = _small()
    x, y = torch.randn(16, *shape), torch.randint(0, 10, (16,))
    params = []
    for compiled in (False, True):
        net = copy.deepcopy(base)
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        loss_fn = DIPNetLoss(trajectories=2)

        def step() -> torch.Tensor:
            opt.zero_grad()
            loss = loss_fn(net, x, y)
            loss.backward()
            opt.step()
            return loss.detach()

        run = torch.compile(step) if compiled else step
        torch.manual_seed(7)
        with inductor_config.patch(fallback_random=True):
            for _ in range(2):
                run()
        params.append([p.detach().clone() for p in net.parameters()])
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(*params))


# ---------------------------------------------------------------- the law of inductor's own noise


@pytest.mark.parametrize("noise,inductor_random", [("auto", False), ("fresh", True)])
def test_compiled_noise_is_standard_normal_independent_and_seeded(noise, inductor_random):
    """u = x + sigma * eps compiled, table windows through torch's generator (compile_model) or
    fresh values from inductor's own Philox generator (plain torch.compile): eps is N(0, 1) (KS
    test, moments), uncorrelated across calls and neighbouring features; per-channel sigmas
    scale their channel; torch.manual_seed reproduces a compiled draw."""
    from scipy import stats

    sigma = torch.tensor([0.5, 2.0, 1.0])
    conv = project(nn.Sequential(nn.Conv1d(3, 3, 1, bias=False), nn.Linear(64, 64, bias=False)),
                   scale="absolute", noise=noise)
    with torch.no_grad():
        conv[0].weight.copy_(torch.eye(3).unsqueeze(-1))
        conv[1].weight.copy_(torch.eye(64))
        conv[0].dipnet_projection.log_sigma.copy_(sigma.log())
        conv[1].dipnet_projection.log_sigma.fill_(math.log(0.2))
    compiled = torch.compile(conv) if inductor_random else compile_model(conv)
    x = torch.zeros(256, 3, 64)
    with torch.no_grad():
        torch.manual_seed(3)
        a = compiled(x)
        torch.manual_seed(3)
        assert torch.equal(a, compiled(x))
        b = compiled(x)
    var = torch.tensor([0.25, 4.0, 1.0]).view(1, 3, 1) + 0.04  # the conv's noise then the Linear's
    z = (a / var.sqrt()).flatten()
    assert stats.kstest(z[:20000].numpy(), "norm").pvalue > 1e-3
    assert abs(float(z.mean())) < 0.01 and abs(float(z.std()) - 1) < 0.01
    zb = (b / var.sqrt()).flatten()
    assert abs(float(torch.corrcoef(torch.stack([z, zb]))[0, 1])) < 0.01  # two calls
    assert abs(float(torch.corrcoef(torch.stack([z[:-1], z[1:]]))[0, 1])) < 0.01  # neighbouring features


def test_compiled_sigma_gradient_has_its_closed_form_expectation():
    """L = 0.5 ||x + sigma eps||^2 through an identity layer: dL/d log sigma = sigma sum (x + sigma eps) eps,
    whose expectation is sigma^2 n. Mean of 200 compiled draws within 5 standard errors."""
    layer = nn.Linear(50, 50, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.eye(50))
    project(layer, scale="absolute", noise="fresh", sigma=0.3)
    layer.train()
    compiled = compile_model(layer)
    log_sigma = layer.dipnet_projection.log_sigma
    x = torch.randn(8, 50)
    grads = []
    for _ in range(200):
        log_sigma.grad = None
        (0.5 * compiled(x).pow(2).sum()).backward()
        grads.append(log_sigma.grad.clone())
    g = torch.stack(grads)
    n = x.numel()
    se = g.std(0) / math.sqrt(len(g))
    assert torch.all((g.mean(0) - 0.09 * n / 50).abs() < 5 * se)


# ---------------------------------------------------------------- dipnet train / finetune --compile


def test_the_engine_trains_through_torch_compile_as_it_does_eager(tmp_path):
    """TrainConfig(compile=True): the same records as eager to float rounding (compiled draws are
    the eager ones), compile_s in the final metrics, the saved weights the eager module's."""
    from dipnet.engine import TrainConfig, train

    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 8, generator=g)
    y = (x @ torch.randn(8, 3, generator=g)).argmax(1)
    from dipnet.data import Dataset

    ds = Dataset(x[:200], y[:200], x[200:], y[200:], DatasetInfo("toy", (8,), 3, ("0", "1", "2"), None))
    results = []
    for compiled in (False, True):
        cfg = TrainConfig(data="toy", method="dipnet+sam", epochs=2, batch_size=32, lr=1e-2, seed=1, compile=compiled,
                          out=str(tmp_path / str(compiled)), progress="none")
        results.append(train(cfg, dataset=ds, model=lambda info: nn.Sequential(nn.Linear(8, 16), nn.ReLU(),
                                                                                nn.Linear(16, 3))))
    eager, compiled = results
    assert "compile_s" in compiled.final and compiled.final["compile_s"] >= 0 and "compile_s" not in eager.final
    for a, b in zip(eager.history, compiled.history):
        for key in ("objective", "train_loss", "test_loss", "test_acc"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
    sa, sb = eager.model.state_dict(), compiled.model.state_dict()
    assert sa.keys() == sb.keys() and all(torch.allclose(sa[k], sb[k], rtol=1e-4, atol=1e-6) for k in sa)


def test_finetune_trains_through_torch_compile_as_it_does_eager(monkeypatch):
    """FinetuneConfig(compile=True) on tiny-llama with DIPNet on the decoder: batches of several
    lengths (dynamic shapes), the eager validation losses to float rounding. Dynamo with AOT
    autograd and no code generation (aot_eager), for the time; inductor is the engine test's."""
    pytest.importorskip("peft")
    from dipnet.engine import core
    from dipnet.llm import FinetuneConfig, Finetuner

    monkeypatch.setattr(core, "compile_model", lambda model, **kw: compile_model(model, **kw, backend="aot_eager"))

    runs = []
    for compiled in (False, True):
        cfg = FinetuneConfig(model="tiny-llama", task="chain_sum", method="dipnet", compile=compiled,
                             task_kwargs={"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 2},
                             train_size=24, val_size=4, test_size=4, steps=3, batch_size=4, lr=1e-2, log_every=1,
                             checkpoint_every=3, progress="none")
        runs.append(Finetuner(cfg).fit())
    eager, compiled = runs
    assert [h["val_loss"] for h in eager.history] == pytest.approx([h["val_loss"] for h in compiled.history], rel=1e-4)
    assert compiled.final["compile_s"] >= 0


def test_traced_table_draws_are_table_windows_one_per_block():
    """traced_like, the draw torch.compile traces (called eagerly here): a draw of one window is
    the eager draw_like's under the same seed; a larger draw is one window of consecutive table
    entries per block of rows (located in the table by its first value), so i.i.d. within it."""
    from dipnet.noise_table import TABLE_SIZE, _table, draw_like, traced_like

    x = torch.zeros(16, 100)
    torch.manual_seed(5)
    eager, _ = draw_like(x, "table")
    torch.manual_seed(5)
    assert torch.equal(traced_like(x), eager)
    big = torch.zeros(6, TABLE_SIZE // 5)  # 1.2 tables: 3 blocks of 2 rows, each within TABLE_SIZE // 2
    eps = traced_like(big).view(3, -1)
    table = _table("cpu", torch.float32)
    for block in eps:
        starts = (table == block[0]).nonzero().flatten().tolist()  # a float32 value may recur in 4M draws
        assert any(torch.equal(table[s:s + block.numel()], block) for s in starts)
    assert not torch.equal(eps[0, :100], eps[1, :100])
