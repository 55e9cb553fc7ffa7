"""The Learner contract, for every registered (rule, architecture): it builds, one
`train_step` returns the documented keys, a checkpoint round-trips bit-exactly (through
`torch.save` / `torch.load(weights_only=True)`, as the runner stores it), `activations` gives
one (batch, ...) tensor per layer, and the rule states its claims. Tiny networks on random
8x8 images, so the whole file takes seconds."""

from __future__ import annotations

import io

import pytest
import torch

from bioplausible.algorithms import entries, get, resolve
from bioplausible.algorithms.claims import CRITERIA, Claim, Claims
from bioplausible.config import RunConfig
from bioplausible.experiments.runner import build_learner

ENTRIES = [(rule, arch) for rule, arch, _ in entries()]
SHAPE, CLASSES, BATCH = (1, 8, 8), 10, 8


def _learner(rule: str, arch: str):
    cfg = resolve(RunConfig(rule=rule, model=arch, data="digits", seed=0, widths=(12,), channels=(12,), lr=0.01))
    return build_learner(cfg, SHAPE, CLASSES)


def _batch(seed: int):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(BATCH, *SHAPE, generator=g), torch.randint(0, CLASSES, (BATCH,), generator=g)


def _step(L, seed: int) -> dict:
    torch.manual_seed(seed)  # rules that draw from the global generator draw the same
    return L.train_step(*_batch(seed))


def test_every_rule_is_registered_on_an_architecture():
    assert {r for r, _ in ENTRIES} == set(__import__("bioplausible.algorithms", fromlist=["RULES"]).RULES)


@pytest.mark.parametrize("rule, arch", ENTRIES)
def test_learner_contract(rule, arch):
    cls = get(rule, arch)
    assert arch in cls.architectures and cls.name == rule
    # claims: one reasoned claim per criterion
    assert isinstance(cls.claims, Claims)
    assert {name for name, _ in cls.claims.items()} == set(CRITERIA)
    assert all(isinstance(c, Claim) and c.reason for _, c in cls.claims.items())

    L = _learner(rule, arch)
    assert type(L) is cls and L.stack.arch == arch
    out = _step(L, 1)
    assert {"loss", "correct"} <= set(out), out.keys()
    assert 0 <= int(out["correct"]) <= BATCH and torch.isfinite(torch.as_tensor(out["loss"]))

    x, _ = _batch(2)
    acts = L.activations(x)
    assert acts and all(isinstance(a, torch.Tensor) and a.shape[0] == BATCH for a in acts.values())
    assert list(acts.values())[-1].shape == (BATCH, CLASSES)  # the last layer: class scores
    assert L.predict(x).shape == (BATCH, CLASSES)

    # checkpoint round trip: a fresh learner restored from it is the same learner, and stays
    # the same through another step (optimiser state and private generators included)
    buf = io.BytesIO()
    torch.save(L.checkpoint(), buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    other = _learner(rule, arch)
    other.restore(ckpt)
    for (k, a), (k2, b) in zip(L.state_dict().items(), other.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    torch.testing.assert_close(other.predict(x), L.predict(x), rtol=0, atol=0)
    _step(L, 3)
    _step(other, 3)
    for (k, a), b in zip(L.state_dict().items(), other.state_dict().values()):
        assert torch.equal(a, b), f"{k} differs after one more step from the restored checkpoint"


@pytest.mark.parametrize("rule, arch", ENTRIES)
def test_every_option_is_described(rule, arch):
    """`bioplausible list --options` prints each option's description: none may be missing."""
    fields = get(rule, arch).Options.model_fields
    assert not [n for n, f in fields.items() if not (f.description or "").strip()]
