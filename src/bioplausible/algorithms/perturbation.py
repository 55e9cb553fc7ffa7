"""Perturbation learning: weight perturbation (WP) and node perturbation (NP).

Williams (1992) "Simple statistical gradient-following algorithms..." and Werfel, Xie &
Seung (2003/2005) "Learning curves for stochastic gradient descent in linear feedforward
networks". No gradient is computed or propagated: the network is run again with a small
random perturbation, and the *change in the loss* (one scalar per sample) is correlated
with the perturbation that caused it. In expectation that is the gradient:

    E[ (L(z + s xi) - L(z - s xi)) / (2 s) * xi ] = dL/dz + O(s^2),   xi ~ N(0, I)

- **Weight perturbation** perturbs the weights, z = W: the update for W is the loss change
  times the weight noise. With `flipout` (default) every sample of a copy sees its own
  sign-flipped version of the copy's noise, Xi * r_b s_b^T with random sign vectors r_b
  (outputs) and s_b (inputs) (Flipout, Wen et al. 2018): r_b * (Xi (s_b * x_b)) costs one
  product like the shared noise, the signal is each sample's own loss change, and a draw
  measures B pseudo-independent directions instead of one. Without it the batch shares
  one weight perturbation per copy and the signal is the batch-mean loss change.
- **Node perturbation** perturbs the units, z = h_l: the loss change of sample b times that
  sample's noise is an estimate of dL_b/dh_l (a scalar 'error' per unit), turned into
  dL_b/da_l by the unit's own local derivative, and the weight update is the usual outer
  product with the layer's (clean) input, dW_l = sum_b (dL_b * xi_l,b / s) x_l,b^T. The
  estimate has far fewer dimensions than WP (units instead of synapses), so it learns much
  faster (Werfel et al.). `site` says where the noise goes: "output" (default) on the unit's
  output h_l = post(a_l), after the activation and the max-pooling, only for units that are
  on; "drive" on the pre-activation a_l (every unit, the estimate then gated). To first
  order the two are the same (noise on a silent unit or a pool loser does not reach the
  output), but "output" starts the perturbed copies from the cached h_l, never runs layer
  l's activation and pooling on them, and draws a quarter of the noise for a pooled layer:
  the CNN step ran 4x faster (8.96 s -> 2.26 s per batch of 128 with K=16 on one thread,
  with the channels-last copies below; BP 0.23 s).

Choices, and why
- **Antithetic sampling** (default on): each noise draw is used as +xi and -xi (two
  passes). The central difference cancels the even-order terms of the loss change, so the
  estimate stays unbiased to O(s^2) at a sigma large enough to be far above float32
  round-off; off, the clean loss is the baseline (one pass per draw, O(s) bias).
- **Several perturbations per batch** (`n_perturbations`, K): the K (x2 antithetic) perturbed
  copies of the batch are stacked and run as one batched forward.
- **Per-layer noise** (`layerwise`, default on): each layer is perturbed in its own batched
  pass, so a layer's learning signal is not drowned in the loss changes caused by the other
  layers' noise (the variance of the estimate grows with the number of simultaneously
  perturbed units). Because the clean forward pass is cached, the pass that perturbs layer
  l starts from its cached drive and runs only layers l+1..L, so the cost is roughly L/2
  extra forwards per copy. With
  `layerwise=false` every layer is perturbed at once (Williams' original form; one pass).
- **Balanced draws** (`balance`, layerwise only): the pass that perturbs the first layer
  runs the whole network, the readout's runs nothing but the loss, yet both get K draws by
  default. With `balance` layer l gets K C_0 / C_l draws (at most 16 K), C_l being the
  multiply-adds of its pass per draw, so the cheap top layers get low-variance estimates for
  about the cost of the first layer's pass each. What balancing gained is in
  docs/notes/perturbation.md.
- **Gating** (NP, `gate`, default on): no noise (site output) or no estimate (site drive)
  where the unit's own local derivative is 0 (rectifier off, lost the max-pool). There the
  true gradient is 0 and the estimate would be pure noise; the unit's own activity is local
  information (the eligibility of its synapses), so this is a variance reduction, not a
  gradient.
- Feature-map copies are built channels-last (noise drawn as (K, B, H, W, C)): CPU
  convolution and pooling ran 1.7x and 2.6x faster on them.
- Noise is drawn per layer at scale `sigma` (NP: absolute, on pre-activations, which our
  Kaiming init keeps O(1); WP: relative to each layer's init bound 1/sqrt(fan_in), so one
  sigma fits layers of very different fan-in).
- Every forward computation goes through `Layer.drive` / `Layer.post`. For WP the
  perturbation's contribution Xi x is added to `drive(x)` with the noise tensor itself
  (never by reading `layer.weight`), so the learning pathway uses no forward weights.
- Updates go through the shared optimiser (Adam by default) via `apply_updates`; the rule
  itself runs entirely under `torch.no_grad()`.
- Random numbers come from a `torch.Generator` seeded from `cfg.seed` on the input's device;
  its state is checkpointed.
- Defaults: the `Options` fields' (`bioplausible list --options wp`), not repeated here. The
  learning rate is the run's (`cfg.lr`).

What was measured with these rules (and why WP's CNN needs long schedules: the variance of a
layer's estimate grows with its number of weights over the number of directions measured)
is in docs/notes/perturbation.md, with the commands.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from .claims import Claims, no, partial, yes
from ..models import ACTIVATIONS, Layer, act_derivative, without_projection
from .base import Learner

_CLAIMS_COMMON = dict(
    c1_no_weight_transport=yes("no backward pathway at all: the learning signal is a scalar loss change"),
    c2_local_error=partial(
        "each synapse combines its own (or its unit's) perturbation, its input and ONE broadcast scalar, the "
        "change in the loss; no error vector is carried through other layers' weights (the reference paper "
        "counts this as local), but the scalar is computed at the output, like a neuromodulator"
    ),
    c3_single_phase=no("a clean pass and perturbed passes whose losses must be compared (two or more passes)"),
    c4_spiking=no("real-valued rates"),
    c5_label_free_hidden=no("the broadcast loss change is computed from the label"),
    c6_unsigned_error=partial("one signed scalar per sample, the loss change, reaches every synapse (reward-prediction-like), no per-neuron error"),
)


def _unit_gate(layer: Layer, a: torch.Tensor) -> torch.Tensor:
    """1 where a unit's pre-activation change reaches the layer's output (rectifier on and,
    for pooled conv layers, the max-pool winner), computed without autograd."""
    try:
        g = act_derivative(layer.act, a)
    except ValueError:  # an activation without closed-form derivative: no gating
        g = torch.ones_like(a)
    if layer.pool > 1 and layer.pool_kind == "max":  # average pooling passes every unit on
        h = ACTIVATIONS[layer.act](a)
        _, idx = F.max_pool2d(h, layer.pool, return_indices=True)
        mask = torch.zeros_like(h).flatten(2).scatter_(2, idx.flatten(2), 1.0).view_as(h)
        g = g * mask
    return g


class _PerturbationOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sigma: float = Field(1e-2, gt=0, description="perturbation size")
    n_perturbations: int = Field(16, ge=1, le=65536, description="noise draws per batch (K)")
    antithetic: bool = Field(True, description="use each draw as +xi and -xi (central difference)")
    layerwise: bool = Field(True, description="perturb each layer in its own pass (per-layer noise)")
    balance: bool = Field(
        False, description="layerwise: more draws for a layer whose perturbed pass is cheaper, up to the cost of "
                           "the first layer's K draws (at most 16 K)"
    )


class _NodeOptions(_PerturbationOptions):
    gate: bool = Field(
        True, description="NP: keep the estimate only where the unit's own output could pass the perturbation on"
    )
    site: Literal["output", "drive"] = Field(
        "output", description="NP: perturb each unit's output (after activation and pooling) or its pre-activation "
                              "(with layerwise=false all layers are perturbed at once, at the pre-activations)"
    )


class _WeightOptions(_PerturbationOptions):
    flipout: bool = Field(
        True, description="WP: per-sample sign flips of each draw (Flipout), B pseudo-independent perturbations per draw"
    )
    cnn_skip_projection: bool = Field(
        True, description="WP on the CNN: drop the dense projection, the readout reads the last conv block"
    )


def _stacked(base: torch.Tensor, term: torch.Tensor, mirror: bool = False) -> torch.Tensor:
    """base (B, ...) + term (copies, B, ...), as (copies * B, ...); with `mirror` followed by
    base - term (2 * copies * B, ...: the antithetic copies, whose term is computed once).
    Feature maps written channels-last, where CPU convolution and pooling run 1.7-2.6x faster."""
    copies, bsz = term.shape[:2]
    n = 2 * copies if mirror else copies
    if term.dim() != 5:
        out = torch.empty((n, *term.shape[1:]), dtype=term.dtype, device=term.device)
        parts = out
    else:
        c, hh, ww = term.shape[2:]
        buf = torch.empty(n * bsz, hh, ww, c, dtype=term.dtype, device=term.device)
        out = buf.permute(0, 3, 1, 2)
        parts = out.view(n, bsz, c, hh, ww)
    torch.add(base.unsqueeze(0), term, out=parts[:copies])
    if mirror:
        torch.sub(base.unsqueeze(0), term, out=parts[copies:])
    return out.flatten(0, 1) if term.dim() != 5 else out


def _output_gate(layer: Layer, h: torch.Tensor) -> torch.Tensor:
    """1 where a unit's output h = post(a) responds to its input (for a pooled unit: its
    winner's), 0 where the activation is flat (a rectifier off, a saturated hard sigmoid)."""
    if layer.act in ("relu", "hardsigmoid01"):
        on = h > 0
        return (on & (h < 1)).to(h.dtype) if layer.act == "hardsigmoid01" else on.to(h.dtype)
    return torch.ones_like(h)


class _Perturbation(Learner):
    Options = _PerturbationOptions
    # The plausibility probes (bioplausible.criteria) run the rule with ONE draw per update:
    # K draws are K trials whose scalar loss changes are summed, and the locality probe's
    # rank test identifies a single broadcast scalar only when there is one per update.
    probe_options: ClassVar[dict[str, Any]] = {"n_perturbations": 1}

    def setup(self) -> None:
        self._gen: torch.Generator | None = None
        self._gen_state: torch.Tensor | None = None

    # -- randomness ---------------------------------------------------------------------
    def _generator(self, device: torch.device) -> torch.Generator:
        if self._gen is None or self._gen.device != device:
            g = torch.Generator(device=device)
            g.manual_seed(self.cfg.seed + 15485863)
            if self._gen_state is not None:
                g.set_state(self._gen_state)
            self._gen = g
        return self._gen

    def _noise(self, shape, like: torch.Tensor, std: float = 1.0) -> torch.Tensor:
        g = self._generator(like.device)
        return torch.empty(shape, device=like.device, dtype=like.dtype).normal_(0.0, std, generator=g)

    def extra_state(self) -> dict[str, Any]:
        return {"rng": self._gen.get_state()} if self._gen is not None else {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if "rng" in state:
            self._gen_state = state["rng"].cpu()
            self._gen = None

    # -- helpers ------------------------------------------------------------------------
    def _signed(self, noise: torch.Tensor) -> torch.Tensor:
        """Stack the K draws as copies: [xi; -xi] when antithetic."""
        return torch.cat([noise, -noise]) if self.opts.antithetic else noise

    def _difference(self, losses: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
        """Loss change per draw divided by sigma: (L+ - L-)/(2s) or (L+ - L0)/s; shape (K, ...)."""
        if self.opts.antithetic:
            k = losses.shape[0] // 2
            return (losses[:k] - losses[k:]) / (2 * self.opts.sigma)
        return (losses - clean) / self.opts.sigma

    def _draws(self, drives: list[torch.Tensor], extra: list[int]) -> list[int]:
        """Draws per layer: K for every layer, or with `balance` (layerwise only) K_l =
        K C_0 / C_l, at most 16 K, where C_l, the cost per draw of layer l's perturbed pass,
        is the multiply-adds of layers l+1..L plus `extra[l]` (what the pass of layer l
        itself costs). The first layers' passes run the whole network; the top layers' are
        cheap, so they get many more draws (a lower-variance estimate) for the same time."""
        k, n = self.opts.n_perturbations, len(drives)
        if not (self.opts.balance and self.opts.layerwise):
            return [k] * n
        macs = [self.stack.layers[m].fan_in * drives[m][0].numel() for m in range(n)]
        cost = [sum(macs[l + 1:]) + extra[l] for l in range(n)]
        return [min(16 * k, int(k * cost[0] / c)) for c in cost]

    def _run_from(self, start: int, h: torch.Tensor, y: torch.Tensor, copies: int, drive_hook=None) -> torch.Tensor:
        """Run layers start..L on `copies` stacked copies of the batch (h: (copies*B, ...)),
        return the per-sample cross-entropy, shape (copies, B). `drive_hook(m, h, a)` may
        add a perturbation to layer m's drive."""
        layers = self.stack.layers
        for m in range(start, len(layers)):
            a = layers[m].drive(h)
            if drive_hook is not None:
                a = drive_hook(m, h, a)
            h = layers[m].post(a)
        return F.cross_entropy(h, y.repeat(copies), reduction="none").view(copies, -1)

    def predict(self, x):
        with torch.no_grad():
            return self.stack(x)


class NodePerturbation(_Perturbation):
    """Node perturbation: noise on every layer's units, per sample."""

    name = "np"
    description = "Node perturbation: unit noise x per-sample loss change (no gradients)"
    claims = Claims(**_CLAIMS_COMMON)
    Options = _NodeOptions

    @torch.no_grad()
    def compute_grads(self, x: torch.Tensor, y: torch.Tensor):
        if self.opts.site == "output" and self.opts.layerwise:
            return self._grads_at_outputs(x, y)
        layers = self.stack.layers
        n_layers, bsz = len(layers), x.shape[0]
        inputs, drives = self.stack.forward_cache(x)
        logits = layers[-1].post(drives[-1])
        clean = F.cross_entropy(logits, y, reduction="none")
        k = self.opts.n_perturbations
        copies = 2 * k if self.opts.antithetic else k
        s = self.opts.sigma
        deltas: list[torch.Tensor] = [None] * n_layers  # type: ignore[list-item]
        groups = [[l] for l in range(n_layers)] if self.opts.layerwise else [list(range(n_layers))]
        for group in groups:
            start = group[0]
            noise = {l: self._noise((k, *drives[l].shape), drives[l]) for l in group}
            if self.opts.layerwise:
                # the clean pass is cached: start at layer l with its clean drive + noise
                h = layers[start].post(self._perturbed(drives[start], noise[start]))
                losses = self._run_from(start + 1, h, y, copies)
            else:
                signed = {l: self._signed(noise[l]).flatten(0, 1) for l in group}

                def hook(m, h, a, signed=signed):
                    # the perturbed copy's own drive from its (perturbed) input, plus noise
                    return a + s * signed[m]

                h = inputs[0].repeat(copies, *([1] * (inputs[0].dim() - 1)))
                losses = self._run_from(0, h, y, copies, hook)
            d = self._difference(losses, clean)  # (K, B)
            for l in group:
                # dL_b/da_l estimate, averaged over draws; /B because the loss is the batch mean
                deltas[l] = self._average(d, noise[l]) / bsz
                if self.opts.gate:
                    # A unit whose rectifier is off (or that lost the max-pool) cannot pass its
                    # perturbation on, so its true dL/da is 0 and its estimate is pure noise.
                    # Each unit knows its own state; the gate is its local derivative.
                    deltas[l] = deltas[l] * _unit_gate(layers[l], drives[l])
        return clean.mean(), logits, self._weight_grads(deltas, inputs)

    def _grads_at_outputs(self, x: torch.Tensor, y: torch.Tensor):
        """site="output": layer l's perturbation is added to its output h_l = post(a_l) (after
        activation and pooling), the noise is drawn only for units whose output can change
        (with `gate`: rectifier on; a pooled unit's state is its winner's), and the estimate of
        dL/dh_l goes to dL/da_l through the layer's own local derivative (its activation and
        which unit won its pool). To first order this is the gated pre-activation
        perturbation (noise on a silent unit or a pool loser does not reach the output);
        the perturbed copies start from the cached h_l, so layer l's activation and pooling
        are never run on them, and a pooled layer draws a quarter of the noise."""
        layers = self.stack.layers
        bsz = x.shape[0]
        inputs, drives, backs, logits = self.stack.forward_local(x)
        clean = F.cross_entropy(logits, y, reduction="none")
        outputs = [*inputs[1:], logits]
        draws = self._draws(drives, [h[0].numel() for h in outputs])
        deltas = []
        for l in range(len(layers)):
            h, k = outputs[l], draws[l]
            copies = 2 * k if self.opts.antithetic else k
            if h.dim() == 4:
                # feature maps: channels-last copies (drawn as (K, B, H, W, C) and viewed as
                # (K, B, C, H, W)), where CPU convolution and pooling run 1.7-2.6x faster
                h = h.contiguous(memory_format=torch.channels_last)
                noise = self._noise((k, h.shape[0], *h.shape[2:], h.shape[1]), h).permute(0, 1, 4, 2, 3)
            else:
                noise = self._noise((k, *h.shape), h)
            if self.opts.gate and layers[l].act != "identity":
                noise = noise * _output_gate(layers[l], h)
            losses = self._run_from(l + 1, self._perturbed(h, noise), y, copies)
            d = self._difference(losses, clean)  # (K, B)
            deltas.append(backs[l](self._average(d, noise) / bsz))
        return clean.mean(), logits, self._weight_grads(deltas, inputs)

    def _perturbed(self, z: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The copies z + s xi (and z - s xi when antithetic), stacked: (copies * B, ...)."""
        s, k = self.opts.sigma, noise.shape[0]
        copies = 2 * k if self.opts.antithetic else k
        # written into one buffer with the noise's memory layout (torch.cat would not keep a
        # channels-last layout), z + s xi in one fused op per half
        shape = (copies, *noise.shape[1:])
        order = sorted(range(noise.dim()), key=lambda i: -noise.stride(i))
        out = torch.empty([shape[i] for i in order], dtype=z.dtype, device=z.device).permute(
            *[order.index(i) for i in range(noise.dim())])
        torch.add(z, noise, alpha=s, out=out[:k])
        if self.opts.antithetic:
            torch.sub(z, noise, alpha=s, out=out[k:])
        return out.flatten(0, 1)

    @staticmethod
    def _average(d: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """mean_k d_kb xi_kb: the loss change per sample times its noise, over the K draws."""
        return torch.einsum("kb,kb...->b...", d, noise) / d.shape[0]

    def _weight_grads(self, deltas, inputs):
        grads = {}
        for layer, delta, h in zip(self.stack.layers, deltas, inputs):
            gw, gb = layer.weight_grad(delta, h)
            grads[layer.weight] = gw
            if layer.bias is not None:
                grads[layer.bias] = gb
        return grads

    def train_step(self, x, y):
        loss, logits, grads = self.compute_grads(x, y)
        self.apply_updates(grads)
        return {"loss": loss, "correct": (logits.argmax(1) == y).sum()}


class WeightPerturbation(_Perturbation):
    """Weight perturbation: noise on the weights, per copy (Flipout: sign-flipped per sample)."""

    name = "wp"
    description = "Weight perturbation: weight noise x loss change (no gradients); Flipout per-sample noise"
    claims = Claims(**_CLAIMS_COMMON)
    Options = _WeightOptions

    def setup(self) -> None:
        super().setup()
        if self.stack.arch == "cnn" and self.opts.cnn_skip_projection and not getattr(self.stack, "custom", False):
            # The rule's own CNN shape: every weight of a layer is one dimension of that
            # layer's estimate, and the 256-unit projection (147k weights on 28x28 inputs)
            # has four times as many as the largest conv layer. mnist5k, K=4 balanced, 4
            # epochs: 0.829 test without it (lr 3e-3), 0.448 after 3 with it (lr 1e-3).
            self.stack = without_projection(self.stack, self.cfg.seed + 1)

    _BITS = torch.arange(8, dtype=torch.uint8)

    def _signs(self, shape, like: torch.Tensor) -> torch.Tensor:
        """Independent fair +-1 signs, eight from each random byte: the generator's cost is
        per number drawn (whatever its range), and the signs are millions per step."""
        g = self._generator(like.device)
        n = math.prod(shape)
        byte = torch.randint(0, 256, ((n + 7) // 8,), generator=g, device=like.device, dtype=torch.uint8)
        bits = byte.unsqueeze(1).bitwise_right_shift(self._BITS.to(like.device)).bitwise_and_(1)
        out = torch.empty(shape, device=like.device, dtype=like.dtype)
        torch.mul(bits.view(-1)[:n].view(shape), 2, out=out)
        return out.sub_(1)

    @staticmethod
    def _noise_term(layer: Layer, h: torch.Tensor, w_noise: torch.Tensor, b_noise: torch.Tensor | None, copies: int,
                    flip: tuple[torch.Tensor, torch.Tensor] | None = None, shared: bool = False) -> torch.Tensor:
        """Xi_c x_c + zeta_c for each copy c, batched, shape (copies, B, ...): h is the copies'
        inputs (copies*B, ...), or with `shared` one input (B, ...) for every copy; w_noise is
        (copies, *W.shape). Uses only the noise tensors, never the layer's weights. With
        `flip` = (r, s), sign tensors (copies, B, C_out) and (copies, B, C_in), sample b of
        copy c sees the weight noise Xi_c * r_cb s_cb^T (Flipout): r_cb * (Xi_c (s_cb * x_cb))."""
        h = layer.prepare(h)
        hc = h.unsqueeze(0) if shared else h.view(copies, -1, *h.shape[1:])
        bsz = hc.shape[1]
        flips = None
        if flip is not None:
            r, s_in = flip
            flips = s_in.view(*s_in.shape, *([1] * (hc.dim() - 3)))
        if layer.kind == "linear":
            out = torch.matmul(hc * flips if flips is not None else hc, w_noise.transpose(1, 2))
        else:
            # copies as convolution groups, channels-last (where CPU grouped convolution is
            # fastest): input (B, copies*C_in, H, W), i.e. (B, H, W, copies, C_in) in memory,
            # written there at once (with the input flips), kernels (copies*C_out, C_in, k, k)
            c_in, hh, ww = hc.shape[2:]
            buf = torch.empty(bsz, hh, ww, copies, c_in, dtype=h.dtype, device=h.device)
            target = buf.permute(3, 0, 4, 1, 2)
            if flips is not None:
                torch.mul(hc, flips, out=target)
            else:
                target.copy_(hc.expand_as(target))
            xin = buf.view(bsz, hh, ww, -1).permute(0, 3, 1, 2)
            out = F.conv2d(xin, w_noise.flatten(0, 1), stride=layer.stride, padding=layer.padding, groups=copies)
            hh, ww = out.shape[2:]
            # (B, H, W, copies, C_out) in memory, viewed as (copies, B, C_out, H, W)
            out = out.permute(0, 2, 3, 1).reshape(bsz, hh, ww, copies, -1).permute(3, 0, 4, 1, 2)
        if b_noise is not None:
            out.add_(b_noise.view(copies, 1, -1, *([1] * (out.dim() - 3))))
        if flip is not None:
            out.mul_(r.view(*r.shape, *([1] * (out.dim() - 3))))
        return out

    @torch.no_grad()
    def compute_grads(self, x: torch.Tensor, y: torch.Tensor):
        layers = self.stack.layers
        n_layers, bsz = len(layers), x.shape[0]
        inputs, drives = self.stack.forward_cache(x)
        logits = layers[-1].post(drives[-1])
        clean = F.cross_entropy(logits, y, reduction="none")
        flipout = self.opts.flipout
        # a layer's pass costs its own product with the noise (Xi x) and the layers above
        draws = self._draws(drives, [l.fan_in * a[0].numel() for l, a in zip(layers, drives)])
        grads = {}
        groups = [[l] for l in range(n_layers)] if self.opts.layerwise else [list(range(n_layers))]
        for group in groups:
            start = group[0]
            k = draws[start]
            copies = 2 * k if self.opts.antithetic else k
            wn, bn, scale, flips = {}, {}, {}, {}
            for l in group:
                layer = layers[l]
                # noise relative to the layer's init scale, so one sigma fits every fan-in;
                # drawn at that scale (wn = scale * Xi), no second pass over it
                scale[l] = self.opts.sigma / layer.fan_in**0.5
                wn[l] = self._noise((k, *layer.weight.shape), drives[l], scale[l])
                bn[l] = self._noise((k, layer.out_features), drives[l], scale[l]) if layer.bias is not None else None
                if flipout:
                    # per-sample signs, shared by a draw's +/- copies
                    flips[l] = (self._signs((k, bsz, layer.out_features), drives[l]),
                                self._signs((k, bsz, layer.in_features), drives[l]))

            def term(m, h, shared=False, wn=wn, bn=bn, flips=flips, copies=copies):
                w = self._signed(wn[m])
                b = self._signed(bn[m]) if bn[m] is not None else None
                f = tuple(self._signed_copy(t) for t in flips[m]) if m in flips else None
                return self._noise_term(layers[m], h, w, b, copies, f, shared)

            if self.opts.layerwise:
                # the clean pass is cached: layer l's perturbed drive is its clean drive + Xi x,
                # from the clean input, which every copy shares; the -xi copies' term is minus
                # the +xi copies' (same input, same flips), so it is computed once
                if self.opts.antithetic:
                    f = flips.get(start)
                    half = self._noise_term(layers[start], inputs[start], wn[start], bn[start], k, f, True)
                    a0 = _stacked(drives[start], half, mirror=True)
                else:
                    a0 = _stacked(drives[start], term(start, inputs[start], shared=True))
                losses = self._run_from(start + 1, layers[start].post(a0), y, copies)
            else:
                def hook(m, h, a):
                    return a + term(m, h).flatten(0, 1)

                h = inputs[0].repeat(copies, *([1] * (inputs[0].dim() - 1)))
                losses = self._run_from(0, h, y, copies, hook)
            if not flipout:
                losses = losses.mean(1, keepdim=True)  # one weight perturbation per copy: the batch loss
                base = clean.mean()
            else:
                base = clean
            # dividing by the per-layer scale s_l (not sigma) makes each estimate dL/dW_l
            d = self._difference(losses, base) * self.opts.sigma  # (K, B or 1) = loss change
            for l in group:
                layer = layers[l]
                # estimate of dL/dW_l: sum_k d_k Xi_k / (K scale) = sum_k d_k wn_k / (K scale^2),
                # the constant folded into the (K, B) loss changes, the smallest tensor here
                dl = d * (1.0 / (k * scale[l] ** 2))
                if flipout:
                    r, s_in = flips[l]
                    dl = dl / bsz
                    # sum_b d_kb Xi_k * r_kb s_kb^T = Xi_k * M_k, M_k = (d_k r_k)^T s_k
                    m_w = torch.einsum("kb,kbo,kbi->koi", dl, r, s_in)
                    # in place: the noise is not needed after this, and a copy its size costs
                    gw = wn[l].mul_(m_w.view(*m_w.shape, *([1] * (wn[l].dim() - 3)))).sum(0)
                    gb = (bn[l] * torch.einsum("kb,kbo->ko", dl, r)).sum(0) if bn[l] is not None else None
                else:
                    d1 = dl.view(-1)
                    gw = torch.einsum("k,k...->...", d1, wn[l])
                    gb = torch.einsum("k,k...->...", d1, bn[l]) if bn[l] is not None else None
                grads[layer.weight] = gw
                if gb is not None:
                    grads[layer.bias] = gb
        return clean.mean(), logits, grads

    def _signed_copy(self, t: torch.Tensor) -> torch.Tensor:
        """A draw's sign tensor for each of its copies (+xi and -xi share it)."""
        return torch.cat([t, t]) if self.opts.antithetic else t

    def train_step(self, x, y):
        loss, logits, grads = self.compute_grads(x, y)
        self.apply_updates(grads)
        return {"loss": loss, "correct": (logits.argmax(1) == y).sum()}
