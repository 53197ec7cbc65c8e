"""Generated data per run seed: ``data_seed = "run"`` (the suites' default for MNIST-1D) draws a run's
MNIST-1D with a seed derived from the run's seed; a fixed ``data_seed`` keeps one draw for all runs."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dipnet.data import load_dataset, load_for_run, run_data_seed
from dipnet.engine import TrainConfig
from dipnet.engine.setup import prepare
from dipnet.errors import ConfigError
from dipnet.experiments import parse_suite

SMALL = {"num_samples": 200, "val_size": 0}  # a small draw: generation is quick


def _package_draw(seed: int) -> np.ndarray:
    """The training inputs the mnist1d package itself generates with ``seed`` (the oracle)."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.seed, args.num_samples = seed, SMALL["num_samples"]
    return np.asarray(make_dataset(args)["x"])


def test_two_run_seeds_draw_different_training_sets_and_one_seed_the_same():
    a0 = load_for_run("mnist1d", {**SMALL, "data_seed": "run"}, 0)
    a1 = load_for_run("mnist1d", {**SMALL, "data_seed": "run"}, 1)
    again = load_for_run("mnist1d", {**SMALL, "data_seed": "run"}, 0)
    assert not torch.equal(a0.x_train, a1.x_train)
    assert torch.equal(a0.x_train, again.x_train) and torch.equal(a0.y_train, again.y_train)
    assert a0.info.extra["generator"]["seed"] == run_data_seed(0) != run_data_seed(1)
    np.testing.assert_array_equal(a1.x_train.numpy(), _package_draw(run_data_seed(1)).astype(np.float32))


def test_the_derivation_is_the_documented_hash_of_the_run_seed():
    for s in (0, 1, 2, 41, 2**40):
        assert run_data_seed(s) == int(np.random.SeedSequence([0x64617461, s]).generate_state(1)[0])
    assert len({run_data_seed(s) for s in range(1000)}) == 1000


def test_a_fixed_data_seed_keeps_one_draw_for_every_run_seed():
    published = load_dataset("mnist1d", **SMALL)  # the loader's default seed, 42
    for run_seed in (0, 7):
        fixed = load_for_run("mnist1d", {**SMALL, "data_seed": 42}, run_seed)
        plain = load_for_run("mnist1d", SMALL, run_seed)
        assert torch.equal(fixed.x_train, published.x_train) and torch.equal(plain.x_train, published.x_train)
    np.testing.assert_array_equal(load_dataset("mnist1d", data_seed=5, **SMALL).x_train.numpy(),
                                  _package_draw(5).astype(np.float32))


def test_a_run_trains_on_its_own_draw():
    def train_set(seed: int) -> torch.Tensor:
        cfg = TrainConfig(data="mnist1d", model="mnist1d-mlp", seed=seed, data_kwargs={**SMALL, "data_seed": "run"})
        return prepare(cfg)[0].x_train

    assert torch.equal(train_set(3), load_for_run("mnist1d", {**SMALL, "data_seed": "run"}, 3).x_train)
    assert not torch.equal(train_set(3), train_set(4))


SUITE = """
name = "s"
seeds = [0, 1]
[tasks.drawn]
data = "mnist1d"
model = "mnist1d-mlp"
[tasks.fixed]
data = "mnist1d"
model = "mnist1d-mlp"
data_kwargs = { data_seed = 42 }
[tasks.published]
data = "mnist1d"
model = "mnist1d-mlp"
data_kwargs = { seed = 42 }
[tasks.real]
data = "synthetic"
model = "mlp"
[methods.erm]
"""


def test_suites_draw_generated_data_per_run_seed_unless_a_seed_is_given():
    kwargs = {(s.task, s.seed): s.config["data_kwargs"] for s in parse_suite(SUITE, "s.toml").expand()}
    assert kwargs[("drawn", 0)] == kwargs[("drawn", 1)] == {"data_seed": "run"}
    assert kwargs[("fixed", 1)] == {"data_seed": 42} and kwargs[("published", 1)] == {"seed": 42}
    assert kwargs[("real", 0)] == {}


@pytest.mark.parametrize("kwargs, match", [
    ({"data_seed": "runs"}, "data_seed must be \"run\" .* or an integer >= 0, not 'runs'"),
    ({"data_seed": -1}, "data_seed must be an integer >= 0"),
    ({"data_seed": 1, "seed": 2}, "give data_seed or seed, not both"),
    ({"data_seed": "run"}, "takes the seed of a run: .*load_for_run"),
])
def test_bad_data_seeds_are_one_clear_error(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        load_dataset("mnist1d", **kwargs)


def test_data_seed_on_a_dataset_that_is_not_generated_is_refused():
    with pytest.raises(ConfigError, match="synthetic is not a generated dataset"):
        load_for_run("synthetic", {"data_seed": "run"}, 0)
    with pytest.raises(ConfigError, match="has no option 'data_seed'"):
        parse_suite(SUITE.replace('[tasks.real]\ndata = "synthetic"\nmodel = "mlp"',
                                  '[tasks.real]\ndata = "synthetic"\nmodel = "mlp"\ndata_kwargs = { data_seed = 1 }'),
                    "s.toml")
