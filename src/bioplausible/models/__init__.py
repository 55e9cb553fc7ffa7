"""Architectures as explicit layer stacks (models know nothing of learning)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .layers import ACTIVATIONS, Layer, act_derivative

__all__ = ["ARCHITECTURES", "Layer", "Stack", "build", "act_derivative", "ACTIVATIONS", "without_projection"]

# The reference paper's MLP: 784-1024-512-256-10.
PAPER_MLP_WIDTHS = (1024, 512, 256)
# Three conv+pool blocks, a dense projection, a linear readout.
CNN_PRESETS = {
    1: dict(channels=(32, 64, 64), projection=256),   # 28x28x1 (MNIST family), 8x8 digits
    3: dict(channels=(64, 128, 128), projection=512),  # 32x32x3 (CIFAR, SVHN)
}


class Stack(nn.Module):
    """An ordered stack of `Layer`s; the last one is the linear readout (no activation)."""

    custom = False  # True when built from a user's nn.Sequential (models.sequential)

    def __init__(self, layers: list[Layer], arch: str, input_shape: tuple[int, int, int], num_classes: int):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.arch, self.input_shape, self.num_classes = arch, tuple(input_shape), num_classes

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers)

    def __getitem__(self, i: int) -> Layer:
        return self.layers[i]  # type: ignore[return-value]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x

    def forward_cache(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Inputs of each layer (x_0 = input) and their pre-activations, for explicit learning.

        Returns (inputs, drives): inputs[l] is layer l's input, drives[l] its pre-activation;
        the network output is layers[-1].post(drives[-1])."""
        inputs, drives = [], []
        for layer in self.layers:
            inputs.append(x)
            a = layer.drive(x)
            drives.append(a)
            x = layer.post(a)
        return inputs, drives

    def forward_local(self, x: torch.Tensor):
        """`forward_cache` plus each layer's local backward map (`Layer.post_with_backward`,
        which keeps the max-pooling indices of this pass) and the network output.

        Returns (inputs, drives, backs, output)."""
        inputs, drives, backs = [], [], []
        for layer in self.layers:
            inputs.append(x)
            a = layer.drive(x)
            drives.append(a)
            x, back = layer.post_with_backward(a)
            backs.append(back)
        return inputs, drives, backs, x

    def activations(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        for layer in self.layers:
            x = layer(x)
            out[layer.name] = x
        return out

    def output_shapes(self) -> list[tuple[int, ...]]:
        """Shape (without batch) of each layer's output."""
        with torch.no_grad():
            w = self.layers[0].weight
            x = torch.zeros(1, *self.input_shape, device=w.device, dtype=w.dtype)
            shapes = []
            for layer in self.layers:
                x = layer(x)
                shapes.append(tuple(x.shape[1:]))
        return shapes


def mlp(input_shape, num_classes, widths=PAPER_MLP_WIDTHS, act="relu", out_act="identity") -> Stack:
    c, h, w = input_shape
    sizes = [c * h * w, *widths, num_classes]
    layers = [
        Layer("linear", sizes[i], sizes[i + 1], act=act if i < len(sizes) - 2 else out_act, name=f"fc{i + 1}")
        for i in range(len(sizes) - 1)
    ]
    return Stack(layers, "mlp", input_shape, num_classes)


def cnn(input_shape, num_classes, channels=None, projection=None, act="relu", kernel_size=3, out_act="identity") -> Stack:
    c, h, w = input_shape
    preset = CNN_PRESETS[3 if c == 3 else 1]
    channels = tuple(channels or preset["channels"])
    projection = projection or preset["projection"]
    layers, size, cin = [], h, c
    for i, cout in enumerate(channels):
        # Pool only while the map is large enough, so 8x8 digits still fit three blocks.
        pool = 2 if size >= 4 else 1
        layers.append(Layer("conv", cin, cout, act=act, kernel_size=kernel_size, pool=pool, name=f"conv{i + 1}"))
        size, cin = size // pool, cout
    flat = cin * size * size
    layers.append(Layer("linear", flat, projection, act=act, name="proj"))
    layers.append(Layer("linear", projection, num_classes, act=out_act, name="out"))
    return Stack(layers, "cnn", input_shape, num_classes)


def without_projection(stack: Stack, seed: int) -> Stack:
    """The CNN `stack` with its dense projection dropped: [conv blocks, a new linear readout
    on the last conv block's flattened output], the readout drawn from `seed` (independent
    of the global RNG). For rules whose learning suffers from a wide dense layer."""
    convs = [l for l in stack.layers if l.kind == "conv"]
    flat = math.prod(Stack(convs, "cnn", stack.input_shape, stack.num_classes).output_shapes()[-1])
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        out = Layer("linear", flat, stack.num_classes, act="identity", name="out")
    finally:
        torch.random.set_rng_state(state)
    return Stack([*convs, out.to(convs[0].weight.device)], "cnn", stack.input_shape, stack.num_classes)


@dataclass(frozen=True)
class ArchInfo:
    name: str
    description: str


ARCHITECTURES = {
    "mlp": ArchInfo("mlp", "MLP, hidden widths configurable (default the paper's 1024-512-256)"),
    "cnn": ArchInfo("cnn", "3 conv(3x3)+maxpool blocks, dense projection, linear readout"),
}


def build(arch: str, input_shape, num_classes: int, seed: int = 0, **kw) -> Stack:
    """Build an architecture with weights drawn from `seed` (independent of the global RNG)."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown model {arch!r}; known: {', '.join(ARCHITECTURES)}")
    devstate = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        stack = mlp(input_shape, num_classes, **kw) if arch == "mlp" else cnn(input_shape, num_classes, **kw)
    finally:
        torch.random.set_rng_state(devstate)
    return stack
