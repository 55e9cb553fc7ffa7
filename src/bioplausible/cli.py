"""The `bioplausible` command line."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer.core import TyperGroup

from .errors import fail
from .paths import DEFAULT_STORE



def user_error(e: BaseException) -> str | None:
    """The one line to show for an exception that is the user's to fix (a bad file, option,
    store, checkpoint), or None for one that is a bug and should keep its traceback."""
    import sqlite3

    from pydantic import ValidationError

    from .config import ConfigError, config_error
    from .data.base import DataError
    from .experiments.runner import CheckpointError
    from .experiments.store import StoreError
    from .experiments.sweep import SweepError

    if isinstance(e, ValidationError):
        return str(config_error(e))
    if isinstance(e, (DataError, StoreError, SweepError, CheckpointError, ConfigError)):
        return str(e)
    if isinstance(e, OSError):
        return f"{e.filename}: {e.strerror or e}" if e.filename else str(e)
    if isinstance(e, sqlite3.Error):
        return f"results store: {e}"
    if isinstance(e, MemoryError):
        return "out of memory (a setting is far too large?)"
    return None


class _Group(TyperGroup):
    """Every command's exceptions pass here: the user's mistakes become one line and exit 2."""

    def invoke(self, ctx):
        # typer's own exits, aborts and usage errors are not the user's data or settings:
        # `user_error` returns None for them and they go on to typer unchanged
        try:
            return super().invoke(ctx)
        except Exception as e:
            msg = user_error(e)
            if msg is None:
                raise
            fail(msg)


app = typer.Typer(cls=_Group, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, help="Biologically plausible learning rules, compared with backprop.")
console = Console()
err_console = Console(stderr=True)




def parse_options(items: list[str]) -> dict:
    """--opt key=value pairs; values parsed as JSON when they can be (numbers, lists, booleans)."""
    out = {}
    for it in items:
        if "=" not in it:
            fail(f"--opt expects key=value, got {it!r}")
        k, v = it.split("=", 1)
        try:
            out[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip()] = v
    return out


def _int_tuple(s: Optional[str], opt: str):
    if s is None:
        return None
    try:
        return tuple(int(w) for w in s.replace("x", ",").split(",") if w)
    except ValueError:
        fail(f"{opt} expects integers separated by commas, got {s!r}")


@app.command()
def run(
    rule: str = typer.Option(..., help="learning rule (see `bioplausible list`)"),
    model: str = typer.Option("mlp", help="architecture: mlp or cnn"),
    data: str = typer.Option("digits", help="dataset name (see `bioplausible list`)"),
    epochs: int = typer.Option(10),
    batch_size: int = typer.Option(64),
    lr: float = typer.Option(1e-3),
    optimizer: str = typer.Option("adam", help="adam or sgd"),
    seed: int = typer.Option(0),
    widths: Optional[str] = typer.Option(None, help="MLP hidden widths, e.g. 1024,512,256 (the default)"),
    channels: Optional[str] = typer.Option(None, help="CNN channels, e.g. 32,64,64"),
    act: Optional[str] = typer.Option(None, help="hidden activation (default: the rule's)"),
    opt: list[str] = typer.Option([], "--opt", help="rule option key=value (repeatable)"),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N"),
    data_dir: Optional[Path] = typer.Option(None, help="folder holding the dataset's files"),
    train_subset: Optional[int] = typer.Option(None, help="train on this many training samples (class-balanced)"),
    store: Path = typer.Option(DEFAULT_STORE, help="results store (SQLite file)"),
    force: bool = typer.Option(False, help="run again even if this config is already recorded"),
) -> None:
    """Train one rule on one model and dataset, evaluate each epoch, record the run."""
    from pydantic import ValidationError

    from .algorithms import resolve as resolve_rule
    from .api import EpochBar
    from .config import RunConfig, config_error
    from .data import DataError
    from .experiments.fingerprint import code_fingerprint
    from .experiments.runner import execute, resolve_device, with_data_identity
    from .experiments.store import Store

    # Everything is checked before anything is recorded or trained: settings, device, data
    # (and its digest, part of the run's id), and that the store can take the row.
    try:
        cfg = RunConfig(
            rule=rule, model=model, data=data, epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer,
            seed=seed, widths=_int_tuple(widths, "--widths"), channels=_int_tuple(channels, "--channels"), act=act,
            rule_options=parse_options(opt), device=device, data_dir=str(data_dir) if data_dir else None,
            train_subset=train_subset,
        )
        cfg = resolve_rule(cfg)
        dev = resolve_device(device)
    except ValidationError as e:
        fail(str(config_error(e)))
    except ValueError as e:
        fail(str(e))
    try:
        from .data import load

        cfg = with_data_identity(cfg)
        st = Store(store)
        if not force and st.has(cfg.key(), code=code_fingerprint(cfg.rule)):
            console.print(f"run {cfg.key()} ({rule}/{model}/{data}, seed {seed}) is already recorded in "
                          f"{escape(str(store))} by this code; --force to run again", highlight=False)
            return
        dataset = load(cfg.data, cfg.data_dir, cfg.val_fraction)
        if cfg.train_subset is not None:
            dataset = dataset.subset(cfg.train_subset)
    except DataError as e:
        fail(str(e))
    steps = (len(dataset.x_train) + batch_size - 1) // batch_size
    console.print(f"[bold]{rule}[/] on {model}/{data}, {epochs} epochs, device {dev}, run id {cfg.key()}", highlight=False)
    with EpochBar(steps, epochs, show=True, console=console) as bar:
        row = execute(cfg, data=dataset, on_step=bar.on_step, on_epoch=bar.on_epoch, checkpoint_dir=st.path.parent / "checkpoints")
    epochs_rows = row.pop("_epochs")
    written = st.record(row, epochs_rows)
    where = escape(str(store))
    if row["status"] == "done":
        m = row["metrics"]
        console.print(f"done: test accuracy {m['test_acc']:.2%} (val {m['val_acc']:.2%}), "
                      f"{row['samples_per_s']:.0f} samples/s, recorded in {where}", highlight=False)
    else:
        kept = "" if written else "; the earlier finished run is kept"
        console.print(f"[yellow]{row['status']}[/]: {escape(row['reason'].splitlines()[0])} "
                      f"(recorded in {where}{kept})" if written else
                      f"[yellow]{row['status']}[/]: {escape(row['reason'].splitlines()[0])}{kept}", highlight=False)
        raise typer.Exit(2 if row["status"] == "failed" else 0)


def _type_name(annotation) -> str:
    return getattr(annotation, "__name__", None) if isinstance(annotation, type) else \
        str(annotation).replace("typing.", "")


def list_options(rule: str) -> None:
    """A rule's options, per architecture it is registered for: name, type, default, description."""
    from .algorithms import architectures, get

    try:
        archs = architectures(rule)
    except ValueError as e:
        fail(str(e))
    by_class: dict[type, list[str]] = {}
    for arch in archs:
        by_class.setdefault(get(rule, arch), []).append(arch)
    for cls, on in by_class.items():
        t = Table(title=f"options of {rule} on {', '.join(on)} ({cls.__name__})")
        for c in ("option", "type", "default", "description"):
            t.add_column(c, overflow="fold")
        for name, f in cls.Options.model_fields.items():
            t.add_row(name, _type_name(f.annotation), repr(f.default), f.description or "")
        if not cls.Options.model_fields:
            t.add_row("(none)", "", "", "")
        console.print(t)


@app.command("list")
def list_(
    options: Optional[str] = typer.Option(None, "--options", metavar="RULE",
                                          help="print this rule's options (types, defaults, descriptions)"),
) -> None:
    """Show the rules, models and datasets that exist."""
    from .algorithms import all_rules, architectures

    if options is not None:
        list_options(options)
        return
    from .data import DATASETS
    from .models import ARCHITECTURES

    t = Table(title="learning rules")
    for c in ("rule", "models", "description"):
        t.add_column(c)
    for name, cls in all_rules().items():
        t.add_row(name, ", ".join(architectures(name)), cls.description)
    console.print(t)
    t = Table(title="models")
    t.add_column("model")
    t.add_column("description")
    for a in ARCHITECTURES.values():
        t.add_row(a.name, a.description)
    console.print(t)
    t = Table(title="datasets")
    for c in ("dataset", "source", "description"):
        t.add_column(c)
    for d in DATASETS.values():
        t.add_row(d.name, "bundled" if d.bundled else ("fetchable" if d.fetchable else "local files"), d.description)
    console.print(t)


RESULT_COLUMNS = ["id", "rule", "model", "data", "seed", "epochs", "status", "test_acc", "best_val_test_acc",
                  "samples_per_s", "epoch_time", "wall_time"]


def results_rows(runs: list[dict]) -> list[dict]:
    out = []
    for r in runs:
        m = r["metrics"] or {}
        out.append({
            "id": r["id"], "rule": r["rule"], "model": r["model"], "data": r["data"], "seed": r["seed"],
            "epochs": r["config"].get("epochs"), "status": r["status"],
            "test_acc": m.get("test_acc"), "best_val_test_acc": m.get("best_val_test_acc"),
            "samples_per_s": r["samples_per_s"], "epoch_time": r["epoch_time"], "wall_time": r["wall_time"],
        })
    return out


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4f}" if v < 1 else f"{v:.1f}"
    return str(v)


@app.command()
def results(
    store: Path = typer.Option(DEFAULT_STORE, help="results store (SQLite file)"),
    runs: str = typer.Option("all", help="selection: all, run ids, or filters like rule=fa|dfa,data=mnist"),
    format: str = typer.Option("table", "--format", help="table, csv or markdown"),
) -> None:
    """Print the recorded runs."""
    from .experiments.store import Store, StoreError

    if format not in ("table", "csv", "markdown"):
        fail(f"--format must be table, csv or markdown, got {format!r}")
    if not store.exists():
        fail(f"no results store at {store} (run something first, or pass --store)")
    try:
        rows = results_rows(Store(store, readonly=True).select(runs))
    except StoreError as e:
        fail(str(e))
    if format == "csv":
        import csv

        w = csv.DictWriter(sys.stdout, fieldnames=RESULT_COLUMNS, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    elif format == "markdown":
        print("| " + " | ".join(RESULT_COLUMNS) + " |")
        print("|" + "---|" * len(RESULT_COLUMNS))
        for r in rows:
            print("| " + " | ".join(_fmt(r[c]) for c in RESULT_COLUMNS) + " |")
    else:
        t = Table(title=f"runs in {escape(str(store))}")
        for c in RESULT_COLUMNS:
            t.add_column(c)
        for r in rows:
            t.add_row(*(escape(_fmt(r[c])) for c in RESULT_COLUMNS))
        console.print(t)


# Each subpackage that adds commands has a `cli.py` with `register(app)`.
for _sub in ("data", "brain", "criteria", "experiments", "report"):
    importlib.import_module(f"bioplausible.{_sub}.cli").register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
