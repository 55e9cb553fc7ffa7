"""The Python API: lazy import, rules/datasets listings, a learner in one's own loop,
whole runs with and without a store, results as a DataFrame."""

import json
import subprocess
import sys

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import bioplausible

API = ["rules", "datasets", "learner", "train", "results"]


def test_import_is_lazy_and_all_lists_the_api():
    code = "import sys, json, bioplausible as b; print(json.dumps([b.__all__, 'torch' in sys.modules]))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    names, torch_loaded = json.loads(out.stdout)
    assert set(API) <= set(names)
    assert not torch_loaded, "import bioplausible must not import torch"


def test_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError):
        bioplausible.no_such_thing


def test_rules_describe_themselves():
    rows = {r["name"]: r for r in bioplausible.rules()}
    assert {"bp", "fa", "dfa", "pc", "stdp"} <= set(rows)
    assert rows["bp"]["description"] and "cnn" in rows["bp"]["architectures"]
    assert rows["bp"]["custom"] and not rows["stdp"]["custom"] and rows["stdp"]["why_not_custom"]


def test_datasets_list_digits_as_present(tmp_path):
    rows = {r["name"]: r for r in bioplausible.datasets(tmp_path)}
    assert rows["digits"]["present"] and not rows["mnist"]["present"]
    assert "cifar10" in rows


def _accuracy(learner, x, y):
    with torch.no_grad():
        return (learner.predict(x).argmax(1) == y).float().mean().item()


def test_learner_in_own_loop_with_a_dataloader(digits):
    learner = bioplausible.learner("fa", model="mlp", input_shape=digits.input_shape, num_classes=10,
                                   widths=(64,), lr=3e-3, seed=0)
    before = _accuracy(learner, digits.x_test, digits.y_test)
    loader = DataLoader(TensorDataset(digits.x_train, digits.y_train), batch_size=32, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    for _ in range(3):
        for x, y in loader:
            out = learner.train_step(x, y)
    assert float(out["loss"]) > 0
    after = _accuracy(learner, digits.x_test, digits.y_test)
    assert after > 0.85 and after > before + 0.3
    acts = learner.activations(digits.x_test[:4])
    assert list(acts) == ["fc1", "fc2"] and acts["fc1"].shape == (4, 64)
    # state_dict round trip: a fresh learner with the saved state predicts the same
    twin = bioplausible.learner("fa", model="mlp", input_shape=digits.input_shape, num_classes=10,
                                widths=(64,), seed=1)
    twin.load_state_dict(learner.state_dict())
    torch.testing.assert_close(twin.predict(digits.x_test), learner.predict(digits.x_test))


def test_learner_rejects_bad_input_by_name():
    with pytest.raises(ValueError, match="no_such_option"):
        bioplausible.learner("dtp", model="mlp", input_shape=(1, 8, 8), num_classes=10, no_such_option=1)
    with pytest.raises(ValueError, match="num_classes"):
        bioplausible.learner("bp", model="mlp", input_shape=(1, 8, 8))
    with pytest.raises(ValueError, match="unknown rule"):
        bioplausible.learner("nope", model="mlp", input_shape=(1, 8, 8), num_classes=10)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_learner_on_cuda(digits):
    learner = bioplausible.learner("dfa", model="cnn", input_shape=digits.input_shape, num_classes=10,
                                   channels=(8, 8, 8), device="cuda")
    out = learner.train_step(digits.x_train[:32].cuda(), digits.y_train[:32].cuda())
    assert out["loss"].device.type == "cuda" and learner.predict(digits.x_test[:4].cuda()).is_cuda


def test_train_without_store_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = bioplausible.train("bp", "digits", epochs=2, seed=0, widths=(32,), lr=1e-2, progress=False, device="cpu")
    assert [r["epoch"] for r in run.history] == [1, 2]
    assert run.test_acc == run.history[-1]["test_acc"] and run.test_acc > 0.8
    assert run.config["widths"] == [32] and run.config["lr"] == 1e-2 and run.status == "done" and not run.recorded
    assert _accuracy(run.learner, *_test(run)) == pytest.approx(run.test_acc)
    assert list(tmp_path.rglob("*")) == []


def _test(run):
    from bioplausible.data import load

    d = load("digits")
    return d.x_test, d.y_test


def test_train_with_store_records_and_results_reads_it(tmp_path, capsys):
    store = tmp_path / "s.sqlite"
    run = bioplausible.train("signsym", "digits", epochs=1, seed=3, widths=(16,), store=store, device="cpu")
    assert run.recorded and run.status == "done" and len(run.history) == 1 and run.learner is not None
    assert "epoch 1/1" in capsys.readouterr().out  # the CLI's progress bar
    df = bioplausible.results(store)
    assert len(df) == 1
    row = df.iloc[0]
    assert (row["rule"], row["seed"], row["id"]) == ("signsym", 3, run.id)
    assert row["test_acc"] == pytest.approx(run.test_acc)
    again = bioplausible.train("signsym", "digits", epochs=1, seed=3, widths=(16,), store=store, device="cpu",
                               progress=False)
    assert not again.recorded and again.test_acc == pytest.approx(run.test_acc)
    assert len(bioplausible.results(store)) == 1


def test_results_of_a_missing_store(tmp_path):
    with pytest.raises(FileNotFoundError, match="no results store"):
        bioplausible.results(tmp_path / "none.sqlite")
    assert not (tmp_path / "none.sqlite").exists()
