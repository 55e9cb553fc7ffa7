"""Bring your own network: a `Stack` built from a user's `torch.nn.Sequential`.

The Sequential is read as weight layers (Linear, Conv2d), each followed by at most one
activation and at most one pooling; Flatten may stand anywhere between them. The Stack's
layers use the Sequential's own parameters (the same tensors), so training with any rule
updates the user's model in place. The construction checks that the Stack computes what
the Sequential computes on a random input, so a misread module cannot go unnoticed.
"""

from __future__ import annotations

import torch
from torch import nn

from . import Stack
from .layers import MONOTONE, Layer

__all__ = ["SUPPORTED", "from_sequential"]

SUPPORTED = ("Linear, Conv2d (any kernel, stride, zero padding; no dilation or groups), ReLU, Tanh, Sigmoid, "
             "GELU, LeakyReLU(0.01), Identity, MaxPool2d/AvgPool2d (stride = kernel, no padding), Flatten")

_ACTS: dict[type, str] = {nn.ReLU: "relu", nn.Tanh: "tanh", nn.Sigmoid: "sigmoid", nn.GELU: "gelu",
                          nn.LeakyReLU: "leaky_relu", nn.Identity: "identity"}


def _unsupported(name: str, module: nn.Module, why: str = "") -> ValueError:
    detail = f" ({why})" if why else ""
    return ValueError(f"module {name} ({module!r}) is not supported{detail}; supported: {SUPPORTED}")


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)  # type: ignore[return-value]


def _single(v: tuple[int, int]):
    # square settings as plain ints: the layer's repr and its use by rules stay as for the package's CNN
    return v[0] if v[0] == v[1] else v


def _activation(name: str, m: nn.Module) -> str | None:
    act = _ACTS.get(type(m))
    if act == "leaky_relu" and m.negative_slope != 0.01:
        raise _unsupported(name, m, "only negative_slope=0.01")
    if act == "gelu" and m.approximate != "none":
        raise _unsupported(name, m, "only approximate='none'")
    return act


def _pool(name: str, m: nn.Module) -> tuple[int, str]:
    k, s = _pair(m.kernel_size), _pair(m.stride if m.stride is not None else m.kernel_size)
    if k != s or k[0] != k[1] or _pair(m.padding) != (0, 0) or m.ceil_mode:
        raise _unsupported(name, m, "pooling needs a square kernel equal to its stride, no padding, floor mode")
    if isinstance(m, nn.MaxPool2d) and (_pair(m.dilation) != (1, 1) or m.return_indices):
        raise _unsupported(name, m, "no dilation or indices")
    if isinstance(m, nn.AvgPool2d) and (not m.count_include_pad or m.divisor_override is not None):
        raise _unsupported(name, m, "default count_include_pad and divisor")
    return k[0], ("max" if isinstance(m, nn.MaxPool2d) else "avg")


def _conv_layer(name: str, m: nn.Conv2d, label: str) -> Layer:
    if _pair(m.dilation) != (1, 1) or m.groups != 1 or m.padding_mode != "zeros":
        raise _unsupported(name, m, "dilation, groups and non-zero padding modes are not")
    k = _pair(m.kernel_size)
    if m.padding == "valid":
        pad = (0, 0)
    elif m.padding == "same":
        if any(x % 2 == 0 for x in k):
            raise _unsupported(name, m, "padding='same' needs an odd kernel; give the padding as numbers")
        pad = (k[0] // 2, k[1] // 2)
    else:
        pad = _pair(m.padding)
    return Layer("conv", m.in_channels, m.out_channels, act="identity", kernel_size=_single(k), padding=_single(pad),
                 stride=_single(_pair(m.stride)), bias=m.bias is not None, name=label)


def from_sequential(model: nn.Sequential, input_shape, check: bool = True) -> Stack:
    """A `Stack` that computes `model` on inputs of shape `input_shape` (without the batch
    dimension) with `model`'s own parameters. The last weight layer must be a Linear: the
    readout, whose `out_features` is the number of classes. Raises ValueError naming the
    first module it cannot take."""
    if not isinstance(model, nn.Sequential):
        raise ValueError(f"model must be a torch.nn.Sequential, got {type(model).__name__}")
    input_shape = tuple(int(s) for s in input_shape)
    layers: list[Layer] = []
    counts = {"linear": 0, "conv": 0}
    # per layer: has its activation / pooling been set yet
    state: dict[str, bool] = {}
    for name, m in model.named_children():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            kind = "linear" if isinstance(m, nn.Linear) else "conv"
            counts[kind] += 1
            label = f"{'fc' if kind == 'linear' else 'conv'}{counts[kind]}"
            if kind == "linear":
                layer = Layer("linear", m.in_features, m.out_features, act="identity", bias=m.bias is not None,
                              name=label)
            else:
                layer = _conv_layer(name, m, label)
            # the user's tensors themselves, so training updates their model
            layer.weight = m.weight
            layer.bias = m.bias
            layers.append(layer)
            state = {"act": False, "pool": False}
        elif isinstance(m, nn.Flatten):
            if m.start_dim != 1 or m.end_dim != -1:
                raise _unsupported(name, m, "only Flatten(start_dim=1, end_dim=-1)")
        elif type(m) in _ACTS:
            act = _activation(name, m)
            if not layers:
                raise _unsupported(name, m, "an activation must follow a Linear or Conv2d")
            if state["act"]:
                raise _unsupported(name, m, "one activation per weight layer")
            last = layers[-1]
            if state["pool"] and not (last.pool_kind == "max" and act in MONOTONE):
                # max-pooling commutes with a non-decreasing activation, nothing else does
                raise _unsupported(name, m, "after pooling only a non-decreasing activation after max-pooling")
            last.act = act
            state["act"] = True
        elif isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
            if not layers or layers[-1].kind != "conv":
                raise _unsupported(name, m, "pooling must follow a Conv2d")
            if state["pool"]:
                raise _unsupported(name, m, "one pooling per Conv2d")
            size, kind = _pool(name, m)
            layers[-1].pool, layers[-1].pool_kind = size, kind
            state["pool"] = True
        else:
            raise _unsupported(name, m)
    if not layers or layers[-1].kind != "linear":
        raise ValueError(f"the last weight layer of the model must be a Linear readout; supported: {SUPPORTED}")
    arch = "cnn" if counts["conv"] else "mlp"
    stack = Stack(layers, arch, input_shape, layers[-1].out_features)
    stack.custom = True
    if check:
        _check_same(model, stack, input_shape)
    return stack


@torch.no_grad()
def _check_same(model: nn.Sequential, stack: Stack, input_shape) -> None:
    p = next(model.parameters())
    x = torch.randn(2, *input_shape, generator=torch.Generator().manual_seed(0)).to(p.device, p.dtype)
    try:
        want = model(x)
    except RuntimeError as e:
        raise ValueError(f"the model does not accept inputs of shape {input_shape}: {str(e).splitlines()[0]}") from None
    got = stack(x)
    if got.shape != want.shape or not torch.allclose(got, want, rtol=1e-4, atol=1e-5):
        raise ValueError("the layer stack read from the model does not compute what the model computes "
                         f"(supported: {SUPPORTED})")
