"""Rules written to fool the plausibility probes: each must be classified as what it is.

Every adversary is a small `Learner` subclass built directly (not registered); the probes run
its real `train_step` over a short trajectory."""

import pytest
import torch
import torch.nn.functional as F

from bioplausible.algorithms.base import Learner
from bioplausible.algorithms.fa import FeedbackAlignment
from bioplausible.criteria.claims import Claims, yes
from bioplausible.criteria.probes import (
    probe_label_free,
    probe_locality,
    probe_phases,
    probe_rule,
    probe_unsigned_error,
    probe_weight_transport,
)

ALL_YES = Claims(*(yes("claimed by the adversary") for _ in range(6)))


# -- weight transport in disguise ------------------------------------------------------------
class AlternatingTranspose(FeedbackAlignment):
    """W^T on every other train_step, random feedback otherwise."""

    def train_step(self, x, y):
        self._odd = not getattr(self, "_odd", True)
        return super().train_step(x, y)

    def hidden_error(self, l, delta_next, x_next_shape, e):
        layer = self.stack.layers[l + 1]
        fb = layer.weight if self._odd else self.feedback(l + 1)
        return layer.input_grad(delta_next, fb, x_next_shape)


class StaleCopy(FeedbackAlignment):
    """Feedback B := W, refreshed after every update: backprop one step stale."""

    def train_step(self, x, y):
        out = super().train_step(x, y)
        for i, layer in enumerate(self.stack.layers):
            getattr(self, f"B{i}").copy_(layer.weight.detach())
        return out


class NormalisedTranspose(FeedbackAlignment):
    """W^T / ||W||: the transpose at a fixed norm."""

    def hidden_error(self, l, delta_next, x_next_shape, e):
        layer = self.stack.layers[l + 1]
        return layer.input_grad(delta_next, layer.weight / layer.weight.norm(), x_next_shape)


class TransposeAdmixture(FeedbackAlignment):
    """Fixed random feedback with 5% of W^T mixed in."""

    def hidden_error(self, l, delta_next, x_next_shape, e):
        layer = self.stack.layers[l + 1]
        return layer.input_grad(delta_next, self.feedback(l + 1) + 0.05 * layer.weight, x_next_shape)


class FALinear(FeedbackAlignment):
    """Genuine feedback alignment whose forward pass bypasses Layer.drive (F.linear)."""

    def forward_op(self, h, layer):
        return F.linear(h, layer.weight, layer.bias)

    @torch.no_grad()
    def compute_grads(self, x, y):
        layers = self.stack.layers
        inputs, pres, h = [], [], x
        for layer in layers:
            h = h.flatten(1)
            inputs.append(h)
            a = self.forward_op(h, layer)
            pres.append(a)
            h = torch.tanh(a) if layer is not layers[-1] else a
        loss, e = self.output_error(h, y)
        grads, delta = {}, e
        for l in range(len(layers) - 1, -1, -1):
            grads[layers[l].weight], grads[layers[l].bias] = delta.t() @ inputs[l], delta.sum(0)
            if l > 0:
                delta = (delta @ self.feedback(l)) * (1 - torch.tanh(pres[l - 1]) ** 2)
        return loss, h, grads


class DelayedBP(Learner):
    """Backprop whose gradient is applied one step late."""

    claims = ALL_YES

    def train_step(self, x, y):
        logits = self.stack(x)
        loss = F.cross_entropy(logits, y)
        params = [p for l in self.stack.layers for p in (l.weight, l.bias)]
        grads = torch.autograd.grad(loss, params)
        old = getattr(self, "_pending", None)
        self._pending = [g.detach().clone() for g in grads]
        if old is not None:
            self.apply_updates(dict(zip(params, old)))
        return {"loss": loss.detach(), "correct": (logits.argmax(1) == y).sum()}


# -- Hebbian variants --------------------------------------------------------------------------
class Hebb(Learner):
    """Each layer: dW = -a x^T / n from its own input and drive (anti-gradient convention)."""

    claims = ALL_YES

    def hebb(self, x):
        grads, h, hs = {}, x, []
        for layer in self.stack.layers:
            a = layer.drive(h)
            grads[layer.weight] = -(a.t() @ layer.prepare(h)) / len(x)
            h = layer.post(a)
            hs.append(h)
        return grads, hs

    @torch.no_grad()
    def train_step(self, x, y):
        grads, hs = self.hebb(x)
        self.apply_updates(grads)
        return {"loss": F.cross_entropy(hs[-1], y), "correct": (hs[-1].argmax(1) == y).sum()}


class RewardHebb(Hebb):
    """Hebbian update times one global +-1 reward computed from the output (three-factor)."""

    @torch.no_grad()
    def train_step(self, x, y):
        grads, hs = self.hebb(x)
        logits = hs[-1]
        r = torch.sign((logits.gather(1, y[:, None]).squeeze(1) - logits.mean(1)).sum())
        self.apply_updates({p: r * g for p, g in grads.items()})
        return {"loss": F.cross_entropy(logits, y), "correct": (logits.argmax(1) == y).sum()}


class AutogradHebb(Hebb):
    """The same Hebbian update, computed with torch.autograd.grad of a per-layer energy."""

    def train_step(self, x, y):
        grads, h = {}, x
        for layer in self.stack.layers:
            xin = layer.prepare(h).detach()
            a = layer.drive(xin)
            energy = -0.5 * a.pow(2).sum() / len(x)  # d/dW = -a x^T / n: Hebbian
            (gw,) = torch.autograd.grad(energy, [layer.weight])
            grads[layer.weight] = gw
            h = layer.post(a).detach()
        self.apply_updates(grads)
        return {"loss": F.cross_entropy(h, y), "correct": (h.argmax(1) == y).sum()}


class LabelBuffer(Hebb):
    """Hidden units pulled toward class prototypes built from PAST labels; the current label
    is never read in the hidden update (the prototype is chosen by the nearest class)."""

    @torch.no_grad()
    def train_step(self, x, y):
        grads, hs = self.hebb(x)
        h0 = hs[0]
        proto = getattr(self, "_proto", torch.zeros(10, h0.shape[1], dtype=h0.dtype))
        nearest = torch.cdist(h0, proto).argmin(1)
        target = proto[nearest]
        layer = self.stack.layers[0]
        grads[layer.weight] = grads[layer.weight] - ((target - h0).t() @ layer.prepare(x)) / len(x)
        self.apply_updates(grads)
        self._proto = proto.index_add(0, y, h0) / 2  # the label buffer, kept across steps
        return {"loss": F.cross_entropy(hs[-1], y), "correct": (hs[-1].argmax(1) == y).sum()}


# -- phases in disguise ------------------------------------------------------------------------
def _embed(x, labels):
    x = x.flatten(1).clone()
    x[:, :10] = F.one_hot(labels, 10).to(x.dtype)
    return x


class PosNegHalves(Learner):
    """Contrastive rule: half the batch embedded with its true label, the SAME samples with a
    wrong label in the other half, one pass; the update contrasts the two conditions."""

    claims = ALL_YES

    @torch.no_grad()
    def train_step(self, x, y):
        k = len(x) // 2
        xs, ys = x[:k], y[:k]
        h = torch.cat([_embed(xs, ys), _embed(xs, (ys + 1) % 10)])
        sign = torch.cat([torch.ones(k), -torch.ones(k)]).to(x.dtype)[:, None]
        grads = {}
        for layer in self.stack.layers:
            a = layer.drive(h)
            grads[layer.weight] = -((sign * a).t() @ h) / len(x)
            h = layer.post(a)
        self.apply_updates(grads)
        return {"loss": torch.zeros(()), "correct": 0}


class SecondPassOutsideDrive(Hebb):
    """A second, noisy pass through F.linear (outside Layer.drive); the update contrasts the passes."""

    @torch.no_grad()
    def train_step(self, x, y):
        grads, h, g = {}, x, x
        for layer in self.stack.layers:
            xin, gin = layer.prepare(h), layer.prepare(g)
            a = layer.drive(xin)
            b = F.linear(gin, layer.weight, layer.bias) + 0.1 * torch.randn_like(a)
            grads[layer.weight] = -((a - b).t() @ xin) / len(x)
            h, g = layer.post(a), layer.post(b)
        self.apply_updates(grads)
        return {"loss": F.cross_entropy(h, y), "correct": (h.argmax(1) == y).sum()}


# -- the tests ---------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [AlternatingTranspose, StaleCopy, DelayedBP, NormalisedTranspose,
                                 TransposeAdmixture])
def test_weight_transport_in_disguise_is_caught(cls):
    r = probe_weight_transport(cls)
    assert r.verdict == "no", r.evidence
    assert "magnitudes are transported" in r.evidence


def test_local_rule_transports_its_heads():
    r = probe_weight_transport("local")
    assert r.verdict == "no" and "heads." in r.evidence, r.evidence


def test_forward_outside_drive_is_unverifiable_not_partial():
    r = probe_weight_transport(FALinear)
    assert r.verdict is None and r.evidence.startswith("unverifiable") and "linear on layer" in r.evidence


def test_delayed_backprop_fails_everything_backprop_fails():
    out = probe_rule(DelayedBP)
    for key in ("c1_no_weight_transport", "c2a_no_downstream", "c3_single_phase", "c5_label_free_hidden"):
        assert out[key].verdict == "no", (key, out[key].evidence)


def test_label_buffer_is_caught():
    assert probe_label_free(LabelBuffer).verdict == "no"
    assert probe_label_free(Hebb).verdict == "yes"


def test_global_reward_is_a_broadcast_scalar():
    r = probe_locality(RewardHebb)
    assert r.verdict == "partial", r.evidence
    assert all(d["rank"] <= 1 for d in r.data.values())
    assert probe_weight_transport(RewardHebb).verdict == "yes"
    c6 = probe_unsigned_error(RewardHebb)
    assert c6.verdict == "partial", c6.evidence


def test_phases_in_disguise():
    halves = probe_phases(PosNegHalves)
    assert halves.verdict == "no" and halves.data["paired"], halves.evidence
    second = probe_phases(SecondPassOutsideDrive)
    assert second.verdict == "no" and second.data["resweep"] and second.data["sweeps"] == 2, second.evidence
    assert probe_weight_transport(SecondPassOutsideDrive).verdict is None  # forward outside drive


def test_autograd_inside_one_layer_is_not_a_backward_phase():
    r = probe_phases(AutogradHebb)
    assert r.verdict == "yes" and r.data["local_autograd"] == len(r.data["rows"]), r.evidence
    assert probe_phases("bp").data["crossing_backward"] == 1


class FAMatmul(FALinear):
    """The same, with the forward written as x @ W.t()."""

    def forward_op(self, h, layer):
        return h @ layer.weight.t() + layer.bias


def test_hand_written_forward_is_unverifiable_too():
    r = probe_weight_transport(FAMatmul)
    assert r.verdict is None and "matmul with W^T on layer" in r.evidence, r.evidence


class PaddedFeedback(FeedbackAlignment):
    """FA calling its feedback twice per layer, to pass for a relaxation's top-down input."""

    def hidden_error(self, l, delta_next, x_next_shape, e):
        super().hidden_error(l, delta_next, x_next_shape, e)
        return super().hidden_error(l, delta_next, x_next_shape, e)


def test_padded_feedback_is_still_a_backward_sweep():
    r = probe_phases(PaddedFeedback)
    assert r.verdict == "no" and "backward sweep" in r.evidence, r.evidence
