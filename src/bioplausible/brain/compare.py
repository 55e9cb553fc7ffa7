"""Score networks against brain RDMs: layer-wise profile, best layer, intervals, baselines.

`BrainComparison` collects *sources* (a trained run, the same architecture untrained with
several seeds, the classic model RDMs shipped with the data), each a list of layer RDMs,
and scores all of them in one go against every target (brain area), with one shared set of
bootstrap resamples so that any two sources can be compared by a paired test.

For each source x layer x target: similarity over all stimuli (mean over the target's
subject RDMs), its 95% bootstrap interval, the noise ceiling and the fraction of it.
For each source x target: the best layer, chosen and scored on different halves of the
stimuli (see `bioplausible.brain.rsa`), with interval and fraction of the (half-set) noise
ceiling. Sources are averaged into groups (one table row: a rule over its seeds, the
untrained baseline of a rule over its seeds, one reference model), and groups are compared
pairwise (paired bootstrap on the same resamples).

`score_learner` scores one learner; `compare_runs` scores runs of a results store with
their untrained baselines (what `bioplausible brain` does).
"""

from __future__ import annotations

import datetime as _dt
import itertools
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from . import inference as infer
from . import rsa
from .recordings import Recordings
from .stimuli import resolve_mapping, to_network_input

__all__ = ["Source", "BrainComparison", "BrainResult", "layer_rdms", "score_learner", "compare_runs",
           "DEFAULT_UNTRAINED_SEEDS"]

DEFAULT_UNTRAINED_SEEDS = 3
UNTRAINED_SEED_BASE = 10_000  # untrained seeds never coincide with a training seed's init


@dataclass
class Source:
    key: str  # unique: run:<id> | untrained:<id>:s<seed> | reference:<name>
    kind: str  # trained | untrained | reference
    group: str  # the table row it is averaged into
    layers: list[str]
    vectors: np.ndarray  # (L, P) RDM upper triangles
    info: dict[str, Any] = field(default_factory=dict)  # run_id, rule, model, data, seed
    notes: list[str] = field(default_factory=list)


@dataclass
class BrainResult:
    recordings: str
    method: str
    distance: str
    n_boot: int
    seed: int
    split_seed: int
    targets: list[str]
    rows: list[dict[str, Any]]  # source x layer x target
    summary: list[dict[str, Any]]  # group x target
    tests: list[dict[str, Any]]  # group pairs x target
    ceilings: dict[str, dict[str, Any]]
    sources: list[Source]
    target_rdms: dict[str, np.ndarray]  # target -> mean RDM (N, N)
    halves: tuple[np.ndarray, np.ndarray]
    notes: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    baseline_of: dict[str, str] = field(default_factory=dict)  # trained group -> untrained group
    inference: dict[str, dict[str, Any]] = field(default_factory=dict)  # target -> n_subjects, dof, notes
    single_seed: bool = False  # every trained group has one seed: seed variance not in the intervals

    def summary_for(self, target: str) -> list[dict[str, Any]]:
        return [s for s in self.summary if s["target"] == target]

    def test(self, target: str, a: str, b: str) -> dict[str, Any] | None:
        for t in self.tests:
            if t["target"] == target and {t["group_a"], t["group_b"]} == {a, b}:
                if t["group_a"] == a:
                    return t
                return {**t, "group_a": a, "group_b": b, "diff": -t["diff"], "ci_low": -t["ci_high"], "ci_high": -t["ci_low"]}
        return None


def _flatten_acts(acts: dict[str, Any]) -> list[tuple[str, np.ndarray]]:
    out = []
    for name, a in acts.items():
        if isinstance(a, torch.Tensor):
            a = a.detach().float().cpu().numpy()
        a = np.asarray(a, dtype=np.float64)
        out.append((str(name), a.reshape(a.shape[0], -1)))
    return out


_STIM_CACHE: dict[tuple[Any, ...], tuple[Recordings, torch.Tensor]] = {}


def _stimuli(recordings: Recordings, meta: dict[str, Any], invert: bool = False, mapping: str = "auto") -> torch.Tensor:
    """The stimuli at a network's input format (see `bioplausible.brain.stimuli`); cached, as
    every run of one training set sees the same tensor."""
    mode = "invert" if invert else resolve_mapping(mapping, meta.get("data"))
    key = (id(recordings), tuple(meta["input_shape"]), tuple(np.ravel(meta["mean"]).tolist()),
           tuple(np.ravel(meta["std"]).tolist()), mode)
    hit = _STIM_CACHE.get(key)
    if hit is None or hit[0] is not recordings:
        if len(_STIM_CACHE) > 16:
            _STIM_CACHE.clear()
        hit = _STIM_CACHE[key] = (recordings, to_network_input(recordings.images, meta["input_shape"], meta["mean"],
                                                               meta["std"], mapping=mode))
    return hit[1]


def layer_rdms(learner: Any, meta: dict[str, Any], recordings: Recordings, distance: str = "correlation",
               invert: bool = False, batch_size: int = 256, mapping: str = "auto"
               ) -> tuple[list[str], np.ndarray, list[str]]:
    """Show the stimuli to the learner (at its input format) and return (layer names,
    RDM vectors (L, P), notes) in the learner's layer order (input to output)."""
    if recordings.images is None:
        raise rsa.RSAError(f"{recordings.name}: no stimulus images to show to a network")
    for k in ("input_shape", "mean", "std"):
        if k not in meta:
            raise rsa.RSAError(f"run metadata lacks {k!r}")
    x = _stimuli(recordings, meta, invert, mapping)
    if hasattr(learner, "eval"):
        learner.eval()
    chunks: list[dict[str, Any]] = []
    # a stochastic forward pass (Poisson spikes, noise) gives the same RDMs on every call
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        for i in range(0, len(x), batch_size):
            chunks.append(learner.activations(x[i : i + batch_size]))
    if not chunks or not chunks[0]:
        raise rsa.RSAError("the learner returned no activations")
    names = list(chunks[0])
    acts = {k: torch.cat([torch.as_tensor(c[k]) for c in chunks]) for k in names}
    layers, vecs, notes = [], [], []
    for name, a in _flatten_acts(acts):
        if a.shape[0] != recordings.n_stimuli:
            raise rsa.RSAError(f"layer {name!r} gave {a.shape[0]} patterns for {recordings.n_stimuli} stimuli")
        rdm, w = rsa.activation_rdm(a, distance)
        notes.extend(f"layer {name}: {m}" for m in w)
        layers.append(name)
        vecs.append(rsa.to_vectors(rdm)[0])
    return layers, np.stack(vecs), notes


def _mean_cols(sim: np.ndarray, slices: list[slice]) -> np.ndarray:
    """(..., D) subject columns -> (..., T) target means."""
    with np.errstate(invalid="ignore"), _quiet():
        return np.stack([np.nanmean(sim[..., s], axis=-1) if s.stop - s.start > 1 else sim[..., s.start]
                         for s in slices], axis=-1)


def _nanargmax(v: np.ndarray) -> int | None:
    if not np.isfinite(v).any():
        return None
    return int(np.nanargmax(np.where(np.isfinite(v), v, -np.inf)))


class BrainComparison:
    """Collect sources, then `run()` once (see the module docstring)."""

    def __init__(self, recordings: Recordings, method: str = "spearman", n_boot: int = 1000, seed: int = 0,
                 distance: str = "correlation", split_seed: int = 0, targets: Sequence[str] | None = None,
                 invert: bool = False, mapping: str = "auto") -> None:
        self.rec = recordings.check()
        self.mapping = "invert" if invert else mapping
        resolve_mapping(self.mapping, None)  # an unknown name fails here, before any work
        self.method = rsa.check_method(method)
        self.distance = rsa.check_distance(distance)
        if n_boot < 0:
            raise rsa.RSAError(f"n_boot must be >= 0, got {n_boot}")
        self.n_boot, self.seed, self.split_seed, self.invert = int(n_boot), int(seed), int(split_seed), invert
        names = list(targets) if targets else list(recordings.targets)
        unknown = [t for t in names if t not in recordings.targets]
        if unknown:
            raise rsa.RSAError(f"unknown target {unknown[0]!r}; {recordings.name} has {', '.join(recordings.targets)}")
        self.targets = names
        self.sources: list[Source] = []
        self.notes: list[str] = []
        self.baseline_of: dict[str, str] = {}  # trained group -> its untrained baseline's group

    # -- adding sources -----------------------------------------------------------------
    def add(self, source: Source) -> Source:
        if any(s.key == source.key for s in self.sources):
            raise rsa.RSAError(f"source {source.key!r} added twice")
        p = self.rec.n_stimuli * (self.rec.n_stimuli - 1) // 2
        v = np.atleast_2d(np.asarray(source.vectors, np.float64))
        if v.ndim == 3:
            v = rsa.to_vectors(v)
        if v.shape[1] != p or len(v) != len(source.layers):
            raise rsa.RSAError(f"source {source.key!r}: RDMs {v.shape} do not match {len(source.layers)} layers "
                               f"x {self.rec.n_stimuli} stimuli")
        source.vectors = v
        self.sources.append(source)
        return source

    def add_learner(self, learner: Any, meta: dict[str, Any], kind: str = "trained", key: str | None = None,
                    group: str | None = None, seed: int | None = None) -> Source:
        layers, vecs, notes = layer_rdms(learner, meta, self.rec, self.distance, mapping=self.mapping)
        run_id = meta.get("id")
        rule = meta.get("rule", "network")
        if kind == "trained":
            key = key or f"run:{run_id}"
            group = group or str(rule)
        else:
            key = key or f"untrained:{run_id}:s{seed}"
            group = group or f"untrained {rule}"
            self.baseline_of.setdefault(str(rule), group)
        info = {"run_id": run_id, "rule": rule, "model": meta.get("model"), "data": meta.get("data"),
                "seed": seed if seed is not None else meta.get("seed")}
        return self.add(Source(key, kind, group, layers, vecs, info, notes))

    def add_pixels(self, meta: dict[str, Any], group: str | None = None) -> Source:
        """The RDM of exactly the input a network with `meta`'s input format and training set
        sees (one per training set); the baseline any layer should beat."""
        x = _stimuli(self.rec, meta, mapping=self.mapping).reshape(self.rec.n_stimuli, -1).numpy()
        rdm, notes = rsa.activation_rdm(x, self.distance)
        data = meta.get("data")
        return self.add(Source(f"pixels:{data}", "pixels", group or f"pixels {data}", ["input"], rsa.to_vectors(rdm),
                               {"run_id": None, "rule": None, "model": "pixels", "data": data, "seed": None}, notes))

    def _pixel_sources(self) -> dict[Any, int]:
        """Training set -> index of its pixel source (None -> the first one)."""
        out: dict[Any, int] = {}
        for i, s in enumerate(self.sources):
            if s.kind == "pixels":
                out.setdefault(s.info.get("data"), i)
                out.setdefault(None, i)
        return out

    def add_references(self, names: Iterable[str] | None = None) -> list[Source]:
        out = []
        for name in names if names is not None else self.rec.references:
            r = self.rec.references[name]
            out.append(self.add(Source(f"reference:{name}", "reference", name, [name], rsa.to_vectors(r),
                                       {"run_id": None, "rule": None, "model": name, "data": None, "seed": None})))
        return out

    def _layer_profile(self, members: list[int], owner: np.ndarray, scores: np.ndarray) -> dict[str, float]:
        """Mean over a group's members of each layer's score (layers matched by name)."""
        acc: dict[str, list[float]] = {}
        for si in members:
            for name, k in zip(self.sources[si].layers, np.flatnonzero(owner == si)):
                acc.setdefault(name, []).append(float(scores[k]))
        with _quiet():
            return {k: float(np.nanmean(v)) for k, v in acc.items()}

    # -- the analysis -------------------------------------------------------------------
    def run(self) -> BrainResult:
        import time

        if not self.sources:
            raise rsa.RSAError("nothing to score: no networks or reference models")
        t0 = time.perf_counter()
        rec, method = self.rec, self.method
        n = rec.n_stimuli
        models = np.concatenate([s.vectors for s in self.sources])
        owner = np.concatenate([[i] * len(s.layers) for i, s in enumerate(self.sources)])
        data_parts, slices, start = [], [], 0
        for t in self.targets:
            v = rsa.to_vectors(rec.targets[t].rdms)
            data_parts.append(v)
            slices.append(slice(start, start + len(v)))
            start += len(v)
        data = np.concatenate(data_parts)
        half_a, half_b = rsa.split_halves(n, self.split_seed, rec.categories)
        ia, ib = np.triu_indices(n, 1)
        in_a, in_b = np.zeros(n, bool), np.zeros(n, bool)
        in_a[half_a], in_b[half_b] = True, True
        pa, pb = in_a[ia] & in_a[ib], in_b[ia] & in_b[ib]

        # point estimates (rsatoolbox)
        full = _mean_cols(rsa.compare(models, data, method), slices)  # (K, T)
        sa_raw = rsa.compare(models[:, pa], data[:, pa], method)  # (K, D): per subject RDM
        sb_raw = rsa.compare(models[:, pb], data[:, pb], method)
        sa, sb = _mean_cols(sa_raw, slices), _mean_cols(sb_raw, slices)
        ceil: dict[str, dict[str, Any]] = {}
        for t, s in zip(self.targets, slices):
            subj = data[s]
            lo, up = rsa.noise_ceiling(subj, method)
            la, ua = rsa.noise_ceiling(subj[:, pa], method)
            lb, ub = rsa.noise_ceiling(subj[:, pb], method)
            ceil[t] = {"target": t, "n_subjects": len(subj), "noise_lower": lo, "noise_upper": up,
                       "cv_noise_lower": (la + lb) / 2, "cv_noise_upper": (ua + ub) / 2,
                       "description": rec.targets[t].description}
        t1 = time.perf_counter()

        # bootstrap: one set of resamples for every source, target and half
        if self.n_boot > 0:
            samples = rsa.bootstrap_samples(n, self.n_boot, self.seed)
            bf = _mean_cols(rsa.bootstrap_compare(models, data, samples, method), slices)  # (B, K, T)
            ba_raw = rsa.bootstrap_compare(models, data, samples, method, subset=half_a)  # (B, K, D)
            bb_raw = rsa.bootstrap_compare(models, data, samples, method, subset=half_b)
            ba, bb = _mean_cols(ba_raw, slices), _mean_cols(bb_raw, slices)
        else:
            samples = None
            bf = ba = bb = np.full((1, len(models), len(self.targets)), np.nan)
            ba_raw = bb_raw = np.full((1, len(models), len(data)), np.nan)
        t2 = time.perf_counter()
        lo_f, hi_f = rsa.percentile_ci(bf)

        now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        rows: list[dict[str, Any]] = []
        cv_boot: dict[tuple[int, int], np.ndarray] = {}
        cv_point: dict[tuple[int, int], float] = {}
        chosen: dict[tuple[int, int], tuple[int | None, int | None]] = {}
        for si, src in enumerate(self.sources):
            idx = np.flatnonzero(owner == si)
            for ti, t in enumerate(self.targets):
                c = ceil[t]
                la = _nanargmax(sa[idx, ti])
                lb = _nanargmax(sb[idx, ti])
                chosen[si, ti] = (la, lb)
                if la is not None and lb is not None:
                    cv = 0.5 * (sb[idx[la], ti] + sa[idx[lb], ti])
                    cvb = 0.5 * (bb[:, idx[la], ti] + ba[:, idx[lb], ti])
                else:
                    cv, cvb = np.nan, np.full(len(bf), np.nan)
                cv_point[si, ti], cv_boot[si, ti] = cv, cvb
                cv_lo, cv_hi = rsa.percentile_ci(cvb)
                for li, k in enumerate(idx):
                    best = li == la
                    rows.append({
                        "source": src.key, "kind": src.kind, "group": src.group,
                        "run_id": src.info.get("run_id"), "rule": src.info.get("rule"), "model": src.info.get("model"),
                        "data": src.info.get("data"), "seed": src.info.get("seed"),
                        "recordings": rec.name, "target": t, "layer": src.layers[li], "layer_index": li,
                        "method": method, "distance": self.distance,
                        "score": full[k, ti], "ci_low": lo_f[k, ti], "ci_high": hi_f[k, ti],
                        "noise_lower": c["noise_lower"], "noise_upper": c["noise_upper"],
                        "fraction": full[k, ti] / c["noise_lower"] if c["noise_lower"] and c["noise_lower"] > 0 else np.nan,
                        "half_a": sa[k, ti], "half_b": sb[k, ti],
                        "best_layer": int(best), "best_layer_b": int(li == lb),
                        "cv_score": cv if best else np.nan, "cv_ci_low": cv_lo if best else np.nan,
                        "cv_ci_high": cv_hi if best else np.nan,
                        "cv_noise_lower": c["cv_noise_lower"] if best else np.nan,
                        "cv_noise_upper": c["cv_noise_upper"] if best else np.nan,
                        "cv_fraction": (cv / c["cv_noise_lower"] if best and c["cv_noise_lower"] > 0 else np.nan),
                        "is_baseline": int(src.kind != "trained"),
                        "n_boot": self.n_boot, "boot_seed": self.seed, "split_seed": self.split_seed, "created": now,
                    })

        # groups: mean over members of the best-layer (cross-fitted) score; inference on the
        # dual bootstrap (see bioplausible.brain.inference)
        groups: dict[str, list[int]] = {}
        for si, src in enumerate(self.sources):
            groups.setdefault(src.group, []).append(si)
        names = list(groups)
        flat_src = np.array([not rsa._informative(src.vectors, method).any() for src in self.sources])
        pixel_of = self._pixel_sources()
        summary, tests, inference = [], [], {}
        n_b = len(samples) if samples is not None else 0
        for ti, t in enumerate(self.targets):
            c = ceil[t]
            sl = slices[ti]
            subj = data[sl]
            n_subj = len(subj)
            ssamp = infer.subject_samples(n_subj, max(n_b, 1), self.seed + 7919 * (ti + 1)) if n_subj > 1 else None
            counts = infer.subject_counts(ssamp, n_subj) if ssamp is not None else np.ones((max(n_b, 1), n_subj))
            target_flat = not rsa._informative(subj, method).any()
            # per source: cross-fitted point and its three bootstrap schemes (B, 3)
            src_eval: dict[int, np.ndarray] = {}
            src_partial: dict[int, float] = {}
            for si, src in enumerate(self.sources):
                idx = np.flatnonzero(owner == si)
                la, lb = chosen[si, ti]
                if la is None or lb is None:
                    src_eval[si] = np.full((max(n_b, 1), 3), np.nan)
                    src_partial[si] = np.nan
                    continue
                cvp = 0.5 * (sb_raw[idx[la], sl] + sa_raw[idx[lb], sl])  # (S,)
                cvb = 0.5 * (bb_raw[:, idx[la], sl] + ba_raw[:, idx[lb], sl])  # (B, S)
                src_eval[si] = infer._schemes(cvp[None], cvb[:, None], counts)[:, 0]
                pix = pixel_of.get(src.info.get("data"), pixel_of.get(None))
                if pix is not None and src.kind != "pixels":
                    pv = self.sources[pix].vectors[0]
                    pb_ = infer.partial_spearman(models[idx[la]][pb], subj[:, pb], pv[pb]).mean()
                    pa_ = infer.partial_spearman(models[idx[lb]][pa], subj[:, pa], pv[pa]).mean()
                    src_partial[si] = float(0.5 * (pa_ + pb_))
                else:
                    src_partial[si] = np.nan
            if n_b and n_subj > 1:
                ce = 0.5 * (infer.ceiling_evaluations(subj, samples, ssamp, method, half_a)
                            + infer.ceiling_evaluations(subj, samples, ssamp, method, half_b))
            else:
                ce = None
            gpoint, gseedvar, geval = [], [], []
            for g in names:
                members = groups[g]
                pts = np.array([cv_point[si, ti] for si in members])
                with np.errstate(invalid="ignore"), _quiet():
                    gpoint.append(float(np.nanmean(pts)) if np.isfinite(pts).any() else np.nan)
                    fin = pts[np.isfinite(pts)]
                    gseedvar.append(float(np.var(fin, ddof=1) / len(fin)) if len(fin) > 1 else 0.0)
                    geval.append(np.nanmean(np.stack([src_eval[si] for si in members]), axis=0))
            gpoint_a, gseed = np.array(gpoint), np.array(gseedvar)
            df = infer.dof(n_subj, n)
            if n_b:
                ev = np.stack(geval, axis=1)  # (B, M, 3)
                ok = np.isfinite(ev[:, :, 0]).all(0)
                mv, dv, nv = np.full(len(names), np.nan), None, None
                if ok.any():
                    mv_ok, dv_ok, nv_ok = infer.variances(ev[:, ok], ce, n_subj, n)
                    mv[ok] = mv_ok
                    okl = np.flatnonzero(ok)
                    pos = {(a, b): k for k, (a, b) in enumerate(itertools.combinations(okl, 2))}
                    dv = (pos, dv_ok)
                    if nv_ok is not None:
                        nv = np.full(len(names), np.nan)
                        nv[ok] = nv_ok[:, 0]
            else:
                mv, dv, nv = np.full(len(names), np.nan), None, None
            tot = mv + gseed
            from scipy import stats as _st

            half_w = _st.t.ppf(0.975, df) * np.sqrt(np.maximum(tot, 0))
            p_zero = infer.t_test(gpoint_a, tot, df, one_sided=True)
            p_ceil = (infer.t_test(gpoint_a - c["cv_noise_lower"], nv + gseed, df)
                      if nv is not None else np.full(len(names), np.nan))
            kinds = [self.sources[groups[g][0]].kind for g in names]
            g_flat = [bool(flat_src[groups[g]].all()) or target_flat for g in names]
            gdata = [self.sources[groups[g][0]].info.get("data") for g in names]
            combos = list(itertools.combinations(range(len(names)), 2))
            ai_, bi_ = (np.array([c[k] for c in combos], int) for k in (0, 1))
            d_all = gpoint_a[ai_] - gpoint_a[bi_] if combos else np.zeros(0)
            v_all = np.full(len(combos), np.nan)
            if dv is not None:
                for k, (a_, b_) in enumerate(combos):
                    if (a_, b_) in dv[0]:
                        v_all[k] = dv[1][dv[0][a_, b_]]
            v_all = v_all + gseed[ai_] + gseed[bi_] if combos else v_all
            ok_p = np.isfinite(v_all) & np.isfinite(d_all)
            p_all = np.full(len(combos), np.nan)
            p_all[ok_p] = infer.t_test(d_all[ok_p], v_all[ok_p], df)
            hw_all = _st.t.ppf(0.975, df) * np.sqrt(np.maximum(v_all, 0))
            pair_rows = []
            for k, (ai, bi) in enumerate(combos):
                a, b = names[ai], names[bi]
                fam = "other"
                kk = {kinds[ai], kinds[bi]}
                if kk == {"trained"}:
                    fam = "pair"
                elif self.baseline_of.get(a) == b or self.baseline_of.get(b) == a:
                    fam = "untrained"
                elif kk == {"trained", "pixels"} and gdata[ai] == gdata[bi]:
                    fam = "pixels"
                # an uninformative (flat) RDM is never ranked
                p = np.nan if g_flat[ai] or g_flat[bi] else float(p_all[k])
                pair_rows.append({"recordings": rec.name, "target": t, "method": method, "distance": self.distance,
                                  "group_a": a, "group_b": b, "diff": float(d_all[k]),
                                  "ci_low": float(d_all[k] - hw_all[k]), "ci_high": float(d_all[k] + hw_all[k]),
                                  "p": p, "se": float(np.sqrt(max(v_all[k], 0))) if np.isfinite(v_all[k]) else np.nan,
                                  "family": fam, "n_boot": self.n_boot, "created": now})
            for fam in ("pair", "untrained", "pixels", "other"):
                rows_f = [r for r in pair_rows if r["family"] == fam]
                for r, q in zip(rows_f, infer.fdr([r["p"] for r in rows_f])):
                    r["p_fdr"] = float(q)
            tests.extend(pair_rows)
            trained_i = [i for i, k in enumerate(kinds) if k == "trained" and not g_flat[i]]
            pz = np.full(len(names), np.nan)
            pz[trained_i] = infer.fdr(p_zero[trained_i])
            pc = np.full(len(names), np.nan)
            pc[trained_i] = infer.fdr(p_ceil[trained_i])
            inference[t] = {"n_subjects": n_subj, "dof": df, "target_flat": target_flat,
                            "description": f"{n_subj} subject RDM{'s' * (n_subj > 1)}, {n} stimuli, "
                                           f"{'dual bootstrap (subjects x stimuli)' if n_subj > 1 else 'bootstrap over stimuli'}"
                                           f", t tests on {df} dof, FDR-corrected. "}

            by_pair = {(r["group_a"], r["group_b"]): r for r in pair_rows}

            def against(g: str, other: str | None) -> tuple[float, float]:
                r = by_pair.get((g, other))
                if r is not None:
                    return r["diff"], r.get("p_fdr", np.nan)
                r = by_pair.get((other, g))
                if r is not None:
                    return -r["diff"], r.get("p_fdr", np.nan)
                return np.nan, np.nan

            for gi, g in enumerate(names):
                members = groups[g]
                kind = kinds[gi]
                score = gpoint_a[gi]
                labels = [self.sources[si].layers[chosen[si, ti][0]] for si in members if chosen[si, ti][0] is not None]
                best = Counter(labels).most_common(1)[0][0] if labels else None
                data_name = self.sources[members[0]].info.get("data")
                pix = pixel_of.get(data_name, pixel_of.get(None))
                du, pu = against(g, self.baseline_of.get(g)) if kind == "trained" else (np.nan, np.nan)
                dp, pp = against(g, self.sources[pix].group) if kind == "trained" and pix is not None else (np.nan, np.nan)
                with _quiet():
                    part = float(np.nanmean([src_partial[si] for si in members]))
                summary.append({
                    "recordings": rec.name, "target": t, "method": method, "distance": self.distance,
                    "group": g, "kind": kind, "n_members": len(members), "best_layer": best,
                    "baseline": self.baseline_of.get(g), "data": data_name,
                    "rule": self.sources[members[0]].info.get("rule"), "model": self.sources[members[0]].info.get("model"),
                    "score": score, "ci_low": float(score - half_w[gi]), "ci_high": float(score + half_w[gi]),
                    "noise_lower": c["cv_noise_lower"], "noise_upper": c["cv_noise_upper"],
                    "fraction": score / c["cv_noise_lower"] if c["cv_noise_lower"] > 0 else np.nan,
                    "layer_scores": self._layer_profile(members, owner, full[:, ti]),
                    "partial": part, "se": float(np.sqrt(max(tot[gi], 0))) if np.isfinite(tot[gi]) else np.nan,
                    "seed_var": float(gseed[gi]), "p_zero": float(pz[gi]), "p_ceiling": float(pc[gi]),
                    "diff_untrained": du, "p_untrained": pu, "diff_pixels": dp, "p_pixels": pp,
                    "uninformative": int(g_flat[gi]),
                    "n_boot": self.n_boot, "created": now,
                })
        notes = list(self.notes) + [f"{s.key}: {m}" for s in self.sources for m in s.notes] + list(rec.notes)
        if self.method not in rsa.FAST_METHODS and self.n_boot:
            notes.append(f"{method}: bootstrap ran rsatoolbox on each resample (slow)")
        return BrainResult(
            rec.name, method, self.distance, self.n_boot, self.seed, self.split_seed, list(self.targets),
            rows, summary, tests, ceil, list(self.sources),
            {t: rec.targets[t].mean_rdm() for t in self.targets}, (half_a, half_b), notes,
            {"point": t1 - t0, "bootstrap": t2 - t1, "total": time.perf_counter() - t0}, dict(self.baseline_of),
            inference, all(len(groups[g]) < 2 for g in names
                           if self.sources[groups[g][0]].kind == "trained"),
        )


class _quiet:
    def __enter__(self):
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *a):
        self._w.__exit__(*a)


def score_learner(learner: Any, meta: dict[str, Any], recordings: Recordings, method: str = "spearman",
                  n_boot: int = 1000, seed: int = 0, distance: str = "correlation",
                  untrained: Sequence[Any] = (), references: bool = True,
                  targets: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Score one learner (and optional untrained learners of the same architecture, and the
    recordings' reference models) against every target; returns the per-layer rows."""
    bc = BrainComparison(recordings, method, n_boot, seed, distance, targets=targets)
    bc.add_learner(learner, meta)
    for i, u in enumerate(untrained):
        bc.add_learner(u, meta, kind="untrained", seed=UNTRAINED_SEED_BASE + i)
    if references:
        bc.add_references()
    return bc.run().rows


# settings that shape training but not the untrained network (one untrained baseline serves
# every run that differs only in these)
_TRAINING_ONLY = frozenset({"seed", "device", "epochs", "batch_size", "lr", "optimizer", "momentum", "weight_decay",
                            "lr_schedule", "val_fraction", "data_dir", "eval_batch_size"})


def _untrained_key(meta: dict[str, Any]) -> str:
    cfg = {k: v for k, v in (meta.get("config") or {}).items() if k not in _TRAINING_ONLY}
    return json.dumps({"rule": meta.get("rule"), "model": meta.get("model"), "data": meta.get("data"),
                       "input_shape": list(meta.get("input_shape") or []), "config": cfg}, sort_keys=True, default=str)


def compare_runs(store: Any, selection: str, recordings: Recordings, method: str = "spearman", n_boot: int = 1000,
                 seed: int = 0, distance: str = "correlation", untrained_seeds: int = DEFAULT_UNTRAINED_SEEDS,
                 references: bool = True, targets: Sequence[str] | None = None, invert: bool = False,
                 load_learner: Callable[..., tuple[Any, dict[str, Any]]] | None = None,
                 build_untrained: Callable[..., Any] | None = None,
                 progress: Callable[[str], None] | None = None, mapping: str = "auto",
                 pixels: bool = True) -> BrainResult:
    """Score the finished runs in `store.select(selection)`, each with its untrained baseline
    (same rule and architecture, fresh weights, `untrained_seeds` seeds; shared by runs that
    differ only in training settings or seed), the pixel RDM of each training set's input
    and the reference models."""
    if load_learner is None or build_untrained is None:
        from ..experiments import runner

        load_learner = load_learner or runner.load_learner
        build_untrained = build_untrained or runner.build_untrained
    say = progress or (lambda m: None)
    runs = store.select(selection)
    done = [r for r in runs if r.get("status", "done") == "done"]
    bc = BrainComparison(recordings, method, n_boot, seed, distance, targets=targets, invert=invert, mapping=mapping)
    skipped = [r for r in runs if r not in done]
    if skipped:
        bc.notes.append(f"skipped {len(skipped)} run(s) that did not finish: "
                        + ", ".join(f"{r['id']} ({r.get('status')})" for r in skipped[:5]))
    if not done:
        raise rsa.RSAError(f"no finished runs match --runs {selection!r}" + (f" ({len(runs)} not done)" if runs else ""))
    # a table row per rule x model, and per training set when the selection has several, so
    # that different architectures are never averaged together
    vary_data = len({r.get("data") for r in done}) > 1

    def label(r: dict[str, Any]) -> str:
        return " ".join([str(r.get("rule")), str(r.get("model"))] + [str(r.get("data"))] * vary_data)

    # Untrained baselines: one per rule x architecture ("untrained <rule> <model>"), shared by
    # runs that differ only in training settings or seed.
    by_key: dict[str, str] = {}
    pixel_data: set[Any] = set()
    for r in done:
        say(f"run {r['id']} ({r.get('rule')}/{r.get('model')}/{r.get('data')})")
        learner, meta = load_learner(store, r["id"])
        meta = {**meta, "id": meta.get("id", r["id"])}
        group = label(r)
        bc.add_learner(learner, meta, group=group)
        if pixels and meta.get("data") not in pixel_data:
            pixel_data.add(meta.get("data"))
            bc.add_pixels(meta, group=f"pixels {meta.get('data')}")
        if untrained_seeds <= 0:
            continue
        key = _untrained_key(meta)
        if key in by_key:
            bc.baseline_of[group] = by_key[key]
            continue
        ugroup = f"untrained {group}"
        by_key[key] = bc.baseline_of[group] = ugroup
        for s in (UNTRAINED_SEED_BASE + i for i in range(untrained_seeds)):
            net = build_untrained(meta["config"], s, input_shape=tuple(meta["input_shape"]),
                                  num_classes=meta.get("num_classes"))
            layers, vecs, notes = layer_rdms(net, meta, recordings, bc.distance, mapping=bc.mapping)
            bc.add(Source(f"untrained:{meta['id']}:s{s}", "untrained", ugroup, layers, vecs,
                          {"run_id": meta["id"], "rule": meta.get("rule"), "model": meta.get("model"),
                           "data": meta.get("data"), "seed": s}, notes))
    if references:
        bc.add_references()
    say("scoring")
    return bc.run()
