"""Factor-chain equalization before INT8, measured (issue 43, deliverable 2): writes an equalized copy
of an lwpar model file; `measure.sh` exports, quantizes and scores it beside the unequalized model.
Log: ../2026-12-07-int8-equalization.md.

    python equalize_chains.py <model.pt> <equalized model.pt>

The factorized layers are chains of linear convolutions with nothing between them, so a channel's
scale can move from one factor to the next without changing the output. Cross-layer equalization
(Nagel et al., ICCV 2019) rescales each intermediate channel so the two factors it joins have the same
weight range, pair by pair until the scales settle.
"""

from __future__ import annotations

import torch
from torch import nn

SWEEPS = 20  # pair-by-pair passes over a chain; a 3- or 4-factor chain settles within a few


def factor_chains(model: nn.Module) -> list[tuple[str, list[nn.Module]]]:
    """Every nn.Sequential of two or more plain convolutions (or linear layers) and nothing else: the
    factorized layers. Grouped convolutions other than depthwise are left out (their channels do not
    pair one to one)."""
    chains = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Sequential) or len(module) < 2:
            continue
        layers = list(module)
        if all(isinstance(m, (nn.Conv2d, nn.Linear)) and _pairs_channels(m) for m in layers) and all(
                _width(a, "out") == _width(b, "in") for a, b in zip(layers, layers[1:])):
            chains.append((name, layers))
    return chains


def _pairs_channels(layer: nn.Module) -> bool:
    return isinstance(layer, nn.Linear) or layer.groups in (1, layer.in_channels) and (
        layer.groups == 1 or layer.in_channels == layer.out_channels)


def _width(layer: nn.Module, side: str) -> int:
    if isinstance(layer, nn.Linear):
        return layer.out_features if side == "out" else layer.in_features
    return layer.out_channels if side == "out" else layer.in_channels


def _input_slices(layer: nn.Module) -> torch.Tensor:
    """The weights each input channel meets, one row per input channel, as absolute values."""
    weight = layer.weight.detach()
    if isinstance(layer, nn.Conv2d) and layer.groups > 1:  # depthwise: channel r meets only its own kernel
        return weight.abs().flatten(1)
    return weight.abs().transpose(0, 1).flatten(1)


def _output_ranges(layer: nn.Module) -> torch.Tensor:
    return layer.weight.detach().abs().flatten(1).amax(1)


def equalize_pair(first: nn.Module, second: nn.Module) -> None:
    """Scale `first`'s output channel r (weights and bias) by 1/s_r and `second`'s weights on its input
    channel r by s_r, with s_r = sqrt(range_first_r / range_second_r): both ranges become their
    geometric mean. Exact for linear layers (and through a ReLU, since s_r > 0)."""
    with torch.no_grad():
        ranges_first, ranges_second = _output_ranges(first), _input_slices(second).amax(1)
        usable = (ranges_first > 0) & (ranges_second > 0)
        scale = torch.where(usable, torch.sqrt(ranges_first / ranges_second.where(usable, torch.ones_like(ranges_second))),
                            torch.ones_like(ranges_first))
        first.weight.div_(scale.view(-1, *[1] * (first.weight.dim() - 1)))
        if first.bias is not None:
            first.bias.div_(scale)
        if isinstance(second, nn.Conv2d) and second.groups > 1:
            second.weight.mul_(scale.view(-1, 1, 1, 1))
        else:
            second.weight.mul_(scale.view(1, -1, *[1] * (second.weight.dim() - 2)))


def chain_imbalance(layers: list[nn.Module]) -> float:
    """The largest ratio, over the chain's intermediate channels, between the two ranges a channel
    joins (1 when equalized)."""
    worst = 1.0
    for first, second in zip(layers, layers[1:]):
        a, b = _output_ranges(first), _input_slices(second).amax(1)
        usable = (a > 0) & (b > 0)
        if usable.any():
            ratio = torch.maximum(a[usable] / b[usable], b[usable] / a[usable])
            worst = max(worst, float(ratio.max()))
    return worst


def equalize_factor_chains(model: nn.Module, sweeps: int = SWEEPS, tolerance: float = 1.01) -> dict:
    """Equalize every factor chain of `model` in place; returns what it did: how many chains, and the
    worst imbalance (`chain_imbalance`) before and after, for the artifact's record."""
    chains = factor_chains(model)
    before = max((chain_imbalance(layers) for _, layers in chains), default=1.0)
    for _, layers in chains:
        for _ in range(sweeps):
            for first, second in zip(layers, layers[1:]):
                equalize_pair(first, second)
            if chain_imbalance(layers) <= tolerance:
                break
    after = max((chain_imbalance(layers) for _, layers in chains), default=1.0)
    return {"chains": len(chains), "imbalance_before": before, "imbalance_after": after}


if __name__ == "__main__":
    import sys

    from lwpar.compress.structure import load_model
    from lwpar.core.modelfile import save_torch

    model, blob = load_model(sys.argv[1])
    print(equalize_factor_chains(model.eval()))
    blob["state_dict"] = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    save_torch(blob, sys.argv[2])
