"""Hebbian rule: learns, is deterministic, and its hidden layers never see labels."""

from __future__ import annotations

import copy

import pytest
import torch

from bioplausible.config import RunConfig
from bioplausible.data import load
from bioplausible.experiments.runner import build_learner, execute




def _learner(data, **kw):
    cfg = RunConfig(rule="hebbian", data="digits", **kw)
    return build_learner(cfg, data.input_shape, data.num_classes)


def test_hebbian_mlp_learns_on_digits(digits):
    # chance is 10%; a delta-rule readout on SoftHebb features must be far above it
    row = execute(RunConfig(rule="hebbian", model="mlp", data="digits", epochs=5, widths=(256,)), data=digits)
    assert row["status"] == "done", row["reason"]
    assert row["metrics"]["test_acc"] >= 0.80  # measured 0.926; chance 0.10


def test_hebbian_cnn_learns_on_digits(digits):
    row = execute(RunConfig(rule="hebbian", model="cnn", data="digits", epochs=5, channels=(16, 32, 32), lr=0.01),
                  data=digits)
    assert row["status"] == "done", row["reason"]
    assert row["metrics"]["test_acc"] >= 0.60  # measured 0.832; chance 0.10


def test_cnn_default_is_one_wide_conv_layer(digits):
    # without --channels the rule uses its own wide conv layer; given channels are kept
    wide = _learner(digits, model="cnn")
    assert [(l.kind, l.out_features) for l in wide.hidden] == [("conv", 96)]
    assert wide.readout.in_features == 96 * 4 * 4  # 8x8 digits, one 2x2 pooling
    given = _learner(digits, model="cnn", channels=(4, 8, 8))
    assert [l.out_features for l in given.hidden] == [4, 8, 8]
    kept = _learner(digits, model="cnn", rule_options={"wide_default": False})
    assert [l.out_features for l in kept.hidden] == [32, 64, 64]


def _steps(learner, data, labels, n=4):
    torch.manual_seed(0)
    for xb, yb in list(data.batches(64, 0, 1))[:n]:
        learner.train_step(xb, labels(yb))


def test_deterministic_under_seed(digits):
    a, b = _learner(digits, widths=(64, 32), seed=3), _learner(digits, widths=(64, 32), seed=3)
    _steps(a, digits, lambda y: y)
    _steps(b, digits, lambda y: y)
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(pa, pb)
    c = _learner(digits, widths=(64, 32), seed=4)
    assert not torch.equal(a.stack.layers[0].weight, c.stack.layers[0].weight)


@pytest.mark.parametrize("rule", ["softhebb", "krotov", "oja", "hebb"])
@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_hidden_layers_never_see_labels(digits, rule, model):
    kw = dict(widths=(64, 32)) if model == "mlp" else dict(channels=(4, 8, 8))
    a = _learner(digits, model=model, rule_options={"hidden_rule": rule}, **kw)
    b = copy.deepcopy(a)
    before = [l.weight.clone() for l in a.hidden]
    g = torch.Generator().manual_seed(0)
    _steps(a, digits, lambda y: y)
    _steps(b, digits, lambda y: torch.randint(0, 10, y.shape, generator=g))  # garbage labels
    for la, lb, w0 in zip(a.hidden, b.hidden, before):
        assert not torch.equal(la.weight, w0)  # the hidden layers did learn ...
        assert torch.equal(la.weight, lb.weight)  # ... and identically whatever the labels
    assert not torch.equal(a.readout.weight, b.readout.weight)  # the readout does use them


def test_softhebb_update_matches_formula():
    """dW of a dense SoftHebb layer, computed sample by sample from the paper's rule."""
    torch.manual_seed(0)
    data = load("digits")
    L = _learner(data, widths=(5,), rule_options={"temperature": 2.0})
    layer = L.hidden[0]
    x = torch.randn(3, 64)
    u = layer.drive(x)
    got = L.hebbian_update(layer, x, u)
    w = layer.weight
    want = torch.zeros_like(w)
    for n in range(3):
        y = torch.softmax(u[n] / 2.0, 0)
        k_win = int(y.argmax())
        for k in range(5):
            yk = y[k] if k == k_win else -y[k]
            want[k] += yk * (x[n] - u[n, k] * w[k])
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_wide_default_and_widths_respected(digits):
    assert _learner(digits).stack.layers[0].out_features == 2000  # widths None: one wide layer
    assert [l.out_features for l in _learner(digits, widths=(32, 16)).hidden] == [32, 16]
    keep = _learner(digits, rule_options={"wide_default": False})
    assert [l.out_features for l in keep.hidden] == [1024, 512, 256]
