"""Format readers on tiny files written here: IDX, CIFAR (python + binary), SVHN .mat.

Every failure case checks that the DataError names the offending file, since that name is
all a user has to go on when a download went wrong.
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from bioplausible.data import DataError, DatasetMissing, load, read_raw
from bioplausible.data.cifar import load_cifar10, load_cifar100
from bioplausible.data.idx import load_idx_folder, read_idx
from bioplausible.data.svhn import load_svhn

RNG = np.random.default_rng(0)


# --------------------------------------------------------------------------- writers


def idx_bytes(arr: np.ndarray, code: int = 0x08) -> bytes:
    be = arr.astype(arr.dtype.newbyteorder(">")) if arr.dtype.itemsize > 1 else arr
    return bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + be.tobytes()


def write_idx(path: Path, arr: np.ndarray, code: int = 0x08) -> Path:
    data = idx_bytes(arr, code)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def make_idx_folder(folder: Path, n_train=12, n_test=7, gz=False, dotted=False, hw=(28, 28)):
    folder.mkdir(parents=True, exist_ok=True)
    sep = "." if dotted else "-"
    ext = ".gz" if gz else ""
    arrays = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        x = RNG.integers(0, 256, size=(n, *hw), dtype=np.uint8)
        y = (np.arange(n) % 10).astype(np.uint8)
        write_idx(folder / f"{split}-images{sep}idx3-ubyte{ext}", x)
        write_idx(folder / f"{split}-labels{sep}idx1-ubyte{ext}", y)
        arrays[split] = (x, y)
    return arrays


def cifar_batch(n: int, num_classes: int, bytes_keys: bool, fine: bool):
    data = RNG.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = [int(v) for v in RNG.integers(0, num_classes, size=n)]
    d = {"data": data, "filenames": [f"img{i}.png" for i in range(n)]}
    if fine:
        d["fine_labels"] = labels
        d["coarse_labels"] = [lab // 5 for lab in labels]
    else:
        d["labels"] = labels
    if bytes_keys:  # what the official Python 2 files give under encoding="bytes"
        d = {k.encode(): v for k, v in d.items()}
    return d, data, np.array(labels)


# --------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("dotted", [False, True])
def test_idx_folder_round_trip(tmp_path, gz, dotted):
    arrays = make_idx_folder(tmp_path / "mnist", gz=gz, dotted=dotted)
    raw = load_idx_folder(tmp_path / "mnist")
    assert raw.x_train.shape == (12, 1, 28, 28) and raw.x_train.dtype == np.float32
    assert raw.x_test.shape == (7, 1, 28, 28)
    np.testing.assert_array_equal(raw.x_train[:, 0] * 255, arrays["train"][0].astype(np.float32))
    np.testing.assert_array_equal(raw.y_test, arrays["t10k"][1])
    assert raw.y_train.dtype == np.int64 and raw.num_classes == 10
    assert 0.0 <= raw.x_train.min() and raw.x_train.max() <= 1.0


def test_idx_through_registry_load(tmp_path):
    arrays = make_idx_folder(tmp_path / "fm", n_train=20, n_test=10, gz=True)
    raw = read_raw("fashion-mnist", root=tmp_path / "fm")
    np.testing.assert_allclose(raw.x_test[:, 0], arrays["t10k"][0] / 255.0, atol=1e-7)
    ds = load("fashion-mnist", root=tmp_path / "fm", val_fraction=0.25)
    assert ds.input_shape == (1, 28, 28) and ds.num_classes == 10
    assert len(ds.x_train) + len(ds.x_val) == 20 and len(ds.x_val) == 5
    # Undoing the normalisation gives back the pixels.
    x01 = ds.x_test * ds.std.view(1, -1, 1, 1) + ds.mean.view(1, -1, 1, 1)
    np.testing.assert_allclose(x01.numpy()[:, 0], arrays["t10k"][0] / 255.0, atol=1e-5)


def test_read_idx_multibyte_big_endian(tmp_path):
    a = np.arange(-6, 6, dtype=np.int32).reshape(3, 4) * 100_000
    out = read_idx(write_idx(tmp_path / "ints.idx", a, code=0x0C))
    np.testing.assert_array_equal(out, a)
    assert out.dtype.isnative and out.flags.writeable


@pytest.mark.parametrize("gz", [False, True])
def test_idx_truncated(tmp_path, gz):
    data = idx_bytes(RNG.integers(0, 256, size=(5, 28, 28), dtype=np.uint8))[:-100]
    p = tmp_path / ("cut-images-idx3-ubyte" + (".gz" if gz else ""))
    p.write_bytes(gzip.compress(data) if gz else data)
    with pytest.raises(DataError, match="truncated") as e:
        read_idx(p)
    assert p.name in str(e.value)


def test_idx_gzip_stream_cut_off(tmp_path):
    data = gzip.compress(idx_bytes(RNG.integers(0, 256, size=(50, 28, 28), dtype=np.uint8)))
    p = tmp_path / "train-images-idx3-ubyte.gz"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError) as e:
        read_idx(p)
    assert p.name in str(e.value)


def test_idx_too_long(tmp_path):
    p = tmp_path / "long-labels-idx1-ubyte"
    p.write_bytes(idx_bytes(np.zeros(4, np.uint8)) + b"\x00")
    with pytest.raises(DataError, match="longer") as e:
        read_idx(p)
    assert p.name in str(e.value)


def test_idx_wrong_magic(tmp_path):
    p = tmp_path / "bad-images-idx3-ubyte"
    p.write_bytes(b"\x12\x34\x08\x03" + idx_bytes(np.zeros((1, 2, 2), np.uint8))[4:])
    with pytest.raises(DataError, match="magic") as e:
        read_idx(p)
    assert p.name in str(e.value)


def test_idx_labels_file_in_place_of_images(tmp_path):
    # A labels file (magic 0x801) where images are expected: caught by the magic number.
    make_idx_folder(tmp_path)
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros(12, np.uint8))
    with pytest.raises(DataError, match="0x00000801") as e:
        load_idx_folder(tmp_path)
    assert "train-images-idx3-ubyte" in str(e.value)


def test_idx_mismatched_counts_names_both_files(tmp_path):
    make_idx_folder(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(11, np.uint8))
    with pytest.raises(DataError) as e:
        load_idx_folder(tmp_path)
    assert "train-images-idx3-ubyte" in str(e.value) and "train-labels-idx1-ubyte" in str(e.value)


def test_idx_label_out_of_range(tmp_path):
    make_idx_folder(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([0, 1, 2, 3, 4, 5, 10], np.uint8))
    with pytest.raises(DataError, match="outside") as e:
        load_idx_folder(tmp_path)
    assert "t10k-labels-idx1-ubyte" in str(e.value)


def test_idx_missing_file(tmp_path):
    make_idx_folder(tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte").unlink()
    with pytest.raises(DatasetMissing, match="t10k-images-idx3-ubyte"):
        load_idx_folder(tmp_path)


def test_missing_folder_says_how_to_fetch(tmp_path):
    with pytest.raises(DatasetMissing, match="bioplausible data fetch mnist"):
        read_raw("mnist", root=tmp_path / "nowhere")


# --------------------------------------------------------------------------- CIFAR python


def write_cifar10_py(folder: Path, protocol=4, bytes_keys=True, n=6):
    folder.mkdir(parents=True, exist_ok=True)
    xs, ys = {}, {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        d, x, y = cifar_batch(n, 10, bytes_keys, fine=False)
        (folder / name).write_bytes(pickle.dumps(d, protocol=protocol))
        xs[name], ys[name] = x, y
    return xs, ys


@pytest.mark.parametrize("protocol", [2, 4, 5])
@pytest.mark.parametrize("bytes_keys", [True, False])
def test_cifar10_python_round_trip(tmp_path, protocol, bytes_keys):
    xs, ys = write_cifar10_py(tmp_path / "cifar-10-batches-py", protocol, bytes_keys)
    for root in (tmp_path, tmp_path / "cifar-10-batches-py"):  # parent or the folder itself
        raw = load_cifar10(root)
        assert raw.x_train.shape == (30, 3, 32, 32) and raw.x_test.shape == (6, 3, 32, 32)
        assert raw.x_train.dtype == np.float32 and raw.num_classes == 10
        # Row layout of CIFAR: 1024 red, 1024 green, 1024 blue values, each row-major.
        np.testing.assert_array_equal(
            (raw.x_train[6:12] * 255).round().astype(np.uint8).reshape(6, -1), xs["data_batch_2"]
        )
        np.testing.assert_array_equal(raw.y_test, ys["test_batch"])


def py2_cifar_pickle(data: np.ndarray, labels: list[int]) -> bytes:
    """A batch as Python 2's cPickle (protocol 2) wrote the official files: str keys and
    the pixel buffer as 8-bit strings, the array via numpy.core.multiarray._reconstruct."""

    def s(b: bytes) -> bytes:  # SHORT_BINSTRING / BINSTRING: Python 2 str
        return (b"U" + bytes([len(b)]) if len(b) < 256 else b"T" + struct.pack("<i", len(b))) + b

    def i(v: int) -> bytes:  # BININT
        return b"J" + struct.pack("<i", v)

    # dtype('u1') and its state (3, '|', None, None, None, -1, -1, 0)
    dtype = (
        b"cnumpy\ndtype\n" + s(b"u1") + i(0) + i(1) + b"\x87R"
        + b"(" + i(3) + s(b"|") + b"NNN" + i(-1) + i(-1) + i(0) + b"tb"
    )
    # _reconstruct(ndarray, (0,), 'b') with state (1, shape, dtype, fortran=False, raw bytes)
    array = (
        b"cnumpy.core.multiarray\n_reconstruct\n" + b"cnumpy\nndarray\n" + i(0) + b"\x85" + s(b"b") + b"\x87R"
        + b"(" + i(1) + i(data.shape[0]) + i(data.shape[1]) + b"\x86"
        + dtype + b"\x89" + s(data.tobytes()) + b"tb"
    )
    lab = b"](" + b"".join(i(v) for v in labels) + b"e"
    return b"\x80\x02}(" + s(b"data") + array + s(b"labels") + lab + b"u."


def test_cifar10_python2_pickle(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batches = {}
    for name in [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]:
        x = RNG.integers(0, 256, size=(3, 3072), dtype=np.uint8)
        y = [int(v) for v in RNG.integers(0, 10, size=3)]
        (folder / name).write_bytes(py2_cifar_pickle(x, y))
        batches[name] = (x, y)
    raw = load_cifar10(folder)
    x_test = (raw.x_test * 255).round().astype(np.uint8).reshape(3, -1)
    np.testing.assert_array_equal(x_test, batches["test_batch"][0])
    np.testing.assert_array_equal(raw.y_train[:3], batches["data_batch_1"][1])


def test_cifar100_python_uses_fine_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    (folder / "train").write_bytes(pickle.dumps(cifar_batch(9, 100, True, fine=True)[0], protocol=2))
    d, x, y = cifar_batch(4, 100, True, fine=True)
    (folder / "test").write_bytes(pickle.dumps(d, protocol=2))
    raw = read_raw("cifar100", root=tmp_path)
    assert raw.num_classes == 100 and raw.x_train.shape == (9, 3, 32, 32)
    np.testing.assert_array_equal(raw.y_test, y)
    np.testing.assert_allclose(raw.x_test.reshape(4, -1), x / 255.0, atol=1e-7)


def test_cifar_through_registry_load(tmp_path):
    write_cifar10_py(tmp_path / "cifar-10-batches-py", n=10)
    ds = load("cifar10", root=tmp_path)
    assert ds.input_shape == (3, 32, 32) and len(ds.x_train) == 45 and len(ds.x_val) == 5
    assert ds.mean.shape == (3,)


class _Evil:
    """Pickles to a call of `func(*args)`: what a booby-trapped CIFAR batch would hold."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


@pytest.mark.parametrize(
    "payload",
    [
        lambda m: _Evil(os.system, f"touch {m}"),
        lambda m: _Evil(eval, f"open({str(m)!r}, 'w').close()"),
        lambda m: _Evil(Path.touch, m),
        lambda m: {"data": _Evil(os.system, f"touch {m}"), "labels": [0]},
        lambda m: _Evil(__import__("codecs").encode, "x", "rot13"),  # allowed module, other name
    ],
)
def test_cifar_malicious_pickle_refused(tmp_path, payload):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10_py(folder)
    marker = tmp_path / "pwned"
    (folder / "data_batch_3").write_bytes(pickle.dumps(payload(marker), protocol=2))
    with pytest.raises(DataError, match="refusing|not allowed") as e:
        load_cifar10(folder)
    assert "data_batch_3" in str(e.value)
    assert not marker.exists()


def test_cifar_codecs_only_latin1(tmp_path):
    # _codecs.encode is allowed for Python 3 protocol-2 bytes, but only as latin1.
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10_py(folder)
    (folder / "test_batch").write_bytes(pickle.dumps(_Evil(__import__("_codecs").encode, "x", "zlib"), protocol=2))
    with pytest.raises(DataError, match="test_batch"):
        load_cifar10(folder)


def test_cifar_python_bad_contents(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10_py(folder)
    d, _, _ = cifar_batch(6, 10, True, fine=False)
    d[b"labels"] = d[b"labels"][:-1]
    (folder / "data_batch_5").write_bytes(pickle.dumps(d))
    with pytest.raises(DataError, match="data_batch_5"):
        load_cifar10(folder)
    (folder / "data_batch_5").write_bytes(b"not a pickle at all")
    with pytest.raises(DataError, match="data_batch_5"):
        load_cifar10(folder)


# --------------------------------------------------------------------------- CIFAR binary


def write_cifar_bin(path: Path, n: int, label_bytes: int, num_classes: int):
    x = RNG.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    fine = RNG.integers(0, num_classes, size=n).astype(np.uint8)
    labels = fine[:, None] if label_bytes == 1 else np.stack([fine // 5, fine], 1)
    path.write_bytes(np.concatenate([labels, x], 1).tobytes())
    return x, fine.astype(np.int64)


def test_cifar10_binary_round_trip(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    parts = [write_cifar_bin(folder / f"data_batch_{i}.bin", 3, 1, 10) for i in range(1, 6)]
    xte, yte = write_cifar_bin(folder / "test_batch.bin", 4, 1, 10)
    raw = read_raw("cifar10", root=tmp_path)
    assert raw.x_train.shape == (15, 3, 32, 32)
    np.testing.assert_array_equal(raw.y_train, np.concatenate([p[1] for p in parts]))
    np.testing.assert_array_equal((raw.x_test * 255).round().astype(np.uint8).reshape(4, -1), xte)
    np.testing.assert_array_equal(raw.y_test, yte)


def test_cifar100_binary_fine_label(tmp_path):
    folder = tmp_path / "cifar-100-binary"
    folder.mkdir()
    _, ytr = write_cifar_bin(folder / "train.bin", 5, 2, 100)
    _, yte = write_cifar_bin(folder / "test.bin", 3, 2, 100)
    raw = load_cifar100(folder)
    np.testing.assert_array_equal(raw.y_train, ytr)
    np.testing.assert_array_equal(raw.y_test, yte)
    assert raw.num_classes == 100


def test_cifar_binary_bad_length(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    for i in range(1, 6):
        write_cifar_bin(folder / f"data_batch_{i}.bin", 2, 1, 10)
    write_cifar_bin(folder / "test_batch.bin", 2, 1, 10)
    with open(folder / "data_batch_4.bin", "ab") as f:
        f.write(b"\x00" * 17)
    with pytest.raises(DataError, match="record") as e:
        load_cifar10(tmp_path)
    assert "data_batch_4.bin" in str(e.value)


def test_cifar_missing(tmp_path):
    with pytest.raises(DatasetMissing, match="cifar-10-batches-py"):
        load_cifar10(tmp_path)


# --------------------------------------------------------------------------- SVHN


def write_svhn(path: Path, n: int):
    X = RNG.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)
    y = (np.arange(n) % 10 + 1).astype(np.uint8)[:, None]  # 1..10, 10 meaning digit 0
    scipy.io.savemat(path, {"X": X, "y": y})
    return X, y


def test_svhn_round_trip(tmp_path):
    X, y = write_svhn(tmp_path / "train_32x32.mat", 11)
    write_svhn(tmp_path / "test_32x32.mat", 5)
    raw = load_svhn(tmp_path)
    assert raw.x_train.shape == (11, 3, 32, 32) and raw.x_train.flags.c_contiguous
    np.testing.assert_array_equal(raw.y_train, np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]))
    # Image 4, channel 2 (blue), pixel (row 7, col 3) is X[7, 3, 2, 4] in MATLAB's layout.
    assert raw.x_train[4, 2, 7, 3] == np.float32(X[7, 3, 2, 4] / np.float32(255))
    ds = load("svhn", root=tmp_path, val_fraction=0.0)
    assert ds.input_shape == (3, 32, 32) and len(ds.x_test) == 5


def test_svhn_missing_key(tmp_path):
    write_svhn(tmp_path / "train_32x32.mat", 3)
    scipy.io.savemat(tmp_path / "test_32x32.mat", {"X": np.zeros((32, 32, 3, 2), np.uint8)})
    with pytest.raises(DataError, match="'y'") as e:
        load_svhn(tmp_path)
    assert "test_32x32.mat" in str(e.value)


def test_svhn_shape_mismatch(tmp_path):
    scipy.io.savemat(
        tmp_path / "train_32x32.mat", {"X": np.zeros((32, 32, 3, 4), np.uint8), "y": np.ones((3, 1))}
    )
    write_svhn(tmp_path / "test_32x32.mat", 2)
    with pytest.raises(DataError, match="4 images but y holds 3") as e:
        load_svhn(tmp_path)
    assert "train_32x32.mat" in str(e.value)


def test_svhn_not_a_mat_file(tmp_path):
    (tmp_path / "train_32x32.mat").write_bytes(b"garbage" * 50)
    with pytest.raises(DataError, match="train_32x32.mat"):
        load_svhn(tmp_path)
