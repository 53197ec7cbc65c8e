"""Data-parallel training on 2 CPU processes (gloo on loopback), against independent oracles:
the single-process run (ERM to float tolerance), the ranks' own parameters after every step,
an uninterrupted run (for a run killed mid-epoch and resumed), the noise the ranks draw, and
a hand computation of parallel m-RWP's update (plus the single-process m-RWP on the same
half-batches and noise). Every process started here ends before its test does (timeouts)."""
from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from dipnet.data import Dataset, DatasetInfo
from dipnet.engine import TrainConfig, Trainer, train
from dipnet.engine.distributed import Distributed, rank_seed, spawn
from dipnet.engine.setup import epoch_permutation
from dipnet.errors import ConfigError
from dipnet.methods import RWP, build_method

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 120


def toy_dataset(n_train: int = 100, n_test: int = 40, d: int = 6, k: int = 3) -> Dataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n_train + n_test, d, generator=g)
    y = (x @ torch.randn(d, k, generator=g)).argmax(1)
    info = DatasetInfo("toy", (d,), k, tuple(map(str, range(k))), None)
    return Dataset(x[:n_train], y[:n_train], x[n_train:], y[n_train:], info)


def toy_model(info=None) -> nn.Module:
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))


def flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


ERM = dict(method="erm", epochs=2, batch_size=15, lr=0.01, seed=3, progress="none", train_eval_max=50)
DIP = dict(method="dipnet", epochs=3, batch_size=16, lr=0.01, seed=5, progress="none")
SAM_RUN = dict(method="sam", method_params={"rho": 0.1}, optimizer="sgd", lr=0.05, epochs=1, batch_size=20,
               seed=2, progress="none")
MRWP = dict(method="mrwp", method_params={"mix": 0.3, "sigma": 0.05, "form": "parallel"}, optimizer="sgd",
            momentum=0.0, lr=0.1, schedule="constant", epochs=1, batch_size=16, seed=7, progress="none")


def _first_linear_noise(model: nn.Module) -> list[torch.Tensor]:
    """Hooks that record ``u - x`` (sigma * eps) at the model's first Linear on every call."""
    layer = next(m for m in model.modules() if isinstance(m, nn.Linear))
    seen: list[torch.Tensor] = []
    before: list[torch.Tensor] = []
    layer.register_forward_pre_hook(lambda m, a: before.append(a[0].detach().clone()), prepend=True)
    layer.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach() - before.pop()))
    return seen


def _scenarios(out: str) -> None:
    """Every rank: ERM with a per-step check across ranks, DIPNet twice with the noise recorded,
    an uninterrupted DIPNet run, the resume of the killed one, one parallel m-RWP update."""
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    res: dict = {}
    train(TrainConfig(**DIP, out=f"{out}/dip_killed"), dataset=toy_dataset(), model=toy_model)

    trainer = Trainer(TrainConfig(**ERM), dataset=toy_dataset(), model=toy_model)
    diffs, original = [], trainer.method.step

    def checked(*a, **k):
        value = original(*a, **k)
        mine = flat(trainer.model)
        every = [torch.empty_like(mine) for _ in range(world)]
        dist.all_gather(every, mine)
        diffs.append(max(float((p - every[0]).abs().max()) for p in every))
        return value

    trainer.method.step = checked
    result = trainer.fit()
    res["erm_diffs"], res["erm_history"] = diffs, result.history
    torch.save(flat(trainer.model), f"{out}/erm_{rank}.pt")

    for attempt in (0, 1):
        trainer = Trainer(TrainConfig(**{**DIP, "epochs": 1}), dataset=toy_dataset(), model=toy_model)
        noise = _first_linear_noise(trainer.model)
        trainer.fit()
        torch.save(torch.stack(noise[:3]), f"{out}/noise_{attempt}_{rank}.pt")

    train(TrainConfig(**DIP, out=f"{out}/dip_whole"), dataset=toy_dataset(), model=toy_model)

    sam = train(TrainConfig(**SAM_RUN), dataset=toy_dataset(), model=toy_model)
    torch.save(flat(sam.model), f"{out}/sam_{rank}.pt")

    trainer = Trainer(TrainConfig(**MRWP), dataset=toy_dataset(n_train=16), model=toy_model)
    w0 = flat(trainer.model)
    trainer.fit()
    torch.save({"w0": w0, "w1": flat(trainer.model)}, f"{out}/mrwp_{rank}.pt")
    Path(f"{out}/res_{rank}.json").write_text(json.dumps(res))
    del trainer, checked, original, sam
    gc.collect()  # the DDP wrappers hold the group: free them first (Distributed.close)
    dist.destroy_process_group()


def _killed(out: str, kill_step: int) -> None:
    """A 2-rank DIPNet run whose rank 1 dies (SIGKILL-like) at ``kill_step``, mid-epoch."""
    trainer = Trainer(TrainConfig(**DIP, out=f"{out}/dip_killed"), dataset=toy_dataset(), model=toy_model)
    original = trainer.method.step

    def dying(*a, **k):
        if trainer.loop.ctx.step == kill_step and trainer.dist.rank == 1:
            os._exit(9)
        return original(*a, **k)

    trainer.method.step = dying
    trainer.fit()


KILL_STEP = 7 + 3  # mid-way through the second epoch of 7 steps (100 examples / 16)


@pytest.fixture(scope="module")
def scenarios(tmp_path_factory) -> Path:
    """Two launches: a run killed mid-epoch (its record kept aside), then every scenario."""
    out = tmp_path_factory.mktemp("ddp")
    with pytest.raises(Exception, match="exit code 9"):
        spawn(_killed, 2, str(out), KILL_STEP, timeout=TIMEOUT)
    (out / "killed_record.json").write_text((out / "dip_killed" / "run.json").read_text())
    spawn(_scenarios, 2, str(out), timeout=TIMEOUT)
    return out


def _load(path: Path) -> torch.Tensor:
    return torch.load(path, weights_only=True)


def test_erm_on_two_ranks_equals_one_process_and_ranks_agree_after_every_step(scenarios):
    res = [json.loads((scenarios / f"res_{r}.json").read_text()) for r in (0, 1)]
    steps = 2 * -(-100 // 15)
    assert len(res[0]["erm_diffs"]) == steps and max(res[0]["erm_diffs"]) == 0.0
    single = train(TrainConfig(**ERM), dataset=toy_dataset(), model=toy_model)
    for r in (0, 1):
        assert torch.allclose(_load(scenarios / f"erm_{r}.pt"), flat(single.model), atol=1e-5, rtol=0)
    # reduced metrics are the single-process ones (uneven 8/7 parts of 15 weighted exactly)
    ref = single.history
    for key in ("objective", "train_loss", "test_acc", "example_grads"):
        assert res[0]["erm_history"][-1][key] == pytest.approx(ref[-1][key], abs=1e-5)


def test_sam_on_two_ranks_is_sam_on_the_global_batch(scenarios):
    """Both passes go through DDP: the ascent uses the all-reduced gradient, so two ranks take
    the single-process SAM steps on the same global batches."""
    two = [_load(scenarios / f"sam_{r}.pt") for r in (0, 1)]
    assert torch.equal(two[0], two[1])
    one = flat(train(TrainConfig(**SAM_RUN), dataset=toy_dataset(), model=toy_model).model)
    assert torch.allclose(two[0], one, atol=1e-6, rtol=0)


def test_dipnet_noise_differs_between_ranks_and_is_reproduced_by_the_seed(scenarios):
    n = {(a, r): _load(scenarios / f"noise_{a}_{r}.pt") for a in (0, 1) for r in (0, 1)}
    assert n[0, 0].shape == (3, 8, 6)  # 3 steps, 8 examples per rank
    assert not torch.allclose(n[0, 0], n[0, 1])  # ranks draw different noise
    assert torch.equal(n[0, 0], n[1, 0]) and torch.equal(n[0, 1], n[1, 1])  # the seed reproduces it


def test_killed_mid_epoch_and_resumed_ends_where_an_uninterrupted_run_does(scenarios):
    killed = json.loads((scenarios / "killed_record.json").read_text())
    # died in epoch 2: unannounced, or rank 0 saw its peer's connection close first and said so
    assert killed["status"] in ("running", "failed") and len(killed["history"]) == 1
    resumed = load_file(str(scenarios / "dip_killed" / "model.safetensors"))
    whole = load_file(str(scenarios / "dip_whole" / "model.safetensors"))
    assert resumed.keys() == whole.keys()
    for k in whole:
        assert torch.equal(resumed[k], whole[k]), k
    record = json.loads((scenarios / "dip_killed" / "run.json").read_text())
    assert record["status"] == "done" and record["run_info"]["world_size"] == 2
    assert record["run_info"]["resumed_from_epoch"] == 1


def test_parallel_mrwp_update_is_the_hand_computed_mix_and_the_single_process_mrwp(scenarios):
    got = [_load(scenarios / f"mrwp_{r}.pt") for r in (0, 1)]
    assert torch.equal(got[0]["w1"], got[1]["w1"]) and torch.equal(got[0]["w0"], got[1]["w0"])
    w0, w1 = got[0]["w0"], got[0]["w1"]
    data = toy_dataset(n_train=16)
    perm = epoch_permutation(16, MRWP["seed"], 0)
    halves = [(data.x_train[i], data.y_train[i]) for i in (perm[:8], perm[8:])]
    lam, sigma, lr = 0.3, 0.05, 0.1

    def model_at(w: torch.Tensor) -> nn.Module:
        m = toy_model()
        torch.nn.utils.vector_to_parameters(w.clone(), m.parameters())
        return m

    def grad(w: torch.Tensor, xy) -> torch.Tensor:
        m = model_at(w)
        F.cross_entropy(m(xy[0]), xy[1]).backward()
        return torch.cat([p.grad.reshape(-1) for p in m.parameters()])

    # rank 1's noise: sigma * ||w_filter|| * N(0, 1) drawn after seeding with (seed, rank 1, step 0)
    m0 = model_at(w0)
    torch.manual_seed(rank_seed(MRWP["seed"], 1, 0))
    eps = torch.cat([e.reshape(-1) for e in RWP(m0.parameters(), torch.optim.SGD, sigma=sigma, lr=lr).sample_noise()])
    hand = w0 - lr * ((1 - lam) * grad(w0, halves[0]) + lam * grad(w0 + eps, halves[1]))
    assert torch.allclose(w1, hand, atol=1e-6, rtol=0)

    # the single-process m-RWP: clean half-step on half 0, perturbed step on half 1, same noise
    m = model_at(w0)
    opt = RWP(m.parameters(), torch.optim.SGD, sigma=sigma, mix=lam, lr=lr)
    for i, (x, y) in enumerate(halves):
        if i == 1:
            torch.manual_seed(rank_seed(MRWP["seed"], 1, 0))
        opt.step(lambda: F.cross_entropy(m(x), y).backward())
    assert opt.updated and torch.allclose(w1, flat(m), atol=1e-6, rtol=0)


def test_cli_nproc_2_trains_what_one_process_trains(tmp_path, capsys):
    args = ["train", "--data", "synthetic", "--data-arg", "n_train=96", "--data-arg", "n_test=32", "--epochs", "2",
            "--batch-size", "24", "--progress", "none", "--train-eval-max", "96"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run([sys.executable, "-m", "dipnet", *args, "--nproc", "2", "--out", str(tmp_path / "two")],
                          capture_output=True, text=True, timeout=TIMEOUT, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("final  test acc") == 1  # rank 0 alone reports
    from dipnet.cli import main

    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    two, one = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("two", "one"))
    for k in one:
        assert torch.allclose(two[k], one[k], atol=1e-5, rtol=0), k
    capsys.readouterr()
    # resuming with another number of processes is refused in one line
    assert main([*args, "--out", str(tmp_path / "two")]) == 2
    err = capsys.readouterr().err
    assert "--nproc 2" in err and len(err.strip().splitlines()) == 1


def test_global_batch_parts_and_their_loss_weights():
    idx = torch.arange(15)
    parts = [Distributed(r, 2).shard(idx) for r in (0, 1)]
    assert torch.equal(torch.cat([p for p, _ in parts]), idx)
    assert [w for _, w in parts] == [2 * 8 / 15, 2 * 7 / 15]  # average of weighted means = global mean
    part, weight = Distributed(2, 3).shard(torch.arange(2))  # no example left for rank 2: one at weight 0
    assert part.numel() == 1 and weight == 0.0
    assert Distributed().shard(idx)[0] is idx


def test_rank_seeds_differ_across_ranks_and_steps_and_repeat():
    seeds = {rank_seed(0, r, s) for r in range(4) for s in range(1000)}
    assert len(seeds) == 4000 and all(0 <= v < 2**63 for v in seeds)
    assert rank_seed(1, 2, 3) == rank_seed(1, 2, 3) != rank_seed(2, 2, 3)


def test_parallel_mrwp_needs_an_even_number_of_processes():
    method = build_method("mrwp", {"form": "parallel"})
    for world in (1, 3):
        with pytest.raises(ConfigError, match="even number of processes"):
            method.check_world(world)
    method.check_world(2)
    build_method("mrwp", {}).check_world(3)  # auto: the sequential form on an odd world
