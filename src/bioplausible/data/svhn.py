"""SVHN, format 2 (cropped 32x32 digits): train_32x32.mat and test_32x32.mat.

The .mat files hold X as (32, 32, 3, N) uint8 (MATLAB's image-major layout) and y as
(N, 1) with digit 0 stored as label 10 (MATLAB's 1-based habit). The "extra" split is not
read: it is easier than the others and would change what the test accuracy means.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import DataError, DatasetMissing, RawData

__all__ = ["load_svhn", "read_svhn_mat"]


def read_svhn_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One SVHN .mat file -> images (N, 3, 32, 32) float32 in [0, 1], labels int64 0..9."""
    import scipy.io

    if not path.is_file():
        raise DatasetMissing(f"{path}: no such file")
    try:
        # variable_names: skip MATLAB header junk and anything else the file carries.
        m = scipy.io.loadmat(path, variable_names=("X", "y"))
    except NotImplementedError as e:
        # scipy raises this for MATLAB v7.3 (HDF5) files; the official files are v5.
        raise DataError(f"{path}: MATLAB v7.3 file; expected the official v5 .mat ({e})") from e
    except Exception as e:  # noqa: BLE001 - scipy raises many types on corrupt files
        raise DataError(f"{path}: not a readable .mat file ({type(e).__name__}: {e})") from e
    for key in ("X", "y"):
        if key not in m:
            # loadmat read only X and y; ask the file what it does hold
            try:
                present = sorted(name for name, _, _ in scipy.io.whosmat(path))
            except Exception:  # noqa: BLE001 - the listing is only for the message
                present = sorted(k for k in m if not k.startswith("__"))
            raise DataError(f"{path}: missing variable {key!r} (has {present})")
    X, y = m["X"], np.asarray(m["y"]).reshape(-1)
    if X.ndim != 4 or X.shape[:3] != (32, 32, 3):
        raise DataError(f"{path}: X has shape {X.shape}; expected (32, 32, 3, N)")
    if X.shape[3] != len(y):
        raise DataError(f"{path}: X holds {X.shape[3]} images but y holds {len(y)} labels")
    if X.dtype != np.uint8:
        raise DataError(f"{path}: X is {X.dtype}; expected uint8")
    if y.size and (not np.all(np.isfinite(y)) or not np.all(y == np.round(y))):
        raise DataError(f"{path}: y holds non-integer labels")
    y = y.astype(np.int64)
    bad = (y < 0) | (y > 10)
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(f"{path}: label {int(y[i])} at index {i} is outside 0..10")
    y[y == 10] = 0
    # (H, W, C, N) -> (N, C, H, W) and uint8 -> float32 in [0, 1] in one vectorised pass;
    # writing into a C-ordered buffer avoids a second copy to make the transpose contiguous.
    x = np.empty((X.shape[3], 3, 32, 32), np.float32)
    np.divide(X.transpose(3, 2, 0, 1), np.float32(255.0), out=x)
    return x, y


def load_svhn(folder: Path | str) -> RawData:
    """SVHN train/test from `folder` (holding train_32x32.mat and test_32x32.mat)."""
    folder = Path(folder)
    x_train, y_train = read_svhn_mat(folder / "train_32x32.mat")
    x_test, y_test = read_svhn_mat(folder / "test_32x32.mat")
    return RawData(x_train, y_train, x_test, y_test, 10)
