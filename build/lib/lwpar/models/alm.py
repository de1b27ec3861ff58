"""The Attribute Localization Model (Tang et al., ICCV 2019) and the strong baseline.

ALM: a backbone's three pyramid levels, lateral 1x1 convs to 256 channels, top-down fusion by
bilinear upsampling and concatenation (256, 512, 768 channels), and per attribute and level one
attribute-localization module (squeeze-excitation channel attention with a residual, a spatial
transformer restricted to scale and translation, average pooling, a 1-unit linear layer), plus a
main branch (global pooling + linear) on the deepest level. Training uses the four outputs (deep
supervision); inference takes their element-wise maximum (max voting).

Two computations of the same modules, with identical parameters and state-dict keys:
- `reference`: as published, one reweighted copy and one grid sample per attribute;
- `fused`: exact closed form, batched over attributes. Channel scaling commutes with resampling,
  and resampling, pooling and the linear unit are linear, so each attribute only needs GAP(X) for
  its attention and transform, and X contracted with a separable sampling kernel k_y (x) k_x.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

LATERAL = 256


class ChannelAttention(nn.Module):
    """Squeeze-excitation: GAP, 1x1 conv C -> C/r, ReLU, 1x1 conv C/r -> C, sigmoid."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels // reduction, 1)
        self.conv2 = nn.Conv2d(channels // reduction, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.adaptive_avg_pool2d(x, 1)
        return torch.sigmoid(self.conv2(torch.relu(self.conv1(pooled))))


def theta_from(raw: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Scale-and-translation transform: scales through a sigmoid, translations through a tanh."""
    return torch.sigmoid(raw[..., 0]), torch.sigmoid(raw[..., 1]), torch.tanh(raw[..., 2]), torch.tanh(raw[..., 3])


@functools.lru_cache(maxsize=64)
def _constant(rows: tuple, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A constant tensor, built once per shape/dtype/device (export bakes it in as an initializer)."""
    return torch.tensor(rows, dtype=dtype, device=device)


def _axis_grid(size: int, align_corners: bool) -> tuple[list[float], float, float]:
    """Normalized output coordinates of one axis, and the (half, offset) taking them to pixels."""
    if align_corners:
        grid = [j * 2.0 / (size - 1) - 1 if size > 1 else 0.0 for j in range(size)]
        return grid, (size - 1) / 2, (size - 1) / 2
    return [(2 * j + 1) / size - 1 for j in range(size)], size / 2, (size - 1) / 2


@functools.lru_cache(maxsize=32)
def _kernel_plan(sizes: tuple, align_corners: bool) -> tuple:
    """Python constants for `sampling_kernels`: one entry per output coordinate of every level's
    y axis then x axis (block 2l is level l's y axis, 2l+1 its x axis)."""
    scale_index, shift_index, spread, half, offset, upper, block = [], [], [], [], [], [], []
    for level, (height, width) in enumerate(sizes):
        for axis, size in ((1, height), (0, width)):    # theta is (sx, sy, tx, ty)
            grid, axis_half, axis_offset = _axis_grid(size, align_corners)
            scale_index += [4 * level + axis] * size
            shift_index += [4 * level + 2 + axis] * size
            spread += [g * axis_half for g in grid]
            half += [axis_half] * size
            offset += [axis_offset] * size
            upper += [float(size - 1)] * size
            block += [2 * level + (axis == 0)] * size
    longest = max(max(s) for s in sizes)
    average = tuple(tuple(1.0 / block.count(b) if blk == b else 0.0 for blk in block) for b in range(2 * len(sizes)))
    return (tuple(scale_index), tuple(shift_index), tuple(spread), tuple(half), tuple(offset), tuple(upper),
            tuple(float(j) for j in range(longest)), average)


def sampling_kernels(raws: list[torch.Tensor], sizes: list[tuple[int, int]], align_corners: bool) -> list[torch.Tensor]:
    """Per level, B x M x (H*W): the mean over the output grid of the bilinear tent weights at the
    clamped source coordinate, separable as k_y (x) k_x.

    The source pixel of output j is affine in (scale, shift): scale * g_j * half + shift * half +
    offset, with g_j, half and offset fixed by the size and the align_corners convention. All axes
    of all levels go through one set of operations: the tensors are tiny, so the cost is per
    operation, not per element.
    """
    sizes = tuple((int(h), int(w)) for h, w in sizes)
    raw = torch.cat(raws, -1)                                                       # B x M x 4L
    scale_index, shift_index, *vectors, average = _kernel_plan(sizes, align_corners)
    spread, half, offset, upper, steps = (_constant(v, raw.dtype, raw.device) for v in vectors)
    device = raw.device
    scale = torch.sigmoid(raw.index_select(-1, _constant(scale_index, torch.long, device)))
    shift = torch.tanh(raw.index_select(-1, _constant(shift_index, torch.long, device)))
    pixel = (scale * spread + shift * half + offset).clamp(min=0).minimum(upper)  # B x M x n
    tent = torch.relu(1 - (pixel[..., None] - steps).abs())                        # B x M x n x longest
    axes = torch.matmul(_constant(average, raw.dtype, device), tent)               # B x M x 2L x longest
    outer = axes[..., 0::2, :, None] * axes[..., 1::2, None, :]                     # B x M x L x longest x longest
    return [outer[..., level, :height, :width].flatten(-2) for level, (height, width) in enumerate(sizes)]


def _chain(module: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """A 1x1 conv, a linear unit, or a Sequential of them (a factorized one) as (weight out x in,
    bias) steps."""
    if isinstance(module, nn.Sequential):
        return [step for child in module for step in _chain(child)]
    if isinstance(module, nn.Conv2d) and (module.kernel_size != (1, 1) or module.groups != 1):
        raise TypeError(f"the fused ALM head takes 1x1 convs and linear units, got {module}")
    return [(module.weight.flatten(1), module.bias)]


def _collapse(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The single (weight, bias) that a chain of linear steps amounts to."""
    steps = _chain(module)
    weight, bias = steps[0]
    bias = bias if bias is not None else weight.new_zeros(weight.shape[0])
    for w, b in steps[1:]:
        weight, bias = w @ weight, w @ bias + (b if b is not None else 0)
    return weight, bias


def _stacked_chain(modules: list[nn.Module]) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """Chains of equal length stacked step by step (M x out x in weights, M x out biases), each
    step zero-padded to its largest size: padded outputs are zero and padded inputs read nothing."""
    chains = [_chain(m) for m in modules]
    stacked = []
    for steps in zip(*chains):
        rows, cols = max(w.shape[0] for w, _ in steps), max(w.shape[1] for w, _ in steps)
        weight = torch.stack([F.pad(w, (0, cols - w.shape[1], 0, rows - w.shape[0])) for w, _ in steps])
        biases = [b for _, b in steps]
        bias = None if all(b is None for b in biases) else torch.stack(
            [F.pad(b, (0, rows - b.shape[0])) if b is not None else weight.new_zeros(rows) for b in biases])
        stacked.append((weight, bias))
    return stacked


def _apply_chain(x: torch.Tensor, steps) -> torch.Tensor:
    """M x B x in -> M x B x out through stacked steps: one batched product each, the attribute axis
    leading so each attribute's weights are read once per batch."""
    for weight, bias in steps:
        x = torch.matmul(x, weight.transpose(1, 2))
        if bias is not None:
            x = x + bias[:, None]
    return x


class LocalizationLevel(nn.Module):
    """All attribute-localization modules of one pyramid level.

    Parameters live in per-attribute modules (att_list, stn_list, fc_list, as in the official
    code), so checkpoints are interchangeable between `reference` and `fused`, and each 1x1 conv
    and linear unit stays visible to compression.
    """

    def __init__(self, num_attributes: int, channels: int, head: str = "fused", align_corners: bool = False):
        super().__init__()
        if head not in ("fused", "reference"):
            raise ValueError(f"alm_head must be 'fused' or 'reference', got {head!r}")
        self.head, self.align_corners = head, align_corners
        self.att_list = nn.ModuleList(ChannelAttention(channels) for _ in range(num_attributes))
        self.stn_list = nn.ModuleList(nn.Linear(channels, 4) for _ in range(num_attributes))
        self.fc_list = nn.ModuleList(nn.Linear(channels, 1) for _ in range(num_attributes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.head == "reference":
            return self._reference(x)
        scale, raw = self.attend(x)
        return self.localize(x, scale, sampling_kernels([raw], [x.shape[-2:]], self.align_corners)[0])

    def _reference(self, x: torch.Tensor) -> torch.Tensor:
        logits = []
        for att, stn, fc in zip(self.att_list, self.stn_list, self.fc_list):
            weighted = x * att(x) + x
            sx, sy, tx, ty = theta_from(stn(F.adaptive_avg_pool2d(weighted, 1).flatten(1)))
            zero = torch.zeros_like(sx)
            theta = torch.stack([torch.stack([sx, zero, tx], -1), torch.stack([zero, sy, ty], -1)], 1)
            grid = F.affine_grid(theta, list(weighted.shape), align_corners=self.align_corners)
            sampled = F.grid_sample(weighted, grid, padding_mode="border", align_corners=self.align_corners)
            logits.append(fc(F.adaptive_avg_pool2d(sampled, 1).flatten(1)))
        return torch.cat(logits, 1)

    def _attention(self, pooled: torch.Tensor) -> torch.Tensor:
        """Every attribute's 1 + a_i (M x B x C) from the pooled map (B x C).

        Attributes whose attention convs are factorized alike (the usual case: all of them) are
        stacked and computed together; a 1x1 conv that compression factorized is a chain of steps
        (SVD's two), stacked step by step and zero-padded to the largest rank, which is exact.
        Attributes factorized differently (a measured rank policy may leave some dense) form
        separate groups, put back in attribute order afterwards.
        """
        groups: dict[tuple, list[int]] = {}
        for index, att in enumerate(self.att_list):
            groups.setdefault((len(_chain(att.conv1)), len(_chain(att.conv2))), []).append(index)
        parts, order = [], []
        for members in groups.values():
            (w1, b1), *rest = _stacked_chain([self.att_list[i].conv1 for i in members])
            attributes, reduced = w1.shape[:2]
            # the first product serves the group's attributes at once: one Gemm with M*R outputs
            hidden = F.linear(pooled, w1.flatten(0, 1), b1.flatten() if b1 is not None else None)
            hidden = _apply_chain(hidden.reshape(-1, attributes, reduced).transpose(0, 1), rest)  # M x B x R
            parts.append(_apply_chain(torch.relu(hidden), _stacked_chain([self.att_list[i].conv2 for i in members])))
            order += members
        logits = parts[0] if len(parts) == 1 else torch.cat(parts).index_select(
            0, _constant(tuple(order.index(i) for i in range(len(order))), torch.long, pooled.device))
        return 1 + torch.sigmoid(logits)

    def attend(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Fused, first half: each attribute's 1 + a_i (M x B x C) and raw transform (B x M x 4).

        Plain batched matrix products with the attribute axis leading, so each attribute's weights
        are read once and never broadcast over the batch (an expanded M x R x C copy per image made
        training 15 % slower). They export to MatMul/Gemm, which every runtime and quantizer handles
        well (ONNX Runtime's Einsum kernel is several times slower). Reshapes use -1 for the batch so
        that the exported graph computes no shapes.
        """
        pooled = x.mean((2, 3))                                                          # B x C
        scale = self._attention(pooled)                                                  # M x B x C
        # the transform (C -> 4) is tiny: a factorized one is multiplied out
        ws = torch.stack([_collapse(s)[0].t() for s in self.stn_list])                  # M x C x 4
        bs = torch.stack([_collapse(s)[1] for s in self.stn_list])                      # M x 4
        raw = torch.matmul(scale * pooled, ws) + bs[:, None]                             # M x B x 4
        return scale, raw.transpose(0, 1)

    def localize(self, x: torch.Tensor, scale: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
        """Fused, second half: logits (B x M) from the map, 1 + a_i and the sampling kernel."""
        wf = torch.cat([_collapse(f)[0] for f in self.fc_list])                         # M x C
        bf = torch.cat([_collapse(f)[1] for f in self.fc_list])                         # M
        contracted = torch.matmul(kernel, x.flatten(2).transpose(1, 2))                 # B x M x C
        # keepdim + flatten: OpenVINO 2026.4's CPU plugin fuses a ReduceSum directly followed by the bias
        # Add into one kernel that is wrong for batches above 1 (tests/unit/test_runtimes.py)
        return (scale.transpose(0, 1) * contracted * wf).sum(-1, keepdim=True).flatten(1) + bf


@functools.lru_cache(maxsize=32)
def _bilinear_matrix(height: int, width: int, out_h: int, out_w: int) -> tuple:
    """(height*width) x (out_h*out_w) weights of bilinear resizing with half-pixel centres, as
    PyTorch's F.interpolate(align_corners=False) computes them (source clamped at 0 and n-1)."""
    def axis(size: int, out: int) -> list[list[float]]:
        weights = [[0.0] * out for _ in range(size)]
        for j in range(out):
            source = max((j + 0.5) * size / out - 0.5, 0.0)
            low = min(int(source), size - 1)
            high = min(low + 1, size - 1)
            frac = source - low
            weights[low][j] += 1 - frac
            weights[high][j] += frac
        return weights
    rows, cols = axis(height, out_h), axis(width, out_w)
    return tuple(tuple(rows[i][j] * cols[k][m] for j in range(out_h) for m in range(out_w))
                 for i in range(height) for k in range(width))


def bilinear_upsample(coarse: torch.Tensor, size) -> torch.Tensor:
    """F.interpolate(mode="bilinear", align_corners=False) as one product with a constant matrix."""
    (height, width), (out_h, out_w) = coarse.shape[-2:], size
    matrix = _constant(_bilinear_matrix(int(height), int(width), int(out_h), int(out_w)), coarse.dtype, coarse.device)
    return torch.matmul(coarse.flatten(2), matrix).reshape(-1, coarse.shape[1], int(out_h), int(out_w))


def logit_norms(count: int, num_attributes: int, enabled: bool) -> nn.ModuleList | None:
    """Rethinking of PAR's "BN after the classifier": one BatchNorm1d per output over its attribute
    logits, which re-centres and re-scales each attribute's logit (most attributes are rare). In
    evaluation it is a fixed per-attribute scale and shift. None when disabled (the published ALM)."""
    return nn.ModuleList(nn.BatchNorm1d(num_attributes) for _ in range(count)) if enabled else None


class ALM(nn.Module):
    def __init__(self, backbone: nn.Module, num_attributes: int, head: str = "fused", align_corners: bool = False,
                 logit_bn: bool = False):
        super().__init__()
        c3, c4, c5 = backbone.channels
        self.main_branch = backbone
        self.finalfc = nn.Linear(c5, num_attributes)
        self.latlayer_3b = nn.Conv2d(c3, LATERAL, 1)
        self.latlayer_4d = nn.Conv2d(c4, LATERAL, 1)
        self.latlayer_5b = nn.Conv2d(c5, LATERAL, 1)
        self.st_3b = LocalizationLevel(num_attributes, 3 * LATERAL, head, align_corners)
        self.st_4d = LocalizationLevel(num_attributes, 2 * LATERAL, head, align_corners)
        self.st_5b = LocalizationLevel(num_attributes, LATERAL, head, align_corners)
        self.logit_bn = logit_norms(4, num_attributes, logit_bn)  # 3b, 4d, 5b, main

    @staticmethod
    def _upsample_cat(coarse: torch.Tensor, fine: torch.Tensor) -> torch.Tensor:
        if torch.onnx.is_in_onnx_export():
            # ONNX Runtime's Resize took 0.11 ms for the 8x4 -> 16x8 map, the same weights as one
            # product with a constant matrix 0.04 ms. PyTorch keeps F.interpolate, which
            # torch-pruning's dependency graph follows channel by channel; export parity checks both.
            up = bilinear_upsample(coarse, fine.shape[-2:])
        else:
            up = F.interpolate(coarse, size=fine.shape[-2:], mode="bilinear", align_corners=False)
        return torch.cat([up, fine], 1)

    def set_head(self, head: str) -> None:
        for level in (self.st_3b, self.st_4d, self.st_5b):
            level.head = head

    def pyramid(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The fused pyramid maps (3b, 4d, 5b) and the main branch's logits."""
        feat_3b, feat_4d, feat_5b = self.main_branch(x)
        main = self.finalfc(feat_5b.mean((2, 3)))
        fusion_5b = self.latlayer_5b(feat_5b)
        fusion_4d = self._upsample_cat(fusion_5b, self.latlayer_4d(feat_4d))
        fusion_3b = self._upsample_cat(fusion_4d, self.latlayer_3b(feat_3b))
        return fusion_3b, fusion_4d, fusion_5b, main

    def forward(self, x: torch.Tensor):
        *maps, main = self.pyramid(x)
        levels = (self.st_3b, self.st_4d, self.st_5b)
        if all(level.head == "fused" for level in levels) and len({level.align_corners for level in levels}) == 1:
            # the three levels share one sampling-kernel computation (fewer tiny operations)
            attended = [level.attend(feature) for level, feature in zip(levels, maps)]
            kernels = sampling_kernels([raw for _, raw in attended], [f.shape[-2:] for f in maps],
                                       levels[0].align_corners)
            heads = [level.localize(f, scale, k) for level, f, (scale, _), k in zip(levels, maps, attended, kernels)]
        else:
            heads = [level(feature) for level, feature in zip(levels, maps)]
        outputs = (*heads, main)
        if self.logit_bn is not None:
            outputs = tuple(norm(logits) for norm, logits in zip(self.logit_bn, outputs))
        if self.training:
            return outputs
        return torch.stack(outputs).amax(0)


class StrongBaseline(nn.Module):
    """Rethinking of PAR's strong baseline: backbone, global average pooling, linear classifier."""

    def __init__(self, backbone: nn.Module, num_attributes: int, logit_bn: bool = False):
        super().__init__()
        self.main_branch = backbone
        self.classifier = nn.Linear(backbone.channels[-1], num_attributes)
        self.logit_bn = logit_norms(1, num_attributes, logit_bn)

    def forward(self, x: torch.Tensor):
        logits = self.classifier(self.main_branch(x)[-1].mean((2, 3)))
        if self.logit_bn is not None:
            logits = self.logit_bn[0](logits)
        return (logits,) if self.training else logits
