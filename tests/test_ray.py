"""Suites on Ray (a local Ray of 2 CPUs started and shut down by dipnet): the same per-run results
as the local process pool with the same seeds; a run whose Ray worker is killed (SIGKILL) is
trained again once, resuming from its checkpoint, recorded once; each task trains on the threads
asked for, not its CPUs; the driver's environment and threads are left as they were and the
session folder is removed; a second --resume trains nothing and starts no Ray."""
from __future__ import annotations

import functools
import glob
import os
import signal
import sys
import tempfile
from pathlib import Path

import pytest
import torch

ray = pytest.importorskip("ray")

from dipnet.cli import main  # noqa: E402
from dipnet.engine import TrainConfig, train  # noqa: E402
from dipnet.experiments import RayExecutor, RunStore, parse_suite, run_suite  # noqa: E402

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers do not import tests/

SUITE = """
name = "tiny"
seeds = [0]
baseline = "erm"

[train]
epochs = 3
batch_size = 32
lr = 1e-2
data_kwargs = { n_train = 128, n_test = 64 }

[tasks.t]
data = "synthetic"
model = "mlp"

[methods.erm]

[methods.dipnet]
"""
VICTIM = ("dipnet", 0)  # (method, seed) of the run whose worker dies once
TIMING = {"wall_s", "epoch_s", "train_s", "run_wall_s", "worker_pid", "run_dir", "env"}


def kill_once_train(log: str, config: dict, run_dir: str):
    """The engine's training, except that the victim's worker kills itself after its second
    epoch on its first attempt (the first epoch's checkpoint is on disk)."""
    victim = (config["method"], config["seed"]) == VICTIM
    first = victim and not Path(log).exists()
    with open(log if victim else os.devnull, "a") as fh:
        fh.write(f"attempt {os.getpid()} threads {torch.get_num_threads()}\n")

    def die(row):
        if first and row["epoch"] == 1:
            os.kill(os.getpid(), signal.SIGKILL)

    return train(TrainConfig.from_dict({**config, "out": run_dir, "progress": "none"}), callbacks=[die])


def results(store: Path) -> dict[str, dict]:
    def strip(obj):
        if isinstance(obj, dict):
            return {k: strip(v) for k, v in obj.items() if k not in TIMING}
        if isinstance(obj, list):
            return [strip(v) for v in obj]
        return obj

    with RunStore(store) as s:
        return {r.key: (r.status, r.attempts, strip(r.results)) for r in s.runs()}


def test_ray_suite_matches_the_local_pool_survives_a_killed_worker_and_resumes_nothing(tmp_path):
    suite = parse_suite(SUITE, "tiny.toml")
    pool = run_suite(suite, tmp_path / "pool.sqlite", workers=2, threads=1)
    assert pool.done == 2 and pool.failed == 0

    log = tmp_path / "victim.log"
    env, threads, sessions = dict(os.environ), torch.get_num_threads(), glob.glob(f"{tempfile.gettempdir()}/dipnet-ray-*")
    on_ray = run_suite(suite, tmp_path / "ray.sqlite", train_fn=functools.partial(kill_once_train, str(log)),
                       executor=RayExecutor(cpus_per_run=2, threads=1))  # one run at a time, on 1 thread
    assert not ray.is_initialized()  # the local Ray dipnet started is shut down
    assert dict(os.environ) == env and torch.get_num_threads() == threads
    assert glob.glob(f"{tempfile.gettempdir()}/dipnet-ray-*") == sessions  # its session folder removed
    assert on_ray.done == 2 and on_ray.failed == 0
    attempts = log.read_text().splitlines()
    assert len(attempts) == 2 and attempts[0] != attempts[1]  # redone once, in another worker
    assert all(a.endswith("threads 1") for a in attempts)  # --threads, not the 2 CPUs
    got, want = results(tmp_path / "ray.sqlite"), results(tmp_path / "pool.sqlite")
    assert got.keys() == want.keys()
    for key in want:
        assert got[key][0] == "done" and got[key][1] == 1  # claimed and recorded once
        assert got[key][2] == want[key][2], key  # the same per-run results (the victim resumed from epoch 1)

    again = run_suite(suite, tmp_path / "ray.sqlite", executor=RayExecutor(address="127.0.0.1:1"))
    assert again.done == 0 and again.failed == 0 and again.skipped == 2  # no run: no Ray joined or started


def test_cli_executor_flags(tmp_path, capsys):
    suite = tmp_path / "tiny.toml"
    suite.write_text(SUITE)
    assert main(["compare", str(suite), "--store", str(tmp_path / "s.sqlite"), "--address", "auto"]) == 2
    assert "--executor ray" in capsys.readouterr().err
    assert main(["compare", str(suite), "--store", str(tmp_path / "s.sqlite"), "--executor", "ray",
                 "--cpus-per-run", "0"]) == 2
    assert "cpus_per_run" in capsys.readouterr().err
