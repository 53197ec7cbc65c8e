"""One run of a suite and its identity: :class:`RunSpec` and the key a run store files it under."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..methods import METHODS, build_method

@dataclass(frozen=True)
class RunSpec:
    """One training run of a suite: a task, a method, a seed and the full TrainConfig kwargs."""

    suite: str
    task: str
    method: str
    seed: int
    config: dict[str, Any]
    measure: tuple[str, ...] = ()
    resolved: dict[str, Any] = field(default_factory=dict)  # every method hyperparameter, defaults included

    @property
    def key(self) -> str:
        return run_key(self.config, self.measure, self.resolved)

    def to_dict(self) -> dict[str, Any]:
        return {"suite": self.suite, "task": self.task, "method": self.method, "seed": self.seed,
                "config": self.config, "measure": list(self.measure), "resolved": self.resolved}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "RunSpec":
        return cls(d["suite"], d["task"], d["method"], int(d["seed"]), dict(d["config"]), tuple(d.get("measure", ())),
                   dict(d.get("resolved") or {}))


def run_key(config: Mapping[str, Any], measure: tuple[str, ...] | list[str] = (),
            resolved: Mapping[str, Any] | None = None) -> str:
    """Stable 16-hex-digit key: sha256 of the canonical JSON of the config, the measures and the
    method's resolved hyperparameters (so a changed library default is a new run, never a stale hit)."""
    body: dict[str, Any] = {"config": config, "measure": sorted(measure)}
    if resolved:
        body["resolved"] = resolved
    blob = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def resolved_hyperparameters(method: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """``{component: {field: value}}`` of a registered method with its defaults filled in; ``{}``
    for a name the registry does not know (test doubles, methods registered only in workers)."""
    if any(part not in METHODS for part in method.split("+")):
        return {}
    hp = build_method(method, dict(params)).hyperparameters()
    return json.loads(json.dumps(hp, sort_keys=True, default=str))
