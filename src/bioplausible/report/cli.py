"""`bioplausible report`: tables, plots and an HTML page from the results store."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

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
        published: Optional[Path] = typer.Option(
            None, help="read the published run records of this folder (e.g. results/published) instead of --store"),
        readme: Optional[Path] = typer.Option(
            None, help="also put the accuracy table (summary.md) into this README's generated block"),
    ) -> None:
        """Tables, plots and one HTML page from the results store (or published records).

        Writes the accuracy table (Markdown, LaTeX, CSV), the criteria matrix, the brain
        similarity table, plots (PNG, SVG) and index.html. Reads only the store, or with
        --published only the run records of that folder."""
        import tempfile

        from ..experiments.published import PublishedError, load_into
        from ..experiments.store import Store, StoreError
        from . import build, update_readme

        err = Console(stderr=True, soft_wrap=True)
        if metric not in ("test_acc", "best_val_test_acc", "val_acc", "train_acc"):
            err.print(f"[bold red]error:[/] --metric must be test_acc, best_val_test_acc, val_acc or train_acc, got {escape(metric)}")
            raise typer.Exit(2)
        if published is None and not store.exists():
            err.print(f"[bold red]error:[/] no results store at {escape(str(store))} (run `bioplausible compare` first, or pass --store)")
            raise typer.Exit(2)
        if readme is not None and not readme.is_file():
            err.print(f"[bold red]error:[/] --readme {escape(str(readme))}: no such file")
            raise typer.Exit(2)
        with tempfile.TemporaryDirectory(prefix="bioplausible-published-") as tmp:
            try:
                if published is not None:  # the records, in a store of their own that lives as long as the report
                    st = Store(Path(tmp) / "published.sqlite")
                    n = load_into(st, published)
                    if n == 0:
                        raise PublishedError(f"no run records in {published}")
                else:
                    st = Store(store, readonly=True)
                paths = build(st, out, runs=runs, metric=metric, title=title,
                              source=f"published run records in {published}" if published is not None else None)
                if readme is not None:
                    update_readme(readme, paths["summary.md"].read_text(encoding="utf-8"))
            except (StoreError, PublishedError, ValueError) as e:
                err.print(f"[bold red]error:[/] {escape(str(e))}")
                raise typer.Exit(2)
        if "accuracy.md" in paths:  # the table itself, mean ± sd (n seeds, epochs) per cell
            Console(width=max(200, Console().width)).print(escape(paths["accuracy.md"].read_text(encoding="utf-8")),
                                                           highlight=False, soft_wrap=True)
        Console().print(f"report: {len(paths) - 1} files in {escape(str(out))}/, open {escape(str(paths['html']))}"
                        + (f"; table written into {escape(str(readme))}" if readme is not None else ""))

    @app.command()
    def publish(
        store: Path = typer.Option(DEFAULT_STORE, help="results store (SQLite file)"),
        runs: str = typer.Option(..., help="selection: all, run ids, or filters like rule=fa|dfa,data=mnist"),
        to: Path = typer.Option(Path("results/published"), help="folder of the published run records (tracked)"),
    ) -> None:
        """Export finished runs (config, seed, versions, code fingerprint, network, per-epoch
        history, timings; no checkpoints) as JSON records to a tracked folder, from which
        `bioplausible report --published FOLDER` rebuilds the tables."""
        from ..experiments.published import export
        from ..experiments.store import Store, StoreError

        err = Console(stderr=True)
        if not store.exists():
            err.print(f"[bold red]error:[/] no results store at {escape(str(store))}")
            raise typer.Exit(2)
        try:
            st = Store(store, readonly=True)
            chosen = st.select(runs)
        except StoreError as e:
            err.print(f"[bold red]error:[/] {escape(str(e))}")
            raise typer.Exit(2)
        paths = export(st, chosen, to)
        Console().print(f"published {len(paths)} run records to {escape(str(to))}/ "
                        f"({len(chosen) - len(paths)} failed runs left out)")
