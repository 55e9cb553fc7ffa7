"""Training speed per rule, its ratio to backprop, and the achieved FLOP rate.

    python bench/speed.py [--rules bp,fa,dfa,signsym] [--model mlp] [--batch 256] [--device auto]
                          [--opt pc.T=8 ...]

All rules are timed in this one process on the same synthetic MNIST-shaped batches, so the
ratios to BP are free of machine-to-machine noise. The MLP's training-step FLOP rate
(6 x multiply-adds per sample: forward, error and weight-gradient products) is compared
with a plain matmul of the step's largest shape timed in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from bioplausible.algorithms import RULES
from bioplausible.cli import parse_options as parse_rule_options
from bioplausible.config import RunConfig
from bioplausible.experiments.runner import build_learner, resolve_device


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def make_learner(rule, model, batch, device, widths, input_shape, options=None):
    cfg = RunConfig(rule=rule, model=model, batch_size=batch, widths=widths, device=str(device),
                    rule_options=(options or {}).get(rule, {}))
    return build_learner(cfg, input_shape, 10, device)


def make_batches(batch, device, input_shape):
    g = torch.Generator(device="cpu").manual_seed(0)
    xs = [torch.randn(batch, *input_shape, generator=g).to(device) for _ in range(4)]
    ys = [torch.randint(0, 10, (batch,), generator=g).to(device) for _ in range(4)]
    return xs, ys


def time_steps(learner, xs, ys, steps, device) -> float:
    """Seconds per training step over `steps` steps."""
    sync(device)
    t0 = time.perf_counter()
    for i in range(steps):
        learner.train_step(xs[i % 4], ys[i % 4])
    sync(device)
    return (time.perf_counter() - t0) / steps


def time_against_bp(learner, bp, xs, ys, steps, warmup, rounds, device):
    """(seconds per step of `learner`, of BP, median ratio). The two are timed in alternating
    blocks, so a change in the machine's load hits both and the per-round ratio stays fair."""
    time_steps(learner, xs, ys, warmup, device)
    per = max(1, steps // rounds)
    own, ref = [], []
    for _ in range(rounds):
        ref.append(time_steps(bp, xs, ys, per, device))
        own.append(time_steps(learner, xs, ys, per, device))
    ratio = statistics.median(o / r for o, r in zip(own, ref))
    return statistics.median(own), statistics.median(ref), ratio


def parse_options(items: list[str]) -> dict[str, dict]:
    """["pc.T=8", "np.antithetic=false"] -> {"pc": {"T": 8}, "np": {"antithetic": False}}."""
    out: dict[str, dict] = {}
    for item in items:
        key, sep, value = item.partition("=")
        rule, dot, name = key.partition(".")
        if not (sep and dot and rule and name):
            raise SystemExit(f"--opt {item!r}: expected RULE.KEY=VALUE, e.g. pc.T=8")
        out.setdefault(rule, {}).update(parse_rule_options([f"{name}={value}"]))
    return out


def matmul_rate(m, k, n, device, reps=20):
    a = torch.randn(m, k, device=device)
    b = torch.randn(k, n, device=device)
    for _ in range(3):
        a @ b
    sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * m * k * n * reps / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rules", default=",".join(RULES))
    ap.add_argument("--model", default="mlp", choices=["mlp", "cnn"])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=5, help="alternating BP/rule timing blocks per rule")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--opt", action="append", default=[], metavar="RULE.KEY=VALUE",
                    help="a rule option, e.g. pc.T=8 (repeatable; VALUE is read as JSON when it parses)")
    args = ap.parse_args()
    options = parse_options(args.opt)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    rules = [r for r in args.rules.split(",") if r]
    if "bp" in rules:
        rules.remove("bp")
    rules.insert(0, "bp")
    input_shape = (1, 28, 28)
    widths = (1024, 512, 256)
    print(f"device {device}, model {args.model}, batch {args.batch}, torch threads {torch.get_num_threads()}"
          + (f", options {options}" if options else ""))
    xs, ys = make_batches(args.batch, device, input_shape)
    bp = make_learner("bp", args.model, args.batch, device, widths, input_shape)
    time_steps(bp, xs, ys, args.warmup, device)
    results, ratios = {}, {}
    for rule in rules:
        try:
            learner = bp if rule == "bp" else make_learner(rule, args.model, args.batch, device, widths, input_shape,
                                                           options)
            dt, _, ratio = time_against_bp(learner, bp, xs, ys, args.steps, args.warmup, args.rounds, device)
        except Exception as e:  # a rule that can't run this model is reported, not fatal
            print(f"{rule:10s} skipped: {type(e).__name__}: {str(e).splitlines()[0]}")
            continue
        results[rule], ratios[rule] = dt, ratio
    print(f"{'rule':10s} {'ms/step':>9s} {'samples/s':>11s} {'x BP time':>10s}   (ratio: median over rounds of "
          f"alternating BP/rule blocks)")
    for rule, dt in results.items():
        print(f"{rule:10s} {dt * 1e3:9.2f} {args.batch / dt:11.0f} {ratios[rule]:10.2f}")
    if args.model == "mlp" and "bp" in results:
        sizes = [784, *widths, 10]
        macs = sum(a * b for a, b in zip(sizes, sizes[1:]))
        step_flops = 6 * macs * args.batch
        peak = matmul_rate(args.batch, 1024, 1024, device)
        peak_big = matmul_rate(2048, 2048, 2048, device, reps=5)
        print(f"\nplain matmul {args.batch}x1024x1024: {peak / 1e9:.1f} GFLOP/s; 2048^3: {peak_big / 1e9:.1f} GFLOP/s")
        for rule in ("bp", "fa", "dfa", "signsym"):
            if rule in results:
                rate = step_flops / results[rule]
                print(f"{rule:10s} training step {rate / 1e9:7.1f} GFLOP/s = {rate / peak:6.1%} of the same-shape "
                      f"matmul, {rate / peak_big:6.1%} of the 2048^3 matmul")


if __name__ == "__main__":
    main()
