"""Stimulus images to a network's input format, in the training set's input distribution.

A network should see the brain experiment's images the way it saw its training data. The
92 Kriegeskorte images are objects on a uniform mid-grey ground (about 57% of the pixels);
shown as they are to a network trained on MNIST, that ground becomes, after MNIST's
normalisation, a value far above MNIST's own (ink-coloured) background, and the first
layer then sees nearly the same input for every image. So the images are mapped per
training set (`mapping`):

- ``contrast`` (the default for dark-ground sets: MNIST, Fashion-MNIST, KMNIST, mnist5k,
  sklearn digits): each pixel becomes its absolute contrast to the stimulus set's
  background, |x - b| / max(b, 1 - b), so the ground becomes 0 (the training set's
  background, which normalises to -mean/std) and every object is bright on dark, as in the
  training data (polarity: objects darker and lighter than the ground both become bright;
  their contrast magnitude is kept, not stretched per image, so relative contrast between
  images survives). The background b is the most frequent pixel value over all the
  stimulus images, per channel (the common ground of a stimulus set; an image that fills
  its frame keeps its own pixels' contrast to that value).
- ``raw``: the images as they are (the default for colour / natural-image sets: CIFAR-10,
  CIFAR-100, SVHN, where a mid-grey ground is close to the training mean, and colour stays).
- ``invert``: x -> 1 - x (the former ``--invert``; a grey ground stays grey).

``auto`` picks ``contrast`` or ``raw`` from the training set's name (`DARK_GROUND`).

Then, whatever the mapping:

1. uint8 RGB (or grey) images are scaled to [0, 1];
2. a non-square image is centre-cropped to a square (the 92 Kriegeskorte images are square,
   175 x 175), so that resizing never distorts the object;
3. colour: a network with one input channel gets the luminance
   Y = 0.299 R + 0.587 G + 0.114 B (ITU-R BT.601); a three-channel network gets RGB (a grey
   image is repeated over the three channels); the mapping above is applied after this step;
4. the image is resized to the network's H x W with bilinear interpolation and
   anti-aliasing (each output pixel averages the input pixels it covers, so a 175 -> 8
   reduction does not alias);
5. normalised per channel with the training data's mean and std: (x - mean) / std.

The result is a float32 tensor (N, C, H, W) ready for `Learner.activations`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .rsa import RSAError

__all__ = ["to_network_input", "LUMINANCE", "MAPPINGS", "DARK_GROUND", "resolve_mapping", "background"]

LUMINANCE = (0.299, 0.587, 0.114)
MAPPINGS = ("auto", "contrast", "raw", "invert")
# training sets of bright objects on a dark (zero) ground
DARK_GROUND = frozenset({"mnist", "fashion-mnist", "kmnist", "mnist5k", "digits", "emnist"})


def resolve_mapping(mapping: str, data: str | None) -> str:
    """`auto` -> `contrast` for a dark-ground training set, else `raw`; other names checked."""
    m = str(mapping).lower()
    if m not in MAPPINGS:
        raise RSAError(f"unknown stimulus mapping {mapping!r}; use one of {', '.join(MAPPINGS)}")
    if m == "auto":
        return "contrast" if str(data or "").lower() in DARK_GROUND else "raw"
    return m


def background(images: Sequence[torch.Tensor]) -> torch.Tensor:
    """Most frequent value per channel over all images (c, s, s) in [0, 1], at 1/255 steps."""
    c = images[0].shape[0]
    flat = torch.cat([x.reshape(c, -1) for x in images], dim=1)
    q = (flat * 255).round().long().clamp_(0, 255)
    counts = torch.zeros((c, 256), dtype=torch.long).scatter_add_(1, q, torch.ones_like(q))
    return counts.argmax(1).float() / 255.0


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
    mapping: str = "raw",
    data: str | None = None,
) -> torch.Tensor:
    """Images (N, H, W[, 3]) uint8 (or a list of such) -> (N, C, H', W') float32, as the
    module docstring describes; `input_shape` is the network's (C, H', W'), `data` the
    training set's name (for ``mapping="auto"``); ``invert=True`` means ``mapping="invert"``."""
    mode = "invert" if invert else resolve_mapping(mapping, data)
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
    if c == 1:
        lum1 = torch.tensor(LUMINANCE).view(3, 1, 1)
        crops = [(x * lum1).sum(0, keepdim=True) if x.shape[0] == 3 else x for x in crops]
    elif any(x.shape[0] == 1 for x in crops):
        crops = [x.expand(3, -1, -1) if x.shape[0] == 1 else x for x in crops]
    if mode == "contrast":
        b = background(crops).view(-1, 1, 1)
        scale = torch.maximum(b, 1.0 - b).clamp_min(1e-6)
        crops = [((x - b).abs() / scale).clamp_(0.0, 1.0) for x in crops]
    elif mode == "invert":
        crops = [1.0 - x for x in crops]
    for i, x in enumerate(crops):  # images of one size are resized together
        groups.setdefault(tuple(x.shape), []).append(i)
    out = torch.empty((len(crops), c, h, w), dtype=torch.float32)
    for idx in groups.values():
        x = torch.stack([crops[i] for i in idx])
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
        out[idx] = x.clamp_(0.0, 1.0)
    x = out
    return ((x - mean_t.view(1, -1, 1, 1)) / std_t.view(1, -1, 1, 1)).contiguous()
