"""Equilibrium propagation (Scellier & Bengio 2017), in the discrete-time, primitive-function
form of Ernoult et al. 2019 / Laborieux et al. 2021, for the MLP and for the CNN.

The network
-----------
The states are the layer outputs s_0 .. s_{K-1} (s_{-1} = x is clamped to the input), bounded
in [0, 1] by the hard sigmoid (`default_act = "hardsigmoid01"`). The primitive function is

    Phi(x, s) = sum_l  s_l . P_l(W_l s_{l-1} + b_l)

with P_l the layer's max-pooling for conv layers with pooling (Laborieux 2021's
convolutional primitive function) and the identity otherwise. Equivalently the energy
E(s) = 1/2 ||s||^2 - Phi(s) on the box [0, 1]^n; its minima are the fixed points of

    s_l  <-  clamp( P_l(W_l s_{l-1} + b_l)  +  W_{l+1}^T U_{l+1}(s_{l+1})  [+ nudge], 0, 1 )

(U = max-unpooling at the argmax of layer l+1's pool, i.e. dPhi/ds_l), which is what the
relaxation iterates. The bottom-up term is `Layer.drive`; the top-down term W^T s is the
*symmetric* connection: EP assumes W_{l+1}^T carries the feedback (weight transport, C1 no).

Output, two options (`loss`):
* "ce" (default, Laborieux 2021's readout variant): the last layer of the stack is a linear
  readout o = W_L s_{K-1} + b_L outside the energy; the cross-entropy L = CE(o, y) nudges the
  top hidden layer by -beta dL/ds_{K-1} = -beta W_L^T (softmax(o) - onehot(y)). The readout
  learns by its local delta rule (output error x presynaptic rate) at the free equilibrium,
  which is its exact gradient. Prediction: o at the free equilibrium.
* "mse" (Scellier & Bengio 2017): the output layer is a state too (in [0, 1]); the nudge is
  -beta (s_L - onehot(y)); prediction: the free-phase output state.

Learning
--------
Free phase: relax with beta = 0 for at most T1 steps from a feedforward sweep (s_l =
clamp(P_l(W_l s_{l-1} + b_l)), no feedback; `init="forward"`, default) or from s = 0
(`init="zeros"`, Laborieux's choice); nudged phase: relax with beta for at most T2 steps from the free
equilibrium. Each weight's update is the contrastive, per-synapse local rule

    dW_l ∝ (1/beta) [ dPhi/dW_l(s^beta) - dPhi/dW_l(s^0) ],   dPhi/dW_l = U_l(s_l) s_{l-1}^T

(pre x post rates, for conv layers the same correlation under the pool's argmax routing),
which tends to -dL/dW at the free equilibrium as beta -> 0 (the gradient of the loss at the
fixed point, equal to the recurrent-backprop / BPTT gradient; checked in tests/test_ep.py).
`symmetric=True` (default) uses two nudged phases at +beta and -beta and the centred
difference [dPhi/dW(s^+beta) - dPhi/dW(s^-beta)] / (2 beta), which removes the O(beta) bias
(Laborieux 2021, essential for deeper/conv nets). `random_sign=True` (one-sided only) draws
the sign of beta per batch, which also cancels the bias on average. The updates go, in
gradient convention, to the optimiser shared by all rules (`apply_updates`).

What is computed how: no autograd at all. The relaxation uses closed-form dPhi/ds (the
drives through `Layer.drive`, the feedback through `Layer.input_grad` with the layer's own
W, max-pool routing by pooling indices); the weight update uses `Layer.weight_grad` on the
states at the two equilibria. No loss is ever backpropagated through the network.

Relaxation schedule (`update`): the layered network is bipartite (even / odd layers), and
given its neighbours a layer's exact minimiser of E is the clamp above. "alternate"
(default) updates even layers, then odd layers: block-coordinate descent on E, which
decreases E monotonically (for the MLP) and settles in far fewer steps than the synchronous
update; "sync" updates all layers at once (Laborieux's scheme; can oscillate). Relaxation
stops early once max |s_{t+1} - s_t| < tol. One "step" updates every layer once.

Practical notes (measured on CPU, small data; see the report of issue 4):
* With `loss="ce"` and ONE hidden layer the hidden layer gets no top-down input in the free
  phase (the readout is outside the energy), so the free phase is a feedforward pass and only
  the nudged phase is recurrent; use two hidden layers for a genuinely recurrent network.
* `loss="mse"` with hard-sigmoid outputs can lose output units: an output driven below 0
  cannot be nudged back (clamp), so it stops learning. With Adam at lr 1e-3 most outputs die; at a
  lower rate it learns (docs/notes/ep.md). With mse and one hidden layer the network is genuinely
  recurrent (output <-> hidden), which is Scellier & Bengio's original setting.
* An energy network needs balanced fan-in / fan-out between neighbouring layers: the loop
  gain of s_l <-> s_{l+1} grows like fan_out / fan_in of W_{l+1}; with much wider layers above
  narrow ones (e.g. 8 conv channels under a 256-unit projection) the feedback saturates the
  states at 0/1 and learning stalls. The CNN presets are balanced enough.
* Small beta gives an accurate gradient only if the relaxations converge. The conv net does
  not settle within T1 = 30 (nor 400 steps at tol 1e-6: single units keep flipping); yet on
  digits T1 = 30, T2 = 10, beta = 0.5 learned at least as well as longer relaxations (T2 = 20)
  or over-relaxation (omega = 1.6), which we measured and did not adopt as defaults. The
  feedforward initial state with beta = 0.25 did better than zeros with beta = 0.5 (on the
  CNN and the MLP: docs/notes/ep.md), hence the defaults.
* "alternate" converges where "sync" oscillates (sync with omega > 1 diverges).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from .claims import Claims, no, yes
from .base import Learner


class EPOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # the MLP's phases: shorter than the CNN's (ConvEPOptions), as accurate on full MNIST
    # (paper MLP, 3 epochs, seed 0: 95.32% at 10/4 vs 94.92% at 30/10; docs/notes/ep.md)
    T1: int = Field(10, ge=1, description="free-phase relaxation steps (at most)")
    T2: int = Field(4, ge=1, description="nudged-phase relaxation steps (at most)")
    T_eval: int | None = Field(None, ge=1, description="relaxation steps at prediction (default T1)")
    beta: float = Field(0.25, gt=0, description="nudging strength")
    symmetric: bool = Field(True, description="two nudged phases, +beta and -beta (centred EP)")
    random_sign: bool = Field(False, description="one-sided nudging with a random sign per batch")
    tol: float = Field(1e-3, ge=0, description="stop relaxing when max |s_t+1 - s_t| < tol (0: never)")
    loss: Literal["ce", "mse"] = Field("ce", description="ce: linear readout + cross-entropy; mse: output state")
    update: Literal["alternate", "sync"] = Field("alternate", description="relaxation schedule")
    omega: float = Field(1.0, gt=0, lt=2, description="over-relaxation factor of the state update (1: plain)")
    init: Literal["zeros", "forward"] = Field("forward", description="free-phase initial state")
    lr_scale: tuple[float, ...] | None = Field(None, description="per-layer learning-rate factors")


class ConvEPOptions(EPOptions):
    """EP's options on the CNN: longer phases (the conv net does not settle in the MLP's)."""

    T1: int = Field(30, ge=1, description="free-phase relaxation steps (at most)")
    T2: int = Field(10, ge=1, description="nudged-phase relaxation steps (at most)")


class EquilibriumPropagation(Learner):
    name = "ep"
    description = "Equilibrium propagation: free/nudged relaxation, contrastive local update (centred EP)"
    default_act = "hardsigmoid01"
    Options = EPOptions
    architectures = ("mlp",)
    claims = Claims(
        c1_no_weight_transport=no(
            "the feedback W_{l+1}^T s_{l+1} of the energy's dynamics uses the forward weights: EP "
            "requires symmetric connections. The reference table's 'yes' presumes reciprocal "
            "synapses that stay symmetric on their own (equal local updates); here they are "
            "literally the same weights, which the weight-transport probe sees"
        ),
        c2_local_error=yes(
            "each synapse changes by the difference of its pre x post rate products between the "
            "two equilibria; no error is carried to it"
        ),
        c3_single_phase=no(
            "a free phase and one or two nudged phases whose equilibria are contrasted (the "
            "reference table says yes; the update needs the free equilibrium kept across phases)"
        ),
        c4_spiking=no("real-valued rates"),
        c5_label_free_hidden=no("the label nudges the output, and through the dynamics every layer"),
        c6_unsigned_error=no(
            "no error signal is sent, but the update is a difference between phases of mixed sign across units"
        ),
    )

    # -- structure ------------------------------------------------------------------------
    def setup(self) -> None:
        o = self.opts
        if o.symmetric and o.random_sign:
            raise ValueError("rule option random_sign applies to one-sided nudging: set symmetric=false")
        layers = self.stack.layers
        # number of state layers: with a readout the last layer is outside the energy
        self.K = len(layers) - 1 if o.loss == "ce" else len(layers)
        if self.K < 1:
            raise ValueError("EP needs at least one hidden layer")
        if any(l.pool > 1 and l.pool_kind != "max" for l in layers):
            raise ValueError("ep: only max-pooling is supported (its states route through the pool's argmax)")
        if o.loss == "mse" and layers[-1].act != "hardsigmoid01":
            # the output is a state of the network here and must be bounded like the others
            layers[-1].act = "hardsigmoid01"
        self._gen = torch.Generator().manual_seed(self.cfg.seed + 104_729)

    def trainable_parameters(self):
        params = [p for p in self.parameters() if p.requires_grad]
        if self.opts.lr_scale is None:
            return params
        layers = self.stack.layers
        if len(self.opts.lr_scale) != len(layers):
            raise ValueError(f"lr_scale needs one factor per layer ({len(layers)}), got {len(self.opts.lr_scale)}")
        return [
            {"params": [p for p in (l.weight, l.bias) if p is not None], "lr": self.cfg.lr * f}
            for l, f in zip(layers, self.opts.lr_scale)
        ]

    # -- the energy's pieces ----------------------------------------------------------------
    def _bottom_up(self, l: int, inp: torch.Tensor):
        """P_l(W_l s_{l-1} + b_l) and the pool's argmax (None without pooling)."""
        layer = self.stack.layers[l]
        a = layer.drive(inp)
        if layer.kind == "conv" and layer.pool > 1:
            p, idx = F.max_pool2d(a, layer.pool, return_indices=True)
            return p, (idx, a.shape[-2:])
        return a, None

    def _route(self, l: int, s: torch.Tensor, route) -> torch.Tensor:
        """U_l(s_l): the state sent back to the pre-pool map at the pool's argmax."""
        if route is None:
            return s
        idx, size = route
        return F.max_unpool2d(s, idx, self.stack.layers[l].pool, output_size=size)

    def _top_down(self, l: int, s_next: torch.Tensor, route, shape) -> torch.Tensor:
        """dPhi/ds_l through layer l+1: W_{l+1}^T U_{l+1}(s_{l+1}) (the symmetric feedback)."""
        layer = self.stack.layers[l + 1]
        return layer.input_grad(self._route(l + 1, s_next, route), layer.weight, shape)

    def _nudge(self, s_top: torch.Tensor, onehot: torch.Tensor, beta: float) -> torch.Tensor:
        """-beta dL/ds_top (beta a number or one per sample)."""
        if torch.is_tensor(beta):
            beta = beta.view(-1, *([1] * (s_top.dim() - 1)))
        if self.opts.loss == "mse":
            return -beta * (s_top - onehot)
        readout = self.stack.layers[-1]
        err = torch.softmax(readout.drive(s_top), 1) - onehot
        return -beta * readout.input_grad(err, readout.weight, s_top.shape)

    # -- relaxation -------------------------------------------------------------------------
    @torch.no_grad()
    def initial_state(self, x: torch.Tensor) -> list[torch.Tensor]:
        s, inp = [], x
        for l in range(self.K):
            p, _ = self._bottom_up(l, inp)
            s.append(p.clamp(0, 1) if self.opts.init == "forward" else torch.zeros_like(p))
            inp = s[-1]
        return s

    @torch.no_grad()
    def relax(self, x, s: list[torch.Tensor], steps: int, beta: float = 0.0, onehot=None):
        """Iterate the fixed-point map for at most `steps` steps; returns (states, steps run)."""
        s, t, _ = self._relax(x, s, steps, beta, onehot)
        return s, t

    def _relax(self, x, s: list[torch.Tensor], steps: int, beta: float = 0.0, onehot=None, cache=None):
        """`relax`, also taking and returning `cache` = (drives, routes) of every layer at the
        states (from `_bottom_up`), so the phases that follow need not recompute them."""
        K, tol, omega = self.K, self.opts.tol, self.opts.omega
        # beta: a number, or one per sample (a column shaped to broadcast over a state)
        nudged = bool(torch.is_tensor(beta) or beta != 0.0)
        s = list(s)
        # pooling routes of every layer at the current states (route[l] depends on s_{l-1} only)
        if cache is not None:
            drive, route = list(cache[0]), list(cache[1])
        else:
            drive, route = [None] * K, [None] * K
            for l in range(K):
                drive[l], route[l] = self._bottom_up(l, x if l == 0 else s[l - 1])
        groups = [list(range(0, K, 2)), list(range(1, K, 2))] if self.opts.update == "alternate" else [list(range(K))]
        groups = [g for g in groups if g]
        t = 0
        for t in range(1, steps + 1):
            change = x.new_zeros(())
            for g in groups:
                new = {}
                for l in g:
                    h = drive[l]
                    if l + 1 < K:
                        h = h + self._top_down(l, s[l + 1], route[l + 1], s[l].shape)
                    if l == K - 1 and nudged:
                        h = h + self._nudge(s[l], onehot, beta)
                    if omega != 1.0:
                        # projected over-relaxation: same fixed points, faster when slow
                        h = torch.lerp(s[l], h, omega)
                    new[l] = h.clamp(0, 1)  # not in place: h may be the cached drive
                for l, v in new.items():
                    if tol > 0:
                        change = torch.maximum(change, (v - s[l]).abs().max())
                    s[l] = v
                # the drives (and pool routes) of the layers above the updated ones are stale
                for l in sorted({l + 1 for l in g if l + 1 < K}):
                    drive[l], route[l] = self._bottom_up(l, s[l - 1])
            if tol > 0 and change.item() < tol:
                break
        # every drive and route is current here: each group's update refreshed those above it
        return s, t, (drive, route)

    def free_phase(self, x: torch.Tensor, steps: int | None = None):
        s, t, _ = self._free_phase(x, steps)
        return s, t

    @torch.no_grad()
    def _free_phase(self, x: torch.Tensor, steps: int | None = None):
        if self.opts.init != "forward":
            return self._relax(x, self.initial_state(x), steps or self.opts.T1)
        # the feedforward sweep's drives are the relaxation's first drives: computed once
        s, drive, route, inp = [], [], [], x
        for l in range(self.K):
            a, r = self._bottom_up(l, inp)
            drive.append(a)
            route.append(r)
            s.append(a.clamp(0, 1))
            inp = s[-1]
        return self._relax(x, s, steps or self.opts.T1, cache=(drive, route))

    # -- learning ---------------------------------------------------------------------------
    @torch.no_grad()
    def _dphi_dw(self, x, s, routes=None, weights=None) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """dPhi/dW_l, dPhi/db_l summed over the batch: the post x pre correlation per synapse.
        `routes`: the pools' argmax at these states, when the relaxation has them; `weights`:
        a factor per sample (shaped to broadcast over a state) of its term in the sum."""
        out = []
        for l in range(self.K):
            inp = x if l == 0 else s[l - 1]
            layer = self.stack.layers[l]
            if routes is not None:
                route = routes[l]
            elif layer.kind == "conv" and layer.pool > 1:
                _, route = self._bottom_up(l, inp)  # only for the pooling's argmax at this state
            else:
                route = None
            post = self._route(l, s[l], route)
            if weights is not None:
                post = post * weights.view(-1, *([1] * (post.dim() - 1)))
            out.append(layer.weight_grad(post, inp))
        return out

    def scores(self, s: list[torch.Tensor]) -> torch.Tensor:
        if self.opts.loss == "mse":
            return s[-1].flatten(1)
        return self.stack.layers[-1].drive(s[-1])

    @torch.no_grad()
    def compute_grads(self, x: torch.Tensor, y: torch.Tensor, beta: float | None = None):
        """EP's weight updates in gradient convention; returns (loss, scores, grads, info)."""
        o = self.opts
        beta = o.beta if beta is None else beta
        layers = self.stack.layers
        s0, t_free, c0 = self._free_phase(x)
        out = self.scores(s0)
        onehot = F.one_hot(y, layers[-1].out_features).to(out.dtype)
        if o.loss == "mse":
            onehot = onehot.view_as(s0[-1])
            loss = 0.5 * ((s0[-1] - onehot) ** 2).flatten(1).sum(1).mean()
        else:
            loss = F.cross_entropy(out, y)
        n = len(x)
        if o.symmetric:
            # both nudged phases start from the free equilibrium, with its drives, and run as
            # one relaxation of the batch twice over (+beta, then -beta): the same arithmetic
            # in products twice as tall
            two = lambda t: torch.cat([t, t])  # noqa: E731
            signs = torch.cat([x.new_ones(n), -x.new_ones(n)])
            drive, route = c0
            cache = ([two(d) for d in drive], [None if r is None else (two(r[0]), r[1]) for r in route])
            x2 = two(x)
            s2, t_nudge, c2 = self._relax(x2, [two(v) for v in s0], o.T2, beta * signs, two(onehot), cache)
            # dPhi/dW(s^+beta) - dPhi/dW(s^-beta) in one product: the -beta half enters negated
            g = self._dphi_dw(x2, s2, c2[1], signs)
            denom = 2 * beta
        else:
            if o.random_sign and torch.rand((), generator=self._gen).item() < 0.5:
                beta = -beta
            sb, t_nudge, cb = self._relax(x, s0, o.T2, beta, onehot, c0)
            g_hi, g_lo = self._dphi_dw(x, sb, cb[1]), self._dphi_dw(x, s0, c0[1])
            g = [(a[0] - b[0], None if a[1] is None else a[1] - b[1]) for a, b in zip(g_hi, g_lo)]
            denom = beta
        grads: dict[nn.Parameter, torch.Tensor | None] = {}
        for l in range(self.K):
            # -(1/beta)[dPhi/dW(s^beta) - dPhi/dW(s^0)], averaged over the batch
            grads[layers[l].weight] = -g[l][0] / (denom * n)
            if layers[l].bias is not None:
                grads[layers[l].bias] = -g[l][1] / (denom * n)
        if o.loss == "ce":
            # the readout's local delta rule at the free equilibrium (its exact gradient)
            gw, gb = layers[-1].weight_grad((torch.softmax(out, 1) - onehot) / n, s0[-1])
            grads[layers[-1].weight] = gw
            if layers[-1].bias is not None:
                grads[layers[-1].bias] = gb
        info = {"free_steps": t_free, "nudged_steps": t_nudge}
        return loss, out, grads, info

    def train_step(self, x, y):
        loss, out, grads, info = self.compute_grads(x, y)
        self.apply_updates(grads)
        return {"loss": loss, "correct": (out.argmax(1) == y).sum(), **info}

    @torch.no_grad()
    def predict(self, x):
        s, _ = self.free_phase(x, self.opts.T_eval or self.opts.T1)
        return self.scores(s)

    @torch.no_grad()
    def activations(self, x):
        s, _ = self.free_phase(x, self.opts.T_eval or self.opts.T1)
        layers = self.stack.layers
        acts = {layers[l].name: s[l] for l in range(self.K)}
        if self.opts.loss == "ce":
            acts[layers[-1].name] = self.scores(s)
        return acts


class ConvEquilibriumPropagation(EquilibriumPropagation):
    """``ep`` on the CNN: the same rule with the CNN's phase lengths (`ConvEPOptions`)."""

    Options = ConvEPOptions
    architectures = ("cnn",)
