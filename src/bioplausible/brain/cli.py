"""`bioplausible brain`: score trained runs against brain recordings (RSA).

The main CLI calls `register(app)`.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

__all__ = ["register", "format_table"]


def _fail(message: str) -> None:
    from ..errors import fail

    fail(message)  # one escaped line, exit 2, like every command


def _num(x: Any, nd: int = 3) -> str:
    if x is None or not np.isfinite(x):
        return "-"
    return f"{x:.{nd}f}"


def _p(p: Any) -> str:
    if p is None or not np.isfinite(p):
        return "p=-"
    return "p<0.001" if p < 0.001 else f"p={p:.3f}"


def _order(result: Any) -> list[str]:
    """Groups: trained by mean score over targets (best first), then untrained, then references."""
    by: dict[str, list[float]] = {}
    kind: dict[str, str] = {}
    for s in result.summary:
        by.setdefault(s["group"], []).append(s["score"] if s["score"] is not None and np.isfinite(s["score"]) else -9)
        kind[s["group"]] = s["kind"]
    rank = {"trained": 0, "untrained": 1, "pixels": 2, "reference": 3}
    return sorted(by, key=lambda g: (rank.get(kind[g], 4), -float(np.mean(by[g]))))


def format_table(result: Any) -> Table:
    """Rule x brain area: best-layer similarity [95% CI], % of the noise ceiling, best layer."""
    t = Table(title=f"Brain similarity, {result.recordings}: {result.method} of the best layer (chosen and scored on "
                    f"different halves of the stimuli), [95% CI], % of the noise ceiling's lower bound; partial: controlling "
                    f"for the pixel RDM",
              title_justify="left")
    t.add_column("rule / baseline", no_wrap=True)
    for tg in result.targets:
        t.add_column(tg, justify="right", no_wrap=True)
    cell = {(s["group"], s["target"]): s for s in result.summary}
    last_kind = None
    for g in _order(result):
        k = cell[g, result.targets[0]]["kind"]
        if last_kind is not None and k != last_kind:
            t.add_section()
        last_kind = k
        vals = []
        for tg in result.targets:
            s = cell[g, tg]
            frac = f"{100 * s['fraction']:.0f}% " if s["fraction"] is not None and np.isfinite(s["fraction"]) else ""
            layer = f"{s['best_layer']}" if k != "reference" and s["best_layer"] else ""
            part = f" partial {_num(s.get('partial'))}" if k in ("trained", "untrained") else ""
            flat = " (flat RDM: uninformative)" if s.get("uninformative") else ""
            vals.append(f"{_num(s['score'])} [{_num(s['ci_low'], 2)},{_num(s['ci_high'], 2)}]{flat}\n{frac}{layer}"
                        f"{part}".rstrip())
        label = g if k != "reference" else f"{g} (model)"
        if cell[g, result.targets[0]]["n_members"] > 1:
            label += f" (n={cell[g, result.targets[0]]['n_members']})"
        t.add_row(escape(label), *vals)
    t.add_section()
    t.add_row("noise ceiling (halves)", *[
        f"[{_num(result.ceilings[tg]['cv_noise_lower'], 2)}, {_num(result.ceilings[tg]['cv_noise_upper'], 2)}]"
        if np.isfinite(result.ceilings[tg]["cv_noise_lower"]) else "- (one RDM)" for tg in result.targets])
    return t


def _verdicts(result: Any) -> list[str]:
    """Per target, what the corrected tests say (`bioplausible.brain.inference.verdict_lines`),
    escaped for rich."""
    from .inference import verdict_lines

    out = []
    for line in verdict_lines(result):
        tg, _, rest = line.partition(": ")
        out.append(f"[bold]{escape(tg)}[/]: {escape(rest)}")
    return out


def _encoding(store: Any, result: Any, rec: Any, selection: str) -> list[tuple[tuple[str, str], dict[str, float]]]:
    """Ridge encoding of each trained run's layers for each response matrix; stored in
    brain_encoding (replacing a run's rows)."""
    from ..experiments import runner
    from .compare import _flatten_acts, _stimuli
    from .encoding import encoding_scores
    from .store import write_encoding

    out = []
    for src in result.sources:
        if src.kind != "trained":
            continue
        learner, meta = runner.load_learner(store, src.info["run_id"])
        import torch

        with torch.no_grad():
            acts = dict(_flatten_acts(learner.activations(_stimuli(rec, meta, False))))
        scores = {t: encoding_scores(acts, r.data) for t, r in rec.responses.items()}
        for layer in acts:
            out.append(((src.key, layer), {t: scores[t][layer]["r_mean"] for t in rec.responses}))
    write_encoding(store, rec.name, out)
    return out


def register(app: typer.Typer) -> None:
    """Add the `brain` command to `app`."""
    from ..paths import DEFAULT_STORE

    @app.command("brain")
    def brain(
        runs: str = typer.Option("all", help="runs to score: 'all', run ids (comma-separated) or filters like "
                                              "'rule=bp|fa,data=mnist'"),
        data: str = typer.Option("kriegeskorte92", help="brain data: kriegeskorte92 or a recordings folder "
                                                        "(see bioplausible.brain.recordings)"),
        store: Path = typer.Option(DEFAULT_STORE, help="results store (SQLite file)"),
        method: str = typer.Option("spearman", help="RDM comparison: spearman, tau-a, cosine_cov (whitened cosine), "
                                                    "corr_cov, corr, cosine"),
        distance: str = typer.Option("correlation", help="activation distance: correlation, euclidean, cosine"),
        n_boot: int = typer.Option(1000, help="bootstrap resamples of the stimuli (0: no intervals)"),
        plot: bool = typer.Option(False, "--plot/--no-plot", help="write RDM heatmaps, score bars, layer profiles"),
        out: Optional[Path] = typer.Option(None, help="folder for the plots (default: <store folder>/brain)"),
        untrained_seeds: int = typer.Option(3, help="seeds of the untrained baseline per architecture"),
        seed: int = typer.Option(0, help="seed of the bootstrap resamples"),
        targets: Optional[str] = typer.Option(None, help="comma-separated targets (default: all of the data's)"),
        invert: bool = typer.Option(False, "--invert/--no-invert", help="invert stimulus images (the same as "
                                                                        "--stimuli invert)"),
        stimuli: str = typer.Option("auto", help="stimulus mapping: auto (contrast for dark-ground training sets "
                                                 "like MNIST, raw for colour sets), contrast, raw, invert "
                                                 "(see bioplausible.brain.stimuli)"),
        references: bool = typer.Option(True, "--references/--no-references", help="score the data's classic "
                                                                                     "model RDMs too"),
        brain_distance: str = typer.Option("correlation", help="distance for RDMs of response matrices in a "
                                                               "recordings folder (crossnobis needs repetitions)"),
        encoding: bool = typer.Option(False, "--encoding/--no-encoding", help="also fit a ridge encoding model of "
                                                                             "each trained layer (needs response "
                                                                             "matrices)"),
    ) -> None:
        """Compare each run's layers with brain RDMs (RSA): best layer per rule, 95% intervals, noise ceiling,
        untrained and classic-model baselines."""
        from ..data.base import DataError
        from ..experiments.store import Store, StoreError
        from .compare import compare_runs
        from .recordings import load_recordings
        from .rsa import RSAError, check_distance, check_method
        from .store import write_result

        console = Console()
        if not console.is_terminal:  # piped to a file: keep table rows on one line each
            console = Console(width=max(console.width, 200))
        try:
            method_c = check_method(method)
            distance_c = check_distance(distance)
            if distance_c == "crossnobis":
                raise RSAError("--distance crossnobis needs repeated measurements; network activations have none")
            if n_boot < 0:
                raise RSAError(f"--n-boot must be >= 0, got {n_boot}")
            if untrained_seeds < 0:
                raise RSAError(f"--untrained-seeds must be >= 0, got {untrained_seeds}")
            if not Path(store).is_file():
                raise DataError(f"no results store at {store}: train runs first (`bioplausible run ...`)")
            st = Store(store)
            rec = load_recordings(data, check_distance(brain_distance))
            if encoding and not rec.responses:
                raise RSAError(f"--encoding needs response matrices; {rec.name} has RDMs only")
            if method_c not in ("spearman", "corr", "cosine") and n_boot > 100:
                console.print(f"[yellow]note:[/] {method_c} intervals run rsatoolbox on every resample: minutes "
                              f"(cosine_cov) to hours (tau-a) at {n_boot} resamples; --n-boot 100 is quicker",
                              highlight=False)
            from .stimuli import resolve_mapping

            resolve_mapping(stimuli, None)
            tlist = [s.strip() for s in targets.split(",") if s.strip()] if targets else None
            t0 = time.perf_counter()
            with console.status("scoring...") as status:
                result = compare_runs(st, runs, rec, method=method_c, n_boot=n_boot, seed=seed, distance=distance_c,
                                      untrained_seeds=untrained_seeds, references=references, targets=tlist,
                                      invert=invert, mapping=stimuli, progress=lambda m: status.update(f"brain: {escape(m)}"))
            n_rows = write_result(st, result, selection=runs)
            enc_rows = _encoding(st, result, rec, runs) if encoding else []
        except typer.Exit:
            raise
        except (DataError, RSAError, StoreError, FileNotFoundError, ValueError) as e:
            _fail(str(e))
        except sqlite3.Error as e:
            _fail(f"results store {store}: {e}")
        console.print(format_table(result))
        for line in _verdicts(result):
            console.print(line, highlight=False)
        n_layers = sum(len(s.layers) for s in result.sources)
        n_rdms = sum(result.ceilings[t]["n_subjects"] for t in result.targets)
        console.print(
            f"{len(result.sources)} sources ({n_layers} layer RDMs) x {len(result.targets)} targets ({n_rdms} brain "
            f"RDMs), {result.n_boot} resamples: {time.perf_counter() - t0:.1f} s "
            f"(bootstrap {result.seconds['bootstrap']:.1f} s); {n_rows} rows written to {escape(str(store))}",
            highlight=False,
        )
        if enc_rows:
            et = Table(title="Ridge encoding: mean Pearson r of held-out predictions (5-fold over stimuli)",
                       title_justify="left")
            for c in ("run", "layer", *rec.responses):
                et.add_column(c)
            for (src, layer), vals in enc_rows:
                et.add_row(escape(src), escape(layer), *[_num(vals[t]) for t in rec.responses])
            console.print(et)
        for note in result.notes:
            console.print(f"[dim]note: {escape(note)}[/]")
        if plot:
            from .plots import plot_all

            folder = out if out is not None else Path(store).parent / "brain"
            paths = plot_all(result, folder)
            console.print(f"plots: {escape(', '.join(str(p) for p in paths))}", highlight=False)
