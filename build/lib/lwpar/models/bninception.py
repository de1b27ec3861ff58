"""BN-Inception (Ioffe & Szegedy, 2015) as used by ALM, returning the inception_3b, 4d and 5b maps.

Module names follow the Cadene `bn_inception-52deb4733.pth` checkpoint that the ALM code loads,
so that file loads without renaming. Built from a table rather than 200 hand-written lines.
"""

from __future__ import annotations

import torch
from torch import nn

# name: (in, 1x1, 3x3 reduce, 3x3, double reduce, double 3x3, pool projection, pool kind, stride)
# A reduction block (stride 2) has no 1x1 branch and passes max-pooled input through unprojected.
BLOCKS = {
    "3a": (192, 64, 64, 64, 64, 96, 32, "avg", 1),
    "3b": (256, 64, 64, 96, 64, 96, 64, "avg", 1),
    "3c": (320, 0, 128, 160, 64, 96, 0, "max", 2),
    "4a": (576, 224, 64, 96, 96, 128, 128, "avg", 1),
    "4b": (576, 192, 96, 128, 96, 128, 128, "avg", 1),
    "4c": (576, 160, 128, 160, 128, 160, 128, "avg", 1),
    "4d": (608, 96, 128, 192, 160, 192, 128, "avg", 1),
    "4e": (608, 0, 128, 192, 192, 256, 0, "max", 2),
    "5a": (1056, 352, 192, 320, 160, 224, 128, "avg", 1),
    "5b": (1024, 352, 192, 320, 192, 224, 128, "max", 1),
}
OUTPUTS = ("3b", "4d", "5b")
CHANNELS = [320, 608, 1024]


class BNInception(nn.Module):
    channels = CHANNELS
    reductions = [8, 16, 32]

    def __init__(self):
        super().__init__()
        self._conv("conv1_7x7_s2", 3, 64, 7, stride=2, padding=3)
        self.pool1_3x3_s2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self._conv("conv2_3x3_reduce", 64, 64, 1)
        self._conv("conv2_3x3", 64, 192, 3, padding=1)
        self.pool2_3x3_s2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        for name, (cin, c1, r3, c3, rd, cd, proj, pool, stride) in BLOCKS.items():
            prefix = f"inception_{name}"
            if c1:
                self._conv(f"{prefix}_1x1", cin, c1, 1)
            self._conv(f"{prefix}_3x3_reduce", cin, r3, 1)
            self._conv(f"{prefix}_3x3", r3, c3, 3, stride=stride, padding=1)
            self._conv(f"{prefix}_double_3x3_reduce", cin, rd, 1)
            self._conv(f"{prefix}_double_3x3_1", rd, cd, 3, padding=1)
            self._conv(f"{prefix}_double_3x3_2", cd, cd, 3, stride=stride, padding=1)
            # ceil_mode only where the stride is 2: at stride 1 it changes nothing in the output, but
            # ONNX Runtime runs an AveragePool with ceil_mode=1 on a slow path (measured at 128 x 64:
            # 7 pools, 3.3 of 18.4 ms of node time; 0.27 ms without it).
            if stride == 2:
                setattr(self, f"{prefix}_pool", nn.MaxPool2d(3, stride=2, ceil_mode=True))
            elif pool == "max":
                setattr(self, f"{prefix}_pool", nn.MaxPool2d(3, stride=1, padding=1))
            else:
                setattr(self, f"{prefix}_pool", nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=True))
            if proj:
                self._conv(f"{prefix}_pool_proj", cin, proj, 1)

    def _conv(self, name: str, cin: int, cout: int, k: int, stride: int = 1, padding: int = 0) -> None:
        setattr(self, name, nn.Conv2d(cin, cout, k, stride=stride, padding=padding))
        setattr(self, f"{name}_bn", nn.BatchNorm2d(cout))

    def _cbr(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(getattr(self, f"{name}_bn")(getattr(self, name)(x)))

    def _block(self, name: str, x: torch.Tensor) -> torch.Tensor:
        prefix = f"inception_{name}"
        _, c1, _, _, _, _, proj, _, _ = BLOCKS[name]
        branches = [self._cbr(f"{prefix}_1x1", x)] if c1 else []
        branches.append(self._cbr(f"{prefix}_3x3", self._cbr(f"{prefix}_3x3_reduce", x)))
        double = self._cbr(f"{prefix}_double_3x3_reduce", x)
        double = self._cbr(f"{prefix}_double_3x3_2", self._cbr(f"{prefix}_double_3x3_1", double))
        branches.append(double)
        pooled = getattr(self, f"{prefix}_pool")(x)
        branches.append(self._cbr(f"{prefix}_pool_proj", pooled) if proj else pooled)
        return torch.cat(branches, 1)

    def stages(self) -> list[list[nn.Module]]:
        def modules(*prefixes):
            return [m for n, m in self.named_children() if n.startswith(prefixes)]
        return [modules("conv1_7x7_s2"), modules("conv2_3x3")] + [modules(f"inception_{b}_") for b in BLOCKS]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.pool1_3x3_s2(self._cbr("conv1_7x7_s2", x))
        x = self.pool2_3x3_s2(self._cbr("conv2_3x3", self._cbr("conv2_3x3_reduce", x)))
        outputs = []
        for name in BLOCKS:
            x = self._block(name, x)
            if name in OUTPUTS:
                outputs.append(x)
        return outputs
