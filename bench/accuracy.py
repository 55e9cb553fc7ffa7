"""Test accuracy of each rule on full MNIST / Fashion-MNIST with the paper's MLP and the CNN,
with the tuned preset's settings (`bioplausible/experiments/presets/tuned.toml`, their one
home; this script is a thin wrapper over it, the same cells as
`bioplausible compare --preset tuned`).

    bioplausible data fetch mnist && bioplausible data fetch fashion-mnist
    python bench/accuracy.py [--rules bp,fa] [--data mnist,fashion-mnist] [--models mlp,cnn]
                             [--epochs N] [--lr LR] [--widths 1024,512,256] [--seed 0] [--store results/bench.sqlite] [--device auto]
                             [--opt wp.n_perturbations=16 ...]

Every run is recorded in the results store (config, seed, versions, timings, the network
that ran), so the table printed at the end, and `bioplausible report --store ...`, read only
recorded runs; a finished run is not repeated (delete it or pass --force). --epochs, --lr,
--widths and --opt apply over the tuned settings (through `sweep.cell_settings`, as a last
table), so a changed setting is a new run.
"""

from __future__ import annotations

import argparse
import time

import torch

from bioplausible.algorithms import RULES, architectures, resolve, validate_options
from bioplausible.config import RunConfig
from bioplausible.data import DataError, load
from bioplausible.experiments import sweep
from bioplausible.experiments.fingerprint import code_fingerprint
from bioplausible.experiments.runner import run
from bioplausible.experiments.store import Store
from speed import parse_options  # bench/ is this script's directory, first on sys.path


def tuned(epochs: int | None = None, widths: tuple[int, ...] | None = None, options: dict[str, dict] | None = None,
          lr: float | None = None) -> sweep.Sweep:
    """The tuned preset, with the command line's settings applied over every cell."""
    sw = sweep.load_sweep(sweep.preset_path("tuned"))
    over = {"epochs": epochs, "widths": widths, "lr": lr}
    sw.overrides = {k: v for k, v in over.items() if v is not None}
    if options:
        sw.overrides["rule_options"] = options
    return sw


def config_for(rule: str, model: str, data: str, seed: int, epochs: int | None, device: str,
               widths: tuple[int, ...] | None = None, options: dict[str, dict] | None = None,
               lr: float | None = None) -> RunConfig:
    s = sweep.cell_settings(tuned(epochs, widths, options, lr), rule, model, data)
    return resolve(RunConfig(rule=rule, model=model, data=data, seed=seed, device=device, **s))


def check_options(options: dict[str, dict]) -> None:
    """Fail on an unknown rule or option before any data is loaded or run started."""
    for rule, opts in options.items():
        try:
            validate_options(rule, opts)
        except (KeyError, ValueError) as e:
            raise SystemExit(f"--opt {rule}.{','.join(opts)}: {e}") from None


def print_table(rows: list[dict]) -> None:
    """Test accuracy and seconds per training epoch of recorded runs. Epoch times of separate
    runs are not comparable when the machine's load differed between them: the ratio to BP
    in one process is what `bench/speed.py` measures. A run whose code fingerprint differs
    from this checkout's (or that predates fingerprints) is marked stale."""
    print(f"\n{'rule':9s} {'model':5s} {'data':14s} {'act':>13s} {'epochs':>6s} {'test acc':>9s} {'s/epoch':>8s}  status")
    for r in rows:
        acc = r["metrics"].get("test_acc")
        et = f"{r['epoch_time']:8.1f}" if r["epoch_time"] else "       -"
        # runs recorded before the config named its activation ran the rule's default of then
        act = r["config"].get("act") or "not recorded"
        print(f"{r['rule']:9s} {r['model']:5s} {r['data']:14s} {act:>13s} {r['config']['epochs']:6d} "
              f"{(f'{acc:.2%}' if acc is not None else '-'):>9s} {et}  {r['status']}"
              f"{'' if r.get('code') == code_fingerprint(r['rule']) else ' (stale: other code)'}")


def latest_runs(store: Store, rules, datas, models, seed: int) -> list[dict]:
    """The most recently finished run of each (rule, model, data) cell, whatever its settings
    (the table shows its epochs and activation)."""
    out = []
    for data_name in datas:
        for model in models:
            for rule in rules:
                got = [r for r in store.runs(rule=rule, model=model, data=data_name, seed=seed) if r["finished"]]
                if got:
                    out.append(max(got, key=lambda r: r["finished"]))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rules", default=",".join(RULES))
    ap.add_argument("--data", default="mnist,fashion-mnist")
    ap.add_argument("--models", default="mlp,cnn")
    ap.add_argument("--epochs", type=int, default=None, help="override every rule's epochs")
    ap.add_argument("--widths", default=None,
                    help="override every rule's MLP widths, e.g. 1024,512,256 (EP on the paper's MLP)")
    ap.add_argument("--lr", type=float, default=None, help="override every rule's learning rate")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--store", default="results/bench.sqlite")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--opt", action="append", default=[], metavar="RULE.KEY=VALUE",
                    help="a rule option over the bench's settings, e.g. wp.n_perturbations=16 (repeatable)")
    ap.add_argument("--report", action="store_true",
                    help="train nothing: print the newest recorded run of every rule/model/data cell")
    args = ap.parse_args()
    options = parse_options(args.opt)
    check_options(options)
    if args.report:
        print_table(latest_runs(Store(args.store), args.rules.split(","), args.data.split(","),
                                args.models.split(","), args.seed))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    widths = tuple(int(w) for w in args.widths.split(",")) if args.widths else None
    store = Store(args.store)
    rows = []
    for data_name in args.data.split(","):
        try:
            data = load(data_name)
        except DataError as e:
            print(f"skipping {data_name}: {e}")
            continue
        for model in args.models.split(","):
            for rule in args.rules.split(","):
                if model not in architectures(rule):
                    print(f"skipping {rule}/{model}: the rule does not support this model")
                    continue
                cfg = config_for(rule, model, data_name, args.seed, args.epochs, args.device, widths, options,
                                 args.lr)
                t0 = time.perf_counter()

                def on_epoch(r, rule=rule, model=model):
                    print(f"  {rule}/{model}/{data_name} epoch {r['epoch']}: loss {r['train_loss']:.4f} "
                          f"val {r['val_acc']:.4f} test {r['test_acc']:.4f} ({r['epoch_time']:.1f}s)", flush=True)

                out = run(cfg, store, force=args.force, data=data, on_epoch=on_epoch)
                got = store.runs(id=cfg.key())[0]
                state = "recorded earlier" if out is None else f"{time.perf_counter() - t0:.0f}s"
                print(f"{rule}/{model}/{data_name}: {got['status']} test {got['metrics'].get('test_acc')} ({state})",
                      flush=True)
                rows.append(got)
    print_table(rows)

if __name__ == "__main__":
    main()
