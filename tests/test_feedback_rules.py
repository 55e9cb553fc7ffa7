"""BP and the feedback-alignment family: they learn, and their feedback is what it claims."""

import copy

import pytest
import torch

from bioplausible.algorithms import get
from bioplausible.algorithms.base import ExplicitBackward
from bioplausible.config import RunConfig
from bioplausible.experiments.runner import build_learner, execute
from bioplausible.models import Layer, build
from bioplausible.models.layers import ACTIVATIONS

FOUR = ["bp", "fa", "dfa", "signsym"]



@pytest.mark.parametrize("rule", FOUR)
@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_rule_learns_digits(rule, model, digits):
    # chance is 10%; the bar is 85% within seconds
    cfg = RunConfig(rule=rule, model=model, data="digits", epochs=10, widths=(256, 128), seed=0)
    row = execute(cfg, data=digits)
    assert row["status"] == "done", row["reason"]
    assert row["metrics"]["test_acc"] >= 0.85, row["metrics"]
    assert row["wall_time"] < 60


class _TransposeFeedback(ExplicitBackward):
    """The explicit engine fed W itself: must reproduce backprop exactly."""

    name = "_wt"
    claims = get("bp").claims

    def hidden_error(self, l, delta_next, x_next_shape, e):
        layer = self.stack.layers[l + 1]
        return layer.input_grad(delta_next, layer.weight, x_next_shape)


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_explicit_engine_with_transpose_equals_autograd(model):
    torch.manual_seed(0)
    cfg = RunConfig(rule="bp", model=model, widths=(32, 16), channels=(4, 8, 8))
    stack = build(model, (1, 8, 8), 10, seed=1, **({"widths": (32, 16)} if model == "mlp" else {"channels": (4, 8, 8)}))
    stack = stack.double()
    x = torch.randn(16, 1, 8, 8, dtype=torch.float64)
    y = torch.randint(0, 10, (16,))
    learner = _TransposeFeedback(stack, cfg)
    _, _, grads = learner.compute_grads(x, y)
    ref = copy.deepcopy(stack)
    loss = torch.nn.functional.cross_entropy(ref(x), y)
    loss.backward()
    for p, q in zip(stack.parameters(), ref.parameters()):
        assert torch.allclose(grads[p], q.grad, atol=1e-10), "explicit backward differs from autograd"


def _learner(rule, model="mlp"):
    cfg = RunConfig(rule=rule, model=model, widths=(64, 32), channels=(4, 8, 8), lr=1e-2)
    return build_learner(cfg, (1, 8, 8), 10)


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_fa_feedback_is_not_transpose_and_stays_fixed(model, digits):
    fa = _learner("fa", model)
    before = {i: fa.feedback(i).clone() for i in range(len(fa.stack))}
    for i, layer in enumerate(fa.stack):
        b, w = fa.feedback(i), layer.weight.detach()
        assert b.shape == w.shape
        assert not torch.allclose(b, w), f"layer {i}: feedback equals the forward weights"
        cos = torch.nn.functional.cosine_similarity(b.flatten(), w.flatten(), dim=0)
        assert abs(cos) < 0.2, f"layer {i}: feedback correlated with W (cos {cos:.2f})"
    for xb, yb in digits.batches(64, 0, 1):
        fa.train_step(xb, yb)
    for i, layer in enumerate(fa.stack):
        assert torch.equal(fa.feedback(i), before[i]), "feedback matrix changed during training"
    assert not any(n.startswith("B") for n, _ in fa.named_parameters()), "feedback must not be trainable"
    # it is not the transpose after training either (weights moved, B did not)
    assert all(not torch.allclose(fa.feedback(i), l.weight.detach()) for i, l in enumerate(fa.stack))


def test_fa_feedback_is_used():
    """Changing B changes the hidden-layer update; changing W_{l+1} does not (same forward)."""
    fa = _learner("fa")
    x = torch.randn(8, 1, 8, 8)
    y = torch.arange(8)
    _, _, g0 = fa.compute_grads(x, y)
    w0 = fa.stack[0].weight
    fa.B1.mul_(-1)
    _, _, g1 = fa.compute_grads(x, y)
    assert not torch.allclose(g0[w0], g1[w0])
    fa.B1.mul_(-1)
    with fa.stack[1].transport_probe(torch.randn_like(fa.stack[1].weight) * 5):
        _, _, g2 = fa.compute_grads(x, y)
    assert torch.allclose(g0[w0], g2[w0], atol=1e-5)


def test_dfa_sends_output_error_directly():
    dfa = _learner("dfa")
    x = torch.randn(8, 1, 8, 8)
    y = torch.arange(8)
    _, _, g0 = dfa.compute_grads(x, y)
    w0 = dfa.stack[0].weight
    # the first layer's update does not depend on the second layer's weights at all
    with torch.no_grad():
        saved = dfa.stack[1].weight.clone()
    with dfa.stack[1].transport_probe(torch.randn_like(saved) * 5):
        _, _, g1 = dfa.compute_grads(x, y)
    assert torch.allclose(g0[w0], g1[w0], atol=1e-5)
    assert dfa.B0.shape == (10, 64)


def test_signsym_feedback_uses_current_signs_only():
    ss = _learner("signsym")
    x = torch.randn(8, 1, 8, 8)
    y = torch.arange(8)
    w0 = ss.stack[0].weight
    _, _, g0 = ss.compute_grads(x, y)
    # scaling W_2's magnitudes in the learning pathway (signs kept) leaves the update as is
    with ss.stack[1].transport_probe(ss.stack[1].weight.detach() * 3):
        _, _, g1 = ss.compute_grads(x, y)
    assert torch.allclose(g0[w0], g1[w0], atol=1e-5)
    # flipping signs changes it
    with ss.stack[1].transport_probe(-2 * ss.stack[1].weight.detach()):
        _, _, g2 = ss.compute_grads(x, y)
    assert torch.allclose(g0[w0], -g2[w0], atol=1e-5)


def test_same_seed_same_weights(digits):
    def weights(seed):
        cfg = RunConfig(rule="fa", model="mlp", data="digits", epochs=1, widths=(64,), seed=seed)
        from bioplausible.experiments.runner import train

        learner, *_ = train(cfg, data=digits)
        return torch.cat([p.detach().flatten() for p in learner.parameters()])

    assert torch.equal(weights(3), weights(3))
    assert not torch.equal(weights(3), weights(4))


@pytest.mark.parametrize("act", ["relu", "tanh", "hardsigmoid01"])
def test_pooling_before_a_monotone_activation_changes_nothing(act):
    """`Layer.post` pools before a non-decreasing activation (cheaper): the values and the
    gradient are those of activation-then-pooling."""
    layer = Layer("conv", 3, 4, act=act, pool=2)
    a = torch.randn(5, 4, 8, 8, dtype=torch.float64) * 2
    a[0, 0, :2, :2] = -1.0  # a window with no unit on (relu): ties at zero after the activation
    a1, a2 = a.clone().requires_grad_(True), a.clone().requires_grad_(True)
    ref = torch.nn.functional.max_pool2d(ACTIVATIONS[act](a1), 2)
    out = layer.post(a2)
    assert torch.equal(out, ref)
    g = torch.randn_like(ref)
    (ga1,) = torch.autograd.grad(ref, a1, g)
    (ga2,) = torch.autograd.grad(out, a2, g)
    assert torch.equal(ga1, ga2)
