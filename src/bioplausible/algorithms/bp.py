"""Backpropagation: the baseline every other rule is compared with."""

from __future__ import annotations

import torch.nn.functional as F

from .claims import Claims, no
from .base import Learner


class Backprop(Learner):
    name = "bp"
    description = "Backpropagation (autograd through the whole stack)"
    claims = Claims(
        c1_no_weight_transport=no("errors travel back through W^T of every layer above"),
        c2_local_error=no("each layer's error is the global output error carried through other layers"),
        c3_single_phase=no("a forward pass, then a separate backward pass"),
        c4_spiking=no("real-valued rates"),
        c5_label_free_hidden=no("hidden layers learn from the label's error"),
        c6_unsigned_error=no("signed errors are propagated"),
    )

    def train_step(self, x, y):
        logits = self.stack(x)
        loss = F.cross_entropy(logits, y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.detach(), "correct": (logits.detach().argmax(1) == y).sum()}
