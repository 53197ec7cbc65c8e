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
    Attention,
    Block,
    VisionTransformer,
    build_model,
    compatible_models,
    list_models,
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
    assert set(ZOO) <= set(list_models())


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


def test_resnet18_forward_two_images() -> None:
    model = build_model("resnet18", info((3, 32, 32))).eval()
    with torch.no_grad():
        assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)


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
    from dipnet.models import list_models, model_recipe

    doc = (Path(__file__).resolve().parents[1] / "docs" / "models.md").read_text()
    rows = dict(re.findall(r"^\| `([\w-]+)` \| (optimizer [^|]+) \|$", doc, flags=re.M))
    assert rows == {name: recipe_text(model_recipe(name)) for name in list_models()}
    assert main(["train", "--data", "synthetic", "--model", "mnist1d-mlp", "--epochs", "1", "--out", str(tmp_path / "r"),
                 "--progress", "none"]) == 0
    cfg = json.loads((tmp_path / "r" / "run.json").read_text())["config"]
    assert (cfg["optimizer"], cfg["lr"], cfg["batch_size"], cfg["schedule"], cfg["epochs"]) == ("adamw", 0.01, 100, "cosine", 1)
