"""Stimulus images to a network's input format.

A network sees the brain experiment's images the way it saw its training data:

1. uint8 RGB (or grey) images are scaled to [0, 1];
2. a non-square image is centre-cropped to a square (the 92 Kriegeskorte images are square,
   175 x 175), so that resizing never distorts the object;
3. colour: a network with one input channel gets the luminance
   Y = 0.299 R + 0.587 G + 0.114 B (ITU-R BT.601); a three-channel network gets RGB (a grey
   image is repeated over the three channels);
4. the image is resized to the network's H x W with bilinear interpolation and
   anti-aliasing (each output pixel averages the input pixels it covers, so a 175 -> 8
   reduction does not alias);
5. optionally inverted (x -> 1 - x): networks trained on white-on-black digits (MNIST) have
   never seen dark objects on a light background. Off by default: the comparison shows the
   images as they are, and inversion is a choice the user makes and reports;
6. normalised per channel with the training data's mean and std: (x - mean) / std.

The result is a float32 tensor (N, C, H, W) ready for `Learner.activations`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .rsa import RSAError

__all__ = ["to_network_input", "LUMINANCE"]

LUMINANCE = (0.299, 0.587, 0.114)


def _one(im: np.ndarray) -> torch.Tensor:
    a = np.asarray(im)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4):
        raise RSAError(f"stimulus image must be (H, W), (H, W, 3) or (H, W, 4), got {a.shape}")
    a = a[:, :, :3]
    if a.dtype == np.uint8:
        x = torch.from_numpy(a.astype(np.float32) / 255.0)
    else:
        x = torch.from_numpy(a.astype(np.float32))
        if x.numel() and (x.min() < 0 or x.max() > 1):
            raise RSAError("float stimulus images must lie in [0, 1]")
    h, w = x.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return x[top : top + s, left : left + s].permute(2, 0, 1)  # (c, s, s)


def to_network_input(
    images: np.ndarray | Sequence[np.ndarray],
    input_shape: Sequence[int],
    mean: Sequence[float] | torch.Tensor,
    std: Sequence[float] | torch.Tensor,
    invert: bool = False,
) -> torch.Tensor:
    """Images (N, H, W[, 3]) uint8 (or a list of such) -> (N, C, H', W') float32, as the
    module docstring describes; `input_shape` is the network's (C, H', W')."""
    if len(input_shape) != 3:
        raise RSAError(f"input_shape must be (C, H, W), got {tuple(input_shape)}")
    c, h, w = (int(v) for v in input_shape)
    if c not in (1, 3):
        raise RSAError(f"networks with {c} input channels are not supported (1 or 3)")
    mean_t = torch.as_tensor(mean, dtype=torch.float32).reshape(-1)
    std_t = torch.as_tensor(std, dtype=torch.float32).reshape(-1)
    if mean_t.numel() not in (1, c) or std_t.numel() not in (1, c):
        raise RSAError(f"mean/std must have 1 or {c} values, got {mean_t.numel()} and {std_t.numel()}")
    if (std_t <= 0).any():
        raise RSAError("std must be positive")
    if len(images) == 0:
        raise RSAError("no stimulus images")
    groups: dict[tuple[int, ...], list[int]] = {}
    crops = [_one(im) for im in images]
    for i, x in enumerate(crops):  # images of one size are resized together
        groups.setdefault(tuple(x.shape), []).append(i)
    out = torch.empty((len(crops), c, h, w), dtype=torch.float32)
    lum = torch.tensor(LUMINANCE).view(1, 3, 1, 1)
    for idx in groups.values():
        x = torch.stack([crops[i] for i in idx])
        if c == 1 and x.shape[1] == 3:
            x = (x * lum).sum(1, keepdim=True)
        elif c == 3 and x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
        out[idx] = x.clamp_(0.0, 1.0)
    x = out
    if invert:
        x = 1.0 - x
    return ((x - mean_t.view(1, -1, 1, 1)) / std_t.view(1, -1, 1, 1)).contiguous()
