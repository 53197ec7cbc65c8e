"""``dipnet train``: one training run into a run directory (resumes if the directory holds one).

Trainer options are the fields of :class:`~dipnet.engine.TrainConfig` (``--batch-size``, ...);
every other ``--name VALUE`` is a method hyperparameter. Values go to the schema raw. A method
field whose name is also a trainer option is written with its component (``--icp.warmup``):
the trainer's option wins the bare name. ``--nproc N`` trains data-parallel: it checks the
command, then runs it again under ``torchrun --standalone --nproc-per-node N`` (docs/scale.md).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from ..engine import RunDirectory, TrainConfig, Trainer, build_optimizer, prepare, resolve_device, threads
from ..engine.distributed import launch as launch_processes
from ..engine.rundir import dataset_fingerprint
from ..models import model_recipe
from ..errors import ConfigError, DivergenceError
from ..schema import field_docs
from ._common import add_threads_argument, apply_threads, parse_assignments, parse_method_options, percent

# --train-perturbation: a batch component put in front of the method (DIPNet paper, Table 1).
TRAIN_PERTURBATIONS = {"none": None, "gaussian": "gaussian-examples", "fgsm": "fgsm-examples"}
# TrainConfig fields with a flag of their own (the dict fields have --data-arg / --model-arg).
TRAIN_FLAGS = ("data", "model", "method", "epochs", "batch_size", "seed", "optimizer", "lr", "momentum",
               "weight_decay", "schedule", "warmup_epochs", "milestones", "gamma", "grad_clip",
               "eval_batch_size", "train_eval_max", "device", "compile", "progress", "log_to")


def trainer_flags() -> set[str]:
    """Every option name ``dipnet train`` takes itself (``--batch-size`` and ``--batch_size`` alike),
    read from its parser."""
    sub = argparse.ArgumentParser().add_subparsers()
    register(sub)
    names = {s[2:] for action in sub.choices["train"]._actions for s in action.option_strings if s.startswith("--")}
    return names | {n.replace("-", "_") for n in names}


def add_training_arguments(p: argparse.ArgumentParser) -> None:
    docs = field_docs(TrainConfig)
    for name in TRAIN_FLAGS:
        default, accepts, doc = docs[name]
        shown = (",".join(map(str, default)) or "none") if isinstance(default, tuple) else default
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, default=None, metavar="VALUE",
                       help=f"{doc}: {accepts} (default: the model's recipe, else {shown})")
    p.add_argument("--train-perturbation", choices=tuple(TRAIN_PERTURBATIONS), default="none",
                   help="train on perturbed inputs: gaussian noise or FGSM adversarial examples")
    p.add_argument("--data-arg", action="append", metavar="KEY=VALUE", help="dataset option, repeatable (e.g. seed=0)")
    p.add_argument("--model-arg", action="append", metavar="KEY=VALUE", help="model option, repeatable (e.g. widths=256,256)")


# The learning rate for an optimizer the model's recipe does not use (when --lr is not given).
OPTIMIZER_LR = {"sgd": 0.05, "adamw": 1e-3, "adam": 1e-3}


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig of a command line: the options given, raw; for the rest the model's
    training recipe (``dipnet models``, docs/models.md), then the TrainConfig defaults."""
    given = {name: getattr(args, name) for name in TRAIN_FLAGS if getattr(args, name) is not None}
    recipe = model_recipe(given.get("model", TrainConfig.model))
    if "optimizer" in given and given["optimizer"] != recipe.get("optimizer") and "lr" not in given:
        recipe["lr"] = OPTIMIZER_LR.get(given["optimizer"], TrainConfig.lr)
    given = {**recipe, **given}
    method = given.get("method", TrainConfig.method)
    extra = TRAIN_PERTURBATIONS[args.train_perturbation]
    if extra:
        method = f"{extra}+{method}" if method != "erm" else extra
    given["method"] = method
    return TrainConfig(**given, data_kwargs=parse_assignments(args.data_arg, "--data-arg"),
                       model_kwargs=parse_assignments(args.model_arg, "--model-arg"),
                       method_params=parse_method_options(getattr(args, "extra", [])))


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train one model",
        description="Train one model and save it in a run directory. Method hyperparameters follow as "
        "--name VALUE (e.g. --sigma 0.1, --sam.rho 0.05; see `dipnet methods`). Re-running the same "
        "command resumes an interrupted run.",
    )
    add_training_arguments(p)
    p.add_argument("--out", default=None, help="run directory (default runs/DATA-MODEL-METHOD-sSEED)")
    p.add_argument("--overwrite", action="store_true",
                   help="start over: delete the files of the dipnet run in --out first (only those; a folder "
                        "that holds no dipnet run is refused)")
    add_threads_argument(p)
    p.add_argument("--nproc", default=1, metavar="N",
                   help="train data-parallel on N local processes via torchrun (gloo on CPUs, NCCL on GPUs, one "
                   "per GPU; the global --batch-size is kept; at most the logical cores)")
    p.add_argument("--oversubscribe", action="store_true",
                   help=f"allow --nproc above the logical cores (up to {threads.FACTOR} x them)")
    p.set_defaults(func=run, accepts_extra=True)


def _without(argv: list[str], flags: dict[str, bool]) -> list[str]:
    """``argv`` less the given flags (``{flag: takes_value}``), as ``--flag V`` or ``--flag=V``."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in flags:
            skip = flags[name] and "=" not in arg
            continue
        out.append(arg)
    return out


def launch(args: argparse.Namespace, cfg: TrainConfig, out: Path, nproc: int) -> int:
    """Check the run here (method, data, model, world size, the directory and a checkpoint to
    resume), then train it on ``nproc`` processes under torch's elastic agent, as torchrun does;
    rank 0 prints the result."""
    device = resolve_device(cfg.device)
    gpus = torch.cuda.device_count()
    if device.type == "cuda" and nproc > gpus:
        raise ConfigError(f"--nproc {nproc} needs {nproc} GPUs (one per process); this machine shows {gpus}")
    dataset, model, method = prepare(cfg)
    method.check_world(nproc)
    run_dir = RunDirectory(out, cfg)
    run_dir.check_target(args.overwrite)
    if not args.overwrite:
        run_dir.world_size, run_dir.fingerprint = nproc, dataset_fingerprint(dataset)
        run_dir.resume(model, build_optimizer(cfg, model, method))
    child = _without(args.argv, {"--nproc": True, "--out": True, "--oversubscribe": False})
    child = child[1:] if child[:1] == ["train"] else child
    code = launch_processes(nproc, ["train", *child, "--out", str(out)], threads=args.threads)
    if code not in (0, 2):
        print(f"dipnet train: the {nproc} training processes failed (exit status {code})", file=sys.stderr)
    return code


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    out = Path(args.out or f"runs/{cfg.data}-{cfg.model}-{cfg.method}-s{cfg.seed}".replace("+", "_"))
    cfg.out = str(out)
    nproc = threads.check_processes(args.nproc, "--nproc", args.oversubscribe)
    args.threads = threads.check_threads(args.threads)
    if nproc > 1 and "WORLD_SIZE" not in os.environ:
        return launch(args, cfg, out, nproc)
    apply_threads(args)  # under torchrun: this rank's share, decided by the launcher
    trainer = Trainer(cfg)  # every check (method, data, model) before anything on disk changes
    try:
        result = trainer.fit(overwrite=args.overwrite)
    except DivergenceError as exc:
        print(f"dipnet train: stopped: {exc}", file=sys.stderr)
        return 1
    if not trainer.dist.is_writer:
        return 0
    f = result.final
    print(
        f"final  test acc {percent(f['test_acc'])}  train acc {percent(f['train_acc'])}  "
        f"gap {100 * f['gap']:.2f} pts  example-grads {f['example_grads']:,}  {f['wall_s']:.1f}s"
        + (f" (compiling {f['compile_s']:.1f}s)" if "compile_s" in f else "") + f"  -> {out}"
    )
    return 0
