"""bench/accuracy.py's --opt, --lr: settings over the tuned preset's (the runs are too slow for
the suite)."""

from pathlib import Path

import pytest

BENCH = Path(__file__).parents[1] / "bench"


@pytest.fixture
def accuracy(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))  # as when run as `python bench/accuracy.py`
    import accuracy

    return accuracy


def test_opt_merges_over_the_bench_rule_options(accuracy):
    base = accuracy.config_for("wp", "cnn", "mnist", 0, None, "cpu")
    opts = accuracy.parse_options(["wp.n_perturbations=16", "np.sigma=0.1"])
    cfg = accuracy.config_for("wp", "cnn", "mnist", 0, None, "cpu", options=opts)
    assert base.rule_options["n_perturbations"] == 4
    # the bench's other options stay, and np's option does not leak into wp's config
    assert cfg.rule_options == {**base.rule_options, "n_perturbations": 16}
    assert cfg.key() != base.key()
    other = accuracy.config_for("local", "mlp", "mnist", 0, None, "cpu", options=opts)
    assert other.key() == accuracy.config_for("local", "mlp", "mnist", 0, None, "cpu").key()


def test_opt_unknown_to_the_rule_is_rejected(accuracy):
    with pytest.raises(SystemExit, match="(?s)--opt wp.no_such_option.*no_such_option.*not permitted"):
        accuracy.check_options({"wp": {"no_such_option": 1}})
    with pytest.raises(SystemExit, match="--opt nosuchrule"):
        accuracy.check_options({"nosuchrule": {"x": 1}})
    accuracy.check_options({"wp": {"n_perturbations": 16}})  # a valid option passes


def test_lr_overrides_the_bench_rate_and_is_a_new_run(accuracy):
    base = accuracy.config_for("wp", "cnn", "mnist", 0, None, "cpu")
    cfg = accuracy.config_for("wp", "cnn", "mnist", 0, None, "cpu", lr=5e-4)
    from bioplausible.experiments import sweep

    tuned = sweep.cell_settings(sweep.load_sweep(sweep.preset_path("tuned")), "wp", "cnn", "mnist")
    assert base.lr == tuned["lr"] != 5e-4 and cfg.lr == 5e-4
    assert cfg.key() != base.key()
    # nothing else changes
    assert cfg.model_dump(exclude={"lr"}) == base.model_dump(exclude={"lr"})
