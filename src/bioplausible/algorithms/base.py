"""The `Learner` interface every learning rule implements.

A Learner owns a layer stack (`bioplausible.models.Stack`) and whatever the rule adds
(feedback matrices, inverse mappings, readouts). `train_step` takes one mini-batch and
updates the weights by the rule; nothing outside the Learner knows how.

Rule-specific settings live in an `Options` pydantic model per rule, filled from
`RunConfig.rule_options`, so a misspelt option is rejected by name.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict
from torch import nn

from ..config import RunConfig
from .claims import Claim, Claims, no
from ..models import Stack


class NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Learner(nn.Module):
    name: ClassVar[str]
    claims: ClassVar[Claims]
    Options: ClassVar[type[BaseModel]] = NoOptions
    architectures: ClassVar[tuple[str, ...]] = ("mlp", "cnn")
    default_act: ClassVar[str] = "relu"
    description: ClassVar[str] = ""
    # why the rule cannot train a network the user built (models.sequential); "" if it can
    own_network: ClassVar[str] = ""

    def __init__(self, stack: Stack, cfg: RunConfig) -> None:
        super().__init__()
        if getattr(stack, "custom", False) and self.own_network:
            raise ValueError(f"rule {self.name!r} cannot train a network of your own: {self.own_network}")
        if stack.arch not in self.architectures:
            raise ValueError(
                f"rule {self.name!r} does not support model {stack.arch!r} "
                f"(supports: {', '.join(self.architectures)})"
            )
        self.stack = stack
        self.cfg = cfg
        try:
            self.opts = self.Options(**cfg.rule_options)
        except Exception as e:  # pydantic's message names the field; add the rule
            raise ValueError(f"bad rule option for {self.name!r}: {e}") from None
        self.setup()
        self.optimizer = self.make_optimizer(self.trainable_parameters())

    # -- hooks for subclasses -------------------------------------------------------------
    @classmethod
    def network_for(cls, cfg: RunConfig) -> dict[str, Any]:
        """The network this rule trains under `cfg`, chosen before it is built: keyword
        arguments of `models.build` (``widths`` for the MLP, ``channels`` for the CNN; none =
        the architecture's preset). A rule with a shape of its own overrides this, so the
        stack it is given is the one it trains (the run records the stack that ran)."""
        key = "widths" if cfg.model == "mlp" else "channels"
        value = getattr(cfg, key, None)
        return {} if value is None else {key: tuple(value)}

    def setup(self) -> None:
        """Create the rule's own state (feedback weights, readouts); called before the optimiser."""

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
        raise NotImplementedError

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores for x (higher is more likely)."""
        return self.stack(x)

    def activations(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each layer's output for x, input-to-output, for RSA and probes."""
        return self.stack.activations(x)

    # -- shared machinery -----------------------------------------------------------------
    def make_optimizer(self, params, lr: float | None = None) -> torch.optim.Optimizer:
        params = list(params)
        lr = self.cfg.lr if lr is None else lr
        if self.cfg.optimizer == "adam":
            return torch.optim.Adam(params, lr=lr, weight_decay=self.cfg.weight_decay)
        return torch.optim.SGD(params, lr=lr, momentum=self.cfg.momentum, weight_decay=self.cfg.weight_decay)

    def apply_updates(self, grads: dict[nn.Parameter, torch.Tensor | None], optimizer=None) -> None:
        """Hand the rule's weight changes (in gradient convention: the optimiser *subtracts*
        them, scaled) to the optimiser. Rules without autograd call this; it is how every
        rule shares one optimiser implementation, so comparisons differ only in the rule."""
        opt = optimizer or self.optimizer
        for p, g in grads.items():
            if g is not None:
                p.grad = g.detach()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def optimizers(self) -> list[torch.optim.Optimizer]:
        """Every optimiser the learner holds (rules may keep extra ones, e.g. for feedback weights)."""
        found = []
        for v in vars(self).values():
            items = v.values() if isinstance(v, dict) else (v if isinstance(v, (list, tuple)) else [v])
            found += [o for o in items if isinstance(o, torch.optim.Optimizer)]
        return found

    def set_lr_factor(self, factor: float) -> None:
        """Scale every optimiser's learning rates by `factor` relative to their initial values."""
        for opt in self.optimizers():
            for g in opt.param_groups:
                g.setdefault("initial_lr", g["lr"])
                g["lr"] = g["initial_lr"] * factor

    @staticmethod
    def output_error(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean cross-entropy and its gradient w.r.t. the logits (softmax - onehot) / N."""
        loss = F.cross_entropy(logits, y)
        err = torch.softmax(logits, 1)
        err[torch.arange(len(y), device=y.device), y] -= 1.0
        return loss, err / len(y)

    def delta_rule(self, layer, h: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Train a linear softmax readout `layer` on features h by the local delta rule,
        dW = (onehot(y) - softmax(W h + b)) h^T (the gradient of a one-layer cross-entropy:
        only the readout's own input and output), through the shared optimiser.
        Returns (cross-entropy, logits) of the features before the update."""
        with torch.no_grad():
            logits = layer.drive(h)
            loss, e = self.output_error(logits, y)
            gw, gb = layer.weight_grad(e, h)
        self.apply_updates({layer.weight: gw, layer.bias: gb})
        return loss, logits

    def extra_state(self) -> dict[str, Any]:
        """Checkpointable state beyond tensors registered on the module (override if any)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    def checkpoint(self) -> dict[str, Any]:
        return {"module": self.state_dict(), "optimizer": self.optimizer.state_dict(), "extra": self.extra_state()}

    def restore(self, ckpt: dict[str, Any]) -> None:
        self.load_state_dict(ckpt["module"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.load_extra_state(ckpt.get("extra", {}))


def layerwise_feedback_claims(c1: Claim) -> Claims:
    """Claims shared by rules that carry the output error down layer by layer through some
    feedback matrix (FA, sign symmetry); only their weight-transport claim differs."""
    return Claims(
        c1_no_weight_transport=c1,
        c2_local_error=no("the output error is carried down through every layer's feedback"),
        c3_single_phase=no("a forward pass, then a separate feedback pass"),
        c4_spiking=no("real-valued rates"),
        c5_label_free_hidden=no("hidden layers learn from the label's error"),
        c6_unsigned_error=no("signed errors are fed back"),
    )


class ExplicitBackward(Learner):
    """Shared engine for rules that send an output error back layer by layer through
    matrices of their own choosing (feedback alignment, sign symmetry) or straight to each
    layer (direct feedback alignment). No whole-network autograd: each layer's error is
    computed explicitly; only a layer's own activation/pooling is differentiated locally."""

    def hidden_error(self, l: int, delta_next: torch.Tensor, x_next_shape, e: torch.Tensor) -> torch.Tensor:
        """dL/dh_l (layer l's output) as the rule estimates it."""
        raise NotImplementedError

    def feedback_matrix(self, l: int) -> torch.Tensor | None:
        """The matrix layer l's error goes back through, for rules where `hidden_error(l - 1)`
        is `layers[l].input_grad(delta, feedback_matrix(l), ...)` (None: call `hidden_error`);
        on conv layers the error and the weight gradient then come from one call."""
        return None

    @torch.no_grad()
    def compute_grads(self, x: torch.Tensor, y: torch.Tensor):
        layers = self.stack.layers
        inputs, drives, backs, logits = self.stack.forward_local(x)
        loss, e = self.output_error(logits, y)
        grads: dict[nn.Parameter, torch.Tensor | None] = {}
        delta = backs[-1](e)
        for l in range(len(layers) - 1, -1, -1):
            fb = self.feedback_matrix(l) if l > 0 and layers[l].kind == "conv" else None
            if fb is not None:  # error and weight gradient from one convolution_backward
                grad_h, gw, gb = layers[l].input_grad(delta, fb, inputs[l].shape, x=inputs[l])
            else:
                gw, gb = layers[l].weight_grad(delta, inputs[l])
            grads[layers[l].weight] = gw
            if layers[l].bias is not None:
                grads[layers[l].bias] = gb
            if l > 0:
                if fb is None:
                    grad_h = self.hidden_error(l - 1, delta, inputs[l].shape, e)
                delta = backs[l - 1](grad_h)
        return loss, logits, grads

    def train_step(self, x, y):
        loss, logits, grads = self.compute_grads(x, y)
        self.apply_updates(grads)
        return {"loss": loss, "correct": (logits.argmax(1) == y).sum()}
