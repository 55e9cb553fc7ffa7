"""A run on a subset of the training split: class-balanced, the same for every seed, part of the id."""

import torch

from bioplausible.algorithms import resolve
from bioplausible.config import RunConfig
from bioplausible.experiments.runner import train


def test_subset_is_balanced_fixed_and_leaves_val_and_test(digits):
    sub = digits.subset(200)
    counts = torch.bincount(sub.y_train, minlength=10)
    assert len(sub.y_train) == 200 and counts.min() >= 19 and counts.max() <= 21, counts
    again = digits.subset(200)
    assert torch.equal(sub.x_train, again.x_train) and torch.equal(sub.y_train, again.y_train)
    assert torch.equal(sub.x_test, digits.x_test) and torch.equal(sub.x_val, digits.x_val)
    # every subset row is a training row of the full split
    rows = {tuple(r.tolist()) for r in digits.x_train.flatten(1)}
    assert all(tuple(r.tolist()) in rows for r in sub.x_train.flatten(1))
    assert digits.subset(10**6) is digits


def test_subset_is_part_of_the_identity_only_when_set():
    base = RunConfig(rule="bp", data="digits")
    assert "train_subset" not in base.identity()  # ids of runs without a subset are unchanged
    a = RunConfig(rule="bp", data="digits", train_subset=100)
    b = RunConfig(rule="bp", data="digits", train_subset=200)
    assert len({base.key(), a.key(), b.key()}) == 3


def test_run_trains_on_the_subset_only(digits):
    cfg = resolve(RunConfig(rule="bp", data="digits", epochs=1, batch_size=32, widths=(16,), train_subset=100))
    seen = []
    train(cfg, digits, on_step=lambda s: seen.append(s["n"]))
    assert seen[-1] == 100 and len(seen) == 4
