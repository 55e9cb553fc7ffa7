"""Learning rules. A new rule is one module here plus one line in `_RULES`."""

from __future__ import annotations

import importlib

from .base import Learner

# name -> "module:Class"; imported lazily so that `bioplausible list` is quick.
_RULES: dict[str, str] = {
    "bp": "bp:Backprop",
    "fa": "fa:FeedbackAlignment",
    "dfa": "dfa:DirectFeedbackAlignment",
    "signsym": "signsym:SignSymmetry",
    "pc": "pc:PredictiveCoding",
    "dtp": "dtp:DifferenceTargetProp",
    "ep": "ep:EquilibriumPropagation",
    "ff": "ff:ForwardForward",
    "local": "local:LocalLosses",
    "hebbian": "hebbian:Hebbian",
    "stdp": "stdp:STDP",
    "rstdp": "stdp:RSTDP",
    "wp": "perturbation:WeightPerturbation",
    "np": "perturbation:NodePerturbation",
}

RULES = tuple(_RULES)


def get(name: str) -> type[Learner]:
    if name not in _RULES:
        raise ValueError(f"unknown rule {name!r}; known: {', '.join(_RULES)}")
    mod, cls = _RULES[name].split(":")
    return getattr(importlib.import_module(f"{__name__}.{mod}"), cls)


def all_rules() -> dict[str, type[Learner]]:
    return {n: get(n) for n in _RULES}
