"""`bioplausible criteria`: the plausibility matrix, claimed vs measured."""

from __future__ import annotations

from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def criteria(
        format: str = typer.Option("table", "--format", help="table, markdown, latex or csv"),
        rules: Optional[str] = typer.Option(None, "--rules", help="comma-separated rule names (default: all)"),
        details: bool = typer.Option(False, "--details", help="also print each measured cell's evidence"),
    ) -> None:
        """Probe every rule's plausibility criteria and print rule x criterion, claimed vs measured."""
        from ..algorithms import RULES
        from .matrix import RENDERERS, build_matrix, cell_text, render

        def fail(msg: str) -> None:
            typer.echo(f"error: {msg}", err=True)
            raise typer.Exit(1)

        if format not in RENDERERS:
            fail(f"--format must be table, markdown, latex or csv, got {format!r}")
        selected = None
        if rules:
            selected = [r.strip() for r in rules.split(",") if r.strip()]
            unknown = [r for r in selected if r not in RULES]
            if unknown:
                fail(f"--rules: unknown rule(s) {', '.join(unknown)}; known: {', '.join(RULES)}")
        rows = build_matrix(selected)
        typer.echo(render(rows, format), nl=False)
        if details and format in ("table", "text", "markdown"):
            typer.echo("")
            for r in rows:
                for c in r["cells"].values():
                    typer.echo(f"{r['rule']:>8}  {c['criterion']:<28} {cell_text(c):<14} "
                               f"{c['evidence'] or c['claim_reason']}")
