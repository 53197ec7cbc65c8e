"""Model zoo: shapes, parameter counts against closed forms and published numbers, second
implementations of the forward passes, hook visibility, errors and state round-trips."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dipnet.data import DatasetInfo
from dipnet.errors import ConfigError
from dipnet.models import (
    MLP,
    MNIST1DCNN,
    MNIST1DMLP,
    MODELS,
    Attention,
    Block,
    VisionTransformer,
    build_model,
    compatible_models,
)

SHAPES = [(40,), (1, 8, 8), (1, 28, 28), (3, 32, 32), (2,)]
FLAT_ANY = {"mlp", "mnist1d-mlp"}
IMAGE = {"cnn2d", "resnet20", "resnet18", "vit"}
SUPPORTED = {  # hand-written support matrix
    (40,): FLAT_ANY | {"mnist1d-cnn"},
    (1, 8, 8): FLAT_ANY | IMAGE,
    (1, 28, 28): FLAT_ANY | IMAGE,
    (3, 32, 32): FLAT_ANY | IMAGE,
    (2,): FLAT_ANY,
}
# Only the models this test file specifies; other helpers may register more.
ZOO = sorted(FLAT_ANY | IMAGE | {"mnist1d-cnn"})


def info(shape: tuple[int, ...], classes: int = 10) -> DatasetInfo:
    return DatasetInfo("t", shape, classes, tuple(str(i) for i in range(classes)), (0.0, 1.0))


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def linear_count(dims: list[int]) -> int:
    return sum(a * b + b for a, b in zip(dims[:-1], dims[1:]))


def test_zoo_is_registered() -> None:
    assert set(ZOO) <= set(MODELS.names())


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_support_matrix(shape: tuple[int, ...]) -> None:
    fits = set(compatible_models(shape)) & set(ZOO)
    assert fits == SUPPORTED[shape]


@pytest.mark.parametrize("name,shape", [(n, s) for s in SHAPES for n in sorted(SUPPORTED[s])], ids=str)
def test_builds_and_outputs_logits(name: str, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    model = build_model(name, info(shape, classes=7))
    out = model(torch.rand(2, *shape))
    assert out.shape == (2, 7) and torch.isfinite(out).all()


@pytest.mark.parametrize("name,shape", [(n, s) for s in SHAPES for n in ZOO if n not in SUPPORTED[s]], ids=str)
def test_unfit_shape_names_fitting_models(name: str, shape: tuple[int, ...]) -> None:
    with pytest.raises(ConfigError) as err:
        build_model(name, info(shape))
    msg = str(err.value)
    assert name in msg and str(shape) in msg
    for fit in SUPPORTED[shape]:
        assert fit in msg


def test_flat_square_inputs_are_images() -> None:
    torch.manual_seed(0)
    flat = build_model("cnn2d", info((784,)))
    torch.manual_seed(0)
    image = build_model("cnn2d", info((1, 28, 28)))
    x = torch.rand(3, 1, 28, 28)
    torch.testing.assert_close(flat(x.flatten(1)), image(x))


def test_mnist1d_cnn_accepts_both_layouts() -> None:
    model = MNIST1DCNN()
    x = torch.randn(3, 40)
    torch.testing.assert_close(model(x), model(x.unsqueeze(1)))


# ---- parameter counts: closed forms and published numbers ----


@pytest.mark.parametrize(
    "kwargs,hidden",
    [({}, [256, 256]), ({"widths": [32, 16, 16]}, [32, 16, 16]), ({"width": 12, "depth": 3}, [12, 12, 12]),
     ({"widths": []}, []), ({"depth": 0}, []), ({"widths": 5, "residual": True}, [5])],
    ids=str,
)
def test_mlp_param_count(kwargs: dict, hidden: list[int]) -> None:
    model = build_model("mlp", info((1, 8, 8), classes=10), **kwargs)
    assert n_params(model) == linear_count([64, *hidden, 10])


def test_mnist1d_reference_param_counts() -> None:
    # MLP: 40*100+100 + 100*100+100 + 100*10+10; CNN lengths 40 -> 19 -> 10 -> 5:
    # (1*25*5+25) + 2*(25*25*3+25) + (25*5*10+10).
    assert n_params(build_model("mnist1d-mlp", info((40,)))) == 4100 + 10100 + 1010 == 15210
    cnn = build_model("mnist1d-cnn", info((40,)))
    assert n_params(cnn) == 150 + 2 * 1900 + 1260 == 5210
    assert cnn.linear.in_features == 125


def test_resnet_published_param_counts() -> None:
    # He et al. 2016, Table 6: ResNet-20 has 0.27M parameters (option A: 269,722 exactly);
    # the CIFAR ResNet-18 (kuangliu/pytorch-cifar) has 11,173,962 (~11.2M).
    r20 = build_model("resnet20", info((3, 32, 32)))
    r18 = build_model("resnet18", info((3, 32, 32)))
    assert n_params(r20) == 269_722
    assert n_params(r18) == 11_173_962
    # option B adds 1x1 conv + BN on the two down-sampling shortcuts: 16*32+2*32 + 32*64+2*64.
    r20b = build_model("resnet20", info((3, 32, 32)), shortcut="B")
    assert n_params(r20b) == 269_722 + 512 + 64 + 2048 + 128


def _resnet_count(in_ch: int, widths: tuple[int, ...], blocks: tuple[int, ...], classes: int, shortcut: str) -> int:
    """Parameters of the CIFAR ResNet counted layer by layer: 3x3 convolutions without bias, two
    per BatchNorm channel, a 1x1 conv + BN on each option-B projection shortcut, the Linear head."""
    conv = lambda a, b, k: a * b * k * k  # noqa: E731
    total = conv(in_ch, widths[0], 3) + 2 * widths[0]
    prev = widths[0]
    for i, (w, n) in enumerate(zip(widths, blocks)):
        for j in range(n):
            total += conv(prev, w, 3) + 2 * w + conv(w, w, 3) + 2 * w
            if shortcut == "B" and (prev != w or (i > 0 and j == 0)):
                total += conv(prev, w, 1) + 2 * w
            prev = w
    return total + prev * classes + classes


def test_resnet_param_counts_equal_the_layer_by_layer_count() -> None:
    assert _resnet_count(3, (16, 32, 64), (3, 3, 3), 10, "A") == 269_722  # the published 0.27M, exactly
    assert _resnet_count(3, (64, 128, 256, 512), (2, 2, 2, 2), 10, "B") == 11_173_962
    for name, kwargs, args in [
        ("resnet20", {"width": 8}, ((8, 16, 32), (3, 3, 3), "A")),
        ("resnet20", {"width": 8, "shortcut": "B"}, ((8, 16, 32), (3, 3, 3), "B")),
        ("resnet18", {"width": 16}, ((16, 32, 64, 128), (2, 2, 2, 2), "B")),
        ("resnet18", {"width": 16, "shortcut": "A"}, ((16, 32, 64, 128), (2, 2, 2, 2), "A")),
    ]:
        model = build_model(name, info((1, 28, 28), classes=7), **kwargs)
        widths, blocks, shortcut = args
        assert n_params(model) == _resnet_count(1, widths, blocks, 7, shortcut), (name, kwargs)


def _randomize_batchnorm(model: nn.Module) -> nn.Module:
    """Non-trivial running statistics and affine parameters, so that eval-mode BN is not the identity."""
    g = torch.Generator().manual_seed(11)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(0.3 * torch.randn(c, generator=g))
            m.running_var.copy_(0.5 + torch.rand(c, generator=g))
            with torch.no_grad():
                m.weight.copy_(0.5 + torch.rand(c, generator=g))
                m.bias.copy_(0.2 * torch.randn(c, generator=g))
    return model


def _bn(h: torch.Tensor, w: dict, key: str) -> torch.Tensor:
    """Eval-mode BatchNorm written out: (h - mean) / sqrt(var + 1e-5) * gamma + beta per channel."""
    view = lambda t: t.view(1, -1, 1, 1)  # noqa: E731
    return (h - view(w[f"{key}.running_mean"])) / view(w[f"{key}.running_var"] + 1e-5).sqrt() * view(w[f"{key}.weight"]) \
        + view(w[f"{key}.bias"])


def _block(h: torch.Tensor, w: dict, key: str, stride: int, out_ch: int, shortcut: str) -> torch.Tensor:
    """relu(bn2(conv2(relu(bn1(conv1(h))))) + shortcut(h)), He et al. 2016 Fig. 2; option A subsamples
    and zero-pads the new channels on both sides, option B is a strided 1x1 conv + BN."""
    out = _bn(F.conv2d(h, w[f"{key}.conv1.weight"], stride=stride, padding=1), w, f"{key}.bn1").clamp(min=0)
    out = _bn(F.conv2d(out, w[f"{key}.conv2.weight"], padding=1), w, f"{key}.bn2")
    in_ch = h.shape[1]
    if stride == 1 and in_ch == out_ch:
        skip = h
    elif shortcut == "A":
        sub = h[:, :, ::stride, ::stride]
        extra = out_ch - in_ch
        zeros = lambda k: sub.new_zeros(sub.shape[0], k, *sub.shape[2:])  # noqa: E731
        skip = torch.cat([zeros(extra // 2), sub, zeros(extra - extra // 2)], 1)
    else:
        skip = _bn(F.conv2d(h, w[f"{key}.shortcut.0.weight"], stride=stride), w, f"{key}.shortcut.1")
    return (out + skip).clamp(min=0)


def _resnet_forward(model: nn.Module, x: torch.Tensor, blocks: tuple[int, ...], widths: tuple[int, ...],
                    shortcut: str) -> torch.Tensor:
    w = {k: v.detach() for k, v in model.state_dict().items()}
    h = _bn(F.conv2d(x, w["conv1.weight"], padding=1), w, "bn1").clamp(min=0)
    for i, (n, width) in enumerate(zip(blocks, widths)):
        for j in range(n):
            h = _block(h, w, f"layers.{i}.{j}", 2 if i > 0 and j == 0 else 1, width, shortcut)
    return h.mean((2, 3)) @ w["fc.weight"].T + w["fc.bias"]


@pytest.mark.parametrize("name,kwargs,blocks,widths,shortcut", [
    ("resnet20", {}, (3, 3, 3), (16, 32, 64), "A"),
    ("resnet20", {"width": 8, "shortcut": "B"}, (3, 3, 3), (8, 16, 32), "B"),
    ("resnet18", {"width": 16}, (2, 2, 2, 2), (16, 32, 64, 128), "B"),
], ids=str)
def test_resnet_forward_equals_a_functional_forward(name, kwargs, blocks, widths, shortcut) -> None:
    torch.manual_seed(6)
    model = _randomize_batchnorm(build_model(name, info((3, 16, 16), classes=5), **kwargs)).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model(x), _resnet_forward(model, x, blocks, widths, shortcut), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(model(x.flatten(1)), model(x), rtol=0, atol=0)


def test_resnet_basic_blocks_equal_the_hand_computation() -> None:
    """One block of each kind in eval mode: identity, option-A and option-B down-sampling shortcuts."""
    from dipnet.models.resnet import BasicBlock

    torch.manual_seed(7)
    x = torch.randn(3, 4, 6, 6)
    for args, shortcut in [((4, 4, 1), "A"), ((4, 8, 2), "A"), ((4, 8, 2), "B"), ((4, 6, 1), "B")]:
        block = _randomize_batchnorm(BasicBlock(*args, shortcut=shortcut)).eval()
        w = {k: v.detach() for k, v in block.state_dict().items()}
        with torch.no_grad():
            expected = _block(x, {f"b.{k}": v for k, v in w.items()}, "b", args[2], args[1], shortcut)
            torch.testing.assert_close(block(x), expected, rtol=1e-5, atol=1e-5)
    # the option-A shortcut itself: the subsampled input in the middle channels, zeros in the two new ones each side
    block = BasicBlock(4, 8, 2, shortcut="A").eval()
    assert torch.equal(block.shortcut(x)[:, 2:6], x[:, :, ::2, ::2]) and not block.shortcut(x)[:, [0, 1, 6, 7]].any()


@pytest.mark.parametrize("hidden", [0, 12])
def test_cnn2d_forward_equals_a_functional_forward(hidden: int) -> None:
    torch.manual_seed(8)
    model = build_model("cnn2d", info((3, 12, 12), classes=6), channels=(5, 7), hidden=hidden)
    x = torch.randn(4, 3, 12, 12)
    w = {k: v.detach() for k, v in model.state_dict().items()}
    h = x
    for i in range(2):  # conv3x3 (padding 1) -> ReLU -> 2x2 max-pool, twice: 12 -> 6 -> 3
        h = F.max_pool2d(F.relu(F.conv2d(h, w[f"features.{i}.conv.weight"], w[f"features.{i}.conv.bias"], padding=1)), 2)
    h = h.reshape(4, 7 * 3 * 3)
    if hidden:
        h = F.relu(F.linear(h, w["fc.weight"], w["fc.bias"]))
    expected = F.linear(h, w["head.weight"], w["head.bias"])
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected)


# ---- second implementations ----


def test_mnist1d_mlp_matches_functional() -> None:
    torch.manual_seed(1)
    model = MNIST1DMLP()
    x = torch.randn(5, 40)
    w = {k: v.detach() for k, v in model.state_dict().items()}
    h = torch.clamp(x @ w["linear1.weight"].T + w["linear1.bias"], min=0)
    h = h + torch.clamp(h @ w["linear2.weight"].T + w["linear2.bias"], min=0)
    expected = h @ w["linear3.weight"].T + w["linear3.bias"]
    torch.testing.assert_close(model(x), expected)


def test_mnist1d_cnn_matches_functional() -> None:
    torch.manual_seed(2)
    model = MNIST1DCNN()
    x = torch.randn(4, 40)
    w = model.state_dict()
    h = x.view(4, 1, 40)
    for i, k in ((1, 5), (2, 3), (3, 3)):
        h = F.conv1d(h, w[f"conv{i}.weight"], w[f"conv{i}.bias"], stride=2, padding=1).clamp(min=0)
        assert w[f"conv{i}.weight"].shape[-1] == k
    expected = h.reshape(4, -1) @ w["linear.weight"].T + w["linear.bias"]
    torch.testing.assert_close(model(x), expected)


def test_residual_mlp_matches_loop() -> None:
    torch.manual_seed(3)
    model = MLP(6, 3, widths=(8, 8, 4), activation="tanh", residual=True)
    x = torch.randn(5, 6)
    fc = [b.fc for b in model.blocks]
    h = torch.tanh(fc[0](x))          # 6 -> 8: widths differ, no skip
    h = h + torch.tanh(fc[1](h))      # 8 -> 8: residual
    h = torch.tanh(fc[2](h))          # 8 -> 4: no skip
    torch.testing.assert_close(model(x), model.head(h))


def naive_attention(attn: Attention, x: torch.Tensor) -> torch.Tensor:
    b, n, c = x.shape
    heads, d = attn.heads, c // attn.heads
    wq, wk, wv = attn.qkv.weight.split(c)
    bq, bk, bv = attn.qkv.bias.split(c)
    outs = []
    for i in range(b):
        per_head = []
        for hd in range(heads):
            sl = slice(hd * d, (hd + 1) * d)
            q = x[i] @ wq[sl].T + bq[sl]
            k = x[i] @ wk[sl].T + bk[sl]
            v = x[i] @ wv[sl].T + bv[sl]
            scores = q @ k.T / math.sqrt(d)
            weights = torch.exp(scores - scores.max(dim=1, keepdim=True).values)
            per_head.append((weights / weights.sum(dim=1, keepdim=True)) @ v)
        outs.append(torch.cat(per_head, dim=1) @ attn.proj.weight.T + attn.proj.bias)
    return torch.stack(outs)


def test_attention_matches_naive_softmax() -> None:
    torch.manual_seed(4)
    attn = Attention(dim=12, heads=3)
    for p in attn.parameters():
        nn.init.normal_(p, std=0.5)
    x = torch.randn(2, 5, 12)
    torch.testing.assert_close(attn(x), naive_attention(attn, x), rtol=1e-5, atol=1e-5)


def test_vit_block_is_prenorm_residual() -> None:
    torch.manual_seed(5)
    block = Block(dim=8, heads=2, mlp_ratio=2.0)
    x = torch.randn(2, 4, 8)
    h = x + naive_attention(block.attn, F.layer_norm(x, (8,), block.norm1.weight, block.norm1.bias))
    m = F.layer_norm(h, (8,), block.norm2.weight, block.norm2.bias)
    h = h + block.mlp.fc2(F.gelu(block.mlp.fc1(m)))
    torch.testing.assert_close(block(x), h, rtol=1e-5, atol=1e-5)


def test_vit_defaults_and_timm_names() -> None:
    assert build_model("vit", info((1, 28, 28))).patch == 7
    assert build_model("vit", info((3, 32, 32))).patch == 4
    model = build_model("vit", info((1, 8, 8)))
    assert model.patch == 2 and model.pos_embed.shape == (1, 16 + 1, 64)
    names = set(model.state_dict())
    for key in ("cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.0.norm1.weight", "blocks.0.attn.qkv.weight",
                "blocks.0.attn.proj.weight", "blocks.0.norm2.bias", "blocks.0.mlp.fc1.weight", "blocks.3.mlp.fc2.bias",
                "norm.weight", "head.weight"):
        assert key in names


# ---- hook visibility: activations are modules, each layer runs once per forward ----

HOOKED = (nn.ReLU, nn.GELU, nn.Hardtanh, nn.Tanh, nn.LeakyReLU, nn.Linear, nn.Conv1d, nn.Conv2d)
EXPECTED_RELUS = {"mlp": 2, "mnist1d-mlp": 2, "cnn2d": 2, "resnet20": 1 + 2 * 9, "resnet18": 1 + 2 * 8, "vit": 0}


@pytest.mark.parametrize("name", ZOO)
def test_every_layer_and_activation_runs_once(name: str) -> None:
    shape = (40,) if name == "mnist1d-cnn" else (1, 8, 8)
    model = build_model(name, info(shape))
    calls: dict[str, int] = {}
    for mod_name, module in model.named_modules():
        assert not getattr(module, "inplace", False), f"{mod_name} is in-place"
        if isinstance(module, HOOKED):
            calls[mod_name] = 0
            module.register_forward_pre_hook(lambda m, inp, key=mod_name: calls.__setitem__(key, calls[key] + 1))
    model(torch.rand(2, *shape))
    assert calls and all(c == 1 for c in calls.values()), calls
    relus = sum(isinstance(m, nn.ReLU) for m in model.modules())
    assert relus == EXPECTED_RELUS.get(name, 3)
    if name == "vit":
        assert sum(isinstance(m, nn.GELU) for m in model.modules()) == 4


@pytest.mark.parametrize("activation,cls", [("relu", nn.ReLU), ("hardtanh", nn.Hardtanh), ("gelu", nn.GELU),
                                             ("tanh", nn.Tanh), ("leaky_relu", nn.LeakyReLU)])
def test_mlp_activation_modules(activation: str, cls: type) -> None:
    model = build_model("mlp", info((40,)), width=16, depth=3, activation=activation)
    acts = [m for m in model.modules() if isinstance(m, cls)]
    assert len(acts) == 3 and len({id(a) for a in acts}) == 3


# ---- errors ----


@pytest.mark.parametrize(
    "name,shape,kwargs,needle",
    [
        ("mlp", (40,), {"activation": "swish"}, "relu, hardtanh, gelu, tanh, leaky_relu"),
        ("mlp", (40,), {"widths": [64, -1]}, "widths"),
        ("mlp", (40,), {"widths": "wide"}, "widths"),
        ("mlp", (40,), {"width": 64, "widths": [64]}, "either"),
        ("mlp", (40,), {"depth": 1.5}, "depth"),
        ("mlp", (40,), {"residual": "maybe"}, "residual"),
        ("mlp", (40,), {"dropout": 0.1}, "widths, width, depth, activation, residual"),
        ("mnist1d-cnn", (40,), {"channels": 0}, "channels"),
        ("cnn2d", (1, 8, 8), {"channels": [8, 8, 8, 8]}, "at most 3"),
        ("resnet20", (3, 32, 32), {"shortcut": "C"}, "A, B"),
        ("resnet18", (3, 32, 32), {"depth": 34}, "width, shortcut"),
        ("vit", (1, 28, 28), {"patch": 5}, "[1, 2, 4, 7, 14, 28]"),
        ("vit", (3, 32, 32), {"heads": 5}, "heads"),
        ("vit", (3, 32, 32), {"dim": -8}, "dim"),
    ],
    ids=str,
)
def test_bad_options_raise_config_error(name: str, shape: tuple, kwargs: dict, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        build_model(name, info(shape), **kwargs)
    assert needle in str(err.value)


def test_classes_validate_directly() -> None:
    with pytest.raises(ConfigError, match="activation"):
        MLP(10, 2, activation="sigmoid")
    with pytest.raises(ConfigError, match="too short"):
        MNIST1DCNN(in_length=2)
    with pytest.raises(ConfigError, match="divisible"):
        VisionTransformer((3, 30, 30), 10, patch=4)


# ---- determinism and state round-trips ----


@pytest.mark.parametrize("name", ZOO)
def test_seeded_init_and_state_dict_round_trip(name: str) -> None:
    shape = (40,) if name == "mnist1d-cnn" else (1, 8, 8)
    torch.manual_seed(0)
    a = build_model(name, info(shape)).eval()
    torch.manual_seed(0)
    same = build_model(name, info(shape))
    for (k, v), (k2, v2) in zip(a.state_dict().items(), same.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k
    torch.manual_seed(1)
    b = build_model(name, info(shape)).eval()
    x = torch.rand(2, *shape)
    assert not torch.allclose(a(x), b(x))
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(b(x), a(x), rtol=0, atol=0)


def test_docs_recipe_table_is_the_registry_and_the_cli_follows_it(tmp_path):
    import json
    import re
    from pathlib import Path

    from dipnet.cli import main
    from dipnet.cli.models import recipe_text
    from dipnet.models import MODELS, model_recipe

    doc = (Path(__file__).resolve().parents[1] / "docs" / "models.md").read_text()
    rows = dict(re.findall(r"^\| `([\w-]+)` \| (optimizer [^|]+) \|$", doc, flags=re.M))

    # the package's own models: other test files register stubs of their own in the same registry
    shipped = [name for name in MODELS.names() if MODELS.get(name).builder.__module__.startswith("dipnet.")]
    assert set(ZOO) <= set(shipped)
    assert rows == {name: recipe_text(model_recipe(name)) for name in shipped}
    assert main(["train", "--data", "synthetic", "--model", "mnist1d-mlp", "--epochs", "1", "--out", str(tmp_path / "r"),
                 "--progress", "none"]) == 0
    cfg = json.loads((tmp_path / "r" / "run.json").read_text())["config"]
    assert (cfg["optimizer"], cfg["lr"], cfg["batch_size"], cfg["schedule"], cfg["epochs"]) == ("adamw", 0.01, 100, "cosine", 1)
