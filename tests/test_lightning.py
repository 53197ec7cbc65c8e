"""dipnet inside PyTorch Lightning, against dipnet's own engine as the oracle: a DIPNet MLP
trained with DIPNetCallback equals the engine's DIPNet at m = 1 (same seed, data order,
optimizer) to 1e-6; SAM and RWP via manual_step equal the engine's SAM and RWP; under
Lightning's DDP strategy on 2 CPU processes the learned sigmas (and every weight) stay in sync."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

pl = pytest.importorskip("lightning.pytorch")

from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from dipnet.data import Dataset, DatasetInfo  # noqa: E402
from dipnet.engine import TrainConfig, Trainer, seed_everything
from dipnet.projection import projection_parameters  # noqa: E402
from dipnet.engine.setup import epoch_permutation  # noqa: E402
from dipnet.errors import ConfigError  # noqa: E402
from dipnet.integrations.lightning import DIPNetCallback, manual_step  # noqa: E402
from dipnet.methods import RWP, SAM  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
N, B, SEED, LR = 64, 16, 4, 0.01


def toy_dataset() -> Dataset:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(N + 32, 6, generator=g)
    y = (x @ torch.randn(6, 3, generator=g)).argmax(1)
    info = DatasetInfo("toy", (6,), 3, ("0", "1", "2"), None)
    return Dataset(x[:N], y[:N], x[N:], y[N:], info)


def toy_model(info=None) -> nn.Module:
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))


class Classifier(pl.LightningModule):
    """A plain LightningModule; ``update`` picks its optimizer and manual or automatic optimization."""

    def __init__(self, net: nn.Module, update: str = "plain") -> None:
        super().__init__()
        self.model, self.update = net, update
        self.automatic_optimization = update == "plain"

    def forward(self, x):
        return self.model(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        if self.automatic_optimization:
            return F.cross_entropy(self(x), y)
        return manual_step(self, lambda: F.cross_entropy(self(x), y))

    def configure_optimizers(self):
        fixed = projection_parameters(self)  # DIPNet's sigmas: trained, never perturbed
        if self.update == "sam":
            return SAM(self.parameters(), torch.optim.AdamW, rho=0.05, lr=LR, weight_decay=0.0, fixed=fixed)
        if self.update == "rwp":
            return RWP(self.parameters(), torch.optim.AdamW, sigma=0.05, lr=LR, weight_decay=0.0, fixed=fixed)
        return torch.optim.AdamW(self.parameters(), lr=LR, weight_decay=0.0)


def engine_params(method: str, params: dict) -> list[torch.Tensor]:
    cfg = TrainConfig(method=method, method_params=params, optimizer="adamw", lr=LR, schedule="constant",
                      epochs=1, batch_size=B, seed=SEED, progress="none")
    trainer = Trainer(cfg, dataset=toy_dataset(), model=toy_model)
    trainer.fit()
    return [p.detach().clone() for p in trainer.model.parameters()]


def lightning_params(update: str, callbacks: list) -> list[torch.Tensor]:
    data = toy_dataset()
    seed_everything(SEED)  # as the engine: seed, then build the model
    module = Classifier(toy_model(), update)
    perm = epoch_permutation(N, SEED, 0)  # the engine's data order
    loader = DataLoader(TensorDataset(data.x_train[perm], data.y_train[perm]), batch_size=B, shuffle=False,
                        generator=torch.Generator())  # its own generator: the global one draws the noise
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks)
    trainer.fit(module, loader)
    return [p.detach().clone() for p in module.model.parameters()]


def assert_same(a: list[torch.Tensor], b: list[torch.Tensor], atol: float = 1e-6) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.shape == y.shape and torch.allclose(x, y, atol=atol, rtol=0), (x - y).abs().max()


def test_dipnet_callback_equals_the_engine_at_m_1():
    cb = DIPNetCallback("model", sigma=0.2)
    got = lightning_params("plain", [cb])
    want = engine_params("dipnet", {"sigma": 0.2})
    assert len(got) == 2 + 4  # 2 projections (raw input and hidden) before the 2 Linear layers
    assert_same(got, want)
    log_sigma = got[2]  # the raw input's projection, registered after its layer's weight and bias
    assert log_sigma.shape == (6,) and not torch.allclose(log_sigma, torch.full((6,), 0.2).log())  # learned


def test_sam_and_rwp_via_manual_step_equal_the_engine():
    assert_same(lightning_params("sam", []), engine_params("sam", {"rho": 0.05}))
    assert_same(lightning_params("rwp", []), engine_params("rwp", {"sigma": 0.05}))


def test_dipnet_with_sam_under_lightning_equals_dipnet_sam_in_the_engine():
    got = lightning_params("sam", [DIPNetCallback("model", sigma=0.2)])
    assert_same(got, engine_params("dipnet+sam", {"dipnet.sigma": 0.2, "rho": 0.05}))


def test_callback_settings_are_checked_and_logged():
    with pytest.raises(ConfigError, match="sigma"):
        DIPNetCallback(sigma=-1.0)
    with pytest.raises(ConfigError):
        DIPNetCallback(no_such_setting=1)
    module = Classifier(toy_model())
    cb = DIPNetCallback("model", sigma=0.1, scale="absolute")
    cb.setup(None, module, "fit")
    cb.setup(None, module, "validate")  # projecting twice would be an error: setup is idempotent
    summary = cb.sigmas(module)
    assert set(summary["sigma"]) == {"0", "2"} and summary["sigma_mean"] == pytest.approx(0.1)
    with pytest.raises(ConfigError, match="no such submodule"):
        DIPNetCallback("nope").setup(None, module, "fit")


DDP_SCRIPT = textwrap.dedent('''
    import json, os, sys
    import torch, torch.nn.functional as F
    import lightning.pytorch as pl
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset
    from dipnet.engine import seed_everything
    from dipnet.projection import projection_parameters
    from dipnet.integrations.lightning import DIPNetCallback, manual_step
    from dipnet.methods import SAM
    from dipnet.projection import projections

    class M(pl.LightningModule):
        def __init__(self, update):
            super().__init__()
            self.model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
            self.update = update
            self.automatic_optimization = update == "plain"
        def training_step(self, batch, i):
            x, y = batch
            if self.automatic_optimization:
                return F.cross_entropy(self.model(x), y)
            return manual_step(self, lambda: F.cross_entropy(self.model(x), y))
        def configure_optimizers(self):
            if self.update == "sam":
                return SAM(self.parameters(), torch.optim.SGD, rho=0.05, lr=0.05, fixed=projection_parameters(self))
            return torch.optim.AdamW(self.parameters(), lr=0.01)

    out = sys.argv[1]
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 6, generator=g), torch.randint(0, 3, (64,), generator=g)
    for update in ("plain", "sam"):
        seed_everything(0)
        module = M(update)
        cb = DIPNetCallback("model", sigma=0.2)
        trainer = pl.Trainer(max_epochs=2, accelerator="cpu", devices=2, strategy="ddp", logger=False,
                             enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                             callbacks=[cb])
        trainer.fit(module, DataLoader(TensorDataset(x, y), batch_size=8))
        rank = trainer.global_rank
        torch.save({"params": [p.detach() for p in module.model.parameters()], "steps": trainer.global_step,
                    "log_sigma": [p.log_sigma.detach() for _, p in projections(module.model)]},
                   os.path.join(out, f"{update}_{rank}.pt"))
''')


def test_lightning_ddp_on_two_cpu_processes_keeps_sigmas_in_sync(tmp_path):
    script = tmp_path / "ddp_fit.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "MASTER_ADDR": "127.0.0.1", "GLOO_SOCKET_IFNAME": "lo",
           "OMP_NUM_THREADS": "1", "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True,
                          timeout=180, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for update in ("plain", "sam"):
        r0, r1 = (torch.load(tmp_path / f"{update}_{r}.pt", weights_only=True) for r in (0, 1))
        assert r0["steps"] == r1["steps"] == 2 * 4  # 64 examples, 8 per rank and step
        assert len(r0["log_sigma"]) == 2
        for a, b in zip(r0["log_sigma"], r1["log_sigma"]):  # the learned sigmas: moved, and equal on both ranks
            assert torch.equal(a, b) and not torch.allclose(a, torch.full_like(a, 0.2).log()), update
        for a, b in zip(r0["params"], r1["params"]):
            assert torch.equal(a, b), update
