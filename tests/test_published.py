"""The runs behind the README's table: each run records the network that ran (also where the
rule chooses its own), published records survive an export -> import round trip, and the
report rebuilds the table (mean ± sd over seeds, n, epochs, the paper's figure and the
difference) from a published folder alone, and writes it into a README."""

from __future__ import annotations

import json

import pytest

from bioplausible.config import RunConfig
from bioplausible.experiments.published import PublishedError, export, load_into, read
from bioplausible.experiments.runner import execute, load_learner
from bioplausible.experiments.store import Store


@pytest.fixture(scope="module")
def digits():
    from bioplausible.data import load

    return load("digits")


def _run(store, digits, **kw):
    row = execute(RunConfig(data="digits", epochs=1, **kw), data=digits, checkpoint_dir=store.path.parent / "ck")
    assert row["status"] == "done", row["reason"]
    store.record(row, row.pop("_epochs"))
    return row


def _dense_shapes(learner):
    return [(l.kind, l.in_features, l.out_features) for l in learner.stack.layers]


@pytest.mark.parametrize("kw, widths", [
    # the config names no network: the rule's own (2000 units; 1600 neurons) ran, not the paper's MLP
    ({"rule": "hebbian", "rule_options": {"wide_width": 48}}, [48]),
    ({"rule": "hebbian", "widths": (24,)}, [24]),
    ({"rule": "stdp", "rule_options": {"n_neurons": 30}}, [30]),
    ({"rule": "stdp", "widths": (20, 10)}, [20]),
    ({"rule": "rstdp", "rule_options": {"n_neurons": 30}}, [30]),
    ({"rule": "bp", "widths": (16, 8)}, [16, 8]),
])
def test_recorded_network_is_the_one_that_ran(tmp_path, digits, kw, widths):
    store = Store(tmp_path / "s.sqlite")
    row = _run(store, digits, **kw)
    net = store.runs(id=row["id"])[0]["network"]
    assert net["widths"] == widths and net["channels"] == []
    learner, _ = load_learner(store, row["id"])  # the trained network, rebuilt from its checkpoint
    assert [(l["kind"], l["in"], l["out"]) for l in net["layers"]] == _dense_shapes(learner)
    assert net["summary"] == "-".join(map(str, [64, *widths, learner.stack.layers[-1].out_features]))


def test_recorded_conv_network(tmp_path, digits):
    store = Store(tmp_path / "s.sqlite")
    row = _run(store, digits, rule="hebbian", model="cnn", rule_options={"wide_channels": (6,)})
    net = store.runs(id=row["id"])[0]["network"]
    # the rule's own conv layer, and its readout on it (the dense projection dropped)
    assert net["channels"] == [6] and net["widths"] == [] and net["summary"] == "1x8x8 > c6 > 10"


def _fake_rows(seeds, accs, rule="bp", model="mlp", data="mnist", epochs=2):
    out = []
    for seed, acc in zip(seeds, accs):
        rid = f"{rule}{model}{data}{seed}"
        row = {"id": rid, "rule": rule, "model": model, "data": data, "seed": seed, "status": "done", "reason": None,
               "config": {"rule": rule, "model": model, "data": data, "seed": seed, "epochs": epochs, "lr": 1e-3},
               "metrics": {"test_acc": acc}, "versions": {"torch": "x"}, "git_commit": "c", "code": "f" * 16,
               "device": "cpu", "started": "2026-01-01T00:00:00+00:00", "finished": f"2026-01-01T00:00:0{seed}+00:00",
               "wall_time": 2.0, "train_time": 1.5, "samples_per_s": 100.0, "epoch_time": 0.75,
               "checkpoint": f"/somewhere/{rid}.pt",
               "network": {"arch": model, "widths": [8], "channels": [], "layers": [], "summary": "784-8-10"}}
        eps = [{"epoch": e, "train_loss": 1.0 / e, "train_acc": 0.5, "val_acc": acc, "test_acc": acc,
                "epoch_time": 0.75, "extra": {"k": float(e)}} for e in range(1, epochs + 1)]
        out.append((row, eps))
    return out


def test_export_then_import_round_trip(tmp_path):
    src = Store(tmp_path / "a.sqlite")
    for row, eps in _fake_rows([0, 1, 2], [0.9, 0.91, 0.95]):
        src.record(row, eps)
    failed, _ = _fake_rows([3], [0.1])[0]
    src.record({**failed, "status": "failed", "reason": "boom", "metrics": {}}, [])
    paths = export(src, src.runs(), tmp_path / "pub")
    assert len(paths) == 3  # the failed run is not published
    assert sorted(p.relative_to(tmp_path / "pub").as_posix() for p in paths)[0] == "mnist/bp-mlp-s0-bpmlpmnist0.json"
    rec = json.loads(paths[0].read_text())
    assert "checkpoint" not in rec and rec["network"]["summary"] == "784-8-10" and len(rec["epochs"]) == 2
    dst = Store(tmp_path / "b.sqlite")
    assert load_into(dst, tmp_path / "pub") == 3
    for a in src.runs(status="done"):
        b = dst.runs(id=a["id"])[0]
        assert {**a, "checkpoint": None} == b
        assert src.epochs(a["id"]) == dst.epochs(a["id"])
    (tmp_path / "pub" / "mnist" / "junk.json").write_text("[1, 2]")
    with pytest.raises(PublishedError, match="junk.json"):
        read(tmp_path / "pub")


def test_report_from_published_records_alone(tmp_path):
    from typer.testing import CliRunner

    from bioplausible.cli import app

    st = Store(tmp_path / "a.sqlite")
    for row, eps in _fake_rows([0, 1, 2], [0.97, 0.98, 0.99]) + _fake_rows([0, 1, 2], [0.5, 0.6, 0.7], rule="fa"):
        st.record(row, eps)
    export(st, st.runs(), tmp_path / "pub")
    readme = tmp_path / "README.md"
    from bioplausible.report import README_BEGIN, README_END

    readme.write_text(f"# x\n\n{README_BEGIN}\nold table\n{README_END}\n\nafter\n")
    (tmp_path / "a.sqlite").unlink()  # nothing but the published folder
    r = CliRunner().invoke(app, ["report", "--published", str(tmp_path / "pub"), "--out", str(tmp_path / "rep"),
                                 "--readme", str(readme)])
    assert r.exit_code == 0, r.output
    assert "| bp | **98.00 ± 1.00 (n=3, 2 ep)** | 98.62 | −0.62 |" in r.output  # the table is printed too
    md = (tmp_path / "rep" / "accuracy.md").read_text()
    assert md.splitlines()[0] == "| rule | MNIST MLP | paper | Δ |"
    # mean ± sample sd over the 3 seeds, n and epochs; the paper's bp 98.62 and fa 91.87 beside
    assert "| bp | **98.00 ± 1.00 (n=3, 2 ep)** | 98.62 | −0.62 |" in md
    assert "| fa | 60.00 ± 10.00 (n=3, 2 ep) | 91.87 | −31.87 |" in md
    text = readme.read_text()
    assert "old table" not in text and md in text and text.endswith(f"{README_END}\n\nafter\n")
    assert "784-8-10" in text  # the networks that ran
    r = CliRunner().invoke(app, ["report", "--published", str(tmp_path / "nothing"), "--out", str(tmp_path / "r2")])
    assert r.exit_code == 2 and "no published records folder" in r.output
