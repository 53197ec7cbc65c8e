"""The one threads policy (dipnet.engine.threads): the decision over a table of machines worked by
hand; the oversubscription warning once per process tree (counted in the output of a CLI run with
--nproc 2 and one with --workers 2, children included); library calls leave os.environ and torch's
threads as they were; the bounds of --threads and --nproc; Ray addresses checked, joined within a
timeout, and resource requests above the cluster refused, all without starting Ray."""
from __future__ import annotations

import json
import os
import signal
import socket
import tempfile
from pathlib import Path

import pytest
import torch

from clirun import cli
from dipnet.engine import TrainConfig, threads, train
from dipnet.engine import distributed
from dipnet.errors import ConfigError

TINY = ["--data", "synthetic", "--data-arg", "n_train=96", "--data-arg", "n_test=32", "--epochs", "1",
        "--batch-size", "24", "--progress", "none", "--train-eval-max", "96"]
SUITE = """
name = "tiny"
seeds = [0, 1]
baseline = "erm"

[train]
epochs = 1
batch_size = 32
data_kwargs = { n_train = 64, n_test = 32 }

[tasks.t]
data = "synthetic"
model = "mlp"

[methods.erm]
"""


def machine(monkeypatch, cores: int, busy: int, logical: int | None = None) -> None:
    """This process sees ``cores`` physical cores, ``busy`` of them with other work."""
    monkeypatch.setattr(threads, "physical_cores", lambda: cores)
    monkeypatch.setattr(threads, "busy_cores", lambda: busy)
    monkeypatch.setattr(threads, "logical_cores", lambda: logical or cores)


def warnings_in(text: str) -> int:
    return sum("dipnet: warning:" in line and "idle physical core" in line for line in text.splitlines())


# (physical cores, busy cores, requested threads, processes) -> (threads per process, warns)
CASES = [
    ((2, 0, None, 1), (2, False)),  # an idle machine: every core
    ((2, 1, None, 1), (1, False)),  # the README quickstart on a busy 2-core machine: 1 thread, not torch's 2
    ((2, 6, None, 1), (1, False)),  # every core busy: still 1
    ((2, 0, None, 2), (1, False)),  # make demo: 2 workers share 2 cores
    ((2, 1, None, 2), (1, False)),  # ... on a busy machine: 1 thread each, nothing to warn about
    ((2, 1, 1, 2), (1, False)),  # --threads 1 --workers 2 on 2 cores
    ((2, 0, 1, 2), (1, False)),  # --threads 1 --nproc 2
    ((2, 1, 2, 1), (2, True)),  # --threads 2 with one core busy
    ((2, 0, 2, 2), (2, True)),  # 2 x 2 threads on 2 cores
    ((2, 0, None, 4), (1, True)),  # --nproc 4 --oversubscribe on 2 cores
    ((8, 2, None, 3), (2, False)),  # 6 idle cores for 3 processes
    ((8, 0, None, 3), (2, False)),  # 8 // 3
    ((16, 4, 4, 3), (4, False)),  # 12 threads on 12 idle cores
    ((16, 4, 5, 3), (5, True)),  # 15 on 12
    ((4, 0, 1, 4), (1, False)),
]


@pytest.mark.parametrize("case,want", CASES)
def test_the_decision_over_a_table_of_machines(case, want):
    cores, busy, requested, processes = case
    p = threads.plan(requested, processes, cores=cores, busy=busy)
    assert (p.threads, p.oversubscribed) == want


def test_the_warning_names_the_machine_and_the_fix():
    text = threads.plan(2, 2, cores=2, busy=0).warning()
    assert "2 processes x 2 threads on 2 idle physical core(s) of 2" in text and "try --threads 1" in text
    assert "use at most 2 processes" in threads.plan(None, 4, cores=2, busy=0).warning()


def test_threads_and_processes_are_bounded_by_the_machine(monkeypatch):
    machine(monkeypatch, 2, 0)
    assert threads.check_threads(8) == 8 and threads.check_threads(None) is None
    for bad in ("9", "1000"):
        with pytest.raises(ConfigError, match=r"at most 8 \(4 x its 2 logical cores\)"):
            threads.check_threads(bad)
    with pytest.raises(ConfigError, match="--threads must be"):
        threads.check_threads("0")
    assert threads.check_processes("2") == 2
    with pytest.raises(ConfigError, match="--oversubscribe"):
        threads.check_processes("3")
    assert threads.check_processes("8", oversubscribe=True) == 8
    with pytest.raises(ConfigError, match="even with --oversubscribe"):
        threads.check_processes("9", oversubscribe=True)


def test_cli_refuses_threads_1000_and_nproc_64_before_any_process_starts(monkeypatch, capsys, tmp_path):
    machine(monkeypatch, 2, 0)
    started = []
    monkeypatch.setattr("dipnet.cli.train.launch_processes", lambda *a, **k: started.append(a) or 0)
    code, err = cli(capsys, "train", *TINY, "--threads", "1000", "--out", str(tmp_path / "a"))
    assert code == 2 and "at most 8" in err and len(err.splitlines()) == 1
    code, err = cli(capsys, "train", *TINY, "--nproc", "64", "--out", str(tmp_path / "b"))
    assert code == 2 and "--oversubscribe" in err and len(err.splitlines()) == 1
    assert not started and not (tmp_path / "b").exists()
    assert cli(capsys, "train", *TINY, "--nproc", "4", "--oversubscribe", "--out", str(tmp_path / "c"))[0] == 0
    assert started and "--oversubscribe" not in started[0][1]  # the ranks do not see it


def test_inside_a_decision_a_run_takes_it_and_a_rank_takes_its_launchers(monkeypatch, capsys):
    machine(monkeypatch, 2, 0)
    with threads.using(1):
        assert threads.resolve(None) == 1 and threads.resolve(2) == 2  # asked for: used, no second warning
    monkeypatch.setenv(threads.ENV, "3")
    assert threads.resolve(None, 2) == 3
    monkeypatch.delenv(threads.ENV)
    monkeypatch.setenv("LOCAL_RANK", "1")  # a user's torchrun: local rank 0 alone warns
    assert threads.resolve(4, 2) == 4
    assert warnings_in(capsys.readouterr().err) == 0


def test_train_sets_its_threads_for_the_run_and_leaves_the_process_as_it_was(tmp_path):
    env, before = dict(os.environ), torch.get_num_threads()
    want = 1 if before != 1 else 2
    seen = []
    cfg = TrainConfig(data="synthetic", data_kwargs={"n_train": 64, "n_test": 32}, epochs=1, progress="none",
                      threads=want, out=str(tmp_path / "run"))
    train(cfg, callbacks=[lambda row: seen.append(torch.get_num_threads())])
    assert seen == [want]
    assert json.loads((tmp_path / "run" / "run.json").read_text())["run_info"]["torch_threads"] == want
    assert torch.get_num_threads() == before and dict(os.environ) == env
    with pytest.raises(ConfigError, match="TrainConfig.threads"):
        train(TrainConfig(data="synthetic", threads=10_000, progress="none"))


def test_a_suite_in_this_process_leaves_it_as_it_was(tmp_path):
    from dipnet.experiments import parse_suite, run_suite

    env, before = dict(os.environ), torch.get_num_threads()
    want = 1 if before != 1 else 2
    seen = []

    def fake(config, run_dir):
        seen.append(torch.get_num_threads())
        return {"final": {"test_acc": 0.5}, "history": []}

    out = run_suite(parse_suite(SUITE, "tiny.toml"), tmp_path / "s.sqlite", train_fn=fake, threads=want)
    assert out.done == 2 and seen == [want, want]
    assert torch.get_num_threads() == before and dict(os.environ) == env


def test_the_ddp_launcher_hands_threads_to_the_ranks_and_restores_its_environment(monkeypatch, tmp_path):
    """torchrun's agent (faked here) starts the ranks from os.environ and writes to it; afterwards
    the environment and the signal handlers are as they were and the agent's log folder is gone."""
    from torch.distributed import run as torchrun

    machine(monkeypatch, 2, 0)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    env = dict(os.environ)
    seen = {}

    sigint = signal.getsignal(signal.SIGINT)

    def agent(args):
        signal.signal(signal.SIGINT, lambda *a: None)  # as the agent does, for its processes
        seen.update({k: os.environ.get(k) for k in ("OMP_NUM_THREADS", threads.ENV, "MASTER_ADDR")})
        os.environ["TORCHELASTIC_SIGNALS_TO_HANDLE"] = "SIGTERM"
        Path(args.log_dir, "rank0.log").write_text("agent log")
        seen["log_dir"] = args.log_dir

    monkeypatch.setattr(torchrun, "run", agent)
    assert distributed.launch(2, ["train"]) == 0
    assert seen["OMP_NUM_THREADS"] == seen[threads.ENV] == "1" and seen["MASTER_ADDR"] == "127.0.0.1"
    assert dict(os.environ) == env and signal.getsignal(signal.SIGINT) is sigint
    assert Path(seen["log_dir"]).parent == tmp_path and list(tmp_path.iterdir()) == []


def test_cli_nproc_2_warns_once_and_each_rank_runs_its_share(monkeypatch, capfd, tmp_path):
    machine(monkeypatch, 2, 0)  # the parent's view; the ranks do not look again
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where torchrun's agent would leave its folder
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[1] / "src"))
    from dipnet.cli import main

    sigint = signal.getsignal(signal.SIGINT)
    assert main(["train", *TINY, "--nproc", "2", "--threads", "2", "--out", str(tmp_path / "two")]) == 0
    assert signal.getsignal(signal.SIGINT) is sigint  # Ctrl-C is this process's own again
    out, err = capfd.readouterr()
    assert warnings_in(err) == 1, err
    assert out.count("final  test acc") == 1
    assert json.loads((tmp_path / "two" / "run.json").read_text())["run_info"]["torch_threads"] == 2
    assert not [p for p in tmp_path.iterdir() if "torchelastic" in p.name]  # no agent log folder left behind
    # --threads 1 on 2 cores: nothing to warn about (the processes are stopped before they start)
    monkeypatch.setattr("dipnet.cli.train.launch_processes",
                        lambda n, argv, threads=None: distributed.threads_policy.resolve(threads, n) and 0)
    assert main(["train", *TINY, "--nproc", "2", "--threads", "1", "--out", str(tmp_path / "one")]) == 0
    assert warnings_in(capfd.readouterr().err) == 0


def test_cli_workers_2_warns_once_and_not_for_one_thread_each(monkeypatch, capfd, tmp_path):
    suite = tmp_path / "tiny.toml"
    suite.write_text(SUITE)
    from dipnet.cli import main
    import dipnet.experiments.compare as compare

    machine(monkeypatch, 2, 1)
    decided = []
    real = compare._run_parallel
    monkeypatch.setattr(compare, "_run_parallel", lambda *a: decided.append(a[6]))
    for extra in ([], ["--threads", "1"]):  # make demo's default, and --threads 1 --workers 2
        main(["compare", str(suite), "--store", str(tmp_path / f"s{len(decided)}.sqlite"), "--workers", "2",
              "--quiet", *extra])
    assert decided == [1, 1] and warnings_in(capfd.readouterr().err) == 0
    monkeypatch.setattr(compare, "_run_parallel", real)
    machine(monkeypatch, 2, 0)  # the workers (other processes) see the real machine
    assert main(["compare", str(suite), "--store", str(tmp_path / "w.sqlite"), "--workers", "2", "--threads", "2",
                 "--quiet"]) == 0
    assert warnings_in(capfd.readouterr().err) == 1


# Ray: every case ends before a Ray starts.

def test_ray_addresses_are_checked(monkeypatch, capsys, tmp_path):
    import importlib.util

    from dipnet.experiments import RayExecutor

    for bad, says in (("", "empty"), ("not an address", "not a Ray address"), ("host:99999", "not a Ray address"),
                      ("10.0.0.5", "not a Ray address")):
        with pytest.raises(ConfigError, match=says):
            RayExecutor(address=bad)
        code, err = cli(capsys, "compare", "default", "--executor", "ray", "--address", bad,
                        "--store", str(tmp_path / "s.sqlite"))
        assert code == 2 and says in err and len(err.splitlines()) == 1
    for good in ("auto", "10.0.0.5:6379", "head-node.example:6379", "[::1]:6379"):
        assert RayExecutor(address=good).address == good
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "grpc" else find_spec(name, *a))
    code, err = cli(capsys, "compare", "default", "--executor", "ray", "--address", "ray://127.0.0.1:1",
                    "--store", str(tmp_path / "s.sqlite"))
    assert code == 2 and "ray[client]" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("address,says", [("127.0.0.1:{port}", "cannot reach"),
                                          ("nosuchhost.invalid:6379", "cannot reach")])
def test_an_unreachable_cluster_ends_in_one_line(capsys, tmp_path, address, says):
    pytest.importorskip("ray")
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    suite = tmp_path / "tiny.toml"
    suite.write_text(SUITE)
    env = dict(os.environ)
    code, err = cli(capsys, "compare", str(suite), "--executor", "ray", "--address", address.format(port=port),
                    "--connect-timeout", "2", "--store", str(tmp_path / "s.sqlite"))
    assert code == 2 and says in err and len(err.splitlines()) == 1
    assert dict(os.environ) == env


def test_resource_requests_above_the_cluster_are_refused(monkeypatch, capsys, tmp_path):
    ray = pytest.importorskip("ray")
    from dipnet.experiments import RayExecutor, parse_suite, run_suite

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    suite = tmp_path / "tiny.toml"
    suite.write_text(SUITE)
    cpus = os.cpu_count() or 1
    code, err = cli(capsys, "compare", str(suite), "--executor", "ray", "--cpus-per-run", str(cpus + 1),
                    "--store", str(tmp_path / "s.sqlite"))
    assert code == 2 and f"the {cpus} CPUs of this machine" in err and len(err.splitlines()) == 1
    assert not ray.is_initialized() and sorted(p.name for p in tmp_path.iterdir()) == ["s.sqlite", "tiny.toml"]

    class Cluster:  # a joined cluster of 4 CPUs: what the executor asks of Ray
        up, env = False, {}

        def is_initialized(self):
            return self.up

        def init(self, address, **kwargs):
            self.up, self.env = True, dict(os.environ)

        def cluster_resources(self):
            return {"CPU": 4.0}

        def shutdown(self):
            self.up = False

    fake = Cluster()
    monkeypatch.setattr("dipnet.experiments.executors._import_ray", lambda: fake)
    env = dict(os.environ)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        address = f"127.0.0.1:{server.getsockname()[1]}"
        with pytest.raises(ConfigError, match=r"cpus-per-run 8 is more than the 4 CPUs of the Ray cluster"):
            run_suite(parse_suite(SUITE, "tiny.toml"), tmp_path / "r.sqlite",
                      executor=RayExecutor(address=address, cpus_per_run=8, connect_timeout=3))
    assert not fake.up and dict(os.environ) == env
    assert fake.env["RAY_gcs_server_port_wait_time_s"] == "3" and fake.env.get("RAY_AUTH_MODE") in ("disabled", env.get("RAY_AUTH_MODE"))
