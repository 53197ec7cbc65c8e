"""The Hugging Face user's path: the stock ``Trainer`` + peft LoRA + ``DIPNetCallback`` on the real
SmolLM2-135M weights (trains; afterwards two greedy generations agree and leave DIPNet's state
alone), importing and loading change no environment variable and download nothing, ``dipnet
finetune``'s output loads with ``PeftModel.from_pretrained`` to the same logits, the learned
sigmas survive ``save_model`` bit for bit, pickle weights are refused unread, and ``finetune
--help`` lists the tasks."""
from __future__ import annotations

import logging
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
peft = pytest.importorskip("peft")
pytest.importorskip("reasoning_gym")

from transformers import Trainer, TrainingArguments  # noqa: E402

from dipnet.cli import main  # noqa: E402
from dipnet.errors import ConfigError, DataError  # noqa: E402
from dipnet.integrations.hf import DIPNetCallback, load_sigmas  # noqa: E402
from dipnet.llm import FinetuneConfig, collate, encode, finetune, load_adapters, load_llm, load_task  # noqa: E402
from dipnet.llm.adapters import ADAPTER_CONFIG, ADAPTER_WEIGHTS, SIGMAS_FILE, sigma_state  # noqa: E402
from dipnet.projection import LLM_SIGMA, project, projections  # noqa: E402

CHAIN = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}
SRC = str(Path(__file__).resolve().parents[1] / "src")


def _args(tmp_path: Path, steps: int, batch: int = 2) -> TrainingArguments:
    return TrainingArguments(output_dir=str(tmp_path / "hf"), per_device_train_batch_size=batch, max_steps=steps,
                             learning_rate=1e-2, report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True,
                             seed=5, logging_steps=1)


def _rows(tok, n: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    task = load_task("chain_sum", n, 1, 1, seed=seed, options=CHAIN)
    ex = encode(tok, task.train, system=None, worked_solution=False, context=256, new_tokens=4)
    batch, labels = collate(ex, tok.pad_token_id)
    return [{**{k: v[i] for k, v in batch.items()}, "labels": labels[i]} for i in range(n)]


def _lora(model, targets=("q_proj", "v_proj")):
    torch.manual_seed(0)
    with warnings.catch_warnings():  # peft asks transformers a deprecated question (is_gradient_checkpointing)
        warnings.simplefilter("ignore", FutureWarning)
        return peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=list(targets),
                                                          task_type="CAUSAL_LM"))


# ---------------------------------------------------------------- SmolLM2, stock Trainer


def test_smollm2_trains_under_the_stock_trainer_and_then_generates_deterministically(tmp_path, capfd, caplog,
                                                                                      monkeypatch):
    pytest.importorskip("gguf")
    from dipnet.llm import models, smollm2_folder
    from transformers.utils import logging as hf_logging

    try:
        smollm2_folder()
    except ConfigError as exc:
        pytest.skip(str(exc))
    monkeypatch.setattr(models, "_CACHE", {})  # a real load (its output checked), kept from later tests
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a busy 2-core machine one thread is several times faster than two
    try:
        bars = hf_logging.is_progress_bar_enabled()
        model, tok = load_llm("smollm2-135m")
        err = capfd.readouterr().err
        assert "GGUF tensors" not in err and "Loading weights" not in err  # no progress bars ...
        assert hf_logging.is_progress_bar_enabled() == bars  # ... and the setting left as it was
        assert not getattr(model, "is_quantized", False) and getattr(model, "hf_quantizer", None) is None
        model = _lora(model)
        lora_b = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}
        trainer = Trainer(model=model, args=_args(tmp_path, steps=3), train_dataset=_rows(tok, 6),
                          callbacks=[DIPNetCallback()])
        with caplog.at_level(logging.WARNING, logger="dipnet.integrations.hf"):
            trainer.train()
        assert trainer.state.global_step == 3 and len(projections(model)) == 60
        assert all(not torch.equal(p, lora_b[n]) for n, p in model.named_parameters() if n in lora_b)
        assert any(not torch.allclose(p.log_sigma, torch.tensor(LLM_SIGMA).log()) for _, p in projections(model))
        said = [r.getMessage() for r in caplog.records if r.name == "dipnet.integrations.hf"]
        assert len(said) == 1 and "eval mode" in said[0] and "\n" not in said[0]
        assert not model.training and not any(p.training or p.sample_in_eval for _, p in projections(model))
        before = {n: t.clone() for n, t in sigma_state(model).items()}
        ids = tok.apply_chat_template([{"role": "user", "content": "What is 2 + 3?"}], add_generation_prompt=True,
                                      return_tensors="pt", return_dict=True)["input_ids"]
        with torch.no_grad():
            first, second = (model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=6,
                                            do_sample=False, pad_token_id=tok.pad_token_id) for _ in range(2))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(first, second)
    after = sigma_state(model)
    assert before.keys() == after.keys() and all(torch.equal(before[n], after[n]) for n in before)
    assert any(n.endswith("running_rms") for n in before)


# ---------------------------------------------------------------- no process-wide state, no download


OFFLINE = """
import os, sys
from pathlib import Path
before = dict(os.environ)
import dipnet.integrations.hf
assert "HF_HUB_OFFLINE" not in os.environ and dict(os.environ) == before, set(os.environ) ^ set(before)
from dipnet.llm import load_llm
from transformers.utils import logging as hf_logging
import transformers.modeling_gguf_pytorch_utils as reader
bar = reader.tqdm
model, tok = load_llm("tiny-llama")
model.save_pretrained(sys.argv[1])
tok.save_pretrained(sys.argv[1])
loaded, _ = load_llm(sys.argv[1])  # a local folder, through from_pretrained, with the Hub unreachable
assert loaded.config.hidden_size == 64
assert dict(os.environ) == before and reader.tqdm is bar and hf_logging.is_progress_bar_enabled()
assert hf_logging.set_tqdm_hook(None) is None  # no hook left behind
print("ok")
"""


def test_importing_and_loading_change_no_environment_and_never_reach_the_hub(tmp_path):
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env.update({"PYTHONPATH": SRC, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf-home")})
    run = subprocess.run([sys.executable, "-c", OFFLINE, str(tmp_path / "tiny")], env=env, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-2000:]
    assert not (tmp_path / "hf-home" / "hub").exists()  # nothing fetched into a cache


# ---------------------------------------------------------------- adapters and sigmas


def test_peft_loads_dipnet_finetunes_output_to_the_same_logits_and_sigmas(tmp_path):
    out = tmp_path / "run"
    cfg = FinetuneConfig(model="tiny-llama", task="chain_sum", task_kwargs=CHAIN, method="dipnet", steps=3,
                         train_size=12, val_size=2, test_size=2, batch_size=4, lr=1e-2, log_every=3,
                         max_new_tokens=2, progress="none", out=str(out))
    trained = finetune(cfg).model
    assert {ADAPTER_CONFIG, ADAPTER_WEIGHTS, SIGMAS_FILE} <= {p.name for p in out.iterdir()}
    assert not (out / "adapters.safetensors").exists()
    base, tok = load_llm("tiny-llama")
    loaded = peft.PeftModel.from_pretrained(base, str(out))
    project(loaded, targets="decoder")  # dipnet finetune's placement and sigma (LLM_METHOD_DEFAULTS)
    load_sigmas(loaded, out)
    saved, restored = sigma_state(trained), sigma_state(loaded)
    assert saved.keys() == restored.keys() and all(torch.equal(saved[n], restored[n]) for n in saved)
    assert any(not torch.allclose(t, torch.tensor(LLM_SIGMA).log()) for n, t in saved.items() if "log_sigma" in n)
    batch = collate(encode(tok, load_task("chain_sum", 1, 1, 4, options=CHAIN).test, system=None,
                           worked_solution=False, context=256, new_tokens=4), tok.pad_token_id)[0]
    trained.eval(), loaded.eval()
    with torch.no_grad():
        expected, got = trained(**batch).logits, loaded(**batch).logits
        with loaded.disable_adapter():
            plain = loaded(**batch).logits
    assert torch.allclose(got, expected, atol=1e-6, rtol=0)
    assert not torch.allclose(plain, expected, atol=1e-3)  # the adapters matter to the logits compared
    blob = bytearray((out / ADAPTER_WEIGHTS).read_bytes())
    blob[-1] ^= 0xFF  # one flipped bit of a tensor
    (out / ADAPTER_WEIGHTS).write_bytes(bytes(blob))
    with pytest.raises(DataError, match="corrupted"):
        load_adapters(loaded, out)


def test_sigmas_survive_save_model_and_reload_exactly(tmp_path):
    model, tok = load_llm("tiny-llama")
    model = _lora(model)
    trainer = Trainer(model=model, args=_args(tmp_path, steps=2, batch=4), train_dataset=_rows(tok, 8),
                      callbacks=[DIPNetCallback()])
    trainer.train()
    trainer.save_model(str(tmp_path / "saved"))
    model.save_pretrained(str(tmp_path / "direct"))
    trained = sigma_state(model)
    assert any(not torch.allclose(t, torch.tensor(LLM_SIGMA).log()) for n, t in trained.items() if "log_sigma" in n)
    for folder in ("saved", "direct"):
        base, _ = load_llm("tiny-llama")
        loaded = peft.PeftModel.from_pretrained(base, str(tmp_path / folder))
        project(loaded, targets="decoder")  # the callback's default placement
        load_sigmas(loaded, tmp_path / folder)
        got = sigma_state(loaded)
        assert got.keys() == trained.keys() and all(torch.equal(got[n], trained[n]) for n in trained)
    # projected before LoRA (the base model's names) reads the same file
    base, _ = load_llm("tiny-llama")
    project(base, targets="decoder")
    assert torch.equal(sigma_state(load_sigmas(base, tmp_path / "saved"))["model.layers.1.mlp.log_sigma"],
                       trained["model.layers.1.mlp.log_sigma"])
    # the Trainer's resume path, model.load_adapter, reads them too
    fresh, _ = load_llm("tiny-llama")
    fresh = _lora(fresh)
    Trainer(model=fresh, args=_args(tmp_path, steps=1), train_dataset=_rows(tok, 2), callbacks=[DIPNetCallback()])
    fresh.load_adapter(str(tmp_path / "saved"), "default", is_trainable=True)
    resumed = sigma_state(fresh)
    assert resumed.keys() == trained.keys() and all(torch.equal(resumed[n], trained[n]) for n in trained)
    # another placement, or a tensor of another shape: refused in one line
    other, _ = load_llm("tiny-llama")
    project(_lora(other), targets="lora")
    with pytest.raises(DataError, match=r"does not fit this model \(8 missing") as err:
        load_sigmas(other, tmp_path / "saved")
    assert "\n" not in str(err.value)
    from safetensors.torch import load_file, save_file

    state = load_file(str(tmp_path / "saved" / SIGMAS_FILE))
    state["model.layers.0.mlp.log_sigma"] = state["model.layers.0.mlp.log_sigma"][:3]
    save_file(state, str(tmp_path / "short.safetensors"))
    with pytest.raises(DataError, match="1 of another shape, e.g. model.layers.0.mlp.log_sigma"):
        load_sigmas(base, tmp_path / "short.safetensors")


# ---------------------------------------------------------------- bad input, help


class _Decoy:
    """Unpickling this creates the file it names: the marker of code run by a pickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def test_pickle_weights_are_refused_unread(tmp_path, capsys):
    folder, marker = tmp_path / "decoy", tmp_path / "unpickled"
    model, tok = load_llm("tiny-llama")
    model.config.save_pretrained(folder)
    tok.save_pretrained(folder)
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps({"model.embed_tokens.weight": _Decoy(marker)}))
    args = ["finetune", "--model", str(folder), "--task", "chain_sum", "--steps", "1", "--train-size", "4",
            "--val-size", "1", "--test-size", "1", "--progress", "none", "--out", str(tmp_path / "r")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pytorch_model.bin" in err and "only safetensors or GGUF" in err
    assert "weights_only" not in err and not marker.exists()
    with pytest.raises(ConfigError, match="only safetensors or GGUF"):
        load_llm(str(folder))


def test_finetune_help_lists_every_task_and_model(capsys):
    from reasoning_gym.factory import DATASETS

    from dipnet.llm import LLMS

    with pytest.raises(SystemExit):
        main(["finetune", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    listed = text.split("Tasks (")[1]
    assert all(f" {name}," in listed or f" {name}." in listed for name in DATASETS)
    assert all(name in text for name in LLMS.names())
