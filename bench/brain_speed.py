"""Speed of the brain comparison at full size: `python bench/brain_speed.py`.

Scores R rules x L layers (plus, per rule, an untrained baseline with S seeds, and the
reference models) on the 92 stimuli against every target RDM with B bootstrap resamples,
and prints the time of each step. Activations are random (the time does not depend on
what the layers compute); the targets are the fetched Kriegeskorte data when present,
otherwise random RDMs of the same number (4 hIT subjects, hIT group, mIT, 16 behaviour).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from bioplausible.brain.compare import BrainComparison, Source
from bioplausible.brain.recordings import Recordings, Target, load_kriegeskorte92
from bioplausible.brain.rsa import activation_rdm, to_vectors
from bioplausible.data.base import DataError


def _recordings(seed: int) -> Recordings:
    try:
        return load_kriegeskorte92()
    except DataError:
        rng = np.random.default_rng(seed)

        def rdms(k):
            return np.stack([activation_rdm(rng.normal(size=(92, 50)))[0] for _ in range(k)])

        refs = {f"model{i}": rdms(1)[0] for i in range(8)}
        targets = {"hIT": Target("hIT", rdms(4), list("ABCD")), "hIT_316vx": Target("hIT_316vx", rdms(1), ["g"]),
                   "mIT_674": Target("mIT_674", rdms(1), ["g"]),
                   "behaviour": Target("behaviour", rdms(16), [f"s{i}" for i in range(16)])}
        return Recordings("random92", [str(i) for i in range(92)], None, None, targets, refs)


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rules", type=int, default=12)
    ap.add_argument("--layers", type=int, default=5)
    ap.add_argument("--untrained-seeds", type=int, default=3)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--method", default="spearman")
    ap.add_argument("--units", type=int, default=512, help="units per layer")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    rec = _recordings(0)
    rng = np.random.default_rng(1)
    t0, c0 = time.perf_counter(), time.process_time()
    bc = BrainComparison(rec, a.method, a.n_boot, seed=0)
    for r in range(a.rules):
        for s in [None] + list(range(a.untrained_seeds)):
            acts = [rng.normal(size=(92, a.units)) for _ in range(a.layers)]
            vecs = np.concatenate([to_vectors(activation_rdm(x)[0]) for x in acts])
            kind = "trained" if s is None else "untrained"
            bc.add(Source(f"{kind}:{r}:{s}", kind, f"rule{r}" if s is None else f"untrained rule{r}",
                          [f"layer{i}" for i in range(a.layers)], vecs, {"run_id": str(r), "rule": f"rule{r}"}))
    bc.add_references()
    t1 = time.perf_counter()
    res = bc.run()
    t2, c2 = time.perf_counter(), time.process_time()
    k = sum(len(s.layers) for s in bc.sources)
    d = sum(res.ceilings[t]["n_subjects"] for t in res.targets)
    out = {"rdms_s": t1 - t0, "point_s": res.seconds["point"], "bootstrap_s": res.seconds["bootstrap"],
           "total_s": t2 - t0, "cpu_s": c2 - c0}
    print(f"{a.rules} rules x {a.layers} layers (+{a.untrained_seeds} untrained seeds each, "
          f"{len(rec.references)} reference models) = {k} model RDMs; {len(res.targets)} targets = {d} brain RDMs "
          f"({rec.name}); {a.n_boot} resamples; method {a.method}; {torch.get_num_threads()} threads")
    print("  ".join(f"{key} {v:.1f}" for key, v in out.items()))
    return out


if __name__ == "__main__":
    main()
