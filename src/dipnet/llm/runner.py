"""LoRA fine-tuning of a causal LM with SFT, DIPNet or NEFTune: the model, the step, the run.

- SFT: LoRA (peft) on the named projections, AdamW, next-token loss on the answer tokens.
- DIPNet (Hao et al., arXiv 2506.04690): the same, after ``project(model, targets=placement)``
  (relative sigma, per feature); the loss stacks m trajectories in one forward (input ids,
  attention mask, positions and labels repeated); the variance prior enters as its exact
  gradient after clipping, so the clip acts on the data gradient as in the Hugging Face callback.
- NEFTune (Jain et al. 2023): transformers' own ``activate_neftune`` hook on the input
  embeddings (what ``TrainingArguments.neftune_noise_alpha`` installs), not a re-implementation.

:func:`finetune_step` is the one step (the Hugging Face callback is tested against it).
:class:`Finetuner` builds and checks everything on construction, then :meth:`Finetuner.fit`
trains with a checkpoint every ``checkpoint_every`` steps (adapters, sigmas, optimizer, RNG) in
a :class:`~dipnet.engine.RunDirectory`: the same command resumes, and a finished run given new
evaluation settings is only evaluated again.
"""
from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..engine import RunDirectory, TrainState, lr_at, param_groups, resolve_device, seed_everything
from ..engine.progress import Progress
from ..engine.runinfo import run_info
from ..engine.setup import epoch_permutation
from ..errors import ConfigError, NonFiniteLossError
from ..methods.dipnet import sigma_metrics
from ..projection import DIPNetLoss, causal_lm_loss, project, projections
from ._hf import require
from .adapters import TrainableState, save_adapters
from .config import EVAL_FIELDS, FinetuneConfig
from .evaluate import answer_loss, exact_match
from .models import load_llm
from .tasks import Example, TaskData, answer_width, collate, encode, load_task

__all__ = ["FinetuneResult", "Finetuner", "finetune", "finetune_step", "prepare_model"]


def prepare_model(model: nn.Module, cfg: FinetuneConfig) -> nn.Module:
    """LoRA on ``cfg.lora_targets`` (everything else frozen), then the method's change: DIPNet's
    projections or NEFTune's embedding hook. Call after seeding (LoRA's A matrices are random)."""
    peft = require("peft")
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    absent = sorted(set(cfg.lora_targets) - names)
    if absent:
        raise ConfigError(f"lora_targets {', '.join(absent)} name no module of {type(model).__name__}")
    lora = peft.LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                           target_modules=list(cfg.lora_targets), task_type="CAUSAL_LM")
    with warnings.catch_warnings():  # peft asks transformers a deprecated question (is_gradient_checkpointing)
        warnings.simplefilter("ignore", FutureWarning)
        model = peft.get_peft_model(model, lora)
    if cfg.method == "dipnet":
        project(model, targets=cfg.placement, sigma=cfg.sigma)
    elif cfg.method == "neftune":
        from transformers.integrations.neftune import activate_neftune

        activate_neftune(model, cfg.neftune_alpha)
    return model


def finetune_step(model: nn.Module, optimizer: torch.optim.Optimizer, batch: dict[str, Any], labels: torch.Tensor,
                  loss_fn: DIPNetLoss, *, prior: DIPNetLoss | None = None, grad_clip: float | None = None,
                  step: int = 0) -> float:
    """One optimizer step: ``loss_fn`` on the batch (m trajectories), backward, clip, then
    ``prior``'s exact gradient (the variance prior kept out of the clipped norm), the update.
    Returns the loss."""
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(model, batch, labels)
    value = loss.item()
    if not math.isfinite(value):
        raise NonFiniteLossError(step, 0, value)
    loss.backward()
    if grad_clip is not None:
        torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], grad_clip)
    if prior is not None:
        prior.prior_grad_(model)
    optimizer.step()
    return value


@dataclass
class FinetuneResult:
    run_dir: Path | None
    config: FinetuneConfig
    history: list[dict[str, Any]]
    final: dict[str, Any]
    model: nn.Module
    tokenizer: Any


class Finetuner:
    """One fine-tuning run, built and checked on construction (task, model, adapters, method,
    optimizer, run directory); :meth:`fit` trains, resuming from the run directory."""

    def __init__(self, cfg: FinetuneConfig, *, model: nn.Module | None = None, tokenizer: Any = None) -> None:
        FinetuneConfig.checked(cfg, model)
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        dtype = getattr(torch, cfg.dtype)
        self.task = load_task(cfg.task, cfg.train_size, cfg.val_size, cfg.test_size, seed=cfg.data_seed,
                              options=cfg.task_kwargs)
        seed_everything(cfg.seed)
        if model is None:
            model, tokenizer = load_llm(cfg.model, dtype)
        elif tokenizer is None:
            raise ConfigError("pass the tokenizer with the model")
        self.tokenizer = tokenizer
        context = int(getattr(model.config, "max_position_embeddings", 0) or 0) or 10**9
        enc = dict(system=cfg.system, worked_solution=cfg.worked_solution, context=context,
                   new_tokens=cfg.max_new_tokens, task=cfg.task)
        self.train_set = encode(tokenizer, self.task.train, **enc)
        self.val_set = encode(tokenizer, self.task.val, **enc)
        self.test_set = encode(tokenizer, self.task.test, **enc)
        self.model = prepare_model(model, cfg).to(self.device)
        self.model.train()
        self.optimizer = torch.optim.AdamW(param_groups(self.model, cfg.weight_decay), lr=cfg.lr,
                                           weight_decay=cfg.weight_decay)
        dip = cfg.method == "dipnet"
        self.loss_fn = DIPNetLoss(causal_lm_loss, trajectories=cfg.trajectories if dip else 1, prior=(0.0, 0.0))
        self.prior = DIPNetLoss(prior=(cfg.alpha, cfg.beta)) if dip else None
        self.run = RunDirectory(cfg.out, cfg)  # type: ignore[arg-type]  # FinetuneConfig has identity()/to_dict()
        self.pad_id = tokenizer.pad_token_id

    def batch(self, step: int) -> list[Example]:
        """The questions of ``step``: epochs of seeded permutations of the training set."""
        n, b = len(self.train_set), self.cfg.batch_size
        per_epoch = max(n // b, 1)
        epoch, i = divmod(step, per_epoch)
        perm = epoch_permutation(n, self.cfg.seed, epoch)
        return [self.train_set[j] for j in perm[i * b:(i + 1) * b].tolist()]

    def fit(self, overwrite: bool = False) -> FinetuneResult:
        """Fine-tune (resuming from the run directory's checkpoint if it holds one), evaluate and
        return the result. The run directory is locked while training; ``overwrite`` first deletes
        the files of a previous run there (and only those)."""
        self.run.check_target(overwrite)
        with self.run.locked():
            if overwrite and self.run.path is not None:
                self.run.clear()
            return self._fit()

    def _fit(self) -> FinetuneResult:
        cfg, run, model = self.cfg, self.run, self.model
        view = TrainableState(model)
        run.header = {"method": {"name": cfg.method}, "task": {"name": cfg.task, "train": len(self.train_set),
                      "val": len(self.val_set), "test": len(self.test_set), "draws": self.task.draws},
                      "run_info": run_info(self.device)}
        state = run.resume(view, self.optimizer) or TrainState()  # type: ignore[arg-type]
        record = _read_final(run)
        if state.step >= cfg.steps and record is not None and all(record.get(k) == getattr(cfg, k) for k in EVAL_FIELDS):
            return self._result(state, record)
        progress = Progress(cfg.progress, label=f"{cfg.method} {cfg.model}")
        run.record("running", state)
        try:
            with run.recording(state):
                self._train(state, progress)
        finally:
            progress.close()
        final = self.evaluate(state)
        if run.path is not None:
            save_adapters(model, run.path / "adapters.safetensors")
        run.record("done", state, final)
        return self._result(state, final)

    def _train(self, state: TrainState, progress: Progress) -> None:
        cfg, model, run = self.cfg, self.model, self.run
        view = TrainableState(model)
        model.train()
        t_run, wall_before = time.perf_counter(), state.wall_s
        losses: list[float] = []
        progress.start_epoch(0, 1, cfg.steps)
        while state.step < cfg.steps:
            lr = lr_at(state.step, cfg.steps, cfg.lr, cfg.schedule, cfg.warmup_steps)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            examples = self.batch(state.step)
            batch, labels = collate(examples, self.pad_id)
            batch = {k: v.to(self.device) for k, v in batch.items()}
            batch["logits_to_keep"] = answer_width(examples)
            value = finetune_step(model, self.optimizer, batch, labels.to(self.device), self.loss_fn,
                                  prior=self.prior, grad_clip=cfg.grad_clip, step=state.step)
            losses.append(value)
            state.step += 1
            state.example_grads += self.loss_fn.trajectories * len(examples)
            progress.advance(value)
            if state.step % cfg.log_every == 0 or state.step == cfg.steps:
                state.wall_s = wall_before + time.perf_counter() - t_run
                row = {"epoch": len(state.history), "step": state.step, "lr": lr,
                       "objective": sum(losses) / len(losses),
                       "val_loss": answer_loss(model, self.val_set, self.pad_id, cfg.eval_batch_size),
                       "example_grads": state.example_grads, "wall_s": state.wall_s, "method": sigma_log(self.model)}
                model.train()
                state.history.append(row)
                losses = []
                progress.message(f"step {state.step}/{cfg.steps}  loss {row['objective']:.4f}  "
                                 f"val loss {row['val_loss']:.4f}  {state.wall_s:.0f}s")
            if state.step % cfg.checkpoint_every == 0 or state.step == cfg.steps:
                state.wall_s = wall_before + time.perf_counter() - t_run
                run.checkpoint(view, self.optimizer, state)  # type: ignore[arg-type]
                run.record("running", state)

    def evaluate(self, state: TrainState) -> dict[str, Any]:
        """Exact match on the test set (deterministic; with ``eval_samples`` also k sampled passes),
        the test answer loss, and the run's counters."""
        cfg, model = self.cfg, self.model
        ev = dict(max_new_tokens=cfg.max_new_tokens, batch_size=cfg.eval_batch_size)
        det = exact_match(model, self.tokenizer, self.test_set, self.task, **ev)
        final: dict[str, Any] = {
            "test_acc": det["exact_match"], "test_score": det["mean_score"],
            "test_loss": answer_loss(model, self.test_set, self.pad_id, cfg.eval_batch_size),
            "val_loss": answer_loss(model, self.val_set, self.pad_id, cfg.eval_batch_size),
            "train_loss": state.history[-1]["objective"] if state.history else None,
            "example_grads": state.example_grads, "wall_s": state.wall_s, "steps": state.step,
            "generate_items_per_s": det["items_per_s"], "completions": det["completions"],
            **{k: getattr(cfg, k) for k in EVAL_FIELDS},
        }
        if cfg.eval_samples:
            sampled = exact_match(model, self.tokenizer, self.test_set, self.task, samples=cfg.eval_samples, **ev)
            final["test_acc_sampled"] = sampled["exact_match"]
        return final

    def _result(self, state: TrainState, final: dict[str, Any]) -> FinetuneResult:
        self.model.eval()
        return FinetuneResult(self.run.path, self.cfg, state.history, final, self.model, self.tokenizer)


def sigma_log(model: nn.Module) -> dict[str, Any]:
    """The learned sigma's mean, min and max over the projections (relative to each input's RMS)."""
    if not projections(model):
        return {}
    summary = sigma_metrics(model)
    rel = torch.cat([p.sigma.detach().reshape(-1) for _, p in projections(model)])
    return {"sigma_mean": summary["sigma_mean"], "sigma_min": summary["sigma_min"], "sigma_max": summary["sigma_max"],
            "relative_sigma_mean": float(rel.mean())}


def _read_final(run: RunDirectory) -> dict[str, Any] | None:
    if run.path is None or not (run.path / "run.json").is_file():
        return None
    try:
        record = json.loads((run.path / "run.json").read_text())
    except ValueError:
        return None
    return record.get("final") if record.get("status") == "done" else None


def finetune(cfg: FinetuneConfig, *, model: nn.Module | None = None, tokenizer: Any = None) -> FinetuneResult:
    """Fine-tune as ``cfg`` says; with ``cfg.out`` set, checkpoint and resume from it."""
    return Finetuner(cfg, model=model, tokenizer=tokenizer).fit()
