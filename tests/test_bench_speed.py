"""bench/speed.py's option parsing (the benchmark itself is too slow for the suite)."""

import importlib.util
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("bench_speed", Path(__file__).parents[1] / "bench" / "speed.py")
speed = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(speed)


def test_parse_options_groups_by_rule_and_reads_json():
    got = speed.parse_options(["pc.T=8", "np.antithetic=false", "pc.init=zeros", "ff.objective=contrast"])
    assert got == {"pc": {"T": 8, "init": "zeros"}, "np": {"antithetic": False}, "ff": {"objective": "contrast"}}


@pytest.mark.parametrize("bad", ["T=8", "pc.T", "pc.=3", ".T=3"])
def test_parse_options_rejects_malformed(bad):
    with pytest.raises(SystemExit, match="RULE.KEY=VALUE"):
        speed.parse_options([bad])


def test_options_reach_the_learner():
    learner = speed.make_learner("pc", "mlp", 8, "cpu", (16,), (1, 28, 28), {"pc": {"T": 3}})
    assert learner.opts.T == 3
