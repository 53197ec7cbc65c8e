"""``dipnet finetune``: LoRA fine-tuning of a causal LM on a reasoning-gym task, with any method
that applies to token inputs (``sft``, ``dipnet``, ``neftune``, ``sam``, ``dipnet+sam``, ...), into
a run directory; re-running the same command resumes. Options are the fields of
:class:`~dipnet.llm.FinetuneConfig` (``--lora-r``, ...), values passed raw to its schema; every
other ``--name VALUE`` is a method hyperparameter, as in ``dipnet train`` (``--trajectories 2``,
``--dipnet.sigma 0.1``, ``--rho 0.05``); ``--task-arg KEY=VALUE`` sets the task generator's options."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import DivergenceError
from ..schema import field_docs
from ._common import add_threads_argument, apply_threads, parse_assignments, parse_method_options, percent

FLAG_SKIP = ("task_kwargs", "method_params", "out")
TASKS = "{reasoning-gym tasks}"  # the epilog's placeholder, filled when the help is shown


class _Help(argparse.HelpFormatter):
    """Lists reasoning-gym's tasks in the help only (importing it takes about a second)."""

    def _format_text(self, text: str) -> str:
        return super()._format_text(text.replace(TASKS, _task_list()) if TASKS in text else text)


def _task_list() -> str:
    try:
        from reasoning_gym.factory import DATASETS
    except ModuleNotFoundError:
        return "none: reasoning-gym is not installed (the [llm] extra)"
    return ", ".join(sorted(DATASETS))


def register(sub: argparse._SubParsersAction) -> None:
    from ..llm import LLMS, FinetuneConfig

    p = sub.add_parser(
        "finetune",
        help="fine-tune a language model with LoRA: SFT, DIPNet, NEFTune, SAM, ... (the methods of `dipnet train`)",
        description="LoRA fine-tuning of a causal language model on a reasoning-gym task, evaluated by "
        "greedy decoding and reasoning-gym's scorer (exact match). Method hyperparameters follow as "
        "--name VALUE (e.g. --trajectories 2, --dipnet.sigma 0.1, --rho 0.05; see `dipnet methods`); "
        "methods that change continuous inputs (input noise, Cutout, Mixup, FGSM, ICP) do not apply to tokens. Models: "
        + ", ".join(f"{n} ({d})" for n, d in LLMS.list().items()) + ", or a local folder. Needs the [llm] extra. "
        "Re-running the same command resumes an interrupted run. Writes the adapters in PEFT's format "
        "(adapter_config.json + adapter_model.safetensors: PeftModel.from_pretrained(base, OUT)) and DIPNet's sigmas "
        "beside them (dipnet_sigmas.safetensors: dipnet.integrations.hf.load_sigmas).",
        epilog=f"Tasks (--task, reasoning-gym's generators; options with --task-arg): {TASKS}.",
        formatter_class=_Help,
    )
    for name, (default, accepts, doc) in field_docs(FinetuneConfig).items():
        if name in FLAG_SKIP:
            continue
        shown = (",".join(map(str, default)) or "none") if isinstance(default, tuple) else default
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, default=None, metavar="VALUE",
                       help=f"{doc}: {accepts} (default {shown})")
    p.add_argument("--task-arg", action="append", metavar="KEY=VALUE",
                   help="task option, repeatable (e.g. min_terms=2, max_digits=2)")
    p.add_argument("--out", default=None, help="run directory (default runs/llm-MODEL-TASK-METHOD-sSEED)")
    p.add_argument("--overwrite", action="store_true", help="delete the files of a previous run in --out first (only those dipnet wrote)")
    add_threads_argument(p)
    p.set_defaults(func=run, accepts_extra=True)


def run(args: argparse.Namespace) -> int:
    from ..llm import FinetuneConfig, Finetuner

    apply_threads(args)
    given = {k: v for k, v in vars(args).items()
             if k in FinetuneConfig.__dataclass_fields__ and k not in FLAG_SKIP and v is not None}
    cfg = FinetuneConfig(**given, task_kwargs=parse_assignments(args.task_arg, "--task-arg"),
                         method_params=parse_method_options(getattr(args, "extra", [])))
    name = Path(cfg.model).name if Path(cfg.model).is_dir() else cfg.model
    out = Path(args.out or f"runs/llm-{name}-{cfg.task}-{cfg.method}-s{cfg.seed}")
    cfg.out = str(out)
    tuner = Finetuner(cfg)  # every check (task, model, context, LoRA targets) before anything on disk changes
    try:
        result = tuner.fit(overwrite=args.overwrite)
    except DivergenceError as exc:
        print(f"dipnet finetune: stopped: {exc}", file=sys.stderr)
        return 1
    f = result.final
    sampled = f"  sampled (k={cfg.eval_samples}) {percent(f['test_acc_sampled'])}" if "test_acc_sampled" in f else ""
    print(f"final  exact match {percent(f['test_acc'])} of {cfg.test_size}{sampled}  test answer loss "
          f"{f['test_loss']:.4f}  steps {f['steps']}  {f['wall_s']:.1f}s"
          + (f" (compiling {f['compile_s']:.1f}s)" if "compile_s" in f else "") + f"  -> {out}")
    return 0
