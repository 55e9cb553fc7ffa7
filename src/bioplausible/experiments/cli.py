"""`bioplausible compare`: command-line glue over `bioplausible.pipeline` (sweep grid, criteria
matrix, brain comparison, report). The main CLI calls `register(app)`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    from ..paths import DEFAULT_STORE

    @app.command()
    def compare(
        config: Optional[Path] = typer.Option(None, "--config", "-c", help="sweep file (TOML); `base = \"tuned\"` in it starts from the tuned settings"),
        preset: Optional[str] = typer.Option(None, "--preset", "-p", help="a shipped sweep: tuned, quick, paper, extended or brain"),
        store: Path = typer.Option(DEFAULT_STORE, help="results store (SQLite file)"),
        out: Path = typer.Option(Path("report"), help="folder for the report"),
        jobs: Optional[int] = typer.Option(None, "--jobs", "-j", min=1, help="runs in parallel (local processes); default: the file's sweep.jobs, else 1"),
        ray: Optional[str] = typer.Option(None, "--ray", help="run on Ray: a cluster address (auto, ray://host:10001) or 'local'"),
        threads: Optional[int] = typer.Option(None, min=1, help="torch threads per run (default: cores / jobs)"),
        device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N (local runs)"),
        rules: Optional[str] = typer.Option(None, help="only these rules of the grid (comma-separated)"),
        models: Optional[str] = typer.Option(None, help="only these models of the grid"),
        datasets: Optional[str] = typer.Option(None, help="only these datasets of the grid"),
        seeds: Optional[str] = typer.Option(None, help="only these seeds of the grid"),
        no_criteria: bool = typer.Option(False, "--no-criteria", help="do not measure the criteria matrix"),
        no_brain: bool = typer.Option(False, "--no-brain", help="do not run the brain comparison"),
        no_report: bool = typer.Option(False, "--no-report", help="do not write the report"),
        dry_run: bool = typer.Option(False, "--dry-run", help="list the runs that would run, run nothing"),
        cpus_per_run: float = typer.Option(1.0, help="Ray: CPUs each run reserves"),
        gpus_per_run: float = typer.Option(0.0, help="Ray: GPUs each run reserves (0 = CPU runs)"),
        max_retries: int = typer.Option(3, min=0, help="retries of a run whose worker process died"),
        brain_boot: Optional[int] = typer.Option(None, min=0, help="bootstrap resamples of the brain comparison "
                                                 "(default: the file's sweep.brain_boot, else 1000)"),
    ) -> None:
        """Run a sweep grid (rules x models x datasets x seeds), then criteria, brain comparison, report.

        Resumable: runs already recorded in the store are skipped, so an interrupted compare
        restarted with the same arguments goes on where it stopped."""
        from ..pipeline import compare_main

        compare_main(config, preset, store, out, jobs, ray, threads, device, rules, models, datasets, seeds,
                     no_criteria, no_brain, no_report, dry_run, cpus_per_run, gpus_per_run, max_retries,
                     brain_boot)
