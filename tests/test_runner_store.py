"""Runner and results store: round trip, skip-if-done, divergence, atomicity."""

import sqlite3

import pytest
import torch

from bioplausible.algorithms import resolve
from bioplausible.config import RunConfig
from bioplausible.experiments.runner import load_learner, run
from bioplausible.experiments.store import Store, StoreError



def _cfg(**kw):
    base = dict(rule="bp", model="mlp", data="digits", epochs=2, widths=(32,), seed=0)
    return resolve(RunConfig(**{**base, **kw}))  # the registry fills in the rule's defaults


def test_round_trip_and_skip_if_done(tmp_path, digits):
    store = Store(tmp_path / "s.sqlite")
    cfg = _cfg()
    row = run(cfg, store, data=digits)
    assert row is not None and row["status"] == "done"
    got = store.runs(id=cfg.key())
    assert len(got) == 1
    r = got[0]
    assert r["config"]["rule"] == "bp" and r["seed"] == 0
    assert r["versions"]["torch"] == torch.__version__
    assert r["samples_per_s"] > 0 and r["wall_time"] > 0
    assert r["metrics"]["test_acc"] == pytest.approx(row["metrics"]["test_acc"])
    ep = store.epochs(cfg.key())
    assert [e["epoch"] for e in ep] == [1, 2]
    assert ep[-1]["test_acc"] == pytest.approx(r["metrics"]["test_acc"])
    # a second run of the same config is skipped, --force runs it again without duplicating
    assert run(cfg, store, data=digits) is None
    assert run(cfg, store, data=digits, force=True) is not None
    assert len(store.runs()) == 1 and len(store.epochs(cfg.key())) == 2
    # the device is not part of the experiment's identity; the seed is
    assert _cfg(device="cpu").key() == cfg.key()
    assert _cfg(seed=1).key() != cfg.key()


def test_checkpoint_reloads_same_predictions(tmp_path, digits):
    store = Store(tmp_path / "s.sqlite")
    cfg = _cfg(rule="fa")
    run(cfg, store, data=digits)
    learner, meta = load_learner(store, cfg.key())
    acc = (learner.predict(digits.x_test).argmax(1) == digits.y_test).float().mean().item()
    assert acc == pytest.approx(store.runs(id=cfg.key())[0]["metrics"]["test_acc"])
    assert meta["input_shape"] == (1, 8, 8) and len(meta["mean"]) == 1


def test_diverged_run_is_recorded_not_raised(tmp_path, digits):
    store = Store(tmp_path / "s.sqlite")
    cfg = _cfg(optimizer="sgd", lr=5.0, momentum=0.99, widths=(256, 256), act="identity", epochs=3)
    row = run(cfg, store, data=digits)
    assert row["status"] == "diverged", row
    assert "non-finite" in row["reason"]
    assert store.has(cfg.key())  # a diverged run counts as finished


def test_failed_run_records_reason(tmp_path, digits, monkeypatch):
    import bioplausible.experiments.runner as runner_mod

    with pytest.raises(ValueError, match="nonsense"):  # a bad option is refused before any run
        _cfg(rule_options={"nonsense": 1})
    store = Store(tmp_path / "s.sqlite")
    cfg = _cfg()

    def boom(*a, **k):
        raise RuntimeError("nonsense in the network")

    monkeypatch.setattr(runner_mod, "build_learner", boom)
    row = run(cfg, store, data=digits)
    assert row["status"] == "failed" and "nonsense" in row["reason"]
    assert not store.has(cfg.key())  # failed runs are retried


def test_record_is_atomic(tmp_path, digits):
    store = Store(tmp_path / "s.sqlite")
    row = {"id": "x", "rule": "bp", "model": "mlp", "data": "digits", "seed": 0, "config": {}, "status": "done",
           "metrics": {}, "versions": {}}
    bad_epochs = [{"epoch": 1}, {"epoch": 1}]  # duplicate primary key: the whole write must roll back
    with pytest.raises(sqlite3.IntegrityError):
        store.record(row, bad_epochs)
    assert store.runs() == []


def test_select(tmp_path, digits):
    store = Store(tmp_path / "s.sqlite")
    for rule in ("bp", "fa"):
        run(_cfg(rule=rule, epochs=1), store, data=digits)
    assert {r["rule"] for r in store.select("rule=fa")} == {"fa"}
    assert len(store.select("rule=fa|bp,data=digits")) == 2
    with pytest.raises(StoreError, match="unknown run field"):
        store.select("colour=red")
    with pytest.raises(StoreError, match="no run with id"):
        store.select("deadbeef")


@pytest.mark.parametrize(
    "kw,match",
    [({"rule": "nope"}, "unknown rule"), ({"epochs": 0}, "greater than"), ({"data": "imagenet"}, "unknown dataset"),
     ({"model": "transformer"}, "unknown model"), ({"widths": (0,)}, "positive"), ({"colour": 1}, "Extra inputs")],
)
def test_config_rejects_bad_values(kw, match):
    with pytest.raises(ValueError, match=match):
        _cfg(**kw)


def test_config_records_every_rule_option_default():
    """A config holds the rule's options with their defaults filled in, so the same run asked
    for with or without a default spelt out has one key, and a run of a rule whose default
    later changes cannot match a run recorded under the old default."""
    plain = _cfg(rule="np")
    assert plain.rule_options["n_perturbations"] == 16 and "site" in plain.rule_options
    assert _cfg(rule="np", rule_options={"n_perturbations": 16}).key() == plain.key()
    assert _cfg(rule="np", rule_options={"n_perturbations": 4}).key() != plain.key()
    # a stored config read back is the same experiment
    assert RunConfig(**plain.model_dump()).key() == plain.key()
