"""Sign symmetry (Liao, Leibo & Poggio 2016): feedback is sign(W)^T at a fixed scale, so
only the signs of the forward weights are transported, not their magnitudes."""

from __future__ import annotations

import torch

from .claims import partial
from .base import ExplicitBackward, layerwise_feedback_claims


class SignSymmetry(ExplicitBackward):
    name = "signsym"
    description = "Sign symmetry: feedback sign(W) at a fixed per-layer scale"
    claims = layerwise_feedback_claims(partial("feedback carries the signs of W (one bit per synapse), not magnitudes"))

    def setup(self) -> None:
        # The scale is fixed at the initial weights' typical magnitude: sign(W) alone would
        # make the feedback sqrt(fan_in) times too large, and a scale that tracked |W| would
        # transport magnitude information after all.
        for i, layer in enumerate(self.stack.layers):
            self.register_buffer(f"scale{i}", layer.weight.detach().abs().mean().clone())

    def feedback_matrix(self, l: int) -> torch.Tensor:
        return torch.sign(self.stack.layers[l].weight) * getattr(self, f"scale{l}")

    def hidden_error(self, l, delta_next, x_next_shape, e):
        return self.stack.layers[l + 1].input_grad(delta_next, self.feedback_matrix(l + 1), x_next_shape)
