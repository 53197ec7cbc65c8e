"""Fine-tuning tasks from reasoning-gym, split into distinct questions, and their token batches.

reasoning-gym (Apache-2.0) generates problems offline: ``create_dataset(name, size, seed,
**config)``, item i of seed s built from ``Random(s + i)``. Seeds therefore overlap (the sets of
seeds 1 and 2 share almost every item) and a small problem space repeats questions even across
distant seeds, so the splits are made here by each question's *canonical key*
(:func:`canonical_key`: for a task whose terms commute, the multiset of its terms, so
"3 + 4 =" and "4 + 3 =" are one question; for any other task, its text): items are drawn in
order from one seed, every item whose key was seen dropped, the first distinct questions go to
the test split, the next to validation, the rest to training. Changing the training size leaves
the test set unchanged.

Each item becomes a chat prompt (the tokenizer's chat template, with an optional system
message) and an answer: reasoning-gym's answer, or with ``worked_solution`` the task's worked
solution ending in ``#### n`` (``gsm_symbolic``'s ``answer_cot``), followed by the end-of-turn
token. Labels are ``-100`` on the prompt, so the loss covers the answer tokens only. Batches are
left-padded with explicit position ids, which lets training ask for the logits of the answer
positions only (``logits_to_keep``) and generation continue every row from its last token.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from decimal import Decimal
from functools import partial
from typing import Any, Callable, Hashable, Sequence

import torch

from ..errors import ConfigError, DataError
from ..projection.hf import IGNORE_INDEX
from ..registry import Registry
from ..schema import check_field
from ._hf import require
from .config import FinetuneConfig

__all__ = ["REORDERABLE", "TASKS", "Example", "TaskData", "canonical_key", "collate", "encode", "extract_answer",
           "load_task"]

MAX_DRAW_FACTOR = 20  # draws allowed per distinct question wanted before the task counts as too small
TaskFactory = Callable[..., Any]  # (size=, seed=, **options) -> a reasoning-gym ProceduralDataset


def _reasoning_gym_tasks(registry: Registry[TaskFactory]) -> None:
    """Every dataset of reasoning-gym's factory, registered on the first use of :data:`TASKS`."""
    rg = require("reasoning_gym")
    from reasoning_gym.factory import DATASETS

    for name, (dataset_cls, _) in DATASETS.items():
        summary = (dataset_cls.__doc__ or "").strip().split("\n", 1)[0]
        registry.add(name, partial(rg.create_dataset, name), summary)


TASKS: Registry[TaskFactory] = Registry("reasoning-gym task", fill=_reasoning_gym_tasks)

_CHAIN = re.compile(r"-?\d+(?: [+-] -?\d+)*")  # chain_sum's expression: "15 - 43 + -7"
_PRODUCT = re.compile(r"-?\d+(?: \* -?\d+)*")  # products' expression: "12 * -5 * 3"


def _expression(item: dict[str, Any], form: re.Pattern[str], task: str) -> str:
    expression = str((item.get("metadata") or {}).get("expression", ""))
    if not form.fullmatch(expression):
        raise DataError(f"task {task!r} gave the expression {expression!r}, not of the form its canonical key "
                        f"reads ({form.pattern}); install the reasoning-gym version pyproject.toml names")
    return expression


def _signed_terms(item: dict[str, Any]) -> Hashable:
    """chain_sum: the multiset of signed terms ("a - b" is a + (-b)), so the sum's reorderings share it."""
    first, *rest = _expression(item, _CHAIN, "chain_sum").split(" ")
    terms = [int(first)] + [int(v) if op == "+" else -int(v) for op, v in zip(rest[::2], rest[1::2])]
    return tuple(sorted(terms))


def _factors(item: dict[str, Any]) -> Hashable:
    """products: the multiset of factors."""
    return tuple(sorted(int(v) for v in _expression(item, _PRODUCT, "products").split(" * ")))


# Tasks whose questions are the same up to reordering: the canonical key of their items.
REORDERABLE: dict[str, Callable[[dict[str, Any]], Hashable]] = {"chain_sum": _signed_terms, "products": _factors}


def canonical_key(task: str, item: dict[str, Any]) -> Hashable:
    """What makes two items of ``task`` the same question: for a task of :data:`REORDERABLE`, its
    terms as a multiset; for any other, the question text (exact)."""
    keyed = REORDERABLE.get(task)
    return keyed(item) if keyed else item["question"]


MAX_PREPARE_S = 60.0  # seconds to draw, or to tokenize, a task's questions: a larger request is refused
PROBE = 64  # items timed before the time of the rest is estimated


def _check_time(elapsed: float, done: int, total: float, what: str, fix: str) -> None:
    """ConfigError when ``total`` items at the rate of the first ``done`` would take over :data:`MAX_PREPARE_S`."""
    estimate = elapsed / done * total
    if estimate > MAX_PREPARE_S:
        raise ConfigError(f"{what} would take about {estimate:,.0f} s on this machine ({1e3 * elapsed / done:.2f} ms "
                          f"each, timed on the first {done}), more than {MAX_PREPARE_S:g} s; {fix}")


@dataclass
class TaskData:
    """The splits of a task (items are reasoning-gym entries) and the generator that scores them."""

    name: str
    dataset: Any
    train: list[dict[str, Any]]
    val: list[dict[str, Any]]
    test: list[dict[str, Any]]
    draws: int = 0

    def score(self, answer: str | None, item: dict[str, Any]) -> float:
        """1.0 when the final answer is right. A numeric oracle is compared as a number, strictly
        (:func:`numeric_score`: reasoning-gym's own scorer strips any comma and tolerates the
        sign, so "1,9" would score 19 and "-19" would score 19); other answers go to
        reasoning-gym's scorer."""
        oracle = str(item.get("answer", ""))
        if _NUMBER.fullmatch(oracle.strip()):
            return numeric_score(answer, oracle)
        return float(self.dataset.score_answer(answer, item))


def load_task(name: str, train: int, val: int, test: int, *, seed: int = 0,
              options: dict[str, Any] | None = None) -> TaskData:
    """Draw ``test + val + train`` distinct questions (distinct :func:`canonical_key`) of
    reasoning-gym task ``name`` from ``seed``, in that order; a request whose drawing would take
    over :data:`MAX_PREPARE_S` (estimated from the first draws and their share of repeats) is
    refused before the rest are drawn."""
    if not isinstance(name, str) or not name.strip():
        raise ConfigError("the task is empty; name a reasoning-gym dataset such as chain_sum or gsm_symbolic")
    factory = TASKS.get(name)
    train, val, test = (check_field(FinetuneConfig, f"{k}_size", v, f"load_task's {k}")
                        for k, v in (("train", train), ("val", val), ("test", test)))
    wanted = train + val + test
    limit = MAX_DRAW_FACTOR * wanted
    try:
        dataset = factory(size=limit, seed=seed, **(options or {}))
    except (TypeError, ValueError, AssertionError) as exc:
        raise ConfigError(f"task {name!r} refuses its options {options or {}}: {exc}") from None
    seen: set[Hashable] = set()
    items: list[dict[str, Any]] = []
    draws, start = 0, time.perf_counter()
    while len(items) < wanted and draws < limit:
        if draws == PROBE and items:
            _check_time(time.perf_counter() - start, draws, min(limit, draws * wanted / len(items)),
                        f"drawing {wanted:,} distinct questions of task {name!r} (train {train} + val {val} + test {test})",
                        "ask for fewer questions")
        item = dataset[draws]
        draws += 1
        question = item.get("question")
        if not isinstance(question, str) or not question.strip():
            continue
        key = canonical_key(name, item)
        if key in seen:
            continue
        seen.add(key)
        items.append(item)
    if not items:
        raise DataError(f"task {name!r} with options {options or {}} produced no questions; it is empty")
    if len(items) < wanted:
        distinct = "distinct questions (up to reordering of terms)" if name in REORDERABLE else "distinct questions"
        raise DataError(
            f"task {name!r} gave only {len(items)} {distinct} in {draws} draws, fewer than the "
            f"{wanted} asked (train {train} + val {val} + test {test}); ask fewer or widen the task's options"
        )
    return TaskData(name, dataset, items[test + val:], items[test:test + val], items[:test], draws)


# A plain number; one with thousands separators (1,234,567); what a final answer is introduced by.
_NUMBER = re.compile(r"[+-]?\d+(?:\.\d+)?")
_GROUPED = re.compile(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
_STATED = re.compile(r"(?i)\b(?:final answer|answer)\s*(?:is|:|=)\s*:?\s*(.+)")
_WRAPPERS = "*$`_ "


def extract_answer(text: str) -> str:
    """The final answer of a completion, from the formats models use: after the last ``####`` (a
    worked solution), in the last ``\\boxed{...}``, after "answer is"/"Answer:"/"Final answer:",
    else the first non-empty line; then without Markdown bold, ``$...$``, backticks, a trailing
    period, and a leading ``x =``."""
    if "####" in text:
        found = text.rsplit("####", 1)[1]
    elif boxed := _BOXED.findall(text):
        found = boxed[-1]
    elif stated := _STATED.findall(text):
        found = stated[-1]
    else:
        found = next((line for line in text.splitlines() if line.strip()), "")
    found = found.strip().split("\n", 1)[0].strip().strip(_WRAPPERS).rstrip(".").strip(_WRAPPERS)
    if "=" in found:
        found = found.rsplit("=", 1)[1].strip().strip(_WRAPPERS)
    return found


def numeric_score(answer: str | None, oracle: str) -> float:
    """1.0 when ``answer`` is a well-formed number (commas only as thousands separators) equal to
    ``oracle``, else 0.0: "1,9" is not 19, "-19" is not 19, "19.0" and "1,900" are numbers."""
    text = (answer or "").strip()
    if not (_NUMBER.fullmatch(text) or _GROUPED.fullmatch(text)):
        return 0.0
    return 1.0 if Decimal(text.replace(",", "")) == Decimal(oracle.strip()) else 0.0


def target_text(item: dict[str, Any], worked_solution: bool) -> str:
    if worked_solution:
        cot = (item.get("metadata") or {}).get("answer_cot")
        if isinstance(cot, str) and "####" in cot:
            return cot
    return str(item["answer"])


@dataclass
class Example:
    prompt: list[int]
    answer: list[int]
    item: dict[str, Any] = field(repr=False, default_factory=dict)


def _prompt_text(tokenizer: Any, question: str, system: str | None) -> str:
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return (f"{system}\n" if system else "") + f"Question: {question}\nAnswer: "


def encode(tokenizer: Any, items: Sequence[dict[str, Any]], *, system: str | None, worked_solution: bool,
           context: int, new_tokens: int, task: str = "task") -> list[Example]:
    """Token ids of each item's prompt and answer (+ end-of-turn). An item whose prompt and answer,
    or whose prompt and ``new_tokens`` generated tokens, do not fit ``context`` is an error, and so
    is a list whose tokenizing would take over :data:`MAX_PREPARE_S` (estimated from the first items)."""
    eos = tokenizer.eos_token_id
    out = []
    start = time.perf_counter()
    for i, item in enumerate(items):
        if i == PROBE:
            _check_time(time.perf_counter() - start, i, len(items), f"{task}: tokenizing {len(items):,} questions",
                        "ask for fewer questions")
        prompt = tokenizer(_prompt_text(tokenizer, item["question"], system), add_special_tokens=False).input_ids
        answer = tokenizer(target_text(item, worked_solution), add_special_tokens=False).input_ids + [eos]
        need = len(prompt) + max(len(answer), new_tokens)
        if need > context:
            raise ConfigError(
                f"{task}: question {i} needs {need} tokens (prompt {len(prompt)} + answer {len(answer)} or "
                f"{new_tokens} new) but the model's context is {context}; shorten the task or use a longer-context model"
            )
        out.append(Example(prompt, answer, item))
    return out


def collate(examples: Sequence[Example], pad_id: int, *, with_answer: bool = True) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """A left-padded batch: ``({input_ids, attention_mask, position_ids}, labels)``; the labels
    are -100 except on answer tokens. Without the answer, the prompts alone (for generation)."""
    seqs = [e.prompt + e.answer if with_answer else e.prompt for e in examples]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    labels = torch.full((len(seqs), width), IGNORE_INDEX, dtype=torch.long)
    for row, (e, s) in enumerate(zip(examples, seqs)):
        ids[row, width - len(s):] = torch.tensor(s)
        mask[row, width - len(s):] = 1
        if with_answer:
            labels[row, width - len(e.answer):] = torch.tensor(e.answer)
    positions = (mask.cumsum(1) - 1).clamp_(min=0)
    return {"input_ids": ids, "attention_mask": mask, "position_ids": positions}, labels


def answer_width(examples: Sequence[Example]) -> int:
    """Logits to keep for a left-padded batch: the longest answer, plus the position before it."""
    return max(len(e.answer) for e in examples) + 1
