"""Representational similarity analysis, on rsatoolbox.

RDMs are computed with `rsatoolbox.rdm.calc_rdm`, compared with `rsatoolbox.rdm.compare`,
noise ceilings come from `rsatoolbox.inference.boot_noise_ceiling`. Only the bootstrap is
vectorised here, because running rsatoolbox once per resample is far too slow for every
rule x layer x brain RDM x 1,000 resamples; it reproduces rsatoolbox's bootstrap exactly
(see `bootstrap_compare`, checked against rsatoolbox in the tests).

## Conventions
An RDM "vector" is the upper triangle (i < j, row-major: rsatoolbox's and scipy's order) of
an N x N RDM; arrays of them are (K, N(N-1)/2).

## Methods (`METHODS`)
- `spearman`: Spearman rank correlation (the default; rsatoolbox's `spearman`).
- `tau-a`: Kendall's tau-a (appropriate when models predict tied dissimilarities; slow).
- `cosine_cov`: whitened cosine, i.e. the cosine after whitening by the covariance of
  the RDM entries under i.i.d. noise (rsatoolbox's `cosine_cov`, "whitened
  unbiased RDM cosine similarity"); `corr_cov`: the same for Pearson.
- `corr`, `cosine`: plain Pearson correlation and cosine.

## Distances (`DISTANCES`), for activations or response patterns
`correlation` (1 - Pearson r between two patterns; the default), `euclidean` (rsatoolbox's
squared euclidean divided by the number of channels), `cosine` (1 - cosine), `crossnobis`
(cross-validated Mahalanobis, only for responses with repetitions: a network is
deterministic and has none).

## Bootstrap over stimuli
A resample draws N stimuli with replacement (`bootstrap_samples`). As in rsatoolbox
(`RDMs.subsample_pattern`), the resampled RDM holds every pair of drawn stimuli; pairs of
two copies of one stimulus are undefined (NaN) and excluded. So the pair (a, b) of the
original RDM enters the resampled vector c_a * c_b times, where c are the draw counts.
Spearman, Pearson and cosine are computed directly from these weights: ranks of the
resampled vector are weighted average ranks (cumulative weight below a value plus half the
tied weight), and correlations are weighted. This needs one sort per RDM, done once, instead
of one per resample. `tau-a`, `cosine_cov` and `corr_cov` fall back to calling rsatoolbox
on each resampled RDM (exact, but slow: use fewer resamples).

## Best layer without peeking (`split_halves`)
Choosing the best of several layers on the same data that scores it inflates the score.
The stimuli are split once, at random but stratified by category, into halves A and B.
The layer that scores best on half A (the RDMs restricted to A's stimuli) is scored on half
B and vice versa; the best-layer score is the mean of these two held-out scores. The noise
ceiling is computed on the same halves so that the fraction of the ceiling compares like
with like. The bootstrap resamples stimuli of both halves jointly with the same draws, the
selected layers held fixed. The layer reported as "best" is the one chosen on half A (it is
usually also the one chosen on B; both are stored).
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np

__all__ = [
    "METHODS",
    "DISTANCES",
    "check_method",
    "check_distance",
    "to_vectors",
    "to_matrices",
    "activation_rdm",
    "responses_rdm",
    "compare",
    "noise_ceiling",
    "bootstrap_samples",
    "bootstrap_compare",
    "percentile_ci",
    "split_halves",
    "paired_bootstrap_test",
    "RSAError",
]

METHODS = {
    "spearman": "Spearman rank correlation",
    "tau-a": "Kendall tau-a",
    "cosine_cov": "whitened cosine",
    "corr_cov": "whitened Pearson correlation",
    "corr": "Pearson correlation",
    "cosine": "cosine similarity",
}
_ALIASES = {
    "kendall": "tau-a", "tau_a": "tau-a", "kendall-tau-a": "tau-a", "whitened-cosine": "cosine_cov",
    "whitened_cosine": "cosine_cov", "whitened-corr": "corr_cov", "pearson": "corr", "rho": "spearman",
}
FAST_METHODS = ("spearman", "corr", "cosine")
DISTANCES = ("correlation", "euclidean", "cosine", "crossnobis")


class RSAError(ValueError):
    """Bad input to the analysis (unknown method, mismatched sizes...); the message says which."""


def check_method(method: str) -> str:
    m = _ALIASES.get(method.lower(), method.lower())
    if m not in METHODS:
        raise RSAError(f"unknown comparison method {method!r}; use one of {', '.join(METHODS)}")
    return m


def check_distance(distance: str) -> str:
    d = distance.lower()
    if d not in DISTANCES:
        raise RSAError(f"unknown distance {distance!r}; use one of {', '.join(DISTANCES)}")
    return d


# --------------------------------------------------------------------------- shapes


def _n_from_pairs(p: int) -> int:
    n = int(round((1 + np.sqrt(1 + 8 * p)) / 2))
    if n * (n - 1) // 2 != p:
        raise RSAError(f"{p} values are not the upper triangle of a square RDM")
    return n


def to_vectors(mats: np.ndarray) -> np.ndarray:
    """(N, N) or (K, N, N) -> (K, N(N-1)/2) upper triangles, rsatoolbox's order."""
    mats = np.asarray(mats, dtype=np.float64)
    if mats.ndim == 2:
        mats = mats[None]
    if mats.ndim != 3 or mats.shape[1] != mats.shape[2]:
        raise RSAError(f"expected square RDMs, got shape {mats.shape}")
    iu = np.triu_indices(mats.shape[1], 1)
    return mats[:, iu[0], iu[1]]


def to_matrices(vecs: np.ndarray) -> np.ndarray:
    """(K, P) upper triangles -> (K, N, N) symmetric with zero diagonal."""
    vecs = np.atleast_2d(np.asarray(vecs, dtype=np.float64))
    n = _n_from_pairs(vecs.shape[1])
    out = np.zeros((len(vecs), n, n))
    iu = np.triu_indices(n, 1)
    out[:, iu[0], iu[1]] = vecs
    out[:, iu[1], iu[0]] = vecs
    return out


def _rdms(vecs: np.ndarray):
    from rsatoolbox.rdm import RDMs

    return RDMs(np.atleast_2d(vecs))


# --------------------------------------------------------------------------- RDMs


def activation_rdm(patterns: np.ndarray, distance: str = "correlation") -> tuple[np.ndarray, list[str]]:
    """RDM (N, N) of N activation patterns (N, ...) (flattened), via rsatoolbox.

    Returns (rdm, warnings). Under the correlation distance a pattern with no variance
    (e.g. a silent layer for that stimulus) has no defined correlation: its distance to
    an identical pattern is 0 and to any other pattern 1 (r taken as 0), with a warning.
    """
    from rsatoolbox.data import Dataset
    from rsatoolbox.rdm import calc_rdm

    distance = check_distance(distance)
    if distance == "crossnobis":
        raise RSAError("crossnobis needs repeated measurements; network activations are deterministic "
                       "(use correlation, euclidean or cosine)")
    x = np.asarray(patterns, dtype=np.float64).reshape(len(patterns), -1)
    if len(x) < 3:
        raise RSAError(f"need at least 3 stimuli for an RDM, got {len(x)}")
    if not np.isfinite(x).all():
        raise RSAError(f"activations contain {int((~np.isfinite(x)).sum())} NaN or infinite values")
    notes: list[str] = []
    if distance == "correlation":
        flat = x.std(1) <= 1e-12 * np.maximum(1.0, np.abs(x).max(1))
        if flat.any():
            notes.append(f"{int(flat.sum())} of {len(x)} stimuli give constant activations (correlation undefined; "
                         "taken as r = 0)")
            if flat.all():
                return np.zeros((len(x), len(x))), notes + ["all activation patterns constant: the RDM is flat"]
        good = ~flat
        rdm = np.ones((len(x), len(x)))
        if good.sum() >= 2:
            with np.errstate(invalid="ignore", divide="ignore"):
                sub = calc_rdm(Dataset(x[good]), method="correlation").get_matrices()[0]
            rdm[np.ix_(good, good)] = sub
        if flat.any():
            same = np.all(x[flat][:, None] == x[flat][None], axis=2)
            fi = np.flatnonzero(flat)
            rdm[np.ix_(fi, fi)] = np.where(same, 0.0, 1.0)
        np.fill_diagonal(rdm, 0.0)
        return rdm, notes
    if distance == "cosine":
        norm = np.linalg.norm(x, axis=1)
        zero = norm == 0
        if zero.any():
            notes.append(f"{int(zero.sum())} of {len(x)} stimuli give all-zero activations (cosine taken as 0)")
        u = x / np.where(zero, 1.0, norm)[:, None]
        # squared euclidean between unit vectors / n_channels = (2 - 2 cos) / C
        rdm = calc_rdm(Dataset(u), method="euclidean").get_matrices()[0] * x.shape[1] / 2.0
        if zero.any():
            zi = np.flatnonzero(zero)
            rdm[zi, :] = 1.0
            rdm[:, zi] = 1.0
            rdm[np.ix_(zi, zi)] = 0.0
        np.fill_diagonal(rdm, 0.0)
        return np.clip(rdm, 0.0, 2.0), notes
    return calc_rdm(Dataset(x), method="euclidean").get_matrices()[0], notes


def responses_rdm(responses: np.ndarray, distance: str = "correlation") -> np.ndarray:
    """RDM (N, N) of a response matrix (R, N, C) or (N, C). Correlation, euclidean and cosine
    use the mean over repetitions; crossnobis cross-validates over them (needs R >= 2)."""
    from rsatoolbox.data import Dataset
    from rsatoolbox.rdm import calc_rdm

    distance = check_distance(distance)
    a = np.asarray(responses, dtype=np.float64)
    if a.ndim == 2:
        a = a[None]
    if distance != "crossnobis":
        rdm, _ = activation_rdm(a.mean(0), distance)
        return rdm
    r, n, c = a.shape
    if r < 2:
        raise RSAError("crossnobis needs at least 2 repetitions per stimulus")
    ds = Dataset(
        a.reshape(r * n, c),
        obs_descriptors={"stimulus": np.tile(np.arange(n), r), "repetition": np.repeat(np.arange(r), n)},
    )
    rdms = calc_rdm(ds, method="crossnobis", descriptor="stimulus", cv_descriptor="repetition")
    order = np.asarray(rdms.pattern_descriptors["stimulus"]).astype(int)
    m = rdms.get_matrices()[0]
    inv = np.empty(n, int)
    inv[order] = np.arange(n)
    return m[np.ix_(inv, inv)]


# --------------------------------------------------------------------------- comparisons


def _informative(v: np.ndarray, method: str) -> np.ndarray:
    """Rows that carry information for `method`: not all zero (cosine), else not constant."""
    finite = np.isfinite(v)
    vv = np.where(finite, v, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        if method == "cosine":
            return np.nanmax(np.abs(vv), axis=1) > 0
        return (np.nanmax(vv, axis=1) - np.nanmin(vv, axis=1)) > 0


def compare(models: np.ndarray, data: np.ndarray, method: str = "spearman") -> np.ndarray:
    """Similarity (K, D) of K model RDM vectors with D data RDM vectors (rsatoolbox).

    A flat RDM (all dissimilarities equal, e.g. a silent layer) scores 0. It is kept away
    from rsatoolbox 0.3.2, whose `_cosine` misplaces the other rows' values when one row
    has zero norm (`np.putmask` cycles its values over the whole array)."""
    from rsatoolbox.rdm import compare as _compare

    method = check_method(method)
    models, data = np.atleast_2d(models), np.atleast_2d(data)
    if models.shape[1] != data.shape[1]:
        raise RSAError(f"RDMs of different sizes: {models.shape[1]} vs {data.shape[1]} pairs")
    gm, gd = _informative(models, method), _informative(data, method)
    out = np.zeros((len(models), len(data)))
    if gm.any() and gd.any():
        with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)
            out[np.ix_(gm, gd)] = np.asarray(_compare(models[gm], data[gd], method=method), dtype=np.float64)
    return out


def noise_ceiling(subjects: np.ndarray, method: str = "spearman") -> tuple[float, float]:
    """(lower, upper) noise ceiling from per-subject RDM vectors (S, P), S >= 2
    (rsatoolbox's leave-one-subject-out ceiling): upper = mean over subjects of the
    similarity of each subject's RDM with the mean of all; lower = the same with the mean
    of the other subjects. NaN for a single RDM."""
    from rsatoolbox.inference import boot_noise_ceiling

    method = check_method(method)
    subjects = np.atleast_2d(subjects)
    if len(subjects) < 2:
        return float("nan"), float("nan")
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore")
        lo, up = boot_noise_ceiling(_rdms(subjects), method=method, rdm_descriptor="index")
    return float(lo), float(up)


# --------------------------------------------------------------------------- bootstrap


def bootstrap_samples(n: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n) stimulus indices drawn with replacement; depends only on (n, n_boot, seed)."""
    if n_boot < 1:
        raise RSAError(f"n_boot must be at least 1, got {n_boot}")
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def _counts(samples: np.ndarray, n: int) -> np.ndarray:
    b = len(samples)
    c = np.zeros((b, n), np.float64)
    np.add.at(c, (np.repeat(np.arange(b), samples.shape[1]), samples.ravel()), 1.0)
    return c


def _tied_rows(v: np.ndarray) -> np.ndarray:
    s = np.sort(v, axis=1)
    return (s[:, 1:] == s[:, :-1]).any(1)


class _Ranker:
    """Sort structure of fixed vectors (K, P) giving weighted average ranks for any weights.

    `twice_ranks_minus_one(w)` returns 2 * rank - 1 of each entry in the multiset where
    entry p appears w[p] times, with average ranks for ties: rank = (weight below) + (tied
    weight + 1) / 2. Without tied values (`ties=False`) the tied weight of an entry is its
    own w[p], so 2 * rank - 1 = 2 * (weight up to and including p) - w[p]: one look-up."""

    def __init__(self, v: np.ndarray, ties: bool) -> None:
        import torch

        k, p = v.shape
        self.k, self.p, self.ties = k, p, ties
        order = np.argsort(v, axis=1, kind="stable")
        pos = np.broadcast_to(np.arange(p), (k, p))
        inv = np.empty_like(order)
        np.put_along_axis(inv, order, pos, 1)
        off = np.arange(k)[:, None] * (p + 1)
        self.order = torch.from_numpy(np.ascontiguousarray(order.reshape(-1)))
        if not ties:
            self.last1 = torch.from_numpy(np.ascontiguousarray((inv + 1 + off).reshape(-1)))
            return
        s = np.take_along_axis(v, order, 1)
        new = np.ones((k, p), bool)
        new[:, 1:] = s[:, 1:] != s[:, :-1]
        start = np.maximum.accumulate(np.where(new, pos, 0), axis=1)
        is_end = np.ones((k, p), bool)
        is_end[:, :-1] = new[:, 1:]
        end = np.minimum.accumulate(np.where(is_end, pos, p - 1)[:, ::-1], axis=1)[:, ::-1]
        self.first = torch.from_numpy(np.ascontiguousarray((np.take_along_axis(start, inv, 1) + off).reshape(-1)))
        self.last1 = torch.from_numpy(np.ascontiguousarray((np.take_along_axis(end, inv, 1) + 1 + off).reshape(-1)))

    def twice_ranks_minus_one(self, w):
        import torch

        b = w.shape[0]
        ws = (w if self.ties else 2 * w).index_select(1, self.order).view(b, self.k, self.p)
        s0 = torch.empty((b, self.k, self.p + 1), dtype=w.dtype)
        s0[:, :, 0] = 0
        torch.cumsum(ws, dim=2, out=s0[:, :, 1:])  # cumulative weight (doubled without ties), sorted order
        del ws
        s0 = s0.view(b, -1)
        r = s0.index_select(1, self.last1).view(b, self.k, self.p)
        if self.ties:
            return r.add_(s0.index_select(1, self.first).view(b, self.k, self.p))
        return r.sub_(w[:, None, :])


def _spearman_fast(models: np.ndarray, data: np.ndarray, w_all: np.ndarray, chunk: int) -> np.ndarray:
    import torch

    k, d = len(models), len(data)
    rd = _Ranker(data, ties=bool(_tied_rows(data).any()))
    tied = _tied_rows(models)
    parts = [(idx, _Ranker(models[idx], ties=t)) for t in (False, True)
             for idx in [np.flatnonzero(tied == t)] if len(idx)]
    out = np.empty((len(w_all), k, d))
    for s in range(0, len(w_all), chunk):
        w = torch.from_numpy(w_all[s : s + chunk].astype(np.float32))
        n = w.sum(1, dtype=torch.float64)  # size of each resampled RDM vector
        # data: B = 2 * (rank - mean rank), weighted; vd4 = 4 * weighted variance of ranks
        bd = rd.twice_ranks_minus_one(w).sub_(n.float().view(-1, 1, 1))
        x = bd * w[:, None, :]
        vd4 = (x * bd).sum(2, dtype=torch.float64)  # (b, D)
        for idx, rk in parts:
            a = rk.twice_ranks_minus_one(w)  # 2 * rank - 1; its offset vanishes against centred x
            cross4 = torch.bmm(a, x.transpose(1, 2)).double()  # 4 * weighted covariance (b, k, D)
            if rk.ties:
                va = 0.25 * (((a.double() - n.view(-1, 1, 1)) ** 2) * w.double()[:, None, :]).sum(2)
            else:  # weighted rank variance: (N^3 - N - sum over tie groups (T^3 - T)) / 12, groups = copies
                wd = w.double()
                va = ((n**3 - n - (wd**3 - wd).sum(1)) / 12.0)[:, None].expand(-1, len(idx))
            den = 2.0 * torch.sqrt(va[:, :, None] * vd4[:, None, :])
            # a flat RDM (no variance) scores 0, as rsatoolbox's comparisons do
            out[s : s + chunk, idx] = torch.where(den > 0, cross4 / den.clamp_min(1e-300), 0.0).numpy()
    return out


def _linear_fast(models: np.ndarray, data: np.ndarray, w_all: np.ndarray, method: str, chunk: int) -> np.ndarray:
    import torch

    vm = torch.from_numpy(models)
    vd = torch.from_numpy(data)
    out = np.empty((len(w_all), len(models), len(data)))
    for s in range(0, len(w_all), chunk):
        w = torch.from_numpy(w_all[s : s + chunk])
        n = w.sum(1, keepdim=True)
        sm, sd = w @ vm.T, w @ vd.T  # weighted sums (b, K), (b, D)
        smm, sdd = w @ (vm**2).T, w @ (vd**2).T
        cross = torch.einsum("kp,bdp->bkd", vm, w[:, None, :] * vd[None])
        if method == "corr":
            cross = cross - sm[:, :, None] * sd[:, None, :] / n[:, :, None]
            smm = smm - sm**2 / n
            sdd = sdd - sd**2 / n
        den = torch.sqrt((smm[:, :, None] * sdd[:, None, :]).clamp_min(0.0))
        out[s : s + chunk] = torch.where(den > 0, cross / den.clamp_min(1e-300), 0.0).numpy()
    return out


def _generic(models: np.ndarray, data: np.ndarray, n: int, samples: np.ndarray, method: str,
             subset: np.ndarray | None) -> np.ndarray:
    """rsatoolbox on each resampled RDM, exactly as `RDMs.subsample_pattern` builds it."""
    full = to_matrices(np.concatenate([models, data]))
    for m in full:
        np.fill_diagonal(m, np.nan)
    k = len(models)
    keep = np.ones(n, bool) if subset is None else np.isin(np.arange(n), subset)
    out = np.empty((len(samples), k, len(data)))
    for b, smp in enumerate(samples):
        idx = np.sort(smp)
        idx = idx[keep[idx]]
        iu = np.triu_indices(len(idx), 1)
        v = full[:, idx][:, :, idx][:, iu[0], iu[1]]
        out[b] = compare(v[:k], v[k:], method)
    return out


def bootstrap_compare(models: np.ndarray, data: np.ndarray, samples: np.ndarray, method: str = "spearman",
                      subset: Sequence[int] | None = None, chunk: int | None = None) -> np.ndarray:
    """Similarity of each model RDM with each data RDM in each bootstrap resample of the
    stimuli: (B, K, D). `samples` (B, N) are drawn stimulus indices (`bootstrap_samples`).
    With `subset` (stimulus indices) only the drawn stimuli in the subset count (a
    resample of that subset, as used for split halves). Equal to rsatoolbox's
    `subsample_pattern` + `compare` on each resample."""
    method = check_method(method)
    models, data = np.atleast_2d(np.asarray(models, np.float64)), np.atleast_2d(np.asarray(data, np.float64))
    p = models.shape[1]
    if data.shape[1] != p:
        raise RSAError(f"RDMs of different sizes: {p} vs {data.shape[1]} pairs")
    n = _n_from_pairs(p)
    samples = np.asarray(samples)
    if samples.ndim != 2 or samples.size == 0 or samples.min() < 0 or samples.max() >= n:
        raise RSAError(f"bootstrap samples must be (B, n) indices below {n}")
    if method not in FAST_METHODS:
        return _generic(models, data, n, samples, method, None if subset is None else np.asarray(subset))
    ia, ib = np.triu_indices(n, 1)
    c = _counts(samples, n)
    if subset is not None:
        inside = np.zeros(n, bool)
        inside[np.asarray(subset)] = True
        pairs = inside[ia] & inside[ib]
        ia, ib, models, data = ia[pairs], ib[pairs], models[:, pairs], data[:, pairs]
    w = c[:, ia] * c[:, ib]
    k = len(models) + len(data)
    if chunk is None:
        chunk = int(max(1, min(64, 24_000_000 // max(1, k * len(ia)))))  # ~100 MB per work array
    if method == "spearman":
        return _spearman_fast(models, data, w, chunk)
    return _linear_fast(models, data, w, method, chunk)


def percentile_ci(boot: np.ndarray, level: float = 0.95, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval of bootstrap values along `axis` (NaN resamples ignored)."""
    a = (1 - level) / 2 * 100
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        lo, hi = np.nanpercentile(boot, [a, 100 - a], axis=axis)
    return lo, hi


def split_halves(n: int, seed: int = 0, groups: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Two halves of range(n), random but balanced within each group (category)."""
    rng = np.random.default_rng(seed)
    groups = list(groups) if groups is not None else ["all"] * n
    if len(groups) != n:
        raise RSAError(f"{len(groups)} group labels for {n} stimuli")
    a, b = [], []
    flip = 0
    for g in sorted(set(groups)):
        idx = rng.permutation([i for i in range(n) if groups[i] == g])
        h = len(idx) // 2
        if len(idx) % 2:
            h += flip
            flip = 1 - flip
        a.extend(idx[:h])
        b.extend(idx[h:])
    return np.sort(np.array(a, int)), np.sort(np.array(b, int))


def paired_bootstrap_test(boot_a: np.ndarray, boot_b: np.ndarray, obs_a: float, obs_b: float,
                          level: float = 0.95) -> dict[str, float]:
    """Compare two scores measured on the same resamples: the difference a - b, its
    percentile interval and a two-sided bootstrap p value (twice the smaller fraction of
    resamples on either side of zero, with the +1 correction)."""
    d = np.asarray(boot_a, float) - np.asarray(boot_b, float)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return {"diff": float(obs_a - obs_b), "ci_low": float("nan"), "ci_high": float("nan"), "p": float("nan")}
    lo, hi = percentile_ci(d, level)
    nb = d.size
    p = min(1.0, 2 * min((np.sum(d <= 0) + 1) / (nb + 1), (np.sum(d >= 0) + 1) / (nb + 1)))
    return {"diff": float(obs_a - obs_b), "ci_low": float(lo), "ci_high": float(hi), "p": float(p)}
