"""CIFAR-10 and CIFAR-100: the "python version" (pickled batches) and the binary version.

The python version is a pickle, and unpickling runs whatever callables the file names. A
CIFAR folder is something users download from mirrors or get handed, so it is read through
an unpickler that resolves only the few numpy globals an array needs; anything else is
refused before it can run.
"""

from __future__ import annotations

import _codecs
import pickle
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .base import DataError, DatasetMissing, RawData

__all__ = ["load_cifar10", "load_cifar100", "read_cifar_pickle", "read_cifar_binary"]

_PIXELS = 3 * 32 * 32


# numpy 2 renamed numpy.core to numpy._core. Pickles name whichever path the writer had
# (the official CIFAR files: Python 2 and numpy 1, so numpy.core), so both names map to
# the one real function; we never import the module a pickle names.
try:
    from numpy._core.multiarray import _reconstruct
    from numpy._core.multiarray import scalar as _np_scalar
    from numpy._core.numeric import _frombuffer
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
    from numpy.core.multiarray import scalar as _np_scalar  # type: ignore[no-redef]
    from numpy.core.numeric import _frombuffer  # type: ignore[no-redef]


def _scalar(dtype: Any, data: Any = None) -> Any:
    # A pickled numpy scalar (labels written as a list of np.int64) is scalar(dtype, bytes).
    # Only plain numeric dtypes: an object dtype would hand back whatever it was given.
    if not isinstance(dtype, np.dtype) or dtype.kind not in "biuf" or not isinstance(data, bytes):
        raise pickle.UnpicklingError(f"numpy scalar of dtype {dtype!r} is not allowed")
    return _np_scalar(dtype, data)


def _latin1_encode(obj: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    # Python 3 writes bytes at pickle protocols 0-2 as _codecs.encode(text, "latin1").
    # Only that use is allowed: other codecs (zlib, base64 ...) are not needed for arrays.
    if encoding not in ("latin1", "latin-1") or not isinstance(obj, str):
        raise pickle.UnpicklingError(f"_codecs.encode with {encoding!r} is not allowed")
    return _codecs.encode(obj, "latin1", errors)


# Exactly what a pickled numpy array needs, at any pickle protocol:
#   protocol <= 4: _reconstruct(ndarray, ...) + dtype, then __setstate__ (no call by name);
#   protocol 5:    _frombuffer(buffer, dtype, shape, order);
#   protocol <= 2 written by Python 3: bytes arrive as _codecs.encode(str, "latin1").
# Plain lists / dicts / bytes / str / int (labels, filenames, keys) need no globals at all.
_ALLOWED: dict[tuple[str, str], Callable[..., Any] | type] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "scalar"): _scalar,
    ("numpy._core.multiarray", "scalar"): _scalar,
    ("_codecs", "encode"): _latin1_encode,
}


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can build numpy arrays and plain containers, and nothing else."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}") from None

    def persistent_load(self, pid: Any) -> Any:  # pragma: no cover - defensive
        raise pickle.UnpicklingError("persistent ids are not allowed")


def read_cifar_pickle(path: Path) -> dict[str, Any]:
    """Unpickle one python-version batch with the restricted unpickler; keys as str."""
    try:
        with open(path, "rb") as f:
            # encoding="bytes": the official files are Python 2 pickles, whose str objects
            # (the dict keys and the arrays' raw pixel buffers) must come back as bytes;
            # decoding them as text would garble the pixels. Keys are made str below.
            obj = _ArrayOnlyUnpickler(f, encoding="bytes").load()
    except FileNotFoundError as e:
        raise DatasetMissing(f"{path}: no such file") from e
    except Exception as e:  # noqa: BLE001 - any failure to unpickle is a bad data file
        raise DataError(f"{path}: not a valid CIFAR batch ({type(e).__name__}: {e})") from e
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def _batch_arrays(path: Path, d: dict[str, Any], label_key: str, num_classes: int):
    if "data" not in d or label_key not in d:
        missing = "data" if "data" not in d else label_key
        raise DataError(f"{path}: missing key {missing!r}; has {sorted(d)}")
    data, labels = d["data"], d[label_key]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
        got = f"{type(data).__name__} {getattr(data, 'dtype', '')}".strip()
        raise DataError(f"{path}: 'data' must be a uint8 array, got {got}")
    n = len(data)
    if data.size != n * _PIXELS:
        raise DataError(f"{path}: 'data' has shape {data.shape}; expected (N, {_PIXELS})")
    try:
        y0 = np.asarray(labels).reshape(-1)
        if y0.dtype.kind not in "biuf":
            raise TypeError(y0.dtype)
    except (TypeError, ValueError) as e:
        raise DataError(f"{path}: {label_key!r} is not a list of integers") from e
    if y0.dtype.kind == "f" and y0.size and not np.all(np.isfinite(y0) & (y0 == np.round(y0))):
        # casting would silently truncate 1.7 to 1: a wrong label, not a readable one
        i = int(np.argmax(~(np.isfinite(y0) & (y0 == np.round(y0)))))
        raise DataError(f"{path}: {label_key!r} holds a non-integer label {y0[i]!r} at index {i}")
    y = y0.astype(np.int64)
    if len(y) != n:
        raise DataError(f"{path}: {n} images but {len(y)} labels in {label_key!r}")
    _check_labels(path, y, num_classes)
    return data.reshape(n, 3, 32, 32), y


def _check_labels(path: Path, y: np.ndarray, num_classes: int) -> None:
    bad = (y < 0) | (y >= num_classes)
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(f"{path}: label {int(y[i])} at index {i} is outside [0, {num_classes})")


def read_cifar_binary(path: Path, label_bytes: int, num_classes: int):
    """Read a binary-version file: fixed records of label byte(s) then 3072 pixel bytes.

    CIFAR-100 records carry (coarse, fine); the last label byte, the fine label, is used.
    """
    rec = label_bytes + _PIXELS
    try:
        raw = np.fromfile(path, dtype=np.uint8)
    except FileNotFoundError as e:
        raise DatasetMissing(f"{path}: no such file") from e
    except OSError as e:
        raise DataError(f"{path}: unreadable ({e})") from e
    if raw.size == 0 or raw.size % rec:
        raise DataError(
            f"{path}: {raw.size} bytes is not a whole number of {rec}-byte CIFAR records "
            "(truncated, or the wrong CIFAR version)"
        )
    records = raw.reshape(-1, rec)
    y = records[:, label_bytes - 1].astype(np.int64)
    _check_labels(path, y, num_classes)
    return records[:, label_bytes:].reshape(-1, 3, 32, 32), y


def _to_raw(parts_train, parts_test, num_classes: int) -> RawData:
    def stack(parts):
        x = np.concatenate([p[0] for p in parts])
        y = np.concatenate([p[1] for p in parts])
        # One vectorised uint8 -> float32 pass over the whole split.
        return np.divide(x, np.float32(255.0), dtype=np.float32), y

    xtr, ytr = stack(parts_train)
    xte, yte = stack(parts_test)
    return RawData(xtr, ytr, xte, yte, num_classes)


# Layouts of the official archives once unpacked: (python folder, python train files,
# python test files, label key), (binary folder, binary train files, binary test files,
# label bytes per record).
_LAYOUT = {
    10: dict(
        py_dir="cifar-10-batches-py",
        py_train=[f"data_batch_{i}" for i in range(1, 6)],
        py_test=["test_batch"],
        py_label="labels",
        bin_dir="cifar-10-batches-bin",
        bin_train=[f"data_batch_{i}.bin" for i in range(1, 6)],
        bin_test=["test_batch.bin"],
        label_bytes=1,
    ),
    100: dict(
        py_dir="cifar-100-python",
        py_train=["train"],
        py_test=["test"],
        py_label="fine_labels",
        bin_dir="cifar-100-binary",
        bin_train=["train.bin"],
        bin_test=["test.bin"],
        label_bytes=2,
    ),
}


def _load(folder: Path | str, num_classes: int) -> RawData:
    folder = Path(folder)
    lay = _LAYOUT[num_classes]
    # Accept the unpacked folder itself or the folder above it; the python version wins
    # when both are present (it is the one most people have).
    for base in (folder, folder / lay["py_dir"]):
        if (base / lay["py_test"][0]).is_file():
            def read_py(name: str) -> tuple[np.ndarray, np.ndarray]:
                p = base / name
                return _batch_arrays(p, read_cifar_pickle(p), lay["py_label"], num_classes)

            return _to_raw(
                [read_py(n) for n in lay["py_train"]], [read_py(n) for n in lay["py_test"]], num_classes
            )
    for base in (folder, folder / lay["bin_dir"]):
        if (base / lay["bin_test"][0]).is_file():
            def read_bin(name: str) -> tuple[np.ndarray, np.ndarray]:
                return read_cifar_binary(base / name, lay["label_bytes"], num_classes)

            return _to_raw(
                [read_bin(n) for n in lay["bin_train"]], [read_bin(n) for n in lay["bin_test"]], num_classes
            )
    raise DatasetMissing(
        f"{folder}: no CIFAR-{num_classes} files found; expected {lay['py_dir']}/ "
        f"({', '.join(lay['py_train'] + lay['py_test'])}) or {lay['bin_dir']}/ "
        f"({', '.join(lay['bin_train'] + lay['bin_test'])}), unpacked from the official archive"
    )


def load_cifar10(folder: Path | str) -> RawData:
    """CIFAR-10 from `folder` (python or binary version; the folder or its parent)."""
    return _load(folder, 10)


def load_cifar100(folder: Path | str) -> RawData:
    """CIFAR-100 from `folder` with the 100 fine labels (python or binary version)."""
    return _load(folder, 100)
