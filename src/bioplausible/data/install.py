"""The install step shared by every way of obtaining a data set (the registries' clients in
`fetch`, the publishers' servers in `download`): check an archive or tree, take the data files
out (regular files only, under names we choose), check them, write MANIFEST.json and publish
the folder atomically; and the check of a cache against its manifest. No network here, and
no knowledge of which sets exist: callers hand in the `Source`."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import re
import shutil
import tarfile
import tempfile
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from ..paths import data_home
from .base import DataError
from .manifest import MANIFEST, read_manifest


__all__ = ["Artifact", "Source", "install", "verify_cache", "verified"]


@dataclass
class Artifact:
    """What a download step hands back: an archive (a tarball) or an unpacked tree, plus
    what is known about where it came from (recorded in the manifest)."""

    path: Path
    provenance: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Source:
    name: str
    description: str
    how: str  # one line for `data list`: where it ships
    download: Callable[[Path], Artifact]  # network step: fills the scratch folder it is given
    select: Callable[[str], str | None]  # archive member path -> name in the cache (or skip)
    required: tuple[str, ...]  # cache names that must come out of the archive
    archive_sha256: str | None = None  # checked whenever the download yields the archive file
    file_sha256: Mapping[str, str] = field(default_factory=dict)  # pinned per cached file
    file_md5: Mapping[str, str] = field(default_factory=dict)  # pins published as md5 only
    check: Callable[[Path], dict[str, Any]] | None = None  # content check on the staged files


def _hash_file(path: Path) -> tuple[str, str]:
    sha, md5 = hashlib.sha256(), hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            sha.update(chunk)
            md5.update(chunk)
    return sha.hexdigest(), md5.hexdigest()


def _expect(path: Path | str, algo: str, expected: str, actual: str) -> None:
    if expected.lower() != actual.lower():
        raise DataError(f"{path}: {algo} mismatch: expected {expected}, got {actual}")

def _regex_select(pattern: str, template: str) -> Callable[[str], str | None]:
    rx = re.compile(pattern)

    def select(member: str) -> str | None:
        m = rx.search(member)
        return m.expand(template) if m else None

    return select

# --------------------------------------------------------------------------- content checks


def _idx_check(n_train: int, n_test: int, per_class: bool) -> Callable[[Path], dict[str, Any]]:
    """Read the staged IDX files back: the counts (and, where the data set is balanced by
    construction, the per-class counts) catch a package that ships a subset."""

    def check(folder: Path) -> dict[str, Any]:
        from .idx import find_idx_file, read_idx

        facts: dict[str, Any] = {}
        for split, n in (("train", n_train), ("t10k", n_test)):
            img = read_idx(find_idx_file(folder, split, "images"), ndim=3)
            lab_path = find_idx_file(folder, split, "labels")
            lab = read_idx(lab_path, ndim=1)
            if len(img) != n or len(lab) != n:
                raise DataError(
                    f"{lab_path}: expected {n} {split} samples, got {len(img)} images / {len(lab)} labels"
                )
            counts = np.bincount(lab, minlength=10)
            if len(counts) != 10 or (per_class and not np.all(counts == n // 10)):
                raise DataError(
                    f"{lab_path}: per-class counts {counts.tolist()}; expected {n // 10} for each of 10 classes"
                )
            facts[split] = {"n": n, "shape": list(img.shape[1:]), "per_class": counts.tolist()}
        return facts

    return check

# --------------------------------------------------------------------------- install step


def _members(artifact: Path) -> Iterator[tuple[str, Callable[[], Any]]]:
    """(member path, opener) for each regular file of a tarball or an unpacked tree."""
    if artifact.is_dir():
        for p in sorted(artifact.rglob("*")):
            if p.is_file() and not p.is_symlink():
                yield p.relative_to(artifact).as_posix(), lambda p=p: open(p, "rb")
        return
    try:
        with tarfile.open(artifact, "r:*") as tf:
            for m in tf:
                # Regular files only, copied under names we choose: links, devices and
                # "../" paths in a hostile tarball never reach the file system.
                if m.isfile():
                    yield m.name, lambda m=m: tf.extractfile(m)
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DataError(f"{artifact}: unreadable archive ({type(e).__name__}: {e})") from e


def _extract(src: Source, artifact: Path, staged: Path) -> dict[str, dict[str, Any]]:
    files: dict[str, dict[str, Any]] = {}
    for member, opener in _members(artifact):
        name = src.select(member)
        # First match wins (pins catch a hostile duplicate); names that are not plain
        # file names, or that would shadow our manifest, are never written.
        if name is None or name in files or name in (".", "..", MANIFEST) or "/" in name:
            continue
        dest = staged / name
        sha, md5, size = hashlib.sha256(), hashlib.md5(), 0
        try:
            with opener() as fin, open(dest, "wb") as fout:
                while chunk := fin.read(1 << 20):
                    sha.update(chunk)
                    md5.update(chunk)
                    size += len(chunk)
                    fout.write(chunk)
                fout.flush()
                os.fsync(fout.fileno())  # the rename below must not publish half-written files
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
            raise DataError(f"{artifact}: {member} is unreadable ({type(e).__name__}: {e})") from e
        files[name] = {"sha256": sha.hexdigest(), "md5": md5.hexdigest(), "bytes": size, "from": member}
    missing = [n for n in src.required if n not in files]
    if missing:
        raise DataError(f"{artifact}: does not contain {', '.join(missing)}")
    return files


def _check_pins(src: Source, folder: Path, files: Mapping[str, Mapping[str, Any]]) -> None:
    for algo, pins in (("sha256", src.file_sha256), ("md5", src.file_md5)):
        for name, want in pins.items():
            _expect(folder / name, algo, want, str(files.get(name, {}).get(algo, "(missing)")))


def _commit(staged: Path, target: Path) -> None:
    """Publish `staged` as `target` by renames on one file system, so a reader never sees
    a half-written cache: the old folder is moved aside first (a directory cannot be
    renamed over a non-empty one) and deleted only once the new one is in place."""
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.replace(target, old / target.name)
    try:
        os.replace(staged, target)
    except OSError:
        if old is not None and not target.exists():
            os.replace(old / target.name, target)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def install(
    src: Source,
    artifact: Artifact | Path,
    dest_root: Path | str | None = None,
    scratch: Path | None = None,
) -> Path:
    """Install step: verify `artifact`, take the data files out, check them, write the
    manifest and publish `<dest_root>/<name>/` atomically. No network.

    `scratch` is a folder on the same file system as `dest_root` to stage in (fetch
    passes its own); by default a temporary one is made in `dest_root`."""
    name = src.name
    if isinstance(artifact, Path):
        artifact = Artifact(artifact)
    root = Path(dest_root) if dest_root is not None else data_home()
    root.mkdir(parents=True, exist_ok=True)
    target = root / name

    prov = dict(artifact.provenance)
    if artifact.path.is_file() and src.archive_sha256:
        actual, _ = _hash_file(artifact.path)
        _expect(artifact.path, "sha256", src.archive_sha256, actual)
        prov["archive"] = artifact.path.name
        prov["archive_sha256"] = actual

    scratch_cm = (
        tempfile.TemporaryDirectory(prefix=f".{name}.install-", dir=root)
        if scratch is None
        else contextlib.nullcontext(scratch)
    )
    with scratch_cm as tmp:
        staged = Path(tmp) / "staged"
        staged.mkdir()
        files = _extract(src, artifact.path, staged)
        _check_pins(src, staged, files)
        facts = src.check(staged) if src.check else {}
        manifest = {
            "format": 1,
            "name": name,
            "description": src.description,
            "source": prov,
            "files": files,
            "checks": facts,
            "fetched_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        (staged / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        _commit(staged, target)
    return target

def verify_cache(src: Source, dest_root: Path | str | None = None, rehash: bool = True) -> bool:
    """True when `<dest_root>/<src.name>/` holds every required file, as its manifest says
    and as the pins say. `rehash=False` checks presence and sizes only (cheap, for listings)."""
    folder = (Path(dest_root) if dest_root is not None else data_home()) / src.name
    m = read_manifest(folder)
    if m is None or any(n not in m["files"] for n in src.required):
        return False
    try:
        _check_pins(src, folder, m["files"])
    except DataError:
        return False
    for fname, meta in m["files"].items():
        p = folder / fname
        if not p.is_file() or p.stat().st_size != meta.get("bytes"):
            return False
        if rehash and _hash_file(p)[0] != meta.get("sha256"):
            return False
    return True


def verified(folder: Path) -> bool | None:
    """Whether every file of a fetched cache was hashed (by a run or `data verify`) since it
    last changed and matched its manifest: True, False (a mismatch), or None (not verified
    since it changed, or no manifest). Reads cached digests only; hashes nothing."""
    from . import cached_sha256

    m = read_manifest(folder)
    if m is None:
        return None
    for fname, meta in m["files"].items():
        got = cached_sha256(folder / fname)
        if got is None:
            return None
        if got != meta.get("sha256"):
            return False
    return True

