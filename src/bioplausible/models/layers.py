"""Explicit layer stacks that learning rules drive layer by layer.

A `Layer` is one weight layer: its *drive* (the linear map W x + b, dense or convolutional)
followed by its *post* map (activation, then optional max-pooling). Rules that need the
pieces separately (pre-activations for local derivatives, the layer's input for a Hebbian
update) call `drive` and `post` themselves; `forward` is just `post(drive(x))`.

Every forward computation a rule makes must go through `Layer.drive`: the weight-transport
probe (`bioplausible.criteria`) relies on it to tell forward use of the weights from any
other use (see `Layer.transport_probe`).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair

ACTIVATIONS = {
    "relu": torch.relu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "identity": lambda a: a,
    # hard sigmoid clamps to [0, 1]; energy-based rules use it as their bounded rate function
    "hardsigmoid01": lambda a: a.clamp(0.0, 1.0),
    "gelu": F.gelu,
    "leaky_relu": lambda a: F.leaky_relu(a, 0.01),
}


# non-decreasing activations (max-pooling commutes with them)
MONOTONE = ("relu", "tanh", "sigmoid", "identity", "hardsigmoid01", "leaky_relu")

# activations whose derivative `act_derivative` gives in closed form
CLOSED_FORM = ("relu", "tanh", "sigmoid", "identity", "hardsigmoid01", "leaky_relu")


def act_derivative(name: str, a: torch.Tensor, h: torch.Tensor | None = None) -> torch.Tensor:
    """f'(a) for the element-wise activations, without building an autograd graph."""
    if name == "relu":
        return (a > 0).to(a.dtype)
    if name == "tanh":
        t = torch.tanh(a) if h is None else h
        return 1 - t * t
    if name == "sigmoid":
        s = torch.sigmoid(a) if h is None else h
        return s * (1 - s)
    if name == "identity":
        return torch.ones_like(a)
    if name == "hardsigmoid01":
        return ((a > 0) & (a < 1)).to(a.dtype)
    if name == "leaky_relu":
        return torch.where(a > 0, 1.0, 0.01).to(a.dtype)
    raise ValueError(f"no closed-form derivative for activation {name!r}")


def act_backward(name: str, g: torch.Tensor, a: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """g * f'(a), given h = f(a). For relu, tanh and sigmoid this is the one fused kernel
    autograd itself uses (a separate derivative tensor and product cost the explicit rules'
    CNN step about a third more than BP's)."""
    if name == "relu":
        return torch.ops.aten.threshold_backward(g, a, 0)
    if name == "tanh":
        return torch.ops.aten.tanh_backward(g, h)
    if name == "sigmoid":
        return torch.ops.aten.sigmoid_backward(g, h)
    return g * act_derivative(name, a, h)


def pool_layout(a: torch.Tensor) -> torch.Tensor:
    """`a` in the memory layout where max-pooling is fast: channels-last on the CPU (pooling
    an NCHW map there ran 3x slower than converting it and pooling the copy)."""
    if a.device.type == "cpu" and a.dim() == 4:
        return a.contiguous(memory_format=torch.channels_last)
    return a


class Layer(nn.Module):
    """Dense (`kind="linear"`) or convolutional (`kind="conv"`) weight layer."""

    def __init__(
        self,
        kind: str,
        in_features: int,
        out_features: int,
        act: str = "relu",
        kernel_size: int = 3,
        padding: int | None = None,
        pool: int = 0,
        bias: bool = True,
        name: str = "",
        stride: int | tuple[int, int] = 1,
        pool_kind: str = "max",
    ) -> None:
        super().__init__()
        if kind not in ("linear", "conv"):
            raise ValueError(f"layer kind must be 'linear' or 'conv', got {kind!r}")
        if act not in ACTIVATIONS:
            raise ValueError(f"unknown activation {act!r}; known: {', '.join(ACTIVATIONS)}")
        if pool_kind not in ("max", "avg"):
            raise ValueError(f"pool_kind must be 'max' or 'avg', got {pool_kind!r}")
        self.stride, self.pool_kind = stride, pool_kind
        self.kind, self.act, self.pool, self.name = kind, act, pool, name
        self.in_features, self.out_features = in_features, out_features
        if kind == "linear":
            shape: tuple[int, ...] = (out_features, in_features)
            fan_in = in_features
        else:
            kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
            shape = (out_features, in_features, kh, kw)
            fan_in = in_features * kh * kw
        self.kernel_size = kernel_size
        if padding is None:
            padding = kernel_size // 2 if isinstance(kernel_size, int) else tuple(k // 2 for k in kernel_size)
        self.padding = padding
        self.weight = nn.Parameter(torch.empty(shape))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        # Kaiming-uniform (as nn.Linear / nn.Conv2d), so every rule starts from the same init
        bound = 1.0 / math.sqrt(fan_in)
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)
        self.fan_in = fan_in
        self._probe_offset: torch.Tensor | None = None

    # -- the forward pieces -------------------------------------------------------------
    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """The layer's input in the shape its weights expect (flattens for dense layers)."""
        return x.flatten(1) if self.kind == "linear" and x.dim() > 2 else x

    def linear_op(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
        if self.kind == "linear":
            return F.linear(x, w, b)
        return F.conv2d(x, w, b, stride=self.stride, padding=self.padding)

    def drive(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-activation W x + b."""
        x = self.prepare(x)
        a = self.linear_op(x, self.weight, self.bias)
        if self._probe_offset is not None:
            # Under the weight-transport probe the parameter holds W + N. Subtracting N x
            # keeps the forward value exactly W x, while the input is detached in the
            # correction so that anything propagated back through this op (autograd, or a
            # rule reading `self.weight`) sees W + N. Only a rule that reuses the forward
            # weights in its learning pathway can then notice the change.
            a = a - self.linear_op(x.detach(), self._probe_offset)
        return a

    def post(self, a: torch.Tensor) -> torch.Tensor:
        """Activation and, for conv layers with `pool > 1`, max-pooling (pooling first where
        the activation is non-decreasing: the same result) or average pooling (`pool_kind`)."""
        if self.pool > 1 and self.pool_kind == "avg":
            return F.avg_pool2d(ACTIVATIONS[self.act](a), self.pool)
        if self.pool > 1 and self.act in MONOTONE:
            # max-pooling commutes with a non-decreasing activation: pooling first gives the
            # same values (and the same gradient) and runs the activation on a quarter of them
            return ACTIVATIONS[self.act](F.max_pool2d(pool_layout(a), self.pool))
        h = ACTIVATIONS[self.act](a)
        if self.pool > 1:
            h = F.max_pool2d(pool_layout(h), self.pool)
        return h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.post(self.drive(x))

    # -- explicit learning-pathway helpers (used by rules without whole-net autograd) ----
    def input_grad(self, delta: torch.Tensor, feedback: torch.Tensor, x_shape: torch.Size,
                   x: torch.Tensor | None = None):
        """Send a pre-activation error `delta` back to the input through matrix `feedback`
        (W for backprop, B for feedback alignment, ...), shaped like the layer's input.

        Given the layer's input `x`, returns (that, *`weight_grad(delta, x)`): for a conv
        layer from one convolution_backward call, as autograd makes it (the weight gradient
        does not depend on the weight, so the feedback can stand in for it; two calls read and
        reorder the error map twice)."""
        if x is not None:
            if self.kind == "linear":
                return (self.input_grad(delta, feedback, x_shape), *self.weight_grad(delta, x))
            bias = [self.out_features] if self.bias is not None else None
            return tuple(torch.ops.aten.convolution_backward(
                delta, x, feedback, bias, list(_pair(self.stride)), list(_pair(self.padding)), [1, 1], False,
                [0, 0], 1, [True, True, bias is not None]))
        if self.kind == "linear":
            return (delta @ feedback).view(x_shape)
        return torch.nn.grad.conv2d_input(x_shape, feedback, delta, stride=self.stride, padding=self.padding)

    def weight_grad(self, delta: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """dL/dW and dL/db for pre-activation error `delta` and layer input `x`."""
        x = self.prepare(x)
        if self.kind == "linear":
            gw = delta.t() @ x
            gb = delta.sum(0)
        else:
            # one convolution_backward call gives dW and db together, as autograd's does
            # (conv2d_weight plus a separate sum over the error map cost a pass more)
            bias = [self.out_features] if self.bias is not None else None
            _, gw, gb = torch.ops.aten.convolution_backward(
                delta, x, self.weight, bias, list(_pair(self.stride)), list(_pair(self.padding)), [1, 1],
                False, [0, 0], 1, [False, True, bias is not None])
        return gw, (gb if self.bias is not None else None)

    def post_with_backward(self, a: torch.Tensor):
        """(post(a), back) where back maps dL/dh (h = post(a)) to dL/da: the local derivative
        of this layer's own non-linearity and pooling only, so no gradient crosses a weight
        layer. Max-pooling's indices are kept from this forward computation, so calling `back`
        (once per relaxation step, say) costs no pooling."""
        if self.act not in CLOSED_FORM:
            def back_autograd(g: torch.Tensor) -> torch.Tensor:
                with torch.enable_grad():
                    a_ = a.detach().requires_grad_(True)
                    out = self.post(a_)
                    (ga,) = torch.autograd.grad(out, a_, g.view(out.shape))
                return ga

            return self.post(a), back_autograd
        if self.pool <= 1:
            h = ACTIVATIONS[self.act](a)
            return h, lambda g: act_backward(self.act, g.view_as(a), a, h)
        p = [self.pool, self.pool]
        if self.pool_kind == "avg":
            # average pooling does not commute with the activation: pool after it
            h = ACTIVATIONS[self.act](a)
            mu = F.avg_pool2d(h, self.pool)

            def back_avg(g: torch.Tensor) -> torch.Tensor:
                up = torch.ops.aten.avg_pool2d_backward(g.view(mu.shape), h, p, p, [0, 0], False, True, None)
                return act_backward(self.act, up, a, h)

            return mu, back_avg
        if self.act in MONOTONE:
            # pool first, as `post` does: the activation and its derivative then run on a
            # quarter of the values (on the full map they cost the CNN step a tenth more)
            a = pool_layout(a)
            ma, idx = F.max_pool2d(a, self.pool, return_indices=True)
            mu = ACTIVATIONS[self.act](ma)

            def back_pooled_first(g: torch.Tensor) -> torch.Tensor:
                # in the pooled map's layout: the pooling backward converts a mismatched one slowly
                ga = act_backward(self.act, pool_layout(g.view(mu.shape)), ma, mu)
                return torch.ops.aten.max_pool2d_with_indices_backward(ga, a, p, p, [0, 0], [1, 1], False, idx)

            return mu, back_pooled_first
        h = pool_layout(ACTIVATIONS[self.act](a))
        mu, idx = F.max_pool2d(h, self.pool, return_indices=True)

        def back(g: torch.Tensor) -> torch.Tensor:
            # the kernel autograd uses for max-pooling (max_unpool2d plus its zero fill was slower)
            up = torch.ops.aten.max_pool2d_with_indices_backward(pool_layout(g.view(mu.shape)), h, p, p, [0, 0], [1, 1],
                                                                 False, idx)
            return act_backward(self.act, up, a, h)

        return mu, back

    def post_backward(self, a: torch.Tensor, grad_h: torch.Tensor) -> torch.Tensor:
        """Local derivative of `post` at pre-activation `a`: maps dL/dh to dL/da (see
        `post_with_backward`, which avoids recomputing `post` when it is needed anyway)."""
        if self.pool <= 1 and self.act in CLOSED_FORM:
            return grad_h.view_as(a) * act_derivative(self.act, a)
        return self.post_with_backward(a)[1](grad_h)

    @contextmanager
    def transport_probe(self, offset: torch.Tensor) -> Iterator[None]:
        """Make the parameter hold W + offset for everything but the forward drive."""
        with torch.no_grad():
            self.weight.add_(offset)
        self._probe_offset = offset
        try:
            yield
        finally:
            self._probe_offset = None
            with torch.no_grad():
                self.weight.sub_(offset)

    def extra_repr(self) -> str:
        s = f"{self.kind} {self.in_features}->{self.out_features}, act={self.act}"
        s += f", k={self.kernel_size}, pool={self.pool}" if self.kind == "conv" else ""
        return s + (f", stride={self.stride}" if self.stride != 1 else "") + (", avg" if self.pool_kind == "avg" else "")
