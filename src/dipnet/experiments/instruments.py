"""Instruments a suite can run after training (``measure = ["jacobian", "pgd"]``), by name.

Every instrument of :mod:`dipnet.measure` (``jacobian``, ``regions``, ``lipschitz``,
``curvature``, ``sharpness``, ``landscape``) and the robustness evaluations of
:mod:`dipnet.robust` (``fgsm``, ``pgd``, ``corruptions``, ``shift``) are registered by default;
:func:`register_measure` adds a user's own. An instrument is ``fn(result, spec) -> dict``: the
trained run (a :class:`~dipnet.engine.RunResult`, or what a custom ``train_fn`` returned) and its
:class:`~dipnet.experiments.suite.RunSpec`; the dict lands in ``results["measures"][name]``,
where reports plot its numbers (a dict with numeric keys is drawn as a curve).
"""
from __future__ import annotations

from functools import partial
from typing import Any, Callable, Mapping

from ..errors import ConfigError
from ..measure import MEASURES, measure_model
from ..robust import evaluate_robustness

MeasureFn = Callable[[Any, Any], Mapping[str, Any]]
_MEASURES: dict[str, MeasureFn] = {}


def register_measure(name: str) -> Callable[[MeasureFn], MeasureFn]:
    """Decorator: make an instrument available to suites as ``measure = ["name"]``.

    The function must be importable at module level (workers receive it by reference) and is
    called after training as ``fn(result, spec)``.
    """

    def deco(fn: MeasureFn) -> MeasureFn:
        _MEASURES[name] = fn
        return fn

    return deco


def measure_names() -> list[str]:
    return sorted(_MEASURES)


def get_measure(name: str) -> MeasureFn:
    if name not in _MEASURES:
        raise ConfigError(f"unknown instrument {name!r}; registered: {', '.join(measure_names()) or 'none'}")
    return _MEASURES[name]


def _model_and_data(result: Any) -> tuple[Any, Any]:
    if isinstance(result, Mapping):
        model, dataset = result.get("model"), result.get("dataset")
    else:
        model, dataset = getattr(result, "model", None), getattr(result, "dataset", None)
    if model is None or dataset is None:
        raise ConfigError("this instrument needs the trained model and dataset: the train_fn must return a "
                          "RunResult or a dict with 'model' and 'dataset'")
    return model.eval(), dataset


def smoothness(result: Any, spec: Any, *, name: str) -> dict[str, Any]:
    """One instrument of :func:`dipnet.measure.measure_model` on 500 test points (seeded by the run)."""
    model, dataset = _model_and_data(result)
    out = measure_model(model, dataset, names=[name], n_examples=500, seed=spec.seed)
    return {k: v for k, v in out[name].items() if k != "plot"} if isinstance(out[name], dict) else out[name]


def robustness(result: Any, spec: Any, *, name: str) -> dict[str, Any]:
    """Accuracy under one attack (a curve over eps), the corruptions (a curve over severity, and the
    mean) or the shifted test sets, on 1000 test points (seeded by the run)."""
    model, dataset = _model_and_data(result)
    attacks = [name] if name in ("fgsm", "pgd") else []
    out = evaluate_robustness(model, dataset, attacks=attacks, corruptions=None if name == "corruptions" else [],
                              shifted=name == "shift", seed=spec.seed)
    if attacks:
        adv = out["adversarial"][name]
        return {"clean_acc": out["clean_acc"], "acc_by_eps": dict(zip(map(str, adv["eps"]), adv["acc"]))}
    if name == "corruptions":
        return {"clean_acc": out["clean_acc"], "mean_acc": out.get("mean_corruption_acc"),
                "acc_by_severity": dict(zip(map(str, out["corruptions"]["severities"]), out.get("per_severity_acc", [])))}
    return {"clean_acc": out["clean_acc"], **{k: v for k, v in out.get("shifted", {}).items()}}


for _name in MEASURES:
    _MEASURES[_name] = partial(smoothness, name=_name)
for _name in ("fgsm", "pgd", "corruptions", "shift"):
    _MEASURES[_name] = partial(robustness, name=_name)
