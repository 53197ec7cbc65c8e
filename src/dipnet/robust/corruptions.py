"""Common corruptions on tensors: images after Hendrycks & Dietterich (ICLR 2019, CIFAR-10-C
constants: 32-pixel images; sizes in pixels are used as given, the elastic ones scale with the
image), and 1-D signals (noise, blur, shift, time-scale and shear, the knobs of MNIST-1D's
generator, Greydanus & Kobak 2024).

``corrupt(x, name, severity, seed, bounds)`` works on a batch in the data's own units: it maps
``x`` to [0, 1] with ``bounds = (lo, hi)`` (the dataset's ``info.bounds``; None takes the batch's
min and max), corrupts there, maps back and clips, so the output always lies in the valid range.
Severity 0 is the identity; 1-5 follow the paper's five levels. The same seed gives the same
output.
"""
from __future__ import annotations

import io
import math
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError, unknown_name
from ..schema import Limits, check
from .attacks import Bounds, bounds_tensors

Layout = str  # "image" (N, C, H, W) / (N, H, W) or "signal" (N, L) / (N, C, L)

# CIFAR-10-C constants (Hendrycks & Dietterich 2019, make_cifar_c.py), severities 1..5.
GAUSSIAN_NOISE = (0.04, 0.06, 0.08, 0.09, 0.10)
SHOT_NOISE = (500, 250, 100, 75, 50)
IMPULSE_NOISE = (0.01, 0.02, 0.03, 0.05, 0.07)
GAUSSIAN_BLUR = (0.4, 0.6, 0.7, 0.8, 1.0)
DEFOCUS_BLUR = ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1.0, 0.2), (1.5, 0.1))
MOTION_BLUR = ((10, 1.0), (10, 1.5), (10, 2.0), (10, 2.5), (12, 3.0))
CONTRAST = (0.75, 0.5, 0.4, 0.3, 0.15)
BRIGHTNESS = (0.05, 0.1, 0.15, 0.2, 0.3)
PIXELATE = (0.95, 0.9, 0.85, 0.75, 0.65)
JPEG_QUALITY = (80, 65, 58, 50, 40)
# Elastic: (alpha, sigma, affine jitter) as fractions of the image height. CIFAR-10-C's own triples
# shrink the affine part as severity grows and are not monotone in distance from the clean image
# on 8-32 pixel images, so these are ours: a smooth field (sigma 0.1 H) of growing amplitude.
ELASTIC = ((0.25, 0.1, 0.01), (0.5, 0.1, 0.02), (0.75, 0.1, 0.03), (1.0, 0.1, 0.04), (1.25, 0.1, 0.05))
# 1-D signals: fractions of the length (shift, blur), stretch factors and ramp heights.
SHIFT = (0.025, 0.05, 0.1, 0.15, 0.2)
TIME_SCALE = (0.05, 0.1, 0.15, 0.2, 0.3)
SHEAR = (0.1, 0.2, 0.3, 0.4, 0.6)


def input_layout(x: torch.Tensor) -> Layout:
    """``"signal"`` for (N, L) and (N, C<=4, L); ``"image"`` for (N, H, W) and (N, C, H, W)."""
    if x.ndim == 2 or (x.ndim == 3 and x.shape[1] <= 4):
        return "signal"
    if x.ndim in (3, 4):
        return "image"
    raise ConfigError(
        f"corruptions need a batch of 1-D signals (N, L) / (N, C, L) or images (N, H, W) / (N, C, H, W), "
        f"got shape {tuple(x.shape)}"
    )


# ---------------------------------------------------------------- helpers on (N, C, ...) in [0, 1]

def gaussian_kernel1d(sigma: float, truncate: float = 4.0) -> torch.Tensor:
    radius = max(1, int(truncate * sigma + 0.5))
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return (k / k.sum()).float()


def _conv_reflect(u: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Depthwise convolution of (N, C, *spatial) with one kernel (1-D or 2-D), reflect padding."""
    n, c = u.shape[:2]
    k = kernel.to(u)
    pads = [p for s in reversed(k.shape) for p in (s // 2, s // 2)]
    flat = u.reshape(n * c, 1, *u.shape[2:])
    flat = F.pad(flat, pads, mode="reflect" if all(s // 2 < d for s, d in zip(k.shape, u.shape[2:])) else "replicate")
    conv = F.conv1d if k.ndim == 1 else F.conv2d
    return conv(flat, k[None, None]).reshape(u.shape)


def gaussian_blur(u: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur over the spatial dims of (N, C, *spatial), reflect padding."""
    if sigma <= 0:
        return u
    k = gaussian_kernel1d(sigma)
    if u.ndim == 3:
        return _conv_reflect(u, k)
    return _conv_reflect(_conv_reflect(u, k[:, None]), k[None, :])


def _uniform(shape: Sequence[int], gen: torch.Generator, lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
    return torch.rand(shape, generator=gen) * (hi - lo) + lo


# ---------------------------------------------------------------- image corruptions

def _gaussian_noise(u: torch.Tensor, s: int, gen: torch.Generator) -> torch.Tensor:
    return u + GAUSSIAN_NOISE[s - 1] * torch.randn(u.shape, generator=gen).to(u)


def _shot_noise(u: torch.Tensor, s: int, gen: torch.Generator) -> torch.Tensor:
    c = SHOT_NOISE[s - 1]
    return torch.poisson((u * c).cpu().double(), generator=gen).to(u) / c


def _impulse_noise(u: torch.Tensor, s: int, gen: torch.Generator) -> torch.Tensor:
    amount = IMPULSE_NOISE[s - 1]
    r = torch.rand(u.shape, generator=gen).to(u.device)
    out = u.clone()
    out[r < amount / 2] = 0.0
    out[(r >= amount / 2) & (r < amount)] = 1.0
    return out


def _gaussian_blur(u: torch.Tensor, s: int, gen: torch.Generator) -> torch.Tensor:
    sigma = GAUSSIAN_BLUR[s - 1]
    if u.ndim == 3:
        sigma *= u.shape[-1] / 32
    return gaussian_blur(u, sigma)


def _defocus_blur(u: torch.Tensor, s: int, gen: torch.Generator) -> torch.Tensor:
    radius, alias = DEFOCUS_BLUR[s - 1]
    r = math.ceil(radius) + 1
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    disk = ((t[:, None] ** 2 + t[None, :] ** 2) <= radius**2).float()
    g = gaussian_kernel1d(alias, truncate=1.0 / alias if alias < 1 else 1.0)  # cv2's 3x3 kernel
    g2 = g[:, None] * g[None, :]
    kernel = F.conv2d(disk[None, None], g2[None, None], padding=g2.shape[0] // 2)[0, 0]
    return _conv_reflect(u, kernel / kernel.sum())


def _motion_blur(u: torch.Tensor, s: int, gen: torch.Generator) -> torch.Tensor:
    radius, sigma = MOTION_BLUR[s - 1]
    n, c = u.shape[:2]
    angles = _uniform((n,), gen, -math.pi / 4, math.pi / 4)
    size = 2 * radius + 1
    t = torch.arange(radius + 1, dtype=torch.float32)
    w = torch.exp(-0.5 * (t / sigma) ** 2)
    kernels = torch.zeros(n, size, size)
    for i, a in enumerate(angles.tolist()):
        rows = (radius - torch.round(t * math.sin(a))).long()
        cols = (radius + torch.round(t * math.cos(a))).long()
        kernels[i].index_put_((rows, cols), w, accumulate=True)
    kernels = kernels / kernels.sum((1, 2), keepdim=True)
    pad = radius
    mode = "reflect" if pad < min(u.shape[-2:]) else "replicate"
    flat = F.pad(u.reshape(1, n * c, *u.shape[2:]), (pad, pad, pad, pad), mode=mode)
    weight = kernels.to(u).repeat_interleave(c, 0)[:, None]
    return F.conv2d(flat, weight, groups=n * c).reshape(u.shape)


def _contrast(u: torch.Tensor, s: int, gen: torch.Generator) -> torch.Tensor:
    mean = u.mean(dim=tuple(range(1, u.ndim)), keepdim=True)
    return (u - mean) * CONTRAST[s - 1] + mean


def _brightness(u: torch.Tensor, s: int, gen: torch.Generator) -> torch.Tensor:
    c = BRIGHTNESS[s - 1]
    if u.shape[1] != 3:
        return u + c
    v = u.amax(1, keepdim=True)  # HSV value; raising V keeps hue and saturation: rgb * V'/V
    v_new = (v + c).clamp(max=1.0)
    return torch.where(v > 0, u * v_new / v.clamp_min(1e-12), v_new.expand_as(u))


def box_resize_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """(n_out, n_in) area-weighted resampling (PIL's BOX filter): each output cell averages the
    input cells it overlaps, weighted by the overlap."""
    edges_out = torch.arange(n_out + 1, dtype=torch.float64) * n_in / n_out
    left, right = edges_out[:-1, None], edges_out[1:, None]
    i = torch.arange(n_in, dtype=torch.float64)[None]
    overlap = (torch.minimum(right, i + 1) - torch.maximum(left, i)).clamp_min(0)
    return (overlap / overlap.sum(1, keepdim=True)).float()


def _pixelate(u: torch.Tensor, s: int, gen: torch.Generator) -> torch.Tensor:
    h, w = u.shape[-2:]
    sh, sw = max(1, int(h * PIXELATE[s - 1])), max(1, int(w * PIXELATE[s - 1]))
    rh = (box_resize_matrix(sh, h) @ box_resize_matrix(h, sh)).to(u)
    rw = (box_resize_matrix(sw, w) @ box_resize_matrix(w, sw)).to(u)
    return rh @ u @ rw.T


def _jpeg(u: torch.Tensor, s: int, gen: torch.Generator) -> torch.Tensor:
    from PIL import Image

    if u.shape[1] not in (1, 3):
        raise ConfigError(f"jpeg needs gray or RGB images (1 or 3 channels), got {u.shape[1]} channels")
    arr = (u.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    out = []
    for img in arr:
        buf = io.BytesIO()
        pil = Image.fromarray(img[..., 0], "L") if img.shape[-1] == 1 else Image.fromarray(img, "RGB")
        pil.save(buf, format="JPEG", quality=JPEG_QUALITY[s - 1])
        dec = np.asarray(Image.open(io.BytesIO(buf.getvalue())), dtype=np.float32) / 255.0
        out.append(dec.reshape(img.shape))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).to(u)


def _elastic(u: torch.Tensor, s: int, gen: torch.Generator) -> torch.Tensor:
    n, c, h, w = u.shape
    alpha, sigma, affine = (v * h for v in ELASTIC[s - 1])
    center = torch.tensor([w / 2, h / 2])
    sq = min(h, w) / 3
    src = torch.stack([center + sq, center + torch.tensor([sq, -sq]), center - sq])  # (3, 2) as (x, y)
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    grids = []
    for _ in range(n):
        dst = src + _uniform(src.shape, gen, -affine, affine)
        # inverse affine: output pixel p samples the input at A p + b, with A dst_k + b = src_k
        A = torch.linalg.solve(torch.cat([dst, torch.ones(3, 1)], 1), src).T  # (2, 3)
        field = _uniform((2, 1, h, w), gen, -1.0, 1.0)
        d = gaussian_blur(field, sigma) * alpha if sigma > 0 else torch.zeros_like(field)
        px, py = xs + d[0, 0], ys + d[1, 0]
        sx = A[0, 0] * px + A[0, 1] * py + A[0, 2]
        sy = A[1, 0] * px + A[1, 1] * py + A[1, 2]
        grids.append(torch.stack([2 * sx / max(w - 1, 1) - 1, 2 * sy / max(h - 1, 1) - 1], -1))
    grid = torch.stack(grids).to(u)
    return F.grid_sample(u, grid, mode="bilinear", padding_mode="reflection", align_corners=True)


# ---------------------------------------------------------------- 1-D signal corruptions (N, C, L)

def _signed(n: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 2, (n,), generator=gen).float() * 2 - 1


def _signal_blur(u: torch.Tensor, s: int, gen: torch.Generator) -> torch.Tensor:
    return gaussian_blur(u, GAUSSIAN_BLUR[s - 1] * u.shape[-1] / 32)


def _shift(u: torch.Tensor, s: int, gen: torch.Generator) -> torch.Tensor:
    L = u.shape[-1]
    k = max(1, round(SHIFT[s - 1] * L))
    steps = (_signed(u.shape[0], gen) * k).long().tolist()
    return torch.stack([torch.roll(row, shifts=st, dims=-1) for row, st in zip(u, steps)])


def _time_scale(u: torch.Tensor, s: int, gen: torch.Generator) -> torch.Tensor:
    n, c, L = u.shape
    factor = 1 + _signed(n, gen) * TIME_SCALE[s - 1]
    mid = (L - 1) / 2
    pos = ((torch.arange(L, dtype=torch.float32)[None] - mid) / factor[:, None] + mid).clamp(0, L - 1).to(u.device)
    lo = pos.floor().long().clamp(max=L - 1)
    hi = (lo + 1).clamp(max=L - 1)
    frac = (pos - lo).to(u)[:, None]
    gather = lambda idx: u.gather(2, idx[:, None].expand(n, c, L))
    return gather(lo) * (1 - frac) + gather(hi) * frac


def _shear(u: torch.Tensor, s: int, gen: torch.Generator) -> torch.Tensor:
    n, _, L = u.shape
    ramp = torch.linspace(-0.5, 0.5, L)
    return u + (_signed(n, gen) * SHEAR[s - 1])[:, None, None].to(u) * ramp.to(u)


_Fn = Callable[[torch.Tensor, int, torch.Generator], torch.Tensor]
IMAGE_CORRUPTIONS: dict[str, _Fn] = {
    "gaussian_noise": _gaussian_noise,
    "shot_noise": _shot_noise,
    "impulse_noise": _impulse_noise,
    "gaussian_blur": _gaussian_blur,
    "defocus_blur": _defocus_blur,
    "motion_blur": _motion_blur,
    "contrast": _contrast,
    "brightness": _brightness,
    "pixelate": _pixelate,
    "jpeg": _jpeg,
    "elastic": _elastic,
}
SIGNAL_CORRUPTIONS: dict[str, _Fn] = {
    "gaussian_noise": _gaussian_noise,
    "impulse_noise": _impulse_noise,
    "gaussian_blur": _signal_blur,
    "shift": _shift,
    "scale": _time_scale,
    "shear": _shear,
}


def list_corruptions(layout: Layout | None = None) -> tuple[str, ...]:
    """Corruption names for ``"image"`` or ``"signal"`` inputs (all of them for None)."""
    if layout == "image":
        return tuple(IMAGE_CORRUPTIONS)
    if layout == "signal":
        return tuple(SIGNAL_CORRUPTIONS)
    return tuple(dict.fromkeys([*IMAGE_CORRUPTIONS, *SIGNAL_CORRUPTIONS]))


def corrupt(
    x: torch.Tensor,
    name: str,
    severity: int,
    seed: int = 0,
    bounds: Bounds = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Corrupt a batch ``x`` with corruption ``name`` at ``severity`` 0-5 (0: unchanged).

    ``bounds`` is the valid range (``info.bounds``; floats or per-channel tensors); the output is
    clipped to it. ``generator`` (a CPU ``torch.Generator``) overrides ``seed``.
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise ConfigError(f"x must be a floating-point tensor batch, not {type(x).__name__}")
    layout = input_layout(x)
    table = IMAGE_CORRUPTIONS if layout == "image" else SIGNAL_CORRUPTIONS
    if name not in table:
        if name in list_corruptions():
            raise ConfigError(
                f"corruption {name!r} does not apply to {layout}s of shape {tuple(x.shape[1:])}; "
                f"for {layout}s choose one of: {', '.join(table)}"
            )
        raise unknown_name("corruption", name, list_corruptions())
    severity = check(severity, int, "severity (0: none)", Limits(ge=0, le=5))
    if severity == 0:
        return x.clone()
    x = x.detach()
    box = bounds_tensors(bounds, x)
    if box is None:
        box = (x.min(), x.max()) if float(x.max()) > float(x.min()) else (x.min(), x.min() + 1)
    lo, hi = box
    gen = generator if generator is not None else torch.Generator().manual_seed(int(seed))
    u = (x - lo) / (hi - lo)
    shape = u.shape
    if layout == "image" and u.ndim == 3:
        u = u[:, None]
    if layout == "signal" and u.ndim == 2:
        u = u[:, None]
    out = table[name](u, severity, gen).reshape(shape).clamp(0.0, 1.0)
    return (lo + out * (hi - lo)).to(x.dtype)
