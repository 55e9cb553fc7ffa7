"""Grid sweeps: rules x models x datasets x seeds, resumable, local processes or Ray.

The sweep file (TOML) names a grid and the settings of each cell; `load_sweep` validates it
and `expand` turns it into one `RunConfig` per cell. Every cell is identified by
`RunConfig.key()`, and a cell whose key is already recorded in the store (done or diverged)
is skipped, so an interrupted sweep restarted with the same file resumes where it stopped.

Why resuming loses and duplicates nothing: a run's row (and its epochs) is written in one
transaction when the run ends, and only by the driver process; a run killed half-way
leaves no row and is run again from the start. Checkpoints are written (atomically) before
the row, so a recorded row always has its checkpoint.

Presets (`--preset tuned|quick|paper|extended|brain`) are `presets/*.toml` inside this package, so
they are found in a non-editable install too. `tuned.toml` is the one home of each rule's
tuned settings per model and dataset; the other presets name it as their `base` and change
only their grid and budget (a sweep file's own settings apply after its base's, see
`cell_settings`). The file format is described in quick.toml.

Three ways to run the pending cells, all returning rows to the driver which alone writes:
- `run_sequential`: in this process (datasets loaded once and kept).
- `run_pool`: N local worker processes (forked on Linux, else spawned; each keeps its
  datasets). A worker that
  dies (OOM, kill) breaks the pool: the pool is rebuilt and the unfinished cells resubmitted
  (up to `max_retries` times each).
- `run_ray`: one Ray task per cell with `num_cpus`/`num_gpus`; Ray retries a task whose
  worker died (`max_retries`); the task returns the row and the checkpoint's bytes, and the
  driver writes both (so workers on other machines need no shared disk).
"""

from __future__ import annotations

import collections
import copy
import ctypes
import os
import signal
import time
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterable

from pydantic import ValidationError

from ..config import RunConfig

__all__ = [
    "SweepError", "ClusterLost", "check_ray_address", "Sweep", "Cell", "Skipped", "load_sweep", "parse_sweep", "preset_path", "PRESETS",
    "expand", "dataset_available", "run_sequential", "run_pool", "run_ray", "get_data",
]

PRESETS = ("tuned", "quick", "paper", "extended", "brain")
MAX_SEEDS = 10_000  # a grid.seeds count beyond this is a typo, not a sweep (and would exhaust memory)

TOP_KEYS = {"description", "base", "grid", "defaults", "rules", "models", "datasets", "sweep"}
GRID_KEYS = {"rules", "models", "datasets", "seeds"}
SWEEP_KEYS = {"jobs", "threads", "brain_boot", "brain_untrained_seeds"}
# RunConfig fields a sweep file may set; rule/model/data/seed come from the grid, the
# device from the command line (the same file must run on a laptop and a GPU cluster),
# the data digest from the files read.
CELL_FIELDS = set(RunConfig.model_fields) - {"rule", "model", "data", "seed", "device", "data_digest"}


class SweepError(ValueError):
    """A sweep file is wrong; the message names the file and the key."""


class ClusterLost(RuntimeError):
    """The Ray cluster went away mid-grid; what was recorded stays, a rerun resumes."""


@dataclass
class Sweep:
    path: str
    description: str
    rules: list[str]
    models: list[str]
    datasets: list[str]
    seeds: list[int]
    defaults: dict[str, Any]
    rule_overrides: dict[str, dict[str, Any]]
    model_overrides: dict[str, dict[str, Any]]
    dataset_overrides: dict[str, dict[str, Any]]
    jobs: int | None = None
    threads: int | None = None
    brain_boot: int | None = None  # bootstrap resamples of the brain comparison
    brain_untrained_seeds: int | None = None  # seeds of each run's untrained baseline
    notes: list[str] = field(default_factory=list)  # e.g. overrides for rules not registered
    base: "Sweep | None" = None  # the sweep file named by `base`: its settings apply first
    # settings over every cell, applied last (a command line's --epochs, --lr, --opt)
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Cell:
    cfg: RunConfig

    @property
    def id(self) -> str:
        return self.cfg.key()

    @property
    def code(self) -> str:
        from .fingerprint import code_fingerprint

        return code_fingerprint(self.cfg.rule)

    def recorded(self, store) -> bool:
        """Finished in `store` by the code this checkout would run (else stale: run again)."""
        return store.has(self.id, code=self.code)

    @property
    def label(self) -> str:
        c = self.cfg
        return f"{c.rule}/{c.model}/{c.data}/s{c.seed}"


@dataclass(frozen=True)
class Skipped:
    rule: str
    model: str
    data: str
    reason: str


# -- the sweep file ---------------------------------------------------------------------------
def preset_path(name: str) -> Path:
    """The TOML file of a preset shipped inside the package."""
    if name not in PRESETS:
        raise SweepError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    return Path(str(resources.files("bioplausible.experiments") / "presets" / f"{name}.toml"))


def load_sweep(path: str | Path) -> Sweep:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise SweepError(f"cannot read sweep file {path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise SweepError(f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}); "
                         "TOML files are UTF-8") from None
    return parse_sweep(text, str(path), path.parent)


def _resolve_base(src: str, name: Any, folder: Path | None, seen: tuple[str, ...]) -> "Sweep":
    """The sweep named by a file's `base`: a preset name, or a path relative to the file."""
    if not isinstance(name, str) or not name:
        raise SweepError(f"{src}: base must be a preset name ({', '.join(PRESETS)}) or a sweep file's path")
    path = preset_path(name) if name in PRESETS else (folder or Path(".")) / name
    if str(path) in seen:
        raise SweepError(f"{src}: base {name!r} names a file that is already a base of it (a cycle)")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise SweepError(f"{src}: base {name!r}: cannot read {path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise SweepError(f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}); "
                         "TOML files are UTF-8") from None
    return parse_sweep(text, str(path), Path(path).parent, seen + (str(path),))


def _type_name(v: Any) -> str:
    return {str: "a string", int: "an integer", float: "a number", bool: "a boolean", list: "a list",
            dict: "a table"}.get(type(v), type(v).__name__)


def _check_keys(src: str, where: str, table: Any, allowed: set[str]) -> dict:
    if not isinstance(table, dict):
        raise SweepError(f"{src}: [{where}] must be a table, got {_type_name(table)}")
    bad = sorted(set(table) - allowed)
    if bad:
        raise SweepError(f"{src}: unknown key {where + '.' if where else ''}{bad[0]} "
                         f"(allowed here: {', '.join(sorted(allowed))})")
    return table


def _str_list(src: str, key: str, v: Any, known: Iterable[str], what: str) -> list[str]:
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not v or not all(isinstance(s, str) for s in v):
        raise SweepError(f"{src}: {key} must be a non-empty list of {what} names")
    known = list(known)
    for s in v:
        if s not in known:
            raise SweepError(f"{src}: {key}: unknown {what} {s!r}; known: {', '.join(known)}")
    if len(set(v)) != len(v):
        raise SweepError(f"{src}: {key} lists a {what} twice")
    return list(v)


def _check_fields(src: str, where: str, table: dict[str, Any], rule: str, extra: set[str] = frozenset()) -> dict:
    """Check a table of RunConfig settings: known keys, and types as RunConfig checks them."""
    _check_keys(src, where, table, CELL_FIELDS | extra)
    fields = {k: v for k, v in table.items() if k in CELL_FIELDS}
    if "rule_options" in fields and not isinstance(fields["rule_options"], dict):
        raise SweepError(f"{src}: {where}.rule_options must be a table, got {_type_name(fields['rule_options'])}")
    try:
        # rule options are checked by _check_rule_options, which names the option's path
        RunConfig(rule=rule, **{k: v for k, v in fields.items() if k != "rule_options"})
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise SweepError(f"{src}: {where}.{loc}: {err['msg']} (got {err.get('input')!r})") from None
    return dict(table)


def _check_rule_options(src: str, where: str, rule: str, opts: dict[str, Any], model: str | None = None) -> None:
    from ..algorithms import architectures, validate_options

    if model is not None and model not in architectures(rule):
        model = None  # the cell is skipped anyway; checked as for any architecture
    try:
        validate_options(rule, opts, model)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise SweepError(f"{src}: {where}.rule_options.{loc}: {err['msg']} (rule {rule!r})") from None


def parse_sweep(text: str, src: str = "<sweep>", folder: Path | None = None, _seen: tuple[str, ...] = ()) -> Sweep:
    """Parse and validate a sweep file's text. Errors name `src` and the offending key.
    `folder` resolves a relative `base` path (default: the working directory)."""
    from ..algorithms import RULES
    from ..data import DATASETS
    from ..models import ARCHITECTURES

    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SweepError(f"{src}: not valid TOML: {e}") from None
    _check_keys(src, "", doc, TOP_KEYS)
    base = _resolve_base(src, doc["base"], folder, _seen + (src,)) if "base" in doc else None
    if "grid" not in doc and base is None:
        raise SweepError(f"{src}: missing [grid] table (with rules, models, datasets, seeds)")
    grid = _check_keys(src, "grid", doc.get("grid", {}), GRID_KEYS)
    if base is not None:  # the grid's keys not given here are the base's
        grid = {"rules": base.rules, "models": base.models, "datasets": base.datasets, "seeds": base.seeds, **grid}
    if "rules" not in grid:
        raise SweepError(f"{src}: grid.rules is missing (a list of rules, or \"all\")")
    any_rule = RULES[0]
    notes: list[str] = []

    if grid["rules"] == "all":
        rules = list(RULES)
    else:
        rules = _str_list(src, "grid.rules", grid["rules"], RULES, "rule")
    models = _str_list(src, "grid.models", grid.get("models", ["mlp"]), ARCHITECTURES, "model")
    datasets = _str_list(src, "grid.datasets", grid.get("datasets", ["digits"]), DATASETS, "dataset")
    seeds_v = grid.get("seeds", [0])
    if isinstance(seeds_v, int) and not isinstance(seeds_v, bool):
        if seeds_v < 1 or seeds_v > MAX_SEEDS:
            raise SweepError(f"{src}: grid.seeds as a number means seeds 0..n-1 and must be in 1..{MAX_SEEDS}, "
                             f"got {seeds_v}")
        seeds = list(range(seeds_v))
    elif isinstance(seeds_v, list) and seeds_v and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds_v):
        if len(set(seeds_v)) != len(seeds_v):
            raise SweepError(f"{src}: grid.seeds lists a seed twice")
        seeds = list(seeds_v)
    else:
        raise SweepError(f"{src}: grid.seeds must be a number n (seeds 0..n-1) or a non-empty list of "
                         f"non-negative integers, got {seeds_v!r}")

    defaults = _check_fields(src, "defaults", doc.get("defaults", {}), any_rule)
    if defaults.get("rule_options"):
        raise SweepError(f"{src}: defaults.rule_options: rule options belong in [rules.NAME] tables "
                         "(each rule has its own options)")

    model_over = {}
    for m, t in _check_keys(src, "models", doc.get("models", {}), set(ARCHITECTURES)).items():
        model_over[m] = _check_fields(src, f"models.{m}", t, any_rule)
        if model_over[m].get("rule_options"):
            raise SweepError(f"{src}: models.{m}.rule_options: set rule options in [rules.NAME.models.{m}]")
    data_over = {}
    for d, t in _check_keys(src, "datasets", doc.get("datasets", {}), set(DATASETS)).items():
        data_over[d] = _check_fields(src, f"datasets.{d}", t, any_rule)
        if data_over[d].get("rule_options"):
            raise SweepError(f"{src}: datasets.{d}.rule_options: set rule options in [rules.NAME.datasets.{d}]")

    rule_over: dict[str, dict[str, Any]] = {}
    rtables = doc.get("rules", {})
    if not isinstance(rtables, dict):
        raise SweepError(f"{src}: [rules] must be a table of [rules.NAME] tables")
    for r, t in rtables.items():
        if r not in RULES:
            raise SweepError(f"{src}: [rules.{r}]: unknown rule {r!r}; known: {', '.join(RULES)}")
        where = f"rules.{r}"
        t = _check_fields(src, where, t, r, extra={"models", "datasets"})
        for sub, known in (("models", ARCHITECTURES), ("datasets", DATASETS)):
            subt = _check_keys(src, f"{where}.{sub}", t.get(sub, {}), set(known))
            for name, st in subt.items():
                _check_fields(src, f"{where}.{sub}.{name}", st, r)
        # rule options checked for every combination the file can produce
        base_opts = t.get("rule_options", {})
        _check_rule_options(src, where, r, base_opts)
        for sub in ("models", "datasets"):
            for name, st in t.get(sub, {}).items():
                _check_rule_options(src, f"{where}.{sub}.{name}", r, {**base_opts, **st.get("rule_options", {})},
                                    name if sub == "models" else None)
        rule_over[r] = t

    sweep_t = _check_keys(src, "sweep", doc.get("sweep", {}), SWEEP_KEYS)
    for k in ("jobs", "threads", "brain_boot", "brain_untrained_seeds"):
        v = sweep_t.get(k)
        low = 0 if k.startswith("brain") else 1
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < low):
            raise SweepError(f"{src}: sweep.{k} must be a {'non-negative' if low == 0 else 'positive'} "
                             f"integer, got {v!r}")
    desc = doc.get("description", "")
    if not isinstance(desc, str):
        raise SweepError(f"{src}: description must be a string")
    if base is not None:
        notes = base.notes + notes
        sweep_t = {**{k: getattr(base, k) for k in SWEEP_KEYS if getattr(base, k) is not None}, **sweep_t}
    return Sweep(src, desc, rules, models, datasets, seeds, defaults, rule_over, model_over, data_over,
                 sweep_t.get("jobs"), sweep_t.get("threads"), sweep_t.get("brain_boot"),
                 sweep_t.get("brain_untrained_seeds"), notes, base)


def restrict(sw: Sweep, rules=None, models=None, datasets=None, seeds=None) -> Sweep:
    """A sub-grid (command-line filters); every value must be in the file's grid."""
    sw = copy.deepcopy(sw)
    for attr, want in (("rules", rules), ("models", models), ("datasets", datasets), ("seeds", seeds)):
        if not want:
            continue
        have = getattr(sw, attr)
        bad = [w for w in want if w not in have]
        if bad:
            raise SweepError(f"--{attr} {','.join(map(str, bad))}: not in the grid of {sw.path} "
                             f"({attr}: {', '.join(map(str, have))})")
        setattr(sw, attr, [h for h in have if h in want])
    return sw


# -- the grid ----------------------------------------------------------------------------------
def _layers(sw: Sweep, rule: str, model: str, data: str) -> list[dict[str, Any]]:
    """The tables that set a cell, first to last: the base's (if any), then this file's."""
    rt = sw.rule_overrides.get(rule, {})
    own = [sw.defaults, sw.dataset_overrides.get(data, {}), sw.model_overrides.get(model, {}), rt,
           rt.get("datasets", {}).get(data, {}), rt.get("models", {}).get(model, {})]
    return (_layers(sw.base, rule, model, data) if sw.base is not None else []) + own


def cell_settings(sw: Sweep, rule: str, model: str, data: str) -> dict[str, Any]:
    """Settings of one cell. Later wins: the base file's tables (in the order below), then
    this file's: defaults, [datasets.D], [models.M], [rules.R], [rules.R.datasets.D],
    [rules.R.models.M]; then `sw.overrides` (a command line's). rule_options tables are merged
    key by key throughout. So a preset based on `tuned` that sets `[defaults] epochs` sets
    every rule's epochs (its budget), and keeps every rule's tuned options."""
    out: dict[str, Any] = {}
    opts: dict[str, Any] = {}
    last = dict(sw.overrides)
    last["rule_options"] = (sw.overrides.get("rule_options") or {}).get(rule, {})
    for t in (*_layers(sw, rule, model, data), last):
        for k, v in t.items():
            if k in ("models", "datasets"):
                continue
            if k == "rule_options":
                opts.update(v)
            else:
                out[k] = v
    out["rule_options"] = opts
    # A setting of the other architecture would only change the run's key, not the run.
    out.pop("channels" if model == "mlp" else "widths", None)
    return out


def dataset_available(name: str, data_dir: str | None = None) -> bool:
    from ..data import DATASETS, dataset_dir

    info = DATASETS[name]
    if info.bundled:
        return True
    return Path(data_dir).exists() if data_dir else dataset_dir(name).exists()


def expand(sw: Sweep, device: str = "auto") -> tuple[list[Cell], list[Skipped]]:
    """All cells of the grid (ordered by dataset, model, rule, seed so that a process meets
    each dataset in one stretch) and the combinations skipped, with the reason."""
    from ..algorithms import architectures, resolve

    from ..data import data_digest

    cells: list[Cell] = []
    skipped: list[Skipped] = []
    digests: dict[tuple, str | None] = {}
    for data in sw.datasets:
        for model in sw.models:
            for rule in sw.rules:
                archs = architectures(rule)
                if model not in archs:
                    skipped.append(Skipped(rule, model, data, f"rule {rule} supports {', '.join(archs)} only"))
                    continue
                s = cell_settings(sw, rule, model, data)
                if not dataset_available(data, s.get("data_dir")):
                    skipped.append(Skipped(rule, model, data, f"dataset {data} is not on disk"))
                    continue
                dkey = (data, s.get("data_dir"))
                if dkey not in digests:  # the run ids name the data's content, not its folder
                    digests[dkey] = data_digest(data, s.get("data_dir"))
                for seed in sw.seeds:
                    cells.append(Cell(resolve(RunConfig(rule=rule, model=model, data=data, seed=seed, device=device,
                                                        data_digest=digests[dkey], **s))))
    return cells, skipped


# -- data, once per process --------------------------------------------------------------------
_DATA: "collections.OrderedDict[tuple, Any]" = collections.OrderedDict()
_DATA_KEEP = 2  # datasets kept in memory per process (the grid is ordered by dataset)


def get_data(cfg: RunConfig):
    from ..data import load

    key = (cfg.data, cfg.data_dir, cfg.val_fraction)
    if key in _DATA:
        _DATA.move_to_end(key)
        return _DATA[key]
    ds = load(cfg.data, cfg.data_dir, cfg.val_fraction)
    _DATA[key] = ds
    while len(_DATA) > _DATA_KEEP:
        _DATA.popitem(last=False)
    return ds


def _steps_per_epoch(ds, cfg: RunConfig) -> int:
    n = len(ds.x_train) if cfg.train_subset is None else min(cfg.train_subset, len(ds.x_train))
    return (n + cfg.batch_size - 1) // cfg.batch_size


def _execute(cfg: RunConfig, checkpoint_dir: Path | None, progress: Callable[[dict], None] | None = None) -> dict:
    """Load (cached) data and run `execute`; a data error becomes a failed row like any other."""
    from ..data import DataError
    from .runner import execute

    from .runner import check_data_identity

    err: Exception | None = None
    try:
        check_data_identity(cfg)
        ds = get_data(cfg)
    except DataError as e:
        ds, err = None, e
    if ds is None:
        from .runner import _now, git_commit, versions

        return {"id": cfg.key(), "rule": cfg.rule, "model": cfg.model, "data": cfg.data, "seed": cfg.seed,
                "config": cfg.model_dump(mode="json"), "versions": versions(), "git_commit": git_commit(),
                "code": Cell(cfg).code,
                "started": _now(), "finished": _now(), "status": "failed", "reason": f"DataError: {err}",
                "metrics": {}, "wall_time": 0.0, "_epochs": []}
    steps = _steps_per_epoch(ds, cfg)
    on_step = on_epoch = None
    if progress is not None:
        progress({"event": "start", "id": cfg.key(), "epochs": cfg.epochs, "steps": steps})
        last = [0.0]

        def step(s):
            now = time.monotonic()
            if now - last[0] > 0.2 or s["step"] + 1 == steps:
                last[0] = now
                progress({"event": "step", "id": cfg.key(), "epoch": s["epoch"], "step": s["step"] + 1})

        def epoch(r):
            progress({"event": "epoch", "id": cfg.key(), "epoch": r["epoch"], "test_acc": r["test_acc"]})

        on_step, on_epoch = step, epoch
    return execute(cfg, data=ds, on_step=on_step, on_epoch=on_epoch, checkpoint_dir=checkpoint_dir)


# -- running -----------------------------------------------------------------------------------
OnEvent = Callable[[dict], None]


def _noop(_: dict) -> None:
    pass


def _record(store, row: dict) -> dict:
    epochs = row.pop("_epochs")
    store.record(row, epochs)
    return row


def run_sequential(cells: list[Cell], store, on_event: OnEvent = _noop, threads: int | None = None) -> list[dict]:
    """Run cells one after the other in this process; returns the rows recorded."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    ckpt_dir = store.path.parent / "checkpoints"
    rows = []
    for cell in cells:
        if cell.recorded(store):  # another process may have finished it meanwhile
            continue
        on_event({"event": "submit", "id": cell.id, "label": cell.label})
        row = _record(store, _execute(cell.cfg, ckpt_dir, on_event))
        on_event({"event": "result", "id": cell.id, "label": cell.label, "row": row})
        rows.append(row)
    return rows


# Local worker processes ------------------------------------------------------------------------
_QUEUE = None


def _die_with_parent() -> None:
    """Linux: have the kernel kill this worker when the driver dies (kill -9 included), so
    an interrupted sweep leaves no orphan training runs behind."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _pool_init(queue, threads: int) -> None:
    global _QUEUE
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle
    import torch

    torch.set_num_threads(max(1, threads))
    _QUEUE = queue


def _pool_progress(msg: dict) -> None:
    if _QUEUE is not None:
        try:
            _QUEUE.put_nowait(msg)
        except Exception:  # progress is best effort; never fail a run for it
            pass


def _kill_pool(pool) -> None:
    for p in list((getattr(pool, "_processes", None) or {}).values()):
        try:
            if p.is_alive():
                p.kill()
        except Exception:
            pass
    pool.shutdown(wait=False, cancel_futures=True)


def _pool_task(cfg_json: dict, checkpoint_dir: str) -> dict:
    return _execute(RunConfig(**cfg_json), Path(checkpoint_dir), _pool_progress)


def _start_method() -> str:
    """fork where it is safe (Linux, CUDA not initialised in the driver): workers start in
    milliseconds instead of importing torch again; spawn otherwise."""
    import sys

    import torch

    if sys.platform.startswith("linux") and not torch.cuda.is_initialized():
        return "fork"
    return "spawn"


def run_pool(cells: list[Cell], store, jobs: int, on_event: OnEvent = _noop, threads: int | None = None,
             max_retries: int = 2) -> list[dict]:
    """Run cells in `jobs` worker processes; the driver records each row as it comes."""
    import multiprocessing as mp
    import queue as queue_mod
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    ctx = mp.get_context(_start_method())
    threads = threads or max(1, (os.cpu_count() or 1) // jobs)
    ckpt_dir = str(store.path.parent / "checkpoints")
    todo = collections.deque(c for c in cells if not c.recorded(store))
    attempts: dict[str, int] = collections.Counter()
    rows: list[dict] = []
    q = ctx.Queue()

    def drain():
        while True:
            try:
                on_event(q.get_nowait())
            except (queue_mod.Empty, EOFError, OSError):
                return

    while todo:
        pool = ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_pool_init, initargs=(q, threads))
        futures = {}
        broken = False
        try:
            def submit():
                while todo and len(futures) < jobs * 2:
                    cell = todo.popleft()
                    futures[pool.submit(_pool_task, cell.cfg.model_dump(mode="json"), ckpt_dir)] = cell
                    on_event({"event": "submit", "id": cell.id, "label": cell.label})

            submit()
            while futures:
                done, _ = wait(list(futures), timeout=0.25, return_when=FIRST_COMPLETED)
                drain()
                for fut in done:
                    cell = futures.pop(fut)
                    try:
                        row = fut.result()
                    except BrokenProcessPool:
                        broken = True
                        attempts[cell.id] += 1
                        if attempts[cell.id] <= max_retries:
                            todo.appendleft(cell)
                            on_event({"event": "retry", "id": cell.id, "label": cell.label,
                                      "reason": "a worker process died"})
                        else:
                            on_event({"event": "lost", "id": cell.id, "label": cell.label,
                                      "reason": f"worker died {attempts[cell.id]} times"})
                        continue
                    rows.append(_record(store, row))
                    on_event({"event": "result", "id": cell.id, "label": cell.label, "row": row})
                if broken:
                    # the other in-flight futures fail the same way; collect them above
                    continue
                submit()
        except BaseException:
            _kill_pool(pool)  # Ctrl-C: do not wait for the running cells to finish
            raise
        if broken:
            _kill_pool(pool)
        pool.shutdown(wait=True, cancel_futures=True)
    drain()
    return rows


# Ray -------------------------------------------------------------------------------------------
def _ray_task(cfg_json: dict, threads: int) -> tuple[dict, bytes | None]:
    """Run one cell on a Ray worker; return the row and the checkpoint's bytes (the
    driver writes both: the store and the checkpoints live where the driver is)."""
    import tempfile

    import torch

    torch.set_num_threads(max(1, threads))
    with tempfile.TemporaryDirectory(prefix="bioplausible-ray-") as tmp:
        row = _execute(RunConfig(**cfg_json), Path(tmp))
        blob = None
        if row.get("checkpoint"):
            blob = Path(row["checkpoint"]).read_bytes()
    return row, blob


RAY_CONNECT_TIMEOUT_S = float(os.environ.get("BIOPLAUSIBLE_RAY_TIMEOUT", "60"))


def _parse_ray_address(address: str) -> tuple[bool, str, int]:
    """(Ray Client?, host, port) of a HOST:PORT or ray://HOST:PORT address; SweepError else."""
    import re

    m = re.fullmatch(r"(ray://)?([A-Za-z0-9._-]+|\[[0-9A-Fa-f:]+\]):(\d{1,5})", address)
    if not m or not 0 < int(m.group(3)) < 65536:
        raise SweepError(f"--ray {address}: not a Ray address; use local, auto, HOST:PORT (the head's GCS port, "
                         "usually 6379) or ray://HOST:PORT (Ray Client, usually 10001)")
    return bool(m.group(1)), m.group(2).strip("[]"), int(m.group(3))


def check_ray_address(address: str) -> tuple[str, str | None, int | None]:
    """Validate a --ray address and, for a remote one, that something listens there; a
    SweepError otherwise (in seconds, not after Ray's minutes of retries)."""
    import socket

    if address in ("local", "auto"):
        return address, None, None
    client, host, port = _parse_ray_address(address)
    if client:
        import importlib.util

        if importlib.util.find_spec("grpc") is None:
            raise SweepError(f"--ray {address}: a ray:// address needs Ray Client: pip install 'ray[client]' "
                             "(the same version as the cluster), or pass the head's HOST:6379 from a cluster node")
    timeout = min(RAY_CONNECT_TIMEOUT_S, 10.0)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        why = "timed out" if isinstance(e, (socket.timeout, TimeoutError)) else (e.strerror or str(e))
        raise SweepError(f"--ray {address}: cannot reach {host}:{port} ({why}); is the head running "
                         "(`ray start --head`) and the port open?") from None
    return address, host, port


def connect_ray(address: str, num_cpus: int | None = None) -> None:
    """Connect (or start a private Ray) before any output, so a bad address is one line."""
    import ray

    if not ray.is_initialized():
        _ray_init(ray, address, num_cpus)


def disconnect_ray(wait_s: float = 5.0) -> None:
    """Leave a cluster that went away without waiting on it: ray.shutdown() would retry
    the dead head, so it gets a few seconds in a thread and the process moves on."""
    import threading

    import ray

    if ray.is_initialized():
        t = threading.Thread(target=ray.shutdown, daemon=True)
        t.start()
        t.join(wait_s)


def _ray_init(ray, address: str, num_cpus: int | None) -> None:
    """ray.init with a time limit and one-line errors (a wrong address otherwise hangs for
    minutes; a head with token authentication fails with a raw traceback)."""
    import threading

    if address == "local":
        ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
        return
    check_ray_address(address)
    box: dict[str, BaseException] = {}
    # Ship this process's bioplausible to the workers (Ray's runtime_env): the cluster runs
    # the code the driver fingerprints, whatever is installed on the nodes. Its dependencies
    # (torch ...) must be there already. BIOPLAUSIBLE_RAY_SHIP=0 uses the nodes' own copy.
    kw: dict[str, Any] = {}
    if os.environ.get("BIOPLAUSIBLE_RAY_SHIP", "1") != "0":
        kw["runtime_env"] = {"py_modules": [str(Path(__file__).resolve().parent.parent)],
                             "excludes": ["__pycache__", "*.pyc"]}

    def init() -> None:
        try:
            ray.init(address=address, log_to_driver=False, **kw)  # an existing cluster: its own settings
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            box["e"] = e

    t = threading.Thread(target=init, daemon=True)
    t.start()
    t.join(RAY_CONNECT_TIMEOUT_S)
    if t.is_alive():
        raise SweepError(f"--ray {address}: no connection after {RAY_CONNECT_TIMEOUT_S:.0f} s "
                         "(BIOPLAUSIBLE_RAY_TIMEOUT sets the limit); is it a Ray head of the same Ray version?")
    if "e" in box:
        e = box["e"]
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        hint = ""
        if isinstance(e, ConnectionError) and os.environ.get("RAY_AUTH_MODE") != "token":
            # Ray 2.5x heads enable token authentication by default; the driver then only
            # logs "InvalidAuthToken" and fails with a bare ConnectionError
            hint = ("; if the head uses token authentication (the default of `ray start --head`), "
                    "set RAY_AUTH_MODE=token here (the token is read from ~/.ray/auth_token or RAY_AUTH_TOKEN)")
        raise SweepError(f"--ray {address}: cannot connect ({type(e).__name__}: {first}){hint}") from None


def _node_probe(needs: list[tuple[str, str | None]], rules: list[str]) -> dict:
    """What one node runs and holds: package version, code fingerprints, data digests."""
    import platform

    from .. import __version__
    from ..data import data_digest
    from .fingerprint import code_fingerprint

    data = {}
    for name, data_dir in needs:
        try:
            data[f"{name}:{data_dir or ''}"] = data_digest(name, data_dir)
        except Exception as e:  # noqa: BLE001 - reported by the driver
            data[f"{name}:{data_dir or ''}"] = f"error: {(str(e).splitlines() or [''])[0]}"
    return {"node": platform.node(), "version": __version__, "code": {r: code_fingerprint(r) for r in rules},
            "data": data}


def node_problems(driver: dict, probe: dict) -> list[str]:
    """Differences between a worker node's probe and the driver's, one phrase each."""
    out = []
    if probe["version"] != driver["version"]:
        out.append(f"bioplausible {probe['version']} (driver {driver['version']})")
    changed = sorted(r for r, c in driver["code"].items() if probe["code"].get(r) != c)
    if changed:
        out.append(f"other code for rule{'s' if len(changed) > 1 else ''} {', '.join(changed)}")
    for k, d in driver["data"].items():
        got = probe["data"].get(k)
        if got != d:
            name = k.split(":", 1)[0]
            out.append(f"data set {name}: {got[7:] if isinstance(got, str) and got.startswith('error: ') else 'other files'}")
    return [f"node {probe['node']}: {p}" for p in out]


def _check_nodes(ray, cells: list[Cell]) -> None:
    """Every alive node must run this code and hold the same data, else the rows would look
    stale to the driver or fail one by one; one SweepError listing what differs."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    needs = sorted({(c.cfg.data, c.cfg.data_dir) for c in cells}, key=str)
    rules = sorted({c.cfg.rule for c in cells})
    driver = _node_probe(needs, rules)
    driver["data"] = {f"{c.cfg.data}:{c.cfg.data_dir or ''}": c.cfg.data_digest for c in cells}
    probe = ray.remote(num_cpus=0)(_node_probe)
    refs = [probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
            .remote(needs, rules) for n in ray.nodes() if n.get("Alive")]
    problems = [p for r in ray.get(refs, timeout=RAY_CONNECT_TIMEOUT_S * 5) for p in node_problems(driver, r)]
    if problems:
        raise SweepError("Ray workers differ from this process: " + "; ".join(problems) +
                         " (install the same bioplausible on every node and fetch the data there)")


HEAD_PROBE_S = 3.0  # how often run_ray checks that the head still answers
HEAD_LOST_S = 15.0  # unanswered this long (well inside Ray's 60 s): the cluster is gone


def _reachable(host: str, port: int) -> bool:
    import socket

    try:
        socket.create_connection((host, port), timeout=2).close()
        return True
    except OSError:
        return False


def _head_address(ray, address: str) -> tuple[str, int] | None:
    """(host, port) of the head to probe; None for a private local instance."""
    if address == "local":
        return None
    if address != "auto":
        return _parse_ray_address(address)[1:]
    try:
        host, port = ray.get_runtime_context().gcs_address.rsplit(":", 1)
        return host, int(port)
    except Exception:  # noqa: BLE001 - then only Ray's own detection remains
        return None


def _cluster_alive(ray) -> bool:
    try:
        return any(n.get("Alive") for n in ray.nodes())
    except Exception:  # noqa: BLE001 - an unreachable GCS is what we are asking about
        return False


def run_ray(cells: list[Cell], store, address: str = "local", on_event: OnEvent = _noop,
            cpus_per_run: float = 1, gpus_per_run: float = 0, max_retries: int = 3,
            num_cpus: int | None = None, task: Callable | None = None, check_nodes: bool | None = None) -> list[dict]:
    """Run cells as Ray tasks. `address` is a cluster address ('auto', 'ray://host:10001',
    'host:6379') or 'local' to start a private Ray instance here. `task` replaces the task
    function (tests use it to kill a worker once and watch the retry). On a cluster, every
    node is first checked to run this code and hold the data (`check_nodes`). Raises
    ClusterLost when the cluster goes away mid-grid (what was recorded stays)."""
    import ray

    started = False
    if not ray.is_initialized():
        _ray_init(ray, address, num_cpus)
        started = True
    ckpt_dir = store.path.parent / "checkpoints"
    remote = ray.remote(num_cpus=cpus_per_run, num_gpus=gpus_per_run, max_retries=max_retries)(task or _ray_task)
    threads = max(1, int(cpus_per_run))
    rows: list[dict] = []
    refs: dict[Any, Cell] = {}
    try:
        if check_nodes if check_nodes is not None else address != "local":
            _check_nodes(ray, cells)
        for cell in cells:
            if cell.recorded(store):
                continue
            cfg = cell.cfg
            if gpus_per_run > 0 and cfg.device == "auto":
                cfg = cfg.model_copy(update={"device": "cuda"})
            refs[remote.remote(cfg.model_dump(mode="json"), threads)] = cell
            on_event({"event": "submit", "id": cell.id, "label": cell.label})
        head = _head_address(ray, address)
        last_probe, unreachable_since = time.monotonic(), None
        while refs:
            try:
                done, _ = ray.wait(list(refs), num_returns=1, timeout=0.5)
            except (ray.exceptions.RayError, ConnectionError, OSError) as e:
                raise ClusterLost(f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}") from None
            if head is not None and time.monotonic() - last_probe > HEAD_PROBE_S:
                # Ray's own driver gives up on a dead head after 60 s by killing the process,
                # with none of our message; a plain TCP probe notices first
                last_probe = time.monotonic()
                if _reachable(*head):
                    unreachable_since = None
                elif unreachable_since is None:
                    unreachable_since = last_probe
                elif last_probe - unreachable_since >= HEAD_LOST_S:
                    raise ClusterLost(f"the head at {head[0]}:{head[1]} has not answered for "
                                      f"{last_probe - unreachable_since:.0f} s")
            for ref in done:
                cell = refs.pop(ref)
                try:
                    row, blob = ray.get(ref)
                except (ray.exceptions.RayError,) as e:
                    if not _cluster_alive(ray):
                        raise ClusterLost(f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}") from None
                    # retries used up (or the cluster lost it): no row, the next compare re-runs it
                    on_event({"event": "lost", "id": cell.id, "label": cell.label,
                              "reason": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"})
                    continue
                if row.get("code") != cell.code:
                    # recorded, it would look stale to this driver and be run again forever
                    on_event({"event": "lost", "id": cell.id, "label": cell.label,
                              "reason": "the worker ran other code than this process (install the same "
                                        "bioplausible on every node)"})
                    continue
                if blob is not None:
                    path = ckpt_dir / f"{cell.id}.pt"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    tmp = path.with_suffix(f".pt.tmp{os.getpid()}")
                    tmp.write_bytes(blob)
                    os.replace(tmp, path)
                    row["checkpoint"] = str(path)
                else:
                    row["checkpoint"] = None
                rows.append(_record(store, row))
                on_event({"event": "result", "id": cell.id, "label": cell.label, "row": row})
    except BaseException:
        for ref in refs:
            try:
                ray.cancel(ref, force=True)
            except Exception:
                pass
        raise
    finally:
        if started:
            try:
                ray.shutdown()
            except Exception:  # noqa: BLE001 - a dead cluster cannot be shut down cleanly
                pass
    return rows
