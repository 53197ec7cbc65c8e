"""The measurement behind DIPNet's LLM defaults (docs/llm.md, "The prior"): on SmolLM2-135M with
LoRA r=8 on q/k/v/o (adapters at their zero start, so the base model) and chain_sum questions,
how much a relative sigma at every decoder sub-block raises the answer loss, and how strongly
the data term pulls on each log sigma. Run: .venv/bin/python docs/llm_prior.py
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from dipnet.llm import FinetuneConfig, collate, encode, load_llm, load_task, prepare_model
from dipnet.llm.tasks import answer_width
from dipnet.projection import DIPNetLoss, causal_lm_loss, project, projections, strip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--draws", type=int, default=2)
    args = ap.parse_args()
    torch.manual_seed(0)
    cfg = FinetuneConfig(task_kwargs={"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 2})
    task = load_task(cfg.task, 8 * args.batches, 1, 1, options=cfg.task_kwargs)
    base, tok = load_llm("smollm2-135m")
    model = prepare_model(base, cfg)
    ex = encode(tok, task.train, system=cfg.system, worked_solution=False, context=8192, new_tokens=16)
    batches = []
    for i in range(args.batches):
        chunk = ex[8 * i:8 * i + 8]
        b, lab = collate(chunk, tok.pad_token_id)
        b["logits_to_keep"] = answer_width(chunk)
        batches.append((b, lab))
    loss = DIPNetLoss(causal_lm_loss, prior=(0.0, 0.0))
    model.train()
    with torch.no_grad():
        clean = statistics.mean(float(loss(model, b, lab)) for b, lab in batches)
    print(f"answer loss without noise: {clean:.4f}")
    print("sigma  loss    +%    mean dL/dlog(sigma) per feature  median |.|   (x1e-4)")
    for sigma in (0.01, 0.02, 0.05, 0.1, 0.2, 0.4):
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
                values.append(float(out))
                grads.append(torch.cat([p.log_sigma.grad.reshape(-1) for _, p in projections(model)]))
        g = torch.stack(grads).mean(0)
        noisy = statistics.mean(values)
        print(f"{sigma:<6} {noisy:.4f} {100 * (noisy - clean) / clean:+6.1f}  {1e4 * float(g.mean()):+10.3f}"
              f"                  {1e4 * float(g.abs().median()):8.3f}   ({time.perf_counter() - t0:.0f} s)", flush=True)
        strip(model)


if __name__ == "__main__":
    main()
