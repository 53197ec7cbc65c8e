"""``dipnet train``: one training run into a run directory (resumes if the directory holds one)."""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from ..engine import TrainConfig, build_method, train
from ..engine.trainer import OPTIMIZERS, PROGRESS_MODES
from ..engine.schedule import SCHEDULES
from ..errors import ConfigError, NonFiniteLossError
from ._common import parse_assignments, parse_extra, percent

# --train-perturbation maps to batch components of dipnet.methods.adversarial.
TRAIN_PERTURBATIONS = {"none": None, "gaussian": "gaussian-examples", "fgsm": "fgsm-examples"}


def add_training_arguments(p: argparse.ArgumentParser) -> None:
    d = TrainConfig()
    p.add_argument("--data", default=d.data, help="dataset name (see `dipnet datasets`)")
    p.add_argument("--model", default=d.model, help="model name (see `dipnet models`)")
    p.add_argument("--method", default=d.method, help="method spec, e.g. erm, dipnet, sam, dipnet+mrwp (see `dipnet methods`)")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=d.optimizer)
    p.add_argument("--lr", type=float, default=None, help="learning rate (default 1e-3 for adam/adamw, 0.05 for sgd)")
    p.add_argument("--momentum", type=float, default=d.momentum)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--schedule", choices=SCHEDULES, default=d.schedule)
    p.add_argument("--warmup-epochs", type=float, default=d.warmup_epochs)
    p.add_argument("--grad-clip", type=float, default=None, help="clip the global gradient norm to this value")
    p.add_argument("--train-perturbation", choices=tuple(TRAIN_PERTURBATIONS), default="none",
                   help="train on perturbed inputs: gaussian noise or FGSM adversarial examples")
    p.add_argument("--data-arg", action="append", metavar="KEY=VALUE", help="dataset option, repeatable (e.g. seed=0)")
    p.add_argument("--model-arg", action="append", metavar="KEY=VALUE", help="model option, repeatable (e.g. widths=256,256)")
    p.add_argument("--device", default=d.device, help="cpu, cuda, cuda:N or auto")
    p.add_argument("--progress", choices=PROGRESS_MODES, default=d.progress)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    method = args.method
    extra = TRAIN_PERTURBATIONS[args.train_perturbation]
    if extra:
        method = f"{extra}+{method}" if method != "erm" else extra
    lr = args.lr if args.lr is not None else (0.05 if args.optimizer == "sgd" else 1e-3)
    cfg = TrainConfig(
        data=args.data, model=args.model, method=method, epochs=args.epochs, batch_size=args.batch_size,
        seed=args.seed, optimizer=args.optimizer, lr=lr, momentum=args.momentum, weight_decay=args.weight_decay,
        schedule=args.schedule, warmup_epochs=args.warmup_epochs, grad_clip=args.grad_clip,
        data_kwargs=parse_assignments(args.data_arg, "--data-arg"),
        model_kwargs=parse_assignments(args.model_arg, "--model-arg"),
        method_params=parse_extra(getattr(args, "extra", [])),
        device=args.device, progress=args.progress,
    )
    cfg.validate()
    build_method(cfg.method, cfg.method_params)
    return cfg


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train one model",
        description="Train one model and save it in a run directory. Method hyperparameters follow as "
        "--name VALUE (e.g. --sigma 0.1, --sam.rho 0.05). Re-running the same command resumes an interrupted run.",
    )
    add_training_arguments(p)
    p.add_argument("--out", default=None, help="run directory (default runs/DATA-MODEL-METHOD-sSEED)")
    p.add_argument("--overwrite", action="store_true", help="delete an existing run directory first")
    p.set_defaults(func=run, accepts_extra=True)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    out = Path(args.out or f"runs/{cfg.data}-{cfg.model}-{cfg.method}-s{cfg.seed}".replace("+", "_"))
    if out.exists() and args.overwrite:
        shutil.rmtree(out)
    if out.exists() and not (out / "run.json").exists() and any(out.iterdir()):
        raise ConfigError(f"{out} exists and is not a dipnet run directory; choose another --out")
    cfg.out = str(out)
    try:
        result = train(cfg)
    except NonFiniteLossError as exc:
        print(f"dipnet train: stopped: {exc}", file=sys.stderr)
        return 1
    f = result.final
    print(
        f"final  test acc {percent(f['test_acc'])}  train acc {percent(f['train_acc'])}  "
        f"gap {100 * f['gap']:.2f} pts  example-grads {f['example_grads']:,}  {f['wall_s']:.1f}s  -> {out}"
    )
    return 0
