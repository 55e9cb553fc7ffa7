"""Run one configuration: build, train, evaluate every epoch, record in the store."""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import math
import os
import platform
import subprocess
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .. import __version__
from ..algorithms import get as get_rule
from ..algorithms import resolve as resolve_rule
from ..algorithms.base import Learner
from ..config import RunConfig
from ..data import Dataset, load
from ..models import build
from .fingerprint import code_fingerprint
from .store import Store


class Diverged(RuntimeError):
    pass


class CheckpointError(ValueError):
    """A run's checkpoint is missing, unreadable, or not the one recorded with the run."""


def resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {spec}: no CUDA device is available here (use auto or cpu)")
    try:
        return torch.device(spec)
    except RuntimeError:
        raise ValueError(f"--device {spec!r} is not a device (use auto, cpu, cuda or cuda:N)") from None


@functools.lru_cache(maxsize=1)
def versions() -> dict[str, str]:
    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__, "bioplausible": __version__}


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=Path(__file__).parent,
                               capture_output=True, text=True, timeout=5)
        if out.returncode == 0:
            return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return None


def with_data_identity(cfg: RunConfig) -> RunConfig:
    """`cfg` with the digest of the data files it reads (a DataError if they are missing or
    differ from a fetched cache's manifest). Its key then names the data, not the folder."""
    from ..data import data_digest

    digest = data_digest(cfg.data, cfg.data_dir)
    return cfg if digest == cfg.data_digest else cfg.model_copy(update={"data_digest": digest})


def check_data_identity(cfg: RunConfig) -> None:
    """The data about to be read are the data the run's id was made with (a Ray worker, or
    files changed since the grid was expanded)."""
    from ..data import DataError, data_digest

    if cfg.data_digest is not None:
        got = data_digest(cfg.data, cfg.data_dir)
        if got != cfg.data_digest:
            where = cfg.data_dir or f"the {cfg.data} cache"
            raise DataError(f"{where} on {platform.node()}: data digest {got}, but the run was set up with "
                            f"{cfg.data_digest} (other files)")


def build_learner(cfg: RunConfig, input_shape, num_classes: int, device: torch.device | str = "cpu") -> Learner:
    rule = get_rule(cfg.rule, cfg.model)
    kw: dict[str, Any] = {"act": cfg.act or rule.default_act, **rule.network_for(cfg)}
    torch.manual_seed(cfg.seed)
    stack = build(cfg.model, input_shape, num_classes, seed=cfg.seed, **kw)
    learner = rule(stack.to(device), cfg)
    return learner.to(device)


def network_of(learner: Learner) -> dict[str, Any]:
    """The network a learner trains, as built (after the rule's own changes to its stack):
    hidden dense widths, conv channels, each layer's name, kind and size, and a one-line
    summary such as '784-2000-10' or '1x28x28 > c32 > c64 > c64 > 256 > 10'."""
    stack = learner.stack
    layers = [{"name": l.name, "kind": l.kind, "in": int(l.in_features), "out": int(l.out_features)}
              for l in stack.layers]
    convs = [l["out"] for l in layers if l["kind"] == "conv"]
    dense = [l["out"] for l in layers[:-1] if l["kind"] != "conv"]
    if convs:
        summary = " > ".join(["x".join(map(str, stack.input_shape))] + [f"c{c}" for c in convs]
                             + [str(l["out"]) for l in layers if l["kind"] != "conv"])
    else:
        summary = "-".join([str(layers[0]["in"])] + [str(l["out"]) for l in layers])
    return {"arch": stack.arch, "widths": dense, "channels": convs, "layers": layers, "summary": summary}


def build_untrained(config: dict[str, Any], seed: int, input_shape=None, num_classes: int | None = None) -> Learner:
    """The same architecture and rule with fresh random weights (a baseline for comparisons).
    Without `input_shape`/`num_classes` the data set is read to find them."""
    cfg = resolve_rule(RunConfig(**{**config, "seed": seed, "device": "cpu"}))
    if input_shape is None or num_classes is None:
        data = load(cfg.data, cfg.data_dir, cfg.val_fraction)
        input_shape, num_classes = data.input_shape, data.num_classes
    return build_learner(cfg, input_shape, num_classes)


@torch.no_grad()
def evaluate(learner: Learner, x: torch.Tensor, y: torch.Tensor, batch_size: int, device) -> float:
    if len(x) == 0:
        return float("nan")
    learner.eval()
    correct = 0
    for i in range(0, len(x), batch_size):
        xb = x[i : i + batch_size].to(device)
        correct += (learner.predict(xb).argmax(1).cpu() == y[i : i + batch_size]).sum().item()
    learner.train()
    return correct / len(x)


def lr_factor(schedule: str, epoch: int, epochs: int) -> float:
    """Learning-rate multiplier for 1-based `epoch`: constant; cosine from 1 towards 0 (the
    last epoch keeps a small rate); step: x0.1 at 50% and again at 75% of the epochs."""
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * (epoch - 1) / epochs))
    if schedule == "step":
        return 0.1 ** ((epoch > epochs * 0.5) + (epoch > epochs * 0.75))
    return 1.0


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _save_atomic(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def checkpoint_path(store: Store, run_id: str) -> Path:
    return store.path.parent / "checkpoints" / f"{run_id}.pt"


def train(
    cfg: RunConfig,
    data: Dataset | None = None,
    on_step: Callable[[dict[str, Any]], None] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[Learner, dict[str, Any], list[dict[str, Any]], Dataset]:
    """Train and evaluate; returns (learner, run fields, per-epoch rows, data).

    Raises `Diverged` when the loss stops being finite."""
    device = resolve_device(cfg.device)
    if data is None:
        check_data_identity(cfg)
        data = load(cfg.data, cfg.data_dir, cfg.val_fraction)
    if cfg.train_subset is not None:
        data = data.subset(cfg.train_subset)
    learner = build_learner(cfg, data.input_shape, data.num_classes, device)
    epochs: list[dict[str, Any]] = []
    train_time = 0.0
    n_seen = 0
    for epoch in range(1, cfg.epochs + 1):
        learner.set_lr_factor(lr_factor(cfg.lr_schedule, epoch, cfg.epochs))
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        n = 0
        extra_sums: dict[str, float] = {}
        t0 = time.perf_counter()
        for step, (xb, yb) in enumerate(data.batches(cfg.batch_size, cfg.seed, epoch, device)):
            out = learner.train_step(xb, yb)
            loss_sum += out["loss"] * len(yb)
            correct += out.get("correct", 0)
            n += len(yb)
            for k, v in out.items():
                if k not in ("loss", "correct"):
                    extra_sums[k] = extra_sums.get(k, 0.0) + float(v)
            if step % 50 == 0 and not torch.isfinite(loss_sum):
                raise Diverged(f"non-finite loss at epoch {epoch}, step {step}")
            if on_step is not None:
                on_step({"epoch": epoch, "step": step, "n": n})
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        train_time += dt
        n_seen += n
        train_loss = (loss_sum / max(n, 1)).item()
        if not math.isfinite(train_loss):
            raise Diverged(f"non-finite loss in epoch {epoch}")
        row = {
            "epoch": epoch,
            "train_loss": train_loss,
            "train_acc": correct.item() / max(n, 1),
            "val_acc": evaluate(learner, data.x_val, data.y_val, cfg.eval_batch_size, device),
            "test_acc": evaluate(learner, data.x_test, data.y_test, cfg.eval_batch_size, device),
            "epoch_time": dt,
            "extra": {k: v / max(step + 1, 1) for k, v in extra_sums.items()},
        }
        epochs.append(row)
        if on_epoch is not None:
            on_epoch(row)
    last = epochs[-1]
    best = max(epochs, key=lambda r: (r["val_acc"] if not math.isnan(r["val_acc"]) else -1, r["epoch"]))
    fields = {
        "network": network_of(learner),
        "metrics": {
            "test_acc": last["test_acc"],
            "val_acc": last["val_acc"],
            "train_loss": last["train_loss"],
            "train_acc": last["train_acc"],
            "best_val_epoch": best["epoch"],
            "best_val_test_acc": best["test_acc"],
            "n_params": sum(p.numel() for p in learner.parameters()),
        },
        "train_time": train_time,
        "samples_per_s": n_seen / train_time if train_time > 0 else None,
        "epoch_time": train_time / len(epochs),
    }
    return learner, fields, epochs, data


def run(
    cfg: RunConfig,
    store: Store,
    force: bool = False,
    data: Dataset | None = None,
    on_step: Callable[[dict[str, Any]], None] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    save_checkpoint: bool = True,
) -> dict[str, Any] | None:
    """Run `cfg` and record it. Returns the run row, or None when it was already done by
    the same code."""
    cfg = resolve_rule(cfg)
    if data is None:
        cfg = with_data_identity(cfg)
    run_id = cfg.key()
    if not force and store.has(run_id, code=code_fingerprint(cfg.rule)):
        return None
    row = execute(cfg, data=data, on_step=on_step, on_epoch=on_epoch,
                  checkpoint_dir=(store.path.parent / "checkpoints") if save_checkpoint else None)
    epochs = row.pop("_epochs")
    store.record(row, epochs)
    return row


def execute(
    cfg: RunConfig,
    data: Dataset | None = None,
    on_step=None,
    on_epoch=None,
    checkpoint_dir: Path | None = None,
) -> dict[str, Any]:
    """Train `cfg` and return the full run row (with '_epochs'), never raising for a bad
    run: divergence and errors become statuses. Used in-process and by sweep workers, which
    send the row back to the one process that writes the store."""
    cfg = resolve_rule(cfg)
    run_id = cfg.key()
    started, t0 = _now(), time.perf_counter()
    base = {
        "id": run_id, "rule": cfg.rule, "model": cfg.model, "data": cfg.data, "seed": cfg.seed,
        "config": cfg.model_dump(mode="json"), "versions": versions(), "git_commit": git_commit(),
        "code": code_fingerprint(cfg.rule), "started": started,
    }
    try:
        device = resolve_device(cfg.device)
        base["device"] = str(device)
        learner, fields, epochs, data = train(cfg, data, on_step, on_epoch)
        ckpt = None
        if checkpoint_dir is not None:
            ckpt = checkpoint_dir / f"{run_id}.pt"
            _save_atomic({
                "state": learner.checkpoint(), "input_shape": list(data.input_shape),
                "num_classes": data.num_classes, "mean": data.mean.tolist(), "std": data.std.tolist(),
                "config": cfg.model_dump(mode="json"), "run_id": run_id,
            }, ckpt)
            base["checkpoint_sha256"] = _sha256(ckpt)
        status, reason = "done", None
    except Diverged as e:
        status, reason, fields, epochs, ckpt = "diverged", str(e), {"metrics": {}}, [], None
    except KeyboardInterrupt:
        raise
    except Exception as e:  # recorded, not raised: one bad cell must not stop a sweep
        status, reason, fields, epochs, ckpt = "failed", f"{type(e).__name__}: {e}", {"metrics": {}}, [], None
        reason += "\n" + traceback.format_exc(limit=6)
    return {
        **base, **fields, "status": status, "reason": reason, "finished": _now(),
        "wall_time": time.perf_counter() - t0, "checkpoint": str(ckpt) if ckpt else None, "_epochs": epochs,
    }


def load_learner(store: Store, run_id: str, device: str = "cpu") -> tuple[Learner, dict[str, Any]]:
    """Rebuild a trained learner from its checkpoint. The path is resolved against the
    store's folder (never the working directory) and the file must be the one recorded with
    the run (its sha256). Loaded with weights_only=True: a checkpoint can hold tensors and
    plain containers, never code. Any problem is a CheckpointError naming the file."""
    rows = store.runs(id=run_id)
    if not rows:
        raise FileNotFoundError(f"no run {run_id} in {store.path}")
    row = rows[0]
    folder = store.path.parent
    candidates = []
    if row.get("checkpoint"):
        p = Path(row["checkpoint"])
        candidates.append(p if p.is_absolute() else folder / p)
    candidates.append(checkpoint_path(store, run_id))  # where every run's checkpoint is written
    path = next((c for c in candidates if c.is_file()), None)
    if path is None:
        raise CheckpointError(f"checkpoint of run {run_id} not found at {candidates[0]} (status {row['status']})")
    want = row.get("checkpoint_sha256")
    if want and _sha256(path) != want:
        raise CheckpointError(f"{path}: not the checkpoint recorded with run {run_id} in {store.path} "
                              "(sha256 differs); rerun it with --force")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
        if not isinstance(ckpt, dict) or not {"config", "state", "input_shape", "num_classes"} <= set(ckpt):
            raise CheckpointError(f"{path}: not a bioplausible checkpoint")
        if ckpt.get("run_id", run_id) != run_id:
            raise CheckpointError(f"{path}: checkpoint of run {ckpt.get('run_id')}, not of run {run_id}")
        cfg = RunConfig(**{**ckpt["config"], "device": device})
        if not want and "run_id" not in ckpt and cfg.key() != run_id:
            raise CheckpointError(f"{path}: its settings are not those of run {run_id}")
        learner = build_learner(cfg, tuple(ckpt["input_shape"]), ckpt["num_classes"], device)
        learner.restore(ckpt["state"])
    except CheckpointError:
        raise
    except Exception as e:  # torch, pickle, zip and shape errors alike: the file is not this run's
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise CheckpointError(f"{path}: cannot load the checkpoint of run {run_id} ({type(e).__name__}: {first})") from None
    learner.eval()
    meta = {
        "id": run_id, "rule": cfg.rule, "model": cfg.model, "data": cfg.data, "seed": cfg.seed,
        "input_shape": tuple(ckpt["input_shape"]), "num_classes": ckpt["num_classes"],
        "mean": ckpt["mean"], "std": ckpt["std"], "config": ckpt["config"],
    }
    return learner, meta
