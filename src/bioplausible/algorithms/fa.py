"""Feedback alignment (Lillicrap et al. 2016): errors go back through fixed random
matrices B_l in place of W_l^T; the forward weights learn to align with them.

Hidden units are tanh by default (as in Lillicrap et al.): with ReLU and Adam the FA-trained
hidden layers grow without bound, while with tanh they train smoothly (paper MLP,
Fashion-MNIST, lr 1e-3, six epochs: test 87.6% with tanh, 79.4% with ReLU; the training
curves are in docs/notes/fa.md). `act="relu"` (`--act relu`) still selects ReLU."""

from __future__ import annotations

import torch

from .claims import yes
from .base import ExplicitBackward, layerwise_feedback_claims


class FeedbackAlignment(ExplicitBackward):
    name = "fa"
    description = "Feedback alignment: fixed random feedback matrices"
    default_act = "tanh"
    claims = layerwise_feedback_claims(yes("feedback matrices are fixed random, independent of W"))

    def setup(self) -> None:
        # Drawn once, from a generator of their own so the forward init is unchanged, at the
        # forward weights' scale; registered as buffers: saved and moved, never trained.
        g = torch.Generator().manual_seed(self.cfg.seed + 7919)
        for i, layer in enumerate(self.stack.layers):
            bound = 1.0 / layer.fan_in**0.5
            b = (torch.rand(layer.weight.shape, generator=g) * 2 - 1) * bound
            self.register_buffer(f"B{i}", b.to(layer.weight.device))

    def feedback(self, l: int) -> torch.Tensor:
        return getattr(self, f"B{l}")

    feedback_matrix = feedback

    def hidden_error(self, l, delta_next, x_next_shape, e):
        return self.stack.layers[l + 1].input_grad(delta_next, self.feedback(l + 1), x_next_shape)
