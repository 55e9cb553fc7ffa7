"""Run configuration: validated on construction, with messages that name the bad option."""

from __future__ import annotations

import hashlib
import json
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class RunConfig(BaseModel):
    """One training run. Two runs with equal `key()` are the same experiment."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rule: str
    model: str = "mlp"
    data: str = "digits"
    epochs: int = Field(10, ge=1, le=10_000)
    batch_size: int = Field(64, ge=1, le=65_536)
    # allow_inf_nan=False: `--lr nan` is "not a finite number", not "should be <= 10"
    lr: float = Field(1e-3, gt=0, le=10, allow_inf_nan=False)
    optimizer: Literal["adam", "sgd"] = "adam"
    momentum: float = Field(0.9, ge=0, lt=1, allow_inf_nan=False)
    weight_decay: float = Field(0.0, ge=0, allow_inf_nan=False)
    # per epoch, over all of a rule's optimisers (and R-STDP's reward rates, which are not an optimiser's)
    lr_schedule: Literal["constant", "cosine", "step"] = "constant"
    seed: int = Field(0, ge=0, le=2**32 - 1)
    widths: tuple[int, ...] | None = None  # MLP hidden widths; None = the paper's 1024-512-256
    channels: tuple[int, ...] | None = None  # CNN conv channels; None = preset for the input
    act: str | None = None  # hidden activation; None = the rule's default (filled in by algorithms.resolve)
    val_fraction: float = Field(0.1, ge=0, lt=1, allow_inf_nan=False)
    data_dir: str | None = None  # folder with the data set's files; None = the cache
    # content digest of the data files read (`bioplausible.data.data_digest`); None for the
    # bundled sets. Part of the identity: the same settings on other files are another run.
    data_digest: str | None = None
    # train on this many training samples only (a class-balanced subset, the same for every
    # seed), e.g. a quick grid on a large set; None = the whole training split
    train_subset: int | None = Field(None, ge=1)
    rule_options: dict[str, Any] = Field(default_factory=dict)
    # not part of the experiment's identity:
    device: str = "auto"
    eval_batch_size: int = Field(1024, ge=1)

    @field_validator("widths", "channels")
    @classmethod
    def _positive(cls, v):
        if v is not None and (len(v) == 0 or any(int(w) < 1 for w in v)):
            raise ValueError("must be a non-empty list of positive integers")
        return v

    @field_validator("act")
    @classmethod
    def _known_act(cls, v: str | None) -> str | None:
        from .models import ACTIVATIONS

        if v is not None and v not in ACTIVATIONS:
            raise ValueError(f"unknown activation {v!r}; known: {', '.join(ACTIVATIONS)}")
        return v

    @field_validator("model", "data")
    @classmethod
    def _known(cls, v: str, info) -> str:
        # the rule's name (and its defaults) are checked by the rule registry,
        # `bioplausible.algorithms.resolve`, which sits above this module
        from .data import DATASETS
        from .models import ARCHITECTURES

        label, known = {"model": ("model", ARCHITECTURES), "data": ("dataset", DATASETS)}[info.field_name]
        if v not in known:
            raise ValueError(f"unknown {label} {v!r}; known: {', '.join(known)}")
        return v

    IDENTITY_EXCLUDE: ClassVar[frozenset[str]] = frozenset({"device", "eval_batch_size", "data_dir"})
    # fields added after runs were first recorded: left out of the identity while unset, so
    # the ids of runs that do not use them stay what they were
    LATER_FIELDS: ClassVar[frozenset[str]] = frozenset({"data_digest", "train_subset"})

    def identity(self) -> dict[str, Any]:
        d = self.model_dump(mode="json")
        return {k: v for k, v in d.items()
                if k not in self.IDENTITY_EXCLUDE and not (k in self.LATER_FIELDS and v is None)}

    def key(self) -> str:
        """Stable id of the experiment: a hash of everything that changes its result."""
        blob = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


class ConfigError(ValueError):
    """A run's settings are wrong; the message names the option (as on the command line)."""


def config_error(e: Exception, prefix: str = "--") -> ConfigError:
    """One line naming the option of a pydantic ValidationError (`--lr: ...`)."""
    from pydantic import ValidationError

    if not isinstance(e, ValidationError):
        return ConfigError(str(e))
    err = e.errors()[0]
    loc = [str(p) for p in err["loc"]]
    name = {"rule_options": "opt"}.get(loc[0], loc[0]) if loc else "config"
    msg = err["msg"].removeprefix("Value error, ")
    if prefix == "--":
        return ConfigError(f"--{name.replace('_', '-')}: {msg}")
    return ConfigError(f"{prefix}{'.'.join(loc)}: {msg}")
