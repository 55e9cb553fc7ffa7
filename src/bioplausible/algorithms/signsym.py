"""Sign symmetry (Liao, Leibo & Poggio 2016): feedback is sign(W)^T at a fixed scale, so
only the signs of the forward weights are transported, not their magnitudes."""

from __future__ import annotations

import torch

from ..criteria.claims import Claims, no, partial
from .base import ExplicitBackward


class SignSymmetry(ExplicitBackward):
    name = "signsym"
    description = "Sign symmetry: feedback sign(W) at a fixed per-layer scale"
    claims = Claims(
        c1_no_weight_transport=partial("feedback carries the signs of W (one bit per synapse), not magnitudes"),
        c2_local_error=no("the output error is carried down through every layer's feedback"),
        c3_single_phase=no("a forward pass, then a separate feedback pass"),
        c4_spiking=no("real-valued rates"),
        c5_label_free_hidden=no("hidden layers learn from the label's error"),
        c6_unsigned_error=no("signed errors are fed back"),
    )

    def setup(self) -> None:
        # The scale is fixed at the initial weights' typical magnitude: sign(W) alone would
        # make the feedback sqrt(fan_in) times too large, and a scale that tracked |W| would
        # transport magnitude information after all.
        for i, layer in enumerate(self.stack.layers):
            self.register_buffer(f"scale{i}", layer.weight.detach().abs().mean().clone())

    def hidden_error(self, l, delta_next, x_next_shape, e):
        layer = self.stack.layers[l + 1]
        fb = torch.sign(layer.weight) * getattr(self, f"scale{l + 1}")
        return layer.input_grad(delta_next, fb, x_next_shape)
