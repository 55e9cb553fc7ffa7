"""Weight and node perturbation: they learn, they are deterministic, their estimate is the
gradient in expectation, and they never touch autograd."""

import pytest
import torch
import torch.nn.functional as F

from bioplausible.algorithms import get
from bioplausible.config import RunConfig
from bioplausible.experiments.runner import build_learner, execute




@pytest.mark.parametrize(
    "rule,model,kw,opts,bar",
    [
        # chance is 10% (500 test digits). Measured (seeds 0/1): np mlp 0.858/0.876,
        # wp mlp 0.920/0.938, np cnn 0.770/0.728; the bars leave >= 10 points of margin.
        ("np", "mlp", dict(epochs=10, widths=(128, 64)), {"n_perturbations": 1}, 0.75),
        ("wp", "mlp", dict(epochs=15, widths=(64,), lr=1e-2), {"n_perturbations": 8}, 0.80),
        ("np", "cnn", dict(epochs=6, channels=(8, 16, 16), lr=3e-3), {"n_perturbations": 4}, 0.60),
    ],
)
def test_learns_digits(rule, model, kw, opts, bar, digits):
    cfg = RunConfig(rule=rule, model=model, data="digits", rule_options=opts, seed=0, **kw)
    row = execute(cfg, data=digits)
    assert row["status"] == "done", row["reason"]
    assert row["metrics"]["test_acc"] >= bar, row["metrics"]


def _learner(rule, model="mlp", seed=0, widths=(32, 16), **opts):
    cfg = RunConfig(rule=rule, model=model, data="digits", widths=widths, channels=(4, 4, 4), seed=seed,
                    rule_options=opts)
    return build_learner(cfg, (1, 8, 8), 10)


def _batch(n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


@pytest.mark.parametrize("rule", ["np", "wp"])
@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_deterministic_under_seed(rule, model):
    x, y = _batch()

    def weights(seed):
        torch.manual_seed(123)  # the global RNG must not matter: the rule has its own generator
        lr = _learner(rule, model, seed=seed)
        for _ in range(3):
            lr.train_step(x, y)
        return [p.detach().clone() for p in lr.stack.parameters()]

    a, b, c = weights(0), weights(0), weights(1)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not all(torch.equal(u, v) for u, v in zip(a, c))


@pytest.mark.parametrize("rule", ["np", "wp"])
@pytest.mark.parametrize("model", ["mlp", "cnn"])
@pytest.mark.parametrize("layerwise", [True, False])
def test_no_autograd_in_the_rule(rule, model, layerwise):
    """Nothing is saved for a backward pass (no graph is built) and no `.grad` exists until
    the rule hands its updates to the optimiser."""
    lr = _learner(rule, model, layerwise=layerwise)
    x, y = _batch()
    seen = []
    orig = lr.apply_updates

    def apply_updates(grads, optimizer=None):
        seen.append(all(p.grad is None for p in lr.parameters()))
        assert all(not g.requires_grad for g in grads.values() if g is not None)
        return orig(grads, optimizer)

    lr.apply_updates = apply_updates

    def pack(t):
        raise AssertionError("the rule built an autograd graph")

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = lr.train_step(x, y)
    assert seen == [True]
    assert torch.isfinite(torch.as_tensor(out["loss"]))


def _autograd_grads(learner, x, y):
    loss = F.cross_entropy(learner.stack(x), y)
    params = [l.weight for l in learner.stack.layers]
    return torch.autograd.grad(loss, params)


def _cosines(rule, x, y, **opts):
    torch.set_default_dtype(torch.float64)
    try:
        lr = _learner(rule, **opts).double()
        _, _, grads = lr.compute_grads(x.double(), y)
        true = _autograd_grads(lr, x.double(), y)
    finally:
        torch.set_default_dtype(torch.float32)
    return [float(F.cosine_similarity(grads[l.weight].flatten(), g.flatten(), dim=0))
            for l, g in zip(lr.stack.layers, true)]


@pytest.mark.parametrize(
    "rule,opts,min_cos",
    [
        ("np", dict(n_perturbations=512, sigma=1e-3), 0.95),
        ("np", dict(n_perturbations=512, sigma=1e-3, site="drive"), 0.95),
        ("np", dict(n_perturbations=512, sigma=1e-3, layerwise=False), 0.5),
        # the conv layers' outputs are pooled: their estimate reaches the pool winners only
        # (lowest layer over 4 input batches: 0.87-0.92 with 512 draws; 0.70-0.89 balanced from 128)
        ("np", dict(n_perturbations=512, sigma=1e-3, model="cnn"), 0.75),
        ("np", dict(n_perturbations=512, sigma=1e-3, model="cnn", site="drive"), 0.75),
        ("np", dict(n_perturbations=128, sigma=1e-3, model="cnn", balance=True), 0.55),
        # WP: cos ~ sqrt(K / (K + n_weights)) for K draws; a narrow net keeps n_weights small
        ("wp", dict(n_perturbations=2048, sigma=1e-3, widths=(8,)), 0.8),
        ("wp", dict(n_perturbations=2048, sigma=1e-3, widths=(8,), flipout=False), 0.8),
    ],
)
def test_estimate_is_the_gradient_in_expectation(rule, opts, min_cos):
    """Averaged over many perturbations the rule's update points along the true gradient
    (cosine per layer), which a test-only autograd computation provides."""
    cosines = _cosines(rule, *_batch(8), **opts)
    for i, cos in enumerate(cosines):
        assert cos > min_cos, (i, cos)


def test_perturbations_are_batched_not_looped():
    """All K perturbed copies of a layer's pass go through each layer in ONE call."""
    lr = _learner("np", n_perturbations=8)
    calls = []
    for layer in lr.stack.layers:
        orig = layer.drive
        layer.drive = lambda h, _o=orig: (calls.append(h.shape[0]), _o(h))[1]
    x, y = _batch(16)
    lr.train_step(x, y)
    n_layers = len(lr.stack.layers)
    # one clean call per layer + one call per (perturbed layer, layer above it)
    assert len(calls) == n_layers + n_layers * (n_layers - 1) // 2
    assert max(calls) == 2 * 8 * 16


def test_options_validated():
    with pytest.raises(ValueError, match="np"):
        _learner("np", sigmaa=0.1)
    assert get("np").claims.c1_no_weight_transport.verdict == "yes"


def test_flipout_gives_each_sample_its_own_weight_perturbation():
    """With one shared weight perturbation per draw, a batch of 64 copies of one sample
    measures one direction per draw; with Flipout each sample sees its own sign-flipped
    perturbation, so the same 8 draws measure 64 x 8 directions: a far better estimate."""
    x, y = _batch(1)
    x, y = x.repeat(64, 1, 1, 1), y.repeat(64)
    shared = _cosines("wp", x, y, n_perturbations=8, sigma=1e-3, flipout=False)
    flip = _cosines("wp", x, y, n_perturbations=8, sigma=1e-3, flipout=True)
    assert all(f > 2 * s_ and f > 0.3 for f, s_ in zip(flip, shared)), (flip, shared)


def test_balance_gives_cheap_layers_more_draws():
    """The first layer's pass runs the whole network; the readout's runs none of it. With
    `balance` the draws follow the cost: K for the first layer, up to 16 K at the top, and
    still one batched call per layer."""
    lr = _learner("np", model="cnn", n_perturbations=2, balance=True)
    calls = []
    for layer in lr.stack.layers:
        orig = layer.drive
        layer.drive = lambda h, _o=orig: (calls.append(h.shape[0]), _o(h))[1]
    lr.train_step(*_batch(4))
    n = len(lr.stack.layers)
    # after the clean forward, the pass of layer l runs layers l+1..L on 2 K_l copies of the batch
    passes, rest = [], calls[n:]
    for l in range(n - 1):
        passes.append(set(rest[:n - 1 - l]))
        rest = rest[n - 1 - l:]
    assert rest == [] and all(len(p) == 1 for p in passes)
    rows = [p.pop() for p in passes]
    assert rows[0] == 2 * 2 * 4 and rows[-1] > rows[0] and rows == sorted(rows)
    # the readout's own pass (the loss alone) costs next to nothing: it gets the cap, 16 K
    _, drives = lr.stack.forward_cache(_batch(4)[0])
    assert lr._draws(drives, [10] * n)[-1] == 32


def test_output_site_perturbs_only_units_that_can_pass_it_on():
    """site=output: the noise goes on layer outputs (after ReLU and pooling) and only where a
    unit is on, so a silent unit's estimate, and its gradient, stay exactly zero."""
    lr = _learner("np", model="mlp", n_perturbations=4)
    with torch.no_grad():
        lr.stack.layers[0].bias[:5] = -100.0  # five hidden units silent for every input
    x, y = _batch(16)
    _, _, grads = lr.compute_grads(x, y)
    g = grads[lr.stack.layers[0].weight]
    assert torch.all(g[:5] == 0) and torch.all(grads[lr.stack.layers[0].bias][:5] == 0)
    assert torch.all(g[5:].abs().sum(1) > 0)


def test_flipout_signs_are_fair_and_independent():
    """Eight signs come from each random byte: every bit position must still be a fair coin,
    and neighbouring signs (bits of one byte) uncorrelated."""
    lrn = _learner("wp")
    s = lrn._signs((3, 1001, 7), torch.zeros(1))  # 21021 signs: not a multiple of 8
    assert s.shape == (3, 1001, 7) and s.dtype == torch.float32
    assert set(s.unique().tolist()) == {-1.0, 1.0}
    flat = s.flatten()[: 21016].view(-1, 8)  # one row per byte
    # sd of a fair coin's mean over 2627 draws is 0.0195: 4 sd
    assert flat.mean(0).abs().max() < 0.08, flat.mean(0)
    corr = (flat[:, :-1] * flat[:, 1:]).mean(0)
    assert corr.abs().max() < 0.08, corr
    # fresh draws each call
    assert not torch.equal(lrn._signs((64,), torch.zeros(1)), lrn._signs((64,), torch.zeros(1)))
