"""LLM evidence: test questions disjoint from training ones up to reordering (checked by an
oracle that reads the question text with Python's own parser), refusal of a task too small for
the sizes asked (its distinct questions counted by brute force), the LLM prior's calibration
drawn from training questions only, a fine-tuning suite's table as a generated fragment, and the
study suite's regime and fixed-sigma arm."""
from __future__ import annotations

import ast
import json
import sys
import importlib.util
from collections import Counter
from pathlib import Path

import pytest
import torch

pytest.importorskip("reasoning_gym")

from dipnet.errors import DataError  # noqa: E402
from dipnet.experiments.suite import load_suite  # noqa: E402
from dipnet.llm import FinetuneConfig, FinetuneSuite, load_task  # noqa: E402
from dipnet.llm.tasks import canonical_key  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def signed_terms(node: ast.expr, sign: int = 1) -> Counter[int]:
    """The terms of a sum/difference tree, each with its sign (a - b is a + (-b))."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub)):
        return signed_terms(node.left, sign) + signed_terms(node.right, sign if isinstance(node.op, ast.Add) else -sign)
    value = ast.literal_eval(node)
    return Counter({sign * value: 1})


def factors(node: ast.expr) -> Counter[int]:
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
        return factors(node.left) + factors(node.right)
    return Counter({ast.literal_eval(node): 1})


def chain_oracle(item: dict) -> frozenset:
    """chain_sum's question "...problem: 15 - 43 + -7 =" as the multiset of its signed terms."""
    text = item["question"].rsplit(":", 1)[1].strip().removesuffix("=")
    return frozenset(signed_terms(ast.parse(text.strip(), mode="eval").body).items())


def product_oracle(item: dict) -> frozenset:
    text = item["question"].split(":", 1)[1].split(". Give", 1)[0].strip()
    return frozenset(factors(ast.parse(text, mode="eval").body).items())


@pytest.mark.parametrize("task, options, oracle", [
    ("chain_sum", {"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 1}, chain_oracle),
    ("chain_sum", {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1, "allow_negation": True}, chain_oracle),
    ("products", {"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 1}, product_oracle),
])
def test_test_questions_differ_from_training_ones_up_to_reordering(task, options, oracle):
    data = load_task(task, 60, 20, 40, seed=3, options=options)
    assert (len(data.train), len(data.val), len(data.test)) == (60, 20, 40)
    keys = [[oracle(i) for i in split] for split in (data.train, data.val, data.test)]
    everything = [k for split in keys for k in split]
    assert len(set(everything)) == len(everything)  # no two items anywhere are reorderings of each other
    # the draw held reorderings (different texts, one question), so the check above is not vacuous
    drawn = [data.dataset[i] for i in range(data.draws)]
    by_key: dict[frozenset, set[str]] = {}
    for item in drawn:
        by_key.setdefault(oracle(item), set()).add(item["question"])
    assert any(len(texts) > 1 for texts in by_key.values())


def test_a_task_with_too_few_distinct_questions_up_to_reordering_is_refused():
    options = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}
    # every question the task can ask: a +/- b with one-digit a, b, as signed-term multisets
    classes = {frozenset(Counter([a, b if op == "+" else -b]).items()) for a in range(10) for b in range(10) for op in "+-"}
    assert len(classes) < 200  # fewer than the 200 distinct texts
    data = load_task("chain_sum", len(classes) - 2, 1, 1, seed=0, options=options)
    assert {chain_oracle(i) for i in data.train + data.val + data.test} == classes
    with pytest.raises(DataError, match=r"only \d+ distinct questions \(up to reordering of terms\).*ask fewer"):
        load_task("chain_sum", len(classes) - 1, 1, 1, seed=0, options=options)


def test_a_task_without_reorderings_is_split_by_exact_text():
    data = load_task("basic_arithmetic", 30, 5, 10, seed=0)
    texts = [i["question"] for i in data.train + data.val + data.test]
    assert len(set(texts)) == len(texts) == 45
    assert all(canonical_key("basic_arithmetic", i) == i["question"] for i in data.test)


def test_a_changed_expression_format_is_one_clear_error():
    with pytest.raises(DataError, match="install the reasoning-gym version"):
        canonical_key("chain_sum", {"question": "x", "metadata": {"expression": "3 plus 4"}})


# ---------------------------------------------------------------- the LLM prior's calibration


def _llm_prior():
    spec = importlib.util.spec_from_file_location("llm_prior", ROOT / "docs" / "llm_prior.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_prior_is_calibrated_on_training_questions_only():
    prior = _llm_prior()
    calibration = prior.calibration_items(prior.BATCHES * prior.BATCH)
    assert len(calibration) == prior.BATCHES * prior.BATCH
    mine = {chain_oracle(i) for i in calibration}
    checked = []
    for path in sorted([*(ROOT / "src" / "dipnet" / "suites").glob("*.toml"), *(ROOT / "suites").glob("*.toml")]):
        suite = load_suite(path, max_runs=100_000)
        if not isinstance(suite, FinetuneSuite):
            continue
        for task in suite.tasks:
            cfg = FinetuneConfig.from_dict(suite.task_config(task, suite.methods[0]))
            data = load_task(cfg.task, cfg.train_size, cfg.val_size, cfg.test_size, seed=cfg.data_seed,
                             options=cfg.task_kwargs)
            if cfg.task == "chain_sum":
                assert not mine & {chain_oracle(i) for i in data.val + data.test}, f"{path.name}: held-out questions"
            else:
                assert not {i["question"] for i in calibration} & {i["question"] for i in data.val + data.test}
            checked.append(suite.name)
    assert {"llm", "llm-study"} <= set(checked)


def _claims():
    sys.path.insert(0, str(ROOT / "research"))
    import claims

    return claims


def test_the_prior_rule_by_hand_and_the_library_prior_follows_the_stored_calibration():
    claims = _claims()
    record = {"clean_loss": 2.0, "rows": [{"sigma": 0.01, "loss": 2.0, "grad_median_abs": 1e-5},
                                          {"sigma": 0.02, "loss": 2.1, "grad_median_abs": 3e-5},  # +5.0%: kept
                                          {"sigma": 0.04, "loss": 2.102, "grad_median_abs": 9e-5},  # +5.1%
                                          {"sigma": 0.08, "loss": 1.9, "grad_median_abs": 2e-4}]}  # past a rise: still in
    sigma, median, alpha, beta = claims.prior_rule(record)
    assert (sigma, median) == (0.08, 2e-4) and beta == pytest.approx(1e-4) and alpha == pytest.approx(1e-4 / 0.08**2)
    record["rows"] = record["rows"][:3]
    assert claims.prior_rule(record)[:2] == (0.02, 3e-5)
    with pytest.raises(DataError, match="within 5%"):
        claims.prior_rule({"clean_loss": 1.0, "rows": [{"sigma": 0.1, "loss": 2.0, "grad_median_abs": 1.0}]})

    from dipnet.projection.hf import LLM_PRIOR, LLM_SIGMA

    stored = json.loads((ROOT / claims.CALIBRATION).read_text())
    sigma, *_ = claims.prior_rule(stored)
    assert (LLM_PRIOR[1] / LLM_PRIOR[0]) ** 0.5 == pytest.approx(sigma) == LLM_SIGMA  # the minimum the rule gives
    assert [r["sigma"] for r in stored["rows"]] == sorted(r["sigma"] for r in stored["rows"])
    assert stored["questions"] == 32 and stored["model"] == "smollm2-135m"


def test_every_table_of_docs_llm_is_generated():
    """docs/llm.md holds no hand-typed result table: every Markdown table row outside code blocks
    lies inside a generated fragment."""
    lines = (ROOT / "docs" / "llm.md").read_text(encoding="utf-8").splitlines()
    inside = code = False
    typed = []
    for n, line in enumerate(lines, 1):
        if line.startswith("```"):
            code = not code
        elif line.startswith("<!-- dipnet:begin"):
            inside = True
        elif line.startswith("<!-- dipnet:end"):
            inside = False
        elif line.startswith("|") and not inside and not code:
            typed.append(n)
    assert not typed, f"docs/llm.md lines {typed}: a table outside a generated fragment"


# ---------------------------------------------------------------- LLM suites as evidence


TINY_SUITE = """
kind = "finetune"
name = "tinyft"
seeds = [0, 1]
baseline = "sft"
[train]
model = "tiny-llama"
steps = 2
train_size = 12
val_size = 2
test_size = 4
[tasks.sums]
task = "chain_sum"
task_kwargs = { min_terms = 2, max_terms = 2 }
[methods.sft]
[methods.dipnet]
"""


def test_a_finetune_suite_exports_and_renders_its_table_as_a_fragment(tmp_path):
    sys.path.insert(0, str(ROOT / "research"))
    from evidence import FINETUNE_NOTE, check, export_path, export_suite

    from dipnet.experiments import parse_suite, run_suite

    store = tmp_path / "s.sqlite"
    assert run_suite(parse_suite(TINY_SUITE, "tinyft.toml"), store).done == 4
    root = tmp_path / "repo"
    (root / "docs").mkdir(parents=True)
    doc = root / "docs" / "llm.md"
    marker = "<!-- dipnet:begin table suite=tinyft task=sums{} -->\n"
    doc.write_text("x\n" + marker.format(" pending=rerun") + "<!-- dipnet:end -->\n")
    assert check(root, write=True) and check(root) == []  # pending: one line, no export needed
    assert "Pending (rerun)" in doc.read_text()
    export_suite(store, "tinyft", export_path(root, "tinyft"))
    assert any("remove pending=" in p for p in check(root))  # exported: the marker must be updated
    doc.write_text("x\n" + marker.format("") + "<!-- dipnet:end -->\n")
    assert check(root, write=True) and check(root) == []
    text = doc.read_text()
    # the exact match each run wrote in its own run directory, averaged over seeds
    finals: dict[str, list[float]] = {}
    for path in (tmp_path / "s.sqlite.d").rglob("run.json"):
        record = json.loads(path.read_text())
        finals.setdefault(record["config"]["method"], []).append(record["final"]["test_acc"])
    assert sorted(len(v) for v in finals.values()) == [2, 2]
    for method, values in finals.items():
        assert f"| {method} | 2 | {100 * sum(values) / 2:.2f} ± " in text
    assert FINETUNE_NOTE in text and "tinyft / sums (chain_sum, tiny-llama;" in text


def test_the_study_suite_is_in_the_papers_regime_and_its_fixed_sigma_arm_is_dipnets_placement():
    from dipnet.llm import load_llm, prepare_model
    from dipnet.llm.runner import llm_method
    from dipnet.projection import projections

    suite = load_suite(ROOT / "suites" / "llm-study.toml")
    specs = suite.expand()
    assert len(specs) == 12 and suite.seeds == [0, 1, 2] and suite.baseline == "sft"
    assert {s.config["method"] for s in specs} == {"sft", "dipnet", "neftune", "noise-layers"}
    for s in specs:
        c = s.config
        assert c["train_size"] >= 1000 and c["steps"] * c["batch_size"] >= c["train_size"] and c["test_size"] >= 500
    placed = {}
    for method in ("dipnet", "noise-layers"):
        cfg = FinetuneConfig(model="tiny-llama", method=method)
        model = prepare_model(load_llm("tiny-llama")[0], cfg, llm_method(cfg))
        placed[method] = {name: (p.scale, p.log_sigma.detach().exp(), p.log_sigma.requires_grad)
                          for name, p in projections(model)}
    assert placed["dipnet"].keys() == placed["noise-layers"].keys() and len(placed["dipnet"]) == 4  # 2 layers x 2 sub-blocks
    for name, (scale, sigma, learned) in placed["noise-layers"].items():
        assert scale == placed["dipnet"][name][0] == "relative" and not learned and placed["dipnet"][name][2]
        assert torch.equal(sigma, placed["dipnet"][name][1])
