"""Factorized replacements built only from plain nn.Conv2d / nn.Linear (so export, pruning and
quantization work on them and their speed is real). Each method's formulas are in `methods`."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

def _conv_like(conv: nn.Conv2d, cin: int, cout: int, kernel, stride=1, padding=0, dilation=1, groups=1,
               bias=False) -> nn.Conv2d:
    """A conv of the same class as `conv`: timm's Conv2dSame keeps its dynamic 'same' padding."""
    cls = type(conv) if type(conv).__name__ == "Conv2dSame" and kernel != (1, 1) else nn.Conv2d
    if cls is not nn.Conv2d:
        return cls(cin, cout, kernel, stride=stride, padding=0, dilation=dilation, groups=groups, bias=bias,
                   dtype=conv.weight.dtype)
    return nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, dilation=dilation, groups=groups,
                     bias=bias, padding_mode=conv.padding_mode, dtype=conv.weight.dtype)


def eligible(module: nn.Module) -> str | None:
    """'kxk', 'pointwise' or 'linear' for layers that can be factorized; None otherwise.

    Grouped and depthwise convolutions are left alone: each group is already a small dense kernel.
    """
    if isinstance(module, nn.Conv2d):
        if module.groups != 1:
            return None
        return "pointwise" if module.kernel_size == (1, 1) else "kxk"
    if isinstance(module, nn.Linear):
        return "linear"
    return None


def cp_layer(conv: nn.Conv2d, weights: np.ndarray, factors: list[np.ndarray]) -> nn.Sequential:
    """LWALM layout: kernel as (C_in, C_out, k*k); 1x1 C_in->R, depthwise k x k R->R with the original
    stride, padding and dilation, 1x1 R->C_out with the original bias."""
    a, b, c = factors
    rank = a.shape[1]
    kh, kw = conv.kernel_size
    first = _conv_like(conv, conv.in_channels, rank, (1, 1))
    depthwise = _conv_like(conv, rank, rank, (kh, kw), conv.stride, conv.padding, conv.dilation, groups=rank)
    last = _conv_like(conv, rank, conv.out_channels, (1, 1), bias=conv.bias is not None)
    with torch.no_grad():
        first.weight.copy_(torch.from_numpy(a.T.copy()).reshape(rank, conv.in_channels, 1, 1))
        depthwise.weight.copy_(torch.from_numpy(c.T.copy()).reshape(rank, 1, kh, kw))
        last.weight.copy_(torch.from_numpy((b * weights).copy()).reshape(conv.out_channels, rank, 1, 1))
        if conv.bias is not None:
            last.bias.copy_(conv.bias)
    return nn.Sequential(first, depthwise, last)


def cp4_layer(conv: nn.Conv2d, weights: np.ndarray, factors: list[np.ndarray]) -> nn.Sequential:
    """CP-4: 1x1 C_in->R, depthwise k x 1, depthwise 1 x k, 1x1 R->C_out (kernel as 4-way tensor)."""
    a, b, ch, cw = factors
    rank = a.shape[1]
    kh, kw = conv.kernel_size
    (sh, sw), (ph, pw), (dh, dw) = conv.stride, conv.padding, conv.dilation
    dtype = conv.weight.dtype
    layers = [nn.Conv2d(conv.in_channels, rank, 1, bias=False, dtype=dtype),
              nn.Conv2d(rank, rank, (kh, 1), stride=(sh, 1), padding=(ph, 0), dilation=(dh, 1), groups=rank,
                        bias=False, dtype=dtype),
              nn.Conv2d(rank, rank, (1, kw), stride=(1, sw), padding=(0, pw), dilation=(1, dw), groups=rank,
                        bias=False, dtype=dtype),
              nn.Conv2d(rank, conv.out_channels, 1, bias=conv.bias is not None, dtype=dtype)]
    with torch.no_grad():
        layers[0].weight.copy_(torch.from_numpy(a.T.copy()).reshape(rank, conv.in_channels, 1, 1))
        layers[1].weight.copy_(torch.from_numpy(ch.T.copy()).reshape(rank, 1, kh, 1))
        layers[2].weight.copy_(torch.from_numpy(cw.T.copy()).reshape(rank, 1, 1, kw))
        layers[3].weight.copy_(torch.from_numpy((b * weights).copy()).reshape(conv.out_channels, rank, 1, 1))
        if conv.bias is not None:
            layers[3].bias.copy_(conv.bias)
    return nn.Sequential(*layers)


def tucker2_layer(conv: nn.Conv2d, core: np.ndarray, first_factor: np.ndarray, last_factor: np.ndarray) -> nn.Sequential:
    """Tucker-2: 1x1 C_in->R1, k x k R1->R2 (original stride, padding, dilation), 1x1 R2->C_out.
    `core` is (R2, R1, kh, kw); factors are (C_in, R1) and (C_out, R2)."""
    r2, r1 = core.shape[:2]
    first = _conv_like(conv, conv.in_channels, r1, (1, 1))
    middle = _conv_like(conv, r1, r2, conv.kernel_size, conv.stride, conv.padding, conv.dilation)
    last = _conv_like(conv, r2, conv.out_channels, (1, 1), bias=conv.bias is not None)
    with torch.no_grad():
        first.weight.copy_(torch.from_numpy(first_factor.T.copy()).reshape(r1, conv.in_channels, 1, 1))
        middle.weight.copy_(torch.from_numpy(core.copy()))
        last.weight.copy_(torch.from_numpy(last_factor.copy()).reshape(conv.out_channels, r2, 1, 1))
        if conv.bias is not None:
            last.bias.copy_(conv.bias)
    return nn.Sequential(first, middle, last)


def svd_layer(layer: nn.Module, left: np.ndarray, right: np.ndarray) -> nn.Sequential:
    """Truncated SVD W ~ left @ right (left: out x R, right: R x in k k) of a linear layer or a conv
    unfolded as C_out x (C_in k k): a conv C_in->R with the original kernel and geometry, then 1x1
    R->C_out (for k x k, Zhang et al.'s channel decomposition; the one that suits a 3-channel stem)."""
    rank = left.shape[1]
    if isinstance(layer, nn.Linear):
        dtype = layer.weight.dtype
        first = nn.Linear(layer.in_features, rank, bias=False, dtype=dtype)
        last = nn.Linear(rank, layer.out_features, bias=layer.bias is not None, dtype=dtype)
    else:
        first = _conv_like(layer, layer.in_channels, rank, layer.kernel_size, layer.stride, layer.padding,
                           layer.dilation)
        last = _conv_like(layer, rank, layer.out_channels, (1, 1), bias=layer.bias is not None)
    with torch.no_grad():
        first.weight.copy_(torch.from_numpy(right.copy()).reshape(first.weight.shape))
        last.weight.copy_(torch.from_numpy(left.copy()).reshape(last.weight.shape))
        if layer.bias is not None:
            last.bias.copy_(layer.bias)
    return nn.Sequential(first, last)


def spatial_svd_layer(conv: nn.Conv2d, vertical: np.ndarray, horizontal: np.ndarray) -> nn.Sequential:
    """Spatial SVD: k x 1 conv C_in->R then 1 x k conv R->C_out.
    vertical: (R, C_in, kh), horizontal: (C_out, R, kw)."""
    rank = vertical.shape[0]
    kh, kw = conv.kernel_size
    (sh, sw), (ph, pw), (dh, dw) = conv.stride, conv.padding, conv.dilation
    first = nn.Conv2d(conv.in_channels, rank, (kh, 1), stride=(sh, 1), padding=(ph, 0), dilation=(dh, 1), bias=False,
                      dtype=conv.weight.dtype)
    last = nn.Conv2d(rank, conv.out_channels, (1, kw), stride=(1, sw), padding=(0, pw), dilation=(1, dw),
                     bias=conv.bias is not None, dtype=conv.weight.dtype)
    with torch.no_grad():
        first.weight.copy_(torch.from_numpy(vertical.copy())[..., None])
        last.weight.copy_(torch.from_numpy(horizontal.copy())[:, :, None, :])
        if conv.bias is not None:
            last.bias.copy_(conv.bias)
    return nn.Sequential(first, last)


def layer_params(layer: nn.Module) -> int:
    return sum(p.numel() for p in layer.parameters())


def conv_macs(layer: nn.Module, out_hw: tuple[int, int]) -> int:
    """Multiply-accumulates of a conv (at its output size) or a linear layer (per sample)."""
    if isinstance(layer, nn.Linear):
        return layer.in_features * layer.out_features
    kh, kw = layer.kernel_size
    return out_hw[0] * out_hw[1] * layer.out_channels * (layer.in_channels // layer.groups) * kh * kw
