"""Your own training loop: a bioplausible learning rule driving a model from a plain
PyTorch loop, with your own DataLoader, evaluation and checkpoint.

    python examples/own_loop.py --rule dfa --epochs 10 --save dfa.pt
"""

from __future__ import annotations

import argparse

import torch
from torch.utils.data import DataLoader, TensorDataset

import bioplausible
from bioplausible.data import load


def main(argv=None) -> float:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rule", default="fa", help="any rule from bioplausible.rules()")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--save", default=None, help="write the learner's state_dict here")
    args = p.parse_args(argv)

    data = load("digits")  # normalised tensors with fixed train / validation / test splits
    learner = bioplausible.learner(args.rule, model="mlp", input_shape=data.input_shape,
                                   num_classes=data.num_classes, widths=(256, 128), lr=args.lr, seed=0,
                                   device=args.device)
    loader = DataLoader(TensorDataset(data.x_train, data.y_train), batch_size=args.batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    x_test, y_test = data.x_test.to(args.device), data.y_test.to(args.device)
    acc = 0.0
    for epoch in range(1, args.epochs + 1):
        total, n = 0.0, 0
        for x, y in loader:
            out = learner.train_step(x.to(args.device), y.to(args.device))  # one update by the rule
            total += float(out["loss"]) * len(y)
            n += len(y)
        with torch.no_grad():
            acc = (learner.predict(x_test).argmax(1) == y_test).float().mean().item()
        print(f"epoch {epoch}: train loss {total / n:.4f}, test accuracy {acc:.4f}", flush=True)
    with torch.no_grad():
        layers = {name: tuple(h.shape) for name, h in learner.activations(x_test[:100]).items()}
    print("activations:", layers)
    if args.save:
        torch.save(learner.state_dict(), args.save)
        print("saved", args.save)
    return acc


if __name__ == "__main__":
    main()
