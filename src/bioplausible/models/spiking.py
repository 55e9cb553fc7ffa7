"""Leaky integrate-and-fire machinery for the spiking rules (`stdp`, `rstdp`).

Discrete time, one step = one unit of time; every `LIFState` tensor is (batch, neurons),
so a batch is a set of independent networks that share weights. The conv rule
(`algorithms.stdp_conv`) keeps its own (batch, maps, h, w) potentials; its DoG retina is
here. Nothing here learns: the rules read the spike trains and traces and decide what to
do with them.
"""

from __future__ import annotations

import math

import torch


def to_unit_range(x: torch.Tensor) -> torch.Tensor:
    """Per-sample min-max rescaling of (normalised) images to [0, 1] intensities.

    The data sets are standardised per channel, an affine map, so this undoes it for images
    whose darkest pixel is the background (MNIST, digits) without knowing mean and std."""
    flat = x.flatten(1)
    lo = flat.min(1, keepdim=True).values
    hi = flat.max(1, keepdim=True).values
    return (flat - lo) / (hi - lo).clamp_min(1e-12)


def spike_probabilities(x01: torch.Tensor, spikes_per_step: float) -> torch.Tensor:
    """Per-pixel, per-step firing probability: intensities scaled so that a sample emits
    `spikes_per_step` input spikes per step on average, whatever its ink or resolution."""
    p = x01 * (spikes_per_step / x01.sum(1, keepdim=True).clamp_min(1e-12))
    return p.clamp(0.0, 1.0)


def encode(p: torch.Tensor, t: int, kind: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """Input spikes at step t: Poisson (Bernoulli per step) or regular rate code."""
    if kind == "poisson":
        return (torch.rand(p.shape, generator=generator, device=p.device, dtype=p.dtype) < p).to(p.dtype)
    # deterministic regular spike train with rate p: a spike whenever the phase crosses an integer
    return (torch.floor((t + 1) * p) - torch.floor(t * p)).clamp(0, 1)


def encode_steps(p: torch.Tensor, t0: int, steps: int, kind: str,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Input spikes of `steps` consecutive steps from step t0, (steps, *p.shape): the trains
    `encode` gives step by step (Poisson draws come from the generator in the same order)."""
    if kind == "poisson":
        u = torch.rand((steps, *p.shape), generator=generator, device=p.device, dtype=p.dtype)
        return (u < p).to(p.dtype)
    t = torch.arange(t0, t0 + steps, device=p.device, dtype=p.dtype).view(-1, *([1] * p.dim()))
    return (torch.floor((t + 1) * p) - torch.floor(t * p)).clamp(0, 1)


def decay(tau: float) -> float:
    return math.exp(-1.0 / tau)


class LIFState:
    """Membrane potentials, traces and spike counts of one population for one presentation."""

    def __init__(self, batch: int, n: int, device, dtype=torch.float32) -> None:
        z = lambda: torch.zeros(batch, n, device=device, dtype=dtype)  # noqa: E731
        self.v, self.trace, self.count, self.last = z(), z(), z(), z()

    def step(
        self,
        current: torch.Tensor,
        threshold: torch.Tensor,
        mem_decay: float,
        trace_decay: float,
        inhibition: float,
        one_winner: bool,
    ) -> torch.Tensor:
        """Integrate, fire, reset, inhibit. Returns this step's spikes (batch, n).

        Lateral inhibition: every spike of the previous step lowers the potential of every
        *other* neuron by `inhibition` (Diehl & Cook's inhibitory population, folded into one
        connection). With `one_winner`, at most one neuron per network fires per step (the
        one furthest above threshold), the fast-inhibition limit that keeps simultaneous
        winners from sharing every input."""
        others = self.last.sum(1, keepdim=True) - self.last
        self.v = mem_decay * self.v + current - inhibition * others
        over = self.v - threshold
        s = (over > 0).to(self.v.dtype)
        if one_winner:
            top = over.argmax(1, keepdim=True)
            s = s * torch.zeros_like(s).scatter_(1, top, 1.0)
        self.v = self.v * (1 - s)  # reset to rest (0)
        self.trace = trace_decay * self.trace + s
        self.count = self.count + s
        self.last = s
        return s


def dog_kernel(size: int = 7, sigma_center: float = 1.0, sigma_surround: float = 2.0, device=None,
               dtype=torch.float32) -> torch.Tensor:
    """A zero-sum difference-of-Gaussians (centre minus surround) kernel, shape (1, 1, size, size).

    The fixed on/off-centre "retina" of Kheradpisheh et al. (2018) (7x7, sigmas 1 and 2 on
    MNIST): it turns a grey-level image into contrast, so that positive-only STDP kernels
    can learn edges (with raw intensities every positive kernel is a blob detector)."""
    r = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    d2 = r.view(-1, 1) ** 2 + r.view(1, -1) ** 2
    g1 = torch.exp(-d2 / (2 * sigma_center**2))
    g2 = torch.exp(-d2 / (2 * sigma_surround**2))
    k = g1 / g1.sum() - g2 / g2.sum()
    return k.view(1, 1, size, size)


def on_off(x01: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """On- and off-centre contrast channels of images (B, C, H, W) with intensities in [0, 1]:
    (B, 2C, H, W), rectified DoG responses rescaled per sample so the strongest is 1."""
    B, C, H, W = x01.shape
    d = torch.nn.functional.conv2d(x01.reshape(B * C, 1, H, W), kernel, padding=kernel.shape[-1] // 2)
    d = d.view(B, C, H, W)
    out = torch.cat([d.clamp_min(0), (-d).clamp_min(0)], 1)
    return out / out.flatten(1).max(1).values.clamp_min(1e-12).view(B, 1, 1, 1)
