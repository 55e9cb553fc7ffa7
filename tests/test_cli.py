"""The command line, through typer's test runner."""

import csv
import io

from typer.testing import CliRunner

from bioplausible.cli import app

runner = CliRunner()


def test_list_shows_rules_models_datasets():
    r = runner.invoke(app, ["list"])
    assert r.exit_code == 0, r.output
    for word in ("bp", "fa", "dfa", "signsym", "mlp", "cnn", "digits", "mnist5k", "cifar10"):
        assert word in r.output


def test_run_then_results(tmp_path):
    store = tmp_path / "store.sqlite"
    args = ["run", "--rule", "dfa", "--data", "digits", "--epochs", "4", "--widths", "64", "--store", str(store), "--seed", "1"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "test accuracy" in r.output
    r2 = runner.invoke(app, args)
    assert "already recorded" in r2.output
    r = runner.invoke(app, ["results", "--store", str(store), "--format", "csv"])
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(io.StringIO(r.output)))
    assert len(rows) == 1 and rows[0]["rule"] == "dfa" and rows[0]["status"] == "done"
    assert float(rows[0]["test_acc"]) > 0.5  # chance is 0.1
    r = runner.invoke(app, ["results", "--store", str(store), "--format", "markdown"])
    assert r.output.startswith("| id | rule |")


def test_bad_input_gives_one_clear_line(tmp_path):
    r = runner.invoke(app, ["run", "--rule", "nope", "--store", str(tmp_path / "s.sqlite")])
    assert r.exit_code == 2 and "unknown rule 'nope'" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["run", "--rule", "fa", "--epochs", "0", "--store", str(tmp_path / "s.sqlite")])
    assert r.exit_code == 2 and "--epochs" in r.output
    r = runner.invoke(app, ["run", "--rule", "fa", "--data", "cifar10", "--data-dir", str(tmp_path / "none"),
                            "--store", str(tmp_path / "s.sqlite")])
    assert r.exit_code == 2 and "not found" in r.output and str(tmp_path / "none") in r.output.replace("\n", "")
    r = runner.invoke(app, ["results", "--store", str(tmp_path / "missing.sqlite")])
    assert r.exit_code == 2 and "no results store" in r.output
    r = runner.invoke(app, ["run", "--rule", "fa", "--device", "tpu", "--store", str(tmp_path / "s.sqlite")])
    assert r.exit_code == 2 and "--device" in r.output


def test_list_options_prints_each_architectures_options():
    r = CliRunner().invoke(app, ["list", "--options", "rstdp"], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    # the dense and the conv rule have options models of their own, each with its defaults
    assert "options of rstdp on mlp (RSTDP)" in r.output and "options of rstdp on cnn (ConvRSTDP)" in r.output
    assert "n_neurons" in r.output and "adaptive_rates" in r.output and "'deadline'" in r.output
    assert "decision neurons per class" in r.output  # the field's description
    r = CliRunner().invoke(app, ["list", "--options", "nope"])
    assert r.exit_code != 0 and "unknown rule 'nope'" in r.output and "Traceback" not in r.output
