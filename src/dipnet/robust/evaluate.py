"""One call for a model's robustness on a dataset: clean accuracy, accuracy under FGSM and PGD at
several eps, per-corruption and per-severity accuracy with the mean corruption accuracy
(Hendrycks & Dietterich 2019), and accuracy on generator-shifted test sets (MNIST-1D)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from ..data import Dataset
from ..errors import ConfigError
from ..schema import Limits, check
from .attacks import ATTACKS, MODES, NORMS, _choice, _positive_int, attack_mode, bounds_tensors
from .corruptions import corrupt, input_layout, list_corruptions
from .shift import shifted_sets

# Default attack radii as fractions of the valid range's width (hi - lo).
DEFAULT_EPS_FRACTIONS = (0.0, 0.01, 0.02, 0.05, 0.1)


@torch.no_grad()
def predict_classes(model: nn.Module, x: torch.Tensor, mode: str = "eval", samples: int = 1, batch_size: int = 1000) -> torch.Tensor:
    """Predicted classes; a stochastic mode averages the softmax of ``samples`` passes."""
    out = []
    with attack_mode(model, mode):
        for i in range(0, x.shape[0], batch_size):
            xb = x[i:i + batch_size]
            probs = sum(model(xb).softmax(-1) for _ in range(samples))
            out.append(probs.argmax(-1))
    return torch.cat(out)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, mode: str = "eval", samples: int = 1,
             batch_size: int = 1000) -> float:
    return float((predict_classes(model, x, mode, samples, batch_size) == y).float().mean())


def range_width(bounds: Any, x: torch.Tensor) -> float:
    """``hi - lo`` of the valid range (the narrowest channel's for per-channel bounds); the data's
    own range when ``bounds`` is None."""
    box = bounds_tensors(bounds, x)
    if box is None:
        return float(x.max() - x.min())
    return float((box[1] - box[0]).min())


def evaluate_robustness(
    model: nn.Module,
    dataset: Dataset,
    *,
    attacks: Sequence[str] = ("fgsm", "pgd"),
    eps: Sequence[float] | None = None,
    norm: str = "linf",
    pgd_steps: int = 20,
    pgd_restarts: int = 1,
    corruptions: Sequence[str] | None = None,
    severities: Sequence[int] = (1, 2, 3, 4, 5),
    shifted: bool = True,
    n_examples: int | None = 1000,
    seed: int = 0,
    mode: str = "eval",
    eot_samples: int = 1,
    batch_size: int = 500,
    out_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Robustness of ``model`` on ``n_examples`` test points of ``dataset`` (a seeded subset).

    ``eps`` are absolute radii in the data's units (default: ``DEFAULT_EPS_FRACTIONS`` of the
    valid range's width). ``corruptions`` default to all that fit the input layout; ``[]`` skips
    them. ``mode``/``eot_samples``: how a stochastic model is run (see :mod:`.attacks`); its
    predictions average ``eot_samples`` softmax outputs. With ``out_dir``, writes
    ``robust_eps.png`` and ``robust_severity.png`` there. Returns a JSON-able dict.
    """
    if not isinstance(dataset, Dataset):
        raise ConfigError(f"dataset must be a dipnet Dataset, not {type(dataset).__name__}")
    for a in attacks:
        if a not in ATTACKS:
            raise ConfigError(f"unknown attack {a!r}; choose from: {', '.join(ATTACKS)}")
    _choice(norm, "norm", NORMS)
    _choice(mode, "mode", MODES)
    _positive_int(pgd_steps, "pgd_steps")
    _positive_int(eot_samples, "eot_samples")
    _positive_int(batch_size, "batch_size")
    if n_examples is not None:
        _positive_int(n_examples, "n_examples")
    check(list(severities), list[int], "severities", Limits(ge=1, le=5))

    info = dataset.info
    x_all, y_all = dataset.x_test, dataset.y_test
    gen = torch.Generator().manual_seed(seed)
    n = x_all.shape[0] if n_examples is None else min(n_examples, x_all.shape[0])
    idx = torch.randperm(x_all.shape[0], generator=gen)[:n]
    x, y = x_all[idx].float(), y_all[idx].long()
    bounds = info.bounds
    width = range_width(bounds, x_all)
    if eps is None:
        eps_list = [f * width for f in DEFAULT_EPS_FRACTIONS]
    else:
        eps_list = [float(e) for e in eps]
        if any(not math.isfinite(e) or e < 0 for e in eps_list):
            raise ConfigError(f"eps must be finite numbers >= 0, not {list(eps)!r}")
    layout = input_layout(x)
    names = list(list_corruptions(layout)) if corruptions is None else list(corruptions)
    allowed = list_corruptions(layout)
    for c in names:
        if c not in allowed:
            raise ConfigError(f"corruption {c!r} does not fit {layout} inputs; choose from: {', '.join(allowed)}")

    samples = 1 if mode == "eval" else eot_samples
    acc = lambda xs, ys=y: accuracy(model, xs, ys, mode, samples, batch_size)
    result: dict[str, Any] = {
        "dataset": info.name, "n_examples": n, "seed": seed, "mode": mode, "eot_samples": eot_samples,
        "bounds": None if bounds is None else [float(b) if not torch.is_tensor(b) else b.tolist() for b in bounds],
        "range_width": width, "clean_acc": acc(x),
    }

    adversarial: dict[str, Any] = {}
    for name in attacks:
        accs = []
        for e in eps_list:
            kw: dict[str, Any] = dict(norm=norm, bounds=bounds, eot_samples=eot_samples, mode=mode)
            if name == "pgd":
                kw.update(steps=pgd_steps, restarts=pgd_restarts, seed=seed)
            attack = ATTACKS[name](model, e, **kw)
            adv = torch.cat([attack(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, n, batch_size)])
            accs.append(acc(adv))
        adversarial[name] = {"eps": eps_list, "eps_relative": [e / width for e in eps_list], "acc": accs}
        if name == "pgd":
            adversarial[name].update(steps=pgd_steps, restarts=pgd_restarts, alpha="2.5 * eps / steps")
    result["adversarial"] = {"norm": norm, **adversarial}

    per_corruption: dict[str, list[float]] = {}
    for k, c in enumerate(names):
        # each (corruption, severity) its own seed, kept in torch's seed range for any run seed
        per_corruption[c] = [acc(corrupt(x, c, s, seed=(seed * 1000 + 10 * k + s) % 2**63, bounds=bounds))
                             for s in severities]
    result["corruptions"] = {"severities": list(severities), "acc": per_corruption}
    if per_corruption:
        per_sev = [sum(v[j] for v in per_corruption.values()) / len(per_corruption) for j in range(len(severities))]
        result["per_severity_acc"] = per_sev
        result["mean_corruption_acc"] = sum(per_sev) / len(per_sev)

    if shifted:
        sets, reason = shifted_sets(info, n, seed)
        result["shifted"] = {name: acc(xs.float(), ys.long()) for name, (xs, ys) in sets.items()} if sets else {"skipped": reason}

    if out_dir is not None:
        result["plots"] = plot_robustness(result, out_dir)
    return result


def plot_robustness(result: dict[str, Any], out_dir: str | Path) -> list[str]:
    """Accuracy vs eps (one line per attack) and accuracy vs severity (one line per corruption and
    the mean); returns the written paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    adv = {k: v for k, v in result.get("adversarial", {}).items() if isinstance(v, dict)}
    if adv:
        fig, ax = plt.subplots(figsize=(4.5, 3.2))
        for name, r in adv.items():
            ax.plot(r["eps"], r["acc"], marker="o", label=name.upper())
        ax.set(xlabel=f"eps ({result['adversarial']['norm']})", ylabel="accuracy", ylim=(0, 1),
               title=f"{result['dataset']}: accuracy vs eps")
        ax.legend()
        fig.tight_layout()
        p = out_dir / "robust_eps.png"
        fig.savefig(p, dpi=120)
        plt.close(fig)
        paths.append(str(p))
    corr = result.get("corruptions", {}).get("acc", {})
    if corr:
        sev = result["corruptions"]["severities"]
        fig, ax = plt.subplots(figsize=(5.5, 3.5))
        for name, accs in corr.items():
            ax.plot(sev, accs, alpha=0.6, label=name)
        ax.plot(sev, result["per_severity_acc"], color="k", lw=2.5, label="mean")
        ax.set(xlabel="severity", ylabel="accuracy", ylim=(0, 1), xticks=sev,
               title=f"{result['dataset']}: accuracy vs severity")
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        p = out_dir / "robust_severity.png"
        fig.savefig(p, dpi=120)
        plt.close(fig)
        paths.append(str(p))
    return paths
