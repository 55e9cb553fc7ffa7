"""Fault injection through the real command line (issue 32): every bad input, bad file and
broken store gets exit code 2, one line on stderr that names the file or option, no
traceback, and leaves the store's rows as they were. Plus the run-identity bars: the same
settings on other data files are another run; the same files in another folder are not."""

from __future__ import annotations

import pickle
import shutil
import sqlite3
import struct
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from bioplausible.cli import app

runner = CliRunner()


# -- helpers ---------------------------------------------------------------------------------
def one_line_error(args, needle: str, code: int = 2, env: dict | None = None) -> str:
    """Run the CLI; assert the fault contract; return stderr."""
    r = runner.invoke(app, [str(a) for a in args], env=env)
    err = r.stderr.strip()
    assert r.exit_code == code, f"exit {r.exit_code}: {r.output!r} {r.exception!r}"
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert "Traceback" not in r.output
    assert len(err.splitlines()) == 1, err
    assert needle in err, err
    return err


def rows(store: Path) -> list[tuple]:
    """Everything a run row and its epochs hold, in order (the store opened read-only)."""
    con = sqlite3.connect(f"{store.resolve().as_uri()}?mode=ro", uri=True)
    try:
        return (con.execute("SELECT * FROM runs ORDER BY id").fetchall()
                + con.execute("SELECT * FROM epochs ORDER BY run_id, epoch").fetchall())
    finally:
        con.close()


def write_idx(path: Path, arr: np.ndarray) -> None:
    arr = np.asarray(arr, np.uint8)
    path.write_bytes(struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
                     + arr.tobytes())


def idx_folder(folder: Path, n_train: int = 40, n_test: int = 20, side: int = 6, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("t10k", n_test)):
        write_idx(folder / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, side, side)))
        write_idx(folder / f"{split}-labels-idx1-ubyte", rng.integers(0, 10, n))
    return folder


RUN = ["run", "--rule", "bp", "--epochs", "1", "--widths", "8", "--batch-size", "32"]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """A store holding one finished run, made through the CLI."""
    path = tmp_path_factory.mktemp("faults") / "results" / "store.sqlite"
    r = runner.invoke(app, RUN + ["--store", str(path)])
    assert r.exit_code == 0, r.output
    return path


@pytest.fixture
def unchanged(store):
    """Asserts after the test that the shared store's rows are exactly as before."""
    before = rows(store)
    yield store
    assert rows(store) == before


# -- rich markup in user text: printed as text, never parsed --------------------------------
@pytest.mark.parametrize("args, needle", [
    (["run", "--rule", "x[/]y"], "x[/]y"),
    (["run", "--rule", "bp", "--opt", "a[/]=1"], "a[/]"),
    (["run", "--rule", "bp", "--opt", "[bold]"], "[bold]"),
    (["run", "--rule", "bp", "--widths", "1[/]"], "--widths"),
    (["run", "--rule", "bp", "--device", "cpu[/]"], "cpu[/]"),
    (["run", "--rule", "bp", "--data", "cifar10", "--data-dir", "nowhere[/]"], "nowhere[/]"),
    (["results", "--format", "x[/]"], "x[/]"),
    (["results", "--store", "gone[/].sqlite"], "gone[/].sqlite"),
])
def test_markup_in_user_text_is_escaped(args, needle, unchanged, tmp_path):
    if "--store" not in args:
        args = args + ["--store", str(unchanged)]
    one_line_error(args, needle)


def test_markup_in_data_folder_env(unchanged, tmp_path):
    home = tmp_path / "d[/]ata"
    one_line_error(RUN + ["--data", "mnist", "--store", unchanged], "d[/]ata", env={"BIOPLAUSIBLE_DATA": str(home)})


# -- stores that are not stores, and stores that cannot be written ---------------------------
def _foreign(path: Path) -> Path:
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE things (a INTEGER)")
    con.execute("INSERT INTO things VALUES (1)")
    con.commit()
    con.close()
    return path


def _random_bytes(path: Path) -> Path:
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 8192, dtype=np.uint8).tobytes())
    return path


def _truncated(path: Path, store: Path) -> Path:
    path.write_bytes(store.read_bytes()[:2048])  # the header page and a part of the next
    return path


@pytest.mark.parametrize("make", ["foreign", "random", "truncated", "empty"])
@pytest.mark.parametrize("cmd", ["results", "report", "run", "compare"])
def test_not_a_store_is_refused_and_left_alone(make, cmd, store, tmp_path):
    if cmd in ("run", "compare") and make == "empty":
        pytest.skip("an empty file is a new store for a writing command")
    bad = tmp_path / "bad.sqlite"
    {"foreign": _foreign, "random": _random_bytes, "empty": lambda p: p.touch()}.get(
        make, lambda p: _truncated(p, store))(bad)
    before = bad.read_bytes()
    args = {"results": ["results"], "report": ["report", "--out", tmp_path / "rep"], "run": RUN,
            "compare": ["compare", "--preset", "quick", "--rules", "bp", "--no-criteria", "--no-brain",
                        "--no-report"]}[cmd]
    one_line_error(args + ["--store", bad], str(bad))
    assert bad.read_bytes() == before  # nothing written: no column, no table, no WAL switch
    assert not Path(str(bad) + "-wal").exists()


def test_store_is_a_folder(unchanged, tmp_path):
    one_line_error(RUN + ["--store", tmp_path], "is a folder")


def test_store_under_a_file(unchanged, tmp_path):
    f = tmp_path / "plain.txt"
    f.write_text("x")
    one_line_error(RUN + ["--store", f / "store.sqlite"], str(f))


def test_read_only_store_refused_before_training(store, tmp_path):
    import os

    if os.geteuid() == 0:
        pytest.skip("root writes to read-only files")
    ro = tmp_path / "ro.sqlite"
    shutil.copy(store, ro)
    ro.chmod(0o444)
    t0 = time.perf_counter()
    one_line_error(RUN + ["--store", ro, "--seed", "9"], "not writable")
    assert time.perf_counter() - t0 < 5


def test_reading_commands_do_not_write(store, tmp_path):
    copy = tmp_path / "copy.sqlite"
    shutil.copy(store, copy)
    before = copy.read_bytes()
    assert runner.invoke(app, ["results", "--store", str(copy), "--format", "csv"]).exit_code == 0
    assert runner.invoke(app, ["report", "--store", str(copy), "--out", str(tmp_path / "r")]).exit_code == 0
    assert copy.read_bytes() == before


def test_report_out_is_a_file(unchanged, tmp_path):
    f = tmp_path / "report.html"
    f.write_text("mine")
    one_line_error(["report", "--store", unchanged, "--out", f], str(f))
    assert f.read_text() == "mine"


def test_results_unknown_run_id(unchanged):
    one_line_error(["results", "--store", unchanged, "--runs", "deadbeef"], "deadbeef")


def test_brain_bad_input_is_one_line(unchanged, tmp_path):
    one_line_error(["brain", "--store", tmp_path / "none.sqlite"], "none.sqlite")
    one_line_error(["brain", "--store", unchanged, "--runs", "deadbeef"], "deadbeef")


# -- settings: refused before anything is recorded, naming the option ------------------------
@pytest.mark.parametrize("extra, needle", [
    (["--opt", "nonsense=1"], "nonsense"),
    (["--opt", "novalue"], "--opt"),
    (["--rule", "local", "--opt", "beta=5"], "beta"),
    (["--rule", "local", "--opt", "loss=\"nosuch\""], "loss"),
    (["--act", "nosuch"], "--act"),
    (["--lr", "nan"], "--lr"),
    (["--lr", "inf"], "--lr"),
    (["--seed", str(2**40)], "--seed"),
    (["--widths", "a,b"], "--widths"),
    (["--epochs", "0"], "--epochs"),
    (["--batch-size", "0"], "--batch-size"),
    (["--model", "rnn"], "rnn"),
])
def test_bad_settings_name_the_option_and_record_nothing(extra, needle, unchanged):
    err = one_line_error(RUN + extra + ["--store", unchanged], needle)
    assert "validation error for" not in err  # pydantic's header is not a message


def test_nan_lr_is_not_called_too_large(unchanged):
    err = one_line_error(RUN + ["--lr", "nan", "--store", unchanged], "--lr")
    assert "finite" in err and "<= 10" not in err


def _sweep(tmp_path: Path, text: bytes) -> Path:
    p = tmp_path / "s[b]weep.toml"
    p.write_bytes(text)
    return p


@pytest.mark.parametrize("text, needle", [
    (b"[grid]\nrules = ['bp']\nseeds = 100000000000\n", "grid.seeds"),
    (b"[grid]\nrules = ['bp']\n# caf\xe9 in latin-1\n", "not UTF-8"),
    (b"[grid]\nrules = ['bp']\n[defaults]\nact = 'nosuch'\n", "defaults.act"),
    (b"[grid]\nrules = ['bp']\n[defaults]\nlr = nan\n", "defaults.lr"),
])
def test_bad_sweep_file_names_file_and_key(text, needle, unchanged, tmp_path):
    p = _sweep(tmp_path, text)
    t0 = time.perf_counter()
    err = one_line_error(["compare", "--config", p, "--store", unchanged, "--dry-run"], needle)
    assert str(p) in err
    assert time.perf_counter() - t0 < 10  # refused, not expanded into 10^11 cells


# -- data: empty, malformed, changed --------------------------------------------------------
@pytest.mark.parametrize("n_train, n_test, side, needle", [
    (0, 20, 6, "holds no images"),
    (40, 0, 6, "holds no images"),
    (40, 20, 0, "holds no images"),
])
def test_empty_data_is_refused(n_train, n_test, side, needle, unchanged, tmp_path):
    d = idx_folder(tmp_path / "d", n_train, n_test, side)
    one_line_error(RUN + ["--data", "mnist", "--data-dir", d, "--store", unchanged], needle)


def test_data_dir_is_a_file(unchanged, tmp_path):
    f = tmp_path / "f"
    f.write_text("x")
    one_line_error(RUN + ["--data", "mnist", "--data-dir", f, "--store", unchanged], "not a folder")


def _cifar(folder: Path, labels, n: int = 4) -> Path:
    d = folder / "cifar-10-batches-py"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": labels}
        (d / name).write_bytes(pickle.dumps(batch, protocol=2))
    return folder


def test_cifar_float_labels_are_refused(unchanged, tmp_path):
    d = _cifar(tmp_path / "c", [1.7, 2.0, 3.0, 4.0])
    one_line_error(RUN + ["--data", "cifar10", "--data-dir", d, "--store", unchanged], "non-integer label")


def test_cifar_numpy_scalar_labels_are_accepted(tmp_path):
    from bioplausible.data import load

    d = _cifar(tmp_path / "c", [np.int64(i) for i in (1, 2, 3, 4)])
    ds = load("cifar10", d, val_fraction=0.0)
    assert ds.y_test.tolist() == [1, 2, 3, 4] and ds.input_shape == (3, 32, 32)


def test_svhn_wrong_keys_are_listed(unchanged, tmp_path):
    import scipy.io

    d = tmp_path / "svhn"
    d.mkdir()
    for s in ("train", "test"):
        scipy.io.savemat(d / f"{s}_32x32.mat", {"images": np.zeros((2, 2)), "labels": np.zeros(2)})
    one_line_error(RUN + ["--data", "svhn", "--data-dir", d, "--store", unchanged], "['images', 'labels']")


def test_svhn_empty_test_file_is_refused(unchanged, tmp_path):
    import scipy.io

    d = tmp_path / "svhn"
    d.mkdir()
    scipy.io.savemat(d / "train_32x32.mat", {"X": np.zeros((32, 32, 3, 4), np.uint8), "y": np.ones((4, 1))})
    scipy.io.savemat(d / "test_32x32.mat", {"X": np.zeros((32, 32, 3, 0), np.uint8), "y": np.ones((0, 1))})
    one_line_error(RUN + ["--data", "svhn", "--data-dir", d, "--store", unchanged], "no images")


def _fetched_cache(root: Path) -> Path:
    """A cache folder as `data fetch` leaves it: files plus a MANIFEST.json of their sums."""
    import hashlib
    import json

    d = idx_folder(root / "mnist")
    files = {p.name: {"sha256": hashlib.sha256(p.read_bytes()).hexdigest(), "bytes": p.stat().st_size}
             for p in d.iterdir()}
    (d / "MANIFEST.json").write_text(json.dumps({"format": 1, "name": "mnist", "files": files}))
    return d


def _flip_a_byte(p: Path) -> None:
    b = bytearray(p.read_bytes())
    b[-1] ^= 0xFF
    p.write_bytes(b)


def test_flipped_byte_in_a_fetched_file_is_caught(unchanged, tmp_path):
    d = _fetched_cache(tmp_path / "cache")
    _flip_a_byte(d / "train-images-idx3-ubyte")
    one_line_error(RUN + ["--data", "mnist", "--data-dir", d, "--store", unchanged], "train-images-idx3-ubyte")


def test_data_verify(tmp_path):
    root = tmp_path / "cache"
    d = _fetched_cache(root)
    r = runner.invoke(app, ["data", "verify", "mnist", "--dest", str(root)])
    assert r.exit_code == 0 and "matches" in r.output, r.output
    _flip_a_byte(d / "t10k-images-idx3-ubyte")
    one_line_error(["data", "verify", "mnist", "--dest", root], "t10k-images-idx3-ubyte", code=1)
    one_line_error(["data", "verify", "nosuch", "--dest", root], "nosuch")


def test_data_list_says_not_verified(tmp_path):
    from bioplausible.data.fetch import verified

    d = _fetched_cache(tmp_path / "cache")
    assert verified(d) is None  # never hashed in this process
    runner.invoke(app, ["data", "verify", "mnist", "--dest", str(tmp_path / "cache")])
    assert verified(d) is True
    time.sleep(0.01)
    _flip_a_byte(d / "train-labels-idx1-ubyte")
    assert verified(d) is None  # changed since: no longer counts as verified


# -- run identity: the data's content, not its folder ---------------------------------------
def _run_id(args) -> tuple[str, str]:
    r = runner.invoke(app, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    return r.output, r.output.split("run id ")[-1].split()[0] if "run id " in r.output else ""


def test_run_identity_follows_the_data(tmp_path):
    store = tmp_path / "s.sqlite"
    a = idx_folder(tmp_path / "a", seed=1)
    b = idx_folder(tmp_path / "b", seed=2)  # other files, same settings
    a2 = tmp_path / "a2"
    shutil.copytree(a, a2)  # the same files in another folder
    base = RUN + ["--data", "mnist", "--store", store]
    out_a, id_a = _run_id(base + ["--data-dir", a])
    out_b, id_b = _run_id(base + ["--data-dir", b])
    assert id_a and id_b and id_a != id_b, (out_a, out_b)
    out_a2, _ = _run_id(base + ["--data-dir", a2])
    assert "already recorded" in out_a2 and id_a in out_a2
    assert len(rows(store)) == 4  # two runs, one epoch each


# -- --force: the old row stays until the new run finishes ----------------------------------
def test_failed_force_rerun_keeps_the_finished_row(unchanged, monkeypatch):
    import bioplausible.experiments.runner as runner_mod

    def boom(*a, **k):
        raise RuntimeError("out of luck")

    monkeypatch.setattr(runner_mod, "build_learner", boom)
    r = runner.invoke(app, RUN + ["--store", str(unchanged), "--force"])
    assert r.exit_code == 2 and "earlier finished run is kept" in r.output, r.output


# -- checkpoints: found next to the store, checked against the run --------------------------
def _ckpt(store: Path) -> tuple[str, Path]:
    run_id = rows(store)[0][0]
    return run_id, store.parent / "checkpoints" / f"{run_id}.pt"


def test_checkpoint_resolves_against_the_store(store, tmp_path, monkeypatch):
    from bioplausible.experiments.runner import load_learner
    from bioplausible.experiments.store import Store

    moved = tmp_path / "elsewhere" / "results"
    shutil.copytree(store.parent, moved)
    monkeypatch.chdir(tmp_path)  # neither the store's folder nor where it was made
    run_id, _ = _ckpt(store)
    learner, meta = load_learner(Store(moved / store.name, readonly=True), run_id)
    assert meta["id"] == run_id


@pytest.mark.parametrize("damage, needle", [
    ("other", "not the checkpoint recorded"),
    ("truncated", "cannot load"),
    ("not_torch", "cannot load"),
    ("pickle", "cannot load"),
    ("shape", "cannot load"),
])
def test_bad_checkpoint_is_one_clear_error(damage, needle, store, tmp_path):
    import torch

    from bioplausible.experiments.runner import CheckpointError, load_learner
    from bioplausible.experiments.store import Store

    copy = tmp_path / "results"
    shutil.copytree(store.parent, copy)
    st = Store(copy / store.name)
    run_id, _ = _ckpt(store)
    ck = copy / "checkpoints" / f"{run_id}.pt"
    if damage != "other":  # an old row without a digest: the loader itself must refuse
        with st.transaction() as con:
            con.execute("UPDATE runs SET checkpoint_sha256 = NULL")
    if damage == "other":
        ck.write_bytes(ck.read_bytes() + b"\0")
    elif damage == "truncated":
        ck.write_bytes(ck.read_bytes()[:500])
    elif damage == "not_torch":
        ck.write_text("hello")
    elif damage == "pickle":
        class Evil:
            def __reduce__(self):
                return (print, ("pwned",))
        torch.save({"x": Evil()}, ck)
    else:
        c = torch.load(ck, weights_only=True)
        c["input_shape"] = [1, 12, 12]  # weights of an 8x8 net under a 12x12 input
        torch.save(c, ck)
    with pytest.raises(CheckpointError) as e:
        load_learner(st, run_id)
    msg = str(e.value)
    assert needle in msg and str(ck) in msg and len(msg.splitlines()) == 1, msg


# -- Ray: bad addresses answer in seconds ---------------------------------------------------
@pytest.mark.parametrize("address, needle", [
    ("nonsense", "--ray nonsense"),
    ("127.0.0.1:1", "cannot reach"),
    ("ray://127.0.0.1:99999", "not a Ray address"),
])
def test_bad_ray_address(address, needle, unchanged):
    t0 = time.perf_counter()
    one_line_error(["compare", "--preset", "quick", "--rules", "bp", "--store", unchanged, "--ray", address,
                    "--no-criteria", "--no-brain", "--no-report"], needle)
    assert time.perf_counter() - t0 < 15


def test_ray_node_problems_name_node_and_difference():
    from bioplausible.experiments.sweep import node_problems

    driver = {"node": "head", "version": "1.0", "code": {"bp": "a", "fa": "b"}, "data": {"mnist:": "d1"}}
    same = dict(driver, node="w1")
    assert node_problems(driver, same) == []
    other = {"node": "w2", "version": "0.9", "code": {"bp": "a", "fa": "x"},
             "data": {"mnist:": "error: dataset 'mnist' not found in /x"}}
    p = node_problems(driver, other)
    assert any("w2" in s and "0.9" in s for s in p) and any("fa" in s for s in p)
    assert any("not found" in s for s in p)


def test_cluster_lost_mid_grid_says_how_many_were_recorded(tmp_path, monkeypatch):
    import bioplausible.experiments.sweep as sw

    calls = []

    def lost_after_one(cells, store, **kw):
        sw.run_sequential(cells[:1], store, threads=1)
        calls.append(len(cells))
        raise sw.ClusterLost("the head at 10.0.0.1:6379 has not answered for 15 s")

    monkeypatch.setattr(sw, "run_ray", lost_after_one)
    monkeypatch.setattr(sw, "connect_ray", lambda *a, **k: None)
    p = _sweep(tmp_path, b"[grid]\nrules = ['bp', 'fa']\nseeds = 2\n[defaults]\nepochs = 1\nwidths = [8]\n")
    store = tmp_path / "s.sqlite"
    one_line_error(["compare", "--config", p, "--store", store, "--ray", "auto", "--no-criteria", "--no-brain",
                    "--no-report"], "1 of 4 runs recorded; run the same command again to resume", code=1)
    assert calls == [4] and len(rows(store)) == 2  # one run and its one epoch


def test_head_probe():
    from bioplausible.experiments.sweep import _head_address, _reachable

    assert _head_address(None, "ray://127.0.0.1:1") == ("127.0.0.1", 1)
    assert _head_address(None, "local") is None
    assert not _reachable("127.0.0.1", 1)


def test_responses_with_no_channels_name_the_file(tmp_path):
    from bioplausible.brain.recordings import read_responses_file
    from bioplausible.data import DataError

    p = tmp_path / "hIT.npy"
    np.save(p, np.zeros((10, 0)))
    with pytest.raises(DataError, match="hIT.npy: responses have no channels"):
        read_responses_file(p)


def test_sweep_cannot_set_the_data_digest(unchanged, tmp_path):
    p = _sweep(tmp_path, b"[grid]\nrules = ['bp']\n[defaults]\ndata_digest = 'abc'\n")
    one_line_error(["compare", "--config", p, "--store", unchanged, "--dry-run"], "defaults.data_digest")


@pytest.mark.skipif(not Path("/proc/sys").is_dir() or __import__("os").access("/proc/sys", 2),
                    reason="needs a folder this user cannot write")
def test_store_in_a_read_only_folder_is_refused_before_training(tmp_path):
    t0 = time.perf_counter()
    one_line_error(RUN + ["--store", "/proc/sys/store.sqlite"], "not writable")
    assert time.perf_counter() - t0 < 5


def test_data_list_shows_unverified_sets(tmp_path):
    import gzip

    root = tmp_path / "cache"
    d = _fetched_cache(root).rename(root / "fashion-mnist")  # no per-file pins: any files do
    for p in list(d.glob("*-ubyte")):
        (d / (p.name + ".gz")).write_bytes(gzip.compress(p.read_bytes()))
        p.unlink()
    import hashlib
    import json

    m = json.loads((d / "MANIFEST.json").read_text())
    m["files"] = {p.name: {"sha256": hashlib.sha256(p.read_bytes()).hexdigest(), "bytes": p.stat().st_size}
                  for p in d.glob("*.gz")}
    (d / "MANIFEST.json").write_text(json.dumps(m))
    r = runner.invoke(app, ["data", "list", "--dest", str(root)])
    assert r.exit_code == 0 and "not verified" in r.output, r.output
    runner.invoke(app, ["data", "verify", "fashion-mnist", "--dest", str(root)])
    r = runner.invoke(app, ["data", "list", "--dest", str(root)])
    assert "not verified" not in r.output, r.output


def test_old_store_gains_the_new_columns_and_keeps_its_rows(store, tmp_path):
    from bioplausible.experiments.store import Store

    old = tmp_path / "old.sqlite"
    shutil.copy(store, old)
    con = sqlite3.connect(old)
    con.execute("ALTER TABLE runs DROP COLUMN checkpoint_sha256")
    con.commit()
    con.close()
    before = rows(old)
    Store(old)
    Store(old)  # a second writer opening it finds the column there
    after = rows(old)
    assert [r[:-1] for r in after[:1]] == before[:1] and after[1:] == before[1:]
