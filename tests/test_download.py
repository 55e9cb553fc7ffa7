"""`bioplausible data fetch cifar10|cifar100|svhn|kmnist` against a local HTTP server
(127.0.0.1, a thread) serving small files in each official layout; never the internet."""

import dataclasses
import gzip
import hashlib
import io
import json
import pickle
import struct
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from bioplausible.data import DataError, load
from bioplausible.data import download as dl
from bioplausible.data import fetch as fm
from bioplausible.data.cli import register

RNG = np.random.default_rng(0)


class _Handler(BaseHTTPRequestHandler):
    files: dict = {}
    cut: dict = {}  # path -> bytes to send before dropping the connection (once)
    requests: list = []

    def do_GET(self):  # noqa: N802
        body = self.files.get(self.path)
        rng = self.headers.get("Range")
        self.requests.append((self.path, rng))
        if body is None:
            self.send_error(404)
            return
        start = int(rng.split("=")[1].rstrip("-")) if rng else 0
        if start >= len(body) and rng:
            self.send_response(416)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(206 if rng else 200)
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        data = body[start:]
        cut = self.cut.pop(self.path, None)
        if cut is not None:
            self.wfile.write(data[:cut])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(data)

    def log_message(self, *a):
        pass


@pytest.fixture
def server():
    handler = type("H", (_Handler,), {"files": {}, "cut": {}, "requests": []})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        yield handler, f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def _md5(b: bytes) -> str:
    return hashlib.md5(b).hexdigest()


def _tar(members: dict[str, bytes], hostile: bool = True) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        if hostile:  # a link and a path out of the folder: neither may reach the disk
            link = tarfile.TarInfo("cifar-10-batches-py/evil_link")
            link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tf.addfile(link)
            out = tarfile.TarInfo("../escaped")
            out.size = 3
            tf.addfile(out, io.BytesIO(b"bad"))
    return buf.getvalue()


def _cifar_pickle(n: int, num_classes: int, key: bytes) -> bytes:
    d = {b"data": RNG.integers(0, 256, size=(n, 3072), dtype=np.uint8),
         key: [int(v) for v in RNG.integers(0, num_classes, size=n)]}
    return pickle.dumps(d, protocol=2)


def _idx(arr: np.ndarray) -> bytes:
    return gzip.compress(bytes([0, 0, 8, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes())


def _mat(n: int) -> bytes:
    import scipy.io

    buf = io.BytesIO()
    scipy.io.savemat(buf, {"X": RNG.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8),
                           "y": (np.arange(n) % 10 + 1).reshape(-1, 1).astype(np.uint8)})
    return buf.getvalue()


def _layout(name: str) -> dict[str, bytes]:
    """Served file name -> bytes, in the official layout of `name`."""
    if name == "cifar10":
        members = {f"cifar-10-batches-py/{b}": _cifar_pickle(4, 10, b"labels")
                   for b in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]}
        members["cifar-10-batches-py/batches.meta"] = pickle.dumps({b"label_names": [b"x"] * 10}, protocol=2)
        members["cifar-10-batches-py/readme.html"] = b"<html></html>"
        return {"cifar-10-python.tar.gz": _tar(members)}
    if name == "cifar100":
        members = {f"cifar-100-python/{b}": _cifar_pickle(5, 100, b"fine_labels") for b in ("train", "test")}
        return {"cifar-100-python.tar.gz": _tar(members, hostile=False)}
    if name == "svhn":
        return {"train_32x32.mat": _mat(6), "test_32x32.mat": _mat(4)}
    files = {}
    for split, n in (("train", 20), ("t10k", 10)):
        files[f"{split}-images-idx3-ubyte.gz"] = _idx(RNG.integers(0, 256, size=(n, 28, 28), dtype=np.uint8))
        files[f"{split}-labels-idx1-ubyte.gz"] = _idx((np.arange(n) % 10).astype(np.uint8))
    return files


def _serve(monkeypatch, server, name: str, wrong_md5: bool = False) -> dict[str, bytes]:
    """Serve `name`'s files and point its published table at them (md5s of these files)."""
    handler, base = server
    files = _layout(name)
    order = [dl._filename(url) for url, _ in dl.PUBLISHED[name].files]
    assert sorted(order) == sorted(files)  # the official file names
    for fname, data in files.items():
        handler.files[f"/{name}/{fname}"] = data
    table = tuple((f"{base}/{name}/{f}", "0" * 32 if wrong_md5 else _md5(files[f])) for f in order)
    # the real KMNIST check wants 60,000 training images; these files hold 20
    monkeypatch.setitem(dl.PUBLISHED, name, dataclasses.replace(dl.PUBLISHED[name], files=table, check=None))
    return files


def test_official_table_is_complete():
    for name, pub in dl.PUBLISHED.items():
        for url, md5 in pub.files:
            assert url.startswith("http") and len(md5) == 32 and int(md5, 16) >= 0
    assert dl._filename(dl.PUBLISHED["cifar10"].files[0][0]) == "cifar-10-python.tar.gz"


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "svhn", "kmnist"])
def test_good_download_installs_a_loadable_cache(tmp_path, server, monkeypatch, name):
    files = _serve(monkeypatch, server, name)
    target = fm.fetch(name, dest_root=tmp_path)
    assert target == tmp_path / name and fm.verify_cache(name, tmp_path)
    manifest = json.loads((target / "MANIFEST.json").read_text())
    got = {d["file"]: d for d in manifest["source"]["downloaded"]}
    assert set(got) == set(files)
    for fname, data in files.items():
        assert got[fname]["md5"] == _md5(data) and got[fname]["sha256"] == hashlib.sha256(data).hexdigest()
    assert all(len(m["sha256"]) == 64 for m in manifest["files"].values())
    raw = load(name, target, val_fraction=0.0)
    assert len(raw.x_test) > 0
    # nothing but the cache itself is left: no downloads, no links, nothing outside
    assert [p.name for p in tmp_path.iterdir()] == [name]
    assert not any(p.is_symlink() for p in target.iterdir()) and not (tmp_path / "escaped").exists()
    rows = {r["name"]: r for r in fm.status(tmp_path)}
    assert rows[name]["present"] and f"bioplausible data fetch {name}" in rows[name]["how"]


def test_checksum_mismatch_removes_the_file(tmp_path, server, monkeypatch):
    _serve(monkeypatch, server, "svhn", wrong_md5=True)
    with pytest.raises(DataError, match=r"md5 mismatch: expected 0{32}, got [0-9a-f]{32}; the file was removed"):
        fm.fetch("svhn", dest_root=tmp_path)
    assert list((tmp_path / ".downloads" / "svhn").iterdir()) == []
    assert not (tmp_path / "svhn").exists()


def test_interrupted_download_resumes(tmp_path, server, monkeypatch):
    files = _serve(monkeypatch, server, "cifar10")
    handler, _ = server
    size = len(files["cifar-10-python.tar.gz"])
    handler.cut["/cifar10/cifar-10-python.tar.gz"] = size // 3
    with pytest.raises(DataError, match="interrupted .*run the fetch again to resume"):
        dl.fetch_published("cifar10", tmp_path, progress=False)
    part = tmp_path / ".downloads" / "cifar10" / "cifar-10-python.tar.gz.part"
    assert part.stat().st_size == size // 3
    dl.fetch_published("cifar10", tmp_path, progress=False)
    assert handler.requests[-1] == ("/cifar10/cifar-10-python.tar.gz", f"bytes={size // 3}-")
    assert fm.verify_cache("cifar10", tmp_path)


def test_unreachable_server_names_url_and_folder(tmp_path, monkeypatch):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    url = f"http://127.0.0.1:{port}/train_32x32.mat"
    pub = dl.PUBLISHED["svhn"]
    monkeypatch.setitem(dl.PUBLISHED, "svhn", dataclasses.replace(pub, files=((url, "0" * 32),)))
    app = typer.Typer()
    register(app)

    @app.command()
    def other() -> None:
        pass

    r = CliRunner().invoke(app, ["data", "fetch", "svhn", "--dest", str(tmp_path)])
    assert r.exit_code == 1 and "Traceback" not in r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, lines
    assert f"cannot reach {url}" in lines[0] and str(tmp_path / "svhn") in lines[0].replace(" | ", "")
    assert "train_32x32.mat and test_32x32.mat" in lines[0]


def test_cli_fetch_from_publisher(tmp_path, server, monkeypatch):
    _serve(monkeypatch, server, "kmnist")
    app = typer.Typer()
    register(app)

    @app.command()
    def other() -> None:
        pass

    r = CliRunner().invoke(app, ["data", "fetch", "kmnist", "--dest", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert "kmnist" in r.stdout and "ready" in r.stdout and fm.verify_cache("kmnist", tmp_path)
