"""GPU checks and timings, for a machine with CUDA (not part of `make bench`, which is CPU-only).

    PYTHONPATH=src python benchmarks/gpu_check.py [--out BENCHMARKS_GPU.md] [--quick]

Correctness on the device, each against an independent oracle: DIPNet's windowed input-sigma
gradient averages over all window starts to the exact autograd gradient; table noise on the
device is standard normal (moments, Kolmogorov-Smirnov); ``strip`` is bit-exact in eval; a SAM
step on the GPU equals the same step on the CPU (float64). Timings (CUDA-synchronized, medians of
interleaved repetitions, ratios to ERM measured in the same run): DIPNet's training step (default
estimator and the exact one, m = 1 and 4), eval overhead, and the comparison methods' update cost,
on the MNIST MLP and on ResNet-20 (CIFAR-shaped batches).
"""
from __future__ import annotations

import argparse
import copy
import math
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from dipnet import noise_table  # noqa: E402
import dipnet.projection._fast as projection_module  # noqa: E402
from dipnet.data import DatasetInfo  # noqa: E402
from dipnet.methods import SAM  # noqa: E402
from dipnet.models import build_model  # noqa: E402
from dipnet.projection import DIPNetLoss, project, strip  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_methods import _runner  # noqa: E402


def check_window_estimate(dev: torch.device) -> str:
    torch.manual_seed(0)
    base = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 8 * 8, 5)).double().to(dev)
    x = torch.randn(16, 3, 8, 8, dtype=torch.float64, device=dev)

    def grad(fraction: float) -> torch.Tensor:
        net = project(copy.deepcopy(base), sigma=0.3, input_grad_fraction=fraction)
        torch.manual_seed(1)
        net(x).pow(2).sum().backward()
        return net[0].dipnet_projection.log_sigma.grad.clone()

    exact = grad(1.0)
    original = projection_module.window_start
    estimates = []
    try:
        for start in range(16):
            projection_module.window_start = lambda n, start=start: start
            estimates.append(grad(0.25))
    finally:
        projection_module.window_start = original
    err = (torch.stack(estimates).mean(0) - exact).abs().max().item()
    assert err < 1e-9 * exact.abs().max().item() + 1e-12, err
    return f"windowed input-sigma gradient, mean over 16 starts = exact (max abs diff {err:.1e})"


def check_table_noise(dev: torch.device) -> str:
    torch.manual_seed(0)
    n = 500_000
    z = noise_table.standard_normal((n,), device=dev).double()
    assert z.device.type == dev.type
    assert abs(z.mean().item()) < 5 / math.sqrt(n) and abs(z.var().item() - 1) < 5 * math.sqrt(2 / n)
    cdf = 0.5 * (1 + torch.special.erf(z.sort().values / math.sqrt(2)))
    ks = (cdf - torch.arange(1, n + 1, dtype=torch.float64, device=dev) / n).abs().max().item()
    assert ks < 1.95 / math.sqrt(n), ks
    return f"table noise on the device: mean {z.mean().item():+.4f}, var {z.var().item():.4f}, KS {ks:.4f}"


def check_strip(dev: torch.device) -> str:
    info = DatasetInfo("c", (3, 32, 32), 10, tuple("0123456789"), (0.0, 1.0))
    torch.manual_seed(0)
    net = project(build_model("resnet20", info), sigma=0.1).to(dev)
    x = torch.rand(64, 3, 32, 32, device=dev)
    net.train()
    DIPNetLoss()(net, x, torch.randint(0, 10, (64,), device=dev)).backward()
    net.eval()
    with torch.no_grad():
        a = net(x)
        b = strip(copy.deepcopy(net)).eval()(x)
    assert torch.equal(a, b)
    return "strip: eval outputs of ResNet-20 bit-identical on the device"


def check_sam(dev: torch.device) -> str:
    def step(device: torch.device) -> list[torch.Tensor]:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).double().to(device)
        x = torch.randn(32, 6, dtype=torch.float64).to(device)
        y = torch.randint(0, 3, (32,)).to(device)
        opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1)
        opt.step(lambda: F.cross_entropy(model(x), y).backward())
        return [p.detach().cpu() for p in model.parameters()]

    diff = max((a - b).abs().max().item() for a, b in zip(step(dev), step(torch.device("cpu"))))
    assert diff < 1e-12, diff
    return f"SAM step on the device = on the CPU (float64, max abs diff {diff:.1e})"


def _sync_time(fn: Callable[[], None], n: int, dev: torch.device) -> float:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    t = time.perf_counter()
    for _ in range(n):
        fn()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return (time.perf_counter() - t) / n


def interleaved(fns: dict[str, Callable[[], None]], reps: int, n: int, dev: torch.device) -> dict[str, float]:
    for fn in fns.values():
        _sync_time(fn, 3, dev)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            times[k].append(_sync_time(fn, n, dev))
    return {k: statistics.median(v) for k, v in times.items()}


CASES = [("mlp", (1, 28, 28), 128), ("resnet20", (3, 32, 32), 128), ("resnet20", (3, 32, 32), 512)]
_CPU_ESTIMATOR = {"noise": "table", "input_grad_fraction": 0.125}
RUNS = [
    ("dipnet m=1 (default on a GPU: fresh randn, exact gradient)", "dipnet", {}, 1, 1.25),
    ("dipnet m=1, CPU default forced (table, 1/8 window)", "dipnet", _CPU_ESTIMATOR, 1, None),
    ("dipnet m=4 (default)", "dipnet", {"trajectories": 4}, 1, 4.0),
    ("dipnet m=4, CPU default forced", "dipnet", {"trajectories": 4, **_CPU_ESTIMATOR}, 1, None),
    ("sam", "sam", {}, 1, 2.2),
    ("asam", "asam", {}, 1, 2.2),
    ("rwp", "rwp", {}, 1, 1.15),
    ("arwp", "arwp", {}, 1, 1.15),
    ("mrwp", "mrwp", {}, 2, 2.2),
    ("marwp", "marwp", {}, 2, 2.2),
    ("icp", "icp", {"steps": 5}, 1, 7.0),
]


def timings(dev: torch.device, quick: bool) -> list[str]:
    reps, n = (3, 5) if quick else (7, 20)
    lines = ["| model | update | time | ratio to ERM | target | meets |", "|---|---|---|---|---|---|"]
    for model_name, shape, batch in CASES:
        fns = {"erm": _runner("erm", {}, model_name, shape, batch, 1, dev)}
        for label, spec, params, k, _ in RUNS:
            fns[label] = _runner(spec, params, model_name, shape, batch, k, dev)
        t = interleaved(fns, reps, n, dev)
        lines.append(f"| {model_name} B={batch} | erm | {t['erm'] * 1e3:.3f} ms | 1.000x | | |")
        for label, _, _, _, target in RUNS:
            r = t[label] / t["erm"]
            meets = "" if target is None else ("yes" if r <= target else "**NO**")
            lines.append(f"| {model_name} B={batch} | {label} | {t[label] * 1e3:.3f} ms | {r:.3f}x | "
                         f"{'' if target is None else f'<= {target}x'} | {meets} |")
    info = DatasetInfo("m", (1, 28, 28), 10, tuple("0123456789"), (0.0, 1.0))
    torch.manual_seed(0)
    projected = project(build_model("mlp", info), sigma=0.1).to(dev).eval()
    stripped = strip(copy.deepcopy(projected)).eval()
    xe = torch.rand(512, 1, 28, 28, device=dev)
    with torch.no_grad():
        te = interleaved({"stripped": lambda: stripped(xe), "projected": lambda: projected(xe)}, reps, n * 5, dev)
    r = te["projected"] / te["stripped"]
    lines.append(f"| mlp B=512 | eval forward projected vs stripped | {te['projected'] * 1e3:.3f} ms | {r:.3f}x | "
                 f"<= 1.02x | {'yes' if r <= 1.02 else '**NO**'} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None, help="write the results to this Markdown file")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "CPU"
    t0 = time.perf_counter()
    checks = []
    for check in (check_window_estimate, check_table_noise, check_strip, check_sam):
        try:
            checks.append(f"- PASS {check(dev)}")
        except AssertionError as exc:
            checks.append(f"- **FAIL** {check.__name__}: {exc}")
        print(checks[-1], flush=True)
    table = timings(dev, args.quick)
    print("\n".join(table), flush=True)
    text = "\n".join([
        "# GPU checks and benchmarks",
        "",
        f"Produced by `PYTHONPATH=src python benchmarks/gpu_check.py --out BENCHMARKS_GPU.md` on "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; {time.perf_counter() - t0:.0f} s.",
        f"Device: {name}; torch {torch.__version__}, Python {platform.python_version()}. Times are "
        "CUDA-synchronized medians of interleaved repetitions; compare the ratios, measured in one run.",
        "",
        "## Correctness on the device",
        "",
        *checks,
        "",
        "## Update cost (ratios to an SGD step, ERM, on the same model and batch)",
        "",
        *table,
        "",
    ])
    if args.out:
        Path(args.out).write_text(text)
    return 0 if not any("FAIL" in c for c in checks) else 1


if __name__ == "__main__":
    raise SystemExit(main())
