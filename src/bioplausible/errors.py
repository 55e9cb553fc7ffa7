"""The one way a command reports the user's mistake: one escaped line on stderr, exit 2."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.markup import escape

USAGE_ERROR = 2  # exit code of bad input (as click's own usage errors)

err_console = Console(stderr=True)


def fail(msg: object, code: int = USAGE_ERROR) -> None:
    """One clear line and exit 2: bad input is the user's to fix, not a traceback to read.
    User text is escaped (a `[/]` in a path is text, not markup) and never wrapped."""
    one = " | ".join(ln.strip() for ln in str(msg).splitlines() if ln.strip())
    err_console.print(f"[bold red]error:[/] {escape(one)}", highlight=False, markup=True, soft_wrap=True)
    raise typer.Exit(code)
