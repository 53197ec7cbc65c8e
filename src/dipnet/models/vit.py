"""A small Vision Transformer (Dosovitskiy et al., ICLR 2021) with pre-norm blocks in timm naming."""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..data.base import DatasetInfo
from ..errors import ConfigError
from ._common import MAX_LAYERS, as_image, check_bool, check_float, check_int, image_shape, zoo_model

DEFAULT_PATCH = {28: 7, 32: 4}


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def default_patch(height: int, width: int) -> int:
    """7 for 28x28, 4 for 32x32; otherwise the smallest patch >= 2 dividing both sides that gives at
    most 64 patches (1 when none divides)."""
    if height == width and height in DEFAULT_PATCH:
        return DEFAULT_PATCH[height]
    for p in _divisors(math.gcd(height, width))[1:]:
        if (height // p) * (width // p) <= 64:
            return p
    return 1


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch x patch`` patches to tokens: Conv2d with stride = kernel = patch."""

    def __init__(self, in_channels: int, dim: int, patch: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention ``softmax(Q K^T / sqrt(d_head)) V`` (Vaswani et al. 2017, Eq. 1)
    with one ``qkv`` Linear and an output ``proj`` Linear."""

    def __init__(self, dim: int, heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % heads:
            raise ConfigError(f"Attention: dim {dim} is not divisible by heads {heads}; choose heads in {_divisors(dim)}")
        self.heads, self.head_dim = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))

    def extra_repr(self) -> str:
        return f"heads={self.heads}, head_dim={self.head_dim}"


class Mlp(nn.Module):
    """``fc2(gelu(fc1(x)))``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: ``x = x + attn(norm1(x)); x = x + mlp(norm2(x))``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, max(1, int(dim * mlp_ratio)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """Patch embedding, class token, learned position embedding, ``depth`` pre-norm blocks, final
    LayerNorm, Linear head on the class token. Accepts ``(B, C, H, W)`` or the same inputs flattened."""

    def __init__(
        self,
        image_shape: Sequence[int],
        num_classes: int,
        patch: int | None = None,
        dim: int = 64,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
    ) -> None:
        super().__init__()
        if len(image_shape) != 3:
            raise ConfigError(f"VisionTransformer: image_shape must be (C, H, W), got {tuple(image_shape)}")
        c, h, w = (check_int("VisionTransformer", "image_shape", s) for s in image_shape)
        num_classes = check_int("VisionTransformer", "num_classes", num_classes)
        patch = default_patch(h, w) if patch is None else check_int("VisionTransformer", "patch", patch)
        dim = check_int("VisionTransformer", "dim", dim)
        depth = check_int("VisionTransformer", "depth", depth, maximum=MAX_LAYERS)
        heads = check_int("VisionTransformer", "heads", heads)
        mlp_ratio = check_float("VisionTransformer", "mlp_ratio", mlp_ratio, minimum=0.0)
        qkv_bias = check_bool("VisionTransformer", "qkv_bias", qkv_bias)
        if h % patch or w % patch:
            raise ConfigError(
                f"VisionTransformer: image size {h}x{w} is not divisible by patch {patch}; "
                f"choose patch in {_divisors(math.gcd(h, w))}"
            )
        if dim % heads:
            raise ConfigError(f"VisionTransformer: dim {dim} is not divisible by heads {heads}; choose heads in {_divisors(dim)}")
        self.image_shape, self.patch = (c, h, w), patch
        num_patches = (h // patch) * (w // patch)
        self.patch_embed = PatchEmbed(c, dim, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, dim))
        self.blocks = nn.Sequential(*(Block(dim, heads, mlp_ratio, qkv_bias) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        """timm's ViT init: truncated normal (std 0.02) for Linear weights and the position
        embedding, std 1e-6 for the class token, zero biases."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(as_image(x, self.image_shape))
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        h = torch.cat((cls, tokens), dim=1) + self.pos_embed
        h = self.norm(self.blocks(h))
        return self.head(h[:, 0])


@zoo_model("vit", "small Vision Transformer: patch embedding, class token, pre-norm blocks (dim 64, depth 4, heads 4)",
           recipe={"optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.05, "schedule": "cosine", "batch_size": 64,
                   "epochs": 30})
def vit(
    info: DatasetInfo,
    patch: int | None = None,
    dim: int = 64,
    depth: int = 4,
    heads: int = 4,
    mlp_ratio: float = 4.0,
    qkv_bias: bool = True,
) -> VisionTransformer:
    """Default patch 7 for 28x28, 4 for 32x32, 2 for 8x8 (see :func:`default_patch`)."""
    shape = image_shape("vit", info.input_shape)
    return VisionTransformer(shape, info.num_classes, patch, dim, depth, heads, mlp_ratio, qkv_bias)
