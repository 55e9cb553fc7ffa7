"""Data sets served by their publishers over HTTP: CIFAR-10, CIFAR-100, SVHN, KMNIST.

`fetch_published(name)` downloads each published file into `<root>/.downloads/<name>/`
(with a progress bar, resuming a partial file by an HTTP Range request), checks it against
the md5 the publisher (or the torchvision listing of it) gives, and hands the files to
`fetch.install`, which unpacks regular files only under names it chooses, records md5 and
sha256 of every file in the manifest and publishes the cache folder atomically. Where the
server cannot be reached, one line names the URL and the folder to put the files in by hand.

`PUBLISHED` is the table of URLs and checksums; tests replace entries in it to point at a
local server with small archives of the same layout.
"""

from __future__ import annotations

import http.client
import os
import shutil
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..paths import data_home
from .base import DataError
from .install import Artifact, Source, _hash_file, _idx_check, _regex_select, install, verify_cache

__all__ = ["PUBLISHED", "Published", "fetch_published", "published_source"]

_TIMEOUT_S = 60  # per socket operation: a stalled server ends in an error, not a hung fetch
_CHUNK = 1 << 16


@dataclass(frozen=True)
class Published:
    description: str
    files: tuple[tuple[str, str], ...]  # (url, published md5) per file
    select: Callable[[str], str | None]  # member of the archive (or file name) -> name in the cache
    required: tuple[str, ...]
    by_hand: str  # what to put in the folder when the server is out of reach
    check: Callable[[Path], dict[str, Any]] | None = None


_KMNIST = "http://codh.rois.ac.jp/kmnist/dataset/kmnist/"

PUBLISHED: dict[str, Published] = {
    "cifar10": Published(
        "CIFAR-10 (python version) from the University of Toronto",
        (("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"),),
        _regex_select(r"^cifar-10-batches-py/(data_batch_[1-5]|test_batch|batches\.meta)$", r"\1"),
        (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"),
        "cifar-10-python.tar.gz unpacked (cifar-10-batches-py/)",
    ),
    "cifar100": Published(
        "CIFAR-100 (python version) from the University of Toronto",
        (("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85"),),
        _regex_select(r"^cifar-100-python/(train|test|meta)$", r"\1"),
        ("train", "test"),
        "cifar-100-python.tar.gz unpacked (cifar-100-python/)",
    ),
    "svhn": Published(
        "SVHN cropped digits (format 2, .mat) from Stanford",
        (("http://ufldl.stanford.edu/housenumbers/train_32x32.mat", "e26dedcc434d2e4c54c9b2d4a06d8373"),
         ("http://ufldl.stanford.edu/housenumbers/test_32x32.mat", "eb5a983be6a315427106f1b164d9cef3")),
        _regex_select(r"^((?:train|test)_32x32\.mat)$", r"\1"),
        ("train_32x32.mat", "test_32x32.mat"),
        "train_32x32.mat and test_32x32.mat",
    ),
    "kmnist": Published(
        "Kuzushiji-MNIST (IDX files) from CODH",
        ((_KMNIST + "train-images-idx3-ubyte.gz", "bdb82020997e1d708af4cf47b453dcf7"),
         (_KMNIST + "train-labels-idx1-ubyte.gz", "e144d726b3acfaa3e44228e80efcd344"),
         (_KMNIST + "t10k-images-idx3-ubyte.gz", "5c965bf0a639b31b8f53240b1b52f4d7"),
         (_KMNIST + "t10k-labels-idx1-ubyte.gz", "7320c461ea6c1c855c0b718fb2a4b134")),
        _regex_select(r"^((?:train|t10k)-(?:images-idx3|labels-idx1)-ubyte\.gz)$", r"\1"),
        tuple(f"{s}-{k}-ubyte.gz" for s in ("train", "t10k") for k in ("images-idx3", "labels-idx1")),
        "the 4 IDX files (train/t10k images/labels, .gz)",
        # KMNIST is balanced like MNIST: 6,000 / 1,000 images per class
        _idx_check(60000, 10000, per_class=True),
    ),
}


def published_source(name: str) -> Source:
    """The `fetch.Source` for a published set (what `install` and `verify_cache` read)."""
    p = PUBLISHED[name]

    def no_download(_: Path) -> Artifact:  # fetch_published downloads; this is never the path
        raise DataError(f"{name}: use fetch_published")

    hosts = ", ".join(sorted({url.split("/")[2] for url, _ in p.files}))
    return Source(name=name, description=p.description, how=f"publisher's server ({hosts}) over HTTP",
                  download=no_download, select=p.select, required=p.required, check=p.check)


def _filename(url: str) -> str:
    name = url.rstrip("/").rsplit("/", 1)[-1]
    if not name or name in (".", "..") or "\\" in name:
        raise DataError(f"{url}: no file name in the URL")
    return name


def _unreachable(url: str, why: Any, name: str, root: Path) -> DataError:
    return DataError(f"cannot reach {url} ({why}); put {PUBLISHED[name].by_hand} in {root / name} by hand "
                     "(or pass --data-dir)")


def _download(url: str, dest: Path, progress: bool, name: str, root: Path) -> None:
    """Download `url` to `dest`, resuming `dest.part` if an earlier try left one."""
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "bioplausible", **({"Range": f"bytes={have}-"} if have else {})}
    req = urllib.request.Request(url, headers=headers)
    try:
        resp = urllib.request.urlopen(req, timeout=_TIMEOUT_S)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # nothing left to send: the partial file is whole
            os.replace(part, dest)
            return
        raise DataError(f"{url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        raise _unreachable(url, getattr(e, "reason", e), name, root) from None
    with resp:
        if have and resp.status != 206:  # the server ignored the range: start again
            have = 0
        length = resp.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        bar = _Bar(dest.name, total, have, progress)
        try:
            with open(part, "ab" if have else "wb") as f, bar:
                while chunk := resp.read(_CHUNK):
                    f.write(chunk)
                    bar.advance(len(chunk))
        except (OSError, http.client.HTTPException) as e:
            if isinstance(e, OSError) and e.filename:
                raise
            got = part.stat().st_size if part.exists() else 0
            raise DataError(f"{url}: download interrupted after {got} bytes ({e}); run the fetch again to "
                            "resume it") from None
    got = part.stat().st_size
    if total is not None and got != total:
        raise DataError(f"{url}: download interrupted after {got} of {total} bytes; run the fetch again to resume it")
    os.replace(part, dest)


class _Bar:
    """A rich progress bar on stderr (bytes, speed, time left), or nothing."""

    def __init__(self, label: str, total: int | None, done: int, show: bool) -> None:
        self.prog = None
        if show:
            from rich.console import Console
            from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                                       TransferSpeedColumn)

            self.prog = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                 TransferSpeedColumn(), TimeRemainingColumn(), console=Console(stderr=True))
            self.task = self.prog.add_task(label + (" (resumed)" if done else ""), total=total, completed=done)

    def __enter__(self):
        if self.prog is not None:
            self.prog.__enter__()
        return self

    def __exit__(self, *a):
        if self.prog is not None:
            self.prog.__exit__(*a)

    def advance(self, n: int) -> None:
        if self.prog is not None:
            self.prog.advance(self.task, n)


def fetch_published(name: str, dest_root: Path | str | None = None, force: bool = False,
                    progress: bool = True) -> Path:
    """Download, verify and install published data set `name` into `<root>/<name>/`."""
    if name not in PUBLISHED:
        raise DataError(f"{name!r} is not served by a publisher here; known: {', '.join(PUBLISHED)}")
    root = Path(dest_root) if dest_root is not None else data_home()
    if not force and verify_cache(published_source(name), root):
        return root / name
    pub = PUBLISHED[name]
    # kept between tries so that an interrupted download resumes; removed once installed
    downloads = root / ".downloads" / name
    downloads.mkdir(parents=True, exist_ok=True)
    provenance: dict[str, Any] = {"downloaded": []}
    for url, md5 in pub.files:
        dest = downloads / _filename(url)
        if not dest.exists():
            _download(url, dest, progress, name, root)
        sha256, got_md5 = _hash_file(dest)
        if got_md5 != md5.lower():
            dest.unlink()
            raise DataError(f"{url}: md5 mismatch: expected {md5}, got {got_md5}; the file was removed, run the "
                            "fetch again")
        provenance["downloaded"].append({"url": url, "file": dest.name, "md5": got_md5, "sha256": sha256,
                                         "bytes": dest.stat().st_size})
    archives = [downloads / _filename(u) for u, _ in pub.files if _filename(u).endswith((".tar.gz", ".tgz", ".tar"))]
    # one tarball (CIFAR) is unpacked by `install`; plain files (SVHN, KMNIST) are taken as a tree
    artifact = Artifact(archives[0] if len(pub.files) == 1 and archives else downloads, provenance)
    target = install(published_source(name), artifact, root)
    shutil.rmtree(downloads, ignore_errors=True)
    try:
        downloads.parent.rmdir()  # only when no other set's download is pending
    except OSError:
        pass
    return target
