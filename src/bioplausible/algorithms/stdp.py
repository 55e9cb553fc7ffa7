"""Spike-timing-dependent plasticity in a network of leaky integrate-and-fire neurons.

``stdp`` — unsupervised, in the style of Diehl & Cook (2015): input pixels become spike trains
(Poisson, or a regular rate code), drive one layer of excitatory LIF neurons through plastic
weights in [0, w_max]; lateral inhibition makes the layer a soft winner-take-all; every
neuron has an adaptive threshold (theta rises by ``theta_plus`` at each of its spikes and
decays with ``tau_theta`` samples, by default 40 x the number of neurons so that theta levels
off), so no neuron wins every input. Weights change only by the pair (trace) STDP rule

    dW = eta_post * sum_t s_post(t) (x_pre(t) - x_tar)^T  -  eta_pre * sum_t x_post(t-1) s_pre(t)^T

(potentiation when a post spike follows pre activity, depression when a pre spike follows
post activity; x are exponential traces with time constants ``tau_pre``/``tau_post``, updated
additively: x(t) = exp(-1/tau) x(t-1) + s(t)), clipped to [0, w_max], followed, as in Diehl &
Cook, by rescaling each neuron's incoming weights to sum ``w_sum`` x n_inputs (only for rows
that changed: a step without spikes leaves the weights untouched). Labels are used only
to *assign* each neuron the class for which its mean response is highest (a running,
exponentially weighted tally over training, ``assign_decay`` per batch); the class score is
the mean spike count of the neurons assigned to that class. The assignment is stored as the
readout layer's weight (A[c, i] = 1/n_c for neuron i assigned to class c), so `predict` is
``readout.drive(counts)``: the response-based vote of the paper. With ``readout="linear"``
the readout is instead a linear layer on the spike rates (scaled to unit RMS per sample),
trained by the local delta rule through the shared optimiser (as in Hebbian and conv STDP);
the STDP layer learns exactly as before, from spikes alone, but the readout then uses a
signed error.

``rstdp`` — reward-modulated STDP after Mozafari et al. (2018): the same unsupervised STDP
layer, then a layer of decision neurons (``decision_per_class`` per class, lateral
inhibition, one winner per step). The decision is the class of the decision neuron that
fires most (ties broken by summed input). The reward r = +1 when it is right, -1 when
wrong, and only the winning neuron's incoming weights change, by r times the same trace STDP
term (punishment is anti-STDP), with the soft bound w (1 - w) of Mozafari et al. Prediction:
decision neurons' spike counts summed per class. Two options change the decision layer as
they do on the CNN (see `stdp_conv.ConvRSTDP`): ``decision="deadline"`` makes the winner
and the prediction the decision neuron with the most summed input when the presentation ends
(a class then scores by its best neuron), and ``confidence`` predicts the reward by the
winner's lead over the runner-up, so a clear win learns nothing from its reward. What was
measured with them is in docs/notes/stdp.md.

Input coding: images are rescaled per sample to [0, 1] (undoing the data set's affine
standardisation), then each pixel fires with probability proportional to its intensity,
scaled so that a sample emits ``spikes_per_step`` spikes per step on average (a
contrast-normalised rate code, so the same thresholds suit 8x8 digits and 28x28 MNIST).
``encoding="rate"`` gives deterministic regular trains with the same rates.
One step is one time unit; ``time_steps`` per presentation (Diehl & Cook: 350 ms at 0.5 ms).

Architecture: on the MLP this rule builds its own stack, [fc1: inputs -> excitatory layer,
readout], because a Diehl & Cook network has one plastic layer. The number of excitatory
neurons is ``n_neurons`` when given, else ``cfg.widths[0]`` when widths are given, else 1600
(Diehl & Cook's size).

Batching: a batch is B independent networks sharing weights, thresholds and assignment.
Learning is batched too: the STDP terms are summed over time and over the B networks of a
presentation and applied once at its end (so one step ~ B sequential presentations with the
weights frozen within the batch); theta rises by theta_plus times the batch's summed spikes.
Each presentation starts from rest (potentials and traces zero). Evaluation uses the same
dynamics without learning and without theta changes; samples that evoke fewer than
``min_spikes`` spikes are re-run with doubled input rate (at most ``retries`` times, as Diehl
& Cook do), vectorised over the subset.

On the CNN (``--model cnn``) ``stdp`` and ``rstdp`` are other classes with options of their
own, registered per architecture: `stdp_conv.ConvSTDP` and `stdp_conv.ConvRSTDP`.

Every input-to-layer current is computed by ``Layer.drive`` on the spike vector (bias zero
and frozen), the learning pathway reads spikes and traces only. Nothing uses the shared
optimiser: STDP updates are not gradients, so `cfg.lr` and `cfg.optimizer` are unused.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from .claims import Claims, partial, yes
from ..models import Layer, Stack
from ..models.spiking import LIFState, decay, encode_steps, spike_probabilities, to_unit_range
from .base import Learner


class SpikingLayerOptions(BaseModel):
    """Options of the dense STDP layer (Diehl & Cook's network), shared by ``stdp`` and ``rstdp``
    on the MLP."""

    model_config = ConfigDict(extra="forbid")

    n_neurons: int | None = Field(None, ge=1, description="excitatory neurons; None = cfg.widths[0], else 1600")
    time_steps: int = Field(64, ge=1, description="steps per training presentation")
    eval_time_steps: int | None = Field(
        None, ge=1, description="steps per presentation at evaluation (longer ones average out Poisson noise); "
        "None = time_steps")
    encoding: Literal["poisson", "rate"] = Field("poisson", description="input spike trains: Poisson or regular")
    spikes_per_step: float = Field(8.0, gt=0, description="mean input spikes per step per sample")
    tau_mem: float = Field(20.0, gt=0, description="membrane time constant (steps)")
    tau_pre: float = Field(8.0, gt=0, description="presynaptic trace time constant (steps)")
    tau_post: float = Field(8.0, gt=0, description="postsynaptic trace time constant (steps)")
    eta_post: float = Field(0.01, ge=0, description="potentiation rate (post spike after pre activity)")
    eta_pre: float = Field(0.002, ge=0, description="depression rate (pre spike after post activity)")
    x_tar: float = Field(0.0, ge=0, description="Diehl & Cook's presynaptic target: potentiation uses x_pre - x_tar")
    w_max: float = Field(1.0, gt=0, description="upper weight bound")
    w_sum: float | None = Field(
        0.1, gt=0, description="row-sum target per input (Diehl & Cook's normalisation); None = none")
    v_thresh: float = Field(2.0, gt=0, description="firing threshold before adaptation")
    theta_plus: float = Field(0.02, ge=0, description="threshold increase per spike (adaptive threshold)")
    tau_theta: float | None = Field(
        None, gt=0, description="threshold decay time constant in samples; None = 40 x n_neurons, so theta "
        "settles whatever the layer size instead of growing until nothing fires")
    inhibition: float = Field(5.0, ge=0, description="lateral inhibition per spike (soft winner-take-all)")
    one_winner: bool = Field(False, description="at most one spike per step (hard winner-take-all)")
    assign_decay: float = Field(0.99, gt=0, le=1, description="per-batch decay of the class-response tally")
    min_spikes: int = Field(5, ge=0, description="evaluation: samples with fewer spikes are re-presented")
    retries: int = Field(2, ge=0, description="evaluation: re-presentations at doubled rate, at most")


class STDPOptions(SpikingLayerOptions):
    """Options of ``stdp`` on the MLP: the STDP layer's, and the readout's."""

    readout: Literal["assign", "linear"] = Field(
        "assign", description="assign: Diehl & Cook's vote of the neurons assigned to each class; linear: a "
        "readout of the spike rates trained by the local delta rule")


class RSTDPOptions(SpikingLayerOptions):
    """Options of ``rstdp`` on the MLP: the STDP layer's, and the decision layer's."""

    decision_per_class: int = Field(10, ge=1, description="decision neurons per class")
    eta_reward: float = Field(0.1, ge=0, description="rate of the winner's STDP when the decision is right")
    eta_punish: float = Field(0.05, ge=0, description="rate of the winner's anti-STDP when it is wrong")
    decision_thresh: float = Field(2.0, gt=0, description="decision neurons' firing threshold")
    decision_dropout: float = Field(
        0.0, ge=0, lt=1, description="chance a decision neuron is silenced per training sample (Mozafari)")
    decision: Literal["race", "deadline"] = Field(
        "race", description="the winner (which learns, and the prediction): the decision neuron that fires most "
        "(race) or the one with the most summed input when the presentation ends (deadline)")
    confidence: float | None = Field(
        None, gt=0, description="a reward counts by (1 - lead / this), lead the winner's relative lead over the "
        "runner-up (see RSTDP.reward_confidence); None = every reward counts")


class STDP(Learner):
    name = "stdp"
    description = "Diehl & Cook 2015 unsupervised STDP in LIF neurons, response-based label assignment"
    Options = STDPOptions
    architectures = ("mlp",)
    own_network = "it builds a spiking network of its own shape (LIF layers with lateral inhibition)"
    claims = Claims(
        c1_no_weight_transport=yes("no feedback pathway: updates use pre/post spike traces only"),
        c2_local_error=yes("each synapse changes from its own pre- and post-synaptic traces"),
        c3_single_phase=yes("learning happens during the one presentation"),
        c4_spiking=yes("LIF neurons communicate by binary spikes"),
        c5_label_free_hidden=yes("labels only assign neurons to classes after the fact; weights never see them"),
        c6_unsigned_error=yes("no error signal at all (with readout='linear' the readout's delta rule uses a "
                              "signed error)"),
    )

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def network_for(cls, cfg) -> dict:
        # one plastic layer of n_exc neurons (see `n_exc`); the CNN's entry is stdp_conv's class
        n = cls.Options(**cfg.rule_options).n_neurons
        return {"widths": (n if n is not None else cfg.widths[0] if cfg.widths else 1600,)}

    def n_exc(self) -> int:
        if "_n_exc" not in self.__dict__:  # the dense network's width, as `network_for` chose it
            self._n_exc = type(self).network_for(self.cfg)["widths"][0]
        return self._n_exc

    def n_out(self) -> int:
        return self.stack.num_classes

    def setup(self) -> None:
        o = self.opts
        old = self.stack
        dev = old.layers[0].weight.device
        n_in = old.layers[0].in_features
        g = torch.Generator().manual_seed(self.cfg.seed + 31337)
        fc1 = Layer("linear", n_in, self.n_exc(), act="identity", name="fc1")
        out = Layer("linear", self.n_exc(), self.n_out(), act="identity", name="out")
        with torch.no_grad():
            # Diehl & Cook: uniform random initial weights in [0, 0.3 w_max]
            fc1.weight.copy_(torch.rand(fc1.weight.shape, generator=g) * 0.3 * o.w_max)
            self.init_readout(out, g)
            for layer in (fc1, out):
                layer.bias.zero_()
                layer.weight.requires_grad_(False)
                layer.bias.requires_grad_(False)
        if self.linear_readout:
            out.weight.requires_grad_(True)
            out.bias.requires_grad_(True)
        self.stack = Stack([fc1, out], "mlp", old.input_shape, old.num_classes).to(dev)
        self.normalise_rows(self.stack.layers[0].weight, torch.ones(self.n_exc(), dtype=torch.bool, device=dev))
        self.register_buffer("theta", torch.zeros(self.n_exc(), device=dev))
        self.register_buffer("class_resp", torch.zeros(self.stack.num_classes, self.n_exc(), device=dev))
        self.register_buffer("class_n", torch.zeros(self.stack.num_classes, device=dev))
        self._gen: torch.Generator | None = None

    def init_readout(self, out: Layer, g: torch.Generator) -> None:
        out.weight.zero_()  # no neuron assigned yet

    @property
    def linear_readout(self) -> bool:
        # only the unsupervised rule has this option; R-STDP's decision layer is its readout
        return getattr(self.opts, "readout", "assign") == "linear"

    def trainable_parameters(self):
        # STDP updates are not gradients: only a linear readout goes through the shared optimiser
        return list(self.readout.parameters()) if self.linear_readout else []

    def make_optimizer(self, params, lr=None):
        params = list(params)
        if params:
            return super().make_optimizer(params, lr)
        # the optimiser is never stepped; SGD on an empty list is not allowed, so hold a dummy
        return torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=self.cfg.lr)

    def generator(self, device) -> torch.Generator:
        # spike-train noise from a generator of its own, seeded from cfg.seed, on the data's device
        if self._gen is None or self._gen.device != torch.device(device):
            self._gen = torch.Generator(device=device).manual_seed(self.cfg.seed + 7)
        return self._gen

    def extra_state(self):
        # the training spike-noise generator, so a resumed run draws the same spikes
        return {"gen": self._gen.get_state(), "gen_device": str(self._gen.device)} if self._gen is not None else {}

    def load_extra_state(self, state):
        if "gen" in state:
            self._gen = torch.Generator(device=state["gen_device"])
            self._gen.set_state(state["gen"])

    @property
    def exc(self) -> Layer:
        return self.stack.layers[0]

    @property
    def readout(self) -> Layer:
        return self.stack.layers[-1]

    # -- the trace rule ---------------------------------------------------------------------
    @torch.no_grad()
    def normalise_rows(self, w: torch.Tensor, rows: torch.Tensor) -> None:
        if self.opts.w_sum is None:
            return
        target = self.opts.w_sum * w.shape[1]
        scaled = w * (target / w.sum(1, keepdim=True).clamp_min(1e-12))
        w.copy_(torch.where(rows.view(-1, 1), scaled.clamp(0, self.opts.w_max), w))

    # -- simulation ------------------------------------------------------------------------
    # elements of one (steps x batch x neurons) block of a presentation: bounds the memory of
    # the block's trains whatever the batch and layer size
    _BLOCK_ELEMS = 1 << 23

    @torch.no_grad()
    def simulate(self, x: torch.Tensor, learn: bool, rate_scale: float = 1.0, record: bool = False):
        """Present x for `time_steps` steps. Returns (exc spike counts, extra dict) where extra
        has the accumulated STDP terms 'ltp' = sum_t s_post^T x_pre, 'ltd' = sum_t x_post(t-1)^T
        s_pre (both (n_exc, n_in), summed over the batch) and, with `record`, the spike trains.

        The input trains do not depend on the network: they are drawn a block of steps at a
        time. The STDP sums are taken at the post-synaptic spikes, which are few: LTP adds the presynaptic trace at
        each post spike; LTD, sum_t x_post(t-1)^T s_pre(t) = sum_t' s_post(t')^T F(t') with
        F(t') = sum_{t>t'} d_post^(t-1-t') s_pre(t) (a backward recursion over the input
        trains), adds F at each post spike. Both cost spikes x inputs instead of steps x
        neurons x inputs."""
        o = self.opts
        p = spike_probabilities(to_unit_range(x), o.spikes_per_step * rate_scale)
        B, n_in = p.shape
        N = self.n_exc()
        gen = None
        if o.encoding == "poisson":
            # training draws from the learner's running generator; evaluation from a fresh one
            # with a fixed seed, so a prediction depends only on the weights and the input
            # (identical after a checkpoint is restored, identical on every call)
            gen = self.generator(x.device) if learn else torch.Generator(device=x.device).manual_seed(
                self.cfg.seed + 99991)
        exc = LIFState(B, N, x.device, p.dtype)
        md, dpre, dpost = decay(o.tau_mem), decay(o.tau_pre), decay(o.tau_post)
        thr = o.v_thresh + self.theta
        T = self.presentation_steps(learn)
        block = max(1, min(T, self._BLOCK_ELEMS // (B * max(n_in, N))))
        ltp = torch.zeros(N, n_in, device=x.device, dtype=p.dtype) if learn else None
        pre_trace = torch.zeros_like(p) if learn else None
        inputs, spikes, pre_rec, post_rec = [], [], [], []
        state = self.begin_presentation(B, x.device, p.dtype, learn)
        for t0 in range(0, T, block):
            n = min(block, T - t0)
            s_in = encode_steps(p, t0, n, o.encoding, gen)
            post = s_in.new_empty(n, B, N)
            traces = torch.empty_like(s_in) if learn else None
            for k in range(n):
                # one drive per step (not one product over the block): each time step's input
                # reaches the layer as its own spike vector, which the spiking probe (C4) counts
                s = exc.step(self.exc.drive(s_in[k]), thr, md, dpost, o.inhibition, o.one_winner)
                post[k] = s
                if learn:
                    traces[k] = pre_trace.mul_(dpre).add_(s_in[k])
                self.after_exc_step(state, s, t0 + k, learn)
            if learn:
                spk = post.nonzero(as_tuple=True)
                self._add_at_spikes(ltp, traces.sub_(o.x_tar) if o.x_tar else traces, spk)
                inputs.append(s_in.bool())
                spikes.append(spk)
            if record:
                pre_rec.append(s_in)
                post_rec.append(post)
        ltd = self._ltd(inputs, spikes, dpost, ltp) if learn else None
        extra = {"ltp": ltp, "ltd": ltd, "state": state}
        if record:
            extra["pre"] = torch.cat(pre_rec)
            extra["post"] = torch.cat(post_rec)
        return exc.count, extra

    @staticmethod
    def _ltd(inputs: list[torch.Tensor], spikes: list[tuple], dpost: float, like: torch.Tensor) -> torch.Tensor:
        """sum_t x_post(t-1)^T s_pre(t) from the presentation's input trains (blocks of
        (steps, B, n_in), bool) and its post spikes per block (step, sample, neuron); the
        result is shaped like `like` (n_exc, n_in)."""
        ltd = torch.zeros_like(like)
        f = like.new_zeros(inputs[0].shape[1:])  # F(t') of the step after the current one
        nxt = torch.zeros_like(f)  # s_pre(t' + 1)
        for s_in, spk in zip(reversed(inputs), reversed(spikes)):
            fs = like.new_empty(s_in.shape)
            for k in range(s_in.shape[0] - 1, -1, -1):
                fs[k] = f.mul_(dpost).add_(nxt)
                nxt = s_in[k]
            STDP._add_at_spikes(ltd, fs, spk)
        return ltd

    @staticmethod
    def _add_at_spikes(acc: torch.Tensor, vals: torch.Tensor, spk: tuple) -> None:
        """acc[j] += vals[t, b] for every post spike (t, b, j) of a block: acc (n_exc, n_in),
        vals (steps, B, n_in). Gathered row by row, in chunks of at most steps x B spikes (which
        bounds the gather's memory by the block's), while the layer fires sparsely (under one
        spike in 8 neuron-steps); densely firing, as one product with the block's spike matrix."""
        t, b, j = spk
        steps, B, n_in = vals.shape
        rows = steps * B
        if 8 * len(j) <= rows * acc.shape[0]:
            for i in range(0, len(j), rows):
                acc.index_add_(0, j[i:i + rows], vals[t[i:i + rows], b[i:i + rows]])
            return
        post = vals.new_zeros(rows, acc.shape[0])
        post[t * B + b, j] = 1.0
        acc.addmm_(post.t(), vals.view(-1, n_in))

    def presentation_steps(self, learn: bool) -> int:
        o = self.opts
        return o.time_steps if learn or o.eval_time_steps is None else o.eval_time_steps

    # hooks for the decision layer of R-STDP
    def begin_presentation(self, batch, device, dtype, learn):
        return None

    def after_exc_step(self, state, s, t, learn):
        pass

    @torch.no_grad()
    def stdp_update(self, ltp: torch.Tensor, ltd: torch.Tensor, counts: torch.Tensor) -> None:
        """Apply the accumulated trace rule to the input weights, then Diehl & Cook's
        per-neuron normalisation for the rows that changed."""
        o = self.opts
        w = self.exc.weight
        dw = o.eta_post * ltp - o.eta_pre * ltd
        changed = dw.ne(0).any(1)
        w.add_(dw).clamp_(0.0, o.w_max)
        self.normalise_rows(w, changed)
        # adaptive thresholds: up with every spike (batch-summed), slow decay per sample
        n = counts.shape[0]
        tau = o.tau_theta if o.tau_theta is not None else 40.0 * self.n_exc()
        self.theta.mul_(decay(tau) ** n).add_(o.theta_plus * counts.sum(0))

    @torch.no_grad()
    def update_assignment(self, counts: torch.Tensor, y: torch.Tensor) -> None:
        o = self.opts
        onehot = F.one_hot(y, self.stack.num_classes).to(counts.dtype)
        self.class_resp.mul_(o.assign_decay).add_(onehot.t() @ counts)
        self.class_n.mul_(o.assign_decay).add_(onehot.sum(0))
        mean_resp = self.class_resp / self.class_n.clamp_min(1e-12).view(-1, 1)
        assigned = mean_resp.argmax(0)
        active = mean_resp.sum(0) > 0  # neurons that never fired stay unassigned
        a = F.one_hot(assigned, self.stack.num_classes).t().to(counts.dtype) * active.to(counts.dtype)
        self.readout.weight.copy_(a / a.sum(1, keepdim=True).clamp_min(1.0))

    def train_step(self, x, y):
        counts, extra = self.simulate(x, learn=True)
        # the STDP step is computed from the spikes alone, before y is looked at
        self.stdp_update(extra["ltp"], extra["ltd"], counts)
        if self.linear_readout:
            self.delta_rule(self.readout, self.rate_features(counts), y)
        else:
            self.update_assignment(counts, y)
        stats = self.learn_decision(extra["state"], y)
        scores = self.scores(counts, extra["state"])
        loss = F.cross_entropy(scores, y)  # tracks training only; nothing learns from it
        return {"loss": loss, "correct": (scores.argmax(1) == y).sum(),
                "exc_spikes": counts.sum(1).mean().item(), "theta": self.theta.mean().item(), **stats}

    def learn_decision(self, state, y) -> dict:
        return {}

    def rate_features(self, counts: torch.Tensor) -> torch.Tensor:
        """Spike rates scaled to unit RMS per sample: the linear readout's input (so its
        learning rate does not depend on how many spikes a sample evokes)."""
        h = counts  # rates up to the presentation's length, which the scaling removes
        return h * (h.shape[1] ** 0.5 / h.norm(dim=1, keepdim=True).clamp_min(1e-12))

    def scores(self, counts: torch.Tensor, state) -> torch.Tensor:
        if self.linear_readout:
            return self.readout.drive(self.rate_features(counts))
        return self.readout.drive(counts)

    @torch.no_grad()
    def respond(self, x: torch.Tensor):
        """Evaluation: spike counts (and decision state) without learning; weak responders
        are re-presented at doubled rate."""
        counts, extra = self.simulate(x, learn=False)
        state = extra["state"]
        scale = 1.0
        for _ in range(self.opts.retries):
            weak = counts.sum(1) < self.opts.min_spikes
            if not bool(weak.any()):
                break
            scale *= 2.0
            idx = weak.nonzero().squeeze(1)
            c2, e2 = self.simulate(x[idx], learn=False, rate_scale=scale)
            counts = counts.index_copy(0, idx, c2)
            state = self.merge_state(state, e2["state"], idx)
        return counts, state

    def merge_state(self, state, new, idx):
        return state

    @torch.no_grad()
    def predict(self, x):
        counts, state = self.respond(x)
        return self.scores(counts, state)

    @torch.no_grad()
    def activations(self, x):
        counts, state = self.respond(x)
        rates = counts / self.presentation_steps(learn=False)
        return {"fc1": rates, "out": self.scores(counts, state)}


class DecisionLayer:
    """Mozafari et al.'s decision layer, for a spiking learner (`STDP` or `stdp_conv.ConvSTDP`)
    whose last layer it replaces: decision neurons read the layer below's spikes, one winner per
    presentation learns by reward-modulated STDP. Listed before the learner in the bases."""

    # multiplier of the reward and punishment rates, set per epoch from the run's lr schedule
    rate_factor = 1.0

    def n_out(self) -> int:
        return self.stack.num_classes * self.opts.decision_per_class

    def set_lr_factor(self, factor: float) -> None:
        # the schedule anneals the decision layer's plasticity too (these updates are not
        # gradients, but without annealing the layer keeps hopping between fixed points; see
        # docs/notes/stdp.md)
        super().set_lr_factor(factor)
        self.rate_factor = factor

    def init_readout(self, out: Layer, g: torch.Generator) -> None:
        # Mozafari et al. initialise their plastic weights around 0.8 with small spread
        out.weight.copy_((0.8 + 0.05 * torch.randn(out.weight.shape, generator=g)).clamp(0, 1))

    def begin_presentation(self, batch, device, dtype, learn):
        # the spike trains and traces of the presentation are kept (T x batch x n) so that,
        # once the winner is known, its row's STDP terms are gathered without ever forming
        # a per-sample (n_dec x n_exc) tensor
        state = {
            "dec": LIFState(batch, self.n_out(), device, dtype),
            "input": torch.zeros(batch, self.n_out(), device=device, dtype=dtype),
            "exc_trace": torch.zeros(batch, self.n_exc(), device=device, dtype=dtype),
            "rec": [] if learn else None,
        }
        if learn and self.opts.decision_dropout > 0:
            # dropout of decision neurons (Mozafari et al.): a silenced neuron gets no input in
            # this presentation, so it cannot win, and the others get the chance to
            keep = torch.rand(batch, self.n_out(), generator=self.generator(device), device=device)
            state["keep"] = (keep >= self.opts.decision_dropout).to(dtype)
        return state

    def decision_dynamics(self) -> tuple[float, float]:
        """Threshold and lateral inhibition of the decision neurons."""
        return self.opts.decision_thresh, self.opts.inhibition

    def after_exc_step(self, state, s, t, learn):
        o = self.opts
        state["exc_trace"] = decay(o.tau_pre) * state["exc_trace"] + s
        dec: LIFState = state["dec"]
        current = self.readout.drive(s)
        if "keep" in state:
            current = current * state["keep"]
        state["input"] += current
        post_before = dec.trace
        thr, inh = self.decision_dynamics()
        sd = dec.step(current, torch.full((), thr, device=s.device), decay(o.tau_mem), decay(o.tau_post), inh, True)
        if learn:
            state["rec"].append((sd, post_before, state["exc_trace"], s))

    def merge_state(self, state, new, idx):
        for k in ("input",):
            state[k] = state[k].index_copy(0, idx, new[k])
        state["dec"].count = state["dec"].count.index_copy(0, idx, new["dec"].count)
        return state

    def update_assignment(self, counts, y):
        pass  # decisions come from the decision neurons, not from a response tally

    def decision_mode(self) -> str:
        return self.opts.decision

    def confidence_margin(self) -> float | None:
        return self.opts.confidence

    def decision_key(self, state) -> torch.Tensor:
        """Per decision neuron, what the decision ranks: in the race, most spikes, ties
        (including no spike at all) broken by the summed input current; at the deadline, the
        summed input current."""
        if self.decision_mode() == "deadline":
            return state["input"]
        dec: LIFState = state["dec"]
        return dec.count + 1e-6 * state["input"] / state["input"].abs().max().clamp_min(1e-12)

    def reward_confidence(self, state, win: torch.Tensor) -> torch.Tensor:
        """The decision's confidence in [0, 1]: the winner's lead in summed input over the
        runner-up, relative to its own input, in units of `confidence_margin`. The reward is
        predicted by it (dopamine signals the outcome minus the confidence in the choice: Lak
        et al. 2017), so a clear win learns little from its reward and the update stops once a
        sample is classified with a margin: a discriminative fixed point."""
        inp = state["input"]
        lead = inp.gather(1, win.view(-1, 1)).squeeze(1)
        rival = inp.scatter(1, win.view(-1, 1), float("-inf")).max(1).values
        return ((lead - rival) / lead.abs().clamp_min(1e-12) / self.confidence_margin()).clamp(0, 1)

    def winners(self, state) -> torch.Tensor:
        key = self.decision_key(state)
        if "keep" in state:
            key = key.masked_fill(state["keep"] == 0, float("-inf"))  # a silenced neuron never wins
        return key.argmax(1)

    def scores_by_best_neuron(self) -> bool:
        # at the deadline the prediction is the winner's class, so a class scores by its best
        # neuron; the dense race keeps Mozafari et al.'s spike counts summed per class
        return self.decision_mode() == "deadline"

    def scores(self, counts, state):
        key = self.decision_key(state)
        key = key.view(key.shape[0], -1, self.opts.decision_per_class)
        return key.max(2).values if self.scores_by_best_neuron() else key.sum(2)

    def modulate(self, r: torch.Tensor, hit: torch.Tensor, state, win: torch.Tensor) -> torch.Tensor:
        """The per-sample reward/punishment rate r after the schedule's annealing and, with a
        confidence margin, the confidence-predicted reward (hits only)."""
        r = r * self.rate_factor
        if self.confidence_margin() is not None:
            r = torch.where(hit, r * (1 - self.reward_confidence(state, win)), r)
        return r

    @torch.no_grad()
    def learn_decision(self, state, y):
        o = self.opts
        win = self.winners(state)
        cls = win // o.decision_per_class
        hit = cls == y
        r = self.modulate(torch.where(hit, o.eta_reward, -o.eta_punish).to(self.readout.weight.dtype), hit, state, win)
        sd, post_before, exc_trace, s_exc = (torch.stack(v) for v in zip(*state["rec"]))  # (T, B, .)
        idx = win.view(1, -1, 1).expand(sd.shape[0], -1, 1)
        sd_w, post_w = sd.gather(2, idx), post_before.gather(2, idx)  # the winner's trains (T, B, 1)
        # pair STDP of the winner's incoming synapses, per sample: LTP at its spikes from the
        # excitatory traces, LTD at excitatory spikes from its own trace
        stdp = (sd_w * exc_trace).sum(0) - (o.eta_pre / max(o.eta_post, 1e-12)) * (post_w * s_exc).sum(0)
        # reward gives STDP, punishment anti-STDP; samples sharing a winner add up (index_add)
        dw = torch.zeros_like(self.readout.weight).index_add_(0, win, r.view(-1, 1) * stdp)
        w = self.readout.weight
        w.add_(dw * w * (1 - w)).clamp_(0.0, 1.0)
        return {"reward": hit.float().mean().item(), "decision_winners": float(win.unique().numel())}


class RSTDP(DecisionLayer, STDP):
    """``rstdp`` on the MLP: the dense STDP layer, then the decision layer."""

    name = "rstdp"
    description = "Reward-modulated STDP (Mozafari et al. 2018): STDP layer + decision neurons learning from reward"
    Options = RSTDPOptions
    claims = Claims(
        c1_no_weight_transport=yes("no feedback pathway: updates use spike traces and a scalar reward"),
        c2_local_error=partial("synapses use local traces times one global scalar reward (a neuromodulator)"),
        c3_single_phase=yes("the reward arrives at the end of the same presentation"),
        c4_spiking=yes("LIF neurons communicate by binary spikes"),
        c5_label_free_hidden=yes("the excitatory layer learns by unsupervised STDP; only decision neurons get reward"),
        c6_unsigned_error=partial("a scalar reward/punishment (+1/-1), no per-neuron error"),
    )
