"""Learning rules. A new rule is one module here plus one line in `_RULES`.

The registry has one entry per (rule, architecture): most rules are one class for every
architecture it lists in `Learner.architectures`; a rule whose network differs in kind on
another architecture (STDP's conv layers) names a class per architecture. The registry also
resolves a run's rule defaults (`resolve`), so `config.py` knows nothing of the rules.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from .base import Learner

if TYPE_CHECKING:
    from ..config import RunConfig

# name -> "module:Class" (the class lists its architectures), or {architecture: "module:Class"};
# imported lazily so that `bioplausible list` is quick.
_RULES: dict[str, str | dict[str, str]] = {
    "bp": "bp:Backprop",
    "fa": "fa:FeedbackAlignment",
    "dfa": "dfa:DirectFeedbackAlignment",
    "signsym": "signsym:SignSymmetry",
    "pc": {"mlp": "pc:PredictiveCoding", "cnn": "pc:ConvPredictiveCoding"},
    "dtp": "dtp:DifferenceTargetProp",
    "ep": {"mlp": "ep:EquilibriumPropagation", "cnn": "ep:ConvEquilibriumPropagation"},
    "ff": "ff:ForwardForward",
    "local": "local:LocalLosses",
    "hebbian": "hebbian:Hebbian",
    "stdp": {"mlp": "stdp:STDP", "cnn": "stdp_conv:ConvSTDP"},
    "rstdp": {"mlp": "stdp:RSTDP", "cnn": "stdp_conv:ConvRSTDP"},
    "wp": "perturbation:WeightPerturbation",
    "np": "perturbation:NodePerturbation",
}

RULES = tuple(_RULES)


def _load(spec: str) -> type[Learner]:
    mod, cls = spec.split(":")
    return getattr(importlib.import_module(f"{__name__}.{mod}"), cls)


def _check(name: str) -> None:
    if name not in _RULES:
        raise ValueError(f"unknown rule {name!r}; known: {', '.join(_RULES)}")


def get(name: str, arch: str | None = None) -> type[Learner]:
    """The class that implements rule `name` on architecture `arch` (None: the rule's first
    architecture, the MLP where it has one)."""
    _check(name)
    spec = _RULES[name]
    if isinstance(spec, str):
        cls = _load(spec)
        if arch is not None and arch not in cls.architectures:
            raise ValueError(f"rule {name!r} does not support model {arch!r} (supports: {', '.join(cls.architectures)})")
        return cls
    if arch is None:
        arch = next(iter(spec))
    if arch not in spec:
        raise ValueError(f"rule {name!r} does not support model {arch!r} (supports: {', '.join(spec)})")
    return _load(spec[arch])


def architectures(name: str) -> tuple[str, ...]:
    """Every architecture rule `name` is registered for."""
    _check(name)
    spec = _RULES[name]
    return tuple(spec) if isinstance(spec, dict) else _load(spec).architectures


def entries() -> list[tuple[str, str, type[Learner]]]:
    """Every registered (rule, architecture, class)."""
    return [(n, a, get(n, a)) for n in _RULES for a in architectures(n)]


def all_rules() -> dict[str, type[Learner]]:
    """Each rule's class on its first architecture (see `entries` for all of them)."""
    return {n: get(n) for n in _RULES}


def validate_options(name: str, options: dict[str, Any], arch: str | None = None) -> BaseModel:
    """The rule's options for `arch` validated; with `arch` None, valid for any architecture of
    the rule (a settings table that applies to several). Raises the first entry's
    ValidationError when none accepts them."""
    archs = (arch,) if arch is not None else architectures(name)
    first: ValidationError | None = None
    for a in archs:
        try:
            return get(name, a).Options(**options)
        except ValidationError as e:
            first = first or e
    assert first is not None
    raise first


def resolve(cfg: RunConfig) -> RunConfig:
    """`cfg` with the rule's defaults written in: its activation and every rule option.

    The stored config then says what ran, and a run's key changes when a rule's default does
    (a store must not answer "already done" with a run of another network). Options that do
    not validate raise ValueError naming the option, as does an unknown rule."""
    _check(cfg.rule)
    archs = architectures(cfg.rule)
    rule = get(cfg.rule, cfg.model if cfg.model in archs else None)
    update: dict[str, Any] = {}
    if cfg.act is None:
        update["act"] = rule.default_act
    try:
        update["rule_options"] = rule.Options(**cfg.rule_options).model_dump(mode="json")
    except ValidationError as e:
        # refused here, before anything is recorded: a bad option is the user's to fix, not a
        # failed row per attempt; the message names the option
        err = e.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or "?"
        raise ValueError(f"--opt {key}={err.get('input')!r}: {err['msg']} (options of rule {cfg.rule!r})") from None
    if not update:
        return cfg
    # validated again (not model_copy), so the result equals a config read back from the store
    return type(cfg)(**{**cfg.model_dump(), **update})
