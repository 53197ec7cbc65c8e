"""DIPNet's memory and its cost where users train (issue 17), each against ERM on the same model
and batch in the same run: bytes autograd keeps for backward (the MNIST MLP 784-512-512-10 at
B=128, ResNet-20 and the ViT at B=64; targets m=1 <= 1.15x, m=4 <= 4.3x), the training step on
the compute-bound models at B=64 with 2 threads (m=1 <= 1.10x; beside it the parts:
regenerate=False, the relative scale, both, and the floor: the hidden layers' projections
written by hand, no hooks, against the library doing the same) and the eval forward of a
projected ResNet-20 over its stripped twin (<= 1.02x: eval runs no hook)."""
from __future__ import annotations

import copy
import time

import torch
import torch.nn.functional as F

from dipnet.data import DatasetInfo
from dipnet.models import build_model
from dipnet.noise_table import draw_like
from dipnet.projection import DIPNetLoss, project, projections, strip
from dipnet.projection import _fast

from _timing import paired, saved_mb

MNIST = DatasetInfo("mnist", (1, 28, 28), 10, tuple("0123456789"), (0.0, 1.0))
CIFAR = DatasetInfo("cifar10", (3, 32, 32), 10, tuple("0123456789"), (0.0, 1.0))
MODELS = {  # label -> (model, kwargs, info, batch)
    "mnist mlp 784-512-512-10, B=128": ("mlp", {"widths": (512, 512)}, MNIST, 128),
    "resnet-20, B=64": ("resnet20", {}, CIFAR, 64),
    "vit, B=64": ("vit", {}, CIFAR, 64),
}
THREADS = 2
FLOOR_LIBRARY = "dipnet m=1, hidden layers only, regenerate=False, no prior"
FLOOR_HAND = "the same written by hand, no hooks: the floor"


def _data(info: DatasetInfo, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.rand(batch, *info.input_shape, generator=g), torch.randint(0, 10, (batch,), generator=g)


def _step(model: torch.nn.Module, loss_fn) -> callable:
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def run() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn().backward()
        opt.step()
    return run


def _dip_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> callable:
    loss = DIPNetLoss()
    return _step(model, lambda: loss(model, x, y))


FLOOR = {"project_input": False, "regenerate": False, "scale": "relative"}  # the library's settings the floor writes by hand


def hand_written_floor(net: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``net`` (projected with :data:`FLOOR`, loss without the prior) whose projections
    are written into each layer's forward: ``layer(x + exp(log_sigma) * rms * eps)``, the running
    RMS and the table draw as the library does them, autograd's own backward, no hooks. The
    cheapest form of DIPNet's computation in eager PyTorch (a test checks it equals the library
    bit for bit)."""
    floor = copy.deepcopy(net)
    for _, proj in projections(floor):
        layer = proj.__dict__[_fast._OWNER]
        _fast.detach(layer)
        layer.add_module("noise", proj)
        layer.forward = _noisy_forward(layer, proj, type(layer).forward)
    return floor


def _noisy_forward(layer: torch.nn.Module, proj: torch.nn.Module, forward) -> callable:
    dim, momentum = proj.feature_dim, proj.momentum

    def run(x: torch.Tensor) -> torch.Tensor:
        r = proj.running_rms
        with torch.no_grad():
            rms = torch.linalg.vector_norm(x.detach()) * (x.numel() ** -0.5)
            torch.where(r > 0, r.lerp(rms, momentum), rms, out=r)
        sigma = proj.log_sigma.exp() * r
        if sigma.ndim == 1 and dim not in (-1, x.ndim - 1):
            sigma = sigma.view(-1, *([1] * (x.ndim - 1 - dim)))
        eps, _ = draw_like(x, "table")
        return forward(layer, torch.addcmul(x, sigma, eps))
    return run


def memory_rows() -> list[dict]:
    rows = []
    for label, (name, kwargs, info, batch) in MODELS.items():
        torch.manual_seed(0)
        erm = build_model(name, info, **kwargs).train()
        x, y = _data(info, batch)
        base = saved_mb(lambda: F.cross_entropy(erm(x), y), erm)
        base_name = f"saved for backward erm ({label})"
        rows.append({"area": "projection", "name": base_name, "value": base, "unit": "MiB"})
        for m, target in ((1, 1.15), (4, 4.3)):
            net = project(copy.deepcopy(erm)).train()
            mb = saved_mb(lambda: DIPNetLoss(trajectories=m)(net, x, y), net)
            rows.append({"area": "projection", "name": f"saved for backward dipnet m={m} ({label})", "value": mb,
                         "unit": "MiB", "baseline_name": base_name, "ratio": mb / base, "target": f"<= {target}x",
                         "ok": mb / base <= target})
            keeping = project(copy.deepcopy(erm), regenerate=False).train()
            kept = saved_mb(lambda: DIPNetLoss(trajectories=m)(keeping, x, y), keeping)
            rows.append({"area": "projection", "name": f"saved for backward dipnet m={m}, regenerate=False ({label})",
                         "value": kept, "unit": "MiB", "baseline_name": base_name, "ratio": kept / base})
    return rows


def speed_rows(quick: bool) -> list[dict]:
    reps, inner = (3, 2) if quick else (9, 3)
    rows = []
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        for label in ("resnet-20, B=64", "vit, B=64"):
            name, kwargs, info, batch = MODELS[label]
            torch.manual_seed(0)
            erm = build_model(name, info, **kwargs).train()
            net = project(copy.deepcopy(erm)).train()
            x, y = _data(info, batch)
            fns = {"erm": _step(erm, lambda: F.cross_entropy(erm(x), y)), "dipnet": _dip_step(net, x, y)}
            variants = {  # what the parts cost: the regeneration, the relative scale's running RMS
                f"dipnet m=1, {', '.join(f'{k}={v}' for k, v in kw.items())}": _dip_step(project(copy.deepcopy(erm), **kw).train(), x, y)
                for kw in ({"regenerate": False}, {"scale": "relative"}, {"scale": "relative", "regenerate": False})
            }
            same = project(copy.deepcopy(erm), **FLOOR).train()  # the floor's settings, through the library
            floor = hand_written_floor(same)
            no_prior = DIPNetLoss(prior=(0.0, 0.0))
            variants[FLOOR_LIBRARY] = _step(same, lambda: no_prior(same, x, y))
            variants[FLOOR_HAND] = _step(floor, lambda: F.cross_entropy(floor(x), y))
            t, ratio = paired({**fns, **variants}, "erm", reps, inner, warmup=2, clock=time.perf_counter)
            base_name = f"train step erm ({label}, {THREADS} threads)"
            rows.append({"area": "projection", "name": base_name, "value": t["erm"] * 1e3, "unit": "ms"})
            rows.append({"area": "projection", "name": f"train step dipnet m=1 ({label}, {THREADS} threads)",
                         "value": t["dipnet"] * 1e3, "unit": "ms", "baseline_name": base_name,
                         "ratio": ratio["dipnet"], "target": "<= 1.1x", "ok": ratio["dipnet"] <= 1.10})
            for name_, _ in variants.items():
                rows.append({"area": "projection", "name": f"train step {name_} ({label}, {THREADS} threads)",
                             "value": t[name_] * 1e3, "unit": "ms", "baseline_name": base_name, "ratio": ratio[name_]})
            if label.startswith("resnet"):
                net.train()
                net(x)  # running input RMS from a training batch, as after training
                projected, stripped = net.eval(), strip(copy.deepcopy(net)).eval()
                with torch.no_grad():
                    te, tr = paired({"stripped": lambda: stripped(x), "projected": lambda: projected(x)}, "stripped",
                                    reps, inner * 3, warmup=2)
                base_name = f"eval forward stripped ({label}, {THREADS} threads)"
                rows.append({"area": "projection", "name": base_name, "value": te["stripped"] * 1e3, "unit": "ms"})
                rows.append({"area": "projection", "name": f"eval forward projected ({label}, {THREADS} threads)",
                             "value": te["projected"] * 1e3, "unit": "ms", "baseline_name": base_name,
                             "ratio": tr["projected"], "target": "<= 1.02x", "ok": tr["projected"] <= 1.02})
    finally:
        torch.set_num_threads(before)
    return rows


def bench(quick: bool = False) -> list[dict]:
    return memory_rows() + speed_rows(quick)


if __name__ == "__main__":
    for row in bench(quick=True):
        print(row)
