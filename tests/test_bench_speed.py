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


def test_flops_of_the_mlp_step_match_the_analytic_count():
    # BP on a dense net: forward, weight-gradient and (above the first layer) input-gradient
    # products, 2 FLOPs per multiply-add
    learner = speed.make_learner("bp", "mlp", 8, "cpu", (16, 12), (1, 4, 4))
    x, y = speed.make_batches(8, learner.stack.layers[0].weight.device, (1, 4, 4))
    sizes = [16, 16, 12, 10]
    macs = [a * b for a, b in zip(sizes, sizes[1:])]
    expected = 2 * 8 * (3 * sum(macs) - macs[0])
    assert speed.count_flops(learner, x[0], y[0]) == expected


def test_reference_shape_is_the_largest_product():
    mlp = speed.make_learner("bp", "mlp", 4, "cpu", (16,), (1, 28, 28))
    assert speed.reference_shape("mlp", 32, mlp) == (32, 1024, 1024)
    cnn = speed.make_learner("bp", "cnn", 4, "cpu", None, (1, 28, 28))
    # conv2 (32 -> 64 channels on 14x14) has the most multiply-adds of the paper CNN
    assert speed.reference_shape("cnn", 2, cnn) == (2 * 14 * 14, 32 * 9, 64)
    # ... and the same product as a convolution: batch, 32 input maps of 14x14, 64 3x3 kernels
    assert speed.reference("cnn", 2, cnn)[1] == (2, 32, 14, 14, 64, 3)


def test_summary_takes_medians_of_per_round_ratios():
    row = speed.summarise("fa", 300, 100, own=[2.0, 4.0, 3.0], base=[1.0, 1.0, 2.0], rate=[100.0, 100.0, 50.0],
                          batch=10)
    assert row["ratio_bp"] == 2.0 and row["ratio_bp_spread"] == [1.5, 4.0]
    assert row["flops_ratio_bp"] == 3.0
    assert row["efficiency"] == pytest.approx(1.5) and row["efficiency_spread"] == pytest.approx([0.75, 2.0])


def test_json_output_and_bad_rule(tmp_path, capsys):
    out = tmp_path / "speed.json"
    speed.main(["--rules", "fa", "--model", "mlp", "--batch", "4", "--steps", "2", "--rounds", "2", "--warmup", "1",
                "--device", "cpu", "--json", str(out)])
    import json

    got = json.loads(out.read_text())
    assert [r["rule"] for r in got["rules"]] == ["bp", "fa"]
    assert got["rules"][0]["flops_ratio_bp"] == 1.0 and got["rules"][1]["flops_step"] > 0
    assert all(0 < r["efficiency"] for r in got["rules"])
    with pytest.raises(SystemExit) as e:
        speed.main(["--rules", "nope"])
    assert e.value.code == 2
    assert "unknown rule" in capsys.readouterr().err
