"""Instruments a suite can run after training (``measure = ["jacobian", "pgd"]``), by name.

Every instrument of :mod:`dipnet.measure` (``jacobian``, ``regions``, ``lipschitz``,
``curvature``, ``sharpness``, ``landscape``) and the robustness evaluations of
:mod:`dipnet.robust` (``fgsm``, ``pgd``, ``corruptions``, ``shift``) are registered by default;
:func:`register_measure` adds a user's own to :data:`INSTRUMENTS`. An instrument is ``fn(result,
spec) -> dict``: the trained run (a :class:`~dipnet.engine.RunResult`, or what a custom
``train_fn`` returned) and its :class:`~dipnet.experiments.suite.RunSpec`; the dict lands in
``results["measures"][name]``, where reports plot its numbers (a dict with numeric keys is drawn
as a curve). ``@register_measure("name")`` must decorate a module-level function (workers receive
it by reference).
"""
from __future__ import annotations

from functools import partial
from typing import Any, Callable, Mapping

from ..errors import ConfigError
from ..measure import MEASURES, measure_model
from ..registry import Registry
from ..robust import evaluate_robustness

MeasureFn = Callable[[Any, Any], Mapping[str, Any]]
INSTRUMENTS: Registry[MeasureFn] = Registry("instrument")
register_measure = INSTRUMENTS.register  # @register_measure("name"): a suite's measure = ["name"]


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
    INSTRUMENTS.add(_name, partial(smoothness, name=_name), f"dipnet.measure's {_name} on 500 test points",
                    tags=("smoothness",))
for _name, _what in (("fgsm", "accuracy under FGSM over eps"), ("pgd", "accuracy under PGD over eps"),
                     ("corruptions", "accuracy under the corruptions over severity"),
                     ("shift", "accuracy on the shifted test sets")):
    INSTRUMENTS.add(_name, partial(robustness, name=_name), f"{_what}, on 1000 test points", tags=("robustness",))
