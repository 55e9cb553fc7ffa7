"""How good is weight perturbation's gradient estimate, layer by layer, on the bench's WP CNN?

    python bench/wp_variance.py [--data mnist5k] [--pretrain 200] [--draws 4] [--batches 6]

The network (the bench's WP CNN: 32-64-64 conv blocks read out directly) is first trained
with backprop for `--pretrain` steps, so the estimate is judged mid-training, not at init.
Then, per layer and per noise scheme, WP's antithetic estimate from `--draws` draws on a
batch of 128 is compared with the true gradient of the same batch's loss: the cosine and
the squared error relative to the gradient's squared norm, averaged over `--batches`
batches. Autograd is used here only for the reference gradient and the pretraining; the
estimates are computed from loss changes alone, as in algorithms/perturbation.py.

Schemes: `flipout` (the rule's: a draw's noise Xi sign-flipped per sample by r_b s_b^T over
output and input channels), `tapflip` (conv layers: also a sign per kernel tap and sample),
`indep` (fully independent noise per sample, via a grouped convolution).
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from accuracy import config_for  # bench/ is this script's directory, first on sys.path
from bioplausible.data import load
from bioplausible.experiments.runner import build_learner

SCHEMES = ("flipout", "tapflip", "indep")


def _signs(shape, gen):
    return torch.randint(0, 2, shape, generator=gen).float().mul_(2).sub_(1)


def sample_noise(layer, k: int, bsz: int, scheme: str, gen) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-draw, per-sample weight and bias noise, (k, B, *W.shape) and (k, B, C_out)."""
    wshape = tuple(layer.weight.shape)
    if scheme == "indep":
        return torch.randn((k, bsz, *wshape), generator=gen), torch.randn((k, bsz, wshape[0]), generator=gen)
    xi, xb = torch.randn((k, 1, *wshape), generator=gen), torch.randn((k, 1, wshape[0]), generator=gen)
    r, s = _signs((k, bsz, wshape[0]), gen), _signs((k, bsz, wshape[1]), gen)
    taps = [1] * (len(wshape) - 2)
    w = xi * r.view(k, bsz, -1, 1, *taps) * s.view(k, bsz, 1, -1, *taps)
    if scheme == "tapflip" and layer.kind == "conv":
        w = w * _signs((k, bsz, 1, 1, *wshape[2:]), gen)
    return w, xb * r


def noise_term(layer, h: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Each sample's own (Xi_kb x_b + zeta_kb), shape (k, B, out...)."""
    h = layer.prepare(h)
    k, bsz = w.shape[:2]
    if layer.kind == "linear":
        out = torch.einsum("bi,kboi->kbo", h, w)
    else:
        x = h.reshape(1, -1, *h.shape[2:]).repeat(1, k, 1, 1)  # every (draw, sample) is a group
        out = F.conv2d(x, w.flatten(0, 2), padding=layer.padding, groups=k * bsz)
        out = out.view(k, bsz, layer.out_features, *out.shape[2:])
    return out + b.view(k, bsz, -1, *([1] * (out.dim() - 3)))


@torch.no_grad()
def estimate(learner, l: int, x, y, k: int, scheme: str, gen) -> torch.Tensor:
    layers = learner.stack.layers
    inputs, drives = learner.stack.forward_cache(x)
    layer, bsz = layers[l], x.shape[0]
    s = learner.opts.sigma / layer.fan_in**0.5  # the rule's per-layer scale
    w, b = sample_noise(layer, k, bsz, scheme, gen)
    term = noise_term(layer, inputs[l], w, b) * s
    a = drives[l].unsqueeze(0)
    h = torch.cat([layer.post((a + term).flatten(0, 1)), layer.post((a - term).flatten(0, 1))])
    losses = learner._run_from(l + 1, h, y, 2 * k)
    d = (losses[:k] - losses[k:]) / (2 * s)  # (k, B): each sample's loss change
    gw = torch.einsum("kb,kb...->...", d, w) / (k * bsz)
    gb = torch.einsum("kb,kbo->o", d, b) / (k * bsz)
    return torch.cat([gw.flatten(), gb])


def true_grad(learner, l: int, x, y) -> torch.Tensor:
    learner.stack.zero_grad()
    F.cross_entropy(learner.stack(x), y).backward()
    layer = learner.stack.layers[l]
    return torch.cat([layer.weight.grad.flatten(), layer.bias.grad.flatten()])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="mnist5k")
    ap.add_argument("--pretrain", type=int, default=200, help="backprop steps before measuring")
    ap.add_argument("--draws", type=int, default=4, help="noise draws per estimate (K)")
    ap.add_argument("--batches", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = config_for("wp", "cnn", args.data, args.seed, None, "cpu")
    data = load(cfg.data, cfg.data_dir, cfg.val_fraction)
    learner = build_learner(cfg, data.input_shape, data.num_classes)
    stack, n = learner.stack, data.x_train.shape[0]
    gen = torch.Generator().manual_seed(args.seed)
    opt = torch.optim.Adam(stack.parameters(), 1e-3)
    for _ in range(args.pretrain):
        idx = torch.randint(0, n, (128,), generator=gen)
        loss = F.cross_entropy(stack(data.x_train[idx]), data.y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        val = (stack(data.x_val).argmax(1) == data.y_val).float().mean().item()
    print(f"{args.data}: {args.pretrain} backprop steps, validation accuracy {val:.4f}; K={args.draws}, batch 128")
    print(f"{'layer':>5s} {'weights':>8s} {'scheme':>8s} {'cosine':>7s} {'rel. sq. error':>15s} {'s':>5s}")
    for l, layer in enumerate(stack.layers):
        for scheme in SCHEMES:
            if scheme == "tapflip" and layer.kind != "conv":
                continue
            cos, err, t0 = [], [], time.perf_counter()
            for _ in range(args.batches):
                idx = torch.randint(0, n, (128,), generator=gen)
                x, y = data.x_train[idx], data.y_train[idx]
                g = true_grad(learner, l, x, y)
                e = estimate(learner, l, x, y, args.draws, scheme, gen)
                cos.append(F.cosine_similarity(g, e, 0).item())
                err.append(((e - g).norm() ** 2 / g.norm() ** 2).item())
            print(f"{l:5d} {g.numel():8d} {scheme:>8s} {sum(cos) / len(cos):7.4f} {sum(err) / len(err):15.1f} "
                  f"{time.perf_counter() - t0:5.1f}")


if __name__ == "__main__":
    main()
