"""GPU checks and timings, for a machine with CUDA (not part of `make bench`, which is CPU-only).

    PYTHONPATH=src python benchmarks/gpu_check.py [--out BENCHMARKS_GPU.md] [--quick]

Correctness on the device, each against an independent oracle: DIPNet's windowed input-sigma
gradient averages over all window starts to the exact autograd gradient; table noise on the
device is standard normal (moments, Kolmogorov-Smirnov); ``strip`` is bit-exact in eval; a SAM
step on the GPU equals the same step on the CPU (float64); the noise regenerated in backward
(a seeded Philox generator on the device) equals the forward's bit for bit, and the gradients
equal those of regenerate=False (issue 17); the fused projection kernels, compiled, pass the
checks that CI runs under Triton's interpreter (tests/_fused_checks.py). Timings (CUDA-synchronized, medians of
interleaved repetitions, ratios to ERM measured in the same run): DIPNet's training step (default
estimator and the exact one, m = 1 and 4), eval overhead, and the comparison methods' update cost,
on the MNIST MLP, ResNet-20 and the ViT (CIFAR-shaped batches); peak CUDA memory of a training
step, DIPNet over ERM; compiled (inductor) ERM and DIPNet beside eager ones, with compile time
and peak memory.
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
from dipnet.projection import DIPNetLoss, project, projections, strip  # noqa: E402

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


def check_regenerated(dev: torch.device) -> str:
    from dipnet.noise_table import draw_like, redraw

    torch.manual_seed(0)
    x = torch.empty(64, 16, 32, 32, device=dev)
    same = []
    for source in ("fresh", "table"):
        eps, draw = draw_like(x, source)
        same.append(torch.equal(eps, redraw(draw)))
    assert all(same), same
    info = DatasetInfo("c", (3, 32, 32), 10, tuple("0123456789"), (0.0, 1.0))
    torch.manual_seed(0)
    net = project(build_model("resnet20", info), sigma=0.2).to(dev).train()
    xb, yb = torch.rand(32, 3, 32, 32, device=dev), torch.randint(0, 10, (32,), device=dev)
    grads = []
    for regenerate in (True, False):
        model = copy.deepcopy(net)
        for _, proj in projections(model):
            proj.regenerate = regenerate
        torch.manual_seed(3)
        DIPNetLoss(trajectories=2)(model, xb, yb).backward()
        grads.append({k: p.grad.clone() for k, p in model.named_parameters()})
    worst = 0.0
    for k, g in grads[0].items():
        if k.endswith("log_sigma"):
            worst = max(worst, ((g - grads[1][k]).abs().max() / grads[1][k].abs().max().clamp_min(1e-30)).item())
        else:
            assert torch.equal(g, grads[1][k]), k
    assert worst < 1e-4, worst
    return (f"regenerated noise = forward noise bit for bit (fresh and table); ResNet-20 m=2 weight gradients = those "
            f"of regenerate=False (everything saved) bit for bit, sigma gradients to {worst:.1e} relative")


def check_fused(dev: torch.device) -> str:
    """tests/_fused_checks.py on the device: the kernels compiled by Triton, not interpreted."""
    from dipnet.projection import fused

    if not fused.available() or dev.type != "cuda":
        return "fused kernels: not available here (no CUDA or no Triton), eager path only"
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import _fused_checks

    _fused_checks.DEVICE = dev
    for name, fn in _fused_checks.CHECKS.items():
        fn()
    return f"fused kernels compiled on the device pass {', '.join(_fused_checks.CHECKS)}"


def peak_memory(dev: torch.device, quick: bool) -> list[str]:
    """Peak CUDA memory of one training step (forward and backward) above what was allocated
    before it, DIPNet m = 1 and 4 over ERM; on a CPU the saved-tensor count stands in."""
    from _timing import saved_mb

    lines = ["| model | ERM | DIPNet m=1 | DIPNet m=4 | target m=1 / m=4 |", "|---|---|---|---|---|"]
    for model_name, shape, batch in MEMORY_CASES[:1] if quick else MEMORY_CASES:
        info = DatasetInfo("m", shape, 10, tuple("0123456789"), (0.0, 1.0))
        torch.manual_seed(0)
        erm = build_model(model_name, info).to(dev).train()
        x = torch.rand(batch, *shape, device=dev)
        y = torch.randint(0, 10, (batch,), device=dev)

        def peak(model: nn.Module, loss: Callable[[], torch.Tensor]) -> float:
            model.zero_grad(set_to_none=True)
            if dev.type != "cuda":
                return saved_mb(loss, model)
            loss().backward()  # gradients allocated once, as in training
            torch.cuda.synchronize(dev)
            base = torch.cuda.memory_allocated(dev)
            torch.cuda.reset_peak_memory_stats(dev)
            loss().backward()
            torch.cuda.synchronize(dev)
            return (torch.cuda.max_memory_allocated(dev) - base) / 2**20

        e = peak(erm, lambda: F.cross_entropy(erm(x), y))
        ratios = []
        for m in (1, 4):
            net = project(copy.deepcopy(erm)).train()
            ratios.append(peak(net, lambda: DIPNetLoss(trajectories=m)(net, x, y)) / e)
        ok = "met" if ratios[0] <= 1.15 and ratios[1] <= 4.3 else "**not met**"
        lines.append(f"| {model_name} B={batch} | {e:.1f} MiB | {ratios[0]:.3f}x | {ratios[1]:.3f}x | <= 1.15x / <= 4.3x: {ok} |")
    return lines


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


CASES = [("mlp", (1, 28, 28), 128), ("resnet20", (3, 32, 32), 128), ("vit", (3, 32, 32), 128),
         ("resnet20", (3, 32, 32), 512)]
MEMORY_CASES = CASES[:3]
M1_TARGET = {"mlp": 1.3, "resnet20": 1.15, "vit": 1.15}  # issue 17: DIPNet m=1 over ERM on a GPU
_CPU_ESTIMATOR = {"noise": "table", "input_grad_fraction": 0.125}
UNFUSED = "dipnet m=1, fused kernels off (eager: randn, addcmul, autograd's reduction)"
RUNS = [
    ("dipnet m=1 (default on a GPU: fused kernels, exact gradient)", "dipnet", {}, 1, M1_TARGET),
    (UNFUSED, "dipnet", {}, 1, None),
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


def _unfused(fn: Callable[[], None]) -> Callable[[], None]:
    from dipnet.projection import fused

    def run() -> None:
        before, fused.enabled = fused.enabled, False
        try:
            fn()
        finally:
            fused.enabled = before
    return run


def timings(dev: torch.device, quick: bool) -> list[str]:
    reps, n = (3, 5) if quick else (7, 20)
    lines = ["| model | update | time | ratio to ERM | target | meets |", "|---|---|---|---|---|---|"]
    for model_name, shape, batch in CASES:
        fns = {"erm": _runner("erm", {}, model_name, shape, batch, 1, dev)}
        for label, spec, params, k, _ in RUNS:
            fn = _runner(spec, params, model_name, shape, batch, k, dev)
            fns[label] = _unfused(fn) if label == UNFUSED else fn
        t = interleaved(fns, reps, n, dev)
        lines.append(f"| {model_name} B={batch} | erm | {t['erm'] * 1e3:.3f} ms | 1.000x | | |")
        for label, _, _, _, target in RUNS:
            target = target.get(model_name) if isinstance(target, dict) else target
            r = t[label] / t["erm"]
            meets = "" if target is None else ("yes" if r <= target else "**NO**")
            lines.append(f"| {model_name} B={batch} | {label} | {t[label] * 1e3:.3f} ms | {r:.3f}x | "
                         f"{'' if target is None else f'<= {target}x'} | {meets} |")
    for model_name, shape, batch in (("mlp", (1, 28, 28), 512), ("resnet20", (3, 32, 32), 128)):
        info = DatasetInfo("m", shape, 10, tuple("0123456789"), (0.0, 1.0))
        torch.manual_seed(0)
        projected = project(build_model(model_name, info), sigma=0.1).to(dev).eval()
        stripped = strip(copy.deepcopy(projected)).eval()
        xe = torch.rand(batch, *shape, device=dev)
        with torch.no_grad():
            te = interleaved({"stripped": lambda: stripped(xe), "projected": lambda: projected(xe)}, reps, n * 5, dev)
        r = te["projected"] / te["stripped"]
        lines.append(f"| {model_name} B={batch} | eval forward projected vs stripped | {te['projected'] * 1e3:.3f} ms | "
                     f"{r:.3f}x | <= 1.02x | {'yes' if r <= 1.02 else '**NO**'} |")
    return lines


def compiled_timings(dev: torch.device, quick: bool) -> list[str]:
    """Issue 25 on the device: compiled ERM and DIPNet (inductor, one graph) beside eager ERM and
    eager DIPNet (the fused Triton kernels), ratios to compiled ERM, compile time, peak memory."""
    from bench_compile import _runner as compiled_runner

    reps, n = (3, 5) if quick else (7, 20)
    lines = ["| model | step | time | ratio to compiled ERM | compile time | peak memory |", "|---|---|---|---|---|---|"]
    for model_name, shape, batch in CASES[:1] if quick else CASES[:3]:
        torch.compiler.reset()
        runs = {}
        for label, spec, params, compiled in (("compiled erm", "erm", {}, True),
                                              ("compiled dipnet m=1", "dipnet", {}, True),
                                              ("compiled dipnet m=4", "dipnet", {"trajectories": 4}, True),
                                              ("eager erm", "erm", {}, False),
                                              ("eager dipnet m=1 (fused kernels)", "dipnet", {}, False)):
            fn, compile_s = compiled_runner(spec, params, model_name, shape, batch, compiled, device=dev)
            peak = ""
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
                base = torch.cuda.memory_allocated(dev)
                torch.cuda.reset_peak_memory_stats(dev)
                fn()
                torch.cuda.synchronize(dev)
                peak = f"{(torch.cuda.max_memory_allocated(dev) - base) / 2**20:.1f} MiB"
            runs[label] = (fn, compile_s, peak)
        t = interleaved({k: fn for k, (fn, _, _) in runs.items()}, reps, n, dev)
        for label, (_, compile_s, peak) in runs.items():
            lines.append(f"| {model_name} B={batch} | {label} | {t[label] * 1e3:.3f} ms | "
                         f"{t[label] / t['compiled erm']:.3f}x | {f'{compile_s:.1f} s' if compile_s else ''} | {peak} |")
    torch.compiler.reset()
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
    for check in (check_window_estimate, check_table_noise, check_strip, check_sam, check_regenerated, check_fused):
        try:
            checks.append(f"- PASS {check(dev)}")
        except Exception as exc:  # noqa: BLE001 - a failed check (or a kernel that did not compile) is reported
            checks.append(f"- **FAIL** {check.__name__}: {type(exc).__name__}: {exc}")
            if check is check_fused:  # time the rest on the eager path rather than stop
                from dipnet.projection import fused

                fused.enabled = False
                checks.append("  (fused kernels disabled for the timings below)")
        print(checks[-1], flush=True)
    table = timings(dev, args.quick)
    print("\n".join(table), flush=True)
    memory = peak_memory(dev, args.quick)
    print("\n".join(memory), flush=True)
    compiled = compiled_timings(dev, args.quick)
    print("\n".join(compiled), flush=True)
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
        "## Peak memory of a training step (issue 17)" if dev.type == "cuda" else
        "## Saved-for-backward bytes of a training step (no CUDA: the CPU proxy)",
        "",
        *memory,
        "",
        "## Under torch.compile (issue 25: inductor vs the fused kernels vs eager)",
        "",
        *compiled,
        "",
    ])
    if args.out:
        Path(args.out).write_text(text)
    return 0 if not any("FAIL" in c for c in checks) else 1


if __name__ == "__main__":
    raise SystemExit(main())
