"""STDP / R-STDP: they learn, are deterministic, and weights change only by the trace rule."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from bioplausible.config import RunConfig
from bioplausible.experiments.runner import build_learner, execute




def _learner(rule="stdp", input_shape=(1, 8, 8), seed=0, **opts):
    cfg = RunConfig(rule=rule, data="digits", seed=seed, rule_options=opts)
    return build_learner(cfg, input_shape, 10)


def test_stdp_learns_on_digits(digits):
    row = execute(RunConfig(rule="stdp", data="digits", epochs=2, rule_options={"n_neurons": 100}), data=digits)
    assert row["status"] == "done", row["reason"]
    assert row["metrics"]["test_acc"] >= 0.5  # measured 0.76; chance 0.10


def test_rstdp_learns_on_digits(digits):
    row = execute(RunConfig(rule="rstdp", data="digits", epochs=2, rule_options={"n_neurons": 100}), data=digits)
    assert row["status"] == "done", row["reason"]
    assert row["metrics"]["test_acc"] >= 0.3  # chance 0.10


@pytest.mark.parametrize("rule", ["stdp", "rstdp"])
def test_deterministic_under_seed(digits, rule):
    xb, yb = next(iter(digits.batches(32, 0, 1)))
    a, b, c = _learner(rule, n_neurons=20), _learner(rule, n_neurons=20), _learner(rule, seed=1, n_neurons=20)
    for L in (a, b, c):
        for _ in range(2):
            L.train_step(xb, yb)
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(pa, pb)
    assert not torch.equal(a.exc.weight, c.exc.weight)


@pytest.mark.parametrize("rule", ["stdp", "rstdp"])
def test_no_input_spikes_no_change(rule):
    L = _learner(rule, n_neurons=20)
    w0, r0, th0 = L.exc.weight.clone(), L.readout.weight.clone(), L.theta.clone()
    x = torch.zeros(8, 1, 8, 8)  # a blank image: no input spikes
    y = torch.arange(8)
    L.train_step(x, y)
    assert torch.equal(L.exc.weight, w0)
    assert torch.equal(L.theta, th0)
    assert torch.equal(L.readout.weight, r0) or rule == "stdp"  # stdp's readout is the label tally


def test_no_post_spikes_no_change(digits):
    L = _learner(n_neurons=20, v_thresh=1e9)  # nothing can fire
    w0 = L.exc.weight.clone()
    xb, yb = next(iter(digits.batches(16, 0, 1)))
    L.train_step(xb, yb)
    assert torch.equal(L.exc.weight, w0)


def test_update_equals_pair_rule_by_hand():
    """Tiny net (4 inputs, 3 neurons): the weight change equals the pair-based STDP sum
    computed from the recorded spike trains, spike pair by spike pair."""
    opts = dict(n_neurons=3, time_steps=12, encoding="rate", spikes_per_step=2.0, w_sum=None, v_thresh=0.3,
                one_winner=False, inhibition=0.1, eta_post=0.05, eta_pre=0.03, tau_pre=3.0, tau_post=4.0)
    L = _learner(input_shape=(1, 2, 2), **opts)
    x = torch.tensor([[0.9, 0.1, 0.5, 0.0], [0.2, 0.8, 0.0, 0.6]]).view(2, 1, 2, 2)
    probe = copy.deepcopy(L)
    _, rec = probe.simulate(x, learn=False, record=True)
    pre, post = rec["pre"], rec["post"]  # (T, B, n)
    assert post.sum() > 0 and pre.sum() > 0  # the check is not vacuous
    w0 = L.exc.weight.clone()
    L.train_step(x, torch.tensor([0, 1]))
    T = pre.shape[0]
    want = w0.clone()
    for b in range(2):
        for tpost in range(T):
            for tpre in range(T):
                for i in range(3):
                    for j in range(4):
                        pair = post[tpost, b, i] * pre[tpre, b, j]
                        if pair == 0:
                            continue
                        if tpre <= tpost:  # pre then post (or together): potentiation
                            want[i, j] += 0.05 * math.exp(-(tpost - tpre) / 3.0)
                        else:  # post strictly before pre: depression
                            want[i, j] -= 0.03 * math.exp(-(tpre - 1 - tpost) / 4.0)
    torch.testing.assert_close(L.exc.weight, want.clamp(0, 1), rtol=1e-5, atol=1e-6)


def test_hidden_weights_ignore_labels(digits):
    xb, yb = next(iter(digits.batches(32, 0, 1)))
    a = _learner(n_neurons=20)
    b = copy.deepcopy(a)
    a.train_step(xb, yb)
    b.train_step(xb, (yb + 3) % 10)
    assert torch.equal(a.exc.weight, b.exc.weight)


def test_linear_readout_learns_and_leaves_stdp_label_free(digits):
    row = execute(RunConfig(rule="stdp", data="digits", epochs=2,
                            rule_options={"n_neurons": 100, "readout": "linear"}), data=digits)
    assert row["status"] == "done", row["reason"]
    assert row["metrics"]["test_acc"] >= 0.5  # chance 0.10
    # only the readout is trained by the optimiser; the STDP layer's weights are the same
    # whatever the labels, since its update is made from spikes alone
    xb, yb = next(iter(digits.batches(32, 0, 1)))
    a, b = _learner(n_neurons=20, readout="linear"), _learner(n_neurons=20, readout="linear")
    assert {id(p) for p in a.trainable_parameters()} == {id(p) for p in a.readout.parameters()}
    a.train_step(xb, yb)
    b.train_step(xb, (yb + 1) % 10)
    assert torch.equal(a.exc.weight, b.exc.weight)
    assert not torch.equal(a.readout.weight, b.readout.weight)
    assert a.exc.weight.grad is None


def test_eval_time_steps_lengthens_test_presentations_only(digits):
    # training is the same whatever the evaluation length; evaluation then runs longer
    # (more spikes per sample) and reports rates per step, not counts
    xb, yb = next(iter(digits.batches(32, 0, 1)))
    a = _learner(n_neurons=20, readout="linear")
    b = _learner(n_neurons=20, readout="linear", eval_time_steps=256)
    a.train_step(xb, yb)
    b.train_step(xb, yb)
    assert torch.equal(a.exc.weight, b.exc.weight)
    ca, _ = a.respond(xb)
    cb, _ = b.respond(xb)
    assert cb.sum() > 2 * ca.sum()
    ra, rb = a.activations(xb)["fc1"], b.activations(xb)["fc1"]
    assert 0.5 < float(rb.mean() / ra.mean()) < 2.0


def test_rstdp_deadline_and_confidence_learn_on_digits(digits):
    opts = {"n_neurons": 100, "decision": "deadline", "confidence": 0.05}
    row = execute(RunConfig(rule="rstdp", data="digits", epochs=2, rule_options=opts), data=digits)
    assert row["status"] == "done", row["reason"]
    assert row["metrics"]["test_acc"] >= 0.3  # measured 0.664 (the defaults 0.64); chance 0.10


def _rstdp_presentation(model, xb, **opts):
    """A dense (n_neurons=40) or conv (one layer of 16 maps) R-STDP learner and the decision
    state of one training presentation of xb."""
    cfg = RunConfig(rule="rstdp", model=model, data="digits", seed=0, rule_options=opts,
                    channels=(16,) if model == "cnn" else None,
                    **({"widths": (40,)} if model == "mlp" else {}))
    L = build_learner(cfg, (1, 8, 8), 10)
    _, extra = L.simulate(xb, learn=True) if model == "mlp" else L.simulate(xb, learn=None, train=True)
    return L, extra["state"]


@pytest.mark.parametrize("model", ["mlp", "cnn"])
@pytest.mark.parametrize(("confidence", "rewarded", "learns"),
                         [(None, True, True), (1e-9, True, False), (1e-9, False, True), (1e9, True, True)])
def test_rstdp_confident_decision_learns_nothing_from_its_reward(digits, model, confidence, rewarded, learns):
    """With `confidence` (dense, at the deadline) or `conv_confidence` (conv, in the race) the
    reward is predicted by the winner's lead in summed input over the runner-up: a win by the
    full margin (any lead, at a tiny margin) changes no weight, a punishment always does, and
    at a huge margin the reward counts (almost) in full; only the winner's row ever changes."""
    xb, _ = next(iter(digits.batches(1, 0, 1)))
    opts = {"decision": "deadline", "confidence": confidence} if model == "mlp" else {"conv_confidence": confidence, "conv_decision": "race"}
    L, state = _rstdp_presentation(model, xb, **opts)
    win = int(L.winners(state)[0])
    inp = state["input"][0]
    assert inp[win] > torch.cat([inp[:win], inp[win + 1:]]).max()  # the winner leads
    cls = win // L.opts.decision_per_class
    before = L.readout.weight.clone()
    L.learn_decision(state, torch.tensor([cls if rewarded else (cls + 1) % 10]))
    changed = L.readout.weight != before
    assert bool(changed.any()) == learns
    assert not changed[torch.arange(changed.shape[0]) != win].any()


def test_rstdp_deadline_decision_is_the_most_driven_neuron(digits):
    """With `decision="deadline"` the winner (the neuron that learns) and the predicted class
    are those of the decision neuron with the most summed input; the race (the neuron that
    fires most) picks another one on some images."""
    xb, _ = next(iter(digits.batches(64, 0, 1)))
    race, deadline = _learner("rstdp", n_neurons=40), _learner("rstdp", n_neurons=40, decision="deadline")
    deadline.load_state_dict(race.state_dict())
    _, extra = deadline.simulate(xb, learn=True)
    state = extra["state"]
    most_driven = state["input"].argmax(1)
    assert torch.equal(deadline.winners(state), most_driven)
    assert not torch.equal(race.winners(state), most_driven)
    counts, ev = deadline.respond(xb)
    k = deadline.opts.decision_per_class
    assert torch.equal(deadline.predict(xb).argmax(1), ev["input"].argmax(1) // k)


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_rstdp_rates_follow_the_lr_schedule(digits, model):
    """The run's lr schedule anneals the reward and punishment rates: at factor 0 the decision
    layer learns nothing, at 0.5 it moves by half the step of factor 1 (where the soft bound
    and the clipping leave the weights alone, the step is linear in the rate)."""
    xb, yb = next(iter(digits.batches(32, 0, 1)))
    steps = []
    for factor in (0.0, 0.5, 1.0):
        L, state = _rstdp_presentation(model, xb, **({"conv_decision_norm": False} if model == "cnn" else {}))
        L.set_lr_factor(factor)
        before = L.readout.weight.clone()
        L.learn_decision(state, yb)
        steps.append(L.readout.weight - before)
    assert torch.equal(steps[0], torch.zeros_like(steps[0]))
    assert steps[2].abs().sum() > 0
    torch.testing.assert_close(steps[1], 0.5 * steps[2], rtol=0.05, atol=1e-6)


@pytest.mark.parametrize(("rate", "path"), [(0.005, "one chunk"), (0.1, "chunks"), (0.9, "product")])
def test_stdp_sums_at_spikes_equal_the_dense_sum(rate, path):
    """The trace terms summed at the post spikes equal sum_t s_post(t)^T vals(t): gathered in
    one chunk, in several, or (densely firing) as one product."""
    from bioplausible.algorithms.stdp import STDP

    g = torch.Generator().manual_seed(0)
    post = (torch.rand(5, 4, 64, generator=g) < rate).float()
    vals = torch.rand(5, 4, 6, generator=g)
    spk = post.nonzero(as_tuple=True)
    k, rows = len(spk[0]), 5 * 4
    taken = "product" if 8 * k > rows * 64 else "chunks" if k > rows else "one chunk"
    assert taken == path, (k, taken)
    acc = torch.zeros(64, 6)
    STDP._add_at_spikes(acc, vals, spk)
    torch.testing.assert_close(acc, torch.einsum("tbj,tbi->ji", post, vals))
