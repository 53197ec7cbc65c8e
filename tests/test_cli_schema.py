"""One CLI convention: every subcommand's options go through the schema. No option converts its
value in argparse; each limit of a subcommand's options dataclass refuses the value just outside
it with one line naming the flag and accepts the value just inside (values generated from the
limits read off the dataclass fields, not from the help text or the checker)."""
from __future__ import annotations

import dataclasses
import math
import types
import typing

import pytest

from dipnet.cli import build_parser
from dipnet.cli._options import flag, read_options

from clirun import run_cli

POSITIONAL = {"measure": ["/no/such/run"], "robust": ["/no/such/run"]}


def _subcommands() -> dict:
    return build_parser()._subparsers._group_actions[0].choices


def _number_type(annotation) -> type:
    """int or float: the annotation itself, or the item type of a tuple, under an optional."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    if typing.get_origin(annotation) is tuple:
        annotation = typing.get_args(annotation)[0]
    return annotation


def _step(value: float, kind: type, direction: float) -> float:
    """The next representable value of ``kind`` from ``value`` towards ``direction``."""
    return value + (1 if direction > 0 else -1) if kind is int else math.nextafter(value, direction)


def _just_outside_and_inside(limits, kind: type) -> list[tuple[str, float, float, float]]:
    """``(name, bound, outside, inside)`` for each bound that ``limits`` states."""
    out = []
    if limits.ge is not None:
        out.append(("ge", limits.ge, _step(limits.ge, kind, -math.inf), limits.ge))
    if limits.gt is not None:
        out.append(("gt", limits.gt, limits.gt, _step(limits.gt, kind, math.inf)))
    if limits.le is not None:
        out.append(("le", limits.le, _step(limits.le, kind, math.inf), limits.le))
    if limits.lt is not None:
        out.append(("lt", limits.lt, limits.lt, _step(limits.lt, kind, -math.inf)))
    return out


def _cases():
    for command, sub in _subcommands().items():
        cls = sub.get_default("options")
        if cls is None:
            continue
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            limits = f.metadata.get("limits")
            if not limits:
                continue
            kind = _number_type(hints[f.name])
            for name, bound, outside, inside in _just_outside_and_inside(limits, kind):
                yield pytest.param(command, f.name, kind, bound, outside, inside, id=f"{command}-{f.name}-{name}")


def _text(value: float, kind: type) -> str:
    return str(int(value)) if kind is int else repr(float(value))


def _help(command: str, option: str) -> str:
    return next(a.help for a in _subcommands()[command]._actions if option in a.option_strings)


def test_no_option_converts_its_value_in_argparse():
    typed = {f"{command} {a.option_strings or a.dest}" for command, sub in _subcommands().items()
             for a in sub._actions if a.type is not None}
    assert not typed, f"options typed by argparse, not by the schema: {sorted(typed)}"


def test_measure_robust_and_demo_take_their_options_from_a_schema_dataclass():
    subs = _subcommands()
    for command in ("measure", "robust", "demo"):
        cls = subs[command].get_default("options")
        assert dataclasses.is_dataclass(cls), command
        flags = {s for a in subs[command]._actions for s in a.option_strings}
        assert {flag(f.name) for f in dataclasses.fields(cls)} <= flags


def test_every_limited_option_is_covered():
    covered = {tuple(c.values[:2]) for c in _cases()}
    assert {("measure", "n"), ("measure", "circles"), ("measure", "seed"), ("robust", "eps"), ("robust", "steps"),
            ("robust", "eot"), ("demo", "workers")} <= covered


@pytest.mark.parametrize("command, field, kind, bound, outside, inside", list(_cases()))
def test_a_limit_refuses_just_outside_and_accepts_just_inside(capsys, monkeypatch, command, field, kind, bound,
                                                                outside, inside):
    from dipnet.cli import compare

    monkeypatch.setattr(compare, "run", lambda ns: pytest.fail("the demo ran past its options check"))
    option = flag(field)
    code, _, err = run_cli(capsys, command, *POSITIONAL.get(command, []), f"{option}={_text(outside, kind)}")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"dipnet {command}: error: {option} must be "), err

    ns = build_parser().parse_args([command, *POSITIONAL.get(command, []), f"{option}={_text(inside, kind)}"])
    assert getattr(read_options(ns), field) in (inside, (inside,))
    assert (str(bound) if kind is int else f"{bound:g}") in _help(command, option)  # the help states the limit
