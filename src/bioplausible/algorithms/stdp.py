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
they do on the CNN (see stdp_conv.ConvRSTDP for why): ``decision="deadline"`` makes the winner
and the prediction the decision neuron with the most summed input when the presentation ends
(a class then scores by its best neuron), and ``confidence`` predicts the reward by the
winner's lead over the runner-up, so a clear win learns nothing from its reward. On mnist5k
(1024 neurons, 6 epochs, batch 128): the defaults 0.712, deadline 0.731, confidence 0.05 alone
0.725, both 0.853 (margin 0.01: 0.841, 0.2: 0.743); a linear delta-rule readout of the same
layer (``stdp``, readout="linear") 0.893. Full MNIST, one epoch, batch 64, 6400 neurons and
256-step test presentations (`bench/accuracy.py`): 86.72% with both, where the defaults on 1024
neurons gave 80.15% (batch 128) and 83.36% (batch 64); the linear readout of the same layer
(``stdp``'s bench run) 93.33%; two epochs (the cosine schedule halves the reward rates in
the second) 88.63%, three 89.43%, four 89.27% (86.41, 88.95, 89.55 before: more epochs on full
MNIST stop near 89.5%); with ``decision_dropout`` 0.5 (about 28 distinct winners per batch instead of 13) 86.84, 90.61, 91.58% after epochs 1-3. Without dropout the decision layer again uses about one neuron per class
(`decision_winners` 12.9 per batch of 64). On mnist5k what limited it was the number of presentations,
not the rates or recruitment (on full MNIST more epochs did not help but recruitment by dropout did, above): 1024 neurons, batch 128, 6 epochs, 0.833 with both
options, half the reward and punishment rates gave 0.786, double 0.838, ``decision_dropout``
0.5 and 0.8 0.839 and 0.812 (34 and 56 distinct winners per batch instead of 11), rows rescaled
to their initial mean weight after each update (ConvRSTDP's synaptic scaling, patched in for
the probe, not an option) 0.831; 14
epochs 0.871 (0.882 at the 12th), near the linear readout's 0.893.

Input coding: images are rescaled per sample to [0, 1] (undoing the data set's affine
standardisation), then each pixel fires with probability proportional to its intensity,
scaled so that a sample emits ``spikes_per_step`` spikes per step on average (a
contrast-normalised rate code, so the same thresholds suit 8x8 digits and 28x28 MNIST).
``encoding="rate"`` gives deterministic regular trains with the same rates.
One step is one time unit; ``time_steps`` per presentation (Diehl & Cook: 350 ms at 0.5 ms).

Architecture: on the MLP this rule builds its own stack, [fc1: inputs -> excitatory layer,
readout], because a Diehl & Cook network has one plastic layer. The number of excitatory
neurons is ``n_neurons`` when given, else ``cfg.widths[0]`` when widths are given, else 1600
(Diehl & Cook's size with 91.9% on MNIST; the paper's 1024-512-256 stack is not used,
deeper STDP layers do not help in that model).

Batching: a batch is B independent networks sharing weights, thresholds and assignment.
Learning is batched too: the STDP terms are summed over time and over the B networks of a
presentation and applied once at its end (so one step ~ B sequential presentations with the
weights frozen within the batch); theta rises by theta_plus times the batch's summed spikes.
Each presentation starts from rest (potentials and traces zero). Evaluation uses the same
dynamics without learning and without theta changes; samples that evoke fewer than
``min_spikes`` spikes are re-run with doubled input rate (at most ``retries`` times, as Diehl
& Cook do), vectorised over the subset.

On the CNN (``--model cnn``) ``stdp`` is convolutional STDP, `stdp_conv.ConvSTDP`: conv
layers of LIF neurons with winner-take-all across feature maps, homeostasis and the same
trace rule for all positions at once, trained layer-wise as in Kheradpisheh et al. (2018),
with a delta-rule readout on pooled spike counts. `STDP.__new__` hands a cnn stack to that
subclass, so the rule keeps one registry line; its options are the ``conv_*`` fields below
(plus ``dog``, ``readout_norm``, ``readout_pool``; ``encoding``, ``tau_pre``, ``tau_post`` and
``w_max`` are shared), which the dense rule ignores. ``rstdp`` on the CNN is
`stdp_conv.ConvRSTDP` (the same conv STDP layers, decision neurons learning from reward).

Every input-to-layer current is computed by ``Layer.drive`` on the spike vector (bias zero
and frozen), the learning pathway reads spikes and traces only. Nothing uses the shared
optimiser: STDP updates are not gradients, so `cfg.lr` and `cfg.optimizer` are unused.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from ..criteria.claims import Claims, partial, yes
from ..models import Layer, Stack
from ..models.spiking import LIFState, decay, encode, spike_probabilities, to_unit_range
from .base import Learner


class STDPOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n_neurons: int | None = Field(None, ge=1)
    time_steps: int = Field(64, ge=1)
    # steps per presentation at evaluation; None = time_steps. Longer test presentations
    # average out more of the Poisson noise (Diehl & Cook present test images as long as training ones)
    eval_time_steps: int | None = Field(None, ge=1)
    encoding: Literal["poisson", "rate"] = "poisson"
    spikes_per_step: float = Field(8.0, gt=0)  # mean input spikes per step per sample
    tau_mem: float = Field(20.0, gt=0)  # in steps
    tau_pre: float = Field(8.0, gt=0)
    tau_post: float = Field(8.0, gt=0)
    eta_post: float = Field(0.01, ge=0)
    eta_pre: float = Field(0.002, ge=0)
    x_tar: float = Field(0.0, ge=0)  # Diehl & Cook's presynaptic target: LTP uses (x_pre - x_tar)
    w_max: float = Field(1.0, gt=0)
    w_sum: float | None = Field(0.1, gt=0)  # row-sum target per input; None = no normalisation
    v_thresh: float = Field(2.0, gt=0)
    theta_plus: float = Field(0.02, ge=0)
    # theta's decay time constant in samples; None = 40 * n_neurons, which makes theta settle
    # near theta_plus * 40 * (spikes per sample) whatever the layer size (a neuron wins about
    # 1 / n_neurons of the samples), instead of growing until nothing fires on long runs
    tau_theta: float | None = Field(None, gt=0)
    inhibition: float = Field(5.0, ge=0)
    one_winner: bool = False  # True: at most one spike per step (hard WTA); measured worse on mnist5k
    assign_decay: float = Field(0.99, gt=0, le=1)
    # stdp on the MLP: "assign" = Diehl & Cook's vote of the neurons assigned to each class;
    # "linear" = a linear readout of the spike rates trained by the local delta rule
    readout: Literal["assign", "linear"] = "assign"
    min_spikes: int = Field(5, ge=0)
    retries: int = Field(2, ge=0)
    # R-STDP only
    decision_per_class: int = Field(10, ge=1)
    eta_reward: float = Field(0.1, ge=0)
    eta_punish: float = Field(0.05, ge=0)
    decision_thresh: float = Field(2.0, gt=0)
    decision_dropout: float = Field(0.0, ge=0, lt=1)  # R-STDP: chance a decision neuron is silenced per training sample
    # R-STDP: the decision (the winner, which learns, and the prediction) is the decision neuron
    # that fires most ("race") or the one with the most summed input when the presentation ends
    # ("deadline"); on the CNN see conv_decision
    decision: Literal["race", "deadline"] = "race"
    # R-STDP: reward predicted by the decision's confidence (see RSTDP.reward_confidence); a
    # reward counts by (1 - lead / this), None = every reward counts; on the CNN see conv_confidence
    confidence: float | None = Field(None, gt=0)
    # CNN only (`stdp_conv.ConvSTDP`); shared with the dense rule: encoding, tau_pre, tau_post, w_max
    dog: bool | None = None  # on/off DoG retina; None = on for inputs of 16 px or more
    conv_kernel: int | None = Field(None, ge=1)  # None = 5 (3 on inputs under 16 px)
    conv_pool: tuple[int, ...] | None = None  # per conv layer; None = down to 7x7 (4x4 on 8x8)
    conv_time_steps: int = Field(16, ge=1)
    conv_max_rate: float = Field(0.5, gt=0, le=1)  # input firing probability per step at full contrast
    conv_tau_mem: float = Field(20.0, gt=0)
    conv_v_thresh: float = Field(2.0, gt=0)
    conv_inhibition: float = Field(1.0, ge=0)
    conv_eta_post: float = Field(0.05, ge=0)
    conv_eta_pre: float = Field(0.01, ge=0)
    conv_w_mean: float | None = Field(0.2, gt=0)  # kernel mean after each update; None = no normalisation
    conv_theta_eta: float = Field(0.05, ge=0)
    conv_learn_samples: int = Field(3000, ge=0)  # training samples per conv layer (layer-wise); 0 = no STDP
    readout_norm: bool = True
    readout_pool: Literal["max", "avg"] = "avg"  # pooling of the last conv layer's counts for the readout
    # conv R-STDP rates: larger than Mozafari et al.'s 0.004 (a_r+, a_p-), which barely moved
    # the weights in a few epochs (digits: chance after 3 epochs)
    conv_eta_reward: float = Field(0.1, ge=0)
    conv_eta_punish: float = Field(0.1, ge=0)
    # conv R-STDP: decision threshold (= lateral inhibition) in units of the current that all
    # inputs firing at once would give at the initial mean weight (0.8 x number of inputs)
    conv_decision_thresh: float = Field(0.05, gt=0)
    conv_adaptive_rates: bool = True  # conv R-STDP: reward x miss rate, punishment x hit rate (Mozafari)
    conv_decision_norm: bool = True  # conv R-STDP: rescale decision rows to mean 0.8 after each update
    # conv R-STDP: the winner's synapses change by trace STDP ("trace") or by Mozafari et al.'s
    # timing-sign rule ("sign": +1 if the input spiked by the winner's first spike, else -1)
    conv_decision_rule: Literal["trace", "sign"] = "trace"
    conv_sign_gain: float = Field(3.0, gt=0)  # "sign": step relative to the reward/punishment rate
    # conv R-STDP: reward prediction from the decision's confidence, the winner's lead in summed
    # input over the runner-up relative to its own; a reward counts by (1 - lead / this), so a
    # decision won by this margin or more learns nothing from its reward. None = every reward counts
    conv_confidence: float | None = Field(None, gt=0)
    # conv R-STDP: the decision is the neuron that fires most in the race to threshold ("race",
    # Mozafari et al.'s first spike), or the one with the most summed input when the
    # presentation ends ("deadline"); the winner learns from its own spikes either way
    conv_decision: Literal["race", "deadline"] = "race"


class STDP(Learner):
    name = "stdp"
    description = ("Diehl & Cook 2015 unsupervised STDP in LIF neurons, response-based label assignment; "
                   "on the CNN: conv STDP (Kheradpisheh 2018 style) + delta-rule readout")
    Options = STDPOptions
    architectures = ("mlp", "cnn")
    claims = Claims(
        c1_no_weight_transport=yes("no feedback pathway: updates use pre/post spike traces only"),
        c2_local_error=yes("each synapse changes from its own pre- and post-synaptic traces"),
        c3_single_phase=yes("learning happens during the one presentation"),
        c4_spiking=yes("LIF neurons communicate by binary spikes"),
        c5_label_free_hidden=yes("labels only assign neurons to classes after the fact; weights never see them"),
        c6_unsigned_error=yes("no error signal at all (on the MLP; on the CNN the delta-rule readout uses a "
                              "signed error: see stdp_conv.ConvSTDP.claims)"),
    )

    is_conv = False

    def __new__(cls, *args, **kwargs):
        # One rule, one registry line: a cnn stack gets the convolutional implementation
        # (a subclass, so isinstance checks and the shared machinery still hold). Called
        # without arguments (copy, unpickling) it builds the class asked for.
        stack = args[0] if args else kwargs.get("stack")
        target = cls
        if stack is not None and getattr(stack, "arch", None) == "cnn" and not cls.is_conv:
            from .stdp_conv import conv_variant

            target = conv_variant(cls)
        return super().__new__(target)

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def network_for(cls, cfg) -> dict:
        # one plastic layer of n_exc neurons (see `n_exc`); on the CNN the conv variant's maps
        if cfg.model == "cnn":
            from .stdp_conv import conv_variant

            return conv_variant(cls).network_for(cfg)
        n = cls.Options(**cfg.rule_options).n_neurons
        return {"widths": (n if n is not None else cfg.widths[0] if cfg.widths else 1600,)}

    def n_exc(self) -> int:
        if "_n_exc" not in self.__dict__:  # the dense network's width, as `network_for` chose it
            self._n_exc = STDP.network_for(self.cfg.model_copy(update={"model": "mlp"}))["widths"][0]
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
        # only the unsupervised rule reads out linearly; R-STDP's decision layer is its readout
        return self.opts.readout == "linear" and type(self).name == "stdp"

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
    @torch.no_grad()
    def simulate(self, x: torch.Tensor, learn: bool, rate_scale: float = 1.0, record: bool = False):
        """Present x for `time_steps` steps. Returns (exc spike counts, extra dict) where extra
        has the accumulated STDP terms 'ltp' = sum_t s_post^T x_pre, 'ltd' = sum_t x_post(t-1)^T
        s_pre (both (n_exc, n_in), summed over the batch) and, with `record`, the spike trains."""
        o = self.opts
        p = spike_probabilities(to_unit_range(x), o.spikes_per_step * rate_scale)
        B, n_in = p.shape
        gen = None
        if o.encoding == "poisson":
            # training draws from the learner's running generator; evaluation from a fresh one
            # with a fixed seed, so a prediction depends only on the weights and the input
            # (identical after a checkpoint is restored, identical on every call)
            gen = self.generator(x.device) if learn else torch.Generator(device=x.device).manual_seed(
                self.cfg.seed + 99991)
        exc = LIFState(B, self.n_exc(), x.device, p.dtype)
        pre_trace = torch.zeros_like(p)
        md, dpre, dpost = decay(o.tau_mem), decay(o.tau_pre), decay(o.tau_post)
        thr = o.v_thresh + self.theta
        ltp = torch.zeros(self.n_exc(), n_in, device=x.device, dtype=p.dtype) if learn else None
        ltd = torch.zeros_like(ltp) if learn else None
        pre_rec, post_rec = [], []
        state = self.begin_presentation(B, x.device, p.dtype, learn)
        for t in range(self.presentation_steps(learn)):
            s_in = encode(p, t, o.encoding, gen)
            pre_trace = dpre * pre_trace + s_in
            post_trace_before = exc.trace
            s = exc.step(self.exc.drive(s_in), thr, md, dpost, o.inhibition, o.one_winner)
            if learn:
                ltp += s.t() @ (pre_trace - o.x_tar) if o.x_tar else s.t() @ pre_trace
                ltd += post_trace_before.t() @ s_in
            self.after_exc_step(state, s, t, learn)
            if record:
                pre_rec.append(s_in)
                post_rec.append(s)
        extra = {"ltp": ltp, "ltd": ltd, "state": state}
        if record:
            extra["pre"] = torch.stack(pre_rec)
            extra["post"] = torch.stack(post_rec)
        return exc.count, extra

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


class RSTDP(STDP):
    name = "rstdp"
    description = "Reward-modulated STDP (Mozafari et al. 2018): STDP layer + decision neurons learning from reward"
    claims = Claims(
        c1_no_weight_transport=yes("no feedback pathway: updates use spike traces and a scalar reward"),
        c2_local_error=partial("synapses use local traces times one global scalar reward (a neuromodulator)"),
        c3_single_phase=yes("the reward arrives at the end of the same presentation"),
        c4_spiking=yes("LIF neurons communicate by binary spikes"),
        c5_label_free_hidden=yes("the excitatory layer learns by unsupervised STDP; only decision neurons get reward"),
        c6_unsigned_error=partial("a scalar reward/punishment (+1/-1), no per-neuron error"),
    )

    # multiplier of the reward and punishment rates, set per epoch from the run's lr schedule
    rate_factor = 1.0

    def n_out(self) -> int:
        return self.stack.num_classes * self.opts.decision_per_class

    def set_lr_factor(self, factor: float) -> None:
        # the schedule anneals the decision layer's plasticity too (these updates are not
        # gradients, but without annealing the layer keeps hopping between fixed points: conv
        # R-STDP on full MNIST went 94.26% -> 92.83% from epoch 3 to 4 at constant rates)
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
