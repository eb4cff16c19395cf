"""A small ResNet-style image encoder defined here (no torchvision, no ImageNet weights): GroupNorm
throughout, so batch composition never changes a sample's features (DDP == single process)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _gn(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, c), c)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.n1 = _gn(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.n2 = _gn(cout)
        self.skip = None if (cin == cout and stride == 1) else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), _gn(cout)
        )  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.n1(self.c1(x)))
        y = self.n2(self.c2(y))
        return F.relu(y + (x if self.skip is None else self.skip(x)))


class ResNetEncoder(nn.Module):
    """Stem (stride 2) + stages; every stage's output is bilinearly resized to H/2 and concatenated
    (pixelNeRF's and SparseFusion's multi-scale feature map). ``out_channels`` = sum of ``widths``."""

    def __init__(self, widths: tuple[int, ...] = (32, 48, 64), blocks: int = 1):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 5, 2, 2, bias=False), _gn(widths[0]), nn.ReLU())
        stages, cin = [], widths[0]
        for i, w in enumerate(widths):
            layers = [BasicBlock(cin, w, 1 if i == 0 else 2)] + [BasicBlock(w, w, 1) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*layers))
            cin = w
        self.stages = nn.ModuleList(stages)
        self.out_channels = sum(widths)

    def forward(self, img: Tensor) -> Tensor:
        """(N, 3, H, W) in [0, 1] -> (N, C, H/2, W/2)."""
        x = self.stem(img * 2 - 1)
        size = x.shape[-2:]
        feats = []
        for st in self.stages:
            x = st(x)
            feats.append(x if x.shape[-2:] == size else F.interpolate(x, size, mode="bilinear", align_corners=False))
        return torch.cat(feats, 1)
