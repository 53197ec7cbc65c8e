"""The measurement behind DIPNet's LLM defaults (docs/llm.md, "The prior"): on SmolLM2-135M with
LoRA r=8 on q/k/v/o (adapters at their zero start, so the base model) and chain_sum questions,
how much a relative sigma at every decoder sub-block raises the answer loss, and how strongly
the data term pulls on each log sigma. The questions are training questions of the llm suite
and no LLM suite's validation or test questions (:func:`calibration_items`).
Run: PYTHONPATH=src .venv/bin/python docs/llm_prior.py (writes docs/results/llm-prior/calibration.json,
from which research/evidence.py generates docs/llm.md's table and the rule's prior)
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from dipnet.engine.checkpoint import atomic_write_bytes
from dipnet.engine.runinfo import run_info
from dipnet.errors import ConfigError
from dipnet.experiments.suite import load_suite
from dipnet.llm import FinetuneConfig, collate, encode, load_llm, load_task, prepare_model
from dipnet.llm.runner import llm_method
from dipnet.llm.tasks import answer_width, canonical_key
from dipnet.projection import DIPNetLoss, causal_lm_loss, project, projections, strip

ROOT = Path(__file__).resolve().parents[1]
SUITES = ("llm", str(ROOT / "suites" / "llm-study.toml"))  # the LLM suites whose held-out questions are kept out
BATCHES, BATCH = 4, 8
SIGMAS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.4)
OUT = ROOT / "docs" / "results" / "llm-prior" / "calibration.json"


def _data_config(suite: Any) -> FinetuneConfig:
    (task,) = suite.tasks
    return FinetuneConfig.from_dict(suite.task_config(task, suite.methods[0]))


def calibration_items(n: int) -> list[dict[str, Any]]:
    """The first ``n`` training questions of the llm suite that are, up to reordering, no
    validation or test question of any LLM suite (:data:`SUITES`)."""
    configs = [_data_config(load_suite(s)) for s in SUITES]
    held_out = set()
    for c in configs:
        data = load_task(c.task, c.train_size, c.val_size, c.test_size, seed=c.data_seed, options=c.task_kwargs)
        held_out |= {canonical_key(c.task, i) for i in data.val + data.test}
    c = configs[0]
    train = load_task(c.task, c.train_size, c.val_size, c.test_size, seed=c.data_seed, options=c.task_kwargs).train
    items = [i for i in train if canonical_key(c.task, i) not in held_out][:n]
    if len(items) < n:
        raise ConfigError(f"only {len(items)} of the llm suite's training questions are held out by no LLM suite; "
                          f"calibrate on fewer (--batches) or give the suites a larger training split")
    return items


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batches", type=int, default=BATCHES)
    ap.add_argument("--draws", type=int, default=2)
    ap.add_argument("--out", default=str(OUT), help="where the measurement is written (default: %(default)s)")
    args = ap.parse_args()
    start = time.perf_counter()
    items = calibration_items(BATCH * args.batches)
    cfg = _data_config(load_suite(SUITES[0]))
    torch.manual_seed(0)
    base, tok = load_llm("smollm2-135m")
    model = prepare_model(base, cfg, llm_method(cfg))
    ex = encode(tok, items, system=cfg.system, worked_solution=False, context=8192, new_tokens=16)
    batches = []
    for i in range(args.batches):
        chunk = ex[BATCH * i:BATCH * i + BATCH]
        b, lab = collate(chunk, tok.pad_token_id)
        b["logits_to_keep"] = answer_width(chunk)
        batches.append((b, lab))
    loss = DIPNetLoss(causal_lm_loss, prior=(0.0, 0.0))
    model.train()
    with torch.no_grad():
        clean = statistics.mean(float(loss(model, b, lab)) for b, lab in batches)
    print(f"{len(items)} training questions, answer loss without noise: {clean:.4f}")
    print("sigma  loss    +%    mean dL/dlog(sigma) per feature  median |.|   (x1e-4)")
    rows = []
    for sigma in SIGMAS:
        project(model, targets="decoder", sigma=sigma)
        t0 = time.perf_counter()
        with torch.no_grad():
            for b, lab in batches[:1]:
                loss(model, b, lab)  # sets the running RMS from a training batch
        values, grads = [], []
        for b, lab in batches:
            for _ in range(args.draws):
                model.zero_grad(set_to_none=True)
                out = loss(model, b, lab)
                out.backward()
                values.append(float(out.detach()))
                grads.append(torch.cat([p.log_sigma.grad.reshape(-1) for _, p in projections(model)]))
        g = torch.stack(grads).mean(0)
        noisy = statistics.mean(values)
        row = {"sigma": sigma, "loss": noisy, "grad_mean": float(g.mean()), "grad_median_abs": float(g.abs().median())}
        rows.append(row)
        print(f"{sigma:<6} {noisy:.4f} {100 * (noisy - clean) / clean:+6.1f}  {1e4 * row['grad_mean']:+10.3f}"
              f"                  {1e4 * row['grad_median_abs']:8.3f}   ({time.perf_counter() - t0:.0f} s)", flush=True)
        strip(model)
    record = {"model": "smollm2-135m", "placement": "decoder", "scale": "relative", "lora_r": cfg.lora_r,
              "task": cfg.task, "task_kwargs": cfg.task_kwargs, "questions": len(items), "batches": args.batches,
              "draws": args.draws, "clean_loss": clean, "rows": rows, "wall_s": time.perf_counter() - start,
              "env": run_info()}
    atomic_write_bytes(Path(args.out), (json.dumps(record, indent=1) + "\n").encode())
    print(f"total {record['wall_s']:.0f} s; written to {args.out}")


if __name__ == "__main__":
    main()
