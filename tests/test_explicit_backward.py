"""The FA family's explicit backward through conv, pooling and dense layers is exact: with
the forward weights as feedback it must equal autograd's gradient (float64)."""

import pytest
import torch

from bioplausible.algorithms.base import ExplicitBackward
from bioplausible.config import RunConfig
from bioplausible.models import build


class TransposeFeedback(ExplicitBackward):
    """Backprop written as an explicit-backward rule: feedback = the forward weights."""

    name = "transpose_feedback"

    def hidden_error(self, l, delta_next, x_next_shape, e):
        layer = self.stack.layers[l + 1]
        return layer.input_grad(delta_next, layer.weight, x_next_shape)


class TransposeFeedbackFused(TransposeFeedback):
    """The same, through the one-call conv backward (`feedback_matrix`), as FA and sign symmetry."""

    def feedback_matrix(self, l):
        return self.stack.layers[l].weight


@pytest.mark.parametrize("rule", [TransposeFeedback, TransposeFeedbackFused])
@pytest.mark.parametrize("act", ["relu", "tanh", "sigmoid", "gelu"])
@pytest.mark.parametrize("size", [8, 12])
def test_explicit_backward_equals_autograd(act, size, rule):
    torch.manual_seed(0)
    stack = build("cnn", (1, size, size), 10, seed=1, act=act, channels=(3, 4, 5), projection=7).double()
    learner = rule(stack, RunConfig(rule="bp", model="cnn")).double()
    x = torch.randn(6, 1, size, size, dtype=torch.float64)
    y = torch.randint(0, 10, (6,))

    _, logits, grads = learner.compute_grads(x, y)

    stack.zero_grad()
    ref_logits = stack(x)
    torch.nn.functional.cross_entropy(ref_logits, y).backward()
    torch.testing.assert_close(logits, ref_logits.detach(), rtol=0, atol=1e-12)
    assert len(grads) == 2 * len(stack.layers)
    for p, g in grads.items():
        assert g.shape == p.shape
        torch.testing.assert_close(g, p.grad, rtol=0, atol=1e-6)
        assert g.abs().max() > 0  # a vanishing gradient would pass the comparison trivially
