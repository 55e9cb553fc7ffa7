"""Inference on brain-similarity scores, as in Schuett et al. 2023 ("Statistical inference on
representational geometries", eLife) and rsatoolbox 0.3.2's `eval_dual_bootstrap`.

## The dual bootstrap
Where a target has several subject RDMs (hIT: 4), each bootstrap sample draws subjects and
stimuli with replacement; the evaluation of a model is the mean over the drawn subjects of
its similarity with each drawn subject's RDM on the drawn stimuli (`dual_evaluations`; the
stimulus part reuses `rsa.bootstrap_compare`, which needs one sort per RDM, so the subject
draw is only a weighted mean over subject columns). As in rsatoolbox, three schemes are run
on the same draws: both factors, subjects only, stimuli only, and the variance of an
evaluation (or of a difference of two) is the corrected combination of the three
(`rsatoolbox.util.inference_util.extract_variances`, the small-sample formula with the numbers
of subjects and stimuli). Where a target has one RDM (mIT), only stimuli are resampled and
the variance is rsatoolbox's stimulus-bootstrap variance (n/(n-1) corrected).
`tests/test_brain_inference.py` pins the evaluations and p values to rsatoolbox's
`eval_dual_bootstrap` + `Result.test_all` on a small example with the same draws.

## Seeds
A rule's score is the mean over its trained seeds (and an untrained baseline's the mean over
its seeds). Seeds are independent networks, so the seed variance of that mean (the variance
over seeds / number of seeds) is added to the bootstrap variance of the rule's score and to
that of any difference involving it. With one seed this term is absent, and the result says so.

## Tests
t tests with rsatoolbox's degrees of freedom (min(subjects, stimuli) - 1): each group against
zero (one-sided), against the lower noise ceiling, and every pair of groups (two-sided);
p values of each family (zero, ceiling, pairs) are corrected for the false discovery rate
(Benjamini-Hochberg) within a target. The noise ceiling in each sample is computed from the
drawn subjects' similarities with the mean of the other subjects' (rank-pooled, as rsatoolbox
pools) RDMs; that mean is taken over all other subjects, not only the drawn ones (a slight
simplification of rsatoolbox, which pools the drawn ones: it keeps the computation to one
comparison per subject).

## Verdicts
`verdict_lines` writes the plain-language result for each target: a rule is named more
brain-like than another only where the corrected pairwise test says so; rules not
distinguishable from each other, from their untrained networks or from the pixel RDM are
listed as such; groups with flat (constant) RDMs are uninformative and never ranked.
"""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import numpy as np

from . import rsa

__all__ = ["subject_samples", "subject_counts", "dual_evaluations", "ceiling_evaluations", "variances",
           "fdr", "t_test", "partial_spearman", "verdict_lines", "ALPHA"]

ALPHA = 0.05


def subject_samples(n_subjects: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, S) drawn subject indices; independent of the stimulus draws."""
    return np.random.default_rng([seed, 1]).integers(0, n_subjects, size=(n_boot, n_subjects))


def subject_counts(samples: np.ndarray, n_subjects: int) -> np.ndarray:
    """(B, S) draws -> (B, S) counts of each subject (sum S)."""
    c = np.zeros((len(samples), n_subjects))
    np.add.at(c, (np.repeat(np.arange(len(samples)), samples.shape[1]), samples.ravel()), 1.0)
    return c


def _schemes(point: np.ndarray, boot: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """point (K, S), boot (B, K, S) stimulus-resampled, counts (B, S) -> (B, K, 3): both,
    subjects only, stimuli only (rsatoolbox's order)."""
    s = counts.shape[1]
    both = np.einsum("bks,bs->bk", boot, counts) / s
    rdm = counts @ point.T / s
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        pattern = np.nanmean(boot, axis=2)
    return np.stack([both, rdm, pattern], axis=-1)


def dual_evaluations(models: np.ndarray, subjects: np.ndarray, stim_samples: np.ndarray,
                     subj_samples: np.ndarray | None, method: str = "spearman") -> np.ndarray:
    """Evaluations (B, K, 3) of K model RDM vectors against S subject RDM vectors in the
    three bootstrap schemes (see the module docstring); with one subject, all three
    schemes are the stimulus bootstrap."""
    models, subjects = np.atleast_2d(models), np.atleast_2d(subjects)
    point = rsa.compare(models, subjects, method)
    boot = rsa.bootstrap_compare(models, subjects, stim_samples, method)
    s = len(subjects)
    counts = subject_counts(subj_samples, s) if subj_samples is not None else np.ones((len(stim_samples), s))
    return _schemes(point, boot, counts)


def pooled(subjects: np.ndarray, method: str) -> tuple[np.ndarray, np.ndarray]:
    """(leave-one-out means (S, P), mean of all (1, P)) of subject RDM vectors, pooled as
    rsatoolbox's `pool_rdm` pools for `method` (ranks for Spearman/Kendall, z-scores for
    correlations, unit norms for cosines)."""
    from scipy.stats import rankdata

    v = np.atleast_2d(np.asarray(subjects, np.float64))
    if method in ("spearman", "tau-a"):
        v = rankdata(v, axis=1)
    elif method in ("corr", "corr_cov"):
        v = (v - v.mean(1, keepdims=True)) / np.maximum(v.std(1, keepdims=True), 1e-300)
    elif method in ("cosine", "cosine_cov"):
        v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-300)
    s = len(v)
    total = v.sum(0)
    loo = (total[None] - v) / max(s - 1, 1)
    return loo, (total / s)[None]


def ceiling_evaluations(subjects: np.ndarray, stim_samples: np.ndarray, subj_samples: np.ndarray,
                        method: str = "spearman", subset: Sequence[int] | None = None) -> np.ndarray:
    """Noise ceiling (lower, upper) in each sample and scheme: (B, 2, 3); NaN for one subject."""
    subjects = np.atleast_2d(subjects)
    s = len(subjects)
    if s < 2:
        return np.full((len(stim_samples), 2, 3), np.nan)
    loo, allm = pooled(subjects, method)
    models = np.concatenate([loo, allm])
    cols = slice(None)
    if subset is not None:
        n = rsa._n_from_pairs(subjects.shape[1])
        ia, ib = np.triu_indices(n, 1)
        inside = np.zeros(n, bool)
        inside[np.asarray(subset)] = True
        cols = inside[ia] & inside[ib]
    point = rsa.compare(models[:, cols], subjects[:, cols], method)  # (S+1, S)
    boot = rsa.bootstrap_compare(models, subjects, stim_samples, method, subset=subset)  # (B, S+1, S)
    idx = np.arange(s)
    lower_p, upper_p = point[idx, idx][None], point[s][None]  # (1, S)
    lower_b, upper_b = boot[:, idx, idx][:, None], boot[:, s][:, None]  # (B, 1, S)
    counts = subject_counts(subj_samples, s)
    lo = _schemes(lower_p, lower_b, counts)[:, 0]
    up = _schemes(upper_p, upper_b, counts)[:, 0]
    return np.stack([lo, up], axis=1)


def variances(evals: np.ndarray, ceil: np.ndarray | None, n_subjects: int, n_stimuli: int
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """rsatoolbox's variance estimates from evaluations (B, M, 3) and ceilings (B, 2, 3) or
    None: (model_var (M,), diff_var (M(M-1)/2,), noise_ceil_var (M, 2) or None)."""
    from rsatoolbox.util.inference_util import extract_variances

    ok = np.isfinite(evals[:, :, 0]).all(1)
    if n_subjects > 1 and ceil is not None:
        ok &= np.isfinite(ceil[:, :, 0]).all(1)
        m = np.concatenate([evals[ok], ceil[ok]], axis=1)  # (B, M+2, 3)
        m = m - m.mean(0, keepdims=True)
        var = np.einsum("ijk,ilk->kjl", m, m) / (m.shape[0] - 1)
        mv, dv, nv = extract_variances(var, True, n_subjects, n_stimuli)
        return mv, dv, nv
    e = evals[ok, :, 2]
    e = e - e.mean(0, keepdims=True)
    var = e.T @ e / max(len(e) - 1, 1)
    mv, dv, _ = extract_variances(var, False, None, n_stimuli)
    return mv, dv, None


def dof(n_subjects: int, n_stimuli: int) -> int:
    return (min(n_subjects, n_stimuli) if n_subjects > 1 else n_stimuli) - 1


def t_test(diff: np.ndarray, var: np.ndarray, df: int, one_sided: bool = False) -> np.ndarray:
    """p of t = diff / sqrt(var) on `df` degrees of freedom (rsatoolbox's t tests)."""
    from scipy import stats

    t = np.asarray(diff, float) / np.sqrt(np.maximum(np.asarray(var, float), np.finfo(float).eps))
    if one_sided:
        return 1 - stats.t.cdf(t, df)
    return 2 * (1 - stats.t.cdf(np.abs(t), df))


def fdr(p: Sequence[float]) -> np.ndarray:
    """Benjamini-Hochberg adjusted p values (NaN kept)."""
    from scipy.stats import false_discovery_control

    p = np.asarray(p, float)
    out = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    if ok.any():
        out[ok] = false_discovery_control(np.clip(p[ok], 0, 1), method="bh")
    return out


def partial_spearman(model: np.ndarray, data: np.ndarray, control: np.ndarray) -> np.ndarray:
    """Partial Spearman correlation of model (K, P) with data (D, P) given one control RDM
    (P,): (K, D). Constant vectors give 0."""
    from scipy.stats import rankdata

    def z(v):
        r = rankdata(np.atleast_2d(v), axis=1)
        r = r - r.mean(1, keepdims=True)
        n = np.linalg.norm(r, axis=1, keepdims=True)
        return np.where(n > 0, r / np.where(n > 0, n, 1), 0.0)

    m, d, c = z(model), z(data), z(control)[0]
    rmd, rmc, rdc = m @ d.T, m @ c, d @ c
    den = np.sqrt(np.clip((1 - rmc**2)[:, None] * (1 - rdc**2)[None], 0, None))
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (rmd - rmc[:, None] * rdc[None]) / den
    return np.where(den > 1e-12, out, 0.0)


def _p(p: Any) -> str:
    if p is None or not np.isfinite(p):
        return "p -"
    return "p<0.001" if p < 0.001 else f"p={p:.3f}"


def verdict_lines(result: Any, alpha: float = ALPHA) -> list[str]:
    """Plain-text verdicts per target from a `BrainResult` with inference (see the module
    docstring); never names a winner from point estimates."""
    lines = []
    single_seed = getattr(result, "single_seed", False)
    for tg in result.targets:
        summ = {s["group"]: s for s in result.summary_for(tg)}
        info = result.inference.get(tg, {}) if getattr(result, "inference", None) else {}
        head = f"{tg}: " + (info.get("description") or "")
        trained = [g for g, s in summ.items() if s["kind"] == "trained"]
        flat = [g for g in summ if summ[g].get("uninformative")]
        if info.get("target_flat"):
            lines.append(f"{head}the brain RDM is flat (constant): uninformative, nothing ranked")
            continue
        ranked = [g for g in trained if g not in flat]
        parts = []
        if not ranked:
            parts.append("no informative trained network")
        sig = [t for t in result.tests if t["target"] == tg and t.get("family") == "pair"
               and t["group_a"] in ranked and t["group_b"] in ranked]
        better = []
        for t in sig:
            if t.get("p_fdr") is not None and np.isfinite(t["p_fdr"]) and t["p_fdr"] < alpha:
                a, b = (t["group_a"], t["group_b"]) if t["diff"] > 0 else (t["group_b"], t["group_a"])
                better.append((a, b, abs(t["diff"]), t["p_fdr"]))
        if len(ranked) > 1:
            wins = {g: {b for a, b, *_ in better if a == g} for g in ranked}
            top = [g for g in ranked if len(wins[g]) == len(ranked) - 1]
            if top:
                parts.append(f"most brain-like: {top[0]} (above every other rule, FDR-corrected)")
            if better:
                parts.append("more brain-like: " + ", ".join(f"{a} > {b} ({d:+.3f}, {_p(p)} FDR)"
                                                              for a, b, d, p in better))
            n_pairs = len(ranked) * (len(ranked) - 1) // 2
            if not better:
                parts.append("not distinguishable from each other: " + ", ".join(ranked))
            elif len(better) < n_pairs:
                parts.append(f"the other {n_pairs - len(better)} of {n_pairs} rule pairs are not distinguishable")
        datas = sorted({str(summ[g].get("data")) for g in ranked})
        if len(datas) > 1:  # does the training set change the ranking?
            per = []
            for dname in datas:
                inside = [(a, b) for a, b, *_ in better if str(summ[a].get("data")) == dname
                          and str(summ[b].get("data")) == dname]
                per.append(f"{dname}: " + (", ".join(f"{a} > {b}" for a, b in inside) if inside
                                          else "no rule pair distinguishable"))
            if better:
                parts.append("by training set: " + "; ".join(per))
            differ, same_rule = [], []
            for t in sig:
                ga, gb = summ[t["group_a"]], summ[t["group_b"]]
                if (ga.get("rule"), ga.get("model")) != (gb.get("rule"), gb.get("model")) or ga.get("data") == gb.get("data"):
                    continue
                name = f"{ga.get('rule')} {ga.get('model')} ({ga.get('data')} vs {gb.get('data')})"
                q = t.get("p_fdr")
                if q is not None and np.isfinite(q) and q < alpha:
                    differ.append(f"{name} {t['diff']:+.3f}")
                else:
                    same_rule.append(name)
            if differ:
                parts.append("the training set changes the score of: " + ", ".join(differ))
            if same_rule:
                parts.append("the training set does not distinguishably change: " + ", ".join(same_rule))
        for fam, word in (("untrained", "their untrained nets"), ("pixels", "the pixel RDM")):
            same, above, below = [], [], []
            for g in ranked:
                p, d = summ[g].get(f"p_{fam}"), summ[g].get(f"diff_{fam}")
                if p is None or d is None or not np.isfinite(p):
                    continue
                (above if p < alpha and d > 0 else below if p < alpha else same).append(g)
            if same:
                parts.append(f"not distinguishable from {word}: " + ", ".join(same))
            if above:
                parts.append(f"above {word}: " + ", ".join(above))
            if below:
                parts.append(f"below {word}: " + ", ".join(below))
        zero = [g for g in ranked if not (summ[g].get("p_zero") is not None and summ[g]["p_zero"] < alpha)]
        if zero:
            parts.append("not above zero: " + ", ".join(zero))
        at_ceiling = [g for g in ranked if summ[g].get("p_ceiling") is not None and np.isfinite(summ[g]["p_ceiling"])
                      and summ[g]["p_ceiling"] >= alpha]
        if at_ceiling:
            parts.append("not distinguishable from the noise ceiling: " + ", ".join(at_ceiling))
        if flat:
            parts.append("uninformative (flat RDM), not ranked: " + ", ".join(flat))
        if single_seed:
            parts.append("one seed per rule: seed variance not included")
        lines.append(head + "; ".join(parts))
    return lines
