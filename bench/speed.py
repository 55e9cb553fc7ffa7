"""Training speed per rule: ms/step, its ratio to backprop, FLOPs per step relative to BP's,
and the achieved FLOP rate as a fraction of a plain matmul's.

    python bench/speed.py [--rules bp,fa,dfa,signsym] [--model mlp] [--batch 256] [--device auto]
                          [--opt pc.T=8 ...] [--json results.json]

All rules are timed in this one process on the same synthetic MNIST-shaped batches. Each
rule is timed in rounds; a round times a block of BP steps, a block of the reference matmul,
a block of the rule's steps and the matmul again, back to back, so a change in the
machine's load hits all of them (the reference rate is the better of its two blocks). Every
figure is the median over rounds of the per-round ratio; the spread over rounds is printed
beside it.

FLOPs per step are counted by `torch.utils.flop_counter.FlopCounterMode` over one training
step: it sees matrix products and convolutions (forward and backward), not element-wise
work, so a rule that spends its time in element-wise updates (the spiking rules' membrane
and trace updates, noise generation) shows a low efficiency: that is what bounds it. The
reference matmul has the shape of the model's largest product (MLP: batch x 1024 x 1024;
CNN: the im2col product of the conv layer with the most multiply-adds, or that layer's
convolution itself where it runs faster), so "efficiency" is the rule's FLOP rate over the
rate this machine reaches on that product in the same round.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from datetime import datetime, timezone

import torch
from torch.utils.flop_counter import FlopCounterMode

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


def count_flops(learner, x, y) -> int:
    """Floating-point operations of one training step, as FlopCounterMode counts them
    (matrix products and convolutions; the step is really taken)."""
    with FlopCounterMode(display=False) as counter:
        learner.train_step(x, y)
    return counter.get_total_flops()


class Matmul:
    """The reference product, timed in blocks: a (m x k) @ (k x n) matmul, or with `conv`
    (batch, c_in, h, w, c_out, kernel) that convolution too (the same product as the network
    computes it; a direct convolution can beat its im2col matmul), the faster of the two."""

    def __init__(self, m, k, n, device, conv=None):
        self.shape, self.device = (m, k, n), device
        a = torch.randn(m, k, device=device)
        b = torch.randn(k, n, device=device)
        self.ops = [lambda: a @ b]
        if conv is not None:
            bsz, c_in, hh, ww, c_out, ks = conv
            x = torch.randn(bsz, c_in, hh, ww, device=device)
            w = torch.randn(c_out, c_in, ks, ks, device=device)
            self.ops.append(lambda: torch.nn.functional.conv2d(x, w, padding=ks // 2))
        self.flops = 2 * m * k * n
        self.reps = 3
        self.rate()  # warm up, and size a block to about 50 ms
        self.reps = max(3, min(200, int(0.05 * self.rate() / self.flops)))

    def rate(self) -> float:
        best = 0.0
        for op in self.ops:
            sync(self.device)
            t0 = time.perf_counter()
            for _ in range(self.reps):
                op()
            sync(self.device)
            best = max(best, self.flops * self.reps / (time.perf_counter() - t0))
        return best


def reference_shape(model, batch, learner) -> tuple[int, int, int]:
    """(m, k, n) of the model's largest product: batch x 1024 x 1024 for the MLP (its widest
    layer), the im2col product of the most expensive conv layer for the CNN."""
    return reference(model, batch, learner)[0]


def reference(model, batch, learner):
    """(the largest product's (m, k, n), the conv layer's (batch, c_in, h, w, c_out, kernel)
    or None)."""
    if model == "mlp":
        return (batch, 1024, 1024), None
    stack = learner.stack
    with torch.no_grad():
        x = torch.zeros(1, *stack.input_shape, device=stack.layers[0].weight.device)
        inputs, drives = stack.forward_cache(x)
    best = (0, None, None)
    for layer, h, a in zip(stack.layers, inputs, drives):
        m = batch * math.prod(a.shape[2:])
        shape = (m, layer.fan_in, layer.out_features)
        conv = (batch, *h.shape[1:], layer.out_features, layer.kernel_size) if layer.kind == "conv" else None
        if math.prod(shape) > best[0]:
            best = (math.prod(shape), shape, conv)
    return best[1], best[2]


def time_rule(learner, bp, ref, xs, ys, steps, warmup, rounds, device):
    """Per round: seconds per step of the rule, of BP, and the reference's FLOP rate."""
    time_steps(learner, xs, ys, warmup, device)
    per = max(1, steps // rounds)
    own, base, rate = [], [], []
    for _ in range(rounds):
        base.append(time_steps(bp, xs, ys, per, device))
        before = ref.rate()
        own.append(time_steps(learner, xs, ys, per, device))
        # the better of the two blocks around the rule's: a load spike during one of them
        # cannot make the reference look slower than the machine was
        rate.append(max(before, ref.rate()))
    return own, base, rate


def spread(values):
    return [min(values), max(values)]


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


def summarise(rule, flops, bp_flops, own, base, rate, batch) -> dict:
    """One rule's figures from its per-round timings (medians of per-round ratios)."""
    ratios = [o / b for o, b in zip(own, base)]
    effs = [flops / o / r for o, r in zip(own, rate)]
    dt = statistics.median(own)
    return {
        "rule": rule,
        "ms_step": dt * 1e3,
        "samples_s": batch / dt,
        "ratio_bp": statistics.median(ratios),
        "ratio_bp_spread": spread(ratios),
        "flops_step": flops,
        "flops_ratio_bp": flops / bp_flops if bp_flops else None,
        "gflops_s": flops / dt / 1e9,
        "efficiency": statistics.median(effs),
        "efficiency_spread": spread(effs),
        "matmul_gflops_s": statistics.median(rate) / 1e9,
    }


def print_table(rows, ref_shape):
    print(f"{'rule':10s} {'ms/step':>8s} {'x BP time':>10s} {'(spread)':>13s} {'x BP FLOPs':>10s} {'GFLOP/s':>8s} "
          f"{'of matmul':>9s} {'(spread)':>15s}")
    for r in rows:
        lo, hi = r["ratio_bp_spread"]
        elo, ehi = r["efficiency_spread"]
        fr = f"{r['flops_ratio_bp']:10.2f}" if r["flops_ratio_bp"] is not None else f"{'-':>10s}"
        print(f"{r['rule']:10s} {r['ms_step']:8.1f} {r['ratio_bp']:10.2f} {f'({lo:.2f}-{hi:.2f})':>13s} {fr} "
              f"{r['gflops_s']:8.1f} {r['efficiency']:9.1%} {f'({elo:.0%}-{ehi:.0%})':>15s}")
    m, k, n = ref_shape
    rates = [r["matmul_gflops_s"] for r in rows]
    print(f"\nreference matmul {m}x{k} @ {k}x{n} (CNN: or that conv layer, the faster): {min(rates):.1f}-{max(rates):.1f} "
          "GFLOP/s (median per rule's rounds). "
          "Ratios and efficiencies are medians over rounds of per-round ratios; FLOPs as FlopCounterMode counts "
          "them (matrix products and convolutions only).")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rules", default=",".join(RULES))
    ap.add_argument("--model", default="mlp", choices=["mlp", "cnn"])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=5, help="alternating BP/rule/matmul timing rounds per rule")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--opt", action="append", default=[], metavar="RULE.KEY=VALUE",
                    help="a rule option, e.g. pc.T=8 (repeatable; VALUE is read as JSON when it parses)")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE ('-': stdout)")
    args = ap.parse_args(argv)
    options = parse_options(args.opt)
    rules = [r for r in args.rules.split(",") if r]
    unknown = [r for r in rules if r not in RULES]
    if unknown:
        print(f"--rules: unknown rule(s) {', '.join(unknown)}; known: {', '.join(RULES)}", file=sys.stderr)
        raise SystemExit(2)
    try:
        device = resolve_device(args.device)
    except ValueError as e:
        print(e, file=sys.stderr)
        raise SystemExit(2) from None
    if args.threads:
        torch.set_num_threads(args.threads)
    if "bp" in rules:
        rules.remove("bp")
    rules.insert(0, "bp")
    input_shape = (1, 28, 28)
    widths = (1024, 512, 256)
    print(f"device {device}, model {args.model}, batch {args.batch}, torch threads {torch.get_num_threads()}"
          + (f", options {options}" if options else ""), flush=True)
    xs, ys = make_batches(args.batch, device, input_shape)
    bp = make_learner("bp", args.model, args.batch, device, widths, input_shape)
    bp_flops = count_flops(bp, xs[0], ys[0])
    ref_shape, ref_conv = reference(args.model, args.batch, bp)
    ref = Matmul(*ref_shape, device, conv=ref_conv)
    time_steps(bp, xs, ys, args.warmup, device)
    rows, skipped = [], {}
    for rule in rules:
        try:
            learner = bp if rule == "bp" else make_learner(rule, args.model, args.batch, device, widths, input_shape,
                                                           options)
            flops = bp_flops if rule == "bp" else count_flops(learner, xs[0], ys[0])
            timings = time_rule(learner, bp, ref, xs, ys, args.steps, args.warmup, args.rounds, device)
        except Exception as e:  # a rule that can't run this model is reported, not fatal
            skipped[rule] = f"{type(e).__name__}: {str(e).splitlines()[0]}"
            print(f"{rule:10s} skipped: {skipped[rule]}", flush=True)
            continue
        rows.append(summarise(rule, flops, bp_flops, *timings, args.batch))
    print_table(rows, ref_shape)
    if args.json:
        out = {
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "torch": torch.__version__, "device": str(device), "model": args.model, "batch": args.batch,
            "threads": torch.get_num_threads(), "options": options, "steps": args.steps, "rounds": args.rounds,
            "flops_counted_by": "torch.utils.flop_counter.FlopCounterMode (matmul and convolution only)",
            "reference_matmul": list(ref_shape), "reference_conv": list(ref_conv) if ref_conv else None,
            "rules": rows, "skipped": skipped,
        }
        text = json.dumps(out, indent=2)
        if args.json == "-":
            print(text)
        else:
            with open(args.json, "w") as f:
                f.write(text + "\n")


if __name__ == "__main__":
    main()
