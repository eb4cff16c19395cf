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


def gn_stem(cin: int, cout: int) -> nn.Sequential:
    """A 3×3 stride-1 convolution, GroupNorm and ReLU."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1, bias=False), _gn(cout), nn.ReLU())


def basic_stages(widths: tuple[int, ...]) -> list[BasicBlock]:
    """One BasicBlock per width: the first keeps the resolution, every later one halves it."""
    w = widths
    return [BasicBlock(w[0], w[0], 1)] + [BasicBlock(w[i - 1], w[i], 2) for i in range(1, len(w))]


class ResNetEncoder(nn.Module):
    """Stem (stride 2) + stages; every stage's output is bilinearly resized to H/2 and concatenated
    (pixelNeRF's and SparseFusion's multi-scale feature map). ``out_channels`` = sum of ``widths``."""

    def __init__(self, widths: tuple[int, ...] = (32, 48, 64), blocks: int = 1, in_channels: int = 3,
                 time_dim: int = 0):  # fmt: skip
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 5, 2, 2, bias=False), _gn(widths[0]), nn.ReLU())
        # a time embedding (N, time_dim) is added to the stem's output (DFM's encoder of the noisy target view)
        self.time_proj = nn.Linear(time_dim, widths[0]) if time_dim > 0 else None
        stages, cin = [], widths[0]
        for i, w in enumerate(widths):
            layers = [BasicBlock(cin, w, 1 if i == 0 else 2)] + [BasicBlock(w, w, 1) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*layers))
            cin = w
        self.stages = nn.ModuleList(stages)
        self.out_channels = sum(widths)

    def forward(self, img: Tensor, temb: Tensor | None = None) -> Tensor:
        """(N, in_channels, H, W), images in [0, 1] -> (N, C, H/2, W/2); ``temb`` (N, time_dim) when built with one."""
        x = self.stem(img * 2 - 1)
        if self.time_proj is not None:
            if temb is None:
                raise ValueError("this encoder is time-conditioned: pass temb")
            x = x + self.time_proj(temb)[:, :, None, None]
        size = x.shape[-2:]
        feats = []
        for st in self.stages:
            x = st(x)
            feats.append(x if x.shape[-2:] == size else F.interpolate(x, size, mode="bilinear", align_corners=False))
        return torch.cat(feats, 1)
