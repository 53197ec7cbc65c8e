"""Cost of the attacks against plain training passes of the same model on the same batch:
PGD-20 over 20 forward+backward passes (target <= 1.1x), FGSM over one, EOT's cost per sample;
corruption throughput on MNIST-sized images and MNIST-1D signals."""
from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import nn

from dipnet.robust import corrupt, fgsm, list_corruptions, pgd

from _timing import interleaved


def models() -> list[tuple[str, nn.Module, torch.Tensor]]:
    from dipnet.data import DatasetInfo
    from dipnet.models import build_model

    out = []
    torch.manual_seed(0)
    info = DatasetInfo("mnist1d", (40,), 10, tuple("0123456789"), (-5.0, 5.0))
    out.append(("mnist1d-cnn", build_model("mnist1d-cnn", info), torch.randn(256, 40).clamp(-5, 5)))
    info = DatasetInfo("mnist", (1, 28, 28), 10, tuple("0123456789"), (0.0, 1.0))
    out.append(("mlp on 28x28", build_model("mlp", info), torch.rand(256, 1, 28, 28)))
    return out


def plain_passes(model: nn.Module, x: torch.Tensor, y: torch.Tensor, n: int) -> None:
    """``n`` ordinary training passes: forward, cross-entropy, backward into the weights."""
    for _ in range(n):
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()


def bench(quick: bool = False) -> list[dict]:
    reps = 3 if quick else 15
    rows: list[dict] = []
    for name, model, x in models():
        model.eval()
        y = torch.randint(0, 10, (x.shape[0],))
        bounds = (-5.0, 5.0) if x.ndim == 2 else (0.0, 1.0)
        fns = {
            "plain20": lambda: plain_passes(model, x, y, 20),
            "pgd20": lambda: pgd(model, x, y, 0.1, steps=20, bounds=bounds),
            "plain10": lambda: plain_passes(model, x, y, 10),
            "fgsm10": lambda: [fgsm(model, x, y, 0.1, bounds=bounds) for _ in range(10)],
            "pgd20_eot4": lambda: pgd(model, x, y, 0.1, steps=20, bounds=bounds, eot_samples=4),
        }
        for fn in fns.values():
            fn()  # warm-up
        t = interleaved(fns, reps)
        b = x.shape[0]
        rows += [
            {"area": "robust", "name": f"PGD-20 (L-inf, random start) vs 20 forward+backward passes, {name}, batch {b}",
             "value": t["pgd20"] * 1e3, "unit": "ms", "baseline_name": "20 plain forward+backward passes",
             "ratio": t["pgd20"] / t["plain20"], "target": "<= 1.1x", "ok": t["pgd20"] / t["plain20"] <= 1.1},
            {"area": "robust", "name": f"FGSM (call incl. checks) vs 1 forward+backward pass, {name}, batch {b}",
             "value": t["fgsm10"] / 10 * 1e3, "unit": "ms", "baseline_name": "1 plain forward+backward pass",
             "ratio": t["fgsm10"] / t["plain10"], "target": "<= 1.1x", "ok": t["fgsm10"] / t["plain10"] <= 1.1},
            {"area": "robust", "name": f"PGD-20 with EOT over 4 noise samples, {name}, batch {b}",
             "value": t["pgd20_eot4"] * 1e3, "unit": "ms", "baseline_name": "PGD-20 (1 sample)",
             "ratio": t["pgd20_eot4"] / t["pgd20"], "target": "<= 4.4x", "ok": t["pgd20_eot4"] / t["pgd20"] <= 4.4},
        ]
    images = torch.rand(256, 1, 28, 28)
    signals = torch.randn(1000, 40).clamp(-5, 5)
    for layout, x, bounds in (("image", images, (0.0, 1.0)), ("signal", signals, (-5.0, 5.0))):
        for cname in list_corruptions(layout):
            ct = interleaved({"c": lambda: corrupt(x, cname, 3, bounds=bounds)}, max(1, reps // 3))["c"]
            rows.append({"area": "robust", "name": f"corrupt {cname} severity 3, {tuple(x.shape)}",
                         "value": x.shape[0] / ct, "unit": "inputs/s"})
    return rows


if __name__ == "__main__":
    for row in bench(quick=True):
        print(row)
