"""``dipnet demo``: the main job on data that needs no download (MNIST-1D, generated locally)."""
from __future__ import annotations

import argparse
import tempfile

from ..engine import TrainConfig, train
from ._common import percent


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the demo", description="Train the MNIST-1D reference CNN and print test accuracy per epoch.")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--out", default=None, help="run directory (default: a temporary one)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(data="mnist1d", model="mnist1d-cnn", method="erm", epochs=args.epochs, batch_size=100,
                          optimizer="adamw", lr=1e-2, schedule="cosine", out=args.out or f"{tmp}/run", progress="plain")
        result = train(cfg)
    print(f"demo: MNIST-1D reference CNN, ERM, {args.epochs} epochs: test accuracy {percent(result.final['test_acc'])}")
    return 0
