"""Bring your own network: a Stack from a user's nn.Sequential, trained by the rules."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bioplausible
from bioplausible.models.sequential import from_sequential


def lenet(pool2=nn.AvgPool2d):
    # LeNet-5 on 8x8 digits: padded 5x5 convolutions keep the maps large enough for both
    # subsamplings (8 -> 4 -> 2)
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.Tanh(), nn.AvgPool2d(2),
        nn.Conv2d(6, 16, 5, padding=2), nn.Tanh(), pool2(2),
        nn.Flatten(), nn.Linear(64, 120), nn.Tanh(), nn.Linear(120, 84), nn.Tanh(), nn.Linear(84, 10),
    )


def strided():
    # stride, a non-square kernel and padding, max-pooling before a ReLU, no bias, no Flatten
    return nn.Sequential(
        nn.Conv2d(1, 4, (3, 5), stride=1, padding=(1, 2)), nn.MaxPool2d(2), nn.ReLU(),
        nn.Conv2d(4, 8, 3, stride=2, padding=1, bias=False), nn.Sigmoid(),
        nn.Flatten(), nn.Linear(8 * 2 * 2, 10),
    )


@pytest.mark.parametrize("make", [lenet, strided])
def test_stack_computes_the_sequential_with_its_own_parameters(make):
    torch.manual_seed(0)
    net = make()
    stack = from_sequential(net, (1, 8, 8))
    x = torch.randn(5, 1, 8, 8)
    torch.testing.assert_close(stack(x), net(x))
    assert {id(p) for p in stack.parameters()} == {id(p) for p in net.parameters()}
    assert stack.num_classes == 10 and stack.arch == "cnn" and stack.custom


def test_training_updates_the_users_model_in_place(digits):
    torch.manual_seed(0)
    net = lenet()
    before = net[0].weight.detach().clone()
    learner = bioplausible.learner("fa", model=net, input_shape=(1, 8, 8))
    learner.train_step(digits.x_train[:32], digits.y_train[:32])
    assert not torch.equal(net[0].weight, before)
    torch.testing.assert_close(learner.predict(digits.x_test[:8]), net(digits.x_test[:8]))


@pytest.mark.parametrize("module, name", [
    (nn.BatchNorm2d(6), "BatchNorm2d"),
    (nn.Dropout(0.5), "Dropout"),
    (nn.MaxPool2d(3, stride=1), "MaxPool2d"),
])
def test_unsupported_module_is_named(module, name):
    net = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), module, nn.Flatten(), nn.Linear(6 * 64, 10))
    with pytest.raises(ValueError) as e:
        from_sequential(net, (1, 8, 8))
    msg = str(e.value)
    assert name in msg and "module 1" in msg and "supported: Linear, Conv2d" in msg and "\n" not in msg


def test_model_must_end_in_a_linear_readout():
    with pytest.raises(ValueError, match="last weight layer"):
        from_sequential(nn.Sequential(nn.Linear(64, 10), nn.ReLU(), nn.Conv2d(1, 2, 1)), (64,))


def test_wrong_input_shape_is_reported():
    with pytest.raises(ValueError, match="does not accept inputs of shape"):
        from_sequential(lenet(), (1, 12, 12))


@pytest.mark.parametrize("rule", ["stdp", "rstdp", "hebbian"])
def test_rules_with_their_own_network_refuse_in_one_line(rule):
    with pytest.raises(ValueError) as e:
        bioplausible.learner(rule, model=lenet(), input_shape=(1, 8, 8))
    assert "cannot train a network of your own" in str(e.value) and "\n" not in str(e.value)


def _autograd(stack, x, y):
    loss = F.cross_entropy(stack(x), y)
    params = [p for l in stack.layers for p in (l.weight, l.bias) if p is not None]
    return dict(zip(params, torch.autograd.grad(loss, params)))


def _explicit(learner, x, y):
    _, _, grads = learner.compute_grads(x, y)
    return grads


@pytest.mark.parametrize("make", [lenet, lambda: lenet(nn.MaxPool2d), strided])
def test_fa_with_forward_weights_as_feedback_is_backprop(make):
    torch.manual_seed(1)
    net = make().double()
    learner = bioplausible.learner("fa", model=net, input_shape=(1, 8, 8))
    for i, layer in enumerate(learner.stack.layers):
        setattr(learner, f"B{i}", layer.weight.detach().clone())
    x, y = torch.randn(16, 1, 8, 8, dtype=torch.float64), torch.randint(0, 10, (16,))
    want, got = _autograd(learner.stack, x, y), _explicit(learner, x, y)
    assert set(got) == set(want)
    for p in want:
        torch.testing.assert_close(got[p], want[p], rtol=0, atol=1e-6)


@pytest.mark.parametrize("make", [lenet, strided])
def test_signsym_with_weights_of_one_magnitude_is_backprop(make):
    # sign(W) times the layer's fixed scale is W itself when every weight has the same size
    torch.manual_seed(2)
    net = make().double()
    with torch.no_grad():
        for m in net:
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                m.weight.copy_(torch.where(m.weight >= 0, 1.0, -1.0) * m.weight.abs().mean())
    learner = bioplausible.learner("signsym", model=net, input_shape=(1, 8, 8))
    x, y = torch.randn(16, 1, 8, 8, dtype=torch.float64), torch.randint(0, 10, (16,))
    want, got = _autograd(learner.stack, x, y), _explicit(learner, x, y)
    for p in want:
        torch.testing.assert_close(got[p], want[p], rtol=0, atol=1e-6)


def test_dfa_into_the_last_hidden_layer_is_backprop_there():
    # DFA sends the output error straight down; with the readout's weights as the feedback
    # into the layer below it, that layer's (and the readout's) update is the gradient
    torch.manual_seed(3)
    net = lenet().double()
    learner = bioplausible.learner("dfa", model=net, input_shape=(1, 8, 8))
    layers = learner.stack.layers
    n = len(layers)
    setattr(learner, f"B{n - 2}", layers[-1].weight.detach().clone())
    x, y = torch.randn(16, 1, 8, 8, dtype=torch.float64), torch.randint(0, 10, (16,))
    want, got = _autograd(learner.stack, x, y), _explicit(learner, x, y)
    for layer in layers[n - 2:]:
        for p in (layer.weight, layer.bias):
            torch.testing.assert_close(got[p], want[p], rtol=0, atol=1e-6)
    assert not torch.allclose(got[layers[0].weight], want[layers[0].weight], atol=1e-6)


# 2 epochs here to keep the test quick; the 5-epoch figures come from
# `python examples/own_network.py --rules ...` (see the README)
FLOOR = {"bp": 0.85, "fa": 0.8, "dfa": 0.8, "signsym": 0.85, "local": 0.85, "pc": 0.8, "dtp": 0.8, "np": 0.75}


@pytest.mark.parametrize("rule", list(FLOOR))
def test_lenet_trains_on_digits(rule, digits):
    torch.manual_seed(0)
    net = lenet(nn.MaxPool2d)
    learner = bioplausible.learner(rule, model=net, input_shape=digits.input_shape, lr=5e-3, seed=0)
    for epoch in range(1, 3):
        for x, y in digits.batches(16, 0, epoch):
            out = learner.train_step(x, y)
            assert torch.isfinite(torch.as_tensor(out["loss"]))
    with torch.no_grad():
        acc = (net(digits.x_test).argmax(1) == digits.y_test).float().mean().item()
    assert acc >= FLOOR[rule], f"{rule}: {acc:.3f}"
