"""LoRA fine-tuning of a causal LM, as a task on the one training loop (:mod:`dipnet.engine.core`).

:class:`CausalLMTask` is what fine-tuning adds to the loop: its batches (seeded permutations of
the training questions, left-padded, only the answer tokens' logits kept), its criterion
(:func:`~dipnet.projection.causal_lm_loss`, the answer tokens' next-token loss), token inputs, an
evaluation period of ``log_every`` steps (the validation answer loss), and the final evaluation
(exact match by greedy decoding and reasoning-gym's scorer). The method is any registered one
that applies to token inputs: ``sft`` (= ``erm``), ``dipnet`` (Hao et al., arXiv 2506.04690:
LoRA, then ``project(model, targets="decoder")``, relative sigma ``LLM_SIGMA`` and prior
``LLM_PRIOR`` unless set), ``neftune`` (transformers' own hook), ``sam``, the RWP family, and
compositions such as ``dipnet+sam``; its step is :meth:`~dipnet.methods.Method.step`, as in
``dipnet train``. :class:`Finetuner` builds and checks everything on construction; :meth:`fit`
trains with a checkpoint every ``checkpoint_every`` steps (adapters, sigmas, optimizer, RNG) in a
:class:`~dipnet.engine.RunDirectory`: the same command resumes, and a finished run given new
evaluation settings is only evaluated again.
"""
from __future__ import annotations

import functools
import warnings
from typing import Any

import torch
from torch import nn

from ..engine import RunDirectory, RunResult, TrainState, lr_at, resolve_device, seed_everything
from ..engine.core import Loop
from ..engine.distributed import setup as setup_distributed
from ..engine.logs import run_logs
from ..engine.loop import as_callbacks, fit_run
from ..engine.runinfo import run_info
from ..engine.setup import epoch_permutation
from ..engine.task import Task
from ..errors import ConfigError
from ..methods import Method, build_method
from ..projection import LLM_PRIOR, LLM_SIGMA, causal_lm_loss
from ._hf import require
from .adapters import TrainableState, save_adapters
from .config import EVAL_FIELDS, FinetuneConfig
from .evaluate import answer_loss, exact_match
from .models import load_llm
from .tasks import TaskData, answer_width, collate, encode, load_task

__all__ = ["CausalLMTask", "Finetuner", "LLM_METHOD_DEFAULTS", "finetune", "prepare_model"]

# A language model's defaults for the noise methods (docs/llm.md): one relative per-feature sigma
# before each decoder sub-block, and the prior recalibrated for LLMs.
LLM_METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    "dipnet": {"targets": "decoder", "scale": "relative", "sigma": LLM_SIGMA, "alpha": LLM_PRIOR[0], "beta": LLM_PRIOR[1]},
    "noise-layers": {"targets": "decoder", "scale": "relative", "sigma": LLM_SIGMA},
}


def llm_method(cfg: FinetuneConfig) -> Method:
    """The run's method with the language-model defaults, refused if it cannot apply to tokens."""
    method = build_method(cfg.method, cfg.method_params, defaults=LLM_METHOD_DEFAULTS)
    method.check_inputs("tokens")
    return method


def prepare_model(model: nn.Module, cfg: FinetuneConfig, method: Method) -> nn.Module:
    """LoRA on ``cfg.lora_targets`` (everything else frozen), then the method's change to the
    model (DIPNet's projections, NEFTune's embedding hook). Call after seeding (LoRA's A matrices
    are random)."""
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
    return method.transform_model(model)


class CausalLMTask(Task):
    """Questions of a reasoning-gym task as a loop's task (see the module docstring)."""

    inputs = "tokens"
    criterion = staticmethod(causal_lm_loss)
    static_shapes = False  # batches are padded to their longest question

    def __init__(self, cfg: FinetuneConfig, task: TaskData, tokenizer: Any, device: torch.device, context: int) -> None:
        self.cfg, self.data, self.tokenizer, self.device = cfg, task, tokenizer, device
        self.name = cfg.task
        enc = functools.partial(encode, tokenizer, system=cfg.system, worked_solution=cfg.worked_solution,
                                context=context, new_tokens=cfg.max_new_tokens, task=cfg.task)
        self.train_set, self.val_set, self.test_set = enc(task.train), enc(task.val), enc(task.test)
        self.pad_id = tokenizer.pad_token_id
        self.total_steps, self.period_steps = cfg.steps, cfg.log_every

    def indices(self, step: int) -> torch.Tensor:
        """Epochs of seeded permutations of the training questions, full batches only."""
        n, b = len(self.train_set), self.cfg.batch_size
        epoch, i = divmod(step, max(n // b, 1))
        return epoch_permutation(n, self.cfg.seed, epoch)[i * b:(i + 1) * b]

    def batch(self, idx: torch.Tensor) -> tuple[dict[str, Any], torch.Tensor]:
        examples = [self.train_set[j] for j in idx.tolist()]
        batch, labels = collate(examples, self.pad_id)
        out: dict[str, Any] = {k: v.to(self.device) for k, v in batch.items()}
        out["logits_to_keep"] = answer_width(examples)
        return out, labels.to(self.device)

    def evaluate(self, model: nn.Module) -> dict[str, Any]:
        return {"val_loss": answer_loss(model, self.val_set, self.pad_id, self.cfg.eval_batch_size)}

    def final(self, model: nn.Module, state: TrainState) -> dict[str, Any]:
        """Exact match on the test set (deterministic; with ``eval_samples`` also k sampled
        passes), the test and validation answer losses, and the run's counters."""
        cfg = self.cfg
        ev = dict(max_new_tokens=cfg.max_new_tokens, batch_size=cfg.eval_batch_size)
        det = exact_match(model, self.tokenizer, self.test_set, self.data, **ev)
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
            sampled = exact_match(model, self.tokenizer, self.test_set, self.data, samples=cfg.eval_samples, **ev)
            final["test_acc_sampled"] = sampled["exact_match"]
        return final

    def header(self) -> dict[str, Any]:
        return {"task": {"name": self.cfg.task, "train": len(self.train_set), "val": len(self.val_set),
                         "test": len(self.test_set), "draws": self.data.draws}}


class Finetuner:
    """One fine-tuning run, built and checked on construction (task, model, adapters, method,
    optimizer, run directory); :meth:`fit` trains on the one loop, resuming from the run directory.
    ``callbacks``: the loop's event handlers (:class:`~dipnet.engine.Callback`) or functions of a row."""

    def __init__(self, cfg: FinetuneConfig, *, model: nn.Module | None = None, tokenizer: Any = None,
                 callbacks: Any = ()) -> None:
        FinetuneConfig.checked(cfg, model)
        self.cfg = cfg
        self.method = llm_method(cfg)
        self.device = resolve_device(cfg.device)
        dtype = getattr(torch, cfg.dtype)
        data = load_task(cfg.task, cfg.train_size, cfg.val_size, cfg.test_size, seed=cfg.data_seed,
                         options=cfg.task_kwargs)
        seed_everything(cfg.seed)
        if model is None:
            model, tokenizer = load_llm(cfg.model, dtype)
        elif tokenizer is None:
            raise ConfigError("pass the tokenizer with the model")
        self.tokenizer = tokenizer
        context = int(getattr(model.config, "max_position_embeddings", 0) or 0) or 10**9
        self.task = CausalLMTask(cfg, data, tokenizer, self.device, context)
        self.model = prepare_model(model, cfg, self.method).to(self.device)
        self.model.train()
        self.optimizer = self.method.build_optimizer(self.model, torch.optim.AdamW, lr=cfg.lr,
                                                     weight_decay=cfg.weight_decay)
        self.run = RunDirectory(cfg.out, cfg)
        self.dist = setup_distributed(self.device)
        self.loop = Loop(self.task, self.model, self.method, self.optimizer, self.run, dist=self.dist,
                         lr_at=lambda step: lr_at(step, cfg.steps, cfg.lr, cfg.schedule, cfg.warmup_steps),
                         grad_clip=cfg.grad_clip, seed=cfg.seed, checkpoint_every=cfg.checkpoint_every,
                         state_module=TrainableState(self.model),
                         callbacks=[*as_callbacks(callbacks), *run_logs(cfg.log_to, cfg.out)], compile=cfg.compile)

    def fit(self, overwrite: bool = False) -> RunResult:
        """Fine-tune (resuming from the run directory's checkpoint if it holds one), evaluate and
        return the result. The run directory is locked while training; ``overwrite`` first deletes
        the files of a previous run there (and only those)."""
        cfg, run, method = self.cfg, self.run, self.method
        run.header = {"method": {"name": method.name, "hyperparameters": method.hyperparameters()},
                      **self.task.header(), "run_info": run_info(self.device)}
        previous = None if overwrite else run.done_final()

        def finish(state: TrainState) -> dict[str, Any]:
            if previous is not None and self.loop.start_step >= cfg.steps \
                    and all(previous.get(k) == getattr(cfg, k) for k in EVAL_FIELDS):
                return previous
            final = {**self.task.final(self.model, state), **self.loop.compile_record()}
            if run.path is not None:
                save_adapters(self.model, run.path)
            return final

        state, final = fit_run(self.loop, run, label=f"{method.name} {cfg.model}", progress_mode=cfg.progress,
                               overwrite=overwrite, finish=finish, dist=self.dist)
        return RunResult(run.path, cfg, state.history, final, self.model, method, self.task.data, self.tokenizer)


def finetune(cfg: FinetuneConfig, *, model: nn.Module | None = None, tokenizer: Any = None) -> RunResult:
    """Fine-tune as ``cfg`` says; with ``cfg.out`` set, checkpoint and resume from it."""
    return Finetuner(cfg, model=model, tokenizer=tokenizer).fit()
