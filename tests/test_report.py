"""The report reads the store alone and writes the accuracy table (mean ± sd over seeds,
best per column marked) in Markdown, LaTeX and CSV, the criteria matrix, plots as PNG and
SVG, and one self-contained HTML page that a real browser renders completely."""

from __future__ import annotations

import csv
import io
import re
import shutil
import subprocess

import pytest

from bioplausible.experiments.store import Store
from bioplausible.report import build, plausibility_scores

# test accuracies per (rule, data, model): seeds 0, 1, 2 ...
ACC = {
    ("bp", "digits", "mlp"): [0.90, 0.92, 0.94],  # 92.00 ± 2.00, best in its column
    ("fa", "digits", "mlp"): [0.80, 0.82],        # 81.00 ± 1.41
    ("bp", "digits", "cnn"): [0.95, 0.97],        # 96.00 ± 1.41
    ("fa", "digits", "cnn"): [0.97, 0.99],        # 98.00 ± 1.41, best (fa beats bp here)
    ("dfa", "digits", "mlp"): [0.50],             # one seed: no sd
}


def _row(rule, data, model, seed, acc, status="done", epochs=3, lr=1e-3):
    rid = f"{rule}-{data}-{model}-{seed}-{lr}"
    cfg = {"rule": rule, "model": model, "data": data, "seed": seed, "epochs": epochs, "lr": lr,
           "device": "cpu", "widths": [32] if model == "mlp" else None}
    row = {
        "id": rid, "rule": rule, "model": model, "data": data, "seed": seed, "config": cfg,
        "status": status, "reason": None if status == "done" else "non-finite loss at epoch 2",
        "metrics": {"test_acc": acc, "val_acc": acc, "best_val_test_acc": acc} if status == "done" else {},
        "versions": {"bioplausible": "0.1.0"}, "git_commit": "abc", "device": "cpu",
        "started": "2026-01-01T00:00:00+00:00", "finished": f"2026-01-01T00:00:{seed:02d}+00:00",
        "wall_time": 1.0, "train_time": 0.9, "samples_per_s": 1000.0 * (1 + len(rule)),
        "epoch_time": 0.3 * len(rule), "checkpoint": None,
    }
    eps = [] if status != "done" else [
        {"epoch": e, "train_loss": 1.0 / e, "train_acc": acc * e / epochs, "val_acc": acc * e / epochs,
         "test_acc": acc * e / epochs, "epoch_time": 0.3, "extra": {}} for e in range(1, epochs + 1)]
    return row, eps


@pytest.fixture()
def store(tmp_path):
    st = Store(tmp_path / "store.sqlite")
    for (rule, data, model), accs in ACC.items():
        for seed, a in enumerate(accs):
            st.record(*_row(rule, data, model, seed, a))
    st.record(*_row("dfa", "digits", "mlp", 1, None, status="diverged"))
    # the same cell with other settings (another sweep): must not be mixed into the mean
    st.record(*_row("bp", "digits", "mlp", 0, 0.10, lr=0.5))
    st.record_criteria([
        {"rule": "bp", "c1_no_weight_transport": "no", "c2_local_error": "no", "c3_single_phase": "no"},
        {"rule": "fa", "c1_no_weight_transport": "yes", "c2_local_error": "no", "c3_single_phase": "no"},
        {"rule": "dfa", "c1_no_weight_transport": "yes", "c2_local_error": "partial", "c3_single_phase": "no"},
    ], "0.1.0", "2026-01-01T00:00:00+00:00")
    return st


def test_accuracy_table_mean_sd_and_best(store, tmp_path):
    out = tmp_path / "rep"
    paths = build(store, out)
    md = (out / "accuracy.md").read_text()
    lines = {ln.split("|")[1].strip(): [c.strip() for c in ln.strip().strip("|").split("|")[1:]]
             for ln in md.splitlines()[2:]}
    assert md.splitlines()[0] == "| rule | Digits MLP | Digits CNN |"
    assert list(lines) == ["bp", "dfa", "fa"]  # bp first, the others alphabetically
    # bold: the best mean and every mean a Welch t test over seeds cannot tell from it (bp's
    # 96 +- 1.41 against fa's 98 +- 1.41, two seeds each: p = 0.29), not fa's 81 against bp's 92
    assert lines["bp"] == ["**92.00 ± 2.00 (n=3, 3 ep)**", "**96.00 ± 1.41 (n=2, 3 ep)**"]
    assert lines["fa"] == ["81.00 ± 1.41 (n=2, 3 ep)", "**98.00 ± 1.41 (n=2, 3 ep)**"]
    assert lines["dfa"][0] == "50.00 (1/2 div./failed) (n=1, 3 ep)" and lines["dfa"][1] == "–"
    tex = (out / "accuracy.tex").read_text()
    assert r"\textbf{92.00 $\pm$ 2.00}" in tex and r"\textbf{98.00 $\pm$ 1.41}" in tex
    assert r"\textbf{96.00 $\pm$ 1.41} \\" in tex and r"\multicolumn{2}{c}{Digits}" in tex
    rows = list(csv.DictReader(io.StringIO((out / "accuracy.csv").read_text())))
    bp_mlp = next(r for r in rows if (r["rule"], r["model"]) == ("bp", "mlp"))
    assert bp_mlp["n_seeds"] == "3" and abs(float(bp_mlp["mean"]) - 0.92) < 1e-12
    assert abs(float(bp_mlp["sd"]) - 0.02) < 1e-12 and bp_mlp["best"] == "1"
    dfa = next(r for r in rows if r["rule"] == "dfa")
    assert dfa["n_seeds"] == "1" and dfa["sd"] == "" and dfa["n_diverged"] == "1"
    # the other-settings variant of bp was left out, and the page says so
    page = (out / "index.html").read_text()
    assert "2 different settings" in page
    # the rows were written without a code fingerprint: stale, and the page says so
    assert "11 of the 11 runs in this table were recorded by other code" in page
    for name in ("accuracy.md", "accuracy.tex", "accuracy.csv", "criteria.md", "criteria.csv", "runs.md", "html"):
        assert paths[name].exists(), name


def test_runs_on_a_training_subset_get_their_own_column(tmp_path):
    """Full Fashion-MNIST and its 4,500-image subset are two experiments: two columns and two
    means, never one mixed cell."""
    st = Store(tmp_path / "s.sqlite")
    for seed, (full, sub) in enumerate([(0.90, 0.80), (0.91, 0.82)]):
        st.record(*_row("bp", "fashion-mnist", "mlp", seed, full))
        row, eps = _row("bp", "fashion-mnist", "mlp", seed, sub)
        row["id"] += "-sub"
        row["config"]["train_subset"] = 4500
        st.record(row, eps)
    build(st, tmp_path / "rep")
    md = (tmp_path / "rep" / "accuracy.md").read_text().splitlines()
    assert md[0].startswith("| rule | Fashion-MNIST MLP |")
    assert "Fashion-MNIST (4,500 train) MLP" in md[0]
    cells = [c.strip() for c in md[2].strip().strip("|").split("|")]
    assert "90.50 ± 0.71 (n=2, 3 ep)" in cells[1] and "81.00 ± 1.41 (n=2, 3 ep)" in cells[-1]
    assert "different settings" not in (tmp_path / "rep" / "index.html").read_text()


def test_stale_runs_are_those_made_by_other_code(tmp_path):
    from bioplausible.experiments.fingerprint import code_fingerprint
    from bioplausible.report import stale_runs

    st = Store(tmp_path / "s.sqlite")
    for rule, code in (("bp", code_fingerprint("bp")), ("fa", "0" * 16), ("dfa", None)):
        row, eps = _row(rule, "digits", "mlp", 0, 0.9)
        row["code"] = code
        st.record(row, eps)
    assert [r["rule"] for r in stale_runs(st.runs())] == ["dfa", "fa"]
    out = tmp_path / "rep"
    build(st, out)
    assert "2 of the 3 runs in this table were recorded by other code" in (out / "index.html").read_text()


def test_plots_and_self_contained_html(store, tmp_path):
    out = tmp_path / "rep"
    build(store, out)
    for name in ("learning_curves", "accuracy_vs_plausibility", "time_vs_accuracy"):
        assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert b"<svg" in (out / f"{name}.svg").read_bytes()[:2000], name
    page = (out / "index.html").read_text()
    assert len(re.findall(r'<img class="plot"[^>]*src="data:image/png;base64,', page)) == 3
    assert not re.search(r'(src|href)="(?!data:|#)', page)  # nothing loaded from elsewhere
    assert page.count("<table") >= 4  # meta, accuracy, criteria, runs (+ failed runs)
    assert "non-finite loss at epoch 2" in page  # the diverged run is listed with its reason
    assert not list(out.glob(".*.tmp*"))  # atomic writes leave no temp files


def test_plausibility_score_from_stored_criteria(store):
    rows, meta = store.criteria()
    assert meta["version"] == "0.1.0"
    s = plausibility_scores(rows)
    assert s == {"bp": 0.0, "fa": pytest.approx(1 / 3), "dfa": pytest.approx(1.5 / 3)}


def test_report_cli(store, tmp_path):
    from typer.testing import CliRunner

    from bioplausible.cli import app

    out = tmp_path / "cli"
    r = CliRunner().invoke(app, ["report", "--store", str(store.path), "--out", str(out), "--runs", "rule=fa"])
    assert r.exit_code == 0, r.output
    md = (out / "accuracy.md").read_text()
    assert "fa" in md and "| bp" not in md
    r = CliRunner().invoke(app, ["report", "--store", str(tmp_path / "none.sqlite"), "--out", str(out)])
    assert r.exit_code == 2 and "no results store" in r.output


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


@pytest.mark.browser
@pytest.mark.skipif(_chromium() is None, reason="no Chromium installed (apt-get install -y chromium)")
def test_html_renders_in_headless_chromium(store, tmp_path):
    out = tmp_path / "rep"
    build(store, out)
    profile = tmp_path / "profile"
    profile.mkdir()
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", "--virtual-time-budget=10000", "--dump-dom",
           (out / "index.html").as_uri()]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    dom = p.stdout
    assert "<table" in dom, p.stderr[-2000:]
    # every table the files hold is in the rendered page
    assert dom.count('<table class="accuracy">') == 1 and dom.count('<table class="criteria">') == 1
    assert dom.count('<table class="runs">') == 1
    assert "<strong>92.00 ± 2.00</strong>" in dom and "<strong>98.00 ± 1.41</strong>" in dom
    # every figure decoded (the page's own check, run by the browser after load)
    m = re.search(r'id="render-check"[^>]*data-ok="(\d+)" data-total="(\d+)"', dom) or \
        re.search(r'id="render-check"[^>]*>(\d+) of (\d+) figures rendered', dom)
    assert m, dom[:3000]
    assert m.group(1) == m.group(2) == "3"
    shot = tmp_path / "page.png"
    cmd[cmd.index("--dump-dom")] = f"--screenshot={shot}"
    subprocess.run(cmd + ["--window-size=1200,2000"], capture_output=True, timeout=120)
    assert shot.exists() and shot.stat().st_size > 10_000
