"""`bioplausible compare`: run a sweep grid, then the criteria matrix, the brain comparison
and the report. The main CLI calls `register(app)`."""

from __future__ import annotations

import datetime as _dt
import importlib
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.markup import escape

__all__ = ["register", "compare_main"]

console = Console()
err_console = Console(stderr=True)


def _fail(msg: str) -> None:
    err_console.print(f"[bold red]error:[/] {escape(str(msg))}", highlight=False)
    raise typer.Exit(1)


def _split(s: Optional[str]) -> list[str] | None:
    return [p.strip() for p in s.split(",") if p.strip()] if s else None


def _fmt_acc(v) -> str:
    return f"{v:.2%}" if isinstance(v, (int, float)) else "-"


class _Display:
    """Rich progress: one bar for the grid, one per run in flight (epochs x steps)."""

    def __init__(self, cells, n_total: int, n_done_before: int, per_run: bool = True) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.labels = {c.id: c.label for c in cells}
        self.cfgs = {c.id: c.cfg for c in cells}
        self.per_run = per_run
        self.prog = Progress(TextColumn("{task.description:<32}"), BarColumn(), MofNCompleteColumn(),
                             TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=console)
        self.grid = self.prog.add_task("grid", total=n_total, completed=n_done_before,
                                       info=f"({n_done_before} already recorded)" if n_done_before else "")
        self.runs: dict[str, Any] = {}
        self.meta: dict[str, dict] = {}
        self.counts = {"done": 0, "diverged": 0, "failed": 0, "lost": 0}

    def __enter__(self):
        self.prog.__enter__()
        return self

    def __exit__(self, *a):
        return self.prog.__exit__(*a)

    def __call__(self, ev: dict) -> None:
        e, rid = ev["event"], ev.get("id")
        label = self.labels.get(rid, rid)
        if e == "start" and self.per_run:
            self.meta[rid] = ev
            self.runs[rid] = self.prog.add_task(label, total=ev["epochs"] * ev["steps"], info=f"epoch 1/{ev['epochs']}")
        elif e == "step" and rid in self.runs:
            m = self.meta[rid]
            self.prog.update(self.runs[rid], completed=(ev["epoch"] - 1) * m["steps"] + ev["step"],
                             info=f"epoch {ev['epoch']}/{m['epochs']}")
        elif e == "epoch" and rid in self.runs:
            m = self.meta[rid]
            self.prog.update(self.runs[rid], info=f"epoch {ev['epoch']}/{m['epochs']} test {_fmt_acc(ev['test_acc'])}")
        elif e == "result":
            row = ev["row"]
            if rid in self.runs:
                self.prog.remove_task(self.runs.pop(rid))
            self.counts[row["status"]] = self.counts.get(row["status"], 0) + 1
            self.prog.advance(self.grid)
            st = row["status"]
            if st == "done":
                msg = f"test {_fmt_acc(row['metrics'].get('test_acc'))}"
            else:
                msg = f"[yellow]{st}[/]: {escape((row.get('reason') or '').splitlines()[0][:120])}"
            self.prog.console.print(f"  {label:<32} {msg}  ({row.get('wall_time') or 0:.1f} s)", highlight=False)
        elif e in ("retry", "lost"):
            if rid in self.runs:
                self.prog.remove_task(self.runs.pop(rid))
            if e == "lost":
                self.counts["lost"] += 1
            self.prog.console.print(f"  {label:<32} [yellow]{e}[/]: {escape(ev.get('reason', ''))}", highlight=False)


def _criteria_step(store) -> None:
    from .. import __version__

    try:
        mod = importlib.import_module("bioplausible.criteria.matrix")
    except ModuleNotFoundError as e:
        if e.name and e.name.startswith("bioplausible.criteria"):
            console.print("criteria: bioplausible.criteria.matrix is not available in this version; skipped")
            return
        raise
    t0 = time.perf_counter()
    console.print("criteria: measuring the plausibility matrix ...")
    rows = mod.build_matrix()
    rows = [dict(r) for r in rows]
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    store.record_criteria(rows, __version__, now)
    console.print(f"criteria: {len(rows)} rows stored ({time.perf_counter() - t0:.1f} s)")


def _rdm_panels(result) -> list[dict[str, Any]]:
    """The RDMs the report shows: each brain target's mean RDM, and for each group (a rule
    on a model/dataset, a reference model) its first source's best layer for the first
    target (untrained baselines left out: random projections say little to the eye)."""
    import numpy as np

    from ..brain.rsa import to_matrices

    def upper(m) -> list[float]:
        m = np.asarray(m, dtype=float)
        iu = np.triu_indices(len(m), 1)
        return [round(float(v), 5) for v in m[iu]]

    panels = [{"label": f"{t} (brain)", "kind": "brain", "n": len(m), "vector": upper(m)}
              for t, m in result.target_rdms.items()]
    t0 = result.targets[0]
    best = {r["source"]: r["layer_index"] for r in result.rows if r["target"] == t0 and r["best_layer"]}
    seen = set()
    for s in result.sources:
        if s.kind == "untrained" or s.group in seen:
            continue
        seen.add(s.group)
        li = best.get(s.key, len(s.layers) - 1)
        m = to_matrices(s.vectors[li])[0]
        label = f"{s.group}: {s.layers[li]}" if s.kind == "trained" else f"{s.group} (model)"
        panels.append({"label": label, "kind": s.kind, "n": len(m), "vector": upper(m)})
    return panels


def _brain_step(store, run_ids: list[str], n_boot: int, untrained_seeds: int | None = None) -> None:
    from ..paths import data_home

    if not (data_home() / "kriegeskorte92").exists():
        console.print("brain data absent: run bioplausible data fetch kriegeskorte92 (brain comparison skipped)")
        return
    try:
        from ..brain.compare import compare_runs
        from ..brain.recordings import load_recordings
        from ..brain.store import write_result
    except ImportError as e:
        console.print(f"brain: the brain comparison is not available in this version ({e}); skipped")
        return
    wanted = set(run_ids)
    done = [r["id"] for r in store.runs(status="done") if r["id"] in wanted]
    if not done:
        console.print("brain: no finished runs to compare; skipped")
        return
    t0 = time.perf_counter()
    console.print(f"brain: comparing {len(done)} trained networks (and their untrained baselines) "
                  f"with kriegeskorte92, {n_boot} bootstrap resamples ...")
    selection = ",".join(done)
    try:
        rec = load_recordings("kriegeskorte92")
        kw = {} if untrained_seeds is None else {"untrained_seeds": untrained_seeds}
        with warnings.catch_warnings():
            # flat RDMs (dead layers, untrained nets) make numpy warn per bootstrap sample;
            # the comparison reports them once in its notes
            warnings.simplefilter("ignore", RuntimeWarning)
            result = compare_runs(store, selection, rec, n_boot=n_boot, **kw)
        write_result(store, result, selection=selection)
        now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        store.record_rdms(_rdm_panels(result), now)
    except KeyboardInterrupt:
        raise
    except Exception as e:  # the report is still worth writing without the brain section
        err_console.print(f"[yellow]brain comparison failed[/]: {escape(f'{type(e).__name__}: {e}')}")
        return
    for n in result.notes[:5]:
        console.print(f"brain note: {escape(n)}", highlight=False)
    if len(result.notes) > 5:
        console.print(f"brain: {len(result.notes) - 5} more notes (in the brain comparison's result)")
    console.print(f"brain: done ({time.perf_counter() - t0:.1f} s)")


def compare_main(
    config: Optional[Path], preset: Optional[str], store_path: Path, out: Path, jobs: Optional[int],
    ray: Optional[str], threads: Optional[int], device: str, rules: Optional[str], models: Optional[str],
    datasets: Optional[str], seeds: Optional[str], no_criteria: bool, no_brain: bool, no_report: bool,
    dry_run: bool, cpus_per_run: float, gpus_per_run: float, max_retries: int,
    brain_boot: Optional[int] = None,
) -> None:
    from . import sweep as sw_mod
    from .runner import resolve_device
    from .store import Store, StoreError

    try:  # progress lines reach a log file as they happen, not when the buffer fills
        sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    except (AttributeError, ValueError):
        pass
    if (config is None) == (preset is None):
        _fail(f"give one of --config FILE or --preset NAME ({', '.join(sw_mod.PRESETS)})")
    try:
        path = sw_mod.preset_path(preset) if preset else config
        sweep = sw_mod.load_sweep(path)
        seeds_l = None
        if seeds:
            try:
                seeds_l = [int(s) for s in _split(seeds)]
            except ValueError:
                _fail(f"--seeds expects integers separated by commas, got {seeds!r}")
        sweep = sw_mod.restrict(sweep, _split(rules), _split(models), _split(datasets), seeds_l)
        resolve_device(device)
        cells, skipped = sw_mod.expand(sweep, device=device)
    except (sw_mod.SweepError, ValueError) as e:
        _fail(str(e))
    for n in sweep.notes:
        console.print(f"note: {escape(n)}", highlight=False)
    missing = sorted({s.data for s in skipped if "not on disk" in s.reason})
    for d in missing:
        from ..data import DATASETS

        hint = f"bioplausible data fetch {d}" if DATASETS[d].fetchable else "put its files in the data folder"
        console.print(f"[yellow]dataset {d} is missing[/]: its cells are skipped ({hint})")
    unsupported = [s for s in skipped if "not on disk" not in s.reason]
    for s in sorted({(s.rule, s.model, s.reason) for s in unsupported}):
        console.print(f"skipped {s[0]} on {s[1]}: {s[2]}")
    try:
        store = Store(store_path)
    except StoreError as e:
        _fail(str(e))
    pending = [c for c in cells if not c.recorded(store)]
    n_before = len(cells) - len(pending)
    jobs = jobs or sweep.jobs or 1
    threads = threads or sweep.threads
    mode = f"Ray ({ray})" if ray else (f"{jobs} processes" if jobs > 1 else "this process")
    console.print(f"[bold]{escape(str(path))}[/]: {len(cells)} runs in the grid "
                  f"({len(sweep.rules)} rules x {len(sweep.models)} models x {len(sweep.datasets)} datasets x "
                  f"{len(sweep.seeds)} seeds, less skipped), {n_before} already recorded, {len(pending)} to run "
                  f"in {mode}; store {store_path}", highlight=False)
    if dry_run:
        for c in pending:
            console.print(f"  would run {c.label} ({c.id}) epochs={c.cfg.epochs} lr={c.cfg.lr}", highlight=False)
        return
    t0 = time.perf_counter()
    display = _Display(cells, len(cells), n_before, per_run=not ray)
    try:
        with display:
            if ray:
                sw_mod.run_ray(pending, store, address=ray, on_event=display, cpus_per_run=cpus_per_run,
                               gpus_per_run=gpus_per_run, max_retries=max_retries,
                               num_cpus=jobs if jobs > 1 else None)
            elif jobs > 1:
                sw_mod.run_pool(pending, store, jobs, on_event=display, threads=threads, max_retries=max_retries)
            else:
                sw_mod.run_sequential(pending, store, on_event=display, threads=threads)
    except KeyboardInterrupt:
        n_now = sum(c.recorded(store) for c in cells)
        err_console.print(f"interrupted: {n_now} of {len(cells)} runs recorded; "
                          "run the same command again to resume")
        raise typer.Exit(130)
    c = display.counts
    console.print(f"grid finished in {time.perf_counter() - t0:.0f} s: {c['done']} done, {c['diverged']} diverged, "
                  f"{c['failed']} failed, {c['lost']} lost (lost and failed runs are retried by the next compare)")
    ids = [c.id for c in cells]
    if not no_criteria:
        _criteria_step(store)
    if not no_brain:
        _brain_step(store, ids, brain_boot if brain_boot is not None else
                    (sweep.brain_boot if sweep.brain_boot is not None else 1000), sweep.brain_untrained_seeds)
    if not no_report:
        from ..report import build

        paths = build(store, out, run_ids=ids, title=f"bioplausible: {Path(str(path)).stem} sweep")
        console.print(f"report written to {out}/ (open {paths['html']})")


def register(app: typer.Typer) -> None:
    from ..cli import DEFAULT_STORE

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
        compare_main(config, preset, store, out, jobs, ray, threads, device, rules, models, datasets, seeds,
                     no_criteria, no_brain, no_report, dry_run, cpus_per_run, gpus_per_run, max_retries,
                     brain_boot)
