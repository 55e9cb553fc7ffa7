"""Bring your own network: a LeNet-5-style `torch.nn.Sequential`, trained by several
learning rules on scikit-learn's 8x8 digits, each in a plain training loop.

    python examples/own_network.py                      # bp, fa, pc, 5 epochs
    python examples/own_network.py --rules bp,fa,dfa,signsym,local,pc,dtp,np

Every rule trains the Sequential's own parameters in place, so the trained network is
the `nn.Sequential` itself: evaluate it, save it, or hand it to any other PyTorch code.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import bioplausible
from bioplausible.data import load


def lenet5(num_classes: int = 10) -> nn.Sequential:
    """LeNet-5 (tanh, 5x5 convolutions, average-pool subsampling, 120-84 dense), with
    padding so that 8x8 digits survive both subsamplings (8 -> 4 -> 2)."""
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.Tanh(), nn.AvgPool2d(2),
        nn.Conv2d(6, 16, 5, padding=2), nn.Tanh(), nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 2 * 2, 120), nn.Tanh(),
        nn.Linear(120, 84), nn.Tanh(),
        nn.Linear(84, num_classes),
    )


def train_rule(rule: str, data, epochs: int, batch_size: int, lr: float, seed: int, device: str) -> float:
    """Train a fresh LeNet-5 with `rule`; return its test accuracy."""
    torch.manual_seed(seed)
    net = lenet5(data.num_classes).to(device)
    learner = bioplausible.learner(rule, model=net, input_shape=data.input_shape, lr=lr, seed=seed, device=device)
    loader = DataLoader(TensorDataset(data.x_train, data.y_train), batch_size=batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    for _ in range(epochs):
        for x, y in loader:
            learner.train_step(x.to(device), y.to(device))
    with torch.no_grad():
        return (net(data.x_test.to(device)).argmax(1).cpu() == data.y_test).float().mean().item()


def main(argv=None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rules", default="bp,fa,pc", help="comma-separated rule names")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    data = load("digits")
    accs = {}
    for rule in args.rules.split(","):
        accs[rule] = train_rule(rule, data, args.epochs, args.batch_size, args.lr, args.seed, args.device)
        print(f"{rule:<8} test accuracy {accs[rule]:.4f}", flush=True)
    return accs


if __name__ == "__main__":
    main()
