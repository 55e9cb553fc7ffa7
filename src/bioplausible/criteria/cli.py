"""`bioplausible criteria`: the plausibility matrix, claimed vs measured."""

from __future__ import annotations

from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def criteria(
        format: str = typer.Option("table", "--format", help="table, markdown, latex, html or csv"),
        rules: Optional[str] = typer.Option(None, "--rules", help="comma-separated rule names (default: all)"),
        details: bool = typer.Option(False, "--details", help="also print each cell's evidence"),
    ) -> None:
        """Probe every rule's plausibility criteria and print rule x criterion, claimed vs measured."""
        from ..algorithms import RULES
        from .render import RENDERERS, cell_text, render

        def fail(msg: str) -> None:
            typer.echo(f"error: {msg}", err=True)
            raise typer.Exit(2)

        if format not in RENDERERS:
            fail(f"--format must be one of {', '.join(RENDERERS)}, got {format!r}")
        selected = None
        if rules:
            selected = [r.strip() for r in rules.split(",") if r.strip()]
            unknown = [r for r in selected if r not in RULES]
            if unknown:
                fail(f"--rules: unknown rule(s) {', '.join(unknown)}; known: {', '.join(RULES)}")
        from .matrix import build_matrix

        rows = build_matrix(selected)
        typer.echo(render(rows, format), nl=False)
        if details and format in ("table", "text", "markdown"):
            typer.echo("")
            for r in rows:
                for k, c in r["cells"].items():
                    claim = f" | claim: {c['claim_reason']}" if c["source"] != "measured" and c["claim_reason"] else ""
                    typer.echo(f"{r['rule']:>8}  {c['criterion']:<30} {cell_text(c, k):<10} {c['evidence']}{claim}")
