"""What a learning rule claims about itself, criterion by criterion."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal

Verdict = Literal["yes", "no", "partial"]


@dataclass(frozen=True)
class Claim:
    verdict: Verdict
    reason: str

    def __post_init__(self) -> None:
        if self.verdict not in ("yes", "no", "partial"):
            raise ValueError(f"claim verdict must be yes/no/partial, got {self.verdict!r}")
        if not self.reason.strip():
            raise ValueError("every claim needs a reason")


def yes(reason: str) -> Claim:
    return Claim("yes", reason)


def no(reason: str) -> Claim:
    return Claim("no", reason)


def partial(reason: str) -> Claim:
    return Claim("partial", reason)


@dataclass(frozen=True)
class Claims:
    """A rule's claims. 'yes' means the rule satisfies the criterion (is plausible on it)."""

    c1_no_weight_transport: Claim
    c2_local_error: Claim
    c3_single_phase: Claim
    c4_spiking: Claim
    c5_label_free_hidden: Claim
    c6_unsigned_error: Claim

    def items(self):
        return [(f.name, getattr(self, f.name)) for f in fields(self)]


CRITERIA = {
    "c1_no_weight_transport": "C1 no weight transport",
    "c2_local_error": "C2 local error",
    "c3_single_phase": "C3 single phase",
    "c4_spiking": "C4 spiking",
    "c5_label_free_hidden": "C5 label-free hidden layers",
    "c6_unsigned_error": "C6 unsigned error",
}
