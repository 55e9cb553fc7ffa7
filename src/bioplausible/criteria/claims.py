"""The claims types live next to `Learner` (`bioplausible.algorithms.claims`); re-exported here
for code written against this module."""

from ..algorithms.claims import CRITERIA, Claim, Claims, Verdict, no, partial, yes

__all__ = ["CRITERIA", "Claim", "Claims", "Verdict", "no", "partial", "yes"]
