"""What defines a fine-tuning run: :class:`FinetuneConfig`, each limit stated once (:mod:`dipnet.schema`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from torch import nn

from ..engine.config import LOG_TO_DOC, LogKind, ProgressMode, RunConfig
from ..errors import ConfigError
from ..methods.registry import spec_names
from ..schema import check_type, param

__all__ = ["FinetuneConfig", "NON_IDENTITY"]

# Fields that change neither the training nor the data: a resume may differ in these (a finished
# run given new evaluation settings is evaluated again).
NON_IDENTITY = ("out", "progress", "log_to", "eval_batch_size", "eval_samples", "log_every", "checkpoint_every")
EVAL_FIELDS = ("eval_batch_size", "eval_samples")
MAX_QUESTIONS = 1_000_000  # per split; the time to generate them is estimated too (tasks.MAX_PREPARE_S)


@dataclass
class FinetuneConfig(RunConfig):
    """A LoRA fine-tuning run of a causal LM on a reasoning-gym task with any method that applies
    to token inputs (``method`` and ``method_params`` as in :class:`~dipnet.engine.TrainConfig`)."""

    non_identity: ClassVar[tuple[str, ...]] = NON_IDENTITY
    what: ClassVar[str] = "fine-tuning"

    model: str = param("smollm2-135m", doc="language model: smollm2-135m, tiny-llama or a local folder")
    task: str = param("chain_sum", doc="reasoning-gym dataset name (chain_sum, basic_arithmetic, gsm_symbolic, ...)")
    task_kwargs: dict[str, Any] = param(default_factory=dict, doc="the task generator's options (reasoning-gym config)")
    method: str = param("sft", doc="method spec as for `dipnet train` (sft = erm): dipnet, neftune, sam, dipnet+sam, ...")
    method_params: dict[str, Any] = param(default_factory=dict, doc="method hyperparameters (e.g. dipnet.sigma)")
    steps: int = param(200, ge=1, le=1_000_000, doc="optimizer steps")
    seed: int = param(0, ge=0, le=2**63 - 1, doc="seeds the adapters' initialization, data order and noise")
    data_seed: int = param(0, ge=0, le=2**63 - 1, doc="seeds the task's questions (the same splits for every run seed)")
    train_size: int = param(2000, ge=1, le=MAX_QUESTIONS, doc="distinct training questions")
    val_size: int = param(100, ge=1, le=MAX_QUESTIONS, doc="distinct validation questions (answer loss at each log)")
    test_size: int = param(500, ge=1, le=MAX_QUESTIONS, doc="distinct test questions (exact match at the end)")
    batch_size: int = param(8, ge=1, doc="questions per step")
    lr: float = param(2e-4, gt=0, doc="peak learning rate (AdamW)")
    weight_decay: float = param(0.0, ge=0, doc="AdamW weight decay on weight matrices (never on sigmas)")
    schedule: Literal["constant", "cosine"] = param("constant", doc="learning-rate schedule after warm-up")
    warmup_steps: int = param(0, ge=0, doc="linear warm-up steps")
    grad_clip: float | None = param(1.0, gt=0, doc="clip the data gradient's global norm to this value")
    lora_r: int = param(8, ge=1, le=4096, doc="LoRA rank")
    lora_alpha: float = param(16.0, gt=0, doc="LoRA scale numerator (scale = alpha / r)")
    lora_dropout: float = param(0.0, ge=0, lt=1, doc="LoRA dropout")
    lora_targets: tuple[str, ...] = param(("q_proj", "k_proj", "v_proj", "o_proj"), doc="module names LoRA adapts")
    system: str | None = param("Give only the final answer.", doc="system message of the prompt; none: no system message")
    worked_solution: bool = param(False, doc="train on the task's worked solution ending in #### n (gsm_symbolic)")
    max_new_tokens: int = param(16, ge=1, doc="tokens generated per test question")
    eval_batch_size: int = param(50, ge=1, doc="questions per generation batch")
    eval_samples: int = param(0, ge=0, le=1024, doc="dipnet: k > 0 also scores the mean of k sampled passes")
    log_every: int = param(25, ge=1, doc="steps between log records (validation answer loss, sigmas)")
    checkpoint_every: int = param(50, ge=1, doc="steps between checkpoints (adapters, sigmas, optimizer, RNG)")
    dtype: Literal["float32", "bfloat16"] = param("float32", doc="weights and activations")
    device: str = param("cpu", doc="cpu, cuda, cuda:N or auto")
    compile: bool = param(False, doc="train through torch.compile (inductor); the first step compiles (compile_s)")
    out: str | None = param(None, doc="run directory (record, checkpoint, adapters)")
    progress: ProgressMode = param("auto", doc="progress display")
    log_to: tuple[LogKind, ...] = param((), doc=LOG_TO_DOC)

    @classmethod
    def checked(cls, cfg: Any, model: Any = None) -> "FinetuneConfig":
        """``cfg`` revalidated, after the type checks of the fine-tuning entry points (``finetune``, ``Finetuner``)."""
        check_type(cfg, cls, "the fine-tuning config", "build one with FinetuneConfig(...) or FinetuneConfig.from_dict(d)")
        check_type(model, (nn.Module, None), "model", "pass a loaded causal LM (dipnet.llm.load_llm) or None to load cfg.model")
        return cfg.validate()

    def _check(self) -> None:
        if self.warmup_steps >= self.steps:
            raise ConfigError(f"warmup_steps ({self.warmup_steps}) must be fewer than steps ({self.steps})")
        if self.eval_samples and not {"dipnet", "noise-layers"} & set(spec_names(self.method)):
            raise ConfigError("eval_samples (k sampled passes) needs method dipnet: the other methods have no noise at test time")
        if not self.lora_targets:
            raise ConfigError("lora_targets is empty; name the modules LoRA adapts, e.g. q_proj,v_proj")
