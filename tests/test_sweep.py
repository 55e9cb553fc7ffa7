"""Sweeps: the sweep file is validated with errors naming file and key; the grid expands as
documented; finished cells are skipped; --jobs 2 records the same rows as one process; a
comparison killed with SIGKILL three times and restarted ends with exactly one row per
cell; a Ray task whose worker dies is retried and recorded once."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bioplausible.experiments import sweep as S
from bioplausible.experiments.store import Store

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).with_name("bioplausible")

TINY = """
[grid]
rules = ["bp", "fa"]
models = ["mlp"]
datasets = ["digits"]
seeds = 2
[defaults]
epochs = 2
widths = [32]
"""


def parse(text: str):
    return S.parse_sweep(text, "t.toml")


# -- validation ------------------------------------------------------------------------------
@pytest.mark.parametrize("text, needle", [
    ("[grid]\nrules = ['bp']\n[defaultz]\nepochs = 1\n", "unknown key defaultz"),
    ("[grid]\nrules = ['bp', 'nosuchrule']\n", "grid.rules: unknown rule 'nosuchrule'"),
    ("[grid]\nrules = ['bp']\nmodels = ['rnn']\n", "grid.models: unknown model 'rnn'"),
    ("[grid]\nrules = ['bp']\ndatasets = ['imagenet']\n", "grid.datasets: unknown dataset 'imagenet'"),
    ("[grid]\nrules = ['bp']\nseeds = -1\n", "grid.seeds"),
    ("[grid]\nrules = ['bp']\n[defaults]\nepochs = 'ten'\n", "defaults.epochs"),
    ("[grid]\nrules = ['bp']\n[defaults]\nlr = -1.0\n", "defaults.lr"),
    ("[grid]\nrules = ['bp']\n[defaults]\nepoch = 3\n", "unknown key defaults.epoch"),
    ("[grid]\nrules = ['bp']\n[rules.nosuchrule]\nlr = 0.1\n", "[rules.nosuchrule]: unknown rule"),
    ("[grid]\nrules = ['bp']\n[rules.bp]\nrule_options = {nonsense = 1}\n", "rules.bp.rule_options.nonsense"),
    ("[grid]\nrules = ['bp']\n[rules.bp.models.cnn]\nepochs = 'x'\n", "rules.bp.models.cnn.epochs"),
    ("[grid]\nrules = ['bp']\n[models.cnn]\nchannels = [0]\n", "models.cnn.channels"),
    ("[grid]\nrules = ['bp']\n[sweep]\njobs = 0\n", "sweep.jobs"),
    ("[grid]\nmodels = ['mlp']\n", "grid.rules is missing"),
    ("[grid\n", "not valid TOML"),
])
def test_validation_errors_name_file_and_key(text, needle):
    with pytest.raises(S.SweepError) as e:
        parse(text)
    msg = str(e.value)
    assert msg.startswith("t.toml:"), msg
    assert needle in msg, msg


def test_settings_of_an_unknown_rule_are_an_error_with_all_too():
    # every preset ships with the package, so a [rules.X] of no registered rule is a typo
    with pytest.raises(S.SweepError, match=r"\[rules.notyet\]: unknown rule 'notyet'"):
        parse("[grid]\nrules = 'all'\n[rules.notyet]\nlr = 0.1\n")


def test_presets_parse_and_name_the_tuned_file_as_their_base():
    for name in S.PRESETS:
        sw = S.load_sweep(S.preset_path(name))
        assert sw.rules and sw.models and sw.datasets and sw.seeds
        root = sw
        while root.base is not None:
            root = root.base
        assert Path(root.path) == S.preset_path("tuned"), name
    assert not (REPO / "configs").exists()  # no second copy of the presets to drift


def test_presets_and_the_bench_read_the_same_tuned_settings(tmp_path, monkeypatch):
    """Change a setting in the one tuned file: every preset and bench/accuracy.py see it."""
    import shutil

    for name in S.PRESETS:
        shutil.copy(S.preset_path(name), tmp_path / f"{name}.toml")
    text = (tmp_path / "tuned.toml").read_text()
    old = "[rules.wp.models.cnn]\nepochs = 48\nlr = 7e-4\nrule_options = {n_perturbations = 4"
    assert old in text
    (tmp_path / "tuned.toml").write_text(text.replace(old, old.replace("n_perturbations = 4", "n_perturbations = 7")))
    monkeypatch.setattr(S, "preset_path", lambda name: tmp_path / f"{name}.toml")
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    import accuracy

    bench = accuracy.config_for("wp", "cnn", "mnist", 0, None, "cpu")
    assert bench.rule_options["n_perturbations"] == 7 and bench.epochs == 48 and bench.lr == 7e-4
    for name in S.PRESETS:
        sw = S.load_sweep(S.preset_path(name))
        data = sw.datasets[0]
        assert S.cell_settings(sw, "wp", "cnn", data)["rule_options"] == {"n_perturbations": 7, "balance": True}
    # a budget preset keeps the tuned options and sets its own epochs
    paper = S.load_sweep(S.preset_path("paper"))
    assert S.cell_settings(paper, "wp", "cnn", "mnist")["epochs"] == 1
    assert S.cell_settings(paper, "bp", "mlp", "mnist")["epochs"] == 8
    assert S.cell_settings(S.load_sweep(S.preset_path("tuned")), "bp", "mlp", "mnist")["epochs"] == 12


def test_base_file_applies_first_and_fills_the_grid(tmp_path):
    (tmp_path / "b.toml").write_text("""
[grid]
rules = ["bp", "fa"]
datasets = ["digits"]
seeds = 3
[defaults]
lr = 0.01
batch_size = 32
[rules.fa]
epochs = 9
rule_options = {}
[rules.fa.models.cnn]
epochs = 7
""")
    (tmp_path / "d.toml").write_text("base = 'b.toml'\n[grid]\nseeds = [5]\n[defaults]\nepochs = 2\n")
    sw = S.load_sweep(tmp_path / "d.toml")
    assert (sw.rules, sw.datasets, sw.seeds) == (["bp", "fa"], ["digits"], [5])
    # this file's defaults come after every table of the base (its budget), the rest stays
    assert S.cell_settings(sw, "fa", "cnn", "digits") == {"epochs": 2, "lr": 0.01, "batch_size": 32, "rule_options": {}}
    sw.overrides = {"lr": 0.5, "rule_options": {"fa": {"x": 1}}}
    assert S.cell_settings(sw, "fa", "mlp", "digits")["lr"] == 0.5
    assert S.cell_settings(sw, "fa", "mlp", "digits")["rule_options"] == {"x": 1}
    assert S.cell_settings(sw, "bp", "mlp", "digits")["rule_options"] == {}
    (tmp_path / "loop.toml").write_text("base = 'loop.toml'\n")
    with pytest.raises(S.SweepError, match="cycle"):
        S.load_sweep(tmp_path / "loop.toml")
    with pytest.raises(S.SweepError, match="base 'nope.toml'"):
        parse("base = 'nope.toml'\n")


# -- grid expansion --------------------------------------------------------------------------
def test_grid_expansion_and_precedence():
    sw = parse("""
[grid]
rules = ["bp", "fa"]
models = ["mlp", "cnn"]
datasets = ["digits"]
seeds = [3, 5]
[defaults]
epochs = 4
lr = 0.001
widths = [16]
channels = [4, 4, 4]
[datasets.digits]
epochs = 3
[models.cnn]
epochs = 2
[rules.fa]
lr = 0.01
rule_options = {}
[rules.fa.models.mlp]
epochs = 7
""")
    cells, skipped = S.expand(sw, device="cpu")
    assert not skipped
    assert len(cells) == 2 * 2 * 1 * 2
    assert len({c.id for c in cells}) == len(cells)
    by = {(c.cfg.rule, c.cfg.model, c.cfg.seed): c.cfg for c in cells}
    assert by[("bp", "mlp", 3)].epochs == 3 and by[("bp", "mlp", 3)].lr == 0.001  # dataset over defaults
    assert by[("bp", "cnn", 3)].epochs == 2  # model over dataset
    assert by[("fa", "cnn", 5)].lr == 0.01 and by[("fa", "cnn", 5)].epochs == 2
    assert by[("fa", "mlp", 5)].epochs == 7  # rule.models over everything
    # a setting of the other architecture does not enter the cell (nor its key)
    assert by[("bp", "cnn", 3)].widths is None and by[("bp", "mlp", 3)].channels is None
    assert by[("bp", "mlp", 3)].widths == (16,)


def test_unsupported_model_and_missing_dataset_are_skipped(monkeypatch, tmp_path):
    import bioplausible.algorithms as A

    real_architectures = A.architectures
    # fa registered for the MLP only
    monkeypatch.setattr(A, "architectures", lambda name: ("mlp",) if name == "fa" else real_architectures(name))
    monkeypatch.setenv("BIOPLAUSIBLE_DATA", str(tmp_path))  # an empty data folder: no cifar10
    sw = parse("[grid]\nrules = ['bp', 'fa']\nmodels = ['mlp', 'cnn']\ndatasets = ['digits', 'cifar10']\n")
    cells, skipped = S.expand(sw)
    assert {(c.cfg.rule, c.cfg.model, c.cfg.data) for c in cells} == {
        ("bp", "mlp", "digits"), ("bp", "cnn", "digits"), ("fa", "mlp", "digits")}
    reasons = {(s.rule, s.model, s.data): s.reason for s in skipped}
    assert "supports mlp only" in reasons[("fa", "cnn", "digits")]
    assert all("not on disk" in reasons[(r, m, "cifar10")] for r, m in [("bp", "mlp"), ("bp", "cnn"), ("fa", "mlp")])


def test_restrict_to_a_subgrid():
    sw = S.restrict(parse(TINY), rules=["fa"], seeds=[1])
    cells, _ = S.expand(sw)
    assert [(c.cfg.rule, c.cfg.seed) for c in cells] == [("fa", 1)]
    with pytest.raises(S.SweepError, match="not in the grid"):
        S.restrict(parse(TINY), datasets=["mnist"])


# -- running ---------------------------------------------------------------------------------
def test_skip_if_done_and_failed_is_retried(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    cells, _ = S.expand(parse(TINY), device="cpu")
    rows = S.run_sequential(cells, store, threads=1)
    assert [r["status"] for r in rows] == ["done"] * 4
    assert len(store.runs()) == 4
    assert all((tmp_path / "checkpoints" / f"{c.id}.pt").exists() for c in cells)
    finished = {r["id"]: r["finished"] for r in store.runs()}
    assert S.run_sequential(cells, store) == []  # all recorded: nothing runs
    assert {r["id"]: r["finished"] for r in store.runs()} == finished
    # a failed row is not 'finished': the next sweep retries it
    failed = dict(store.runs(id=cells[0].id)[0], status="failed", reason="boom")
    assert store.record(failed, []) is False  # a failed rerun never replaces a finished row
    with store.transaction() as con:
        con.execute("DELETE FROM runs WHERE id = ?", (cells[0].id,))
    assert store.record(failed, []) is True
    again = S.run_sequential(cells, store)
    assert [r["id"] for r in again] == [cells[0].id] and again[0]["status"] == "done"
    assert len(store.runs()) == 4


def test_jobs_2_records_the_same_rows_as_one_process(tmp_path):
    cells, _ = S.expand(parse(TINY), device="cpu")
    a, b = Store(tmp_path / "a" / "s.sqlite"), Store(tmp_path / "b" / "s.sqlite")
    S.run_sequential(cells, a, threads=1)
    events = []
    S.run_pool(cells, b, jobs=2, threads=1, on_event=events.append)
    ra, rb = {r["id"]: r for r in a.runs()}, {r["id"]: r for r in b.runs()}
    assert sorted(ra) == sorted(rb) == sorted(c.id for c in cells)
    for k in ra:
        assert ra[k]["metrics"] == rb[k]["metrics"]
        assert ra[k]["config"] == rb[k]["config"]
        ea = [(e["epoch"], e["train_loss"], e["test_acc"]) for e in a.epochs(k)]
        eb = [(e["epoch"], e["train_loss"], e["test_acc"]) for e in b.epochs(k)]
        assert ea == eb
    # the workers reported progress to the driver
    assert {e["event"] for e in events} >= {"submit", "start", "step", "epoch", "result"}


def _rows(db: Path) -> int:
    return len(Store(db).runs()) if db.exists() else 0


def test_kill_9_three_times_then_resume_gives_one_row_per_cell(tmp_path):
    cfg = tmp_path / "grid.toml"
    cfg.write_text("""
[grid]
rules = ["bp", "fa", "dfa", "signsym"]
models = ["mlp"]
datasets = ["digits"]
seeds = 3
[defaults]
epochs = 15
widths = [128, 64]
""")
    db = tmp_path / "store.sqlite"
    cmd = [str(BIN), "compare", "--config", str(cfg), "--store", str(db), "--threads", "1",
           "--no-criteria", "--no-brain", "--no-report"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    rng = random.Random(7)
    counts = []
    for _ in range(3):
        before = _rows(db)
        p = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        # wait until this attempt is training (it recorded a row), then kill at a random point
        deadline = time.monotonic() + 120
        while _rows(db) <= before and p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 0.4))  # a run takes about a second: this lands mid-run
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        assert p.returncode == -signal.SIGKILL, p.stderr.read().decode()[-2000:]
        counts.append(_rows(db))
    print("rows after each kill:", counts)
    assert counts[-1] < 12, f"the kills came too late to interrupt anything: {counts}"
    p = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    runs = Store(db).runs()
    sw = S.load_sweep(cfg)
    want = {c.id for c in S.expand(sw, device="auto")[0]}
    assert len(runs) == 12 and {r["id"] for r in runs} == want
    assert all(r["status"] == "done" for r in runs)
    for r in runs:
        assert [e["epoch"] for e in Store(db).epochs(r["id"])] == list(range(1, 16))
    # the restarted compare ran only what the killed ones had not recorded
    assert f"{counts[-1]} already recorded" in " ".join(p.stdout.split())


# -- Ray ---------------------------------------------------------------------------------------
def test_ray_local_retries_a_dead_worker_and_records_once(tmp_path):
    ray = pytest.importorskip("ray")
    marker = tmp_path / "crashed"
    attempts = tmp_path / "attempts"

    def crash_once(cfg_json, threads):
        # The first attempt of the fa/seed-0 cell kills its worker process outright (as a
        # machine loss would); Ray must run the task again.
        from bioplausible.experiments.sweep import _ray_task

        with open(attempts, "a") as f:
            f.write(f"{cfg_json['rule']}-{cfg_json['seed']}\n")
        if cfg_json["rule"] == "fa" and cfg_json["seed"] == 0 and not marker.exists():
            marker.write_text("x")
            os._exit(1)
        return _ray_task(cfg_json, threads)

    store = Store(tmp_path / "s.sqlite")
    cells, _ = S.expand(parse(TINY), device="cpu")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        events = []
        rows = S.run_ray(cells, store, address="local", on_event=events.append, max_retries=2, task=crash_once,
                           check_nodes=True)  # the node check runs on a real (local) cluster too
    finally:
        ray.shutdown()
    assert marker.exists()  # the worker did die
    tries = attempts.read_text().split()
    assert tries.count("fa-0") == 2 and tries.count("bp-0") == 1  # ... and its task was retried
    assert len(rows) == 4 and all(r["status"] == "done" for r in rows)
    runs = store.runs()
    assert sorted(r["id"] for r in runs) == sorted(c.id for c in cells)
    # the driver wrote the checkpoints it was sent
    for r in runs:
        # stored relative to the store's folder, so the store and its checkpoints move together
        assert (tmp_path / r["checkpoint"]).exists() and r["checkpoint"] == f"checkpoints/{r['id']}.pt"
    # same numbers as a local run of the same cell
    local = Store(tmp_path / "local" / "s.sqlite")
    S.run_sequential(cells[:1], local, threads=1)
    assert local.runs()[0]["metrics"] == store.runs(id=cells[0].id)[0]["metrics"]


# -- the command line ----------------------------------------------------------------------------
def test_compare_cli_errors_and_dry_run(tmp_path):
    from typer.testing import CliRunner

    from bioplausible.cli import app

    runner = CliRunner()
    r = runner.invoke(app, ["compare"])
    assert r.exit_code == 2 and "--config" in r.output and "--preset" in r.output
    r = runner.invoke(app, ["compare", "--preset", "nope"])
    assert r.exit_code == 2 and "unknown preset 'nope'" in r.output
    bad = tmp_path / "bad.toml"
    bad.write_text("[grid]\nrules = ['bp']\n[defaults]\nbatch_size = 'big'\n")
    r = runner.invoke(app, ["compare", "--config", str(bad)])
    assert r.exit_code == 2 and "bad.toml" in r.output and "defaults.batch_size" in r.output
    good = tmp_path / "good.toml"
    good.write_text(TINY)
    store = tmp_path / "s.sqlite"
    r = runner.invoke(app, ["compare", "--config", str(good), "--store", str(store), "--dry-run", "--seeds", "1"])
    assert r.exit_code == 0, r.output
    assert r.output.count("would run") == 2 and "bp/mlp/digits/s1" in r.output and "s0" not in r.output
    assert Store(store).runs() == []
    r = runner.invoke(app, ["compare", "--preset", "quick", "--store", str(store), "--dry-run"])
    assert r.exit_code == 0 and "would run bp/mlp/digits/s0" in r.output
