"""The GPU path: every rule trains on CUDA, and one step's update there matches the CPU's.

Marked `cuda` and skipped without a GPU (`pytest -m cuda` runs only these). Updates are
compared under plain SGD (the update is then -lr x the rule's gradient, linear in it; Adam's
first step, ~lr x sign(g), would turn round-off in near-zero gradients into full-size
differences) with TF32 off, so the two devices do the same float32 arithmetic up to
summation order."""

from __future__ import annotations

import math

import pytest
import torch

from bioplausible.algorithms import RULES, get
from bioplausible.config import RunConfig
from bioplausible.experiments.runner import build_learner

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

INPUT = (1, 8, 8)
# rules whose step draws no random numbers on the data's device: the two updates must agree
DETERMINISTIC = ("bp", "fa", "dfa", "signsym", "pc", "ep", "local", "hebbian")
CASES = [(r, m) for r in RULES for m in get(r).architectures]


@pytest.fixture(autouse=True)
def _no_tf32():
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def make_learner(rule: str, model: str, device: str):
    cfg = RunConfig(rule=rule, model=model, batch_size=16, lr=0.05, optimizer="sgd", momentum=0.0, seed=0,
                    widths=(32, 16) if model == "mlp" else None, channels=(10, 10, 10) if model == "cnn" else None,
                    device=device)
    return build_learner(cfg, INPUT, 10, torch.device(device))


def batch(device: str, n: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, *INPUT, generator=g)  # in [0, 1]: valid rates for the spiking encoders too
    y = torch.arange(n) % 10
    return x.to(device), y.to(device)


def one_step_update(rule: str, model: str, device: str) -> dict[str, torch.Tensor]:
    learner = make_learner(rule, model, device)
    before = {k: v.detach().clone() for k, v in learner.state_dict().items() if v.is_floating_point()}
    learner.train_step(*batch(device))
    after = learner.state_dict()
    return {k: (after[k] - v).cpu() for k, v in before.items()}


@pytest.mark.parametrize("rule,model", CASES)
def test_trains_on_cuda(rule, model, device="cuda"):
    learner = make_learner(rule, model, device)
    assert all(p.device.type == device for p in learner.parameters())
    start = [p.detach().clone() for p in learner.parameters()]
    for seed in range(3):
        out = learner.train_step(*batch(device, seed=seed))
        for k, v in out.items():
            if torch.is_tensor(v) and v.is_floating_point():
                assert torch.isfinite(v).all(), f"{rule}/{model}: {k} is {v}"
    assert any(not torch.equal(a, p) for a, p in zip(start, learner.parameters())), f"{rule}/{model}: nothing learned"
    scores = learner.predict(batch(device)[0])
    assert scores.device.type == device and scores.shape == (16, 10) and torch.isfinite(scores).all()


def assert_updates_agree(rule: str, model: str, cpu: dict, gpu: dict) -> None:
    assert cpu.keys() == gpu.keys()
    moved = [k for k in cpu if cpu[k].abs().max() > 0]
    assert moved, f"{rule}/{model}: the CPU step changed nothing"
    if rule in DETERMINISTIC:
        for k in moved:
            a, b = cpu[k].double(), gpu[k].double()
            # the same arithmetic up to summation order: agreement to float32 round-off,
            # relative to the update's size
            err = ((a - b).norm() / a.norm()).item()
            assert err < 1e-3, f"{rule}/{model} {k}: CUDA update differs from the CPU's by {err:.2e} (relative)"
    else:
        # device-side random draws (noise, spikes, negatives) differ between the devices: the
        # same estimator from other draws, so the whole update has about the same size
        norm = lambda d: math.sqrt(sum(d[k].double().pow(2).sum().item() for k in moved))  # noqa: E731
        ratio = norm(gpu) / norm(cpu)
        assert 1 / 3 < ratio < 3, f"{rule}/{model}: CUDA/CPU update norm ratio {ratio:.2f}"


@pytest.mark.parametrize("rule,model", CASES)
def test_one_step_update_matches_cpu(rule, model):
    assert_updates_agree(rule, model, one_step_update(rule, model, "cpu"), one_step_update(rule, model, "cuda"))
