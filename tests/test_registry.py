"""One registry pattern: datasets, models, methods, suite instruments, suite kinds, language models
and fine-tuning tasks list sorted, get what their public decorator registered, refuse a second
registration of a name, filter by predicate and tag, and give one error shape for an unknown name,
also where the library looks the name up (load_dataset, build_model, a suite file, ...)."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

import pytest

from dipnet.data import DATASETS, DatasetInfo, load_dataset, register_dataset
from dipnet.errors import ConfigError
from dipnet.experiments import INSTRUMENTS, SUITE_KINDS, parse_suite, register_measure, register_suite_kind
from dipnet.llm import LLMS, TASKS, load_llm, load_task, register_llm
from dipnet.methods import METHODS, Component, build_method, register_component
from dipnet.models import MODELS, build_model, register_model
from dipnet.registry import Registry

INFO = DatasetInfo("probe", (4,), 2, ("a", "b"), None)
UNKNOWN = re.compile(r"unknown (?P<kind>[a-z -]+) '(?P<name>[^']+)'; choose one of: (?P<names>.+)")


def _component(name: str) -> type:
    return dataclass(type(f"C_{name.replace('-', '_')}", (Component,), {"name": name, "description": "test only"}))


@dataclass
class Case:
    """A registry, its public way to register ``value`` under a name (returning the value), what its
    ``get`` returns for that value, and a library call that looks a name up."""

    registry: Registry[Any]
    kind: str
    register: Callable[[str, Any], Any]
    value: Callable[[str], Any]
    got: Callable[[Any], Any]
    lookup: Callable[[str], Any]


CASES = {
    "datasets": Case(DATASETS, "dataset", lambda n, v: register_dataset(n, "test only")(v),
                     lambda n: (lambda: None), lambda e: e, load_dataset),
    "models": Case(MODELS, "model", lambda n, v: register_model(n, "test only", {"lr": 0.5})(v),
                   lambda n: (lambda info: None), lambda e: e.builder, lambda n: build_model(n, INFO)),
    "methods": Case(METHODS, "method", lambda n, v: register_component(v), _component, lambda e: e, build_method),
    "instruments": Case(INSTRUMENTS, "instrument", lambda n, v: register_measure(n, "test only")(v),
                        lambda n: (lambda result, spec: {}), lambda e: e,
                        lambda n: parse_suite(f'measure = ["{n}"]\n', "s.toml")),
    "suite kinds": Case(SUITE_KINDS, "suite kind", lambda n, v: register_suite_kind(n, v, "test only"),
                        lambda n: (lambda raw, text, source, check: None), lambda e: e,
                        lambda n: parse_suite(f'kind = "{n}"\n', "s.toml")),
    "language models": Case(LLMS, "language model", lambda n, v: register_llm(n, "test only")(v),
                            lambda n: (lambda dtype: None), lambda e: e, load_llm),
    "tasks": Case(TASKS, "reasoning-gym task", lambda n, v: TASKS.register(n, "test only")(v),
                  lambda n: (lambda size, seed: None), lambda e: e, lambda n: load_task(n, 1, 1, 1)),
}


@pytest.fixture(params=list(CASES))
def case(request):
    if request.param == "tasks":
        pytest.importorskip("reasoning_gym")
    case = CASES[request.param]
    yield case
    for name in ("aaa-registry-test", "zzz-registry-test"):
        if name in case.registry:
            case.registry.remove(name)


def test_every_registry_lists_sorted_and_gets_what_its_decorator_registered(case):
    before = case.registry.names()
    first, last = case.value("aaa-registry-test"), case.value("zzz-registry-test")
    assert case.register("zzz-registry-test", last) is last
    assert case.register("aaa-registry-test", first) is first
    names = case.registry.names()
    assert names == sorted(before + ["aaa-registry-test", "zzz-registry-test"])
    assert list(case.registry.list()) == names and case.registry.list()["aaa-registry-test"] == "test only"
    assert case.got(case.registry.get("aaa-registry-test")) is first
    assert case.got(case.registry.get("zzz-registry-test")) is last
    assert case.got(case.registry.remove("zzz-registry-test")) is last
    assert "zzz-registry-test" not in case.registry and case.registry.names() == sorted(before + ["aaa-registry-test"])


def test_every_registry_refuses_a_second_registration_of_a_name(case):
    first = case.value("aaa-registry-test")
    case.register("aaa-registry-test", first)
    with pytest.raises(ConfigError, match=f"^{case.kind} 'aaa-registry-test' is already registered; "):
        case.register("aaa-registry-test", case.value("aaa-registry-test"))
    assert case.got(case.registry.get("aaa-registry-test")) is first


def test_every_registry_filters_by_predicate_and_tag(case):
    case.register("aaa-registry-test", case.value("aaa-registry-test"))
    mine = case.registry.get("aaa-registry-test")
    case.registry.add("zzz-registry-test", mine, "the same entry, tagged", tags=("registry-test",))
    assert case.registry.filter(lambda e: e is mine) == ["aaa-registry-test", "zzz-registry-test"]
    assert case.registry.filter(tag="registry-test") == ["zzz-registry-test"]
    assert case.registry.filter(lambda e: e is mine, tag="no-such-tag") == []
    assert case.registry.filter() == case.registry.names()


def test_every_registry_gives_one_error_shape_for_an_unknown_name(case):
    with pytest.raises(ConfigError) as err:
        case.registry.get("no-such-name")
    message = str(err.value)
    # the oracle: the message written out from the registry's kind and names
    assert message == f"unknown {case.kind} 'no-such-name'; choose one of: {', '.join(sorted(case.registry.names()))}"
    found = UNKNOWN.fullmatch(message)
    assert found and found["kind"] == case.kind and found["names"].split(", ") == case.registry.names()
    with pytest.raises(ConfigError) as where:  # where the library looks the name up: the same line
        case.lookup("no-such-name")
    assert str(where.value).endswith(message)


def test_a_registry_fills_itself_once_on_first_use_and_again_after_a_failed_fill():
    calls = []

    def fill(registry: Registry[int]) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise ConfigError("the package is missing")
        registry.add("b", 2, "two")
        registry.add("a", 1, "one", tags=("odd",))

    reg: Registry[int] = Registry("number", fill=fill)
    assert calls == []
    with pytest.raises(ConfigError, match="package is missing"):
        reg.names()
    assert reg.names() == ["a", "b"] and reg.get("b") == 2 and reg.filter(tag="odd") == ["a"]
    assert reg.list() == {"a": "one", "b": "two"} and len(calls) == 2


@pytest.mark.parametrize("name", ["", "  ", None, 3])
def test_a_registry_refuses_an_empty_or_non_text_name(name):
    with pytest.raises(ConfigError, match="needs a non-empty name"):
        Registry("number").add(name, 1)


def test_methods_are_tagged_with_their_slots_and_erm_is_listed():
    updates = METHODS.filter(tag="update")
    assert {"sam", "asam", "rwp", "mrwp"} <= set(updates) and "dipnet" not in updates
    assert updates == sorted(n for n in METHODS.names() if "update" in METHODS.get(n).slots)
    assert "erm" in METHODS.list() and build_method("erm").components == []
