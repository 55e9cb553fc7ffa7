"""Published run records: the runs behind the figures a reader sees, kept in the repository.

A results store lives on one machine (`results/` is not tracked); the runs behind the README's
table are exported from it to a tracked folder, `results/published/`, as one JSON file per
run: the store's row (config, seed, versions, git commit, code fingerprint, the network that
ran, metrics, timings, status) and its per-epoch history. Checkpoints are not exported (the
path is dropped). `load_into` reads such a folder back into a store, so `bioplausible report
--published results/published` rebuilds the table from the repository alone.

Files are named `<data>/<rule>-<model>-s<seed>-<run id>.json`: a re-export of the same run
replaces its file, another setting of the same cell is another file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

FORMAT = 1
EXPORTED_STATUSES = ("done", "diverged")  # a failed run says nothing about the rule
DROPPED = ("checkpoint",)  # machine-local paths

DEFAULT_FOLDER = Path("results") / "published"


class PublishedError(ValueError):
    """A published folder or record is unusable; the message names the file."""


def record_path(folder: Path, run: dict[str, Any]) -> Path:
    return Path(folder) / run["data"] / f"{run['rule']}-{run['model']}-s{run['seed']}-{run['id']}.json"


def export(store, runs: list[dict[str, Any]], folder: str | Path = DEFAULT_FOLDER) -> list[Path]:
    """Write each finished run of `runs` (rows of `store`) with its epochs to `folder`.
    Returns the files written; failed runs are left out."""
    folder = Path(folder)
    written = []
    for run in runs:
        if run["status"] not in EXPORTED_STATUSES:
            continue
        rec = {k: v for k, v in run.items() if k not in DROPPED}
        rec["epochs"] = [{k: v for k, v in e.items() if k != "run_id"} for e in store.epochs(run["id"])]
        rec["format"] = FORMAT
        path = record_path(folder, run)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        tmp.write_text(json.dumps(rec, sort_keys=True, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, path)
        written.append(path)
    return written


def read(folder: str | Path) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """Every record under `folder`: (run row, epochs), in file-name order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PublishedError(f"no published records folder at {folder}")
    out = []
    for path in sorted(folder.rglob("*.json")):
        try:
            rec = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise PublishedError(f"{path}: not a readable run record ({e})") from None
        if not isinstance(rec, dict) or rec.get("format") != FORMAT or "id" not in rec:
            raise PublishedError(f"{path}: not a run record of format {FORMAT}")
        epochs = rec.pop("epochs", [])
        rec.pop("format")
        out.append((rec, epochs))
    return out


def load_into(store, folder: str | Path) -> int:
    """Record every published run of `folder` in `store`; returns how many."""
    records = read(folder)
    for run, epochs in records:
        store.record({**run, "checkpoint": None}, epochs)
    return len(records)
