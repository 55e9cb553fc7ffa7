"""The claims types live next to `Learner` (`bioplausible.algorithms.claims`); re-exported here."""

from ..algorithms.claims import CRITERIA, Claim, Claims, Verdict, no, partial, yes  # noqa: F401
