"""One method, three stacks: ``dipnet finetune``'s engine (Finetuner on the one loop), the stock
Hugging Face Trainer (:class:`~dipnet.integrations.hf_trainer.MethodTrainer`) and Lightning
(:class:`~dipnet.integrations.lightning.MethodModule`) give the same LoRA adapters and sigmas after
5 steps (1e-6) from the same initial weights, batches and noise (each stack's RNG seeded per step
by its own callback), for SFT, DIPNet, SAM and DIPNet+SAM on a tiny Llama."""
from __future__ import annotations

import copy
import logging

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("lightning")

from dipnet.engine import Callback, seed_everything  # noqa: E402
from dipnet.llm import FinetuneConfig, Finetuner, load_llm, prepare_model  # noqa: E402
from dipnet.llm.runner import LLM_METHOD_DEFAULTS  # noqa: E402
from dipnet.methods import build_method  # noqa: E402
from dipnet.projection import causal_lm_loss, projections  # noqa: E402

STEPS, NOISE_SEED = 5, 1000
CHAIN = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2}
METHODS = ["sft", "dipnet", "sam", "dipnet+sam", "neftune"]


def config(method: str) -> FinetuneConfig:
    return FinetuneConfig(model="tiny-llama", task="chain_sum", task_kwargs=CHAIN, train_size=40, val_size=4,
                          test_size=4, steps=STEPS, batch_size=4, lr=1e-2, log_every=STEPS,
                          checkpoint_every=STEPS, progress="none", method=method,
                          method_params={"rho": 0.05} if "sam" in method else {"alpha": 5.0} if method == "neftune" else {})


class SeedEachStep(Callback):
    def on_fit_start(self, loop, state):
        torch.manual_seed(NOISE_SEED + state.step)

    def on_step_end(self, loop, state, loss):
        torch.manual_seed(NOISE_SEED + state.step)


def trained(model) -> dict[str, torch.Tensor]:
    return {n.replace("._orig_mod", ""): p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.fixture(scope="module")
def base():
    return load_llm("tiny-llama")


def engine_run(method, base):
    model, tok = base
    tuner = Finetuner(config(method), model=copy.deepcopy(model), tokenizer=tok, callbacks=[SeedEachStep()])
    batches = [tuner.task.batch(tuner.task.indices(s)) for s in range(STEPS)]
    tuner.fit()
    return tuner, batches


def lora_only(method, base):
    model, _ = base
    cfg = config(method)
    seed_everything(cfg.seed)
    return prepare_model(copy.deepcopy(model), cfg, build_method("sft"))


class Batches(torch.utils.data.IterableDataset):
    def __init__(self, batches):
        self.batches = batches

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        for x, y in self.batches:
            yield {**x, "labels": y} if isinstance(x, dict) else (x, y)


def hf_run(method, base, batches, tmp_path):
    from transformers import TrainerCallback, TrainingArguments

    from dipnet.integrations.hf_trainer import MethodTrainer

    class Seed(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            torch.manual_seed(NOISE_SEED + state.global_step)

    model = lora_only(method, base)
    cfg = config(method)
    args = TrainingArguments(output_dir=str(tmp_path / "hf"), per_device_train_batch_size=1, max_steps=STEPS,
                             learning_rate=cfg.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
                             max_grad_norm=cfg.grad_clip, optim="adamw_torch", report_to=[], save_strategy="no",
                             use_cpu=True, disable_tqdm=True, remove_unused_columns=False, logging_steps=1)
    trainer = MethodTrainer(model=model, args=args, train_dataset=Batches(batches), method=method,
                            method_params=cfg.method_params, data_collator=lambda items: items[0], callbacks=[Seed()])
    trainer.train()
    return trainer


def lightning_run(method, base, batches):
    import lightning.pytorch as pl

    from dipnet.integrations.lightning import MethodModule

    class Seed(pl.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            torch.manual_seed(NOISE_SEED + trainer.global_step)

    cfg = config(method)
    module = MethodModule(lora_only(method, base), method, cfg.method_params, lr=cfg.lr, grad_clip=cfg.grad_clip,
                          criterion=causal_lm_loss, defaults=LLM_METHOD_DEFAULTS)
    loader = torch.utils.data.DataLoader(Batches(batches), batch_size=None)
    trainer = pl.Trainer(max_steps=STEPS, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[Seed()])
    trainer.fit(module, loader)
    return module, trainer


@pytest.mark.parametrize("method", METHODS)
def test_the_three_stacks_give_the_same_adapters(method, base, tmp_path, caplog):
    tuner, batches = engine_run(method, base)
    want = trained(tuner.model)
    with caplog.at_level(logging.INFO, logger="dipnet"):
        hf = hf_run(method, base, batches, tmp_path)
    module, pl_trainer = lightning_run(method, base, batches)
    assert hf.state.global_step == STEPS and pl_trainer.global_step == STEPS
    start = trained(lora_only(method, base))
    assert any(not torch.equal(start[n], want[n]) for n in start)  # the adapters moved
    for name, got in (("hf", trained(hf.model)), ("lightning", trained(module.model))):
        assert got.keys() == want.keys(), name
        for n in want:
            torch.testing.assert_close(got[n], want[n], atol=1e-6, rtol=0, msg=f"{name}: {n} after {STEPS} steps")
    if "dipnet" in method:
        assert len(projections(tuner.model)) == len(projections(hf.model)) == len(projections(module.model)) > 0
        assert not hf.model.training and "eval mode" in caplog.text  # the method left the model as it predicts
        assert any("sigma_mean" in row for row in hf.state.log_history)


def test_a_method_for_continuous_inputs_is_refused_on_tokens(base, tmp_path):
    from transformers import TrainingArguments

    from dipnet.errors import ConfigError
    from dipnet.integrations.hf_trainer import MethodTrainer

    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    with pytest.raises(ConfigError, match="cannot train on token ids"):
        MethodTrainer(model=lora_only("sft", base), args=args, method="cutout")
    with pytest.raises(ConfigError, match="cannot train on token ids"):
        Finetuner(config("mixup"))


# ---------------------------------------------------------------- every method, a tiny classifier

N_CLS, B_CLS, EPOCHS, BOUNDS = 80, 16, 2, (-3.0, 3.0)  # 2 epochs of 5 steps (ICP acts from its second epoch)


def _feature_methods() -> list[str]:
    from dipnet.methods import METHODS

    return [n for n in METHODS.names() if METHODS.get(n).__module__.startswith("dipnet.")
            and "features" in METHODS.get(n).inputs]


def _classifier_data():
    from dipnet.data import Dataset, DatasetInfo

    g = torch.Generator().manual_seed(3)
    x = torch.randn(N_CLS + 16, 1, 8, generator=g).clamp(*BOUNDS)
    y = (x.flatten(1) @ torch.randn(8, 3, generator=g)).argmax(1)
    info = DatasetInfo("toy", (1, 8), 3, ("a", "b", "c"), BOUNDS)
    return Dataset(x[:N_CLS], y[:N_CLS], x[N_CLS:], y[N_CLS:], info)


def _net(info=None):
    torch.manual_seed(11)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(8, 12), torch.nn.ReLU(), torch.nn.Linear(12, 3))


class EpochBatches(torch.utils.data.IterableDataset):
    """The engine's batches of each epoch, in its order (HF's dataloader tells it the epoch)."""

    def __init__(self, per_epoch, rows: bool):
        self.per_epoch, self.rows, self.epoch = per_epoch, rows, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return len(self.per_epoch[self.epoch])

    def __iter__(self):
        for x, y in self.per_epoch[self.epoch]:
            yield {"x": x, "labels": y} if self.rows else (x, y)


@pytest.mark.parametrize("method", _feature_methods())
def test_every_method_steps_the_same_in_the_engine_hf_and_lightning(method, tmp_path):
    """The engine's loop, HF's MethodTrainer and Lightning's MethodModule: the same weights after
    2 epochs of 5 steps (1e-6) for every registered method that applies to continuous inputs."""
    import lightning.pytorch as pl
    from transformers import TrainerCallback, TrainingArguments

    from dipnet.engine import TrainConfig, Trainer
    from dipnet.integrations.hf_trainer import MethodTrainer
    from dipnet.integrations.lightning import MethodModule

    data, params = _classifier_data(), ({"icp.warmup": 0.0} if method == "icp" else {})
    cfg = TrainConfig(method=method, method_params=params, optimizer="adamw", lr=1e-2, schedule="constant",
                      epochs=EPOCHS, batch_size=B_CLS, seed=0, progress="none")
    engine = Trainer(cfg, dataset=data, model=_net, callbacks=[SeedEachStep()])
    steps = engine.task.period_steps
    per_epoch = [[engine.task.batch(engine.task.indices(e * steps + i)) for i in range(steps)] for e in range(EPOCHS)]
    engine.fit()
    want = {n: p.detach().clone() for n, p in engine.model.named_parameters()}

    class Seed(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            torch.manual_seed(NOISE_SEED + state.global_step)

    args = TrainingArguments(output_dir=str(tmp_path / "hf"), per_device_train_batch_size=1, num_train_epochs=EPOCHS,
                             learning_rate=1e-2, lr_scheduler_type="constant", weight_decay=0.0, max_grad_norm=0.0,
                             optim="adamw_torch", report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True,
                             remove_unused_columns=False, seed=0)
    hf = MethodTrainer(model=_net(), args=args, train_dataset=EpochBatches(per_epoch, rows=True), method=method,
                       method_params=params, bounds=BOUNDS, data_collator=lambda items: items[0], callbacks=[Seed()])
    hf.train()

    class SeedPl(pl.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            torch.manual_seed(NOISE_SEED + trainer.global_step)

    class EpochData(pl.LightningDataModule):
        def train_dataloader(self):
            return torch.utils.data.DataLoader(per_epoch[self.trainer.current_epoch], batch_size=None)

    module = MethodModule(_net(), method, params, lr=1e-2, bounds=BOUNDS)
    trainer = pl.Trainer(max_epochs=EPOCHS, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, reload_dataloaders_every_n_epochs=1,
                         callbacks=[SeedPl()])
    trainer.fit(module, datamodule=EpochData())
    assert hf.state.global_step == trainer.global_step == EPOCHS * steps
    for name, model in (("hf", hf.model), ("lightning", module.model)):
        got = dict(model.named_parameters())
        assert got.keys() == want.keys(), name
        for n in want:
            torch.testing.assert_close(got[n].detach(), want[n], atol=1e-6, rtol=0, msg=f"{name} {method}: {n}")
    assert any(not torch.equal(p, q) for p, q in zip(want.values(), _net().parameters()))  # trained
