"""Fine-tuning causal language models with DIPNet, offline: models, tasks, the run, evaluation.

``dipnet finetune --model smollm2-135m --task chain_sum --method dipnet`` and the ``llm`` suite
run here; a user with their own Hugging Face ``Trainer`` adds DIPNet with
:class:`dipnet.integrations.hf.DIPNetCallback` instead (docs/llm.md). Nothing here imports
transformers, peft or reasoning-gym until it is used (they are the ``[llm]`` extra).
"""
from .adapters import load_adapters, save_adapters, trainable_state
from .config import FinetuneConfig
from .evaluate import answer_loss, exact_match, generate
from .runner import CausalLMTask, Finetuner, finetune, prepare_model
from .suite import FinetuneSuite, finetune_train, parse_finetune_suite
from .models import LLMS, load_llm, register_llm, smollm2_folder
from .tasks import TASKS, Example, TaskData, collate, encode, extract_answer, load_task

__all__ = [
    "CausalLMTask",
    "Example",
    "FinetuneConfig",
    "FinetuneSuite",
    "Finetuner",
    "LLMS",
    "TASKS",
    "TaskData",
    "answer_loss",
    "collate",
    "encode",
    "exact_match",
    "extract_answer",
    "finetune",
    "finetune_train",
    "generate",
    "load_adapters",
    "load_llm",
    "load_task",
    "parse_finetune_suite",
    "prepare_model",
    "register_llm",
    "save_adapters",
    "smollm2_folder",
    "trainable_state",
]
