"""Probes: measure plausibility criteria on a rule's real `train_step`, not on its claims.

Every probe builds the rule on the same tiny network (an MLP 64-16-16-16-10 on digits-sized
input, float64, SGD without momentum, lr 0.01) and runs a short TRAJECTORY of `STEPS`
train steps on fixed batches, re-seeding the global RNG before every step, so that a
stochastic rule draws exactly the same noise in every run. An intervention is applied from
the first step on, around every step, and whole trajectories are compared: a rule that
cheats only on some calls (every other step), keeps a stale copy of a quantity it must not
have (B := W after each update), delays it (backprop applied one step late) or stores it
across steps (a label buffer) shows up on a later step even when the first looks clean.

What "the update" of a matrix is: the gradient-like tensor the rule hands to an optimiser
(captured by a global optimiser step pre-hook, so BP's `.grad`, `apply_updates` and a rule's
private optimisers are all seen, before any optimiser non-linearity such as Adam's), or,
for a parameter no optimiser steps, the change of the weight itself (in-place rules).
"Learned matrices" are all of the learner's parameters with two or more dimensions: the
stack's weights and everything the rule adds (local heads, inverse maps, readouts).

C1 weight transport (measured)
    Each learned matrix P is made to hold P + N everywhere but in its forward use: for stack
    layers `Layer.transport_probe` (the drive still computes W x), for any other matrix a
    `TorchFunctionMode` that corrects its `F.linear`/`conv2d` calls. Activity and losses
    are unchanged; only a learning pathway that reads P itself (autograd through it, P used
    as feedback, a copy of it, its norm) sees P + N. Two kinds of N, applied at every step:
    (a) a random offset of ten times P's typical magnitude, which changes signs;
    (b) a magnitude-only change, P * m with m > 0 per weight, which keeps every sign.
    If any OTHER matrix's update changes under (b), P's magnitudes are transported: 'no'.
    If only under (a): only P's signs are transported: 'partial'. Neither: 'yes'.
    Every pair (P, Q) counts: one pair with a dependence decides. At each step's start P is
    reset to its value in the unperturbed run, so that a rule reading its own weights in its
    own update (row normalisation, Oja) does not move P's forward value.
    Unverifiable ('undecided'): the rule runs forward ops on the batch outside `Layer.drive`
    (`F.linear`/`conv2d` with a stack weight, or a matmul with its transpose, seen by a
    `TorchFunctionMode` over the whole trajectory; a one-row power iteration is a read of
    W and is measured), or its prediction changes under the probe (a relaxation with
    symmetric feedback, as in EP). Then the forward computation would see P + N too, and
    the learning pathway cannot be isolated.

C2 local error: two properties
    C2a "no downstream dependence" (measured): layer l's neighbourhood is layers l-1, l, l+1
    and the label. The weights of the layers m >= l+2 are changed for real, at three scales
    (0.1, 1 and 10 times their typical magnitude, two random directions each), on a batch of
    `C2_BATCH` samples over the whole trajectory. A change of dW_l means the update depends on
    the network above l+1. The rank of the changes (at the first step where one appears)
    says what arrived: at most one scalar per sample (rank <= batch size, a reward-like
    broadcast) -> 'partial'; more -> an error vector -> 'no'. Dependence on the weights of
    layers below l-1 (other than through l-1's activity, which legitimately carries it) is
    covered by C1's all-pairs test.
    C2 "local error representation" (the reference paper's sense: each unit's update is
    proportional to a function of its own state and an error or target held at that unit)
    cannot be read off the updates in general; it is measured 'yes' when C2a is 'yes' (no
    information from downstream at all), otherwise the rule's claim stands.

C3 single phase (measured)
    Phases are network-wide sweeps whose results must be kept for a later one, not API
    calls. Seen through a `TorchFunctionMode` watching every `F.linear`/`conv2d` on a stack
    weight (inside `Layer.drive` or not): 'no' for a backward pass that crosses layers (an
    autograd call on a graph where some layer's input came from another layer's output
    undetached), a backward sweep of explicit feedback (`Layer.input_grad` at most once per
    layer; the many calls of a relaxation are its top-down input, not a phase), two
    conditions side by side (more rows than the batch, or two rows of one pass holding the
    same stimulus), the same stimulus swept through the first layer twice, a free then a
    clamped phase, or an error vector from above reaching the
    updates after a single sweep with none of these (C2a 'no': an implicit feedback phase,
    as DFA's broadcast); 'yes' for one sweep and none of these; several sweeps of changing
    inputs (time steps) and nothing else: undecided.
    Free then clamped: the probed step is run a second time with every label changed (same
    weights, same noise); the first op whose input differs is where the label enters the
    network's activity. If that op drives a layer l which, like every layer below it, had
    already been driven before with a stimulus-dependent input (one that differs between the
    samples), the activity was computed without the target and is computed again under it:
    a free phase whose state the clamped (or nudged) phase starts from, as PC's feed-forward
    initialisation and EP's free equilibrium. This does not count calls, so it holds when a
    rule reuses the free phase's drives instead of sweeping the stimulus again. A label that
    only reaches the updates, or is part of the stimulus from the first op, is no phase. An
    autograd call that stays inside one layer (a block and its head, a Hebbian update
    written with autograd) is not a backward phase.

C4 spiking (measured)
    Every input to layers >= 1 during the presentation must be in {0, 1}. A presentation's
    time steps are the calls of the first layer; calls after the last one that read out
    the accumulated counts are named in the evidence and allowed. With no input to layers
    >= 1 during the presentation, the first layer's input (the encoded stimulus) is checked.

C5 label-free hidden layers (measured)
    The same trajectory with every label changed: do the hidden layers' (all but the last
    layer) updates change at any step?

C6 unsigned error (measured where decidable)
    After two warm-up steps (identical in both runs, so that zero-initialised heads are not
    probed in a degenerate state), `STEPS` steps at batch 1 under two labellings; at the
    first step where a layer's update differs, the two updates are compared. No
    difference at any step: 'yes' for that layer. A
    change that only rescales the whole update (a scalar reward/punishment): 'partial'. A
    rank-one change delta x^T recovers the signal delta each unit receives: one sign across
    the units: 'partial'; mixed signs (a signed error vector): 'no' (only at the readout:
    'partial'). Otherwise undecided.

A rule may declare `probe_options` (a dict of rule options the probes use, e.g. one
perturbation per update for perturbation learning); they are shown under the matrix.
`ProbeUnavailable` means the probe does not apply (reported 'n/a'); a `ProbeResult` with
verdict None means it ran and could not decide ('undecided').
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch.optim.optimizer import register_optimizer_step_pre_hook
from torch.overrides import TorchFunctionMode

from ..config import RunConfig

PROBE_WIDTHS = (16, 16, 16)
PROBE_CHANNELS = (4, 4, 4)
INPUT_SHAPE = (1, 8, 8)
NUM_CLASSES = 10
BATCH = 8
C2_BATCH = 2
STEPS = 4  # trajectory length; every intervention is applied from the first step on
SEED = 0
STEP_SEED = 1234
OFFSET_SCALE = 10.0  # |N| relative to mean |P|: changes most signs
MAGNITUDE_SPREAD = 0.5  # m = exp(0.5 z): a magnitude-only change by a typical factor 1.6
C2_SCALES = (0.1, 1.0, 10.0)
C2_DIRECTIONS = 2
C6_WARMUP = 2  # steps at batch BATCH before the batch-1 steps of C6
TOL = 1e-6  # relative change counted as "changed" (float64; rules computing in float32 reach ~1e-7)

_LINEAR_OPS = (F.linear, F.conv2d, torch.conv2d)


def configuration() -> str:
    """The probed configuration, in words (stated under the matrix)."""
    arch = "-".join(map(str, (math.prod(INPUT_SHAPE), *PROBE_WIDTHS, NUM_CLASSES)))
    return (f"probed on an MLP {arch} (CNN with channels {PROBE_CHANNELS} for conv-only rules), float64, "
            f"SGD lr 0.01 without momentum, each rule's default options (plus its probe_options), trajectories "
            f"of {STEPS} train steps on batches of {BATCH} (C2a: {C2_BATCH}, C6: 1) with every intervention from "
            f"the first step on; C2a perturbation scales {', '.join(map(str, C2_SCALES))} x mean |W|")


class ProbeUnavailable(RuntimeError):
    """The probe does not apply to this rule (reported 'n/a', with the reason)."""


@dataclass
class ProbeResult:
    verdict: str | None  # yes / no / partial, None when the probe ran but cannot decide
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


def trajectory_batches(n: int = BATCH, steps: int = STEPS) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [probe_batch(n, seed=100 + t) for t in range(steps)]


def other_labels(y: torch.Tensor, step: int = 0) -> torch.Tensor:
    """Every label changed (to a different class). The shift varies with the sample and the
    step, so that the change is no consistent renaming of the classes (to which a rule with
    symmetric, e.g. zero-initialised, readouts would be blind)."""
    return (y + 1 + (torch.arange(len(y)) + step) % (NUM_CLASSES - 1)) % NUM_CLASSES


def learned_matrices(learner) -> dict[str, torch.nn.Parameter]:
    """Every parameter with two or more dimensions: stack weights and the rule's own matrices."""
    return {n: p for n, p in learner.named_parameters() if p.dim() >= 2}


def stack_names(learner) -> list[str]:
    by_id = {id(p): n for n, p in learner.named_parameters()}
    return [by_id[id(l.weight)] for l in learner.stack.layers]


class UpdateRecorder:
    """Records every learned matrix's update during one train_step (see module doc)."""

    def __init__(self, learner) -> None:
        self.params = learned_matrices(learner)
        self._index = {id(p): n for n, p in self.params.items()}
        self.captured: dict[str, torch.Tensor] = {}

    def _hook(self, opt, args, kwargs):
        for group in opt.param_groups:
            for p in group["params"]:
                n = self._index.get(id(p))
                if n is not None and p.grad is not None:
                    g = p.grad.detach().clone()
                    self.captured[n] = self.captured[n] + g if n in self.captured else g

    def __enter__(self):
        self.before = {n: p.detach().clone() for n, p in self.params.items()}
        self._handle = register_optimizer_step_pre_hook(self._hook)
        return self

    def __exit__(self, *exc):
        self._handle.remove()
        self.updates = {n: self.captured.get(n, p.detach() - self.before[n]) for n, p in self.params.items()}
        return False


@dataclass
class Trajectory:
    updates: list[dict[str, torch.Tensor]]  # per step: matrix name -> update
    losses: list[float | None]  # the loss train_step reported, per step
    names: list[str]  # the stack's weight names, input to output
    values: list[dict[str, torch.Tensor]] = field(default_factory=list)  # every matrix at each step's start


def run_trajectory(cls, name, batches, intervene: Callable | None = None, instrument: Callable | None = None,
                   rule_options=None) -> Trajectory:
    """Fresh learner; for each batch: intervention and instrument (functions
    (learner, step) -> context manager, entered around the step), re-seeded RNG, one train_step."""
    learner = build_probe_learner(cls, name, rule_options=rule_options)
    ups, losses, values = [], [], []
    with _float64():
        for t, (x, y) in enumerate(batches):
            values.append({n: p.detach().clone() for n, p in learned_matrices(learner).items()})
            with contextlib.ExitStack() as st:
                if intervene is not None:
                    st.enter_context(intervene(learner, t))
                if instrument is not None:
                    st.enter_context(instrument(learner, t))
                rec = st.enter_context(UpdateRecorder(learner))
                torch.manual_seed(STEP_SEED + t)
                out = learner.train_step(x, y)
            ups.append(rec.updates)
            loss = out.get("loss") if isinstance(out, dict) else None
            losses.append(float(loss) if loss is not None else None)
    return Trajectory(ups, losses, stack_names(learner), values)


def traj_rel(a: Trajectory, b: Trajectory, key: str) -> float:
    """Relative change of one matrix's updates over the whole trajectory (b is the reference)."""
    num = sum(float((ua[key] - ub[key]).norm()) ** 2 for ua, ub in zip(a.updates, b.updates))
    den = sum(float(ub[key].norm()) ** 2 for ub in b.updates)
    if den == 0:
        return 0.0 if num == 0 else math.inf
    return math.sqrt(num / den)


def _updated(ref: Trajectory, key: str) -> bool:
    return any(float(u[key].norm()) > 0 for u in ref.updates)


# -- watching every op that touches a weight ----------------------------------------------
class WeightWatch(TorchFunctionMode):
    """Sees every `F.linear`/`conv2d` whose weight argument is a stack weight and every matmul
    with a transposed view of one (x @ W.t()), inside `Layer.drive` or not, and every autograd
    call; optionally corrects the forward use of
    non-stack matrices under a learning-pathway offset (C1 on auxiliary matrices)."""

    def __init__(self, learner, aux_offsets: dict[int, torch.Tensor] | None = None) -> None:
        super().__init__()
        self.layers = list(learner.stack.layers)
        self.layer_of = {id(l.weight): i for i, l in enumerate(self.layers)}
        self.aux_offsets = aux_offsets or {}
        self.in_drive = 0
        self.ops: list[dict[str, Any]] = []  # forward uses of stack weights, in order
        self.outside: list[str] = []  # forward ops on stack weights outside Layer.drive
        self.autograd: list[dict[str, Any]] = []
        self.input_grad = 0
        self.transposed: dict[int, tuple[int, torch.Tensor]] = {}  # id -> (layer, the view, kept alive)

    def _record(self, i: int, x: torch.Tensor, op: str) -> None:
        self.ops.append({"layer": i, "rows": int(x.shape[0]), "x": x.detach(), "op": op,
                         "crosses": bool(x.requires_grad and x.grad_fn is not None),
                         "in_drive": self.in_drive > 0})
        if not self.in_drive:
            self.outside.append(f"{op} on layer {i}")

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name == "__get__":  # a property: W.T / W.mT
            name = getattr(getattr(func, "__self__", None), "__name__", "")
        if name in ("t", "T", "mT", "transpose", "permute") and args and id(args[0]) in self.layer_of:
            # a transposed view of a stack weight: x @ W^T is a forward use written by hand
            out = func(*args, **kwargs)
            self.transposed[id(out)] = (self.layer_of[id(args[0])], out)
            return out
        if name in ("matmul", "mm", "__matmul__") and len(args) == 2 and id(args[1]) in self.transposed:
            self._record(self.transposed[id(args[1])][0], args[0], "matmul with W^T")
        if func in _LINEAR_OPS and len(args) >= 2:
            w = args[1]
            i = self.layer_of.get(id(w))
            if i is not None:
                self._record(i, args[0], getattr(func, "__name__", str(func)))
            n = self.aux_offsets.get(id(w))
            if n is not None:
                out = func(*args, **kwargs)
                extra = {"padding": kwargs["padding"]} if "padding" in kwargs else {}
                return out - func(args[0].detach(), n, None, *args[3:], **extra)
        return func(*args, **kwargs)

    @contextlib.contextmanager
    def watching(self):
        """Enter the mode and wrap drive/input_grad and the autograd entry points."""
        layers = self.layers

        for layer in layers:
            def drive(x, _orig=layer.drive):
                self.in_drive += 1
                try:
                    return _orig(x)
                finally:
                    self.in_drive -= 1

            def input_grad(*a, _orig=layer.input_grad, **k):
                self.input_grad += 1
                return _orig(*a, **k)

            layer.drive, layer.input_grad = drive, input_grad
        orig_backward, orig_grad = torch.autograd.backward, torch.autograd.grad
        n_ops = lambda: len(self.ops)  # noqa: E731

        depth = [0]  # count the outermost call only (one autograd entry may call another)

        def counted(kind, orig):
            def call(*a, **k):
                if depth[0] == 0:
                    self.autograd.append({"kind": kind, "ops_before": n_ops()})
                depth[0] += 1
                try:
                    return orig(*a, **k)
                finally:
                    depth[0] -= 1
            return call

        backward, grad = counted("backward", orig_backward), counted("grad", orig_grad)

        torch.autograd.backward, torch.autograd.grad = backward, grad
        try:
            with self:
                yield self
        finally:
            torch.autograd.backward, torch.autograd.grad = orig_backward, orig_grad
            for layer in layers:
                del layer.drive
                del layer.input_grad


# -- C1 -----------------------------------------------------------------------------------
def _offsets_for(learner, key: str, kind: str, seed: int) -> torch.Tensor:
    p = dict(learner.named_parameters())[key]
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(p.shape, generator=g, dtype=p.dtype)
    if kind == "sign":
        return z * p.detach().abs().mean().clamp_min(1e-3) * OFFSET_SCALE
    return p.detach() * (torch.exp(MAGNITUDE_SPREAD * z) - 1)  # P * m, m > 0: every sign kept


def _pathway_offset(key: str, kind: str, seed: int, ref: Trajectory):
    """Intervention: matrix `key` holds P + N everywhere but in its forward use, every step
    (a magnitude-only N is recomputed from the current P, so signs stay exactly P's). At
    each step's start P is reset to its value in the reference trajectory: a rule that reads
    its OWN weights in its own update (Oja, row normalisation) would otherwise change P's
    forward value and with it, legitimately, every update downstream."""
    fixed: dict[str, torch.Tensor] = {}

    @contextlib.contextmanager
    def ctx(learner, t):
        p = dict(learner.named_parameters())[key]
        with torch.no_grad():
            p.copy_(ref.values[t][key])
        n = fixed.setdefault("n", _offsets_for(learner, key, kind, seed)) if kind == "sign" else \
            _offsets_for(learner, key, kind, seed)
        layer = next((l for l in learner.stack.layers if l.weight is p), None)
        if layer is not None:
            with layer.transport_probe(n):
                yield
            return
        w = WeightWatch(learner, {id(p): n})
        with torch.no_grad():
            p.add_(n)
        try:
            with w.watching():
                yield
        finally:
            with torch.no_grad():
                p.sub_(n)

    return ctx


def _forward_isolated(cls, name, x) -> bool:
    """Does the probe leave the rule's prediction exactly unchanged?"""
    learner = build_probe_learner(cls, name)
    with torch.no_grad(), _float64():
        ref = learner.predict(x)
        with contextlib.ExitStack() as st:
            for m, l in enumerate(learner.stack.layers):
                st.enter_context(l.transport_probe(_offsets_for(learner, stack_names(learner)[m], "sign", 100 + m)))
            out = learner.predict(x)
    return bool(torch.allclose(ref, out, rtol=1e-9, atol=1e-12))


def _watch_every_step(seen: list[WeightWatch]):
    """An instrument for `run_trajectory` that watches each step and appends its WeightWatch."""

    @contextlib.contextmanager
    def inst(learner, t):
        w = WeightWatch(learner)
        with w.watching():
            yield
        seen.append(w)

    return inst


def _outside_ops(cls, name, batches) -> list[str]:
    seen: list[WeightWatch] = []
    inst = _watch_every_step(seen)

    run_trajectory(cls, name, batches, instrument=inst)
    b = len(batches[0][0])
    return sorted({f"{o['op']} on layer {o['layer']}"
                   for w in seen for o in w.ops if not o["in_drive"] and o["rows"] % b == 0})


def probe_weight_transport(rule, ref: Trajectory | None = None) -> ProbeResult:
    name, cls = resolve_rule(rule)
    batches = trajectory_batches()
    ref = ref if ref is not None else run_trajectory(cls, name, batches)
    learner = build_probe_learner(cls, name)
    keys = list(learned_matrices(learner))
    updated = [k for k in keys if _updated(ref, k)]
    if not updated:
        raise ProbeUnavailable(f"no learned matrix received an update in {STEPS} steps")
    per: dict[str, dict[str, dict[str, float]]] = {"sign": {}, "magnitude": {}}
    # forward ops on the batch's activity outside Layer.drive (a one-row power iteration, as
    # PC's rate cap runs, is a read of W, which the probe measures)
    outside = _outside_ops(cls, name, batches)
    unverifiable = bool(outside) or not _forward_isolated(cls, name, batches[0][0])
    for j, key in enumerate(keys):
        others = [k for k in updated if k != key]
        if not others:
            continue
        for kind in ("magnitude", "sign"):
            run = run_trajectory(cls, name, batches, _pathway_offset(key, kind, 10 + j, ref))
            per[kind][key] = {k: traj_rel(run, ref, k) for k in others}
            if kind == "magnitude" and max(per[kind][key].values()) > TOL:
                break  # magnitudes transported: the sign-changing run cannot change the verdict
    data: dict[str, Any] = {"r": per, "matrices": keys}

    def worst(kind):
        pairs = [(r, src, dst) for src, d in per[kind].items() for dst, r in d.items()]
        return max(pairs) if pairs else (0.0, None, None)

    if unverifiable:
        why = (f"it runs forward ops on the batch outside Layer.drive ({', '.join(outside)})" if outside else
               "its prediction changes when a weight is changed everywhere but in Layer.drive (it reads the "
               "weights elsewhere, e.g. symmetric feedback in a relaxation)")
        return ProbeResult(None, f"unverifiable: {why}, so the learning pathway cannot be isolated from the forward "
                                 "computation", data)
    r, src, dst = worst("magnitude")
    if r > TOL:
        return ProbeResult("no", f"the updates of {dst} change when only the magnitudes of {src} change in the "
                                 f"learning pathway (r = {r:.2g} over {STEPS} steps): magnitudes are transported", data)
    r, src, dst = worst("sign")
    if r > TOL:
        return ProbeResult("partial", f"the updates of {dst} change with the signs of {src} in the learning pathway "
                                      f"(r = {r:.2g}), not with magnitudes alone: only signs are transported", data)
    return ProbeResult("yes", f"no learned matrix's updates change over {STEPS} steps when any other of the "
                              f"{len(keys)} learned matrices is changed in the learning pathway (signs or magnitudes)",
                       data)


# -- C2a ----------------------------------------------------------------------------------
def _set_weights(deltas: dict[int, torch.Tensor]):
    @contextlib.contextmanager
    def ctx(learner, t):
        if t == 0:  # for real, once: the change stays for the whole trajectory
            with torch.no_grad():
                for m, d in deltas.items():
                    learner.stack.layers[m].weight.add_(d)
        yield

    return ctx


def probe_locality(rule, ref: Trajectory | None = None) -> ProbeResult:
    name, cls = resolve_rule(rule)
    learner = build_probe_learner(cls, name)
    weights = [l.weight.detach() for l in learner.stack.layers]
    names = stack_names(learner)
    n_layers = len(weights)
    if n_layers < 3:
        raise ProbeUnavailable("network too shallow: no layer has layers above l+1")
    batches = trajectory_batches(C2_BATCH)
    ref = ref if ref is not None else run_trajectory(cls, name, batches)
    data: dict[str, Any] = {}
    vector, scalar, measured = [], [], False
    for l in range(n_layers - 2):
        key = names[l]
        if not _updated(ref, key):
            continue
        measured = True
        runs = []
        for s in C2_SCALES:
            for j in range(C2_DIRECTIONS):
                deltas = {}
                for m in range(l + 2, n_layers):
                    g = torch.Generator().manual_seed(300 + 17 * j + m)
                    deltas[m] = torch.randn(weights[m].shape, generator=g, dtype=weights[m].dtype) \
                        * weights[m].abs().mean() * s
                runs.append((s, run_trajectory(cls, name, batches, _set_weights(deltas))))
        rel = {s: max(traj_rel(r, ref, key) for s2, r in runs if s2 == s) for s in C2_SCALES}
        changed = [r for _, r in runs if traj_rel(r, ref, key) > TOL]
        rank = 0
        if changed:
            t0 = min(t for r in changed for t in range(len(ref.updates))
                     if float((r.updates[t][key] - ref.updates[t][key]).norm())
                     > TOL * max(float(ref.updates[t][key].norm()), 1e-300))
            d = torch.stack([(r.updates[t0][key] - ref.updates[t0][key]).flatten() for _, r in runs])
            sv = torch.linalg.svdvals(d)
            rank = int((sv > sv[0] * 1e-6).sum())
        data[l] = {"rel_change_by_scale": rel, "rank": rank}
        if rank > C2_BATCH:
            vector.append(l)
        elif rank > 0:
            scalar.append(l)
    if not measured:
        raise ProbeUnavailable("no layer with layers above l+1 received an update")
    scales = ", ".join(map(str, C2_SCALES))
    if vector:
        ranks = max(data[l]["rank"] for l in vector)
        return ProbeResult("no", f"the updates of layer(s) {vector} change when the weights above l+1 change "
                                 f"(scales {scales}): an error vector arrives (rank {ranks} > batch {C2_BATCH})", data)
    if scalar:
        at = sorted({s for l in scalar for s, r in data[l]["rel_change_by_scale"].items() if r > TOL})
        return ProbeResult("partial", f"the updates of layer(s) {scalar} depend on the weights above l+1 only through "
                                      f"one scalar per sample (rank <= batch {C2_BATCH}; seen at scale(s) "
                                      f"{', '.join(map(str, at))})", data)
    return ProbeResult("yes", f"no layer's updates change over {STEPS} steps when the weights above l+1 change "
                              f"(scales {scales}, batch {C2_BATCH})", data)


# -- C3 / C4 ------------------------------------------------------------------------------
def _watch_step(cls, name, batches, step: int, relabel: bool = False) -> WeightWatch:
    """The WeightWatch of step `step` of the reference trajectory; `relabel`: with every label
    of that step (only) changed, so the weights and the re-seeded noise are the same."""
    seen: dict[int, WeightWatch] = {}
    if relabel:
        x, y = batches[step]
        batches = [*batches[:step], (x, other_labels(y, step))]

    @contextlib.contextmanager
    def inst(learner, t):
        if t != step:
            yield
            return
        w = WeightWatch(learner)
        with w.watching():
            yield
        seen[t] = w

    run_trajectory(cls, name, batches[: step + 1], instrument=inst)
    return seen[step]


def _same_stimulus(a: torch.Tensor, b: torch.Tensor | None = None) -> bool:
    """Do two rows (of a, or of a and b) share most non-binary entries exactly? A probe batch
    is Gaussian, so exact equality only comes from presenting one stimulus twice."""
    a = a.flatten(1)
    b = a if b is None else b.flatten(1)
    if a.shape[1] != b.shape[1]:
        return False
    nb_a = (a != 0) & (a != 1)
    eq = (a[:, None, :] == b[None, :, :]) & nb_a[:, None, :]
    frac = eq.sum(-1).double() / a.shape[1]
    if b is a:
        frac.fill_diagonal_(0)
    return bool((frac > 0.5).any())


def _varies(x: torch.Tensor) -> bool:
    """Does an op's input differ between the rows of the batch (the stimulus has reached it)?"""
    x = x.flatten(1)
    return len(x) > 1 and bool((x != x[:1]).any())


def _label_onset(a: WeightWatch, b: WeightWatch) -> dict[str, Any] | None:
    """The first forward op whose input differs between two runs of one step that differ only
    in the labels: where the label first enters the network's activity. With it, the
    layers the stimulus had reached before (a stimulus-dependent input, driven label-free).
    None when the labels never change an input to a stack layer."""
    i = next((i for i, (p, q) in enumerate(zip(a.ops, b.ops)) if p["layer"] != q["layer"]
              or p["x"].shape != q["x"].shape
              or not torch.allclose(p["x"], q["x"], rtol=0, atol=0, equal_nan=True)), None)
    if i is None:
        if len(a.ops) == len(b.ops):
            return None
        i = min(len(a.ops), len(b.ops))  # the label changes how many ops run
    op = (a.ops if i < len(a.ops) else b.ops)[i]
    reached = sorted({o["layer"] for o in a.ops[:i] if _varies(o["x"])})
    return {"op": i, "of": len(a.ops), "layer": op["layer"], "label_free_layers": reached,
            "redrive": all(l in reached for l in range(op["layer"] + 1)),
            # a later phase that never drives the first layer again starts from a stored state
            "first_layer_reused": op["layer"] > 0 and not any(o["layer"] == 0 for o in a.ops[i:])}


def probe_phases(rule, watch: WeightWatch | None = None, downstream_vector: bool = False,
                 relabeled: WeightWatch | None = None) -> ProbeResult:
    """See the module doc. `downstream_vector`: C2a found an error vector arriving from the
    network above; after a single sweep with no other mechanism that is an implicit
    feedback phase (the error is broadcast after the sweep, as in DFA). `relabeled`: the
    same step's watch with every label changed (computed when not given)."""
    name, cls = resolve_rule(rule)
    batches = trajectory_batches()
    w = watch if watch is not None else _watch_step(cls, name, batches, STEPS - 1)
    w2 = relabeled if relabeled is not None else _watch_step(cls, name, batches, STEPS - 1, relabel=True)
    onset = _label_onset(w, w2)
    clamped = bool(onset and onset["redrive"])
    b = len(batches[0][0])
    n_layers = len(w.layers)
    rows = [sum(o["rows"] for o in w.ops if o["layer"] == i) for i in range(n_layers)]
    sweeps = max(math.ceil(r / b) for r in rows) if rows else 0
    first = [o for o in w.ops if o["layer"] == 0]
    side_by_side = any(o["rows"] > b for o in w.ops)
    paired = any(_same_stimulus(o["x"]) for o in first)
    resweep = any(_same_stimulus(p["x"], q["x"]) for i, p in enumerate(first) for q in first[i + 1:])
    crossing = [a for a in w.autograd if any(o["crosses"] for o in w.ops[: a["ops_before"]])]
    local_ag = len(w.autograd) - len(crossing)
    feedback = w.input_grad
    parts = [f"{sweeps} forward sweep{'s' if sweeps != 1 else ''}"]
    if side_by_side:
        parts.append(f"{math.ceil(max(o['rows'] for o in w.ops) / b)} copies of the batch side by side")
    if paired:
        parts.append("one stimulus in two conditions within one pass")
    if resweep:
        parts.append("the same stimulus swept through the first layer again (a second phase on the "
                     "stimulus, e.g. free then nudged, or an initial pass then a relaxation)")
    if crossing:
        parts.append(f"{len(crossing)} autograd backward pass(es) crossing layers")
    if local_ag:
        parts.append(f"{local_ag} autograd call(s) confined to single layers (not a phase)")
    # explicit feedback once per layer is a backward sweep; many more calls are the top-down
    # input of a relaxation, part of one dynamics and no phase by itself (its phases show as a
    # free then a clamped phase, below)
    # (a relaxation interleaves its feedback with several forward sweeps)
    backward_sweep = feedback > 0 and (feedback <= n_layers or sweeps <= 1)
    if backward_sweep:
        parts.append(f"a backward sweep of explicit feedback ({feedback} Layer.input_grad call(s))")
    elif feedback:
        parts.append(f"top-down input in a relaxation ({feedback} Layer.input_grad calls: dynamics, not a phase)")
    if clamped:
        parts.append(f"a free then a clamped phase (the label first changes an input at op {onset['op']} of "
                     f"{onset['of']}, to layer {onset['layer']}, after the stimulus had been swept label-free through "
                     f"layers {', '.join(map(str, onset['label_free_layers']))}: activity computed without the "
                     "target is computed again under it"
                     + (", from the stored free state (the first layer is not driven again)"
                        if onset["first_layer_reused"] else "") + ")")
    elif onset is not None:
        parts.append(f"the label enters the activity at op {onset['op']} of {onset['of']} (layer {onset['layer']}), "
                     "not after a label-free sweep up to that layer")
    implicit = downstream_vector and not (crossing or feedback)
    if implicit:
        parts.append("a feedback phase (an error vector from the network above reaches the updates after the sweep)")
    separate = side_by_side or paired or resweep or clamped or bool(crossing) or backward_sweep or implicit
    phases = max(sweeps, 1) + (1 if (crossing or backward_sweep or implicit) else 0)
    data = {"rows": rows, "sweeps": sweeps, "phases": phases, "crossing_backward": len(crossing),
            "local_autograd": local_ag, "input_grad": feedback, "side_by_side": side_by_side,
            "paired": paired, "resweep": resweep, "clamped_phase": clamped, "label_onset": onset,
            "outside_drive": sorted(set(w.outside))}
    evidence = "step " + str(STEPS - 1) + ": " + ", ".join(parts)
    if separate:
        return ProbeResult("no", evidence, data)
    if sweeps <= 1:
        return ProbeResult("yes", evidence, data)
    return ProbeResult(None, evidence + " (time steps of changing inputs: counting cannot tell one dynamics "
                                        "from sequential phases)", data)


def _binary(x: torch.Tensor) -> bool:
    return bool(((x == 0) | (x == 1)).all())


def probe_spiking(rule, watch: WeightWatch | None = None) -> ProbeResult:
    name, cls = resolve_rule(rule)
    batches = trajectory_batches()
    w = watch if watch is not None else _watch_step(cls, name, batches, STEPS - 1)
    if not w.ops:
        raise ProbeUnavailable("no forward op on a stack weight was seen")
    last0 = max((i for i, o in enumerate(w.ops) if o["layer"] == 0), default=-1)
    steps0 = sum(o["layer"] == 0 for o in w.ops)
    top = len(w.layers) - 1
    # with several time steps, the readout's calls after the last one read out the counts
    readout = lambda i, o: steps0 >= 2 and i > last0 and o["layer"] == top  # noqa: E731
    during = [o for i, o in enumerate(w.ops) if o["layer"] >= 1 and not readout(i, o)]
    after = [o for i, o in enumerate(w.ops) if readout(i, o)]
    checked = during if during else [o for o in w.ops if o["layer"] == 0]
    what = "inputs to layers >= 1" if during else "inputs to the first layer (nothing reaches layers >= 1 during " \
                                                  "the presentation)"
    bad = [o for o in checked if not _binary(o["x"])]
    note = f"; {len(after)} read-out(s) after the presentation not counted" if after else ""
    data = {"checked": len(checked), "non_binary": len(bad), "time_steps": steps0, "after": len(after)}
    if bad:
        return ProbeResult("no", f"{len(bad)} of {len(checked)} {what} are not in {{0,1}} (time steps: {steps0})"
                           + note, data)
    return ProbeResult("yes", f"all {len(checked)} {what} over {steps0} time step(s) are in {{0,1}}" + note, data)


# -- C5 -----------------------------------------------------------------------------------
def probe_label_free(rule, ref: Trajectory | None = None) -> ProbeResult:
    name, cls = resolve_rule(rule)
    batches = trajectory_batches()
    ref = ref if ref is not None else run_trajectory(cls, name, batches)
    hidden = [k for k in ref.names[:-1] if _updated(ref, k)]
    if not hidden:
        raise ProbeUnavailable(f"no hidden layer received an update in {STEPS} steps")
    run = run_trajectory(cls, name, [(x, other_labels(y, t)) for t, (x, y) in enumerate(batches)])
    rel = {k: traj_rel(run, ref, k) for k in hidden}
    changed = [k for k, r in rel.items() if r > TOL]
    if changed:
        return ProbeResult("no", f"hidden layer update(s) {changed} change when every label of the {STEPS}-step "
                                 f"trajectory changes (max r = {max(rel.values()):.2g})", {"r": rel})
    return ProbeResult("yes", f"hidden layers' updates identical over {STEPS} steps under different labels "
                              f"(max r = {max(rel.values()):.1e})", {"r": rel})


# -- C6 -----------------------------------------------------------------------------------
def probe_unsigned_error(rule) -> ProbeResult:
    name, cls = resolve_rule(rule)
    # warm-up steps (identical in both runs) put the rule in a typical state (zero-initialised
    # heads, say, would make its first updates degenerate); then batch-1 steps under two labels
    warm = trajectory_batches()[:C6_WARMUP]
    batches = [probe_batch(1, seed=7 + t) for t in range(STEPS)]
    seen: list[WeightWatch] = []
    inst = _watch_every_step(seen)

    w0 = len(warm)
    a = run_trajectory(cls, name, warm + batches, instrument=lambda lr, t: inst(lr, t) if t >= w0
                       else contextlib.nullcontext())
    b = run_trajectory(cls, name, warm + [(x, other_labels(y, t)) for t, (x, y) in enumerate(batches)])
    a.updates, b.updates = a.updates[w0:], b.updates[w0:]
    names = a.names
    per: dict[str, str] = {}
    for i, key in enumerate(names):
        # the first step at which the label makes a difference (before it, the runs are identical)
        t = next((t for t in range(len(batches)) if float((a.updates[t][key] - b.updates[t][key]).norm())
                  > TOL * max(float(a.updates[t][key].norm()), float(b.updates[t][key].norm()))), None)
        if t is None:
            if _updated(a, key):
                per[key] = "yes"
            continue
        ua, ub = a.updates[t][key], b.updates[t][key]
        d = ua - ub
        cos = float((ua.flatten() @ ub.flatten()) / (ua.norm() * ub.norm()).clamp_min(1e-300))
        if abs(cos) > 1 - 1e-9:
            per[key] = "partial"  # the label only rescales the whole update: a scalar per sample
            continue
        inputs = [o["x"] for o in seen[t].ops if o["layer"] == i and o["rows"] == 1]
        xi = inputs[0].flatten() if inputs else None
        if xi is None or d.dim() != 2 or xi.numel() != d.shape[1] or float(xi.norm()) == 0:
            per[key] = "undecided"
            continue
        delta = d @ xi / (xi @ xi)
        if float((d - delta[:, None] * xi[None, :]).norm()) > 1e-6 * float(d.norm()):
            per[key] = "undecided"  # not rank one in the layer's input: no per-unit signal to recover
            continue
        big = delta.abs() > 1e-9 * float(delta.abs().max())
        per[key] = "partial" if (delta[big] > 0).all() or (delta[big] < 0).all() else "no"
    if not per:
        raise ProbeUnavailable(f"no layer received an update in {STEPS} steps at batch 1")
    hidden = {k: v for k, v in per.items() if k != names[-1]}
    top = per.get(names[-1])
    data = {"per_layer": per}
    desc = ", ".join(f"layer {names.index(k)}: {v}" for k, v in per.items())
    if "no" in hidden.values():
        return ProbeResult("no", f"a hidden layer's units receive a label-dependent signal of mixed signs ({desc})",
                           data)
    if "undecided" in per.values():
        return ProbeResult(None, f"a label-dependent update is not rank one in its input ({desc})", data)
    if all(v == "yes" for v in per.values()):
        return ProbeResult("yes", f"no layer's update changes with the labels over {STEPS} steps at batch 1", data)
    if top == "no" and all(v == "yes" for v in hidden.values()):
        return ProbeResult("partial", f"only the readout receives a signed error vector ({desc})", data)
    return ProbeResult("partial", f"the labels reach the updates only as one scalar or one sign per sample ({desc})",
                       data)


PROBES = ("c1_no_weight_transport", "c2a_no_downstream", "c3_single_phase", "c4_spiking", "c5_label_free_hidden",
          "c6_unsigned_error")


def probe_rule(rule) -> dict[str, ProbeResult | Exception]:
    """Run every probe on one rule; a failing probe gives its exception, not a crash."""
    out: dict[str, ProbeResult | Exception] = {}
    name, cls = resolve_rule(rule)
    batches = trajectory_batches()
    try:
        ref = run_trajectory(cls, name, batches)
    except Exception as e:  # the rule cannot build or step: every probe reports it
        return {"_error": e, **{k: e for k in PROBES}}
    try:
        watch = _watch_step(cls, name, batches, STEPS - 1)
        relabeled = _watch_step(cls, name, batches, STEPS - 1, relabel=True)
    except Exception as e:
        watch = relabeled = e
    def vector():
        c2a = out.get("c2a_no_downstream")
        return isinstance(c2a, ProbeResult) and c2a.verdict == "no"

    for key, fn in (("c1_no_weight_transport", lambda: probe_weight_transport(cls, ref)),
                    ("c2a_no_downstream", lambda: probe_locality(cls)),
                    ("c3_single_phase", lambda: probe_phases(cls, watch, vector(), relabeled)),
                    ("c4_spiking", lambda: probe_spiking(cls, watch)),
                    ("c5_label_free_hidden", lambda: probe_label_free(cls, ref)),
                    ("c6_unsigned_error", lambda: probe_unsigned_error(cls))):
        try:
            if isinstance(watch, Exception) and key in ("c3_single_phase", "c4_spiking"):
                raise watch
            out[key] = fn()
        except Exception as e:
            out[key] = e
    return out
