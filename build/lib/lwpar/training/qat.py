"""Quantization-aware fine-tuning that simulates the INT8 model `lwpar quantize` makes with ONNX
Runtime (static QDQ): every convolution's weight on a symmetric per-output-channel grid (scale
max|w| / 127, or / 64 for 7-bit weights; no zero point), and its input on an asymmetric uint8 (or
int8) grid whose range is the min/max over the calibration images, fixed before training as ONNX
Runtime's MinMax calibration fixes it. Gradients pass the rounding straight through (PyTorch's
fake-quantize ops).

A per-channel symmetric grid commutes with a positive per-channel scale, so quantizing a convolution's
weight before its BatchNorm is folded in gives the same grid as quantizing the folded weight, which is
what the exported model is. `strip` leaves each weight on its grid: ONNX Runtime's quantizer then
finds the same scales and reproduces the weights exactly. Not simulated: the requantization of Add,
Concat and pooling outputs, which ONNX Runtime also quantizes."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

ACTIVATION_GRIDS = {"uint8": (0, 255), "int8": (-128, 127)}


class WeightGrid(nn.Module):
    """Parametrization: the weight rounded to ONNX Runtime's symmetric INT8 grid, per output channel."""

    def __init__(self, per_channel: bool, seven_bit: bool):
        super().__init__()
        self.per_channel, self.qmax, self.enabled = per_channel, 64 if seven_bit else 127, True

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return weight
        w = weight.float()
        absmax = w.detach().abs().flatten(1).amax(1) if self.per_channel else w.detach().abs().amax().reshape(1)
        # ONNX Runtime: scale = 2 max|w| / (qmax - qmin) with qmin = -qmax; an all-zero channel gets scale 1
        scale = torch.where(absmax > 0, absmax / self.qmax, torch.ones_like(absmax)).reshape(-1, *[1] * (w.dim() - 1))
        # the grid spans max|w|, so nothing clips: the straight-through gradient is the identity. Written
        # out rather than fake_quantize_per_channel_affine, which is several times slower on small weights
        rounded = torch.clamp(torch.round(w / scale), -self.qmax, self.qmax) * scale
        return (w + (rounded - w).detach()).to(weight.dtype)


class InputGrid(nn.Module):
    """A convolution's input on ONNX Runtime's asymmetric activation grid. While `observing`, it
    passes the input through and widens its range to the input's min and max (MinMax calibration)."""

    def __init__(self, activations: str):
        super().__init__()
        self.qmin, self.qmax = ACTIVATION_GRIDS[activations]
        self.observing = False
        self.register_buffer("low", torch.tensor(0.0))   # ONNX Runtime's range always contains 0
        self.register_buffer("high", torch.tensor(0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observing:
            self.low.copy_(torch.minimum(self.low, x.detach().min().float()))
            self.high.copy_(torch.maximum(self.high, x.detach().max().float()))
            return x
        span = self.high - self.low
        scale = torch.where(span > 0, span / (self.qmax - self.qmin), torch.ones_like(span)).reshape(1)
        zero = torch.round(self.qmin - self.low / scale).clamp(self.qmin, self.qmax).to(torch.int32)
        return torch.fake_quantize_per_tensor_affine(x.float(), scale, zero, self.qmin, self.qmax).to(x.dtype)


def _quantize_input(module: nn.Module, args):
    # a module-level function, not a closure: a deep copy (the weights' moving average) calls its own grid
    return (module.input_grid(args[0]), *args[1:])


def simulated_layers(model: nn.Module) -> list[nn.Conv2d]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


def prepare(model: nn.Module, per_channel: bool = True, seven_bit: bool = False, activations: str = "uint8") -> int:
    """Puts every convolution of `model` on the INT8 grids, in place; returns how many. The input
    ranges start empty: `calibrate` them before training."""
    layers = simulated_layers(model)
    for conv in layers:
        parametrize.register_parametrization(conv, "weight", WeightGrid(per_channel, seven_bit))
        conv.input_grid = InputGrid(activations).to(conv.weight.device)
        conv.register_forward_pre_hook(_quantize_input)
    return len(layers)


def _grids(model: nn.Module, kind: type) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, kind)]


@torch.no_grad()
def calibrate(model: nn.Module, batches, device: torch.device) -> int:
    """Sets every input range to the min and max the FP32 model (weights off their grid) produces on
    `batches` (numpy or torch image batches), as ONNX Runtime calibrates; returns the images seen."""
    inputs, weights = _grids(model, InputGrid), _grids(model, WeightGrid)
    training = model.training
    model.eval()
    for grid in inputs:
        grid.low.zero_()
        grid.high.zero_()
        grid.observing = True
    for grid in weights:
        grid.enabled = False
    seen = 0
    try:
        for batch in batches:
            batch = torch.as_tensor(batch).to(device)
            model(batch)
            seen += len(batch)
    finally:
        for grid in inputs:
            grid.observing = False
        for grid in weights:
            grid.enabled = True
        model.train(training)
    return seen


def strip(model: nn.Module) -> None:
    """Removes the simulation, in place, leaving each weight on its grid (plain `nn.Conv2d` again)."""
    for conv in simulated_layers(model):
        if parametrize.is_parametrized(conv, "weight"):
            parametrize.remove_parametrizations(conv, "weight", leave_parametrized=True)
        if hasattr(conv, "input_grid"):
            del conv.input_grid
            for key, hook in list(conv._forward_pre_hooks.items()):
                if hook is _quantize_input:
                    del conv._forward_pre_hooks[key]
