"""`bioplausible report`: tables, plots and an HTML page from the results store."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    from ..paths import DEFAULT_STORE

    @app.command()
    def report(
        store: Path = typer.Option(DEFAULT_STORE, help="results store (SQLite file)"),
        out: Path = typer.Option(Path("report"), help="folder for the report files"),
        runs: str = typer.Option("all", help="selection: all, run ids, or filters like rule=fa|dfa,data=mnist"),
        metric: str = typer.Option("test_acc", help="accuracy column: test_acc (last epoch) or best_val_test_acc"),
        title: str = typer.Option("bioplausible: results", help="title of the HTML page"),
    ) -> None:
        """Tables, plots and one HTML page from the results store.

        Writes the accuracy table (Markdown, LaTeX, CSV), the criteria matrix, the brain
        similarity table, plots (PNG, SVG) and index.html. Reads only the store."""
        from ..experiments.store import Store, StoreError
        from . import build

        err = Console(stderr=True, soft_wrap=True)
        if metric not in ("test_acc", "best_val_test_acc", "val_acc", "train_acc"):
            err.print(f"[bold red]error:[/] --metric must be test_acc, best_val_test_acc, val_acc or train_acc, got {escape(metric)}")
            raise typer.Exit(2)
        if not store.exists():
            err.print(f"[bold red]error:[/] no results store at {escape(str(store))} (run `bioplausible compare` first, or pass --store)")
            raise typer.Exit(2)
        try:
            paths = build(Store(store, readonly=True), out, runs=runs, metric=metric, title=title)
        except StoreError as e:
            err.print(f"[bold red]error:[/] {escape(str(e))}")
            raise typer.Exit(2)
        Console().print(f"report: {len(paths) - 1} files in {escape(str(out))}/, open {escape(str(paths['html']))}")
