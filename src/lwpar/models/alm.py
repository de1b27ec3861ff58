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
        return self._fused(x) if self.head == "fused" else self._reference(x)

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

    def _stacked(self):
        w1 = torch.cat([a.conv1.weight.flatten(1) for a in self.att_list])              # M*R x C
        b1 = torch.cat([a.conv1.bias for a in self.att_list])                           # M*R
        w2 = torch.stack([a.conv2.weight.flatten(1).t() for a in self.att_list])        # M x R x C
        b2 = torch.stack([a.conv2.bias for a in self.att_list])                         # M x C
        ws = torch.stack([s.weight.t() for s in self.stn_list])                         # M x C x 4
        bs = torch.stack([s.bias for s in self.stn_list])                               # M x 4
        wf = torch.cat([f.weight for f in self.fc_list])                                # M x C
        bf = torch.cat([f.bias for f in self.fc_list])                                  # M
        return w1, b1, w2, b2, ws, bs, wf, bf

    def _fused(self, x: torch.Tensor) -> torch.Tensor:
        # Plain batched matrix products with the attribute axis leading, so each attribute's weights
        # are read once and never broadcast over the batch (an expanded M x R x C copy per image made
        # training 15 % slower). They export to MatMul/Gemm, which every runtime and quantizer handles
        # well (ONNX Runtime's Einsum kernel is several times slower).
        batch, channels, height, width = x.shape
        w1, b1, w2, b2, ws, bs, wf, bf = self._stacked()
        attributes = w2.shape[0]
        pooled = x.mean((2, 3))                                                          # B x C
        hidden = torch.relu(F.linear(pooled, w1, b1)).view(batch, attributes, -1).transpose(0, 1)  # M x B x R
        scale = 1 + torch.sigmoid(torch.matmul(hidden, w2) + b2[:, None])               # M x B x C: 1 + a_i
        raw = torch.matmul(scale * pooled, ws) + bs[:, None]                             # M x B x 4
        sx, sy, tx, ty = theta_from(raw.transpose(0, 1))                                 # B x M each
        kernel = (self._kernel(sy, ty, height)[..., None] * self._kernel(sx, tx, width)[..., None, :])
        contracted = torch.matmul(kernel.flatten(2), x.flatten(2).transpose(1, 2))       # B x M x C
        return (scale.transpose(0, 1) * contracted * wf).sum(-1) + bf

    def _kernel(self, scale: torch.Tensor, shift: torch.Tensor, size: int) -> torch.Tensor:
        """Mean over the output grid of the bilinear tent weights at the clamped source coordinate.

        The source pixel of output j is affine in (scale, shift): scale * g_j + shift * h + c, with
        g_j, h, c fixed by the size and the align_corners convention. They are built from Python
        numbers so that export bakes them in as constants (no Shape/Range arithmetic per call).
        """
        size = int(size)
        if self.align_corners:
            half, offset = (size - 1) / 2, (size - 1) / 2
            grid = [j * 2.0 / (size - 1) - 1 if size > 1 else 0.0 for j in range(size)]
        else:
            half, offset = size / 2, (size - 1) / 2
            grid = [(2 * j + 1) / size - 1 for j in range(size)]
        spread = torch.tensor([g * half for g in grid], dtype=scale.dtype, device=scale.device)
        steps = torch.tensor([float(j) for j in range(size)], dtype=scale.dtype, device=scale.device)
        pixel = (scale[..., None] * spread + (shift * half + offset)[..., None]).clamp(0, size - 1)  # B x M x out
        tent = torch.relu(1 - (pixel[..., None] - steps).abs())                                      # B x M x out x in
        return tent.mean(-2)


class ALM(nn.Module):
    def __init__(self, backbone: nn.Module, num_attributes: int, head: str = "fused", align_corners: bool = False):
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

    @staticmethod
    def _upsample_cat(coarse: torch.Tensor, fine: torch.Tensor) -> torch.Tensor:
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
        fusion_3b, fusion_4d, fusion_5b, main = self.pyramid(x)
        outputs = (self.st_3b(fusion_3b), self.st_4d(fusion_4d), self.st_5b(fusion_5b), main)
        if self.training:
            return outputs
        return torch.stack(outputs).amax(0)


class StrongBaseline(nn.Module):
    """Rethinking of PAR's strong baseline: backbone, global average pooling, linear classifier."""

    def __init__(self, backbone: nn.Module, num_attributes: int):
        super().__init__()
        self.main_branch = backbone
        self.classifier = nn.Linear(backbone.channels[-1], num_attributes)

    def forward(self, x: torch.Tensor):
        logits = self.classifier(self.main_branch(x)[-1].mean((2, 3)))
        return (logits,) if self.training else logits
