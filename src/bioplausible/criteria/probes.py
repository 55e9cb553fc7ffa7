"""Probes: measure plausibility criteria on a rule's real `train_step`, not on its claims.

Every probe builds the rule on the same tiny network (an MLP 64-16-16-16-10 on digits-sized
input, float64, SGD without momentum), runs two warm-up steps on another batch (identical in
every run; a rule whose first step is special, e.g. zero-initialised local heads, is then
probed in a typical state), then ONE probed `train_step` on a fixed batch, and compares
the update each layer's weight receives under controlled interventions. Every run rebuilds
the learner from the same seed and re-seeds the global RNG right before `train_step`, so a
stochastic rule draws exactly the same noise in every run: any difference in an update is
caused by the intervention alone.

What "the update" of a layer is: the gradient-like tensor the rule hands to an optimiser
(captured by a global optimiser step pre-hook, so BP's `.grad`, `apply_updates` and a rule's
private optimisers are all seen, before any optimiser non-linearity such as Adam's), or,
for a parameter no optimiser steps, the change of the weight itself (in-place rules).

C1 weight transport (measured)
    `Layer.transport_probe(N)` on layer l+1 makes its parameter hold W + N while
    `Layer.drive` still computes exactly W x. The forward activity, the output and the loss
    are therefore unchanged; only a learning pathway that reads the forward weights (autograd
    through the layer, `layer.weight` used as feedback) sees W + N. We measure the relative
    change r(N) = |dW_l(N) - dW_l| / |dW_l| for each adjacent pair (l, l+1), N ~ 10 |W|.
    r = 0: no transport. r > 0: transport; then the linearity test classifies it: reusing
    W itself is linear in N, so r(2N) = 2 r(N) ("full"); a bounded function of W such as
    sign(W) saturates at |N| >> |W|, so r(2N) ~ r(N) ("partial", e.g. sign symmetry).
    Before that, a check that the probe leaves the rule's prediction unchanged: if not, the
    rule's inference reads the weights outside `Layer.drive` (symmetric feedback in a
    relaxation, as in EP, or a forward that bypasses `drive`); the learning pathway cannot
    be isolated from inference, and C1 is reported as claimed (with that observation).

C2 local error (measured)
    Layer l's neighbourhood is layers l-1, l, l+1 (their activity and weights) and the
    label. Two interventions that leave the whole neighbourhood of l untouched:
    (i) non-adjacent weights in the learning pathway: `transport_probe` on every layer
        m >= l+2 (forward unchanged). A change of dW_l means the learning pathway of l
        reads weights of non-adjacent layers (BP, sign symmetry).
    (ii) the downstream network for real: three random changes of the weights of layers
        m >= l+2 in the forward pass (batch of one sample). Upstream activity (layers <= l+1)
        and the label are unchanged, so a local rule's dW_l must not change. If it does,
        the update depends on an error computed elsewhere. The rank of the three changes
        says what arrived: rank 1 = a single broadcast scalar per sample (a reward-like
        loss change, as in perturbation learning) -> 'partial'; rank > 1 = an error
        vector -> not local (FA, DFA, BP, and rules whose relaxation carries the output
        error down, e.g. PC and EP equilibria).
    Measured verdict: 'no' if (i) or a vector in (ii), 'partial' if only a scalar, else 'yes'.

C3 single phase (measured)
    `Layer.drive` of every layer is wrapped to count the rows it processes during one
    `train_step`; forward sweeps = max over layers of rows / batch size (K stacked
    perturbed copies count K; positive and negative data count 2; T relaxation steps count
    T). Autograd backward calls (`torch.autograd.backward`, and `torch.autograd.grad` with
    layer parameters among its inputs) and explicit feedback (`Layer.input_grad`) are
    counted too. A rule with one forward sweep whose updates nevertheless depend on the
    downstream network (C2 (ii)) must deliver that information in a second, feedback phase.
    Each backward call is reported with the number of layers whose weights it reaches;
    any backward, network-wide or confined to a block (local losses), is forward-then-
    backward, a second phase.
    Verdict 'no': a backward, explicit or implicit feedback, or several copies of the batch
    side by side (conditions run in parallel here that a network would have to run one
    after the other and keep apart); 'yes': one sweep and none of these; otherwise (several
    sweeps of the same batch: relaxation or time steps, or sequential phases) counting
    cannot decide and the claim stands, with the counts as evidence.

C5 label-free hidden layers (measured)
    The same batch with different labels: do the hidden layers' (all but the last layer)
    updates change?

A rule may declare `probe_options` (a dict of rule options the probes use, e.g. one
perturbation per update for perturbation learning); they are shown in the matrix's evidence.

C4 spiking and C6 unsigned error are reported as the rule claims them ('claimed').
A criterion is also 'claimed' when its probe cannot apply (no update to compare, a network
too shallow, a rule whose prediction reads the weights outside `Layer.drive`, C3 counts that
cannot decide), and 'error' when the rule fails to build or step.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from ..config import RunConfig

PROBE_WIDTHS = (16, 16, 16)
PROBE_CHANNELS = (4, 4, 4)
INPUT_SHAPE = (1, 8, 8)
NUM_CLASSES = 10
BATCH = 8
SEED = 0
STEP_SEED = 1234
OFFSET_SCALE = 10.0  # |N| relative to mean |W|: large enough for sign(W + N) to saturate
TOL = 1e-6  # relative change counted as "changed" (float64; rules computing in float32 reach ~1e-7)
N_DOWNSTREAM = 3
WARMUP = 2  # train steps on another batch before the probed step


class ProbeUnavailable(RuntimeError):
    """The probe does not apply to this rule (reported as 'claimed', with the reason)."""


@dataclass
class ProbeResult:
    verdict: str | None  # yes / no / partial, None when not measurable
    evidence: str
    data: dict[str, Any] = field(default_factory=dict)


# -- building and stepping ----------------------------------------------------------------
@contextlib.contextmanager
def _float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def resolve_rule(rule) -> tuple[str, type]:
    """A registered name or a Learner class -> (name, class)."""
    from ..algorithms import get

    if isinstance(rule, str):
        return rule, get(rule)
    return getattr(rule, "name", rule.__name__), rule


def build_probe_learner(cls, name: str | None = None, seed: int = SEED, rule_options: dict | None = None):
    """The rule on the probe network (float64, SGD without momentum, lr 0.01), with the
    rule's `probe_options` (a class attribute, if it declares one) as its rule options."""
    from ..algorithms import RULES
    from ..models import build

    arch = "mlp" if "mlp" in cls.architectures else ("cnn" if "cnn" in cls.architectures else None)
    if arch is None:
        raise ProbeUnavailable(f"rule supports neither mlp nor cnn ({', '.join(cls.architectures)})")
    cfg_rule = name if name in RULES else "bp"  # unregistered classes (tests) borrow a valid name
    cfg = RunConfig(rule=cfg_rule, model=arch, optimizer="sgd", lr=0.01, momentum=0.0, seed=seed,
                    widths=PROBE_WIDTHS if arch == "mlp" else None,
                    channels=PROBE_CHANNELS if arch == "cnn" else None,
                    rule_options={**getattr(cls, "probe_options", {}), **(rule_options or {})}, device="cpu")
    kw: dict[str, Any] = {"act": cls.default_act}
    if arch == "mlp":
        kw["widths"] = PROBE_WIDTHS
    else:
        kw["channels"] = PROBE_CHANNELS
    with _float64():
        torch.manual_seed(seed)
        stack = build(arch, INPUT_SHAPE, NUM_CLASSES, seed=seed, **kw).double()
        learner = cls(stack, cfg).double()
    learner.train()
    return learner


def probe_batch(n: int = BATCH, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *INPUT_SHAPE, generator=g, dtype=torch.float64)
    y = torch.randint(0, NUM_CLASSES, (n,), generator=g)
    return x, y


class UpdateRecorder:
    """Records each stack layer's weight update during one train_step (see module doc)."""

    def __init__(self, learner) -> None:
        self.layers = list(learner.stack.layers)
        self._index = {id(l.weight): i for i, l in enumerate(self.layers)}
        self.captured: dict[int, torch.Tensor] = {}

    def _hook(self, opt, args, kwargs):
        for group in opt.param_groups:
            for p in group["params"]:
                i = self._index.get(id(p))
                if i is not None and p.grad is not None:
                    g = p.grad.detach().clone()
                    self.captured[i] = self.captured[i] + g if i in self.captured else g

    def __enter__(self):
        self.before = [l.weight.detach().clone() for l in self.layers]
        self._handle = register_optimizer_step_pre_hook(self._hook)
        return self

    def __exit__(self, *exc):
        self._handle.remove()
        after = [l.weight.detach().clone() for l in self.layers]
        self.updates = [self.captured.get(i, after[i] - self.before[i]) for i in range(len(self.layers))]
        return False


def run_step(cls, name, x, y, intervene: Callable | None = None, rule_options=None, instrument=None) -> list[torch.Tensor]:
    """Fresh learner, optional intervention (a function learner -> context manager, entered
    around the step), re-seeded RNG, one train_step; returns the per-layer updates."""
    learner = build_probe_learner(cls, name, rule_options=rule_options)
    with _float64():
        # warm-up steps, identical in every run, so that rules whose first step is special
        # (zero-initialised heads, unsupervised phases) are probed in a typical state
        xw, yw = probe_batch(BATCH, seed=99)
        torch.manual_seed(STEP_SEED + 1)
        for _ in range(WARMUP):
            learner.train_step(xw, yw)
    with _float64(), contextlib.ExitStack() as st:
        if intervene is not None:
            st.enter_context(intervene(learner))
        if instrument is not None:
            st.enter_context(instrument(learner))
        rec = st.enter_context(UpdateRecorder(learner))
        torch.manual_seed(STEP_SEED)
        learner.train_step(x, y)
    return rec.updates


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    nb = float(b.norm())
    return float((a - b).norm()) / nb if nb > 0 else float("nan")


def _offset(weight: torch.Tensor, scale: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(weight.shape, generator=g, dtype=weight.dtype) * weight.detach().abs().mean() * scale


def _transport(layer_offsets: dict[int, torch.Tensor]):
    """Intervention: `transport_probe` on the given layers (learning pathway only)."""

    @contextlib.contextmanager
    def ctx(learner):
        with contextlib.ExitStack() as st:
            for m, n in layer_offsets.items():
                st.enter_context(learner.stack.layers[m].transport_probe(n))
            yield

    return ctx


def _forward_isolated(cls, name, x) -> bool:
    """Does the probe leave the rule's forward output exactly unchanged?"""
    learner = build_probe_learner(cls, name)
    with torch.no_grad(), _float64():
        ref = learner.predict(x)
        offsets = {m: _offset(l.weight, OFFSET_SCALE, 100 + m) for m, l in enumerate(learner.stack.layers)}
        with _transport(offsets)(learner):
            out = learner.predict(x)
    return bool(torch.allclose(ref, out, rtol=1e-9, atol=1e-12))


# -- C1 -----------------------------------------------------------------------------------
def probe_weight_transport(rule, ref: list[torch.Tensor] | None = None) -> ProbeResult:
    name, cls = resolve_rule(rule)
    x, y = probe_batch()
    if not _forward_isolated(cls, name, x):
        raise ProbeUnavailable("the rule's prediction changes when W is changed everywhere but in Layer.drive: its "
                               "inference reads the weights outside the forward drive (e.g. symmetric feedback W^T "
                               "in a relaxation) or bypasses Layer.drive, so the learning pathway cannot be isolated")
    ref = ref if ref is not None else run_step(cls, name, x, y)
    weights = [l.weight for l in build_probe_learner(cls, name).stack.layers]
    per_pair = {}
    for l in range(len(weights) - 1):
        if float(ref[l].norm()) == 0:
            continue
        n = _offset(weights[l + 1], OFFSET_SCALE, 10 + l)
        r1 = _rel(run_step(cls, name, x, y, _transport({l + 1: n}))[l], ref[l])
        r2 = _rel(run_step(cls, name, x, y, _transport({l + 1: 2 * n}))[l], ref[l])
        per_pair[l] = (r1, r2)
    if not per_pair:
        raise ProbeUnavailable("no layer below the top received an update in one step")
    l_max = max(per_pair, key=lambda k: per_pair[k][0])
    r1, r2 = per_pair[l_max]
    data = {"r": {f"{l}<-{l + 1}": v[0] for l, v in per_pair.items()}, "r2_over_r": r2 / r1 if r1 > 0 else None}
    if r1 < TOL:
        return ProbeResult("yes", f"updates unchanged when W_(l+1) is replaced in the learning pathway "
                                  f"(max r = {r1:.1e})", data)
    ratio = r2 / r1
    if ratio > 1.5:
        return ProbeResult("no", f"dW_{l_max} changes with W_{l_max + 1} (r = {r1:.2g}) and linearly "
                                 f"(r(2N)/r(N) = {ratio:.2f}): the forward weights are reused", data)
    return ProbeResult("partial", f"dW_{l_max} changes with W_{l_max + 1} (r = {r1:.2g}) but saturates "
                                  f"(r(2N)/r(N) = {ratio:.2f}): a bounded function of W (e.g. its signs) is transported",
                       data)


# -- C2 -----------------------------------------------------------------------------------
def _set_weights(deltas: dict[int, torch.Tensor]):
    @contextlib.contextmanager
    def ctx(learner):
        with torch.no_grad():
            for m, d in deltas.items():
                learner.stack.layers[m].weight.add_(d)
        yield

    return ctx


def probe_locality(rule) -> ProbeResult:
    name, cls = resolve_rule(rule)
    weights = [l.weight for l in build_probe_learner(cls, name).stack.layers]
    n_layers = len(weights)
    if n_layers < 3:
        raise ProbeUnavailable("network too shallow for non-adjacent layers")
    x, y = probe_batch()
    isolated = _forward_isolated(cls, name, x)
    ref = run_step(cls, name, x, y)
    x1, y1 = probe_batch(1, seed=1)
    ref1 = run_step(cls, name, x1, y1)
    data: dict[str, Any] = {"nonadjacent_weights": {}, "downstream": {}}
    reads_weights, vector, scalar, measured_any = [], [], [], False
    for l in range(n_layers - 2):
        # (i) non-adjacent forward weights in the learning pathway only
        if isolated and float(ref[l].norm()) > 0:
            offs = {m: _offset(weights[m], OFFSET_SCALE, 200 + 10 * l + m) for m in range(l + 2, n_layers)}
            r = _rel(run_step(cls, name, x, y, _transport(offs))[l], ref[l])
            data["nonadjacent_weights"][l] = r
            measured_any = True
            if r > TOL:
                reads_weights.append(l)
        # (ii) the downstream network, for real (upstream activity and label unchanged)
        if float(ref1[l].norm()) > 0:
            diffs = []
            for j in range(N_DOWNSTREAM):
                deltas = {m: _offset(weights[m], 1.0, 300 + 17 * j + m) for m in range(l + 2, n_layers)}
                diffs.append((run_step(cls, name, x1, y1, _set_weights(deltas))[l] - ref1[l]).flatten())
            d = torch.stack(diffs)
            rel = float(d.norm(dim=1).max()) / float(ref1[l].norm())
            s = torch.linalg.svdvals(d)
            rank = int((s > s[0] * 1e-6).sum()) if rel > TOL else 0
            data["downstream"][l] = {"rel_change": rel, "rank": rank}
            measured_any = True
            if rank > 1:
                vector.append(l)
            elif rank == 1:
                scalar.append(l)
    if not measured_any:
        raise ProbeUnavailable("no hidden layer below l+2 received an update in one step")
    if reads_weights:
        return ProbeResult("no", f"the update of layer(s) {reads_weights} reads forward weights of non-adjacent layers", data)
    if vector:
        ranks = [data["downstream"][l]["rank"] for l in vector]
        return ProbeResult("no", f"the update of layer(s) {vector} depends on the network above l+1 through an "
                                 f"error vector (rank {max(ranks)} over {N_DOWNSTREAM} downstream changes)", data)
    if scalar:
        return ProbeResult("partial", f"the update of layer(s) {scalar} depends on the network above l+1 only "
                                      f"through one broadcast scalar per sample (rank 1)", data)
    return ProbeResult("yes", "updates unchanged by non-adjacent weights (learning pathway) and by the network above l+1", data)


# -- C3 -----------------------------------------------------------------------------------
def _counting(counts: dict):
    @contextlib.contextmanager
    def ctx(learner):
        layers = list(learner.stack.layers)
        layer_of = {}
        for i, layer in enumerate(layers):
            for p in layer.parameters():
                layer_of[id(p)] = i
        counts.update(rows=[0] * len(layers), calls=[0] * len(layers), max_rows=0, input_grad=0,
                      backward=0, backward_layers=[])
        for i, layer in enumerate(layers):
            def drive(x, _orig=layer.drive, _i=i):
                counts["rows"][_i] += int(x.shape[0])
                counts["calls"][_i] += 1
                counts["max_rows"] = max(counts["max_rows"], int(x.shape[0]))
                return _orig(x)

            def input_grad(*a, _orig=layer.input_grad, **k):
                counts["input_grad"] += 1
                return _orig(*a, **k)

            layer.drive = drive
            layer.input_grad = input_grad
        orig_backward, orig_grad = torch.autograd.backward, torch.autograd.grad

        def backward(*a, **k):
            # which layers' weights does this backward reach? (their .grad changes)
            before = [None if l.weight.grad is None else l.weight.grad.clone() for l in layers]
            out = orig_backward(*a, **k)
            reached = [i for i, l in enumerate(layers) if l.weight.grad is not None
                       and (before[i] is None or not torch.equal(before[i], l.weight.grad))]
            counts["backward"] += 1
            counts["backward_layers"].append(len(reached))
            return out

        def grad(outputs, inputs, *a, **k):
            ins = inputs if isinstance(inputs, (list, tuple)) else [inputs]
            reached = {layer_of[id(t)] for t in ins if id(t) in layer_of}
            if reached:
                counts["backward"] += 1
                counts["backward_layers"].append(len(reached))
            return orig_grad(outputs, inputs, *a, **k)

        torch.autograd.backward, torch.autograd.grad = backward, grad
        try:
            yield
        finally:
            torch.autograd.backward, torch.autograd.grad = orig_backward, orig_grad
            for layer in layers:
                del layer.drive
                del layer.input_grad

    return ctx


def probe_phases(rule, downstream_dependence: bool | None = None) -> ProbeResult:
    """See the module doc. Verdicts:
    'no'  - an autograd backward pass (network-wide, or confined to one block as in local
            learning: forward-then-backward either way), explicit feedback
            (`Layer.input_grad`), an implicit feedback phase, or several copies of the batch
            evaluated side by side (clean/perturbed, positive/negative: conditions the
            network would have to run one after the other and keep apart);
    'yes' - exactly one forward sweep and none of the above;
    None  - several sweeps of the same batch and nothing else: relaxation or time steps of
            one dynamics, or sequential phases; counting cannot tell which, so the claim stands.
    """
    name, cls = resolve_rule(rule)
    x, y = probe_batch()
    counts: dict[str, Any] = {}
    run_step(cls, name, x, y, instrument=_counting(counts))
    b = len(x)
    sweeps = max(math.ceil(r / b) for r in counts["rows"]) if counts["rows"] else 0
    copies = math.ceil(counts["max_rows"] / b)
    feedback = counts["input_grad"]
    implicit = bool(downstream_dependence) and sweeps == 1 and counts["backward"] == 0 and feedback == 0
    parts = [f"{sweeps} forward sweep{'s' if sweeps != 1 else ''}"]
    if copies > 1:
        parts.append(f"{copies} copies of the batch side by side")
    for n in counts["backward_layers"]:
        parts.append(f"1 autograd backward pass reaching the weights of {n} layer{'s' if n != 1 else ''}")
    if feedback:
        parts.append(f"explicit feedback through {feedback} layer{'s' if feedback != 1 else ''}")
    if implicit:
        parts.append("a feedback phase (updates depend on the network above, after a single sweep)")
    # a backward confined to one layer/block is still "forward, then backward" in that block
    separate = copies > 1 or counts["backward"] or feedback or implicit
    phases = max(sweeps, 1) + (1 if (counts["backward"] or feedback or implicit) else 0)
    data = {**counts, "sweeps": sweeps, "copies": copies, "phases": phases}
    evidence = f"{phases} pass(es) per update: " + ", ".join(parts)
    if separate:
        return ProbeResult("no", evidence, data)
    if sweeps <= 1:
        return ProbeResult("yes", evidence, data)
    return ProbeResult(None, evidence + " (relaxation/time steps or sequential phases: not decidable by counting)", data)


# -- C5 -----------------------------------------------------------------------------------
def probe_label_free(rule, ref: list[torch.Tensor] | None = None) -> ProbeResult:
    name, cls = resolve_rule(rule)
    x, y = probe_batch()
    ref = ref if ref is not None else run_step(cls, name, x, y)
    hidden = [l for l in range(len(ref) - 1) if float(ref[l].norm()) > 0]
    if not hidden:
        raise ProbeUnavailable("no hidden layer received an update in one step")
    y2 = (y + 1 + torch.arange(len(y)) % (NUM_CLASSES - 1)) % NUM_CLASSES  # every label changed
    upd = run_step(cls, name, x, y2)
    rel = {l: _rel(upd[l], ref[l]) for l in hidden}
    changed = [l for l, r in rel.items() if r > TOL]
    if changed:
        return ProbeResult("no", f"hidden layer update(s) {changed} change with the labels (max r = {max(rel.values()):.2g})",
                           {"r": rel})
    return ProbeResult("yes", f"hidden layers' updates identical under different labels (max r = {max(rel.values()):.1e})",
                       {"r": rel})


PROBES = ("c1_no_weight_transport", "c2_local_error", "c3_single_phase", "c5_label_free_hidden")


def probe_rule(rule) -> dict[str, ProbeResult | Exception]:
    """Run every probe on one rule; a failing probe gives its exception, not a crash."""
    out: dict[str, ProbeResult | Exception] = {}
    name, cls = resolve_rule(rule)
    x, y = probe_batch()
    try:
        ref = run_step(cls, name, x, y)
    except Exception as e:  # the rule cannot build or step: every probe reports it
        return {"_error": e, **{k: e for k in PROBES}}
    for key, fn in (("c1_no_weight_transport", lambda: probe_weight_transport(cls, ref)),
                    ("c2_local_error", lambda: probe_locality(cls)),
                    ("c5_label_free_hidden", lambda: probe_label_free(cls, ref))):
        try:
            out[key] = fn()
        except Exception as e:
            out[key] = e
    c2 = out["c2_local_error"]
    dep = None
    if isinstance(c2, ProbeResult):
        dep = any(v["rank"] > 0 for v in c2.data.get("downstream", {}).values())
    try:
        out["c3_single_phase"] = probe_phases(cls, dep)
    except Exception as e:
        out["c3_single_phase"] = e
    return out
