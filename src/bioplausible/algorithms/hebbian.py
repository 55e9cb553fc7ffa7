"""Unsupervised competitive Hebbian hidden layers plus a delta-rule readout.

Hidden layers (every layer of the stack but the last) learn without labels by one of:

- ``softhebb`` (default; Journé, Garcia Rodriguez, Guo & Moraitis 2023, "Hebbian deep learning
  without feedback", and Moraitis et al. 2022): soft winner-take-all. For unit k with weights
  w_k and drive u_k = w_k . x, y = softmax(u / tau) over the units (over channels at every
  position for a conv layer), and

      dw_k = eta_k * y'_k * (x - u_k w_k)

  where y'_k = +y_k for the winning unit and -y_k for the others ("soft anti-Hebbian" losers,
  as in Journé et al.'s code). The update of the whole layer is divided by its largest
  absolute entry, and each unit's rate is weight-norm driven: eta_k = eta * sqrt(|‖w_k‖ - 1|),
  so a unit stops learning once its weights reach the unit sphere (weights start on a sphere
  of radius ``init_radius``, 25 as in the paper). For conv layers the sums run over batch and
  positions (x is then the patch under the kernel), computed with the layer's own
  ``weight_grad`` (a conv2d_weight), so nothing loops over samples, positions or units.
- ``krotov`` (Krotov & Hopfield 2019, p = 2): the same (x - u_k w_k) form with the post factor
  g = 1 for the unit with the largest drive, -``krotov_delta`` for the ``krotov_k``-th, 0 for
  the rest; the same max-normalisation and (optional) norm-driven rate.
- ``oja``: plain Oja, y_k = u_k (linear), dw_k = eta y_k (x - y_k w_k), no competition; every
  unit drifts towards the first principal component (the comparison point: why competition
  matters).
- ``hebb``: plain Hebb on relu(u), dw_k = eta y_k x, with each row renormalised to unit norm
  after the step (without it plain Hebb diverges).

Why SoftHebb by default: it is the formulation shown to work in deep conv nets (Journé et al.
train every conv layer with it and only the readout with a supervised rule), it has no
ranking hyper-parameters, and its norm-driven rate makes one epoch enough. Krotov & Hopfield
is offered because it is the strongest single-wide-layer dense result on MNIST.

What the next layer (and the readout) sees: the layer's *representation*
``act(u)`` followed by the layer's own max-pooling, with ``hidden_act``:
``triangle`` (relu(u - mean over units), Journé et al.'s "triangle"), ``relu``, or
``layer`` (the stack layer's own `post`). ``act_power`` raises it to a power (Krotov &
Hopfield use relu^n with n = 4.5 for their readout; Journé et al. use 0.7 on the first layer).
Each deeper layer sees the representation below centred per sample and channel and divided
by its RMS (``layer_input_norm="center"``, a per-sample stand-in for Journé et al.'s batch
norm).
The representation fed to the readout is divided by its L2 norm per sample (times sqrt(dim))
when ``readout_norm`` is true, so the readout's learning rate does not depend on the hidden
layers' scale.

Readout: the stack's last layer, trained by the local delta rule
dW = (onehot(y) - softmax(W h + b)) h^T on the last hidden representation h (the gradient of
a one-layer cross-entropy, which only needs the readout's own input and output), handed to
the shared optimiser (`cfg.lr`, Adam by default) like every other rule's updates. Hidden
weights are updated in place by the Hebbian rules (their own rate ``hidden_lr``, no
optimiser: they are not gradients of anything).

Learning is batched: each step computes every hidden layer's update from the whole
mini-batch (a sum over samples, as in the reference code) and updates all layers at once
(layers learn simultaneously, not greedily). With the norm-driven rate the hidden layers
all but stop by themselves once their weights reach the unit sphere; ``hebb_steps`` > 0 stops
them outright after that many mini-batches (0: learn throughout). Labels reach only the readout: the hidden
update is computed before and independently of y.

Architecture handling: on the MLP, ``cfg.widths`` is respected when given. When it is None
the rule chooses its network before it is built (`network_for`): by default (``wide_default=True``)
one wide hidden layer of 2000 units (Krotov & Hopfield's and
Moraitis et al.'s size), the setting in which competitive Hebbian learning is known to work
on MNIST; ``wide_default=False`` keeps the 1024-512-256 stack. Likewise on the CNN, when
``cfg.channels`` is None, the rule uses one wide conv layer of 96 maps (``wide_channels``; the
first layer of Journé et al.'s network, which showed that these layers need width) (a readout on it did far
better than on the 32-64-64 stack: docs/notes/hebbian.md), and
``--channels`` (or ``wide_default=False``) gives any other stack. The conv blocks are
Hebbian and, by default (``cnn_skip_projection=True``), the readout reads the last conv
block's flattened output directly: the stack's dense projection is dropped, because a
competitive Hebbian (or random) 256-unit projection is a bottleneck for the readout (see
`setup`); with ``cnn_skip_projection=False`` the projection is a Hebbian hidden
layer too. Hidden biases are zeroed
and frozen (the rules above have no bias term).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from .claims import Claims, no, partial, yes
from ..models import Layer, without_projection
from .base import Learner


class HebbianOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hidden_rule: Literal["softhebb", "krotov", "oja", "hebb"] = Field(
        "softhebb", description="the hidden layers' unsupervised rule")
    # None: 0.3 on the MLP, 0.05 on the CNN (on mnist5k the larger rate was the better one on the
    # dense layer, the smaller one on conv layers: docs/notes/hebbian.md)
    hidden_lr: float | None = Field(None, gt=0, description="hidden layers' rate; None = 0.3 on the MLP, 0.05 on the CNN")
    adaptive_lr: bool = Field(True, description="norm-driven rate eta_k = hidden_lr sqrt(| ||w_k|| - 1 |) (Journé)")
    init_radius: float = Field(25.0, gt=0, description="norm of the initial hidden weight vectors")
    temperature: float = Field(1.0, gt=0, description="SoftHebb: softmax(u / temperature) over the units")
    anti_hebbian: bool = Field(True, description="SoftHebb: the losers get -y_k (soft anti-Hebbian)")
    krotov_k: int = Field(2, ge=2, description="Krotov & Hopfield: rank of the unit that is pushed away")
    krotov_delta: float = Field(0.4, ge=0, description="Krotov & Hopfield: strength of that push")
    hidden_act: Literal["triangle", "relu", "layer"] = Field(
        "triangle", description="representation passed on: relu(u - mean over units), relu, or the layer's own post")
    act_power: float = Field(1.0, gt=0, description="the representation raised to this power")
    readout_norm: bool = Field(True, description="readout input divided by its L2 norm per sample (x sqrt(dim))")
    layer_input_norm: Literal["none", "rms", "center"] = Field(
        "center", description="deeper layers' input: as is, divided by its RMS, or centred and divided by its RMS")
    readout_dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the readout's input while training")
    hebb_steps: int = Field(0, ge=0, description="hidden learning stops after this many steps; 0 = never")
    wide_default: bool = Field(True, description="without cfg.widths / cfg.channels: one wide hidden layer")
    wide_width: int = Field(2000, ge=1, description="units of that wide layer on the MLP")
    wide_channels: tuple[int, ...] = Field(
        (96,), description="the CNN's conv channels when cfg.channels is None and wide_default is on")
    cnn_skip_projection: bool = Field(
        True, description="CNN: the readout reads the last conv block, the dense projection is dropped")


class Hebbian(Learner):
    own_network = "it builds its own wide competitive hidden layers with its own activation"
    name = "hebbian"
    description = "Unsupervised competitive Hebbian hidden layers (SoftHebb / Krotov-Hopfield) + delta-rule readout"
    Options = HebbianOptions
    claims = Claims(
        c1_no_weight_transport=yes("hidden layers learn from their own input and output only; no feedback pathway"),
        c2_local_error=yes("hidden updates use pre- and post-synaptic activity of the layer; the readout's delta "
                           "rule uses its own input and output"),
        c3_single_phase=yes("one forward sweep; every update uses quantities of that sweep"),
        c4_spiking=no("real-valued rates"),
        c5_label_free_hidden=yes("labels reach only the readout"),
        c6_unsigned_error=partial("hidden layers use no error at all; the readout's delta rule uses a signed error"),
    )

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def network_for(cls, cfg) -> dict:
        # the rule's own wide shape, unless the config names one
        net = super().network_for(cfg)
        o = cls.Options(**cfg.rule_options)
        if not net and o.wide_default:
            net = {"widths": (o.wide_width,)} if cfg.model == "mlp" else {"channels": tuple(o.wide_channels)}
        return net

    def setup(self) -> None:
        o = self.opts
        if self.stack.arch == "cnn" and o.cnn_skip_projection:
            # a competitive layer narrower than its input is a bottleneck: on mnist5k a
            # readout on the conv3 output beat one on a 256-unit Hebbian or random
            # projection by ~3 points
            self.stack = without_projection(self.stack, self.cfg.seed + 1)
        with torch.no_grad():
            for layer in self.hidden:
                w = layer.weight.view(layer.out_features, -1)
                w.mul_(o.init_radius / w.norm(dim=1, keepdim=True).clamp_min(1e-12))
                layer.weight.requires_grad_(False)
                if layer.bias is not None:
                    layer.bias.zero_()
                    layer.bias.requires_grad_(False)
        self.hidden_lr = o.hidden_lr if o.hidden_lr is not None else (0.3 if self.stack.arch == "mlp" else 0.05)
        # checkpointed with the module, so a resumed run knows how far hidden learning got
        self.register_buffer("hebb_steps_done", torch.zeros((), dtype=torch.long))

    @property
    def hidden(self) -> list[Layer]:
        return list(self.stack.layers)[:-1]

    @property
    def readout(self) -> Layer:
        return self.stack.layers[-1]

    def trainable_parameters(self):
        return [p for p in self.readout.parameters()]

    # -- forward ---------------------------------------------------------------------------
    def represent(self, layer: Layer, u: torch.Tensor) -> torch.Tensor:
        """The layer's output passed on (activation of the drive, then the layer's pooling)."""
        o = self.opts
        if o.hidden_act == "layer":
            h = layer.post(u)
        else:
            if o.hidden_act == "triangle":
                h = (u - u.mean(1, keepdim=True)).relu_()
            else:
                h = torch.relu(u)
            if layer.pool > 1:
                h = F.max_pool2d(h, layer.pool)
        if o.act_power != 1.0:
            h = h.pow(o.act_power)
        return h

    def hidden_forward(self, x: torch.Tensor):
        """Inputs and drives of each hidden layer, and the last hidden representation."""
        inputs, drives = [], []
        for i, layer in enumerate(self.hidden):
            x = self.normalise_input(x, i)
            inputs.append(x)
            u = layer.drive(x)
            if u.dim() == 4:
                # channels-last: the competition across maps at each position (softmax,
                # argmax) and the pooling become contiguous reductions, several times faster
                # on CPU than across a (maps, h, w) layout
                u = u.contiguous(memory_format=torch.channels_last)
            drives.append(u)
            x = self.represent(layer, u)
        return inputs, drives, x

    def normalise_input(self, x: torch.Tensor, i: int) -> torch.Tensor:
        """What a deeper layer sees of the layer below (the first layer sees the data).

        ``rms``: divided by its per-sample RMS (a divisive normalisation): otherwise each
        layer's drive, and with it the softmax's sharpness, would depend on the scale of the
        layers below. ``center`` also subtracts, per sample, each channel's mean over
        positions (over units for a dense layer) first, as Journé et al.'s batch norm does
        with batch statistics: rectified inputs share a large common component, which every
        competitive unit would otherwise learn."""
        mode = self.opts.layer_input_norm
        if i == 0 or mode == "none":
            return x
        if mode == "center":
            dims = tuple(range(2, x.dim())) if x.dim() > 2 else (1,)
            x = x - x.mean(dims, keepdim=True)
        return x / x.flatten(1).pow(2).mean(1).sqrt().clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1)))

    def readout_input(self, h: torch.Tensor) -> torch.Tensor:
        h = h.flatten(1)
        if self.opts.readout_norm:
            h = h * (math.sqrt(h.shape[1]) / h.norm(dim=1, keepdim=True).clamp_min(1e-12))
        return h

    @torch.no_grad()
    def predict(self, x):
        _, _, h = self.hidden_forward(x)
        return self.readout.drive(self.readout_input(h))

    @torch.no_grad()
    def activations(self, x):
        out = {}
        for i, layer in enumerate(self.hidden):
            x = self.normalise_input(x, i)
            x = self.represent(layer, layer.drive(x))
            out[layer.name] = x
        out[self.readout.name] = self.readout.drive(self.readout_input(x))
        return out

    # -- the Hebbian rules -----------------------------------------------------------------
    def post_factor(self, u: torch.Tensor) -> torch.Tensor:
        """The rule's post-synaptic factor g (same shape as u; units along dim 1)."""
        o = self.opts
        if o.hidden_rule == "softhebb":
            # units along the last dim of a view (a conv drive is channels-last, see
            # `hidden_forward`), where softmax and argmax run fastest
            ul = u.permute(0, 2, 3, 1) if u.dim() == 4 else u
            y = torch.softmax(ul / o.temperature if o.temperature != 1.0 else ul, dim=-1)
            if o.anti_hebbian:
                # in place: y is the layer's largest temporary
                win = ul.argmax(-1, keepdim=True)
                top = y.gather(-1, win)
                y = y.neg_().scatter_(-1, win, top)
            return y.permute(0, 3, 1, 2) if u.dim() == 4 else y
        if o.hidden_rule == "krotov":
            idx = u.topk(o.krotov_k, dim=1).indices
            g = torch.zeros_like(u)
            g.scatter_(1, idx[:, :1], 1.0)
            g.scatter_(1, idx[:, o.krotov_k - 1 : o.krotov_k], -o.krotov_delta)
            return g
        if o.hidden_rule == "oja":
            return u
        return torch.relu(u)  # hebb

    def hebbian_update(self, layer: Layer, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """dW of one hidden layer for a batch (input x, drive u), before the rate."""
        g = self.post_factor(u)
        hebb, _ = layer.weight_grad(g, x)  # sum over batch (and positions) of g x^T
        if self.opts.hidden_rule == "hebb":
            return hebb
        dims = (0,) if u.dim() == 2 else (0, 2, 3)
        decay = (g * u).sum(dims)  # sum of g_k u_k: the (x - u_k w_k) form's forgetting term
        return hebb - decay.view(-1, *([1] * (layer.weight.dim() - 1))) * layer.weight

    @torch.no_grad()
    def hebbian_step(self, inputs, drives) -> dict[str, float]:
        o = self.opts
        stats = {}
        for layer, x, u in zip(self.hidden, inputs, drives):
            dw = self.hebbian_update(layer, x, u)
            w = layer.weight
            rows = w.view(w.shape[0], -1)
            if o.hidden_rule == "hebb":
                # plain Hebb has no decay: scale-free step, then back onto the unit sphere
                dw = dw / dw.abs().max().clamp_min(1e-30)
                rows.add_(self.hidden_lr * dw.reshape(rows.shape))
                rows.div_(rows.norm(dim=1, keepdim=True).clamp_min(1e-12))
                continue
            dw = dw / dw.abs().max().clamp_min(1e-30)
            if o.adaptive_lr:
                lr = self.hidden_lr * (rows.norm(dim=1) - 1.0).abs().add(1e-10).sqrt()
            else:
                lr = torch.full((w.shape[0],), self.hidden_lr, device=w.device)
            # conv2d_weight may return a non-contiguous (channels-last) gradient: reshape, not view
            rows.add_(lr.view(-1, 1) * dw.reshape(rows.shape))
            stats[f"norm_{layer.name}"] = rows.norm(dim=1).mean().item()
        return stats

    def train_step(self, x, y):
        stats: dict[str, float] = {}
        inputs, drives, h = self.hidden_forward(x)
        if self.opts.hebb_steps == 0 or self.hebb_steps_done.item() < self.opts.hebb_steps:
            # the hidden update is computed from x alone, before y is looked at
            stats = self.hebbian_step(inputs, drives)
            self.hebb_steps_done += 1
        # the readout learns from the same sweep's representation (one forward pass per step)
        with torch.no_grad():
            r = self.readout_input(h)
            if self.opts.readout_dropout > 0 and self.training:
                r = F.dropout(r, self.opts.readout_dropout, training=True)
        loss, logits = self.delta_rule(self.readout, r, y)
        return {"loss": loss, "correct": (logits.argmax(1) == y).sum(), **stats}
