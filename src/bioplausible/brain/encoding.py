"""Optional linear encoding model: predict measured responses from a layer's activations.

Where the recordings include response matrices (stimuli x channels), each layer's
activations predict every channel's response with ridge regression (scikit-learn
`RidgeCV`, the penalty chosen by efficient leave-one-out within the training stimuli).
Stimuli are split into `n_splits` folds (seeded): the model is fitted on the other folds
and predicts the held-out stimuli, so every prediction is for a stimulus the fit never saw.
The score is the Pearson correlation between predicted and measured response per channel,
averaged over channels (`r_mean`); `r_channels` gives each channel.

Features are standardised on the training folds; with more features than stimuli they are
first reduced to at most `max_features` principal components fitted on the training folds.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

__all__ = ["encoding_scores", "DEFAULT_ALPHAS"]

DEFAULT_ALPHAS = tuple(10.0 ** np.arange(-2, 7))


def _pearson_cols(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(0)
    b = b - b.mean(0)
    den = np.sqrt((a * a).sum(0) * (b * b).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (a * b).sum(0) / den, np.nan)


def encoding_scores(features: dict[str, np.ndarray], responses: np.ndarray, n_splits: int = 5, seed: int = 0,
                    alphas: Sequence[float] = DEFAULT_ALPHAS, max_features: int = 1000) -> dict[str, dict[str, Any]]:
    """Cross-validated ridge encoding score of each layer: {layer: {r_mean, r_channels}}.
    `responses` is (N, C) or (R, N, C) (averaged over repetitions R)."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import KFold

    y = np.asarray(responses, dtype=np.float64)
    if y.ndim == 3:
        y = y.mean(0)
    if y.ndim != 2:
        raise ValueError(f"responses must be (stimuli, channels) or (repetitions, stimuli, channels), got {y.shape}")
    n = len(y)
    if n < 2 * n_splits:
        raise ValueError(f"{n} stimuli are too few for {n_splits}-fold encoding")
    folds = list(KFold(n_splits, shuffle=True, random_state=seed).split(np.arange(n)))
    out: dict[str, dict[str, Any]] = {}
    for name, x in features.items():
        x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
        if len(x) != n:
            raise ValueError(f"layer {name!r}: {len(x)} patterns for {n} stimuli")
        pred = np.empty_like(y)
        for tr, te in folds:
            mu, sd = x[tr].mean(0), x[tr].std(0)
            sd[sd == 0] = 1.0
            xtr, xte = (x[tr] - mu) / sd, (x[te] - mu) / sd
            if xtr.shape[1] > max_features:
                pca = PCA(n_components=min(max_features, len(tr) - 1), random_state=seed).fit(xtr)
                xtr, xte = pca.transform(xtr), pca.transform(xte)
            model = RidgeCV(alphas=alphas).fit(xtr, y[tr])
            pred[te] = model.predict(xte)
        r = _pearson_cols(pred, y)
        out[name] = {"r_mean": float(np.nanmean(r)) if np.isfinite(r).any() else float("nan"), "r_channels": r}
    return out
