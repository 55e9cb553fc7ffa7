"""The Python API: rules, data sets, a learner for one's own training loop, a whole run,
and the recorded results. `bioplausible/__init__.py` re-exports these lazily.

Everything here is assembled from the package's own pieces (the rule registry, the model
builders, `experiments.runner` for training and recording, the results store); nothing is
trained or recorded any other way than `bioplausible run` does it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the heavy imports stay inside the functions: `import bioplausible` is quick
    import pandas as pd
    from torch import nn

    from .algorithms.base import Learner
    from .config import RunConfig
    from .data import Dataset

__all__ = ["Run", "rules", "datasets", "learner", "train", "results"]


def rules() -> list[dict[str, Any]]:
    """Every learning rule: name, one-line description, the package models it trains
    (`mlp`, `cnn`) and whether it trains a network of one's own (`custom`, with the
    reason where it does not)."""
    from .algorithms import all_rules, architectures

    return [
        {"name": n, "description": cls.description, "architectures": architectures(n),
         "custom": not cls.own_network, "why_not_custom": cls.own_network or None}
        for n, cls in all_rules().items()
    ]


def datasets(dest: str | Path | None = None) -> list[dict[str, Any]]:
    """Every known data set: name, description, whether it is on disk (under `dest`, by
    default the bioplausible data folder), its folder, and how to get it."""
    from .data.fetch import status

    return status(dest)


def _config(rule: str, model: str, options: dict[str, Any], **fixed: Any) -> RunConfig:
    """A RunConfig from keyword options: the ones RunConfig names are run settings (lr,
    batch_size, optimizer, widths, ...), the rest go to the rule's own Options, which
    reject a misspelt one by name."""
    from .algorithms import resolve
    from .config import RunConfig

    run_kw = {k: v for k, v in options.items() if k in RunConfig.model_fields and k != "rule_options"}
    rule_kw = {**options.get("rule_options", {}), **{k: v for k, v in options.items()
                                                     if k not in RunConfig.model_fields}}
    # the registry writes the rule's defaults in: the config (and its key) is the one recorded
    return resolve(RunConfig(rule=rule, model=model, rule_options=rule_kw, **fixed, **run_kw))


def learner(rule: str, model: str | nn.Sequential = "mlp", input_shape=None, num_classes: int | None = None,
            device: str = "cpu", seed: int = 0, **options: Any) -> Learner:
    """A `Learner` for `rule`, to drive from one's own loop: `train_step(x, y)` (one
    mini-batch; returns the loss and the number correct), `predict(x)` (class scores),
    `activations(x)` (per layer), `state_dict()`.

    `model` is "mlp" or "cnn" (the package's models; `num_classes` needed) or a
    `torch.nn.Sequential` of one's own (its last Linear gives the classes; the learner
    trains the Sequential's own parameters in place). `input_shape` is one input without the
    batch dimension, e.g. (1, 28, 28). `options` are run settings (lr, optimizer, widths,
    channels, act, ...) or the rule's own options (see `bioplausible list`)."""
    from torch import nn

    from .experiments.runner import build_learner, resolve_device

    if input_shape is None:
        raise ValueError("learner: input_shape is needed, e.g. (1, 28, 28) for one MNIST image")
    dev = resolve_device(device)
    if isinstance(model, nn.Sequential):
        from .algorithms import get
        from .models.sequential import from_sequential

        stack = from_sequential(model, input_shape)
        if num_classes is not None and num_classes != stack.num_classes:
            raise ValueError(f"learner: num_classes={num_classes} but the model's last Linear has "
                             f"{stack.num_classes} outputs")
        cfg = _config(rule, stack.arch, options, seed=seed, device=str(dev))
        # the rule's own tensors (feedback matrices, ...) in the model's precision too
        dtype = next(model.parameters()).dtype
        return get(rule, stack.arch)(stack.to(dev), cfg).to(dev, dtype)
    if not isinstance(model, str):
        raise ValueError(f"learner: model must be 'mlp', 'cnn' or a torch.nn.Sequential, got {type(model).__name__}")
    if num_classes is None:
        raise ValueError(f"learner: num_classes is needed for model {model!r}")
    cfg = _config(rule, model, options, seed=seed, device=str(dev))
    return build_learner(cfg, tuple(input_shape), int(num_classes), dev)


@dataclass
class Run:
    """One training run: its config, per-epoch history, final metrics and the learner."""

    id: str
    config: dict[str, Any]
    status: str
    history: list[dict[str, Any]]
    metrics: dict[str, Any]
    learner: Any = None  # the trained Learner (None when a store already held the run and had no checkpoint)
    reason: str | None = None
    recorded: bool = False  # written to the store by this call
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def test_acc(self) -> float | None:
        return self.metrics.get("test_acc")


class EpochBar:
    """The progress bar `bioplausible run` shows: steps of the current epoch, then the
    epoch's loss and accuracies."""

    def __init__(self, steps: int, epochs: int, show: bool, console=None) -> None:
        self.steps, self.epochs, self.show, self.console = steps, epochs, show, console

    def __enter__(self):
        if self.show:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.prog = Progress(TextColumn("epoch {task.fields[epoch]}/{task.fields[epochs]}"), BarColumn(),
                                 MofNCompleteColumn(), TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
                                 console=self.console)
            self.prog.__enter__()
            self.task = self.prog.add_task("train", total=self.steps, epoch=1, epochs=self.epochs, info="")
        return self

    def __exit__(self, *a):
        if self.show:
            return self.prog.__exit__(*a)

    def on_step(self, s: dict[str, Any]) -> None:
        if self.show:
            self.prog.update(self.task, completed=s["step"] + 1, epoch=s["epoch"])

    def on_epoch(self, r: dict[str, Any]) -> None:
        if self.show:
            info = (f"loss {r['train_loss']:.4f} train {r['train_acc']:.2%} val {r['val_acc']:.2%} "
                    f"test {r['test_acc']:.2%}")
            self.prog.update(self.task, info=info)
            if r["epoch"] < self.epochs:
                self.prog.reset(self.task, total=self.steps, epoch=r["epoch"] + 1, epochs=self.epochs, info=info)


def train(rule: str, data: str | Dataset = "digits", model: str = "mlp", epochs: int = 10, seed: int = 0,
          store: str | Path | None = None, device: str = "auto", progress: bool = True, force: bool = False,
          **options: Any) -> Run:
    """Train `rule` on `model` ("mlp" or "cnn") and data set `data` (a name, or a loaded
    `bioplausible.data.Dataset`) as `bioplausible run` does, evaluating every epoch.

    With `store` (a path to a results store, SQLite) the run is recorded there with its
    checkpoint, and a run the store already holds from the same code is returned from the
    store instead of trained again (unless `force`); without one nothing is written.
    `options` are run settings (lr, batch_size, optimizer, widths, ...) or the rule's own."""
    from .algorithms import resolve as resolve_rule
    from .data import load
    from .experiments.runner import execute, load_learner, resolve_device, with_data_identity
    from .experiments.runner import train as run_train

    if not isinstance(model, str):
        raise ValueError("train: model must be 'mlp' or 'cnn'; train a network of your own with "
                         "bioplausible.learner(rule, model=your_sequential, ...) in your own loop")
    name = data if isinstance(data, str) else data.name
    # the id a store knows the run by: the rule's defaults written in, and the data's digest
    cfg = resolve_rule(_config(rule, model, options, data=name, epochs=epochs, seed=seed, device=device))
    if isinstance(data, str):
        cfg = with_data_identity(cfg)
    dataset = load(cfg.data, cfg.data_dir, cfg.val_fraction) if isinstance(data, str) else data
    if cfg.train_subset is not None:
        dataset = dataset.subset(cfg.train_subset)
    steps = -(-len(dataset.x_train) // cfg.batch_size)
    if store is None:
        with EpochBar(steps, cfg.epochs, progress) as bar:
            trained, fields, history, _ = run_train(cfg, dataset, bar.on_step, bar.on_epoch)
        return Run(id=cfg.key(), config=cfg.model_dump(mode="json"), status="done", history=history,
                   metrics=fields["metrics"], learner=trained,
                   extra={k: fields[k] for k in ("train_time", "samples_per_s", "epoch_time")})

    from .experiments.fingerprint import code_fingerprint
    from .experiments.store import Store

    st = Store(store)
    recorded = False
    if force or not st.has(cfg.key(), code=code_fingerprint(cfg.rule)):
        with EpochBar(steps, cfg.epochs, progress) as bar:
            row = execute(cfg, data=dataset, on_step=bar.on_step, on_epoch=bar.on_epoch,
                          checkpoint_dir=st.path.parent / "checkpoints")
        st.record(row, row.pop("_epochs"))
        recorded = True
    row = st.runs(id=cfg.key())[0]
    trained = None
    if row["status"] == "done":
        try:
            trained, _ = load_learner(st, cfg.key(), device=str(resolve_device(cfg.device)))
        except FileNotFoundError:
            pass
    return Run(id=row["id"], config=row["config"], status=row["status"], history=st.epochs(row["id"]),
               metrics=row["metrics"], learner=trained, reason=row.get("reason"), recorded=recorded,
               extra={k: row.get(k) for k in ("train_time", "samples_per_s", "epoch_time", "wall_time")})


def results(store: str | Path) -> pd.DataFrame:
    """The runs recorded in `store`: one row per run (rule, model, data, seed, status, the
    final metrics as columns, timings, id), as a pandas DataFrame."""
    import pandas as pd

    from .experiments.store import Store

    path = Path(store)
    if not path.is_file():
        raise FileNotFoundError(f"no results store at {path}")
    rows = []
    for r in Store(path).runs():
        rows.append({
            "id": r["id"], "rule": r["rule"], "model": r["model"], "data": r["data"], "seed": r["seed"],
            "status": r["status"], **(r.get("metrics") or {}),
            **{k: r.get(k) for k in ("train_time", "samples_per_s", "epoch_time", "wall_time", "finished", "reason")},
            "config": r["config"],
        })
    return pd.DataFrame(rows)
